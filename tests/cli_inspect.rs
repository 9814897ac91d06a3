//! CLI tests for `ggufq inspect` and `ggufq diff` on small synthetic files (insta snapshots,
//! temporary paths filtered to `[DIR]`), plus exit codes.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ggufq::gguf::{Array, GgufWriter, TensorSpec, Value, ValueType};
use ggufq::quant::GgmlType;

struct Model {
    meta: Vec<(String, Value)>,
    tensors: Vec<(TensorSpec, Vec<u8>)>,
}

impl Model {
    /// A 3-block llama-shaped toy with a hybrid of types, a long array, a long string and a
    /// tensor of a type id ggufq does not know.
    fn toy() -> Model {
        let s = |x: &str| Value::String(x.into());
        let meta = vec![
            ("general.architecture".into(), s("llama")),
            ("general.name".into(), s("Toy")),
            ("llama.block_count".into(), Value::U32(3)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            ("general.file_type".into(), Value::U32(15)),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::new(
                    ValueType::String,
                    (0..20).map(|i| s(&format!("tok{i}"))).collect(),
                )),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(Array::new(
                    ValueType::F32,
                    vec![Value::F32(0.5), Value::F32(-1.0)],
                )),
            ),
            (
                "tokenizer.chat_template".into(),
                s(&"{{ message }} ".repeat(10)),
            ),
            ("general.quantization_version".into(), Value::U32(2)),
        ];
        let mut specs =
            vec![TensorSpec::new("token_embd.weight", vec![256, 8], GgmlType::Q8_0).unwrap()];
        let q = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K];
        for (b, qt) in q.iter().enumerate() {
            specs.push(
                TensorSpec::new(
                    format!("blk.{b}.attn_norm.weight"),
                    vec![256],
                    GgmlType::F32,
                )
                .unwrap(),
            );
            specs.push(
                TensorSpec::new(format!("blk.{b}.attn_q.weight"), vec![256, 256], *qt).unwrap(),
            );
            specs.push(
                TensorSpec::new(
                    format!("blk.{b}.ffn_down.weight"),
                    vec![256, 64],
                    GgmlType::Q5_0,
                )
                .unwrap(),
            );
        }
        specs.push(TensorSpec {
            name: "blk.2.mystery".into(),
            dims: vec![16],
            type_id: 250,
            n_bytes: 10,
        });
        specs.push(TensorSpec::new("output_norm.weight", vec![256], GgmlType::F32).unwrap());
        let tensors = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let d = (0..s.n_bytes)
                    .map(|j| (j as u8).wrapping_mul(7) ^ i as u8)
                    .collect();
                (s, d)
            })
            .collect();
        Model { meta, tensors }
    }

    fn write(&self, path: &Path) {
        let specs = self.tensors.iter().map(|(s, _)| s.clone()).collect();
        let mut w = GgufWriter::new(Vec::new(), 3, 32, &self.meta, specs).unwrap();
        for (_, d) in &self.tensors {
            w.write_tensor(d).unwrap();
        }
        std::fs::write(path, w.finish().unwrap()).unwrap();
    }
}

fn ggufq(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("ggufq")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn toy_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("toy.gguf");
    Model::toy().write(&p);
    (dir, p)
}

/// Snapshot `value` with the temporary directory's path replaced by `[DIR]` (commands run
/// inside it with relative paths, so it rarely appears).
macro_rules! snap {
    ($dir:expr, $name:expr, $value:expr) => {
        let v = $value.replace(&$dir.path().display().to_string(), "[DIR]");
        insta::assert_snapshot!($name, v);
    };
}

