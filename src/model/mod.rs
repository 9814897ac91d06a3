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

/// The greedy choice among `logits`, by the rule `shaders/argmax.wgsl` follows on the GPU
/// (`ggufq run`'s choice, and the GPU engine's greedy decoding): the
/// index of the largest value above `f32::MIN`, the lowest index among equal values, 0 when
/// there is none (NaN never wins).
pub fn greedy_token(logits: &[f32]) -> u32 {
    let mut best = (f32::MIN, None);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.0 {
            best = (v, Some(i as u32));
        }
    }
    best.1.unwrap_or(0)
}

/// What a `decode_greedy` calls with each step's index, logits and chosen token (false: stop).
pub type OnToken<'a> = dyn FnMut(usize, &[f32], u32) -> crate::error::Result<bool> + 'a;

/// Greedy decoding one forward at a time: `forward(token, k)` returns the logits of feeding
/// `token` as the `k`-th token, the next token is their [`greedy_token`], and
/// `on_token(k, logits, next)` sees each step in order (false stops). Returns the steps taken.
/// The host-side loop of every `decode_greedy` (the GPU engine runs its own on the GPU).
pub fn greedy_loop(
    first: u32,
    n: usize,
    mut forward: impl FnMut(u32, usize) -> crate::error::Result<Vec<f32>>,
    on_token: &mut OnToken<'_>,
) -> crate::error::Result<usize> {
    let mut tok = first;
    for k in 0..n {
        let logits = forward(tok, k)?;
        tok = greedy_token(&logits);
        if !on_token(k, &logits, tok)? {
            return Ok(k + 1);
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::greedy_token;

    #[test]
    fn greedy_token_takes_the_first_largest_and_skips_nan() {
        assert_eq!(greedy_token(&[1.0, 3.0, 2.0, 3.0]), 1);
        assert_eq!(greedy_token(&[f32::NAN, 0.5, f32::NAN, 0.7]), 3);
        assert_eq!(greedy_token(&[f32::NEG_INFINITY, f32::MIN]), 0);
        assert_eq!(greedy_token(&[f32::NAN; 3]), 0);
        assert_eq!(greedy_token(&[-5.0, f32::INFINITY, f32::INFINITY]), 1);
        assert_eq!(greedy_token(&[]), 0);
    }
}
