//! The GPU engine behind `model::Backend` against the CPU backend (the reference) on a tiny
//! synthetic model written as a GGUF: logits of a prompt and of incremental decode, the
//! perplexity of `eval::ppl`, and the backend contract's errors. Runs on lavapipe in CI;
//! without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::eval::ppl::{perplexity, PplOptions};
use ggufq::gpu::GpuBackend;
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context, tokens, write_tiny};

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

#[test]
fn gpu_backend_matches_cpu_backend_logits_and_ppl() {
    let Some(ctx) = context() else { return };
    let dir = tempfile::tempdir().unwrap();
    for mix in ["q8_0", "q4_k_m", "f16"] {
        let path = write_tiny(dir.path(), mix);
        let model = Model::open(&path).unwrap();
        let nv = model.hparams.n_vocab;
        let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
        // Batches of 16 so a 40-token prompt spans three GPU forwards.
        let mut gpu = GpuBackend::load(ctx.clone(), &path, model.hparams.clone(), 64, 16).unwrap();
        assert!(gpu.name().starts_with("gpu ("), "{}", gpu.name());
        assert_eq!(gpu.n_ctx(), 64);

        let prompt = tokens(nv, 40, 7);
        let (mut lc, mut lg) = (Vec::new(), Vec::new());
        cpu.forward(&prompt, LogitsWanted::From(10), &mut lc)
            .unwrap();
        gpu.forward(&prompt, LogitsWanted::From(10), &mut lg)
            .unwrap();
        assert_eq!(lg.len(), 30 * nv);
        let e = max_rel(&lg, &lc);
        assert!(e < 2e-2, "{mix}: prompt logits differ by {e} of the range");
        let agree = (0..30)
            .filter(|&i| argmax(&lg[i * nv..(i + 1) * nv]) == argmax(&lc[i * nv..(i + 1) * nv]))
            .count();
        assert!(agree >= 28, "{mix}: top-1 agrees on {agree}/30 rows");

        // Decode continues from the cache: same last-token logits, n_past advances.
        for t in tokens(nv, 3, 9) {
            cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
            gpu.forward(&[t], LogitsWanted::Last, &mut lg).unwrap();
            assert_eq!(lg.len(), nv);
            let e = max_rel(&lg, &lc);
            assert!(e < 2e-2, "{mix}: decode logits differ by {e}");
        }
        assert_eq!(gpu.n_past(), 43);
        gpu.forward(&[1, 2], LogitsWanted::None, &mut lg).unwrap();
        assert!(lg.is_empty());

        // Perplexity through eval::ppl on both backends.
        let text = tokens(nv, 200, 11);
        let opts = PplOptions {
            n_ctx: 48,
            n_chunks: None,
            bos: Some(1),
        };
        let pc = perplexity(&mut cpu, &text, &opts, &mut |_, _, _| {}).unwrap();
        let pg = perplexity(&mut gpu, &text, &opts, &mut |_, _, _| {}).unwrap();
        assert_eq!((pg.n_chunks, pg.n_scored), (4, 4 * 23));
        let rel = (pg.ppl / pc.ppl - 1.0).abs();
        eprintln!(
            "{mix}: ppl cpu {:.6} gpu {:.6} rel {rel:.2e}",
            pc.ppl, pg.ppl
        );
        assert!(rel < 2e-3, "{mix}: ppl cpu {} gpu {}", pc.ppl, pg.ppl);
    }
}

#[test]
fn gpu_backend_contract_errors() {
    let Some(ctx) = context() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), "q4_0");
    let model = Model::open(&path).unwrap();
    let mut gpu = GpuBackend::load(ctx, &path, model.hparams.clone(), 16, 8).unwrap();
    let mut out = Vec::new();
    // Token outside the vocabulary and context overflow: errors, cache unchanged.
    assert!(gpu.forward(&[512], LogitsWanted::Last, &mut out).is_err());
    gpu.forward(&[3; 10], LogitsWanted::Last, &mut out).unwrap();
    let before = out.clone();
    assert!(gpu.forward(&[3; 7], LogitsWanted::Last, &mut out).is_err());
    assert_eq!(gpu.n_past(), 10);
    assert!(gpu.forward(&[], LogitsWanted::Last, &mut out).is_err());
    // reset: the same tokens give the same logits again (to float rounding: `All` runs the
    // output matrix with the batched kernel, `Last` with the decode kernel).
    gpu.reset();
    gpu.forward(&[3; 10], LogitsWanted::All, &mut out).unwrap();
    assert_eq!(out.len(), 10 * 512);
    assert!(max_rel(&out[9 * 512..], &before) < 1e-5);
    // Mismatched hyper-parameters are refused.
    let mut hp = model.hparams.clone();
    hp.n_ff += 1;
    let src = ggufq::gpu::GgufSource::open(&path).unwrap();
    let m = ggufq::gpu::GpuModel::load(
        gpu.model().context().clone(),
        &src,
        ggufq::gpu::ModelOptions::default(),
    )
    .unwrap();
    assert!(GpuBackend::from_model(m, hp).is_err());
}
