//! Scalar building blocks of the reference forward passes in tests/model_reference.rs (llama)
//! and tests/model_gemma3.rs (included with `#[path]`): f64 sums, no tiling, activations rounded
//! as llama.cpp's `vec_dot` type for each weight.
#![allow(dead_code)] // Each test binary uses a different subset.

use ggufq::model::cpu::{dequantize_rows, ActQuant};
use ggufq::model::Weight;
use half::f16;

/// All values of a weight, dequantized.
pub fn deq(w: &Weight) -> Vec<f32> {
    let mut v = vec![0f32; w.meta.n_elements() as usize];
    dequantize_rows(w.ty(), w.data().unwrap(), &mut v).unwrap();
    v
}

/// `v` rounded to f16 and back.
pub fn r16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// RMSNorm of each `g.len()`-wide piece of `x` (the whole of `x` when it is that wide).
pub fn rms(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    x.chunks(g.len())
        .flat_map(|p| {
            let ss: f64 = p.iter().map(|&v| v as f64 * v as f64).sum();
            let s = 1.0 / ((ss / p.len() as f64) as f32 + eps).sqrt();
            p.iter().zip(g).map(move |(&v, &g)| v * s * g)
        })
        .collect()
}

/// y = W x with x rounded as llama.cpp's vec_dot type for W (`wf` = `deq(w)`).
pub fn lin(w: &Weight, wf: &[f32], x: &[f32]) -> Vec<f32> {
    let mut xq = x.to_vec();
    ActQuant::for_weight(w.ty()).unwrap().apply(&mut xq);
    wf.chunks(w.row_len())
        .map(|row| {
            row.iter()
                .zip(&xq)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

/// Largest absolute difference between `a` and `b`, relative to the largest |a|.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
