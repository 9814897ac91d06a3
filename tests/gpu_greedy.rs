//! Greedy decoding on the GPU (`GpuModel::decode_greedy`): the argmax kernel picks each next
//! token and advances the position, and the next pass is queued before the host reads the
//! logits. It must give the tokens and logits, bit for bit, of one `forward` call at a time
//! with the argmax on the host, on every graph (fused decode, batch, host embeddings), stop
//! where asked, and leave the model usable. The kernel alone follows `greedy_token`'s rule
//! on ties, NaN and vocabularies that are not a multiple of its 256 threads.
//! Runs on lavapipe in CI; without an adapter the GPU test fails unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::greedy::{greedy_on_gpu, greedy_token};
use ggufq::gpu::source::Mix;
use ggufq::gpu::{GpuContext, GpuModel, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::{
    assert_timeline_in_order, context, context_tuned, decode_opts, tiny_or_wide, tokens,
};

fn load(shape: &str, mix: &str, tune: impl FnOnce(&mut GpuContext)) -> Option<GpuModel> {
    let ctx = context_tuned(tune)?;
    let src = SynthSource::new(tiny_or_wide(shape), Mix::parse(mix).unwrap(), mix).unwrap();
    Some(GpuModel::load(ctx, &src, decode_opts()).unwrap())
}

/// Prompt of 3 tokens, then `n` greedy tokens: (logits, chosen next token) per pass.
fn prompt(m: &mut GpuModel) -> u32 {
    let p: Vec<(u32, u32, u32)> = tokens(m.cfg.n_vocab, 3, 1)
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, 0, i as u32))
        .collect();
    greedy_token(&m.forward(&p, false).unwrap())
}

fn host_loop(m: &mut GpuModel, first: u32, pos: u32, n: usize) -> Vec<(Vec<f32>, u32)> {
    let mut tok = first;
    (0..n)
        .map(|k| {
            let l = m.forward(&[(tok, 0, pos + k as u32)], false).unwrap();
            tok = greedy_token(&l);
            (l, tok)
        })
        .collect()
}

fn gpu_chain(m: &mut GpuModel, first: u32, pos: u32, n: usize) -> Vec<(Vec<f32>, u32)> {
    let mut out = Vec::new();
    let got = m
        .decode_greedy(first, 0, pos, n, &mut |k, l, next| {
            assert_eq!(k, out.len(), "passes reported in order");
            out.push((l.to_vec(), next));
            Ok(true)
        })
        .unwrap();
    assert_eq!(got, n);
    out
}

fn assert_same(a: &[(Vec<f32>, u32)], b: &[(Vec<f32>, u32)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (k, ((la, ta), (lb, tb))) in a.iter().zip(b).enumerate() {
        assert_eq!(ta, tb, "{what}: token of pass {k}");
        let differ = la
            .iter()
            .zip(lb)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "{what}: pass {k}: {differ} logits differ");
    }
}

#[test]
fn gpu_greedy_decoding_equals_the_host_loop_bit_for_bit() {
    for (shape, mix) in [
        ("tiny", "q4_0"),
        ("tiny", "q4_k_m"),
        ("tiny", "q8_0"),
        ("wide", "q4_k_m"),
    ] {
        let Some(mut m) = load(shape, mix, |_| {}) else {
            return;
        };
        let what = format!("{shape} {mix}");
        let first = prompt(&mut m);
        let chain = gpu_chain(&mut m, first, 3, 20);
        for (l, t) in &chain {
            assert_eq!(
                *t,
                greedy_token(l),
                "{what}: the GPU's choice is the host rule's"
            );
        }
        // The same positions again, one call at a time: the KV cache is rewritten.
        let host = host_loop(&mut m, first, 3, 20);
        assert_same(&chain, &host, &what);
        // Chained again after the host loop (the parameters of both shapes alternate).
        let again = gpu_chain(&mut m, first, 3, 20);
        assert_same(&again, &host, &format!("{what}, second chain"));
        // The batch graph for one-token calls.
        m.set_fused_decode(false);
        let batch_host = host_loop(&mut m, first, 3, 8);
        let batch_chain = gpu_chain(&mut m, first, 3, 8);
        assert_same(&batch_chain, &batch_host, &format!("{what}, batch graph"));
    }
}

