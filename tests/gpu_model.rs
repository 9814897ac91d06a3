//! The whole llama graph on the GPU against a plain f64 CPU forward written here, on a tiny
//! random-weight model, for several weight types: prompt batch (all logits), incremental
//! decode over the KV cache, and batched decode of two sequences.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::reference::dequantize;
use ggufq::gpu::source::Mix;
use ggufq::gpu::{
    DeviceOptions, GpuContext, GpuModel, ModelOptions, Shape, SynthSource, WeightSource,
};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;
use gpu_fixture::context_tuned;

fn context() -> Option<Arc<GpuContext>> {
    // The f64 reference keeps activations unrounded; the Q8/f16 activation rounding is checked
    // against the CPU backend in tests/gpu_actq*.rs.
    context_tuned(|c| c.tune.act_round = false)
}

/// Reference llama forward in f64 over dequantized weights, one token at a time with a KV
/// cache (same math as llama.cpp: RMSNorm, NORM-mode RoPE, GQA attention with Q, K, V and
/// the probabilities rounded to f16, SwiGLU).
struct CpuRef {
    w: std::collections::HashMap<String, Vec<f64>>,
    s: Shape,
    k: Vec<Vec<Vec<f64>>>,
    v: Vec<Vec<Vec<f64>>>,
}

impl CpuRef {
    fn new(src: &SynthSource) -> CpuRef {
        let mut w = std::collections::HashMap::new();
        let mut names = vec![
            "token_embd.weight".to_string(),
            "output_norm.weight".into(),
            "output.weight".into(),
        ];
        for l in 0..src.shape.n_layer {
            for t in [
                "attn_norm",
                "ffn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                names.push(format!("blk.{l}.{t}.weight"));
            }
        }
        for n in names {
            let t = src.tensor(&n).unwrap().unwrap();
            let cnt: u64 = t.dims.iter().product();
            let v = dequantize(t.ty, &t.data, cnt as usize).unwrap();
            w.insert(n, v.into_iter().map(|x| x as f64).collect());
        }
        let nl = src.shape.n_layer as usize;
        CpuRef {
            w,
            s: src.shape,
            k: vec![Vec::new(); nl],
            v: vec![Vec::new(); nl],
        }
    }
    fn mv(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let w = &self.w[name];
        let cols = x.len();
        (0..w.len() / cols)
            .map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum())
            .collect()
    }
    fn norm(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        x.iter()
            .zip(&self.w[name])
            .map(|(a, b)| a * inv * b)
            .collect()
    }
    fn rope(x: &mut [f64], pos: usize, hd: usize) {
        for h in 0..x.len() / hd {
            for i in 0..hd / 2 {
                let th = pos as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                let (a, b) = (x[h * hd + 2 * i], x[h * hd + 2 * i + 1]);
                x[h * hd + 2 * i] = a * th.cos() - b * th.sin();
                x[h * hd + 2 * i + 1] = a * th.sin() + b * th.cos();
            }
        }
    }
    fn step(&mut self, tok: usize, pos: usize) -> Vec<f64> {
        let d = self.s.n_embd as usize;
        let nh = self.s.n_head as usize;
        let nkv = self.s.n_kv as usize;
        let hd = d / nh;
        let mut x = self.w["token_embd.weight"][tok * d..(tok + 1) * d].to_vec();
        for l in 0..self.s.n_layer as usize {
            let p = |t: &str| format!("blk.{l}.{t}.weight");
            let xn = self.norm(&p("attn_norm"), &x);
            let mut q = self.mv(&p("attn_q"), &xn);
            let mut k = self.mv(&p("attn_k"), &xn);
            let v = self.mv(&p("attn_v"), &xn);
            Self::rope(&mut q, pos, hd);
            Self::rope(&mut k, pos, hd);
            // llama.cpp's f16 KV cache and f16 Q in attention.
            let r16 = |v: &mut Vec<f64>| {
                v.iter_mut()
                    .for_each(|x| *x = half::f16::from_f64(*x).to_f64())
            };
            r16(&mut q);
            r16(&mut k);
            let mut v = v;
            r16(&mut v);
            assert_eq!(self.k[l].len(), pos);
            self.k[l].push(k);
            self.v[l].push(v);
            let mut att = vec![0f64; d];
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let sc: Vec<f64> = (0..=pos)
                    .map(|t| {
                        (0..hd)
                            .map(|i| q[h * hd + i] * self.k[l][t][kh * hd + i])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    att[h * hd + i] = (0..=pos)
                        .map(|t| half::f16::from_f64(e[t] / z).to_f64() * self.v[l][t][kh * hd + i])
                        .sum();
                }
            }
            let o = self.mv(&p("attn_output"), &att);
            for i in 0..d {
                x[i] += o[i];
            }
            let xn = self.norm(&p("ffn_norm"), &x);
            let g = self.mv(&p("ffn_gate"), &xn);
            let u = self.mv(&p("ffn_up"), &xn);
            let hdn: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let dn = self.mv(&p("ffn_down"), &hdn);
            for i in 0..d {
                x[i] += dn[i];
            }
        }
        let xn = self.norm("output_norm.weight", &x);
        self.mv("output.weight", &xn)
    }
}

