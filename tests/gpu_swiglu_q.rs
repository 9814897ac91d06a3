//! The SwiGLU mat-vec that rounds its own output for `ffn_down` (`KernelKey::MatVecQ8R`,
//! `Tune::swiglu_q`): each workgroup owns whole activation blocks (Q8_0: 32 outputs = 64
//! interleaved gate/up rows), so the decode graph needs no `actq` dispatch. Its quants and
//! scales must be those of the rounding dispatch bit for bit (and the CPU backend's), the
//! decode logits those of the graph with the dispatch, with one dispatch per layer fewer.
//! With `Tune::swiglu_q32k` the K-quant `ffn_down` reads 32-value blocks instead of Q8_K
//! blocks: close to the CPU backend, not equal. Runs on lavapipe in CI; without an adapter
//! these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::actq::{q8_base, swiglu_rounding_pair};
use ggufq::gpu::buffers::upload_matrix;
use ggufq::gpu::kernels::{KernelKey, Kernels};
use ggufq::gpu::source::{random_blocks, Mix};
use ggufq::gpu::{GpuBackend, GpuContext, GpuModel, SynthSource};
use ggufq::model::cpu::{ActQuant, CpuBackend};
use ggufq::model::{Backend, LogitsWanted, Model};
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{context_tuned, decode_opts, decode_run, role_count, wide_shape};

fn ctx(on: u32, lanes: u32, nr: u32, q32k: bool) -> Option<Arc<GpuContext>> {
    ctx_wg(on, lanes, nr, q32k, 256)
}

fn ctx_wg(on: u32, lanes: u32, nr: u32, q32k: bool, wg: u32) -> Option<Arc<GpuContext>> {
    context_tuned(|c| {
        c.tune.swiglu_q = on;
        c.tune.swiglu_q_wg = wg;
        c.tune.swiglu_q_lanes = lanes;
        c.tune.swiglu_q_nr = nr;
        c.tune.swiglu_q32k = q32k;
    })
}

/// The values that the packed region `packed` (from the packed base: int8 quants, then the
/// per-32 scales) of `n` values stands for.
fn unpack(packed: &[u32], n: usize) -> Vec<f32> {
    let qb = q8_base(n);
    (0..n)
        .map(|i| {
            let q = (packed[i / 4] >> (8 * (i % 4))) as u8 as i8;
            q as f32 * f32::from_bits(packed[qb / 4 + i / 32])
        })
        .collect()
}

#[test]
fn gpu_swiglu_rounding_equals_the_actq_dispatch_bit_for_bit() {
    for no_subgroups in [false, true] {
        let Some(c) = gpu_fixture::device(&ggufq::gpu::DeviceOptions {
            no_subgroups,
            ..Default::default()
        }) else {
            return;
        };
        // 512 outputs (1024 interleaved gate/up rows) of 4096-long rows (128 units: 128 lanes
        // per row group by default, as the 7B gate_up) and of 512-long rows (16 units).
        let n_out = 512usize;
        let qbase = q8_base(n_out) as u32;
        for (name, cols) in [
            ("Q4_0", 4096usize),
            ("Q8_0", 4096),
            ("Q4_K", 4096),
            ("Q6_K", 512),
            ("Q2_K", 512),
        ] {
            let ty = GgmlType::from_name(name).unwrap();
            let rows = 2 * n_out;
            let data = random_blocks(ty, rows * cols, 11 + cols as u64, 0.3).unwrap();
            let m = upload_matrix(&c, name, ty, rows, cols, &data).unwrap();
            let x = gpu_fixture::spiky_inputs(cols, rows as u32 ^ cols as u32);
            // (lanes, rows per lane, passes, kind, invocations): the default shape looped
            // over a block, one pass of 64 rows, two and four passes, every lane its own
            // pass, Q8_K blocks; workgroups of 512.
            for (spl, nr, passes, kind, wg) in [
                (128u32, 4u32, 8u32, 3u32, 256u32),
                (32, 8, 1, 3, 256),
                (64, 4, 4, 3, 256),
                (64, 8, 2, 3, 256),
                (256, 2, 32, 3, 256),
                (128, 4, 64, 4, 256),
                (32, 8, 8, 4, 256),
                (64, 8, 1, 3, 512),
                (128, 4, 4, 3, 512),
                (128, 4, 32, 4, 512),
            ] {
                let key = KernelKey::MatVecQ8R {
                    ty: ty.id(),
                    nr,
                    spl,
                    passes,
                    mode: 2,
                    kind,
                    qbase,
                    wg,
                    scaled: false,
                };
                let what = format!("{name} × {cols}, {spl} lanes, NR {nr}, {passes} passes, kind {kind}, {wg} invocations, no_subgroups {no_subgroups}");
                let [a, b] = swiglu_rounding_pair(&c, &m, &x, &key).unwrap();
                assert_eq!(a.len(), b.len());
                if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
                    let part = if i < n_out {
                        "SwiGLU output"
                    } else {
                        "packed region"
                    };
                    panic!(
                        "{what}: word {i} ({part}) {:#x} (dispatches) vs {:#x} (producer)",
                        a[i], b[i]
                    );
                }
                // And they are the CPU backend's rounding of that SwiGLU output.
                let h: Vec<f32> = a[..n_out].iter().map(|w| f32::from_bits(*w)).collect();
                let mut cpu = h.clone();
                let aq = if kind == 3 {
                    ActQuant::Q8_0
                } else {
                    ActQuant::Q8K
                };
                aq.apply(&mut cpu);
                let got = unpack(&b[n_out..], n_out);
                assert!(h.iter().any(|v| *v != 0.0), "{what}: all zero");
                if let Some(i) = (0..n_out).find(|&i| got[i] != cpu[i]) {
                    panic!("{what}: value {i}: {} vs CPU {}", got[i], cpu[i]);
                }
            }
        }
    }
}

