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

/// Rows `row0 .. row0 + rows` of a matrix on the GPU: bytes `offset .. offset + size` of a
/// storage buffer (the whole buffer, or a range of a pooled one: [`WeightPool`]); clones
/// share the buffer. Bind it with [`Chunk::binding`].
#[derive(Clone)]
pub struct Chunk {
    /// The storage buffer.
    pub buf: wgpu::Buffer,
    /// Byte offset of the chunk in `buf` (a multiple of the adapter's storage-buffer offset
    /// alignment; 0 for a buffer of its own).
    pub offset: u64,
    /// Bytes of the chunk (a multiple of 4).
    pub size: u64,
    /// First row.
    pub row0: u32,
    /// Number of rows.
    pub rows: u32,
    /// Word offset of separated scales.
    pub d_off: u32,
}

impl Chunk {
    /// The chunk's range of its buffer as a binding (what the kernels index from word 0).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

/// Placement of chunks in pooled buffers: each chunk at the next offset aligned to `align`
/// in the current block of `cap` bytes, a new block when it does not fit; chunks larger
/// than `cap` get a block of their own. Pure bookkeeping (no GPU), so it can be tested.
#[derive(Clone, Debug)]
pub struct PoolLayout {
    /// Bytes per block.
    pub cap: u64,
    /// Offset alignment (a power of two ≥ 4).
    pub align: u64,
    /// Blocks opened so far.
    pub blocks: usize,
    /// Bytes used in the current block (None before the first chunk).
    used: Option<u64>,
}

/// Where [`PoolLayout::place`] put a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the current block at this offset; `new_block`: the block was opened for it.
    Shared { offset: u64, new_block: bool },
    /// Larger than a block: a buffer of its own.
    Own,
}

impl PoolLayout {
    /// A layout of blocks of `cap` bytes with offsets aligned to `align` (rounded up to a
    /// power of two ≥ 4).
    pub fn new(cap: u64, align: u64) -> PoolLayout {
        PoolLayout {
            cap: cap.max(4),
            align: align.max(4).next_power_of_two(),
            blocks: 0,
            used: None,
        }
    }

    /// Place a chunk of `len` bytes.
    pub fn place(&mut self, len: u64) -> Placement {
        if len > self.cap {
            // A buffer of its own; the current block stays open.
            self.blocks += 1;
            return Placement::Own;
        }
        if let Some(used) = self.used {
            let off = used.div_ceil(self.align) * self.align;
            if off + len <= self.cap {
                self.used = Some(off + len);
                return Placement::Shared {
                    offset: off,
                    new_block: false,
                };
            }
        }
        self.blocks += 1;
        self.used = Some(len);
        Placement::Shared {
            offset: 0,
            new_block: true,
        }
    }

    /// Bytes used in the current block.
    pub fn used(&self) -> u64 {
        self.used.unwrap_or(0)
    }
}

/// Weight chunks sub-allocated in a few large storage buffers ([`super::kernels::Tune`]'s
/// `weight_pool`): a submit then tracks those few buffers instead of one per chunk.
/// Each block is written while mapped at creation; [`WeightPool::finish`] unmaps the last
/// one and moves it into a buffer of its used size.
pub struct WeightPool {
    layout: PoolLayout,
    cur: Option<wgpu::Buffer>,
    /// Storage buffers holding weights (blocks and own buffers).
    pub buffers: usize,
}

impl WeightPool {
    /// A pool of blocks of `bytes` (at most the largest buffer; a block may exceed the
    /// binding limit, each chunk within it does not) on `ctx`'s device.
    pub fn new(ctx: &GpuContext, bytes: u64) -> WeightPool {
        let cap = bytes.min(ctx.facts.max_buffer).max(256);
        // At least 256 bytes: whole cache lines and sectors for the kernels' loads.
        let align = (ctx.device.limits().min_storage_buffer_offset_alignment as u64)
            .max(ctx.tune.pool_align);
        WeightPool {
            layout: PoolLayout::new(cap, align),
            cur: None,
            buffers: 0,
        }
    }

