"""The LZW codec against vectors made by the real weezl crate (tests/data), the plain
Python decoder in support.py, and weezl itself when tools/weezl-ref is built."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import CLEAR, END, pack, weezl, weezl_binary
from support import reference_lzw_decode as reference_decode
from wasmcache import CacheError, lzw

VECTORS = json.loads((Path(__file__).parent / "data" / "lzw_vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["decode"], ids=lambda v: v["name"])
def test_decode_matches_weezl(vector):
    stream = bytes.fromhex(vector["stream"])
    if vector["output"] is None:
        with pytest.raises(lzw.LZWError):
            lzw.decode(stream)
    else:
        assert lzw.decode(stream) == bytes.fromhex(vector["output"])


@pytest.mark.parametrize("vector", VECTORS["encode"], ids=lambda v: v["name"])
def test_decodes_weezl_encoding(vector):
    assert lzw.decode(bytes.fromhex(vector["weezl"])) == bytes.fromhex(vector["input"])


@pytest.mark.parametrize("vector", VECTORS["encode"], ids=lambda v: v["name"])
def test_encode_round_trips(vector):
    data = bytes.fromhex(vector["input"])
    encoded = lzw.encode(data)
    assert lzw.decode(encoded) == data
    assert reference_decode(encoded) == data


def test_python_reference_agrees_with_vectors():
    """The Python decoder used by the property tests agrees with weezl on every vector."""
    for vector in VECTORS["decode"]:
        stream = bytes.fromhex(vector["stream"])
        if vector["output"] is None:
            with pytest.raises(ValueError):
                reference_decode(stream)
        else:
            assert reference_decode(stream) == bytes.fromhex(vector["output"])


def test_encoder_starts_with_clear_and_ends_with_end():
    encoded = lzw.encode(b"")
    assert encoded == pack([CLEAR, END])
    assert lzw.encode(b"A") == pack([CLEAR, 65, END])


def test_empty_input_is_rejected():
    with pytest.raises(lzw.LZWError, match="end code"):
        lzw.decode(b"")


def test_errors_are_cache_and_value_errors():
    with pytest.raises(CacheError):
        lzw.decode(b"\xff\xff")
    with pytest.raises(ValueError):
        lzw.decode(b"\xff\xff")


def test_bad_code_reports_offset():
    stream = pack([CLEAR, 65, 66, 67, 68, 400, END])
    with pytest.raises(lzw.LZWError, match=r"invalid LZW code at byte 5") as info:
        lzw.decode(stream)
    assert info.value.reason == "code"


def test_accepts_bytes_like():
    encoded = lzw.encode(b"hello hello")
    assert lzw.decode(bytearray(encoded)) == b"hello hello"
    assert lzw.decode(memoryview(encoded)) == b"hello hello"
    assert lzw.encode(memoryview(b"hello hello")) == encoded


def test_rejects_non_buffers():
    with pytest.raises(TypeError):
        lzw.decode("text")  # type: ignore[arg-type]


def test_output_cap():
    data = bytes(100_000)
    encoded = lzw.encode(data)
    assert lzw.decode(encoded, max_output=len(data)) == data
    with pytest.raises(lzw.LZWError, match="past the output cap") as info:
        lzw.decode(encoded, max_output=len(data) - 1)
    assert info.value.reason == "too-large"
    with pytest.raises(lzw.LZWError):
        lzw.decode(lzw.encode(b"x"), max_output=0)
    assert lzw.decode(lzw.encode(b""), max_output=0) == b""


def test_output_cap_bounds_a_decompression_bomb():
    # Each code re-emits a string one byte longer than the last: ~3800 codes give ~7 MB.
    codes = [CLEAR, 0] + list(range(258, 4096)) + [4095] * 20000 + [END]
    bomb = pack(codes)
    with pytest.raises(lzw.LZWError, match="cap 1048576 bytes"):
        lzw.decode(bomb, max_output=1 << 20)
    assert len(lzw.decode(bomb)) > 50_000_000


def test_long_strings_and_width_changes():
    data = bytes(range(256)) * 64 + bytes(300_000) + os.urandom(50_000)
    assert lzw.decode(lzw.encode(data)) == data


@given(st.binary(max_size=5000))
def test_round_trip(data):
    assert lzw.decode(lzw.encode(data)) == data


@given(st.lists(st.sampled_from(b"ab\x00"), max_size=20000).map(bytes))
def test_round_trip_repetitive(data):
    assert lzw.decode(lzw.encode(data)) == data


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_decode_as_the_reference_or_raise_only_lzw_error(data):
    try:
        out = lzw.decode(data, max_output=1 << 22)
    except Exception as exc:
        assert type(exc) is lzw.LZWError, repr(exc)
        with pytest.raises(ValueError):
            reference_decode(data)
    else:
        assert out == reference_decode(data)


@given(st.binary(min_size=1, max_size=400), st.data())
def test_decode_mutated_streams(data, draw):
    stream = bytearray(lzw.encode(data))
    for _ in range(draw.draw(st.integers(1, 4))):
        i = draw.draw(st.integers(0, len(stream) - 1))
        stream[i] = draw.draw(st.integers(0, 255))
    try:
        out = lzw.decode(bytes(stream), max_output=1 << 22)
    except lzw.LZWError:
        return
    assert out == reference_decode(bytes(stream))


@given(st.lists(st.integers(0, 4095), max_size=300))
def test_decode_arbitrary_code_sequences(codes):
    stream = pack([CLEAR, *codes, END])
    try:
        out = lzw.decode(stream)
    except lzw.LZWError:
        with pytest.raises(ValueError):
            reference_decode(stream)
    else:
        assert out == reference_decode(stream)


needs_weezl = pytest.mark.skipif(
    sys.platform == "win32" or weezl_binary() is None,
    reason="Windows: tools/weezl-ref is built for the host (cargo), not for Windows"
    if sys.platform == "win32"
    else "tools/weezl-ref not built (needs cargo + librust-weezl-dev)",
)


@needs_weezl
@given(st.binary(max_size=20000))
def test_weezl_decodes_our_encoding(data):
    assert weezl("decode", lzw.encode(data)) == data


@needs_weezl
@given(st.lists(st.integers(0, 4095), max_size=200), st.booleans())
def test_decode_agrees_with_weezl_on_code_sequences(codes, leading_clear):
    stream = pack(([CLEAR] if leading_clear else []) + codes + [END])
    theirs = weezl("decode", stream)
    try:
        ours = lzw.decode(stream)
    except lzw.LZWError:
        ours = None
    if not leading_clear and theirs is None and ours is not None:
        # weezl 0.1.5 rejects any stream without a leading clear; today's weezl does not.
        assert ours == reference_decode(stream)
        return
    assert ours == theirs
