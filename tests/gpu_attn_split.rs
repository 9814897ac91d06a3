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

/// Decode rows of the tiny `mix` model: split (chunks of ≥ 16, `exact`) vs unsplit vs CPU.
/// Returns per row (position, split vs CPU, split vs unsplit), after checking the graph.
fn compare(mix: &str, exact: bool) -> Option<Vec<(usize, f64, f64, bool)>> {
    // The combine dispatch (tests/gpu_attn_lastwg.rs checks the epilogue against it).
    let split = context_tuned(|c| {
        c.tune.attn_split = 16;
        c.tune.attn_exact = exact;
        c.tune.attn_lastwg = 0;
    })?;
    let plain = context_tuned(|c| c.tune.attn_split = 0)?;
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

    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), mix);
    let model = Model::open(&path).unwrap();
    let steps = 40;
    let mut cpu = CpuBackend::new(&model, 256, 1).unwrap();
    let rc = decode_rows(&mut cpu, steps);
    let mut gs = GpuBackend::load(split, &path, model.hparams.clone(), 256, 64).unwrap();
    let mut gp = GpuBackend::load(plain, &path, model.hparams.clone(), 256, 64).unwrap();
    let rs = decode_rows(&mut gs, steps);
    let rp = decode_rows(&mut gp, steps);
    let mut out = Vec::new();
    for i in 0..steps {
        let pos = i + 5;
        if pos < 16 {
            // One chunk: the unsplit kernel's values, bit for bit.
            assert_eq!(rs[i], rp[i], "{mix}: position {pos} (one chunk) differs");
        }
        out.push((
            pos,
            gpu_fixture::rms_rel(&rs[i], &rc[i]),
            gpu_fixture::rms_rel(&rs[i], &rp[i]),
            argmax(&rs[i]) == argmax(&rc[i]),
        ));
    }
    let worst = |k: usize| {
        out.iter()
            .map(|r| if k == 0 { r.1 } else { r.2 })
            .fold(0f64, f64::max)
    };
    eprintln!(
        "{mix} exact={exact}: split vs CPU worst {:.3e}, split vs unsplit worst {:.3e}, top-1 {}/{steps}",
        worst(0),
        worst(1),
        out.iter().filter(|r| r.3).count()
    );
    Some(out)
}

#[test]
fn gpu_split_decode_attention_exact_matches_cpu_like_unsplit() {
    // Positions 5 … 44 with chunks of 16: 1 to 3 chunks per head. Every chunk's workgroup
    // scores all positions, so the probabilities (and their f16 roundings) are the unsplit
    // kernel's and only the f32 sums of V rows are grouped differently: the criterion of
    // tests/gpu_fused_actq.rs (most rows within 1e-5 of the CPU; a flipped rounding of an
    // activation, one Q8 step, may spread to later rows).
    for mix in ["q4_k", "q6_k", "f16"] {
        let Some(rows) = compare(mix, true) else {
            return;
        };
        let close = rows.iter().filter(|r| r.1 < 1e-5).count();
        let close_plain = rows.iter().filter(|r| r.2 < 1e-5).count();
        let worst = rows.iter().map(|r| r.1).fold(0f64, f64::max);
        if mix != "f16" {
            // (F16 models differ from the CPU by ~5e-4 with or without the split.)
            assert!(
                close * 2 >= rows.len(),
                "{mix}: {close}/{} rows within 1e-5",
                rows.len()
            );
        }
        assert!(
            close_plain * 2 >= rows.len(),
            "{mix}: {close_plain} rows near unsplit"
        );
        assert!(worst < 3e-2, "{mix}: worst {worst:.3e}");
        assert!(
            rows.iter().all(|r| r.3),
            "{mix}: top-1 differs from the CPU"
        );
    }
}

#[test]
fn gpu_split_decode_attention_flash_combines_chunks() {
    // Flash-decoding proper (GGUFQ_ATTN_EXACT=0): each chunk normalises against its own
    // maximum and sum and rounds its probabilities to f16 against that, not the global sum,
    // so a few roundings of the wo input flip (one rounding step each); a wrong combination
    // would not scale with the rounding step (chunk weights of 1/2 instead of
    // sum · exp(max − M) / Σ give 1.05 for f16 here).
    for (mix, noise) in [("f16", 2e-3), ("q6_k", 3e-2)] {
        let Some(rows) = compare(mix, false) else {
            return;
        };
        let worst_cpu = rows.iter().map(|r| r.1).fold(0f64, f64::max);
        let worst_plain = rows.iter().map(|r| r.2).fold(0f64, f64::max);
        assert!(worst_plain > 0.0, "{mix}: no row used several chunks");
        assert!(
            worst_plain < noise,
            "{mix}: split vs unsplit {worst_plain:.3e}"
        );
        assert!(worst_cpu < noise, "{mix}: split vs CPU {worst_cpu:.3e}");
        let top1 = rows.iter().filter(|r| r.3).count();
        assert!(top1 + 1 >= rows.len(), "{mix}: top-1 {top1}/{}", rows.len());
    }
}
