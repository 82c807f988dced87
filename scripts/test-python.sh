#!/usr/bin/env bash
# Builds the `minigpt_med` wheel with maturin, installs it into a fresh virtual environment and
# runs the Python tests (tests/python) and the example (examples/python/quickstart.py).
#
# Usage: bash scripts/test-python.sh [extra pytest args]
# Environment:
#   CARGO_TARGET_DIR        honoured (shared build artifacts); default <repo>/target
#   PYTHON                  interpreter for the venv (default python3, >= 3.9)
#   MINIGPT_MED_PY_PROFILE  cargo profile of the wheel (default dev: dependencies are already
#                           optimised in it, and it reuses the artifacts of `cargo build`)
#   KEEP_VENV=1             keep the temporary venv (its path is printed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PROFILE="${MINIGPT_MED_PY_PROFILE:-dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/minigpt-med-py.XXXXXX")"
cleanup() {
    if [[ "${KEEP_VENV:-0}" == 1 ]]; then
        echo "test-python: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

echo "test-python: fresh venv in $WORK/venv ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip

# maturin: the one on PATH if recent enough, else installed into the venv.
MATURIN=""
if command -v maturin >/dev/null 2>&1; then
    if maturin --version | awk '{split($2, v, "."); exit !(v[1] == 1 && v[2] >= 9)}'; then
        MATURIN="$(command -v maturin)"
    fi
fi
if [[ -z "$MATURIN" ]]; then
    "$VPY" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2"
    MATURIN="$WORK/venv/bin/maturin"
fi
echo "test-python: $("$MATURIN" --version), profile $PROFILE, CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

"$MATURIN" build --manifest-path "$ROOT/minigpt-med-py/Cargo.toml" --profile "$PROFILE" \
    --interpreter "$VPY" --out "$WORK/wheels"

"$VPY" -m pip install --quiet --disable-pip-version-check "$WORK"/wheels/minigpt_med-*.whl \
    pytest numpy pillow tqdm "gguf>=0.17,<1" "openai>=1.40,<4" "httpx>=0.27,<1" "selenium>=4.20,<5"
# Ray Data, for minigpt_med.ray (tests/python/test_ray.py): required under CI, else optional.
if [[ "${CI:-}" == true || "${MINIGPT_MED_TEST_RAY:-0}" == 1 ]]; then
    "$VPY" -m pip install --quiet --disable-pip-version-check "ray[data]>=2.40,<3"
fi

# The CLI and the C library, for the test that asks the same question through every front door.
cargo build --locked --manifest-path "$ROOT/Cargo.toml" -p minigpt-med-cli -p minigpt-med-capi \
    --profile "$PROFILE"
profile_dir="$PROFILE"
[[ "$PROFILE" == dev ]] && profile_dir=debug
export MINIGPT_MED_CLI="$CARGO_TARGET_DIR/$profile_dir/minigpt-med"
export MINIGPT_MED_CAPI_LIB="$CARGO_TARGET_DIR/$profile_dir/libminigpt_med.so"

# Run from the repository root with the installed wheel (python/ sources are not on sys.path).
cd "$ROOT"
"$VPY" -c 'import minigpt_med, sys; print("test-python: minigpt_med", minigpt_med.__version__, "from", minigpt_med.__file__)'
"$VPY" -m pytest -p no:cacheprovider -q tests/python "$@"
echo "test-python: running examples/python/quickstart.py"
"$VPY" examples/python/quickstart.py > "$WORK/quickstart.out"
tail -n 5 "$WORK/quickstart.out"
echo "test-python: OK"
