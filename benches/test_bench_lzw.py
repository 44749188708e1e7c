"""LZW decode of an LZW-compressed artifact: the C decoder against the weezl crate and a
pure-Python decoder."""

from __future__ import annotations

import subprocess

import pytest

from conftest import best_of, record
from support import reference_lzw_decode, weezl_binary
from wasmcache import lzw

PYTHON_SLICE = 2 << 20  # the pure-Python decoder gets the stream of the first 2 MB only


@pytest.fixture(scope="module")
def compressed(dataset, tmp_path_factory):
    stream = lzw.encode(dataset.artifact)
    path = tmp_path_factory.mktemp("lzw") / f"{dataset.name}.lzw"
    path.write_bytes(stream)
    return stream, path


def test_lzw_decode(benchmark, dataset, compressed):
    ds = dataset
    stream, path = compressed
    rounds = 10 if ds.megabytes < 20 else 3
    out = benchmark.pedantic(lzw.decode, (stream,), rounds=rounds, warmup_rounds=1)
    assert out == ds.artifact
    weezl = weezl_binary(build=True)
    extra = {"compressed_bytes": len(stream), "min_mb_per_s_target": 300}
    if weezl is None:
        record(benchmark, ds, weezl="not built (needs cargo + Debian librust-weezl-dev)", **extra)
        return
    done = subprocess.run(
        [str(weezl), "bench-decode", str(path), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, size = done.stdout.split()
    assert int(size) == len(ds.artifact)
    record(
        benchmark,
        ds,
        baseline_name="weezl 0.1.5 decode",
        baseline=float(seconds),
        target=0.5,
        **extra,
    )


def test_lzw_decode_pure_python(benchmark, dataset):
    ds = dataset
    part = ds.artifact[:PYTHON_SLICE]
    stream = lzw.encode(part)
    out = benchmark.pedantic(reference_lzw_decode, (stream,), rounds=1, warmup_rounds=0)
    assert out == part
    ours = best_of(lambda: lzw.decode(stream), 5)
    record(
        benchmark,
        ds,
        baseline_name="wasmcache decode (same slice)",
        baseline=ours,
        slice_bytes=len(part),
        mb_per_s=len(part) / 1e6 / benchmark.stats.stats.min,
    )
