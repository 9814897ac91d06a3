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
    match args.backend.as_str() {
        "cpu" => {}
        "gpu" => return run_gpu(&args, &tok, &ids, n_ctx),
        other => anyhow::bail!("unknown backend '{other}' (cpu, gpu)"),
    }
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
    report(&be.name(), ids.len(), t_prompt, generated, t1.elapsed());
    Ok(crate::cli::EXIT_OK)
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

/// `--backend gpu`: the prompt in batches, then [`GpuModel::decode_greedy`]: the same tokens as
/// the CPU backend's loop would choose from the GPU's logits.
///
/// [`GpuModel::decode_greedy`]: ggufq::gpu::GpuModel::decode_greedy
#[cfg(feature = "gpu")]
fn run_gpu(
    args: &Args,
    tok: &ggufq::model::tokenizer::Tokenizer,
    ids: &[u32],
    n_ctx: usize,
) -> anyhow::Result<i32> {
    use ggufq::gpu::{DeviceOptions, GgufSource, GpuContext, GpuModel, ModelOptions};
    let src = GgufSource::open(&args.model)?;
    let ctx = std::sync::Arc::new(GpuContext::new(&DeviceOptions::default())?);
    let n_batch = ids.len().clamp(1, 512);
    let mut m = GpuModel::load(
        ctx.clone(),
        &src,
        ModelOptions {
            n_ctx,
            n_batch,
            n_seq: 1,
        },
    )?;
    let t0 = std::time::Instant::now();
    let mut logits = Vec::new();
    for (c, chunk) in ids.chunks(n_batch).enumerate() {
        let t: Vec<(u32, u32, u32)> = chunk
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, 0, (c * n_batch + i) as u32))
            .collect();
        logits = m.forward(&t, false)?;
    }
    let t_prompt = t0.elapsed();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    let t1 = std::time::Instant::now();
    let mut generated = 0;
    let first = ggufq::model::greedy_token(&logits);
    if args.n_predict > 0 && Some(first) != tok.eos {
        write!(out, "{}", String::from_utf8_lossy(&tok.token_bytes(first)))?;
        out.flush()?;
        generated = 1;
        let rest = args.n_predict - 1;
        m.decode_greedy(first, 0, ids.len() as u32, rest, &mut |_, _, next| {
            if Some(next) == tok.eos {
                return Ok(false);
            }
            let text = String::from_utf8_lossy(&tok.token_bytes(next)).into_owned();
            write!(out, "{text}")
                .and_then(|_| out.flush())
                .map_err(|e| ggufq::error::Error::msg(format!("writing the output: {e}")))?;
            generated += 1;
            Ok(generated < args.n_predict)
        })?;
    }
    writeln!(out)?;
    let label = format!("gpu: {}", ctx.facts.name);
    report(&label, ids.len(), t_prompt, generated, t1.elapsed());
    Ok(crate::cli::EXIT_OK)
}

#[cfg(not(feature = "gpu"))]
fn run_gpu(
    _: &Args,
    _: &ggufq::model::tokenizer::Tokenizer,
    _: &[u32],
    _: usize,
) -> anyhow::Result<i32> {
    anyhow::bail!("--backend gpu needs the `gpu` feature in this build")
}
