"""Housekeeping at scale: prune, ls and stats of a 50,000-entry cache against an
``os.scandir`` of the same folders (with the listing's share of ls and the summary's of
stats), and what a small entry costs on disk beyond itself.

The 50,000 entries are copies of one small entry (a 13.6 kB artifact) under different
keys, written directly, with distinct access times (what prune orders by)."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from conftest import best_of
from wasmcache import cli, direct, entry, housekeeping, maintenance, names
from wasmcache._image import artifact_bytes
from wasmcache.hashing import DEFAULT_ALGORITHM

ENTRIES = int(os.environ.get("WASMCACHE_BENCH_ENTRIES", "50000"))
SMALL_WAT = """
(module
  (memory 1)
  (func (export "f{n}") (param i32) (result i32)
    local.get 0 i32.const {n} i32.add i32.const 3 i32.mul i32.const 7 i32.xor))
"""


class Big:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = wc.FileSystemCache(folder)
        engine = wasmtime.Engine()
        wasm = wasmtime.wat2wasm(SMALL_WAT.format(n=0))
        module = wasmtime.Module(engine, wasm)
        artifact = bytes(artifact_bytes(module))
        sealed = entry.seal(artifact, "module", wc.Origin("m.wasm", len(wasm), 0.25))
        self.data = artifact + sealed.tail
        self.engine_dir = os.path.dirname(self.cache.path(wc.ModuleHash.sha256(b""), engine))
        os.makedirs(self.engine_dir, mode=0o700)
        self.paths = [
            os.path.join(self.engine_dir, f"{wc.ModuleHash.sha256(str(i).encode())}.bin")
            for i in range(ENTRIES)
        ]
        self.now = time.time()
        for i in range(ENTRIES):
            self.write(i)

    def write(self, i: int) -> None:
        fd = os.open(self.paths[i], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, self.data)
            used = self.now - ENTRIES + i  # the first ones are the least recently used
            os.utime(fd, (used, used))
        finally:
            os.close(fd)

    def restore(self) -> None:
        for i, path in enumerate(self.paths):
            if not os.path.exists(path):
                self.write(i)

    def scandir(self) -> int:
        count = 0
        with os.scandir(self.folder) as top:
            for folder in top:
                if folder.is_dir(follow_symlinks=False):
                    with os.scandir(folder.path) as items:
                        count += sum(1 for _ in items)
        return count


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Big:
    return Big(tmp_path_factory.mktemp("big") / "cache")


def _info(benchmark, baseline_name: str, baseline: float, limit: float, **extra) -> None:
    best = benchmark.stats.stats.min
    info = benchmark.extra_info
    info.update(
        dataset=f"{ENTRIES // 1000}k small entries",
        best_ms=best * 1e3,
        baseline=baseline_name,
        baseline_ms=baseline * 1e3,
        ratio=best / baseline,
        limit_ms=limit * 1e3,
        target_met=best <= limit,
        entries=ENTRIES,
        **extra,
    )


def test_prune_evicting_a_tenth(benchmark, big):
    size = len(big.data)
    keep = ENTRIES * size * 9 // 10
    baseline = best_of(big.scandir, 5)
    removed: list[int] = []

    def prune() -> None:
        removed.append(len(big.cache.prune(keep)))

    benchmark.pedantic(prune, setup=big.restore, rounds=3)
    assert removed and all(n == ENTRIES - ENTRIES * 9 // 10 for n in removed)
    big.restore()
    _info(benchmark, "os.scandir of the same folders", baseline, 1.0, evicted=removed[0])


def _command(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(list(args)) == 0


def _listing(cache: wc.FileSystemCache) -> None:
    """The rows of ``ls`` without their formatting (the collector paused, as ls pauses it)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        maintenance.listed(cache)
    finally:
        if paused:
            gc.enable()


def test_ls(benchmark, big):
    baseline = best_of(big.scandir, 5)
    benchmark.pedantic(_command, ("--cache-dir", str(big.folder), "ls"), rounds=3)
    listing = best_of(lambda: _listing(big.cache), 3)
    _info(benchmark, "os.scandir of the same folders", baseline, 1.0, listing_ms=listing * 1e3)


def test_stats(benchmark, big):
    baseline = best_of(big.scandir, 5)
    benchmark.pedantic(_command, ("--cache-dir", str(big.folder), "stats"), rounds=3)
    summary = best_of(big.cache.summary, 3)
    _info(benchmark, "os.scandir of the same folders", baseline, 1.0, summary_ms=summary * 1e3)


def _allocated(paths) -> int:
    return sum(os.lstat(p).st_blocks * 512 for p in paths)


def test_small_entry_disk_overhead(benchmark, tmp_path):
    """N small modules compiled from files through load_or_compile (direct-mode records
    written, compile locks taken): the disk the cache folder holds beyond its entry files,
    as a share of the entries' own."""
    count = 200
    sources = []
    for n in range(count):
        source = tmp_path / f"m{n}.wasm"
        source.write_bytes(wasmtime.wat2wasm(SMALL_WAT.format(n=n)))
        sources.append(source)
    old = time.time() - 60
    for source in sources:
        os.utime(source, (old, old))
    time.sleep(direct.RACY_SECONDS)  # ctime cannot be set back: let the stamps settle
    engine = wasmtime.Engine()
    measured: dict[str, float] = {}

    def fill() -> None:
        folder = tmp_path / "c"
        shutil.rmtree(folder, ignore_errors=True)
        cache = wc.FileSystemCache(folder)
        for source in sources:
            cache.load_or_compile(engine, source)
        cache.wait_housekeeping(timeout=60)
        files = [p for p in folder.rglob("*") if not p.is_dir()]
        entries = [p for p in files if names.is_entry(p.name)]
        others = [p for p in files if not names.is_entry(p.name)]
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        measured["entries"] = _allocated(entries)
        measured["artifact"] = sum(p.stat().st_size for p in entries)
        measured["others"] = _allocated(others) + _allocated(folders)
        measured["inodes"] = len(files) + len(folders)

    benchmark.pedantic(fill, rounds=1)
    overhead = measured["others"] / measured["entries"]
    info = benchmark.extra_info
    info.update(
        dataset=f"{count} small entries",
        best_ms=benchmark.stats.stats.min * 1e3,
        target_met=overhead <= 0.10,
        overhead_pct=round(100 * overhead, 2),
        inodes_per_entry=round(measured["inodes"] / count, 3),
        entry_kb=round(measured["artifact"] / count / 1e3, 1),
        key=DEFAULT_ALGORITHM,
    )
    assert housekeeping.wait_idle(60)
