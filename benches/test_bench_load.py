"""Load hit: wasmcache against raw deserialize_file, the seed's read+deserialize, and a hit
of wasmtime's own cache."""

from __future__ import annotations

import os
import time

import wasmtime
import xxhash

import wasmcache as wc
from conftest import SEED_LOAD_MS, SEED_MB, best_of, record, rounds_for


def _read_and_hash(path) -> None:
    with open(path, "rb") as f:
        data = f.read()
    xxhash.xxh3_64_intdigest(memoryview(data)[:-24])


def test_load_verify_on(benchmark, dataset):
    ds = dataset
    rounds = rounds_for(ds)
    path = str(ds.entry)
    baseline = best_of(
        lambda: (_read_and_hash(path), wasmtime.Module.deserialize_file(ds.engine, path)), rounds
    )
    benchmark.pedantic(ds.cache.load, (ds.key, ds.engine), rounds=rounds, warmup_rounds=1)
    per_seed = benchmark.stats.stats.min * 1e3 * SEED_MB / ds.megabytes
    record(
        benchmark,
        ds,
        baseline_name="read + XXH3 + deserialize_file",
        baseline=baseline,
        target=1.3,
        ms_per_seed_size=per_seed,
        seed_ratio=per_seed / SEED_LOAD_MS,
    )


def test_load_verify_off(benchmark, dataset):
    ds = dataset
    rounds = rounds_for(ds)
    cache = wc.FileSystemCache(ds.cache.cache_dir, verify=False)
    path = str(ds.entry)
    baseline = best_of(lambda: wasmtime.Module.deserialize_file(ds.engine, path), rounds)
    benchmark.pedantic(cache.load, (ds.key, ds.engine), rounds=rounds, warmup_rounds=1)
    best = benchmark.stats.stats.min
    per_seed = best * 1e3 * SEED_MB / ds.megabytes
    record(
        benchmark,
        ds,
        baseline_name="deserialize_file",
        baseline=baseline,
        target=1.5,
        ms_per_seed_size=per_seed,
        seed_ratio=per_seed / SEED_LOAD_MS,
        target_met_with_1ms=best <= 1.5 * baseline + 1e-3,
    )


def test_load_raw_deserialize_file(benchmark, dataset):
    ds = dataset
    benchmark.pedantic(
        wasmtime.Module.deserialize_file,
        (ds.engine, str(ds.entry)),
        rounds=rounds_for(ds),
        warmup_rounds=1,
    )
    record(benchmark, ds)


def test_load_seed_design_read_and_deserialize(benchmark, dataset):
    """What the seed's design does: read the file, then Module.deserialize(bytes)."""
    ds = dataset
    path = ds.workdir / "bare.bin"
    path.write_bytes(ds.artifact)

    def load():
        return wasmtime.Module.deserialize(ds.engine, path.read_bytes())

    benchmark.pedantic(load, rounds=rounds_for(ds, 10, 3), warmup_rounds=1)
    ours = best_of(lambda: ds.cache.load(ds.key, ds.engine), rounds_for(ds))
    record(benchmark, ds, baseline_name="wasmcache load (verify on)", baseline=ours)


def test_load_wasmtime_cache_hit(benchmark, dataset, tmp_path):
    """A hit of wasmtime's built-in cache (Config.cache with a temp folder)."""
    ds = dataset
    toml = tmp_path / "wasmtime-cache.toml"
    toml.write_text(f'[cache]\ndirectory = "{tmp_path / "wasmtime-cache"}"\n')
    config = wasmtime.Config()
    config.cache = str(toml)
    engine = wasmtime.Engine(config)
    wasmtime.Module(engine, ds.wasm)  # compile once: fills the cache (written in background)
    folder = tmp_path / "wasmtime-cache"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        files = [f for _, _, fs in os.walk(folder) for f in fs if not f.endswith(".stats")]
        if files:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    benchmark.pedantic(
        wasmtime.Module, (engine, ds.wasm), rounds=rounds_for(ds, 10, 3), warmup_rounds=1
    )
    ours = best_of(lambda: ds.cache.load(ds.key, ds.engine), rounds_for(ds))
    wasmtime_hit = benchmark.stats.stats.min
    record(
        benchmark,
        ds,
        baseline_name="wasmcache load (verify on)",
        baseline=ours,
        speedup_of_wasmcache=wasmtime_hit / ours,
    )
