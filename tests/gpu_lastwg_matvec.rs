//! Last-workgroup epilogues of the decode mat-vecs (`KernelKey::MatVecQ8E`): the SwiGLU
//! mat-vec rounds its output for `ffn_down` (`Tune::lw_actq`) and the residual mat-vecs
//! (`wo`, `down`) run the NormQ8 of the next group (`Tune::lw_norm`) in the workgroup that
//! completes them. The decode logits must equal the graph with the separate `actq` /
//! `norm_q8` dispatches bit for bit (same operations, same order), with the expected
//! dispatches fewer, over consecutive tokens (the counters must be back at zero after every
//! dispatch). Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::{KernelKey, Kernels, MatEpi};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuBackend, GpuContext, GpuModel, Shape, SynthSource};
use ggufq::model::cpu::CpuBackend;
use ggufq::model::{Backend, LogitsWanted, Model};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, decode_opts, decode_run, role_count, wide_shape};

fn ctx(actq: bool, norm: bool, atomic: u32, lanes: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.lw_actq = actq;
        c.tune.lw_norm = norm;
        c.tune.lw_atomic = atomic;
        c.tune.q8_lanes = lanes;
    })
}

const PROMPT: [u32; 4] = [5, 300, 17, 42];
const DECODE: [u32; 10] = [9, 260, 3, 400, 17, 88, 123, 5, 5, 77];

/// First (row, logit) where two runs differ in any bit.
fn first_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<(usize, usize, f32, f32)> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len());
        if let Some(k) = (0..x.len()).find(|&k| x[k].to_bits() != y[k].to_bits()) {
            return Some((i, k, x[k], y[k]));
        }
    }
    None
}

/// Q4_K_M with attn_v and output at Q8_0 (the QKV and output groups need both activation
/// kinds) and ffn_up at Q4_0 (gate and up separate: the `up` mat-vec, mode 3, rounds).
const SPLIT_YAML: &str = "name: split\npreset: Q4_K_M\nrules:\n  - kind: attn_v\n    type: Q8_0\n  - kind: output\n    type: Q8_0\n  - kind: ffn_up\n    type: Q4_0\n";

fn sources(dir: &std::path::Path) -> Vec<(String, SynthSource)> {
    let yaml = dir.join("split.yaml");
    std::fs::write(&yaml, SPLIT_YAML).unwrap();
    let mut v = Vec::new();
    for (shape, mix) in [
        ("wide", "q4_k"),
        ("wide", "q6_k"),
        ("wide", "q4_0"),
        ("wide", "q8_0"),
        ("wide", "q4_k_m"),
        ("tiny", "q2_k"),
        ("tiny", "hybrid"),
        ("wide", "split"),
    ] {
        let sh = if shape == "tiny" {
            Shape::named("tiny").unwrap()
        } else {
            wide_shape()
        };
        let m = if mix == "split" {
            Mix::load(yaml.to_str().unwrap()).unwrap()
        } else {
            Mix::parse(mix).unwrap()
        };
        let name = format!("{shape}-{mix}");
        v.push((name.clone(), SynthSource::new(sh, m, name).unwrap()));
    }
    v
}

