//! `ggufq recipe search`: choose every tensor's type for a size budget from measured
//! sensitivity, and write the choice as an ordinary recipe.
//!
//! 1. **Units.** Quantizable tensors are grouped into decision units: `attn_k`/`attn_v` of a
//!    layer share one type, and so do `ffn_gate`/`ffn_up` (fused kernels want them equal);
//!    every other tensor is a unit of its own. Units belong to a *group* (`attn_q`, `attn_kv`,
//!    `attn_output`, `ffn_gate_up`, `ffn_down`, `token_embd`, `output`, ...).
//! 2. **Candidates.** Each unit may take only types whose blocks fit all its tensors' rows
//!    (SmolLM2's 576-wide rows rule out every K-quant), so the plan never needs a fallback.
//! 3. **Proxy.** For each unit and candidate, the squared error of quantizing (and
//!    dequantizing) up to `rows` rows spread over each tensor, weighted per column by the
//!    importance matrix when one is given, scaled to the whole tensor.
//! 4. **Calibration.** For each group, one model in which only that group is quantized (to a
//!    ~4.5 bpw candidate) is run over a few chunks of text and its mean KL-divergence against
//!    the source is measured; `KL ≈ α_group · proxy` gives each group's factor.
//! 5. **Allocation.** [`search_alloc::allocate`] picks one candidate per unit minimising the
//!    predicted KL (Σ α·proxy) under the byte budget (exact dynamic programming).
//! 6. **Recipe.** The choice is written as YAML rules (one per group and type, with layer
//!    lists), parsed back, planned, and its exact output size (header included) checked
//!    against the budget.
//!
//! Proxies and calibration results are cached under `<cache>/search/<key>/` (key: the source's
//! file name, size and modification time), so a second search with another budget measures
//! nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rules::{tensor_kind, tensor_layer};
use super::search_alloc::{allocate, AllocOption, DEFAULT_GRANULES};
use super::{Plan, Recipe, TensorDesc, TensorKind};
use crate::convert::{self, ConvertOptions};
use crate::error::{Error, Result};
use crate::eval::kld::{self, BaseSource, LogProbReader, LogProbWriter};
use crate::eval::ppl::{self, ChunkPlan, PplOptions};
use crate::gguf::{GgufFile, GgufWriter};
use crate::model::cpu::CpuBackend;
use crate::model::Model;
use crate::quant::imatrix::Imatrix;
use crate::quant::{self, GgmlType};

/// The size budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Output file size in bytes (header and padding included).
    Bytes(u64),
    /// Bits per weight over all tensors (as `Plan::bpw` counts them).
    Bpw(f64),
}

/// Parse a size like `90MiB`, `100MB`, `1.5GiB`, `123456` (bytes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad size '{s}': expected a number and a unit such as 90MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "bad size unit '{u}' in '{s}' (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let b = v * mult;
    if !b.is_finite() || b <= 0.0 {
        return Err(format!("bad size '{s}': must be positive"));
    }
    Ok(b.floor() as u64)
}

/// The types a search considers by default (the writable quantized types and F16).
pub const DEFAULT_CANDIDATES: &[GgmlType] = &[
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::F16,
];

/// Options of [`search`].
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// The budget.
    pub budget: Budget,
    /// Importance matrix: weights the proxy and is used for quantizing (written into the recipe).
    pub imatrix: Option<PathBuf>,
    /// Calibration text; without it no KL is measured and every group's factor is 1.
    pub text: Option<PathBuf>,
    /// Tokens per calibration chunk.
    pub n_ctx: usize,
    /// Calibration chunks (taken from the end of the text, so that they do not overlap an
    /// evaluation on its first chunks).
    pub chunks: usize,
    /// Rows sampled per tensor for the proxy.
    pub rows: usize,
    /// Calibrate each group separately in this many contiguous layer ranges (1 = one
    /// measurement per group).
    pub calib_split: usize,
    /// Candidate types.
    pub candidates: Vec<GgmlType>,
    /// Worker threads for the calibration runs (0 = all cores).
    pub threads: usize,
    /// Cache root (`<root>/search/<key>/`); None = no cache.
    pub cache_root: Option<PathBuf>,
    /// Recipe name.
    pub name: Option<String>,
}

impl SearchOptions {
    /// Defaults: 2 chunks of 512 tokens, 256 rows, the default candidates, cache in
    /// `$GGUFQ_CACHE` or `~/.cache/ggufq`.
    pub fn new(budget: Budget) -> SearchOptions {
        SearchOptions {
            budget,
            imatrix: None,
            text: None,
            n_ctx: 512,
            chunks: 2,
            rows: 256,
            calib_split: 1,
            candidates: DEFAULT_CANDIDATES.to_vec(),
            threads: 0,
            cache_root: Some(crate::testutil::cache_dir()),
            name: None,
        }
    }
}

/// Progress events.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A phase starts with `total` steps.
    Phase(String, u64),
    /// One step of the current phase is done.
    Step(String),
}

/// A decision unit: tensors that get the same type.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    /// Group name (`attn_kv`, `ffn_down`, ...).
    pub group: String,
    /// Layer, for `blk.N.` tensors.
    pub layer: Option<u64>,
    /// Tensor names.
    pub tensors: Vec<String>,
    /// Tensor kinds (same order).
    pub kinds: Vec<TensorKind>,
    /// Elements of all tensors.
    pub n_elements: u64,
    /// Candidate types valid for every tensor of the unit.
    pub candidates: Vec<GgmlType>,
    /// Whether "keep every tensor's source type" is an option of its own: the source is
    /// quantized and no single candidate reproduces it (a pair whose tensors differ, such as a
    /// Q4_K_M file's `attn_k` Q5_0 beside `attn_v` Q8_0, or a source type not among the
    /// candidates). Keeping costs no error and the source's bytes.
    pub keep: bool,
}

/// What a unit gets: one type for all its tensors, or each tensor's source type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pick {
    /// Every tensor of the unit gets this type.
    Type(GgmlType),
    /// Every tensor keeps its source type (a recipe's `type: keep`).
    Keep,
}

impl std::fmt::Display for Pick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pick::Type(t) => f.write_str(t.name()),
            Pick::Keep => f.write_str("keep"),
        }
    }
}

fn group_of(kind: TensorKind) -> &'static str {
    use TensorKind::*;
    match kind {
        TokenEmbd => "token_embd",
        Output => "output",
        AttnQ => "attn_q",
        AttnK | AttnV => "attn_kv",
        AttnQkv => "attn_qkv",
        AttnKvB => "attn_kv_b",
        AttnOutput => "attn_output",
        FfnGate | FfnUp => "ffn_gate_up",
        FfnDown => "ffn_down",
        _ => "other",
    }
}

