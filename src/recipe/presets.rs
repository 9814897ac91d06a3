//! llama.cpp's quantization mixes (`llama-quantize IN OUT Q4_K_M`), re-implemented.
//!
//! This follows the decision logic of `llama_tensor_get_type` in llama.cpp's
//! `src/llama-quant.cpp` (as vendored by llama-cpp-python 0.3.36) for the file types ggufq
//! writes: which tensors are quantized at all, the tensor categories, the `use_more_bits`
//! layers, the `n_gqa` / `n_expert` / 70B adjustments, the output / tied token-embedding rules,
//! the attn_v / ffn_down counters, and the row-width fallback table. Tensors must be visited in
//! llama.cpp's order ([`llama_order`]) because the counters depend on it.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A llama.cpp file type (`LLAMA_FTYPE_MOSTLY_*`) that ggufq reproduces.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// All F32.
    F32,
    /// F16 except 1-D tensors.
    F16,
    /// BF16 except 1-D tensors.
    BF16,
    /// Q4_0 mix.
    Q4_0,
    /// Q4_1 mix.
    Q4_1,
    /// Q5_0 mix.
    Q5_0,
    /// Q5_1 mix.
    Q5_1,
    /// Q8_0 mix.
    Q8_0,
    /// Q2_K mix.
    Q2_K,
    /// Q3_K small.
    Q3_K_S,
    /// Q3_K medium.
    Q3_K_M,
    /// Q3_K large.
    Q3_K_L,
    /// Q4_K small.
    Q4_K_S,
    /// Q4_K medium.
    Q4_K_M,
    /// Q5_K small.
    Q5_K_S,
    /// Q5_K medium.
    Q5_K_M,
    /// Q6_K mix.
    Q6_K,
}

const PRESETS: &[(Preset, &str, u32, GgmlType)] = &[
    (Preset::F32, "F32", 0, GgmlType::F32),
    (Preset::F16, "F16", 1, GgmlType::F16),
    (Preset::Q4_0, "Q4_0", 2, GgmlType::Q4_0),
    (Preset::Q4_1, "Q4_1", 3, GgmlType::Q4_1),
    (Preset::Q8_0, "Q8_0", 7, GgmlType::Q8_0),
    (Preset::Q5_0, "Q5_0", 8, GgmlType::Q5_0),
    (Preset::Q5_1, "Q5_1", 9, GgmlType::Q5_1),
    (Preset::Q2_K, "Q2_K", 10, GgmlType::Q2_K),
    (Preset::Q3_K_S, "Q3_K_S", 11, GgmlType::Q3_K),
    (Preset::Q3_K_M, "Q3_K_M", 12, GgmlType::Q3_K),
    (Preset::Q3_K_L, "Q3_K_L", 13, GgmlType::Q3_K),
    (Preset::Q4_K_S, "Q4_K_S", 14, GgmlType::Q4_K),
    (Preset::Q4_K_M, "Q4_K_M", 15, GgmlType::Q4_K),
    (Preset::Q5_K_S, "Q5_K_S", 16, GgmlType::Q5_K),
    (Preset::Q5_K_M, "Q5_K_M", 17, GgmlType::Q5_K),
    (Preset::Q6_K, "Q6_K", 18, GgmlType::Q6_K),
    (Preset::BF16, "BF16", 32, GgmlType::BF16),
];

impl Preset {
    fn row(self) -> &'static (Preset, &'static str, u32, GgmlType) {
        // Every variant is in PRESETS; the fallback keeps this total without a panic path.
        PRESETS.iter().find(|r| r.0 == self).unwrap_or(&PRESETS[0])
    }
    /// All presets.
    pub fn all() -> Vec<Preset> {
        PRESETS.iter().map(|r| r.0).collect()
    }
    /// The llama-quantize name (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        self.row().1
    }
    /// Case-insensitive lookup by name.
    pub fn from_name(s: &str) -> Option<Preset> {
        PRESETS
            .iter()
            .find(|r| r.1.eq_ignore_ascii_case(s.trim()))
            .map(|r| r.0)
    }
    /// The `general.file_type` value (llama_ftype).
    pub fn ftype(self) -> u32 {
        self.row().2
    }
    /// The default tensor type of the mix.
    pub fn default_type(self) -> GgmlType {
        self.row().3
    }
}

