//! L2 prefetch in the decode graph (`Tune::prefetch_mb`, `KernelKey::Prefetch`): after each
//! latency-bound step that a mat-vec group follows, a dispatch reads the start of that
//! group's weights. It only reads weights, so the decode logits must equal the graph without
//! it bit for bit; the graph must place every prefetch between a weightless step and the
//! mat-vecs it serves. Runs on lavapipe in CI; without an adapter these fail unless
//! GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::model::prefetch_plan;
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuModel, ModelOptions, Shape, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::context_tuned;

#[test]
fn prefetch_plan_takes_the_group_in_order_within_the_budget() {
    // Whole chunks while the budget lasts, then a 16-byte-aligned part of the next.
    assert_eq!(
        prefetch_plan(&[1000, 2000, 5000], 4000),
        vec![(0, 992), (1, 2000), (2, 1008)]
    );
    // Less than 16 bytes left: nothing more.
    assert_eq!(prefetch_plan(&[4000, 64], 4008), vec![(0, 4000)]);
    // A budget larger than the group covers it all (rounded down to 16 bytes).
    assert_eq!(
        prefetch_plan(&[4096, 100], 1 << 20),
        vec![(0, 4096), (1, 96)]
    );
    assert!(prefetch_plan(&[4096], 0).is_empty());
    assert!(prefetch_plan(&[], 1 << 20).is_empty());
    for (sizes, budget) in [
        (&[7u64, 33, 4095][..], 100u64),
        (&[1 << 30, 1 << 30][..], 3 << 29),
    ] {
        let p = prefetch_plan(sizes, budget);
        assert!(p.iter().map(|x| x.1).sum::<u64>() <= budget);
        for (g, b) in &p {
            assert!(*b >= 16 && b % 16 == 0 && *b <= sizes[*g], "{p:?}");
        }
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

fn load(mix: &str, mb: u32) -> Option<GpuModel> {
    let ctx = context_tuned(|c| c.tune.prefetch_mb = mb)?;
    let src =
        SynthSource::new(Shape::named("tiny").unwrap(), Mix::parse(mix).unwrap(), mix).unwrap();
    let opts = ModelOptions {
        n_ctx: 128,
        n_batch: 8,
        n_seq: 1,
    };
    Some(GpuModel::load(ctx, &src, opts).unwrap())
}

fn decode(m: &mut GpuModel, steps: u32) -> Vec<Vec<f32>> {
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..4u32).map(|i| ((i * 37 + 11) % nv, 0, i)).collect();
    m.forward(&prompt, false).unwrap();
    (0..steps)
        .map(|i| m.forward(&[((i * 53 + 7) % nv, 0, 4 + i)], false).unwrap())
        .collect()
}

#[test]
fn gpu_prefetch_keeps_the_decode_logits_bit_for_bit() {
    // Integer mat-vecs with Q8_K and Q8_0 inputs, a mix with two types in one group, and an
    // f32-input type.
    for mix in ["q4_k", "q8_0", "q4_k_m", "q5_1"] {
        let (Some(mut plain), Some(mut pf)) = (load(mix, 0), load(mix, 1)) else {
            return;
        };
        let (roles, bytes) = (pf.step_roles(), pf.step_weight_bytes());
        let n_pf = roles.iter().filter(|r| **r == "prefetch").count();
        assert!(
            !plain.step_roles().contains(&"prefetch"),
            "{mix}: off by default"
        );
        assert_eq!(
            plain.dispatches_per_token() + n_pf,
            pf.dispatches_per_token(),
            "{mix}: {roles:?}"
        );
        // Per layer at least: NormQ8 → qkv, attention → wo, NormQ8 → gate/up, rounding → down.
        assert!(n_pf >= 4 * pf.cfg.n_layer, "{mix}: {roles:?}");
        for (i, r) in roles.iter().enumerate() {
            if *r != "prefetch" {
                continue;
            }
            let before = roles[..i].iter().rposition(|r| *r != "prefetch").unwrap();
            let next = i + roles[i..].iter().position(|r| *r != "prefetch").unwrap();
            assert_eq!(
                bytes[before], 0,
                "{mix}: prefetch after a mat-vec at {i}: {roles:?}"
            );
            assert!(
                bytes[next] > 0,
                "{mix}: prefetch without a mat-vec after it at {i}"
            );
        }
        let a = decode(&mut plain, 24);
        let b = decode(&mut pf, 24);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x.iter().all(|v| v.is_finite()), "{mix}: non-finite");
            assert_eq!(x, y, "{mix}: decode step {i} differs with the prefetch");
        }
    }
}
