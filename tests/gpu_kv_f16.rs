//! The GPU engine's KV cache holds f16 halves, two per word (llama.cpp's default f16 cache),
//! unless `Tune::kv_f32` (GGUFQ_KV_F32=1) keeps f32 values. Every K and V value is rounded
//! to f16 before it is stored in either, so the logits must be equal bit for bit, through
//! every kernel that stores or reads the cache: the RoPE/KV store and the prompt attention
//! (batch graph), the fused decode attention (split with its last-workgroup epilogue,
//! unsplit, by segment), several sequences at once; and the f16 cache must take half the
//! memory. Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{KernelKey, Kernels};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuContext, GpuModel, ModelOptions, Shape, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::context_tuned;

fn ctx(f32: bool, tune: fn(&mut GpuContext)) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.kv_f32 = f32;
        tune(c)
    })
}

/// The tiny shape (hd 64, GQA 4 / 2) or a 512-wide one with hd 128 and no GQA.
fn shape(name: &str) -> Shape {
    let mut s = Shape::named("tiny").unwrap();
    if name == "hd128" {
        s.n_embd = 512;
        s.n_head = 4;
        s.n_kv = 4;
    }
    s
}

fn opts(n_seq: usize) -> ModelOptions {
    ModelOptions {
        n_ctx: 96,
        n_batch: 16,
        n_seq,
    }
}

/// Every logit of a fixed call sequence: a 12-token prompt (batch graph, prompt attention),
/// 40 one-token steps (decode graph, positions 12..52, past the split attention's chunks of
/// 32), then two sequences side by side (a 9-token prompt on sequence 1, then 6 steps of both
/// sequences in one call each).
fn run(m: &mut GpuModel, n_seq: usize) -> Vec<f32> {
    let nv = m.cfg.n_vocab as u32;
    let tok = |i: u32| (i * 37 + 11) % nv;
    let mut out = Vec::new();
    let prompt: Vec<(u32, u32, u32)> = (0..12u32).map(|i| (tok(i), 0, i)).collect();
    out.extend(m.forward(&prompt, true).unwrap());
    for p in 12..52u32 {
        out.extend(m.forward(&[(tok(p + 100), 0, p)], false).unwrap());
    }
    if n_seq > 1 {
        let p1: Vec<(u32, u32, u32)> = (0..9u32).map(|i| (tok(i + 200), 1, i)).collect();
        out.extend(m.forward(&p1, false).unwrap());
        for s in 0..6u32 {
            let step = [(tok(s + 300), 0, 52 + s), (tok(s + 400), 1, 9 + s)];
            out.extend(m.forward(&step, false).unwrap());
        }
    }
    out
}

fn first_difference(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    if a.len() != b.len() {
        return Some((usize::MAX, a.len() as f32, b.len() as f32));
    }
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x.to_bits() != y.to_bits())
        .map(|(i, (x, y))| (i, *x, *y))
}

fn check(what: &str, shape_name: &str, mix: &str, n_seq: usize, tune: fn(&mut GpuContext)) {
    let (Some(c16), Some(c32)) = (ctx(false, tune), ctx(true, tune)) else {
        return;
    };
    let src = SynthSource::new(shape(shape_name), Mix::parse(mix).unwrap(), mix).unwrap();
    let mut m16 = GpuModel::load(c16, &src, opts(n_seq)).unwrap();
    let mut m32 = GpuModel::load(c32, &src, opts(n_seq)).unwrap();
    // The cache: 2 (K, V) × layers × sequences × positions × KV width, 2 or 4 bytes each.
    let kv_dim = (m16.cfg.n_kv * m16.cfg.head_dim) as u64;
    let values = 2 * m16.cfg.n_layer as u64 * n_seq as u64 * 96 * kv_dim;
    assert_eq!(m16.memory.kv_cache, 2 * values, "{what}: f16 cache bytes");
    assert_eq!(m32.memory.kv_cache, 4 * values, "{what}: f32 cache bytes");
    let a = run(&mut m16, n_seq);
    let b = run(&mut m32, n_seq);
    assert!(
        a.iter().any(|x| *x != 0.0) && a.iter().all(|x| x.is_finite()),
        "{what}: logits"
    );
    assert_eq!(
        first_difference(&a, &b),
        None,
        "{what}: f16 and f32 caches give different logits (index, f16, f32)"
    );
}

#[test]
fn gpu_f16_kv_cache_gives_the_f32_caches_logits_bit_for_bit() {
    // Default decode graph: split attention, last-workgroup rounding epilogue.
    check("tiny q4_k split", "tiny", "q4_k", 1, |_| {});
    check(
        "hd128 q4_0 split, two sequences",
        "hd128",
        "q4_0",
        2,
        |_| {},
    );
    check("tiny q8_0 unsplit", "tiny", "q8_0", 1, |c| {
        c.tune.attn_split = 0
    });
    check("hd128 q6_k by segment", "hd128", "q6_k", 1, |c| {
        c.tune.attn_seg = true
    });
    check("tiny f32 K/V prefetch", "tiny", "f32", 1, |c| {
        c.tune.attn_pre = 3
    });
}

#[test]
fn gpu_kv_kernels_bind_the_cache_as_f16_halves_by_default() {
    let (Some(c16), Some(c32)) = (ctx(false, |_| {}), ctx(true, |_| {})) else {
        return;
    };
    for key in [
        KernelKey::Rope,
        KernelKey::Attention {
            hd: 64,
            qt: 16,
            kb: 16,
        },
        KernelKey::AttnDecode {
            ctx: 64,
            hd: 64,
            nch: 4,
            lmin: 16,
            exact: true,
        },
    ] {
        let s16 = Kernels::source(&c16, &key).unwrap();
        let s32 = Kernels::source(&c32, &key).unwrap();
        assert!(!s16.contains("$KV") && !s32.contains("$KV"), "{key:?}");
        assert!(s16.contains("pack2x16float(v") || s16.contains("unpack2x16float(w"));
        assert!(
            s16.contains("KC: array<u32>") || s16.contains("KC: array<vec2<u32>>"),
            "{key:?}"
        );
        assert!(
            s32.contains("KC: array<vec2<f32>>") || s32.contains("KC: array<vec4<f32>>"),
            "{key:?}"
        );
    }
}
