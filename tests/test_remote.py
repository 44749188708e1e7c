"""ObjectStoreCache against a real S3 API server (moto's server mode) on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import wasmtime

import support
import wasmcache as wc
from conftest import call_add
from wasmcache import kinds, synth

pytest.importorskip("obstore")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

CREDENTIALS = support.S3_CREDENTIALS


@pytest.fixture(scope="session")
def s3_endpoint():
    with support.moto_server() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    """A boto3 client of the test server, for setting up and tampering with objects."""
    return support.s3_client(s3_endpoint)


_bucket_count = 0


@pytest.fixture
def bucket(s3):
    global _bucket_count
    _bucket_count += 1
    name = f"wasmcache-test-{os.getpid()}-{_bucket_count}"
    s3.create_bucket(Bucket=name)
    return name


def remote(endpoint, bucket, tmp_path, name="local", **options) -> wc.ObjectStoreCache:
    return wc.ObjectStoreCache(
        bucket,
        prefix="fleet",
        endpoint=endpoint,
        local_dir=tmp_path / name,
        max_retries=0,
        timeout=10,
        **options,
    )


def test_save_on_one_machine_load_on_another(s3_endpoint, s3, bucket, tmp_path, engine, add_wasm):
    key = wc.ModuleHash.sha256(add_wasm)
    first = remote(s3_endpoint, bucket, tmp_path, "machine-a")
    assert not first.contains(key, engine)
    first.save(key, engine, wasmtime.Module(engine, add_wasm))
    assert first.contains(key, engine)

    objects = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in objects] == [f"fleet/{wc.engine_id(engine)}-v1/{key}.bin"]

    second = remote(s3_endpoint, bucket, tmp_path, "machine-b")
    local = wc.FileSystemCache(tmp_path / "machine-b")
    assert not local.contains(key, engine)
    assert call_add(engine, second.load(key, engine)) == 5
    assert local.contains(key, engine)  # the download landed in the local folder
    assert call_add(engine, local.load(key, engine)) == 5
    assert list((tmp_path / "machine-b").rglob(".*.tmp")) == []


@pytest.mark.skipif(not kinds.components_supported(), reason="no components in this wasmtime")
def test_component_travels_with_its_kind_and_metadata(s3_endpoint, bucket, tmp_path, engine):
    wasm = support.command_component()
    key = wc.ModuleHash.sha256(wasm)
    machine_a = wc.FileSystemCache(tmp_path / "a").with_fallback(
        remote(s3_endpoint, bucket, tmp_path, "a")
    )
    assert isinstance(machine_a.load_or_compile(engine, wasm, key=key), kinds.component_class())
    machine_b = remote(s3_endpoint, bucket, tmp_path, "b")
    with pytest.raises(wc.CacheError):  # the object's manifest says component
        machine_b.load(key, engine, kind="module")
    assert isinstance(machine_b.load(key, engine, kind="component"), kinds.component_class())
    local = wc.FileSystemCache(tmp_path / "b")
    (found,) = local.entries()
    info = local.describe(found)
    assert info is not None and info.kind == "component" and info.wasm_size == len(wasm)
    assert info.compile_seconds is not None  # made where it was compiled, kept on the way


def test_large_module_multipart(s3_endpoint, bucket, tmp_path, engine):
    wasm = synth.data_module(40 << 20, seed=21)
    key = wc.ModuleHash.sha256(wasm)
    remote(s3_endpoint, bucket, tmp_path, "a").save(key, engine, wasmtime.Module(engine, wasm))
    module = remote(s3_endpoint, bucket, tmp_path, "b").load(key, engine)
    store = wasmtime.Store(engine)
    assert (
        wasmtime.Instance(store, module, []).exports(store)["probe"](store, (40 << 20) - 1)
        == (wasm[-1])
    )


def test_missing_object_is_not_found(s3_endpoint, bucket, tmp_path, engine, key):
    with pytest.raises(wc.NotFound):
        remote(s3_endpoint, bucket, tmp_path).load(key, engine)


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "flipped", "bare_artifact"], ids=lambda d: d
)
def test_corrupt_object_is_never_loaded_or_kept(
    s3_endpoint, s3, bucket, tmp_path, engine, add_module, key, damage
):
    cache = remote(s3_endpoint, bucket, tmp_path)
    cache.save(key, engine, add_module)
    name = cache.object_key(key, engine)
    good = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    bad = {
        "garbage": b"not an artifact" * 100,
        "truncated": good[: len(good) // 2],
        "flipped": good[:500] + bytes([good[500] ^ 1]) + good[501:],
        "bare_artifact": good[:-24],
    }[damage]
    s3.put_object(Bucket=bucket, Key=name, Body=bad)
    with pytest.raises(wc.DeserializeError) as info:
        cache.load(key, engine)
    assert str(key) in str(info.value)
    assert list((tmp_path / "local").rglob("*.bin")) == []
    assert [p for p in (tmp_path / "local").rglob("*") if p.is_file()] == []


def test_missing_bucket(s3_endpoint, tmp_path, engine, add_module, key):
    cache = remote(s3_endpoint, "no-such-bucket-here", tmp_path)
    with pytest.raises(wc.RemoteBucketNotFound) as info:
        cache.save(key, engine, add_module)
    assert str(key) in str(info.value)
    assert isinstance(info.value, wc.CacheError)
    with pytest.raises(wc.RemoteError):
        cache.load(key, engine)


def test_unreachable_store(tmp_path, engine, add_module, key):
    cache = wc.ObjectStoreCache(
        "some-bucket",
        endpoint=f"http://127.0.0.1:{support.free_port()}",
        local_dir=tmp_path,
        max_retries=0,
        timeout=5,
    )
    for call in (
        lambda: cache.load(key, engine),
        lambda: cache.save(key, engine, add_module),
        lambda: cache.contains(key, engine),
    ):
        with pytest.raises(wc.RemoteUnavailable) as info:
            call()
        assert str(key) in str(info.value)


def test_error_mapping():
    from obstore import exceptions as ox

    from wasmcache.remote import remote_error

    assert isinstance(remote_error(ox.PermissionDeniedError("no"), "k"), wc.RemoteAccessDenied)
    assert isinstance(remote_error(ox.UnauthenticatedError("no"), "k"), wc.RemoteAccessDenied)
    assert isinstance(remote_error(ox.NotFoundError("gone"), "k"), wc.NotFound)
    # By type, never by text: a refused connection whose message holds "403" (in a key or
    # an elapsed time) is no denial.
    refused = ox.GenericError("connect error: Connection refused, 403 ms, key 4030ABCD.bin")
    assert type(remote_error(refused, "k")) is wc.RemoteUnavailable
    error = remote_error(ox.GenericError("connection reset"), "fleet/x.bin")
    assert isinstance(error, wc.RemoteUnavailable) and "fleet/x.bin" in str(error)
    assert isinstance(wc.RemoteAccessDenied("x"), PermissionError)


def test_layered_stack(s3_endpoint, bucket, tmp_path, engine, add_wasm):
    key = wc.ModuleHash.sha256(add_wasm)
    remote(s3_endpoint, bucket, tmp_path, "elsewhere").save(
        key, engine, wasmtime.Module(engine, add_wasm)
    )
    memory = wc.MemoryCache()
    disk = wc.FileSystemCache(tmp_path / "here")
    stack = memory.with_fallback(disk.with_fallback(remote(s3_endpoint, bucket, tmp_path, "here")))
    assert call_add(engine, stack.load(key, engine)) == 5
    assert disk.contains(key, engine)
    assert memory.contains(key, engine)


def test_remote_failure_never_breaks_a_local_hit(tmp_path, engine, add_module, key, caplog):
    disk = wc.FileSystemCache(tmp_path / "here")
    disk.save(key, engine, add_module)
    dead = wc.ObjectStoreCache(
        "b",
        endpoint=f"http://127.0.0.1:{support.free_port()}",
        local_dir=tmp_path / "here",
        max_retries=0,
        timeout=2,
    )
    stack = disk.with_fallback(dead)
    assert call_add(engine, stack.load(key, engine)) == 5
    assert stack.contains(key, engine)
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        assert not wc.FileSystemCache(tmp_path / "empty").with_fallback(dead).contains(key, engine)
    # A save that fails remotely still lands locally, and is reported.
    other = wc.FileSystemCache(tmp_path / "other")
    with pytest.raises(wc.RemoteUnavailable):
        other.with_fallback(dead).save(key, engine, add_module)
    assert other.contains(key, engine)


def test_two_processes_saving_one_key(s3_endpoint, bucket, tmp_path, engine):
    wasm_path = tmp_path / "m.wasm"
    wasm = synth.data_module(8 << 20, seed=31)
    wasm_path.write_bytes(wasm)
    script = textwrap.dedent(f"""
        import sys, wasmtime, wasmcache as wc
        engine = wasmtime.Engine()
        cache = wc.ObjectStoreCache({bucket!r}, prefix="fleet", endpoint={s3_endpoint!r},
                                    local_dir=sys.argv[1], max_retries=5, timeout=30)
        wasm = open({str(wasm_path)!r}, "rb").read()
        module = wasmtime.Module(engine, wasm)
        for _ in range(5):
            cache.save(wc.ModuleHash.sha256(wasm), engine, module)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"p{i}")]) for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    module = remote(s3_endpoint, bucket, tmp_path, "reader").load(
        wc.ModuleHash.sha256(wasm), engine
    )
    store = wasmtime.Store(engine)
    probe = wasmtime.Instance(store, module, []).exports(store)["probe"]
    assert probe(store, (8 << 20) - 1) == wasm[-1]


