//! The weight stream of a decode pass without dependent dispatches: what a persistent
//! kernel (one dispatch, workgroups meeting in a grid barrier between steps) would read per
//! layer, and whether loading the next step's weights before the barrier hides it. Read-only
//! throughout (nothing computed, the words summed): a floor for a "megakernel" decode, to set
//! beside session 19's floor of dependent dispatches (`--decode-chain`'s read-only stream).
//! `ggufq bench --kernels --grid-stream` (docs/gpu.md).

use crate::error::{Error, Result};

use super::buffers::{bind_buffers, uniform};
use super::device::GpuContext;

/// Bindings, parameters and the bounds-checked load of every variant. A step is one
/// `seg` entry: its first 16-byte word in `w` and its length in words.
const HEADER: &str = r#"
struct P { first: u32, nseg: u32, g: u32, barrier: u32, slot: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> seg: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> ctr: array<atomic<u32>>;
@group(0) @binding(3) var<uniform> p: P;

fn ld(s: vec2<u32>, j: u32) -> vec4<u32> {
    if (j < s.y) {
        return w[s.x + j];
    }
    return vec4<u32>(0u);
}
"#;

/// Steps `first .. first + nseg` read by `g` workgroups of 256 threads, each thread every
/// `g·256`-th word of a step (four loads in flight per loop turn). `PRE` words of a thread's
/// share of step s + 1 are loaded before the barrier that ends step s and summed after it
/// (`$DECL`, `$CONSUME`, `$PRE` are unrolled by [`source`]). With `barrier` ≠ 0 the
/// workgroups meet in [`GRID_BARRIER_WGSL`]'s grid barrier after each step. The workgroup's
/// sum is stored to a word of its own (`slot` + workgroup, after the four counters).
const BODY: &str = r#"
var<workgroup> wsum: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let nt = p.g * 256u;
    let gid = wg.x * 256u + t;
    let end = p.first + p.nseg;
    var acc = vec4<u32>(0u);
    let s0 = seg[p.first];
$DECL
    for (var s = p.first; s < end; s++) {
        let sg = seg[s];
$CONSUME
        var j = gid + PRE * nt;
        for (; j + 3u * nt < sg.y; j += 4u * nt) {
            let a = w[sg.x + j];
            let b = w[sg.x + j + nt];
            let c = w[sg.x + j + 2u * nt];
            let d = w[sg.x + j + 3u * nt];
            acc += (a + b) + (c + d);
        }
        for (; j < sg.y; j += nt) {
            acc += w[sg.x + j];
        }
        if (s + 1u < end) {
            let sn = seg[s + 1u];
$PRE
        }
        if (p.barrier != 0u) {
            grid_barrier(t, s - p.first + 1u);
        }
    }
    atomicAdd(&wsum, (acc.x + acc.y) + (acc.z + acc.w));
    workgroupBarrier();
    if (t == 0u) {
        atomicStore(&ctr[p.slot + wg.x], atomicLoad(&wsum));
    }
    if (p.barrier != 0u) {
        grid_exit(t);
    }
}
"#;

/// The grid barrier of both persistent kernels (this module's and src/gpu/gridmv.rs's,
/// whose `ctr` and `p.g` it uses): after a workgroup barrier, thread 0 counts the workgroup
/// on `ctr[0]` and spins until all `p.g` have arrived `done` times (a bounded spin: past
/// 2^22 loads it sets `ctr[3]` and nobody waits any more, so a grid larger than the adapter
/// keeps resident ends with a flag instead of a hang); then the whole workgroup goes on.
/// `grid_exit`: the last workgroup out resets the counters for the next pass.
pub(super) const GRID_BARRIER_WGSL: &str = r#"
fn grid_barrier(t: u32, done: u32) {
    workgroupBarrier();
    if (t == 0u) {
        atomicAdd(&ctr[0], 1u);
        let goal = done * p.g;
        var n = 0u;
        loop {
            if (atomicLoad(&ctr[0]) >= goal || atomicLoad(&ctr[3]) != 0u) {
                break;
            }
            n += 1u;
            if (n > (1u << 22u)) {
                atomicStore(&ctr[3], 1u);
                break;
            }
        }
    }
    workgroupBarrier();
}

