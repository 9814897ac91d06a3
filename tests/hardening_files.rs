//! Hostile GGUF files (issue #7): absurd counts and lengths, strings claiming gigabytes, offsets
//! past the end, overlapping and misaligned tensors, nested-array bombs, and truncation at every
//! byte of a small file's header. Each must give a clear error that names the file, never a
//! panic, with peak memory under ~100 MB:
//! - in the library, measured by a counting allocator (peak live bytes on the parsing thread);
//! - for `ggufq inspect` and `ggufq convert --dry-run` run as processes: exit code 2, an error
//!   naming the file, no panic, and the children's peak RSS (getrusage) under 100 MB.
//!
//! Only small-file tests live in this binary, so `RUSAGE_CHILDREN`'s maximum is theirs.

use std::path::{Path, PathBuf};
use std::process::Command;

use ggufq::gguf::GgufFile;

#[path = "common/peak_alloc.rs"]
mod peak_alloc;
use peak_alloc::peak_of;

/// The memory ceiling of issue #7.
const PEAK_LIMIT: usize = 100 << 20;

/// Raw GGUF bytes, built field by field so that any field can be wrong.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    fn header(n_tensors: u64, n_kv: u64) -> B {
        let mut b = B(b"GGUF".to_vec());
        b.u32(3).u64(n_tensors).u64(n_kv);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, off: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(off)
    }
    fn pad(&mut self) -> &mut Self {
        while self.0.len() % 32 != 0 {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// A small valid llama-like file: architecture, name, block count, two tensors.
fn small_valid() -> Vec<u8> {
    let mut b = B::header(2, 3);
    b.kv_str("general.architecture", "llama")
        .kv_str("general.name", "tiny")
        .kv_u32("llama.block_count", 1)
        .tensor("token_embd.weight", &[32, 2], 0, 0)
        .tensor("blk.0.attn_q.weight", &[32, 2], 8, 256)
        .pad()
        .zeros(256 + 68)
        .pad();
    b.0
}

/// Hostile files: (file name, bytes, words the error must contain).
fn hostile() -> Vec<(&'static str, Vec<u8>, &'static [&'static str])> {
    let mut v: Vec<(&'static str, Vec<u8>, &'static [&'static str])> = Vec::new();
    let mut b = B::header(1 << 63, 0);
    b.zeros(64);
    v.push((
        "tensor-count-2p63.gguf",
        b.0,
        &["tensor_count 9223372036854775808"],
    ));
    let mut b = B::header(0, 1 << 63);
    b.zeros(64);
    v.push((
        "kv-count-2p63.gguf",
        b.0,
        &["metadata_kv_count 9223372036854775808"],
    ));
    for (name, elem) in [("array-u8-2p63.gguf", 0u32), ("array-str-2p63.gguf", 8)] {
        let mut b = B::header(0, 1);
        b.str("tokenizer.ggml.tokens")
            .u32(9)
            .u32(elem)
            .u64(1 << 63)
            .zeros(64);
        v.push((
            name,
            b.0,
            &["tokenizer.ggml.tokens", "array of 9223372036854775808"],
        ));
    }
    let mut b = B::header(0, 1);
    b.str("general.name").u32(8).u64(8 << 30).zeros(64);
    v.push((
        "string-8gb.gguf",
        b.0,
        &["general.name", "length 8589934592 exceeds"],
    ));
    let mut b = B::header(0, 1);
    b.str("general.name").u32(8).u64(u64::MAX).zeros(64);
    v.push((
        "string-u64max.gguf",
        b.0,
        &["length 18446744073709551615 exceeds"],
    ));
    let mut b = B::header(1, 0);
    b.u64(1 << 40).zeros(64);
    v.push((
        "tensor-name-1tb.gguf",
        b.0,
        &["tensor name: length 1099511627776"],
    ));
    let mut b = B::header(1, 0);
    b.tensor("w", &[8], 0, 1 << 62).pad().zeros(64);
    v.push((
        "offset-past-end.gguf",
        b.0,
        &["data offset 4611686018427387904 is past the end"],
    ));
    let mut b = B::header(1, 0);
    b.tensor("w", &[1 << 20], 0, 0).pad().zeros(64);
    v.push(("data-past-end.gguf", b.0, &["runs past the end"]));
    let mut b = B::header(2, 0);
    b.tensor("x", &[16], 0, 0)
        .tensor("y", &[8], 0, 32)
        .pad()
        .zeros(128);
    v.push(("overlap.gguf", b.0, &["'x'", "'y'", "overlap"]));
    let mut b = B::header(2, 0);
    b.tensor("x", &[8], 0, 0)
        .tensor("y", &[8], 0, 0)
        .pad()
        .zeros(64);
    v.push(("same-offset.gguf", b.0, &["overlap"]));
    let mut b = B::header(1, 0);
    b.tensor("w", &[4], 0, 17).pad().zeros(64);
    v.push((
        "misaligned.gguf",
        b.0,
        &["data offset 17 is not a multiple of the alignment 32"],
    ));
    let mut b = B::header(1, 1);
    b.kv_u32("general.alignment", 64)
        .tensor("w", &[4], 0, 32)
        .pad()
        .zeros(128);
    v.push((
        "misaligned-64.gguf",
        b.0,
        &["not a multiple of the alignment 64"],
    ));
    let mut b = B::header(1, 0);
    b.tensor("w", &[1 << 32, 1 << 32, 4], 0, 0).pad().zeros(64);
    v.push(("dims-overflow.gguf", b.0, &["element count overflow"]));
    let mut b = B::header(1, 0);
    b.str("w").u32(u32::MAX).zeros(64);
    v.push((
        "n-dims-huge.gguf",
        b.0,
        &["n_dims 4294967295 is outside 1..=4"],
    ));
    // Depth bomb: 100 000 levels of array-of-array.
    let mut b = B::header(0, 1);
    b.str("bomb").u32(9);
    for _ in 0..100_000 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    v.push((
        "nested-depth-bomb.gguf",
        b.0,
        &["arrays nested deeper than 16 levels"],
    ));
    // Breadth bomb that is really backed by bytes: 2^24 + 1 empty arrays (~200 MB in memory if
    // accepted) in a 200 MB file would pass the size checks; the metadata value cap stops it at
    // the count, before the elements are read.
    let mut b = B::header(0, 1);
    b.str("bomb").u32(9).u32(9).u64((1 << 24) + 1).zeros(64);
    v.push((
        "nested-breadth-count.gguf",
        b.0,
        &["array of 16777217 array elements"],
    ));
    v
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ggufq")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Run ggufq; the result must be exit code 2 with one error line naming `file` and no panic.
/// Returns stderr.
fn expect_bad_input(args: &[&str], file: &Path) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg(file)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "ggufq {args:?} {}: {err}",
        file.display()
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(out.stdout.is_empty(), "output printed for a bad file");
    err
}

/// Largest resident set of any child this test process has waited for, in bytes.
fn children_max_rss() -> usize {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    ru.ru_maxrss as usize * 1024
}

#[test]
fn hostile_files_are_rejected_by_the_library_with_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, want) in hostile() {
        let p = write(dir.path(), name, &bytes);
        let (r, peak) = peak_of(|| GgufFile::open(&p).map(|_| ()));
        let msg = r.expect_err(name).to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("invalid GGUF at byte "), "{msg}");
        for w in want {
            assert!(msg.contains(w), "{name}: {msg:?} lacks {w:?}");
        }
        assert!(peak < PEAK_LIMIT, "{name}: peak {peak} bytes");
        eprintln!("{name}: peak heap {peak} bytes");
        // The in-memory path (fuzzing, tests) agrees.
        let (r, peak) = peak_of(|| GgufFile::parse(&bytes, &p).map(|_| ()));
        assert_eq!(r.unwrap_err().to_string(), msg);
        assert!(peak < PEAK_LIMIT, "{name}: parse peak {peak} bytes");
    }
}

#[test]
fn hostile_files_give_exit_2_for_inspect_and_convert_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, want) in hostile() {
        let p = write(dir.path(), name, &bytes);
        for args in [
            &["inspect"][..],
            &["inspect", "--json"],
            &["convert", "-t", "Q4_K_M", "--dry-run"],
        ] {
            let err = expect_bad_input(args, &p);
            for w in want {
                assert!(err.contains(w), "{name} {args:?}: {err:?} lacks {w:?}");
            }
        }
    }
    // Convert without --dry-run writes nothing for a bad input.
    let (name, bytes, _) = &hostile()[8];
    let p = write(dir.path(), name, bytes);
    let out = dir.path().join("out.gguf");
    let o = Command::new(bin())
        .args(["convert", "-t", "Q8_0", "-o"])
        .arg(&out)
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".gguf") || n == "out.gguf")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let rss = children_max_rss();
    assert!(rss < PEAK_LIMIT, "a ggufq child peaked at {rss} bytes");
    eprintln!("children max RSS {rss} bytes");
}