    /// Upload `words` into the pool: (buffer, byte offset).
    fn put(&mut self, ctx: &GpuContext, label: &str, words: &[u32]) -> Result<(wgpu::Buffer, u64)> {
        let bytes: &[u8] = bytemuck::cast_slice(words);
        let len = bytes.len() as u64;
        match self.layout.place(len) {
            Placement::Own => {
                self.buffers += 1;
                let buf = ctx
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(label),
                        contents: bytes,
                        usage: wgpu::BufferUsages::STORAGE,
                    });
                Ok((buf, 0))
            }
            Placement::Shared { offset, new_block } => {
                let buf = match (new_block, self.cur.take()) {
                    (false, Some(b)) => b,
                    (_, old) => {
                        if let Some(o) = old {
                            o.unmap();
                        }
                        self.buffers += 1;
                        ctx.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("weight pool"),
                            size: self.layout.cap,
                            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                            mapped_at_creation: true,
                        })
                    }
                };
                buf.slice(offset..offset + len)
                    .get_mapped_range_mut()
                    .map_err(|e| Error::msg(format!("{label}: weight pool view: {e:?}")))?
                    .copy_from_slice(bytes);
                self.cur = Some(buf.clone());
                Ok((buf, offset))
            }
        }
    }

    /// Unmap the last block and move it into a buffer of its used size (re-pointing its
    /// chunks among `chunks`), so the pool wastes no memory beyond alignment.
    pub fn finish<'a>(mut self, ctx: &GpuContext, chunks: impl Iterator<Item = &'a mut Chunk>) {
        let Some(last) = self.cur.take() else {
            return;
        };
        last.unmap();
        let used = self.layout.used().div_ceil(4) * 4;
        if used >= self.layout.cap {
            return;
        }
        let small = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weight pool"),
            size: used.max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&last, 0, &small, 0, used);
        ctx.queue.submit(Some(enc.finish()));
        for c in chunks.filter(|c| c.buf == last) {
            c.buf = small.clone();
        }
    }
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

/// Upload a `rows` × `cols` matrix of `ty` (data = its file bytes), splitting by rows,
/// each chunk in a buffer of its own.
pub fn upload_matrix(
    ctx: &GpuContext,
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
) -> Result<GpuMatrix> {
    upload_matrix_in(ctx, None, name, ty, rows, cols, data)
}

