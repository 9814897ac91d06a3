//! `ggufq bench --profile`: where a decode step's time goes. GPU time per kernel role from
//! timestamp queries (every dispatch in its own compute pass), GPU time of the whole forward
//! pass (one pass, as the plain forward runs), and the CPU phases of the plain forward
//! (prepare, record, submit, wait, read back).

use std::time::Instant;

use crate::error::{Error, Result};

use super::model::{GpuModel, Timestamps};

/// GPU time of one kernel role per forward call.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoleTime {
    /// Role ("qkv", "attention", ...).
    pub role: String,
    /// Dispatches of this role per forward call.
    pub dispatches: usize,
    /// Mean GPU microseconds per forward call (sum over its dispatches).
    pub gpu_us: f64,
    /// Weight bytes its dispatches read per forward call (0 for kernels without weights).
    pub weight_bytes: u64,
}

impl RoleTime {
    /// Achieved weight bandwidth in GB/s (None for kernels without weights).
    pub fn gbps(&self) -> Option<f64> {
        (self.weight_bytes > 0 && self.gpu_us > 0.0)
            .then(|| self.weight_bytes as f64 / (self.gpu_us * 1e3))
    }
}

/// The profile of decode steps of one model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeProfile {
    /// Tokens timed in each mode.
    pub tokens: usize,
    /// Wall time per token of the plain forward (µs).
    pub wall_us: f64,
    /// CPU phases of the plain forward per token (µs): prepare, record, submit, wait, read.
    pub cpu_us: [f64; 5],
    /// GPU time of the whole forward pass per token (one pass, timestamps at its ends), µs.
    pub pass_us: f64,
    /// Sum of the per-dispatch GPU times per token (each dispatch in its own pass), µs.
    pub steps_us: f64,
    /// Per role, in order of first appearance.
    pub roles: Vec<RoleTime>,
}

/// Profile `tokens` decode steps of sequence 0 (positions 1 ..) in each mode: plain (wall and
/// CPU phases), whole-pass timestamps, and per-dispatch timestamps. Resets the sequence.
pub fn profile_decode(model: &mut GpuModel, tokens: usize) -> Result<DecodeProfile> {
    let tokens = tokens.max(1);
    let need = 1 + 3 * tokens;
    if need > model.opts.n_ctx {
        return Err(Error::msg(format!(
            "profiling {tokens} tokens per mode needs a context of {need} (have {})",
            model.opts.n_ctx
        )));
    }
    let nv = model.cfg.n_vocab as u32;
    let tok = |i: usize| ((i as u64 * 2654435761) % nv as u64) as u32;
    // Warm-up (compiles nothing new, fills caches): the first token and one of each mode.
    model.forward(&[(tok(0), 0, 0)], false)?;
    let mut pos = 1u32;
    model.reset_cpu_times();
    let t = Instant::now();
    for i in 0..tokens {
        model.forward(&[(tok(i + 1), 0, pos)], false)?;
        pos += 1;
    }
    let wall_us = t.elapsed().as_secs_f64() * 1e6 / tokens as f64;
    let cpu_us = model.cpu_times().per_call_us();
    let mut pass_ns = 0.0;
    for i in 0..tokens {
        let (_, t) = model.forward_profiled(&[(tok(i + 7), 0, pos)], false, Timestamps::Pass)?;
        pass_ns += t.iter().sum::<f64>();
        pos += 1;
    }
    let roles_of = model.step_roles();
    let bytes_of = model.step_weight_bytes();
    let mut calls = 0;
    let roles: Vec<RoleTime> = by_role(&roles_of, &bytes_of, tokens, "profile", || {
        calls += 1;
        let t = model.forward_profiled(&[(tok(calls + 12), 0, pos)], false, Timestamps::PerStep);
        pos += 1;
        t.map(|(_, t)| t)
    })?
    .into_iter()
    .map(|(role, dispatches, gpu_us, weight_bytes)| RoleTime {
        role,
        dispatches,
        gpu_us,
        weight_bytes,
    })
    .collect();
    Ok(DecodeProfile {
        tokens,
        wall_us,
        cpu_us,
        pass_us: pass_ns / 1e3 / tokens as f64,
        steps_us: roles.iter().map(|r| r.gpu_us).sum(),
        roles,
    })
}

