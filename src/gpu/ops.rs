//! Stand-alone kernel runs: one mat-vec / mat-mat over an uploaded matrix. Used by the kernel
//! tests and by `ggufq bench --kernels` (bandwidth of each type's mat-vec).

use std::time::Instant;

use crate::error::{Error, Result};

use super::buffers::{f32_buffer, scratch, GpuMatrix};
use super::device::GpuContext;
use super::kernels::{KernelKey, Kernels};

/// A mat-vec runner bound to one matrix.
pub struct MatRunner {
    layout: wgpu::PipelineLayout,
    bgl: wgpu::BindGroupLayout,
    kernels: Kernels,
}

impl MatRunner {
    /// Create a runner (explicit bind-group layout shared by all mat-vec kernels).
    pub fn new(ctx: &GpuContext) -> MatRunner {
        let (bgl, layout) = super::kernels::buffer_layouts(ctx, "matvec", b"rrwu");
        MatRunner {
            layout,
            bgl,
            kernels: Kernels::default(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        binds: &[(wgpu::BindGroup, u32)],
        key: &KernelKey,
        n_tok: u32,
        nt: u32,
        nr: u32,
    ) -> Result<()> {
        let pipe = self.kernels.get_with_layout(ctx, key, &self.layout)?;
        pass.set_pipeline(pipe);
        for (bg, rows) in binds {
            pass.set_bind_group(0, bg, &[]);
            if let KernelKey::MatMat { ty } = key {
                let (tr, tt) = super::kernels::matmat_tile(ctx, *ty);
                pass.dispatch_workgroups(rows.div_ceil(tr), n_tok.div_ceil(tt), 1);
            } else {
                let rpw = ctx.tune.rows_per_wg(key, nr);
                pass.dispatch_workgroups(rows.div_ceil(rpw), n_tok.div_ceil(nt), 1);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn binds(
        &self,
        ctx: &GpuContext,
        m: &GpuMatrix,
        xb: &wgpu::Buffer,
        yb: &wgpu::Buffer,
        n_tok: u32,
        mode: u32,
        q8e: u32,
    ) -> Vec<(wgpu::BindGroup, u32)> {
        self.binds_units(ctx, m, xb, yb, n_tok, mode, q8e, m.cols / 32)
    }

    /// [`MatRunner::binds`] with the row length in units given (0: the kernel runs no
    /// loop step, only its launch, reduction and stores).
    #[allow(clippy::too_many_arguments)]
    fn binds_units(
        &self,
        ctx: &GpuContext,
        m: &GpuMatrix,
        xb: &wgpu::Buffer,
        yb: &wgpu::Buffer,
        n_tok: u32,
        mode: u32,
        q8e: u32,
        units: usize,
    ) -> Vec<(wgpu::BindGroup, u32)> {
        m.chunks
            .iter()
            .map(|ch| {
                let p: [u32; 12] = [
                    ch.rows,
                    units as u32,
                    ch.d_off,
                    0,
                    if q8e != 0 { q8e } else { (m.cols / 4) as u32 },
                    0,
                    m.rows as u32,
                    n_tok,
                    mode,
                    ch.row0,
                    0,
                    0,
                ];
                let ub = super::buffers::uniform(ctx, &p);
                let bg = super::buffers::bind_buffers(
                    ctx,
                    &self.bgl,
                    &[(0, &ch.buf), (1, xb), (2, yb), (3, &ub)],
                );
                (bg, ch.rows)
            })
            .collect()
    }

    /// Y = W · X for `n_tok` token vectors `x` (row-major, `n_tok × cols`); `nt` tokens per
    /// workgroup and `nr` rows per warp (decode: 1, NR_DECODE; prompt: NT_PROMPT, NR_PROMPT);
    /// `nt == 0` selects the tiled 64×64 mat-mat kernel. Returns `n_tok × rows`.
    pub fn run(
        &mut self,
        ctx: &GpuContext,
        m: &GpuMatrix,
        x: &[f32],
        n_tok: usize,
        nt: u32,
        nr: u32,
    ) -> Result<Vec<f32>> {
        if x.len() != n_tok * m.cols || n_tok == 0 {
            return Err(Error::msg(format!(
                "x has {} values, expected {n_tok} × {}",
                x.len(),
                m.cols
            )));
        }
        let xb = f32_buffer(ctx, "x", x);
        let yb = scratch(ctx, "y", n_tok * m.rows);
        let binds = self.binds(ctx, m, &xb, &yb, n_tok as u32, 0, 0);
        let key = if nt == 0 {
            KernelKey::MatMat { ty: m.ty.id() }
        } else {
            ctx.tune.matvec_key_f32(m.ty.id(), nt, nr, m.cols / 32)
        };
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.record(ctx, &mut pass, &binds, &key, n_tok as u32, nt, nr)?;
        }
        ctx.queue.submit(Some(enc.finish()));
        ctx.read_f32(&yb, 0, n_tok * m.rows)
    }

    /// The integer decode kernel ([`KernelKey::MatVecQ8`], `nr` rows per warp) on one
    /// token `x`: the input is rounded on the GPU by the activation-rounding kernel (which
    /// writes the packed int8 quants), then multiplied. Returns (y, the rounded input).
    pub fn run_q8(
        &mut self,
        ctx: &GpuContext,
        m: &GpuMatrix,
        x: &[f32],
        nr: u32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let key = ctx.tune.matvec_key(m.ty.id(), 1, nr, m.cols / 32);
        self.run_q8_key(ctx, m, x, &key)
    }

    /// [`MatRunner::run_q8`] with the integer decode kernel `key` ([`KernelKey::MatVecQ8`]
    /// or [`KernelKey::MatVecQ8U`] of the matrix's type) instead of the tune's choice.
    pub fn run_q8_key(
        &mut self,
        ctx: &GpuContext,
        m: &GpuMatrix,
        x: &[f32],
        key: &KernelKey,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let ty = m.ty.id();
        let nr = match key {
            KernelKey::MatVecQ8 { ty: t, nr, .. } | KernelKey::MatVecQ8U { ty: t, nr, .. }
                if *t == ty =>
            {
                *nr
            }
            _ => {
                return Err(Error::msg(format!(
                    "integer mat-vec of {}: {key:?} is not an integer decode kernel of that type",
                    m.ty.name()
                )))
            }
        };
        if x.len() != m.cols || !ctx.tune.q8_for(ty) {
            return Err(Error::msg(format!(
                "integer mat-vec of {}: {} inputs for {} columns (or no integer kernel)",
                m.ty.name(),
                x.len(),
                m.cols
            )));
        }
        let e = super::actq::q8_base(m.cols);
        let xb = f32_buffer(ctx, "x", x);
        let xq = scratch(ctx, "xq", super::actq::q8_words(m.cols));
        let yb = scratch(ctx, "y", m.rows);
        let (abgl, alayout) = super::kernels::buffer_layouts(ctx, "actq", b"r-wu");
        let kind = super::actq::kind_for_weight(m.ty);
        let p = super::actq::params_q8(m.cols as u32, m.cols as u32, 0, 1, kind, e as u32);
        let ub = super::buffers::uniform(ctx, &p);
        let abg = super::buffers::bind_buffers(ctx, &abgl, &[(0, &xb), (2, &xq), (3, &ub)]);
        let binds = self.binds(ctx, m, &xq, &yb, 1, 0, e as u32);
        let mut aq = Kernels::default();
        let apipe = aq.get_with_layout(ctx, &KernelKey::ActQ, &alayout)?;
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(apipe);
            pass.set_bind_group(0, &abg, &[]);
            let (gx, gy) = super::actq::workgroups(m.cols as u32, 1);
            pass.dispatch_workgroups(gx, gy, 1);
            self.record(ctx, &mut pass, &binds, key, 1, 1, nr)?;
        }
        ctx.queue.submit(Some(enc.finish()));
        Ok((ctx.read_f32(&yb, 0, m.rows)?, ctx.read_f32(&xq, 0, m.cols)?))
    }

    /// Time `reps` rounds of mat-vec over every matrix in `ms` (one submit per round, so
    /// the matrices rotate and do not stay in cache). Returns seconds per round (median).
    pub fn time(
        &mut self,
        ctx: &GpuContext,
        ms: &[GpuMatrix],
        n_tok: usize,
        nt: u32,
        nr: u32,
        reps: usize,
    ) -> Result<f64> {
        let first = ms
            .first()
            .ok_or_else(|| Error::msg("no matrices to time"))?;
        // Room for the packed int8 input of the integer decode kernel after the f32 values
        // (1 / 128 of the quants are scales of 1.0, the rest small values).
        let e = super::actq::q8_base(n_tok * first.cols);
        let mut xw = vec![0.5f32.to_bits(); super::actq::q8_words(n_tok * first.cols)];
        for (i, w) in xw.iter_mut().enumerate().skip(e) {
            *w = if i >= e + e / 4 {
                1f32.to_bits()
            } else {
                0x03fd_02ff
            };
        }
        let xb = f32_buffer(ctx, "x", bytemuck::cast_slice(&xw));
        let yb = scratch(ctx, "y", n_tok * first.rows);
        let mut all = Vec::new();
        for m in ms {
            let key = if nt == 0 {
                KernelKey::MatMat { ty: m.ty.id() }
            } else {
                ctx.tune.matvec_key(m.ty.id(), nt, nr, m.cols / 32)
            };
            let q8e = if matches!(
                key,
                KernelKey::MatVecQ8 { .. } | KernelKey::MatVecQ8U { .. }
            ) {
                e as u32
            } else {
                0
            };
            all.push((self.binds(ctx, m, &xb, &yb, n_tok as u32, 0, q8e), key));
        }
        let mut times = Vec::new();
        for r in 0..reps + 2 {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for (b, k) in &all {
                    self.record(ctx, &mut pass, b, k, n_tok as u32, nt, nr)?;
                }
            }
            let t = Instant::now();
            ctx.queue.submit(Some(enc.finish()));
            ctx.wait()?;
            if r >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    }
}

/// Check the `nt`-token kernel of `ty` against CPU dequantization on random data: returns the
/// largest |gpu − cpu| relative to the largest |cpu| over a `rows` × `cols` matrix and
/// `n_tok` inputs (f64 reference).
#[allow(clippy::too_many_arguments)]
pub fn check_against_cpu(
    ctx: &GpuContext,
    runner: &mut MatRunner,
    ty: crate::quant::GgmlType,
    rows: usize,
    cols: usize,
    n_tok: usize,
    nt: u32,
    nr: u32,
) -> Result<f64> {
    let data = super::source::random_blocks(ty, rows * cols, 11 + rows as u64, 0.3)?;
    let w = super::reference::dequantize(ty, &data, rows * cols)?;
    let m = super::buffers::upload_matrix(ctx, "check", ty, rows, cols, &data)?;
    let x: Vec<f32> = (0..n_tok * cols)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let y = runner.run(ctx, &m, &x, n_tok, nt, nr)?;
    let (mut mx, mut err) = (0f64, 0f64);
    for t in 0..n_tok {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum();
            let g = y[t * rows + r] as f64;
            if !g.is_finite() {
                return Ok(f64::INFINITY);
            }
            mx = mx.max(s.abs());
            err = err.max((g - s).abs());
        }
    }
    Ok(err / mx.max(1e-30))
}

/// One row of [`decode_chain`]: a kernel variant on one matrix shape.
#[derive(Clone, Debug)]
pub struct ChainRow {
    /// What was run: the key and the switches that differ from the defaults.
    pub label: String,
    /// GPU µs per dispatch (whole pass / dispatches).
    pub us: f64,
    /// Weight bytes per dispatch / µs per dispatch, TB/s.
    pub tbps: f64,
    /// The output after the pass (the product of the matrix with the packed input; empty
    /// for the reference rows).
    pub y: Vec<f32>,
}

/// Time the integer decode mat-vec of `ty` on a `rows` × `cols` matrix as the decode graph
/// runs it: `n` dispatches recorded in one compute pass, each on the next of enough copies
/// of the matrix (≥ `min_bytes` in all, so they do not stay in L2), every dispatch writing
/// the same output buffer (so that wgpu puts a barrier between two, as between the
/// dependent steps of a forward), timed by the pass's GPU timestamps (wall clock of the
/// submit where the adapter has none; median of `reps`). `variants`: labels and kernel
/// choices (a tune change and an optional key; None = [`super::kernels::Tune::matvec_key`]);
/// `independent` adds a row of the first variant with one output buffer per dispatch (no
/// barriers: the dispatches may overlap).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn decode_chain(
    ctx: &GpuContext,
    ty: crate::quant::GgmlType,
    rows: usize,
    cols: usize,
    n: usize,
    min_bytes: u64,
    reps: usize,
    variants: &[(String, super::kernels::Tune, Option<KernelKey>)],
    independent: bool,
) -> Result<Vec<ChainRow>> {
    let data = super::source::random_blocks(ty, rows * cols, 7 + rows as u64, 0.1)?;
    let per = data.len() as u64;
    let copies = min_bytes.div_ceil(per.max(1)).clamp(1, n.max(1) as u64) as usize;
    let mut ms = Vec::with_capacity(copies);
    for i in 0..copies {
        ms.push(super::buffers::upload_matrix(
            ctx,
            &format!("chain{i}"),
            ty,
            rows,
            cols,
            &data,
        )?);
    }
    drop(data);
    // The packed int8 input (as `MatRunner::time`): quants of small values, scales of 1.0.
    let e = super::actq::q8_base(cols);
    let mut xw = vec![0.5f32.to_bits(); super::actq::q8_words(cols)];
    for (i, w) in xw.iter_mut().enumerate().skip(e) {
        *w = if i >= e + e / 4 {
            1f32.to_bits()
        } else {
            0x03fd_02ff
        };
    }
    let xb = f32_buffer(ctx, "x", bytemuck::cast_slice(&xw));
    let ys: Vec<wgpu::Buffer> = (0..if independent { n } else { 1 })
        .map(|_| scratch(ctx, "y", rows))
        .collect();
    let mut out = Vec::new();
    let mut runs: Vec<(String, usize)> = (0..variants.len())
        .map(|v| (variants[v].0.clone(), v))
        .collect();
    if independent && !variants.is_empty() {
        runs.push((format!("{} (no barriers)", variants[0].0), usize::MAX));
        runs.push((
            format!("{} with 0 units (launch + stores)", variants[0].0),
            usize::MAX - 1,
        ));
    }
    for (label, v) in runs {
        let (_, tune, key) = &variants[if v >= usize::MAX - 1 { 0 } else { v }];
        let vctx = ctx.retuned(|t| *t = *tune);
        let key = key
            .clone()
            .unwrap_or_else(|| tune.matvec_key(ty.id(), 1, tune.decode_nr(ty.id()), cols / 32));
        let mut runner = MatRunner::new(&vctx);
        let binds: Vec<Vec<(wgpu::BindGroup, u32)>> = (0..n)
            .map(|i| {
                let y = &ys[if v == usize::MAX { i } else { 0 }];
                let units = if v == usize::MAX - 1 { 0 } else { cols / 32 };
                runner.binds_units(&vctx, &ms[i % copies], &xb, y, 1, 0, e as u32, units)
            })
            .collect();
        let nr = match key {
            KernelKey::MatVecQ8 { nr, .. }
            | KernelKey::MatVecQ8U { nr, .. }
            | KernelKey::MatVecSplitK { nr, .. } => nr,
            _ => 1,
        };
        let secs = runner.time_pass(&vctx, &binds, &key, nr, reps)?;
        let us = secs * 1e6 / n as f64;
        let y = if v < usize::MAX - 1 {
            ctx.read_f32(&ys[0], 0, rows)?
        } else {
            Vec::new()
        };
        out.push(ChainRow {
            label,
            us,
            tbps: per as f64 / (us * 1e-6) / 1e12,
            y,
        });
    }
    // The same bytes read by the L2-prefetch kernel (16-byte loads, nothing computed), every
    // dispatch flagging the same scratch word: the streaming floor of a dispatch this size.
    {
        let (bgl, layout) = super::kernels::buffer_layouts(ctx, "chain stream", b"rw");
        let sb = scratch(ctx, "chain scratch", 4);
        let mut ks = Kernels::default();
        let pipe = ks.get_with_layout(ctx, &KernelKey::Prefetch, &layout)?;
        let groups: Vec<Vec<(wgpu::BindGroup, u32)>> = (0..n)
            .map(|i| {
                ms[i % copies]
                    .chunks
                    .iter()
                    .map(|ch| {
                        let bytes = ch.buf.size();
                        let bg = super::buffers::bind_buffers(ctx, &bgl, &[(0, &ch.buf), (1, &sb)]);
                        (bg, super::kernels::prefetch_workgroups(bytes))
                    })
                    .collect()
            })
            .collect();
        let secs = time_groups(ctx, pipe, &groups, reps)?;
        let us = secs * 1e6 / n as f64;
        out.push(ChainRow {
            label: "read-only stream of the same bytes (16 B loads)".into(),
            us,
            tbps: per as f64 / (us * 1e-6) / 1e12,
            y: Vec::new(),
        });
    }
    Ok(out)
}

/// GPU seconds of one pass dispatching `pipe` once per (bind group, workgroups) of
/// `groups`, in order (median of `reps` after at least 0.2 s of warm-up passes).
fn time_groups(
    ctx: &GpuContext,
    pipe: &wgpu::ComputePipeline,
    groups: &[Vec<(wgpu::BindGroup, u32)>],
    reps: usize,
) -> Result<f64> {
    time_pass_with(ctx, reps, |pass| {
        pass.set_pipeline(pipe);
        for g in groups {
            for (bg, wg) in g {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(*wg, 1, 1);
            }
        }
        Ok(())
    })
}

/// GPU seconds of one compute pass recorded by `rec` (median of `reps` after warm-up passes
/// of at least 0.2 s): the pass's timestamps where the adapter has them, else the wall time of
/// submit + wait.
pub(super) fn time_pass_with(
    ctx: &GpuContext,
    reps: usize,
    mut rec: impl FnMut(&mut wgpu::ComputePass<'_>) -> Result<()>,
) -> Result<f64> {
    let qs = ctx.facts.timestamps.then(|| {
        ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("chain"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    });
    let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("chain ts"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let period = ctx.queue.get_timestamp_period() as f64 * 1e-9;
    let mut times = Vec::new();
    // Warm-up: passes for at least 0.2 s (and 2 passes) before the timed ones, so that an
    // idle GPU's clocks have come up (the first H100 run of this bench, without it, timed
    // the same kernel 2-4x slower right after the matrices' upload than later).
    let start = Instant::now();
    let mut warm = 0usize;
    while times.len() < reps.max(1) {
        let timed = warm >= 2 && start.elapsed().as_secs_f64() >= 0.2;
        if !timed {
            warm += 1;
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("chain"),
                timestamp_writes: qs.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: q,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            rec(&mut pass)?;
        }
        let read = qs.as_ref().map(|q| {
            let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("chain ts read"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.resolve_query_set(q, 0..2, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
            read
        });
        let t = Instant::now();
        ctx.queue.submit(Some(enc.finish()));
        let secs = match read {
            Some(read) => match ctx.read_mapped_u64(&read)?.as_slice() {
                [a, b] => b.saturating_sub(*a) as f64 * period,
                _ => return Err(Error::msg("chain: timestamps missing")),
            },
            None => {
                ctx.wait()?;
                t.elapsed().as_secs_f64()
            }
        };
        if timed {
            times.push(secs);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

impl MatRunner {
    /// GPU seconds of one compute pass running every bind group of `binds` in order with
    /// kernel `key` (median of `reps` after at least 0.2 s of warm-up passes): the pass's timestamps where
    /// the adapter has them, else the wall time of submit + wait.
    fn time_pass(
        &mut self,
        ctx: &GpuContext,
        binds: &[Vec<(wgpu::BindGroup, u32)>],
        key: &KernelKey,
        nr: u32,
        reps: usize,
    ) -> Result<f64> {
        // Compile first: `record` borrows the cache mutably inside the pass.
        self.kernels.get_with_layout(ctx, key, &self.layout)?;
        time_pass_with(ctx, reps, |pass| {
            for b in binds {
                self.record(ctx, pass, b, key, 1, 1, nr)?;
            }
            Ok(())
        })
    }
}
