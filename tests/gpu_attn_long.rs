//! Past `Tune::attn_exact_max` positions a one-token pass runs flash-decoding proper (each
//! chunk scores only its own positions; `kernels::long_context_key`) instead of the exact
//! split, whose every workgroup scores all positions of its head. Below the limit the logits
//! must be the exact split's bit for bit, past it close to them; the kernels each pass runs
//! are checked, and the greedy chain must cross the limit exactly as plain calls do. Runs on lavapipe in CI; without an adapter these fail unless
//! GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{long_context_key, KernelKey};
use ggufq::gpu::{GpuContext, GpuModel, ModelOptions};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, tiny_source};

const LIMIT: u32 = 40;
const STEPS: u32 = 60;

fn ctx(exact: bool, max: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.attn_exact = exact;
        c.tune.attn_exact_max = max;
    })
}

fn load(c: Arc<GpuContext>, mix: &str) -> GpuModel {
    let opts = ModelOptions {
        n_ctx: 128,
        n_batch: 8,
        n_seq: 1,
    };
    GpuModel::load(c, &tiny_source(mix), opts).unwrap()
}

/// Logits of a 4-token prompt, then one-token calls at positions 4 .. 4 + STEPS.
fn plain(m: &mut GpuModel) -> Vec<Vec<f32>> {
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..4u32).map(|i| ((i * 31 + 3) % nv, 0, i)).collect();
    m.forward(&prompt, false).unwrap();
    (4..4 + STEPS)
        .map(|p| m.forward(&[((p * 53 + 7) % nv, 0, p)], false).unwrap())
        .collect()
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn gpu_decode_attention_switches_to_flash_decoding_past_the_limit() {
    // q8_0: the two kernels' small differences flip roundings of the Q8_0 `wo` input, so the
    // logits show the switch; q4_k (Q8_K blocks): they happen not to.
    for (mix, must_differ) in [("q8_0", true), ("q4_k", false)] {
        let (Some(switch), Some(exact)) = (ctx(true, LIMIT), ctx(true, u32::MAX)) else {
            return;
        };
        let mut ma = load(switch, mix);
        // The pass at position LIMIT - 1 runs the exact split, the one at LIMIT does not.
        let exact_at = |m: &GpuModel, p: u32| -> Vec<bool> {
            m.decode_keys_at(p)
                .iter()
                .filter_map(|k| match k {
                    KernelKey::AttnDecode { exact, .. } | KernelKey::AttnDecodeQ { exact, .. } => {
                        Some(*exact)
                    }
                    _ => None,
                })
                .collect()
        };
        let layers = ma.cfg.n_layer;
        assert_eq!(exact_at(&ma, LIMIT - 1), vec![true; layers], "{mix}");
        assert_eq!(exact_at(&ma, LIMIT), vec![false; layers], "{mix}");
        let mut me = load(exact, mix);
        assert_eq!(exact_at(&me, LIMIT + 50), vec![true; layers], "{mix}");
        let a = plain(&mut ma);
        let e = plain(&mut me);
        let (mut differ, mut top1, mut past) = (0, 0, 0);
        for (i, p) in (4..4 + STEPS).enumerate() {
            if p < LIMIT {
                assert!(
                    same(&a[i], &e[i]),
                    "{mix}: position {p} is not the exact split's"
                );
                continue;
            }
            differ += usize::from(!same(&a[i], &e[i]));
            // Flash-decoding stays close to the exact split (same top-1, small rms).
            let (mut num, mut den) = (0f64, 0f64);
            for (x, y) in a[i].iter().zip(&e[i]) {
                num += ((x - y) as f64).powi(2);
                den += (*y as f64).powi(2);
            }
            let rel = (num / den).sqrt();
            assert!(
                rel < 2e-2,
                "{mix}: position {p}: rms {rel:.2e} from the exact split"
            );
            top1 +=
                usize::from(ggufq::model::greedy_token(&a[i]) == ggufq::model::greedy_token(&e[i]));
            past += 1;
        }
        // Random tiny models have near ties (the H100 flipped q8_0's top-1 at position 53).
        assert!(
            10 * top1 >= 9 * past,
            "{mix}: top-1 agrees {top1} of {past}"
        );
        if must_differ {
            assert!(
                differ > 0,
                "{mix}: no position past the limit changed: no switch?"
            );
        }
    }
}

#[test]
fn gpu_greedy_chain_crosses_the_limit_like_plain_calls() {
    let (Some(c1), Some(c2)) = (ctx(true, LIMIT), ctx(true, LIMIT)) else {
        return;
    };
    // q8_0: the switch shows in the logits (see above).
    let mut chain = load(c1, "q8_0");
    let mut host = load(c2, "q8_0");
    let nv = chain.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..6u32).map(|i| ((i * 31 + 3) % nv, 0, i)).collect();
    let first_logits = chain.forward(&prompt, false).unwrap();
    host.forward(&prompt, false).unwrap();
    let first = ggufq::model::greedy_token(&first_logits);
    // Chain: positions 6 .. 6 + 60, across LIMIT.
    let mut got: Vec<(u32, Vec<f32>)> = Vec::new();
    chain
        .decode_greedy(first, 0, 6, 60, &mut |_, l, t| {
            got.push((t, l.to_vec()));
            Ok(true)
        })
        .unwrap();
    let mut tok = first;
    for (i, (t, l)) in got.iter().enumerate() {
        let want = host.forward(&[(tok, 0, 6 + i as u32)], false).unwrap();
        assert!(same(l, &want), "greedy step {i} (position {})", 6 + i);
        tok = ggufq::model::greedy_token(&want);
        assert_eq!(*t, tok, "greedy step {i}");
    }
    assert_eq!(got.len(), 60);
}

#[test]
fn long_context_keys_leave_other_kernels_alone() {
    let k = KernelKey::AttnDecodeQ {
        ctx: 4096,
        hd: 128,
        nch: 32,
        lmin: 32,
        exact: true,
        reset: true,
    };
    assert_eq!(
        long_context_key(&k),
        Some(KernelKey::AttnDecodeQ {
            ctx: 128,
            hd: 128,
            nch: 32,
            lmin: 32,
            exact: false,
            reset: true,
        })
    );
    let plain = KernelKey::AttnDecode {
        ctx: 4096,
        hd: 128,
        nch: 1,
        lmin: 32,
        exact: true,
    };
    assert_eq!(long_context_key(&plain), None);
    assert_eq!(long_context_key(&KernelKey::Rope), None);
    assert_eq!(
        long_context_key(&KernelKey::AttnCombineQ {
            nch: 16,
            exact: true
        }),
        Some(KernelKey::AttnCombineQ {
            nch: 16,
            exact: false
        })
    );
}
