//! The recipe file format (YAML), its validation and `extends:` resolution.
//!
//! Every YAML byte the project reads goes through this module. Errors carry the recipe file,
//! line and column (from serde_yaml's location), unknown keys are rejected, and unknown type
//! names list the valid ones. See `docs/recipes.md` for the format reference.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::presets::Preset;
use super::rules::{GlobPattern, LayerSet, NamePattern};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// The types ggufq can write (quantize to), in ggml id order.
pub fn writable_types() -> &'static [GgmlType] {
    use GgmlType::*;
    &[
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16,
    ]
}

fn writable_list() -> String {
    writable_types()
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn preset_list() -> String {
    Preset::all()
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse a writable tensor type name, with an error listing the valid names.
pub fn parse_type_name(s: &str) -> std::result::Result<GgmlType, String> {
    match GgmlType::from_name(s) {
        Some(t) if writable_types().contains(&t) => Ok(t),
        Some(t) => Err(format!(
            "type {t} cannot be written by ggufq; valid types: {}",
            writable_list()
        )),
        None => Err(format!(
            "unknown type '{s}'; valid types: {}",
            writable_list()
        )),
    }
}

/// Deserialize a string through `parse`, raising the error inside the visitor so that
/// serde_yaml attaches the scalar's own line and column.
pub(crate) fn deserialize_parsed<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> std::result::Result<T, String>,
) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T> {
        expecting: &'static str,
        parse: fn(&str) -> std::result::Result<T, String>,
    }
    impl<T> de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V { expecting, parse })
}

/// The default choice for tensors no rule matches: a plain type, or a llama.cpp preset mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Every quantizable tensor gets this type (llama-quantize `--pure`).
    Type(GgmlType),
    /// llama.cpp's per-tensor mix for this file type.
    Preset(Preset),
}

impl Base {
    /// Parse a type name or a preset name (`Q4_K`, `Q4_K_M`, `q8_0`).
    pub fn parse(s: &str) -> std::result::Result<Base, String> {
        // A name that is both a type and a preset (Q8_0, Q6_K, Q4_0...) is the plain type
        // here; use `preset:` for llama.cpp's mix of that name.
        if let Ok(t) = parse_type_name(s) {
            return Ok(Base::Type(t));
        }
        match Preset::from_name(s) {
            Some(p) => Ok(Base::Preset(p)),
            None => Err(format!(
                "unknown base '{s}'; valid types: {}; valid presets: {}",
                writable_list(),
                preset_list()
            )),
        }
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Base::Type(t) => t.name(),
            Base::Preset(p) => p.name(),
        }
    }
}

impl Serialize for Base {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Base {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_parsed(d, "a type or preset name", Base::parse)
    }
}

/// A preset name (for the `preset:` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresetName(pub Preset);

impl Serialize for PresetName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for PresetName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_parsed(d, "a preset name", |s| {
            Preset::from_name(s)
                .map(PresetName)
                .ok_or_else(|| format!("unknown preset '{s}'; valid presets: {}", preset_list()))
        })
    }
}

/// The type a rule assigns: a writable type, or `keep` (leave the tensor as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Convert to this type.
    Type(GgmlType),
    /// Keep the source type and bytes.
    Keep,
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Target::Type(t) => s.serialize_str(t.name()),
            Target::Keep => s.serialize_str("keep"),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_parsed(d, "a type name or `keep`", |s| {
            if s.trim().eq_ignore_ascii_case("keep") {
                return Ok(Target::Keep);
            }
            parse_type_name(s)
                .map(Target::Type)
                .map_err(|e| format!("{e}, keep"))
        })
    }
}

/// What to do when a tensor's rows cannot hold the chosen type's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackMode {
    /// llama.cpp's table: Q2_K/Q3_K→Q4_0, Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, then F16.
    #[default]
    Llama,
    /// Among compatible types no larger than llama.cpp's choice, the lowest measured error.
    Best,
}

/// Tensor kinds a rule can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// `token_embd.weight` (and `per_layer_token_embd.weight`).
    TokenEmbd,
    /// `output.weight`.
    Output,
    /// `attn_q.weight`.
    AttnQ,
    /// `attn_k.weight`.
    AttnK,
    /// `attn_v.weight`.
    AttnV,
    /// Fused `attn_qkv.weight`.
    AttnQkv,
    /// MLA `attn_kv_b.weight`.
    AttnKvB,
    /// `attn_output.weight`.
    AttnOutput,
    /// `ffn_gate*` (not `ffn_gate_inp`).
    FfnGate,
    /// `ffn_up*`.
    FfnUp,
    /// `ffn_down*`.
    FfnDown,
    /// MoE router `ffn_gate_inp`.
    FfnGateInp,
    /// Any `*norm*` tensor.
    Norm,
    /// Any other tensor.
    Other,
    /// Alias: every attention kind (q, k, v, qkv, kv_b, output).
    Attn,
    /// Alias: every feed-forward kind (gate, up, down).
    Ffn,
}

