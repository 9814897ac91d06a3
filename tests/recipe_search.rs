//! End-to-end `ggufq recipe search` on a tiny synthetic model: the searched recipe converts with
//! `ggufq convert`, the output fits the budget, and a second search with another budget reuses
//! every cached measurement.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use ggufq::quant::GgmlType;

fn ggufq() -> Command {
    Command::cargo_bin("ggufq").expect("binary")
}

fn text() -> String {
    // A few thousand tokens of varied text for the calibration chunks.
    let words = [
        "the", "river", "flows", "north", "of", "a", "quiet", "town", "where", "people", "build",
        "boats", "and", "sing", "songs", "about", "summer", "rain", "in", "1923", ",", ".",
    ];
    let mut s = String::new();
    let mut x: u64 = 12345;
    for i in 0..6000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 33) as usize % words.len()]);
        s.push(if i % 17 == 16 { '\n' } else { ' ' });
    }
    s
}

fn search(model: &Path, dir: &Path, budget: &[&str], out: &str) -> serde_json::Value {
    let o = ggufq()
        .args(["recipe", "search"])
        .arg(model)
        .args(budget)
        .arg("-f")
        .arg(dir.join("text.txt"))
        .args([
            "--ctx", "64", "--chunks", "2", "--rows", "64", "-t", "2", "--json",
        ])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("-o")
        .arg(dir.join(out))
        .output()
        .expect("run");
    assert!(
        o.status.success(),
        "search failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("json")
}

fn convert(model: &Path, recipe: &Path, out: &Path) -> u64 {
    let o = ggufq()
        .arg("convert")
        .arg(model)
        .arg("--recipe")
        .arg(recipe)
        .arg("-o")
        .arg(out)
        .args(["--no-progress", "--no-manifest"])
        .output()
        .expect("run");
    assert!(
        o.status.success(),
        "convert failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::metadata(out).expect("output").len()
}

#[test]
fn search_converts_within_budget_and_second_run_hits_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-f32.gguf");
    ggufq::synth::write_tiny_model(&model, GgmlType::F32, 7, None).unwrap();
    std::fs::write(dir.path().join("text.txt"), text()).unwrap();

    // First search: 5 bits per weight.
    let r1 = search(&model, dir.path(), &["--target-bpw", "5"], "a.yaml");
    let c1 = &r1["cache"];
    assert!(c1["proxy_measured"].as_u64().unwrap() > 0, "{c1}");
    assert_eq!(c1["proxy_cached"].as_u64().unwrap(), 0);
    assert!(c1["kl_measured"].as_u64().unwrap() >= 4, "{c1}");
    assert_eq!(r1["calibrated"], true);
    // Every group was calibrated with a positive KL.
    for (g, c) in r1["calibration"].as_object().unwrap() {
        assert!(c["kl"].as_f64().unwrap() > 0.0, "{g}: {c}");
    }
    let budget1 = r1["budget_bytes"].as_u64().unwrap();
    let size1 = convert(
        &model,
        &dir.path().join("a.yaml"),
        &dir.path().join("a.gguf"),
    );
    assert!(size1 <= budget1, "{size1} > {budget1}");
    assert_eq!(
        size1,
        r1["file_bytes"].as_u64().unwrap(),
        "predicted size is exact"
    );
    // k/v and gate/up got the same type in every layer.
    for u in r1["units"].as_array().unwrap() {
        let g = u["group"].as_str().unwrap();
        if g == "attn_kv" || g == "ffn_gate_up" {
            assert_eq!(u["tensors"].as_array().unwrap().len(), 2, "{u}");
        }
    }

    // Second search: a smaller byte budget; nothing is measured again.
    let target = size1 * 85 / 100;
    let r2 = search(
        &model,
        dir.path(),
        &["--target-size", &target.to_string()],
        "b.yaml",
    );
    let c2 = &r2["cache"];
    assert_eq!(c2["proxy_measured"].as_u64().unwrap(), 0, "{c2}");
    assert_eq!(c2["kl_measured"].as_u64().unwrap(), 0, "{c2}");
    assert_eq!(c2["proxy_cached"], c1["proxy_measured"]);
    assert_eq!(c2["kl_cached"], c1["kl_measured"]);
    let size2 = convert(
        &model,
        &dir.path().join("b.yaml"),
        &dir.path().join("b.gguf"),
    );
    assert!(size2 <= target, "{size2} > {target}");
    // Less room cannot predict a lower error.
    assert!(r2["predicted_kl"].as_f64().unwrap() >= r1["predicted_kl"].as_f64().unwrap());

    // Calibration per layer range: one measurement per group and layer (2 layers), the
    // layer-less groups come from the cache.
    let r3 = search(
        &model,
        dir.path(),
        &["--target-size", &target.to_string(), "--calib-split", "2"],
        "s.yaml",
    );
    let cal3 = r3["calibration"].as_object().unwrap();
    let split: Vec<&String> = cal3.keys().filter(|k| k.contains('@')).collect();
    assert!(
        split.iter().any(|k| k.ends_with("@0-0")) && split.iter().any(|k| k.ends_with("@1-1")),
        "{split:?}"
    );
    assert_eq!(
        r3["cache"]["kl_measured"].as_u64().unwrap() as usize,
        split.len()
    );
    assert_eq!(
        r3["cache"]["kl_cached"].as_u64().unwrap() as usize,
        cal3.len() - split.len()
    );
    let size3 = convert(
        &model,
        &dir.path().join("s.yaml"),
        &dir.path().join("s.gguf"),
    );
    assert!(size3 <= target, "{size3} > {target}");

    // A budget below the smallest candidates is a clear error, and no recipe is written.
    let o = ggufq()
        .args(["recipe", "search"])
        .arg(&model)
        .args(["--target-size", "10KiB", "--quiet"])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("-o")
        .arg(dir.path().join("c.yaml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("too small"));
    assert!(!dir.path().join("c.yaml").exists());
}