def test_load_or_compile_compiles_once_per_fleet(s3_endpoint, bucket, tmp_path):
    """Machines (separate local folders, separate processes) missing at once: one compiles,
    the others wait for its upload and download it."""
    wasm_path = tmp_path / "slow.wasm"
    wasm_path.write_bytes(synth.data_module(1 << 20, functions=4000, seed=41))
    script = support.RACE_PRELUDE + textwrap.dedent(f"""
        import logging, sys, wasmtime, wasmcache as wc
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
        engine = wasmtime.Engine()
        local = sys.argv[2]
        stack = wc.FileSystemCache(local).with_fallback(wc.ObjectStoreCache(
            {bucket!r}, prefix="fleet", endpoint={s3_endpoint!r}, local_dir=local,
            max_retries=0, timeout=30, poll_seconds=0.1))
        module = stack.load_or_compile(engine, {str(wasm_path)!r})
        store = wasmtime.Store(engine)
        assert wasmtime.Instance(store, module, []).exports(store)["add"](store, 1, 2) == 3
    """)
    done = support.race(
        script, 3, tmp_path / "go", args=lambda i: [str(tmp_path / f"machine-{i}")], timeout=180
    )
    outputs = [d.stdout + d.stderr for d in done]
    assert all(d.returncode == 0 for d in done), outputs
    lines = [line for out in outputs for line in out.splitlines()]
    uploads = sum(line.startswith("uploaded") for line in lines)
    downloads = sum(line.startswith("remote hit") for line in lines)
    print(f"\n3 machines: {uploads} compile+upload, {downloads} downloads")
    assert uploads == 1
    assert downloads == 2


