//! `ggufq report FILES...`: merge batch results (e.g. from several shares) into one report.

use std::path::PathBuf;

use ggufq::recipe::pipeline::{parse_fraction, Gates};

/// Arguments of `ggufq report`.
#[derive(clap::Args)]
pub struct Args {
    /// Job results (`OUT/results/*.json`), earlier reports (`results.json`) or folders of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Folder for results.json, results.csv, summary.md and the plots.
    #[arg(short, long, default_value = "ggufq-report")]
    pub output: PathBuf,
    /// Override the gate: maximum mean KLD.
    #[arg(long)]
    pub max_kld: Option<f64>,
    /// Override the gate: maximum perplexity increase (`0.05` or `5%`).
    #[arg(long)]
    pub max_ppl_increase: Option<String>,
    /// Override the gate: minimum generation tokens/s.
    #[arg(long)]
    pub min_tps: Option<f64>,
    /// Do not print the table.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Run `ggufq report`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut files = Vec::new();
    for f in &args.files {
        if f.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|e| ggufq::error::Error::io(f, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(f.clone());
        }
    }
    let jobs = ggufq::report::load_results(&files)?;
    if jobs.is_empty() {
        anyhow::bail!(ggufq::error::Error::msg(
            "no job results in the given files"
        ));
    }
    let gates =
        if args.max_kld.is_some() || args.max_ppl_increase.is_some() || args.min_tps.is_some() {
            let base = jobs.first().map(|j| j.gates.clone()).unwrap_or_default();
            let ppl = match &args.max_ppl_increase {
                Some(s) => Some(parse_fraction(s).map_err(ggufq::error::Error::msg)?),
                None => base.max_ppl_increase,
            };
            Some(Gates {
                max_kld: args.max_kld.or(base.max_kld),
                max_ppl_increase: ppl,
                min_tps: args.min_tps.or(base.min_tps),
            })
        } else {
            None
        };
    let report = ggufq::report::build(jobs, gates);
    let written = ggufq::report::write::write_all(&report, &args.output)?;
    if !args.quiet {
        println!("{}", ggufq::report::write::terminal_table(&report));
        println!(
            "wrote {} file(s) to {}",
            written.len(),
            args.output.display()
        );
    }
    Ok(report.exit_code())
}
