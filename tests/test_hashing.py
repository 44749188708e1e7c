import hashlib
import pickle

import pytest
import xxhash

import wasmcache as wc


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
    s = wc.ModuleHash.sha256(b"abc")
    assert wc.ModuleHash.parse(str(s).lower()) == s


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
