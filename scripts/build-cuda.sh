#!/usr/bin/env bash
# Builds and links the workspace with `--features cuda` on a machine without a GPU (issue 18):
# the CLI, the C library and the Python wheel, for one GPU architecture.
#
#   1. installs NVIDIA's CUDA wheels from PyPI (nvcc, CCCL, the runtime, cuBLAS, cuRAND, NVRTC)
#      into a private venv, target/cuda/venv-$MGM_CUDA;
#   2. lays out a toolkit prefix, target/cuda/toolkit-$MGM_CUDA: the wheels' bin/include/nvvm, their
#      libraries under the unversioned names the linker asks for, and a link stub of the driver
#      (lib/stubs/libcuda.so, soname libcuda.so.1) generated from cuda.h's own declarations:
#      the driver itself only exists on a GPU machine, where the same soname resolves to it;
#   3. `cargo build --release --features cuda` of minigpt-med-cli and minigpt-med-capi, then
#      `maturin build --release --features cuda` of the wheel, all in target/cuda/cu$MGM_CUDA-sm_$CAP so the
#      CPU build's target/ is untouched; the binaries carry an rpath to the toolkit's lib/.
#
# Usage: scripts/build-cuda.sh [CAP]   CAP: compute capability, 90 (H100/H200, default) or 80
#        (A100); any value nvcc knows works. Run it once per architecture.
# Env:   MGM_CUDA=13.0  the CUDA release to build with (default 13.0): candle's kernels are
#          PTX that the driver compiles at the first launch, and a driver runs the PTX of its own
#          CUDA release and older ones only (driver 580 is CUDA 13.0: a 13.5 build fails there
#          with CUDA_ERROR_UNSUPPORTED_PTX_VERSION). Pick the oldest release your GPUs' drivers
#          run; `MGM_CUDA=13` takes the newest 13.x.
#        MGM_CUDA_PREFIX  where the venv and toolkit go (default target/cuda)
#        MGM_CUDA_SKIP_WHEEL=1  skip the Python wheel
# Cost on this project's 2-core CI machine: see docs/perf.md ("CUDA build"); it is run by hand
# before any change to device code is submitted (too long for every CI run).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cap="${1:-90}"
prefix="${MGM_CUDA_PREFIX:-$root/target/cuda}"
cuda="${MGM_CUDA:-13.0}"
case "$cuda" in
  13) pins=("nvidia-cuda-nvcc>=13,<14" "nvidia-cuda-cccl>=13,<14" "nvidia-cuda-runtime>=13,<14"
    "nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11" "nvidia-cuda-nvrtc>=13,<14") ;;
  # cuRAND keeps its own numbering: 10.4.0 shipped with CUDA 13.0.
  # nvcc's own dependencies are pinned too: left open, pip pairs nvcc 13.0 with the newest
  # NVVM and crt, whose PTX (.version 9.5 from 13.5's NVVM) 13.0's ptxas refuses.
  13.0) pins=("nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
    "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*"
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*") ;;
  13.[1-9]) pins=("nvidia-cuda-nvcc==$cuda.*" "nvidia-nvvm==$cuda.*" "nvidia-cuda-crt==$cuda.*"
    "nvidia-cuda-cccl==$cuda.*" "nvidia-cuda-runtime==$cuda.*"
    "nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11" "nvidia-cuda-nvrtc==$cuda.*") ;;
  *) echo "MGM_CUDA=$cuda: use 13 (the newest 13.x) or a release 13.0 to 13.9" >&2; exit 2 ;;
esac
venv="$prefix/venv-$cuda"
tk="$prefix/toolkit-$cuda"
mkdir -p "$prefix"
start=$(date +%s)
stamp() { echo "[build-cuda $(($(date +%s) - start)) s] $*"; }

# The marker holds the pins it was installed with: other pins (this script changed) reinstall.
if [ ! -f "$venv/bin/nvcc-installed" ] || [ "$(cat "$venv/bin/nvcc-installed")" != "${pins[*]}" ]; then
  stamp "installing the CUDA wheels into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # The cu13 wheels: nvcc 13.x with its crt and nvvm, CCCL (nv/target), and the libraries the
  # engine links (candle's cudarc links cuBLAS, cuBLASLt, cuRAND, NVRTC and the runtime).
  "$venv/bin/pip" install -q "${pins[@]}" maturin
  echo "${pins[*]}" >"$venv/bin/nvcc-installed"
fi
cu="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
[ -x "$cu/bin/nvcc" ] || { echo "no nvcc under $cu: the nvidia-cuda-nvcc wheel changed layout" >&2; exit 1; }