impl DecodeProfile {
    /// Markdown report.
    pub fn to_markdown(&self, label: &str, peak_gbps: Option<f64>) -> String {
        let mut s = format!(
            "Decode profile of {label} ({} tokens per mode)\n\n\
             wall {:.1} µs/token; CPU: prepare {:.1}, record {:.1}, submit {:.1}, wait {:.1}, read {:.1} µs; \
             GPU: whole pass {:.1} µs, sum of dispatches {:.1} µs\n\n\
             | role | dispatches | GPU µs/token | % of dispatches | weight MB | GB/s | % peak |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.tokens,
            self.wall_us,
            self.cpu_us[0],
            self.cpu_us[1],
            self.cpu_us[2],
            self.cpu_us[3],
            self.cpu_us[4],
            self.pass_us,
            self.steps_us
        );
        for r in &self.roles {
            let gb = r.gbps();
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
                r.role,
                r.dispatches,
                r.gpu_us,
                100.0 * r.gpu_us / self.steps_us.max(1e-9),
                r.weight_bytes as f64 / 1e6,
                gb.map(|g| format!("{g:.0}")).unwrap_or_else(|| "-".into()),
                match (gb, peak_gbps) {
                    (Some(g), Some(p)) => format!("{:.1}", 100.0 * g / p),
                    _ => "-".into(),
                }
            ));
        }
        s
    }
}

/// Run `pass` (one forward with every dispatch timed: nanoseconds per dispatch) `runs` times and
/// group the mean times by role, in first-seen order: (role, dispatches, GPU µs per run, sum of
/// the dispatches' `extra`). `what` names the profile in the error for a pass whose timestamp
/// count does not match `roles`.
pub(crate) fn by_role<T: Copy + std::ops::AddAssign>(
    roles: &[&'static str],
    extra: &[T],
    runs: usize,
    what: &str,
    mut pass: impl FnMut() -> Result<Vec<f64>>,
) -> Result<Vec<(String, usize, f64, T)>> {
    let mut sum = vec![0.0f64; roles.len()];
    for _ in 0..runs {
        let t = pass()?;
        if t.len() != sum.len() {
            return Err(Error::msg(format!(
                "{what}: {} timestamps for {} dispatches",
                t.len(),
                sum.len()
            )));
        }
        for (s, v) in sum.iter_mut().zip(&t) {
            *s += v;
        }
    }
    let mut out: Vec<(String, usize, f64, T)> = Vec::new();
    for ((role, ns), x) in roles.iter().zip(&sum).zip(extra) {
        let us = ns / 1e3 / runs.max(1) as f64;
        match out.iter_mut().find(|r| r.0 == *role) {
            Some(r) => {
                r.1 += 1;
                r.2 += us;
                r.3 += *x;
            }
            None => out.push((role.to_string(), 1, us, *x)),
        }
    }
    Ok(out)
}

/// Marks of a one-token forward call in [`HostTimeline`] order: call start, prepared
/// (embedding row, token table, uploads), recorded (or the pre-recorded buffer taken),
/// submitted, next forward pre-recorded, read-back map callback fired, wait returned,
/// logits read.
pub const MARKS: [&str; 8] = [
    "start",
    "prepared",
    "recorded",
    "submitted",
    "next recorded",
    "map callback",
    "wait returned",
    "read",
];

/// What [`GpuModel::set_host_timeline`](super::GpuModel::set_host_timeline) records per
/// one-token forward call (the calls of a plain `forward`, not the profiled ones).
pub(crate) struct TimelineRec {
    /// Calls kept (ring; the GPU timestamps have as many slots).
    pub cap: u32,
    /// One-token calls recorded so far.
    pub calls: u64,
    /// CPU marks of the call in each slot.
    pub marks: Vec<[std::time::Instant; 8]>,
    /// Pass begin/end timestamps, two per slot (None without timestamp queries).
    pub gpu: Option<(wgpu::QuerySet, wgpu::Buffer)>,
}

/// Byte stride of one call's resolved pass timestamps (the resolve offset alignment).
pub(crate) const TL_STRIDE: u64 = 256;

impl TimelineRec {
    /// A recorder of the last `cap` calls (≤ 2048, the query set's limit), with GPU pass
    /// timestamps when the adapter has them.
    pub(crate) fn new(ctx: &super::GpuContext, cap: u32) -> TimelineRec {
        let cap = cap.clamp(2, wgpu::QUERY_SET_MAX_QUERIES / 2);
        let gpu = ctx.facts.timestamps.then(|| {
            (
                ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("host timeline"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * cap,
                }),
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("host timeline resolve"),
                    size: TL_STRIDE * cap as u64,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
            )
        });
        let now = std::time::Instant::now();
        TimelineRec {
            cap,
            calls: 0,
            marks: vec![[now; 8]; cap as usize],
            gpu,
        }
    }
}

