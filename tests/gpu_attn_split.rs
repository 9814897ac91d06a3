//! The split decode attention (flash-decoding, `Tune::attn_split`): contexts longer than one
//! chunk, so several workgroups per head write partial results that the rounding of the
//! attention output (before `wo`) combines. Decode rows are compared against the CPU backend
//! and against the unsplit kernel (GGUFQ_ATTN_SPLIT=0).
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuBackend, GpuModel, ModelOptions, Shape, SynthSource};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, write_tiny};

fn rms_rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let r: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / r).sqrt()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// Logits rows of `steps` one-token decode steps after a 5-token prompt (positions 5 …).
fn decode_rows(b: &mut dyn Backend, steps: usize) -> Vec<Vec<f32>> {
    let prompt: Vec<u32> = (0..5u32).map(|i| (i * 37 + 11) % 500).collect();
    let mut l = Vec::new();
    b.forward(&prompt, LogitsWanted::Last, &mut l).unwrap();
    (0..steps as u32)
        .map(|i| {
            b.forward(&[(i * 53 + 7) % 500], LogitsWanted::Last, &mut l)
                .unwrap();
            l.clone()
        })
        .collect()
}

#[test]
fn gpu_split_decode_attention_over_several_chunks_matches_cpu_and_unsplit() {
    // Chunks of at least 16 positions: positions 5 … 44 give 1 to 3 chunks per head.
    let Some(split) = context_tuned(|c| c.tune.attn_split = 16) else {
        return;
    };
    let Some(plain) = context_tuned(|c| c.tune.attn_split = 0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Rounding steps of the wo input: Q8_K (1/127 of the block maximum) and f16 (2^-11).
    for (mix, noise) in [("f16", 2e-3), ("q6_k", 3e-2)] {
        // The decode graph combines the chunks in the rounding before wo: same dispatch count.
        let src =
            SynthSource::new(Shape::named("tiny").unwrap(), Mix::parse(mix).unwrap(), mix).unwrap();
        let opts = ModelOptions {
            n_ctx: 256,
            n_batch: 8,
            n_seq: 1,
        };
        let ms = GpuModel::load(split.clone(), &src, opts.clone()).unwrap();
        let mp = GpuModel::load(plain.clone(), &src, opts).unwrap();
        let roles = ms.step_roles();
        assert_eq!(
            roles.iter().filter(|r| **r == "attn_out_q").count(),
            2,
            "{roles:?}"
        );
        assert!(!mp.step_roles().contains(&"attn_out_q"));
        assert_eq!(ms.dispatches_per_token(), mp.dispatches_per_token());
        drop((ms, mp));

        let path = write_tiny(dir.path(), mix);
        let model = Model::open(&path).unwrap();
        let steps = 40;
        let mut cpu = CpuBackend::new(&model, 256, 1).unwrap();
        let rc = decode_rows(&mut cpu, steps);
        let mut gs =
            GpuBackend::load(split.clone(), &path, model.hparams.clone(), 256, 64).unwrap();
        let mut gp =
            GpuBackend::load(plain.clone(), &path, model.hparams.clone(), 256, 64).unwrap();
        let rs = decode_rows(&mut gs, steps);
        let rp = decode_rows(&mut gp, steps);
        let (mut worst_cpu, mut worst_plain, mut top1) = (0f64, 0f64, 0);
        for i in 0..steps {
            let pos = i + 5;
            let ec = rms_rel(&rs[i], &rc[i]);
            let ep = rms_rel(&rs[i], &rp[i]);
            if pos < 16 {
                // One chunk: the lone chunk weighs exactly 1, the unsplit kernel's values.
                assert_eq!(rs[i], rp[i], "{mix}: position {pos} (one chunk) differs");
            }
            worst_cpu = worst_cpu.max(ec);
            worst_plain = worst_plain.max(ep);
            top1 += usize::from(argmax(&rs[i]) == argmax(&rc[i]));
        }
        eprintln!(
            "{mix}: split vs CPU worst {worst_cpu:.3e} (top-1 {top1}/{steps}), split vs unsplit \
             worst {worst_plain:.3e}"
        );
        // Several chunks: each chunk rounds its probabilities to f16 against its own sum, not
        // the global one, so a few roundings of the wo input flip (one rounding step each);
        // a wrong combination would not scale with the rounding step (chunk weights of 1/2
        // instead of sum · exp(max − M) / Σ give 1.05 for f16 here).
        assert!(worst_plain > 0.0, "{mix}: no row used several chunks");
        assert!(
            worst_plain < noise,
            "{mix}: split vs unsplit {worst_plain:.3e}"
        );
        assert!(worst_cpu < noise, "{mix}: split vs CPU {worst_cpu:.3e}");
        assert!(top1 + 1 >= steps, "{mix}: top-1 {top1}/{steps}");
    }
}