def test_a_failed_multipart_upload_is_aborted(
    s3_endpoint, s3, bucket, tmp_path, engine, monkeypatch
):
    """No parts of a failed upload stay in the bucket."""
    from wasmcache import remote as remote_module

    wasm = synth.data_module(40 << 20, seed=12)  # random: more than two parts compressed
    module = wasmtime.Module(engine, wasm)
    real_parts = remote_module._parts

    def failing(pieces):
        for i, part in enumerate(real_parts(pieces)):
            if i == 1:
                raise OSError("the disk holding the artifact went away")
            yield part

    monkeypatch.setattr(remote_module, "_parts", failing)
    with pytest.raises(wc.RemoteError):
        remote(s3_endpoint, bucket, tmp_path).save(wc.ModuleHash.sha256(wasm), engine, module)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# -- hostile bytes, parsed under a schema ---------------------------------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _manifest_with(**changes):
    def change(header: dict) -> bytes:
        header["manifest"].update(changes)
        return json.dumps(header).encode()

    return change


def _header_with(**changes):
    def change(header: dict) -> bytes:
        header.update(changes)
        return json.dumps(header).encode()

    return change


#: name -> (object magic, new header text from the good header)
_HOSTILE_HEADERS = {
    "nested": (b"WMCOBJ3\n", lambda h: b'{"manifest":' + _nested(4000) + b"}"),
    "nested-in-manifest": (b"WMCOBJ3\n", _manifest_with(kind=[[[["module"]]]])),
    "too-big": (b"WMCOBJ3\n", lambda h: b" " * 9000 + json.dumps(h).encode()),
    "digest-number": (b"WMCOBJ3\n", _manifest_with(entry_digest=12345)),
    "digest-not-hex": (b"WMCOBJ3\n", _manifest_with(entry_digest="z" * 64)),
    "length-string": (b"WMCOBJ3\n", _manifest_with(entry_length="19000")),
    "length-float": (b"WMCOBJ3\n", _manifest_with(entry_length=19000.0)),
    "length-bool": (b"WMCOBJ3\n", _manifest_with(entry_length=True)),
    "length-negative": (b"WMCOBJ3\n", _manifest_with(encoded_length=-1)),
    "length-huge": (b"WMCOBJ3\n", _manifest_with(entry_length=2**70)),
    "length-digits": (
        b"WMCOBJ3\n",
        lambda h: b'{"manifest":{"entry_length":' + b"9" * 5000 + b"}}",
    ),
    "key-lowercase": (b"WMCOBJ3\n", lambda h: _manifest_with(key=h["manifest"]["key"].lower())(h)),
    "engine-id-long": (b"WMCOBJ3\n", _manifest_with(engine_id="e" * 300)),
    "version-2": (b"WMCOBJ3\n", _manifest_with(version=2)),
    "unknown-field": (b"WMCOBJ3\n", _manifest_with(extra=1)),
    "signature-list": (b"WMCOBJ3\n", _header_with(signer="0" * 16, signature=["x"])),
    "signature-short": (b"WMCOBJ3\n", _header_with(signer="0" * 16, signature="AAAA")),
    "signer-alone": (b"WMCOBJ3\n", _header_with(signer="0" * 16)),
    "not-utf8": (b"WMCOBJ3\n", lambda h: b'{"manifest":"\xff\xfe"}'),
    "duplicate-key": (b"WMCOBJ3\n", lambda h: json.dumps(h).encode()[:-1] + b',"manifest":{}}'),
    "nan": (
        b"WMCOBJ3\n",
        lambda h: json.dumps(h).encode().replace(b'"version": 1', b'"version": NaN'),
    ),
    "array": (b"WMCOBJ3\n", lambda h: b"[]"),
    "old-nested": (b"WMCOBJ2\n", lambda h: b'{"manifest":' + _nested(4000) + b"}"),
    "old-string-checksum": (b"WMCOBJ2\n", None),
    "old-float-length": (b"WMCOBJ2\n", None),
}


