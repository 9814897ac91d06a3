//! "Nothing a file contains is executed or expanded; file names from metadata are never used as
//! paths" (issue #7). A tiny model whose metadata holds shell command substitutions, Jinja,
//! format specifiers, terminal escape sequences and path traversals goes through `inspect`,
//! `convert`, `bench` and `batch`. Every command must treat those strings as opaque data:
//! they come out byte-identical where they are copied (output metadata, JSON), escaped where
//! they are shown on a terminal, and no file appears anywhere but where the command's own
//! arguments say.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ggufq::gguf::{GgufFile, GgufWriter, TensorSpec, Value};
use ggufq::quant::GgmlType;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ggufq")
}

/// Every file and folder under `root`, relative.
fn walk(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out
}

struct Evil {
    dir: tempfile::TempDir,
    /// The folder the commands run in, two levels below the temp root so that `../../x`
    /// still lands inside the temp root where the test can see it.
    work: PathBuf,
    name: String,
    template: String,
    url: String,
}

impl Evil {
    fn new() -> Evil {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let work = root.join("a/b");
        std::fs::create_dir_all(&work).unwrap();
        let c = root.join("pwned").display().to_string();
        let name = format!(
            "$(touch {c}1) `touch {c}2`; touch {c}3 | tee {c}4 && ../../pwned5 {{{{ 7*7 }}}} \
             %s%n%x ${{HOME}} \u{1b}]0;owned\u{7}\u{1b}[2J\r\n"
        );
        let template = format!(
            "{{% for m in messages %}}{{{{ m.content }}}}{{{{ cycler.__init__.__globals__.os\
             .popen('touch {c}6').read() }}}}{{% endfor %}}$(touch {c}7)"
        );
        let url = format!("file://{c}8");
        let src = work.join("src.gguf");
        ggufq::synth::write_tiny_model(&src, GgmlType::F32, 7, None).unwrap();
        let f = GgufFile::open(&src).unwrap();
        let mut meta: Vec<(String, Value)> = f
            .metadata
            .iter()
            .filter(|(k, _)| k != "general.name")
            .cloned()
            .collect();
        for (k, v) in [
            ("general.name", name.clone()),
            ("tokenizer.chat_template", template.clone()),
            ("general.source.url", url.clone()),
            ("general.basename", "../../pwned9".to_string()),
            ("general.finetune", format!("{c}10")),
            ("general.license", "/etc/passwd".to_string()),
        ] {
            meta.push((k.to_string(), Value::String(v)));
        }
        let specs: Vec<TensorSpec> = f
            .tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                type_id: t.type_id,
                n_bytes: t.n_bytes.unwrap(),
            })
            .collect();
        let out = std::fs::File::create(work.join("evil.gguf")).unwrap();
        let mut w = GgufWriter::new(out, 3, f.alignment, &meta, specs).unwrap();
        for t in &f.tensors {
            w.write_tensor(f.tensor_data(t).unwrap()).unwrap();
        }
        w.finish().unwrap();
        drop(f);
        std::fs::remove_file(&src).unwrap();
        std::fs::write(
            work.join("wiki.txt"),
            "The quick brown fox jumps over the lazy dog. ".repeat(40),
        )
        .unwrap();
        Evil {
            dir,
            work,
            name,
            template,
            url,
        }
    }

    /// Run ggufq in the work folder; check that it created no file outside `allowed` (paths
    /// relative to the temp root, prefixes allowed) and that no canary appeared.
    fn run(&self, args: &[&str], allowed: &[&str]) -> Output {
        let before = walk(self.dir.path());
        let out = Command::new(bin())
            .args(args)
            .current_dir(&self.work)
            .output()
            .unwrap();
        let after = walk(self.dir.path());
        for p in after.difference(&before) {
            let s = p.display().to_string();
            assert!(
                !s.contains("pwned"),
                "ggufq {args:?} created {s}: metadata was used as a path or executed"
            );
            assert!(
                allowed.iter().any(|a| s.starts_with(a)),
                "ggufq {args:?} created unexpected {s}"
            );
        }
        assert!(
            before.difference(&after).next().is_none(),
            "a file vanished"
        );
        out
    }

    fn check_copied(&self, p: &Path) {
        let f = GgufFile::open(p).unwrap();
        assert_eq!(f.get_str("general.name"), Some(self.name.as_str()));
        assert_eq!(
            f.get_str("tokenizer.chat_template"),
            Some(self.template.as_str())
        );
        assert_eq!(f.get_str("general.source.url"), Some(self.url.as_str()));
        assert_eq!(f.get_str("general.basename"), Some("../../pwned9"));
    }
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Terminal control characters from the file must never reach a terminal raw.
fn no_raw_controls(text: &str, what: &str) {
    for c in ['\u{1b}', '\u{7}', '\r'] {
        assert!(!text.contains(c), "{what}: raw {c:?} in output:\n{text}");
    }
}