#[test]
fn gpu_lastwg_epilogues_give_the_dispatch_graph_bit_for_bit() {
    let Some(off) = ctx(false, false, 1, 0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Both epilogues (every access mode: lavapipe is coherent, so all are exact there), each alone; lanes by row length and 32
    // (several units per lane, 32 rows per workgroup: 16 SwiGLU outputs, 2 per Q8_0 block).
    let variants = [
        ("both", ctx(true, true, 1, 0).unwrap()),
        ("both own reads atomic", ctx(true, true, 2, 0).unwrap()),
        ("both plain", ctx(true, true, 0, 0).unwrap()),
        ("actq", ctx(true, false, 1, 0).unwrap()),
        ("norm", ctx(false, true, 1, 0).unwrap()),
        ("both lanes 32", ctx(true, true, 1, 32).unwrap()),
    ];
    let off32 = ctx(false, false, 1, 32).unwrap();
    let mut seen_act = 0;
    for (name, src) in sources(dir.path()) {
        let mut b = GpuModel::load(off.clone(), &src, decode_opts()).unwrap();
        let mut b32 = GpuModel::load(off32.clone(), &src, decode_opts()).unwrap();
        let rb = decode_run(&mut b, &PROMPT, &DECODE);
        let rb32 = decode_run(&mut b32, &PROMPT, &DECODE);
        let (nq_off, aq_off) = (role_count(&b, "norm_q8"), role_count(&b, "actq"));
        let layers = b.n_layers();
        // Every group's NormQ8 is there (QKV with two kinds where attn_v is Q8_0).
        assert!(nq_off > 2 * layers, "{name}: {nq_off} NormQ8");
        for (vn, c) in &variants {
            let mut a = GpuModel::load(c.clone(), &src, decode_opts()).unwrap();
            let (nq_on, aq_on) = (role_count(&a, "norm_q8"), role_count(&a, "actq"));
            if c.tune.lw_norm {
                // Only the NormQ8(s) after the embedding are left, and (Q8_0 without the
                // rounding epilogue) those after the ffn_down that rounds its own input
                // (`MatVecQ8F`, no epilogue).
                let first = if name == "wide-split" { 2 } else { 1 };
                let folded = if name == "wide-q8_0" && !c.tune.lw_actq {
                    layers
                } else {
                    0
                };
                assert_eq!(nq_on, first + folded, "{name} {vn}: NormQ8 left");
            } else {
                assert_eq!(nq_on, nq_off, "{name} {vn}");
            }
            if c.tune.lw_actq {
                assert_eq!(aq_on, 0, "{name} {vn}: rounding dispatches left");
                seen_act += usize::from(aq_off > 0);
            } else {
                assert_eq!(aq_on, aq_off, "{name} {vn}");
            }
            assert_eq!(
                a.dispatches_per_token() + (nq_off - nq_on) + (aq_off - aq_on),
                b.dispatches_per_token(),
                "{name} {vn}: dispatches"
            );
            let ra = decode_run(&mut a, &PROMPT, &DECODE);
            let want = if c.tune.q8_lanes == 32 { &rb32 } else { &rb };
            if let Some((i, k, x, y)) = first_diff(&ra, want) {
                panic!("{name} {vn}: row {i} logit {k}: epilogue {x} vs dispatches {y}");
            }
        }
    }
    // Q8_0 ffn_down folds its rounding by default (Tune::fold_actq) when the epilogue is
    // off, so not every mix has a rounding dispatch to remove; most do.
    assert!(seen_act >= 12, "{seen_act} rounding epilogues");
}

#[test]
fn gpu_lastwg_counters_reset_between_tokens() {
    // The same token at the same position twice in a row: a counter left above zero by the
    // first call would keep the second call's epilogues from running (its NormQ8 outputs
    // would be the previous dispatch's), so the two calls must give the same logits, equal
    // to the dispatch graph's.
    let Some(on) = ctx(true, true, 1, 0) else {
        return;
    };
    let off = ctx(false, false, 1, 0).unwrap();
    let src =
        SynthSource::new(wide_shape(), Mix::parse("q4_k_m").unwrap(), "w".to_string()).unwrap();
    let mut a = GpuModel::load(on, &src, decode_opts()).unwrap();
    let mut b = GpuModel::load(off, &src, decode_opts()).unwrap();
    for m in [&mut a, &mut b] {
        m.forward(&[(5, 0, 0), (300, 0, 1)], false).unwrap();
    }
    let mut prev: Option<Vec<f32>> = None;
    for rep in 0..3 {
        let x = a.forward(&[(17, 0, 2)], false).unwrap();
        let y = b.forward(&[(17, 0, 2)], false).unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "repeat {rep}: epilogue graph differs from the dispatch graph"
        );
        if let Some(p) = &prev {
            assert_eq!(p, &x, "repeat {rep}");
        }
        prev = Some(x);
    }
}