stamp "laying out the toolkit prefix $tk"
rm -rf "$tk"
mkdir -p "$tk/lib/stubs"
for d in bin include nvvm; do ln -s "$cu/$d" "$tk/$d"; done
for so in "$cu"/lib/lib*.so.*; do
  base="$(basename "$so")"
  ln -s "$so" "$tk/lib/$base"
  ln -sf "$so" "$tk/lib/${base%%.so.*}.so"
done
# The driver API's link stub: every function cuda.h declares (after its macros pick the
# versioned names, e.g. cuMemAlloc -> cuMemAlloc_v2). Linking records only the soname. Loaded
# in place of a driver (LD_LIBRARY_PATH, as the check below does) every call answers
# CUDA_ERROR_NO_DEVICE (100), so the build's CPU path and its no-GPU error can be run here.
gcc -E -P -I"$cu/include" -x c - <<<'#include <cuda.h>' \
  | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
  | sed 's/.*/int &(void) { return 100; }/' >"$tk/lib/stubs/libcuda.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tk/lib/stubs/libcuda.so" "$tk/lib/stubs/libcuda.c"
ln -s libcuda.so "$tk/lib/stubs/libcuda.so.1"
stamp "driver stub with $(wc -l <"$tk/lib/stubs/libcuda.c") symbols"

nvcc_version="$("$tk/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
read -r major minor <<<"$nvcc_version"
# cudarc 0.19 knows CUDA up to 13.4; newer 13.x toolkits keep its ABI, so its newest bindings serve.
if [ "$major" -eq 13 ] && [ "$minor" -gt 4 ]; then minor=4; fi
export CUDARC_CUDA_VERSION="$((major * 1000 + minor * 10))"
export PATH="$tk/bin:$PATH" CUDA_PATH="$tk" CUDA_ROOT="$tk" CUDA_HOME="$tk" CUDA_COMPUTE_CAP="$cap"
export CARGO_TARGET_DIR="$prefix/cu$cuda-sm_$cap"
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-rpath,$tk/lib"

stamp "cargo build --release --features cuda (sm_$cap, CUDA $major.$minor)"
cargo build --release --locked -p minigpt-med-cli -p minigpt-med-capi \
  --features minigpt-med-cli/cuda,minigpt-med-capi/cuda
if [ "${MGM_CUDA_SKIP_WHEEL:-0}" != 1 ]; then
  stamp "maturin build --release --features cuda"
  # No auditwheel repair: the CUDA libraries come from NVIDIA's own wheels (or the driver) on
  # the user's machine and must not be copied into ours.
  "$venv/bin/maturin" build --release --locked -m minigpt-med-py/Cargo.toml --features cuda \
    --auditwheel skip --out "$prefix/wheels-cu$cuda-sm_$cap"
fi

bin="$CARGO_TARGET_DIR/release/minigpt-med"
# The link is the point: every CUDA library resolves (the driver by soname, to the stub here).
libs="$(LD_LIBRARY_PATH="$tk/lib/stubs" ldd "$bin")"
grep -E 'cuda|cublas|curand|nvrtc' <<<"$libs"
if grep -q 'not found' <<<"$libs"; then
  grep 'not found' <<<"$libs" >&2
  exit 1
fi
# The CUDA build's CPU path answers as the CPU build does, and asking for a GPU where none is
# visible is the typed error, not a crash.
stamp "the CUDA build on the bundled tiny model, without a GPU"
fx=tests/fixtures/tiny
LD_LIBRARY_PATH="$tk/lib/stubs" "$bin" generate --model-dir "$fx" --image "$fx/images/synthetic_gradient.png" \
  --task report --max-new-tokens 20 --json >"$prefix/cpu-answer-cu$cuda-sm_$cap.json"
python3 - "$fx/golden.json" "$prefix/cpu-answer-cu$cuda-sm_$cap.json" <<'PY'
import json, sys
golden = json.load(open(sys.argv[1]))
want = next(p for p in golden["prompts"] if p["name"] == "p4_report")["generated_ids"]
got = json.load(open(sys.argv[2]))["token_ids"]
assert got == want, f"the CUDA build's CPU answer {got} differs from the reference {want}"
print(f"CPU path of the CUDA build: the reference's {len(want)} greedy ids")
PY
if LD_LIBRARY_PATH="$tk/lib/stubs" "$bin" generate --device cuda --model-dir "$fx" \
  --image "$fx/images/synthetic_gradient.png" --max-new-tokens 1 2>"$prefix/no-gpu-cu$cuda-sm_$cap.txt"; then
  echo "--device cuda succeeded against the driver stub" >&2
  exit 1
fi
cat "$prefix/no-gpu-cu$cuda-sm_$cap.txt"
stamp "done: $bin, $CARGO_TARGET_DIR/release/libminigpt_med.so, wheels in $prefix/wheels-cu$cuda-sm_$cap"
