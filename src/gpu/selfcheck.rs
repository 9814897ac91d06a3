//! A quick self-check of the prompt-path kernels on the adapter at hand (`ggufq bench
//! --kernel-check`): the tiled mat-mat kernel (cooperative matrices where the adapter has
//! them, which no CI adapter has) against CPU dequantization for every type, and a tiny
//! synthetic model's prompt forward (mat-mat + tiled attention) against its token-by-token
//! decode (mat-vec + decode attention), which share no kernel; the prompt path's GPU
//! embedding look-up against CPU dequantization for every type; and the prompt attention
//! kernels (tiled f32, and flash attention on cooperative matrices where the adapter has
//! them) on their own against an f64 CPU reference and against each other.

use std::sync::Arc;

use crate::error::Result;
use crate::quant::GgmlType;

use super::device::GpuContext;
use super::kernels::{attention_key, attention_tile, matmat_tolerance, KernelKey, Kernels};
use super::model::{GpuModel, ModelOptions};
use super::ops::{check_against_cpu, MatRunner};
use super::source::{Mix, Shape, SynthSource};

/// Every type the GPU kernels read.
const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

/// Tolerance of a prompt forward against token-by-token decode: f16 inputs on cooperative
/// matrices and the activation rounding (a rounding step that lands on the other side moves a
/// logit by up to ~2 %); a wrong kernel is off by the logits' whole scale.
const MODEL_TOL: f64 = 0.05;

/// Tolerance of a prompt attention output against [`attention_reference`] and of the two
/// attention kernels against each other (largest difference relative to the largest
/// output): the inputs are f16 values, so only f32 summation order and the odd f16 rounding
/// of a probability that the GPU's `exp` puts on the other side differ (~1e-4); a wrong
/// mask, softmax or head mapping is off by the outputs' scale.
pub const ATTN_TOL: f64 = 2e-3;

/// Tolerance of the GPU embedding rows against CPU dequantization: the same operations
/// (exact for one-product types; a fused multiply-add may move the last bit of the others).
const EMBED_TOL: f64 = 1e-6;

/// Result of [`self_check`]: one line per check, and whether all passed.
#[derive(Clone, Debug)]
pub struct SelfCheck {
    /// "what: measured (limit) ok|FAILED" lines.
    pub lines: Vec<String>,
    /// Every check within its limit.
    pub ok: bool,
}

