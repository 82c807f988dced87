#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 600: the
# 10 CPU-minutes per target of docs/robustness.md), one after the other, under the memory
# limits the engine promises to stay within. A crash stops its target: the input is copied to
# fuzz/regressions/<target>/ (replayed by `cargo test` from then on) and the script goes on.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and `cargo install cargo-fuzz`.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
[ -d fuzz/seeds ] || python3 fuzz/seeds.py
# Built once, then the binaries run directly: editing the sources meanwhile changes nothing.
(cd fuzz && cargo +nightly fuzz build -O) || exit 1
bin=fuzz/target/x86_64-unknown-linux-gnu/release
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/regressions/$t"
  seeds=(); [ -d "fuzz/seeds/$t" ] && seeds=("seeds/$t")
  start=$(date +%s)
  marker=$(mktemp)
  (cd fuzz && exec /usr/bin/time -o "artifacts/$t.time" -f "%U %S" nice "../$bin/$t" "corpus/$t" "${seeds[@]}" -artifact_prefix="artifacts/$t/" \
      -max_total_time="$seconds" -rss_limit_mb=3072 -malloc_limit_mb=1024 -timeout=60 \
      -print_final_stats=1) > "fuzz/artifacts/$t.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  cpu=$(awk '{printf "%.0f", $1 + $2}' "fuzz/artifacts/$t.time" 2>/dev/null)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/artifacts/$t.log" | grep -o '[0-9]*$' | tail -1)
  found=0
  for f in fuzz/artifacts/"$t"/{crash,oom,timeout,leak}-*; do
    [ "$f" -nt "$marker" ] || continue
    cp "$f" "fuzz/regressions/$t/"
    found=$((found + 1))
  done
  rm -f "$marker"
  summary+=("$t: ${took}s wall, ${cpu:-?} CPU-s, ${runs:-?} inputs, exit $rc, $found finding(s)")
  echo "${summary[-1]}"
done
printf '%s\n' "${summary[@]}" > fuzz/artifacts/summary.txt
