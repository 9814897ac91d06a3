//! Read → write → compare: the writer reproduces llama.cpp-written files byte for byte.

use ggufq::gguf::{Array, GgufFile, GgufWriter, TensorSpec, Value, ValueType};
use ggufq::quant::GgmlType;

/// Rewrite an open file with our writer into memory.
fn rewrite(f: &GgufFile) -> Vec<u8> {
    let specs = f
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            type_id: t.type_id,
            n_bytes: t.n_bytes.unwrap(),
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), f.version, f.alignment, &f.metadata, specs).unwrap();
    for t in &f.tensors {
        w.write_tensor(f.tensor_data(t).unwrap()).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn smollm2_round_trip_is_byte_identical() {
    let Some(path) = ggufq::testutil::smollm2_path() else {
        eprintln!("SKIPPED smollm2_round_trip_is_byte_identical: SmolLM2 not found (see shared/testdata/README.md)");
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.tensors.len(), 272);
    let out = rewrite(&f);
    assert_eq!(out.len() as u64, f.file_size);
    let orig = f.as_bytes();
    if let Some(i) = out.iter().zip(orig).position(|(a, b)| a != b) {
        panic!("first difference at byte {i}");
    }
    // And the rewrite parses to the same header.
    let g = GgufFile::from_bytes(out, "rewritten").unwrap();
    assert_eq!(g.metadata, f.metadata);
    assert_eq!(g.tensors, f.tensors);
}

fn all_values() -> Vec<(String, Value)> {
    let s = |x: &str| Value::String(x.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("t.u8".into(), Value::U8(255)),
        ("t.i8".into(), Value::I8(-128)),
        ("t.u16".into(), Value::U16(65535)),
        ("t.i16".into(), Value::I16(-2)),
        ("t.u32".into(), Value::U32(u32::MAX)),
        ("t.i32".into(), Value::I32(i32::MIN)),
        ("t.f32".into(), Value::F32(-1.5)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), s("héllo ✓")),
        ("t.empty".into(), s("")),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        (
            "t.arr_i32".into(),
            Value::Array(Array::new(
                ValueType::I32,
                (0..100).map(Value::I32).collect(),
            )),
        ),
        (
            "t.arr_str".into(),
            Value::Array(Array::new(ValueType::String, vec![s("a"), s(""), s("ccc")])),
        ),
        (
            "t.arr_bool".into(),
            Value::Array(Array::new(
                ValueType::Bool,
                vec![Value::Bool(false), Value::Bool(true)],
            )),
        ),
        (
            "t.arr_empty".into(),
            Value::Array(Array::new(ValueType::F64, vec![])),
        ),
        (
            "t.nested".into(),
            Value::Array(Array::new(
                ValueType::Array,
                vec![
                    Value::Array(Array::new(ValueType::U8, vec![Value::U8(1), Value::U8(2)])),
                    Value::Array(Array::new(
                        ValueType::Array,
                        vec![Value::Array(Array::new(ValueType::String, vec![s("deep")]))],
                    )),
                ],
            )),
        ),
    ]
}

fn synth(
    version: u32,
    alignment: u64,
    extra_meta: Vec<(String, Value)>,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut meta = all_values();
    meta.extend(extra_meta);
    let specs = vec![
        TensorSpec::new("a.weight", vec![64, 3], GgmlType::Q4_0).unwrap(),
        TensorSpec::new("b.bias", vec![7], GgmlType::F32).unwrap(),
        TensorSpec::new("c.weight", vec![256, 2, 1, 2], GgmlType::Q6_K).unwrap(),
        // An id ggufq does not know: size trusted.
        TensorSpec {
            name: "d.mystery".into(),
            dims: vec![10],
            type_id: 99,
            n_bytes: 13,
        },
        TensorSpec::new("e.empty", vec![0, 4], GgmlType::F16).unwrap(),
        TensorSpec::new("f.half", vec![5, 3], GgmlType::F16).unwrap(),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (0..s.n_bytes)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8))
                .collect()
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), version, alignment, &meta, specs).unwrap();
    for d in &data {
        w.write_tensor(d).unwrap();
    }
    (w.finish().unwrap(), data)
}

