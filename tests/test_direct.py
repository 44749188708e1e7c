"""Direct mode: the key of a Wasm file from its stamp, so a hit neither reads nor hashes it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from conftest import WINDOWS, call_add, windows_lacks
from support import Reads, forge_xxh64_collision
from wasmcache import base, direct, names
from wasmcache.hashing import DEFAULT_ALGORITHM


def default_key(data: bytes) -> wc.ModuleHash:
    """The key load_or_compile computes for ``data``."""
    return wc.ModuleHash.of(DEFAULT_ALGORITHM, data)


@pytest.fixture(scope="module")
def settled(tmp_path_factory) -> dict[str, Path]:
    """Wasm files whose mtime and ctime are past the racy window (made once, then waited
    for: a ctime cannot be set back)."""
    folder = tmp_path_factory.mktemp("settled")
    require_trusted(folder)
    victim, forged = forge_xxh64_collision()
    files = {}
    for name in "abcdefghijklmn":
        path = folder / f"{name}.wasm"
        path.write_bytes(victim)
        files[name] = path
    files["forged"] = folder / "forged.bin"
    files["forged"].write_bytes(forged)
    time.sleep(direct.RACY_SECONDS + 0.1)
    return files


def require_trusted(folder: Path) -> None:
    """Skip unless direct mode trusts stamps of files in ``folder`` by default."""
    if WINDOWS:
        pytest.skip("Windows: no filesystem type to trust stamps by (records need direct=True)")
    fd = os.open(folder, os.O_RDONLY)
    try:
        trusted = direct.stamps_trusted(fd, str(folder))
    finally:
        os.close(fd)
    if not trusted:
        pytest.skip(f"{folder} is not on a filesystem whose stamps direct mode trusts")


@pytest.fixture(autouse=True)
def fresh_memory():
    direct._memory.clear()
    yield
    direct._memory.clear()


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
    assert [r.name for r in records] == [names.INDEX_LOG]  # one log: no file per record
    assert records[0].read_bytes().count(b"\n") == 1


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
    other_stamp = ((1, 2, 3, 4, 5), direct.boot_id())
    record.write_bytes(direct._record_line(other_stamp, default_key(b"x")))
    direct._memory.clear()
    assert call_add(engine, cache.load_or_compile(engine, settled["d"])) == 5


def test_bytes_inputs_are_hashed(tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.contains(default_key(add_wasm), engine)
    assert not (cache.cache_dir / names.INDEX_FOLDER).exists()


def test_a_file_changed_after_its_stamp_compiles_what_it_holds(tmp_path, engine, monkeypatch):
    """The key came from the stamp, then the file changed before the miss read it: the
    module is compiled from the bytes read and saved under their key."""
    victim, forged = forge_xxh64_collision()
    source = tmp_path / "m.wasm"
    source.write_bytes(forged)
    monkeypatch.setattr(direct, "key_of_file", lambda *args, **kwargs: (default_key(victim), None))
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, source)) == 1337
    assert cache.contains(default_key(forged), engine)
    assert not cache.contains(default_key(victim), engine)


def test_clear_removes_records(settled, tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, settled["a"])
    assert (cache.cache_dir / names.INDEX_FOLDER).exists()
    assert cache.wait_housekeeping(timeout=60)
    assert cache.flush_metrics()
    cache.clear()
    assert [p.name for p in cache.cache_dir.iterdir()] == [names.METRICS]  # counters stay


def test_memory_cache_direct_mode_stays_in_memory(settled, monkeypatch):
    reads = Reads(monkeypatch)
    engine = wasmtime.Engine()
    memory = wc.MemoryCache()
    for _ in range(3):
        assert call_add(engine, memory.load_or_compile(engine, settled["a"])) == 5
    assert reads.count == 1


# -- the racy rule -----------------------------------------------------------------------

RACY_NS = int(direct.RACY_SECONDS * 1e9)


class FakeClock:
    """direct's clock, moved by hand; each read of a Wasm source takes ``read_ns``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: int, read_ns: int) -> None:
        self.now = start
        self.reads = 0
        monkeypatch.setattr(direct, "_clock", lambda: self.now)
        real = direct.read_source

        def slow_read(path: str, fd=None):  # type: ignore[no-untyped-def]
            self.reads += 1
            self.now += read_ns
            return real(path, fd)

        monkeypatch.setattr(direct, "read_source", slow_read)