fn grid_exit(t: u32) {
    if (t == 0u && atomicAdd(&ctr[1], 1u) == p.g - 1u) {
        atomicStore(&ctr[0], 0u);
        atomicStore(&ctr[1], 0u);
    }
}
"#;

/// The kernel with `pre` words per thread loaded ahead of each barrier.
pub fn source(pre: u32) -> String {
    let (mut decl, mut consume, mut next) = (String::new(), String::new(), String::new());
    for i in 0..pre {
        decl.push_str(&format!("    var q{i} = ld(s0, gid + {i}u * nt);\n"));
        consume.push_str(&format!("        acc += q{i};\n"));
        next.push_str(&format!("            q{i} = ld(sn, gid + {i}u * nt);\n"));
    }
    format!(
        "const PRE: u32 = {pre}u;\n{HEADER}{GRID_BARRIER_WGSL}{}",
        BODY.replace("$DECL\n", &decl)
            .replace("$CONSUME\n", &consume)
            .replace("$PRE\n", &next)
    )
}

/// One timed way of running a persistent-pass bench (the part of both benches' rows they
/// share).
#[derive(Debug, Clone)]
pub struct GridRun {
    /// "dependent dispatches", "one dispatch, no barrier" or "grid barrier".
    pub kind: &'static str,
    /// Workgroups of 256 threads (of each dispatch, for the dependent dispatches).
    pub workgroups: u32,
    /// Loads per thread of the next step before each barrier (16-byte words here; 32-weight
    /// blocks per row of the lane's next tile in src/gpu/gridmv.rs).
    pub prefetch: u32,
    /// GPU µs per layer (median pass / layers).
    pub us_per_layer: f64,
    /// Weight bytes read per second, TB/s.
    pub tbps: f64,
    /// A grid barrier gave up waiting (more workgroups than stay resident).
    pub timed_out: bool,
}

impl GridRun {
    /// The row's cells as markdown: sync, workgroups, loads ahead, µs per layer, TB/s.
    pub fn cells(&self) -> String {
        format!(
            "{} | {} | {} | {:.2} | {:.2}",
            self.kind, self.workgroups, self.prefetch, self.us_per_layer, self.tbps
        )
    }
}

/// One measured way of streaming the pass's weights.
#[derive(Debug, Clone)]
pub struct StreamRow {
    /// How it ran and how fast.
    pub run: GridRun,
    /// Steps (dispatches or barriers) in the pass.
    pub steps: u32,
    /// The kernel's sum of every word read equals the host's.
    pub sum_ok: bool,
}

/// What a persistent-pass bench runs (here and in src/gpu/gridmv.rs).
#[derive(Debug, Clone)]
pub struct GridPlan {
    /// Layers per pass.
    pub layers: u32,
    /// Most bytes of distinct weights (one binding): layers beyond repeat the first ones.
    pub budget: u64,
    /// Workgroup counts (of 256 threads) to run each variant with.
    pub workgroups: Vec<u32>,
    /// Depths of the loads ahead of each grid barrier to run.
    pub prefetch: Vec<u32>,
    /// Timed passes (the median is taken).
    pub reps: usize,
}

impl GridPlan {
    /// Refuse what the benches cannot run, naming `what`: no layers or more than 4096, no
    /// workgroup counts, a count of 0 or over 65 535 (one dispatch dimension), more than
    /// `most_ahead` loads ahead (each is unrolled into the kernel).
    pub fn check(&self, what: &str, most_ahead: u32) -> Result<()> {
        if !(1..=4096).contains(&self.layers) {
            return Err(Error::msg(format!(
                "{what}: {} layers; 1 to 4096 can run",
                self.layers
            )));
        }
        if self.workgroups.is_empty() || self.workgroups.iter().any(|&g| !(1..=65_535).contains(&g))
        {
            return Err(Error::msg(format!(
                "{what}: workgroup counts {:?}; each must be 1 to 65535",
                self.workgroups
            )));
        }
        if let Some(&p) = self.prefetch.iter().find(|&&p| p > most_ahead) {
            return Err(Error::msg(format!(
                "{what}: {p} loads ahead of the barrier; at most {most_ahead}"
            )));
        }
        Ok(())
    }
}

