"""Housekeeping off the hot path: no folder scan inside a save or under a compile lock,
automatic pruning at most once per interval across processes, lock files gone once
released, direct-mode records in one bounded log."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import wasmcache as wc
from conftest import WINDOWS, call_add, windows_lacks
from wasmcache import direct, locks, maintenance, names, synth
from wasmcache.hashing import DEFAULT_ALGORITHM


def _wasm(i: int) -> bytes:
    return synth.data_module(32 << 10, seed=500 + i)


class Watch:
    """Records every folder scan, and whether a save or a compile lock (of any thread)
    was in progress when it happened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cache: wc.FileSystemCache) -> None:
        self.scans: list[str] = []
        self.violations: list[str] = []
        self.saving = 0
        self.locked = 0
        scan, save, lock = maintenance._scan, cache.save, cache.compile_lock

        def watched_scan(folder: str) -> list[os.DirEntry[str]]:
            self.scans.append(threading.current_thread().name)
            if self.saving or self.locked or locks.held():
                self.violations.append(f"scan of {folder}: saving={self.saving} lock={self.locked}")
            return scan(folder)

        def watched_save(*args: Any, **kwargs: Any) -> None:
            self.saving += 1
            try:
                save(*args, **kwargs)
            finally:
                self.saving -= 1

        @contextlib.contextmanager
        def watched_lock(*args: Any) -> Iterator[None]:
            with lock(*args):
                self.locked += 1
                try:
                    yield
                finally:
                    self.locked -= 1

        monkeypatch.setattr(maintenance, "_scan", watched_scan)
        monkeypatch.setattr(cache, "save", watched_save)
        monkeypatch.setattr(cache, "compile_lock", watched_lock)


def test_no_scan_inside_a_save_or_under_a_compile_lock(tmp_path, engine, monkeypatch):
    cache = wc.FileSystemCache(tmp_path / "c", max_bytes=1, prune_interval=0)
    watch = Watch(monkeypatch, cache)
    for i in range(3):
        cache.load_or_compile(engine, _wasm(i))
        assert cache.wait_housekeeping(timeout=60)
    assert watch.scans, "automatic pruning never ran"
    assert watch.violations == []
    assert cache.entries() == []  # max_bytes=1: pruned to nothing, after each save


def test_a_plain_save_prunes_on_the_housekeeping_thread(tmp_path, engine, monkeypatch):
    cache = wc.FileSystemCache(tmp_path / "c", max_bytes=1, prune_interval=0)
    watch = Watch(monkeypatch, cache)
    wasm = _wasm(9)
    cache.save(wc.ModuleHash.of(DEFAULT_ALGORITHM, wasm), engine, wasmtime.Module(engine, wasm))
    assert cache.wait_housekeeping(timeout=60)
    assert set(watch.scans) == {"wasmcache-housekeeping"} and watch.violations == []
    assert cache.entries() == []


