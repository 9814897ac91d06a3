//! Synthetic models (`bench --synth SHAPE:MIX`) get exactly the tensor types `ggufq convert`
//! writes for the same preset or recipe: an F32 synthetic model is converted with the CLI and
//! every tensor's type is compared with the synthetic mix of that name.
#![cfg(feature = "gpu")]

use assert_cmd::Command;
use ggufq::gguf::GgufFile;
use ggufq::gpu::source::Mix;
use ggufq::gpu::{Shape, SynthSource, WeightSource};

#[test]
fn synth_mixes_equal_convert_presets_and_hybrid_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape::named("tiny").unwrap();
    let f32src = SynthSource::new(shape, Mix::parse("f32").unwrap(), "f32").unwrap();
    let src_path = dir.path().join("f32.gguf");
    f32src.write_gguf(&src_path).unwrap();
    let hybrid = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/hybrid.yaml");
    for (mix, recipe) in [
        ("q4_k_m", "Q4_K_M"),
        ("q4_0", "Q4_0"),
        ("q8_0", "Q8_0"),
        ("q2_k", "Q2_K"),
        ("q2_k_mix", "Q2_K"),
        ("hybrid", hybrid),
    ] {
        let out = dir.path().join(format!("{mix}.gguf"));
        Command::cargo_bin("ggufq")
            .unwrap()
            .args(["convert", src_path.to_str().unwrap(), "-r", recipe])
            .args([
                "-o",
                out.to_str().unwrap(),
                "--no-progress",
                "--no-manifest",
            ])
            .assert()
            .success();
        let conv = GgufFile::open(&out).unwrap();
        let synth = SynthSource::new(shape, Mix::parse(mix).unwrap(), mix).unwrap();
        let list = synth.tensor_list();
        assert_eq!(list.len(), conv.tensors.len(), "{mix}");
        for (name, ty, dims) in &list {
            let t = conv.tensor(name).unwrap();
            assert_eq!(Some(*ty), t.ty, "{mix}: {name}");
            assert_eq!(dims, &t.dims, "{mix}: {name}");
        }
        assert_eq!(
            conv.get_u64("general.file_type"),
            Some(synth.file_type() as u64),
            "{mix}"
        );
        // The written synthetic file carries the same types.
        let sp = dir.path().join(format!("synth-{mix}.gguf"));
        synth.write_gguf(&sp).unwrap();
        let sf = GgufFile::open(&sp).unwrap();
        for (name, ty, _) in &list {
            assert_eq!(sf.tensor(name).unwrap().ty, Some(*ty), "{mix}: {name}");
        }
    }
    // Mixes are really different: Q4_K_M has Q6_K ffn_down somewhere, hybrid Q5_K attention.
    let q4km = SynthSource::new(shape, Mix::parse("q4_k_m").unwrap(), "a").unwrap();
    assert!(q4km
        .tensor_list()
        .iter()
        .any(|(n, t, _)| n.contains("ffn_down") && t.name() == "Q6_K"));
    let hy = SynthSource::new(shape, Mix::parse("hybrid").unwrap(), "b").unwrap();
    assert_eq!(
        hy.type_of("blk.0.attn_q.weight").map(|t| t.name()),
        Some("Q5_K")
    );
    assert!(Mix::load("nonsense").is_err());
    assert!(Mix::load("/nonexistent/r.yaml").is_err());
}
