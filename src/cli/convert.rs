//! `ggufq convert`: requantize a GGUF by a recipe, a preset or a plain type.

use std::path::{Path, PathBuf};

use ggufq::convert::{convert, ConvertOptions};
use ggufq::recipe::{Base, Recipe};

use super::EXIT_OK;

/// Arguments of `ggufq convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source GGUF file.
    pub input: PathBuf,
    /// Recipe: a YAML file, or a llama.cpp preset name (Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M,
    /// Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16, F32).
    #[arg(short, long, required_unless_present = "ty", conflicts_with = "ty")]
    pub recipe: Option<String>,
    /// One type for every quantizable tensor (like llama-quantize --pure); a preset name is
    /// accepted too.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub ty: Option<String>,
    /// Output file (default: beside the input, named after the recipe).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the plan (tensor, from → to, why, bytes) and totals; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Allow dequantizing quantized source tensors to quantize them again.
    #[arg(long)]
    pub allow_requantize: bool,
    /// llama.cpp importance matrix (GGUF or legacy .dat); overrides the recipe's.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Write the plan as a llama-quantize --tensor-type-file.
    #[arg(long, value_name = "FILE")]
    pub export_tensor_types: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Do not show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not write OUT.manifest.json.
    #[arg(long)]
    pub no_manifest: bool,
    /// Hash the whole source for the manifest even when the source hash cache
    /// ($GGUFQ_CACHE_DIR, else ~/.cache/ggufq) knows it for this unchanged file.
    #[arg(long)]
    pub no_hash_cache: bool,
}

fn default_output(input: &Path, label: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    input.with_file_name(format!("{stem}-{label}.gguf"))
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Run `ggufq convert`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let (recipe, label) = match (&args.recipe, &args.ty) {
        (Some(r), _) => {
            let recipe = Recipe::load(r)?;
            let label = recipe.name.clone().unwrap_or_else(|| {
                Path::new(r)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "out".into())
            });
            (recipe, label)
        }
        (None, Some(t)) => {
            let base = Base::parse(t).map_err(ggufq::error::Error::msg)?;
            (Recipe::from_base(base), base.name().to_string())
        }
        (None, None) => anyhow::bail!("give --recipe or --type"),
    };
    let output = if args.dry_run {
        args.output.clone()
    } else {
        Some(
            args.output
                .clone()
                .unwrap_or_else(|| default_output(&args.input, &label)),
        )
    };
    let opts = ConvertOptions {
        recipe,
        output,
        dry_run: args.dry_run,
        allow_requantize: args.allow_requantize,
        imatrix: args.imatrix.clone(),
        export_tensor_types: args.export_tensor_types.clone(),
        threads: args.threads,
        progress: !args.no_progress,
        manifest: !args.no_manifest,
        hash_cache: if args.no_hash_cache {
            None
        } else {
            ggufq::convert::hash_cache::HashCache::default_dir()
                .map(ggufq::convert::hash_cache::HashCache::new)
        },
    };
    let rep = convert(&args.input, &opts)?;
    if args.dry_run {
        let mut text = if args.json {
            serde_json::to_string_pretty(&rep.plan.to_json())? + "\n"
        } else {
            rep.plan.render()
        };
        if !args.json && rep.plan.n_requantize() > 0 && !args.allow_requantize {
            text.push_str(&format!(
                "note: {} tensor(s) are requantized from a quantized source; converting needs --allow-requantize\n",
                rep.plan.n_requantize()
            ));
        }
        print_stdout(&text)?;
        return Ok(EXIT_OK);
    }
    for w in rep.plan.warnings.iter().chain(&rep.warnings) {
        eprintln!("warning: {w}");
    }
    let out = rep.output.as_deref().unwrap_or(Path::new(""));
    println!(
        "wrote {} ({} tensors, {:.2} MiB, {:.3} bpw) in {:.2} s",
        out.display(),
        rep.plan.entries.len(),
        rep.plan.to_bytes() as f64 / 1048576.0,
        rep.plan.bpw(),
        rep.timings.total_s
    );
    if let Some(m) = &rep.manifest {
        println!("manifest {}", m.display());
    }
    Ok(EXIT_OK)
}
