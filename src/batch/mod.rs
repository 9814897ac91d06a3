//! `ggufq batch`: many models × many recipes, each output converted, validated and gated.
//!
//! Every step runs as a child process of the ggufq binary itself (`convert`, `ppl --json`,
//! `bench --format json`), so a crash or a kill of one job cannot take the others down and each
//! job's memory is bounded by its own process. The orchestrator only plans, schedules, parses the
//! children's JSON and writes per-job results (`OUT/results/JOB.json`) atomically; a rerun skips
//! any job whose result and output manifest still match (resume), and `--shard I/N` splits the
//! jobs deterministically across machines. See `docs/batch.md`.

pub mod paths;
pub mod result;
pub mod run;
pub mod shard;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::recipe::pipeline::{Pipeline, RecipeSource};

pub use result::{JobKind, JobResult, JobStatus};
pub use run::{run, BatchSummary};
pub use shard::Shard;

/// Options of one `ggufq batch` invocation.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Output folder override (`-o`); default: the pipeline's `output:` below its folder.
    pub output: Option<PathBuf>,
    /// The share of the jobs to run.
    pub shard: Shard,
    /// Concurrent job limit override (`-j`).
    pub jobs: Option<usize>,
    /// The executable run for each step (normally the ggufq binary itself).
    pub exe: PathBuf,
    /// Print progress lines on stderr.
    pub verbose: bool,
}

/// One unit of work: the baseline measurement of a source, or one converted variant.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// `MODEL__VARIANT`, made only of safe file-name characters.
    pub id: String,
    /// Sanitised model name.
    pub model: String,
    /// Variant name (`source` for the baseline).
    pub variant: String,
    /// Baseline or variant.
    pub kind: JobKind,
    /// The source model file.
    pub source: PathBuf,
    /// Its size in bytes.
    pub source_size: u64,
    /// What `convert` is asked to do (variants only).
    pub recipe: Option<RecipeSource>,
    /// `convert --imatrix` file.
    pub imatrix: Option<PathBuf>,
    /// Output file name inside the output folder (variants only): `ID.gguf`.
    pub output_name: Option<String>,
    /// Estimated peak memory of this job's children, in bytes.
    pub mem_estimate: u64,
}

/// A pipeline expanded into jobs, with every path resolved.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The parsed pipeline.
    pub pipeline: Pipeline,
    /// The pipeline file.
    pub pipeline_path: PathBuf,
    /// Folder that relative pipeline paths resolve against.
    pub base_dir: PathBuf,
    /// Output folder (not created yet).
    pub out_dir: PathBuf,
    /// Text for perplexity, resolved.
    pub text: Option<PathBuf>,
    /// All jobs of the pipeline (every share), in pipeline order.
    pub jobs: Vec<Job>,
}

/// Default estimate of a job's peak memory as a multiple of its source file size.
pub const DEFAULT_MEM_FACTOR: f64 = 4.0;

