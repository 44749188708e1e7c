"""The wire format of a remote object, and the streams that turn an entry into an object
and a downloaded object back into an entry.

An object is ``b"WMCOBJ2\\n"``, a u32 LE header length, a JSON header (the manifest, the
compression and, when signed, the signer's key id and the Ed25519 signature), then the
entry (see :mod:`wasmcache.entry`) as one zstd frame. An object that starts with an ELF header is
an uncompressed entry as older wasmcache wrote it; it still loads where no signature is
required. Anything else is refused on its first bytes.
"""

from __future__ import annotations

import base64
import json
import queue
import struct
import threading
from collections.abc import Iterator
from typing import Any, Optional

import xxhash

from wasmcache._optional import require
from wasmcache.elf import ELF_MAGIC
from wasmcache.entry import MAGICS, TRAILER, TRAILER_SIZE, Buffer
from wasmcache.errors import DeserializeError
from wasmcache.signing import Manifest, Signer, Verifier

OBJECT_MAGIC = b"WMCOBJ2\n"
_LENGTH = struct.Struct("<I")
_MAX_HEADER = 1 << 16
#: Bytes handed on per step of a download (the memory a download holds at a time).
CHUNK = 1 << 20


def _zstd() -> Any:
    return require("zstandard")


def encode(
    manifest: Manifest,
    payload: Buffer,
    trailer: bytes,
    signer: Optional[Signer],
    *,
    level: Optional[int] = 3,
) -> list[Buffer]:
    """The pieces of the object for an entry: the header, then the entry compressed with
    zstd at ``level`` (or as it is, with ``level=None``)."""
    compression = "zstd" if level is not None else "none"
    header: dict[str, Any] = {"manifest": manifest._asdict(), "compression": compression}
    if signer is not None:
        header["signer"] = signer.key_id
        header["signature"] = base64.b64encode(signer.sign(manifest)).decode("ascii")
    text = json.dumps(header, sort_keys=True).encode()
    head = OBJECT_MAGIC + _LENGTH.pack(len(text)) + text
    if level is None:
        return [head, payload, trailer]
    compressor = (
        _zstd()
        .ZstdCompressor(level=level, threads=-1)
        .compressobj(size=len(payload) + len(trailer))
    )
    body = [compressor.compress(payload), compressor.compress(trailer), compressor.flush()]
    if sum(len(b) for b in body) > 0.9 * (len(payload) + len(trailer)):
        # Hardly compressible (random data segments): sent as it is, decoded faster.
        return encode(manifest, payload, trailer, signer, level=None)
    return [head, *body]


def prefetched(chunks: Iterator[Buffer], depth: int = 32) -> Iterator[Buffer]:
    """The same chunks, read ahead by a thread (at most ``depth`` waiting), so the network
    and the decompression overlap. Errors of ``chunks`` come out where they happened."""
    pending: queue.Queue[object] = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        pending.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            pending.put(end)
        except BaseException as exc:  # handed to the reader, raised there
            pending.put(exc)

    threading.Thread(target=pump, name="wasmcache-download", daemon=True).start()
    try:
        while True:
            item = pending.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()


class _ChunkFile:
    """A read() interface over an iterator of chunks (for zstandard's stream reader)."""

    def __init__(self, first: bytes, rest: Iterator[Buffer]) -> None:
        self._pending = first
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            try:
                self._pending = bytes(next(self._rest))
            except StopIteration:
                return b""
        if size < 0 or size >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out


