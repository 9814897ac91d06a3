//! The CPU backend: multi-threaded (rayon) llama-family and gemma3 forward pass over quantized
//! weights.
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
use crate::model::hparams::{Arch, FfnAct, HParams, RopeMode};
use crate::model::weights::{LlamaWeights, Weight};
use crate::model::Model;
use crate::quant::GgmlType;

/// Rows of a weight matrix per task when no even split exists (see `tile_rows`).
const TILE_ROWS: usize = 64;
/// Batches of at most this many tokens use the row-by-row mat-vec path instead of a GEMM.
const SMALL_BATCH: usize = 4;
/// Query rows per attention task.
const ATT_BLOCK: usize = 32;

/// Round to the nearest integer, ties to even, for |x| ≤ 2²² (the activation quantizers only
/// see |x| ≤ 127): adding and subtracting 1.5·2²³ leaves no fraction bits, and the FPU's
/// default rounding is ties-to-even. Unlike `f32::round_ties_even` on baseline x86-64 (a
/// libm `rintf` call) this inlines and vectorizes. NaN stays NaN.
#[inline(always)]
pub fn round_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    (x + MAGIC) - MAGIC
}

/// Round every value to the nearest f16 (ties to even, f16 subnormals and overflow to ±inf as
/// `half::f16::from_f32`) and back to f32. Uses F16C eight lanes at a time when the CPU has it.
pub fn round_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
        {
            // SAFETY: the CPU supports F16C and AVX (checked just above).
            unsafe { round_f16_f16c(x) };
            return;
        }
    }
    round_f16_scalar(x);
}

/// Scalar reference for [`round_f16`].
pub fn round_f16_scalar(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn round_f16_f16c(x: &mut [f32]) {
    use std::arch::x86_64::{
        _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_storeu_ps,
        _MM_FROUND_TO_NEAREST_INT,
    };
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 f32 (unaligned loads/stores).
        unsafe {
            let v = _mm256_loadu_ps(c.as_ptr());
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v);
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    round_f16_scalar(chunks.into_remainder());
}

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
            ActQuant::F16 => round_f16(x),
            ActQuant::Bf16 => x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
            ActQuant::Q8_0 | ActQuant::Q8_1 => {
                for b in x.chunks_mut(32) {
                    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let dh = f16::from_f32(d).to_f32();
                    for v in b.iter_mut() {
                        *v = round_even_small(*v * id) * dh;
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
                        let q = (round_even_small(iscale * *v) as i32).min(127);
                        *v = q as f32 * d;
                    }
                }
            }
        }
    }
}

/// Dequantize whole rows of `ty` from `src` into `dst` (length a multiple of the block size),
/// bit-exactly as ggml's `to_float` (via [`crate::quant::dequantize_row`]).
pub fn dequantize_rows(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    ActQuant::for_weight(ty)?;
    let need = ty
        .bytes_for(dst.len() as u64)
        .filter(|_| dst.len() as u64 % ty.block_size() == 0)
        .ok_or_else(|| {
            Error::msg(format!(
                "dequantize: {} values are not whole {} blocks",
                dst.len(),
                ty.name()
            ))
        })? as usize;
    let src = src.get(..need).ok_or_else(|| {
        Error::msg(format!(
            "dequantize: {} bytes for {} {} values (need {need})",
            src.len(),
            dst.len(),
            ty.name()
        ))
    })?;
    crate::quant::dequantize_row(ty, src, dst)
}

/// A raw pointer that may cross threads; every user writes a region no other task touches.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint output regions to rayon tasks (see each use).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst[i·dst_rs + j] = Σ_kk a[i·a_rs + kk] · b[kk·b_rs + j·b_cs]` for `i < m`, `j < n`,
/// single-threaded (the callers parallelize over tiles).
///
/// # Safety
/// Every pointer must be valid for the extents its strides and sizes describe, and `dst`
/// must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        a,
        1,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

thread_local! {
    /// Per-thread scratch for dequantized weight tiles and attention scores.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with a per-thread scratch buffer of at least `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Rows of a weight matrix per parallel task: the largest candidate that splits `m` into an
/// even number of equal tiles (so two or four threads share the work evenly), else 64. It
/// depends only on `m`, so results do not depend on the thread count.
fn tile_rows(m: usize) -> usize {
    const CANDIDATES: [usize; 6] = [128, 96, 64, 48, 32, 16];
    CANDIDATES
        .into_iter()
        .find(|&r| m % r == 0 && (m / r) % 2 == 0)
        .unwrap_or(TILE_ROWS)
}

/// Dot product of two equally long f32 slices (AVX2/FMA eight lanes × four accumulators when
/// the CPU has them, else [`dot_scalar`]).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_scalar(a, b)
}

