//! What the architectures other than llama add to the GPU graph (mistral needs nothing):
//!
//! | arch | extra steps per layer |
//! | --- | --- |
//! | qwen2 | `qk_prep`: Q/K/V biases, NeoX RoPE |
//! | qwen3 | `qk_prep`: per-head RMSNorm of Q and K, NeoX RoPE |
//! | gemma3 | `qk_prep` (per-head norms, NeoX RoPE with the layer's base, Q × scale), `post_norm` after `wo` and `down`, `geglu` after `gate_up`; embeddings × √n_embd, sliding-window attention on local layers, optional logit soft-capping |
//!
//! The hyper-parameters come from [`crate::model::HParams`] (the CPU backend's reading of the
//! same metadata), so both backends run the same graph; llama's own step list is unchanged
//! (no step of this module is recorded for it).

use crate::error::{Error, Result};
use crate::model::hparams::{Arch, FfnAct, HParams, RopeMode};

use super::model::LlamaConfig;
use super::reference::dequantize;
use super::source::WeightSource;

const QK_PREP_WGSL: &str = include_str!("../../shaders/qk_prep.wgsl");
const GEGLU_WGSL: &str = include_str!("../../shaders/geglu.wgsl");

/// An architecture-specific kernel ([`super::kernels::KernelKey::Arch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchOp {
    /// Bias, per-head RMSNorm, RoPE and Q scale of the QKV rows (`shaders/qk_prep.wgsl`).
    QkPrep,
    /// `x += RMSNorm(y) · w` (`shaders/rmsnorm.wgsl` adding to its output,
    /// [`super::kernels::rmsnorm_add_source`]): gemma3's post-attention and post-FFN norms.
    NormAdd,
    /// GELU(tanh)-gated activation of the gate/up rows (`shaders/geglu.wgsl`); `split`: gate
    /// and up are two matrices (gate in the upper half of each row) instead of interleaved.
    Geglu {
        /// Gate and up rows in halves rather than interleaved.
        split: bool,
    },
}

/// WGSL of an [`ArchOp`] kernel.
pub fn source(op: ArchOp) -> Result<String> {
    Ok(match op {
        ArchOp::QkPrep => QK_PREP_WGSL.to_string(),
        ArchOp::NormAdd => super::kernels::rmsnorm_add_source()?,
        ArchOp::Geglu { split } => {
            GEGLU_WGSL.replace("$SPLIT", if split { "true" } else { "false" })
        }
    })
}

/// The parts of an architecture's graph that llama's lacks.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ArchOps {
    /// RoPE rotates (x[i], x[i + n_rot/2]) (NeoX: qwen2, qwen3, gemma3) instead of adjacent
    /// pairs.
    pub neox: bool,
    /// Q and K heads are RMS-normalised (`attn_q_norm`, `attn_k_norm`: qwen3, gemma3).
    pub qk_norm: bool,
    /// Q/K/V projections have biases (`attn_q.bias` ...: qwen2).
    pub bias: bool,
    /// Q is multiplied by this before attention (gemma3: 1/√head_dim; 1 elsewhere).
    pub q_scale: f32,
    /// Token embeddings are multiplied by this (gemma3: √n_embd).
    pub embd_scale: f32,
    /// RMSNorm of the attention and FFN outputs before each residual add (gemma3).
    pub post_norms: bool,
    /// GELU(tanh)-gated FFN instead of SwiGLU (gemma3).
    pub gelu: bool,
    /// Sliding window of the local layers (positions), 0 = none.
    pub window: usize,
    /// Per layer: a local (sliding-window) layer.
    pub swa_layers: Vec<bool>,
    /// RoPE base of the local layers.
    pub swa_rope_base: f32,
    /// `final_logit_softcapping`: logits become c·tanh(logits / c).
    pub logit_softcap: Option<f32>,
}

