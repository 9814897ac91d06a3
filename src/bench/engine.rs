//! [`Engine`] over any [`Backend`] (the CPU backend in `ggufq bench --backend cpu`): one
//! backend instance per parallel sequence, each with its own KV cache. A batched-decode step
//! of N sequences runs the N one-token forwards one after the other.

use crate::error::{Error, Result};
use crate::model::backend::{Backend, LogitsWanted};

use super::runner::Engine;

/// Benchmark engine over single-sequence backends.
pub struct BackendEngine {
    seqs: Vec<Box<dyn Backend>>,
    label: String,
    n_batch: usize,
    weight_bytes: u64,
    memory: (u64, u64, u64),
}

impl BackendEngine {
    /// `seqs`: one backend per sequence (at least one, same model); `label` for reports;
    /// `n_batch` the largest prompt batch per forward; `weight_bytes` the bytes of weights
    /// read per decoded token; `memory` (weights, KV cache, scratch) in bytes.
    pub fn new(
        seqs: Vec<Box<dyn Backend>>,
        label: String,
        n_batch: usize,
        weight_bytes: u64,
        memory: (u64, u64, u64),
    ) -> Result<BackendEngine> {
        if seqs.is_empty() {
            return Err(Error::msg("bench engine: no backend"));
        }
        Ok(BackendEngine {
            seqs,
            label,
            n_batch: n_batch.max(1),
            weight_bytes,
            memory,
        })
    }

    /// The first sequence's backend (e.g. for a perplexity run).
    pub fn first_mut(&mut self) -> &mut dyn Backend {
        &mut *self.seqs[0]
    }
}

impl Engine for BackendEngine {
    fn backend(&self) -> String {
        self.label.clone()
    }
    fn n_vocab(&self) -> usize {
        self.seqs[0].hparams().n_vocab
    }
    fn n_batch(&self) -> usize {
        self.n_batch
    }
    fn n_seq(&self) -> usize {
        self.seqs.len()
    }
    fn n_ctx(&self) -> usize {
        self.seqs[0].n_ctx()
    }
    /// Tokens are grouped by sequence (in order of appearance); each group continues its
    /// sequence (position = cached tokens) or goes back to an earlier position `p`, keeping
    /// the `p` tokens before it ([`Backend::truncate`]; 0 starts the sequence again), as the
    /// GPU engine, which attends to the positions before each token, does. A position past
    /// the cached tokens (a gap) is an error.
    fn forward(&mut self, tokens: &[(u32, u32, u32)], all_logits: bool) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let (_, seq, pos) = tokens[i];
            let mut j = i + 1;
            while j < tokens.len() && tokens[j].1 == seq && tokens[j].2 == tokens[j - 1].2 + 1 {
                j += 1;
            }
            let n_seq = self.seqs.len();
            let b = self.seqs.get_mut(seq as usize).ok_or_else(|| {
                Error::msg(format!("sequence {seq} outside the {n_seq} allocated"))
            })?;
            let pos = pos as usize;
            if pos > b.n_past() {
                return Err(Error::msg(format!(
                    "sequence {seq}: position {pos} does not follow the {} cached tokens",
                    b.n_past()
                )));
            }
            if pos < b.n_past() {
                b.truncate(pos)?;
            }
            let ids: Vec<u32> = tokens[i..j].iter().map(|t| t.0).collect();
            let last = j == tokens.len();
            let want = if all_logits {
                LogitsWanted::All
            } else if last {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            let mut part = Vec::new();
            b.forward(&ids, want, &mut part)?;
            out.extend_from_slice(&part);
            i = j;
        }
        Ok(out)
    }
    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
    fn memory(&self) -> (u64, u64, u64) {
        self.memory
    }
}

#[cfg(all(test, feature = "gpu"))]
mod tests {
    use super::*;
    use crate::model::hparams::HParams;

    /// A backend whose logits are [token, position] so routing can be checked.
    struct Echo {
        hp: HParams,
        past: usize,
    }
    impl Backend for Echo {
        fn name(&self) -> String {
            "echo".into()
        }
        fn hparams(&self) -> &HParams {
            &self.hp
        }
        fn n_ctx(&self) -> usize {
            16
        }
        fn n_past(&self) -> usize {
            self.past
        }
        fn reset(&mut self) {
            self.past = 0;
        }
        fn truncate(&mut self, n: usize) -> Result<()> {
            assert!(
                n <= self.past,
                "BackendEngine truncates only within the cache"
            );
            self.past = n;
            Ok(())
        }
        fn forward(&mut self, t: &[u32], want: LogitsWanted, out: &mut Vec<f32>) -> Result<()> {
            let rows: Vec<f32> = t
                .iter()
                .enumerate()
                .flat_map(|(i, &x)| [x as f32, (self.past + i) as f32])
                .collect();
            self.past += t.len();
            *out = match want {
                LogitsWanted::All => rows,
                LogitsWanted::Last => rows[rows.len() - 2..].to_vec(),
                LogitsWanted::From(i) => rows[2 * i..].to_vec(),
                LogitsWanted::None => Vec::new(),
            };
            Ok(())
        }
    }

