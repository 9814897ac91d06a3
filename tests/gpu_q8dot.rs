//! The integer decode mat-vec (`KernelKey::MatVecQ8`: int8 activation quants from the
//! activation-rounding kernel, `dot4I8Packed` against the weights) of every type that has
//! one, against CPU dequantization times the CPU backend's rounded input (f64 dot products).
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::buffers::upload_matrix;
use ggufq::gpu::kernels::Q8_TYPES;
use ggufq::gpu::ops::MatRunner;
use ggufq::gpu::reference::dequantize;
use ggufq::gpu::source::random_blocks;
use ggufq::gpu::{DeviceOptions, GpuContext};
use ggufq::model::cpu::ActQuant;
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn context() -> Option<GpuContext> {
    gpu_fixture::device(&DeviceOptions::default())
}

/// Runs the integer kernel of `name` on a `rows` × `cols` matrix; checks that the GPU's
/// rounded input is the CPU backend's bit for bit and that the product matches the f64
/// reference over that input to 1e-5 of its largest value.
fn check(ctx: &GpuContext, runner: &mut MatRunner, name: &str, rows: usize, cols: usize, nr: u32) {
    let ty = GgmlType::from_name(name).unwrap();
    let data = random_blocks(ty, rows * cols, 3 + rows as u64, 0.3).unwrap();
    let w = dequantize(ty, &data, rows * cols).unwrap();
    let m = upload_matrix(ctx, name, ty, rows, cols, &data).unwrap();
    let x = gpu_fixture::spiky_inputs(cols, rows as u32 ^ cols as u32);
    let (y, xr) = runner.run_q8(ctx, &m, &x, nr).unwrap();
    let mut cpu = x.clone();
    ActQuant::for_weight(ty).unwrap().apply(&mut cpu);
    // Equal values (the sign of a zero may differ: ggml's Q8_K scale carries the sign of
    // the block's extreme value, the GPU's does not).
    if let Some(i) = (0..cols).find(|&i| xr[i] != cpu[i]) {
        panic!(
            "{name}: the GPU's rounded input differs from the CPU backend's at {i}: {} vs {}",
            xr[i], cpu[i]
        );
    }
    let (mut max_ref, mut max_err) = (0f64, 0f64);
    for r in 0..rows {
        let s: f64 = (0..cols)
            .map(|c| w[r * cols + c] as f64 * cpu[c] as f64)
            .sum();
        let g = y[r] as f64;
        assert!(g.is_finite(), "{name}: non-finite output at row {r}");
        max_ref = max_ref.max(s.abs());
        max_err = max_err.max((g - s).abs());
    }
    let rel = max_err / max_ref.max(1e-9);
    assert!(
        rel < 1e-5,
        "{name} rows {rows} cols {cols} nr {nr}: rel err {rel:e}"
    );
}

#[test]
fn gpu_integer_matvec_every_q8_type_matches_cpu() {
    let Some(ctx) = context() else { return };
    assert!(ctx.tune.q8_for(GgmlType::from_name("Q4_K").unwrap().id()));
    let mut runner = MatRunner::new(&ctx);
    for name in Q8_TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        // Rows that are not a multiple of the rows per workgroup; NR = 1, 2 and the default.
        check(
            &ctx,
            &mut runner,
            name,
            37,
            512,
            ctx.tune.decode_nr(ty.id()),
        );
        check(&ctx, &mut runner, name, 19, 256, 1);
        check(&ctx, &mut runner, name, 21, 768, 2);
    }
}

#[test]
fn gpu_integer_matvec_long_rows() {
    // 8192-long rows: 256 units, all 256 lanes of a workgroup on the same rows by default.
    let Some(ctx) = context() else { return };
    let mut runner = MatRunner::new(&ctx);
    for name in ["Q4_K", "Q6_K", "Q2_K", "Q4_0"] {
        let ty = GgmlType::from_name(name).unwrap();
        assert_eq!(
            ctx.tune.q8_lanes(ty.id(), 256),
            256,
            "{name}: lanes per row"
        );
        check(
            &ctx,
            &mut runner,
            name,
            9,
            8192,
            ctx.tune.decode_nr(ty.id()),
        );
    }
}

#[test]
fn gpu_integer_matvec_every_lane_layout() {
    // 64 and 128 units per row (64 / 128 lanes per row group by default), then every
    // layout forced, with 1, 2 and 4 rows per group.
    let Some(mut ctx) = context() else { return };
    let mut runner = MatRunner::new(&ctx);
    for name in ["Q4_K", "Q8_0", "Q3_K"] {
        check(&ctx, &mut runner, name, 13, 4096, 4);
        check(&ctx, &mut runner, name, 11, 2048, 2);
    }
    for lanes in [32u32, 64, 128, 256] {
        ctx.tune.q8_lanes = lanes;
        let mut runner = MatRunner::new(&ctx);
        for (name, nr) in [("Q6_K", 1u32), ("Q4_0", 2), ("Q5_K", 4)] {
            check(&ctx, &mut runner, name, 10, 1024, nr);
        }
    }
}

