//! [`model::Backend`](crate::model::Backend) for the wgpu engine: one sequence of a
//! [`GpuModel`], so perplexity, KL-divergence and generation run on the GPU through the same
//! interface as the CPU backend.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::backend::{Backend, LogitsWanted};
use crate::model::hparams::{HParams, RopeMode};

use super::device::GpuContext;
use super::model::{GpuModel, ModelOptions};
use super::source::GgufSource;

/// A [`GpuModel`] seen as a single-sequence [`Backend`] (sequence 0 of its KV cache).
pub struct GpuBackend {
    model: GpuModel,
    hp: HParams,
    n_past: usize,
}

impl GpuBackend {
    /// Load the GGUF at `path` on `ctx` with a KV cache of `n_ctx` positions and prompt
    /// batches of up to `n_batch` tokens. `hp` are the runtime's hyper-parameters of the same
    /// file (`model::Model::open(path)?.hparams`).
    pub fn load(
        ctx: Arc<GpuContext>,
        path: &Path,
        hp: HParams,
        n_ctx: usize,
        n_batch: usize,
    ) -> Result<GpuBackend> {
        let src = GgufSource::open(path)?;
        let model = GpuModel::load(
            ctx,
            &src,
            ModelOptions {
                n_ctx,
                n_batch: n_batch.clamp(1, n_ctx.max(1)),
                n_seq: 1,
            },
        )?;
        GpuBackend::from_model(model, hp)
    }

    /// Wrap an already loaded model (its sequence 0). Checks that `hp` describes it and that
    /// the GPU engine implements what `hp` asks for.
    pub fn from_model(model: GpuModel, hp: HParams) -> Result<GpuBackend> {
        let c = &model.cfg;
        let same = c.n_embd == hp.n_embd
            && c.n_layer == hp.n_layer
            && c.n_head == hp.n_head
            && c.n_kv == hp.n_head_kv
            && c.n_ff == hp.n_ff
            && c.n_vocab == hp.n_vocab
            && c.head_dim == hp.head_dim;
        if !same {
            return Err(Error::msg(format!(
                "{}: GPU model shape (embd {}, layers {}, heads {}/{}, ffn {}, vocab {}) differs from the runtime's hyper-parameters",
                model.label, c.n_embd, c.n_layer, c.n_head, c.n_kv, c.n_ff, c.n_vocab
            )));
        }
        // The GPU graph follows its own reading of the file; it must be the runtime's.
        if c.ops.neox != (hp.rope_mode == RopeMode::Neox)
            || c.rope_scale != hp.rope_freq_scale
            || c.ops.embd_scale != hp.embd_scale
            || c.ops.logit_softcap != hp.logit_softcap
        {
            return Err(Error::msg(format!(
                "{}: the GPU model's RoPE, embedding scale or logit soft-capping differs from the runtime's hyper-parameters",
                model.label
            )));
        }
        Ok(GpuBackend {
            model,
            hp,
            n_past: 0,
        })
    }

    /// Give the model back (e.g. to benchmark it after a perplexity run).
    pub fn into_model(self) -> GpuModel {
        self.model
    }

    /// The wrapped model.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        let f = &self.model.context().facts;
        format!("gpu ({}, wgpu/{})", f.name, f.backend)
    }
    fn hparams(&self) -> &HParams {
        &self.hp
    }
    fn n_ctx(&self) -> usize {
        self.model.opts.n_ctx
    }
    fn n_past(&self) -> usize {
        self.n_past
    }
    fn reset(&mut self) {
        self.n_past = 0;
    }
    fn forward(&mut self, tokens: &[u32], want: LogitsWanted, out: &mut Vec<f32>) -> Result<()> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::msg("forward: empty batch"));
        }
        if self.n_past + n > self.n_ctx() {
            return Err(Error::msg(format!(
                "forward: {} cached + {n} new tokens exceed the context of {}",
                self.n_past,
                self.n_ctx()
            )));
        }
        let nv = self.hp.n_vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= nv) {
            return Err(Error::msg(format!(
                "forward: token id {bad} ≥ vocabulary size {nv}"
            )));
        }
        // First token whose logits are returned (n = none).
        let first = match want {
            LogitsWanted::All => 0,
            LogitsWanted::Last => n - 1,
            LogitsWanted::From(i) => i.min(n),
            LogitsWanted::None => n,
        };
        out.clear();
        // Batches whose logits are all wanted hold at most what one logits binding does.
        let nb = if first + 1 < n {
            self.model.opts.n_batch.min(self.model.logit_rows()).max(1)
        } else {
            self.model.opts.n_batch.max(1)
        };
        let mut done = 0;
        while done < n {
            let k = nb.min(n - done);
            let batch: Vec<(u32, u32, u32)> = tokens[done..done + k]
                .iter()
                .enumerate()
                .map(|(i, &t)| (t, 0, (self.n_past + done + i) as u32))
                .collect();
            let end = done + k;
            // Rows of this batch that are wanted: first.max(done)..end.
            let result = if first >= end {
                self.model.forward(&batch, false).map(|_| ())
            } else if first == end - 1 {
                self.model
                    .forward(&batch, false)
                    .map(|l| out.extend_from_slice(&l[..nv.min(l.len())]))
            } else {
                self.model.forward(&batch, true).map(|l| {
                    let from = first.saturating_sub(done) * nv;
                    out.extend_from_slice(l.get(from..).unwrap_or(&[]))
                })
            };
            // On a failure the cached positions before `n_past` are intact (this call only
            // writes positions after them), so the cache is unchanged as the contract asks.
            result?;
            done = end;
        }
        self.n_past += n;
        Ok(())
    }
    fn decode_greedy(
        &mut self,
        first: u32,
        n: usize,
        on_token: &mut crate::model::OnToken<'_>,
    ) -> Result<usize> {
        let done = self
            .model
            .decode_greedy(first, 0, self.n_past as u32, n, on_token)?;
        self.n_past += done;
        Ok(done)
    }
}
