//! The llama graph on the GPU: per token 8 dispatches per layer (RMSNorm, fused QKV mat-vec,
//! RoPE + KV store, attention, output projection + residual, RMSNorm, fused gate/up mat-vec
//! with SwiGLU, down projection + residual), all recorded in one compute pass and one submit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::quant::GgmlType;

use super::actq::ActRounding;
use super::arch::ArchOp;
use super::buffers::{
    f32_buffer, scratch, upload_matrix_in, Chunk, GpuMatrix, UploadRing, WeightPool,
};
use super::device::GpuContext;
use super::kernels::{
    buffer_layouts, fit_wg, KernelKey, Kernels, MatEpi, MultiPart, Tune, MULTI_MAX,
};
use super::profile::{HostTimeline, TimelineRec, TL_STRIDE};
use super::reference::dequantize;
use super::source::{TensorView, WeightSource};

/// Llama hyper-parameters read from GGUF metadata.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LlamaConfig {
    /// Architecture name (metadata prefix).
    pub arch: String,
    /// Hidden size.
    pub n_embd: usize,
    /// Layers.
    pub n_layer: usize,
    /// FFN size.
    pub n_ff: usize,
    /// Heads.
    pub n_head: usize,
    /// KV heads.
    pub n_kv: usize,
    /// Head size.
    pub head_dim: usize,
    /// Rotated dims per head.
    pub n_rot: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base.
    pub rope_base: f64,
    /// RoPE frequency scale (1 / linear scaling factor; 1 = none).
    pub rope_scale: f32,
    /// Attention score scale (1/√head_dim; 1 for gemma3, which scales Q instead).
    pub kq_scale: f32,
    /// Training context.
    pub n_ctx_train: usize,
    /// What the architecture adds to llama's graph (nothing for llama and mistral).
    pub ops: super::arch::ArchOps,
}

impl LlamaConfig {
    /// Read from metadata; `n_vocab` from the embedding tensor. Model files go through the
    /// runtime's [`HParams`](crate::model::HParams) (every architecture the CPU backend runs:
    /// llama, mistral, qwen2, qwen3, gemma3); synthetic sources are llama shapes.
    pub fn from_source(src: &dyn WeightSource) -> Result<LlamaConfig> {
        if let Some(hp) = src.hparams() {
            return LlamaConfig::from_hparams(&hp?, src);
        }
        let arch = src
            .meta_str("general.architecture")
            .unwrap_or_else(|| "llama".into());
        if arch != "llama" {
            return Err(Error::msg(format!(
                "{}: architecture '{arch}' is not supported by the GPU engine for a source without a model file",
                src.label()
            )));
        }
        let need = |k: &str| -> Result<usize> {
            src.meta_u64(&format!("{arch}.{k}"))
                .map(|v| v as usize)
                .ok_or_else(|| {
                    Error::msg(format!("{}: metadata key {arch}.{k} missing", src.label()))
                })
        };
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let n_kv = src
            .meta_u64(&format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        if n_head == 0 || n_kv == 0 || n_embd % n_head != 0 || n_head % n_kv != 0 {
            return Err(Error::msg(format!(
                "{}: bad head counts (embd {n_embd}, heads {n_head}, kv heads {n_kv})",
                src.label()
            )));
        }
        let head_dim = n_embd / n_head;
        if head_dim % 4 != 0 || head_dim > 256 {
            return Err(Error::msg(format!(
                "{}: head size {head_dim} unsupported (must be a multiple of 4, ≤ 256)",
                src.label()
            )));
        }
        let n_rot = src
            .meta_u64(&format!("{arch}.rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        let emb = src.tensor("token_embd.weight")?.ok_or_else(|| {
            Error::msg(format!("{}: tensor token_embd.weight missing", src.label()))
        })?;
        let n_vocab =
            *emb.dims
                .get(1)
                .ok_or_else(|| Error::msg("token_embd.weight is not 2-D"))? as usize;
        Ok(LlamaConfig {
            n_embd,
            n_layer: need("block_count")?,
            n_ff: need("feed_forward_length")?,
            n_head,
            n_kv,
            head_dim,
            n_rot: n_rot.min(head_dim),
            n_vocab,
            eps: src
                .meta_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            rope_base: src
                .meta_f64(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10000.0),
            rope_scale: 1.0,
            kq_scale: 1.0 / (head_dim as f32).sqrt(),
            n_ctx_train: src
                .meta_u64(&format!("{arch}.context_length"))
                .unwrap_or(4096) as usize,
            arch,
            ops: super::arch::ArchOps::llama(),
        })
    }
    /// Width of the fused QKV output.
    pub fn qkv_dim(&self) -> usize {
        (self.n_head + 2 * self.n_kv) * self.head_dim
    }
}

/// Options for loading a model on the GPU.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Positions per sequence in the KV cache.
    pub n_ctx: usize,
    /// Largest number of tokens per forward call (prompt batch).
    pub n_batch: usize,
    /// Sequences that can be decoded at once.
    pub n_seq: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            n_ctx: 1024,
            n_batch: 512,
            n_seq: 1,
        }
    }
}

/// GPU memory use, by kind (bytes).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemoryUse {
    /// Weight buffers.
    pub weights: u64,
    /// KV cache.
    pub kv_cache: u64,
    /// Activations, logits, parameters.
    pub scratch: u64,
}

#[derive(Clone, Copy)]
enum StepKind {
    Norm,
    Mat {
        m: usize,
        c: usize,
        x_ld: u32,
        y_off: u32,
        ld_y: u32,
        mode: u32,
        last_only: bool,
        /// Packed-quant base of the input for the integer decode kernel (0: f32 input).
        q8e: u32,
    },
    Rope,
    Attn,
    /// Decode attention; `nch` > 1: split over `nch` chunks per head, partial results to the
    /// split scratch with the (max, sum) pairs from word `stats`.
    AttnDecode {
        nch: u32,
        stats: u32,
        /// With the last-workgroup epilogue (`KernelKey::AttnDecodeQ`): the rounding's row
        /// length, row stride, kind and packed-quant base (parameter words 12..16); zeros
        /// otherwise.
        round: [u32; 4],
        /// Inside the QKV mat-vec's dispatch (`KernelKey::MatVecAttn`, `Tune::attn_wait`):
        /// the layer's block of wait counters and the block that dispatch zeroes (parameter
        /// words 16 and 17; word 18 is `Tune::attn_wait_all`). The step itself is then not
        /// dispatched. None otherwise.
        wait: Option<(u32, u32)>,
    },
    /// Rounding of the attention output (`k` values, stride `ld`) combined from the split
    /// decode attention's `nch` partial results (`KernelKey::AttnCombineQ`).
    AttnCombineQ {
        kind: u32,
        k: u32,
        ld: u32,
        q8e: u32,
        stats: u32,
    },
    /// Activation rounding of a matrix input (`k` values per token, stride `ld`).
    ActQ {
        kind: u32,
        k: u32,
        ld: u32,
        last_only: bool,
        /// Also write the packed int8 quants from this word (0: none).
        q8e: u32,
    },
    /// Batch RMSNorm that also writes the activation rounding of its output
    /// (`KernelKey::NormRound`), in one-token calls with the packed int8 quants from word
    /// `q8e` (0: none).
    NormRound {
        q8e: u32,
    },
    /// Decode RMSNorm + rounding into packed int8 quants from word `q8e` (one workgroup).
    NormQ8 {
        q8e: u32,
    },
    /// Embedding rows of the prompt's tokens from chunk `c` of the GPU token-embedding matrix.
    Embed {
        c: usize,
    },
    /// Bias, per-head norms, RoPE and Q scale of the QKV rows (qwen2, qwen3, gemma3:
    /// [`ArchOp::QkPrep`]).
    QkPrep,
    /// L2 prefetch of the first `bytes` of a weight chunk ([`KernelKey::Prefetch`],
    /// [`super::kernels::Tune::prefetch_mb`]); no parameters.
    Prefetch {
        bytes: u64,
    },
    /// Decode mat-vecs of one group (Q+K and V of different types, weight chunks) in one
    /// dispatch ([`KernelKey::MatVecQ8Multi`], [`Tune::qkv_multi`]): (matrix, chunk, output
    /// offset) of each of the `n` parts, with the packed-quant base of their shared input,
    /// the output stride and mode; one parameter block per part in the step's slot.
    MatMulti {
        parts: [(usize, usize, u32); MULTI_MAX],
        n: usize,
        q8e: u32,
        ld_y: u32,
        mode: u32,
    },
}

/// Which forward calls run a step: one-token calls use the fused decode graph (when enabled),
/// the others the batch graph.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    Batch,
    Decode,
    /// Calls of 2 or more tokens only (the GPU embedding look-up).
    Prompt,
}

impl When {
    /// Whether a step of this kind runs in an `n`-token call of graph `mode`.
    fn runs(self, mode: When, n: usize) -> bool {
        self == When::Always || self == mode || (self == When::Prompt && n > 1)
    }
}

struct Step {
    kind: StepKind,
    when: When,
    /// What the dispatch computes, for `bench --profile` ("attn_norm", "qkv", "down", ...).
    role: &'static str,
    bind: wgpu::BindGroup,
    slot: usize,
    key: KernelKey,
    /// Norm width for Norm; the sliding window (0: none) for attention steps; rows for mat
    /// dispatch computed from the matrix.
    n: u32,
}

const SLOT: usize = 256;

/// A forward call's batch shape: (tokens, all logits, fused decode graph).
type BatchShape = (usize, bool, bool);

/// The upload-ring slot and host-timeline slot a recorded command buffer uses.
type Slots = (Option<usize>, Option<u32>);

/// GPU timestamps taken by [`GpuModel::forward_profiled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamps {
    /// None (a plain forward).
    Off,
    /// Beginning and end of the whole forward pass.
    Pass,
    /// Every dispatch in its own compute pass, each timed.
    PerStep,
}

/// CPU time of forward calls by phase, summed over calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// Forward calls counted.
    pub calls: u64,
    /// Embedding look-up, token table and parameter upload.
    pub prepare: Duration,
    /// Recording the dispatches into a command buffer.
    pub record: Duration,
    /// `queue.submit`.
    pub submit: Duration,
    /// Waiting for the GPU (poll until the logits copy is done).
    pub wait: Duration,
    /// Mapping and copying the logits out.
    pub readback: Duration,
}

impl CpuTimes {
    /// Mean µs per forward call of each phase: prepare, record, submit, wait, read back.
    pub fn per_call_us(&self) -> [f64; 5] {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.calls.max(1) as f64;
        [
            per(self.prepare),
            per(self.record),
            per(self.submit),
            per(self.wait),
            per(self.readback),
        ]
    }
}

pub use crate::model::OnToken;

/// The argmax dispatch of [`GpuModel::decode_greedy`] and its read-back buffers (logits, then
/// the chosen id), one per pass in flight ([`Tune::greedy_depth`]), used in turn so that one
/// is read while the next passes run.
struct Chain {
    bind: wgpu::BindGroup,
    staging: Vec<wgpu::Buffer>,
}

/// A llama model resident on the GPU.
pub struct GpuModel {
    cpu: CpuTimes,
    /// Record the next forward of the same shape while the GPU runs the current one.
    prerecord: bool,
    /// That command buffer, with its shape (tokens, all logits, fused), the upload-ring and
    /// timeline slots it uses and whether it runs the long-context decode attention
    /// ([`Tune::attn_exact_max`]).
    prerecorded: Option<(BatchShape, Slots, bool, wgpu::CommandBuffer)>,
    /// Roles whose dispatches every forward leaves out (timing only: [`Tune::skip_roles`],
    /// [`GpuModel::set_skip_roles`]).
    skip_roles: u32,
    /// Upload buffers of one-token calls (`Tune::upload_ring`).
    ring: Option<UploadRing>,
    /// Host timeline of one-token calls ([`GpuModel::set_host_timeline`]).
    timeline: Option<TimelineRec>,
    /// Batch shape (tokens, all logits, fused) whose parameters are in `params`.
    params_for: Option<(usize, bool, bool)>,
    /// Workgroup counts of the active steps for that shape.
    disp_for: Option<(BatchShape, Vec<(u32, u32)>)>,
    /// One-token forwards run the fused decode graph.
    fused: bool,
    /// The plain mat-vec's bind group of each joint QKV + attention step
    /// ([`KernelKey::MatVecAttn`]), by the step's slot: past [`Tune::attn_exact_max`]
    /// positions the two run as separate dispatches again ([`pass_step_key`]).
    split_binds: std::collections::HashMap<usize, wgpu::BindGroup>,
    /// Decode steps that run inside another step's dispatch ([`KernelKey::MatVecJoin`],
    /// `Tune::mv_join`), by slot.
    joined: std::collections::HashSet<usize>,
    /// Each joint mat-vec step's block of wait counters and the block it zeroes (parameter
    /// words 16 and 17 of its slot), by slot.
    join_words: std::collections::HashMap<usize, [u32; 2]>,
    ctx: Arc<GpuContext>,
    /// Hyper-parameters.
    pub cfg: LlamaConfig,
    /// Load options.
    pub opts: ModelOptions,
    kernels: Kernels,
    mats: Vec<GpuMatrix>,
    steps: Vec<Step>,
    layers_n: usize,
    embd_ty: GgmlType,
    embd: Vec<u8>,
    embd_row_bytes: usize,
    /// The token-embedding matrix's chunks on the GPU for prompt calls ([`When::Prompt`]
    /// steps); with tied embeddings, the output matrix's own chunks.
    embd_gpu: Option<Vec<Chunk>>,
    /// Token ids of the current call (read by the GPU embedding look-up).
    tids: wgpu::Buffer,
    params: wgpu::Buffer,
    tinfo: wgpu::Buffer,
    x: wgpu::Buffer,
    logits: wgpu::Buffer,
    /// Tokens whose logits one call can return (the batch size unless the vocabulary is
    /// too large for one binding).
    logit_rows: usize,
    staging: wgpu::Buffer,
    /// Greedy decoding on the GPU ([`GpuModel::decode_greedy`]), set up on first use.
    chain: Option<Chain>,
    /// Bytes per token that a decode step reads from weights (file sizes of all matrices).
    pub weight_bytes_per_token: u64,
    /// GPU memory use.
    pub memory: MemoryUse,
    /// Dispatches recorded per one-token forward call.
    pub dispatches: usize,
    /// Source label.
    pub label: String,
}

fn mat_dims(t: &TensorView<'_>, name: &str) -> Result<(usize, usize)> {
    match t.dims.as_slice() {
        [c, r] => Ok((*r as usize, *c as usize)),
        _ => Err(Error::Tensor {
            tensor: name.into(),
            msg: format!("expected 2 dims, got {:?}", t.dims),
        }),
    }
}

fn f32_of(t: &TensorView<'_>, name: &str, n: usize) -> Result<Vec<f32>> {
    let total: u64 = t.dims.iter().product();
    if total as usize != n {
        return Err(Error::Tensor {
            tensor: name.into(),
            msg: format!("has {total} elements, expected {n}"),
        });
    }
    dequantize(t.ty, &t.data, n).map_err(|e| Error::Tensor {
        tensor: name.into(),
        msg: e.to_string(),
    })
}

/// Interleave the rows of two matrices of one type and row length: a0 b0 a1 b1 ...
fn interleave_rows(a: &[u8], b: &[u8], row_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    for (ra, rb) in a.chunks_exact(row_bytes).zip(b.chunks_exact(row_bytes)) {
        out.extend_from_slice(ra);
        out.extend_from_slice(rb);
    }
    out
}

impl GpuModel {
    /// Upload a model from `src` and prepare every dispatch.
    pub fn load(
        ctx: Arc<GpuContext>,
        src: &dyn WeightSource,
        opts: ModelOptions,
    ) -> Result<GpuModel> {
        let cfg = LlamaConfig::from_source(src)?;
        let mut opts = opts;
        // Attention keeps one score per position in workgroup memory, beside 9 KiB of its own.
        let shared_ctx = ((ctx.facts.shared_mem as usize).saturating_sub(9216)) / 4;
        if opts.n_ctx > shared_ctx {
            return Err(Error::msg(format!(
                "context {} exceeds what attention can hold in {} bytes of workgroup memory (max {shared_ctx})",
                opts.n_ctx, ctx.facts.shared_mem
            )));
        }
        opts.n_batch = opts.n_batch.max(opts.n_seq).max(1);
        let d = cfg.n_embd;
        let hd = cfg.head_dim;
        let kv_dim = cfg.n_kv * hd;
        // Query and attention-output width (n_embd except where head_dim · n_head differs).
        let qd = cfg.q_dim();
        let nb = opts.n_batch;
        let mut mem = MemoryUse::default();
        let get = |name: &str| -> Result<TensorView<'_>> {
            src.tensor(name)?
                .ok_or_else(|| Error::msg(format!("{}: tensor {name} missing", src.label())))
        };
        let mut mats: Vec<GpuMatrix> = Vec::new();
        // Weight chunks in a few pooled buffers (`Tune::weight_pool`).
        let mut pool =
            (ctx.tune.weight_pool > 0).then(|| WeightPool::new(&ctx, ctx.tune.weight_pool));
        let mut weight_bytes = 0u64;
        let mut push = |m: GpuMatrix, mats: &mut Vec<GpuMatrix>| -> usize {
            weight_bytes += m.file_bytes;
            mats.push(m);
            mats.len() - 1
        };
        // Embedding stays on the CPU (one row per token).
        let emb = get("token_embd.weight")?;
        let (n_vocab, emb_cols) = mat_dims(&emb, "token_embd.weight")?;
        if emb_cols != d {
            return Err(Error::Tensor {
                tensor: "token_embd.weight".into(),
                msg: format!("row length {emb_cols} != embedding length {d}"),
            });
        }
        let embd_row_bytes = emb
            .ty
            .bytes_for(d as u64)
            .ok_or_else(|| Error::msg("embedding row is not whole blocks"))?
            as usize;
        let embd_ty = emb.ty;
        let embd = emb.data.to_vec();

