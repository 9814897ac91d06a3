#!/usr/bin/env bash
# Tokens/s of `ggufq ppl` vs llama.cpp's `llama-perplexity`, measured ALTERNATELY in the same
# run (A B A B ...) so that load from other processes hits both tools alike; prints every run
# and the medians. It does not build llama.cpp: point LLAMA_PERPLEXITY at an existing binary.
#
#   LLAMA_PERPLEXITY=/path/to/llama-perplexity \
#   MODEL=smollm2-Q4_K_M.gguf TEXT=wikitext-2-raw-test.txt \
#   benches/ppl_vs_llama_perplexity.sh
#
# Environment (defaults in brackets):
#   LLAMA_PERPLEXITY  peer binary (required)
#   GGUFQ             ggufq binary [$CARGO_TARGET_DIR or target]/release/ggufq
#   MODEL             GGUF model (required)
#   TEXT              text file [../shared/testdata/wikitext-2-raw-test.txt]
#   CTX [512]  CHUNKS [4]  THREADS [2]  ROUNDS [3]
#
# Speeds compared: ggufq's "tokens/s" line (chunk evaluation only) and llama-perplexity's
# "seconds per pass" line, which times its first pass of min(CHUNKS, 2048/CTX) chunks (one
# batch of 2048 tokens): with the default CHUNKS=4 both figures cover the same 2048 tokens.
# Wall seconds of each process (model load and tokenization included) are printed too.
set -euo pipefail

: "${LLAMA_PERPLEXITY:?set LLAMA_PERPLEXITY to the llama-perplexity binary}"
: "${MODEL:?set MODEL to a GGUF file}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GGUFQ="${GGUFQ:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ggufq}"
TEXT="${TEXT:-$ROOT/../shared/testdata/wikitext-2-raw-test.txt}"
CTX="${CTX:-512}"
CHUNKS="${CHUNKS:-4}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"

for f in "$LLAMA_PERPLEXITY" "$GGUFQ"; do
  [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }
done
for f in "$MODEL" "$TEXT"; do
  [ -f "$f" ] || { echo "no such file: $f" >&2; exit 2; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model: $MODEL  ctx $CTX  chunks $CHUNKS  threads $THREADS  rounds $ROUNDS"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$TMP/g.tps"; : > "$TMP/l.tps"; : > "$TMP/g.ppl"; : > "$TMP/l.ppl"
for r in $(seq 1 "$ROUNDS"); do
  s=$(date +%s.%N)
  "$GGUFQ" ppl "$MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t "$THREADS" --quiet \
    > "$TMP/g.out" 2> "$TMP/g.err"
  gw=$(echo "$(date +%s.%N) - $s" | bc)
  gt=$(grep -o '[0-9.]* tokens/s' "$TMP/g.err" | awk '{print $1}')
  gp=$(grep -o 'PPL = [0-9.]*' "$TMP/g.out" | awk '{print $3}')
  s=$(date +%s.%N)
  "$LLAMA_PERPLEXITY" -m "$MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t "$THREADS" \
    > "$TMP/l.out" 2> "$TMP/l.err"
  lw=$(echo "$(date +%s.%N) - $s" | bc)
  per_pass=$(( 2048 / CTX < CHUNKS ? 2048 / CTX : CHUNKS ))
  lt=$(grep -o '[0-9.]* seconds per pass' "$TMP/l.err" | awk -v t=$((per_pass * CTX)) '{printf "%.1f", t / $1}')
  lp=$(cat "$TMP/l.out" "$TMP/l.err" | grep -o 'PPL = [0-9.]*' | awk '{print $3}')
  echo "round $r: ggufq $gt tok/s (wall ${gw}s, PPL $gp) | llama-perplexity $lt tok/s (wall ${lw}s, PPL $lp) | load $(cut -d' ' -f1 /proc/loadavg)"
  echo "$gt" >> "$TMP/g.tps"; echo "$lt" >> "$TMP/l.tps"
done
gm=$(median < "$TMP/g.tps"); lm=$(median < "$TMP/l.tps")
echo "median tokens/s: ggufq $gm, llama-perplexity $lm, ratio ggufq/llama $(echo "scale=3; $gm / $lm" | bc)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
