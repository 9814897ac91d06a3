//! Host orchestration of forward calls (session 7): weight chunks pooled in a few buffers
//! (`Tune::weight_pool`), the spinning wait (`Tune::spin_wait`), the upload ring of
//! one-token calls (`Tune::upload_ring`) and the host timeline. None of them may change a
//! logit: each is compared bit for bit with the engine without it, on tiny models of
//! several mixes, with matrices split into several chunks where the binding is capped.
//! Runs on lavapipe in CI; without an adapter these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::profile::MARKS;
use ggufq::gpu::source::Mix;
use ggufq::gpu::{DeviceOptions, GpuContext, GpuModel, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{assert_timeline_in_order, decode_opts, device, tiny_source, wide_shape};

/// A context with binding cap `cap` (None: the adapter's) and tuning `tune`.
fn ctx(cap: Option<u64>, tune: impl FnOnce(&mut GpuContext)) -> Option<Arc<GpuContext>> {
    let mut c = device(&DeviceOptions {
        max_binding_override: cap,
        ..Default::default()
    })?;
    // The engine's defaults for what is not under test.
    c.tune.weight_pool = 0;
    c.tune.spin_wait = false;
    c.tune.upload_ring = false;
    tune(&mut c);
    Some(Arc::new(c))
}

/// A prompt, one-token calls, a second prompt batch and more one-token calls (shape
/// changes drop pre-recorded command buffers and skip the upload ring): every call's logits.
fn run(m: &mut GpuModel) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut pos = 0u32;
    let mut call = |m: &mut GpuModel, toks: &[u32]| {
        let t: Vec<(u32, u32, u32)> = toks
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, 0, pos + i as u32))
            .collect();
        pos += toks.len() as u32;
        out.push(m.forward(&t, false).unwrap());
    };
    call(m, &[5, 300, 17, 42]);
    for t in [9, 260, 3, 400, 17] {
        call(m, &[t]);
    }
    call(m, &[88, 123, 5]);
    for t in [7, 311, 64] {
        call(m, &[t]);
    }
    out
}

fn assert_same(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: call {i}");
        if let Some(k) = (0..x.len()).find(|&k| x[k].to_bits() != y[k].to_bits()) {
            panic!("{what}: call {i} logit {k}: {} vs {}", x[k], y[k]);
        }
    }
}

fn sources() -> Vec<SynthSource> {
    let mut v: Vec<SynthSource> = ["q4_k_m", "q4_0", "q8_0", "q2_k", "q6_k"]
        .iter()
        .map(|m| tiny_source(m))
        .collect();
    v.push(SynthSource::new(wide_shape(), Mix::parse("q4_k_m").unwrap(), "wide-q4_k_m").unwrap());
    v
}

#[test]
fn gpu_host_pooled_weights_give_unpooled_logits_bit_for_bit() {
    // With the adapter's binding (matrices in one chunk, several per 512 KiB block, the
    // last block moved into a buffer of its used size) and with a 32 KiB binding (every
    // matrix in several chunks, about four per 128 KiB block).
    for (cap, block) in [(None, 512u64 << 10), (Some(32 * 1024u64), 128 << 10)] {
        let Some(plain) = ctx(cap, |_| {}) else {
            return;
        };
        let pooled = ctx(cap, |c| c.tune.weight_pool = block).unwrap();
        let align = pooled.device.limits().min_storage_buffer_offset_alignment as u64;
        for src in sources() {
            let what = format!("{} binding {cap:?}", src.name);
            let mut a = GpuModel::load(plain.clone(), &src, decode_opts()).unwrap();
            let mut b = GpuModel::load(pooled.clone(), &src, decode_opts()).unwrap();
            let (la, na) = a.weight_layout();
            let (lb, nb) = b.weight_layout();
            // Same chunks (the binding cap decides them), fewer buffers.
            assert_eq!(la.len(), lb.len(), "{what}");
            assert_eq!(na, la.len(), "{what}: unpooled, one buffer per chunk");
            assert!(
                nb < lb.len(),
                "{what}: {nb} buffers for {} chunks",
                lb.len()
            );
            if cap.is_some() {
                assert!(
                    nb * 3 <= lb.len(),
                    "{what}: {nb} buffers for {} chunks",
                    lb.len()
                );
                assert!(la.len() >= 20, "{what}: only {} chunks", la.len());
                assert!(nb >= 2, "{what}: one block");
            }
            for (x, y) in la.iter().zip(&lb) {
                assert_eq!(x.2, y.2, "{what}: chunk sizes");
            }
            // Aligned, disjoint ranges within each pooled buffer.
            for (i, &(bi, off, size)) in lb.iter().enumerate() {
                assert_eq!(off % align, 0, "{what}: chunk {i} at {off}");
                assert!(size > 0 && size % 4 == 0);
                for &(bj, o2, s2) in &lb[i + 1..] {
                    assert!(
                        bi != bj || off + size <= o2 || o2 + s2 <= off,
                        "{what}: overlap"
                    );
                }
            }
            let want = run(&mut a);
            assert_same(&want, &run(&mut b), &what);
            // The L2 prefetch binds the first bytes of pooled chunks too (`Chunk::binding`).
            let pf = ctx(cap, |c| {
                c.tune.weight_pool = block;
                c.tune.prefetch_mb = 1;
            })
            .unwrap();
            let mut p = GpuModel::load(pf, &src, decode_opts()).unwrap();
            assert!(
                p.step_roles().contains(&"prefetch"),
                "{what}: no prefetch step"
            );
            assert_same(&want, &run(&mut p), &format!("{what} + prefetch"));
        }
    }
}

