//! Synthetic llama-shaped GGUF models with seeded random weights of real sizes, written one
//! tensor at a time (a 7B model never sits in memory). Tiny ones drive the runtime's tests.

use std::io::BufWriter;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::{Array, AtomicOutput, GgufFile, GgufWriter, TensorSpec, Value, ValueType};
use crate::quant::{quantize_row, GgmlType};

/// Dimensions of a synthetic llama model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthShape {
    /// Embedding width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// FFN width.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads.
    pub n_head_kv: usize,
    /// Vocabulary size (replaced by the tokenizer's when one is copied).
    pub n_vocab: usize,
    /// Training context written to metadata.
    pub n_ctx: usize,
}

impl SynthShape {
    /// Named shapes: `tiny` (tests), `1b` (TinyLlama), `7b` (Llama 2 7B), `8b` (Llama 3 8B).
    pub fn named(name: &str) -> Option<SynthShape> {
        let s = |n_embd, n_layer, n_ff, n_head, n_head_kv, n_vocab, n_ctx| SynthShape {
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            n_vocab,
            n_ctx,
        };
        Some(match name {
            "tiny" => s(256, 2, 512, 4, 2, 328, 1024),
            "1b" => s(2048, 22, 5632, 32, 4, 32000, 2048),
            "7b" => s(4096, 32, 11008, 32, 32, 32000, 4096),
            "8b" => s(4096, 32, 14336, 32, 8, 128256, 8192),
            _ => return None,
        })
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Dimensions.
    pub shape: SynthShape,
    /// Type of every 2-D weight (norms stay F32).
    pub ty: GgmlType,
    /// RNG seed: the same seed gives the same bytes.
    pub seed: u64,
    /// Copy `tokenizer.*` metadata (and its vocabulary size) from this GGUF; otherwise a small
    /// synthetic byte-level BPE vocabulary is written.
    pub tokenizer_from: Option<std::path::PathBuf>,
}

/// SplitMix64: a tiny, portable, seedable generator.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Approximately normal (sum of 4 uniforms), unit variance.
    fn normal(&mut self) -> f32 {
        let mut s = 0f32;
        for _ in 0..4 {
            s += (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 1.732_050_8
    }
}

/// A small byte-level BPE vocabulary: 2 control tokens, 256 bytes, 70 merges (328 tokens).
fn synthetic_tokenizer() -> Vec<(String, Value)> {
    let bc = crate::model::tokenizer::bytes_to_unicode();
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
    let mut types = vec![3i32, 3];
    for c in &bc {
        tokens.push(c.to_string());
        types.push(1);
    }
    let mut merges = Vec::new();
    let pairs = "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur";
    for p in pairs.split(' ') {
        let (a, b) = p.split_at(1);
        merges.push(format!("{a} {b}"));
        tokens.push(p.to_string());
        types.push(1);
    }
    let sp = bc[b' ' as usize];
    for c in "taoswcbpfmdhilnre".chars().take(70 - merges.len()) {
        merges.push(format!("{sp} {c}"));
        tokens.push(format!("{sp}{c}"));
        types.push(1);
    }
    let arr_s = |v: &[String]| {
        Value::Array(Array::new(
            ValueType::String,
            v.iter().map(|s| Value::String(s.clone())).collect(),
        ))
    };
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), arr_s(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::new(
                ValueType::I32,
                types.into_iter().map(Value::I32).collect(),
            )),
        ),
        ("tokenizer.ggml.merges".into(), arr_s(&merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ]
}

/// Write a synthetic model to `path` (atomically). Returns the shape actually written (the
/// vocabulary size follows the tokenizer).
pub fn write_model(path: &Path, opts: &SynthOptions) -> Result<SynthShape> {
    let mut shape = opts.shape;
    let tok_meta = match &opts.tokenizer_from {
        Some(src) => {
            let f = GgufFile::open(src)?;
            let meta: Vec<(String, Value)> = f
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .cloned()
                .collect();
            let n = f
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| {
                    Error::msg(format!(
                        "{}: no tokenizer.ggml.tokens to copy",
                        src.display()
                    ))
                })?;
            shape.n_vocab = n;
            meta
        }
        None => {
            let m = synthetic_tokenizer();
            shape.n_vocab = 328;
            m
        }
    };
    let s = shape;
    if s.n_head == 0 || s.n_head_kv == 0 || s.n_head % s.n_head_kv != 0 || s.n_embd % s.n_head != 0
    {
        return Err(Error::msg(format!(
            "synth: heads {} / kv heads {} do not divide embedding {}",
            s.n_head, s.n_head_kv, s.n_embd
        )));
    }
    let hd = s.n_embd / s.n_head;
    let kv = hd * s.n_head_kv;
    let u32v = |v: usize| Value::U32(v as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String(format!("ggufq-synth-{}", opts.ty.name())),
        ),
        ("llama.block_count".into(), u32v(s.n_layer)),
        ("llama.context_length".into(), u32v(s.n_ctx)),
        ("llama.embedding_length".into(), u32v(s.n_embd)),
        ("llama.feed_forward_length".into(), u32v(s.n_ff)),
        ("llama.attention.head_count".into(), u32v(s.n_head)),
        ("llama.attention.head_count_kv".into(), u32v(s.n_head_kv)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.dimension_count".into(), u32v(hd)),
        ("llama.vocab_size".into(), u32v(s.n_vocab)),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    meta.extend(tok_meta);
    // (name, dims, is_matrix)
    let mut list: Vec<(String, Vec<u64>, bool)> = vec![(
        "token_embd.weight".into(),
        vec![s.n_embd as u64, s.n_vocab as u64],
        true,
    )];
    for l in 0..s.n_layer {
        let e = s.n_embd as u64;
        let f = s.n_ff as u64;
        let kv = kv as u64;
        list.push((format!("blk.{l}.attn_norm.weight"), vec![e], false));
        list.push((format!("blk.{l}.attn_q.weight"), vec![e, e], true));
        list.push((format!("blk.{l}.attn_k.weight"), vec![e, kv], true));
        list.push((format!("blk.{l}.attn_v.weight"), vec![e, kv], true));
        list.push((format!("blk.{l}.attn_output.weight"), vec![e, e], true));
        list.push((format!("blk.{l}.ffn_norm.weight"), vec![e], false));
        list.push((format!("blk.{l}.ffn_gate.weight"), vec![e, f], true));
        list.push((format!("blk.{l}.ffn_up.weight"), vec![e, f], true));
        list.push((format!("blk.{l}.ffn_down.weight"), vec![f, e], true));
    }
    list.push(("output_norm.weight".into(), vec![s.n_embd as u64], false));
    list.push((
        "output.weight".into(),
        vec![s.n_embd as u64, s.n_vocab as u64],
        true,
    ));
    let mut specs = Vec::with_capacity(list.len());
    for (name, dims, mat) in &list {
        let ty = if *mat { opts.ty } else { GgmlType::F32 };
        if dims[0] % ty.block_size() != 0 {
            return Err(Error::Tensor {
                tensor: name.clone(),
                msg: format!(
                    "row length {} is not a multiple of the {} block size {}",
                    dims[0],
                    ty.name(),
                    ty.block_size()
                ),
            });
        }
        specs.push(TensorSpec::new(name.clone(), dims.clone(), ty)?);
    }
    let mut out = AtomicOutput::create(path)?;
    {
        let file = out.file_mut();
        let mut w = GgufWriter::new(BufWriter::new(file), 3, 32, &meta, specs.clone())?;
        for (ti, ((name, dims, mat), spec)) in list.iter().zip(&specs).enumerate() {
            let row = dims[0] as usize;
            let rows: usize = dims[1..].iter().product::<u64>() as usize;
            let ty = if *mat { opts.ty } else { GgmlType::F32 };
            let rb = spec.n_bytes as usize / rows.max(1);
            let mut data = vec![0u8; spec.n_bytes as usize];
            let std = if *mat {
                1.0 / (dims[0] as f32).sqrt()
            } else {
                0.0
            };
            let seed = opts.seed ^ ((ti as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            data.par_chunks_mut(rb)
                .enumerate()
                .try_for_each(|(r, dst)| -> Result<()> {
                    let mut rng =
                        Rng(seed.wrapping_add((r as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25)));
                    let vals: Vec<f32> = (0..row)
                        .map(|_| {
                            if *mat {
                                rng.normal() * std
                            } else {
                                1.0 + 0.1 * rng.normal()
                            }
                        })
                        .collect();
                    quantize_row(ty, &vals, None, dst).map_err(|e| Error::Tensor {
                        tensor: name.clone(),
                        msg: e.to_string(),
                    })
                })?;
            w.write_tensor(&data)?;
        }
        use std::io::Write;
        let mut bw = w.finish()?;
        bw.flush().map_err(|e| Error::io(path, e))?;
    }
    out.commit()?;
    Ok(shape)
}

/// Write a tiny model for tests: 2 layers, 256 wide, GQA 4/2 heads, weights of type `ty`,
/// with SmolLM2's tokenizer copied from `tokenizer_from` or a 328-token synthetic BPE vocab.
pub fn write_tiny_model(
    path: &Path,
    ty: GgmlType,
    seed: u64,
    tokenizer_from: Option<&Path>,
) -> Result<SynthShape> {
    let shape = SynthShape::named("tiny").ok_or_else(|| Error::msg("no tiny shape"))?;
    write_model(
        path,
        &SynthOptions {
            shape,
            ty,
            seed,
            tokenizer_from: tokenizer_from.map(Path::to_path_buf),
        },
    )
}
