#!/usr/bin/env bash
# The GPU check of issue 18: on a machine with an NVIDIA GPU, the CUDA build's answers on the
# bundled tiny model against the PyTorch reference, and `bench --synthetic 7b` on the GPU in
# bf16, f16, Q8_0 and Q4_0 (load, encode, prefill, decode at B = 1 and 8, memory). Everything
# it measures lands as JSON (and one Markdown table) under $OUT.
#
# Two halves, because a GPU machine here has no network and no Rust toolchain:
#
#   here (no GPU):   MGM_CUDA=13.0 scripts/build-cuda.sh 90     # ~21 min on 2 cores
#                    scripts/device-check.sh --pack             # -> target/cuda/carry (~MBs)
#   on the GPU:      OUT=/some/dir scripts/device-check.sh      # ~5 minutes on an H200
#
# With the device tool: run(command="bash scripts/device-check.sh", carry=["target/cuda/carry"],
# timeout_s=540). The CUDA libraries (runtime, cuBLAS, cuRAND, NVRTC) are found where that
# machine has them (its Python's nvidia-* wheels, /usr/local/cuda); the driver is the machine's.
#
# Env: MGM_CUDA (13.0), CAP (90): which build --pack takes; OUT (default device-check-out);
#      DTYPES ("bf16 f16 q8_0 q4_0"); BENCH_TIMEOUT (150 s per format); SKIP_BENCH=1.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
carry="$root/target/cuda/carry"
fx=tests/fixtures/tiny

if [ "${1:-}" = --pack ]; then
  set -e
  build="$root/target/cuda/cu${MGM_CUDA:-13.0}-sm_${CAP:-90}/release"
  [ -x "$build/minigpt-med" ] || { echo "no CUDA build in $build: run scripts/build-cuda.sh first" >&2; exit 1; }
  rm -rf "$carry" && mkdir -p "$carry"
  cp "$build/minigpt-med" "$carry/"
  strip "$carry/minigpt-med"
  git rev-parse HEAD >"$carry/commit"
  echo "${MGM_CUDA:-13.0} sm_${CAP:-90}" >"$carry/build"
  du -sh "$carry"
  exit 0
fi

OUT="${OUT:-$root/device-check-out}"
mkdir -p "$OUT"
log="$OUT/log.txt"
exec > >(tee -a "$log") 2>&1
start=$(date +%s)
stamp() { echo "[device-check $(($(date +%s) - start)) s] $*"; }
bin="${BIN:-$carry/minigpt-med}"
[ -x "$bin" ] || { echo "no $bin: build and pack here first (see the top of this script)" >&2; exit 1; }
stamp "build $(cat "$carry/build" 2>/dev/null) of commit $(cat "$carry/commit" 2>/dev/null)"

# The CUDA libraries the binary links, wherever this machine keeps them.
dirs=()
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  found="$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/lib/x86_64-linux-gnu \
    $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) /opt \
    -name "$so" -print -quit 2>/dev/null || true)"
  [ -n "$found" ] && dirs+=("$(dirname "$found")")
done
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && dirs+=("$d"); done
LD_LIBRARY_PATH="$(printf '%s:' "${dirs[@]}" | tr -s ':')${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
if ldd "$bin" | grep 'not found'; then
  echo "the libraries above are missing on this machine" >&2
  exit 1
fi
ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc' | tee "$OUT/libs.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"

# 1. Parity: the six reference prompts (every task, four images), greedy, 20 tokens, per
#    format, through `minigpt-med batch` (one process and one model load per format). f32 must
#    give the reference's ids exactly (as the CPU does); f16 and bf16 are reported.
manifest="$OUT/parity-manifest.jsonl"
python3 - "$fx/golden.json" "$root/$fx" >"$manifest" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
files = {i["name"]: i["file"] for i in g["images"]}
for p in g["prompts"]:
    print(json.dumps({"id": p["name"], "image": f"{sys.argv[2]}/{files[p['image']]}", "instruction": p["instruction"]}))
