//! llama.cpp's presets on a second architecture: Gemma 3 270M (`gemma3`, 18 layers, 640 wide,
//! 4 heads / 1 KV head so n_gqa = 4, 262144-token vocabulary, tied embeddings, q/k norms,
//! post-attention / post-FFN norms).
//!
//! `testdata/llama_quantize_types_gemma3.json` holds the real file's tensor list (names, shapes,
//! source types; `_spec`) and the per-tensor types llama-quantize (llama.cpp 0c1e57098, ggml
//! 0.25.3) chose for every preset, with `--allow-requantize` on the published Q4_K_M file.
//! Q3_K_M, Q4_K_M, Q5_K_M and hybrid come from real outputs (read with gguf-py), the others from
//! `--dry-run` logs. Generator: `testdata/gen/quantize_types.py`; the model comes from PyPI
//! (`scripts/fetch-gemma3.sh`, docs/search.md). The first tests need neither the model nor
//! llama.cpp and run in CI; the last one converts the real model when it is in the cache and
//! compares whole-file hashes with llama-quantize's outputs.

use std::path::{Path, PathBuf};

use ggufq::quant::GgmlType;
use ggufq::recipe::{build_plan, ModelInfo, Plan, PlanOptions, Recipe, TensorDesc};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[path = "common/preset_fixture.rs"]
mod preset_fixture;
use preset_fixture::type_mismatches;

const FIXTURE: &str = "testdata/llama_quantize_types_gemma3.json";

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tensors(fx: &Value) -> Vec<TensorDesc> {
    fx["_spec"]["tensors"]
        .as_array()
        .expect("_spec.tensors")
        .iter()
        .map(|t| {
            let name = t[0].as_str().expect("name").to_string();
            let dims: Vec<u64> = t[1]
                .as_array()
                .expect("dims")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            let ty = GgmlType::from_name(t[2].as_str().expect("type")).expect("known type");
            let n: u64 = dims.iter().product();
            TensorDesc {
                name,
                n_bytes: ty.bytes_for(n).expect("whole blocks"),
                type_id: ty.id(),
                ty: Some(ty),
                dims,
            }
        })
        .collect()
}

fn model(fx: &Value) -> ModelInfo {
    let s = &fx["_spec"]["spec"];
    ModelInfo {
        arch: s["arch"].as_str().expect("arch").into(),
        n_layer: s["n_layer"].as_u64().expect("n_layer"),
        n_head: s["n_head"].as_u64().expect("n_head"),
        n_head_kv: s["n_head_kv"].as_u64().expect("n_head_kv"),
        n_expert: 0,
    }
}

fn recipe_for(preset: &str) -> Recipe {
    let root = env!("CARGO_MANIFEST_DIR");
    match preset {
        "hybrid" | "hybrid-pure" => Recipe::load(&format!("{root}/recipes/{preset}.yaml")),
        p => Recipe::load(p),
    }
    .unwrap_or_else(|e| panic!("{preset}: {e}"))
}

