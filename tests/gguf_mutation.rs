//! Deterministic mutation test (runs everywhere, unlike cargo-fuzz): corrupt valid files at many
//! positions and check that parsing never panics and that every error names a byte offset inside
//! the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ggufq::gguf::{Array, GgufFile, GgufWriter, TensorSpec, Value, ValueType};
use ggufq::quant::GgmlType;

fn synthetic() -> Vec<u8> {
    let s = |x: &str| Value::String(x.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.alignment".to_string(), Value::U32(64)),
        ("a.u8".to_string(), Value::U8(1)),
        ("a.i16".to_string(), Value::I16(-3)),
        ("a.f32".to_string(), Value::F32(0.25)),
        ("a.bool".to_string(), Value::Bool(true)),
        ("a.u64".to_string(), Value::U64(9)),
        ("a.f64".to_string(), Value::F64(2.5)),
        (
            "a.tokens".to_string(),
            Value::Array(Array::new(
                ValueType::String,
                vec![s("<s>"), s("ab"), s("✓")],
            )),
        ),
        (
            "a.nested".to_string(),
            Value::Array(Array::new(
                ValueType::Array,
                vec![Value::Array(Array::new(
                    ValueType::I32,
                    vec![Value::I32(7)],
                ))],
            )),
        ),
    ];
    let specs = vec![
        TensorSpec::new("tok.weight", vec![32, 4], GgmlType::Q8_0).unwrap(),
        TensorSpec::new("norm", vec![8], GgmlType::F32).unwrap(),
        TensorSpec::new("blk.0.q", vec![256, 2], GgmlType::Q4_K).unwrap(),
        TensorSpec {
            name: "odd".into(),
            dims: vec![3],
            type_id: 77,
            n_bytes: 5,
        },
    ];
    let n: Vec<u64> = specs.iter().map(|t| t.n_bytes).collect();
    let mut w = GgufWriter::new(Vec::new(), 3, 64, &meta, specs).unwrap();
    for (i, n) in n.iter().enumerate() {
        w.write_tensor(&vec![i as u8; *n as usize]).unwrap();
    }
    w.finish().unwrap()
}

/// Parse `bytes`; panics (with the mutation described) if the parser panics or reports an
/// offset outside the file.
fn check(bytes: &[u8], what: &dyn Fn() -> String) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| {
        GgufFile::parse(bytes, Path::new("m.gguf"))
    }));
    match r {
        Err(_) => panic!("parser panicked on {}", what()),
        Ok(Ok(_)) => true,
        Ok(Err(ggufq::error::Error::Gguf { offset, .. })) => {
            assert!(
                offset <= bytes.len() as u64,
                "offset {offset} outside file: {}",
                what()
            );
            false
        }
        Ok(Err(e)) => panic!("unexpected error kind {e} on {}", what()),
    }
}

#[test]
fn mutating_every_byte_never_panics() {
    let mut b = synthetic();
    assert!(check(&b, &|| "the unmodified file".into()));
    let mut rejected = 0;
    for pos in 0..b.len() {
        let orig = b[pos];
        for v in [
            0x00,
            0xff,
            orig ^ 0x01,
            orig ^ 0x80,
            orig.wrapping_add(1),
            0x09,
            0x20,
        ] {
            b[pos] = v;
            if !check(&b, &|| format!("byte {pos} = {v:#x}")) {
                rejected += 1;
            }
        }
        b[pos] = orig;
    }
    // Most header mutations must be caught; data-section mutations are harmless.
    assert!(rejected > 300, "only {rejected} mutations were rejected");
}

#[test]
fn truncations_and_insertions_never_panic() {
    let b = synthetic();
    for cut in 0..b.len() {
        check(&b[..cut], &|| format!("truncation at {cut}"));
    }
    // Insert / delete one byte at every header position: every later field shifts.
    let header_end = GgufFile::parse(&b, Path::new("m")).unwrap().data_offset as usize;
    for pos in 0..header_end {
        let mut ins = b.clone();
        ins.insert(pos, 0x41);
        check(&ins, &|| format!("insertion at {pos}"));
        let mut del = b.clone();
        del.remove(pos);
        check(&del, &|| format!("deletion at {pos}"));
    }
}

#[test]
fn smollm2_header_mutations_never_panic() {
    let Some(path) = ggufq::testutil::smollm2_path() else {
        eprintln!("SKIPPED smollm2_header_mutations_never_panic: SmolLM2 not found");
        return;
    };
    let mut b = std::fs::read(path).unwrap();
    let header_end = GgufFile::parse(&b, Path::new("m")).unwrap().data_offset as usize;
    // A fixed pseudo-random walk over the header (xorshift, fixed seed).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pos = (x % header_end as u64) as usize;
        let orig = b[pos];
        let v = (x >> 32) as u8;
        b[pos] = v;
        check(&b, &|| format!("SmolLM2 byte {pos} = {v:#x}"));
        b[pos] = orig;
    }
    // The first 64 bytes and the tensor-info region get every position.
    for pos in (0..64).chain(header_end.saturating_sub(400)..header_end) {
        let orig = b[pos];
        b[pos] = orig ^ 0xff;
        check(&b, &|| format!("SmolLM2 byte {pos} ^ 0xff"));
        b[pos] = orig;
    }
}