fn compare(gpu: &[f32], cpu: &[f64], what: &str) {
    let scale = cpu.iter().fold(0f64, |a, b| a.max(b.abs()));
    let err = gpu
        .iter()
        .zip(cpu)
        .fold(0f64, |a, (g, c)| a.max((*g as f64 - c).abs()));
    let top = |v: Vec<f64>| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|x| x.0)
            .unwrap()
    };
    assert!(
        gpu.iter().all(|v| v.is_finite()),
        "{what}: non-finite logits"
    );
    eprintln!("{what}: rel {:.2e}", err / scale);
    // f32 vs f64 arithmetic can put a value on the other side of an f16 rounding boundary
    // (one f16 ulp, 2^-11 relative, in one K/V/P element), hence more than f32 precision.
    assert!(
        err / scale < 3e-4,
        "{what}: max abs diff {err} (max |logit| {scale})"
    );
    assert_eq!(
        top(gpu.iter().map(|&v| v as f64).collect()),
        top(cpu.to_vec()),
        "{what}: top-1 differs"
    );
}

fn run_type(ctx: &Arc<GpuContext>, ty: &str) {
    let src = SynthSource::new(
        Shape::named("tiny").unwrap(),
        Mix::parse(ty).unwrap(),
        format!("tiny-{ty}"),
    )
    .unwrap();
    let mut cpu = CpuRef::new(&src);
    let mut gpu = GpuModel::load(
        ctx.clone(),
        &src,
        ModelOptions {
            n_ctx: 64,
            n_batch: 32,
            n_seq: 2,
        },
    )
    .unwrap();
    let nv = src.shape.n_vocab as usize;
    // 18 tokens: the prompt goes through the tiled 64×64 mat-mat kernel (≥ 16 tokens).
    let prompt = [
        1u32, 77, 300, 5, 511, 42, 8, 9, 10, 200, 201, 3, 4, 5, 6, 7, 400, 401,
    ];
    let toks: Vec<(u32, u32, u32)> = prompt
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, 0, i as u32))
        .collect();
    let all = gpu.forward(&toks, true).unwrap();
    assert_eq!(all.len(), prompt.len() * nv);
    for (i, &t) in prompt.iter().enumerate() {
        let c = cpu.step(t as usize, i);
        compare(
            &all[i * nv..(i + 1) * nv],
            &c,
            &format!("{ty} prompt token {i}"),
        );
    }
    // Incremental decode continues from the cache written by the batch.
    for (j, t) in [9u32, 260].into_iter().enumerate() {
        let pos = prompt.len() + j;
        let g = gpu.forward(&[(t, 0, pos as u32)], false).unwrap();
        compare(
            &g,
            &cpu.step(t as usize, pos),
            &format!("{ty} decode pos {pos}"),
        );
    }
    // Two sequences at once: sequence 1 replays the prompt, both decode one token together.
    let toks1: Vec<(u32, u32, u32)> = prompt
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, 1, i as u32))
        .collect();
    gpu.forward(&toks1, false).unwrap();
    let pos = prompt.len() + 2;
    let both = gpu
        .forward(&[(7, 0, pos as u32), (9, 1, prompt.len() as u32)], true)
        .unwrap();
    compare(
        &both[..nv],
        &cpu.step(7, pos),
        &format!("{ty} parallel seq 0"),
    );
    let mut cpu1 = CpuRef::new(&src);
    for (i, &t) in prompt.iter().enumerate() {
        cpu1.step(t as usize, i);
    }
    compare(
        &both[nv..],
        &cpu1.step(9, prompt.len()),
        &format!("{ty} parallel seq 1"),
    );
}

