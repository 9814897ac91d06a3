//! K-quant kernels: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K, byte-exact with ggml 0.25.3.
//!
//! The encoders reproduce ggml's reference encoders (`quantize_row_qN_K_ref`, used when no
//! importance matrix is given) and its importance-weighted encoders (`quantize_row_qN_K_impl`,
//! used with an imatrix), built without floating-point contraction. Every f32 operation is
//! rounded separately, in the order ggml performs it: no `mul_add`, no f64, and
//! `nearest_int` rounds half to even through the `1.5 * 2^23` trick.
//!
//! Every 256-value super-block is encoded on its own (the imatrix statistics are also per
//! super-block), so a row can be split at any 256 boundary.

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

const GROUP_MAX_EPS: f32 = 1e-15;

const Q2K_BYTES: usize = 84;
const Q3K_BYTES: usize = 110;
const Q4K_BYTES: usize = 144;
const Q5K_BYTES: usize = 176;
const Q6K_BYTES: usize = 210;
const Q8K_BYTES: usize = 292;

/// Bytes per super-block for the six K types, `None` for any other type.
fn block_bytes(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q2_K => Some(Q2K_BYTES),
        GgmlType::Q3_K => Some(Q3K_BYTES),
        GgmlType::Q4_K => Some(Q4K_BYTES),
        GgmlType::Q5_K => Some(Q5K_BYTES),
        GgmlType::Q6_K => Some(Q6K_BYTES),
        GgmlType::Q8_K => Some(Q8K_BYTES),
        _ => None,
    }
}

fn check_sizes(ty: GgmlType, what: &str, n_values: usize, n_bytes: usize) -> Result<usize> {
    let bb = block_bytes(ty).ok_or_else(|| {
        Error::msg(format!(
            "{what}: {ty} is not a K-quant type (expected Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or Q8_K)"
        ))
    })?;
    if n_values % QK_K != 0 {
        return Err(Error::msg(format!(
            "{what} {ty}: row length {n_values} is not a multiple of the super-block size {QK_K}"
        )));
    }
    let want = n_values / QK_K * bb;
    if n_bytes != want {
        return Err(Error::msg(format!(
            "{what} {ty}: {n_values} values need {want} bytes, but the buffer has {n_bytes}"
        )));
    }
    Ok(bb)
}

/// Quantize one row (any whole number of 256-value super-blocks) to a K-quant type.
///
/// `imatrix`, when given, holds one importance weight per value of `src` and selects ggml's
/// importance-weighted encoder; without it the reference encoder runs (what llama-quantize
/// does without `--imatrix`). Q8_K has no weighted encoder in ggml, so it ignores `imatrix`.
/// `dst` must hold exactly `src.len() / 256 * type_size` bytes.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<()> {
    let bb = check_sizes(ty, "quantize", src.len(), dst.len())?;
    if let Some(qw) = imatrix {
        if qw.len() != src.len() {
            return Err(Error::msg(format!(
                "quantize {ty}: the importance matrix has {} weights for a row of {} values",
                qw.len(),
                src.len()
            )));
        }
    }
    if ty == GgmlType::Q8_K {
        return quantize_row_q8k(src, dst);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU supports these features (checked just above). Like AVX2 below,
            // AVX-512 only widens the vectors (and turns lane selects into mask registers);
            // it enables no FMA and changes no rounding.
            unsafe { encode_blocks_avx512(ty, src, imatrix, dst, bb) };
            return Ok(());
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above). AVX2 only widens the
            // vectors the lane loops use; it enables no FMA and changes no rounding.
            unsafe { encode_blocks_avx2(ty, src, imatrix, dst, bb) };
            return Ok(());
        }
    }
    encode_blocks(ty, src, imatrix, dst, bb);
    Ok(())
}

/// Q3_K super-blocks searched together (16 sub-block lanes each): the coordinate descent is
/// a dependent chain per lane, so more lanes hide more of its latency.
const Q3K_GROUP: usize = 4;

/// The super-block loop of [`quantize_row`] (sizes already checked; not Q8_K).
#[inline(always)]
fn encode_blocks(ty: GgmlType, src: &[f32], imatrix: Option<&[f32]>, dst: &mut [u8], bb: usize) {
    if ty == GgmlType::Q4_K || ty == GgmlType::Q5_K {
        // Two super-blocks at a time: 16 sub-block lanes keep more vector chains busy.
        let pairs = src.len() / (2 * QK_K);
        let (sp, sr) = src.split_at(pairs * 2 * QK_K);
        let (dp, dr) = dst.split_at_mut(pairs * 2 * bb);
        let (qp, qr) = match imatrix {
            Some(q) => {
                let (a, b) = q.split_at(pairs * 2 * QK_K);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        for (p, (x, y)) in sp
            .chunks_exact(2 * QK_K)
            .zip(dp.chunks_exact_mut(2 * bb))
            .enumerate()
        {
            let w = qp.map(|q| &q[p * 2 * QK_K..(p + 1) * 2 * QK_K]);
            if ty == GgmlType::Q5_K {
                q45k::quantize_group::<true, 2, 16>(x, w, y);
            } else {
                q45k::quantize_group::<false, 2, 16>(x, w, y);
            }
        }
        if !sr.is_empty() {
            if ty == GgmlType::Q5_K {
                q45k::quantize_group::<true, 1, 8>(sr, qr, dr);
            } else {
                q45k::quantize_group::<false, 1, 8>(sr, qr, dr);
            }
        }
        return;
    }
    if ty == GgmlType::Q3_K && imatrix.is_none() {
        // Q3K_GROUP super-blocks at a time (16 sub-block lanes each), as for Q4_K/Q5_K above.
        const G: usize = Q3K_GROUP;
        let groups = src.len() / (G * QK_K);
        let (sp, sr) = src.split_at(groups * G * QK_K);
        let (dp, dr) = dst.split_at_mut(groups * G * bb);
        for (x, y) in sp.chunks_exact(G * QK_K).zip(dp.chunks_exact_mut(G * bb)) {
            q3k::quantize_ref_group::<G, { 16 * G }>(x, y);
        }
        for (x, y) in sr.chunks_exact(QK_K).zip(dr.chunks_exact_mut(bb)) {
            q3k::quantize_ref_group::<1, 16>(x, y);
        }
        return;
    }
    let blocks = src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(bb));
    match imatrix {
        None => {
            for (x, y) in blocks {
                let x = to_block(x);
                match ty {
                    GgmlType::Q2_K => q2k::quantize_ref(&x, y),
                    GgmlType::Q3_K => q3k::quantize_ref_group::<1, 16>(&x, y),
                    _ => q6k::quantize(&x, None, y),
                }
            }
        }
        Some(qw) => {
            for ((x, y), w) in blocks.zip(qw.chunks_exact(QK_K)) {
                let x = to_block(x);
                let w = to_block(w);
                match ty {
                    GgmlType::Q2_K => q2k::quantize_imatrix(&x, &w, y),
                    GgmlType::Q3_K => q3k::quantize_imatrix(&x, &w, y),
                    _ => q6k::quantize(&x, Some(&w), y),
                }
            }
        }
    }
}

/// [`encode_blocks`] compiled with AVX2 enabled, so the lane loops use 8-wide vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn encode_blocks_avx2(
    ty: GgmlType,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
    bb: usize,
) {
    encode_blocks(ty, src, imatrix, dst, bb)
}

