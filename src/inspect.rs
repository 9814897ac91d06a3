//! The library side of `ggufq inspect` and `ggufq diff`: summaries, tables, JSON, hashes.
//!
//! The JSON produced by [`inspect_json`] follows the schema `ggufq.inspect/1` documented in
//! docs/cli.md; fields are only ever added to it, never renamed or removed.

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use rayon::prelude::*;
use serde_json::{json, Map, Value as J};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::gguf::value::printable;
use crate::gguf::{GgufFile, TensorInfo, Value, ValueType};

/// Schema id written as `"schema"` in `inspect --json` output.
pub const INSPECT_SCHEMA: &str = "ggufq.inspect/1";
/// Schema id written as `"schema"` in `diff --json` output.
pub const DIFF_SCHEMA: &str = "ggufq.diff/1";
/// Arrays with more elements than this are summarised unless `full` is asked for.
pub const ARRAY_PREVIEW: usize = 8;
/// Strings longer than this (in characters) are cut in tables unless `full` is asked for.
pub const STRING_PREVIEW: usize = 60;

/// llama.cpp's `llama_ftype` names (`general.file_type`), without the `MOSTLY_` prefix.
pub fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "ALL_F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        1024 => "GUESSED",
        _ => return None,
    })
}

/// Per-type totals.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeCount {
    /// Type name (`Q4_K`, `unknown(99)`).
    pub ty: String,
    /// Number of tensors of this type.
    pub tensors: usize,
    /// Total elements.
    pub elements: u64,
    /// Total bytes.
    pub bytes: u64,
}

/// The headline facts about a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// Total elements of all tensors.
    pub parameter_count: u64,
    /// `general.file_type` id.
    pub file_type: Option<u64>,
    /// Its llama.cpp name.
    pub file_type_name: Option<String>,
    /// `general.quantization_version`.
    pub quantization_version: Option<u64>,
    /// File size in bytes.
    pub file_size: u64,
    /// Bytes of tensor data (sum of the tensors' sizes, padding excluded).
    pub tensor_bytes: u64,
    /// Overall bits per weight: tensor bytes × 8 / parameters.
    pub bpw: f64,
    /// Tensors per type, most bytes first.
    pub types: Vec<TypeCount>,
}

/// Bits per weight of `bytes` holding `elements` values (0 for no elements).
pub fn bpw(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

/// Compute the [`Summary`] of all tensors of `f`.
pub fn summary(f: &GgufFile) -> Summary {
    let mut types: Vec<TypeCount> = Vec::new();
    let (mut params, mut bytes) = (0u64, 0u64);
    for t in &f.tensors {
        let (n, b) = (t.n_elements(), t.n_bytes.unwrap_or(0));
        params = params.saturating_add(n);
        bytes = bytes.saturating_add(b);
        let name = t.type_name();
        match types.iter_mut().find(|c| c.ty == name) {
            Some(c) => {
                c.tensors += 1;
                c.elements += n;
                c.bytes += b;
            }
            None => types.push(TypeCount {
                ty: name,
                tensors: 1,
                elements: n,
                bytes: b,
            }),
        }
    }
    types.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.ty.cmp(&b.ty)));
    let file_type = f.get_u64("general.file_type");
    Summary {
        architecture: f.architecture().map(str::to_string),
        name: f.get_str("general.name").map(str::to_string),
        parameter_count: params,
        file_type,
        file_type_name: file_type.and_then(file_type_name).map(str::to_string),
        quantization_version: f.get_u64("general.quantization_version"),
        file_size: f.file_size,
        tensor_bytes: bytes,
        bpw: bpw(bytes, params),
        types,
    }
}

/// `1.2 KiB`, `93.8 MiB`, ...
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `134.5M`, `6.74B` parameters.
pub fn human_count(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        n.to_string()
    }
}

/// The type of a value as shown in tables: `uint32`, `string`, `array[string]`.
pub fn type_label(v: &Value) -> String {
    match v {
        Value::Array(a) => match a.values.first() {
            Some(Value::Array(_)) if a.elem_type == ValueType::Array => {
                format!("array[{}]", type_label(&a.values[0]))
            }
            _ => format!("array[{}]", a.elem_type),
        },
        v => v.value_type().to_string(),
    }
}

