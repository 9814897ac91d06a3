//! An independent cross-check of ggufq's kernels against candle-core (a second Rust
//! implementation of ggml's formats): for every quantized type both read, ggufq's decoder gives
//! the same floats bit for bit as candle's; for the legacy types, whose encoders candle ports
//! from ggml's reference code, ggufq's encoder gives the same bytes. (candle's K-quant encoders
//! follow an older ggml algorithm, so only their decoders are compared; ggufq's K-quant encoders
//! are checked against ggml's own golden vectors in tests/golden.rs.)

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ggufq::quant::{dequantize_tensor, quantize_tensor, GgmlType};

/// Deterministic test weights: a mix of scales, signs and a few outliers, like real weights.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
            let scale = if i % 97 == 0 {
                8.0
            } else {
                0.05 + (i % 7) as f32 * 0.02
            };
            u * scale
        })
        .collect()
}

const TYPES: [(GgmlType, GgmlDType); 10] = [
    (GgmlType::Q4_0, GgmlDType::Q4_0),
    (GgmlType::Q4_1, GgmlDType::Q4_1),
    (GgmlType::Q5_0, GgmlDType::Q5_0),
    (GgmlType::Q5_1, GgmlDType::Q5_1),
    (GgmlType::Q8_0, GgmlDType::Q8_0),
    (GgmlType::Q2_K, GgmlDType::Q2K),
    (GgmlType::Q3_K, GgmlDType::Q3K),
    (GgmlType::Q4_K, GgmlDType::Q4K),
    (GgmlType::Q5_K, GgmlDType::Q5K),
    (GgmlType::Q6_K, GgmlDType::Q6K),
];

#[test]
fn decoders_agree_with_candle_bit_for_bit() {
    let n = 4 * 1024;
    for (i, (ty, dt)) in TYPES.into_iter().enumerate() {
        let x = weights(n, 11 + i as u64);
        let q = quantize_tensor(ty, &x, 1024, None).unwrap();
        let ours = dequantize_tensor(ty, &q, n).unwrap();
        let theirs = qtensor_from_ggml(dt, &q, vec![n], &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ty:?}");
        for (j, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{ty:?} value {j}: ggufq {a} candle {b}"
            );
        }
        // And the round trip actually quantized something (not all zeros, not lossless).
        assert!(ours.iter().any(|v| *v != 0.0), "{ty:?}");
        assert!(ours.iter().zip(&x).any(|(a, b)| a != b), "{ty:?}");
    }
}

#[test]
fn legacy_encoders_agree_with_candle_byte_for_byte() {
    let n = 8 * 1024;
    for (i, (ty, dt)) in TYPES.into_iter().take(5).enumerate() {
        let x = weights(n, 101 + i as u64);
        let ours = quantize_tensor(ty, &x, 2048, None).unwrap();
        let t = Tensor::from_vec(x.clone(), (4, 2048), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&t, dt)
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        assert_eq!(ours.len(), theirs.len(), "{ty:?}");
        if let Some(j) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "{ty:?}: first differing byte {j}: ggufq {} candle {}",
                ours[j], theirs[j]
            );
        }
    }
}
