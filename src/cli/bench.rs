//! `ggufq bench MODEL...`: speed (pp/tg with llama-bench semantics), latency percentiles,
//! memory, bandwidth against the device peak, batched decode, soak, and gates.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;

use ggufq::bench::output::{render, ModelRow};
use ggufq::bench::runner::{run_test, Engine, RunConfig, TestKind};
use ggufq::bench::BenchResult;

use super::{EXIT_CHECK_FAILED, EXIT_OK};

/// Arguments of `ggufq bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// GGUF models to benchmark.
    pub models: Vec<PathBuf>,
    /// Random-weight models generated in memory, SHAPE:TYPE (shape tiny|1b|7b|8b), repeatable.
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
    /// Timed repetitions per test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch: usize,
    /// KV-cache positions per sequence (default: enough for the largest test).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Decode N sequences at once (aggregate tokens/s, per-stream latency).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
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
    /// Reference model for KL divergence (with --ppl).
    #[arg(long)]
    pub kl_base: Option<PathBuf>,
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
    if args.models.is_empty() && args.synth.is_empty() && !args.kernels {
        bail!("no model given (MODEL... or --synth SHAPE:TYPE)");
    }
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if args.kl_base.is_some() && args.ppl.is_none() {
        bail!("--kl-base needs --ppl TEXT");
    }
    match args.backend.as_str() {
        "gpu" => run_gpu(args, duration),
        "cpu" => bail!("--backend cpu needs the CPU model runtime (ggufq::model), which is not in this build yet"),
        other => bail!("unknown backend '{other}' (gpu, cpu)"),
    }
}

#[cfg(not(feature = "gpu"))]
fn run_gpu(_args: Args, _d: Option<Duration>) -> anyhow::Result<i32> {
    bail!("this ggufq was built without the `gpu` feature")
}

