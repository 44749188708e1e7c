"""Per-call costs: contains(), path(), engine_id on a warm Engine, and import time."""

from __future__ import annotations

import subprocess
import sys

import wasmcache as wc
from conftest import best_of, record


def test_contains(benchmark, dataset):
    ds = dataset
    assert benchmark(ds.cache.contains, ds.key, ds.engine)
    record(benchmark, ds, us_per_call=benchmark.stats.stats.min * 1e6, target_us=20)


def test_path(benchmark, dataset):
    ds = dataset
    benchmark(ds.cache.path, ds.key, ds.engine)
    record(benchmark, ds, us_per_call=benchmark.stats.stats.min * 1e6)


def test_engine_id_warm(benchmark, dataset):
    ds = dataset
    wc.engine_id(ds.engine)
    benchmark(wc.engine_id, ds.engine)
    record(benchmark, ds, us_per_call=benchmark.stats.stats.min * 1e6)


def test_import_time(benchmark, dataset):
    ds = dataset

    def run(code: str) -> None:
        subprocess.run([sys.executable, "-c", code], check=True)

    bare = best_of(lambda: run("pass"), 5)
    benchmark.pedantic(run, ("import wasmcache",), rounds=5, warmup_rounds=1)
    import_ms = (benchmark.stats.stats.min - bare) * 1e3
    record(
        benchmark,
        ds,
        baseline_name="python -c pass",
        baseline=bare,
        import_ms=import_ms,
        target_import_ms=100,
    )
