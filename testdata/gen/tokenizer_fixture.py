#!/usr/bin/env python3
"""Build testdata/tokenizer_smollm2_wikitext.json from runs of llama.cpp's llama-tokenize
(an existing binary; this script does not build anything).

Usage: tokenizer_fixture.py --tokenize BIN --model SmolLM2.gguf --wikitext wiki.txt
                            --out OUT.json [--ids-out ids.txt]

* "file": llama-tokenize -f FILE --ids (reads the file byte for byte).
* "perplexity": the token list llama-perplexity -f FILE evaluates: common's -f handler drops
  one trailing '\n' before tokenizing; BOS is added only if the vocab says add_bos_token
  (SmolLM2: false, so no BOS). "with_bos" gives what a BOS-adding tool would see.
* "strings": short tricky strings, each passed on stdin with --no-escape (exact bytes),
  parse_special off (as in llama-perplexity): "ids"; llama-tokenize's own default
  (parse_special=true, no flag; --parse-special is an imatrix-only flag): "ids_parse_special".
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

STRINGS = [
    "Hello world",
    " Hello world",
    "Hello  world",
    "   ",
    "\n",
    "line1\nline2\n\nline4",
    "\r\n windows line\r\n",
    "I'm can't won't they'll we've you'd",
    "don't  DON'T Don'T",
    "12345 3.14159 1,000,000",
    "2026-11-23T17:48:30Z +1e-5",
    "café naïve résumé Æsir",
    "日本語のテキスト",
    "Привет мир",
    "emoji \U0001F917\U0001F680\U0001F44D\U0001F3FD",
    "\ttab\tseparated \t mixed",
    "def f(x):\n    return x**2\n",
    "<|im_start|>user",
    "a\u00a0b \uff46\uff55\uff4c\uff4c",
    " = = Robert Boulter = = \n",
]


def tokenize(bin_, model, data: bytes, path=None, special=False):
    sp = [] if special else ["--no-parse-special"]  # the tool defaults to parse_special=true
    if path is None:
        cmd = [bin_, "-m", model, "--stdin", "--no-escape", "--ids", "--log-disable"] + sp
        p = subprocess.run(cmd, input=data, capture_output=True, check=True)
    else:
        cmd = [bin_, "-m", model, "-f", path, "--no-escape", "--ids", "--log-disable"] + sp
        p = subprocess.run(cmd, capture_output=True, check=True)
    out = p.stdout.decode().strip()
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    body = line.strip()[1:-1].strip()
    return [int(x) for x in body.split(",")] if body else []


def summary(ids):
    joined = ",".join(map(str, ids)).encode()
    return {"count": len(ids), "sha256_ids_comma_joined": hashlib.sha256(joined).hexdigest(),
            "first_200": ids[:200], "last_200": ids[-200:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenize", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--wikitext", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ids-out")
    a = ap.parse_args()

    raw = open(a.wikitext, "rb").read()
    file_ids = tokenize(a.tokenize, a.model, b"", path=a.wikitext)
    ppl_text = raw[:-1] if raw.endswith(b"\n") else raw
    with tempfile.NamedTemporaryFile(delete=False) as tf:
        tf.write(ppl_text)
    try:
        ppl_ids = tokenize(a.tokenize, a.model, b"", path=tf.name)
    finally:
        os.unlink(tf.name)

    import gguf
    r = gguf.GGUFReader(a.model)
    f = r.fields
    add_bos = bool(f["tokenizer.ggml.add_bos_token"].contents()) if "tokenizer.ggml.add_bos_token" in f else None
    bos = int(f["tokenizer.ggml.bos_token_id"].contents())

    doc = {
        "_meta": {
            "model": os.path.basename(a.model),
            "text": os.path.basename(a.wikitext),
            "text_sha256": hashlib.sha256(raw).hexdigest(),
            "text_bytes": len(raw),
            "tool": "llama-tokenize (llama.cpp 0c1e57098, via llama-cpp-python 0.3.36)",
            "add_bos_token": add_bos,
            "bos_token_id": bos,
            "parse_special": False,
            "parse_special_note": "llama-perplexity tokenizes with parse_special=false; llama-tokenize defaults to true, so --no-parse-special is passed",
            "note": "sha256 is over the decimal ids joined by ',' (no spaces, no brackets)",
        },
        "file": dict(summary(file_ids), command="llama-tokenize -m MODEL -f TEXT --no-escape --no-parse-special --ids"),
        "perplexity": dict(summary(ppl_ids),
                           how="text minus one trailing '\\n' (common -f handler), no BOS because add_bos_token=false"),
        "perplexity_with_bos": dict(summary([bos] + ppl_ids), how="perplexity list with BOS prepended"),
        "strings": [{"text": s, "ids": tokenize(a.tokenize, a.model, s.encode()),
                     "ids_parse_special": tokenize(a.tokenize, a.model, s.encode(), special=True)}
                    for s in STRINGS],
    }
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    if a.ids_out:
        with open(a.ids_out, "w") as fh:
            fh.write("\n".join(map(str, file_ids)) + "\n")
        with open(a.ids_out.replace(".txt", "_perplexity.txt"), "w") as fh:
            fh.write("\n".join(map(str, ppl_ids)) + "\n")


if __name__ == "__main__":
    sys.exit(main())
