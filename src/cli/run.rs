//! `ggufq run MODEL -p PROMPT -n N`: greedy generation, a quick sanity check: on the CPU
//! backend, or (`--backend gpu`) on the wgpu engine, which picks each token on the GPU and
//! queues the next pass before the text reaches the host (`GpuModel::decode_greedy`).

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
    /// Where to run: cpu or gpu (the wgpu engine; greedy decoding on the GPU).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
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
    let mut be: Box<dyn Backend> = match args.backend.as_str() {
        "cpu" => Box::new(CpuBackend::new(&model, n_ctx, args.threads)?),
        "gpu" => gpu_backend(&args, &model, n_ctx, ids.len().clamp(1, 512))?,
        other => anyhow::bail!("unknown backend '{other}' (cpu, gpu)"),
    };
    let mut logits = Vec::new();
    let t0 = std::time::Instant::now();
    be.forward(&ids, LogitsWanted::Last, &mut logits)?;
    let t_prompt = t0.elapsed();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    let t1 = std::time::Instant::now();
    let mut generated = 0;
    let first = ggufq::model::greedy_token(&logits);
    if args.n_predict > 0 && Some(first) != tok.eos {
        write_token(&mut out, &tok, first)?;
        generated = 1;
        be.decode_greedy(first, args.n_predict - 1, &mut |_, _, next| {
            if Some(next) == tok.eos {
                return Ok(false);
            }
            write_token(&mut out, &tok, next)
                .map_err(|e| ggufq::error::Error::msg(format!("writing the output: {e}")))?;
            generated += 1;
            Ok(true)
        })?;
    }
    writeln!(out)?;
    report(&be.name(), ids.len(), t_prompt, generated, t1.elapsed());
    Ok(crate::cli::EXIT_OK)
}

/// Print one generated token's text at once.
fn write_token(
    out: &mut impl Write,
    tok: &ggufq::model::tokenizer::Tokenizer,
    id: u32,
) -> std::io::Result<()> {
    write!(out, "{}", String::from_utf8_lossy(&tok.token_bytes(id)))?;
    out.flush()
}

/// The closing line on stderr: prompt time and generation speed.
fn report(
    backend: &str,
    n_prompt: usize,
    t_prompt: std::time::Duration,
    generated: usize,
    t_gen: std::time::Duration,
) {
    eprintln!(
        "[{backend}] prompt {n_prompt} tokens in {:.2} s; generated {generated} tokens at {:.1} tokens/s",
        t_prompt.as_secs_f64(),
        generated as f64 / t_gen.as_secs_f64().max(1e-9)
    );
}

/// `--backend gpu`: the wgpu engine behind the same [`Backend`] (prompts in batches of
/// `n_batch`; its `decode_greedy` chooses each token on the GPU and queues the next pass).
#[cfg(feature = "gpu")]
fn gpu_backend(
    args: &Args,
    model: &Model,
    n_ctx: usize,
    n_batch: usize,
) -> anyhow::Result<Box<dyn Backend>> {
    use ggufq::gpu::{DeviceOptions, GpuBackend, GpuContext};
    let ctx = std::sync::Arc::new(GpuContext::new(&DeviceOptions::default())?);
    Ok(Box::new(GpuBackend::load(
        ctx,
        &args.model,
        model.hparams.clone(),
        n_ctx,
        n_batch,
    )?))
}

#[cfg(not(feature = "gpu"))]
fn gpu_backend(_: &Args, _: &Model, _: usize, _: usize) -> anyhow::Result<Box<dyn Backend>> {
    anyhow::bail!("--backend gpu needs the `gpu` feature in this build")
}
