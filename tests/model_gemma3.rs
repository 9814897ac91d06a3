//! The gemma3 graph of the CPU backend on tiny synthetic gemma3 GGUFs (written here with
//! ggufq's GGUF writer, random weights, no download), against a plain scalar reference forward
//! written independently in this file (f64 sums, position by position). Same numerics contract
//! as `model::backend`: activations rounded with `ActQuant::for_weight`, Q/K/V and the
//! attention probabilities rounded to f16, and ggml's f16 GELU table.
//!
//! What the reference follows (llama.cpp's `src/models/gemma3.cpp`): embeddings × √n_embd;
//! RMSNorm with the GGUF weights as stored; per-head RMSNorm of Q and K; NeoX RoPE with base
//! `rope.freq_base_swa` (default 10000) on sliding-window layers and `rope.freq_base` on global
//! ones; Q × 1/√head_dim before the KQ product; a query at `p` sees keys at `p0` with
//! `p - p0 < sliding_window` on local layers; post-attention and post-FFN RMSNorms before each
//! residual add; GELU(tanh)-gated FFN; final norm; output tied to `token_embd`; optional final
//! logit soft-capping.

use std::io::BufWriter;
use std::path::Path;

use ggufq::gguf::{GgufWriter, TensorSpec, Value};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Arch, Backend, FfnAct, LogitsWanted, Model, RopeMode, Weight};
use ggufq::quant::{quantize_row, GgmlType};

#[path = "common/reference_ops.rs"]
mod reference_ops;
use reference_ops::{deq, lin, max_rel_diff, r16, rms};

/// How the synthetic model lays out its sliding-window layers.
#[derive(Clone)]
enum Pattern {
    /// `attention.sliding_window_pattern` as a period (u32).
    Period(u32),
    /// As a per-layer bool array.
    Layers(Vec<bool>),
}

struct Synth {
    ty: GgmlType,
    n_layer: usize,
    window: u32,
    pattern: Pattern,
    softcap: Option<f32>,
    seed: u64,
}

const E: usize = 128; // n_embd
const NH: usize = 2; // heads
const NKV: usize = 1; // kv heads
const HD: usize = 64; // head_dim (key_length): q_dim = 128
const FF: usize = 256;
const NV: usize = 300;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// A SentencePiece vocabulary of exactly `NV` tokens laid out like Gemma's: `<pad>`, `<eos>`,
/// `<bos>`, `<unk>`, the 256 byte tokens, then pieces with descending scores.
fn spm_tokenizer() -> Vec<(String, Value)> {
    use ggufq::gguf::{Array, ValueType};
    let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3i32, 3, 3, 2];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = "\u{2581} e t a o i n s h r d l u c m f w g y p b , . \u{2581}t \u{2581}a he in th er an re on at \u{2581}th \u{2581}the en nd es or te ed is it al ar st to";
    for p in pieces.split(' ') {
        if tokens.len() < NV {
            tokens.push(p.to_string());
            types.push(1);
        }
    }
    let n_pieces = tokens.len() - 260;
    for i in 0..NV - tokens.len() {
        tokens.push(format!("x{i}"));
        types.push(1);
    }
    let scores: Vec<Value> = (0..NV)
        .map(|i| {
            let s = if (260..260 + n_pieces).contains(&i) {
                -((i - 260) as f32)
            } else if i < 260 {
                0.0
            } else {
                -1000.0
            };
            Value::F32(s)
        })
        .collect();
    let strs = |v: &[String]| {
        Value::Array(Array::new(
            ValueType::String,
            v.iter().map(|s| Value::String(s.clone())).collect(),
        ))
    };
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), strs(&tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(Array::new(ValueType::F32, scores)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::new(
                ValueType::I32,
                types.into_iter().map(Value::I32).collect(),
            )),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
    ]
}

