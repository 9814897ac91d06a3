//! Faults during `ggufq convert` (issue 7): kill -9 at random points, a full disk (RLIMIT_FSIZE),
//! and determinism across thread counts and runs. Every test runs the real binary on a
//! synthetic llama GGUF large enough to be cut into several pipeline pieces.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ggufq::gguf::GgufFile;
use ggufq::quant::{self, GgmlType};
use ggufq::synth::{write_model, SynthOptions, SynthShape};
use sha2::{Digest, Sha256};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ggufq"))
}

/// An F32 llama whose FFN matrices (512 × 2304) span two 1M-element pipeline pieces, with
/// 512- and 2304-wide rows (K-quants apply).
fn model(dir: &Path, n_layer: usize) -> PathBuf {
    let path = dir.join("src.gguf");
    let shape = SynthShape {
        n_embd: 512,
        n_layer,
        n_ff: 2304,
        n_head: 8,
        n_head_kv: 4,
        n_vocab: 4096,
        n_ctx: 512,
    };
    write_model(
        &path,
        &SynthOptions {
            shape,
            ty: GgmlType::F32,
            seed: 7,
            tokenizer_from: None,
        },
    )
    .unwrap();
    path
}

fn sha(p: &Path) -> String {
    let d = Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn convert_cmd(src: &Path, out: &Path, recipe: &str, threads: usize) -> Command {
    let mut c = Command::new(bin());
    c.arg("convert")
        .arg(src)
        .args(["--recipe", recipe, "--no-progress", "--threads"])
        .arg(threads.to_string())
        .arg("-o")
        .arg(out)
        // The source-hash cache lives beside the test's source, not in the user's home.
        .env("GGUFQ_CACHE_DIR", src.with_extension("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Names in `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

/// A small xorshift generator: random kill points, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// kill -9 at random points of a run: the target path never holds a partial file (absent,
/// or the complete output when the kill came after the commit), and the next successful run
/// leaves no temporary file behind. Both kinds of temporary file are exercised: anonymous
/// (O_TMPFILE, nothing to clean) and named (`GGUFQ_NO_O_TMPFILE=1`, cleaned by the next run).
#[cfg(unix)]
#[test]
fn kill_9_leaves_no_partial_output_and_no_stale_temps() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path(), 2);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");
    let manifest = out_dir.join("m.gguf.manifest.json");

    // Reference output and how long a run takes here (to spread the kill points over it): the
    // shortest of three runs, since later runs are faster than the first (the source's hash
    // comes from the hash cache, the files are in the page cache).
    let mut full = std::time::Duration::MAX;
    let mut want = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let o = convert_cmd(&src, &out, "Q4_K_M", 2).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        full = full.min(t.elapsed());
        want = sha(&out);
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&manifest).unwrap();
    }

    let seed = std::env::var("GGUFQ_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill seed {seed} (GGUFQ_KILL_SEED={seed} to repeat), full run {full:?}");
    let mut rng = Rng(seed);
    let mut killed_mid_run = 0;
    for named in [false, true] {
        for run in 0..5 {
            let mut c = convert_cmd(&src, &out, "Q4_K_M", 2);
            if named {
                c.env("GGUFQ_NO_O_TMPFILE", "1");
            }
            let mut child = c.spawn().unwrap();
            let at = full.mul_f64(0.05 + 0.8 * rng.next_f64());
            std::thread::sleep(at);
            let finished = child.try_wait().unwrap().is_some();
            child.kill().unwrap_or(());
            let status = child.wait().unwrap();
            if !finished && !status.success() {
                killed_mid_run += 1;
            }
            if out.exists() {
                // Only after the commit (rename): then it is the whole output.
                assert_eq!(sha(&out), want, "partial output after kill at {at:?}");
                std::fs::remove_file(&out).unwrap();
                let _ = std::fs::remove_file(&manifest);
            } else {
                assert!(!manifest.exists(), "manifest without output");
            }
            let left = others(&out_dir, &[]);
            if !named {
                assert!(
                    left.is_empty(),
                    "anonymous temp files leave nothing even on kill -9 (run {run}): {left:?}"
                );
            } else {
                assert!(
                    left.iter()
                        .all(|n| n.starts_with(".m.gguf") && n.ends_with(".tmp")),
                    "{left:?}"
                );
            }
        }
    }
    assert!(
        killed_mid_run >= 5,
        "only {killed_mid_run} of 10 kills hit a running convert"
    );
    // The next successful run cleans the named temps of the killed runs.
    let o = convert_cmd(&src, &out, "Q4_K_M", 2)
        .env("GGUFQ_NO_O_TMPFILE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&out), want);
    assert_eq!(
        others(&out_dir, &["m.gguf", "m.gguf.manifest.json"]),
        Vec::<String>::new()
    );
}

/// A full disk, simulated with RLIMIT_FSIZE (`ulimit -f`) and SIGXFSZ ignored so that writes
/// fail with EFBIG: a clear error naming the output, exit code 3 (docs/cli.md), and nothing
/// left behind — no output, no temporary file, no manifest.
#[cfg(unix)]
#[test]
fn full_disk_is_a_clear_error_and_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path(), 1);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");
    for named in [false, true] {
        // 256 KiB: the header fits, the tensors do not.
        for limit in [256u64 << 10, 2 << 20] {
            let mut c = convert_cmd(&src, &out, "Q8_0", 2);
            if named {
                c.env("GGUFQ_NO_O_TMPFILE", "1");
            }
            // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(3), "exit code per docs/cli.md: {err}");
            assert!(
                err.contains(&out.display().to_string()),
                "error names the output: {err}"
            );
            assert!(err.contains("File too large"), "{err}");
            assert_eq!(others(&out_dir, &[]), Vec::<String>::new(), "{err}");
        }
    }
}

