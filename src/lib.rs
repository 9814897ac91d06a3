//! ggufq: inspect, requantize and validate GGUF models.
//!
//! Library-first: every command of the `ggufq` binary is a thin wrapper over these modules.
//! Data flows one way: `gguf` (read/write) → `recipe` (plan) → `quant` (kernels) →
//! `convert` (writer) → `model` (runtime) → `eval` (ppl/KLD) → `bench` → `batch`.

pub mod batch;
pub mod bench;
pub mod convert;
pub mod error;
pub mod eval;
pub mod gguf;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod inspect;
pub mod model;
pub mod quant;
pub mod recipe;
pub mod report;
pub mod synth;
pub mod testutil;
