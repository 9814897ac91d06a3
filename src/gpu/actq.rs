//! Activation rounding on the GPU (`shaders/actq.wgsl`): before a quantized matrix reads its
//! input, the input is rounded to the values of the activation type ggml's CPU `vec_dot`
//! pairs with the weight type (Q8_0 / Q8_1 blocks before Q4_0 … Q5_1 and Q8_0, Q8_K before the
//! K-quants, f16 / bf16 before F16 / BF16), exactly as [`ActQuant::apply`] does in the CPU
//! backend. GPU and CPU then compute the same products up to f32 summation order, which makes
//! the GPU's perplexity match the CPU backend's (and llama.cpp's CPU numerics).
//!
//! The graph builder asks [`ActRounding::input_for`] for each matrix step; it records at most
//! one rounding per distinct (input buffer, activation type) while consecutive matrices read
//! the same input (the fused QKV and gate/up groups), into one scratch buffer per type.

use crate::error::{Error, Result};
use crate::model::cpu::ActQuant;
use crate::quant::GgmlType;

use super::buffers::{f32_buffer, scratch};
use super::device::GpuContext;
use super::kernels::{KernelKey, Kernels};

/// Values per workgroup of the rounding kernel (one row chunk of one token). A version with
/// 4096 values per workgroup (16 per thread, one barrier) was slower in decode on the H100
/// (64 roundings per token: 815 vs 529 µs, session 4).
pub const CHUNK: u32 = 256;

/// Kernel code of an activation rounding: 0 none (F32 weights), 1 f16, 2 bf16, 3 Q8_0 / Q8_1
/// blocks of 32 (both represent the same values), 4 Q8_K blocks of 256.
pub fn kind_of(act: ActQuant) -> u32 {
    match act {
        ActQuant::None => 0,
        ActQuant::F16 => 1,
        ActQuant::Bf16 => 2,
        ActQuant::Q8_0 | ActQuant::Q8_1 => 3,
        ActQuant::Q8K => 4,
    }
}

/// Kernel code of the rounding ggml's CPU applies before a matrix of weight type `ty`
/// (0 for types the CPU backend does not know, which the GPU rejects at upload anyway).
pub fn kind_for_weight(ty: GgmlType) -> u32 {
    ActQuant::for_weight(ty).map(kind_of).unwrap_or(0)
}

/// Uniform parameters of one rounding dispatch: `n_tok` rows of `k` values, row stride `ld`,
/// first value at `x_off` (all in f32 elements).
pub fn params(k: u32, ld: u32, x_off: u32, n_tok: u32, kind: u32) -> [u32; 12] {
    params_q8(k, ld, x_off, n_tok, kind, 0)
}

/// [`params`] with the packed int8 output of the Q8 kinds at word `q8_base` (0: none; see
/// [`q8_base`]), which the integer decode mat-vec reads.
pub fn params_q8(k: u32, ld: u32, x_off: u32, n_tok: u32, kind: u32, q8_base: u32) -> [u32; 12] {
    [k, ld, x_off, n_tok, kind, q8_base, 0, 0, 0, 0, 0, 0]
}

/// Where the packed int8 quants begin in a rounding output of `elems` f32 values (a multiple
/// of 64, so that quants and scales stay aligned): quants of value o at byte o of the words
/// from there, the per-32 scales at word `base + base / 4 + o / 32`.
pub fn q8_base(elems: usize) -> usize {
    elems.max(1).next_multiple_of(64)
}

/// 32-bit words of a rounding output of `elems` values with its packed region.
pub fn q8_words(elems: usize) -> usize {
    let e = q8_base(elems);
    e + e / 4 + e / 32
}

/// Workgroups of one rounding dispatch.
pub fn workgroups(k: u32, n_tok: u32) -> (u32, u32) {
    (k.div_ceil(CHUNK), n_tok)
}

/// A rounding the graph builder must record before a matrix step.
pub struct RoundingStep {
    /// Kernel code ([`kind_of`]).
    pub kind: u32,
    /// The buffer the rounded values go to (same layout as the input).
    pub out: wgpu::Buffer,
}

/// What a matrix step reads.
pub struct MatInput {
    /// The buffer to bind as the matrix input (the input itself or a rounded copy).
    pub buf: wgpu::Buffer,
    /// A rounding to record first, if the rounded copy is not already there.
    pub round: Option<RoundingStep>,
}

struct Rounded {
    kind: u32,
    input: wgpu::Buffer,
    last_only: bool,
    /// Steps recorded when this rounding was last known valid.
    valid_at: usize,
}

/// Scratch buffers and bookkeeping for the rounding steps of one model graph.
pub struct ActRounding {
    elems: usize,
    scratch: Vec<(u32, wgpu::Buffer)>,
    live: Vec<Rounded>,
    enabled: bool,
    /// Bytes of scratch allocated.
    pub bytes: u64,
}