#[cfg(feature = "gpu")]
fn run_gpu(args: Args, duration: Option<Duration>) -> anyhow::Result<i32> {
    use ggufq::gpu::{DeviceOptions, GgufSource, GpuContext, GpuModel, ModelOptions, WeightSource};
    use std::sync::Arc;

    // Parse everything that can be wrong before touching the GPU.
    let synths = args
        .synth
        .iter()
        .map(|s| synth_source(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ctx = Arc::new(GpuContext::new(&DeviceOptions {
        max_binding_override: args.max_binding,
        adapter_name: args.adapter.clone(),
        ..Default::default()
    })?);
    let f = &ctx.facts;
    let peak = args.peak_gbps.or_else(|| ggufq::bench::peak_gbps(&f.name));
    if !args.quiet {
        eprintln!(
            "adapter: {} ({}, {}, driver {}); max binding {} MiB, shared {} KiB, subgroups {}, f16 {}, timestamps {}; peak {}",
            f.name,
            f.backend,
            f.device_type,
            f.driver,
            f.max_binding >> 20,
            f.shared_mem >> 10,
            f.subgroup_size.map(|s| s.to_string()).unwrap_or_else(|| "off".into()),
            f.shader_f16,
            f.timestamps,
            peak.map(|p| format!("{p} GB/s")).unwrap_or_else(|| "unknown (use --peak-gbps)".into())
        );
    }
    if args.kernels {
        return kernel_bench(&ctx, &args, peak);
    }
    let max_p = args.n_prompt.iter().copied().max().unwrap_or(0);
    let max_g = args.n_gen.iter().copied().max().unwrap_or(0);
    let n_ctx = args
        .ctx
        .unwrap_or_else(|| (max_p.max(max_g + 1)).next_power_of_two().max(256));
    let mut sources: Vec<Box<dyn WeightSource>> = Vec::new();
    for p in &args.models {
        sources.push(Box::new(GgufSource::open(p)?));
    }
    for src in synths {
        if let Some(dir) = &args.write_synth {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("{}.gguf", src.name));
            if !args.quiet {
                eprintln!("writing {} ...", path.display());
            }
            src.write_gguf(&path)?;
            println!("{}", path.display());
            continue;
        }
        sources.push(Box::new(src));
    }
    if args.write_synth.is_some() {
        return Ok(EXIT_OK);
    }
    let cfgr = RunConfig {
        reps: args.reps,
        parallel: args.parallel,
        duration,
        progress: !args.quiet,
    };
    let mut rows: Vec<(ModelRow, BenchResult)> = Vec::new();
    let mut failed = false;
    for src in &sources {
        if !args.quiet {
            eprintln!("loading {} ...", src.label());
        }
        let t = std::time::Instant::now();
        let mut model = GpuModel::load(
            ctx.clone(),
            src.as_ref(),
            ModelOptions {
                n_ctx,
                n_batch: args.batch.max(args.parallel),
                n_seq: args.parallel,
            },
        )?;
        if !args.quiet {
            eprintln!(
                "  loaded in {:.1} s: {} dispatches per forward",
                t.elapsed().as_secs_f64(),
                model.dispatches
            );
        }
        let c = &model.cfg;
        let n_params = (c.n_vocab * c.n_embd * 2
            + c.n_layer * (c.n_embd * c.qkv_dim() + c.n_embd * c.n_embd + 3 * c.n_embd * c.n_ff))
            as u64;
        let (mw, mk, ms) = model.memory();
        let ty_desc = model_type(src.as_ref(), &model);
        let row = ModelRow {
            model_filename: src.label(),
            model_type: ty_desc,
            model_size: model.weight_bytes(),
            model_n_params: n_params,
            backends: model.backend(),
            gpu_info: ctx.facts.name.clone(),
            cpu_info: cpu_info(),
            n_batch: args.batch,
            mem_weights: mw,
            mem_kv: mk,
            mem_scratch: ms,
            peak_gbps: peak,
            ppl: None,
        };
        if args.ppl.is_some() {
            bail!("--ppl needs the tokenizer and eval modules of the CPU runtime (ggufq::model / ggufq::eval), not in this build yet");
        }
        let mut tests = Vec::new();
        for &p in &args.n_prompt {
            if p > 0 {
                tests.push(TestKind::Pp(p));
            }
        }
        for &g in &args.n_gen {
            if g > 0 {
                tests.push(TestKind::Tg(g));
            }
        }
        for k in tests {
            let r = run_test(&mut model, k, &cfgr)?;
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
    }
    let out = render(&args.output, &rows, &time_now()).map_err(anyhow::Error::msg)?;
    print!("{out}");
    Ok(if failed { EXIT_CHECK_FAILED } else { EXIT_OK })
}

/// Parse --synth SHAPE:MIX (mix: a type name, q4_k_m, q2_k_mix or hybrid).
#[cfg(feature = "gpu")]
fn synth_source(s: &str) -> anyhow::Result<ggufq::gpu::SynthSource> {
    use ggufq::gpu::source::Mix;
    let (shape, mix) = s
        .split_once(':')
        .with_context(|| format!("--synth wants SHAPE:TYPE, got '{s}'"))?;
    let sh = ggufq::gpu::Shape::named(shape)
        .with_context(|| format!("unknown shape '{shape}' (tiny, 1b, 7b, 8b)"))?;
    let m = Mix::parse(mix).with_context(|| {
        format!("unknown type or mix '{mix}' (a type name, q4_k_m, q2_k_mix, hybrid)")
    })?;
    Ok(ggufq::gpu::SynthSource {
        shape: sh,
        mix: m,
        name: format!("synth-{shape}-{}", m.name()),
    })
}

#[cfg(feature = "gpu")]
fn model_type(src: &dyn ggufq::gpu::WeightSource, m: &ggufq::gpu::GpuModel) -> String {
    let _ = src;
    let c = &m.cfg;
    let n = (c.n_vocab * c.n_embd * 2
        + c.n_layer * (c.n_embd * c.qkv_dim() + c.n_embd * c.n_embd + 3 * c.n_embd * c.n_ff))
        as f64;
    let size = if n >= 1e9 {
        format!("{:.0}B", n / 1e9)
    } else {
        format!("{:.0}M", n / 1e6)
    };
    format!("{} {size} {}", c.arch, m.type_summary())
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
    for name in [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ] {
        let ty = ggufq::quant::GgmlType::from_name(name).context("type")?;
        let per = ty.bytes_for((rows * cols) as u64).context("size")?;
        let count = ((256u64 << 20) / per).clamp(1, 32) as usize;
        let mut ms = Vec::new();
        for i in 0..count {
            let data = random_blocks(ty, rows * cols, i as u64 + 1, 0.1)?;
            ms.push(upload_matrix(ctx, name, ty, rows, cols, &data)?);
        }
        let e1 = check_against_cpu(ctx, &mut runner, ty, 37, 512, 1, 1, ctx.tune.nr_decode)?;
        let e8 = check_against_cpu(ctx, &mut runner, ty, 19, 256, 11, NT_PROMPT, NR_PROMPT)?;
        let em = check_against_cpu(ctx, &mut runner, ty, 70, 256, 67, 0, 1)?;
        bad |= !(e1 < 1e-4 && e8 < 1e-4 && em < 1e-4);
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