#[test]
fn gpu_llama_matches_cpu_reference_q4_k() {
    let Some(ctx) = context() else { return };
    run_type(&ctx, "Q4_K");
}

#[test]
fn gpu_llama_matches_cpu_reference_other_types() {
    let Some(ctx) = context() else { return };
    for ty in [
        "F16", "Q8_0", "Q4_0", "Q6_K", "q4_k_m", "hybrid", "q2_k_mix",
    ] {
        run_type(&ctx, ty);
    }
}

#[test]
fn gpu_gguf_roundtrip_gives_same_logits() {
    // A synthetic model written as GGUF and loaded back from the file runs identically.
    let Some(ctx) = context() else { return };
    let src = SynthSource::new(
        Shape::named("tiny").unwrap(),
        Mix::parse("q4_k_m").unwrap(),
        "tiny-q4km",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    src.write_gguf(&path).unwrap();
    let file = ggufq::gpu::GgufSource::open(&path).unwrap();
    assert_eq!(file.meta_u64("llama.block_count"), Some(2));
    let opts = ModelOptions {
        n_ctx: 32,
        n_batch: 8,
        n_seq: 1,
    };
    let mut a = GpuModel::load(ctx.clone(), &src, opts.clone()).unwrap();
    let mut b = GpuModel::load(ctx.clone(), &file, opts).unwrap();
    let toks = [(3u32, 0u32, 0u32), (100, 0, 1), (7, 0, 2)];
    assert_eq!(
        a.forward(&toks, true).unwrap(),
        b.forward(&toks, true).unwrap()
    );
    assert_eq!(a.type_summary(), "Q4_K (+Q6_K)");
}

/// Greedy-decode `steps` tokens after a prompt, returning every decode step's logits.
fn decode_run(gpu: &mut GpuModel, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let toks: Vec<(u32, u32, u32)> = prompt
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, 0, i as u32))
        .collect();
    let mut last = gpu.forward(&toks, false).unwrap();
    let mut out = Vec::new();
    for j in 0..steps {
        let next = last
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        last = gpu
            .forward(&[(next, 0, (prompt.len() + j) as u32)], false)
            .unwrap();
        out.push(last.clone());
    }
    out
}

