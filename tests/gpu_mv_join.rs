//! Consecutive decode mat-vecs in one dispatch (`Tune::mv_join`, `KernelKey::MatVecJoin`):
//! `wo` → `gate_up` (→ `ffn_down`) of the block-rounding graph, each part's workgroups
//! waiting for the previous part's and copying its packed output into workgroup memory
//! with atomic loads. The joint graph must give the two-dispatch graph's logits bit for
//! bit, every joint kernel text must validate with only atomic accesses of the hand-offs,
//! and bad texts must be refused. On lavapipe the waits need one thread
//! (`model::wait_is_ordered`), as in tests/gpu_attn_wait.rs.
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::{join_kinds, matvec_join_source, KernelKey, Kernels};
use ggufq::gpu::GpuModel;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{decode_steps, load_tuned, validate_wgsl};

fn load(mix: &str, join: u32) -> Option<GpuModel> {
    // Set before this process opens its first device.
    std::env::set_var("LP_NUM_THREADS", "1");
    load_tuned("wide", mix, |c| {
        gpu_fixture::engine_decode_graph(c);
        // The parts must share one workgroup size: the SwiGLU part in 1024 as the residual
        // mat-vecs (its default is 512 since session 17), on both sides.
        c.tune.swiglu_q_wg = 1024;
        c.tune.mv_join = join;
    })
}

fn joins(m: &GpuModel) -> Vec<KernelKey> {
    m.decode_keys_at(0)
        .into_iter()
        .filter(|k| matches!(k, KernelKey::MatVecJoin { .. }))
        .collect()
}

