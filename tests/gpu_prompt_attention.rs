//! The prompt path's tiled attention (`shaders/attention.wgsl`: 16 or 32 tokens per
//! workgroup, keys in blocks of 16) and the prompt profile of `ggufq bench --profile`, on the default adapter
//! (lavapipe in CI) with the tiny synthetic model (head size 64, grouped-query heads).
#![cfg(feature = "gpu")]

use std::sync::Arc;

use ggufq::gpu::kernels::attention_tile;
use ggufq::gpu::model::{GpuModel, ModelOptions};
use ggufq::gpu::{GpuContext, SynthSource};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn load(ctx: &Arc<GpuContext>, src: &SynthSource, n_batch: usize, n_seq: usize) -> GpuModel {
    GpuModel::load(
        ctx.clone(),
        src,
        ModelOptions {
            n_ctx: 64,
            n_batch,
            n_seq,
        },
    )
    .unwrap()
}

/// Largest |a − b| relative to the largest |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite logits");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn attention_tile_sizes() {
    // Head sizes up to 128 take 16 (or 32) tokens × 16 keys in the H100's 48 KiB, 256 takes 8.
    let k48 = 48 * 1024;
    assert_eq!(attention_tile(64, k48, 16).unwrap(), (16, 16));
    assert_eq!(attention_tile(128, k48, 16).unwrap(), (16, 16));
    assert_eq!(attention_tile(128, k48, 32).unwrap(), (32, 16));
    assert_eq!(attention_tile(256, k48, 16).unwrap(), (8, 16));
    assert_eq!(attention_tile(256, k48, 32).unwrap(), (8, 16));
    // Less workgroup memory: smaller tiles, or an error that says why.
    assert_eq!(attention_tile(64, 16 * 1024, 32).unwrap(), (16, 16));
    assert_eq!(attention_tile(128, 16 * 1024, 16).unwrap(), (8, 8));
    let e = attention_tile(256, 16 * 1024, 16).unwrap_err().to_string();
    assert!(e.contains("workgroup memory"), "{e}");
    assert!(attention_tile(66, k48, 16).is_err());
    assert!(attention_tile(512, k48, 16).is_err());
}

/// Three sequences interleaved token by token in one batch (each 16- or 32-token tile holds
/// all three, at different positions) give the logits of each sequence's prompt run alone,
/// and those of token-by-token decoding (the decode graph's own attention kernel).
#[test]
fn gpu_prompt_attention_interleaved_sequences_match_separate_prompts() {
    for qt in [16, 32] {
        interleaved_vs_separate(qt);
    }
}

fn interleaved_vs_separate(qt: u32) {
    // Without the activation rounding, so that decode and prompt kernels agree to f32
    // summation order (a rounding step can amplify that to ~1e-2).
    let Some(ctx) = gpu_fixture::context_tuned(|c| {
        c.tune.act_round = false;
        c.tune.attn_qt = qt;
    }) else {
        return;
    };
    let src = gpu_fixture::tiny_source("q8_0");
    let nv = src.shape.n_vocab as usize;
    let lens = [21usize, 13, 30];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &n)| gpu_fixture::tokens(nv, n, 7 + s as u64))
        .collect();
    // Interleaved batch: round robin over the sequences while they have tokens.
    let mut batch = Vec::new();
    for i in 0..*lens.iter().max().unwrap() {
        for (s, p) in prompts.iter().enumerate() {
            if let Some(&t) = p.get(i) {
                batch.push((t, s as u32, i as u32));
            }
        }
    }
    let mut gpu = load(&ctx, &src, 64, 3);
    let mixed = gpu.forward(&batch, true).unwrap();
    let mut alone = load(&ctx, &src, 64, 1);
    let mut dec = load(&ctx, &src, 64, 1);
    for (s, p) in prompts.iter().enumerate() {
        let toks: Vec<(u32, u32, u32)> = p
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, 0, i as u32))
            .collect();
        let sep = alone.forward(&toks, true).unwrap();
        for (i, &t) in p.iter().enumerate() {
            let b = batch
                .iter()
                .position(|&(_, bs, bp)| bs == s as u32 && bp == i as u32)
                .unwrap();
            let m = &mixed[b * nv..(b + 1) * nv];
            let a = &sep[i * nv..(i + 1) * nv];
            // Same kernels, same summation order per token: equal up to the mat-mat tiles
            // seeing the token in another row of the tile.
            let e = rel(m, a);
            assert!(
                e < 1e-4,
                "qt {qt} seq {s} pos {i}: interleaved vs alone {e:.2e}"
            );
            let d = dec.forward(&[(t, 0, i as u32)], false).unwrap();
            let e = rel(a, &d);
            // Decode kernels (mat-vec, decode attention) sum in another order.
            assert!(
                e < 3e-3,
                "qt {qt} seq {s} pos {i}: prompt vs decode {e:.2e}"
            );
        }
    }
}