/// Run the checks on `ctx`.
pub fn self_check(ctx: &Arc<GpuContext>) -> Result<SelfCheck> {
    let mut lines = Vec::new();
    let mut ok = true;
    let mut runner = MatRunner::new(ctx);
    let tol = matmat_tolerance(ctx);
    for name in TYPES {
        let ty = GgmlType::from_name(name)
            .ok_or_else(|| crate::error::Error::msg(format!("unknown type {name}")))?;
        // Partial tiles in both directions, one and several K stages and token tiles.
        for (rows, cols, n_tok) in [(70usize, 256usize, 67usize), (130, 512, 300)] {
            let e = check_against_cpu(ctx, &mut runner, ty, rows, cols, n_tok, 0, 1)?;
            let pass = e < tol;
            ok &= pass;
            lines.push(format!(
                "mat-mat {name} {rows}x{cols} x {n_tok} tokens: rel err {e:.2e} (limit {tol:.0e}) {}",
                if pass { "ok" } else { "FAILED" }
            ));
        }
    }
    for name in TYPES {
        let ty = GgmlType::from_name(name)
            .ok_or_else(|| crate::error::Error::msg(format!("unknown type {name}")))?;
        let e = embed_vs_cpu(ctx, ty)?;
        let pass = e <= EMBED_TOL;
        ok &= pass;
        lines.push(format!(
            "embedding rows {name}: rel err {e:.2e} (limit {EMBED_TOL:.0e}) {}",
            if pass { "ok" } else { "FAILED" }
        ));
    }
    for mix in ["q4_k_m", "q8_0"] {
        let (err, agree, n) = prompt_vs_decode(ctx, mix)?;
        let pass = err < MODEL_TOL && agree * 10 >= n * 9;
        ok &= pass;
        lines.push(format!(
            "tiny {mix}: prompt vs decode logits rel err {err:.2e} (limit {MODEL_TOL}), top-1 {agree}/{n} {}",
            if pass { "ok" } else { "FAILED" }
        ));
    }
    let scalar = |hd: u32| -> Result<(KernelKey, u32)> {
        let (qt, kb) = attention_tile(hd, ctx.facts.shared_mem, ctx.tune.attn_qt)?;
        Ok((KernelKey::Attention { hd, qt, kb }, qt))
    };
    for hd in [64u32, 128] {
        let case = AttnCase::mixed(hd);
        let data = case.data(11 + hd as u64);
        let want = attention_reference(&case, &data);
        let (skey, sqt) = scalar(hd)?;
        let a = run_attention(ctx, &skey, sqt, &case, &data)?;
        let e = rel_err(&a, &want);
        let pass = e < ATTN_TOL;
        ok &= pass;
        lines.push(format!(
            "attention f32 tiles hd {hd}, {} tokens of 3 sequences: rel err vs CPU {e:.2e} (limit {ATTN_TOL:.0e}) {}",
            case.tokens.len(),
            if pass { "ok" } else { "FAILED" }
        ));
        let (key, qt) = attention_key(ctx, hd)?;
        if key == skey {
            lines.push(format!(
                "attention cooperative matrices hd {hd}: not used on this adapter (GGUFQ_ATTN_COOP, cooperative matrices, workgroup memory)"
            ));
            continue;
        }
        let b = run_attention(ctx, &key, qt, &case, &data)?;
        let e = rel_err(&b, &want);
        let e2 = rel_err(&b, &a);
        let pass = e < ATTN_TOL && e2 < ATTN_TOL;
        ok &= pass;
        // Where it is worst (batch token, head): a wrong tile row or head shows there.
        let worst = b
            .iter()
            .zip(&want)
            .enumerate()
            .max_by(|x, y| {
                let d = |p: (&f32, &f32)| {
                    if p.0.is_finite() {
                        (p.0 - p.1).abs()
                    } else {
                        f32::INFINITY
                    }
                };
                d(x.1).total_cmp(&d(y.1))
            })
            .map_or(0, |w| w.0);
        let row = case.n_head * case.hd;
        let mut detail = String::new();
        if !pass {
            // Which rows of the 64-token tiles and which tiles are off: a layout or
            // synchronisation fault shows as a pattern there.
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            let (mut by_row, mut by_tile) = ([0f32; 4], vec![0f32; case.tokens.len().div_ceil(64)]);
            let mut bad = 0usize;
            for (i, (x, y)) in b.iter().zip(&want).enumerate() {
                let d = if x.is_finite() {
                    (x - y).abs() / scale
                } else {
                    f32::INFINITY
                };
                bad += usize::from(!x.is_finite());
                let t = i / row;
                by_row[t % 64 / 16] = by_row[t % 64 / 16].max(d);
                by_tile[t / 64] = by_tile[t / 64].max(d);
            }
            detail = format!(
                ", non-finite {bad} of {}, by tile row block {by_row:.1e}, by tile {by_tile:.1e}",
                b.len(),
                by_row = Fmt(&by_row),
                by_tile = Fmt(&by_tile),
            );
        }
        lines.push(format!(
            "attention cooperative matrices hd {hd}: rel err vs CPU {e:.2e}, vs f32 tiles {e2:.2e} (limit {ATTN_TOL:.0e}), worst at token {} head {}{detail} {}",
            worst / row,
            worst % row / case.hd,
            if pass { "ok" } else { "FAILED" }
        ));
    }
    Ok(SelfCheck { lines, ok })
}

