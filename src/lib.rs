//! ggufq: inspect, requantize and validate GGUF models.
//!
//! Library-first: every command of the `ggufq` binary is a thin wrapper over these modules.
//! Data flows one way: `gguf` (read/write) → `recipe` (plan) → `quant` (kernels) →
//! `convert` (writer) → `model` (runtime) → `eval` (ppl/KLD) → `bench` → `batch`.

pub mod error;
pub mod eval;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod testutil;