impl GridPlan {
    /// The variants to time, in order: per workgroup count, dependent dispatches, one
    /// dispatch with no barrier where `no_barrier`, then the grid barrier at each depth of
    /// loads ahead (on a CPU adapter only for one workgroup: its threads run workgroups each
    /// to its end, so a grid barrier over more would wait for ones queued behind it).
    pub(super) fn runs(&self, ctx: &GpuContext, no_barrier: bool) -> Vec<(&'static str, u32, u32)> {
        let mut runs = Vec::new();
        for &g in &self.workgroups {
            runs.push(("dependent dispatches", g, 0));
            if no_barrier {
                runs.push(("one dispatch, no barrier", g, 0));
            }
            if g == 1 || !ctx.facts.is_cpu() {
                runs.extend(self.prefetch.iter().map(|&r| ("grid barrier", g, r)));
            }
        }
        runs
    }
}

/// Stream `plan.layers` layers whose steps read `step_bytes` each (rounded up to 16 B) and
/// time it for each of `plan.workgroups` (the same kernel throughout) as dependent
/// dispatches (one per step, the same counters bound read-write so that wgpu puts a barrier
/// between two), as one dispatch with no barrier, and with a grid barrier after every step
/// for each `plan.prefetch` depth (16-byte words per thread). The layers are distinct copies
/// as far as one binding of at most `plan.budget` bytes holds them (then repeated), so a step
/// is not served from L2 when the copies exceed it. Median of `plan.reps` passes; every
/// variant's sum is checked once more after the timed passes.
pub fn grid_stream_bench(
    ctx: &GpuContext,
    step_bytes: &[u64],
    plan: &GridPlan,
) -> Result<Vec<StreamRow>> {
    grid_stream_run(ctx, step_bytes, plan, 0)
}

/// [`grid_stream_bench`] whose sum check expects `skew` more than the words add up to
/// (tests: with `skew` ≠ 0 no variant may pass).
pub fn grid_stream_run(
    ctx: &GpuContext,
    step_bytes: &[u64],
    plan: &GridPlan,
    skew: u32,
) -> Result<Vec<StreamRow>> {
    plan.check("grid stream", 64)?;
    let layers = plan.layers;
    let words: Vec<u64> = step_bytes.iter().map(|b| b.div_ceil(16)).collect();
    let layer_words: u64 = words.iter().sum();
    if step_bytes.is_empty() || words.contains(&0) {
        return Err(Error::msg("grid stream: steps of at least one byte"));
    }
    let limit = plan.budget.min(ctx.facts.max_binding) / 16;
    if layer_words > limit || layer_words > u32::MAX as u64 {
        return Err(Error::msg(format!(
            "grid stream: a layer of {} bytes does not fit one binding of {} bytes",
            layer_words * 16,
            limit * 16
        )));
    }
    let copies = (limit / layer_words).clamp(1, layers as u64);
    let total_words = (copies * layer_words) as usize;
    // Random words, and each step's wrapping sum of them.
    let mut rng = super::source::Rng(0x9e37_79b9_7f4a_7c15);
    let data: Vec<u32> = (0..total_words * 4).map(|_| rng.word()).collect();
    let mut segs: Vec<[u32; 2]> = Vec::new();
    let mut sums: Vec<u32> = Vec::new();
    let mut at = 0u64;
    for l in 0..layers as u64 {
        if l < copies {
            for &n in &words {
                let s = &data[at as usize * 4..(at + n) as usize * 4];
                sums.push(s.iter().fold(0u32, |a, &b| a.wrapping_add(b)));
                segs.push([at as u32, n as u32]);
                at += n;
            }
        } else {
            let k = (l % copies) as usize * words.len();
            for i in 0..words.len() {
                segs.push(segs[k + i]);
                sums.push(sums[k + i]);
            }
        }
    }
    let expect = sums.iter().fold(0u32, |a, &b| a.wrapping_add(b));
    let steps = segs.len() as u32;
    let bytes = words.iter().sum::<u64>() as f64 * 16.0 * layers as f64;
    let wb = storage(ctx, "grid stream weights", &data);
    drop(data);
    let sb = storage(ctx, "grid stream steps", bytemuck::cast_slice(&segs));
    let (bgl, layout) = super::kernels::buffer_layouts(ctx, "gridstream", b"rrwu");
    // Partial sums: a word per workgroup and dispatch.
    let ctr_words = 4 + steps as usize
        * plan
            .workgroups
            .iter()
            .map(|&g| g as usize)
            .max()
            .unwrap_or(0);
    let ctr = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("grid stream ctr"),
        size: ctr_words as u64 * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = |first: u32, nseg: u32, g: u32, barrier: u32, slot: u32| {
        let ub = uniform(ctx, &[first, nseg, g, barrier, slot, 0, 0, 0]);
        (
            bind_buffers(ctx, &bgl, &[(0, &wb), (1, &sb), (2, &ctr), (3, &ub)]),
            g,
        )
    };
    let zeros = vec![0u8; ctr_words * 4];
    let mut rows = Vec::new();
    for (i, (kind, g, pre)) in plan.runs(ctx, true).into_iter().enumerate() {
        let pipe = super::kernels::compile_pipeline(ctx, &layout, source(pre), true)
            .map_err(|e| Error::msg(format!("grid stream kernel failed to compile: {e}")))?;
        let groups: Vec<(wgpu::BindGroup, u32)> = if kind == "dependent dispatches" {
            (0..steps).map(|s| bind(s, 1, g, 0, 4 + s * g)).collect()
        } else {
            vec![bind(0, steps, g, u32::from(kind == "grid barrier"), 4)]
        };
        let run = |pass: &mut wgpu::ComputePass<'_>| -> Result<()> {
            pass.set_pipeline(&pipe);
            for (bg, g) in &groups {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(*g, 1, 1);
            }
            Ok(())
        };
        // The check pass starts from zeroed counters: its sum must be the host's.
        let (secs, timed_out) = measure(
            ctx,
            plan.reps,
            i == 0,
            &run,
            &|| ctx.queue.write_buffer(&ctr, 0, &zeros),
            &|| Ok(read_ctr(ctx, &ctr, ctr_words)?[3] != 0),
        )?;
        let c = read_ctr(ctx, &ctr, ctr_words)?;
        rows.push(StreamRow {
            run: GridRun {
                kind,
                workgroups: g,
                prefetch: pre,
                us_per_layer: secs * 1e6 / layers as f64,
                tbps: bytes / secs / 1e12,
                timed_out: timed_out || c[3] != 0,
            },
            steps,
            sum_ok: c[2] == expect.wrapping_add(skew),
        });
    }
    Ok(rows)
}

