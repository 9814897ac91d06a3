//! Fuzz the recipe parser: YAML text → `RecipeFile` → resolved `Recipe` → plan against a small
//! fixed llama-shaped tensor list. Any input must give Ok or an error naming a line, never a
//! panic, a hang or a huge allocation (YAML alias bombs, deep nesting, absurd numbers).
//!
//! Run: `cargo +nightly fuzz run -s none recipe -- -max_total_time=600 -timeout=10`
#![no_main]

use libfuzzer_sys::fuzz_target;

mod alloc_guard;
mod checks;
#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

fuzz_target!(|data: &[u8]| {
    let _ = checks::recipe(data);
});
