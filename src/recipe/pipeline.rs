//! Batch pipeline files (`ggufq batch PIPELINE.yaml`): schema, parsing and validation.
//!
//! A pipeline names models (paths or globs) and recipes (presets or recipe files); every
//! model × recipe pair is one job. The schema is documented in `docs/batch.md`. All YAML
//! handling lives in this module so the YAML library can be swapped in one place.
//!
//! ```yaml
//! output: out/smollm2
//! allow_requantize: true
//! models:
//!   - ~/.cache/ggufq/SmolLM2-135M-Instruct.Q4_1.gguf
//! recipes:
//!   - Q4_K_M
//!   - { recipe: ../hybrid.yaml, name: hybrid }
//! validation: { text: wiki.txt, ctx: 512, chunks: 8 }
//! gates: { max_kld: 0.1, max_ppl_increase: 5%, min_tps: 20 }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed pipeline file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Output folder, relative to the pipeline file's folder (`ggufq batch -o` overrides it).
    #[serde(default = "default_output")]
    pub output: String,
    /// Pass `--allow-requantize` to `convert` (needed when a source is already quantized).
    #[serde(default)]
    pub allow_requantize: bool,
    /// Source models: paths or glob patterns (`~` and `${VAR}` are expanded).
    pub models: Vec<ModelSpec>,
    /// Variants to make of every model: preset names or recipe files.
    pub recipes: Vec<RecipeSpec>,
    /// How each output is validated.
    #[serde(default)]
    pub validation: Validation,
    /// Pass/fail thresholds applied to the validation results.
    #[serde(default)]
    pub gates: Gates,
    /// Limits on concurrent jobs.
    #[serde(default)]
    pub parallel: Parallel,
}

fn default_output() -> String {
    "batch-out".to_string()
}

/// One entry of `models:`: a bare path/glob, or a map with an optional display name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelSpec {
    /// `- path/or/*.gguf`
    Path(String),
    /// `- { path: ..., name: ... }`
    Named {
        /// Path or glob.
        path: String,
        /// Name used in job ids and output file names (default: the file stem).
        #[serde(default)]
        name: Option<String>,
    },
}

impl ModelSpec {
    /// The path or glob pattern as written.
    pub fn pattern(&self) -> &str {
        match self {
            ModelSpec::Path(p) => p,
            ModelSpec::Named { path, .. } => path,
        }
    }
    /// The explicit name, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            ModelSpec::Path(_) => None,
            ModelSpec::Named { name, .. } => name.as_deref(),
        }
    }
}

/// One entry of `recipes:`: a preset name, or a map naming a preset or a recipe file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecipeSpec {
    /// `- Q4_K_M`: a shipped preset or a plain tensor type (`convert --type`).
    Preset(String),
    /// `- { preset: Q8_0 }` or `- { recipe: hybrid.yaml, name: hybrid }`.
    Full(RecipeEntry),
}

/// The map form of a `recipes:` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeEntry {
    /// A preset or tensor type name (`convert --type`).
    #[serde(default)]
    pub preset: Option<String>,
    /// A recipe file, relative to the pipeline file (`convert --recipe`).
    #[serde(default)]
    pub recipe: Option<String>,
    /// Name used in job ids and output file names (default: preset name or recipe file stem).
    #[serde(default)]
    pub name: Option<String>,
    /// An importance matrix file passed as `convert --imatrix`.
    #[serde(default)]
    pub imatrix: Option<String>,
}

/// What a recipe entry asks `convert` to do, with paths resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipeSource {
    /// `convert --type NAME`.
    Preset(String),
    /// `convert --recipe PATH`.
    File(PathBuf),
}