/// A list of errors as "[1.0e-4, ...]".
struct Fmt<'a>(&'a [f32]);

impl std::fmt::LowerExp for Fmt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<String> = self.0.iter().map(|x| format!("{x:.1e}")).collect();
        write!(f, "[{}]", v.join(", "))
    }
}

/// Largest |a − b| relative to the largest |b| (infinite when a has a non-finite value or
/// the lengths differ).
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let d = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    d / scale.max(1e-30)
}

/// A stand-alone prompt attention problem: heads, the KV cache's shape and the batch's
/// (sequence, position) per token.
#[derive(Clone, Debug)]
pub struct AttnCase {
    /// Query heads.
    pub n_head: usize,
    /// KV heads (divides `n_head`).
    pub n_kv: usize,
    /// Head size.
    pub hd: usize,
    /// Cache positions per sequence.
    pub n_ctx: usize,
    /// Sequences in the cache.
    pub n_seq: usize,
    /// (sequence, position) of every batch token.
    pub tokens: Vec<(u32, u32)>,
}

/// Inputs of an [`AttnCase`], all f16 values (as RoPE and the KV store leave them).
#[derive(Clone, Debug)]
pub struct AttnData {
    /// Queries, `tokens × n_head·hd`.
    pub q: Vec<f32>,
    /// Keys, `n_seq × n_ctx × n_kv·hd` (every position filled).
    pub k: Vec<f32>,
    /// Values, same layout as `k`.
    pub v: Vec<f32>,
}

impl AttnCase {
    /// 8 query heads over 2 KV heads, head size `hd`, 3 sequences in one batch: 150 tokens of
    /// sequence 0 from position 0 (whole and diagonal key blocks), then 100 tokens
    /// alternating between sequence 1 (from position 40: earlier cache entries) and sequence
    /// 2 (from position 3), so that tiles of 16, 32 and 64 tokens hold two or three
    /// sequences, and a partial last tile.
    pub fn mixed(hd: u32) -> AttnCase {
        let mut tokens: Vec<(u32, u32)> = (0..150).map(|p| (0, p)).collect();
        for i in 0..50 {
            tokens.push((1, 40 + i));
            tokens.push((2, 3 + i));
        }
        AttnCase {
            n_head: 8,
            n_kv: 2,
            hd: hd as usize,
            n_ctx: 160,
            n_seq: 3,
            tokens,
        }
    }

    /// Deterministic pseudo-random inputs rounded to f16: queries and keys in ±2 (scores
    /// with a spread of a few units after the 1/√hd scale), values in ±1.
    pub fn data(&self, seed: u64) -> AttnData {
        let mut s = seed;
        let mut next = |amp: f32| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / (1u64 << 24) as f32;
            half::f16::from_f32((2.0 * u - 1.0) * amp).to_f32()
        };
        let nq = self.tokens.len() * self.n_head * self.hd;
        let nkv = self.n_seq * self.n_ctx * self.n_kv * self.hd;
        let q = (0..nq).map(|_| next(2.0)).collect();
        let k = (0..nkv).map(|_| next(2.0)).collect();
        let v = (0..nkv).map(|_| next(1.0)).collect();
        AttnData { q, k, v }
    }
}

