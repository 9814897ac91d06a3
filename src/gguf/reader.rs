//! Validated, zero-copy GGUF reader over a memory map.
//!
//! Every length and count read from the file is checked against the bytes that remain before
//! anything is allocated, so a crafted file can neither crash the reader nor make it allocate
//! more than a small multiple of the file's own size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::value::{printable, Array, Value, ValueType};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Deepest array nesting accepted (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: usize = 16;
/// Most array elements the whole metadata may hold. Real models hold about a million (tokenizer
/// tokens, scores, types and merges); the cap bounds memory for crafted files whose "array"
/// swallows gigabytes of tensor data.
pub const MAX_METADATA_VALUES: u64 = 1 << 24;
/// Capacity reserved up front for any list read from a file; larger lists grow as they parse.
const MAX_RESERVE: usize = 1 << 16;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Smallest possible encoded metadata entry: key length (8) + type (4) + a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Smallest possible encoded tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 8 + 4 + 8;

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (the fastest-varying one).
    pub dims: Vec<u64>,
    /// The raw ggml type id.
    pub type_id: u32,
    /// The type, or `None` when the id is unknown to ggufq.
    pub ty: Option<GgmlType>,
    /// Offset of the data, relative to [`GgufFile::data_offset`].
    pub offset: u64,
    /// Size of the data in bytes. For a tensor of unknown type this is the gap to the next
    /// tensor (or to the end of the file), so it may include alignment padding. `None` only for
    /// an unknown type whose size cannot be computed (the reader always computes one).
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// Number of elements (product of the dimensions; saturates instead of overflowing).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Row length: `dims[0]` (1 for a tensor without dimensions).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: elements / row length (0 when the row length is 0).
    pub fn n_rows(&self) -> u64 {
        self.n_elements().checked_div(self.row_len()).unwrap_or(0)
    }

    /// The type's name (`Q4_K`), or `unknown(N)` for an unknown id.
    pub fn type_name(&self) -> String {
        match self.ty {
            Some(t) => t.name().to_string(),
            None => format!("unknown({})", self.type_id),
        }
    }
}

