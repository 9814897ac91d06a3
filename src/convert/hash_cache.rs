//! A persistent cache of source-file sha256 digests, for converting one source to many
//! recipes (`ggufq batch`, scripts): hashing a multi-GB source is a serial floor under every
//! conversion, and its digest only changes when the file does.
//!
//! An entry is keyed by the file's identity and state as `stat` reports it: canonical path,
//! device, inode, size, modification and status-change times in nanoseconds. Any write to the
//! file changes its ctime (which no user call can set back), so a rewrite of the same size is
//! a miss too. A file whose timestamps are within [`HashCache::racy_window`] of the moment it
//! was hashed is not stored: a second write in the same timestamp tick (file systems keep
//! coarse clocks) would otherwise leave the key unchanged (git's "racily clean" problem).
//!
//! Each entry is one small JSON file `<dir>/source-sha256/<sha256 of the key>.json`, written
//! atomically ([`AtomicOutput`]), so concurrent conversions never see half an entry and never
//! need a lock. The cache is an optimisation only: an unreadable, corrupt or mismatching entry
//! is a miss with a warning, and a cache directory that cannot be written is a warning, never
//! an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gguf::AtomicOutput;

/// The identity and state of a file, as the cache keys it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileKey {
    /// Canonical path.
    pub path: String,
    /// Device number (0 where the platform has none).
    pub dev: u64,
    /// Inode number (0 where the platform has none).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds since the Unix epoch (the modification time where
    /// the platform has none).
    pub ctime_ns: i128,
}

impl FileKey {
    /// `stat` a file.
    pub fn of(path: &Path) -> Result<FileKey> {
        let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let md = std::fs::metadata(&canon).map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
            Ok(FileKey {
                path: canon.to_string_lossy().into_owned(),
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime_ns: ns(md.mtime(), md.mtime_nsec()),
                ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            Ok(FileKey {
                path: canon.to_string_lossy().into_owned(),
                dev: 0,
                ino: 0,
                size: md.len(),
                mtime_ns,
                ctime_ns: mtime_ns,
            })
        }
    }

    /// The entry's file name: sha256 of the key's fields.
    fn digest(&self) -> String {
        let text = format!(
            "{}\0{}\0{}\0{}\0{}\0{}",
            self.path, self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        );
        hex(Sha256::digest(text.as_bytes()))
    }

    /// The latest of the two timestamps.
    fn newest_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// Entries looked at by one [`HashCache::prune`].
const PRUNE_SCAN: usize = 4096;

/// One stored entry.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    key: FileKey,
    sha256: String,
}

/// The source-hash cache in one directory.
#[derive(Clone, Debug)]
pub struct HashCache {
    /// The cache directory (entries live in its `source-sha256/` subdirectory).
    pub dir: PathBuf,
    /// A file modified less than this long before it was hashed is not stored (see the module
    /// docs). Default 2 s, more than any common file system's timestamp granularity.
    pub racy_window: Duration,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The digest stored for this exact key.
    Hit(String),
    /// No usable entry; the warning says why when an entry was there but unusable.
    Miss(Option<String>),
}

impl HashCache {
    /// A cache in `dir` with the default racy window.
    pub fn new(dir: impl Into<PathBuf>) -> HashCache {
        HashCache {
            dir: dir.into(),
            racy_window: Duration::from_secs(2),
        }
    }

    /// The default directory: `$GGUFQ_CACHE_DIR`, else `$XDG_CACHE_HOME/ggufq`, else
    /// `~/.cache/ggufq`; `None` when none of them is set.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("GGUFQ_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ggufq")))
            .or_else(|| env("HOME").map(|h| h.join(".cache").join("ggufq")))
    }

    fn entry_path(&self, key: &FileKey) -> PathBuf {
        self.dir
            .join("source-sha256")
            .join(format!("{}.json", key.digest()))
    }

