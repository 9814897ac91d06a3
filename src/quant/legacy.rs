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
//! integer with `cvttss2si` semantics (NaN and out-of-range give 0x80000000), then keep the
//! low bits. Ordinary values never leave the small range; a NaN element, or every element of a
//! block whose scale is so tiny (subnormal input) that `1/d` is Inf, ends as the raw quant 0
//! (Q4_0 then decodes it as `-8 * d`, Q8_0 as 0), exactly as ggml does on x86.
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

/// The f32 values that convert to i32 without overflow.
#[cfg(any(test, not(target_arch = "x86_64")))]
const I32_RANGE: std::ops::Range<f32> = -2_147_483_648.0..2_147_483_648.0;

/// C's `(int)f` as x86's `cvttss2si` does it: truncate toward zero, and give `i32::MIN`
/// (0x80000000) for NaN and out-of-range values, where Rust's `as` would saturate. It matters
/// when a block's scale is so tiny that `1/d` overflows to Inf (subnormal inputs).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn trunc_i32(v: f32) -> i32 {
    if I32_RANGE.contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5·2^23 magic constant.
/// Exact for |v| <= 2^22 - 1, which every caller guarantees.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let val = v + 12_582_912.0;
    (val.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// `nearest_int(v).clamp(lo, hi) as f32` computed in the float domain so it vectorizes:
/// clamping first is the same because rounding is monotone and keeps integers, and the
/// 1.5·2^23 add/subtract rounds exactly like `nearest_int`. NaN gives 0 as `nearest_int`
/// does. Equal to the integer form for |v| <= 2^22 - 1 (the domain ggml asserts) and NaN.
#[inline(always)]
fn round_clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let c = if v < lo { lo } else { v };
    let c = if hi < c { hi } else { c };
    let r = (c + 12_582_912.0) - 12_582_912.0;
    if r.is_nan() {
        0.0
    } else {
        r
    }
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

/// The element with the largest magnitude (the first one on ties) and that magnitude, as
/// ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` loop finds them.
///
/// Computed as a lane-wise maximum (vectorizes) and then a search for the first element of
/// that magnitude. Same result: NaN never compares greater so it is skipped either way, the
/// maximum of a set does not depend on the order, and the scalar loop keeps the first element
/// reaching it. An all-zero (or all-NaN) block keeps the initial `max = +0.0`.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> (f32, f32) {
    let mut acc = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            acc[k] = if a > acc[k] { a } else { acc[k] };
        }
    }
    let mut amax = 0.0f32;
    for a in acc {
        amax = if a > amax { a } else { amax };
    }
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    // The first element of that magnitude, without an early-exit loop (its exit branch
    // mispredicts once per block): a bit per element, then the lowest set bit.
    let mut hits = 0u32;
    for (j, v) in x.iter().enumerate() {
        hits |= ((v.abs() == amax) as u32) << j;
    }
    let max = x
        .get(hits.trailing_zeros() as usize)
        .copied()
        .unwrap_or(0.0);
    (max, amax)
}

/// Minimum and maximum with ggml's comparisons (starting from ±FLT_MAX, `v < min`, `v > max`).
///
/// Lane-wise, then reduced. Among values that compare equal only ±0.0 differ in bits, and the
/// scalar loop keeps the first zero it meets, so a zero extreme takes the first zero's sign.
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut mn = [f32::MAX; 8];
    let mut mx = [-f32::MAX; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            mn[k] = if c[k] < mn[k] { c[k] } else { mn[k] };
            mx[k] = if c[k] > mx[k] { c[k] } else { mx[k] };
        }
    }
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for k in 0..8 {
        min = if mn[k] < min { mn[k] } else { min };
        max = if mx[k] > max { mx[k] } else { max };
    }
    if min == 0.0 || max == 0.0 {
        let first_zero = x.iter().copied().find(|v| *v == 0.0).unwrap_or(0.0);
        if min == 0.0 {
            min = first_zero;
        }
        if max == 0.0 {
            max = first_zero;
        }
    }
    (min, max)
}