def test_work_after_release_waits_for_the_outermost_lock(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    ran = []
    with cache.compile_lock(wc.ModuleHash.sha256(b"a"), engine):
        with cache.compile_lock(wc.ModuleHash.sha256(b"b"), engine):
            locks.after_release(lambda: ran.append(locks.held()))
        assert ran == []
    assert ran == [0]


_SAVE = textwrap.dedent(
    """
    import sys, wasmtime, wasmcache as wc
    cache = wc.FileSystemCache(sys.argv[1], max_bytes=1 << 40, prune_interval=3600)
    engine = wasmtime.Engine()
    with open(sys.argv[2], "rb") as f:
        wasm = f.read()
    cache.save(wc.ModuleHash.sha256(wasm), engine, wasmtime.Module(engine, wasm))
    assert cache.wait_housekeeping(timeout=60)
    """
)


def test_automatic_pruning_runs_once_per_interval_across_processes(tmp_path, add_wasm):
    folder = tmp_path / "c"
    stamp = folder / names.PRUNE_STAMP
    seen = []
    for wasm in (add_wasm, _wasm(1)):
        source = tmp_path / "m.wasm"  # (a file: Windows' command line holds 32767 characters)
        source.write_bytes(wasm)
        done = subprocess.run(
            [sys.executable, "-c", _SAVE, str(folder), str(source)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        seen.append(stamp.stat().st_mtime_ns)
    assert seen[0] == seen[1]  # the second process found the stamp fresh: no second prune


_WAIT = textwrap.dedent(
    """
    import os, sys, wasmtime, wasmcache as wc
    from wasmcache import names
    cache = wc.FileSystemCache(sys.argv[1])
    key = wc.ModuleHash.parse(sys.argv[2])
    engine = wasmtime.Engine()
    lock = names.lock_path(str(cache.path(key, engine)))
    print("waiting", flush=True)
    with cache.compile_lock(key, engine):
        print("got", os.path.exists(lock), flush=True)
    print("released", os.path.exists(lock), flush=True)
    """
)


def test_a_waiter_locks_the_new_file_after_the_holder_removed_its_own(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    key = wc.ModuleHash.sha256(b"contended")
    lock = Path(names.lock_path(str(cache.path(key, engine))))
    with cache.compile_lock(key, engine):
        held = lock.stat().st_ino
        waiter = subprocess.Popen(
            [sys.executable, "-c", _WAIT, str(cache.cache_dir), str(key)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert waiter.stdout is not None
        assert waiter.stdout.readline() == "waiting\n"
        time.sleep(0.5)  # let it block on the flock of the file held here
        assert lock.stat().st_ino == held
    out, _ = waiter.communicate(timeout=60)
    assert out == "got True\nreleased False\n"
    assert not lock.exists()


# -- the index log ----------------------------------------------------------------------


def test_the_index_log_stays_bounded_and_keeps_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(direct, "LOG_LIMIT", 2048)
    index = direct.Index(str(tmp_path / "c"))
    keys = [wc.ModuleHash.sha256(str(i).encode()) for i in range(100)]
    for i, key in enumerate(keys):
        index.remember(((1, i, 3, 4, 5), "m"), key)
        assert index.path and os.path.getsize(index.path) <= 2048
    assert index.lookup(((1, 99, 3, 4, 5), "m"), "sha256") == keys[99]
    assert index.lookup(((1, 0, 3, 4, 5), "m"), "sha256") is None  # dropped by a compaction
    assert os.listdir(index.folder) == [names.INDEX_LOG]


def test_a_torn_or_foreign_line_is_skipped(tmp_path):
    index = direct.Index(str(tmp_path / "c"))
    key = wc.ModuleHash.sha256(b"k")
    index.remember(((1, 2, 3, 4, 5), "m"), key)
    line = direct._record_line(((1, 2, 3, 4, 5), "m"), wc.ModuleHash.sha256(b"other"))
    with open(index.path, "ab") as log:
        log.write(line[:-5])  # torn: cut short, no newline
    assert index.lookup(((1, 2, 3, 4, 5), "m"), "sha256") == key
    with open(index.path, "ab") as log:
        log.write(line.replace(b" sha256 ", b" xxhash "))  # glued to it; another algorithm
    assert index.lookup(((1, 2, 3, 4, 5), "m"), "sha256") == key


def test_small_entries_cost_one_inode_each(tmp_path, engine, settled_sources):
    """N entries compiled from files: N entry files, plus a fixed few (the index log, the
    metrics file), and no lock file. (On Windows direct mode is asked for: it keeps
    records there only then.)"""
    cache = wc.FileSystemCache(tmp_path / "c", direct=True if WINDOWS else None)
    for source in settled_sources:
        assert call_add(engine, cache.load_or_compile(engine, source)) == 5
    assert cache.wait_housekeeping(timeout=60)
    assert cache.flush_metrics()
    files = [p for p in cache.cache_dir.rglob("*") if p.is_file()]
    others = sorted(p.name for p in files if not names.is_entry(p.name))
    assert len(files) - len(others) == len(settled_sources)
    assert others == [names.METRICS, names.INDEX_LOG]
    assert (cache.cache_dir / names.INDEX_FOLDER / names.INDEX_LOG).read_bytes().count(
        b"\n"
    ) == len(settled_sources)


@pytest.fixture
def settled_sources(tmp_path: Path) -> list[Path]:
    """Five different add modules in files whose stamps are old enough to be recorded."""
    from conftest import ADD_WAT

    sources = []
    for i in range(5):
        source = tmp_path / f"m{i}.wasm"
        source.write_bytes(wasmtime.wat2wasm(ADD_WAT.replace("(module", f"(module $m{i}", 1)))
        sources.append(source)
    old = time.time() - 60
    for source in sources:
        os.utime(source, (old, old))
    # (Windows' st_ctime is no change time: the utime above was one, so wait.)
    if WINDOWS or time.time() - max(os.stat(s).st_ctime for s in sources) < direct.RACY_SECONDS:
        time.sleep(direct.RACY_SECONDS + 0.1)  # ctime cannot be set back
    return sources


def test_a_folder_removed_right_after_a_save_stays_removed(tmp_path, engine):
    """A script that saves and then removes its (temporary) cache folder at once: nothing
    left running afterwards writes into it or brings it back, at exit neither."""
    import shutil

    wasm = synth.data_module(16 << 10, seed=9)
    module = wasmtime.Module(engine, wasm)
    for round_ in range(10):
        folder = tmp_path / f"c{round_}"
        cache = wc.FileSystemCache(folder)
        cache.save(wc.ModuleHash.sha256(wasm), engine, module)
        shutil.rmtree(folder)  # fails if something writes into the folder meanwhile
        assert cache.wait_housekeeping(timeout=60)
        assert cache.flush_metrics()  # what the exit does: no folder, nothing written
        assert not folder.exists()


def test_summary_counts_each_engine_folder_apart(tmp_path):
    """Entries of two engines, modules and components, some with a compile time, one that
    cannot be described: each folder's totals as one recount of the listing gives them."""
    cache = wc.FileSystemCache(tmp_path / "c")
    config = wasmtime.Config()
    config.cranelift_opt_level = "none"
    engines = [wasmtime.Engine(), wasmtime.Engine(config)]
    for n in range(5):
        engine = engines[n % 2]
        wasm = _wasm(n)
        origin = wc.Origin("m.wasm", len(wasm), 0.5 * n if n else None)
        cache.save(wc.ModuleHash.sha256(wasm), engine, wasmtime.Module(engine, wasm), origin=origin)
    damaged = cache.path(wc.ModuleHash.sha256(b"damaged"), engines[1])
    damaged.write_bytes(b"not an entry")
    damaged.chmod(0o600)
    expected: dict[str, list[Any]] = {}
    for found, info in cache.described():
        total = expected.setdefault(found.engine_folder, [0, 0, 0, 0, 0.0, [], []])
        total[0] += 1
        total[1] += found.size
        if info is not None:
            total[2 if info.kind == "module" else 3] += 1
            total[4] += info.compile_seconds or 0.0
        total[5].append(found.last_used)
    summary = cache.summary()
    assert sorted(summary) == sorted(expected) and len(summary) == 2
    for folder, (entries, size, modules, components, seconds, used, _) in expected.items():
        assert summary[folder] == maintenance.Summary(
            entries, size, modules, components, seconds, min(used), max(used)
        )
    assert sum(s.entries for s in summary.values()) == 6


# -- the listing of ls and stats: each engine folder held, nothing opened through a link ----


def _listing(cache: wc.FileSystemCache, form: str) -> Any:
    """One listing form: for described and listed, each entry's name -> the source its
    description names ("?": listed undescribed); for summary, (entries, modules)."""
    if form == "described":
        return {f.path.name: (info.source if info else "?") for f, info in cache.described()}
    if form == "listed":
        return {
            os.path.basename(row.path): (row.info.source if row.info else "?")
            for row in maintenance.listed(cache)
        }
    (summary,) = cache.summary().values()
    return summary.entries, summary.modules


class _Planted:
    """A cache with two entries (sources a.wasm and t.wasm), and a second cache holding an
    entry of t.wasm's name whose source is elsewhere.wasm (what a link could lead to)."""

    def __init__(self, tmp_path: Path, engine: wasmtime.Engine) -> None:
        self.cache = wc.FileSystemCache(tmp_path / "c")
        elsewhere = wc.FileSystemCache(tmp_path / "elsewhere")
        module = wasmtime.Module(engine, _wasm(0))
        a, t = wc.ModuleHash.sha256(b"a"), wc.ModuleHash.sha256(b"t")
        self.cache.save(a, engine, module, origin=wc.Origin("a.wasm", 1, 1.0))
        self.cache.save(t, engine, module, origin=wc.Origin("t.wasm", 1, 1.0))
        elsewhere.save(t, engine, module, origin=wc.Origin("elsewhere.wasm", 1, 1.0))
        self.a, self.t = str(self.cache.path(a, engine)), str(self.cache.path(t, engine))
        self.folder = os.path.dirname(self.t)
        self.other_folder = os.path.dirname(str(elsewhere.path(t, engine)))
        self.good = Path(self.t).read_bytes()

    def restore(self) -> None:
        """t.wasm's entry back as saved (a regular file of this user, mode 0600)."""
        if os.path.lexists(self.t):
            os.unlink(self.t)
        fd = os.open(self.t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.good)

    def is_engine_folder(self, folder: object) -> bool:
        """Whether a scan is of the engine folder (held open, or by its path)."""
        return isinstance(folder, int) or folder == self.folder


def _nobody_ids() -> tuple[int, int]:
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    return nobody.pw_uid, nobody.pw_gid


@windows_lacks("no FIFOs, links, POSIX owners or mode bits at entry names")
@pytest.mark.parametrize("planted", ["link", "FIFO", "another user", "0666", "0620"])
def test_the_listing_opens_an_entry_under_the_rule_after_its_scan(
    planted, tmp_path, engine, monkeypatch
):
    """The scan types t.wasm's entry as a regular file; then, before it is opened, it
    becomes a link to an entry elsewhere, a FIFO, or a file that breaks the rule. The
    listing neither follows the link nor blocks on the FIFO, and describes no file that
    breaks the rule (each listing form: described, listed, summary)."""
    setup = _Planted(tmp_path, engine)
    owner = _nobody_ids() if planted == "another user" else None
    scan = maintenance._scan

    def scan_then_plant(folder: Any) -> list[os.DirEntry[str]]:
        items = scan(folder)
        if setup.is_engine_folder(folder):
            if planted == "link":
                os.unlink(setup.t)
                os.symlink(os.path.join(setup.other_folder, os.path.basename(setup.t)), setup.t)
            elif planted == "FIFO":
                os.unlink(setup.t)
                os.mkfifo(setup.t, 0o600)
            elif owner is not None:
                os.chown(setup.t, *owner)
            else:
                os.chmod(setup.t, int(planted, 8))
        return items

    monkeypatch.setattr(maintenance, "_scan", scan_then_plant)
    refused = planted in ("link", "FIFO")  # not an entry file: not listed
    a, t = os.path.basename(setup.a), os.path.basename(setup.t)
    for form in ("described", "listed", "summary"):
        setup.restore()
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=_into, args=(outcome, setup.cache, form), daemon=True)
        worker.start()
        worker.join(10)
        if worker.is_alive():
            os.close(os.open(setup.t, os.O_WRONLY | os.O_NONBLOCK))  # let it go
            pytest.fail(f"the listing blocked on a {planted}")
        if "error" in outcome:
            raise outcome["error"]
        said = outcome["said"]
        if form == "summary":
            assert said == ((1, 1) if refused else (2, 1))  # one module described
        else:
            assert said == ({a: "a.wasm"} if refused else {a: "a.wasm", t: "?"}), form


def _into(outcome: dict[str, Any], cache: wc.FileSystemCache, form: str) -> None:
    try:
        outcome["said"] = _listing(cache, form)
    except BaseException as exc:
        outcome["error"] = exc


@windows_lacks("no descriptor-relative opens: entries are opened by path")
def test_the_listing_reads_the_engine_folder_it_holds(tmp_path, engine, monkeypatch):
    """Once its scan has begun, the engine folder is moved away and a link to another
    folder put at its name: every entry is still opened in the folder that was checked."""
    setup = _Planted(tmp_path, engine)
    scan = maintenance._scan
    moved = tmp_path / "moved"

    def scan_then_swap(folder: Any) -> list[os.DirEntry[str]]:
        items = scan(folder)
        if setup.is_engine_folder(folder):
            os.rename(setup.folder, moved)
            os.symlink(setup.other_folder, setup.folder)
        return items

    monkeypatch.setattr(maintenance, "_scan", scan_then_swap)
    described = {found.path.name: info and info.source for found, info in setup.cache.described()}
    assert sorted(described.values()) == ["a.wasm", "t.wasm"]


@windows_lacks("no POSIX links or mode bits at an engine folder's name")
@pytest.mark.parametrize("swapped", ["link", "0777"])
def test_an_engine_folder_replaced_after_its_check_is_refused(
    swapped, tmp_path, engine, monkeypatch
):
    """Once the engine folder passed the rule, and before its entries are read, it is
    replaced by a link to another folder (or by a folder writable by everyone): the
    listing refuses it, as a load would, and reads nothing through it."""
    setup = _Planted(tmp_path, engine)
    checked = maintenance._checked

    def check_then_swap(cache: Any) -> Any:
        folders = checked(cache)
        os.rename(setup.folder, tmp_path / "moved")
        if swapped == "link":
            os.symlink(setup.other_folder, setup.folder)
        else:
            os.mkdir(setup.folder, 0o700)
            os.chmod(setup.folder, int(swapped, 8))
        return folders

    monkeypatch.setattr(maintenance, "_checked", check_then_swap)
    reason = "symbolic link" if swapped == "link" else "writable by group or others"
    for form in (
        setup.cache.described,
        setup.cache.summary,
        lambda: maintenance.listed(setup.cache),
    ):
        with pytest.raises(wc.UnsafeCacheError, match=reason):
            form()
        os.unlink(setup.folder) if swapped == "link" else os.rmdir(setup.folder)
        os.rename(tmp_path / "moved", setup.folder)


def test_the_hot_path_does_not_import_the_listing_code(tmp_path):
    """A cache made, a miss that compiles and saves, a hit: none imports the listing and
    pruning code (wasmcache.maintenance); a housekeeping method loads it when called."""
    script = textwrap.dedent(
        f"""
        import sys
        import wasmtime
        import wasmcache as wc

        engine = wasmtime.Engine()
        wasm = wasmtime.wat2wasm('(module (func (export "f")))')
        cache = wc.FileSystemCache({str(tmp_path / "c")!r})
        cache.load_or_compile(engine, wasm)
        cache.load_or_compile(engine, wasm)
        assert cache.wait_housekeeping(60)
        print("wasmcache.maintenance" in sys.modules)
        (found,) = cache.entries()
        print("wasmcache.maintenance" in sys.modules, found.size > 0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
