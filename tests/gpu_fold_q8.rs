//! The decode mat-vecs that round their own f32 input (`KernelKey::MatVecQ8F`): `ffn_down`
//! with the SwiGLU output's rounding folded in (`Tune::fold_actq`) must give the graph with
//! the separate rounding dispatch bit for bit (same quants, same sums in the same order);
//! QKV / gate-up / output with RMSNorm and rounding folded in (`Tune::fold_norm`) must match
//! the CPU backend as the NormQ8 graph does (only Σx² is summed in another order).
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::KernelKey;
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuBackend, GpuContext, GpuModel, Shape, SynthSource};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, decode_opts, decode_run, role_count, wide_shape};

const PROMPT: [u32; 4] = [5, 300, 17, 42];
const DECODE: [u32; 8] = [9, 260, 3, 400, 17, 88, 123, 5];

fn ctx_with(fold_actq: bool, fold_norm: bool, lanes: u32) -> Option<Arc<GpuContext>> {
    ctx_nr(fold_actq, fold_norm, lanes, 0)
}

fn ctx_nr(fold_actq: bool, fold_norm: bool, lanes: u32, nr: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.fold_actq = Some(fold_actq);
        c.tune.fold_norm = fold_norm;
        c.tune.q8_lanes = lanes;
        c.tune.fold_nr = nr;
    })
}