/// Write a gemma3-shaped GGUF: tied embeddings, Q/K norms, post norms, `n_layer` blocks.
fn write_gemma3(path: &Path, s: &Synth) {
    let u = |v: usize| Value::U32(v as u32);
    let mut meta: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String("gemma3".into()),
        ),
        ("gemma3.context_length".into(), u(4096)),
        ("gemma3.embedding_length".into(), u(E)),
        ("gemma3.block_count".into(), u(s.n_layer)),
        ("gemma3.feed_forward_length".into(), u(FF)),
        ("gemma3.attention.head_count".into(), u(NH)),
        ("gemma3.attention.head_count_kv".into(), u(NKV)),
        ("gemma3.attention.key_length".into(), u(HD)),
        ("gemma3.attention.value_length".into(), u(HD)),
        (
            "gemma3.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-6),
        ),
        ("gemma3.rope.freq_base".into(), Value::F32(1_000_000.0)),
        (
            "gemma3.attention.sliding_window".into(),
            Value::U32(s.window),
        ),
    ];
    match &s.pattern {
        Pattern::Period(n) => meta.push((
            "gemma3.attention.sliding_window_pattern".into(),
            Value::U32(*n),
        )),
        Pattern::Layers(v) => meta.push((
            "gemma3.attention.sliding_window_pattern".into(),
            Value::Array(ggufq::gguf::value::Array::new(
                ggufq::gguf::ValueType::Bool,
                v.iter().map(|&b| Value::Bool(b)).collect(),
            )),
        )),
    }
    if let Some(c) = s.softcap {
        meta.push(("gemma3.final_logit_softcapping".into(), Value::F32(c)));
    }
    meta.extend(spm_tokenizer());
    let mut list: Vec<(String, Vec<u64>, bool)> = vec![
        ("token_embd.weight".into(), vec![E as u64, NV as u64], true),
        ("output_norm.weight".into(), vec![E as u64], false),
    ];
    let (e, q, kv, ff, hd) = (
        E as u64,
        (NH * HD) as u64,
        (NKV * HD) as u64,
        FF as u64,
        HD as u64,
    );
    for l in 0..s.n_layer {
        for (n, d, m) in [
            ("attn_norm", vec![e], false),
            ("attn_q", vec![e, q], true),
            ("attn_k", vec![e, kv], true),
            ("attn_v", vec![e, kv], true),
            ("attn_q_norm", vec![hd], false),
            ("attn_k_norm", vec![hd], false),
            ("attn_output", vec![q, e], true),
            ("post_attention_norm", vec![e], false),
            ("ffn_norm", vec![e], false),
            ("ffn_gate", vec![e, ff], true),
            ("ffn_up", vec![e, ff], true),
            ("ffn_down", vec![ff, e], true),
            ("post_ffw_norm", vec![e], false),
        ] {
            list.push((format!("blk.{l}.{n}.weight"), d, m));
        }
    }
    let ty_of = |m: bool| if m { s.ty } else { GgmlType::F32 };
    let specs: Vec<TensorSpec> = list
        .iter()
        .map(|(n, d, m)| TensorSpec::new(n.clone(), d.clone(), ty_of(*m)).unwrap())
        .collect();
    let f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(BufWriter::new(f), 3, 32, &meta, specs.clone()).unwrap();
    let mut rng = Rng(s.seed);
    for ((_, dims, m), spec) in list.iter().zip(&specs) {
        let row = dims[0] as usize;
        let n: usize = dims.iter().product::<u64>() as usize;
        // Matrices ~ N(0, 1/row); norm weights ~ 1 + N(0, 0.2) (gemma GGUFs store 1 + w).
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                if *m {
                    rng.normal() / (row as f32).sqrt()
                } else {
                    1.0 + 0.2 * rng.normal()
                }
            })
            .collect();
        let mut data = vec![0u8; spec.n_bytes as usize];
        let rb = data.len() / (n / row);
        for (src, dst) in vals.chunks(row).zip(data.chunks_mut(rb)) {
            quantize_row(ty_of(*m), src, None, dst).unwrap();
        }
        w.write_tensor(&data).unwrap();
    }
    w.finish().unwrap();
}

/// GELU(tanh) in f64, looked up the way ggml's f16 table does.
fn gelu_gated(g: f32, u: f32) -> f32 {
    if g <= -10.0 {
        return 0.0;
    }
    if g >= 10.0 {
        return g * u;
    }
    let x = r16(g) as f64;
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let y = 0.5 * x * (1.0 + (c * x * (1.0 + 0.044715 * x * x)).tanh());
    r16(y as f32) * u
}

