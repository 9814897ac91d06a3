//! `ggufq recipe search MODEL (--target-size S | --target-bpw B) [-f TEXT] -o recipe.yaml`:
//! choose each tensor's type for a size budget from measured sensitivity (see
//! `ggufq::recipe::search` and docs/search.md).

use std::io::Write;
use std::path::PathBuf;

use ggufq::quant::GgmlType;
use ggufq::recipe::search::{self, Budget, Progress, SearchOptions};
use indicatif::{ProgressBar, ProgressStyle};

use super::EXIT_OK;

/// `ggufq recipe ...`
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Choose per-tensor types for a size or bits-per-weight budget and write a recipe.
    Search(SearchArgs),
}

/// Arguments of `ggufq recipe search`.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// Source GGUF (ideally F32/F16/BF16/Q8_0).
    pub model: PathBuf,
    /// Output file size budget: bytes or with a unit (90MiB, 100MB, 1.2GiB).
    #[arg(
        long,
        value_name = "SIZE",
        required_unless_present = "target_bpw",
        conflicts_with = "target_bpw"
    )]
    pub target_size: Option<String>,
    /// Bits-per-weight budget over all tensors (as the plan counts them).
    #[arg(long, value_name = "BPW")]
    pub target_bpw: Option<f64>,
    /// Importance matrix: weights the error proxy and is used for quantizing.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Calibration text (e.g. wikitext-2 test): a few chunks measure each tensor group's
    /// KL-divergence. Without it, proxies are not calibrated.
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    pub text: Option<PathBuf>,
    /// Calibration chunks (taken from the end of the text).
    #[arg(long, default_value_t = 2)]
    pub chunks: usize,
    /// Tokens per calibration chunk.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub n_ctx: usize,
    /// Calibrate every group in N contiguous layer ranges (N KL runs per group instead of 1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub calib_split: usize,
    /// Rows sampled per tensor for the error proxy.
    #[arg(long, default_value_t = 256)]
    pub rows: usize,
    /// Candidate types, comma-separated (default: Q2_K,Q3_K,Q4_0,Q4_1,Q4_K,Q5_0,Q5_1,Q5_K,Q6_K,Q8_0,F16).
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Worker threads for calibration runs (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Cache folder (default: $GGUFQ_CACHE or ~/.cache/ggufq).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Measure everything again; read and write no cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Recipe name.
    #[arg(long)]
    pub name: Option<String>,
    /// Output recipe file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print a JSON summary (choices, calibration, cache use) on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Run `ggufq recipe ...`.
pub fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Search(a) => run_search(a),
    }
}

fn run_search(a: SearchArgs) -> anyhow::Result<i32> {
    let budget = match (&a.target_size, a.target_bpw) {
        (Some(s), _) => Budget::Bytes(search::parse_size(s).map_err(anyhow::Error::msg)?),
        (None, Some(b)) if b.is_finite() && b > 0.0 => Budget::Bpw(b),
        (None, Some(b)) => anyhow::bail!("--target-bpw {b}: must be a positive number"),
        (None, None) => anyhow::bail!("give --target-size or --target-bpw"),
    };
    let mut opts = SearchOptions::new(budget);
    opts.imatrix = a.imatrix.clone();
    opts.text = a.text.clone();
    if a.chunks == 0 {
        anyhow::bail!("--chunks must be at least 1");
    }
    opts.chunks = a.chunks;
    opts.n_ctx = a.n_ctx;
    opts.rows = a.rows.max(1);
    if a.calib_split == 0 {
        anyhow::bail!("--calib-split must be at least 1");
    }
    opts.calib_split = a.calib_split;
    opts.threads = a.threads;
    opts.name = a.name.clone().or_else(|| {
        a.output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
    });
    if !a.types.is_empty() {
        opts.candidates = a
            .types
            .iter()
            .map(|t| {
                GgmlType::from_name(t.trim())
                    .filter(|t| ggufq::quant::can_quantize(*t))
                    .ok_or_else(|| anyhow::anyhow!("--types: '{t}' is not a type ggufq writes"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
    }
    opts.cache_root = if a.no_cache {
        None
    } else {
        Some(
            a.cache_dir
                .clone()
                .unwrap_or_else(ggufq::testutil::cache_dir),
        )
    };

    let quiet = a.quiet || a.json;
    let mut pb: Option<ProgressBar> = None;
    let res = search::search(&a.model, &opts, &mut |ev| match ev {
        Progress::Phase(what, total) => {
            if let Some(p) = pb.take() {
                p.finish_and_clear();
            }
            if quiet {
                return;
            }
            let p = ProgressBar::new(total);
            p.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            p.set_prefix(what);
            pb = Some(p);
        }
        Progress::Step(msg) => {
            if let Some(p) = &pb {
                p.set_message(msg);
                p.inc(1);
            }
        }
    });
    if let Some(p) = pb.take() {
        p.finish_and_clear();
    }
    let res = res?;
    // Write atomically: never a half-written recipe.
    let mut out = ggufq::gguf::AtomicOutput::create(&a.output)?;
    out.write_all(res.yaml.as_bytes())
        .map_err(|e| ggufq::error::Error::io(&a.output, e))?;
    out.commit()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        for (g, c) in &res.calibration {
            eprintln!(
                "calibration {g:<12} all {:<5} KL {:.5}  α {:.3e}",
                c.ty,
                c.kl,
                res.alpha.get(g).copied().unwrap_or(f64::NAN)
            );
        }
        eprintln!(
            "measured {} tensors ({} cached), {} KL groups ({} cached)",
            res.cache.proxy_measured,
            res.cache.proxy_cached,
            res.cache.kl_measured,
            res.cache.kl_cached
        );
        println!(
            "{}: {} bytes ({:.2} MiB, {:.3} bpw) for a budget of {} bytes ({:.2} MiB); predicted {} {:.5}",
            a.output.display(),
            res.file_bytes,
            res.file_bytes as f64 / 1048576.0,
            res.bpw,
            res.budget_bytes,
            res.budget_bytes as f64 / 1048576.0,
            if res.calibrated {
                "KLD"
            } else {
                "error (uncalibrated proxy, no -f TEXT)"
            },
            res.predicted_kl
        );
    }
    Ok(EXIT_OK)
}