/// `validation:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// Text file for perplexity (`ppl -f`), relative to the pipeline file. None: no ppl/KLD.
    #[serde(default)]
    pub text: Option<String>,
    /// Context length (`-c`).
    #[serde(default = "default_ctx")]
    pub ctx: u32,
    /// Number of chunks (`--chunks`); None: the whole text.
    #[serde(default)]
    pub chunks: Option<u32>,
    /// Compute KL-divergence against the source model (`--kl-base SOURCE`).
    #[serde(default = "default_true")]
    pub kld: bool,
    /// Where perplexity runs: `cpu` (`ggufq ppl`) or `gpu` (`ggufq bench --ppl`).
    #[serde(default)]
    pub device: Device,
    /// Speed benchmark (`ggufq bench`): `auto` runs it and skips when no GPU adapter exists.
    #[serde(default)]
    pub bench: BenchMode,
    /// Extra arguments for `ggufq bench` (e.g. `[-p, "512", -n, "128", -r, "5"]`).
    #[serde(default)]
    pub bench_args: Vec<String>,
}

fn default_ctx() -> u32 {
    512
}
fn default_true() -> bool {
    true
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            text: None,
            ctx: default_ctx(),
            chunks: None,
            kld: true,
            device: Device::default(),
            bench: BenchMode::default(),
            bench_args: Vec::new(),
        }
    }
}

/// Where perplexity/KLD is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU reference runtime (`ggufq ppl`).
    #[default]
    Cpu,
    /// The wgpu engine (`ggufq bench --ppl`).
    Gpu,
}

/// Whether `ggufq bench` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Run it; a missing GPU adapter (exit code 3) marks the bench as skipped, not failed.
    #[default]
    Auto,
    /// Run it; any failure fails the job.
    Always,
    /// Never run it.
    Never,
}

/// `gates:` section. A variant passes when every gate that has a value and a measurement passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Maximum mean KL-divergence against the source.
    #[serde(default)]
    pub max_kld: Option<f64>,
    /// Maximum relative perplexity increase over the source: `0.05` or `"5%"`.
    #[serde(
        default,
        deserialize_with = "de_fraction",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ppl_increase: Option<f64>,
    /// Minimum generation tokens/s (from `bench`, or from `ppl` when no bench ran).
    #[serde(default)]
    pub min_tps: Option<f64>,
}

fn de_fraction<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(x)) => Ok(Some(x)),
        Some(NumOrStr::Str(s)) => parse_fraction(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parse `"5%"` as 0.05 or `"0.05"` as 0.05.
pub fn parse_fraction(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    num.parse::<f64>()
        .map(|x| x * scale)
        .map_err(|_| format!("expected a number or a percentage like \"5%\", got {s:?}"))
}

/// `parallel:` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    /// Maximum concurrent jobs (default: the number of CPU cores).
    #[serde(default)]
    pub jobs: Option<usize>,
    /// Memory budget for all running jobs, e.g. `"8GiB"` (default: 75 % of available memory).
    #[serde(default)]
    pub memory: Option<String>,
    /// Estimated peak memory of one job as a multiple of its source file size (default 4).
    #[serde(default)]
    pub mem_per_job_factor: Option<f64>,
}

/// Parse a byte size like `512MiB`, `8GiB`, `2G`, `1000000`.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. \"8GiB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        u => {
            return Err(format!(
                "bad size unit {u:?} in {s:?}: use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
            ))
        }
    };
    Ok((x * mult) as u64)
}

