"""The manifest of a remote object: what its bytes are, in the one encoding a signature covers.

A manifest names the engine id, the key (algorithm and digest), the kind, the SHA-256 and
length of the exact entry bytes that land in a cache folder, and how the object encodes
them (the encoding and the encoded length). Its signed form is::

    b"wasmcache-manifest\\x00v1\\x00" + canonical JSON of the fields

where canonical JSON is ``json.dumps(fields, sort_keys=True, separators=(",", ":"))``:
keys sorted, no whitespace, every string of a fixed ASCII alphabet (so nothing is escaped)
and every number a non-negative integer. The fields are exactly::

    digest_algorithm  "sha256"
    encoded_length    bytes of the object after its header (int)
    encoding          "zstd" or "none"
    engine_id         [A-Za-z0-9._-]{1,255}
    entry_digest      SHA-256 of the entry, 64 lowercase hex digits
    entry_length      bytes of the entry (int)
    key               the key's digest, uppercase hex (as many digits as its algorithm gives)
    key_algorithm     the key's algorithm, as ModuleHash names it ("sha256", "xxhash", ...)
    kind              "module" or "component"
    version           1

A reader checks the fields against this schema (:meth:`Manifest.parse`) and builds the
signed bytes again from the values, so two manifests that sign alike are equal.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, NamedTuple

from wasmcache import schema
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import KINDS

VERSION = 1
SIGNED_PREFIX = b"wasmcache-manifest\x00v1\x00"
DIGEST_ALGORITHM = "sha256"
ENCODINGS = ("zstd", "none")
#: The largest entry a manifest may describe (1 TiB).
MAX_ENTRY = 1 << 40

_ENGINE_ID = re.compile(r"[A-Za-z0-9._-]+")
_ALGORITHM = re.compile(r"[a-z0-9]+")
_UPPER_HEX = re.compile(r"(?:[0-9A-F]{2})+")
_LOWER_HEX = re.compile(r"[0-9a-f]{64}")
_FIELDS = (
    "digest_algorithm", "encoded_length", "encoding", "engine_id", "entry_digest",
    "entry_length", "key", "key_algorithm", "kind", "version",
)  # fmt: skip


def new_digest() -> Any:
    """A hasher of the manifest's digest algorithm."""
    return hashlib.sha256()


class Manifest(NamedTuple):
    """What a remote object holds; a signature covers :meth:`signed_bytes`."""

    engine_id: str
    key_algorithm: str
    key: str  # uppercase hex
    kind: str
    entry_length: int
    entry_digest: str  # lowercase hex SHA-256 of the entry
    encoding: str
    encoded_length: int

    def fields(self) -> dict[str, Any]:
        """The manifest as the JSON object a header carries."""
        return {**self._asdict(), "digest_algorithm": DIGEST_ALGORITHM, "version": VERSION}

    def signed_bytes(self) -> bytes:
        """The exact bytes a signature covers."""
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return SIGNED_PREFIX + text.encode("ascii")

    def names(self, engine_id: str, key: ModuleHash, kind: str) -> bool:
        """Whether this manifest describes ``key`` of ``engine_id`` (and ``kind``, unless
        that is empty)."""
        return (
            self.engine_id == engine_id
            and self.key_algorithm == key.algorithm
            and self.key == str(key)
            and kind in ("", self.kind)
        )

    @classmethod
    def parse(cls, value: object) -> Manifest:
        """The manifest in a header's JSON value; :class:`schema.Invalid` unless every
        field is there, of its type and within its limits, and no other field is."""
        fields = schema.fields(value, "the manifest", _FIELDS)
        schema.integer(fields["version"], "the manifest version", VERSION, VERSION)
        schema.choice(fields["digest_algorithm"], "digest_algorithm", (DIGEST_ALGORITHM,))
        algorithm = schema.text(fields["key_algorithm"], "key_algorithm", _ALGORITHM, 16)
        key = schema.text(fields["key"], "key", _UPPER_HEX, 128)
        try:
            ModuleHash(algorithm, bytes.fromhex(key))  # a known algorithm, the right size
        except ValueError as exc:
            raise schema.Invalid(f"key: {exc}") from None
        encoding = schema.choice(fields["encoding"], "encoding", ENCODINGS)
        length = schema.integer(fields["entry_length"], "entry_length", 1, MAX_ENTRY)
        encoded = schema.integer(fields["encoded_length"], "encoded_length", 0, MAX_ENTRY)
        if encoding == "none" and encoded != length:
            raise schema.Invalid("encoded_length differs from entry_length without encoding")
        return cls(
            engine_id=schema.text(fields["engine_id"], "engine_id", _ENGINE_ID, 255),
            key_algorithm=algorithm,
            key=key,
            kind=schema.choice(fields["kind"], "kind", KINDS),
            entry_length=length,
            entry_digest=schema.text(fields["entry_digest"], "entry_digest", _LOWER_HEX, 64),
            encoding=encoding,
            encoded_length=encoded,
        )
