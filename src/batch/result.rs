//! Per-job results (`OUT/results/JOB.json`) and extraction of figures from child JSON.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::recipe::pipeline::Gates;

/// Schema tag written in every job result.
pub const JOB_SCHEMA: &str = "ggufq.batch.job/1";

/// What a job produced: the source itself (baseline) or a converted variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// The unmodified source model: its perplexity and speed are the baseline.
    Source,
    /// A converted output.
    Variant,
}

/// Outcome of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Every step ran.
    Ok,
    /// A step failed; `error` says which and why.
    Failed,
}

/// The stored result of one job. Figures are `None` when not measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Always [`JOB_SCHEMA`].
    pub schema: String,
    /// `MODEL__VARIANT`, unique within a pipeline; also the output file stem.
    pub job_id: String,
    /// Model name (sanitised).
    pub model: String,
    /// Variant name (recipe/preset name, or `source`).
    pub variant: String,
    /// Source or variant.
    pub kind: JobKind,
    /// Source model path.
    pub source_path: String,
    /// sha256 of the source file.
    pub source_sha256: String,
    /// Output file name inside the output folder (variants only).
    pub output: Option<String>,
    /// Outcome.
    pub status: JobStatus,
    /// The step that failed (`convert`, `ppl`, `bench`, ...).
    pub failed_step: Option<String>,
    /// Why it failed (child exit status and the end of its stderr).
    pub error: Option<String>,
    /// Size in bytes of the model this job measured (output, or source for the baseline).
    pub size_bytes: Option<u64>,
    /// Size of the source file in bytes.
    pub source_size_bytes: u64,
    /// Bits per weight of the output, from convert's manifest (`totals.bpw`).
    #[serde(default)]
    pub bpw: Option<f64>,
    /// Perplexity.
    pub ppl: Option<f64>,
    /// Standard error of the perplexity.
    pub ppl_err: Option<f64>,
    /// Perplexity of the source, when the KL run reported it.
    pub base_ppl: Option<f64>,
    /// Mean KL-divergence against the source.
    pub kld: Option<f64>,
    /// Standard error of the mean KLD.
    pub kld_err: Option<f64>,
    /// Generation tokens/s.
    pub tps_gen: Option<f64>,
    /// Prompt processing tokens/s.
    pub tps_prompt: Option<f64>,
    /// Where `tps_gen` comes from: `bench` (GPU) or `ppl` (CPU evaluation speed).
    pub tps_from: Option<String>,
    /// `ok`, `skipped: ...` or `not run`.
    pub bench_status: String,
    /// Gates configured in the pipeline (evaluated by the report).
    pub gates: Gates,
    /// Whether conversion was skipped because a matching output existed (resume).
    pub convert_reused: bool,
    /// Seconds spent per step.
    pub timings: serde_json::Map<String, Value>,
    /// Fingerprint of everything that determines this result (version, inputs, settings).
    pub key: String,
    /// The ggufq version that produced it.
    pub ggufq_version: String,
    /// The `--shard` that ran it.
    pub shard: String,
    /// Raw JSON of the children (`manifest` summary, `ppl`, `bench`).
    pub raw: serde_json::Map<String, Value>,
}

impl JobResult {
    /// Milliseconds per generated token (from `tps_gen`).
    pub fn ms_per_token(&self) -> Option<f64> {
        self.tps_gen.filter(|t| *t > 0.0).map(|t| 1000.0 / t)
    }

    /// Read a job result file.
    pub fn load(path: &Path) -> Result<JobResult> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::msg(format!(
                "{}:{}:{}: not a ggufq batch job result: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })
    }
}

/// Parse a child's stdout as JSON: the whole text, else from its first `{` or `[`.
pub fn parse_child_json(stdout: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return Some(v);
    }
    let i = stdout.find(['{', '['])?;
    serde_json::from_str::<Value>(stdout[i..].trim()).ok()
}

