//! The source hash cache of `convert`: a hit reuses the digest (and says so in the manifest),
//! any change of the source is a miss, a corrupt entry or an unwritable cache directory is a
//! warning, and the digest is always that of the whole source file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use assert_cmd::Command;
use ggufq::convert::hash_cache::{FileKey, HashCache};
use ggufq::convert::{convert, ConvertOptions, SourceHashFrom};
use ggufq::quant::GgmlType;
use ggufq::recipe::{Base, Recipe};
use sha2::{Digest, Sha256};

fn file_sha(p: &Path) -> String {
    let d = Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn cache(dir: &Path) -> HashCache {
    HashCache {
        dir: dir.to_path_buf(),
        // The test files are brand new; the racy-window guard has its own unit test.
        racy_window: Duration::ZERO,
    }
}

/// Convert `src` to Q8_0 with the cache in `cache_dir`; returns the report's hash origin,
/// its warnings and the manifest's source sha256.
fn run(src: &Path, out: &Path, cache_dir: Option<&Path>) -> (SourceHashFrom, Vec<String>, String) {
    let mut o = ConvertOptions::new(Recipe::from_base(Base::parse("Q8_0").unwrap()));
    o.output = Some(out.to_path_buf());
    o.hash_cache = cache_dir.map(cache);
    let rep = convert(src, &o).unwrap();
    let m = rep.manifest_json.unwrap();
    let from = rep.source_hash_from.unwrap();
    assert_eq!(m["source"]["sha256_from"], from.as_str());
    let sha = m["source"]["sha256"].as_str().unwrap().to_string();
    (from, rep.warnings, sha)
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.gguf");
    ggufq::synth::write_tiny_model(&src, GgmlType::F32, 1, None).unwrap();
    let out = d.path().join("out.gguf");
    let cdir = d.path().join("cache");
    (d, src, out, cdir)
}

#[test]
fn second_conversion_hits_and_digest_is_the_files() {
    let (_d, src, out, cdir) = setup();
    let want = file_sha(&src);
    let (from, w, sha) = run(&src, &out, Some(&cdir));
    assert_eq!(
        (from, sha.as_str()),
        (SourceHashFrom::Computed, want.as_str())
    );
    assert!(w.is_empty(), "{w:?}");
    let (from, w, sha) = run(&src, &out, Some(&cdir));
    assert_eq!((from, sha.as_str()), (SourceHashFrom::Cache, want.as_str()));
    assert!(w.is_empty(), "{w:?}");
    // Without the cache: computed again, same digest.
    let (from, _, sha) = run(&src, &out, None);
    assert_eq!((from, sha), (SourceHashFrom::Computed, want));
}

#[test]
fn modified_sources_miss() {
    let (_d, src, out, cdir) = setup();
    run(&src, &out, Some(&cdir));
    // Same bytes, new mtime: a miss (the key changed), same digest.
    let f = std::fs::File::options().write(true).open(&src).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let (from, _, sha) = run(&src, &out, Some(&cdir));
    assert_eq!((from, sha), (SourceHashFrom::Computed, file_sha(&src)));
    assert_eq!(run(&src, &out, Some(&cdir)).0, SourceHashFrom::Cache);

    // A same-size rewrite with other content (and the old mtime put back): ctime changes.
    let before = FileKey::of(&src).unwrap();
    let mut bytes = std::fs::read(&src).unwrap();
    let n = bytes.len();
    // The low mantissa byte of the last f32 (the file ends with tensor data).
    bytes[n - 4] ^= 0x01;
    std::fs::write(&src, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&src).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let after = FileKey::of(&src).unwrap();
    assert_eq!(before.size, after.size);
    let (from, _, sha) = run(&src, &out, Some(&cdir));
    assert_eq!((from, sha), (SourceHashFrom::Computed, file_sha(&src)));

    // A different size (another model written at the same path).
    ggufq::synth::write_tiny_model(&src, GgmlType::F16, 2, None).unwrap();
    let (from, _, sha) = run(&src, &out, Some(&cdir));
    assert_eq!((from, sha), (SourceHashFrom::Computed, file_sha(&src)));
}

#[test]
fn corrupt_cache_entries_are_ignored_with_a_warning() {
    let (_d, src, out, cdir) = setup();
    run(&src, &out, Some(&cdir));
    let entries: Vec<PathBuf> = std::fs::read_dir(cdir.join("source-sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::write(&entries[0], b"\x00garbage{").unwrap();
    let (from, w, sha) = run(&src, &out, Some(&cdir));
    assert_eq!((from, sha), (SourceHashFrom::Computed, file_sha(&src)));
    assert!(w.iter().any(|w| w.contains("corrupt")), "{w:?}");
    // The entry was rewritten: the next run hits.
    let (from, w, _) = run(&src, &out, Some(&cdir));
    assert_eq!(from, SourceHashFrom::Cache);
    assert!(w.is_empty(), "{w:?}");
}

#[cfg(unix)]
#[test]
fn read_only_cache_dir_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, src, out, cdir) = setup();
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o555)).unwrap();
    // root ignores permissions: then the cache is simply writable and the test checks less.
    let probe = cdir.join("probe");
    let writable = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    let (from, w, sha) = run(&src, &out, Some(&cdir));
    assert_eq!((from, sha), (SourceHashFrom::Computed, file_sha(&src)));
    if !writable {
        assert!(w.iter().any(|w| w.contains("cannot store")), "{w:?}");
        assert_eq!(run(&src, &out, Some(&cdir)).0, SourceHashFrom::Computed);
    }
    assert!(out.is_file());
    std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A cache "directory" that cannot be created (its parent is a file; fails even for root):
/// the conversion succeeds with a warning and computes the digest.
#[test]
fn unusable_cache_dir_is_a_warning() {
    let (d, src, out, _) = setup();
    let file = d.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cdir = file.join("cache");
    for _ in 0..2 {
        let (from, w, sha) = run(&src, &out, Some(&cdir));
        assert_eq!((from, sha), (SourceHashFrom::Computed, file_sha(&src)));
        assert!(w.iter().any(|w| w.contains("cannot store")), "{w:?}");
    }
    assert!(out.is_file());
}

#[test]
fn cli_uses_the_cache_dir_and_no_hash_cache_bypasses_it() {
    let (d, src, out, cdir) = setup();
    // The file must look older than the racy window (2 s) for the CLI's default cache to
    // store it; its ctime cannot be set back, so wait.
    std::thread::sleep(Duration::from_millis(2100));
    let conv = |extra: &[&str]| {
        let mut c = Command::cargo_bin("ggufq").unwrap();
        c.env("GGUFQ_CACHE_DIR", &cdir)
            .arg("convert")
            .arg(&src)
            .args(["--type", "Q8_0", "--no-progress", "-o"])
            .arg(&out)
            .args(extra)
            .assert()
            .success();
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.path().join("out.gguf.manifest.json")).unwrap(),
        )
        .unwrap();
        m["source"]["sha256_from"].as_str().unwrap().to_string()
    };
    assert_eq!(conv(&[]), "computed");
    assert!(cdir.join("source-sha256").is_dir());
    assert_eq!(conv(&[]), "cache");
    assert_eq!(conv(&["--no-hash-cache"]), "computed");
}
