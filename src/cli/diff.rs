//! `ggufq diff A B`: metadata and per-tensor type/shape/data differences. Exit 1 if any.

use std::path::PathBuf;

use anyhow::Context;
use ggufq::gguf::GgufFile;
use ggufq::inspect;

/// Arguments of `ggufq diff`.
#[derive(clap::Args)]
pub struct Args {
    /// First file.
    pub a: PathBuf,
    /// Second file.
    pub b: PathBuf,
    /// Do not hash tensor data (compare types and shapes only).
    #[arg(long)]
    pub no_data: bool,
    /// Print long arrays and strings in full.
    #[arg(long)]
    pub full: bool,
    /// Print one JSON document (schema ggufq.diff/1, see docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

/// Run `ggufq diff`: exit 0 when identical, 1 when different.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let a = GgufFile::open(&args.a)?;
    let b = GgufFile::open(&args.b)?;
    let d = inspect::diff(&a, &b, !args.no_data)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&inspect::diff_json(&a, &b, &d))
            .context("serialising JSON")?;
        s.push('\n');
        s
    } else if d.is_empty() {
        format!(
            "no differences ({} metadata keys, {} tensors{})\n",
            a.metadata.len(),
            a.tensors.len(),
            if d.hashed {
                ", data compared by SHA-256"
            } else {
                ", data not compared"
            }
        )
    } else {
        format!(
            "{}{} metadata difference(s), {} tensor difference(s)\n",
            inspect::diff_text(&d, args.full),
            d.metadata.len(),
            d.tensors.len()
        )
    };
    super::inspect::write_stdout(&mut std::io::stdout().lock(), &text)?;
    Ok(if d.is_empty() {
        crate::cli::EXIT_OK
    } else {
        crate::cli::EXIT_CHECK_FAILED
    })
}