/// Whether `ty` can store a tensor of these dims without a fallback.
pub fn type_fits(ty: GgmlType, dims: &[u64]) -> bool {
    let row = dims.first().copied().unwrap_or(0);
    let n: u64 = dims.iter().product();
    row > 0 && row % ty.block_size() == 0 && ty.bytes_for(n).is_some()
}

/// Group the quantizable tensors of `descs` into decision units (file order of their first
/// tensor) with the candidates of `candidates` that fit every tensor of the unit.
pub fn build_units(descs: &[TensorDesc], candidates: &[GgmlType]) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut index: BTreeMap<(String, Option<u64>), usize> = BTreeMap::new();
    for d in descs {
        if !super::presets::allows_quantization(&d.name, &d.dims) || d.ty.is_none() {
            continue;
        }
        let kind = tensor_kind(&d.name);
        let group = group_of(kind);
        let layer = tensor_layer(&d.name);
        let n = d.n_elements();
        let paired = matches!(group, "attn_kv" | "ffn_gate_up") && layer.is_some();
        // Experts and other per-layer tensors of the same group stay separate units unless paired.
        let key = (
            if paired {
                group.to_string()
            } else {
                d.name.clone()
            },
            layer,
        );
        if let Some(&ui) = index.get(&key) {
            let u = &mut units[ui];
            u.tensors.push(d.name.clone());
            u.kinds.push(kind);
            u.n_elements += n;
            u.candidates.retain(|&c| type_fits(c, &d.dims));
            continue;
        }
        index.insert(key, units.len());
        units.push(Unit {
            group: group.to_string(),
            layer,
            tensors: vec![d.name.clone()],
            kinds: vec![kind],
            n_elements: n,
            candidates: candidates
                .iter()
                .copied()
                .filter(|&c| type_fits(c, &d.dims))
                .collect(),
            keep: false,
        });
    }
    for u in &mut units {
        // The unit's source types (same order as its tensors).
        let st: Vec<GgmlType> = u
            .tensors
            .iter()
            .filter_map(|t| descs.iter().find(|d| &d.name == t).and_then(|d| d.ty))
            .collect();
        let quantized = st.iter().any(|t| t.is_quantized());
        let uniform = st.first().filter(|&&f| st.iter().all(|&t| t == f));
        let reproduced = uniform.is_some_and(|t| u.candidates.contains(t));
        u.keep = quantized && !reproduced;
    }
    units
}

/// Bytes of `n` elements of `ty` padded to `align`.
fn padded(ty: GgmlType, n: u64, align: u64) -> Option<u64> {
    ty.bytes_for(n).map(|b| b.next_multiple_of(align.max(1)))
}

/// The exact size of the file `convert` writes for `plan` (header, metadata, padding).
pub fn exact_file_size(f: &GgufFile, recipe: &Recipe, plan: &Plan) -> Result<u64> {
    let meta = convert::output_metadata(f, recipe, plan.file_type)?;
    let specs = convert::output_specs(plan);
    let data: u64 = plan
        .entries
        .iter()
        .map(|e| e.to_bytes.next_multiple_of(f.alignment))
        .sum();
    let w = GgufWriter::new(std::io::sink(), f.version, f.alignment, &meta, specs)?;
    Ok(w.bytes_written() + data)
}

// ---------------------------------------------------------------------------------------------
// Cache

