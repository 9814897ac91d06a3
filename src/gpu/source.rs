//! Where weights come from: a GGUF file (memory-mapped) or random weights of a real model
//! shape generated in memory (for speed runs without files).

use std::borrow::Cow;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{HParams, ModelFile};
use crate::quant::GgmlType;
use crate::recipe::plan::{build_plan, PlanOptions, TensorDesc};
use crate::recipe::presets::{ModelInfo, Preset};
use crate::recipe::schema::{Base, Recipe};

/// One tensor as stored: type, ggml dims (dims[0] = row length) and raw bytes.
pub struct TensorView<'a> {
    /// Storage type.
    pub ty: GgmlType,
    /// ggml order dims.
    pub dims: Vec<u64>,
    /// Raw block bytes.
    pub data: Cow<'a, [u8]>,
}

/// Metadata and tensors of a model.
pub trait WeightSource {
    /// Integer metadata.
    fn meta_u64(&self, key: &str) -> Option<u64>;
    /// Float metadata.
    fn meta_f64(&self, key: &str) -> Option<f64>;
    /// String metadata.
    fn meta_str(&self, key: &str) -> Option<String>;
    /// A tensor by name, or None if absent.
    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>>;
    /// Every tensor's name, type and ggml dims, without reading data.
    fn tensor_list(&self) -> Vec<(String, GgmlType, Vec<u64>)>;
    /// A label for reports (file path or synthetic shape).
    fn label(&self) -> String;

    /// The runtime's hyper-parameters of this model ([`HParams::from_file`]) where the source
    /// is a model file; `None` for synthetic llama shapes (read from the metadata above).
    fn hparams(&self) -> Option<Result<HParams>> {
        None
    }

    /// Parameter count and bytes over all tensors (llama-bench's `model_n_params` and
    /// `model_size`: a tied output matrix is the embedding, counted once).
    fn size_stats(&self) -> (u64, u64) {
        self.tensor_list()
            .iter()
            .fold((0, 0), |(n, b), (_, ty, dims)| {
                let e: u64 = dims.iter().product();
                (n + e, b + ty.bytes_for(e).unwrap_or(0))
            })
    }
}

/// A GGUF file read with memory mapping ([`crate::gguf::GgufFile`]).
pub struct GgufSource {
    model: std::sync::Arc<ModelFile>,
}

impl GgufSource {
    /// Open and validate a GGUF file; every tensor must have a type ggufq knows.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufSource> {
        let file = crate::gguf::GgufFile::open(path)?;
        for t in &file.tensors {
            if t.ty.is_none() {
                return Err(Error::Tensor {
                    tensor: t.name.clone(),
                    msg: format!(
                        "{}: type {} unknown to ggufq",
                        file.path.display(),
                        t.type_name()
                    ),
                });
            }
        }
        Ok(GgufSource {
            model: ModelFile::from_gguf(file),
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &crate::gguf::GgufFile {
        self.model.gguf()
    }
}

impl WeightSource for GgufSource {
    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.file().get(key)?.as_u64()
    }
    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.file().get(key)?.as_f64()
    }
    fn meta_str(&self, key: &str) -> Option<String> {
        self.file().get_str(key).map(str::to_string)
    }
    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let Some(t) = self.file().tensor(name) else {
            return Ok(None);
        };
        let ty = t.ty.ok_or_else(|| Error::Tensor {
            tensor: name.into(),
            msg: format!("type {} unknown to ggufq", t.type_name()),
        })?;
        Ok(Some(TensorView {
            ty,
            dims: t.dims.clone(),
            data: Cow::Borrowed(self.file().tensor_data(t)?),
        }))
    }
    fn tensor_list(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        self.file()
            .tensors
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.ty?, t.dims.clone())))
            .collect()
    }
    fn label(&self) -> String {
        self.file().path.display().to_string()
    }
    fn hparams(&self) -> Option<Result<HParams>> {
        Some(HParams::from_file(&self.model))
    }
}