/// Read a pipeline and expand it into jobs.
pub fn plan(opts: &BatchOptions) -> Result<Plan> {
    let pipeline = Pipeline::load(&opts.pipeline)?;
    let base_dir = opts
        .pipeline
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let out_dir = match &opts.output {
        Some(o) => o.clone(),
        None => {
            paths::check_pipeline_output(&pipeline.output)
                .map_err(|e| Error::msg(format!("{}: {e}", opts.pipeline.display())))?;
            base_dir.join(&pipeline.output)
        }
    };
    let text = pipeline
        .validation
        .text
        .as_deref()
        .map(|t| crate::recipe::pipeline::resolve_path(t, &base_dir));
    if let Some(t) = &text {
        if !t.is_file() {
            return Err(Error::msg(format!(
                "{}: validation text {} not found",
                opts.pipeline.display(),
                t.display()
            )));
        }
    }
    let factor = pipeline
        .parallel
        .mem_per_job_factor
        .unwrap_or(DEFAULT_MEM_FACTOR);
    let models = expand_models(&pipeline, &base_dir, &opts.pipeline)?;

    // Variant names: sanitised, unique, not "source".
    let mut variants: Vec<(String, RecipeSource, Option<PathBuf>)> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for r in &pipeline.recipes {
        let raw = r.name();
        let name = paths::sanitize(&raw);
        if name == "source" {
            return Err(Error::msg(format!(
                "{}: the variant name \"source\" is reserved for the baseline; give the recipe another `name:`",
                opts.pipeline.display()
            )));
        }
        if let Some(prev) = seen.insert(name.clone(), raw.clone()) {
            return Err(Error::msg(format!(
                "{}: recipes {prev:?} and {raw:?} both make the variant name {name:?}; set distinct `name:`s",
                opts.pipeline.display()
            )));
        }
        let src = r.source(&base_dir);
        if let RecipeSource::File(f) = &src {
            if !f.is_file() {
                return Err(Error::msg(format!(
                    "{}: recipe file {} not found",
                    opts.pipeline.display(),
                    f.display()
                )));
            }
        }
        if let RecipeSource::Preset(p) = &src {
            if p.is_empty() {
                return Err(Error::msg(format!(
                    "{}: empty preset name",
                    opts.pipeline.display()
                )));
            }
        }
        variants.push((name, src, r.imatrix(&base_dir)));
    }

    let v = &pipeline.validation;
    let baseline = v.text.is_some() || v.bench != crate::recipe::pipeline::BenchMode::Never;
    let mut jobs = Vec::new();
    for (model, path, size) in &models {
        let mem = ((*size as f64) * factor) as u64;
        if baseline {
            jobs.push(Job {
                id: format!("{model}__source"),
                model: model.clone(),
                variant: "source".into(),
                kind: JobKind::Source,
                source: path.clone(),
                source_size: *size,
                recipe: None,
                imatrix: None,
                output_name: None,
                mem_estimate: mem,
            });
        }
        for (name, src, imatrix) in &variants {
            let id = format!("{model}__{name}");
            jobs.push(Job {
                output_name: Some(format!("{id}.gguf")),
                id,
                model: model.clone(),
                variant: name.clone(),
                kind: JobKind::Variant,
                source: path.clone(),
                source_size: *size,
                recipe: Some(src.clone()),
                imatrix: imatrix.clone(),
                mem_estimate: mem,
            });
        }
    }
    Ok(Plan {
        pipeline,
        pipeline_path: opts.pipeline.clone(),
        base_dir,
        out_dir,
        text,
        jobs,
    })
}

/// Expand `models:` into (unique sanitised name, path, size), in pipeline order, duplicates
/// (same canonical file) dropped, name clashes resolved with a short hash of the path.
fn expand_models(
    p: &Pipeline,
    base_dir: &Path,
    origin: &Path,
) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut files: Vec<(Option<String>, PathBuf)> = Vec::new();
    for spec in &p.models {
        let resolved = crate::recipe::pipeline::resolve_path(spec.pattern(), base_dir);
        let pat = resolved.to_string_lossy().into_owned();
        if pat.contains(['*', '?', '[']) {
            let entries = glob::glob(&pat).map_err(|e| {
                Error::msg(format!(
                    "{}: bad glob {:?}: {e}",
                    origin.display(),
                    spec.pattern()
                ))
            })?;
            let mut matched: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|p| p.is_file())
                .collect();
            matched.sort();
            if matched.is_empty() {
                return Err(Error::msg(format!(
                    "{}: model pattern {:?} matched no files",
                    origin.display(),
                    spec.pattern()
                )));
            }
            let many = matched.len() > 1;
            for m in matched {
                let name = spec.name().map(|n| {
                    if many {
                        format!("{n}-{}", stem(&m))
                    } else {
                        n.to_string()
                    }
                });
                files.push((name, m));
            }
        } else {
            if !resolved.is_file() {
                return Err(Error::msg(format!(
                    "{}: model {} not found",
                    origin.display(),
                    resolved.display()
                )));
            }
            files.push((spec.name().map(str::to_string), resolved));
        }
    }
    let mut out: Vec<(String, PathBuf, u64)> = Vec::new();
    let mut canon_seen = HashSet::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (name, path) in files {
        let canon = path.canonicalize().map_err(|e| Error::io(&path, e))?;
        if !canon_seen.insert(canon.clone()) {
            continue;
        }
        let size = std::fs::metadata(&canon)
            .map_err(|e| Error::io(&canon, e))?
            .len();
        let name = paths::sanitize(&name.unwrap_or_else(|| stem(&path)));
        *names.entry(name.clone()).or_default() += 1;
        out.push((name, canon, size));
    }
    for (name, path, _) in out.iter_mut() {
        if names.get(name.as_str()).copied().unwrap_or(0) > 1 {
            let h = shard::stable_hash(&path.to_string_lossy());
            *name = format!("{name}-{:06x}", h & 0xff_ffff);
        }
    }
    Ok(out)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
