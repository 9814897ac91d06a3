//! Every preset (and both hybrid recipes) gives exactly llama-quantize's per-tensor types, on
//! the real SmolLM2 tensor list and on a synthetic 32-layer 4096-wide llama.
//!
//! The expected types come from real llama-quantize runs (llama.cpp 0c1e57098, ggml 0.25.3),
//! committed as `testdata/llama_quantize_types_{smollm2,synth32}.json` by
//! `testdata/gen/*.py`; the SmolLM2 shapes come from `testdata/smollm2_tensors.json` (gguf-py).
//! Nothing here needs the model or llama.cpp, so it runs in CI.

use std::path::Path;

use ggufq::quant::GgmlType;
use ggufq::recipe::{build_plan, ModelInfo, PlanOptions, Recipe, TensorDesc};
use serde_json::Value;

#[path = "common/preset_fixture.rs"]
mod preset_fixture;
use preset_fixture::type_mismatches;

fn json(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn desc(name: &str, dims: Vec<u64>, ty: GgmlType) -> TensorDesc {
    let n: u64 = dims.iter().product();
    TensorDesc {
        name: name.to_string(),
        dims,
        type_id: ty.id(),
        ty: Some(ty),
        n_bytes: ty.bytes_for(n).unwrap(),
    }
}

fn dims(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect()
}

fn recipe_for(preset: &str) -> Recipe {
    let root = env!("CARGO_MANIFEST_DIR");
    match preset {
        "hybrid" => Recipe::load(&format!("{root}/recipes/hybrid.yaml")).unwrap(),
        "hybrid-pure" => Recipe::load(&format!("{root}/recipes/hybrid-pure.yaml")).unwrap(),
        p => Recipe::load(p).unwrap(),
    }
}

/// Compare the plan of every preset in `expected` with llama-quantize's types; returns how many
/// presets were checked.
fn check(model: &ModelInfo, tensors: &[TensorDesc], expected: &Value, label: &str) -> usize {
    let presets = expected["presets"].as_object().unwrap();
    let mut mismatches = Vec::new();
    for (preset, want) in presets {
        let recipe = recipe_for(preset);
        let plan = build_plan(&recipe, model, tensors, PlanOptions::default()).unwrap();
        let want = want["tensors"].as_object().unwrap();
        assert_eq!(want.len(), tensors.len(), "{label} {preset}: tensor count");
        mismatches.extend(type_mismatches(&format!("{label} {preset}"), &plan, want));
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    presets.len()
}

#[test]
fn smollm2_presets_equal_llama_quantize() {
    let shapes = json("testdata/smollm2_tensors.json");
    let tensors: Vec<TensorDesc> = shapes["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let d = dims(&t["shape"]);
            // llama-quantize ran on the F32 dequantization of the shipped file.
            desc(t["name"].as_str().unwrap(), d, GgmlType::F32)
        })
        .collect();
    // SmolLM2-135M: 30 layers, 9 heads, 3 KV heads, tied embeddings.
    let model = ModelInfo {
        arch: "llama".into(),
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        n_expert: 0,
    };
    let n = check(
        &model,
        &tensors,
        &json("testdata/llama_quantize_types_smollm2.json"),
        "smollm2",
    );
    assert!(n >= 13, "only {n} presets in the fixture");
}

#[test]
fn synth32_presets_equal_llama_quantize() {
    let fx = json("testdata/llama_quantize_types_synth32.json");
    let spec = &fx["_spec"]["spec"];
    let tensors: Vec<TensorDesc> = fx["_spec"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ty = GgmlType::from_name(t[2].as_str().unwrap()).unwrap();
            desc(t[0].as_str().unwrap(), dims(&t[1]), ty)
        })
        .collect();
    let model = ModelInfo {
        arch: "llama".into(),
        n_layer: spec["n_layer"].as_u64().unwrap(),
        n_head: spec["n_head"].as_u64().unwrap(),
        n_head_kv: spec["n_head_kv"].as_u64().unwrap(),
        n_expert: 0,
    };
    let n = check(&model, &tensors, &fx, "synth32");
    assert!(n >= 13, "only {n} presets in the fixture");
}