#[test]
fn inspect_shows_metadata_as_escaped_data() {
    let e = Evil::new();
    let text = ok(&e.run(&["inspect", "evil.gguf"], &[]));
    no_raw_controls(&text, "inspect");
    assert!(text.contains("$(touch "), "{text}");
    assert!(text.contains("{{ 7*7 }}"), "{text}");
    let text = ok(&e.run(&["inspect", "--full", "evil.gguf"], &[]));
    no_raw_controls(&text, "inspect --full");
    assert!(text.contains("cycler.__init__"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&ok(
        &e.run(&["inspect", "--json", "--full", "evil.gguf"], &[])
    ))
    .unwrap();
    let meta = &json["metadata"];
    let get = |k: &str| {
        meta[k]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in {meta}"))
            .to_string()
    };
    assert_eq!(get("general.name"), e.name);
    assert_eq!(get("tokenizer.chat_template"), e.template);
    assert_eq!(get("general.source.url"), e.url);
}

#[test]
fn convert_names_outputs_from_arguments_and_copies_metadata_verbatim() {
    let e = Evil::new();
    // Default output name: from the input file name and the type, never from general.name.
    let out = e.run(
        &["convert", "evil.gguf", "-t", "Q8_0", "--no-progress"],
        &["a/b/evil-Q8_0.gguf"],
    );
    let text = ok(&out);
    no_raw_controls(&text, "convert");
    e.check_copied(&e.work.join("evil-Q8_0.gguf"));
    let m = std::fs::read_to_string(e.work.join("evil-Q8_0.gguf.manifest.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&m).unwrap();

    // A recipe whose name tries the same tricks is reduced to one file-name component.
    std::fs::write(
        e.work.join("r.yaml"),
        "name: \"../../escape11 $(touch x) `id`\"\nbase: Q8_0\n",
    )
    .unwrap();
    let out = e.run(
        &["convert", "evil.gguf", "-r", "r.yaml", "--no-progress"],
        &["a/b/evil-______escape11___touch_x___id_.gguf"],
    );
    ok(&out);
    let made: Vec<String> = std::fs::read_dir(&e.work)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("escape11"))
        .collect();
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.iter().all(|n| !n.contains('/') && !n.contains('$')));

    // --dry-run plans without writing and prints tensor names only.
    let text = ok(&e.run(&["convert", "evil.gguf", "-t", "Q4_K_M", "--dry-run"], &[]));
    no_raw_controls(&text, "convert --dry-run");
}

#[test]
fn bench_treats_metadata_as_data() {
    let e = Evil::new();
    // The CPU backend when this build has it, else the wgpu one (lavapipe in CI); either way
    // no file may appear and nothing may reach the terminal raw, even when bench fails.
    let mut ran = false;
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && std::env::var_os("GGUFQ_SKIP_GPU").is_some() {
            continue;
        }
        let o = e.run(
            &[
                "bench",
                "evil.gguf",
                "--backend",
                backend,
                "-p",
                "8",
                "-n",
                "4",
                "-r",
                "1",
                "-o",
                "json",
                "-q",
            ],
            &[],
        );
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        no_raw_controls(&stdout, "bench");
        no_raw_controls(&stderr, "bench stderr");
        if o.status.code() == Some(0) {
            let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert!(j.to_string().contains("evil.gguf"), "{j}");
            ran = true;
            break;
        }
        // Only "this backend is not available here" is an acceptable failure.
        assert_eq!(o.status.code(), Some(3), "{backend}: {stderr}");
    }
    if !ran {
        eprintln!("bench: no backend available in this build/machine; checked files only");
    }
}

