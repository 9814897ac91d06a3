//! The legacy 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Every encoder reproduces ggml 0.25.3 byte for byte, in its contraction-free build:
//! the plain encoders are `quantize_row_<type>_ref` and the importance-weighted ones are
//! `quantize_row_<type>_impl` (what `ggml_quantize_chunk` runs when given quant weights).
//! All arithmetic is f32, each multiply and add rounded on its own, in ggml's order
//! (no `mul_add`, no f64). The rounding rules differ by type and are part of the format:
//!
//! * plain Q4_0 / Q5_0 / Q4_1 / Q5_1 truncate toward zero after adding 8.5, 16.5 or 0.5;
//! * Q8_0 rounds half away from zero (`roundf`);
//! * the importance-weighted search rounds half to even (ggml's `nearest_int`).
//!
//! Float-to-integer casts follow the x86 C behaviour ggml is built with: convert to a 32-bit
//! integer first, then keep the low bits. Values never leave the small range on finite input;
//! a NaN element converts to the integer 0 there, so the plain encoders store the raw quant 0
//! for it (Q4_0 then decodes it as `-8 * d`, Q8_0 as 0), exactly as ggml does on x86.
//!
//! Block layouts (little-endian, ggml's `block_*` field order):
//!
//! | type | bytes | fields |
//! |---|---|---|
//! | Q4_0 | 18 | d f16, qs\[16\] |
//! | Q4_1 | 20 | d f16, m f16, qs\[16\] |
//! | Q5_0 | 22 | d f16, qh u32, qs\[16\] |
//! | Q5_1 | 24 | d f16, m f16, qh u32, qs\[16\] |
//! | Q8_0 | 34 | d f16, qs\[32\] i8 |
//!
//! The row functions here assume the caller ([`crate::quant`]) checked the lengths: `src` is a
//! whole number of blocks and `dst` holds exactly that many blocks. They never panic; with
//! mismatched lengths they process the blocks both sides have.

use super::float::{f16_to_f32, f32_to_f16};

/// Elements per block of every legacy type.
pub(crate) const QK: usize = 32;
const HALF: usize = QK / 2;

/// Bytes per block.
pub(crate) const Q4_0_BYTES: usize = 18;
pub(crate) const Q4_1_BYTES: usize = 20;
pub(crate) const Q5_0_BYTES: usize = 22;
pub(crate) const Q5_1_BYTES: usize = 24;
pub(crate) const Q8_0_BYTES: usize = 34;

/// Iterate over matching (32-float block, N-byte block) pairs as fixed-size arrays, so that
/// the block kernels compile without bounds checks.
#[inline(always)]
fn blocks_mut<'a, const N: usize>(
    src: &'a [f32],
    dst: &'a mut [u8],
) -> impl Iterator<Item = (&'a [f32; QK], &'a mut [u8; N])> {
    src.chunks_exact(QK)
        .zip(dst.chunks_exact_mut(N))
        .filter_map(|(x, y)| Some((x.try_into().ok()?, y.try_into().ok()?)))
}

/// Iterate over matching (N-byte block, 32-float output) pairs as fixed-size arrays.
#[inline(always)]
fn blocks_out<'a, const N: usize>(
    src: &'a [u8],
    dst: &'a mut [f32],
) -> impl Iterator<Item = (&'a [u8; N], &'a mut [f32; QK])> {
    src.chunks_exact(N)
        .zip(dst.chunks_exact_mut(QK))
        .filter_map(|(x, y)| Some((x.try_into().ok()?, y.try_into().ok()?)))
}

#[inline(always)]
fn put_f16(y: &mut [u8], v: f32) {
    let b = f32_to_f16(v).to_le_bytes();
    y[0] = b[0];
    y[1] = b[1];
}

#[inline(always)]
fn get_f16(lo: u8, hi: u8) -> f32 {
    f16_to_f32(u16::from_le_bytes([lo, hi]))
}

