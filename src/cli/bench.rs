//! `ggufq bench MODEL...`: speed (pp/tg with llama-bench semantics), latency percentiles,
//! memory, bandwidth against the device peak, batched decode, soak, and gates.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;

use ggufq::bench::output::{render, ModelRow};
use ggufq::bench::runner::{run_test, Engine, RunConfig, TestKind, PP_WARMUP};
use ggufq::bench::BenchResult;

use super::{EXIT_CHECK_FAILED, EXIT_OK};

/// Arguments of `ggufq bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// GGUF models to benchmark.
    pub models: Vec<PathBuf>,
    /// Random-weight models generated in memory, SHAPE:MIX, repeatable: shape tiny|1b|7b|8b;
    /// mix a llama-quantize preset (q4_k_m, q4_0, q2_k, ...) planned as `convert` plans it,
    /// a type name that is no preset (q4_k: every matrix), hybrid (recipes/hybrid.yaml) or a
    /// recipe .yaml file.
    #[arg(long = "synth", value_name = "SHAPE:TYPE")]
    pub synth: Vec<String>,
    /// Prompt tokens per pp test (0 = skip), comma-separated list allowed.
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value = "512",
        value_delimiter = ','
    )]
    pub n_prompt: Vec<usize>,
    /// Generated tokens per tg test (0 = skip), comma-separated list allowed.
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value = "128",
        value_delimiter = ','
    )]
    pub n_gen: Vec<usize>,
    /// KV depth: before each pp/tg test, this many random prompt tokens fill the KV cache
    /// (untimed) and the test runs from that position (llama-bench's -d, shown as
    /// "pp512 @ d4096"); with --parallel, every sequence is filled. Comma-separated list
    /// allowed: every depth is crossed with every test.
    #[arg(
        short = 'd',
        long = "n-depth",
        default_value = "0",
        value_delimiter = ','
    )]
    pub n_depth: Vec<usize>,
    /// Timed repetitions per test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch: usize,
    /// KV-cache positions per sequence (default: enough for the largest depth + test).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Decode N sequences at once (aggregate tokens/s, per-stream latency).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// tg as llama-bench's loop runs it: random tokens, each call waiting for its logits
    /// before the next is submitted. Default (one sequence): greedy decoding, the next token
    /// chosen on the GPU and its pass queued before the host reads the previous logits.
    #[arg(long)]
    pub tg_sync: bool,
    /// Soak: repeat tg runs for this long (e.g. 90s, 10m, 1h) and report drift.
    #[arg(long)]
    pub duration: Option<String>,
    /// Backend: gpu (wgpu) or cpu.
    #[arg(long, default_value = "gpu")]
    pub backend: String,
    /// Output format: md, json, csv, sql.
    #[arg(short = 'o', long = "output", default_value = "md")]
    pub output: String,
    /// Device peak bandwidth in GB/s (default: known table by adapter name).
    #[arg(long)]
    pub peak_gbps: Option<f64>,
    /// Exit 1 if any test's mean tokens/s is below this.
    #[arg(long)]
    pub min_tps: Option<f64>,
    /// Exit 1 if perplexity (with --ppl) is above this.
    #[arg(long)]
    pub max_ppl: Option<f64>,
    /// Text file for a perplexity run on the benchmark backend.
    #[arg(long)]
    pub ppl: Option<PathBuf>,
    /// Reference model for KL divergence (with --ppl), run on the same backend.
    #[arg(long)]
    pub kl_base: Option<PathBuf>,
    /// Tokens per perplexity chunk (llama-perplexity `-c`).
    #[arg(long, default_value_t = 512)]
    pub ppl_ctx: usize,
    /// Evaluate at most this many perplexity chunks.
    #[arg(long)]
    pub ppl_chunks: Option<usize>,
    /// CPU threads for --backend cpu (0 = all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Pick the adapter whose name contains this text.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Cap the storage binding size (bytes) to exercise tensor splitting.
    #[arg(long, hide = true)]
    pub max_binding: Option<u64>,
    /// With --synth: write the synthetic models as GGUF files into this folder and exit.
    #[arg(long, value_name = "DIR")]
    pub write_synth: Option<PathBuf>,
    /// Time each type's mat-vec kernel alone (GB/s) instead of whole models.
    #[arg(long)]
    pub kernels: bool,
    /// With --kernels: only these types (comma-separated, e.g. Q4_K,Q4_0).
    #[arg(long, value_delimiter = ',')]
    pub kernel_types: Vec<String>,
    /// With --kernels: time the integer decode mat-vecs as the decode graph runs them, a
    /// chain of dependent dispatches in one compute pass on 7B layer shapes (µs per dispatch,
    /// TB/s), under the lane / row / load-width variants of the kernel.
    #[arg(long)]
    pub decode_chain: bool,
    /// With --decode-chain: matrix shapes ROWSxCOLS (default the 7B layer shapes).
    #[arg(long, value_delimiter = ',')]
    pub chain_shapes: Vec<String>,
    /// With --decode-chain: dispatches per pass.
    #[arg(long, default_value_t = 64)]
    pub chain_n: usize,
    /// With --decode-chain: only the default kernel and the named variants' rows, no grid.
    #[arg(long)]
    pub chain_quick: bool,
    /// With --kernels: time a step boundary crossed by a grid barrier inside one dispatch
    /// against a dependent dispatch (µs per step), for each of --sync-workgroups.
    #[arg(long)]
    pub grid_sync: bool,
    /// With --grid-sync: workgroup counts (of 256 threads) to measure; at most what the
    /// adapter keeps resident at once.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2])]
    pub sync_workgroups: Vec<u32>,
    /// With --kernels: the weight stream of a decode pass without dependent dispatches,
    /// read-only (each word summed, nothing computed): --stream-layers layers of one type
    /// (--kernel-types) and shapes (--chain-shapes, default the 7B layer's QKV, wo, gate_up,
    /// ffn_down) as dependent dispatches, as one dispatch of --sync-workgroups workgroups with
    /// no barrier, and with a grid barrier after every step, loading each --stream-prefetch
    /// words (16 B) per thread of the next step before it. µs per layer, TB/s.
    #[arg(long)]
    pub grid_stream: bool,
    /// With --kernels: a chain of Q8_0-sized integer mat-vecs (--chain-shapes, default the
    /// 7B layer's, --stream-layers layers), each of --sync-workgroups workgroups as one
    /// dependent dispatch per step and as one persistent dispatch with a grid barrier after
    /// each step, each --stream-prefetch blocks per row of the next step loaded before it;
    /// the outputs must equal bit for bit. µs per layer, TB/s.
    #[arg(long)]
    pub grid_matvec: bool,
    /// With --grid-stream: 16-byte words per thread (with --grid-matvec: 32-weight blocks
    /// per row of a lane's next tile) of the next step loaded before each grid barrier.
    #[arg(long, value_delimiter = ',', default_values_t = [0u32, 4, 8])]
    pub stream_prefetch: Vec<u32>,
    /// With --grid-stream: layers per pass.
    #[arg(long, default_value_t = 32)]
    pub stream_layers: u32,
    /// Check the prompt-path kernels (tiled mat-mat, cooperative matrices where available,
    /// and the tiled attention) against CPU dequantization and the decode path; exit 1 on a
    /// mismatch. With model files: also their decode with the last-workgroup
    /// epilogues against the dispatch graph (mat-vec epilogues: 256 tokens; the decode
    /// attention's: 300 tokens; bit for bit). For device runs.
    #[arg(long, hide = true)]
    pub kernel_check: bool,
    /// Before the tests, profile decode steps of each model: GPU time per kernel role
    /// (timestamp queries), GPU time of the whole pass and the CPU phases of a forward call;
    /// with -p, also a prompt of the largest -p size (per role µs and TFLOP/s).
    #[arg(long)]
    pub profile: bool,
    /// Before the tests, time 64 one-token forwards (fewer with a smaller context) with each
    /// decode-graph role's dispatches left out in turn, and the latency-bound ones together:
    /// what each costs inside the pipelined pass (µs per token and per dispatch).
    #[arg(long)]
    pub step_costs: bool,
    /// Record a host timeline of the generation tests' one-token calls (the last reps × n of
    /// them) and print it after the tests: CPU phases of each call (prepare, record,
    /// submit, pre-record of the next, map callback, wake-up, read-back), the time between
    /// calls and, with GPU timestamps, each pass and the GPU's idle gap between passes
    /// (mean, p50 and largest µs, and the µs over the p50 summed over the calls). The greedy
    /// passes' marks: record start, recorded, submitted, map callback, wake-up, read-back
    /// (one submit may carry several passes, `GGUFQ_GREEDY_GROUP`); with --tg-sync,
    /// llama-bench's loop of one-token calls.
    #[arg(long)]
    pub host_profile: bool,
    /// No progress output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Parse "90s", "10m", "1h", "500ms" or plain seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let x: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad duration '{s}' (e.g. 90s, 10m, 1h)"))?;
    if !(x.is_finite() && x > 0.0) {
        bail!("duration must be positive: '{s}'");
    }
    Ok(Duration::from_secs_f64(x * mul))
}

