//! Report formats: markdown (default), json, csv and sql. json/csv/sql carry llama-bench's
//! fields in its order (so its comparison scripts read them; sql writes into the same
//! `llama_bench` table) followed by ggufq's own columns.

use super::runner::BenchResult;

/// Context of one benchmarked model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelRow {
    /// Model path or synthetic name.
    pub model_filename: String,
    /// Short description ("llama 7B Q4_K").
    pub model_type: String,
    /// Bytes of weights.
    pub model_size: u64,
    /// Parameter count.
    pub model_n_params: u64,
    /// Backend ("wgpu/Vulkan").
    pub backends: String,
    /// KV cache storage type, llama-bench's `type_k` / `type_v` ("f16" on the GPU engine;
    /// "f32" on the CPU backend, whose f32 cache holds f16-rounded values).
    pub kv_type: String,
    /// Adapter name.
    pub gpu_info: String,
    /// CPU model name.
    pub cpu_info: String,
    /// Batch size.
    pub n_batch: usize,
    /// CPU threads (CPU backend), llama-bench's `n_threads`.
    pub n_threads: Option<usize>,
    /// GPU memory: weights, kv cache, scratch (bytes).
    pub mem_weights: u64,
    /// KV cache bytes.
    pub mem_kv: u64,
    /// Scratch bytes.
    pub mem_scratch: u64,
    /// Device peak bandwidth used for the % column, GB/s.
    pub peak_gbps: Option<f64>,
    /// Perplexity, if --ppl ran.
    pub ppl: Option<f64>,
    /// Its standard error.
    pub ppl_err: Option<f64>,
    /// Mean KL-divergence against --kl-base, if given.
    pub kld: Option<f64>,
}

/// ggufq version string used as llama-bench's build_commit.
pub fn build_commit() -> String {
    format!("ggufq-{}", env!("CARGO_PKG_VERSION"))
}

const LB_FIELDS: &[&str] = &[
    "build_commit",
    "build_number",
    "cpu_info",
    "gpu_info",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "cpu_mask",
    "cpu_strict",
    "poll",
    "type_k",
    "type_v",
    "n_gpu_layers",
    "n_cpu_moe",
    "split_mode",
    "main_gpu",
    "no_kv_offload",
    "flash_attn",
    "devices",
    "tensor_split",
    "tensor_buft_overrides",
    "load_mode",
    "lazy_mode",
    "embeddings",
    "no_op_offload",
    "no_host",
    "repack",
    "fit_target",
    "fit_min_ctx",
    "n_prompt",
    "n_gen",
    "n_depth",
    "test_time",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
];
const EXTRA_FIELDS: &[&str] = &[
    "n_parallel",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "bandwidth_gbps",
    "peak_pct",
    "mem_weights",
    "mem_kv",
    "mem_scratch",
    "drift",
    "ppl",
    "ppl_err",
    "kld",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Int,
    Bool,
    Float,
}

fn kind(f: &str) -> Kind {
    match f {
        "build_number" | "n_batch" | "n_ubatch" | "n_threads" | "poll" | "model_size"
        | "model_n_params" | "n_gpu_layers" | "main_gpu" | "n_prompt" | "n_gen" | "n_depth"
        | "avg_ns" | "stddev_ns" | "no_op_offload" | "n_cpu_moe" | "fit_target" | "fit_min_ctx"
        | "flash_attn" | "n_parallel" | "mem_weights" | "mem_kv" | "mem_scratch" => Kind::Int,
        "no_kv_offload" | "cpu_strict" | "embeddings" | "no_host" | "repack" => Kind::Bool,
        "avg_ts" | "stddev_ts" | "p50_ms" | "p95_ms" | "p99_ms" | "bandwidth_gbps" | "peak_pct"
        | "drift" | "ppl" | "ppl_err" | "kld" => Kind::Float,
        _ => Kind::Str,
    }
}