impl TensorKind {
    /// True when `self` (possibly an alias) covers the concrete kind `k`.
    pub fn covers(self, k: TensorKind) -> bool {
        use TensorKind::*;
        match self {
            Attn => matches!(k, AttnQ | AttnK | AttnV | AttnQkv | AttnKvB | AttnOutput),
            Ffn => matches!(k, FfnGate | FfnUp | FfnDown),
            s => s == k,
        }
    }
}

/// One value or a list of values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A share of the layers: a fraction in (0, 1] or a whole count of layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Portion {
    /// `first: 0.125` = layers below floor(0.125 × n_layer).
    Fraction(f64),
    /// `first: 4` = the first four layers.
    Count(u64),
}

impl Portion {
    /// Number of layers covered out of `n`.
    pub fn count(self, n: u64) -> u64 {
        match self {
            Portion::Fraction(f) => ((f * n as f64).floor() as u64).min(n),
            Portion::Count(c) => c.min(n),
        }
    }
    /// For `last:` — the first layer index included, out of `n`
    /// (a fraction f gives floor((1 − f) × n), llama.cpp's `7*n/8` for f = 1/8).
    pub fn last_start(self, n: u64) -> u64 {
        match self {
            Portion::Fraction(f) => (((1.0 - f) * n as f64).floor().max(0.0) as u64).min(n),
            Portion::Count(c) => n.saturating_sub(c),
        }
    }
}

impl Serialize for Portion {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Portion::Fraction(f) => s.serialize_f64(*f),
            Portion::Count(c) => s.serialize_u64(*c),
        }
    }
}

impl<'de> Deserialize<'de> for Portion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Portion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a fraction in (0, 1] or a whole number of layers")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Portion, E> {
                Ok(Portion::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Portion, E> {
                u64::try_from(v)
                    .map(Portion::Count)
                    .map_err(|_| E::custom("a layer count cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Portion, E> {
                if v > 0.0 && v <= 1.0 {
                    Ok(Portion::Fraction(v))
                } else {
                    Err(E::custom(format!("fraction {v} is not in (0, 1]")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A metadata override value. `null` removes the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer (stored with the key's existing type, else u32/i32/u64/i64 as it fits).
    Int(i64),
    /// A large unsigned integer.
    UInt(u64),
    /// A float (stored as the existing type, else F32).
    Float(f64),
    /// A string.
    Str(String),
}

/// One rule as written in the file. All selectors present must match (AND); a rule with no
/// selector matches every tensor it may touch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Exact tensor name(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<OneOrMany<String>>,
    /// A regular expression searched in the tensor name (like llama-quantize `--tensor-type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<NamePattern>,
    /// A glob matched against the whole tensor name (`blk.*.ffn_down.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<GlobPattern>,
    /// Tensor kind(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OneOrMany<TensorKind>>,
    /// Layer set, `"0-3,28-31"` or a list of numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerSet>,
    /// Every n-th layer (from `offset`, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Start layer for `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The first layers: a fraction (`0.125`) or a count (`4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<Portion>,
    /// The last layers: a fraction or a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Portion>,
    /// Also apply to tensors that are normally kept (1-D tensors, norms, routers...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// The type to give matching tensors (`Q5_K`, `F16`, `keep`).
    #[serde(rename = "type")]
    pub ty: Target,
}

/// A recipe file as written (before `extends:` is resolved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// A short name, shown in plans and manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Another recipe (path relative to this file, or a preset name) whose settings and rules
    /// this one inherits; this file's rules come first and its settings win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Default type for tensors no rule matches: a type name or a preset name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
    /// A llama.cpp preset mix as the base (same as `base: Q4_K_M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetName>,
    /// Row-width fallback strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackMode>,
    /// Importance matrix file (path relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<String>,
    /// Metadata overrides; `null` removes a key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Option<MetaValue>>,
    /// Ordered rules; the first that matches a tensor decides its type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
}

/// Where a rule was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// The recipe file (as given, or `<preset>` / `<string>`).
    pub file: String,
    /// 1-based line of the rule's `-` item (0 when unknown).
    pub line: usize,
    /// 1-based index of the rule within its file.
    pub index: usize,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "rule {} ({}:{})", self.index, self.file, self.line)
        } else {
            write!(f, "rule {} ({})", self.index, self.file)
        }
    }
}

/// A rule with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule as written.
    pub spec: RuleSpec,
    /// Its file and line.
    pub origin: RuleOrigin,
}

