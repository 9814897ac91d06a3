//! Command-line front end. One file per subcommand: parse arguments, call the library, print.
//!
//! Exit codes (documented in README.md and docs/cli.md):
//! - 0: success
//! - 1: the command ran but a check failed (a gate in bench/batch, a diff found differences)
//! - 2: bad usage or bad input (unreadable or invalid file, bad recipe)
//! - 3: an internal or environment failure (I/O error writing output, no GPU adapter)

use clap::{Parser, Subcommand};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a check or gate failed, or a diff found differences.
pub const EXIT_CHECK_FAILED: i32 = 1;
/// Exit code: bad usage or bad input.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: internal or environment failure.
pub const EXIT_INTERNAL: i32 = 3;

#[derive(Parser)]
#[command(name = "ggufq", version, about = "Inspect, requantize and validate GGUF models")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {}
}