#[test]
fn nested_array_breadth_bomb_backed_by_bytes_stays_small() {
    // 1 000 000 empty arrays really present in a 12 MB file: a valid file; memory stays a small
    // multiple of the file (no expansion), well under the ceiling.
    let n = 1_000_000u64;
    let mut b = B::header(0, 2);
    b.kv_str("general.architecture", "llama")
        .str("bomb")
        .u32(9)
        .u32(9)
        .u64(n);
    for _ in 0..n {
        b.u32(0).u64(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "breadth.gguf", &b.0);
    let (r, peak) = peak_of(|| GgufFile::open(&p));
    let f = r.unwrap();
    assert_eq!(
        f.get("bomb").and_then(|v| v.as_array()).map(|a| a.len()),
        Some(n as usize)
    );
    assert!(peak < PEAK_LIMIT, "peak {peak} bytes for a 12 MB file");
    eprintln!("breadth bomb ({} bytes): peak heap {peak} bytes", b.0.len());
    // inspect prints a preview, not a million items.
    let out = Command::new(bin()).arg("inspect").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(1000000 items)"), "{text}");
    assert!(text.len() < 100_000, "inspect printed {} bytes", text.len());
    let rss = children_max_rss();
    assert!(rss < PEAK_LIMIT, "inspect peaked at {rss} bytes");
    eprintln!("children max RSS {rss} bytes");
}

#[test]
fn truncation_at_every_header_byte_gives_exit_2() {
    let good = small_valid();
    let dir = tempfile::tempdir().unwrap();
    let full = write(dir.path(), "full.gguf", &good);
    // The intact file works for both commands.
    let o = Command::new(bin())
        .arg("inspect")
        .arg(&full)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(bin())
        .args(["convert", "-t", "Q8_0", "--dry-run"])
        .arg(&full)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let h = GgufFile::parse(&good, &full).unwrap();
    let header_end = h.data_offset as usize;
    // Every cut inside the header, plus a few inside the data.
    let cuts = (0..=header_end).chain([header_end + 1, header_end + 255, header_end + 256 + 67]);
    for cut in cuts {
        let p = write(dir.path(), &format!("cut-{cut:04}.gguf"), &good[..cut]);
        let (r, peak) = peak_of(|| GgufFile::open(&p).map(|_| ()));
        let msg = r.expect_err("a truncated file opened").to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(peak < 1 << 20, "cut {cut}: peak {peak}");
        expect_bad_input(&["inspect"], &p);
        expect_bad_input(&["convert", "-t", "Q8_0", "--dry-run"], &p);
    }
    let rss = children_max_rss();
    assert!(rss < PEAK_LIMIT, "a ggufq child peaked at {rss} bytes");
    eprintln!("children max RSS {rss} bytes");
}
