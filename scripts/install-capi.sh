#!/usr/bin/env bash
# Installs the built C library into a prefix, with the layout C/C++ build systems expect:
#
#   PREFIX/include/minigpt_med.h
#   PREFIX/lib/libminigpt_med.so.X.Y.Z   (+ libminigpt_med.so.ABI and libminigpt_med.so links)
#   PREFIX/lib/libminigpt_med.a
#   PREFIX/lib/pkgconfig/minigpt_med.pc
#   PREFIX/lib/cmake/minigpt_med/minigpt_medConfig.cmake (+ ConfigVersion)
#
# Usage: scripts/install-capi.sh PREFIX [PROFILE_DIR]
#   PROFILE_DIR: where cargo put libminigpt_med.so/.a
#                (default: ${CARGO_TARGET_DIR:-target}/debug)
# Build first: cargo build -p minigpt-med-capi
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${1:?usage: install-capi.sh PREFIX [PROFILE_DIR]}"
libdir_in="${2:-${CARGO_TARGET_DIR:-$root/target}/debug}"
crate="$root/minigpt-med-capi"

header="$root/include/minigpt_med.h"
version_of() { sed -n "s/^#define MGM_$1 \([0-9]*\)$/\1/p" "$header"; }
major="$(version_of VERSION_MAJOR)"
minor="$(version_of VERSION_MINOR)"
patch="$(version_of VERSION_PATCH)"
abi="$(version_of ABI_VERSION)"
version="$major.$minor.$patch"
[[ -n "$major" && -n "$minor" && -n "$patch" && -n "$abi" ]] || { echo "cannot read the version from $header" >&2; exit 1; }

for f in libminigpt_med.so libminigpt_med.a; do
  [[ -f "$libdir_in/$f" ]] || { echo "$libdir_in/$f is missing: run cargo build -p minigpt-med-capi" >&2; exit 1; }
done

# The system libraries a Rust static library needs, as rustc reports them for this target.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "" > "$tmp/empty.rs"
native="$(rustc --crate-type staticlib --print native-static-libs "$tmp/empty.rs" -o "$tmp/empty.a" 2>&1 |
  sed -n 's/.*native-static-libs: //p' | head -n1)"
# CMake wants bare names ("pthread;dl"), not -l flags.
native_cmake="$(printf '%s\n' $native | sed -n 's/^-l//p' | paste -sd';' -)"

mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/minigpt_med"
install -m 644 "$header" "$prefix/include/minigpt_med.h"
install -m 755 "$libdir_in/libminigpt_med.so" "$prefix/lib/libminigpt_med.so.$version"
ln -sf "libminigpt_med.so.$version" "$prefix/lib/libminigpt_med.so.$abi"
ln -sf "libminigpt_med.so.$abi" "$prefix/lib/libminigpt_med.so"
install -m 644 "$libdir_in/libminigpt_med.a" "$prefix/lib/libminigpt_med.a"

subst() {
  sed -e "s|@VERSION@|$version|g" -e "s|@MAJOR@|$major|g" -e "s|@MINOR@|$minor|g" -e "s|@ABI@|$abi|g" \
      -e "s|@NATIVE_STATIC_LIBS@|$native|g" -e "s|@NATIVE_STATIC_LIBS_CMAKE@|$native_cmake|g" "$1" > "$2"
}
subst "$crate/packaging/minigpt_med.pc.in" "$prefix/lib/pkgconfig/minigpt_med.pc"
subst "$crate/packaging/minigpt_medConfig.cmake.in" "$prefix/lib/cmake/minigpt_med/minigpt_medConfig.cmake"
subst "$crate/packaging/minigpt_medConfigVersion.cmake.in" "$prefix/lib/cmake/minigpt_med/minigpt_medConfigVersion.cmake"
echo "installed libminigpt_med $version (ABI $abi) into $prefix"
