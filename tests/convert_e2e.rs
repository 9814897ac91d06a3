//! `convert` end to end on a small synthetic llama GGUF: every output type, atomic output,
//! manifest content, metadata, refusals, imatrix, tensor-type export and the CLI's --dry-run.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ggufq::convert::{convert, manifest_path, ConvertOptions};
use ggufq::gguf::{Array, GgufFile, GgufWriter, TensorSpec, Value, ValueType};
use ggufq::quant::{self, GgmlType};
use ggufq::recipe::{Base, Recipe};
use sha2::{Digest, Sha256};

const E: u64 = 256;

/// (name, dims, f32 values) of each source tensor.
type Values = Vec<(String, Vec<u64>, Vec<f32>)>;

/// Deterministic pseudo-random values with a per-row scale (so the blocks differ).
fn data(seed: u64, n: usize, row: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            u * (0.5 + ((i / row) % 7) as f32 * 0.25)
        })
        .collect()
}

fn tensors() -> Vec<(String, Vec<u64>)> {
    let mut t = vec![("token_embd.weight".to_string(), vec![E, 64])];
    for i in 0..2 {
        for (n, d) in [
            ("attn_norm.weight", vec![E]),
            ("attn_q.weight", vec![E, E]),
            ("attn_k.weight", vec![E, 128]),
            ("attn_v.weight", vec![E, 128]),
            ("attn_output.weight", vec![E, E]),
            ("ffn_norm.weight", vec![E]),
            ("ffn_gate.weight", vec![E, 512]),
            ("ffn_up.weight", vec![E, 512]),
            ("ffn_down.weight", vec![512, E]),
        ] {
            t.push((format!("blk.{i}.{n}"), d));
        }
    }
    t.push(("output_norm.weight".into(), vec![E]));
    t.push(("output.weight".into(), vec![E, 64]));
    t
}

fn metadata() -> Vec<(String, Value)> {
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("synth".into())),
        ("general.file_type".into(), Value::U32(0)),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.embedding_length".into(), Value::U32(E as u32)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::new(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("b".into())],
            )),
        ),
        ("demo.count".into(), Value::U16(7)),
    ]
}

/// Write the synthetic model with every 2-D tensor stored as `ty` (1-D ones F32).
fn write_model(path: &Path, ty: GgmlType) -> Values {
    let ts = tensors();
    let mut specs = Vec::new();
    let mut payload = Vec::new();
    let mut values = Vec::new();
    for (k, (name, dims)) in ts.iter().enumerate() {
        let n: u64 = dims.iter().product();
        let v = data(k as u64, n as usize, dims[0] as usize);
        let t = if dims.len() == 1 { GgmlType::F32 } else { ty };
        let bytes = quant::quantize_tensor(t, &v, dims[0] as usize, None).unwrap();
        specs.push(TensorSpec::new(name.clone(), dims.clone(), t).unwrap());
        payload.push(bytes);
        values.push((name.clone(), dims.clone(), v));
    }
    let f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(std::io::BufWriter::new(f), 3, 32, &metadata(), specs).unwrap();
    for b in &payload {
        w.write_tensor(b).unwrap();
    }
    w.finish().unwrap();
    values
}

fn f32_source(dir: &Path) -> (PathBuf, Values) {
    let p = dir.join("src-f32.gguf");
    let v = write_model(&p, GgmlType::F32);
    (p, v)
}