#[test]
fn inspect_text() {
    let (dir, _) = toy_dir();
    let (code, out, err) = ggufq(dir.path(), &["inspect", "toy.gguf"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Q4_K_M (15)"));
    assert!(out.contains("unknown(250)"));
    assert!(out.contains("(20 items)"));
    snap!(dir, "inspect_text", out);
}

#[test]
fn inspect_full_layers_filter_sha256() {
    let (dir, _) = toy_dir();
    let (code, out, _) = ggufq(
        dir.path(),
        &["inspect", "toy.gguf", "--full", "--no-tensors"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"tok19\"") && !out.contains("items)"));
    snap!(dir, "inspect_full", out);

    let (code, out, _) = ggufq(
        dir.path(),
        &["inspect", "toy.gguf", "--layers", "--no-metadata"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("attn_q") && out.contains("Q6_K"));
    snap!(dir, "inspect_layers", out);

    let (code, out, _) = ggufq(
        dir.path(),
        &[
            "inspect",
            "toy.gguf",
            "--filter",
            r"attn_q|^output",
            "--sha256",
            "--no-metadata",
        ],
    );
    assert_eq!(code, 0);
    assert!(!out.contains("ffn_down"));
    snap!(dir, "inspect_filter_sha256", out);
}

#[test]
fn inspect_json_schema() {
    let (dir, path) = toy_dir();
    let (code, out, _) = ggufq(dir.path(), &["inspect", "toy.gguf", "--json", "--sha256"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["schema"], "ggufq.inspect/1");
    assert_eq!(
        j["summary"]["parameter_count"],
        256 * 8 + 3 * (256 + 256 * 256 + 256 * 64) + 16 + 256
    );
    assert_eq!(j["metadata"]["tokenizer.ggml.tokens"]["len"], 20);
    assert!(
        j["metadata"]["tokenizer.ggml.tokens"]
            .get("value")
            .is_none(),
        "long arrays summarised"
    );
    assert_eq!(
        j["metadata"]["tokenizer.ggml.scores"]["value"],
        serde_json::json!([0.5, -1.0])
    );
    assert_eq!(
        j["metadata"]["llama.attention.layer_norm_rms_epsilon"]["value"],
        serde_json::json!(1e-5)
    );
    // Hashes agree with hashing the bytes ourselves.
    let f = ggufq::gguf::GgufFile::open(&path).unwrap();
    use sha2::Digest;
    for (t, jt) in f.tensors.iter().zip(j["tensors"].as_array().unwrap()) {
        let h = sha2::Sha256::digest(f.tensor_data(t).unwrap());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(jt["sha256"], hex);
        assert_eq!(jt["file_offset"], f.data_offset + t.offset);
    }
    snap!(dir, "inspect_json", out);

    let (_, full, _) = ggufq(
        dir.path(),
        &["inspect", "toy.gguf", "--json", "--full", "--filter", "^$"],
    );
    let j: serde_json::Value = serde_json::from_str(&full).unwrap();
    assert_eq!(j["metadata"]["tokenizer.ggml.tokens"]["value"][19], "tok19");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 0);
}

#[test]
fn diff_reports_differences_and_exit_codes() {
    let (dir, _) = toy_dir();
    let (code, out, _) = ggufq(dir.path(), &["diff", "toy.gguf", "toy.gguf"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("no differences"));

    let mut m = Model::toy();
    m.meta[1].1 = Value::String("Toy v2".into());
    m.meta.retain(|(k, _)| k != "tokenizer.chat_template");
    m.meta
        .push(("general.license".into(), Value::String("mit".into())));
    m.tensors[2].0 =
        TensorSpec::new("blk.0.attn_q.weight", vec![256, 256], GgmlType::Q5_K).unwrap();
    m.tensors[2].1 = vec![1; m.tensors[2].0.n_bytes as usize];
    m.tensors[4].1[0] ^= 1; // blk.1.attn_norm data
    m.tensors.retain(|(s, _)| s.name != "output_norm.weight");
    m.tensors.push((
        TensorSpec::new("output.weight", vec![256, 4], GgmlType::Q8_0).unwrap(),
        vec![0; 1088],
    ));
    m.write(&dir.path().join("b.gguf"));

    let (code, out, _) = ggufq(dir.path(), &["diff", "toy.gguf", "b.gguf"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("3 metadata difference(s), 4 tensor difference(s)"),
        "{out}"
    );
    snap!(dir, "diff_text", out);

    let (code, out, _) = ggufq(dir.path(), &["diff", "toy.gguf", "b.gguf", "--json"]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["identical"], false);
    let what: Vec<&str> = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["differs"].as_str().unwrap())
        .collect();
    assert_eq!(what, ["type", "data", "only in A", "only in B"]);
    snap!(dir, "diff_json", out);

    // Without data hashing the data-only change is not seen.
    let (code, out, _) = ggufq(dir.path(), &["diff", "toy.gguf", "b.gguf", "--no-data"]);
    assert_eq!(code, 1);
    assert!(out.contains("3 tensor difference(s)"), "{out}");
}

#[test]
fn bad_input_exit_codes() {
    let (dir, path) = toy_dir();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(dir.path().join("cut.gguf"), &bytes).unwrap();
    let (code, out, err) = ggufq(dir.path(), &["inspect", "cut.gguf"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: cut.gguf: invalid GGUF at byte "),
        "{err}"
    );
    assert!(
        err.contains("tensor 'output_norm.weight'") && err.contains("runs past the end"),
        "{err}"
    );

    let (code, _, err) = ggufq(dir.path(), &["diff", "toy.gguf", "cut.gguf"]);
    assert_eq!(code, 2, "{err}");

    let (code, _, err) = ggufq(dir.path(), &["inspect", "toy.gguf", "--filter", "("]);
    assert_eq!(code, 2);
    assert!(err.contains("--filter"), "{err}");

    let (code, _, _) = ggufq(dir.path(), &["inspect"]);
    assert_eq!(code, 2, "clap usage error");
}

#[test]
fn inspect_smollm2_layers() {
    let Some(p) = ggufq::testutil::smollm2_path() else {
        eprintln!("SKIPPED inspect_smollm2_layers: SmolLM2 not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = ggufq(
        dir.path(),
        &["inspect", p.to_str().unwrap(), "--layers", "--no-metadata"],
    );
    assert_eq!(code, 0);
    let out = out.replace(&p.display().to_string(), "[SMOLLM2]");
    insta::assert_snapshot!("smollm2_layers", out);
}