fn cpu_info() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn time_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil date from days since 1970 (Howard Hinnant's algorithm).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Run `ggufq bench`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if !["md", "json", "csv", "sql"].contains(&args.output.as_str()) {
        bail!(
            "unknown output format '{}' (md, json, csv, sql)",
            args.output
        );
    }
    let duration = args.duration.as_deref().map(parse_duration).transpose()?;
    if args.models.is_empty() && args.synth.is_empty() && !args.kernels && !args.kernel_check {
        bail!("no model given (MODEL... or --synth SHAPE:TYPE)");
    }
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if args.kl_base.is_some() && args.ppl.is_none() {
        bail!("--kl-base needs --ppl TEXT");
    }
    if args.max_ppl.is_some() && args.ppl.is_none() {
        bail!("--max-ppl needs --ppl TEXT");
    }
    if args.ppl.is_some() && !args.synth.is_empty() {
        bail!("--ppl needs model files with a tokenizer, not --synth models");
    }
    check_depth(&args)?;
    match args.backend.as_str() {
        "gpu" => run_gpu(args, duration),
        "cpu" => run_cpu(args, duration),
        other => bail!("unknown backend '{other}' (gpu, cpu)"),
    }
}

/// Test list from -p / -n.
fn tests_of(args: &Args) -> Vec<TestKind> {
    let mut tests = Vec::new();
    tests.extend(
        args.n_prompt
            .iter()
            .filter(|&&p| p > 0)
            .map(|&p| TestKind::Pp(p)),
    );
    tests.extend(
        args.n_gen
            .iter()
            .filter(|&&g| g > 0)
            .map(|&g| TestKind::Tg(g)),
    );
    tests
}

/// The largest -d value.
fn max_depth(args: &Args) -> usize {
    args.n_depth.iter().copied().max().unwrap_or(0)
}

/// Refuse -d values that no test would use, with the runs that ignore them, or that do not
/// fit an explicit --ctx (before any model is loaded).
fn check_depth(args: &Args) -> anyhow::Result<()> {
    let max_d = max_depth(args);
    if max_d > 0 {
        for (on, flag) in [
            (args.kernels, "--kernels"),
            (args.kernel_check, "--kernel-check"),
            (args.write_synth.is_some(), "--write-synth"),
        ] {
            if on {
                bail!("--n-depth applies to the pp/tg tests, which {flag} does not run");
            }
        }
        for (on, flag) in [
            (args.profile, "--profile"),
            (args.step_costs, "--step-costs"),
        ] {
            if on {
                bail!(
                    "{flag} times decode steps from position 0, not at a --n-depth; run it \
                     without -d (the tg rows at a depth are the tests themselves)"
                );
            }
        }
        if tests_of(args).is_empty() {
            bail!("--n-depth {max_d} needs a pp or tg test (-p or -n above 0)");
        }
    }
    if let Some(ctx) = args.ctx {
        for &d in &args.n_depth {
            for k in tests_of(args) {
                let need = d + k.tokens();
                if need > ctx {
                    let what = if d > 0 {
                        format!("depth {d} + {} = {need}", k.tokens())
                    } else {
                        need.to_string()
                    };
                    bail!(
                        "--ctx {ctx} is too small for {}: it needs {what} positions (raise \
                         --ctx or leave it out)",
                        k.name_at(d)
                    );
                }
            }
        }
    }
    Ok(())
}