/// The `general.file_type` llama.cpp would record for a pure mix of `t`.
pub fn ftype_for_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 12,
        GgmlType::Q4_K => 15,
        GgmlType::Q5_K => 17,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// llama.cpp's broad tensor categories (used by the mix logic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// token_embd / per_layer_token_embd.
    TokenEmbd,
    /// attn_q.
    AttnQ,
    /// attn_v.
    AttnV,
    /// attn_k.
    AttnK,
    /// fused attn_qkv.
    AttnQkv,
    /// attn_kv_b.
    AttnKvB,
    /// attn_output.
    AttnOutput,
    /// ffn_up*.
    FfnUp,
    /// ffn_gate* (including the router, which is never quantized).
    FfnGate,
    /// ffn_down*.
    FfnDown,
    /// output.weight.
    Output,
    /// Anything else.
    Other,
}

/// Category of a tensor name, in llama.cpp's order of tests: the recipe's tensor kind
/// ([`super::rules::tensor_kind`], the same name tests) folded onto llama.cpp's categories
/// (the MoE router `ffn_gate_inp` counts as `ffn_gate`, norms as "other").
pub fn category(name: &str) -> Category {
    use super::schema::TensorKind as K;
    match super::rules::tensor_kind(name) {
        K::TokenEmbd => Category::TokenEmbd,
        K::Output => Category::Output,
        K::AttnQ => Category::AttnQ,
        K::AttnK => Category::AttnK,
        K::AttnV => Category::AttnV,
        K::AttnQkv => Category::AttnQkv,
        K::AttnKvB => Category::AttnKvB,
        K::AttnOutput => Category::AttnOutput,
        K::FfnGate | K::FfnGateInp => Category::FfnGate,
        K::FfnUp => Category::FfnUp,
        K::FfnDown => Category::FfnDown,
        K::Norm | K::Other | K::Attn | K::Ffn => Category::Other,
    }
}

fn is_attn_v_like(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// Number of dimensions as ggml counts them (trailing 1s do not count; at least 1).
pub fn n_dims(dims: &[u64]) -> usize {
    dims.iter()
        .rposition(|&d| d > 1)
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// Whether llama.cpp would quantize this tensor at all (otherwise it is copied as is).
/// Covers the generic name rules; architecture-specific exclusions beyond position / token-type
/// embeddings are not modelled.
pub fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    if n_dims(dims) < 2 {
        return false;
    }
    if !name.ends_with("weight") {
        return false;
    }
    const EXCLUDED: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    if EXCLUDED.iter().any(|p| name.contains(p)) {
        return false;
    }
    name != "position_embd.weight" && name != "token_types.weight"
}

/// Indices of `names` in the order llama-quantize visits them: by layer number (`blk.N.`,
/// non-layer tensors first), then by name.
pub fn llama_order(names: &[&str]) -> Vec<usize> {
    let key = |n: &str| -> i64 { tensor_layer_scanf(n).unwrap_or(-1) };
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| {
        let (la, lb) = (key(names[a]), key(names[b]));
        match la.cmp(&lb) {
            Ordering::Equal => names[a].cmp(names[b]),
            o => o,
        }
    });
    idx
}

/// `sscanf(name, "blk.%d.")` semantics: `None` when the name does not start with `blk.<int>`.
fn tensor_layer_scanf(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start();
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1i64, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    if end == 0 {
        return None;
    }
    digits[..end].parse::<i64>().ok().map(|v| sign * v)
}

/// llama.cpp's row-width fallback: the type to use when `row_len` is not a multiple of `t`'s
/// block. Returns `t` when it fits.
pub fn llama_fallback(t: GgmlType, row_len: u64) -> GgmlType {
    if row_len % t.block_size() == 0 {
        return t;
    }
    use GgmlType::*;
    let ret = match t {
        IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS => IQ4_NL,
        Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        other => other,
    };
    if row_len % ret.block_size() != 0 {
        F16
    } else {
        ret
    }
}

/// Model facts the mix logic needs (from GGUF metadata).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: u64,
    /// `{arch}.attention.head_count` (layer 0).
    pub n_head: u64,
    /// `{arch}.attention.head_count_kv` (layer 0; defaults to n_head).
    pub n_head_kv: u64,
    /// `{arch}.expert_count` (0 when absent).
    pub n_expert: u64,
}

