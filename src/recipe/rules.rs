//! Rule matching: tensor kinds, layer numbers, name patterns and layer sets.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::schema::{RuleSpec, TensorKind};

/// A regular expression searched in tensor names (compiled when the recipe is parsed).
#[derive(Clone, Debug)]
pub struct NamePattern {
    src: String,
    re: regex::Regex,
}

impl NamePattern {
    /// Compile a pattern.
    pub fn new(src: &str) -> Result<Self, String> {
        regex::Regex::new(src)
            .map(|re| NamePattern {
                src: src.to_string(),
                re,
            })
            .map_err(|e| format!("invalid regex '{src}': {e}"))
    }
    /// True when the pattern occurs in `name`.
    pub fn is_match(&self, name: &str) -> bool {
        self.re.is_match(name)
    }
    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.src
    }
}

impl PartialEq for NamePattern {
    fn eq(&self, o: &Self) -> bool {
        self.src == o.src
    }
}

impl Serialize for NamePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.src)
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::schema::deserialize_parsed(d, "a regular expression", NamePattern::new)
    }
}

/// A glob matched against the whole tensor name (`*` and `?` do not cross nothing special:
/// tensor names have no path separators, so `*` matches any run of characters).
#[derive(Clone, Debug)]
pub struct GlobPattern {
    src: String,
    pat: glob::Pattern,
}

impl GlobPattern {
    /// Compile a glob.
    pub fn new(src: &str) -> Result<Self, String> {
        glob::Pattern::new(src)
            .map(|pat| GlobPattern {
                src: src.to_string(),
                pat,
            })
            .map_err(|e| format!("invalid glob '{src}': {e}"))
    }
    /// True when the whole name matches.
    pub fn is_match(&self, name: &str) -> bool {
        self.pat.matches(name)
    }
}

impl PartialEq for GlobPattern {
    fn eq(&self, o: &Self) -> bool {
        self.src == o.src
    }
}

impl Serialize for GlobPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.src)
    }
}

impl<'de> Deserialize<'de> for GlobPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::schema::deserialize_parsed(d, "a glob pattern", GlobPattern::new)
    }
}

/// A set of layer numbers: `"0-3,28-31"`, `"5"`, or a YAML list of numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSet {
    /// Inclusive ranges, sorted and merged.
    ranges: Vec<(u64, u64)>,
}

impl LayerSet {
    /// Parse `"0-3,28-31"`.
    pub fn parse(s: &str) -> Result<LayerSet, String> {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("empty item in layer set '{s}'"));
            }
            let num = |t: &str| {
                t.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("'{t}' is not a layer number in layer set '{s}'"))
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(format!("range {a}-{b} is backwards in layer set '{s}'"));
            }
            ranges.push((a, b));
        }
        Ok(LayerSet::from_ranges(ranges))
    }

    fn from_ranges(mut ranges: Vec<(u64, u64)>) -> LayerSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        LayerSet { ranges: merged }
    }

    /// True when `layer` is in the set.
    pub fn contains(&self, layer: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= layer && layer <= b)
    }
}

