//! Source pieces read through short-lived memory maps, guarded against bus errors.
//!
//! Reading a page-cached source with `pread` costs a kernel copy of every byte (a third of
//! `convert`'s CPU on SmolLM2 F32 → hybrid.yaml: `_copy_to_iter`). A [`Window`] maps just one
//! pipeline piece (`MAP_POPULATE`: the page tables are filled by the reader thread in one
//! call, no fault per page later) and unmaps it when the piece has been hashed and encoded,
//! so the resident memory stays a few pieces, as with the buffered reads.
//!
//! The risk of a map is `SIGBUS`: when another process truncates the source (or, on a network
//! filesystem, a read fails) while a piece is mapped, touching a page past the new end kills
//! the process instead of returning an I/O error. [`Window`]s register their address range
//! with a process-wide `SIGBUS` handler that, for a fault inside a registered window, maps a
//! zero page over the faulting page, records the fault in the window and returns, so the
//! access completes (reading zeros). The converter checks [`Window::bus_error`] after each
//! piece and fails with a clear error naming the source: the output is never committed, as for
//! any other read error. A fault outside every window goes to the handler that was installed
//! before (Rust's own stack-overflow handler, or the default action).
//!
//! Only on Linux; elsewhere (or when the handler cannot be installed, or the window table is
//! full) [`Window::map`] returns `None` and the caller reads with `pread`.

use std::fs::File;

/// One mapped byte range of the source file.
pub(crate) struct Window {
    #[cfg(target_os = "linux")]
    map: memmap2::Mmap,
    /// Offset of the range's first byte in the map (the map starts on a page boundary).
    skip: usize,
    len: usize,
    #[cfg(target_os = "linux")]
    slot: usize,
}

