//! Output path safety: every file a batch writes stays inside its output folder.
//!
//! Names that come from a pipeline (model and recipe names) are reduced to one safe path
//! component; folders are checked after creation so a symlink cannot lead outside; an
//! existing symlink is never written through.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Longest name component produced by [`sanitize`].
pub const MAX_NAME_LEN: usize = 96;

/// Reduce any string to one safe file-name component: ASCII letters, digits, `.`, `_`, `-`;
/// everything else becomes `_`; no leading dots (so no `..`, no hidden files); never empty.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s = s
        .trim_start_matches(['.', '_'])
        .trim_end_matches(['.', '_']);
    let mut s: String = s.chars().take(MAX_NAME_LEN).collect();
    if s.is_empty() {
        s = "unnamed".to_string();
    }
    s
}

/// The output folder of a batch, created and canonicalised, with checked joins.
#[derive(Clone, Debug)]
pub struct OutDir {
    root: PathBuf,
}

impl OutDir {
    /// Create (if needed) and canonicalise the output folder.
    pub fn create(path: &Path) -> Result<OutDir> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let root = path.canonicalize().map_err(|e| Error::io(path, e))?;
        Ok(OutDir { root })
    }

    /// The canonical output folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A sub-folder (one sanitised component), created; refused if it resolves outside.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.root.join(sanitize_keep_dot(name));
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        let c = p.canonicalize().map_err(|e| Error::io(&p, e))?;
        if !c.starts_with(&self.root) {
            return Err(Error::msg(format!(
                "{}: resolves to {}, outside the output folder {}; refusing to write there",
                p.display(),
                c.display(),
                self.root.display()
            )));
        }
        Ok(c)
    }

    /// A file path `dir/name` for writing: `dir` must be inside the output folder, `name` is one
    /// component, and an existing symlink at that path is refused.
    pub fn file_in(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let dir_c = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        if !dir_c.starts_with(&self.root) {
            return Err(Error::msg(format!(
                "{}: outside the output folder {}",
                dir.display(),
                self.root.display()
            )));
        }
        let mut comps = Path::new(name).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(_)), None) => {}
            _ => return Err(Error::msg(format!("{name:?} is not a plain file name"))),
        }
        let p = dir_c.join(name);
        refuse_symlink(&p)?;
        Ok(p)
    }
}

/// Error if `p` exists and is a symlink (writing through it could leave the output folder).
pub fn refuse_symlink(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::msg(format!(
            "{} is a symlink; refusing to write through it (outputs stay inside the output folder)",
            p.display()
        ))),
        _ => Ok(()),
    }
}

fn sanitize_keep_dot(name: &str) -> String {
    // Internal folder names like ".ggufq-batch" keep their leading dot; still one component.
    match name.strip_prefix('.') {
        Some(rest) => format!(".{}", sanitize(rest)),
        None => sanitize(name),
    }
}

/// Check that a pipeline's `output:` is a relative path without `..` (it stays under the
/// pipeline's folder); other locations must be given on the command line (`-o`).
pub fn check_pipeline_output(output: &str) -> Result<()> {
    let p = Path::new(output);
    if p.is_absolute() {
        return Err(Error::msg(format!(
            "pipeline `output: {output}` is absolute; a pipeline may only name a folder below its own \
             (use `ggufq batch -o DIR` to write elsewhere)"
        )));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::msg(format!(
            "pipeline `output: {output}` leaves the pipeline's folder (`..`); use `ggufq batch -o DIR` to write elsewhere"
        )));
    }
    Ok(())
}

/// Name of the report folder inside a batch output folder (`OUT/report`).
pub const REPORT_DIR: &str = "report";

/// How old a temporary file of ours must be before a later run treats it as left behind by a
/// killed process. Our temp files live for milliseconds (a result JSON, a plot); concurrent
/// shards writing into the same folder keep theirs far younger than this.
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Is `name` one of the temporary names this module or the report's plots write
/// (`.tmp-XXXXXX` from [`write_atomic`], `.STEM.tmp-PID.EXT` from the plots)?
fn is_our_temp_name(name: &str) -> bool {
    name.starts_with(".tmp-") || (name.starts_with('.') && name.contains(".tmp-"))
}

/// Remove temporary files that a killed run left in `dir` (not recursive): regular files with
/// our temporary names, older than `min_age`. Returns how many were removed. Errors reading the
/// folder are ignored: cleaning is best effort and never blocks a run.
pub fn clean_stale_temps(dir: &Path, min_age: std::time::Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_our_temp_name(name) {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let old = md
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= min_age);
        if md.is_file() && old && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    refuse_symlink(path)?;
    let dir = path
        .parent()
        .ok_or_else(|| Error::msg(format!("{}: no parent folder", path.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    // Results and reports are ordinary files (tempfile creates 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_are_removed_only_when_ours_and_old() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        for n in [
            ".tmp-abc123",
            ".throughput.tmp-4242.png",
            "a.json",
            "tmp-not-hidden",
        ] {
            std::fs::write(p(n), b"x").unwrap();
        }
        std::fs::create_dir(p(".tmp-dir")).unwrap();
        // Young temp files may belong to a live shard: kept.
        assert_eq!(clean_stale_temps(d.path(), STALE_TEMP_AGE), 0);
        assert!(p(".tmp-abc123").exists());
        // Old enough (age 0 threshold): only our regular temp files go.
        assert_eq!(clean_stale_temps(d.path(), std::time::Duration::ZERO), 2);
        assert!(!p(".tmp-abc123").exists());
        assert!(!p(".throughput.tmp-4242.png").exists());
        assert!(p("a.json").exists());
        assert!(p("tmp-not-hidden").exists());
        assert!(p(".tmp-dir").is_dir());
        // A missing folder is not an error.
        assert_eq!(clean_stale_temps(&p("missing"), STALE_TEMP_AGE), 0);
    }

    #[test]
    fn sanitize_removes_escapes() {
        assert_eq!(sanitize("../../etc/passwd"), "etc_passwd");
        assert_eq!(sanitize("/abs/path"), "abs_path");
        assert_eq!(sanitize(".."), "unnamed");
        assert_eq!(sanitize(""), "unnamed");
        assert_eq!(sanitize("Q4_K_M"), "Q4_K_M");
        assert_eq!(sanitize("a b\\c:d"), "a_b_c_d");
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_NAME_LEN);
        assert!(!sanitize("..hidden").starts_with('.'));
    }

    #[test]
    fn pipeline_output_must_stay_below() {
        assert!(check_pipeline_output("out/x").is_ok());
        assert!(check_pipeline_output("./out").is_ok());
        assert!(check_pipeline_output("../out").is_err());
        assert!(check_pipeline_output("a/../../b").is_err());
        assert!(check_pipeline_output("/tmp/x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_subdir_and_file_refused() {
        let outside = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let out = OutDir::create(&base.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), out.root().join("results")).unwrap();
        assert!(out
            .subdir("results")
            .unwrap_err()
            .to_string()
            .contains("outside the output folder"));
        let ok = out.subdir("logs").unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), ok.join("x.json")).unwrap();
        assert!(out.file_in(&ok, "x.json").is_err());
        assert!(out.file_in(&ok, "../x.json").is_err());
        assert!(write_atomic(&ok.join("x.json"), b"{}").is_err());
        assert!(!outside.path().join("f").exists());
        write_atomic(&ok.join("y.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(ok.join("y.json")).unwrap(), b"{}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ok.join("y.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
