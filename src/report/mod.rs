//! Batch reports: merge job results, apply the gates, pick the variants to ship, and write
//! `results.json`, `results.csv`, `summary.md` and plots (SVG and PNG).
//!
//! Used by `ggufq batch` at the end of a run and by `ggufq report FILES...`, which merges the
//! results of several shares.

pub mod plot;
pub mod write;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch::{JobKind, JobResult, JobStatus};
use crate::error::{Error, Result};
use crate::recipe::pipeline::Gates;

/// Schema tag of `results.json`.
pub const REPORT_SCHEMA: &str = "ggufq.batch.report/1";

/// One line of the report: a job's figures plus derived values and its gate verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Job id (`MODEL__VARIANT`).
    pub job_id: String,
    /// Model name.
    pub model: String,
    /// Variant name (`source` for the baseline).
    pub variant: String,
    /// `source` or `variant`.
    pub kind: JobKind,
    /// `ok` or `failed`.
    pub status: JobStatus,
    /// Failing step and reason.
    pub error: Option<String>,
    /// File size in bytes.
    pub size_bytes: Option<u64>,
    /// Size relative to the source file.
    pub size_ratio: Option<f64>,
    /// Bits per weight (from convert's manifest).
    pub bpw: Option<f64>,
    /// Perplexity.
    pub ppl: Option<f64>,
    /// Perplexity standard error.
    pub ppl_err: Option<f64>,
    /// Relative perplexity increase over the source (0.05 = +5 %).
    pub ppl_increase: Option<f64>,
    /// Mean KLD against the source.
    pub kld: Option<f64>,
    /// KLD standard error.
    pub kld_err: Option<f64>,
    /// Generation tokens/s.
    pub tps_gen: Option<f64>,
    /// Prompt tokens/s.
    pub tps_prompt: Option<f64>,
    /// Where the speed comes from (`bench` or `ppl`).
    pub tps_from: Option<String>,
    /// Milliseconds per generated token.
    pub ms_per_token: Option<f64>,
    /// `pass`, `fail`, `incomplete` (a gated figure is missing), `error` (job failed) or `-`.
    pub verdict: String,
    /// Why a gate failed or could not be evaluated.
    pub gate_notes: Vec<String>,
    /// On the size/KLD Pareto front of its model.
    pub pareto: bool,
    /// Bench outcome.
    pub bench_status: String,
}

/// The choice for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Model name.
    pub model: String,
    /// Smallest variant that passes the gates.
    pub smallest_passing: Option<String>,
    /// Fastest (generation tokens/s) variant that passes the gates.
    pub fastest_passing: Option<String>,
    /// Passing variant with the highest quality per GB, quality = -log10(mean KLD).
    pub best_quality_per_gb: Option<String>,
    /// Variants that pass.
    pub passing: Vec<String>,
}

/// A merged report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// ggufq version that wrote the report.
    pub ggufq_version: String,
    /// Gates applied.
    pub gates: Gates,
    /// One row per job, sorted by model then size.
    pub rows: Vec<Row>,
    /// One decision per model.
    pub decisions: Vec<Decision>,
    /// The merged job results (so reports can be merged again).
    pub jobs: Vec<JobResult>,
}

impl Report {
    /// Jobs that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.status == JobStatus::Failed)
    }
    /// Variants whose gates failed.
    pub fn gate_failures(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.verdict == "fail")
    }
    /// The exit code a pipeline should see: 0 when every job ran and every evaluated gate passed, else 1.
    pub fn exit_code(&self) -> i32 {
        if self.failed().next().is_some() || self.gate_failures().next().is_some() {
            1
        } else {
            0
        }
    }
}

/// Read job results from files: single job results (`OUT/results/JOB.json`) or earlier
/// reports (`results.json`, their `jobs`). Later files win for the same job id, except that an
/// `ok` result is never replaced by a `failed` one.
pub fn load_results(files: &[impl AsRef<Path>]) -> Result<Vec<JobResult>> {
    let mut by_id: BTreeMap<String, JobResult> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for f in files {
        let f = f.as_ref();
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Error::msg(format!(
                "{}:{}:{}: invalid JSON: {e}",
                f.display(),
                e.line(),
                e.column()
            ))
        })?;
        let jobs: Vec<JobResult> = match v.get("schema").and_then(Value::as_str) {
            Some(REPORT_SCHEMA) => serde_json::from_value(
                v.get("jobs").cloned().unwrap_or(Value::Null),
            )
            .map_err(|e| Error::msg(format!("{}: bad `jobs` in report: {e}", f.display())))?,
            Some(crate::batch::result::JOB_SCHEMA) => vec![serde_json::from_value(v)
                .map_err(|e| Error::msg(format!("{}: bad job result: {e}", f.display())))?],
            other => {
                return Err(Error::msg(format!(
                    "{}: not a ggufq batch job result or report (schema {:?})",
                    f.display(),
                    other.unwrap_or("missing")
                )))
            }
        };
        for j in jobs {
            let keep_old = matches!(by_id.get(&j.job_id), Some(old) if old.status == JobStatus::Ok && j.status == JobStatus::Failed);
            if keep_old {
                continue;
            }
            if !by_id.contains_key(&j.job_id) {
                order.push(j.job_id.clone());
            }
            by_id.insert(j.job_id.clone(), j);
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect())
}