impl ModelInfo {
    /// Heads per KV head (0 when n_head_kv is 0).
    pub fn n_gqa(&self) -> u64 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }
    /// llama.cpp's LLM_TYPE_70B for llama-architecture models.
    fn is_70b(&self) -> bool {
        self.arch == "llama"
            && self.n_expert != 8
            && self.n_layer == 80
            && self.n_head != self.n_head_kv
    }
}

fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// The stateful chooser for one preset over one model (the llama-quantize counters).
#[derive(Clone, Debug)]
pub struct LlamaMix {
    preset: Preset,
    model: ModelInfo,
    has_imatrix: bool,
    has_tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_layers: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

impl LlamaMix {
    /// Start a mix; `names` are all tensor names of the model.
    pub fn new(preset: Preset, model: &ModelInfo, names: &[&str], has_imatrix: bool) -> LlamaMix {
        let n_attention_wv = names.iter().filter(|n| is_attn_v_like(category(n))).count() as i64;
        let has_tied_embeddings = !names.iter().any(|n| category(n) == Category::Output);
        LlamaMix {
            preset,
            model: model.clone(),
            has_imatrix,
            has_tied_embeddings,
            n_attention_wv,
            i_attention_wv: 0,
            n_layers: model.n_layer as i64,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
        }
    }

    /// The preset.
    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// True when the model has no `output.weight` (token_embd doubles as output).
    pub fn tied_embeddings(&self) -> bool {
        self.has_tied_embeddings
    }

    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64)> {
        if self.model.n_expert > 1 {
            let Some(l) = tensor_layer_scanf(name) else {
                return Err(Error::Tensor {
                    tensor: name.to_string(),
                    msg: "failed to determine the layer of this expert tensor".into(),
                });
            };
            if l < 0 || l >= self.n_layers {
                return Err(Error::Tensor {
                    tensor: name.to_string(),
                    msg: format!("bad layer {l}; must be in [0, {})", self.n_layers),
                });
            }
            return Ok((l, self.n_layers));
        }
        Ok((counter, self.n_layers))
    }

