//! `ggufq bench --kernels --grid-sync` (src/gpu/gridsync.rs): a step boundary crossed by
//! dependent dispatches must show every word written before it (wgpu's barrier), and a grid
//! barrier of one workgroup is a plain workgroup barrier, so it must too. A corrupted check
//! (a word expected but not written) must count. Runs on lavapipe in CI; without an adapter
//! these fail unless GGUFQ_SKIP_GPU=1.
#![cfg(feature = "gpu")]

use ggufq::gpu::gridsync::{grid_sync_bench, grid_sync_run};

#[path = "common/gpu_fixture.rs"]
mod gpu_fixture;

#[test]
fn gpu_dependent_dispatches_see_every_word_and_one_workgroup_barriers_too() {
    let Some(ctx) = gpu_fixture::context() else {
        return;
    };
    // Several workgroups meet in a grid barrier only on a GPU (a CPU adapter's threads run
    // workgroups to their end); one workgroup everywhere.
    let cpu = ctx.facts.is_cpu();
    for wgs in [1u32, 2, 4] {
        let rows = grid_sync_bench(&ctx, wgs, 8, 1).unwrap();
        assert_eq!(rows.len(), if cpu && wgs > 1 { 1 } else { 3 }, "{rows:?}");
        let dispatch = rows
            .iter()
            .find(|r| r.kind == "dependent dispatches")
            .unwrap();
        assert_eq!(dispatch.stale, 0, "{wgs} workgroups: {rows:?}");
        assert!(dispatch.us_per_step > 0.0 && dispatch.us_per_step.is_finite());
        assert_eq!(dispatch.steps, 8);
        let atomic = rows.iter().find(|r| r.kind == "grid barrier, atomic reads");
        assert!(atomic.is_none_or(|r| r.stale == 0), "{rows:?}");
        if wgs == 1 {
            let grid = rows.iter().find(|r| r.kind == "grid barrier").unwrap();
            assert_eq!(grid.stale, 0, "{rows:?}");
        }
    }
    // Fault injection: checks that expect other values count every read of a pass (at
    // least: the warm-up passes count too).
    let rows = grid_sync_run(&ctx, 2, 8, 1, 5).unwrap();
    let dispatch = rows
        .iter()
        .find(|r| r.kind == "dependent dispatches")
        .unwrap();
    assert!(dispatch.stale >= 7 * 2 * 256, "{rows:?}");
    let rows = grid_sync_run(&ctx, 1, 8, 1, 5).unwrap();
    let atomic = rows
        .iter()
        .find(|r| r.kind == "grid barrier, atomic reads")
        .unwrap();
    assert!(atomic.stale >= 8 * 256, "{rows:?}");
    assert!(grid_sync_bench(&ctx, 0, 8, 1).is_err());
    assert!(grid_sync_bench(&ctx, 1, 0, 1).is_err());
}