        struct LayerIdx {
            an: wgpu::Buffer,
            fnm: wgpu::Buffer,
            qkv: Vec<usize>,
            wo: usize,
            gu: Vec<usize>,
            down: usize,
            kc: wgpu::Buffer,
            vc: wgpu::Buffer,
            /// `qk_prep` inputs ([`super::arch::layer_aux`]) where the arch needs the step.
            aux: Option<wgpu::Buffer>,
            /// Post-attention and post-FFN norm weights (gemma3).
            post: Option<(wgpu::Buffer, wgpu::Buffer)>,
        }
        let mut lidx = Vec::new();
        let kv_elems = opts.n_seq * opts.n_ctx * kv_dim;
        for l in 0..cfg.n_layer {
            let n = |t: &str| format!("blk.{l}.{t}.weight");
            let an = f32_buffer(
                &ctx,
                "attn_norm",
                &f32_of(&get(&n("attn_norm"))?, &n("attn_norm"), d)?,
            );
            let fnm = f32_buffer(
                &ctx,
                "ffn_norm",
                &f32_of(&get(&n("ffn_norm"))?, &n("ffn_norm"), d)?,
            );
            mem.weights += 8 * d as u64;
            let q = get(&n("attn_q"))?;
            let k = get(&n("attn_k"))?;
            let v = get(&n("attn_v"))?;
            for (t, rows) in [(&q, qd), (&k, kv_dim), (&v, kv_dim)] {
                let (r, c) = mat_dims(t, "attn")?;
                if r != rows || c != d {
                    return Err(Error::Tensor {
                        tensor: n("attn_q/k/v"),
                        msg: format!("shape {r}×{c}, expected {rows}×{d}"),
                    });
                }
            }
            let mut qkv = Vec::new();
            if q.ty == k.ty && k.ty == v.ty {
                let mut all = q.data.to_vec();
                all.extend_from_slice(&k.data);
                all.extend_from_slice(&v.data);
                qkv.push(push(
                    upload_matrix_in(
                        &ctx,
                        pool.as_mut(),
                        &n("attn_qkv"),
                        q.ty,
                        qd + 2 * kv_dim,
                        d,
                        &all,
                    )?,
                    &mut mats,
                ));
            } else if q.ty == k.ty {
                // Q and K share a type, V has another (Q4_K_M, Q2_K mixes): two mat-vecs.
                let mut qk = q.data.to_vec();
                qk.extend_from_slice(&k.data);
                qkv.push(push(
                    upload_matrix_in(
                        &ctx,
                        pool.as_mut(),
                        &n("attn_qk"),
                        q.ty,
                        qd + kv_dim,
                        d,
                        &qk,
                    )?,
                    &mut mats,
                ));
                qkv.push(push(
                    upload_matrix_in(&ctx, pool.as_mut(), &n("attn_v"), v.ty, kv_dim, d, &v.data)?,
                    &mut mats,
                ));
            } else {
                qkv.push(push(
                    upload_matrix_in(&ctx, pool.as_mut(), &n("attn_q"), q.ty, qd, d, &q.data)?,
                    &mut mats,
                ));
                qkv.push(push(
                    upload_matrix_in(&ctx, pool.as_mut(), &n("attn_k"), k.ty, kv_dim, d, &k.data)?,
                    &mut mats,
                ));
                qkv.push(push(
                    upload_matrix_in(&ctx, pool.as_mut(), &n("attn_v"), v.ty, kv_dim, d, &v.data)?,
                    &mut mats,
                ));
            }
            let o = get(&n("attn_output"))?;
            let (r, c) = mat_dims(&o, &n("attn_output"))?;
            if r != d || c != qd {
                return Err(Error::Tensor {
                    tensor: n("attn_output"),
                    msg: format!("shape {r}×{c}, expected {d}×{qd}"),
                });
            }
            let wo = push(
                upload_matrix_in(&ctx, pool.as_mut(), &n("attn_output"), o.ty, d, qd, &o.data)?,
                &mut mats,
            );
            let g = get(&n("ffn_gate"))?;
            let u = get(&n("ffn_up"))?;
            let dn = get(&n("ffn_down"))?;
            for (t, rows, cols, nm) in [
                (&g, cfg.n_ff, d, "ffn_gate"),
                (&u, cfg.n_ff, d, "ffn_up"),
                (&dn, d, cfg.n_ff, "ffn_down"),
            ] {
                let (r, c) = mat_dims(t, nm)?;
                if r != rows || c != cols {
                    return Err(Error::Tensor {
                        tensor: n(nm),
                        msg: format!("shape {r}×{c}, expected {rows}×{cols}"),
                    });
                }
            }
            let mut gu = Vec::new();
            if g.ty == u.ty {
                let rb = g.data.len() / cfg.n_ff;
                let il = interleave_rows(&g.data, &u.data, rb);
                gu.push(push(
                    upload_matrix_in(
                        &ctx,
                        pool.as_mut(),
                        &n("ffn_gate_up"),
                        g.ty,
                        2 * cfg.n_ff,
                        d,
                        &il,
                    )?,
                    &mut mats,
                ));
            } else {
                gu.push(push(
                    upload_matrix_in(
                        &ctx,
                        pool.as_mut(),
                        &n("ffn_gate"),
                        g.ty,
                        cfg.n_ff,
                        d,
                        &g.data,
                    )?,
                    &mut mats,
                ));
                gu.push(push(
                    upload_matrix_in(
                        &ctx,
                        pool.as_mut(),
                        &n("ffn_up"),
                        u.ty,
                        cfg.n_ff,
                        d,
                        &u.data,
                    )?,
                    &mut mats,
                ));
            }
            let down = push(
                upload_matrix_in(
                    &ctx,
                    pool.as_mut(),
                    &n("ffn_down"),
                    dn.ty,
                    d,
                    cfg.n_ff,
                    &dn.data,
                )?,
                &mut mats,
            );
            // f16 halves two per word, or f32 (Tune::kv_f32): kv_words 32-bit words each.
            let kv_words = kv_elems * super::kernels::kv_value_bytes(&ctx.tune) / 4;
            let kc = scratch(&ctx, "k_cache", kv_words);
            let vc = scratch(&ctx, "v_cache", kv_words);
            mem.kv_cache += 8 * kv_words as u64;
            // Architecture-specific per-layer weights (none for llama).
            let aux = if cfg.ops.prep() {
                let a = super::arch::layer_aux(src, &cfg, l)?;
                mem.weights += 4 * a.len() as u64;
                Some(f32_buffer(&ctx, "qk_prep", &a))
            } else {
                None
            };
            let post = if cfg.ops.post_norms {
                let pa = n("post_attention_norm");
                let pf = n("post_ffw_norm");
                mem.weights += 8 * d as u64;
                Some((
                    f32_buffer(&ctx, "post_attention_norm", &f32_of(&get(&pa)?, &pa, d)?),
                    f32_buffer(&ctx, "post_ffw_norm", &f32_of(&get(&pf)?, &pf, d)?),
                ))
            } else {
                None
            };
            lidx.push(LayerIdx {
                an,
                fnm,
                qkv,
                wo,
                gu,
                down,
                kc,
                vc,
                aux,
                post,
            });
        }
        let onorm = f32_buffer(
            &ctx,
            "output_norm",
            &f32_of(&get("output_norm.weight")?, "output_norm.weight", d)?,
        );
        let (outm, tied) = match src.tensor("output.weight")? {
            Some(t) => {
                let (r, c) = mat_dims(&t, "output.weight")?;
                if r != n_vocab || c != d {
                    return Err(Error::Tensor {
                        tensor: "output.weight".into(),
                        msg: format!("shape {r}×{c}, expected {n_vocab}×{d}"),
                    });
                }
                (
                    upload_matrix_in(
                        &ctx,
                        pool.as_mut(),
                        "output.weight",
                        t.ty,
                        n_vocab,
                        d,
                        &t.data,
                    )?,
                    false,
                )
            }
            None => (
                upload_matrix_in(
                    &ctx,
                    pool.as_mut(),
                    "token_embd.weight (tied output)",
                    embd_ty,
                    n_vocab,
                    d,
                    &embd,
                )?,
                true,
            ),
        };
        let out_idx = push(outm, &mut mats);
        mem.weights += mats.iter().map(|m| m.gpu_bytes).sum::<u64>();
        // Prompt embeddings on the GPU (`Tune::gpu_embd`): the token-embedding matrix as the
        // kernels read weights (not counted in the per-token weight bytes: a call reads only
        // its tokens' rows).
        // Scaled embeddings (gemma3) are looked up on the CPU, which scales them as the CPU
        // backend does.
        let embd_gpu = match (ctx.tune.gpu_embd && cfg.ops.embd_scale == 1.0, tied) {
            (false, _) => None,
            // The tied output matrix is this very upload (same type, rows and chunks).
            (true, true) => Some(mats[out_idx].chunks.clone()),
            (true, false) => {
                let m = upload_matrix_in(
                    &ctx,
                    pool.as_mut(),
                    "token_embd.weight",
                    embd_ty,
                    n_vocab,
                    d,
                    &embd,
                )?;
                mem.weights += m.gpu_bytes;
                Some(m.chunks)
            }
        };
        let mut embd_gpu = embd_gpu;
        if let Some(p) = pool.take() {
            let extra = embd_gpu.iter_mut().flatten();
            p.finish(
                &ctx,
                mats.iter_mut()
                    .flat_map(|m| m.chunks.iter_mut())
                    .chain(extra),
            );
        }
        let tids = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token ids"),
            size: (nb * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });

        // Scratch buffers.
        let x = scratch(&ctx, "x", nb * d);
        let xn = scratch(&ctx, "xn", nb * d);
        let qkvb = scratch(&ctx, "qkv", nb * cfg.qkv_dim());
        let att = scratch(&ctx, "attn", nb * qd);
        // gemma3: wo and down outputs before their post-norm residual add; the GELU-gated
        // FFN activation.
        let post_out = cfg
            .ops
            .post_norms
            .then(|| scratch(&ctx, "post_norm_in", nb * d));
        let geglu_out = cfg.ops.gelu.then(|| scratch(&ctx, "geglu", nb * cfg.n_ff));
        // Split decode attention (flash-decoding, `Tune::attn_split`): chunks per head, the
        // partial results of one token (accumulators, then (max, sum) pairs).
        let attn_lmin = ctx.tune.attn_split;
        let attn_nch = if attn_lmin == 0 {
            1
        } else {
            (opts.n_ctx.div_ceil(attn_lmin as usize) as u32).clamp(1, ctx.tune.attn_chunks.max(1))
        };
        let attn_stats = cfg.n_head * attn_nch as usize * hd;
        let attn_part = if attn_nch > 1 {
            Some(scratch(
                &ctx,
                "attn split",
                attn_stats + 2 * cfg.n_head * attn_nch as usize,
            ))
        } else {
            None
        };
        let hid = scratch(&ctx, "ffn", nb * 2 * cfg.n_ff);
        // Tokens whose logits one binding holds: all of a batch, except for very large
        // vocabularies on small bindings (gemma3's 262 144 on a 128 MiB binding: 128).
        let logit_rows = nb.min((ctx.max_binding as usize / (4 * n_vocab.max(1))).max(1));
        let logits = scratch(&ctx, "logits", logit_rows * n_vocab);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: (logit_rows * n_vocab * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let tinfo = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tokens"),
            size: (nb * 8) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // RoPE table.
        let half = cfg.n_rot / 2;
        let factors = match src.tensor("rope_freqs.weight")? {
            Some(t) => Some(f32_of(&t, "rope_freqs.weight", half)?),
            None => None,
        };
        // The same f32 angles as the CPU backend (and ggml_rope_ext): theta accumulated by
        // repeated multiplication, so both backends rotate by bit-identical cos/sin.
        let cs = super::arch::rope_table(
            opts.n_ctx,
            cfg.n_rot,
            cfg.rope_base as f32,
            cfg.rope_scale,
            factors.as_deref(),
        );
        let cs_buf = f32_buffer(&ctx, "rope", &cs);
        // gemma3's sliding-window layers rotate with their own base.
        let cs_local = if cfg.ops.window > 0 {
            let t = super::arch::rope_table(
                opts.n_ctx,
                cfg.n_rot,
                cfg.ops.swa_rope_base,
                1.0,
                factors.as_deref(),
            );
            mem.scratch += 4 * t.len() as u64;
            Some(f32_buffer(&ctx, "rope local", &t))
        } else {
            None
        };

        let (bgl_mat, pl_mat) = buffer_layouts(&ctx, "mat", b"rrwu");
        let (bgl_rope, pl_rope) = buffer_layouts(&ctx, "rope", b"wwwrur");
        let (bgl_matn, pl_matn) = buffer_layouts(&ctx, "mat+norm", b"rrwur");
        let (bgl_nq, pl_nq) = buffer_layouts(&ctx, "norm q8", b"rrwu");
        let (bgl_attd, pl_attd) = buffer_layouts(&ctx, "attn decode", b"rwwwurr");
        let (bgl_attq, pl_attq) = buffer_layouts(&ctx, "attn decode + rounding", b"rwwwurrww");
        // Arrival counters of the decode attention's last-workgroup epilogue: one per token
        // and group of 256 / head-size heads (`Tune::attn_lastwg`).
        let attn_groups = (cfg.n_head * hd).div_ceil(256);
        let attn_cnt = super::counters::counter_buffer(&ctx, "attn counters", nb * attn_groups);
        let (bgl_attn, pl_attn) = buffer_layouts(&ctx, "attn", b"rrrwur");
        let (bgl_nr, pl_nr) = buffer_layouts(&ctx, "norm round", b"rrwuw");
        let (bgl_prep, pl_prep) = buffer_layouts(&ctx, "qk prep", b"wrrur");
        let (attn_key, _) = super::kernels::attention_key(&ctx, hd as u32)?;

        // Steps (bind groups reference a params slot each).
        // Batch graph (up to 11 dispatches per layer), activation roundings, decode graph.
        // Architecture steps: qk_prep, two post-norms, geglu per layer.
        let arch_steps = cfg.n_layer
            * (usize::from(cfg.ops.prep())
                + 2 * usize::from(cfg.ops.post_norms)
                + usize::from(cfg.ops.gelu));
        let n_slots_est = cfg.n_layer * 25
            + arch_steps
            + 16
            + 3 * mats.iter().map(|m| m.chunks.len()).sum::<usize>();
        let params = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (n_slots_est * SLOT) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        mem.scratch = (nb
            * (d * 2
                + qd
                + cfg.qkv_dim()
                + 2 * cfg.n_ff
                + post_out.as_ref().map_or(0, |_| d)
                + geglu_out.as_ref().map_or(0, |_| cfg.n_ff))
            * 4
            + 2 * logit_rows * n_vocab * 4
            + nb * 12
            + cs.len() * 4
            + n_slots_est * SLOT) as u64;
        let mut steps: Vec<Step> = Vec::new();
        let bg = |layout: &wgpu::BindGroupLayout,
                  bufs: &[&wgpu::Buffer],
                  slot: usize|
         -> wgpu::BindGroup {
            bind_with_params(
                &ctx,
                &params,
                layout,
                bufs.iter().map(|b| b.as_entire_binding()).collect(),
                slot,
            )
        };
        // The same with a weight chunk first (its range of a pooled buffer).
        let bgw = |layout: &wgpu::BindGroupLayout,
                   w: &Chunk,
                   rest: &[&wgpu::Buffer],
                   slot: usize|
         -> wgpu::BindGroup {
            let mut res = vec![w.binding()];
            res.extend(rest.iter().map(|b| b.as_entire_binding()));
            bind_with_params(&ctx, &params, layout, res, slot)
        };
        // Prompt calls first look their tokens' embedding rows up, one dispatch per chunk.
        if let Some(em) = &embd_gpu {
            for (c, ch) in em.iter().enumerate() {
                let slot = steps.len();
                steps.push(Step {
                    kind: StepKind::Embed { c },
                    when: When::Prompt,
                    role: "embed",
                    bind: bgw(&bgl_mat, ch, &[&tids, &x], slot),
                    slot,
                    key: KernelKey::Embed { ty: embd_ty.id() },
                    n: 0,
                });
            }
        }
        // The last batch RMSNorm step (index, input, weights, output), which the rounding of
        // the matrices right after it can be folded into (`Tune::norm_round`).
        let last_norm: std::cell::RefCell<
            Option<(usize, wgpu::Buffer, wgpu::Buffer, wgpu::Buffer)>,
        > = Default::default();
        // Buffers bound by the matrix, rounding and NormQ8 steps, by parameter slot (the
        // last-workgroup epilogues rebind them).
        let bufs_of: std::cell::RefCell<std::collections::HashMap<usize, Vec<wgpu::Buffer>>> =
            Default::default();
        let keep = |slot: usize, bufs: &[&wgpu::Buffer]| {
            bufs_of
                .borrow_mut()
                .insert(slot, bufs.iter().map(|b| (*b).clone()).collect());
        };
        let act = std::cell::RefCell::new(ActRounding::new(
            nb * d.max(qd).max(2 * cfg.n_ff),
            ctx.tune.act_round,
        ));
        let add_mat = |steps: &mut Vec<Step>,
                       mats: &Vec<GpuMatrix>,
                       m: usize,
                       xb: &wgpu::Buffer,
                       yb: &wgpu::Buffer,
                       x_ld: usize,
                       y_off: usize,
                       ld_y: usize,
                       mode: u32,
                       last_only: bool,
                       role: &'static str| {
            for c in 0..mats[m].chunks.len() {
                // Inputs rounded as the CPU backend's quantized activations (super::actq).
                let input =
                    act.borrow_mut()
                        .input_for(&ctx, mats[m].ty, xb, yb, last_only, steps.len());
                let q8e = if ctx.tune.q8dot && ctx.tune.act_round {
                    act.borrow().q8_base()
                } else {
                    0
                };
                let fold = input.round.as_ref().and_then(|r| {
                    let k4 = (mats[m].cols / 4) as u32;
                    let fits = match r.kind {
                        1 | 2 => true,
                        3 => k4 % 8 == 0,
                        4 => k4 % 64 == 0,
                        _ => false,
                    } && super::kernels::norm_round_shared_bytes(k4)
                        <= ctx.facts.shared_mem;
                    let ln = last_norm.borrow();
                    match &*ln {
                        Some((at, xi, nw, out))
                            if ctx.tune.norm_round
                                && fits
                                && !last_only
                                && *at + 1 == steps.len()
                                && out == xb
                                && x_ld == mats[m].cols =>
                        {
                            Some((*at, xi.clone(), nw.clone(), out.clone(), k4, r.kind))
                        }
                        _ => None,
                    }
                });
                if let Some((at, xi, nw, out, k4, kind)) = fold {
                    // The norm right before writes the rounded copy too: same values, one
                    // dispatch fewer.
                    let rb = &input.buf;
                    steps[at].kind = StepKind::NormRound {
                        q8e: if kind >= 3 { q8e } else { 0 },
                    };
                    steps[at].bind = bg(&bgl_nr, &[&xi, &nw, &out, rb], at);
                    steps[at].key = KernelKey::NormRound { k4, act: kind };
                    act.borrow_mut().made_by_previous_step();
                } else if let Some(r) = input.round {
                    let slot = steps.len();
                    keep(slot, &[xb, xb, &r.out]);
                    steps.push(Step {
                        kind: StepKind::ActQ {
                            kind: r.kind,
                            k: mats[m].cols as u32,
                            ld: x_ld as u32,
                            last_only,
                            q8e: if r.kind >= 3 { q8e } else { 0 },
                        },
                        bind: bg(&bgl_mat, &[xb, xb, &r.out], slot),
                        when: When::Always,
                        role: "actq",
                        slot,
                        key: KernelKey::ActQ,
                        n: 0,
                    });
                }
                let slot = steps.len();
                keep(slot, &[&mats[m].chunks[c].buf, &input.buf, yb]);
                let bind = bgw(&bgl_mat, &mats[m].chunks[c], &[&input.buf, yb], slot);
                steps.push(Step {
                    kind: StepKind::Mat {
                        m,
                        c,
                        x_ld: (x_ld / 4) as u32,
                        y_off: y_off as u32,
                        ld_y: ld_y as u32,
                        mode,
                        last_only,
                        q8e: if ctx.tune.q8_for(mats[m].ty.id()) {
                            q8e
                        } else {
                            0
                        },
                    },
                    bind,
                    when: When::Always,
                    role,
                    slot,
                    key: ctx.tune.matvec_key(
                        mats[m].ty.id(),
                        1,
                        ctx.tune.decode_nr(mats[m].ty.id()),
                        mats[m].cols / 32,
                    ),
                    n: 0,
                });
            }
        };
        // Fused decode mat-vec: RMSNorm of x with `nw` in the prologue.
        // Rows of whole 256-value blocks, so that the fused activation rounding (Q8_K blocks)
        // sees the same blocks as the rounding kernel.
        let fuse_norm = d % 256 == 0 && 4 * d + 4096 <= ctx.facts.shared_mem as usize;
        let actq_on = ctx.tune.act_round;
        // Integer decode groups: the normalised, rounded input once per (norm, rounding kind)
        // into `nq[kind - 3]`, read by every matrix of the group; `normq_live` holds the
        // roundings still valid at a given step count.
        // Past the packed region: one Σx² per 32-value block (`Tune::block_norm`).
        let nq_words = super::actq::q8_words(d) + super::actq::q8_base(d) / 32;
        let nq = [
            scratch(&ctx, "normq8", nq_words),
            scratch(&ctx, "normq8k", nq_words),
        ];
        mem.scratch += 8 * nq_words as u64;
        let nq_base = super::actq::q8_base(d) as u32;
        let normq_live: std::cell::RefCell<Vec<(wgpu::Buffer, u32, usize)>> = Default::default();
        let add_mat_norm = |steps: &mut Vec<Step>,
                            mats: &Vec<GpuMatrix>,
                            m: usize,
                            nw: &wgpu::Buffer,
                            yb: &wgpu::Buffer,
                            y_off: usize,
                            ld_y: usize,
                            mode: u32,
                            role: &'static str| {
            let ty = mats[m].ty;
            let kind = if actq_on {
                super::actq::kind_for_weight(ty)
            } else {
                0
            };
            // One step per weight chunk: bind group (layout, buffers after the weights),
            // activation word offset and kernel.
            let push_chunks = |steps: &mut Vec<Step>,
                               layout: &wgpu::BindGroupLayout,
                               tail: &[&wgpu::Buffer],
                               q8e: u32,
                               key: KernelKey| {
                for c in 0..mats[m].chunks.len() {
                    let slot = steps.len();
                    let mut bufs = vec![&mats[m].chunks[c].buf];
                    bufs.extend_from_slice(tail);
                    keep(slot, &bufs);
                    let bind = bgw(layout, &mats[m].chunks[c], tail, slot);
                    steps.push(Step {
                        kind: StepKind::Mat {
                            m,
                            c,
                            x_ld: (d / 4) as u32,
                            y_off: y_off as u32,
                            ld_y: ld_y as u32,
                            mode,
                            last_only: true,
                            q8e,
                        },
                        bind,
                        when: When::Decode,
                        role,
                        slot,
                        key: key.clone(),
                        n: 0,
                    });
                }
            };
            // Norm and rounding in the mat-vec itself (`Tune::fold_norm`).
            let folded = ctx
                .tune
                .matvec_q8f_key(ty.id(), mats[m].cols / 32, kind, true)
                .filter(|_| ctx.tune.fold_norm);
            if let Some(key) = folded {
                push_chunks(steps, &bgl_matn, &[&x, yb, nw], 0, key);
                return;
            }
            // Persistent mat-vecs that normalise and round the row themselves
            // (`Tune::persist`): no NormQ8 dispatch.
            if let Some(key) = persist_key(&ctx.tune, ty, mats[m].cols, kind, true) {
                push_chunks(steps, &bgl_matn, &[&x, yb, nw], 0, key);
                return;
            }
            if ctx.tune.normq && ctx.tune.q8_for(ty.id()) && matches!(kind, 3 | 4) {
                let buf = &nq[kind as usize - 3];
                let mut live = normq_live.borrow_mut();
                live.retain(|(_, _, at)| *at == steps.len());
                if !live.iter().any(|(b, k, _)| b == nw && *k == kind) {
                    let slot = steps.len();
                    keep(slot, &[&x, nw, buf]);
                    steps.push(Step {
                        kind: StepKind::NormQ8 { q8e: nq_base },
                        bind: bg(&bgl_nq, &[&x, nw, buf], slot),
                        when: When::Decode,
                        role: "norm_q8",
                        slot,
                        key: KernelKey::NormQ8 {
                            k4: (d / 4) as u32,
                            act: kind,
                        },
                        n: 0,
                    });
                    live.push((nw.clone(), kind, 0));
                }
                let key =
                    ctx.tune
                        .matvec_key(ty.id(), 1, ctx.tune.decode_nr(ty.id()), mats[m].cols / 32);
                push_chunks(steps, &bgl_mat, &[buf, yb], nq_base, key);
                for l in live.iter_mut() {
                    l.2 = steps.len();
                }
                return;
            }
            let key = KernelKey::MatVecNorm {
                ty: ty.id(),
                nr: ctx.tune.decode_nr(ty.id()),
                k4: (d / 4) as u32,
                act: kind,
                q8: ctx.tune.q8_for(ty.id()),
            };
            push_chunks(steps, &bgl_matn, &[&x, yb, nw], 0, key);
        };
        // The decode graph's own `ffn_down` step that rounds its f32 input itself
        // (`Tune::fold_actq`): the rounding and matrix steps from `from` (recorded by
        // `add_mat` for both graphs) are left to the batch graph.
        #[allow(clippy::too_many_arguments)]
        let fold_actq = |steps: &mut Vec<Step>,
                         mats: &Vec<GpuMatrix>,
                         from: usize,
                         m: usize,
                         xb: &wgpu::Buffer,
                         yb: &wgpu::Buffer,
                         x_ld: usize,
                         mode: u32,
                         role: &'static str| {
            let ty = mats[m].ty;
            let kind = super::actq::kind_for_weight(ty);
            let persist = persist_key(&ctx.tune, ty, mats[m].cols, kind, false)
                .filter(|_| fuse_norm && actq_on);
            let key = persist.or_else(|| {
                ctx.tune
                    .matvec_q8f_key(ty.id(), mats[m].cols / 32, kind, false)
                    .filter(|_| fuse_norm && actq_on && ctx.tune.fold_actq_for(ty.id()))
            });
            let Some(key) = key else { return };
            // The SwiGLU mat-vec before rounds its output in its last workgroups instead
            // (`Tune::lw_actq`): keep the rounding step and the integer kernel.
            if let (Some(p), Some(a)) = (
                from.checked_sub(1).and_then(|i| steps.get(i)),
                steps.get(from),
            ) {
                if act_epilogue(&ctx.tune, mats, p, a).is_some()
                    || swiglu_q_key(&ctx.tune, mats, p, a).is_some()
                {
                    return;
                }
            }
            for s in &mut steps[from..] {
                s.when = When::Batch;
            }
            for c in 0..mats[m].chunks.len() {
                let slot = steps.len();
                steps.push(Step {
                    kind: StepKind::Mat {
                        m,
                        c,
                        x_ld: (x_ld / 4) as u32,
                        y_off: 0,
                        ld_y: d as u32,
                        mode,
                        last_only: false,
                        q8e: 0,
                    },
                    bind: bgw(&bgl_mat, &mats[m].chunks[c], &[xb, yb], slot),
                    when: When::Decode,
                    role,
                    slot,
                    key: key.clone(),
                    n: 0,
                });
            }
        };
        // Mark the steps from `from` on (batch-graph matrices and their roundings) as
        // batch-only when the decode graph has its own.
        let batch_from = |steps: &mut Vec<Step>, from: usize| {
            if fuse_norm {
                for s in &mut steps[from..] {
                    s.when = When::Batch;
                }
            }
        };
        // gemma3's FFN activation: hid (gate/up rows) → its own buffer, n_ff per token.
        let push_geglu = |steps: &mut Vec<Step>, out: &wgpu::Buffer, split: bool| {
            let slot = steps.len();
            steps.push(Step {
                kind: StepKind::Norm,
                when: When::Always,
                role: "geglu",
                bind: bg(&bgl_mat, &[&hid, &hid, out], slot),
                slot,
                key: KernelKey::Arch(ArchOp::Geglu { split }),
                n: cfg.n_ff as u32,
            });
        };
        for (li, ly) in lidx.iter().enumerate() {
            // Sliding window of this layer (0: none; gemma3's local layers).
            let window = cfg.ops.window_of(li);
            let slot = steps.len();
            *last_norm.borrow_mut() = Some((slot, x.clone(), ly.an.clone(), xn.clone()));
            steps.push(Step {
                kind: StepKind::Norm,
                when: When::Batch,
                role: "attn_norm",
                bind: bg(&bgl_mat, &[&x, &ly.an, &xn], slot),
                slot,
                key: KernelKey::RmsNorm,
                n: d as u32,
            });
            let mut off = 0;
            let b0 = steps.len();
            for &m in &ly.qkv {
                add_mat(
                    &mut steps,
                    &mats,
                    m,
                    &xn,
                    &qkvb,
                    d,
                    off,
                    cfg.qkv_dim(),
                    0,
                    false,
                    "qkv",
                );
                off += mats[m].rows;
            }
            batch_from(&mut steps, b0);
            let mut off = 0;
            for &m in &ly.qkv {
                if fuse_norm {
                    add_mat_norm(
                        &mut steps,
                        &mats,
                        m,
                        &ly.an,
                        &qkvb,
                        off,
                        cfg.qkv_dim(),
                        0,
                        "qkv",
                    );
                }
                off += mats[m].rows;
            }
            if let Some(aux) = &ly.aux {
                // Bias, per-head norms, RoPE (the layer's table) and Q scale: both graphs.
                let cs = match &cs_local {
                    Some(t) if cfg.ops.local_rope(li) => t,
                    _ => &cs_buf,
                };
                let slot = steps.len();
                steps.push(Step {
                    kind: StepKind::QkPrep,
                    when: When::Always,
                    role: "qk_prep",
                    bind: bg(&bgl_prep, &[&qkvb, cs, aux, &tinfo], slot),
                    slot,
                    key: KernelKey::Arch(ArchOp::QkPrep),
                    n: 0,
                });
            }
            let slot = steps.len();
            steps.push(Step {
                kind: StepKind::Rope,
                when: When::Batch,
                role: "rope_kv",
                bind: bg(&bgl_rope, &[&qkvb, &ly.kc, &ly.vc, &cs_buf, &tinfo], slot),
                slot,
                key: KernelKey::Rope,
                n: 0,
            });
            let slot = steps.len();
            steps.push(Step {
                kind: StepKind::Attn,
                when: When::Batch,
                role: "attention",
                bind: bg(&bgl_attn, &[&qkvb, &ly.kc, &ly.vc, &att, &tinfo], slot),
                slot,
                key: attn_key.clone(),
                n: window,
            });
            // Split only where the wo input is rounded (the rounding combines the chunks).
            let split = match &attn_part {
                Some(part)
                    if fuse_norm
                        && actq_on
                        && super::actq::kind_for_weight(mats[ly.wo].ty) != 0 =>
                {
                    Some(part)
                }
                _ => None,
            };
            let nch = if split.is_some() { attn_nch } else { 1 };
            let attn_ctx = if nch > 1 && !ctx.tune.attn_exact {
                (attn_lmin as usize).max(opts.n_ctx.div_ceil(nch as usize)) as u32
            } else {
                opts.n_ctx as u32
            };
            // The last workgroup of each group of 256 / hd heads combines and rounds the wo
            // input itself (`Tune::attn_lastwg`) where a rounding block group is whole heads
            // and the epilogue's workgroup memory fits; else the combine dispatch below.
            let lastwg = split.is_some()
                && ctx.tune.attn_lastwg != 0
                && hd % 4 == 0
                && 256 % hd == 0
                && super::kernels::attn_decode_shared_bytes(attn_ctx, true) <= ctx.facts.shared_mem;
            // ... or, instead, the attention by output segment (`Tune::attn_seg`).
            let seg = split.is_some()
                && ctx.tune.attn_seg
                && super::kernels::attn_seg_fits(
                    &ctx,
                    opts.n_ctx as u32,
                    hd as u32,
                    cfg.q_dim() as u32,
                );
            let lastwg = lastwg || seg;
            let slot = steps.len();
            let attd_at = steps.len();
            steps.push(Step {
                kind: StepKind::AttnDecode {
                    nch,
                    stats: attn_stats as u32,
                    round: [0; 4],
                    wait: None,
                },
                when: When::Decode,
                role: "attention",
                bind: bg(
                    &bgl_attd,
                    &[
                        &qkvb,
                        &ly.kc,
                        &ly.vc,
                        split.unwrap_or(&att),
                        &tinfo,
                        &cs_buf,
                    ],
                    slot,
                ),
                slot,
                key: KernelKey::AttnDecode {
                    ctx: attn_ctx,
                    hd: hd as u32,
                    nch,
                    lmin: attn_lmin,
                    exact: ctx.tune.attn_exact,
                },
                n: window,
            });
            // With post-norms (gemma3) wo and down write their own buffer, added to x by a
            // `post_norm` step; otherwise they accumulate into x (mode 1).
            let (res_buf, res_mode) = match (&post_out, &ly.post) {
                (Some(b), Some(_)) => (b, 0),
                _ => (&x, 1),
            };
            let post_add = |steps: &mut Vec<Step>, w: &wgpu::Buffer| {
                let slot = steps.len();
                steps.push(Step {
                    kind: StepKind::Norm,
                    when: When::Always,
                    role: "post_norm",
                    bind: bg(&bgl_mat, &[res_buf, w, &x], slot),
                    slot,
                    key: KernelKey::Arch(ArchOp::NormAdd),
                    n: d as u32,
                });
            };
            let s0 = steps.len();
            add_mat(
                &mut steps, &mats, ly.wo, &att, res_buf, qd, 0, d, res_mode, false, "wo",
            );
            if let Some(part) = split {
                // The decode graph rounds the wo input in the combine of the split attention;
                // the rounding recorded for both graphs stays for the batch graph only.
                let Some(StepKind::ActQ {
                    kind, k, ld, q8e, ..
                }) = steps.get(s0).map(|s| s.kind)
                else {
                    return Err(Error::msg(
                        "internal: no rounding before wo to combine into",
                    ));
                };
                steps[s0].when = When::Batch;
                let out = act.borrow_mut().scratch_buf(&ctx, kind);
                if lastwg {
                    // The attention's last workgroups write the rounding: no combine step.
                    let st = &mut steps[attd_at];
                    st.kind = StepKind::AttnDecode {
                        nch,
                        stats: attn_stats as u32,
                        round: [k, ld, kind, q8e],
                        wait: None,
                    };
                    keep(
                        st.slot,
                        &[
                            &qkvb, &ly.kc, &ly.vc, part, &tinfo, &cs_buf, &out, &attn_cnt,
                        ],
                    );
                    st.bind = bg(
                        &bgl_attq,
                        &[
                            &qkvb, &ly.kc, &ly.vc, part, &tinfo, &cs_buf, &out, &attn_cnt,
                        ],
                        st.slot,
                    );
                    st.key = if seg {
                        KernelKey::AttnDecodeS {
                            ctx: opts.n_ctx as u32,
                            hd: hd as u32,
                        }
                    } else {
                        KernelKey::AttnDecodeQ {
                            ctx: attn_ctx,
                            hd: hd as u32,
                            nch,
                            lmin: attn_lmin,
                            exact: ctx.tune.attn_exact,
                            reset: ctx.tune.attn_lastwg != 2,
                        }
                    };
                } else {
                    let slot = steps.len();
                    steps.insert(
                        s0,
                        Step {
                            kind: StepKind::AttnCombineQ {
                                kind,
                                k,
                                ld,
                                q8e,
                                stats: attn_stats as u32,
                            },
                            bind: bg(&bgl_mat, &[part, part, &out], slot),
                            when: When::Decode,
                            role: "attn_out_q",
                            slot,
                            key: KernelKey::AttnCombineQ {
                                nch,
                                exact: ctx.tune.attn_exact,
                            },
                            n: 0,
                        },
                    );
                }
            }
            if let Some((pa, _)) = &ly.post {
                post_add(&mut steps, pa);
            }
            let slot = steps.len();
            *last_norm.borrow_mut() = Some((slot, x.clone(), ly.fnm.clone(), xn.clone()));
            steps.push(Step {
                kind: StepKind::Norm,
                when: When::Batch,
                role: "ffn_norm",
                bind: bg(&bgl_mat, &[&x, &ly.fnm, &xn], slot),
                slot,
                key: KernelKey::RmsNorm,
                n: d as u32,
            });
            // SwiGLU in the gate/up epilogue (modes 2 and 3), or for gemma3 plain stores
            // (mode 0) and a `geglu` step writing the FFN activation to its own buffer.
            let gelu = geglu_out.as_ref();
            if ly.gu.len() == 1 {
                let (gu_mode, gu_ld) = match gelu {
                    Some(_) => (0, 2 * cfg.n_ff),
                    None => (2, cfg.n_ff),
                };
                let b0 = steps.len();
                add_mat(
                    &mut steps, &mats, ly.gu[0], &xn, &hid, d, 0, gu_ld, gu_mode, false, "gate_up",
                );
                batch_from(&mut steps, b0);
                if fuse_norm {
                    add_mat_norm(
                        &mut steps, &mats, ly.gu[0], &ly.fnm, &hid, 0, gu_ld, gu_mode, "gate_up",
                    );
                }
                let din = match gelu {
                    Some(g) => {
                        push_geglu(&mut steps, g, false);
                        g
                    }
                    None => &hid,
                };
                let b0 = steps.len();
                add_mat(
                    &mut steps, &mats, ly.down, din, res_buf, cfg.n_ff, 0, d, res_mode, false,
                    "down",
                );
                fold_actq(
                    &mut steps, &mats, b0, ly.down, din, res_buf, cfg.n_ff, res_mode, "down",
                );
            } else {
                // Gate and up of different types: gate → hid[t][ff..2ff], then the up pass
                // (mode 3) writes silu(gate) * up into hid[t][0..ff] (gemma3: up stored, mode
                // 0, and the `geglu` step reads both halves).
                let up_mode = if gelu.is_some() { 0 } else { 3 };
                let b0 = steps.len();
                add_mat(
                    &mut steps,
                    &mats,
                    ly.gu[0],
                    &xn,
                    &hid,
                    d,
                    cfg.n_ff,
                    2 * cfg.n_ff,
                    0,
                    false,
                    "gate",
                );
                add_mat(
                    &mut steps,
                    &mats,
                    ly.gu[1],
                    &xn,
                    &hid,
                    d,
                    0,
                    2 * cfg.n_ff,
                    up_mode,
                    false,
                    "up",
                );
                batch_from(&mut steps, b0);
                if fuse_norm {
                    add_mat_norm(
                        &mut steps,
                        &mats,
                        ly.gu[0],
                        &ly.fnm,
                        &hid,
                        cfg.n_ff,
                        2 * cfg.n_ff,
                        0,
                        "gate",
                    );
                    add_mat_norm(
                        &mut steps,
                        &mats,
                        ly.gu[1],
                        &ly.fnm,
                        &hid,
                        0,
                        2 * cfg.n_ff,
                        up_mode,
                        "up",
                    );
                }
                let (din, dld) = match gelu {
                    Some(g) => {
                        push_geglu(&mut steps, g, true);
                        (g, cfg.n_ff)
                    }
                    None => (&hid, 2 * cfg.n_ff),
                };
                let b0 = steps.len();
                add_mat(
                    &mut steps, &mats, ly.down, din, res_buf, dld, 0, d, res_mode, false, "down",
                );
                fold_actq(
                    &mut steps, &mats, b0, ly.down, din, res_buf, dld, res_mode, "down",
                );
            }
            if let Some((_, pf)) = &ly.post {
                post_add(&mut steps, pf);
            }
        }
        let slot = steps.len();
        steps.push(Step {
            kind: StepKind::Norm,
            when: When::Batch,
            role: "output_norm",
            bind: bg(&bgl_mat, &[&x, &onorm, &xn], slot),
            slot,
            key: KernelKey::RmsNorm,
            n: d as u32,
        });
        let b0 = steps.len();
        add_mat(
            &mut steps, &mats, out_idx, &xn, &logits, d, 0, n_vocab, 0, true, "output",
        );
        batch_from(&mut steps, b0);
        if fuse_norm {
            add_mat_norm(
                &mut steps, &mats, out_idx, &onorm, &logits, 0, n_vocab, 0, "output",
            );
        }
        // The SwiGLU mat-vec rounds its own output for `ffn_down` (`Tune::swiglu_q`): its
        // workgroups own whole activation blocks, so the rounding step after it leaves the
        // decode graph.
        // The storage buffers of the block-rounding and SwiGLU-rounding mat-vecs after their
        // weights, in binding order, by parameter slot (`Tune::mv_join` binds them again).
        let mut bound: std::collections::HashMap<usize, Vec<wgpu::Buffer>> = Default::default();
        let (bgl_sq, pl_sq) =
            buffer_layouts(&ctx, "swiglu rounding", super::kernels::SWIGLU_Q_KINDS);
        if fuse_norm && ctx.tune.swiglu_q != 0 && ctx.tune.swiglu_q_wg <= ctx.facts.max_wg_threads {
            let dec: Vec<usize> = (0..steps.len())
                .filter(|&i| steps[i].when.runs(When::Decode, 1))
                .collect();
            for w in dec.windows(2) {
                let (i, j) = (w[0], w[1]);
                let Some(key) = swiglu_q_key(&ctx.tune, &mats, &steps[i], &steps[j]) else {
                    continue;
                };
                let (bufs, StepKind::Mat { m, c, .. }) = (bufs_of.borrow(), steps[i].kind) else {
                    continue;
                };
                let (Some(pb), Some(ab), Some(ch)) = (
                    bufs.get(&steps[i].slot),
                    bufs.get(&steps[j].slot),
                    mats.get(m).and_then(|mat| mat.chunks.get(c)),
                ) else {
                    return Err(Error::msg(
                        "internal: a SwiGLU step's buffers were not kept",
                    ));
                };
                let bind = bgw(&bgl_sq, ch, &[&pb[1], &pb[2], &ab[2]], steps[i].slot);
                bound.insert(
                    steps[i].slot,
                    vec![pb[1].clone(), pb[2].clone(), ab[2].clone()],
                );
                steps[i].key = key;
                steps[i].bind = bind;
                steps[j].when = When::Batch;
            }
        }
        // Last-workgroup epilogues (`Tune::lw_actq`, `Tune::lw_norm`): a decode mat-vec
        // takes over the rounding or NormQ8 dispatches right after it.
        let (bgl_e, pl_e) = buffer_layouts(&ctx, "mat epilogue", b"rrwwurwww");
        if fuse_norm && (ctx.tune.lw_actq || ctx.tune.lw_norm) {
            // Counter 0: the NormQ8 epilogue's dispatch; 1 + b: activation block b.
            let n_cnt = 2 + cfg.n_ff / 32;
            let counters = super::counters::counter_buffer(&ctx, "last-workgroup counters", n_cnt);
            mem.scratch += 4 * n_cnt as u64;
            let unused_r = scratch(&ctx, "unused (read)", 4);
            let unused_w = scratch(&ctx, "unused (write)", 4);
            let bufs = bufs_of.borrow();
            let get = |s: &Step| -> Result<&Vec<wgpu::Buffer>> {
                bufs.get(&s.slot)
                    .ok_or_else(|| Error::msg("internal: a step's buffers were not kept"))
            };
            // The weight chunk a matrix step binds first.
            let weight_of = |s: &Step| -> Result<&Chunk> {
                match s.kind {
                    StepKind::Mat { m, c, .. } => mats
                        .get(m)
                        .and_then(|mat| mat.chunks.get(c))
                        .ok_or_else(|| Error::msg("internal: a matrix step without its chunk")),
                    _ => Err(Error::msg(
                        "internal: an epilogue on a step without weights",
                    )),
                }
            };
            let dec: Vec<usize> = (0..steps.len())
                .filter(|&i| steps[i].when.runs(When::Decode, 1))
                .collect();
            // Rounding epilogues: the SwiGLU producer and the rounding after it.
            for w in dec.windows(2) {
                let (p, a) = (&steps[w[0]], &steps[w[1]]);
                let Some(key) = act_epilogue(&ctx.tune, &mats, p, a) else {
                    continue;
                };
                let (pb, ab) = (get(p)?, get(a)?);
                let bind = bgw(
                    &bgl_e,
                    weight_of(p)?,
                    &[
                        &pb[1], &pb[2], &counters, &unused_r, &ab[2], &unused_w, &pb[2],
                    ],
                    p.slot,
                );
                let (i, j) = (w[0], w[1]);
                steps[i].key = key;
                steps[i].bind = bind;
                steps[j].when = When::Batch;
            }
            // NormQ8 epilogues: a residual mat-vec and the one or two NormQ8 after it.
            let dec: Vec<usize> = (0..steps.len())
                .filter(|&i| steps[i].when.runs(When::Decode, 1))
                .collect();
            let mut drop = std::collections::HashSet::new();
            let mut after: std::collections::HashMap<usize, Step> = Default::default();
            for (k, &i) in dec.iter().enumerate() {
                // The next group's NormQ8 steps (one per activation kind; a group of mixed
                // kinds has a mat-vec between them, which does not write the residual).
                let mut nqs: Vec<usize> = Vec::new();
                for &j in &dec[k + 1..] {
                    match steps[j].kind {
                        StepKind::NormQ8 { .. } if nqs.len() < 2 => nqs.push(j),
                        StepKind::Mat { mode, .. } if mode != 1 && !nqs.is_empty() => {}
                        _ => break,
                    }
                }
                let p = &steps[i];
                let nq_steps: Vec<&Step> = nqs.iter().map(|&j| &steps[j]).collect();
                let Some(key) = norm_epilogue(&ctx.tune, &mats, p, &nq_steps) else {
                    continue;
                };
                let pb = get(p)?;
                let mut nqb = Vec::new();
                for s in &nq_steps {
                    nqb.push(get(s)?);
                }
                // Same residual row, same norm weights.
                if nqb.is_empty() || nqb.iter().any(|b| b[0] != pb[2] || b[1] != nqb[0][1]) {
                    continue;
                }
                // A decode-only step keeps its slot; a shared one gets a decode copy, in the
                // slot of the first NormQ8 step it replaces.
                let slot = if p.when == When::Decode {
                    p.slot
                } else {
                    nq_steps[0].slot
                };
                let bind = bgw(
                    &bgl_e,
                    weight_of(p)?,
                    &[
                        &pb[1], &pb[2], &counters, &nqb[0][1], &nq[0], &nq[1], &pb[2],
                    ],
                    slot,
                );
                let e = Step {
                    kind: p.kind,
                    when: When::Decode,
                    role: p.role,
                    bind,
                    slot,
                    key,
                    n: p.n,
                };
                drop.extend(nqs.iter().copied());
                if steps[i].when == When::Decode {
                    steps[i] = e;
                } else {
                    steps[i].when = When::Batch;
                    after.insert(i, e);
                }
            }
            let old = std::mem::take(&mut steps);
            for (i, s) in old.into_iter().enumerate() {
                if drop.contains(&i) {
                    continue;
                }
                steps.push(s);
                if let Some(e) = after.remove(&i) {
                    steps.push(e);
                }
            }
            if steps.iter().map(|s| s.slot).max().unwrap_or(0) >= n_slots_est {
                return Err(Error::msg("internal: params slots underestimated"));
            }
        }
        // Decode mat-vecs of one QKV group with different types or several weight chunks in
        // one dispatch (`Tune::qkv_multi`).
        let multi_layouts = if fuse_norm && ctx.tune.qkv_multi != 0 {
            merge_qkv(&ctx, &params, &mats, &mut steps, &bufs_of.borrow())?
        } else {
            Default::default()
        };
        // Residual mat-vecs that round the next norm's input themselves (`Tune::block_norm`).
        let (bgl_bn, pl_bn) =
            buffer_layouts(&ctx, "mat block norm", super::kernels::BLOCK_NORM_KINDS);
        if fuse_norm
            && ctx.tune.block_norm
            && !ctx.tune.lw_norm
            && ctx.tune.mv_wait == 0
            && ctx.tune.persist == 0
            && ctx.tune.prefetch_mb == 0
        {
            block_norm_pass(
                &ctx,
                &mats,
                &mut steps,
                &bufs_of.borrow(),
                &bgl_bn,
                d,
                &mut bound,
                |layout, ch, rest, slot| bgw(layout, ch, rest, slot),
            )?;
        }
        // Decode mat-vecs that build their own rounded input (`Tune::mv_wait`): a NormQ8 or
        // rounding step and the integer mat-vec right after it that reads its output become
        // one dispatch whose first workgroups do the step's work while the others wait.
        let (bgl_w, pl_w) = buffer_layouts(&ctx, "mat wait", b"rwwrurww");
        let wait_bits = ctx.tune.mv_wait;
        if fuse_norm && wait_bits & 3 != 0 && ctx.tune.prefetch_mb == 0 && ctx.tune.persist == 0 {
            mv_wait_pass(
                &ctx,
                &mats,
                &mut steps,
                &bufs_of.borrow(),
                &bgl_w,
                n_slots_est,
                &mut mem,
                |layout, ch, rest, slot| bgw(layout, ch, rest, slot),
            )?;
        }
        // The decode attention inside the QKV mat-vec's dispatch (`Tune::attn_wait`).
        let mut split_binds = std::collections::HashMap::new();
        let pl_wait = if fuse_norm && ctx.tune.persist == 0 && ctx.tune.prefetch_mb == 0 {
            attn_wait_pass(
                &ctx,
                &params,
                &mats,
                &mut steps,
                &bufs_of.borrow(),
                &cfg,
                &mut mem,
                &mut split_binds,
            )?
        } else {
            [None, None]
        };
        // Consecutive residual and SwiGLU mat-vecs in one dispatch (`Tune::mv_join`).
        let joins = if fuse_norm && ctx.tune.persist == 0 && ctx.tune.prefetch_mb == 0 {
            mv_join_pass(&ctx, &params, &mats, &mut steps, &bound, &mut mem)?
        } else {
            Joins::default()
        };
        mem.scratch += act.borrow().bytes;
        if attn_part.is_some() {
            mem.scratch += 4 * (attn_stats + 2 * cfg.n_head * attn_nch as usize) as u64;
        }
        if steps.len() > n_slots_est {
            return Err(Error::msg("internal: params slots underestimated"));
        }
        // L2 prefetch (`Tune::prefetch_mb`): after every decode step that is not a mat-vec and
        // that a group of mat-vecs follows, one dispatch per weight chunk reads the first
        // bytes of the group (up to the budget) with no dependency on the step before it, so
        // the two run side by side; each has its own scratch word, so that no barrier orders
        // it after an earlier prefetch.
        let fused = fuse_norm && ctx.tune.fuse;
        let budget = if fused {
            u64::from(ctx.tune.prefetch_mb) << 20
        } else {
            0
        };
        let (bgl_pf, pl_pf) = buffer_layouts(&ctx, "prefetch", b"rw");
        if budget > 0 {
            let dec: Vec<usize> = (0..steps.len())
                .filter(|&i| steps[i].when.runs(When::Decode, 1))
                .collect();
            let mut after: std::collections::HashMap<usize, Vec<Step>> = Default::default();
            for (k, &i) in dec.iter().enumerate() {
                if matches!(steps[i].kind, StepKind::Mat { .. }) {
                    continue;
                }
                let group: Vec<(usize, usize)> = dec[k + 1..]
                    .iter()
                    .map_while(|&j| match steps[j].kind {
                        StepKind::Mat { m, c, .. } => Some((m, c)),
                        _ => None,
                    })
                    .collect();
                let sizes: Vec<u64> = group.iter().map(|&(m, c)| mats[m].chunks[c].size).collect();
                for (g, bytes) in prefetch_plan(&sizes, budget) {
                    let (m, c) = group[g];
                    let ch = &mats[m].chunks[c];
                    let sink = scratch(&ctx, "prefetch sink", 1);
                    mem.scratch += 4;
                    let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("prefetch"),
                        layout: &bgl_pf,
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                // The chunk's range (of a pooled buffer: `Chunk::binding`).
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: &ch.buf,
                                    offset: ch.offset,
                                    size: std::num::NonZeroU64::new(bytes),
                                }),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: sink.as_entire_binding(),
                            },
                        ],
                    });
                    after.entry(i).or_default().push(Step {
                        kind: StepKind::Prefetch { bytes },
                        when: When::Decode,
                        role: "prefetch",
                        bind,
                        slot: 0,
                        key: KernelKey::Prefetch,
                        n: 0,
                    });
                }
            }
            let old = std::mem::take(&mut steps);
            for (i, s) in old.into_iter().enumerate() {
                steps.push(s);
                if let Some(v) = after.remove(&i) {
                    steps.extend(v);
                }
            }
        }

        let mut kernels = Kernels::default();
        // The pipeline layout of a step's kernel.
        let layout_of = |key: &KernelKey| -> Result<&wgpu::PipelineLayout> {
            Ok(match *key {
                KernelKey::Rope => &pl_rope,
                KernelKey::Attention { .. } | KernelKey::AttentionCoop { .. } => &pl_attn,
                KernelKey::MatVecNorm { .. }
                | KernelKey::MatVecQ8F { norm: true, .. }
                | KernelKey::MatVecQ8P { norm: true, .. } => &pl_matn,
                KernelKey::NormQ8 { .. } => &pl_nq,
                KernelKey::MatVecQ8E { .. } => &pl_e,
                KernelKey::MatVecQ8W { .. } => &pl_w,
                KernelKey::MatVecQ8R { .. } => &pl_sq,
                KernelKey::MatVecQ8N { .. } => &pl_bn,
                KernelKey::AttnDecode { .. } => &pl_attd,
                KernelKey::AttnDecodeQ { .. } | KernelKey::AttnDecodeS { .. } => &pl_attq,
                KernelKey::NormRound { .. } => &pl_nr,
                KernelKey::Arch(ArchOp::QkPrep) => &pl_prep,
                KernelKey::Prefetch => &pl_pf,
                KernelKey::MatVecQ8Multi { n, .. } => match multi_layouts.get(&(n as usize)) {
                    Some(l) => &l.1,
                    None => return Err(Error::msg("internal: multi mat-vec without its layout")),
                },
                KernelKey::MatVecJoin { ref parts, .. } => {
                    match super::kernels::join_kinds(parts).and_then(|k| joins.layouts.get(&k)) {
                        Some(l) => &l.1,
                        None => {
                            return Err(Error::msg("internal: joint mat-vecs without their layout"))
                        }
                    }
                }
                KernelKey::MatVecAttn { ref mv, .. } => match &pl_wait
                    [usize::from(matches!(mv.as_ref(), KernelKey::MatVecQ8Multi { .. }))]
                {
                    Some(l) => l,
                    None => {
                        return Err(Error::msg(
                            "internal: mat-vec + attention without its layout",
                        ))
                    }
                },
                _ => &pl_mat,
            })
        };
        for s in &steps {
            let pl = layout_of(&s.key)?;
            kernels.get_with_layout(&ctx, &s.key, pl)?;
            if let Some(k) = super::kernels::long_context_key(&s.key) {
                kernels.get_with_layout(&ctx, &k, pl)?;
            }
            // The joint step's mat-vec alone (long-context passes: `pass_step_key`).
            if let KernelKey::MatVecAttn { ref mv, .. } = s.key {
                kernels.get_with_layout(&ctx, mv, layout_of(mv)?)?;
            }
            if let KernelKey::MatVec { ty, .. }
            | KernelKey::MatVecSplitK { ty, .. }
            | KernelKey::MatVecQ8 { ty, .. }
            | KernelKey::MatVecQ8U { ty, .. } = s.key
            {
                kernels.get_with_layout(
                    &ctx,
                    &KernelKey::MatVec {
                        ty,
                        nt: ctx.tune.nt_prompt,
                        nr: ctx.tune.nr_prompt,
                    },
                    pl,
                )?;
                kernels.get_with_layout(&ctx, &KernelKey::MatMat { ty }, pl)?;
            }
        }
        let dispatches = steps
            .iter()
            .filter(|s| {
                s.when
                    .runs(if fused { When::Decode } else { When::Batch }, 1)
                    && !inside_another(s, &joins.absorbed)
            })
            .count();
        let _ = (&xn, &qkvb, &att, &hid);
        // Run the queued weight uploads now and wait, so that their staging memory is freed
        // before the first forward: otherwise the first timed calls after a load pay for
        // copying and releasing gigabytes of staging buffers (slow first pp512 repetitions).
        ctx.queue.submit(std::iter::empty());
        ctx.wait()?;
        Ok(GpuModel {
            cpu: CpuTimes::default(),
            prerecord: ctx.tune.prerecord,
            prerecorded: None,
            skip_roles: ctx.tune.skip_roles,
            ring: ctx
                .tune
                .upload_ring
                .then(|| UploadRing::new(&ctx, (cfg.n_embd * 4 + 8) as u64)),
            timeline: None,
            params_for: None,
            disp_for: None,
            fused,
            split_binds,
            joined: joins.absorbed,
            join_words: joins.words,
            ctx,
            label: src.label(),
            cfg,
            opts,
            kernels,
            mats,
            steps,
            layers_n: lidx.len(),
            embd_ty,
            embd,
            embd_row_bytes,
            embd_gpu,
            tids,
            params,
            tinfo,
            x,
            logits,
            logit_rows,
            staging,
            chain: None,
            weight_bytes_per_token: weight_bytes,
            memory: mem,
            dispatches,
        })
    }

    /// The device context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Run `tokens` (each with its sequence id and position) through the model. Returns the
    /// logits of every token when `all_logits`, else of the last token only.
    pub fn forward(&mut self, tokens: &[(u32, u32, u32)], all_logits: bool) -> Result<Vec<f32>> {
        Ok(self.forward_timed(tokens, all_logits, Timestamps::Off)?.0)
    }

    /// [`forward`](Self::forward) with GPU timestamps: `Timestamps::Pass` times the whole
    /// forward pass (one value), `Timestamps::PerStep` puts every dispatch in its own compute
    /// pass and times each (one value per step, in [`step_roles`](Self::step_roles) order).
    /// Returns the logits and the GPU times in nanoseconds. Needs timestamp queries.
    pub fn forward_profiled(
        &mut self,
        tokens: &[(u32, u32, u32)],
        all_logits: bool,
        mode: Timestamps,
    ) -> Result<(Vec<f32>, Vec<f64>)> {
        if !self.ctx.facts.timestamps {
            return Err(Error::msg(format!(
                "adapter '{}' has no timestamp queries: GPU profiling is not available",
                self.ctx.facts.name
            )));
        }
        self.forward_timed(tokens, all_logits, mode)
    }

    /// Record each forward's commands when it is called (`false`), or record the next
    /// forward of the same shape while the GPU runs the current one (`true`, the default
    /// unless GGUFQ_PRERECORD=0). Results are the same either way.
    pub fn set_prerecord(&mut self, on: bool) {
        self.prerecord = on;
        self.prerecorded = None;
    }

    /// Leave the dispatches of the roles `bits` ([`super::kernels::SKIPPABLE_ROLES`]) out of
    /// every following forward (timing only: the outputs are then wrong); 0 restores the
    /// whole graph.
    pub fn set_skip_roles(&mut self, bits: u32) {
        self.skip_roles = bits;
        self.prerecorded = None;
    }

    /// The role bits [`set_skip_roles`](Self::set_skip_roles) set (from GGUFQ_SKIP_ROLES at
    /// load).
    pub fn skip_roles(&self) -> u32 {
        self.skip_roles
    }

    /// Record a host timeline of the next one-token forward calls (the last `cap` of them,
    /// at most 2048): CPU marks of each phase and, where the adapter has timestamp queries,
    /// the GPU begin and end of each call's pass. `None` stops recording. Results are the
    /// same either way.
    pub fn set_host_timeline(&mut self, cap: Option<u32>) {
        self.timeline = cap.map(|c| TimelineRec::new(&self.ctx, c));
        self.prerecorded = None;
    }

    /// The timeline recorded since [`set_host_timeline`](Self::set_host_timeline) (calls
    /// in order, the last `cap` of them); recording goes on.
    pub fn host_timeline(&self) -> Result<HostTimeline> {
        let Some(tl) = &self.timeline else {
            return Ok(HostTimeline::default());
        };
        let cap = tl.cap as u64;
        let first = tl.calls.saturating_sub(cap);
        let slots: Vec<usize> = (first..tl.calls).map(|i| (i % cap) as usize).collect();
        let Some(t0) = slots.first().map(|&k| tl.marks[k][0]) else {
            return Ok(HostTimeline::default());
        };
        let us = |t: Instant| {
            if t >= t0 {
                (t - t0).as_secs_f64() * 1e6
            } else {
                -((t0 - t).as_secs_f64() * 1e6)
            }
        };
        let marks = slots
            .iter()
            .map(|&k| tl.marks[k].map(us))
            .collect::<Vec<[f64; 8]>>();
        let mut gpu = Vec::new();
        if let Some((_, resolve)) = &tl.gpu {
            let read = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("host timeline read"),
                size: resolve.size(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(resolve, 0, &read, 0, resolve.size());
            self.ctx.queue.submit(Some(enc.finish()));
            let raw = self.ctx.read_mapped_u64(&read)?;
            let period = self.ctx.queue.get_timestamp_period() as f64 / 1e3;
            let w = (TL_STRIDE / 8) as usize;
            let base = raw.get(slots[0] * w).copied().unwrap_or(0);
            let at = |v: u64| (v as i128 - base as i128) as f64 * period;
            for &k in &slots {
                match (raw.get(k * w), raw.get(k * w + 1)) {
                    (Some(&b), Some(&e)) => gpu.push((at(b), at(e))),
                    _ => return Err(Error::msg("internal: host timeline slot out of range")),
                }
            }
        }
        Ok(HostTimeline { marks, gpu })
    }

    /// Where the weight chunks live: per chunk (in matrix order), the index of its buffer
    /// among the distinct weight buffers, its byte offset and size; and the number of
    /// distinct buffers (one per chunk unless the weights are pooled, `Tune::weight_pool`).
    pub fn weight_layout(&self) -> (Vec<(usize, u64, u64)>, usize) {
        let mut bufs: Vec<&wgpu::Buffer> = Vec::new();
        let mut out = Vec::new();
        for ch in self.mats.iter().flat_map(|m| &m.chunks) {
            let i = match bufs.iter().position(|b| **b == ch.buf) {
                Some(i) => i,
                None => {
                    bufs.push(&ch.buf);
                    bufs.len() - 1
                }
            };
            out.push((i, ch.offset, ch.size));
        }
        (out, bufs.len())
    }

    /// Dispatches of a one-token forward call (the fused decode graph when in use).
    pub fn dispatches_per_token(&self) -> usize {
        self.decode_steps()
            .filter(|s| !inside_another(s, &self.joined))
            .count()
    }

    /// The kernels a one-token pass of the fused decode graph whose position is `last_pos`
    /// dispatches, in order (the decode attention's depends on the position:
    /// [`Tune::attn_exact_max`]).
    pub fn decode_keys_at(&self, last_pos: u32) -> Vec<KernelKey> {
        let long = self.long_context(last_pos);
        self.steps
            .iter()
            .filter(|s| s.when.runs(When::Decode, 1))
            .filter_map(|s| pass_step_key(s, long, &self.joined))
            .collect()
    }

    /// Whether a pass whose last position is `last_pos` runs the long-context decode
    /// attention ([`Tune::attn_exact_max`], [`super::kernels::long_context_key`]).
    fn long_context(&self, last_pos: u32) -> bool {
        last_pos as u64 + 1 > self.ctx.tune.attn_exact_max as u64
    }

    /// Which graph a forward call of `n` tokens runs.
    fn mode(&self, n: usize) -> When {
        if n == 1 && self.fused {
            When::Decode
        } else {
            When::Batch
        }
    }

    /// Run one-token forwards through the fused decode graph (the default where the adapter
    /// allows it and GGUFQ_FUSE is not 0) or through the batch graph (for comparisons).
    /// Returns whether the fused graph is in use.
    pub fn set_fused_decode(&mut self, on: bool) -> bool {
        self.fused = on && self.steps.iter().any(|s| s.when == When::Decode);
        self.dispatches = self.dispatches_per_token();
        self.fused
    }

    /// The steps a one-token forward runs.
    fn decode_steps(&self) -> impl Iterator<Item = &Step> {
        let mode = self.mode(1);
        self.steps.iter().filter(move |s| s.when.runs(mode, 1))
    }

    /// Kernel of every dispatch of a one-token forward call, in order.
    pub fn step_keys(&self) -> Vec<KernelKey> {
        self.decode_steps().map(|s| s.key.clone()).collect()
    }

    /// Role of every dispatch of a one-token forward call, in order.
    pub fn step_roles(&self) -> Vec<&'static str> {
        self.decode_steps().map(|s| s.role).collect()
    }

    /// Weight bytes (as stored in the file) that every dispatch of a one-token forward reads,
    /// in order (0 for kernels without weights).
    pub fn step_weight_bytes(&self) -> Vec<u64> {
        self.decode_steps()
            .map(|s| match s.kind {
                StepKind::Mat { m, c, .. } => {
                    let mat = &self.mats[m];
                    mat.file_bytes * mat.chunks[c].rows as u64 / mat.rows.max(1) as u64
                }
                StepKind::MatMulti { parts, n, .. } => parts[..n]
                    .iter()
                    .map(|&(m, c, _)| {
                        let mat = &self.mats[m];
                        mat.file_bytes * mat.chunks[c].rows as u64 / mat.rows.max(1) as u64
                    })
                    .sum(),
                _ => 0,
            })
            .collect()
    }

    /// Role of every dispatch of an `n`-token forward call (the batch graph when `n` > 1 or
    /// the decode graph is off), in order.
    pub fn step_roles_for(&self, n: usize) -> Vec<&'static str> {
        let mode = self.mode(n);
        self.steps
            .iter()
            .filter(|s| s.when.runs(mode, n))
            .map(|s| s.role)
            .collect()
    }

    /// Multiply-add FLOPs (2 per weight and token) of every dispatch of an `n`-token forward
    /// call that returns the last token's logits only, in [`step_roles_for`] order (0 for
    /// kernels without weights).
    ///
    /// [`step_roles_for`]: Self::step_roles_for
    pub fn step_flops_for(&self, n: usize) -> Vec<f64> {
        let mode = self.mode(n);
        self.steps
            .iter()
            .filter(|s| s.when.runs(mode, n))
            .map(|s| match s.kind {
                StepKind::Mat {
                    m, c, last_only, ..
                } => {
                    let mat = &self.mats[m];
                    let ntok = if last_only { 1 } else { n };
                    2.0 * mat.chunks[c].rows as f64 * mat.cols as f64 * ntok as f64
                }
                StepKind::MatMulti { parts, n, .. } => parts[..n]
                    .iter()
                    .map(|&(m, c, _)| {
                        let mat = &self.mats[m];
                        2.0 * mat.chunks[c].rows as f64 * mat.cols as f64
                    })
                    .sum(),
                _ => 0.0,
            })
            .collect()
    }

    /// CPU time spent in the forward calls so far (reset with [`reset_cpu_times`]).
    ///
    /// [`reset_cpu_times`]: Self::reset_cpu_times
    pub fn cpu_times(&self) -> CpuTimes {
        self.cpu
    }

    /// Zero the CPU-time counters.
    pub fn reset_cpu_times(&mut self) {
        self.cpu = CpuTimes::default();
    }

    /// Parameters (uploaded to `params` when the batch shape changed) and workgroup counts of
    /// the active steps of an `n`-token call of graph `mode`.
    fn params_and_workgroups(
        &mut self,
        n: usize,
        all_logits: bool,
        mode: When,
    ) -> Result<Vec<(u32, u32)>> {
        let cfg = &self.cfg;
        let d = cfg.n_embd;
        let shape = (n, all_logits, mode == When::Decode);
        // Parameters and workgroup counts depend only on the batch shape: consecutive
        // decode steps reuse them (`Tune::param_cache`).
        let cached = match self.disp_for.take() {
            Some((k, d))
                if k == shape && self.params_for == Some(shape) && self.ctx.tune.param_cache =>
            {
                Some(d)
            }
            _ => None,
        };
        if let Some(d) = cached {
            return Ok(d);
        }
        {
            // Slots are unique but not dense (the last-workgroup epilogues drop steps).
            let n_slots = self.steps.iter().map(|s| s.slot + 1).max().unwrap_or(0);
            let mut pbytes = vec![0u8; n_slots * SLOT];
            let mut disp: Vec<(u32, u32)> = Vec::with_capacity(self.steps.len());
            // The head layout that the RoPE and attention kernels' parameters start with
            // (n_head, n_kv, head size, context, tokens, QKV row, KV row), then `tail`.
            let heads = |tail: &[u32]| -> [u32; 12] {
                let mut q = [0u32; 12];
                q[..7].copy_from_slice(&[
                    cfg.n_head as u32,
                    cfg.n_kv as u32,
                    cfg.head_dim as u32,
                    self.opts.n_ctx as u32,
                    n as u32,
                    cfg.qkv_dim() as u32,
                    (cfg.n_kv * cfg.head_dim) as u32,
                ]);
                q[7..7 + tail.len()].copy_from_slice(tail);
                q
            };
            for s in self.steps.iter().filter(|s| s.when.runs(mode, n)) {
                let p: [u32; 12];
                let wg;
                match s.kind {
                    StepKind::Norm => {
                        p = [s.n, n as u32, cfg.eps.to_bits(), 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        wg = (n as u32, 1);
                    }
                    StepKind::NormRound { q8e } => {
                        // The packed quants only where a one-token mat-vec reads them.
                        let q8 = if n == 1 { q8e } else { 0 };
                        p = [s.n, n as u32, cfg.eps.to_bits(), q8, 0, 0, 0, 0, 0, 0, 0, 0];
                        wg = (n as u32, 1);
                    }
                    StepKind::Embed { c } => {
                        let ch =
                            self.embd_gpu
                                .as_ref()
                                .and_then(|m| m.get(c))
                                .ok_or_else(|| {
                                    Error::msg("internal: embedding step without its chunk")
                                })?;
                        p = super::embed::params(ch, d, n as u32);
                        wg = super::embed::workgroups(d, n as u32);
                    }
                    StepKind::Prefetch { bytes } => {
                        // No parameters.
                        disp.push((super::kernels::prefetch_workgroups(bytes), 1));
                        continue;
                    }
                    StepKind::NormQ8 { q8e } => {
                        // Decode only: one token, residual row 0.
                        p = [0, 0, 0, 0, q8e, 0, 0, 1, 0, 0, 0, cfg.eps.to_bits()];
                        wg = (1, 1);
                    }
                    StepKind::Mat {
                        m,
                        c,
                        x_ld,
                        y_off,
                        ld_y,
                        mode,
                        last_only,
                        q8e,
                    } => {
                        let mat = &self.mats[m];
                        let ch = &mat.chunks[c];
                        let (x_off, ntok) = if last_only && !all_logits {
                            ((n as u32 - 1) * x_ld, 1)
                        } else {
                            (0, n as u32)
                        };
                        let tune = self.ctx.tune;
                        let aux = if mode == 3 { cfg.n_ff as u32 } else { 0 };
                        p = [
                            ch.rows,
                            (mat.cols / 32) as u32,
                            ch.d_off,
                            x_off,
                            // The integer decode kernel finds its packed input from ld_x (it
                            // reads one token).
                            if ntok == 1 && q8e != 0 { q8e } else { x_ld },
                            y_off,
                            ld_y,
                            ntok,
                            mode,
                            ch.row0,
                            aux,
                            cfg.eps.to_bits(),
                        ];
                        wg = if ntok == 1 {
                            let groups = tune.decode_groups(&s.key, mat.ty.id(), ch.rows);
                            match s.key {
                                // Persistent: a fixed number of workgroups walks the groups.
                                KernelKey::MatVecQ8P { .. } => (groups.min(tune.persist.max(1)), 1),
                                _ => (groups, 1),
                            }
                        } else if ntok >= tune.mm_min {
                            let (tr, tt) = super::kernels::matmat_tile(&self.ctx, mat.ty.id());
                            (ch.rows.div_ceil(tr), ntok.div_ceil(tt))
                        } else {
                            (
                                ch.rows.div_ceil(8 * tune.nr_prompt),
                                ntok.div_ceil(tune.nt_prompt),
                            )
                        };
                    }
                    StepKind::MatMulti {
                        parts,
                        n: np,
                        q8e,
                        ld_y,
                        mode,
                    } => {
                        // Decode only (one token): one parameter block per part, as the
                        // part's own `Mat` step would have it.
                        let mut blocks = Vec::with_capacity(np);
                        for &(m, c, y_off) in &parts[..np] {
                            let mat = &self.mats[m];
                            let ch = &mat.chunks[c];
                            blocks.push([
                                ch.rows,
                                (mat.cols / 32) as u32,
                                ch.d_off,
                                0,
                                q8e,
                                y_off,
                                ld_y,
                                1,
                                mode,
                                ch.row0,
                                0,
                                cfg.eps.to_bits(),
                            ]);
                        }
                        for (k, b) in blocks.iter().enumerate().skip(1) {
                            let o = s.slot * SLOT + 48 * k;
                            pbytes[o..o + 48].copy_from_slice(bytemuck::cast_slice(b));
                        }
                        p = blocks[0];
                        wg = match mv_key(&s.key) {
                            KernelKey::MatVecQ8Multi { parts, n, order } => (
                                super::kernels::multi_workgroups(&parts[..*n as usize], *order),
                                1,
                            ),
                            _ => return Err(Error::msg("internal: multi step without its kernel")),
                        };
                    }
                    StepKind::ActQ {
                        kind,
                        k,
                        ld,
                        last_only,
                        q8e,
                    } => {
                        let (x_off, ntok) = if last_only && !all_logits {
                            ((n as u32 - 1) * ld, 1)
                        } else {
                            (0, n as u32)
                        };
                        p = super::actq::params_q8(k, ld, x_off, ntok, kind, q8e);
                        wg = super::actq::workgroups(k, ntok);
                    }
                    StepKind::Rope => {
                        p = heads(&[cfg.kernel_rot() as u32]);
                        let total = (cfg.n_head + 2 * cfg.n_kv) * cfg.head_dim / 2;
                        wg = ((total as u32).div_ceil(64), n as u32);
                    }
                    StepKind::AttnCombineQ {
                        kind,
                        k,
                        ld,
                        q8e,
                        stats,
                    } => {
                        let mut q = super::actq::params_q8(k, ld, 0, n as u32, kind, q8e);
                        q[6] = cfg.head_dim as u32;
                        q[7] = cfg.n_head as u32;
                        q[8] = stats;
                        p = q;
                        wg = super::actq::workgroups(k, n as u32);
                    }
                    StepKind::QkPrep => {
                        p = heads(&[
                            cfg.n_rot as u32,
                            super::arch::prep_flags(&cfg.ops),
                            cfg.eps.to_bits(),
                            cfg.ops.q_scale.to_bits(),
                        ]);
                        wg = (super::arch::prep_slots(cfg), n as u32);
                    }
                    StepKind::Attn | StepKind::AttnDecode { .. } => {
                        let mut q = heads(&[
                            cfg.q_dim() as u32,
                            cfg.kq_scale.to_bits(),
                            cfg.kernel_rot() as u32,
                            match s.kind {
                                StepKind::AttnDecode { stats, .. } => stats,
                                _ => 0,
                            },
                        ]);
                        // The layer's sliding window (`Step::n`; 0 = none).
                        q[11] = s.n;
                        p = q;
                        wg = match (&s.key, s.kind) {
                            (KernelKey::Attention { qt, .. }, _) => {
                                (cfg.n_head as u32, (n as u32).div_ceil(*qt))
                            }
                            (KernelKey::AttentionCoop { .. }, _) => (
                                cfg.n_head as u32,
                                (n as u32).div_ceil(super::kernels::ATTN_COOP_QT),
                            ),
                            (KernelKey::AttnDecodeS { .. }, _) => {
                                (cfg.q_dim() as u32 / 256, n as u32)
                            }
                            (_, StepKind::AttnDecode { nch, .. }) => {
                                (cfg.n_head as u32 * nch, n as u32)
                            }
                            _ => (cfg.n_head as u32, n as u32),
                        };
                    }
                }
                pbytes[s.slot * SLOT..s.slot * SLOT + 48].copy_from_slice(bytemuck::cast_slice(&p));
                if let StepKind::AttnDecode { round, wait, .. } = s.kind {
                    // The epilogue's rounding parameters (zeros without it), and the wait
                    // counters inside the QKV mat-vec's dispatch.
                    pbytes[s.slot * SLOT + 48..s.slot * SLOT + 64]
                        .copy_from_slice(bytemuck::cast_slice(&round));
                    let words = wait.map_or([0; 3], |(slot, zero)| {
                        [slot, zero, u32::from(self.ctx.tune.attn_wait_all)]
                    });
                    pbytes[s.slot * SLOT + 64..s.slot * SLOT + 76]
                        .copy_from_slice(bytemuck::cast_slice(&words));
                }
                if let Some(words) = self
                    .join_words
                    .get(&s.slot)
                    .filter(|_| s.when == When::Decode)
                {
                    // The joint mat-vec dispatch's wait counters (`Tune::mv_join`).
                    pbytes[s.slot * SLOT + 64..s.slot * SLOT + 72]
                        .copy_from_slice(bytemuck::cast_slice(words));
                }
                // The mat-vec's workgroups, then the attention's; a joint mat-vec dispatch's
                // parts in turn.
                let wg = match &s.key {
                    KernelKey::MatVecAttn { ag, .. } => (wg.0 + ag, wg.1),
                    KernelKey::MatVecJoin { groups, .. } => (groups.iter().sum(), wg.1),
                    _ => wg,
                };
                disp.push(wg);
            }
            // The parameters depend only on the batch shape (positions are in the token table):
            // consecutive decode steps upload them once.
            if self.params_for != Some(shape) {
                self.ctx.queue.write_buffer(&self.params, 0, &pbytes);
                self.params_for = Some(shape);
            }
            Ok(disp)
        }
    }

    fn forward_timed(
        &mut self,
        tokens: &[(u32, u32, u32)],
        all_logits: bool,
        ts: Timestamps,
    ) -> Result<(Vec<f32>, Vec<f64>)> {
        let t_start = Instant::now();
        let n = tokens.len();
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        if all_logits && n > self.logit_rows {
            return Err(Error::msg(format!(
                "{n} tokens' logits exceed the {} rows of {} logits that one GPU binding holds",
                self.logit_rows, self.cfg.n_vocab
            )));
        }
        if n > self.opts.n_batch {
            return Err(Error::msg(format!(
                "{n} tokens exceed the batch size {}",
                self.opts.n_batch
            )));
        }
        let d = self.cfg.n_embd;
        let nv = self.cfg.n_vocab;
        // Embeddings on the CPU: the rows are checked here and dequantized below, in parallel
        // for prompts (a 512-token 7B prompt has 8 MB of rows: ~2.7 ms on one core).
        let mut ti = Vec::with_capacity(n * 2);
        for &(tok, seq, pos) in tokens {
            if tok as usize >= nv {
                return Err(Error::msg(format!(
                    "token id {tok} is outside the vocabulary ({nv})"
                )));
            }
            if seq as usize >= self.opts.n_seq || pos as usize >= self.opts.n_ctx {
                return Err(Error::msg(format!(
                    "sequence {seq} position {pos} outside the KV cache ({} × {})",
                    self.opts.n_seq, self.opts.n_ctx
                )));
            }
            ti.push(seq);
            ti.push(pos);
        }
        let mut ring_slot = None;
        if self.embd_gpu.is_some() && n > 1 {
            // The rows are looked up by the `Embed` steps at the start of the pass.
            let ids: Vec<u32> = tokens.iter().map(|t| t.0).collect();
            self.ctx
                .queue
                .write_buffer(&self.tids, 0, bytemuck::cast_slice(&ids));
        } else {
            let mut xs = vec![0f32; n * d];
            let (ety, rb, embd) = (self.embd_ty, self.embd_row_bytes, &self.embd);
            let row = |(dst, &(tok, _, _)): (&mut [f32], &(u32, u32, u32))| {
                let r = tok as usize * rb;
                crate::quant::dequantize_row(ety, &embd[r..r + rb], dst)
            };
            if n >= 16 {
                use rayon::prelude::*;
                xs.par_chunks_mut(d)
                    .zip(tokens.par_iter())
                    .try_for_each(row)?;
            } else {
                xs.chunks_mut(d).zip(tokens.iter()).try_for_each(row)?;
            }
            let es = self.cfg.ops.embd_scale;
            if es != 1.0 {
                // gemma3: × √n_embd after the look-up, as the CPU backend.
                xs.iter_mut().for_each(|v| *v *= es);
            }
            if let (1, Some(ring)) = (n, self.ring.as_mut()) {
                // Row and token table through the upload ring; the command buffer copies
                // them (`record`).
                let mut bytes: Vec<u8> = bytemuck::cast_slice(&xs).to_vec();
                bytes.extend_from_slice(bytemuck::cast_slice(&ti));
                ring.write(&self.ctx, ring.next, &bytes)?;
                ring_slot = Some(ring.next);
            } else {
                self.ctx
                    .queue
                    .write_buffer(&self.x, 0, bytemuck::cast_slice(&xs));
            }
        }
        if ring_slot.is_none() {
            self.ctx
                .queue
                .write_buffer(&self.tinfo, 0, bytemuck::cast_slice(&ti));
        }
        let mode = self.mode(n);
        let shape = (n, all_logits, mode == When::Decode);
        let disp = self.params_and_workgroups(n, all_logits, mode)?;
        let t_prepared = Instant::now();
        let n_q = match ts {
            Timestamps::Off => 0,
            Timestamps::Pass => 2,
            Timestamps::PerStep => 2 * disp.len() as u32,
        };
        if n_q > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(Error::msg(format!(
                "{} dispatches are too many to time one by one",
                self.steps.len()
            )));
        }
        let shape_key = (n, all_logits, mode == When::Decode);
        let n_out = if all_logits { n } else { 1 };
        let bytes = (n_out * nv * 4) as u64;
        // Host timeline slot of this call (one-token plain calls only).
        let tl_on = n == 1 && ts == Timestamps::Off && self.timeline.is_some();
        let tl_slot = |tl: &Option<TimelineRec>, ahead: u64| {
            tl.as_ref()
                .filter(|_| tl_on)
                .map(|t| ((t.calls + ahead) % t.cap as u64) as u32)
        };
        let slots: Slots = (ring_slot, tl_slot(&self.timeline, 0));
        let long = self.long_context(tokens.iter().map(|t| t.2).max().unwrap_or(0));
        let (cmd, ts_bufs) = match self.prerecorded.take() {
            Some((k, sl, lg, cmd))
                if k == shape_key && sl == slots && lg == long && ts == Timestamps::Off =>
            {
                (cmd, None)
            }
            _ => self.record(
                n, all_logits, mode, &disp, ts, n_q, bytes, slots, None, long,
            )?,
        };
        let t_recorded = Instant::now();
        self.ctx.queue.submit(Some(cmd));
        let t_submitted = Instant::now();
        if let Some(ring) = self.ring.as_mut().filter(|_| ring_slot.is_some()) {
            // The other slot, idle since the previous call, is mapped during this wait.
            ring.next = 1 - ring.next;
            ring.request(ring.next);
        }
        if ts == Timestamps::Off && self.prerecord {
            // Record the next forward of the same shape while the GPU runs this one: the
            // embeddings and positions of the next call reach the GPU through queue writes
            // (or the upload ring's other slot), which run before the next submit's commands.
            let next_slots: Slots = (
                ring_slot.and(self.ring.as_ref().map(|r| r.next)),
                tl_slot(&self.timeline, 1),
            );
            let (next, _) = self.record(
                n, all_logits, mode, &disp, ts, 0, bytes, next_slots, None, long,
            )?;
            self.prerecorded = Some((shape_key, next_slots, long, next));
        }
        let t_next = Instant::now();
        let slice = self.staging.slice(0..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send((r, Instant::now()));
            flag.store(true, std::sync::atomic::Ordering::Release);
        });
        if n == 1 {
            self.ctx.wait_for(&done)?;
        } else {
            self.ctx.wait()?;
        }
        let t_done = Instant::now();
        let (mapped, t_cb) = rx
            .recv()
            .map_err(|e| Error::msg(format!("GPU readback: {e}")))?;
        mapped.map_err(|e| Error::msg(format!("GPU readback map failed: {e}")))?;
        let mut out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::msg(format!("GPU readback view: {e:?}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        self.cfg.ops.apply_softcap(&mut out);
        self.staging.unmap();
        let t_read = Instant::now();
        if let (Some(tl), Some(k)) = (self.timeline.as_mut(), slots.1) {
            tl.marks[k as usize] = [
                t_start,
                t_prepared,
                t_recorded,
                t_submitted,
                t_next,
                t_cb,
                t_done,
                t_read,
            ];
            tl.calls += 1;
        }
        let c = &mut self.cpu;
        c.calls += 1;
        c.prepare += t_prepared - t_start;
        c.record += t_recorded - t_prepared;
        c.submit += t_submitted - t_recorded;
        c.wait += t_done - t_submitted;
        c.readback += t_read - t_done;
        let mut times = Vec::new();
        if let Some(read) = ts_bufs {
            let raw = self.ctx.read_mapped_u64(&read)?;
            let period = self.ctx.queue.get_timestamp_period() as f64;
            times = raw
                .chunks_exact(2)
                .map(|p| p[1].saturating_sub(p[0]) as f64 * period)
                .collect();
        }
        self.disp_for = Some((shape, disp));
        Ok((out, times))
    }

    /// Greedy decoding on the GPU: `n` one-token passes of sequence `seq` from position `pos`,
    /// the first fed token `first`, each later one the token its predecessor chose, by the
    /// argmax of its logits taken on the GPU ([`greedy_token`](super::greedy::greedy_token)'s rule). The next token's pass
    /// is submitted before this one's logits are read back, so between two tokens the GPU
    /// does not wait for the host. `on_token(k, logits, next)` gets the logits of pass `k` (as
    /// [`forward`](Self::forward) returns them) and the token they chose, in order; returning
    /// false stops (a pass already submitted still runs, unreported). Returns the number of
    /// passes reported.
    ///
    /// Where the embedding rows are looked up on the host (scaled embeddings, or
    /// `GGUFQ_GPU_EMBD=0`), the same tokens come from one [`forward`](Self::forward) at a
    /// time and [`greedy_loop`](crate::model::greedy_loop) on the host.
    pub fn decode_greedy(
        &mut self,
        first: u32,
        seq: u32,
        pos: u32,
        n: usize,
        on_token: &mut OnToken<'_>,
    ) -> Result<usize> {
        let nv = self.cfg.n_vocab;
        if first as usize >= nv {
            return Err(Error::msg(format!(
                "token id {first} is outside the vocabulary ({nv})"
            )));
        }
        if seq as usize >= self.opts.n_seq || pos as usize + n > self.opts.n_ctx {
            return Err(Error::msg(format!(
                "sequence {seq} positions {pos}..{} outside the KV cache ({} × {})",
                pos as usize + n,
                self.opts.n_seq,
                self.opts.n_ctx
            )));
        }
        if n == 0 {
            return Ok(0);
        }
        let Some(embd) = self.embd_gpu.clone() else {
            let at = |k: usize| pos + k as u32;
            return crate::model::greedy_loop(
                first,
                n,
                |tok, k| self.forward(&[(tok, seq, at(k))], false),
                on_token,
            );
        };
        let bytes = (nv * 4) as u64;
        if self.chain.is_none() {
            let ctx = self.ctx.clone();
            let bind = super::greedy::bind(
                &ctx,
                &mut self.kernels,
                &self.logits,
                &self.tids,
                &self.tinfo,
                nv,
            )?;
            let staging = (0..ctx.tune.greedy_depth.max(2 * ctx.tune.greedy_group))
                .map(|_| {
                    ctx.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("greedy read-back"),
                        size: bytes + 4,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
                .collect();
            self.chain = Some(Chain { bind, staging });
        }
        let mode = self.mode(1);
        let shape = (1, false, mode == When::Decode);
        let disp = self.params_and_workgroups(1, false, mode)?;
        // The look-up steps' parameters for one token (their slots are not part of a
        // one-token call's parameters).
        for s in &self.steps {
            if let StepKind::Embed { c } = s.kind {
                let p = super::embed::params(&embd[c], self.cfg.n_embd, 1);
                self.ctx.queue.write_buffer(
                    &self.params,
                    (s.slot * SLOT) as u64,
                    bytemuck::cast_slice(&p),
                );
            }
        }
        self.prerecorded = None;
        self.ctx
            .queue
            .write_buffer(&self.tids, 0, bytemuck::cast_slice(&[first]));
        self.ctx
            .queue
            .write_buffer(&self.tinfo, 0, bytemuck::cast_slice(&[seq, pos]));
        let result = self.greedy_passes(n, pos, mode, &disp, bytes, on_token);
        if result.is_err() {
            // Leave no pass of this call running behind an error.
            let _ = self.ctx.wait();
        }
        self.disp_for = Some((shape, disp));
        result
    }

    /// The passes of [`decode_greedy`](Self::decode_greedy), up to one per read-back buffer
    /// in flight, handed to the queue in groups of [`Tune::greedy_group`]; with a host
    /// timeline ([`set_host_timeline`](Self::set_host_timeline)) each pass's marks and GPU
    /// begin and end are kept as a one-token call's.
    fn greedy_passes(
        &mut self,
        n: usize,
        pos: u32,
        mode: When,
        disp: &[(u32, u32)],
        bytes: u64,
        on_token: &mut OnToken<'_>,
    ) -> Result<usize> {
        let depth = self.chain.as_ref().map_or(2, |c| c.staging.len());
        let group = (self.ctx.tune.greedy_group.max(1) as usize)
            .min(depth / 2)
            .max(1);
        let one_cb = self.ctx.tune.greedy_cb;
        // Per pass submitted and not yet read: its submission and host marks (record
        // start, recorded, submitted).
        let mut sub: std::collections::VecDeque<(wgpu::SubmissionIndex, [Instant; 3])> =
            std::collections::VecDeque::with_capacity(depth);
        let mut next = 0;
        let tl_base = self.timeline.as_ref().map(|t| t.calls);
        let tl_slot = |m: &Self, k: usize| {
            m.timeline
                .as_ref()
                .zip(tl_base)
                .map(|(t, b)| ((b + k as u64) % t.cap as u64) as u32)
        };
        for k in 0..n {
            while next < n && sub.len() + group.min(n - next) <= depth {
                let g = group.min(n - next);
                let t0 = Instant::now();
                let mut cmds = Vec::with_capacity(g);
                let mut enc = None;
                for j in next..next + g {
                    let slots: Slots = (None, tl_slot(self, j));
                    let long = self.long_context(pos + j as u32);
                    let e = enc.get_or_insert_with(|| {
                        self.ctx.device.create_command_encoder(&Default::default())
                    });
                    self.record_into(
                        e,
                        1,
                        false,
                        mode,
                        disp,
                        Timestamps::Off,
                        None,
                        bytes,
                        slots,
                        Some(j % depth),
                        long,
                    )?;
                    if !one_cb {
                        cmds.extend(enc.take().map(|e| e.finish()));
                    }
                }
                if let Some(e) = enc {
                    cmds.push(e.finish());
                }
                let t1 = Instant::now();
                let idx = self.ctx.queue.submit(cmds);
                let t2 = Instant::now();
                for _ in 0..g {
                    sub.push_back((idx.clone(), [t0, t1, t2]));
                }
                next += g;
            }
            let (idx, marks) = sub
                .pop_front()
                .ok_or_else(|| Error::msg("internal: greedy pass not submitted"))?;
            let buf = &self
                .chain
                .as_ref()
                .ok_or_else(|| Error::msg("internal: greedy decoding not set up"))?
                .staging[k % depth];
            let slice = buf.slice(0..bytes + 4);
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (flag, res) = (done.clone(), Arc::new(std::sync::Mutex::new(None)));
            let res2 = res.clone();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                if let Ok(mut g) = res2.lock() {
                    *g = Some((r, Instant::now()));
                }
                flag.store(true, std::sync::atomic::Ordering::Release);
            });
            self.ctx.wait_for_submission(&done, idx)?;
            let t_done = Instant::now();
            let t_cb = match res.lock().ok().and_then(|mut g| g.take()) {
                Some((Ok(()), t)) => t,
                Some((Err(e), _)) => {
                    return Err(Error::msg(format!("GPU readback map failed: {e}")))
                }
                None => return Err(Error::msg("GPU readback: the map did not complete")),
            };
            let (mut logits, chosen) = {
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| Error::msg(format!("GPU readback view: {e:?}")))?;
                let words: &[f32] = bytemuck::cast_slice(&view);
                let nv = words.len() - 1;
                (words[..nv].to_vec(), words[nv].to_bits())
            };
            buf.unmap();
            self.cfg.ops.apply_softcap(&mut logits);
            let slot = tl_slot(self, k);
            if let (Some(tl), Some(slot)) = (self.timeline.as_mut(), slot) {
                let [t0, t1, t2] = marks;
                tl.marks[slot as usize] = [t0, t0, t1, t2, t2, t_cb, t_done, Instant::now()];
                tl.calls += 1;
            }
            if !on_token(k, &logits, chosen)? {
                if !sub.is_empty() {
                    self.ctx.wait()?;
                }
                return Ok(k + 1);
            }
        }
        Ok(n)
    }

    /// Record a forward of `n` tokens (graph `mode`, workgroup counts `disp` of its active
    /// steps) and the logits copy of `bytes`; with timestamps, also their read-back buffer.
    /// `slots`: the upload-ring slot whose row and token table the call copies first, and
    /// the host-timeline slot whose pass timestamps it writes. `chain`: a pass of
    /// [`decode_greedy`](Self::decode_greedy), which looks its token up on the GPU first, ends
    /// with the argmax and copies the logits and the chosen id to that read-back buffer.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        n: usize,
        all_logits: bool,
        mode: When,
        disp: &[(u32, u32)],
        ts: Timestamps,
        n_q: u32,
        bytes: u64,
        slots: Slots,
        chain: Option<usize>,
        long: bool,
    ) -> Result<(wgpu::CommandBuffer, Option<wgpu::Buffer>)> {
        let qs = (n_q > 0).then(|| {
            self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: n_q,
            })
        });
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.record_into(
            &mut enc,
            n,
            all_logits,
            mode,
            disp,
            ts,
            qs.as_ref(),
            bytes,
            slots,
            chain,
            long,
        )?;
        let ts_bufs = qs.as_ref().map(|q| {
            let size = 8 * n_q as u64;
            let resolve = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps read"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.resolve_query_set(q, 0..n_q, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, size);
            read
        });
        Ok((enc.finish(), ts_bufs))
    }

    /// [`record`](Self::record)'s commands, appended to `enc`; `qs`: the query set of
    /// per-step timestamps (`ts`), resolved by the caller.
    #[allow(clippy::too_many_arguments)]
    fn record_into(
        &self,
        enc: &mut wgpu::CommandEncoder,
        n: usize,
        all_logits: bool,
        mode: When,
        disp: &[(u32, u32)],
        ts: Timestamps,
        qs: Option<&wgpu::QuerySet>,
        bytes: u64,
        slots: Slots,
        chain: Option<usize>,
        long: bool,
    ) -> Result<()> {
        let tw = |i: u32| {
            qs.map(|q| wgpu::ComputePassTimestampWrites {
                query_set: q,
                beginning_of_pass_write_index: Some(2 * i),
                end_of_pass_write_index: Some(2 * i + 1),
            })
        };
        if let (Some(s), Some(ring)) = (slots.0, &self.ring) {
            let xb = (self.cfg.n_embd * 4) as u64;
            enc.copy_buffer_to_buffer(&ring.bufs[s], 0, &self.x, 0, xb);
            enc.copy_buffer_to_buffer(&ring.bufs[s], xb, &self.tinfo, 0, 8);
        }
        // The host timeline's pass timestamps (plain calls only).
        let tl = match (slots.1, &self.timeline) {
            (
                Some(k),
                Some(TimelineRec {
                    gpu: Some((q, r)), ..
                }),
            ) => Some((k, q, r)),
            _ => None,
        };
        let first_tw = tw(0).or(tl.map(|(k, q, _)| wgpu::ComputePassTimestampWrites {
            query_set: q,
            beginning_of_pass_write_index: Some(2 * k),
            end_of_pass_write_index: Some(2 * k + 1),
        }));
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: first_tw,
            })
            .forget_lifetime();
        let greedy = chain.and_then(|k| self.chain.as_ref().map(|c| (c, k)));
        if greedy.is_some() {
            // The one token's embedding row, from the id the previous pass chose.
            let (gx, gy) = super::embed::workgroups(self.cfg.n_embd, 1);
            for s in self
                .steps
                .iter()
                .filter(|s| matches!(s.kind, StepKind::Embed { .. }))
            {
                pass.set_pipeline(self.kernels.cached(&s.key)?);
                pass.set_bind_group(0, &s.bind, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
        }
        let active = self.steps.iter().filter(|s| s.when.runs(mode, n));
        for (i, (s, wg)) in active.zip(disp).enumerate() {
            if ts != Timestamps::PerStep && super::kernels::role_skipped(self.skip_roles, s.role) {
                continue;
            }
            if ts == Timestamps::PerStep && i > 0 {
                drop(pass);
                pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("forward step"),
                        timestamp_writes: tw(i as u32),
                    })
                    .forget_lifetime();
            }
            let Some(joint_key) = pass_step_key(s, long, &self.joined) else {
                // Runs inside the QKV mat-vec's or a joint mat-vec dispatch.
                continue;
            };
            // Past the exact split the joint step runs its mat-vec alone (its own bind
            // group, without the attention's workgroups) and the attention step its own
            // dispatch.
            let (bind, wg) = match (&s.key, &joint_key) {
                (KernelKey::MatVecAttn { ag, .. }, k)
                    if !matches!(k, KernelKey::MatVecAttn { .. }) =>
                {
                    (
                        self.split_binds.get(&s.slot).ok_or_else(|| {
                            Error::msg("internal: a joint QKV step without its own bind group")
                        })?,
                        &(wg.0 - ag, wg.1),
                    )
                }
                _ => (&s.bind, wg),
            };
            let key = match (&s.key, s.kind) {
                (
                    KernelKey::MatVec { ty, .. }
                    | KernelKey::MatVecSplitK { ty, .. }
                    | KernelKey::MatVecQ8 { ty, .. }
                    | KernelKey::MatVecQ8U { ty, .. },
                    StepKind::Mat { last_only, .. },
                ) => {
                    let ntok = if n == 1 || (last_only && !all_logits) {
                        1
                    } else {
                        n as u32
                    };
                    let tune = self.ctx.tune;
                    if ntok == 1 {
                        s.key.clone()
                    } else if ntok >= tune.mm_min {
                        KernelKey::MatMat { ty: *ty }
                    } else {
                        KernelKey::MatVec {
                            ty: *ty,
                            nt: tune.nt_prompt,
                            nr: tune.nr_prompt,
                        }
                    }
                }
                _ => joint_key,
            };
            let pipe = self.kernels.cached(&key)?;
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, bind, &[]);
            pass.dispatch_workgroups(wg.0, wg.1, 1);
        }
        if let Some((c, _)) = greedy {
            pass.set_pipeline(self.kernels.cached(&KernelKey::Argmax)?);
            pass.set_bind_group(0, &c.bind, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        drop(pass);
        if let Some((k, q, r)) = tl {
            enc.resolve_query_set(q, 2 * k..2 * k + 2, r, TL_STRIDE * k as u64);
        }
        if let Some((c, k)) = greedy {
            enc.copy_buffer_to_buffer(&self.logits, 0, &c.staging[k], 0, bytes);
            enc.copy_buffer_to_buffer(&self.tids, 0, &c.staging[k], bytes, 4);
        } else {
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, bytes);
        }
        Ok(())
    }

    /// The weight type holding most bytes, with the others listed: "Q4_K (+Q6_K)".
    pub fn type_summary(&self) -> String {
        let mut by: Vec<(String, u64)> = Vec::new();
        for m in &self.mats {
            match by.iter_mut().find(|(n, _)| n == m.ty.name()) {
                Some(e) => e.1 += m.file_bytes,
                None => by.push((m.ty.name().to_string(), m.file_bytes)),
            }
        }
        by.sort_by_key(|b| std::cmp::Reverse(b.1));
        let mut s = by.first().map(|b| b.0.clone()).unwrap_or_default();
        if by.len() > 1 {
            let rest: Vec<String> = by[1..].iter().map(|b| b.0.clone()).collect();
            s.push_str(&format!(" (+{})", rest.join(",")));
        }
        s
    }

    /// Most tokens whose logits one forward call can return (`all_logits`): the batch size,
    /// or fewer where a large vocabulary does not fit one binding that many times.
    pub fn logit_rows(&self) -> usize {
        self.logit_rows
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers_n
    }
}

