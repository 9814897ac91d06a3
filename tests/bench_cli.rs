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
        // The GPU engine's f16 KV cache (llama-bench's default -ctk/-ctv).
        assert_eq!(r["type_k"], "f16");
        assert_eq!(r["type_v"], "f16");
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
    // The GPU timing reports are refused on the CPU backend, not silently skipped.
    for flag in ["--profile", "--host-profile", "--step-costs"] {
        bench(&["--synth", "tiny:q4_0", "--backend", "cpu", flag])
            .failure()
            .stderr(predicates::str::contains(format!(
                "{flag} times the GPU engine"
            )));
    }
}

/// A tiny synthetic model file and a text made of its vocabulary's word pieces.
fn tiny_model_and_text(dir: &std::path::Path, mix: &str) -> (String, String) {
    let out = bench(&[
        "--synth",
        &format!("tiny:{mix}"),
        "--write-synth",
        dir.to_str().unwrap(),
        "-q",
    ])
    .success();
    let model = String::from_utf8_lossy(&out.get_output().stdout)
        .trim()
        .to_string();
    let mut s = 17u64;
    let words: Vec<String> = (0..300)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            format!("t{}", 259 + (s >> 33) % 253)
        })
        .collect();
    let text = dir.join("text.txt");
    std::fs::write(&text, words.join(" ")).unwrap();
    (model, text.to_str().unwrap().to_string())
}

fn json_rows(a: &assert_cmd::assert::Assert) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn bench_cpu_backend_runs_tests_parallel_and_soak() {
    // No GPU needed: the CPU backend on a synthetic model written to a temporary file.
    let out = bench(&[
        "--backend",
        "cpu",
        "--synth",
        "tiny:q4_k_m",
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "2",
        "-t",
        "1",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["test_time"].as_str().map(|s| s.len()), Some(20));
    assert_eq!(rows[0]["n_prompt"], 16);
    assert_eq!(rows[1]["n_gen"], 4);
    for r in &rows {
        assert_eq!(r["backends"], "CPU");
        assert_eq!(r["n_threads"], 1);
        assert_eq!(r["type_k"], "f32");
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
        // tiny: 512×256 embedding + 2 layers + output + norms.
        let params =
            512 * 256 * 2 + 2 * (256 * 256 * 2 + 2 * 256 * 128 + 3 * 256 * 512 + 2 * 256) + 256;
        assert_eq!(r["model_n_params"], params);
        assert_eq!(r["model_type"], "llama 1M Q4_K_M");
        assert!(r["mem_kv"].as_u64().unwrap() > 0);
    }
    assert!(rows[1]["bandwidth_gbps"].as_f64().unwrap() > 0.0);
    // Parallel decode and a soak with memory samples.
    let out = bench(&[
        "--backend",
        "cpu",
        "--synth",
        "tiny:q8_0",
        "-p",
        "0",
        "-n",
        "3",
        "--parallel",
        "2",
        "--duration",
        "1s",
        "-t",
        "1",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let rows = json_rows(&out);
    assert_eq!(rows[0]["n_parallel"], 2);
    let soak = rows[0]["soak"].as_array().unwrap();
    assert!(soak.len() >= 2);
    assert!(soak[0]["rss"].as_u64().unwrap() > 0);
    assert!(rows[0]["drift"].is_number());
    // --kernels is GPU only.
    bench(&["--backend", "cpu", "--kernels"])
        .failure()
        .stderr(predicates::str::contains("--backend gpu"));
}

/// `bench ARGS -o json -q` on the CPU backend (one thread): its rows.
fn cpu_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["--backend", "cpu", "-t", "1", "-o", "json", "-q"];
    a.extend_from_slice(args);
    json_rows(&bench(&a).success())
}

#[test]
fn bench_depth_crosses_every_test_on_cpu() {
    // llama-bench's order: every depth, each with the pp then the tg tests.
    let rows = cpu_json(&[
        "--synth",
        "tiny:q4_0",
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "0,16",
        "-r",
        "2",
    ]);
    let got: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_u64().unwrap();
            (f("n_prompt"), f("n_gen"), f("n_depth"))
        })
        .collect();
    assert_eq!(got, [(8, 0, 0), (0, 4, 0), (8, 0, 16), (0, 4, 16)]);
    for r in &rows {
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
    }
    assert!(rows[3]["bandwidth_gbps"].as_f64().unwrap() > 0.0);
    // The default context covers depth + test: 300 + 8 positions need 512 (the runs
    // above fit 256), so the KV cache doubles.
    let deep = cpu_json(&[
        "--synth",
        "tiny:q4_0",
        "-p",
        "8",
        "-n",
        "0",
        "-d",
        "300",
        "-r",
        "1",
    ]);
    assert_eq!(deep.len(), 1);
    assert_eq!(deep[0]["n_depth"], 300);
    assert_eq!(
        deep[0]["mem_kv"].as_u64().unwrap(),
        2 * rows[0]["mem_kv"].as_u64().unwrap()
    );
    // Parallel decode and llama-bench's tg loop at a depth: every sequence filled.
    let par = cpu_json(&[
        "--synth",
        "tiny:q8_0",
        "-p",
        "0",
        "-n",
        "3",
        "-d",
        "8",
        "--parallel",
        "2",
        "-r",
        "1",
    ]);
    assert_eq!(
        (par[0]["n_parallel"].as_u64(), par[0]["n_depth"].as_u64()),
        (Some(2), Some(8))
    );
    let sync = cpu_json(&[
        "--synth",
        "tiny:q8_0",
        "-p",
        "0",
        "-n",
        "3",
        "-d",
        "8",
        "--tg-sync",
        "-r",
        "1",
    ]);
    assert_eq!(sync[0]["n_depth"], 8);
    // Markdown names the test as llama-bench does.
    let out = bench(&[
        "--backend",
        "cpu",
        "-t",
        "1",
        "--synth",
        "tiny:q4_0",
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "16",
        "-r",
        "1",
        "-q",
    ])
    .success();
    let md = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        md.contains("| pp8 @ d16 |") && md.contains("| tg4 @ d16 |"),
        "{md}"
    );
}

