//! `ggufq run MODEL -p PROMPT -n N`: greedy generation on the CPU, a quick sanity check.

use std::io::Write;
use std::path::PathBuf;

use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};

/// Arguments of `ggufq run`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    pub model: PathBuf,
    /// Prompt text.
    #[arg(short = 'p', long)]
    pub prompt: String,
    /// Number of tokens to generate.
    #[arg(short = 'n', long, default_value_t = 32)]
    pub n_predict: usize,
    /// Worker threads (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Print the prompt's token ids to stderr.
    #[arg(long)]
    pub show_tokens: bool,
}

/// Run the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let model = Model::open(&args.model)?;
    let tok = model.tokenizer()?;
    let ids = tok.encode(&args.prompt, true, true)?;
    if ids.is_empty() {
        anyhow::bail!("the prompt encodes to no tokens");
    }
    if args.show_tokens {
        eprintln!("prompt tokens: {ids:?}");
    }
    let n_ctx = ids.len() + args.n_predict;
    let mut be = CpuBackend::new(&model, n_ctx, args.threads)?;
    let mut logits = Vec::new();
    let t0 = std::time::Instant::now();
    be.forward(&ids, LogitsWanted::Last, &mut logits)?;
    let t_prompt = t0.elapsed();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    let t1 = std::time::Instant::now();
    let mut generated = 0;
    for _ in 0..args.n_predict {
        let next = ggufq::model::greedy_token(&logits);
        if Some(next) == tok.eos {
            break;
        }
        write!(out, "{}", String::from_utf8_lossy(&tok.token_bytes(next)))?;
        out.flush()?;
        generated += 1;
        if be.n_past() >= be.n_ctx() {
            break;
        }
        be.forward(&[next], LogitsWanted::Last, &mut logits)?;
    }
    writeln!(out)?;
    let tg = t1.elapsed().as_secs_f64();
    eprintln!(
        "[{}] prompt {} tokens in {:.2} s; generated {} tokens at {:.1} tokens/s",
        be.name(),
        ids.len(),
        t_prompt.as_secs_f64(),
        generated,
        generated as f64 / tg.max(1e-9)
    );
    Ok(crate::cli::EXIT_OK)
}
