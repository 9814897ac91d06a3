//! The `ggufq` command-line tool: argument parsing and glue over the `ggufq` library.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
