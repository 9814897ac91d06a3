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

/// [`gpu_fixture::tiny_or_hd128`].
fn shape(name: &str) -> Shape {
    gpu_fixture::tiny_or_hd128(name)
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
    let nv = m16.cfg.n_vocab;
    if let Some((i, x, y)) = first_difference(&a, &b) {
        // Rows 0..12: the prompt; 12..52: the decode steps (position = row); then sequence
        // 1's prompt row and the two-sequence steps.
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        panic!(
            "{what}: f16 and f32 caches give different logits: first at row {} (logit {}): {x} vs {y}; {differ} of {} differ",
            i / nv,
            i % nv,
            a.len()
        );
    }
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

/// `R16_WGSL` (the f16 rounding of Q, K, V and attention probabilities in every attention
/// kernel) on the adapter against the `half` crate's f32 → f16 → f32 (ties to even):
/// ties, f16 subnormals, the overflow edge, and 2^17 values over every f32 exponent that
/// matters. Also counts (without asserting) how often `unpack2x16float(pack2x16float(x))`
/// differs on this adapter: the H100's driver left values unrounded there.
#[test]
fn gpu_r16_rounds_to_nearest_f16_like_the_half_crate() {
    use ggufq::gpu::buffers::{bind_buffers, f32_buffer, scratch};
    use ggufq::gpu::kernels::{buffer_layouts, R16_WGSL};
    let Some(c) = ctx(false, |_| {}) else {
        return;
    };
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        -1.0 - 1.0 / 2048.0,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        1e9,
        6.1e-5,
        3.0e-8,
        2.98e-8,
        5.96e-8,
        8.9e-8,
        1e-12,
        -1e-7,
    ];
    let mut s = 0x9e37_79b9u32;
    while xs.len() < 1 << 17 {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        // Exponents 2^-30 .. 2^17, random mantissas and signs.
        let e = 97 + (s >> 8) % 48;
        xs.push(f32::from_bits(
            (s & 0x8000_0000) | (e << 23) | (s.rotate_left(11) & 0x7f_ffff),
        ));
    }
    let text = format!(
        "@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
{R16_WGSL}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {{
    let n = arrayLength(&X);
    if (g.x < n) {{
        Y[g.x] = r16(X[g.x]);
        Y[n + g.x] = unpack2x16float(pack2x16float(vec2<f32>(X[g.x], 0.0))).x;
    }}
}}
"
    );
    let module = c.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("r16"),
        source: wgpu::ShaderSource::Wgsl(text.into()),
    });
    let (bgl, pl) = buffer_layouts(&c, "r16", b"rw");
    let pipe = c
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("r16"),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    let xb = f32_buffer(&c, "x", &xs);
    let yb = scratch(&c, "y", 2 * xs.len());
    let bg = bind_buffers(&c, &bgl, &[(0, &xb), (1, &yb)]);
    let mut enc = c.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(xs.len().div_ceil(256) as u32, 1, 1);
    }
    c.queue.submit([enc.finish()]);
    let y = c.read_f32(&yb, 0, 2 * xs.len()).unwrap();
    let want = |x: f32| half::f16::from_f32(x).to_f32();
    let bad: Vec<(f32, f32, f32)> = xs
        .iter()
        .zip(&y)
        .filter(|(x, g)| g.to_bits() != want(**x).to_bits())
        .map(|(x, g)| (*x, *g, want(*x)))
        .collect();
    let packed = xs
        .iter()
        .zip(&y[xs.len()..])
        .filter(|(x, g)| g.to_bits() != want(**x).to_bits())
        .count();
    eprintln!(
        "{}: pack2x16float round trip differs from f16 rounding for {packed} of {} values",
        c.facts.name,
        xs.len()
    );
    assert!(
        bad.is_empty(),
        "r16 differs for {} of {} values, e.g. (x, r16, f16) {:?}",
        bad.len(),
        xs.len(),
        &bad[..bad.len().min(5)]
    );
}
