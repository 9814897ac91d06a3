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
}

impl Arch {
    /// Parse `general.architecture`.
    pub fn from_name(s: &str) -> Option<Arch> {
        Some(match s {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
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
        }
    }
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
    /// Q and K are RMS-normalised per head (qwen3).
    pub qk_norm: bool,
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
                "{p}: unsupported architecture '{arch_name}' (supported: llama, mistral, qwen2, qwen3)"
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
            Arch::Qwen2 | Arch::Qwen3 => RopeMode::Neox,
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
            qk_norm: arch == Arch::Qwen3,
        })
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