#[test]
fn gpu_integer_matvec_rejects_other_types_and_shapes() {
    let Some(ctx) = context() else { return };
    let mut runner = MatRunner::new(&ctx);
    let ty = GgmlType::from_name("Q4_1").unwrap();
    assert!(!ctx.tune.q8_for(ty.id()));
    let data = random_blocks(ty, 8 * 64, 1, 0.3).unwrap();
    let m = upload_matrix(&ctx, "q41", ty, 8, 64, &data).unwrap();
    assert!(runner.run_q8(&ctx, &m, &[0.5; 64], 2).is_err());
    let ty = GgmlType::from_name("Q8_0").unwrap();
    let data = random_blocks(ty, 8 * 64, 1, 0.3).unwrap();
    let m = upload_matrix(&ctx, "q80", ty, 8, 64, &data).unwrap();
    assert!(runner.run_q8(&ctx, &m, &[0.5; 32], 2).is_err());
}

#[test]
fn gpu_activation_rounding_long_and_ragged_rows_match_cpu() {
    // Rows over several 4096-value workgroups (the last one partial) and several tokens for
    // the Q8 kinds; f16 / bf16 rows that end inside a thread's 16 values.
    let Some(ctx) = context() else { return };
    for (name, k) in [
        ("Q4_K", 8960usize),
        ("Q4_0", 4160),
        ("Q4_1", 4128),
        ("F16", 100),
        ("BF16", 4099),
    ] {
        let ty = GgmlType::from_name(name).unwrap();
        let x = gpu_fixture::spiky_inputs(3 * k, k as u32);
        let gpu = ggufq::gpu::actq::round_rows(&ctx, ty, &x, k).unwrap();
        let mut cpu = x.clone();
        for row in cpu.chunks_mut(k) {
            ActQuant::for_weight(ty).unwrap().apply(row);
        }
        if let Some(i) = (0..x.len()).find(|&i| gpu[i] != cpu[i]) {
            panic!("{name} k {k}: value {i}: GPU {} vs CPU {}", gpu[i], cpu[i]);
        }
    }
}

#[test]
fn gpu_decode_kernels_compile_with_and_without_subgroups() {
    // The subgroup variants run only where subgroups are 32 wide (the H100, not lavapipe):
    // compile them wherever the device has subgroups at all, so that a WGSL error shows here.
    use ggufq::gpu::kernels::{buffer_layouts, KernelKey, Kernels};
    let Some(mut ctx) = context() else { return };
    let has_sub = ctx.device.features().contains(wgpu::Features::SUBGROUP);
    for sub in [false, true] {
        if sub && !has_sub {
            eprintln!("no subgroups on this adapter: subgroup variants not compiled");
            continue;
        }
        ctx.subgroup32 = sub;
        let mut k = Kernels::default();
        let (_, pl_mat) = buffer_layouts(&ctx, "mat", b"rrwu");
        let (_, pl_attd) = buffer_layouts(&ctx, "attn decode", b"rwwwurr");
        let q4k = GgmlType::from_name("Q4_K").unwrap().id();
        for spl in [32, 64, 128, 256] {
            for nr in [1, 2, 4] {
                k.get_with_layout(&ctx, &KernelKey::MatVecQ8 { ty: q4k, nr, spl }, &pl_mat)
                    .unwrap();
            }
        }
        // The kernels that round their own input (ffn_down) or normalise and round it.
        let (_, pl_matn) = buffer_layouts(&ctx, "mat+norm", b"rrwur");
        let q40 = GgmlType::from_name("Q4_0").unwrap().id();
        for spl in [32, 64, 128, 256] {
            for (ty, act) in [(q4k, 4), (q40, 3)] {
                for norm in [false, true] {
                    let key = KernelKey::MatVecQ8F {
                        ty,
                        nr: 4,
                        spl,
                        act,
                        norm,
                    };
                    k.get_with_layout(&ctx, &key, if norm { &pl_matn } else { &pl_mat })
                        .unwrap();
                }
            }
        }
        for (k4, act) in [(64, 3), (1024, 4), (1280, 4), (2048, 3)] {
            k.get_with_layout(&ctx, &KernelKey::NormQ8 { k4, act }, &pl_mat)
                .unwrap();
        }
        // Unsplit, and split over 16 chunks (exact and flash-decoding).
        for (nch, exact) in [(1, false), (16, true), (16, false)] {
            let key = KernelKey::AttnDecode {
                ctx: 64,
                hd: 128,
                nch,
                lmin: 16,
                exact,
            };
            k.get_with_layout(&ctx, &key, &pl_attd).unwrap();
        }
        for (nch, exact) in [(2, true), (16, false)] {
            k.get_with_layout(&ctx, &KernelKey::AttnCombineQ { nch, exact }, &pl_mat)
                .unwrap();
        }
        // Bad shapes are errors, not panics.
        assert!(Kernels::source(
            &ctx,
            &KernelKey::MatVecQ8 {
                ty: q4k,
                nr: 3,
                spl: 32
            }
        )
        .is_err());
        assert!(Kernels::source(&ctx, &KernelKey::NormQ8 { k4: 40, act: 4 }).is_err());
        assert!(Kernels::source(&ctx, &KernelKey::NormQ8 { k4: 64, act: 1 }).is_err());
    }
}