/// Portable dot product with eight independent partial sums (vectorizable without
/// reassociating a single sum).
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8·j < n from both slices.
    unsafe {
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *a = _mm256_fmadd_ps(x, y, *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            let y = _mm256_loadu_ps(pb.add(i));
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        let mut s: f32 = lanes.iter().sum();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
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
            .filter(|_| k > 0 && k as u64 % ty.block_size() == 0)
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
        let m = w.n_rows();
        let data = w.data()?;
        if data.len() < m * row_bytes {
            return Err(Error::Tensor {
                tensor: w.name().into(),
                msg: format!("{} bytes of data for {m} rows of {row_bytes}", data.len()),
            });
        }
        Ok(Mat {
            ty,
            act,
            k,
            m,
            row_bytes,
            w: w.clone(),
        })
    }

    /// `out[n × m] = xq[n × k] · Wᵀ` where `xq` has already been rounded with `self.act`.
    /// Row tiles of W run in parallel on the current rayon pool; each is dequantized into a
    /// per-thread buffer (F32 weights are used in place) and multiplied with an f32 GEMM that
    /// writes straight into its columns of `out`.
    fn matmul(&self, xq: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (k, m) = (self.k, self.m);
        if xq.len() != n * k || out.len() != n * m {
            return Err(Error::msg(format!(
                "matmul '{}': {} inputs / {} outputs for {n} × {k} → {m}",
                self.w.name(),
                xq.len(),
                out.len()
            )));
        }
        let data = self.w.data()?;
        let rows_per = tile_rows(m);
        let n_tiles = m.div_ceil(rows_per);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let f32_in_place =
            self.ty == GgmlType::F32 && (data.as_ptr() as usize) % std::mem::align_of::<f32>() == 0;
        if n <= SMALL_BATCH {
            return self.matvec(data, xq, out, rows_per, f32_in_place);
        }
        (0..n_tiles).into_par_iter().try_for_each(|t| {
            let r0 = t * rows_per;
            let rows = rows_per.min(m - r0);
            let bytes = &data[r0 * self.row_bytes..(r0 + rows) * self.row_bytes];
            if f32_in_place {
                // SAFETY: `bytes` holds rows × k f32 values, 4-byte aligned (checked above);
                // this task alone writes columns r0..r0+rows of the n rows of `out`.
                unsafe {
                    sgemm(
                        n,
                        rows,
                        k,
                        out_ptr.get().add(r0),
                        m,
                        xq.as_ptr(),
                        k,
                        bytes.as_ptr() as *const f32,
                        1,
                        k,
                    );
                }
                return Ok(());
            }
            with_scratch(rows * k, |wt| -> Result<()> {
                dequantize_rows(self.ty, bytes, wt)?;
                // SAFETY: `wt` holds rows × k values; this task alone writes columns
                // r0..r0+rows of the n rows of `out` (n × m).
                unsafe {
                    sgemm(
                        n,
                        rows,
                        k,
                        out_ptr.get().add(r0),
                        m,
                        xq.as_ptr(),
                        k,
                        wt.as_ptr(),
                        1,
                        k,
                    );
                }
                Ok(())
            })
        })
    }

    /// Small batches (decode): one row of W at a time, dequantized into a per-thread buffer
    /// that stays in L1 (F32 rows read in place) and dotted with each input row. A GEMM
    /// would pack the whole matrix for a single output row.
    fn matvec(
        &self,
        data: &[u8],
        xq: &[f32],
        out: &mut [f32],
        rows_per: usize,
        f32_in_place: bool,
    ) -> Result<()> {
        let (k, m) = (self.k, self.m);
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..m.div_ceil(rows_per)).into_par_iter().try_for_each(|t| {
            let r0 = t * rows_per;
            let rows = rows_per.min(m - r0);
            with_scratch(k, |buf| -> Result<()> {
                for r in r0..r0 + rows {
                    let bytes = &data[r * self.row_bytes..(r + 1) * self.row_bytes];
                    let w: &[f32] = if f32_in_place {
                        // SAFETY: `bytes` holds k f32 values, 4-byte aligned (checked by the
                        // caller); any bit pattern is a valid f32.
                        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, k) }
                    } else {
                        dequantize_rows(self.ty, bytes, buf)?;
                        buf
                    };
                    for (i, x) in xq.chunks_exact(k).enumerate() {
                        // SAFETY: i < n (rows of xq) and r < m; this task alone writes column r.
                        unsafe { *out_ptr.get().add(i * m + r) = dot(x, w) };
                    }
                }
                Ok(())
            })
        })
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
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Option<Vec<f32>>,
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