/// The host timeline of the last one-token forward calls: CPU marks ([`MARKS`]) in µs
/// from the first kept call's start, and each call's GPU pass (begin, end) in µs of the GPU
/// clock when the adapter has timestamps.
#[derive(Clone, Debug, Default)]
pub struct HostTimeline {
    /// Per call, in call order.
    pub marks: Vec<[f64; 8]>,
    /// Per call, the pass's GPU begin and end (µs, GPU clock; its own origin).
    pub gpu: Vec<(f64, f64)>,
}

/// One row of [`HostTimeline::summary`]: mean, median and largest µs per token, and the µs over
/// the median.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Phase {
    /// What the interval is.
    pub name: String,
    /// Mean µs.
    pub mean_us: f64,
    /// Median µs.
    pub p50_us: f64,
    /// Largest µs.
    pub max_us: f64,
    /// µs over the median, summed over the calls (where a slow stretch of calls spent its
    /// time: e.g. GPU idle gaps or slower passes).
    pub excess_us: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

impl HostTimeline {
    /// Per-token intervals, mean and median: the CPU phases of a call, the time between
    /// calls (the caller's own work), the wall period; with GPU timestamps the pass, the
    /// GPU's idle gap between two passes, and, with the clocks aligned on the fastest
    /// wake-up (GPU pass end → map callback taken as 0 for the call where it is smallest),
    /// how long after its pass each callback fired and how long after its submit each
    /// pass began.
    pub fn summary(&self) -> Vec<Phase> {
        let m = &self.marks;
        let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
        for i in 1..MARKS.len() {
            rows.push((
                format!("{} → {}", MARKS[i - 1], MARKS[i]),
                m.iter().map(|k| k[i] - k[i - 1]).collect(),
            ));
        }
        let next = |f: &dyn Fn(&[f64; 8], &[f64; 8]) -> f64| -> Vec<f64> {
            m.windows(2).map(|w| f(&w[0], &w[1])).collect()
        };
        rows.push((
            "read → next start (caller)".into(),
            next(&|a, b| b[0] - a[7]),
        ));
        rows.push((
            "wall period (start → next start)".into(),
            next(&|a, b| b[0] - a[0]),
        ));
        if self.gpu.len() == m.len() && !m.is_empty() {
            let g = &self.gpu;
            rows.push(("GPU pass".into(), g.iter().map(|p| p.1 - p.0).collect()));
            rows.push((
                "GPU idle between passes".into(),
                g.windows(2).map(|w| w[1].0 - w[0].1).collect(),
            ));
            // CPU = GPU + off; the smallest (callback − pass end) is taken as off.
            let off = m
                .iter()
                .zip(g)
                .map(|(k, p)| k[5] - p.1)
                .fold(f64::INFINITY, f64::min);
            rows.push((
                "GPU pass end → map callback (aligned)".into(),
                m.iter().zip(g).map(|(k, p)| k[5] - (p.1 + off)).collect(),
            ));
            rows.push((
                "submitted → GPU pass begin (aligned)".into(),
                m.iter().zip(g).map(|(k, p)| p.0 + off - k[3]).collect(),
            ));
        }
        rows.into_iter()
            .map(|(name, v)| {
                let f: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
                let p50 = median(&f);
                Phase {
                    name,
                    mean_us: f.iter().sum::<f64>() / f.len().max(1) as f64,
                    p50_us: p50,
                    max_us: f.iter().copied().fold(f64::NAN, f64::max),
                    excess_us: f.iter().map(|x| (x - p50).max(0.0)).sum(),
                }
            })
            .collect()
    }

