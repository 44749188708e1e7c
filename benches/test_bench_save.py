"""Save: wasmcache against XXH3 + a raw write of the same bytes, the seed's serialize + write,
and wasmtime's C serialize call alone."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

import xxhash
from wasmtime import _bindings

from conftest import SEED_MB, SEED_SAVE_MS, best_of, record, rounds_for


def _raw_write(path, data: bytes) -> None:
    xxhash.xxh3_64_intdigest(data)
    with open(path, "wb") as f:
        f.write(data)


def _unlinker(path):
    def unlink():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    return unlink


def test_save(benchmark, dataset):
    """Save after a miss: the entry does not exist yet (as in load_or_compile)."""
    ds = dataset
    rounds = rounds_for(ds)
    raw = ds.workdir / "raw.bin"
    fresh_raw = _unlinker(raw)

    def raw_write():
        fresh_raw()
        start = time.perf_counter()
        _raw_write(raw, ds.artifact)
        return time.perf_counter() - start

    baseline = min(raw_write() for _ in range(rounds))
    benchmark.pedantic(
        ds.cache.save, (ds.key, ds.engine, ds.module), setup=_unlinker(ds.entry), rounds=rounds
    )
    per_seed = benchmark.stats.stats.min * 1e3 * SEED_MB / ds.megabytes
    record(
        benchmark,
        ds,
        baseline_name="XXH3 + raw write (new file)",
        baseline=baseline,
        target=1.3,
        ms_per_seed_size=per_seed,
        seed_ratio=per_seed / SEED_SAVE_MS,
    )


def test_save_over_identical_entry(benchmark, dataset):
    """Save when the same entry is already there: checked, then kept."""
    ds = dataset
    ds.cache.save(ds.key, ds.engine, ds.module)
    benchmark.pedantic(
        ds.cache.save, (ds.key, ds.engine, ds.module), rounds=rounds_for(ds), warmup_rounds=1
    )
    record(benchmark, ds)


def test_save_seed_design_serialize_and_write(benchmark, dataset):
    ds = dataset
    path = ds.workdir / "seed.bin"

    def save():
        with open(path, "wb") as f:
            f.write(ds.module.serialize())

    benchmark.pedantic(save, rounds=rounds_for(ds, 10, 3), warmup_rounds=1)
    ours = best_of(lambda: ds.cache.save(ds.key, ds.engine, ds.module), rounds_for(ds))
    record(benchmark, ds, baseline_name="wasmcache save", baseline=ours)


def test_save_c_serialize_only(benchmark, dataset):
    """wasmtime_module_serialize alone: the floor of any save through serialize()."""
    ds = dataset

    def serialize():
        vec = _bindings.wasm_byte_vec_t()
        err = _bindings.wasmtime_module_serialize(ds.module.ptr(), ctypes.byref(vec))
        assert not err
        _bindings.wasm_byte_vec_delete(ctypes.byref(vec))

    benchmark.pedantic(serialize, rounds=rounds_for(ds, 10, 3), warmup_rounds=1)
    record(benchmark, ds)
