#!/usr/bin/env python3
"""Write a synthetic llama-architecture GGUF (F16 weights) with gguf-py, for checking
which tensor types llama-quantize picks per preset on a Llama-2/3-7B-like shape.

Usage: make_synth_llama.py OUT.gguf [--spec-json SPEC.json]

The weights are a tiled pseudo-random normal(0, 0.02) pattern (type choice in
llama-quantize does not depend on the values). The tensor list is written in the order
that convert_hf_to_gguf.py produces for llama (token_embd, then per layer, then
output_norm, output) -- see SPEC below, which is also stored in the fixture JSON so a
test can rebuild the exact tensor list.
"""
import argparse
import json
import sys

import numpy as np
import gguf

SPEC = {
    "arch": "llama",
    "n_layer": 32,
    "n_embd": 4096,
    "n_head": 32,
    "n_head_kv": 8,
    "n_ff": 1024,
    "n_vocab": 32000,
    "n_ctx_train": 4096,
    "rope_dim": 128,
    "rms_eps": 1e-5,
    "tied_embeddings": False,
    "weight_type": "F16",
    "norm_type": "F32",
}


def tensor_list(s):
    """[(name, ggml_dims, type)] with ggml dims (dims[0] = row length)."""
    e, v, f = s["n_embd"], s["n_vocab"], s["n_ff"]
    kv = e // s["n_head"] * s["n_head_kv"]
    out = [("token_embd.weight", [e, v], "F16")]
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", [e], "F32"),
            (p + "ffn_down.weight", [f, e], "F16"),
            (p + "ffn_gate.weight", [e, f], "F16"),
            (p + "ffn_up.weight", [e, f], "F16"),
            (p + "ffn_norm.weight", [e], "F32"),
            (p + "attn_k.weight", [e, kv], "F16"),
            (p + "attn_output.weight", [e, e], "F16"),
            (p + "attn_q.weight", [e, e], "F16"),
            (p + "attn_v.weight", [e, kv], "F16"),
        ]
    out += [("output_norm.weight", [e], "F32"), ("output.weight", [e, v], "F16")]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--spec-json")
    a = ap.parse_args()
    s = SPEC
    tensors = tensor_list(s)
    if a.spec_json:
        with open(a.spec_json, "w") as fh:
            json.dump({"spec": s, "tensors": [[n, d, t] for n, d, t in tensors]}, fh, indent=1)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("synth-llama-32L-4096")
    w.add_context_length(s["n_ctx_train"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_dimension_count(s["rope_dim"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(s["rms_eps"])
    w.add_vocab_size(s["n_vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # minimal SPM-style vocab so that tools which load the vocab accept the file
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"\u2581t{i}" for i in range(s["n_vocab"] - len(toks))]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([-float(i) for i in range(len(toks))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(toks) - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    for name, dims, ty in tensors:
        n = int(np.prod(dims))
        dt = np.float16 if ty == "F16" else np.float32
        w.add_tensor_info(name, list(reversed(dims)), np.dtype(dt), n * np.dtype(dt).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    rng = np.random.default_rng(42)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16)
    off = 0
    for name, dims, ty in tensors:
        n = int(np.prod(dims))
        if ty == "F32":
            arr = np.ones(n, dtype=np.float32)
        else:
            reps = -(-(n + off % 4093) // pool.size)
            arr = np.tile(pool, reps)[off % 4093: off % 4093 + n] if reps > 1 else pool[off % 4093: off % 4093 + n]
            off += 7919
        w.write_tensor_data(np.ascontiguousarray(arr).reshape(list(reversed(dims))))
    w.close()


if __name__ == "__main__":
    sys.exit(main())
