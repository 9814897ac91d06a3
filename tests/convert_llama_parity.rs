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
    for (preset, path) in found {
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
}
