//! Decode mat-vecs whose first workgroups build the rounded input while the others wait
//! (`Tune::mv_wait`, `KernelKey::MatVecQ8W`): the NormQ8 step before a mat-vec (bit 1) and
//! the rounding before `ffn_down` (bit 2) run inside the mat-vec's dispatch, with the same
//! operations, so the decode logits must equal the dispatch graph's bit for bit, with and
//! without the early weight loads (bit 4). The counters are zeroed by the next such step,
//! so many decode steps in a row must keep working. Runs on lavapipe in CI; without an
//! adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::wait_producers;
use ggufq::gpu::GpuModel;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{decode_steps, load_tuned, role_count};

fn load(shape_name: &str, mix: &str, bits: u32) -> Option<GpuModel> {
    // Lavapipe orders the waiting workgroups' reads only on one thread
    // (`model::wait_is_ordered`); set before this process opens its first device.
    std::env::set_var("LP_NUM_THREADS", "1");
    load_tuned(shape_name, mix, |c| c.tune.mv_wait = bits)
}

#[test]
fn producers_cover_the_input() {
    // One workgroup runs the whole NormQ8 (at most 4096 values); a rounding takes one
    // workgroup per 4096 values (1024 vec4).
    assert_eq!(wait_producers(1024, true), 1);
    assert_eq!(wait_producers(2752, false), 3); // 7B ffn_down: 11008 values
    assert_eq!(wait_producers(1024, false), 1);
    assert_eq!(wait_producers(1025, false), 2);
}

#[test]
fn gpu_waiting_matvecs_equal_the_dispatch_graph_bit_for_bit() {
    for (shape_name, mix) in [
        ("tiny", "q4_0"),
        ("tiny", "q4_k_m"),
        ("tiny", "q8_0"),
        ("tiny", "q2_k"),
        ("wide", "q4_0"),
        ("wide", "q6_k"),
    ] {
        let Some(mut plain) = load(shape_name, mix, 0) else {
            return;
        };
        let ctx = gpu_fixture::context().unwrap();
        assert!(ggufq::gpu::model::wait_is_ordered(&ctx));
        let base = decode_steps(&mut plain, 20);
        let layers = plain.cfg.n_layer;
        let norms = role_count(&plain, "norm_q8");
        let actq = role_count(&plain, "actq");
        assert_eq!(norms, 2 * layers + 1, "{mix}: {:?}", plain.step_roles());
        for bits in [1, 2, 3, 7] {
            let mut w = load(shape_name, mix, bits).unwrap();
            let roles = w.step_roles();
            let (n_left, a_left) = (role_count(&w, "norm_q8"), role_count(&w, "actq"));
            // Q4_0 has one integer mat-vec after every NormQ8 and rounding; mixes whose QKV
            // group is a multi-matrix dispatch keep those groups' NormQ8.
            let uniform = mix == "q4_0";
            if bits & 1 != 0 {
                assert!(n_left < norms, "{mix} {bits}: {roles:?}");
                assert!(!uniform || n_left == 0, "{mix} {bits}: {roles:?}");
            } else {
                assert_eq!(n_left, norms, "{mix} {bits}: {roles:?}");
            }
            if bits & 2 != 0 {
                assert!(
                    !uniform || (actq > 0 && a_left == 0),
                    "{mix} {bits}: {roles:?}"
                );
            } else {
                assert_eq!(a_left, actq, "{mix} {bits}: {roles:?}");
            }
            assert_eq!(
                w.dispatches_per_token() + (norms - n_left) + (actq - a_left),
                plain.dispatches_per_token(),
                "{mix} {bits}: {roles:?}"
            );
            let rows = decode_steps(&mut w, 20);
            for (i, (a, b)) in base.iter().zip(&rows).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()), "{mix}: non-finite");
                assert_eq!(
                    a, b,
                    "{shape_name} {mix}, bits {bits}: decode step {i} differs"
                );
            }
        }
    }
}
