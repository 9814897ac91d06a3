//! CPU dequantization used by the GPU engine for embedding rows and norm weights, and as the
//! reference in kernel tests: `ggufq::quant` (bit-exact with ggml's `to_float`).

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Dequantize `n` weights of `ty` from `data` (exactly `ty.bytes_for(n)` bytes).
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let want = ty
        .bytes_for(n as u64)
        .filter(|_| n as u64 % ty.block_size() == 0)
        .ok_or_else(|| Error::msg(format!("{n} weights are not whole {} blocks", ty.name())))?;
    if data.len() as u64 != want {
        return Err(Error::msg(format!(
            "{} data has {} bytes, expected {want} for {n} weights",
            ty.name(),
            data.len()
        )));
    }
    let mut out = vec![0f32; n];
    crate::quant::dequantize_row(ty, data, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_block_and_size_errors() {
        // One Q8_0 block: f16 scale 0.5, then 32 int8 values 0..32.
        let mut b = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..32u8).map(|i| i as i8 as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(v[3], 1.5);
        assert_eq!(v[31], 15.5);
        assert!(dequantize(GgmlType::Q8_0, &b[..30], 32).is_err());
        assert!(dequantize(GgmlType::Q8_0, &b, 16).is_err());
    }
}
