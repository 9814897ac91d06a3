//! Tokenizers built from a GGUF's own vocabulary, reproducing llama.cpp's token ids:
//! GPT-2 byte-level BPE (`tokenizer.ggml.model = gpt2`, pre-tokenizer chosen by
//! `tokenizer.ggml.pre`) and SentencePiece (`tokenizer.ggml.model = llama`).

use std::collections::HashMap;
use std::sync::Mutex;

use fancy_regex::Regex;

use crate::error::{Error, Result};
use crate::model::file::ModelFile;

/// Token attribute from `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary token (1).
    Normal,
    /// Unknown token (2).
    Unknown,
    /// Control token such as `<s>` (3): only matched in text when special parsing is on.
    Control,
    /// User-defined token (4): always matched verbatim in text.
    UserDefined,
    /// Unused slot (5).
    Unused,
    /// Byte token `<0xXX>` (6).
    Byte,
}

impl TokenType {
    fn from_i64(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// The tokenizer algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// GPT-2 byte-level BPE with the named pre-tokenizer.
    Bpe {
        /// `tokenizer.ggml.pre` (e.g. "smollm", "llama-bpe", "qwen2", "default").
        pre: String,
    },
    /// SentencePiece (scores, byte fallback, `▁` for spaces).
    Spm,
}

/// A tokenizer built from GGUF metadata.
pub struct Tokenizer {
    kind: Kind,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    to_id: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    regexes: Vec<Regex>,
    ignore_merges: bool,
    /// BOS token id.
    pub bos: Option<u32>,
    /// EOS token id.
    pub eos: Option<u32>,
    unk: Option<u32>,
    /// Whether encoding with `add_special` prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    byte_enc: [char; 256],
    byte_dec: HashMap<char, u8>,
    special: Vec<u32>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// GPT-2's reversible byte → printable character table (also used by `synth` to spell its
/// byte tokens).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

// Pre-tokenizer regexes, as llama.cpp applies them (each splits the fragments of the previous).
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex list and `ignore_merges` flag for a `tokenizer.ggml.pre` value.
fn pre_regexes(pre: &str) -> Result<(Vec<&'static str>, bool)> {
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            (vec![LLAMA3_RE], pre != "dbrx" && pre != "smaug-bpe")
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (vec![QWEN2_RE], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_RE], false)
        }
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" | "trillion" => (vec![GPT2_RE], false),
        "default" | "" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"],
            false,
        ),
        other => {
            return Err(Error::msg(format!(
                "unsupported tokenizer.ggml.pre '{other}' (supported: smollm, llama3/llama-bpe, qwen2, gpt2, default, and their aliases)"
            )))
        }
    })
}

