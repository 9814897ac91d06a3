//! The decode attention inside the QKV mat-vec's dispatch (`Tune::attn_wait`,
//! `KernelKey::MatVecAttn`): the attention's workgroups come after the mat-vec's and wait
//! on a counter instead of a barrier, with the same operations, so the decode logits must
//! equal the two-dispatch graph's bit for bit — with the block-rounding graph and with the
//! NormQ8 graph, and past the exact split's length (flash-decoding chunks). QKV mat-vecs
//! of one matrix and two-part dispatches (Q+K, then V of a type of its own, e.g. Q4_K_M's
//! and Q2_K's layers) are joined; the rows cross workgroups through atomics. The counters are zeroed by
//! the next layer's dispatch, so many tokens in a row must keep working. Runs on lavapipe
//! in CI (on one thread: `model::wait_is_ordered`); without an adapter these fail unless
//! GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::{
    atomic_f32_access, matvec_attn_kinds, matvec_attn_source, multi_binding_kinds, KernelKey,
    Kernels,
};
use ggufq::gpu::GpuModel;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{decode_steps, load_tuned, role_count, validate_wgsl};

fn load(mix: &str, wait: bool, block_norm: bool, exact_max: Option<u32>) -> Option<GpuModel> {
    load_all(mix, wait, block_norm, exact_max, false)
}

fn load_all(
    mix: &str,
    wait: bool,
    block_norm: bool,
    exact_max: Option<u32>,
    all: bool,
) -> Option<GpuModel> {
    // Lavapipe orders the waiting workgroups' reads only on one thread
    // (`model::wait_is_ordered`); set before this process opens its first device.
    std::env::set_var("LP_NUM_THREADS", "1");
    load_tuned("wide", mix, |c| {
        c.tune.attn_wait = wait;
        c.tune.attn_wait_all = all;
        // The two-part QKV dispatches joined too (off by default: the H100 kernel check).
        c.tune.attn_wait_multi = true;
        // K-quant QKV mat-vecs joined too (off by default: Q4_K_M lost time on the H100).
        c.tune.attn_wait_kquant = true;
        // The scoring form the joint kernel is measured with (fewer registers), both sides.
        c.tune.attn_coal_exact = true;
        // The attention's own chunks inside the dispatch, so both graphs add the same V
        // partials (the longer joint chunks: `joint_chunks_equal_the_split_of_their_length`).
        c.tune.attn_split_joint = Some(0);
        if block_norm {
            gpu_fixture::engine_decode_graph(c);
        }
        if let Some(m) = exact_max {
            c.tune.attn_exact_max = m;
        }
    })
}

fn joint_keys(m: &GpuModel) -> Vec<KernelKey> {
    m.decode_keys_at(0)
        .into_iter()
        .filter(|k| matches!(k, KernelKey::MatVecAttn { .. }))
        .collect()
}

/// Decode QKV mat-vecs right before an attention: of one matrix, or of two (Q+K, then V of
/// a type of its own: a multi-matrix dispatch of two parts in ranges).
fn joint_candidates(m: &GpuModel) -> usize {
    let keys = m.decode_keys_at(0);
    keys.windows(2)
        .filter(|w| {
            matches!(
                w[0],
                KernelKey::MatVecQ8 { .. }
                    | KernelKey::MatVecQ8S { .. }
                    | KernelKey::MatVecQ8Multi { n: 2, order: 0, .. }
            ) && matches!(w[1], KernelKey::AttnDecodeQ { .. })
        })
        .count()
}

