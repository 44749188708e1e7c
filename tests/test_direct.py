"""Direct mode: the key of a Wasm file from its stamp, so a hit neither reads nor hashes it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from conftest import call_add
from support import forge_xxh64_collision
from wasmcache import direct, names


@pytest.fixture(scope="module")
def settled(tmp_path_factory) -> dict[str, Path]:
    """Wasm files whose mtime and ctime are past the racy window (made once, then waited
    for: a ctime cannot be set back)."""
    folder = tmp_path_factory.mktemp("settled")
    victim, forged = forge_xxh64_collision()
    files = {}
    for name in ("a", "b", "c", "d"):
        path = folder / f"{name}.wasm"
        path.write_bytes(victim)
        files[name] = path
    files["forged"] = folder / "forged.bin"
    files["forged"].write_bytes(forged)
    time.sleep(direct.RACY_SECONDS + 0.1)
    return files


@pytest.fixture(autouse=True)
def fresh_memory():
    direct._memory.clear()
    yield
    direct._memory.clear()


class Reads:
    """Counts reads of Wasm sources."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = direct.read_source

        def counting(path: str):  # type: ignore[no-untyped-def]
            self.count += 1
            return real(path)

        monkeypatch.setattr(direct, "read_source", counting)


def test_a_known_file_is_not_read_again(settled, tmp_path, monkeypatch, engine):
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, settled["a"])) == 5
    assert reads.count == 1
    assert call_add(engine, cache.load_or_compile(engine, settled["a"])) == 5
    assert reads.count == 1  # process memory
    direct._memory.clear()
    assert call_add(engine, cache.load_or_compile(engine, str(settled["a"]))) == 5
    assert reads.count == 1  # the record in the cache folder
    records = list((cache.cache_dir / names.INDEX_FOLDER).iterdir())
    assert len(records) == 1 and names.is_index_record(records[0].name)


def test_a_fresh_file_is_read_every_time(tmp_path, monkeypatch, engine, add_wasm):
    reads = Reads(monkeypatch)
    source = tmp_path / "fresh.wasm"
    source.write_bytes(add_wasm)
    cache = wc.FileSystemCache(tmp_path / "c")
    for expected in (1, 2):
        assert call_add(engine, cache.load_or_compile(engine, source)) == 5
        assert reads.count == expected
    assert not (cache.cache_dir / names.INDEX_FOLDER).exists()


def test_a_rewrite_with_restored_size_and_mtime_gives_the_new_key(settled, tmp_path, engine):
    """Same size, mtime put back with utime: the ctime changed, so the stamp did."""
    source = settled["b"]
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, source)) == 5
    before = os.stat(source)
    source.write_bytes(settled["forged"].read_bytes())  # same length, other code
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(source)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert call_add(engine, cache.load_or_compile(engine, source)) == 1337
    direct._memory.clear()
    assert call_add(engine, cache.load_or_compile(engine, source)) == 1337


def test_a_damaged_record_is_a_miss(settled, tmp_path, monkeypatch, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, settled["c"])) == 5
    (record,) = (cache.cache_dir / names.INDEX_FOLDER).iterdir()
    for damage in (b"", b"garbage", record.read_bytes()[:-3], b"\xff" * 300):
        record.write_bytes(damage)
        direct._memory.clear()
        reads = Reads(monkeypatch)
        assert call_add(engine, cache.load_or_compile(engine, settled["c"])) == 5
        assert reads.count == 1


def test_a_record_naming_another_key_cannot_redirect_a_stamp(settled, tmp_path, engine):
    """A record is only taken for the stamp and algorithm it was written for."""
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, settled["d"])) == 5
    (record,) = (cache.cache_dir / names.INDEX_FOLDER).iterdir()
    other_stamp = (1, 2, 3, 4, 5)
    record.write_bytes(direct._record_text(other_stamp, wc.ModuleHash.sha256(b"x")))
    direct._memory.clear()
    assert call_add(engine, cache.load_or_compile(engine, settled["d"])) == 5


def test_bytes_inputs_are_hashed(tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.contains(wc.ModuleHash.sha256(add_wasm), engine)
    assert not (cache.cache_dir / names.INDEX_FOLDER).exists()


def test_a_file_changed_after_its_stamp_compiles_what_it_holds(tmp_path, engine, monkeypatch):
    """The key came from the stamp, then the file changed before the miss read it: the
    module is compiled from the bytes read and saved under their key."""
    victim, forged = forge_xxh64_collision()
    source = tmp_path / "m.wasm"
    source.write_bytes(forged)
    monkeypatch.setattr(
        direct, "key_of_file", lambda path, algorithm, root: (wc.ModuleHash.sha256(victim), None)
    )
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, source)) == 1337
    assert cache.contains(wc.ModuleHash.sha256(forged), engine)
    assert not cache.contains(wc.ModuleHash.sha256(victim), engine)


def test_clear_removes_records(settled, tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, settled["a"])
    assert (cache.cache_dir / names.INDEX_FOLDER).exists()
    cache.clear()
    assert list(cache.cache_dir.iterdir()) == []


def test_memory_cache_direct_mode_stays_in_memory(settled, monkeypatch):
    reads = Reads(monkeypatch)
    engine = wasmtime.Engine()
    memory = wc.MemoryCache()
    for _ in range(3):
        assert call_add(engine, memory.load_or_compile(engine, settled["a"])) == 5
    assert reads.count == 1
