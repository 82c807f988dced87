#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (engine parity with the PyTorch reference,
# errors, generation, CLI), the Rust example, and the Python and C/C++ suites when present.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
# The engine library those tests built: no SIMD intrinsic of ours compiled out of line.
bash scripts/check-intrinsics.sh debug
# Built by `cargo test` above; run as built, since `cargo run -p minigpt-med-core` would resolve
# the core's features alone and rebuild its dependencies a second time (minutes, and disk).
"${CARGO_TARGET_DIR:-target}/debug/examples/quickstart" >/dev/null
echo "example quickstart: ok"

for suite in scripts/test-python.sh scripts/test-capi.sh; do
  if [ -f "$suite" ]; then
    bash "$suite"
  fi
done