/// The CPU backend's attention for `case` in f64: scores of f16 inputs, softmax with the
/// maximum subtracted, probabilities rounded to f16, their weighted sum of V.
/// Returns `tokens × n_head·hd`.
pub fn attention_reference(case: &AttnCase, d: &AttnData) -> Vec<f32> {
    let (hd, nh, nkv) = (case.hd, case.n_head, case.n_kv);
    let kv_ld = nkv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; case.tokens.len() * nh * hd];
    for (t, &(seq, pos)) in case.tokens.iter().enumerate() {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let q = &d.q[(t * nh + h) * hd..][..hd];
            let at = |p: usize| (seq as usize * case.n_ctx + p) * kv_ld + kvh * hd;
            let sc: Vec<f32> = (0..=pos as usize)
                .map(|p| {
                    let k = &d.k[at(p)..][..hd];
                    let s: f64 = q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                    s as f32 * scale
                })
                .collect();
            let mx = sc.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let e: Vec<f64> = sc.iter().map(|s| ((s - mx) as f64).exp()).collect();
            let inv = 1.0 / e.iter().sum::<f64>();
            let o = &mut out[(t * nh + h) * hd..][..hd];
            for (p, ep) in e.iter().enumerate() {
                let pr = half::f16::from_f32((ep * inv) as f32).to_f32() as f64;
                let v = &d.v[at(p)..][..hd];
                for (oi, vi) in o.iter_mut().zip(v) {
                    *oi = (*oi as f64 + pr * *vi as f64) as f32;
                }
            }
        }
    }
    out
}

/// Run the prompt attention kernel `key` (`qt` batch tokens per workgroup, from
/// [`attention_key`] or [`attention_tile`]) on `case` with inputs `d`. Returns
/// `tokens × n_head·hd`.
pub fn run_attention(
    ctx: &GpuContext,
    key: &KernelKey,
    qt: u32,
    case: &AttnCase,
    d: &AttnData,
) -> Result<Vec<f32>> {
    use super::buffers::{bind_buffers, f32_buffer, kv_buffer, scratch, uniform};
    use wgpu::util::DeviceExt;
    let n = case.tokens.len();
    let (nh, nkv, hd) = (case.n_head, case.n_kv, case.hd);
    if n == 0
        || d.q.len() != n * nh * hd
        || d.k.len() != case.n_seq * case.n_ctx * nkv * hd
        || d.v.len() != d.k.len()
        || nkv == 0
        || nh % nkv != 0
        || case
            .tokens
            .iter()
            .any(|&(s, p)| s as usize >= case.n_seq || p as usize >= case.n_ctx)
    {
        return Err(crate::error::Error::msg(format!(
            "attention case does not match its inputs: {} tokens, {nh} heads, {nkv} KV heads, head size {hd}",
            n
        )));
    }
    let (bgl, pl) = super::kernels::buffer_layouts(ctx, "attn", b"rrrwur");
    let mut kernels = Kernels::default();
    let pipe = kernels.get_with_layout(ctx, key, &pl)?;
    let qb = f32_buffer(ctx, "q", &d.q);
    let kb = kv_buffer(ctx, "k", &d.k);
    let vb = kv_buffer(ctx, "v", &d.v);
    let ob = scratch(ctx, "o", n * nh * hd);
    let ti: Vec<u32> = case.tokens.iter().flat_map(|&(s, p)| [s, p]).collect();
    let tb = ctx
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("tokens"),
            contents: bytemuck::cast_slice(&ti),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let p: [u32; 12] = [
        nh as u32,
        nkv as u32,
        hd as u32,
        case.n_ctx as u32,
        n as u32,
        (nh * hd) as u32,
        (nkv * hd) as u32,
        (nh * hd) as u32,
        (1.0 / (hd as f32).sqrt()).to_bits(),
        0,
        0,
        0,
    ];
    let ub = uniform(ctx, &p);
    let bg = bind_buffers(
        ctx,
        &bgl,
        &[(0, &qb), (1, &kb), (2, &vb), (3, &ob), (4, &ub), (5, &tb)],
    );
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(nh as u32, (n as u32).div_ceil(qt), 1);
    }
    ctx.queue.submit(Some(enc.finish()));
    ctx.read_f32(&ob, 0, n * nh * hd)
}

