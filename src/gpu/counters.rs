//! Device-scope arrival counters for "last workgroup" epilogues: a kernel's workgroups each
//! write a partial result, `storageBarrier()` (a device-scope release/acquire fence in naga's
//! SPIR-V) and `atomicAdd` one counter; the workgroup that sees the count complete finishes
//! the job and stores 0 back, so the counters are zero between dispatches (wgpu zeroes new
//! buffers).

use super::device::GpuContext;

/// A storage buffer of `n` u32 counters (at least one), all zero.
pub fn counter_buffer(ctx: &GpuContext, label: &str, n: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (4 * n.max(1)) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}