/// Breadth-first search for the first number under any of `keys` (shallowest wins, so a
/// top-level `ppl` beats a nested `base.ppl`). A matching object yields its
/// `value`/`mean`/`estimate` number.
pub fn find_number(v: &Value, keys: &[&str]) -> Option<f64> {
    let mut queue: std::collections::VecDeque<&Value> = [v].into();
    while let Some(cur) = queue.pop_front() {
        match cur {
            Value::Object(m) => {
                for k in keys {
                    if let Some(x) = m.get(*k) {
                        if let Some(n) = as_number(x) {
                            return Some(n);
                        }
                    }
                }
                queue.extend(m.values());
            }
            Value::Array(a) => queue.extend(a.iter()),
            _ => {}
        }
    }
    None
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Object(m) => ["value", "mean", "estimate"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_f64)),
        _ => None,
    }
}

/// The first string at any of the given key paths (`&["source", "sha256"]`).
pub fn find_str_path<'a>(v: &'a Value, paths: &[&[&str]]) -> Option<&'a str> {
    paths.iter().find_map(|p| {
        let mut cur = v;
        for k in *p {
            cur = cur.get(*k)?;
        }
        cur.as_str()
    })
}

/// Figures read from `ggufq ppl --json` (or `bench --ppl` JSON).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PplFigures {
    /// Perplexity.
    pub ppl: Option<f64>,
    /// Its standard error.
    pub ppl_err: Option<f64>,
    /// The reference model's perplexity, if reported.
    pub base_ppl: Option<f64>,
    /// Mean KLD.
    pub kld: Option<f64>,
    /// KLD standard error.
    pub kld_err: Option<f64>,
    /// Evaluation tokens/s.
    pub tps: Option<f64>,
}

/// Extract perplexity/KLD figures from child JSON.
pub fn ppl_figures(v: &Value) -> PplFigures {
    let base = ["base", "reference", "kl_base"]
        .iter()
        .find_map(|k| v.get(*k));
    PplFigures {
        ppl: find_number(v, &["ppl", "perplexity"]),
        ppl_err: find_number(
            v,
            &["ppl_err", "ppl_stderr", "perplexity_err", "ppl_std_err"],
        )
        .or_else(|| {
            ["ppl", "perplexity"].iter().find_map(|k| {
                v.get(*k)
                    .and_then(|o| find_number(o, &["err", "stderr", "std_err", "error"]))
            })
        }),
        base_ppl: find_number(v, &["base_ppl", "ppl_base", "reference_ppl"])
            .or_else(|| base.and_then(|b| find_number(b, &["ppl", "perplexity"]))),
        kld: find_number(v, &["kld", "mean_kld", "kld_mean", "kl_divergence"]),
        kld_err: find_number(v, &["kld_err", "kld_stderr", "kld_std_err"]).or_else(|| {
            ["kld", "kl_divergence"].iter().find_map(|k| {
                v.get(*k)
                    .and_then(|o| find_number(o, &["err", "stderr", "std_err", "error"]))
            })
        }),
        tps: find_number(
            v,
            &["tokens_per_second", "tokens_per_s", "tok_per_s", "tps"],
        )
        .or_else(|| {
            // Only a plain ppl run's token count: a KL run evaluates two models, so its
            // speed is not the model's.
            let n = find_number(v, &["n_tokens_evaluated"])?;
            let s = find_number(v, &["seconds", "eval_seconds", "elapsed_s"])?;
            (s > 0.0).then_some(n / s)
        }),
    }
}