/// The parameter block of step slot `slot` (its first `size` bytes) as a uniform binding.
fn param_block(params: &wgpu::Buffer, slot: usize, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: params,
        offset: (slot * SLOT) as u64,
        size: wgpu::BufferSize::new(size),
    })
}

/// A bind group of `res` with the step's parameter slot (64 bytes of `params` at
/// `slot · SLOT`) inserted before the last binding of four, or at 4.
fn bind_with_params<'a>(
    ctx: &GpuContext,
    params: &'a wgpu::Buffer,
    layout: &wgpu::BindGroupLayout,
    mut res: Vec<wgpu::BindingResource<'a>>,
    slot: usize,
) -> wgpu::BindGroup {
    let n = res.len();
    res.insert(
        n.min(if n >= 5 { 4 } else { 3 }),
        param_block(params, slot, 64),
    );
    let entries: Vec<wgpu::BindGroupEntry> = res
        .into_iter()
        .enumerate()
        .map(|(i, resource)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource,
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout,
        entries: &entries,
    })
}

/// A decode SwiGLU mat-vec step and the rounding step of its output right after it, where
/// either can fold the rounding into the mat-vec ([`act_epilogue`], [`swiglu_q_key`]): the
/// integer kernel, one weight chunk whose rows are the `k` outputs' gate/up rows, the output
/// at the start of its buffer, the rounded copy at a 64-word aligned base.
struct SwigluRound {
    mode: u32,
    ty: u32,
    nr: u32,
    spl: u32,
    kind: u32,
    k: u32,
    q8e: u32,
    /// Matrix rows per output: 2 (mode 2, interleaved gate/up rows) or 1 (mode 3, the up
    /// rows; gate stored before).
    rows_per_out: u32,
    /// 32-weight units per matrix row.
    units: usize,
}

