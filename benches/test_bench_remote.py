"""Remote hit: download + verify + load from an S3 API server on loopback (moto), beside a
fresh compile of the same module."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import wasmtime

import wasmcache as wc
from conftest import record

pytest.importorskip("obstore")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **CREDENTIALS}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(CREDENTIALS)
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    ).create_bucket(Bucket="bench")
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


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