#[test]
fn bench_depth_refuses_what_cannot_work() {
    let base = ["--synth", "tiny:q4_0", "--backend", "cpu", "-t", "1", "-q"];
    let run = |extra: &[&str]| bench(&[&base[..], extra].concat()).failure();
    run(&["-p", "8", "-n", "4", "-d", "16", "--ctx", "20"]).stderr(predicates::str::contains(
        "--ctx 20 is too small for pp8 @ d16: it needs depth 16 + 8 = 24 positions",
    ));
    run(&["-p", "0", "-n", "0", "-d", "16"]).stderr(predicates::str::contains(
        "--n-depth 16 needs a pp or tg test",
    ));
    // Refused before any adapter is asked for, so these need no GPU.
    bench(&["--synth", "tiny:q4_0", "-n", "4", "-d", "16", "--profile"])
        .failure()
        .stderr(predicates::str::contains(
            "--profile times decode steps from position 0",
        ));
    bench(&["--kernels", "-d", "64"])
        .failure()
        .stderr(predicates::str::contains("which --kernels does not run"));
    // An explicit --ctx that holds depth + test exactly is enough.
    let rows = cpu_json(&[
        "--synth",
        "tiny:q4_0",
        "-p",
        "8",
        "-n",
        "0",
        "-d",
        "16",
        "--ctx",
        "24",
        "-r",
        "1",
    ]);
    assert_eq!(rows[0]["n_depth"], 16);
}

