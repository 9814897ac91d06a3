//! Shared set-up of the GPU tests (included with `#[path]` by each tests/gpu_*.rs that needs
//! it): the adapter (lavapipe in CI), tiny synthetic models written as GGUF files, and
//! deterministic token streams.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ggufq::gpu::source::{Mix, TensorView, WeightSource};
use ggufq::gpu::{DeviceOptions, GpuContext, GpuModel, ModelOptions, Shape, SynthSource};
use ggufq::model::HParams;
use ggufq::quant::GgmlType;

/// The default adapter, or `None` (test skipped) when there is none and GGUFQ_SKIP_GPU=1.
/// Without an adapter and without that variable the test fails: CI must run them.
pub fn context() -> Option<Arc<GpuContext>> {
    context_tuned(|_| {})
}

/// [`context`] with the engine's tuning adjusted by `tune` before it is shared.
pub fn context_tuned(tune: impl FnOnce(&mut GpuContext)) -> Option<Arc<GpuContext>> {
    let mut c = device(&DeviceOptions::default())?;
    tune(&mut c);
    Some(Arc::new(c))
}

/// An adapter chosen by `opts`, or `None` (test skipped) when there is none and
/// GGUFQ_SKIP_GPU=1; without an adapter and without that variable the test fails.
///
/// The block-rounding residual mat-vecs (`Tune::block_norm`, on by default) and the SwiGLU
/// rounding that comes with them (`Tune::swiglu_q`) are turned off here: these tests compare
/// other decode-graph variants with the NormQ8 graph bit for bit. tests/gpu_block_norm.rs
/// and tests/gpu_arch.rs turn them on, and the CLI tests run the engine's defaults.
pub fn device(opts: &DeviceOptions) -> Option<GpuContext> {
    match GpuContext::new(opts) {
        Ok(mut c) => {
            c.tune.normq8_graph();
            Some(c)
        }
        Err(e) if std::env::var("GGUFQ_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("skipping GPU test: {e}");
            None
        }
        Err(e) => panic!("no GPU adapter ({e}); set GGUFQ_SKIP_GPU=1 to skip GPU tests"),
    }
}

/// Undoes [`device`]'s `normq8_graph`: the block-rounding residual mat-vecs and the SwiGLU
/// rounding as the engine's defaults (`Tune::from_env`) have them, for the tests that run
/// the engine's own decode graph.
pub fn engine_decode_graph(c: &mut GpuContext) {
    let d = ggufq::gpu::kernels::Tune::from_env();
    c.tune.block_norm = d.block_norm;
    c.tune.swiglu_q = d.swiglu_q;
    c.tune.swiglu_q_wg = d.swiglu_q_wg;
}

/// The "tiny" synthetic llama shape with weight mix `mix` (named `tiny-MIX`).
pub fn tiny_source(mix: &str) -> SynthSource {
    SynthSource::new(
        Shape::named("tiny").unwrap(),
        Mix::parse(mix).unwrap(),
        format!("tiny-{mix}"),
    )
    .unwrap()
}

/// Write the "tiny" synthetic llama shape with weight mix `mix` into `dir`.
pub fn write_tiny(dir: &Path, mix: &str) -> PathBuf {
    let src = tiny_source(mix);
    let p = dir.join(format!("{}.gguf", src.name));
    src.write_gguf(&p).unwrap();
    p
}

/// Run `ggufq bench --kernel-check` (the device calls' self-check), assert it succeeded and
/// return its standard output.
pub fn kernel_check_stdout() -> String {
    let out = assert_cmd::Command::cargo_bin("ggufq")
        .unwrap()
        .args(["bench", "--kernel-check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

/// Deterministic pseudo-random tokens below `n`.
pub fn tokens(n: usize, count: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % n as u64) as u32
        })
        .collect()
}

/// Parse and validate WGSL with naga (the front end wgpu compiles with), every capability on:
/// kernels that cannot run on this adapter (cooperative matrices on lavapipe) must still be
/// valid text. Panics naming `what` otherwise.
pub fn validate_wgsl(src: &str, what: &str) {
    use wgpu::naga;
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{what}: WGSL parse error: {}\n{src}", e.emit_to_string(src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{what}: WGSL validation error: {e:?}"));
}

