//! Fuzz the GGUF reader and everything `inspect` and `convert --dry-run` do with a header:
//! any input must give Ok or an error, never a panic or a huge allocation.
//!
//! Run: `cargo +nightly fuzz run -s none parse -- -max_total_time=600 -rss_limit_mb=512`
#![no_main]

use libfuzzer_sys::fuzz_target;

mod alloc_guard;
mod checks;
#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

fuzz_target!(|data: &[u8]| {
    checks::parse(data);
});