impl ActRounding {
    /// Bookkeeping for inputs of at most `elems` f32 values (the largest activation buffer);
    /// `enabled: false` records no rounding (`Tune::act_round`, GGUFQ_ACTQ=0).
    pub fn new(elems: usize, enabled: bool) -> ActRounding {
        let elems = q8_base(elems);
        ActRounding {
            elems,
            scratch: Vec::new(),
            live: Vec::new(),
            enabled,
            bytes: 0,
        }
    }

    /// The input of a matrix step of weight type `ty` that reads `x` and writes `y`, with
    /// `n_steps` steps recorded before it. `last_only`: the step may read only the last
    /// token's row (the rounding then covers only that row too). Call once per recorded
    /// matrix step (every chunk), in recording order.
    pub fn input_for(
        &mut self,
        ctx: &GpuContext,
        ty: GgmlType,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        last_only: bool,
        n_steps: usize,
    ) -> MatInput {
        let kind = if self.enabled { kind_for_weight(ty) } else { 0 };
        // Roundings stay valid only while the steps since them are matrix steps reading
        // the same input (and not writing it).
        self.live
            .retain(|r| r.valid_at == n_steps && &r.input == x && x != y);
        if kind == 0 {
            for r in &mut self.live {
                r.valid_at = n_steps + 1;
            }
            return MatInput {
                buf: x.clone(),
                round: None,
            };
        }
        let out = self.scratch_for(ctx, kind);
        let reuse = self
            .live
            .iter()
            .any(|r| r.kind == kind && (!r.last_only || last_only));
        let extra = if reuse { 1 } else { 2 };
        for r in &mut self.live {
            r.valid_at = n_steps + extra;
        }
        if reuse {
            return MatInput {
                buf: out,
                round: None,
            };
        }
        self.live.retain(|r| r.kind != kind);
        if x == y {
            // The matrix overwrites its own input: nothing rounded stays valid after it.
            self.live.clear();
        } else {
            self.live.push(Rounded {
                kind,
                input: x.clone(),
                last_only,
                valid_at: n_steps + 2,
            });
        }
        MatInput {
            buf: out.clone(),
            round: Some(RoundingStep { kind, out }),
        }
    }

    /// The rounding [`input_for`](Self::input_for) just asked for is written by the step
    /// recorded before the matrix step (the batch RMSNorm, `KernelKey::NormRound`) instead
    /// of a rounding step of its own: one step fewer to count until the next matrix.
    pub fn made_by_previous_step(&mut self) {
        for r in &mut self.live {
            r.valid_at = r.valid_at.saturating_sub(1);
        }
    }

    /// Word where the packed int8 quants begin in every rounding output ([`q8_base`]).
    pub fn q8_base(&self) -> u32 {
        q8_base(self.elems) as u32
    }

    /// The scratch buffer that roundings of kind `kind` write (created on first use); the
    /// split decode attention's combine writes the wo input there.
    pub fn scratch_buf(&mut self, ctx: &GpuContext, kind: u32) -> wgpu::Buffer {
        self.scratch_for(ctx, kind)
    }

    fn scratch_for(&mut self, ctx: &GpuContext, kind: u32) -> wgpu::Buffer {
        if let Some((_, b)) = self.scratch.iter().find(|(k, _)| *k == kind) {
            return b.clone();
        }
        let b = scratch(ctx, "act_rounded", q8_words(self.elems));
        self.bytes += 4 * q8_words(self.elems) as u64;
        self.scratch.push((kind, b.clone()));
        b
    }
}

/// Round `x` (`n_tok` rows of `k` values) on the GPU as the CPU backend rounds the input of a
/// matrix of weight type `ty` (tests and diagnostics; the model records the same kernel in its
/// graph).
pub fn round_rows(ctx: &GpuContext, ty: GgmlType, x: &[f32], k: usize) -> Result<Vec<f32>> {
    check_rows(x, k)?;
    if kind_for_weight(ty) == 0 {
        return Ok(x.to_vec());
    }
    let words = round_rows_words(ctx, ty, x, k, false)?;
    Ok(words[..x.len()]
        .iter()
        .map(|w| f32::from_bits(*w))
        .collect())
}

/// [`round_rows`] with the packed int8 output the integer decode mat-vecs read: the whole
/// output as words (rounded values, then from [`q8_base`] of the input length the packed
/// quants and per-32 scales, [`q8_words`] in all). Errors for types without a Q8 rounding.
pub fn round_rows_packed(ctx: &GpuContext, ty: GgmlType, x: &[f32], k: usize) -> Result<Vec<u32>> {
    if !matches!(kind_for_weight(ty), 3 | 4) || k % 256 != 0 {
        return Err(Error::msg(format!(
            "packed activation rounding: {} has no Q8 rounding or rows of {k} are not whole 256-value blocks",
            ty.name()
        )));
    }
    round_rows_words(ctx, ty, x, k, true)
}