#[test]
fn synthetic_round_trips_all_value_types() {
    for (version, alignment) in [(3, 32), (2, 32), (3, 64), (3, 1), (2, 4096)] {
        let extra = if alignment == 32 {
            vec![]
        } else {
            vec![(
                "general.alignment".to_string(),
                Value::U32(alignment as u32),
            )]
        };
        let (bytes, data) = synth(version, alignment, extra.clone());
        let f = GgufFile::from_bytes(bytes.clone(), "synth").unwrap();
        assert_eq!(f.version, version);
        assert_eq!(f.alignment, alignment);
        assert_eq!(f.data_offset % alignment, 0);
        let mut expect = all_values();
        expect.extend(extra);
        assert_eq!(f.metadata, expect);
        assert_eq!(f.tensors.len(), 6);
        let mystery = f.tensor("d.mystery").unwrap();
        assert_eq!(mystery.ty, None);
        assert_eq!(mystery.type_name(), "unknown(99)");
        // Size of an unknown type = gap to the next tensor (13 padded to the alignment).
        assert_eq!(mystery.n_bytes, Some(13u64.next_multiple_of(alignment)));
        for (t, d) in f.tensors.iter().zip(&data) {
            assert_eq!(t.offset % alignment, 0, "{}", t.name);
            if t.ty.is_some() {
                assert_eq!(f.tensor_data(t).unwrap(), &d[..], "{}", t.name);
            } else {
                assert_eq!(&f.tensor_data(t).unwrap()[..d.len()], &d[..]);
            }
        }
        let c = f.tensor("c.weight").unwrap();
        assert_eq!((c.n_elements(), c.row_len(), c.n_rows()), (1024, 256, 4));
        assert_eq!(c.n_bytes, Some(4 * 210));
        // Byte-identical rewrite.
        let specs = f
            .tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                type_id: t.type_id,
                n_bytes: t.n_bytes.unwrap(),
            })
            .collect();
        let mut w =
            GgufWriter::new(Vec::new(), f.version, f.alignment, &f.metadata, specs).unwrap();
        for t in &f.tensors {
            w.write_tensor(f.tensor_data(t).unwrap()).unwrap();
        }
        assert_eq!(w.finish().unwrap(), bytes, "v{version} align {alignment}");
    }
}

#[test]
fn open_from_disk_matches_from_bytes() {
    let (bytes, _) = synth(3, 32, vec![]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.gguf");
    let mut out = ggufq::gguf::AtomicOutput::create(&p).unwrap();
    std::io::Write::write_all(&mut out, &bytes).unwrap();
    out.commit().unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.as_bytes(), &bytes[..]);
    assert_eq!(f.file_size, bytes.len() as u64);
    assert_eq!(f.get_str("t.string"), Some("héllo ✓"));
    assert_eq!(f.get_u64("t.u32"), Some(u32::MAX as u64));
    assert_eq!(f.get_f64("t.f32"), Some(-1.5));
    assert_eq!(f.architecture(), Some("llama"));
}

#[test]
fn writer_rejects_inconsistent_input() {
    let meta = vec![("general.alignment".to_string(), Value::U32(64))];
    let err = |r: ggufq::error::Result<GgufWriter<Vec<u8>>>| r.err().unwrap().to_string();
    assert!(err(GgufWriter::new(Vec::new(), 3, 32, &meta, vec![])).contains("disagrees"));
    assert!(
        err(GgufWriter::new(Vec::new(), 3, 64, &[], vec![])).contains("needs a general.alignment")
    );
    assert!(err(GgufWriter::new(Vec::new(), 1, 32, &[], vec![])).contains("version 1"));
    let bad_arr = vec![(
        "k".to_string(),
        Value::Array(Array::new(ValueType::U8, vec![Value::I8(1)])),
    )];
    assert!(err(GgufWriter::new(Vec::new(), 3, 32, &bad_arr, vec![]))
        .contains("array element 0 is int8"));
    let t = TensorSpec {
        name: "x".into(),
        dims: vec![32],
        type_id: GgmlType::Q4_0.id(),
        n_bytes: 10,
    };
    let ok = TensorSpec {
        n_bytes: 18,
        ..t.clone()
    };
    assert!(err(GgufWriter::new(
        Vec::new(),
        3,
        32,
        &[],
        vec![ok.clone(), ok]
    ))
    .contains("duplicate tensor"));
    assert!(err(GgufWriter::new(Vec::new(), 3, 32, &[], vec![t])).contains("need Some(18)"));

    let t = TensorSpec::new("x", vec![4], GgmlType::F32).unwrap();
    let mut w = GgufWriter::new(Vec::new(), 3, 32, &[], vec![t]).unwrap();
    assert!(w
        .write_tensor(&[0; 15])
        .unwrap_err()
        .to_string()
        .contains("got 15 bytes, expected 16"));
    w.write_tensor(&[0; 16]).unwrap();
    assert!(w.write_tensor(&[0; 16]).is_err());
    let out = w.finish().unwrap();
    assert_eq!(out.len() % 32, 0);

    let t = TensorSpec::new("x", vec![4], GgmlType::F32).unwrap();
    let w = GgufWriter::new(Vec::new(), 3, 32, &[], vec![t]).unwrap();
    assert!(w
        .finish()
        .unwrap_err()
        .to_string()
        .contains("finish after 0 of 1"));
}
