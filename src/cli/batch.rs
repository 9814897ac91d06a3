//! `ggufq batch PIPELINE.yaml`: convert, validate and gate many models × recipes.

use std::path::PathBuf;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use ggufq::batch::{self, BatchOptions, JobStatus, Shard};

/// Arguments of `ggufq batch`.
#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (YAML; see docs/batch.md).
    pub pipeline: PathBuf,
    /// Output folder (default: the pipeline's `output:`, below the pipeline file's folder).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Run one share of the jobs, I/N with 0 <= I < N (e.g. `--shard $SLURM_ARRAY_TASK_ID/8`).
    #[arg(long)]
    pub shard: Option<String>,
    /// Maximum concurrent jobs (default: pipeline `parallel.jobs`, else the number of cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Print the jobs of this share and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress lines and no table.
    #[arg(short, long)]
    pub quiet: bool,
    /// Executable run for each step (default: this ggufq binary). For wrappers and tests.
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
}

/// Run `ggufq batch`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let shard = match &args.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::ALL,
    };
    let exe = match args.exe {
        Some(e) => e,
        // On Linux, /proc/self/exe still runs this very binary if the file is replaced or
        // deleted while a long batch runs (a rebuild, an upgrade): children match the version
        // written into results and manifests.
        None if cfg!(target_os = "linux") && std::path::Path::new("/proc/self/exe").exists() => {
            PathBuf::from("/proc/self/exe")
        }
        None => std::env::current_exe()?,
    };
    let opts = BatchOptions {
        pipeline: args.pipeline,
        output: args.output,
        shard,
        jobs: args.jobs,
        exe,
        verbose: !args.quiet,
    };
    let plan = batch::plan(&opts)?;
    if args.dry_run {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header([
            "job",
            "kind",
            "source",
            "convert",
            "output",
            "est. memory MB",
        ]);
        for j in plan.jobs.iter().filter(|j| shard.contains(&j.id)) {
            let conv = match &j.recipe {
                Some(ggufq::recipe::pipeline::RecipeSource::Preset(p)) => format!("--recipe {p}"),
                Some(ggufq::recipe::pipeline::RecipeSource::Type(t)) => format!("--type {t}"),
                Some(ggufq::recipe::pipeline::RecipeSource::File(f)) => {
                    format!("--recipe {}", f.display())
                }
                None => String::new(),
            };
            t.add_row([
                j.id.clone(),
                format!("{:?}", j.kind).to_lowercase(),
                j.source.display().to_string(),
                conv,
                j.output_name
                    .as_ref()
                    .map(|o| plan.out_dir.join(o).display().to_string())
                    .unwrap_or_default(),
                format!("{:.0}", j.mem_estimate as f64 / 1e6),
            ]);
        }
        println!("{t}");
        return Ok(super::EXIT_OK);
    }
    let summary = batch::run(&plan, &opts)?;
    // Report over every result of this pipeline present in the output folder (other shares
    // writing to a shared folder included).
    let files: Vec<PathBuf> = plan
        .jobs
        .iter()
        .map(|j| summary.results_dir.join(format!("{}.json", j.id)))
        .filter(|p| p.is_file())
        .collect();
    let jobs = ggufq::report::load_results(&files)?;
    let report = ggufq::report::build(jobs, Some(plan.pipeline.gates.clone()));
    let report_dir = summary.report_dir();
    ggufq::batch::paths::refuse_symlink(&report_dir)?;
    ggufq::report::write::write_all(&report, &report_dir)?;
    if !args.quiet {
        println!("{}", ggufq::report::write::terminal_table(&report));
        println!(
            "{} job(s) in share {}: {} run, {} reused, {} failed; report in {}",
            summary.results.len(),
            shard,
            summary.ran,
            summary.reused,
            summary.failed,
            report_dir.display()
        );
    }
    // Exit code for this share: its own failures and gate failures.
    let mine: std::collections::HashSet<&str> =
        summary.results.iter().map(|r| r.job_id.as_str()).collect();
    let gate_failed = report
        .rows
        .iter()
        .any(|r| mine.contains(r.job_id.as_str()) && r.verdict == "fail");
    let failed = summary
        .results
        .iter()
        .any(|r| r.status == JobStatus::Failed);
    Ok(if failed || gate_failed {
        super::EXIT_CHECK_FAILED
    } else {
        super::EXIT_OK
    })
}
