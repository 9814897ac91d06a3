//! Importance matrices from llama.cpp's `llama-imatrix`: the GGUF format (`<name>.in_sum2` and
//! `<name>.counts` F32 tensors plus `imatrix.*` metadata) and the legacy `.dat` binary format.
//!
//! Values are normalised the way llama-quantize does before quantizing: GGUF sums are divided
//! by the per-expert count (a zero count gives weights of 1), legacy values by `ncall`.
//! Hostile input gives an error naming the file and byte offset, never a panic or a huge
//! allocation: every length is checked against the bytes that remain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quant::GgmlType;

/// A loaded importance matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Imatrix {
    /// The file it came from.
    pub path: PathBuf,
    /// Tensor name → normalised weights (`row_len × n_expert` values).
    pub entries: HashMap<String, Vec<f32>>,
    /// Datasets named in the file.
    pub datasets: Vec<String>,
    /// Number of chunks the statistics were computed on.
    pub chunk_count: u64,
    /// True for the legacy `.dat` format.
    pub legacy: bool,
}

fn bad(path: &Path, offset: u64, msg: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        offset,
        msg: format!("imatrix: {}", msg.into()),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(bad(
                self.path,
                self.pos as u64,
                format!(
                    "file ends inside {what} ({n} bytes needed, {} left)",
                    self.buf.len() - self.pos
                ),
            )),
        }
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl Imatrix {
    /// Load an imatrix file, GGUF or legacy (detected by the `GGUF` magic).
    pub fn load(path: impl AsRef<Path>) -> Result<Imatrix> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
            if n < 4 {
                return Err(bad(path, 0, "file is too short"));
            }
        }
        if &head == b"GGUF" {
            let f = GgufFile::open(path)?;
            Imatrix::from_gguf(&f)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            Imatrix::parse_legacy(&bytes, path)
        }
    }

    /// Parse the legacy binary format: `i32 n_entries`, then per entry `i32 len, name,
    /// i32 ncall, i32 nval, f32[nval]`, then optionally `i32 chunk_count, i32 len, dataset`.
    pub fn parse_legacy(bytes: &[u8], path: &Path) -> Result<Imatrix> {
        let mut c = Cursor {
            buf: bytes,
            pos: 0,
            path,
        };
        let n_entries = c.i32("the entry count")?;
        if n_entries < 1 {
            return Err(bad(path, 0, format!("no data (entry count {n_entries})")));
        }
        let mut entries = HashMap::new();
        for i in 0..n_entries {
            let at = c.pos as u64;
            let len = c.i32("a name length")?;
            let len = usize::try_from(len).map_err(|_| {
                bad(
                    path,
                    at,
                    format!("entry {}: negative name length {len}", i + 1),
                )
            })?;
            let name_bytes = c.take(len, "a name")?;
            // llama.cpp reads the name as a C string: it stops at the first NUL.
            let name_bytes = name_bytes.split(|&b| b == 0).next().unwrap_or(&[]);
            let name = String::from_utf8(name_bytes.to_vec())
                .map_err(|_| bad(path, at + 4, format!("entry {}: name is not UTF-8", i + 1)))?;
            let ncall = c.i32("a call count")?;
            let at_nval = c.pos as u64;
            let nval = c.i32("a value count")?;
            if nval < 1 {
                return Err(bad(
                    path,
                    at_nval,
                    format!(
                        "entry '{}': value count {nval}",
                        crate::gguf::value::printable(&name)
                    ),
                ));
            }
            let raw = c.take(nval as usize * 4, "values")?;
            let sums: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let values = if ncall > 0 {
                sums.iter().map(|&s| s / ncall as f32).collect()
            } else {
                sums
            };
            check_finite(&name, &values, path)?;
            entries.insert(name, values);
        }
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if c.pos < bytes.len() {
            if let Ok(n) = c.i32("the chunk count") {
                chunk_count = u64::try_from(n).unwrap_or(0);
                if let Ok(len) = c.i32("the dataset name length") {
                    if len > 0 {
                        if let Ok(b) = c.take(len as usize, "the dataset name") {
                            let b = b.split(|&x| x == 0).next().unwrap_or(&[]);
                            datasets.push(String::from_utf8_lossy(b).into_owned());
                        }
                    }
                }
            }
        }
        Ok(Imatrix {
            path: path.to_path_buf(),
            entries,
            datasets,
            chunk_count,
            legacy: true,
        })
    }

    /// Read the GGUF format.
    pub fn from_gguf(f: &GgufFile) -> Result<Imatrix> {
        let path = f.path.as_path();
        let has_meta = f.get("imatrix.datasets").is_some()
            && f.get("imatrix.chunk_count").is_some()
            && f.get("imatrix.chunk_size").is_some();
        if !has_meta {
            return Err(bad(path, 0, "missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size): not an imatrix file?"));
        }
        let datasets = f
            .get("imatrix.datasets")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let chunk_count = f.get_u64("imatrix.chunk_count").unwrap_or(0);
        if f.tensors.is_empty() {
            return Err(bad(path, 0, "no tensors"));
        }
        let mut pairs: std::collections::BTreeMap<&str, (Option<usize>, Option<usize>)> =
            Default::default();
        for (i, t) in f.tensors.iter().enumerate() {
            if let Some(n) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(n).or_default().0 = Some(i);
            } else if let Some(n) = t.name.strip_suffix(".counts") {
                pairs.entry(n).or_default().1 = Some(i);
            }
        }
        let mut entries = HashMap::new();
        for (name, (s, c)) in pairs {
            let (Some(s), Some(c)) = (s, c) else {
                return Err(bad(
                    path,
                    0,
                    format!(
                        "mismatched sums and counts for '{}'",
                        crate::gguf::value::printable(name)
                    ),
                ));
            };
            let (ts, tc) = (&f.tensors[s], &f.tensors[c]);
            if ts.ty != Some(GgmlType::F32) || tc.ty != Some(GgmlType::F32) {
                return Err(bad(
                    path,
                    0,
                    format!(
                        "sums and counts for '{}' must be F32",
                        crate::gguf::value::printable(name)
                    ),
                ));
            }
            let sums = f32s(f.tensor_data(ts)?);
            let counts = f32s(f.tensor_data(tc)?);
            if sums.is_empty() || counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(bad(
                    path,
                    0,
                    format!(
                        "'{}': {} sums do not split into {} experts",
                        crate::gguf::value::printable(name),
                        sums.len(),
                        counts.len()
                    ),
                ));
            }
            let ne0 = sums.len() / counts.len();
            let mut values = vec![0f32; sums.len()];
            for (j, &cnt) in counts.iter().enumerate() {
                let count = cnt.round() as i64 as f32;
                for i in 0..ne0 {
                    let k = j * ne0 + i;
                    values[k] = if count > 0.0 { sums[k] / count } else { 1.0 };
                }
            }
            check_finite(name, &values, path)?;
            entries.insert(name.to_string(), values);
        }
        Ok(Imatrix {
            path: path.to_path_buf(),
            entries,
            datasets,
            chunk_count,
            legacy: false,
        })
    }

    /// The weights for a tensor, if present.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries.get(name).map(Vec::as_slice)
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .collect()
}

