//! Report files: `results.json`, `results.csv`, `summary.md`, and the terminal table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use super::{Report, Row};
use crate::batch::paths::write_atomic;
use crate::batch::JobKind;
use crate::error::{Error, Result};

/// Files written by [`write_all`].
pub const FILES: &[&str] = &[
    "results.json",
    "results.csv",
    "summary.md",
    "size_vs_kld.svg",
    "size_vs_kld.png",
    "size_vs_tps.svg",
    "size_vs_tps.png",
    "ms_per_token.svg",
    "ms_per_token.png",
];

/// Write every report file into `dir` (created). Returns the paths written.
pub fn write_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    let json = serde_json::to_vec_pretty(report).map_err(|e| Error::msg(e.to_string()))?;
    let p = dir.join("results.json");
    write_atomic(&p, &json)?;
    written.push(p);
    let p = dir.join("results.csv");
    write_atomic(&p, to_csv(report).as_bytes())?;
    written.push(p);
    let plots = super::plot::write_plots(report, dir)?;
    let p = dir.join("summary.md");
    write_atomic(&p, to_markdown(report, &plots).as_bytes())?;
    written.push(p);
    written.extend(plots);
    Ok(written)
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}")).unwrap_or_default()
}

fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.2}", b as f64 / 1e6))
        .unwrap_or_default()
}

/// CSV with one row per job (RFC 4180 quoting).
pub fn to_csv(r: &Report) -> String {
    let mut s = String::from(
        "job_id,model,variant,kind,status,size_bytes,size_ratio,ppl,ppl_err,ppl_increase,kld,kld_err,tps_gen,tps_prompt,tps_from,ms_per_token,verdict,pareto,gate_notes,bench_status,error\n",
    );
    for x in &r.rows {
        let fields = [
            x.job_id.clone(),
            x.model.clone(),
            x.variant.clone(),
            kind(x).into(),
            status(x).into(),
            x.size_bytes.map(|b| b.to_string()).unwrap_or_default(),
            opt(x.size_ratio, 6),
            opt(x.ppl, 6),
            opt(x.ppl_err, 6),
            opt(x.ppl_increase, 6),
            opt(x.kld, 8),
            opt(x.kld_err, 8),
            opt(x.tps_gen, 3),
            opt(x.tps_prompt, 3),
            x.tps_from.clone().unwrap_or_default(),
            opt(x.ms_per_token, 4),
            x.verdict.clone(),
            x.pareto.to_string(),
            x.gate_notes.join("; "),
            x.bench_status.clone(),
            x.error.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    s
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

fn kind(x: &Row) -> &'static str {
    match x.kind {
        JobKind::Source => "source",
        JobKind::Variant => "variant",
    }
}

fn status(x: &Row) -> &'static str {
    match x.status {
        crate::batch::JobStatus::Ok => "ok",
        crate::batch::JobStatus::Failed => "failed",
    }
}

const HEADER: [&str; 9] = [
    "job", "size MB", "size %", "PPL", "ΔPPL", "KLD", "tok/s", "ms/tok", "verdict",
];

fn cells(x: &Row) -> [String; 9] {
    [
        format!("{}{}", x.job_id, if x.pareto { " *" } else { "" }),
        mb(x.size_bytes),
        opt(x.size_ratio.map(|v| v * 100.0), 1),
        match (x.ppl, x.ppl_err) {
            (Some(p), Some(e)) => format!("{p:.3} ± {e:.3}"),
            (Some(p), None) => format!("{p:.3}"),
            _ => String::new(),
        },
        x.ppl_increase
            .map(|v| format!("{:+.2}%", v * 100.0))
            .unwrap_or_default(),
        opt(x.kld, 5),
        match (x.tps_gen, &x.tps_from) {
            (Some(t), Some(f)) if f != "bench" => format!("{t:.1} ({f})"),
            (Some(t), _) => format!("{t:.1}"),
            _ => String::new(),
        },
        opt(x.ms_per_token, 2),
        if x.gate_notes.is_empty() {
            x.verdict.clone()
        } else {
            format!("{}: {}", x.verdict, x.gate_notes.join("; "))
        },
    ]
}

/// The results table for a terminal (comfy-table).
pub fn terminal_table(r: &Report) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(HEADER);
    for x in &r.rows {
        t.add_row(cells(x));
    }
    let mut s = t.to_string();
    s.push('\n');
    s.push_str(&decisions_text(r));
    for x in r.failed() {
        let _ = writeln!(
            s,
            "FAILED {}: {}",
            x.job_id,
            x.error.as_deref().unwrap_or("unknown error")
        );
    }
    s
}

fn decisions_text(r: &Report) -> String {
    let mut s = String::new();
    for d in &r.decisions {
        let f = |o: &Option<String>| o.clone().unwrap_or_else(|| "none passes".into());
        let _ = writeln!(
            s,
            "{}: smallest passing = {}, fastest passing = {}, best quality per GB = {}",
            d.model,
            f(&d.smallest_passing),
            f(&d.fastest_passing),
            f(&d.best_quality_per_gb)
        );
    }
    s
}

/// The markdown summary: gates, results table, decision matrix, failures, plots.
pub fn to_markdown(r: &Report, plots: &[PathBuf]) -> String {
    let mut s = String::from("# ggufq batch report\n\n");
    let g = &r.gates;
    let gate = |x: Option<String>| x.unwrap_or_else(|| "—".into());
    let _ = writeln!(
        s,
        "Gates: max KLD {}, max PPL increase {}, min tokens/s {}. `*` marks the size/KLD Pareto front.\n",
        gate(g.max_kld.map(|v| v.to_string())),
        gate(g.max_ppl_increase.map(|v| format!("{:.2}%", v * 100.0))),
        gate(g.min_tps.map(|v| v.to_string()))
    );
    let _ = writeln!(s, "| {} |", HEADER.join(" | "));
    let _ = writeln!(s, "|{}", " --- |".repeat(HEADER.len()));
    for x in &r.rows {
        let c = cells(x).map(|c| c.replace('|', "\\|"));
        let _ = writeln!(s, "| {} |", c.join(" | "));
    }
    s.push_str("\n## Decision matrix\n\n| model | smallest passing | fastest passing | best quality per GB | passing |\n| --- | --- | --- | --- | --- |\n");
    for d in &r.decisions {
        let f = |o: &Option<String>| o.clone().unwrap_or_else(|| "none".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            d.model,
            f(&d.smallest_passing),
            f(&d.fastest_passing),
            f(&d.best_quality_per_gb),
            if d.passing.is_empty() {
                "none".into()
            } else {
                d.passing.join(", ")
            }
        );
    }
    s.push_str(
        "\nQuality per GB = −log10(mean KLD) / size in GB, among variants that pass the gates.\n",
    );
    let failed: Vec<&Row> = r.failed().collect();
    if !failed.is_empty() {
        s.push_str("\n## Failures\n\n");
        for x in failed {
            let _ = writeln!(
                s,
                "- `{}`: {}",
                x.job_id,
                x.error
                    .as_deref()
                    .unwrap_or("unknown error")
                    .replace('\n', " ")
            );
        }
    }
    if !plots.is_empty() {
        s.push_str("\n## Plots\n\n");
        for p in plots
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        {
            if let Some(n) = p.file_name() {
                let n = n.to_string_lossy();
                let _ = writeln!(s, "![{n}]({n})\n");
            }
        }
    }
    s
}