impl fmt::Display for LayerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for LayerSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for LayerSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = LayerSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a layer set like \"0-3,28-31\" or a list of layer numbers")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LayerSet, E> {
                LayerSet::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LayerSet, E> {
                Ok(LayerSet::from_ranges(vec![(v, v)]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LayerSet, E> {
                u64::try_from(v)
                    .map(|v| LayerSet::from_ranges(vec![(v, v)]))
                    .map_err(|_| E::custom("layer numbers cannot be negative"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<LayerSet, A::Error> {
                let mut r = Vec::new();
                while let Some(n) = seq.next_element::<u64>()? {
                    r.push((n, n));
                }
                Ok(LayerSet::from_ranges(r))
            }
        }
        d.deserialize_any(V)
    }
}

/// The concrete kind of a tensor, from its name.
pub fn tensor_kind(name: &str) -> TensorKind {
    use TensorKind::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    let checks: &[(&str, TensorKind)] = &[
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_gate_inp", FfnGateInp),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    for (pat, k) in checks {
        if name.contains(pat) {
            return *k;
        }
    }
    if name.contains("norm") {
        return Norm;
    }
    Other
}

/// The layer number of `blk.N.` tensors.
pub fn tensor_layer(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("blk.")?;
    let (num, _) = rest.split_once('.')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse().ok()
}

/// What a rule sees of a tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Whether ggufq/llama.cpp would normally keep it unchanged (1-D, norm, router...).
    pub protected: bool,
}

/// Result of testing a rule against a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleMatch {
    /// The rule applies.
    Yes,
    /// The selectors match, but the tensor is protected and the rule has no `force: true`.
    Protected,
    /// The selectors do not match.
    No,
}

impl RuleSpec {
    /// True when the rule can change protected tensors (`force: true`, or `kind: norm`).
    pub fn forces(&self) -> bool {
        self.force.unwrap_or(false)
            || self
                .kind
                .as_ref()
                .map(|k| k.to_vec().contains(&TensorKind::Norm))
                .unwrap_or(false)
    }

    /// Test the rule against a tensor; `n_layer` is the model's block count.
    pub fn matches(&self, t: TensorView<'_>, n_layer: u64) -> RuleMatch {
        if !self.selectors_match(t.name, n_layer) {
            return RuleMatch::No;
        }
        if t.protected && !self.forces() {
            return RuleMatch::Protected;
        }
        RuleMatch::Yes
    }

    fn selectors_match(&self, name: &str, n_layer: u64) -> bool {
        if let Some(names) = &self.name {
            if !names.to_vec().iter().any(|n| n == name) {
                return false;
            }
        }
        if let Some(re) = &self.regex {
            if !re.is_match(name) {
                return false;
            }
        }
        if let Some(g) = &self.glob {
            if !g.is_match(name) {
                return false;
            }
        }
        if let Some(kinds) = &self.kind {
            let k = tensor_kind(name);
            if !kinds.to_vec().iter().any(|s| s.covers(k)) {
                return false;
            }
        }
        let needs_layer = self.layers.is_some()
            || self.every.is_some()
            || self.first.is_some()
            || self.last.is_some();
        if needs_layer {
            let Some(layer) = tensor_layer(name) else {
                return false;
            };
            if let Some(set) = &self.layers {
                if !set.contains(layer) {
                    return false;
                }
            }
            if let Some(every) = self.every {
                let off = self.offset.unwrap_or(0);
                if layer < off || (layer - off) % every.max(1) != 0 {
                    return false;
                }
            }
            // first and last together mean "first or last".
            let in_first = self.first.map(|p| layer < p.count(n_layer));
            let in_last = self
                .last
                .map(|p| layer >= p.last_start(n_layer) && layer < n_layer);
            match (in_first, in_last) {
                (Some(a), Some(b)) if !(a || b) => return false,
                (Some(false), None) | (None, Some(false)) => return false,
                _ => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_sets() {
        let s = LayerSet::parse("0-3, 28-31,5").unwrap();
        assert!(s.contains(0) && s.contains(3) && s.contains(5) && s.contains(31));
        assert!(!s.contains(4) && !s.contains(27) && !s.contains(32));
        assert_eq!(s.to_string(), "0-3,5,28-31");
        assert!(LayerSet::parse("3-1").is_err());
        assert!(LayerSet::parse("a").is_err());
        assert!(LayerSet::parse("1,,2").is_err());
    }

    #[test]
    fn kinds_and_layers() {
        assert_eq!(tensor_kind("blk.3.attn_v.weight"), TensorKind::AttnV);
        assert_eq!(
            tensor_kind("blk.3.ffn_gate_inp.weight"),
            TensorKind::FfnGateInp
        );
        assert_eq!(
            tensor_kind("blk.3.ffn_gate_exps.weight"),
            TensorKind::FfnGate
        );
        assert_eq!(tensor_kind("blk.3.attn_norm.weight"), TensorKind::Norm);
        assert_eq!(tensor_kind("output_norm.weight"), TensorKind::Norm);
        assert_eq!(tensor_kind("rope_freqs.weight"), TensorKind::Other);
        assert_eq!(tensor_layer("blk.12.attn_q.weight"), Some(12));
        assert_eq!(tensor_layer("blk.x.attn_q.weight"), None);
        assert_eq!(tensor_layer("output.weight"), None);
        assert!(TensorKind::Attn.covers(TensorKind::AttnOutput));
        assert!(!TensorKind::Attn.covers(TensorKind::FfnUp));
    }
}
