//! Streaming GGUF writer: header first, then tensor data one tensor at a time.
//!
//! Layout is the one llama.cpp and gguf-py produce: metadata in the given order, tensor infos in
//! the given order with offsets assigned consecutively, each tensor's data padded with zeros to
//! the alignment, the data section starting at the first aligned offset after the header.

use std::io::Write;

use super::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
use super::value::{Array, Value};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// What the writer needs to know about a tensor before its data arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` = row length).
    pub dims: Vec<u64>,
    /// ggml type id (may be one ggufq does not know; then `n_bytes` is trusted).
    pub type_id: u32,
    /// Exact number of data bytes [`GgufWriter::write_tensor`] will receive.
    pub n_bytes: u64,
}

impl TensorSpec {
    /// A spec for a known type, with the byte size computed from the dimensions.
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ty: GgmlType) -> Result<TensorSpec> {
        let name = name.into();
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| ty.bytes_for(n))
            .ok_or_else(|| Error::Tensor {
                tensor: name.clone(),
                msg: format!(
                    "dims {dims:?} do not make a whole number of {} blocks",
                    ty.name()
                ),
            })?;
        Ok(TensorSpec {
            name,
            dims,
            type_id: ty.id(),
            n_bytes: n,
        })
    }
}

/// Writes a GGUF file in one pass. Construct with [`GgufWriter::new`] (writes the header), call
/// [`GgufWriter::write_tensor`] once per tensor in order, then [`GgufWriter::finish`].
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<TensorSpec>,
    next: usize,
    alignment: u64,
    written: u64,
    /// Bytes of the current tensor received so far ([`GgufWriter::write_tensor_part`]).
    part: u64,
    /// The output's path, for I/O errors.
    path: Option<std::path::PathBuf>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::msg(format!("GGUF writer: {}", msg.into()))
}

impl<W: Write> GgufWriter<W> {
    /// Validate the header, write it to `out`, and get ready for the tensors' data.
    ///
    /// `alignment` must be a power of two and agree with `general.alignment` in `metadata`
    /// (when that key is absent it must be 32, the GGUF default).
    pub fn new(
        out: W,
        version: u32,
        alignment: u64,
        metadata: &[(String, Value)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self> {
        Self::new_inner(out, None, version, alignment, metadata, tensors)
    }

    /// Like [`GgufWriter::new`] for output written to the file `path`: every I/O error,
    /// including those writing the header, is an [`Error::Io`] naming `path`.
    pub fn new_for_path(
        out: W,
        path: &std::path::Path,
        version: u32,
        alignment: u64,
        metadata: &[(String, Value)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self> {
        Self::new_inner(
            out,
            Some(path.to_path_buf()),
            version,
            alignment,
            metadata,
            tensors,
        )
    }

    fn new_inner(
        mut out: W,
        path: Option<std::path::PathBuf>,
        version: u32,
        alignment: u64,
        metadata: &[(String, Value)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self> {
        if !matches!(version, 2 | 3) {
            return Err(bad(format!(
                "version {version} (only 2 and 3 can be written)"
            )));
        }
        if !alignment.is_power_of_two() {
            return Err(bad(format!("alignment {alignment} is not a power of two")));
        }
        let meta_align = metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .map(|(_, v)| v.as_u64());
        match meta_align {
            None if alignment != DEFAULT_ALIGNMENT => {
                return Err(bad(format!(
                    "alignment {alignment} needs a {ALIGNMENT_KEY} metadata entry"
                )))
            }
            Some(a) if a != Some(alignment) => {
                return Err(bad(format!(
                    "alignment {alignment} disagrees with {ALIGNMENT_KEY} in the metadata"
                )))
            }
            _ => {}
        }
        let mut keys = std::collections::HashSet::new();
        for (k, v) in metadata {
            if !keys.insert(k.as_str()) {
                return Err(bad(format!("duplicate metadata key '{k}'")));
            }
            check_value(v, 0).map_err(|m| bad(format!("metadata key '{k}': {m}")))?;
        }
        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(bad(format!("duplicate tensor name '{}'", t.name)));
            }
            if !(1..=MAX_DIMS as usize).contains(&t.dims.len()) {
                return Err(bad(format!(
                    "tensor '{}' has {} dimensions (1..={MAX_DIMS} allowed)",
                    t.name,
                    t.dims.len()
                )));
            }
            if let Some(ty) = GgmlType::from_id(t.type_id) {
                let expect = t
                    .dims
                    .iter()
                    .try_fold(1u64, |a, &d| a.checked_mul(d))
                    .and_then(|n| ty.bytes_for(n));
                if expect != Some(t.n_bytes) {
                    return Err(bad(format!(
                        "tensor '{}': {} bytes given but dims {:?} of {} need {:?}",
                        t.name,
                        t.n_bytes,
                        t.dims,
                        ty.name(),
                        expect
                    )));
                }
            }
        }

        let io = |e| match &path {
            Some(p) => Error::io(p, e),
            None => Error::msg(format!("GGUF writer: {e}")),
        };
        let mut h = Vec::with_capacity(4096);
        let mut flushed = 0u64;
        h.extend_from_slice(b"GGUF");
        h.extend_from_slice(&version.to_le_bytes());
        h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut h, k);
            h.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut h, v);
            if h.len() > 1 << 20 {
                out.write_all(&h).map_err(io)?;
                flushed += h.len() as u64;
                h.clear();
            }
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.type_id.to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.n_bytes)
                .and_then(|o| o.checked_next_multiple_of(alignment))
                .ok_or_else(|| bad("total data size overflows"))?;
        }
        let header_len = flushed + h.len() as u64;
        let pad = header_len.next_multiple_of(alignment) - header_len;
        h.resize(h.len() + pad as usize, 0);
        out.write_all(&h).map_err(io)?;
        Ok(GgufWriter {
            out,
            tensors,
            next: 0,
            alignment,
            written: header_len + pad,
            part: 0,
            path,
        })
    }

