//! The GPU embedding look-up of prompt calls (`shaders/embed.wgsl`, `Tune::gpu_embd`): rows of
//! the token-embedding matrix dequantized on the GPU against the CPU's `dequantize_row` for
//! every type `convert` writes (whole matrix in one buffer and split into chunks), and the
//! model's prompt logits with the look-up on the GPU against the CPU look-up.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::embed::lookup_rows;
use ggufq::gpu::model::{GpuModel, ModelOptions};
use ggufq::gpu::DeviceOptions;
use ggufq::quant::{dequantize_row, quantize_tensor, GgmlType};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            // magnitudes varying per 32 values
            v * (1.0 + (i / 32 % 5) as f32)
        })
        .collect()
}

/// Worst |gpu − cpu| over the looked-up rows relative to the row's largest |value|, and the
/// number of rows that are not bit-identical.
fn compare(ty: GgmlType, data: &[u8], cols: usize, ids: &[u32], got: &[f32]) -> (f32, usize) {
    let rb = data.len() / (data.len() / ty.bytes_for(cols as u64).unwrap() as usize);
    let mut worst = 0f32;
    let mut inexact = 0;
    for (t, &id) in ids.iter().enumerate() {
        let mut want = vec![0f32; cols];
        let r = id as usize * rb;
        dequantize_row(ty, &data[r..r + rb], &mut want).unwrap();
        let row = &got[t * cols..(t + 1) * cols];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let e = row
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(e / scale);
        if row
            .iter()
            .zip(&want)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            inexact += 1;
        }
    }
    (worst, inexact)
}

