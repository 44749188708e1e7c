"""What a compile records and reports: the source name an entry keeps (never a reason to
lose the compiled module) and the key `wasmcache compile` checks (the one it used)."""

from __future__ import annotations

import os
from typing import Union

import pytest
import wasmtime

import wasmcache as wc
from conftest import WINDOWS
from wasmcache import base, cli, direct
from wasmcache.entry import MAX_SOURCE, Origin


class BytesPath(os.PathLike):  # type: ignore[type-arg]
    """A path object whose path is bytes (os.fspath gives bytes)."""

    def __init__(self, path: Union[str, bytes]) -> None:
        self.path = os.fsencode(path)

    def __fspath__(self) -> bytes:
        return self.path


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (None, None),
        ("", None),
        ("/a/b/app.wasm", "app.wasm"),
        (b"/a/b/app.wasm", "app.wasm"),
        (  # not UTF-8: as os.fsdecode gives it (Windows: replaced, its names are UTF-16)
            b"/a/caf\xe9.wasm",
            "caf\ufffd.wasm" if WINDOWS else f"caf{chr(0xDCE9)}.wasm",
        ),
        ("/a/" + "x" * (MAX_SOURCE + 5), "x" * MAX_SOURCE),
        ("/a/" + "y" * 10 + "z" * MAX_SOURCE, "z" * MAX_SOURCE),  # its last characters
        ("/a/dir/", None),
    ],
)
def test_source_name_is_always_an_origin(path, name):
    assert base.source_name(path) == name
    Origin(base.source_name(path), 1, 0.5)  # never raises


def test_a_bytes_path_is_compiled_cached_and_named(tmp_path, add_wasm):
    """A path object that gives bytes: the module is compiled, saved, and its entry names
    the file (its Origin used to raise TypeError after the compile, losing the module)."""
    source = tmp_path / "caf\udce9.wasm" if os.name == "posix" else tmp_path / "x.wasm"
    with open(os.fsencode(source), "wb") as f:
        f.write(add_wasm)
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(tmp_path / "cache")
    module = cache.load_or_compile(engine, BytesPath(source))
    assert isinstance(module, wasmtime.Module)
    (found,) = cache.entries()
    assert cache.describe(found).source == os.fsdecode(os.fsencode(source.name))


def test_load_or_compile_gives_the_key_it_used(tmp_path, add_wasm):
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(tmp_path / "cache")
    source = tmp_path / "add.wasm"
    source.write_bytes(add_wasm)
    for wasm in (add_wasm, str(source)):
        _, key = cache._load_or_compile(engine, wasm, None)
        assert key == wc.ModuleHash.blake3(add_wasm)
    mine = wc.ModuleHash.xxhash(add_wasm)
    assert cache._load_or_compile(engine, str(source), mine)[1] == mine


@pytest.mark.parametrize("setting", [None, "0"])
def test_compile_reads_and_hashes_the_file_once(tmp_path, add_wasm, monkeypatch, setting):
    """`wasmcache compile` checks the entry under the key its compile used: on a
    filesystem whose stamps are not trusted (or with direct mode off) the file is read
    and hashed once, not a second time to find the key again."""
    source = tmp_path / "add.wasm"
    source.write_bytes(add_wasm)
    monkeypatch.setenv("WASMCACHE_DIR", str(tmp_path / "cache"))
    if setting is None:
        monkeypatch.delenv(direct.ENV_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(direct.ENV_VARIABLE, setting)
    monkeypatch.setattr(direct, "trusted_mount", lambda fd, path, info, forced: None)
    reads = []
    real = direct.read_source

    def counting(path, fd=None):  # type: ignore[no-untyped-def]
        reads.append(path)
        return real(path, fd)

    monkeypatch.setattr(direct, "read_source", counting)
    assert cli.main(["compile", str(source)]) == 0
    assert len(reads) == 1
    cache = wc.FileSystemCache(tmp_path / "cache")
    assert cache.contains(wc.ModuleHash.blake3(add_wasm), wasmtime.Engine())
