//! Greedy token choice on the GPU (`shaders/argmax.wgsl`): the last dispatch of each pass of
//! [`GpuModel::decode_greedy`](super::GpuModel::decode_greedy) picks the next token from the
//! logits and advances the position, so the next pass can be queued before the host has read
//! this one's logits. [`greedy_token`] is the same rule on the host.

use crate::error::{Error, Result};

use super::buffers::{bind_buffers, uniform};
use super::device::GpuContext;
use super::kernels::{buffer_layouts, KernelKey, Kernels};

pub use crate::model::greedy_token;

/// The argmax dispatch's bind group over `logits` (read), the token ids `tids` and the token
/// table `tinfo` (written: id 0 and position 0), for a vocabulary of `n_vocab`; compiles the
/// kernel into `kernels` if it is not there yet.
pub fn bind(
    ctx: &GpuContext,
    kernels: &mut Kernels,
    logits: &wgpu::Buffer,
    tids: &wgpu::Buffer,
    tinfo: &wgpu::Buffer,
    n_vocab: usize,
) -> Result<wgpu::BindGroup> {
    let (bgl, layout) = buffer_layouts(ctx, "argmax", b"rwwu");
    kernels.get_with_layout(ctx, &KernelKey::Argmax, &layout)?;
    let pb = uniform(ctx, &[n_vocab as u32, 0, 0, 0]);
    Ok(bind_buffers(
        ctx,
        &bgl,
        &[(0, logits), (1, tids), (2, tinfo), (3, &pb)],
    ))
}

/// Run the argmax kernel alone on `logits` with a token table at position `pos` (tests and
/// diagnostics): returns the id it chose and the position it left.
pub fn greedy_on_gpu(ctx: &GpuContext, logits: &[f32], pos: u32) -> Result<(u32, u32)> {
    if logits.is_empty() {
        return Err(Error::msg("greedy choice among no logits"));
    }
    use wgpu::util::DeviceExt;
    let init = |label, words: &[u8], extra| {
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: words,
                usage: wgpu::BufferUsages::STORAGE | extra,
            })
    };
    let lb = init(
        "logits",
        bytemuck::cast_slice(logits),
        wgpu::BufferUsages::empty(),
    );
    let tb = init(
        "token ids",
        bytemuck::cast_slice(&[7u32]),
        wgpu::BufferUsages::COPY_SRC,
    );
    let ib = init(
        "tokens",
        bytemuck::cast_slice(&[0u32, pos]),
        wgpu::BufferUsages::COPY_SRC,
    );
    let mut kernels = Kernels::default();
    let bg = bind(ctx, &mut kernels, &lb, &tb, &ib, logits.len())?;
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(kernels.cached(&KernelKey::Argmax)?);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    ctx.queue.submit(Some(enc.finish()));
    let id = ctx.read_f32(&tb, 0, 1)?[0].to_bits();
    let p = ctx.read_f32(&ib, 1, 1)?[0].to_bits();
    Ok((id, p))
}
