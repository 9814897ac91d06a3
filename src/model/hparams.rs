//! Hyper-parameters of a llama-family model, read from GGUF metadata.

use crate::error::{Error, Result};
use crate::model::file::ModelFile;

/// A supported model architecture (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (Llama 1/2/3, SmolLM, TinyLlama, most Mistral GGUFs).
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2` (attention biases on Q/K/V).
    Qwen2,
    /// `qwen3` (RMS norm on Q and K heads).
    Qwen3,
    /// `gemma3` (scaled embeddings, Q/K norms, post-attention and post-FFN norms, GELU-gated
    /// FFN, sliding-window attention on local layers).
    Gemma3,
}

impl Arch {
    /// Parse `general.architecture`.
    pub fn from_name(s: &str) -> Option<Arch> {
        Some(match s {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }
    /// The metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// The FFN's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnAct {
    /// `silu(gate) * up` (SwiGLU: llama, mistral, qwen).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU: gemma), with ggml's f16 GELU table.
    GeluTanh,
}

/// Sliding-window attention (gemma3's local layers).
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Window length `n_swa`: a query at position `p` sees keys at `p0` with `p - p0 < n_swa`.
    pub window: usize,
    /// Per layer: whether it is a local (sliding-window) layer.
    pub layers: Vec<bool>,
    /// RoPE base frequency of the local layers (`rope.freq_base_swa`, default 10000).
    pub rope_freq_base: f32,
    /// RoPE frequency scale of the local layers (always 1, as llama.cpp).
    pub rope_freq_scale: f32,
}

/// How RoPE pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (x[2i], x[2i+1]) — llama.cpp's "normal" mode (llama, mistral).
    Normal,
    /// Halves (x[i], x[i + d/2]) — GPT-NeoX mode (qwen2, qwen3).
    Neox,
}

/// Hyper-parameters of a llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    /// Architecture.
    pub arch: Arch,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Embedding width.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA when smaller than `n_head`).
    pub n_head_kv: usize,
    /// Width of one attention head (`attention.key_length`, default `n_embd / n_head`).
    pub head_dim: usize,
    /// FFN hidden width.
    pub n_ff: usize,
    /// Vocabulary size (rows of the token embedding).
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RoPE base frequency.
    pub rope_freq_base: f32,
    /// RoPE frequency scale (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    /// Number of rotated dimensions per head.
    pub rope_dim: usize,
    /// RoPE pairing.
    pub rope_mode: RopeMode,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// The output projection reuses `token_embd.weight` (no `output.weight` tensor).
    pub tied_embeddings: bool,
    /// Q and K are RMS-normalised per head (qwen3, gemma3).
    pub qk_norm: bool,
    /// Multiplier of the token embeddings (`sqrt(n_embd)` for gemma3, else 1).
    pub embd_scale: f32,
    /// Attention scale: scores are `q·k · attn_scale` (`1/sqrt(head_dim)` for llama; gemma3
    /// multiplies Q by it before the f16 KV product, as llama.cpp's graph does).
    pub attn_scale: f32,
    /// RMS norms on the attention output and the FFN output before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`: gemma3).
    pub post_norms: bool,
    /// FFN gate activation.
    pub ffn_act: FfnAct,
    /// Sliding-window attention, if any layer uses it.
    pub swa: Option<SlidingWindow>,
    /// `final_logit_softcapping`: logits become `c · tanh(logits / c)` (None = off).
    pub logit_softcap: Option<f32>,
}

