"""The wire format of a remote object, and the streams that turn an entry into an object
and a downloaded object back into an entry.

An object is::

    b"WMCOBJ3\\n" | u32 LE header length | header | body

The header (at most ``MAX_HEADER`` bytes of JSON, nested at most ``MAX_DEPTH`` deep) is
``{"manifest": {...}}``, plus ``"signer"`` (the key id) and ``"signature"`` (base64 of the
Ed25519 signature of the manifest's signed bytes, see :mod:`wasmcache.manifest`) when
signed. The body is the entry (see :mod:`wasmcache.entry`) as the manifest's ``encoding``
says: one zstd frame, or the bytes as they are; it is exactly ``encoded_length`` bytes long.

A download checks the header under its schema, that the manifest names what was asked for
and, with trusted keys, the signature, before anything is written. While the body is
decoded, the SHA-256 and the length of the entry are computed and compared with the
manifest before the last piece is handed on, so a mismatch leaves nothing behind.

Older objects: ``WMCOBJ2`` (an XXH3-64 manifest with unsigned ``compression``) and a bare
entry starting with an ELF header (wasmcache 0.1) load only where no key is trusted; where
keys are trusted they are refused before their body is read. Anything else is refused on
its first bytes.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import struct
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple, Optional

from wasmcache import schema
from wasmcache._optional import require
from wasmcache.elf import ELF_MAGIC
from wasmcache.entry import Buffer
from wasmcache.errors import RemoteCorrupt, SignatureError
from wasmcache.hashing import ModuleHash
from wasmcache.manifest import MAX_ENTRY, Manifest, new_digest
from wasmcache.signing import SIGNATURE_SIZE, Signer, Verifier

OBJECT_MAGIC = b"WMCOBJ3\n"
OLD_OBJECT_MAGIC = b"WMCOBJ2\n"
_LENGTH = struct.Struct("<I")
#: The largest header read; a manifest with a signature takes about 500 bytes.
MAX_HEADER = 8192
#: The first bytes of an object that hold any header it may have.
HEAD_BYTES = len(OBJECT_MAGIC) + _LENGTH.size + MAX_HEADER
#: The deepest nesting of a header's JSON (header, manifest, and one spare level).
MAX_DEPTH = 3
#: Bytes handed on per step of a download (the memory a download holds at a time).
CHUNK = 1 << 20
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{86}==")
_OLD_ENGINE_ID = re.compile(r"[A-Za-z0-9._-]+")
_OLD_KEY = re.compile(r"[0-9A-F]{16}|[0-9A-F]{64}")


def _zstd() -> Any:
    return require("zstandard")


class Header(NamedTuple):
    """A checked header: its manifest, and the signer's key id and signature if signed."""

    manifest: Manifest
    signer: Optional[str]
    signature: Optional[bytes]


def encode(
    engine_id: str,
    key: ModuleHash,
    kind: str,
    payload: Buffer,
    tail: bytes,
    signer: Optional[Signer],
    *,
    level: Optional[int] = 3,
) -> tuple[list[Buffer], Manifest]:
    """The pieces of the object for the entry ``payload + tail`` and its manifest: the
    header, then the entry compressed with zstd at ``level`` (or as it is, with
    ``level=None`` or when it hardly compresses)."""
    entry_length = len(memoryview(payload)) + len(tail)
    digest = new_digest()
    digest.update(payload)
    digest.update(tail)
    body: list[Buffer] = [payload, tail]
    encoding = "none"
    if level is not None:
        compressor = _zstd().ZstdCompressor(level=level, threads=-1).compressobj(size=entry_length)
        packed = [compressor.compress(payload), compressor.compress(tail), compressor.flush()]
        if sum(len(b) for b in packed) <= 0.9 * entry_length:
            body, encoding = packed, "zstd"
        # else: hardly compressible (random data segments): sent as it is, decoded faster
    manifest = Manifest(
        engine_id=engine_id,
        key_algorithm=key.algorithm,
        key=str(key),
        kind=kind,
        entry_length=entry_length,
        entry_digest=digest.hexdigest(),
        encoding=encoding,
        encoded_length=sum(len(memoryview(b)) for b in body),
    )
    header: dict[str, Any] = {"manifest": manifest.fields()}
    if signer is not None:
        header["signer"] = signer.key_id
        header["signature"] = base64.b64encode(signer.sign(manifest.signed_bytes())).decode()
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    return [OBJECT_MAGIC + _LENGTH.pack(len(text)) + text, *body], manifest


