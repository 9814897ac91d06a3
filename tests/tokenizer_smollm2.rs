//! SmolLM2's tokenizer against llama.cpp's ids (fixture from llama-tokenize, see its `_meta`).
//! Needs the SmolLM2 GGUF (testutil::smollm2_path); without it the tests say so and pass.

use ggufq::model::Model;
use sha2::{Digest, Sha256};

fn fixture() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/tokenizer_smollm2_wikitext.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn tokenizer() -> Option<ggufq::model::tokenizer::Tokenizer> {
    let Some(p) = ggufq::testutil::smollm2_path() else {
        eprintln!("SmolLM2 not in the cache; skipping (see testutil::smollm2_path)");
        return None;
    };
    Some(
        Model::open(p)
            .expect("open SmolLM2")
            .tokenizer()
            .expect("tokenizer"),
    )
}

#[test]
fn strings_match_llama_tokenize() {
    let Some(tok) = tokenizer() else { return };
    let fx = fixture();
    let strings = fx["strings"].as_array().expect("strings");
    assert!(strings.len() >= 10);
    for s in strings {
        let text = s["text"].as_str().expect("text");
        // `ids` come from llama-tokenize --no-parse-special (what llama-perplexity sees);
        // `ids_parse_special` from its default, where "<|im_start|>" becomes id 1.
        assert_eq!(
            tok.encode(text, false, false).unwrap(),
            ids(&s["ids"]),
            "text {text:?}"
        );
        if let Some(ps) = s.get("ids_parse_special") {
            assert_eq!(
                tok.encode(text, false, true).unwrap(),
                ids(ps),
                "parse_special {text:?}"
            );
        }
        let back = tok.decode(&ids(&s["ids"]));
        if !text.contains("<|") {
            assert_eq!(back, text);
        }
    }
}

#[test]
fn whole_wikitext_matches_llama_perplexity_tokens() {
    let Some(tok) = tokenizer() else { return };
    let fx = fixture();
    let mut text =
        std::fs::read_to_string(ggufq::testutil::testdata_dir().join("wikitext-2-raw-test.txt"))
            .unwrap();
    text.pop(); // llama-perplexity drops the trailing newline of -f files
    let got = tok.encode(&text, true, false).unwrap();
    let want = &fx["perplexity"];
    assert_eq!(got[..200], ids(&want["first_200"])[..]);
    assert_eq!(got[got.len() - 200..], ids(&want["last_200"])[..]);
    assert_eq!(got.len() as u64, want["count"].as_u64().unwrap());
    let joined: Vec<String> = got.iter().map(|i| i.to_string()).collect();
    let h = Sha256::digest(joined.join(",").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, want["sha256_ids_comma_joined"].as_str().unwrap());
}