/// C's `(int)f` on x86 for the values that occur here (NaN gives 0 after narrowing either way).
#[inline(always)]
fn trunc_i32(v: f32) -> i32 {
    v as i32
}

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5·2^23 magic constant.
/// Exact for |v| <= 2^22 - 1, which every caller guarantees.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let val = v + 12_582_912.0;
    (val.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// `1/d`, or 0 when `d` is zero (NaN is not zero, as in C).
#[inline(always)]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The element with the largest magnitude (the first one on ties) and that magnitude.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Minimum and maximum with ggml's comparisons (starting from ±FLT_MAX).
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Pack 32 five-bit quants (low nibbles in `qs`, fifth bits in `qh`).
#[inline(always)]
fn pack5(l: &[u8; QK], qh_out: &mut [u8], qs_out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..HALF {
        let (a, b) = (l[j], l[j + HALF]);
        qs_out[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + HALF);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Plain encoders (quantize_row_*_ref)
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn q4_0_block(x: &[f32; QK], y: &mut [u8; Q4_0_BYTES]) {
    let (max, _) = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse_or_zero(d);
    put_f16(&mut y[0..2], d);
    for j in 0..HALF {
        let x0 = x[j] * id;
        let x1 = x[j + HALF] * id;
        let q0 = 15.min(trunc_i32(x0 + 8.5) as i8 as i32) as u8;
        let q1 = 15.min(trunc_i32(x1 + 8.5) as i8 as i32) as u8;
        y[2 + j] = q0 | (q1 << 4);
    }
}

#[inline(always)]
fn q4_1_block(x: &[f32; QK], y: &mut [u8; Q4_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_or_zero(d);
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    for j in 0..HALF {
        let x0 = (x[j] - min) * id;
        let x1 = (x[j + HALF] - min) * id;
        let q0 = 15.min(trunc_i32(x0 + 0.5) as i8 as i32) as u8;
        let q1 = 15.min(trunc_i32(x1 + 0.5) as i8 as i32) as u8;
        y[4 + j] = q0 | (q1 << 4);
    }
}

#[inline(always)]
fn q5_0_block(x: &[f32; QK], y: &mut [u8; Q5_0_BYTES]) {
    let (max, _) = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse_or_zero(d);
    put_f16(&mut y[0..2], d);
    let mut l = [0u8; QK];
    for (q, &v) in l.iter_mut().zip(x.iter()) {
        *q = 31.min(trunc_i32(v * id + 16.5) as i8 as i32) as u8;
    }
    let (qh, qs) = y[2..].split_at_mut(4);
    pack5(&l, qh, qs);
}

#[inline(always)]
fn q5_1_block(x: &[f32; QK], y: &mut [u8; Q5_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse_or_zero(d);
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    let mut l = [0u8; QK];
    for (q, &v) in l.iter_mut().zip(x.iter()) {
        // No clamp here in ggml: (uint8_t)(x0 + 0.5f).
        *q = trunc_i32((v - min) * id + 0.5) as u8;
    }
    let (qh, qs) = y[4..].split_at_mut(4);
    pack5(&l, qh, qs);
}

#[inline(always)]
fn q8_0_block(x: &[f32; QK], y: &mut [u8; Q8_0_BYTES]) {
    let mut amax = 0.0f32;
    for &v in x {
        // MAX(a, b) = a > b ? a : b, kept literally for NaN behaviour.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    put_f16(&mut y[0..2], d);
    for (q, &v) in y[2..].iter_mut().zip(x.iter()) {
        *q = trunc_i32((v * id).round()) as i8 as u8;
    }
}

/// Q4_0 row, plain (`quantize_row_q4_0_ref`).
pub(crate) fn quantize_row_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in blocks_mut(src, dst) {
        q4_0_block(x, y);
    }
}

/// Q4_1 row, plain (`quantize_row_q4_1_ref`).
pub(crate) fn quantize_row_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in blocks_mut(src, dst) {
        q4_1_block(x, y);
    }
}

/// Q5_0 row, plain (`quantize_row_q5_0_ref`).
pub(crate) fn quantize_row_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in blocks_mut(src, dst) {
        q5_0_block(x, y);
    }
}

/// Q5_1 row, plain (`quantize_row_q5_1_ref`).
pub(crate) fn quantize_row_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in blocks_mut(src, dst) {
        q5_1_block(x, y);
    }
}

/// Q8_0 row (`quantize_row_q8_0_ref`; ggml ignores quant weights for Q8_0).
pub(crate) fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in blocks_mut(src, dst) {
        q8_0_block(x, y);
    }
}

// ---------------------------------------------------------------------------------------------
// Importance-weighted encoders (quantize_row_*_impl)
// ---------------------------------------------------------------------------------------------

/// Mean of squares over the whole row, summed in order (ggml's `sigma2`).
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// Per-element weights of one block: `qw[j] * sqrt(sigma2 + x[j]^2)`.
#[inline(always)]
fn block_weights(x: &[f32; QK], qw: &[f32; QK], sigma2: f32) -> [f32; QK] {
    let mut w = [0.0f32; QK];
    for j in 0..QK {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// ggml's `make_qx_quants` for a 32-element block with weights (`rmse_type` 1, weights given):
/// symmetric quants in `[-nmax, nmax-1]`, stored with `+nmax`; returns the scale.
#[inline(always)]
fn make_qx_quants(nmax: i32, x: &[f32; QK], w: &[f32; QK], l_out: &mut [u8; QK]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < 1e-15 {
        *l_out = [0; QK];
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..QK {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as u8;
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
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..QK {
            let lf = clamp(nearest_int(iscale * x[i])) as f32;
            sumlx += w[i] * x[i] * lf;
            suml2 += w[i] * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..QK {
                l_out[i] = (clamp(nearest_int(iscale * x[i])) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx3_quants` for a 32-element block with weights (rmin -0.9, rdelta 0.05,
/// 36 steps, squared error): asymmetric quants in `[0, nmax]`. Returns `(scale, min)` where
/// the block decodes as `scale * l + min` (ggml stores `-the_min`, which is this `min`).
#[inline(always)]
fn make_qkx3_quants(nmax: i32, x: &[f32; QK], w: &[f32; QK], l_out: &mut [u8; QK]) -> (f32, f32) {
    const RMIN: f32 = -0.9;
    const RDELTA: f32 = 0.05;
    const NSTEP: i32 = 36;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..QK {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        *l_out = [0; QK];
        return (0.0, min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..QK {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_mad += w[i] * (diff * diff);
    }
    let mut laux = [0u8; QK];
    for is in 0..=NSTEP {
        iscale = (RMIN + RDELTA * is as f32 + nmax_f) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..QK {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let lf = l as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..QK {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                mad += w[i] * (diff * diff);
            }
            if mad < best_mad {
                *l_out = laux;
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, min)
}

/// Iterate over (x block, weight block, output block) triples.
#[inline(always)]
fn weighted_blocks<'a, const N: usize>(
    src: &'a [f32],
    qw: &'a [f32],
    dst: &'a mut [u8],
) -> impl Iterator<Item = (&'a [f32; QK], &'a [f32; QK], &'a mut [u8; N])> {
    src.chunks_exact(QK)
        .zip(qw.chunks_exact(QK))
        .zip(dst.chunks_exact_mut(N))
        .filter_map(|((x, q), y)| {
            Some((x.try_into().ok()?, q.try_into().ok()?, y.try_into().ok()?))
        })
}

/// Q4_0 row with importance weights `qw` (one per column; `quantize_row_q4_0_impl`).
pub(crate) fn quantize_row_q4_0_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let sigma2 = row_sigma2(src);
    for (x, q, y) in weighted_blocks::<Q4_0_BYTES>(src, qw, dst) {
        let w = block_weights(x, q, sigma2);
        let mut l = [0u8; QK];
        let d = make_qx_quants(8, x, &w, &mut l);
        put_f16(&mut y[0..2], d);
        for j in 0..HALF {
            y[2 + j] = l[j] | (l[j + HALF] << 4);
        }
    }
}

/// Q4_1 row with importance weights (`quantize_row_q4_1_impl`).
pub(crate) fn quantize_row_q4_1_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let sigma2 = row_sigma2(src);
    for (x, q, y) in weighted_blocks::<Q4_1_BYTES>(src, qw, dst) {
        let w = block_weights(x, q, sigma2);
        let mut l = [0u8; QK];
        let (d, min) = make_qkx3_quants(15, x, &w, &mut l);
        put_f16(&mut y[0..2], d);
        put_f16(&mut y[2..4], min);
        for j in 0..HALF {
            y[4 + j] = l[j] | (l[j + HALF] << 4);
        }
    }
}

/// Q5_0 row with importance weights (`quantize_row_q5_0_impl`).
pub(crate) fn quantize_row_q5_0_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let sigma2 = row_sigma2(src);
    for (x, q, y) in weighted_blocks::<Q5_0_BYTES>(src, qw, dst) {
        let w = block_weights(x, q, sigma2);
        let mut l = [0u8; QK];
        let d = make_qx_quants(16, x, &w, &mut l);
        put_f16(&mut y[0..2], d);
        let (qh, qs) = y[2..].split_at_mut(4);
        pack5(&l, qh, qs);
    }
}

/// Q5_1 row with importance weights (`quantize_row_q5_1_impl`).
pub(crate) fn quantize_row_q5_1_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let sigma2 = row_sigma2(src);
    for (x, q, y) in weighted_blocks::<Q5_1_BYTES>(src, qw, dst) {
        let w = block_weights(x, q, sigma2);
        let mut l = [0u8; QK];
        let (d, min) = make_qkx3_quants(31, x, &w, &mut l);
        put_f16(&mut y[0..2], d);
        put_f16(&mut y[2..4], min);
        let (qh, qs) = y[4..].split_at_mut(4);
        pack5(&l, qh, qs);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders (dequantize_row_*)
// ---------------------------------------------------------------------------------------------

/// Q4_0 row decode: `(q - 8) * d`.
pub(crate) fn dequantize_row_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks_out::<Q4_0_BYTES>(src, dst) {
        let d = get_f16(b[0], b[1]);
        for j in 0..HALF {
            let q = b[2 + j];
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + HALF] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1 row decode: `q * d + m`.
pub(crate) fn dequantize_row_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks_out::<Q4_1_BYTES>(src, dst) {
        let d = get_f16(b[0], b[1]);
        let m = get_f16(b[2], b[3]);
        for j in 0..HALF {
            let q = b[4 + j];
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + HALF] = (q >> 4) as f32 * d + m;
        }
    }
}

#[inline(always)]
fn unpack5(qh: u32, qs: &[u8], j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    let q = qs[j] as u32;
    (((q & 0x0F) | h0) as i32, ((q >> 4) | h1) as i32)
}

/// Q5_0 row decode: `(q - 16) * d`.
pub(crate) fn dequantize_row_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks_out::<Q5_0_BYTES>(src, dst) {
        let d = get_f16(b[0], b[1]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..];
        for j in 0..HALF {
            let (q0, q1) = unpack5(qh, qs, j);
            y[j] = (q0 - 16) as f32 * d;
            y[j + HALF] = (q1 - 16) as f32 * d;
        }
    }
}

/// Q5_1 row decode: `q * d + m`.
pub(crate) fn dequantize_row_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks_out::<Q5_1_BYTES>(src, dst) {
        let d = get_f16(b[0], b[1]);
        let m = get_f16(b[2], b[3]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..];
        for j in 0..HALF {
            let (q0, q1) = unpack5(qh, qs, j);
            y[j] = q0 as f32 * d + m;
            y[j + HALF] = q1 as f32 * d + m;
        }
    }
}

/// Q8_0 row decode: `q * d`.
pub(crate) fn dequantize_row_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks_out::<Q8_0_BYTES>(src, dst) {
        let d = get_f16(b[0], b[1]);
        for (v, &q) in y.iter_mut().zip(b[2..].iter()) {
            *v = (q as i8) as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift + Box-Muller-free sum of uniforms).
    fn pseudo_gaussian(n: usize, seed: u64, sigma: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| {
                let u: f32 = (0..4).map(|_| next()).sum::<f32>() - 2.0;
                u * sigma
            })
            .collect()
    }

    type Enc = fn(&[f32], &mut [u8]);
    type EncW = fn(&[f32], &[f32], &mut [u8]);
    type Dec = fn(&[u8], &mut [f32]);

    const PLAIN: [(&str, usize, Enc, Dec, f32); 5] = [
        (
            "Q4_0",
            Q4_0_BYTES,
            quantize_row_q4_0,
            dequantize_row_q4_0,
            1.0 / 8.0,
        ),
        (
            "Q4_1",
            Q4_1_BYTES,
            quantize_row_q4_1,
            dequantize_row_q4_1,
            1.0 / 15.0,
        ),
        (
            "Q5_0",
            Q5_0_BYTES,
            quantize_row_q5_0,
            dequantize_row_q5_0,
            1.0 / 16.0,
        ),
        (
            "Q5_1",
            Q5_1_BYTES,
            quantize_row_q5_1,
            dequantize_row_q5_1,
            1.0 / 31.0,
        ),
        (
            "Q8_0",
            Q8_0_BYTES,
            quantize_row_q8_0,
            dequantize_row_q8_0,
            1.0 / 127.0,
        ),
    ];
    const WEIGHTED: [(&str, usize, EncW, Dec); 4] = [
        (
            "Q4_0",
            Q4_0_BYTES,
            quantize_row_q4_0_imatrix,
            dequantize_row_q4_0,
        ),
        (
            "Q4_1",
            Q4_1_BYTES,
            quantize_row_q4_1_imatrix,
            dequantize_row_q4_1,
        ),
        (
            "Q5_0",
            Q5_0_BYTES,
            quantize_row_q5_0_imatrix,
            dequantize_row_q5_0,
        ),
        (
            "Q5_1",
            Q5_1_BYTES,
            quantize_row_q5_1_imatrix,
            dequantize_row_q5_1,
        ),
    ];

    fn max_abs(x: &[f32]) -> f32 {
        x.iter().fold(0.0, |a, v| a.max(v.abs()))
    }

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.49), -2);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    /// Round trip: every element comes back within half a quantization step of the block
    /// range (plus the f16 rounding of the scale), for each type.
    #[test]
    fn round_trip_error_is_bounded() {
        let x = pseudo_gaussian(32 * 64, 7, 1.0);
        for (name, bytes, enc, dec, step) in PLAIN {
            let mut q = vec![0u8; 64 * bytes];
            let mut y = vec![0f32; x.len()];
            enc(&x, &mut q);
            dec(&q, &mut y);
            for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let range = if name.ends_with("_1") {
                    xb.iter().cloned().fold(f32::MIN, f32::max)
                        - xb.iter().cloned().fold(f32::MAX, f32::min)
                } else {
                    2.0 * max_abs(xb)
                };
                // Half a step of rounding, plus the f16 error of scale (and min) times 32 steps.
                let bound = range * step * (0.5 + 0.01) + 1e-3 * max_abs(xb);
                for (a, b2) in xb.iter().zip(yb.iter()) {
                    assert!(
                        (a - b2).abs() <= bound,
                        "{name} block {b}: {a} vs {b2} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn weighted_encoders_are_not_worse_than_plain_in_weighted_error() {
        // The weighted search optimises sum w*(x-y)^2; it must beat (or tie) the plain encoder
        // on that metric summed over a row.
        let n = 32 * 32;
        let x = pseudo_gaussian(n, 11, 0.02);
        let imat: Vec<f32> = (0..n)
            .map(|i| (i as f32).sin().abs() * 10.0 + 0.1)
            .collect();
        let sigma2 = row_sigma2(&x);
        let wsum = |y: &[f32]| -> f64 {
            x.iter()
                .zip(y)
                .zip(&imat)
                .map(|((a, b), w)| {
                    let ww = (w * (sigma2 + a * a).sqrt()) as f64;
                    ww * ((a - b) as f64).powi(2)
                })
                .sum()
        };
        for ((name, bytes, encw, dec), (_, _, enc, _, _)) in WEIGHTED.iter().zip(PLAIN.iter()) {
            let mut q = vec![0u8; n / 32 * bytes];
            let mut y = vec![0f32; n];
            encw(&x, &imat, &mut q);
            dec(&q, &mut y);
            let e_w = wsum(&y);
            enc(&x, &mut q);
            dec(&q, &mut y);
            let e_p = wsum(&y);
            assert!(e_w <= e_p * 1.001, "{name}: weighted {e_w} > plain {e_p}");
        }
    }

    #[test]
    fn all_zero_and_negative_zero_rows() {
        for zero in [0.0f32, -0.0] {
            let x = [zero; 64];
            let w = [1.0f32; 64];
            for (name, bytes, enc, dec, _) in PLAIN {
                let mut q = vec![0xAAu8; 2 * bytes];
                enc(&x, &mut q);
                let mut y = [1.0f32; 64];
                dec(&q, &mut y);
                for v in y {
                    assert_eq!(v, 0.0, "{name}");
                }
                // the scale is ±0 (0 / -8 = -0.0 for Q4_0/Q5_0: ggml stores that sign)
                let d = u16::from_le_bytes([q[0], q[1]]);
                assert_eq!(d & 0x7FFF, 0, "{name} scale");
            }
            for (name, bytes, enc, dec) in WEIGHTED {
                let mut q = vec![0xAAu8; 2 * bytes];
                enc(&x, &w, &mut q);
                let mut y = [1.0f32; 64];
                dec(&q, &mut y);
                for v in y {
                    assert_eq!(v, 0.0, "{name}");
                }
            }
        }
        // Q4_0: an all-zero block stores d = -0.0 (0 / -8) and quant 8; it decodes to
        // 0 * -0.0 = -0.0 for quant 8, exactly like ggml (the golden .deq.f32 hold such -0.0).
        let mut q = [0u8; Q4_0_BYTES];
        quantize_row_q4_0(&[0.0; 32], &mut q);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), 0x8000);
        assert!(q[2..].iter().all(|&b| b == 0x88));
        let mut y = [0f32; 32];
        dequantize_row_q4_0(&q, &mut y);
        assert!(y.iter().all(|v| v.to_bits() == 0x8000_0000));
    }

    #[test]
    fn exact_grids_round_trip_exactly() {
        // Integers -8..=7 with max -8 give d = 1 exactly: Q4_0 must reproduce them.
        let x: Vec<f32> = (0..32).map(|i| ((i % 16) as f32) - 8.0).collect();
        let mut q = [0u8; Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut q);
        let mut y = [0f32; 32];
        dequantize_row_q4_0(&q, &mut y);
        assert_eq!(&y[..], &x[..]);
        // Q8_0 with amax 127 gives d = 1 and reproduces integers.
        let x: Vec<f32> = (0..32).map(|i| (i as f32) * 8.0 - 127.0).collect();
        let mut q = [0u8; Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut q);
        let mut y = [0f32; 32];
        dequantize_row_q8_0(&q, &mut y);
        assert_eq!(&y[..], &x[..]);
    }

    #[test]
    fn rounding_rules_differ_by_type() {
        // Q8_0 rounds half away from zero: with d = 1, 2.5 -> 3 and -2.5 -> -3.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let mut q = [0u8; Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut q);
        assert_eq!(q[2 + 1] as i8, 3);
        assert_eq!(q[2 + 2] as i8, -3);
        // Q4_0 truncates after +8.5: with max -8 (d = 1, id = 1), x = 0.5 -> 9 and -0.5 -> 8.
        let mut x = [0.0f32; 32];
        x[0] = -8.0;
        x[1] = 0.5;
        x[2] = -0.5;
        let mut q = [0u8; Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut q);
        assert_eq!(q[2 + 1] & 0x0F, 9);
        assert_eq!(q[2 + 2] & 0x0F, 8);
    }

    #[test]
    fn subnormal_and_tiny_inputs_stay_finite() {
        let x: Vec<f32> = (0..64)
            .map(|i| f32::from_bits(1 + i * 977) * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let w = vec![1.0f32; 64];
        for (name, bytes, enc, dec, _) in PLAIN {
            let mut q = vec![0u8; 2 * bytes];
            enc(&x, &mut q);
            let mut y = vec![0f32; 64];
            dec(&q, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "{name}");
        }
        for (name, bytes, enc, dec) in WEIGHTED {
            let mut q = vec![0u8; 2 * bytes];
            enc(&x, &w, &mut q);
            let mut y = vec![0f32; 64];
            dec(&q, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "{name}");
        }
    }

    #[test]
    fn nan_policy_matches_ggml_cast_rules() {
        // A NaN element is skipped by the max search and converts to the integer 0 (x86
        // cvttss2si gives 0x80000000, whose low byte is 0): Q4_0 stores the raw quant 0 and
        // the rest of the block is unaffected.
        let mut x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        x[3] = f32::NAN;
        let mut q = [0u8; Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut q);
        assert_eq!(f16_to_f32(u16::from_le_bytes([q[0], q[1]])), 2.0);
        assert_eq!(q[2 + 3] & 0x0F, 0);
        assert_eq!(q[2 + 4] & 0x0F, 2); // -12 * 0.5 + 8.5 = 2.5 -> 2
        let mut q8 = [0u8; Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut q8);
        assert_eq!(q8[2 + 3], 0);
    }

    #[test]
    fn five_bit_packing_round_trips_every_quant() {
        // Encode quants 0..31 with Q5_1 on a ramp with min 0, max 31: d = 1.
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let mut q = [0u8; Q5_1_BYTES];
        quantize_row_q5_1(&x, &mut q);
        let mut y = [0f32; 32];
        dequantize_row_q5_1(&q, &mut y);
        assert_eq!(&y[..], &x[..]);
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let mut q = [0u8; Q5_0_BYTES];
        quantize_row_q5_0(&x, &mut q);
        let mut y = [0f32; 32];
        dequantize_row_q5_0(&q, &mut y);
        assert_eq!(&y[..], &x[..]);
    }

    #[test]
    fn short_buffers_do_not_panic() {
        let x = [1.0f32; 40];
        let mut q = [0u8; 10];
        quantize_row_q4_0(&x, &mut q);
        quantize_row_q5_1_imatrix(&x, &[1.0; 3], &mut q);
        let mut y = [0f32; 5];
        dequantize_row_q8_0(&[0u8; 40], &mut y);
    }
}
