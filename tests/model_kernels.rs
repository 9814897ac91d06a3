//! The CPU backend's element kernels against their scalar references: F16C rounding vs
//! `half`, the inlined ties-to-even rounding vs `f32::round_ties_even`, and the activation
//! quantizers vs a straightforward transcription of ggml's.

use ggufq::model::cpu::{dot, dot_scalar, round_even_small, round_f16, round_f16_scalar, ActQuant};

/// Deterministic values over many binades, with f16 ties, subnormals, overflow and specials.
fn values() -> Vec<f32> {
    let mut v = Vec::new();
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // Random sign/mantissa, exponent in the f16-relevant range and around it.
        let bits = (s as u32 & 0x807F_FFFF) | ((((s >> 32) as u32 % 60) + 97) << 23);
        v.push(f32::from_bits(bits));
    }
    for e in -30..20 {
        let b = 2f32.powi(e);
        // Exact ties between two f16 values (11 significant bits): b·(1 + (2k+1)/2¹¹).
        for k in 0..8 {
            v.push(b * (1.0 + (2 * k + 1) as f32 / 2048.0));
            v.push(-b * (1.0 + (2 * k + 1) as f32 / 2048.0));
        }
    }
    v.extend([
        0.0,
        -0.0,
        5.96e-8,
        2.98e-8,
        2.99e-8,
        6.1e-5,
        65504.0,
        65519.0,
        65520.0,
        1e9,
        -1e9,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
    ]);
    v
}

#[test]
fn round_f16_matches_half_for_all_lengths() {
    let vals = values();
    let mut fast = vals.clone();
    let mut slow = vals.clone();
    round_f16(&mut fast);
    round_f16_scalar(&mut slow);
    for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "value {} (index {i})", vals[i]);
    }
    // Remainders shorter than one SIMD block.
    for len in 0..20 {
        let mut a = vals[..len].to_vec();
        let mut b = a.clone();
        round_f16(&mut a);
        round_f16_scalar(&mut b);
        assert_eq!(a, b, "length {len}");
    }
    let mut nan = [f32::NAN; 9];
    round_f16(&mut nan);
    assert!(nan.iter().all(|v| v.is_nan()));
}

#[test]
fn round_even_small_matches_round_ties_even() {
    let mut x = -200.0f32;
    while x <= 200.0 {
        for d in [0.0, 0.25, 0.5, 0.4999999, 0.5000001, 0.75] {
            let v = x + d;
            // Equal values (the sign of a zero result may differ, which no sum sees).
            assert_eq!(round_even_small(v), v.round_ties_even(), "{v}");
        }
        x += 1.0;
    }
    for v in values().into_iter().filter(|v| v.abs() <= 4_194_304.0) {
        assert_eq!(round_even_small(v), v.round_ties_even(), "{v}");
    }
}

/// ggml's quantize_row_q8_0 (AVX2 rounding: ties to even), dequantized again.
fn q8_0_reference(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let dh = half::f16::from_f32(d).to_f32();
        out.extend(b.iter().map(|v| (v * id).round_ties_even() * dh));
    }
    out
}

/// ggml's quantize_row_q8_K_ref, dequantized again.
fn q8k_reference(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for b in x.chunks(256) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.extend(std::iter::repeat_n(0.0, b.len()));
            continue;
        }
        let iscale = -127.0 / max;
        let d = 1.0 / iscale; // the block's stored scale
        out.extend(
            b.iter()
                .map(|v| ((iscale * v).round_ties_even() as i32).min(127) as f32 * d),
        );
    }
    out
}

#[test]
fn activation_quantizers_match_ggml_transcriptions() {
    let mut s: u32 = 12345;
    let mut next = || {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    let mut x: Vec<f32> = (0..4096).map(|_| next() * 3.0).collect();
    // A block of zeros and a block whose values sit on rounding ties.
    x[256..512].iter_mut().for_each(|v| *v = 0.0);
    for (i, v) in x[512..768].iter_mut().enumerate() {
        *v = (i as f32 - 127.5) / 127.0;
    }
    let mut a = x.clone();
    ActQuant::Q8_0.apply(&mut a);
    assert_eq!(a, q8_0_reference(&x));
    let mut a = x.clone();
    ActQuant::Q8_1.apply(&mut a);
    assert_eq!(a, q8_0_reference(&x));
    let mut a = x.clone();
    ActQuant::Q8K.apply(&mut a);
    assert_eq!(a, q8k_reference(&x));
    let mut a = x.clone();
    ActQuant::F16.apply(&mut a);
    let mut b = x.clone();
    round_f16_scalar(&mut b);
    assert_eq!(a, b);
}

#[test]
fn dot_kernels_match_f64_reference_for_all_lengths() {
    let vals: Vec<f32> = values()
        .into_iter()
        .filter(|v| v.is_finite() && v.abs() < 1e3)
        .collect();
    let (a, b) = vals.split_at(vals.len() / 2);
    for len in (0..80).chain([575, 576, 1536, 4096]) {
        let (x, y) = (&a[..len], &b[..len]);
        let exact: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
        let mag: f64 = x
            .iter()
            .zip(y)
            .map(|(&p, &q)| (p as f64 * q as f64).abs())
            .sum();
        let tol = 1e-6 * mag + 1e-30;
        for (name, got) in [("dot", dot(x, y)), ("dot_scalar", dot_scalar(x, y))] {
            assert!(
                (got as f64 - exact).abs() <= tol,
                "{name} length {len}: {got} vs {exact}"
            );
        }
    }
}
