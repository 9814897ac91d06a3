//! The tensors of a llama-family model, located in the file but not loaded: every backend
//! reads them from here in their stored (quantized) form.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::file::{ModelFile, TensorMeta};
use crate::model::hparams::HParams;
use crate::quant::GgmlType;

/// One tensor of the model: its metadata plus the file it lives in.
#[derive(Clone)]
pub struct Weight {
    /// Name, dims, type and location.
    pub meta: TensorMeta,
    file: Arc<ModelFile>,
}

impl Weight {
    /// The raw (quantized) bytes, zero-copy from the memory map.
    pub fn data(&self) -> Result<&[u8]> {
        self.file.data(&self.meta)
    }
    /// Storage type.
    pub fn ty(&self) -> GgmlType {
        self.meta.ty
    }
    /// Row length (input width of a matrix).
    pub fn row_len(&self) -> usize {
        self.meta.row_len()
    }
    /// Number of rows (output width of a matrix).
    pub fn n_rows(&self) -> usize {
        self.meta.n_rows()
    }
    /// Tensor name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }
}

/// The tensors of one transformer block.
#[derive(Clone)]
pub struct LayerWeights {
    /// `blk.N.attn_norm.weight` [n_embd].
    pub attn_norm: Weight,
    /// `blk.N.attn_q.weight` [n_embd → q_dim].
    pub wq: Weight,
    /// `blk.N.attn_k.weight` [n_embd → kv_dim].
    pub wk: Weight,
    /// `blk.N.attn_v.weight` [n_embd → kv_dim].
    pub wv: Weight,
    /// `blk.N.attn_output.weight` [q_dim → n_embd].
    pub wo: Weight,
    /// Optional biases (qwen2): `attn_q.bias`, `attn_k.bias`, `attn_v.bias`.
    pub bq: Option<Weight>,
    /// See `bq`.
    pub bk: Option<Weight>,
    /// See `bq`.
    pub bv: Option<Weight>,
    /// Optional per-head RMS norms (qwen3): `attn_q_norm.weight`, `attn_k_norm.weight` [head_dim].
    pub q_norm: Option<Weight>,
    /// See `q_norm`.
    pub k_norm: Option<Weight>,
    /// Optional `blk.N.post_attention_norm.weight` [n_embd] (gemma3): RMS norm of the
    /// attention output before the residual add.
    pub post_attn_norm: Option<Weight>,
    /// `blk.N.ffn_norm.weight` [n_embd].
    pub ffn_norm: Weight,
    /// `blk.N.ffn_gate.weight` [n_embd → n_ff].
    pub gate: Weight,
    /// `blk.N.ffn_up.weight` [n_embd → n_ff].
    pub up: Weight,
    /// `blk.N.ffn_down.weight` [n_ff → n_embd].
    pub down: Weight,
    /// Optional `blk.N.post_ffw_norm.weight` [n_embd] (gemma3): RMS norm of the FFN output
    /// before the residual add.
    pub post_ffn_norm: Option<Weight>,
}

/// All tensors of a llama-family model.
#[derive(Clone)]
pub struct LlamaWeights {
    /// `token_embd.weight` [n_embd × n_vocab].
    pub tok_embd: Weight,
    /// `output_norm.weight` [n_embd].
    pub output_norm: Weight,
    /// `output.weight`, or `token_embd.weight` when the embeddings are tied.
    pub output: Weight,
    /// Optional `rope_freqs.weight` [rope_dim / 2] (llama 3 frequency factors).
    pub rope_freqs: Option<Weight>,
    /// The blocks, in order.
    pub layers: Vec<LayerWeights>,
}

impl LlamaWeights {
    /// Locate every tensor and check its shape against `hp`. Errors name the tensor.
    pub fn from_file(file: &Arc<ModelFile>, hp: &HParams) -> Result<LlamaWeights> {
        let get = |name: &str, dims: &[usize]| -> Result<Weight> {
            let meta = file.tensor(name).ok_or_else(|| {
                Error::msg(format!(
                    "{}: missing tensor '{name}'",
                    file.path().display()
                ))
            })?;
            check(&meta, dims)?;
            Ok(Weight {
                meta,
                file: file.clone(),
            })
        };
        let opt = |name: &str, dims: &[usize]| -> Result<Option<Weight>> {
            match file.tensor(name) {
                None => Ok(None),
                Some(meta) => {
                    check(&meta, dims)?;
                    Ok(Some(Weight {
                        meta,
                        file: file.clone(),
                    }))
                }
            }
        };
        let (e, q, kv, ff, hd) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff, hp.head_dim);
        let tok_embd = get("token_embd.weight", &[e, hp.n_vocab])?;
        let output_norm = get("output_norm.weight", &[e])?;
        let output = match opt("output.weight", &[e, hp.n_vocab])? {
            Some(w) => w,
            None => tok_embd.clone(),
        };
        let rope_freqs = opt("rope_freqs.weight", &[hp.rope_dim / 2])?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let (q_norm, k_norm) = if hp.qk_norm {
                (
                    Some(get(&n("attn_q_norm.weight"), &[hd])?),
                    Some(get(&n("attn_k_norm.weight"), &[hd])?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if hp.post_norms {
                (
                    Some(get(&n("post_attention_norm.weight"), &[e])?),
                    Some(get(&n("post_ffw_norm.weight"), &[e])?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: get(&n("attn_norm.weight"), &[e])?,
                wq: get(&n("attn_q.weight"), &[e, q])?,
                wk: get(&n("attn_k.weight"), &[e, kv])?,
                wv: get(&n("attn_v.weight"), &[e, kv])?,
                wo: get(&n("attn_output.weight"), &[q, e])?,
                bq: opt(&n("attn_q.bias"), &[q])?,
                bk: opt(&n("attn_k.bias"), &[kv])?,
                bv: opt(&n("attn_v.bias"), &[kv])?,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: get(&n("ffn_norm.weight"), &[e])?,
                gate: get(&n("ffn_gate.weight"), &[e, ff])?,
                up: get(&n("ffn_up.weight"), &[e, ff])?,
                down: get(&n("ffn_down.weight"), &[ff, e])?,
                post_ffn_norm,
            });
        }
        Ok(LlamaWeights {
            tok_embd,
            output_norm,
            output,
            rope_freqs,
            layers,
        })
    }
}

fn check(meta: &TensorMeta, dims: &[usize]) -> Result<()> {
    let got: Vec<usize> = meta.dims.iter().map(|&d| d as usize).collect();
    // Trailing 1-sized dims are equivalent.
    let mut g = got.clone();
    while g.len() > dims.len() && g.last() == Some(&1) {
        g.pop();
    }
    if g != dims {
        return Err(Error::Tensor {
            tensor: meta.name.clone(),
            msg: format!("shape {got:?} does not match the expected {dims:?}"),
        });
    }
    Ok(())
}
