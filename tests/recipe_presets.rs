//! llama.cpp preset mixes and recipe rules on synthetic llama tensor lists.
//!
//! Expected types are llama-quantize's documented behaviour, written out by hand per preset
//! (not derived from the implementation under test).

use std::path::Path;

use ggufq::quant::GgmlType::{self, *};
use ggufq::recipe::{build_plan, ModelInfo, Plan, PlanOptions, Reason, Recipe, TensorDesc};

fn desc(name: &str, dims: &[u64], ty: GgmlType) -> TensorDesc {
    let n: u64 = dims.iter().product();
    TensorDesc {
        name: name.into(),
        dims: dims.to_vec(),
        type_id: ty.id(),
        ty: Some(ty),
        n_bytes: ty.bytes_for(n).unwrap(),
    }
}

/// A llama model: `n_layer` layers, width `e`, kv width `kv`, ffn width `ff`, vocab `v`.
fn llama(n_layer: u64, e: u64, kv: u64, ff: u64, v: u64, tied: bool) -> Vec<TensorDesc> {
    let mut t = vec![desc("token_embd.weight", &[e, v], F16)];
    for i in 0..n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        t.push(desc(&b("attn_norm.weight"), &[e], F32));
        t.push(desc(&b("attn_q.weight"), &[e, e], F16));
        t.push(desc(&b("attn_k.weight"), &[e, kv], F16));
        t.push(desc(&b("attn_v.weight"), &[e, kv], F16));
        t.push(desc(&b("attn_output.weight"), &[e, e], F16));
        t.push(desc(&b("ffn_norm.weight"), &[e], F32));
        t.push(desc(&b("ffn_gate.weight"), &[e, ff], F16));
        t.push(desc(&b("ffn_up.weight"), &[e, ff], F16));
        t.push(desc(&b("ffn_down.weight"), &[ff, e], F16));
    }
    t.push(desc("output_norm.weight", &[e], F32));
    if !tied {
        t.push(desc("output.weight", &[e, v], F16));
    }
    t
}

fn synth32() -> (ModelInfo, Vec<TensorDesc>) {
    let m = ModelInfo {
        arch: "llama".into(),
        n_layer: 32,
        n_head: 32,
        n_head_kv: 8,
        n_expert: 0,
    };
    (m, llama(32, 4096, 1024, 1024, 32000, false))
}

fn smol() -> (ModelInfo, Vec<TensorDesc>) {
    let m = ModelInfo {
        arch: "llama".into(),
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        n_expert: 0,
    };
    (m, llama(30, 576, 192, 1536, 49152, true))
}

fn plan(recipe: &str, m: &ModelInfo, t: &[TensorDesc]) -> Plan {
    let r = Recipe::load(recipe)
        .unwrap_or_else(|_| Recipe::from_str_in(recipe, "t.yaml", Path::new(".")).unwrap());
    build_plan(&r, m, t, PlanOptions::default()).unwrap()
}

fn ty(p: &Plan, name: &str) -> GgmlType {
    p.entries
        .iter()
        .find(|e| e.name == name)
        .unwrap()
        .to
        .unwrap()
}

const MORE_BITS_32: &[u64] = &[0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];

#[test]
fn q4_k_m_on_synth32() {
    let (m, t) = synth32();
    let p = plan("Q4_K_M", &m, &t);
    assert_eq!(p.file_type, 15);
    assert_eq!(ty(&p, "token_embd.weight"), Q4_K);
    assert_eq!(ty(&p, "output.weight"), Q6_K);
    assert_eq!(ty(&p, "output_norm.weight"), F32);
    for i in 0..32u64 {
        let hi = if MORE_BITS_32.contains(&i) {
            Q6_K
        } else {
            Q4_K
        };
        assert_eq!(ty(&p, &format!("blk.{i}.attn_v.weight")), hi, "attn_v {i}");
        assert_eq!(
            ty(&p, &format!("blk.{i}.ffn_down.weight")),
            hi,
            "ffn_down {i}"
        );
        for n in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
            assert_eq!(ty(&p, &format!("blk.{i}.{n}.weight")), Q4_K, "{n} {i}");
        }
        assert_eq!(ty(&p, &format!("blk.{i}.attn_norm.weight")), F32);
    }
}

