import hashlib
import pickle

import blake3
import pytest
import wasmtime
import xxhash

import wasmcache as wc
from wasmcache.hashing import DEFAULT_ALGORITHM, THREADED_BYTES


def test_xxhash_is_xxh64_seed0_little_endian():
    h = wc.ModuleHash.xxhash(b"abc")
    assert h.algorithm == "xxhash"
    assert h.digest == xxhash.xxh64(b"abc", seed=0).intdigest().to_bytes(8, "little")
    assert str(h) == h.digest.hex().upper()
    assert len(str(h)) == 16


def test_sha256():
    h = wc.ModuleHash.sha256(b"abc")
    assert h.algorithm == "sha256"
    assert h.digest == hashlib.sha256(b"abc").digest()
    assert str(h) == hashlib.sha256(b"abc").hexdigest().upper()


@pytest.mark.parametrize("data", [b"", b"\0asm", bytearray(b"xyz"), memoryview(b"mv")])
def test_accepts_any_bytes_like(data):
    assert wc.ModuleHash.xxhash(data) == wc.ModuleHash.xxhash(bytes(data))
    assert wc.ModuleHash.sha256(data) == wc.ModuleHash.sha256(bytes(data))
    assert wc.ModuleHash.blake3(data) == wc.ModuleHash.blake3(bytes(data))


def test_from_bytes_round_trip():
    h = wc.ModuleHash.xxhash(b"data")
    assert wc.ModuleHash.xxhash_from_bytes(h.digest) == h
    s = wc.ModuleHash.sha256(b"data")
    assert wc.ModuleHash.sha256_from_bytes(s.digest) == s


@pytest.mark.parametrize("size", [0, 7, 9, 32])
def test_xxhash_from_bytes_rejects_wrong_length(size):
    with pytest.raises(ValueError):
        wc.ModuleHash.xxhash_from_bytes(bytes(size))


@pytest.mark.parametrize("size", [0, 8, 31, 33])
def test_sha256_from_bytes_rejects_wrong_length(size):
    with pytest.raises(ValueError):
        wc.ModuleHash.sha256_from_bytes(bytes(size))


def test_from_bytes_rejects_non_bytes():
    with pytest.raises(TypeError):
        wc.ModuleHash.xxhash_from_bytes("0123456789abcdef")  # type: ignore[arg-type]


def test_parse_any_case():
    h = wc.ModuleHash.xxhash(b"abc")
    assert wc.ModuleHash.parse(str(h)) == h
    assert wc.ModuleHash.parse(str(h).lower()) == h
    b = wc.ModuleHash.blake3(b"abc")
    assert wc.ModuleHash.parse(str(b).lower()) == b
    s = wc.ModuleHash.sha256(b"abc")
    assert wc.ModuleHash.parse(str(s).lower(), "sha256") == s


def test_64_digits_are_the_default_key_unless_the_algorithm_is_named():
    """A SHA-256 and a BLAKE3 digest are both 64 digits: text alone is taken for the
    default key; text that may be a SHA-256 key names it."""
    s = wc.ModuleHash.sha256(b"abc")
    assert wc.ModuleHash.parse(str(s)).algorithm == DEFAULT_ALGORITHM == "blake3"
    assert wc.ModuleHash.parse(str(s)) != s
    assert wc.ModuleHash.parse(str(s), "sha256") == s
    x = wc.ModuleHash.xxhash(b"abc")
    assert wc.ModuleHash.parse(str(x), "xxhash") == x


@pytest.mark.parametrize(
    ("text", "algorithm"),
    [("0" * 16, "sha256"), ("0" * 64, "xxhash"), ("0" * 16, "blake3"), ("0" * 63, "blake3")],
)
def test_parse_checks_the_length_of_the_named_algorithm(text, algorithm):
    with pytest.raises(ValueError, match=algorithm):
        wc.ModuleHash.parse(text, algorithm)


def test_parse_refuses_an_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        wc.ModuleHash.parse("0" * 64, "md5")


