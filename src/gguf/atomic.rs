//! Crash-safe output files: write to a temporary file beside the target, then fsync and rename.
//!
//! A reader of the target path sees either the old file or the complete new one, never a
//! half-written file; an error or a panic before [`AtomicOutput::commit`] leaves no trace.
//!
//! On Linux the temporary file is anonymous (`O_TMPFILE`): it has no name until
//! [`AtomicOutput::commit`] links it into the directory (`linkat`) and renames it over the
//! target, so even `kill -9` or a power loss mid-write leaves nothing behind. Where `O_TMPFILE`
//! is not supported (other systems, some file systems, `/proc` not mounted) the temporary file
//! is named `.OUT.ggufq-PID.RANDOM.tmp`; a killed process cannot remove it, so every
//! [`AtomicOutput::create`] first removes such files left in the same directory by a process
//! that no longer runs (same user, pid not alive, last modified before this process started
//! using the directory). Setting the environment variable `GGUFQ_NO_O_TMPFILE=1` forces named
//! temporary files (used by the tests of that path).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The marker in the names of our temporary files: `.OUT.ggufq-PID.RANDOM.tmp`.
const MARKER: &str = ".ggufq-";

/// A temporary file in the target's directory that becomes the target on [`AtomicOutput::commit`].
/// Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct AtomicOutput {
    target: PathBuf,
    dir: PathBuf,
    file: File,
    /// The temporary file's name, or `None` for an anonymous `O_TMPFILE` file.
    tmp_path: Option<PathBuf>,
    /// Bytes written so far, and the part whose writeback was already started
    /// ([`EARLY_WRITEBACK`]).
    written: u64,
    flushed: u64,
}

/// Start writing data back to disk every this many bytes (Linux `sync_file_range`, a hint that
/// does not wait), so that the fsync of [`AtomicOutput::commit`] finds most of the file already
/// on disk instead of writing all of it at the end (~15 % of a SmolLM2 Q8_0 conversion).
const EARLY_WRITEBACK: u64 = 16 << 20;

/// When this process first created an output (stale temporary files must be older).
fn process_start() -> SystemTime {
    static START: OnceLock<SystemTime> = OnceLock::new();
    *START.get_or_init(SystemTime::now)
}

fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// True when `pid` names a running process (or one we may not signal).
#[cfg(unix)]
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if p <= 0 {
        return true;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists; no signal is sent.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The pid in one of our temporary file names, `.STEM.ggufq-PID.RANDOM.tmp`.
fn temp_owner_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') || !name.ends_with(".tmp") {
        return None;
    }
    let rest = &name[name.rfind(MARKER)? + MARKER.len()..];
    let (pid, _) = rest.split_once('.')?;
    pid.parse().ok()
}

/// Remove our temporary files in `dir` left by processes that were killed: name
/// `.*.ggufq-PID.*.tmp`, a regular file owned by this user, PID not running, not modified
/// since this process started. Best effort: errors are ignored. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> usize {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let me = std::process::id();
        let start = process_start();
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(temp_owner_pid) else {
                continue;
            };
            if pid == me || pid_alive(pid) {
                continue;
            }
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            let old = md.modified().map(|m| m < start).unwrap_or(false);
            if md.file_type().is_file()
                && md.uid() == uid
                && old
                && std::fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        0
    }
}

/// An anonymous file in `dir` (`O_TMPFILE`), when the system and the file system support it.
#[cfg(target_os = "linux")]
fn anonymous_file(dir: &Path) -> Option<File> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::FromRawFd;
    if std::env::var_os("GGUFQ_NO_O_TMPFILE").is_some_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    // commit() links the file through /proc/self/fd.
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is owned by the File.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Some(unsafe { File::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file(_dir: &Path) -> Option<File> {
    None
}

/// A fresh name for a temporary file of `stem` in `dir`.
fn temp_name(dir: &Path, stem: &str, i: u32) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(
        ".{stem}{MARKER}{}.{nanos:08x}{i}.tmp",
        std::process::id()
    ))
}

