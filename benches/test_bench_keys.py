"""The cost of the key on a hit: load_or_compile of a path (direct mode: a stat, no read, no
hash) against the entry's own load path measured in the same run, and SHA-256 against XXH64
for bytes input."""

from __future__ import annotations

import os
import time

import wasmtime

import wasmcache as wc
from conftest import best_of, record, rounds_for
from wasmcache import direct, entry, safefs


def _settled_source(ds) -> str:  # type: ignore[no-untyped-def]
    """The dataset's .wasm as a file older than the racy window (direct mode trusts it)."""
    path = ds.workdir / f"{ds.name}.wasm"
    if not path.exists():
        path.write_bytes(ds.wasm)
        old = time.time() - 3600
        os.utime(path, (old, old))
        time.sleep(direct.RACY_SECONDS + 0.1)  # its ctime must settle too
    return str(path)


def _stat_verify_deserialize(ds) -> None:  # type: ignore[no-untyped-def]
    """The floor of a hit: stat the source, check the entry, map it."""
    os.stat(ds.workdir / f"{ds.name}.wasm")
    fd, info = safefs.open_regular(str(ds.entry))
    try:
        entry.inspect(fd, info.st_size, verify=True)
        wasmtime.Module.deserialize_file(ds.engine, f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _time_hit(benchmark, ds, *, cold_stamp: bool) -> None:  # type: ignore[no-untyped-def]
    """Time a hit of load_or_compile(engine, path) beside its floor, in the same run."""
    source = _settled_source(ds)
    ds.cache.load_or_compile(ds.engine, source)  # remembers the stamp

    def hit() -> None:
        if cold_stamp:
            direct._memory.clear()
        ds.cache.load_or_compile(ds.engine, source)

    rounds = rounds_for(ds)
    baseline = best_of(lambda: _stat_verify_deserialize(ds), rounds)
    benchmark.pedantic(hit, rounds=rounds, warmup_rounds=1)
    record(
        benchmark,
        ds,
        baseline_name="stat + verify + deserialize_file of the entry",
        baseline=baseline,
        target=1.3,
        wasm_bytes=len(ds.wasm),
    )


def test_load_or_compile_path_hit(benchmark, dataset):
    _time_hit(benchmark, dataset, cold_stamp=False)


def test_load_or_compile_path_hit_cold_stamp(benchmark, dataset):
    """A process's first hit: the stamp's record is read from the cache folder."""
    _time_hit(benchmark, dataset, cold_stamp=True)


def test_key_sha256_bytes(benchmark, dataset):
    ds = dataset
    rounds = rounds_for(ds)
    baseline = best_of(lambda: wc.ModuleHash.xxhash(ds.wasm), rounds)
    benchmark.pedantic(wc.ModuleHash.sha256, (ds.wasm,), rounds=rounds, warmup_rounds=1)
    record(
        benchmark,
        ds,
        baseline_name="XXH64 of the same bytes",
        baseline=baseline,
        wasm_bytes=len(ds.wasm),
        wasm_mb_per_s=len(ds.wasm) / 1e6 / benchmark.stats.stats.min,
    )
