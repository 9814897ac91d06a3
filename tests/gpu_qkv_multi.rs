//! Integer decode mat-vecs of different weight types in one dispatch
//! (`KernelKey::MatVecQ8Multi`, `Tune::qkv_multi`, GGUFQ_QKV_MULTI): each workgroup range runs
//! its matrix's own `MatVecQ8` kernel on the shared rounded input, so every output must equal
//! the separate dispatches bit for bit — per kernel (matrices of mixed types, split into
//! weight chunks by a small binding limit) and for the decode logits of whole models (the
//! Q4_K_M and Q2_K mixes, recipes with V of another type, three types, chunked matrices),
//! with fewer dispatches per token. Runs on lavapipe in CI; without an adapter these fail
//! unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::buffers::{bind_buffers, f32_buffer, scratch, uniform, upload_matrix, GpuMatrix};
use ggufq::gpu::kernels::{
    buffer_layouts, multi_binding_kinds, multi_layout, multi_workgroups, KernelKey, Kernels,
    MultiPart, MULTI_MAX,
};
use ggufq::gpu::source::{random_blocks, Mix};
use ggufq::gpu::{DeviceOptions, GpuContext, GpuModel, SynthSource};
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{decode_opts, decode_run, device, role_count, tokens, validate_wgsl};

fn ctx_with(multi: u32, max_binding: Option<u64>) -> Option<Arc<GpuContext>> {
    let mut c = device(&DeviceOptions {
        max_binding_override: max_binding,
        ..Default::default()
    })?;
    c.tune.qkv_multi = multi;
    Some(Arc::new(c))
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap()
}

#[test]
fn multi_layout_covers_every_part_once() {
    let parts = |w: &[u32]| -> Vec<MultiPart> {
        w.iter()
            .map(|&wgs| MultiPart {
                ty: 12,
                nr: 4,
                spl: 128,
                wgs,
                scaled: false,
            })
            .collect()
    };
    // The 7B Q4_K_M group: 640 Q+K and 128 V workgroups; interleaved 5 + 1 per period.
    let p = parts(&[640, 128]);
    assert_eq!(multi_workgroups(&p, 0), 768);
    assert_eq!(multi_workgroups(&p, 1), 768);
    assert_eq!(multi_layout(&p, 1).0, vec![(6, 5, 0), (6, 1, 5)]);
    // Every workgroup index of each part is reached exactly once, for ragged counts too.
    for w in [&[640u32, 128][..], &[3, 1, 2], &[7, 2, 5, 1, 9], &[1, 1]] {
        let p = parts(w);
        for order in [0, 1] {
            let (lay, total) = multi_layout(&p, order);
            let mut seen: Vec<Vec<u32>> = w.iter().map(|_| Vec::new()).collect();
            for x in 0..total {
                let (len, _, _) = lay[0];
                let (per, pos) = if order == 1 {
                    (x / len, x % len)
                } else {
                    (0, x)
                };
                let k = lay.iter().position(|&(_, c, off)| pos < off + c).unwrap();
                let (_, c, off) = lay[k];
                let l = if order == 1 {
                    per * c + (pos - off)
                } else {
                    x - off
                };
                if l < w[k] {
                    seen[k].push(l);
                }
            }
            for (k, s) in seen.iter_mut().enumerate() {
                s.sort_unstable();
                assert_eq!(*s, (0..w[k]).collect::<Vec<_>>(), "{w:?} order {order}");
            }
        }
    }
}

