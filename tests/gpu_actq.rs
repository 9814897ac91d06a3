//! GPU logits against the CPU backend with activation rounding on both sides: the GPU engine
//! rounds each matrix input to the values of llama.cpp's quantized activations (Q8_0 / Q8_1 /
//! Q8_K blocks, f16, bf16) exactly as `model::cpu::ActQuant` does, so for every weight type the
//! two backends now differ only by f32 summation order. Before the rounding pass the GPU kept
//! f32 activations and no logits row agreed closer than 1e-4.
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::path::Path;
use std::sync::Arc;

use ggufq::gpu::{GpuBackend, GpuContext};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context, tokens, write_tiny};

/// Relative RMS difference of every logits row of one tiny model, GPU vs CPU, each row
/// computed from a fresh context (positions 0..16): three 16-token prompts (tiled mat-mat),
/// a 3-token batch (small-batch mat-vec) and 4 single-token decode steps (decode mat-vec).
fn row_errors(ctx: &Arc<GpuContext>, path: &Path) -> Vec<f64> {
    let model = Model::open(path).unwrap();
    let nv = model.hparams.n_vocab;
    let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
    let mut gpu = GpuBackend::load(ctx.clone(), path, model.hparams.clone(), 64, 32).unwrap();
    let (mut lc, mut lg) = (Vec::new(), Vec::new());
    let mut errs = Vec::new();
    let mut rows = |lc: &[f32], lg: &[f32]| {
        assert_eq!(lc.len(), lg.len());
        for (c, g) in lc.chunks(nv).zip(lg.chunks(nv)) {
            errs.push(gpu_fixture::rms_rel(g, c));
        }
    };
    for seed in [5, 6, 7] {
        cpu.reset();
        gpu.reset();
        let prompt = tokens(nv, 16, seed);
        cpu.forward(&prompt, LogitsWanted::All, &mut lc).unwrap();
        gpu.forward(&prompt, LogitsWanted::All, &mut lg).unwrap();
        assert_eq!(lg.len(), 16 * nv);
        rows(&lc, &lg);
    }
    cpu.reset();
    gpu.reset();
    let small = tokens(nv, 3, 8);
    cpu.forward(&small, LogitsWanted::All, &mut lc).unwrap();
    gpu.forward(&small, LogitsWanted::All, &mut lg).unwrap();
    rows(&lc, &lg);
    cpu.reset();
    gpu.reset();
    for t in tokens(nv, 4, 9) {
        cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
        gpu.forward(&[t], LogitsWanted::Last, &mut lg).unwrap();
        assert_eq!(lg.len(), nv);
        rows(&lc, &lg);
    }
    errs
}

/// Every weight type the CPU backend rounds activations for. GPU and CPU now compute the
/// same rounded activations, so most rows agree to f32 summation order (~1e-7); a row differs
/// more only after a summation-order difference flips one rounding (one Q8 step is 1/127 of a
/// block's maximum), which then spreads to every later value. Without the GPU rounding pass
/// (f32 activations) no row of any quantized type was closer than 1e-4 (typically 1e-3 …
/// 1e-2 on lavapipe).
#[test]
fn gpu_logits_match_cpu_backend_with_activation_rounding_every_type() {
    let Some(ctx) = context() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for mix in [
        "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16",
        "bf16",
    ] {
        let path = write_tiny(dir.path(), mix);
        let errs = row_errors(&ctx, &path);
        let close = errs.iter().filter(|&&e| e < 1e-5).count();
        let worst = errs.iter().fold(0f64, |m, &e| m.max(e));
        eprintln!(
            "{mix}: {close}/{} rows within 1e-5, worst {worst:.3e}",
            errs.len()
        );
        if close * 2 < errs.len() || worst > 3e-2 {
            failures.push(format!(
                "{mix}: {close}/{} rows within 1e-5, worst {worst:.3e}",
                errs.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
