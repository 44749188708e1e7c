"""Entries the older LZW-compressing cache wrote: decoded within bounds, then stored anew.

A legacy entry is an LZW stream (weezl's format) of an artifact. Only a file no larger than
the cache's ``legacy_max_bytes`` is read; the decoder stops as soon as its output cannot be
one whole ELF image, and at the same cap. The decoded artifact is written back in today's
format through :meth:`FileSystemCache.receive`, which maps the file it wrote through its
own descriptor and removes it if wasmtime rejects it, so a bad entry costs one decode.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import wasmtime

from wasmcache import _core
from wasmcache.entry import Corrupt, seal
from wasmcache.errors import FileWriteError, LZWError
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled
from wasmcache.logs import log
from wasmcache.safefs import pread as safefs_pread

if TYPE_CHECKING:
    from wasmcache.filesystem import FileSystemCache

#: Bytes of a legacy entry read first, to reject what cannot be an artifact.
_PROBE_BYTES = 4096


def decode(fd: int, size: int, max_bytes: int) -> memoryview:
    """The artifact in the open LZW entry; Corrupt if it is larger than ``max_bytes``, is
    not a valid stream, or does not decode to one whole ELF image of at most that size."""
    if size > max_bytes:
        raise Corrupt(
            f"neither an entry nor an artifact, and too large ({size} bytes) for a legacy "
            f"LZW entry (limit {max_bytes})"
        )
    try:
        # The stream's first bytes decide whether it can be an artifact at all (64 bytes
        # of ELF header come from at most 96 bytes of codes): garbage costs one small read.
        head = safefs_pread(fd, min(size, _PROBE_BYTES), 0)
        if len(head) < size:
            try:
                _core.lzw_decode_view(head, max_bytes, expect_elf=True).release()
            except LZWError as exc:
                if exc.reason != "no-end":
                    raise
        return _core.lzw_decode_view(_read_all(fd, size), max_bytes, expect_elf=True)
    except LZWError as exc:
        raise Corrupt(f"neither an artifact nor an LZW stream of one ({exc})") from exc


def migrate(
    cache: FileSystemCache,
    key: ModuleHash,
    engine: wasmtime.Engine,
    path: str,
    artifact: memoryview,
) -> Compiled:
    """Load a decoded legacy artifact, storing it in today's format (in place of the LZW
    file) so the next load maps it directly."""
    try:
        tail = seal(artifact, "module").tail
        module = cache.receive(key, engine, [artifact, tail], kind="module")
    except FileWriteError as exc:
        log.warning("could not rewrite LZW entry %s: %s", path, exc)
        try:
            return wasmtime.Module.deserialize(engine, artifact.tobytes())
        except wasmtime.WasmtimeError as err:
            raise Corrupt(f"wasmtime rejected the decoded artifact: {err}") from err
    log.debug("rewrote LZW entry %s in today's format", path)
    return module


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = safefs_pread(fd, min(size - offset, 1 << 30), offset)
        if not chunk:
            raise OSError(errno.EIO, "file shrank while being read")
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