fn check_rows(x: &[f32], k: usize) -> Result<()> {
    if k == 0 || x.len() % k != 0 {
        return Err(Error::msg(format!(
            "activation rounding: {} values are not whole rows of {k}",
            x.len()
        )));
    }
    Ok(())
}

fn round_rows_words(
    ctx: &GpuContext,
    ty: GgmlType,
    x: &[f32],
    k: usize,
    packed: bool,
) -> Result<Vec<u32>> {
    check_rows(x, k)?;
    let kind = kind_for_weight(ty);
    let n_tok = x.len() / k;
    let (bgl, layout) = super::kernels::buffer_layouts(ctx, "actq", b"r-wu");
    let mut kernels = Kernels::default();
    let pipe = kernels.get_with_layout(ctx, &KernelKey::ActQ, &layout)?;
    let xb = f32_buffer(ctx, "x", x);
    let words = if packed { q8_words(x.len()) } else { x.len() };
    let yb = scratch(ctx, "y", words);
    let base = if packed { q8_base(x.len()) as u32 } else { 0 };
    let p = params_q8(k as u32, k as u32, 0, n_tok as u32, kind, base);
    let ub = super::buffers::uniform(ctx, &p);
    let bg = super::buffers::bind_buffers(ctx, &bgl, &[(0, &xb), (2, &yb), (3, &ub)]);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &bg, &[]);
        let (gx, gy) = workgroups(k as u32, n_tok as u32);
        pass.dispatch_workgroups(gx, gy, 1);
    }
    ctx.queue.submit(Some(enc.finish()));
    Ok(ctx
        .read_f32(&yb, 0, words)?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

/// `div_q(a, b)` of the activation rounding (`shaders/actq.wgsl`, the scale division as the
/// rounding kernels compile it for `ctx`: `div_fast` or `div_rn`, `Tune::actq_fastdiv`) for
/// each pair, on the GPU (tests of the division against the CPU's IEEE quotient).
pub fn divide(ctx: &GpuContext, pairs: &[(f32, f32)]) -> Result<Vec<f32>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let n = u32::try_from(pairs.len())
        .ok()
        .filter(|&n| n <= 1 << 30)
        .ok_or_else(|| Error::msg(format!("{} divisions are too many", pairs.len())))?;
    let src = super::kernels::div_test_source(ctx)?;
    let (bgl, layout) = super::kernels::buffer_layouts(ctx, "div", b"r-wu");
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = ctx
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("div test"),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
    let pipe = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("div test"),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::msg(format!("division test kernel: {e}")));
    }
    let x: Vec<f32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let xb = f32_buffer(ctx, "x", &x);
    let yb = scratch(ctx, "y", pairs.len());
    let ub = super::buffers::uniform(ctx, &params(n, 0, 0, 0, 0));
    let bg = super::buffers::bind_buffers(ctx, &bgl, &[(0, &xb), (2, &yb), (3, &ub)]);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bg, &[]);
        let wg = n.div_ceil(64);
        // 32768 workgroups of 64 per row of the grid (gid.y · 2^21 + gid.x).
        pass.dispatch_workgroups(wg.min(32768), wg.div_ceil(32768), 1);
    }
    ctx.queue.submit(Some(enc.finish()));
    ctx.read_f32(&yb, 0, pairs.len())
}