/// Llama model shapes for synthetic weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Hidden size.
    pub n_embd: u64,
    /// Layers.
    pub n_layer: u64,
    /// FFN hidden size.
    pub n_ff: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads.
    pub n_kv: u64,
    /// Vocabulary.
    pub n_vocab: u64,
}

impl Shape {
    /// Named shapes: tiny (tests), 1b (TinyLlama-like), 7b (Llama-2-7B), 8b (Llama-3-8B).
    pub fn named(name: &str) -> Option<Shape> {
        Some(match name {
            "tiny" => Shape {
                n_embd: 256,
                n_layer: 2,
                n_ff: 512,
                n_head: 4,
                n_kv: 2,
                n_vocab: 512,
            },
            "1b" => Shape {
                n_embd: 2048,
                n_layer: 22,
                n_ff: 5632,
                n_head: 32,
                n_kv: 4,
                n_vocab: 32000,
            },
            "7b" => Shape {
                n_embd: 4096,
                n_layer: 32,
                n_ff: 11008,
                n_head: 32,
                n_kv: 32,
                n_vocab: 32000,
            },
            "8b" => Shape {
                n_embd: 4096,
                n_layer: 32,
                n_ff: 14336,
                n_head: 32,
                n_kv: 8,
                n_vocab: 128256,
            },
            _ => return None,
        })
    }
}

/// How tensor types are chosen for synthetic weights: a recipe planned exactly as
/// `ggufq convert` plans it ([`crate::recipe::plan::build_plan`]) for an F32 source of the
/// shape.
#[derive(Clone, Debug)]
pub struct Mix {
    name: String,
    recipe: Recipe,
}

/// recipes/hybrid.yaml, built in so `--synth 7b:hybrid` works anywhere.
const HYBRID_YAML: &str = include_str!("../../recipes/hybrid.yaml");

