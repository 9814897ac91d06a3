//! K-quant kernels (Q2_K..Q6_K, Q8_K).
//!
//! Placeholder: helper "kquant" owns this file and replaces it with the real encoders and
//! decoders. Until then every call returns an error, so callers and the golden harness report
//! the K-quant types as not implemented instead of producing wrong bytes.

use super::GgmlType;
use crate::error::{Error, Result};

fn not_yet(ty: GgmlType) -> Error {
    Error::msg(format!("{ty}: K-quant kernels are not yet implemented"))
}

/// Quantize one row of a K-quant type (`imatrix`: one weight per element, optional).
pub fn quantize_row(
    ty: GgmlType,
    _src: &[f32],
    _imatrix: Option<&[f32]>,
    _dst: &mut [u8],
) -> Result<()> {
    Err(not_yet(ty))
}

/// Decode one row of a K-quant type (Q8_K included).
pub fn dequantize_row(ty: GgmlType, _src: &[u8], _dst: &mut [f32]) -> Result<()> {
    Err(not_yet(ty))
}

/// Quantize one row to Q8_K (ggml's `quantize_row_q8_K_ref`).
pub fn quantize_row_q8k(_src: &[f32], _dst: &mut [u8]) -> Result<()> {
    Err(not_yet(GgmlType::Q8_K))
}