/// Rows of a 37 × 512 matrix of `ty` looked up on the GPU ([`super::embed::lookup_rows`],
/// first, last and repeated ids) against `dequantize_row`: largest difference relative to
/// the row's largest |value|.
fn embed_vs_cpu(ctx: &GpuContext, ty: GgmlType) -> Result<f64> {
    let (rows, cols) = (37usize, 512usize);
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(ty.id());
    let vals: Vec<f32> = (0..rows * cols)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * (1 + i / 32 % 5) as f32
        })
        .collect();
    let data = crate::quant::quantize_tensor(ty, &vals, cols, None)?;
    let ids = [0u32, 36, 5, 5, 17, 1, 30];
    let got = super::embed::lookup_rows(ctx, ty, &data, rows, cols, &ids)?;
    let rb = data.len() / rows;
    let mut worst = 0f64;
    let mut want = vec![0f32; cols];
    for (t, &id) in ids.iter().enumerate() {
        let r = id as usize * rb;
        crate::quant::dequantize_row(ty, data.get(r..r + rb).unwrap_or(&[]), &mut want)?;
        let row = got.get(t * cols..(t + 1) * cols).unwrap_or(&[]);
        if row.len() != cols {
            return Ok(f64::INFINITY);
        }
        let scale = want
            .iter()
            .fold(0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-30);
        let e = row
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        worst = worst.max(e / scale);
    }
    Ok(worst)
}

/// The tiny model's logits for a 40-token prompt in one forward (batch graph) and token by
/// token (decode graph): largest difference relative to the largest |logit|, and at how
/// many of the positions the top-1 tokens agree.
fn prompt_vs_decode(ctx: &Arc<GpuContext>, mix: &str) -> Result<(f64, usize, usize)> {
    let shape = Shape::named("tiny").ok_or_else(|| crate::error::Error::msg("no tiny shape"))?;
    let m =
        Mix::parse(mix).ok_or_else(|| crate::error::Error::msg(format!("unknown mix {mix}")))?;
    let src = SynthSource::new(shape, m, format!("check-{mix}"))?;
    let opts = ModelOptions {
        n_ctx: 64,
        n_batch: 64,
        n_seq: 1,
    };
    let mut a = GpuModel::load(ctx.clone(), &src, opts.clone())?;
    let mut b = GpuModel::load(ctx.clone(), &src, opts)?;
    let nv = a.cfg.n_vocab;
    let n = 40usize;
    let toks: Vec<(u32, u32, u32)> = (0..n)
        .map(|i| (((i as u64 * 2654435761) % nv as u64) as u32, 0, i as u32))
        .collect();
    let all = a.forward(&toks, true)?;
    let (mut err, mut scale, mut agree) = (0f64, 0f64, 0usize);
    let top = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|x| x.0)
    };
    for (i, &t) in toks.iter().enumerate() {
        let d = b.forward(&[t], false)?;
        let p = all.get(i * nv..(i + 1) * nv).unwrap_or(&[]);
        if p.len() != d.len() || p.iter().any(|v| !v.is_finite()) {
            return Ok((f64::INFINITY, 0, n));
        }
        for (x, y) in p.iter().zip(&d) {
            err = err.max((x - y).abs() as f64);
            scale = scale.max(y.abs() as f64);
        }
        agree += usize::from(top(p) == top(&d));
    }
    Ok((err / scale.max(1e-30), agree, n))
}

/// Decode steps of [`attn_lastwg_check`]: positions 0 … 299 in a context of 512, i.e. 1 to
/// 10 live chunks of 32 positions per head out of 16.
pub const LASTWG_CHECK_TOKENS: usize = 300;

