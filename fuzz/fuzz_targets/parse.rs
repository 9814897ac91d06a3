//! Fuzz the GGUF reader and everything `inspect` and `convert --dry-run` do with a header:
//! any input must give Ok or an error, never a panic or a huge allocation.
//!
//! Run: `cargo +nightly fuzz run -s none parse -- -max_total_time=600 -rss_limit_mb=512`
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

mod alloc_guard;
#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use ggufq::gguf::GgufFile;
use ggufq::inspect;
use ggufq::recipe::{build_plan, Base, PlanOptions, Preset, Recipe};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let parsed = GgufFile::parse(data, path);
    let Ok(f) = GgufFile::from_bytes(data.to_vec(), path) else {
        assert!(parsed.is_err(), "parse and from_bytes disagree");
        return;
    };
    let h = parsed.expect("parse and from_bytes disagree");
    assert_eq!(h.tensors, f.tensors);
    assert!(h.data_offset % h.alignment == 0);

    // Every tensor of a file that opens lies inside the data section, and no two overlap.
    let mut spans = Vec::new();
    for t in &f.tensors {
        let d = f.tensor_data(t).expect("validated tensor has no data");
        assert_eq!(Some(d.len() as u64), t.n_bytes);
        assert!(f.tensor(&t.name).is_some());
        spans.push((t.offset, t.offset + d.len() as u64));
        let _ = (t.n_elements(), t.n_rows(), t.row_len(), t.type_name());
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping tensors accepted");
    }

    // Metadata access and everything `inspect` prints.
    for (k, v) in &f.metadata {
        assert!(f.get(k).is_some());
        let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_str(), v.as_bool());
        let _ = inspect::render_value(v, false);
        let _ = inspect::type_label(v);
    }
    let _ = f.architecture();
    let _ = inspect::summary_text(&f);
    let _ = inspect::metadata_text(&f, false);
    let all: Vec<_> = f.tensors.iter().collect();
    let _ = inspect::tensors_text(&f, &all, None);
    let _ = inspect::layers_text(&all);
    let _ = inspect::inspect_json(&f, &Default::default());

    // What `convert --dry-run` plans from the header (no tensor data is read).
    let model = ggufq::convert::model_info(&f);
    let descs = ggufq::convert::tensor_descs(&f);
    for preset in [Preset::from_name("Q4_K_M"), Preset::from_name("Q2_K")]
        .into_iter()
        .flatten()
    {
        let recipe = Recipe::from_base(Base::Preset(preset));
        if let Ok(plan) = build_plan(&recipe, &model, &descs, PlanOptions::default()) {
            let _ = plan.render();
            let _ = plan.to_json();
            let _ = ggufq::convert::output_metadata(&f, &recipe, 15);
        }
    }
});
