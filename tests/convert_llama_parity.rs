//! Parity with llama-quantize on SmolLM2: for every preset whose llama-quantize output is
//! available, ggufq's per-tensor types must be identical, and so must the tensor data when
//! converting the same F32 source.
//!
//! The reference files are produced outside the repository (llama.cpp from the
//! llama-cpp-python 0.3.36 sdist, built with `-ffp-contract=off`, see docs/recipes.md):
//! `$GGUFQ_PEER_REF/smollm2-f32.gguf` and `$GGUFQ_PEER_REF/smollm2-<PRESET>.gguf`
//! (default folder /work/peer/ref). Skipped with a notice when they are absent.

use std::path::PathBuf;

use ggufq::convert::{convert, plan_file, ConvertOptions};
use ggufq::gguf::GgufFile;
use ggufq::quant;
use ggufq::recipe::Recipe;

const PRESETS: &[&str] = &[
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
    "Q4_0",
];

fn ref_dir() -> PathBuf {
    std::env::var_os("GGUFQ_PEER_REF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/peer/ref"))
}

fn refs() -> Option<(PathBuf, Vec<(&'static str, PathBuf)>)> {
    let dir = ref_dir();
    let src = dir.join("smollm2-f32.gguf");
    let found: Vec<(&str, PathBuf)> = PRESETS
        .iter()
        .map(|p| (*p, dir.join(format!("smollm2-{p}.gguf"))))
        .filter(|(_, p)| p.is_file())
        .collect();
    if !src.is_file() || found.is_empty() {
        eprintln!(
            "notice: llama-quantize reference outputs not found in {}; test skipped",
            dir.display()
        );
        return None;
    }
    Some((src, found))
}

#[test]
fn preset_types_equal_llama_quantize() {
    let Some((src, found)) = refs() else { return };
    let f = GgufFile::open(&src).unwrap();
    for (preset, path) in found {
        let r = GgufFile::open(&path).unwrap();
        let plan = plan_file(&f, &Recipe::load(preset).unwrap(), None).unwrap();
        assert_eq!(plan.entries.len(), r.tensors.len(), "{preset}");
        let mut diffs = Vec::new();
        for e in &plan.entries {
            let t = r.tensor(&e.name).unwrap();
            if t.type_id != e.to_id {
                diffs.push(format!(
                    "{}: llama {} ggufq {}",
                    e.name,
                    t.type_name(),
                    e.to_name()
                ));
            }
        }
        assert!(
            diffs.is_empty(),
            "{preset}: {} differences:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
        assert_eq!(
            r.get_u64("general.file_type"),
            Some(plan.file_type as u64),
            "{preset}"
        );
        eprintln!("{preset}: {} tensors, types identical", plan.entries.len());
    }
}

#[test]
fn preset_data_equals_llama_quantize() {
    let Some((src, found)) = refs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (preset, path) in found {
        // Every type llama-quantize wrote must have a ggufq kernel (K-quants land separately).
        let r = GgufFile::open(&path).unwrap();
        let missing: Vec<String> = r
            .tensors
            .iter()
            .filter_map(|t| t.ty)
            .filter(|&t| {
                quant::quantize_tensor(
                    t,
                    &vec![0.5; t.block_size() as usize],
                    t.block_size() as usize,
                    None,
                )
                .is_err()
            })
            .map(|t| t.name().to_string())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            eprintln!("notice: {preset}: no ggufq kernel yet for {missing:?}; data not compared");
            continue;
        }
        compared += 1;
        let out = dir.path().join(format!("{preset}.gguf"));
        let mut o = ConvertOptions::new(Recipe::load(preset).unwrap());
        o.output = Some(out.clone());
        o.manifest = false;
        convert(&src, &o).unwrap_or_else(|e| panic!("{preset}: {e}"));
        let (a, b) = (
            GgufFile::open(&out).unwrap(),
            GgufFile::open(&path).unwrap(),
        );
        let mut diffs = Vec::new();
        for t in &a.tensors {
            let u = b.tensor(&t.name).unwrap();
            if a.tensor_data(t).unwrap() != b.tensor_data(u).unwrap() {
                diffs.push(format!("{} ({})", t.name, t.type_name()));
            }
        }
        assert!(
            diffs.is_empty(),
            "{preset}: data differs in {} tensors: {:?}",
            diffs.len(),
            diffs
        );
        // Same metadata, same order (llama-quantize appends the same two keys last).
        let ka: Vec<&String> = a.metadata.iter().map(|(k, _)| k).collect();
        let kb: Vec<&String> = b.metadata.iter().map(|(k, _)| k).collect();
        assert_eq!(ka, kb, "{preset}: metadata keys");
        eprintln!("{preset}: {} tensors, data identical", a.tensors.len());
        std::fs::remove_file(&out).unwrap();
    }
    assert!(compared > 0, "no preset could be compared");
}

/// Per-tensor target types from a llama-quantize log (`--dry-run` or a real run):
/// `[  3/291] name - [dims], type = f16, size = ... -> ... (q4_K)` or `..., converting to q5_1 ..`.
fn log_types(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let re = regex::Regex::new(
        r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s+(\S+),(?: converting to (\S+) \.\.)?.*?(?:\((\S+)\))?\s*$",
    )
    .unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| re.captures(l))
        .map(|c| {
            let t = c.get(3).or(c.get(4)).or(c.get(2)).unwrap().as_str();
            (c[1].to_string(), t.to_uppercase())
        })
        .collect()
}

