//! The CPU backend: multi-threaded (rayon) llama-family forward pass over quantized weights.
//!
//! Matrix products follow llama.cpp's CPU numerics: activations are rounded to the type
//! llama.cpp's `vec_dot` pairs with the weight type (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for
//! Q4_1/Q5_1, Q8_K for the K-quants, F16/BF16 for F16/BF16, none for F32), weights are
//! dequantized exactly in tiles of rows, and the tile product runs as an f32 GEMM. This gives
//! the same values as llama.cpp's integer dot products up to summation order, while the GEMM
//! keeps batched prompt processing fast.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::backend::{Backend, LogitsWanted};
use crate::model::hparams::{HParams, RopeMode};
use crate::model::weights::{LlamaWeights, Weight};
use crate::model::Model;
use crate::quant::GgmlType;

/// Rows of a weight matrix dequantized per task.
const TILE_ROWS: usize = 64;

/// Which rounding llama.cpp applies to activations before a dot product with a weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// f32 activations (F32 weights).
    None,
    /// Rounded to f16.
    F16,
    /// Rounded to bf16.
    Bf16,
    /// Q8_0 blocks of 32 (f16 scale).
    Q8_0,
    /// Q8_1 blocks of 32 (f16 scale; the sum term does not change the values).
    Q8_1,
    /// Q8_K blocks of 256 (f32 scale).
    Q8K,
}

impl ActQuant {
    /// llama.cpp's `vec_dot_type` for a weight type.
    pub fn for_weight(ty: GgmlType) -> Result<ActQuant> {
        use GgmlType as T;
        Ok(match ty {
            T::F32 => ActQuant::None,
            T::F16 => ActQuant::F16,
            T::BF16 => ActQuant::Bf16,
            T::Q4_0 | T::Q5_0 | T::Q8_0 => ActQuant::Q8_0,
            T::Q4_1 | T::Q5_1 => ActQuant::Q8_1,
            T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K => ActQuant::Q8K,
            other => {
                return Err(Error::msg(format!(
                    "the CPU runtime does not support tensor type {}",
                    other.name()
                )))
            }
        })
    }

    /// Round `x` (one row) in place as llama.cpp's activation quantization would.
    pub fn apply(self, x: &mut [f32]) {
        match self {
            ActQuant::None => {}
            ActQuant::F16 => x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32()),
            ActQuant::Bf16 => x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
            ActQuant::Q8_0 | ActQuant::Q8_1 => {
                for b in x.chunks_mut(32) {
                    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let dh = f16::from_f32(d).to_f32();
                    for v in b.iter_mut() {
                        *v = (*v * id).round_ties_even() * dh;
                    }
                }
            }
            ActQuant::Q8K => {
                for b in x.chunks_mut(256) {
                    let mut amax = 0f32;
                    let mut max = 0f32;
                    for &v in b.iter() {
                        if v.abs() > amax {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    if amax == 0.0 {
                        b.iter_mut().for_each(|v| *v = 0.0);
                        continue;
                    }
                    let iscale = -127.0 / max;
                    let d = 1.0 / iscale;
                    for v in b.iter_mut() {
                        let q = ((iscale * *v).round_ties_even() as i32).min(127);
                        *v = q as f32 * d;
                    }
                }
            }
        }
    }
}

/// Dequantize whole rows of `ty` from `src` into `dst` (length a multiple of the block size).
pub fn dequantize_rows(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    use candle_core::quantized::k_quants::{
        BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
        BlockQ6K, BlockQ8_0, GgmlType as G,
    };
    fn go<B: G>(src: &[u8], dst: &mut [f32], bs: usize) -> Result<()> {
        let nb = dst.len() / bs;
        let need = nb * std::mem::size_of::<B>();
        if dst.len() % bs != 0 || src.len() < need {
            return Err(Error::msg(format!(
                "dequantize: {} bytes for {} values does not fit blocks of {bs}",
                src.len(),
                dst.len()
            )));
        }
        if (src.as_ptr() as usize) % std::mem::align_of::<B>() == 0 {
            // SAFETY: B is a plain `repr(C)` block of integers and f16s (any bit pattern is
            // valid), the pointer is aligned for B and `need` bytes are in bounds.
            let blocks = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const B, nb) };
            B::to_float(blocks, dst);
        } else {
            let mut tmp: Vec<B> = Vec::with_capacity(nb);
            // SAFETY: copy `need` bytes into fresh, aligned storage for `nb` blocks.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), tmp.as_mut_ptr() as *mut u8, need);
                tmp.set_len(nb);
            }
            B::to_float(&tmp, dst);
        }
        Ok(())
    }
    use GgmlType as T;
    match ty {
        T::F32 => {
            let n = dst.len();
            if src.len() < n * 4 {
                return Err(Error::msg("dequantize: short F32 data"));
            }
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            Ok(())
        }
        T::F16 | T::BF16 => {
            if src.len() < dst.len() * 2 {
                return Err(Error::msg("dequantize: short F16/BF16 data"));
            }
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                *d = if ty == T::F16 {
                    f16::from_bits(bits).to_f32()
                } else {
                    bf16::from_bits(bits).to_f32()
                };
            }
            Ok(())
        }
        T::Q4_0 => go::<BlockQ4_0>(src, dst, 32),
        T::Q4_1 => go::<BlockQ4_1>(src, dst, 32),
        T::Q5_0 => go::<BlockQ5_0>(src, dst, 32),
        T::Q5_1 => go::<BlockQ5_1>(src, dst, 32),
        T::Q8_0 => go::<BlockQ8_0>(src, dst, 32),
        T::Q2_K => go::<BlockQ2K>(src, dst, 256),
        T::Q3_K => go::<BlockQ3K>(src, dst, 256),
        T::Q4_K => go::<BlockQ4K>(src, dst, 256),
        T::Q5_K => go::<BlockQ5K>(src, dst, 256),
        T::Q6_K => go::<BlockQ6K>(src, dst, 256),
        other => Err(Error::msg(format!(
            "the CPU runtime does not support tensor type {}",
            other.name()
        ))),
    }
}

