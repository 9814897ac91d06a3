//! Every mat-vec / mat-mat kernel against CPU dequantization (f64 dot products), on the first
//! adapter wgpu finds (lavapipe in CI). Without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::buffers::upload_matrix;
use ggufq::gpu::kernels::{NR_PROMPT, NT_PROMPT};
use ggufq::gpu::ops::MatRunner;
use ggufq::gpu::reference::dequantize;
use ggufq::gpu::source::random_blocks;
use ggufq::gpu::{DeviceOptions, GpuContext};
use ggufq::quant::GgmlType;

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn context(opts: DeviceOptions) -> Option<GpuContext> {
    gpu_fixture::device(&opts)
}

fn xs(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Max |gpu - ref| relative to the largest |ref| must be tiny (f32 accumulation order only).
fn check(
    ctx: &GpuContext,
    runner: &mut MatRunner,
    name: &str,
    rows: usize,
    cols: usize,
    n_tok: usize,
    nt: u32,
) {
    let ty = GgmlType::from_name(name).unwrap();
    let nr = if nt <= 2 {
        ctx.tune.decode_nr(ty.id())
    } else {
        NR_PROMPT
    };
    let nr = if nt == 0 { 1 } else { nr };
    let data = random_blocks(ty, rows * cols, 7 + rows as u64, 0.3).unwrap();
    let w = dequantize(ty, &data, rows * cols).unwrap();
    let m = upload_matrix(ctx, name, ty, rows, cols, &data).unwrap();
    let x = xs(n_tok * cols, rows as u32);
    let y = runner.run(ctx, &m, &x, n_tok, nt, nr).unwrap();
    let mut max_ref = 0f64;
    let mut max_err = 0f64;
    for t in 0..n_tok {
        for r in 0..rows {
            let mut s = 0f64;
            for c in 0..cols {
                s += w[r * cols + c] as f64 * x[t * cols + c] as f64;
            }
            let g = y[t * rows + r] as f64;
            assert!(
                g.is_finite(),
                "{name}: non-finite output at token {t} row {r}"
            );
            max_ref = max_ref.max(s.abs());
            max_err = max_err.max((g - s).abs());
        }
    }
    let rel = max_err / max_ref.max(1e-9);
    // The tiled kernel takes f16 inputs where it runs on cooperative matrices.
    let tol = if nt == 0 {
        ggufq::gpu::kernels::matmat_tolerance(ctx)
    } else {
        1e-4
    };
    assert!(
        rel < tol,
        "{name} rows {rows} cols {cols} tokens {n_tok} nt {nt}: rel err {rel:e}"
    );
}

#[test]
fn gpu_matvec_every_type_matches_cpu_dequant() {
    let Some(ctx) = context(DeviceOptions::default()) else {
        return;
    };
    let mut runner = MatRunner::new(&ctx);
    for name in TYPES {
        // 37 rows: not a multiple of the 8 rows per workgroup; 512 cols: 2 K-blocks per row.
        check(&ctx, &mut runner, name, 37, 512, 1, 1);
    }
}

#[test]
fn gpu_matvec_unrolled_unit_loop_every_type() {
    // 2 or 4 units per lane per step, with a tail: per warp (32 lanes), 2304 columns = 72
    // units (64 + 8) and 4352 = 136 units (128 + 8); split-K (256 lanes per row group),
    // 8448 columns = 264 units (256 + 8). Also the per-warp layout without unrolling.
    for (un, splitk, cols) in [(2u32, 0, 2304), (4, 0, 4352), (1, 0, 2304), (2, 2, 8448)] {
        let Some(mut ctx) = context(DeviceOptions::default()) else {
            return;
        };
        ctx.tune.unit_lanes = Some(true);
        ctx.tune.unroll = un;
        ctx.tune.splitk = splitk;
        let mut runner = MatRunner::new(&ctx);
        for name in TYPES {
            check(&ctx, &mut runner, name, 9, cols, 1, 1);
            check(&ctx, &mut runner, name, 21, 512, 2, 2);
        }
    }
}

#[test]
fn gpu_matvec_both_lane_layouts_every_type() {
    // Unit lanes (with and without the types' udot) and 4-weight-group lanes, for every
    // type, whatever the per-type default is; NR 1, 2 and 4 (37 rows: partial workgroups).
    for (unit, udot) in [(true, true), (true, false), (false, true)] {
        let Some(mut ctx) = context(DeviceOptions::default()) else {
            return;
        };
        ctx.tune.unit_lanes = Some(unit);
        ctx.tune.udot = udot;
        let mut runner = MatRunner::new(&ctx);
        for name in TYPES {
            for nr in [1, 2, 4] {
                ctx.tune.nr_decode = nr;
                check(&ctx, &mut runner, name, 37, 512, 1, 1);
            }
            // Two tokens (batched decode of two sequences) also take the decode layout.
            check(&ctx, &mut runner, name, 37, 512, 2, 2);
        }
    }
}

#[test]
fn gpu_matmat_every_type_matches_cpu_dequant() {
    let Some(ctx) = context(DeviceOptions::default()) else {
        return;
    };
    let mut runner = MatRunner::new(&ctx);
    for name in TYPES {
        // 11 tokens: one full group of 8 and a partial one.
        check(&ctx, &mut runner, name, 19, 256, 11, NT_PROMPT);
    }
}

#[test]
fn gpu_tiled_matmat_every_type_matches_cpu_dequant() {
    let Some(ctx) = context(DeviceOptions::default()) else {
        return;
    };
    let mut runner = MatRunner::new(&ctx);
    for name in TYPES {
        // 70 rows × 67 tokens: partial 64×64 tiles in both directions.
        check(&ctx, &mut runner, name, 70, 256, 67, 0);
    }
}

#[test]
fn gpu_split_matrix_over_binding_limit() {
    // A 64 KiB binding cap forces Q6_K (210-byte blocks, repacked) and Q4_0 into row chunks.
    let Some(ctx) = context(DeviceOptions {
        max_binding_override: Some(64 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let ty = GgmlType::from_name("Q6_K").unwrap();
    let data = random_blocks(ty, 300 * 1024, 3, 0.3).unwrap();
    let m = upload_matrix(&ctx, "big", ty, 300, 1024, &data).unwrap();
    assert!(
        m.chunks.len() > 1,
        "expected a split, got {} chunk(s)",
        m.chunks.len()
    );
    let mut runner = MatRunner::new(&ctx);
    check(&ctx, &mut runner, "Q6_K", 300, 1024, 1, 1);
    check(&ctx, &mut runner, "Q4_0", 1500, 1024, 3, NT_PROMPT);
    check(&ctx, &mut runner, "Q4_0", 1500, 1024, 70, 0);
}

#[test]
fn gpu_rejects_bad_shapes() {
    let Some(ctx) = context(DeviceOptions::default()) else {
        return;
    };
    let ty = GgmlType::from_name("Q4_K").unwrap();
    // 128 columns are not a whole 256-weight block.
    let err = upload_matrix(&ctx, "t", ty, 2, 128, &[0u8; 144])
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("row length 128"), "{err}");
    // Wrong byte count.
    let err = upload_matrix(&ctx, "t", ty, 2, 256, &[0u8; 100])
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("bytes"), "{err}");
}