/// The counter buffer's first words (the barrier's two counters, unused, the give-up flag)
/// with the wrapping total of the `n` − 4 partial sums after them in the third.
fn read_ctr(ctx: &GpuContext, ctr: &wgpu::Buffer, n: usize) -> Result<[u32; 4]> {
    let v: Vec<u32> = ctx
        .read_f32(ctr, 0, n)?
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let sum = v[4..].iter().fold(0u32, |a, &b| a.wrapping_add(b));
    Ok([v[0], v[1], sum, v[3]])
}

/// A read-only storage buffer holding `words`.
pub(super) fn storage(ctx: &GpuContext, label: &str, words: &[u32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(words),
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// One variant's pass, recorded into a compute pass.
pub(super) type PassFn<'a> = dyn Fn(&mut wgpu::ComputePass<'_>) -> Result<()> + 'a;

/// Time one variant of a grid bench and run it once more for its check: `reset` the buffers,
/// run it for a second first where `first` (on the H100 the first variant timed after a
/// previous bench's buffers were dropped and these uploaded ran up to 2.2x slower for its
/// timed passes than the same variant later, session 21 c8 and c9, past the timing helper's
/// own 0.2 s of warm-up), take the median GPU seconds of `reps` passes and whether `gave_up`
/// says the grid barrier gave up in them, then `reset` and one pass whose results the caller
/// reads.
pub(super) fn measure(
    ctx: &GpuContext,
    reps: usize,
    first: bool,
    run: &PassFn<'_>,
    reset: &dyn Fn(),
    gave_up: &dyn Fn() -> Result<bool>,
) -> Result<(f64, bool)> {
    reset();
    let start = std::time::Instant::now();
    while first && start.elapsed().as_secs_f64() < 1.0 {
        super::ops::time_pass_with(ctx, 1, run)?;
    }
    let secs = super::ops::time_pass_with(ctx, reps, run)?;
    let timed_out = gave_up()?;
    reset();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        run(&mut pass)?;
    }
    ctx.queue.submit(Some(enc.finish()));
    ctx.wait()?;
    Ok((secs, timed_out))
}
