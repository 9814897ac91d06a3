//! `convert`: plan + kernels + streaming writer.
//!
//! One tensor at a time: the source is memory-mapped, each tensor is dequantized to f32 (when
//! its type changes), quantized in parallel over rows, hashed and written, so peak memory is
//! about the largest tensor in f32 plus its output, not the model. The output goes to a
//! temporary file beside OUT that is fsynced and renamed only when everything succeeded
//! ([`AtomicOutput`]); an error, a panic or a kill leaves no partial OUT.

pub mod hash_cache;
mod mapped;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gguf::{AtomicOutput, GgufFile, GgufWriter, TensorSpec, Value};
use crate::quant::imatrix::Imatrix;
use crate::quant::{self, GgmlType};
use crate::recipe::schema::MetaValue;
use crate::recipe::{build_plan, FallbackMode, ModelInfo, Plan, PlanOptions, Recipe, TensorDesc};

/// ggml's quantization format version (`GGML_QNT_VERSION`), written as
/// `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Options of [`convert`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The recipe (a file, a preset or a plain type).
    pub recipe: Recipe,
    /// Output path; required unless `dry_run`.
    pub output: Option<PathBuf>,
    /// Only plan; write nothing (except `export_tensor_types`).
    pub dry_run: bool,
    /// Allow dequantizing a quantized source tensor to quantize it again.
    pub allow_requantize: bool,
    /// Importance matrix (overrides the recipe's `imatrix:`).
    pub imatrix: Option<PathBuf>,
    /// Write the plan as a llama-quantize `--tensor-type-file` here.
    pub export_tensor_types: Option<PathBuf>,
    /// Worker threads (default: rayon's, one per core).
    pub threads: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Write `OUT.manifest.json`.
    pub manifest: bool,
    /// Take the manifest's source sha256 from this cache when the source file is unchanged,
    /// and store it there after hashing (see [`hash_cache`]). `None`: always hash.
    pub hash_cache: Option<hash_cache::HashCache>,
}

impl ConvertOptions {
    /// Options with defaults: write OUT and its manifest, no progress bar.
    pub fn new(recipe: Recipe) -> ConvertOptions {
        ConvertOptions {
            recipe,
            output: None,
            dry_run: false,
            allow_requantize: false,
            imatrix: None,
            export_tensor_types: None,
            threads: None,
            progress: false,
            manifest: true,
            hash_cache: None,
        }
    }
}

/// Seconds spent in each phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    /// Opening the source and planning.
    pub plan_s: f64,
    /// Converting and writing tensors.
    pub convert_s: f64,
    /// Hashing the source file (overlapped with converting).
    pub source_hash_s: f64,
    /// Everything.
    pub total_s: f64,
}

/// What [`convert`] did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// The plan that was executed (or only printed, for a dry run).
    pub plan: Plan,
    /// The output, when written.
    pub output: Option<PathBuf>,
    /// The manifest, when written.
    pub manifest: Option<PathBuf>,
    /// The manifest's content.
    pub manifest_json: Option<serde_json::Value>,
    /// Timings.
    pub timings: Timings,
    /// Non-fatal problems met while converting (an unusable hash cache entry or directory).
    pub warnings: Vec<String>,
    /// Where the manifest's source sha256 came from (`None` without a manifest).
    pub source_hash_from: Option<SourceHashFrom>,
}

/// Where the manifest's source sha256 came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceHashFrom {
    /// Hashed in full during this conversion.
    Computed,
    /// Taken from the source hash cache (the file's path, inode, size and times unchanged).
    Cache,
}

impl SourceHashFrom {
    /// The manifest's spelling: `computed` or `cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceHashFrom::Computed => "computed",
            SourceHashFrom::Cache => "cache",
        }
    }
}

/// Model facts for the preset logic, from GGUF metadata.
pub fn model_info(f: &GgufFile) -> ModelInfo {
    let arch = f.architecture().unwrap_or("").to_string();
    let num = |key: &str| -> Option<u64> {
        match f.get(&format!("{arch}.{key}"))? {
            Value::Array(a) => a.values.first().and_then(|v| v.as_u64()),
            v => v.as_u64(),
        }
    };
    let n_head = num("attention.head_count").unwrap_or(0);
    ModelInfo {
        n_layer: num("block_count").unwrap_or(0),
        n_head,
        n_head_kv: num("attention.head_count_kv").unwrap_or(n_head),
        n_expert: num("expert_count").unwrap_or(0),
        arch,
    }
}

/// The planner's view of a file's tensors, in file order.
pub fn tensor_descs(f: &GgufFile) -> Vec<TensorDesc> {
    f.tensors
        .iter()
        .map(|t| TensorDesc {
            name: t.name.clone(),
            dims: t.dims.clone(),
            type_id: t.type_id,
            ty: t.ty,
            n_bytes: t.n_bytes.unwrap_or(0),
        })
        .collect()
}

fn tensor_err(name: &str, msg: impl Into<String>) -> Error {
    Error::Tensor {
        tensor: name.to_string(),
        msg: msg.into(),
    }
}

/// Reads tensor data with positioned reads instead of touching the memory map, so that the
/// resident memory stays about one tensor (llama-quantize unmaps each tensor for the same
/// reason) rather than growing to the whole source file.
struct Source<'a> {
    f: &'a GgufFile,
    file: std::fs::File,
}

