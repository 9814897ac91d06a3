//! Persistent decode mat-vecs that build their own rounded input (`Tune::persist`,
//! `KernelKey::MatVecQ8P`): every workgroup normalises and rounds the whole input row in
//! workgroup memory with the NormQ8 / `actq.wgsl` operations, then walks row groups. The
//! NormQ8 dispatches and the rounding before `ffn_down` go, and the decode logits must equal
//! the graph with those dispatches bit for bit, whatever the number of workgroups (one
//! workgroup walking every row group, a few, or one per group). Runs on lavapipe in CI;
//! without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::persist_fits;
use ggufq::gpu::GpuModel;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{decode_steps, load_tuned, role_count};

/// Shape "tiny", or "wide" (`wide_shape`: 512-value rows, 32 NormQ8 register threads;
/// 1536-value ffn_down rows, 6 Q8_K blocks: the rounding prologue's loop once).
fn load(shape_name: &str, mix: &str, persist: u32) -> Option<GpuModel> {
    load_tuned(shape_name, mix, |c| c.tune.persist = persist)
}

#[test]
fn persist_fits_only_inputs_the_prologue_covers() {
    // RMSNorm inputs: the register NormQ8 (multiples of 128 values, at most 4096).
    assert!(persist_fits(1024, 4, true));
    assert!(persist_fits(64, 3, true));
    assert!(!persist_fits(1280, 4, true));
    assert!(!persist_fits(48, 4, true));
    // Rounded-only inputs: whole blocks (256 values for Q8_K, 32 for Q8_0), at most 16384.
    assert!(persist_fits(2752, 4, false)); // 7B ffn_down: 11008 values
    assert!(!persist_fits(2752 + 8, 4, false));
    assert!(persist_fits(2760, 3, false));
    assert!(!persist_fits(4100, 3, false));
    assert!(!persist_fits(1024, 2, true));
    assert!(!persist_fits(0, 3, false));
}

#[test]
fn gpu_persistent_matvecs_equal_the_dispatch_graph_bit_for_bit() {
    for (shape_name, mix) in [
        ("tiny", "q4_k"),
        ("tiny", "q8_0"),
        ("tiny", "q4_0"),
        ("tiny", "q4_k_m"),
        ("tiny", "q2_k"),
        ("wide", "q6_k"),
        ("wide", "q4_k_m"),
    ] {
        let Some(mut plain) = load(shape_name, mix, 0) else {
            return;
        };
        let base = decode_steps(&mut plain, 12);
        let layers = plain.cfg.n_layer;
        assert_eq!(
            role_count(&plain, "norm_q8"),
            2 * layers + 1,
            "{mix}: {:?}",
            plain.step_roles()
        );
        // One workgroup for every row group, a few walking several, all of them.
        for persist in [1, 3, 65535] {
            let mut p = load(shape_name, mix, persist).unwrap();
            assert_eq!(role_count(&p, "norm_q8"), 0, "{mix}: {:?}", p.step_roles());
            assert_eq!(role_count(&p, "actq"), 0, "{mix}: {:?}", p.step_roles());
            assert!(
                p.dispatches_per_token() + 2 * layers < plain.dispatches_per_token(),
                "{mix}: {} vs {}",
                p.dispatches_per_token(),
                plain.dispatches_per_token()
            );
            let rows = decode_steps(&mut p, 12);
            for (i, (a, b)) in base.iter().zip(&rows).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()), "{mix}: non-finite");
                assert_eq!(
                    a, b,
                    "{shape_name} {mix}, {persist} workgroups: decode step {i} differs"
                );
            }
        }
    }
}

#[test]
fn gpu_persistent_matvecs_with_q4k_unit_pairs_equal_their_dispatch_graph() {
    // `Tune::q8_pair`: the persistent kernel reads both units of a pair from its workgroup
    // copy of the input, the dispatch graph from the rounding's output.
    for (shape_name, mix) in [("tiny", "q4_k"), ("wide", "q4_k_m")] {
        let with = |persist: u32| {
            load_tuned(shape_name, mix, |c| {
                c.tune.persist = persist;
                c.tune.q8_pair = true;
            })
        };
        let Some(mut plain) = with(0) else {
            return;
        };
        let base = decode_steps(&mut plain, 8);
        let mut p = with(3).unwrap();
        let rows = decode_steps(&mut p, 8);
        for (i, (a, b)) in base.iter().zip(&rows).enumerate() {
            assert!(a.iter().all(|v| v.is_finite()), "{mix}: non-finite");
            assert_eq!(a, b, "{shape_name} {mix}: decode step {i} differs");
        }
    }
}