#[test]
fn gpu_greedy_decoding_with_host_embeddings_gives_the_same_tokens() {
    let Some(mut a) = load("tiny", "q4_k_m", |_| {}) else {
        return;
    };
    let Some(mut b) = load("tiny", "q4_k_m", |c| c.tune.gpu_embd = false) else {
        return;
    };
    let first = prompt(&mut a);
    assert_eq!(prompt(&mut b), first);
    let ga = gpu_chain(&mut a, first, 3, 12);
    let gb = gpu_chain(&mut b, first, 3, 12);
    let ta: Vec<u32> = ga.iter().map(|p| p.1).collect();
    let tb: Vec<u32> = gb.iter().map(|p| p.1).collect();
    assert_eq!(ta, tb);
    for (k, ((la, _), (lb, _))) in ga.iter().zip(&gb).enumerate() {
        let worst = la
            .iter()
            .zip(lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "pass {k}: max |diff| {worst}");
    }
}

#[test]
fn gpu_greedy_decoding_stops_when_asked_and_leaves_the_model_usable() {
    let Some(mut m) = load("tiny", "q4_0", |_| {}) else {
        return;
    };
    let first = prompt(&mut m);
    let mut seen = Vec::new();
    let got = m
        .decode_greedy(first, 0, 3, 30, &mut |k, _, next| {
            seen.push(next);
            Ok(k < 4)
        })
        .unwrap();
    assert_eq!(got, 5);
    assert_eq!(seen.len(), 5);
    // Continue from the 5th token on the host: the same as an unbroken host loop.
    let tail = host_loop(&mut m, seen[4], 8, 6);
    let whole = host_loop(&mut m, first, 3, 11);
    assert_same(&tail, &whole[5..], "after a stop");
    // A callback error is returned and the model still decodes.
    let err = m
        .decode_greedy(first, 0, 3, 10, &mut |k, _, _| {
            if k == 2 {
                Err(ggufq::error::Error::msg("stop here"))
            } else {
                Ok(true)
            }
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop here"), "{err}");
    let after = gpu_chain(&mut m, first, 3, 11);
    assert_same(&after, &whole, "after an error");
}

#[test]
fn gpu_greedy_decoding_refuses_bad_positions_and_tokens() {
    let Some(mut m) = load("tiny", "q4_0", |_| {}) else {
        return;
    };
    let nv = m.cfg.n_vocab as u32;
    let n_ctx = decode_opts().n_ctx;
    let mut never =
        |_: usize, _: &[f32], _: u32| -> ggufq::error::Result<bool> { panic!("no pass may run") };
    let e = m.decode_greedy(nv, 0, 0, 4, &mut never).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = m
        .decode_greedy(1, 0, (n_ctx - 3) as u32, 4, &mut never)
        .unwrap_err();
    assert!(e.to_string().contains("outside the KV cache"), "{e}");
    let e = m.decode_greedy(1, 1, 0, 4, &mut never).unwrap_err();
    assert!(e.to_string().contains("outside the KV cache"), "{e}");
    assert_eq!(m.decode_greedy(1, 0, 0, 0, &mut never).unwrap(), 0);
    // The last positions of the cache are allowed.
    assert_eq!(gpu_chain(&mut m, 1, (n_ctx - 4) as u32, 4).len(), 4);
}

#[test]
fn gpu_argmax_kernel_follows_the_host_rule() {
    let Some(ctx) = context() else {
        return;
    };
    // The default workgroup (1024 invocations, halved until the adapter allows it) and 256.
    let narrow = context_tuned(|c| c.tune.argmax_wg = 256).unwrap();
    assert_eq!(ctx.tune.argmax_wg, 1024);
    let mut cases: Vec<Vec<f32>> = vec![
        vec![1.0, 3.0, 2.0, 3.0],
        vec![f32::NAN, 0.5, f32::NAN, 0.7],
        vec![f32::NEG_INFINITY, f32::MIN],
        vec![f32::NAN; 5],
        vec![-5.0, f32::INFINITY, f32::INFINITY],
        vec![0.25],
    ];
    // Ties spread over threads and vocabularies not a multiple of 256 (or of the 4 × 1024
    // entries one step of the wide kernel reads).
    for n in [
        255usize, 256, 257, 1000, 4095, 4096, 4097, 8269, 32000, 49152,
    ] {
        let mut v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1009) as f32 * 0.01).collect();
        let top = v.iter().cloned().fold(f32::MIN, f32::max);
        v[n / 3] = top + 1.0;
        v[n - 1] = top + 1.0;
        cases.push(v.clone());
        v[n / 3] = f32::NAN;
        cases.push(v);
    }
    // Equal maxima that one thread of the wide kernel reads in one step (i, i + 1024,
    // i + 2048, i + 3072) or in the tail after its last whole step, and a later larger one.
    for (n, at) in [
        (5000usize, vec![3072usize + 5, 1029, 2053]),
        (8269, vec![8197, 4101]),
        (8269, vec![8200, 7000, 8268]),
    ] {
        let mut v = vec![0.5f32; n];
        for &a in &at {
            v[a] = 2.0;
        }
        cases.push(v.clone());
        v[n - 2] = 3.0;
        cases.push(v);
    }
    for (i, c) in cases.iter().enumerate() {
        let want = greedy_token(c);
        for (wg, ctx) in [(1024, &ctx), (256, &narrow)] {
            let (id, pos) = greedy_on_gpu(ctx, c, 41).unwrap();
            assert_eq!(id, want, "case {i} ({} logits), {wg} invocations", c.len());
            assert_eq!(pos, 42, "case {i}: the position advances");
        }
    }
}

