"""Trust: nobody but the user can choose what a key maps to, and nothing in a cache folder
is followed, blocked on, or read without bound."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
import wasmtime
import xxhash

import support
import wasmcache as wc
from conftest import WINDOWS, call_add, windows_lacks
from support import VICTIM_WAT, forge_xxh64_collision
from wasmcache import direct, lzw, names, winsec
from wasmcache.hashing import DEFAULT_ALGORITHM

if TYPE_CHECKING:
    import pwd


def default_key(data: bytes) -> wc.ModuleHash:
    """The key load_or_compile computes for ``data``."""
    return wc.ModuleHash.of(DEFAULT_ALGORITHM, data)


# -- an XXH64 collision -------------------------------------------------------------------


@pytest.fixture(scope="module")
def collision() -> tuple[bytes, bytes]:
    victim, forged = forge_xxh64_collision()
    assert victim != forged and len(victim) == len(forged)
    assert xxhash.xxh64_intdigest(victim) == xxhash.xxh64_intdigest(forged)
    return victim, forged


@pytest.mark.parametrize("tier", ["filesystem", "memory", "fallback"])
def test_default_key_keeps_an_xxh64_collision_apart(tier, collision, tmp_path):
    victim, forged = collision
    engine = wasmtime.Engine()
    cache = {
        "filesystem": lambda: wc.FileSystemCache(tmp_path / "c"),
        "memory": wc.MemoryCache,
        "fallback": lambda: wc.MemoryCache().with_fallback(wc.FileSystemCache(tmp_path / "c")),
    }[tier]()
    assert call_add(engine, cache.load_or_compile(engine, forged)) == 1337
    assert call_add(engine, cache.load_or_compile(engine, victim)) == 5
    # from paths too (direct mode)
    (tmp_path / "victim.wasm").write_bytes(victim)
    assert call_add(engine, cache.load_or_compile(engine, tmp_path / "victim.wasm")) == 5


def test_an_explicit_xxh64_key_is_the_callers_choice(collision, tmp_path):
    """Documented: with XXH64 keys, whoever supplies one module picks the code of the other."""
    victim, forged = collision
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, forged, key=wc.ModuleHash.xxhash(forged))
    module = cache.load_or_compile(engine, victim, key=wc.ModuleHash.xxhash(victim))
    assert call_add(engine, module) == 1337


# -- a private cache ------------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="Windows: no POSIX users" if WINDOWS else "needs root to act as another user",
)


def _nobody() -> pwd.struct_passwd:
    import pwd

    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")


def _as_user(user: pwd.struct_passwd, work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child that has become ``user`` (the interpreter and
    wasmtime are already loaded: another user cannot read root's Python); return what it
    returned, or raise with its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            answer = "ok " + work()
        except BaseException as exc:
            answer = f"error {type(exc).__name__}: {exc}"
            code = 1
        os.write(write, answer.encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return answer[3:]


@pytest.fixture
def shared_tmp():
    """A folder that other users can reach and make folders in, as /tmp (pytest's own are
    root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="wasmcache-trust-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@needs_root
def test_a_folder_filled_by_another_user_is_refused(shared_tmp, collision, caplog):
    victim, forged = collision
    nobody = _nobody()
    engine = wasmtime.Engine()
    key = default_key(victim)
    forged_module = wasmtime.Module(engine, forged)
    wc.engine_id(engine)

    def plant() -> str:
        wc.FileSystemCache(shared_tmp / "cache").save(key, engine, forged_module)
        return "planted"

    assert _as_user(nobody, plant) == "planted"
    cache = wc.FileSystemCache(shared_tmp / "cache")
    assert (shared_tmp / "cache").stat().st_uid == nobody.pw_uid
    with pytest.raises(wc.UnsafeCacheError) as info:
        cache.load(key, engine)
    message = str(info.value)
    assert str(shared_tmp / "cache") in message and f"uid {nobody.pw_uid}" in message
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        assert call_add(engine, cache.load_or_compile(engine, victim)) == 5
        assert call_add(engine, cache.load_or_compile(engine, victim)) == 5
    assert caplog.text.count("not using the cache") == 1  # warned once


@needs_root
def test_a_root_owned_read_only_cache_serves_other_users(shared_tmp, add_wasm):
    cache = wc.FileSystemCache(shared_tmp / "image-cache")
    engine = wasmtime.Engine()
    cache.save(default_key(add_wasm), engine, wasmtime.Module(engine, add_wasm))
    for path in [cache.cache_dir, *cache.cache_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    def use() -> str:
        assert os.geteuid() != 0
        reader = wc.FileSystemCache(cache.cache_dir)
        module = reader.load(default_key(add_wasm), engine)  # a hit, not a miss
        return f"add {call_add(engine, module)}"

    assert _as_user(_nobody(), use) == "add 5"


def test_group_or_world_writable_folders_are_refused(tmp_path, key, engine, add_module):
    folder = tmp_path / "c"
    wc.FileSystemCache(folder).save(key, engine, add_module)
    for mode in (0o770, 0o707, 0o777):
        folder.chmod(mode)
        with pytest.raises(wc.UnsafeCacheError, match=r"writable by group or others.*chmod 700"):
            wc.FileSystemCache(folder).load(key, engine)
    folder.chmod(0o770)
    assert call_add(engine, wc.FileSystemCache(folder, shared_group=True).load(key, engine)) == 5
    folder.chmod(0o777)
    with pytest.raises(wc.UnsafeCacheError, match="writable by others"):
        wc.FileSystemCache(folder, shared_group=True).load(key, engine)
    folder.chmod(0o700)
    engine_dir = wc.FileSystemCache(folder).path(key, engine).parent
    engine_dir.chmod(0o777)
    with pytest.raises(wc.UnsafeCacheError, match=str(engine_dir)):
        wc.FileSystemCache(folder).load(key, engine)


def test_new_folders_are_private(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "new" / "cache")
    cache.save(key, engine, add_module)
    for folder in (cache.cache_dir, cache.path(key, engine).parent):
        if WINDOWS:  # no mode bits: the owner and DACL
            assert winsec.folder_problem(str(folder)) is None
        else:
            assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0


def test_a_symlinked_engine_folder_is_refused(cache, key, engine, add_module, tmp_path):
    elsewhere = wc.FileSystemCache(tmp_path / "elsewhere")
    elsewhere.save(key, engine, add_module)
    link = cache.path(key, engine).parent
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere.path(key, engine).parent)
    with pytest.raises(wc.UnsafeCacheError, match="symbolic link"):
        cache.load(key, engine)
    with pytest.raises(wc.UnsafeCacheError):
        cache.save(key, engine, add_module)


def test_a_symlinked_cache_folder_is_resolved_once(tmp_path, key, engine, add_module):
    """A link given as the cache folder is the user's choice: it is resolved when the cache
    is made, so later changes of the link do not move the cache."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    cache = wc.FileSystemCache(link)
    assert cache.cache_dir == real
    cache.save(key, engine, add_module)
    link.unlink()
    link.symlink_to(tmp_path)
    assert cache.contains(key, engine)


def test_a_hard_linked_entry_is_not_loaded(cache, engine, add_module, add_wasm, tmp_path):
    key = default_key(add_wasm)
    cache.save(key, engine, add_module)
    os.link(cache.path(key, engine), tmp_path / "second-name")
    with pytest.raises(wc.UnsafeEntryError, match="2 links"):
        cache.load(key, engine)
    # load_or_compile compiles instead and its save replaces the entry
    assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    assert cache.path(key, engine).stat().st_nlink == 1
    assert call_add(engine, cache.load(key, engine)) == 5


def test_a_writable_entry_is_not_loaded(cache, key, engine, add_module):
    cache.save(key, engine, add_module)
    cache.path(key, engine).chmod(0o666)
    with pytest.raises(wc.UnsafeEntryError, match="writable"):
        cache.load(key, engine)


# -- nothing followed --------------------------------------------------------------------


@pytest.fixture
def root_only(tmp_path: Path) -> Path:
    """A folder a planted link points into: nothing may appear there."""
    folder = tmp_path / "root-only"
    folder.mkdir(mode=0o700)
    return folder


def test_a_link_at_the_lock_name_is_not_followed(tmp_path, add_wasm, root_only):
    cache = wc.FileSystemCache(tmp_path / "c")
    engine = wasmtime.Engine()
    key = default_key(add_wasm)
    lock = Path(names.lock_path(str(cache.path(key, engine))))
    lock.parent.mkdir(parents=True, mode=0o700)
    lock.symlink_to(root_only / "created-through-link")
    assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    assert list(root_only.iterdir()) == []
    assert lock.is_symlink()


def test_links_at_the_prune_lock_and_stamp_are_not_followed(tmp_path, engine, root_only):
    folder = tmp_path / "c"
    folder.mkdir(mode=0o700)
    for name in (names.PRUNE_LOCK, names.PRUNE_STAMP):
        (folder / name).symlink_to(root_only / name)
    cache = wc.FileSystemCache(folder, max_bytes=1, prune_interval=0)
    wasm = wasmtime.wat2wasm(VICTIM_WAT)
    cache.save(default_key(wasm), engine, wasmtime.Module(engine, wasm))
    assert list(root_only.iterdir()) == []


def test_a_link_at_an_index_record_is_not_followed(tmp_path, add_wasm, root_only):
    """Direct mode neither reads a record through a link nor writes one through it."""
    source = tmp_path / "add.wasm"
    source.write_bytes(add_wasm)
    old = time.time() - 60
    os.utime(source, (old, old))
    info = os.stat(source)
    if time.time() - info.st_ctime < direct.RACY_SECONDS:
        time.sleep(direct.RACY_SECONDS)  # ctime cannot be set back
    cache_dir = tmp_path / "c"
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(cache_dir)
    cache.save(default_key(add_wasm), engine, wasmtime.Module(engine, add_wasm))
    record = Path(names.index_log_path(str(cache.cache_dir)))
    record.parent.mkdir(mode=0o700)
    forged = root_only / "record"
    fd = os.open(source, os.O_RDONLY)
    try:
        mark = (direct.stamp_of(os.fstat(fd)), direct.mount_of(fd, os.fstat(fd)) or "")
    finally:
        os.close(fd)
    planted = direct._record_line(mark, default_key(b"x"))
    forged.write_bytes(planted)
    record.symlink_to(forged)
    direct._memory.clear()
    assert call_add(engine, cache.load_or_compile(engine, source)) == 5
    assert not record.is_symlink()  # replaced by a real log, the link's target untouched
    assert forged.read_bytes() == planted
    assert planted not in record.read_bytes()


@windows_lacks("no FIFOs (os.mkfifo)")
def test_a_fifo_at_an_entry_name_answers_at_once(cache, engine, add_module, add_wasm):
    key = default_key(add_wasm)
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(path)
    outcome: dict[str, object] = {}

    def use() -> None:
        try:
            with pytest.raises(wc.FileReadError, match="FIFO"):
                cache.load(key, engine)
            assert not cache.contains(key, engine)
            bad = cache.verify_entries()
            assert [(e.path, reason) for e, reason in bad] == [(path, "not a regular file")]
            assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5  # replaces it
            assert stat.S_ISREG(path.stat().st_mode)
            os.unlink(path)
            os.mkfifo(path)
            assert cache.clear() == 1 and not os.path.lexists(path)
            outcome["ok"] = True
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=use, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "blocked on a FIFO"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    assert outcome == {"ok": True}


@windows_lacks("no FIFOs (os.mkfifo)")
def test_verify_fix_removes_a_fifo_and_a_link(cache, key, engine, root_only):
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(path)
    other = path.with_name("A" * 64 + ".bin")
    other.symlink_to(root_only / "x")
    bad = cache.verify_entries(fix=True)
    assert sorted(str(e.path) for e, _ in bad) == sorted([str(path), str(other)])
    assert not os.path.lexists(path) and not os.path.lexists(other)


# -- per-Engine memory tier ---------------------------------------------------------------------


def test_two_engines_through_memory_then_disk(tmp_path, add_wasm):
    stack = wc.MemoryCache().with_fallback(wc.FileSystemCache(tmp_path / "c"))
    first, second = wasmtime.Engine(), wasmtime.Engine()
    assert wc.engine_id(first) == wc.engine_id(second)
    assert call_add(first, stack.load_or_compile(first, add_wasm)) == 5
    module = stack.load_or_compile(second, add_wasm)  # "cross-Engine" before
    assert call_add(second, module) == 5
    memory = stack.primary
    assert isinstance(memory, wc.MemoryCache) and len(memory) == 2


def test_memory_cache_lets_engines_go(add_wasm):
    import gc
    import weakref

    memory = wc.MemoryCache()
    engine = wasmtime.Engine()
    memory.save(default_key(add_wasm), engine, wasmtime.Module(engine, add_wasm))
    gone = weakref.ref(engine)
    del engine
    gc.collect()
    assert gone() is None  # the cache does not keep the Engine alive...
    assert len(memory) == 0  # ...and its modules went with it


# -- locks that stay locks -------------------------------------------------------------------


_HOLDER = """
import sys, wasmtime, wasmcache as wc
cache = wc.FileSystemCache({cache!r})
key = wc.ModuleHash.parse({key!r})
with cache.compile_lock(key, wasmtime.Engine()):
    print("locked", flush=True)
    sys.stdin.readline()
"""

_WAITER = """
import sys, time, wasmtime, wasmcache as wc
cache = wc.FileSystemCache({cache!r})
key = wc.ModuleHash.parse({key!r})
start = time.monotonic()
with cache.compile_lock(key, wasmtime.Engine()):
    print("got", time.monotonic() - start, flush=True)
"""


@pytest.mark.parametrize("housekeeping", ["clear", "prune", "cleanup"])
def test_housekeeping_keeps_a_held_lock(housekeeping, tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.save(key, engine, add_module)
    params = {"cache": str(cache.cache_dir), "key": str(key)}
    holder = support.start_holder(_HOLDER.format(**params))
    try:
        lock = Path(names.lock_path(str(cache.path(key, engine))))
        old = time.time() - 7200
        os.utime(lock, (old, old))
        {"clear": cache.clear, "prune": lambda: cache.prune(0), "cleanup": cache.cleanup}[
            housekeeping
        ]()
        assert lock.exists()
        waiter = subprocess.Popen(
            [sys.executable, "-c", _WAITER.format(**params)], stdout=subprocess.PIPE, text=True
        )
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.communicate(timeout=3)  # still waits for the holder
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, _ = waiter.communicate(timeout=60)
        assert out.startswith("got")
    finally:
        holder.kill()
        holder.wait()


def test_a_released_compile_lock_leaves_no_file(tmp_path, key, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    lock = Path(names.lock_path(str(cache.path(key, engine))))
    with cache.compile_lock(key, engine):
        assert lock.exists()
    assert not lock.exists()  # removed by its holder, under its flock


def test_a_free_lock_file_is_removed_by_cleanup(tmp_path, key, engine, add_module):
    """A lock file left behind (a holder killed before its release) goes with cleanup."""
    cache = wc.FileSystemCache(tmp_path / "c")
    lock = Path(names.lock_path(str(cache.path(key, engine))))
    with cache.compile_lock(key, engine):
        os.link(lock, tmp_path / "kept")  # so that the file outlives its release
    os.rename(tmp_path / "kept", lock)
    assert lock.exists()
    assert cache.cleanup(older_than=0) == 1
    assert not lock.exists()


@windows_lacks("no flock (LockFileEx locks instead)")
def test_a_failing_flock_degrades_to_the_thread_lock(
    tmp_path, key, engine, add_wasm, monkeypatch, caplog
):
    from wasmcache import locks

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    monkeypatch.setattr(locks, "_flock_warned", False)
    cache = wc.FileSystemCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
        with cache.compile_lock(default_key(b"other"), engine):
            pass
    assert caplog.text.count("file locks do not work") == 1


# -- saves survive concurrent pruning --------------------------------------------------------


def test_saves_survive_aggressive_pruning(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    modules = []
    for i in range(4):
        wasm = wasmtime.wat2wasm(f'(module (func (export "f") (result i32) i32.const {i}))')
        modules.append((default_key(wasm), wasmtime.Module(engine, wasm)))
    stop = threading.Event()
    failures: list[BaseException] = []

    def prune() -> None:
        while not stop.is_set():
            cache.prune(0)

    pruner = threading.Thread(target=prune)
    pruner.start()
    saves = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and saves < 20_000:
            key, module = modules[saves % len(modules)]
            try:
                cache.save(key, engine, module)
            except wc.CacheError as exc:
                failures.append(exc)
            saves += 1
    finally:
        stop.set()
        pruner.join()
    assert saves > 100
    assert failures == []


# -- one error contract ------------------------------------------------------------------------


def test_a_missing_or_folder_wasm_path_is_a_source_error(cache, engine, tmp_path):
    with pytest.raises(wc.SourceError) as info:
        cache.load_or_compile(engine, tmp_path / "missing.wasm")
    assert info.value.path == str(tmp_path / "missing.wasm")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(wc.SourceError) as info:
        cache.load_or_compile(engine, tmp_path)
    # Windows opens no folder as a file: access denied, where POSIX says EISDIR.
    assert isinstance(info.value.__cause__, PermissionError if WINDOWS else IsADirectoryError)
    with pytest.raises(wc.SourceError):
        wc.MemoryCache().load_or_compile(engine, str(tmp_path / "missing.wasm"))


def test_invalid_wasm_is_wasmtimes_own_error(cache, engine):
    with pytest.raises(wasmtime.WasmtimeError):
        cache.load_or_compile(engine, b"not wasm")


@windows_lacks("no POSIX mode bits (chmod 0500 leaves the folder writable)")
def test_clear_of_an_unwritable_folder_is_a_cache_error(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.save(key, engine, add_module)
    engine_dir = cache.path(key, engine).parent
    engine_dir.chmod(0o500)
    try:
        command = [sys.executable, "-c"]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("root without setpriv")
            command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
        script = textwrap.dedent(f"""
            import wasmcache as wc
            try:
                wc.FileSystemCache({str(cache.cache_dir)!r}).clear()
            except wc.FileWriteError as exc:
                assert isinstance(exc.__cause__, PermissionError) or exc.errno == 13, exc
                print("FileWriteError", exc)
        """)
        done = subprocess.run([*command, script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "FileWriteError" in done.stdout
    finally:
        engine_dir.chmod(0o700)


def test_engine_id_failure_is_a_cache_error(monkeypatch):
    from wasmcache import engine as engine_module

    monkeypatch.setattr(engine_module, "elf_section", lambda data, name: None)
    with pytest.raises(wc.EngineIdError):
        wc.engine_id(wasmtime.Engine())


def test_lzw_arguments(tmp_path):
    stream = lzw.encode(b"abc")
    assert lzw.decode(stream, 2**70) == b"abc"  # a cap past any size means no cap
    with pytest.raises(TypeError, match="contiguous"):
        lzw.decode(memoryview(stream + stream)[::2])
    with pytest.raises(ValueError):
        lzw.decode(stream, -1)
    with pytest.raises(TypeError):
        lzw.decode(stream, 1.5)  # type: ignore[arg-type]


def test_an_empty_cache_dir_is_a_value_error():
    with pytest.raises(ValueError, match="non-empty"):
        wc.FileSystemCache("")


# -- housekeeping under the same rule ---------------------------------------------------------


def _refusal(action: Callable[[], object]) -> str:
    with pytest.raises(wc.UnsafeCacheError) as info:
        action()
    return str(info.value)


@pytest.mark.parametrize(
    ("where", "how"),
    [
        ("cache", "0777"),
        ("cache", "0770"),
        ("engine", "0777"),
        ("engine", "link"),
        ("index", "0777"),
        ("index", "link"),
    ],
)
@windows_lacks("no POSIX mode bits; the DACL rule is tested in test_windows.py")
def test_housekeeping_applies_the_rule_load_applies(where, how, tmp_path, key, engine, add_module):
    """ls, verify, clear, prune and cleanup refuse a folder that breaks the rule, with the
    message load gives, and touch nothing in it (nor through a link)."""
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.save(key, engine, add_module)
    record = cache.cache_dir / names.INDEX_FOLDER / ("ab" * 32)
    record.parent.mkdir(mode=0o700)
    record.write_bytes(b"a record")
    target = {
        "cache": cache.cache_dir,
        "engine": cache.path(key, engine).parent,
        "index": record.parent,
    }[where]
    if how == "link":
        moved = tmp_path / "elsewhere"
        target.rename(moved)
        target.symlink_to(moved)
    else:
        target.chmod(int(how, 8))
    expected = _refusal(lambda: wc.safefs.check_folder(str(target)))
    assert str(target) in expected
    if where != "index":  # the index folder is direct mode's: load does not read it
        assert _refusal(lambda: wc.FileSystemCache(cache.cache_dir).load(key, engine)) == expected
    fresh = wc.FileSystemCache(cache.cache_dir)
    for action in (
        fresh.entries,
        fresh.verify_entries,
        lambda: fresh.verify_entries(fix=True),
        fresh.clear,
        lambda: fresh.prune(0),
        lambda: fresh.cleanup(0),
    ):
        assert _refusal(action) == expected
    assert cache.path(key, engine).exists() and record.exists()


def test_ls_refuses_a_world_writable_cache_as_load_does(tmp_path, key, engine, add_module):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.save(key, engine, add_module)
    cache.cache_dir.chmod(0o777)
    expected = _refusal(lambda: wc.FileSystemCache(cache.cache_dir).load(key, engine))
    command = [sys.executable, "-m", "wasmcache", "--cache-dir", str(cache.cache_dir)]
    for args in (["ls"], ["verify"], ["clear"], ["prune", "--max-bytes", "0"]):
        done = subprocess.run([*command, *args], capture_output=True, text=True)
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr and expected in done.stderr, done.stderr
    assert cache.path(key, engine).exists()


@needs_root
def test_files_of_another_user_are_not_read_nor_used(tmp_path, key, engine, add_module, caplog):
    """An entry, a lock file and the prune stamp owned by someone else in the user's own
    folder: not described, not locked on, not trusted for the time of the last prune."""
    nobody = _nobody()
    cache = wc.FileSystemCache(tmp_path / "c", max_bytes=1 << 40, prune_interval=3600)
    cache.save(key, engine, add_module)
    assert cache.wait_housekeeping(timeout=60)
    path = cache.path(key, engine)
    lock = Path(names.lock_path(str(path)))
    lock.touch(mode=0o600)  # as a holder killed before its release leaves it
    stamp = cache.cache_dir / names.PRUNE_STAMP
    stamp.touch()
    for planted in (path, lock, stamp):
        os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    before = stamp.stat()
    (found,) = cache.entries()
    assert cache.describe(found) is None  # listed, not read
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        with cache.compile_lock(key, engine):
            pass
        cache._prune_due = 0.0  # due again: the stamp, not this process, decides
        cache.save(default_key(b"other"), engine, add_module)
        assert cache.wait_housekeeping(timeout=60)
    assert lock.exists()  # not ours: neither used nor removed
    assert f"not using lock file {lock}" in caplog.text and f"uid {nobody.pw_uid}" in caplog.text
    assert f"automatic pruning of {cache.cache_dir} skipped" in caplog.text
    assert stamp.stat() == before  # neither touched nor made group-writable


@windows_lacks("no POSIX groups")
def test_shared_group_takes_a_bool_a_group_name_or_a_gid(tmp_path):
    import grp

    own = grp.getgrgid(os.getegid())
    for value, named in ((False, None), (True, None), (own.gr_name, own.gr_gid), (5, 5)):
        cache = wc.FileSystemCache(tmp_path / "c", shared_group=value)
        assert cache.shared_group is (value is not False)
        assert cache._named_gid == named
    with pytest.raises(ValueError, match="names no group"):
        wc.FileSystemCache(tmp_path / "c", shared_group="no-such-group-of-wasmcache")
    with pytest.raises(ValueError, match="negative"):
        wc.FileSystemCache(tmp_path / "c", shared_group=-1)
    with pytest.raises(TypeError, match="shared_group"):
        wc.FileSystemCache(tmp_path / "c", shared_group=1.5)  # type: ignore[arg-type]


def test_an_entry_renamed_over_after_it_was_opened_is_still_its_own(tmp_path):
    """A load opens an entry and another process renames a new one over the name before
    the fstat: the open file has no name left (0 links), so no other name can change it
    either; only a second name (a hard link) breaks the rule."""
    from wasmcache import safefs

    path = tmp_path / "entry.bin"
    path.write_bytes(b"old")
    fd, _ = safefs.open_regular(str(path))
    try:
        replacement = tmp_path / "new.bin"
        replacement.write_bytes(b"new")
        if WINDOWS:  # opened without delete sharing: nobody can rename over it
            with pytest.raises(PermissionError):
                os.replace(replacement, path)
        else:
            os.rename(replacement, path)
            info = os.fstat(fd)
            assert info.st_nlink == 0
            safefs.check_entry(str(path), info)  # no error
    finally:
        os.close(fd)
    if WINDOWS:
        os.replace(replacement, path)  # closed: now it can
    os.link(path, tmp_path / "second-name")
    fd, info = safefs.open_regular(str(path))
    os.close(fd)
    with pytest.raises(wc.UnsafeEntryError, match="2 links"):
        safefs.check_entry(str(path), info)