#[test]
fn gpu_lastwg_matches_cpu_backend() {
    let Some(on) = ctx(true, true, 1, 0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in sources(dir.path()) {
        if !["wide-q4_k_m", "wide-q4_0", "tiny-hybrid", "wide-split"].contains(&name.as_str()) {
            continue;
        }
        let path = dir.path().join(format!("{name}.gguf"));
        src.write_gguf(&path).unwrap();
        let model = Model::open(&path).unwrap();
        let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
        let mut gb = GpuBackend::load(on.clone(), &path, model.hparams.clone(), 64, 8).unwrap();
        let (mut lc, mut lg) = (Vec::new(), Vec::new());
        cpu.forward(&PROMPT, LogitsWanted::Last, &mut lc).unwrap();
        gb.forward(&PROMPT, LogitsWanted::Last, &mut lg).unwrap();
        let mut worst = 0f64;
        let mut agree = 0;
        for t in DECODE {
            cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
            gb.forward(&[t], LogitsWanted::Last, &mut lg).unwrap();
            worst = worst.max(gpu_fixture::rms_rel(&lg, &lc));
            let top = |v: &[f32]| {
                (0..v.len())
                    .max_by(|&i, &j| v[i].total_cmp(&v[j]))
                    .unwrap_or(0)
            };
            agree += usize::from(top(&lg) == top(&lc));
        }
        eprintln!("{name}: worst rel rms vs CPU {worst:.3e}, top-1 {agree}/10");
        // The bound of the NormQ8 graph (tests/gpu_fold_q8.rs): a flipped Q8 rounding may
        // spread to later rows.
        assert!(worst < 3e-2, "{name}: {worst:.3e}");
        assert!(agree >= 9, "{name}: top-1 {agree}/10");
    }
}

#[test]
fn gpu_lastwg_kernels_compile_and_reject_bad_shapes() {
    use ggufq::quant::GgmlType;
    for no_subgroups in [false, true] {
        let Some(c) = gpu_fixture::device(&ggufq::gpu::DeviceOptions {
            no_subgroups,
            ..Default::default()
        }) else {
            return;
        };
        let c = Arc::new(c);
        let (_, pl) = ggufq::gpu::kernels::buffer_layouts(&c, "e", b"rrwwurwww");
        let mut k = Kernels::default();
        let q4k = GgmlType::from_name("Q4_K").unwrap().id();
        let q40 = GgmlType::from_name("Q4_0").unwrap().id();
        let key = |ty, spl, epi, atomic| KernelKey::MatVecQ8E {
            ty,
            nr: 4,
            spl,
            epi,
            atomic,
        };
        let act = |kind, mode, wpb| MatEpi::Act {
            kind,
            mode,
            wpb,
            qbase: 1024,
        };
        let norm = |k4, kinds| MatEpi::Norm {
            k4,
            kinds,
            nwg: 64,
            qbase: 1024,
        };
        for atomic in [0u32, 1, 2] {
            for (ty, spl, epi) in [
                (q4k, 128, act(4, 2, 64)),
                (q40, 128, act(3, 2, 8)),
                (q40, 32, act(3, 3, 1)),
                (q4k, 128, norm(1024, 3)),
                (q40, 64, norm(128, 1)),
                (q4k, 256, norm(256, 2)),
            ] {
                k.get_with_layout(&c, &key(ty, spl, epi, atomic), &pl)
                    .unwrap_or_else(|e| panic!("{epi:?} atomic {atomic}: {e}"));
            }
        }
        // Workgroups per block that do not match the rows per workgroup, a block kind
        // without scales, a mode without SwiGLU, rows the register NormQ8 cannot hold.
        for (spl, epi) in [
            (128, act(4, 2, 32)),
            (128, act(1, 2, 8)),
            (128, act(3, 1, 8)),
            (128, norm(2048, 1)),
            (128, norm(1024, 0)),
            (128, norm(96, 1)),
        ] {
            assert!(
                Kernels::source(&c, &key(q4k, spl, epi, 2)).is_err(),
                "{epi:?}"
            );
        }
        assert!(Kernels::source(&c, &key(q4k, 128, act(4, 2, 64), 3)).is_err());
    }
}
