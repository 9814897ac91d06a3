//! KL-divergence of a model against a reference ("base") model, with llama-perplexity's
//! statistics (`--kl-divergence`): mean KLD ± error and percentiles, PPL of both and their
//! ratio, Δp (probability of the right token) percentiles, RMS Δp and same-top-token %.
//!
//! The base model's log-probabilities are stored like llama-perplexity's
//! `--kl-divergence-base` file (so files are interchangeable): `_logits_`, then i32 n_ctx,
//! n_vocab, n_chunk, the n_chunk·n_ctx i32 tokens, then for every scored position
//! `nv = 2·((n_vocab+1)/2) + 4` u16 values — an f32 scale, an f32 minimum log-prob and the
//! log-probs quantized to 16 bits. The in-process `--kl-base` path quantizes the same way, so
//! both routes give identical numbers.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::eval::ppl::{chunk_logits, ChunkPlan, NllAccum, PplOptions};
use crate::model::backend::Backend;

/// u16 values per scored position in a log-prob file.
pub fn row_len_u16(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Quantize one row of logits to llama-perplexity's 16-bit log-prob row; returns the NLL of `tok`.
pub fn quantize_log_probs(logits: &[f32], tok: u32, out: &mut [u16]) -> f64 {
    let n = logits.len();
    let mut max = f32::NEG_INFINITY;
    let mut min = f32::INFINITY;
    for &v in logits {
        max = max.max(v);
        min = min.min(v);
    }
    let min = min.max(max - 16.0);
    let sum_exp: f64 = logits.iter().map(|&v| (v - max).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let s = scale.to_le_bytes();
    let m = min_log_prob.to_le_bytes();
    out[0] = u16::from_le_bytes([s[0], s[1]]);
    out[1] = u16::from_le_bytes([s[2], s[3]]);
    out[2] = u16::from_le_bytes([m[0], m[1]]);
    out[3] = u16::from_le_bytes([m[2], m[3]]);
    let q = &mut out[4..4 + n];
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (qq, &v) in q.iter_mut().zip(logits) {
            *qq = if v > min {
                nearest_int(inv * (v - min)).clamp(0, 65535) as u16
            } else {
                0
            };
        }
    } else {
        q.iter_mut().for_each(|v| *v = 0);
    }
    let lt = logits
        .get(tok as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    (max + log_sum_exp - lt) as f64
}

fn row_header(row: &[u16]) -> (f32, f32) {
    let a = row[0].to_le_bytes();
    let b = row[1].to_le_bytes();
    let c = row[2].to_le_bytes();
    let d = row[3].to_le_bytes();
    (
        f32::from_le_bytes([a[0], a[1], b[0], b[1]]),
        f32::from_le_bytes([c[0], c[1], d[0], d[1]]),
    )
}

/// llama-perplexity's running sums for KL-divergence.
#[derive(Clone, Debug, Default)]
pub struct KldAccum {
    nll: NllAccum,
    nll_base: NllAccum,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    count: usize,
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
}

impl KldAccum {
    /// Score one position: the model's `logits`, the base's quantized row, the true next token.
    pub fn add(&mut self, logits: &[f32], base: &[u16], tok: u32) {
        let n = logits.len();
        let mut max = logits[0];
        let mut imax = 0;
        for (i, &v) in logits.iter().enumerate().skip(1) {
            if v > max {
                max = v;
                imax = i;
            }
        }
        let sum_exp: f64 = logits.iter().map(|&v| (v - max).exp() as f64).sum();
        let log_sum_exp = sum_exp.ln() as f32;
        let (scale, min_log_prob) = row_header(base);
        let q = &base[4..4 + n];
        let lt = logits[tok as usize];
        let nll = max + log_sum_exp - lt;
        self.nll.add(nll as f64);
        let nll_base = -(scale * q[tok as usize] as f32 + min_log_prob);
        self.nll_base.add(nll_base as f64);
        self.sum_nll_nll_base += nll as f64 * nll_base as f64;
        let maxl = max + log_sum_exp;
        let mut sum = 0f64;
        let mut imax_base = 0;
        let mut pmax = 0f32;
        for (i, &qq) in q.iter().enumerate() {
            let plb = scale * qq as f32 + min_log_prob;
            if i == 0 || plb > pmax {
                pmax = plb;
                imax_base = i;
            }
            if plb > -16.0 {
                let pb = plb.exp();
                sum += (pb * (plb - logits[i] + maxl)) as f64;
            }
        }
        self.sum_kld += sum;
        self.sum_kld2 += sum * sum;
        self.count += 1;
        if imax == imax_base {
            self.n_same_top += 1;
        }
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.sum_p_diff += p_diff as f64;
        let pd2 = (p_diff as f64) * (p_diff as f64);
        self.sum_p_diff2 += pd2;
        self.sum_p_diff4 += pd2 * pd2;
        self.kld_values.push(sum as f32);
        self.p_diff_values.push(p_diff);
    }

    /// Number of scored positions.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Running mean KLD.
    pub fn mean_kld(&self) -> f64 {
        self.sum_kld / self.count.max(1) as f64
    }

    /// Final statistics.
    pub fn stats(&self) -> KldStats {
        let n = self.count;
        let mu = |s: f64, s2: f64| -> (f64, f64) {
            if n < 1 {
                return (0.0, 0.0);
            }
            let f = s / n as f64;
            let df = s2 / n as f64 - f * f;
            (
                f,
                if df > 0.0 && n > 10 {
                    (df / (n as f64 - 1.0)).sqrt()
                } else {
                    0.0
                },
            )
        };
        let (lp, lpe) = mu(self.nll.sum, self.nll.sum2);
        let (lb, lbe) = mu(self.nll_base.sum, self.nll_base.sum2);
        let cov = if n < 10 {
            0.0
        } else {
            let nn = n as f64;
            (self.sum_nll_nll_base / nn - (self.nll.sum / nn) * (self.nll_base.sum / nn))
                / (nn - 1.0)
        };
        let ratio = lp - lb;
        let ratio_unc = (lpe * lpe + lbe * lbe - 2.0 * cov).max(0.0).sqrt();
        let (ppl, ppl_base) = (lp.exp(), lb.exp());
        let (kld, kld_err) = mu(self.sum_kld, self.sum_kld2);
        let (pd, pd_err) = mu(self.sum_p_diff, self.sum_p_diff2);
        let (mse, mse_err) = mu(self.sum_p_diff2, self.sum_p_diff4);
        let rms = mse.sqrt();
        let top = self.n_same_top as f64 / n.max(1) as f64;
        let mut kv = self.kld_values.clone();
        kv.sort_by(f32::total_cmp);
        let mut pv = self.p_diff_values.clone();
        pv.sort_by(f32::total_cmp);
        let pct = |v: &[f32], fr: &[f64]| -> Vec<(String, f64)> {
            fr.iter()
                .map(|&f| (format!("{:.1}", f * 100.0), percentile(v, f)))
                .collect()
        };
        KldStats {
            n_tokens: n,
            ppl,
            ppl_err: ppl * lpe,
            ppl_base,
            ppl_base_err: ppl_base * lbe,
            cor_ln_ppl: if lpe > 0.0 && lbe > 0.0 {
                cov / (lpe * lbe)
            } else {
                0.0
            },
            ln_ppl_ratio: ratio,
            ln_ppl_ratio_err: ratio_unc,
            ppl_ratio: ratio.exp(),
            ppl_ratio_err: ratio.exp() * ratio_unc,
            ppl_diff: ppl - ppl_base,
            ppl_diff_err: ((ppl * lpe).powi(2) + (ppl_base * lbe).powi(2)
                - 2.0 * ppl * ppl_base * cov)
                .max(0.0)
                .sqrt(),
            kld,
            kld_err,
            kld_max: kv.last().copied().unwrap_or(0.0) as f64,
            kld_min: kv.first().copied().unwrap_or(0.0) as f64,
            kld_median: median(&kv),
            kld_percentiles: pct(&kv, &[0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001]),
            dp_mean: pd,
            dp_mean_err: pd_err,
            dp_max: pv.last().copied().unwrap_or(0.0) as f64,
            dp_min: pv.first().copied().unwrap_or(0.0) as f64,
            dp_median: median(&pv),
            dp_percentiles: pct(
                &pv,
                &[0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001],
            ),
            rms_dp: rms,
            rms_dp_err: if rms > 0.0 { 0.5 / rms * mse_err } else { 0.0 },
            same_top: top,
            same_top_err: if n > 1 {
                (top * (1.0 - top) / (n as f64 - 1.0)).sqrt()
            } else {
                0.0
            },
        }
    }
}

/// llama-perplexity's interpolated percentile of sorted values.
pub fn percentile(v: &[f32], fraction: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return v[0] as f64;
    }
    if fraction >= 1.0 {
        return v[v.len() - 1] as f64;
    }
    let fr = fraction as f32;
    let mut p = fr * (v.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    ((1.0 - p) * v[ip] + p * v[(ip + 1).min(v.len() - 1)]) as f64
}

fn median(v: &[f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 0 {
        (0.5 * (v[n / 2] + v[n / 2 - 1])) as f64
    } else {
        v[n / 2] as f64
    }
}

/// KL-divergence statistics (fractions, not percent).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KldStats {
    /// Scored positions.
    pub n_tokens: usize,
    /// PPL of the model.
    pub ppl: f64,
    /// Its error.
    pub ppl_err: f64,
    /// PPL of the base.
    pub ppl_base: f64,
    /// Its error.
    pub ppl_base_err: f64,
    /// Correlation of the two ln-PPL estimates.
    pub cor_ln_ppl: f64,
    /// Mean ln(PPL(Q)/PPL(base)).
    pub ln_ppl_ratio: f64,
    /// Its error.
    pub ln_ppl_ratio_err: f64,
    /// PPL(Q)/PPL(base).
    pub ppl_ratio: f64,
    /// Its error.
    pub ppl_ratio_err: f64,
    /// PPL(Q) − PPL(base).
    pub ppl_diff: f64,
    /// Its error.
    pub ppl_diff_err: f64,
    /// Mean KLD.
    pub kld: f64,
    /// Its error.
    pub kld_err: f64,
    /// Maximum KLD.
    pub kld_max: f64,
    /// Minimum KLD.
    pub kld_min: f64,
    /// Median KLD.
    pub kld_median: f64,
    /// (percent label, value): 99.9, 99, 95, 90, 10, 5, 1, 0.1.
    pub kld_percentiles: Vec<(String, f64)>,
    /// Mean Δp (probability of the right token, model − base).
    pub dp_mean: f64,
    /// Its error.
    pub dp_mean_err: f64,
    /// Maximum Δp.
    pub dp_max: f64,
    /// Minimum Δp.
    pub dp_min: f64,
    /// Median Δp.
    pub dp_median: f64,
    /// (percent label, value): 99.9, 99, 95, 90, 75, 25, 10, 5, 1, 0.1.
    pub dp_percentiles: Vec<(String, f64)>,
    /// RMS Δp.
    pub rms_dp: f64,
    /// Its error.
    pub rms_dp_err: f64,
    /// Fraction of positions where both models rank the same token first.
    pub same_top: f64,
    /// Its error.
    pub same_top_err: f64,
}

impl KldStats {
    /// The report in llama-perplexity's layout.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s += "====== Perplexity statistics ======\n";
        s += &format!(
            "Mean PPL(Q)                   : {:10.6} ± {:10.6}\n",
            self.ppl, self.ppl_err
        );
        s += &format!(
            "Mean PPL(base)                : {:10.6} ± {:10.6}\n",
            self.ppl_base, self.ppl_base_err
        );
        s += &format!(
            "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%\n",
            100.0 * self.cor_ln_ppl
        );
        s += &format!(
            "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}\n",
            self.ln_ppl_ratio, self.ln_ppl_ratio_err
        );
        s += &format!(
            "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}\n",
            self.ppl_ratio, self.ppl_ratio_err
        );
        s += &format!(
            "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}\n\n",
            self.ppl_diff, self.ppl_diff_err
        );
        s += "====== KL divergence statistics ======\n";
        s += &format!("Mean    KLD: {:10.6} ± {:10.6}\n", self.kld, self.kld_err);
        s += &format!("Maximum KLD: {:10.6}\n", self.kld_max);
        for (label, v) in &self.kld_percentiles[..4] {
            s += &format!("{:>4}%   KLD: {:10.6}\n", label, v);
        }
        s += &format!("Median  KLD: {:10.6}\n", self.kld_median);
        for (label, v) in &self.kld_percentiles[4..] {
            s += &format!("{:>4}%   KLD: {:10.6}\n", label, v);
        }
        s += &format!("Minimum KLD: {:10.6}\n\n", self.kld_min);
        s += "====== Token probability statistics ======\n";
        s += &format!(
            "Mean    Δp: {:6.3} ± {:5.3} %\n",
            100.0 * self.dp_mean,
            100.0 * self.dp_mean_err
        );
        s += &format!("Maximum Δp: {:6.3}%\n", 100.0 * self.dp_max);
        for (label, v) in &self.dp_percentiles[..5] {
            s += &format!("{:>4}%   Δp: {:6.3}%\n", label, 100.0 * v);
        }
        s += &format!("Median  Δp: {:6.3}%\n", 100.0 * self.dp_median);
        for (label, v) in &self.dp_percentiles[5..] {
            s += &format!("{:>4}%   Δp: {:6.3}%\n", label, 100.0 * v);
        }
        s += &format!("Minimum Δp: {:6.3}%\n", 100.0 * self.dp_min);
        s += &format!(
            "RMS Δp    : {:6.3} ± {:5.3} %\n",
            100.0 * self.rms_dp,
            100.0 * self.rms_dp_err
        );
        s += &format!(
            "Same top p: {:6.3} ± {:5.3} %\n",
            100.0 * self.same_top,
            100.0 * self.same_top_err
        );
        s
    }
}

/// Writes a llama-perplexity-compatible log-prob file (to a temp file, renamed on `finish`).
pub struct LogProbWriter {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
    n_vocab: usize,
}

impl LogProbWriter {
    /// Start a file for `n_chunks` chunks of `n_ctx` tokens (`tokens` holds at least n_chunks·n_ctx).
    pub fn create(
        path: &Path,
        n_ctx: usize,
        n_vocab: usize,
        n_chunks: usize,
        tokens: &[u32],
    ) -> Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
        let mut w = LogProbWriter {
            path: path.to_path_buf(),
            tmp,
            n_vocab,
        };
        let mut head = Vec::with_capacity(20 + 4 * n_chunks * n_ctx);
        head.extend_from_slice(b"_logits_");
        for v in [n_ctx, n_vocab, n_chunks] {
            head.extend_from_slice(&(v as i32).to_le_bytes());
        }
        for &t in &tokens[..n_chunks * n_ctx] {
            head.extend_from_slice(&(t as i32).to_le_bytes());
        }
        w.tmp.write_all(&head).map_err(|e| Error::io(&w.path, e))?;
        Ok(w)
    }

    /// Append quantized rows (each `row_len_u16(n_vocab)` long).
    pub fn write_rows(&mut self, rows: &[u16]) -> Result<()> {
        debug_assert_eq!(rows.len() % row_len_u16(self.n_vocab), 0);
        let mut bytes = Vec::with_capacity(rows.len() * 2);
        for v in rows {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.tmp
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flush, sync and rename into place.
    pub fn finish(self) -> Result<()> {
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(&self.path, e))?;
        self.tmp
            .persist(&self.path)
            .map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}

/// Reads a log-prob file written by [`LogProbWriter`] or llama-perplexity.
pub struct LogProbReader {
    path: PathBuf,
    r: BufReader<File>,
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Chunks stored.
    pub n_chunks: usize,
    /// The evaluated tokens (n_chunks · n_ctx).
    pub tokens: Vec<u32>,
}

impl LogProbReader {
    /// Open and read the header.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut r = BufReader::new(f);
        let bad =
            |off: u64, msg: String| Error::Msg(format!("{}: byte {off}: {msg}", path.display()));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| bad(0, "too short for a log-prob file".into()))?;
        if &magic != b"_logits_" {
            return Err(bad(0, "not a log-prob file (no '_logits_' magic)".into()));
        }
        let mut rd = |off: u64| -> Result<i32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|_| bad(off, "truncated header".into()))?;
            Ok(i32::from_le_bytes(b))
        };
        let (n_ctx, n_vocab, n_chunks) = (rd(8)?, rd(12)?, rd(16)?);
        if n_ctx < 4 || n_vocab < 1 || n_chunks < 1 {
            return Err(bad(
                8,
                format!("invalid header n_ctx={n_ctx} n_vocab={n_vocab} n_chunk={n_chunks}"),
            ));
        }
        let (n_ctx, n_vocab, n_chunks) = (n_ctx as usize, n_vocab as usize, n_chunks as usize);
        let scored = n_ctx - 1 - n_ctx / 2;
        let need = 20u64
            + 4 * (n_ctx * n_chunks) as u64
            + 2 * (scored * n_chunks * row_len_u16(n_vocab)) as u64;
        if len < need {
            return Err(bad(
                len,
                format!("file is {len} bytes, the header promises {need}"),
            ));
        }
        let mut tb = vec![0u8; 4 * n_ctx * n_chunks];
        r.read_exact(&mut tb).map_err(|e| Error::io(path, e))?;
        let tokens = tb
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]).max(0) as u32)
            .collect();
        Ok(LogProbReader {
            path: path.to_path_buf(),
            r,
            n_ctx,
            n_vocab,
            n_chunks,
            tokens,
        })
    }

    /// Read the rows of the next chunk.
    pub fn read_chunk(&mut self, out: &mut Vec<u16>) -> Result<()> {
        let n = (self.n_ctx - 1 - self.n_ctx / 2) * row_len_u16(self.n_vocab);
        let mut b = vec![0u8; n * 2];
        self.r
            .read_exact(&mut b)
            .map_err(|e| Error::io(&self.path, e))?;
        out.clear();
        out.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
        Ok(())
    }
}