/// KV positions per sequence the tests (and the perplexity run) need: without -d the
/// largest test rounded up to a power of two (at least 256); with it, depth + test rounded
/// up to a multiple of 256 (a power of two would nearly double a long cache: 4096 + 512).
fn ctx_needed(args: &Args) -> usize {
    let max_p = args.n_prompt.iter().copied().max().unwrap_or(0);
    let max_g = args.n_gen.iter().copied().max().unwrap_or(0);
    let ppl = if args.ppl.is_some() { args.ppl_ctx } else { 0 };
    let test = max_p.max(max_g + 1);
    let max_d = max_depth(args);
    args.ctx.unwrap_or_else(|| {
        let tests = if max_d == 0 {
            test.next_power_of_two().max(256)
        } else {
            (max_d + test).next_multiple_of(256)
        };
        tests.max(ppl)
    })
}

/// Run every test at every depth on `e` (llama-bench's order: the depths outermost, each
/// with the pp then the tg tests), checking the --min-tps gate; rows are appended.
fn run_tests(
    e: &mut dyn Engine,
    row: &ModelRow,
    args: &Args,
    cfgr: &RunConfig,
    rows: &mut Vec<(ModelRow, BenchResult)>,
) -> anyhow::Result<bool> {
    let mut failed = false;
    let tests: Vec<(usize, TestKind)> = args
        .n_depth
        .iter()
        .flat_map(|&d| tests_of(args).into_iter().map(move |k| (d, k)))
        .collect();
    for (d, k) in tests {
        let r = run_test(e, k, d, cfgr)?;
        if let Some(min) = args.min_tps {
            if r.avg_ts < min {
                eprintln!(
                    "gate: {} {} = {:.2} t/s < --min-tps {min}",
                    row.model_type, r.test, r.avg_ts
                );
                failed = true;
            }
        }
        rows.push((row.clone(), r));
    }
    Ok(failed)
}

/// What a --ppl run adds to a model's rows.
struct PplOutcome {
    result: ggufq::eval::ppl::PplResult,
    kld: Option<ggufq::eval::kld::KldStats>,
}

/// Tokenize the --ppl text with the model's tokenizer (as `ggufq ppl -f` does).
fn ppl_tokens(
    model: &ggufq::model::Model,
    text: &std::path::Path,
) -> anyhow::Result<(Vec<u32>, Option<u32>)> {
    let tok = model.tokenizer()?;
    let mut s = std::fs::read_to_string(text).map_err(|e| ggufq::error::Error::io(text, e))?;
    // llama.cpp's `-f` drops one trailing newline.
    if s.ends_with('\n') {
        s.pop();
    }
    let bos = if tok.add_bos { tok.bos } else { None };
    Ok((tok.encode(&s, true, false)?, bos))
}

/// Perplexity (and KL-divergence against `base`) of `be` on the --ppl text.
fn ppl_run(
    be: &mut dyn ggufq::model::Backend,
    base: Option<&mut dyn ggufq::model::Backend>,
    model: &ggufq::model::Model,
    args: &Args,
) -> anyhow::Result<PplOutcome> {
    use ggufq::eval::kld::{kl_divergence, BaseSource};
    use ggufq::eval::ppl::{perplexity, PplOptions, PplResult};
    let text = args.ppl.as_deref().context("--ppl TEXT")?;
    let (tokens, bos) = ppl_tokens(model, text)?;
    let opts = PplOptions {
        n_ctx: args.ppl_ctx,
        n_chunks: args.ppl_chunks,
        bos,
    };
    let quiet = args.quiet;
    let t0 = std::time::Instant::now();
    let mut progress = |done: usize, total: usize, v: f64| {
        if !quiet {
            eprint!("\r  ppl chunk {done}/{total}: {v:.4}   ");
        }
    };
    let out = match base {
        None => PplOutcome {
            result: perplexity(be, &tokens, &opts, &mut progress)?,
            kld: None,
        },
        Some(b) => {
            let st = kl_divergence(be, BaseSource::Model(b), &tokens, &opts, &mut progress)?;
            let plan = ggufq::eval::ppl::ChunkPlan::new(tokens.len(), &opts)?;
            PplOutcome {
                result: PplResult {
                    ppl: st.ppl,
                    ppl_err: st.ppl_err,
                    n_chunks: plan.n_chunks,
                    n_ctx: plan.n_ctx,
                    n_scored: st.n_tokens,
                    running: Vec::new(),
                    // Both models evaluate every chunk.
                    n_tokens_evaluated: 2 * plan.n_chunks * plan.n_ctx,
                    seconds: t0.elapsed().as_secs_f64(),
                },
                kld: Some(st),
            }
        }
    };
    if !quiet {
        eprintln!();
        let r = &out.result;
        eprintln!(
            "  [{}] PPL = {:.4} +/- {:.5} over {} chunks of {} ({:.1} s){}",
            be.name(),
            r.ppl,
            r.ppl_err,
            r.n_chunks,
            r.n_ctx,
            r.seconds,
            out.kld
                .as_ref()
                .map(|k| format!(
                    ", mean KLD {:.6}, same top {:.2} %",
                    k.kld,
                    100.0 * k.same_top
                ))
                .unwrap_or_default()
        );
    }
    Ok(out)
}

/// Attach a perplexity outcome to `row`, add its own row, and check --max-ppl.
fn record_ppl(
    out: &PplOutcome,
    row: &mut ModelRow,
    args: &Args,
    rows: &mut Vec<(ModelRow, BenchResult)>,
) -> bool {
    let r = &out.result;
    row.ppl = Some(r.ppl);
    row.ppl_err = Some(r.ppl_err);
    row.kld = out.kld.as_ref().map(|k| k.kld);
    rows.push((row.clone(), BenchResult::from_ppl(r)));
    match args.max_ppl {
        Some(max) if r.ppl > max || r.ppl.is_nan() => {
            eprintln!(
                "gate: {} perplexity {:.4} > --max-ppl {max}",
                row.model_type, r.ppl
            );
            true
        }
        _ => false,
    }
}

fn print_rows(args: &Args, rows: &[(ModelRow, BenchResult)], failed: bool) -> anyhow::Result<i32> {
    let out = render(&args.output, rows, &time_now()).map_err(anyhow::Error::msg)?;
    print!("{out}");
    let greedy_tg = rows.iter().any(|(_, r)| r.n_gen > 0 && r.parallel == 1);
    if greedy_tg && !args.quiet {
        eprintln!(
            "{}",
            if args.tg_sync {
                "tg: random tokens, one call at a time, each waiting for its logits (llama-bench's loop)"
            } else {
                "tg: greedy decoding, every token's logits read back (the GPU engine queues each \
                 pass before the previous one's logits are read; --tg-sync: llama-bench's loop)"
            }
        );
    }
    Ok(if failed { EXIT_CHECK_FAILED } else { EXIT_OK })
}