/// Root-mean-square difference of `a` from the reference `b`, relative to the RMS of `b`.
pub fn rms_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let r: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / r).sqrt()
}

/// A 2-layer shape with 512-wide rows and ffn rows of 1536 (6 Q8_K blocks, 48 Q8_0 blocks):
/// with 32 lanes per row group each ffn_down lane takes two units, the second partly past
/// the row.
pub fn wide_shape() -> Shape {
    Shape {
        n_embd: 512,
        n_layer: 2,
        n_ff: 1536,
        n_head: 4,
        n_kv: 2,
        n_vocab: 512,
    }
}

/// A test model shape by name: "wide" ([`wide_shape`]) or the "tiny" synthetic shape.
pub fn tiny_or_wide(name: &str) -> Shape {
    match name {
        "wide" => wide_shape(),
        _ => Shape::named("tiny").unwrap(),
    }
}

/// The tiny shape (hd 64, 4 heads over 2 KV heads) or, for "hd128", a 512-wide one with
/// head size 128 and no grouped-query heads (4 heads, 4 KV heads).
pub fn tiny_or_hd128(name: &str) -> Shape {
    let mut s = Shape::named("tiny").unwrap();
    if name == "hd128" {
        s.n_embd = 512;
        s.n_head = 4;
        s.n_kv = 4;
    }
    s
}

/// A synthetic model of shape `shape_name` ([`tiny_or_wide`]) and type mix `mix`, loaded
/// with [`decode_opts`] on the default adapter with its tuning changed by `tune`.
pub fn load_tuned(
    shape_name: &str,
    mix: &str,
    tune: impl FnOnce(&mut GpuContext),
) -> Option<GpuModel> {
    let ctx = context_tuned(tune)?;
    let src = SynthSource::new(tiny_or_wide(shape_name), Mix::parse(mix).unwrap(), mix).unwrap();
    Some(GpuModel::load(ctx, &src, decode_opts()).unwrap())
}

/// [`decode_run`] of a 3-token prompt and `steps` decode tokens (seeds 1 and 2).
pub fn decode_steps(m: &mut GpuModel, steps: usize) -> Vec<Vec<f32>> {
    let nv = m.cfg.n_vocab;
    decode_run(m, &tokens(nv, 3, 1), &tokens(nv, steps, 2))
}

/// The first step whose logits differ in any bit between two runs of [`decode_steps`], with
/// the number of differing logits in it (None: equal bit for bit).
pub fn first_bit_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<(usize, usize)> {
    a.iter().zip(b).enumerate().find_map(|(t, (x, y))| {
        let diff = x
            .iter()
            .zip(y)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        (diff != 0 || x.len() != y.len()).then_some((t, diff))
    })
}

/// Model options of the decode tests: 64 positions, batches of 8, one sequence.
pub fn decode_opts() -> ModelOptions {
    ModelOptions {
        n_ctx: 64,
        n_batch: 8,
        n_seq: 1,
    }
}

/// Logits of `prompt` (one batch, last token) and then of each `decode` token, one call each.
pub fn decode_run(m: &mut GpuModel, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let p: Vec<(u32, u32, u32)> = prompt
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, 0, i as u32))
        .collect();
    let mut out = vec![m.forward(&p, false).unwrap()];
    for (j, &t) in decode.iter().enumerate() {
        out.push(
            m.forward(&[(t, 0, (prompt.len() + j) as u32)], false)
                .unwrap(),
        );
    }
    out
}

/// Steps of the model's decode graph with role `role`.
pub fn role_count(m: &GpuModel, role: &str) -> usize {
    m.step_roles().iter().filter(|r| **r == role).count()
}

/// `src` without its tensor `name` (neither looked up nor listed), everything else as `src`
/// has it: a file missing that tensor (e.g. `output.weight`: tied embeddings).
pub struct Without<'a> {
    pub src: &'a dyn WeightSource,
    pub name: &'static str,
}