def _old_header(entry: bytes, engine, key, **changes) -> bytes:
    checksum = int.from_bytes(entry[-16:-8], "little")
    manifest = {"engine_id": wc.engine_id(engine), "key": str(key), "kind": "module",
                "length": len(entry), "checksum": checksum}  # fmt: skip
    manifest.update(changes)
    return json.dumps({"manifest": manifest, "compression": "none"}).encode()


@pytest.mark.parametrize("case", sorted(_HOSTILE_HEADERS))
def test_hostile_headers_are_remote_corrupt_and_a_miss(
    s3_endpoint, s3, bucket, tmp_path, engine, add_wasm, case
):
    from wasmcache.errors import RemoteCorrupt
    from wasmcache.signing import generate_pem_pair

    key = wc.ModuleHash.sha256(add_wasm)
    writer = remote(s3_endpoint, bucket, tmp_path, "writer", compression_level=None)
    writer.save(key, engine, wasmtime.Module(engine, add_wasm))
    name = writer.object_key(key, engine)
    good = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    header, entry = support.split_object(good)
    magic, change = _HOSTILE_HEADERS[case]
    if case == "old-string-checksum":
        text = _old_header(entry, engine, key, checksum="abc")
    elif case == "old-float-length":
        text = _old_header(entry, engine, key, length=float(len(entry)))
    else:
        text = change(header)
    s3.put_object(Bucket=bucket, Key=name, Body=support.join_object(text, entry, magic))
    trusted = [generate_pem_pair()[1]]
    for options in ({}, {"trusted_keys": trusted}):
        reader = remote(s3_endpoint, bucket, tmp_path, "reader", **options)
        old_and_trusting = magic == b"WMCOBJ2\n" and options
        with pytest.raises(wc.SignatureError if old_and_trusting else RemoteCorrupt) as info:
            reader.load(key, engine)
        assert name in str(info.value)
        assert [p for p in (tmp_path / "reader").rglob("*") if p.is_file()] == []
    # For load_or_compile it is a miss: the module is compiled (and the object replaced).
    stack = wc.FileSystemCache(tmp_path / "stack").with_fallback(
        remote(s3_endpoint, bucket, tmp_path, "stack", trusted_keys=trusted)
    )
    assert call_add(engine, stack.load_or_compile(engine, add_wasm, key=key)) == 5