/// Give the anonymous file behind `file` the name `to` (which must not exist).
#[cfg(target_os = "linux")]
fn link_anonymous(file: &File, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn link_anonymous(_file: &File, _to: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("anonymous files are Linux-only"))
}

fn stem_of(target: &Path) -> String {
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

impl AtomicOutput {
    /// Create a temporary file next to `path` (same directory, so the rename is atomic),
    /// after removing stale temporary files of killed ggufq processes in that directory.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicOutput> {
        process_start();
        let target = path.as_ref().to_path_buf();
        let dir = parent_dir(&target);
        remove_stale_temps(&dir);
        if let Some(file) = anonymous_file(&dir) {
            return Ok(AtomicOutput {
                target,
                dir,
                file,
                tmp_path: None,
                written: 0,
                flushed: 0,
            });
        }
        let prefix = format!(".{}{MARKER}{}.", stem_of(&target), std::process::id());
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".tmp");
        // Like any new file (0666 minus the umask), not tempfile's private 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = b.tempfile_in(&dir).map_err(|e| Error::io(&target, e))?;
        let (file, tmp_path) = tmp.keep().map_err(|e| Error::io(&target, e.error))?;
        Ok(AtomicOutput {
            target,
            dir,
            file,
            tmp_path: Some(tmp_path),
            written: 0,
            flushed: 0,
        })
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary file's path, or `None` when it is anonymous (`O_TMPFILE`, see the module
    /// docs). It disappears on commit or drop.
    pub fn temp_path(&self) -> Option<&Path> {
        self.tmp_path.as_deref()
    }

    /// The temporary file, to write into (wrap it in a `BufWriter` for small writes, and
    /// flush that before [`AtomicOutput::commit`]).
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsync the data, rename over the target, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let target = self.target.clone();
        let err_path = self.tmp_path.clone().unwrap_or_else(|| target.clone());
        self.file
            .flush()
            .and_then(|_| self.file.sync_all())
            .map_err(|e| Error::io(&err_path, e))?;
        let named = match self.tmp_path.take() {
            Some(p) => p,
            None => {
                // Link the anonymous file under a temporary name, then rename it over the
                // target (linkat cannot replace an existing file).
                let stem = stem_of(&target);
                let mut i = 0;
                loop {
                    let p = temp_name(&self.dir, &stem, i);
                    match link_anonymous(&self.file, &p) {
                        Ok(()) => break p,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 100 => {
                            i += 1
                        }
                        Err(e) => return Err(Error::io(&target, e)),
                    }
                }
            }
        };
        if let Err(e) = std::fs::rename(&named, &target) {
            let _ = std::fs::remove_file(&named);
            return Err(Error::io(&target, e));
        }
        #[cfg(unix)]
        {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&self.dir, e))?;
        }
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if let Some(p) = self.tmp_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl AtomicOutput {
    /// Count `n` written bytes; every [`EARLY_WRITEBACK`] bytes, start their writeback.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if self.written - self.flushed < EARLY_WRITEBACK {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            let (from, len) = (self.flushed, self.written - self.flushed);
            if let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) {
                // SAFETY: a plain syscall on our own open descriptor. Only a hint: errors are
                // ignored here and reported by the fsync of commit().
                unsafe {
                    libc::sync_file_range(
                        self.file.as_raw_fd(),
                        from,
                        len,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
        }
        self.flushed = self.written;
    }
}