impl<'a> Source<'a> {
    fn open(f: &'a GgufFile) -> Result<Source<'a>> {
        let file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
        Ok(Source { f, file })
    }

    /// The raw bytes of a tensor (offsets were validated when the file was opened).
    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let t = self
            .f
            .tensor(name)
            .ok_or_else(|| tensor_err(name, "not in the source"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            let n = t
                .n_bytes
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    tensor_err(name, format!("size of type {} is unknown", t.type_name()))
                })?;
            let mut buf = vec![0u8; n];
            self.file
                .read_exact_at(&mut buf, self.f.data_offset.saturating_add(t.offset))
                .map_err(|e| Error::io(&self.f.path, e))?;
            Ok(buf)
        }
        #[cfg(not(unix))]
        {
            let _ = &self.file;
            Ok(self.f.tensor_data(t)?.to_vec())
        }
    }

    /// A whole source tensor dequantized to f32.
    fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .f
            .tensor(name)
            .ok_or_else(|| tensor_err(name, "not in the source"))?;
        let ty =
            t.ty.ok_or_else(|| tensor_err(name, format!("cannot decode type {}", t.type_name())))?;
        let n =
            usize::try_from(t.n_elements()).map_err(|_| tensor_err(name, "too many elements"))?;
        if ty == GgmlType::F32 && t.n_bytes == Some(n as u64 * 4) {
            return self.read_f32(t, n);
        }
        let data = self.read(name)?;
        quant::dequantize_tensor(ty, &data, n).map_err(|e| tensor_err(name, e.to_string()))
    }

    /// An F32 tensor read straight into its f32 buffer (no second copy of the tensor).
    #[cfg(unix)]
    fn read_f32(&self, t: &crate::gguf::TensorInfo, n: usize) -> Result<Vec<f32>> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0f32; n];
        // SAFETY: the byte view covers exactly the f32 buffer, which is initialised; every bit
        // pattern is a valid f32, and the view is dropped before `v` is used again.
        let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), n * 4) };
        self.file
            .read_exact_at(bytes, self.f.data_offset.saturating_add(t.offset))
            .map_err(|e| Error::io(&self.f.path, e))?;
        if cfg!(target_endian = "big") {
            for x in &mut v {
                *x = f32::from_bits(u32::from_le(x.to_bits()));
            }
        }
        Ok(v)
    }

    #[cfg(not(unix))]
    fn read_f32(&self, t: &crate::gguf::TensorInfo, n: usize) -> Result<Vec<f32>> {
        let data = self.read(&t.name)?;
        quant::dequantize_tensor(GgmlType::F32, &data, n)
            .map_err(|e| tensor_err(&t.name, e.to_string()))
    }
}

/// sha256 of a whole file, read sequentially (not through the map: see [`Source`]).
fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(h.finalize()))
}

/// The importance weights for one tensor, checked like llama-quantize: `row_len × n_expert`
/// values; a size mismatch is an error except for token_embd (ignored).
fn imatrix_for<'a>(im: Option<&'a Imatrix>, name: &str, dims: &[u64]) -> Result<Option<&'a [f32]>> {
    let Some(im) = im else { return Ok(None) };
    let Some(w) = im.get(name) else {
        return Ok(None);
    };
    let row = dims.first().copied().unwrap_or(1);
    let n_expert = dims.get(2).copied().unwrap_or(1);
    if w.len() as u64 != row * n_expert {
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Ok(None);
        }
        return Err(tensor_err(
            name,
            format!(
                "imatrix has {} values, the tensor needs {} ({row} × {n_expert} experts)",
                w.len(),
                row * n_expert
            ),
        ));
    }
    Ok(Some(w))
}

/// Relative weighted squared error of quantizing `data` to `ty` (for `fallback: best`).
/// Measured on up to 256 rows spread evenly over the tensor.
fn measure_error(
    data: &[f32],
    row: usize,
    ty: GgmlType,
    imatrix: Option<&[f32]>,
    name: &str,
) -> Result<f64> {
    let n_rows = data.len() / row.max(1);
    let step = n_rows.div_ceil(256).max(1);
    let mut sample = Vec::with_capacity(n_rows.min(256) * row);
    for r in (0..n_rows).step_by(step) {
        sample.extend_from_slice(&data[r * row..(r + 1) * row]);
    }
    let w = imatrix.filter(|w| w.len() == row);
    let q =
        quant::quantize_tensor(ty, &sample, row, w).map_err(|e| tensor_err(name, e.to_string()))?;
    let back = quant::dequantize_tensor(ty, &q, sample.len())
        .map_err(|e| tensor_err(name, e.to_string()))?;
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&x, &y)) in sample.iter().zip(&back).enumerate() {
        let wi = w.map(|w| w[i % row] as f64).unwrap_or(1.0);
        num += wi * (x as f64 - y as f64).powi(2);
        den += wi * (x as f64).powi(2);
    }
    Ok(if den > 0.0 { num / den } else { num })
}

/// Plan a conversion of an open file.
pub fn plan_file(f: &GgufFile, recipe: &Recipe, imatrix: Option<&Imatrix>) -> Result<Plan> {
    let model = model_info(f);
    let descs = tensor_descs(f);
    let source = Source::open(f)?;
    let mut measure = |d: &TensorDesc, ty: GgmlType| -> Result<f64> {
        let data = source.to_f32(&d.name)?;
        let w = imatrix_for(imatrix, &d.name, &d.dims)?;
        measure_error(&data, d.row_len() as usize, ty, w, &d.name)
    };
    let opts = PlanOptions {
        has_imatrix: imatrix.is_some(),
        measure: if recipe.fallback == FallbackMode::Best {
            Some(&mut measure)
        } else {
            None
        },
    };
    build_plan(recipe, &model, &descs, opts)
}

