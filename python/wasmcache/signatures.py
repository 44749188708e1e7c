"""The parameter and result types of a core module's exported function, read from its
binary: wasmtime-py's C API aborts the process when asked for a signature that holds a
``v128``, so ``run`` looks here first.

Only the sections before the code are read (types, imports, functions, exports), from
bytes or from a file by seeking past the rest. Anything this reader does not know (a
component, a malformed or newer binary) gives None: the caller then asks wasmtime.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Optional, Union

#: A value type's first byte: v128.
V128 = 0x7B
_REF_TYPES = (0x63, 0x64)  # (ref null ht), (ref ht): followed by a heap type
_TYPE, _IMPORT, _FUNCTION, _EXPORT, _CODE = 1, 2, 3, 7, 10
#: The most bytes of the sections read (a bound on hostile sizes).
_SECTION_LIMIT = 64 << 20

Signature = tuple[bytes, bytes]  # first bytes of the parameter and result types


class _Bad(Exception):
    """Not a binary this reader understands."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise _Bad("truncated")
        value = self.data[self.at]
        self.at += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _Bad("LEB128 too long")

    def skip(self, n: int) -> None:
        if n > len(self.data) - self.at:
            raise _Bad("truncated")
        self.at += n

    def name(self) -> bytes:
        n = self.uleb()
        start = self.at
        self.skip(n)
        return self.data[start : self.at]

    def valtype(self) -> int:
        code = self.byte()
        if code in _REF_TYPES:
            self.uleb()  # the heap type (an s33; its sign bits read as unsigned are fine)
        return code

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()
        if flags & 8:
            self.uleb()  # custom page size

    def comptype(self, kind: int) -> Optional[Signature]:
        if kind == 0x60:
            params = bytes(self.valtype() for _ in range(self.uleb()))
            results = bytes(self.valtype() for _ in range(self.uleb()))
            return params, results
        if kind == 0x5F:  # struct
            for _ in range(self.uleb()):
                self.fieldtype()
            return None
        if kind == 0x5E:  # array
            self.fieldtype()
            return None
        raise _Bad(f"unknown type form {kind:#x}")

    def fieldtype(self) -> None:
        code = self.byte()
        if code not in (0x78, 0x77):  # packed i8, i16
            self.at -= 1
            self.valtype()
        self.byte()  # mutability

    def subtype(self) -> Optional[Signature]:
        kind = self.byte()
        if kind in (0x50, 0x4F):  # sub, sub final
            for _ in range(self.uleb()):
                self.uleb()
            kind = self.byte()
        return self.comptype(kind)


def _types(r: _Reader) -> list[Optional[Signature]]:
    types: list[Optional[Signature]] = []
    for _ in range(r.uleb()):
        if r.data[r.at : r.at + 1] == b"\x4e":  # a recursion group
            r.byte()
            types.extend(r.subtype() for _ in range(r.uleb()))
        else:
            types.append(r.subtype())
    return types


def _imported_functions(r: _Reader) -> list[int]:
    functions = []
    for _ in range(r.uleb()):
        r.name()
        r.name()
        kind = r.byte()
        if kind == 0x00:
            functions.append(r.uleb())
        elif kind == 0x01:
            r.valtype()
            r.limits()
        elif kind == 0x02:
            r.limits()
        elif kind == 0x03:
            r.valtype()
            r.byte()
        elif kind == 0x04:
            r.byte()
            r.uleb()
        else:
            raise _Bad(f"unknown import kind {kind:#x}")
    return functions


def _sections(source: BinaryIO, wanted: tuple[int, ...]) -> dict[int, bytes]:
    """The contents of the ``wanted`` sections among the type, import, function and
    export sections (the file is read up to the code section, skipping the rest)."""
    found: dict[int, bytes] = {}
    if source.read(8) != b"\0asm\x01\x00\x00\x00":
        raise _Bad("not a core module")
    at = 8
    while not all(w in found for w in wanted):
        source.seek(at)
        r = _Reader(source.read(11))  # a section id and its size, at most 1 + 10 bytes
        if not r.data:
            break
        section, size = r.byte(), r.uleb()
        if section == _CODE or size > _SECTION_LIMIT:
            break
        at += r.at
        if section in wanted:
            source.seek(at)
            body = source.read(size)
            if len(body) != size:
                raise _Bad("truncated")
            found[section] = body
        at += size
    return found


def _stream(source: Union[bytes, bytearray, BinaryIO]) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def may_hold_v128(source: Union[bytes, bytearray, BinaryIO]) -> bool:
    """Whether any function type of the module has a ``v128`` parameter or result (True
    where the binary cannot be read here: then ask :func:`export_signature`). Reads only
    the type section, the first one of a module."""
    try:
        section = _sections(_stream(source), (_TYPE,)).get(_TYPE, b"\0")
        if bytes([V128]) not in section:
            return False  # the byte of v128 appears nowhere in the types
        types = _types(_Reader(section))
    except (_Bad, IndexError, OSError, ValueError):
        return True
    return any(V128 in params or V128 in results for params, results in filter(None, types))


def export_signature(source: Union[bytes, bytearray, BinaryIO], name: str) -> Optional[Signature]:
    """The first bytes of the parameter and result types of the function exported as
    ``name`` (one byte a type), or None if there is none or the binary is not one this
    reader understands."""
    try:
        sections = _sections(_stream(source), (_TYPE, _IMPORT, _FUNCTION, _EXPORT))
        types = _types(_Reader(sections.get(_TYPE, b"\0")))
        functions = _imported_functions(_Reader(sections.get(_IMPORT, b"\0")))
        r = _Reader(sections.get(_FUNCTION, b"\0"))
        functions += [r.uleb() for _ in range(r.uleb())]
        r = _Reader(sections.get(_EXPORT, b"\0"))
        wanted = name.encode()
        for _ in range(r.uleb()):
            export, kind, index = r.name(), r.byte(), r.uleb()
            if export == wanted and kind == 0x00:
                return types[functions[index]]
    except (_Bad, IndexError, OSError, ValueError):
        return None
    return None