#[test]
fn gpu_swiglu_rounding_kernels_reject_bad_shapes() {
    let Some(c) = ctx(1, 0, 0, false) else {
        return;
    };
    let q40 = GgmlType::from_name("Q4_0").unwrap().id();
    let key_wg = |spl, nr, passes, mode, kind, qbase, wg| KernelKey::MatVecQ8R {
        ty: q40,
        nr,
        spl,
        passes,
        mode,
        kind,
        qbase,
        wg,
        scaled: false,
    };
    let key = |spl, nr, passes, mode, kind, qbase| key_wg(spl, nr, passes, mode, kind, qbase, 256);
    // Not whole blocks per workgroup, a mode without SwiGLU, an unknown kind, a misaligned base.
    for k in [
        key(128, 4, 4, 2, 3, 64),
        key(128, 4, 8, 0, 3, 64),
        key(128, 4, 8, 2, 2, 64),
        key(128, 4, 8, 2, 3, 65),
        key(128, 4, 32, 2, 4, 64),
        key_wg(128, 4, 8, 2, 3, 64, 384),
        key_wg(128, 4, 2, 2, 3, 64, 512),
    ] {
        assert!(Kernels::source(&c, &k).is_err(), "{k:?} accepted");
    }
    assert!(Kernels::source(&c, &key(128, 4, 8, 2, 3, 64)).is_ok());
    assert!(Kernels::source(&c, &key(128, 4, 4, 3, 3, 64)).is_ok());
}

const PROMPT: [u32; 4] = [5, 300, 17, 42];
const DECODE: [u32; 10] = [9, 260, 3, 400, 17, 88, 123, 5, 5, 77];

/// Gate at Q4_0 and up at Q8_0 (separate matrices: the `up` mat-vec, mode 3, rounds),
/// ffn_down at Q4_0.
const SPLIT_YAML: &str = "name: split\npreset: Q4_0\nrules:\n  - kind: ffn_up\n    type: Q8_0\n";

fn source(dir: &std::path::Path, mix: &str) -> SynthSource {
    let m = if mix == "split" {
        let yaml = dir.join("split.yaml");
        std::fs::write(&yaml, SPLIT_YAML).unwrap();
        Mix::load(yaml.to_str().unwrap()).unwrap()
    } else {
        Mix::parse(mix).unwrap()
    };
    SynthSource::new(wide_shape(), m, format!("wide-{mix}")).unwrap()
}

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

