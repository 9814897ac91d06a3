//! `ggufq recipe search` on an already quantized source (the situation of Gemma 3 270M, which
//! is only published as Q4_K_M): at the source's own size the searched recipe reproduces the
//! source exactly — pairs whose tensors have different types (attn_k Q4_K beside attn_v Q6_K)
//! are kept as they are instead of being forced to one type — and one byte less forces a
//! change. No calibration text: nothing here runs the model.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use ggufq::gguf::GgufFile;
use ggufq::quant::GgmlType;

fn ggufq() -> Command {
    Command::cargo_bin("ggufq").expect("binary")
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn search(src: &Path, dir: &Path, budget: u64, out: &str) -> serde_json::Value {
    let stdout = run_ok(
        ggufq()
            .args(["recipe", "search"])
            .arg(src)
            .args(["--target-size", &budget.to_string(), "--rows", "32"])
            .args(["--json", "--quiet", "--cache-dir"])
            .arg(dir.join("cache"))
            .arg("-o")
            .arg(dir.join(out)),
    );
    serde_json::from_slice(&stdout).expect("json")
}

fn convert(src: &Path, recipe: &Path, out: &Path) -> u64 {
    run_ok(
        ggufq()
            .arg("convert")
            .arg(src)
            .arg("--recipe")
            .arg(recipe)
            .arg("-o")
            .arg(out)
            .args(["--allow-requantize", "--no-progress", "--no-manifest"]),
    );
    std::fs::metadata(out).expect("output").len()
}

#[test]
fn search_at_a_quantized_sources_own_size_keeps_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("tiny-f32.gguf");
    ggufq::synth::write_tiny_model(&f32_path, GgmlType::F32, 11, None).unwrap();
    // The source: llama.cpp's Q4_K_M mix of the tiny model (attn_v Q6_K beside attn_k Q4_K).
    let src = dir.path().join("tiny-q4km.gguf");
    let src_bytes = convert(&f32_path, Path::new("Q4_K_M"), &src);
    let sf = GgufFile::open(&src).unwrap();
    let ty = |n: &str| sf.tensor(n).and_then(|t| t.ty);
    // Two layers: use_more_bits gives layer 1's attn_v Q6_K, layer 0's stays Q4_K.
    assert_eq!(ty("blk.1.attn_k.weight"), Some(GgmlType::Q4_K));
    assert_eq!(ty("blk.1.attn_v.weight"), Some(GgmlType::Q6_K));
    assert_eq!(ty("blk.0.attn_v.weight"), Some(GgmlType::Q4_K));

    let r = search(&src, dir.path(), src_bytes, "same.yaml");
    assert_eq!(r["file_bytes"].as_u64(), Some(src_bytes), "{}", r["units"]);
    assert_eq!(r["predicted_kl"].as_f64(), Some(0.0));
    let units = r["units"].as_array().unwrap();
    let kv: Vec<&serde_json::Value> = units.iter().filter(|u| u["group"] == "attn_kv").collect();
    assert_eq!(kv.len(), 2);
    for u in &kv {
        // The mixed pair is kept; the uniform one takes its own type (a copy as well).
        let want = if u["layer"] == 1 { "keep" } else { "Q4_K" };
        assert_eq!(u["ty"], want, "{u}");
        assert_eq!(u["tensors"].as_array().unwrap().len(), 2, "still one unit");
    }
    let yaml = std::fs::read_to_string(dir.path().join("same.yaml")).unwrap();
    assert!(yaml.contains("type: keep"), "{yaml}");
    // Converted: every tensor's bytes equal the source's.
    let out = dir.path().join("same.gguf");
    assert_eq!(
        convert(&src, &dir.path().join("same.yaml"), &out),
        src_bytes
    );
    let of = GgufFile::open(&out).unwrap();
    assert_eq!(of.tensors.len(), sf.tensors.len());
    for t in &sf.tensors {
        let o = of.tensor(&t.name).unwrap();
        assert_eq!(o.type_id, t.type_id, "{}", t.name);
        assert_eq!(
            of.tensor_data(o).unwrap(),
            sf.tensor_data(t).unwrap(),
            "{}",
            t.name
        );
    }

    // A larger budget cannot do better than the source itself and keeps it too.
    let r = search(&src, dir.path(), src_bytes + 100_000, "more.yaml");
    assert_eq!(r["file_bytes"].as_u64(), Some(src_bytes));
    assert_eq!(r["predicted_kl"].as_f64(), Some(0.0));

    // One byte less: something must be re-quantized, within the budget.
    let r = search(&src, dir.path(), src_bytes - 1, "less.yaml");
    let fb = r["file_bytes"].as_u64().unwrap();
    assert!(fb < src_bytes, "{fb}");
    assert!(r["predicted_kl"].as_f64().unwrap() > 0.0);
    assert!(r["cache"]["proxy_measured"] == 0, "{}", r["cache"]);
    let less = dir.path().join("less.gguf");
    assert_eq!(convert(&src, &dir.path().join("less.yaml"), &less), fb);
}
