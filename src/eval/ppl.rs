//! Perplexity with llama-perplexity's method: the text is tokenized once, cut into chunks of
//! `n_ctx` tokens, the first token of each chunk is replaced by BOS when the vocabulary adds
//! one, and only the second half of each chunk is scored (each position predicts the next
//! token). PPL = exp(mean NLL), with llama.cpp's standard error.

use crate::error::{Error, Result};
use crate::model::backend::{Backend, LogitsWanted};

/// Options of a perplexity run.
#[derive(Clone, Debug)]
pub struct PplOptions {
    /// Tokens per chunk (llama-perplexity `-c`, default 512).
    pub n_ctx: usize,
    /// Maximum number of chunks (None = all whole chunks).
    pub n_chunks: Option<usize>,
    /// BOS token to put at the start of each chunk (None when the vocabulary adds none).
    pub bos: Option<u32>,
}

/// The chunks a token stream is cut into, and which positions are scored.
#[derive(Clone, Debug)]
pub struct ChunkPlan {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Number of chunks evaluated.
    pub n_chunks: usize,
    /// Index of the first position whose logits are scored (`n_ctx / 2`).
    pub first: usize,
}

impl ChunkPlan {
    /// Plan chunks like llama-perplexity; errors when the text is shorter than 2 chunks.
    pub fn new(n_tokens: usize, opts: &PplOptions) -> Result<ChunkPlan> {
        if opts.n_ctx < 4 {
            return Err(Error::msg(format!(
                "context {} is too small (minimum 4)",
                opts.n_ctx
            )));
        }
        if n_tokens < 2 * opts.n_ctx {
            return Err(Error::msg(format!(
                "the text has {n_tokens} tokens; at least {} (2 × context {}) are needed",
                2 * opts.n_ctx,
                opts.n_ctx
            )));
        }
        let max = n_tokens / opts.n_ctx;
        let n_chunks = opts.n_chunks.map_or(max, |c| c.min(max)).max(1);
        Ok(ChunkPlan {
            n_ctx: opts.n_ctx,
            n_chunks,
            first: opts.n_ctx / 2,
        })
    }

    /// Scored positions per chunk (`n_ctx - 1 - first`).
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.first
    }
}

/// Evaluate one chunk: returns the logits of positions `first..n_ctx` (row-major, n_vocab wide).
pub fn chunk_logits(
    backend: &mut dyn Backend,
    chunk: &[u32],
    bos: Option<u32>,
    first: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    let mut toks = chunk.to_vec();
    if let (Some(b), Some(t0)) = (bos, toks.first_mut()) {
        *t0 = b;
    }
    backend.reset();
    backend.forward(&toks, LogitsWanted::From(first), out)
}

/// Running NLL sums, as llama-perplexity accumulates them.
#[derive(Clone, Debug, Default)]
pub struct NllAccum {
    /// Σ nll.
    pub sum: f64,
    /// Σ nll².
    pub sum2: f64,
    /// Number of scored tokens.
    pub count: usize,
}

impl NllAccum {
    /// Add one NLL value.
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum2 += nll * nll;
        self.count += 1;
    }
    /// exp(mean NLL).
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }
    /// Standard error of the PPL (llama.cpp: ppl · sqrt(var(nll) / (n − 1))).
    pub fn ppl_err(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// Negative log-likelihood of `tok` under `logits` (log-softmax with a max shift, sum in f64).
pub fn nll(logits: &[f32], tok: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| (v - max).exp() as f64).sum();
    let lt = logits
        .get(tok as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    (max - lt) as f64 + sum.ln()
}

/// The result of a perplexity run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PplResult {
    /// Final perplexity.
    pub ppl: f64,
    /// Its standard error.
    pub ppl_err: f64,
    /// Chunks evaluated.
    pub n_chunks: usize,
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Tokens scored.
    pub n_scored: usize,
    /// Running PPL after each chunk (llama-perplexity's `[i]ppl` list).
    pub running: Vec<f64>,
    /// Tokens processed (n_chunks × n_ctx).
    pub n_tokens_evaluated: usize,
    /// Wall time of the evaluation in seconds.
    pub seconds: f64,
}

impl PplResult {
    /// The result of `plan`'s chunks from their accumulated NLLs, `running` PPL after each
    /// chunk, and the time since `t0`.
    pub fn from_accum(
        acc: &NllAccum,
        plan: &ChunkPlan,
        running: Vec<f64>,
        t0: std::time::Instant,
    ) -> PplResult {
        PplResult {
            ppl: acc.ppl(),
            ppl_err: acc.ppl_err(),
            n_chunks: plan.n_chunks,
            n_ctx: plan.n_ctx,
            n_scored: acc.count,
            running,
            n_tokens_evaluated: plan.n_chunks * plan.n_ctx,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

/// Perplexity of `tokens` on `backend`; `progress(done, total, running_ppl)` after each chunk.
pub fn perplexity(
    backend: &mut dyn Backend,
    tokens: &[u32],
    opts: &PplOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PplResult> {
    let plan = ChunkPlan::new(tokens.len(), opts)?;
    if backend.n_ctx() < plan.n_ctx {
        return Err(Error::msg(format!(
            "backend context {} is smaller than the chunk size {}",
            backend.n_ctx(),
            plan.n_ctx
        )));
    }
    let nv = backend.hparams().n_vocab;
    let t0 = std::time::Instant::now();
    let mut acc = NllAccum::default();
    let mut running = Vec::with_capacity(plan.n_chunks);
    let mut logits = Vec::new();
    for c in 0..plan.n_chunks {
        let chunk = &tokens[c * plan.n_ctx..(c + 1) * plan.n_ctx];
        chunk_logits(backend, chunk, opts.bos, plan.first, &mut logits)?;
        for i in 0..plan.scored_per_chunk() {
            let row = &logits[i * nv..(i + 1) * nv];
            acc.add(nll(row, chunk[plan.first + i + 1]));
        }
        running.push(acc.ppl());
        progress(c + 1, plan.n_chunks, acc.ppl());
    }
    Ok(PplResult::from_accum(&acc, &plan, running, t0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_matches_direct_formula() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((nll(&l, 0) - (z.ln() - 1.0)).abs() < 1e-6);
        assert!((nll(&l, 2) - (z.ln() - 3.0)).abs() < 1e-6);
    }

    #[test]
    fn accum_error_formula() {
        let mut a = NllAccum::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            a.add(v);
        }
        assert!((a.ppl() - 2.5f64.exp()).abs() < 1e-9);
        // var = 1.25, err = sqrt(1.25 / 3) * ppl
        assert!((a.ppl_err() - (1.25f64 / 3.0).sqrt() * 2.5f64.exp()).abs() < 1e-9);
    }

    #[test]
    fn plan_needs_two_chunks() {
        let o = PplOptions {
            n_ctx: 8,
            n_chunks: None,
            bos: None,
        };
        assert!(ChunkPlan::new(15, &o).is_err());
        let p = ChunkPlan::new(40, &o).unwrap();
        assert_eq!((p.n_chunks, p.first, p.scored_per_chunk()), (5, 4, 3));
        let o2 = PplOptions {
            n_chunks: Some(2),
            ..o
        };
        assert_eq!(ChunkPlan::new(40, &o2).unwrap().n_chunks, 2);
    }
}
