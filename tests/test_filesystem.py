"""FileSystemCache: the wasmer cache's behaviour plus trailer checks, LZW entries, errors."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from conftest import WINDOWS, call_add, windows_lacks
from support import split_entry
from wasmcache import _image
from wasmcache.elf import elf_length
from wasmcache.entry import MAGIC_V1, TRAILER_SIZE, checksum
from wasmcache.kinds import wasmtime_version


def entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# -- ported from the wasmer cache's tests ---------------------------------------------------


def test_save_creates_entry_at_path(cache, key, engine, add_module):
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    assert path.is_file()
    assert entry_files(cache.cache_dir) == [path]


def test_path_layout(cache, key, engine):
    path = cache.path(key, engine)
    assert path == cache.cache_dir / f"{wc.engine_id(engine)}-v{wc.ARTIFACT_VERSION}" / f"{key}.bin"
    assert isinstance(path, Path)
    sha = wc.ModuleHash.sha256(b"x")
    assert cache.path(sha, engine).name == f"{sha!s}.bin"


def test_creates_missing_cache_folder_several_levels_deep(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(str(tmp_path / "a" / "b" / "c"))
    assert cache.cache_dir == tmp_path / "a" / "b" / "c"
    cache.save(key, engine, add_module)
    assert call_add(engine, cache.load(key, engine)) == 5
    engine_dir = cache.path(key, engine).parent
    assert stat.S_IMODE(engine_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.cache_dir.stat().st_mode) == 0o700


def test_load_missing_raises_not_found(cache, key, engine):
    with pytest.raises(wc.NotFound) as info:
        cache.load(key, engine)
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, wc.CacheError)
    assert not cache.contains(key, engine)


def test_raw_serialized_module_loads(cache, key, engine, add_module):
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.write_bytes(add_module.serialize())
    module = cache.load(key, engine)
    assert call_add(engine, module, 40, 2) == 42
    assert [e.name for e in module.exports] == ["add"]


def test_lzw_compressed_module_loads_and_is_rewritten(cache, key, engine, add_module):
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    artifact = bytes(add_module.serialize())
    path.write_bytes(wc.lzw.encode(artifact))
    assert call_add(engine, cache.load(key, engine)) == 5
    rewritten, meta = split_entry(path.read_bytes())
    assert rewritten == artifact and meta["kind"] == "module"
    assert call_add(engine, cache.load(key, engine)) == 5


def test_lzw_entry_from_weezl_vectors_format(cache, key, engine, add_module):
    """An LZW stream of the artifact without a leading clear code (today's weezl) loads."""
    artifact = bytes(add_module.serialize())
    stream = wc.lzw.encode(artifact)
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.write_bytes(stream + b"trailing bytes are ignored")
    assert call_add(engine, cache.load(key, engine)) == 5


# -- the trailer format ------------------------------------------------------------------------


def test_trailer_round_trip(cache, key, engine, add_module):
    before = time.time()
    cache.save(key, engine, add_module)
    data = cache.path(key, engine).read_bytes()
    payload, trailer = data[:-TRAILER_SIZE], data[-TRAILER_SIZE:]
    length, digest, magic = struct.unpack("<QQ8s", trailer)
    assert (length, digest, magic) == (len(payload), checksum(payload), b"WMCACHE2")
    artifact, meta = split_entry(data)
    assert artifact == bytes(add_module.serialize())
    assert meta["kind"] == "module" and meta["wasmtime"] == wasmtime_version()
    assert before <= meta["created"] <= time.time()
    assert meta["artifact_checksum"] == f"{checksum(artifact):016x}"
    assert call_add(engine, cache.load(key, engine)) == 5


def test_reserialized_loaded_module_is_stripped(cache, key, engine, add_module):
    """A module loaded from a file carries the trailer in its image; save must cut it off."""
    cache.save(key, engine, add_module)
    first = cache.path(key, engine).read_bytes()
    loaded = cache.load(key, engine)
    other = wc.FileSystemCache(cache.cache_dir / "other")
    other.save(key, engine, loaded)
    assert split_entry(other.path(key, engine).read_bytes())[0] == split_entry(first)[0]


@pytest.mark.skipif(not _image.zero_copy_available(), reason="no image-range binding")
def test_zero_copy_and_serialize_paths_write_identical_files(
    cache, key, engine, add_module, monkeypatch
):
    cache.save(key, engine, add_module)
    zero_copy = cache.path(key, engine).read_bytes()
    monkeypatch.setattr(_image, "_image_range", None)
    assert not _image.zero_copy_available()
    fallback = wc.FileSystemCache(cache.cache_dir / "fallback")
    fallback.save(key, engine, add_module)
    assert split_entry(fallback.path(key, engine).read_bytes())[0] == split_entry(zero_copy)[0]


def test_artifact_bytes_matches_serialize(add_module):
    expected = bytes(add_module.serialize())
    assert bytes(_image.artifact_bytes(add_module)) == expected
    assert bytes(_image.artifact_bytes(add_module, zero_copy=False)) == expected
    assert elf_length(expected) == len(expected)


def test_save_rejects_non_modules(cache, key, engine):
    with pytest.raises(TypeError):
        cache.save(key, engine, b"not a module")  # type: ignore[arg-type]


def test_key_must_be_module_hash(cache, engine):
    with pytest.raises(TypeError):
        cache.path("0123456789ABCDEF", engine)  # type: ignore[arg-type]


# -- corrupt entries ------------------------------------------------------------------------


def _corruptions(artifact: bytes) -> dict[str, bytes]:
    entry = artifact + struct.pack("<QQ", len(artifact), checksum(artifact)) + MAGIC_V1
    flipped = bytearray(entry)
    flipped[len(artifact) // 2] ^= 0x01
    wrong_sum = bytearray(entry)
    wrong_sum[len(artifact) + 8] ^= 0xFF
    return {
        "empty": b"",
        "truncated_entry": entry[: len(entry) // 2],
        "truncated_artifact": artifact[: len(artifact) // 2],
        "zeroed": bytes(len(entry)),
        "non_elf": b"#!/bin/sh\necho not an artifact\n" * 20,
        "checksum_mismatch": bytes(wrong_sum),
        "flipped_byte_in_artifact": bytes(flipped),
        "length_mismatch": artifact + b"\0" + entry[len(artifact) :],
        "trailer_only": entry[len(artifact) :],
        "lzw_of_garbage": wc.lzw.encode(b"garbage, not ELF" * 50),
        "lzw_truncated": wc.lzw.encode(artifact)[:100],
    }


@pytest.mark.parametrize("variant", list(_corruptions(b"\x7fELF").keys()))
def test_corrupt_entry_raises_and_is_removed(cache, key, engine, add_module, variant, caplog):
    data = _corruptions(bytes(add_module.serialize()))[variant]
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.raises(wc.DeserializeError) as info:
        cache.load(key, engine)
    assert isinstance(info.value, wc.CacheError)
    assert str(path) in str(info.value)
    assert not path.exists()
    assert not cache.contains(key, engine)
    cache.save(key, engine, add_module)
    assert call_add(engine, cache.load(key, engine)) == 5


def test_verify_off_skips_checksum_but_checks_length(tmp_path, key, engine, add_module):
    artifact = bytes(add_module.serialize())
    corruptions = _corruptions(artifact)
    cache = wc.FileSystemCache(tmp_path, verify=False)
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.write_bytes(corruptions["checksum_mismatch"])
    assert call_add(engine, cache.load(key, engine)) == 5
    path.write_bytes(corruptions["length_mismatch"])
    with pytest.raises(wc.DeserializeError):
        cache.load(key, engine)


def test_removal_failure_is_logged(cache, key, engine, monkeypatch, caplog):
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"junk" * 100)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "unlink", refuse)
    with caplog.at_level(logging.WARNING, logger="wasmcache"), pytest.raises(wc.DeserializeError):
        cache.load(key, engine)
    assert "could not remove corrupt cache entry" in caplog.text


# -- file system errors ------------------------------------------------------------------------


def _as_unprivileged_user(tmp_path: Path, script: str) -> None:
    """Run ``script`` in a child process that permission bits bind. CI runs as root, whom
    they do not bind, so a root child runs without the capabilities that override them.
    ``tmp`` in the script is ``tmp_path``."""
    command = [sys.executable, "-c"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    prelude = (
        "import os, wasmtime, wasmcache as wc\n"
        f"from pathlib import Path\ntmp = Path({str(tmp_path)!r})\n"
        "engine = wasmtime.Engine()\n"
        "wasm = wasmtime.wat2wasm('(module (func (export \"f\")))')\n"
        "module = wasmtime.Module(engine, wasm)\nkey = wc.ModuleHash.sha256(wasm)\n"
    )
    done = subprocess.run(
        [*command, prelude + textwrap.dedent(script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@windows_lacks("no POSIX mode bits (mkdir(mode=0o500) leaves the folder writable)")
def test_unwritable_folder_raises_file_write_error(tmp_path):
    _as_unprivileged_user(
        tmp_path,
        """
        (tmp / "ro").mkdir(mode=0o500)
        cache = wc.FileSystemCache(tmp / "ro")
        try:
            cache.save(key, engine, module)
        except wc.FileWriteError as exc:
            assert exc.path is not None and isinstance(exc.__cause__, OSError), exc
        else:
            raise AssertionError("save into a read-only folder succeeded")
        assert list((tmp / "ro").iterdir()) == []
    """,
    )


def test_unreadable_entry_raises_file_read_error(tmp_path):
    _as_unprivileged_user(
        tmp_path,
        """
        cache = wc.FileSystemCache(tmp / "c")
        cache.save(key, engine, module)
        path = cache.path(key, engine)
        path.chmod(0)
        try:
            cache.load(key, engine)
        except wc.FileReadError as exc:
            assert isinstance(exc.__cause__, PermissionError), exc
        else:
            raise AssertionError("load of an unreadable entry succeeded")
        assert path.exists()
    """,
    )


def test_file_where_folder_should_be(tmp_path, key, engine, add_module):
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    cache = wc.FileSystemCache(blocker)
    with pytest.raises(wc.FileWriteError) as info:
        cache.save(key, engine, add_module)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(wc.FileReadError):
        cache.load(key, engine)
    assert blocker.read_text() == "a file, not a folder"


def test_engine_folder_is_a_file(cache, key, engine, add_module):
    engine_dir = cache.path(key, engine).parent
    engine_dir.parent.mkdir(parents=True)
    engine_dir.write_text("in the way")
    with pytest.raises(wc.FileWriteError):
        cache.save(key, engine, add_module)
    assert engine_dir.read_text() == "in the way"


def test_directory_at_entry_path(cache, key, engine):
    path = cache.path(key, engine)
    path.mkdir(parents=True)
    with pytest.raises(wc.FileReadError) as info:
        cache.load(key, engine)
    assert info.value.path == str(path)
    assert path.is_dir()


def test_failed_save_leaves_no_temp_file(cache, key, engine, add_module):
    """The rename fails after the whole temp file was written: the temp file goes too."""
    path = cache.path(key, engine)
    (path / "child").mkdir(parents=True)  # a file cannot be renamed over a full folder
    with pytest.raises(wc.FileWriteError) as info:
        cache.save(key, engine, add_module)
    assert isinstance(info.value.__cause__, OSError) and info.value.errno is not None
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert [p.name for p in path.iterdir()] == ["child"]


def test_resave_keeps_identical_entry_and_replaces_others(cache, key, engine, add_module):
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    inode = path.stat().st_ino
    cache.save(key, engine, add_module)
    assert path.stat().st_ino == inode  # identical: kept, not rewritten

    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # damaged payload, intact trailer: rewritten
    path.write_bytes(data)
    cache.save(key, engine, add_module)
    assert path.read_bytes()[100] != data[100]
    assert call_add(engine, cache.load(key, engine)) == 5

    other = wasmtime.Module(engine, wasmtime.wat2wasm('(module (func (export "g")))'))
    cache.save(key, engine, other)
    assert split_entry(path.read_bytes())[0] == bytes(other.serialize())


# -- logging and async ------------------------------------------------------------------------


def test_logs_hit_miss_save(cache, key, engine, add_module, caplog):
    with caplog.at_level(logging.DEBUG, logger="wasmcache"):
        with pytest.raises(wc.NotFound):
            cache.load(key, engine)
        cache.save(key, engine, add_module)
        cache.load(key, engine)
    messages = [r.getMessage() for r in caplog.records if r.name == "wasmcache"]
    assert any(m.startswith("miss") for m in messages)
    assert any(m.startswith("saved") for m in messages)
    assert any(m.startswith("hit") for m in messages)


def test_async_twins(cache, key, engine, add_module):
    async def scenario():
        assert not await cache.acontains(key, engine)
        with pytest.raises(wc.NotFound):
            await cache.aload(key, engine)
        await cache.asave(key, engine, add_module)
        assert await cache.acontains(key, engine)
        modules = await asyncio.gather(*(cache.aload(key, engine) for _ in range(4)))
        return [call_add(engine, m) for m in modules]

    assert asyncio.run(scenario()) == [5, 5, 5, 5]


def test_async_does_not_block_event_loop(cache, key, engine, add_module, monkeypatch):
    import threading

    loop_thread = []
    real_load = wc.FileSystemCache.load

    def spy(self, *args, **kwargs):
        loop_thread.append(threading.current_thread())
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(wc.FileSystemCache, "load", spy)
    cache.save(key, engine, add_module)

    async def scenario():
        await cache.aload(key, engine)
        return threading.current_thread()

    main = asyncio.run(scenario())
    assert loop_thread and loop_thread[0] is not main


def test_accepts_pathlike_and_str(tmp_path, key, engine, add_module):
    for folder in (tmp_path / "p", str(tmp_path / "s")):
        cache = wc.FileSystemCache(folder)
        cache.save(key, engine, add_module)
        assert cache.contains(key, engine)
        assert isinstance(cache.cache_dir, Path)


def test_modules_from_different_engines_do_not_mix(tmp_path, add_wasm, engine):
    config = wasmtime.Config()
    config.cranelift_opt_level = "none"
    other_engine = wasmtime.Engine(config)
    cache = wc.FileSystemCache(tmp_path)
    key = wc.ModuleHash.sha256(add_wasm)
    cache.save(key, engine, wasmtime.Module(engine, add_wasm))
    assert cache.contains(key, engine)
    assert not cache.contains(key, other_engine)
    assert cache.path(key, engine).parent != cache.path(key, other_engine).parent


def test_damaged_metadata_under_a_valid_checksum_is_corrupt(cache, key, engine, add_module):
    """Metadata that is not what wasmcache writes is caught even when the trailer's
    checksum was recomputed over it: verify names it, load removes the entry."""
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    artifact, _ = split_entry(path.read_bytes())
    meta = b'{"kind":"plugin"}'
    payload = artifact + meta + struct.pack("<I", len(meta))
    path.write_bytes(payload + struct.pack("<QQ", len(payload), checksum(payload)) + b"WMCACHE2")
    ((_, reason),) = cache.verify_entries()
    assert "metadata" in reason
    with pytest.raises(wc.DeserializeError, match="metadata"):
        cache.load(key, engine)
    assert not path.exists()


# -- metadata under a schema ---------------------------------------------------------------


def _with_metadata(path: Path, meta: bytes) -> None:
    """Rewrite the entry at ``path`` with ``meta`` as its metadata, under a valid checksum
    (what someone who can write the file, or a bug, could leave)."""
    artifact, _ = split_entry(path.read_bytes())
    payload = artifact + meta + struct.pack("<I", len(meta))
    path.write_bytes(payload + struct.pack("<QQ", len(payload), checksum(payload)) + b"WMCACHE2")


def _good_metadata(artifact_length: int) -> dict[str, object]:
    return {
        "kind": "module",
        "source": "add.wasm",
        "wasm_size": 41,
        "compile_seconds": 0.5,
        "created": 1.0,
        "wasmtime": "1.0.0",
        "artifact_length": artifact_length,
        "artifact_checksum": "0123456789abcdef",
    }


_BAD_FIELDS = {
    "seconds as text": {"compile_seconds": "1.5"},
    "size as float": {"wasm_size": 1.5},
    "size as bool": {"wasm_size": True},
    "negative size": {"wasm_size": -1},
    "source as number": {"source": 7},
    "source with NUL": {"source": "a\0b"},
    "long source": {"source": "x" * 5000},
    "created as list": {"created": [1]},
    "length as text": {"artifact_length": "0"},
    "checksum as int": {"artifact_checksum": 5},
    "short checksum": {"artifact_checksum": "abc"},
    "kind as list": {"kind": ["module"]},
}


@pytest.mark.parametrize(
    "damage",
    [*_BAD_FIELDS, "nested 100000 deep", "an object nested deep", "NaN", "huge integer", "array"],
)
def test_metadata_not_of_the_schema_is_corrupt_and_listed_as_unknown(
    cache, key, engine, add_module, damage
):
    """Metadata is checked for types, bounds and nesting before use: load removes the
    entry (DeserializeError, never RecursionError or TypeError), verify names it, and the
    listing still shows the entry, its description unknown."""
    import json

    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    length = len(split_entry(path.read_bytes())[0])
    meta = _good_metadata(length)
    if damage in _BAD_FIELDS:
        raw = json.dumps({**meta, **_BAD_FIELDS[damage]}).encode()
    else:
        good = json.dumps(meta)[1:-1]
        raw = {
            "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
            "an object nested deep": ("{" + good + ',"x":' + '{"a":' * 20000 + "1"
            + "}" * 20001).encode(),
            "NaN": json.dumps({**meta, "compile_seconds": float("nan")}).encode(),
            "huge integer": ("{" + good + ',"wasm_size":' + "9" * 5000 + "}").encode(),
            "array": b"[1, 2]",
        }[damage]  # fmt: skip
    if len(raw) > 1 << 16:
        raw = raw[: 1 << 16]  # the longest metadata an entry may have
    _with_metadata(path, raw)
    ((found, reason),) = cache.verify_entries()
    assert found.path == path and "metadata" in reason
    (listed,) = cache.entries()
    assert listed.path == path and cache.describe(listed) is None
    with pytest.raises(wc.DeserializeError, match="metadata"):
        cache.load(key, engine)
    assert not path.exists()


def test_metadata_of_the_schema_is_read_back(cache, key, engine, add_module):
    origin = wc.Origin("add.wasm", 41, 0.25)
    cache.save(key, engine, add_module, origin=origin)
    (found,) = cache.entries()
    info = cache.describe(found)
    assert info is not None and info.kind == "module"
    assert (info.source, info.wasm_size, info.compile_seconds) == tuple(origin)
    assert isinstance(info.created, float) and isinstance(info.artifact_checksum, int)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (("add.wasm", 41, "1.5"), TypeError),
        ((b"add.wasm", 41, 1.5), TypeError),
        (("add.wasm", 41.0, 1.5), TypeError),
        (("add.wasm", True, 1.5), TypeError),
        (("add.wasm", 41, True), TypeError),
        (("add.wasm", -1, 1.5), ValueError),
        (("add.wasm", 41, -0.5), ValueError),
        (("add.wasm", 41, float("nan")), ValueError),
        (("add.wasm", 41, float("inf")), ValueError),
        (("add.wasm", 1 << 63, 1.5), ValueError),
        (("a\0b", 41, 1.5), ValueError),
        (("x" * 1025, 41, 1.5), ValueError),
    ],
)
def test_origin_is_validated_at_save(cache, key, engine, add_module, fields, error):
    with pytest.raises(error):
        wc.Origin(*fields)
    # An Origin that bypassed its constructor is refused by save, before anything is written.
    sneaked = wc.Origin()._replace(source=fields[0], wasm_size=fields[1], compile_seconds=fields[2])
    with pytest.raises(error):
        cache.save(key, engine, add_module, origin=sneaked)
    assert not cache.path(key, engine).exists()
    with pytest.raises(TypeError):
        cache.save(key, engine, add_module, origin=tuple(fields))  # type: ignore[arg-type]


def test_ls_and_stats_survive_bad_metadata(cache, key, engine, add_module):
    import json

    cache.save(key, engine, add_module, origin=wc.Origin("add.wasm", 41, 0.25))
    path = cache.path(key, engine)
    meta = _good_metadata(len(split_entry(path.read_bytes())[0]))
    _with_metadata(path, json.dumps({**meta, "compile_seconds": "1.5"}).encode())
    command = [sys.executable, "-m", "wasmcache", "--cache-dir", str(cache.cache_dir)]
    for args in (["ls"], ["ls", "--json"], ["stats"], ["stats", "--json"]):
        done = subprocess.run([*command, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    listing = json.loads(
        subprocess.run([*command, "ls", "--json"], capture_output=True, text=True).stdout
    )
    assert [row["kind"] for row in listing] == [None]  # listed, described as unknown


# -- a cache below a regular file ------------------------------------------------------------


def test_a_cache_path_below_a_regular_file(tmp_path, key, engine, add_module, add_wasm, caplog):
    """ENOTDIR is a write failure, not a privacy problem."""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    folder = blocker / "cache"
    assert wc.safefs.check_folder(str(folder)) is False
    assert wc.safefs.check_folder(str(folder / "engine"), shared_group=True) is False
    cache = wc.FileSystemCache(folder)
    with pytest.raises(wc.FileWriteError) as info:
        cache.save(key, engine, add_module)
    assert not isinstance(info.value, wc.UnsafeCacheError)
    # Windows has no ENOTDIR: the path through a file is one that does not exist.
    in_the_way = "No such file" if WINDOWS else "in the way"
    assert info.value.errno == (errno.ENOENT if WINDOWS else errno.ENOTDIR)
    assert in_the_way in str(info.value)
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    assert "cannot write" in caplog.text and in_the_way in caplog.text
    assert "not using the cache" not in caplog.text and "privacy" not in caplog.text
    assert "refusing" not in caplog.text
    assert blocker.read_text() == "a file, not a folder"