def test_blake3():
    h = wc.ModuleHash.blake3(b"abc")
    assert h.algorithm == "blake3"
    assert h.digest == blake3.blake3(b"abc").digest()
    # The published test vector of the empty input.
    empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert wc.ModuleHash.blake3(b"").digest.hex() == empty
    assert wc.ModuleHash.blake3_from_bytes(h.digest) == h


def test_blake3_on_threads_gives_the_same_digest():
    data = bytes(range(256)) * ((THREADED_BYTES + 12345) // 256)
    assert len(data) >= THREADED_BYTES
    assert wc.ModuleHash.blake3(data).digest == blake3.blake3(data).digest()
    view = memoryview(data)[1:]
    assert wc.ModuleHash.blake3(view).digest == blake3.blake3(data[1:]).digest()


def test_of_names_each_algorithm_and_the_default():
    for name in ("blake3", "sha256", "xxhash"):
        assert wc.ModuleHash.of(name, b"x") == getattr(wc.ModuleHash, name)(b"x")
    assert wc.ModuleHash.of(DEFAULT_ALGORITHM, b"x").algorithm == "blake3"
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        wc.ModuleHash.of("md5", b"x")


def test_the_default_key_of_bytes_is_blake3(tmp_path, add_wasm):
    """load_or_compile keys bytes by BLAKE3: an entry saved under the SHA-256 key of
    earlier versions is a miss, and stays loadable by its explicit key."""
    engine = wasmtime.Engine()
    cache = wc.FileSystemCache(tmp_path / "cache")
    old = wc.ModuleHash.sha256(add_wasm)
    cache.save(old, engine, wasmtime.Module(engine, add_wasm))
    cache.load_or_compile(engine, add_wasm)
    assert cache.contains(wc.ModuleHash.blake3(add_wasm), engine)
    assert cache.load(old, engine) is not None
    assert cache.load_or_compile(engine, add_wasm, key=old) is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 15,
        "0" * 17,
        "0" * 63,
        "0" * 65,
        "g" * 16,
        " " + "0" * 16,
        "0" * 16 + "\n",
        "00 00 00 00 00 00 00 00",
        "0x" + "0" * 14,
    ],
)
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        wc.ModuleHash.parse(text)


def test_hashable_comparable_immutable():
    a, b = wc.ModuleHash.xxhash(b"a"), wc.ModuleHash.xxhash(b"b")
    assert len({a, b, wc.ModuleHash.xxhash(b"a")}) == 2
    assert (a < b) != (b < a)
    assert sorted([b, a]) == sorted([a, b])
    assert a != wc.ModuleHash.sha256(b"a")
    with pytest.raises(AttributeError):
        a.digest = b"x" * 8  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a._digest = b"x" * 8  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(a)) == a
    assert eval(repr(a), {"ModuleHash": wc.ModuleHash}) == a
    b = wc.ModuleHash.blake3(b"a")
    assert b != wc.ModuleHash.sha256_from_bytes(b.digest)  # same digest, other algorithm
    assert pickle.loads(pickle.dumps(b)) == b
    assert eval(repr(b), {"ModuleHash": wc.ModuleHash}) == b


def test_a_remote_manifest_names_a_blake3_key_and_tells_it_from_sha256():
    """The fleet's manifest carries the key's algorithm: a BLAKE3 key round-trips, and a
    SHA-256 key with the same digest is not the one it names."""
    from wasmcache.manifest import Manifest

    key = wc.ModuleHash.blake3(b"module")
    manifest = Manifest(
        engine_id="e", key_algorithm=key.algorithm, key=str(key), kind="module",
        entry_length=1, entry_digest="0" * 64, encoding="none", encoded_length=1,
    )  # fmt: skip
    assert Manifest.parse(manifest.fields()) == manifest
    assert manifest.names("e", key, "")
    assert not manifest.names("e", wc.ModuleHash.sha256_from_bytes(key.digest), "")