/// Render a value for a table: long strings and arrays are cut unless `full`.
pub fn render_value(v: &Value, full: bool) -> String {
    match v {
        Value::String(s) if !full && s.chars().count() > STRING_PREVIEW => {
            let head: String = s.chars().take(STRING_PREVIEW).collect();
            format!("{head:?}… ({} bytes)", s.len())
        }
        Value::Array(a) if !full && a.len() > ARRAY_PREVIEW => {
            let head: Vec<String> = a.values[..ARRAY_PREVIEW / 2]
                .iter()
                .map(|v| render_value(v, false))
                .collect();
            format!("[{}, …] ({} items)", head.join(", "), a.len())
        }
        Value::Array(a) => {
            let items: Vec<String> = a.values.iter().map(|v| render_value(v, full)).collect();
            format!("[{}]", items.join(", "))
        }
        v => v.to_string(),
    }
}

/// A value as JSON. Floats keep their shortest decimal form; NaN and infinities become `null`.
pub fn value_json(v: &Value) -> J {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => x
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(J::Null, J::Number),
        Value::F64(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => J::Array(a.values.iter().map(value_json).collect()),
    }
}

fn metadata_entry_json(v: &Value, full: bool) -> J {
    let mut m = Map::new();
    m.insert("type".into(), json!(v.value_type().name()));
    if let Value::Array(a) = v {
        m.insert("elem_type".into(), json!(a.elem_type.name()));
        m.insert("len".into(), json!(a.len()));
        if full || a.len() <= ARRAY_PREVIEW {
            m.insert("value".into(), value_json(v));
        }
    } else {
        m.insert("value".into(), value_json(v));
    }
    J::Object(m)
}

/// Shape in ggml order, as `576 × 49152`.
pub fn shape_string(dims: &[u64]) -> String {
    dims.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" × ")
}

/// Hex SHA-256 of every tensor's data, computed in parallel, in the order given.
pub fn tensor_hashes(f: &GgufFile, tensors: &[&TensorInfo]) -> Result<Vec<String>> {
    tensors
        .par_iter()
        .map(|t| {
            let d = f.tensor_data(t)?;
            Ok(hex(&Sha256::digest(d)))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Options of `ggufq inspect`.
#[derive(Clone, Debug, Default)]
pub struct InspectOptions {
    /// Print long arrays and strings in full.
    pub full: bool,
    /// Only tensors whose name matches.
    pub filter: Option<regex::Regex>,
    /// Per-tensor SHA-256.
    pub sha256: bool,
}

/// The tensors selected by `opts.filter`, in file order.
pub fn selected<'a>(f: &'a GgufFile, opts: &InspectOptions) -> Vec<&'a TensorInfo> {
    f.tensors
        .iter()
        .filter(|t| opts.filter.as_ref().is_none_or(|r| r.is_match(&t.name)))
        .collect()
}

/// The `inspect --json` document (schema [`INSPECT_SCHEMA`]).
pub fn inspect_json(f: &GgufFile, opts: &InspectOptions) -> Result<J> {
    let s = summary(f);
    let tensors = selected(f, opts);
    let hashes = if opts.sha256 {
        Some(tensor_hashes(f, &tensors)?)
    } else {
        None
    };
    let mut meta = Map::new();
    for (k, v) in &f.metadata {
        meta.insert(k.clone(), metadata_entry_json(v, opts.full));
    }
    let tj: Vec<J> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = t.n_elements();
            let b = t.n_bytes.unwrap_or(0);
            let mut m = Map::new();
            m.insert("name".into(), json!(t.name));
            m.insert("type".into(), json!(t.type_name()));
            m.insert("type_id".into(), json!(t.type_id));
            m.insert("dims".into(), json!(t.dims));
            m.insert("n_elements".into(), json!(n));
            m.insert("n_bytes".into(), json!(t.n_bytes));
            m.insert("bpw".into(), json!(round4(bpw(b, n))));
            m.insert("offset".into(), json!(t.offset));
            m.insert("file_offset".into(), json!(f.data_offset + t.offset));
            if let Some(h) = &hashes {
                m.insert("sha256".into(), json!(h[i]));
            }
            J::Object(m)
        })
        .collect();
    Ok(json!({
        "schema": INSPECT_SCHEMA,
        "file": f.path.display().to_string(),
        "file_size": f.file_size,
        "version": f.version,
        "alignment": f.alignment,
        "data_offset": f.data_offset,
        "summary": {
            "architecture": s.architecture,
            "name": s.name,
            "parameter_count": s.parameter_count,
            "file_type": s.file_type,
            "file_type_name": s.file_type_name,
            "quantization_version": s.quantization_version,
            "tensor_bytes": s.tensor_bytes,
            "bpw": round4(s.bpw),
            "n_tensors": f.tensors.len(),
            "n_metadata": f.metadata.len(),
            "types": s.types.iter().map(|c| json!({
                "type": c.ty, "tensors": c.tensors, "elements": c.elements, "bytes": c.bytes,
                "bpw": round4(bpw(c.bytes, c.elements)),
            })).collect::<Vec<_>>(),
        },
        "metadata": meta,
        "tensors": tj,
    }))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

