//! Replays the committed fuzz corpus and every fuzz finding (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same checks as the cargo-fuzz targets in `fuzz/`,
//! so that `cargo test` keeps them fixed without a nightly toolchain. See docs/fuzzing.md.

use std::path::{Path, PathBuf};

#[path = "common/peak_alloc.rs"]
mod peak_alloc;
use peak_alloc::peak_of;

// The very checks the cargo-fuzz targets run, so the replay and the fuzz runs cannot drift.
#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

/// Every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for sub in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(sub).join(target)) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            out.push((p, b));
        }
    }
    out.sort();
    out
}

/// Memory ceiling for any one corpus input (issue #7's ~100 MB).
const PEAK_LIMIT: usize = 100 << 20;

#[test]
fn parse_corpus_replays_cleanly() {
    let all = inputs("parse");
    assert!(all.len() >= 3, "corpus missing: {all:?}");
    for (p, b) in all {
        let ((), peak) = peak_of(|| checks::parse(&b));
        assert!(peak < PEAK_LIMIT, "{}: peak {peak}", p.display());
    }
}

#[test]
fn imatrix_corpus_and_findings_replay_cleanly() {
    let all = inputs("imatrix");
    assert!(all.iter().any(|(p, _)| p.ends_with("legacy")));
    for (p, b) in all {
        let (r, peak) = peak_of(|| checks::imatrix(&b));
        assert!(peak < PEAK_LIMIT, "{}: peak {peak}", p.display());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("empty-sums") {
            // Finding 1: a zero-element `.in_sum2` tensor gave an entry with no weights.
            let e = r.expect_err("empty sums accepted");
            assert!(e.contains("0 sums do not split"), "{e}");
            assert!(e.contains("fuzz.imatrix.gguf"), "{e}");
        } else if name == "legacy" || name == "gguf" {
            assert!(r.is_ok(), "{}: {r:?}", p.display());
        }
    }
}

#[test]
fn recipe_corpus_replays_cleanly_and_yaml_bombs_are_refused() {
    let all = inputs("recipe");
    assert!(all.len() >= 5);
    for (p, b) in all {
        let (err, peak) = peak_of(|| checks::recipe(&b));
        assert!(peak < PEAK_LIMIT, "{}: peak {peak}", p.display());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match name.as_str() {
            "billion-laughs" | "billion-laughs-rules" | "deep-nesting" => {
                let e = err.unwrap_or_else(|| panic!("{name} accepted"));
                assert!(e.starts_with("fuzz.yaml:"), "{e}");
                assert!(!e.starts_with("fuzz.yaml:0:0"), "{e}");
                let want = if name == "deep-nesting" {
                    "YAML nested too deeply"
                } else {
                    "YAML aliases expand to too many values"
                };
                assert!(e.contains(want), "{e}");
                eprintln!("{name}: {e} (peak {peak} bytes)");
            }
            "hybrid" | "hybrid-best" | "hybrid-pure" | "q4_k_m-q8-output" | "layers" | "meta" => {
                assert!(err.is_none(), "{name}: {err:?}");
            }
            _ => {}
        }
    }
}