fn meta_value(key: &str, v: &MetaValue, existing: Option<&Value>) -> Result<Value> {
    let bad = |m: String| Error::msg(format!("metadata override '{key}': {m}"));
    Ok(match (v, existing) {
        (MetaValue::Str(s), _) => Value::String(s.clone()),
        (MetaValue::Bool(b), _) => Value::Bool(*b),
        (MetaValue::Float(x), Some(Value::F64(_))) => Value::F64(*x),
        (MetaValue::Float(x), _) => Value::F32(*x as f32),
        (MetaValue::Int(_) | MetaValue::UInt(_), Some(old))
            if old.as_u64().is_some() || old.as_i64().is_some() =>
        {
            let i: i128 = match v {
                MetaValue::Int(i) => *i as i128,
                MetaValue::UInt(u) => *u as i128,
                _ => 0,
            };
            let fit = |lo: i128, hi: i128| {
                if (lo..=hi).contains(&i) {
                    Ok(())
                } else {
                    Err(bad(format!(
                        "{i} does not fit the key's type {:?}",
                        old.value_type()
                    )))
                }
            };
            match old {
                Value::U8(_) => fit(0, u8::MAX as i128).map(|_| Value::U8(i as u8))?,
                Value::I8(_) => {
                    fit(i8::MIN as i128, i8::MAX as i128).map(|_| Value::I8(i as i8))?
                }
                Value::U16(_) => fit(0, u16::MAX as i128).map(|_| Value::U16(i as u16))?,
                Value::I16(_) => {
                    fit(i16::MIN as i128, i16::MAX as i128).map(|_| Value::I16(i as i16))?
                }
                Value::U32(_) => fit(0, u32::MAX as i128).map(|_| Value::U32(i as u32))?,
                Value::I32(_) => {
                    fit(i32::MIN as i128, i32::MAX as i128).map(|_| Value::I32(i as i32))?
                }
                Value::U64(_) => fit(0, u64::MAX as i128).map(|_| Value::U64(i as u64))?,
                _ => fit(i64::MIN as i128, i64::MAX as i128).map(|_| Value::I64(i as i64))?,
            }
        }
        (MetaValue::Int(i), _) => {
            if let Ok(u) = u32::try_from(*i) {
                Value::U32(u)
            } else if let Ok(s) = i32::try_from(*i) {
                Value::I32(s)
            } else {
                Value::I64(*i)
            }
        }
        (MetaValue::UInt(u), _) => Value::U64(*u),
    })
}

/// The output tensors of `plan`, in file order, as the GGUF writer takes them.
pub fn output_specs(plan: &Plan) -> Vec<TensorSpec> {
    plan.entries
        .iter()
        .map(|e| TensorSpec {
            name: e.name.clone(),
            dims: e.dims.clone(),
            type_id: e.to_id,
            n_bytes: e.to_bytes,
        })
        .collect()
}

/// The output metadata: the source's in order, split keys removed, recipe overrides applied,
/// then `general.quantization_version` and `general.file_type` (re-added last, as llama.cpp does).
pub fn output_metadata(
    f: &GgufFile,
    recipe: &Recipe,
    file_type: u32,
) -> Result<Vec<(String, Value)>> {
    const DROP: &[&str] = &["split.no", "split.count", "split.tensors.count"];
    let mut meta: Vec<(String, Value)> = f
        .metadata
        .iter()
        .filter(|(k, _)| !DROP.contains(&k.as_str()))
        .filter(|(k, _)| k != "general.quantization_version" && k != "general.file_type")
        .cloned()
        .collect();
    meta.push((
        "general.quantization_version".into(),
        Value::U32(QUANTIZATION_VERSION),
    ));
    meta.push(("general.file_type".into(), Value::U32(file_type)));
    for (k, v) in &recipe.metadata {
        if k == "general.alignment" {
            return Err(Error::msg(
                "metadata override 'general.alignment' is not allowed (it changes the data layout)",
            ));
        }
        let pos = meta.iter().position(|(mk, _)| mk == k);
        match (v, pos) {
            (None, Some(p)) => {
                meta.remove(p);
            }
            (None, None) => {}
            (Some(v), Some(p)) => {
                let nv = meta_value(k, v, Some(&meta[p].1))?;
                meta[p].1 = nv;
            }
            (Some(v), None) => {
                let nv = meta_value(k, v, None)?;
                meta.push((k.clone(), nv));
            }
        }
    }
    Ok(meta)
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            // Also catches hard links and bind mounts.
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    let ca = std::fs::canonicalize(a);
    if let (Ok(ca), Ok(cb)) = (&ca, std::fs::canonicalize(b)) {
        return *ca == cb;
    }
    // b does not exist yet: compare its canonical parent + file name.
    match (ca, b.parent(), b.file_name()) {
        (Ok(ca), Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .map(|p| p.join(name) == ca)
                .unwrap_or(false)
        }
        _ => false,
    }
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest path for an output: `OUT.manifest.json`.
pub fn manifest_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// Convert `input` as `opts` says. See the module docs.
pub fn convert(input: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    match opts.threads {
        Some(n) if n > 0 => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| Error::msg(format!("cannot start {n} threads: {e}")))?;
            pool.install(|| convert_inner(input, opts))
        }
        Some(_) => Err(Error::msg("--threads must be at least 1")),
        None => convert_inner(input, opts),
    }
}