/// The [`SwigluRound`] of steps `p` and `a`, if they are one.
fn swiglu_round(mats: &[GpuMatrix], p: &Step, a: &Step) -> Option<SwigluRound> {
    let (
        StepKind::Mat {
            m, mode, y_off: 0, ..
        },
        &KernelKey::MatVecQ8 { ty, nr, spl },
        StepKind::ActQ {
            kind,
            k,
            last_only: false,
            q8e,
            ..
        },
    ) = (p.kind, &p.key, a.kind)
    else {
        return None;
    };
    let rows_per_out = match mode {
        2 => 2,
        3 => 1,
        _ => return None,
    };
    let mat = mats.get(m)?;
    let ok = p.when == When::Decode
        && mat.chunks.len() == 1
        && mat.rows == (rows_per_out * k) as usize
        && q8e != 0
        && q8e % 64 == 0;
    ok.then_some(SwigluRound {
        mode,
        ty,
        nr,
        spl,
        kind,
        k,
        q8e,
        rows_per_out,
        units: mat.cols / 32,
    })
}

/// The [`KernelKey::MatVecQ8E`] key with a rounding epilogue ([`MatEpi::Act`],
/// [`Tune::lw_actq`]) for the decode SwiGLU mat-vec `p` whose output the rounding step `a`
/// rounds next, where it applies: one weight chunk, the integer kernel, the output at the
/// start of its buffer, whole activation blocks each completed by whole workgroups.
fn act_epilogue(tune: &Tune, mats: &[GpuMatrix], p: &Step, a: &Step) -> Option<KernelKey> {
    let SwigluRound {
        mode,
        ty,
        nr,
        spl,
        kind,
        k,
        q8e,
        rows_per_out,
        ..
    } = swiglu_round(mats, p, a)?;
    let bs = match kind {
        3 => 32,
        4 => 256,
        _ => return None,
    };
    let opw = (256 / spl) * nr / rows_per_out;
    let ok = tune.lw_actq && k % bs == 0 && opw > 0 && bs % opw == 0;
    ok.then_some(KernelKey::MatVecQ8E {
        ty,
        nr,
        spl,
        epi: MatEpi::Act {
            kind,
            mode,
            wpb: bs / opw,
            qbase: q8e,
        },
        atomic: tune.lw_atomic,
    })
}

