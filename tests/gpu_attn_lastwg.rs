//! The split decode attention's last-workgroup epilogue (`Tune::attn_lastwg`,
//! `KernelKey::AttnDecodeQ`): the last workgroup of each group of 256 / head-size heads
//! combines the group's partial results and rounds them for `wo` with the code of the combine
//! dispatch (`KernelKey::AttnCombineQ`), so the decode logits must equal the graph with the
//! combine dispatch bit for bit, with one dispatch per layer less.
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuContext, GpuModel, ModelOptions, Shape, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::context_tuned;

/// Split decode attention (chunks of ≥ 16 positions), exact or flash-decoding, with the
/// epilogue mode `lastwg` (0 combine dispatch, 1 epilogue, 2 epilogue without counter reset).
fn ctx(exact: bool, lastwg: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.attn_split = 16;
        c.tune.attn_exact = exact;
        c.tune.attn_lastwg = lastwg;
    })
}

/// hd 64 with GQA (the tiny shape: 4 heads, 2 KV heads, one group of 4 heads) and hd 128
/// without GQA (2 groups of 2 heads). (A ragged last group needs n_head · hd not a multiple of
/// 256, which the fused decode graph, rows of whole 256-value blocks, never has.)
fn shape(name: &str) -> Shape {
    let mut s = Shape::named("tiny").unwrap();
    match name {
        "tiny" => {}
        "hd128" => {
            s.n_embd = 512;
            s.n_head = 4;
            s.n_kv = 4;
        }
        _ => panic!("shape {name}"),
    }
    s
}

const N_CTX: usize = 256;

/// Decode logits of `steps` one-token forwards after a 5-token prompt (positions 5 …): with
/// chunks of 16, positions 5 … 44 use 1 to 3 of the 16 chunks per head (the others empty).
fn decode(m: &mut GpuModel, steps: usize) -> Vec<Vec<f32>> {
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<(u32, u32, u32)> = (0..5u32).map(|i| ((i * 37 + 11) % nv, 0, i)).collect();
    m.forward(&prompt, false).unwrap();
    (0..steps as u32)
        .map(|i| m.forward(&[((i * 53 + 7) % nv, 0, 5 + i)], false).unwrap())
        .collect()
}

/// Load `shape` × `mix` with the combine dispatch and with `lastwg`; check the graphs (one
/// dispatch per layer less, no `attn_out_q`) and return both decode rows.
fn pair(
    shape_name: &str,
    mix: &str,
    exact: bool,
    lastwg: u32,
) -> Option<Vec<(Vec<f32>, Vec<f32>)>> {
    let plain = ctx(exact, 0)?;
    let fused = ctx(exact, lastwg)?;
    let src = SynthSource::new(shape(shape_name), Mix::parse(mix).unwrap(), mix).unwrap();
    let opts = ModelOptions {
        n_ctx: N_CTX,
        n_batch: 8,
        n_seq: 1,
    };
    let mut mp = GpuModel::load(plain, &src, opts.clone()).unwrap();
    let mut mf = GpuModel::load(fused, &src, opts).unwrap();
    let layers = mp.cfg.n_layer;
    let count = |m: &GpuModel, r: &str| m.step_roles().iter().filter(|x| **x == r).count();
    assert_eq!(count(&mp, "attn_out_q"), layers, "{:?}", mp.step_roles());
    assert_eq!(count(&mf, "attn_out_q"), 0, "{:?}", mf.step_roles());
    assert_eq!(
        mf.dispatches_per_token() + layers,
        mp.dispatches_per_token(),
        "{shape_name} {mix}: one dispatch per layer less"
    );
    let steps = 40;
    let a = decode(&mut mp, steps);
    let b = decode(&mut mf, steps);
    Some(a.into_iter().zip(b).collect())
}

#[test]
fn gpu_attn_lastwg_equals_the_combine_dispatch_bit_for_bit() {
    // Q8_K rounding (q4_k: 256-value blocks = whole groups), Q8_0 (q8_0, q4_0: 32-value
    // blocks, integer mat-vecs), Q8_1 (q5_1: the f32 mat-vec reads the rounded values), f16.
    for (shape_name, mix) in [
        ("tiny", "q4_k"),
        ("tiny", "q8_0"),
        ("tiny", "q5_1"),
        ("tiny", "f16"),
        ("hd128", "q4_k"),
        ("hd128", "q4_0"),
    ] {
        let Some(rows) = pair(shape_name, mix, true, 1) else {
            return;
        };
        for (i, (p, f)) in rows.iter().enumerate() {
            assert!(
                p.iter().all(|v| v.is_finite()),
                "{shape_name} {mix}: non-finite"
            );
            assert_eq!(p, f, "{shape_name} {mix}: position {} differs", i + 5);
        }
    }
}