#[test]
fn gpu_fold_actq_down_gives_the_rounding_dispatch_bit_for_bit() {
    let Some(probe) = ctx_with(true, false, 0) else {
        return;
    };
    drop(probe);
    // Q8_K (K-quants) and Q8_0 (Q4_0, Q8_0) roundings; lanes by row length, 32 (two units
    // per lane in ffn_down) and 256 (most lanes past the row); 8 and 16 rows per group
    // (each row's sum is formed in the same order whatever the rows per group).
    for (lanes, nr) in [(0u32, 0u32), (32, 0), (256, 0), (0, 8), (64, 16)] {
        let on = ctx_nr(true, false, lanes, nr).unwrap();
        let off = ctx_with(false, false, lanes).unwrap();
        for mix in ["q4_k", "q6_k", "q2_k", "q3_k", "q5_k", "q4_0", "q8_0"] {
            let src = SynthSource::new(wide_shape(), Mix::parse(mix).unwrap(), format!("w-{mix}"))
                .unwrap();
            let mut a = GpuModel::load(on.clone(), &src, decode_opts()).unwrap();
            let mut b = GpuModel::load(off.clone(), &src, decode_opts()).unwrap();
            // One rounding dispatch fewer per layer, and none left in the decode graph.
            assert_eq!(
                a.dispatches_per_token() + 2,
                b.dispatches_per_token(),
                "{mix} lanes {lanes} nr {nr}"
            );
            assert_eq!(role_count(&a, "actq"), 0, "{mix} lanes {lanes} nr {nr}");
            assert_eq!(role_count(&b, "actq"), 2, "{mix} lanes {lanes}");
            let (ra, rb) = (
                decode_run(&mut a, &PROMPT, &DECODE),
                decode_run(&mut b, &PROMPT, &DECODE),
            );
            for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
                if let Some(k) = (0..x.len()).find(|&k| x[k].to_bits() != y[k].to_bits()) {
                    panic!(
                        "{mix} lanes {lanes} nr {nr}: row {i} logit {k}: folded {} vs dispatch {}",
                        x[k], y[k]
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_fold_norm_matches_cpu_backend_and_normq8() {
    let Some(folded) = ctx_with(true, true, 0) else {
        return;
    };
    let normq = ctx_with(true, false, 0).unwrap();
    let lanes32 = ctx_with(true, true, 32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (shape, mix) in [
        ("tiny", "q4_k"),
        ("wide", "q4_k_m"),
        ("wide", "q4_0"),
        ("wide", "q6_k"),
        ("wide", "q2_k"),
        ("tiny", "q5_k"),
    ] {
        let sh = if shape == "tiny" {
            Shape::named("tiny").unwrap()
        } else {
            wide_shape()
        };
        let src = SynthSource::new(sh, Mix::parse(mix).unwrap(), format!("{shape}-{mix}")).unwrap();
        let path = dir.path().join(format!("{shape}-{mix}.gguf"));
        src.write_gguf(&path).unwrap();
        let mut g = GpuModel::load(folded.clone(), &src, decode_opts()).unwrap();
        let mut n = GpuModel::load(normq.clone(), &src, decode_opts()).unwrap();
        assert_eq!(role_count(&g, "norm_q8"), 0, "{shape} {mix}");
        assert!(role_count(&n, "norm_q8") >= 5, "{shape} {mix}");
        if (shape, mix) == ("tiny", "q4_k") {
            // qkv, attention, attention combine + rounding (in the attention's last
            // workgroups with `attn_lastwg`), wo, gate_up, down per layer; output.
            let per_layer = if folded.tune.attn_lastwg != 0 { 5 } else { 6 };
            assert_eq!(g.dispatches_per_token(), per_layer * 2 + 1);
        }
        let (rg, rn) = (
            decode_run(&mut g, &PROMPT, &DECODE),
            decode_run(&mut n, &PROMPT, &DECODE),
        );
        let mut m32 = GpuModel::load(lanes32.clone(), &src, decode_opts()).unwrap();
        let r32 = decode_run(&mut m32, &PROMPT, &DECODE);
        // The prompt row (batch graph) is the same computation in both.
        assert_eq!(rg[0], rn[0], "{shape} {mix}: prompt row");
        // CPU backend on the same steps.
        let model = Model::open(&path).unwrap();
        let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
        let mut gb = GpuBackend::load(folded.clone(), &path, model.hparams.clone(), 64, 8).unwrap();
        let (mut lc, mut lg) = (Vec::new(), Vec::new());
        cpu.forward(&[5, 300, 17, 42], LogitsWanted::Last, &mut lc)
            .unwrap();
        gb.forward(&[5, 300, 17, 42], LogitsWanted::Last, &mut lg)
            .unwrap();
        let mut errs = Vec::new();
        for (j, t) in [9u32, 260, 3, 400, 17, 88, 123, 5].into_iter().enumerate() {
            cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
            gb.forward(&[t], LogitsWanted::Last, &mut lg).unwrap();
            assert_eq!(lg, rg[j + 1], "{shape} {mix}: backend vs model row {j}");
            errs.push((
                gpu_fixture::rms_rel(&lg, &lc),
                gpu_fixture::rms_rel(&rg[j + 1], &rn[j + 1]),
                gpu_fixture::rms_rel(&r32[j + 1], &rn[j + 1]),
            ));
        }
        let close = errs.iter().filter(|e| e.0 < 1e-5).count();
        let close_nq = errs.iter().filter(|e| e.1 < 1e-5 && e.2 < 1e-5).count();
        let worst = errs.iter().fold(0f64, |m, e| m.max(e.0).max(e.1).max(e.2));
        eprintln!(
            "{shape} {mix}: {close}/8 rows within 1e-5 of the CPU, {close_nq}/8 of NormQ8, worst {worst:.3e}"
        );
        // Most rows agree with the NormQ8 graph to f32 summation order (Σx²); a flipped
        // rounding (one Q8 step) may spread to later rows. Against the CPU backend the
        // NormQ8 graph itself is only within 1e-5 on some rows (on an H100 0/8 for the wide
        // Q4_0 / Q6_K / Q2_K models): the bound there is the worst row.
        if close_nq * 2 < errs.len() || worst > 3e-2 {
            failures.push(format!(
                "{shape} {mix}: {close}/8 CPU, {close_nq}/8 NormQ8, worst {worst:.3e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn gpu_fold_kernels_reject_bad_shapes() {
    use ggufq::gpu::kernels::Kernels;
    use ggufq::quant::GgmlType;
    let Some(ctx) = ctx_with(true, true, 0) else {
        return;
    };
    let q4k = GgmlType::from_name("Q4_K").unwrap().id();
    let q41 = GgmlType::from_name("Q4_1").unwrap().id();
    let key = |ty, nr, spl, act| KernelKey::MatVecQ8F {
        ty,
        nr,
        spl,
        act,
        norm: true,
    };
    assert!(Kernels::source(&ctx, &key(q4k, 4, 128, 4)).is_ok());
    assert!(Kernels::source(&ctx, &key(q4k, 3, 128, 4)).is_err());
    assert!(Kernels::source(&ctx, &key(q4k, 4, 48, 4)).is_err());
    assert!(Kernels::source(&ctx, &key(q4k, 4, 128, 1)).is_err());
    assert!(Kernels::source(&ctx, &key(q41, 4, 128, 3)).is_err());
    // No integer kernel for Q4_1, or no rounding before F32 weights: no folded key.
    assert!(ctx.tune.matvec_q8f_key(q41, 128, 3, false).is_none());
    assert!(ctx.tune.matvec_q8f_key(q4k, 128, 0, true).is_none());
    assert!(matches!(
        ctx.tune.matvec_q8f_key(q4k, 344, 4, false),
        Some(KernelKey::MatVecQ8F {
            spl: 256,
            nr: 8,
            ..
        })
    ));
    // By default only Q8_0 matrices fold the rounding (FOLD_ACTQ_TYPES).
    let mut t = ctx.tune;
    t.fold_actq = None;
    let q80 = GgmlType::from_name("Q8_0").unwrap().id();
    assert!(t.fold_actq_for(q80) && !t.fold_actq_for(q4k));
    t.fold_actq = Some(false);
    assert!(!t.fold_actq_for(q80));
}

#[test]
fn gpu_decode_parameter_cache_follows_shape_changes() {
    // Calls of changing shapes (prompt, decode, a prompt with all logits, decode again):
    // the cached parameters and workgroup counts (`Tune::param_cache`) must give the
    // recomputed ones' logits bit for bit.
    let Some(on) = context_tuned(|c| c.tune.param_cache = true) else {
        return;
    };
    let off = context_tuned(|c| c.tune.param_cache = false).unwrap();
    let src =
        SynthSource::new(wide_shape(), Mix::parse("q4_k_m").unwrap(), "w".to_string()).unwrap();
    let mut a = GpuModel::load(on, &src, decode_opts()).unwrap();
    let mut b = GpuModel::load(off, &src, decode_opts()).unwrap();
    type Call = (Vec<(u32, u32, u32)>, bool);
    let calls: Vec<Call> = vec![
        (vec![(5, 0, 0), (300, 0, 1), (17, 0, 2)], false),
        (vec![(9, 0, 3)], false),
        (vec![(260, 0, 4)], false),
        (vec![(3, 0, 5), (400, 0, 6)], true),
        (vec![(17, 0, 7)], false),
        (vec![(88, 0, 8)], true),
        (vec![(123, 0, 9)], false),
        (vec![(5, 0, 10)], false),
    ];
    for (i, (toks, all)) in calls.iter().enumerate() {
        let (x, y) = (
            a.forward(toks, *all).unwrap(),
            b.forward(toks, *all).unwrap(),
        );
        assert_eq!(x.len(), y.len(), "call {i}");
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "call {i}: cached parameters give other logits"
        );
    }
}