/// A resolved recipe: `extends:` flattened, defaults applied, paths made absolute.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Optional name.
    pub name: Option<String>,
    /// Optional description.
    pub description: Option<String>,
    /// Default for unmatched tensors.
    pub base: Base,
    /// Fallback strategy.
    pub fallback: FallbackMode,
    /// Importance matrix file, resolved against the recipe's folder.
    pub imatrix: Option<PathBuf>,
    /// Metadata overrides (key → value, `None` = remove).
    pub metadata: BTreeMap<String, Option<MetaValue>>,
    /// Rules in match order (this file's first, then inherited ones).
    pub rules: Vec<Rule>,
    /// The files read, outermost first.
    pub sources: Vec<String>,
}

fn recipe_err(path: &str, line: usize, column: usize, msg: impl Into<String>) -> Error {
    Error::Recipe {
        path: path.to_string(),
        line,
        column,
        msg: msg.into(),
    }
}

fn yaml_err(path: &str, e: serde_yaml::Error) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    // serde_yaml appends " at line L column C" to its message; keep only the message.
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    if msg == "repetition limit exceeded" {
        msg = "YAML aliases expand to too many values (repetition limit exceeded)".into();
    } else if msg == "recursion limit exceeded" {
        msg = "YAML nested too deeply (recursion limit exceeded)".into();
    }
    recipe_err(path, line, column, msg)
}

/// Lines (1-based) of the items of the top-level `rules:` block list, in order.
/// Returns an empty list when the layout is not a plain block list (flow style etc.).
fn rule_lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut in_rules = false;
    let mut item_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if indent == 0 && !content.starts_with('-') {
            in_rules = content.starts_with("rules:") && content["rules:".len()..].trim().is_empty();
            item_indent = None;
            continue;
        }
        if !in_rules {
            continue;
        }
        if content.starts_with("- ") || content == "-" {
            match item_indent {
                None => {
                    item_indent = Some(indent);
                    out.push(i + 1);
                }
                Some(ind) if ind == indent => out.push(i + 1),
                _ => {}
            }
        }
    }
    out
}

impl RecipeFile {
    /// Parse recipe text. `label` names the file in errors.
    pub fn parse(text: &str, label: &str) -> Result<(RecipeFile, Vec<usize>)> {
        if text.trim().is_empty() {
            return Err(recipe_err(label, 1, 1, "empty recipe"));
        }
        let file: RecipeFile = serde_yaml::from_str(text).map_err(|e| yaml_err(label, e))?;
        let mut lines = rule_lines(text);
        if lines.len() != file.rules.len() {
            lines = vec![0; file.rules.len()];
        }
        if file.base.is_some() && file.preset.is_some() {
            return Err(recipe_err(
                label,
                1,
                1,
                "give either `base:` or `preset:`, not both",
            ));
        }
        for (rule, line) in file.rules.iter().zip(&lines) {
            if rule.offset.is_some() && rule.every.is_none() {
                return Err(recipe_err(label, *line, 1, "`offset:` needs `every:`"));
            }
            if rule.every == Some(0) {
                return Err(recipe_err(label, *line, 1, "`every:` must be at least 1"));
            }
        }
        Ok((file, lines))
    }

    /// Serialize as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|e| Error::msg(format!("serializing recipe: {e}")))
    }
}

impl Recipe {
    /// Load a recipe from `arg`: a path to a YAML file, or a preset name (`Q4_K_M`) when no
    /// such file exists.
    pub fn load(arg: &str) -> Result<Recipe> {
        let p = Path::new(arg);
        if !p.exists() {
            if let Some(preset) = Preset::from_name(arg) {
                return Ok(Recipe::from_base(Base::Preset(preset)));
            }
            return Err(Error::msg(format!(
                "recipe '{arg}': no such file, and not a preset ({})",
                preset_list()
            )));
        }
        Recipe::from_path(p)
    }

    /// A recipe with only a base (what `--type T` means).
    pub fn from_base(base: Base) -> Recipe {
        Recipe {
            name: Some(base.name().to_string()),
            description: None,
            base,
            fallback: FallbackMode::Llama,
            imatrix: None,
            metadata: BTreeMap::new(),
            rules: Vec::new(),
            sources: vec![format!("<{}>", base.name())],
        }
    }

    /// Load and resolve a recipe file (following `extends:`).
    pub fn from_path(path: &Path) -> Result<Recipe> {
        let mut stack = Vec::new();
        let layers = load_chain(path, &mut stack)?;
        resolve(layers)
    }

    /// Parse recipe text; `extends:` and `imatrix:` resolve against `base_dir`.
    pub fn from_str_in(text: &str, label: &str, base_dir: &Path) -> Result<Recipe> {
        let (file, lines) = RecipeFile::parse(text, label)?;
        let mut layers = vec![Layer {
            file,
            lines,
            label: label.to_string(),
            dir: base_dir.to_path_buf(),
        }];
        if let Some(ext) = layers[0].file.extends.clone() {
            let mut stack = Vec::new();
            layers.extend(load_extends(&ext, base_dir, label, &mut stack)?);
        }
        resolve(layers)
    }