#[test]
fn other_k_presets_on_synth32() {
    let (m, t) = synth32();
    let p = plan("Q2_K", &m, &t);
    assert_eq!(ty(&p, "blk.7.attn_v.weight"), Q4_K, "n_gqa = 4");
    assert_eq!(ty(&p, "blk.7.ffn_down.weight"), Q3_K);
    assert_eq!(ty(&p, "blk.7.attn_output.weight"), Q3_K);
    assert_eq!(ty(&p, "blk.7.attn_q.weight"), Q2_K);
    assert_eq!(ty(&p, "output.weight"), Q6_K);
    assert_eq!(ty(&p, "token_embd.weight"), Q2_K);

    let p = plan("Q3_K_M", &m, &t);
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.1.attn_v.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.2.attn_v.weight"), Q4_K);
    assert_eq!(ty(&p, "blk.1.ffn_down.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.2.ffn_down.weight"), Q4_K);
    assert_eq!(ty(&p, "blk.2.attn_output.weight"), Q4_K);
    assert_eq!(ty(&p, "blk.2.ffn_up.weight"), Q3_K);

    let p = plan("Q3_K_S", &m, &t);
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), Q3_K);
    assert_eq!(ty(&p, "blk.0.ffn_down.weight"), Q3_K);
    assert_eq!(ty(&p, "output.weight"), Q6_K);

    let p = plan("Q3_K_L", &m, &t);
    assert_eq!(ty(&p, "blk.9.attn_v.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.9.ffn_down.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.9.attn_output.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.9.attn_q.weight"), Q3_K);

    let p = plan("Q4_K_S", &m, &t);
    for i in 0..32u64 {
        let want = if i < 4 { Q5_K } else { Q4_K };
        assert_eq!(ty(&p, &format!("blk.{i}.attn_v.weight")), want);
        assert_eq!(ty(&p, &format!("blk.{i}.ffn_down.weight")), want);
    }

    let p = plan("Q5_K_M", &m, &t);
    assert_eq!(ty(&p, "blk.6.attn_v.weight"), Q6_K);
    assert_eq!(ty(&p, "blk.7.attn_v.weight"), Q5_K);
    assert_eq!(ty(&p, "blk.27.ffn_down.weight"), Q6_K);
    let p = plan("Q5_K_S", &m, &t);
    assert_eq!(ty(&p, "blk.6.attn_v.weight"), Q5_K);
    let p = plan("Q6_K", &m, &t);
    assert_eq!(ty(&p, "blk.6.attn_q.weight"), Q6_K);
    assert_eq!(ty(&p, "output.weight"), Q6_K);
    let p = plan("Q8_0", &m, &t);
    assert_eq!(ty(&p, "output.weight"), Q8_0);
    assert_eq!(ty(&p, "token_embd.weight"), Q8_0);
    let p = plan("Q4_0", &m, &t);
    assert_eq!(ty(&p, "output.weight"), Q6_K);
    assert_eq!(ty(&p, "blk.0.ffn_down.weight"), Q4_0);
    let p = build_plan(
        &Recipe::load("Q4_0").unwrap(),
        &m,
        &t,
        PlanOptions {
            has_imatrix: true,
            measure: None,
        },
    )
    .unwrap();
    assert_eq!(
        ty(&p, "blk.3.ffn_down.weight"),
        Q4_1,
        "imatrix guard on the first eighth"
    );
    assert_eq!(ty(&p, "blk.4.ffn_down.weight"), Q4_0);
}