#[test]
fn gpu_multi_kernels_are_valid_wgsl_with_and_without_subgroups() {
    let Some(base) = ctx_with(1, None) else {
        return;
    };
    let combos: &[&[&str]] = &[
        &["Q4_K", "Q6_K"],
        &["Q2_K", "Q3_K"],
        &["Q2_K", "Q4_K"],
        &["Q4_0", "Q8_0"],
        &["Q4_K", "Q5_K", "Q6_K"],
        &["Q8_0", "Q4_0", "Q8_0", "Q4_0", "Q8_0"],
    ];
    for sub in [false, true] {
        for wide in [0, 2] {
            let c = base.retuned(|t| t.wide = wide);
            let mut c = Arc::try_unwrap(c).unwrap_or_else(|a| panic!("shared {:p}", a));
            c.subgroup32 = sub;
            for combo in combos {
                for order in [0, 1] {
                    let mut parts = [MultiPart::default(); MULTI_MAX];
                    for (k, n) in combo.iter().enumerate() {
                        let key = c.tune.matvec_key(ty(n).id(), 1, 4, 128);
                        let KernelKey::MatVecQ8 { ty, nr, spl } = key else {
                            panic!("{n}: no integer kernel");
                        };
                        parts[k] = MultiPart {
                            ty,
                            nr,
                            spl,
                            wgs: 3 + k as u32,
                            scaled: false,
                        };
                    }
                    let key = KernelKey::MatVecQ8Multi {
                        parts,
                        n: combo.len() as u32,
                        order,
                    };
                    let src = Kernels::source(&c, &key).unwrap();
                    validate_wgsl(&src, &format!("{combo:?} order {order} sub {sub}"));
                    // One weight binding per part, each part's own dot product.
                    for k in 0..combo.len() {
                        let b = if k == 0 { 0 } else { 3 + k };
                        assert!(src.contains(&format!("@binding({b}) var<storage, read> W_m{k}")));
                        assert!(src.contains(&format!("fn idot_m{k}(")), "{combo:?}");
                    }
                }
            }
        }
    }
    // Types without an integer kernel, too many parts and a bad order are refused.
    let q8 = MultiPart {
        ty: ty("Q8_0").id(),
        nr: 4,
        spl: 32,
        wgs: 1,
        scaled: false,
    };
    let bad = KernelKey::MatVecQ8Multi {
        parts: [MultiPart {
            ty: ty("F16").id(),
            ..q8
        }; MULTI_MAX],
        n: 2,
        order: 0,
    };
    assert!(Kernels::source(&base, &bad).is_err());
    for (n, order) in [(0, 0), (6, 0), (2, 2)] {
        let k = KernelKey::MatVecQ8Multi {
            parts: [q8; MULTI_MAX],
            n,
            order,
        };
        assert!(Kernels::source(&base, &k).is_err(), "n {n} order {order}");
    }
}

/// The matrices `mats` (same columns, activations of one rounding kind) on the rounded `x`:
/// `multi` = None: one `MatVecQ8` dispatch per weight chunk; Some(order): the chunks'
/// kernels in `MatVecQ8Multi` dispatches of up to MULTI_MAX parts. Outputs one after the
/// other in one buffer, as the QKV rows are.
fn run(ctx: &GpuContext, mats: &[GpuMatrix], x: &[f32], multi: Option<u32>) -> (Vec<f32>, usize) {
    let cols = mats[0].cols;
    let kind = ggufq::gpu::actq::kind_for_weight(mats[0].ty);
    let e = ggufq::gpu::actq::q8_base(cols);
    let xb = f32_buffer(ctx, "x", x);
    let xq = scratch(ctx, "xq", ggufq::gpu::actq::q8_words(cols));
    let total: usize = mats.iter().map(|m| m.rows).sum();
    let yb = scratch(ctx, "y", total);
    let mut kernels = Kernels::default();
    let (abgl, alay) = buffer_layouts(ctx, "actq", b"r-wu");
    let p = ggufq::gpu::actq::params_q8(cols as u32, cols as u32, 0, 1, kind, e as u32);
    let ub = uniform(ctx, &p);
    let abg = bind_buffers(ctx, &abgl, &[(0, &xb), (2, &xq), (3, &ub)]);
    // (chunk buffer, params, part)
    let mut parts = Vec::new();
    let mut off = 0u32;
    for m in mats {
        let key = ctx
            .tune
            .matvec_key(m.ty.id(), 1, ctx.tune.decode_nr(m.ty.id()), cols / 32);
        let KernelKey::MatVecQ8 { ty, nr, spl } = key else {
            panic!("no integer kernel for {}", m.ty.name());
        };
        for ch in &m.chunks {
            let words: [u32; 12] = [
                ch.rows,
                (cols / 32) as u32,
                ch.d_off,
                0,
                e as u32,
                off,
                total as u32,
                1,
                0,
                ch.row0,
                0,
                0,
            ];
            let wgs = ch.rows.div_ceil(ctx.tune.rows_per_wg(&key, nr));
            parts.push((
                ch.buf.clone(),
                words,
                MultiPart {
                    ty,
                    nr,
                    spl,
                    wgs,
                    scaled: false,
                },
            ));
        }
        off += m.rows as u32;
    }
    let apipe = {
        let mut k = Kernels::default();
        k.get_with_layout(ctx, &KernelKey::ActQ, &alay).unwrap();
        k
    };
    let mut binds = Vec::new();
    match multi {
        None => {
            let (bgl, lay) = buffer_layouts(ctx, "mat", b"rrwu");
            for (buf, words, part) in &parts {
                let ub = uniform(ctx, words);
                let bg = bind_buffers(ctx, &bgl, &[(0, buf), (1, &xq), (2, &yb), (3, &ub)]);
                kernels.get_with_layout(ctx, &part.key(), &lay).unwrap();
                binds.push((bg, part.key(), part.wgs));
            }
        }
        Some(order) => {
            for piece in parts.chunks(MULTI_MAX) {
                let n = piece.len();
                let (bgl, lay) = buffer_layouts(ctx, "multi", &multi_binding_kinds(n));
                let mut kp = [MultiPart::default(); MULTI_MAX];
                let mut words = Vec::new();
                for (k, (_, w, part)) in piece.iter().enumerate() {
                    kp[k] = *part;
                    words.extend_from_slice(w);
                }
                let key = KernelKey::MatVecQ8Multi {
                    parts: kp,
                    n: n as u32,
                    order,
                };
                let ub = uniform(ctx, &words);
                let mut res: Vec<(u32, &wgpu::Buffer)> = vec![(1, &xq), (2, &yb), (3, &ub)];
                for (k, (buf, _, _)) in piece.iter().enumerate() {
                    res.push((if k == 0 { 0 } else { 3 + k as u32 }, buf));
                }
                let bg = bind_buffers(ctx, &bgl, &res);
                kernels.get_with_layout(ctx, &key, &lay).unwrap();
                let wgs = multi_workgroups(&kp[..n], order);
                binds.push((bg, key, wgs));
            }
        }
    }
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(apipe.cached(&KernelKey::ActQ).unwrap());
        pass.set_bind_group(0, &abg, &[]);
        let (gx, gy) = ggufq::gpu::actq::workgroups(cols as u32, 1);
        pass.dispatch_workgroups(gx, gy, 1);
        for (bg, key, wgs) in &binds {
            pass.set_pipeline(kernels.cached(key).unwrap());
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(*wgs, 1, 1);
        }
    }
    ctx.queue.submit(Some(enc.finish()));
    (ctx.read_f32(&yb, 0, total).unwrap(), binds.len())
}

