//! Timed runs with llama-bench semantics: `pp N` processes N prompt tokens in batches (only the
//! last token's logits are read back), `tg N` decodes N tokens one at a time; each test runs
//! once untimed (warm-up), then `reps` timed times; tokens/s is the mean ± sample std over reps.
//! At a depth D (`-d`), D random prompt tokens fill positions `0..D` first (untimed, in the
//! batches pp uses) and the warm-up and every repetition run from position D.

use std::time::{Duration, Instant};

use crate::error::Result;

use super::stats::{drift, mean, percentile, stdev};

/// Something that can run a llama forward pass: the GPU model or the CPU backend.
pub trait Engine {
    /// Backend name for reports ("wgpu", "cpu").
    fn backend(&self) -> String;
    /// Vocabulary size.
    fn n_vocab(&self) -> usize;
    /// Largest batch per forward call.
    fn n_batch(&self) -> usize;
    /// Sequences that can be decoded at once.
    fn n_seq(&self) -> usize;
    /// Positions per sequence.
    fn n_ctx(&self) -> usize;
    /// Run (token, sequence, position) triples; logits of all tokens or only the last.
    fn forward(&mut self, tokens: &[(u32, u32, u32)], all_logits: bool) -> Result<Vec<f32>>;
    /// Bytes of weights read per decoded token.
    fn weight_bytes(&self) -> u64;
    /// Device memory (weights, kv cache, scratch) in bytes.
    fn memory(&self) -> (u64, u64, u64);
    /// Greedy decoding of `n` tokens of sequence 0 from position `pos`, the first fed `first`,
    /// each later one the greedy choice ([`crate::model::greedy_token`]) of its predecessor's
    /// logits; `on_token(k)` once token `k`'s logits reached the host, in order (false
    /// stops). Returns the tokens reported. This one runs one [`forward`](Self::forward) at a
    /// time; the GPU engine chooses on the GPU and queues each pass before the previous one's
    /// logits are read.
    fn decode_greedy(
        &mut self,
        first: u32,
        pos: u32,
        n: usize,
        on_token: &mut dyn FnMut(usize) -> Result<bool>,
    ) -> Result<usize> {
        crate::model::greedy_loop(
            first,
            n,
            |tok, k| self.forward(&[(tok, 0, pos + k as u32)], false),
            &mut |k, _, _| on_token(k),
        )
    }
}

#[cfg(feature = "gpu")]
impl Engine for crate::gpu::GpuModel {
    fn backend(&self) -> String {
        format!("wgpu/{}", self.context().facts.backend)
    }
    fn n_vocab(&self) -> usize {
        self.cfg.n_vocab
    }
    fn n_batch(&self) -> usize {
        self.opts.n_batch
    }
    fn n_seq(&self) -> usize {
        self.opts.n_seq
    }
    fn n_ctx(&self) -> usize {
        self.opts.n_ctx
    }
    fn forward(&mut self, tokens: &[(u32, u32, u32)], all_logits: bool) -> Result<Vec<f32>> {
        crate::gpu::GpuModel::forward(self, tokens, all_logits)
    }
    fn weight_bytes(&self) -> u64 {
        self.weight_bytes_per_token
    }
    fn memory(&self) -> (u64, u64, u64) {
        (
            self.memory.weights,
            self.memory.kv_cache,
            self.memory.scratch,
        )
    }
    fn decode_greedy(
        &mut self,
        first: u32,
        pos: u32,
        n: usize,
        on_token: &mut dyn FnMut(usize) -> Result<bool>,
    ) -> Result<usize> {
        crate::gpu::GpuModel::decode_greedy(self, first, 0, pos, n, &mut |k, _, _| on_token(k))
    }
}

/// Which test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TestKind {
    /// Prompt processing of n tokens.
    Pp(usize),
    /// Generation of n tokens.
    Tg(usize),
}

impl TestKind {
    /// "pp512" / "tg128".
    pub fn name(&self) -> String {
        match self {
            TestKind::Pp(n) => format!("pp{n}"),
            TestKind::Tg(n) => format!("tg{n}"),
        }
    }

    /// The name at a KV depth, as llama-bench writes it: "pp512", "tg128 @ d4096".
    pub fn name_at(&self, depth: usize) -> String {
        if depth > 0 {
            format!("{} @ d{depth}", self.name())
        } else {
            self.name()
        }
    }