fn check_finite(name: &str, v: &[f32], path: &Path) -> Result<()> {
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        return Err(bad(
            path,
            0,
            format!(
                "'{}' contains the non-finite value {x}",
                crate::gguf::value::printable(name)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((entries.len() as i32).to_le_bytes());
        for (n, ncall, v) in entries {
            b.extend((n.len() as i32).to_le_bytes());
            b.extend(n.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((v.len() as i32).to_le_bytes());
            for x in *v {
                b.extend(x.to_le_bytes());
            }
        }
        if let Some((c, d)) = trailer {
            b.extend(c.to_le_bytes());
            b.extend((d.len() as i32).to_le_bytes());
            b.extend(d.as_bytes());
        }
        b
    }

    #[test]
    fn legacy_round_values() {
        let b = legacy(
            &[("a.weight", 4, &[4.0, 8.0]), ("b", 0, &[3.0])],
            Some((10, "wiki.txt")),
        );
        let m = Imatrix::parse_legacy(&b, Path::new("x.dat")).unwrap();
        assert_eq!(m.get("a.weight"), Some(&[1.0f32, 2.0][..]));
        assert_eq!(m.get("b"), Some(&[3.0f32][..]));
        assert_eq!(m.chunk_count, 10);
        assert_eq!(m.datasets, vec!["wiki.txt".to_string()]);
        assert!(m.legacy);
    }

    #[test]
    fn legacy_hostile_inputs_error() {
        let p = Path::new("h.dat");
        let good = legacy(&[("a", 1, &[1.0, 2.0])], None);
        // Every truncation is an error or a shorter valid file, never a panic.
        for n in 0..good.len() {
            let _ = Imatrix::parse_legacy(&good[..n], p);
        }
        assert!(Imatrix::parse_legacy(&good[..good.len() - 1], p).is_err());
        let mut neg = good.clone();
        neg[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(Imatrix::parse_legacy(&neg, p).is_err());
        let mut huge = good.clone();
        let off = 4 + 4 + 1 + 4;
        huge[off..off + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        let e = Imatrix::parse_legacy(&huge, p).unwrap_err().to_string();
        assert!(e.contains("file ends inside values"), "{e}");
        assert!(Imatrix::parse_legacy(&0i32.to_le_bytes(), p).is_err());
        let nan = legacy(&[("a", 1, &[f32::NAN])], None);
        assert!(Imatrix::parse_legacy(&nan, p)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
    }
}
