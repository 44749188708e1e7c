"""Pack LZW codes into a stream (MSB first, 8-bit symbols) at the widths a weezl decoder
reads them: for crafting edge-case streams in tests and in tools/make_lzw_vectors.py."""

from __future__ import annotations

CLEAR, END = 256, 257


def pack(codes: list[int]) -> bytes:
    """Pack codes MSB first; the width grows after the decoder adds entry 2^w - 1."""
    bits, nbits, out = 0, 0, bytearray()
    width, next_free, have_prev = 9, 258, False
    for code in codes:
        bits = (bits << width) | code
        nbits += width
        while nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
        if code == CLEAR:
            width, next_free, have_prev = 9, 258, False
        elif code == END:
            break
        else:
            if have_prev and next_free < 4096:
                if next_free == (1 << width) - 1 and width < 12:
                    width += 1
                next_free += 1
            have_prev = True
    if nbits:
        out.append((bits << (8 - nbits)) & 0xFF)
    return bytes(out)
