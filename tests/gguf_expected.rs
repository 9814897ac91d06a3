//! Our reader agrees with gguf-py on every tensor of the real SmolLM2 model
//! (expected data: testdata/smollm2_tensors.json, made once by testdata/gen_smollm2_tensors.py).

use ggufq::gguf::GgufFile;
use serde_json::Value as J;

#[test]
fn smollm2_tensors_match_gguf_py() {
    let Some(path) = ggufq::testutil::smollm2_path() else {
        eprintln!("SKIPPED smollm2_tensors_match_gguf_py: SmolLM2 not found (see shared/testdata/README.md)");
        return;
    };
    let expected: J = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/smollm2_tensors.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.data_offset, expected["data_offset"].as_u64().unwrap());
    assert_eq!(f.alignment, expected["alignment"].as_u64().unwrap());

    // gguf-py lists three pseudo-fields (GGUF.version, ...) before the real keys.
    let keys: Vec<&str> = expected["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .filter(|k| !k.starts_with("GGUF."))
        .collect();
    let ours: Vec<&str> = f.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(ours, keys);

    let et = expected["tensors"].as_array().unwrap();
    assert_eq!(f.tensors.len(), et.len());
    for (t, e) in f.tensors.iter().zip(et) {
        assert_eq!(t.name, e["name"].as_str().unwrap());
        assert_eq!(t.type_name(), e["type"].as_str().unwrap(), "{}", t.name);
        assert_eq!(
            u64::from(t.type_id),
            e["type_id"].as_u64().unwrap(),
            "{}",
            t.name
        );
        let shape: Vec<u64> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, shape, "{}", t.name);
        assert_eq!(
            t.n_elements(),
            e["n_elements"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.n_bytes, e["n_bytes"].as_u64(), "{}", t.name);
        assert_eq!(t.offset, e["offset"].as_u64().unwrap(), "{}", t.name);
    }
}