/// The decode attention's last-workgroup epilogue (`Tune::attn_lastwg`) against the combine
/// dispatch on the model `src`: [`LASTWG_CHECK_TOKENS`] one-token forwards (positions 0, 1, …,
/// tokens from a fixed stream) with each, logits compared bit for bit (the epilogue runs the
/// combine's operations in the same order). The combine run also uses the session-6 code
/// (`Tune::actq_sub`, `Tune::actq_fastdiv`, `Tune::attn_live`, `Tune::attn_skip`,
/// `Tune::attn_pre` off), so the check covers the shortened tail (subgroup maxima, fast
/// division, live chunks, skipped empty chunks, K/V prefetch) of the epilogue and of the
/// `actq` dispatches as `ctx` is tuned. One model loaded at a time. Returns one
/// line and whether the logits were equal.
pub fn attn_lastwg_check(
    ctx: &Arc<GpuContext>,
    src: &dyn super::source::WeightSource,
) -> Result<(String, bool)> {
    let with = |lastwg: u32| {
        ctx.retuned(|t| {
            t.attn_lastwg = lastwg;
            if t.attn_split == 0 {
                t.attn_split = 32;
            }
            // The epilogue inside the QKV dispatch (`Tune::attn_wait`) with the combine's
            // chunks.
            t.attn_split_joint = Some(0);
            if lastwg == 0 {
                t.actq_sub = 0;
                t.actq_fastdiv = false;
                t.attn_live = 0;
                t.attn_skip = false;
                t.attn_pre = 0;
            }
        })
    };
    let opts = ModelOptions {
        n_ctx: 512,
        n_batch: 1,
        n_seq: 1,
    };
    let n = LASTWG_CHECK_TOKENS;
    let mut runs: Vec<(Vec<f32>, usize)> = Vec::new();
    for lastwg in [0u32, 1] {
        let mut m = GpuModel::load(with(lastwg), src, opts.clone())?;
        let nv = m.cfg.n_vocab as u64;
        let mut all = Vec::new();
        for p in 0..n {
            let tok = ((p as u64 * 2654435761 + 12345) % nv) as u32;
            all.extend(m.forward(&[(tok, 0, p as u32)], false)?);
        }
        runs.push((all, m.dispatches_per_token()));
    }
    let (a, b) = (&runs[0], &runs[1]);
    let nv = a.0.len() / n;
    let differ: Vec<usize> = (0..n)
        .filter(|&p| {
            a.0.get(p * nv..(p + 1) * nv)
                .zip(b.0.get(p * nv..(p + 1) * nv))
                .is_none_or(|(x, y)| x.iter().zip(y).any(|(u, v)| u.to_bits() != v.to_bits()))
        })
        .collect();
    let finite = a.0.iter().all(|v| v.is_finite());
    // Where the epilogue does not apply (no fused decode graph, head size not dividing 256)
    // both runs use the combine dispatch.
    let used = b.1 < a.1;
    let ok = differ.is_empty() && finite && a.0.len() == b.0.len();
    let line = format!(
        "decode attention last-workgroup epilogue{} vs combine dispatch (session-6 rounding), {n} tokens: {} of {n} positions differ{}, dispatches per token {} vs {}, logits finite {finite} {}",
        if used { "" } else { " (not used on this model)" },
        differ.len(),
        differ
            .first()
            .map(|p| format!(" (first at position {p})"))
            .unwrap_or_default(),
        b.1,
        a.1,
        if ok { "ok" } else { "FAILED" }
    );
    Ok((line, ok))
}

/// Stress check of the last-workgroup epilogues of the decode mat-vecs (`Tune::lw_actq`,
/// `Tune::lw_norm`) on a real model file: `n_tok` one-token decode steps of the model at
/// `path` with both epilogues on (access mode as `ctx` is tuned, `Tune::lw_atomic`), and
/// the same steps with both off (the separate rounding and NormQ8 dispatches) on the same
/// device, each fed the first model's greedy tokens. Every logit of every step must be equal bit for bit (a
/// stale read in a hand-off, or a counter not reset, changes them). Returns whether it
/// passed and a report line.
pub fn lastwg_decode_check(
    ctx: &Arc<GpuContext>,
    path: &std::path::Path,
    n_tok: usize,
) -> Result<(bool, String)> {
    let with = |on: bool| {
        ctx.retuned(|t| {
            t.lw_actq = on;
            t.lw_norm = on;
            // Both graphs with the NormQ8 and rounding dispatches the epilogues replace.
            t.normq8_graph();
        })
    };
    let on = with(true);
    let g = graphs_agree(&on, &with(false), path, n_tok)?;
    Ok((
        g.pass(),
        format!(
            "last-workgroup epilogues {}: {n_tok} decode steps, {} vs {} dispatches per token (access mode {}): {}",
            g.name, g.dispatches.0, g.dispatches.1, on.tune.lw_atomic, g.verdict()
        ),
    ))
}