    /// The digest stored for `key`, if any. Never fails: a missing entry is a plain miss, an
    /// unreadable or corrupt one a miss with a warning.
    pub fn lookup(&self, key: &FileKey) -> Lookup {
        let p = self.entry_path(key);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss(None),
            Err(e) => {
                return Lookup::Miss(Some(format!(
                    "source hash cache: cannot read {}: {e}; hashing the source",
                    p.display()
                )))
            }
        };
        let bad = |why: &str| {
            Lookup::Miss(Some(format!(
                "source hash cache: ignoring {} ({why}); hashing the source",
                p.display()
            )))
        };
        let entry: Entry = match serde_json::from_slice(&text) {
            Ok(e) => e,
            Err(e) => return bad(&format!("corrupt: {e}")),
        };
        if entry.key != *key {
            return bad("it belongs to another file state");
        }
        let valid = entry.sha256.len() == 64
            && entry
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return bad("not a sha256 digest");
        }
        Lookup::Hit(entry.sha256)
    }

    /// Store `sha256` for `key`, which was taken before hashing started at `hashed_at`.
    /// Returns `Ok(false)` without storing when the file changed too recently to be trusted
    /// (see [`HashCache::racy_window`]); `Err` only for write failures, which callers report
    /// as warnings.
    pub fn store(&self, key: &FileKey, sha256: &str, hashed_at: SystemTime) -> Result<bool> {
        let at_ns = hashed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if key.newest_ns() + self.racy_window.as_nanos() as i128 > at_ns {
            return Ok(false);
        }
        let p = self.entry_path(key);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let entry = Entry {
            key: key.clone(),
            sha256: sha256.to_string(),
        };
        let text = serde_json::to_vec_pretty(&entry).map_err(|e| Error::msg(e.to_string()))?;
        let mut out = AtomicOutput::create(&p)?;
        out.write_all(&text).map_err(|e| Error::io(&p, e))?;
        out.commit()?;
        self.prune();
        Ok(true)
    }

    /// Remove entries of files that are gone or changed since (they can never hit again), so
    /// the cache does not grow with every temporary file ever converted. Runs after a store,
    /// which follows a full hash of a large file, so a scan of small files costs nothing in
    /// comparison; at most [`PRUNE_SCAN`] entries are looked at. Best effort: errors are
    /// ignored. Returns how many entries were removed.
    pub fn prune(&self) -> usize {
        let dir = self.dir.join("source-sha256");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in rd.flatten().take(PRUNE_SCAN) {
            let p = e.path();
            let is_entry = p.extension().is_some_and(|x| x == "json")
                && !e.file_name().to_string_lossy().starts_with('.');
            if !is_entry {
                continue;
            }
            let Ok(entry) = std::fs::read(&p)
                .map_err(|_| ())
                .and_then(|t| serde_json::from_slice::<Entry>(&t).map_err(|_| ()))
            else {
                continue; // Corrupt: lookup warns about it and the next store replaces it.
            };
            let current = FileKey::of(Path::new(&entry.key.path));
            if current.map_or(true, |k| k != entry.key) && std::fs::remove_file(&p).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

impl HashCache {
    /// The sha256 of the whole file at `path`: from the cache when the file's [`FileKey`] is
    /// unchanged, else read and hashed, then stored unless the file changed while it was read
    /// (or too recently, see [`HashCache::racy_window`]). Cache trouble never fails the call: it
    /// is pushed to `warnings` and the file is hashed. `Err` only when the file cannot be read.
    pub fn sha256_of(&self, path: &Path, warnings: &mut Vec<String>) -> Result<String> {
        let key = FileKey::of(path)?;
        match self.lookup(&key) {
            Lookup::Hit(sha) => return Ok(sha),
            Lookup::Miss(Some(w)) => warnings.push(w),
            Lookup::Miss(None) => {}
        }
        let started = SystemTime::now();
        let sha = sha256_file(path)?;
        if FileKey::of(path).ok().as_ref() == Some(&key) {
            if let Err(e) = self.store(&key, &sha, started) {
                warnings.push(format!("source hash cache: not stored: {e}"));
            }
        }
        Ok(sha)
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| Error::io(p, e))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(h.finalize().iter().map(|x| format!("{x:02x}")).collect())
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path) -> HashCache {
        HashCache {
            dir: dir.to_path_buf(),
            racy_window: Duration::ZERO,
        }
    }

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(5)
    }

    #[test]
    fn hit_after_store_and_miss_for_other_state() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        std::fs::write(&f, b"hello").unwrap();
        let c = cache(&d.path().join("cache"));
        let k = FileKey::of(&f).unwrap();
        assert_eq!(c.lookup(&k), Lookup::Miss(None));
        let sha = hex(Sha256::digest(b"hello"));
        assert!(c.store(&k, &sha, later()).unwrap());
        assert_eq!(c.lookup(&k), Lookup::Hit(sha.clone()));
        // The same key through another spelling of the path.
        let k2 = FileKey::of(&d.path().join(".").join("a.bin")).unwrap();
        assert_eq!(c.lookup(&k2), Lookup::Hit(sha));
        // Another size.
        std::fs::write(&f, b"hello!").unwrap();
        assert_eq!(c.lookup(&FileKey::of(&f).unwrap()), Lookup::Miss(None));
    }

    #[test]
    fn entries_of_gone_or_changed_files_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(&d.path().join("cache"));
        let (a, b, keep) = (d.path().join("a"), d.path().join("b"), d.path().join("k"));
        for f in [&a, &b, &keep] {
            std::fs::write(f, b"1").unwrap();
            c.store(&FileKey::of(f).unwrap(), &"a".repeat(64), later())
                .unwrap();
        }
        let ka = FileKey::of(&a).unwrap();
        let kk = FileKey::of(&keep).unwrap();
        std::fs::remove_file(&b).unwrap();
        std::fs::write(&a, b"22").unwrap();
        assert_eq!(c.prune(), 2);
        assert_eq!(c.lookup(&kk), Lookup::Hit("a".repeat(64)));
        assert_eq!(c.lookup(&ka), Lookup::Miss(None));
        let n = std::fs::read_dir(d.path().join("cache/source-sha256"))
            .unwrap()
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn sha256_of_hashes_stores_and_serves_from_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        std::fs::write(&f, b"hello").unwrap();
        let c = cache(&d.path().join("cache"));
        let mut w = Vec::new();
        let real = hex(Sha256::digest(b"hello"));
        assert_eq!(c.sha256_of(&f, &mut w).unwrap(), real);
        let k = FileKey::of(&f).unwrap();
        assert_eq!(c.lookup(&k), Lookup::Hit(real));
        // A planted entry is what comes back: the file was not read again.
        c.store(&k, &"b".repeat(64), later()).unwrap();
        assert_eq!(c.sha256_of(&f, &mut w).unwrap(), "b".repeat(64));
        assert!(w.is_empty(), "{w:?}");
        // Same size, other bytes: a new state, hashed again.
        std::fs::write(&f, b"HELLO").unwrap();
        assert_eq!(
            c.sha256_of(&f, &mut w).unwrap(),
            hex(Sha256::digest(b"HELLO"))
        );
        // A corrupt entry: a warning, and the real hash.
        let k = FileKey::of(&f).unwrap();
        std::fs::write(c.entry_path(&k), b"{").unwrap();
        assert_eq!(
            c.sha256_of(&f, &mut w).unwrap(),
            hex(Sha256::digest(b"HELLO"))
        );
        assert!(w.iter().any(|x| x.contains("corrupt")), "{w:?}");
        // A missing file is an error naming it.
        let e = c.sha256_of(&d.path().join("gone"), &mut w).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn racy_files_are_not_stored() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        std::fs::write(&f, b"x").unwrap();
        let c = HashCache::new(d.path().join("cache"));
        let k = FileKey::of(&f).unwrap();
        assert!(!c.store(&k, &"0".repeat(64), SystemTime::now()).unwrap());
        assert_eq!(c.lookup(&k), Lookup::Miss(None));
    }

    #[test]
    fn corrupt_and_foreign_entries_are_misses_with_warnings() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        std::fs::write(&f, b"x").unwrap();
        let c = cache(d.path());
        let k = FileKey::of(&f).unwrap();
        c.store(&k, &"a".repeat(64), later()).unwrap();
        let p = c.entry_path(&k);
        std::fs::write(&p, b"{not json").unwrap();
        match c.lookup(&k) {
            Lookup::Miss(Some(w)) => assert!(w.contains("corrupt"), "{w}"),
            other => panic!("{other:?}"),
        }
        // A well-formed entry for another key at this key's name.
        let mut other = k.clone();
        other.size += 1;
        let e = Entry {
            key: other,
            sha256: "a".repeat(64),
        };
        std::fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
        assert!(matches!(c.lookup(&k), Lookup::Miss(Some(_))));
        // A bad digest.
        let e = Entry {
            key: k.clone(),
            sha256: "xyz".into(),
        };
        std::fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
        match c.lookup(&k) {
            Lookup::Miss(Some(w)) => assert!(w.contains("not a sha256"), "{w}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_dir_prefers_the_environment() {
        // Only reads the environment; the variables are not changed (tests run in parallel).
        let d = HashCache::default_dir();
        match std::env::var_os("GGUFQ_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(v) => assert_eq!(d, Some(PathBuf::from(v))),
            None => assert!(d.is_none_or(|p| p.ends_with("ggufq"))),
        }
    }
}
