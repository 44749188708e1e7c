"""A straightforward pure-Python LZW decoder (MSB, 8-bit), the baseline of the codec bench."""

from __future__ import annotations


def decode(data: bytes) -> bytes:
    out = bytearray()
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    width, prev = 9, b""
    bits = nbits = pos = 0
    n = len(data)
    while True:
        while nbits < width:
            if pos == n:
                raise ValueError("no end code")
            bits = (bits << 8) | data[pos]
            pos += 1
            nbits += 8
        nbits -= width
        code = (bits >> nbits) & ((1 << width) - 1)
        bits &= (1 << nbits) - 1
        if code == 256:
            del table[258:]
            width, prev = 9, b""
            continue
        if code == 257:
            return bytes(out)
        if code < len(table):
            entry = table[code]
        elif code == len(table) and prev:
            entry = prev + prev[:1]
        else:
            raise ValueError("bad code")
        if prev and len(table) < 4096:
            table.append(prev + entry[:1])
            if len(table) == 1 << width and width < 12:
                width += 1
        out += entry
        prev = entry