#[test]
fn gpu_attn_lastwg_flash_decoding_equals_the_combine_dispatch() {
    // GGUFQ_ATTN_EXACT=0: the epilogue weighs the chunks by sum · exp(max − M) as the combine
    // dispatch does (same function, same order).
    for (shape_name, mix) in [("tiny", "q6_k"), ("hd128", "q8_0")] {
        let Some(rows) = pair(shape_name, mix, false, 1) else {
            return;
        };
        for (i, (p, f)) in rows.iter().enumerate() {
            assert_eq!(p, f, "{shape_name} {mix} flash: position {} differs", i + 5);
        }
    }
}

#[test]
fn gpu_attn_lastwg_without_counter_reset_is_caught() {
    // Fault injection (attn_lastwg = 2): the counters are never reset, so from the second
    // layer on no workgroup sees its group complete and wo reads the first layer's rounding.
    // The bit-for-bit comparison above must see that.
    let Some(rows) = pair("tiny", "q4_k", true, 2) else {
        return;
    };
    let differ = rows.iter().filter(|(p, f)| p != f).count();
    assert_eq!(differ, rows.len(), "a missing counter reset went unnoticed");
}

#[test]
fn gpu_attn_lastwg_matches_the_cpu_backend() {
    // Criterion of tests/gpu_attn_split.rs: most rows within 1e-5 of the CPU backend (a
    // flipped rounding of an activation may spread to later rows), top-1 always the CPU's.
    // The Q8_0 models are ~1.3e-2 from the CPU in every row with or without the epilogue
    // (and with GGUFQ_FOLD_ACTQ=0), so for them only the bound and top-1 are checked.
    for (shape_name, mix, strict) in [
        ("tiny", "q4_k", true),
        ("hd128", "q4_k", true),
        ("tiny", "q8_0", false),
    ] {
        let Some(c) = ctx(true, 1) else {
            return;
        };
        let (rc, rg) = gpu_fixture::cpu_and_gpu_rows(c.clone(), shape(shape_name), mix, N_CTX);
        let argmax = |x: &[f32]| {
            x.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|a| a.0)
        };
        let errs: Vec<f64> = rc
            .iter()
            .zip(&rg)
            .map(|(c, g)| gpu_fixture::rms_rel(g, c))
            .collect();
        let close = errs.iter().filter(|e| **e < 1e-5).count();
        let worst = errs.iter().copied().fold(0f64, f64::max);
        eprintln!("{shape_name} {mix}: {close}/40 rows within 1e-5 of the CPU, worst {worst:.3e}");
        // Half the rows within 1e-5 holds where the adapter computes as the CPU does
        // (lavapipe, which CI runs); a hardware GPU contracts multiply-adds into FMAs of its
        // own choosing (H100: 14 of 40 rows, worst 1.5e-4), so there only the bounds below.
        if strict && c.facts.is_cpu() {
            assert!(
                close * 2 >= errs.len(),
                "{shape_name} {mix}: {close}/40 close"
            );
        }
        assert!(worst < 3e-2, "{shape_name} {mix}: worst {worst:.3e}");
        for (c, g) in rc.iter().zip(&rg) {
            assert_eq!(argmax(c), argmax(g), "{shape_name} {mix}: top-1 differs");
        }
    }
}

#[test]
fn gpu_attn_lastwg_self_check_passes_and_sees_the_epilogue() {
    // The device calls' check (`ggufq bench MODEL --kernel-check`): 300 decode positions with
    // and without the epilogue, bit for bit; the line says the epilogue was used.
    let Some(c) = gpu_fixture::context() else {
        return;
    };
    let src = gpu_fixture::tiny_source("q4_k");
    let (line, ok) = ggufq::gpu::selfcheck::attn_lastwg_check(&c, &src).unwrap();
    assert!(ok, "{line}");
    assert!(line.contains("0 of 300 positions differ"), "{line}");
    assert!(!line.contains("not used"), "{line}");
}