    /// Name the file being written: I/O errors then become [`Error::Io`] on that path
    /// (otherwise a message naming the tensor).
    pub fn with_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    fn io_error(&self, tensor: &str, e: std::io::Error) -> Error {
        match &self.path {
            Some(p) => Error::io(p, e),
            None => Error::msg(format!("GGUF writer: tensor '{tensor}': {e}")),
        }
    }

    /// Write the next tensor's data (exactly its spec's `n_bytes`) followed by its padding.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let t = self.tensors.get(self.next).ok_or_else(|| {
            bad(format!(
                "write_tensor called {} times for {} tensors",
                self.next + 1,
                self.tensors.len()
            ))
        })?;
        if data.len() as u64 != t.n_bytes || self.part != 0 {
            return Err(bad(format!(
                "tensor '{}': got {} bytes, expected {}",
                t.name,
                data.len() as u64 + self.part,
                t.n_bytes
            )));
        }
        self.write_tensor_part(data)
    }

    /// Write the next piece of the current tensor's data. Pieces are concatenated; when they
    /// add up to the spec's `n_bytes` the padding is written and the next tensor begins. More
    /// bytes than the tensor holds is an error.
    pub fn write_tensor_part(&mut self, data: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(bad(format!(
                "tensor data after the last of {} tensors",
                self.tensors.len()
            )));
        };
        let n_bytes = t.n_bytes;
        let end = self.part + data.len() as u64;
        if end > n_bytes {
            return Err(bad(format!(
                "tensor '{}': got {end} bytes, expected {n_bytes}",
                t.name
            )));
        }
        if let Err(e) = self.out.write_all(data) {
            let name = t.name.clone();
            return Err(self.io_error(&name, e));
        }
        self.part = end;
        if end == n_bytes {
            let pad = n_bytes.next_multiple_of(self.alignment) - n_bytes;
            if pad > 0 {
                let zeros = vec![0u8; pad as usize];
                if let Err(e) = self.out.write_all(&zeros) {
                    let name = self.tensors[self.next].name.clone();
                    return Err(self.io_error(&name, e));
                }
            }
            self.written += n_bytes + pad;
            self.next += 1;
            self.part = 0;
        }
        Ok(())
    }

    /// Name of the tensor the next [`GgufWriter::write_tensor`] call expects, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Check that every tensor was written, flush, and return the output.
    pub fn finish(mut self) -> Result<W> {
        if self.next != self.tensors.len() {
            return Err(bad(format!(
                "finish after {} of {} tensors (next: '{}')",
                self.next,
                self.tensors.len(),
                self.tensors[self.next].name
            )));
        }
        if let Err(e) = self.out.flush() {
            return Err(match &self.path {
                Some(p) => Error::io(p, e),
                None => Error::msg(format!("GGUF writer: {e}")),
            });
        }
        Ok(self.out)
    }
}

fn check_value(v: &Value, depth: usize) -> std::result::Result<(), String> {
    if let Value::Array(a) = v {
        if depth + 1 > MAX_ARRAY_DEPTH {
            return Err(format!(
                "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            ));
        }
        for (i, e) in a.values.iter().enumerate() {
            if e.value_type() != a.elem_type {
                return Err(format!(
                    "array element {i} is {}, array is of {}",
                    e.value_type(),
                    a.elem_type
                ));
            }
            check_value(e, depth + 1)?;
        }
    }
    Ok(())
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_array(h: &mut Vec<u8>, a: &Array) {
    h.extend_from_slice(&a.elem_type.id().to_le_bytes());
    h.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
    for v in &a.values {
        put_value(h, v);
    }
}

fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_bits().to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_str(h, s),
        Value::Array(a) => put_array(h, a),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_bits().to_le_bytes()),
    }
}