/// `(int)roundf(s)` on x86 given `t = trunc_i32(s)`: round half away from zero without a libm
/// call by stepping on the exact fraction `s - t`. NaN and out-of-range `s` (where `t` is
/// `i32::MIN`) stay `i32::MIN`, as `cvttss2si(roundf(s))` gives.
#[inline(always)]
fn round_from_trunc(s: f32, t: i32) -> i32 {
    if t == i32::MIN {
        return t;
    }
    let frac = s - t as f32;
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
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

/// `trunc_i32` on a whole block, with SSE2's `cvttps2dq` on x86-64 (the same instruction
/// semantics ggml's C casts compile to: NaN and out-of-range give `i32::MIN`), four at a time.
#[inline(always)]
fn trunc_block(v: &[f32; QK]) -> [i32; QK] {
    let mut out = [0i32; QK];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128, __m128i, _mm_cvttps_epi32};
        for (o, c) in out.chunks_exact_mut(4).zip(v.chunks_exact(4)) {
            let (Ok(o), Ok(c)) = (<&mut [i32; 4]>::try_from(o), <&[f32; 4]>::try_from(c)) else {
                continue;
            };
            // SAFETY: [f32; 4] and __m128 (and [i32; 4] and __m128i) have the same size and
            // every bit pattern is valid for both; SSE2 is part of the x86-64 baseline.
            #[allow(unused_unsafe)]
            unsafe {
                let x: __m128 = std::mem::transmute::<[f32; 4], __m128>(*c);
                *o = std::mem::transmute::<__m128i, [i32; 4]>(_mm_cvttps_epi32(x));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (o, &x) in out.iter_mut().zip(v.iter()) {
        *o = trunc_i32(x);
    }
    out
}

/// Quants `min(hi, (int8_t)(int)(x * id + off))` of one block (Q4_0, Q5_0).
#[inline(always)]
fn scaled_quants(x: &[f32; QK], id: f32, off: f32, hi: i32) -> [u8; QK] {
    let mut s = [0.0f32; QK];
    for (o, &v) in s.iter_mut().zip(x.iter()) {
        *o = v * id + off;
    }
    let t = trunc_block(&s);
    let mut l = [0u8; QK];
    for (q, &t) in l.iter_mut().zip(t.iter()) {
        *q = hi.min(t as i8 as i32) as u8;
    }
    l
}

/// Quants `(int)((x - min) * id + 0.5)`, as `min(hi, (int8_t)..)` for Q4_1 and as
/// `(uint8_t)..` (no clamp) for Q5_1.
#[inline(always)]
fn offset_quants(x: &[f32; QK], min: f32, id: f32, hi: Option<i32>) -> [u8; QK] {
    let mut s = [0.0f32; QK];
    for (o, &v) in s.iter_mut().zip(x.iter()) {
        *o = (v - min) * id + 0.5;
    }
    let t = trunc_block(&s);
    let mut l = [0u8; QK];
    match hi {
        Some(hi) => {
            for (q, &t) in l.iter_mut().zip(t.iter()) {
                *q = hi.min(t as i8 as i32) as u8;
            }
        }
        None => {
            for (q, &t) in l.iter_mut().zip(t.iter()) {
                *q = t as u8;
            }
        }
    }
    l
}

/// Pack 32 four-bit quants: element `j` in the low nibble, element `j + 16` in the high one.
#[inline(always)]
fn pack4(l: &[u8; QK], qs: &mut [u8]) {
    for (j, q) in qs.iter_mut().take(HALF).enumerate() {
        *q = l[j] | (l[j + HALF] << 4);
    }
}

/// A plain encoder in three steps, so that a row can run them over groups of blocks:
/// `stats` (one block's extremes, lane-wise), `scale` (the block scale `d` from them: a
/// division whose latency is the longest chain of a block), and `encode` (scales and quants
/// into the block's bytes, given `d` and `id = 1/d`).
trait Plain<const N: usize> {
    fn stats(x: &[f32; QK]) -> (f32, f32);
    fn scale(s: (f32, f32)) -> f32;
    fn encode(x: &[f32; QK], s: (f32, f32), d: f32, id: f32, y: &mut [u8; N]);
}

/// Blocks per group in [`plain_blocks`].
const GROUP: usize = 8;

/// Encode whole blocks with `P`, `GROUP` blocks at a time: first every block's statistics,
/// then the `GROUP` scales and inverses as one lane-wise step (independent divisions instead
/// of one dependent chain per block), then the quants. Every value goes through the same
/// operations as block by block, so the bytes are the same.
#[inline(always)]
fn plain_blocks<P: Plain<N>, const N: usize>(src: &[f32], dst: &mut [u8]) {
    for (xs, ys) in src.chunks(GROUP * QK).zip(dst.chunks_mut(GROUP * N)) {
        let mut st = [(0f32, 0f32); GROUP];
        let mut n = 0;
        for (x, s) in xs.chunks_exact(QK).zip(st.iter_mut()) {
            let Ok(x) = <&[f32; QK]>::try_from(x) else {
                continue;
            };
            *s = P::stats(x);
            n += 1;
        }
        let mut d = [0f32; GROUP];
        let mut id = [0f32; GROUP];
        for m in 0..GROUP {
            d[m] = P::scale(st[m]);
            id[m] = inverse_or_zero(d[m]);
        }
        for (m, (x, y)) in blocks_mut::<N>(xs, ys).enumerate().take(n) {
            P::encode(x, st[m], d[m], id[m], y);
        }
    }
}

struct Q40;
impl Plain<Q4_0_BYTES> for Q40 {
    #[inline(always)]
    fn stats(x: &[f32; QK]) -> (f32, f32) {
        signed_absmax(x)
    }
    #[inline(always)]
    fn scale((max, _): (f32, f32)) -> f32 {
        max / -8.0
    }
    #[inline(always)]
    fn encode(x: &[f32; QK], _: (f32, f32), d: f32, id: f32, y: &mut [u8; Q4_0_BYTES]) {
        put_f16(&mut y[0..2], d);
        let l = scaled_quants(x, id, 8.5, 15);
        pack4(&l, &mut y[2..]);
    }
}

struct Q41;
impl Plain<Q4_1_BYTES> for Q41 {
    #[inline(always)]
    fn stats(x: &[f32; QK]) -> (f32, f32) {
        min_max(x)
    }
    #[inline(always)]
    fn scale((min, max): (f32, f32)) -> f32 {
        (max - min) / 15.0
    }
    #[inline(always)]
    fn encode(x: &[f32; QK], (min, _): (f32, f32), d: f32, id: f32, y: &mut [u8; Q4_1_BYTES]) {
        put_f16(&mut y[0..2], d);
        put_f16(&mut y[2..4], min);
        let l = offset_quants(x, min, id, Some(15));
        pack4(&l, &mut y[4..]);
    }
}

struct Q50;
impl Plain<Q5_0_BYTES> for Q50 {
    #[inline(always)]
    fn stats(x: &[f32; QK]) -> (f32, f32) {
        signed_absmax(x)
    }
    #[inline(always)]
    fn scale((max, _): (f32, f32)) -> f32 {
        max / -16.0
    }
    #[inline(always)]
    fn encode(x: &[f32; QK], _: (f32, f32), d: f32, id: f32, y: &mut [u8; Q5_0_BYTES]) {
        put_f16(&mut y[0..2], d);
        let l = scaled_quants(x, id, 16.5, 31);
        let (qh, qs) = y[2..].split_at_mut(4);
        pack5(&l, qh, qs);
    }
}

struct Q51;
impl Plain<Q5_1_BYTES> for Q51 {
    #[inline(always)]
    fn stats(x: &[f32; QK]) -> (f32, f32) {
        min_max(x)
    }
    #[inline(always)]
    fn scale((min, max): (f32, f32)) -> f32 {
        (max - min) / 31.0
    }
    #[inline(always)]
    fn encode(x: &[f32; QK], (min, _): (f32, f32), d: f32, id: f32, y: &mut [u8; Q5_1_BYTES]) {
        put_f16(&mut y[0..2], d);
        put_f16(&mut y[2..4], min);
        // No clamp here in ggml: (uint8_t)(x0 + 0.5f).
        let l = offset_quants(x, min, id, None);
        let (qh, qs) = y[4..].split_at_mut(4);
        pack5(&l, qh, qs);
    }
}

struct Q80;
impl Plain<Q8_0_BYTES> for Q80 {
    #[inline(always)]
    fn stats(x: &[f32; QK]) -> (f32, f32) {
        (q8_0_amax(x), 0.0)
    }
    #[inline(always)]
    fn scale((amax, _): (f32, f32)) -> f32 {
        amax / 127.0
    }
    #[inline(always)]
    fn encode(x: &[f32; QK], _: (f32, f32), d: f32, id: f32, y: &mut [u8; Q8_0_BYTES]) {
        put_f16(&mut y[0..2], d);
        // roundf then the x86 cast; a NaN or infinite s ends as i32::MIN, low byte 0, as in
        // ggml.
        let mut s = [0.0f32; QK];
        for (o, &v) in s.iter_mut().zip(x.iter()) {
            *o = v * id;
        }
        let t = trunc_block(&s);
        for ((q, &t), &s) in y[2..].iter_mut().zip(t.iter()).zip(s.iter()) {
            *q = round_from_trunc(s, t) as i8 as u8;
        }
    }
}

/// Q8_0's `amax`: ggml's `amax = MAX(amax, fabsf(v))` with `MAX(a, b) = a > b ? a : b`.
/// Without NaN that is the plain maximum (lane-wise, then a tree: the maximum of non-negative
/// values does not depend on the order); with a NaN the literal loop decides.
#[inline(always)]
fn q8_0_amax(x: &[f32; QK]) -> f32 {
    let has_nan = x.iter().fold(false, |n, v| n | v.is_nan());
    if has_nan {
        let mut amax = 0.0f32;
        for &v in x {
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        return amax;
    }
    let mut acc = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            acc[k] = if acc[k] > a { acc[k] } else { a };
        }
    }
    let mut w = 4;
    while w > 0 {
        for k in 0..w {
            acc[k] = if acc[k] > acc[k + w] {
                acc[k]
            } else {
                acc[k + w]
            };
        }
        w /= 2;
    }
    acc[0]
}

/// A plain row encoder, compiled a second time with AVX2 enabled and picked at run time when
/// the CPU has it. AVX2 only widens the vectors of the same operations (it enables no FMA and
/// changes no rounding), so the bytes are those of the baseline build.
macro_rules! plain_row {
    ($(#[$doc:meta])* $name:ident, $ty:ident, $bytes:expr) => {
        $(#[$doc])*
        pub(crate) fn $name(src: &[f32], dst: &mut [u8]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2(src: &[f32], dst: &mut [u8]) {
                    plain_blocks::<$ty, $bytes>(src, dst);
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    unsafe { avx2(src, dst) };
                    return;
                }
            }
            plain_blocks::<$ty, $bytes>(src, dst);
        }
    };
}

plain_row!(
    /// Q4_0 row, plain (`quantize_row_q4_0_ref`).
    quantize_row_q4_0, Q40, Q4_0_BYTES
);
plain_row!(
    /// Q4_1 row, plain (`quantize_row_q4_1_ref`).
    quantize_row_q4_1, Q41, Q4_1_BYTES
);
plain_row!(
    /// Q5_0 row, plain (`quantize_row_q5_0_ref`).
    quantize_row_q5_0, Q50, Q5_0_BYTES
);
plain_row!(
    /// Q5_1 row, plain (`quantize_row_q5_1_ref`).
    quantize_row_q5_1, Q51, Q5_1_BYTES
);
plain_row!(
    /// Q8_0 row (`quantize_row_q8_0_ref`; ggml ignores quant weights for Q8_0).
    quantize_row_q8_0, Q80, Q8_0_BYTES
);

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

/// Blocks searched together by the lane-interleaved weighted encoders. Each lane runs exactly
/// the scalar algorithm on its own block (same operations, same order), so the bytes are the
/// same; interleaving only removes the latency chains of the sequential sums and lets the
/// compiler use SIMD across blocks.
const LANES: usize = 8;

/// ggml's `make_qx_quants` (weights given, `rmse_type` 1) on `M` blocks of `N` values at once,
/// shared by the legacy weighted encoders (Q4_0, Q5_0: `N = 32`, `M = LANES`) and the K-quants
/// (Q3_K with an imatrix, Q6_K: 16-value sub-blocks, through `kquants::make_qx_quants_lanes`).
/// `x[i][k]` is element `i` of block `k`; `l_out` gets `l + nmax`. Returns each block's scale.
/// Rounding is [`round_clamp`], equal to ggml's `nearest_int` + clamp on the values reached
/// here (|x·iscale| <= nmax; NaN gives 0 both ways).
#[inline(always)]
pub(super) fn make_qx_quants_lanes<const N: usize, const M: usize>(
    nmax: i32,
    x: &[[f32; M]; N],
    w: &[[f32; M]; N],
    l_out: &mut [[u8; M]; N],
) -> [f32; M] {
    let mut max = [0.0f32; M];
    let mut amax = [0.0f32; M];
    for xi in x {
        for k in 0..M {
            let a = xi[k].abs();
            if amax[k] < a {
                amax[k] = a;
                max[k] = xi[k];
            }
        }
    }
    let nmax_f = nmax as f32;
    let mut iscale = [0.0f32; M];
    for k in 0..M {
        iscale[k] = (-nmax) as f32 / max[k];
    }
    let (lo, hi) = (-nmax_f, (nmax - 1) as f32);
    // ggml's `w*x[i]*l` is `(w*x[i])*l`: the first product does not depend on the step.
    let mut wx = [[0.0f32; M]; N];
    for i in 0..N {
        for k in 0..M {
            wx[i][k] = w[i][k] * x[i][k];
        }
    }
    let mut sumlx = [0.0f32; M];
    let mut suml2 = [0.0f32; M];
    for i in 0..N {
        for k in 0..M {
            let lf = round_clamp(iscale[k] * x[i][k], lo, hi);
            l_out[i][k] = (lf as i32 + nmax) as u8;
            sumlx[k] += wx[i][k] * lf;
            suml2[k] += w[i][k] * lf * lf;
        }
    }
    let mut scale = [0.0f32; M];
    let mut best = [0.0f32; M];
    for k in 0..M {
        scale[k] = if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
        best[k] = scale[k] * sumlx[k];
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = -(nmax_f + 0.1 * is as f32);
        for k in 0..M {
            iscale[k] = num / max[k];
        }
        sumlx = [0.0; M];
        suml2 = [0.0; M];
        for i in 0..N {
            for k in 0..M {
                let lf = round_clamp(iscale[k] * x[i][k], lo, hi);
                sumlx[k] += wx[i][k] * lf;
                suml2[k] += w[i][k] * lf * lf;
            }
        }
        let mut upd = [false; M];
        for k in 0..M {
            upd[k] = suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k];
            if upd[k] {
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
            }
        }
        // As ggml: the quants are recomputed only when a step wins (rarely).
        if upd.iter().any(|&u| u) {
            for i in 0..N {
                for k in 0..M {
                    if upd[k] {
                        let lf = round_clamp(iscale[k] * x[i][k], lo, hi);
                        l_out[i][k] = (lf as i32 + nmax) as u8;
                    }
                }
            }
        }
    }
    for k in 0..M {
        if amax[k] < 1e-15 {
            scale[k] = 0.0;
            for li in l_out.iter_mut() {
                li[k] = 0;
            }
        }
    }
    scale
}

/// ggml's `make_qkx3_quants` (see [`make_qkx3_quants`]) on `LANES` blocks at once.
/// Returns `(scale, min)` per block.
#[inline(always)]
fn make_qkx3_quants_lanes(
    nmax: i32,
    x: &[[f32; LANES]; QK],
    w: &[[f32; LANES]; QK],
    l_out: &mut [[u8; LANES]; QK],
) -> ([f32; LANES], [f32; LANES]) {
    const RMIN: f32 = -0.9;
    const RDELTA: f32 = 0.05;
    const NSTEP: i32 = 36;
    let nmax_f = nmax as f32;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0.0f32; LANES];
    for k in 0..LANES {
        sum_x[k] = sum_w[k] * x[0][k];
    }
    for i in 1..QK {
        for k in 0..LANES {
            if x[i][k] < min[k] {
                min[k] = x[i][k];
            }
            if x[i][k] > max[k] {
                max[k] = x[i][k];
            }
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * x[i][k];
        }
    }
    let mut degenerate = [false; LANES];
    let mut iscale = [0.0f32; LANES];
    let mut scale = [0.0f32; LANES];
    for k in 0..LANES {
        if min[k] > 0.0 {
            min[k] = 0.0;
        }
        degenerate[k] = max[k] <= min[k];
        iscale[k] = nmax as f32 / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let min0 = min;
    let mut best_mad = [0.0f32; LANES];
    for i in 0..QK {
        for k in 0..LANES {
            let lf = round_clamp(iscale[k] * (x[i][k] - min[k]), 0.0, nmax_f);
            l_out[i][k] = lf as u8;
            let diff = scale[k] * lf + min[k] - x[i][k];
            best_mad[k] += w[i][k] * (diff * diff);
        }
    }
    let mut laux = [[0.0f32; LANES]; QK];
    for is in 0..=NSTEP {
        let num = RMIN + RDELTA * is as f32 + nmax as f32;
        for k in 0..LANES {
            // `min` is the best minimum so far, as in ggml (it moves when a step wins).
            iscale[k] = num / (max[k] - min[k]);
        }
        let mut sum_l = [0.0f32; LANES];
        let mut sum_l2 = [0.0f32; LANES];
        let mut sum_xl = [0.0f32; LANES];
        for i in 0..QK {
            for k in 0..LANES {
                let lf = round_clamp(iscale[k] * (x[i][k] - min[k]), 0.0, nmax_f);
                laux[i][k] = lf;
                sum_l[k] += w[i][k] * lf;
                sum_l2[k] += w[i][k] * lf * lf;
                sum_xl[k] += w[i][k] * lf * x[i][k];
            }
        }
        let mut det = [0.0f32; LANES];
        let mut this_scale = [0.0f32; LANES];
        let mut this_min = [0.0f32; LANES];
        for k in 0..LANES {
            det[k] = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            this_scale[k] = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / det[k];
            this_min[k] = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / det[k];
            if this_min[k] > 0.0 {
                this_min[k] = 0.0;
                this_scale[k] = sum_xl[k] / sum_l2[k];
            }
        }
        let mut mad = [0.0f32; LANES];
        for i in 0..QK {
            for k in 0..LANES {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - x[i][k];
                mad[k] += w[i][k] * (diff * diff);
            }
        }
        let mut upd = [false; LANES];
        for k in 0..LANES {
            upd[k] = det[k] > 0.0 && mad[k] < best_mad[k];
            if upd[k] {
                best_mad[k] = mad[k];
                scale[k] = this_scale[k];
                min[k] = this_min[k];
            }
        }
        if upd.iter().any(|&u| u) {
            for i in 0..QK {
                for k in 0..LANES {
                    l_out[i][k] = if upd[k] {
                        laux[i][k] as u8
                    } else {
                        l_out[i][k]
                    };
                }
            }
        }
    }
    for k in 0..LANES {
        if degenerate[k] {
            scale[k] = 0.0;
            min[k] = min0[k];
            for li in l_out.iter_mut() {
                li[k] = 0;
            }
        }
    }
    (scale, min)
}

/// The four importance-weighted legacy encoders.
#[derive(Clone, Copy)]
enum Weighted {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

/// Write one encoded block: scale `d`, minimum `m` (for the `_1` types) and quants `l`.
#[inline(always)]
fn write_weighted_block(kind: Weighted, d: f32, m: f32, l: &[u8; QK], y: &mut [u8]) {
    put_f16(&mut y[0..2], d);
    match kind {
        Weighted::Q4_0 | Weighted::Q4_1 => {
            let off = if matches!(kind, Weighted::Q4_0) { 2 } else { 4 };
            if matches!(kind, Weighted::Q4_1) {
                put_f16(&mut y[2..4], m);
            }
            for (j, q) in y[off..off + HALF].iter_mut().enumerate() {
                *q = l[j] | (l[j + HALF] << 4);
            }
        }
        Weighted::Q5_0 => {
            let (qh, qs) = y[2..].split_at_mut(4);
            pack5(l, qh, qs);
        }
        Weighted::Q5_1 => {
            put_f16(&mut y[2..4], m);
            let (qh, qs) = y[4..].split_at_mut(4);
            pack5(l, qh, qs);
        }
    }
}

/// One block with the scalar search (used for the blocks left over after the lane groups).
#[inline(always)]
fn weighted_block_scalar(kind: Weighted, x: &[f32; QK], w: &[f32; QK], y: &mut [u8]) {
    let mut l = [0u8; QK];
    let (d, m) = match kind {
        Weighted::Q4_0 => (make_qx_quants(8, x, w, &mut l), 0.0),
        Weighted::Q5_0 => (make_qx_quants(16, x, w, &mut l), 0.0),
        Weighted::Q4_1 => make_qkx3_quants(15, x, w, &mut l),
        Weighted::Q5_1 => make_qkx3_quants(31, x, w, &mut l),
    };
    write_weighted_block(kind, d, m, &l, y);
}

/// `LANES` consecutive blocks with the interleaved search.
#[inline(always)]
fn weighted_group(
    kind: Weighted,
    xg: &[f32],
    qg: &[f32],
    sigma2: f32,
    yg: &mut [u8],
    nbytes: usize,
) {
    let mut xt = [[0.0f32; LANES]; QK];
    let mut wt = [[0.0f32; LANES]; QK];
    for (k, (xb, qb)) in xg
        .chunks_exact(QK)
        .zip(qg.chunks_exact(QK))
        .take(LANES)
        .enumerate()
    {
        for (i, (&x, &q)) in xb.iter().zip(qb.iter()).enumerate() {
            xt[i][k] = x;
            wt[i][k] = q * (sigma2 + x * x).sqrt();
        }
    }
    let mut lt = [[0u8; LANES]; QK];
    let (d, m) = match kind {
        Weighted::Q4_0 => (make_qx_quants_lanes(8, &xt, &wt, &mut lt), [0.0; LANES]),
        Weighted::Q5_0 => (make_qx_quants_lanes(16, &xt, &wt, &mut lt), [0.0; LANES]),
        Weighted::Q4_1 => make_qkx3_quants_lanes(15, &xt, &wt, &mut lt),
        Weighted::Q5_1 => make_qkx3_quants_lanes(31, &xt, &wt, &mut lt),
    };
    for (k, y) in yg.chunks_exact_mut(nbytes).take(LANES).enumerate() {
        let l: [u8; QK] = std::array::from_fn(|i| lt[i][k]);
        write_weighted_block(kind, d[k], m[k], &l, y);
    }
}

/// Shared row driver of the weighted encoders: `sigma2` over the row, then groups of `LANES`
/// blocks, then the remaining blocks one at a time.
fn quantize_row_weighted<const N: usize>(kind: Weighted, src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let sigma2 = row_sigma2(src);
    let mut xs = src.chunks_exact(QK * LANES);
    let mut qs = qw.chunks_exact(QK * LANES);
    let mut ys = dst.chunks_exact_mut(N * LANES);
    for ((xg, qg), yg) in (&mut xs).zip(&mut qs).zip(&mut ys) {
        weighted_group(kind, xg, qg, sigma2, yg, N);
    }
    let (xr, qr, yr) = (xs.remainder(), qs.remainder(), ys.into_remainder());
    for (x, q, y) in weighted_blocks::<N>(xr, qr, yr) {
        let w = block_weights(x, q, sigma2);
        weighted_block_scalar(kind, x, &w, y);
    }
}

/// Q4_0 row with importance weights `qw` (one per column; `quantize_row_q4_0_impl`).
pub(crate) fn quantize_row_q4_0_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_row_weighted::<Q4_0_BYTES>(Weighted::Q4_0, src, qw, dst);
}

/// Q4_1 row with importance weights (`quantize_row_q4_1_impl`).
pub(crate) fn quantize_row_q4_1_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_row_weighted::<Q4_1_BYTES>(Weighted::Q4_1, src, qw, dst);
}

