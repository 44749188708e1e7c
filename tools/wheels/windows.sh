#!/usr/bin/env bash
# Cross-build the cp39-abi3-win_amd64 wheel on Debian 12 (x86_64) with mingw-w64.
#
#   tools/wheels/windows.sh [OUTDIR]        (default OUTDIR: /work/plat/win/dist)
#
# What it needs, and where each piece comes from:
#   - x86_64-w64-mingw32-gcc and -dlltool: Debian's mingw-w64 (installed with apt-get if
#     missing).
#   - Windows CPython's headers: Include/ and PC/pyconfig.h of the CPython 3.11.2 source,
#     taken from Debian's python3.11 source package (its upstream tarball
#     python3.11_3.11.2.orig.tar.gz), fetched with `apt-get source --download-only` from
#     deb.debian.org, which checks it against bookworm's signed Sources index. A private
#     apt state under the work folder is used: the machine's apt setup is left alone.
#     Nothing of it is kept in the repository.
#   - python3.dll's import library: made with dlltool from the export list in the same
#     tarball's PC/python3dll.c (the functions and data of the stable ABI).
#   - scikit-build-core, cffi, cmake and ninja for the build's own (Linux) Python: pip's
#     isolated build environment, from PyPI.
# The wheel is checked before it is kept: one extension, _native.pyd, importing only
# python3.dll and Windows' own DLLs, exporting PyInit__native.
#
# Environment: PYTHON (the build's Python, default python3), WASMCACHE_WIN_WORK (work
# folder, default ${TMPDIR:-/tmp}/wasmcache-win; downloads there are reused).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/work/plat/win/dist}
work=${WASMCACHE_WIN_WORK:-${TMPDIR:-/tmp}/wasmcache-win}
python=${PYTHON:-python3}
triplet=x86_64-w64-mingw32
started=$(date +%s)

log() { printf '[windows.sh %3ds] %s\n' $(($(date +%s) - started)) "$*"; }

# ---------------------------------------------------------------- the cross compiler
if ! command -v $triplet-gcc >/dev/null || ! command -v $triplet-dlltool >/dev/null; then
  log "installing mingw-w64"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mingw-w64
fi

if ! "$python" -m pip --version >/dev/null 2>&1; then
  log "installing pip for $python"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
fi

# ---------------------------------------------------------------- CPython's Windows headers
mkdir -p "$work"
python_dir=$work/cpython-win
if [ ! -f "$python_dir/include/Python.h" ] || [ ! -f "$python_dir/libs/libpython3.dll.a" ]; then
  apt_dir=$work/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/src"
  echo "deb-src http://deb.debian.org/debian bookworm main" >"$apt_dir/sources.list"
  apt_opts=(-q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o APT::Sandbox::User=root)
  tarball=$apt_dir/src/python3.11_3.11.2.orig.tar.gz
  if [ ! -f "$tarball" ]; then
    log "fetching CPython's source from Debian (python3.11 source package)"
    apt-get "${apt_opts[@]}" update
    (cd "$apt_dir/src" && apt-get "${apt_opts[@]}" source --download-only python3.11)
  fi
  [ -f "$tarball" ] || { echo "no $tarball after apt-get source" >&2; exit 1; }
  log "CPython source: $(sha256sum "$tarball")"
  rm -rf "$python_dir" "$work/Python-3.11.2"
  tar -xzf "$tarball" -C "$work" Python-3.11.2/Include Python-3.11.2/PC/pyconfig.h \
    Python-3.11.2/PC/python3dll.c
  mkdir -p "$python_dir/libs"
  cp -r "$work/Python-3.11.2/Include" "$python_dir/include"
  cp "$work/Python-3.11.2/PC/pyconfig.h" "$python_dir/include/pyconfig.h"
  # python3.dll's exports, one per EXPORT_FUNC(name) / EXPORT_DATA(name) line.
  {
    echo "LIBRARY python3.dll"
    echo "EXPORTS"
    sed -n -e 's/^EXPORT_FUNC(\([A-Za-z0-9_]*\))$/    \1/p' \
      -e 's/^EXPORT_DATA(\([A-Za-z0-9_]*\))$/    \1 DATA/p' "$work/Python-3.11.2/PC/python3dll.c"
  } >"$python_dir/libs/python3.def"
  count=$(($(wc -l <"$python_dir/libs/python3.def") - 2))
  [ "$count" -gt 500 ] || { echo "only $count exports read from python3dll.c" >&2; exit 1; }
  $triplet-dlltool --dllname python3.dll --input-def "$python_dir/libs/python3.def" \
    --output-lib "$python_dir/libs/libpython3.dll.a"
  log "import library for python3.dll: $count exports"
fi

# ---------------------------------------------------------------- the wheel
log "building the wheel"
build=$work/wheel
rm -rf "$build" "$work/cmake-build"
mkdir -p "$build" "$out"
WASMCACHE_WIN_PYTHON=$python_dir "$python" -m pip wheel -q --no-deps -w "$build" \
  -C "cmake.args=-DCMAKE_TOOLCHAIN_FILE=$here/cmake/toolchain-mingw64.cmake;-DWASMCACHE_WERROR=ON" \
  -C wheel.tags=cp39-abi3-win_amd64 \
  -C "build-dir=$work/cmake-build" \
  "$here"
wheel=$(ls "$build"/wasmcache-*-cp39-abi3-win_amd64.whl)

# ---------------------------------------------------------------- check what was built
check=$work/check
rm -rf "$check"
mkdir -p "$check"
"$python" -m zipfile -e "$wheel" "$check"
mapfile -t exts < <(cd "$check" && find . -name '*.pyd' -o -name '*.so' -o -name '*.dll')
if [ "${#exts[@]}" -ne 1 ] || [ "${exts[0]}" != ./wasmcache/_native.pyd ]; then
  echo "expected one extension wasmcache/_native.pyd, found: ${exts[*]}" >&2
  exit 1
fi
pyd=$check/wasmcache/_native.pyd
dump=$($triplet-objdump -p "$pyd")
grep -q 'file format pei-x86-64' <<<"$dump" || { echo "not a PE32+ x86-64 DLL" >&2; exit 1; }
mapfile -t dlls < <(sed -n 's/^\tDLL Name: //p' <<<"$dump" | tr 'A-Z' 'a-z' | sort -u)
for dll in "${dlls[@]}"; do
  case $dll in
    python3.dll | kernel32.dll | msvcrt.dll | api-ms-win-crt-*.dll) ;;
    *) echo "the extension imports $dll (only python3.dll and Windows' DLLs are allowed)" >&2
       exit 1 ;;
  esac
done
grep -q 'python3.dll' <<<"${dlls[*]}" || { echo "the extension does not import python3.dll" >&2; exit 1; }
grep -Eq '\] PyInit__native$' <<<"$dump" || { echo "PyInit__native is not exported" >&2; exit 1; }

cp "$wheel" "$out/"
log "wheel: $out/$(basename "$wheel") ($(stat -c %s "$wheel") bytes; imports: ${dlls[*]})"
