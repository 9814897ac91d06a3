//! Residual mat-vecs that round the next RMSNorm's input themselves (`Tune::block_norm`,
//! `KernelKey::MatVecQ8N` and its readers `KernelKey::MatVecQ8S`): the NormQ8 dispatches
//! after `wo` and `ffn_down` leave the decode graph, and the logits stay within the CPU
//! backend's tolerances (the rounding is in 32-value blocks of the unnormalised row, the
//! 1/rms factor applied after the dot products, so not bit for bit).
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{KernelKey, Kernels};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuBackend, GpuContext, GpuModel, SynthSource};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, decode_opts, decode_run, role_count, validate_wgsl, wide_shape};

const PROMPT: [u32; 4] = [5, 300, 17, 42];
const DECODE: [u32; 8] = [9, 260, 3, 400, 17, 88, 123, 5];

fn ctx_with(on: bool, wg: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.block_norm = on;
        c.tune.block_norm_wg = wg;
    })
}

/// Unrounded activations (f32 matrix inputs): the reference both roundings approximate.
fn ctx_unrounded() -> Option<Arc<GpuContext>> {
    context_tuned(|c| c.tune.act_round = false)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn gpu_block_norm_removes_the_normq8_steps_and_matches_the_cpu_backend() {
    let Some(on) = ctx_with(true, 1024) else {
        return;
    };
    let off = ctx_with(false, 1024).unwrap();
    let wg256 = ctx_with(true, 256).unwrap();
    // Four rows per lane group, 128 lanes per row (GGUFQ_BLOCK_NORM_NR=4, the default
    // before session 18).
    let nr4 = context_tuned(|c| {
        c.tune.block_norm = true;
        c.tune.block_norm_nr = 4;
    })
    .unwrap();
    let exact = ctx_unrounded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    // Q8_0 rows (Q4_0, Q8_0), Q8_K rows rounded in 32-value blocks (K-quants), a QKV group
    // of two types in one dispatch (Q4_K_M's V), and the hybrid recipe's mix.
    for mix in ["q4_0", "q8_0", "q4_k_m", "q6_k", "q2_k", "hybrid"] {
        let src =
            SynthSource::new(wide_shape(), Mix::parse(mix).unwrap(), format!("bn-{mix}")).unwrap();
        let path = dir.path().join(format!("bn-{mix}.gguf"));
        src.write_gguf(&path).unwrap();
        let mut a = GpuModel::load(on.clone(), &src, decode_opts()).unwrap();
        let mut b = GpuModel::load(off.clone(), &src, decode_opts()).unwrap();
        let mut c = GpuModel::load(wg256.clone(), &src, decode_opts()).unwrap();
        let mut n4 = GpuModel::load(nr4.clone(), &src, decode_opts()).unwrap();
        // Default: 32 lanes × 1 row for Q8_0, 64 × 2 for other types; `n4` 128 × 4.
        let q8 = GgmlType::Q8_0.id();
        let producers_of = |m: &GpuModel, shape: &dyn Fn(u32) -> (u32, u32)| {
            m.step_keys()
                .iter()
                .filter(|k| {
                    matches!(k, KernelKey::MatVecQ8N { wg: 1024, spl, nr, ty, .. } if (*spl, *nr) == shape(*ty))
                })
                .count()
        };
        let by_type = |t: u32| if t == q8 { (32, 1) } else { (64, 2) };
        assert_eq!(producers_of(&a, &by_type), 4, "{mix}: default producers");
        assert_eq!(
            producers_of(&n4, &|_| (128, 4)),
            4,
            "{mix}: four rows per lane group"
        );
        let mut e = GpuModel::load(exact.clone(), &src, decode_opts()).unwrap();
        // Two layers: the NormQ8 after each `wo` and each `ffn_down` goes (4), the one
        // after the embedding stays. (Q8_0's `ffn_down` then takes the rounding dispatch
        // instead of rounding its input itself.)
        assert_eq!(role_count(&b, "norm_q8"), 5, "{mix}");
        assert_eq!(role_count(&a, "norm_q8"), 1, "{mix}");
        assert_eq!(
            a.dispatches_per_token() + 4,
            b.dispatches_per_token() + role_count(&a, "actq") - role_count(&b, "actq"),
            "{mix}"
        );
        let keys = a.step_keys();
        let producers = keys
            .iter()
            .filter(|k| matches!(k, KernelKey::MatVecQ8N { wg: 1024, .. }))
            .count();
        assert_eq!(producers, 4, "{mix}: {keys:?}");
        let scaled = keys
            .iter()
            .filter(|k| match k {
                KernelKey::MatVecQ8S { .. } => true,
                KernelKey::MatVecQ8Multi { parts, n, .. } => {
                    parts[..*n as usize].iter().all(|p| p.scaled)
                }
                _ => false,
            })
            .count();
        // qkv of layer 1, gate_up of both layers (or gate and up), output: at least 4.
        assert!(scaled >= 4, "{mix}: {keys:?}");
        assert!(
            c.step_keys().iter().any(|k| matches!(
                k,
                KernelKey::MatVecQ8N {
                    wg: 256,
                    spl: 32,
                    ..
                }
            )),
            "{mix}: 256-invocation producers"
        );
        let (ra, rb, rc, re, rn) = (
            decode_run(&mut a, &PROMPT, &DECODE),
            decode_run(&mut b, &PROMPT, &DECODE),
            decode_run(&mut c, &PROMPT, &DECODE),
            decode_run(&mut e, &PROMPT, &DECODE),
            decode_run(&mut n4, &PROMPT, &DECODE),
        );
        // The prompt row runs the batch graph, which the switch does not touch.
        assert_eq!(ra[0], rb[0], "{mix}: prompt row");
        let model = Model::open(&path).unwrap();
        let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
        let mut gb = GpuBackend::load(on.clone(), &path, model.hparams.clone(), 64, 8).unwrap();
        let (mut lc, mut lg) = (Vec::new(), Vec::new());
        cpu.forward(&PROMPT, LogitsWanted::Last, &mut lc).unwrap();
        gb.forward(&PROMPT, LogitsWanted::Last, &mut lg).unwrap();
        let (mut worst, mut top1) = (0f64, 0);
        // Distance from the unrounded activations: block rounding vs NormQ8 graph.
        let (mut far_on, mut far_off) = (0f64, 0f64);
        for (j, &t) in DECODE.iter().enumerate() {
            cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
            gb.forward(&[t], LogitsWanted::Last, &mut lg).unwrap();
            assert_eq!(lg, ra[j + 1], "{mix}: backend vs model row {j}");
            worst = worst
                .max(gpu_fixture::rms_rel(&lg, &lc))
                .max(gpu_fixture::rms_rel(&rc[j + 1], &lc))
                .max(gpu_fixture::rms_rel(&rn[j + 1], &lc));
            far_on += gpu_fixture::rms_rel(&ra[j + 1], &re[j + 1]);
            far_off += gpu_fixture::rms_rel(&rb[j + 1], &re[j + 1]);
            top1 += usize::from(argmax(&lg) == argmax(&lc));
        }
        eprintln!(
            "{mix}: block norm worst {worst:.3e} vs the CPU, top-1 {top1}/8; mean distance from unrounded activations {:.3e} (NormQ8 graph {:.3e})",
            far_on / 8.0,
            far_off / 8.0
        );
        // Another rounding of the same values (32-value blocks, the factor after the dot
        // products): as close to the unrounded activations as the CPU backend's rounding
        // (within a quarter), and close to the CPU backend itself.
        if worst > 3e-2 || far_on > 1.25 * far_off || top1 < 7 {
            failures.push(format!(
                "{mix}: worst {worst:.3e}, top-1 {top1}/8, from unrounded {:.3e} vs {:.3e}",
                far_on / 8.0,
                far_off / 8.0
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn gpu_block_norm_kernels_validate_and_reject_bad_shapes() {
    let Some(ctx) = ctx_with(true, 1024) else {
        return;
    };
    // Both texts: subgroup operations (32-wide subgroups) and workgroup memory.
    let sub = context_tuned(|c| c.subgroup32 = true).unwrap();
    let plain = context_tuned(|c| c.subgroup32 = false).unwrap();
    // The other subgroup forms (warp 0 sums the partial Σx²; the rounding through
    // workgroup memory).
    let sub0 = context_tuned(|c| {
        c.subgroup32 = true;
        c.tune.block_norm_epi = 0;
        c.tune.block_norm_rs = 0;
    })
    .unwrap();
    let ty = |n: &str| GgmlType::from_name(n).unwrap().id();
    let n_key = |t, spl, wg, kind, qbase| KernelKey::MatVecQ8N {
        ty: t,
        nr: 4,
        spl,
        wg,
        kind,
        qbase,
    };
    for (c, what) in [
        (&sub, "subgroups"),
        (&plain, "workgroup memory"),
        (&sub0, "subgroups, forms 0"),
    ] {
        for name in ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "Q2_K"] {
            for (spl, wg) in [(128, 1024), (64, 512), (32, 256)] {
                for kind in [3, 4] {
                    let src = Kernels::source(c, &n_key(ty(name), spl, wg, kind, 512)).unwrap();
                    let epi = c.subgroup32 && c.tune.block_norm_epi == 1;
                    assert_eq!(src.contains("subgroupMax"), epi, "{what}");
                    validate_wgsl(
                        &src,
                        &format!("{name} producer {spl}/{wg} kind {kind}, {what}"),
                    );
                }
            }
            let src = Kernels::source(
                c,
                &KernelKey::MatVecQ8S {
                    ty: ty(name),
                    nr: 4,
                    spl: 128,
                },
            )
            .unwrap();
            assert!(src.contains("res[idx] * rsv"), "{name}");
            assert!(src.contains("res[idx + NT] * rsv"), "{name}");
            validate_wgsl(&src, &format!("{name} scaled reader, {what}"));
        }
    }
    let q4 = ty("Q4_0");
    // 16 rows per workgroup, an unknown rounding, a packed base that is not 64-aligned.
    assert!(Kernels::source(&ctx, &n_key(q4, 128, 512, 3, 512)).is_err());
    assert!(Kernels::source(&ctx, &n_key(q4, 128, 1024, 5, 512)).is_err());
    assert!(Kernels::source(&ctx, &n_key(q4, 128, 1024, 3, 520)).is_err());
    assert!(Kernels::source(&ctx, &n_key(ty("Q4_1"), 128, 1024, 3, 512)).is_err());
}

#[test]
fn gpu_block_norm_with_the_swiglu_rounding_matches_the_cpu_backend() {
    // The SwiGLU mat-vec that rounds its own output (`Tune::swiglu_q`) reads the block
    // rounding too: its gate and up sums take the 1/rms factor (`MatVecQ8R { scaled }`).
    let with = |on: bool, nr: u32| {
        context_tuned(|c| {
            c.tune.block_norm = on;
            c.tune.swiglu_q = u32::from(on);
            c.tune.swiglu_q32k = on;
            c.tune.swiglu_q_wg = 1024;
            c.tune.swiglu_q_lanes = 128;
            c.tune.swiglu_q_nr = nr;
        })
    };
    let Some(off) = with(false, 4) else {
        return;
    };
    let exact = ctx_unrounded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    // NR 4: two passes of 32 rows per block of 32 outputs; NR 8: one pass of 64 rows.
    for (nr, mix) in [(4, "q4_0"), (8, "q4_0"), (4, "q8_0"), (4, "q4_k_m")] {
        let on = with(true, nr).unwrap();
        let src =
            SynthSource::new(wide_shape(), Mix::parse(mix).unwrap(), format!("bs-{mix}")).unwrap();
        let path = dir.path().join(format!("bs-{mix}.gguf"));
        src.write_gguf(&path).unwrap();
        let mut a = GpuModel::load(on.clone(), &src, decode_opts()).unwrap();
        let mut b = GpuModel::load(off.clone(), &src, decode_opts()).unwrap();
        let mut e = GpuModel::load(exact.clone(), &src, decode_opts()).unwrap();
        assert_eq!(role_count(&a, "norm_q8"), 1, "{mix}");
        assert_eq!(role_count(&a, "actq"), 0, "{mix}");
        let keys = a.step_keys();
        assert_eq!(
            keys.iter()
                .filter(|k| matches!(
                    k,
                    KernelKey::MatVecQ8R {
                        scaled: true,
                        wg: 1024,
                        ..
                    }
                ))
                .count(),
            2,
            "{mix} NR {nr}: {keys:?}"
        );
        let (ra, rb, re) = (
            decode_run(&mut a, &PROMPT, &DECODE),
            decode_run(&mut b, &PROMPT, &DECODE),
            decode_run(&mut e, &PROMPT, &DECODE),
        );
        if mix != "q4_k_m" {
            // Q8_0 blocks: the SwiGLU mat-vec's rounding is the rounding dispatch's, bit for
            // bit, so the logits are those of the block-norm graph with the `actq` step.
            let mut c = GpuModel::load(ctx_with(true, 1024).unwrap(), &src, decode_opts()).unwrap();
            assert_eq!(role_count(&c, "actq"), 2, "{mix}");
            let rc = decode_run(&mut c, &PROMPT, &DECODE);
            for (i, (x, y)) in ra.iter().zip(&rc).enumerate() {
                assert!(
                    x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()),
                    "{mix} NR {nr}: row {i} differs from the graph with the rounding dispatch"
                );
            }
        }
        let model = Model::open(&path).unwrap();
        let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
        let mut lc = Vec::new();
        cpu.forward(&PROMPT, LogitsWanted::Last, &mut lc).unwrap();
        let (mut worst, mut top1, mut far_on, mut far_off) = (0f64, 0, 0f64, 0f64);
        for (j, &t) in DECODE.iter().enumerate() {
            cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
            worst = worst.max(gpu_fixture::rms_rel(&ra[j + 1], &lc));
            top1 += usize::from(argmax(&ra[j + 1]) == argmax(&lc));
            far_on += gpu_fixture::rms_rel(&ra[j + 1], &re[j + 1]);
            far_off += gpu_fixture::rms_rel(&rb[j + 1], &re[j + 1]);
        }
        eprintln!(
            "{mix} NR {nr}: worst {worst:.3e} vs the CPU, top-1 {top1}/8; from unrounded {:.3e} (NormQ8 graph {:.3e})",
            far_on / 8.0,
            far_off / 8.0
        );
        if worst > 3e-2 || far_on > 1.25 * far_off || top1 < 7 {
            failures.push(format!("{mix} NR {nr}: worst {worst:.3e}, top-1 {top1}/8"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn gpu_block_norm_shapes_follow_the_tuning_and_refuse_what_the_kernel_cannot_run() {
    use ggufq::gpu::model::block_norm_shape;
    let Some(dflt) = ctx_with(true, 1024) else {
        return;
    };
    // Default: 1024 invocations, 64 lanes × 2 rows, short rows and long alike.
    let id = |n: &str| GgmlType::from_name(n).unwrap().id();
    let (q4k, q8) = (id("Q4_K"), id("Q8_0"));
    assert_eq!(block_norm_shape(&dflt, q4k, 128), Some((1024, 64, 2)));
    assert_eq!(block_norm_shape(&dflt, q4k, 344), Some((1024, 64, 2)));
    // Q8_0: 32 lanes × 1 row.
    assert_eq!(block_norm_shape(&dflt, q8, 128), Some((1024, 32, 1)));
    // The long-row shape (GGUFQ_BLOCK_NORM_WG_LONG / _NR_LONG) from 256 units only.
    let long = context_tuned(|c| {
        c.tune.block_norm_long = (512, 8);
        c.tune.block_norm_nr = 2;
    })
    .unwrap();
    assert_eq!(block_norm_shape(&long, q8, 255), Some((1024, 64, 2)));
    assert_eq!(block_norm_shape(&long, q4k, 256), Some((512, 128, 8)));
    // Only the rows per lane group of the long rows given: the workgroup size stays.
    let nr_only = context_tuned(|c| c.tune.block_norm_long = (0, 8)).unwrap();
    assert_eq!(block_norm_shape(&nr_only, q4k, 344), Some((1024, 256, 8)));
    // 256 invocations × 1 row would leave 8 lanes per row, which the integer kernel has no
    // form for: 32 lanes × 4 rows instead.
    let narrow = context_tuned(|c| {
        c.tune.block_norm_wg = 256;
        c.tune.block_norm_nr = 1;
    })
    .unwrap();
    assert_eq!(block_norm_shape(&narrow, q8, 128), Some((256, 32, 4)));
}
