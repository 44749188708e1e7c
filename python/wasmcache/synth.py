"""Generate WebAssembly modules of a chosen size, with no toolchain and no download.

Every module exports ``add(a, b) -> a + b`` and ``probe(i) -> byte i of memory``; the
data segment (``data_bytes``) makes the compiled artifact big while compiling fast, and
the extra (unexported) functions make compiling slow like real code-heavy modules.
"""

from __future__ import annotations

import random

_PAGE = 65536


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(body)) + body


def _name(text: str) -> bytes:
    raw = text.encode()
    return _uleb(len(raw)) + raw


def _body(locals_: bytes, code: bytes) -> bytes:
    body = locals_ + code + b"\x0b"
    return _uleb(len(body)) + body


# A filler function (i32) -> i32: a chain of arithmetic the compiler must optimise.
def _filler_code(rng: random.Random, ops: int) -> bytes:
    code = bytearray(b"\x20\x00")  # local.get 0
    for _ in range(ops):
        code += b"\x41" + _sleb(rng.randrange(-(1 << 20), 1 << 20))  # i32.const
        code += bytes([rng.choice([0x6A, 0x6B, 0x6C, 0x73, 0x71, 0x72])])  # add sub mul xor and or
        if rng.random() < 0.2:
            code += b"\x22\x00"  # local.tee 0
    return bytes(code)


def data_module(data_bytes: int, *, functions: int = 0, seed: int = 0) -> bytes:
    """A module with ``data_bytes`` of pseudo-random data and ``functions`` filler
    functions of about 60 operations each, besides ``add`` and ``probe``."""
    if data_bytes < 0 or functions < 0:
        raise ValueError("sizes must not be negative")
    rng = random.Random(seed)
    i32 = b"\x7f"
    types = [
        b"\x60" + _vec([i32, i32]) + _vec([i32]),  # 0: (i32, i32) -> i32
        b"\x60" + _vec([i32]) + _vec([i32]),  # 1: (i32) -> i32
    ]
    func_types = [_uleb(0), _uleb(1)] + [_uleb(1)] * functions
    pages = max(1, -(-data_bytes // _PAGE))
    memory = _vec([b"\x00" + _uleb(pages)])
    exports = [_name("add") + b"\x00" + _uleb(0), _name("probe") + b"\x00" + _uleb(1)]
    bodies = [
        _body(_vec([]), b"\x20\x00\x20\x01\x6a"),  # local.get 0, local.get 1, i32.add
        _body(_vec([]), b"\x20\x00\x2d\x00\x00"),  # local.get 0, i32.load8_u
    ]
    # A pool of distinct bodies, reused: each function is still compiled on its own.
    pool = [_body(_vec([]), _filler_code(rng, 60)) for _ in range(min(functions, 256))]
    bodies += [pool[i % len(pool)] for i in range(functions)]
    payload = rng.randbytes(data_bytes) if data_bytes else b""
    segments = [b"\x00\x41\x00\x0b" + _uleb(len(payload)) + payload] if data_bytes else []
    return b"".join(
        [
            b"\0asm\x01\0\0\0",
            _section(1, _vec(types)),
            _section(3, _vec(func_types)),
            _section(5, memory),
            _section(7, _vec(exports)),
            _section(10, _vec(bodies)),
            _section(11, _vec(segments)),
        ]
    )
