#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (engine parity with the PyTorch reference,
# errors, generation, CLI), the Rust example, and the Python and C/C++ suites when present.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
# The engine library those tests built: no SIMD intrinsic of ours compiled out of line.
bash scripts/check-intrinsics.sh debug
cargo run --quiet --locked -p minigpt-med-core --example quickstart >/dev/null
echo "example quickstart: ok"

for suite in scripts/test-python.sh scripts/test-capi.sh; do
  if [ -f "$suite" ]; then
    bash "$suite"
  fi
done
