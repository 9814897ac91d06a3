//! A GGUF model file as the runtime sees it: typed metadata look-ups and zero-copy tensor views.
//!
//! This is a thin adapter over [`crate::gguf::GgufFile`] (memory-mapped, fully validated) so
//! the runtime does not depend on the reader's internals.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::quant::GgmlType;

/// An opened GGUF model file (memory-mapped).
pub struct ModelFile {
    gguf: GgufFile,
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

/// An integer (or bool) value as u64.
fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Bool(b) => Some(*b as u64),
        other => other.as_u64(),
    }
}

impl ModelFile {
    /// Open, memory-map and validate a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<ModelFile>> {
        Ok(Arc::new(ModelFile {
            gguf: GgufFile::open(path)?,
        }))
    }

    /// Wrap an already opened GGUF file.
    pub fn from_gguf(gguf: GgufFile) -> Arc<ModelFile> {
        Arc::new(ModelFile { gguf })
    }

    /// The underlying GGUF reader.
    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.gguf.path
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.gguf.get(key)
    }

    /// Whether a metadata key exists.
    pub fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    /// An integer metadata value (any integer type, or a bool).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        int_of(self.value(key)?)
    }

    /// A floating-point (or integer) metadata value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        let v = self.value(key)?;
        v.as_f64().or_else(|| int_of(v).map(|i| i as f64))
    }

    /// A boolean metadata value (integers: non-zero is true).
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        let v = self.value(key)?;
        v.as_bool().or_else(|| v.as_i64().map(|i| i != 0))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.value(key)?.as_str()
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.value(key)?
            .as_array()?
            .values
            .iter()
            .map(Value::as_str)
            .collect()
    }

    /// An array of numbers as f32.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.value(key)?
            .as_array()?
            .values
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect()
    }

    /// An array of booleans.
    pub fn get_bool_array(&self, key: &str) -> Option<Vec<bool>> {
        self.value(key)?
            .as_array()?
            .values
            .iter()
            .map(Value::as_bool)
            .collect()
    }

    /// An array of integers as i64.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        self.value(key)?
            .as_array()?
            .values
            .iter()
            .map(Value::as_i64)
            .collect()
    }

    /// Metadata of one tensor, if present with a type ggufq knows.
    pub fn tensor(&self, name: &str) -> Option<TensorMeta> {
        let ti = self.gguf.tensor(name)?;
        let ty = ti.ty?;
        Some(TensorMeta {
            name: name.to_string(),
            n_bytes: ty.bytes_for(ti.n_elements())?,
            dims: ti.dims.clone(),
            ty,
            offset: self.gguf.data_offset.checked_add(ti.offset)?,
        })
    }

    /// The bytes of a tensor, checked against the file size.
    pub fn data(&self, t: &TensorMeta) -> Result<&[u8]> {
        let bytes = self.gguf.as_bytes();
        let range = usize::try_from(t.offset).ok().and_then(|s| {
            let e = s.checked_add(usize::try_from(t.n_bytes).ok()?)?;
            Some(s..e)
        });
        range.and_then(|r| bytes.get(r)).ok_or_else(|| Error::Gguf {
            path: self.path().to_path_buf(),
            offset: t.offset,
            msg: format!(
                "tensor '{}' data ({} bytes) runs past the end of the file",
                t.name, t.n_bytes
            ),
        })
    }
}