/// Same input and recipe → same bytes with 1, 2 and 8 threads and across runs; and the
/// pieces the pipeline cuts a large tensor into give exactly the whole-tensor encoding.
#[test]
fn output_is_identical_for_any_thread_count_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = model(dir.path(), 1);
    let recipes = ["Q4_K_M", "Q5_0", "../recipes/hybrid.yaml"];
    for recipe in recipes {
        let recipe = if recipe.ends_with(".yaml") {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("recipes/hybrid.yaml")
                .display()
                .to_string()
        } else {
            recipe.to_string()
        };
        let mut shas = Vec::new();
        for (i, threads) in [1usize, 2, 8, 2].into_iter().enumerate() {
            let out = dir.path().join(format!("o{i}.gguf"));
            let o = convert_cmd(&src, &out, &recipe, threads).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            shas.push(sha(&out));
            if i == 0 {
                check_against_whole_tensor_encoding(&src, &out);
            }
            std::fs::remove_file(&out).unwrap();
            std::fs::remove_file(dir.path().join(format!("o{i}.gguf.manifest.json"))).unwrap();
        }
        assert!(
            shas.iter().all(|s| *s == shas[0]),
            "{recipe}: sha256 differs between 1/2/8/2 threads: {shas:?}"
        );
    }
}

/// Every output tensor equals `quantize_tensor` of the whole source tensor.
fn check_against_whole_tensor_encoding(src: &Path, out: &Path) {
    let s = GgufFile::open(src).unwrap();
    let o = GgufFile::open(out).unwrap();
    let mut big = 0;
    for t in &o.tensors {
        let st = s.tensor(&t.name).unwrap();
        let n = st.n_elements() as usize;
        let x = quant::dequantize_tensor(GgmlType::F32, s.tensor_data(st).unwrap(), n).unwrap();
        let ty = t.ty.unwrap();
        let want = quant::quantize_tensor(ty, &x, st.row_len() as usize, None).unwrap();
        assert_eq!(o.tensor_data(t).unwrap(), &want[..], "{} as {ty}", t.name);
        if n > 1 << 20 {
            big += 1;
        }
    }
    assert!(big >= 1, "some tensor spans several pipeline pieces");
}
