//! Comparison of a plan's per-tensor types with a llama-quantize type table committed under
//! testdata/ (tests/recipe_llama_fixtures.rs, tests/presets_gemma3.rs; included with `#[path]`).
#![allow(dead_code)]

use ggufq::recipe::Plan;
use serde_json::Value;

/// One line per tensor whose planned type differs from `want` (`{tensor: type}`), prefixed by
/// `label` (model and preset); a tensor missing from `want` counts as a difference.
pub fn type_mismatches(
    label: &str,
    plan: &Plan,
    want: &serde_json::Map<String, Value>,
) -> Vec<String> {
    plan.entries
        .iter()
        .filter_map(|e| {
            let got = e.to.map(|t| t.name().to_string()).unwrap_or_default();
            let exp = want
                .get(&e.name)
                .and_then(|v| v.as_str())
                .unwrap_or("<missing>");
            (got != exp).then(|| format!("{label} {}: ggufq {got}, llama-quantize {exp}", e.name))
        })
        .collect()
}
