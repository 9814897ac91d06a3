//! The wgpu inference engine: device setup, weight upload (repack, split), WGSL kernels
//! (dequantize-in-shader mat-vec / mat-mat for every type `convert` writes, RMSNorm, RoPE,
//! attention over a KV cache, SwiGLU, residuals) and the llama graph.

pub mod actq;
pub mod arch;
pub mod backend;
pub mod buffers;
pub mod counters;
pub mod device;
pub mod embed;
pub mod greedy;
pub mod gridmv;
pub mod gridstream;
pub mod gridsync;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod profile;
pub mod prompt_profile;
pub mod reference;
pub mod selfcheck;
pub mod source;

pub use backend::GpuBackend;
pub use device::{AdapterFacts, DeviceOptions, GpuContext};
pub use model::{CpuTimes, GpuModel, LlamaConfig, MemoryUse, ModelOptions, Timestamps};
pub use source::{GgufSource, Shape, SynthSource, TensorView, WeightSource};
