//! CPU dequantization used by the GPU engine for embedding rows and norm weights, and as the
//! reference in kernel tests. Stand-in: candle-core's dequantizers (bit-exact with ggml) until
//! `ggufq::quant::dequantize_tensor` covers every type.

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Dequantize `n` weights of `ty` from `data` (exactly `ty.bytes_for(n)` bytes).
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    use candle_core::quantized::GgmlDType as D;
    let want = ty
        .bytes_for(n as u64)
        .ok_or_else(|| Error::msg(format!("{n} weights are not whole {} blocks", ty.name())))?;
    if data.len() as u64 != want {
        return Err(Error::msg(format!(
            "{} data has {} bytes, expected {want} for {n} weights",
            ty.name(),
            data.len()
        )));
    }
    match ty.name() {
        "F32" => {
            return Ok(data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
        "F16" => {
            return Ok(data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect())
        }
        "BF16" => {
            return Ok(data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect())
        }
        _ => {}
    }
    let dt = match ty.name() {
        "Q4_0" => D::Q4_0,
        "Q4_1" => D::Q4_1,
        "Q5_0" => D::Q5_0,
        "Q5_1" => D::Q5_1,
        "Q8_0" => D::Q8_0,
        "Q2_K" => D::Q2K,
        "Q3_K" => D::Q3K,
        "Q4_K" => D::Q4K,
        "Q5_K" => D::Q5K,
        "Q6_K" => D::Q6K,
        other => return Err(Error::msg(format!("no CPU dequantizer for {other}"))),
    };
    let dev = candle_core::Device::Cpu;
    let cerr = |e: candle_core::Error| Error::msg(format!("dequantize {}: {e}", ty.name()));
    let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dt, data, vec![n], &dev)
        .map_err(cerr)?;
    q.dequantize(&dev)
        .map_err(cerr)?
        .to_vec1::<f32>()
        .map_err(cerr)
}