#[test]
fn gpu_attention_in_the_qkv_dispatch_equals_the_two_dispatches_bit_for_bit() {
    let mut failures = Vec::new();
    for (mix, block_norm, exact_max) in [
        ("q4_0", true, None),
        ("q8_0", true, None),
        ("q4_k_m", true, None),
        ("q2_k", true, None),
        ("q6_k", true, None),
        ("hybrid", true, None),
        ("q4_0", false, None),
        ("q4_k_m", false, None),
        // Past 8 positions the flash-decoding kernel runs, in its own dispatch again.
        ("q4_0", true, Some(8)),
    ] {
        let Some(mut plain) = load(mix, false, block_norm, exact_max) else {
            return;
        };
        let ctx = gpu_fixture::context().unwrap();
        assert!(ggufq::gpu::model::wait_is_ordered(&ctx));
        let mut w = load(mix, true, block_norm, exact_max).unwrap();
        let layers = plain.cfg.n_layer;
        let what = format!("{mix} block_norm={block_norm} exact_max={exact_max:?}");
        // One joint dispatch per layer, one dispatch fewer per layer.
        assert!(joint_keys(&plain).is_empty(), "{what}");
        let joint = joint_keys(&w);
        // Every layer (its QKV one matrix, or Q+K and V of a type of its own in a
        // two-part dispatch), if there are two or more (each layer's counters are zeroed by
        // the next one's dispatch).
        let cand = joint_candidates(&plain);
        assert_eq!(joint.len(), cand, "{what}: {:?}", w.step_roles());
        assert_eq!(cand, layers, "{what}");
        // Past the exact split the two dispatches run again (the joint kernel's flash form
        // is not used: Tune::attn_exact_max).
        let far = exact_max.unwrap_or(256) + 4;
        assert_eq!(w.decode_keys_at(far), plain.decode_keys_at(far), "{what}");
        if matches!(mix, "q4_k_m" | "q2_k") {
            assert!(
                joint.iter().any(|k| matches!(
                    k,
                    KernelKey::MatVecAttn { mv, .. } if matches!(**mv, KernelKey::MatVecQ8Multi { .. })
                )),
                "{what}: {joint:?}"
            );
        }
        assert_eq!(
            w.dispatches_per_token() + cand,
            plain.dispatches_per_token(),
            "{what}"
        );
        assert_eq!(role_count(&w, "attention"), role_count(&plain, "attention"));
        // 40 tokens: past the 32-position chunks, and the counters reused 40 times.
        let base = decode_steps(&mut plain, 40);
        let rows = decode_steps(&mut w, 40);
        if let Some((t, diff)) = gpu_fixture::first_bit_difference(&base, &rows) {
            failures.push(format!("{what}: token {t}: {diff} logits differ"));
        }
    }
    // By default the two-part QKV dispatches keep their own dispatch (Tune::attn_wait_multi).
    if let Some(m) = load_tuned("wide", "q4_k_m", |c| {
        c.tune.attn_wait = true;
        c.tune.attn_coal_exact = true;
        gpu_fixture::engine_decode_graph(c);
    }) {
        let keys = m.decode_keys_at(10);
        let multi = keys
            .iter()
            .filter(|k| matches!(k, KernelKey::MatVecQ8Multi { .. }))
            .count();
        assert!(multi > 0, "{keys:?}");
        assert!(keys.iter().all(|k| !matches!(
            k,
            KernelKey::MatVecAttn { mv, .. } if matches!(**mv, KernelKey::MatVecQ8Multi { .. })
        )));
        // Nor do K-quant QKV mat-vecs of one matrix (Tune::attn_wait_kquant): Q4_K_M's
        // layers all stay apart, while Q4_0's are joined.
        assert!(joint_keys(&m).is_empty(), "{keys:?}");
    }
    if let Some(m) = load_tuned("wide", "q4_0", |c| {
        c.tune.attn_wait = true;
        c.tune.attn_coal_exact = true;
        gpu_fixture::engine_decode_graph(c);
    }) {
        assert_eq!(joint_keys(&m).len(), m.cfg.n_layer);
    }
    // Every attention workgroup waiting for all KV heads (the diagnostic form).
    if let (Some(mut plain), Some(mut all)) = (
        load("q8_0", false, true, None),
        load_all("q8_0", true, true, None, true),
    ) {
        assert_eq!(joint_keys(&all).len(), all.cfg.n_layer);
        assert_eq!(decode_steps(&mut plain, 12), decode_steps(&mut all, 12));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `Tune::attn_split_joint`: inside the QKV dispatch the exact split takes chunks of at
/// least that many positions (fewer attention workgroups), whatever the attention's own split;
/// its logits are those of the two-dispatch graph split at that length, bit for bit.
#[test]
fn joint_chunks_equal_the_split_of_their_length() {
    std::env::set_var("LP_NUM_THREADS", "1");
    let tuned = |wait: bool, split: u32, joint: u32| {
        load_tuned("wide", "q8_0", move |c| {
            c.tune.attn_wait = wait;
            c.tune.attn_coal_exact = true;
            c.tune.attn_split = split;
            c.tune.attn_split_joint = Some(joint);
            gpu_fixture::engine_decode_graph(c);
        })
    };
    // A context of 64: the attention in 4 chunks of 16, the joint one in 2 of 32.
    let Some(mut joint) = tuned(true, 16, 32) else {
        return;
    };
    let mut plain = tuned(false, 32, 0).unwrap();
    let mut own = tuned(true, 16, 0).unwrap();
    let n_head = joint.cfg.n_head as u32;
    let keys = joint_keys(&joint);
    assert_eq!(keys.len(), joint.cfg.n_layer);
    for k in &keys {
        let KernelKey::MatVecAttn { at, ag, .. } = k else {
            unreachable!()
        };
        match **at {
            KernelKey::AttnDecodeQ { nch, lmin, .. } => {
                assert_eq!((nch, lmin), (2, 32), "{k:?}");
                assert_eq!(*ag, n_head * 2, "{k:?}");
            }
            ref other => panic!("joint attention key {other:?}"),
        }
    }
    // Without the joint length, the attention's own 4 chunks.
    for k in joint_keys(&own) {
        let KernelKey::MatVecAttn { at, ag, .. } = k else {
            unreachable!()
        };
        assert!(
            matches!(
                *at,
                KernelKey::AttnDecodeQ {
                    nch: 4,
                    lmin: 16,
                    ..
                }
            ),
            "{at:?}"
        );
        assert_eq!(ag, n_head * 4);
    }
    // The separate attention (past the exact split, or without the wait) keeps its 16.
    assert!(joint.decode_keys_at(300).iter().any(|k| matches!(
        k,
        KernelKey::AttnDecodeQ {
            nch: 4,
            lmin: 16,
            ..
        }
    )));
    // By default (`JOINT_SPLIT_TYPES`) Q8_0's QKV dispatch takes chunks of 128, Q4_0's its
    // attention's own.
    for (mix, lmin) in [("q8_0", 128u32), ("q4_0", 32)] {
        let m = load_tuned("wide", mix, |c| {
            c.tune.attn_wait = true;
            c.tune.attn_split = 32;
            c.tune.attn_split_joint = None;
            gpu_fixture::engine_decode_graph(c);
        })
        .unwrap();
        let keys = joint_keys(&m);
        assert_eq!(keys.len(), m.cfg.n_layer, "{mix}");
        for k in keys {
            let KernelKey::MatVecAttn { at, .. } = k else {
                unreachable!()
            };
            assert!(
                matches!(*at, KernelKey::AttnDecodeQ { nch: 2, lmin: l, .. } if l == lmin),
                "{mix}: {at:?}"
            );
        }
    }
    // 40 tokens: past the first 32-position chunk, so two live chunks add up.
    let (a, b) = (decode_steps(&mut joint, 40), decode_steps(&mut plain, 40));
    assert_eq!(gpu_fixture::first_bit_difference(&a, &b), None);
    // The own-chunk joint graph adds four partials: the same logits up to rounding (a few
    // flips of the rounded `wo` input: 0.014 on lavapipe), not bit for bit.
    let c = decode_steps(&mut own, 40);
    assert!(gpu_fixture::first_bit_difference(&a, &c).is_some());
    let worst = a
        .iter()
        .flatten()
        .zip(c.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 0.05,
        "joint chunk lengths 32 vs 16: max |Δlogit| {worst}"
    );
}

#[test]
fn joint_kernel_texts_validate_and_bad_texts_are_refused() {
    let Some(ctx) = gpu_fixture::context_tuned(|c| {
        c.tune.attn_wait = true;
        c.tune.attn_coal_exact = true;
    }) else {
        return;
    };
    // One-matrix QKV (Q4_0) and two-part QKV (Q4_K_M's second layer: V of its own type).
    let mut multi = 0;
    for mix in ["q4_k_m", "q4_0"] {
        let m = load(mix, true, true, None).unwrap();
        let keys = m.decode_keys_at(10);
        let mut seen = 0;
        for k in keys
            .iter()
            .filter(|k| matches!(k, KernelKey::MatVecAttn { .. }))
        {
            let src = Kernels::source(&ctx, k).unwrap();
            validate_wgsl(&src, &format!("{k:?}"));
            // The rows handed from the mat-vec to the attention: only atomic accesses.
            assert!(src.contains("var<storage, read_write> mv_Y: array<atomic<u32>>;"));
            for line in src.lines().map(|l| l.split("//").next().unwrap_or("")) {
                let plain = line.matches("mv_Y[").count();
                let atomic = line.matches("atomicLoad(&mv_Y[").count()
                    + line.matches("atomicStore(&mv_Y[").count();
                assert_eq!(
                    plain, atomic,
                    "{k:?}: a plain access of the hand-off: {line}"
                );
            }
            assert!(src.contains("var q0 = bitcast<f32>(atomicLoad(&mv_Y[qo]));"));
            // The attention's bindings follow the mat-vec's; the wait counters come last.
            let two = matches!(k, KernelKey::MatVecAttn { mv, .. } if matches!(**mv, KernelKey::MatVecQ8Multi { .. }));
            multi += usize::from(two);
            let all = matvec_attn_kinds(&multi_binding_kinds(if two { 2 } else { 1 }));
            assert!(src.contains(&format!(
                "@binding({}) var<storage, read_write> AWF",
                all.len() - 1
            )));
            assert!(src.contains("fn mv_main(lid: u32, wg: vec3<u32>)"), "{k:?}");
            seen += 1;
        }
        assert_eq!(seen, m.cfg.n_layer);
    }
    assert!(multi > 0);
    let mut m = load("q4_0", true, true, None).unwrap();
    let keys = m.decode_keys_at(10);
    // A joint key of another mat-vec kind is refused, not compiled.
    if let Some(KernelKey::MatVecAttn { at, .. }) = keys
        .iter()
        .find(|k| matches!(k, KernelKey::MatVecAttn { .. }))
    {
        let bad = KernelKey::MatVecAttn {
            mv: Box::new(KernelKey::Argmax),
            at: at.clone(),
            mvg: 8,
            ag: 4,
            rq: 2,
            rk: 1,
            rv: 1,
        };
        let err = Kernels::source(&ctx, &bad).unwrap_err();
        assert!(err.to_string().contains("mat-vec and attention"), "{err}");
    }
    // Texts without the pieces the joint kernel needs are refused with an error.
    let mv = "@compute @workgroup_size(256)\nfn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {\n}\n";
    let err = matvec_attn_source(mv, "fn main() {}", 12, [2, 1, 1]).unwrap_err();
    assert!(err.to_string().contains("mat-vec + attention"), "{err}");
    // Row groups that are not whole KV heads (12 is not a multiple of 2 + 3 + 3), or none.
    let err = matvec_attn_source(mv, "fn main() {}", 12, [2, 3, 3]).unwrap_err();
    assert!(err.to_string().contains("KV heads"), "{err}");
    let err = matvec_attn_source(mv, "fn main() {}", 12, [2, 1, 0]).unwrap_err();
    assert!(err.to_string().contains("KV heads"), "{err}");
    let _ = decode_steps(&mut m, 2);
}

/// The rewrite that puts the hand-off through atomics: stores (their values rewritten
/// too), loads (also inside indices), comments and other names untouched; forms it cannot
/// rewrite are refused.
#[test]
fn hand_off_accesses_become_atomics() {
    let src =
        "// Y[i] = x\nlet a = Y[i + Y2[j]];\n    Y[o] = Y[o] + XY[o]; // Y[o]\nY[Y[k] ] == b;\n";
    let out = atomic_f32_access(src, "Y").unwrap();
    assert_eq!(
        out,
        "// Y[i] = x\nlet a = bitcast<f32>(atomicLoad(&Y[i + Y2[j]]));\n    atomicStore(&Y[o], bitcast<u32>(bitcast<f32>(atomicLoad(&Y[o])) + XY[o])); // Y[o]\nbitcast<f32>(atomicLoad(&Y[bitcast<f32>(atomicLoad(&Y[k])) ])) == b;\n"
    );
    for bad in ["Y[i] += 1.0;", "Y[i] = 1.0", "Y[i = 2;"] {
        let err = atomic_f32_access(bad, "Y").unwrap_err().to_string();
        assert!(err.contains("atomic accesses of Y"), "{bad}: {err}");
    }
    assert_eq!(atomic_f32_access("Yb[i] = Y;", "Y").unwrap(), "Yb[i] = Y;");
    assert_eq!(
        atomic_f32_access("/* Y[i] = 1.0; */ Y[i]", "Y").unwrap(),
        "/* Y[i] = 1.0; */ bitcast<f32>(atomicLoad(&Y[i]))"
    );
}