/// Q5_0 row with importance weights (`quantize_row_q5_0_impl`).
pub(crate) fn quantize_row_q5_0_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_row_weighted::<Q5_0_BYTES>(Weighted::Q5_0, src, qw, dst);
}

/// Q5_1 row with importance weights (`quantize_row_q5_1_impl`).
pub(crate) fn quantize_row_q5_1_imatrix(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_row_weighted::<Q5_1_BYTES>(Weighted::Q5_1, src, qw, dst);
}

/// The scalar weighted path for a whole row (reference for the lane-interleaved one in tests).
#[cfg(test)]
fn quantize_row_weighted_scalar<const N: usize>(
    kind: Weighted,
    src: &[f32],
    qw: &[f32],
    dst: &mut [u8],
) {
    let sigma2 = row_sigma2(src);
    for (x, q, y) in weighted_blocks::<N>(src, qw, dst) {
        let w = block_weights(x, q, sigma2);
        weighted_block_scalar(kind, x, &w, y);
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

    /// The vectorized block scans agree with ggml's sequential loops, signs of zero included.
    #[test]
    fn block_scans_match_sequential_loops() {
        let seq_absmax = |x: &[f32; QK]| {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            (max, amax)
        };
        let seq_minmax = |x: &[f32; QK]| {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in x {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            (min, max)
        };
        let g = pseudo_gaussian(QK * 400, 5, 1.0);
        for (b, c) in g.chunks_exact(QK).enumerate() {
            let mut x: [f32; QK] = c.try_into().unwrap();
            match b % 8 {
                0 => x
                    .iter_mut()
                    .for_each(|v| *v = if *v > 0.0 { 0.0 } else { -0.0 }),
                1 => x
                    .iter_mut()
                    .for_each(|v| *v = v.abs().round() * if b % 3 == 0 { -1.0 } else { 1.0 }),
                2 => x[b % QK] = f32::NAN,
                3 => x.iter_mut().for_each(|v| *v = (*v * 2.0).round()),
                4 => x.iter_mut().for_each(|v| *v = v.abs()),
                5 => x.iter_mut().for_each(|v| *v = f32::NAN),
                _ => {}
            }
            let bits = |p: (f32, f32)| (p.0.to_bits(), p.1.to_bits());
            assert_eq!(
                bits(signed_absmax(&x)),
                bits(seq_absmax(&x)),
                "block {b}: {x:?}"
            );
            assert_eq!(bits(min_max(&x)), bits(seq_minmax(&x)), "block {b}: {x:?}");
            let mut amax = 0.0f32;
            for &v in &x {
                let a = v.abs();
                amax = if amax > a { amax } else { a };
            }
            assert_eq!(q8_0_amax(&x).to_bits(), amax.to_bits(), "block {b}: {x:?}");
        }
    }

    /// Rows encoded in groups of blocks (any remainder, NaN and zero blocks included) give
    /// exactly the bytes of encoding every block on its own.
    #[test]
    fn grouped_rows_equal_single_blocks() {
        type Row = fn(&[f32], &mut [u8]);
        let cases: [(&str, usize, Row); 5] = [
            ("Q4_0", Q4_0_BYTES, quantize_row_q4_0),
            ("Q4_1", Q4_1_BYTES, quantize_row_q4_1),
            ("Q5_0", Q5_0_BYTES, quantize_row_q5_0),
            ("Q5_1", Q5_1_BYTES, quantize_row_q5_1),
            ("Q8_0", Q8_0_BYTES, quantize_row_q8_0),
        ];
        for nb in [1usize, 7, 8, 9, 18, 23] {
            let mut x = pseudo_gaussian(QK * nb, nb as u64, 1.0);
            if nb > 8 {
                x[QK * 8 + 3] = f32::NAN;
                x[QK * 2..QK * 3].iter_mut().for_each(|v| *v = 0.0);
            }
            for (name, bytes, row) in cases {
                let mut whole = vec![0u8; nb * bytes];
                row(&x, &mut whole);
                for b in 0..nb {
                    let mut one = vec![0u8; bytes];
                    row(&x[b * QK..(b + 1) * QK], &mut one);
                    assert_eq!(
                        one,
                        whole[b * bytes..(b + 1) * bytes],
                        "{name} {nb} blocks, block {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn round_half_away_matches_roundf() {
        let round_half_away = |v: f32| round_from_trunc(v, trunc_i32(v));
        for i in -300_000..300_000 {
            let v = i as f32 * 0.000_5;
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
        }
        for v in [
            0.5f32, -0.5, 1.5, -1.5, 2.5, 126.5, -127.49999, 0.49999997, -0.0,
        ] {
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
        }
        assert_eq!(round_half_away(f32::NAN), i32::MIN);
        assert_eq!(round_half_away(f32::INFINITY), i32::MIN);
        assert_eq!(trunc_i32(f32::NEG_INFINITY), i32::MIN);
        assert_eq!(trunc_i32(-2.9), -2);
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

    /// The lane-interleaved weighted search gives the same bytes as the scalar one, on rows
    /// mixing ordinary, constant, all-zero, all-positive, all-negative and tiny blocks.
    #[test]
    fn interleaved_weighted_search_equals_scalar() {
        let nb = LANES * 3 + 5;
        for seed in 0..12u64 {
            let mut x = pseudo_gaussian(nb * QK, seed + 100, 10f32.powi(seed as i32 % 5 - 2));
            for (b, blk) in x.chunks_mut(QK).enumerate() {
                match (b + seed as usize) % 9 {
                    0 => blk.fill(0.0),
                    1 => blk.fill(-0.25),
                    2 => blk.iter_mut().for_each(|v| *v = v.abs() + 1.0),
                    3 => blk.iter_mut().for_each(|v| *v = -v.abs()),
                    4 => blk.iter_mut().for_each(|v| *v *= 1e-20),
                    5 => blk[7] = 50.0,
                    _ => {}
                }
            }
            let qw: Vec<f32> = (0..nb * QK)
                .map(|i| (i as f32 + seed as f32).sin().abs() * 10.0 + 0.1)
                .collect();
            type Pair = (Weighted, usize, EncW);
            let cases: [Pair; 4] = [
                (Weighted::Q4_0, Q4_0_BYTES, quantize_row_q4_0_imatrix),
                (Weighted::Q4_1, Q4_1_BYTES, quantize_row_q4_1_imatrix),
                (Weighted::Q5_0, Q5_0_BYTES, quantize_row_q5_0_imatrix),
                (Weighted::Q5_1, Q5_1_BYTES, quantize_row_q5_1_imatrix),
            ];
            for (kind, bytes, enc) in cases {
                let mut fast = vec![0u8; nb * bytes];
                let mut slow = vec![0u8; nb * bytes];
                enc(&x, &qw, &mut fast);
                match bytes {
                    Q4_0_BYTES => {
                        quantize_row_weighted_scalar::<Q4_0_BYTES>(kind, &x, &qw, &mut slow)
                    }
                    Q4_1_BYTES => {
                        quantize_row_weighted_scalar::<Q4_1_BYTES>(kind, &x, &qw, &mut slow)
                    }
                    Q5_0_BYTES => {
                        quantize_row_weighted_scalar::<Q5_0_BYTES>(kind, &x, &qw, &mut slow)
                    }
                    _ => quantize_row_weighted_scalar::<Q5_1_BYTES>(kind, &x, &qw, &mut slow),
                }
                if let Some(i) = fast.iter().zip(&slow).position(|(a, b)| a != b) {
                    panic!(
                        "seed {seed} type bytes {bytes}: block {} byte {} differs",
                        i / bytes,
                        i % bytes
                    );
                }
            }
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
    fn subnormal_scales_cast_like_x86() {
        // amax = 1e-42: d = amax / 127 is subnormal, 1/d overflows to Inf, every x * id is
        // ±Inf or NaN and x86 converts those to 0x80000000: all quants are 0.
        let x: Vec<f32> = (0..32)
            .map(|i| {
                if i % 3 == 0 {
                    -1e-42
                } else {
                    1e-42 * (i % 2) as f32
                }
            })
            .collect();
        let mut q = [0xAAu8; Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut q);
        assert!(q[2..].iter().all(|&b| b == 0), "{q:?}");
        let mut q = [0xAAu8; Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut q);
        assert!(q[2..].iter().all(|&b| b == 0), "{q:?}");
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
