//! Library error type. Every variant names the file, offset, tensor or recipe line at fault.

use std::path::PathBuf;

/// Errors from the ggufq library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file that is malformed; `offset` is the byte position where the problem was found.
    #[error("{path}: invalid GGUF at byte {offset}: {msg}")]
    Gguf {
        path: PathBuf,
        offset: u64,
        msg: String,
    },
    /// A problem with one tensor.
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    /// A recipe problem, with 1-based line/column where known.
    #[error("{path}:{line}:{column}: {msg}")]
    Recipe {
        path: String,
        line: usize,
        column: usize,
        msg: String,
    },
    /// Anything else, with a human-readable message.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
