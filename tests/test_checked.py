"""Checksum passes remembered per boot: skipped only for an entry whose trusted stamp was
checked since the machine started; anything written or replaced since is checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from conftest import WINDOWS
from wasmcache import checked, direct, entry, safefs
from wasmcache.entry import Corrupt


@pytest.fixture
def cache_entry(tmp_path, add_wasm):
    """A saved entry, a cache folder, and a counter of checksum passes."""
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(tmp_path / "cache")
    key = wc.ModuleHash.blake3(add_wasm)
    cache.save(key, engine, wasmtime.Module(engine, add_wasm))
    return str(cache.cache_dir), str(cache.path(key, engine))


@pytest.fixture
def passes(monkeypatch):
    """Counts checksum passes; the clock runs an hour ahead (stamps are settled), the
    filesystem's stamps are trusted and the boot has a fixed id."""
    count = {"n": 0}
    real = entry.file_checksum

    def counting(fd: int, length: int) -> int:
        count["n"] += 1
        return real(fd, length)

    monkeypatch.setattr(entry, "file_checksum", counting)
    monkeypatch.setattr(checked, "_clock", lambda: direct._clock() + 3600 * 10**9)
    monkeypatch.setattr(
        direct, "trusted_mount", lambda fd, path, info, forced: direct.mount_of(fd, info)
    )
    monkeypatch.setattr(direct, "_boot", "11111111-2222-3333-4444-555555555555")
    return count


def inspect(cache_dir: str, path: str, **kwargs: object) -> str:
    fd, info = safefs.open_regular(path)
    try:
        return checked.inspect(cache_dir, fd, info, path, verify=True, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_checked_once_per_boot(cache_entry, passes):
    cache_dir, path = cache_entry
    assert inspect(cache_dir, path) == "trailer"
    assert passes["n"] == 1
    assert inspect(cache_dir, path) == "trailer"
    assert inspect(cache_dir, path) == "trailer"
    assert passes["n"] == 1
    record = Path(checked.record_path(cache_dir)).read_bytes()
    assert record.startswith(b"wasmcache-checked 1 11111111-2222-3333-4444-555555555555\n")
    if not WINDOWS:  # (no mode bits on Windows: the folder's ACL keeps the record private)
        assert os.stat(checked.record_path(cache_dir)).st_mode & 0o077 == 0


def test_an_entry_written_in_place_since_its_check_is_checked_again(cache_entry, passes):
    """A byte flipped by a write (size and mtime put back) changes the ctime: the entry is
    checked again, and the damage found."""
    cache_dir, path = cache_entry
    inspect(cache_dir, path)
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(Corrupt, match="checksum"):
        inspect(cache_dir, path)
    assert passes["n"] == 2


def test_an_entry_replaced_since_its_check_is_checked_again(cache_entry, passes):
    cache_dir, path = cache_entry
    inspect(cache_dir, path)
    data = bytearray(Path(path).read_bytes())
    data[100] ^= 1
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)
    with pytest.raises(Corrupt, match="checksum"):
        inspect(cache_dir, path)
    assert passes["n"] == 2


def test_a_new_boot_checks_again(cache_entry, passes, monkeypatch):
    cache_dir, path = cache_entry
    inspect(cache_dir, path)
    monkeypatch.setattr(direct, "_boot", "99999999-2222-3333-4444-555555555555")
    inspect(cache_dir, path)
    inspect(cache_dir, path)
    assert passes["n"] == 2
    record = Path(checked.record_path(cache_dir)).read_bytes()
    assert record.startswith(b"wasmcache-checked 1 99999999-")  # the old boot's is gone


def test_untrusted_stamps_are_checked_every_time(cache_entry, passes, monkeypatch):
    """A filesystem off the allow-list (network, FUSE, image, read-only mount)."""
    cache_dir, path = cache_entry
    monkeypatch.setattr(direct, "trusted_mount", lambda fd, path, info, forced: None)
    for _ in range(3):
        inspect(cache_dir, path)
    assert passes["n"] == 3
    assert not os.path.exists(checked.record_path(cache_dir))


def test_without_a_boot_id_every_load_checks(cache_entry, passes, monkeypatch):
    cache_dir, path = cache_entry
    monkeypatch.setattr(direct, "_boot", "")
    for _ in range(2):
        inspect(cache_dir, path)
    assert passes["n"] == 2


