//! A full disk during a batch (issue #7): the job that cannot write its output fails with a
//! clear error, leaves no partial or temporary file behind, and the other jobs are unaffected.
//!
//! The full disk is simulated with RLIMIT_FSIZE (`ulimit -f`) and SIGXFSZ ignored, so a write
//! past the limit fails with EFBIG ("File too large") exactly where ENOSPC would; no mount or
//! root is needed. The real ggufq does the work (tiny synthetic models, no GPU).

use std::path::{Path, PathBuf};
use std::process::Command;

use ggufq::quant::GgmlType;
use serde_json::Value;

#[path = "common/cli.rs"]
mod cli;
use cli::run_code;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ggufq")
}

/// Every file under `root`, relative.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const PIPELINE: &str = "\
output: out
models:
  - tiny.gguf
recipes:
  - Q8_0
  - Q4_K_M
validation:
  text: wiki.txt
  ctx: 32
  chunks: 1
  bench: never
";

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ggufq::synth::write_tiny_model(&dir.path().join("tiny.gguf"), GgmlType::F32, 3, None).unwrap();
    std::fs::write(
        dir.path().join("wiki.txt"),
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), PIPELINE).unwrap();
    dir
}

/// No temporary or partial file anywhere in the output folder.
fn assert_no_leftovers(files: &[PathBuf]) {
    for f in files {
        let s = f.display().to_string();
        assert!(
            !s.ends_with(".tmp") && !s.contains(".tmp") && !s.contains("partial"),
            "left behind: {s} (all: {files:?})"
        );
    }
}

#[test]
fn full_disk_fails_only_that_job_and_leaves_nothing_behind() {
    let dir = setup();
    // A wrapper in place of the ggufq child: the Q8_0 job runs with a 64 KiB file-size limit
    // (its output is far larger), every other job runs normally.
    let wrapper = dir.path().join("full-disk-ggufq");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$GGUFQ_BATCH_JOB\" in\n  *Q8_0*) trap '' XFSZ; ulimit -f 128 ;;\nesac\nexec '{}' \"$@\"\n",
            bin()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = Command::new(bin())
        .args(["batch", "pipeline.yaml", "-j", "1", "-q", "--exe"])
        .arg(&wrapper)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A failed job makes the batch exit 1 (a check failed), not crash.
    assert_eq!(out.status.code(), Some(1), "{stderr}");

    let results = dir.path().join("out/results");
    let failed = json(&results.join("tiny__Q8_0.json"));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failed_step"], "convert", "{failed}");
    let err = failed["error"].as_str().unwrap();
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains("convert"), "{err}");
    assert!(
        err.contains("tiny__Q8_0.gguf"),
        "error does not name the output: {err}"
    );

    let ok = json(&results.join("tiny__Q4_K_M.json"));
    assert_eq!(ok["status"], "ok", "{ok}");
    assert!(ok["kld"].as_f64().is_some(), "{ok}");
    let base = json(&results.join("tiny__source.json"));
    assert_eq!(base["status"], "ok", "{base}");

    let files = walk(&dir.path().join("out"));
    assert!(
        !dir.path().join("out/tiny__Q8_0.gguf").exists(),
        "{files:?}"
    );
    assert!(
        !dir.path()
            .join("out/tiny__Q8_0.gguf.manifest.json")
            .exists(),
        "{files:?}"
    );
    assert!(dir.path().join("out/tiny__Q4_K_M.gguf").is_file());
    assert_no_leftovers(&files);

    // With space again, a rerun redoes only the failed job and leaves nothing stale.
    let _out = run_code(
        Command::new(bin())
            .args(["batch", "pipeline.yaml", "-j", "1", "-q"])
            .current_dir(dir.path()),
        0,
    );
    assert_eq!(json(&results.join("tiny__Q8_0.json"))["status"], "ok");
    assert_eq!(json(&results.join("tiny__Q4_K_M.json"))["status"], "ok");
    let files = walk(&dir.path().join("out"));
    assert!(dir.path().join("out/tiny__Q8_0.gguf").is_file());
    assert_no_leftovers(&files);
}

#[test]
fn full_disk_for_the_whole_batch_is_a_clear_error() {
    use std::os::unix::process::CommandExt;
    let dir = setup();
    let mut cmd = Command::new(bin());
    cmd.args(["batch", "pipeline.yaml", "-j", "1", "-q"])
        .current_dir(dir.path());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The per-job results fit; the report's plots do not: a clear error naming the file.
    // Writing the report fails for lack of space: exit 3 (environment failure, docs/cli.md).
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(stderr.contains("out/report/"), "{stderr}");
    let results = dir.path().join("out/results");
    for v in ["Q8_0", "Q4_K_M"] {
        let r = json(&results.join(format!("tiny__{v}.json")));
        assert_eq!(r["status"], "failed", "{r}");
        let err = r["error"].as_str().unwrap();
        assert!(err.contains("File too large"), "{err}");
        assert!(!dir.path().join(format!("out/tiny__{v}.gguf")).exists());
    }
    let files = walk(&dir.path().join("out"));
    assert_no_leftovers(&files);
    // A plot that did not fit is absent, not a truncated image under the real name.
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "png"))
    {
        let b = std::fs::read(dir.path().join("out").join(f)).unwrap();
        assert!(
            b.ends_with(b"IEND\xaeB`\x82"),
            "{} is truncated",
            f.display()
        );
    }
}