#[test]
fn gpu_host_spin_wait_and_upload_ring_give_the_same_logits() {
    let Some(base) = ctx(Some(32 * 1024), |_| {}) else {
        return;
    };
    let variants: Vec<(&str, Arc<GpuContext>)> = vec![
        (
            "spin",
            ctx(Some(32 * 1024), |c| c.tune.spin_wait = true).unwrap(),
        ),
        (
            "ring",
            ctx(Some(32 * 1024), |c| c.tune.upload_ring = true).unwrap(),
        ),
        (
            "ring without pre-recording",
            ctx(Some(32 * 1024), |c| {
                c.tune.upload_ring = true;
                c.tune.prerecord = false;
            })
            .unwrap(),
        ),
        (
            "all",
            ctx(Some(32 * 1024), |c| {
                c.tune.upload_ring = true;
                c.tune.spin_wait = true;
                c.tune.weight_pool = 128 << 10;
            })
            .unwrap(),
        ),
    ];
    for mix in ["q4_k_m", "q8_0"] {
        let src = tiny_source(mix);
        let want = run(&mut GpuModel::load(base.clone(), &src, decode_opts()).unwrap());
        for (name, c) in &variants {
            let got = run(&mut GpuModel::load(c.clone(), &src, decode_opts()).unwrap());
            assert_same(&want, &got, &format!("{mix} {name}"));
        }
    }
}

#[test]
fn gpu_host_timeline_marks_every_call_in_order() {
    let Some(base) = ctx(None, |_| {}) else {
        return;
    };
    let all = ctx(None, |c| {
        c.tune.upload_ring = true;
        c.tune.weight_pool = 128 << 10;
    })
    .unwrap();
    let src = tiny_source("q4_k_m");
    for c in [base, all] {
        let mut plain = GpuModel::load(c.clone(), &src, decode_opts()).unwrap();
        let mut timed = GpuModel::load(c.clone(), &src, decode_opts()).unwrap();
        timed.set_host_timeline(Some(6));
        // 3 prompt + 8 one-token calls: the last 6 one-token calls are kept.
        let (a, b) = (run(&mut plain), run(&mut timed));
        assert_same(&a, &b, "timeline on vs off");
        let tl = timed.host_timeline().unwrap();
        // The one-token calls after the second prompt batch are 3 of the last 6: the gap
        // before the first of them holds a whole prompt call.
        assert_timeline_in_order(&tl, 6, c.facts.timestamps, "plain calls");
        for (i, m) in tl.marks.iter().enumerate().skip(1) {
            assert!(
                m[0] >= tl.marks[i - 1][7],
                "call {i} starts before call {} ends",
                i - 1
            );
        }
        let sum = tl.summary();
        assert!(sum.len() > MARKS.len());
        assert!(sum
            .iter()
            .all(|p| p.mean_us.is_finite() && p.p50_us.is_finite()));
        // Off again: nothing recorded.
        timed.set_host_timeline(None);
        assert!(timed.host_timeline().unwrap().marks.is_empty());
    }
}

#[test]
fn gpu_host_profile_flag_prints_the_timeline_of_the_timed_calls() {
    if ctx(None, |_| {}).is_none() {
        return;
    }
    let out = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args([
            "bench",
            "--synth",
            "tiny:q4_k_m",
            "-p",
            "0",
            "-n",
            "8",
            "-r",
            "2",
            "--host-profile",
            "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    // reps × n = 16 calls kept (the warm-up's calls are overwritten), then the results.
    let tl = text
        .find("Host timeline of synth-tiny-Q4_K_M (16 one-token calls)")
        .expect(&text);
    for row in [
        "| start → prepared |",
        "| recorded → submitted |",
        "| wall period",
    ] {
        assert!(text[tl..].contains(row), "{row} missing:\n{text}");
    }
    assert!(text.find("| tg8 |").is_some_and(|r| r > tl), "{text}");
}