/// The [`KernelKey::MatVecQ8R`] key ([`Tune::swiglu_q`]) for the decode SwiGLU mat-vec `p`
/// whose output the rounding step `a` rounds next, where it applies: one weight chunk, the
/// integer kernel, the output at the start of its buffer, rows that split into whole
/// workgroups of whole activation blocks. Q8_K roundings become 32-value Q8_0 blocks with
/// [`Tune::swiglu_q32k`] (the K-quant `ffn_down` reads per-32 scales either way), or stay
/// blocks of 256 with `swiglu_q` = 2.
fn swiglu_q_key(tune: &Tune, mats: &[GpuMatrix], p: &Step, a: &Step) -> Option<KernelKey> {
    let SwigluRound {
        mode,
        ty,
        nr,
        spl,
        kind,
        k,
        q8e,
        rows_per_out,
        units,
    } = swiglu_round(mats, p, a)?;
    let kind = match kind {
        3 => 3,
        4 if tune.swiglu_q32k => 3,
        4 if tune.swiglu_q == 2 => 4,
        _ => return None,
    };
    let bs: u32 = if kind == 3 { 32 } else { 256 };
    let wg = tune.swiglu_q_wg;
    let spl = match tune.swiglu_q_lanes {
        // Q4_0 rows of 128 or more units in workgroups of 512: 64 lanes per row
        // (`Tune::swiglu_q_wg`, session 17).
        0 if wg == 512 && ty == GgmlType::Q4_0.id() && spl > 64 => 64,
        // Not the plain kernel's 32 lanes of Q8_0 (session 18).
        0 => tune.q8_lanes_of(ty, units, false),
        l => l,
    };
    let nr = match tune.swiglu_q_nr {
        0 => nr,
        n => n,
    };
    let rpw = (wg / spl) * nr;
    let opi = rpw / rows_per_out;
    if opi == 0 || (opi % bs != 0 && bs % opi != 0) {
        return None;
    }
    let passes = if opi >= bs { 1 } else { bs / opi };
    let ok = tune.swiglu_q != 0
        && (rows_per_out * k) % (rpw * passes) == 0
        && k % bs == 0
        && opi * passes <= 4096;
    ok.then_some(KernelKey::MatVecQ8R {
        ty,
        nr,
        spl,
        passes,
        mode,
        kind,
        qbase: q8e,
        wg,
        scaled: false,
    })
}

