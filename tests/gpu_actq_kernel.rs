//! The activation-rounding kernel (`shaders/actq.wgsl`) against the CPU backend's
//! `ActQuant::apply`: for every weight type the GPU's rounded activations are bit-identical
//! to the CPU's (blocks of mixed magnitudes, all-zero blocks, ties, f16 scale underflow and
//! overflow). Runs on lavapipe in CI; without an adapter it fails unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::actq::{kind_for_weight, round_rows};
use ggufq::gpu::{DeviceOptions, GpuContext};
use ggufq::model::cpu::ActQuant;
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn context() -> Option<GpuContext> {
    gpu_fixture::device(&DeviceOptions::default())
}

/// Rows of `k` values: random magnitudes varying per 32-block over ~8 decades, one all-zero
/// block, exact ties for the Q8 rounding (x = (n + 0.5) · amax / 127), f16 boundary values.
fn inputs(n_rows: usize, k: usize) -> Vec<f32> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut x = Vec::with_capacity(n_rows * k);
    for r in 0..n_rows {
        for b in 0..k / 32 {
            let scale = 10f32.powf(rnd() * 4.0);
            for j in 0..32 {
                let v = match (r + b) % 7 {
                    0 if r > 0 => 0.0,
                    1 => {
                        // ties: amax = 127 · scale, v = (j + 0.5) · scale
                        if j == 0 {
                            127.0 * scale
                        } else {
                            (j as f32 + 0.5) * scale
                        }
                    }
                    2 => 65504.0 + 8.0 * j as f32,
                    3 => 6.1e-5 * rnd(),
                    _ => rnd() * scale,
                };
                x.push(v);
            }
        }
    }
    x
}