impl Mix {
    /// Parse a preset name (`q4_k_m`, `q4_0`, `q2_k`: llama-quantize's mix of that file type;
    /// `q2_k_mix` is an alias of `q2_k`), `hybrid` (recipes/hybrid.yaml) or a type name that
    /// is not a preset (`q4_k`, `q3_k`, `q5_k`: every quantizable tensor in that type).
    pub fn parse(s: &str) -> Option<Mix> {
        let up = s.to_ascii_uppercase();
        let (name, recipe) = match up.as_str() {
            "HYBRID" => (
                "hybrid".to_string(),
                Recipe::from_str_in(HYBRID_YAML, "recipes/hybrid.yaml", Path::new(".")).ok()?,
            ),
            "Q2_K_MIX" | "Q2_K_LLAMA" => (
                "Q2_K".to_string(),
                Recipe::from_base(Base::Preset(Preset::Q2_K)),
            ),
            _ => match Preset::from_name(&up) {
                Some(p) => (p.name().to_string(), Recipe::from_base(Base::Preset(p))),
                None => {
                    let t = GgmlType::from_name(&up)?;
                    (t.name().to_string(), Recipe::from_base(Base::Type(t)))
                }
            },
        };
        Some(Mix { name, recipe })
    }
    /// [`Mix::parse`], or a recipe YAML file when `s` names one (a path ending in .yaml/.yml).
    pub fn load(s: &str) -> Result<Mix> {
        if s.ends_with(".yaml") || s.ends_with(".yml") {
            let recipe = Recipe::from_path(Path::new(s))?;
            let name = recipe.name.clone().unwrap_or_else(|| {
                Path::new(s)
                    .file_stem()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            return Ok(Mix { name, recipe });
        }
        Mix::parse(s).ok_or_else(|| {
            Error::msg(format!(
                "unknown type, preset or recipe '{s}' (a type name, a llama-quantize preset such as q4_k_m, hybrid, or a .yaml recipe)"
            ))
        })
    }
    /// Short name for labels ("Q4_K_M", "hybrid").
    pub fn name(&self) -> String {
        self.name.clone()
    }
    /// The recipe.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }
}

/// Random weights of a llama shape in a type mix (norms F32), generated deterministically.
pub struct SynthSource {
    /// Shape.
    pub shape: Shape,
    /// Type mix.
    pub mix: Mix,
    /// Name for reports.
    pub name: String,
    /// Planned type of every tensor, in file order.
    types: Vec<(String, GgmlType)>,
    file_type: u32,
}

impl SynthSource {
    /// Plan `mix` over the tensors of `shape`.
    pub fn new(shape: Shape, mix: Mix, name: impl Into<String>) -> Result<SynthSource> {
        let names = tensor_names_of(&shape);
        let descs: Vec<TensorDesc> = names
            .iter()
            .map(|n| {
                let (dims, _) = dims_of(&shape, n)
                    .ok_or_else(|| Error::msg(format!("synth: no dims for {n}")))?;
                let e: u64 = dims.iter().product();
                Ok(TensorDesc {
                    name: n.clone(),
                    dims,
                    type_id: GgmlType::F32.id(),
                    ty: Some(GgmlType::F32),
                    n_bytes: 4 * e,
                })
            })
            .collect::<Result<_>>()?;
        let info = ModelInfo {
            arch: "llama".into(),
            n_layer: shape.n_layer,
            n_head: shape.n_head,
            n_head_kv: shape.n_kv,
            n_expert: 0,
        };
        let plan = build_plan(&mix.recipe, &info, &descs, PlanOptions::default())?;
        let types = plan
            .entries
            .iter()
            .map(|e| {
                let t = e.to.ok_or_else(|| Error::Tensor {
                    tensor: e.name.clone(),
                    msg: format!("planned type id {} unknown", e.to_id),
                })?;
                Ok((e.name.clone(), t))
            })
            .collect::<Result<_>>()?;
        Ok(SynthSource {
            shape,
            mix,
            name: name.into(),
            types,
            file_type: plan.file_type,
        })
    }

    /// `general.file_type` of the plan.
    pub fn file_type(&self) -> u32 {
        self.file_type
    }

    /// Planned type of tensor `name`.
    pub fn type_of(&self, name: &str) -> Option<GgmlType> {
        self.types.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }
}

/// A xorshift64 generator (seed: any non-zero state); also the grid benches' data
/// (src/gpu/gridstream.rs, src/gpu/gridmv.rs).
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// The high 32 bits of the next state.
    pub(super) fn word(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Random but well-formed blocks of `ty` for `n` weights: random quant bits, small positive
/// f16 scales. Float types get values in [-scale, scale].
pub fn random_blocks(ty: GgmlType, n: usize, seed: u64, scale: f32) -> Result<Vec<u8>> {
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let bytes = ty.bytes_for(n as u64).ok_or_else(|| {
        Error::msg(format!(
            "{n} weights do not fill whole {} blocks",
            ty.name()
        ))
    })? as usize;
    let mut out = vec![0u8; bytes];
    let name = ty.name();
    match name {
        "F32" => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.f() * scale).to_le_bytes());
            }
            return Ok(out);
        }
        "F16" => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(rng.f() * scale).to_le_bytes());
            }
            return Ok(out);
        }
        "BF16" => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.f() * scale).to_le_bytes());
            }
            return Ok(out);
        }
        _ => {}
    }
    for c in out.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        c.copy_from_slice(&r[..c.len()]);
    }
    // (offset of d, offset of dmin/m or none, scale of d relative to the weight range)
    let (bs, d_at, m_at, q_max): (usize, usize, Option<usize>, f32) = match name {
        "Q4_0" => (18, 0, None, 8.0),
        "Q4_1" => (20, 0, Some(2), 16.0),
        "Q5_0" => (22, 0, None, 16.0),
        "Q5_1" => (24, 0, Some(2), 32.0),
        "Q8_0" => (34, 0, None, 127.0),
        "Q2_K" => (84, 80, Some(82), 3.0 * 15.0),
        "Q3_K" => (110, 108, None, 4.0 * 32.0),
        "Q4_K" => (144, 0, Some(2), 15.0 * 63.0),
        "Q5_K" => (176, 0, Some(2), 31.0 * 63.0),
        "Q6_K" => (210, 208, None, 32.0 * 128.0),
        other => return Err(Error::msg(format!("cannot synthesize {other} weights"))),
    };
    for blk in out.chunks_exact_mut(bs) {
        let d = half::f16::from_f32(scale / q_max * (0.5 + 0.5 * rng.f().abs()));
        blk[d_at..d_at + 2].copy_from_slice(&d.to_le_bytes());
        if let Some(m) = m_at {
            let dm = half::f16::from_f32(scale / q_max * 0.5 * rng.f().abs() * q_max / 2.0);
            blk[m..m + 2].copy_from_slice(&dm.to_le_bytes());
        }
    }
    Ok(out)
}