fn right(s: impl ToString) -> Cell {
    Cell::new(s).set_alignment(CellAlignment::Right)
}

/// The summary: a key/value table followed by the per-type table.
pub fn summary_text(f: &GgufFile) -> String {
    let s = summary(f);
    let mut t = table();
    let opt = |o: &Option<String>| {
        o.as_deref()
            .map_or("-".into(), |v| printable(v).into_owned())
    };
    t.set_header(vec!["summary", ""]);
    t.add_row(vec!["file".to_string(), f.path.display().to_string()]);
    t.add_row(vec!["GGUF version".to_string(), f.version.to_string()]);
    t.add_row(vec!["architecture".to_string(), opt(&s.architecture)]);
    t.add_row(vec!["name".to_string(), opt(&s.name)]);
    t.add_row(vec![
        "parameters".to_string(),
        format!("{} ({})", s.parameter_count, human_count(s.parameter_count)),
    ]);
    t.add_row(vec![
        "file type".to_string(),
        match (s.file_type, &s.file_type_name) {
            (Some(id), Some(n)) => format!("{n} ({id})"),
            (Some(id), None) => format!("unknown ({id})"),
            _ => "-".into(),
        },
    ]);
    t.add_row(vec![
        "quantization version".to_string(),
        s.quantization_version.map_or("-".into(), |v| v.to_string()),
    ]);
    t.add_row(vec![
        "file size".to_string(),
        format!("{} ({})", s.file_size, human_bytes(s.file_size)),
    ]);
    t.add_row(vec![
        "tensor data".to_string(),
        format!("{} ({})", s.tensor_bytes, human_bytes(s.tensor_bytes)),
    ]);
    t.add_row(vec!["bits per weight".to_string(), format!("{:.4}", s.bpw)]);
    t.add_row(vec!["tensors".to_string(), f.tensors.len().to_string()]);
    t.add_row(vec![
        "metadata keys".to_string(),
        f.metadata.len().to_string(),
    ]);
    t.add_row(vec!["alignment".to_string(), f.alignment.to_string()]);

    let mut ty = table();
    ty.set_header(vec!["type", "tensors", "elements", "bytes", "share", "bpw"]);
    for c in &s.types {
        let share = if s.tensor_bytes == 0 {
            0.0
        } else {
            c.bytes as f64 * 100.0 / s.tensor_bytes as f64
        };
        ty.add_row(vec![
            Cell::new(&c.ty),
            right(c.tensors),
            right(c.elements),
            right(c.bytes),
            right(format!("{share:.1}%")),
            right(format!("{:.4}", bpw(c.bytes, c.elements))),
        ]);
    }
    format!("{t}\n{ty}\n")
}

/// The metadata table (key, type, value).
pub fn metadata_text(f: &GgufFile, full: bool) -> String {
    let mut t = table();
    t.set_header(vec!["key", "type", "value"]);
    for (k, v) in &f.metadata {
        t.add_row(vec![
            printable(k).into_owned(),
            type_label(v),
            render_value(v, full),
        ]);
    }
    format!("{t}\n")
}

