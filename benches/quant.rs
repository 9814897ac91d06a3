//! Quantize / dequantize throughput per type, single- and multi-threaded.
//!
//! ```text
//! cargo bench --bench quant -- [--rows N] [--cols N] [--reps N] [--threads N]
//!                               [--types Q4_0,Q8_0,...] [--peer PATH]
//! ```
//!
//! Throughput is MB/s of f32 input (4 bytes per element; 1 MB = 10^6 bytes), the best of
//! `--reps` runs (after one warm-up; best-of rather than median because shared build machines
//! are noisy: the fastest run is the one least disturbed by other load) over a `rows × cols` matrix of deterministic pseudo-Gaussian data with a few
//! outliers. Single-thread (1T) figures use the on-CPU time of the worker thread
//! (`CLOCK_THREAD_CPUTIME_ID`), so other load on the machine does not inflate them;
//! multi-threaded (NT) figures use wall time with a rayon pool of `--threads` (default: all
//! cores) and are only meaningful on an otherwise idle machine.
//!
//! `--peer PATH` runs an external program in the same session on the same data, for the ratio
//! against ggml. It is called as `PATH INPUT IMATRIX ROWS COLS THREADS REPS TYPE MODE` (MODE is
//! `plain`, `imatrix` or `dequant`; INPUT/IMATRIX are raw little-endian f32 files written by
//! this bench) and must print one line `MBPS <float>`. docs/BENCHMARKS.md describes the driver
//! used (a small C program calling `ggml_quantize_chunk`, built outside the repository).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ggufq::quant::{can_quantize, dequantize_tensor, quantize_tensor, GgmlType};

struct Opts {
    rows: usize,
    cols: usize,
    reps: usize,
    threads: usize,
    types: Vec<GgmlType>,
    peer: Option<PathBuf>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        rows: 1024,
        cols: 4096,
        reps: 9,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        types: [
            "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
            "Q6_K",
        ]
        .iter()
        .filter_map(|n| GgmlType::from_name(n))
        .collect(),
        peer: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |s: String, name: &str| s.parse::<usize>().map_err(|e| format!("{name}: {e}"));
        match a.as_str() {
            "--rows" => o.rows = num(val("--rows")?, "--rows")?,
            "--cols" => o.cols = num(val("--cols")?, "--cols")?,
            "--reps" => o.reps = num(val("--reps")?, "--reps")?.max(1),
            "--threads" => o.threads = num(val("--threads")?, "--threads")?.max(1),
            "--peer" => o.peer = Some(PathBuf::from(val("--peer")?)),
            "--types" => {
                o.types = val("--types")?
                    .split(',')
                    .map(|n| GgmlType::from_name(n).ok_or_else(|| format!("unknown type {n}")))
                    .collect::<Result<_, _>>()?
            }
            // `cargo bench` passes --bench; ignore it and other harness flags.
            _ => {}
        }
    }
    Ok(o)
}

/// Deterministic pseudo-Gaussian data (sum of 4 uniforms), 1 in 257 values an outlier.
fn make_input(n: usize) -> Vec<f32> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|i| {
            let g: f32 = (0..4).map(|_| next()).sum::<f32>() - 2.0;
            let v = g * 0.02;
            if i % 257 == 0 {
                v * 12.0
            } else {
                v
            }
        })
        .collect()
}

/// On-CPU nanoseconds of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), so that
/// single-thread figures are not inflated by other load on a shared machine.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Seconds `f` takes: on-CPU time of this thread when `single` (and available), else wall time.
/// `None` when `f` reports failure.
fn timed(single: bool, f: impl FnOnce() -> bool) -> Option<f64> {
    if single {
        if let Some(c0) = thread_cpu_ns() {
            let ok = f();
            let c1 = thread_cpu_ns()?;
            return ok.then(|| c1.saturating_sub(c0) as f64 * 1e-9);
        }
    }
    let t = Instant::now();
    let ok = f();
    ok.then(|| t.elapsed().as_secs_f64())
}

