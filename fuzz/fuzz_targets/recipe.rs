//! Fuzz the recipe parser: YAML text → `RecipeFile` → resolved `Recipe` → plan against a small
//! fixed llama-shaped tensor list. Any input must give Ok or an error naming a line, never a
//! panic, a hang or a huge allocation (YAML alias bombs, deep nesting, absurd numbers).
//!
//! Run: `cargo +nightly fuzz run -s none recipe -- -max_total_time=600 -timeout=10`
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

mod alloc_guard;
#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use ggufq::recipe::schema::RecipeFile;
use ggufq::recipe::{build_plan, ModelInfo, PlanOptions, Recipe, TensorDesc};

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

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((file, _lines)) = RecipeFile::parse(text, "fuzz.yaml") else {
        return;
    };
    // A parsed file serializes and parses back to the same recipe.
    if let Ok(y) = file.to_yaml() {
        let (back, _) = RecipeFile::parse(&y, "roundtrip.yaml")
            .unwrap_or_else(|e| panic!("re-parse of serialized recipe failed: {e}\n{y}"));
        assert_eq!(back, file, "round trip changed the recipe:\n{y}");
    }
    // `extends:` reads other files; keep the fuzz run hermetic.
    if file.extends.is_some() {
        return;
    }
    let Ok(recipe) = Recipe::from_str_in(text, "fuzz.yaml", Path::new("/nonexistent-fuzz-dir"))
    else {
        return;
    };
    let _ = recipe.normalized_json();
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
            let _ = plan.to_json();
            let _ = plan.tensor_type_file();
        }
    }
});