/// The [`KernelKey::MatVecQ8E`] key with a NormQ8 epilogue ([`MatEpi::Norm`],
/// [`Tune::lw_norm`]) for the residual mat-vec `p` (mode 1) followed by the NormQ8 steps
/// `nqs` (one per activation kind, same norm), where it applies: one weight chunk writing
/// the whole residual row, the integer kernel, rows the register NormQ8 handles.
fn norm_epilogue(tune: &Tune, mats: &[GpuMatrix], p: &Step, nqs: &[&Step]) -> Option<KernelKey> {
    let (
        StepKind::Mat {
            m,
            mode: 1,
            y_off: 0,
            ..
        },
        &KernelKey::MatVecQ8 { ty, nr, spl },
    ) = (p.kind, &p.key)
    else {
        return None;
    };
    let mat = mats.get(m)?;
    let mut kinds = 0;
    let mut k4s = Vec::new();
    let mut bases = Vec::new();
    for s in nqs {
        match (s.kind, &s.key) {
            (
                StepKind::NormQ8 { q8e },
                &KernelKey::NormQ8 {
                    k4,
                    act: a @ (3 | 4),
                },
            ) => {
                let bit = if a == 3 { 1 } else { 2 };
                if kinds & bit != 0 {
                    return None;
                }
                kinds |= bit;
                k4s.push(k4);
                bases.push(q8e);
            }
            _ => return None,
        }
    }
    let k4 = *k4s.first()?;
    let qbase = *bases.first()?;
    let rpw = ((256 / spl) * nr) as usize;
    let ok = tune.lw_norm
        && mat.chunks.len() == 1
        && mat.rows == 4 * k4 as usize
        && k4s.iter().all(|&k| k == k4)
        && bases.iter().all(|&b| b == qbase)
        && k4 % 64 == 0
        && k4 <= 1024;
    ok.then_some(KernelKey::MatVecQ8E {
        ty,
        nr,
        spl,
        epi: MatEpi::Norm {
            k4,
            kinds,
            nwg: mat.rows.div_ceil(rpw) as u32,
            qbase,
        },
        atomic: tune.lw_atomic,
    })
}