impl Pipeline {
    /// Read and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Pipeline::parse(&text, &path.display().to_string())
    }

    /// Parse and validate pipeline text; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Pipeline> {
        let p: Pipeline = serde_yaml::from_str(text).map_err(|e| yaml_error(&e, origin, text))?;
        p.validate(text, origin)?;
        Ok(p)
    }

    fn validate(&self, text: &str, origin: &str) -> Result<()> {
        let err = |key: &[&str], msg: String| {
            let (line, column) = locate(text, key);
            Error::Recipe {
                path: origin.to_string(),
                line,
                column,
                msg,
            }
        };
        if self.models.is_empty() {
            return Err(err(
                &["models"],
                "`models:` is empty: name at least one model path or glob".into(),
            ));
        }
        if self.recipes.is_empty() {
            return Err(err(
                &["recipes"],
                "`recipes:` is empty: name at least one preset or recipe file".into(),
            ));
        }
        for m in &self.models {
            if m.pattern().trim().is_empty() {
                return Err(err(&["models"], "a model path is empty".into()));
            }
        }
        for r in &self.recipes {
            if let RecipeSpec::Full(e) = r {
                match (&e.preset, &e.recipe) {
                    (Some(_), Some(_)) => {
                        return Err(err(
                            &["recipes"],
                            "a recipes entry has both `preset:` and `recipe:`; use one".into(),
                        ))
                    }
                    (None, None) => {
                        return Err(err(
                            &["recipes"],
                            "a recipes entry needs `preset:` or `recipe:`".into(),
                        ))
                    }
                    _ => {}
                }
            }
        }
        if self.output.trim().is_empty() {
            return Err(err(&["output"], "`output:` is empty".into()));
        }
        if self.validation.ctx < 8 {
            return Err(err(
                &["validation", "ctx"],
                format!("ctx {} is too small (minimum 8)", self.validation.ctx),
            ));
        }
        if self.validation.chunks == Some(0) {
            return Err(err(
                &["validation", "chunks"],
                "chunks must be at least 1".into(),
            ));
        }
        for (key, v) in [
            ("max_kld", self.gates.max_kld),
            ("max_ppl_increase", self.gates.max_ppl_increase),
            ("min_tps", self.gates.min_tps),
        ] {
            if let Some(x) = v {
                if !x.is_finite() || x < 0.0 {
                    return Err(err(
                        &["gates", key],
                        format!("{key} must be a non-negative number, got {x}"),
                    ));
                }
            }
        }
        if self.parallel.jobs == Some(0) {
            return Err(err(&["parallel", "jobs"], "jobs must be at least 1".into()));
        }
        if let Some(m) = &self.parallel.memory {
            parse_bytes(m).map_err(|e| err(&["parallel", "memory"], e))?;
        }
        if let Some(f) = self.parallel.mem_per_job_factor {
            if !f.is_finite() || f <= 0.0 {
                return Err(err(
                    &["parallel", "mem_per_job_factor"],
                    format!("mem_per_job_factor must be positive, got {f}"),
                ));
            }
        }
        Ok(())
    }

    /// The memory budget in bytes, if `parallel.memory` is set.
    pub fn memory_budget(&self) -> Option<u64> {
        self.parallel
            .memory
            .as_deref()
            .and_then(|m| parse_bytes(m).ok())
    }
}

impl RecipeSpec {
    /// The display name of this variant (explicit name, preset name or recipe file stem).
    pub fn name(&self) -> String {
        match self {
            RecipeSpec::Preset(p) => p.clone(),
            RecipeSpec::Full(e) => {
                if let Some(n) = &e.name {
                    n.clone()
                } else if let Some(p) = &e.preset {
                    p.clone()
                } else {
                    let r = e.recipe.as_deref().unwrap_or("recipe");
                    Path::new(r)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| r.to_string())
                }
            }
        }
    }

    /// What `convert` is asked to do, with a recipe path resolved against `base_dir`.
    pub fn source(&self, base_dir: &Path) -> RecipeSource {
        match self {
            RecipeSpec::Preset(p) => RecipeSource::Preset(p.trim().to_string()),
            RecipeSpec::Full(e) => match (&e.preset, &e.recipe) {
                (_, Some(r)) => RecipeSource::File(resolve_path(r, base_dir)),
                (Some(p), None) => RecipeSource::Preset(p.trim().to_string()),
                // validate() rejects entries with neither; treat as an empty preset name here.
                (None, None) => RecipeSource::Preset(String::new()),
            },
        }
    }

    /// The importance matrix path, resolved against `base_dir`.
    pub fn imatrix(&self, base_dir: &Path) -> Option<PathBuf> {
        match self {
            RecipeSpec::Full(RecipeEntry {
                imatrix: Some(m), ..
            }) => Some(resolve_path(m, base_dir)),
            _ => None,
        }
    }
}

