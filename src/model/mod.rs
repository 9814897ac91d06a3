//! Model runtime: load a llama-family (or gemma3) GGUF, tokenize, and run the forward pass on a backend.
//!
//! - [`file`]: the GGUF file as the runtime sees it (metadata look-ups, tensor views)
//! - [`hparams`]: hyper-parameters from metadata
//! - [`weights`]: where every tensor lives (kept in its stored, quantized form)
//! - [`backend`]: the `Backend` trait every compute engine implements
//! - [`cpu`]: the multi-threaded CPU backend (the reference)
//! - [`tokenizer`]: GPT-2 byte-level BPE and SentencePiece, from the GGUF's own vocabulary

pub mod backend;
pub mod cpu;
pub mod file;
pub mod hparams;
pub mod tokenizer;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

pub use backend::{Backend, LogitsWanted};
pub use file::ModelFile;
pub use hparams::{Arch, FfnAct, HParams, RopeMode, SlidingWindow};
pub use weights::{LayerWeights, LlamaWeights, Weight};

/// A model file opened for inference: hyper-parameters and tensor locations.
#[derive(Clone)]
pub struct Model {
    /// The underlying file.
    pub file: Arc<ModelFile>,
    /// Hyper-parameters.
    pub hparams: HParams,
    /// Tensor locations.
    pub weights: LlamaWeights,
}

impl Model {
    /// Open a GGUF and check that it is a supported llama-family model.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        let file = ModelFile::open(path)?;
        let hparams = HParams::from_file(&file)?;
        let weights = LlamaWeights::from_file(&file, &hparams)?;
        Ok(Model {
            file,
            hparams,
            weights,
        })
    }

    /// Build the tokenizer stored in the file's metadata.
    pub fn tokenizer(&self) -> Result<tokenizer::Tokenizer> {
        tokenizer::Tokenizer::from_file(&self.file)
    }
}