    /// Tokens the test processes (per sequence).
    pub fn tokens(&self) -> usize {
        match self {
            TestKind::Pp(n) | TestKind::Tg(n) => *n,
        }
    }
}

/// Run settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Timed repetitions.
    pub reps: usize,
    /// Parallel sequences for tg (1 = plain decode).
    pub parallel: usize,
    /// Soak duration for tg (repeats tg runs until it elapses; None = `reps` runs).
    pub duration: Option<Duration>,
    /// Print progress to stderr.
    pub progress: bool,
    /// tg of one sequence as llama-bench runs it: random tokens, one call at a time, each
    /// token's logits read before the next call. Otherwise (and with `parallel` > 1 always the
    /// former) tg decodes greedily through [`Engine::decode_greedy`].
    pub tg_sync: bool,
    /// Least time the untimed pp warm-up takes: the warm-up prompt (llama-bench runs it
    /// once) is run again until this much has passed. [`PP_WARMUP`] in `ggufq bench`.
    pub pp_warmup: Duration,
}

/// One sample of a soak run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SoakSample {
    /// Seconds since the start.
    pub t_s: f64,
    /// Tokens/s of this run.
    pub tps: f64,
    /// Resident set size of the process (bytes), if readable.
    pub rss: Option<u64>,
}

/// Result of one test.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// Test name ("pp512", "tg128", "tg128 @ d4096").
    pub test: String,
    /// Prompt tokens (llama-bench n_prompt).
    pub n_prompt: usize,
    /// Generated tokens (llama-bench n_gen).
    pub n_gen: usize,
    /// Tokens in the KV cache before the test (llama-bench n_depth).
    pub n_depth: usize,
    /// Parallel sequences.
    pub parallel: usize,
    /// Wall time of each timed repetition (ns).
    pub samples_ns: Vec<u64>,
    /// Aggregate tokens/s of each repetition.
    pub samples_ts: Vec<f64>,
    /// Mean tokens/s.
    pub avg_ts: f64,
    /// Sample standard deviation of tokens/s.
    pub stddev_ts: f64,
    /// Mean ns per repetition.
    pub avg_ns: u64,
    /// Std of ns per repetition.
    pub stddev_ns: u64,
    /// Per-token (tg) or per-batch (pp) latency percentiles in ms: p50, p95, p99.
    pub latency_ms: [f64; 3],
    /// Achieved weight bandwidth (GB/s) for tg: bytes per step × steps/s.
    pub bandwidth_gbps: Option<f64>,
    /// Soak samples (empty without --duration).
    pub soak: Vec<SoakSample>,
    /// Relative tokens/s change from the first to the last quarter of the soak.
    pub drift: Option<f64>,
}

impl BenchResult {
    /// The row of a perplexity run: test "ppl{n_ctx}", tokens/s = tokens evaluated per second.
    pub fn from_ppl(r: &crate::eval::ppl::PplResult) -> BenchResult {
        let ts = r.n_tokens_evaluated as f64 / r.seconds.max(1e-9);
        let ns = (r.seconds * 1e9) as u64;
        let per_chunk = 1e3 * r.seconds / r.n_chunks.max(1) as f64;
        BenchResult {
            test: format!("ppl{}", r.n_ctx),
            n_prompt: 0,
            n_gen: 0,
            n_depth: 0,
            parallel: 1,
            samples_ns: vec![ns],
            samples_ts: vec![ts],
            avg_ts: ts,
            stddev_ts: 0.0,
            avg_ns: ns,
            stddev_ns: 0,
            latency_ms: [per_chunk; 3],
            bandwidth_gbps: None,
            soak: Vec::new(),
            drift: None,
        }
    }
}

/// Current resident set size (Linux /proc), if readable.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as u32
    }
}

/// Process `n` random prompt tokens of sequence `seq` at positions `pos..pos + n` in batches
/// of the engine's batch size, each batch's latency pushed to `lat`.
fn run_pp(
    e: &mut dyn Engine,
    n: usize,
    seq: u32,
    pos: usize,
    rng: &mut Lcg,
    lat: &mut Vec<f64>,
) -> Result<Duration> {
    let nb = e.n_batch();
    let nv = e.n_vocab();
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let k = nb.min(n - done);
        let toks: Vec<(u32, u32, u32)> = (0..k)
            .map(|i| (rng.next(nv), seq, (pos + done + i) as u32))
            .collect();
        let t1 = Instant::now();
        e.forward(&toks, false)?;
        lat.push(t1.elapsed().as_secs_f64() * 1e3);
        done += k;
    }
    Ok(t.elapsed())
}

