//! The integer decode mat-vec with the row length compiled in (`KernelKey::MatVecQ8U`,
//! `Tune::mv_const`): each lane's steps unrolled and all loads issued first, in workgroups
//! of 64 to 512 threads. The sums are the runtime loop's (`KernelKey::MatVecQ8`), so every
//! output must equal that kernel's bit for bit — for every integer type, rows that are not a
//! multiple of the row group, rows whose units are not a multiple of the lanes (a ragged
//! last step), matrices split into many chunks, 32- and 128-bit loads — and match CPU
//! dequantization times the CPU backend's rounded input; whole-model decode logits with the
//! switch on equal those with it off. Runs on lavapipe in CI; without an adapter these fail
//! unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::buffers::upload_matrix;
use ggufq::gpu::kernels::{KernelKey, Kernels, Q8_TYPES};
use ggufq::gpu::ops::MatRunner;
use ggufq::gpu::reference::dequantize;
use ggufq::gpu::source::{random_blocks, Mix};
use ggufq::gpu::{DeviceOptions, GpuContext, GpuModel, Shape, SynthSource};
use ggufq::model::cpu::ActQuant;
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{decode_opts, decode_run, device, tokens};

fn ctx(max_binding: Option<u64>, wide: u32) -> Option<GpuContext> {
    let mut c = device(&DeviceOptions {
        max_binding_override: max_binding,
        ..Default::default()
    })?;
    c.tune.wide = wide;
    Some(c)
}

/// Inputs with every 89th value (from the 4th) × 7.
fn xs(n: usize, seed: u32) -> Vec<f32> {
    gpu_fixture::hashed_inputs(n, seed, 89, 3, 7.0)
}

/// Every variant of `name` on a `rows` × `cols` matrix: bit for bit the runtime-loop kernel
/// of the same lanes and rows, and within 1e-5 of the f64 product of CPU dequantization with
/// the CPU backend's rounded input. `full`: every lanes × NR × workgroup layout, else the
/// extreme lanes (32, 256) and rows (1, 8) only (CI runs this on lavapipe, where every
/// layout is a pipeline to compile). Returns how many variants ran.
fn check(
    ctx: &GpuContext,
    name: &str,
    rows: usize,
    cols: usize,
    min_chunks: usize,
    full: bool,
) -> usize {
    let ty = GgmlType::from_name(name).unwrap();
    let units = cols / 32;
    let data = random_blocks(ty, rows * cols, 5 + rows as u64 + cols as u64, 0.3).unwrap();
    let w = dequantize(ty, &data, rows * cols).unwrap();
    let m = upload_matrix(ctx, name, ty, rows, cols, &data).unwrap();
    assert!(
        m.chunks.len() >= min_chunks,
        "{name}: {} chunks, expected at least {min_chunks}",
        m.chunks.len()
    );
    let x = xs(cols, (rows * 31 + cols) as u32);
    let mut cpu = x.clone();
    ActQuant::for_weight(ty).unwrap().apply(&mut cpu);
    let reference: Vec<f64> = (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| w[r * cols + c] as f64 * cpu[c] as f64)
                .sum()
        })
        .collect();
    let max_ref = reference.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-9);
    let mut runner = MatRunner::new(ctx);
    let mut n = 0;
    let (spls, nrs): (&[u32], &[u32]) = if full {
        (&[32, 64, 128, 256], &[1, 2, 4, 8])
    } else {
        (&[32, 256], &[1, 8])
    };
    for &spl in spls {
        for &nr in nrs {
            let old = KernelKey::MatVecQ8 {
                ty: ty.id(),
                nr,
                spl,
            };
            let (y0, _) = runner.run_q8_key(ctx, &m, &x, &old).unwrap();
            for wg in [64u32, 128, 256, 512] {
                if spl > wg {
                    continue;
                }
                let key = KernelKey::MatVecQ8U {
                    ty: ty.id(),
                    nr,
                    spl,
                    units: units as u32,
                    wg,
                };
                let (y, xr) = runner.run_q8_key(ctx, &m, &x, &key).unwrap();
                assert_eq!(&xr[..cols], &cpu[..], "{name}: rounded input");
                for r in 0..rows {
                    assert_eq!(
                        y[r].to_bits(),
                        y0[r].to_bits(),
                        "{name} {rows}x{cols} lanes {spl} NR {nr} wg {wg}: row {r}: {} vs {}",
                        y[r],
                        y0[r]
                    );
                    let err = (y[r] as f64 - reference[r]).abs() / max_ref;
                    assert!(err < 1e-5, "{name} {rows}x{cols}: row {r} rel err {err:e}");
                }
                n += 1;
            }
        }
    }
    n
}

#[test]
fn gpu_mv_const_equals_runtime_loop_every_type_and_layout() {
    // 37 rows (not a multiple of any row group), 1280 columns = 40 units: a ragged last
    // step for 32 lanes (2 steps) and one partial step for 64+; 2816 columns = 88 units.
    // 32-bit loads, then 128-bit loads for every wide type.
    let Some(c) = ctx(None, 0) else { return };
    // Every layout for one legacy and one K-quant type, the extremes for the others.
    for name in Q8_TYPES {
        let full = ["Q4_0", "Q4_K"].contains(name);
        let want = if full { 4 * 13 } else { 2 * (4 + 2) };
        assert_eq!(check(&c, name, 37, 1280, 1, full), want, "{name}");
    }
    for name in ["Q4_K", "Q6_K", "Q8_0"] {
        check(&c, name, 13, 2816, 1, false);
    }
    let Some(c) = ctx(None, 2) else { return };
    for name in ["Q4_0", "Q8_0", "Q4_K", "Q6_K"] {
        check(&c, name, 37, 1280, 1, false);
    }
}