class Download:
    """The entry in a downloaded object, as chunks for :meth:`FileSystemCache.receive`.

    Made from the object's chunks, it reads their first bytes at once: the header is
    checked (the manifest must name ``expected``'s engine, key and kind) and, with a
    ``verifier``, the signature, before anything is written anywhere. Iterating then
    decompresses chunk by chunk, computing the checksum as it goes; a stream longer than
    its manifest, shorter, or with another checksum raises DeserializeError.
    ``checked`` says whether the stream checks the content itself (no second pass needed).
    """

    def __init__(
        self,
        chunks: Iterator[Buffer],
        name: str,
        expected: Manifest,
        verifier: Optional[Verifier],
    ) -> None:
        self._chunks = chunks
        self._name = name
        head = b""
        while len(head) < len(OBJECT_MAGIC):
            piece = next(chunks, None)
            if piece is None:
                break
            head += bytes(piece)
        self._manifest: Optional[Manifest] = None
        if head.startswith(OBJECT_MAGIC):
            self._manifest, head = self._header(head, expected, verifier)
            self.checked = True
        elif head.startswith(ELF_MAGIC):
            if verifier is not None:
                verifier.check(expected, None, None, name)  # raises: unsigned
            self.checked = False
        else:
            raise DeserializeError(f"{name} is not a wasmcache object (refused on its first bytes)")
        self._head = head

    def _header(
        self, head: bytes, expected: Manifest, verifier: Optional[Verifier]
    ) -> tuple[Manifest, bytes]:
        start = len(OBJECT_MAGIC) + _LENGTH.size
        while len(head) < start:
            head += self._next_or_fail(head)
        (size,) = _LENGTH.unpack_from(head, len(OBJECT_MAGIC))
        if size > _MAX_HEADER:
            raise DeserializeError(f"{self._name} has a {size}-byte header: not a wasmcache object")
        while len(head) < start + size:
            head += self._next_or_fail(head)
        try:
            header = json.loads(head[start : start + size])
            manifest = Manifest(**header["manifest"])
            signature = header.get("signature")
            signature_bytes = base64.b64decode(signature) if isinstance(signature, str) else None
        except (ValueError, TypeError, KeyError) as exc:
            raise DeserializeError(f"{self._name} has a damaged header: {exc}") from None
        self._compression = header.get("compression")
        same = manifest[:2] == expected[:2] and expected.kind in ("", manifest.kind)
        if not same or self._compression not in ("zstd", "none"):
            raise DeserializeError(
                f"{self._name} holds {manifest.kind} {manifest.key} of engine "
                f"{manifest.engine_id}, not what its name says"
            )
        if verifier is not None:
            verifier.check(manifest, header.get("signer"), signature_bytes, self._name)
        return manifest, head[start + size :]

    def _next_or_fail(self, head: bytes) -> bytes:
        piece = next(self._chunks, None)
        if piece is None:
            raise DeserializeError(f"{self._name} ends within its header ({len(head)} bytes)")
        return bytes(piece)

    def __iter__(self) -> Iterator[Buffer]:
        if self._manifest is None:
            if self._head:
                yield self._head
            yield from self._chunks
            return
        yield from self._decompressed(self._manifest)

    def _decompressed(self, manifest: Manifest) -> Iterator[bytes]:
        source = _ChunkFile(self._head, self._chunks)
        reader: Any = source
        if self._compression == "zstd":
            reader = _zstd().ZstdDecompressor().stream_reader(source, read_size=CHUNK)
        hasher = xxhash.xxh3_64()
        total = 0
        tail = b""  # the last TRAILER_SIZE bytes seen: the trailer, once the stream ends
        try:
            while True:
                out = reader.read(CHUNK)
                if not out:
                    break
                total += len(out)
                if total > manifest.length:
                    raise DeserializeError(f"{self._name} decompresses past its length")
                # hash everything but the (so far) last TRAILER_SIZE bytes
                if len(out) >= TRAILER_SIZE:  # what was held back is payload after all
                    hasher.update(tail)
                    hasher.update(memoryview(out)[:-TRAILER_SIZE])
                    tail = out[-TRAILER_SIZE:]
                else:
                    joined = tail + out
                    hasher.update(joined[:-TRAILER_SIZE])
                    tail = joined[-TRAILER_SIZE:]
                yield out
        except _zstd().ZstdError as exc:
            raise DeserializeError(f"{self._name} is not a valid zstd stream: {exc}") from None
        expected = {TRAILER.pack(manifest.length - TRAILER_SIZE, manifest.checksum, magic)
                    for magic in MAGICS}  # fmt: skip
        if total != manifest.length or tail not in expected:
            raise DeserializeError(
                f"{self._name} is truncated or damaged ({total} of {manifest.length} bytes)"
            )
        if hasher.intdigest() != manifest.checksum:
            raise DeserializeError(f"{self._name} does not match its checksum")