/// Everything in a GGUF file before the tensor data, as returned by [`GgufFile::parse`].
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order, validated against the file size.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment` or 32).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Size of the whole file in bytes.
    pub file_size: u64,
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open, fully validated GGUF file.
pub struct GgufFile {
    /// The path it was opened from (used in error messages).
    pub path: PathBuf,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment in bytes.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// File size in bytes.
    pub file_size: u64,
    storage: Storage,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_size", &self.file_size)
            .finish()
    }
}

impl GgufFile {
    /// Memory-map `path` and validate it completely.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 4 {
            // mmap of an empty file fails; report the real problem instead.
            let mut buf = Vec::new();
            use std::io::Read;
            (&file)
                .take(4)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(path, e))?;
            return Self::from_bytes(buf, path);
        }
        // SAFETY: the map is read-only; like every mmap-based reader we rely on the file not
        // being truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::from_storage(Storage::Mmap(map), path)
    }

    /// Validate an in-memory GGUF image (tests, fuzzing, small files).
    pub fn from_bytes(bytes: Vec<u8>, path: impl AsRef<Path>) -> Result<GgufFile> {
        Self::from_storage(Storage::Owned(bytes), path.as_ref())
    }

    fn from_storage(storage: Storage, path: &Path) -> Result<GgufFile> {
        let h = Self::parse(storage.bytes(), path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            alignment: h.alignment,
            data_offset: h.data_offset,
            file_size: h.file_size,
            storage,
        })
    }

    /// Parse and validate the header of a GGUF image; `path` only labels errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Header> {
        Parser {
            buf: bytes,
            pos: 0,
            path,
            values: 0,
        }
        .header()
    }

    /// The whole file's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// An integer metadata value that fits in a `u64`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// A numeric metadata value as `f64`.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's raw bytes, a zero-copy slice of the map.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8]> {
        let n = t.n_bytes.ok_or_else(|| Error::Tensor {
            tensor: t.name.clone(),
            msg: format!("size of type {} is unknown", t.type_name()),
        })?;
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| Some(s..s.checked_add(n)?))
            .and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?));
        range
            .and_then(|r| self.as_bytes().get(r))
            .ok_or_else(|| Error::Tensor {
                tensor: t.name.clone(),
                msg: format!(
                    "data at offset {} (+{} bytes) lies outside {}",
                    t.offset,
                    n,
                    self.path.display()
                ),
            })
    }
}

/// Prefix the message of a GGUF error with some context (`metadata key 'x': ...`).
fn with_ctx(e: Error, ctx: impl FnOnce() -> String) -> Error {
    match e {
        Error::Gguf { path, offset, msg } => Error::Gguf {
            path,
            offset,
            msg: format!("{}: {msg}", ctx()),
        },
        other => other,
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Array elements read so far (against [`MAX_METADATA_VALUES`]).
    values: u64,
}

impl<'a> Parser<'a> {
    fn err(&self, offset: usize, msg: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            msg: msg.into(),
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(
                self.pos,
                format!(
                    "{what} needs {n} bytes but only {} remain (file is {} bytes)",
                    self.remaining(),
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.err(
                start,
                format!(
                    "{what}: length {len} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        let body = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(
                body + e.valid_up_to(),
                format!(
                    "{what}: invalid UTF-8 at byte {} of the {len}-byte string",
                    e.valid_up_to()
                ),
            )),
        }
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.err(at, format!("{what}: unknown value type {id}")))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("uint8 value")?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("int8 value")?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("uint16 value")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("int16 value")?)),
            ValueType::U32 => Value::U32(self.u32("uint32 value")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("int32 value")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("float32 value")?)),
            ValueType::U64 => Value::U64(self.u64("uint64 value")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("int64 value")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("float64 value")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>("bool value")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.err(at, format!("bool value is {b}, not 0 or 1"))),
                }
            }
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
        })
    }

    fn array_value(&mut self, depth: usize) -> Result<Array> {
        let start = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err(
                start,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        let elem_type = self.value_type("array element type")?;
        let len = self.u64("array length")?;
        let need = u128::from(len) * u128::from(elem_type.min_size());
        if need > u128::from(self.remaining()) {
            return Err(self.err(
                start,
                format!(
                    "array of {len} {elem_type} elements needs at least {need} bytes but only {} remain",
                    self.remaining()
                ),
            ));
        }
        self.values += len;
        if self.values > MAX_METADATA_VALUES {
            return Err(self.err(
                start,
                format!(
                    "array of {len} elements takes the metadata over {MAX_METADATA_VALUES} values"
                ),
            ));
        }
        // `need` fits in the remaining bytes, so `len` is bounded by the file size.
        let mut values = Vec::with_capacity((len as usize).min(MAX_RESERVE));
        if let Some(size) = elem_type.fixed_size() {
            if elem_type != ValueType::Bool {
                let raw = self.take(len * size, "array data")?;
                for c in raw.chunks_exact(size as usize) {
                    values.push(decode_fixed(elem_type, c));
                }
                return Ok(Array { elem_type, values });
            }
        }
        for i in 0..len {
            let v = self
                .value(elem_type, depth)
                .map_err(|e| with_ctx(e, || format!("array element {i}")))?;
            values.push(v);
        }
        Ok(Array { elem_type, values })
    }

    fn header(mut self) -> Result<Header> {
        let file_size = self.buf.len() as u64;
        if self.buf.len() < 4 {
            return Err(self.err(
                0,
                format!("file is {file_size} bytes, too short for the GGUF magic"),
            ));
        }
        let magic = self.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            let hint = match &magic {
                b"lmgg" | b"fmgg" | b"tjgg" => " (a pre-GGUF ggml/ggjt file)",
                b"FUGG" => " (byte-swapped magic)",
                _ => "",
            };
            return Err(self.err(
                0,
                format!(
                    "bad magic {:?}, expected \"GGUF\"{hint}",
                    String::from_utf8_lossy(&magic)
                ),
            ));
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(self.err(4, "GGUF version 1 is not supported (only 2 and 3)"));
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(self.err(
                    4,
                    format!(
                        "big-endian GGUF (version {}) is not supported",
                        v.swap_bytes()
                    ),
                ));
            }
            v => {
                return Err(self.err(4, format!("unsupported GGUF version {v} (only 2 and 3)")));
            }
        }
        let counts_at = self.pos;
        let tensor_count = self.u64("tensor_count")?;
        let kv_count = self.u64("metadata_kv_count")?;
        let need = u128::from(tensor_count) * u128::from(MIN_TENSOR_INFO_SIZE)
            + u128::from(kv_count) * u128::from(MIN_KV_SIZE);
        if need > u128::from(self.remaining()) {
            return Err(self.err(
                counts_at,
                format!(
                    "tensor_count {tensor_count} and metadata_kv_count {kv_count} need at least \
                     {need} bytes but only {} remain",
                    self.remaining()
                ),
            ));
        }

        // Metadata.
        let mut metadata = Vec::with_capacity((kv_count as usize).min(MAX_RESERVE));
        let mut alignment = DEFAULT_ALIGNMENT;
        {
            let mut seen: HashSet<String> =
                HashSet::with_capacity((kv_count as usize).min(MAX_RESERVE));
            for i in 0..kv_count {
                let kv_at = self.pos;
                let key = self
                    .string("key")
                    .map_err(|e| with_ctx(e, || format!("metadata entry #{i}")))?;
                let ctx = || format!("metadata key '{}'", printable(&key));
                if !seen.insert(key.clone()) {
                    return Err(self.err(kv_at, format!("{}: duplicate key", ctx())));
                }
                let ty = self
                    .value_type("value type")
                    .map_err(|e| with_ctx(e, ctx))?;
                let value = self.value(ty, 0).map_err(|e| with_ctx(e, ctx))?;
                if key == ALIGNMENT_KEY {
                    alignment = match value.as_u64() {
                        Some(a) if a.is_power_of_two() && value.value_type() != ValueType::Bool => {
                            a
                        }
                        _ => {
                            return Err(self.err(
                                kv_at,
                                format!(
                                    "{ALIGNMENT_KEY} is {value} ({}), expected a power of two",
                                    value.value_type()
                                ),
                            ))
                        }
                    };
                }
                metadata.push((key, value));
            }
        }

        // Tensor infos.
        let mut tensors = Vec::with_capacity((tensor_count as usize).min(MAX_RESERVE));
        let mut info_at = Vec::with_capacity((tensor_count as usize).min(MAX_RESERVE));
        {
            let mut names: HashSet<String> =
                HashSet::with_capacity((tensor_count as usize).min(MAX_RESERVE));
            for i in 0..tensor_count {
                let at = self.pos;
                let t = self
                    .tensor_info()
                    .map_err(|e| with_ctx(e, || format!("tensor info #{i}")))?;
                if !names.insert(t.name.clone()) {
                    return Err(self.err(
                        at,
                        format!("tensor '{}': duplicate tensor name", printable(&t.name)),
                    ));
                }
                tensors.push(t);
                info_at.push(at);
            }
        }

        // Data section.
        let header_end = self.pos as u64;
        let data_offset = header_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.err(self.pos, format!("alignment {alignment} overflows")))?;
        if !tensors.is_empty() && data_offset > file_size {
            return Err(self.err(
                self.pos,
                format!(
                    "data section would start at byte {data_offset}, past the end of the \
                     {file_size}-byte file"
                ),
            ));
        }
        let data_size = file_size.saturating_sub(data_offset);

        for (t, &at) in tensors.iter().zip(&info_at) {
            if t.offset % alignment != 0 {
                return Err(self.err(
                    at,
                    format!(
                        "tensor '{}': data offset {} is not a multiple of the alignment {alignment}",
                        printable(&t.name), t.offset
                    ),
                ));
            }
            if t.offset > data_size {
                return Err(self.err(
                    at,
                    format!(
                        "tensor '{}': data offset {} is past the end of the {data_size}-byte data section",
                        printable(&t.name), t.offset
                    ),
                ));
            }
            if let Some(n) = t.n_bytes {
                if n > data_size - t.offset {
                    return Err(self.err(
                        at,
                        format!(
                            "tensor '{}': data [{}, {}) runs past the end of the {data_size}-byte \
                             data section (file truncated?)",
                            printable(&t.name),
                            t.offset,
                            u128::from(t.offset) + u128::from(n)
                        ),
                    ));
                }
            }
        }

        // Sizes of unknown types from the gaps, then overlaps.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].offset, tensors[i].n_bytes.unwrap_or(u64::MAX)));
        for (k, &i) in order.iter().enumerate() {
            if tensors[i].n_bytes.is_none() {
                let end = order
                    .get(k + 1)
                    .map(|&j| tensors[j].offset)
                    .unwrap_or(data_size);
                tensors[i].n_bytes = Some(end - tensors[i].offset);
            }
        }
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            let a_end = a.offset + a.n_bytes.unwrap_or(0);
            if a_end > b.offset {
                return Err(self.err(
                    info_at[w[1]],
                    format!(
                        "tensors '{}' (data [{}, {a_end})) and '{}' (data from {}) overlap",
                        printable(&a.name),
                        a.offset,
                        printable(&b.name),
                        b.offset
                    ),
                ));
            }
        }

        Ok(Header {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size,
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string("tensor name")?;
        let shown = printable(&name).into_owned();
        let ctx = || format!("tensor '{shown}'");
        let dims_at = self.pos;
        let n_dims = self.u32("n_dims").map_err(|e| with_ctx(e, ctx))?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(self.err(
                dims_at,
                format!("tensor '{shown}': n_dims {n_dims} is outside 1..={MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n: u64 = 1;
        for d in 0..n_dims {
            let at = self.pos;
            let v = self.u64("dimension").map_err(|e| with_ctx(e, ctx))?;
            n = match n.checked_mul(v) {
                Some(n) if v <= i64::MAX as u64 && n <= i64::MAX as u64 => n,
                _ => {
                    return Err(self.err(
                        at,
                        format!(
                            "tensor '{shown}': dimension {d} = {v} makes the element count overflow"
                        ),
                    ))
                }
            };
            dims.push(v);
        }
        let type_at = self.pos;
        let type_id = self.u32("type").map_err(|e| with_ctx(e, ctx))?;
        let offset = self.u64("data offset").map_err(|e| with_ctx(e, ctx))?;
        let ty = GgmlType::from_id(type_id);
        let n_bytes = match ty {
            None => None,
            Some(t) => {
                if dims[0] % t.block_size() != 0 {
                    return Err(self.err(
                        type_at,
                        format!(
                            "tensor '{shown}': row length {} is not a multiple of the {} block size {}",
                            dims[0],
                            t.name(),
                            t.block_size()
                        ),
                    ));
                }
                Some(t.bytes_for(n).ok_or_else(|| {
                    self.err(
                        type_at,
                        format!(
                            "tensor '{shown}': byte size of {n} {} elements overflows",
                            t.name()
                        ),
                    )
                })?)
            }
        };
        Ok(TensorInfo {
            name,
            dims,
            type_id,
            ty,
            offset,
            n_bytes,
        })
    }
}

fn decode_fixed(ty: ValueType, c: &[u8]) -> Value {
    let a2 = || [c[0], c[1]];
    let a4 = || [c[0], c[1], c[2], c[3]];
    let a8 = || [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
    match ty {
        ValueType::U8 => Value::U8(c[0]),
        ValueType::I8 => Value::I8(c[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(a2())),
        ValueType::I16 => Value::I16(i16::from_le_bytes(a2())),
        ValueType::U32 => Value::U32(u32::from_le_bytes(a4())),
        ValueType::I32 => Value::I32(i32::from_le_bytes(a4())),
        ValueType::F32 => Value::F32(f32::from_le_bytes(a4())),
        ValueType::U64 => Value::U64(u64::from_le_bytes(a8())),
        ValueType::I64 => Value::I64(i64::from_le_bytes(a8())),
        ValueType::F64 => Value::F64(f64::from_le_bytes(a8())),
        // Not reached: bools, strings and arrays are decoded one by one.
        ValueType::Bool => Value::Bool(c[0] != 0),
        ValueType::String | ValueType::Array => Value::U8(0),
    }
}
