//! Golden-vector conformance: every file in `shared/testdata/golden/` (both sets, every type,
//! K-quants and Q8_K included) is reproduced bit for bit, driven by `manifest.json`.
//!
//! * `input` / `imatrix_weights`: size and sha256 match the manifest (the data is intact).
//! * `quantized` (`<TYPE>.bin`): `quantize_tensor` on `input.f32` gives the same bytes, and so
//!   does `quantize_row` called row by row.
//! * `quantized_imatrix` (`<TYPE>.imatrix.bin`): the same, with `imatrix.f32` as the weights.
//! * `dequantized` (`<TYPE>.deq.f32`): `dequantize_tensor` and `dequantize_row` on the golden
//!   `<TYPE>.bin` give the same f32 values, compared by bit pattern (so -0.0 != +0.0).
//!
//! Each file gets a PASS/FAIL line on stdout (`cargo test --test golden -- --nocapture`); the
//! test fails listing every failing file with its first mismatching row and byte or value.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ggufq::quant::{dequantize_row, dequantize_tensor, quantize_row, quantize_tensor, GgmlType};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn golden_dir() -> PathBuf {
    ggufq::testutil::testdata_dir().join("golden")
}

struct Entry {
    path: String,
    set: String,
    kind: String,
    ty: String,
    type_id: u64,
    rows: usize,
    row_length: usize,
    bytes_per_row: usize,
    bytes: usize,
    sha256: String,
}

fn field<'a>(v: &'a Value, k: &str) -> Result<&'a Value, String> {
    v.get(k)
        .ok_or_else(|| format!("manifest entry lacks '{k}': {v}"))
}
fn str_field(v: &Value, k: &str) -> Result<String, String> {
    field(v, k)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("'{k}' is not a string"))
}
fn num_field(v: &Value, k: &str) -> Result<u64, String> {
    field(v, k)?
        .as_u64()
        .ok_or_else(|| format!("'{k}' is not a number"))
}

fn load_manifest(dir: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("manifest.json").display()));
    let m: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let files = m["files"]
        .as_array()
        .expect("manifest.json has a files array");
    files
        .iter()
        .map(|f| -> Result<Entry, String> {
            Ok(Entry {
                path: str_field(f, "path")?,
                set: str_field(f, "set")?,
                kind: str_field(f, "kind")?,
                ty: str_field(f, "type")?,
                type_id: num_field(f, "ggml_type_id")?,
                rows: num_field(f, "rows")? as usize,
                row_length: num_field(f, "row_length")? as usize,
                bytes_per_row: num_field(f, "bytes_per_row")? as usize,
                bytes: num_field(f, "bytes")? as usize,
                sha256: str_field(f, "sha256")?,
            })
        })
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("manifest.json: {e}"))
}

fn read(dir: &Path, rel: &str) -> Result<Vec<u8>, String> {
    std::fs::read(dir.join(rel)).map_err(|e| format!("cannot read {rel}: {e}"))
}

fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// First differing byte of two encodings, as "row R byte B (block K offset O)".
fn first_byte_mismatch(got: &[u8], want: &[u8], e: &Entry, ty: GgmlType) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("length {} != expected {}", got.len(), want.len()));
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b)?;
    let (row, byte) = (i / e.bytes_per_row, i % e.bytes_per_row);
    let ts = ty.type_size() as usize;
    let n_bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let bad_rows: BTreeSet<usize> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, _)| k / e.bytes_per_row)
        .collect();
    Some(format!(
        "row {row} byte {byte} (block {} offset {}): got {:#04x}, want {:#04x}; \
         {n_bad} bytes differ in {} rows {:?}",
        byte / ts,
        byte % ts,
        got[i],
        want[i],
        bad_rows.len(),
        bad_rows.iter().take(12).collect::<Vec<_>>()
    ))
}

/// First differing f32 (by bits), as "row R column C".
fn first_f32_mismatch(got: &[f32], want: &[f32], row_length: usize) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values != expected {}", got.len(), want.len()));
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())?;
    let n_bad = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    Some(format!(
        "row {} column {}: got {:e} ({:#010x}), want {:e} ({:#010x}); {n_bad} values differ",
        i / row_length,
        i % row_length,
        got[i],
        got[i].to_bits(),
        want[i],
        want[i].to_bits()
    ))
}

