//! `ggufq bench --profile` for prompt batches: where an `n`-token forward (the batch graph,
//! as a pp test runs it) spends its time. GPU time per kernel role from timestamp queries
//! (every dispatch in its own compute pass) with the matrix roles' TFLOP/s, GPU time of the
//! whole forward pass (one pass, as the plain forward runs), and the wall time and CPU
//! phases of plain forwards.

use std::time::Instant;

use crate::error::{Error, Result};

use super::model::{GpuModel, Timestamps};

/// GPU time of one kernel role per prompt.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PromptRole {
    /// Role ("qkv", "attention", "actq", ...).
    pub role: String,
    /// Dispatches of this role per prompt.
    pub dispatches: usize,
    /// Mean GPU microseconds per prompt (sum over its dispatches).
    pub gpu_us: f64,
    /// Multiply-add FLOPs of its dispatches per prompt (0 for kernels without weights).
    pub flops: f64,
}

impl PromptRole {
    /// Achieved TFLOP/s (None for kernels without weights).
    pub fn tflops(&self) -> Option<f64> {
        (self.flops > 0.0 && self.gpu_us > 0.0).then(|| self.flops / (self.gpu_us * 1e6))
    }
}

/// The profile of prompt forwards of one model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PromptProfile {
    /// Tokens per prompt.
    pub tokens: usize,
    /// Prompts timed in each mode.
    pub reps: usize,
    /// Wall time of a plain forward of the prompt (µs).
    pub wall_us: f64,
    /// CPU phases of the plain forward per prompt (µs): prepare (embedding rows, token table,
    /// uploads), record, submit, wait for the GPU, read back.
    pub cpu_us: [f64; 5],
    /// GPU time of the whole forward pass (one pass, timestamps at its ends), µs.
    pub pass_us: f64,
    /// Sum of the per-dispatch GPU times (each dispatch in its own pass), µs.
    pub steps_us: f64,
    /// Per role, in order of first appearance.
    pub roles: Vec<PromptRole>,
}

/// Profile prompts of `tokens` tokens (sequence 0, positions 0 ..), `reps` of them in each
/// mode after one warm-up: plain (wall time), whole-pass timestamps, per-dispatch timestamps.
/// Overwrites the KV cache of sequence 0.
pub fn profile_prompt(model: &mut GpuModel, tokens: usize, reps: usize) -> Result<PromptProfile> {
    let reps = reps.max(1);
    if tokens == 0 || tokens > model.opts.n_batch || tokens > model.opts.n_ctx {
        return Err(Error::msg(format!(
            "a prompt profile of {tokens} tokens needs 1..={} tokens (batch {}, context {})",
            model.opts.n_batch.min(model.opts.n_ctx),
            model.opts.n_batch,
            model.opts.n_ctx
        )));
    }
    let nv = model.cfg.n_vocab as u64;
    let prompt = |seed: usize| -> Vec<(u32, u32, u32)> {
        (0..tokens)
            .map(|i| {
                let t = ((i + 31 * seed) as u64 * 2654435761) % nv;
                (t as u32, 0, i as u32)
            })
            .collect()
    };
    model.forward(&prompt(0), false)?;
    model.reset_cpu_times();
    let t = Instant::now();
    for r in 0..reps {
        model.forward(&prompt(r + 1), false)?;
    }
    let wall_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let cpu_us = model.cpu_times().per_call_us();
    let mut pass_ns = 0.0;
    for r in 0..reps {
        let (_, t) = model.forward_profiled(&prompt(r + 1), false, Timestamps::Pass)?;
        pass_ns += t.iter().sum::<f64>();
    }
    let roles_of = model.step_roles_for(tokens);
    let flops_of = model.step_flops_for(tokens);
    let mut r = 0;
    let roles: Vec<PromptRole> =
        super::profile::by_role(&roles_of, &flops_of, reps, "prompt profile", || {
            r += 1;
            model
                .forward_profiled(&prompt(r), false, Timestamps::PerStep)
                .map(|(_, t)| t)
        })?
        .into_iter()
        .map(|(role, dispatches, gpu_us, flops)| PromptRole {
            role,
            dispatches,
            gpu_us,
            flops,
        })
        .collect();
    Ok(PromptProfile {
        tokens,
        reps,
        wall_us,
        cpu_us,
        pass_us: pass_ns / 1e3 / reps as f64,
        steps_us: roles.iter().map(|r| r.gpu_us).sum(),
        roles,
    })
}

impl PromptProfile {
    /// Markdown report.
    pub fn to_markdown(&self, label: &str) -> String {
        let flops: f64 = self.roles.iter().map(|r| r.flops).sum();
        let mut s = format!(
            "Prompt profile of {label} ({} tokens, {} prompts per mode)\n\n\
             wall {:.0} µs/prompt ({:.0} t/s); CPU: prepare {:.0}, record {:.0}, submit {:.0}, \
             wait {:.0}, read {:.0} µs; GPU: whole pass {:.0} µs ({:.0} t/s, {:.1} TFLOP/s), \
             sum of dispatches {:.0} µs\n\n\
             | role | dispatches | GPU µs/prompt | % of dispatches | GFLOP | TFLOP/s |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.tokens,
            self.reps,
            self.wall_us,
            self.tokens as f64 * 1e6 / self.wall_us.max(1e-9),
            self.cpu_us[0],
            self.cpu_us[1],
            self.cpu_us[2],
            self.cpu_us[3],
            self.cpu_us[4],
            self.pass_us,
            self.tokens as f64 * 1e6 / self.pass_us.max(1e-9),
            flops / (self.pass_us.max(1e-9) * 1e6),
            self.steps_us
        );
        for r in &self.roles {
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
                r.role,
                r.dispatches,
                r.gpu_us,
                100.0 * r.gpu_us / self.steps_us.max(1e-9),
                r.flops / 1e9,
                r.tflops()
                    .map(|t| format!("{t:.1}"))
                    .unwrap_or_else(|| "-".into()),
            ));
        }
        s
    }
}