@pytest.mark.parametrize("mtime_offset", [-RACY_NS // 2, RACY_NS // 2])
def test_a_stamp_racy_when_the_read_began_is_not_remembered(
    tmp_path, monkeypatch, engine, add_wasm, mtime_offset
):
    """The clock is read before the file: a stamp inside the racy window then is not
    remembered, even if the read ends past the window (a write during the read could
    have kept the stamp)."""
    require_trusted(tmp_path)
    source = tmp_path / "racy.wasm"
    source.write_bytes(add_wasm)
    now = time.time_ns()
    os.utime(source, ns=(now, now + mtime_offset))  # mtime set into the window
    info = os.stat(source)
    newest = max(info.st_mtime_ns, info.st_ctime_ns)
    clock = FakeClock(monkeypatch, start=newest + RACY_NS // 2, read_ns=RACY_NS)
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, source)) == 5
    assert clock.now - newest > RACY_NS  # past the window once the read ended
    assert direct._memory == {}
    assert not (cache.cache_dir / names.INDEX_FOLDER).exists()
    assert call_add(engine, cache.load_or_compile(engine, source)) == 5
    assert clock.reads == 2


def test_a_stamp_settled_when_the_read_began_is_remembered(tmp_path, monkeypatch, engine, add_wasm):
    require_trusted(tmp_path)
    source = tmp_path / "settled.wasm"
    source.write_bytes(add_wasm)
    info = os.stat(source)
    clock = FakeClock(
        monkeypatch, start=max(info.st_mtime_ns, info.st_ctime_ns) + RACY_NS, read_ns=RACY_NS
    )
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, source)) == 5
    assert clock.reads == 1
    assert len(list((cache.cache_dir / names.INDEX_FOLDER).iterdir())) == 1


# -- the setting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda d: wc.FileSystemCache(d, direct=False),
        lambda d: wc.MemoryCache(direct=False),
        lambda d: wc.MemoryCache().with_fallback(wc.FileSystemCache(d, direct=False)),
        lambda d: wc.FallbackCache(wc.MemoryCache(), wc.FileSystemCache(d), direct=False),
    ],
    ids=["filesystem", "memory", "fallback-part", "fallback"],
)
def test_direct_false_reads_every_time(settled, tmp_path, monkeypatch, engine, make):
    reads = Reads(monkeypatch)
    cache = make(tmp_path / "c")
    assert cache.direct is False
    for expected in (1, 2, 3):
        assert call_add(engine, cache.load_or_compile(engine, settled["e"])) == 5
        assert reads.count == expected
    assert not (tmp_path / "c" / names.INDEX_FOLDER).exists()


@pytest.mark.parametrize(
    "value, expected", [("0", False), ("1", True), ("auto", None), ("", None), (" AUTO ", None)]
)
def test_the_environment_sets_direct_mode(monkeypatch, tmp_path, value, expected):
    monkeypatch.setenv(direct.ENV_VARIABLE, value)
    assert wc.FileSystemCache(tmp_path / "c").direct is expected
    assert wc.MemoryCache().direct is expected
    assert wc.FileSystemCache(tmp_path / "c", direct=True).direct is True  # the argument wins
    assert wc.MemoryCache(direct=False).direct is False


def test_the_environment_turns_direct_mode_off(settled, tmp_path, monkeypatch, engine):
    monkeypatch.setenv(direct.ENV_VARIABLE, "0")
    reads = Reads(monkeypatch)
    cache = wc.MemoryCache().with_fallback(wc.FileSystemCache(tmp_path / "c"))
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, settled["f"])) == 5
    assert reads.count == 2


