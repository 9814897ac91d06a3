//! The coalesced flash-decoding chunks (`Tune::attn_coal`, `COAL` in
//! `shaders/attn_decode.wgsl`): a K row scored by a group of lanes, several rows per group in
//! flight, V rows several at a time. They must agree with the one-row-per-thread chunks to
//! rounding for every rows-in-flight setting, head size 64 (grouped-query heads) and 128,
//! chunks shorter and longer than one block of rows, the new position inside a chunk; the
//! exact split must keep its own kernel text. Runs on lavapipe in CI (the workgroup-memory
//! reduction); the subgroup-shuffle variant is validated as text here and runs on GPUs with
//! 32-wide subgroups. Without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{attn_coal_lanes, KernelKey, Kernels};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuContext, GpuModel, ModelOptions, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, rms_rel, tiny_or_hd128, validate_wgsl};

/// Prompt length: the one-token passes then run at positions PROMPT .. PROMPT + STEPS.
const PROMPT: u32 = 200;
const STEPS: u32 = 10;

fn ctx(coal: u32, vrows: u32, klanes: u32, lmin: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.attn_exact = false;
        c.tune.attn_split = lmin;
        c.tune.attn_coal = coal;
        c.tune.attn_vrows = vrows;
        c.tune.attn_klanes = klanes;
        // The exact split's one-row-per-thread scoring (the coalesced one there is the
        // default: `Tune::attn_coal_exact`, checked below).
        c.tune.attn_coal_exact = false;
    })
}

/// Logits of one-token passes at positions PROMPT .. PROMPT + STEPS after a PROMPT-token
/// prompt (batches of 64), for the model of shape `shape` and mix `mix` on `c`.
fn run(c: Arc<GpuContext>, shape: &str, mix: &str) -> Vec<Vec<f32>> {
    let src = SynthSource::new(tiny_or_hd128(shape), Mix::parse(mix).unwrap(), mix).unwrap();
    let opts = ModelOptions {
        n_ctx: 512,
        n_batch: 64,
        n_seq: 1,
    };
    let mut m = GpuModel::load(c, &src, opts).unwrap();
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..PROMPT).map(|i| ((i * 31 + 3) % nv, 0, i)).collect();
    for b in prompt.chunks(64) {
        m.forward(b, false).unwrap();
    }
    (PROMPT..PROMPT + STEPS)
        .map(|p| m.forward(&[((p * 53 + 7) % nv, 0, p)], false).unwrap())
        .collect()
}

#[test]
fn gpu_coalesced_chunks_agree_with_one_row_per_thread() {
    // lmin 128: two live chunks of ≤ 128 rows at positions 200+ (one to four blocks of rows
    // per lane group); lmin 32: seven live chunks of 32 rows (blocks partly past the chunk).
    for (shape, lmin) in [("tiny", 128), ("hd128", 128), ("tiny", 32)] {
        let Some(base_ctx) = ctx(0, 8, 8, lmin) else {
            return;
        };
        let base = run(base_ctx, shape, "q8_0");
        let mut first: Vec<(u32, Vec<Vec<f32>>)> = Vec::new();
        let settings = [
            (1, 4, 8),
            (2, 16, 8),
            (4, 8, 8),
            (8, 8, 8),
            (1, 8, 4),
            (2, 4, 4),
            (1, 8, 16),
            (2, 4, 16),
            (1, 8, 32),
            (2, 4, 32),
        ];
        for (coal, vrows, klanes) in settings {
            let c = ctx(coal, vrows, klanes, lmin).unwrap();
            let got = run(c, shape, "q8_0");
            // Rows in flight change no sum's order: with the same lanes per row every
            // setting gives the same bits.
            match first.iter().find(|(k, _)| *k == klanes) {
                None => first.push((klanes, got.clone())),
                Some((_, f)) => assert!(
                    f.iter()
                        .flatten()
                        .zip(got.iter().flatten())
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{shape} lmin {lmin}: coal {coal} vrows {vrows} klanes {klanes} differs \
                     from the first setting with {klanes} lanes"
                ),
            }
            // The dots' order differs: a few roundings (f16 probabilities, the Q8_0 `wo`
            // input) may flip, as between the exact split and flash-decoding.
            let mut top1 = 0;
            for (i, (g, b)) in got.iter().zip(&base).enumerate() {
                let rel = rms_rel(g, b);
                assert!(
                    rel < 2e-2,
                    "{shape} lmin {lmin} coal {coal} vrows {vrows} klanes {klanes}: position {}: rms {rel:.2e}",
                    PROMPT + i as u32
                );
                top1 += usize::from(ggufq::model::greedy_token(g) == ggufq::model::greedy_token(b));
            }
            assert!(
                10 * top1 >= 9 * STEPS as usize,
                "{shape} lmin {lmin} coal {coal}: top-1 agrees {top1} of {STEPS}"
            );
        }
    }
}

#[test]
fn gpu_coalesced_kernel_text_only_in_flash_decoding_chunks() {
    let Some(c) = ctx(4, 8, 8, 32) else {
        return;
    };
    let key = |exact| KernelKey::AttnDecodeQ {
        ctx: 64,
        hd: 128,
        nch: 16,
        lmin: 32,
        exact,
        reset: true,
    };
    let flash = Kernels::source(&c, &key(false)).unwrap();
    assert!(flash.contains("const COAL: bool = true;"), "{flash}");
    assert!(flash.contains("const KU: u32 = 4u;"));
    assert!(flash.contains("const KG: u32 = 8u;"));
    assert!(flash.contains("const VU: u32 = 8u;"));
    let exact = Kernels::source(&c, &key(true)).unwrap();
    assert!(exact.contains("const COAL: bool = false;"));
    // The default: the exact split scores coalesced too.
    let dflt = context_tuned(|_| {}).unwrap();
    assert!(dflt.tune.attn_coal_exact);
    let exact = Kernels::source(&dflt, &key(true)).unwrap();
    assert!(exact.contains("const COAL: bool = true;"));
    let off = ctx(0, 8, 8, 32).unwrap();
    let plain = Kernels::source(&off, &key(false)).unwrap();
    assert!(plain.contains("const COAL: bool = false;"));
    // Both reductions are valid WGSL whatever this adapter has (shuffles need 32-wide
    // subgroups: text only on lavapipe), for head sizes 64, 80 (4 lanes) and 128.
    for sub in [false, true] {
        let cs = context_tuned(|g| {
            g.tune.attn_coal = 2;
            g.subgroup32 = sub;
        })
        .unwrap();
        for hd in [64, 80, 128] {
            let k = KernelKey::AttnDecode {
                ctx: 64,
                hd,
                nch: 16,
                lmin: 32,
                exact: false,
            };
            let src = Kernels::source(&cs, &k).unwrap();
            assert_eq!(src.contains("subgroupShuffleXor"), sub, "hd {hd}");
            validate_wgsl(&src, &format!("attn decode coal hd {hd} sub {sub}"));
        }
    }
}

#[test]
fn coalesced_lanes_divide_the_row() {
    assert_eq!(attn_coal_lanes(32, 8), 8);
    assert_eq!(attn_coal_lanes(32, 32), 32);
    assert_eq!(attn_coal_lanes(16, 32), 16);
    assert_eq!(attn_coal_lanes(16, 8), 8);
    assert_eq!(attn_coal_lanes(20, 8), 4);
    assert_eq!(attn_coal_lanes(20, 32), 4);
    assert_eq!(attn_coal_lanes(18, 16), 2);
    assert_eq!(attn_coal_lanes(9, 8), 1);
}
