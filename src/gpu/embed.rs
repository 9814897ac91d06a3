//! Embedding look-up on the GPU (`shaders/embed.wgsl`): a prompt's token ids are uploaded and
//! the rows of the token-embedding matrix are dequantized by the same `deq4` functions the
//! matrix kernels use, instead of being dequantized on the CPU and uploaded as f32 rows
//! (8 MB for a 512-token 7B prompt). [`GpuModel`](super::GpuModel) records one
//! [`KernelKey::Embed`] dispatch per chunk of the matrix at the start of prompt calls
//! ([`Tune::gpu_embd`](super::kernels::Tune::gpu_embd)).

use crate::error::{Error, Result};
use crate::quant::GgmlType;

use super::buffers::{bind_buffers, scratch, uniform, upload_matrix, Chunk};
use super::device::GpuContext;
use super::kernels::{buffer_layouts, KernelKey, Kernels};

/// Parameters of the look-up of `n_tok` tokens from chunk `ch` of a matrix with rows of `d`
/// values (a multiple of 32).
pub fn params(ch: &Chunk, d: usize, n_tok: u32) -> [u32; 12] {
    [
        ch.rows,
        (d / 32) as u32,
        ch.d_off,
        n_tok,
        ch.row0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// Workgroups of that look-up: 256 groups of 4 values per workgroup, one row of them per token.
pub fn workgroups(d: usize, n_tok: u32) -> (u32, u32) {
    (((d / 4) as u32).div_ceil(256), n_tok)
}

/// Rows `ids` of a `rows` × `cols` matrix of `ty` (`data`: its file bytes), looked up and
/// dequantized on the GPU as the model's prompt calls do (tests and diagnostics). The matrix
/// is split into chunks under `ctx.max_binding` as the model uploads it.
pub fn lookup_rows(
    ctx: &GpuContext,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    ids: &[u32],
) -> Result<Vec<f32>> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
        return Err(Error::msg(format!(
            "embedding look-up: token id {bad} is outside the {rows} rows"
        )));
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let m = upload_matrix(ctx, "embedding", ty, rows, cols, data)?;
    let (bgl, layout) = buffer_layouts(ctx, "embed", b"rrwu");
    let mut kernels = Kernels::default();
    let pipe = kernels.get_with_layout(ctx, &KernelKey::Embed { ty: ty.id() }, &layout)?;
    let idb = {
        use wgpu::util::DeviceExt;
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("token ids"),
                contents: bytemuck::cast_slice(ids),
                usage: wgpu::BufferUsages::STORAGE,
            })
    };
    let out = scratch(ctx, "embeddings", ids.len() * cols);
    let n = ids.len() as u32;
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let groups: Vec<wgpu::BindGroup> = m
        .chunks
        .iter()
        .map(|ch| {
            let ub = uniform(ctx, &params(ch, cols, n));
            bind_buffers(ctx, &bgl, &[(0, &ch.buf), (1, &idb), (2, &out), (3, &ub)])
        })
        .collect();
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipe);
        for bg in &groups {
            pass.set_bind_group(0, bg, &[]);
            let (gx, gy) = workgroups(cols, n);
            pass.dispatch_workgroups(gx, gy, 1);
        }
    }
    ctx.queue.submit(Some(enc.finish()));
    ctx.read_f32(&out, 0, ids.len() * cols)
}