/// Expand `~/` and `${VAR}` / `${VAR:-default}` / `$VAR`, then resolve a relative path
/// against `base_dir` (the pipeline file's folder).
pub fn resolve_path(p: &str, base_dir: &Path) -> PathBuf {
    let expanded = expand_vars(p.trim());
    let expanded = match expanded.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(rest).to_string_lossy().into_owned(),
            None => expanded.clone(),
        },
        None => expanded.clone(),
    };
    let pb = PathBuf::from(expanded);
    if pb.is_absolute() {
        pb
    } else {
        base_dir.join(pb)
    }
}

/// Expand environment variables: `${VAR}`, `${VAR:-default}` and `$VAR`. Unset → empty.
pub fn expand_vars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                let body = &inner[..end];
                let (name, default) = match body.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (body, None),
                };
                match std::env::var(name) {
                    Ok(v) if !v.is_empty() => out.push_str(&v),
                    _ => out.push_str(default.unwrap_or("")),
                }
                rest = &inner[end + 1..];
                continue;
            }
        }
        let n = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let starts_ok = after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if n == 0 || !starts_ok {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&std::env::var(&after[..n]).unwrap_or_default());
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    out
}

/// Turn a serde_yaml error into `Error::Recipe` with 1-based line and column.
fn yaml_error(e: &serde_yaml::Error, origin: &str, text: &str) -> Error {
    let msg = e.to_string();
    // serde_yaml appends " at line L column C"; the location goes into our own fields.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let (line, column) = match e.location() {
        Some(l) => (l.line(), l.column()),
        None => {
            // Errors from untagged enums carry no location: point at the most likely section.
            let key = if msg.contains("ModelSpec") {
                "models"
            } else if msg.contains("RecipeSpec") {
                "recipes"
            } else {
                ""
            };
            if key.is_empty() {
                (1, 1)
            } else {
                locate(text, &[key])
            }
        }
    };
    let msg = msg
        .replace("data did not match any variant of untagged enum ModelSpec", "a models entry must be a path string or a map with `path:` (and optional `name:`)")
        .replace(
            "data did not match any variant of untagged enum RecipeSpec",
            "a recipes entry must be a preset name or a map with `preset:` or `recipe:` (optional `name:`, `imatrix:`; no other keys)",
        );
    Error::Recipe {
        path: origin.to_string(),
        line,
        column,
        msg,
    }
}

/// Find the 1-based line/column of a nested key (`["gates", "max_kld"]`) in YAML text by
/// scanning for `key:` lines in order, each deeper than its parent. Falls back to the
/// deepest key found, or 1:1.
fn locate(text: &str, keys: &[&str]) -> (usize, usize) {
    let mut found = (1, 1);
    let mut start = 0usize;
    let mut parent_indent: Option<usize> = None;
    let lines: Vec<&str> = text.lines().collect();
    'keys: for key in keys {
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if let Some(pi) = parent_indent {
                if indent <= pi && !trimmed.is_empty() && !trimmed.starts_with('#') {
                    break;
                }
            }
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with(':') {
                    found = (i + 1, indent + 1);
                    start = i + 1;
                    parent_indent = Some(indent);
                    continue 'keys;
                }
            }
        }
        break;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
output: out
allow_requantize: true
models:
  - a.gguf
  - { path: 'models/*.gguf', name: m }
recipes:
  - Q4_K_M
  - preset: Q8_0
    name: q8
  - { recipe: ../hybrid.yaml }
validation:
  text: wiki.txt
  ctx: 128
  chunks: 2
  bench: never
gates:
  max_kld: 0.1
  max_ppl_increase: 5%
  min_tps: 3