fn convert_inner(input: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let t0 = Instant::now();
    if let Some(out) = &opts.output {
        if same_file(input, out) {
            return Err(Error::msg(format!(
                "output {} is the input file; choose another output path",
                out.display()
            )));
        }
    } else if !opts.dry_run {
        return Err(Error::msg("an output path is required (or use --dry-run)"));
    }
    if !input.is_file() {
        return Err(Error::msg(format!("{}: no such file", input.display())));
    }
    let f = GgufFile::open(input)?;
    let im_path = opts.imatrix.clone().or_else(|| opts.recipe.imatrix.clone());
    let imatrix = im_path.as_deref().map(Imatrix::load).transpose()?;
    let plan = plan_file(&f, &opts.recipe, imatrix.as_ref())?;
    if let Some(p) = &opts.export_tensor_types {
        let mut a = AtomicOutput::create(p)?;
        a.write_all(plan.tensor_type_file().as_bytes())
            .map_err(|e| Error::io(p, e))?;
        a.commit()?;
    }
    let plan_s = t0.elapsed().as_secs_f64();
    if opts.dry_run {
        return Ok(ConvertReport {
            plan,
            output: None,
            manifest: None,
            manifest_json: None,
            timings: Timings {
                plan_s,
                total_s: t0.elapsed().as_secs_f64(),
                ..Default::default()
            },
            warnings: Vec::new(),
            source_hash_from: None,
        });
    }
    let out_path = opts.output.clone().unwrap_or_default();
    if !opts.allow_requantize {
        if let Some(e) = plan.entries.iter().find(|e| e.is_requantize()) {
            return Err(tensor_err(
                &e.name,
                format!(
                    "source is {}; requantizing to {} needs --allow-requantize ({} tensor(s) affected)",
                    e.from_name(),
                    e.to_name(),
                    plan.n_requantize()
                ),
            ));
        }
    }
    for e in &plan.entries {
        if e.is_copy() && f.tensor(&e.name).and_then(|t| t.n_bytes).is_none() {
            return Err(tensor_err(
                &e.name,
                format!("cannot copy a tensor of unknown type {}", e.from_name()),
            ));
        }
    }
    let metadata = output_metadata(&f, &opts.recipe, plan.file_type)?;
    let specs = output_specs(&plan);

    let t1 = Instant::now();
    let atomic = AtomicOutput::create(&out_path)?;
    let writer = GgufWriter::new_for_path(
        BufWriter::with_capacity(1 << 20, atomic),
        &out_path,
        f.version,
        f.alignment,
        &metadata,
        specs,
    )?;
    // The source hash: from the cache when the file is unchanged, else computed in full.
    let mut warnings = Vec::new();
    let cache = opts.hash_cache.as_ref().filter(|_| opts.manifest);
    let mut cache_key = None;
    let mut cached_sha = None;
    let hashed_at = std::time::SystemTime::now();
    if let Some(c) = cache {
        match hash_cache::FileKey::of(input) {
            Ok(k) => {
                match c.lookup(&k) {
                    hash_cache::Lookup::Hit(sha) => cached_sha = Some(sha),
                    hash_cache::Lookup::Miss(w) => warnings.extend(w),
                }
                cache_key = Some(k);
            }
            Err(e) => warnings.push(format!("source hash cache: {e}; hashing the source")),
        }
    }
    let bar = progress_bar(opts.progress, plan.from_bytes());
    let want_hash = opts.manifest && cached_sha.is_none();
    // The output tensors' hashes serve only the manifest.
    let run = run_pipeline(
        &f,
        &plan,
        imatrix.as_ref(),
        writer,
        want_hash,
        opts.manifest,
        &bar,
    )?;
    let buf = run.writer.finish()?;
    let atomic = buf
        .into_inner()
        .map_err(|e| Error::io(&out_path, e.into_error()))?;
    bar.finish_and_clear();
    let convert_s = t1.elapsed().as_secs_f64();
    let (tensor_hashes, mut source_sha, source_hash_s) =
        (run.tensor_hashes, run.source_sha, run.source_hash_s);
    let source_hash_from = opts.manifest.then(|| {
        if cached_sha.is_some() {
            SourceHashFrom::Cache
        } else {
            SourceHashFrom::Computed
        }
    });
    if let Some(sha) = cached_sha {
        source_sha = sha;
    } else if let (Some(c), Some(k)) = (cache, &cache_key) {
        // Store only if the file did not change while it was read.
        match hash_cache::FileKey::of(input) {
            Ok(now) if now == *k => {
                if let Err(e) = c.store(k, &source_sha, hashed_at) {
                    warnings.push(format!("source hash cache: cannot store the hash: {e}"));
                }
            }
            Ok(_) => warnings.push(format!(
                "{} changed while it was converted; its hash is not cached",
                input.display()
            )),
            Err(e) => warnings.push(format!("source hash cache: {e}")),
        }
    }

    let mut manifest_json = None;
    let mut manifest_out = None;
    let mpath = manifest_path(&out_path);
    if opts.manifest {
        let timings = Timings {
            plan_s,
            convert_s,
            source_hash_s,
            total_s: t0.elapsed().as_secs_f64(),
        };
        let m = manifest(
            &f,
            &opts.recipe,
            &plan,
            &tensor_hashes,
            (
                &source_sha,
                source_hash_from.unwrap_or(SourceHashFrom::Computed),
            ),
            imatrix.as_ref(),
            &timings,
        );
        let text = serde_json::to_string_pretty(&m).map_err(|e| Error::msg(e.to_string()))?;
        let mut mo = AtomicOutput::create(&mpath)?;
        mo.write_all(text.as_bytes())
            .map_err(|e| Error::io(&mpath, e))?;
        mo.write_all(b"\n").map_err(|e| Error::io(&mpath, e))?;
        manifest_json = Some(m);
        manifest_out = Some(mo);
    }
    atomic.commit()?;
    if let Some(mo) = manifest_out {
        mo.commit()?;
    }
    let timings = Timings {
        plan_s,
        convert_s,
        source_hash_s,
        total_s: t0.elapsed().as_secs_f64(),
    };
    Ok(ConvertReport {
        plan,
        output: Some(out_path),
        manifest: opts.manifest.then_some(mpath),
        manifest_json,
        timings,
        warnings,
        source_hash_from,
    })
}

/// f32 elements per pipeline piece (4 MiB of f32): enough whole rows to keep every core busy,
/// few enough that peak memory does not grow with the model.
const PIECE_ELEMS: u64 = 1 << 20;
/// Bytes per piece of a tensor copied unchanged.
const COPY_PIECE_BYTES: u64 = 8 << 20;
/// Pieces in flight between two pipeline stages.
const QUEUE: usize = 2;

/// Spare buffers handed back from a later pipeline stage to an earlier one, so that steady
/// state allocates nothing (fresh buffers cost page faults and zeroing on every piece).
struct Pool<T> {
    tx: std::sync::mpsc::SyncSender<Vec<T>>,
    rx: std::sync::Mutex<std::sync::mpsc::Receiver<Vec<T>>>,
}

impl<T: Copy + Default> Pool<T> {
    fn new() -> Pool<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE + 2);
        Pool {
            tx,
            rx: std::sync::Mutex::new(rx),
        }
    }

    /// A buffer of `n` elements; its content is unspecified (old data or zeros).
    fn take(&self, n: usize) -> Vec<T> {
        let spare = self.rx.lock().ok().and_then(|rx| rx.try_recv().ok());
        match spare {
            Some(mut v) => {
                if v.len() > n {
                    v.truncate(n);
                } else {
                    v.resize(n, T::default());
                }
                v
            }
            None => vec![T::default(); n],
        }
    }

    /// Give a buffer back (dropped when the pool is full).
    fn give(&self, v: Vec<T>) {
        let _ = self.tx.try_send(v);
    }
}