/// Decode `n` tokens (positions `pos`, `pos + 1`, …, `par` sequences per call), each token's
/// latency pushed to `lat`. One sequence without `sync`: greedy decoding ([`Engine::decode_greedy`],
/// the latency being the time since the previous token's logits arrived); otherwise random
/// tokens, one call at a time (llama-bench's loop). With `stop_after`, stop after the first
/// token at which that much time has passed (at least one). Returns the elapsed time and the
/// tokens decoded per sequence.
#[allow(clippy::too_many_arguments)]
fn run_tg(
    e: &mut dyn Engine,
    n: usize,
    pos: usize,
    par: usize,
    sync: bool,
    rng: &mut Lcg,
    lat: &mut Vec<f64>,
    stop_after: Option<Duration>,
) -> Result<(Duration, usize)> {
    let nv = e.n_vocab();
    let n = n.max(usize::from(stop_after.is_some()));
    if par == 1 && !sync {
        let first = rng.next(nv);
        let t = Instant::now();
        let mut last = t;
        let done = e.decode_greedy(first, pos as u32, n, &mut |_| {
            let now = Instant::now();
            lat.push((now - last).as_secs_f64() * 1e3);
            last = now;
            Ok(stop_after.is_none_or(|b| t.elapsed() < b))
        })?;
        return Ok((t.elapsed(), done));
    }
    let t = Instant::now();
    let mut done = 0;
    for p in 0..n {
        let toks: Vec<(u32, u32, u32)> = (0..par)
            .map(|s| (rng.next(nv), s as u32, (pos + p) as u32))
            .collect();
        let t1 = Instant::now();
        e.forward(&toks, false)?;
        lat.push(t1.elapsed().as_secs_f64() * 1e3);
        done += 1;
        if stop_after.is_some_and(|b| t.elapsed() >= b) {
            break;
        }
    }
    Ok((t.elapsed(), done))
}

/// Time budget of the `tg` warm-up (`run_tg`'s `stop_after`): llama-bench decodes one
/// untimed token, which leaves a GPU that was idle (loading, or a `-p 0` run) at low clocks
/// for the first timed repetition (H100, 7B: the first tg128 repetition 20–30 % slower than
/// the others).
const TG_WARMUP: Duration = Duration::from_secs(1);

/// `ggufq bench`'s [`RunConfig::pp_warmup`], the budget of the tg warm-up ([`TG_WARMUP`]).
/// After one warm-up prompt, as llama-bench runs it, the first timed repetition was an
/// outlier in two of five pp512 tests on the H100 (7B Q4_0 and Q8_0 right after their upload,
/// session 19: 4.6 and 4.2 kt/s, the next four 7.6 kt/s each).
pub const PP_WARMUP: Duration = TG_WARMUP;

