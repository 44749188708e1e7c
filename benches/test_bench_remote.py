"""Remote hit: download + verify + load from an S3 API server on loopback (moto), beside a
fresh compile of the same module."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import wasmtime

import support
import wasmcache as wc
from conftest import record

pytest.importorskip("obstore")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3():
    with support.moto_server() as endpoint:
        saved = {name: os.environ.get(name) for name in support.S3_CREDENTIALS}
        os.environ.update(support.S3_CREDENTIALS)
        support.s3_client(endpoint).create_bucket(Bucket="bench")
        try:
            yield endpoint
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def test_remote_hit(benchmark, dataset, s3, tmp_path):
    ds = dataset
    local = tmp_path / "local"
    remote = wc.ObjectStoreCache("bench", prefix="wasm", endpoint=s3, local_dir=local)
    start = time.perf_counter()
    remote.save(ds.key, ds.engine, ds.module)
    upload = time.perf_counter() - start

    def fresh_machine():
        shutil.rmtree(local, ignore_errors=True)

    rounds = 10 if ds.megabytes < 20 else 3
    benchmark.pedantic(remote.load, (ds.key, ds.engine), setup=fresh_machine, rounds=rounds)
    start = time.perf_counter()
    wasmtime.Module(wasmtime.Engine(), ds.wasm)
    compile_seconds = time.perf_counter() - start
    record(
        benchmark,
        ds,
        baseline_name="fresh compile",
        baseline=compile_seconds,
        upload_ms=upload * 1e3,
        speedup_over_compile=compile_seconds / benchmark.stats.stats.min,
    )