#[test]
fn gpu_multi_matvec_equals_separate_dispatches_bit_for_bit() {
    // (types, rows): Q+K then V as in the mixes, three types, two Q8_0-rounding types;
    // rows not multiples of a workgroup's rows.
    let cases: &[(&[&str], &[usize])] = &[
        (&["Q4_K", "Q6_K"], &[200, 72]),
        (&["Q2_K", "Q3_K"], &[200, 72]),
        (&["Q2_K", "Q4_K"], &[136, 40]),
        (&["Q4_0", "Q8_0"], &[200, 72]),
        (&["Q4_K", "Q5_K", "Q6_K"], &[96, 48, 48]),
    ];
    let cols = 512;
    // One chunk per matrix, then bindings of 8 KiB (Q6_K: 420 B per row → 18-row chunks):
    // up to 12 chunks, i.e. several multi dispatches of up to MULTI_MAX parts.
    for max_binding in [None, Some(8 << 10)] {
        let Some(c) = ctx_with(1, max_binding) else {
            return;
        };
        for (names, rows) in cases {
            let mats: Vec<GpuMatrix> = names
                .iter()
                .zip(rows.iter())
                .enumerate()
                .map(|(k, (n, &r))| {
                    let data = random_blocks(ty(n), r * cols, 11 + k as u64, 0.3).unwrap();
                    upload_matrix(&c, n, ty(n), r, cols, &data).unwrap()
                })
                .collect();
            let chunks: usize = mats.iter().map(|m| m.chunks.len()).sum();
            if max_binding.is_some() {
                assert!(
                    chunks > names.len(),
                    "{names:?}: not split ({chunks} chunks)"
                );
            }
            let x = gpu_fixture::spiky_inputs(cols, 77);
            let (sep, n_sep) = run(&c, &mats, &x, None);
            assert_eq!(n_sep, chunks);
            assert!(sep.iter().all(|v| v.is_finite()) && sep.iter().any(|v| *v != 0.0));
            for order in [0, 1] {
                let (one, n_one) = run(&c, &mats, &x, Some(order));
                assert_eq!(n_one, chunks.div_ceil(MULTI_MAX), "{names:?}");
                for (i, (a, b)) in sep.iter().zip(&one).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{names:?} {max_binding:?} order {order}: row {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// Q2_K mix with attn_v at Q4_K (llama.cpp gives it Q4_K where n_gqa ≥ 4).
const Q2K_V4: &str = "name: q2k-v4\npreset: Q2_K\nrules:\n  - kind: attn_v\n    type: Q4_K\n";
/// Q4_0 with attn_v at Q8_0: two types of the Q8_0 rounding.
const Q40_V8: &str = "name: q40-v8\nbase: Q4_0\nrules:\n  - kind: attn_v\n    type: Q8_0\n";
/// Q, K and V of three K-quant types.
const THREE: &str = "name: three\nbase: Q4_K\nrules:\n  - kind: attn_k\n    type: Q5_K\n  - kind: attn_v\n    type: Q6_K\n";
/// V rounded as Q8_0, Q+K as Q8_K: two roundings, which stay separate dispatches.
const KINDS: &str = "name: kinds\nbase: Q4_K\nrules:\n  - kind: attn_v\n    type: Q8_0\n";

fn load(c: Arc<GpuContext>, dir: &std::path::Path, mix: &str) -> GpuModel {
    let m = if mix.contains('\n') {
        let p = dir.join(format!("{}.yaml", mix.len()));
        std::fs::write(&p, mix).unwrap();
        Mix::load(p.to_str().unwrap()).unwrap()
    } else {
        Mix::parse(mix).unwrap()
    };
    let src = SynthSource::new(
        ggufq::gpu::Shape::named("tiny").unwrap(),
        m,
        "qkv".to_string(),
    )
    .unwrap();
    GpuModel::load(c, &src, decode_opts()).unwrap()
}

/// Expected `qkv` dispatches with the multi kernel: each run of consecutive `qkv` steps of
/// the separate graph becomes ⌈run / MULTI_MAX⌉ (runs break at any other step, e.g. the
/// NormQ8 of a second rounding kind).
fn merged(roles: &[&str]) -> usize {
    let mut n = 0;
    let mut run = 0usize;
    for r in roles.iter().chain(std::iter::once(&"end")) {
        if *r == "qkv" {
            run += 1;
        } else if run > 0 {
            n += run.div_ceil(MULTI_MAX);
            run = 0;
        }
    }
    n
}

#[test]
fn gpu_qkv_multi_decode_logits_equal_separate_dispatches_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // (mix, whether some layer has Q+K and V of different types of one rounding)
    let mixes: &[(&str, bool)] = &[
        ("q4_k_m", true),
        ("q2_k", true),
        (Q2K_V4, true),
        (Q40_V8, true),
        (THREE, true),
        (KINDS, false),
        ("q4_0", false),
    ];
    // One chunk per matrix, then 16 KiB bindings: Q+K and V split into chunks (up to 7
    // parts per layer, i.e. two multi dispatches).
    for max_binding in [None, Some(16 << 10)] {
        for (mix, mixed) in mixes {
            let Some(off) = ctx_with(0, max_binding) else {
                return;
            };
            let mut a = load(off, dir.path(), mix);
            let nv = a.cfg.n_vocab;
            let (prompt, steps) = (tokens(nv, 3, 5), tokens(nv, 8, 6));
            let base = decode_run(&mut a, &prompt, &steps);
            let roles = a.step_roles();
            let name = mix.lines().next().unwrap_or(mix);
            for order in [1, 2] {
                let on = ctx_with(order, max_binding).unwrap();
                let mut b = load(on, dir.path(), mix);
                let got = decode_run(&mut b, &prompt, &steps);
                for (i, (x, y)) in base.iter().zip(&got).enumerate() {
                    assert!(x.iter().all(|v| v.is_finite()), "{name}: non-finite");
                    let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(
                        same,
                        "{name} {max_binding:?} order {order}: step {i} differs"
                    );
                }
                let want = merged(&roles);
                assert_eq!(role_count(&b, "qkv"), want, "{name} {max_binding:?}");
                let fewer = role_count(&a, "qkv") - want;
                assert_eq!(
                    b.dispatches_per_token(),
                    a.dispatches_per_token() - fewer,
                    "{name}"
                );
                if *mixed || max_binding.is_some() {
                    assert!(fewer > 0, "{name} {max_binding:?}: nothing merged");
                } else {
                    assert_eq!(fewer, 0, "{name}: merged across roundings or one matrix");
                }
            }
        }
    }
}