fn opts(recipe: Recipe, out: &Path) -> ConvertOptions {
    let mut o = ConvertOptions::new(recipe);
    o.output = Some(out.to_path_buf());
    o
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_output_type_matches_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let (src, values) = f32_source(dir.path());
    for &ty in quant::QUANTIZABLE.iter() {
        let out = dir.path().join(format!("out-{ty}.gguf"));
        let res = convert(&src, &opts(Recipe::from_base(Base::Type(ty)), &out));
        // What the kernels say about this type, computed independently of convert.
        let direct: Result<Vec<Vec<u8>>, String> = values
            .iter()
            .filter(|(_, d, _)| d.len() == 2)
            .map(|(_, d, v)| {
                quant::quantize_tensor(ty, v, d[0] as usize, None).map_err(|e| e.to_string())
            })
            .collect();
        match (res, direct) {
            (Ok(rep), Ok(_)) => {
                assert_eq!(rep.output.as_deref(), Some(out.as_path()));
                let f = GgufFile::open(&out).unwrap();
                assert_eq!(f.tensors.len(), values.len());
                for (name, dims, v) in &values {
                    let t = f.tensor(name).unwrap();
                    assert_eq!(&t.dims, dims, "{name}");
                    let data = f.tensor_data(t).unwrap();
                    if dims.len() == 1 {
                        assert_eq!(t.ty, Some(GgmlType::F32), "{name} stays F32");
                        let want: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        assert_eq!(data, &want[..], "{name}");
                    } else {
                        assert_eq!(t.ty, Some(ty), "{name}");
                        let want = quant::quantize_tensor(ty, v, dims[0] as usize, None).unwrap();
                        assert!(
                            data == &want[..],
                            "{name} {ty}: bytes differ from quantize_tensor"
                        );
                    }
                }
                assert_eq!(f.get_u64("general.quantization_version"), Some(2));
                assert_eq!(
                    f.get_u64("general.file_type"),
                    Some(ggufq::recipe::presets::ftype_for_type(ty) as u64)
                );
            }
            (Err(e), Err(d)) => {
                // The kernel cannot produce this type yet: convert must fail the same way,
                // and leave nothing behind.
                assert!(
                    e.to_string().contains(&d),
                    "{ty}: convert said {e}, kernel said {d}"
                );
                assert!(!out.exists());
                assert!(!manifest_path(&out).exists());
            }
            (a, b) => panic!(
                "{ty}: convert {:?} but kernels {:?}",
                a.map(|_| ()),
                b.map(|_| ())
            ),
        }
    }
    assert!(
        !dir_names(dir.path()).iter().any(|n| n.ends_with(".tmp")),
        "no temp files left"
    );
}

#[test]
fn metadata_is_copied_in_order_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = f32_source(dir.path());
    let out = dir.path().join("meta.gguf");
    let r = Recipe::from_str_in(
        "base: Q8_0\nmetadata:\n  general.name: renamed\n  demo.count: 9\n  demo.new: 5\n  demo.neg: -5\n  demo.f: 0.25\n  tokenizer.ggml.tokens: null\n",
        "m.yaml",
        dir.path(),
    )
    .unwrap();
    convert(&src, &opts(r, &out)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let keys: Vec<&str> = f.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "general.architecture",
            "general.name",
            "llama.block_count",
            "llama.embedding_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "demo.count",
            "general.quantization_version",
            "general.file_type",
            "demo.f",
            "demo.neg",
            "demo.new",
        ]
    );
    assert_eq!(f.get_str("general.name"), Some("renamed"));
    assert_eq!(
        f.get("demo.count"),
        Some(&Value::U16(9)),
        "keeps the key's type"
    );
    assert_eq!(f.get("demo.new"), Some(&Value::U32(5)));
    assert_eq!(f.get("demo.neg"), Some(&Value::I32(-5)));
    assert_eq!(f.get("demo.f"), Some(&Value::F32(0.25)));
    assert_eq!(f.get_u64("general.file_type"), Some(7));

    let bad = Recipe::from_str_in(
        "base: Q8_0\nmetadata:\n  demo.count: 70000\n",
        "m.yaml",
        dir.path(),
    )
    .unwrap();
    let out2 = dir.path().join("meta2.gguf");
    let e = convert(&src, &opts(bad, &out2)).unwrap_err().to_string();
    assert!(
        e.contains("demo.count") && e.contains("does not fit"),
        "{e}"
    );
    assert!(!out2.exists());
}