/// [`encode_blocks`] compiled with AVX-512 (F, BW, VL, DQ) enabled: 16 f32 lanes per vector,
/// one vector per super-block's 16 Q3_K/Q6_K sub-blocks, and mask registers for the lane
/// selects.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn encode_blocks_avx512(
    ty: GgmlType,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
    bb: usize,
) {
    encode_blocks(ty, src, imatrix, dst, bb)
}

/// Dequantize one row of a K-quant type (`src` a whole number of blocks, `dst` 256 values
/// per block), bit-exact with ggml's `dequantize_row_qN_K`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bb = check_sizes(ty, "dequantize", dst.len(), src.len())?;
    for (x, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(QK_K)) {
        match ty {
            GgmlType::Q2_K => q2k::dequantize(x, y),
            GgmlType::Q3_K => q3k::dequantize(x, y),
            GgmlType::Q4_K => q45k::dequantize::<false>(x, y),
            GgmlType::Q5_K => q45k::dequantize::<true>(x, y),
            GgmlType::Q6_K => q6k::dequantize(x, y),
            _ => q8k::dequantize(x, y),
        }
    }
    Ok(())
}

/// Quantize one row to Q8_K (ggml's `quantize_row_q8_K_ref`: f32 scale, 256 i8 quants and 16
/// i16 partial sums per block), the activation format of ggml's K-quant dot products.
pub fn quantize_row_q8k(src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_sizes(GgmlType::Q8_K, "quantize", src.len(), dst.len())?;
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8K_BYTES)) {
        q8k::quantize(&to_block(x), y);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Copy a 256-value chunk into a fixed-size array (the callers pass exact chunks).
#[inline(always)]
fn to_block(s: &[f32]) -> [f32; QK_K] {
    let mut a = [0f32; QK_K];
    a.copy_from_slice(&s[..QK_K]);
    a
}

/// Split a super-block into `M` sub-blocks of `N` values.
#[inline(always)]
fn split<const N: usize, const M: usize>(x: &[f32; QK_K]) -> [[f32; N]; M] {
    let mut out = [[0f32; N]; M];
    for (o, c) in out.iter_mut().zip(x.chunks_exact(N)) {
        o.copy_from_slice(c);
    }
    out
}

/// ggml's `nearest_int`: add 1.5 * 2^23 and read the low mantissa bits, which rounds half to
/// even for |x| <= 2^22 (and gives ggml's exact garbage outside that range).
#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// ggml's f32 → f16 conversion (round to nearest even, NaN → 0x7E00).
#[inline(always)]
fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xff00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7c00;
    let mantissa_bits = bits & 0x0000_0fff;
    let nonsign = if shl1_w > 0xff00_0000 {
        0x7e00
    } else {
        exp_bits + mantissa_bits
    };
    ((sign >> 16) | nonsign) as u16
}

/// ggml's exact f16 → f32 conversion.
#[inline(always)]
fn fp16_to_fp32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_offset = 0xe0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask = 126u32 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
    let bits = if two_w < (1u32 << 27) {
        denormalized.to_bits()
    } else {
        normalized.to_bits()
    };
    f32::from_bits(sign | bits)
}

#[inline(always)]
fn put_f16(dst: &mut [u8], at: usize, f: f32) -> f32 {
    let h = fp32_to_fp16(f);
    dst[at..at + 2].copy_from_slice(&h.to_le_bytes());
    fp16_to_fp32(h)
}

#[inline(always)]
fn get_f16(src: &[u8], at: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([src[at], src[at + 1]]))
}

/// ggml's `make_qkx2_quants` / `make_qkx3_quants` (identical when weights are given): fit
/// `x ≈ scale * L - the_min` with `L` in `0..=nmax`, searching `nstep + 1` candidate scales.
/// Returns `(scale, the_min)`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l_out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        *l_out = [0; N];
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    // `min` moves whenever a better candidate is found, and later candidates use the new one.
    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        let iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let lf = l as f32;
            let w = weights[i];
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..N {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type == 1`: symmetric fit `x ≈ scale * (L - nmax)`,
/// weights `qw` or `x²`; `L` in `0..2*nmax`.
#[inline(always)]
fn make_qx_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l_out: &mut [i8; N],
    qw: Option<&[f32; N]>,
) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        *l_out = [0; N];
        return 0.0;
    }
    let mut w = [0f32; N];
    match qw {
        Some(q) => w = *q,
        None => {
            for i in 0..N {
                w[i] = x[i] * x[i];
            }
        }
    }
    let nmaxf = nmax as f32;
    let iscale = -nmaxf / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let lf = l as f32;
        sumlx += w[i] * x[i] * lf;
        suml2 += w[i] * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..N {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let lf = l as f32;
            sumlx += w[i] * x[i] * lf;
            suml2 += w[i] * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..N {
                let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l_out[i] = (l + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Transpose `M` sub-blocks of `N` values into `N` rows of `M` lanes.
#[inline(always)]
fn transpose<T: Copy + Default, const N: usize, const M: usize>(a: &[[T; N]; M]) -> [[T; M]; N] {
    let mut t = [[T::default(); M]; N];
    for (m, row) in a.iter().enumerate() {
        for (i, &v) in row.iter().enumerate() {
            t[i][m] = v;
        }
    }
    t
}

/// [`make_qkx_quants`] on `M` independent sub-blocks at once.
///
/// Each lane performs exactly the f32 operations of the scalar function, in the same order,
/// so the result is bit-identical; only independent lanes are interleaved, which lets the
/// compiler vectorize across sub-blocks. Returns `(scales, the_mins)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx_quants_lanes<const N: usize, const M: usize>(
    nmax: i32,
    xs: &[[f32; N]; M],
    ws: &[[f32; N]; M],
    ls: &mut [[u8; N]; M],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> ([f32; M], [f32; M]) {
    let xt = transpose(xs);
    let wt = transpose(ws);
    let mut lt = [[0u8; M]; N];
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0f32; M];
    for m in 0..M {
        sum_x[m] = sum_w[m] * xt[0][m];
    }
    for i in 1..N {
        for m in 0..M {
            let v = xt[i][m];
            if v < min[m] {
                min[m] = v;
            }
            if v > max[m] {
                max[m] = v;
            }
            let w = wt[i][m];
            sum_w[m] += w;
            sum_x[m] += w * v;
        }
    }
    let mut degenerate = [false; M];
    for m in 0..M {
        if min[m] > 0.0 {
            min[m] = 0.0;
        }
        degenerate[m] = max[m] <= min[m];
    }
    let min0 = min;
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; M];
    let mut scale = [0f32; M];
    for m in 0..M {
        iscale[m] = nmaxf / (max[m] - min[m]);
        scale[m] = 1.0 / iscale[m];
    }
    let mut best = [0f32; M];
    for i in 0..N {
        for m in 0..M {
            let l = nearest_int(iscale[m] * (xt[i][m] - min[m])).clamp(0, nmax);
            lt[i][m] = l as u8;
            let diff = scale[m] * l as f32 + min[m] - xt[i][m];
            let diff = if use_mad { diff.abs() } else { diff * diff };
            best[m] += wt[i][m] * diff;
        }
    }
    let mut laux = [[0f32; M]; N];
    for is in 0..=nstep {
        let step = rmin + rdelta * is as f32 + nmaxf;
        for m in 0..M {
            iscale[m] = step / (max[m] - min[m]);
        }
        let mut sum_l = [0f32; M];
        let mut sum_l2 = [0f32; M];
        let mut sum_xl = [0f32; M];
        for i in 0..N {
            for m in 0..M {
                let l = nearest_int(iscale[m] * (xt[i][m] - min[m])).clamp(0, nmax) as f32;
                laux[i][m] = l;
                let w = wt[i][m];
                sum_l[m] += w * l;
                sum_l2[m] += w * l * l;
                sum_xl[m] += w * l * xt[i][m];
            }
        }
        let mut ok = [false; M];
        let mut this_scale = [0f32; M];
        let mut this_min = [0f32; M];
        for m in 0..M {
            let d = sum_w[m] * sum_l2[m] - sum_l[m] * sum_l[m];
            ok[m] = d > 0.0;
            let mut ts = (sum_w[m] * sum_xl[m] - sum_x[m] * sum_l[m]) / d;
            let mut tm = (sum_l2[m] * sum_x[m] - sum_l[m] * sum_xl[m]) / d;
            if tm > 0.0 {
                tm = 0.0;
                ts = sum_xl[m] / sum_l2[m];
            }
            this_scale[m] = ts;
            this_min[m] = tm;
        }
        let mut cur = [0f32; M];
        for i in 0..N {
            for m in 0..M {
                let diff = this_scale[m] * laux[i][m] + this_min[m] - xt[i][m];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur[m] += wt[i][m] * diff;
            }
        }
        let mut any = false;
        let mut upd = [false; M];
        for m in 0..M {
            upd[m] = ok[m] && cur[m] < best[m];
            if upd[m] {
                best[m] = cur[m];
                scale[m] = this_scale[m];
                min[m] = this_min[m];
            }
            any |= upd[m];
        }
        if any {
            for i in 0..N {
                for m in 0..M {
                    // A select, not a conditional (masked) store; see make_q3_quants_lanes.
                    lt[i][m] = if upd[m] { laux[i][m] as u8 } else { lt[i][m] };
                }
            }
        }
    }
    let mut the_min = [0f32; M];
    for m in 0..M {
        if degenerate[m] {
            scale[m] = 0.0;
            min[m] = min0[m];
            for row in lt.iter_mut() {
                row[m] = 0;
            }
        }
        the_min[m] = -min[m];
    }
    *ls = transpose(&lt);
    (scale, the_min)
}

