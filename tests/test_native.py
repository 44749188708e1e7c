"""The C helpers for paths and atomic writes, called through their Python wrappers."""

from __future__ import annotations

import errno
import os

import pytest

import wasmcache as wc
from conftest import WINDOWS
from wasmcache import _core, names

DIGEST = bytes(range(8))


def test_cache_path_layout():
    sep = b"\\" if WINDOWS else b"/"  # the separator the core joins with
    assert _core.cache_path(b"/c", b"eng-1.0_x", 3, DIGEST) == sep.join(
        [b"/c", b"eng-1.0_x-v3", b"0001020304050607.bin"]
    )
    assert _core.cache_path(b"/c///", b"e", 1, b"\xab" * 32) == sep.join(
        [b"/c", b"e-v1", b"AB" * 32 + b".bin"]
    )
    assert _core.cache_path(b"/", b"e", 1, DIGEST) == b"/e-v1" + sep + b"0001020304050607.bin"
    assert _core.cache_path(b"rel", b"e", 4294967295, DIGEST).startswith(
        b"rel" + sep + b"e-v4294967295" + sep
    )


@pytest.mark.parametrize(
    "engine_id", [b"", b".", b"..", b"a/b", b"a\0b", b"../x", b"a b", b"\xff", b"a\\b"]
)
def test_cache_path_rejects_unsafe_engine_ids(engine_id):
    with pytest.raises(ValueError, match="unsafe or empty path component"):
        _core.cache_path(b"/c", engine_id, 1, DIGEST)


@pytest.mark.parametrize("cache_dir", [b"", b"/c\0/d"])
def test_cache_path_rejects_bad_dirs(cache_dir):
    with pytest.raises(ValueError):
        _core.cache_path(cache_dir, b"e", 1, DIGEST)


def test_cache_path_rejects_bad_digest_length():
    with pytest.raises(ValueError, match="invalid argument"):
        _core.cache_path(b"/c", b"e", 1, b"")
    with pytest.raises(ValueError):
        _core.cache_path(b"/c", b"e", 1, bytes(65))


def test_temp_path_layout():
    assert _core.temp_path(b"/c/e-v1/AB.bin", 42, 0xDEADBEEF) == (
        b"/c/e-v1/.AB.bin.42.00000000deadbeef.tmp"
    )
    assert _core.temp_path(b"x.bin", 2**64 - 1, 2**64 - 1) == (
        b".x.bin.18446744073709551615.ffffffffffffffff.tmp"
    )
    for bad in (b"", b"/c/", b"a\0b"):
        with pytest.raises(ValueError):
            _core.temp_path(bad, 1, 1)


def test_temp_names_are_recognised_and_fresh(tmp_path):
    target = str(tmp_path / ("AB" * 32 + ".bin"))
    first, second = names.temp_path(target), names.temp_path(target)
    assert first != second
    assert names.is_temp(os.path.basename(first)) and names.is_temp(os.path.basename(second))
    assert not names.is_temp("AB" * 32 + ".bin")


def test_status_messages_come_from_the_c_core():
    assert _core.strerror(0) == "success"
    assert _core.strerror(-12) == "LZW stream decodes past the output cap"
    assert _core.strerror(-999) == "unknown status"


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "entry.bin"
    target.write_bytes(b"old")
    _core.atomic_write(names.temp_path(str(target)), str(target), b"new payload", b"TRAILER")
    assert target.read_bytes() == b"new payloadTRAILER"
    assert os.listdir(tmp_path) == ["entry.bin"]


def test_atomic_write_takes_the_length_from_the_buffer(tmp_path):
    target = tmp_path / "entry.bin"
    payload = memoryview(b"0123456789")[2:5]
    _core.atomic_write(names.temp_path(str(target)), str(target), payload, b"!")
    assert target.read_bytes() == b"234!"


def test_atomic_write_large_and_fsync(tmp_path):
    payload = os.urandom(3 << 20)
    target = tmp_path / "big.bin"
    _core.atomic_write(
        names.temp_path(str(target)), str(target), memoryview(payload), b"", fsync=True
    )
    assert target.read_bytes() == payload


def test_atomic_write_rejects_non_contiguous_buffers(tmp_path):
    target = str(tmp_path / "x.bin")
    with pytest.raises(TypeError, match="contiguous"):
        _core.atomic_write(names.temp_path(target), target, memoryview(b"abcdef")[::2], b"")


def test_atomic_write_missing_folder_reports_enoent(tmp_path):
    target = tmp_path / "missing" / "entry.bin"
    with pytest.raises(wc.FileWriteError) as info:
        _core.atomic_write(names.temp_path(str(target)), str(target), b"x", b"")
    assert info.value.errno == errno.ENOENT
    assert info.value.path == str(target)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_atomic_write_rename_failure_cleans_up(tmp_path):
    target = tmp_path / "a-folder"
    (target / "child").mkdir(parents=True)  # rename of a file over a non-empty folder fails
    with pytest.raises(wc.FileWriteError):
        _core.atomic_write(names.temp_path(str(target)), str(target), b"data", b"")
    assert sorted(os.listdir(tmp_path)) == ["a-folder"]
    assert os.listdir(target) == ["child"]