/// The prefetch ranges for a group of weight chunks of `sizes` bytes (in the order the
/// mat-vecs read them) under `budget` bytes: (chunk index, bytes from its start), each a
/// multiple of 16 bytes, at least 16, in chunk order, summing to at most `budget`.
pub fn prefetch_plan(sizes: &[u64], budget: u64) -> Vec<(usize, u64)> {
    let mut left = budget;
    let mut out = Vec::new();
    for (g, &size) in sizes.iter().enumerate() {
        let take = size.min(left) & !15;
        if take < 16 {
            break;
        }
        out.push((g, take));
        left -= take;
    }
    out
}

/// The kernel step `s` dispatches in a pass (None: none, it runs inside another step's
/// dispatch). Past [`Tune::attn_exact_max`] positions (`long`) a joint QKV + attention step
/// ([`KernelKey::MatVecAttn`]) runs its mat-vec alone and the attention its own dispatch
/// (flash-decoding proper): on the H100 (session 16) the joint kernel's flash-decoding form
/// differed from the two dispatches in a few steps past position 288 on Q4_K_M
/// (`--kernel-check`), while its exact-split form agrees bit for bit.
fn pass_step_key(
    s: &Step,
    long: bool,
    joined: &std::collections::HashSet<usize>,
) -> Option<KernelKey> {
    match &s.key {
        _ if is_joined(s, joined) => None,
        KernelKey::MatVecAttn { mv, .. } if long => Some((**mv).clone()),
        _ if absorbed(s) && !long => None,
        k => Some(pass_key(k, long)),
    }
}

/// The kernel a step with `key` dispatches in a pass: past [`Tune::attn_exact_max`]
/// positions (`long`) the decode attention is flash-decoding proper
/// ([`super::kernels::long_context_key`]).
fn pass_key(key: &KernelKey, long: bool) -> KernelKey {
    long.then(|| super::kernels::long_context_key(key))
        .flatten()
        .unwrap_or_else(|| key.clone())
}

/// The persistent decode mat-vec ([`KernelKey::MatVecQ8P`], [`Tune::persist`]) for a matrix
/// of `ty` with rows of `cols` values whose input is rounded with activation kind `act`
/// (after RMSNorm when `norm`), where it applies: the type has an integer decode kernel and
/// the input fits ([`super::kernels::persist_fits`]).
fn persist_key(tune: &Tune, ty: GgmlType, cols: usize, act: u32, norm: bool) -> Option<KernelKey> {
    if tune.persist == 0 || !super::kernels::persist_fits((cols / 4) as u32, act, norm) {
        return None;
    }
    match tune.matvec_key(ty.id(), 1, tune.decode_nr(ty.id()), cols / 32) {
        KernelKey::MatVecQ8 { ty, nr, spl } => Some(KernelKey::MatVecQ8P {
            ty,
            nr,
            spl,
            k4: (cols / 4) as u32,
            act,
            norm,
        }),
        _ => None,
    }
}

/// Whether the adapter orders a waiting workgroup's plain loads after the producers'
/// count ([`mv_wait_pass`]): not lavapipe on several threads (its workgroups run on OS
/// threads and, in the tests on 2 cores, read the input before the producer had written it
/// in about half the runs), unless it runs one thread (`LP_NUM_THREADS=1`: workgroup 0
/// first, the others after it). GPUs: yes (the H100, `--kernel-check`).
pub fn wait_is_ordered(ctx: &GpuContext) -> bool {
    !ctx.facts.is_cpu() || std::env::var("LP_NUM_THREADS").as_deref() == Ok("1")
}

/// Invocations, lanes per row and rows per lane group of [`KernelKey::MatVecQ8N`] over rows
/// of `units` 32-weight units of type id `ty` on this adapter ([`Tune::block_norm_wg`],
/// [`Tune::block_norm_nr_for`], [`Tune::block_norm_long`] from 256 units): a workgroup owns 32
/// rows, so the lanes per row are `wg` · NR / 32, at least 32 (more rows per lane group
/// where NR would give fewer: 4 in workgroups of 256). None where the adapter's workgroups
/// hold fewer than 256 invocations.
pub fn block_norm_shape(ctx: &GpuContext, ty: u32, units: usize) -> Option<(u32, u32, u32)> {
    let t = &ctx.tune;
    let (mut wg, mut nr) = (t.block_norm_wg, t.block_norm_nr_for(ty));
    if units >= 256 {
        let (lw, ln) = t.block_norm_long;
        wg = if lw == 0 { wg } else { lw };
        nr = if ln == 0 { nr } else { ln };
    }
    let wg = fit_wg(ctx, wg)?;
    let spl = (wg * nr / 32).max(32);
    Some((wg, spl, spl * 32 / wg))
}

/// [`Tune::block_norm`]'s graph change: every decode NormQ8 step whose decode predecessor is
/// the integer residual mat-vec (mode 1, one weight chunk of the `d` residual rows) writing
/// the row it normalises, and whose readers (the consecutive mat-vec steps right after it
/// that read its output) all run a kernel that can apply 1/rms ([`KernelKey::MatVecQ8`],
/// [`KernelKey::MatVecQ8Multi`], [`KernelKey::MatVecQ8R`]), leaves the decode graph: the
/// residual mat-vec becomes [`KernelKey::MatVecQ8N`] (bound to the NormQ8 step's norm
/// weights and packed output; a decode-only copy where the batch graph shares the step), its
/// readers [`KernelKey::MatVecQ8S`], scaled multi parts or a scaled `MatVecQ8R`. `bufs`
/// holds each step's buffers by slot (mat-vec: weights, input, output; NormQ8: residual,
/// norm weights, packed output). Returns the NormQ8 steps removed.
#[allow(clippy::too_many_arguments)]
fn block_norm_pass(
    ctx: &GpuContext,
    mats: &[GpuMatrix],
    steps: &mut Vec<Step>,
    bufs: &std::collections::HashMap<usize, Vec<wgpu::Buffer>>,
    layout: &wgpu::BindGroupLayout,
    d: usize,
    bound: &mut std::collections::HashMap<usize, Vec<wgpu::Buffer>>,
    bgw: impl Fn(&wgpu::BindGroupLayout, &Chunk, &[&wgpu::Buffer], usize) -> wgpu::BindGroup,
) -> Result<usize> {
    // Each step's shape: `block_norm_shape` (None where the adapter's workgroups are too
    // small, and then no step changes).
    if d % 32 != 0 {
        return Ok(0);
    }
    let dec: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].when.runs(When::Decode, 1))
        .collect();
    let mut drop = std::collections::HashSet::new();
    let mut add: std::collections::HashMap<usize, Step> = Default::default();
    for k in 1..dec.len() {
        let (i, j) = (dec[k - 1], dec[k]);
        let (StepKind::NormQ8 { q8e }, KernelKey::NormQ8 { act, .. }) =
            (steps[j].kind, &steps[j].key)
        else {
            continue;
        };
        let act = *act;
        let (StepKind::Mat { m, c, mode: 1, .. }, KernelKey::MatVecQ8 { ty, .. }) =
            (steps[i].kind, &steps[i].key)
        else {
            continue;
        };
        let ty = *ty;
        let Some((ch, (wg, spl, nr))) = mats
            .get(m)
            .filter(|mat| mat.chunks.len() == 1 && mat.rows == d)
            .and_then(|mat| {
                Some((
                    mat.chunks.get(c)?,
                    block_norm_shape(ctx, ty, mat.cols / 32)?,
                ))
            })
        else {
            continue;
        };
        let (Some(pb), Some(nb)) = (bufs.get(&steps[i].slot), bufs.get(&steps[j].slot)) else {
            return Err(Error::msg(
                "internal: a block-norm step's buffers were not kept",
            ));
        };
        // The NormQ8 step normalises the row this mat-vec adds to.
        if pb.len() < 3 || nb.len() < 3 || pb[2] != nb[0] || ch.row0 != 0 {
            continue;
        }
        // The mat-vecs right after it that read its output (a SwiGLU mat-vec that rounds
        // its own output is followed by `ffn_down`, which does not).
        let reads = |x: usize| {
            matches!(
                steps[x].kind,
                StepKind::Mat { .. } | StepKind::MatMulti { .. }
            ) && bufs.get(&steps[x].slot).and_then(|b| b.get(1)) == Some(&nb[2])
        };
        let readers: Vec<usize> = dec[k + 1..]
            .iter()
            .copied()
            .take_while(|&x| reads(x))
            .collect();
        let scalable = |x: usize| {
            matches!(
                steps[x].key,
                KernelKey::MatVecQ8 { .. }
                    | KernelKey::MatVecQ8Multi { .. }
                    | KernelKey::MatVecQ8R { scaled: false, .. }
            )
        };
        if readers.is_empty() || !readers.iter().all(|&x| scalable(x)) {
            continue;
        }
        // The residual mat-vec of the batch graph stays as it is; the decode graph gets its
        // own step (same slot: the two never run in one call).
        let own = Step {
            kind: steps[i].kind,
            when: When::Decode,
            role: steps[i].role,
            bind: {
                bound.insert(
                    steps[i].slot,
                    vec![pb[1].clone(), pb[2].clone(), nb[1].clone(), nb[2].clone()],
                );
                bgw(layout, ch, &[&pb[1], &pb[2], &nb[1], &nb[2]], steps[i].slot)
            },
            slot: steps[i].slot,
            key: KernelKey::MatVecQ8N {
                ty,
                nr,
                spl,
                wg,
                kind: act,
                qbase: q8e,
            },
            n: steps[i].n,
        };
        if steps[i].when == When::Decode {
            steps[i] = own;
        } else {
            steps[i].when = When::Batch;
            add.insert(i, own);
        }
        for &x in &readers {
            match &mut steps[x].key {
                KernelKey::MatVecQ8 { ty, nr, spl } => {
                    steps[x].key = KernelKey::MatVecQ8S {
                        ty: *ty,
                        nr: *nr,
                        spl: *spl,
                    };
                }
                KernelKey::MatVecQ8Multi { parts, n, .. } => {
                    for p in parts.iter_mut().take(*n as usize) {
                        p.scaled = true;
                    }
                }
                KernelKey::MatVecQ8R { scaled, .. } => *scaled = true,
                _ => {}
            }
        }
        drop.insert(j);
    }
    let removed = drop.len();
    let old = std::mem::take(steps);
    for (i, s) in old.into_iter().enumerate() {
        if !drop.contains(&i) {
            steps.push(s);
        }
        if let Some(s) = add.remove(&i) {
            steps.push(s);
        }
    }
    Ok(removed)
}

/// Whether decode step `s` runs inside a joint mat-vec dispatch ([`KernelKey::MatVecJoin`]:
/// its slot in `set`; a batch step sharing the slot does not).
fn is_joined(s: &Step, set: &std::collections::HashSet<usize>) -> bool {
    s.when == When::Decode && set.contains(&s.slot)
}

/// Whether step `s` runs inside another step's dispatch at short positions ([`absorbed`] or
/// [`is_joined`]): the steps a one-token pass does not count as its own dispatches.
fn inside_another(s: &Step, joined: &std::collections::HashSet<usize>) -> bool {
    absorbed(s) || is_joined(s, joined)
}

/// Whether step `s` runs inside another step's dispatch (the decode attention of
/// [`KernelKey::MatVecAttn`]): its parameters are written, but it is not dispatched.
fn absorbed(s: &Step) -> bool {
    matches!(s.kind, StepKind::AttnDecode { wait: Some(_), .. })
}

/// The mat-vec of `key`: the key itself, or the mat-vec part of [`KernelKey::MatVecAttn`].
fn mv_key(key: &KernelKey) -> &KernelKey {
    match key {
        KernelKey::MatVecAttn { mv, .. } => mv,
        k => k,
    }
}

/// [`Tune::attn_wait`]'s graph change: every decode attention with the last-workgroup
/// epilogue ([`KernelKey::AttnDecodeQ`]) right after the QKV mat-vec that writes its input
/// (one integer mat-vec of one weight chunk holding Q, K and V, whose row groups split at
/// head boundaries) runs in that mat-vec's dispatch ([`KernelKey::MatVecAttn`]): the
/// mat-vec step gets the joint kernel and bind group, the attention step stays for its
/// parameters (and the wait words) but is no longer dispatched. Each layer has a block of
/// wait counters (one per KV head), zeroed by the next layer's dispatch (cyclically), so at
/// least two such pairs are needed; with fewer the graph stays as it is.
#[allow(clippy::too_many_arguments)]
fn attn_wait_pass(
    ctx: &GpuContext,
    params: &wgpu::Buffer,
    mats: &[GpuMatrix],
    steps: &mut [Step],
    bufs: &std::collections::HashMap<usize, Vec<wgpu::Buffer>>,
    cfg: &LlamaConfig,
    mem: &mut MemoryUse,
    split_binds: &mut std::collections::HashMap<usize, wgpu::BindGroup>,
) -> Result<[Option<wgpu::PipelineLayout>; 2]> {
    if !ctx.tune.attn_wait || !wait_is_ordered(ctx) {
        return Ok([None, None]);
    }
    let tune = &ctx.tune;
    let (n_head, n_kv, hd) = (cfg.n_head as u32, cfg.n_kv as u32, cfg.head_dim as u32);
    if n_kv == 0 || n_head % n_kv != 0 {
        return Ok([None, None]);
    }
    let dec: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].when.runs(When::Decode, 1))
        .collect();
    // (mat-vec step, attention step, row groups, query / K / V row groups per KV head,
    // attention workgroups)
    let mut pairs = Vec::new();
    for w in dec.windows(2) {
        let (i, j) = (w[0], w[1]);
        let (StepKind::AttnDecode { nch, .. }, KernelKey::AttnDecodeQ { .. }) =
            (steps[j].kind, &steps[j].key)
        else {
            continue;
        };
        if steps[i].when != When::Decode || steps[j].when != When::Decode {
            continue;
        }
        let (Some(ab), Some(mb)) = (bufs.get(&steps[j].slot), bufs.get(&steps[i].slot)) else {
            continue;
        };
        // The attention reads this mat-vec's output and writes nothing it reads.
        if ab.len() != 8 || mb.len() < 3 || ab[0] != mb[2] || ab[3] == mb[1] || ab[6] == mb[1] {
            continue;
        }
        // Its weight chunks with (rows, first output row), and the rows per workgroup of
        // each: one matrix of Q, K and V, or two (Q+K, then V of a type of its own).
        let one = |m: usize, c: usize| mats.get(m).filter(|x| x.chunks.len() == 1)?.chunks.get(c);
        let rpw = |key: &KernelKey, ty: u32| tune.rows_per_wg(key, tune.decode_nr(ty));
        let parts: Vec<(&super::buffers::Chunk, u32, u32)> = match (&steps[i].key, steps[i].kind) {
            (
                KernelKey::MatVecQ8 { ty, .. } | KernelKey::MatVecQ8S { ty, .. },
                StepKind::Mat { m, c, mode: 0, .. },
            ) if tune.attn_wait_kquant || !super::kernels::is_kquant(*ty) => one(m, c)
                .map(|ch| vec![(ch, 0, rpw(&steps[i].key, *ty))])
                .unwrap_or_default(),
            (
                KernelKey::MatVecQ8Multi {
                    parts: kp,
                    n: 2,
                    order: 0,
                },
                StepKind::MatMulti {
                    parts: sp,
                    n: 2,
                    mode: 0,
                    ..
                },
            ) if tune.attn_wait_multi => sp[..2]
                .iter()
                .zip(&kp[..2])
                .filter_map(|(&(m, c, y_off), k)| Some((one(m, c)?, y_off, rpw(&k.key(), k.ty))))
                .collect(),
            _ => continue,
        };
        let qk = (n_head + n_kv) * hd;
        let shape_ok = match parts.as_slice() {
            [(ch, 0, r)] => ch.row0 == 0 && ch.rows == qk + n_kv * hd && *r != 0 && hd % r == 0,
            [(a, 0, r0), (b, y1, r1)] => {
                a.row0 == 0
                    && b.row0 == 0
                    && a.rows == qk
                    && b.rows == n_kv * hd
                    && *y1 == qk
                    && *r0 != 0
                    && *r1 != 0
                    && hd % r0 == 0
                    && hd % r1 == 0
            }
            _ => false,
        };
        if !shape_ok {
            continue;
        }
        // Row groups that split at head boundaries, over all of Q, K and V.
        let (r0, rv) = (parts[0].2, parts[parts.len() - 1].2);
        let (rq, rk, rv) = ((n_head / n_kv) * hd / r0, hd / r0, hd / rv);
        let mvg = n_kv * (rq + rk + rv);
        // The dispatch's own workgroup count must be the joint kernel's row groups.
        if let KernelKey::MatVecQ8Multi {
            parts: kp,
            n,
            order,
        } = &steps[i].key
        {
            if super::kernels::multi_workgroups(&kp[..*n as usize], *order) != mvg {
                continue;
            }
        }
        // The attention's chunks inside the dispatch (`Tune::attn_split_joint`).
        let qkv_ty = match &steps[i].key {
            KernelKey::MatVecQ8 { ty, .. } | KernelKey::MatVecQ8S { ty, .. } => *ty,
            KernelKey::MatVecQ8Multi { parts: kp, .. } => kp[0].ty,
            _ => continue,
        };
        let (at, jn) = tune.joint_attn_key(&steps[j].key, nch, qkv_ty);
        pairs.push((i, j, mvg, rq, rk, rv, n_head * jn, at));
    }
    if pairs.len() < 2 {
        return Ok([None, None]);
    }
    let np = pairs.len() as u32;
    let counters = super::counters::counter_buffer(ctx, "attn wait counters", (np * n_kv) as usize);
    mem.scratch += 4 * (np * n_kv) as u64;
    // The mat-vec's bindings (weights, input, output, parameters; a second part's weights
    // at 4), then the attention's.
    let mut layouts: [Option<(wgpu::BindGroupLayout, wgpu::PipelineLayout)>; 2] = [None, None];
    for (l, (i, j, mvg, rq, rk, rv, ag, at)) in pairs.into_iter().enumerate() {
        let l = l as u32;
        let multi = matches!(steps[i].kind, StepKind::MatMulti { .. });
        let kinds = super::kernels::multi_binding_kinds(if multi { 2 } else { 1 });
        let top = kinds.len() as u32 - 1;
        let (bgl, _) = layouts[usize::from(multi)].get_or_insert_with(|| {
            buffer_layouts(ctx, "mat attn", &super::kernels::matvec_attn_kinds(&kinds))
        });
        let (mb, ab) = (&bufs[&steps[i].slot], &bufs[&steps[j].slot]);
        let mut entries: Vec<wgpu::BindGroupEntry> = Vec::new();
        match steps[i].kind {
            StepKind::MatMulti { parts: sp, .. } => {
                for (k, &(m, c, _)) in sp[..2].iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: if k == 0 { 0 } else { 3 + k as u32 },
                        resource: mats[m].chunks[c].binding(),
                    });
                }
                entries.push(wgpu::BindGroupEntry {
                    binding: 3,
                    resource: param_block(params, steps[i].slot, 48 * 2),
                });
            }
            StepKind::Mat { m, c, .. } => {
                entries.push(wgpu::BindGroupEntry {
                    binding: 0,
                    resource: mats[m].chunks[c].binding(),
                });
                entries.push(wgpu::BindGroupEntry {
                    binding: 3,
                    resource: param_block(params, steps[i].slot, 64),
                });
            }
            _ => return Err(Error::msg("internal: a joint QKV step that is no mat-vec")),
        }
        for (b, res) in [
            (1, mb[1].as_entire_binding()),
            (2, mb[2].as_entire_binding()),
            (top + 1, ab[1].as_entire_binding()),
            (top + 2, ab[2].as_entire_binding()),
            (top + 3, ab[3].as_entire_binding()),
            (
                top + 4,
                param_block(params, steps[j].slot, super::kernels::MATVEC_ATTN_PARAMS),
            ),
            (top + 5, ab[4].as_entire_binding()),
            (top + 6, ab[5].as_entire_binding()),
            (top + 7, ab[6].as_entire_binding()),
            (top + 8, ab[7].as_entire_binding()),
            (top + 9, counters.as_entire_binding()),
        ] {
            entries.push(wgpu::BindGroupEntry {
                binding: b,
                resource: res,
            });
        }
        let joint = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mat attn"),
            layout: bgl,
            entries: &entries,
        });
        split_binds.insert(steps[i].slot, std::mem::replace(&mut steps[i].bind, joint));
        steps[i].key = KernelKey::MatVecAttn {
            mv: Box::new(steps[i].key.clone()),
            at: Box::new(at),
            mvg,
            ag,
            rq,
            rk,
            rv,
        };
        if let StepKind::AttnDecode { wait, .. } = &mut steps[j].kind {
            *wait = Some((l, (l + np - 1) % np));
        }
    }
    Ok(layouts.map(|l| l.map(|(_, pl)| pl)))
}

