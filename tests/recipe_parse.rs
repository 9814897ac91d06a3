//! Recipe parsing: errors with file:line:column, unknown keys and names, extends, round trip.

use std::path::Path;

use ggufq::error::Error;
use ggufq::quant::GgmlType;
use ggufq::recipe::{Base, FallbackMode, Preset, Recipe, RecipeFile, Target};

fn parse(text: &str) -> Result<Recipe, Error> {
    Recipe::from_str_in(text, "r.yaml", Path::new("/nonexistent"))
}

fn err_at(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(Error::Recipe {
            line,
            column,
            msg,
            path,
        }) => {
            assert_eq!(path, "r.yaml");
            (line, column, msg)
        }
        other => panic!("expected a recipe error, got {other:?}"),
    }
}

#[test]
fn full_recipe_parses() {
    let r = parse(
        "name: demo\nbase: Q4_K\nfallback: best\nimatrix: im.dat\nmetadata:\n  general.name: Demo\n  general.url: null\n  demo.count: 3\nrules:\n  - kind: [attn_v, ffn_down]\n    layers: 0-3,28-31\n    type: Q6_K\n  - glob: 'blk.*.attn_q.weight'\n    every: 3\n    offset: 1\n    type: q5_k\n  - regex: 'norm'\n    force: true\n    type: F16\n  - name: output.weight\n    type: keep\n",
    )
    .unwrap();
    assert_eq!(r.name.as_deref(), Some("demo"));
    assert_eq!(r.base, Base::Type(GgmlType::Q4_K));
    assert_eq!(r.fallback, FallbackMode::Best);
    assert_eq!(r.imatrix.as_deref(), Some(Path::new("/nonexistent/im.dat")));
    assert_eq!(r.rules.len(), 4);
    assert_eq!(r.rules[0].origin.line, 10);
    assert_eq!(r.rules[1].origin.line, 13);
    assert_eq!(r.rules[3].origin.line, 20);
    assert_eq!(r.rules[1].spec.ty, Target::Type(GgmlType::Q5_K));
    assert_eq!(r.rules[3].spec.ty, Target::Keep);
    assert_eq!(r.metadata.len(), 3);
    assert!(r.metadata["general.url"].is_none());
}

#[test]
fn unknown_key_is_rejected_with_location() {
    let (line, col, msg) = err_at("base: Q4_K\nrules:\n  - kind: attn_q\n    tpye: Q5_K\n");
    assert_eq!(line, 4, "{msg}");
    assert!(col >= 5, "{col}");
    assert!(msg.contains("unknown field `tpye`"), "{msg}");
}

#[test]
fn unknown_top_level_key() {
    let (line, _, msg) = err_at("base: Q4_K\nfalback: llama\n");
    assert_eq!(line, 2);
    assert!(msg.contains("falback"), "{msg}");
}

#[test]
fn unknown_type_lists_valid_ones() {
    let (line, col, msg) = err_at("base: Q4_K\nrules:\n  - kind: attn_q\n    type: Q4_X\n");
    assert_eq!((line, col), (4, 11), "{msg}");
    assert!(msg.contains("unknown type 'Q4_X'"), "{msg}");
    assert!(
        msg.contains("Q6_K") && msg.contains("BF16") && msg.contains("keep"),
        "{msg}"
    );
}

#[test]
fn unwritable_type_is_explained() {
    let (_, _, msg) = err_at("base: IQ2_XXS\n");
    assert!(msg.contains("IQ2_XXS"), "{msg}");
    assert!(msg.contains("Q4_K_M"), "lists presets: {msg}");
}

#[test]
fn bad_regex_glob_layers_kind() {
    let (l, _, m) = err_at("base: Q4_K\nrules:\n  - regex: 'blk.(\\d+'\n    type: Q5_K\n");
    assert_eq!(l, 3);
    assert!(m.contains("invalid regex"), "{m}");
    let (l, _, m) = err_at("base: Q4_K\nrules:\n  - glob: 'blk.[.weight'\n    type: Q5_K\n");
    assert_eq!(l, 3);
    assert!(m.contains("invalid glob"), "{m}");
    let (l, _, m) = err_at("base: Q4_K\nrules:\n  - layers: 5-2\n    type: Q5_K\n");
    assert_eq!(l, 3);
    assert!(m.contains("backwards"), "{m}");
    let (l, _, m) = err_at("base: Q4_K\nrules:\n  - kind: attn_z\n    type: Q5_K\n");
    assert_eq!(l, 3);
    assert!(m.contains("attn_z") || m.contains("variant"), "{m}");
    let (_, _, m) = err_at("base: Q4_K\nrules:\n  - first: 1.5\n    type: Q5_K\n");
    assert!(m.contains("not in (0, 1]"), "{m}");
    let (l, _, m) =
        err_at("base: Q4_K\nrules:\n  - kind: attn_q\n  - kind: attn_k\n    type: Q5_K\n");
    assert_eq!(l, 3, "{m}");
    assert!(m.contains("missing field `type`"), "{m}");
}

