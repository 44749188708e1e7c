"""The cost of the key on a hit: load_or_compile of a path (direct mode: a stat, no read, no
hash) and of bytes (the key hashed every call) against the entry's own load path measured in
the same run; the default key (BLAKE3) and SHA-256 against XXH64."""

from __future__ import annotations

import os
import time

import blake3
import wasmtime

import wasmcache as wc
from conftest import best_of, record, rounds_for
from wasmcache import checked, direct, entry, safefs


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


def test_load_or_compile_bytes_hit(benchmark, dataset):
    """How YoWASP-style hosts call a cache: the module's bytes (read from package
    resources), hashed by the default key (BLAKE3) on every call, beside the floor of a
    hit. ``checksum`` says whether this tree checks an entry on every load or once per
    boot (wasmcache.checked)."""
    ds = dataset
    _settled_source(ds)  # the floor stats it
    cache = wc.FileSystemCache(ds.cache.cache_dir)
    cache.load_or_compile(ds.engine, ds.wasm)  # a hit: the entry is saved under its key
    time.sleep(direct.RACY_SECONDS + 0.1)  # the entry's stamp settles, as on any later day
    cache.load_or_compile(ds.engine, ds.wasm)
    per_boot = os.path.exists(checked.record_path(str(ds.cache.cache_dir)))
    rounds = rounds_for(ds)
    baseline = best_of(lambda: _stat_verify_deserialize(ds), rounds)
    benchmark.pedantic(cache.load_or_compile, (ds.engine, ds.wasm), rounds=rounds, warmup_rounds=1)
    key = best_of(lambda: wc.ModuleHash.blake3(ds.wasm), rounds)
    record(
        benchmark,
        ds,
        baseline_name="stat + verify + deserialize_file of the entry",
        baseline=baseline,
        target=1.5,
        wasm_bytes=len(ds.wasm),
        job="checksum once per boot" if per_boot else "checksum every load",
        key_ms=key * 1e3,
    )


def test_key_blake3_bytes(benchmark, dataset):
    """The default key of bytes, on as many threads as help, beside XXH64; one thread's
    time is kept beside it."""
    ds = dataset
    rounds = rounds_for(ds)
    baseline = best_of(lambda: wc.ModuleHash.xxhash(ds.wasm), rounds)
    one_thread = best_of(lambda: blake3.blake3(ds.wasm).digest(), rounds)
    benchmark.pedantic(wc.ModuleHash.blake3, (ds.wasm,), rounds=rounds, warmup_rounds=1)
    record(
        benchmark,
        ds,
        baseline_name="XXH64 of the same bytes",
        baseline=baseline,
        wasm_bytes=len(ds.wasm),
        wasm_mb_per_s=len(ds.wasm) / 1e6 / benchmark.stats.stats.min,
        one_thread_ms=one_thread * 1e3,
    )
