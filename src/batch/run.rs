//! Running a plan: resume checks, bounded parallel scheduling, one child process per step.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::paths::{write_atomic, OutDir};
use super::result::{bench_figures, find_str_path, parse_child_json, ppl_figures, JOB_SCHEMA};
use super::{BatchOptions, Job, JobKind, JobResult, JobStatus, Plan};
use crate::error::{Error, Result};
use crate::recipe::pipeline::{BenchMode, Device, RecipeSource};

/// The ggufq version written into results and compared with output manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exit code a child uses for an environment failure such as "no GPU adapter".
const CHILD_EXIT_ENV: i32 = 3;

/// What a batch run did.
#[derive(Clone, Debug)]
pub struct BatchSummary {
    /// Results of every job of this share (reused and new), in plan order.
    pub results: Vec<JobResult>,
    /// Jobs run now.
    pub ran: usize,
    /// Jobs skipped because a matching result existed.
    pub reused: usize,
    /// Jobs of this share that failed.
    pub failed: usize,
    /// The canonical output folder.
    pub out_dir: PathBuf,
    /// `OUT/results`.
    pub results_dir: PathBuf,
}

impl BatchSummary {
    /// `OUT/report`, where the report over the results is written.
    pub fn report_dir(&self) -> PathBuf {
        self.out_dir.join(crate::batch::paths::REPORT_DIR)
    }
}

/// Context shared by all job threads.
struct Ctx<'a> {
    plan: &'a Plan,
    opts: &'a BatchOptions,
    out: OutDir,
    results_dir: PathBuf,
    logs_dir: PathBuf,
    state_dir: PathBuf,
    threads_per_job: usize,
    text_sha: Option<String>,
    /// Result of the hardware-GPU probe for `bench: auto`, made once when first needed.
    gpu: std::sync::OnceLock<std::result::Result<String, String>>,
}

/// Record written after a successful convert, used to decide whether it can be reused.
#[derive(Serialize, Deserialize, PartialEq)]
struct ConvertRecord {
    ggufq_version: String,
    source_sha256: String,
    recipe_input: String,
    manifest_recipe_sha256: String,
}