/// Logits of every position of `toks`, computed position by position.
fn reference(m: &Model, toks: &[u32]) -> Vec<Vec<f32>> {
    let hp = &m.hparams;
    let w = &m.weights;
    let swa = hp.swa.clone().expect("sliding window");
    let emb = deq(&w.tok_embd);
    let onorm = deq(&w.output_norm);
    let d = |o: &Option<Weight>| deq(o.as_ref().expect("gemma3 tensor"));
    let layers: Vec<Vec<Vec<f32>>> = w
        .layers
        .iter()
        .map(|l| {
            vec![
                deq(&l.attn_norm),
                deq(&l.wq),
                deq(&l.wk),
                deq(&l.wv),
                d(&l.q_norm),
                d(&l.k_norm),
                deq(&l.wo),
                d(&l.post_attn_norm),
                deq(&l.ffn_norm),
                deq(&l.gate),
                deq(&l.up),
                deq(&l.down),
                d(&l.post_ffn_norm),
            ]
        })
        .collect();
    let mut kc: Vec<Vec<Vec<f32>>> = vec![Vec::new(); hp.n_layer];
    let mut vc: Vec<Vec<Vec<f32>>> = vec![Vec::new(); hp.n_layer];
    let rope = |x: &mut [f32], pos: usize, base: f64| {
        for head in x.chunks_mut(HD) {
            for i in 0..HD / 2 {
                let th = pos as f64 * base.powf(-2.0 * i as f64 / HD as f64);
                let (c, s) = (th.cos() as f32, th.sin() as f32);
                let (x0, x1) = (head[i], head[i + HD / 2]);
                head[i] = x0 * c - x1 * s;
                head[i + HD / 2] = x0 * s + x1 * c;
            }
        }
    };
    let eps = hp.rms_eps;
    let mut out = Vec::new();
    for (pos, &t) in toks.iter().enumerate() {
        let mut x: Vec<f32> = emb[t as usize * E..(t as usize + 1) * E]
            .iter()
            .map(|&v| v * (E as f32).sqrt())
            .collect();
        for (li, l) in layers.iter().enumerate() {
            let lw = &w.layers[li];
            let local = swa.layers[li];
            let h = rms(&x, &l[0], eps);
            let mut q = rms(&lin(&lw.wq, &l[1], &h), &l[4], eps);
            let mut k = rms(&lin(&lw.wk, &l[2], &h), &l[5], eps);
            let v = lin(&lw.wv, &l[3], &h);
            let base = if local { 10_000.0 } else { 1_000_000.0 };
            rope(&mut q, pos, base);
            rope(&mut k, pos, base);
            let q: Vec<f32> = q.iter().map(|&v| r16(v / (HD as f32).sqrt())).collect();
            kc[li].push(k.iter().map(|&v| r16(v)).collect());
            vc[li].push(v.iter().map(|&v| r16(v)).collect());
            let first = if local {
                (pos + 1).saturating_sub(swa.window)
            } else {
                0
            };
            let mut att = vec![0f32; NH * HD];
            for hh in 0..NH {
                let kvh = hh / (NH / NKV);
                let qh = &q[hh * HD..(hh + 1) * HD];
                let s: Vec<f32> = (first..=pos)
                    .map(|j| {
                        qh.iter()
                            .zip(&kc[li][j][kvh * HD..(kvh + 1) * HD])
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                let mx = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let ex: Vec<f32> = s.iter().map(|&v| (v - mx).exp()).collect();
                let sum: f64 = ex.iter().map(|&v| v as f64).sum();
                for (jj, &p) in ex.iter().enumerate() {
                    let p = r16(p / sum as f32);
                    for dd in 0..HD {
                        att[hh * HD + dd] += p * vc[li][first + jj][kvh * HD + dd];
                    }
                }
            }
            let ao = rms(&lin(&lw.wo, &l[6], &att), &l[7], eps);
            x.iter_mut().zip(&ao).for_each(|(a, b)| *a += b);
            let h = rms(&x, &l[8], eps);
            let g = lin(&lw.gate, &l[9], &h);
            let u = lin(&lw.up, &l[10], &h);
            let a: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| gelu_gated(g, u)).collect();
            let dn = rms(&lin(&lw.down, &l[11], &a), &l[12], eps);
            x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
        let h = rms(&x, &onorm, eps);
        let mut logits = lin(&w.tok_embd, &emb, &h);
        if let Some(c) = hp.logit_softcap {
            logits.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
        }
        out.push(logits);
    }
    out
}

fn mixed(ty: GgmlType, softcap: Option<f32>) -> Synth {
    // Layers 0 and 1 local (window 6), layer 2 global.
    Synth {
        ty,
        n_layer: 3,
        window: 6,
        pattern: Pattern::Period(3),
        softcap,
        seed: 7,
    }
}

#[test]
fn gemma3_hparams_from_metadata() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.gguf");
    write_gemma3(&p, &mixed(GgmlType::F32, Some(30.0)));
    let m = Model::open(&p).unwrap();
    let hp = &m.hparams;
    assert_eq!(hp.arch, Arch::Gemma3);
    assert_eq!(hp.rope_mode, RopeMode::Neox);
    assert_eq!(hp.ffn_act, FfnAct::GeluTanh);
    assert!(hp.qk_norm && hp.post_norms && hp.tied_embeddings);
    assert_eq!(hp.embd_scale, (E as f32).sqrt());
    assert_eq!(hp.attn_scale, 1.0 / (HD as f32).sqrt());
    assert_eq!(hp.logit_softcap, Some(30.0));
    let swa = hp.swa.as_ref().unwrap();
    assert_eq!(swa.window, 6);
    assert_eq!(swa.layers, vec![true, true, false]);
    assert_eq!(hp.rope_for_layer(0), (10_000.0, 1.0));
    assert_eq!(hp.rope_for_layer(2), (1_000_000.0, 1.0));
    // The default period is 6 (every 6th layer global), as llama.cpp's gemma3 loader.
    let p6 = d.path().join("g6.gguf");
    let mut s = mixed(GgmlType::F32, None);
    s.n_layer = 7;
    s.pattern = Pattern::Period(6);
    write_gemma3(&p6, &s);
    let hp6 = Model::open(&p6).unwrap().hparams;
    assert_eq!(
        hp6.swa.unwrap().layers,
        vec![true, true, true, true, true, false, true]
    );
    assert_eq!(hp6.logit_softcap, None);
    // A per-layer array pattern.
    let pa = d.path().join("ga.gguf");
    s.n_layer = 3;
    s.pattern = Pattern::Layers(vec![false, true, false]);
    write_gemma3(&pa, &s);
    let hpa = Model::open(&pa).unwrap().hparams;
    assert_eq!(hpa.swa.unwrap().layers, vec![false, true, false]);
    // A pattern array shorter than the layer count is an error that names the key.
    s.pattern = Pattern::Layers(vec![true]);
    write_gemma3(&pa, &s);
    let err = Model::open(&pa).err().expect("short pattern").to_string();
    assert!(err.contains("sliding_window_pattern"), "{err}");
}

#[test]
fn gemma3_backend_matches_scalar_reference() {
    let d = tempfile::tempdir().unwrap();
    // 20 tokens: more than three windows of 6, so the local layers drop old keys.
    let toks: Vec<u32> = (0..20u32).map(|i| (i * 37 + 5) % NV as u32).collect();
    for (ty, softcap) in [
        (GgmlType::F32, None),
        (GgmlType::Q8_0, None),
        (GgmlType::F32, Some(2.0)),
    ] {
        let p = d.path().join(format!("ref-{}-{softcap:?}.gguf", ty.name()));
        write_gemma3(&p, &mixed(ty, softcap));
        let m = Model::open(&p).unwrap();
        let want = reference(&m, &toks);
        for threads in [1, 2] {
            let mut b = CpuBackend::new(&m, 32, threads).unwrap();
            let mut got = Vec::new();
            // A prompt (GEMM path), then decode-sized batches (mat-vec path).
            b.forward(&toks[..9], LogitsWanted::All, &mut got).unwrap();
            let mut rest = Vec::new();
            for r in [9..16, 16..17, 17..18, 18..20] {
                b.forward(&toks[r], LogitsWanted::All, &mut rest).unwrap();
                got.extend_from_slice(&rest);
            }
            assert_eq!(got.len(), toks.len() * NV);
            for (i, w) in want.iter().enumerate() {
                let diff = max_rel_diff(w, &got[i * NV..(i + 1) * NV]);
                // F32: summation order only. Q8_0: an activation on a rounding boundary may
                // flip one step (as in model_reference.rs). A wrong graph is off by ~100 %.
                let tol = if ty == GgmlType::F32 { 2e-3 } else { 6e-2 };
                assert!(
                    diff < tol,
                    "{} softcap {softcap:?} ({threads} threads): position {i}: relative difference {diff}",
                    ty.name()
                );
            }
        }
    }
}

/// Logits of every position of `toks` in one batch.
fn all_logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut b = CpuBackend::new(m, toks.len(), 2).unwrap();
    let mut out = Vec::new();
    b.forward(toks, LogitsWanted::All, &mut out).unwrap();
    out
}