#[test]
fn q4_k_m_on_smollm2_shapes() {
    // 576-wide rows cannot hold 256-element blocks: llama.cpp's fallback table applies.
    let (m, t) = smol();
    let p = plan("Q4_K_M", &m, &t);
    assert_eq!(ty(&p, "token_embd.weight"), Q8_0, "tied, 576 % 256 != 0");
    assert_eq!(ty(&p, "blk.0.attn_q.weight"), Q5_0);
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), Q8_0, "Q6_K → Q8_0");
    assert_eq!(ty(&p, "blk.4.attn_v.weight"), Q5_0, "Q4_K → Q5_0");
    assert_eq!(
        ty(&p, "blk.0.ffn_down.weight"),
        Q6_K,
        "1536-wide rows hold Q6_K"
    );
    assert_eq!(ty(&p, "blk.4.ffn_down.weight"), Q4_K);
    assert_eq!(ty(&p, "blk.5.ffn_down.weight"), Q6_K, "(5 - 3) % 3 == 2");
    assert_eq!(ty(&p, "blk.4.ffn_up.weight"), Q5_0);
    let fb = p
        .entries
        .iter()
        .find(|e| e.name == "blk.0.attn_q.weight")
        .unwrap();
    assert!(fb.why().contains("fallback llama Q5_0"), "{}", fb.why());
    assert!(p.warnings.iter().any(|w| w.contains("row-width fallback")));
    assert_eq!(p.entries.len(), t.len());
    assert_eq!(p.entries[0].name, "token_embd.weight", "file order kept");

    let p = plan("Q2_K", &m, &t);
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), Q4_0, "n_gqa 3 → Q3_K → Q4_0");
    assert_eq!(ty(&p, "blk.0.attn_q.weight"), Q4_0);
}

#[test]
fn tied_vs_untied_token_embd() {
    let mut m = synth32().0;
    m.n_layer = 2;
    let tied = llama(2, 4096, 1024, 1024, 32000, true);
    let p = plan("Q4_K_M", &m, &tied);
    assert_eq!(
        ty(&p, "token_embd.weight"),
        Q6_K,
        "tied embeddings get the output rule"
    );
    let untied = llama(2, 4096, 1024, 1024, 32000, false);
    let p = plan("Q4_K_M", &m, &untied);
    assert_eq!(ty(&p, "token_embd.weight"), Q4_K);
}

#[test]
fn seventy_b_and_experts() {
    let m = ModelInfo {
        arch: "llama".into(),
        n_layer: 80,
        n_head: 64,
        n_head_kv: 8,
        n_expert: 0,
    };
    let t = llama(80, 512, 256, 512, 1000, false);
    let p = plan("Q3_K_S", &m, &t);
    assert_eq!(ty(&p, "blk.40.attn_v.weight"), Q5_K, "70B bump");
    let m8 = ModelInfo {
        arch: "llama".into(),
        n_layer: 2,
        n_head: 32,
        n_head_kv: 8,
        n_expert: 8,
    };
    let t = llama(2, 512, 256, 512, 1000, false);
    let p = plan("Q4_K_M", &m8, &t);
    assert_eq!(ty(&p, "blk.1.attn_v.weight"), Q8_0);
    assert_eq!(ty(&p, "blk.1.attn_k.weight"), Q8_0);
    assert_eq!(ty(&p, "blk.1.attn_output.weight"), Q5_K);
    // An expert model whose ffn tensor has no layer number is an error, not a panic.
    let mut bad = llama(1, 512, 256, 512, 1000, false);
    bad.push(desc("ffn_down.weight", &[512, 512], F16));
    let r = Recipe::load("Q4_K_M").unwrap();
    assert!(build_plan(&r, &m8, &bad, PlanOptions::default()).is_err());
}