impl WeightSource for Without<'_> {
    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.src.meta_u64(key)
    }
    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.src.meta_f64(key)
    }
    fn meta_str(&self, key: &str) -> Option<String> {
        self.src.meta_str(key)
    }
    fn tensor(&self, name: &str) -> ggufq::error::Result<Option<TensorView<'_>>> {
        if name == self.name {
            return Ok(None);
        }
        self.src.tensor(name)
    }
    fn tensor_list(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        let mut v = self.src.tensor_list();
        v.retain(|(n, _, _)| n != self.name);
        v
    }
    fn label(&self) -> String {
        self.src.label()
    }
    fn hparams(&self) -> Option<ggufq::error::Result<HParams>> {
        self.src.hparams()
    }
}

/// Deterministic inputs in [-1, 1) from a multiplicative hash of the index and `seed`; every
/// value at an index ≡ `phase` (mod `period`) multiplied by `scale`, so that the rounding
/// blocks' scales differ.
pub fn hashed_inputs(n: usize, seed: u32, period: usize, phase: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0;
            if i % period == phase {
                v * scale
            } else {
                v
            }
        })
        .collect()
}

/// The rounding tests' inputs: [`hashed_inputs`] with every 97th value (from the 6th) × 9.
pub fn spiky_inputs(n: usize, seed: u32) -> Vec<f32> {
    hashed_inputs(n, seed, 97, 5, 9.0)
}

/// Decode rows of the CPU backend and the GPU backend on `ctx` for `shape` × `mix` written as a
/// GGUF file: the last logits of a 5-token prompt's pass are dropped, then 40 one-token
/// forwards (positions 5 … 44), context `n_ctx`.
pub fn cpu_and_gpu_rows(
    ctx: Arc<GpuContext>,
    shape: Shape,
    mix: &str,
    n_ctx: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    use ggufq::gpu::GpuBackend;
    use ggufq::model::cpu::CpuBackend;
    use ggufq::model::{Backend, LogitsWanted, Model};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{mix}.gguf"));
    SynthSource::new(shape, Mix::parse(mix).unwrap(), mix)
        .unwrap()
        .write_gguf(&path)
        .unwrap();
    let model = Model::open(&path).unwrap();
    let mut cpu = CpuBackend::new(&model, n_ctx, 1).unwrap();
    let mut gpu = GpuBackend::load(ctx, &path, model.hparams.clone(), n_ctx, 64).unwrap();
    let rows = |b: &mut dyn Backend| -> Vec<Vec<f32>> {
        let prompt: Vec<u32> = (0..5u32).map(|i| (i * 37 + 11) % 500).collect();
        let mut l = Vec::new();
        b.forward(&prompt, LogitsWanted::Last, &mut l).unwrap();
        (0..40u32)
            .map(|i| {
                b.forward(&[(i * 53 + 7) % 500], LogitsWanted::Last, &mut l)
                    .unwrap();
                l.clone()
            })
            .collect()
    };
    (rows(&mut cpu), rows(&mut gpu))
}

/// A host timeline's checks common to every recorder: each kept call's marks in
/// [`MARKS`](ggufq::gpu::profile::MARKS) order, and with GPU timestamps `n` passes, each
/// ending after it begins and beginning after the previous one ends.
#[allow(dead_code)]
pub fn assert_timeline_in_order(
    tl: &ggufq::gpu::profile::HostTimeline,
    n: usize,
    timestamps: bool,
    what: &str,
) {
    use ggufq::gpu::profile::MARKS;
    assert_eq!(tl.marks.len(), n, "{what}");
    for (i, m) in tl.marks.iter().enumerate() {
        for k in 1..MARKS.len() {
            assert!(
                m[k] >= m[k - 1],
                "{what}: call {i}: {} before {}",
                MARKS[k],
                MARKS[k - 1]
            );
        }
    }
    if timestamps {
        assert_eq!(tl.gpu.len(), n, "{what}");
        for (i, g) in tl.gpu.iter().enumerate() {
            assert!(g.1 >= g.0, "{what}: pass {i} ends before it begins: {g:?}");
            if i > 0 {
                assert!(
                    g.0 >= tl.gpu[i - 1].1,
                    "{what}: pass {i} begins before pass {} ends",
                    i - 1
                );
            }
        }
    }
}