/// "134.52 M" / "6.74 B", as llama-bench prints parameter counts.
fn params_label(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// Field values of one row, in LB_FIELDS + EXTRA_FIELDS order.
fn values(m: &ModelRow, r: &BenchResult, time: &str) -> Vec<String> {
    let pct = match (r.bandwidth_gbps, m.peak_gbps) {
        (Some(b), Some(p)) if p > 0.0 => Some(100.0 * b / p),
        _ => None,
    };
    vec![
        build_commit(),
        "0".into(),
        m.cpu_info.clone(),
        m.gpu_info.clone(),
        m.backends.clone(),
        m.model_filename.clone(),
        m.model_type.clone(),
        m.model_size.to_string(),
        m.model_n_params.to_string(),
        m.n_batch.to_string(),
        m.n_batch.to_string(),
        m.n_threads.unwrap_or(1).to_string(),
        "0x0".into(),
        "0".into(),
        "50".into(),
        m.kv_type.clone(),
        m.kv_type.clone(),
        "99".into(),
        "0".into(),
        "layer".into(),
        "0".into(),
        "0".into(),
        "0".into(),
        "auto".into(),
        "0.00".into(),
        "none".into(),
        "mmap".into(),
        "none".into(),
        "0".into(),
        "0".into(),
        "0".into(),
        "0".into(),
        "0".into(),
        "0".into(),
        r.n_prompt.to_string(),
        r.n_gen.to_string(),
        r.n_depth.to_string(),
        time.into(),
        r.avg_ns.to_string(),
        r.stddev_ns.to_string(),
        format!("{:.6}", r.avg_ts),
        format!("{:.6}", r.stddev_ts),
        r.parallel.to_string(),
        format!("{:.4}", r.latency_ms[0]),
        format!("{:.4}", r.latency_ms[1]),
        format!("{:.4}", r.latency_ms[2]),
        opt(r.bandwidth_gbps),
        opt(pct),
        m.mem_weights.to_string(),
        m.mem_kv.to_string(),
        m.mem_scratch.to_string(),
        opt(r.drift),
        opt(m.ppl),
        opt(m.ppl_err),
        opt(m.kld),
    ]
}

fn all_fields() -> Vec<&'static str> {
    LB_FIELDS.iter().chain(EXTRA_FIELDS).copied().collect()
}