/// Where the base model's log-probs come from.
pub enum BaseSource<'a> {
    /// Run the base model in the same process.
    Model(&'a mut dyn Backend),
    /// A file written by `--save-logits` or llama-perplexity `--kl-divergence-base`.
    File(LogProbReader),
}

/// Quantize the scored rows of a chunk (`logits` rows for positions first..) to log-prob rows.
pub fn quantize_chunk(
    logits: &[f32],
    n_vocab: usize,
    chunk: &[u32],
    first: usize,
    out: &mut Vec<u16>,
) -> NllAccum {
    let nv = row_len_u16(n_vocab);
    let scored = chunk.len() - 1 - first;
    out.clear();
    out.resize(scored * nv, 0);
    let mut acc = NllAccum::default();
    for i in 0..scored {
        let v = quantize_log_probs(
            &logits[i * n_vocab..(i + 1) * n_vocab],
            chunk[first + i + 1],
            &mut out[i * nv..(i + 1) * nv],
        );
        acc.add(v);
    }
    acc
}

/// KL-divergence of `model` against `base` over the text's chunks. With a file base, the
/// file's tokens and context are used (as llama-perplexity does). `progress(done, total, kld)`.
pub fn kl_divergence(
    model: &mut dyn Backend,
    mut base: BaseSource,
    tokens: &[u32],
    opts: &PplOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<KldStats> {
    let nvoc = model.hparams().n_vocab;
    let (plan, toks): (ChunkPlan, Vec<u32>) = match &base {
        BaseSource::File(r) => {
            if r.n_vocab != nvoc {
                return Err(Error::msg(format!(
                    "{}: vocabulary of {} tokens, the model has {nvoc}",
                    r.path.display(),
                    r.n_vocab
                )));
            }
            let o = PplOptions {
                n_ctx: r.n_ctx,
                n_chunks: Some(opts.n_chunks.map_or(r.n_chunks, |c| c.min(r.n_chunks))),
                bos: opts.bos,
            };
            (
                ChunkPlan::new(r.tokens.len().max(2 * r.n_ctx), &o)?,
                r.tokens.clone(),
            )
        }
        BaseSource::Model(b) => {
            if b.hparams().n_vocab != nvoc {
                return Err(Error::msg(format!(
                    "the base model has {} tokens in its vocabulary, the model {nvoc}",
                    b.hparams().n_vocab
                )));
            }
            (ChunkPlan::new(tokens.len(), opts)?, tokens.to_vec())
        }
    };
    let plan = ChunkPlan {
        n_chunks: plan.n_chunks.min(toks.len() / plan.n_ctx),
        ..plan
    };
    let nv = row_len_u16(nvoc);
    let mut acc = KldAccum::default();
    let (mut logits, mut base_rows) = (Vec::new(), Vec::new());
    for c in 0..plan.n_chunks {
        let chunk = &toks[c * plan.n_ctx..(c + 1) * plan.n_ctx];
        match &mut base {
            BaseSource::Model(b) => {
                chunk_logits(&mut **b, chunk, opts.bos, plan.first, &mut logits)?;
                quantize_chunk(&logits, nvoc, chunk, plan.first, &mut base_rows);
            }
            BaseSource::File(r) => r.read_chunk(&mut base_rows)?,
        }
        chunk_logits(model, chunk, opts.bos, plan.first, &mut logits)?;
        for i in 0..plan.scored_per_chunk() {
            acc.add(
                &logits[i * nvoc..(i + 1) * nvoc],
                &base_rows[i * nv..(i + 1) * nv],
                chunk[plan.first + i + 1],
            );
        }
        progress(c + 1, plan.n_chunks, acc.mean_kld());
    }
    Ok(acc.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_log_probs_roundtrip_closely() {
        let logits: Vec<f32> = (0..101)
            .map(|i| ((i * 37) % 23) as f32 * 0.5 - 3.0)
            .collect();
        let mut row = vec![0u16; row_len_u16(logits.len())];
        let nll = quantize_log_probs(&logits, 5, &mut row);
        assert!((nll - crate::eval::ppl::nll(&logits, 5)).abs() < 1e-5);
        let (scale, minlp) = row_header(&row);
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let lse = logits
            .iter()
            .map(|&v| ((v - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
        for (i, &l) in logits.iter().enumerate() {
            let lp = scale * row[4 + i] as f32 + minlp;
            assert!((lp - (l - max - lse)).abs() < 1e-3, "{i}");
        }
    }

    #[test]
    fn identical_models_have_zero_kld() {
        let mut acc = KldAccum::default();
        let mut row = vec![0u16; row_len_u16(50)];
        for t in 0..20u32 {
            let logits: Vec<f32> = (0..50)
                .map(|i| ((i as u32 * 7 + t * 3) % 11) as f32)
                .collect();
            quantize_log_probs(&logits, t, &mut row);
            acc.add(&logits, &row, t);
        }
        let s = acc.stats();
        assert!(s.kld.abs() < 1e-4, "{}", s.kld);
        assert_eq!(s.same_top, 1.0);
        assert!(s.rms_dp < 1e-3);
        assert!((s.ppl / s.ppl_base - 1.0).abs() < 1e-3);
    }

    #[test]
    fn different_models_have_positive_kld() {
        let mut acc = KldAccum::default();
        let mut row = vec![0u16; row_len_u16(10)];
        for t in 0..20u32 {
            let base: Vec<f32> = (0..10)
                .map(|i| if i == t % 10 { 5.0 } else { 0.0 })
                .collect();
            let model: Vec<f32> = (0..10)
                .map(|i| if i == (t + 1) % 10 { 5.0 } else { 0.0 })
                .collect();
            quantize_log_probs(&base, t % 10, &mut row);
            acc.add(&model, &row, t % 10);
        }
        let s = acc.stats();
        assert!(s.kld > 1.0);
        assert_eq!(s.same_top, 0.0);
        assert!(s.ppl > s.ppl_base);
        assert!(s.to_text().contains("Same top p:  0.000"));
    }

    #[test]
    fn percentile_interpolates() {
        let v = [0.0f32, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert!((percentile(&v, 0.9) - 3.6).abs() < 1e-6);
        assert_eq!(percentile(&v, 1.0), 4.0);
    }
}
