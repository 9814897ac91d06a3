//! The cooperative-matrix (tensor core) prompt kernel's assembly: tile shapes per type and the
//! generated WGSL for every type. lavapipe has no cooperative matrices, so this checks the
//! text the engine would compile (no placeholders left, the accumulators of the tile shape,
//! the tile the dispatch uses) and validates it with naga, wgpu's WGSL front end; its
//! numerics are checked on an H100 by `ggufq bench --kernels` (docs/BENCHMARKS.md).
#![cfg(feature = "gpu")]

use ggufq::gpu::kernels::{matmat_tile, matmat_tolerance, KernelKey, Kernels};
use ggufq::gpu::{DeviceOptions, GpuContext};
use ggufq::quant::GgmlType;

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

fn context() -> Option<GpuContext> {
    gpu_fixture::device(&DeviceOptions::default())
}

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

#[test]
fn coop_matmat_source_and_tiles_every_type() {
    let Some(mut ctx) = context() else { return };
    // Without cooperative matrices: the f32 64×64 tile kernel.
    ctx.facts.coop_matrix = false;
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap().id();
        assert_eq!(matmat_tile(&ctx, ty), (64, 64), "{name}");
        let src = Kernels::source(&ctx, &KernelKey::MatMat { ty }).unwrap();
        assert!(!src.contains("coop"), "{name}: f32 kernel uses coop");
    }
    assert!(matmat_tolerance(&ctx) <= 1e-4);
    // With them (as on an H100): per-type tiles, and every forced shape for every type.
    ctx.facts.coop_matrix = true;
    for (prefetch, (bm, bn, ku)) in [true, false].into_iter().flat_map(|pf| {
        [
            (0u32, 0u32, 0u32),
            (64, 64, 1),
            (128, 64, 1),
            (64, 128, 2),
            (128, 128, 2),
            (128, 128, 1),
        ]
        .map(move |t| (pf, t))
    }) {
        ctx.tune.coop_prefetch = prefetch;
        // Double buffers (GGUFQ_COOP_DB=1) where they fit (the H100's 48 KiB: 64 × 128 and
        // 128 × 64 with one unit per stage); lavapipe reports its own limit, so take the H100's.
        ctx.facts.shared_mem = 48 * 1024;
        ctx.tune.coop_db = true;
        // Raw K-quant loaders with the first half of the shapes, dequantize-after without.
        ctx.tune.coop_raw = bm <= 64 || bn == 64;
        ctx.tune.coop_bm = bm;
        ctx.tune.coop_bn = bn;
        ctx.tune.coop_ku = ku;
        for name in TYPES {
            let ty = GgmlType::from_name(name).unwrap().id();
            let tile = ctx.tune.coop_tile(ty);
            let or = |v: u32, d: u32| if v != 0 { v } else { d };
            let want = (or(bm, 64), or(bn, 128), or(ku, 1));
            assert_eq!((tile.bm, tile.bn, tile.ku), want, "{name} {bm} {bn} {ku}");
            assert_eq!(matmat_tile(&ctx, ty), (tile.bm, tile.bn), "{name}");
            // 48 KiB is the workgroup memory of the H100's Vulkan driver.
            assert!(tile.shared_bytes() <= 48 * 1024, "{tile:?}");
            // 8 subgroups cover the tile exactly.
            let (wr, wt) = tile.subgroup_tile();
            assert_eq!((tile.bm / wr) * (tile.bn / wt), 8, "{tile:?}");
            let src = Kernels::source(&ctx, &KernelKey::MatMat { ty }).unwrap();
            assert!(!src.contains('$'), "{name}: placeholder left in\n{src}");
            assert!(src.contains("enable wgpu_cooperative_matrix;"), "{name}");
            assert!(
                src.contains(&format!("const BM: u32 = {}u;", tile.bm)),
                "{name}"
            );
            assert!(
                src.contains(&format!("const BN: u32 = {}u;", tile.bn)),
                "{name}"
            );
            assert!(
                src.contains(&format!("const KU: u32 = {}u;", tile.ku)),
                "{name}"
            );
            let acc = tile.accumulators() as usize;
            assert_eq!(acc, (wr / 16 * (wt / 16)) as usize);
            assert_eq!(src.matches("coopMultiplyAdd(").count(), acc, "{name}");
            assert_eq!(src.matches("coopStore(").count(), acc, "{name}");
            assert!(src.contains("fn deq4("), "{name}");
            // Prefetch: per weight item a register (raw words for Q4_0 / Q8_0), per input
            // item one, each reloaded once per stage; without it the session-4 stage loops.
            let (nw, nx) = (
                (tile.bm * tile.ku / 32) as usize,
                (tile.bn * tile.ku / 32) as usize,
            );
            let raw = matches!(name, "Q4_0" | "Q8_0")
                || (ctx.tune.coop_raw && matches!(name, "Q2_K" | "Q4_K" | "Q6_K"));
            let nbuf = tile.stage_buffers(&ctx.tune, ctx.facts.shared_mem);
            assert!(tile.shared_bytes_with(nbuf) <= ctx.facts.shared_mem.max(48 * 1024));
            assert!(
                src.contains(&format!("const NBUF: u32 = {nbuf}u;")),
                "{name}"
            );
            let fits2 = tile.shared_bytes_with(2) <= 48 * 1024;
            assert_eq!(nbuf, if prefetch && fits2 { 2 } else { 1 }, "{tile:?}");
            if (bm, bn, ku) == (0, 0, 0) {
                assert_eq!(nbuf, if prefetch { 2 } else { 1 }, "default tile");
                let mut off = ctx.tune;
                off.coop_db = false;
                assert_eq!(
                    tile.stage_buffers(&off, 48 * 1024),
                    1,
                    "GGUFQ_COOP_DB unset"
                );
            }
            if prefetch {
                assert_eq!(src.matches("= x_load(").count(), 2 * nx, "{name}");
                assert_eq!(src.matches("x_store(").count(), nx + 1, "{name}");
                assert_eq!(
                    src.matches("= wraw(").count(),
                    if raw { 2 * nw } else { 0 },
                    "{name}"
                );
                assert_eq!(
                    src.matches("= wdeq(").count(),
                    if raw { 0 } else { 2 * nw },
                    "{name}"
                );
                assert!(!src.contains("for (var h = 0u;"), "{name}");
            } else {
                assert!(!src.contains("= wraw("), "{name}");
                assert_eq!(src.matches("for (var h = 0u;").count(), 2, "{name}");
            }
            gpu_fixture::validate_wgsl(&src, &format!("{name} {tile:?} prefetch {prefetch}"));
        }
    }
    assert!(matmat_tolerance(&ctx) > 1e-4);
}
