//! The cooperative-matrix (tensor core) prompt kernel's assembly: tile sizes per type and the
//! generated WGSL for every type. lavapipe has no cooperative matrices, so this checks the
//! text the engine would compile (no placeholders left, one 16×16 accumulator pair per 64
//! rows, the tile the dispatch uses) without compiling it; its numerics were checked on an
//! H100 with `ggufq bench --kernels` (docs/BENCHMARKS.md, session 3).
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
    // With them (as on an H100): per-type tiles, and a forced size for every type.
    ctx.facts.coop_matrix = true;
    for bm in [0u32, 64, 128] {
        ctx.tune.coop_bm = bm;
        for name in TYPES {
            let ty = GgmlType::from_name(name).unwrap().id();
            let (rows, toks) = matmat_tile(&ctx, ty);
            let legacy = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"].contains(&name);
            let want = if bm != 0 {
                bm
            } else if legacy {
                128
            } else {
                64
            };
            assert_eq!((rows, toks), (want, 64), "{name} bm {bm}");
            let src = Kernels::source(&ctx, &KernelKey::MatMat { ty }).unwrap();
            assert!(!src.contains('$'), "{name}: placeholder left in\n{src}");
            assert!(src.contains("enable wgpu_cooperative_matrix;"), "{name}");
            assert!(src.contains(&format!("const BM: u32 = {rows}u;")), "{name}");
            let acc = (rows / 64) as usize * 2;
            assert_eq!(src.matches("coopMultiplyAdd(").count(), acc, "{name}");
            assert_eq!(src.matches("coopStore(").count(), acc, "{name}");
            assert!(src.contains("fn deq4("), "{name}");
        }
    }
    assert!(matmat_tolerance(&ctx) > 1e-4);
}
