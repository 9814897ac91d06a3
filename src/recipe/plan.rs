//! The plan: for every tensor, its source type, target type, why, and sizes.

use std::fmt::{self, Write as _};

use super::presets::{
    allows_quantization, ftype_for_type, llama_fallback, llama_order, LlamaMix, ModelInfo, Preset,
};
use super::rules::{RuleMatch, TensorView};
use super::schema::{writable_types, Base, FallbackMode, Recipe, RuleOrigin, Target};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// What the planner needs to know about a source tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    /// Tensor name.
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// ggml type id in the source file.
    pub type_id: u32,
    /// The type, when ggufq knows the id.
    pub ty: Option<GgmlType>,
    /// Bytes in the source file.
    pub n_bytes: u64,
}

impl TensorDesc {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Source type name (`unknown(N)` for ids ggufq does not know).
    pub fn type_name(&self) -> String {
        self.ty
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| format!("unknown({})", self.type_id))
    }
}

/// Why a tensor gets its type.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// A recipe rule.
    Rule(RuleOrigin),
    /// llama.cpp's mix for this preset.
    Preset(Preset),
    /// The recipe's plain base type.
    Base,
    /// Left as it is (1-D tensor, norm, router, ...).
    Kept(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(o) => write!(f, "{o}"),
            Reason::Preset(p) => write!(f, "preset {}", p.name()),
            Reason::Base => f.write_str("base"),
            Reason::Kept(why) => write!(f, "kept ({why})"),
        }
    }
}

/// A row-width fallback that happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    /// The type asked for, which the rows cannot hold.
    pub wanted: GgmlType,
    /// llama.cpp's replacement.
    pub llama: GgmlType,
    /// The mode used.
    pub mode: FallbackMode,
    /// For `best`: each candidate's measured error (relative squared error), in order tried.
    pub measured: Vec<(GgmlType, f64)>,
}

/// One tensor of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEntry {
    /// Tensor name.
    pub name: String,
    /// Dimensions (ggml order).
    pub dims: Vec<u64>,
    /// Source type id.
    pub from_id: u32,
    /// Source type, when known.
    pub from: Option<GgmlType>,
    /// Target type id.
    pub to_id: u32,
    /// Target type, when known (always for converted tensors).
    pub to: Option<GgmlType>,
    /// Why.
    pub reason: Reason,
    /// Fallback details, if the row width forced one.
    pub fallback: Option<Fallback>,
    /// Source bytes.
    pub from_bytes: u64,
    /// Output bytes.
    pub to_bytes: u64,
}

impl PlanEntry {
    /// True when the bytes are copied unchanged.
    pub fn is_copy(&self) -> bool {
        self.from_id == self.to_id
    }
    /// True when a quantized source must be dequantized and quantized again.
    pub fn is_requantize(&self) -> bool {
        !self.is_copy() && self.from.map(|t| t.is_quantized()).unwrap_or(false)
    }
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Target type name.
    pub fn to_name(&self) -> String {
        self.to
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| format!("unknown({})", self.to_id))
    }
    /// Source type name.
    pub fn from_name(&self) -> String {
        self.from
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| format!("unknown({})", self.from_id))
    }
    /// Human-readable reason including any fallback.
    pub fn why(&self) -> String {
        match &self.fallback {
            None => self.reason.to_string(),
            Some(fb) => {
                let mut s = format!(
                    "{}; {} does not fit rows of {}",
                    self.reason,
                    fb.wanted,
                    self.dims.first().copied().unwrap_or(0)
                );
                match fb.mode {
                    FallbackMode::Llama => {
                        let _ = write!(s, " → fallback llama {}", fb.llama);
                    }
                    FallbackMode::Best => {
                        let _ = write!(s, " → fallback best (llama: {})", fb.llama);
                        for (t, e) in &fb.measured {
                            let _ = write!(s, " {t}={e:.3e}");
                        }
                    }
                }
                s
            }
        }
    }
}

/// The conversion plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Entries in source file order.
    pub entries: Vec<PlanEntry>,
    /// Warnings (rules that match nothing, fallbacks).
    pub warnings: Vec<String>,
    /// `general.file_type` to record.
    pub file_type: u32,
}