fn plan_for(preset: &str, fx: &Value) -> Plan {
    build_plan(
        &recipe_for(preset),
        &model(fx),
        &tensors(fx),
        PlanOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{preset}: {e}"))
}

#[test]
fn gemma3_shapes_are_what_the_fixture_says() {
    let fx = fixture();
    let m = model(&fx);
    assert_eq!(
        (m.arch.as_str(), m.n_layer, m.n_head, m.n_head_kv),
        ("gemma3", 18, 4, 1)
    );
    assert_eq!(m.n_gqa(), 4);
    let t = tensors(&fx);
    assert_eq!(t.len(), 236);
    assert!(!t.iter().any(|d| d.name == "output.weight"), "tied");
    let emb = t.iter().find(|d| d.name == "token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![640, 262144]);
    for l in 0..18 {
        for n in [
            "attn_q_norm",
            "attn_k_norm",
            "post_attention_norm",
            "post_ffw_norm",
        ] {
            let name = format!("blk.{l}.{n}.weight");
            assert!(t.iter().any(|d| d.name == name), "{name}");
        }
    }
}

#[test]
fn gemma3_presets_equal_llama_quantize() {
    let fx = fixture();
    let presets = fx["presets"].as_object().expect("presets");
    assert!(presets.len() >= 19, "only {} presets", presets.len());
    let mut mismatches = Vec::new();
    for (preset, want) in presets {
        let plan = plan_for(preset, &fx);
        let want = want["tensors"].as_object().expect("tensors");
        assert_eq!(want.len(), plan.entries.len(), "{preset}: tensor count");
        mismatches.extend(type_mismatches(preset, &plan, want));
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// The gemma3-specific facts behind the table, spelled out (a regression here names the rule).
#[test]
fn gemma3_rules_tied_embedding_gqa_and_row_fallbacks() {
    let fx = fixture();
    let ty = |plan: &Plan, name: &str| -> GgmlType {
        plan.entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.to)
            .unwrap_or_else(|| panic!("{name} not planned"))
    };
    // Tied token_embd takes the output rule: Q6_K, whose 256-blocks do not fit 640 → Q8_0.
    for p in ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q4_0", "hybrid"] {
        assert_eq!(
            ty(&plan_for(p, &fx), "token_embd.weight"),
            GgmlType::Q8_0,
            "{p}"
        );
    }
    // --pure has no output rule: Q2_K → Q4_0 by the row-width fallback.
    assert_eq!(
        ty(&plan_for("hybrid-pure", &fx), "token_embd.weight"),
        GgmlType::Q4_0
    );
    let q4km = plan_for("Q4_K_M", &fx);
    // 640-wide rows fall back (Q4_K → Q5_0, Q6_K → Q8_0); 1024/2048-wide rows keep K-quants.
    assert_eq!(ty(&q4km, "blk.5.attn_q.weight"), GgmlType::Q5_0);
    assert_eq!(ty(&q4km, "blk.5.ffn_up.weight"), GgmlType::Q5_0);
    assert_eq!(ty(&q4km, "blk.0.attn_v.weight"), GgmlType::Q8_0); // use_more_bits(0, 18)
    assert_eq!(ty(&q4km, "blk.2.attn_v.weight"), GgmlType::Q5_0);
    assert_eq!(ty(&q4km, "blk.0.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty(&q4km, "blk.3.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty(&q4km, "blk.5.attn_output.weight"), GgmlType::Q4_K);
    let n_fallback = q4km.entries.iter().filter(|e| e.fallback.is_some()).count();
    assert_eq!(n_fallback, 90, "18 layers × (q, k, v, gate, up)");
    // Q2_K: n_gqa = 4 → attn_v Q4_K → Q5_0 on 640-wide rows; attn_k stays Q2_K → Q4_0.
    let q2k = plan_for("Q2_K", &fx);
    assert_eq!(ty(&q2k, "blk.7.attn_v.weight"), GgmlType::Q5_0);
    assert_eq!(ty(&q2k, "blk.7.attn_k.weight"), GgmlType::Q4_0);
    assert_eq!(ty(&q2k, "blk.7.ffn_down.weight"), GgmlType::Q3_K);
    // Norms (q/k norms and the post norms included) are never quantized.
    for e in &q2k.entries {
        if e.name.contains("norm") {
            assert_eq!(e.to, Some(GgmlType::F32), "{}", e.name);
        }
    }
}

fn gemma3_model() -> Option<PathBuf> {
    let base = std::env::var_os("GGUFQ_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ggufq")))?;
    let p = base.join("gemma3/gemma-3-270m-q4_k_m.gguf");
    p.is_file().then_some(p)
}

fn sha256_file(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// With the model in the cache (scripts/fetch-gemma3.sh): `ggufq convert` writes files
/// byte-identical to llama-quantize's for Q3_K_M, Q4_K_M, Q5_K_M, hybrid.yaml and hybrid-pure.yaml (hashes of
/// llama-quantize's outputs, recorded from the runs in the fixture's `_meta`).
#[test]
fn gemma3_converted_files_are_byte_identical_to_llama_quantize() {
    let Some(src) = gemma3_model() else {
        eprintln!("skipped: gemma3 model not in the cache (scripts/fetch-gemma3.sh)");
        return;
    };
    let fx = fixture();
    let hashes = fx["_meta"]["sha256"].as_object().expect("_meta.sha256");
    let dir = tempfile::tempdir().unwrap();
    for preset in ["Q3_K_M", "Q4_K_M", "Q5_K_M", "hybrid", "hybrid-pure"] {
        let want = hashes[preset].as_str().expect("hash");
        let out = dir.path().join(format!("{preset}.gguf"));
        let mut o = ggufq::convert::ConvertOptions::new(recipe_for(preset));
        o.output = Some(out.clone());
        o.allow_requantize = true;
        o.manifest = false;
        ggufq::convert::convert(&src, &o).unwrap_or_else(|e| panic!("{preset}: {e}"));
        assert_eq!(sha256_file(&out), want, "{preset}");
        std::fs::remove_file(&out).unwrap();
    }
}