/// Run one test on an engine at KV depth `depth` (llama-bench's `-d`): positions
/// `0..depth` of each sequence the test uses (tg: `parallel`, pp: one) are filled with
/// random prompt tokens in batches of the engine's batch size, untimed, before the warm-up;
/// the warm-up and every timed repetition then run from position `depth`. A repetition
/// writes only positions from `depth` on, so the prefilled cache is the same before each
/// (llama-bench restores a saved state of the depth run before each repetition).
pub fn run_test(
    e: &mut dyn Engine,
    kind: TestKind,
    depth: usize,
    cfg: &RunConfig,
) -> Result<BenchResult> {
    let par = if matches!(kind, TestKind::Tg(_)) {
        cfg.parallel.max(1)
    } else {
        1
    };
    let ntok = kind.tokens();
    let name = kind.name_at(depth);
    if depth + ntok > e.n_ctx() {
        let what = if depth > 0 {
            format!("{depth} + {ntok} = {}", depth + ntok)
        } else {
            ntok.to_string()
        };
        return Err(crate::error::Error::msg(format!(
            "{name} needs {what} positions but the context holds {} (raise --ctx)",
            e.n_ctx()
        )));
    }
    if par > e.n_seq() {
        return Err(crate::error::Error::msg(format!(
            "--parallel {par} exceeds the {} sequences allocated",
            e.n_seq()
        )));
    }
    let mut rng = Lcg(0x5eed);
    let mut scratch = Vec::new();
    if depth > 0 {
        let t = Instant::now();
        for s in 0..par {
            run_pp(e, depth, s as u32, 0, &mut rng, &mut scratch)?;
        }
        if cfg.progress {
            let seqs = if par > 1 {
                format!(" × {par} sequences")
            } else {
                String::new()
            };
            eprintln!(
                "  {name}: depth filled ({depth} tokens{seqs}) in {:.2} s, untimed",
                t.elapsed().as_secs_f64()
            );
        }
        scratch.clear();
    }
    // Warm-up (llama-bench: one untimed run).
    match kind {
        TestKind::Pp(n) => {
            let t = Instant::now();
            loop {
                run_pp(e, n, 0, depth, &mut rng, &mut scratch)?;
                if t.elapsed() >= cfg.pp_warmup {
                    break;
                }
            }
        }
        TestKind::Tg(n) => {
            run_tg(
                e,
                n,
                depth,
                par,
                cfg.tg_sync,
                &mut rng,
                &mut scratch,
                Some(TG_WARMUP),
            )?;
        }
    }
    let mut lat = Vec::new();
    let mut ns = Vec::new();
    let mut soak = Vec::new();
    let start = Instant::now();
    let mut r = 0;
    loop {
        let d = match kind {
            TestKind::Pp(n) => run_pp(e, n, 0, depth, &mut rng, &mut lat)?,
            TestKind::Tg(n) => run_tg(e, n, depth, par, cfg.tg_sync, &mut rng, &mut lat, None)?.0,
        };
        ns.push(d.as_nanos() as u64);
        r += 1;
        let tps = (ntok * par) as f64 / d.as_secs_f64();
        if cfg.duration.is_some() {
            soak.push(SoakSample {
                t_s: start.elapsed().as_secs_f64(),
                tps,
                rss: rss_bytes(),
            });
        }
        if cfg.progress {
            eprint!("\r  {name} rep {r}: {tps:.1} t/s   ");
        }
        match cfg.duration {
            Some(dur) if start.elapsed() < dur => continue,
            Some(_) => break,
            None if r < cfg.reps.max(1) => continue,
            None => break,
        }
    }
    if cfg.progress {
        eprintln!();
    }
    let ts: Vec<f64> = ns
        .iter()
        .map(|&n| (ntok * par) as f64 * 1e9 / n as f64)
        .collect();
    let nsf: Vec<f64> = ns.iter().map(|&n| n as f64).collect();
    let bw = match kind {
        TestKind::Tg(n) => Some(e.weight_bytes() as f64 * (n as f64) / (mean(&nsf) * 1e-9) / 1e9),
        TestKind::Pp(_) => None,
    };
    let drift_v = cfg
        .duration
        .map(|_| drift(&soak.iter().map(|s| s.tps).collect::<Vec<_>>()));
    Ok(BenchResult {
        test: name,
        n_prompt: if let TestKind::Pp(n) = kind { n } else { 0 },
        n_gen: if let TestKind::Tg(n) = kind { n } else { 0 },
        n_depth: depth,
        parallel: par,
        avg_ts: mean(&ts),
        stddev_ts: stdev(&ts),
        avg_ns: mean(&nsf) as u64,
        stddev_ns: stdev(&nsf) as u64,
        samples_ns: ns,
        samples_ts: ts,
        latency_ms: [
            percentile(&lat, 50.0),
            percentile(&lat, 95.0),
            percentile(&lat, 99.0),
        ],
        bandwidth_gbps: bw,
        soak,
        drift: drift_v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that counts its one-token calls and checks positions run 0, 1, 2, ...
    /// Its logits' greedy choice at position p is (3p + 1) mod 10; it records the tokens fed.
    struct Count {
        calls: usize,
        next_pos: u32,
        fed: Vec<u32>,
    }
    impl Engine for Count {
        fn backend(&self) -> String {
            "count".into()
        }
        fn n_vocab(&self) -> usize {
            10
        }
        fn n_batch(&self) -> usize {
            4
        }
        fn n_seq(&self) -> usize {
            1
        }
        fn n_ctx(&self) -> usize {
            64
        }
        fn forward(&mut self, t: &[(u32, u32, u32)], _all: bool) -> Result<Vec<f32>> {
            if t[0].2 == 0 {
                self.next_pos = 0;
            }
            assert_eq!(t[0].2, self.next_pos, "positions must follow each other");
            self.next_pos += 1;
            self.calls += 1;
            self.fed.push(t[0].0);
            let mut l = vec![0.0; 10];
            l[(3 * t[0].2 as usize + 1) % 10] = 1.0;
            Ok(l)
        }
        fn weight_bytes(&self) -> u64 {
            0
        }
        fn memory(&self) -> (u64, u64, u64) {
            (0, 0, 0)
        }
    }

    #[test]
    fn tg_warm_up_decodes_until_its_budget_is_spent() {
        let mut e = Count {
            calls: 0,
            next_pos: 0,
            fed: Vec::new(),
        };
        let mut rng = Lcg(1);
        let mut lat = Vec::new();
        let mut warm_up = |e: &mut Count, budget| {
            run_tg(e, 16, 0, 1, false, &mut rng, &mut lat, Some(budget))
                .unwrap()
                .1
        };
        // No budget: one token, like llama-bench.
        assert_eq!(warm_up(&mut e, Duration::ZERO), 1);
        assert_eq!(e.calls, 1);
        // A budget longer than the run: the whole test, untimed.
        assert_eq!(warm_up(&mut e, Duration::from_secs(60)), 16);
        assert_eq!(e.calls, 17);
        // run_test: warm-up (16 tokens, the default budget is far longer than these calls)
        // plus 3 timed repetitions of 16.
        let cfg = RunConfig {
            reps: 3,
            parallel: 1,
            duration: None,
            progress: false,
            tg_sync: false,
            pp_warmup: Duration::ZERO,
        };
        let r = run_test(&mut e, TestKind::Tg(16), 0, &cfg).unwrap();
        assert_eq!(e.calls, 17 + 16 + 3 * 16);
        assert_eq!(r.samples_ns.len(), 3);
        assert_eq!(lat.len(), 17);
    }

    #[test]
    fn tg_feeds_each_tokens_greedy_choice_unless_synchronous() {
        let run = |sync: bool| {
            let mut e = Count {
                calls: 0,
                next_pos: 0,
                fed: Vec::new(),
            };
            let mut lat = Vec::new();
            let (_, done) = run_tg(&mut e, 12, 0, 1, sync, &mut Lcg(3), &mut lat, None).unwrap();
            assert_eq!((done, lat.len(), e.fed.len()), (12, 12, 12));
            e.fed
        };
        let greedy = run(false);
        // After the first (random) token, each token is the previous position's choice.
        for (p, &t) in greedy.iter().enumerate().skip(1) {
            assert_eq!(t as usize, (3 * (p - 1) + 1) % 10, "position {p}");
        }
        let random = run(true);
        assert_eq!(random[0], greedy[0], "the same first token");
        assert!(
            (1..12).any(|p| random[p] as usize != (3 * (p - 1) + 1) % 10),
            "llama-bench's loop feeds random tokens"
        );
    }

    /// An engine that models a KV cache: per sequence and position, how often a token was
    /// written there. A token at position p must find positions 0..p of its sequence written
    /// (by an earlier call or an earlier token of its own call). Calls that write a position
    /// below `slow_below` (the depth prefill) sleep `slow`. Each token's logits choose
    /// (token + 1) mod 10.
    struct Kv {
        n_seq: usize,
        writes: Vec<Vec<u32>>,
        calls: Vec<Vec<(u32, u32, u32)>>,
        slow_below: u32,
        slow: Duration,
    }
    impl Kv {
        fn new(n_seq: usize, slow_below: u32, slow: Duration) -> Kv {
            Kv {
                n_seq,
                writes: vec![vec![0; 64]; n_seq],
                calls: Vec::new(),
                slow_below,
                slow,
            }
        }
        /// The calls after the first `k`, as (sequence, position) of each token.
        fn after(&self, k: usize) -> Vec<Vec<(u32, u32)>> {
            self.calls[k..]
                .iter()
                .map(|c| c.iter().map(|t| (t.1, t.2)).collect())
                .collect()
        }
    }
    impl Engine for Kv {
        fn backend(&self) -> String {
            "kv".into()
        }
        fn n_vocab(&self) -> usize {
            10
        }
        fn n_batch(&self) -> usize {
            4
        }
        fn n_seq(&self) -> usize {
            self.n_seq
        }
        fn n_ctx(&self) -> usize {
            64
        }
        fn forward(&mut self, t: &[(u32, u32, u32)], all: bool) -> Result<Vec<f32>> {
            assert!(!t.is_empty() && t.len() <= self.n_batch());
            for &(tok, seq, pos) in t {
                assert!(tok < 10);
                let w = &mut self.writes[seq as usize];
                assert!(
                    w[..pos as usize].iter().all(|&c| c > 0),
                    "sequence {seq} position {pos}: earlier positions not in the cache"
                );
                w[pos as usize] += 1;
            }
            if t.iter().any(|x| x.2 < self.slow_below) {
                std::thread::sleep(self.slow);
            }
            self.calls.push(t.to_vec());
            let rows = if all { t.len() } else { 1 };
            let mut l = vec![0.0; 10 * rows];
            for (r, x) in t[t.len() - rows..].iter().enumerate() {
                l[10 * r + (x.0 as usize + 1) % 10] = 1.0;
            }
            Ok(l)
        }
        fn weight_bytes(&self) -> u64 {
            1
        }
        fn memory(&self) -> (u64, u64, u64) {
            (0, 0, 0)
        }
    }

    fn cfg(reps: usize, parallel: usize, tg_sync: bool) -> RunConfig {
        RunConfig {
            reps,
            parallel,
            duration: None,
            progress: false,
            tg_sync,
            pp_warmup: Duration::ZERO,
        }
    }

    /// Time a prefill call sleeps: each timed repetition below takes microseconds.
    const SLOW: Duration = Duration::from_millis(150);

    #[test]
    fn test_names_carry_the_depth_like_llama_bench() {
        assert_eq!(TestKind::Pp(512).name_at(0), "pp512");
        assert_eq!(TestKind::Tg(128).name_at(4096), "tg128 @ d4096");
        assert_eq!(TestKind::Tg(128).tokens(), 128);
    }

    #[test]
    fn pp_at_depth_prefills_once_untimed_and_every_repetition_starts_at_the_depth() {
        let mut e = Kv::new(1, 10, SLOW);
        let r = run_test(&mut e, TestKind::Pp(6), 10, &cfg(3, 1, false)).unwrap();
        assert_eq!(
            (r.test.as_str(), r.n_prompt, r.n_depth),
            ("pp6 @ d10", 6, 10)
        );
        // The prefill: positions 0..10 in batches of 4, first, and never written again.
        assert_eq!(
            e.after(0)[..3],
            [
                (0..4).map(|p| (0, p)).collect::<Vec<_>>(),
                (4..8).map(|p| (0, p)).collect(),
                (8..10).map(|p| (0, p)).collect(),
            ]
        );
        assert!(e.writes[0][..10].iter().all(|&c| c == 1), "{:?}", e.writes);
        // Warm-up and 3 repetitions, each the positions 10..16 in batches of 4 and 2.
        let rest = e.after(3);
        assert_eq!(rest.len(), 4 * 2);
        for run in rest.chunks(2) {
            assert_eq!(run[0], (10..14).map(|p| (0, p)).collect::<Vec<_>>());
            assert_eq!(run[1], vec![(0, 14), (0, 15)]);
        }
        assert!(e.writes[0][10..16].iter().all(|&c| c == 4));
        assert!(e.writes[0][16..].iter().all(|&c| c == 0));
        // The three slow prefill calls are outside every timed repetition.
        assert_eq!(r.samples_ns.len(), 3);
        assert!(
            r.samples_ns.iter().all(|&ns| ns < SLOW.as_nanos() as u64),
            "{:?}",
            r.samples_ns
        );
        assert!(r.avg_ts > 0.0 && r.bandwidth_gbps.is_none());
    }

    #[test]
    fn pp_warm_up_repeats_the_prompt_until_its_budget_is_spent() {
        // Instant calls: the warm-up prompt runs again and again until 20 ms have passed,
        // each time at the same positions; then the timed repetitions.
        let budget = Duration::from_millis(20);
        let mut e = Kv::new(1, 0, Duration::ZERO);
        let t = std::time::Instant::now();
        let r = run_test(
            &mut e,
            TestKind::Pp(6),
            0,
            &RunConfig {
                pp_warmup: budget,
                ..cfg(2, 1, false)
            },
        )
        .unwrap();
        assert!(t.elapsed() >= budget);
        assert_eq!(r.samples_ns.len(), 2);
        let calls = e.after(0);
        let runs = calls.len() / 2;
        assert_eq!(calls.len() % 2, 0);
        assert!(runs >= 2 + 2, "{runs} runs: more than one warm-up prompt");
        for run in calls.chunks(2) {
            assert_eq!(run[0], (0..4).map(|p| (0, p)).collect::<Vec<_>>());
            assert_eq!(run[1], vec![(0, 4), (0, 5)]);
        }
        assert!(e.writes[0][..6].iter().all(|&c| c as usize == runs));
        // No budget: one warm-up prompt, as llama-bench runs it.
        let mut e = Kv::new(1, 0, Duration::ZERO);
        run_test(&mut e, TestKind::Pp(6), 0, &cfg(2, 1, false)).unwrap();
        assert_eq!(e.after(0).len(), 3 * 2);
    }

    #[test]
    fn tg_at_depth_decodes_from_the_depth_greedy_or_synchronous() {
        for sync in [false, true] {
            let mut e = Kv::new(1, 5, SLOW);
            let r = run_test(&mut e, TestKind::Tg(3), 5, &cfg(2, 1, sync)).unwrap();
            assert_eq!((r.test.as_str(), r.n_gen, r.n_depth), ("tg3 @ d5", 3, 5));
            assert_eq!(r.samples_ns.len(), 2);
            assert!(r.samples_ns.iter().all(|&ns| ns < SLOW.as_nanos() as u64));
            assert!(r.bandwidth_gbps.unwrap() > 0.0);
            // Prefill 0..4, 4..5; then warm-up (the whole test within its budget) and two
            // repetitions, one token per call at positions 5, 6, 7.
            assert_eq!(e.after(0)[1], vec![(0, 4)]);
            let rest = e.after(2);
            assert_eq!(rest.len(), 3 * 3);
            for (i, c) in rest.iter().enumerate() {
                assert_eq!(*c, vec![(0, 5 + (i % 3) as u32)], "call {i}, sync {sync}");
            }
            assert!(e.writes[0][..5].iter().all(|&c| c == 1));
            // Greedy: each token after a run's first is its predecessor's choice.
            let toks: Vec<u32> = e.calls[2..].iter().map(|c| c[0].0).collect();
            let chained = toks
                .chunks(3)
                .all(|run| run.windows(2).all(|w| w[1] == (w[0] + 1) % 10));
            if !sync {
                assert!(chained, "greedy tokens {toks:?}");
            }
        }
    }

    #[test]
    fn parallel_tg_at_depth_prefills_every_sequence() {
        let mut e = Kv::new(3, 6, SLOW);
        let r = run_test(&mut e, TestKind::Tg(2), 6, &cfg(2, 3, false)).unwrap();
        assert_eq!((r.test.as_str(), r.parallel, r.n_depth), ("tg2 @ d6", 3, 6));
        for s in 0..3 {
            assert!(e.writes[s][..6].iter().all(|&c| c == 1), "sequence {s}");
            // Warm-up and two repetitions at positions 6 and 7.
            assert_eq!(e.writes[s][6..9], [3, 3, 0], "sequence {s}");
        }
        // Six prefill calls (two per sequence), then steps of the three sequences together.
        let steps = e.after(6);
        assert_eq!(steps.len(), 3 * 2);
        for (i, c) in steps.iter().enumerate() {
            let p = 6 + (i % 2) as u32;
            assert_eq!(*c, vec![(0, p), (1, p), (2, p)]);
        }
        assert!(r.samples_ns.iter().all(|&ns| ns < SLOW.as_nanos() as u64));
    }

    #[test]
    fn depth_and_test_must_fit_the_context() {
        let mut e = Kv::new(1, 0, Duration::ZERO);
        let err = run_test(&mut e, TestKind::Tg(8), 60, &cfg(1, 1, false))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tg8 @ d60 needs 60 + 8 = 68 positions but the context holds 64"),
            "{err}"
        );
        assert!(e.calls.is_empty(), "nothing runs before the check");
        // Exactly full is fine.
        run_test(&mut e, TestKind::Pp(8), 56, &cfg(1, 1, false)).unwrap();
        assert_eq!(e.writes[0][63], 2);
    }
}
