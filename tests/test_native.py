"""The C helpers for paths and atomic writes, called through their Python wrappers."""

from __future__ import annotations

import errno
import os

import pytest

from wasmcache import _core

DIGEST = bytes(range(8))


def test_cache_path_layout():
    assert (
        _core.cache_path(b"/c", b"eng-1.0_x", 3, DIGEST) == b"/c/eng-1.0_x-v3/0001020304050607.bin"
    )
    assert _core.cache_path(b"/c///", b"e", 1, b"\xab" * 32) == b"/c/e-v1/" + b"AB" * 32 + b".bin"
    assert _core.cache_path(b"/", b"e", 1, DIGEST) == b"/e-v1/0001020304050607.bin"
    assert _core.cache_path(b"rel", b"e", 4294967295, DIGEST).startswith(b"rel/e-v4294967295/")


@pytest.mark.parametrize(
    "engine_id", [b"", b".", b"..", b"a/b", b"a\0b", b"../x", b"a b", b"\xff", b"a\\b"]
)
def test_cache_path_rejects_unsafe_engine_ids(engine_id):
    with pytest.raises(ValueError):
        _core.cache_path(b"/c", engine_id, 1, DIGEST)


@pytest.mark.parametrize("cache_dir", [b"", b"/c\0/d"])
def test_cache_path_rejects_bad_dirs(cache_dir):
    with pytest.raises(ValueError):
        _core.cache_path(cache_dir, b"e", 1, DIGEST)


def test_cache_path_rejects_bad_digest_length():
    with pytest.raises(ValueError):
        _core.cache_path(b"/c", b"e", 1, b"")
    with pytest.raises(ValueError):
        _core.cache_path(b"/c", b"e", 1, bytes(65))


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "entry.bin"
    target.write_bytes(b"old")
    _core.atomic_write(str(target), b"new payload", 11, b"TRAILER")
    assert target.read_bytes() == b"new payloadTRAILER"
    assert os.listdir(tmp_path) == ["entry.bin"]


def test_atomic_write_large_and_fsync(tmp_path):
    payload = os.urandom(3 << 20)
    target = tmp_path / "big.bin"
    _core.atomic_write(str(target), memoryview(payload), len(payload), b"", fsync=True)
    assert target.read_bytes() == payload


def test_atomic_write_missing_folder_reports_enoent(tmp_path):
    target = tmp_path / "missing" / "entry.bin"
    with pytest.raises(FileNotFoundError) as info:
        _core.atomic_write(str(target), b"x", 1, b"")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(target)


def test_atomic_write_rename_failure_cleans_up(tmp_path):
    target = tmp_path / "a-folder"
    (target / "child").mkdir(parents=True)  # rename of a file over a non-empty folder fails
    with pytest.raises(OSError):
        _core.atomic_write(str(target), b"data", 4, b"")
    assert sorted(os.listdir(tmp_path)) == ["a-folder"]
    assert os.listdir(target) == ["child"]


def test_atomic_write_does_not_follow_planted_symlinks(tmp_path, monkeypatch):
    """Temp names are fresh for every write, and a name that exists is never opened."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for i in range(50):
        (tmp_path / f".entry.bin.{os.getpid()}.{i:016x}.tmp").symlink_to(victim)
    target = tmp_path / "entry.bin"
    _core.atomic_write(str(target), b"payload", 7, b"")
    assert victim.read_text() == "precious"
    assert target.read_bytes() == b"payload"