impl Window {
    /// Map `len` bytes of `file` from byte `at`, populated. `None` when mapping is not
    /// available here (see the module docs) or fails; the caller then reads another way.
    #[cfg(target_os = "linux")]
    pub(crate) fn map(file: &File, at: u64, len: usize) -> Option<Window> {
        if len == 0 || !guard::install() {
            return None;
        }
        let page = guard::page_size() as u64;
        let start = at - at % page;
        let skip = usize::try_from(at - start).ok()?;
        let map_len = skip.checked_add(len)?;
        // SAFETY: the map is read-only and private to this process. Another process may still
        // change or truncate the file while it is mapped: truncation is caught by the SIGBUS
        // guard registered below (module docs); changed bytes are as undefined as with pread
        // (the hash cache key and the size check after the conversion catch what they can).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(map_len)
                .populate()
                .map(file)
                .ok()?
        };
        let slot = guard::register(map.as_ptr() as usize, map_len)?;
        Some(Window {
            map,
            skip,
            len,
            slot,
        })
    }

    /// Never maps off Linux.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn map(_file: &File, _at: u64, _len: usize) -> Option<Window> {
        None
    }

    /// The mapped bytes (zeros where a bus error was caught).
    pub(crate) fn bytes(&self) -> &[u8] {
        #[cfg(target_os = "linux")]
        {
            &self.map[self.skip..self.skip + self.len]
        }
        #[cfg(not(target_os = "linux"))]
        {
            &[]
        }
    }

    /// The bytes as little-endian f32 values, when they are aligned for it (always, for a
    /// GGUF whose data offset is a multiple of 4) and this is a little-endian machine.
    pub(crate) fn f32s(&self) -> Option<&[f32]> {
        let b = self.bytes();
        if cfg!(target_endian = "big")
            || b.len() % 4 != 0
            || b.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0
        {
            return None;
        }
        // SAFETY: the pointer is aligned for f32 (checked), the length is a whole number of
        // f32s, every bit pattern is a valid f32, and the view borrows `self` (the map lives
        // as long as the view).
        Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) })
    }

    /// Whether a bus error (the file shrank under the map, or an I/O error) was caught in this
    /// window: its bytes are then not the file's.
    pub(crate) fn bus_error(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            guard::hit(self.slot)
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Window {
    fn drop(&mut self) {
        // Unregister before the map goes (the field is dropped after this body).
        guard::unregister(self.slot);
    }
}

#[cfg(target_os = "linux")]
mod guard {
    //! The process-wide SIGBUS handler and its table of guarded address ranges.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// Windows mapped at once, at most (the pipeline holds a handful).
    const SLOTS: usize = 64;

    struct Slot {
        /// Start address; 0 = free. Claimed with a compare-exchange.
        start: AtomicUsize,
        /// End address (exclusive); 0 while the slot is being set up or released.
        end: AtomicUsize,
        hit: AtomicBool,
    }

    static TABLE: [Slot; SLOTS] = [const {
        Slot {
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            hit: AtomicBool::new(false),
        }
    }; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    /// The action that was installed before ours (`None`: installing failed).
    static PREVIOUS: OnceLock<Option<libc::sigaction>> = OnceLock::new();

    pub(super) fn page_size() -> usize {
        let p = PAGE.load(Ordering::Relaxed);
        if p != 0 {
            return p;
        }
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let p = if p > 0 { p as usize } else { 4096 };
        PAGE.store(p, Ordering::Relaxed);
        p
    }

    /// Install the handler once; whether it is installed.
    pub(super) fn install() -> bool {
        page_size();
        PREVIOUS
            .get_or_init(|| {
                // SAFETY: plain sigaction calls with zero-initialised, then filled, structs; the
                // handler only does async-signal-safe work (atomics, mmap, sigaction).
                unsafe {
                    let mut new: libc::sigaction = std::mem::zeroed();
                    new.sa_sigaction = on_sigbus as *const () as usize;
                    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                    libc::sigemptyset(&mut new.sa_mask);
                    let mut old: libc::sigaction = std::mem::zeroed();
                    (libc::sigaction(libc::SIGBUS, &new, &mut old) == 0).then_some(old)
                }
            })
            .is_some()
    }

    /// Guard `[start, start + len)`; `None` when the table is full.
    pub(super) fn register(start: usize, len: usize) -> Option<usize> {
        for (i, s) in TABLE.iter().enumerate() {
            if s.start
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                s.hit.store(false, Ordering::Release);
                s.end.store(start + len, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    pub(super) fn unregister(slot: usize) {
        if let Some(s) = TABLE.get(slot) {
            s.end.store(0, Ordering::Release);
            s.start.store(0, Ordering::Release);
        }
    }

    pub(super) fn hit(slot: usize) -> bool {
        TABLE
            .get(slot)
            .is_some_and(|s| s.hit.load(Ordering::Acquire))
    }

    extern "C" fn on_sigbus(
        _sig: libc::c_int,
        info: *mut libc::siginfo_t,
        _ctx: *mut libc::c_void,
    ) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Ordering::Relaxed);
        for s in TABLE.iter() {
            let (a, b) = (
                s.start.load(Ordering::Acquire),
                s.end.load(Ordering::Acquire),
            );
            if a != 0 && a <= addr && addr < b && page != 0 {
                let at = addr - addr % page;
                // SAFETY: replaces one page of our own registered, still mapped window with a
                // private zero page (MAP_FIXED); nothing else lives at that address.
                let p = unsafe {
                    libc::mmap(
                        at as *mut libc::c_void,
                        page,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    s.hit.store(true, Ordering::Release);
                    return;
                }
                break;
            }
        }
        // Not ours (or the zero page failed): put the previous action back and return; the
        // access faults again and gets it.
        if let Some(Some(old)) = PREVIOUS.get() {
            // SAFETY: restores the action saved when ours was installed.
            unsafe { libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()) };
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn window_reads_the_range_and_views_f32() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src.bin");
        let data: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        File::create(&p).unwrap().write_all(&data).unwrap();
        let f = File::open(&p).unwrap();
        // An offset that is not page-aligned.
        let w = Window::map(&f, 4 * 1234, 4 * 5000).unwrap();
        assert_eq!(w.bytes(), &data[4 * 1234..4 * 6234]);
        let v = w.f32s().unwrap();
        assert_eq!(v.len(), 5000);
        assert_eq!(v[0], 1234.0);
        assert_eq!(v[4999], 6233.0);
        assert!(!w.bus_error());
        // Unaligned for f32: no f32 view, bytes still right.
        let w = Window::map(&f, 3, 9).unwrap();
        assert_eq!(w.bytes(), &data[3..12]);
        assert!(w.f32s().is_none());
    }

    #[test]
    fn truncation_under_the_map_is_caught_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src.bin");
        let page = guard::page_size();
        let data = vec![7u8; page * 8];
        File::create(&p).unwrap().write_all(&data).unwrap();
        let f = File::open(&p).unwrap();
        let w = Window::map(&f, 0, page * 8).unwrap();
        assert_eq!(w.bytes()[page * 6], 7);
        // Another writer cuts the file to one page while it is mapped.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(page as u64)
            .unwrap();
        let b = w.bytes();
        // Reading past the new end would be SIGBUS: the guard gives zeros and records it.
        let tail: u64 = b[page * 2..].iter().map(|&x| x as u64).sum();
        assert_eq!(tail, 0);
        assert!(w.bus_error());
        assert_eq!(b[0], 7);
        // Another window is not marked.
        let w2 = Window::map(&f, 0, page).unwrap();
        assert!(!w2.bus_error());
        drop(w);
        // A freed slot starts clean for its next owner.
        let w3 = Window::map(&f, 0, page).unwrap();
        assert!(!w3.bus_error());
    }
}