    /// Markdown table of [`summary`](Self::summary).
    pub fn to_markdown(&self, label: &str) -> String {
        let mut s = format!(
            "Host timeline of {label} ({} one-token calls)\n\n| interval | mean µs | p50 µs | max µs | Σ over p50 µs |\n| --- | ---: | ---: | ---: | ---: |\n",
            self.marks.len()
        );
        for p in self.summary() {
            s.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
                p.name, p.mean_us, p.p50_us, p.max_us, p.excess_us
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_timeline_summary_takes_intervals_gaps_and_aligned_clocks() {
        // Three calls 1000 µs apart; phases of 1, 2, ..., 7 µs; GPU passes of 900 µs that
        // begin 50 µs after the submit (GPU clock 10 000 µs behind) and end 5, 3, 9 µs
        // before each callback.
        let mut marks = Vec::new();
        let mut gpu = Vec::new();
        for (i, wake) in [5.0, 3.0, 9.0].into_iter().enumerate() {
            let t0 = 1000.0 * i as f64;
            let mut m = [t0; 8];
            for k in 1..8 {
                m[k] = m[k - 1] + k as f64;
            }
            // The callback waits for the pass: submitted (t0 + 6) + 50 + 900 + wake.
            m[5] = t0 + 6.0 + 950.0 + wake;
            m[6] = m[5] + 6.0;
            m[7] = m[6] + 7.0;
            marks.push(m);
            gpu.push((t0 + 56.0 - 10_000.0, t0 + 956.0 - 10_000.0));
        }
        let tl = HostTimeline { marks, gpu };
        let s = tl.summary();
        let get = |name: &str| s.iter().find(|p| p.name == name).unwrap().clone();
        assert_eq!(get("start → prepared").mean_us, 1.0);
        assert_eq!(get("recorded → submitted").p50_us, 3.0);
        assert_eq!(get("wall period (start → next start)").mean_us, 1000.0);
        assert_eq!(get("GPU pass").p50_us, 900.0);
        assert_eq!(get("GPU idle between passes").mean_us, 100.0);
        // Wake-ups of 5, 3, 9 µs (aligned 2, 0, 6): the largest 6, 4 over the median of 2.
        let wake = get("GPU pass end → map callback (aligned)");
        assert_eq!((wake.max_us, wake.excess_us), (6.0, 4.0));
        // Aligned on the fastest wake-up (3 µs): 2, 0, 6 µs after it; launch 50 + 3.
        assert_eq!(wake.p50_us, 2.0);
        let launch = get("submitted → GPU pass begin (aligned)");
        assert!((launch.mean_us - 53.0).abs() < 1e-9, "{launch:?}");
        // Without GPU timestamps only the CPU rows.
        let cpu = HostTimeline {
            marks: tl.marks.clone(),
            gpu: Vec::new(),
        };
        assert_eq!(cpu.summary().len(), MARKS.len() + 1);
        assert!(cpu
            .to_markdown("m")
            .contains("| start → prepared | 1.0 | 1.0 | 1.0 | 0 |"));
    }
}

/// What one role's dispatches cost inside the pipelined decode pass (`ggufq bench
/// --step-costs`): the p50 one-token time without them against the whole graph's.
#[derive(Clone, Debug)]
pub struct StepCost {
    /// The role, or several joined by `+`.
    pub role: String,
    /// Its dispatches per token.
    pub dispatches: usize,
    /// p50 wall µs per one-token forward with those dispatches left out.
    pub p50_without_us: f64,
}

/// [`step_costs`]' result.
#[derive(Clone, Debug)]
pub struct StepCosts {
    /// Timed one-token forwards per setting.
    pub tokens: usize,
    /// p50 wall µs per one-token forward of the whole graph (both of its runs).
    pub p50_us: f64,
    pub rows: Vec<StepCost>,
}

/// The roles [`step_costs`] groups as latency-bound (no weights): the normalisations, the
/// decode attention and the roundings.
const LATENCY_ROLES: &[&str] = &["norm_q8", "attention", "actq", "attn_out_q"];

/// Time `tokens` one-token forwards of sequence 0 (positions 0 ..) with the whole decode graph,
/// then with each role of it that [`super::kernels::SKIPPABLE_ROLES`] names left out, then the
/// latency-bound roles together, then the whole graph again: p50 wall time per token of each.
/// The outputs of the runs with roles left out are wrong (timing only); the model's role mask
/// is restored afterwards.
pub fn step_costs(model: &mut GpuModel, tokens: usize) -> Result<StepCosts> {
    use super::kernels::{skip_role_bits, SKIPPABLE_ROLES};
    let tokens = tokens.max(1);
    if tokens > model.opts.n_ctx {
        return Err(Error::msg(format!(
            "step costs over {tokens} tokens need a context of {tokens} (have {})",
            model.opts.n_ctx
        )));
    }
    let saved = model.skip_roles();
    let nv = model.cfg.n_vocab as u64;
    let roles = model.step_roles();
    let count = |names: &[&str]| roles.iter().filter(|r| names.contains(r)).count();
    let mut settings: Vec<(String, usize)> = Vec::new();
    for r in SKIPPABLE_ROLES {
        let n = count(&[r]);
        if n > 0 {
            settings.push((r.to_string(), n));
        }
    }
    let lat: Vec<&str> = LATENCY_ROLES
        .iter()
        .copied()
        .filter(|r| count(&[r]) > 0)
        .collect();
    if lat.len() > 1 {
        settings.push((lat.join("+"), count(&lat)));
    }
    let run = |model: &mut GpuModel, bits: u32| -> Result<Vec<f64>> {
        model.set_skip_roles(bits);
        let mut us = Vec::with_capacity(tokens);
        for i in 0..tokens + 4 {
            let tok = ((i as u64 * 2654435761) % nv) as u32;
            let t = Instant::now();
            model.forward(&[(tok, 0, (i % tokens) as u32)], false)?;
            if i >= 4 {
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(us)
    };
    let p50 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let out = (|| -> Result<StepCosts> {
        let mut base = run(model, 0)?;
        let mut rows = Vec::new();
        for (name, dispatches) in &settings {
            let bits = skip_role_bits(&name.replace('+', ","));
            rows.push(StepCost {
                role: name.clone(),
                dispatches: *dispatches,
                p50_without_us: p50(run(model, bits)?),
            });
        }
        base.extend(run(model, 0)?);
        Ok(StepCosts {
            tokens,
            p50_us: p50(base),
            rows,
        })
    })();
    model.set_skip_roles(saved);
    out
}

impl StepCosts {
    /// Markdown report: per role, its dispatches, the p50 token without them, and the
    /// difference per token and per dispatch.
    pub fn to_markdown(&self, label: &str) -> String {
        let mut s = format!(
            "Step costs of {label} inside the decode pass ({} one-token forwards per setting, p50 {:.1} µs/token with every dispatch; each row leaves that role's dispatches out, timing only)\n\n\
             | role | dispatches | p50 µs/token without | µs/token | µs/dispatch | % of token |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.tokens, self.p50_us
        );
        for r in &self.rows {
            let d = self.p50_us - r.p50_without_us;
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
                r.role,
                r.dispatches,
                r.p50_without_us,
                d,
                d / r.dispatches.max(1) as f64,
                100.0 * d / self.p50_us.max(1e-9)
            ));
        }
        s
    }
}