@pytest.mark.parametrize("value", ["yes", "2", "true", "off"])
def test_a_bad_environment_value_is_a_value_error_at_construction(monkeypatch, tmp_path, value):
    monkeypatch.setenv(direct.ENV_VARIABLE, value)
    for make in (
        lambda: wc.FileSystemCache(tmp_path / "c"),
        wc.MemoryCache,
        lambda: wc.FallbackCache(wc.MemoryCache(direct=True), wc.MemoryCache(direct=True)),
    ):
        with pytest.raises(ValueError, match=direct.ENV_VARIABLE):
            make()


def test_a_bad_direct_argument_is_a_type_error(tmp_path):
    with pytest.raises(TypeError):
        wc.FileSystemCache(tmp_path / "c", direct="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wc.MemoryCache(direct=1)  # type: ignore[arg-type]


def test_a_fallback_stack_takes_its_parts_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(direct.ENV_VARIABLE, raising=False)
    auto, on, off = wc.MemoryCache(), wc.MemoryCache(direct=True), wc.MemoryCache(direct=False)
    assert auto.with_fallback(wc.MemoryCache()).direct is None
    assert auto.with_fallback(on).direct is True
    assert on.with_fallback(off).direct is False  # off wins
    assert wc.FallbackCache(off, off, direct=True).direct is True


# -- which filesystems are trusted -------------------------------------------------------

SQUASHFS, FUSE, NFS, CIFS, SMB2, V9FS, VFAT, EXFAT, OVERLAYFS = (
    0x73717368,
    0x65735546,
    0x6969,
    0xFF534D42,
    0xFE534D42,
    0x01021997,
    0x4D44,
    0x2011BAB0,
    0x794C7630,
)


@pytest.mark.parametrize(
    "magic, trusted",
    [
        (0xEF53, True),  # ext2/3/4
        (0x58465342, True),  # xfs
        (0x9123683E, True),  # btrfs
        (0x01021994, True),  # tmpfs
        (0x2FC12FC1, True),  # zfs
        (0xF2F52010, True),  # f2fs
        (SQUASHFS, False),
        (FUSE, False),
        (NFS, False),
        (CIFS, False),
        (SMB2, False),
        (V9FS, False),
        (VFAT, False),
        (EXFAT, False),
        (OVERLAYFS, False),
        (None, False),  # a platform without filesystem type numbers
    ],
)
def test_stamps_are_trusted_by_filesystem_type(
    settled, tmp_path, monkeypatch, engine, magic, trusted
):
    asked = []

    def fs_magic(path: str):  # type: ignore[no-untyped-def]
        asked.append(path)
        return magic

    monkeypatch.setattr(direct._core, "fs_magic", fs_magic)
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(3):
        assert call_add(engine, cache.load_or_compile(engine, settled["g"])) == 5
    assert reads.count == (1 if trusted else 3)
    assert (cache.cache_dir / names.INDEX_FOLDER).exists() is trusted
    assert asked  # asked on every call: a mount may change between two
    direct._memory.clear()
    forced = wc.FileSystemCache(tmp_path / "forced", direct=True)
    for _ in range(2):
        forced.load_or_compile(engine, settled["g"])
    assert reads.count == (1 if trusted else 3) + 1  # direct=True trusts any filesystem


def test_a_filesystem_that_cannot_be_asked_is_not_trusted(settled, tmp_path, monkeypatch, engine):
    def failing(path: str):  # type: ignore[no-untyped-def]
        raise wc.FileReadError("cannot ask", path, 5)

    monkeypatch.setattr(direct._core, "fs_magic", failing)
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, settled["g"])) == 5
    assert reads.count == 2


def test_a_read_only_mount_is_not_trusted(settled, tmp_path, monkeypatch, engine):
    """A read-only mount is typically an image: its times and inode numbers were chosen
    when it was built, and another image mounted in its place can repeat them."""
    real = os.fstatvfs

    def read_only(fd: int) -> object:
        info = real(fd)

        class Info:
            f_flag = info.f_flag | os.ST_RDONLY

        return Info()

    monkeypatch.setattr(direct.os, "fstatvfs", read_only)
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, settled["h"])) == 5
    assert reads.count == 2