/// The decode graph with the mat-vecs that build their own input (`Tune::mv_wait` = 7:
/// NormQ8 and the `ffn_down` rounding, early weight loads) against the dispatch graph,
/// greedy decoding of `n_tok` steps from token 1: every logit must be equal bit for bit.
pub fn mv_wait_decode_check(
    ctx: &Arc<GpuContext>,
    path: &std::path::Path,
    n_tok: usize,
) -> Result<(bool, String)> {
    // Both graphs with the NormQ8 and rounding dispatches the waiting mat-vecs replace.
    switch_check(ctx, path, n_tok, "waiting mat-vecs", |t, on| {
        t.mv_wait = if on { 7 } else { 0 };
        t.normq8_graph();
    })
}

/// The decode graph with the attention inside the QKV mat-vec's dispatch (`Tune::attn_wait`)
/// against the two dispatches, both with the coalesced exact-split scoring and the engine's
/// defaults otherwise ([`graphs_agree`]: the attention's own chunks in both), greedy
/// decoding of `n_tok` steps from token 1: every logit must be equal bit for bit.
pub fn attn_wait_decode_check(
    ctx: &Arc<GpuContext>,
    path: &std::path::Path,
    n_tok: usize,
) -> Result<(bool, String)> {
    // Both with the coalesced exact-split scoring (the joint kernel's measured form).
    switch_check(
        ctx,
        path,
        n_tok,
        "attention in the QKV dispatch",
        |t, on| {
            t.attn_wait = on;
            t.attn_coal_exact = true;
        },
    )
}

/// [`graphs_agree`] of the tunings `set(tune, true)` and `set(tune, false)` of `ctx`, with
/// the report line "`what` FILE: N decode steps, A vs B dispatches per token: verdict".
fn switch_check(
    ctx: &Arc<GpuContext>,
    path: &std::path::Path,
    n_tok: usize,
    what: &str,
    set: impl Fn(&mut super::kernels::Tune, bool),
) -> Result<(bool, String)> {
    let on = ctx.retuned(|t| set(t, true));
    let off = ctx.retuned(|t| set(t, false));
    let g = graphs_agree(&on, &off, path, n_tok)?;
    Ok((
        g.pass(),
        format!(
            "{what} {}: {n_tok} decode steps, {} vs {} dispatches per token: {}",
            g.name,
            g.dispatches.0,
            g.dispatches.1,
            g.verdict()
        ),
    ))
}