/// Source data of one piece: f32 read straight into place, raw bytes, or a mapped window of
/// the source (see [`mapped`]).
enum Payload {
    F32(Vec<f32>),
    Raw(Vec<u8>),
    Mapped(mapped::Window),
}

impl Payload {
    /// The piece's source bytes, as they are in the file (for the hash and for copies).
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: a read-only byte view of the initialised f32 buffer.
            Payload::F32(v) => unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(&v[..]))
            },
            Payload::Raw(v) => v,
            Payload::Mapped(w) => w.bytes(),
        }
    }

    /// Whether the bytes are not the file's: a bus error was caught in a mapped window.
    fn bus_error(&self) -> bool {
        matches!(self, Payload::Mapped(w) if w.bus_error())
    }
}

/// Hand a payload back to its pool when this was its last user (the converter and the source
/// hash thread share it).
fn release(p: std::sync::Arc<Payload>, pools: &Pools) {
    match std::sync::Arc::into_inner(p) {
        Some(Payload::F32(v)) => pools.f32.give(v),
        Some(Payload::Raw(v)) => pools.raw.give(v),
        Some(Payload::Mapped(_)) | None => {}
    }
}

/// The error for a piece whose mapped bytes were lost to a bus error.
fn changed_under_us(path: &Path) -> Error {
    Error::io(
        path,
        std::io::Error::other(
            "the file shrank (or could not be read) while it was converted: bus error in its \
             memory map; nothing was written",
        ),
    )
}

/// A run of whole rows of one tensor (or, for a copied tensor, a run of bytes).
struct Piece {
    entry: usize,
    /// First row of the piece in the tensor (0 for copies).
    first_row: u64,
    /// Rows in the piece (0 for copies).
    n_rows: u64,
    /// The tensor's last piece.
    last: bool,
    /// The data are the tensor's f32 values (an F32 source being quantized); else raw bytes.
    f32_in: bool,
    data: std::sync::Arc<Payload>,
}

/// What the source hash thread hashes, in file order.
enum HashItem {
    /// Source bytes no tensor covers (header, padding, the tail).
    Gap(Vec<u8>),
    /// A piece's source data (shared with the converter).
    Data(std::sync::Arc<Payload>),
}

/// Encoded bytes of a piece, on their way to the writer.
struct OutPiece {
    entry: usize,
    last: bool,
    data: Vec<u8>,
}

/// What [`run_pipeline`] hands back.
struct PipelineRun<W: Write> {
    writer: GgufWriter<W>,
    /// Every output tensor's sha256 in plan order (empty without `hash_outputs`).
    tensor_hashes: Vec<String>,
    source_sha: String,
    source_hash_s: f64,
}

/// Absolute byte ranges of the plan's tensors in the source, in plan order.
fn source_ranges(f: &GgufFile, plan: &Plan) -> Result<Vec<(u64, u64)>> {
    plan.entries
        .iter()
        .map(|e| {
            let t = f
                .tensor(&e.name)
                .ok_or_else(|| tensor_err(&e.name, "not in the source"))?;
            let n = t.n_bytes.ok_or_else(|| {
                tensor_err(
                    &e.name,
                    format!("size of type {} is unknown", t.type_name()),
                )
            })?;
            let start = f.data_offset.saturating_add(t.offset);
            Ok((start, start.saturating_add(n)))
        })
        .collect()
}

/// The source bytes from `from` up to `to` (a gap between tensors: header, padding).
fn read_gap(file: &std::fs::File, path: &Path, from: u64, to: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(to.saturating_sub(from))
        .map_err(|_| Error::msg(format!("{}: gap too large", path.display())))?;
    let mut buf = vec![0u8; n];
    read_at(file, path, &mut buf, from)?;
    Ok(buf)
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, path: &Path, buf: &mut [u8], at: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, at).map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn read_at(file: &std::fs::File, path: &Path, buf: &mut [u8], at: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(buf))
        .map_err(|e| Error::io(path, e))
}

/// The byte view of an f32 buffer.
fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: the view covers exactly the initialised f32 buffer; every bit pattern is a valid
    // f32 and u8 has no alignment requirement.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// How the reader stage gets a piece's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadMode {
    /// Map each piece ([`mapped::Window`]); pieces that cannot be mapped are read.
    Map,
    /// Positioned reads into recycled buffers.
    Read,
}

impl ReadMode {
    /// `GGUFQ_READ=pread` forces positioned reads (to compare, or where maps are unwelcome);
    /// anything else maps.
    fn from_env() -> ReadMode {
        match std::env::var("GGUFQ_READ") {
            Ok(v) if v == "pread" => ReadMode::Read,
            _ => ReadMode::Map,
        }
    }
}

