//! The CPU runtime on tiny synthetic models (ggufq::synth::write_tiny_model).

use ggufq::gguf::{GgufFile, GgufWriter, TensorSpec, Value};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};
use ggufq::quant::GgmlType;

fn tiny(dir: &tempfile::TempDir, ty: GgmlType, seed: u64) -> std::path::PathBuf {
    let p = dir.path().join(format!("tiny-{}-{seed}.gguf", ty.name()));
    ggufq::synth::write_tiny_model(&p, ty, seed, None).expect("synth");
    p
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn hparams_and_shapes_are_read() {
    let d = tempfile::tempdir().unwrap();
    let m = Model::open(tiny(&d, GgmlType::Q8_0, 1)).unwrap();
    let hp = &m.hparams;
    assert_eq!(
        (
            hp.n_layer,
            hp.n_embd,
            hp.n_head,
            hp.n_head_kv,
            hp.head_dim,
            hp.n_ff
        ),
        (2, 256, 4, 2, 64, 512)
    );
    assert_eq!(hp.n_vocab, 328);
    assert!(!hp.tied_embeddings);
    assert_eq!(m.weights.layers[1].wk.n_rows(), 128);
}

#[test]
fn batched_prompt_equals_token_by_token() {
    let d = tempfile::tempdir().unwrap();
    for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q5_1] {
        let m = Model::open(tiny(&d, ty, 7)).unwrap();
        let toks: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 328).collect();
        let mut b = CpuBackend::new(&m, 64, 2).unwrap();
        let mut all = Vec::new();
        b.forward(&toks, LogitsWanted::All, &mut all).unwrap();
        assert_eq!(all.len(), 24 * 328);
        assert!(all.iter().all(|v| v.is_finite()));
        b.reset();
        let mut one = Vec::new();
        for (i, &t) in toks.iter().enumerate() {
            b.forward(&[t], LogitsWanted::Last, &mut one).unwrap();
            let row = &all[i * 328..(i + 1) * 328];
            let diff = max_rel_diff(row, &one);
            // F32 differs only by GEMM summation order; with quantized activations a value
            // on a rounding boundary may flip by one step, as in llama.cpp.
            let tol = if ty == GgmlType::F32 { 1e-3 } else { 4e-2 };
            assert!(
                diff < tol,
                "{}: position {i}: relative difference {diff}",
                ty.name()
            );
        }
        assert_eq!(b.n_past(), 24);
        // From(i) returns the tail rows of All.
        b.reset();
        let mut tail = Vec::new();
        b.forward(&toks, LogitsWanted::From(20), &mut tail).unwrap();
        assert_eq!(tail.len(), 4 * 328);
        assert!(max_rel_diff(&all[20 * 328..], &tail) < 1e-5);
    }
}

#[test]
fn context_changes_the_prediction() {
    let d = tempfile::tempdir().unwrap();
    let m = Model::open(tiny(&d, GgmlType::Q8_0, 3)).unwrap();
    let mut b = CpuBackend::new(&m, 32, 1).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    b.forward(&[10, 20, 30], LogitsWanted::Last, &mut x)
        .unwrap();
    b.reset();
    b.forward(&[11, 20, 30], LogitsWanted::Last, &mut y)
        .unwrap();
    assert!(
        max_rel_diff(&x, &y) > 1e-3,
        "attention ignores earlier tokens"
    );
}

#[test]
fn bad_tokens_and_overflow_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let m = Model::open(tiny(&d, GgmlType::Q8_0, 1)).unwrap();
    let mut b = CpuBackend::new(&m, 8, 1).unwrap();
    let mut out = Vec::new();
    let e = b
        .forward(&[1, 328], LogitsWanted::All, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("328"), "{e}");
    assert_eq!(b.n_past(), 0);
    b.forward(&[1, 2, 3, 4, 5], LogitsWanted::None, &mut out)
        .unwrap();
    let e = b
        .forward(&[1, 2, 3, 4], LogitsWanted::All, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("exceed"), "{e}");
    assert_eq!(b.n_past(), 5);
}

