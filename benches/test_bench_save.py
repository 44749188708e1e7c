"""Save: wasmcache against XXH3 + a raw write of the same bytes, the seed's serialize + write,
and wasmtime's C serialize call alone."""

from __future__ import annotations

import ctypes

import xxhash
from wasmtime import _bindings

from conftest import SEED_MB, SEED_SAVE_MS, best_of, record, rounds_for


def _raw_write(path, data: bytes) -> None:
    xxhash.xxh3_64_intdigest(data)
    with open(path, "wb") as f:
        f.write(data)


def test_save(benchmark, dataset):
    ds = dataset
    rounds = rounds_for(ds)
    raw = ds.workdir / "raw.bin"
    baseline = best_of(lambda: _raw_write(raw, ds.artifact), rounds)
    benchmark.pedantic(
        ds.cache.save, (ds.key, ds.engine, ds.module), rounds=rounds, warmup_rounds=1
    )
    per_seed = benchmark.stats.stats.min * 1e3 * SEED_MB / ds.megabytes
    record(
        benchmark,
        ds,
        baseline_name="XXH3 + raw write",
        baseline=baseline,
        target=1.3,
        ms_per_seed_size=per_seed,
        seed_ratio=per_seed / SEED_SAVE_MS,
    )


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
