//! A quick self-check of the prompt-path kernels on the adapter at hand (`ggufq bench
//! --kernel-check`): the tiled mat-mat kernel (cooperative matrices where the adapter has
//! them, which no CI adapter has) against CPU dequantization for every type, and a tiny
//! synthetic model's prompt forward (mat-mat + tiled attention) against its token-by-token
//! decode (mat-vec + decode attention), which share no kernel, and the prompt path's GPU
//! embedding look-up against CPU dequantization for every type.

use std::sync::Arc;

use crate::error::Result;
use crate::quant::GgmlType;

use super::device::GpuContext;
use super::kernels::matmat_tolerance;
use super::model::{GpuModel, ModelOptions};
use super::ops::{check_against_cpu, MatRunner};
use super::source::{Mix, Shape, SynthSource};

/// Every type the GPU kernels read.
const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

/// Tolerance of a prompt forward against token-by-token decode: f16 inputs on cooperative
/// matrices and the activation rounding (a rounding step that lands on the other side moves a
/// logit by up to ~2 %); a wrong kernel is off by the logits' whole scale.
const MODEL_TOL: f64 = 0.05;

/// Tolerance of the GPU embedding rows against CPU dequantization: the same operations
/// (exact for one-product types; a fused multiply-add may move the last bit of the others).
const EMBED_TOL: f64 = 1e-6;

/// Result of [`self_check`]: one line per check, and whether all passed.
#[derive(Clone, Debug)]
pub struct SelfCheck {
    /// "what: measured (limit) ok|FAILED" lines.
    pub lines: Vec<String>,
    /// Every check within its limit.
    pub ok: bool,
}

/// Run the checks on `ctx`.
pub fn self_check(ctx: &Arc<GpuContext>) -> Result<SelfCheck> {
    let mut lines = Vec::new();
    let mut ok = true;
    let mut runner = MatRunner::new(ctx);
    let tol = matmat_tolerance(ctx);
    for name in TYPES {
        let ty = GgmlType::from_name(name)
            .ok_or_else(|| crate::error::Error::msg(format!("unknown type {name}")))?;
        // Partial tiles in both directions, one and several K stages and token tiles.
        for (rows, cols, n_tok) in [(70usize, 256usize, 67usize), (130, 512, 300)] {
            let e = check_against_cpu(ctx, &mut runner, ty, rows, cols, n_tok, 0, 1)?;
            let pass = e < tol;
            ok &= pass;
            lines.push(format!(
                "mat-mat {name} {rows}x{cols} x {n_tok} tokens: rel err {e:.2e} (limit {tol:.0e}) {}",
                if pass { "ok" } else { "FAILED" }
            ));
        }
    }
    for name in TYPES {
        let ty = GgmlType::from_name(name)
            .ok_or_else(|| crate::error::Error::msg(format!("unknown type {name}")))?;
        let e = embed_vs_cpu(ctx, ty)?;
        let pass = e <= EMBED_TOL;
        ok &= pass;
        lines.push(format!(
            "embedding rows {name}: rel err {e:.2e} (limit {EMBED_TOL:.0e}) {}",
            if pass { "ok" } else { "FAILED" }
        ));
    }
    for mix in ["q4_k_m", "q8_0"] {
        let (err, agree, n) = prompt_vs_decode(ctx, mix)?;
        let pass = err < MODEL_TOL && agree * 10 >= n * 9;
        ok &= pass;
        lines.push(format!(
            "tiny {mix}: prompt vs decode logits rel err {err:.2e} (limit {MODEL_TOL}), top-1 {agree}/{n} {}",
            if pass { "ok" } else { "FAILED" }
        ));
    }
    Ok(SelfCheck { lines, ok })
}

/// Rows of a 37 × 512 matrix of `ty` looked up on the GPU ([`super::embed::lookup_rows`],
/// first, last and repeated ids) against `dequantize_row`: largest difference relative to
/// the row's largest |value|.
fn embed_vs_cpu(ctx: &GpuContext, ty: GgmlType) -> Result<f64> {
    let (rows, cols) = (37usize, 512usize);
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(ty.id());
    let vals: Vec<f32> = (0..rows * cols)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * (1 + i / 32 % 5) as f32
        })
        .collect();
    let data = crate::quant::quantize_tensor(ty, &vals, cols, None)?;
    let ids = [0u32, 36, 5, 5, 17, 1, 30];
    let got = super::embed::lookup_rows(ctx, ty, &data, rows, cols, &ids)?;
    let rb = data.len() / rows;
    let mut worst = 0f64;
    let mut want = vec![0f32; cols];
    for (t, &id) in ids.iter().enumerate() {
        let r = id as usize * rb;
        crate::quant::dequantize_row(ty, data.get(r..r + rb).unwrap_or(&[]), &mut want)?;
        let row = got.get(t * cols..(t + 1) * cols).unwrap_or(&[]);
        if row.len() != cols {
            return Ok(f64::INFINITY);
        }
        let scale = want
            .iter()
            .fold(0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-30);
        let e = row
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        worst = worst.max(e / scale);
    }
    Ok(worst)
}

/// The tiny model's logits for a 40-token prompt in one forward (batch graph) and token by
/// token (decode graph): largest difference relative to the largest |logit|, and at how
/// many of the positions the top-1 tokens agree.
fn prompt_vs_decode(ctx: &Arc<GpuContext>, mix: &str) -> Result<(f64, usize, usize)> {
    let shape = Shape::named("tiny").ok_or_else(|| crate::error::Error::msg("no tiny shape"))?;
    let m =
        Mix::parse(mix).ok_or_else(|| crate::error::Error::msg(format!("unknown mix {mix}")))?;
    let src = SynthSource::new(shape, m, format!("check-{mix}"))?;
    let opts = ModelOptions {
        n_ctx: 64,
        n_batch: 64,
        n_seq: 1,
    };
    let mut a = GpuModel::load(ctx.clone(), &src, opts.clone())?;
    let mut b = GpuModel::load(ctx.clone(), &src, opts)?;
    let nv = a.cfg.n_vocab;
    let n = 40usize;
    let toks: Vec<(u32, u32, u32)> = (0..n)
        .map(|i| (((i as u64 * 2654435761) % nv as u64) as u32, 0, i as u32))
        .collect();
    let all = a.forward(&toks, true)?;
    let (mut err, mut scale, mut agree) = (0f64, 0f64, 0usize);
    let top = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|x| x.0)
    };
    for (i, &t) in toks.iter().enumerate() {
        let d = b.forward(&[t], false)?;
        let p = all.get(i * nv..(i + 1) * nv).unwrap_or(&[]);
        if p.len() != d.len() || p.iter().any(|v| !v.is_finite()) {
            return Ok((f64::INFINITY, 0, n));
        }
        for (x, y) in p.iter().zip(&d) {
            err = err.max((x - y).abs() as f64);
            scale = scale.max(y.abs() as f64);
        }
        agree += usize::from(top(p) == top(&d));
    }
    Ok((err / scale.max(1e-30), agree, n))
}
