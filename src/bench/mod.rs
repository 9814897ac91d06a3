//! Benchmark runner, statistics and report formats for `ggufq bench`.
