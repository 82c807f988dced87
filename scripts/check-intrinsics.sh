#!/usr/bin/env bash
# Fails when code of ours calls a SIMD intrinsic compiled out of line. An intrinsic is inlined
# only into a function compiled with its target features; a closure (`array::from_fn(|i| ...)`)
# inside a `#[target_feature]` kernel is compiled without them, so each intrinsic in it becomes
# a call that passes vectors through memory. That made the 7B prefill ~20 % slower once while
# every test still passed (docs/perf.md, 2026-12-07). Needs objdump (binutils).
#
# Usage: bash scripts/check-intrinsics.sh [debug|release|LIB.rlib...]
#   a profile (default debug): the newest engine library (libminigpt_med-*.rlib) it built.
#   Every function in that library was compiled for the engine (std's generics instantiated by
#   it included), so any call to a `core::core_arch` function from it is ours.
set -euo pipefail
cd "$(dirname "$0")/.."

libs=()
for arg in "${@:-debug}"; do
  case "$arg" in
    debug | release)
      newest=$(ls -t "${CARGO_TARGET_DIR:-target}/$arg/deps/"libminigpt_med-*.rlib 2>/dev/null | head -n 1 || true)
      if [ -z "$newest" ]; then
        echo "check-intrinsics: no $arg engine library (build minigpt-med-core first)" >&2
        exit 2
      fi
      libs+=("$newest")
      ;;
    *) libs+=("$arg") ;;
  esac
done
if ! command -v objdump >/dev/null 2>&1; then
  echo "check-intrinsics: objdump not found (apt-get install binutils)" >&2
  exit 2
fi
status=0
for lib in "${libs[@]}"; do
  dis=$(objdump -d -r --no-show-raw-insn -C "$lib" 2>/dev/null || true)
  # An unreadable file, or one without the engine's code, must not pass as clean.
  if ! grep -q '<minigpt_med::quant::' <<<"$dis"; then
    echo "check-intrinsics: $lib: no engine code disassembled" >&2
    exit 2
  fi
  # Each call to a `core::core_arch` function, with the function it is made from.
  calls=$(awk '
    /^[0-9a-f]+ <.*>:$/ { fn = $0; sub(/^[0-9a-f]+ /, "", fn) }
    /R_X86_64_(PLT32|PC32).*core::core_arch::/ { c = $0; sub(/.*core::core_arch::/, "core::core_arch::", c); print fn " calls " c }' <<<"$dis" |
    grep -v '_xgetbv' | sort -u || true)
  if [ -n "$calls" ]; then
    echo "check-intrinsics: $lib: intrinsics compiled out of line:" >&2
    echo "$calls" | cut -c1-300 >&2
    status=1
  else
    echo "check-intrinsics: $lib: every intrinsic is inlined"
  fi
done
exit $status
