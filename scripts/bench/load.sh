#!/usr/bin/env bash
# The load row of docs/perf.md, side by side on this machine: LLaMA-2-7B Q4_0 + the f16 ViT
# (random weights at the real shapes) built from source tensors in memory (what a start from
# the three original files costs, minus reading them), then from a converted model file
# (page cache warm, and cold when the cache can be dropped), beside llama.cpp loading its own
# Q4_0 GGUF of a random LLaMA-2-7B (llama-cpp-python, the GGUF peers.sh makes).
#
#   PYTHON=/tmp/peers/bin/python scripts/bench/load.sh
#
# Needs ~25 GB of disk in $WORK and ~12 GB of memory; ~15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/minigpt-med}
OUT=${OUT:-bench-results}
WORK=${WORK:-/tmp/minigpt-med-peers}
THREADS=${THREADS:-2}
mkdir -p "$OUT" "$WORK"
file="$WORK/minigpt-med-7b-q4_0.gguf"
common=(--threads "$THREADS" bench --llm-dtype q4_0 --vit-dtype f16 --load-only --json)

# 1. From source tensors, quantized at load (the three-file path without its file reads).
"$BIN" "${common[@]}" --synthetic 7b | tee "$OUT/load_synthetic.json"
# 2. The converted file: written once (its load right after, cache warm, is timed too).
[ -f "$file" ] || "$BIN" "${common[@]}" --synthetic 7b --write-model "$file" | tee "$OUT/load_write.json"
ls -l "$file" | tee "$OUT/load_file_size.txt"
# 3. Warm cache, twice.
for i in 1 2; do
    "$BIN" "${common[@]}" --model "$file" | tee "$OUT/load_file_warm_$i.json"
done
# 4. Cold cache, where this machine lets us drop it.
if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    "$BIN" "${common[@]}" --model "$file" | tee "$OUT/load_file_cold.json"
else
    echo "cannot drop the page cache here (needs root): no cold figure" | tee "$OUT/load_file_cold.json"
fi
# 5. llama.cpp on its own Q4_0 GGUF of the same LLaMA shapes (warm: run twice, the second counts).
[ -f "$WORK/f16.gguf" ] || "$PY" scripts/bench/make_gguf.py "$WORK/f16.gguf"
[ -f "$WORK/q4_0.gguf" ] || "$PY" scripts/bench/llama_cpp_bench.py quantize "$WORK/f16.gguf" "$WORK/q4_0.gguf" q4_0 --threads "$THREADS"
for i in 1 2; do
    "$PY" scripts/bench/llama_cpp_bench.py run "$WORK/q4_0.gguf" --threads "$THREADS" --repeats 1 --prompt-tokens 8 --decode-tokens 2 \
        | tee "$OUT/load_llama_cpp_$i.json"
done