#[test]
fn hybrid_pure_recipe() {
    let (m, t) = synth32();
    let hybrid = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/hybrid-pure.yaml");
    let r = Recipe::from_path(&hybrid).unwrap();
    let p = build_plan(&r, &m, &t, PlanOptions::default()).unwrap();
    for n in ["attn_q", "attn_k", "attn_v", "attn_output"] {
        assert_eq!(ty(&p, &format!("blk.5.{n}.weight")), Q5_K);
    }
    for n in ["ffn_up", "ffn_gate", "ffn_down"] {
        assert_eq!(ty(&p, &format!("blk.5.{n}.weight")), Q2_K);
    }
    assert_eq!(ty(&p, "output.weight"), Q2_K);
    assert_eq!(ty(&p, "blk.5.attn_norm.weight"), F32);
    let e = p
        .entries
        .iter()
        .find(|e| e.name == "blk.5.attn_q.weight")
        .unwrap();
    assert!(
        matches!(&e.reason, Reason::Rule(o) if o.line == 10),
        "{:?}",
        e.reason
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let (m, t) = smol();
    let p = build_plan(&r, &m, &t, PlanOptions::default()).unwrap();
    assert_eq!(ty(&p, "blk.5.attn_q.weight"), Q5_1);
    assert_eq!(ty(&p, "blk.5.ffn_up.weight"), Q4_0);
    assert_eq!(ty(&p, "blk.5.ffn_down.weight"), Q2_K);
}

#[test]
fn rules_layers_every_first_last() {
    let (m, t) = synth32();
    let p = plan(
        "base: Q4_K\nrules:\n  - kind: ffn_down\n    layers: 0-3,28-31\n    type: Q8_0\n  - kind: attn_q\n    every: 3\n    offset: 1\n    type: Q5_K\n  - kind: attn_k\n    first: 0.125\n    last: 2\n    type: Q6_K\n  - glob: 'blk.1?.ffn_up.weight'\n    type: Q5_0\n  - regex: '^blk\\.2\\d\\.ffn_gate'\n    type: keep\n",
        &m,
        &t,
    );
    for i in 0..32u64 {
        let fd = ty(&p, &format!("blk.{i}.ffn_down.weight"));
        assert_eq!(
            fd,
            if i <= 3 || i >= 28 { Q8_0 } else { Q4_K },
            "ffn_down {i}"
        );
        let q = ty(&p, &format!("blk.{i}.attn_q.weight"));
        assert_eq!(
            q,
            if i >= 1 && (i - 1) % 3 == 0 {
                Q5_K
            } else {
                Q4_K
            },
            "attn_q {i}"
        );
        let k = ty(&p, &format!("blk.{i}.attn_k.weight"));
        assert_eq!(
            k,
            if !(4..30).contains(&i) { Q6_K } else { Q4_K },
            "attn_k {i}"
        );
        let up = ty(&p, &format!("blk.{i}.ffn_up.weight"));
        assert_eq!(
            up,
            if (10..20).contains(&i) { Q5_0 } else { Q4_K },
            "ffn_up {i}"
        );
        let g = ty(&p, &format!("blk.{i}.ffn_gate.weight"));
        assert_eq!(
            g,
            if (20..30).contains(&i) { F16 } else { Q4_K },
            "ffn_gate {i}"
        );
    }
    assert_eq!(
        ty(&p, "output.weight"),
        Q4_K,
        "plain base: no preset output rule"
    );
}

#[test]
fn first_match_wins_and_unused_rules_warn() {
    let (m, t) = synth32();
    let p = plan(
        "preset: Q4_K_M\nrules:\n  - kind: attn_v\n    type: Q8_0\n  - kind: attn_v\n    type: Q2_K\n  - name: nothing.here\n    type: Q2_K\n  - kind: norm\n    type: F16\n  - glob: '*_norm.weight'\n    type: Q8_0\n",
        &m,
        &t,
    );
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), Q8_0);
    assert_eq!(ty(&p, "blk.0.attn_norm.weight"), F16, "kind: norm forces");
    assert_eq!(ty(&p, "blk.1.ffn_down.weight"), Q6_K, "preset for the rest");
    let w = p.warnings.join("\n");
    assert!(w.contains("rule 2 (t.yaml:5) matches no tensor"), "{w}");
    assert!(w.contains("rule 3 (t.yaml:7) matches no tensor"), "{w}");
    assert!(!w.contains("rule 4"), "{w}");
    // rule 5 selects only norms (already taken by rule 4): nothing left
    assert!(w.contains("rule 5 (t.yaml:11) matches no tensor"), "{w}");

    let p = plan(
        "base: Q4_K\nrules:\n  - glob: '*norm*'\n    type: Q8_0\n",
        &m,
        &t,
    );
    assert_eq!(ty(&p, "blk.0.attn_norm.weight"), F32);
    assert!(
        p.warnings.join("\n").contains("force: true"),
        "{:?}",
        p.warnings
    );
    let p = plan(
        "base: Q4_K\nrules:\n  - glob: '*norm*'\n    force: true\n    type: Q8_0\n",
        &m,
        &t,
    );
    assert_eq!(ty(&p, "blk.0.attn_norm.weight"), Q8_0, "4096 % 32 == 0");
}