/// Build a report from job results; `gates` overrides the gates stored in the results.
pub fn build(jobs: Vec<JobResult>, gates: Option<Gates>) -> Report {
    let gates = gates.unwrap_or_else(|| jobs.first().map(|j| j.gates.clone()).unwrap_or_default());
    // Baseline perplexity per model from the source jobs (used when a KL run reported none).
    let mut base: BTreeMap<&str, f64> = BTreeMap::new();
    for j in &jobs {
        if j.kind == JobKind::Source && j.status == JobStatus::Ok {
            if let Some(p) = j.ppl {
                base.insert(&j.model, p);
            }
        }
    }
    let mut rows: Vec<Row> = jobs
        .iter()
        .map(|j| {
            // Prefer the source perplexity measured in the variant's own KL run (same tokens,
            // same invocation); else the source job's.
            let base_ppl = j.base_ppl.or_else(|| base.get(j.model.as_str()).copied());
            let ppl_increase = match (j.kind, j.ppl, base_ppl) {
                (JobKind::Variant, Some(p), Some(b)) if b > 0.0 => Some(p / b - 1.0),
                _ => None,
            };
            let mut row = Row {
                job_id: j.job_id.clone(),
                model: j.model.clone(),
                variant: j.variant.clone(),
                kind: j.kind,
                status: j.status,
                error: j
                    .error
                    .as_ref()
                    .map(|e| format!("{}: {e}", j.failed_step.as_deref().unwrap_or("?"))),
                size_bytes: j.size_bytes,
                size_ratio: j
                    .size_bytes
                    .filter(|_| j.source_size_bytes > 0)
                    .map(|s| s as f64 / j.source_size_bytes as f64),
                bpw: j.bpw,
                ppl: j.ppl,
                ppl_err: j.ppl_err,
                ppl_increase,
                kld: j.kld,
                kld_err: j.kld_err,
                tps_gen: j.tps_gen,
                tps_prompt: j.tps_prompt,
                tps_from: j.tps_from.clone(),
                ms_per_token: j.ms_per_token(),
                verdict: String::new(),
                gate_notes: Vec::new(),
                pareto: false,
                bench_status: j.bench_status.clone(),
            };
            let (verdict, notes) = evaluate(&row, &gates);
            row.verdict = verdict;
            row.gate_notes = notes;
            row
        })
        .collect();
    rows.sort_by(|a, b| {
        a.model
            .cmp(&b.model)
            .then(
                b.kind
                    .eq(&JobKind::Source)
                    .cmp(&a.kind.eq(&JobKind::Source)),
            )
            .then(a.size_bytes.cmp(&b.size_bytes))
            .then(a.variant.cmp(&b.variant))
    });
    mark_pareto(&mut rows);
    let decisions = decide(&rows);
    Report {
        schema: REPORT_SCHEMA.into(),
        ggufq_version: env!("CARGO_PKG_VERSION").into(),
        gates,
        rows,
        decisions,
        jobs,
    }
}

/// Apply the gates to one row.
pub fn evaluate(r: &Row, g: &Gates) -> (String, Vec<String>) {
    if r.status == JobStatus::Failed {
        return ("error".into(), vec![]);
    }
    if r.kind == JobKind::Source {
        return ("-".into(), vec![]);
    }
    let mut fails = Vec::new();
    let mut missing = Vec::new();
    let mut check = |name: &str,
                     limit: Option<f64>,
                     value: Option<f64>,
                     max: bool,
                     fmt: &dyn Fn(f64) -> String| {
        let Some(limit) = limit else { return };
        match value {
            None => missing.push(format!("{name}: not measured")),
            Some(v) if max && v > limit => {
                fails.push(format!("{name} {} > {}", fmt(v), fmt(limit)))
            }
            Some(v) if !max && v < limit => {
                fails.push(format!("{name} {} < {}", fmt(v), fmt(limit)))
            }
            Some(_) => {}
        }
    };
    check("kld", g.max_kld, r.kld, true, &|x| format!("{x:.4}"));
    check(
        "ppl increase",
        g.max_ppl_increase,
        r.ppl_increase,
        true,
        &|x| format!("{:+.2}%", x * 100.0),
    );
    check("tokens/s", g.min_tps, r.tps_gen, false, &|x| {
        format!("{x:.1}")
    });
    if !fails.is_empty() {
        fails.extend(missing);
        ("fail".into(), fails)
    } else if !missing.is_empty() {
        ("incomplete".into(), missing)
    } else {
        ("pass".into(), vec![])
    }
}

