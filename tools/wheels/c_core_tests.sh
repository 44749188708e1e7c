#!/usr/bin/env bash
# Build the C core's own tests (tests/c/test_core.c with csrc/*.c) for every target this
# machine has, with the warnings CI makes errors, and run them:
#   gcc           native, with AddressSanitizer and UndefinedBehaviorSanitizer
#   clang         native (clang, else clang-14), with UndefinedBehaviorSanitizer
#   gcc-fullfsync native, with F_FULLFSYNC defined as macOS defines it: Linux refuses that
#                 fcntl with EINVAL, so this runs macOS's fallback from F_FULLFSYNC to fsync
#   mingw         x86_64-w64-mingw32-gcc, the Windows branches, run under wine
# Exits non-zero if any target fails to build or any check fails; a target whose tools
# are missing is reported as skipped (with WASMCACHE_APT=1, the default when root, they
# are installed with apt-get first: clang-14, mingw-w64, wine64 and wine).
#
#   tools/wheels/c_core_tests.sh [WORK_FOLDER]   (default ${TMPDIR:-/tmp}/wasmcache-ctests)
set -uo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-${TMPDIR:-/tmp}/wasmcache-ctests}
apt=${WASMCACHE_APT:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}
warnings=(-std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror)
sources=("$here"/csrc/*.c "$here/tests/c/test_core.c")
started=$(date +%s)
failed=()
summary=()

log() { printf '[c_core_tests.sh %3ds] %s\n' $(($(date +%s) - started)) "$*"; }

if [ "$apt" = 1 ]; then
  want=()
  command -v gcc >/dev/null || want+=(gcc libc6-dev)
  command -v clang >/dev/null || command -v clang-14 >/dev/null || want+=(clang-14)
  command -v x86_64-w64-mingw32-gcc >/dev/null || want+=(mingw-w64)
  command -v wine >/dev/null || want+=(wine64 wine)
  if [ "${#want[@]}" -gt 0 ]; then
    log "installing ${want[*]}"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "${want[@]}" || { echo "apt-get failed" >&2; exit 1; }
  fi
fi

rm -rf "$work"
mkdir -p "$work"

# run_target NAME COMPILER RUNNER [FLAGS...]: build NAME's program and run it in its folder.
run_target() {
  local name=$1 cc=$2 runner=$3
  shift 3
  local dir=$work/$name exe=$work/$name/test_core
  mkdir -p "$dir"
  [ "$name" = mingw ] && exe=$exe.exe
  if ! "$cc" "${warnings[@]}" "$@" -I"$here/csrc" "${sources[@]}" -o "$exe" 2>"$dir/build.log"; then
    cat "$dir/build.log" >&2
    log "$name: BUILD FAILED"
    failed+=("$name")
    summary+=("$name: build failed")
    return
  fi
  local output rc
  if [ -n "$runner" ]; then
    output=$(cd "$dir" && $runner "$exe" work </dev/null 2>&1 | cat)
  else
    output=$(cd "$dir" && "$exe" work </dev/null 2>&1)
  fi
  rc=$?
  printf '%s\n' "$output" | sed "s/^/  [$name] /"
  local result
  result=$(printf '%s\n' "$output" | grep -E '^(ok|FAILED): ' | tail -1)
  if [ $rc -ne 0 ] || [ "${result#ok: }" = "$result" ]; then
    log "$name: FAILED (exit $rc)"
    failed+=("$name")
    summary+=("$name: failed (${result:-no summary}, exit $rc)")
  else
    summary+=("$name: ${result#ok: }")
  fi
}

if command -v gcc >/dev/null; then
  run_target gcc gcc "" -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -fno-omit-frame-pointer
  run_target gcc-fullfsync gcc "" -O2 -DF_FULLFSYNC=51
else
  summary+=("gcc: skipped (no gcc)")
fi

clang=$(command -v clang || command -v clang-14 || true)
if [ -n "$clang" ]; then
  run_target clang "$clang" "" -O2 -fsanitize=undefined -fno-sanitize-recover=undefined
else
  summary+=("clang: skipped (no clang)")
fi

if command -v x86_64-w64-mingw32-gcc >/dev/null && command -v wine >/dev/null; then
  # A Wine prefix of our own (created on first use, ~10 s), quiet about Wine's internals.
  export WINEPREFIX=$work/wineprefix WINEDEBUG=-all WINEARCH=win64
  run_target mingw x86_64-w64-mingw32-gcc wine -O2 -static-libgcc
  wineserver -k 2>/dev/null || true
else
  summary+=("mingw: skipped (needs x86_64-w64-mingw32-gcc and wine)")
fi

log "summary:"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "all targets passed"