parallel:
  jobs: 2
  memory: 2GiB
";

    #[test]
    fn parses_full_pipeline() {
        let p = Pipeline::parse(FULL, "p.yaml").unwrap();
        assert_eq!(p.output, "out");
        assert!(p.allow_requantize);
        assert_eq!(p.models[1].pattern(), "models/*.gguf");
        assert_eq!(p.models[1].name(), Some("m"));
        let names: Vec<String> = p.recipes.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["Q4_K_M", "q8", "hybrid"]);
        assert_eq!(
            p.recipes[2].source(Path::new("/x/y")),
            RecipeSource::File(PathBuf::from("/x/y/../hybrid.yaml"))
        );
        assert_eq!(p.validation.chunks, Some(2));
        assert_eq!(p.validation.bench, BenchMode::Never);
        assert!((p.gates.max_ppl_increase.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(p.memory_budget(), Some(2 << 30));
        // Round trip: serialize → parse gives the same pipeline.
        let again = serde_yaml::to_string(&p).unwrap();
        assert_eq!(Pipeline::parse(&again, "again").unwrap(), p);
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let text = "models: [a.gguf]\nrecipes: [Q4_0]\ngates:\n  max_kdl: 0.1\n";
        let e = Pipeline::parse(text, "p.yaml").unwrap_err().to_string();
        assert!(e.starts_with("p.yaml:4:3: "), "{e}");
        assert!(e.contains("max_kdl"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let text = "models: [a.gguf]\nrecipes: [Q4_0]\ngates:\n  min_tps: 1\n  max_kld: -1\n";
        let e = Pipeline::parse(text, "p.yaml").unwrap_err().to_string();
        assert!(e.starts_with("p.yaml:5:3: max_kld must be"), "{e}");
        let e = Pipeline::parse("models: []\nrecipes: [Q4_0]\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.yaml:1:1: `models:` is empty"), "{e}");
        let e = Pipeline::parse(
            "models: [a]\nrecipes:\n  - {preset: Q4_0, recipe: r.yaml}\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("both `preset:` and `recipe:`"), "{e}");
        let e = Pipeline::parse(
            "models: [a]\nrecipes: [Q4_0]\nparallel: {memory: 3 parsecs}\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.yaml:3:"), "{e}");
        let e = Pipeline::parse(
            "models: [a]\nrecipes: [Q4_0]\ngates: {max_ppl_increase: lots}\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("percentage"), "{e}");
    }

    #[test]
    fn syntax_error_location() {
        let e = Pipeline::parse("models: [a\nrecipes: x\n", "p.yaml").unwrap_err();
        match e {
            Error::Recipe { line, .. } => assert!(line >= 2),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn bad_recipe_entry_message() {
        let e = Pipeline::parse("models: [a]\nrecipes:\n  - {presett: Q4_0}\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.yaml:3:3: "), "{e}");
        assert!(
            e.contains("a recipes entry must be a preset name or a map"),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_fractions() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(parse_fraction("5%"), Ok(0.05));
        assert_eq!(parse_fraction("0.2"), Ok(0.2));
    }

    #[test]
    fn path_expansion() {
        std::env::set_var("GGUFQ_PIPELINE_TEST_VAR", "/abs");
        assert_eq!(
            resolve_path("${GGUFQ_PIPELINE_TEST_VAR}/m.gguf", Path::new("/base")),
            PathBuf::from("/abs/m.gguf")
        );
        assert_eq!(
            resolve_path(
                "${GGUFQ_PIPELINE_UNSET_VAR:-rel}/m.gguf",
                Path::new("/base")
            ),
            PathBuf::from("/base/rel/m.gguf")
        );
        assert_eq!(
            resolve_path("m.gguf", Path::new("/base")),
            PathBuf::from("/base/m.gguf")
        );
        assert_eq!(expand_vars("cost $5"), "cost $5");
    }
}
