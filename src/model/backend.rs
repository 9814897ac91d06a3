//! The compute backend interface shared by the CPU runtime (`model::cpu`) and the wgpu engine.
//!
//! A backend owns a loaded model (its weights in backend form) and one sequence's KV cache.
//! Callers (perplexity, KL-divergence, generation, benchmarks) only see this trait:
//!
//! ```text
//! let mut b: Box<dyn Backend> = ...;        // e.g. CpuBackend::new(&model, n_ctx, threads)
//! b.reset();                                 // empty KV cache, position 0
//! b.forward(&tokens[..512], LogitsWanted::All, &mut logits)?;   // prompt (batched)
//! b.forward(&[next], LogitsWanted::Last, &mut logits)?;          // one more token
//! ```
//!
//! Contract (the CPU backend is the reference; other backends must agree with it to within
//! float rounding):
//! - `forward` evaluates `tokens` at positions `n_past() .. n_past() + tokens.len()`, attends
//!   causally to everything already in the cache plus the earlier tokens of the same batch, and
//!   appends their keys/values to the cache. `n_past()` grows by `tokens.len()`.
//! - Logits are written row-major into `out` (resized by the backend): one row of `n_vocab`
//!   f32 per requested token, in token order (`All`: every token; `Last`: only the last; `From(i)`: tokens `i..`).
//! - Numerics follow llama.cpp's CPU backend: RMSNorm, RoPE (mode from [`HParams::rope_mode`]),
//!   K/V and Q rounded to f16 as llama.cpp's f16 KV cache does, softmax in f32, SwiGLU FFN (GeGLU with
//!   ggml's f16 GELU table for gemma3).
//! - `truncate(n)` drops the cached tokens from position `n` on (`n_past()` becomes `n`); the
//!   keys/values of positions `0..n` stay as they are.
//! - Errors: a token id ≥ n_vocab, or a batch that would overflow `n_ctx()`, returns an error
//!   and leaves the cache unchanged.

use crate::error::Result;
use crate::model::hparams::HParams;

/// Which logits a [`Backend::forward`] call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// A row for every token of the batch.
    All,
    /// Only the row of the last token.
    Last,
    /// Rows for the batch's tokens from this index on (perplexity scores only the second
    /// half of each chunk, as llama-perplexity does).
    From(usize),
    /// No logits (fill the cache only).
    None,
}

/// A model loaded on some compute device, with one sequence's KV cache.
pub trait Backend {
    /// Human-readable name, e.g. "cpu (2 threads)" or the GPU adapter.
    fn name(&self) -> String;
    /// The model's hyper-parameters.
    fn hparams(&self) -> &HParams;
    /// KV cache capacity in tokens.
    fn n_ctx(&self) -> usize;
    /// Tokens already in the KV cache (the position of the next token).
    fn n_past(&self) -> usize;
    /// Clear the KV cache (start a new sequence at position 0).
    fn reset(&mut self);
    /// Keep the first `n` cached tokens and drop the rest (`n` ≤ `n_past()`): the next
    /// `forward` evaluates its tokens from position `n`, attending to the `n` kept
    /// (`ggufq bench -d` goes back to the prefilled depth before each repetition).
    /// `truncate(0)` is [`reset`](Self::reset). This default keeps nothing but the whole
    /// cache: a backend that cannot drop a suffix returns an error for `0 < n < n_past()`.
    fn truncate(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            self.reset();
            Ok(())
        } else if n == self.n_past() {
            Ok(())
        } else {
            Err(crate::error::Error::msg(format!(
                "{}: cannot go back from {} cached tokens to {n}",
                self.name(),
                self.n_past()
            )))
        }
    }
    /// Evaluate `tokens` after the cached ones; see the module docs for the contract.
    fn forward(&mut self, tokens: &[u32], want: LogitsWanted, out: &mut Vec<f32>) -> Result<()>;
    /// Greedy generation of `n` tokens from position `n_past()`, the first fed `first`, each
    /// later one the [`greedy_token`](crate::model::greedy_token) of its predecessor's logits;
    /// `on_token(k, logits, next)` for each in order (false stops). `n_past()` grows by the
    /// tokens reported. The GPU backend chooses on the GPU and queues each pass ahead.
    fn decode_greedy(
        &mut self,
        first: u32,
        n: usize,
        on_token: &mut crate::model::OnToken<'_>,
    ) -> Result<usize> {
        let mut logits = Vec::new();
        crate::model::greedy_loop(
            first,
            n,
            |tok, _| {
                self.forward(&[tok], LogitsWanted::Last, &mut logits)?;
                Ok(std::mem::take(&mut logits))
            },
            on_token,
        )
    }
}