/// The tensor table (name, type, shape, elements, bytes, bpw, offset[, sha256]).
pub fn tensors_text(f: &GgufFile, tensors: &[&TensorInfo], hashes: Option<&[String]>) -> String {
    let mut t = table();
    let mut header = vec![
        "#", "name", "type", "shape", "elements", "bytes", "bpw", "offset",
    ];
    if hashes.is_some() {
        header.push("sha256");
    }
    t.set_header(header);
    for (i, ti) in tensors.iter().enumerate() {
        let n = ti.n_elements();
        let b = ti.n_bytes.unwrap_or(0);
        let mut row = vec![
            right(i),
            Cell::new(printable(&ti.name)),
            Cell::new(ti.type_name()),
            Cell::new(shape_string(&ti.dims)),
            right(n),
            right(b),
            right(format!("{:.4}", bpw(b, n))),
            right(f.data_offset + ti.offset),
        ];
        if let Some(h) = hashes {
            row.push(Cell::new(&h[i]));
        }
        t.add_row(row);
    }
    format!("{t}\n")
}

/// Split `blk.N.rest` into `(N, kind)`; the kind drops a trailing `.weight`.
pub fn block_kind(name: &str) -> Option<(u64, String)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, kind) = rest.split_once('.')?;
    let n: u64 = n.parse().ok()?;
    let kind = kind.strip_suffix(".weight").unwrap_or(kind);
    Some((n, kind.to_string()))
}

/// The `--layers` matrix: one row per block, one column per tensor kind (first-seen order),
/// each cell the tensor's type (`-` where a block lacks that kind); then the other tensors.
pub fn layers_text(tensors: &[&TensorInfo]) -> String {
    let mut kinds: Vec<String> = Vec::new();
    let mut blocks: std::collections::BTreeMap<u64, Vec<(String, String)>> = Default::default();
    let mut others: Vec<(String, String)> = Vec::new();
    for t in tensors {
        match block_kind(&t.name) {
            Some((n, kind)) => {
                let kind = printable(&kind).into_owned();
                if !kinds.contains(&kind) {
                    kinds.push(kind.clone());
                }
                blocks.entry(n).or_default().push((kind, t.type_name()));
            }
            None => others.push((printable(&t.name).into_owned(), t.type_name())),
        }
    }
    let mut out = String::new();
    if !blocks.is_empty() {
        let mut t = table();
        let mut header = vec!["blk".to_string()];
        header.extend(kinds.iter().cloned());
        t.set_header(header);
        for (n, cells) in &blocks {
            let mut row = vec![right(n)];
            for k in &kinds {
                let ty = cells
                    .iter()
                    .find(|(kk, _)| kk == k)
                    .map_or("-".to_string(), |(_, ty)| ty.clone());
                row.push(Cell::new(ty));
            }
            t.add_row(row);
        }
        out.push_str(&format!("{t}\n"));
    }
    if !others.is_empty() {
        let mut t = table();
        t.set_header(vec!["other tensor", "type"]);
        for (n, ty) in others {
            t.add_row(vec![n, ty]);
        }
        out.push_str(&format!("{t}\n"));
    }
    out
}

/// One metadata difference (`a`/`b` is `None` where the key is absent).
#[derive(Clone, Debug, PartialEq)]
pub struct MetaDiff {
    /// The key; `GGUF.version` and `GGUF.alignment` stand for header fields.
    pub key: String,
    /// Value in A.
    pub a: Option<Value>,
    /// Value in B.
    pub b: Option<Value>,
}

/// Short description of a tensor for a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorBrief {
    /// Type name.
    pub ty: String,
    /// Dimensions (ggml order).
    pub dims: Vec<u64>,
    /// SHA-256 of the data when hashing was asked for.
    pub sha256: Option<String>,
}

/// One tensor difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDiff {
    /// Tensor name.
    pub name: String,
    /// The tensor in A, if present.
    pub a: Option<TensorBrief>,
    /// The tensor in B, if present.
    pub b: Option<TensorBrief>,
}