#[test]
fn manifest_records_hashes_recipe_and_timings() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = f32_source(dir.path());
    let out = dir.path().join("m.gguf");
    let rep = convert(&src, &opts(Recipe::load("Q8_0").unwrap(), &out)).unwrap();
    let mpath = manifest_path(&out);
    assert_eq!(rep.manifest.as_deref(), Some(mpath.as_path()));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    assert_eq!(m["ggufq_version"], env!("CARGO_PKG_VERSION"));
    let src_sha = format!("{:x}", Sha256::digest(std::fs::read(&src).unwrap()));
    assert_eq!(m["source"]["sha256"], src_sha);
    let norm = serde_json::to_string(&m["recipe"]["normalized"]).unwrap();
    assert_eq!(
        m["recipe"]["sha256"],
        format!("{:x}", Sha256::digest(norm.as_bytes()))
    );
    assert_eq!(m["recipe"]["normalized"]["preset"], "Q8_0");
    assert_eq!(m["file_type"], 7);
    let f = GgufFile::open(&out).unwrap();
    let ts = m["tensors"].as_array().unwrap();
    assert_eq!(ts.len(), f.tensors.len());
    for (j, t) in ts.iter().zip(&f.tensors) {
        assert_eq!(j["name"], t.name.as_str());
        assert_eq!(j["type"], t.type_name().as_str());
        assert_eq!(j["bytes"], t.n_bytes.unwrap());
        let sha = format!("{:x}", Sha256::digest(f.tensor_data(t).unwrap()));
        assert_eq!(j["sha256"], sha, "{}", t.name);
    }
    assert!(
        m["timings"]["total_s"].as_f64().unwrap() >= m["timings"]["convert_s"].as_f64().unwrap()
    );
    assert_eq!(m["totals"]["to_bytes"], rep.plan.to_bytes());
}