fn compare_with_log(src: &std::path::Path, recipe: &Recipe, log: &std::path::Path) {
    let f = GgufFile::open(src).unwrap();
    let plan = plan_file(&f, recipe, None).unwrap();
    let want = log_types(log);
    assert_eq!(want.len(), plan.entries.len(), "{}", log.display());
    let diffs: Vec<String> = plan
        .entries
        .iter()
        .filter(|e| want.get(&e.name).map(String::as_str) != Some(e.to_name().as_str()))
        .map(|e| {
            format!(
                "{}: llama {:?} ggufq {}",
                e.name,
                want.get(&e.name),
                e.to_name()
            )
        })
        .collect();
    assert!(diffs.is_empty(), "{}: {:?}", log.display(), diffs);
}

#[test]
fn synth32_types_equal_llama_quantize_dry_run() {
    // A synthetic 32-layer 4096-wide llama (n_head 32, n_head_kv 8, untied output), F16.
    let dir = ref_dir();
    let src = dir.join("synth32-f16.gguf");
    if !src.is_file() {
        eprintln!("notice: {} not found; test skipped", src.display());
        return;
    }
    let mut n = 0;
    for p in PRESETS {
        let log = dir.join(format!("dry-synth32-{p}.log"));
        if log.is_file() {
            compare_with_log(&src, &Recipe::load(p).unwrap(), &log);
            n += 1;
        }
    }
    eprintln!("synth32: {n} presets identical to llama-quantize --dry-run");
}

#[test]
fn hybrid_equals_llama_quantize_tensor_type() {
    // recipes/hybrid-pure.yaml = `llama-quantize --pure --tensor-type attn=q5_k IN OUT Q2_K`;
    // recipes/hybrid.yaml (`preset: Q2_K` + an attn rule) = the same without --pure.
    let dir = ref_dir();
    let hybrid = Recipe::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/recipes/hybrid-pure.yaml"
    ))
    .unwrap();
    let mix = Recipe::load(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/hybrid.yaml")).unwrap();
    let mut n = 0;
    for (src, log, r) in [
        ("synth32-f16.gguf", "dry-synth32-hybrid-pure.log", &hybrid),
        ("synth32-f16.gguf", "dry-synth32-hybrid.log", &mix),
        (
            "smollm2-f32.gguf",
            "quantize-smollm2-hybrid-pure.log",
            &hybrid,
        ),
        ("smollm2-f32.gguf", "quantize-smollm2-hybrid.log", &mix),
    ] {
        let (src, log) = (dir.join(src), dir.join(log));
        if src.is_file() && log.is_file() {
            compare_with_log(&src, r, &log);
            n += 1;
        }
    }
    if n == 0 {
        eprintln!(
            "notice: llama-quantize hybrid logs not found in {}; test skipped",
            dir.display()
        );
    }
}