fn dims_of(s: &Shape, name: &str) -> Option<(Vec<u64>, bool)> {
    {
        let hd = s.n_embd / s.n_head;
        let kv = hd * s.n_kv;
        if name == "token_embd.weight" || name == "output.weight" {
            return Some((vec![s.n_embd, s.n_vocab], false));
        }
        if name == "output_norm.weight" {
            return Some((vec![s.n_embd], true));
        }
        let rest = name.strip_prefix("blk.")?;
        let (l, t) = rest.split_once('.')?;
        if l.parse::<u64>().ok()? >= s.n_layer {
            return None;
        }
        Some(match t {
            "attn_norm.weight" | "ffn_norm.weight" => (vec![s.n_embd], true),
            "attn_q.weight" | "attn_output.weight" => (vec![s.n_embd, s.n_embd], false),
            "attn_k.weight" | "attn_v.weight" => (vec![s.n_embd, kv], false),
            "ffn_gate.weight" | "ffn_up.weight" => (vec![s.n_embd, s.n_ff], false),
            "ffn_down.weight" => (vec![s.n_ff, s.n_embd], false),
            _ => return None,
        })
    }
}

impl WeightSource for SynthSource {
    fn meta_u64(&self, key: &str) -> Option<u64> {
        let s = &self.shape;
        Some(match key.strip_prefix("llama.")? {
            "embedding_length" => s.n_embd,
            "block_count" => s.n_layer,
            "feed_forward_length" => s.n_ff,
            "attention.head_count" => s.n_head,
            "attention.head_count_kv" => s.n_kv,
            "context_length" => 4096,
            _ => return None,
        })
    }
    fn meta_f64(&self, key: &str) -> Option<f64> {
        match key {
            "llama.attention.layer_norm_rms_epsilon" => Some(1e-5),
            "llama.rope.freq_base" => Some(10000.0),
            _ => self.meta_u64(key).map(|v| v as f64),
        }
    }
    fn meta_str(&self, key: &str) -> Option<String> {
        (key == "general.architecture").then(|| "llama".to_string())
    }
    fn tensor(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let Some((dims, norm)) = dims_of(&self.shape, name) else {
            return Ok(None);
        };
        let n: u64 = dims.iter().product();
        let seed = name.bytes().fold(1469598103934665603u64, |h, b| {
            (h ^ b as u64).wrapping_mul(1099511628211)
        });
        let ty = self.type_of(name).ok_or_else(|| Error::Tensor {
            tensor: name.into(),
            msg: "not in the synthetic model's plan".into(),
        })?;
        let data = if norm || ty == GgmlType::F32 {
            let mut v = Vec::with_capacity(n as usize * 4);
            let mut rng = Rng(seed | 1);
            for _ in 0..n {
                v.extend_from_slice(&(1.0 + 0.1 * rng.f()).to_le_bytes());
            }
            v
        } else {
            let scale = 1.0 / (dims[0] as f32).sqrt() * 1.7;
            random_blocks(ty, n as usize, seed, scale)?
        };
        Ok(Some(TensorView {
            ty,
            dims,
            data: Cow::Owned(data),
        }))
    }
    fn tensor_list(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        self.tensor_names()
            .into_iter()
            .filter_map(|n| {
                let (dims, _) = dims_of(&self.shape, &n)?;
                let ty = self.type_of(&n)?;
                Some((n, ty, dims))
            })
            .collect()
    }
    fn label(&self) -> String {
        self.name.clone()
    }
}