# -- an explicit key ---------------------------------------------------------------------


def test_an_explicit_key_is_used_for_a_path(settled, tmp_path, monkeypatch, engine):
    compiles = []
    real = base.kinds.compile

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        compiles.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(base.kinds, "compile", counting)
    key = default_key(b"a key of the caller's choosing")
    for make in (lambda: wc.FileSystemCache(tmp_path / "c"), wc.MemoryCache):
        compiles.clear()
        cache = make()
        for _ in range(3):
            assert call_add(engine, cache.load_or_compile(engine, settled["i"], key=key)) == 5
        assert len(compiles) == 1
        assert cache.contains(key, engine)
        assert not cache.contains(default_key(settled["i"].read_bytes()), engine)


# -- the records of a stack --------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys

    import wasmtime

    import wasmcache as wc
    from wasmcache import direct


    def no_reads(*args, **kwargs):
        raise AssertionError("the Wasm file was read")


    direct.read_source = no_reads
    engine = wasmtime.Engine()
    stack = wc.MemoryCache().with_fallback(wc.FileSystemCache(sys.argv[1]))
    module = stack.load_or_compile(engine, sys.argv[2])
    store = wasmtime.Store(engine)
    print(wasmtime.Instance(store, module, []).exports(store)["add"](store, 2, 3))
    """
)


def test_a_memory_and_disk_stack_keeps_records_on_disk(settled, tmp_path, engine):
    """A new process finds the file's key in the disk tier's index: the child fails if
    it reads the Wasm file."""
    stack = wc.MemoryCache().with_fallback(wc.FileSystemCache(tmp_path / "c"))
    assert call_add(engine, stack.load_or_compile(engine, settled["j"])) == 5
    records = list((tmp_path / "c" / names.INDEX_FOLDER).iterdir())
    assert len(records) == 1
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "c"), str(settled["j"])],
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "5\n"


# -- the index under the privacy rule ----------------------------------------------------

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="Windows: no POSIX users" if WINDOWS else "plants files as another user",
)


def _forged_cache(tmp_path: Path, settled: dict[str, Path], engine: wasmtime.Engine):
    """A cache holding the forged module (add = 1337) under its own key."""
    cache = wc.FileSystemCache(tmp_path / "c")
    forged = settled["forged"].read_bytes()
    key = default_key(forged)
    cache.save(key, engine, wasmtime.Module(engine, forged))
    return cache, key


def marked(path: Path) -> direct.Mark:
    """The stamp of ``path`` with its mount, as direct mode keys its records."""
    fd = os.open(path, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        mount = direct.mount_of(fd, info)
    finally:
        os.close(fd)
    assert mount is not None
    return direct.stamp_of(info), mount


def _plant(folder: Path, source: Path, key: wc.ModuleHash, uid: int) -> Path:
    """An index log in ``folder`` mapping the stamp of ``source`` to ``key`` (a well-formed
    line, after another), owned by ``uid``."""
    stamp = marked(source)
    record = folder / names.INDEX_LOG
    other = direct._record_line(((1, 2, 3, 4, 5), stamp[1]), key)
    record.write_bytes(other + direct._record_line(stamp, key))
    os.chown(record, uid, uid)
    return record


#: Who planted the record: user nobody (both rules refuse it), or root (a record that
#: passes the entry rule: only the folder rule refuses it).
PLANTERS = pytest.mark.parametrize("planter", ["nobody", "root"])


def _uid(planter: str) -> int:
    import pwd

    return pwd.getpwnam(planter).pw_uid


@needs_root
@PLANTERS
def test_a_world_writable_index_is_not_used(
    settled, tmp_path, engine, monkeypatch, caplog, planter
):
    cache, forged_key = _forged_cache(tmp_path, settled, engine)
    index = cache.cache_dir / names.INDEX_FOLDER
    index.mkdir()
    index.chmod(0o777)
    _plant(index, settled["k"], forged_key, _uid(planter))
    reads = Reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        for _ in range(3):
            assert call_add(engine, cache.load_or_compile(engine, settled["k"])) == 5
    assert reads.count == 1  # the records stayed in memory
    assert caplog.text.count("not using direct-mode records") == 1
    assert len(list(index.iterdir())) == 1  # nothing written there


@needs_root
@PLANTERS
def test_an_index_linked_elsewhere_is_not_used(settled, tmp_path, engine, planter):
    cache, forged_key = _forged_cache(tmp_path, settled, engine)
    elsewhere = tmp_path / "x"
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    _plant(elsewhere, settled["l"], forged_key, _uid(planter))
    (cache.cache_dir / names.INDEX_FOLDER).symlink_to(elsewhere)
    assert call_add(engine, cache.load_or_compile(engine, settled["l"])) == 5
    assert len(list(elsewhere.iterdir())) == 1


@needs_root
@pytest.mark.parametrize("flaw", ["owner", "mode", "links"])
def test_a_record_breaking_the_entry_rule_is_not_trusted(settled, tmp_path, engine, flaw):
    cache, forged_key = _forged_cache(tmp_path, settled, engine)
    index = cache.cache_dir / names.INDEX_FOLDER
    index.mkdir(mode=0o700)
    record = _plant(index, settled["m"], forged_key, _uid("nobody" if flaw == "owner" else "root"))
    if flaw == "mode":
        record.chmod(0o666)
    if flaw == "links":
        os.link(record, tmp_path / "second-name")
    assert call_add(engine, cache.load_or_compile(engine, settled["m"])) == 5


@needs_root
def test_a_private_index_with_a_planted_record_by_root_still_hits(settled, tmp_path, engine):
    """The control for the tests above: the same record, ours, in a private index is used."""
    cache, forged_key = _forged_cache(tmp_path, settled, engine)
    index = cache.cache_dir / names.INDEX_FOLDER
    index.mkdir(mode=0o700)
    _plant(index, settled["n"], forged_key, 0)
    assert call_add(engine, cache.load_or_compile(engine, settled["n"])) == 1337


def test_a_shared_group_index_may_be_group_writable(settled, tmp_path, engine, monkeypatch):
    cache_dir = tmp_path / "c"
    cache_dir.mkdir(mode=0o770)
    cache_dir.chmod(0o770)
    wc.FileSystemCache(cache_dir, shared_group=True).load_or_compile(engine, settled["a"])
    index = cache_dir / names.INDEX_FOLDER
    index.chmod(0o770)
    direct._memory.clear()
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(cache_dir, shared_group=True)
    assert call_add(engine, cache.load_or_compile(engine, settled["a"])) == 5
    assert reads.count == 0
    index.chmod(0o777)
    direct._memory.clear()
    cache = wc.FileSystemCache(cache_dir, shared_group=True)
    assert call_add(engine, cache.load_or_compile(engine, settled["a"])) == 5
    assert reads.count == 1


# -- a FIFO swapped in between the stat and the open ---------------------------------------


@windows_lacks("no FIFOs (os.mkfifo)")
def test_a_descriptor_with_nothing_to_give_is_a_source_error(tmp_path):
    """A non-blocking read of an empty FIFO whose writer stays open gives no data at all:
    a SourceError naming the path, not a hash of None."""
    fifo = tmp_path / "app.wasm"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer that never writes
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(wc.SourceError, match=r"app\.wasm"):
            direct.read_source(str(fifo), reader)
    finally:
        os.close(reader)
        os.close(writer)


@windows_lacks("no FIFOs (os.mkfifo)")
def test_a_fifo_swapped_in_after_the_stat_is_read_as_a_stream(tmp_path, monkeypatch):
    """The stat sees a regular file, the open gets a FIFO: the descriptor is read
    blocking (as a pipe is), the key is that of the bytes that came through it, and
    nothing is stamped."""
    wasm = wasmtime.wat2wasm("(module)")
    regular = tmp_path / "regular.wasm"
    regular.write_bytes(wasm)
    fifo = tmp_path / "app.wasm"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # held open: a non-blocking read would find nothing
    real_stat, real_read = os.stat, direct.read_source
    seen = []

    def stat_of_the_regular_file(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real_stat(regular if os.fspath(path) == str(fifo) else path, *args, **kwargs)

    def read_then(path, fd=None):  # type: ignore[no-untyped-def]
        seen.append(fd is not None and os.get_blocking(fd))
        os.write(writer, wasm)
        os.close(writer)  # the stream ends: a blocking read returns
        return real_read(path, fd)

    monkeypatch.setattr(direct.os, "stat", stat_of_the_regular_file)
    monkeypatch.setattr(direct, "read_source", read_then)
    index = direct.Index(str(tmp_path / "c"))
    key, data = direct.key_of_file(str(fifo), DEFAULT_ALGORITHM, index, direct=True)
    assert seen == [True]  # read from a blocking descriptor
    assert (key, data) == (default_key(wasm), wasm)
    assert direct._memory == {}
    assert not os.path.exists(index.path)


# -- what a hit costs at start-up -----------------------------------------------------------


def test_record_names_are_the_sha256_of_the_stamp():
    """The digest that names a record is SHA-256 as hashlib computes it, whichever module
    computes it (records written by either are found by the other)."""
    import hashlib

    stamp = ((2049, 1234567, 13616, 1_700_000_000_123456789, 1_700_000_001_987654321), "b m")
    text = "blake3:2049 1234567 13616 1700000000123456789 1700000001987654321 b m"
    assert direct._record_name(stamp, "blake3") == hashlib.sha256(text.encode()).hexdigest()


def test_a_warm_hit_imports_neither_hashlib_nor_json(settled, tmp_path):
    """A hit through a file's record needs no OpenSSL (hashlib), no JSON parser and no
    logging: each costs milliseconds at every start of a short program."""
    cache = tmp_path / "c"
    code = textwrap.dedent(
        f"""
        import sys, wasmtime
        import wasmcache as wc
        engine = wasmtime.Engine()
        wc.FileSystemCache({str(cache)!r}).load_or_compile(engine, {str(settled["m"])!r})
        if sys.argv[1] == "warm":
            print(sorted(m for m in ("hashlib", "_hashlib", "json", "logging") if m in sys.modules))
        """
    )
    for phase in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, "-c", code, phase], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_a_record_is_read_only_from_a_whole_well_formed_line():
    """The log is read back line by line: for a stamp's digest, the last line that is
    whole and well formed wins; damaged lines, lines of another algorithm and the digest
    inside another line are passed over."""
    digest = b"ab" * 32
    good = b"cd" * 32
    older = f"{digest.decode()} blake3 {good.decode()}\n".encode()
    damaged = [
        digest + b" blake3 " + good[:-1] + b"\n",  # odd number of hex digits
        digest + b" blake3 " + good.upper() + b"\n",  # uppercase
        digest + b" blake3 " + b"cd" * 7 + b"\n",  # too short a key
        digest + b" blake3 " + b"cd" * 65 + b"\n",  # too long a key
        digest + b" blake3 " + b"cd" * 8 + b"\n",  # a key too short for its algorithm
        digest + b" sha256 " + good + b"\n",  # another algorithm
        digest + b" blake3 " + good + b" x\n",  # a field more
        digest + b" blake3  " + good + b"\n",  # two spaces
        b"0" + digest + b" blake3 " + good + b"\n",  # inside another line's name
        digest + b"0 blake3 " + good + b"\n",  # a longer name
        digest + b" blake3 " + good,  # not ended: a record being appended
    ]
    for line in damaged:
        found = direct._find(older + line, digest, "blake3")
        assert found == wc.ModuleHash("blake3", bytes.fromhex(good.decode())), line
    assert direct._find(b"".join(damaged), digest, "blake3") is None
    newer = f"{digest.decode()} blake3 {'ef' * 32}\n".encode()
    assert direct._find(older + newer, digest, "blake3").digest == bytes.fromhex("ef" * 32)
