//! The checks each fuzz target runs on one input, shared with `tests/hardening_fuzz.rs`, which
//! replays the committed corpus and findings through these same functions under `cargo test`
//! (included there with `#[path]`). Every function must not panic on any input: a panic is a
//! finding.

#![allow(dead_code)] // each fuzz target uses one of these

use std::path::Path;

use ggufq::gguf::GgufFile;
use ggufq::inspect;
use ggufq::quant::imatrix::Imatrix;
use ggufq::recipe::schema::RecipeFile;
use ggufq::recipe::{build_plan, Base, ModelInfo, PlanOptions, Preset, Recipe, TensorDesc};

/// Target `parse`: the GGUF reader and everything `inspect` and `convert --dry-run` do with a
/// header.
pub fn parse(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let parsed = GgufFile::parse(data, path);
    let Ok(f) = GgufFile::from_bytes(data.to_vec(), path) else {
        assert!(parsed.is_err(), "parse and from_bytes disagree");
        return;
    };
    let h = parsed.expect("parse and from_bytes disagree");
    assert_eq!(h.tensors, f.tensors);
    assert!(h.data_offset % h.alignment == 0);

    // Every tensor of a file that opens lies inside the data section, and no two overlap.
    let mut spans = Vec::new();
    for t in &f.tensors {
        let d = f.tensor_data(t).expect("validated tensor has no data");
        assert_eq!(Some(d.len() as u64), t.n_bytes);
        assert!(f.tensor(&t.name).is_some());
        spans.push((t.offset, t.offset + d.len() as u64));
        let _ = (t.n_elements(), t.n_rows(), t.row_len(), t.type_name());
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping tensors accepted");
    }

    // Metadata access and everything `inspect` prints.
    for (k, v) in &f.metadata {
        assert!(f.get(k).is_some());
        let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_str(), v.as_bool());
        let _ = inspect::render_value(v, false);
        let _ = inspect::type_label(v);
    }
    let _ = f.architecture();
    let _ = inspect::summary_text(&f);
    let _ = inspect::metadata_text(&f, false);
    let all: Vec<_> = f.tensors.iter().collect();
    let _ = inspect::tensors_text(&f, &all, None);
    let _ = inspect::layers_text(&all);
    let _ = inspect::inspect_json(&f, &Default::default());

    // What `convert --dry-run` plans from the header (no tensor data is read).
    let model = ggufq::convert::model_info(&f);
    let descs = ggufq::convert::tensor_descs(&f);
    for preset in [Preset::from_name("Q4_K_M"), Preset::from_name("Q2_K")]
        .into_iter()
        .flatten()
    {
        let recipe = Recipe::from_base(Base::Preset(preset));
        if let Ok(plan) = build_plan(&recipe, &model, &descs, PlanOptions::default()) {
            let _ = plan.render();
            let _ = plan.to_json();
            let _ = ggufq::convert::output_metadata(&f, &recipe, 15);
        }
    }
}

/// Target `imatrix`: the first byte picks legacy `.dat` (even) or GGUF (odd); the rest is the
/// file. Returns the loaded matrix or the error message.
pub fn imatrix(data: &[u8]) -> Result<Imatrix, String> {
    let (&sel, body) = data.split_first().ok_or("empty input")?;
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
        assert_eq!(m.get(name).map(<[f32]>::len), Some(v.len()));
    }
    Ok(m)
}

/// A small llama-shaped tensor list (4 layers) for planning fuzzed recipes against.
fn recipe_tensors() -> Vec<TensorDesc> {
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
        t(format!("blk.{i}.ffn_norm.weight"), vec![64]);
        t(format!("blk.{i}.ffn_gate.weight"), vec![64, 160]);
        t(format!("blk.{i}.ffn_up.weight"), vec![64, 160]);
        // A row length that is not a multiple of 256, to exercise the fallbacks.
        t(format!("blk.{i}.ffn_down.weight"), vec![160, 64]);
    }
    t("output_norm.weight".into(), vec![64]);
    t("output.weight".into(), vec![64, 100]);
    v
}

/// Target `recipe`: YAML text → `RecipeFile` (which must round-trip through its YAML) →
/// resolved `Recipe` → plans for 0, 4 and 2^40 layers. Returns the parse error, if any.
pub fn recipe(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let (file, _lines) = match RecipeFile::parse(text, "fuzz.yaml") {
        Ok(x) => x,
        Err(e) => return Some(e.to_string()),
    };
    // A parsed file serializes and parses back to the same recipe.
    if let Ok(y) = file.to_yaml() {
        let (back, _) = RecipeFile::parse(&y, "roundtrip.yaml")
            .unwrap_or_else(|e| panic!("re-parse of serialized recipe failed: {e}\n{y}"));
        assert_eq!(back, file, "round trip changed the recipe:\n{y}");
    }
    // `extends:` reads other files; keep the run hermetic.
    if file.extends.is_some() {
        return None;
    }
    let recipe = match Recipe::from_str_in(text, "fuzz.yaml", Path::new("/nonexistent-fuzz-dir")) {
        Ok(r) => r,
        Err(e) => return Some(e.to_string()),
    };
    let _ = recipe.normalized_json();
    let descs = recipe_tensors();
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
            let _ = plan.to_json();
            let _ = plan.tensor_type_file();
        }
    }
    None
}