#[test]
fn gpu_swiglu_rounding_gives_the_actq_graph_bit_for_bit() {
    let Some(off) = ctx(0, 0, 0, false) else {
        return;
    };
    // The old graph with the rounding dispatch for every type (no consumer fold for Q8_0).
    let off_nofold = context_tuned(|c| {
        c.tune.swiglu_q = 0;
        c.tune.fold_actq = Some(false);
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let variants = [
        ("default", ctx(1, 0, 0, false).unwrap(), false),
        ("lanes 32 NR 8", ctx(1, 32, 8, false).unwrap(), false),
        ("lanes 64 NR 4", ctx(1, 64, 4, false).unwrap(), false),
        ("Q8_K blocks too", ctx(2, 0, 0, false).unwrap(), true),
        (
            "512 invocations, lanes 64 NR 8",
            ctx_wg(1, 64, 8, false, 512).unwrap(),
            false,
        ),
    ];
    for mix in ["q4_0", "q8_0", "split", "q4_k_m", "q2_k"] {
        let src = source(dir.path(), mix);
        let mut b = GpuModel::load(off_nofold.clone(), &src, decode_opts()).unwrap();
        let rb = decode_run(&mut b, &PROMPT, &DECODE);
        let layers = b.n_layers();
        let aq_off = role_count(&b, "actq");
        assert_eq!(
            aq_off, layers,
            "{mix}: rounding dispatches of the old graph"
        );
        // Q8_0's default old graph folds the rounding into ffn_down instead (same logits).
        let mut f = GpuModel::load(off.clone(), &src, decode_opts()).unwrap();
        if let Some((i, k, x, y)) = first_diff(&decode_run(&mut f, &PROMPT, &DECODE), &rb) {
            panic!("{mix}: old graph with / without the fold: row {i} logit {k}: {x} vs {y}");
        }
        for (vn, c, kq) in &variants {
            let kquant = matches!(mix, "q4_k_m" | "q2_k");
            let mut a = GpuModel::load(c.clone(), &src, decode_opts()).unwrap();
            let aq_on = role_count(&a, "actq");
            let applies = !kquant || *kq;
            let want = if applies { 0 } else { layers };
            assert_eq!(aq_on, want, "{mix} {vn}: rounding dispatches left");
            assert_eq!(
                a.dispatches_per_token() + (aq_off - aq_on),
                b.dispatches_per_token(),
                "{mix} {vn}: dispatches per token"
            );
            let ra = decode_run(&mut a, &PROMPT, &DECODE);
            if let Some((i, k, x, y)) = first_diff(&ra, &rb) {
                panic!("{mix} {vn}: row {i} logit {k}: producer {x} vs dispatch {y}");
            }
        }
    }
}

fn top(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&i, &j| v[i].total_cmp(&v[j]))
        .unwrap_or(0)
}

/// Decode logits of `path` on the GPU with `c` and on the CPU backend: the worst relative
/// rms difference, the top-1 agreement over [`DECODE`] and the GPU logits.
fn vs_cpu(c: &Arc<GpuContext>, path: &std::path::Path) -> (f64, usize, Vec<Vec<f32>>) {
    let model = Model::open(path).unwrap();
    let mut cpu = CpuBackend::new(&model, 64, 1).unwrap();
    let mut gb = GpuBackend::load(c.clone(), path, model.hparams.clone(), 64, 8).unwrap();
    let (mut lc, mut lg) = (Vec::new(), Vec::new());
    cpu.forward(&PROMPT, LogitsWanted::Last, &mut lc).unwrap();
    gb.forward(&PROMPT, LogitsWanted::Last, &mut lg).unwrap();
    let (mut worst, mut agree, mut all) = (0f64, 0, Vec::new());
    for t in DECODE {
        cpu.forward(&[t], LogitsWanted::Last, &mut lc).unwrap();
        gb.forward(&[t], LogitsWanted::Last, &mut lg).unwrap();
        worst = worst.max(gpu_fixture::rms_rel(&lg, &lc));
        agree += usize::from(top(&lg) == top(&lc));
        all.push(lg.clone());
    }
    (worst, agree, all)
}

#[test]
fn gpu_swiglu_rounding_32_value_blocks_for_kquants_match_cpu() {
    let Some(exact) = ctx(1, 0, 0, false) else {
        return;
    };
    let q32 = ctx(1, 0, 0, true).unwrap();
    let f32_in = context_tuned(|c| c.tune.act_round = false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for mix in ["q4_k_m", "q2_k", "hybrid", "q4_0"] {
        let src = source(dir.path(), mix);
        let path = dir.path().join(format!("{mix}.gguf"));
        src.write_gguf(&path).unwrap();
        let m = GpuModel::load(q32.clone(), &src, decode_opts()).unwrap();
        let kquant_down = mix != "q4_0";
        // The K-quant ffn_down's rounding is the producer's now.
        assert_eq!(role_count(&m, "actq"), 0, "{mix}: rounding dispatches left");
        let (we, ae, le) = vs_cpu(&exact, &path);
        let (wq, aq, lq) = vs_cpu(&q32, &path);
        // Both roundings against unrounded activations (f32 inputs for every matrix,
        // `GGUFQ_ACTQ=0`): 32-value blocks must be as close as Q8_K blocks.
        let mut fm = GpuModel::load(f32_in.clone(), &src, decode_opts()).unwrap();
        let lf = decode_run(&mut fm, &PROMPT, &DECODE);
        let dist = |l: &[Vec<f32>]| {
            l.iter()
                .zip(&lf[1..])
                .map(|(a, b)| gpu_fixture::rms_rel(a, b))
                .fold(0f64, f64::max)
        };
        let (de, dq) = (dist(&le), dist(&lq));
        eprintln!(
            "{mix}: vs CPU (Q8_K): Q8_K blocks {we:.3e} (top-1 {ae}/10), 32-value blocks {wq:.3e} (top-1 {aq}/10); vs f32 activations: {de:.3e} / {dq:.3e}"
        );
        // The bound of the exact graph (tests/gpu_lastwg_matvec.rs).
        assert!(wq < 3e-2, "{mix}: {wq:.3e}");
        assert!(aq >= 9, "{mix}: top-1 {aq}/10");
        assert!(
            dq < 1.5 * de,
            "{mix}: {dq:.3e} vs {de:.3e} from f32 activations"
        );
        // The switch changes the K-quant roundings (and only those).
        let same = first_diff(&le, &lq).is_none();
        assert_eq!(same, !kquant_down, "{mix}: logits equal: {same}");
    }
}

/// On a real model file (GGUFQ_SWIGLU_CHECK_MODELS: paths separated by ':', e.g. the 7B
/// files on the H100; nothing to check without it): `n` greedy decode steps with the
/// producer rounding and with the `actq` dispatch (no consumer fold) give the same logits
/// bit for bit, with one dispatch per layer fewer.
#[test]
fn gpu_swiglu_rounding_model_files_bit_for_bit() {
    let Ok(paths) = std::env::var("GGUFQ_SWIGLU_CHECK_MODELS") else {
        eprintln!("GGUFQ_SWIGLU_CHECK_MODELS not set: no model file to check");
        return;
    };
    let Some(on) = ctx(1, 0, 0, false) else {
        return;
    };
    let off = context_tuned(|c| {
        c.tune.swiglu_q = 0;
        c.tune.fold_actq = Some(false);
    })
    .unwrap();
    let n: usize = std::env::var("GGUFQ_SWIGLU_CHECK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    for p in paths.split(':') {
        let src = ggufq::gpu::source::GgufSource::open(p).unwrap();
        let opts = ggufq::gpu::ModelOptions {
            n_ctx: n + 1,
            n_batch: 1,
            n_seq: 1,
        };
        let mut a = GpuModel::load(on.clone(), &src, opts.clone()).unwrap();
        let mut b = GpuModel::load(off.clone(), &src, opts).unwrap();
        assert_eq!(
            a.dispatches_per_token() + a.n_layers(),
            b.dispatches_per_token(),
            "{p}: dispatches per token"
        );
        let mut tok = 1u32;
        for pos in 0..n {
            let x = a.forward(&[(tok, 0, pos as u32)], false).unwrap();
            let y = b.forward(&[(tok, 0, pos as u32)], false).unwrap();
            if let Some(k) = (0..x.len()).find(|&k| x[k].to_bits() != y[k].to_bits()) {
                panic!("{p}: position {pos} logit {k}: {} vs {}", x[k], y[k]);
            }
            tok = top(&x) as u32;
        }
        eprintln!(
            "{p}: {n} decode steps bit for bit, {} vs {} dispatches per token",
            a.dispatches_per_token(),
            b.dispatches_per_token()
        );
    }
}