/// Short size label from a parameter count: "135M", "7B".
fn size_label(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.0}B", n / 1e9)
    } else {
        format!("{:.0}M", n / 1e6)
    }
}

/// The test runner's settings of `args` (both backends).
fn run_config(args: &Args, duration: Option<Duration>) -> RunConfig {
    RunConfig {
        reps: args.reps,
        parallel: args.parallel,
        duration,
        progress: !args.quiet,
        tg_sync: args.tg_sync,
        pp_warmup: PP_WARMUP,
    }
}

/// `--backend cpu`: every test on `model::cpu::CpuBackend` (one instance per --parallel
/// sequence, sharing the memory-mapped weights).
fn run_cpu(args: Args, duration: Option<Duration>) -> anyhow::Result<i32> {
    use ggufq::bench::engine::BackendEngine;
    use ggufq::model::cpu::CpuBackend;
    use ggufq::model::{Backend, Model};
    if args.kernels {
        bail!("--kernels times GPU kernels; it needs --backend gpu");
    }
    for (on, flag) in [
        (args.profile, "--profile"),
        (args.host_profile, "--host-profile"),
        (args.step_costs, "--step-costs"),
    ] {
        if on {
            bail!("{flag} times the GPU engine's dispatches; it needs --backend gpu");
        }
    }
    let n_ctx = ctx_needed(&args);
    let tmp = tempfile::tempdir().context("temporary directory for --synth models")?;
    #[cfg_attr(not(feature = "gpu"), allow(unused_mut))]
    let mut paths: Vec<(PathBuf, String)> = args
        .models
        .iter()
        .map(|p| (p.clone(), p.display().to_string()))
        .collect();
    #[cfg(feature = "gpu")]
    for s in &args.synth {
        // The CPU runtime reads files: write the synthetic model first.
        let src = synth_source(s)?;
        let path = tmp.path().join(format!("{}.gguf", src.name));
        src.write_gguf(&path)?;
        paths.push((path, src.name.clone()));
    }
    #[cfg(not(feature = "gpu"))]
    if !args.synth.is_empty() {
        bail!("--synth needs the `gpu` feature in this build");
    }
    let cfgr = run_config(&args, duration);
    let mut rows = Vec::new();
    let mut failed = false;
    for (path, label) in &paths {
        if !args.quiet {
            eprintln!("loading {label} ...");
        }
        let model = Model::open(path)?;
        let mut seqs: Vec<Box<dyn Backend>> = Vec::new();
        for _ in 0..args.parallel {
            seqs.push(Box::new(CpuBackend::new(&model, n_ctx, args.threads)?));
        }
        let name = seqs[0].name();
        let file = ggufq::gguf::GgufFile::open(path)?;
        let (n_params, size) = file.tensors.iter().fold((0u64, 0u64), |(n, b), t| {
            (n + t.n_elements(), b + t.n_bytes.unwrap_or(0))
        });
        // Bytes read per decoded token: every matrix except the embedding (one row is read),
        // unless the output matrix is the tied embedding.
        let hp = &model.hparams;
        let emb = file
            .tensor("token_embd.weight")
            .and_then(|t| t.n_bytes)
            .unwrap_or(0);
        let per_tok = if hp.tied_embeddings {
            size
        } else {
            size - emb.min(size)
        };
        let kv = (2 * hp.n_layer * n_ctx * hp.kv_dim() * 4 * args.parallel) as u64;
        let mut engine = BackendEngine::new(
            seqs,
            "cpu".into(),
            args.batch.min(n_ctx),
            per_tok,
            (size, kv, 0),
        )?;
        let ty = file
            .get_u64("general.file_type")
            .and_then(|ft| {
                ggufq::recipe::presets::Preset::all()
                    .into_iter()
                    .find(|p| u64::from(p.ftype()) == ft)
            })
            .map(|p| p.name().to_string())
            .unwrap_or_else(|| dominant_type(&file));
        let mut row = ModelRow {
            model_filename: label.clone(),
            model_type: format!("{} {} {ty}", hp.arch.name(), size_label(n_params)),
            model_size: size,
            model_n_params: n_params,
            backends: "CPU".into(),
            kv_type: "f32".into(),
            gpu_info: String::new(),
            cpu_info: cpu_info(),
            n_batch: args.batch,
            n_threads: Some(name_threads(&name)),
            mem_weights: size,
            mem_kv: kv,
            mem_scratch: 0,
            peak_gbps: args.peak_gbps,
            ppl: None,
            ppl_err: None,
            kld: None,
        };
        if args.ppl.is_some() {
            let mut base = match &args.kl_base {
                Some(b) => Some(CpuBackend::new(
                    &Model::open(b)?,
                    args.ppl_ctx,
                    args.threads,
                )?),
                None => None,
            };
            let out = ppl_run(
                engine.first_mut(),
                base.as_mut().map(|b| b as &mut dyn Backend),
                &model,
                &args,
            )?;
            failed |= record_ppl(&out, &mut row, &args, &mut rows);
        }
        failed |= run_tests(&mut engine, &row, &args, &cfgr, &mut rows)?;
    }
    drop(tmp);
    print_rows(&args, &rows, failed)
}

/// "N threads" from "cpu (N threads)".
fn name_threads(name: &str) -> usize {
    name.split(['(', ' '])
        .find_map(|w| w.parse().ok())
        .unwrap_or(1)
}

/// The type holding most bytes in a GGUF.
fn dominant_type(f: &ggufq::gguf::GgufFile) -> String {
    let mut by: Vec<(String, u64)> = Vec::new();
    for t in &f.tensors {
        let n = t.type_name();
        match by.iter_mut().find(|(k, _)| *k == n) {
            Some(e) => e.1 += t.n_bytes.unwrap_or(0),
            None => by.push((n, t.n_bytes.unwrap_or(0))),
        }
    }
    by.into_iter()
        .max_by_key(|b| b.1)
        .map(|b| b.0)
        .unwrap_or_default()
}

#[cfg(not(feature = "gpu"))]
fn run_gpu(_args: Args, _d: Option<Duration>) -> anyhow::Result<i32> {
    bail!("this ggufq was built without the `gpu` feature")
}