#[test]
fn sliding_window_layers_ignore_positions_outside_the_window() {
    let d = tempfile::tempdir().unwrap();
    // Three local layers with a window of 4: position p sees inputs back to p - 3·3 = p - 9.
    let local = d.path().join("local.gguf");
    let mut s = mixed(GgmlType::Q8_0, None);
    s.window = 4;
    s.pattern = Pattern::Layers(vec![true, true, true]);
    write_gemma3(&local, &s);
    // The same weights with the last layer global.
    let glob = d.path().join("global.gguf");
    s.pattern = Pattern::Layers(vec![true, true, false]);
    write_gemma3(&glob, &s);
    let a: Vec<u32> = (0..24u32).map(|i| (i * 53 + 11) % NV as u32).collect();
    let mut b = a.clone();
    b[5] = (a[5] + 100) % NV as u32;
    let changed = 5;
    let reach = 3 * (4 - 1);
    let row = |v: &[f32], i: usize| v[i * NV..(i + 1) * NV].to_vec();

    let m = Model::open(&local).unwrap();
    let (la, lb) = (all_logits(&m, &a), all_logits(&m, &b));
    for i in 0..a.len() {
        let same = row(&la, i) == row(&lb, i);
        if i < changed || i > changed + reach {
            assert!(
                same,
                "local model: position {i} depends on position {changed}"
            );
        }
    }
    // Inside the reach the change shows (at least where it was made and at the edge).
    assert!(row(&la, changed) != row(&lb, changed));
    assert!(row(&la, changed + reach) != row(&lb, changed + reach));

    // With a global last layer, the last position does see position 5.
    let mg = Model::open(&glob).unwrap();
    let (ga, gb) = (all_logits(&mg, &a), all_logits(&mg, &b));
    assert!(row(&ga, a.len() - 1) != row(&gb, a.len() - 1));
    for i in 0..changed {
        assert_eq!(row(&ga, i), row(&gb, i), "causality at {i}");
    }
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_engine_reads_gemma3_as_the_runtime_does() {
    // The GPU engine runs gemma3 (tests/gpu_arch.rs compares its logits with the CPU
    // backend's); its configuration is the runtime's reading of the metadata.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.gguf");
    write_gemma3(&p, &mixed(GgmlType::Q8_0, Some(30.0)));
    let src = ggufq::gpu::GgufSource::open(&p).unwrap();
    let cfg = ggufq::gpu::LlamaConfig::from_source(&src).unwrap();
    assert_eq!(cfg.arch, "gemma3");
    assert_eq!((cfg.head_dim, cfg.q_dim()), (HD, NH * HD));
    assert_eq!(cfg.ops.window, 6);
    assert_eq!(cfg.ops.swa_layers, vec![true, true, false]);
    assert_eq!(cfg.ops.logit_softcap, Some(30.0));
    assert_eq!(cfg.ops.embd_scale, (E as f32).sqrt());
}

#[test]
fn ppl_cli_on_synthetic_gemma3_matches_the_reference() {
    // `ggufq ppl` end to end (SentencePiece tokenizer, BOS per chunk, second-half scoring) on a
    // gemma3 file whose chunks are longer than the window, against exp(mean NLL) of the
    // scalar reference's logits.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.gguf");
    write_gemma3(&p, &mixed(GgmlType::F32, None));
    let txt = d.path().join("t.txt");
    let text = "the cat sat on the mat, and then the rat ate the oat. ".repeat(8);
    std::fs::write(&txt, &text).unwrap();
    let out = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args(["ppl", p.to_str().unwrap(), "-f", txt.to_str().unwrap()])
        .args(["-c", "16", "--chunks", "3", "-t", "2", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let got = v["result"]["ppl"].as_f64().expect("ppl");

    let m = Model::open(&p).unwrap();
    let tok = m.tokenizer().unwrap();
    let toks = tok.encode(&text, true, false).unwrap();
    assert_eq!(toks[0], 2, "BOS first");
    assert!(toks.len() >= 48, "{} tokens", toks.len());
    let (mut sum, mut n) = (0f64, 0usize);
    for c in 0..3 {
        let mut chunk = toks[c * 16..(c + 1) * 16].to_vec();
        chunk[0] = 2;
        let logits = reference(&m, &chunk);
        for j in 8..15 {
            let row = &logits[j];
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            sum += lse - row[chunk[j + 1] as usize] as f64;
            n += 1;
        }
    }
    let want = (sum / n as f64).exp();
    assert!(
        (got - want).abs() / want < 1e-3,
        "ggufq ppl {got} vs reference {want}"
    );
}