impl ArchOps {
    /// llama's graph: nothing added.
    pub fn llama() -> ArchOps {
        ArchOps {
            neox: false,
            qk_norm: false,
            bias: false,
            q_scale: 1.0,
            embd_scale: 1.0,
            post_norms: false,
            gelu: false,
            window: 0,
            swa_layers: Vec::new(),
            swa_rope_base: 10000.0,
            logit_softcap: None,
        }
    }

    /// Whether Q/K/V go through the `qk_prep` step (which then does all of RoPE: the RoPE
    /// and attention kernels run with `n_rot = 0`).
    pub fn prep(&self) -> bool {
        self.neox || self.qk_norm || self.bias || self.q_scale != 1.0
    }

    /// Sliding window of layer `l` (0: the layer attends to every earlier position).
    pub fn window_of(&self, l: usize) -> u32 {
        if self.window > 0 && self.swa_layers.get(l).copied().unwrap_or(false) {
            self.window as u32
        } else {
            0
        }
    }

    /// Whether layer `l` uses the local RoPE table.
    pub fn local_rope(&self, l: usize) -> bool {
        self.window_of(l) > 0
    }

    /// `c·tanh(v / c)` on every logit, as the CPU backend applies `final_logit_softcapping`.
    pub fn apply_softcap(&self, logits: &mut [f32]) {
        if let Some(c) = self.logit_softcap {
            crate::model::cpu::softcap(logits, c);
        }
    }
}

/// Whether any tensor of `src` is an attention bias (`blk.N.attn_{q,k,v}.bias`).
fn has_qkv_bias(src: &dyn WeightSource) -> bool {
    src.tensor_list().iter().any(|(n, _, _)| {
        n.ends_with(".attn_q.bias") || n.ends_with(".attn_k.bias") || n.ends_with(".attn_v.bias")
    })
}

impl LlamaConfig {
    /// The GPU configuration of a model whose hyper-parameters the runtime has read
    /// ([`HParams::from_file`]). Errors name the source and the metadata key of what the
    /// GPU engine cannot run.
    pub fn from_hparams(hp: &HParams, src: &dyn WeightSource) -> Result<LlamaConfig> {
        let p = src.label();
        let a = hp.arch.name();
        let hd = hp.head_dim;
        if hd % 4 != 0 || hd > 256 {
            return Err(Error::msg(format!(
                "{p}: '{a}.attention.key_length' = {hd}: head size unsupported by the GPU engine (a multiple of 4, at most 256)"
            )));
        }
        if hp.qk_norm && hd > 256 {
            return Err(Error::msg(format!(
                "{p}: '{a}.attention.key_length' = {hd}: per-head norms need at most 256"
            )));
        }
        let gemma = hp.arch == Arch::Gemma3;
        let (q_scale, kq_scale) = if gemma {
            (hp.attn_scale, 1.0)
        } else {
            (1.0, hp.attn_scale)
        };
        let ops = ArchOps {
            neox: hp.rope_mode == RopeMode::Neox,
            qk_norm: hp.qk_norm,
            bias: has_qkv_bias(src),
            q_scale,
            embd_scale: hp.embd_scale,
            post_norms: hp.post_norms,
            gelu: hp.ffn_act == FfnAct::GeluTanh,
            window: hp.swa.as_ref().map_or(0, |s| s.window),
            swa_layers: hp.swa.as_ref().map_or(Vec::new(), |s| s.layers.clone()),
            swa_rope_base: hp.swa.as_ref().map_or(10000.0, |s| s.rope_freq_base),
            logit_softcap: hp.logit_softcap,
        };
        if let Some(s) = &hp.swa {
            if s.rope_freq_scale != 1.0 {
                return Err(Error::msg(format!(
                    "{p}: sliding-window RoPE scale {} unsupported by the GPU engine",
                    s.rope_freq_scale
                )));
            }
        }
        Ok(LlamaConfig {
            arch: a.to_string(),
            n_embd: hp.n_embd,
            n_layer: hp.n_layer,
            n_ff: hp.n_ff,
            n_head: hp.n_head,
            n_kv: hp.n_head_kv,
            head_dim: hd,
            n_rot: hp.rope_dim,
            n_vocab: hp.n_vocab,
            eps: hp.rms_eps,
            rope_base: hp.rope_freq_base as f64,
            rope_scale: hp.rope_freq_scale,
            kq_scale,
            n_ctx_train: hp.n_ctx_train,
            ops,
        })
    }