impl SynthSource {
    /// Tensor names in llama.cpp's file order.
    pub fn tensor_names(&self) -> Vec<String> {
        tensor_names_of(&self.shape)
    }
}

/// Tensor names of a llama shape in llama.cpp's file order.
fn tensor_names_of(shape: &Shape) -> Vec<String> {
    {
        let mut v = vec!["token_embd.weight".to_string()];
        for l in 0..shape.n_layer {
            for t in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                v.push(format!("blk.{l}.{t}.weight"));
            }
        }
        v.push("output_norm.weight".into());
        v.push("output.weight".into());
        v
    }
}

impl SynthSource {
    /// Write this model as a GGUF file llama.cpp can load (llama architecture, a placeholder
    /// SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then filler pieces).
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        use crate::gguf::value::{Array, Value, ValueType};
        use crate::gguf::writer::{GgufWriter, TensorSpec};
        let s = &self.shape;
        let nv = s.n_vocab as usize;
        let mut tokens = Vec::with_capacity(nv);
        let mut types = Vec::with_capacity(nv);
        for i in 0..nv {
            let (t, ty) = match i {
                0 => ("<unk>".to_string(), 2),
                1 => ("<s>".to_string(), 3),
                2 => ("</s>".to_string(), 3),
                3..=258 => (format!("<0x{:02X}>", i - 3), 6),
                _ => (format!("\u{2581}t{i}"), 1),
            };
            tokens.push(Value::String(t));
            types.push(Value::I32(ty));
        }
        let scores: Vec<Value> = (0..nv).map(|i| Value::F32(-(i as f32))).collect();
        let a = |k: &str| format!("llama.{k}");
        let meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.name".into(), Value::String(self.name.clone())),
            ("general.file_type".into(), Value::U32(self.file_type)),
            (a("context_length"), Value::U32(4096)),
            (a("embedding_length"), Value::U32(s.n_embd as u32)),
            (a("block_count"), Value::U32(s.n_layer as u32)),
            (a("feed_forward_length"), Value::U32(s.n_ff as u32)),
            (
                a("rope.dimension_count"),
                Value::U32((s.n_embd / s.n_head) as u32),
            ),
            (a("attention.head_count"), Value::U32(s.n_head as u32)),
            (a("attention.head_count_kv"), Value::U32(s.n_kv as u32)),
            (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (a("rope.freq_base"), Value::F32(10000.0)),
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::new(ValueType::String, tokens)),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(Array::new(ValueType::F32, scores)),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(Array::new(ValueType::I32, types)),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ];
        let names = self.tensor_names();
        let mut specs = Vec::new();
        for n in &names {
            let t = self
                .tensor(n)?
                .ok_or_else(|| Error::msg(format!("synth tensor {n} missing")))?;
            specs.push(TensorSpec::new(n.clone(), t.dims.clone(), t.ty)?);
        }
        let mut out = crate::gguf::atomic::AtomicOutput::create(path)?;
        {
            let f = std::io::BufWriter::with_capacity(1 << 22, out.file_mut());
            let mut w = GgufWriter::new(f, 3, 32, &meta, specs)?;
            for n in &names {
                let t = self
                    .tensor(n)?
                    .ok_or_else(|| Error::msg(format!("synth tensor {n} missing")))?;
                w.write_tensor(&t.data)?;
            }
            let mut f = w.finish()?;
            std::io::Write::flush(&mut f).map_err(|e| Error::io(path, e))?;
        }
        out.commit()
    }
}
