//! `ggufq ppl MODEL -f TEXT`: perplexity (and KL-divergence against a base model) with
//! llama-perplexity's method and statistics.

use std::path::PathBuf;

use ggufq::eval::kld::{self, BaseSource, LogProbReader, LogProbWriter};
use ggufq::eval::ppl::{self, ChunkPlan, NllAccum, PplOptions};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, Model};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `ggufq ppl`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model to score.
    pub model: PathBuf,
    /// Text file (e.g. wikitext-2-raw test).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub n_ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Reference model: run it in the same invocation and report KL-divergence against it.
    #[arg(long, value_name = "SOURCE.gguf", conflicts_with = "kl_logits")]
    pub kl_base: Option<PathBuf>,
    /// Save this model's log-probs (llama-perplexity `--kl-divergence-base` format).
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
    /// Report KL-divergence against log-probs saved by `--save-logits` (or llama-perplexity).
    #[arg(long, value_name = "FILE")]
    pub kl_logits: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn bar(n: usize, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} chunks {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Run the command.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let model = Model::open(&a.model)?;
    let tok = model.tokenizer()?;
    let bos = if tok.add_bos { tok.bos } else { None };
    let opts = PplOptions {
        n_ctx: a.n_ctx,
        n_chunks: a.chunks,
        bos,
    };
    let t_tok = std::time::Instant::now();
    let tokens = match (&a.file, &a.kl_logits) {
        (Some(f), _) => {
            let mut text = std::fs::read_to_string(f).map_err(|e| ggufq::error::Error::io(f, e))?;
            // llama.cpp's `-f` drops one trailing newline.
            if text.ends_with('\n') {
                text.pop();
            }
            tok.encode(&text, true, false)?
        }
        (None, Some(_)) => Vec::new(),
        (None, None) => anyhow::bail!("give a text file with -f (or --kl-logits FILE)"),
    };
    let tok_s = t_tok.elapsed().as_secs_f64();
    let mut be = CpuBackend::new(&model, a.n_ctx, a.threads)?;
    let backend_name = be.name();

    if a.kl_base.is_some() || a.kl_logits.is_some() {
        let mut base_be;
        let base = if let Some(b) = &a.kl_base {
            let bm = Model::open(b)?;
            base_be = CpuBackend::new(&bm, a.n_ctx, a.threads)?;
            BaseSource::Model(&mut base_be)
        } else {
            let p = a
                .kl_logits
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no base"))?;
            BaseSource::File(LogProbReader::open(p)?)
        };
        let n = match &base {
            BaseSource::File(r) => r.n_chunks.min(a.chunks.unwrap_or(usize::MAX)),
            BaseSource::Model(_) => ChunkPlan::new(tokens.len(), &opts)?.n_chunks,
        };
        let pb = bar(n, a.quiet || a.json, "kld");
        let t0 = std::time::Instant::now();
        let st = kld::kl_divergence(&mut be, base, &tokens, &opts, &mut |_, _, k| {
            pb.set_message(format!("KLD {k:.6}"));
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        if a.json {
            let v = serde_json::json!({
                "model": a.model, "base": a.kl_base.as_ref().or(a.kl_logits.as_ref()),
                "backend": backend_name, "n_ctx": a.n_ctx, "seconds": secs, "kld": st,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", st.to_text());
            eprintln!(
                "[{backend_name}] {} scored tokens in {secs:.1} s",
                st.n_tokens
            );
        }
        return Ok(crate::cli::EXIT_OK);
    }

    let plan = ChunkPlan::new(tokens.len(), &opts)?;
    let pb = bar(plan.n_chunks, a.quiet || a.json, "ppl");
    let res = if let Some(path) = &a.save_logits {
        // Evaluate chunk by chunk, saving quantized log-probs.
        let nvoc = model.hparams.n_vocab;
        let mut w = LogProbWriter::create(path, plan.n_ctx, nvoc, plan.n_chunks, &tokens)?;
        let t0 = std::time::Instant::now();
        let mut acc = NllAccum::default();
        let (mut logits, mut rows) = (Vec::new(), Vec::new());
        let mut running = Vec::new();
        for c in 0..plan.n_chunks {
            let chunk = &tokens[c * plan.n_ctx..(c + 1) * plan.n_ctx];
            ppl::chunk_logits(&mut be, chunk, opts.bos, plan.first, &mut logits)?;
            let part = kld::quantize_chunk(&logits, nvoc, chunk, plan.first, &mut rows);
            acc.sum += part.sum;
            acc.sum2 += part.sum2;
            acc.count += part.count;
            w.write_rows(&rows)?;
            running.push(acc.ppl());
            pb.set_message(format!("PPL {:.4}", acc.ppl()));
            pb.inc(1);
        }
        w.finish()?;
        ppl::PplResult::from_accum(&acc, &plan, running, t0)
    } else {
        ppl::perplexity(&mut be, &tokens, &opts, &mut |_, _, p| {
            pb.set_message(format!("PPL {p:.4}"));
            pb.inc(1);
        })?
    };
    pb.finish_and_clear();
    let tps = res.n_tokens_evaluated as f64 / res.seconds.max(1e-9);
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "backend": backend_name, "n_tokens_text": tokens.len(),
            "tokenize_seconds": tok_s, "tokens_per_second": tps, "result": res,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let list: Vec<String> = res
            .running
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}]{p:.4}", i + 1))
            .collect();
        println!("{}", list.join(","));
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}",
            res.ppl, res.ppl_err
        );
        eprintln!(
            "[{backend_name}] {} chunks × {} tokens in {:.1} s: {tps:.1} tokens/s (tokenizing {} tokens took {tok_s:.2} s)",
            res.n_chunks,
            res.n_ctx,
            res.seconds,
            tokens.len()
        );
    }
    Ok(crate::cli::EXIT_OK)
}
