//! Fuzz the GGUF header parser: any input must give Ok or an error, never a panic or a huge
//! allocation (run with `-rss_limit_mb=256 -malloc_limit_mb=64`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ggufq::gguf::GgufFile::parse(data, Path::new("fuzz.gguf")) {
        // A file that parses must have every tensor inside the data.
        for t in &h.tensors {
            let end = h.data_offset + t.offset + t.n_bytes.unwrap_or(0);
            assert!(end <= h.file_size.max(h.data_offset));
        }
    }
});