#[test]
fn kernel_check_line_compares_greedy_decoding_with_the_host_loop() {
    let Some(ctx) = context() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = gpu_fixture::write_tiny(dir.path(), "q4_k_m");
    let (pass, line) = ggufq::gpu::selfcheck::greedy_decode_check(&ctx, &path, 24).unwrap();
    assert!(pass, "{line}");
    assert!(
        line.contains("24 steps against one call at a time: 0 steps differ (0 tokens) ok"),
        "{line}"
    );
}

/// `ggufq run --backend gpu` on the real SmolLM2 (tied embeddings, 576-wide rows: the batch
/// graph): the text is what one `forward` call at a time with the host's argmax gives.
#[test]
fn run_backend_gpu_prints_the_text_of_the_host_loop() {
    let Some(path) = ggufq::testutil::smollm2_path() else {
        eprintln!("notice: SmolLM2 not found (GGUFQ_SMOLLM2 or ~/.cache/ggufq); test skipped");
        return;
    };
    let Some(ctx) = context() else {
        return;
    };
    let prompt = "The capital of France is";
    let n = 12usize;
    let model = ggufq::model::Model::open(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let ids = tok.encode(prompt, true, true).unwrap();
    let src = ggufq::gpu::GgufSource::open(&path).unwrap();
    let opts = ggufq::gpu::ModelOptions {
        n_ctx: ids.len() + n,
        n_batch: ids.len(),
        n_seq: 1,
    };
    let mut m = GpuModel::load(ctx, &src, opts).unwrap();
    let p: Vec<(u32, u32, u32)> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, 0, i as u32))
        .collect();
    let mut next = greedy_token(&m.forward(&p, false).unwrap());
    let mut want = prompt.to_string();
    for k in 0..n {
        if Some(next) == tok.eos {
            break;
        }
        want.push_str(&String::from_utf8_lossy(&tok.token_bytes(next)));
        if k + 1 < n {
            let pos = (ids.len() + k) as u32;
            next = greedy_token(&m.forward(&[(next, 0, pos)], false).unwrap());
        }
    }
    want.push('\n');
    let out = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args([
            "run",
            path.to_str().unwrap(),
            "-p",
            prompt,
            "-n",
            "12",
            "--backend",
            "gpu",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{stderr}");
    assert!(stderr.contains("generated"), "{stderr}");
    let bad = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args(["run", path.to_str().unwrap(), "-p", "x", "--backend", "tpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown backend 'tpu'"));
}

/// Greedy decoding with the queue shaped by `tune`: 17 passes equal to the host loop, a stop
/// after pass `stop` (passes already queued behind it run unreported), and the same passes
/// again after the stop. False without an adapter.
fn same_with_queue(what: &str, stop: usize, tune: impl FnOnce(&mut GpuContext)) -> bool {
    let Some(mut m) = load("tiny", "q4_k_m", tune) else {
        return false;
    };
    let first = prompt(&mut m);
    let chain = gpu_chain(&mut m, first, 3, 17);
    let host = host_loop(&mut m, first, 3, 17);
    assert_same(&chain, &host, what);
    let got = m
        .decode_greedy(first, 0, 3, 17, &mut |k, _, _| Ok(k < stop))
        .unwrap();
    assert_eq!(got, stop + 1, "{what}");
    let after = gpu_chain(&mut m, first, 3, 17);
    assert_same(&after, &host, &format!("{what}, after a stop"));
    true
}

#[test]
fn gpu_greedy_decoding_with_more_passes_in_flight_is_the_same() {
    for depth in [3u32, 4, 16] {
        // A stop with several passes queued behind it.
        if !same_with_queue(&format!("depth {depth}"), 1, |c| {
            c.tune.greedy_depth = depth
        }) {
            return;
        }
    }
}

#[test]
fn gpu_greedy_decoding_in_groups_of_passes_is_the_same() {
    // 17 passes: groups of 2, 4 and 8 leave a shorter last group; one command buffer per
    // pass or per group. A stop inside a group, with a whole group queued behind it.
    for (group, cb) in [(2u32, false), (2, true), (4, true), (8, false), (8, true)] {
        let what = format!("group {group}, one command buffer {cb}");
        if !same_with_queue(&what, 2, |c| {
            c.tune.greedy_group = group;
            c.tune.greedy_cb = cb;
        }) {
            return;
        }
    }
}

#[test]
fn gpu_greedy_passes_are_kept_in_the_host_timeline() {
    for group in [1u32, 4] {
        let Some(mut m) = load("tiny", "q4_k_m", |c| c.tune.greedy_group = group) else {
            return;
        };
        let first = prompt(&mut m);
        let plain = gpu_chain(&mut m, first, 3, 9);
        m.set_host_timeline(Some(6));
        let timed = gpu_chain(&mut m, first, 3, 9);
        assert_same(
            &timed,
            &plain,
            &format!("group {group}: timeline on vs off"),
        );
        let tl = m.host_timeline().unwrap();
        // The last 6 of the 9 passes, each a one-token call of the timeline.
        let what = format!("greedy passes in groups of {group}");
        assert_timeline_in_order(&tl, 6, m.context().facts.timestamps, &what);
        for (i, mk) in tl.marks.iter().enumerate().skip(1) {
            // Passes are read in order, and none is waited for before its submit.
            assert!(
                mk[7] >= tl.marks[i - 1][7],
                "{what}: pass {i} read before pass {}",
                i - 1
            );
            assert!(
                mk[3] <= mk[6],
                "{what}: pass {i} waited for before its submit"
            );
        }
        m.set_host_timeline(None);
    }
}

/// `GpuBackend::decode_greedy` (what `ggufq run --backend gpu` calls): the GPU loop from the
/// backend's position, which grows by the tokens reported.
#[test]
fn gpu_backend_greedy_decoding_continues_from_its_position() {
    use ggufq::model::{Backend, LogitsWanted};
    let Some(ctx) = context() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = gpu_fixture::write_tiny(dir.path(), "q4_0");
    let hp = ggufq::model::Model::open(&path).unwrap().hparams;
    let mut b = ggufq::gpu::GpuBackend::load(ctx, &path, hp, 64, 8).unwrap();
    let prompt = tokens(b.hparams().n_vocab, 3, 1);
    let mut l = Vec::new();
    b.forward(&prompt, LogitsWanted::Last, &mut l).unwrap();
    let first = greedy_token(&l);
    let mut chain = Vec::new();
    let got = b
        .decode_greedy(first, 9, &mut |_, l, next| {
            chain.push((l.to_vec(), next));
            Ok(true)
        })
        .unwrap();
    assert_eq!((got, b.n_past()), (9, 12));
    let mut m = b.into_model();
    let host = host_loop(&mut m, first, 3, 9);
    assert_same(&chain, &host, "GpuBackend");
}