/// [`make_qx_quants`] on `M` independent sub-blocks at once (bit-identical per lane, see
/// [`make_qkx_quants_lanes`]). `qws` are the weights, `x²` when `None`. The search itself is
/// the one the legacy weighted encoders use ([`super::legacy::make_qx_quants_lanes`]); this
/// wrapper only changes the layout (sub-blocks in, lanes inside) and the quant type.
#[inline(always)]
fn make_qx_quants_lanes<const N: usize, const M: usize>(
    nmax: i32,
    xs: &[[f32; N]; M],
    ls: &mut [[i8; N]; M],
    qws: Option<&[[f32; N]; M]>,
) -> [f32; M] {
    let xt = transpose(xs);
    let wt = match qws {
        Some(q) => transpose(q),
        None => {
            let mut w = [[0f32; M]; N];
            for i in 0..N {
                for m in 0..M {
                    w[i][m] = xt[i][m] * xt[i][m];
                }
            }
            w
        }
    };
    let mut lt = [[0u8; M]; N];
    let scale = super::legacy::make_qx_quants_lanes(nmax, &xt, &wt, &mut lt);
    // l + nmax <= 2 * nmax - 1 <= 63 for every caller: it fits an i8.
    let mut l8 = [[0i8; M]; N];
    for i in 0..N {
        for m in 0..M {
            l8[i][m] = lt[i][m] as i8;
        }
    }
    *ls = transpose(&l8);
    scale
}

