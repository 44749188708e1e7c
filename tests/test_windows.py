"""The Windows rules: owner SIDs and DACLs, LockFileEx locks, entries held without delete
sharing, saves and prunes that meet a file Windows will not replace or remove.

The SID and ACL parsing is plain Python and is tested everywhere; the rest needs Windows
(under Wine: tools/wheels/wine_tests.sh) and is skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wasmcache as wc
from conftest import set_dacl
from wasmcache import safefs, winsec

windows = pytest.mark.skipif(
    sys.platform != "win32", reason="the Windows rules need Windows (or Wine: wine_tests.sh)"
)

USER = "S-1-5-21-1-2-3-1000"


def sid(text: str) -> bytes:
    parts = text.split("-")
    authority, subs = int(parts[2]), [int(p) for p in parts[3:]]
    return (
        bytes([1, len(subs)]) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)
    )


def ace(sid_text: str, mask: int, kind: int = 0, flags: int = 0) -> bytes:
    body = struct.pack("<I", mask) + sid(sid_text)
    return struct.pack("<BBH", kind, flags, 4 + len(body)) + body


def acl(*aces: bytes) -> bytes:
    body = b"".join(aces)
    return struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body


FULL = 0x001F01FF
READ = 0x001200A9


# -- parsing: every platform ----------------------------------------------------------------


def test_sid_text_and_length():
    data = sid("S-1-5-21-7-8-9-1001")
    assert winsec.sid_string(data) == ("S-1-5-21-7-8-9-1001", len(data))
    assert winsec.sid_string(sid("S-1-1-0")) == ("S-1-1-0", 12)


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 11])
def test_truncated_sid_is_value_error(cut):
    with pytest.raises(ValueError):
        winsec.sid_string(sid("S-1-5-32-544")[:cut] if cut < 16 else b"")


def test_sid_may_not_pass_its_end():
    data = ace("S-1-5-18", FULL)
    with pytest.raises(ValueError):
        winsec.sid_string(data, 8, len(data) - 1)


def test_private_acl_keeps_the_rule():
    dacl = acl(ace(USER, FULL), ace(winsec.SYSTEM, FULL), ace(winsec.ADMINISTRATORS, FULL))
    assert winsec.problem(USER, dacl, USER) is None
    assert winsec.problem(winsec.ADMINISTRATORS, dacl, USER) is None  # elevated creator
    assert winsec.problem(winsec.SYSTEM, dacl, USER) is None


def test_owner_rights_and_creator_owner_grant_only_the_owner():
    # What Python's os.mkdir(path, 0o700) gives a folder on Windows.
    dacl = acl(
        ace(winsec.SYSTEM, FULL, flags=3),
        ace(winsec.ADMINISTRATORS, FULL, flags=3),
        ace(winsec.OWNER_RIGHTS, FULL, flags=3),
        ace(winsec.CREATOR_OWNER, FULL, flags=0xB),
    )
    assert winsec.problem(USER, dacl, USER) is None


def test_owner_that_is_not_the_user_is_refused():
    reason = winsec.problem("S-1-5-21-1-2-3-1001", acl(ace(USER, FULL)), USER)
    assert reason is not None and "is owned by S-1-5-21-1-2-3-1001" in reason


@pytest.mark.parametrize(
    "right",
    [
        winsec.FILE_WRITE_DATA,
        winsec.FILE_APPEND_DATA,
        winsec.FILE_DELETE_CHILD,
        winsec.DELETE,
        winsec.WRITE_DAC,
        winsec.WRITE_OWNER,
        winsec.GENERIC_WRITE,
        winsec.GENERIC_ALL,
    ],
)
def test_any_write_right_for_another_principal_is_refused(right):
    for kind in (0x00, 0x09):  # allowed, allowed-callback
        reason = winsec.problem(USER, acl(ace(USER, FULL), ace("S-1-1-0", right, kind)), USER)
        assert reason is not None and "Everyone (S-1-1-0)" in reason


def test_inherit_only_write_for_others_is_refused():
    # New entries would inherit it.
    reason = winsec.problem(USER, acl(ace(USER, FULL), ace("S-1-5-11", FULL, flags=0xB)), USER)
    assert reason is not None and "Authenticated Users" in reason


def test_read_for_others_and_deny_entries_are_allowed():
    dacl = acl(ace("S-1-1-0", FULL, kind=0x01), ace(USER, FULL), ace("S-1-5-32-545", READ))
    assert winsec.problem(USER, dacl, USER) is None


def test_object_ace_sid_found_after_its_guids():
    body = struct.pack("<II", FULL, 3) + bytes(32) + sid("S-1-1-0")
    entry = struct.pack("<BBH", 0x05, 0, 4 + len(body)) + body
    assert winsec.acl_allows(acl(entry)) == [winsec.Ace("S-1-1-0", FULL, 0)]


def test_null_dacl_is_refused():
    assert "no access control list" in (winsec.problem(USER, None, USER) or "")


def test_unknown_or_malformed_acls_are_refused_with_a_reason():
    unknown = struct.pack("<BBH", 0x7F, 0, 8) + bytes(4)
    for bad in (b"", acl()[:7], acl(unknown), acl(ace(USER, FULL))[:-4]):
        reason = winsec.problem(USER, bad, USER)
        assert reason is not None and "cannot be read" in reason


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_value_error(data):
    with contextlib.suppress(ValueError):
        winsec.acl_allows(data)
    reason = winsec.problem(USER, data, USER)  # a reason or None, never an exception
    assert reason is None or isinstance(reason, str)


# -- Windows (and Wine) ---------------------------------------------------------------------


def _saved(cache: wc.FileSystemCache, key: wc.ModuleHash, engine, module) -> Path:
    cache.save(key, engine, module)
    path = cache.path(key, engine)
    assert path.is_file()
    return path


@windows
def test_new_cache_folder_is_private(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "cache")
    path = _saved(cache, key, engine, add_module)
    assert winsec.folder_problem(str(tmp_path / "cache")) is None
    assert winsec.folder_problem(str(path.parent)) is None


@windows
def test_folder_granting_everyone_write_is_refused(tmp_path, key, engine, add_module):
    folder = tmp_path / "cache"
    folder.mkdir()
    set_dacl(folder, "D:(A;OICI;FA;;;WD)")
    with pytest.raises(wc.UnsafeCacheError, match=r"Everyone \(S-1-1-0\)"):
        wc.FileSystemCache(folder).save(key, engine, add_module)
    with pytest.raises(wc.UnsafeCacheError, match="icacls"):
        wc.FileSystemCache(folder).load(key, engine)
    assert not any(folder.iterdir())  # nothing written


@windows
def test_entry_granting_everyone_write_is_refused(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "cache")
    path = _saved(cache, key, engine, add_module)
    set_dacl(path, "D:(A;;FA;;;WD)")
    with pytest.raises(wc.UnsafeEntryError, match=r"Everyone \(S-1-1-0\)"):
        cache.load(key, engine)
    assert path.exists()  # refused, not removed


@windows
def test_folder_owned_by_another_user_is_refused(key, engine, add_module):
    # Setting another owner takes a privilege Wine ignores; wine_tests.sh hands over a folder
    # whose Unix owner is another user, which Wine reports as another SID.
    foreign: Optional[str] = os.environ.get("WASMCACHE_TEST_FOREIGN_DIR")
    if not foreign:
        pytest.skip("Wine: SetFileSecurityW ignores the owner; needs WASMCACHE_TEST_FOREIGN_DIR")
    with pytest.raises(wc.UnsafeCacheError, match="is owned by S-1-"):
        wc.FileSystemCache(foreign).save(key, engine, add_module)


@windows
def test_binary_bytes_are_written_exactly(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "cache")
    path = _saved(cache, key, engine, add_module)
    data = path.read_bytes()
    fd, info = safefs.open_regular(str(path))
    try:
        assert info.st_size == len(data)
        assert safefs.pread(fd, len(data) + 10, 0) == data
        assert safefs.pread(fd, 5, len(data) - 5) == data[-5:]
    finally:
        os.close(fd)


@windows
def test_temp_files_are_written_in_binary(tmp_path):
    # The C runtime would turn b"\n" into b"\r\n" in a descriptor opened as text.
    target = str(tmp_path / "x.bin")
    temp, fd = safefs.create_temp(target, os.mkdir)
    try:
        safefs.write_all(fd, memoryview(b"a\nb\r\n\x1a"))
    finally:
        os.close(fd)
    assert Path(temp).read_bytes() == b"a\nb\r\n\x1a"


@windows
def test_entry_held_open_cannot_be_renamed_over_or_removed(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "cache")
    path = _saved(cache, key, engine, add_module)
    other = path.with_name("other")
    other.write_bytes(b"x")
    fd, _ = safefs.open_regular(str(path))
    try:
        with pytest.raises(PermissionError):
            os.replace(other, path)
        with pytest.raises(PermissionError):
            os.unlink(path)
    finally:
        os.close(fd)
    os.replace(other, path)  # free again


@windows
def test_prune_and_save_keep_a_file_in_use_without_error(tmp_path, key, engine, add_module, caplog):
    caplog.set_level(logging.DEBUG, "wasmcache")
    cache = wc.FileSystemCache(tmp_path / "cache")
    path = _saved(cache, key, engine, add_module)
    before = path.read_bytes()
    fd, _ = safefs.open_regular(str(path))  # as a load holds it
    try:
        assert cache.prune(0) == []  # not removable now: no error, tried again later
        assert path.exists()
        other = wasmtime_module(engine)
        cache.save(key, engine, other)  # not replaceable now: kept, no error
        assert path.read_bytes() == before
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert sum("is in use" in r.getMessage() for r in caplog.records) == 2
    finally:
        os.close(fd)
    assert [e.path for e in cache.prune(0)] == [path]  # the next prune removes it


@windows
def test_prune_keeps_a_mapped_file(tmp_path, key, engine, add_module):
    import mmap

    cache = wc.FileSystemCache(tmp_path / "cache")
    path = _saved(cache, key, engine, add_module)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ):
        try:
            os.unlink(path)
        except PermissionError:
            pass
        else:
            pytest.skip("Wine: a mapped file can be removed (Unix semantics)")
        assert cache.prune(0) == []
        assert path.exists()
    assert len(cache.prune(0)) == 1


@windows
def test_lock_file_excludes_another_holder(tmp_path):
    from wasmcache import locks

    lock = str(tmp_path / ".lock")
    with locks.file_lock(lock) as held:
        assert held
        with locks.try_file_lock(lock) as again:
            assert not again  # LockFileEx: another handle of this process is refused too
        assert not locks.remove_if_free(lock)
    with locks.try_file_lock(lock, remove=True) as free:
        assert free
    assert not os.path.exists(lock)


def wasmtime_module(engine):
    import wasmtime

    return wasmtime.Module(engine, wasmtime.wat2wasm('(module (func (export "f")))'))
