//! `ggufq synth --shape tiny|1b|7b|8b --type T -o OUT`: a llama-shaped GGUF with seeded random
//! weights, for tests and benchmarks.

use std::path::PathBuf;

use ggufq::quant::GgmlType;
use ggufq::synth::{write_model, SynthOptions, SynthShape};

/// Arguments of `ggufq synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Named shape: tiny, 1b, 7b, 8b (explicit --n-embd etc. override its fields).
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// Type of the weight matrices (norms stay F32).
    #[arg(long = "type", default_value = "Q8_0")]
    pub ty: String,
    /// Copy the tokenizer (and vocabulary size) from this GGUF.
    #[arg(long, value_name = "GGUF")]
    pub tokenizer_from: Option<PathBuf>,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Embedding width.
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Number of layers.
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// FFN width.
    #[arg(long)]
    pub n_ff: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// KV heads.
    #[arg(long)]
    pub n_head_kv: Option<usize>,
    /// Output file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

/// Run the command.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut shape = SynthShape::named(&a.shape)
        .ok_or_else(|| anyhow::anyhow!("unknown shape '{}' (tiny, 1b, 7b, 8b)", a.shape))?;
    shape.n_embd = a.n_embd.unwrap_or(shape.n_embd);
    shape.n_layer = a.n_layer.unwrap_or(shape.n_layer);
    shape.n_ff = a.n_ff.unwrap_or(shape.n_ff);
    shape.n_head = a.n_head.unwrap_or(shape.n_head);
    shape.n_head_kv = a.n_head_kv.unwrap_or(shape.n_head_kv);
    let ty = GgmlType::from_name(&a.ty.to_ascii_uppercase())
        .ok_or_else(|| anyhow::anyhow!("unknown tensor type '{}'", a.ty))?;
    let opts = SynthOptions {
        shape,
        ty,
        seed: a.seed,
        tokenizer_from: a.tokenizer_from.clone(),
    };
    let s = write_model(&a.output, &opts)?;
    eprintln!(
        "wrote {}: llama, {} layers, embd {}, ff {}, heads {}/{}, vocab {}, {}",
        a.output.display(),
        s.n_layer,
        s.n_embd,
        s.n_ff,
        s.n_head,
        s.n_head_kv,
        s.n_vocab,
        ty.name()
    );
    Ok(crate::cli::EXIT_OK)
}