impl TensorDiff {
    /// What differs: `only in A`, `only in B`, or a list of `type`, `shape`, `data`.
    pub fn what(&self) -> String {
        match (&self.a, &self.b) {
            (Some(_), None) => "only in A".into(),
            (None, Some(_)) => "only in B".into(),
            (Some(a), Some(b)) => {
                let mut w = Vec::new();
                if a.ty != b.ty {
                    w.push("type");
                }
                if a.dims != b.dims {
                    w.push("shape");
                }
                if a.sha256 != b.sha256 {
                    w.push("data");
                }
                w.join(", ")
            }
            (None, None) => String::new(),
        }
    }
}

/// Differences between two files.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Diff {
    /// Metadata and header differences, in A's key order then B-only keys.
    pub metadata: Vec<MetaDiff>,
    /// Tensor differences, in A's tensor order then B-only tensors.
    pub tensors: Vec<TensorDiff>,
    /// Whether tensor data were compared (by SHA-256).
    pub hashed: bool,
}

impl Diff {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_empty() && self.tensors.is_empty()
    }
}

/// Exact equality, floats compared bit for bit (so NaN equals itself).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.elem_type == y.elem_type
                && x.values.len() == y.values.len()
                && x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(p, q)| same_value(p, q))
        }
        _ => a == b,
    }
}

/// Compare two files: header fields, metadata values, tensor types, shapes and (if `hash`)
/// the SHA-256 of the data, computed in parallel.
pub fn diff(a: &GgufFile, b: &GgufFile, hash: bool) -> Result<Diff> {
    let mut d = Diff {
        hashed: hash,
        ..Diff::default()
    };
    for (key, va, vb) in [
        ("GGUF.version", a.version, b.version),
        ("GGUF.alignment", a.alignment as u32, b.alignment as u32),
    ] {
        if va != vb {
            d.metadata.push(MetaDiff {
                key: key.into(),
                a: Some(Value::U32(va)),
                b: Some(Value::U32(vb)),
            });
        }
    }
    for (k, va) in &a.metadata {
        let vb = b.get(k);
        if !vb.is_some_and(|vb| same_value(va, vb)) {
            d.metadata.push(MetaDiff {
                key: k.clone(),
                a: Some(va.clone()),
                b: vb.cloned(),
            });
        }
    }
    for (k, vb) in &b.metadata {
        if a.get(k).is_none() {
            d.metadata.push(MetaDiff {
                key: k.clone(),
                a: None,
                b: Some(vb.clone()),
            });
        }
    }

    // Hash only the tensors present in both with the same type and shape.
    let pairs: Vec<(&TensorInfo, &TensorInfo)> = a
        .tensors
        .iter()
        .filter_map(|ta| b.tensor(&ta.name).map(|tb| (ta, tb)))
        .collect();
    let hashes: Vec<Option<(String, String)>> = if hash {
        pairs
            .par_iter()
            .map(|(ta, tb)| {
                if ta.type_id != tb.type_id || ta.dims != tb.dims {
                    return Ok(None);
                }
                let (ha, hb) = rayon::join(
                    || a.tensor_data(ta).map(|x| hex(&Sha256::digest(x))),
                    || b.tensor_data(tb).map(|x| hex(&Sha256::digest(x))),
                );
                Ok(Some((ha?, hb?)))
            })
            .collect::<Result<_>>()?
    } else {
        vec![None; pairs.len()]
    };
    let brief = |t: &TensorInfo, h: Option<String>| TensorBrief {
        ty: t.type_name(),
        dims: t.dims.clone(),
        sha256: h,
    };
    let mut pi = 0;
    for ta in &a.tensors {
        match b.tensor(&ta.name) {
            None => d.tensors.push(TensorDiff {
                name: ta.name.clone(),
                a: Some(brief(ta, None)),
                b: None,
            }),
            Some(tb) => {
                let h = hashes[pi].clone();
                pi += 1;
                let differs = ta.type_id != tb.type_id
                    || ta.dims != tb.dims
                    || h.as_ref().is_some_and(|(x, y)| x != y);
                if differs {
                    let (ha, hb) = h.map_or((None, None), |(x, y)| (Some(x), Some(y)));
                    d.tensors.push(TensorDiff {
                        name: ta.name.clone(),
                        a: Some(brief(ta, ha)),
                        b: Some(brief(tb, hb)),
                    });
                }
            }
        }
    }
    for tb in &b.tensors {
        if a.tensor(&tb.name).is_none() {
            d.tensors.push(TensorDiff {
                name: tb.name.clone(),
                a: None,
                b: Some(brief(tb, None)),
            });
        }
    }
    Ok(d)
}