#[cfg(feature = "gpu")]
fn run_gpu(args: Args, duration: Option<Duration>) -> anyhow::Result<i32> {
    use ggufq::gpu::{
        DeviceOptions, GgufSource, GpuBackend, GpuContext, GpuModel, ModelOptions, WeightSource,
    };
    use std::sync::Arc;

    // Parse everything that can be wrong before touching the GPU.
    let synths = args
        .synth
        .iter()
        .map(|s| synth_source(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(dir) = &args.write_synth {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for src in &synths {
            let path = dir.join(format!("{}.gguf", src.name));
            if !args.quiet {
                eprintln!("writing {} ...", path.display());
            }
            src.write_gguf(&path)?;
            println!("{}", path.display());
        }
        return Ok(EXIT_OK);
    }
    let ctx = Arc::new(GpuContext::new(&DeviceOptions {
        max_binding_override: args.max_binding,
        adapter_name: args.adapter.clone(),
        ..Default::default()
    })?);
    let f = &ctx.facts;
    let peak = args.peak_gbps.or_else(|| ggufq::bench::peak_gbps(&f.name));
    if !args.quiet {
        eprintln!(
            "adapter: {} ({}, {}, driver {}); max binding {} MiB, shared {} KiB, subgroups {}, f16 {}, timestamps {}, coop matrix {}; peak {}",
            f.name,
            f.backend,
            f.device_type,
            f.driver,
            f.max_binding >> 20,
            f.shared_mem >> 10,
            f.subgroup_size.map(|s| s.to_string()).unwrap_or_else(|| "off".into()),
            f.shader_f16,
            f.timestamps,
            f.coop_matrix,
            peak.map(|p| format!("{p} GB/s")).unwrap_or_else(|| "unknown (use --peak-gbps)".into())
        );
    }
    if args.kernels && args.grid_sync {
        println!("| sync | workgroups | steps | µs per step | stale reads |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        let mut stale = 0;
        for &w in &args.sync_workgroups {
            for r in ggufq::gpu::gridsync::grid_sync_bench(
                &ctx,
                w,
                args.chain_n.max(1) as u32,
                args.reps.max(1),
            )? {
                println!(
                    "| {} | {} | {} | {:.2} | {} |",
                    r.kind, r.workgroups, r.steps, r.us_per_step, r.stale
                );
                // The plain grid barrier's stale reads are the finding it measures; the
                // atomic one and the dispatches must see every word.
                if r.kind != "grid barrier" {
                    stale += r.stale;
                }
            }
        }
        return Ok(if stale == 0 { 0 } else { EXIT_CHECK_FAILED });
    }
    if args.kernels && args.grid_matvec {
        return grid_matvec(&ctx, &args, peak);
    }
    if args.kernels && args.grid_stream {
        return grid_stream(&ctx, &args, peak);
    }
    if args.kernels && args.decode_chain {
        return chain_bench(&ctx, &args);
    }
    if args.kernels {
        return kernel_bench(&ctx, &args, peak);
    }
    if args.kernel_check {
        let mut c = ggufq::gpu::selfcheck::self_check(&ctx)?;
        for l in &c.lines {
            println!("{l}");
        }
        // Model files given: the decode epilogues against the dispatch graph, 256 tokens
        // (mat-vec epilogues), greedy decoding on the GPU against the host loop (256), and
        // the decode attention's epilogue against its combine dispatch, 300 tokens.
        for p in &args.models {
            let (pass, line) = ggufq::gpu::selfcheck::lastwg_decode_check(&ctx, p, 256)?;
            println!("{line}");
            c.ok &= pass;
            let (pass, line) = ggufq::gpu::selfcheck::mv_wait_decode_check(&ctx, p, 256)?;
            println!("{line}");
            c.ok &= pass;
            let (pass, line) = ggufq::gpu::selfcheck::attn_wait_decode_check(&ctx, p, 300)?;
            println!("{line}");
            c.ok &= pass;
            let (pass, line) = ggufq::gpu::selfcheck::greedy_decode_check(&ctx, p, 256)?;
            println!("{line}");
            c.ok &= pass;
            let src = GgufSource::open(p)?;
            let (line, ok) = ggufq::gpu::selfcheck::attn_lastwg_check(&ctx, &src)?;
            println!("{}: {line}", p.display());
            c.ok &= ok;
        }
        if !c.ok {
            eprintln!("kernel check FAILED: a kernel disagrees with its reference (lines above)");
            return Ok(EXIT_CHECK_FAILED);
        }
        println!("kernel check ok");
        return Ok(EXIT_OK);
    }
    let n_ctx = ctx_needed(&args);
    let mut sources: Vec<(Box<dyn WeightSource>, Option<PathBuf>)> = Vec::new();
    for p in &args.models {
        sources.push((Box::new(GgufSource::open(p)?), Some(p.clone())));
    }
    for src in synths {
        sources.push((Box::new(src), None));
    }
    let cfgr = run_config(&args, duration);
    let mut rows: Vec<(ModelRow, BenchResult)> = Vec::new();
    let mut failed = false;
    for (src, path) in &sources {
        if !args.quiet {
            eprintln!("loading {} ...", src.label());
        }
        let t = std::time::Instant::now();
        let load = |src: &dyn WeightSource, n_seq: usize| {
            GpuModel::load(
                ctx.clone(),
                src,
                ModelOptions {
                    n_ctx,
                    n_batch: args.batch.max(n_seq),
                    n_seq,
                },
            )
        };
        let mut model = load(src.as_ref(), args.parallel)?;
        if !args.quiet {
            eprintln!(
                "  loaded in {:.1} s: {} dispatches per forward",
                t.elapsed().as_secs_f64(),
                model.dispatches
            );
        }
        let (n_params, size) = src.size_stats();
        let (mw, mk, ms) = model.memory();
        let mut row = ModelRow {
            model_filename: src.label(),
            model_type: format!(
                "{} {} {}",
                model.cfg.arch,
                size_label(n_params),
                model.type_summary()
            ),
            model_size: size,
            model_n_params: n_params,
            backends: model.backend(),
            kv_type: if ctx.tune.kv_f32 { "f32" } else { "f16" }.into(),
            gpu_info: ctx.facts.name.clone(),
            cpu_info: cpu_info(),
            n_batch: args.batch,
            n_threads: None,
            mem_weights: mw,
            mem_kv: mk,
            mem_scratch: ms,
            peak_gbps: peak,
            ppl: None,
            ppl_err: None,
            kld: None,
        };
        if let (Some(_), Some(path)) = (&args.ppl, path) {
            let rt = ggufq::model::Model::open(path)?;
            let mut be = GpuBackend::from_model(model, rt.hparams.clone())?;
            let mut base = match &args.kl_base {
                Some(b) => {
                    let bm = ggufq::model::Model::open(b)?;
                    let bsrc = GgufSource::open(b)?;
                    Some(GpuBackend::from_model(load(&bsrc, 1)?, bm.hparams)?)
                }
                None => None,
            };
            let out = ppl_run(
                &mut be,
                base.as_mut().map(|b| b as &mut dyn ggufq::model::Backend),
                &rt,
                &args,
            )?;
            drop(base);
            failed |= record_ppl(&out, &mut row, &args, &mut rows);
            model = be.into_model();
        }
        if args.profile {
            let p = ggufq::gpu::profile::profile_decode(&mut model, 32)?;
            let mut md = p.to_markdown(&src.label(), peak);
            // Prompt batches run the batch graph: profiled for the largest -p size.
            let np = args.n_prompt.iter().copied().max().unwrap_or(0);
            if np > 1 {
                let pp = ggufq::gpu::prompt_profile::profile_prompt(&mut model, np, 3)?;
                md.push('\n');
                md.push_str(&pp.to_markdown(&src.label()));
            }
            if args.output == "md" {
                println!("{md}");
            } else {
                eprintln!("{md}");
            }
        }
        if args.step_costs {
            let c = ggufq::gpu::profile::step_costs(&mut model, 64.min(n_ctx))?;
            let md = c.to_markdown(&src.label());
            if args.output == "md" {
                println!("{md}");
            } else {
                eprintln!("{md}");
            }
        }
        let tl_cap = args.reps.max(1) * args.n_gen.iter().copied().max().unwrap_or(0);
        if args.host_profile && tl_cap > 0 {
            model.set_host_timeline(Some(tl_cap.min(2048) as u32));
        }
        failed |= run_tests(&mut model, &row, &args, &cfgr, &mut rows)?;
        if args.host_profile && tl_cap > 0 {
            let md = model.host_timeline()?.to_markdown(&src.label());
            model.set_host_timeline(None);
            if args.output == "md" {
                println!("{md}");
            } else {
                eprintln!("{md}");
            }
        }
    }
    print_rows(&args, &rows, failed)
}

/// Parse --synth SHAPE:MIX (mix: a type name, a llama-quantize preset, hybrid, or a recipe file).
#[cfg(feature = "gpu")]
fn synth_source(s: &str) -> anyhow::Result<ggufq::gpu::SynthSource> {
    use ggufq::gpu::source::Mix;
    let (shape, mix) = s
        .split_once(':')
        .with_context(|| format!("--synth wants SHAPE:TYPE, got '{s}'"))?;
    let sh = ggufq::gpu::Shape::named(shape)
        .with_context(|| format!("unknown shape '{shape}' (tiny, 1b, 7b, 8b)"))?;
    let m = Mix::load(mix)?;
    let name = format!("synth-{shape}-{}", m.name());
    Ok(ggufq::gpu::SynthSource::new(sh, m, name)?)
}

/// `--chain-shapes` as (rows, columns), or `default` when none were given.
#[cfg(feature = "gpu")]
fn chain_shapes(args: &Args, default: &[(usize, usize)]) -> anyhow::Result<Vec<(usize, usize)>> {
    if args.chain_shapes.is_empty() {
        return Ok(default.to_vec());
    }
    args.chain_shapes
        .iter()
        .map(|s| {
            let (r, c) = s
                .split_once(['x', 'X'])
                .with_context(|| format!("--chain-shapes wants ROWSxCOLS, got '{s}'"))?;
            let (r, c): (usize, usize) = (r.parse()?, c.parse()?);
            if r == 0 || c == 0 || c % 256 != 0 {
                bail!("--chain-shapes: '{s}' needs rows > 0 and columns a multiple of 256");
            }
            Ok((r, c))
        })
        .collect()
}

/// The persistent-pass benches' plan from the arguments (distinct weights up to 1.75 GiB).
#[cfg(feature = "gpu")]
fn grid_plan(args: &Args) -> ggufq::gpu::gridstream::GridPlan {
    ggufq::gpu::gridstream::GridPlan {
        layers: args.stream_layers,
        budget: 1792 << 20,
        workgroups: args.sync_workgroups.clone(),
        prefetch: args.stream_prefetch.clone(),
        reps: args.reps.max(3),
    }
}

/// A persistent-pass row's cells from the sync column on: the run's, its TB/s as a
/// percentage of `peak` GB/s (or "-"), and `last`.
#[cfg(feature = "gpu")]
fn grid_cells(r: &ggufq::gpu::gridstream::GridRun, peak: Option<f64>, last: &str) -> String {
    let pct = peak
        .map(|p| format!("{:.1}", r.tbps * 1e5 / p))
        .unwrap_or_else(|| "-".into());
    format!("{} | {pct} | {last}", r.cells())
}

/// The last column of a persistent-pass row.
#[cfg(feature = "gpu")]
fn verdict(timed_out: bool, ok: bool, good: &'static str, bad: &'static str) -> &'static str {
    if timed_out {
        "barrier gave up"
    } else if ok {
        good
    } else {
        bad
    }
}

/// `ggufq bench --kernels --grid-stream`: the read-only weight stream of a decode pass as
/// dependent dispatches, one dispatch without barriers, and a persistent dispatch with grid
/// barriers (src/gpu/gridstream.rs); exit 1 if a sum differs or a barrier gave up.
#[cfg(feature = "gpu")]
fn grid_stream(
    ctx: &ggufq::gpu::GpuContext,
    args: &Args,
    peak: Option<f64>,
) -> anyhow::Result<i32> {
    let shapes = chain_shapes(
        args,
        &[(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)],
    )?;
    let names: Vec<String> = if args.kernel_types.is_empty() {
        vec!["Q2_K".into(), "Q4_K".into(), "Q8_0".into()]
    } else {
        args.kernel_types
            .iter()
            .map(|s| s.to_ascii_uppercase())
            .collect()
    };
    let reps = args.reps.max(3);
    println!(
        "Read-only decode weight stream: {} layers of {} steps ({}), median of {reps} passes. µs per layer, TB/s of the bytes read.\n",
        args.stream_layers,
        shapes.len(),
        shapes.iter().map(|(r, c)| format!("{r}x{c}")).collect::<Vec<_>>().join(", ")
    );
    println!("| type | sync | workgroups | words ahead | µs / layer | TB/s | % of peak | sum |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut bad = false;
    for name in &names {
        let ty = ggufq::quant::GgmlType::from_name(name)
            .with_context(|| format!("--kernel-types: unknown type '{name}'"))?;
        let steps: Vec<u64> = shapes
            .iter()
            .map(|&(r, c)| (r * c) as u64 / ty.block_size() * ty.type_size())
            .collect();
        let rows = ggufq::gpu::gridstream::grid_stream_bench(ctx, &steps, &grid_plan(args))?;
        for r in rows {
            bad |= !r.sum_ok || r.run.timed_out;
            let last = verdict(r.run.timed_out, r.sum_ok, "ok", "WRONG");
            println!("| {name} | {} |", grid_cells(&r.run, peak, last));
        }
    }
    Ok(if bad { EXIT_CHECK_FAILED } else { EXIT_OK })
}

/// `ggufq bench --kernels --grid-matvec`: a chain of integer mat-vecs as dependent
/// dispatches and in one persistent dispatch with grid barriers (src/gpu/gridmv.rs); exit 1
/// if a variant's outputs differ from the dispatches' or a barrier gave up.
#[cfg(feature = "gpu")]
fn grid_matvec(
    ctx: &ggufq::gpu::GpuContext,
    args: &Args,
    peak: Option<f64>,
) -> anyhow::Result<i32> {
    let shapes: Vec<(u32, u32)> = chain_shapes(
        args,
        &[(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)],
    )?
    .into_iter()
    .map(|(r, c)| Ok((u32::try_from(r)?, u32::try_from(c)?)))
    .collect::<anyhow::Result<_>>()?;
    let reps = args.reps.max(3);
    let rows = ggufq::gpu::gridmv::grid_matvec_bench(ctx, &shapes, &grid_plan(args))?;
    println!(
        "Integer mat-vec chain (Q8_0-sized: int8 quants, f16 block scales): {} layers of {} steps ({}), median of {reps} passes. µs per layer, TB/s of weight bytes.\n",
        args.stream_layers,
        shapes.len(),
        shapes.iter().map(|(r, c)| format!("{r}x{c}")).collect::<Vec<_>>().join(", ")
    );
    println!("| sync | workgroups | blocks ahead | µs / layer | TB/s | % of peak | outputs |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut bad = false;
    for r in &rows {
        let same = r.out == rows[0].out;
        bad |= !same || r.run.timed_out;
        let last = verdict(r.run.timed_out, same, "= dispatches", "DIFFER");
        println!("| {} |", grid_cells(&r.run, peak, last));
    }
    Ok(if bad { EXIT_CHECK_FAILED } else { EXIT_OK })
}

/// `--kernels --decode-chain`: the integer decode mat-vecs as chains of dependent
/// dispatches (see [`ggufq::gpu::ops::decode_chain`]), every lanes × rows-per-group layout,
/// the other load width and the kernel variants of this engine, per type and shape.
#[cfg(feature = "gpu")]
fn chain_bench(ctx: &ggufq::gpu::GpuContext, args: &Args) -> anyhow::Result<i32> {
    use ggufq::gpu::kernels::{KernelKey, WIDE_TYPES};
    let shapes = chain_shapes(
        args,
        &[
            (4096, 4096),
            (6144, 4096),
            (5120, 4096),
            (1024, 4096),
            (22016, 4096),
            (4096, 11008),
        ],
    )?;
    let names: Vec<String> = if args.kernel_types.is_empty() {
        ["Q4_K", "Q6_K", "Q4_0", "Q8_0", "Q2_K", "Q3_K", "Q5_K"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.kernel_types
            .iter()
            .map(|s| s.to_ascii_uppercase())
            .collect()
    };
    let n = args.chain_n.max(1);
    let reps = args.reps.max(3);
    println!("Decode mat-vec chains: {n} dependent dispatches per pass (one output buffer, wgpu barriers between them), matrix copies ≥ 192 MiB, GPU timestamps of the pass, median of {reps}. µs per dispatch, TB/s of weight bytes.\n");
    println!("| type | shape | variant | µs / dispatch | TB/s | outputs |");
    println!("| --- | --- | --- | ---: | ---: | --- |");
    let base = ctx.tune;
    let mut bad = false;
    for name in &names {
        let ty = ggufq::quant::GgmlType::from_name(name)
            .filter(|t| base.q8_for(t.id()))
            .with_context(|| format!("--kernel-types: no integer decode kernel for '{name}'"))?;
        for &(rows, cols) in &shapes {
            let units = cols / 32;
            let mut vars: Vec<(String, ggufq::gpu::kernels::Tune, Option<KernelKey>)> = vec![(
                format!(
                    "default {:?}",
                    base.matvec_key(ty.id(), 1, base.decode_nr(ty.id()), units)
                ),
                base,
                None,
            )];
            if WIDE_TYPES.contains(&ty.name()) {
                let mut t = base;
                let on = ggufq::gpu::kernels::wide_for(&base, ty.id());
                t.wide = if on { 0 } else { 2 };
                vars.push((
                    format!("default, wide {}", if on { "off" } else { "on" }),
                    t,
                    None,
                ));
            }
            if !args.chain_quick {
                for spl in [32u32, 64, 128, 256] {
                    for nr in [1u32, 2, 4, 8] {
                        vars.push((
                            format!("lanes {spl} NR {nr}"),
                            base,
                            Some(KernelKey::MatVecQ8 {
                                ty: ty.id(),
                                nr,
                                spl,
                            }),
                        ));
                        vars.push((
                            format!("lanes {spl} NR {nr} const"),
                            base,
                            Some(KernelKey::MatVecQ8U {
                                ty: ty.id(),
                                nr,
                                spl,
                                units: units as u32,
                                wg: 256,
                            }),
                        ));
                    }
                }
            }
            // Layouts with 32 (and 64) consecutive rows per workgroup: the shape a mat-vec
            // needs to round its own output in Q8_0 blocks without another dispatch.
            if std::env::var("GGUFQ_CHAIN_BLOCKS").is_ok_and(|v| v == "1") {
                for (spl, nr, wg) in [
                    (128u32, 4u32, 1024u32),
                    (128, 8, 512),
                    (256, 8, 1024),
                    (64, 4, 512),
                    (128, 8, 1024),
                ] {
                    vars.push((
                        format!(
                            "lanes {spl} NR {nr} const {wg} threads ({} rows)",
                            wg / spl * nr
                        ),
                        base,
                        Some(KernelKey::MatVecQ8U {
                            ty: ty.id(),
                            nr,
                            spl,
                            units: units as u32,
                            wg,
                        }),
                    ));
                }
            }
            if !args.chain_quick {
                // Workgroup sizes: the default lanes and rows in 64- to 512-thread groups.
                if let KernelKey::MatVecQ8 { nr, spl, .. } =
                    base.matvec_key(ty.id(), 1, base.decode_nr(ty.id()), units)
                {
                    for wg in [64u32, 128, 512] {
                        for (spl, nr) in [
                            (spl, nr),
                            (spl.min(wg), nr),
                            (spl.min(wg / 2).max(32), nr),
                            (spl.min(wg), 1),
                        ] {
                            if spl > wg {
                                continue;
                            }
                            let l = format!("lanes {spl} NR {nr} const {wg} threads");
                            if vars.iter().any(|v| v.0 == l) {
                                continue;
                            }
                            vars.push((
                                l,
                                base,
                                Some(KernelKey::MatVecQ8U {
                                    ty: ty.id(),
                                    nr,
                                    spl,
                                    units: units as u32,
                                    wg,
                                }),
                            ));
                        }
                    }
                }
            }
            let rows_out = ggufq::gpu::ops::decode_chain(
                ctx,
                ty,
                rows,
                cols,
                n,
                192 << 20,
                reps,
                &vars,
                true,
            )?;
            // A "const" variant must give its runtime-loop twin's output bit for bit; every
            // other variant is compared with the default (another sum order: a difference).
            let find = |l: &str| rows_out.iter().find(|r| r.label == l);
            for r in &rows_out {
                let stem = r.label.split(" const").next().unwrap_or("");
                let twin = (r.label.contains(" const"))
                    .then(|| find(stem))
                    .flatten()
                    .or(rows_out.first());
                let note = match twin {
                    Some(t) if !r.y.is_empty() && !std::ptr::eq(t, r) && t.y.len() == r.y.len() => {
                        let d =
                            t.y.iter()
                                .zip(&r.y)
                                .filter(|(a, b)| a.to_bits() != b.to_bits())
                                .count();
                        if r.label.contains(" const") && t.label == stem {
                            bad |= d != 0;
                        }
                        format!("{d} outputs differ from '{}'", t.label)
                    }
                    _ => String::new(),
                };
                println!(
                    "| {} | {rows}×{cols} | {} | {:.2} | {:.3} | {note} |",
                    ty.name(),
                    r.label,
                    r.us,
                    r.tbps
                );
            }
        }
    }
    if bad {
        eprintln!("decode chain: a kernel variant that must match its twin bit for bit differs");
        return Ok(EXIT_CHECK_FAILED);
    }
    Ok(EXIT_OK)
}

#[cfg(feature = "gpu")]
fn kernel_bench(
    ctx: &ggufq::gpu::GpuContext,
    args: &Args,
    peak: Option<f64>,
) -> anyhow::Result<i32> {
    use ggufq::gpu::buffers::upload_matrix;
    use ggufq::gpu::kernels::{NR_PROMPT, NT_PROMPT};
    use ggufq::gpu::ops::{check_against_cpu, MatRunner};
    use ggufq::gpu::source::random_blocks;
    let (rows, cols) = (11008usize, 4096usize);
    let reps = args.reps.max(3);
    let mut runner = MatRunner::new(ctx);
    println!("Mat-vec (decode) GB/s by rows per warp (NR), tiled mat-mat and small-batch GFLOP/s; {rows}×{cols} matrices, ≥ 256 MiB per round.\n");
    println!("| type | decode NR=1 | NR=2 | NR=4 | best % peak | mm 512 tok GFLOP/s | nt8 64 tok GFLOP/s | rel err nt1 / nt8 / mm |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut bad = false;
    let all = [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ];
    let names: Vec<String> = if args.kernel_types.is_empty() {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        args.kernel_types
            .iter()
            .map(|s| s.to_ascii_uppercase())
            .collect()
    };
    for name in &names {
        let name = name.as_str();
        let ty = ggufq::quant::GgmlType::from_name(name)
            .filter(|t| all.contains(&t.name()))
            .with_context(|| format!("--kernel-types: no GPU kernel for '{name}'"))?;
        let per = ty.bytes_for((rows * cols) as u64).context("size")?;
        let count = ((256u64 << 20) / per).clamp(1, 32) as usize;
        let mut ms = Vec::new();
        for i in 0..count {
            let data = random_blocks(ty, rows * cols, i as u64 + 1, 0.1)?;
            ms.push(upload_matrix(ctx, name, ty, rows, cols, &data)?);
        }
        let e1 = check_against_cpu(
            ctx,
            &mut runner,
            ty,
            37,
            512,
            1,
            1,
            ctx.tune.decode_nr(ty.id()),
        )?;
        let e8 = check_against_cpu(ctx, &mut runner, ty, 19, 256, 11, NT_PROMPT, NR_PROMPT)?;
        let em = check_against_cpu(ctx, &mut runner, ty, 70, 256, 67, 0, 1)?;
        let tol_mm = ggufq::gpu::kernels::matmat_tolerance(ctx);
        bad |= !(e1 < 1e-4 && e8 < 1e-4 && em < tol_mm);
        let bytes = (per * count as u64) as f64;
        let mut gb = Vec::new();
        for nr in [1u32, 2, 4] {
            gb.push(bytes / runner.time(ctx, &ms, 1, 1, nr, reps)? / 1e9);
        }
        let flops = |ntok: usize| 2.0 * (rows * cols * count * ntok) as f64;
        let tm = runner.time(ctx, &ms[..1], 512, 0, 1, reps)?;
        let t8 = runner.time(ctx, &ms, 64, NT_PROMPT, NR_PROMPT, reps)?;
        let best = gb.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {e1:.1e} / {e8:.1e} / {em:.1e} |",
            gb[0],
            gb[1],
            gb[2],
            peak.map(|p| format!("{:.1}", 100.0 * best / p)).unwrap_or_else(|| "-".into()),
            flops(512) / count as f64 / tm / 1e9,
            flops(64) / t8 / 1e9,
        );
    }
    if bad {
        eprintln!("kernel check failed: a GPU result differs from CPU dequantization");
        return Ok(EXIT_CHECK_FAILED);
    }
    Ok(EXIT_OK)
}
