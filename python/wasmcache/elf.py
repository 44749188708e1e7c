"""What wasmcache needs to know about wasmtime's artifacts, which are ELF images: where one
ends (its section header table is written last) and what a named section holds."""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Union

Buffer = Union[bytes, bytearray, memoryview]

ELF_MAGIC = b"\x7fELF"
#: Bytes of an ELF file header (64-bit; a 32-bit one is shorter).
ELF_HEADER_SIZE = 64


class _ElfLayout(NamedTuple):
    endian: str
    is64: bool
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int


def _elf_layout(data: Buffer) -> Optional[_ElfLayout]:
    view = memoryview(data)
    if len(view) < 52 or view[:4] != ELF_MAGIC:
        return None
    elf_class, elf_data = view[4], view[5]
    if elf_class not in (1, 2) or elf_data not in (1, 2):
        return None
    endian = "<" if elf_data == 1 else ">"
    if elf_class == 2:
        if len(view) < 64:
            return None
        (shoff,) = struct.unpack_from(endian + "Q", view, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", view, 0x3A)
    else:
        (shoff,) = struct.unpack_from(endian + "I", view, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", view, 0x2E)
    return _ElfLayout(endian, elf_class == 2, shoff, shentsize, shnum, shstrndx)


def elf_extent(header: Buffer) -> Optional[int]:
    """Where the ELF image that starts with ``header`` ends (the end of its section header
    table), read from the file header alone; None if ``header`` is not one."""
    layout = _elf_layout(header)
    if layout is None or layout.shnum == 0:
        return None
    return layout.shoff + layout.shnum * layout.shentsize


def elf_length(data: Buffer) -> Optional[int]:
    """Length of the ELF image at the start of ``data``, or None if ``data`` does not start
    with a whole ELF header and section table."""
    end = elf_extent(data)
    return end if end is not None and end <= len(memoryview(data)) else None


def elf_section(data: Buffer, name: str) -> Optional[memoryview]:
    """The contents of the named section of an ELF image, or None if absent or malformed."""
    layout = _elf_layout(data)
    if layout is None or layout.shnum == 0 or layout.shstrndx >= layout.shnum:
        return None
    view = memoryview(data)
    header = struct.Struct(layout.endian + ("IIQQQQIIQQ" if layout.is64 else "IIIIIIIIII"))
    if layout.shentsize < header.size or elf_length(data) is None:
        return None

    def section(index: int) -> tuple[int, int, int]:
        fields = header.unpack_from(view, layout.shoff + index * layout.shentsize)
        name_offset, offset, size = fields[0], fields[4], fields[5]
        return name_offset, offset, size

    _, names_offset, names_size = section(layout.shstrndx)
    if names_offset + names_size > len(view):
        return None
    names = bytes(view[names_offset : names_offset + names_size])
    wanted = name.encode()
    for index in range(layout.shnum):
        name_offset, offset, size = section(index)
        end = names.find(b"\0", name_offset)
        if end >= 0 and names[name_offset:end] == wanted:
            return view[offset : offset + size] if offset + size <= len(view) else None
    return None
