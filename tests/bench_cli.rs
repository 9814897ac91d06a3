//! `ggufq bench` end to end on a tiny synthetic model (lavapipe in CI). Without an adapter
//! these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use assert_cmd::Command;

fn gpu_available() -> bool {
    match ggufq::gpu::GpuContext::new(&Default::default()) {
        Ok(_) => true,
        Err(e) if std::env::var("GGUFQ_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("skipping GPU test: {e}");
            false
        }
        Err(e) => panic!("no GPU adapter ({e}); set GGUFQ_SKIP_GPU=1 to skip GPU tests"),
    }
}

fn bench(args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("ggufq")
        .unwrap()
        .arg("bench")
        .args(args)
        .assert()
}

#[test]
fn bench_json_has_llama_bench_fields_and_stats() {
    if !gpu_available() {
        return;
    }
    let out = bench(&[
        "--synth",
        "tiny:q4_0",
        "-p",
        "20",
        "-n",
        "6",
        "-r",
        "3",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["n_prompt"], 20);
    assert_eq!(rows[0]["n_gen"], 0);
    assert_eq!(rows[1]["n_gen"], 6);
    for r in rows {
        let ts: Vec<f64> = r["samples_ts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(ts.len(), 3);
        let mean = ts.iter().sum::<f64>() / 3.0;
        assert!((r["avg_ts"].as_f64().unwrap() - mean).abs() < 1e-6 * mean);
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
        assert!(r["mem_weights"].as_u64().unwrap() > 0);
        assert_eq!(r["model_type"], "llama 1M Q4_0 (+Q6_K)");
    }
    assert!(rows[1]["bandwidth_gbps"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_gate_and_soak_and_parallel() {
    if !gpu_available() {
        return;
    }
    // An unreachable --min-tps fails the gate with exit code 1, report still printed.
    let out = bench(&[
        "--synth",
        "tiny:q8_0",
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "--min-tps",
        "1e12",
        "-q",
    ])
    .code(1);
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("| tg4 |"));
    // Soak: repeated runs until the duration passes, with samples and a drift figure.
    let out = bench(&[
        "--synth",
        "tiny:q4_k",
        "-p",
        "0",
        "-n",
        "4",
        "--duration",
        "2s",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(v[0]["soak"].as_array().unwrap().len() >= 2);
    assert!(v[0]["drift"].is_number());
    // Batched decode: 3 sequences, aggregate tokens counted per step.
    let out = bench(&[
        "--synth",
        "tiny:q4_k",
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "--parallel",
        "3",
        "-o",
        "csv",
        "-q",
    ])
    .success();
    let csv = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let row: Vec<String> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split("\",\"")
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    let col = head.iter().position(|h| *h == "n_parallel").unwrap();
    assert_eq!(row[col], "3");
}

#[test]
fn bench_rejects_bad_arguments() {
    bench(&["--synth", "tiny:q4_0", "-o", "xml"])
        .failure()
        .stderr(predicates::str::contains("unknown output format"));
    bench(&["--synth", "huge:q4_0"])
        .failure()
        .stderr(predicates::str::contains("unknown shape"));
    bench(&["--synth", "tiny:q4_0", "--duration", "soon"])
        .failure()
        .stderr(predicates::str::contains("bad duration"));
    bench(&[])
        .failure()
        .stderr(predicates::str::contains("no model given"));
    bench(&["/nonexistent/model.gguf", "-q"]).failure();
}
