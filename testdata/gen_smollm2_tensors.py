#!/usr/bin/env python3
"""Write smollm2_tensors.json: every tensor of SmolLM2-135M-Instruct.Q4_1.gguf as gguf-py reads it.

Run once (pip install gguf==0.19.0):
    python3 testdata/gen_smollm2_tensors.py ~/.cache/ggufq/SmolLM2-135M-Instruct.Q4_1.gguf > testdata/smollm2_tensors.json
Uses only gguf-py. `shape` is in ggml order (ne[0] first), as stored in the file; `offset` is
relative to the start of the data section; `data_offset` is absolute.
"""
import json
import sys

from gguf import GGUFReader

r = GGUFReader(sys.argv[1])
tensors = []
for t in r.tensors:
    tensors.append(
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "shape": [int(x) for x in t.shape],
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "offset": int(t.data_offset) - int(r.data_offset),
        }
    )
out = {
    "generator": "gguf-py GGUFReader",
    "file": sys.argv[1].rsplit("/", 1)[-1],
    "data_offset": int(r.data_offset),
    "alignment": int(r.alignment),
    "n_kv": len(r.fields),
    "keys": list(r.fields.keys()),
    "tensors": tensors,
}
json.dump(out, sys.stdout, indent=1)
sys.stdout.write("\n")