/// The diff as text tables (empty string when nothing differs).
pub fn diff_text(d: &Diff, full: bool) -> String {
    let mut out = String::new();
    if !d.metadata.is_empty() {
        let mut t = table();
        t.set_header(vec!["metadata key", "A", "B"]);
        let show = |v: &Option<Value>| {
            v.as_ref()
                .map_or("(absent)".into(), |v| render_value(v, full))
        };
        for m in &d.metadata {
            t.add_row(vec![printable(&m.key).into_owned(), show(&m.a), show(&m.b)]);
        }
        out.push_str(&format!("{t}\n"));
    }
    if !d.tensors.is_empty() {
        let mut t = table();
        t.set_header(vec!["tensor", "differs", "A", "B"]);
        let show = |x: &Option<TensorBrief>| match x {
            None => "(absent)".to_string(),
            Some(b) => {
                let mut s = format!("{} [{}]", b.ty, shape_string(&b.dims));
                if let Some(h) = &b.sha256 {
                    s.push_str(&format!(" {}", &h[..h.len().min(12)]));
                }
                s
            }
        };
        for x in &d.tensors {
            t.add_row(vec![
                printable(&x.name).into_owned(),
                x.what(),
                show(&x.a),
                show(&x.b),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    out
}

/// The `diff --json` document (schema [`DIFF_SCHEMA`]).
pub fn diff_json(a: &GgufFile, b: &GgufFile, d: &Diff) -> J {
    let brief = |x: &Option<TensorBrief>| {
        x.as_ref().map(|b| {
            let mut m = Map::new();
            m.insert("type".into(), json!(b.ty));
            m.insert("dims".into(), json!(b.dims));
            if let Some(h) = &b.sha256 {
                m.insert("sha256".into(), json!(h));
            }
            J::Object(m)
        })
    };
    json!({
        "schema": DIFF_SCHEMA,
        "a": a.path.display().to_string(),
        "b": b.path.display().to_string(),
        "identical": d.is_empty(),
        "data_compared": d.hashed,
        "metadata": d.metadata.iter().map(|m| json!({
            "key": m.key,
            "a": m.a.as_ref().map(value_json),
            "b": m.b.as_ref().map(value_json),
        })).collect::<Vec<_>>(),
        "tensors": d.tensors.iter().map(|t| json!({
            "name": t.name,
            "differs": t.what(),
            "a": brief(&t.a),
            "b": brief(&t.b),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Array;

    #[test]
    fn block_kinds() {
        assert_eq!(
            block_kind("blk.12.attn_q.weight"),
            Some((12, "attn_q".into()))
        );
        assert_eq!(
            block_kind("blk.0.attn_q.bias"),
            Some((0, "attn_q.bias".into()))
        );
        assert_eq!(block_kind("output.weight"), None);
        assert_eq!(block_kind("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn rendering() {
        let long = Value::Array(Array::new(ValueType::U8, (0..20).map(Value::U8).collect()));
        assert_eq!(render_value(&long, false), "[0, 1, 2, 3, …] (20 items)");
        assert!(render_value(&long, true).ends_with("18, 19]"));
        assert_eq!(type_label(&long), "array[uint8]");
        let s = Value::String("é".repeat(100));
        let r = render_value(&s, false);
        assert!(r.ends_with("… (200 bytes)"), "{r}");
        assert_eq!(value_json(&Value::F32(1e-5)), json!(1e-5));
        assert_eq!(value_json(&Value::F32(f32::NAN)), J::Null);
        assert_eq!(human_bytes(98362432), "93.8 MiB");
        assert_eq!(human_count(134515008), "134.5M");
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(4), None);
    }
}