/// The reader stage: every tensor of the plan, in plan order, cut into pieces of whole rows,
/// mapped one piece at a time or read with positioned reads (never the whole file: resident
/// memory stays a few pieces). With `hash`, the source bytes that no tensor covers and every
/// piece's data go to the source hash thread first, in file order, so the file is hashed
/// without being read twice.
#[allow(clippy::too_many_arguments)]
fn read_pieces(
    f: &GgufFile,
    file: &std::fs::File,
    plan: &Plan,
    ranges: &[(u64, u64)],
    mode: ReadMode,
    hash: Option<&std::sync::mpsc::SyncSender<HashItem>>,
    tx: &std::sync::mpsc::SyncSender<Result<Piece>>,
    pools: &Pools,
) -> Result<()> {
    let mut pos = 0u64;
    for (i, (e, &(start, end))) in plan.entries.iter().zip(ranges).enumerate() {
        if let Some(h) = hash {
            if start > pos
                && h.send(HashItem::Gap(read_gap(file, &f.path, pos, start)?))
                    .is_err()
            {
                return Ok(());
            }
        }
        pos = end;
        let n_bytes = end - start;
        let row_len = e.dims.first().copied().unwrap_or(1).max(1);
        let n_rows = e.n_elements() / row_len;
        let f32_in =
            !e.is_copy() && e.from == Some(GgmlType::F32) && n_bytes == n_rows * row_len * 4;
        // Pieces: byte runs for copies, runs of whole rows otherwise (never across experts,
        // which have their own importance weights).
        let mut pieces: Vec<(u64, u64, u64, u64)> = Vec::new(); // (first_row, rows, byte start, bytes)
        if e.is_copy() || n_rows == 0 {
            let mut at = 0;
            loop {
                let n = (n_bytes - at).min(COPY_PIECE_BYTES);
                pieces.push((0, 0, at, n));
                at += n;
                if at >= n_bytes {
                    break;
                }
            }
        } else {
            let row_bytes = n_bytes / n_rows;
            let n_expert = e.dims.get(2).copied().unwrap_or(1).max(1);
            let per_expert = (n_rows / n_expert).max(1);
            let step = (PIECE_ELEMS / row_len).max(1);
            let mut r = 0;
            while r < n_rows {
                let expert_end = (r / per_expert + 1) * per_expert;
                let rows = step.min(expert_end - r).min(n_rows - r);
                pieces.push((r, rows, r * row_bytes, rows * row_bytes));
                r += rows;
            }
        }
        let last_idx = pieces.len() - 1;
        for (k, (first_row, rows, at, n)) in pieces.into_iter().enumerate() {
            let len = usize::try_from(n).map_err(|_| tensor_err(&e.name, "too large"))?;
            let window = match mode {
                ReadMode::Map => mapped::Window::map(file, start + at, len)
                    .filter(|w| !f32_in || w.f32s().is_some()),
                ReadMode::Read => None,
            };
            let data = if let Some(w) = window {
                Payload::Mapped(w)
            } else if f32_in {
                let mut v = pools.f32.take(len / 4);
                read_at(file, &f.path, f32_bytes_mut(&mut v), start + at)?;
                if cfg!(target_endian = "big") {
                    for x in &mut v {
                        *x = f32::from_bits(u32::from_le(x.to_bits()));
                    }
                }
                Payload::F32(v)
            } else {
                let mut v = pools.raw.take(len);
                read_at(file, &f.path, &mut v, start + at)?;
                Payload::Raw(v)
            };
            let data = std::sync::Arc::new(data);
            if let Some(h) = hash {
                if h.send(HashItem::Data(data.clone())).is_err() {
                    return Ok(());
                }
            }
            let piece = Piece {
                entry: i,
                first_row,
                n_rows: rows,
                last: k == last_idx,
                f32_in,
                data,
            };
            if tx.send(Ok(piece)).is_err() {
                // The converter stopped (it reports why).
                return Ok(());
            }
        }
    }
    if let Some(h) = hash {
        if f.file_size > pos {
            let _ = h.send(HashItem::Gap(read_gap(file, &f.path, pos, f.file_size)?));
        }
    }
    Ok(())
}

/// The buffer pools of one conversion: f32 and raw source pieces go back to the reader,
/// encoded pieces back to the converter.
struct Pools {
    f32: Pool<f32>,
    raw: Pool<u8>,
    out: Pool<u8>,
}

/// Encode one piece (the converter stage).
fn encode_piece(
    e: &crate::recipe::PlanEntry,
    p: &Piece,
    imatrix: Option<&Imatrix>,
    pools: &Pools,
) -> Result<Vec<u8>> {
    if e.is_copy() {
        let b = p.data.bytes();
        let mut out = pools.out.take(b.len());
        out.copy_from_slice(b);
        return Ok(out);
    }
    let to = e.to.ok_or_else(|| tensor_err(&e.name, "no target type"))?;
    let row_len = e.dims.first().copied().unwrap_or(1).max(1);
    let n = usize::try_from(p.n_rows * row_len).map_err(|_| tensor_err(&e.name, "too large"))?;
    let mut decoded: Option<Vec<f32>> = None;
    let f32_view = match (&*p.data, p.f32_in) {
        (Payload::F32(v), true) => Some(&v[..]),
        (Payload::Mapped(w), true) => w.f32s(),
        _ => None,
    };
    let data: &[f32] = match f32_view {
        Some(v) => v,
        None => {
            let from = e.from.ok_or_else(|| {
                tensor_err(&e.name, format!("cannot decode type {}", e.from_name()))
            })?;
            let mut v = pools.f32.take(n);
            dequantize_into(from, p.data.bytes(), &mut v)
                .map_err(|err| tensor_err(&e.name, err.to_string()))?;
            decoded.insert(v)
        }
    };
    let w = if to.is_quantized() {
        imatrix_for(imatrix, &e.name, &e.dims)?
    } else {
        None
    };
    let n_rows = e.n_elements() / row_len;
    let n_expert = e.dims.get(2).copied().unwrap_or(1).max(1);
    let expert = p.first_row / (n_rows / n_expert).max(1);
    let rl = row_len as usize;
    let w = w.and_then(|w| w.get(expert as usize * rl..(expert as usize + 1) * rl));
    let rb = to
        .bytes_for(row_len)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| tensor_err(&e.name, "row too large"))?;
    let mut out = pools.out.take(p.n_rows as usize * rb);
    // A reused buffer is not cleared: every kernel writes every byte of its rows (tested by
    // quant::tests::rows_write_every_output_byte; the memset was ~2-5 % of a conversion).
    quant::quantize_rows_into(to, data, rl, w, p.first_row as usize, &mut out)
        .map_err(|err| tensor_err(&e.name, err.to_string()))?;
    if let Some(v) = decoded {
        pools.f32.give(v);
    }
    Ok(out)
}

