"""ModuleHash: the key of a cache entry, a hash of the Wasm module's bytes."""

from __future__ import annotations

import functools
import string
from typing import Any, Union

import xxhash

Buffer = Union[bytes, bytearray, memoryview]

_DIGEST_SIZES = {"xxhash": 8, "sha256": 32}
#: The algorithm of the keys that load_or_compile and the command line compute.
DEFAULT_ALGORITHM = "sha256"
_ALGORITHM_OF_LENGTH = {16: "xxhash", 64: "sha256"}


@functools.total_ordering
class ModuleHash:
    """An immutable, hashable hash of Wasm bytes: SHA-256 (32 bytes, the default key) or
    XXH64 (8 bytes).

    ``str(h)`` is the digest in uppercase hex, the name of the entry's file.
    """

    __slots__ = ("_algorithm", "_digest")
    _algorithm: str
    _digest: bytes

    def __init__(self, algorithm: str, digest: bytes) -> None:
        size = _DIGEST_SIZES.get(algorithm)
        if size is None:
            raise ValueError(f"unknown hash algorithm {algorithm!r}")
        if not isinstance(digest, (bytes, bytearray, memoryview)):
            raise TypeError(f"digest must be bytes, not {type(digest).__name__}")
        digest = bytes(digest)
        if len(digest) != size:
            raise ValueError(f"a {algorithm} digest is {size} bytes, got {len(digest)}")
        object.__setattr__(self, "_algorithm", algorithm)
        object.__setattr__(self, "_digest", digest)

    @classmethod
    def xxhash(cls, data: Buffer) -> ModuleHash:
        """XXH64 with seed 0; the digest is the 64-bit value in little-endian order.

        Not collision resistant: a different valid module with the same XXH64 is easy to
        compute, and whoever supplies it gets its code run in place of the other. Use it
        only when every module comes from a source you trust."""
        return cls("xxhash", xxhash.xxh64_intdigest(data).to_bytes(8, "little"))

    @classmethod
    def sha256(cls, data: Buffer) -> ModuleHash:
        """SHA-256 of the bytes: the default key, safe for modules from any source."""
        import hashlib  # imported on first use: slow to import

        return cls("sha256", hashlib.sha256(data).digest())

    @classmethod
    def of(cls, algorithm: str, data: Buffer) -> ModuleHash:
        """The hash of ``data`` by the algorithm named ``algorithm`` ("sha256", "xxhash")."""
        if algorithm == "sha256":
            return cls.sha256(data)
        if algorithm == "xxhash":
            return cls.xxhash(data)
        raise ValueError(f"unknown hash algorithm {algorithm!r}")

    @classmethod
    def xxhash_from_bytes(cls, digest: bytes) -> ModuleHash:
        return cls("xxhash", digest)

    @classmethod
    def sha256_from_bytes(cls, digest: bytes) -> ModuleHash:
        return cls("sha256", digest)

    @classmethod
    def parse(cls, text: str) -> ModuleHash:
        """Parse 16 (xxhash) or 64 (sha256) hex digits, in any case."""
        if not isinstance(text, str):
            raise TypeError(f"a module hash is text, not {type(text).__name__}")
        algorithm = _ALGORITHM_OF_LENGTH.get(len(text))
        if algorithm is None or not all(c in string.hexdigits for c in text):
            raise ValueError(f"not a module hash (16 or 64 hex digits): {text!r}")
        return cls(algorithm, bytes.fromhex(text))

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def digest(self) -> bytes:
        return self._digest

    def __str__(self) -> str:
        return self._digest.hex().upper()

    def __repr__(self) -> str:
        return f"ModuleHash.{self._algorithm}_from_bytes(bytes.fromhex({self._digest.hex()!r}))"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModuleHash):
            return NotImplemented
        return self._algorithm == other._algorithm and self._digest == other._digest

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ModuleHash):
            return NotImplemented
        return (self._algorithm, self._digest) < (other._algorithm, other._digest)

    def __hash__(self) -> int:
        return hash((self._algorithm, self._digest))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ModuleHash is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ModuleHash is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModuleHash, (self._algorithm, self._digest))
