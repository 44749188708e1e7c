"""Names as the command shows them: a file name may hold anything but ``/`` and NUL, and a
terminal obeys the control characters in what it prints.

So a backslash is doubled; ``\\n``, ``\\t``, ``\\r`` are shown as such; other control and
format characters (C0, DEL, C1, line and paragraph separators, bidirectional overrides) as
``\\xNN`` or ``\\uNNNN``; bytes that were not UTF-8 (decoded by Python as lone surrogates) as
``\\xNN`` of the byte. Everything else is printed as it is.
"""

from __future__ import annotations

import os
from typing import Union

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def _char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    if c.isprintable() or c == " ":
        return c
    import unicodedata  # for the rare name that needs escaping

    if unicodedata.category(c) not in _HIDDEN:
        return c
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(name: Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]) -> str:
    """``name`` safe to print on a terminal and in any encoding that holds ASCII."""
    text = os.fsdecode(name)
    if text.isprintable() and "\\" not in text:
        return text  # the common name: nothing to escape (a space is printable)
    return "".join([_char(c) for c in text])
