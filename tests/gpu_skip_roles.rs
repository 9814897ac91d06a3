//! `GGUFQ_SKIP_ROLES` (`Tune::skip_roles`), a timing switch: the forward pass leaves out the
//! dispatches of the named roles. Leaving out a role the graph has must change the logits
//! (the dispatches really go), one it lacks must not; the list parser knows every role.
//! Runs on lavapipe in CI; without an adapter the GPU test fails unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::{skip_role_bits, SKIPPABLE_ROLES};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuModel, Shape, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, decode_opts, decode_run, tokens};

#[test]
fn skip_role_list_parses_to_bits() {
    assert_eq!(skip_role_bits(""), 0);
    assert_eq!(skip_role_bits("norm_q8"), 1);
    assert_eq!(skip_role_bits(" attention , norm_q8 "), 3);
    // Unknown names are ignored (and reported on stderr).
    assert_eq!(skip_role_bits("attention,nonsense"), 2);
    let all = SKIPPABLE_ROLES.join(",");
    assert_eq!(skip_role_bits(&all), (1u32 << SKIPPABLE_ROLES.len()) - 1);
}

fn load(skip: &str) -> Option<GpuModel> {
    let ctx = context_tuned(|c| c.tune.skip_roles = skip_role_bits(skip))?;
    let src = SynthSource::new(
        Shape::named("tiny").unwrap(),
        Mix::parse("q4_0").unwrap(),
        "q4_0",
    )
    .unwrap();
    Some(GpuModel::load(ctx, &src, decode_opts()).unwrap())
}

fn decode(m: &mut GpuModel) -> Vec<Vec<f32>> {
    let nv = m.cfg.n_vocab;
    decode_run(m, &tokens(nv, 3, 1), &tokens(nv, 6, 2))
}

#[test]
fn gpu_skipped_roles_leave_their_dispatches_out() {
    let Some(mut plain) = load("") else {
        return;
    };
    let roles = plain.step_roles();
    assert!(roles.contains(&"attention") && roles.contains(&"norm_q8"));
    assert!(!roles.contains(&"prefetch"));
    let base = decode(&mut plain);
    // A role the graph lacks: the same pass, bit for bit.
    let mut none = load("prefetch").unwrap();
    assert_eq!(decode(&mut none), base);
    // The attention or the NormQ8 steps left out: different logits at every decode step
    // (entry 0 is the prompt's batch pass, which has attention steps but no NormQ8 step).
    for skip in ["attention", "norm_q8"] {
        let mut m = load(skip).unwrap();
        let got = decode(&mut m);
        assert_eq!(got.len(), base.len());
        assert_eq!(got[0] == base[0], skip == "norm_q8", "{skip}: prompt pass");
        for (i, (a, b)) in got.iter().zip(&base).enumerate().skip(1) {
            assert!(
                a != b,
                "{skip} left out, yet decode step {i} has the same logits"
            );
        }
    }
}

#[test]
fn gpu_step_costs_cover_the_graph_roles_and_restore_the_graph() {
    use ggufq::gpu::profile::step_costs;
    let Some(mut m) = load("") else {
        return;
    };
    let base = decode(&mut m);
    let roles = m.step_roles();
    let c = step_costs(&mut m, 8).unwrap();
    assert_eq!(c.tokens, 8);
    assert!(c.p50_us.is_finite() && c.p50_us > 0.0);
    // One row per skippable role of the graph, with its dispatch count, then the
    // latency-bound roles together.
    for r in SKIPPABLE_ROLES {
        let n = roles.iter().filter(|x| *x == r).count();
        let row = c.rows.iter().find(|x| x.role == *r);
        assert_eq!(row.map_or(0, |x| x.dispatches), n, "{r}: {roles:?}");
    }
    let last = c.rows.last().unwrap();
    assert_eq!(last.role, "norm_q8+attention+actq");
    let lat = roles
        .iter()
        .filter(|x| ["norm_q8", "attention", "actq"].contains(x))
        .count();
    assert_eq!(last.dispatches, lat);
    assert!(c
        .rows
        .iter()
        .all(|r| r.p50_without_us.is_finite() && r.p50_without_us > 0.0));
    let md = c.to_markdown("tiny");
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        c.rows.len() + 2
    );
    // The whole graph afterwards: the same logits as before.
    assert_eq!(m.skip_roles(), 0);
    assert_eq!(decode(&mut m), base);
}

#[test]
fn gpu_bench_step_costs_flag_prints_the_table() {
    if gpu_fixture::context().is_none() {
        return;
    }
    let out = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args([
            "bench",
            "--synth",
            "tiny:q4_0",
            "-p",
            "0",
            "-n",
            "2",
            "-r",
            "1",
            "--step-costs",
            "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Step costs of synth-tiny-Q4_0"), "{text}");
    // The block-rounding residual mat-vecs (on unless GGUFQ_BLOCK_NORM=0) leave only the
    // NormQ8 after the embedding.
    let nq = if std::env::var("GGUFQ_BLOCK_NORM").as_deref() == Ok("0") {
        5
    } else {
        1
    };
    assert!(text.contains(&format!("| norm_q8 | {nq} |")), "{text}");
    assert!(text.contains("| attention | 2 |"), "{text}");
}
