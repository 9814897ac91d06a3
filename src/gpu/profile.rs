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