#[test]
fn gpu_mv_const_on_chunked_matrices() {
    // 8 KiB bindings: each chunk is its own dispatch with its own row offset.
    let Some(c) = ctx(Some(8 << 10), 1) else {
        return;
    };
    for name in ["Q4_K", "Q4_0", "Q6_K", "Q2_K"] {
        check(&c, name, 61, 512, 2, false);
    }
}

#[test]
fn gpu_mv_const_kernels_compile_and_reject_bad_shapes() {
    let Some(c) = ctx(None, 1) else { return };
    let q4k = GgmlType::from_name("Q4_K").unwrap().id();
    let key = |spl, nr, units, wg| KernelKey::MatVecQ8U {
        ty: q4k,
        nr,
        spl,
        units,
        wg,
    };
    // The row length is a constant; the steps are written out (3 for 88 units at 32 lanes).
    let src = Kernels::source(&c, &key(32, 4, 88, 256)).unwrap();
    assert!(src.contains("const UNITS: u32 = 88u;"), "{src}");
    assert!(src.contains("let u_2 = min(gl + 64u, 87u);"), "{src}");
    assert!(!src.contains("for (var u"), "{src}");
    assert!(src.contains("@workgroup_size(256)"));
    let src = Kernels::source(&c, &key(64, 2, 128, 64)).unwrap();
    assert!(src.contains("@workgroup_size(64)") && src.contains("idx += 64u"));
    assert_eq!(c.tune.rows_per_wg(&key(64, 2, 128, 64), 2), 2);
    assert_eq!(c.tune.rows_per_wg(&key(32, 4, 128, 512), 4), 64);
    for bad in [
        key(128, 4, 128, 64),
        key(48, 4, 128, 256),
        key(32, 3, 128, 256),
        key(32, 4, 0, 256),
        key(32, 4, 128, 96),
    ] {
        assert!(Kernels::source(&c, &bad).is_err(), "{bad:?}");
    }
    // The subgroup reduction compiles too where the adapter has none (naga checks the text).
    let mut k = Kernels::default();
    let (_, pl) = ggufq::gpu::kernels::buffer_layouts(&c, "t", b"rrwu");
    k.get_with_layout(&c, &key(64, 4, 40, 128), &pl).unwrap();
}

fn decode(mut c: GpuContext, mix: &str, on: bool) -> Vec<Vec<f32>> {
    c.tune.mv_const = on;
    let src =
        SynthSource::new(Shape::named("tiny").unwrap(), Mix::parse(mix).unwrap(), mix).unwrap();
    let mut m = GpuModel::load(Arc::new(c), &src, decode_opts()).unwrap();
    let nv = m.cfg.n_vocab;
    decode_run(&mut m, &tokens(nv, 3, 1), &tokens(nv, 8, 2))
}

#[test]
fn gpu_mv_const_decode_logits_bit_for_bit() {
    for mix in ["q4_k_m", "q4_0", "q8_0", "q2_k", "q3_k", "q5_k", "q6_k"] {
        for max_binding in [None, Some(16 << 10)] {
            let (Some(a), Some(b)) = (ctx(max_binding, 1), ctx(max_binding, 1)) else {
                return;
            };
            let off = decode(a, mix, false);
            let on = decode(b, mix, true);
            assert_eq!(off.len(), on.len());
            for (i, (x, y)) in off.iter().zip(&on).enumerate() {
                assert!(x.iter().all(|v| v.is_finite()), "{mix}: non-finite");
                assert_eq!(x, y, "{mix} {max_binding:?}: decode step {i} differs");
            }
        }
    }
}

#[test]
fn gpu_mv_decode_chain_bench_checks_its_variants() {
    if device(&DeviceOptions::default()).is_none() {
        return;
    }
    let out = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args([
            "bench",
            "--kernels",
            "--decode-chain",
            "--chain-shapes",
            "37x512",
            "--kernel-types",
            "Q4_K",
            "--chain-n",
            "2",
            "-r",
            "1",
        ])
        .env("GGUFQ_SPIN_WAIT", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    // Every compiled-length variant was compared with its runtime-loop twin and matched.
    let consts: Vec<&str> = text.lines().filter(|l| l.contains(" const")).collect();
    assert!(consts.len() >= 16, "{text}");
    for l in consts {
        let stem = l
            .split(" const")
            .next()
            .unwrap()
            .rsplit("| ")
            .next()
            .unwrap();
        assert!(
            l.contains(&format!("| 0 outputs differ from '{stem}' |")),
            "{l}"
        );
    }
    for r in ["(no barriers)", "with 0 units", "read-only stream"] {
        assert!(text.contains(r), "{r}: {text}");
    }
    // A bad shape is an error, not a panic.
    let bad = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args([
            "bench",
            "--kernels",
            "--decode-chain",
            "--chain-shapes",
            "37x500",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multiple of 256"));
}
