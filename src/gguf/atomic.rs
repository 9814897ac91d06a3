//! Crash-safe output files: write to a temporary file beside the target, then fsync and rename.
//!
//! A reader of the target path sees either the old file or the complete new one, never a
//! half-written file; an error or a panic before [`AtomicOutput::commit`] leaves no trace.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary file in the target's directory that becomes the target on [`AtomicOutput::commit`].
/// Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct AtomicOutput {
    target: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicOutput {
    /// Create a temporary file next to `path` (same directory, so the rename is atomic).
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicOutput> {
        let target = path.as_ref().to_path_buf();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let prefix = format!(".{stem}.");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".tmp");
        // Like any new file (0666 minus the umask), not tempfile's private 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = b.tempfile_in(&dir).map_err(|e| Error::io(&target, e))?;
        Ok(AtomicOutput { target, tmp })
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary file's path (it disappears on commit or drop).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The temporary file, to write into (wrap it in a `BufWriter` for small writes, and
    /// flush that before [`AtomicOutput::commit`]).
    pub fn file_mut(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// fsync the data, rename over the target, fsync the directory.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let mut tmp = self.tmp;
        tmp.as_file_mut()
            .flush()
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(&target)
            .map_err(|e| Error::io(&target, e.error))?;
        #[cfg(unix)]
        {
            let dir = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }
}

impl Write for AtomicOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.as_file_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.as_file_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.gguf");
        std::fs::write(&target, b"old").unwrap();

        let mut a = AtomicOutput::create(&target).unwrap();
        a.write_all(b"new contents").unwrap();
        let tmp = a.temp_path().to_path_buf();
        assert!(tmp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        a.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        assert!(!tmp.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target).unwrap().permissions().mode();
            assert_ne!(
                mode & 0o044,
                0,
                "readable by others like a normal new file: {mode:o}"
            );
        }

        let mut b = AtomicOutput::create(&target).unwrap();
        b.file_mut().write_all(b"abandoned").unwrap();
        let tmp = b.temp_path().to_path_buf();
        drop(b);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
