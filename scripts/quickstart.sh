#!/usr/bin/env bash
# README line 1: set up a fresh Debian machine, then run the main job:
# convert the real SmolLM2-135M model with recipes/hybrid.yaml, check its perplexity against the
# source, and benchmark it on the GPU (wgpu; lavapipe's software Vulkan when there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

model="$(bash scripts/fetch-model.sh)"
cargo build --release --locked
ggufq=target/release/ggufq
out=target/quickstart
mkdir -p "$out"

"$ggufq" inspect "$model"
"$ggufq" convert "$model" --recipe recipes/hybrid.yaml --allow-requantize -o "$out/smollm2-hybrid.gguf"
"$ggufq" inspect --layers "$out/smollm2-hybrid.gguf"
text=../shared/testdata/wikitext-2-raw-test.txt
if [ ! -f "$text" ]; then cat README.md docs/*.md > "$out/sample.txt"; text="$out/sample.txt"; fi
"$ggufq" ppl "$out/smollm2-hybrid.gguf" --kl-base "$model" -f "$text" -c 512 --chunks 8
# Short llama-bench-style run (a real GPU handles -p 512 -n 128 -r 5 in seconds; lavapipe is slow).
"$ggufq" bench "$out/smollm2-hybrid.gguf" -p 64 -n 16 -r 2
