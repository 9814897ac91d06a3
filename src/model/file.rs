//! A GGUF model file as the runtime sees it: typed metadata look-ups and zero-copy tensor views.
//!
//! This is a thin adapter so the runtime does not depend on the reader's internals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value as CValue};
use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// An opened GGUF model file (memory-mapped).
pub struct ModelFile {
    path: PathBuf,
    content: Content,
    mmap: Mmap,
}

/// Where one tensor lives in a [`ModelFile`].
#[derive(Clone, Debug)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Data length in bytes.
    pub n_bytes: u64,
}

impl TensorMeta {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }
    /// Number of rows (product of the other dimensions).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

fn cerr(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        offset: 0,
        msg: e.to_string(),
    }
}

fn dtype_id(d: candle_core::quantized::GgmlDType) -> u32 {
    use candle_core::quantized::GgmlDType as D;
    match d {
        D::F32 => 0,
        D::F16 => 1,
        D::Q4_0 => 2,
        D::Q4_1 => 3,
        D::Q5_0 => 6,
        D::Q5_1 => 7,
        D::Q8_0 => 8,
        D::Q8_1 => 9,
        D::Q2K => 10,
        D::Q3K => 11,
        D::Q4K => 12,
        D::Q5K => 13,
        D::Q6K => 14,
        D::Q8K => 15,
        D::BF16 => 30,
    }
}

impl ModelFile {
    /// Open and parse a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<ModelFile>> {
        let path = path.as_ref().to_path_buf();
        let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let content = Content::read(&mut f).map_err(|e| cerr(&path, e))?;
        // SAFETY: the file is opened read-only; ggufq never writes to a model while reading it.
        let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
        Ok(Arc::new(ModelFile {
            path,
            content,
            mmap,
        }))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn value(&self, key: &str) -> Option<&CValue> {
        self.content.metadata.get(key)
    }

    /// Whether a metadata key exists.
    pub fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    /// An integer metadata value (any integer type, or a bool).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.value(key)? {
            CValue::U8(v) => Some(*v as u64),
            CValue::I8(v) => u64::try_from(*v).ok(),
            CValue::U16(v) => Some(*v as u64),
            CValue::I16(v) => u64::try_from(*v).ok(),
            CValue::U32(v) => Some(*v as u64),
            CValue::I32(v) => u64::try_from(*v).ok(),
            CValue::U64(v) => Some(*v),
            CValue::I64(v) => u64::try_from(*v).ok(),
            CValue::Bool(b) => Some(*b as u64),
            _ => None,
        }
    }

    /// A floating-point (or integer) metadata value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        match self.value(key)? {
            CValue::F32(v) => Some(*v as f64),
            CValue::F64(v) => Some(*v),
            _ => self.get_u64(key).map(|v| v as f64),
        }
    }

    /// A boolean metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.value(key)? {
            CValue::Bool(b) => Some(*b),
            _ => self.get_u64(key).map(|v| v != 0),
        }
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            CValue::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        match self.value(key)? {
            CValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    CValue::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An array of numbers as f32.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        match self.value(key)? {
            CValue::Array(a) => a
                .iter()
                .map(|v| {
                    v.to_f32()
                        .ok()
                        .or_else(|| v.to_i32().ok().map(|i| i as f32))
                })
                .collect(),
            _ => None,
        }
    }

    /// An array of integers as i64.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        match self.value(key)? {
            CValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    CValue::I32(i) => Some(*i as i64),
                    CValue::U32(i) => Some(*i as i64),
                    CValue::I64(i) => Some(*i),
                    CValue::U64(i) => i64::try_from(*i).ok(),
                    CValue::U8(i) => Some(*i as i64),
                    CValue::I8(i) => Some(*i as i64),
                    CValue::U16(i) => Some(*i as i64),
                    CValue::I16(i) => Some(*i as i64),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Metadata of one tensor, if present.
    pub fn tensor(&self, name: &str) -> Option<TensorMeta> {
        let ti = self.content.tensor_infos.get(name)?;
        let id = dtype_id(ti.ggml_dtype);
        let ty = GgmlType::from_id(id)?;
        let mut dims: Vec<u64> = ti.shape.dims().iter().map(|&d| d as u64).collect();
        dims.reverse();
        let n: u64 = dims.iter().product();
        Some(TensorMeta {
            name: name.to_string(),
            n_bytes: ty.bytes_for(n)?,
            dims,
            ty,
            offset: self.content.tensor_data_offset + ti.offset,
        })
    }

    /// The bytes of a tensor, checked against the file size.
    pub fn data(&self, t: &TensorMeta) -> Result<&[u8]> {
        let start = t.offset as usize;
        let end = start.checked_add(t.n_bytes as usize);
        match end {
            Some(end) if end <= self.mmap.len() => Ok(&self.mmap[start..end]),
            _ => Err(Error::Gguf {
                path: self.path.clone(),
                offset: t.offset,
                msg: format!(
                    "tensor '{}' data ({} bytes) runs past the end of the file",
                    t.name, t.n_bytes
                ),
            }),
        }
    }
}
