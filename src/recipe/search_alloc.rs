//! The budgeted allocation of `ggufq recipe search`: every decision unit (a tensor, or a pair
//! of tensors that must share a type) has a list of options, each with a size in bytes and a
//! predicted error; choose one option per unit so that the sizes add up to at most the budget
//! and the errors add up to as little as possible (a multiple-choice knapsack).
//!
//! Solved exactly by dynamic programming over the budget counted in *granules* of a fixed size
//! (each option's size rounded **up** to whole granules, so the real total never exceeds the
//! budget). The granule depends only on the options, not on the budget, so a larger budget can
//! only keep or lower the optimal error: the result is monotone in the budget.

/// One way to store a unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AllocOption {
    /// Bytes the unit takes with this option (alignment padding included).
    pub bytes: u64,
    /// Predicted error (additive over units; lower is better).
    pub err: f64,
}

/// The chosen option of every unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// Index into each unit's options.
    pub choice: Vec<usize>,
    /// Total bytes of the chosen options (exact, not rounded).
    pub bytes: u64,
    /// Total predicted error.
    pub err: f64,
}

/// Default number of granules the largest possible total is divided into.
pub const DEFAULT_GRANULES: u64 = 1 << 17;

/// Choose one option per unit with total bytes ≤ `budget` and the least total error.
/// Returns `None` when even the smallest options do not fit, or a unit has no option.
/// `granules` bounds the work (units × options × granules); sizes are rounded up to
/// `ceil(max_total / granules)` bytes.
pub fn allocate(units: &[Vec<AllocOption>], budget: u64, granules: u64) -> Option<Allocation> {
    if units.iter().any(|u| u.is_empty()) {
        return None;
    }
    // When every unit's least-error option (ties: the smaller) fits as it is, that is the
    // optimum whatever the rounding would say: a quantized source copied at its own size.
    let best: Vec<usize> = units
        .iter()
        .map(|u| {
            (0..u.len())
                .min_by(|&a, &b| {
                    u[a].err
                        .total_cmp(&u[b].err)
                        .then(u[a].bytes.cmp(&u[b].bytes))
                })
                .unwrap_or(0)
        })
        .collect();
    let best_bytes: u64 = units.iter().zip(&best).map(|(u, &c)| u[c].bytes).sum();
    if best_bytes <= budget {
        let err = units.iter().zip(&best).map(|(u, &c)| u[c].err).sum();
        return Some(Allocation {
            choice: best,
            bytes: best_bytes,
            err,
        });
    }
    let max_total: u64 = units
        .iter()
        .map(|u| u.iter().map(|o| o.bytes).max().unwrap_or(0))
        .sum();
    let g = max_total.div_ceil(granules.max(1)).max(1);
    let cost = |o: &AllocOption| o.bytes.div_ceil(g);
    // Each unit's cheapest cost is paid up front; the table covers the extra granules only.
    let min_costs: Vec<u64> = units
        .iter()
        .map(|u| u.iter().map(cost).min().unwrap_or(0))
        .collect();
    let base: u64 = min_costs.iter().sum();
    let cap = budget / g;
    if base > cap {
        // Rounding up rejects this budget, but the smallest options may still fit exactly:
        // then they are the answer (every other choice is larger). Keeps the monotonicity.
        let choice: Vec<usize> = units
            .iter()
            .map(|u| {
                (0..u.len())
                    .min_by(|&a, &b| {
                        u[a].bytes
                            .cmp(&u[b].bytes)
                            .then(u[a].err.total_cmp(&u[b].err))
                    })
                    .unwrap_or(0)
            })
            .collect();
        let bytes: u64 = units.iter().zip(&choice).map(|(u, &c)| u[c].bytes).sum();
        if bytes > budget {
            return None;
        }
        let err = units.iter().zip(&choice).map(|(u, &c)| u[c].err).sum();
        return Some(Allocation { choice, bytes, err });
    }
    let extra = usize::try_from(cap - base).ok()?;
    let max_extra: u64 = units
        .iter()
        .zip(&min_costs)
        .map(|(u, &m)| u.iter().map(cost).max().unwrap_or(0) - m)
        .sum();
    let width = extra.min(usize::try_from(max_extra).ok()?) + 1;
    // dp[b]: least error of the units so far using at most b extra granules.
    let mut dp = vec![0f64; width];
    let mut pick: Vec<Vec<u8>> = Vec::with_capacity(units.len());
    let mut next = vec![f64::INFINITY; width];
    for (u, &m) in units.iter().zip(&min_costs) {
        let mut p = vec![u8::MAX; width];
        next.iter_mut().for_each(|v| *v = f64::INFINITY);
        for (oi, o) in u.iter().enumerate().take(u8::MAX as usize) {
            let c = (cost(o) - m) as usize;
            if c >= width {
                continue;
            }
            for b in c..width {
                let v = dp[b - c] + o.err;
                if v < next[b] {
                    next[b] = v;
                    p[b] = oi as u8;
                }
            }
        }
        std::mem::swap(&mut dp, &mut next);
        pick.push(p);
    }
    // Backtrack from the full budget.
    let mut b = width - 1;
    if !dp[b].is_finite() {
        return None;
    }
    let mut choice = vec![0usize; units.len()];
    for ui in (0..units.len()).rev() {
        let oi = pick[ui][b] as usize;
        let o = units[ui].get(oi)?;
        choice[ui] = oi;
        b -= (cost(o) - min_costs[ui]) as usize;
    }
    let bytes = units.iter().zip(&choice).map(|(u, &c)| u[c].bytes).sum();
    let err = units.iter().zip(&choice).map(|(u, &c)| u[c].err).sum();
    Some(Allocation { choice, bytes, err })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(bytes: u64, err: f64) -> AllocOption {
        AllocOption { bytes, err }
    }

    /// A small deterministic pseudo-random instance.
    fn instance(seed: u64, n_units: usize) -> Vec<Vec<AllocOption>> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rnd = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f64 / (1u64 << 31) as f64
        };
        (0..n_units)
            .map(|_| {
                let n = 2 + (rnd() * 3.0) as usize;
                let mut bytes = 100 + (rnd() * 900.0) as u64;
                let mut err = 1.0 + rnd() * 10.0;
                (0..n)
                    .map(|_| {
                        let o = opt(bytes, err);
                        bytes += 50 + (rnd() * 500.0) as u64;
                        err *= 0.2 + rnd() * 0.7;
                        o
                    })
                    .collect()
            })
            .collect()
    }

    fn brute(units: &[Vec<AllocOption>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; units.len()];
        loop {
            let bytes: u64 = units.iter().zip(&idx).map(|(u, &i)| u[i].bytes).sum();
            let err: f64 = units.iter().zip(&idx).map(|(u, &i)| u[i].err).sum();
            if bytes <= budget && best.is_none_or(|b| err < b) {
                best = Some(err);
            }
            let mut k = 0;
            loop {
                if k == units.len() {
                    return best;
                }
                idx[k] += 1;
                if idx[k] < units[k].len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
        }
    }

    #[test]
    fn budget_is_respected_and_optimal_with_fine_granules() {
        for seed in 0..20 {
            let units = instance(seed, 5);
            let min: u64 = units.iter().map(|u| u[0].bytes).sum();
            let max: u64 = units.iter().map(|u| u.last().unwrap().bytes).sum();
            for step in 0..=8 {
                let budget = min + (max - min) * step / 8;
                let a = allocate(&units, budget, u64::MAX).expect("feasible");
                assert!(a.bytes <= budget, "seed {seed}: {} > {budget}", a.bytes);
                let b = brute(&units, budget).unwrap();
                assert!(
                    (a.err - b).abs() < 1e-9,
                    "seed {seed}: {} vs optimum {b}",
                    a.err
                );
            }
        }
    }

    #[test]
    fn coarse_granules_never_exceed_the_budget() {
        for seed in 0..20 {
            let units = instance(seed, 8);
            let max: u64 = units.iter().map(|u| u.last().unwrap().bytes).sum();
            for budget in (max / 3..max).step_by(97) {
                if let Some(a) = allocate(&units, budget, 64) {
                    assert!(a.bytes <= budget);
                    let brute_err = brute(&units, budget).unwrap();
                    assert!(a.err >= brute_err - 1e-9);
                }
            }
        }
    }

    #[test]
    fn error_is_monotone_in_the_budget() {
        let units = instance(7, 12);
        let min: u64 = units.iter().map(|u| u[0].bytes).sum();
        let max: u64 = units.iter().map(|u| u.last().unwrap().bytes).sum();
        let mut last = f64::INFINITY;
        let mut last_bytes = 0;
        for budget in (min..=max + 10).step_by(37) {
            let a = allocate(&units, budget, 256).expect("feasible");
            assert!(a.err <= last + 1e-12, "budget {budget}: {} > {last}", a.err);
            assert!(a.bytes <= budget);
            last = a.err;
            last_bytes = a.bytes;
        }
        // With room for the rounding of every unit, each takes its lowest-error option.
        let a = allocate(&units, 2 * max, 256).expect("feasible");
        assert!(a.err <= last + 1e-12);
        last = a.err;
        let best: f64 = units
            .iter()
            .map(|u| u.iter().map(|o| o.err).fold(f64::INFINITY, f64::min))
            .sum();
        assert!((last - best).abs() < 1e-9);
        assert!(last_bytes <= max);
    }

    #[test]
    fn infeasible_budget_and_empty_units() {
        let units = vec![vec![opt(100, 1.0), opt(200, 0.5)], vec![opt(50, 2.0)]];
        assert!(allocate(&units, 149, 1000).is_none());
        let a = allocate(&units, 150, 1000).unwrap();
        assert_eq!(a.choice, vec![0, 0]);
        let a = allocate(&units, 250, 1000).unwrap();
        assert_eq!(a.choice, vec![1, 0]);
        assert_eq!(a.bytes, 250);
        assert!(allocate(&[vec![opt(1, 1.0)], vec![]], 1000, 1000).is_none());
        assert_eq!(allocate(&[], 0, 1000).unwrap().choice, Vec::<usize>::new());
    }

    /// The least-error choice is taken when it fits exactly, even where rounding every size up
    /// to whole granules would reject it (a quantized source kept at exactly its own size).
    #[test]
    fn an_exact_fit_of_the_best_options_beats_the_rounding() {
        let units: Vec<Vec<AllocOption>> = (0..10)
            .map(|i| vec![opt(90 + i, 5.0), opt(101 + i, 0.0)])
            .collect();
        let exact: u64 = (0..10).map(|i| 101 + i).sum();
        // Granules of ~21 bytes: rounded up, the zero-error options need more than `exact`.
        let a = allocate(&units, exact, 100).unwrap();
        assert_eq!(a.choice, vec![1; 10]);
        assert_eq!((a.bytes, a.err), (exact, 0.0));
        // One byte less: something must give.
        let b = allocate(&units, exact - 1, 100).unwrap();
        assert!(b.err > 0.0 && b.bytes < exact);
    }

    #[test]
    fn prefers_the_better_trade() {
        // Unit 0 gains 10 for 100 bytes, unit 1 gains 1 for 100 bytes: with 100 spare bytes,
        // unit 0 is upgraded.
        let units = vec![
            vec![opt(100, 11.0), opt(200, 1.0)],
            vec![opt(100, 2.0), opt(200, 1.0)],
        ];
        let a = allocate(&units, 300, 1000).unwrap();
        assert_eq!(a.choice, vec![1, 0]);
    }
}