#[test]
fn refusals_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = f32_source(dir.path());
    // OUT == IN, also through another spelling of the path.
    let before = std::fs::read(&src).unwrap();
    let same = dir.path().join(".").join("src-f32.gguf");
    let e = convert(&src, &opts(Recipe::load("Q8_0").unwrap(), &same))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is the input"), "{e}");
    assert_eq!(std::fs::read(&src).unwrap(), before);
    let link = dir.path().join("link.gguf");
    std::fs::hard_link(&src, &link).unwrap();
    let e = convert(&src, &opts(Recipe::load("Q8_0").unwrap(), &link))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is the input"), "hard link: {e}");
    std::fs::remove_file(&link).unwrap();
    assert_eq!(std::fs::read(&src).unwrap(), before);

    // A quantized source needs --allow-requantize.
    let q = dir.path().join("src-q8.gguf");
    write_model(&q, GgmlType::Q8_0);
    let out = dir.path().join("rq.gguf");
    let e = convert(
        &q,
        &opts(Recipe::from_base(Base::Type(GgmlType::Q4_0)), &out),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--allow-requantize"), "{e}");
    assert!(!out.exists());
    let mut o = opts(Recipe::from_base(Base::Type(GgmlType::Q4_0)), &out);
    o.allow_requantize = true;
    let rep = convert(&q, &o).unwrap();
    assert!(rep.plan.n_requantize() > 0);
    // Requantized data = dequantize(Q8_0) then quantize(Q4_0).
    let fq = GgufFile::open(&q).unwrap();
    let fo = GgufFile::open(&out).unwrap();
    let t = fq.tensor("blk.0.attn_q.weight").unwrap();
    let deq = quant::dequantize_tensor(
        GgmlType::Q8_0,
        fq.tensor_data(t).unwrap(),
        t.n_elements() as usize,
    )
    .unwrap();
    let want = quant::quantize_tensor(GgmlType::Q4_0, &deq, E as usize, None).unwrap();
    assert!(
        fo.tensor_data(fo.tensor("blk.0.attn_q.weight").unwrap())
            .unwrap()
            == &want[..]
    );

    // A tensor that cannot be quantized (NaN) fails the run: no OUT, no temp file, and an
    // existing OUT is left untouched.
    let nan = dir.path().join("nan.gguf");
    {
        let mut ts = tensors();
        ts.truncate(3);
        let mut specs = Vec::new();
        let mut payload = Vec::new();
        for (name, dims) in &ts {
            let n: u64 = dims.iter().product();
            let mut v = data(1, n as usize, dims[0] as usize);
            if name.contains("attn_q") {
                v[300] = f32::NAN;
            }
            payload.push(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            specs.push(TensorSpec::new(name.clone(), dims.clone(), GgmlType::F32).unwrap());
        }
        let f = std::fs::File::create(&nan).unwrap();
        let mut w = GgufWriter::new(f, 3, 32, &metadata(), specs).unwrap();
        for b in &payload {
            w.write_tensor(b).unwrap();
        }
        w.finish().unwrap();
    }
    let out = dir.path().join("keep.gguf");
    std::fs::write(&out, b"old content").unwrap();
    let listing = dir_names(dir.path());
    // (F16 output: a NaN value is rejected by the row validation, as in llama-quantize.)
    let e = convert(
        &nan,
        &opts(Recipe::from_base(Base::Type(GgmlType::F16)), &out),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("blk.0.attn_q.weight"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old content");
    assert_eq!(
        dir_names(dir.path()),
        listing,
        "no temp or manifest files left"
    );
}

#[test]
fn imatrix_weights_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let (src, values) = f32_source(dir.path());
    // A legacy .dat imatrix with entries for two tensors.
    let w: Vec<f32> = (0..E).map(|i| 1.0 + (i % 5) as f32).collect();
    let mut b = Vec::new();
    b.extend(2i32.to_le_bytes());
    for name in ["blk.0.attn_q.weight", "blk.1.ffn_up.weight"] {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(2i32.to_le_bytes()); // ncall: stored values are divided by it
        b.extend((E as i32).to_le_bytes());
        for x in &w {
            b.extend((x * 2.0).to_le_bytes());
        }
    }
    let im = dir.path().join("im.dat");
    std::fs::write(&im, &b).unwrap();
    let out = dir.path().join("im.gguf");
    let mut o = opts(Recipe::from_base(Base::Type(GgmlType::Q4_0)), &out);
    o.imatrix = Some(im.clone());
    let rep = convert(&src, &o).unwrap();
    assert_eq!(rep.manifest_json.unwrap()["imatrix"]["entries"], 2);
    let f = GgufFile::open(&out).unwrap();
    let (_, _, v) = values
        .iter()
        .find(|(n, _, _)| n == "blk.0.attn_q.weight")
        .unwrap();
    let with = quant::quantize_tensor(GgmlType::Q4_0, v, E as usize, Some(&w)).unwrap();
    let without = quant::quantize_tensor(GgmlType::Q4_0, v, E as usize, None).unwrap();
    assert_ne!(with, without, "the weights matter for Q4_0");
    assert!(
        f.tensor_data(f.tensor("blk.0.attn_q.weight").unwrap())
            .unwrap()
            == &with[..]
    );
    let (_, _, v) = values
        .iter()
        .find(|(n, _, _)| n == "blk.0.attn_k.weight")
        .unwrap();
    let plain = quant::quantize_tensor(GgmlType::Q4_0, v, E as usize, None).unwrap();
    assert!(
        f.tensor_data(f.tensor("blk.0.attn_k.weight").unwrap())
            .unwrap()
            == &plain[..]
    );

    // Wrong size for a tensor → error naming it.
    let mut bad = Vec::new();
    bad.extend(1i32.to_le_bytes());
    let name = "blk.0.attn_q.weight";
    bad.extend((name.len() as i32).to_le_bytes());
    bad.extend(name.as_bytes());
    bad.extend(1i32.to_le_bytes());
    bad.extend(3i32.to_le_bytes());
    bad.extend([0u8; 12]);
    std::fs::write(&im, &bad).unwrap();
    let out2 = dir.path().join("im2.gguf");
    let mut o = opts(Recipe::from_base(Base::Type(GgmlType::Q4_0)), &out2);
    o.imatrix = Some(im);
    let e = convert(&src, &o).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("imatrix has 3 values"),
        "{e}"
    );
    assert!(!out2.exists());
}

#[test]
fn fallback_best_picks_a_measured_type() {
    // 576-wide rows: Q4_K does not fit; llama says Q5_0; best measures Q5_0, Q4_0, Q4_1.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w576.gguf");
    let v = data(3, 576 * 32, 576);
    let specs = vec![TensorSpec::new("blk.0.attn_q.weight", vec![576, 32], GgmlType::F32).unwrap()];
    let f = std::fs::File::create(&p).unwrap();
    let mut w = GgufWriter::new(f, 3, 32, &metadata(), specs).unwrap();
    w.write_tensor(&quant::quantize_tensor(GgmlType::F32, &v, 576, None).unwrap())
        .unwrap();
    w.finish().unwrap();
    let r = Recipe::from_str_in("base: Q4_K\nfallback: best\n", "b.yaml", dir.path()).unwrap();
    let mut o = ConvertOptions::new(r);
    o.dry_run = true;
    let rep = convert(&p, &o).unwrap();
    let e = &rep.plan.entries[0];
    let fb = e.fallback.as_ref().unwrap();
    let tried: Vec<GgmlType> = fb.measured.iter().map(|m| m.0).collect();
    assert_eq!(tried, vec![GgmlType::Q5_0, GgmlType::Q4_0, GgmlType::Q4_1]);
    let best = fb
        .measured
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0;
    assert_eq!(e.to, Some(best));
    // Q5_0 keeps one more bit than Q4_0: its error must be lower.
    let err = |t| fb.measured.iter().find(|m| m.0 == t).unwrap().1;
    assert!(err(GgmlType::Q5_0) < err(GgmlType::Q4_0));
}

fn bin() -> Command {
    Command::cargo_bin("ggufq").unwrap()
}

#[test]
fn cli_dry_run_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = f32_source(dir.path());
    let tt = dir.path().join("types.txt");
    let out = bin()
        .args([
            "convert",
            src.to_str().unwrap(),
            "--recipe",
            "Q4_0",
            "--dry-run",
            "--export-tensor-types",
        ])
        .arg(&tt)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("blk.0.attn_q.weight"), "{text}");
    assert!(text.contains("F32 → Q4_0"), "{text}");
    assert!(
        text.contains("output.weight") && text.contains("F32 → Q6_K"),
        "{text}"
    );
    assert!(text.contains("kept (1-D)"), "{text}");
    assert!(text.contains("total: 21 tensors"), "{text}");
    let mut names = dir_names(dir.path());
    names.sort();
    assert_eq!(
        names,
        vec!["src-f32.gguf".to_string(), "types.txt".to_string()],
        "dry run writes no model"
    );
    let tt = std::fs::read_to_string(&tt).unwrap();
    assert!(tt.contains("^blk\\.1\\.ffn_down\\.weight$=q4_0\n"), "{tt}");
    assert!(tt.contains("^output\\.weight$=q6_k\n"), "{tt}");
    assert_eq!(tt.lines().count(), 16);

    let json = bin()
        .args([
            "convert",
            src.to_str().unwrap(),
            "--type",
            "Q8_0",
            "--dry-run",
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 21);
    assert_eq!(v["file_type"], 7);
}