#[test]
fn bench_depth_on_gpu_greedy_and_parallel() {
    if !gpu_available() {
        return;
    }
    let out = bench(&[
        "--synth",
        "tiny:q4_0",
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "0,16",
        "-r",
        "1",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let rows = json_rows(&out);
    let depths: Vec<u64> = rows
        .iter()
        .map(|r| r["n_depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [0, 0, 16, 16]);
    assert_eq!(rows[3]["n_gen"], 4);
    assert!(rows.iter().all(|r| r["avg_ts"].as_f64().unwrap() > 0.0));
    // Batched decode at a depth (llama-bench's loop for every sequence).
    let out = bench(&[
        "--synth",
        "tiny:q4_0",
        "-p",
        "0",
        "-n",
        "3",
        "-d",
        "16",
        "--parallel",
        "2",
        "-r",
        "1",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let rows = json_rows(&out);
    assert_eq!(
        (rows[0]["n_parallel"].as_u64(), rows[0]["n_depth"].as_u64()),
        (Some(2), Some(16))
    );
}

#[test]
fn bench_ppl_on_cpu_and_max_ppl_gate() {
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = tiny_model_and_text(dir.path(), "q8_0");
    let args = |max: &str| {
        vec![
            "--backend".to_string(),
            "cpu".into(),
            model.clone(),
            "--ppl".into(),
            text.clone(),
            "--ppl-ctx".into(),
            "32".into(),
            "-p".into(),
            "0".into(),
            "-n".into(),
            "0".into(),
            "-t".into(),
            "1".into(),
            "-o".into(),
            "json".into(),
            "-q".into(),
            "--max-ppl".into(),
            max.into(),
        ]
    };
    let a: Vec<String> = args("1e9");
    let out = bench(&a.iter().map(String::as_str).collect::<Vec<_>>()).success();
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["n_prompt"], 0);
    let ppl = rows[0]["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 1e4, "{ppl}");
    assert!(rows[0]["ppl_err"].as_f64().unwrap() > 0.0);
    // A bound below the result fails the gate (exit 1) and still prints the report.
    let a = args(&format!("{}", ppl * 0.5));
    let out = bench(&a.iter().map(String::as_str).collect::<Vec<_>>()).code(1);
    assert_eq!(json_rows(&out)[0]["ppl"].as_f64().unwrap(), ppl);
    // --max-ppl without --ppl, --ppl with --synth: refused.
    bench(&["--backend", "cpu", &model, "--max-ppl", "5"])
        .failure()
        .stderr(predicates::str::contains("--max-ppl needs --ppl"));
    bench(&["--synth", "tiny:q8_0", "--ppl", &text])
        .failure()
        .stderr(predicates::str::contains("tokenizer"));
}

#[test]
fn bench_ppl_on_gpu_matches_cpu_and_reports_kld() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = tiny_model_and_text(dir.path(), "q4_k_m");
    let (base, _) = tiny_model_and_text(&dir.path().join("f16"), "f16");
    let run = |backend: &str| {
        let out = bench(&[
            "--backend",
            backend,
            &model,
            "--ppl",
            &text,
            "--ppl-ctx",
            "32",
            "--kl-base",
            &base,
            "-p",
            "8",
            "-n",
            "0",
            "-r",
            "1",
            "-t",
            "1",
            "-o",
            "json",
            "-q",
        ])
        .success();
        json_rows(&out)
    };
    let g = run("gpu");
    let c = run("cpu");
    // The ppl row, then pp8 carrying the same ppl/kld columns.
    assert_eq!(g.len(), 2);
    assert_eq!(g[0]["n_prompt"], 0);
    assert_eq!(g[1]["n_prompt"], 8);
    assert_eq!(g[0]["ppl"], g[1]["ppl"]);
    let (pg, pc) = (g[0]["ppl"].as_f64().unwrap(), c[0]["ppl"].as_f64().unwrap());
    assert!((pg / pc - 1.0).abs() < 2e-3, "gpu {pg} cpu {pc}");
    let (kg, kc) = (g[0]["kld"].as_f64().unwrap(), c[0]["kld"].as_f64().unwrap());
    assert!(
        kg > 0.0 && (kg - kc).abs() < 0.05 * kc + 1e-4,
        "gpu {kg} cpu {kc}"
    );
}

#[test]
fn bench_counts_smollm2_params_like_llama_bench() {
    // SmolLM2 ties its output to the embedding: llama-bench reports 134.52 M parameters
    // (134,515,008 elements over the file's tensors) and a 92.10 MiB model size.
    let Some(smol) = ggufq::testutil::smollm2_path() else {
        eprintln!("SmolLM2 not fetched (scripts/fetch-model.sh): skipping");
        return;
    };
    let out = bench(&[
        "--backend",
        "cpu",
        smol.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "1",
        "-r",
        "1",
        "-o",
        "json",
        "-q",
    ])
    .success();
    let rows = json_rows(&out);
    assert_eq!(rows[0]["model_n_params"], 134_515_008u64);
    assert_eq!(rows[0]["model_size"], 96_576_768u64);
    assert_eq!(rows[0]["model_type"], "llama 135M Q4_1");
}

#[test]
fn bench_profile_prints_kernel_roles_before_the_results() {
    if !gpu_available() {
        return;
    }
    let out = bench(&[
        "--synth",
        "tiny:q4_k",
        "--profile",
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "-q",
    ])
    .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let prof = text.find("Decode profile of").expect("no profile");
    let table = text.find("| tg4 |").expect("no tg4 row");
    assert!(prof < table, "{text}");
    // One q4_k type everywhere (rounding on): fused QKV and gate/up, 2 layers; the split
    // decode attention (GGUFQ_ATTN_SPLIT, on by default) rounds the wo input in its combine,
    // which its own last workgroups run (GGUFQ_ATTN_LASTWG, on by default).
    let split = std::env::var("GGUFQ_ATTN_SPLIT").as_deref() != Ok("0");
    let lastwg = std::env::var("GGUFQ_ATTN_LASTWG").as_deref() != Ok("0");
    let rounding_rows: &[&str] = if split && lastwg {
        &["| actq | 2 |"]
    } else if split {
        &["| actq | 2 |", "| attn_out_q | 2 |"]
    } else {
        &["| actq | 4 |"]
    };
    for row in ["| qkv | 2 |", "| attention | 2 |", "| output | 1 |"]
        .iter()
        .chain(rounding_rows)
    {
        assert!(text.contains(row), "missing {row} in {text}");
    }
    assert_eq!(
        text.contains("| attn_out_q |"),
        split && !lastwg,
        "attn_out_q row in {text}"
    );
    // A context too short for the profile is an error, not a panic.
    bench(&[
        "--synth",
        "tiny:q4_k",
        "--profile",
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "--ctx",
        "16",
        "-q",
    ])
    .failure();
}