    /// Width of the query projection and of the attention output (`n_head · head_dim`; not
    /// `n_embd` for gemma3).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// The rotated dimensions the RoPE and attention kernels apply themselves: none when
    /// the `qk_prep` step has rotated Q and K already.
    pub fn kernel_rot(&self) -> usize {
        if self.ops.prep() {
            0
        } else {
            self.n_rot
        }
    }
}

/// The RoPE cos/sin table of positions `0..n_ctx` for `n_rot` rotated dimensions, flat
/// (cos, sin, cos, …): the CPU backend's [`rope_cos_sin`](crate::model::cpu::rope_cos_sin)
/// angles (ggml_rope_ext's), times `scale`, divided by the optional frequency factors.
pub fn rope_table(
    n_ctx: usize,
    n_rot: usize,
    base: f32,
    scale: f32,
    factors: Option<&[f32]>,
) -> Vec<f32> {
    crate::model::cpu::rope_cos_sin(0, n_ctx, n_rot, base, scale, factors)
        .into_iter()
        .flat_map(|(c, s)| [c, s])
        .collect()
}

/// Flags word of the `qk_prep` kernel's parameters.
pub fn prep_flags(ops: &ArchOps) -> u32 {
    u32::from(ops.qk_norm) | (u32::from(ops.bias) << 1) | (u32::from(ops.neox) << 2)
}

/// Head slots (workgroups per token) of the `qk_prep` step: Q and K heads, plus the V heads
/// when there are biases to add.
pub fn prep_slots(cfg: &LlamaConfig) -> u32 {
    (cfg.n_head + cfg.n_kv + if cfg.ops.bias { cfg.n_kv } else { 0 }) as u32
}

/// Layer `l`'s `qk_prep` inputs: `[q_norm (head_dim) | k_norm (head_dim) | bias (QKV row)]`
/// (zeros where the model has none).
pub fn layer_aux(src: &dyn WeightSource, cfg: &LlamaConfig, l: usize) -> Result<Vec<f32>> {
    let hd = cfg.head_dim;
    let (qd, kvd) = (cfg.q_dim(), cfg.n_kv * hd);
    let mut aux = vec![0f32; 2 * hd + qd + 2 * kvd];
    let mut fill = |name: String, at: usize, n: usize, required: bool| -> Result<()> {
        match src.tensor(&name)? {
            Some(t) => {
                let total: u64 = t.dims.iter().product();
                if total as usize != n {
                    return Err(Error::Tensor {
                        tensor: name,
                        msg: format!("{}: has {total} elements, expected {n}", src.label()),
                    });
                }
                let v = dequantize(t.ty, &t.data, n).map_err(|e| Error::Tensor {
                    tensor: name.clone(),
                    msg: e.to_string(),
                })?;
                aux[at..at + n].copy_from_slice(&v);
                Ok(())
            }
            None if required => Err(Error::msg(format!(
                "{}: tensor {name} missing",
                src.label()
            ))),
            None => Ok(()),
        }
    };
    if cfg.ops.qk_norm {
        fill(format!("blk.{l}.attn_q_norm.weight"), 0, hd, true)?;
        fill(format!("blk.{l}.attn_k_norm.weight"), hd, hd, true)?;
    }
    if cfg.ops.bias {
        let b = 2 * hd;
        fill(format!("blk.{l}.attn_q.bias"), b, qd, false)?;
        fill(format!("blk.{l}.attn_k.bias"), b + qd, kvd, false)?;
        fill(format!("blk.{l}.attn_v.bias"), b + qd + kvd, kvd, false)?;
    }
    Ok(aux)
}
