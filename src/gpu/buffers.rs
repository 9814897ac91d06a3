//! Weight upload: repacking of blocks whose size is not a multiple of 4 bytes and splitting of
//! matrices larger than the adapter's storage-binding limit into row chunks.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

use super::device::GpuContext;
use super::kernels::{layout, GpuLayout};

/// A repacked weight chunk in host memory: block bodies (4-byte words) followed by the
/// separated f16 scales (two per word), if the type has them.
#[derive(Clone, Debug, PartialEq)]
pub struct Repacked {
    /// The words to upload.
    pub words: Vec<u32>,
    /// Word offset of the separated f16 scales (== body length when there are none).
    pub d_off: u32,
}

/// Repack `n_blocks` consecutive blocks of `ty` (`data` holds exactly their bytes).
pub fn repack(ty: GgmlType, data: &[u8]) -> Result<Repacked> {
    let lay = layout(ty)?;
    if data.len() % lay.block_bytes != 0 {
        return Err(Error::msg(format!(
            "{} data of {} bytes is not a whole number of {}-byte blocks",
            ty.name(),
            data.len(),
            lay.block_bytes
        )));
    }
    let n_blocks = data.len() / lay.block_bytes;
    let body_len = n_blocks * lay.body_words;
    let d_words = if lay.d_at.is_some() {
        n_blocks.div_ceil(2)
    } else {
        0
    };
    let mut words = vec![0u32; body_len + d_words];
    match lay.d_at {
        None => {
            for (w, c) in words.iter_mut().zip(data.chunks_exact(4)) {
                *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Some(at) => {
            let (body, ds) = words.split_at_mut(body_len);
            for (b, blk) in data.chunks_exact(lay.block_bytes).enumerate() {
                let d = u16::from_le_bytes([blk[at], blk[at + 1]]) as u32;
                ds[b / 2] |= d << (16 * (b % 2));
                let rest = blk[..at].iter().chain(blk[at + 2..].iter());
                let dst = &mut body[b * lay.body_words..(b + 1) * lay.body_words];
                let mut tmp = [0u8; 4];
                for (i, byte) in rest.enumerate() {
                    tmp[i % 4] = *byte;
                    if i % 4 == 3 {
                        dst[i / 4] = u32::from_le_bytes(tmp);
                    }
                }
            }
        }
    }
    Ok(Repacked {
        words,
        d_off: body_len as u32,
    })
}

/// One GPU buffer holding rows `row0 .. row0 + rows` of a matrix (clones share the buffer).
#[derive(Clone)]
pub struct Chunk {
    /// The storage buffer.
    pub buf: wgpu::Buffer,
    /// First row.
    pub row0: u32,
    /// Number of rows.
    pub rows: u32,
    /// Word offset of separated scales.
    pub d_off: u32,
}

/// A weight matrix on the GPU (`rows` × `cols`, ggml row-major), possibly split into chunks.
pub struct GpuMatrix {
    /// Tensor name (for errors).
    pub name: String,
    /// Weight type.
    pub ty: GgmlType,
    /// Output rows.
    pub rows: usize,
    /// Row length (input features).
    pub cols: usize,
    /// Row chunks, each within the binding limit.
    pub chunks: Vec<Chunk>,
    /// Bytes on the GPU.
    pub gpu_bytes: u64,
    /// Bytes of the weights as stored in the file (what one mat-vec must read).
    pub file_bytes: u64,
}

/// Rows per chunk for a matrix of `ty` with `cols` columns under a binding limit (even, ≥ 2).
pub fn rows_per_chunk(lay: &GpuLayout, cols: usize, max_binding: u64) -> usize {
    let blocks = cols / lay.block_elems;
    let per_row = (blocks * (lay.body_words * 4 + if lay.d_at.is_some() { 2 } else { 0 })) as u64;
    let r = ((max_binding.saturating_sub(32)) / per_row.max(1)) as usize;
    (r & !1).max(2)
}

/// Upload a `rows` × `cols` matrix of `ty` (data = its file bytes), splitting by rows.
pub fn upload_matrix(
    ctx: &GpuContext,
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
) -> Result<GpuMatrix> {
    let lay = layout(ty)?;
    let terr = |msg: String| Error::Tensor {
        tensor: name.to_string(),
        msg,
    };
    if cols % lay.block_elems != 0 || cols % 32 != 0 {
        return Err(terr(format!(
            "row length {cols} is not a multiple of the {}-weight {} block (and of 32)",
            lay.block_elems,
            ty.name()
        )));
    }
    let row_bytes = cols / lay.block_elems * lay.block_bytes;
    if data.len() != rows * row_bytes {
        return Err(terr(format!(
            "has {} bytes, expected {} for {rows}×{cols} {}",
            data.len(),
            rows * row_bytes,
            ty.name()
        )));
    }
    let per = rows_per_chunk(&lay, cols, ctx.max_binding);
    let mut chunks = Vec::new();
    let mut gpu_bytes = 0u64;
    let mut row0 = 0usize;
    while row0 < rows {
        let n = per.min(rows - row0);
        let rp = repack(ty, &data[row0 * row_bytes..(row0 + n) * row_bytes])?;
        let mut words = rp.words;
        // Whole 16-byte vectors, for kernels that bind the weights as `array<vec4<u32>>`
        // (`kernels::wide_weights`).
        words.resize(words.len().max(1).next_multiple_of(4), 0);
        let buf = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(name),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::STORAGE,
            });
        gpu_bytes += (words.len() * 4) as u64;
        chunks.push(Chunk {
            buf,
            row0: row0 as u32,
            rows: n as u32,
            d_off: rp.d_off,
        });
        row0 += n;
    }
    Ok(GpuMatrix {
        name: name.to_string(),
        ty,
        rows,
        cols,
        chunks,
        gpu_bytes,
        file_bytes: data.len() as u64,
    })
}