PY
for spec in cpu:f32:f32 cuda:f32:f32 cuda:f16:f16 cuda:bf16:f16; do
  IFS=: read -r dev llm vit <<<"$spec"
  stamp "parity: $dev, LLM $llm, ViT $vit"
  rm -f "$OUT/parity-$dev-$llm.jsonl"
  timeout 120 "$bin" batch --model-dir "$fx" --device "$dev" --llm-dtype "$llm" --vit-dtype "$vit" \
    --manifest "$manifest" --out "$OUT/parity-$dev-$llm.jsonl" --max-new-tokens 20 \
    || echo "parity run $spec failed (exit $?)"
done
python3 - "$fx/golden.json" "$OUT" <<'PY' | tee "$OUT/parity.txt"
import json, os, sys
g = {p["name"]: p["generated_ids"] for p in json.load(open(sys.argv[1]))["prompts"]}
summary = {}
for name in sorted(os.listdir(sys.argv[2])):
    if not (name.startswith("parity-") and name.endswith(".jsonl")) or "manifest" in name:
        continue
    rows = [json.loads(l) for l in open(os.path.join(sys.argv[2], name)) if l.strip()]
    got = {r["id"]: r.get("token_ids") or [] for r in rows}
    same = {k: next((i for i, (a, b) in enumerate(zip(v, got.get(k, []))) if a != b), min(len(v), len(got.get(k, []))))
            for k, v in g.items()}
    exact = sum(got.get(k) == v for k, v in g.items())
    errors = [r.get("error") for r in rows if r.get("error")]
    summary[name[7:-6]] = {"exact": exact, "of": len(g), "leading_tokens_equal": same, "errors": errors}
    print(f"{name[7:-6]:>10}: {exact}/{len(g)} answers equal the reference's 20 ids; leading ids equal {same}; errors {errors}")
json.dump(summary, open(os.path.join(sys.argv[2], "parity.json"), "w"), indent=1)
gpu = summary.get("cuda-f32")
print("f32 on the GPU:", "no result" if gpu is None else "the reference's ids" if gpu["exact"] == len(g) else "DIFFERS from the reference")
sys.exit(0 if gpu is not None and gpu["exact"] == len(g) else 1)
PY
parity=$?

# 2. Speed at the real shapes (random weights), one format at a time, GPU memory sampled.
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  for dt in ${DTYPES:-bf16 f16 q8_0 q4_0}; do
    stamp "bench --synthetic 7b --device cuda --llm-dtype $dt"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$OUT/mem-$dt.txt" 2>/dev/null &
    smi=$!
    timeout "${BENCH_TIMEOUT:-150}" "$bin" bench --synthetic 7b --device cuda --llm-dtype "$dt" --vit-dtype f16 \
      --repeats 2 --decode-tokens 64 --batch 1,8 --json >"$OUT/bench-$dt.json" || echo "bench $dt failed (exit $?)"
    kill "$smi" 2>/dev/null
  done
fi
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out = sys.argv[1]
print("| LLM (ViT f16) | load s | encode ms | prefill tok/s | decode tok/s B=1 | B=8 (aggregate) | GPU memory peak |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for dt in ["bf16", "f16", "q8_0", "q4_0"]:
    try:
        b = json.load(open(os.path.join(out, f"bench-{dt}.json")))
    except Exception as e:
        print(f"| {dt} | no result ({type(e).__name__}) | | | | | |")
        continue
    try:
        mem = max(int(x) for x in open(os.path.join(out, f"mem-{dt}.txt")).read().split() if x.isdigit())
    except Exception:
        mem = "-"
    b8 = next((r["tokens_per_s"] for r in b.get("batch") or [] if r["batch_size"] == 8), "-")
    print(f"| {dt} | {b['load_ms'] / 1e3:.1f} | {b['encode_ms']['min']:.1f} | {b['prefill_tokens_per_s']['best']:.0f} | "
          f"{b['decode_tokens_per_s']['best']:.1f} | {b8 if b8 == '-' else f'{b8:.1f}'} | {mem} MiB |")
PY
stamp "done: $OUT (f32 parity on the GPU: $([ $parity = 0 ] && echo passed || echo FAILED))"
exit $parity