def test_atomic_write_never_opens_a_planted_link_at_its_temp_name(tmp_path):
    """A link planted at the exact temp name is refused (EEXIST), not followed."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "entry.bin"
    temp = names.temp_path(str(target))
    os.symlink(victim, temp)
    with pytest.raises(wc.FileWriteError) as info:
        _core.atomic_write(temp, str(target), b"payload", b"")
    assert info.value.errno == errno.EEXIST
    assert victim.read_text() == "precious"
    assert os.path.islink(temp) and not target.exists()
    # A dangling link there is not followed either (O_NOFOLLOW with O_EXCL).
    os.unlink(temp)
    os.symlink(tmp_path / "created-through-link", temp)
    with pytest.raises(wc.FileWriteError):
        _core.atomic_write(temp, str(target), b"payload", b"")
    assert not (tmp_path / "created-through-link").exists()


def test_save_picks_another_temp_name_past_a_planted_link(
    cache, key, engine, add_module, monkeypatch
):
    """FileSystemCache.save plants nothing through a link at the name it first tries."""
    path = str(cache.path(key, engine))
    os.makedirs(os.path.dirname(path))
    victim = cache.cache_dir.parent / "victim"
    victim.write_text("precious")
    suffixes = iter([b"\x01" * 8, b"\x02" * 8])
    monkeypatch.setattr(names.os, "urandom", lambda n: next(suffixes))
    planted = names.temp_path(path)  # takes the first suffix
    os.symlink(victim, planted)
    suffixes = iter([b"\x01" * 8, b"\x02" * 8])
    cache.save(key, engine, add_module)
    assert victim.read_text() == "precious"
    assert os.path.islink(planted)
    assert cache.contains(key, engine)


FAILED_SAVE_IN_A_CYCLE = """
import gc, os, sys, tempfile, wasmtime, wasmcache as wc
engine = wasmtime.Engine()
wasm = wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 7))')
cache = wc.FileSystemCache(tempfile.mkdtemp())
key = wc.ModuleHash.sha256(wasm)
open(os.path.dirname(cache.path(key, engine)), "w").close()  # a file where the folder goes
kept = []
for _ in range(3):
    module = wasmtime.Module(engine, wasm)  # its image is written without a copy
    try:
        cache.save(key, engine, module)
    except wc.FileWriteError as exc:
        exc.cycle = exc  # the traceback, and so the C call's frame, now lives in a cycle
        kept.append(exc)
    del module