#[test]
fn gpu_joint_mat_vecs_equal_their_dispatches_bit_for_bit() {
    let mut failures = Vec::new();
    for (mix, join) in [("q4_0", 2), ("q4_0", 3), ("q8_0", 3), ("q8_0", 2)] {
        let Some(mut plain) = load(mix, 0) else {
            return;
        };
        let mut w = load(mix, join).unwrap();
        let layers = plain.cfg.n_layer;
        let what = format!("{mix} join={join}");
        assert!(joins(&plain).is_empty(), "{what}");
        let j = joins(&w);
        // One joint dispatch per layer, `join - 1` dispatches fewer per layer.
        assert_eq!(j.len(), layers, "{what}: {:?}", w.decode_keys_at(0));
        for k in &j {
            let KernelKey::MatVecJoin { parts, groups, .. } = k else {
                unreachable!()
            };
            assert_eq!(parts.len(), join as usize, "{what}");
            assert!(matches!(parts[0], KernelKey::MatVecQ8N { .. }), "{what}");
            assert!(matches!(parts[1], KernelKey::MatVecQ8R { .. }), "{what}");
            assert!(groups.iter().all(|&g| g > 0));
        }
        assert_eq!(
            w.dispatches_per_token() + layers * (join as usize - 1),
            plain.dispatches_per_token(),
            "{what}"
        );
        // 40 tokens: the counters of every layer reused 40 times.
        let base = decode_steps(&mut plain, 40);
        let rows = decode_steps(&mut w, 40);
        if let Some((t, diff)) = gpu_fixture::first_bit_difference(&base, &rows) {
            failures.push(format!("{what}: token {t}: {diff} logits differ"));
        }
        // A prompt (the batch graph) between decode steps is not affected.
        let p = [3u32, 9, 27, 81];
        let a = gpu_fixture::decode_run(&mut plain, &p, &[5, 6, 7]);
        let b = gpu_fixture::decode_run(&mut w, &p, &[5, 6, 7]);
        if a != b {
            failures.push(format!("{what}: prompt then decode differ"));
        }
    }
    // With the default SwiGLU workgroups (512, the residual mat-vecs' 1024) nothing joins.
    if let Some(m) = load_tuned("wide", "q4_0", |c| {
        gpu_fixture::engine_decode_graph(c);
        c.tune.mv_join = 3;
    }) {
        assert!(joins(&m).is_empty());
    }
    // K-quant layers (Q4_K_M: the SwiGLU rounding is not used) keep their dispatches.
    if let Some(m) = load("q4_k_m", 3) {
        assert!(joins(&m).is_empty());
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn joint_mat_vec_texts_validate_and_bad_texts_are_refused() {
    std::env::set_var("LP_NUM_THREADS", "1");
    let Some(ctx) = gpu_fixture::context() else {
        return;
    };
    let Some(m) = load("q4_0", 3) else {
        return;
    };
    let j = joins(&m);
    assert!(!j.is_empty());
    for k in &j {
        let src = Kernels::source(&ctx, k).unwrap();
        validate_wgsl(&src, &format!("{k:?}"));
        let KernelKey::MatVecJoin { parts, .. } = k else {
            unreachable!()
        };
        let kinds = join_kinds(parts).unwrap();
        // Counters and parameters last; the later parts' inputs unbound.
        assert!(src.contains(&format!(
            "@binding({}) var<storage, read_write> JC: array<atomic<u32>>;",
            kinds.len() - 2
        )));
        assert_eq!(
            kinds.iter().filter(|&&c| c == b'-').count(),
            parts.len() - 1
        );
        for p in 1..parts.len() {
            assert!(!src.contains(&format!("p{p}_X[")), "{k:?}");
            assert!(src.contains(&format!("p{p}_xs(")), "{k:?}");
        }
        // Hand-offs: the packed outputs of every part but the last, and the residual rows
        // of wo and ffn_down, only through atomics.
        for name in ["p0_R", "p1_R", "p0_Y", "p2_Y"] {
            assert!(
                src.contains(&format!("{name}: array<atomic<u32>>;")),
                "{name} in {k:?}"
            );
            for line in src.lines().map(|l| l.split("//").next().unwrap_or("")) {
                let plain = line.matches(&format!("{name}[")).count();
                let atomic = line.matches(&format!("atomicLoad(&{name}[")).count()
                    + line.matches(&format!("atomicStore(&{name}[")).count();
                assert_eq!(plain, atomic, "{k:?}: a plain access of {name}: {line}");
            }
        }
        // The last part's output is read by the next dispatch: plain stores.
        assert!(src.contains("var<storage, read_write> p2_R: array<u32>;"));
    }
    // Bad inputs are refused, not compiled.
    let KernelKey::MatVecJoin {
        parts,
        groups,
        xs,
        ay,
    } = j[0].clone()
    else {
        unreachable!()
    };
    let texts: Vec<String> = parts
        .iter()
        .map(|p| Kernels::source(&ctx, p).unwrap())
        .collect();
    assert!(matvec_join_source(&texts[..1], &groups[..1], &xs[..1], &ay[..1]).is_err());
    assert!(matvec_join_source(&texts, &groups[..2], &xs, &ay).is_err());
    let mut g0 = groups.clone();
    g0[1] = 0;
    assert!(matvec_join_source(&texts, &g0, &xs, &ay).is_err());
    let mut other = texts.clone();
    other[1] = other[1].replace("@workgroup_size(", "@workgroup_size(2*");
    assert!(matvec_join_source(&other, &groups, &xs, &ay).is_err());
    let mut compound = texts.clone();
    compound[0] =
        compound[0].replacen("R[QB + wg.x * 8u + lid] =", "R[QB + wg.x * 8u + lid] |=", 1);
    assert!(compound[0] != texts[0]);
    assert!(matvec_join_source(&compound, &groups, &xs, &ay).is_err());
    let bad = KernelKey::MatVecJoin {
        parts: vec![
            KernelKey::MatVecQ8S {
                ty: 2,
                nr: 4,
                spl: 32
            };
            2
        ],
        groups: vec![1, 1],
        xs: vec![[0, 1, 1, 1, 2, 0]; 2],
        ay: vec![false; 2],
    };
    assert!(Kernels::source(&ctx, &bad).is_err());
}