impl Plan {
    /// Total source bytes of tensor data.
    pub fn from_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.from_bytes).sum()
    }
    /// Total output bytes of tensor data.
    pub fn to_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.to_bytes).sum()
    }
    /// Total elements.
    pub fn n_elements(&self) -> u64 {
        self.entries.iter().map(|e| e.n_elements()).sum()
    }
    /// Bits per weight of the output.
    pub fn bpw(&self) -> f64 {
        let n = self.n_elements();
        if n == 0 {
            0.0
        } else {
            self.to_bytes() as f64 * 8.0 / n as f64
        }
    }
    /// Bits per weight of the source.
    pub fn from_bpw(&self) -> f64 {
        let n = self.n_elements();
        if n == 0 {
            0.0
        } else {
            self.from_bytes() as f64 * 8.0 / n as f64
        }
    }
    /// Number of tensors needing a dequantize → quantize pass.
    pub fn n_requantize(&self) -> usize {
        self.entries.iter().filter(|e| e.is_requantize()).count()
    }

    /// The plan as text: one line per tensor, then totals and warnings.
    pub fn render(&self) -> String {
        let w = self
            .entries
            .iter()
            .map(|e| crate::gguf::value::printable(&e.name).len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<w$}  {:>7} → {:<7}  {:>12}  why",
            "tensor", "from", "to", "bytes"
        );
        for e in &self.entries {
            let _ = writeln!(
                s,
                "{:<w$}  {:>7} → {:<7}  {:>12}  {}",
                crate::gguf::value::printable(&e.name),
                e.from_name(),
                e.to_name(),
                e.to_bytes,
                e.why()
            );
        }
        let _ = writeln!(
            s,
            "total: {} tensors, {} → {} bytes ({:.2} MiB → {:.2} MiB), {:.3} → {:.3} bpw",
            self.entries.len(),
            self.from_bytes(),
            self.to_bytes(),
            self.from_bytes() as f64 / 1048576.0,
            self.to_bytes() as f64 / 1048576.0,
            self.from_bpw(),
            self.bpw()
        );
        for wmsg in &self.warnings {
            let _ = writeln!(s, "warning: {wmsg}");
        }
        s
    }

    /// The plan as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let tensors: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "dims": e.dims,
                    "from": e.from_name(),
                    "to": e.to_name(),
                    "from_bytes": e.from_bytes,
                    "to_bytes": e.to_bytes,
                    "why": e.why(),
                })
            })
            .collect();
        serde_json::json!({
            "file_type": self.file_type,
            "from_bytes": self.from_bytes(),
            "to_bytes": self.to_bytes(),
            "n_elements": self.n_elements(),
            "bpw": self.bpw(),
            "tensors": tensors,
            "warnings": self.warnings,
        })
    }

    /// The plan as a llama-quantize `--tensor-type-file`: one `^name$=type` per tensor that
    /// llama-quantize would quantize (it ignores overrides for the others).
    pub fn tensor_type_file(&self) -> String {
        let mut s = String::new();
        for e in &self.entries {
            if !allows_quantization(&e.name, &e.dims) {
                continue;
            }
            let _ = writeln!(
                s,
                "^{}$={}",
                regex::escape(&e.name),
                e.to_name().to_lowercase()
            );
        }
        s
    }
}

/// Planner options.
#[derive(Default)]
pub struct PlanOptions<'a> {
    /// An importance matrix will be used (changes llama.cpp's Q4_0/Q5_0 ffn_down choice).
    pub has_imatrix: bool,
    /// For `fallback: best`: the error of quantizing a tensor to a type (lower is better).
    /// Without it, `best` behaves like `llama`.
    #[allow(clippy::type_complexity)]
    pub measure: Option<&'a mut dyn FnMut(&TensorDesc, GgmlType) -> Result<f64>>,
}

fn fit_fallback(
    t: GgmlType,
    desc: &TensorDesc,
    mode: FallbackMode,
    opts: &mut PlanOptions<'_>,
) -> Result<(GgmlType, Option<Fallback>)> {
    let row = desc.row_len();
    if row % t.block_size() == 0 {
        return Ok((t, None));
    }
    let llama = llama_fallback(t, row);
    let mut fb = Fallback {
        wanted: t,
        llama,
        mode,
        measured: Vec::new(),
    };
    let chosen = match (mode, opts.measure.as_mut()) {
        (FallbackMode::Best, Some(measure)) if llama.is_quantized() => {
            let limit = llama.bpw();
            let mut best = (llama, f64::INFINITY);
            // llama.cpp's choice first, so it wins ties.
            let mut cands = vec![llama];
            cands.extend(writable_types().iter().copied().filter(|c| {
                c.is_quantized() && *c != llama && row % c.block_size() == 0 && c.bpw() <= limit
            }));
            for c in cands {
                let e = measure(desc, c)?;
                fb.measured.push((c, e));
                if e < best.1 {
                    best = (c, e);
                }
            }
            best.0
        }
        _ => llama,
    };
    Ok((chosen, Some(fb)))
}