#[test]
fn semantic_errors() {
    let (_, _, m) = err_at("base: Q4_K\npreset: Q4_K_M\n");
    assert!(m.contains("either"), "{m}");
    let (l, _, m) = err_at("base: Q4_K\nrules:\n  - kind: attn_q\n    type: Q5_K\n  - kind: attn_k\n    offset: 2\n    type: Q5_K\n");
    assert_eq!(l, 5);
    assert!(m.contains("offset"), "{m}");
    let (_, _, m) = err_at("rules:\n  - kind: attn_q\n    type: Q5_K\n");
    assert!(m.contains("needs `base:`"), "{m}");
    let (_, _, m) = err_at("\n\n");
    assert!(m.contains("empty"), "{m}");
    let (_, _, m) = err_at("base: [1, 2\n");
    assert!(!m.is_empty());
}

#[test]
fn presets_by_name() {
    let r = parse("preset: q4_k_m\n").unwrap();
    assert_eq!(r.base, Base::Preset(Preset::Q4_K_M));
    let r = parse("base: Q4_K_M\n").unwrap();
    assert_eq!(r.base, Base::Preset(Preset::Q4_K_M));
    let r = Recipe::load("Q3_K_S").unwrap();
    assert_eq!(r.base, Base::Preset(Preset::Q3_K_S));
    let (_, _, m) = err_at("preset: Q4_K_X\n");
    assert!(m.contains("Q5_K_M"), "{m}");
}

#[test]
fn extends_merges_and_detects_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("parent.yaml"),
        "base: Q2_K\nfallback: best\nmetadata:\n  general.name: parent\n  a.b: 1\nrules:\n  - kind: attn_v\n    type: Q6_K\n",
    )
    .unwrap();
    std::fs::create_dir(p.join("sub")).unwrap();
    std::fs::write(
        p.join("sub/child.yaml"),
        "extends: ../parent.yaml\nmetadata:\n  general.name: child\nrules:\n  - kind: attn_q\n    type: Q5_K\n",
    )
    .unwrap();
    let r = Recipe::from_path(&p.join("sub/child.yaml")).unwrap();
    assert_eq!(r.base, Base::Type(GgmlType::Q2_K));
    assert_eq!(r.fallback, FallbackMode::Best);
    assert_eq!(r.rules.len(), 2);
    assert_eq!(
        r.rules[0].spec.ty,
        Target::Type(GgmlType::Q5_K),
        "child's rules first"
    );
    assert!(r.rules[1].origin.file.ends_with("parent.yaml"));
    assert_eq!(r.rules[1].origin.line, 7);
    assert_eq!(r.sources.len(), 2);
    let name = r.metadata["general.name"].clone();
    assert_eq!(format!("{name:?}"), "Some(Str(\"child\"))");
    assert!(r.metadata.contains_key("a.b"));

    std::fs::write(p.join("a.yaml"), "extends: b.yaml\nbase: Q4_K\n").unwrap();
    std::fs::write(p.join("b.yaml"), "extends: a.yaml\n").unwrap();
    let e = Recipe::from_path(&p.join("a.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle"), "{e}");

    std::fs::write(p.join("self.yaml"), "extends: self.yaml\nbase: Q4_K\n").unwrap();
    let e = Recipe::from_path(&p.join("self.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle"), "{e}");

    std::fs::write(p.join("missing.yaml"), "extends: nope.yaml\n").unwrap();
    let e = Recipe::from_path(&p.join("missing.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.yaml"), "{e}");

    std::fs::write(
        p.join("preset.yaml"),
        "extends: Q4_K_M\nrules:\n  - kind: output\n    type: Q8_0\n",
    )
    .unwrap();
    let r = Recipe::from_path(&p.join("preset.yaml")).unwrap();
    assert_eq!(r.base, Base::Preset(Preset::Q4_K_M));

    // An error inside a parent names the parent file.
    std::fs::write(p.join("badparent.yaml"), "base: Q4_K\nrules: 3\n").unwrap();
    std::fs::write(p.join("badchild.yaml"), "extends: badparent.yaml\n").unwrap();
    let e = Recipe::from_path(&p.join("badchild.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("badparent.yaml:2:"), "{e}");
}

#[test]
fn normalised_recipe_round_trips() {
    let r = parse(
        "base: Q2_K\nmetadata:\n  general.name: x\n  n: -3\n  f: 0.5\n  b: true\nrules:\n  - kind: attn\n    layers: [3, 1, 2, 7]\n    type: Q5_K\n  - regex: 'ffn_(up|gate)'\n    last: 0.25\n    first: 2\n    type: keep\n",
    )
    .unwrap();
    let yaml = r.to_file().to_yaml().unwrap();
    let again = Recipe::from_str_in(&yaml, "again.yaml", Path::new("/nonexistent")).unwrap();
    assert_eq!(r.to_file(), again.to_file(), "{yaml}");
    assert_eq!(r.normalized_json(), again.normalized_json());
    assert!(yaml.contains("layers: 1-3,7"), "{yaml}");
    let f: RecipeFile = RecipeFile::parse(&yaml, "x").unwrap().0;
    assert!(f.extends.is_none());
}

#[test]
fn shipped_recipes_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("yaml") {
            Recipe::from_path(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
    let h = Recipe::from_path(&dir.join("hybrid.yaml")).unwrap();
    assert_eq!(h.base, Base::Preset(ggufq::recipe::Preset::Q2_K));
    assert_eq!(h.fallback, FallbackMode::Llama);
    let p = Recipe::from_path(&dir.join("hybrid-pure.yaml")).unwrap();
    assert_eq!(p.base, Base::Type(GgmlType::Q2_K));
}