def parse_header(text: bytes, name: str) -> Header:
    """The header in ``text`` (the JSON after the magic and length), checked under its
    schema; RemoteCorrupt naming the object ``name`` if it is anything else."""
    try:
        value = schema.loads(text, max_size=MAX_HEADER, max_depth=MAX_DEPTH)
        fields = schema.fields(value, "the header", ("manifest",), ("signer", "signature"))
        manifest = Manifest.parse(fields["manifest"])
        if ("signer" in fields) != ("signature" in fields):
            raise schema.Invalid("a signer without a signature, or the reverse")
        if "signer" not in fields:
            return Header(manifest, None, None)
        signer = schema.text(fields["signer"], "signer", _KEY_ID, 16)
        encoded = schema.text(fields["signature"], "signature", _SIGNATURE, 88)
        signature = base64.b64decode(encoded, validate=True)
        if len(signature) != SIGNATURE_SIZE:  # pragma: no cover - the pattern fixes the size
            raise schema.Invalid("the signature is not 64 bytes")
    except schema.Invalid as exc:
        raise RemoteCorrupt(f"{name} has a malformed header: {exc}") from None
    return Header(manifest, signer, signature)


def check_header(
    header: Header,
    name: str,
    engine_id: str,
    key: ModuleHash,
    kind: str,
    verifier: Optional[Verifier],
) -> None:
    """Return if the header names ``key`` of ``engine_id`` (and ``kind`` unless empty)
    and, with a ``verifier``, is signed by a trusted key; else RemoteCorrupt or
    SignatureError."""
    manifest = header.manifest
    if not manifest.names(engine_id, key, kind):
        raise RemoteCorrupt(
            f"{name} holds {manifest.kind} {manifest.key} of engine {manifest.engine_id}, "
            "not what its name says"
        )
    if verifier is not None:
        verifier.check(manifest.signed_bytes(), header.signer, header.signature, name)


def header_of(head: bytes, name: str) -> Optional[Header]:
    """The header at the start of an object's first bytes ``head``, or None if they do
    not start with a whole header of today's format."""
    start = len(OBJECT_MAGIC) + _LENGTH.size
    if not head.startswith(OBJECT_MAGIC) or len(head) < start:
        return None
    (size,) = _LENGTH.unpack_from(head, len(OBJECT_MAGIC))
    if size > MAX_HEADER or len(head) < start + size:
        return None
    try:
        return parse_header(head[start : start + size], name)
    except RemoteCorrupt:
        return None


def object_size(head: bytes, header: Header) -> int:
    """The size of the whole object whose first bytes ``head`` hold ``header``: magic,
    header length, header and the body its manifest promises."""
    size: int = _LENGTH.unpack_from(head, len(OBJECT_MAGIC))[0]
    return len(OBJECT_MAGIC) + _LENGTH.size + size + header.manifest.encoded_length


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


class _Body:
    """A read() interface over the body's chunks (for zstandard's stream reader) that
    refuses to hand on more than ``limit`` bytes (when there is a limit)."""

    def __init__(
        self, first: bytes, rest: Iterator[Buffer], limit: Optional[int], name: str
    ) -> None:
        self._pending = first
        self._rest = rest
        self._limit = limit
        self._name = name
        self.given = 0

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
        self.given += len(out)
        if self._limit is not None and self.given > self._limit:
            raise RemoteCorrupt(f"{self._name} is longer than its manifest says ({self._limit})")
        return out

    def finish(self) -> None:
        """Read what is left; RemoteCorrupt unless the body was exactly ``limit`` bytes."""
        while self.read(CHUNK):
            pass
        if self.given != self._limit:
            raise RemoteCorrupt(
                f"{self._name} is truncated ({self.given} of {self._limit} bytes after its header)"
            )