#[test]
fn gpu_integer_matvec_q4k_unit_pairs_match_cpu() {
    // `Tune::q8_pair`: each lane dots the two sub-blocks that share their quant bytes per
    // step (`idot2`), with lanes for half the units.
    let Some(mut ctx) = context() else { return };
    ctx.tune.q8_pair = true;
    let q4k = GgmlType::from_name("Q4_K").unwrap().id();
    assert!(ctx.tune.pairs(q4k, 128));
    assert_eq!(ctx.tune.q8_lanes(q4k, 128), 64);
    assert_eq!(ctx.tune.q8_lanes(q4k, 256), 128);
    let q6k = GgmlType::from_name("Q6_K").unwrap().id();
    assert!(!ctx.tune.pairs(q6k, 128));
    let mut runner = MatRunner::new(&ctx);
    let nr = ctx.tune.decode_nr(q4k);
    check(&ctx, &mut runner, "Q4_K", 37, 512, nr);
    check(&ctx, &mut runner, "Q4_K", 19, 256, 1);
    check(&ctx, &mut runner, "Q4_K", 21, 768, 2);
    check(&ctx, &mut runner, "Q4_K", 9, 8192, nr);
}

#[test]
fn gpu_integer_matvec_per_type_overrides_pick_the_kernel_shape() {
    // GGUFQ_Q8_LANES_T / GGUFQ_NR_DECODE_T: a listed type's own lanes and rows per lane;
    // other types keep the defaults; bad entries are skipped.
    use ggufq::gpu::kernels::{type_overrides, KernelKey, NO_OVERRIDES};
    let Some(mut ctx) = context() else { return };
    let id = |n: &str| GgmlType::from_name(n).unwrap().id();
    let (q6k, q8, q4k) = (id("Q6_K"), id("Q8_0"), id("Q4_K"));
    let (lanes_q6k, nr_q4k) = (ctx.tune.q8_lanes(q6k, 128), ctx.tune.decode_nr(q4k));
    // The default for Q8_0: 32 lanes on rows under 256 units, 128 for the SwiGLU kernel.
    assert_eq!(ctx.tune.q8_lanes(q8, 128), 32);
    assert_eq!(ctx.tune.q8_lanes_of(q8, 128, false), 128);
    assert_eq!(ctx.tune.q8_lanes(q8, 344), 256);
    let lanes = type_overrides(
        "Q6_K=256, Q8_0 = 64, Q9_Z=64, Q4_K=48, junk",
        &[32, 64, 128, 256],
    );
    assert_eq!(lanes[..2], [(q6k, 256), (q8, 64)]);
    assert_eq!(lanes[2..], NO_OVERRIDES[2..]);
    ctx.tune.q8_lanes_t = lanes;
    ctx.tune.nr_decode_t = type_overrides("Q4_K=2", &[1, 2, 4, 8]);
    assert_eq!(ctx.tune.q8_lanes(q6k, 128), 256);
    assert_eq!(ctx.tune.q8_lanes(q8, 128), 64);
    assert_eq!(ctx.tune.q8_lanes(q4k, 128), 128);
    assert_ne!(lanes_q6k, 256);
    assert_eq!(ctx.tune.decode_nr(q4k), 2);
    assert_ne!(nr_q4k, 2);
    assert_eq!(ctx.tune.decode_nr(q8), 4);
    // Q6_K: 2 rows per lane group by default (session 18).
    assert_eq!(ctx.tune.decode_nr(q6k), 2);
    assert_eq!(
        ctx.tune.matvec_key(q6k, 1, ctx.tune.decode_nr(q6k), 128),
        KernelKey::MatVecQ8 {
            ty: q6k,
            nr: 2,
            spl: 256
        }
    );
    // The overridden shapes still compute the product.
    let mut runner = MatRunner::new(&ctx);
    check(&ctx, &mut runner, "Q6_K", 37, 4096, 2);
    check(&ctx, &mut runner, "Q8_0", 37, 4096, 4);
}