/// Run the jobs of `opts.shard`, resuming finished work; per-job failures are recorded in the
/// results, not returned as errors. Errors are for the batch itself (output folder, hashing).
pub fn run(plan: &Plan, opts: &BatchOptions) -> Result<BatchSummary> {
    let out = OutDir::create(&plan.out_dir)?;
    let results_dir = out.subdir("results")?;
    let logs_dir = out.subdir("logs")?;
    let state_dir = out.subdir(".ggufq-batch")?;
    // Temp files a killed earlier run left behind (results, reports, plots) go first.
    for d in [
        out.root().to_path_buf(),
        results_dir.clone(),
        out.root().join(crate::batch::paths::REPORT_DIR),
    ] {
        crate::batch::paths::clean_stale_temps(&d, crate::batch::paths::STALE_TEMP_AGE);
    }
    let mine: Vec<&Job> = plan
        .jobs
        .iter()
        .filter(|j| opts.shard.contains(&j.id))
        .collect();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let max_jobs = opts
        .jobs
        .or(plan.pipeline.parallel.jobs)
        .unwrap_or(cores)
        .max(1);
    let budget = plan
        .pipeline
        .memory_budget()
        .unwrap_or_else(|| available_memory() / 4 * 3);
    let threads_per_job = (cores / max_jobs.min(mine.len().max(1))).max(1);

    // The same persistent source hash cache as `convert` (keyed by path, device, inode, size,
    // mtime and ctime), so a source is read for its hash once across batches and converts.
    let hash_cache = crate::convert::hash_cache::HashCache::default_dir()
        .map(crate::convert::hash_cache::HashCache::new);
    let mut source_sha = std::collections::HashMap::new();
    for j in &mine {
        if !source_sha.contains_key(&j.source) {
            if opts.verbose {
                eprintln!("hashing {}", j.source.display());
            }
            let sha = match &hash_cache {
                Some(c) => {
                    let mut warnings = Vec::new();
                    let sha = c.sha256_of(&j.source, &mut warnings)?;
                    for w in warnings {
                        eprintln!("warning: {w}");
                    }
                    sha
                }
                None => sha256_file(&j.source)?,
            };
            source_sha.insert(j.source.clone(), sha);
        }
    }
    let text_sha = match &plan.text {
        Some(t) => Some(sha256_file(t)?),
        None => None,
    };
    let ctx = Ctx {
        plan,
        opts,
        out,
        results_dir,
        logs_dir,
        state_dir,
        threads_per_job,
        text_sha,
        gpu: std::sync::OnceLock::new(),
    };

    let mut slots: Vec<Option<JobResult>> = vec![None; mine.len()];
    let mut pending: VecDeque<(usize, &Job, String, String)> = VecDeque::new();
    let mut reused = 0;
    for (i, j) in mine.iter().enumerate() {
        let sha = source_sha.get(&j.source).cloned().unwrap_or_default();
        let key = ctx.job_key(j, &sha)?;
        match ctx.reusable_result(j, &key) {
            Some(r) => {
                reused += 1;
                if opts.verbose {
                    eprintln!("[skip] {}: finished result matches (resume)", j.id);
                }
                slots[i] = Some(r);
            }
            None => pending.push_back((i, j, sha, key)),
        }
    }
    let ran = pending.len();
    if opts.verbose {
        eprintln!(
            "batch: {} job(s) in share {} ({} to run, {} finished), up to {} at once, {} thread(s) each, memory budget {:.1} GiB",
            mine.len(),
            opts.shard,
            ran,
            reused,
            max_jobs,
            threads_per_job,
            budget as f64 / (1u64 << 30) as f64
        );
    }

    let (tx, rx) = mpsc::channel::<(usize, u64, JobResult)>();
    let ctx_ref = &ctx;
    let mut done = 0usize;
    std::thread::scope(|s| {
        let mut running = 0usize;
        let mut mem_in_use = 0u64;
        loop {
            while running < max_jobs {
                // The first pending job that fits in the memory budget; a job too big for the
                // whole budget runs alone.
                let pick = pending
                    .iter()
                    .position(|(_, j, _, _)| mem_in_use + j.mem_estimate <= budget)
                    .or(if running == 0 && !pending.is_empty() {
                        Some(0)
                    } else {
                        None
                    });
                let Some(pos) = pick else { break };
                let Some((i, job, sha, key)) = pending.remove(pos) else {
                    break;
                };
                running += 1;
                mem_in_use += job.mem_estimate;
                let tx = tx.clone();
                s.spawn(move || {
                    let r = ctx_ref.execute(job, &sha, &key);
                    let _ = tx.send((i, job.mem_estimate, r));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((i, mem, r)) = rx.recv() else { break };
            running -= 1;
            mem_in_use = mem_in_use.saturating_sub(mem);
            done += 1;
            if opts.verbose {
                let what = match r.status {
                    JobStatus::Ok => "ok".to_string(),
                    JobStatus::Failed => format!(
                        "FAILED at {}: {}",
                        r.failed_step.as_deref().unwrap_or("?"),
                        r.error
                            .as_deref()
                            .unwrap_or("")
                            .lines()
                            .next()
                            .unwrap_or("")
                    ),
                };
                eprintln!("[{done}/{ran}] {}: {what}", r.job_id);
            }
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(r);
            }
        }
    });
    let results: Vec<JobResult> = slots.into_iter().flatten().collect();
    let failed = results
        .iter()
        .filter(|r| r.status == JobStatus::Failed)
        .count();
    Ok(BatchSummary {
        results,
        ran,
        reused,
        failed,
        out_dir: ctx.out.root().to_path_buf(),
        results_dir: ctx.results_dir.clone(),
    })
}

/// Output of one child process.
struct ChildOut {
    code: Option<i32>,
    stdout: String,
    stderr_tail: String,
}

impl Ctx<'_> {
    /// Fingerprint of everything that determines a job's result.
    fn job_key(&self, j: &Job, source_sha: &str) -> Result<String> {
        let v = &self.plan.pipeline.validation;
        let k = json!({
            "ggufq_version": VERSION,
            "kind": j.kind,
            "source_sha256": source_sha,
            "recipe_input": self.recipe_input(j)?,
            "text_sha256": self.text_sha,
            "ctx": v.ctx,
            "chunks": v.chunks,
            "kld": v.kld,
            "device": v.device,
            "bench": v.bench,
            "bench_args": v.bench_args,
        });
        Ok(hex_sha256(k.to_string().as_bytes()))
    }

    /// Fingerprint of what `convert` is given besides the source: recipe file bytes or preset
    /// name, imatrix bytes, `--allow-requantize`.
    fn recipe_input(&self, j: &Job) -> Result<String> {
        let recipe = match &j.recipe {
            None => Value::Null,
            Some(RecipeSource::Preset(p)) => json!({ "preset": p }),
            Some(RecipeSource::Type(t)) => json!({ "type": t }),
            Some(RecipeSource::File(f)) => json!({ "file_sha256": sha256_file(f)? }),
        };
        let imatrix = match &j.imatrix {
            Some(m) => Some(sha256_file(m)?),
            None => None,
        };
        let v = json!({"recipe": recipe, "imatrix": imatrix, "allow_requantize": self.plan.pipeline.allow_requantize});
        Ok(hex_sha256(v.to_string().as_bytes()))
    }

    fn result_path(&self, j: &Job) -> PathBuf {
        self.results_dir.join(format!("{}.json", j.id))
    }

    /// A stored result that can stand for this job: same key, status ok, and for a variant the
    /// output and its manifest still present and matching.
    fn reusable_result(&self, j: &Job, key: &str) -> Option<JobResult> {
        let r = JobResult::load(&self.result_path(j)).ok()?;
        if r.key != key || r.status != JobStatus::Ok || r.schema != JOB_SCHEMA {
            return None;
        }
        if j.kind == JobKind::Variant {
            let out = self.output_path(j).ok()?;
            let m = read_manifest(&out)?;
            if !manifest_matches(&m, &r.source_sha256) {
                return None;
            }
            if std::fs::metadata(&out).ok()?.len() != r.size_bytes? {
                return None;
            }
        }
        Some(r)
    }

    fn output_path(&self, j: &Job) -> Result<PathBuf> {
        let name = j
            .output_name
            .as_deref()
            .ok_or_else(|| Error::msg(format!("job {} has no output", j.id)))?;
        self.out.file_in(self.out.root(), name)
    }

    /// Run one job to completion; never panics on child failures, always returns a result
    /// (also written to `OUT/results/ID.json`).
    fn execute(&self, j: &Job, source_sha: &str, key: &str) -> JobResult {
        let mut r = JobResult {
            schema: JOB_SCHEMA.into(),
            job_id: j.id.clone(),
            model: j.model.clone(),
            variant: j.variant.clone(),
            kind: j.kind,
            source_path: j.source.display().to_string(),
            source_sha256: source_sha.to_string(),
            output: j.output_name.clone(),
            status: JobStatus::Ok,
            failed_step: None,
            error: None,
            size_bytes: None,
            source_size_bytes: j.source_size,
            bpw: None,
            ppl: None,
            ppl_err: None,
            base_ppl: None,
            kld: None,
            kld_err: None,
            tps_gen: None,
            tps_prompt: None,
            tps_from: None,
            bench_status: "not run".into(),
            gates: self.plan.pipeline.gates.clone(),
            convert_reused: false,
            timings: Default::default(),
            key: key.to_string(),
            ggufq_version: VERSION.into(),
            shard: self.opts.shard.to_string(),
            raw: Default::default(),
        };
        if let Err((step, msg)) = self.steps(j, &mut r) {
            r.status = JobStatus::Failed;
            r.failed_step = Some(step);
            r.error = Some(msg);
        }
        let path = self.result_path(j);
        let write = serde_json::to_vec_pretty(&r)
            .map_err(|e| Error::msg(e.to_string()))
            .and_then(|b| write_atomic(&path, &b));
        if let Err(e) = write {
            r.status = JobStatus::Failed;
            r.failed_step = Some("write result".into());
            r.error = Some(e.to_string());
        }
        r
    }

    fn steps(&self, j: &Job, r: &mut JobResult) -> std::result::Result<(), (String, String)> {
        let model = match j.kind {
            JobKind::Source => {
                r.size_bytes = Some(j.source_size);
                j.source.clone()
            }
            JobKind::Variant => {
                let out = self
                    .output_path(j)
                    .map_err(|e| ("output path".to_string(), e.to_string()))?;
                self.convert_step(j, &out, r)?;
                r.size_bytes = std::fs::metadata(&out).ok().map(|m| m.len());
                out
            }
        };
        let v = &self.plan.pipeline.validation;
        let kl_base = (j.kind == JobKind::Variant && v.kld).then(|| j.source.clone());
        if let Some(text) = &self.plan.text {
            let mut args: Vec<OsString> = Vec::new();
            match v.device {
                Device::Cpu => {
                    args.extend([
                        "ppl".into(),
                        model.clone().into(),
                        "-f".into(),
                        text.clone().into(),
                    ]);
                    args.extend(["-c".into(), v.ctx.to_string().into()]);
                    if let Some(c) = v.chunks {
                        args.extend(["--chunks".into(), c.to_string().into()]);
                    }
                    if let Some(b) = &kl_base {
                        args.extend(["--kl-base".into(), b.clone().into()]);
                    }
                    args.push("--json".into());
                }
                Device::Gpu => {
                    args.extend([
                        "bench".into(),
                        model.clone().into(),
                        "--ppl".into(),
                        text.clone().into(),
                    ]);
                    if let Some(b) = &kl_base {
                        args.extend(["--kl-base".into(), b.clone().into()]);
                    }
                    args.extend(v.bench_args.iter().map(OsString::from));
                    args.extend(["-o".into(), "json".into()]);
                }
            }
            let step = if v.device == Device::Cpu {
                "ppl"
            } else {
                "bench-ppl"
            };
            let t = Instant::now();
            let out = self
                .child(j, step, &args)
                .map_err(|e| (step.to_string(), e))?;
            r.timings
                .insert(format!("{step}_s"), json!(t.elapsed().as_secs_f64()));
            if out.code != Some(0) {
                return Err((step.to_string(), child_failure(step, &out)));
            }
            let val = parse_child_json(&out.stdout).ok_or_else(|| {
                (
                    step.to_string(),
                    format!("`ggufq {step}` printed no JSON on stdout"),
                )
            })?;
            let f = ppl_figures(&val);
            if f.ppl.is_none() {
                return Err((
                    step.to_string(),
                    format!("`ggufq {step}` JSON has no perplexity field"),
                ));
            }
            r.ppl = f.ppl;
            r.ppl_err = f.ppl_err;
            r.base_ppl = f.base_ppl;
            r.kld = f.kld;
            r.kld_err = f.kld_err;
            if kl_base.is_some() && f.kld.is_none() {
                return Err((
                    step.to_string(),
                    format!("`ggufq {step}` was asked for KLD but its JSON has none"),
                ));
            }
            if v.device == Device::Gpu {
                let (tg, pp) = bench_figures(&val);
                r.tps_gen = tg;
                r.tps_prompt = pp;
                r.tps_from = tg.map(|_| "bench".into());
                r.bench_status = "ok".into();
            } else if let Some(tps) = f.tps {
                r.tps_prompt = Some(tps);
                r.tps_gen = Some(tps);
                r.tps_from = Some("ppl".into());
            }
            r.raw.insert(step.replace('-', "_"), val);
        }
        let skip_bench = match v.bench {
            BenchMode::Auto if v.device == Device::Cpu => {
                self.gpu.get_or_init(hardware_gpu).as_ref().err()
            }
            _ => None,
        };
        if let Some(why) = skip_bench {
            r.bench_status = format!("skipped: {why}");
        } else if v.device == Device::Cpu && v.bench != BenchMode::Never {
            let mut args: Vec<OsString> = vec!["bench".into(), model.clone().into()];
            args.extend(v.bench_args.iter().map(OsString::from));
            args.extend(["-o".into(), "json".into()]);
            let t = Instant::now();
            let out = self
                .child(j, "bench", &args)
                .map_err(|e| ("bench".to_string(), e))?;
            r.timings
                .insert("bench_s".into(), json!(t.elapsed().as_secs_f64()));
            match out.code {
                Some(0) => {
                    let val = parse_child_json(&out.stdout).ok_or_else(|| {
                        (
                            "bench".to_string(),
                            "`ggufq bench` printed no JSON on stdout".to_string(),
                        )
                    })?;
                    let (tg, pp) = bench_figures(&val);
                    if tg.is_some() {
                        r.tps_gen = tg;
                        r.tps_prompt = pp.or(r.tps_prompt);
                        r.tps_from = Some("bench".into());
                    }
                    r.bench_status = "ok".into();
                    r.raw.insert("bench".into(), val);
                }
                Some(code) if v.bench == BenchMode::Auto && no_gpu(code, &out) => {
                    let why = out
                        .stderr_tail
                        .lines()
                        .rev()
                        .find(|l| l.contains("adapter") || l.starts_with("error"))
                        .unwrap_or("no GPU adapter")
                        .trim()
                        .to_string();
                    r.bench_status = format!("skipped: {why}");
                }
                _ if v.bench == BenchMode::Auto
                    && out.code.is_some()
                    && is_unknown_subcommand(&out) =>
                {
                    r.bench_status = "skipped: this build has no `bench` command".into();
                }
                _ => return Err(("bench".to_string(), child_failure("bench", &out))),
            }
        }
        Ok(())
    }

    /// Convert unless a matching output already exists (resume).
    fn convert_step(
        &self,
        j: &Job,
        out: &Path,
        r: &mut JobResult,
    ) -> std::result::Result<(), (String, String)> {
        let step = || "convert".to_string();
        let recipe_input = self.recipe_input(j).map_err(|e| (step(), e.to_string()))?;
        let record_path = self.state_dir.join(format!("{}.convert.json", j.id));
        if let (Some(m), Ok(rec)) = (read_manifest(out), std::fs::read(&record_path)) {
            if let Ok(rec) = serde_json::from_slice::<ConvertRecord>(&rec) {
                let same = manifest_matches(&m, &r.source_sha256)
                    && rec.ggufq_version == VERSION
                    && rec.source_sha256 == r.source_sha256
                    && rec.recipe_input == recipe_input
                    && manifest_recipe_sha(&m) == Some(rec.manifest_recipe_sha256.as_str());
                if same && out.is_file() {
                    r.convert_reused = true;
                    r.bpw = super::result::find_number(&m, &["bpw"]);
                    r.raw.insert("manifest".into(), manifest_summary(&m));
                    return Ok(());
                }
            }
        }
        // Stale record: remove it before converting so a kill mid-convert cannot leave a
        // record that vouches for a different output.
        let _ = std::fs::remove_file(&record_path);
        let mut args: Vec<OsString> = vec!["convert".into(), j.source.clone().into()];
        match &j.recipe {
            Some(RecipeSource::Preset(p)) => args.extend(["--recipe".into(), p.into()]),
            Some(RecipeSource::Type(t)) => args.extend(["--type".into(), t.into()]),
            Some(RecipeSource::File(f)) => args.extend(["--recipe".into(), f.clone().into()]),
            None => return Err((step(), "job has no recipe".into())),
        }
        if let Some(m) = &j.imatrix {
            args.extend(["--imatrix".into(), m.clone().into()]);
        }
        if self.plan.pipeline.allow_requantize {
            args.push("--allow-requantize".into());
        }
        args.extend(["-o".into(), out.to_path_buf().into()]);
        let t = Instant::now();
        let co = self.child(j, "convert", &args).map_err(|e| (step(), e))?;
        r.timings
            .insert("convert_s".into(), json!(t.elapsed().as_secs_f64()));
        if co.code != Some(0) {
            return Err((step(), child_failure("convert", &co)));
        }
        super::paths::refuse_symlink(out).map_err(|e| (step(), e.to_string()))?;
        if !out.is_file() {
            return Err((
                step(),
                format!("`ggufq convert` exited 0 but wrote no {}", out.display()),
            ));
        }
        let m = read_manifest(out).ok_or_else(|| {
            (
                step(),
                format!(
                    "`ggufq convert` wrote no readable {}.manifest.json",
                    out.display()
                ),
            )
        })?;
        if !manifest_matches(&m, &r.source_sha256) {
            return Err((
                step(),
                format!(
                    "manifest of {} does not match: expected ggufq {VERSION} and source sha256 {}",
                    out.display(),
                    r.source_sha256
                ),
            ));
        }
        r.raw.insert("manifest".into(), manifest_summary(&m));
        r.bpw = super::result::find_number(&m, &["bpw"]);
        if let Some(rs) = manifest_recipe_sha(&m) {
            let rec = ConvertRecord {
                ggufq_version: VERSION.into(),
                source_sha256: r.source_sha256.clone(),
                recipe_input,
                manifest_recipe_sha256: rs.to_string(),
            };
            let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| (step(), e.to_string()))?;
            write_atomic(&record_path, &bytes).map_err(|e| (step(), e.to_string()))?;
        }
        Ok(())
    }

    /// Run `exe ARGS`, stdout captured, stderr to `OUT/logs/ID.STEP.log`.
    fn child(
        &self,
        j: &Job,
        step: &str,
        args: &[OsString],
    ) -> std::result::Result<ChildOut, String> {
        let log_path = self
            .out
            .file_in(&self.logs_dir, &format!("{}.{step}.log", j.id))
            .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.opts.exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env("RAYON_NUM_THREADS", self.threads_per_job.to_string())
            .env("GGUFQ_BATCH_JOB", &j.id);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.opts.exe.display()))?;
        Ok(ChildOut {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr_tail: tail_of_file(&log_path, 2000),
        })
    }
}