/// Decode `src` (whole blocks of `ty`) into `dst`, in parallel like
/// [`quant::dequantize_tensor`] but into a reused buffer.
fn dequantize_into(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    use rayon::prelude::*;
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    if bs == 0 || ts == 0 || src.len() / ts * bs != dst.len() || src.len() % ts != 0 {
        return Err(Error::msg(format!(
            "{ty}: {} bytes do not hold {} values",
            src.len(),
            dst.len()
        )));
    }
    let per_task = (65_536 / bs).max(1);
    dst.par_chunks_mut(bs * per_task)
        .zip(src.par_chunks(ts * per_task))
        .try_for_each(|(d, s)| quant::dequantize_row(ty, s, d))
}

/// Pieces the source hash thread may lag behind the reader.
const HASH_QUEUE: usize = QUEUE;

/// The source hash stage: sha256 of everything the reader hands over, in order. Fails when a
/// mapped piece lost bytes to a bus error (it may have been hashed after the converter looked).
fn hash_stage(
    rx: std::sync::mpsc::Receiver<HashItem>,
    pools: &Pools,
    path: &Path,
) -> Result<(String, f64)> {
    let mut h = Sha256::new();
    let mut secs = 0f64;
    for item in rx {
        let t = Instant::now();
        match item {
            HashItem::Gap(b) => h.update(&b),
            HashItem::Data(d) => {
                h.update(d.bytes());
                if d.bus_error() {
                    return Err(changed_under_us(path));
                }
                release(d, pools);
            }
        }
        secs += t.elapsed().as_secs_f64();
    }
    Ok((hex(h.finalize()), secs))
}

/// Read → convert → write, with the source hash beside them: the reader (maps or positioned
/// reads), the source hash (when `want_hash`) and the writer (tensor hashes when
/// `hash_outputs`, output) run on their own threads while the rayon pool encodes. At most
/// [`QUEUE`] pieces wait between two stages ([`HASH_QUEUE`] before the hash), so memory stays
/// a few pieces whatever the model's size.
fn run_pipeline<W: Write + Send>(
    f: &GgufFile,
    plan: &Plan,
    imatrix: Option<&Imatrix>,
    writer: GgufWriter<W>,
    want_hash: bool,
    hash_outputs: bool,
    bar: &indicatif::ProgressBar,
) -> Result<PipelineRun<W>> {
    let mode = ReadMode::from_env();
    run_pipeline_with(f, plan, imatrix, writer, want_hash, hash_outputs, bar, mode)
}

