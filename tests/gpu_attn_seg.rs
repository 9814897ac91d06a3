//! Decode attention by output segment (`Tune::attn_seg`, `KernelKey::AttnDecodeS`): one
//! workgroup per 256 attention output values scores, weighs and rounds them for `wo`, in
//! place of the split attention with its last-workgroup epilogue. Its sums run in another
//! order, so the decode logits must agree with the split graph and with the CPU backend to
//! rounding (bounds and top-1 below), not bit for bit; the graph must use the new kernel, one
//! attention dispatch per layer and no rounding dispatch.
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{KernelKey, Kernels};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuContext, GpuModel, ModelOptions, Shape, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, rms_rel};

fn ctx(seg: bool) -> Option<Arc<GpuContext>> {
    context_tuned(|c| c.tune.attn_seg = seg)
}

/// hd 64 with GQA (the tiny shape: 4 heads, 2 KV heads, one segment of 4 heads) and hd 128
/// without GQA (2 segments of 2 heads): [`gpu_fixture::tiny_or_hd128`].
fn shape(name: &str) -> Shape {
    gpu_fixture::tiny_or_hd128(name)
}

const N_CTX: usize = 256;

fn opts() -> ModelOptions {
    ModelOptions {
        n_ctx: N_CTX,
        n_batch: 8,
        n_seq: 1,
    }
}

/// Logits of a 5-token prompt's decode continuation: `steps` one-token forwards from
/// position 5 (up to position 5 + steps − 1, past the 16-row V batches of the kernel).
fn decode(m: &mut GpuModel, steps: u32) -> Vec<Vec<f32>> {
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..5u32).map(|i| ((i * 37 + 11) % nv, 0, i)).collect();
    m.forward(&prompt, false).unwrap();
    (0..steps)
        .map(|i| m.forward(&[((i * 53 + 7) % nv, 0, 5 + i)], false).unwrap())
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |a| a.0)
}

#[test]
fn gpu_attn_seg_graph_uses_one_dispatch_per_layer_and_agrees_with_the_split() {
    // Q8_K rounding (q4_k: 256-value blocks), Q8_0 (q4_0, q8_0: 32-value blocks), Q8_1 (q5_1:
    // the f32 mat-vec reads the rounded values).
    for (shape_name, mix) in [
        ("tiny", "q4_k"),
        ("tiny", "q8_0"),
        ("tiny", "q5_1"),
        ("hd128", "q4_k"),
        ("hd128", "q4_0"),
    ] {
        let (Some(cs), Some(cp)) = (ctx(true), ctx(false)) else {
            return;
        };
        let src = SynthSource::new(shape(shape_name), Mix::parse(mix).unwrap(), mix).unwrap();
        let mut ms = GpuModel::load(cs, &src, opts()).unwrap();
        let mut mp = GpuModel::load(cp, &src, opts()).unwrap();
        let layers = ms.cfg.n_layer;
        let segs = ms
            .step_keys()
            .iter()
            .filter(|k| matches!(k, KernelKey::AttnDecodeS { .. }))
            .count();
        assert_eq!(segs, layers, "{shape_name} {mix}: {:?}", ms.step_keys());
        assert!(!mp
            .step_keys()
            .iter()
            .any(|k| matches!(k, KernelKey::AttnDecodeS { .. })));
        assert!(!ms.step_roles().contains(&"attn_out_q"));
        assert_eq!(ms.dispatches_per_token(), mp.dispatches_per_token());
        let steps = 70;
        let a = decode(&mut ms, steps);
        let b = decode(&mut mp, steps);
        let mut worst = 0f64;
        for (i, (s, p)) in a.iter().zip(&b).enumerate() {
            assert!(
                s.iter().all(|v| v.is_finite()),
                "{shape_name} {mix}: non-finite"
            );
            let e = rms_rel(s, p);
            worst = worst.max(e);
            assert!(
                e < 2e-2,
                "{shape_name} {mix}: position {} off by {e:.3e}",
                i + 5
            );
        }
        let top1 = a
            .iter()
            .zip(&b)
            .filter(|(s, p)| argmax(s) == argmax(p))
            .count();
        eprintln!("{shape_name} {mix}: worst {worst:.3e}, top-1 {top1}/{steps}");
        assert!(
            top1 as u32 >= steps - 2,
            "{shape_name} {mix}: top-1 {top1}/{steps}"
        );
    }
}

#[test]
fn gpu_attn_seg_matches_the_cpu_backend() {
    for (shape_name, mix) in [("tiny", "q4_k"), ("hd128", "q4_0")] {
        let Some(c) = ctx(true) else {
            return;
        };
        let (rc, rg) = gpu_fixture::cpu_and_gpu_rows(c, shape(shape_name), mix, N_CTX);
        for (i, (c, g)) in rc.iter().zip(&rg).enumerate() {
            let e = rms_rel(g, c);
            assert!(
                e < 3e-2,
                "{shape_name} {mix}: row {i} off the CPU by {e:.3e}"
            );
            assert_eq!(argmax(g), argmax(c), "{shape_name} {mix}: row {i} top-1");
        }
    }
}

#[test]
fn gpu_attn_seg_kernel_compiles_with_and_without_subgroups() {
    // The per-head reduction has a subgroup path and a workgroup-memory tree; both must be
    // valid WGSL for every head size the kernel takes.
    for sub in [true, false] {
        let Some(c) = context_tuned(|c| c.subgroup32 = sub && c.subgroup32) else {
            return;
        };
        for hd in [32u32, 64, 128, 256] {
            let src = Kernels::source(&c, &KernelKey::AttnDecodeS { ctx: 64, hd }).unwrap();
            gpu_fixture::validate_wgsl(&src, &format!("attn seg hd {hd} sub {sub}"));
        }
        assert!(Kernels::source(&c, &KernelKey::AttnDecodeS { ctx: 64, hd: 96 }).is_err());
    }
}
