//! Write a synthetic GGUF file shaped like a real model, for benchmarks.
//!
//! ```text
//! cargo run --release --no-default-features --example make_synthetic -- OUT.gguf [7b|135m] [--dense]
//! ```
//! `7b`: LLaMA-7B shapes (32 blocks, dim 4096, ffn 11008, vocab 32000; F16 weights, F32 norms,
//! ~13.5 GB) with a 32000-token tokenizer in the metadata. Tensor data are zeros and, unless
//! `--dense` is given, are written as holes (a sparse file) so the file costs almost no disk.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use ggufq::gguf::{Array, AtomicOutput, GgufWriter, TensorSpec, Value, ValueType};
use ggufq::quant::GgmlType;

/// Writes zero buffers as holes.
struct Sparse<'a> {
    f: &'a mut File,
    pos: u64,
    dense: bool,
}

impl Write for Sparse<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.dense && buf.len() >= 4096 && buf.iter().all(|&b| b == 0) {
            self.f.seek(SeekFrom::Current(buf.len() as i64))?;
        } else {
            self.f.write_all(buf)?;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.f.set_len(self.pos)?;
        self.f.flush()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: make_synthetic OUT.gguf [7b|135m] [--dense]"))?;
    let shape = args.get(1).map(String::as_str).unwrap_or("7b");
    let dense = args.iter().any(|a| a == "--dense");
    let (n_layer, dim, ffn, vocab, kv_dim) = match shape {
        "7b" => (32u64, 4096u64, 11008u64, 32000u64, 4096u64),
        "135m" => (30, 576, 1536, 49152, 192),
        s => anyhow::bail!("unknown shape {s} (7b or 135m)"),
    };
    let s = |x: &str| Value::String(x.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.name".to_string(), s(&format!("synthetic-{shape}"))),
        ("llama.context_length".to_string(), Value::U32(4096)),
        ("llama.embedding_length".to_string(), Value::U32(dim as u32)),
        ("llama.block_count".to_string(), Value::U32(n_layer as u32)),
        (
            "llama.feed_forward_length".to_string(),
            Value::U32(ffn as u32),
        ),
        ("llama.rope.dimension_count".to_string(), Value::U32(128)),
        (
            "llama.attention.head_count".to_string(),
            Value::U32((dim / 128) as u32),
        ),
        (
            "llama.attention.head_count_kv".to_string(),
            Value::U32((kv_dim / 128).max(1) as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".to_string(),
            Value::F32(1e-5),
        ),
        ("general.file_type".to_string(), Value::U32(1)),
        ("tokenizer.ggml.model".to_string(), s("llama")),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(Array::new(
                ValueType::String,
                (0..vocab).map(|i| s(&format!("▁tok{i}"))).collect(),
            )),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            Value::Array(Array::new(
                ValueType::F32,
                (0..vocab).map(|i| Value::F32(-(i as f32))).collect(),
            )),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(Array::new(
                ValueType::I32,
                (0..vocab).map(|_| Value::I32(1)).collect(),
            )),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    let f16 = GgmlType::F16;
    let f32 = GgmlType::F32;
    let mut specs = vec![TensorSpec::new("token_embd.weight", vec![dim, vocab], f16)?];
    for b in 0..n_layer {
        let t =
            |n: &str, dims: Vec<u64>, ty| TensorSpec::new(format!("blk.{b}.{n}.weight"), dims, ty);
        specs.push(t("attn_norm", vec![dim], f32)?);
        specs.push(t("attn_q", vec![dim, dim], f16)?);
        specs.push(t("attn_k", vec![dim, kv_dim], f16)?);
        specs.push(t("attn_v", vec![dim, kv_dim], f16)?);
        specs.push(t("attn_output", vec![dim, dim], f16)?);
        specs.push(t("ffn_norm", vec![dim], f32)?);
        specs.push(t("ffn_gate", vec![dim, ffn], f16)?);
        specs.push(t("ffn_up", vec![dim, ffn], f16)?);
        specs.push(t("ffn_down", vec![ffn, dim], f16)?);
    }
    specs.push(TensorSpec::new("output_norm.weight", vec![dim], f32)?);
    specs.push(TensorSpec::new("output.weight", vec![dim, vocab], f16)?);
    let max = specs.iter().map(|t| t.n_bytes).max().unwrap_or(0) as usize;
    let sizes: Vec<usize> = specs.iter().map(|t| t.n_bytes as usize).collect();
    let zeros = vec![0u8; max];

    let mut atomic = AtomicOutput::create(out)?;
    {
        let mut sink = Sparse {
            f: atomic.file_mut(),
            pos: 0,
            dense,
        };
        let mut w = GgufWriter::new(
            std::io::BufWriter::with_capacity(1 << 20, &mut sink),
            3,
            32,
            &meta,
            specs,
        )?;
        for n in sizes {
            w.write_tensor(&zeros[..n])?;
        }
        let mut buf = w.finish()?;
        buf.flush()?;
        drop(buf);
        sink.flush()?;
    }
    atomic.commit()?;
    println!("wrote {out}");
    Ok(())
}
