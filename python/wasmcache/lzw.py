"""LZW in the format of the ``weezl`` crate (MSB bit order, 8-bit symbols).

The older wasmer cache stored compiled modules this way; wasmcache still reads them.
"""

from __future__ import annotations

from wasmcache._core import DEFAULT_MAX_OUTPUT, Buffer, lzw_decode, lzw_encode
from wasmcache.errors import LZWError

__all__ = ["DEFAULT_MAX_OUTPUT", "LZWError", "decode", "encode"]


def decode(data: Buffer, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
    """Decode an LZW stream; raise :class:`LZWError` if it is malformed or would decode to
    more than ``max_output`` bytes (the decoder never allocates past that)."""
    return lzw_decode(data, max_output)


def encode(data: Buffer) -> bytes:
    """Encode bytes as an LZW stream that weezl decodes back to ``data``."""
    return lzw_encode(data)