/// Mark each model's size/KLD Pareto front: no other variant is both smaller (or equal) and
/// lower in KLD (or equal) with one strictly better.
fn mark_pareto(rows: &mut [Row]) {
    let pts: Vec<(usize, String, u64, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == JobKind::Variant && r.status == JobStatus::Ok)
        .filter_map(|(i, r)| Some((i, r.model.clone(), r.size_bytes?, r.kld?)))
        .collect();
    for (i, m, s, k) in &pts {
        let dominated = pts
            .iter()
            .any(|(j, m2, s2, k2)| j != i && m2 == m && s2 <= s && k2 <= k && (s2 < s || k2 < k));
        if let Some(r) = rows.get_mut(*i) {
            r.pareto = !dominated;
        }
    }
}

/// Quality score used for "best quality per GB": -log10(mean KLD), floored at KLD 1e-6 and at 0.
pub fn quality(kld: f64) -> f64 {
    (-(kld.max(1e-6)).log10()).max(0.0)
}

fn decide(rows: &[Row]) -> Vec<Decision> {
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.dedup();
    models
        .into_iter()
        .map(|m| {
            let passing: Vec<&Row> = rows
                .iter()
                .filter(|r| r.model == m && r.kind == JobKind::Variant && r.verdict == "pass")
                .collect();
            let smallest = passing
                .iter()
                .filter(|r| r.size_bytes.is_some())
                .min_by_key(|r| r.size_bytes)
                .map(|r| r.variant.clone());
            let fastest = passing
                .iter()
                .filter_map(|r| Some((r, r.tps_gen?)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(r, _)| r.variant.clone());
            let qpg = passing
                .iter()
                .filter_map(|r| {
                    let gb = r.size_bytes? as f64 / 1e9;
                    (gb > 0.0).then_some((r, quality(r.kld?) / gb))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(r, _)| r.variant.clone());
            Decision {
                model: m.to_string(),
                smallest_passing: smallest,
                fastest_passing: fastest,
                best_quality_per_gb: qpg,
                passing: passing.iter().map(|r| r.variant.clone()).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::batch::result::JOB_SCHEMA;

    pub(crate) fn job(
        model: &str,
        variant: &str,
        size: u64,
        ppl: f64,
        kld: Option<f64>,
        tps: Option<f64>,
    ) -> JobResult {
        JobResult {
            schema: JOB_SCHEMA.into(),
            job_id: format!("{model}__{variant}"),
            model: model.into(),
            variant: variant.into(),
            kind: if variant == "source" {
                JobKind::Source
            } else {
                JobKind::Variant
            },
            source_path: "/m.gguf".into(),
            source_sha256: "00".into(),
            output: None,
            status: JobStatus::Ok,
            failed_step: None,
            error: None,
            size_bytes: Some(size),
            source_size_bytes: 1000,
            bpw: None,
            ppl: Some(ppl),
            ppl_err: None,
            base_ppl: None,
            kld,
            kld_err: None,
            tps_gen: tps,
            tps_prompt: None,
            tps_from: tps.map(|_| "bench".into()),
            bench_status: "ok".into(),
            gates: Gates::default(),
            convert_reused: false,
            timings: Default::default(),
            key: String::new(),
            ggufq_version: "x".into(),
            shard: "0/1".into(),
            raw: Default::default(),
        }
    }

    fn sample() -> Vec<JobResult> {
        vec![
            job("m", "source", 1000, 10.0, None, Some(10.0)),
            job("m", "q8", 530, 10.05, Some(0.002), Some(18.0)),
            job("m", "q4", 300, 10.4, Some(0.03), Some(30.0)),
            job("m", "q2", 200, 13.0, Some(0.3), Some(40.0)),
            // Dominated: bigger than q4 and worse KLD.
            job("m", "bad", 400, 11.0, Some(0.05), Some(25.0)),
        ]
    }

    #[test]
    fn gates_pareto_and_decisions() {
        let gates = Gates {
            max_kld: Some(0.1),
            max_ppl_increase: Some(0.05),
            min_tps: Some(20.0),
        };
        let r = build(sample(), Some(gates));
        let by = |v: &str| r.rows.iter().find(|x| x.variant == v).unwrap();
        assert_eq!(by("source").verdict, "-");
        assert_eq!(by("q8").verdict, "fail"); // 18 tok/s < 20
        assert_eq!(by("q4").verdict, "pass");
        assert_eq!(by("q2").verdict, "fail");
        assert!(by("q2")
            .gate_notes
            .iter()
            .any(|n| n.starts_with("kld 0.3000 > 0.1000")));
        assert!((by("q4").ppl_increase.unwrap() - 0.04).abs() < 1e-9);
        assert!(by("q8").pareto && by("q4").pareto && by("q2").pareto && !by("bad").pareto);
        assert_eq!(by("bad").verdict, "fail"); // +10 % ppl
        let d = &r.decisions[0];
        assert_eq!(d.smallest_passing.as_deref(), Some("q4"));
        assert_eq!(d.fastest_passing.as_deref(), Some("q4"));
        assert_eq!(r.exit_code(), 1);
        // Rows: source first, then by size.
        let order: Vec<&str> = r.rows.iter().map(|x| x.variant.as_str()).collect();
        assert_eq!(order, ["source", "q2", "q4", "bad", "q8"]);
    }

    #[test]
    fn ppl_increase_prefers_the_kl_runs_own_baseline() {
        let mut jobs = sample();
        jobs[2].base_ppl = Some(10.4 / 1.02); // q4: +2 % against its own run's source ppl
        let r = build(jobs, None);
        let q4 = r.rows.iter().find(|x| x.variant == "q4").unwrap();
        assert!((q4.ppl_increase.unwrap() - 0.02).abs() < 1e-9);
        let q8 = r.rows.iter().find(|x| x.variant == "q8").unwrap();
        assert!((q8.ppl_increase.unwrap() - 0.005).abs() < 1e-9); // vs the source job's 10.0
    }

    #[test]
    fn quality_per_gb_and_incomplete() {
        let gates = Gates {
            max_kld: Some(1.0),
            max_ppl_increase: None,
            min_tps: None,
        };
        let r = build(sample(), Some(gates.clone()));
        let d = &r.decisions[0];
        // quality/GB: q8 2.699/530 = 0.00509, q4 1.523/300 = 0.00508, q2 0.523/200 = 0.00261 (per byte).
        assert_eq!(d.best_quality_per_gb.as_deref(), Some("q8"));
        assert_eq!(d.smallest_passing.as_deref(), Some("q2"));
        assert_eq!(r.exit_code(), 0);
        let mut jobs = sample();
        jobs[1].kld = None;
        let r = build(jobs, Some(gates));
        let q8 = r.rows.iter().find(|x| x.variant == "q8").unwrap();
        assert_eq!(q8.verdict, "incomplete");
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn failed_job_sets_exit_code() {
        let mut jobs = sample();
        jobs[2].status = JobStatus::Failed;
        jobs[2].failed_step = Some("convert".into());
        jobs[2].error = Some("boom".into());
        let r = build(jobs, None);
        let q4 = r.rows.iter().find(|x| x.variant == "q4").unwrap();
        assert_eq!(q4.verdict, "error");
        assert_eq!(q4.error.as_deref(), Some("convert: boom"));
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn merge_prefers_ok_and_reads_reports() {
        let d = tempfile::tempdir().unwrap();
        let jobs = sample();
        let mut failed = jobs[2].clone();
        failed.status = JobStatus::Failed;
        let a = d.path().join("a.json");
        let b = d.path().join("b.json");
        std::fs::write(&a, serde_json::to_string(&jobs[2]).unwrap()).unwrap();
        std::fs::write(&b, serde_json::to_string(&failed).unwrap()).unwrap();
        let merged = load_results(&[&a, &b]).unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].status, JobStatus::Ok);
        let rep = build(jobs.clone(), None);
        let c = d.path().join("results.json");
        std::fs::write(&c, serde_json::to_string(&rep).unwrap()).unwrap();
        let merged = load_results(&[&c, &b]).unwrap();
        assert_eq!(merged.len(), jobs.len());
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "{\"schema\": \"other\"}").unwrap();
        assert!(load_results(&[&bad])
            .unwrap_err()
            .to_string()
            .contains("not a ggufq batch"));
        std::fs::write(&bad, "{\n oops").unwrap();
        assert!(load_results(&[&bad])
            .unwrap_err()
            .to_string()
            .contains("bad.json:2:"));
    }
}
