//! Crafted bad files: each is rejected with an error that says what is wrong and where, without
//! a panic and without a large allocation (a counting allocator checks the largest request).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use ggufq::gguf::GgufFile;

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(n: usize) {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(n)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note(n);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Largest single allocation the parser may make for these small crafted files: a parser that
/// trusted a count or length from the file would ask for gigabytes.
const ALLOC_LIMIT: usize = 64 << 10;

/// Raw GGUF bytes, built field by field so that any field can be wrong.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B(b"GGUF".to_vec());
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw_str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.raw_str(s.as_bytes())
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, off: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(off)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn parse(b: &[u8]) -> Result<ggufq::gguf::Header, String> {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let r = GgufFile::parse(b, Path::new("bad.gguf"));
    TRACK.with(|t| t.set(false));
    let largest = LARGEST.with(|l| l.get());
    assert!(
        largest < ALLOC_LIMIT,
        "parse made a {largest}-byte allocation"
    );
    r.map_err(|e| e.to_string())
}

/// Parse must fail; the message must contain every one of `want`. Returns the message.
fn rejects(b: &B, want: &[&str]) -> String {
    let msg = match parse(&b.0) {
        Ok(_) => panic!("accepted a bad file (expected {want:?})"),
        Err(m) => m,
    };
    assert!(msg.starts_with("bad.gguf: invalid GGUF at byte "), "{msg}");
    for w in want {
        assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
    }
    msg
}

/// The byte offset an error message reports.
fn at(msg: &str) -> u64 {
    let rest = msg.split("at byte ").nth(1).unwrap();
    rest.split(':').next().unwrap().parse().unwrap()
}

/// A small valid file: 2 kvs, 2 tensors (F32 [8], Q4_0 [32, 2]); also returns section starts.
fn small_valid() -> (B, [usize; 5]) {
    let mut b = B::header(3, 2, 2);
    let kv = b.len();
    b.kv_str("general.architecture", "llama")
        .kv_u32("general.alignment", 32);
    let ti = b.len();
    b.tensor("a", &[8], 0, 0).tensor("b", &[32, 2], 2, 32);
    let pad = b.len();
    b.pad(32);
    let data = b.len();
    b.zeros(32 + 36).pad(32);
    (b, [kv, ti, pad, data, 0])
}

#[test]
fn small_valid_file_parses() {
    let (b, [_, _, _, data, _]) = small_valid();
    let h = parse(&b.0).unwrap();
    assert_eq!(h.data_offset as usize, data);
    assert_eq!(h.tensors[1].n_bytes, Some(36));
}

#[test]
fn truncated_at_every_byte() {
    let (b, [kv, ti, pad, data, _]) = small_valid();
    assert_eq!(data, 192);
    // Only the last tensor's trailing padding may be missing.
    let end_of_data = data + 32 + 36;
    assert!(parse(&b.0[..end_of_data]).is_ok());
    for cut in 0..end_of_data {
        let t = B(b.0[..cut].to_vec());
        let want: &[&str] = if cut < 4 {
            &["too short for the GGUF magic"]
        } else if cut < 8 {
            &["version needs 4 bytes"]
        } else if cut < 16 {
            &["tensor_count needs 8 bytes"]
        } else if cut < 24 {
            &["metadata_kv_count needs 8 bytes"]
        } else if cut < kv + 2 * 32 + 2 * 13 {
            // Too short even for the minimum sizes the counts promise.
            &["tensor_count 2 and metadata_kv_count 2 need at least 90 bytes"]
        } else if cut < ti {
            &["metadata key"]
        } else if cut < pad {
            &["tensor info #"]
        } else if cut < data {
            &["data section would start at byte", "past the end"]
        } else {
            &["runs past the end of the", "data section (file truncated?)"]
        };
        let msg = rejects(&t, want);
        assert!(at(&msg) <= cut as u64, "{cut}: {msg}");
    }
}

#[test]
fn truncated_in_each_section_names_the_field() {
    let (b, [kv, ti, ..]) = small_valid();
    // A key claiming more bytes than are left: names the entry and the field.
    let mut u = B(b.0[..kv].to_vec());
    u.u64(1 << 40).zeros(200);
    rejects(
        &u,
        &[
            "metadata entry #0",
            "key: length 1099511627776 exceeds the 200 bytes left",
        ],
    );
    // The same for a tensor name inside the tensor infos.
    let mut u = B(b.0[..ti].to_vec());
    u.u64(1 << 40).zeros(100);
    rejects(&u, &["tensor info #0", "tensor name: length 1099511627776"]);
    // The value of the second key cut off (padding keeps the count check satisfied).
    let mut u = B(b.0[..kv].to_vec());
    u.kv_str("general.architecture", "llama")
        .str("general.alignment")
        .u32(4)
        .zeros(2);
    let mut v = B::header(3, 0, 2);
    v.0.extend_from_slice(&u.0[24..]);
    let m = rejects(
        &v,
        &[
            "metadata key 'general.alignment'",
            "uint32 value needs 4 bytes but only 2 remain",
        ],
    );
    assert_eq!(at(&m), v.len() as u64 - 2);
}

#[test]
fn absurd_counts_and_lengths() {
    let mut b = B::header(3, 1 << 63, 0);
    b.zeros(64);
    let m = rejects(
        &b,
        &[
            "tensor_count 9223372036854775808",
            "need at least",
            "only 64 remain",
        ],
    );
    assert_eq!(at(&m), 8);

    let mut b = B::header(3, 0, u64::MAX);
    b.zeros(64);
    rejects(&b, &["metadata_kv_count 18446744073709551615"]);

    // Array claiming 2^63 uint8 elements.
    let mut b = B::header(3, 0, 1);
    b.str("tokenizer.ggml.scores")
        .u32(9)
        .u32(0)
        .u64(1 << 63)
        .zeros(64);
    let m = rejects(
        &b,
        &[
            "metadata key 'tokenizer.ggml.scores'",
            "array of 9223372036854775808 uint8 elements",
            "only 64 remain",
        ],
    );
    assert_eq!(at(&m), 24 + 8 + 21 + 4);

    // Array of 2^62 strings: each needs 8 bytes at least.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(8).u64(1 << 62).zeros(64);
    rejects(&b, &["array of 4611686018427387904 string elements needs at least 36893488147419103232 bytes"]);

    // String value claiming 4 GB.
    let mut b = B::header(3, 0, 1);
    b.str("general.name").u32(8).u64(4_000_000_000).zeros(16);
    let m = rejects(
        &b,
        &[
            "metadata key 'general.name'",
            "string value: length 4000000000 exceeds the 16 bytes left",
        ],
    );
    assert_eq!(at(&m), 24 + 8 + 12 + 4);

    // Arrays that really are backed by bytes, but more values than any model's metadata holds
    // (a crafted "array" swallowing the tensor data would otherwise cost 32 bytes per byte).
    let n = (1u64 << 24) + 1;
    let mut b = B::header(3, 0, 1);
    b.str("a").u32(9).u32(0).u64(n).zeros(n as usize);
    let m = rejects(
        &b,
        &[
            "metadata key 'a'",
            "array of 16777217 elements takes the metadata over 16777216 values",
        ],
    );
    assert_eq!(at(&m), 24 + 8 + 1 + 4);

    // Key claiming u64::MAX bytes.
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).zeros(16);
    rejects(
        &b,
        &["metadata entry #0", "key: length 18446744073709551615"],
    );
}

