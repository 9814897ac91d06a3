//! Synchronisation inside one dispatch: what a step boundary costs when the workgroups of a
//! dispatch wait for each other on an atomic counter (a grid barrier) instead of the next
//! dependent dispatch, and whether the values written before it are seen after it.
//! `ggufq bench --kernels --grid-sync` (docs/gpu.md).

use crate::error::{Error, Result};

use super::buffers::{bind_buffers, uniform};
use super::device::GpuContext;

/// Parameters and buffers of both kernels.
const HEADER: &str = r#"
struct P { n: u32, k: u32, s: u32, skew: u32 }
@group(0) @binding(0) var<storage, read_write> ctr: array<atomic<u32>, 4>;
@group(0) @binding(1) var<storage, read_write> buf: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
"#;

/// The grid-barrier kernel: `P.k` steps; in each, thread 0 of every workgroup writes one
/// word of the step's half of `buf`, the workgroups meet on `ctr[0]`, and every thread reads
/// another workgroup's word of that step (a mismatch counts on `ctr[2]`). The halves
/// alternate, so a read after the barrier hits a word read two steps before (a stale cache
/// line would show). The last workgroup out resets the counters.
const BARRIER_WGSL: &str = r#"
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let n = p.n;
    let w = wg.x;
    for (var s = 0u; s < p.k; s++) {
        let base = (s & 1u) * n;
        if (t == 0u) {
            buf[base + w] = s * n + w + 1u;
        }
        storageBarrier();
        if (t == 0u) {
            atomicAdd(&ctr[0], 1u);
            let goal = (s + 1u) * n;
            loop {
                if (atomicLoad(&ctr[0]) >= goal) {
                    break;
                }
            }
        }
        storageBarrier();
        let o = (w + t) % n;
        if (buf[base + o] != s * n + o + 1u + p.skew) {
            atomicAdd(&ctr[2], 1u);
        }
    }
    if (t == 0u) {
        if (atomicAdd(&ctr[1], 1u) == n - 1u) {
            atomicStore(&ctr[0], 0u);
            atomicStore(&ctr[1], 0u);
        }
    }
}
"#;

/// The same steps as dependent dispatches: dispatch `P.s` checks the words of step s − 1
/// and writes those of step s.
const DISPATCH_WGSL: &str = r#"
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let n = p.n;
    let w = wg.x;
    let s = p.s;
    if (s > 0u) {
        let base = ((s - 1u) & 1u) * n;
        let o = (w + t) % n;
        if (buf[base + o] != (s - 1u) * n + o + 1u + p.skew) {
            atomicAdd(&ctr[2], 1u);
        }
    }
    workgroupBarrier();
    if (t == 0u) {
        buf[(s & 1u) * n + w] = s * n + w + 1u;
    }
}
"#;

/// One measured way of crossing `steps` step boundaries with `workgroups` workgroups.
#[derive(Debug, Clone)]
pub struct SyncRow {
    /// "grid barrier", "grid barrier, atomic reads" or "dependent dispatches".
    pub kind: &'static str,
    /// Workgroups of 256 threads.
    pub workgroups: u32,
    /// Step boundaries in the pass.
    pub steps: u32,
    /// GPU µs per step (median pass / steps).
    pub us_per_step: f64,
    /// Reads that did not see the word written before the boundary (must be 0).
    pub stale: u32,
}

/// Time `steps` step boundaries crossed by a grid barrier in one dispatch (plain and atomic
/// reads), and by `steps` dependent dispatches, with `workgroups` workgroups (at most what
/// the adapter keeps resident at once: a grid barrier over more never completes; on a CPU
/// adapter only one workgroup gets the grid barriers). Median of `reps` passes.
pub fn grid_sync_bench(
    ctx: &GpuContext,
    workgroups: u32,
    steps: u32,
    reps: usize,
) -> Result<Vec<SyncRow>> {
    grid_sync_run(ctx, workgroups, steps, reps, 0)
}