/// Build the plan for `tensors` (file order) of a model under `recipe`.
pub fn build_plan(
    recipe: &Recipe,
    model: &ModelInfo,
    tensors: &[TensorDesc],
    mut opts: PlanOptions<'_>,
) -> Result<Plan> {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let n_layer = if model.n_layer > 0 {
        model.n_layer
    } else {
        names
            .iter()
            .filter_map(|n| super::rules::tensor_layer(n))
            .max()
            .map(|m| m + 1)
            .unwrap_or(0)
    };
    let mut mix = match recipe.base {
        Base::Preset(p) => Some(LlamaMix::new(p, model, &names, opts.has_imatrix)),
        Base::Type(_) => None,
    };
    let mut hits = vec![0usize; recipe.rules.len()];
    let mut protected_hits = vec![0usize; recipe.rules.len()];
    let mut entries: Vec<Option<PlanEntry>> = vec![None; tensors.len()];
    let mut n_fallback = 0usize;

    for idx in llama_order(&names) {
        let desc = &tensors[idx];
        let protected = !allows_quantization(&desc.name, &desc.dims);
        let view = TensorView {
            name: &desc.name,
            protected,
        };
        let mut rule_hit = None;
        for (ri, rule) in recipe.rules.iter().enumerate() {
            match rule.spec.matches(view, n_layer) {
                RuleMatch::Yes => {
                    rule_hit = Some(ri);
                    break;
                }
                RuleMatch::Protected => protected_hits[ri] += 1,
                RuleMatch::No => {}
            }
        }
        // (target or None = keep, reason)
        let (target, reason): (Option<GgmlType>, Reason) = if let Some(ri) = rule_hit {
            hits[ri] += 1;
            let r = &recipe.rules[ri];
            let t = match r.spec.ty {
                Target::Keep => None,
                Target::Type(t) => Some(t),
            };
            (t, Reason::Rule(r.origin.clone()))
        } else if protected {
            let why = if super::presets::n_dims(&desc.dims) < 2 {
                "1-D"
            } else {
                "not quantized by llama.cpp"
            };
            (None, Reason::Kept(why.to_string()))
        } else {
            match (recipe.base, mix.as_mut()) {
                (Base::Preset(p), Some(m)) => (
                    Some(m.choose(&desc.name, desc.row_len())?),
                    Reason::Preset(p),
                ),
                (Base::Type(t), _) => (Some(t), Reason::Base),
                (Base::Preset(p), None) => (Some(p.default_type()), Reason::Preset(p)),
            }
        };
        let (to, fallback) = match target {
            Some(t) if Some(t) != desc.ty => {
                if desc.ty.is_none() {
                    return Err(Error::Tensor {
                        tensor: desc.name.clone(),
                        msg: format!(
                            "cannot convert from unknown type id {} ({})",
                            desc.type_id, reason
                        ),
                    });
                }
                if t.is_quantized() {
                    let (c, fb) = fit_fallback(t, desc, recipe.fallback, &mut opts)?;
                    (Some(c), fb)
                } else {
                    (Some(t), None)
                }
            }
            _ => (desc.ty, None),
        };
        if fallback.is_some() {
            n_fallback += 1;
        }
        let (to_id, to_bytes) = match to {
            Some(t) if Some(t) != desc.ty => {
                let b = t
                    .bytes_for(desc.n_elements())
                    .ok_or_else(|| Error::Tensor {
                        tensor: desc.name.clone(),
                        msg: format!(
                            "{} elements do not fill whole {t} blocks",
                            desc.n_elements()
                        ),
                    })?;
                (t.id(), b)
            }
            _ => (desc.type_id, desc.n_bytes),
        };
        entries[idx] = Some(PlanEntry {
            name: desc.name.clone(),
            dims: desc.dims.clone(),
            from_id: desc.type_id,
            from: desc.ty,
            to_id,
            to: if to_id == desc.type_id { desc.ty } else { to },
            reason,
            fallback,
            from_bytes: desc.n_bytes,
            to_bytes,
        });
    }

    let mut warnings = Vec::new();
    for (ri, rule) in recipe.rules.iter().enumerate() {
        if hits[ri] == 0 {
            if protected_hits[ri] > 0 {
                warnings.push(format!(
                    "{} matches only {} tensor(s) that are normally kept (1-D, norms); add `force: true` to change them",
                    rule.origin, protected_hits[ri]
                ));
            } else {
                warnings.push(format!("{} matches no tensor", rule.origin));
            }
        }
    }
    if n_fallback > 0 {
        warnings.push(format!(
            "{n_fallback} of {} tensor(s) needed a row-width fallback",
            tensors.len()
        ));
    }
    let file_type = match recipe.base {
        Base::Preset(p) => p.ftype(),
        Base::Type(t) => ftype_for_type(t),
    };
    Ok(Plan {
        entries: entries.into_iter().flatten().collect(),
        warnings,
        file_type,
    })
}