#[test]
fn gpu_attn_lastwg_kernel_compiles_with_and_without_subgroups_and_rejects_bad_shapes() {
    // The subgroup reductions run where subgroups are 32 wide (the H100, not lavapipe):
    // compile that variant wherever the device has subgroups at all.
    use ggufq::gpu::kernels::{buffer_layouts, KernelKey, Kernels};
    let Some(c) = gpu_fixture::device(&Default::default()) else {
        return;
    };
    let mut c = c;
    let has_sub = c.device.features().contains(wgpu::Features::SUBGROUP);
    let key = |hd, nch, exact, reset| KernelKey::AttnDecodeQ {
        ctx: 512,
        hd,
        nch,
        lmin: 32,
        exact,
        reset,
    };
    for sub in [false, true] {
        if sub && !has_sub {
            eprintln!("no subgroups on this adapter: subgroup variant not compiled");
            continue;
        }
        c.subgroup32 = sub;
        let mut k = Kernels::default();
        let (_, pl) = buffer_layouts(&c, "attn decode + rounding", b"rwwwurrww");
        for (hd, nch, exact, reset) in [
            (128, 16, true, true),
            (64, 16, false, true),
            (256, 2, true, false),
        ] {
            k.get_with_layout(&c, &key(hd, nch, exact, reset), &pl)
                .unwrap();
        }
        // The epilogue's rounding takes the subgroup path exactly where subgroups run it, and
        // the live-chunk combine with the exact split.
        let src = Kernels::source(&c, &key(128, 16, true, true)).unwrap();
        assert_eq!(src.contains("subgroupMax(abs(v))"), sub);
        assert!(src.contains("fn live_chunks") && src.contains("select(0.0, x15, 15u <= last)"));
    }
    // Emulated subgroup path (tests) and the session-6 tail compile too.
    c.subgroup32 = false;
    for (sub, live) in [(2, 1), (0, 0)] {
        c.tune.actq_sub = sub;
        c.tune.attn_live = live;
        let mut k = Kernels::default();
        let (_, pl) = buffer_layouts(&c, "attn decode + rounding", b"rwwwurrww");
        k.get_with_layout(&c, &key(128, 16, true, true), &pl)
            .unwrap();
        let src = Kernels::source(&c, &key(128, 16, true, true)).unwrap();
        assert_eq!(src.contains("sg_max_emu(abs(v), lid)"), sub == 2);
        assert_eq!(src.contains("x15"), live == 1);
    }
    // No split, or heads that do not tile the rounding's 256-value blocks: errors.
    for (hd, nch) in [(128, 1), (96, 16), (512, 16)] {
        assert!(Kernels::source(&c, &key(hd, nch, true, true)).is_err());
    }
}

/// Decode logits of `steps` one-token forwards after a prompt of `prompt` tokens (fed in
/// batches of 8) on `shape_name` × `mix`, with the engine tuned by `tune` (split attention in
/// chunks of ≥ 16, exact), and the dispatches per token.
fn decode_tuned(
    shape_name: &str,
    mix: &str,
    n_ctx: usize,
    prompt: u32,
    steps: u32,
    tune: impl FnOnce(&mut ggufq::gpu::kernels::Tune),
) -> Option<(Vec<Vec<f32>>, usize)> {
    let c = context_tuned(|c| {
        c.tune.attn_split = 16;
        c.tune.attn_exact = true;
        tune(&mut c.tune);
    })?;
    let src = SynthSource::new(shape(shape_name), Mix::parse(mix).unwrap(), mix).unwrap();
    let opts = ModelOptions {
        n_ctx,
        n_batch: 8,
        n_seq: 1,
    };
    let mut m = GpuModel::load(c, &src, opts).unwrap();
    let nv = m.cfg.n_vocab as u32;
    let toks: Vec<(u32, u32, u32)> = (0..prompt).map(|i| ((i * 37 + 11) % nv, 0, i)).collect();
    for b in toks.chunks(8) {
        m.forward(b, false).unwrap();
    }
    let rows = (0..steps)
        .map(|i| {
            m.forward(&[((i * 53 + 7) % nv, 0, prompt + i)], false)
                .unwrap()
        })
        .collect();
    Some((rows, m.dispatches_per_token()))
}

/// The session-6 kernels: tree block maxima, long divisions, every chunk read and arriving,
/// no prefetch.
fn old_tail(t: &mut ggufq::gpu::kernels::Tune) {
    t.actq_sub = 0;
    t.actq_fastdiv = false;
    t.attn_live = 0;
    t.attn_skip = false;
    t.attn_pre = 0;
}

