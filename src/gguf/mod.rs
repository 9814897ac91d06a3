//! GGUF container: validated mmap reader and streaming writer.
//!
//! - [`reader`]: [`GgufFile::open`] maps a file and validates every count, length and offset
//!   against the file size before allocating; tensor data are zero-copy slices of the map.
//! - [`writer`]: [`GgufWriter`] writes the header, then the tensors one by one, in llama.cpp's
//!   layout, so reading a file and writing it back gives identical bytes.
//! - [`atomic`]: [`AtomicOutput`], temp file + fsync + rename.
//! - [`value`]: metadata values.

pub mod atomic;
pub mod reader;
pub mod value;
pub mod writer;

pub use atomic::AtomicOutput;
pub use reader::{GgufFile, Header, TensorInfo};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorSpec};