#[test]
fn truncate_keeps_the_prefix_and_drops_the_rest() {
    // What `bench -d` does before each repetition: go back to the prefilled depth.
    let d = tempfile::tempdir().unwrap();
    let m = Model::open(tiny(&d, GgmlType::Q8_0, 5)).unwrap();
    let mut b = CpuBackend::new(&m, 32, 1).unwrap();
    let prefix = [3u32, 14, 15, 92, 65, 35];
    let (mut fresh, mut again, mut after) = (Vec::new(), Vec::new(), Vec::new());
    // Reference: the prefix, then the test tokens.
    b.forward(&prefix, LogitsWanted::None, &mut fresh).unwrap();
    b.forward(&[8, 9, 7], LogitsWanted::All, &mut fresh)
        .unwrap();
    // Other tokens after the prefix, then back to it and the test tokens again: the same
    // logits bit for bit (the prefix's keys/values are the ones computed first).
    b.truncate(prefix.len()).unwrap();
    b.forward(&[100, 200], LogitsWanted::None, &mut after)
        .unwrap();
    assert_eq!(b.n_past(), prefix.len() + 2);
    b.truncate(prefix.len()).unwrap();
    assert_eq!(b.n_past(), prefix.len());
    b.forward(&[8, 9, 7], LogitsWanted::All, &mut again)
        .unwrap();
    assert_eq!(fresh, again);
    // Without going back, the same tokens see the two others: other logits.
    b.forward(&[8, 9, 7], LogitsWanted::All, &mut after)
        .unwrap();
    assert!(max_rel_diff(&fresh, &after) > 1e-3);
    // More than is cached is an error and changes nothing; 0 is a reset.
    assert!(b.truncate(b.n_past() + 1).is_err());
    assert_eq!(b.n_past(), prefix.len() + 6);
    b.truncate(0).unwrap();
    assert_eq!(b.n_past(), 0);
}

/// Rewrite `src` with one metadata key changed (None = removed).
fn rewrite(src: &std::path::Path, dst: &std::path::Path, key: &str, val: Option<Value>) {
    let f = GgufFile::open(src).unwrap();
    let mut meta: Vec<(String, Value)> = f
        .metadata
        .iter()
        .filter(|(k, _)| k != key)
        .cloned()
        .collect();
    if let Some(v) = val {
        meta.push((key.to_string(), v));
    }
    let specs: Vec<TensorSpec> = f
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ty.unwrap()).unwrap())
        .collect();
    let out = std::fs::File::create(dst).unwrap();
    let mut w = GgufWriter::new(std::io::BufWriter::new(out), 3, 32, &meta, specs).unwrap();
    for t in &f.tensors {
        w.write_tensor(f.tensor_data(t).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn missing_key_and_unknown_arch_are_named() {
    let d = tempfile::tempdir().unwrap();
    let src = tiny(&d, GgmlType::Q8_0, 1);
    let a = d.path().join("a.gguf");
    rewrite(&src, &a, "llama.block_count", None);
    let e = Model::open(&a).err().unwrap().to_string();
    assert!(e.contains("llama.block_count"), "{e}");
    let b = d.path().join("b.gguf");
    rewrite(
        &src,
        &b,
        "general.architecture",
        Some(Value::String("gptj".into())),
    );
    let e = Model::open(&b).err().unwrap().to_string();
    assert!(e.contains("unsupported architecture 'gptj'"), "{e}");
    let c = d.path().join("c.gguf");
    rewrite(
        &src,
        &c,
        "llama.rope.scaling.type",
        Some(Value::String("yarn".into())),
    );
    let e = Model::open(&c).err().unwrap().to_string();
    assert!(e.contains("yarn"), "{e}");
}

#[test]
fn synth_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny(&d, GgmlType::Q4_0, 9);
    let b = d.path().join("again.gguf");
    ggufq::synth::write_tiny_model(&b, GgmlType::Q4_0, 9, None).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let c = d.path().join("other.gguf");
    ggufq::synth::write_tiny_model(&c, GgmlType::Q4_0, 10, None).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
}
