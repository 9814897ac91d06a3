//! Fuzz the importance-matrix reader, both formats: the first byte picks legacy `.dat`
//! (even) or GGUF (odd); the rest is the file. Any input must give Ok or an error, never a
//! panic or a huge allocation.
//!
//! Run: `cargo +nightly fuzz run -s none imatrix -- -max_total_time=600`
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

mod alloc_guard;
#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use ggufq::gguf::GgufFile;
use ggufq::quant::imatrix::Imatrix;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let m = if sel % 2 == 0 {
        Imatrix::parse_legacy(body, Path::new("fuzz.dat"))
    } else {
        match GgufFile::from_bytes(body.to_vec(), "fuzz.imatrix.gguf") {
            Ok(f) => Imatrix::from_gguf(&f),
            Err(_) => return,
        }
    };
    if let Ok(m) = m {
        for (name, v) in &m.entries {
            assert!(!v.is_empty(), "empty weights for {name}");
            assert!(
                v.iter().all(|x| x.is_finite()),
                "non-finite weight in {name}"
            );
            assert_eq!(m.get(name).map(<[f32]>::len), Some(v.len()));
        }
    }
});