#[test]
fn gpu_embedding_rows_match_cpu_dequantization_every_type() {
    let Some(mut ctx) = gpu_fixture::device(&DeviceOptions::default()) else {
        return;
    };
    let (rows, cols) = (37usize, 512usize);
    // First and last rows, repeats, out of order.
    let ids: Vec<u32> = vec![0, 36, 5, 5, 17, 1, 36, 30, 2, 0, 11];
    let mut bad = Vec::new();
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        let data =
            quantize_tensor(ty, &values(rows * cols, 7 + ty.id() as u64), cols, None).unwrap();
        let rb = ty.bytes_for(cols as u64).unwrap() as usize;
        // Whole matrix in one buffer, then split into chunks of 4 rows (as over
        // max_storage_buffer_binding_size), so that ids fall in different chunks.
        for max_binding in [u64::MAX, (4 * rb + 64) as u64] {
            let keep = ctx.max_binding;
            ctx.max_binding = max_binding.min(keep);
            let got = lookup_rows(&ctx, ty, &data, rows, cols, &ids).unwrap();
            ctx.max_binding = keep;
            assert_eq!(got.len(), ids.len() * cols, "{name}");
            let (e, inexact) = compare(ty, &data, cols, &ids, &got);
            // Types whose dequantization is one product per value give the CPU's bits; the
            // others (scale · q − min) may differ in the last bit where the GPU fuses.
            let exact = matches!(name, "F32" | "F16" | "BF16" | "Q4_0" | "Q5_0" | "Q8_0");
            if (exact && inexact > 0) || e > 1e-6 {
                bad.push(format!(
                    "{name} (binding {max_binding}): {inexact} rows differ, worst rel {e:.2e}"
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn gpu_embedding_rejects_ids_outside_the_matrix() {
    let Some(ctx) = gpu_fixture::device(&DeviceOptions::default()) else {
        return;
    };
    let ty = GgmlType::from_name("Q8_0").unwrap();
    let data = quantize_tensor(ty, &values(4 * 64, 3), 64, None).unwrap();
    let e = lookup_rows(&ctx, ty, &data, 4, 64, &[0, 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("token id 4") && e.contains("4 rows"), "{e}");
}

/// With tied embeddings the GPU look-up reads the output matrix's own upload: no second copy
/// of the embedding on the GPU, and the same prompt logits as the CPU look-up.
#[test]
fn gpu_embedding_of_tied_models_reuses_the_output_matrix() {
    let Some(on) = gpu_fixture::context_tuned(|c| c.tune.gpu_embd = true) else {
        return;
    };
    let Some(off) = gpu_fixture::context_tuned(|c| c.tune.gpu_embd = false) else {
        return;
    };
    let opts = ModelOptions {
        n_ctx: 64,
        n_batch: 24,
        n_seq: 1,
    };
    for mix in ["q8_0", "q4_0"] {
        let synth = gpu_fixture::tiny_source(mix);
        // Without `output.weight`, the output matrix is the tied token embedding.
        let src = gpu_fixture::Without {
            src: &synth,
            name: "output.weight",
        };
        let mut a = GpuModel::load(on.clone(), &src, opts.clone()).unwrap();
        let mut b = GpuModel::load(off.clone(), &src, opts.clone()).unwrap();
        assert_eq!(
            a.memory.weights, b.memory.weights,
            "{mix}: one embedding upload"
        );
        // Untied, the look-up has its own copy of the embedding.
        let untied_on = GpuModel::load(on.clone(), &synth, opts.clone()).unwrap();
        let untied_off = GpuModel::load(off.clone(), &synth, opts.clone()).unwrap();
        assert!(
            untied_on.memory.weights > untied_off.memory.weights,
            "{mix}"
        );
        assert_eq!(a.step_roles_for(9)[0], "embed", "{mix}");
        let nv = a.cfg.n_vocab as u32;
        let toks: Vec<(u32, u32, u32)> = (0..9u32).map(|i| ((i * 7919 + 3) % nv, 0, i)).collect();
        let la = a.forward(&toks, true).unwrap();
        let lb = b.forward(&toks, true).unwrap();
        assert_eq!(la, lb, "{mix}: tied prompt logits, GPU vs CPU look-up");
    }
}

#[test]
fn gpu_embedding_prompt_logits_match_the_cpu_lookup() {
    let Some(on) = gpu_fixture::context_tuned(|c| c.tune.gpu_embd = true) else {
        return;
    };
    let Some(off) = gpu_fixture::context_tuned(|c| c.tune.gpu_embd = false) else {
        return;
    };
    let opts = ModelOptions {
        n_ctx: 64,
        n_batch: 24,
        n_seq: 1,
    };
    for mix in ["q8_0", "q4_0", "q4_k_m"] {
        let src = gpu_fixture::tiny_source(mix);
        let load = |ctx: &Arc<ggufq::gpu::GpuContext>| {
            GpuModel::load(ctx.clone(), &src, opts.clone()).unwrap()
        };
        let (mut a, mut b) = (load(&on), load(&off));
        let n = 21;
        // The look-up is a prompt step only: decode calls keep the CPU row.
        assert_eq!(a.step_roles_for(n)[0], "embed", "{mix}");
        assert!(!b.step_roles_for(n).contains(&"embed"), "{mix}");
        assert!(!a.step_roles().contains(&"embed"), "{mix}");
        assert_eq!(a.dispatches_per_token(), b.dispatches_per_token(), "{mix}");
        let nv = a.cfg.n_vocab as u32;
        let toks: Vec<(u32, u32, u32)> =
            (0..n as u32).map(|i| ((i * 7919 + 3) % nv, 0, i)).collect();
        let la = a.forward(&toks, true).unwrap();
        let lb = b.forward(&toks, true).unwrap();
        assert_eq!(la.len(), lb.len());
        let scale = lb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = la
            .iter()
            .zip(&lb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        // q8_0 / q4_0 embeddings are bit-identical (same kernels after them).
        let limit = if mix == "q4_k_m" { 1e-4 } else { 0.0 };
        assert!(
            e <= limit,
            "{mix}: prompt logits GPU vs CPU look-up rel {e:.2e}"
        );
        // A token outside the vocabulary is still refused before anything runs.
        let err = a.forward(&[(nv, 0, 0), (1, 0, 1)], false).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        // Decode after the prompt runs through the CPU look-up on both.
        let da = a.forward(&[(5, 0, n as u32)], false).unwrap();
        let db = b.forward(&[(5, 0, n as u32)], false).unwrap();
        assert_eq!(da, db, "{mix}: decode after the prompt");
    }
}

/// `ggufq bench --kernel-check` (run on the H100 in every device call) also checks the GPU
/// embedding rows of every type.
#[test]
fn kernel_check_covers_gpu_embedding_of_every_type() {
    if gpu_fixture::context().is_none() {
        return;
    }
    let text = gpu_fixture::kernel_check_stdout();
    for ty in TYPES {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("embedding rows {ty}:")))
            .unwrap_or_else(|| panic!("no embedding line for {ty}: {text}"));
        assert!(line.ends_with(" ok"), "{line}");
    }
}