    /// Hyper-parameters of the tiny synthetic model, read back by the runtime.
    fn hp() -> HParams {
        use crate::gpu::source::{Mix, Shape, SynthSource};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let src = SynthSource::new(
            Shape::named("tiny").unwrap(),
            Mix::parse("q8_0").unwrap(),
            "tiny",
        )
        .unwrap();
        src.write_gguf(&path).unwrap();
        crate::model::Model::open(&path).unwrap().hparams
    }

    #[test]
    fn backend_greedy_decoding_feeds_each_choice_and_advances_the_cache() {
        let mut b = Echo { hp: hp(), past: 0 };
        let mut out = Vec::new();
        b.forward(&[9, 9, 9], LogitsWanted::Last, &mut out).unwrap();
        // Echo's logits are [token, position]: the choice is 0 while the token is larger.
        let mut seen = Vec::new();
        let got = b
            .decode_greedy(5, 4, &mut |k, l, next| {
                seen.push((k, l.to_vec(), next));
                Ok(true)
            })
            .unwrap();
        assert_eq!(got, 4);
        assert_eq!(b.n_past(), 7);
        assert_eq!(
            seen,
            vec![
                (0, vec![5.0, 3.0], 0),
                (1, vec![0.0, 4.0], 1),
                (2, vec![1.0, 5.0], 1),
                (3, vec![1.0, 6.0], 1),
            ]
        );
        // Stopping after the second token: two forwards, two positions.
        let got = b.decode_greedy(5, 4, &mut |k, _, _| Ok(k < 1)).unwrap();
        assert_eq!((got, b.n_past()), (2, 9));
    }

    #[test]
    fn routes_sequences_and_checks_positions() {
        let seqs: Vec<Box<dyn Backend>> = (0..2)
            .map(|_| Box::new(Echo { hp: hp(), past: 0 }) as Box<dyn Backend>)
            .collect();
        let mut e = BackendEngine::new(seqs, "echo".into(), 8, 1, (0, 0, 0)).unwrap();
        // Prompt on sequence 0: only the last row comes back.
        assert_eq!(
            e.forward(&[(5, 0, 0), (6, 0, 1), (7, 0, 2)], false)
                .unwrap(),
            vec![7.0, 2.0]
        );
        // One decode step of both sequences, all logits: seq 0 continues at 3, seq 1 starts.
        assert_eq!(
            e.forward(&[(8, 0, 3), (9, 1, 0)], true).unwrap(),
            vec![8.0, 3.0, 9.0, 0.0]
        );
        // A gap in positions is an error; position 0 restarts the sequence.
        assert!(e.forward(&[(1, 1, 5)], false).is_err());
        assert!(e.forward(&[(1, 2, 0)], false).is_err());
        assert_eq!(e.forward(&[(4, 0, 0)], false).unwrap(), vec![4.0, 0.0]);
        // Going back (bench -d: each repetition restarts at the prefilled depth): sequence 0
        // holds 4 tokens, a batch at position 2 keeps 2 and continues from there; sequence
        // 1 (one token) is not touched.
        e.forward(&[(5, 0, 1), (6, 0, 2), (7, 0, 3)], false)
            .unwrap();
        assert_eq!(
            e.forward(&[(8, 0, 2), (9, 0, 3), (3, 1, 1)], true).unwrap(),
            vec![8.0, 2.0, 9.0, 3.0, 3.0, 1.0]
        );
        assert_eq!(e.seqs[0].n_past(), 4);
        assert_eq!(e.seqs[1].n_past(), 2);
        // Still a gap after going back is an error.
        e.forward(&[(1, 0, 1)], false).unwrap();
        assert!(e.forward(&[(1, 0, 3)], false).is_err());
    }

    #[test]
    fn backend_without_truncation_refuses_to_go_back() {
        /// Echo with the trait's default `truncate`.
        struct NoTruncate(Echo);
        impl Backend for NoTruncate {
            fn name(&self) -> String {
                "no-truncate".into()
            }
            fn hparams(&self) -> &HParams {
                self.0.hparams()
            }
            fn n_ctx(&self) -> usize {
                self.0.n_ctx()
            }
            fn n_past(&self) -> usize {
                self.0.n_past()
            }
            fn reset(&mut self) {
                self.0.reset()
            }
            fn forward(&mut self, t: &[u32], w: LogitsWanted, out: &mut Vec<f32>) -> Result<()> {
                self.0.forward(t, w, out)
            }
        }
        let b = NoTruncate(Echo { hp: hp(), past: 0 });
        let mut e = BackendEngine::new(vec![Box::new(b)], "x".into(), 8, 1, (0, 0, 0)).unwrap();
        e.forward(&[(1, 0, 0), (2, 0, 1), (3, 0, 2)], false)
            .unwrap();
        let err = e.forward(&[(4, 0, 1)], false).unwrap_err().to_string();
        assert!(
            err.contains("cannot go back from 3 cached tokens to 1"),
            "{err}"
        );
        // Position 0 (reset) and the next position still work.
        e.forward(&[(4, 0, 0), (5, 0, 1)], false).unwrap();
        assert_eq!(e.forward(&[(6, 0, 2)], false).unwrap(), vec![6.0, 2.0]);
    }
}