/// A RoPE cos/sin table and the (base, scale) it was made for.
type RopeTable = ((f32, f32), Vec<(f32, f32)>);

/// cos/sin of every rotated pair for positions `pos0..pos0+n` (row t: `rope_dim / 2` pairs)
/// as ggml_rope_ext computes them: theta accumulated by repeated multiplication with
/// `base^(-2 / rope_dim)`, times `freq_scale`, divided by the optional frequency `factors`.
/// The GPU engine's table is this one, so both backends rotate by bit-identical angles.
pub fn rope_cos_sin(
    pos0: usize,
    n: usize,
    rope_dim: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let half = rope_dim / 2;
    let theta_scale = base.powf(-2.0 / rope_dim as f32);
    let mut cs = vec![(0f32, 0f32); n * half];
    for (t, row) in cs.chunks_mut(half.max(1)).enumerate().take(n) {
        let mut theta = (pos0 + t) as f32;
        for (i, c) in row.iter_mut().enumerate() {
            let ff = factors.and_then(|f| f.get(i).copied()).unwrap_or(1.0);
            let th = freq_scale * theta / ff;
            *c = (th.cos(), th.sin());
            theta *= theta_scale;
        }
    }
    cs
}

/// Logit soft-capping (`final_logit_softcapping`): `c·tanh(v / c)` on every value.
pub fn softcap(logits: &mut [f32], c: f32) {
    logits
        .iter_mut()
        .for_each(|v| *v = (*v * (1.0 / c)).tanh() * c);
}

/// GELU (tanh approximation) in f32 as ggml computes it (`0.5·x·(1 + tanh(√(2/π)·x·(1 +
/// 0.044715·x²)))`, no fused multiply-adds).
pub fn gelu_tanh(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// ggml's CPU GELU table: for every f16 bit pattern, `gelu_tanh` of its value rounded to f16.
pub fn gelu_table() -> &'static [f16] {
    static TABLE: std::sync::OnceLock<Vec<f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| f16::from_f32(gelu_tanh(f16::from_bits(b).to_f32())))
            .collect()
    })
}