#[test]
fn bad_magic_and_versions() {
    rejects(
        &B(b"GGML\x03\0\0\0".to_vec()),
        &["bad magic \"GGML\", expected \"GGUF\""],
    );
    rejects(&B(b"tjgg\x03\0\0\0".to_vec()), &["pre-GGUF"]);
    let mut b = B::header(1, 0, 0);
    b.zeros(8);
    rejects(&b, &["GGUF version 1 is not supported"]);
    let mut b = B(b"GGUF".to_vec());
    b.0.extend_from_slice(&3u32.to_be_bytes());
    b.zeros(16);
    rejects(&b, &["big-endian GGUF (version 3)"]);
    let mut b = B::header(7, 0, 0);
    b.zeros(8);
    rejects(&b, &["unsupported GGUF version 7"]);
    rejects(&B(vec![]), &["file is 0 bytes, too short"]);
}

#[test]
fn bad_metadata_values() {
    // Invalid UTF-8 in a key, a value and a tensor name.
    let mut b = B::header(3, 0, 1);
    b.raw_str(b"gen\xffral").u32(4).u32(0);
    let m = rejects(
        &b,
        &[
            "metadata entry #0",
            "key: invalid UTF-8 at byte 3 of the 7-byte string",
        ],
    );
    assert_eq!(at(&m), 24 + 8 + 3);
    let mut b = B::header(3, 0, 1);
    b.str("general.name").u32(8).raw_str(b"ok\xc3(").zeros(4);
    rejects(
        &b,
        &["metadata key 'general.name'", "invalid UTF-8 at byte 2"],
    );
    let mut b = B::header(3, 1, 0);
    b.raw_str(b"\xe2\x82")
        .u32(1)
        .u64(4)
        .u32(0)
        .u64(0)
        .pad(32)
        .zeros(32);
    rejects(
        &b,
        &["tensor info #0", "tensor name: invalid UTF-8 at byte 0"],
    );

    // Unknown value type, bad bool, duplicate key.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    rejects(
        &b,
        &["metadata key 'k'", "value type: unknown value type 13"],
    );
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(77).u64(0);
    rejects(
        &b,
        &[
            "metadata key 'k'",
            "array element type: unknown value type 77",
        ],
    );
    let mut b = B::header(3, 0, 1);
    b.str("flag").u32(7).u8(2).zeros(4);
    rejects(&b, &["metadata key 'flag'", "bool value is 2"]);
    let mut b = B::header(3, 0, 2);
    b.kv_u32("a.b", 1).kv_u32("a.b", 2);
    let m = rejects(&b, &["metadata key 'a.b': duplicate key"]);
    assert_eq!(at(&m), 24 + 8 + 3 + 8);

    // Deeply nested arrays: 10 000 levels of array-of-array, each with one element.
    let mut b = B::header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..10_000 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    rejects(
        &b,
        &["metadata key 'deep'", "arrays nested deeper than 16 levels"],
    );
    // An element deep inside a nested array is named.
    let mut b = B::header(3, 0, 1);
    b.str("n")
        .u32(9)
        .u32(9)
        .u64(2)
        .u32(0)
        .u64(1)
        .u8(5)
        .u32(7)
        .u64(1)
        .u8(9);
    rejects(
        &b,
        &[
            "metadata key 'n'",
            "array element 1: array element 0: bool value is 9",
        ],
    );

    // general.alignment that is not a power of two, or zero.
    for (ty, val) in [(4u32, 0u32), (4, 48)] {
        let mut b = B::header(3, 0, 1);
        b.str("general.alignment").u32(ty).u32(val);
        rejects(&b, &["general.alignment is", "expected a power of two"]);
    }
    let mut b = B::header(3, 0, 1);
    b.kv_str("general.alignment", "32");
    rejects(&b, &["general.alignment is \"32\" (string)"]);
}