/// Best MB/s of `reps` runs of `f` (which returns seconds) over `bytes` of input.
fn measure(reps: usize, bytes: usize, mut f: impl FnMut() -> Option<f64>) -> Option<f64> {
    f()?; // warm-up; also tells whether the type is supported
    let mut best: Option<f64> = None;
    for _ in 0..reps {
        let rate = bytes as f64 / f()?.max(1e-9) / 1e6;
        best = Some(best.map_or(rate, |b: f64| b.max(rate)));
    }
    best
}

fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes)
}

fn run_peer(
    peer: &Path,
    files: &(PathBuf, PathBuf),
    o: &Opts,
    threads: usize,
    ty: GgmlType,
    mode: &str,
) -> Option<f64> {
    let out = Command::new(peer)
        .arg(&files.0)
        .arg(&files.1)
        .args([o.rows, o.cols, threads, o.reps].map(|n| n.to_string()))
        .args([ty.name(), mode])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("MBPS ").and_then(|v| v.trim().parse().ok()))
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.0}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("quant bench: {e}");
            std::process::exit(2);
        }
    };
    let n = o.rows * o.cols;
    let input = make_input(n);
    let imatrix: Vec<f32> = (0..o.cols)
        .map(|i| (i as f32).sin().abs() * 10.0 + 0.1)
        .collect();
    let bytes = n * 4;
    let pool = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build();
    let (Ok(p1), Ok(pn)) = (pool(1), pool(o.threads)) else {
        eprintln!("quant bench: cannot build thread pools");
        std::process::exit(2);
    };
    let files = o.peer.as_ref().and_then(|_| {
        let dir = std::env::temp_dir();
        let f = (
            dir.join("ggufq-bench-input.f32"),
            dir.join("ggufq-bench-imatrix.f32"),
        );
        (write_f32(&f.0, &input).is_ok() && write_f32(&f.1, &imatrix).is_ok()).then_some(f)
    });

    println!(
        "matrix {} x {} f32 ({:.1} MB), best of {} runs, {} threads for NT; MB/s of f32 input",
        o.rows,
        o.cols,
        bytes as f64 / 1e6,
        o.reps,
        o.threads
    );
    let peer_cols = if o.peer.is_some() {
        " ggml 1T | ggufq/ggml 1T | ggml NT | ggufq/ggml NT |"
    } else {
        ""
    };
    println!("| type | mode | ggufq 1T | ggufq NT |{peer_cols}");
    println!(
        "|---|---|---:|---:|{}",
        if o.peer.is_some() {
            "---:|---:|---:|---:|"
        } else {
            ""
        }
    );
    for &ty in &o.types {
        let imat_used = !matches!(
            ty,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
        );
        let mut modes = vec!["plain"];
        if imat_used {
            modes.push("imatrix");
        }
        modes.push("dequant");
        let encoded = quantize_tensor(ty, &input, o.cols, None).ok();
        for mode in modes {
            let run = |pool: &rayon::ThreadPool| -> Option<f64> {
                let single = pool.current_num_threads() == 1;
                match mode {
                    "plain" | "imatrix" => {
                        let w = (mode == "imatrix").then_some(&imatrix[..]);
                        if !can_quantize(ty) {
                            return None;
                        }
                        measure(o.reps, bytes, || {
                            pool.install(|| {
                                timed(single, || quantize_tensor(ty, &input, o.cols, w).is_ok())
                            })
                        })
                    }
                    _ => {
                        let q = encoded.as_ref()?;
                        measure(o.reps, bytes, || {
                            pool.install(|| timed(single, || dequantize_tensor(ty, q, n).is_ok()))
                        })
                    }
                }
            };
            let (r1, rn) = (run(&p1), run(&pn));
            let mut line = format!("| {ty} | {mode} | {} | {} |", fmt(r1), fmt(rn));
            if let (Some(peer), Some(files)) = (&o.peer, &files) {
                let g1 = run_peer(peer, files, &o, 1, ty, mode);
                let gn = run_peer(peer, files, &o, o.threads, ty, mode);
                line += &format!(
                    " {} | {} | {} | {} |",
                    fmt(g1),
                    ratio(r1, g1),
                    fmt(gn),
                    ratio(rn, gn)
                );
            }
            println!("{line}");
        }
    }
}
