#!/usr/bin/env bash
# Install a wasmcache win_amd64 wheel into the Wine Python that wine_python.sh made, and
# run the tests that Wine can run.
#
#   tools/wheels/wine_tests.sh WHEEL [ENV] [-- PYTEST ARGS]   (ENV default /work/plat/winpy/env)
#
# PYTEST ARGS naming tests (tests/...) run those only; otherwise the whole of tests/.
#
# Tests Wine cannot run skip with the reason naming what Wine lacks (tests/conftest.py,
# the Wine hook); the real-program tests are left out (-m "not programs"). A folder owned
# by another Unix user is made for the owner test (Wine cannot set an owner from Windows).
# WINE_TESTS_SOURCES=python/wasmcache copies a work tree's Python modules over the
# wheel's (to test Python changes without building the wheel again). Wine processes a
# test leaves behind (a child whose Ctrl-C never came) end with the run: wineserver -k.
set -euo pipefail

WHEEL=${1:?usage: wine_tests.sh WHEEL [ENV] [-- PYTEST ARGS]}
shift
ENV=/work/plat/winpy/env
if [ $# -gt 0 ] && [ "$1" != "--" ]; then ENV=$1; shift; fi
[ "${1:-}" = "--" ] && shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=$ENV/winpython
[ -x "$PY" ] || { echo "no Wine Python at $ENV: run tools/wheels/wine_python.sh first" >&2; exit 1; }

export WINEPREFIX=$ENV/prefix
</dev/null "$PY" -m pip install -q --no-deps --force-reinstall --no-warn-script-location \
    "$(winepath -w "$WHEEL")"
if [ -n "${WINE_TESTS_SOURCES:-}" ]; then
    cp "$WINE_TESTS_SOURCES"/*.py "$ENV/python/Lib/site-packages/wasmcache/"
fi

# The owner test: a folder of another Unix uid, which Wine reports as another SID.
work=$(mktemp -d /tmp/wasmcache-wine.XXXXXX)
trap 'wineserver -k 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -m 700 "$work/foreign" && chown 65534:65534 "$work/foreign"
export WASMCACHE_TEST_FOREIGN_DIR
WASMCACHE_TEST_FOREIGN_DIR=$(winepath -w "$work/foreign")
export WINEDEBUG=-all
cd "$ROOT"
start=$(date +%s)
set +e
# The whole suite unless the arguments name tests of their own.
where=tests
for arg in "$@"; do case $arg in tests/*|tests\\*) where= ;; esac; done
</dev/null "$PY" -m pytest -p no:cacheprovider -q -m "not programs" -rs $where "$@"
status=$?
set -e
echo "wine_tests.sh: pytest exit $status after $(($(date +%s) - start)) s" >&2
exit $status
