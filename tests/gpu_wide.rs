//! 128-bit weight loads in the integer decode mat-vecs (`Tune::wide`, `kernels::wide_weights`):
//! the weights are bound as `array<vec4<u32>>` and each group of 4 words a dot product reads
//! becomes one load. The words are the same, so the decode logits must equal the 32-bit-load
//! kernels bit for bit, with one weight chunk per matrix and with matrices split into many
//! chunks (small binding limit). Runs on lavapipe in CI; without an adapter these fail unless
//! GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{wide_weights, KernelKey, Kernels};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{DeviceOptions, GpuContext, GpuModel, ModelOptions, Shape, SynthSource};
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::device;

#[test]
fn wide_weights_turns_aligned_groups_into_vector_loads() {
    let src = "var<storage, read> W: array<u32>;
var<storage, read> NW: array<u32>;
fn f(b: u32) -> u32 {
    let o = b * 4u;
    let w = vec4<u32>(W[o], W[o + 1u], W[o + 2u], W[o + 3u]);
    let v = vec4<u32>(W[o + 4u], W[o + 5u], W[o + 6u], W[o + 7u]);
    let u = vec4<u32>(W[o + 1u], W[o + 2u], W[o + 3u], W[o + 4u]);
    let d = W[8u + (b >> 1u)] + NW[b];
    return w.x + v.y + u.z + d;
}";
    let out = wide_weights(src).unwrap();
    assert!(
        out.contains("var<storage, read> W: array<vec4<u32>>;"),
        "{out}"
    );
    assert!(out.contains("let w = W[(o) >> 2u];"), "{out}");
    assert!(out.contains("let v = W[(o + 4u) >> 2u];"), "{out}");
    // Not 4-aligned: four scalar words.
    assert!(
        out.contains("let u = vec4<u32>(wl(o + 1u), wl(o + 2u), wl(o + 3u), wl(o + 4u));"),
        "{out}"
    );
    // Scalar reads go through wl(); other arrays ending in W are left alone.
    assert!(out.contains("let d = wl(8u + (b >> 1u)) + NW[b];"), "{out}");
    assert!(out.contains("fn wl(i: u32) -> u32 {\n    return W[i >> 2u][i & 3u];\n}"));
    // A kernel without the u32 weight binding is refused.
    assert!(wide_weights("var<storage, read> W: array<f32>;").is_err());
}

fn ctx(wide: u32, max_binding: Option<u64>) -> Option<Arc<GpuContext>> {
    let mut c = device(&DeviceOptions {
        max_binding_override: max_binding,
        ..Default::default()
    })?;
    c.tune.wide = wide;
    Some(Arc::new(c))
}

fn decode(c: Arc<GpuContext>, mix: &str, steps: u32) -> (Vec<Vec<f32>>, usize) {
    let src =
        SynthSource::new(Shape::named("tiny").unwrap(), Mix::parse(mix).unwrap(), mix).unwrap();
    let opts = ModelOptions {
        n_ctx: 64,
        n_batch: 8,
        n_seq: 1,
    };
    let mut m = GpuModel::load(c, &src, opts).unwrap();
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..3u32).map(|i| ((i * 37 + 11) % nv, 0, i)).collect();
    m.forward(&prompt, false).unwrap();
    let rows = (0..steps)
        .map(|i| m.forward(&[((i * 53 + 7) % nv, 0, 3 + i)], false).unwrap())
        .collect();
    (rows, m.dispatches_per_token())
}

#[test]
fn gpu_wide_loads_equal_scalar_loads_bit_for_bit() {
    for mix in ["q4_0", "q8_0", "q4_k", "q5_k", "q6_k", "q4_k_m"] {
        // Every wide type (GGUFQ_WIDE=2) vs none. One chunk per matrix, then 16 KiB bindings (many chunks, each its own vectors).
        for max_binding in [None, Some(16 << 10)] {
            let (Some(a), Some(b)) = (ctx(0, max_binding), ctx(2, max_binding)) else {
                return;
            };
            let (plain, n_plain) = decode(a, mix, 10);
            let (wide, n_wide) = decode(b, mix, 10);
            if max_binding.is_some() {
                assert!(n_wide > 40, "{mix}: the matrices were not split ({n_wide})");
            }
            assert_eq!(n_plain, n_wide);
            for (i, (x, y)) in plain.iter().zip(&wide).enumerate() {
                assert!(x.iter().all(|v| v.is_finite()), "{mix}: non-finite");
                assert_eq!(x, y, "{mix} {max_binding:?}: decode step {i} differs");
            }
        }
    }
}

#[test]
fn gpu_wide_kernels_load_every_quant_group_as_one_vector() {
    let (Some(c), Some(d)) = (ctx(2, None), ctx(1, None)) else {
        return;
    };
    for ty in ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"] {
        let id = GgmlType::from_name(ty).unwrap().id();
        let key = KernelKey::MatVecQ8 {
            ty: id,
            nr: 4,
            spl: 128,
        };
        let src = Kernels::source(&c, &key).unwrap();
        assert!(src.contains("W: array<vec4<u32>>"), "{ty}");
        // No 4-word group is left as four scalar loads.
        assert!(!src.contains("vec4<u32>(wl("), "{ty}: {src}");
        assert!(src.contains(">> 2u]"), "{ty}");
    }
    // Q2_K (84-byte blocks) keeps 32-bit loads.
    let q2 = GgmlType::from_name("Q2_K").unwrap().id();
    let src = Kernels::source(
        &c,
        &KernelKey::MatVecQ8 {
            ty: q2,
            nr: 4,
            spl: 128,
        },
    )
    .unwrap();
    assert!(src.contains("var<storage, read> W: array<u32>;"));
    // By default only the types that were faster on the H100.
    for (ty, wide) in [
        ("Q4_0", true),
        ("Q8_0", true),
        ("Q4_K", false),
        ("Q6_K", false),
    ] {
        let key = KernelKey::MatVecQ8 {
            ty: GgmlType::from_name(ty).unwrap().id(),
            nr: 4,
            spl: 128,
        };
        let src = Kernels::source(&d, &key).unwrap();
        assert_eq!(src.contains("W: array<vec4<u32>>"), wide, "{ty}");
    }
}