/// A weight matrix ready for the CPU: raw bytes plus layout.
struct Mat {
    ty: GgmlType,
    act: ActQuant,
    k: usize,
    m: usize,
    row_bytes: usize,
    w: Weight,
}

impl Mat {
    fn new(w: &Weight) -> Result<Mat> {
        let ty = w.ty();
        let k = w.row_len();
        let row_bytes = ty
            .bytes_for(k as u64)
            .filter(|_| k as u64 % ty.block_size() == 0)
            .ok_or_else(|| Error::Tensor {
                tensor: w.name().to_string(),
                msg: format!(
                    "row length {k} is not a multiple of the {} block size",
                    ty.name()
                ),
            })? as usize;
        let act = ActQuant::for_weight(ty).map_err(|e| Error::Tensor {
            tensor: w.name().into(),
            msg: e.to_string(),
        })?;
        w.data()?;
        Ok(Mat {
            ty,
            act,
            k,
            m: w.n_rows(),
            row_bytes,
            w: w.clone(),
        })
    }

    /// `out[n × m] = xq[n × k] · Wᵀ` where `xq` has already been rounded with `self.act`.
    fn matmul(&self, xq: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (k, m) = (self.k, self.m);
        debug_assert_eq!(xq.len(), n * k);
        debug_assert_eq!(out.len(), n * m);
        let data = self.w.data()?;
        let tiles: Vec<usize> = (0..m).step_by(TILE_ROWS).collect();
        let results: Vec<Result<(usize, Vec<f32>)>> = tiles
            .par_iter()
            .map(|&r0| {
                let rows = TILE_ROWS.min(m - r0);
                let mut wt = vec![0f32; rows * k];
                dequantize_rows(
                    self.ty,
                    &data[r0 * self.row_bytes..(r0 + rows) * self.row_bytes],
                    &mut wt,
                )?;
                let mut o = vec![0f32; n * rows];
                // o[n × rows] = xq[n × k] · wt[rows × k]ᵀ
                // SAFETY: all pointers cover the stated extents with the given strides.
                unsafe {
                    gemm::gemm(
                        n,
                        rows,
                        k,
                        o.as_mut_ptr(),
                        1,
                        rows as isize,
                        false,
                        xq.as_ptr(),
                        1,
                        k as isize,
                        wt.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                Ok((r0, o))
            })
            .collect();
        for r in results {
            let (r0, o) = r?;
            let rows = o.len() / n.max(1);
            for i in 0..n {
                out[i * m + r0..i * m + r0 + rows].copy_from_slice(&o[i * rows..(i + 1) * rows]);
            }
        }
        Ok(())
    }
}

fn load_vec(w: &Weight) -> Result<Vec<f32>> {
    let mut v = vec![0f32; w.meta.n_elements() as usize];
    dequantize_rows(w.ty(), w.data()?, &mut v)?;
    Ok(v)
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// The CPU backend.
pub struct CpuBackend {
    hp: HParams,
    pool: std::sync::Arc<rayon::ThreadPool>,
    threads: usize,
    tok_embd: Weight,
    tok_row_bytes: usize,
    output_norm: Vec<f32>,
    output: Mat,
    rope_freqs: Option<Vec<f32>>,
    layers: Vec<Layer>,
    n_ctx: usize,
    n_past: usize,
    /// Per layer: [n_ctx × kv_dim], values rounded to f16 (llama.cpp's f16 KV cache).
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
}

/// RMSNorm of each row of `x` (width `w.len()`), times `w`, like ggml (sum in f64).
fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_mut(d) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let mean = (ss / d as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

impl CpuBackend {
    /// Load `model` for the CPU with a KV cache of `n_ctx` tokens and `threads` threads
    /// (0 = all cores).
    pub fn new(model: &Model, n_ctx: usize, threads: usize) -> Result<CpuBackend> {
        let hp = model.hparams.clone();
        let w: &LlamaWeights = &model.weights;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::msg(format!("thread pool: {e}")))?;
        let threads = pool.current_num_threads();
        let pool = std::sync::Arc::new(pool);
        let opt = |o: &Option<Weight>| o.as_ref().map(load_vec).transpose();
        let mut layers = Vec::with_capacity(hp.n_layer);
        for l in &w.layers {
            layers.push(Layer {
                attn_norm: load_vec(&l.attn_norm)?,
                wq: Mat::new(&l.wq)?,
                wk: Mat::new(&l.wk)?,
                wv: Mat::new(&l.wv)?,
                wo: Mat::new(&l.wo)?,
                bq: opt(&l.bq)?,
                bk: opt(&l.bk)?,
                bv: opt(&l.bv)?,
                q_norm: opt(&l.q_norm)?,
                k_norm: opt(&l.k_norm)?,
                ffn_norm: load_vec(&l.ffn_norm)?,
                gate: Mat::new(&l.gate)?,
                up: Mat::new(&l.up)?,
                down: Mat::new(&l.down)?,
            });
        }
        let te = &w.tok_embd;
        let tok_row_bytes = te
            .ty()
            .bytes_for(hp.n_embd as u64)
            .filter(|_| hp.n_embd as u64 % te.ty().block_size() == 0)
            .ok_or_else(|| Error::Tensor {
                tensor: te.name().into(),
                msg: "row not a whole number of blocks".into(),
            })? as usize;
        te.data()?;
        let kv = hp.kv_dim();
        Ok(CpuBackend {
            output_norm: load_vec(&w.output_norm)?,
            output: Mat::new(&w.output)?,
            rope_freqs: opt(&w.rope_freqs)?,
            tok_embd: te.clone(),
            tok_row_bytes,
            layers,
            n_ctx,
            n_past: 0,
            k_cache: (0..hp.n_layer).map(|_| vec![0f32; n_ctx * kv]).collect(),
            v_cache: (0..hp.n_layer).map(|_| vec![0f32; n_ctx * kv]).collect(),
            hp,
            pool,
            threads,
        })
    }

    /// Rotate `x` ([n × n_heads × head_dim]) for positions `pos0..pos0+n`, like ggml_rope_ext.
    fn rope(&self, x: &mut [f32], n_heads: usize, pos0: usize) {
        let hp = &self.hp;
        let hd = hp.head_dim;
        let nd = hp.rope_dim;
        let theta_scale = hp.rope_freq_base.powf(-2.0 / nd as f32);
        let mut cs = vec![(0f32, 0f32); nd / 2];
        for (t, row) in x.chunks_mut(n_heads * hd).enumerate() {
            let mut theta = (pos0 + t) as f32;
            for (i, c) in cs.iter_mut().enumerate() {
                let ff = self
                    .rope_freqs
                    .as_ref()
                    .and_then(|f| f.get(i).copied())
                    .unwrap_or(1.0);
                let th = hp.rope_freq_scale * theta / ff;
                *c = (th.cos(), th.sin());
                theta *= theta_scale;
            }
            for head in row.chunks_mut(hd) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = match hp.rope_mode {
                        RopeMode::Normal => (2 * i, 2 * i + 1),
                        RopeMode::Neox => (i, i + nd / 2),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }
    }

    fn linear(&self, m: &Mat, x: &[f32], n: usize, bias: Option<&Vec<f32>>) -> Result<Vec<f32>> {
        let mut xq = x.to_vec();
        if m.act != ActQuant::None {
            xq.par_chunks_mut(m.k).for_each(|r| m.act.apply(r));
        }
        let mut out = vec![0f32; n * m.m];
        m.matmul(&xq, n, &mut out)?;
        if let Some(b) = bias {
            for row in out.chunks_mut(m.m) {
                row.iter_mut().zip(b).for_each(|(o, &bb)| *o += bb);
            }
        }
        Ok(out)
    }

    fn forward_inner(
        &mut self,
        tokens: &[u32],
        want: LogitsWanted,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let hp = self.hp.clone();
        let n = tokens.len();
        let (e, hd, nh, nkv) = (hp.n_embd, hp.head_dim, hp.n_head, hp.n_head_kv);
        let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
        let pos0 = self.n_past;
        // Embeddings.
        let emb = self.tok_embd.data()?;
        let mut x = vec![0f32; n * e];
        for (row, &t) in x.chunks_mut(e).zip(tokens) {
            let b = t as usize * self.tok_row_bytes;
            dequantize_rows(self.tok_embd.ty(), &emb[b..b + self.tok_row_bytes], row)?;
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let group = nh / nkv;
        let n_kv = pos0 + n;
        for li in 0..self.layers.len() {
            let l = &self.layers[li];
            let mut h = x.clone();
            rms_norm(&mut h, &l.attn_norm, hp.rms_eps);
            let mut q = self.linear(&l.wq, &h, n, l.bq.as_ref())?;
            let mut k = self.linear(&l.wk, &h, n, l.bk.as_ref())?;
            let v = self.linear(&l.wv, &h, n, l.bv.as_ref())?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                rms_norm(&mut q, qn, hp.rms_eps);
                rms_norm(&mut k, kn, hp.rms_eps);
            }
            self.rope(&mut q, nh, pos0);
            self.rope(&mut k, nkv, pos0);
            let kc = &mut self.k_cache[li];
            for (i, v) in k.iter().enumerate() {
                kc[pos0 * kvd + i] = f16::from_f32(*v).to_f32();
            }
            let vc = &mut self.v_cache[li];
            for (i, val) in v.iter().enumerate() {
                vc[pos0 * kvd + i] = f16::from_f32(*val).to_f32();
            }
            let (kc, vc) = (&self.k_cache[li], &self.v_cache[li]);
            // Attention: one task per (token, head).
            let mut att = vec![0f32; n * qd];
            att.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
                let (t, hh) = (idx / nh, idx % nh);
                let kvh = hh / group;
                let qrow: Vec<f32> = q[t * qd + hh * hd..t * qd + (hh + 1) * hd]
                    .iter()
                    .map(|&v| f16::from_f32(v).to_f32())
                    .collect();
                let last = pos0 + t; // inclusive
                let mut s = vec![0f32; last + 1];
                let mut mx = f32::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate() {
                    let kr = &kc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                    let d: f32 = qrow.iter().zip(kr).map(|(a, b)| a * b).sum();
                    *sj = d * scale;
                    mx = mx.max(*sj);
                }
                let mut sum = 0f64;
                for sj in s.iter_mut() {
                    *sj = (*sj - mx).exp();
                    sum += *sj as f64;
                }
                let inv = (1.0 / sum) as f32;
                o.iter_mut().for_each(|v| *v = 0.0);
                for (j, &p) in s.iter().enumerate() {
                    let p = f16::from_f32(p * inv).to_f32();
                    let vr = &vc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                    for (ov, &vv) in o.iter_mut().zip(vr) {
                        *ov += p * vv;
                    }
                }
            });
            let _ = n_kv;
            let l = &self.layers[li];
            let ao = self.linear(&l.wo, &att, n, None)?;
            x.iter_mut().zip(&ao).for_each(|(a, b)| *a += b);
            let mut h = x.clone();
            rms_norm(&mut h, &l.ffn_norm, hp.rms_eps);
            let g = self.linear(&l.gate, &h, n, None)?;
            let mut u = self.linear(&l.up, &h, n, None)?;
            u.par_iter_mut()
                .zip(g.par_iter())
                .for_each(|(u, &g)| *u *= g / (1.0 + (-g).exp()));
            let d = self.linear(&l.down, &u, n, None)?;
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        self.n_past += n;
        let rows: &[f32] = match want {
            LogitsWanted::None => {
                out.clear();
                return Ok(());
            }
            LogitsWanted::All => &x,
            LogitsWanted::Last => &x[(n - 1) * e..],
            LogitsWanted::From(i) => &x[i.min(n) * e..],
        };
        if rows.is_empty() {
            out.clear();
            return Ok(());
        }
        let mut h = rows.to_vec();
        let nr = h.len() / e;
        rms_norm(&mut h, &self.output_norm, hp.rms_eps);
        *out = self.linear(&self.output, &h, nr, None)?;
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }
    fn hparams(&self) -> &HParams {
        &self.hp
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_past(&self) -> usize {
        self.n_past
    }
    fn reset(&mut self) {
        self.n_past = 0;
    }
    fn forward(&mut self, tokens: &[u32], want: LogitsWanted, out: &mut Vec<f32>) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::msg("forward: empty batch"));
        }
        if self.n_past + tokens.len() > self.n_ctx {
            return Err(Error::msg(format!(
                "forward: {} cached + {} new tokens exceed the context of {}",
                self.n_past,
                tokens.len(),
                self.n_ctx
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.hp.n_vocab) {
            return Err(Error::msg(format!(
                "forward: token id {bad} ≥ vocabulary size {}",
                self.hp.n_vocab
            )));
        }
        let pool = self.pool.clone();
        pool.install(|| self.forward_inner(tokens, want, out))
    }
}
