"""ObjectStoreCache against a real S3 API server (moto's server mode) on loopback."""

from __future__ import annotations

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
    assert isinstance(machine_a.load_or_compile(engine, wasm), kinds.component_class())
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
