//! Plain floating-point storage types: F32, F16 (IEEE binary16) and BF16 (brain float).
//!
//! The conversions reproduce ggml 0.25.3 bit for bit:
//!
//! * f32 → f16 rounds to nearest, ties to even. Values from 65520 up become ±Inf; values at or
//!   below 2^-25 become ±0 (the sign is kept). f32 subnormals are converted exactly like any
//!   other value (no flush to zero).
//! * f32 → bf16 keeps the upper 16 bits of the f32, rounded to nearest even (subnormals are not
//!   flushed), the same as `ggml_fp32_to_bf16_row_ref`.
//! * f16 → f32 and bf16 → f32 are exact.
//!
//! NaN policy (ggml's, kept so that outputs match llama.cpp): f32 → f16 turns every NaN into the
//! canonical quiet NaN `0x7E00` with the input's sign (the payload is dropped); f32 → bf16 keeps
//! the upper payload bits and sets the quiet bit (`0x0040`); f16 → f32 keeps the payload and
//! sets the quiet bit. No NaN appears unless the input holds one.

/// Convert an f32 to IEEE binary16 bits, rounding to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let abs = x & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        // NaN: canonical quiet NaN, sign kept.
        return sign | 0x7E00;
    }
    if abs >= 0x477F_F000 {
        // 65520 (half-way between 65504 and 2^16) and above, Inf included: ±Inf.
        return sign | 0x7C00;
    }
    if abs >= 0x3880_0000 {
        // Normal in f16 (>= 2^-14): rebias the exponent by 127 - 15 = 112 and round the 13
        // dropped mantissa bits to nearest even. A carry into the exponent is the right answer.
        let m = abs - 0x3800_0000;
        let round = 0x0FFF + ((m >> 13) & 1);
        return sign | ((m + round) >> 13) as u16;
    }
    if abs <= 0x3300_0000 {
        // At or below 2^-25 (half the smallest subnormal): the tie goes to the even value 0.
        return sign;
    }
    // f16 subnormal: k * 2^-24 with k = mant * 2^(e - 150 + 24), e in 102..=112.
    let e = abs >> 23;
    let mant = (abs & 0x007F_FFFF) | 0x0080_0000;
    let shift = 126 - e; // 14..=24
    let q = mant >> shift;
    let rem = mant & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let q = if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    };
    sign | q as u16
}

/// Convert IEEE binary16 bits to f32 exactly (ggml's `GGML_FP16_TO_FP32`).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1F;
    let man = h & 0x03FF;
    let bits = if exp == 0x1F {
        // Inf, or NaN with its payload kept and made quiet.
        let quiet = if man != 0 { 0x0040_0000 } else { 0 };
        sign | 0x7F80_0000 | (man << 13) | quiet
    } else if exp != 0 {
        sign | ((exp + 112) << 23) | (man << 13)
    } else if man == 0 {
        sign
    } else {
        // Subnormal: man * 2^-24, exact in f32.
        sign | (man as f32 * f32::from_bits(0x3380_0000)).to_bits()
    };
    f32::from_bits(bits)
}

