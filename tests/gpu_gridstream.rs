//! `ggufq bench --kernels --grid-stream` (src/gpu/gridstream.rs): every way of streaming the
//! steps (dependent dispatches, one dispatch without barriers, a grid barrier with the next
//! step's words loaded ahead of it) must read each word of each step exactly once, which the
//! kernel's sum shows against the host's; a check that expects another sum must fail. Runs on
//! lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::gridstream::{grid_stream_bench, grid_stream_run, source, GridPlan};

fn plan(layers: u32, budget: u64, workgroups: &[u32], prefetch: &[u32]) -> GridPlan {
    GridPlan {
        layers,
        budget,
        workgroups: workgroups.to_vec(),
        prefetch: prefetch.to_vec(),
        reps: 1,
    }
}

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

#[test]
fn gpu_every_stream_reads_each_word_once() {
    let Some(ctx) = gpu_fixture::context() else {
        return;
    };
    // Steps of odd sizes (a partial 16-byte word, one shorter than a workgroup's share, one
    // over several loop turns of 1 or 2 workgroups); the budget holds two of the five layers,
    // so three are repeats of them.
    let steps = [3 * 4096 + 5, 1000, 16 * 1000 + 16];
    let layer: u64 = steps.iter().map(|b: &u64| b.div_ceil(16) * 16).sum();
    let rows =
        grid_stream_bench(&ctx, &steps, &plan(5, 2 * layer, &[1, 2], &[0, 1, 3, 8])).unwrap();
    let cpu = ctx.facts.is_cpu();
    // Per workgroup count: dispatches, the stream without barrier, and the grid barrier at
    // four depths where the adapter can run it (one workgroup on a CPU adapter).
    assert_eq!(rows.len(), if cpu { 6 + 2 } else { 2 * 6 }, "{rows:#?}");
    for r in &rows {
        assert!(r.sum_ok, "{r:?}");
        assert!(!r.run.timed_out, "{r:?}");
        assert_eq!(r.steps, 15, "{r:?}");
        assert!(
            r.run.us_per_layer > 0.0 && r.run.tbps > 0.0 && r.run.tbps.is_finite(),
            "{r:?}"
        );
    }
    let depths: Vec<u32> = rows
        .iter()
        .filter(|r| r.run.kind == "grid barrier" && r.run.workgroups == 1)
        .map(|r| r.run.prefetch)
        .collect();
    assert_eq!(depths, [0, 1, 3, 8]);
    // Fault injection: a sum expected one higher fails every variant.
    let rows = grid_stream_run(&ctx, &steps, &plan(3, 2 * layer, &[1], &[2]), 1).unwrap();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert!(rows.iter().all(|r| !r.sum_ok), "{rows:#?}");
    // Bad requests are errors, not panics.
    assert!(grid_stream_bench(&ctx, &[], &plan(1, 1 << 20, &[1], &[0])).is_err());
    assert!(grid_stream_bench(&ctx, &[64, 0], &plan(1, 1 << 20, &[1], &[0])).is_err());
    assert!(grid_stream_bench(&ctx, &[64], &plan(0, 1 << 20, &[1], &[0])).is_err());
    let e = grid_stream_bench(&ctx, &[1 << 20], &plan(1, 1 << 16, &[1], &[0])).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    // Plans the kernels cannot run: refused before anything is allocated.
    for (p, says) in [
        (plan(5000, 1 << 20, &[1], &[0]), "5000 layers"),
        (plan(1, 1 << 20, &[], &[0]), "workgroup counts []"),
        (plan(1, 1 << 20, &[1, 0], &[0]), "workgroup counts [1, 0]"),
        (plan(1, 1 << 20, &[70_000], &[0]), "each must be 1 to 65535"),
        (plan(1, 1 << 20, &[1], &[65]), "65 loads ahead"),
    ] {
        let e = grid_stream_bench(&ctx, &[64], &p).unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = ggufq::gpu::gridmv::grid_matvec_bench(&ctx, &[(64, 64)], &plan(1, 1 << 20, &[1], &[9]))
        .unwrap_err();
    assert!(e.to_string().contains("grid matvec: 9 loads ahead"), "{e}");
}

#[test]
fn stream_kernel_unrolls_the_words_ahead() {
    let s = source(3);
    assert!(s.contains("const PRE: u32 = 3u;"));
    for i in 0..3 {
        assert!(
            s.contains(&format!("var q{i} = ld(s0, gid + {i}u * nt);")),
            "{s}"
        );
        assert!(s.contains(&format!("acc += q{i};")), "{s}");
        assert!(
            s.contains(&format!("q{i} = ld(sn, gid + {i}u * nt);")),
            "{s}"
        );
    }
    assert!(!s.contains("q3"));
    assert!(!s.contains('$'), "{s}");
    assert!(!source(0).contains("q0"));
}

/// The chain's last outputs as the kernel defines them, computed on the host in f64 and
/// dequantized: each step takes the integer dot of every block of its input (the previous
/// step's int8 blocks) with the row's quants times both scales, clamps it to ±1e4, and rounds
/// each tile of 32 rows to one int8 block (scale = max magnitude / 127).
fn chain_on_host(chain: &ggufq::gpu::gridmv::Chain) -> Vec<f64> {
    let max_r = chain.max_r as usize;
    let half = max_r / 4 + max_r / 32;
    let mut act = chain.input.clone();
    let quant =
        |act: &[u32], base: usize, i: usize| (act[base + i / 4] >> (8 * (i % 4))) as u8 as i8;
    let scale = |act: &[u32], base: usize, b: usize| f32::from_bits(act[base + max_r / 4 + b]);
    for (s, seg) in chain.segs.iter().enumerate() {
        let [q0, s0, m, k] = seg.map(|v| v as usize);
        let (inb, outb) = (((s + 1) & 1) * half, (s & 1) * half);
        let mut y = vec![0f32; m];
        for (r, out) in y.iter_mut().enumerate() {
            let mut acc = 0f64;
            for b in 0..k / 32 {
                let mut dot = 0i64;
                for i in 0..32 {
                    let e = r * k + 32 * b + i;
                    let q = (chain.words[4 * q0 + e / 4] >> (8 * (e % 4))) as u8 as i8;
                    dot += q as i64 * quant(&act, inb, 32 * b + i) as i64;
                }
                let sw = chain.words[s0 + r * (k / 64) + b / 2];
                let bits = if b % 2 == 0 { sw & 0xffff } else { sw >> 16 };
                let dw = half::f16::from_bits(bits as u16).to_f64();
                acc += dot as f64 * dw * scale(&act, inb, b) as f64;
            }
            *out = acc.clamp(-1e4, 1e4) as f32;
        }
        for (tile, v) in y.chunks(32).enumerate() {
            let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for (w, four) in v.chunks(4).enumerate() {
                act[outb + tile * 8 + w] = four.iter().enumerate().fold(0u32, |a, (j, x)| {
                    a | ((((x * id).round_ties_even() as i32) as u32 & 0xff) << (8 * j))
                });
            }
            act[outb + max_r / 4 + tile] = (amax / 127.0).to_bits();
        }
    }
    let (last, m) = (
        chain.segs.len() - 1,
        chain.segs[chain.segs.len() - 1][2] as usize,
    );
    let base = (last & 1) * half;
    (0..m)
        .map(|i| quant(&act, base, i) as f64 * scale(&act, base, i / 32) as f64)
        .collect()
}

#[test]
fn gpu_matvec_chain_in_one_dispatch_equals_its_dispatches_and_the_host() {
    use ggufq::gpu::gridmv::{grid_matvec_bench, layout_chain};
    let Some(ctx) = gpu_fixture::context() else {
        return;
    };
    // Three layers of four steps, the budget holding two layers (the third repeats the
    // first); no step's 32-row tiles are a multiple of three workgroups.
    let shapes = [(224u32, 128u32), (128, 192), (320, 128), (128, 320)];
    let bytes: u64 = shapes
        .iter()
        .map(|&(r, k)| r as u64 * k as u64 * 17 / 16)
        .sum();
    let budget = 2 * bytes + 64;
    let rows = grid_matvec_bench(&ctx, &shapes, &plan(3, budget, &[1, 3], &[0, 1, 2])).unwrap();
    let cpu = ctx.facts.is_cpu();
    // Per workgroup count: its dispatches and three depths of the grid barrier (one
    // workgroup only on a CPU adapter).
    assert_eq!(rows.len(), if cpu { 4 + 1 } else { 2 * 4 }, "{rows:#?}");
    for r in &rows {
        assert!(!r.run.timed_out, "{r:?}");
        assert_eq!(
            r.out, rows[0].out,
            "{} {} {}",
            r.run.kind, r.run.workgroups, r.run.prefetch
        );
        assert!(r.run.us_per_layer > 0.0 && r.run.tbps > 0.0, "{r:?}");
    }
    let chain = layout_chain(&ctx, &shapes, 3, budget).unwrap();
    assert_eq!(chain.segs.len(), 12);
    assert_eq!(chain.segs[8], chain.segs[0], "layer 3 repeats layer 1");
    assert_ne!(chain.segs[4], chain.segs[0]);
    let host = chain_on_host(&chain);
    // The GPU's last outputs, dequantized: 128 quants in 32 words, then 4 scales.
    let out = &rows[0].out;
    assert_eq!(out.len(), 32 + 4);
    let got: Vec<f64> = (0..128)
        .map(|i| {
            (out[i / 4] >> (8 * (i % 4))) as u8 as i8 as f64
                * f32::from_bits(out[32 + i / 32]) as f64
        })
        .collect();
    let scale = host.iter().fold(0f64, |a, v| a.max(v.abs()));
    assert!(
        scale > 1e-3 && scale < 1e4,
        "values vanished or grew: {scale}"
    );
    let worst = got
        .iter()
        .zip(&host)
        .map(|(g, h)| (g - h).abs())
        .fold(0f64, f64::max);
    // Summation order differs (lanes, then the subgroup sum), so a value on the other side
    // of a rounding boundary moves one quant now and then: far less than this, while a wrong
    // block, row or scale is off by the values' own size.
    assert!(worst <= 0.03 * scale, "worst {worst} of {scale}");
    // Shapes the chain cannot take.
    assert!(layout_chain(&ctx, &[], 1, budget).is_err());
    assert!(layout_chain(&ctx, &[(64, 100)], 1, budget).is_err());
    assert!(layout_chain(&ctx, &[(48, 64)], 1, budget).is_err());
    assert!(layout_chain(&ctx, &[(64, 128), (64, 128)], 1, budget).is_err());
    let e = layout_chain(&ctx, &[(4096, 4096)], 1, 1 << 16)
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn gpu_grid_stream_and_matvec_print_their_tables() {
    let Some(_ctx) = gpu_fixture::context() else {
        return;
    };
    let run = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("ggufq")
            .unwrap()
            .args(["bench", "--kernels"])
            .args(args)
            .env("LP_NUM_THREADS", "1")
            .assert()
    };
    let out = run(&[
        "--grid-stream",
        "--kernel-types",
        "q4_k,Q8_0",
        "--chain-shapes",
        "256x256,512x256",
        "--stream-layers",
        "3",
        "--sync-workgroups",
        "1",
        "--stream-prefetch",
        "0,2",
        "-r",
        "3",
    ])
    .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains("3 layers of 2 steps (256x256, 512x256)"),
        "{text}"
    );
    // Per type: dispatches, no barrier, grid barrier at two depths; every sum ok.
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| Q")).collect();
    assert_eq!(rows.len(), 8, "{text}");
    assert!(rows.iter().all(|l| l.ends_with("| ok |")), "{text}");
    assert_eq!(rows.iter().filter(|l| l.starts_with("| Q4_K |")).count(), 4);
    let out = run(&[
        "--grid-matvec",
        "--chain-shapes",
        "512x256,256x512",
        "--stream-layers",
        "2",
        "--sync-workgroups",
        "1,2",
        "--stream-prefetch",
        "1",
        "-r",
        "3",
    ])
    .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| dependent") || l.starts_with("| grid"))
        .collect();
    assert!(rows.len() >= 3, "{text}");
    assert!(
        rows.iter().all(|l| l.ends_with("| = dispatches |")),
        "{text}"
    );
    // A step with more columns than the step before it (the last, for the first) has rows is
    // refused, by name.
    let out = run(&["--grid-matvec", "--chain-shapes", "64x256,64x512"]).failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("step 0 (64x256)"), "{err}");
    let out = run(&["--grid-stream", "--kernel-types", "Q9_X"]).failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("Q9_X"), "{err}");
}