def test_json_nesting_is_measured_before_parsing():
    from wasmcache import schema

    assert schema.nesting(b'{"a": [1, {"b": "[[[[{{"}], "c": "\\\\\\"["}') == 3
    with pytest.raises(schema.Invalid, match="nested 5000 deep"):
        schema.loads(_nested(5000), max_size=1 << 20, max_depth=3)
    assert schema.loads(b'{"a": [[1]]}', max_size=100, max_depth=3) == {"a": [[1]]}
    for bad in (b"{", b'{"a": 1, "a": 2}', b"NaN", b"\xff", b"1" * 5000):
        with pytest.raises(schema.Invalid):
            schema.loads(bad, max_size=1 << 20, max_depth=3)


def test_a_nested_lease_body_is_never_parsed(s3_endpoint, s3, bucket, tmp_path, engine, add_wasm):
    """A waiter reads only a lease's size and ETag: any body is a lease held by someone,
    taken over once its ETag stays the same for 1.5 heartbeats."""
    key = wc.ModuleHash.sha256(add_wasm)
    cache = remote(s3_endpoint, bucket, tmp_path, "m", heartbeat=0.2, poll_seconds=0.05)
    s3.put_object(Bucket=bucket, Key=cache.object_key(key, engine, lease=True), Body=_nested(10**5))
    stack = wc.FileSystemCache(tmp_path / "m").with_fallback(cache)
    assert call_add(engine, stack.load_or_compile(engine, add_wasm, key=key)) == 5
    assert cache.contains(key, engine)


# -- uploads -------------------------------------------------------------------------------------


def test_save_does_not_upload_what_is_there(
    s3_endpoint, s3, bucket, tmp_path, engine, add_wasm, monkeypatch
):
    import obstore

    from wasmcache.signing import generate_pem_pair

    key = wc.ModuleHash.sha256(add_wasm)
    module = wasmtime.Module(engine, add_wasm)
    puts: list[str] = []
    real_put = obstore.put

    def counted(store, name, *args, **kwargs):
        puts.append(name)
        return real_put(store, name, *args, **kwargs)

    monkeypatch.setattr(obstore, "put", counted)
    first = remote(s3_endpoint, bucket, tmp_path, "a")
    name = first.object_key(key, engine)
    first.save(key, engine, module)
    first.save(key, engine, module)
    remote(s3_endpoint, bucket, tmp_path, "b").save(key, engine, module)
    assert puts == [name]
    # An object of an older format is replaced (it would be refused where keys are trusted).
    cache = wc.FileSystemCache(tmp_path / "old")
    cache.save(key, engine, module)
    s3.put_object(Bucket=bucket, Key=name, Body=cache.path(key, engine).read_bytes())
    first.save(key, engine, module)
    assert puts == [name, name]
    # A machine that signs replaces an unsigned object once, then keeps its own.
    private, public = generate_pem_pair()
    signer = remote(s3_endpoint, bucket, tmp_path, "c", signing_key=private)
    signer.save(key, engine, module)
    signer.save(key, engine, module)
    assert puts == [name, name, name]
    trusting = remote(s3_endpoint, bucket, tmp_path, "d", trusted_keys=[public])
    trusting.save(key, engine, module)
    assert puts == [name, name, name]
    assert call_add(engine, trusting.load(key, engine)) == 5