/// The name of a hardware GPU adapter, or why there is none. CPU rasterizers (llvmpipe,
/// lavapipe, WARP) do not count: `bench: auto` is for GPUs; `bench: always` runs on those too.
#[cfg(feature = "gpu")]
pub fn hardware_gpu() -> std::result::Result<String, String> {
    if let Some(v) = std::env::var_os("GGUFQ_BATCH_ASSUME_NO_GPU") {
        if !v.is_empty() {
            return Err("no GPU adapter (GGUFQ_BATCH_ASSUME_NO_GPU is set)".into());
        }
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let mut software = Vec::new();
    for a in all {
        let info = a.get_info();
        if info.device_type == wgpu::DeviceType::Cpu {
            software.push(info.name);
        } else {
            return Ok(info.name);
        }
    }
    Err(if software.is_empty() {
        "no GPU adapter".into()
    } else {
        format!("no hardware GPU adapter (only {})", software.join(", "))
    })
}

/// Without the `gpu` feature there is no bench engine.
#[cfg(not(feature = "gpu"))]
pub fn hardware_gpu() -> std::result::Result<String, String> {
    Err("this ggufq was built without the `gpu` feature".into())
}

/// A bench that could not find a GPU: exit code 3 (environment failure), or its
/// "no GPU adapter" message.
fn no_gpu(code: i32, out: &ChildOut) -> bool {
    code == CHILD_EXIT_ENV || out.stderr_tail.contains("no GPU adapter")
}

fn is_unknown_subcommand(out: &ChildOut) -> bool {
    out.stderr_tail.contains("unrecognized subcommand")
}

fn child_failure(step: &str, out: &ChildOut) -> String {
    let status = match out.code {
        Some(c) => format!("exited with code {c}"),
        None => "was killed by a signal".to_string(),
    };
    let tail = out.stderr_tail.trim();
    if tail.is_empty() {
        format!("`ggufq {step}` {status}")
    } else {
        format!("`ggufq {step}` {status}: {tail}")
    }
}

/// The last `n` bytes of a file, starting at a line boundary, with progress-bar carriage
/// returns reduced to their final state.
fn tail_of_file(p: &Path, n: u64) -> String {
    let Ok(mut f) = std::fs::File::open(p) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let s = if len > n {
        s.split_once('\n').map(|x| x.1).unwrap_or(&s)
    } else {
        &s
    };
    s.lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `OUT.manifest.json` (as `convert` writes it), else `OUT-stem.manifest.json`.
fn read_manifest(out: &Path) -> Option<Value> {
    let mut a = out.as_os_str().to_owned();
    a.push(".manifest.json");
    let b = out.with_extension("manifest.json");
    [PathBuf::from(a), b].iter().find_map(|p| {
        if super::paths::refuse_symlink(p).is_err() {
            return None;
        }
        let bytes = std::fs::read(p).ok()?;
        serde_json::from_slice(&bytes).ok()
    })
}

fn manifest_version(m: &Value) -> Option<&str> {
    find_str_path(
        m,
        &[&["ggufq_version"], &["ggufq", "version"], &["version"]],
    )
}

fn manifest_source_sha(m: &Value) -> Option<&str> {
    find_str_path(m, &[&["source_sha256"], &["source", "sha256"]])
}

fn manifest_recipe_sha(m: &Value) -> Option<&str> {
    find_str_path(m, &[&["recipe_sha256"], &["recipe", "sha256"]])
}

/// Whether a manifest was made by this ggufq version from this source.
fn manifest_matches(m: &Value, source_sha: &str) -> bool {
    manifest_version(m) == Some(VERSION)
        && manifest_source_sha(m).map(|s| s.eq_ignore_ascii_case(source_sha)) == Some(true)
}

/// Top-level scalar fields of a manifest (no per-tensor lists), for the job result.
fn manifest_summary(m: &Value) -> Value {
    let mut o = serde_json::Map::new();
    if let Value::Object(map) = m {
        for (k, v) in map {
            if !v.is_array() && !v.is_object() {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(s) = manifest_recipe_sha(m) {
        o.insert("recipe_sha256".into(), json!(s));
    }
    Value::Object(o)
}

/// Hex sha256 of bytes.
pub fn hex_sha256(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

pub use crate::convert::hash_cache::sha256_file;

/// MemAvailable from /proc/meminfo, else 8 GiB.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_field_shapes() {
        let m = json!({"ggufq_version": VERSION, "source_sha256": "AB", "recipe": {"sha256": "r1", "text": "x"}});
        assert!(manifest_matches(&m, "ab"));
        assert!(!manifest_matches(&m, "cd"));
        assert_eq!(manifest_recipe_sha(&m), Some("r1"));
        let old = json!({"ggufq_version": "0.0.0-old", "source_sha256": "ab"});
        assert!(!manifest_matches(&old, "ab"));
        let s = manifest_summary(&json!({"a": 1, "tensors": [1, 2], "recipe_sha256": "z"}));
        assert_eq!(s, json!({"a": 1, "recipe_sha256": "z"}));
    }

    #[test]
    fn sha256_known_value() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex_sha256(b"abc"));
    }

    #[test]
    fn tail_keeps_last_progress_state() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "start\n10%\r50%\r100%\nerror: boom\n").unwrap();
        assert_eq!(tail_of_file(&p, 1000), "start\n100%\nerror: boom");
    }
}
