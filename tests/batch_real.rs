//! `ggufq batch` driving the real ggufq binary: `convert`, `ppl --json` (perplexity and KLD on
//! the CPU) and `bench` (when a hardware GPU adapter exists) on a tiny synthetic llama, and on
//! SmolLM2 when it has been fetched.

use std::path::{Path, PathBuf};
use std::process::Command;

use ggufq::gguf::GgufFile;
use ggufq::quant::GgmlType;
use ggufq::synth::{write_model, SynthOptions, SynthShape};
use serde_json::Value;

fn json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// A tiny F16 llama (256 wide, 2 layers, synthetic byte-level BPE vocabulary).
fn tiny_source(dir: &Path) -> PathBuf {
    let p = dir.join("tiny-f16.gguf");
    let opts = SynthOptions {
        shape: SynthShape::named("tiny").unwrap(),
        ty: GgmlType::F16,
        seed: 7,
        tokenizer_from: None,
    };
    write_model(&p, &opts).unwrap();
    p
}

fn batch(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ggufq"))
        .arg("batch")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn real_convert_outputs_resume_and_report() {
    let d = tempfile::tempdir().unwrap();
    tiny_source(d.path());
    let text: String = (0..200)
        .map(|i| format!("The number {i} follows {}. ", i + 1))
        .collect();
    std::fs::write(d.path().join("text.txt"), text).unwrap();
    std::fs::write(
        d.path().join("pipeline.yaml"),
        "\
output: out
models: [tiny-f16.gguf]
recipes:
  - Q8_0
  - { type: Q5_1 }
  - { type: Q4_0, name: pure-q4_0 }
validation:
  text: text.txt
  ctx: 32
  chunks: 2
  bench: auto
  bench_args: [-p, '8', -n, '4', -r, '1']
",
    )
    .unwrap();
    let out = batch(d.path(), &["pipeline.yaml", "-j", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let src = GgufFile::open(d.path().join("tiny-f16.gguf")).unwrap();
    for (variant, expect_blk_q) in [("Q8_0", "Q8_0"), ("Q5_1", "Q5_1"), ("pure-q4_0", "Q4_0")] {
        let id = format!("tiny-f16__{variant}");
        let r = json(&d.path().join(format!("out/results/{id}.json")));
        assert_eq!(r["status"], "ok", "{r}");
        let bench = r["bench_status"].as_str().unwrap();
        assert!(bench == "ok" || bench.starts_with("skipped: "), "{bench}");
        if bench == "ok" {
            assert!(r["tps_gen"].as_f64().unwrap() > 0.0, "{r}");
        }
        // The output is a valid GGUF with the recipe's types and the source's tensors.
        let f = GgufFile::open(d.path().join(format!("out/{id}.gguf"))).unwrap();
        assert_eq!(f.tensors.len(), src.tensors.len());
        let q = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.type_name(), expect_blk_q, "{id}");
        assert_eq!(r["size_bytes"].as_u64().unwrap(), f.file_size);
        // bpw read from convert's manifest.
        let bpw = r["bpw"].as_f64().unwrap();
        assert!(bpw > 4.0 && bpw < 9.0, "{id}: {bpw}");
        // Perplexity and KLD against the source, from `ggufq ppl --kl-base --json`.
        assert!(r["ppl"].as_f64().unwrap() > 1.0, "{r}");
        assert!(r["kld"].as_f64().unwrap() >= 0.0, "{r}");
        assert!(r["base_ppl"].as_f64().unwrap() > 1.0, "{r}");
        let m = json(&d.path().join(format!("out/{id}.gguf.manifest.json")));
        assert_eq!(m["source"]["sha256"], r["source_sha256"]);
    }
    let rep = json(&d.path().join("out/report/results.json"));
    let sizes: Vec<u64> = ["Q8_0", "Q5_1", "pure-q4_0"]
        .iter()
        .map(|v| {
            rep["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["variant"] == *v)
                .unwrap()["size_bytes"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
    // Fewer bits, more divergence from the F16 source.
    let kld: Vec<f64> = ["Q8_0", "Q5_1", "pure-q4_0"]
        .iter()
        .map(|v| {
            let r = rep["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["variant"] == *v)
                .unwrap();
            r["kld"].as_f64().unwrap()
        })
        .collect();
    assert!(kld[0] < kld[1] && kld[1] < kld[2], "{kld:?}");
    let md = std::fs::read_to_string(d.path().join("out/report/summary.md")).unwrap();
    assert!(md.contains("| tiny-f16 | pure-q4_0 |"), "{md}");

    // Rerun: everything matches, nothing is converted again.
    let out = batch(d.path(), &["pipeline.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": 0 run, 4 reused, 0 failed"), "{stdout}");

    // A lost output is made again, alone.
    std::fs::remove_file(d.path().join("out/tiny-f16__Q5_1.gguf")).unwrap();
    let out = batch(d.path(), &["pipeline.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": 1 run, 3 reused, 0 failed"), "{stdout}");
    assert!(d.path().join("out/tiny-f16__Q5_1.gguf").is_file());

    // A recipe convert refuses fails that job only, with convert's own message.
    std::fs::write(
        d.path().join("pipeline.yaml"),
        "output: out\nmodels: [tiny-f16.gguf]\nrecipes: [Q8_0, NOT_A_TYPE]\nvalidation: {bench: never}\n",
    )
    .unwrap();
    let out = batch(d.path(), &["pipeline.yaml", "-q"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&d.path().join("out/results/tiny-f16__NOT_A_TYPE.json"));
    assert_eq!(r["status"], "failed");
    assert!(r["error"].as_str().unwrap().contains("NOT_A_TYPE"), "{r}");
    assert_eq!(
        json(&d.path().join("out/results/tiny-f16__Q8_0.json"))["status"],
        "ok"
    );
}

/// The real model end to end on the CPU: convert (requantizing SmolLM2's Q4_1), perplexity and
/// KL-divergence against the source, gates and report. Needs SmolLM2 (scripts/fetch-model.sh,
/// which the test script runs); without it there is nothing to measure and the test says so.
#[test]
fn smollm2_convert_ppl_kld_report() {
    let Some(model) = ggufq::testutil::smollm2_path() else {
        eprintln!("SmolLM2 not fetched (scripts/fetch-model.sh): skipping the real-model batch");
        return;
    };
    let text = ggufq::testutil::testdata_dir().join("wikitext-2-raw-test.txt");
    let hybrid = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes/hybrid.yaml");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("pipeline.yaml"),
        format!(
            "\
output: out
allow_requantize: true
models: [{{ path: '{}', name: smollm2 }}]
recipes:
  - Q8_0
  - {{ recipe: '{}', name: hybrid }}
validation: {{ text: '{}', ctx: 64, chunks: 1, bench: never }}
gates: {{ max_kld: 0.05 }}
",
            model.display(),
            hybrid.display(),
            text.display()
        ),
    )
    .unwrap();
    let out = batch(d.path(), &["pipeline.yaml", "-j", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // hybrid (attention Q5_K, the rest Q2_K) is far from its source: the KLD gate fails it.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let src = json(&d.path().join("out/results/smollm2__source.json"));
    let q8 = json(&d.path().join("out/results/smollm2__Q8_0.json"));
    let hy = json(&d.path().join("out/results/smollm2__hybrid.json"));
    for r in [&src, &q8, &hy] {
        assert_eq!(r["status"], "ok", "{r}");
        let ppl = r["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{r}");
    }
    let (k8, kh) = (q8["kld"].as_f64().unwrap(), hy["kld"].as_f64().unwrap());
    assert!(k8 >= 0.0 && k8 < kh, "KLD Q8_0 {k8} vs hybrid {kh}");
    // The KL run reports the source's perplexity too; the increase is taken against it.
    let base = q8["base_ppl"].as_f64().unwrap();
    assert!(base.is_finite() && base > 1.0, "{q8}");
    let rep = json(&d.path().join("out/report/results.json"));
    let row = |v: &str| {
        rep["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["variant"] == v)
            .unwrap()
            .clone()
    };
    assert_eq!(row("Q8_0")["verdict"], "pass");
    let inc = row("Q8_0")["ppl_increase"].as_f64().unwrap();
    assert!((inc - (q8["ppl"].as_f64().unwrap() / base - 1.0)).abs() < 1e-9);
    assert_eq!(row("hybrid")["verdict"], "fail");
    assert_eq!(rep["decisions"][0]["smallest_passing"], "Q8_0");
    assert!(d.path().join("out/report/size_vs_kld.png").is_file());
}
