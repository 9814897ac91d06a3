//! Benchmark runner, statistics and report formats for `ggufq bench` (llama-bench semantics).

pub mod engine;
pub mod output;
pub mod runner;
pub mod stats;

pub use runner::{BenchResult, Engine, RunConfig, TestKind};

/// Peak memory bandwidth (GB/s) of known devices, matched by a substring of the adapter name
/// (longest match wins).
pub const PEAK_GBPS: &[(&str, f64)] = &[
    ("H100 80GB HBM3", 3350.0),
    ("H100 SXM", 3350.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2039.0),
    ("H100", 3350.0),
    ("H200", 4800.0),
    ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("MI300X", 5300.0),
    ("Apple M2 Ultra", 800.0),
    ("Apple M3 Max", 400.0),
];

/// Peak bandwidth for an adapter name, if known.
pub fn peak_gbps(adapter: &str) -> Option<f64> {
    PEAK_GBPS
        .iter()
        .filter(|(k, _)| adapter.contains(k))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_table_prefers_longest_match() {
        assert_eq!(super::peak_gbps("NVIDIA H100 80GB HBM3"), Some(3350.0));
        assert_eq!(super::peak_gbps("NVIDIA H100 PCIe"), Some(2039.0));
        assert_eq!(super::peak_gbps("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    }
}