/// The SwiGLU output of one token and its rounding for `ffn_down`, computed twice on the
/// GPU (tests of [`KernelKey::MatVecQ8R`], [`super::kernels::Tune::swiglu_q`]): `x` is
/// rounded for `m` (interleaved gate/up rows of an integer-kernel type) by the rounding
/// dispatch, then (a) the plain integer mat-vec (`KernelKey::MatVecQ8` with `key`'s lanes
/// and rows, SwiGLU store) and the rounding dispatch of `key`'s kind over its output, as the
/// decode graph with the `actq` step runs them, and (b) `key` alone. Returns for each the
/// SwiGLU output's f32 words followed by the packed region (int8 quants, then per-32 scales).
pub fn swiglu_rounding_pair(
    ctx: &GpuContext,
    m: &super::buffers::GpuMatrix,
    x: &[f32],
    key: &KernelKey,
) -> Result<[Vec<u32>; 2]> {
    let &KernelKey::MatVecQ8R {
        ty,
        nr,
        spl,
        mode: 2,
        kind,
        qbase,
        wg,
        ..
    } = key
    else {
        return Err(Error::msg(format!(
            "SwiGLU rounding check: {key:?} is not a mode-2 MatVecQ8R key"
        )));
    };
    let n_out = m.rows / 2;
    let ch = match m.chunks.as_slice() {
        [ch] => ch,
        _ => {
            return Err(Error::msg(
                "SwiGLU rounding check: one weight chunk expected",
            ))
        }
    };
    let in_kind = kind_for_weight(m.ty);
    if ty != m.ty.id()
        || x.len() != m.cols
        || !matches!(in_kind, 3 | 4)
        || qbase as usize != q8_base(n_out)
    {
        return Err(Error::msg(format!(
            "SwiGLU rounding check: {} inputs for {} × {} {}, packed base {qbase}",
            x.len(),
            m.rows,
            m.cols,
            m.ty.name()
        )));
    }
    let uni = super::buffers::uniform;
    let bind = super::buffers::bind_buffers;
    let (abgl, alay) = super::kernels::buffer_layouts(ctx, "actq", b"r-wu");
    let (mbgl, mlay) = super::kernels::buffer_layouts(ctx, "matvec", b"rrwu");
    let (rbgl, rlay) = super::kernels::buffer_layouts(ctx, "swiglu rounding", b"rrwuw");
    let mut kernels = Kernels::default();
    let plain = KernelKey::MatVecQ8 { ty, nr, spl };
    if !matches!(wg, 256 | 512) {
        return Err(Error::msg(format!(
            "SwiGLU rounding check: {wg} invocations"
        )));
    }
    kernels.get_with_layout(ctx, &KernelKey::ActQ, &alay)?;
    kernels.get_with_layout(ctx, &plain, &mlay)?;
    kernels.get_with_layout(ctx, key, &rlay)?;
    // The input's packed quants, as the NormQ8 step before gate_up leaves them.
    let xe = q8_base(m.cols) as u32;
    let xb = f32_buffer(ctx, "x", x);
    let xq = scratch(ctx, "xq", q8_words(m.cols));
    let k = m.cols as u32;
    let ub_x = uni(ctx, &params_q8(k, k, 0, 1, in_kind, xe));
    let bg_x = bind(ctx, &abgl, &[(0, &xb), (2, &xq), (3, &ub_x)]);
    let mp: [u32; 12] = [
        ch.rows,
        k / 32,
        ch.d_off,
        0,
        xe,
        0,
        n_out as u32,
        1,
        2,
        ch.row0,
        0,
        0,
    ];
    let ub_m = uni(ctx, &mp);
    let (ha, hb) = (scratch(ctx, "h a", n_out), scratch(ctx, "h b", n_out));
    let words = q8_words(n_out);
    let (ra, rb) = (scratch(ctx, "r a", words), scratch(ctx, "r b", words));
    let bg_a = bind(ctx, &mbgl, &[(0, &ch.buf), (1, &xq), (2, &ha), (3, &ub_m)]);
    let ub_h = uni(
        ctx,
        &params_q8(n_out as u32, n_out as u32, 0, 1, kind, qbase),
    );
    let bg_h = bind(ctx, &abgl, &[(0, &ha), (2, &ra), (3, &ub_h)]);
    let bg_b = bind(
        ctx,
        &rbgl,
        &[(0, &ch.buf), (1, &xq), (2, &hb), (3, &ub_m), (4, &rb)],
    );
    let rpw = ctx.tune.rows_per_wg(&plain, nr);
    let rpw_r = ctx.tune.rows_per_wg(key, nr);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        let mut run = |key: &KernelKey, bg: &wgpu::BindGroup, wg: (u32, u32)| -> Result<()> {
            pass.set_pipeline(kernels.cached(key)?);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(wg.0, wg.1, 1);
            Ok(())
        };
        run(&KernelKey::ActQ, &bg_x, workgroups(k, 1))?;
        run(&plain, &bg_a, (ch.rows.div_ceil(rpw), 1))?;
        run(&KernelKey::ActQ, &bg_h, workgroups(n_out as u32, 1))?;
        run(key, &bg_b, (ch.rows.div_ceil(rpw_r), 1))?;
    }
    ctx.queue.submit(Some(enc.finish()));
    let read = |h: &wgpu::Buffer, r: &wgpu::Buffer| -> Result<Vec<u32>> {
        let mut v: Vec<u32> = ctx
            .read_f32(h, 0, n_out)?
            .into_iter()
            .map(f32::to_bits)
            .collect();
        v.extend(
            ctx.read_f32(r, 0, words)?[qbase as usize..]
                .iter()
                .map(|w| w.to_bits()),
        );
        Ok(v)
    };
    Ok([read(&ha, &ra)?, read(&hb, &rb)?])
}