/// [`run_pipeline`] with the read mode given.
#[allow(clippy::too_many_arguments)]
fn run_pipeline_with<W: Write + Send>(
    f: &GgufFile,
    plan: &Plan,
    imatrix: Option<&Imatrix>,
    mut writer: GgufWriter<W>,
    want_hash: bool,
    hash_outputs: bool,
    bar: &indicatif::ProgressBar,
    mode: ReadMode,
) -> Result<PipelineRun<W>> {
    use std::sync::mpsc::sync_channel;
    let ranges = source_ranges(f, plan)?;
    // The source can be hashed while it is read when the tensors come in file order without
    // overlaps (what every writer produces); otherwise a separate pass reads it.
    let in_order = ranges.windows(2).all(|w| w[0].1 <= w[1].0)
        && ranges.last().is_none_or(|r| r.1 <= f.file_size);
    let pools = Pools {
        f32: Pool::new(),
        raw: Pool::new(),
        out: Pool::new(),
    };
    let pools = &pools;
    let file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
    let file = &file;
    let run = std::thread::scope(|s| {
        let (ptx, prx) = sync_channel::<Result<Piece>>(QUEUE);
        let (otx, orx) = sync_channel::<OutPiece>(QUEUE);
        let separate_hash = (want_hash && !in_order).then(|| {
            let path = f.path.clone();
            s.spawn(move || {
                let t = Instant::now();
                file_sha256(&path).map(|sha| (sha, t.elapsed().as_secs_f64()))
            })
        });
        let inline_hash = want_hash && in_order;
        let (htx, hrx) = sync_channel::<HashItem>(HASH_QUEUE);
        let hash_thread = inline_hash.then(|| s.spawn(move || hash_stage(hrx, pools, &f.path)));
        let ranges = &ranges;
        let reader = s.spawn(move || {
            let htx = inline_hash.then_some(htx);
            if let Err(e) = read_pieces(f, file, plan, ranges, mode, htx.as_ref(), &ptx, pools) {
                let _ = ptx.send(Err(e));
            }
        });
        let writer_thread = s.spawn(move || -> Result<(GgufWriter<W>, Vec<String>, usize)> {
            let mut hashes = Vec::with_capacity(plan.entries.len());
            let mut h = hash_outputs.then(Sha256::new);
            let mut produced = 0u64;
            let mut written = 0usize;
            for p in orx {
                let e = &plan.entries[p.entry];
                if let Some(h) = h.as_mut() {
                    h.update(&p.data);
                }
                produced += p.data.len() as u64;
                if produced > e.to_bytes || (p.last && produced != e.to_bytes) {
                    return Err(tensor_err(
                        &e.name,
                        format!("produced {produced} bytes, planned {}", e.to_bytes),
                    ));
                }
                writer.write_tensor_part(&p.data)?;
                pools.out.give(p.data);
                if p.last {
                    if let Some(h) = h.as_mut() {
                        hashes.push(hex(h.finalize_reset()));
                    }
                    produced = 0;
                    written += 1;
                }
            }
            Ok((writer, hashes, written))
        });
        // The converter stage, on this (rayon) thread.
        let conv = move || -> Result<()> {
            let mut current = usize::MAX;
            for piece in prx {
                let piece = piece?;
                let e = plan
                    .entries
                    .get(piece.entry)
                    .ok_or_else(|| Error::msg("reader sent a piece of no tensor"))?;
                if piece.entry != current {
                    current = piece.entry;
                    bar.set_message(e.name.clone());
                }
                let src_bytes = piece.data.bytes().len() as u64;
                let data = encode_piece(e, &piece, imatrix, pools)?;
                if piece.data.bus_error() {
                    return Err(changed_under_us(&f.path));
                }
                let (entry, last) = (piece.entry, piece.last);
                release(piece.data, pools);
                if otx.send(OutPiece { entry, last, data }).is_err() {
                    // The writer failed; its error is reported below.
                    break;
                }
                bar.inc(src_bytes);
            }
            drop(otx);
            Ok(())
        };
        let converted = conv();
        let written = writer_thread
            .join()
            .unwrap_or_else(|_| Err(Error::msg("writer thread panicked")));
        if reader.join().is_err() {
            return Err(Error::msg("reader thread panicked"));
        }
        let hashed = hash_thread.map(|t| {
            t.join()
                .unwrap_or_else(|_| Err(Error::msg("source hashing thread panicked")))
        });
        // The first failure in pipeline order: reading/encoding, then writing, then hashing.
        converted?;
        let (writer, tensor_hashes, n_written) = written?;
        let (source_sha, source_hash_s) = match (separate_hash, hashed) {
            (Some(t), _) => t
                .join()
                .unwrap_or_else(|_| Err(Error::msg("source hashing thread panicked")))?,
            (None, Some(h)) => h?,
            (None, None) => (String::new(), 0.0),
        };
        if n_written != plan.entries.len() {
            return Err(Error::msg(format!(
                "wrote {n_written} of {} tensors",
                plan.entries.len()
            )));
        }
        Ok(PipelineRun {
            writer,
            tensor_hashes,
            source_sha,
            source_hash_s,
        })
    })?;
    // A source that shrank under a map past a piece's last whole page reads as zeros without a
    // bus error; its size tells.
    let now = file.metadata().map_err(|e| Error::io(&f.path, e))?.len();
    if now != f.file_size {
        return Err(changed_under_us(&f.path));
    }
    Ok(run)
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn manifest(
    f: &GgufFile,
    recipe: &Recipe,
    plan: &Plan,
    hashes: &[String],
    (source_sha, source_sha_from): (&str, SourceHashFrom),
    imatrix: Option<&Imatrix>,
    t: &Timings,
) -> serde_json::Value {
    let norm = recipe.normalized_json();
    let norm_text = serde_json::to_string(&norm).unwrap_or_default();
    let tensors: Vec<serde_json::Value> = plan
        .entries
        .iter()
        .zip(hashes)
        .map(|(e, h)| {
            serde_json::json!({
                "name": e.name,
                "dims": e.dims,
                "from": e.from_name(),
                "type": e.to_name(),
                "bytes": e.to_bytes,
                "sha256": h,
                "why": e.why(),
            })
        })
        .collect();
    serde_json::json!({
        "ggufq_version": env!("CARGO_PKG_VERSION"),
        "source": {
            "path": f.path.display().to_string(),
            "bytes": f.file_size,
            "sha256": source_sha,
            "sha256_from": source_sha_from.as_str(),
        },
        "recipe": {
            "sources": recipe.sources,
            "normalized": norm,
            "sha256": hex(Sha256::digest(norm_text.as_bytes())),
        },
        "imatrix": imatrix.map(|m| serde_json::json!({
            "path": m.path.display().to_string(),
            "entries": m.entries.len(),
            "legacy": m.legacy,
        })),
        "file_type": plan.file_type,
        "quantization_version": QUANTIZATION_VERSION,
        "totals": {
            "tensors": plan.entries.len(),
            "from_bytes": plan.from_bytes(),
            "to_bytes": plan.to_bytes(),
            "bpw": plan.bpw(),
        },
        "warnings": plan.warnings,
        "tensors": tensors,
        "timings": {
            "plan_s": t.plan_s,
            "convert_s": t.convert_s,
            "source_hash_s": t.source_hash_s,
            "total_s": t.total_s,
        },
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A writer into memory for `plan`'s output of `f` with metadata `meta`.
    fn mem_writer(
        f: &GgufFile,
        plan: &Plan,
        meta: &[(String, crate::gguf::Value)],
    ) -> GgufWriter<Vec<u8>> {
        GgufWriter::new(Vec::new(), f.version, f.alignment, meta, output_specs(plan)).unwrap()
    }

    /// A source cut short after it was opened and planned: the pieces past the new end are
    /// mapped, touching them is a bus error that the guard turns into this error (with the
    /// source hash on or off), never a crash and never a finished output.
    #[test]
    fn source_truncated_during_conversion_is_an_error_not_sigbus() {
        for want_hash in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src.gguf");
            crate::synth::write_tiny_model(&src, GgmlType::F32, 7, None).unwrap();
            let f = GgufFile::open(&src).unwrap();
            let recipe = Recipe::load("Q8_0").unwrap();
            let plan = plan_file(&f, &recipe, None).unwrap();
            let meta = output_metadata(&f, &recipe, plan.file_type).unwrap();
            let writer = mem_writer(&f, &plan, &meta);
            // Keep the header and the first third of the tensor data.
            let cut = f.data_offset + (f.file_size - f.data_offset) / 3;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&src)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let bar = indicatif::ProgressBar::hidden();
            let r = run_pipeline(&f, &plan, None, writer, want_hash, want_hash, &bar);
            let err = r.err().expect("a truncated source must fail").to_string();
            assert!(
                err.contains("src.gguf") && err.contains("shrank"),
                "hash {want_hash}: {err}"
            );
        }
    }

    /// The same conversion through maps and through positioned reads gives the same bytes
    /// and the same source digest.
    #[test]
    fn mapped_and_read_pieces_give_the_same_output() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.gguf");
        crate::synth::write_tiny_model(&src, GgmlType::F32, 11, None).unwrap();
        let f = GgufFile::open(&src).unwrap();
        let recipe = Recipe::load("Q4_K_M").unwrap();
        let plan = plan_file(&f, &recipe, None).unwrap();
        let meta = output_metadata(&f, &recipe, plan.file_type).unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let mut outs = Vec::new();
        for mode in [ReadMode::Map, ReadMode::Read] {
            let writer = mem_writer(&f, &plan, &meta);
            let run = run_pipeline_with(&f, &plan, None, writer, true, true, &bar, mode).unwrap();
            outs.push((
                run.writer.finish().unwrap(),
                run.source_sha,
                run.tensor_hashes,
            ));
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0].1, file_sha256(&src).unwrap());
    }
}
