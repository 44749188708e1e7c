"""The entry format, and the one answer to "what is this open file, and is it whole?".

Today's entry (``WMCACHE2``) is::

    artifact | metadata (JSON) | u32 LE metadata length | trailer

where the artifact is what wasmtime serialized, the metadata describes it (:class:`Info`)
and the 24-byte trailer holds the payload length (u64 LE; the payload is everything before
the trailer), the XXH3-64 of the payload (u64 LE) and the magic. So the checksum covers
the metadata too, and the metadata is read with two small preads, without mapping the
artifact. Older shapes still load, as modules: ``WMCACHE1`` (artifact + trailer), a bare
artifact (what ``Module.serialize()`` writes) and an LZW stream of one (see
:mod:`wasmcache.legacy`).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from typing import Any, Literal, NamedTuple, Optional, Union

import xxhash

from wasmcache.elf import ELF_HEADER_SIZE, ELF_MAGIC, elf_extent
from wasmcache.kinds import KINDS, Kind, wasmtime_version

Buffer = Union[bytes, bytearray, memoryview]
Shape = Literal["trailer", "bare", "lzw"]

MAGIC = b"WMCACHE2"
MAGIC_V1 = b"WMCACHE1"
MAGICS = (MAGIC, MAGIC_V1)
TRAILER = struct.Struct("<QQ8s")
TRAILER_SIZE = TRAILER.size
_META_LENGTH = struct.Struct("<I")
MAX_META = 1 << 16
_MAX_SOURCE = 1024  # characters of a source name kept


class Corrupt(Exception):
    """Internal: the entry cannot be loaded; the message says why."""


class Trailer(NamedTuple):
    payload_length: int
    checksum: int
    magic: bytes


class Origin(NamedTuple):
    """What the compiler knew: the source file's name, the Wasm size, the compile time."""

    source: Optional[str] = None
    wasm_size: Optional[int] = None
    compile_seconds: Optional[float] = None


class Info(NamedTuple):
    """An entry's description (older entries: kind "module", everything else None)."""

    kind: Kind = "module"
    source: Optional[str] = None
    wasm_size: Optional[int] = None
    compile_seconds: Optional[float] = None
    created: Optional[float] = None
    wasmtime: Optional[str] = None
    artifact_length: Optional[int] = None
    artifact_checksum: Optional[int] = None


class Sealed(NamedTuple):
    """What follows an artifact in its entry, and what it says of the artifact."""

    tail: bytes  # metadata, its length and the trailer
    length: int  # of the whole entry
    checksum: int  # the trailer's: XXH3-64 of the payload
    kind: Kind
    artifact_length: int
    artifact_checksum: int


def checksum(payload: Buffer) -> int:
    """XXH3-64 of the payload."""
    return xxhash.xxh3_64_intdigest(payload)


def seal(artifact: Buffer, kind: Kind, origin: Optional[Origin] = None) -> Sealed:
    """The metadata block and trailer of a new entry for ``artifact``."""
    origin = origin or Origin()
    hasher = xxhash.xxh3_64(artifact)
    artifact_checksum = hasher.intdigest()
    meta: dict[str, Any] = {
        "kind": kind,
        "source": origin.source[-_MAX_SOURCE:] if origin.source else None,
        "wasm_size": origin.wasm_size,
        "compile_seconds": origin.compile_seconds,
        "created": time.time(),
        "wasmtime": wasmtime_version(),
        "artifact_length": len(artifact),
        "artifact_checksum": f"{artifact_checksum:016x}",
    }
    block = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    block += _META_LENGTH.pack(len(block))
    hasher.update(block)
    payload_length, digest = len(artifact) + len(block), hasher.intdigest()
    trailer = TRAILER.pack(payload_length, digest, MAGIC)
    return Sealed(
        block + trailer, payload_length + TRAILER_SIZE, digest, kind, len(artifact),
        artifact_checksum,
    )  # fmt: skip


def read_trailer(tail: bytes) -> Optional[Trailer]:
    """The trailer in the last 24 bytes of a file, or None if they are not one."""
    if len(tail) != TRAILER_SIZE:
        return None
    length, digest, magic = TRAILER.unpack(tail)
    return Trailer(length, digest, magic) if magic in MAGICS else None


def inspect(fd: int, size: int, *, verify: bool) -> Shape:
    """What the open file holds: "trailer" (an entry in today's or the previous format:
    length checked, and with ``verify`` the checksum), "bare" (a whole artifact) or "lzw"
    (maybe an LZW stream: decoding decides). Raises Corrupt for anything else."""
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


def read_info(fd: int, size: int) -> Info:
    """The description of an entry :func:`inspect` accepted: today's format carries one
    (Corrupt if it is damaged); every older shape is a module, described by the defaults."""
    tail = os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) if size >= TRAILER_SIZE else b""
    trailer = read_trailer(tail)
    if trailer is None or trailer.magic != MAGIC:
        return Info()
    end = size - TRAILER_SIZE - _META_LENGTH.size
    if end < 0:
        raise Corrupt("too short for its metadata")
    (length,) = _META_LENGTH.unpack(os.pread(fd, _META_LENGTH.size, end))
    if length > min(MAX_META, end):
        raise Corrupt(f"metadata length {length} out of range")
    try:
        meta = json.loads(os.pread(fd, length, end - length))
        info = Info(
            kind=meta["kind"],
            source=meta.get("source"),
            wasm_size=meta.get("wasm_size"),
            compile_seconds=meta.get("compile_seconds"),
            created=meta.get("created"),
            wasmtime=meta.get("wasmtime"),
            artifact_length=int(meta["artifact_length"]),
            artifact_checksum=int(meta["artifact_checksum"], 16),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise Corrupt(f"damaged metadata: {exc}") from None
    if info.kind not in KINDS or info.artifact_length != end - length:
        raise Corrupt("metadata does not describe this file")
    return info


def holds(fd: int, sealed: Sealed) -> bool:
    """Whether the open file is a whole, checked entry of the same artifact and kind as
    ``sealed`` (its other metadata, say its creation time, may differ)."""
    try:
        size = os.fstat(fd).st_size
        if inspect(fd, size, verify=True) != "trailer":
            return False
        info = read_info(fd, size)
        return (info.kind, info.artifact_length, info.artifact_checksum) == (
            sealed.kind, sealed.artifact_length, sealed.artifact_checksum,
        )  # fmt: skip
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
