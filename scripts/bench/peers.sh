#!/usr/bin/env bash
# One side-by-side run on this machine: minigpt-med's `bench --synthetic 7b` for Q4_0, Q8_0 and
# Q4_K beside llama.cpp (llama-cpp-python) on Q4_0, Q8_0 and Q4_K_M GGUFs of a random LLaMA-2-7B,
# and PyTorch's eager fp32 EVA ViT-g forward. Results: one JSON file per run in $OUT.
#
#   python3 -m venv /tmp/peers && /tmp/peers/bin/pip install llama-cpp-python gguf numpy torch
#   cargo build -p minigpt-med-cli
#   PYTHON=/tmp/peers/bin/python scripts/bench/peers.sh
#
# Needs ~30 GB of disk in $WORK (the F16 GGUF and its three quantizations), ~13 GB of memory,
# and an otherwise idle machine (~45 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/minigpt-med}
OUT=${OUT:-bench-results}
WORK=${WORK:-/tmp/minigpt-med-peers}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-2}
# Which llama.cpp GGUF runs beside which of our formats; TORCH=0 skips the PyTorch ViT.
PAIRS=${PAIRS:-q4_0:q4_0 q8_0:q8_0 q4_k_m:q4k}
TORCH=${TORCH:-1}
# Our KV cache's dtype: f16 by default here, as llama.cpp's own default (type_k = type_v = f16),
# so both read the same cache bytes per step; KV=f32 gives our exact default instead.
KV=${KV:-f16}
mkdir -p "$OUT" "$WORK"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "our KV cache: $KV"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
    echo "minigpt-med: $(git rev-parse --short HEAD) $("$BIN" --version)"
    "$PY" -c 'import llama_cpp; print("llama-cpp-python:", llama_cpp.__version__)'
    if [ "$TORCH" = 1 ]; then "$PY" -c 'import torch; print("torch:", torch.__version__)'; fi
    rustc --version
} | tee "$OUT/versions.txt"

[ -f "$WORK/f16.gguf" ] || "$PY" scripts/bench/make_gguf.py "$WORK/f16.gguf"
for kind in q4_0 q8_0 q4_k_m; do
    [ -f "$WORK/$kind.gguf" ] || "$PY" scripts/bench/llama_cpp_bench.py quantize "$WORK/f16.gguf" "$WORK/$kind.gguf" "$kind" --threads "$THREADS"
done

if [ "$TORCH" = 1 ]; then
    "$PY" scripts/bench/torch_vit_bench.py --threads "$THREADS" --repeats "$REPEATS" | tee "$OUT/torch_vit.json"
fi
for pair in $PAIRS; do
    "$PY" scripts/bench/llama_cpp_bench.py run "$WORK/${pair%%:*}.gguf" --threads "$THREADS" --repeats "$REPEATS" \
        | tee "$OUT/llama_cpp_${pair%%:*}.json"
    "$BIN" --threads "$THREADS" bench --synthetic 7b --llm-dtype "${pair##*:}" --kv-dtype "$KV" --repeats "$REPEATS" --decode-tokens 64 --end-to-end --json \
        | tee "$OUT/minigpt_med_${pair##*:}.json"
done
"$BIN" --threads "$THREADS" bench --kernels --repeats 3 --json | tee "$OUT/kernels.json"