/// [`make_q3_quants`] on `M` independent sub-blocks at once (bit-identical per lane, see
/// [`make_qkx_quants_lanes`]); a lane stops refining when its own pass changes nothing.
#[inline(always)]
fn make_q3_quants_lanes<const N: usize, const M: usize>(
    nmax: i32,
    xs: &[f32],
    ls: &mut [[i8; N]; M],
) -> [f32; M] {
    // Lane `m` is `xs[N * m..N * (m + 1)]`, transposed straight from the caller's slice (no
    // intermediate copy of the sub-blocks).
    let mut xt = [[0f32; M]; N];
    for (m, c) in xs.chunks_exact(N).take(M).enumerate() {
        for (i, &v) in c.iter().enumerate() {
            xt[i][m] = v;
        }
    }
    let mut max = [0f32; M];
    let mut amax = [0f32; M];
    for row in &xt {
        for m in 0..M {
            let ax = row[m].abs();
            if ax > amax[m] {
                amax[m] = ax;
                max[m] = row[m];
            }
        }
    }
    let mut iscale = [0f32; M];
    for m in 0..M {
        iscale[m] = -(nmax as f32) / max[m];
    }
    let mut lt = [[0i32; M]; N];
    let mut sumlx = [0f32; M];
    let mut suml2 = [0f32; M];
    for i in 0..N {
        for m in 0..M {
            let x = xt[i][m];
            let l = nearest_int(iscale[m] * x).clamp(-nmax, nmax - 1);
            lt[i][m] = l;
            let w = x * x;
            let lf = l as f32;
            sumlx[m] += w * x * lf;
            suml2[m] += w * lf * lf;
        }
    }
    let mut active = [true; M];
    for _ in 0..5 {
        let mut changed = [false; M];
        for i in 0..N {
            for m in 0..M {
                let x = xt[i][m];
                let w = x * x;
                let li = lt[i][m] as f32;
                let slx = sumlx[m] - w * x * li;
                let sl2 = suml2[m] - w * li * li;
                let new_l = nearest_int(x * sl2 / slx).clamp(-nmax, nmax - 1);
                let nf = new_l as f32;
                let slx2 = slx + w * x * nf;
                let sl22 = sl2 + w * nf * nf;
                let take = active[m]
                    & (slx > 0.0)
                    & (new_l != lt[i][m])
                    & (sl22 > 0.0)
                    & (slx2 * slx2 * suml2[m] > sumlx[m] * sumlx[m] * sl22);
                // Selects, not a conditional store: a vectorized `if` becomes masked stores,
                // which are microcoded and slow on AMD (half the Q3_K time in the profile).
                lt[i][m] = if take { new_l } else { lt[i][m] };
                sumlx[m] = if take { slx2 } else { sumlx[m] };
                suml2[m] = if take { sl22 } else { suml2[m] };
                changed[m] |= take;
            }
        }
        let mut any = false;
        for m in 0..M {
            active[m] &= changed[m];
            any |= active[m];
        }
        if !any {
            break;
        }
    }
    let mut scale = [0f32; M];
    let mut out = [[0i8; M]; N];
    for m in 0..M {
        let zero = amax[m] < GROUP_MAX_EPS;
        scale[m] = if !zero && suml2[m] > 0.0 {
            sumlx[m] / suml2[m]
        } else {
            0.0
        };
        for i in 0..N {
            out[i][m] = if zero { 0 } else { (lt[i][m] + nmax) as i8 };
        }
    }
    *ls = transpose(&out);
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: symmetric fit with weights `x²` refined by
/// coordinate descent; `L` in `0..2*nmax`.
#[cfg(test)]
fn make_q3_quants<const N: usize>(nmax: i32, x: &[f32; N], l_out: &mut [i8; N]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        *l_out = [0; N];
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; N];
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = li;
        let w = x[i] * x[i];
        let lf = li as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for i in 0..N {
        l_out[i] = (l[i] + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `make_qp_quants`: fit non-negative `x ≈ scale * L` (`L` in `0..=nmax`) under the
/// weights `qw`, used for the sub-block scales and mins of the imatrix encoders.
#[inline(always)]
fn make_qp_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l_out: &mut [u8; N],
    qw: &[f32; N],
) -> f32 {
    let mut max = 0f32;
    for &v in x {
        // C `MAX(max, x)` is `max > x ? max : x`.
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        *l_out = [0; N];
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..N {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..N {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..N {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let lf = l as f32;
        sumlx += qw[i] * x[i] * lf;
        suml2 += qw[i] * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Pack 2-bit values: byte `32*g + l` of the output holds `L[128*g + l + 32*k]` in bits `2k`.
#[inline(always)]
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (lg, q) in l.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for i in 0..32 {
            q[i] = lg[i] | (lg[i + 32] << 2) | (lg[i + 64] << 4) | (lg[i + 96] << 6);
        }
    }
}

/// The 6-bit scale and min of sub-block `j` in the 12-byte Q4_K/Q5_K scale array.
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Store 6-bit scale `ls` and min `lm` of sub-block `j` (inverse of [`get_scale_min_k4`]).
#[inline(always)]
fn set_scale_min_k4(j: usize, q: &mut [u8], ls: u8, lm: u8) {
    if j < 4 {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
        q[j - 4] |= (ls >> 4) << 6;
        q[j] |= (lm >> 4) << 6;
    }
}

// ---------------------------------------------------------------------------------------------
// Q2_K: scales[16] (4-bit scale | 4-bit min), qs[64], d f16, dmin f16
// ---------------------------------------------------------------------------------------------
mod q2k {
    use super::*;

    #[inline(always)]
    fn finish(x: &[f32; QK_K], y: &mut [u8], l: &mut [u8; QK_K], dm: f32, mm: f32) {
        for j in 0..16 {
            let sc = y[j];
            let d = dm * (sc & 0xf) as f32;
            if d == 0.0 {
                continue;
            }
            let m = mm * (sc >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        pack_2bit(l, &mut y[16..80]);
    }

    #[inline(always)]
    pub(super) fn quantize_ref(x: &[f32; QK_K], y: &mut [u8]) {
        let xs: [[f32; 16]; 16] = split(x);
        let mut l = [[0u8; 16]; 16];
        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        let mut weights = [[0f32; 16]; 16];
        for (w, xj) in weights.iter_mut().zip(&xs) {
            for i in 0..16 {
                w[i] = xj[i].abs();
            }
        }
        let (scales, mins) = make_qkx_quants_lanes(3, &xs, &weights, &mut l, -0.5, 0.1, 15, true);
        for j in 0..16 {
            let (s, m) = (scales[j], mins[j]);
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let q4scale = 15f32;
        let dm = if max_scale > 0.0 {
            let iscale = q4scale / max_scale;
            for (b, &s) in y[..16].iter_mut().zip(&scales) {
                *b = nearest_int(iscale * s) as u8;
            }
            put_f16(y, 80, max_scale / q4scale)
        } else {
            y[..16].fill(0);
            put_f16(y, 80, 0.0)
        };
        let mm = if max_min > 0.0 {
            let iscale = q4scale / max_min;
            for (b, &m) in y[..16].iter_mut().zip(&mins) {
                *b |= (nearest_int(iscale * m) << 4) as u8;
            }
            put_f16(y, 82, max_min / q4scale)
        } else {
            put_f16(y, 82, 0.0)
        };
        let mut lf = [0u8; QK_K];
        for (d, s) in lf.chunks_exact_mut(16).zip(l.iter()) {
            d.copy_from_slice(s);
        }
        finish(x, y, &mut lf, dm, mm);
    }

    #[inline(always)]
    pub(super) fn quantize_imatrix(x: &[f32; QK_K], qw: &[f32; QK_K], y: &mut [u8]) {
        let xs: [[f32; 16]; 16] = split(x);
        let qws: [[f32; 16]; 16] = split(qw);
        let mut sumx2 = 0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        let mut l = [[0u8; 16]; 16];
        let mut sw = [0f32; 16];
        let mut weights = [[0f32; 16]; 16];
        for j in 0..16 {
            let weight = &mut weights[j];
            for i in 0..16 {
                weight[i] = qws[j][i] * (sigma2 + xs[j][i] * xs[j][i]).sqrt();
            }
            let mut s = 0f32;
            for &w in weight.iter() {
                s += w;
            }
            sw[j] = s;
        }
        let (scales, mins) = make_qkx_quants_lanes(3, &xs, &weights, &mut l, -0.9, 0.05, 36, false);
        let mut ls = [0u8; 16];
        let mut lm = [0u8; 16];
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        let dm = put_f16(y, 80, dm);
        let mm = put_f16(y, 82, mm);
        for j in 0..16 {
            y[j] = ls[j] | (lm[j] << 4);
        }
        let mut lf = [0u8; QK_K];
        for (d, s) in lf.chunks_exact_mut(16).zip(l.iter()) {
            d.copy_from_slice(s);
        }
        finish(x, y, &mut lf, dm, mm);
    }

    pub(super) fn dequantize(x: &[u8], y: &mut [f32]) {
        let d = get_f16(x, 80);
        let min = get_f16(x, 82);
        let scales = &x[0..16];
        let qs = &x[16..80];
        for (n, (q, yn)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(128)).enumerate() {
            for (j, yj) in yn.chunks_exact_mut(32).enumerate() {
                let shift = 2 * j;
                for half in 0..2 {
                    let sc = scales[8 * n + 2 * j + half];
                    let dl = d * (sc & 0xf) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        let v = (q[16 * half + l] >> shift) & 3;
                        yj[16 * half + l] = dl * v as f32 - ml;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q3_K: hmask[32], qs[64], scales[12] (16 x 6-bit), d f16
// ---------------------------------------------------------------------------------------------
mod q3k {
    use super::*;

    /// Store the 16 6-bit scales `ls` (already offset by 32) into the 12-byte array.
    #[inline(always)]
    fn pack_scales(ls: &[i32; 16], s: &mut [u8]) {
        s.fill(0);
        for (j, &l) in ls.iter().enumerate() {
            if j < 8 {
                s[j] = (l & 0xf) as u8;
            } else {
                s[j - 8] |= ((l & 0xf) << 4) as u8;
            }
            let hi = l >> 4;
            s[j % 4 + 8] |= (hi << (2 * (j / 4))) as u8;
        }
    }

    /// Signed 6-bit scale of sub-block `j`.
    #[inline(always)]
    fn scale(s: &[u8], j: usize) -> i32 {
        let lo = if j < 8 { s[j] & 0xf } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        (lo | (hi << 4)) as i32 - 32
    }

    #[inline(always)]
    fn finish(x: &[f32; QK_K], y: &mut [u8], l: &mut [i8; QK_K]) {
        let dall = get_f16(y, 108);
        for j in 0..16 {
            let sc = scale(&y[96..108], j);
            let d = dall * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        let (hmask, rest) = y.split_at_mut(32);
        hmask.fill(0);
        // Branch-free (the branch on random data mispredicted half the time, ~15 % of the
        // Q3_K time): element 32 * g + k sets bit g of hmask[k] when its quant is above 3, and
        // keeps the low two bits. Same bytes as ggml's `if (L[j] > 3)` loop.
        let mut lu = [0u8; QK_K];
        for g in 0..QK_K / 32 {
            for k in 0..32 {
                let v = l[32 * g + k] as u8;
                let hi = u8::from(l[32 * g + k] > 3);
                hmask[k] |= hi << g;
                lu[32 * g + k] = v.wrapping_sub(hi << 2);
            }
        }
        pack_2bit(&lu, &mut rest[..64]);
    }

    #[inline(always)]
    fn merge(l: &[[i8; 16]; 16]) -> [i8; QK_K] {
        let mut lf = [0i8; QK_K];
        for (d, s) in lf.chunks_exact_mut(16).zip(l.iter()) {
            d.copy_from_slice(s);
        }
        lf
    }

    /// Encode `B` consecutive super-blocks (`x`: `B * 256` values, `y`: `B` blocks) with the
    /// reference encoder, searching all `M = 16 * B` sub-blocks in parallel lanes: the
    /// coordinate descent is a chain of dependent steps per sub-block, so more independent
    /// lanes keep more of the vector units busy. Same bytes as `B` calls of [`quantize_ref`].
    #[inline(always)]
    pub(super) fn quantize_ref_group<const B: usize, const M: usize>(x: &[f32], y: &mut [u8]) {
        debug_assert_eq!(M, 16 * B);
        let mut l = [[0i8; 16]; M];
        let scales = make_q3_quants_lanes(4, &x[..16 * M], &mut l);
        for (b, (xb, yb)) in x
            .chunks_exact(QK_K)
            .zip(y.chunks_exact_mut(Q3K_BYTES))
            .enumerate()
        {
            let Ok(xb) = <&[f32; QK_K]>::try_from(xb) else {
                continue;
            };
            let mut sc = [0f32; 16];
            let mut lb = [[0i8; 16]; 16];
            sc.copy_from_slice(&scales[16 * b..16 * b + 16]);
            lb.copy_from_slice(&l[16 * b..16 * b + 16]);
            tail_ref(xb, yb, &sc, &lb);
        }
    }

    /// One super-block through the scalar search (ggml's loop order), for tests of the
    /// lane-parallel path.
    #[cfg(test)]
    pub(super) fn quantize_ref_scalar(x: &[f32; QK_K], y: &mut [u8]) {
        let xs: [[f32; 16]; 16] = split(x);
        let mut l = [[0i8; 16]; 16];
        let mut scales = [0f32; 16];
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &xs[j], &mut l[j]);
        }
        tail_ref(x, y, &scales, &l);
    }

    /// The scales and quants of one super-block from its sub-block fits.
    #[inline(always)]
    fn tail_ref(x: &[f32; QK_K], y: &mut [u8], scales: &[f32; 16], l: &[[i8; 16]; 16]) {
        let mut max_scale = 0f32;
        let mut amax = 0f32;
        for &sc in scales {
            if sc.abs() > amax {
                amax = sc.abs();
                max_scale = sc;
            }
        }
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let mut ls = [0i32; 16];
            for j in 0..16 {
                let q = nearest_int(iscale * scales[j]) as i8 as i32;
                ls[j] = q.clamp(-32, 31) + 32;
            }
            pack_scales(&ls, &mut y[96..108]);
            put_f16(y, 108, 1.0 / iscale);
        } else {
            y[96..108].fill(0);
            put_f16(y, 108, 0.0);
        }
        let mut lf = merge(l);
        finish(x, y, &mut lf);
    }

    #[inline(always)]
    pub(super) fn quantize_imatrix(x: &[f32; QK_K], qw: &[f32; QK_K], y: &mut [u8]) {
        let xs: [[f32; 16]; 16] = split(x);
        let qws: [[f32; 16]; 16] = split(qw);
        let mut sumx2 = 0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let mut l = [[0i8; 16]; 16];
        let mut sw = [0f32; 16];
        let mut weights = [[0f32; 16]; 16];
        for j in 0..16 {
            let weight = &mut weights[j];
            for i in 0..16 {
                weight[i] = qws[j][i] * (sigma2 + xs[j][i] * xs[j][i]).sqrt();
            }
            let mut s = 0f32;
            for &w in weight.iter() {
                s += w;
            }
            sw[j] = s;
        }
        let scales = make_qx_quants_lanes(4, &xs, &mut l, Some(&weights));
        let mut lsc = [0i8; 16];
        let d_block = make_qx_quants(32, &scales, &mut lsc, Some(&sw));
        let mut ls = [0i32; 16];
        for j in 0..16 {
            ls[j] = lsc[j] as i32;
        }
        pack_scales(&ls, &mut y[96..108]);
        put_f16(y, 108, d_block);
        let mut lf = merge(&l);
        finish(x, y, &mut lf);
    }

    pub(super) fn dequantize(x: &[u8], y: &mut [f32]) {
        let d_all = get_f16(x, 108);
        let hm = &x[0..32];
        let qs = &x[32..96];
        let sc = &x[96..108];
        for (n, (q, yn)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(128)).enumerate() {
            for (j, yj) in yn.chunks_exact_mut(32).enumerate() {
                let shift = 2 * j;
                let m = 1u8 << (4 * n + j);
                for half in 0..2 {
                    let dl = d_all * scale(sc, 8 * n + 2 * j + half) as f32;
                    for l in 0..16 {
                        let i = 16 * half + l;
                        let v = ((q[i] >> shift) & 3) as i32 - if hm[i] & m != 0 { 0 } else { 4 };
                        yj[i] = dl * v as f32;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q4_K: d, dmin, scales[12], qs[128]; Q5_K: d, dmin, scales[12], qh[32], qs[128]
// ---------------------------------------------------------------------------------------------
mod q45k {
    use super::*;

    /// Requantize with the stored f16 scales and pack the quants (`FIVE`: Q5_K, else Q4_K).
    #[inline(always)]
    fn finish<const FIVE: bool>(x: &[f32; QK_K], y: &mut [u8], l: &mut [u8; QK_K]) {
        let nmax = if FIVE { 31 } else { 15 };
        let dd = get_f16(y, 0);
        let dmin = get_f16(y, 2);
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &y[4..16]);
            let d = dd * sc as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin * m as f32;
            for ii in 0..32 {
                let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax);
                l[32 * j + ii] = q as u8;
            }
        }
        if FIVE {
            let (qh, ql) = y[16..176].split_at_mut(32);
            qh.fill(0);
            for (n, (lg, q)) in l.chunks_exact(64).zip(ql.chunks_exact_mut(32)).enumerate() {
                let m1 = 1u8 << (2 * n);
                let m2 = 2u8 << (2 * n);
                for j in 0..32 {
                    let mut l1 = lg[j];
                    if l1 > 15 {
                        l1 -= 16;
                        qh[j] |= m1;
                    }
                    let mut l2 = lg[j + 32];
                    if l2 > 15 {
                        l2 -= 16;
                        qh[j] |= m2;
                    }
                    q[j] = l1 | (l2 << 4);
                }
            }
        } else {
            for (lg, q) in l.chunks_exact(64).zip(y[16..144].chunks_exact_mut(32)) {
                for i in 0..32 {
                    q[i] = lg[i] | (lg[i + 32] << 4);
                }
            }
        }
    }

    #[inline(always)]
    fn merge(l: &[[u8; 32]; 8]) -> [u8; QK_K] {
        let mut lf = [0u8; QK_K];
        for (d, s) in lf.chunks_exact_mut(32).zip(l.iter()) {
            d.copy_from_slice(s);
        }
        lf
    }

    /// Encode `B` consecutive super-blocks (`x`: `B * 256` values, `qw` the same length,
    /// `y`: `B` blocks), searching the scales of all `M = 8 * B` sub-blocks in parallel lanes.
    #[inline(always)]
    pub(super) fn quantize_group<const FIVE: bool, const B: usize, const M: usize>(
        x: &[f32],
        qw: Option<&[f32]>,
        y: &mut [u8],
    ) {
        debug_assert_eq!(M, 8 * B);
        let nmax = if FIVE { 31 } else { 15 };
        let mut xs = [[0f32; 32]; M];
        for (o, c) in xs.iter_mut().zip(x.chunks_exact(32)) {
            o.copy_from_slice(c);
        }
        let mut weights = [[0f32; 32]; M];
        let mut sw = [0f32; M];
        let (rmin, rdelta, nstep) = match qw {
            None => {
                for (w, xj) in weights.iter_mut().zip(&xs) {
                    let mut sum_x2 = 0f32;
                    for &v in xj {
                        sum_x2 += v * v;
                    }
                    let av_x = (sum_x2 / 32.0).sqrt();
                    for i in 0..32 {
                        w[i] = av_x + xj[i].abs();
                    }
                }
                if FIVE {
                    (-0.5, 0.1, 15)
                } else {
                    (-1.0, 0.1, 20)
                }
            }
            Some(qw) => {
                for (b, xb) in x.chunks_exact(QK_K).enumerate() {
                    let mut sum_x2 = 0f32;
                    for &v in xb {
                        sum_x2 += v * v;
                    }
                    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
                    for j in 8 * b..8 * b + 8 {
                        let q = &qw[32 * j..32 * j + 32];
                        let w = &mut weights[j];
                        for i in 0..32 {
                            w[i] = q[i] * (sigma2 + xs[j][i] * xs[j][i]).sqrt();
                        }
                        let mut s = 0f32;
                        for &v in w.iter() {
                            s += v;
                        }
                        sw[j] = s;
                    }
                }
                (-0.9, 0.05, 36)
            }
        };
        let mut l = [[0u8; 32]; M];
        let (scales, mins) =
            make_qkx_quants_lanes(nmax, &xs, &weights, &mut l, rmin, rdelta, nstep, false);
        let bb = if FIVE { Q5K_BYTES } else { Q4K_BYTES };
        for (b, (xb, yb)) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(bb)).enumerate() {
            let r = 8 * b..8 * b + 8;
            let mut sc = [0f32; 8];
            let mut mn = [0f32; 8];
            let mut lb = [[0u8; 32]; 8];
            sc.copy_from_slice(&scales[r.clone()]);
            mn.copy_from_slice(&mins[r.clone()]);
            lb.copy_from_slice(&l[r.clone()]);
            let xb = to_block(xb);
            if qw.is_some() {
                let mut w = [0f32; 8];
                w.copy_from_slice(&sw[r]);
                tail_imatrix::<FIVE>(&xb, yb, &sc, &mn, &w, &lb);
            } else {
                tail_ref::<FIVE>(&xb, yb, &sc, &mn, &lb);
            }
        }
    }

    #[inline(always)]
    fn tail_ref<const FIVE: bool>(
        x: &[f32; QK_K],
        y: &mut [u8],
        scales: &[f32; 8],
        mins: &[f32; 8],
        l: &[[u8; 32]; 8],
    ) {
        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        for j in 0..8 {
            let (s, m) = (scales[j], mins[j]);
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let s = &mut y[4..16];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            set_scale_min_k4(j, s, ls, lm);
        }
        put_f16(y, 0, max_scale / 63.0);
        put_f16(y, 2, max_min / 63.0);
        let mut lf = merge(l);
        finish::<FIVE>(x, y, &mut lf);
    }

    #[inline(always)]
    fn tail_imatrix<const FIVE: bool>(
        x: &[f32; QK_K],
        y: &mut [u8],
        scales: &[f32; 8],
        mins: &[f32; 8],
        sw: &[f32; 8],
        l: &[[u8; 32]; 8],
    ) {
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        let d_block = make_qp_quants(63, scales, &mut ls, sw);
        let m_block = make_qp_quants(63, mins, &mut lm, sw);
        let s = &mut y[4..16];
        for j in 0..8 {
            // ggml clamps to 63 here for Q5_K only.
            let (a, b) = if FIVE {
                (ls[j].min(63), lm[j].min(63))
            } else {
                (ls[j], lm[j])
            };
            set_scale_min_k4(j, s, a, b);
        }
        put_f16(y, 0, d_block);
        put_f16(y, 2, m_block);
        let mut lf = merge(l);
        finish::<FIVE>(x, y, &mut lf);
    }

    pub(super) fn dequantize<const FIVE: bool>(x: &[u8], y: &mut [f32]) {
        let d = get_f16(x, 0);
        let min = get_f16(x, 2);
        let scales = &x[4..16];
        let (qh, ql) = if FIVE {
            (&x[16..48], &x[48..176])
        } else {
            (&x[0..0], &x[16..144])
        };
        for (n, (q, yn)) in ql.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = get_scale_min_k4(2 * n, scales);
            let (sc2, m2) = get_scale_min_k4(2 * n + 1, scales);
            let d1 = d * sc1 as f32;
            let m1 = min * m1 as f32;
            let d2 = d * sc2 as f32;
            let m2 = min * m2 as f32;
            let (ya, yb) = yn.split_at_mut(32);
            let u1 = 1u8 << (2 * n);
            let u2 = 2u8 << (2 * n);
            for l in 0..32 {
                let (mut a, mut b) = (q[l] & 0xf, q[l] >> 4);
                if FIVE {
                    if qh[l] & u1 != 0 {
                        a += 16;
                    }
                    if qh[l] & u2 != 0 {
                        b += 16;
                    }
                }
                ya[l] = d1 * a as f32 - m1;
                yb[l] = d2 * b as f32 - m2;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K: ql[128], qh[64], scales[16] i8, d f16
// ---------------------------------------------------------------------------------------------
mod q6k {
    use super::*;

    #[inline(always)]
    pub(super) fn quantize(x: &[f32; QK_K], qw: Option<&[f32; QK_K]>, y: &mut [u8]) {
        let xs: [[f32; 16]; 16] = split(x);
        let qws: Option<[[f32; 16]; 16]> = qw.map(split);
        let mut l = [[0i8; 16]; 16];
        let mut max_scale = 0f32;
        let mut max_abs_scale = 0f32;
        let scales = make_qx_quants_lanes(32, &xs, &mut l, qws.as_ref());
        for &scale in &scales {
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y[..Q6K_BYTES].fill(0);
            return;
        }
        let iscale = -128.0 / max_scale;
        let d = put_f16(y, 208, 1.0 / iscale);
        for ib in 0..16 {
            y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        let mut lf = [0u8; QK_K];
        for (dst, s) in lf.chunks_exact_mut(16).zip(l.iter()) {
            for (a, &b) in dst.iter_mut().zip(s) {
                *a = b as u8;
            }
        }
        for j in 0..16 {
            let dj = d * (y[192 + j] as i8) as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
                lf[16 * j + ii] = (q + 32) as u8;
            }
        }
        let (ql, rest) = y.split_at_mut(128);
        let qh = &mut rest[..64];
        for ((lg, qlg), qhg) in lf
            .chunks_exact(128)
            .zip(ql.chunks_exact_mut(64))
            .zip(qh.chunks_exact_mut(32))
        {
            for i in 0..32 {
                let (a, b, c, e) = (lg[i], lg[i + 32], lg[i + 64], lg[i + 96]);
                qlg[i] = (a & 0xf) | ((c & 0xf) << 4);
                qlg[i + 32] = (b & 0xf) | ((e & 0xf) << 4);
                qhg[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
    }

    pub(super) fn dequantize(x: &[u8], y: &mut [f32]) {
        let d = get_f16(x, 208);
        let ql = &x[0..128];
        let qh = &x[128..192];
        let sc = &x[192..208];
        for (n, ((qlg, qhg), yn)) in ql
            .chunks_exact(64)
            .zip(qh.chunks_exact(32))
            .zip(y.chunks_exact_mut(128))
            .enumerate()
        {
            let s = &sc[8 * n..8 * n + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((qlg[l] & 0xf) | ((qhg[l] & 3) << 4)) as i32 - 32;
                let q2 = ((qlg[l + 32] & 0xf) | (((qhg[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((qlg[l] >> 4) | (((qhg[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((qlg[l + 32] >> 4) | (((qhg[l] >> 6) & 3) << 4)) as i32 - 32;
                yn[l] = d * (s[is] as i8) as f32 * q1 as f32;
                yn[l + 32] = d * (s[is + 2] as i8) as f32 * q2 as f32;
                yn[l + 64] = d * (s[is + 4] as i8) as f32 * q3 as f32;
                yn[l + 96] = d * (s[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_K: d f32, qs[256] i8, bsums[16] i16
// ---------------------------------------------------------------------------------------------
mod q8k {
    use super::*;

    pub(super) fn quantize(x: &[f32; QK_K], y: &mut [u8]) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            y[..Q8K_BYTES].fill(0);
            return;
        }
        let iscale = -127.0 / max;
        let mut q = [0i8; QK_K];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = nearest_int(iscale * v).min(127) as i8;
        }
        for (dst, &qi) in y[4..260].iter_mut().zip(&q) {
            *dst = qi as u8;
        }
        for (j, c) in q.chunks_exact(16).enumerate() {
            let sum: i32 = c.iter().map(|&v| v as i32).sum();
            y[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        y[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }

    pub(super) fn dequantize(x: &[u8], y: &mut [f32]) {
        let d = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        for (o, &q) in y.iter_mut().zip(&x[4..260]) {
            *o = d * (q as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const ROWS: usize = 64;
    const ROW_LEN: usize = 1024;

    fn dir() -> PathBuf {
        crate::testutil::testdata_dir().join("golden/row1024")
    }

    fn read(name: &str) -> Vec<u8> {
        let p = dir().join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read golden file {}: {e}", p.display()))
    }

    fn read_f32(name: &str) -> Vec<f32> {
        read(name)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Encode every row and compare with `file`; report the first mismatching row and byte.
    fn check_encode(ty: GgmlType, file: &str, imatrix: bool) {
        let input = read_f32("input.f32");
        let qw = imatrix.then(|| read_f32("imatrix.f32"));
        let want = read(file);
        let row_bytes = ROW_LEN / QK_K * block_bytes(ty).unwrap();
        assert_eq!(want.len(), ROWS * row_bytes, "{file}: unexpected size");
        let mut got = vec![0u8; row_bytes];
        let mut bad = Vec::new();
        for r in 0..ROWS {
            quantize_row(
                ty,
                &input[r * ROW_LEN..(r + 1) * ROW_LEN],
                qw.as_deref(),
                &mut got,
            )
            .unwrap();
            if ty != GgmlType::Q8_K {
                // The portable path must agree with the (possibly AVX2) dispatched one.
                let mut portable = vec![0u8; row_bytes];
                let src = &input[r * ROW_LEN..(r + 1) * ROW_LEN];
                encode_blocks(
                    ty,
                    src,
                    qw.as_deref(),
                    &mut portable,
                    block_bytes(ty).unwrap(),
                );
                assert_eq!(
                    portable, got,
                    "{file}: row {r}: portable and dispatched paths differ"
                );
            }
            let w = &want[r * row_bytes..(r + 1) * row_bytes];
            if let Some(b) = got.iter().zip(w).position(|(a, b)| a != b) {
                bad.push(format!(
                    "row {r} byte {b} (block {} offset {}): got {:#04x} want {:#04x}",
                    b / block_bytes(ty).unwrap(),
                    b % block_bytes(ty).unwrap(),
                    got[b],
                    w[b]
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{file}: {} of {ROWS} rows differ; first: {}",
            bad.len(),
            bad.join("\n")
        );
    }

    /// Decode the golden encoding and compare with `TYPE.deq.f32` bit for bit.
    fn check_decode(ty: GgmlType) {
        let bin = read(&format!("{}.bin", ty.name()));
        let want = read_f32(&format!("{}.deq.f32", ty.name()));
        let mut got = vec![0f32; ROWS * ROW_LEN];
        dequantize_row(ty, &bin, &mut got).unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{ty}.deq.f32: row {} value {}: got {a:e} want {b:e}",
                i / ROW_LEN,
                i % ROW_LEN
            );
        }
    }

    /// Deterministic test values: Gaussian-ish, with runs of zeros, constants and outliers.
    fn test_values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|i| {
                let kind = (i / 16) % 7;
                let g = next() + next() + next() - 1.5;
                match kind {
                    0 => 0.0,
                    1 => 0.25,
                    2 => g * 40.0,
                    3 => g.abs() + 1.0,
                    4 => -(g.abs()) * 1e-3,
                    5 if next() < 0.1 => 30.0 * g,
                    _ => g,
                }
            })
            .collect()
    }

    /// The lane-parallel searches give exactly what the scalar (ggml-order) ones give.
    #[test]
    fn lane_searches_match_scalar() {
        for seed in 1..40u64 {
            let v = test_values(seed, 512);
            let mut xs16 = [[0f32; 16]; 16];
            let mut ws16 = [[0f32; 16]; 16];
            let mut xs32 = [[0f32; 32]; 8];
            let mut ws32 = [[0f32; 32]; 8];
            for i in 0..256 {
                xs16[i / 16][i % 16] = v[i];
                ws16[i / 16][i % 16] = v[256 + i].abs() + 0.01 * (i % 5) as f32;
                xs32[i / 32][i % 32] = v[i];
                ws32[i / 32][i % 32] = v[256 + i].abs();
            }
            let mut l16 = [[0u8; 16]; 16];
            let (sc, mn) = make_qkx_quants_lanes(3, &xs16, &ws16, &mut l16, -0.5, 0.1, 15, true);
            for m in 0..16 {
                let mut l = [0u8; 16];
                let (a, b) = make_qkx_quants(3, &xs16[m], &ws16[m], &mut l, -0.5, 0.1, 15, true);
                assert_eq!(
                    (a.to_bits(), b.to_bits(), l),
                    (sc[m].to_bits(), mn[m].to_bits(), l16[m])
                );
            }
            let mut l32 = [[0u8; 32]; 8];
            let (sc, mn) = make_qkx_quants_lanes(31, &xs32, &ws32, &mut l32, -0.9, 0.05, 36, false);
            for m in 0..8 {
                let mut l = [0u8; 32];
                let (a, b) = make_qkx_quants(31, &xs32[m], &ws32[m], &mut l, -0.9, 0.05, 36, false);
                assert_eq!(
                    (a.to_bits(), b.to_bits(), l),
                    (sc[m].to_bits(), mn[m].to_bits(), l32[m])
                );
            }
            let mut l3 = [[0i8; 16]; 16];
            let sc = make_q3_quants_lanes(4, xs16.as_flattened(), &mut l3);
            for m in 0..16 {
                let mut l = [0i8; 16];
                let a = make_q3_quants(4, &xs16[m], &mut l);
                assert_eq!(
                    (a.to_bits(), l),
                    (sc[m].to_bits(), l3[m]),
                    "q3 seed {seed} lane {m}"
                );
            }
            for qw in [None, Some(&ws16)] {
                let mut li = [[0i8; 16]; 16];
                let sc = make_qx_quants_lanes(32, &xs16, &mut li, qw);
                for m in 0..16 {
                    let mut l = [0i8; 16];
                    let a = make_qx_quants(32, &xs16[m], &mut l, qw.map(|q| &q[m]));
                    assert_eq!(
                        (a.to_bits(), l),
                        (sc[m].to_bits(), li[m]),
                        "seed {seed} lane {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let src = vec![0.5f32; 512];
        let mut dst = vec![0u8; 2 * Q4K_BYTES];
        let e = quantize_row(GgmlType::Q4_0, &src, None, &mut dst).unwrap_err();
        assert!(e.to_string().contains("not a K-quant type"), "{e}");
        let e = quantize_row(GgmlType::Q4_K, &src[..300], None, &mut dst).unwrap_err();
        assert!(e.to_string().contains("not a multiple of"), "{e}");
        let e = quantize_row(GgmlType::Q4_K, &src, None, &mut dst[..100]).unwrap_err();
        assert!(e.to_string().contains("need 288 bytes"), "{e}");
        let e = quantize_row(GgmlType::Q4_K, &src, Some(&src[..256]), &mut dst).unwrap_err();
        assert!(e.to_string().contains("importance matrix has 256"), "{e}");
        let mut out = vec![0f32; 256];
        let e = dequantize_row(GgmlType::Q4_K, &dst, &mut out).unwrap_err();
        assert!(e.to_string().contains("need 144 bytes"), "{e}");
        let e = quantize_row_q8k(&src, &mut dst).unwrap_err();
        assert!(e.to_string().contains("Q8_K"), "{e}");
    }

    /// Non-finite input must not panic (ggml produces garbage there; so do we, without UB).
    #[test]
    fn non_finite_input_does_not_panic() {
        let mut src = vec![1.0f32; 256];
        src[3] = f32::NAN;
        src[7] = f32::INFINITY;
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_K,
        ] {
            let mut dst = vec![0u8; block_bytes(ty).unwrap()];
            quantize_row(ty, &src, None, &mut dst).unwrap();
            quantize_row(ty, &src, Some(&[1.0; 256]), &mut dst).unwrap();
            let mut out = vec![0f32; 256];
            dequantize_row(ty, &dst, &mut out).unwrap();
        }
    }

    /// Encoding a row block by block gives the same bytes as encoding it whole.
    #[test]
    fn blocks_are_independent() {
        let input = read_f32("input.f32");
        let qw = read_f32("imatrix.f32");
        // Three blocks: the Q4_K/Q5_K pair path plus the single-block remainder path.
        let row = &input[8 * ROW_LEN..8 * ROW_LEN + 3 * QK_K];
        let qw = &qw[..3 * QK_K];
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            for w in [None, Some(qw)] {
                let bb = block_bytes(ty).unwrap();
                let mut whole = vec![0u8; 3 * bb];
                quantize_row(ty, row, w, &mut whole).unwrap();
                for b in 0..3 {
                    let mut one = vec![0u8; bb];
                    let r = b * QK_K..(b + 1) * QK_K;
                    quantize_row(ty, &row[r.clone()], w.map(|q| &q[r]), &mut one).unwrap();
                    assert_eq!(one, whole[b * bb..(b + 1) * bb], "{ty} block {b}");
                }
            }
        }
    }

    /// The Q3_K row encoder (super-block pairs in 32 lanes, AVX2/AVX-512 when present) gives
    /// the bytes of the scalar search, block by block, on varied data.
    #[test]
    fn q3k_lanes_match_scalar_encoder() {
        let bb = block_bytes(GgmlType::Q3_K).unwrap();
        for seed in 1..6u64 {
            let row = test_values(seed, 5 * QK_K);
            let mut got = vec![0u8; 5 * bb];
            quantize_row(GgmlType::Q3_K, &row, None, &mut got).unwrap();
            for b in 0..5 {
                let mut want = vec![0u8; bb];
                q3k::quantize_ref_scalar(&to_block(&row[b * QK_K..]), &mut want);
                assert_eq!(got[b * bb..(b + 1) * bb], want[..], "seed {seed} block {b}");
            }
        }
    }

    /// The baseline, AVX2 and AVX-512 builds of the encoders give the same bytes (the golden
    /// tests check only the build the CPU picks).
    #[test]
    fn simd_builds_match_baseline() {
        let n = 5 * QK_K;
        let row = test_values(7, n);
        let qw: Vec<f32> = test_values(8, n).iter().map(|v| v.abs() + 0.01).collect();
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let bb = block_bytes(ty).unwrap();
            for w in [None, Some(&qw[..])] {
                let mut base = vec![0u8; 5 * bb];
                encode_blocks(ty, &row, w, &mut base, bb);
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut v = vec![0u8; 5 * bb];
                        // SAFETY: AVX2 is present (checked).
                        unsafe { encode_blocks_avx2(ty, &row, w, &mut v, bb) };
                        assert_eq!(v, base, "{ty} AVX2, imatrix {}", w.is_some());
                    }
                    if std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                        && std::arch::is_x86_feature_detected!("avx512dq")
                    {
                        let mut v = vec![0u8; 5 * bb];
                        // SAFETY: the AVX-512 subsets are present (checked).
                        unsafe { encode_blocks_avx512(ty, &row, w, &mut v, bb) };
                        assert_eq!(v, base, "{ty} AVX-512, imatrix {}", w.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn golden_q2k() {
        check_encode(GgmlType::Q2_K, "Q2_K.bin", false);
    }
    #[test]
    fn golden_q2k_imatrix() {
        check_encode(GgmlType::Q2_K, "Q2_K.imatrix.bin", true);
    }
    #[test]
    fn golden_q3k() {
        check_encode(GgmlType::Q3_K, "Q3_K.bin", false);
    }
    #[test]
    fn golden_q3k_imatrix() {
        check_encode(GgmlType::Q3_K, "Q3_K.imatrix.bin", true);
    }
    #[test]
    fn golden_q4k() {
        check_encode(GgmlType::Q4_K, "Q4_K.bin", false);
    }
    #[test]
    fn golden_q4k_imatrix() {
        check_encode(GgmlType::Q4_K, "Q4_K.imatrix.bin", true);
    }
    #[test]
    fn golden_q5k() {
        check_encode(GgmlType::Q5_K, "Q5_K.bin", false);
    }
    #[test]
    fn golden_q5k_imatrix() {
        check_encode(GgmlType::Q5_K, "Q5_K.imatrix.bin", true);
    }
    #[test]
    fn golden_q6k() {
        check_encode(GgmlType::Q6_K, "Q6_K.bin", false);
    }
    #[test]
    fn golden_q6k_imatrix() {
        check_encode(GgmlType::Q6_K, "Q6_K.imatrix.bin", true);
    }
    #[test]
    fn golden_q8k() {
        check_encode(GgmlType::Q8_K, "Q8_K.bin", false);
    }
    #[test]
    fn golden_dequantize_all() {
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_K,
        ] {
            check_decode(ty);
        }
    }
}
