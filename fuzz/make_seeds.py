#!/usr/bin/env python3
"""Write the small seed corpus under fuzz/corpus/ (run from fuzz/; needs gguf-py).

parse:   tiny GGUF files (every metadata value type, nested arrays, several tensor types)
imatrix: first byte 0 = legacy .dat, 1 = GGUF imatrix (see fuzz_targets/imatrix.rs)
recipe:  copied from recipes/*.yaml plus a few hand-written edge cases
"""
import os, shutil, struct, glob, tempfile
import numpy as np
import gguf

def write(path, fill):
    w = gguf.GGUFWriter(path, "llama")
    fill(w)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

def model(w):
    w.add_name("seed model")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(64)
    w.add_uint8("t.u8", 7); w.add_int8("t.i8", -7); w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700); w.add_int32("t.i32", -70000); w.add_float32("t.f32", 1.5)
    w.add_bool("t.bool", True); w.add_uint64("t.u64", 1 << 40); w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 2.25)
    w.add_array("t.strs", ["a", "bc", ""])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(32, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((2, 32), dtype=np.float16))
        q8 = np.zeros((2, 34), dtype=np.uint8)
        w.add_tensor(f"blk.{i}.ffn_down.weight", q8,
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    qk = np.zeros((1, 144), dtype=np.uint8)
    w.add_tensor("output.weight", qk, raw_dtype=gguf.GGMLQuantizationType.Q4_K)

def tiny(w):
    w.add_tensor("x", np.array([1.0, 2.0], dtype=np.float32))

def imat(w):
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["wiki.txt"])
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 512)
    for n, ne in [("blk.0.attn_q.weight", 8), ("blk.0.ffn_down.weight", 4)]:
        w.add_tensor(n + ".in_sum2", np.arange(1, ne + 1, dtype=np.float32))
        w.add_tensor(n + ".counts", np.array([2.0], dtype=np.float32))

def legacy(entries, trailer=None):
    b = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        nb = name.encode()
        b += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, len(vals))
        b += struct.pack(f"<{len(vals)}f", *vals)
    if trailer:
        b += struct.pack("<i", trailer[0]) + struct.pack("<i", len(trailer[1])) + trailer[1].encode()
    return b

with tempfile.TemporaryDirectory() as d:
    for name, fill in [("model", model), ("tiny", tiny)]:
        p = os.path.join(d, name)
        write(p, fill)
        shutil.copy(p, f"corpus/parse/{name}")
    p = os.path.join(d, "imat")
    write(p, imat)
    data = open(p, "rb").read()
    open("corpus/parse/imatrix", "wb").write(data)
    open("corpus/imatrix/gguf", "wb").write(b"\x01" + data)
open("corpus/imatrix/legacy", "wb").write(b"\x00" + legacy(
    [("blk.0.attn_q.weight", 4, [4.0, 8.0, 1.0]), ("output.weight", 0, [3.0])], (10, "wiki.txt")))
open("corpus/imatrix/legacy-short", "wb").write(b"\x00" + legacy([("a", 1, [1.0])]))
for f in glob.glob("../recipes/*.yaml"):
    shutil.copy(f, "corpus/recipe/" + os.path.basename(f).replace(".yaml", ""))
seeds = {
    "anchors": "base: Q4_K\nrules:\n  - &r {kind: attn_v, type: Q6_K}\n  - *r\n",
    "layers": "preset: Q4_K_M\nfallback: best\nrules:\n  - {layers: \"0-1,3\", every: 2, offset: 1, type: Q8_0}\n  - {first: 0.25, last: 1, kind: [ffn_down, attn], type: Q5_K}\n  - {regex: 'blk\\.\\d+\\.ffn_(up|gate)', force: true, type: keep}\n  - {glob: 'blk.*.attn_norm.weight', type: F16}\n",
    "meta": "name: x\nbase: Q5_K_M\nmetadata:\n  general.name: y\n  general.url: null\n  a.b: 3\n  c: -1.5e3\n  d: true\nimatrix: im.dat\n",
}
for k, v in seeds.items():
    open(f"corpus/recipe/{k}", "w").write(v)