/// [`upload_matrix`], with the chunks sub-allocated in `pool` when given.
pub fn upload_matrix_in(
    ctx: &GpuContext,
    mut pool: Option<&mut WeightPool>,
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
        let (buf, offset) = match pool.as_deref_mut() {
            Some(p) => p.put(ctx, name, &words)?,
            None => (
                ctx.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(name),
                        contents: bytemuck::cast_slice(&words),
                        usage: wgpu::BufferUsages::STORAGE,
                    }),
                0,
            ),
        };
        gpu_bytes += (words.len() * 4) as u64;
        chunks.push(Chunk {
            buf,
            offset,
            size: (words.len() * 4) as u64,
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

/// A KV-cache buffer holding `data` as the attention kernels read it
/// ([`super::kernels::kv_value_bytes`]): f16 halves two per word, or f32 values with
/// [`Tune::kv_f32`](super::kernels::Tune::kv_f32). `data` should hold f16 values (the cache
/// stores them rounded); tests and the self-check upload their K and V through it.
pub fn kv_buffer(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    if ctx.tune.kv_f32 {
        return f32_buffer(ctx, label, data);
    }
    let mut halves: Vec<u16> = data
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    halves.resize(halves.len().div_ceil(2).max(1) * 2, 0);
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&halves),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
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

/// Two host-writable buffers that one-token forwards upload their embedding row and token
/// table through ([`super::kernels::Tune`]'s `upload_ring`): the call writes slot `next`
/// while it is mapped, unmaps it, and its command buffer copies it to the scratch buffers;
/// the other slot is mapped again while the GPU runs, so it is ready for the next call.
pub(crate) struct UploadRing {
    /// The buffers (MAP_WRITE | COPY_SRC).
    pub bufs: [wgpu::Buffer; 2],
    mapped: [std::sync::Arc<std::sync::atomic::AtomicBool>; 2],
    requested: [bool; 2],
    /// The slot the next call writes.
    pub next: usize,
}

impl UploadRing {
    /// Two buffers of `bytes` bytes (a multiple of 4), not yet mapped.
    pub fn new(ctx: &GpuContext, bytes: u64) -> UploadRing {
        let mk = || {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload ring"),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        UploadRing {
            bufs: [mk(), mk()],
            mapped: Default::default(),
            requested: [false; 2],
            next: 0,
        }
    }

    /// Ask for slot `s` to be mapped for writing (the callback runs in a later poll).
    pub fn request(&mut self, s: usize) {
        use std::sync::atomic::Ordering;
        if self.requested[s] {
            return;
        }
        self.mapped[s].store(false, Ordering::Release);
        let flag = self.mapped[s].clone();
        self.bufs[s]
            .slice(..)
            .map_async(wgpu::MapMode::Write, move |r| {
                if r.is_ok() {
                    flag.store(true, Ordering::Release);
                }
            });
        self.requested[s] = true;
    }

    /// Write `bytes` (the buffer's size) into slot `s`, waiting for its mapping if needed,
    /// and unmap it for the command buffer that copies it.
    pub fn write(&mut self, ctx: &GpuContext, s: usize, bytes: &[u8]) -> Result<()> {
        use std::sync::atomic::Ordering;
        self.request(s);
        if !self.mapped[s].load(Ordering::Acquire) {
            ctx.wait_for(&self.mapped[s])?;
        }
        self.requested[s] = false;
        if !self.mapped[s].load(Ordering::Acquire) {
            return Err(Error::msg("GPU upload buffer could not be mapped"));
        }
        self.mapped[s].store(false, Ordering::Release);
        let buf = &self.bufs[s];
        buf.slice(..)
            .get_mapped_range_mut()
            .map_err(|e| Error::msg(format!("GPU upload view: {e:?}")))?
            .copy_from_slice(bytes);
        buf.unmap();
        Ok(())
    }
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
    fn pool_offsets_are_aligned_disjoint_and_within_blocks() {
        // SplitMix64 sizes from 4 bytes to past a block, several alignments.
        let mut z = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        for align in [4u64, 16, 64, 256] {
            let cap = 10_000u64;
            let mut lay = PoolLayout::new(cap, align);
            // (block, start, end) of every shared placement.
            let mut ranges: Vec<(usize, u64, u64)> = Vec::new();
            let mut own = 0;
            for _ in 0..500 {
                // Mostly chunks of up to 4000 bytes, one in 50 larger than a block.
                let len = if next() % 50 == 0 {
                    cap + 4 * (1 + next() % 100)
                } else {
                    4 * (1 + next() % 1000)
                };
                match lay.place(len) {
                    Placement::Own => {
                        assert!(len > cap, "{len} bytes fit a block");
                        own += 1;
                    }
                    Placement::Shared { offset, new_block } => {
                        assert_eq!(offset % align, 0, "offset {offset} not aligned to {align}");
                        assert!(offset + len <= cap);
                        assert_eq!(new_block, offset == 0);
                        ranges.push((lay.blocks, offset, offset + len));
                    }
                }
            }
            assert!(own > 0 && ranges.len() > 100);
            for (i, a) in ranges.iter().enumerate() {
                for b in &ranges[i + 1..] {
                    assert!(
                        a.0 != b.0 || a.2 <= b.1 || b.2 <= a.1,
                        "{a:?} overlaps {b:?}"
                    );
                }
            }
            // Blocks are filled: a new block only when the chunk did not fit the last one.
            assert!(lay.blocks - own < ranges.len() / 2, "{} blocks", lay.blocks);
        }
        assert_eq!(PoolLayout::new(100, 48).align, 64);
    }

    #[test]
    fn chunk_rows_are_even_and_fit() {
        let lay = layout(GgmlType::from_name("Q6_K").unwrap()).unwrap();
        let r = rows_per_chunk(&lay, 4096, 1 << 20);
        assert_eq!(r % 2, 0);
        assert!((r as u64) * 16 * 210 <= 1 << 20);
    }
}