impl Write for AtomicOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.wrote(n);
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        self.wrote(buf.len());
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs larger than the early-writeback step (several `sync_file_range` calls, odd
    /// write sizes) arrive whole, anonymous and named.
    #[test]
    fn large_outputs_with_early_writeback_are_intact() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(EARLY_WRITEBACK as usize * 5 / 2 + 12345))
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        for (k, named) in [false, true].into_iter().enumerate() {
            let target = dir.path().join(format!("big{k}.bin"));
            let mut a = AtomicOutput::create(&target).unwrap();
            if named {
                // Force the named-file path by swapping in a named temporary file.
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".big{k}{MARKER}{}.", std::process::id()))
                    .tempfile_in(dir.path())
                    .unwrap();
                let (file, p) = tmp.keep().unwrap();
                a.file = file;
                a.tmp_path = Some(p);
            }
            for chunk in data.chunks(3 << 20 | 17) {
                a.write_all(chunk).unwrap();
            }
            assert_eq!(a.written, data.len() as u64);
            assert!(a.flushed >= 2 * EARLY_WRITEBACK, "{}", a.flushed);
            a.commit().unwrap();
            assert!(
                std::fs::read(&target).unwrap() == data,
                "{}",
                target.display()
            );
        }
    }

    fn check_commit_and_drop(dir: &Path) {
        let target = dir.join("out.gguf");
        std::fs::write(&target, b"old").unwrap();

        let mut a = AtomicOutput::create(&target).unwrap();
        a.write_all(b"new contents").unwrap();
        let tmp = a.temp_path().map(Path::to_path_buf);
        if let Some(t) = &tmp {
            assert!(t.exists());
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        a.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        if let Some(t) = &tmp {
            assert!(!t.exists());
        }
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
        drop(b);
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    }

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        check_commit_and_drop(dir.path());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn anonymous_temp_file_has_no_name_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        if anonymous_file(dir.path()).is_none() {
            eprintln!("O_TMPFILE unsupported here; skipped");
            return;
        }
        let target = dir.path().join("x.bin");
        let mut a = AtomicOutput::create(&target).unwrap();
        assert!(a.temp_path().is_none());
        a.write_all(&[7u8; 4096]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        a.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), vec![7u8; 4096]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names_are_recognised() {
        assert_eq!(temp_owner_pid(".out.gguf.ggufq-1234.abC9.tmp"), Some(1234));
        assert_eq!(temp_owner_pid(".a.ggufq-b.ggufq-77.x.tmp"), Some(77));
        assert_eq!(temp_owner_pid("out.gguf.ggufq-1234.a.tmp"), None);
        assert_eq!(temp_owner_pid(".out.gguf.ggufq-12x.a.tmp"), None);
        assert_eq!(temp_owner_pid(".out.gguf.ggufq-12.a.bak"), None);
        assert_eq!(temp_owner_pid(".out.gguf.tmp"), None);
        let p = temp_name(Path::new("/d"), "m.gguf", 3);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_owner_pid(name), Some(std::process::id()));
    }

    #[cfg(unix)]
    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        process_start();
        // A pid that cannot be running: above the kernel's pid_max limit (2^22).
        let dead = dir.path().join(".m.gguf.ggufq-99999999.abc.tmp");
        let mine = dir
            .path()
            .join(format!(".m.gguf.ggufq-{}.abc.tmp", std::process::id()));
        let other = dir.path().join(".m.gguf.other-99999999.abc.tmp");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
            // Older than this process's first output.
            let f = File::options().write(true).open(p).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        }
        let fresh = dir.path().join(".n.gguf.ggufq-99999998.abc.tmp");
        std::fs::write(&fresh, b"x").unwrap();
        let f = File::options().write(true).open(&fresh).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(!dead.exists());
        assert!(mine.exists(), "a live process's temp stays");
        assert!(other.exists(), "not ours");
        assert!(fresh.exists(), "modified after this process started");
    }

    #[test]
    fn named_temp_files_work_too() {
        // The fallback path, as used where O_TMPFILE is not available.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("n.bin");
        let prefix = format!(".n.bin{MARKER}{}.", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempfile_in(dir.path())
            .unwrap();
        let (file, tmp_path) = tmp.keep().unwrap();
        let mut a = AtomicOutput {
            target: target.clone(),
            dir: dir.path().to_path_buf(),
            file,
            tmp_path: Some(tmp_path.clone()),
            written: 0,
            flushed: 0,
        };
        a.write_all(b"named").unwrap();
        assert!(tmp_path.exists());
        a.commit().unwrap();
        assert!(!tmp_path.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"named");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