#[test]
fn batch_names_outputs_from_the_pipeline_and_copies_metadata_verbatim() {
    let e = Evil::new();
    std::fs::write(
        e.work.join("pipeline.yaml"),
        "output: out\nmodels:\n  - evil.gguf\nrecipes:\n  - Q8_0\nvalidation:\n  text: wiki.txt\n  ctx: 32\n  chunks: 1\n  bench: never\n",
    )
    .unwrap();
    let o = e.run(&["batch", "pipeline.yaml", "-q"], &["a/b/out"]);
    let code = o.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "{code:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let files = walk(&e.work.join("out"));
    let models: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    assert_eq!(models.len(), 1, "{files:?}");
    assert!(
        models[0].to_string_lossy().starts_with("evil"),
        "{models:?}"
    );
    e.check_copied(&e.work.join("out").join(models[0]));
    // The report shows the model by its pipeline name, and never the raw control characters.
    for p in &files {
        let full = e.work.join("out").join(p);
        if full.is_file() && p.extension().is_some_and(|x| x == "md" || x == "json") {
            let t = std::fs::read_to_string(&full).unwrap();
            assert!(!t.contains('\u{1b}'), "{}", p.display());
        }
    }
}

/// A file whose tensor names and keys carry terminal escapes and shell syntax.
fn evil_names(dir: &Path, duplicate: bool) -> (PathBuf, String, String) {
    let tname = "blk.0.\u{1b}[2J$(touch pwned12)\r.weight".to_string();
    let key = "evil.\u{1b}]0;owned\u{7}.`id`".to_string();
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        (key.clone(), Value::String("x".into())),
    ];
    let mut specs = vec![TensorSpec::new(tname.clone(), vec![32, 4], GgmlType::F32).unwrap()];
    if duplicate {
        // The writer refuses duplicates, so write a second distinct name and patch it below.
        specs.push(TensorSpec::new(tname.replace("12", "13"), vec![32, 4], GgmlType::F32).unwrap());
    }
    let p = dir.join(if duplicate { "dup.gguf" } else { "names.gguf" });
    let mut buf = Vec::new();
    let mut w = GgufWriter::new(&mut buf, 3, 32, &meta, specs.clone()).unwrap();
    for _ in &specs {
        w.write_tensor(&[0u8; 512]).unwrap();
    }
    w.finish().unwrap();
    if duplicate {
        let from = tname.replace("12", "13");
        let at = buf
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap();
        buf[at..at + from.len()].copy_from_slice(tname.as_bytes());
    }
    std::fs::write(&p, buf).unwrap();
    (p, tname, key)
}

#[test]
fn tensor_names_and_keys_are_escaped_on_the_terminal_and_copied_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let (p, tname, key) = evil_names(dir.path(), false);
    let run = |args: &[&str]| {
        let o = Command::new(bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        no_raw_controls(&String::from_utf8_lossy(&o.stderr), "stderr");
        o
    };
    for args in [
        &["inspect", "names.gguf"][..],
        &["inspect", "--layers", "names.gguf"],
        &["inspect", "--full", "names.gguf"],
        &["convert", "names.gguf", "-t", "Q8_0", "--dry-run"],
    ] {
        let text = ok(&run(args));
        no_raw_controls(&text, &format!("{args:?}"));
        assert!(text.contains("$(touch pwned12)"), "{args:?}: {text}");
    }
    let o = run(&["inspect", "--json", "names.gguf"]);
    let j: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(j["tensors"][0]["name"], tname.as_str());
    assert!(j["metadata"].get(&key).is_some(), "{}", j["metadata"]);
    ok(&run(&[
        "convert",
        "names.gguf",
        "-t",
        "Q8_0",
        "-o",
        "out.gguf",
        "--no-progress",
    ]));
    let f = GgufFile::open(dir.path().join("out.gguf")).unwrap();
    assert_eq!(f.tensors[0].name, tname);
    assert!(f.get(&key).is_some());
    assert!(walk(dir.path())
        .iter()
        .all(|p| !p.to_string_lossy().contains("pwned")));

    // An error about such a name reaches the terminal escaped, and names the file.
    let (dup, _, _) = evil_names(dir.path(), true);
    let o = Command::new(bin())
        .arg("inspect")
        .arg(&dup)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    no_raw_controls(&err, "error");
    assert!(err.contains("duplicate tensor name"), "{err}");
    assert!(err.contains("\\u{1b}[2J$(touch pwned12)"), "{err}");
    let _ = p;
}