def test_a_fresh_stamp_is_not_recorded(cache_entry, passes, monkeypatch):
    """A stamp younger than the racy window may not show a write in the same tick."""
    cache_dir, path = cache_entry
    monkeypatch.setattr(checked, "_clock", direct._clock)
    for _ in range(2):
        inspect(cache_dir, path)
    assert passes["n"] == 2
    assert not os.path.exists(checked.record_path(cache_dir))


def test_shared_group_and_verify_off(cache_entry, passes):
    cache_dir, path = cache_entry
    for _ in range(2):
        inspect(cache_dir, path, shared_group=True)
    assert passes["n"] == 2
    fd, info = safefs.open_regular(path)
    try:
        assert checked.inspect(cache_dir, fd, info, path, verify=False) == "trailer"
    finally:
        os.close(fd)
    assert passes["n"] == 2


@pytest.mark.parametrize("damage", ["link", "group_writable", "garbage", "other_stamp"])
def test_a_record_not_to_be_trusted_means_unchecked(cache_entry, passes, damage, tmp_path):
    """What a record may hold is decided by who can write the cache folder: a record
    that breaks the privacy rule, is a link, or does not name this stamp is ignored."""
    cache_dir, path = cache_entry
    record = checked.record_path(cache_dir)
    stamp = b"%d %d %d %d %d\n" % direct.stamp_of(os.stat(path))
    good = b"wasmcache-checked 1 11111111-2222-3333-4444-555555555555\n" + stamp
    if damage == "link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_bytes(good)
        os.symlink(elsewhere, record)
    elif damage == "group_writable":
        with open(record, "wb") as f:
            f.write(good)
        os.chmod(record, 0o660)
    elif damage == "garbage":
        with open(record, "wb") as f:
            f.write(good[:-1])  # cut: no line ends where the stamp's does
    else:
        with open(record, "wb") as f:
            f.write(good.replace(stamp, b"1" + stamp))
    inspect(cache_dir, path)
    assert passes["n"] == 1


def test_the_record_is_bounded(cache_entry, passes, monkeypatch):
    cache_dir, path = cache_entry
    monkeypatch.setattr(checked, "MAX_STAMPS", 4)
    lines = b"".join(b"1 %d 3 4 5\n" % i for i in range(4))
    with open(checked.record_path(cache_dir), "wb") as f:
        f.write(b"wasmcache-checked 1 11111111-2222-3333-4444-555555555555\n" + lines)
    os.chmod(checked.record_path(cache_dir), 0o600)
    inspect(cache_dir, path)
    kept = Path(checked.record_path(cache_dir)).read_bytes().splitlines()[1:]
    fd, info = safefs.open_regular(path)  # the stamp as a load sees it (Windows: by handle)
    os.close(fd)
    stamp = b"%d %d %d %d %d " % direct.stamp_of(info)
    assert len(kept) == 3 and kept[-1].startswith(stamp)
    assert kept[-1].split(b" ")[5].decode() == direct.boot_id()  # then the mount's id


def test_boot_id_is_read_from_the_system(monkeypatch):
    monkeypatch.setattr(direct, "_boot", None)
    found = checked.boot_id()
    if os.path.exists(direct.BOOT_ID_PATH):
        assert found is not None and len(found) == 36
    else:  # pragma: no cover - not Linux
        assert found is None


def test_a_load_checks_an_entry_once_per_boot_and_again_after_a_write(tmp_path, monkeypatch):
    wasm = wasmtime.wat2wasm('(module (func (export "f")))')
    passes = []
    real = entry.file_checksum
    monkeypatch.setattr(entry, "file_checksum", lambda fd, n: passes.append(n) or real(fd, n))
    monkeypatch.setattr(checked, "_clock", lambda: direct._clock() + 3600 * 10**9)
    monkeypatch.setattr(
        direct, "trusted_mount", lambda fd, path, info, forced: direct.mount_of(fd, info)
    )
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(tmp_path / "cache")
    key = wc.ModuleHash.blake3(wasm)
    cache.save(key, engine, wasmtime.Module(engine, wasm))
    for _ in range(3):
        cache.load(key, engine)
    assert len(passes) == 1
    path = cache.path(key, engine)
    before = os.stat(path)
    with open(path, "r+b") as f:  # one byte flipped in place, size and mtime put back
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(wc.DeserializeError, match="checksum"):
        cache.load(key, engine)
    assert not path.exists()