#[test]
fn attn_v_counter_skips_rule_claimed_tensors() {
    // llama-quantize's --tensor-type bypasses the mix, so its attn_v counter does not advance.
    let (m, t) = synth32();
    let p = plan(
        "preset: Q4_K_S\nrules:\n  - name: blk.0.attn_v.weight\n    type: Q8_0\n",
        &m,
        &t,
    );
    assert_eq!(ty(&p, "blk.0.attn_v.weight"), Q8_0);
    assert_eq!(
        ty(&p, "blk.4.attn_v.weight"),
        Q5_K,
        "counter 0..3 cover layers 1..4"
    );
    assert_eq!(ty(&p, "blk.5.attn_v.weight"), Q4_K);
}

#[test]
fn totals_and_export() {
    let (m, t) = smol();
    let p = plan("Q8_0", &m, &t);
    let n: u64 = t.iter().map(|d| d.n_elements()).sum();
    assert_eq!(p.n_elements(), n);
    let expect: u64 = t
        .iter()
        .map(|d| {
            if d.dims.len() == 1 {
                d.n_bytes
            } else {
                Q8_0.bytes_for(d.n_elements()).unwrap()
            }
        })
        .sum();
    assert_eq!(p.to_bytes(), expect);
    assert!((p.bpw() - expect as f64 * 8.0 / n as f64).abs() < 1e-12);
    let f = p.tensor_type_file();
    assert!(f.contains("^blk\\.0\\.attn_q\\.weight$=q8_0\n"), "{f}");
    assert!(!f.contains("norm"), "norms are not in the file");
    assert_eq!(f.lines().count(), 1 + 30 * 7);
    let txt = p.render();
    assert!(txt.contains("total: 272 tensors"), "{txt}");
    assert_eq!(p.to_json()["tensors"].as_array().unwrap().len(), 272);
}

#[test]
fn fallback_best_uses_measurement() {
    let (m, t) = smol();
    let r = Recipe::from_str_in("base: Q4_K\nfallback: best\n", "b.yaml", Path::new(".")).unwrap();
    let mut calls = Vec::new();
    let mut measure = |d: &TensorDesc, ty: GgmlType| {
        calls.push((d.name.clone(), ty));
        // Pretend Q4_1 is the most accurate.
        Ok(if ty == Q4_1 { 0.5 } else { 1.0 })
    };
    let p = build_plan(
        &r,
        &m,
        &t,
        PlanOptions {
            has_imatrix: false,
            measure: Some(&mut measure),
        },
    )
    .unwrap();
    assert_eq!(ty(&p, "blk.0.attn_q.weight"), Q4_1);
    assert_eq!(
        ty(&p, "blk.0.ffn_down.weight"),
        Q4_K,
        "fits: no fallback, no measurement"
    );
    let tried: Vec<GgmlType> = calls
        .iter()
        .filter(|c| c.0 == "blk.0.attn_q.weight")
        .map(|c| c.1)
        .collect();
    assert_eq!(
        tried,
        vec![Q5_0, Q4_0, Q4_1],
        "llama's choice first, then no larger compatible types"
    );
    assert!(!calls.iter().any(|c| c.0 == "blk.0.ffn_down.weight"));
    let e = p
        .entries
        .iter()
        .find(|e| e.name == "blk.0.attn_q.weight")
        .unwrap();
    assert!(
        e.why().contains("fallback best (llama: Q5_0)"),
        "{}",
        e.why()
    );
}