/// [`grid_sync_bench`] whose checks expect every word `skew` higher than written (tests:
/// with `skew` > 0 every read must count as stale).
pub fn grid_sync_run(
    ctx: &GpuContext,
    workgroups: u32,
    steps: u32,
    reps: usize,
    skew: u32,
) -> Result<Vec<SyncRow>> {
    if workgroups == 0 || steps == 0 {
        return Err(Error::msg("grid sync: workgroups and steps must be > 0"));
    }
    let (bgl, layout) = super::kernels::buffer_layouts(ctx, "gridsync", b"wwu");
    let ctr = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("gridsync ctr"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let buf = super::buffers::scratch(ctx, "gridsync buf", 2 * workgroups as usize);
    let mut rows = Vec::new();
    // The grid barrier once more with every access to `buf` atomic (a load at device scope
    // goes to L2, past a stale L1 line).
    let atomic = (
        HEADER.replace("buf: array<u32>", "buf: array<atomic<u32>>"),
        BARRIER_WGSL
            .replace(
                "buf[base + w] = s * n + w + 1u;",
                "atomicStore(&buf[base + w], s * n + w + 1u);",
            )
            .replace("buf[base + o] !=", "atomicLoad(&buf[base + o]) !="),
    );
    // A CPU adapter (lavapipe) runs workgroups on a few threads, each to its end: a grid
    // barrier over more workgroups than threads would wait for ones queued behind it.
    let grid = workgroups == 1 || !ctx.facts.is_cpu();
    let variants = [
        ("grid barrier", HEADER.to_string(), BARRIER_WGSL.to_string()),
        ("grid barrier, atomic reads", atomic.0, atomic.1),
        (
            "dependent dispatches",
            HEADER.to_string(),
            DISPATCH_WGSL.to_string(),
        ),
    ];
    for (kind, header, body) in variants
        .into_iter()
        .filter(|v| grid || v.0 == "dependent dispatches")
    {
        let pipe = pipeline(ctx, &layout, &format!("{header}{body}"))?;
        let dispatches: Vec<wgpu::BindGroup> = if kind != "dependent dispatches" {
            let ub = uniform(ctx, &[workgroups, steps, 0, skew]);
            vec![bind_buffers(ctx, &bgl, &[(0, &ctr), (1, &buf), (2, &ub)])]
        } else {
            (0..steps)
                .map(|s| {
                    let ub = uniform(ctx, &[workgroups, steps, s, skew]);
                    bind_buffers(ctx, &bgl, &[(0, &ctr), (1, &buf), (2, &ub)])
                })
                .collect()
        };
        ctx.queue.write_buffer(&ctr, 0, &[0u8; 16]);
        let secs = super::ops::time_pass_with(ctx, reps, |pass| {
            pass.set_pipeline(&pipe);
            for bg in &dispatches {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
            Ok(())
        })?;
        let words: Vec<u32> = ctx
            .read_f32(&ctr, 0, 4)?
            .iter()
            .map(|v| v.to_bits())
            .collect();
        ctx.queue.write_buffer(&ctr, 0, &[0u8; 16]);
        rows.push(SyncRow {
            kind,
            workgroups,
            steps,
            us_per_step: secs * 1e6 / steps as f64,
            stale: words.get(2).copied().unwrap_or(u32::MAX),
        });
    }
    Ok(rows)
}

fn pipeline(
    ctx: &GpuContext,
    layout: &wgpu::PipelineLayout,
    src: &str,
) -> Result<wgpu::ComputePipeline> {
    // Trusted: the kernels index `buf` below 2·n (its length) and `ctr` below 4; the spin
    // loop ends once every workgroup of the dispatch has arrived, which the caller
    // guarantees by dispatching no more workgroups than stay resident.
    super::kernels::compile_pipeline(ctx, layout, src.to_string(), true)
        .map_err(|e| Error::msg(format!("grid sync kernel failed to compile: {e}")))
}