fn csv_escape(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn json_value(f: &str, v: &str) -> serde_json::Value {
    match kind(f) {
        Kind::Str => serde_json::Value::String(v.to_string()),
        Kind::Bool => serde_json::Value::Bool(v != "0"),
        Kind::Int => v
            .parse::<i64>()
            .map(Into::into)
            .unwrap_or(serde_json::Value::Null),
        Kind::Float => v
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
    }
}

/// Render rows in `format` (md, json, csv, sql). `time` is the ISO test time.
pub fn render(
    format: &str,
    rows: &[(ModelRow, BenchResult)],
    time: &str,
) -> Result<String, String> {
    let fields = all_fields();
    let mut out = String::new();
    match format {
        "md" => {
            out.push_str("| model | size | params | backend | test | t/s | p50/p95/p99 ms | BW GB/s | % peak |\n");
            out.push_str("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
            for (m, r) in rows {
                let pct = match (r.bandwidth_gbps, m.peak_gbps) {
                    (Some(b), Some(p)) if p > 0.0 => format!("{:.1}", 100.0 * b / p),
                    _ => "-".into(),
                };
                let test = if r.parallel > 1 {
                    format!("{} ×{}", r.test, r.parallel)
                } else {
                    r.test.clone()
                };
                out.push_str(&format!(
                    "| {} | {:.2} GiB | {} | {} | {} | {:.2} ± {:.2} | {:.2}/{:.2}/{:.2} | {} | {} |\n",
                    m.model_type,
                    m.model_size as f64 / (1u64 << 30) as f64,
                    params_label(m.model_n_params),
                    m.backends,
                    test,
                    r.avg_ts,
                    r.stddev_ts,
                    r.latency_ms[0],
                    r.latency_ms[1],
                    r.latency_ms[2],
                    r.bandwidth_gbps.map(|b| format!("{b:.0}")).unwrap_or_else(|| "-".into()),
                    pct
                ));
                if let Some(d) = r.drift {
                    out.push_str(&format!(
                        "|  |  |  |  | soak {} runs, {:.0} s | drift {:+.2} % |  |  |  |\n",
                        r.soak.len(),
                        r.soak.last().map(|s| s.t_s).unwrap_or(0.0),
                        d * 100.0
                    ));
                }
            }
            let mut seen = Vec::new();
            for (m, _) in rows {
                if let (Some(p), false) = (m.ppl, seen.contains(&&m.model_filename)) {
                    seen.push(&m.model_filename);
                    out.push_str(&format!(
                        "\nPerplexity of {} on {}: {:.4} ± {:.4}{}\n",
                        m.model_type,
                        m.backends,
                        p,
                        m.ppl_err.unwrap_or(0.0),
                        m.kld
                            .map(|k| format!(", mean KLD {k:.6}"))
                            .unwrap_or_default()
                    ));
                }
            }
            if let Some((m, _)) = rows.first() {
                out.push_str(&format!(
                    "\nMemory (first model): weights {:.1} MiB, KV cache {:.1} MiB, scratch {:.1} MiB\n",
                    m.mem_weights as f64 / 1048576.0,
                    m.mem_kv as f64 / 1048576.0,
                    m.mem_scratch as f64 / 1048576.0
                ));
            }
        }
        "csv" => {
            out.push_str(&fields.join(","));
            out.push('\n');
            for (m, r) in rows {
                let v: Vec<String> = values(m, r, time).iter().map(|s| csv_escape(s)).collect();
                out.push_str(&v.join(","));
                out.push('\n');
            }
        }
        "json" => {
            let arr: Vec<serde_json::Value> = rows
                .iter()
                .map(|(m, r)| {
                    let mut o = serde_json::Map::new();
                    for (f, v) in fields.iter().zip(values(m, r, time)) {
                        o.insert(f.to_string(), json_value(f, &v));
                    }
                    o.insert("samples_ns".into(), serde_json::json!(r.samples_ns));
                    o.insert("samples_ts".into(), serde_json::json!(r.samples_ts));
                    if !r.soak.is_empty() {
                        o.insert("soak".into(), serde_json::json!(r.soak));
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            out = serde_json::to_string_pretty(&arr).map_err(|e| e.to_string())?;
            out.push('\n');
        }
        "sql" => {
            out.push_str("CREATE TABLE IF NOT EXISTS llama_bench (\n");
            for (i, f) in LB_FIELDS.iter().enumerate() {
                let t = match kind(f) {
                    Kind::Str => "TEXT",
                    Kind::Int | Kind::Bool => "INTEGER",
                    Kind::Float => "REAL",
                };
                out.push_str(&format!(
                    "  {f} {t}{}\n",
                    if i + 1 < LB_FIELDS.len() { "," } else { "" }
                ));
            }
            out.push_str(");\n\n");
            for (m, r) in rows {
                let v = values(m, r, time);
                let vals: Vec<String> = v[..LB_FIELDS.len()]
                    .iter()
                    .map(|s| format!("'{}'", s.replace('\'', "''")))
                    .collect();
                out.push_str(&format!(
                    "INSERT INTO llama_bench ({}) VALUES ({});\n",
                    LB_FIELDS.join(", "),
                    vals.join(", ")
                ));
            }
        }
        other => {
            return Err(format!(
                "unknown output format '{other}' (md, json, csv, sql)"
            ))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (ModelRow, BenchResult) {
        let m = ModelRow {
            model_filename: "m.gguf".into(),
            model_type: "llama 7B Q4_K".into(),
            model_size: 3 << 30,
            model_n_params: 6_738_000_000,
            backends: "wgpu/Vulkan".into(),
            kv_type: "f16".into(),
            gpu_info: "NVIDIA H100 80GB HBM3".into(),
            cpu_info: "x".into(),
            n_batch: 512,
            mem_weights: 1,
            mem_kv: 2,
            mem_scratch: 3,
            peak_gbps: Some(3350.0),
            ppl: None,
            n_threads: None,
            ppl_err: None,
            kld: None,
        };
        let r = BenchResult {
            test: "tg128".into(),
            n_prompt: 0,
            n_gen: 128,
            n_depth: 0,
            parallel: 1,
            samples_ns: vec![1_000_000_000, 1_000_000_000],
            samples_ts: vec![128.0, 128.0],
            avg_ts: 128.0,
            stddev_ts: 0.0,
            avg_ns: 1_000_000_000,
            stddev_ns: 0,
            latency_ms: [7.8, 8.0, 8.1],
            bandwidth_gbps: Some(1675.0),
            soak: vec![],
            drift: None,
        };
        (m, r)
    }

    #[test]
    fn sql_matches_llama_bench_schema() {
        let s = render("sql", &[sample()], "2026-01-01T00:00:00Z").unwrap();
        assert!(s.starts_with("CREATE TABLE IF NOT EXISTS llama_bench (\n  build_commit TEXT,"));
        assert!(s.contains("  avg_ts REAL,\n  stddev_ts REAL\n);"));
        let ins = s.lines().find(|l| l.starts_with("INSERT")).unwrap();
        assert_eq!(ins.matches("', '").count() + 1, LB_FIELDS.len());
        assert!(ins.contains("'128.000000'"));
    }

    #[test]
    fn csv_header_and_json_types() {
        let rows = [sample()];
        let c = render("csv", &rows, "t").unwrap();
        let mut lines = c.lines();
        let head = lines.next().unwrap();
        assert!(head.starts_with("build_commit,build_number,cpu_info"));
        assert_eq!(
            head.split(',').count(),
            lines.next().unwrap().split("\",\"").count()
        );
        let j: serde_json::Value =
            serde_json::from_str(&render("json", &rows, "t").unwrap()).unwrap();
        assert_eq!(j[0]["n_gen"], 128);
        assert_eq!(j[0]["avg_ts"], 128.0);
        assert_eq!(j[0]["embeddings"], false);
        assert_eq!(j[0]["type_k"], "f16");
        assert_eq!(j[0]["type_v"], "f16");
        assert!((j[0]["peak_pct"].as_f64().unwrap() - 50.0).abs() < 1e-6);
        assert!(render("xml", &rows, "t").is_err());
    }

    #[test]
    fn markdown_shows_percent_of_peak() {
        let md = render("md", &[sample()], "t").unwrap();
        assert!(md.contains("| tg128 | 128.00 ± 0.00 |"), "{md}");
        assert!(md.contains("| 1675 | 50.0 |"), "{md}");
    }

    /// The sample at depth 4096 (its name as the runner writes it) and its depth-0 twin.
    fn at_depth() -> Vec<(ModelRow, BenchResult)> {
        let (m, r0) = sample();
        let mut r = r0.clone();
        r.test = "tg128 @ d4096".into();
        r.n_depth = 4096;
        r.avg_ts = 100.0;
        r.bandwidth_gbps = Some(1340.0);
        r.latency_ms = [9.5, 10.0, 10.5];
        vec![(m.clone(), r0), (m, r)]
    }

    #[test]
    fn depth_rows_in_every_format() {
        let rows = at_depth();
        let md = render("md", &rows, "t").unwrap();
        assert!(
            md.contains("| tg128 | 128.00 ± 0.00 | 7.80/8.00/8.10 | 1675 | 50.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| tg128 @ d4096 | 100.00 ± 0.00 | 9.50/10.00/10.50 | 1340 | 40.0 |"),
            "{md}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render("json", &rows, "t").unwrap()).unwrap();
        assert_eq!(j[0]["n_depth"], 0);
        assert_eq!(j[1]["n_depth"], 4096);
        assert_eq!(j[1]["n_gen"], 128);
        assert_eq!(j[1]["p95_ms"], 10.0);
        let c = render("csv", &rows, "t").unwrap();
        let head: Vec<&str> = c.lines().next().unwrap().split(',').collect();
        let col = head.iter().position(|h| *h == "n_depth").unwrap();
        assert_eq!(head[col - 1], "n_gen", "llama-bench's order");
        let cell = |line: usize| {
            c.lines()
                .nth(line)
                .unwrap()
                .split("\",\"")
                .nth(col)
                .unwrap()
                .to_string()
        };
        assert_eq!((cell(1), cell(2)), ("0".to_string(), "4096".to_string()));
        let sql = render("sql", &rows, "t").unwrap();
        assert!(sql.contains("  n_depth INTEGER,\n"));
        let ins: Vec<&str> = sql.lines().filter(|l| l.starts_with("INSERT")).collect();
        let sql_col = LB_FIELDS.iter().position(|f| *f == "n_depth").unwrap();
        let vals = |l: &str| {
            l.split(" VALUES (")
                .nth(1)
                .unwrap()
                .split(", ")
                .nth(sql_col)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            (vals(ins[0]), vals(ins[1])),
            ("'0'".into(), "'4096'".into())
        );
    }

    #[test]
    fn parallel_depth_row_names_both() {
        let mut rows = at_depth();
        rows[1].1.parallel = 4;
        let md = render("md", &rows, "t").unwrap();
        assert!(md.contains("| tg128 @ d4096 ×4 |"), "{md}");
    }
}