/// Where a source's measurements are cached: `<root>/search/<key>`, key = sha256 of the file
/// name, size and modification time.
pub fn cache_dir_for(root: &Path, model: &Path) -> Result<PathBuf> {
    let md = std::fs::metadata(model).map_err(|e| Error::io(model, e))?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(format!("{name}\n{}\n{mtime}\n", md.len()).as_bytes());
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(root.join("search").join(key))
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Proxy errors: tensor → type name → weighted squared error (whole tensor).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ProxyCache {
    rows: usize,
    errors: BTreeMap<String, BTreeMap<String, f64>>,
}

/// One calibration measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// The type the whole group was quantized to.
    pub ty: String,
    /// Mean KL-divergence measured with only this group quantized.
    pub kl: f64,
    /// The group's summed proxy at that type.
    pub proxy: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CalibCache {
    groups: BTreeMap<String, Calibration>,
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(p: &Path) -> T {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::msg(format!("json: {e}")))?;
    let mut a = crate::gguf::AtomicOutput::create(p)?;
    use std::io::Write;
    a.write_all(&bytes).map_err(|e| Error::io(p, e))?;
    a.commit()
}

// ---------------------------------------------------------------------------------------------
// Proxy

/// Weighted squared error of quantizing `data` (rows of `row`) to `ty`, on up to `max_rows`
/// rows spread evenly, scaled to all rows.
pub fn proxy_error(
    ty: GgmlType,
    data: &[f32],
    row: usize,
    weights: Option<&[f32]>,
    max_rows: usize,
) -> Result<f64> {
    if row == 0 || data.len() % row != 0 {
        return Err(Error::msg(format!(
            "{} values are not whole rows of {row}",
            data.len()
        )));
    }
    let n_rows = data.len() / row;
    let take = n_rows.min(max_rows.max(1));
    let rb = ty
        .bytes_for(row as u64)
        .ok_or_else(|| Error::msg(format!("rows of {row} do not fill {ty} blocks")))?
        as usize;
    let w = weights.filter(|w| w.len() == row);
    let sse: f64 = (0..take)
        .into_par_iter()
        .map(|i| -> Result<f64> {
            let r = i * n_rows / take;
            let src = &data[r * row..(r + 1) * row];
            let mut q = vec![0u8; rb];
            quant::quantize_row(ty, src, w, &mut q)?;
            let mut back = vec![0f32; row];
            quant::dequantize_row(ty, &q, &mut back)?;
            Ok(src
                .iter()
                .zip(&back)
                .enumerate()
                .map(|(j, (&x, &y))| {
                    let d = (x - y) as f64;
                    w.map_or(1.0, |w| w[j] as f64) * d * d
                })
                .sum())
        })
        .collect::<Result<Vec<f64>>>()?
        .into_iter()
        .sum();
    Ok(sse * n_rows as f64 / take as f64)
}

fn tensor_f32(f: &GgufFile, name: &str) -> Result<Vec<f32>> {
    let t = f.tensor(name).ok_or_else(|| Error::Tensor {
        tensor: name.into(),
        msg: "not in the file".into(),
    })?;
    let ty = t.ty.ok_or_else(|| Error::Tensor {
        tensor: name.into(),
        msg: format!("cannot decode type {}", t.type_name()),
    })?;
    let n = usize::try_from(t.n_elements()).map_err(|_| Error::msg("tensor too large"))?;
    quant::dequantize_tensor(ty, f.tensor_data(t)?, n).map_err(|e| Error::Tensor {
        tensor: name.into(),
        msg: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// The search

/// What a unit got.
#[derive(Clone, Debug, Serialize)]
pub struct UnitChoice {
    /// Group.
    pub group: String,
    /// Layer.
    pub layer: Option<u64>,
    /// Tensors.
    pub tensors: Vec<String>,
    /// Chosen type.
    pub ty: String,
    /// Bytes (padded).
    pub bytes: u64,
    /// Predicted KL contribution.
    pub kl: f64,
}

/// Measurement counts (what was computed now and what came from the cache).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CacheStats {
    /// Tensors whose proxies were computed now.
    pub proxy_measured: usize,
    /// Tensors whose proxies came from the cache.
    pub proxy_cached: usize,
    /// Groups whose KL was measured now.
    pub kl_measured: usize,
    /// Groups whose KL came from the cache.
    pub kl_cached: usize,
}

/// The result of a search.
#[derive(Clone, Debug, Serialize)]
pub struct SearchResult {
    /// The recipe text.
    pub yaml: String,
    /// Budget in bytes.
    pub budget_bytes: u64,
    /// Exact output size of the recipe's conversion.
    pub file_bytes: u64,
    /// Bits per weight of the plan.
    pub bpw: f64,
    /// Predicted mean KL-divergence (Σ α·proxy); in proxy units when not `calibrated`.
    pub predicted_kl: f64,
    /// Whether the groups were calibrated by KL measurements (a text was given).
    pub calibrated: bool,
    /// Calibration per group.
    pub calibration: BTreeMap<String, Calibration>,
    /// Factor per group (KL per unit of proxy).
    pub alpha: BTreeMap<String, f64>,
    /// Per-unit choice.
    pub units: Vec<UnitChoice>,
    /// Cache use.
    pub cache: CacheStats,
    /// The cache folder used.
    pub cache_dir: Option<PathBuf>,
}

/// Calibration type for a group: the candidate valid for all its units with bpw closest to
/// 4.5 (ties: the larger summed proxy, i.e. the one that perturbs more).
fn calib_type(
    units: &[&Unit],
    proxy: &[BTreeMap<GgmlType, f64>],
    idx: &[usize],
) -> Option<GgmlType> {
    let first = units.first()?;
    let common: Vec<GgmlType> = first
        .candidates
        .iter()
        .copied()
        .filter(|c| c.is_quantized() && units.iter().all(|u| u.candidates.contains(c)))
        .collect();
    let sum = |c: GgmlType| -> f64 {
        idx.iter()
            .map(|&i| proxy[i].get(&c).copied().unwrap_or(0.0))
            .sum()
    };
    common.into_iter().min_by(|&a, &b| {
        let da = (a.bpw() - 4.5).abs();
        let db = (b.bpw() - 4.5).abs();
        da.total_cmp(&db).then(sum(b).total_cmp(&sum(a)))
    })
}

/// Run the search on `model`. `progress` gets phase and step events.
pub fn search(
    model: &Path,
    opts: &SearchOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<SearchResult> {
    let f = GgufFile::open(model)?;
    let descs = convert::tensor_descs(&f);
    let imatrix = opts.imatrix.as_deref().map(Imatrix::load).transpose()?;
    if opts.candidates.is_empty() {
        return Err(Error::msg("no candidate types"));
    }
    let units = build_units(&descs, &opts.candidates);
    if units.is_empty() {
        return Err(Error::msg(format!(
            "{}: no tensor that can be quantized",
            model.display()
        )));
    }
    if let Some(u) = units.iter().find(|u| u.candidates.is_empty() && !u.keep) {
        return Err(Error::Tensor {
            tensor: u.tensors.join("+"),
            msg: "no candidate type fits its rows".into(),
        });
    }
    let cache_dir = match &opts.cache_root {
        Some(r) => Some(cache_dir_for(r, model)?),
        None => None,
    };
    let im_key = match &opts.imatrix {
        Some(p) => sha_hex(&std::fs::read(p).map_err(|e| Error::io(p, e))?),
        None => "none".into(),
    };
    let mut stats = CacheStats::default();

    // --- Proxies.
    let proxy_path = cache_dir
        .as_ref()
        .map(|d| d.join(format!("proxy-{im_key}.json")));
    let mut pc: ProxyCache = proxy_path.as_deref().map(read_json).unwrap_or_default();
    if pc.rows != opts.rows {
        pc = ProxyCache {
            rows: opts.rows,
            errors: BTreeMap::new(),
        };
    }
    let all_tensors: Vec<(&Unit, &String)> = units
        .iter()
        .flat_map(|u| u.tensors.iter().map(move |t| (u, t)))
        .collect();
    let todo: Vec<&(&Unit, &String)> = all_tensors
        .iter()
        .filter(|(u, t)| {
            let have = pc.errors.get(*t);
            !u.candidates
                .iter()
                .all(|c| have.is_some_and(|h| h.contains_key(c.name())))
        })
        .collect();
    stats.proxy_cached = all_tensors.len() - todo.len();
    stats.proxy_measured = todo.len();
    if !todo.is_empty() {
        progress(Progress::Phase(
            format!("measuring {} tensors", todo.len()),
            todo.len() as u64,
        ));
        for (u, name) in todo {
            let d = descs
                .iter()
                .find(|d| &d.name == *name)
                .ok_or_else(|| Error::msg(format!("tensor {name} vanished")))?;
            let data = tensor_f32(&f, name)?;
            let row = d.row_len() as usize;
            let w = imatrix
                .as_ref()
                .and_then(|im| im.get(name))
                .filter(|w| w.len() == row);
            let entry = pc.errors.entry((*name).clone()).or_default();
            for &c in &u.candidates {
                let e = if Some(c) == d.ty {
                    0.0 // copied byte for byte
                } else {
                    proxy_error(c, &data, row, w, opts.rows).map_err(|e| Error::Tensor {
                        tensor: (*name).clone(),
                        msg: e.to_string(),
                    })?
                };
                entry.insert(c.name().to_string(), e);
            }
            progress(Progress::Step((*name).clone()));
        }
        if let Some(p) = &proxy_path {
            write_json(p, &pc)?;
        }
    }
    // Per unit: candidate → summed proxy.
    let unit_proxy: Vec<BTreeMap<GgmlType, f64>> = units
        .iter()
        .map(|u| {
            u.candidates
                .iter()
                .map(|&c| {
                    let s = u
                        .tensors
                        .iter()
                        .map(|t| {
                            pc.errors
                                .get(t)
                                .and_then(|m| m.get(c.name()))
                                .copied()
                                .unwrap_or(0.0)
                        })
                        .sum();
                    (c, s)
                })
                .collect()
        })
        .collect();

    // --- Calibration.
    let n_layer = units
        .iter()
        .filter_map(|u| u.layer)
        .max()
        .map_or(0, |m| m + 1);
    let ckeys: Vec<String> = units
        .iter()
        .map(|u| calib_key(u, opts.calib_split, n_layer))
        .collect();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, k) in ckeys.iter().enumerate() {
        groups.entry(k.clone()).or_default().push(i);
    }
    let mut calib: BTreeMap<String, Calibration> = BTreeMap::new();
    if let Some(text) = &opts.text {
        let text_bytes = std::fs::read(text).map_err(|e| Error::io(text, e))?;
        let key = format!(
            "calib-{}-{}x{}-{im_key}-r{}",
            sha_hex(&text_bytes),
            opts.n_ctx,
            opts.chunks,
            opts.rows
        );
        let calib_path = cache_dir.as_ref().map(|d| d.join(format!("{key}.json")));
        let mut cc: CalibCache = calib_path.as_deref().map(read_json).unwrap_or_default();
        let missing: Vec<&String> = groups
            .keys()
            .filter(|g| !cc.groups.contains_key(*g))
            .collect();
        stats.kl_cached = groups.len() - missing.len();
        stats.kl_measured = missing.len();
        if !missing.is_empty() {
            let work = match &cache_dir {
                Some(d) => d.clone(),
                None => std::env::temp_dir(),
            };
            std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
            let tmp = tempfile::Builder::new()
                .prefix(".search-")
                .tempdir_in(&work)
                .map_err(|e| Error::io(&work, e))?;
            progress(Progress::Phase(
                format!("calibrating {} groups (+ base run)", missing.len()),
                missing.len() as u64 + 1,
            ));
            let base_path = tmp.path().join("base.logits");
            let text_str = String::from_utf8_lossy(&text_bytes);
            let base_bos = base_logits(model, &text_str, opts, &base_path)?;
            progress(Progress::Step("base".into()));
            for g in missing {
                let idx = &groups[g];
                let gu: Vec<&Unit> = idx.iter().map(|&i| &units[i]).collect();
                let Some(ct) = calib_type(&gu, &unit_proxy, idx) else {
                    progress(Progress::Step(g.clone()));
                    continue;
                };
                let proxy: f64 = idx.iter().filter_map(|&i| unit_proxy[i].get(&ct)).sum();
                let names: Vec<&String> = gu.iter().flat_map(|u| u.tensors.iter()).collect();
                let kl = group_kl(model, &names, ct, opts, tmp.path(), &base_path, base_bos)?;
                cc.groups.insert(
                    g.clone(),
                    Calibration {
                        ty: ct.name().to_string(),
                        kl,
                        proxy,
                    },
                );
                if let Some(p) = &calib_path {
                    write_json(p, &cc)?;
                }
                progress(Progress::Step(format!("{g} {ct}: KL {kl:.5}")));
            }
        }
        // Only this search's groups (the cache may also hold other splits).
        calib = cc
            .groups
            .into_iter()
            .filter(|(k, _)| groups.contains_key(k))
            .collect();
    }
    // Factors: KL per unit of proxy; groups without a usable measurement get the median.
    let mut alpha: BTreeMap<String, f64> = BTreeMap::new();
    for (g, c) in &calib {
        if c.proxy > 0.0 && c.kl.is_finite() && c.kl > 0.0 {
            alpha.insert(g.clone(), c.kl / c.proxy);
        }
    }
    let mut vals: Vec<f64> = alpha.values().copied().collect();
    vals.sort_by(f64::total_cmp);
    let median = vals.get(vals.len() / 2).copied().unwrap_or(1.0);
    for g in groups.keys() {
        alpha.entry(g.clone()).or_insert(median);
    }

    // --- Allocation.
    let options: Vec<Vec<(Pick, AllocOption)>> = units
        .iter()
        .zip(&unit_proxy)
        .zip(&ckeys)
        .map(|((u, p), key)| {
            let keep = u.keep.then(|| {
                let bytes: u64 = u
                    .tensors
                    .iter()
                    .filter_map(|t| descs.iter().find(|d| &d.name == t))
                    .map(|d| d.n_bytes.next_multiple_of(f.alignment))
                    .sum();
                (Pick::Keep, AllocOption { bytes, err: 0.0 })
            });
            u.candidates
                .iter()
                .filter_map(|&c| {
                    let bytes: Option<u64> = u
                        .tensors
                        .iter()
                        .map(|t| {
                            let d = descs.iter().find(|d| &d.name == t)?;
                            if Some(c) == d.ty {
                                Some(d.n_bytes.next_multiple_of(f.alignment))
                            } else {
                                padded(c, d.n_elements(), f.alignment)
                            }
                        })
                        .sum();
                    Some((
                        Pick::Type(c),
                        AllocOption {
                            bytes: bytes?,
                            err: alpha.get(key).copied().unwrap_or(1.0)
                                * p.get(&c).copied().unwrap_or(0.0),
                        },
                    ))
                })
                .chain(keep)
                .collect()
        })
        .collect();
    let unit_names: std::collections::HashSet<&String> =
        units.iter().flat_map(|u| u.tensors.iter()).collect();
    let fixed: u64 = descs
        .iter()
        .filter(|d| !unit_names.contains(&d.name))
        .map(|d| d.n_bytes.next_multiple_of(f.alignment))
        .sum();
    let n_elements: u64 = descs.iter().map(|d| d.n_elements()).sum();
    let name = opts.name.clone().unwrap_or_else(|| "search".into());
    // Header size: from a trial recipe (all units at their first candidate).
    let alloc_opts: Vec<Vec<AllocOption>> = options
        .iter()
        .map(|o| o.iter().map(|x| x.1).collect())
        .collect();
    let trial: Vec<Pick> = options
        .iter()
        .zip(&units)
        .map(|(o, u)| {
            o.first().map(|x| x.0).ok_or_else(|| Error::Tensor {
                tensor: u.tensors.join("+"),
                msg: "no candidate type fits".into(),
            })
        })
        .collect::<Result<_>>()?;
    let header = {
        let yaml = write_recipe(&units, &trial, &name, "", &BTreeMap::new(), opts)?;
        let r = Recipe::from_str_in(&yaml, "<search>", Path::new("."))?;
        let plan = convert::plan_file(&f, &r, imatrix.as_ref())?;
        let data: u64 = plan
            .entries
            .iter()
            .map(|e| e.to_bytes.next_multiple_of(f.alignment))
            .sum();
        exact_file_size(&f, &r, &plan)? - data
    };
    let budget = match opts.budget {
        Budget::Bytes(b) => b,
        Budget::Bpw(bpw) => header + ((bpw * n_elements as f64) / 8.0).floor() as u64,
    };
    let mut unit_budget = budget.saturating_sub(header + fixed);
    for _attempt in 0..4 {
        let a = allocate(&alloc_opts, unit_budget, DEFAULT_GRANULES).ok_or_else(|| {
            let min: u64 = alloc_opts
                .iter()
                .map(|o| o.iter().map(|x| x.bytes).min().unwrap_or(0))
                .sum();
            Error::msg(format!(
                "budget of {budget} bytes is too small: the smallest candidates need {} bytes",
                min + header + fixed
            ))
        })?;
        let chosen: Vec<Pick> = options
            .iter()
            .zip(&a.choice)
            .map(|(o, &c)| o[c].0)
            .collect();
        let choices: Vec<UnitChoice> = units
            .iter()
            .zip(&options)
            .zip(&a.choice)
            .map(|((u, o), &c)| UnitChoice {
                group: u.group.clone(),
                layer: u.layer,
                tensors: u.tensors.clone(),
                ty: o[c].0.to_string(),
                bytes: o[c].1.bytes,
                kl: o[c].1.err,
            })
            .collect();
        let summary = format!(
            "budget {budget} bytes ({:.2} MiB); source {}",
            budget as f64 / 1048576.0,
            model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let yaml = write_recipe(
            &units,
            &chosen,
            &name,
            &summary,
            &calib_summary(&choices, &calib),
            opts,
        )?;
        let r = Recipe::from_str_in(&yaml, "<search>", Path::new("."))?;
        let plan = convert::plan_file(&f, &r, imatrix.as_ref())?;
        for (u, t) in units.iter().zip(&chosen) {
            for name in &u.tensors {
                let e = plan.entries.iter().find(|e| &e.name == name);
                let ok = match t {
                    Pick::Type(t) => e.and_then(|e| e.to) == Some(*t),
                    Pick::Keep => e.is_some_and(|e| e.is_copy()),
                };
                if !ok {
                    return Err(Error::Tensor {
                        tensor: name.clone(),
                        msg: format!("the written recipe does not give it {t}"),
                    });
                }
            }
        }
        let size = exact_file_size(&f, &r, &plan)?;
        if size > budget {
            unit_budget = unit_budget.saturating_sub(size - budget);
            continue;
        }
        return Ok(SearchResult {
            yaml,
            budget_bytes: budget,
            file_bytes: size,
            bpw: plan.bpw(),
            predicted_kl: a.err,
            calibrated: !calib.is_empty(),
            calibration: calib,
            alpha,
            units: choices,
            cache: stats,
            cache_dir,
        });
    }
    Err(Error::msg(format!(
        "could not fit the recipe into {budget} bytes"
    )))
}

/// The calibration group of a unit: its group, or with `split > 1` and a layer, the group and
/// the layer range (`ffn_down@10-19`).
pub fn calib_key(u: &Unit, split: usize, n_layer: u64) -> String {
    match u.layer {
        Some(l) if split > 1 && n_layer > 0 => {
            let s = split as u64;
            let b = (l * s / n_layer).min(s - 1);
            let lo = (b * n_layer).div_ceil(s);
            let hi = ((b + 1) * n_layer).div_ceil(s) - 1;
            format!("{}@{lo}-{hi}", u.group)
        }
        _ => u.group.clone(),
    }
}

/// Per-group summary for the comments: group → (bytes, predicted KL, type counts).
fn calib_summary(
    choices: &[UnitChoice],
    calib: &BTreeMap<String, Calibration>,
) -> BTreeMap<String, String> {
    let what = if calib.is_empty() {
        "error (uncalibrated proxy)"
    } else {
        "KL"
    };
    let mut out: BTreeMap<String, (u64, f64, BTreeMap<String, usize>)> = BTreeMap::new();
    for c in choices {
        let e = out.entry(c.group.clone()).or_default();
        e.0 += c.bytes;
        e.1 += c.kl;
        *e.2.entry(c.ty.clone()).or_default() += 1;
    }
    out.into_iter()
        .map(|(g, (b, kl, types))| {
            let t: Vec<String> = types.iter().map(|(t, n)| format!("{t}×{n}")).collect();
            let cal: Vec<String> = calib
                .iter()
                .filter(|(k, _)| {
                    **k == g
                        || k.strip_prefix(g.as_str())
                            .is_some_and(|r| r.starts_with('@'))
                })
                .map(
                    |(k, c)| match k.strip_prefix(g.as_str()).and_then(|p| p.strip_prefix('@')) {
                        Some(range) => format!("layers {range} all {} → KL {:.5}", c.ty, c.kl),
                        None => format!("all {} → KL {:.5}", c.ty, c.kl),
                    },
                )
                .collect();
            let cal = if cal.is_empty() {
                String::new()
            } else {
                format!("; calibrated: {}", cal.join(", "))
            };
            (
                g,
                format!(
                    "{:.2} MiB, predicted {what} {kl:.5} ({}){cal}",
                    b as f64 / 1048576.0,
                    t.join(", ")
                ),
            )
        })
        .collect()
}

fn layer_list(layers: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let start = layers[i];
        let mut end = start;
        while i + 1 < layers.len() && layers[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

fn kind_name(k: TensorKind) -> String {
    serde_yaml::to_string(&k)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn yaml_str(s: &str) -> String {
    serde_yaml::to_string(s)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("'{s}'"))
}

/// Kinds and layers (by-layer rules) or names (by-name rules) that get one type.
type RuleParts = (Vec<TensorKind>, Vec<u64>, Vec<String>);

/// Write the recipe for `chosen` (one type per unit): per group, one rule per type with the
/// layers that got it; tensors without a layer (or of other kinds) by name. `comments` are
/// printed above each group's rules.
pub fn write_recipe(
    units: &[Unit],
    chosen: &[Pick],
    name: &str,
    summary: &str,
    comments: &BTreeMap<String, String>,
    opts: &SearchOptions,
) -> Result<String> {
    if units.len() != chosen.len() {
        return Err(Error::msg("one type per unit needed"));
    }
    // Most common type = base (every quantizable tensor also has an explicit rule).
    let mut count: BTreeMap<GgmlType, u64> = BTreeMap::new();
    for (u, t) in units.iter().zip(chosen) {
        if let Pick::Type(t) = t {
            *count.entry(*t).or_default() += u.n_elements;
        }
    }
    let base = count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(t, _)| *t)
        .unwrap_or(GgmlType::Q8_0);
    let mut s = String::new();
    let _ = writeln!(s, "# Written by `ggufq recipe search`. {summary}");
    let _ = writeln!(
        s,
        "# Every quantizable tensor has a rule below; `base` only names the most common type."
    );
    let _ = writeln!(s, "name: {}", yaml_str(name));
    let _ = writeln!(
        s,
        "description: {}",
        yaml_str(&format!("searched per-tensor types ({summary})"))
    );
    let _ = writeln!(s, "base: {}", base.name());
    let _ = writeln!(s, "fallback: llama");
    if let Some(im) = &opts.imatrix {
        let abs = std::fs::canonicalize(im).unwrap_or_else(|_| im.clone());
        let _ = writeln!(s, "imatrix: {}", yaml_str(&abs.display().to_string()));
    }
    let _ = writeln!(s, "rules:");
    // group → type → (kinds, layers) | names
    let mut order: Vec<String> = Vec::new();
    let mut by_group: BTreeMap<String, BTreeMap<Pick, RuleParts>> = BTreeMap::new();
    for (u, t) in units.iter().zip(chosen) {
        if !order.contains(&u.group) {
            order.push(u.group.clone());
        }
        let e = by_group
            .entry(u.group.clone())
            .or_default()
            .entry(*t)
            .or_default();
        let by_layer = u.layer.is_some() && u.group != "other" && u.tensors.len() == u.kinds.len();
        if by_layer {
            for k in &u.kinds {
                if !e.0.contains(k) {
                    e.0.push(*k);
                }
            }
            if let Some(l) = u.layer {
                e.1.push(l);
            }
        } else {
            e.2.extend(u.tensors.iter().cloned());
        }
    }
    for g in &order {
        if let Some(c) = comments.get(g) {
            let _ = writeln!(s, "  # {g}: {c}");
        }
        for (t, (kinds, layers, names)) in &by_group[g] {
            if !layers.is_empty() {
                let mut ls = layers.clone();
                ls.sort_unstable();
                ls.dedup();
                let ks: Vec<String> = kinds.iter().map(|k| kind_name(*k)).collect();
                let _ = writeln!(s, "  - kind: [{}]", ks.join(", "));
                let _ = writeln!(s, "    layers: '{}'", layer_list(&ls));
                let _ = writeln!(s, "    type: {}", t);
            }
            if !names.is_empty() {
                let ns: Vec<String> = names.iter().map(|n| yaml_str(n)).collect();
                let _ = writeln!(s, "  - name: [{}]", ns.join(", "));
                let _ = writeln!(s, "    type: {}", t);
            }
        }
    }
    Ok(s)
}

/// Tokens used for calibration: the last `chunks` whole chunks of the text.
fn calib_tokens(
    model: &Model,
    text: &str,
    opts: &SearchOptions,
) -> Result<(Vec<u32>, Option<u32>)> {
    let tok = model.tokenizer()?;
    let bos = if tok.add_bos { tok.bos } else { None };
    let mut t = text.to_string();
    if t.ends_with('\n') {
        t.pop();
    }
    let ids = tok.encode(&t, true, false)?;
    let need = opts.n_ctx * opts.chunks.max(1);
    if ids.len() < need.max(2 * opts.n_ctx) {
        return Err(Error::msg(format!(
            "the calibration text has {} tokens; {} chunks of {} need {}",
            ids.len(),
            opts.chunks,
            opts.n_ctx,
            need.max(2 * opts.n_ctx)
        )));
    }
    Ok((ids[ids.len() - need..].to_vec(), bos))
}

/// Run the source over the calibration chunks and save its log-probs to `out`.
fn base_logits(model: &Path, text: &str, opts: &SearchOptions, out: &Path) -> Result<Option<u32>> {
    let m = Model::open(model)?;
    let (tokens, bos) = calib_tokens(&m, text, opts)?;
    let n_chunks = opts.chunks.max(1);
    let plan = ChunkPlan {
        n_ctx: opts.n_ctx,
        n_chunks,
        first: opts.n_ctx / 2,
    };
    let mut be = CpuBackend::new(&m, opts.n_ctx, opts.threads)?;
    let nv = m.hparams.n_vocab;
    let mut w = LogProbWriter::create(out, plan.n_ctx, nv, plan.n_chunks, &tokens)?;
    let (mut logits, mut rows) = (Vec::new(), Vec::new());
    for c in 0..plan.n_chunks {
        let chunk = &tokens[c * plan.n_ctx..(c + 1) * plan.n_ctx];
        ppl::chunk_logits(&mut be, chunk, bos, plan.first, &mut logits)?;
        kld::quantize_chunk(&logits, nv, chunk, plan.first, &mut rows);
        w.write_rows(&rows)?;
    }
    w.finish()?;
    Ok(bos)
}

/// Mean KL of the model with only `names` quantized to `ty`.
fn group_kl(
    model: &Path,
    names: &[&String],
    ty: GgmlType,
    opts: &SearchOptions,
    tmp: &Path,
    base: &Path,
    bos: Option<u32>,
) -> Result<f64> {
    let ns: Vec<String> = names.iter().map(|n| yaml_str(n)).collect();
    let mut yaml = format!(
        "name: calibration\nbase: {}\nrules:\n  - name: [{}]\n    type: {}\n  - type: keep\n",
        ty.name(),
        ns.join(", "),
        ty.name()
    );
    if let Some(im) = &opts.imatrix {
        let abs = std::fs::canonicalize(im).unwrap_or_else(|_| im.clone());
        yaml = format!("imatrix: {}\n{yaml}", yaml_str(&abs.display().to_string()));
    }
    let recipe = Recipe::from_str_in(&yaml, "<calibration>", Path::new("."))?;
    let out = tmp.join("calib.gguf");
    let mut co = ConvertOptions::new(recipe);
    co.output = Some(out.clone());
    co.allow_requantize = true;
    co.manifest = false;
    convert::convert(model, &co)?;
    let m = Model::open(&out)?;
    let mut be = CpuBackend::new(&m, opts.n_ctx, opts.threads)?;
    let reader = LogProbReader::open(base)?;
    let po = PplOptions {
        n_ctx: opts.n_ctx,
        n_chunks: Some(opts.chunks.max(1)),
        bos,
    };
    let st = kld::kl_divergence(
        &mut be,
        BaseSource::File(reader),
        &[],
        &po,
        &mut |_, _, _| {},
    )?;
    drop(be);
    drop(m);
    let _ = std::fs::remove_file(&out);
    Ok(st.kld)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, dims: &[u64]) -> TensorDesc {
        let n: u64 = dims.iter().product();
        TensorDesc {
            name: name.into(),
            dims: dims.to_vec(),
            type_id: GgmlType::F32.id(),
            ty: Some(GgmlType::F32),
            n_bytes: n * 4,
        }
    }

    fn smol_like() -> Vec<TensorDesc> {
        let mut v = vec![desc("token_embd.weight", &[576, 1000])];
        for l in 0..3 {
            let p = format!("blk.{l}.");
            v.push(desc(&format!("{p}attn_norm.weight"), &[576]));
            v.push(desc(&format!("{p}attn_q.weight"), &[576, 576]));
            v.push(desc(&format!("{p}attn_k.weight"), &[576, 192]));
            v.push(desc(&format!("{p}attn_v.weight"), &[576, 192]));
            v.push(desc(&format!("{p}attn_output.weight"), &[576, 576]));
            v.push(desc(&format!("{p}ffn_gate.weight"), &[576, 1536]));
            v.push(desc(&format!("{p}ffn_up.weight"), &[576, 1536]));
            v.push(desc(&format!("{p}ffn_down.weight"), &[1536, 576]));
        }
        v.push(desc("output_norm.weight", &[576]));
        v
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("90MiB").unwrap(), 90 * 1048576);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 1610612736);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn pairs_are_tied_and_candidates_fit_rows() {
        let units = build_units(&smol_like(), DEFAULT_CANDIDATES);
        // per layer: q, kv, output, gate_up, down = 5; plus token_embd.
        assert_eq!(units.len(), 1 + 3 * 5);
        let kv: Vec<&Unit> = units.iter().filter(|u| u.group == "attn_kv").collect();
        assert_eq!(kv.len(), 3);
        for u in &kv {
            assert_eq!(u.tensors.len(), 2);
            assert!(
                u.tensors[0].ends_with("attn_k.weight") && u.tensors[1].ends_with("attn_v.weight")
            );
        }
        let gu: Vec<&Unit> = units.iter().filter(|u| u.group == "ffn_gate_up").collect();
        assert_eq!(gu.len(), 3);
        assert!(gu.iter().all(|u| u.tensors.len() == 2));
        for u in &units {
            assert!(!u.tensors.iter().any(|t| t.contains("norm")));
            let k_ok = u.group == "ffn_down";
            for c in &u.candidates {
                if c.block_size() == 256 {
                    assert!(k_ok, "{c} chosen for 576-wide rows of {:?}", u.tensors);
                }
            }
            if k_ok {
                assert!(u.candidates.contains(&GgmlType::Q4_K));
            } else {
                assert!(u.candidates.contains(&GgmlType::Q4_0));
                assert!(!u.candidates.contains(&GgmlType::Q4_K));
            }
        }
    }

    #[test]
    fn written_recipe_round_trips_through_the_parser_and_planner() {
        let descs = smol_like();
        let units = build_units(&descs, DEFAULT_CANDIDATES);
        // A varied choice: cycle through each unit's candidates.
        let chosen: Vec<Pick> = units
            .iter()
            .enumerate()
            .map(|(i, u)| Pick::Type(u.candidates[(i * 3) % u.candidates.len()]))
            .collect();
        let mut comments = BTreeMap::new();
        comments.insert(
            "attn_kv".to_string(),
            "1.00 MiB, predicted KL 0.1".to_string(),
        );
        let opts = SearchOptions::new(Budget::Bytes(1));
        let yaml =
            write_recipe(&units, &chosen, "t: x", "budget 1 bytes", &comments, &opts).unwrap();
        assert!(yaml.contains("# attn_kv: 1.00 MiB"));
        let r = Recipe::from_str_in(&yaml, "<t>", Path::new(".")).unwrap();
        assert_eq!(r.name.as_deref(), Some("t: x"));
        let model = super::super::ModelInfo {
            arch: "llama".into(),
            n_layer: 3,
            n_head: 9,
            n_head_kv: 3,
            n_expert: 0,
        };
        let plan = super::super::build_plan(&r, &model, &descs, Default::default()).unwrap();
        assert!(
            plan.warnings
                .iter()
                .all(|w| !w.contains("matches no tensor")),
            "{:?}",
            plan.warnings
        );
        for (u, t) in units.iter().zip(&chosen) {
            for name in &u.tensors {
                let e = plan.entries.iter().find(|e| &e.name == name).unwrap();
                assert_eq!(Pick::Type(e.to.unwrap()), *t, "{name}");
                assert!(e.fallback.is_none());
            }
        }
        // Norms stay F32.
        let n = plan
            .entries
            .iter()
            .find(|e| e.name == "output_norm.weight")
            .unwrap();
        assert_eq!(n.to, Some(GgmlType::F32));
        // Serialising the parsed recipe and parsing it again gives the same recipe.
        let again = r.to_file().to_yaml().unwrap();
        let r2 = Recipe::from_str_in(&again, "<t2>", Path::new(".")).unwrap();
        assert_eq!(r2.rules.len(), r.rules.len());
        assert_eq!(r2.base, r.base);
    }

    /// A Q4_K_M-like quantized source, 640 wide (no K-quant fits its attention rows): pairs
    /// whose tensors differ in source type get a `keep` option; written as `type: keep`, it
    /// plans to a byte copy of each tensor.
    #[test]
    fn quantized_sources_offer_keep_and_it_round_trips() {
        let q = |name: &str, dims: &[u64], ty: GgmlType| {
            let n: u64 = dims.iter().product();
            TensorDesc {
                name: name.into(),
                dims: dims.to_vec(),
                type_id: ty.id(),
                ty: Some(ty),
                n_bytes: ty.bytes_for(n).unwrap(),
            }
        };
        use GgmlType::*;
        let mut descs = vec![q("token_embd.weight", &[640, 512], Q8_0)];
        for l in 0..2u64 {
            let p = format!("blk.{l}.");
            let v = if l == 0 { Q8_0 } else { Q5_0 };
            descs.push(q(&format!("{p}attn_q.weight"), &[640, 1024], Q5_0));
            descs.push(q(&format!("{p}attn_k.weight"), &[640, 256], Q5_0));
            descs.push(q(&format!("{p}attn_v.weight"), &[640, 256], v));
            descs.push(q(&format!("{p}attn_output.weight"), &[1024, 640], Q4_K));
            descs.push(q(&format!("{p}ffn_gate.weight"), &[640, 2048], Q5_0));
            descs.push(q(&format!("{p}ffn_up.weight"), &[640, 2048], Q5_0));
            descs.push(q(&format!("{p}ffn_down.weight"), &[2048, 640], Q6_K));
            descs.push(q(&format!("{p}attn_q_norm.weight"), &[256], F32));
        }
        let units = build_units(&descs, DEFAULT_CANDIDATES);
        let keep_of = |g: &str, l: u64| {
            units
                .iter()
                .find(|u| u.group == g && u.layer == Some(l))
                .unwrap()
                .keep
        };
        // Layer 0: k Q5_0 beside v Q8_0 → no single type reproduces the pair.
        assert!(keep_of("attn_kv", 0));
        // Layer 1: both Q5_0, a candidate → no separate keep option.
        assert!(!keep_of("attn_kv", 1));
        assert!(!keep_of("ffn_down", 0)); // Q6_K is a candidate for 2048-wide rows
        let te = units.iter().find(|u| u.group == "token_embd").unwrap();
        assert!(!te.keep && !te.candidates.contains(&Q6_K));
        // Without Q6_K among the candidates, ffn_down can still keep its source type.
        let no_q6 = build_units(&descs, &[Q4_0, Q4_K, Q5_0, Q8_0]);
        assert!(no_q6
            .iter()
            .filter(|u| u.group == "ffn_down")
            .all(|u| u.keep));
        // F32 sources never offer keep.
        assert!(build_units(&smol_like(), DEFAULT_CANDIDATES)
            .iter()
            .all(|u| !u.keep));
        // Keep every unit that may keep, Q4_0 elsewhere: the written recipe copies exactly those.
        let chosen: Vec<Pick> = units
            .iter()
            .map(|u| if u.keep { Pick::Keep } else { Pick::Type(Q4_0) })
            .collect();
        let opts = SearchOptions::new(Budget::Bytes(1));
        let yaml = write_recipe(&units, &chosen, "k", "", &BTreeMap::new(), &opts).unwrap();
        assert!(yaml.contains("type: keep"), "{yaml}");
        let r = Recipe::from_str_in(&yaml, "<t>", Path::new(".")).unwrap();
        let model = super::super::ModelInfo {
            arch: "gemma3".into(),
            n_layer: 2,
            n_head: 4,
            n_head_kv: 1,
            n_expert: 0,
        };
        let plan = super::super::build_plan(&r, &model, &descs, Default::default()).unwrap();
        for (u, t) in units.iter().zip(&chosen) {
            for name in &u.tensors {
                let e = plan.entries.iter().find(|e| &e.name == name).unwrap();
                match t {
                    Pick::Keep => assert!(e.is_copy(), "{name}"),
                    Pick::Type(t) => assert_eq!(e.to, Some(*t), "{name}"),
                }
            }
        }
        let v0 = plan
            .entries
            .iter()
            .find(|e| e.name == "blk.0.attn_v.weight")
            .unwrap();
        assert_eq!(v0.to, Some(Q8_0));
    }

    #[test]
    fn calibration_keys_split_layers_into_contiguous_ranges() {
        let units = build_units(&smol_like(), DEFAULT_CANDIDATES);
        let kv = units.iter().find(|u| u.group == "attn_kv").unwrap();
        assert_eq!(calib_key(kv, 1, 3), "attn_kv");
        let keys: Vec<String> = units
            .iter()
            .filter(|u| u.group == "ffn_down")
            .map(|u| calib_key(u, 2, 3))
            .collect();
        assert_eq!(keys, ["ffn_down@0-1", "ffn_down@0-1", "ffn_down@2-2"]);
        let te = units.iter().find(|u| u.group == "token_embd").unwrap();
        assert_eq!(calib_key(te, 3, 3), "token_embd");
        // 30 layers in 3 ranges: 0-9, 10-19, 20-29; 31 layers: 0-10, 11-20, 21-30.
        let mut u = kv.clone();
        for (l, n, want) in [
            (9, 30, "0-9"),
            (10, 30, "10-19"),
            (29, 30, "20-29"),
            (10, 31, "0-10"),
            (11, 31, "11-20"),
            (30, 31, "21-30"),
        ] {
            u.layer = Some(l);
            assert_eq!(
                calib_key(&u, 3, n),
                format!("attn_kv@{want}"),
                "layer {l} of {n}"
            );
        }
    }

    #[test]
    fn layer_lists_compress_ranges() {
        assert_eq!(layer_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(layer_list(&[3]), "3");
    }

    #[test]
    fn proxy_orders_types_by_precision() {
        let data: Vec<f32> = (0..64 * 256)
            .map(|i| ((i as f32 * 0.37).sin() * 0.05) + ((i * 7919 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        let e = |t| proxy_error(t, &data, 256, None, 16).unwrap();
        let (q2, q4, q6, q8) = (
            e(GgmlType::Q2_K),
            e(GgmlType::Q4_K),
            e(GgmlType::Q6_K),
            e(GgmlType::Q8_0),
        );
        assert!(
            q2 > q4 && q4 > q6 && q6 > q8 && q8 > 0.0,
            "{q2} {q4} {q6} {q8}"
        );
        // Sampling all rows equals the exact error; sampling scales to the whole tensor.
        let all = proxy_error(GgmlType::Q4_0, &data, 256, None, 64).unwrap();
        let some = proxy_error(GgmlType::Q4_0, &data, 256, None, 32).unwrap();
        assert!((some / all - 1.0).abs() < 0.3, "{some} vs {all}");
        assert!(proxy_error(GgmlType::Q4_0, &data[..100], 256, None, 4).is_err());
        // Importance weights scale each column's error (Q8_0 quantizes the same either way).
        let w = vec![3.0f32; 256];
        let plain = proxy_error(GgmlType::Q8_0, &data, 256, None, 64).unwrap();
        let weighted = proxy_error(GgmlType::Q8_0, &data, 256, Some(&w), 64).unwrap();
        assert!(
            (weighted / plain - 3.0).abs() < 1e-6,
            "{weighted} vs {plain}"
        );
        // Weights of the wrong length are ignored rather than misread.
        let bad = proxy_error(GgmlType::Q8_0, &data, 256, Some(&w[..10]), 64).unwrap();
        assert_eq!(bad, plain);
    }
}