def test_lease_wait_defaults_to_forty_heartbeats_and_is_checked(tmp_path):
    import math

    cache = wc.ObjectStoreCache("b", local_dir=tmp_path, heartbeat=2.0)
    assert cache.lease_wait == 80.0
    assert wc.ObjectStoreCache("b", local_dir=tmp_path, lease_wait=0).lease_wait == 0.0
    for bad, error in ((-1, ValueError), (math.inf, ValueError), (math.nan, ValueError),
                       ("5", TypeError), (True, TypeError)):  # fmt: skip
        with pytest.raises(error, match="lease_wait"):
            wc.ObjectStoreCache("b", local_dir=tmp_path, lease_wait=bad)


def test_a_signed_header_over_a_broken_body_is_replaced(
    s3_endpoint, s3, bucket, tmp_path, engine, add_wasm
):
    """A bucket writer keeps the signed header and breaks the body: a load refuses it, and
    the next save replaces it (a header alone does not make an object "already there")."""
    from wasmcache.signing import generate_pem_pair

    private, public = generate_pem_pair()
    key = wc.ModuleHash.sha256(add_wasm)
    signer = remote(s3_endpoint, bucket, tmp_path, "ci", signing_key=private)
    signer.save(key, engine, wasmtime.Module(engine, add_wasm))
    name = signer.object_key(key, engine)
    good = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    header_end = len(good) - body_length(good)
    broken_bodies = {"zeros": good[:header_end] + bytes(len(good) - header_end), "cut": good[:-10]}
    for how, broken in broken_bodies.items():
        s3.put_object(Bucket=bucket, Key=name, Body=broken)
        worker = remote(s3_endpoint, bucket, tmp_path, f"w-{how}", trusted_keys=[public])
        with pytest.raises(wc.RemoteCorrupt):
            worker.load(key, engine)
        # The signer's own load_or_compile: refused, compiled, and the object replaced.
        ci = remote(
            s3_endpoint, bucket, tmp_path, f"ci-{how}", signing_key=private, trusted_keys=[public]
        )
        assert call_add(engine, ci.load_or_compile(engine, add_wasm, key=key)) == 5
        fresh = remote(s3_endpoint, bucket, tmp_path, f"fresh-{how}", trusted_keys=[public])
        assert call_add(engine, fresh.load(key, engine)) == 5, how


def test_a_cache_that_only_trusts_keys_uploads_nothing(
    s3_endpoint, s3, bucket, tmp_path, engine, add_wasm, monkeypatch
):
    import obstore

    from wasmcache.signing import generate_pem_pair

    _, public = generate_pem_pair()
    puts: list[str] = []
    real_put = obstore.put
    monkeypatch.setattr(
        obstore, "put", lambda store, n, *a, **k: puts.append(n) or real_put(store, n, *a, **k)
    )
    worker = remote(s3_endpoint, bucket, tmp_path, "w", trusted_keys=[public])
    assert call_add(engine, worker.load_or_compile(engine, add_wasm)) == 5
    assert puts == []  # no object its own fleet would refuse, and no lease to wait on


def body_length(data: bytes) -> int:
    """The length of an object's body (what follows its header)."""
    import struct

    (size,) = struct.unpack_from("<I", data, 8)
    return len(data) - 12 - size