#[test]
fn gpu_prompt_profile_covers_every_dispatch() {
    let Some(ctx) = gpu_fixture::context() else {
        return;
    };
    let src = gpu_fixture::tiny_source("q4_k_m");
    let mut gpu = load(&ctx, &src, 40, 1);
    let n = 40;
    let res = ggufq::gpu::prompt_profile::profile_prompt(&mut gpu, n, 2);
    if !ctx.facts.timestamps {
        let e = res.unwrap_err().to_string();
        assert!(e.contains("timestamp"), "{e}");
        return;
    }
    let p = res.unwrap();
    let roles = gpu.step_roles_for(n);
    let count: usize = p.roles.iter().map(|r| r.dispatches).sum();
    assert_eq!(count, roles.len());
    // The batch graph: norms, attention and every matrix role are separate dispatches.
    for role in [
        "attn_norm",
        "qkv",
        "attention",
        "wo",
        "ffn_norm",
        "down",
        "output",
    ] {
        assert!(
            p.roles.iter().any(|r| r.role == role),
            "no {role} in {:?}",
            p.roles
        );
    }
    // FLOPs: 2 per weight and prompt token for the layers, one token for the output.
    let sh = &src.shape;
    let (d, ff, kv) = (
        sh.n_embd as f64,
        sh.n_ff as f64,
        (sh.n_embd / sh.n_head * sh.n_kv) as f64,
    );
    let layer = d * (d + 2.0 * kv) + d * d + 3.0 * d * ff;
    let want = 2.0 * (sh.n_layer as f64 * layer * n as f64 + d * sh.n_vocab as f64);
    let flops: f64 = p.roles.iter().map(|r| r.flops).sum();
    assert!((flops - want).abs() < 1.0, "{flops} vs {want}");
    assert!(p
        .roles
        .iter()
        .find(|r| r.role == "attention")
        .unwrap()
        .tflops()
        .is_none());
    assert!(
        p.roles
            .iter()
            .find(|r| r.role == "qkv")
            .unwrap()
            .tflops()
            .unwrap()
            > 0.0
    );
    assert!(p.pass_us > 0.0 && p.steps_us > 0.0 && p.wall_us > 0.0);
    // The CPU phases of a plain forward add up to no more than its wall time.
    let cpu: f64 = p.cpu_us.iter().sum();
    assert!(
        cpu > 0.0 && cpu <= p.wall_us * 1.01,
        "{:?} vs {}",
        p.cpu_us,
        p.wall_us
    );
    assert!(p.cpu_us[3] > 0.0, "no wait for the GPU: {:?}", p.cpu_us);
    let md = p.to_markdown("tiny");
    assert!(md.contains("| attention | 2 |"), "{md}");
    assert!(md.contains("CPU: prepare"), "{md}");
    // More tokens than the batch holds: an error, not a panic.
    assert!(ggufq::gpu::prompt_profile::profile_prompt(&mut gpu, 41, 1).is_err());
    assert!(ggufq::gpu::prompt_profile::profile_prompt(&mut gpu, 0, 1).is_err());
}

/// `ggufq bench --kernel-check` (the device runs' self-check) passes on this adapter and
/// reports every type, both model checks and the stand-alone attention checks.
#[test]
fn bench_kernel_check_passes_and_covers_every_type() {
    if gpu_fixture::context().is_none() {
        return;
    }
    let text = gpu_fixture::kernel_check_stdout();
    assert!(text.contains("kernel check ok"), "{text}");
    for ty in [
        "F32", "BF16", "Q4_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q6_K",
    ] {
        assert_eq!(
            text.matches(&format!("mat-mat {ty} ")).count(),
            2,
            "{ty}: {text}"
        );
    }
    assert_eq!(text.matches("prompt vs decode").count(), 2, "{text}");
    // The prompt attention kernels on their own, both head sizes (on adapters with
    // cooperative matrices also the flash-attention kernel against the f32 tiles).
    for hd in [64, 128] {
        assert!(
            text.contains(&format!("attention f32 tiles hd {hd}, 250 tokens")),
            "{text}"
        );
        assert!(
            text.contains(&format!("attention cooperative matrices hd {hd}")),
            "{text}"
        );
    }
    assert!(!text.contains("FAILED"), "{text}");
}
