//! The batch RMSNorm with the activation rounding folded in (`KernelKey::NormRound`,
//! `Tune::norm_round`): prompt logits and one-token logits through the batch graph (whose
//! integer mat-vecs read the packed int8 quants the fused kernel writes) bit-identical to the
//! separate norm + rounding dispatches, for mixes with Q8_0, Q8_K and f16 roundings, and two
//! rounding dispatches fewer per layer.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::model::{GpuModel, ModelOptions};
use ggufq::gpu::GpuContext;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn count(roles: &[&str], role: &str) -> usize {
    roles.iter().filter(|r| **r == role).count()
}

#[test]
fn norm_with_rounding_matches_separate_dispatches() {
    let Some(on) = gpu_fixture::context_tuned(|c| c.tune.norm_round = true) else {
        return;
    };
    let Some(off) = gpu_fixture::context_tuned(|c| c.tune.norm_round = false) else {
        return;
    };
    let opts = ModelOptions {
        n_ctx: 64,
        n_batch: 24,
        n_seq: 1,
    };
    for mix in ["q4_k_m", "q8_0", "q4_0", "f16"] {
        let src = gpu_fixture::tiny_source(mix);
        let load = |ctx: &Arc<GpuContext>| GpuModel::load(ctx.clone(), &src, opts.clone()).unwrap();
        let (mut a, mut b) = (load(&on), load(&off));
        let n = 19;
        let (ra, rb) = (a.step_roles_for(n), b.step_roles_for(n));
        // attn_norm and ffn_norm take over the rounding of qkv's and gate_up's input.
        assert_eq!(
            count(&ra, "actq") + 2 * a.n_layers(),
            count(&rb, "actq"),
            "{mix}: {ra:?}"
        );
        assert_eq!(ra.len() + 2 * a.n_layers(), rb.len(), "{mix}");
        let nv = a.cfg.n_vocab as u32;
        let toks: Vec<(u32, u32, u32)> = (0..n as u32)
            .map(|i| ((i * 4099 + 11) % nv, 0, i))
            .collect();
        let la = a.forward(&toks, true).unwrap();
        let lb = b.forward(&toks, true).unwrap();
        assert!(la.iter().all(|v| v.is_finite()), "{mix}");
        assert!(
            la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{mix}: prompt logits differ"
        );
        // One-token calls through the batch graph (the fused decode graph off): the
        // mat-vecs after the folded norms read its packed quants.
        a.set_fused_decode(false);
        b.set_fused_decode(false);
        for i in 0..4u32 {
            let t = [((i * 31 + 7) % nv, 0, n as u32 + i)];
            let da = a.forward(&t, false).unwrap();
            let db = b.forward(&t, false).unwrap();
            assert!(
                da.iter().zip(&db).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{mix}: one-token logits differ at step {i}"
            );
        }
    }
}
