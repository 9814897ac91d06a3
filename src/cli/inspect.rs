//! `ggufq inspect FILE`: summary, metadata, tensor table, layer matrix, JSON, hashes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use ggufq::gguf::GgufFile;
use ggufq::inspect::{self, InspectOptions};

/// Arguments of `ggufq inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print long arrays and strings in full.
    #[arg(long)]
    pub full: bool,
    /// Show the layer matrix (one row per blk.N, one column per tensor kind, cells = type)
    /// instead of the tensor table.
    #[arg(long)]
    pub layers: bool,
    /// Only tensors whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,
    /// Print one JSON document (schema ggufq.inspect/1, see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Add the SHA-256 of every tensor's data (computed in parallel).
    #[arg(long)]
    pub sha256: bool,
    /// Skip the metadata table.
    #[arg(long)]
    pub no_metadata: bool,
    /// Skip the tensor table.
    #[arg(long)]
    pub no_tensors: bool,
}

/// Run `ggufq inspect`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let filter = match &args.filter {
        Some(r) => Some(
            regex::Regex::new(r).map_err(|e| ggufq::error::Error::msg(format!("--filter: {e}")))?,
        ),
        None => None,
    };
    let f = GgufFile::open(&args.file)?;
    let opts = InspectOptions {
        full: args.full,
        filter,
        sha256: args.sha256,
    };
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        let j = inspect::inspect_json(&f, &opts)?;
        let mut s = serde_json::to_string_pretty(&j).context("serialising JSON")?;
        s.push('\n');
        s
    } else {
        let mut s = inspect::summary_text(&f);
        if !args.no_metadata {
            s.push('\n');
            s.push_str(&inspect::metadata_text(&f, args.full));
        }
        let tensors = inspect::selected(&f, &opts);
        if args.layers {
            s.push('\n');
            s.push_str(&inspect::layers_text(&tensors));
        }
        if !args.no_tensors && (!args.layers || args.sha256) {
            let hashes = if args.sha256 {
                Some(inspect::tensor_hashes(&f, &tensors)?)
            } else {
                None
            };
            s.push('\n');
            s.push_str(&inspect::tensors_text(&f, &tensors, hashes.as_deref()));
        }
        s
    };
    write_stdout(&mut out, &text)?;
    Ok(crate::cli::EXIT_OK)
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
pub fn write_stdout(out: &mut impl Write, s: &str) -> anyhow::Result<()> {
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
