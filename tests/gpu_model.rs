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

fn context() -> Option<Arc<GpuContext>> {
    match GpuContext::new(&DeviceOptions::default()) {
        Ok(mut c) => {
            // The f64 reference keeps activations unrounded; the Q8/f16 activation rounding
            // is checked against the CPU backend in tests/gpu_actq*.rs.
            c.tune.act_round = false;
            Some(Arc::new(c))
        }
        Err(e) if std::env::var("GGUFQ_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("skipping GPU test: {e}");
            None
        }
        Err(e) => panic!("no GPU adapter ({e}); set GGUFQ_SKIP_GPU=1 to skip GPU tests"),
    }
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