#[test]
fn gpu_fused_decode_graph_matches_batch_graph() {
    // One-token forwards run the fused graph (RMSNorm in the mat-vec prologue, RoPE and the
    // KV store inside attention, 5 dispatches per layer); the batch graph computes the same.
    let Some(ctx) = context() else { return };
    for mix in ["q4_k", "q4_k_m"] {
        let src = SynthSource::new(
            Shape::named("tiny").unwrap(),
            Mix::parse(mix).unwrap(),
            format!("tiny-{mix}"),
        )
        .unwrap();
        let opts = ModelOptions {
            n_ctx: 64,
            n_batch: 16,
            n_seq: 1,
        };
        let mut fused = GpuModel::load(ctx.clone(), &src, opts.clone()).unwrap();
        let mut plain = GpuModel::load(ctx.clone(), &src, opts).unwrap();
        assert!(
            fused.set_fused_decode(true),
            "{mix}: fused graph unavailable"
        );
        assert!(!plain.set_fused_decode(false));
        if mix == "q4_k" {
            // One type everywhere: fused QKV and gate/up, so 5 dispatches per layer + output.
            assert_eq!(fused.dispatches_per_token(), 5 * 2 + 1);
            assert_eq!(plain.dispatches_per_token(), 8 * 2 + 2);
        }
        let prompt = [5u32, 300, 17, 42, 99];
        let a = decode_run(&mut fused, &prompt, 12);
        let b = decode_run(&mut plain, &prompt, 12);
        // Commands recorded ahead (the default) or at each call: identical results.
        fused.set_prerecord(false);
        assert_eq!(
            decode_run(&mut fused, &prompt, 12),
            a,
            "{mix}: prerecording"
        );
        for (j, (x, y)) in a.iter().zip(&b).enumerate() {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err / scale < 1e-4,
                "{mix} step {j}: fused vs batch graph rel diff {}",
                err / scale
            );
        }
    }
}

#[test]
fn gpu_decode_profile_covers_every_dispatch() {
    let Some(ctx) = context() else { return };
    let src = SynthSource::new(
        Shape::named("tiny").unwrap(),
        Mix::parse("q4_k_m").unwrap(),
        "tiny-prof",
    )
    .unwrap();
    let mut gpu = GpuModel::load(
        ctx.clone(),
        &src,
        ModelOptions {
            n_ctx: 32,
            n_batch: 8,
            n_seq: 1,
        },
    )
    .unwrap();
    let res = ggufq::gpu::profile::profile_decode(&mut gpu, 3);
    if !ctx.facts.timestamps {
        let e = res.unwrap_err().to_string();
        assert!(e.contains("timestamp"), "{e}");
        return;
    }
    let p = res.unwrap();
    let n: usize = p.roles.iter().map(|r| r.dispatches).sum();
    assert_eq!(n, gpu.dispatches_per_token());
    let bytes: u64 = p.roles.iter().map(|r| r.weight_bytes).sum();
    assert_eq!(bytes, gpu.weight_bytes_per_token);
    for role in ["qkv", "attention", "wo", "down", "output"] {
        assert!(
            p.roles.iter().any(|r| r.role == role),
            "no {role} in {:?}",
            p.roles
        );
    }
    assert!(p.steps_us > 0.0 && p.pass_us > 0.0 && p.wall_us > 0.0);
    let md = p.to_markdown("tiny", Some(100.0));
    assert!(md.contains("| attention | 2 |"), "{md}");
    // Too short a context for three modes of 20 tokens is an error, not a panic.
    assert!(ggufq::gpu::profile::profile_decode(&mut gpu, 20).is_err());
}

#[test]
fn gpu_splitk_down_projection_matches_per_warp_layout() {
    // ffn_down rows of 8192 weights (256 units) take the split-K decode kernel; the per-warp
    // layout computes the same logits (f32 summation order only).
    let Some(base) = context() else { return };
    drop(base);
    let shape = Shape {
        n_ff: 8192,
        ..Shape::named("tiny").unwrap()
    };
    let src = SynthSource::new(shape, Mix::parse("q4_k").unwrap(), "tiny-ff8k").unwrap();
    let opts = ModelOptions {
        n_ctx: 32,
        n_batch: 8,
        n_seq: 1,
    };
    let mut runs = Vec::new();
    for level in [2u32, 0] {
        let mut ctx = GpuContext::new(&DeviceOptions::default()).unwrap();
        ctx.tune.splitk = level;
        let mut m = GpuModel::load(Arc::new(ctx), &src, opts.clone()).unwrap();
        runs.push(decode_run(&mut m, &[3, 9, 27], 4));
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            err / scale < 1e-4,
            "split-K vs per-warp rel diff {}",
            err / scale
        );
    }
}