/// The joint mat-vec dispatches of [`mv_join_pass`]: their pipeline layouts by binding
/// kinds, the decode steps that run inside another step's dispatch (by slot), and each
/// joint step's block of wait counters and the block it zeroes (by slot).
#[derive(Default)]
struct Joins {
    layouts: std::collections::HashMap<Vec<u8>, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    absorbed: std::collections::HashSet<usize>,
    words: std::collections::HashMap<usize, [u32; 2]>,
}

/// [`Tune::mv_join`]'s graph change: runs of consecutive decode steps of the block-rounding
/// residual mat-vec ([`KernelKey::MatVecQ8N`]) and the rounding SwiGLU mat-vec
/// ([`KernelKey::MatVecQ8R`]), each reading the packed output of the one before (`wo` →
/// `gate_up` → `ffn_down`), of one workgroup size, at most `mv_join` long, become one
/// [`KernelKey::MatVecJoin`] dispatch on the first step (the others stay for their
/// parameters and are not dispatched). Each joint dispatch has a block of wait counters,
/// zeroed by the next one (cyclically), so at least two are needed; all get the length of
/// the shortest. `bound` holds each such step's storage buffers after its weights, in
/// binding order.
fn mv_join_pass(
    ctx: &GpuContext,
    params: &wgpu::Buffer,
    mats: &[GpuMatrix],
    steps: &mut [Step],
    bound: &std::collections::HashMap<usize, Vec<wgpu::Buffer>>,
    mem: &mut MemoryUse,
) -> Result<Joins> {
    let mut joins = Joins::default();
    let tune = &ctx.tune;
    if tune.mv_join < 2 || !wait_is_ordered(ctx) {
        return Ok(joins);
    }
    // The workgroup size of a step that can be a part. Its storage buffers in `bound` are
    // its input first and its packed output last.
    let wg_of = |key: &KernelKey| match key {
        KernelKey::MatVecQ8N { wg, .. }
        | KernelKey::MatVecQ8R {
            wg, scaled: true, ..
        } => Some(*wg),
        _ => None,
    };
    let dec: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].when == When::Decode && !absorbed(&steps[i]))
        .collect();
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut a = 0;
    while a < dec.len() {
        let mut chain = vec![dec[a]];
        while chain.len() < tune.mv_join as usize && a + chain.len() < dec.len() {
            let (p, c) = (*chain.last().unwrap_or(&0), dec[a + chain.len()]);
            let (Some(pw), Some(cw)) = (wg_of(&steps[p].key), wg_of(&steps[c].key)) else {
                break;
            };
            let (Some(pb), Some(cb)) = (bound.get(&steps[p].slot), bound.get(&steps[c].slot))
            else {
                break;
            };
            let alternates = matches!(
                (&steps[p].key, &steps[c].key),
                (KernelKey::MatVecQ8N { .. }, KernelKey::MatVecQ8R { .. })
                    | (KernelKey::MatVecQ8R { .. }, KernelKey::MatVecQ8N { .. })
            );
            if !alternates || pw != cw || pb.last() != cb.first() {
                break;
            }
            chain.push(c);
        }
        a += chain.len();
        if chain.len() >= 2 && wg_of(&steps[chain[0]].key).is_some() {
            chains.push(chain);
        }
    }
    let len = chains.iter().map(|c| c.len()).min().unwrap_or(0);
    if chains.len() < 2 || len < 2 {
        return Ok(joins);
    }
    let nc = (len - 1) as u32;
    let nj = chains.len() as u32;
    let counters =
        super::counters::counter_buffer(ctx, "mat-vec join counters", (nj * nc) as usize);
    mem.scratch += 4 * (nj * nc) as u64;
    for (l, chain) in chains.iter().enumerate() {
        let chain = &chain[..len];
        let mut parts = Vec::with_capacity(len);
        let (mut groups, mut xs, mut ay) = (Vec::new(), Vec::new(), Vec::new());
        let mut shared = 0u64;
        let mut ok = true;
        for (k, &i) in chain.iter().enumerate() {
            let StepKind::Mat { m, c, q8e, .. } = steps[i].kind else {
                ok = false;
                break;
            };
            let (Some(mat), Some(b)) = (mats.get(m), bound.get(&steps[i].slot)) else {
                ok = false;
                break;
            };
            let Some(ch) = mat.chunks.get(c).filter(|_| mat.chunks.len() == 1) else {
                ok = false;
                break;
            };
            groups.push(tune.decode_groups(&steps[i].key, mat.ty.id(), ch.rows));
            // The packed input a part after the first reads (vec4 words): its quants from
            // word q8e, its per-32 scales from q8e + q8e / 4 and, after a block rounding
            // (the SwiGLU part reads wo's), the per-block Σx² after the scales' region.
            let units = (mat.cols / 32) as u32;
            let sums = matches!(steps[i].key, KernelKey::MatVecQ8R { .. });
            let x = [
                q8e / 4,
                (units * 8).div_ceil(4),
                (q8e + q8e / 4) / 4,
                units.div_ceil(4),
                (q8e + q8e / 4 + q8e / 32) / 4,
                if sums { units.div_ceil(4) } else { 0 },
            ];
            if k > 0 {
                let r = bound[&steps[chain[k - 1]].slot]
                    .last()
                    .map_or(0, |b| b.size());
                if q8e % 128 != 0 || x.chunks(2).any(|c| 16 * (c[0] + c[1]) as u64 > r) {
                    ok = false;
                }
                shared += 16 * (x[1] + x[3] + x[5]) as u64;
            }
            xs.push(x);
            // A residual row another part reads and writes goes through atomics.
            let y = &b[1];
            ay.push(
                chain
                    .iter()
                    .any(|&o| o != i && bound[&steps[o].slot].get(1) == Some(y)),
            );
            parts.push(steps[i].key.clone());
        }
        // Read-only bindings of one part must not be written by another (wgpu's usage
        // rules; the first part's input is bound read-write in the joint kernel: its region
        // may be the packed output of a later part, as the attention's and the SwiGLU's
        // roundings share one), and the copied inputs must leave room in workgroup memory.
        let written: Vec<&wgpu::Buffer> = chain
            .iter()
            .flat_map(|i| {
                let b = &bound[&steps[*i].slot];
                [&b[1], &b[b.len() - 1]]
            })
            .collect();
        let read: Vec<&wgpu::Buffer> = chain
            .iter()
            .filter(|i| matches!(steps[**i].key, KernelKey::MatVecQ8N { .. }))
            .map(|i| &bound[&steps[*i].slot][2])
            .collect();
        if !ok
            || read.iter().any(|r| written.contains(r))
            || shared * 2 > ctx.facts.shared_mem as u64
        {
            return Ok(Joins::default());
        }
        let Some(kinds) = super::kernels::join_kinds(&parts) else {
            return Ok(Joins::default());
        };
        let (bgl, _) = joins
            .layouts
            .entry(kinds.clone())
            .or_insert_with(|| buffer_layouts(ctx, "mat join", &kinds));
        let mut entries: Vec<wgpu::BindGroupEntry> = Vec::new();
        let mut base = 0u32;
        for (k, &i) in chain.iter().enumerate() {
            let StepKind::Mat { m, c, .. } = steps[i].kind else {
                return Err(Error::msg(
                    "internal: a joint mat-vec step that is no mat-vec",
                ));
            };
            // The part's bindings as it binds them alone: weights, parameters, and its
            // storage buffers in order (its input left out after the first part).
            let own = super::kernels::join_part_kinds(&steps[i].key).unwrap_or_default();
            let mut bufs = bound[&steps[i].slot].iter();
            for (b, kind) in own.iter().enumerate() {
                let resource = match (b, kind) {
                    (0, _) => mats[m].chunks[c].binding(),
                    (_, b'u') => param_block(params, steps[i].slot, 64),
                    _ => match bufs.next() {
                        Some(_) if k > 0 && b == 1 => continue,
                        Some(buf) => buf.as_entire_binding(),
                        None => return Err(Error::msg("internal: a joint mat-vec part's buffers")),
                    },
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: base + b as u32,
                    resource,
                });
            }
            base += own.len() as u32;
        }
        entries.push(wgpu::BindGroupEntry {
            binding: base,
            resource: counters.as_entire_binding(),
        });
        entries.push(wgpu::BindGroupEntry {
            binding: base + 1,
            resource: param_block(
                params,
                steps[chain[0]].slot,
                super::kernels::MATVEC_JOIN_PARAMS,
            ),
        });
        let joint = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mat join"),
            layout: bgl,
            entries: &entries,
        });
        let first = chain[0];
        steps[first].bind = joint;
        steps[first].key = KernelKey::MatVecJoin {
            parts,
            groups,
            xs,
            ay,
        };
        let l = l as u32;
        joins
            .words
            .insert(steps[first].slot, [l, (l + nj - 1) % nj]);
        for &i in &chain[1..] {
            joins.absorbed.insert(steps[i].slot);
        }
    }
    Ok(joins)
}

/// [`Tune::mv_wait`]'s graph change: every decode NormQ8 step (bit 1) or activation
/// rounding (bit 2) followed by the integer mat-vec of one weight chunk that reads its
/// output becomes one [`KernelKey::MatVecQ8W`] step (in the first one's place; a step the
/// batch graph shares stays there as a batch step). Each such step gets a counter of its
/// own and zeroes the one of the step before it (in decode order, cyclically), so at least
/// two are needed; with fewer the graph stays as it is.
#[allow(clippy::too_many_arguments)]
fn mv_wait_pass(
    ctx: &GpuContext,
    mats: &[GpuMatrix],
    steps: &mut Vec<Step>,
    bufs: &std::collections::HashMap<usize, Vec<wgpu::Buffer>>,
    layout: &wgpu::BindGroupLayout,
    n_slots: usize,
    mem: &mut MemoryUse,
    bgw: impl Fn(&wgpu::BindGroupLayout, &Chunk, &[&wgpu::Buffer], usize) -> wgpu::BindGroup,
) -> Result<()> {
    let bits = ctx.tune.mv_wait;
    if !wait_is_ordered(ctx) {
        return Ok(());
    }
    let dec: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].when.runs(When::Decode, 1))
        .collect();
    // (producer, mat-vec, key, the weight chunk, the buffers after it: packed input,
    // output, f32 input, norm weights)
    let mut pairs = Vec::new();
    for w in dec.windows(2) {
        let (a, b) = (&steps[w[0]], &steps[w[1]]);
        let (KernelKey::MatVecQ8 { ty, nr, spl }, StepKind::Mat { m, q8e, .. }) = (&b.key, b.kind)
        else {
            continue;
        };
        let (Some(ab), Some(bb), Some(mat)) = (bufs.get(&a.slot), bufs.get(&b.slot), mats.get(m))
        else {
            continue;
        };
        if mat.chunks.len() != 1 || q8e == 0 || ab.len() < 3 || bb.len() < 3 {
            continue;
        }
        let (norm, k4, act) = match (a.kind, &a.key) {
            (StepKind::NormQ8 { q8e: e }, KernelKey::NormQ8 { k4, act })
                if bits & 1 != 0 && e == q8e =>
            {
                (true, *k4, *act)
            }
            (
                StepKind::ActQ {
                    kind,
                    k,
                    last_only: false,
                    q8e: e,
                    ..
                },
                KernelKey::ActQ,
            ) if bits & 2 != 0 && e == q8e && k as usize == mat.cols => (false, k / 4, kind),
            _ => continue,
        };
        // The mat-vec reads what the step writes; the f32 input is neither of its buffers.
        let (xr, nw) = if norm {
            (&ab[0], &ab[1])
        } else {
            (&ab[0], &ab[0])
        };
        if bb[1] != ab[2] || xr == &bb[1] || xr == &bb[2] || nw == &bb[1] || nw == &bb[2] {
            continue;
        }
        if !super::kernels::persist_fits(k4, act, norm) || k4 as usize * 4 != mat.cols {
            continue;
        }
        let key = KernelKey::MatVecQ8W {
            ty: *ty,
            nr: *nr,
            spl: *spl,
            k4,
            act,
            norm,
            touch: bits & 4 != 0,
        };
        let ins = [bb[1].clone(), bb[2].clone(), xr.clone(), nw.clone()];
        pairs.push((w[0], w[1], key, &mat.chunks[0], ins));
    }
    if pairs.len() < 2 {
        return Ok(());
    }
    let counters: Vec<wgpu::Buffer> = (0..pairs.len())
        .map(|_| super::counters::counter_buffer(ctx, "mat-vec wait counter", 4))
        .collect();
    mem.scratch += 16 * pairs.len() as u64;
    let mut next_slot = steps.iter().map(|s| s.slot).max().unwrap_or(0) + 1;
    let mut drop = std::collections::HashSet::new();
    let mut put: std::collections::HashMap<usize, Step> = Default::default();
    for (k, (i, j, key, ch, [x, y, xr, nw])) in pairs.into_iter().enumerate() {
        let (a, b) = (&steps[i], &steps[j]);
        // A decode-only step's parameter slot is free once it goes; else a new one.
        let slot = if a.when == When::Decode {
            a.slot
        } else if b.when == When::Decode {
            b.slot
        } else {
            next_slot += 1;
            next_slot - 1
        };
        if slot >= n_slots {
            return Err(Error::msg("internal: params slots underestimated"));
        }
        let prev = &counters[(k + counters.len() - 1) % counters.len()];
        let bind = bgw(layout, ch, &[&x, &y, &xr, &nw, &counters[k], prev], slot);
        let e = Step {
            kind: b.kind,
            when: When::Decode,
            role: b.role,
            bind,
            slot,
            key,
            n: b.n,
        };
        for at in [i, j] {
            if steps[at].when == When::Decode {
                drop.insert(at);
            } else {
                steps[at].when = When::Batch;
            }
        }
        put.insert(j, e);
    }
    let old = std::mem::take(steps);
    for (i, s) in old.into_iter().enumerate() {
        if !drop.contains(&i) {
            steps.push(s);
        }
        if let Some(e) = put.remove(&i) {
            steps.push(e);
        }
    }
    Ok(())
}

/// Bind-group and pipeline layouts of the [`KernelKey::MatVecQ8Multi`] kernels, by part count.
type MultiLayouts = std::collections::HashMap<usize, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>;

/// The [`KernelKey::MatVecQ8Multi`] part of a decode step, where it can be one: a decode-only
/// `qkv` integer mat-vec (one token, store mode 0) reading packed quants. Returns the part
/// (its workgroups counted as the step's own dispatch counts them) and (matrix, chunk, output
/// offset, input base, output stride).
fn multi_part(tune: &Tune, mats: &[GpuMatrix], s: &Step) -> Option<(MultiPart, [u32; 5])> {
    let (
        StepKind::Mat {
            m,
            c,
            y_off,
            ld_y,
            mode: 0,
            q8e,
            ..
        },
        &KernelKey::MatVecQ8 { ty, nr, spl },
    ) = (s.kind, &s.key)
    else {
        return None;
    };
    if s.when != When::Decode || s.role != "qkv" || q8e == 0 {
        return None;
    }
    let ch = mats.get(m)?.chunks.get(c)?;
    let wgs = ch
        .rows
        .div_ceil(tune.rows_per_wg(&s.key, tune.decode_nr(ty)));
    Some((
        MultiPart {
            ty,
            nr,
            spl,
            wgs,
            scaled: false,
        },
        [m as u32, c as u32, y_off, q8e, ld_y],
    ))
}

/// Replaces every run of consecutive decode `qkv` mat-vecs that read the same rounded input
/// ([`multi_part`]: Q+K and V of different types, weight chunks) by
/// [`KernelKey::MatVecQ8Multi`] steps of up to [`MULTI_MAX`] parts, each in the slot of the
/// run's first step. `bufs` holds each step's buffers by slot (weights, input, output).
/// Returns the layouts the new steps use.
fn merge_qkv(
    ctx: &GpuContext,
    params: &wgpu::Buffer,
    mats: &[GpuMatrix],
    steps: &mut Vec<Step>,
    bufs: &std::collections::HashMap<usize, Vec<wgpu::Buffer>>,
) -> Result<MultiLayouts> {
    let tune = &ctx.tune;
    let mut layouts = MultiLayouts::new();
    let dec: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].when.runs(When::Decode, 1))
        .collect();
    // Runs: (step index, part, ids), consecutive in the decode graph, same input and output.
    let mut runs: Vec<Vec<(usize, MultiPart, [u32; 5])>> = Vec::new();
    let mut open = false;
    for &i in &dec {
        let Some((part, ids)) = multi_part(tune, mats, &steps[i]) else {
            open = false;
            continue;
        };
        let io = |i: usize| bufs.get(&steps[i].slot).and_then(|b| b.get(1..3));
        let joins = match runs.last().and_then(|r| r.last()) {
            Some(&(j, _, jids)) if open => {
                io(i).is_some() && io(i) == io(j) && ids[3..] == jids[3..]
            }
            _ => false,
        };
        if joins {
            if let Some(r) = runs.last_mut() {
                r.push((i, part, ids));
            }
        } else {
            runs.push(vec![(i, part, ids)]);
        }
        open = true;
    }
    let mut drop = std::collections::HashSet::new();
    for run in &runs {
        for piece in run.chunks(MULTI_MAX) {
            if piece.len() < 2 {
                continue;
            }
            let n = piece.len();
            let first = &steps[piece[0].0];
            let b = bufs
                .get(&first.slot)
                .filter(|b| b.len() >= 3)
                .ok_or_else(|| Error::msg("internal: a qkv step's buffers were not kept"))?;
            let (bgl, _) = layouts.entry(n).or_insert_with(|| {
                buffer_layouts(ctx, "mat multi", &super::kernels::multi_binding_kinds(n))
            });
            let mut kparts = [MultiPart::default(); MULTI_MAX];
            let mut sparts = [(0usize, 0usize, 0u32); MULTI_MAX];
            let mut entries = Vec::new();
            for (k, &(_, part, ids)) in piece.iter().enumerate() {
                kparts[k] = part;
                sparts[k] = (ids[0] as usize, ids[1] as usize, ids[2]);
                let ch = mats
                    .get(ids[0] as usize)
                    .and_then(|m| m.chunks.get(ids[1] as usize))
                    .ok_or_else(|| Error::msg("internal: a qkv step without its chunk"))?;
                entries.push(wgpu::BindGroupEntry {
                    binding: if k == 0 { 0 } else { 3 + k as u32 },
                    resource: ch.binding(),
                });
            }
            entries.push(wgpu::BindGroupEntry {
                binding: 1,
                resource: b[1].as_entire_binding(),
            });
            entries.push(wgpu::BindGroupEntry {
                binding: 2,
                resource: b[2].as_entire_binding(),
            });
            entries.push(wgpu::BindGroupEntry {
                binding: 3,
                resource: param_block(params, first.slot, 48 * n as u64),
            });
            let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("mat multi"),
                layout: bgl,
                entries: &entries,
            });
            let ids = piece[0].2;
            let step = Step {
                kind: StepKind::MatMulti {
                    parts: sparts,
                    n,
                    q8e: ids[3],
                    ld_y: ids[4],
                    mode: 0,
                },
                when: When::Decode,
                role: first.role,
                bind,
                slot: first.slot,
                key: KernelKey::MatVecQ8Multi {
                    parts: kparts,
                    n: n as u32,
                    order: tune.qkv_multi.saturating_sub(1).min(1),
                },
                n: 0,
            };
            steps[piece[0].0] = step;
            drop.extend(piece[1..].iter().map(|p| p.0));
        }
    }
    let old = std::mem::take(steps);
    steps.extend(
        old.into_iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(_, s)| s),
    );
    Ok(layouts)
}