/// Convert an f32 to bf16 bits, rounding to nearest even (ggml's `ggml_compute_fp32_to_bf16`).
#[inline]
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    // NaN: keep the upper bits, force the quiet bit. Written as a select so rows vectorize.
    let nan = (u >> 16) | 0x40;
    let rounded = u.wrapping_add(0x7FFF + ((u >> 16) & 1)) >> 16;
    (if u & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

/// Convert bf16 bits to f32 exactly.
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Encode `src` as little-endian f32. `dst` holds `4 * src.len()` bytes.
pub(crate) fn quantize_row_f32(src: &[f32], dst: &mut [u8]) {
    for (x, d) in src.iter().zip(dst.chunks_exact_mut(4)) {
        d.copy_from_slice(&x.to_le_bytes());
    }
}

/// Decode little-endian f32 values.
pub(crate) fn dequantize_row_f32(src: &[u8], dst: &mut [f32]) {
    for (s, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// Encode each value with `conv` as a little-endian u16, 8 at a time so the loop vectorizes.
#[inline(always)]
fn encode_u16(src: &[f32], dst: &mut [u8], conv: impl Fn(f32) -> u16) {
    let mut xs = src.chunks_exact(8);
    let mut ds = dst.chunks_exact_mut(16);
    for (x, d) in (&mut xs).zip(&mut ds) {
        let mut h = [0u16; 8];
        for (o, &v) in h.iter_mut().zip(x) {
            *o = conv(v);
        }
        for (pair, v) in d.chunks_exact_mut(2).zip(h) {
            pair.copy_from_slice(&v.to_le_bytes());
        }
    }
    for (&v, d) in xs
        .remainder()
        .iter()
        .zip(ds.into_remainder().chunks_exact_mut(2))
    {
        d.copy_from_slice(&conv(v).to_le_bytes());
    }
}

/// Encode `src` as little-endian f16. `dst` holds `2 * src.len()` bytes.
pub(crate) fn quantize_row_f16(src: &[f32], dst: &mut [u8]) {
    encode_u16(src, dst, f32_to_f16);
}

/// Decode little-endian f16 values.
pub(crate) fn dequantize_row_f16(src: &[u8], dst: &mut [f32]) {
    for (s, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// Encode `src` as little-endian bf16. `dst` holds `2 * src.len()` bytes.
pub(crate) fn quantize_row_bf16(src: &[f32], dst: &mut [u8]) {
    encode_u16(src, dst, f32_to_bf16);
}

/// Decode little-endian bf16 values.
pub(crate) fn dequantize_row_bf16(src: &[u8], dst: &mut [f32]) {
    for (s, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = bf16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Bit patterns spread over the whole f32 range plus every f16 rounding boundary.
    fn probe_patterns() -> impl Iterator<Item = u32> {
        let strided = (0..u32::MAX / 7919).map(|i| i * 7919);
        // Around every f16 value: the f32 halfway points and their neighbours.
        let boundaries = (0u32..0x7C00).flat_map(|h| {
            let lo = f16_to_f32(h as u16).to_bits();
            let hi = f16_to_f32(h as u16 + 1).to_bits();
            let mid = lo + (hi - lo) / 2;
            [mid.wrapping_sub(1), mid, mid + 1, lo, hi]
        });
        strided.chain(boundaries).flat_map(|b| [b, b | 0x8000_0000])
    }

    #[test]
    fn f16_matches_correct_rounding_for_non_nan() {
        for bits in probe_patterns() {
            let f = f32::from_bits(bits);
            if f.is_nan() {
                continue;
            }
            let ours = f32_to_f16(f);
            let reference = f16::from_f32(f).to_bits();
            assert_eq!(ours, reference, "f32 bits {bits:#010x}");
        }
    }

    #[test]
    fn f16_decode_is_exact_for_all_values() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let reference = f16::from_bits(h).to_f32();
            if reference.is_nan() {
                assert!(ours.is_nan());
                assert_eq!(
                    ours.to_bits() & 0x8000_0000,
                    reference.to_bits() & 0x8000_0000
                );
                // quiet bit set, payload kept
                assert_eq!(ours.to_bits() & 0x0040_0000, 0x0040_0000);
                assert_eq!((ours.to_bits() >> 13) & 0x1FF, (h as u32) & 0x1FF);
            } else {
                assert_eq!(ours.to_bits(), reference.to_bits(), "f16 bits {h:#06x}");
                // Round trip is the identity for every non-NaN value, -0.0 included.
                assert_eq!(f32_to_f16(ours), h);
            }
        }
    }

    #[test]
    fn f16_edge_values() {
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16(65519.99), 0x7BFF);
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7C00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xFC00);
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: goes to the even mantissa (1.0).
        assert_eq!(f32_to_f16(1.0 + f32::powi(2.0, -11)), 0x3C00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3C02);
        // Smallest subnormal 2^-24; 2^-25 ties to zero; just above rounds up.
        assert_eq!(f32_to_f16(f32::powi(2.0, -24)), 0x0001);
        assert_eq!(f32_to_f16(f32::powi(2.0, -25)), 0x0000);
        assert_eq!(f32_to_f16(f32::from_bits(0x3300_0001)), 0x0001);
        assert_eq!(f32_to_f16(-f32::powi(2.0, -25)), 0x8000);
        // f32 subnormals go to (signed) zero.
        assert_eq!(f32_to_f16(f32::from_bits(1)), 0x0000);
        assert_eq!(f32_to_f16(-f32::from_bits(1)), 0x8000);
        // NaN policy: canonical quiet NaN with the sign.
        assert_eq!(f32_to_f16(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16(-f32::NAN), 0xFE00);
        assert_eq!(f32_to_f16(f32::from_bits(0x7F80_0001)), 0x7E00);
    }

    #[test]
    fn bf16_matches_correct_rounding_and_nan_policy() {
        for bits in probe_patterns() {
            let f = f32::from_bits(bits);
            let ours = f32_to_bf16(f);
            if f.is_nan() {
                assert_eq!(ours, ((bits >> 16) | 0x40) as u16);
                continue;
            }
            assert_eq!(ours, bf16::from_f32(f).to_bits(), "f32 bits {bits:#010x}");
            assert_eq!(bf16_to_f32(ours).to_bits(), (ours as u32) << 16);
        }
        assert_eq!(f32_to_bf16(-0.0), 0x8000);
        // Subnormals are rounded, not flushed.
        assert_eq!(f32_to_bf16(f32::from_bits(0x0000_8000)), 0x0000);
        assert_eq!(f32_to_bf16(f32::from_bits(0x0001_8000)), 0x0002);
        assert_eq!(f32_to_bf16(f32::from_bits(0x0001_0000)), 0x0001);
        // Largest finite rounds up to Inf.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
    }

    #[test]
    fn rows_round_trip() {
        let src = [1.5f32, -0.0, 3.0e-8, -65504.0, 1.0e-40];
        let mut b = [0u8; 20];
        let mut back = [0f32; 5];
        quantize_row_f32(&src, &mut b);
        dequantize_row_f32(&b, &mut back);
        for (a, b) in src.iter().zip(back.iter()) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        let mut h = [0u8; 10];
        quantize_row_f16(&src, &mut h);
        // 8-at-a-time and remainder paths agree with the scalar conversion.
        let long: Vec<f32> = (0..21).map(|i| i as f32 * 1.37 - 9.0).collect();
        let mut lb = [0u8; 42];
        quantize_row_f16(&long, &mut lb);
        for (v, p) in long.iter().zip(lb.chunks_exact(2)) {
            assert_eq!(u16::from_le_bytes([p[0], p[1]]), f32_to_f16(*v));
        }
        quantize_row_bf16(&long, &mut lb);
        for (v, p) in long.iter().zip(lb.chunks_exact(2)) {
            assert_eq!(u16::from_le_bytes([p[0], p[1]]), f32_to_bf16(*v));
        }
        dequantize_row_f16(&h, &mut back);
        assert_eq!(back[0], 1.5);
        assert_eq!(back[1].to_bits(), 0x8000_0000);
        assert_eq!(back[2], f16::from_f32(3.0e-8).to_f32());
        assert_eq!(back[3], -65504.0);
        assert_eq!(back[4].to_bits(), 0);
        quantize_row_bf16(&src, &mut h);
        dequantize_row_bf16(&h, &mut back);
        assert_eq!(back[0], 1.5);
        assert_eq!(back[1].to_bits(), 0x8000_0000);
        assert!((back[2] - 3.0e-8).abs() <= 3.0e-8 / 128.0);
    }
}
