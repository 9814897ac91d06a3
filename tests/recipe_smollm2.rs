//! Presets on the real SmolLM2-135M file (metadata read from the GGUF): the per-tensor types
//! llama-quantize chooses for this model, written out by hand from its rules.
//! Skipped with a notice when the model has not been fetched (see shared/testdata/README.md).

use ggufq::convert::plan_file;
use ggufq::gguf::GgufFile;
use ggufq::quant::GgmlType::{self, *};
use ggufq::recipe::{Plan, Recipe};

fn model() -> Option<GgufFile> {
    match ggufq::testutil::smollm2_path() {
        Some(p) => Some(GgufFile::open(p).unwrap()),
        None => {
            eprintln!("notice: SmolLM2 not found (GGUFQ_SMOLLM2 or ~/.cache/ggufq); test skipped");
            None
        }
    }
}

fn ty(p: &Plan, name: &str) -> GgmlType {
    p.entries
        .iter()
        .find(|e| e.name == name)
        .unwrap()
        .to
        .unwrap()
}

/// llama.cpp's use_more_bits for SmolLM2's 30 layers: i < 3, i >= 26, or (i - 3) % 3 == 2.
fn more_bits(i: u64) -> bool {
    !(3..26).contains(&i) || (i - 3) % 3 == 2
}

#[test]
fn model_info_from_metadata() {
    let Some(f) = model() else { return };
    let m = ggufq::convert::model_info(&f);
    assert_eq!(m.arch, "llama");
    assert_eq!(m.n_layer, 30);
    assert_eq!((m.n_head, m.n_head_kv), (9, 3));
    assert_eq!(m.n_expert, 0);
}

#[test]
fn q4_k_m() {
    let Some(f) = model() else { return };
    let p = plan_file(&f, &Recipe::load("Q4_K_M").unwrap(), None).unwrap();
    assert_eq!(p.file_type, 15);
    assert_eq!(ty(&p, "token_embd.weight"), Q8_0);
    for i in 0..30u64 {
        let t = |n: &str| ty(&p, &format!("blk.{i}.{n}.weight"));
        for n in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
            assert_eq!(t(n), Q5_0, "{n} {i}");
        }
        assert_eq!(
            t("attn_v"),
            if more_bits(i) { Q8_0 } else { Q5_0 },
            "attn_v {i}"
        );
        assert_eq!(
            t("ffn_down"),
            if more_bits(i) { Q6_K } else { Q4_K },
            "ffn_down {i}"
        );
        assert_eq!(t("attn_norm"), F32);
    }
    assert_eq!(p.entries.len(), f.tensors.len());
}

#[test]
fn q2_k_q3_k_m_q5_k_s() {
    let Some(f) = model() else { return };
    let p = plan_file(&f, &Recipe::load("Q2_K").unwrap(), None).unwrap();
    assert_eq!(ty(&p, "blk.3.attn_v.weight"), Q4_0, "n_gqa 3 → Q3_K → Q4_0");
    assert_eq!(ty(&p, "blk.3.ffn_down.weight"), Q3_K);
    assert_eq!(ty(&p, "blk.3.attn_output.weight"), Q4_0);
    assert_eq!(ty(&p, "blk.3.ffn_up.weight"), Q4_0);
    let p = plan_file(&f, &Recipe::load("Q3_K_M").unwrap(), None).unwrap();
    assert_eq!(
        ty(&p, "blk.0.attn_v.weight"),
        Q5_1,
        "Q5_K → Q5_1 on 576 rows"
    );
    assert_eq!(ty(&p, "blk.2.attn_v.weight"), Q5_0, "Q4_K → Q5_0");
    assert_eq!(ty(&p, "blk.0.ffn_down.weight"), Q5_K, "i < 30/16");
    assert_eq!(ty(&p, "blk.2.ffn_down.weight"), Q4_K);
    let p = plan_file(&f, &Recipe::load("Q5_K_S").unwrap(), None).unwrap();
    assert_eq!(ty(&p, "blk.9.attn_q.weight"), Q5_1);
    assert_eq!(ty(&p, "blk.9.ffn_down.weight"), Q5_K);
    assert_eq!(ty(&p, "token_embd.weight"), Q8_0);
}