/// Create an f32 storage buffer from host data (COPY_SRC|COPY_DST too).
pub fn f32_buffer(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    let one = [0f32];
    let contents: &[f32] = if data.is_empty() { &one } else { data };
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(contents),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

/// Create a zeroed f32 scratch buffer of `n` elements.
pub fn scratch(ctx: &GpuContext, label: &str, n: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (n.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A uniform buffer holding `words` (kernel parameters).
pub fn uniform(ctx: &GpuContext, words: &[u32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::cast_slice(words),
            usage: wgpu::BufferUsages::UNIFORM,
        })
}

/// A bind group of whole buffers, each at its binding number.
pub fn bind_buffers(
    ctx: &GpuContext,
    layout: &wgpu::BindGroupLayout,
    buffers: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .map(|&(binding, b)| wgpu::BindGroupEntry {
            binding,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout,
        entries: &entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_q4_0_moves_scale_out() {
        let ty = GgmlType::from_name("Q4_0").unwrap();
        let mut data = vec![0u8; 36];
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
        let rp = repack(ty, &data).unwrap();
        assert_eq!(rp.d_off, 8);
        assert_eq!(rp.words.len(), 9);
        assert_eq!(rp.words[0], u32::from_le_bytes([2, 3, 4, 5]));
        assert_eq!(rp.words[4], u32::from_le_bytes([20, 21, 22, 23]));
        assert_eq!(rp.words[8], u32::from_le_bytes([0, 1, 18, 19]));
    }

    #[test]
    fn repack_q6_k_scale_at_end() {
        let ty = GgmlType::from_name("Q6_K").unwrap();
        let mut data = vec![0u8; 210];
        data[208] = 0xAB;
        data[209] = 0xCD;
        data[0] = 7;
        let rp = repack(ty, &data).unwrap();
        assert_eq!(rp.d_off, 52);
        assert_eq!(rp.words[0], 7);
        assert_eq!(rp.words[52], 0xCDAB);
    }

    #[test]
    fn repack_rejects_partial_block() {
        let ty = GgmlType::from_name("Q8_0").unwrap();
        assert!(repack(ty, &[0u8; 35]).is_err());
    }

    #[test]
    fn chunk_rows_are_even_and_fit() {
        let lay = layout(GgmlType::from_name("Q6_K").unwrap()).unwrap();
        let r = rows_per_chunk(&lay, 4096, 1 << 20);
        assert_eq!(r % 2, 0);
        assert!((r as u64) * 16 * 210 <= 1 << 20);
    }
}
