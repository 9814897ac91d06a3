//! Replays the committed fuzz corpus and every fuzz finding (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same checks as the cargo-fuzz targets in `fuzz/`,
//! so that `cargo test` keeps them fixed without a nightly toolchain. See docs/fuzzing.md.

use std::path::{Path, PathBuf};

#[path = "common/peak_alloc.rs"]
mod peak_alloc;
use peak_alloc::peak_of;

use ggufq::gguf::GgufFile;
use ggufq::quant::imatrix::Imatrix;
use ggufq::recipe::schema::RecipeFile;
use ggufq::recipe::{build_plan, Base, ModelInfo, PlanOptions, Preset, Recipe, TensorDesc};

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

/// The checks of fuzz/fuzz_targets/parse.rs.
fn check_parse(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let parsed = GgufFile::parse(data, path);
    let Ok(f) = GgufFile::from_bytes(data.to_vec(), path) else {
        assert!(parsed.is_err());
        return;
    };
    let h = parsed.unwrap();
    assert_eq!(h.tensors, f.tensors);
    let mut spans = Vec::new();
    for t in &f.tensors {
        let d = f.tensor_data(t).unwrap();
        assert_eq!(Some(d.len() as u64), t.n_bytes);
        spans.push((t.offset, t.offset + d.len() as u64));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping tensors accepted");
    }
    let _ = ggufq::inspect::summary_text(&f);
    let _ = ggufq::inspect::metadata_text(&f, false);
    let _ = ggufq::inspect::inspect_json(&f, &Default::default());
    let model = ggufq::convert::model_info(&f);
    let descs = ggufq::convert::tensor_descs(&f);
    let preset = Preset::from_name("Q4_K_M").unwrap();
    let recipe = Recipe::from_base(Base::Preset(preset));
    if let Ok(plan) = build_plan(&recipe, &model, &descs, PlanOptions::default()) {
        let _ = plan.render();
    }
}

/// The checks of fuzz/fuzz_targets/imatrix.rs; returns the load result.
fn check_imatrix(data: &[u8]) -> Result<Imatrix, String> {
    let (&sel, body) = data.split_first().ok_or("empty")?;
    let m = if sel % 2 == 0 {
        Imatrix::parse_legacy(body, Path::new("fuzz.dat"))
    } else {
        GgufFile::from_bytes(body.to_vec(), "fuzz.imatrix.gguf")
            .and_then(|f| Imatrix::from_gguf(&f))
    };
    let m = m.map_err(|e| e.to_string())?;
    for (name, v) in &m.entries {
        assert!(!v.is_empty(), "empty weights for {name}");
        assert!(
            v.iter().all(|x| x.is_finite()),
            "non-finite weight in {name}"
        );
    }
    Ok(m)
}

fn tensors() -> Vec<TensorDesc> {
    let mut v = Vec::new();
    let mut t = |name: String, dims: Vec<u64>| {
        let n: u64 = dims.iter().product();
        v.push(TensorDesc {
            name,
            dims,
            type_id: 0,
            ty: Some(ggufq::quant::GgmlType::F32),
            n_bytes: n * 4,
        })
    };
    t("token_embd.weight".into(), vec![64, 100]);
    for i in 0..4 {
        t(format!("blk.{i}.attn_norm.weight"), vec![64]);
        for n in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            t(format!("blk.{i}.{n}.weight"), vec![64, 64]);
        }
        t(format!("blk.{i}.ffn_down.weight"), vec![160, 64]);
    }
    t("output.weight".into(), vec![64, 100]);
    v
}

/// The checks of fuzz/fuzz_targets/recipe.rs; returns the parse error, if any.
fn check_recipe(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let (file, _) = match RecipeFile::parse(text, "fuzz.yaml") {
        Ok(x) => x,
        Err(e) => return Some(e.to_string()),
    };
    if let Ok(y) = file.to_yaml() {
        let (back, _) = RecipeFile::parse(&y, "roundtrip.yaml").unwrap();
        assert_eq!(back, file, "round trip changed the recipe:\n{y}");
    }
    if file.extends.is_some() {
        return None;
    }
    let recipe = match Recipe::from_str_in(text, "fuzz.yaml", Path::new("/nonexistent")) {
        Ok(r) => r,
        Err(e) => return Some(e.to_string()),
    };
    let descs = tensors();
    for n_layer in [0u64, 4, 1 << 40] {
        let model = ModelInfo {
            arch: "llama".into(),
            n_layer,
            n_head: 4,
            n_head_kv: 2,
            n_expert: 0,
        };
        if let Ok(plan) = build_plan(&recipe, &model, &descs, PlanOptions::default()) {
            assert_eq!(plan.entries.len(), descs.len());
            let _ = plan.render();
        }
    }
    None
}

/// Memory ceiling for any one corpus input (issue #7's ~100 MB).
const PEAK_LIMIT: usize = 100 << 20;

#[test]
fn parse_corpus_replays_cleanly() {
    let all = inputs("parse");
    assert!(all.len() >= 3, "corpus missing: {all:?}");
    for (p, b) in all {
        let ((), peak) = peak_of(|| check_parse(&b));
        assert!(peak < PEAK_LIMIT, "{}: peak {peak}", p.display());
    }
}

#[test]
fn imatrix_corpus_and_findings_replay_cleanly() {
    let all = inputs("imatrix");
    assert!(all.iter().any(|(p, _)| p.ends_with("legacy")));
    for (p, b) in all {
        let (r, peak) = peak_of(|| check_imatrix(&b));
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
        let (err, peak) = peak_of(|| check_recipe(&b));
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
