//! `ggufq batch` and `ggufq report` end to end, with a fake child executable
//! (`tests/batch_fake/fake-ggufq`) standing in for `convert`, `ppl` and `bench`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[path = "common/cli.rs"]
mod cli;
use cli::run_code;

fn fake() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/batch_fake/fake-ggufq")
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// Two source "models" (random bytes; the fake child never parses them) and a recipe file.
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("models");
        std::fs::create_dir(&m).unwrap();
        for (name, n) in [("alpha.gguf", 10_000usize), ("beta.gguf", 20_000)] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            std::fs::write(m.join(name), bytes).unwrap();
        }
        std::fs::write(dir.path().join("hybrid.yaml"), "base: Q2_K\n").unwrap();
        std::fs::write(dir.path().join("wiki.txt"), "some text\n").unwrap();
        Env { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn pipeline(&self, text: &str) -> PathBuf {
        let p = self.p("pipeline.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn log(&self) -> PathBuf {
        self.p("calls.log")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ggufq"));
        c.args(args)
            .arg("--exe")
            .arg(fake())
            .current_dir(self.dir.path())
            .env("FAKE_LOG", self.log())
            .env("FAKE_VERSION", env!("CARGO_PKG_VERSION"))
            .env("FAKE_BENCH_JSON", "1")
            .env_remove("GGUFQ_BATCH_ASSUME_NO_GPU")
            .env_remove("FAKE_FAIL")
            .env_remove("FAKE_SLOW");
        c
    }
    fn report_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ggufq"));
        c.args(args).current_dir(self.dir.path());
        c
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn clear_log(&self) {
        let _ = std::fs::remove_file(self.log());
    }
}

const PIPELINE: &str = "\
output: out
models:
  - models/*.gguf
recipes:
  - Q8_0
  - preset: Q4_K_M
  - { recipe: hybrid.yaml, name: hybrid }
validation:
  text: wiki.txt
  ctx: 64
  chunks: 2
  bench: always
gates:
  max_kld: 0.25
  max_ppl_increase: 60%
";

fn json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn row<'a>(report: &'a Value, job: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job_id"] == job)
        .unwrap_or_else(|| panic!("no row {job}"))
}

#[test]
fn batch_converts_validates_gates_and_reports() {
    let env = Env::new();
    env.pipeline(PIPELINE);
    let out = env
        .cmd(&["batch", "pipeline.yaml", "-j", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // hybrid fails the KLD gate → exit code 1.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for j in [
        "alpha__source",
        "alpha__Q8_0",
        "alpha__Q4_K_M",
        "alpha__hybrid",
        "beta__source",
        "beta__hybrid",
    ] {
        let r = json(&env.p(&format!("out/results/{j}.json")));
        assert_eq!(r["status"], "ok", "{j}: {r}");
        assert_eq!(r["bench_status"], "ok", "{r}");
        assert_eq!(r["tps_from"], "bench", "{r}");
    }
    assert!(env.p("out/alpha__Q8_0.gguf").is_file());
    assert!(env.p("out/alpha__Q8_0.gguf.manifest.json").is_file());
    let rep = json(&env.p("out/report/results.json"));
    assert_eq!(rep["rows"].as_array().unwrap().len(), 8);
    let q8 = row(&rep, "alpha__Q8_0");
    assert_eq!(q8["size_bytes"], 5500);
    // Speed from the bench's tg record (1e6 / size), prompt speed from its pp record.
    assert!(
        (q8["tps_gen"].as_f64().unwrap() - 1e6 / 5500.0).abs() < 1e-2,
        "{q8}"
    );
    assert!(
        (q8["tps_prompt"].as_f64().unwrap() - 1e7 / 5500.0).abs() < 1e-1,
        "{q8}"
    );
    assert_eq!(q8["bpw"], 8.0); // from the manifest's totals.bpw
    assert!(
        (q8["ppl_increase"].as_f64().unwrap() - 0.2025).abs() < 1e-6,
        "{q8}"
    );
    assert!((q8["kld"].as_f64().unwrap() - 0.10125).abs() < 1e-6);
    assert_eq!(q8["verdict"], "pass");
    assert_eq!(row(&rep, "alpha__hybrid")["verdict"], "fail");
    assert_eq!(row(&rep, "alpha__source")["verdict"], "-");
    let dec = rep["decisions"].as_array().unwrap();
    assert_eq!(dec.len(), 2);
    assert_eq!(dec[0]["model"], "alpha");
    assert_eq!(dec[0]["smallest_passing"], "Q4_K_M");
    assert_eq!(dec[0]["fastest_passing"], "Q4_K_M");
    assert_eq!(dec[0]["best_quality_per_gb"], "Q4_K_M");
    let csv = std::fs::read_to_string(env.p("out/report/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9);
    assert!(
        csv.lines()
            .any(|l| l.starts_with("beta__hybrid,beta,hybrid,variant,ok,5000,")),
        "{csv}"
    );
    let md = std::fs::read_to_string(env.p("out/report/summary.md")).unwrap();
    assert!(
        md.contains("## Decision matrix") && md.contains("| alpha | Q4_K_M | Q4_K_M | Q4_K_M |"),
        "{md}"
    );
    for f in ["size_vs_kld", "size_vs_tps", "ms_per_token"] {
        let png = std::fs::read(env.p(&format!("out/report/{f}.png"))).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
        assert!(
            std::fs::read_to_string(env.p(&format!("out/report/{f}.svg")))
                .unwrap()
                .contains("<svg")
        );
    }
    assert!(
        stdout.contains("alpha: smallest passing = Q4_K_M"),
        "{stdout}"
    );
    // Each child's stderr is kept per job and step.
    let log = std::fs::read_to_string(env.p("out/logs/alpha__Q8_0.ppl.log")).unwrap();
    assert!(log.contains("progress 50%"));
    // Exactly one convert per variant, one ppl and one bench per job.
    let calls = env.calls();
    assert_eq!(calls.iter().filter(|c| c.ends_with(" convert")).count(), 6);
    assert_eq!(calls.iter().filter(|c| c.ends_with(" ppl")).count(), 8);
    assert_eq!(calls.iter().filter(|c| c.ends_with(" bench")).count(), 8);
}

#[test]
fn one_failure_does_not_stop_the_others() {
    let env = Env::new();
    env.pipeline(PIPELINE);
    let _out = run_code(
        env.cmd(&["batch", "pipeline.yaml", "-q"])
            .env("FAKE_FAIL", "beta__Q8_0"),
        1,
    );
    let bad = json(&env.p("out/results/beta__Q8_0.json"));
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["failed_step"], "convert");
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains("exited with code 2") && err.contains("simulated failure for beta__Q8_0"),
        "{err}"
    );
    assert_eq!(
        json(&env.p("out/results/beta__Q4_K_M.json"))["status"],
        "ok"
    );
    let md = std::fs::read_to_string(env.p("out/report/summary.md")).unwrap();
    assert!(
        md.contains("## Failures")
            && md.contains("`beta__Q8_0`: convert: `ggufq convert` exited with code 2"),
        "{md}"
    );
    // A rerun redoes only the failed job.
    env.clear_log();
    let _out = run_code(&mut env.cmd(&["batch", "pipeline.yaml", "-q"]), 1); // hybrid still fails its gate
    let jobs: std::collections::BTreeSet<String> = env
        .calls()
        .iter()
        .map(|c| c.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(jobs.into_iter().collect::<Vec<_>>(), ["beta__Q8_0"]);
}

#[cfg(unix)]
#[test]
fn killed_batch_resumes_only_unfinished_work() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    std::fs::remove_file(env.p("models/beta.gguf")).unwrap();
    env.pipeline(&PIPELINE.replace(
        "  - { recipe: hybrid.yaml, name: hybrid }\n",
        "  - Q2_K\n  - { recipe: hybrid.yaml, name: hybrid }\n",
    ));
    // One job at a time, in pipeline order: source, Q8_0, Q4_K_M (stalls), Q2_K, hybrid.
    let mut child = env
        .cmd(&["batch", "pipeline.yaml", "-j", "1", "-q"])
        .env("FAKE_SLOW", "alpha__Q4_K_M")
        .process_group(0)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !env.calls().iter().any(|c| c == "alpha__Q4_K_M convert") {
        assert!(
            start.elapsed().as_secs() < 60,
            "the stalled job never started: {:?}",
            env.calls()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Kill the batch and its children, as Ctrl-C or a scheduler would.
    let pgid = child.id();
    let st = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = child.wait();
    assert!(env.p("out/results/alpha__Q8_0.json").is_file());
    assert!(!env.p("out/results/alpha__Q4_K_M.json").exists());
    assert!(!env.p("out/alpha__Q4_K_M.gguf").exists());
    assert!(!env.p("out/results/alpha__Q2_K.json").exists());
    // A temp file that a kill in the middle of a result write would leave (old by now).
    let stale = env.p("out/results/.tmp-killed1");
    std::fs::write(&stale, b"{\"partial").unwrap();
    let st = Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(st.success());

    env.clear_log();
    let _out = run_code(
        &mut env.cmd(&["batch", "pipeline.yaml", "-j", "1", "-q"]),
        1,
    );
    // The next run leaves no temp files behind, the planted stale one included.
    for d in ["out", "out/results", "out/report"] {
        for e in std::fs::read_dir(env.p(d)).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            assert!(!n.contains(".tmp-"), "{d}/{n} left behind");
        }
    }
    let calls = env.calls();
    let redone: std::collections::BTreeSet<&str> =
        calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
    assert_eq!(
        redone.into_iter().collect::<Vec<_>>(),
        ["alpha__Q2_K", "alpha__Q4_K_M", "alpha__hybrid"],
        "{calls:?}"
    );
    for j in [
        "alpha__source",
        "alpha__Q8_0",
        "alpha__Q4_K_M",
        "alpha__Q2_K",
        "alpha__hybrid",
    ] {
        assert_eq!(
            json(&env.p(&format!("out/results/{j}.json")))["status"],
            "ok",
            "{j}"
        );
    }

    // Nothing left to do.
    env.clear_log();
    env.cmd(&["batch", "pipeline.yaml", "-q"]).output().unwrap();
    assert!(env.calls().is_empty(), "{:?}", env.calls());

    // A lost result with an intact output: validation reruns, conversion is reused.
    std::fs::remove_file(env.p("out/results/alpha__Q8_0.json")).unwrap();
    env.cmd(&["batch", "pipeline.yaml", "-q"]).output().unwrap();
    assert_eq!(env.calls(), ["alpha__Q8_0 ppl", "alpha__Q8_0 bench"]);
    assert_eq!(
        json(&env.p("out/results/alpha__Q8_0.json"))["convert_reused"],
        true
    );

    // A changed recipe file redoes that variant only.
    env.clear_log();
    std::fs::write(env.p("hybrid.yaml"), "base: Q3_K\n").unwrap();
    env.cmd(&["batch", "pipeline.yaml", "-q"]).output().unwrap();
    assert_eq!(
        env.calls(),
        [
            "alpha__hybrid convert",
            "alpha__hybrid ppl",
            "alpha__hybrid bench"
        ]
    );

    // An output replaced behind the batch's back (manifest from another version) is redone.
    env.clear_log();
    let m = env.p("out/alpha__Q2_K.gguf.manifest.json");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace(env!("CARGO_PKG_VERSION"), "0.0.0-other");
    std::fs::write(&m, text).unwrap();
    env.cmd(&["batch", "pipeline.yaml", "-q"]).output().unwrap();
    assert_eq!(
        env.calls(),
        [
            "alpha__Q2_K convert",
            "alpha__Q2_K ppl",
            "alpha__Q2_K bench"
        ]
    );
}

/// Every file under `root`, relative.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[cfg(unix)]
#[test]
fn outputs_stay_inside_the_output_folder() {
    let env = Env::new();
    let hostile = "\
output: ../escaped
models:
  - { path: models/alpha.gguf, name: ../../../tmp/evil }
recipes:
  - { preset: Q8_0, name: /etc/passwd }
  - { preset: Q4_K_M, name: ../.. }
validation: { text: wiki.txt }
";
    env.pipeline(hostile);
    // A pipeline may not point its output folder outside its own folder.
    let out = run_code(&mut env.cmd(&["batch", "pipeline.yaml"]), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaves the pipeline's folder"));

    // With an explicit -o, every name is reduced to one safe component.
    let before = walk(env.dir.path());
    let _out = run_code(
        &mut env.cmd(&["batch", "pipeline.yaml", "-o", "safe", "-q"]),
        0,
    );
    let after = walk(env.dir.path());
    let new: Vec<&PathBuf> = after
        .iter()
        .filter(|p| !before.contains(p) && !p.starts_with("calls.log"))
        .collect();
    assert!(!new.is_empty());
    for p in &new {
        assert!(
            p.starts_with("safe"),
            "{} written outside the output folder",
            p.display()
        );
    }
    assert!(env.p("safe/tmp_evil__etc_passwd.gguf").is_file());
    assert!(env.p("safe/tmp_evil__unnamed.gguf").is_file());

    // An output path that is a symlink to elsewhere is never written through.
    let outside = env.p("outside.bin");
    std::fs::write(&outside, b"precious").unwrap();
    std::fs::remove_file(env.p("safe/tmp_evil__etc_passwd.gguf")).unwrap();
    std::os::unix::fs::symlink(&outside, env.p("safe/tmp_evil__etc_passwd.gguf")).unwrap();
    std::fs::remove_file(env.p("safe/results/tmp_evil__etc_passwd.json")).unwrap();
    let _out = run_code(
        &mut env.cmd(&["batch", "pipeline.yaml", "-o", "safe", "-q"]),
        1,
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    let r = json(&env.p("safe/results/tmp_evil__etc_passwd.json"));
    assert_eq!(r["status"], "failed");
    assert!(r["error"].as_str().unwrap().contains("symlink"), "{r}");

    // A results folder that is a symlink out of the output folder stops the batch.
    let elsewhere = env.p("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::create_dir(env.p("safe2")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.p("safe2/results")).unwrap();
    let out = env
        .cmd(&["batch", "pipeline.yaml", "-o", "safe2", "-q"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the output folder"));
    assert!(walk(&elsewhere).is_empty());
}

#[test]
fn shards_split_the_jobs_and_report_merges_them() {
    let env = Env::new();
    env.pipeline(PIPELINE);
    let mut ids = Vec::new();
    for i in 0..3 {
        let o = format!("share{i}");
        let out = env
            .cmd(&[
                "batch",
                "pipeline.yaml",
                "--shard",
                &format!("{i}/3"),
                "-o",
                &o,
                "-q",
            ])
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut mine: Vec<String> = walk(&env.p(&format!("{o}/results")))
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(!mine.is_empty(), "share {i} got no jobs");
        ids.append(&mut mine);
    }
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "a job ran in two shares");
    assert_eq!(n, 8, "{ids:?}");
    // --dry-run lists the same split.
    let dry = env
        .cmd(&["batch", "pipeline.yaml", "--shard", "1/3", "--dry-run"])
        .output()
        .unwrap();
    let dry = String::from_utf8_lossy(&dry.stdout);
    let all = env
        .cmd(&["batch", "pipeline.yaml", "--dry-run"])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(
        all.contains("--recipe Q8_0") && all.contains("hybrid.yaml"),
        "{all}"
    );
    for id in walk(&env.p("share1/results")) {
        assert!(
            dry.contains(&*id.file_stem().unwrap().to_string_lossy()),
            "{dry}"
        );
    }

    let mut args: Vec<String> = vec!["report".into()];
    for i in 0..3 {
        for f in walk(&env.p(&format!("share{i}/results"))) {
            args.push(format!("share{i}/results/{}", f.display()));
        }
    }
    args.extend(["-o".into(), "merged".into()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let _out = run_code(&mut env.report_cmd(&args_ref), 1); // hybrid fails its gate
    let rep = json(&env.p("merged/results.json"));
    assert_eq!(rep["rows"].as_array().unwrap().len(), 8);
    // The perplexity increase needs the source's baseline, wherever it ran.
    for r in rep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "variant")
    {
        assert!(r["ppl_increase"].is_number(), "{r}");
    }
    // Gates can be overridden when merging; folders are accepted.
    let _out = run_code(
        &mut env.report_cmd(&[
            "report",
            "share0/results",
            "share1/results",
            "share2/results",
            "--max-kld",
            "1",
            "-o",
            "m2",
            "-q",
        ]),
        0,
    );
    // A report's results.json merges again.
    let _out = run_code(
        &mut env.report_cmd(&["report", "merged/results.json", "-o", "m3", "-q"]),
        1,
    );
    assert_eq!(json(&env.p("m3/results.json"))["rows"], rep["rows"]);
}

#[test]
fn pipeline_errors_name_file_line_and_column() {
    let env = Env::new();
    env.pipeline("models: [models/alpha.gguf]\nrecipes: [Q8_0]\ngates:\n  max_kdl: 0.1\n");
    let out = run_code(&mut env.cmd(&["batch", "pipeline.yaml"]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.yaml:4:3: ") && err.contains("max_kdl"),
        "{err}"
    );
    env.pipeline("models: [models/nope*.gguf]\nrecipes: [Q8_0]\n");
    let out = run_code(&mut env.cmd(&["batch", "pipeline.yaml"]), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("matched no files"));
    let _out = run_code(
        &mut env.cmd(&["batch", "pipeline.yaml", "--shard", "3/3"]),
        2,
    );
    assert!(env.calls().is_empty());
}

#[test]
fn concurrency_is_bounded_by_jobs_and_memory() {
    let env = Env::new();
    std::fs::remove_file(env.p("models/beta.gguf")).unwrap();
    let running = env.p("running");
    let max_running = |env: &Env| -> usize {
        std::fs::read_to_string(env.p("concurrency.log"))
            .unwrap()
            .lines()
            .map(|l| l.trim().parse::<usize>().unwrap())
            .max()
            .unwrap()
    };
    // alpha.gguf is 10 000 bytes, so each job is estimated at 4 x 10 000 = 40 000 bytes.
    let base = "models: [models/alpha.gguf]\nrecipes: [Q8_0, Q4_K_M, Q2_K, {type: Q4_0}]\nvalidation: {bench: never}\n";
    for (parallel, jobs, expect) in [("{memory: 60000B}", "4", 1), ("{memory: 1GiB}", "2", 2)] {
        std::fs::create_dir_all(&running).unwrap();
        let _ = std::fs::remove_file(env.p("concurrency.log"));
        let _ = std::fs::remove_dir_all(env.p("out"));
        env.pipeline(&format!("{base}output: out\nparallel: {parallel}\n"));
        let _out = run_code(
            env.cmd(&["batch", "pipeline.yaml", "-j", jobs, "-q"])
                .env("FAKE_RUNNING", &running),
            0,
        );
        assert_eq!(max_running(&env), expect, "parallel {parallel}, -j {jobs}");
    }
}

#[test]
fn bench_auto_skips_without_gpu_and_always_fails_without_one() {
    let env = Env::new();
    std::fs::remove_file(env.p("models/beta.gguf")).unwrap();
    let p = "models: [models/alpha.gguf]\nrecipes: [Q8_0]\noutput: out\nvalidation: {text: wiki.txt, bench: auto}\n";
    env.pipeline(p);
    let _out = run_code(
        env.cmd(&["batch", "pipeline.yaml", "-q"])
            .env("GGUFQ_BATCH_ASSUME_NO_GPU", "1"),
        0,
    );
    let r = json(&env.p("out/results/alpha__Q8_0.json"));
    assert_eq!(
        r["bench_status"],
        "skipped: no GPU adapter (GGUFQ_BATCH_ASSUME_NO_GPU is set)"
    );
    // Speed then comes from a plain ppl run (the source's), and says so; a KL run evaluates
    // two models, so a variant gets no speed from it.
    assert!(r["tps_gen"].is_null(), "{r}");
    let s = json(&env.p("out/results/alpha__source.json"));
    assert_eq!(s["tps_from"], "ppl");
    assert_eq!(s["tps_gen"], 100.0);
    assert!(
        !env.calls().iter().any(|c| c.ends_with(" bench")),
        "{:?}",
        env.calls()
    );

    // `bench: always` runs it, and a bench that finds no adapter fails the job.
    env.pipeline(&p.replace("bench: auto", "bench: always"));
    let _out = run_code(
        env.cmd(&["batch", "pipeline.yaml", "-q", "-o", "out2"])
            .env_remove("FAKE_BENCH_JSON"),
        1,
    );
    let r = json(&env.p("out2/results/alpha__Q8_0.json"));
    assert_eq!(r["status"], "failed");
    assert_eq!(r["failed_step"], "bench");
    // Without a GPU adapter; a build without the `gpu` feature says that instead.
    let err = r["error"].as_str().unwrap();
    let why = if cfg!(feature = "gpu") {
        "no GPU adapter"
    } else {
        "built without the `gpu` feature"
    };
    assert!(err.contains(why), "{r}");
}