impl HParams {
    /// Read hyper-parameters; errors name the missing key or the unsupported architecture.
    pub fn from_file(f: &ModelFile) -> Result<HParams> {
        let p = f.path().display().to_string();
        let arch_name = f.get_str("general.architecture").ok_or_else(|| {
            Error::msg(format!("{p}: missing metadata key 'general.architecture'"))
        })?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| {
            Error::msg(format!(
                "{p}: unsupported architecture '{arch_name}' (supported: llama, mistral, qwen2, qwen3, gemma3)"
            ))
        })?;
        let a = arch.name();
        let req = |k: &str| -> Result<usize> {
            let key = format!("{a}.{k}");
            f.get_u64(&key).map(|v| v as usize).ok_or_else(|| {
                Error::msg(format!("{p}: missing or non-integer metadata key '{key}'"))
            })
        };
        let n_layer = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_ff = req("feed_forward_length")?;
        let n_head_kv = f
            .get_u64(&format!("{a}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(Error::msg(format!(
                "{p}: head_count {n_head} is not a positive multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = f
            .get_u64(&format!("{a}.attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(n_embd / n_head);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::msg(format!(
                "{p}: head dimension {head_dim} must be even and positive"
            )));
        }
        if let Some(vl) = f.get_u64(&format!("{a}.attention.value_length")) {
            if vl as usize != head_dim {
                return Err(Error::msg(format!(
                    "{p}: attention.value_length {vl} differs from key_length {head_dim} (unsupported)"
                )));
            }
        }
        let rope_dim = f
            .get_u64(&format!("{a}.rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(Error::msg(format!(
                "{p}: rope.dimension_count {rope_dim} invalid for head dim {head_dim}"
            )));
        }
        let rms_eps = f
            .get_f64(&format!("{a}.attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| {
                Error::msg(format!(
                    "{p}: missing metadata key '{a}.attention.layer_norm_rms_epsilon'"
                ))
            })? as f32;
        let rope_freq_base = f.get_f64(&format!("{a}.rope.freq_base")).unwrap_or(10000.0) as f32;
        let mut rope_freq_scale = 1.0f32;
        match f.get_str(&format!("{a}.rope.scaling.type")) {
            None | Some("none") => {}
            Some("linear") => {
                let fac = f
                    .get_f64(&format!("{a}.rope.scaling.factor"))
                    .unwrap_or(1.0) as f32;
                if fac > 0.0 {
                    rope_freq_scale = 1.0 / fac;
                }
            }
            Some(other) => {
                return Err(Error::msg(format!(
                    "{p}: unsupported '{a}.rope.scaling.type' = '{other}' (supported: none, linear)"
                )))
            }
        }
        if let Some(lin) = f.get_f64(&format!("{a}.rope.scale_linear")) {
            if lin > 0.0 {
                rope_freq_scale = 1.0 / lin as f32;
            }
        }
        let emb = f
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::msg(format!("{p}: missing tensor 'token_embd.weight'")))?;
        if emb.dims.len() != 2 || emb.row_len() != n_embd {
            return Err(Error::Tensor {
                tensor: "token_embd.weight".into(),
                msg: format!("dims {:?} do not match embedding_length {n_embd}", emb.dims),
            });
        }
        let n_vocab = emb.n_rows();
        let n_ctx_train = f
            .get_u64(&format!("{a}.context_length"))
            .map(|v| v as usize)
            .unwrap_or(4096);
        let tied_embeddings = f.tensor("output.weight").is_none();
        let rope_mode = match arch {
            Arch::Llama | Arch::Mistral => RopeMode::Normal,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeMode::Neox,
        };
        let gemma = arch == Arch::Gemma3;
        // llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B (62 layers): 1/sqrt(n_embd/n_head).
        let attn_scale = if gemma && n_layer == 62 {
            1.0 / ((n_embd / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        let swa = if gemma {
            sliding_window(f, a, n_layer, &p)?
        } else {
            None
        };
        let logit_softcap = if gemma {
            f.get_f64(&format!("{a}.final_logit_softcapping"))
                .map(|v| v as f32)
                .filter(|&v| v != 0.0)
        } else {
            None
        };
        Ok(HParams {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            n_ctx_train,
            rope_freq_base,
            rope_freq_scale,
            rope_dim,
            rope_mode,
            rms_eps,
            tied_embeddings,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            embd_scale: if gemma { (n_embd as f32).sqrt() } else { 1.0 },
            attn_scale,
            post_norms: gemma,
            ffn_act: if gemma {
                FfnAct::GeluTanh
            } else {
                FfnAct::Silu
            },
            swa,
            logit_softcap,
        })
    }

    /// Whether layer `il` uses sliding-window attention.
    pub fn is_swa(&self, il: usize) -> bool {
        self.swa
            .as_ref()
            .is_some_and(|s| s.layers.get(il).copied().unwrap_or(false))
    }

    /// RoPE (base, scale) of layer `il`: the local values on sliding-window layers.
    pub fn rope_for_layer(&self, il: usize) -> (f32, f32) {
        match &self.swa {
            Some(s) if self.is_swa(il) => (s.rope_freq_base, s.rope_freq_scale),
            _ => (self.rope_freq_base, self.rope_freq_scale),
        }
    }

    /// Width of the query projection output (`n_head * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of the key/value projection outputs (`n_head_kv * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// gemma3's sliding-window layout, as llama.cpp reads it: `attention.sliding_window` (0 or
/// absent = none); `attention.sliding_window_pattern` either a per-layer bool array or a
/// period `n` (default 6) where every `n`-th layer (`il % n == n - 1`) is global.
fn sliding_window(
    f: &ModelFile,
    a: &str,
    n_layer: usize,
    p: &str,
) -> Result<Option<SlidingWindow>> {
    let window = match f.get_u64(&format!("{a}.attention.sliding_window")) {
        None | Some(0) => return Ok(None),
        Some(w) => w as usize,
    };
    let key = format!("{a}.attention.sliding_window_pattern");
    let layers = if let Some(arr) = f.get_i64_array(&key) {
        if arr.len() < n_layer {
            return Err(Error::msg(format!(
                "{p}: '{key}' has {} entries for {n_layer} layers",
                arr.len()
            )));
        }
        arr.iter().take(n_layer).map(|&v| v != 0).collect()
    } else if let Some(bools) = f.get_bool_array(&key) {
        if bools.len() < n_layer {
            return Err(Error::msg(format!(
                "{p}: '{key}' has {} entries for {n_layer} layers",
                bools.len()
            )));
        }
        bools.into_iter().take(n_layer).collect()
    } else {
        let n = f.get_u64(&key).unwrap_or(6) as usize;
        (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()
    };
    let rope_freq_base = f
        .get_f64(&format!("{a}.rope.freq_base_swa"))
        .unwrap_or(10000.0) as f32;
    Ok(Some(SlidingWindow {
        window,
        layers,
        rope_freq_base,
        rope_freq_scale: 1.0,
    }))
}
