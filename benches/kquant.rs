//! Single-thread throughput of the K-quant kernels (MB/s of f32 input).
//!
//! `cargo bench --bench kquant` (add `-- Q4_K` to run one type). Synthetic Gaussian-like
//! rows of 4096 values; the imatrix is `|sin(i)| * 10 + 0.1`. Best of several passes.

use ggufq::quant::kquants::{dequantize_row, quantize_row};
use ggufq::quant::GgmlType;
use std::hint::black_box;
use std::time::Instant;

const ROW: usize = 4096;
const ROWS: usize = 256;

fn data() -> (Vec<f32>, Vec<f32>) {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..ROW * ROWS)
        .map(|_| (next() + next() + next() + next() - 2.0) * 0.05)
        .collect();
    let w: Vec<f32> = (0..ROW)
        .map(|i| (i as f32).sin().abs() * 10.0 + 0.1)
        .collect();
    (x, w)
}

fn best_of(passes: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..passes {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (x, w) = data();
    let mb = (x.len() * 4) as f64 / 1e6;
    println!(
        "{:<6} {:>14} {:>14} {:>14}",
        "type", "quant MB/s", "imatrix MB/s", "dequant MB/s"
    );
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        if !filter.is_empty() && !filter.iter().any(|f| f.eq_ignore_ascii_case(ty.name())) {
            continue;
        }
        let rb = (ty.bytes_for(ROW as u64).unwrap_or(0)) as usize;
        let mut out = vec![0u8; rb * ROWS];
        let run = |qw: Option<&[f32]>, out: &mut [u8]| {
            for (r, o) in x.chunks_exact(ROW).zip(out.chunks_exact_mut(rb)) {
                quantize_row(ty, black_box(r), qw, o).expect("quantize");
            }
        };
        let t_plain = best_of(3, || run(None, &mut out));
        let t_imat = if ty == GgmlType::Q8_K {
            f64::NAN
        } else {
            let mut o2 = vec![0u8; rb * ROWS];
            best_of(3, || run(Some(&w), &mut o2))
        };
        let mut y = vec![0f32; ROW * ROWS];
        let t_deq = best_of(5, || {
            for (q, o) in out.chunks_exact(rb).zip(y.chunks_exact_mut(ROW)) {
                dequantize_row(ty, black_box(q), o).expect("dequantize");
            }
        });
        // Same hash as the peer harness prints, to check the bytes agree.
        let hash = out
            .iter()
            .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32));
        println!(
            "{:<6} {:>14.1} {:>14.1} {:>14.1}   (hash {hash:08x})",
            ty.name(),
            mb / t_plain,
            mb / t_imat,
            mb / t_deq
        );
    }
}
