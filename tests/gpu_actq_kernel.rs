//! The activation-rounding kernel (`shaders/actq.wgsl`) against the CPU backend's
//! `ActQuant::apply`: for every weight type the GPU's rounded activations are bit-identical
//! to the CPU's (blocks of mixed magnitudes, all-zero blocks, ties, f16 scale underflow and
//! overflow). Runs on lavapipe in CI; without an adapter it fails unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::actq::{kind_for_weight, round_rows};
use ggufq::gpu::{DeviceOptions, GpuContext};
use ggufq::model::cpu::ActQuant;
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn context() -> Option<GpuContext> {
    gpu_fixture::device(&DeviceOptions::default())
}

/// Rows of `k` values: random magnitudes varying per 32-block over ~8 decades, one all-zero
/// block, exact ties for the Q8 rounding (x = (n + 0.5) · amax / 127), f16 boundary values.
fn inputs(n_rows: usize, k: usize) -> Vec<f32> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut x = Vec::with_capacity(n_rows * k);
    for r in 0..n_rows {
        for b in 0..k / 32 {
            let scale = 10f32.powf(rnd() * 4.0);
            for j in 0..32 {
                let v = match (r + b) % 7 {
                    0 if r > 0 => 0.0,
                    1 => {
                        // ties: amax = 127 · scale, v = (j + 0.5) · scale
                        if j == 0 {
                            127.0 * scale
                        } else {
                            (j as f32 + 0.5) * scale
                        }
                    }
                    2 => 65504.0 + 8.0 * j as f32,
                    3 => 6.1e-5 * rnd(),
                    _ => rnd() * scale,
                };
                x.push(v);
            }
        }
    }
    x
}

#[test]
fn gpu_activation_rounding_is_bit_identical_to_cpu_every_type() {
    let Some(mut ctx) = context() else { return };
    let k = 512;
    let x = inputs(6, k);
    let mut bad = Vec::new();
    // Block scales by one lane per block (default) and by every thread (GGUFQ_ACTQ_DIV=0).
    for (lane_div, name) in [true, false].into_iter().flat_map(|l| {
        [
            "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K",
        ]
        .map(move |n| (l, n))
    }) {
        ctx.tune.actq_div = lane_div;
        let ty = GgmlType::from_name(name).unwrap();
        let act = ActQuant::for_weight(ty).unwrap();
        assert_eq!(kind_for_weight(ty) == 0, act == ActQuant::None, "{name}");
        let mut want = x.clone();
        want.chunks_mut(k).for_each(|r| act.apply(r));
        let got = round_rows(&ctx, ty, &x, k).unwrap();
        assert_eq!(got.len(), want.len());
        let diff: Vec<usize> = (0..x.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits() && got[i] != want[i])
            .collect();
        if let Some(&i) = diff.first() {
            bad.push(format!(
                "{name} (lane division {lane_div}): {} of {} differ, first at {i}: x {} cpu {} gpu {}",
                diff.len(),
                x.len(),
                x[i],
                want[i],
                got[i]
            ));
        }
        if act != ActQuant::None {
            // The rounding changes the values (so the test can tell it from a copy).
            assert!(
                (0..x.len()).any(|i| got[i] != x[i]),
                "{name}: nothing was rounded"
            );
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn gpu_activation_rounding_rejects_partial_rows() {
    let Some(ctx) = context() else { return };
    let ty = GgmlType::from_name("Q8_0").unwrap();
    let err = round_rows(&ctx, ty, &[0.0; 100], 64).unwrap_err();
    assert!(err.to_string().contains("whole rows of 64"), "{err}");
}
