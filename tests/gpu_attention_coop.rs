//! The prompt flash attention on cooperative matrices (`shaders/attention_coop.wgsl`): its
//! assembly and selection, and the stand-alone attention runner and CPU reference that
//! `ggufq bench --kernel-check` uses to compare it with the tiled f32 kernel on the device.
//! lavapipe has no cooperative matrices, so here the new kernel's text is validated with
//! naga (wgpu's WGSL front end) and the runner is checked with the f32 kernel; the new
//! kernel's numerics are checked on an H100 by the self-check (docs/BENCHMARKS.md).
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::{
    attention_coop_bytes, attention_coop_fits, attention_key, attention_tile, KernelKey, Kernels,
    ATTN_COOP_QT,
};
use ggufq::gpu::selfcheck::{attention_reference, run_attention, AttnCase, ATTN_TOL};
use ggufq::gpu::{DeviceOptions, GpuContext};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn context() -> Option<GpuContext> {
    gpu_fixture::device(&DeviceOptions::default())
}

/// Largest |a − b| relative to the largest |b|.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64))
        / scale
}

#[test]
fn coop_attention_source_is_valid_for_every_head_size() {
    let Some(mut ctx) = context() else { return };
    ctx.facts.coop_matrix = true;
    for hd in [16u32, 32, 64, 80, 96, 128, 160, 192, 256] {
        let src = Kernels::source(&ctx, &KernelKey::AttentionCoop { hd }).unwrap();
        assert!(!src.contains('$'), "hd {hd}: placeholder left in\n{src}");
        assert!(src.contains("enable wgpu_cooperative_matrix;"));
        assert!(src.contains(&format!("const HD: u32 = {hd}u;")), "hd {hd}");
        // hd/16 query fragments and hd/16 output accumulators per subgroup.
        assert_eq!(src.matches("var q_").count() as u32, hd / 16, "hd {hd}");
        assert_eq!(
            src.matches("= coop_mat16x16<f32, C>();").count() as u32,
            hd / 16 + 1,
            "hd {hd}: output accumulators + the zero tile"
        );
        gpu_fixture::validate_wgsl(&src, &format!("attention_coop hd {hd}"));
    }
    // Head sizes that are not whole 16-column fragments: an error, not a broken kernel.
    for hd in [0u32, 8, 24, 100, 272] {
        assert!(
            Kernels::source(&ctx, &KernelKey::AttentionCoop { hd }).is_err(),
            "hd {hd}"
        );
    }
}

#[test]
fn coop_attention_selection_and_switch() {
    let Some(mut ctx) = context() else { return };
    let k48 = 48 * 1024;
    // The H100's 48 KiB holds head sizes up to 224; 256 needs more (f32 tiles then).
    assert!(attention_coop_bytes(128) <= 32 * 1024);
    assert!(attention_coop_fits(128, k48) && attention_coop_fits(64, k48));
    assert!(!attention_coop_fits(256, k48));
    assert!(attention_coop_fits(80, k48) && attention_coop_fits(224, k48));
    assert!(!attention_coop_fits(72, k48) && !attention_coop_fits(128, 16 * 1024));
    ctx.facts.shared_mem = k48;
    ctx.facts.coop_matrix = true;
    ctx.tune.attn_coop = true;
    ctx.tune.attn_qt = 32;
    assert_eq!(
        attention_key(&ctx, 128).unwrap(),
        (KernelKey::AttentionCoop { hd: 128 }, ATTN_COOP_QT)
    );
    let scalar = |hd: u32, qt: u32| {
        let (q, kb) = attention_tile(hd, k48, qt).unwrap();
        (KernelKey::Attention { hd, qt: q, kb }, q)
    };
    assert_eq!(attention_key(&ctx, 256).unwrap(), scalar(256, 32));
    assert_eq!(attention_key(&ctx, 72).unwrap(), scalar(72, 32));
    // GGUFQ_ATTN_COOP=0, or an adapter without cooperative matrices: the f32 tiles.
    ctx.tune.attn_coop = false;
    assert_eq!(attention_key(&ctx, 128).unwrap(), scalar(128, 32));
    ctx.tune.attn_coop = true;
    ctx.facts.coop_matrix = false;
    assert_eq!(attention_key(&ctx, 64).unwrap(), scalar(64, 32));
}

/// The f32 tiled kernel through the stand-alone runner matches the CPU reference on the
/// self-check's case (3 sequences, tiles holding several of them, earlier cache entries,
/// a partial tile) for both tile heights; the reference of a case with every position
/// moved by one (a wrong causal mask) is far outside the tolerance.
#[test]
fn attention_runner_f32_tiles_match_cpu_reference() {
    let Some(ctx) = context() else { return };
    for hd in [64u32, 128] {
        let case = AttnCase::mixed(hd);
        let data = case.data(5 + hd as u64);
        let want = attention_reference(&case, &data);
        for qt in [16u32, 32] {
            let (q, kb) = attention_tile(hd, ctx.facts.shared_mem, qt).unwrap();
            let got = run_attention(
                &ctx,
                &KernelKey::Attention { hd, qt: q, kb },
                q,
                &case,
                &data,
            )
            .unwrap();
            let e = rel(&got, &want);
            assert!(e < ATTN_TOL / 10.0, "hd {hd} qt {qt}: {e:.2e}");
        }
        let mut shifted = case.clone();
        shifted.tokens.iter_mut().for_each(|t| t.1 += 1);
        let off = attention_reference(&shifted, &data);
        let e = rel(&off, &want);
        assert!(e > 10.0 * ATTN_TOL, "hd {hd}: shifted mask only {e:.2e}");
    }
    // Inputs that do not match the case: an error.
    let case = AttnCase::mixed(64);
    let mut data = case.data(1);
    data.q.pop();
    let (q, kb) = attention_tile(64, ctx.facts.shared_mem, 32).unwrap();
    assert!(run_attention(
        &ctx,
        &KernelKey::Attention { hd: 64, qt: q, kb },
        q,
        &case,
        &data
    )
    .is_err());
}
