#!/usr/bin/env bash
# Wall time and peak memory of `ggufq convert` against llama-quantize, same source, same preset,
# same machine, same run (alternating, warm page cache, median of N runs).
#
# Usage: benches/convert_vs_llama_quantize.sh SRC.gguf PRESET [RUNS]
#   PRESET is given to ggufq as --recipe and to llama-quantize as its type, unless
#   LLAMA_TYPE=T and LLAMA_FLAGS="..." say otherwise (a recipe file needs its llama-quantize
#   equivalent, e.g. recipes/hybrid.yaml = LLAMA_FLAGS="--tensor-type attn=q5_k" LLAMA_TYPE=Q2_K).
#   GGUFQ=path/to/ggufq (default target/release/ggufq)
#   LLAMA_QUANTIZE=path/to/llama-quantize (default /work/peer/bin/llama-quantize; build it
#     outside the repo from the llama-cpp-python 0.3.36 sdist, see docs/BENCHMARKS.md)
#   THREADS=N (default: nproc), passed to both tools.
#   GGUFQ_FLAGS="--no-manifest" (default empty): extra convert flags.
#   HASH_CACHE=cold|warm (default cold): cold passes --no-hash-cache, so every run hashes the
#     whole source for the manifest; warm points GGUFQ_CACHE_DIR at a fresh directory that the
#     untimed warm-up run fills, so the timed runs take the source sha256 from the cache (the
#     batch case: one source, many recipes). Without a manifest the cache plays no part.
# Prints one Markdown table row per tool and the ratio ggufq / llama-quantize.
set -euo pipefail
SRC=$1
PRESET=$2
RUNS=${3:-3}
GGUFQ=${GGUFQ:-target/release/ggufq}
LQ=${LLAMA_QUANTIZE:-/work/peer/bin/llama-quantize}
THREADS=${THREADS:-$(nproc)}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/convbench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
HASH_CACHE=${HASH_CACHE:-cold}
case $HASH_CACHE in
  cold) CACHE_FLAG=--no-hash-cache ;;
  warm) CACHE_FLAG= ; export GGUFQ_CACHE_DIR="$TMP/cache" ;;
  *) echo "HASH_CACHE must be cold or warm" >&2; exit 2 ;;
esac

# One timed run: prints "wall_seconds max_rss_kib cpu_seconds" (cpu = user + system).
timed() {
  /usr/bin/time -f "%e %M %U %S" -o "$TMP/time" "$@" >"$TMP/out" 2>&1 || { cat "$TMP/out" >&2; exit 1; }
  awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$TMP/time"
  return 0
}
EXPECT_FROM=
run_ggufq() {
  timed "$GGUFQ" convert "$SRC" --recipe "$PRESET" -o "$TMP/g.gguf" --allow-requantize --no-progress --threads "$THREADS" $CACHE_FLAG ${GGUFQ_FLAGS:-}
  # A timed warm run must really have taken the source hash from the cache (and a cold one not).
  if [ -n "$EXPECT_FROM" ] && [ -f "$TMP/g.gguf.manifest.json" ] &&
    ! grep -q "\"sha256_from\": \"$EXPECT_FROM\"" "$TMP/g.gguf.manifest.json"; then
    echo "expected source.sha256_from = $EXPECT_FROM in the manifest" >&2
    exit 1
  fi
  rm -f "$TMP/g.gguf" "$TMP/g.gguf.manifest.json"
}
run_llama() { timed "$LQ" --allow-requantize ${LLAMA_FLAGS:-} "$SRC" "$TMP/l.gguf" "${LLAMA_TYPE:-$PRESET}" "$THREADS"; rm -f "$TMP/l.gguf"; }

cat "$SRC" >/dev/null # warm the page cache
run_ggufq >/dev/null
run_llama >/dev/null
if [ "$HASH_CACHE" = warm ]; then EXPECT_FROM=cache; else EXPECT_FROM=computed; fi
: >"$TMP/g"
: >"$TMP/l"
for _ in $(seq "$RUNS"); do
  run_ggufq >>"$TMP/g"
  run_llama >>"$TMP/l"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
gw=$(cut -d' ' -f1 "$TMP/g" | median); gm=$(cut -d' ' -f2 "$TMP/g" | median)
lw=$(cut -d' ' -f1 "$TMP/l" | median); lm=$(cut -d' ' -f2 "$TMP/l" | median)
gc=$(cut -d' ' -f3 "$TMP/g" | median); lc=$(cut -d' ' -f3 "$TMP/l" | median)
echo "| tool | wall s (median of $RUNS) | CPU s (user+sys, median) | peak RSS MiB |"
echo "| --- | ---: | ---: | ---: |"
echo "| ggufq convert --recipe $PRESET ${GGUFQ_FLAGS:-} (hash cache $HASH_CACHE) | $gw | $gc | $((gm / 1024)) |"
echo "| llama-quantize ${LLAMA_FLAGS:-}${LLAMA_FLAGS:+ }${LLAMA_TYPE:-$PRESET} | $lw | $lc | $((lm / 1024)) |"
awk -v a="$gw" -v b="$lw" -v c="$gm" -v d="$lm" -v e="$gc" -v f="$lc" 'BEGIN {printf "ratio ggufq/llama-quantize: wall %.2f, CPU %.2f, peak RSS %.2f\n", a/b, e/f, c/d}'
echo "all runs (wall s, RSS KiB, CPU s): ggufq: $(tr '\n' ';' <"$TMP/g") llama: $(tr '\n' ';' <"$TMP/l")"