    /// The type llama.cpp picks for a quantizable tensor (before the row-width fallback).
    /// Call in [`llama_order`], once per quantizable tensor that no rule claimed.
    pub fn choose(&mut self, name: &str, row_len: u64) -> Result<GgmlType> {
        use GgmlType as T;
        use Preset as P;
        let ftype = self.preset;
        let mut new_type = ftype.default_type();
        if !new_type.is_quantized() {
            return Ok(new_type);
        }
        let cat = category(name);
        let m = &self.model;
        let falcon = m.is_falcon();
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            if falcon || row_len % new_type.block_size() != 0 {
                new_type = T::Q8_0;
            } else if new_type != T::Q8_0 {
                new_type = T::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            // No change for the file types ggufq reproduces.
        } else if is_attn_v_like(cat) {
            let (i, n) = (self.i_attention_wv, self.n_attention_wv);
            match ftype {
                P::Q2_K => new_type = if m.n_gqa() >= 4 { T::Q4_K } else { T::Q3_K },
                P::Q3_K_M => new_type = if i < 2 { T::Q5_K } else { T::Q4_K },
                P::Q3_K_L => new_type = T::Q5_K,
                P::Q4_K_M | P::Q5_K_M if use_more_bits(i, n) => new_type = T::Q6_K,
                P::Q4_K_S if i < 4 => new_type = T::Q5_K,
                _ => {}
            }
            if m.is_70b() && (new_type == T::Q3_K || new_type == T::Q4_K) {
                new_type = T::Q5_K;
            }
            if m.n_expert == 8 {
                new_type = T::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if m.n_expert == 8 {
                new_type = T::Q8_0;
            }
        } else if cat == Category::AttnQ {
            // No change for these file types.
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer_info(self.i_ffn_down, name)?;
            match ftype {
                P::Q2_K => new_type = T::Q3_K,
                P::Q3_K_M => {
                    new_type = if i < n / 16 {
                        T::Q5_K
                    } else if !falcon || use_more_bits(i, n) {
                        T::Q4_K
                    } else {
                        T::Q3_K
                    }
                }
                P::Q3_K_L => new_type = if falcon { T::Q4_K } else { T::Q5_K },
                P::Q4_K_M => {
                    if falcon {
                        new_type = if i < n / 16 {
                            T::Q6_K
                        } else if use_more_bits(i, n) {
                            T::Q5_K
                        } else {
                            T::Q4_K
                        };
                    } else if use_more_bits(i, n) {
                        new_type = T::Q6_K;
                    }
                }
                P::Q5_K_M if use_more_bits(i, n) => new_type = T::Q6_K,
                P::Q4_K_S if !falcon && i < n / 8 => new_type = T::Q5_K,
                P::Q4_0 | P::Q5_0 if self.has_imatrix && i < n / 8 => {
                    new_type = if ftype == P::Q4_0 { T::Q4_1 } else { T::Q5_1 };
                }
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !falcon {
                if m.n_expert == 8 {
                    if matches!(
                        ftype,
                        P::Q2_K | P::Q3_K_S | P::Q3_K_M | P::Q4_K_S | P::Q4_K_M
                    ) {
                        new_type = T::Q5_K;
                    }
                } else {
                    match ftype {
                        P::Q2_K => new_type = T::Q3_K,
                        P::Q3_K_M => new_type = T::Q4_K,
                        P::Q3_K_L => new_type = T::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == P::Q3_K_L {
                new_type = T::Q4_K;
            }
        } else if cat == Category::FfnGate {
            self.layer_info(self.i_ffn_gate, name)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer_info(self.i_ffn_up, name)?;
            self.i_ffn_up += 1;
        }
        Ok(new_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_of_32() {
        let l: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            l,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn categories_follow_llama_cpp_name_tests() {
        use Category::*;
        for (name, want) in [
            ("output.weight", Output),
            ("token_embd.weight", TokenEmbd),
            ("per_layer_token_embd.weight", TokenEmbd),
            ("blk.3.attn_q.weight", AttnQ),
            ("blk.3.attn_k.weight", AttnK),
            ("blk.3.attn_v.weight", AttnV),
            ("blk.3.attn_qkv.weight", AttnQkv),
            ("blk.3.attn_kv_b.weight", AttnKvB),
            ("blk.3.attn_output.weight", AttnOutput),
            ("blk.3.ffn_gate_inp.weight", FfnGate),
            ("blk.3.ffn_gate_exps.weight", FfnGate),
            ("blk.3.ffn_up.weight", FfnUp),
            ("blk.3.ffn_down_exps.weight", FfnDown),
            ("blk.3.attn_q_norm.weight", Other),
            ("blk.3.attn_norm.weight", Other),
            ("rope_freqs.weight", Other),
        ] {
            assert_eq!(category(name), want, "{name}");
        }
    }

    #[test]
    fn order_is_numeric_by_layer() {
        let names = [
            "blk.10.a",
            "output.weight",
            "blk.2.b",
            "blk.2.a",
            "token_embd.weight",
        ];
        let o: Vec<&str> = llama_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            o,
            vec![
                "output.weight",
                "token_embd.weight",
                "blk.2.a",
                "blk.2.b",
                "blk.10.a"
            ]
        );
    }

    #[test]
    fn fallback_table() {
        assert_eq!(llama_fallback(GgmlType::Q2_K, 576), GgmlType::Q4_0);
        assert_eq!(llama_fallback(GgmlType::Q3_K, 576), GgmlType::Q4_0);
        assert_eq!(llama_fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(llama_fallback(GgmlType::Q5_K, 576), GgmlType::Q5_1);
        assert_eq!(llama_fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(llama_fallback(GgmlType::Q6_K, 4096), GgmlType::Q6_K);
        assert_eq!(llama_fallback(GgmlType::Q4_K, 100), GgmlType::F16);
        assert_eq!(llama_fallback(GgmlType::Q8_0, 100), GgmlType::F16);
    }

    #[test]
    fn n_dims_ignores_trailing_ones() {
        assert_eq!(n_dims(&[576, 1]), 1);
        assert_eq!(n_dims(&[576, 3]), 2);
        assert_eq!(n_dims(&[]), 1);
        assert!(!allows_quantization("blk.0.attn_q.weight", &[576, 1]));
        assert!(!allows_quantization("blk.0.attn_norm.weight", &[576, 576]));
        assert!(allows_quantization("blk.0.attn_q.weight", &[576, 576]));
        assert!(!allows_quantization("blk.0.attn_q.bias", &[576, 576]));
    }
}