kept.clear()
gc.collect()
print("collected", len(kept))
"""


def test_failed_write_leaves_no_buffer_exported(tmp_path):
    # A write that fails in C raises from a frame whose locals viewed the payload; once
    # the exception sits in a reference cycle, the garbage collector clears that frame.
    # Had the view still exported the payload's buffer, the zero-copy memoryview of
    # wasmtime's image could not be released and the collector crashed the interpreter.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FAILED_SAVE_IN_A_CYCLE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "collected 0"
    assert "exported buffer" not in done.stderr


def test_fs_magic_names_the_filesystem(tmp_path):
    if WINDOWS:  # no filesystem type numbers there: not available
        assert _core.fs_magic(str(tmp_path)) is None
        return
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    assert _core.fs_magic("/proc") == 0x9FA0  # PROC_SUPER_MAGIC
    with open("/proc/self/mountinfo") as mounts:
        types = {line.split(" - ")[1].split()[0] for line in mounts}
    if "tmpfs" in types and os.path.isdir("/dev/shm"):
        assert _core.fs_magic("/dev/shm") == 0x01021994  # TMPFS_MAGIC


def test_fs_magic_failure_is_a_typed_error(tmp_path):
    if WINDOWS:  # not available, for any path
        assert _core.fs_magic(str(tmp_path / "missing" / "x")) is None
        return
    with pytest.raises(wc.FileReadError) as caught:
        _core.fs_magic(str(tmp_path / "missing" / "x"))
    assert caught.value.errno == errno.ENOENT
    assert str(tmp_path / "missing") in str(caught.value)


def test_atomic_write_sets_an_explicit_mode_whatever_the_umask(tmp_path):
    target = str(tmp_path / "entry.bin")
    old = os.umask(0o077)
    try:
        _core.atomic_write(target + ".tmp", target, b"payload", b"tail")
        if not WINDOWS:  # (no mode bits there: the folder's DACL is inherited)
            assert os.stat(target).st_mode & 0o777 == 0o600  # 0644 less the umask
        _core.atomic_write(target + ".tmp", target, b"payload", b"tail", mode=0o640)
        if not WINDOWS:
            assert os.stat(target).st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    with open(target, "rb") as f:
        assert f.read() == b"payloadtail"
    with pytest.raises(ValueError):
        _core.atomic_write(target + ".tmp", target, b"x", b"", mode=0o10000)
    assert sorted(os.listdir(tmp_path)) == ["entry.bin"]


def test_mount_id_tells_mounts_apart(tmp_path):
    if WINDOWS:  # no mount ids there: not available
        fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
        try:
            assert _core.mount_id(fd) is None
        finally:
            os.close(fd)
        return
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux")
    here = os.open(str(tmp_path), os.O_RDONLY)
    proc = os.open("/proc/self/status", os.O_RDONLY)
    try:
        ours, theirs = _core.mount_id(here), _core.mount_id(proc)
        if ours is None:
            pytest.skip("this kernel gives no mount ids (before Linux 5.8)")
        if ours[0] == 0 and theirs is not None and theirs[0] == 0:
            pytest.skip("the system call's emulator leaves stx_mnt_id 0 (qemu-user 7.2)")
        assert not ours[1] or ours[0] >= 1 << 31  # a unique id is one the kernel numbered
        assert theirs is not None and ours[0] != theirs[0]
        assert _core.mount_id(here) == ours  # stable while mounted
    finally:
        os.close(here)
        os.close(proc)
    with pytest.raises(wc.FileReadError) as caught:
        _core.mount_id(here)  # closed now
    assert caught.value.errno == errno.EBADF


def test_backslash_is_part_of_a_name_on_posix():
    if os.name == "nt":
        pytest.skip("a POSIX rule")
    assert _core.temp_path(b"C:\\c\\x.bin", 1, 1) == b".C:\\c\\x.bin.1.0000000000000001.tmp"
    assert _core.temp_path(b"/c\\/x", 1, 1) == b"/c\\/.x.1.0000000000000001.tmp"
    assert _core.cache_path(b"C:\\c\\", b"e", 1, DIGEST) == b"C:\\c\\/e-v1/0001020304050607.bin"


def test_windows_separators_and_drives():
    if os.name != "nt":
        pytest.skip("a Windows rule")
    assert _core.temp_path(b"C:\\c\\x.bin", 1, 1) == b"C:\\c\\.x.bin.1.0000000000000001.tmp"
    assert _core.temp_path(b"C:x.bin", 1, 1) == b"C:.x.bin.1.0000000000000001.tmp"
    assert _core.cache_path(b"C:\\c\\", b"e", 1, DIGEST) == b"C:\\c\\e-v1\\0001020304050607.bin"
    assert _core.cache_path(b"C:", b"e", 1, DIGEST) == b"C:e-v1\\0001020304050607.bin"
    with pytest.raises(ValueError, match="unsafe or empty path component"):
        _core.cache_path(b"C:\\c", b"NUL.x", 1, DIGEST)


class _Unsupported:
    """The C core as a platform without statfs types or mount ids shows it."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def wmc_fs_magic(self, path, out, err_no):
        out[0] = 0
        return self._real.WMC_ERR_UNSUPPORTED

    def wmc_mount_id(self, fd, out, unique, err_no):
        return self._real.WMC_ERR_UNSUPPORTED


def test_missing_facilities_read_as_not_available(monkeypatch, tmp_path):
    monkeypatch.setattr(_core, "lib", _Unsupported(_core.lib))
    assert _core.fs_magic(str(tmp_path)) is None
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)  # (Windows opens no folder)
    try:
        assert _core.mount_id(fd) is None
    finally:
        os.close(fd)


def test_the_status_funnel():
    lib = _core.lib
    assert _core._check(lib.WMC_OK, what="x") is True
    assert _core._check(lib.WMC_ERR_UNSUPPORTED, optional=True, what="x") is False
    with pytest.raises(wc.CacheError, match=r"^not supported on this platform: asking"):
        _core._check(lib.WMC_ERR_UNSUPPORTED, what="asking")
    with pytest.raises(ValueError, match=r"^path too long"):
        _core._check(lib.WMC_ERR_PATH_TOO_LONG, optional=True, what="x")
    with pytest.raises(wc.FileWriteError) as caught:
        _core._check(lib.WMC_ERR_OS, optional=True, what="x", path="p", err_no=errno.EEXIST)
    assert caught.value.errno == errno.EEXIST
    assert isinstance(caught.value.__cause__, FileExistsError)


def test_the_c_core_tests_pass(tmp_path):
    """tests/c/test_core.c, built with the machine's C compiler against csrc/."""
    import shutil
    import subprocess
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not shutil.which(cc):
        pytest.skip(f"no C compiler ({cc})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    csrc = os.path.join(root, "csrc")
    sources = [os.path.join(csrc, n) for n in sorted(os.listdir(csrc)) if n.endswith(".c")]
    program = str(tmp_path / "test_core")
    build = subprocess.run(
        [cc, "-std=c11", "-O1", "-Wall", "-Wextra", "-I", csrc, *sources,
         os.path.join(root, "tests", "c", "test_core.c"), "-o", program],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(
        [program, str(tmp_path / "work")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.startswith("ok: ") and " 0 failed" in run.stdout
