//! A global allocator for the fuzz targets that aborts on any single allocation above
//! [`LIMIT`] bytes. The targets are built without a sanitizer (`cargo fuzz run -s none`), where
//! libFuzzer's `-malloc_limit_mb` has no malloc hooks to work with; this guard gives the same
//! check: a crafted input must never make the parsers ask for a huge buffer.

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation a parser may make for a fuzz input (inputs are at most a few
/// hundred KB, so anything near this is a length taken from the input without a check).
pub const LIMIT: usize = 64 << 20;

pub struct Guard;

// SAFETY: forwards to the system allocator; only adds a size check that aborts.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        check(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        check(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        check(n);
        System.realloc(p, l, n)
    }
}

fn check(n: usize) {
    if n > LIMIT {
        // No formatting here: we are inside the allocator.
        let msg = b"alloc_guard: single allocation above 64 MiB\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}
