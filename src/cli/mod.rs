//! Command-line front end. One file per subcommand: parse arguments, call the library, print.
//!
//! Exit codes (documented in docs/cli.md):
//! - 0: success
//! - 1: the command ran but a check failed (a gate in bench/batch, `diff` found differences)
//! - 2: bad usage or bad input (unreadable or invalid file, bad recipe)
//! - 3: an internal or environment failure (I/O error writing output, no GPU adapter)
//!
//! To add a subcommand: create `src/cli/<name>.rs` with `pub struct Args` (clap `Args`) and
//! `pub fn run(args: Args) -> anyhow::Result<i32>`, then add one variant and one match arm here.

use clap::{Parser, Subcommand};

mod batch;
pub mod bench;
mod convert;
mod diff;
mod inspect;
mod ppl;
mod recipe;
mod report;
mod run;
mod synth;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a check or gate failed, or a diff found differences.
pub const EXIT_CHECK_FAILED: i32 = 1;
/// Exit code: bad usage or bad input.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: internal or environment failure.
pub const EXIT_INTERNAL: i32 = 3;

#[derive(Parser)]
#[command(
    name = "ggufq",
    version,
    about = "Inspect, requantize and validate GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the list of tensor types ggufq knows.
    Types,
    /// Show a GGUF file: summary, metadata, tensors, layer matrix, JSON.
    Inspect(inspect::Args),
    /// Compare two GGUF files: metadata, tensor types, shapes and data (exit 1 if different).
    Diff(diff::Args),
    /// Requantize a GGUF by a recipe, a llama.cpp preset or a plain type.
    Convert(convert::Args),
    /// Benchmark models on the GPU (wgpu) or CPU: pp/tg tokens/s, latency, bandwidth, gates.
    Bench(Box<bench::Args>),
    /// Convert, validate and gate many models × recipes from a pipeline file.
    Batch(batch::Args),
    /// Merge batch results (several shares) into one report with tables and plots.
    Report(report::Args),
    /// Greedy text generation on the CPU (a sanity check).
    Run(run::Args),
    /// Perplexity and KL-divergence on a text file (llama-perplexity's method).
    Ppl(ppl::Args),
    /// Recipe tools: `recipe search` chooses per-tensor types for a size budget.
    #[command(subcommand)]
    Recipe(recipe::Cmd),
    /// Write a llama-shaped GGUF with seeded random weights (tests, benchmarks).
    Synth(synth::Args),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Types => types(),
        Command::Inspect(a) => inspect::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Bench(a) => bench::run(*a),
        Command::Batch(a) => batch::run(a),
        Command::Report(a) => report::run(a),
        Command::Run(a) => run::run(a),
        Command::Ppl(a) => ppl::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Recipe(c) => recipe::run(c),
    };
    match res {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Print an error chain and map it to an exit code: library input errors → 2, the rest → 3.
fn report(e: &anyhow::Error) -> i32 {
    // Print the cause chain, skipping a cause whose text the previous message already holds
    // (library errors embed their source in their own message).
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    // Names in the message may come from a file: never send its control characters (ESC, BEL,
    // CR...) raw to the terminal; line breaks of multi-line messages stay.
    let shown: String = msg
        .split('\n')
        .map(|l| ggufq::gguf::value::printable(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("error: {shown}");
    match e.downcast_ref::<ggufq::error::Error>() {
        // A file that does not exist or may not be read is the user's input at fault.
        Some(ggufq::error::Error::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            EXIT_BAD_INPUT
        }
        Some(ggufq::error::Error::Io { .. }) => EXIT_INTERNAL,
        Some(_) => EXIT_BAD_INPUT,
        None => EXIT_INTERNAL,
    }
}

fn types() -> anyhow::Result<i32> {
    for t in ggufq::quant::GgmlType::all() {
        println!(
            "{:<8} id {:>2}  block {:>3}  bytes {:>3}  {:.4} bpw",
            t.name(),
            t.id(),
            t.block_size(),
            t.type_size(),
            t.bpw()
        );
    }
    Ok(EXIT_OK)
}
