"""The entry format, and the one answer to "what is this open file, and is it whole?".

An entry is the artifact exactly as wasmtime serialized it, followed by a 24-byte trailer:
payload length (u64 LE), XXH3-64 of the payload (u64 LE), and the magic ``b"WMCACHE1"``.
Two older shapes still load: a bare artifact (what ``Module.serialize()`` writes) and an
LZW stream of one (the older wasmer cache, see :mod:`wasmcache.legacy`).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Literal, NamedTuple, Optional, Union

import xxhash

from wasmcache.elf import ELF_HEADER_SIZE, ELF_MAGIC, elf_extent

Buffer = Union[bytes, bytearray, memoryview]
Kind = Literal["trailer", "bare", "lzw"]

MAGIC = b"WMCACHE1"
TRAILER = struct.Struct("<QQ8s")
TRAILER_SIZE = TRAILER.size


class Corrupt(Exception):
    """Internal: the entry cannot be loaded; the message says why."""


class Trailer(NamedTuple):
    payload_length: int
    checksum: int


def checksum(payload: Buffer) -> int:
    """XXH3-64 of the payload."""
    return xxhash.xxh3_64_intdigest(payload)


def make_trailer(payload: Buffer) -> bytes:
    return TRAILER.pack(len(payload), checksum(payload), MAGIC)


def read_trailer(tail: bytes) -> Optional[Trailer]:
    """The trailer in the last 24 bytes of a file, or None if they are not one."""
    if len(tail) != TRAILER_SIZE:
        return None
    length, digest, magic = TRAILER.unpack(tail)
    return Trailer(length, digest) if magic == MAGIC else None


def inspect(fd: int, size: int, *, verify: bool) -> Kind:
    """What the open file holds: "trailer" (today's format: length checked, and with
    ``verify`` the checksum), "bare" (a whole artifact) or "lzw" (maybe an LZW stream:
    decoding decides). Raises Corrupt for anything else."""
    if size == 0:
        raise Corrupt("empty file")
    tail = os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) if size >= TRAILER_SIZE else b""
    trailer = read_trailer(tail)
    if trailer is not None:
        if trailer.payload_length != size - TRAILER_SIZE:
            raise Corrupt(
                f"length mismatch: trailer says {trailer.payload_length} bytes, "
                f"file holds {size - TRAILER_SIZE}"
            )
        if verify and file_checksum(fd, trailer.payload_length) != trailer.checksum:
            raise Corrupt("checksum mismatch")
        return "trailer"
    head = os.pread(fd, ELF_HEADER_SIZE, 0)
    if head.startswith(ELF_MAGIC):
        # A bare artifact is exactly its ELF length; anything else is an entry whose
        # trailer was damaged, or a truncated file.
        if elf_extent(head) != size:
            raise Corrupt("artifact without a valid trailer, or truncated")
        return "bare"
    return "lzw"


def holds(fd: int, trailer: bytes) -> bool:
    """Whether the open file is a whole, checked entry with exactly this trailer."""
    try:
        size = os.fstat(fd).st_size
        if size < TRAILER_SIZE or os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) != trailer:
            return False
        return inspect(fd, size, verify=True) == "trailer"
    except (OSError, Corrupt):
        return False


def file_checksum(fd: int, length: int) -> int:
    """XXH3-64 of the first ``length`` bytes of the open file."""
    if length == 0:
        return checksum(b"")
    # MAP_POPULATE maps the whole file in one call instead of a fault per page.
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        try:
            return checksum(view)
        finally:
            view.release()