/// `gelu(gate) · up` as ggml's CPU `geglu` (f32 rows): 0 for `gate ≤ -10`, `gate · up` for
/// `gate ≥ 10`, else the f16 table looked up at `gate` rounded to f16.
#[inline]
pub fn geglu(table: &[f16], gate: f32, up: f32) -> f32 {
    if gate <= -10.0 {
        0.0
    } else if gate >= 10.0 {
        gate * up
    } else {
        let i = f16::from_f32(gate).to_bits() as usize;
        table.get(i).map_or(0.0, |t| t.to_f32()) * up
    }
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
                post_attn_norm: opt(&l.post_attn_norm)?,
                ffn_norm: load_vec(&l.ffn_norm)?,
                post_ffn_norm: opt(&l.post_ffn_norm)?,
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

    /// cos/sin of every rotated pair for positions `pos0..pos0+n` ([`rope_cos_sin`] with
    /// this model's rotated dimensions and frequency factors).
    fn rope_table(&self, n: usize, pos0: usize, base: f32, freq_scale: f32) -> Vec<(f32, f32)> {
        rope_cos_sin(
            pos0,
            n,
            self.hp.rope_dim,
            base,
            freq_scale,
            self.rope_freqs.as_deref(),
        )
    }

    /// Rotate `x` ([n × n_heads × head_dim]) with a table from [`Self::rope_table`].
    fn rope(&self, x: &mut [f32], n_heads: usize, table: &[(f32, f32)]) {
        let hp = &self.hp;
        let hd = hp.head_dim;
        let nd = hp.rope_dim;
        let half = nd / 2;
        if half == 0 {
            return;
        }
        for (row, cs) in x.chunks_mut(n_heads * hd).zip(table.chunks(half)) {
            for head in row.chunks_mut(hd) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = match hp.rope_mode {
                        RopeMode::Normal => (2 * i, 2 * i + 1),
                        RopeMode::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }
    }

    /// `x[n × k] · Wᵀ (+ bias)`, with the activations rounded as llama.cpp's `vec_dot` would.
    fn linear(&self, m: &Mat, x: &[f32], n: usize, bias: Option<&Vec<f32>>) -> Result<Vec<f32>> {
        let mut out = vec![0f32; n * m.m];
        if m.act == ActQuant::None {
            m.matmul(x, n, &mut out)?;
        } else {
            let mut xq = x.to_vec();
            xq.par_chunks_mut(m.k).for_each(|r| m.act.apply(r));
            m.matmul(&xq, n, &mut out)?;
        }
        if let Some(b) = bias {
            for row in out.chunks_mut(m.m) {
                row.iter_mut().zip(b).for_each(|(o, &bb)| *o += bb);
            }
        }
        Ok(out)
    }

    /// Causal attention of `n` new queries (`q`: [n × q_dim], already rounded to f16) at
    /// positions `pos0..pos0+n` over layer `li`'s cache, into `att` ([n × q_dim]). Scores are
    /// multiplied by `kq_scale`; with `window = Some(w)` a query at position `p` only sees
    /// keys at positions `p0` with `p - p0 < w` (llama.cpp's standard sliding window).
    ///
    /// One task per (head, block of query rows): S = Q·Kᵀ and O = P·V run as f32 GEMMs over
    /// the f16-valued cache; softmax in f32 with an f64 sum, P rounded to f16 (llama.cpp's
    /// f16 `mul_mat` of the probabilities with V).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        q: &[f32],
        n: usize,
        pos0: usize,
        kq_scale: f32,
        window: Option<usize>,
        att: &mut [f32],
    ) {
        let hp = &self.hp;
        let (hd, nh, nkv) = (hp.head_dim, hp.n_head, hp.n_head_kv);
        let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
        let group = (nh / nkv.max(1)).max(1);
        let scale = kq_scale;
        let (kc, vc) = (&self.k_cache[li], &self.v_cache[li]);
        let n_blocks = n.div_ceil(ATT_BLOCK);
        let att_ptr = SendPtr(att.as_mut_ptr());
        (0..nh * n_blocks).into_par_iter().for_each(|task| {
            let (hh, blk) = (task / n_blocks, task % n_blocks);
            let kvh = hh / group;
            let t0 = blk * ATT_BLOCK;
            let rows = ATT_BLOCK.min(n - t0);
            // Keys visible to the last row of the block.
            let nk = pos0 + t0 + rows;
            // First key any row of the block sees (a sliding window hides the older ones):
            // the products run over keys k0..nk only.
            let k0 = window.map_or(0, |w| (pos0 + t0 + 1).saturating_sub(w));
            let nkw = nk - k0;
            with_scratch(rows * nkw, |s| {
                // SAFETY: q has n × qd values, the cache ≥ nk × kvd; s is rows × nkw.
                unsafe {
                    sgemm(
                        rows,
                        nkw,
                        hd,
                        s.as_mut_ptr(),
                        nkw,
                        q.as_ptr().add(t0 * qd + hh * hd),
                        qd,
                        kc.as_ptr().add(k0 * kvd + kvh * hd),
                        1,
                        kvd,
                    );
                }
                for (r, srow) in s.chunks_mut(nkw).enumerate() {
                    let last = pos0 + t0 + r; // inclusive
                    let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
                    // Row-local indices: column j is key k0 + j.
                    let (srow, masked) = srow.split_at_mut(last + 1 - k0);
                    let (before, vis) = srow.split_at_mut(first - k0);
                    before.iter_mut().for_each(|v| *v = 0.0);
                    let mut mx = f32::NEG_INFINITY;
                    for v in vis.iter_mut() {
                        *v *= scale;
                        mx = mx.max(*v);
                    }
                    let mut sum = 0f64;
                    for v in vis.iter_mut() {
                        *v = (*v - mx).exp();
                        sum += *v as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    vis.iter_mut().for_each(|v| *v *= inv);
                    round_f16(vis);
                    masked.iter_mut().for_each(|v| *v = 0.0);
                }
                // SAFETY: this task alone writes rows t0..t0+rows, columns hh·hd..(hh+1)·hd
                // of att (n × qd); the cache holds ≥ nk × kvd values.
                unsafe {
                    sgemm(
                        rows,
                        hd,
                        nkw,
                        att_ptr.get().add(t0 * qd + hh * hd),
                        qd,
                        s.as_ptr(),
                        nkw,
                        vc.as_ptr().add(k0 * kvd + kvh * hd),
                        kvd,
                        1,
                    );
                }
            });
        });
    }

    fn forward_inner(
        &mut self,
        tokens: &[u32],
        want: LogitsWanted,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let hp = self.hp.clone();
        let n = tokens.len();
        let (e, nh, nkv) = (hp.n_embd, hp.n_head, hp.n_head_kv);
        let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
        let pos0 = self.n_past;
        // Embeddings.
        let emb = self.tok_embd.data()?;
        let mut x = vec![0f32; n * e];
        for (row, &t) in x.chunks_mut(e).zip(tokens) {
            let b = t as usize * self.tok_row_bytes;
            let src = emb
                .get(b..b + self.tok_row_bytes)
                .ok_or_else(|| Error::Tensor {
                    tensor: self.tok_embd.name().into(),
                    msg: format!("no row for token {t}"),
                })?;
            dequantize_rows(self.tok_embd.ty(), src, row)?;
        }
        if hp.embd_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= hp.embd_scale);
        }
        // One RoPE table per distinct (base, scale): gemma3's local layers use their own.
        let mut tables: Vec<RopeTable> = Vec::new();
        for li in 0..self.layers.len() {
            let key = hp.rope_for_layer(li);
            if !tables.iter().any(|(k, _)| *k == key) {
                tables.push((key, self.rope_table(n, pos0, key.0, key.1)));
            }
        }
        // gemma3 scales Q before the KQ product (llama.cpp's graph); the others scale scores.
        let (q_scale, kq_scale) = if hp.arch == Arch::Gemma3 {
            (hp.attn_scale, 1.0)
        } else {
            (1.0, hp.attn_scale)
        };
        let mut h = vec![0f32; n * e];
        let mut att = vec![0f32; n * qd];
        for li in 0..self.layers.len() {
            let key = hp.rope_for_layer(li);
            let table = tables
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, t)| t.as_slice())
                .unwrap_or(&[]);
            let window = hp.swa.as_ref().filter(|_| hp.is_swa(li)).map(|s| s.window);
            let l = &self.layers[li];
            h.copy_from_slice(&x);
            rms_norm(&mut h, &l.attn_norm, hp.rms_eps);
            let mut q = self.linear(&l.wq, &h, n, l.bq.as_ref())?;
            let mut k = self.linear(&l.wk, &h, n, l.bk.as_ref())?;
            let v = self.linear(&l.wv, &h, n, l.bv.as_ref())?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                rms_norm(&mut q, qn, hp.rms_eps);
                rms_norm(&mut k, kn, hp.rms_eps);
            }
            self.rope(&mut q, nh, table);
            self.rope(&mut k, nkv, table);
            if q_scale != 1.0 {
                q.iter_mut().for_each(|v| *v *= q_scale);
            }
            round_f16(&mut q);
            let kc = &mut self.k_cache[li][pos0 * kvd..(pos0 + n) * kvd];
            kc.copy_from_slice(&k);
            round_f16(kc);
            let vc = &mut self.v_cache[li][pos0 * kvd..(pos0 + n) * kvd];
            vc.copy_from_slice(&v);
            round_f16(vc);
            self.attention(li, &q, n, pos0, kq_scale, window, &mut att);
            let l = &self.layers[li];
            let mut ao = self.linear(&l.wo, &att, n, None)?;
            if let Some(pn) = &l.post_attn_norm {
                rms_norm(&mut ao, pn, hp.rms_eps);
            }
            x.iter_mut().zip(&ao).for_each(|(a, b)| *a += b);
            h.copy_from_slice(&x);
            rms_norm(&mut h, &l.ffn_norm, hp.rms_eps);
            let g = self.linear(&l.gate, &h, n, None)?;
            let mut u = self.linear(&l.up, &h, n, None)?;
            match hp.ffn_act {
                FfnAct::Silu => {
                    u.par_chunks_mut(4096)
                        .zip(g.par_chunks(4096))
                        .for_each(|(u, g)| {
                            u.iter_mut()
                                .zip(g)
                                .for_each(|(u, &g)| *u *= g / (1.0 + (-g).exp()))
                        })
                }
                FfnAct::GeluTanh => {
                    let table = gelu_table();
                    u.par_chunks_mut(4096)
                        .zip(g.par_chunks(4096))
                        .for_each(|(u, g)| {
                            u.iter_mut()
                                .zip(g)
                                .for_each(|(u, &g)| *u = geglu(table, g, *u))
                        })
                }
            }
            let mut d = self.linear(&l.down, &u, n, None)?;
            if let Some(pn) = &l.post_ffn_norm {
                rms_norm(&mut d, pn, hp.rms_eps);
            }
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
        if let Some(c) = hp.logit_softcap {
            out.par_chunks_mut(4096).for_each(|o| softcap(o, c));
        }
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
    /// The caches hold each position's keys/values at its own offset and attention reads
    /// positions `0..n_past` only, so dropping a suffix is moving `n_past` back.
    fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.n_past {
            return Err(Error::msg(format!(
                "truncate: {n} tokens asked to be kept, {} cached",
                self.n_past
            )));
        }
        self.n_past = n;
        Ok(())
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
