#!/usr/bin/env python3
"""Collect the per-tensor types that llama-quantize chose, into a JSON fixture.

Usage:
  quantize_types.py OUT.json [--meta KEY=VALUE ...] [--spec SPEC.json]
                    [--gguf PRESET=FILE.gguf ...] [--log PRESET=quantize.log ...]

--gguf reads a quantized output with gguf-py (tensor order = file order).
--log  parses the per-tensor lines of a `llama-quantize [--dry-run]` log
       ("[  i/  n] name - [dims], type = f16, size = a MiB -> b MiB (q4_K)").
An existing OUT.json is updated (presets are replaced one by one).
Types are written with gguf-py's names (F32, F16, Q4_K, ...).
"""
import argparse
import json
import os
import re
import sys

LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[([^\]]*)\], type =\s*(\S+), size =(.*)$")
NEW = re.compile(r"->\s*[\d.]+\s*MiB\s*\((\S+)\)\s*$")


def norm(t):
    return t.upper()


def from_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)
    ft = r.fields.get("general.file_type")
    out = {"tensors": {t.name: t.tensor_type.name for t in r.tensors},
           "dims": {t.name: [int(x) for x in t.shape] for t in r.tensors}}
    if ft is not None:
        out["general.file_type"] = int(ft.contents())
    return out


def from_log(path):
    tensors, dims = {}, {}
    with open(path, errors="replace") as fh:
        for line in fh:
            m = LINE.match(line.strip())
            if not m:
                continue
            name, d, cur, rest = m.groups()
            n = NEW.search(rest)
            tensors[name] = norm(n.group(1) if n else cur)
            dd = [int(x) for x in d.split(",") if x.strip()]
            while len(dd) > 1 and dd[-1] == 1:
                dd.pop()
            dims[name] = dd
    if not tensors:
        raise SystemExit(f"{path}: no per-tensor lines found")
    return {"tensors": tensors, "dims": dims}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--meta", action="append", default=[])
    ap.add_argument("--spec")
    ap.add_argument("--gguf", action="append", default=[])
    ap.add_argument("--log", action="append", default=[])
    ap.add_argument("--no-dims", action="store_true", help="drop the per-preset dims map")
    a = ap.parse_args()
    doc = {}
    if os.path.exists(a.out):
        with open(a.out) as fh:
            doc = json.load(fh)
    meta = doc.setdefault("_meta", {})
    for kv in a.meta:
        k, v = kv.split("=", 1)
        meta[k] = v
    if a.spec:
        with open(a.spec) as fh:
            doc["_spec"] = json.load(fh)
    presets = doc.setdefault("presets", {})
    for item, fn in [(x, from_gguf) for x in a.gguf] + [(x, from_log) for x in a.log]:
        preset, path = item.split("=", 1)
        entry = fn(path)
        if a.no_dims:
            entry.pop("dims", None)
        presets[preset] = entry
    with open(a.out + ".tmp", "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    sys.exit(main())
