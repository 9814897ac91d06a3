#!/usr/bin/env bash
# The project's test command (README line 2; .ci/run runs exactly this).
# Installs what the tests need on Debian (lavapipe, a software Vulkan driver, so the WGSL shader
# tests run without a GPU), fetches the real SmolLM2 model into the cache, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "== installing mesa-vulkan-drivers (lavapipe) for the shader tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi

echo "== fetching SmolLM2 (real-model tests)"
GGUFQ_SMOLLM2="$(bash scripts/fetch-model.sh)"
export GGUFQ_SMOLLM2

echo "== cargo test"
cargo test --locked --no-fail-fast 2>&1