/// Greedy decoding on the GPU ([`GpuModel::decode_greedy`]: argmax on the GPU, passes queued
/// ahead of the read-back) against one `forward` call at a time with the argmax on the host,
/// `n_tok` steps from token 1 of the model at `path`: every chosen token and every logit must
/// be equal bit for bit. Returns whether it passed and a report line.
pub fn greedy_decode_check(
    ctx: &Arc<GpuContext>,
    path: &std::path::Path,
    n_tok: usize,
) -> Result<(bool, String)> {
    let src = super::source::GgufSource::open(path)?;
    let opts = ModelOptions {
        n_ctx: n_tok,
        n_batch: 1,
        n_seq: 1,
    };
    let mut m = GpuModel::load(ctx.clone(), &src, opts)?;
    let mut chain: Vec<(Vec<f32>, u32)> = Vec::with_capacity(n_tok);
    m.decode_greedy(1, 0, 0, n_tok, &mut |_, l, next| {
        chain.push((l.to_vec(), next));
        Ok(true)
    })?;
    let (mut bad_steps, mut bad_tokens, mut first_bad) = (0usize, 0usize, None);
    let mut tok = 1u32;
    for (pos, (cl, ct)) in chain.iter().enumerate() {
        let l = m.forward(&[(tok, 0, pos as u32)], false)?;
        tok = crate::model::greedy_token(&l);
        let same = l.len() == cl.len() && l.iter().zip(cl).all(|(a, b)| a.to_bits() == b.to_bits());
        if !same || tok != *ct {
            bad_steps += 1;
            bad_tokens += usize::from(tok != *ct);
            first_bad.get_or_insert(pos);
            // Feed the host's choice on: the chain's steps after it are compared as they are.
        }
    }
    let pass = bad_steps == 0 && chain.len() == n_tok;
    Ok((
        pass,
        format!(
            "greedy decoding on the GPU {}: {n_tok} steps against one call at a time: {bad_steps} steps differ ({bad_tokens} tokens){} {}",
            path.display(),
            first_bad.map_or(String::new(), |p| format!(", first at position {p}")),
            if pass { "ok" } else { "FAILED" }
        ),
    ))
}

/// Two decode graphs of one model compared step by step ([`graphs_agree`]).
struct Agreement {
    name: String,
    dispatches: (usize, usize),
    bad_steps: usize,
    first_bad: Option<usize>,
    worst: f32,
}

impl Agreement {
    fn pass(&self) -> bool {
        self.bad_steps == 0
    }

    fn verdict(&self) -> String {
        format!(
            "{} steps differ in any bit{} {}",
            self.bad_steps,
            self.first_bad.map_or(String::new(), |p| format!(
                " (first at position {p}, largest difference {:.3e})",
                self.worst
            )),
            if self.pass() { "ok" } else { "FAILED" }
        )
    }
}

/// Greedy decoding of `n_tok` steps from token 1 with the model at `path` loaded under two
/// tunings (the first one's choice of the next token), counting the steps whose logits
/// differ in any bit. Both keep the attention's own chunks inside the QKV dispatch
/// ([`Tune::attn_split_joint`](super::kernels::Tune::attn_split_joint) 0), so a graph with
/// the attention in that dispatch and one without add the same V partials.
fn graphs_agree(
    a_ctx: &Arc<GpuContext>,
    b_ctx: &Arc<GpuContext>,
    path: &std::path::Path,
    n_tok: usize,
) -> Result<Agreement> {
    let same_split = |c: &Arc<GpuContext>| c.retuned(|t| t.attn_split_joint = Some(0));
    let (a_ctx, b_ctx) = (&same_split(a_ctx), &same_split(b_ctx));
    let src = super::source::GgufSource::open(path)?;
    let opts = ModelOptions {
        n_ctx: n_tok + 1,
        n_batch: 1,
        n_seq: 1,
    };
    let mut a = GpuModel::load(a_ctx.clone(), &src, opts.clone())?;
    let mut b = GpuModel::load(b_ctx.clone(), &src, opts)?;
    let mut tok = 1u32;
    let (mut bad_steps, mut first_bad, mut worst) = (0usize, None, 0f32);
    for pos in 0..n_tok {
        let x = a.forward(&[(tok, 0, pos as u32)], false)?;
        let y = b.forward(&[(tok, 0, pos as u32)], false)?;
        let diff = x
            .iter()
            .zip(&y)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        if diff > 0 || x.len() != y.len() {
            bad_steps += 1;
            first_bad.get_or_insert(pos);
            worst = x
                .iter()
                .zip(&y)
                .fold(worst, |m, (p, q)| m.max((p - q).abs()));
        }
        tok = (0..x.len())
            .max_by(|&i, &j| x[i].total_cmp(&x[j]))
            .unwrap_or(0) as u32;
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    Ok(Agreement {
        name,
        dispatches: (a.dispatches_per_token(), b.dispatches_per_token()),
        bad_steps,
        first_bad,
        worst,
    })
}