#[test]
fn gpu_activation_rounding_is_bit_identical_to_cpu_every_type() {
    let Some(mut ctx) = context() else { return };
    let k = 512;
    let x = inputs(6, k);
    let mut bad = Vec::new();
    // Block scales by one lane per block (default) and by every thread (GGUFQ_ACTQ_DIV=0).
    for (lane_div, name) in [true, false].into_iter().flat_map(|l| {
        [
            "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K",
        ]
        .map(move |n| (l, n))
    }) {
        ctx.tune.actq_div = lane_div;
        let ty = GgmlType::from_name(name).unwrap();
        let act = ActQuant::for_weight(ty).unwrap();
        assert_eq!(kind_for_weight(ty) == 0, act == ActQuant::None, "{name}");
        let mut want = x.clone();
        want.chunks_mut(k).for_each(|r| act.apply(r));
        let got = round_rows(&ctx, ty, &x, k).unwrap();
        assert_eq!(got.len(), want.len());
        let diff: Vec<usize> = (0..x.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits() && got[i] != want[i])
            .collect();
        if let Some(&i) = diff.first() {
            bad.push(format!(
                "{name} (lane division {lane_div}): {} of {} differ, first at {i}: x {} cpu {} gpu {}",
                diff.len(),
                x.len(),
                x[i],
                want[i],
                got[i]
            ));
        }
        if act != ActQuant::None {
            // The rounding changes the values (so the test can tell it from a copy).
            assert!(
                (0..x.len()).any(|i| got[i] != x[i]),
                "{name}: nothing was rounded"
            );
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn gpu_activation_rounding_rejects_partial_rows() {
    let Some(ctx) = context() else { return };
    let ty = GgmlType::from_name("Q8_0").unwrap();
    let err = round_rows(&ctx, ty, &[0.0; 100], 64).unwrap_err();
    assert!(err.to_string().contains("whole rows of 64"), "{err}");
}

/// The rounding kernel of `ctx` tuned: subgroup path (`actq_sub`: 0 the tree, 2 the subgroup
/// code with emulated builtins, which runs on any adapter), fast division, estimate skew.
fn tuned(sub: u32, fast: bool, skew: i32) -> Option<GpuContext> {
    let mut c = context()?;
    c.tune.actq_sub = sub;
    c.tune.actq_fastdiv = fast;
    c.tune.div_skew = skew;
    Some(c)
}

#[test]
fn gpu_rounding_subgroup_path_and_fast_division_give_the_same_words() {
    // Every word of the output (rounded values, packed int8 quants, per-32 scales) of the
    // session-6 kernel (tree maxima, long division, one lane per block or every thread) equal
    // to the subgroup path's and the fast division's, for Q8_0 and Q8_K blocks; rows of 768
    // (three workgroups), 4 tokens.
    let k = 768;
    let x = inputs(4, k);
    for name in ["Q8_0", "Q4_0", "Q4_K", "Q6_K"] {
        let ty = GgmlType::from_name(name).unwrap();
        let Some(mut base_ctx) = tuned(0, false, 0) else {
            return;
        };
        base_ctx.tune.actq_div = true;
        let base = ggufq::gpu::actq::round_rows_packed(&base_ctx, ty, &x, k).unwrap();
        // The packed region is really written (quants of a non-zero block are non-zero).
        let qb = ggufq::gpu::actq::q8_base(x.len());
        assert!(base[qb..].iter().any(|w| *w != 0), "{name}: no quants");
        for (sub, fast, lane_div, skew) in [
            (0, false, false, 0),
            (0, true, true, 0),
            (2, false, true, 0),
            (2, true, true, 0),
            (2, true, true, 5),
            (0, true, false, -6),
        ] {
            let mut c = tuned(sub, fast, skew).unwrap();
            c.tune.actq_div = lane_div;
            let got = ggufq::gpu::actq::round_rows_packed(&c, ty, &x, k).unwrap();
            let diff: Vec<usize> = (0..base.len()).filter(|&i| got[i] != base[i]).collect();
            assert!(
                diff.is_empty(),
                "{name} sub {sub} fast {fast} lane_div {lane_div} skew {skew}: {} of {} words differ, first at {} ({:#x} vs {:#x})",
                diff.len(),
                base.len(),
                diff[0],
                got[diff[0]],
                base[diff[0]]
            );
        }
    }
}

#[test]
fn gpu_rounding_variants_are_bit_identical_to_cpu() {
    // The CPU backend's rounded values for the new paths (the test above compares the words
    // with the old kernel; this one with `ActQuant::apply` directly).
    let k = 512;
    let x = inputs(6, k);
    for (sub, fast) in [(2, true), (2, false), (0, true)] {
        let Some(c) = tuned(sub, fast, 3) else { return };
        for name in ["Q8_0", "Q5_1", "Q2_K", "Q4_K"] {
            let ty = GgmlType::from_name(name).unwrap();
            let act = ActQuant::for_weight(ty).unwrap();
            let mut want = x.clone();
            want.chunks_mut(k).for_each(|r| act.apply(r));
            let got = round_rows(&c, ty, &x, k).unwrap();
            let bad = (0..x.len())
                .filter(|&i| got[i].to_bits() != want[i].to_bits() && got[i] != want[i])
                .count();
            assert_eq!(bad, 0, "{name} sub {sub} fast {fast}: {bad} values differ");
        }
    }
}

/// Division pairs: the rounding's own (127 / amax, amax / 127, 1 / (127 / amax)) over many
/// decades, significands at both ends (1.0, 1.99999988), quotients that round up to the
/// next power of two, and inputs outside the long division's range (fallback to `/`).
fn div_pairs() -> Vec<(f32, f32)> {
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut p = Vec::new();
    for _ in 0..60000 {
        let r = rnd();
        // Random positive normal floats in 2^-60 .. 2^60.
        let e = (r >> 40) % 121;
        let a = f32::from_bits((((e + 67) as u32) << 23) | (r as u32 & 0x7fffff));
        let b =
            f32::from_bits(((((r >> 50) % 121 + 67) as u32) << 23) | ((r >> 20) as u32 & 0x7fffff));
        p.push((127.0, a));
        p.push((a, 127.0));
        p.push((1.0, 127.0 / a));
        p.push((a, b));
    }
    for m in [0u32, 1, 2, 0x3fffff, 0x400000, 0x7ffffe, 0x7fffff] {
        let v = f32::from_bits((127 << 23) | m);
        for (a, b) in [
            (127.0, v),
            (v, 127.0),
            (1.0, v),
            (v, 1.0),
            (v, v),
            (1.0, 3.0),
            (2.0, v),
        ] {
            p.push((a, b));
        }
    }
    for (a, b) in [
        (127.0, 1e-40), // subnormal divisor
        (1e-40, 127.0), // subnormal dividend
        (127.0, 3e38),  // quotient below the normal range
        (3e38, 1e-3),   // quotient above it
        (0.0, 127.0),
        (-127.0, 2.0),
    ] {
        p.push((a, b));
    }
    p
}

#[test]
fn gpu_fast_division_is_the_correctly_rounded_quotient() {
    // `div_fast` (with its estimate pushed off by up to ±9 units, which the correction must
    // undo; ±40 goes past the correction's reach and falls back to the long division) and
    // `div_rn` against the CPU's IEEE quotient, bit for bit. A broken correction (no loop, a
    // wrong sticky bit or guard-bit rounding) fails here.
    let pairs = div_pairs();
    let want: Vec<u32> = pairs.iter().map(|(a, b)| (a / b).to_bits()).collect();
    for (fast, skew) in [(true, 0), (true, 9), (true, -9), (true, 40), (false, 0)] {
        let Some(c) = tuned(0, fast, skew) else {
            return;
        };
        let got = ggufq::gpu::actq::divide(&c, &pairs).unwrap();
        // WGSL lets an adapter flush subnormals (the H100 does): where a subnormal dividend
        // or quotient reaches the fallback `/`, its flushed +0.0 is accepted too.
        let flushed = |i: usize| {
            let (a, _) = pairs[i];
            let q = f32::from_bits(want[i]);
            (a.is_subnormal() || q.is_subnormal()) && got[i].to_bits() == 0
        };
        let bad: Vec<usize> = (0..pairs.len())
            .filter(|&i| got[i].to_bits() != want[i] && !flushed(i))
            .collect();
        assert!(
            bad.is_empty(),
            "fast {fast} skew {skew}: {} of {} quotients differ, first {:?}: {} vs {}",
            bad.len(),
            pairs.len(),
            pairs[bad[0]],
            got[bad[0]],
            f32::from_bits(want[bad[0]])
        );
    }
}

#[test]
fn gpu_rounding_kernels_compile_with_subgroups_and_emulated() {
    // The subgroup path runs only where subgroups are 32 wide (the H100, not lavapipe):
    // compile it wherever the adapter has subgroups at all, and the emulation everywhere.
    use ggufq::gpu::kernels::{buffer_layouts, KernelKey, Kernels};
    let Some(mut c) = context() else { return };
    let has_sub = c.device.features().contains(wgpu::Features::SUBGROUP);
    for (sub, sg32) in [(1, true), (2, false), (0, false)] {
        if sg32 && !has_sub {
            eprintln!("no subgroups on this adapter: subgroup variant not compiled");
            continue;
        }
        c.subgroup32 = sg32;
        c.tune.actq_sub = sub;
        for fast in [true, false] {
            c.tune.actq_fastdiv = fast;
            let src = Kernels::source(&c, &KernelKey::ActQ).unwrap();
            assert_eq!(src.contains("subgroupMax"), sub == 1, "sub {sub}");
            assert_eq!(src.contains("sg_max_emu("), sub == 2, "sub {sub}");
            let mut k = Kernels::default();
            let (_, pl) = buffer_layouts(&c, "actq", b"r-wu");
            k.get_with_layout(&c, &KernelKey::ActQ, &pl).unwrap();
            let (_, pl) = buffer_layouts(&c, "combine", b"rrwu");
            k.get_with_layout(
                &c,
                &KernelKey::AttnCombineQ {
                    nch: 16,
                    exact: true,
                },
                &pl,
            )
            .unwrap();
        }
    }
    // Without 32-wide subgroups the default (1) cuts the subgroup path out.
    c.subgroup32 = false;
    c.tune.actq_sub = 1;
    let src = Kernels::source(&c, &KernelKey::ActQ).unwrap();
    assert!(!src.contains("SG_MAX(") && !src.contains("SG_SHUF("));
}

#[test]
fn gpu_normq8_fast_division_gives_the_same_decode_logits() {
    // `Tune::actq_fastdiv` also makes the NormQ8 kernel (rows of ≤ 4096 values) take its
    // scales by `div_fast`: the same correctly rounded quotients as `div_rn`, so the decode
    // logits (Q8_K and Q8_0 activations) must be equal bit for bit with it on and off.
    use ggufq::gpu::kernels::{KernelKey, Kernels};
    use ggufq::gpu::GpuModel;
    for mix in ["q4_k", "q4_0"] {
        let mut rows = Vec::new();
        for fast in [false, true] {
            let Some(c) = gpu_fixture::context_tuned(|c| c.tune.actq_fastdiv = fast) else {
                return;
            };
            for act in [3, 4] {
                let src = Kernels::source(&c, &KernelKey::NormQ8 { k4: 256, act }).unwrap();
                assert_eq!(src.contains("div_fast(127.0"), fast, "act {act}");
                gpu_fixture::validate_wgsl(&src, "NormQ8");
            }
            let mut m = GpuModel::load(
                c,
                &gpu_fixture::tiny_source(mix),
                gpu_fixture::decode_opts(),
            )
            .unwrap();
            assert!(m.step_roles().contains(&"norm_q8"), "{mix}");
            rows.push(gpu_fixture::decode_steps(&mut m, 24));
        }
        assert_eq!(rows[0], rows[1], "{mix}: NormQ8 with div_fast differs");
    }
}