    /// The normalised recipe as a file (no `extends:`, all rules inline, paths absolute).
    pub fn to_file(&self) -> RecipeFile {
        RecipeFile {
            name: self.name.clone(),
            description: self.description.clone(),
            extends: None,
            base: match self.base {
                Base::Type(_) => Some(self.base),
                Base::Preset(_) => None,
            },
            preset: match self.base {
                Base::Preset(p) => Some(PresetName(p)),
                Base::Type(_) => None,
            },
            fallback: Some(self.fallback),
            imatrix: self.imatrix.as_ref().map(|p| p.display().to_string()),
            metadata: self.metadata.clone(),
            rules: self.rules.iter().map(|r| r.spec.clone()).collect(),
        }
    }

    /// Canonical JSON of the normalised recipe (stable key order), for manifests and hashing.
    pub fn normalized_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_file()).unwrap_or(serde_json::Value::Null)
    }
}

struct Layer {
    file: RecipeFile,
    lines: Vec<usize>,
    label: String,
    dir: PathBuf,
}

fn load_chain(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Vec<Layer>> {
    let label = path.display().to_string();
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    if stack.contains(&canon) {
        let chain: Vec<String> = stack.iter().map(|p| p.display().to_string()).collect();
        return Err(recipe_err(
            &label,
            1,
            1,
            format!(
                "`extends:` cycle: {} → {}",
                chain.join(" → "),
                canon.display()
            ),
        ));
    }
    if stack.len() >= 32 {
        return Err(recipe_err(
            &label,
            1,
            1,
            "`extends:` chain deeper than 32 files",
        ));
    }
    stack.push(canon.clone());
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (file, lines) = RecipeFile::parse(&text, &label)?;
    let dir = canon.parent().map(Path::to_path_buf).unwrap_or_default();
    let ext = file.extends.clone();
    let mut out = vec![Layer {
        file,
        lines,
        label: label.clone(),
        dir: dir.clone(),
    }];
    if let Some(ext) = ext {
        out.extend(load_extends(&ext, &dir, &label, stack)?);
    }
    stack.pop();
    Ok(out)
}

fn load_extends(
    ext: &str,
    dir: &Path,
    label: &str,
    stack: &mut Vec<PathBuf>,
) -> Result<Vec<Layer>> {
    let p = dir.join(ext);
    if !p.exists() {
        if let Some(preset) = Preset::from_name(ext) {
            return Ok(vec![Layer {
                file: RecipeFile {
                    base: Some(Base::Preset(preset)),
                    ..Default::default()
                },
                lines: Vec::new(),
                label: format!("<{}>", preset.name()),
                dir: dir.to_path_buf(),
            }]);
        }
        return Err(recipe_err(
            label,
            1,
            1,
            format!(
                "`extends: {ext}`: no such file {} and no preset of that name",
                p.display()
            ),
        ));
    }
    load_chain(&p, stack)
}

fn resolve(layers: Vec<Layer>) -> Result<Recipe> {
    let mut name = None;
    let mut description = None;
    let mut base = None;
    let mut fallback = None;
    let mut imatrix = None;
    let mut metadata = BTreeMap::new();
    let mut rules = Vec::new();
    let mut sources = Vec::new();
    // Outermost (the file given) first: its settings win, its rules come first.
    for layer in &layers {
        let f = &layer.file;
        name = name.or_else(|| f.name.clone());
        description = description.or_else(|| f.description.clone());
        base = base.or(f.base).or(f.preset.map(|p| Base::Preset(p.0)));
        fallback = fallback.or(f.fallback);
        if imatrix.is_none() {
            imatrix = f.imatrix.as_ref().map(|p| layer.dir.join(p));
        }
        for (k, v) in &f.metadata {
            metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (i, spec) in f.rules.iter().enumerate() {
            rules.push(Rule {
                spec: spec.clone(),
                origin: RuleOrigin {
                    file: layer.label.clone(),
                    line: layer.lines.get(i).copied().unwrap_or(0),
                    index: i + 1,
                },
            });
        }
        sources.push(layer.label.clone());
    }
    let first = layers.first().map(|l| l.label.clone()).unwrap_or_default();
    let base = base.ok_or_else(|| {
        recipe_err(
            &first,
            1,
            1,
            format!(
                "the recipe needs `base:` (a type: {}; or a preset: {})",
                writable_list(),
                preset_list()
            ),
        )
    })?;
    Ok(Recipe {
        name,
        description,
        base,
        fallback: fallback.unwrap_or_default(),
        imatrix,
        metadata,
        rules,
        sources,
    })
}
