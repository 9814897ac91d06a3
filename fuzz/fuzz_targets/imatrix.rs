//! Fuzz the importance-matrix reader, both formats: the first byte picks legacy `.dat`
//! (even) or GGUF (odd); the rest is the file. Any input must give Ok or an error, never a
//! panic or a huge allocation.
//!
//! Run: `cargo +nightly fuzz run -s none imatrix -- -max_total_time=600`
#![no_main]

use libfuzzer_sys::fuzz_target;

mod alloc_guard;
mod checks;
#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

fuzz_target!(|data: &[u8]| {
    let _ = checks::imatrix(data);
});