#[test]
fn cli_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = f32_source(dir.path());
    let s = src.to_str().unwrap();
    let e = bin()
        .args(["convert", s, "--type", "Q4_X", "--dry-run"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let e = String::from_utf8(e).unwrap();
    assert!(e.contains("Q4_X") && e.contains("Q6_K"), "{e}");
    let r = dir.path().join("bad.yaml");
    std::fs::write(&r, "base: Q4_K\nrules:\n  - kind: attn_q\n    typ: Q5_K\n").unwrap();
    let e = bin()
        .args(["convert", s, "--recipe", r.to_str().unwrap(), "--dry-run"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let e = String::from_utf8(e).unwrap();
    assert!(e.contains("bad.yaml:4:5"), "{e}");
    let e = bin()
        .args(["convert", s, "--type", "Q8_0", "-o", s])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8(e).unwrap().contains("is the input"));
    let e = bin()
        .args(["convert", s, "--recipe", "nope.yaml", "--dry-run"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let e = String::from_utf8(e).unwrap();
    assert!(e.contains("nope.yaml") && e.contains("Q4_K_M"), "{e}");
    bin()
        .args(["convert", "missing.gguf", "--type", "Q8_0", "--dry-run"])
        .assert()
        .code(2);
    let warn = dir.path().join("warn.yaml");
    std::fs::write(
        &warn,
        "base: Q8_0\nrules:\n  - name: nope\n    type: Q4_0\n",
    )
    .unwrap();
    let out = dir.path().join("w.gguf");
    let a = bin()
        .args([
            "convert",
            s,
            "--recipe",
            warn.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--no-progress",
        ])
        .assert()
        .success();
    let o = a.get_output();
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert!(
        err.contains("warning: rule 1 (") && err.contains("warn.yaml:3) matches no tensor"),
        "{err}"
    );
    assert!(String::from_utf8(o.stdout.clone())
        .unwrap()
        .contains("wrote"));
    assert!(out.exists() && manifest_path(&out).exists());
}