fn check(dir: &Path, e: &Entry) -> Result<(), String> {
    let want = read(dir, &e.path)?;
    if want.len() != e.bytes {
        return Err(format!(
            "file has {} bytes, manifest says {}",
            want.len(),
            e.bytes
        ));
    }
    let sha = hex(&Sha256::digest(&want));
    if sha != e.sha256 {
        return Err(format!("sha256 {sha} != manifest {}", e.sha256));
    }
    if e.kind == "input" || e.kind == "imatrix_weights" {
        return Ok(());
    }
    let ty = GgmlType::from_name(&e.ty).ok_or_else(|| format!("unknown type {}", e.ty))?;
    if u64::from(ty.id()) != e.type_id {
        return Err(format!(
            "{ty} has id {} in ggufq, {} in the manifest",
            ty.id(),
            e.type_id
        ));
    }
    let input = to_f32(&read(dir, &format!("{}/input.f32", e.set))?);
    let n = e.rows * e.row_length;
    if input.len() != n {
        return Err(format!(
            "{}/input.f32 holds {} values, want {n}",
            e.set,
            input.len()
        ));
    }
    match e.kind.as_str() {
        "quantized" | "quantized_imatrix" => {
            let imatrix = if e.kind == "quantized_imatrix" {
                Some(to_f32(&read(dir, &format!("{}/imatrix.f32", e.set))?))
            } else {
                None
            };
            let w = imatrix.as_deref();
            // Row by row first (pinpoints the row), then the parallel tensor path.
            let mut rows_out = vec![0u8; want.len()];
            for (r, (src, dst)) in input
                .chunks(e.row_length)
                .zip(rows_out.chunks_mut(e.bytes_per_row))
                .enumerate()
            {
                quantize_row(ty, src, w, dst)
                    .map_err(|err| format!("quantize_row row {r}: {err}"))?;
            }
            if let Some(m) = first_byte_mismatch(&rows_out, &want, e, ty) {
                return Err(format!("quantize_row: {m}"));
            }
            let tensor = quantize_tensor(ty, &input, e.row_length, w)
                .map_err(|err| format!("quantize_tensor: {err}"))?;
            if let Some(m) = first_byte_mismatch(&tensor, &want, e, ty) {
                return Err(format!("quantize_tensor: {m}"));
            }
            Ok(())
        }
        "dequantized" => {
            let want = to_f32(&want);
            let bin_path = format!("{}/{}.bin", e.set, e.ty);
            let bin = read(dir, &bin_path)?;
            let rb = ty
                .bytes_for(e.row_length as u64)
                .ok_or_else(|| format!("{ty}: row length {} is not whole blocks", e.row_length))?
                as usize;
            let mut rows_out = vec![0f32; n];
            for (r, (src, dst)) in bin
                .chunks(rb)
                .zip(rows_out.chunks_mut(e.row_length))
                .enumerate()
            {
                dequantize_row(ty, src, dst)
                    .map_err(|err| format!("dequantize_row row {r}: {err}"))?;
            }
            if let Some(m) = first_f32_mismatch(&rows_out, &want, e.row_length) {
                return Err(format!("dequantize_row({bin_path}): {m}"));
            }
            let tensor = dequantize_tensor(ty, &bin, n)
                .map_err(|err| format!("dequantize_tensor: {err}"))?;
            if let Some(m) = first_f32_mismatch(&tensor, &want, e.row_length) {
                return Err(format!("dequantize_tensor({bin_path}): {m}"));
            }
            Ok(())
        }
        other => Err(format!("unknown kind '{other}'")),
    }
}

/// Every regular file under `dir` (relative paths), except the README and the manifest.
fn files_on_disk(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for ent in rd.flatten() {
            let p = ent.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out.remove("README.md");
    out.remove("manifest.json");
    out
}

#[test]
fn golden_vectors_every_file() {
    let dir = golden_dir();
    assert!(
        dir.join("manifest.json").is_file(),
        "golden vectors not found at {}",
        dir.display()
    );
    let entries = load_manifest(&dir);

    let listed: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
    let on_disk = files_on_disk(&dir);
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "files in golden/ not in manifest.json: {unlisted:?}"
    );
    let kinds: BTreeSet<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains("quantized_imatrix") && kinds.contains("dequantized"));

    let mut failures = Vec::new();
    let mut report = String::new();
    for e in &entries {
        match check(&dir, e) {
            Ok(()) => {
                let _ = writeln!(report, "PASS {:<28} {}", e.path, e.kind);
            }
            Err(msg) => {
                let _ = writeln!(report, "FAIL {:<28} {}: {msg}", e.path, e.kind);
                failures.push(format!("{}: {msg}", e.path));
            }
        }
    }
    println!("{report}");
    println!(
        "{} of {} golden files pass",
        entries.len() - failures.len(),
        entries.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} golden files fail:\n  {}",
        failures.len(),
        entries.len(),
        failures.join("\n  ")
    );
}