class Download:
    """The entry in a downloaded object, as chunks for :meth:`FileSystemCache.receive`.

    Made from the object's chunks, it reads their first bytes at once: the header is
    checked under its schema, the manifest must name ``key`` of ``engine_id`` (and
    ``kind`` unless empty) and, with a ``verifier``, carry a valid signature by a trusted
    key, before anything is written anywhere. Iterating then decodes chunk by chunk,
    computing the entry's SHA-256 and length on the way, and raises RemoteCorrupt before
    handing on the last chunk unless both match the manifest. ``checked`` says whether
    the stream checks the content itself (no second pass needed).
    """

    def __init__(
        self,
        chunks: Iterator[Buffer],
        name: str,
        engine_id: str,
        key: ModuleHash,
        kind: str,
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
        self._old: Optional[tuple[int, str]] = None  # a WMCOBJ2 object's length, compression
        self.checked = False
        if head.startswith(OBJECT_MAGIC):
            text, head = self._header_text(head)
            header = parse_header(text, name)
            check_header(header, name, engine_id, key, kind, verifier)
            self._manifest = header.manifest
            self.checked = True
        elif head.startswith(OLD_OBJECT_MAGIC):
            if verifier is not None:
                raise SignatureError(
                    f"{name} is in the older WMCOBJ2 format, whose signature does not cover a "
                    "cryptographic digest of its content; only WMCOBJ3 objects are trusted"
                )
            text, head = self._header_text(head)
            self._old = _old_header(text, name, engine_id, key, kind)
        elif head.startswith(ELF_MAGIC):
            if verifier is not None:
                raise SignatureError(f"{name} is not signed; only signed objects are trusted")
        else:
            raise RemoteCorrupt(f"{name} is not a wasmcache object (refused on its first bytes)")
        self._head = head

    def _header_text(self, head: bytes) -> tuple[bytes, bytes]:
        """The header's JSON and the bytes after it, reading on as needed."""
        start = len(OBJECT_MAGIC) + _LENGTH.size
        while len(head) < start:
            head += self._next_or_fail(head)
        (size,) = _LENGTH.unpack_from(head, len(OBJECT_MAGIC))
        if size > MAX_HEADER:
            raise RemoteCorrupt(f"{self._name} has a {size}-byte header: not a wasmcache object")
        while len(head) < start + size:
            head += self._next_or_fail(head)
        return head[start : start + size], head[start + size :]

    def _next_or_fail(self, head: bytes) -> bytes:
        piece = next(self._chunks, None)
        if piece is None:
            raise RemoteCorrupt(f"{self._name} ends within its header ({len(head)} bytes)")
        return bytes(piece)

    def __iter__(self) -> Iterator[Buffer]:
        if self._manifest is not None:
            yield from self._checked(self._manifest)
        elif self._old is not None:
            length, compression = self._old
            yield from self._decoded(compression, None, length)
        else:
            if self._head:
                yield self._head
            yield from self._chunks

    def _decoded(
        self, encoding: str, encoded_length: Optional[int], length: int
    ) -> Iterator[bytes]:
        """The decoded body in pieces of at most CHUNK bytes; RemoteCorrupt as soon as it
        passes ``length`` bytes, or unless it is ``length`` bytes decoded from exactly
        ``encoded_length`` bytes (when that is known) in the end."""
        source = _Body(self._head, self._chunks, encoded_length, self._name)
        reader: Any = source
        if encoding == "zstd":
            reader = _zstd().ZstdDecompressor().stream_reader(source, read_size=CHUNK)
        total = 0
        try:
            while True:
                out = reader.read(CHUNK)
                if not out:
                    break
                total += len(out)
                if total > length:
                    raise RemoteCorrupt(f"{self._name} decodes past its length ({length})")
                yield out
        except _zstd().ZstdError as exc:
            raise RemoteCorrupt(f"{self._name} is not a valid zstd stream: {exc}") from None
        if encoded_length is not None:
            source.finish()
        if total != length:
            raise RemoteCorrupt(f"{self._name} is truncated ({total} of {length} bytes)")

    def _checked(self, manifest: Manifest) -> Iterator[bytes]:
        """The entry, its SHA-256 compared with the manifest before the last piece is
        handed on (so a receiver never completes a wrong entry)."""
        digest = new_digest()
        held: Optional[bytes] = None
        for out in self._decoded(manifest.encoding, manifest.encoded_length, manifest.entry_length):
            digest.update(out)
            if held is not None:
                yield held
            held = out
        if digest.hexdigest() != manifest.entry_digest:
            raise RemoteCorrupt(
                f"{self._name} does not match the SHA-256 its manifest gives: its content is "
                "not what was described (or signed)"
            )
        if held is not None:
            yield held


def _old_header(
    text: bytes, name: str, engine_id: str, key: ModuleHash, kind: str
) -> tuple[int, str]:
    """The entry length and compression of a WMCOBJ2 header naming ``key`` of
    ``engine_id``; RemoteCorrupt for anything else. (Its XXH3-64 checksum is left to the
    receiver's check of the entry's trailer: it proves no origin.)"""
    try:
        value = schema.loads(text, max_size=MAX_HEADER, max_depth=MAX_DEPTH)
        fields = schema.fields(
            value, "the header", ("manifest", "compression"), ("signer", "signature")
        )
        compression = schema.choice(fields["compression"], "compression", ("zstd", "none"))
        manifest = schema.fields(
            fields["manifest"], "the manifest", ("engine_id", "key", "kind", "length", "checksum")
        )
        found = (
            schema.text(manifest["engine_id"], "engine_id", _OLD_ENGINE_ID, 255),
            schema.text(manifest["key"], "key", _OLD_KEY, 64),
            schema.choice(manifest["kind"], "kind", ("module", "component")),
        )
        length = schema.integer(manifest["length"], "length", 1, MAX_ENTRY)
        schema.integer(manifest["checksum"], "checksum", 0, (1 << 64) - 1)
    except schema.Invalid as exc:
        raise RemoteCorrupt(f"{name} has a malformed header: {exc}") from None
    if found[:2] != (engine_id, str(key)) or kind not in ("", found[2]):
        raise RemoteCorrupt(
            f"{name} holds {found[2]} {found[1]} of engine {found[0]}, not what its name says"
        )
    return length, compression