#[test]
fn bad_tensor_infos() {
    let one = |name: &str, dims: &[u64], ty: u32, off: u64, data: usize| {
        let mut b = B::header(3, 1, 0);
        b.tensor(name, dims, ty, off).pad(32).zeros(data);
        b
    };
    rejects(
        &one("w", &[], 0, 0, 32),
        &["tensor 'w': n_dims 0 is outside 1..=4"],
    );
    let mut b = B::header(3, 1, 0);
    b.str("w").u32(9);
    for _ in 0..9 {
        b.u64(1);
    }
    b.u32(0).u64(0).pad(32).zeros(32);
    let m = rejects(
        &b,
        &["tensor info #0", "tensor 'w': n_dims 9 is outside 1..=4"],
    );
    assert_eq!(at(&m), 24 + 9);
    rejects(
        &one("w", &[1 << 32, 1 << 32, 2], 0, 0, 32),
        &["tensor 'w': dimension 1 = 4294967296 makes the element count overflow"],
    );
    rejects(
        &one("w", &[u64::MAX], 0, 0, 32),
        &["dimension 0 = 18446744073709551615"],
    );
    rejects(
        &one("w", &[1 << 62], 0, 0, 32),
        &["tensor 'w': byte size of 4611686018427387904 F32 elements overflows"],
    );
    rejects(
        &one("w", &[1 << 60], 0, 0, 32),
        &["tensor 'w': data [0, 4611686018427387904) runs past the end of the 32-byte data section"],
    );
    rejects(
        &one("w", &[33], 2, 0, 64),
        &["tensor 'w': row length 33 is not a multiple of the Q4_0 block size 32"],
    );
    rejects(
        &one("w", &[4], 0, 16, 64),
        &["tensor 'w': data offset 16 is not a multiple of the alignment 32"],
    );
    rejects(
        &one("w", &[4], 0, 1 << 40, 64),
        &["tensor 'w': data offset 1099511627776 is past the end of the 64-byte data section"],
    );
    rejects(
        &one("w", &[16], 0, 32, 64),
        &["tensor 'w': data [32, 96) runs past the end of the 64-byte data section"],
    );

    // Overlap, and duplicates.
    let mut b = B::header(3, 2, 0);
    b.tensor("x", &[16], 0, 0)
        .tensor("y", &[8], 0, 32)
        .pad(32)
        .zeros(128);
    rejects(
        &b,
        &["tensors 'x' (data [0, 64)) and 'y' (data from 32) overlap"],
    );
    let mut b = B::header(3, 2, 0);
    b.tensor("x", &[8], 0, 0)
        .tensor("x", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    rejects(&b, &["tensor 'x': duplicate tensor name"]);

    // Data section start past the end.
    let mut b = B::header(3, 1, 0);
    b.tensor("x", &[8], 0, 0);
    rejects(&b, &["data section would start at byte"]);
}

#[test]
fn unknown_tensor_type_is_not_fatal() {
    let mut b = B::header(3, 3, 0);
    b.tensor("known", &[8], 0, 0)
        .tensor("weird", &[100], 1234, 32)
        .tensor("last", &[7, 3], 4321, 128)
        .pad(32)
        .zeros(192);
    let h = parse(&b.0).unwrap();
    let t = &h.tensors;
    assert_eq!(t[1].type_name(), "unknown(1234)");
    assert_eq!(t[1].n_bytes, Some(96), "gap to the next tensor");
    assert_eq!(t[2].type_name(), "unknown(4321)");
    assert_eq!(t[2].n_bytes, Some(64), "gap to the end of the file");
    assert_eq!(t[2].n_elements(), 21);
}

#[test]
fn open_reports_io_and_tiny_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = GgufFile::open(dir.path().join("missing.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.gguf") && e.contains("No such file"),
        "{e}"
    );
    let p = dir.path().join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("empty.gguf: invalid GGUF at byte 0: file is 0 bytes"),
        "{e}"
    );
    std::fs::write(&p, b"GGUF\x03\0\0").unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("version needs 4 bytes but only 3 remain"), "{e}");
}