/// Generation and prompt tokens/s from `ggufq bench --format json`: llama-bench style records
/// (`n_prompt`, `n_gen`, `avg_ts`) or named fields (`tg_tps`, `pp_tps`, ...).
pub fn bench_figures(v: &Value) -> (Option<f64>, Option<f64>) {
    let mut tg = None;
    let mut pp = None;
    let mut stack = vec![v];
    while let Some(cur) = stack.pop() {
        match cur {
            Value::Object(m) => {
                if let Some(ts) = m.get("avg_ts").and_then(Value::as_f64) {
                    let n_gen = m.get("n_gen").and_then(Value::as_u64).unwrap_or(0);
                    let n_prompt = m.get("n_prompt").and_then(Value::as_u64).unwrap_or(0);
                    if n_gen > 0 && tg.is_none() {
                        tg = Some(ts);
                    } else if n_gen == 0 && n_prompt > 0 && pp.is_none() {
                        pp = Some(ts);
                    }
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a.iter().rev()),
            _ => {}
        }
    }
    let tg = tg.or_else(|| {
        find_number(
            v,
            &[
                "tg_tps",
                "gen_tps",
                "decode_tps",
                "tg_tokens_per_s",
                "generation_tps",
            ],
        )
    });
    let pp = pp.or_else(|| {
        find_number(
            v,
            &["pp_tps", "prompt_tps", "prefill_tps", "pp_tokens_per_s"],
        )
    });
    (tg, pp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ppl_shapes() {
        let f = ppl_figures(
            &json!({"ppl": 21.5, "ppl_err": 0.3, "kld": {"mean": 0.02, "err": 0.001}, "base": {"ppl": 21.0}}),
        );
        assert_eq!(f.ppl, Some(21.5));
        assert_eq!(f.ppl_err, Some(0.3));
        assert_eq!(f.kld, Some(0.02));
        assert_eq!(f.kld_err, Some(0.001));
        assert_eq!(f.base_ppl, Some(21.0));
        let f = ppl_figures(
            &json!({"perplexity": {"value": 9.0, "stderr": 0.1}, "tokens_per_second": 300.0}),
        );
        assert_eq!(
            (f.ppl, f.ppl_err, f.kld, f.tps),
            (Some(9.0), Some(0.1), None, Some(300.0))
        );
        // Shallowest key wins.
        let f = ppl_figures(&json!({"base": {"ppl": 1.0}, "ppl": 2.0}));
        assert_eq!(f.ppl, Some(2.0));
        // `ggufq ppl --json`: a plain run, speed from its tokens and seconds when not given.
        let f = ppl_figures(&json!({
            "model": "m.gguf", "backend": "cpu",
            "result": {"ppl": 21.5, "ppl_err": 0.4, "n_tokens_evaluated": 1000, "seconds": 4.0}
        }));
        assert_eq!(
            (f.ppl, f.ppl_err, f.tps),
            (Some(21.5), Some(0.4), Some(250.0))
        );
        // `ggufq ppl --kl-base --json`: `base` is a path, figures are in `kld`; no speed.
        let f = ppl_figures(&json!({
            "model": "m.gguf", "base": "src.gguf", "n_ctx": 512, "seconds": 9.0,
            "kld": {"n_tokens": 500, "ppl": 21.5, "ppl_err": 0.4, "ppl_base": 21.0, "kld": 0.03, "kld_err": 0.002}
        }));
        assert_eq!(
            (f.ppl, f.ppl_err, f.base_ppl),
            (Some(21.5), Some(0.4), Some(21.0))
        );
        assert_eq!((f.kld, f.kld_err, f.tps), (Some(0.03), Some(0.002), None));
    }

    #[test]
    fn bench_shapes() {
        let llama_bench = json!([{"n_prompt": 512, "n_gen": 0, "avg_ts": 900.0}, {"n_prompt": 0, "n_gen": 128, "avg_ts": 80.5}]);
        assert_eq!(bench_figures(&llama_bench), (Some(80.5), Some(900.0)));
        assert_eq!(
            bench_figures(&json!({"results": {"tg_tps": 10.0, "pp_tps": 20.0}})),
            (Some(10.0), Some(20.0))
        );
        assert_eq!(bench_figures(&json!({"x": 1})), (None, None));
    }

    #[test]
    fn child_json_with_noise() {
        assert_eq!(
            parse_child_json("loading...\n{\"ppl\": 3}\n"),
            Some(json!({"ppl": 3}))
        );
        assert_eq!(parse_child_json("no json"), None);
    }
}
