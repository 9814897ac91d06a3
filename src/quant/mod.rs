//! Tensor types and their quantize / dequantize kernels.

pub mod types;

pub use types::GgmlType;
pub mod kquants;