impl Tokenizer {
    /// Build the tokenizer described by a GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_file(f: &ModelFile) -> Result<Tokenizer> {
        let p = f.path().display().to_string();
        let model = f.get_str("tokenizer.ggml.model").ok_or_else(|| {
            Error::msg(format!("{p}: missing metadata key 'tokenizer.ggml.model'"))
        })?;
        let tokens: Vec<String> = f
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| {
                Error::msg(format!("{p}: missing metadata key 'tokenizer.ggml.tokens'"))
            })?
            .into_iter()
            .map(String::from)
            .collect();
        let n = tokens.len();
        let types: Vec<TokenType> = match f.get_i64_array("tokenizer.ggml.token_type") {
            Some(v) if v.len() == n => v.into_iter().map(TokenType::from_i64).collect(),
            Some(v) => {
                return Err(Error::msg(format!(
                    "{p}: tokenizer.ggml.token_type has {} entries, tokens has {n}",
                    v.len()
                )))
            }
            None => vec![TokenType::Normal; n],
        };
        let scores = match f.get_f32_array("tokenizer.ggml.scores") {
            Some(v) if v.len() == n => v,
            _ => vec![0.0; n],
        };
        let merges = f.get_str_array("tokenizer.ggml.merges").unwrap_or_default();
        let id = |k: &str| f.get_u64(k).map(|v| v as u32).filter(|&v| (v as usize) < n);
        let (kind, def_bos, def_eos, def_unk, def_add_bos, def_space) = match model {
            "gpt2" => (
                Kind::Bpe {
                    pre: f
                        .get_str("tokenizer.ggml.pre")
                        .unwrap_or("default")
                        .to_string(),
                },
                Some(11),
                Some(11),
                None,
                false,
                false,
            ),
            "llama" => (Kind::Spm, Some(1), Some(2), Some(0), true, true),
            other => {
                return Err(Error::msg(format!(
                    "{p}: unsupported tokenizer.ggml.model '{other}' (supported: gpt2, llama)"
                )))
            }
        };
        let mut t = Tokenizer::build(kind, tokens, types, scores, &merges)?;
        t.bos = id("tokenizer.ggml.bos_token_id").or(def_bos.filter(|&v| (v as usize) < n));
        t.eos = id("tokenizer.ggml.eos_token_id").or(def_eos.filter(|&v| (v as usize) < n));
        t.unk = id("tokenizer.ggml.unknown_token_id").or(def_unk);
        t.add_bos = f
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(def_add_bos);
        t.add_eos = f.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        t.add_space_prefix = f
            .get_bool("tokenizer.ggml.add_space_prefix")
            .unwrap_or(def_space);
        Ok(t)
    }

    /// Build from parts (BOS/EOS unset, no BOS added); used by `from_file` and tests.
    pub fn build(
        kind: Kind,
        tokens: Vec<String>,
        types: Vec<TokenType>,
        scores: Vec<f32>,
        merges: &[&str],
    ) -> Result<Tokenizer> {
        let mut to_id = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            to_id.entry(t.clone()).or_insert(i as u32);
        }
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| Error::msg(format!("tokenizer merge {i} '{m}' has no space")))?;
            ranks
                .entry((a.to_string(), b.to_string()))
                .or_insert(i as u32);
        }
        let (regexes, ignore_merges) = match &kind {
            Kind::Bpe { pre } => {
                let (res, im) = pre_regexes(pre)?;
                let compiled = res
                    .iter()
                    .map(|r| {
                        Regex::new(r).map_err(|e| Error::msg(format!("pre-tokenizer regex: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (compiled, im)
            }
            Kind::Spm => (Vec::new(), false),
        };
        let byte_enc = bytes_to_unicode();
        let byte_dec = byte_enc
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut special: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        // Longest first, as llama.cpp partitions.
        special.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });
        Ok(Tokenizer {
            kind,
            tokens,
            types,
            scores,
            to_id,
            ranks,
            regexes,
            ignore_merges,
            bos: None,
            eos: None,
            unk: None,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
            byte_enc,
            byte_dec,
            special,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The tokenizer algorithm.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// Encode text like llama.cpp's `llama_tokenize(text, add_special, parse_special)`:
    /// `add_special` adds BOS/EOS where the vocabulary asks for them; `parse_special` lets
    /// control tokens written in the text (e.g. `<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        // Partition the text on special tokens.
        enum Frag<'a> {
            Text(&'a str),
            Tok(u32),
        }
        let mut frags = vec![Frag::Text(text)];
        for &sid in &self.special {
            // llama.cpp matches control and unknown tokens (e.g. "<unk>") only when parsing
            // special tokens; user-defined ones always.
            if matches!(
                self.types[sid as usize],
                TokenType::Control | TokenType::Unknown
            ) && !parse_special
            {
                continue;
            }
            let s = self.tokens[sid as usize].as_str();
            let mut next = Vec::with_capacity(frags.len());
            for fr in frags {
                match fr {
                    Frag::Text(t) if t.contains(s) => {
                        let mut rest = t;
                        while let Some(pos) = rest.find(s) {
                            if pos > 0 {
                                next.push(Frag::Text(&rest[..pos]));
                            }
                            next.push(Frag::Tok(sid));
                            rest = &rest[pos + s.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Frag::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        let mut first_text = true;
        for fr in frags {
            match fr {
                Frag::Tok(id) => out.push(id),
                Frag::Text(t) => match self.kind {
                    Kind::Bpe { .. } => self.bpe_text(t, &mut out)?,
                    Kind::Spm => {
                        // llama.cpp adds the space prefix only to the first text fragment.
                        let prefix = self.add_space_prefix && first_text;
                        self.spm_text(t, prefix, &mut out);
                    }
                },
            }
            first_text = false;
        }
        if add_special && self.add_eos {
            if let Some(e) = self.eos {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Split with the pre-tokenizer regexes (keeping unmatched gaps as pieces).
    fn pre_split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let mut pieces: Vec<&str> = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m =
                        m.map_err(|e| Error::msg(format!("pre-tokenizer regex failed: {e}")))?;
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }

    fn bpe_text(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        for word in self.pre_split(text)? {
            if let Ok(cache) = self.cache.lock() {
                if let Some(ids) = cache.get(word) {
                    out.extend_from_slice(ids);
                    continue;
                }
            }
            let ids = self.bpe_word(word);
            out.extend_from_slice(&ids);
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() < 1 << 20 {
                    cache.insert(word.to_string(), ids);
                }
            }
        }
        Ok(())
    }

    fn bpe_word(&self, word: &str) -> Vec<u32> {
        let enc: String = word.bytes().map(|b| self.byte_enc[b as usize]).collect();
        if self.ignore_merges {
            if let Some(&id) = self.to_id.get(&enc) {
                return vec![id];
            }
        }
        let mut syms: Vec<String> = enc.chars().map(String::from).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&r) = self.ranks.get(&(syms[i].clone(), syms[i + 1].clone())) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        let mut ids = Vec::with_capacity(syms.len());
        for s in &syms {
            if let Some(&id) = self.to_id.get(s) {
                ids.push(id);
            } else {
                // llama.cpp falls back to one token per character, then to UNK.
                for c in s.chars() {
                    let mut buf = [0u8; 4];
                    match self.to_id.get(&*c.encode_utf8(&mut buf)) {
                        Some(&id) => ids.push(id),
                        None => ids.extend(self.unk),
                    }
                }
            }
        }
        ids
    }

    fn spm_text(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if space_prefix {
            s.push('\u{2581}');
        }
        for c in text.chars() {
            s.push(if c == ' ' { '\u{2581}' } else { c });
        }
        // Symbols: one per UTF-8 character, merged best-scoring pair first (ties: leftmost),
        // as llama.cpp's SPM session does, with a heap of candidate bigrams and a linked list
        // of live symbols (stale heap entries are skipped), so long texts stay O(n log n).
        let syms = self.spm_merge(&s);
        for (a, b) in syms {
            let piece = &s[a..b];
            match self.to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        let name = format!("<0x{byte:02X}>");
                        match self.to_id.get(&name) {
                            Some(&id) => out.push(id),
                            None => out.extend(self.unk),
                        }
                    }
                }
            }
        }
    }

    /// Merge the characters of `s` into SentencePiece symbols; returns their byte ranges.
    fn spm_merge(&self, s: &str) -> Vec<(usize, usize)> {
        use std::cmp::Ordering;
        use std::collections::BinaryHeap;

        /// A candidate merge of symbol `left` with its right neighbour; `len` is the byte
        /// length of the merged text when queued (a mismatch later means it is stale).
        struct Bigram {
            score: f32,
            left: usize,
            right: usize,
            len: usize,
        }
        impl PartialEq for Bigram {
            fn eq(&self, o: &Self) -> bool {
                self.cmp(o) == Ordering::Equal
            }
        }
        impl Eq for Bigram {}
        impl PartialOrd for Bigram {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Bigram {
            // Max-heap: higher score first, then the smaller left index.
            fn cmp(&self, o: &Self) -> Ordering {
                self.score
                    .total_cmp(&o.score)
                    .then_with(|| o.left.cmp(&self.left))
            }
        }
        // (start, end, prev, next); `end == start` marks a symbol merged away.
        let mut sym: Vec<(usize, usize, Option<usize>, Option<usize>)> = s
            .char_indices()
            .enumerate()
            .map(|(i, (b, c))| (b, b + c.len_utf8(), i.checked_sub(1), Some(i + 1)))
            .collect();
        if let Some(last) = sym.last_mut() {
            last.3 = None;
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>,
                       sym: &[(usize, usize, Option<usize>, Option<usize>)],
                       l: Option<usize>,
                       r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (sym[l].0, sym[r].1);
            if let Some(&id) = self.to_id.get(&s[a..b]) {
                heap.push(Bigram {
                    score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                    left: l,
                    right: r,
                    len: b - a,
                });
            }
        };
        for i in 1..sym.len() {
            try_add(&mut heap, &sym, Some(i - 1), Some(i));
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (bg.left, bg.right);
            let (ls, rs) = (sym[l], sym[r]);
            // Stale: one side was merged away or grew since this bigram was queued.
            if ls.0 == ls.1 || rs.0 == rs.1 || ls.3 != Some(r) || rs.1 - ls.0 != bg.len {
                continue;
            }
            sym[l].1 = rs.1;
            sym[l].3 = rs.3;
            sym[r].1 = sym[r].0;
            if let Some(nx) = rs.3 {
                sym[nx].2 = Some(l);
            }
            try_add(&mut heap, &sym, ls.2, Some(l));
            try_add(&mut heap, &sym, Some(l), sym[l].3);
        }
        let mut out = Vec::new();
        let mut cur = if sym.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            out.push((sym[i].0, sym[i].1));
            cur = sym[i].3;
        }
        out
    }

    /// The text of one token (byte-level decoding for BPE, `▁` → space for SentencePiece).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match (&self.kind, self.types[id as usize]) {
            (_, TokenType::Control) => Vec::new(),
            (Kind::Spm, TokenType::Byte) => {
                u8::from_str_radix(t.trim_start_matches("<0x").trim_end_matches('>'), 16)
                    .map(|b| vec![b])
                    .unwrap_or_default()
            }
            (Kind::Spm, _) => t.replace('\u{2581}', " ").into_bytes(),
            (Kind::Bpe { .. }, TokenType::UserDefined) => t.clone().into_bytes(),
            (Kind::Bpe { .. }, _) => {
                let mut v = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match self.byte_dec.get(&c) {
                        Some(&b) => v.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            v.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                v
            }
        }
    }

    /// Decode ids to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_bpe(pre: &str) -> Tokenizer {
        let enc = bytes_to_unicode();
        let mut tokens: Vec<String> = (0..256).map(|b| enc[b].to_string()).collect();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|end|>".into());
        let mut types = vec![TokenType::Normal; tokens.len()];
        *types.last_mut().unwrap() = TokenType::Control;
        let n = tokens.len();
        Tokenizer::build(
            Kind::Bpe { pre: pre.into() },
            tokens,
            types,
            vec![0.0; n],
            &merges,
        )
        .unwrap()
    }

    #[test]
    fn bpe_merges_and_roundtrip() {
        let t = toy_bpe("gpt2");
        let ids = t.encode("hello wo", false, false).unwrap();
        // "hello" merges fully; " wo" → "Ġwo".
        assert_eq!(ids, vec![259, 261]);
        assert_eq!(t.decode(&ids), "hello wo");
        let s = "naïve 123 tests\n\n  x";
        assert_eq!(t.decode(&t.encode(s, false, false).unwrap()), s);
    }

    #[test]
    fn special_tokens_only_when_parsing() {
        let t = toy_bpe("gpt2");
        let with = t.encode("a<|end|>", false, true).unwrap();
        let a = t.encode("a", false, false).unwrap();
        assert_eq!(with, vec![a[0], 262]);
        let without = t.encode("a<|end|>", false, false).unwrap();
        assert!(without.len() > 2);
        assert!(!without.contains(&262));
    }

    #[test]
    fn smollm_splits_digits() {
        let t = toy_bpe("smollm");
        let p = t.pre_split("ab 123, x").unwrap();
        assert_eq!(p, vec!["ab", " ", "1", "2", "3", ",", " x"]);
        let l3 = toy_bpe("llama-bpe");
        assert_eq!(
            l3.pre_split("ab 12345").unwrap(),
            vec!["ab", " ", "123", "45"]
        );
    }

    #[test]
    fn unknown_pre_is_an_error() {
        let r = Tokenizer::build(
            Kind::Bpe { pre: "nope".into() },
            vec![],
            vec![],
            vec![],
            &[],
        );
        assert!(r.err().unwrap().to_string().contains("nope"));
    }

    #[test]
    fn spm_merges_by_score_with_byte_fallback() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
        }
        for p in ["\u{2581}", "h", "i", "\u{2581}h", "\u{2581}hi"] {
            tokens.push(p.into());
        }
        let n = tokens.len();
        let mut types = vec![TokenType::Normal; n];
        types[0] = TokenType::Unknown;
        types[1] = TokenType::Control;
        types[2] = TokenType::Control;
        for ty in types.iter_mut().take(259).skip(3) {
            *ty = TokenType::Byte;
        }
        let mut scores = vec![0.0; n];
        scores[n - 2] = -1.0;
        scores[n - 1] = -0.5;
        let mut t = Tokenizer::build(Kind::Spm, tokens, types, scores, &[]).unwrap();
        t.add_space_prefix = true;
        t.add_bos = true;
        t.bos = Some(1);
        let ids = t.encode("hi\u{e9}", true, false).unwrap();
        // BOS, "▁hi", then é as two byte tokens 0xC3 0xA9.
        assert_eq!(ids, vec![1, (n - 1) as u32, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&ids), " hi\u{e9}");
    }

    /// The plain greedy SentencePiece merge (best score first, leftmost on ties), O(n²).
    fn naive_spm(t: &Tokenizer, s: &str) -> Vec<(usize, usize)> {
        let mut syms: Vec<(usize, usize)> = s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&id) = t.to_id.get(&s[syms[i].0..syms[i + 1].1]) {
                    let sc = t.scores[id as usize];
                    if best.is_none_or(|(bs, _)| sc > bs) {
                        best = Some((sc, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            syms[i].1 = syms[i + 1].1;
            syms.remove(i + 1);
        }
        syms
    }

    #[test]
    fn spm_heap_merge_equals_greedy_merge() {
        // A vocabulary of every 1-4 letter string over {a, b, c, ▁} with pseudo-random
        // scores, some of them tied, so merges compete and reorder.
        let alpha = ['a', 'b', 'c', '\u{2581}'];
        let mut tokens = vec!["<unk>".to_string()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &frontier {
                for c in alpha {
                    let mut q = p.clone();
                    q.push(c);
                    next.push(q);
                }
            }
            tokens.extend(next.iter().cloned());
            frontier = next;
        }
        let mut x = 12345u64;
        let mut rnd = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        // Drop a third of the longer pieces so some merges are impossible.
        tokens.retain(|t| t.chars().count() < 2 || rnd() % 3 != 0);
        let n = tokens.len();
        let scores: Vec<f32> = (0..n).map(|_| -((rnd() % 20) as f32)).collect();
        let mut types = vec![TokenType::Normal; n];
        types[0] = TokenType::Unknown;
        let t = Tokenizer::build(Kind::Spm, tokens, types, scores, &[]).unwrap();
        for len in [0, 1, 2, 5, 17, 64, 301] {
            for _ in 0..20 {
                let s: String = (0..len).map(|_| alpha[(rnd() % 4) as usize]).collect();
                assert_eq!(t.spm_merge(&s), naive_spm(&t, &s), "text {s:?}");
            }
        }
    }
}