#[test]
fn gpu_attn_epilogue_new_tail_equals_the_session6_kernels_bit_for_bit() {
    // The shortened tail (subgroup maxima and packing — emulated in workgroup memory, which
    // runs the same lane arithmetic on lavapipe —, the fast division, live chunks only), each
    // part alone and all together, in the epilogue and with the combine dispatch, against
    // the combine dispatch and the epilogue of session 6: decode logits equal bit for bit.
    // Q8_K (q4_k, Q4_K_M) and Q8_0 (q8_0, q4_0) roundings; hd 64 with GQA and hd 128 without;
    // positions 5 … 36, i.e. 1 to 3 live chunks of 16.
    type Variant = (&'static str, fn(&mut ggufq::gpu::kernels::Tune));
    let variants: [Variant; 8] = [
        ("all new, epilogue", |t| {
            t.actq_sub = 2;
        }),
        ("subgroup only", |t| {
            old_tail(t);
            t.actq_sub = 2;
        }),
        ("fast division only", |t| {
            old_tail(t);
            t.actq_fastdiv = true;
        }),
        ("live chunks only", |t| {
            old_tail(t);
            t.attn_live = 1;
        }),
        ("live chunks, empty ones skipped", |t| {
            old_tail(t);
            t.attn_live = 1;
            t.attn_skip = true;
        }),
        ("K and V prefetch only", |t| {
            old_tail(t);
            t.attn_pre = 3;
        }),
        ("all new, combine dispatch", |t| {
            t.actq_sub = 2;
            t.attn_lastwg = 0;
        }),
        ("session-6 epilogue", old_tail),
    ];
    for (shape_name, mix) in [
        ("tiny", "q4_k"),
        ("tiny", "q8_0"),
        ("hd128", "q4_0"),
        ("hd128", "Q4_K_M"),
    ] {
        let Some((want, disp)) = decode_tuned(shape_name, mix, N_CTX, 5, 32, |t| {
            old_tail(t);
            t.attn_lastwg = 0;
        }) else {
            return;
        };
        assert!(want.iter().flatten().all(|v| v.is_finite()));
        for (name, tune) in variants {
            let (got, d) = decode_tuned(shape_name, mix, N_CTX, 5, 32, tune).unwrap();
            // The epilogue saves the combine dispatch of every layer.
            let epilogue = !name.contains("combine dispatch");
            assert_eq!(
                d < disp,
                epilogue,
                "{shape_name} {mix} {name}: {d} vs {disp}"
            );
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{shape_name} {mix} {name}: position {} differs",
                    i + 5
                );
            }
        }
    }
}

#[test]
fn gpu_attn_epilogue_live_chunks_past_the_minimum_chunk_length() {
    // Positions 262 … 269 in a context of 320: chunks of ceil(n / 16) = 17 positions, more
    // than the minimum of 16, so the epilogue's count of live chunks takes the other branch
    // of the attention's cut (16 live chunks, the last one partly filled).
    let Some((want, _)) = decode_tuned("tiny", "q4_k", 320, 262, 8, |t| {
        old_tail(t);
        t.attn_lastwg = 0;
    }) else {
        return;
    };
    let (got, _) = decode_tuned("tiny", "q4_k", 320, 262, 8, |t| t.actq_sub = 2).unwrap();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert!(
            w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits()),
            "position {} differs",
            i + 262
        );
    }
}

#[test]
fn gpu_attn_epilogue_live_chunks_with_a_wrong_cut_is_caught() {
    // Fault injection (attn_live = 2): the epilogue reads one live chunk too few. From
    // position 16 on (two live chunks of 16) the comparison above must see it; before, not.
    let Some((want, _)) = decode_tuned("tiny", "q4_k", N_CTX, 5, 24, |t| {
        old_tail(t);
        t.attn_lastwg = 0;
    }) else {
        return;
    };
    let (got, _) = decode_tuned("tiny", "q4_k", N_CTX, 5, 24, |t| t.attn_live = 2).unwrap();
    let differ: Vec<usize> = (0..want.len())
        .filter(|&i| want[i] != got[i])
        .map(|i| i + 5)
        .collect();
    assert_eq!(
        differ,
        (16..29).collect::<Vec<_>>(),
        "a dropped chunk went unnoticed"
    );
}

#[test]
fn gpu_attn_prefetch_and_skip_with_long_chunks_equal_the_session6_kernels() {
    // Chunks of ≥ 64 positions, so that the V prefetch (the first four accumulated positions
    // of each thread: position groups of 16 for hd 64, 8 for hd 128) applies; positions
    // 5 … 84 (1 or 2 live chunks). Everything new vs the session-6 combine dispatch, and each
    // prefetch alone, bit for bit. (The tiny model's probabilities are nearly uniform, so
    // only hd128 sees a V row weighed by the wrong probability.)
    for (shape_name, mix) in [("tiny", "q4_k"), ("hd128", "q4_0")] {
        let Some((want, _)) = decode_tuned(shape_name, mix, N_CTX, 5, 80, |t| {
            t.attn_split = 64;
            old_tail(t);
            t.attn_lastwg = 0;
        }) else {
            return;
        };
        for pre in [1, 2, 3] {
            let (got, _) = decode_tuned(shape_name, mix, N_CTX, 5, 80, |t| {
                t.attn_split = 64;
                t.actq_sub = 2;
                t.attn_pre = pre;
            })
            .unwrap();
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{shape_name} {mix} prefetch {pre}: position {} differs",
                    i + 5
                );
            }
        }
    }
}
