//! `ggufq ppl` on tiny synthetic models: perplexity, KL-divergence in one run and via a saved
//! log-prob file (the two routes must agree exactly).

use assert_cmd::Command;
use ggufq::quant::GgmlType;

fn text() -> String {
    let p = ggufq::testutil::testdata_dir().join("wikitext-2-raw-test.txt");
    let t = std::fs::read_to_string(p).expect("wikitext");
    t.chars().take(20_000).collect()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = Command::cargo_bin("ggufq")
        .unwrap()
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).expect("json output")
}

#[test]
fn ppl_and_kld_routes_agree() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.gguf");
    let q = d.path().join("q.gguf");
    ggufq::synth::write_tiny_model(&base, GgmlType::F32, 5, None).unwrap();
    ggufq::synth::write_tiny_model(&q, GgmlType::Q4_0, 5, None).unwrap();
    let txt = d.path().join("t.txt");
    std::fs::write(&txt, text()).unwrap();
    let (b, qs, t) = (
        base.to_str().unwrap(),
        q.to_str().unwrap(),
        txt.to_str().unwrap(),
    );

    let p = json(&["ppl", b, "-f", t, "-c", "64", "--chunks", "3", "--json"]);
    let r = &p["result"];
    assert_eq!(r["n_chunks"], 3);
    assert_eq!(r["n_scored"], 3 * 31);
    let ppl = r["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl.is_finite());

    let logits = d.path().join("base.logits");
    let ls = logits.to_str().unwrap();
    let p2 = json(&[
        "ppl",
        b,
        "-f",
        t,
        "-c",
        "64",
        "--chunks",
        "3",
        "--save-logits",
        ls,
        "--json",
    ]);
    assert!((p2["result"]["ppl"].as_f64().unwrap() - ppl).abs() < 1e-5 * ppl);
    assert!(logits.is_file());

    let same = json(&["ppl", b, "--kl-logits", ls, "--json"]);
    assert!(same["kld"]["kld"].as_f64().unwrap().abs() < 1e-4);
    assert_eq!(same["kld"]["same_top"], 1.0);

    let k1 = json(&[
        "ppl",
        qs,
        "-f",
        t,
        "-c",
        "64",
        "--chunks",
        "3",
        "--kl-base",
        b,
        "--json",
    ]);
    let k2 = json(&["ppl", qs, "--kl-logits", ls, "--json"]);
    let (a, c) = (&k1["kld"], &k2["kld"]);
    assert!(a["kld"].as_f64().unwrap() > 1e-5);
    assert_eq!(a["kld"], c["kld"]);
    assert_eq!(a["same_top"], c["same_top"]);
    assert_eq!(a["n_tokens"], 93);
    assert!((a["ppl_base"].as_f64().unwrap() - ppl).abs() < 1e-3 * ppl);
}

#[test]
fn too_short_text_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.gguf");
    ggufq::synth::write_tiny_model(&m, GgmlType::Q8_0, 1, None).unwrap();
    let txt = d.path().join("t.txt");
    std::fs::write(&txt, "just a few words").unwrap();
    Command::cargo_bin("ggufq")
        .unwrap()
        .args([
            "ppl",
            m.to_str().unwrap(),
            "-f",
            txt.to_str().unwrap(),
            "-c",
            "64",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("at least 128"));
}
