"""ModuleHash: the key of a cache entry, a hash of the Wasm module's bytes.

The default key is BLAKE3 (32 bytes): collision resistant like SHA-256, and several times
faster, so a process that hands wasmcache its module as bytes pays little for the key on a
hit. SHA-256 keys stay loadable when asked for by name; XXH64 is for trusted sources only.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Union

import xxhash

Buffer = Union[bytes, bytearray, memoryview]

#: What a digest given as text may hold.
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DIGEST_SIZES = {"xxhash": 8, "sha256": 32, "blake3": 32}
#: The algorithm of the keys that load_or_compile and the command line compute.
DEFAULT_ALGORITHM = "blake3"
#: The algorithm a digest of this many hex digits is taken for when none is named.
_ALGORITHM_OF_LENGTH = {16: "xxhash", 64: DEFAULT_ALGORITHM}
#: Inputs at least this long are hashed by BLAKE3 on several threads (where cores are
#: free that halves the time of a large module; below it the threads cost more than
#: they save).
THREADED_BYTES = 4 << 20


@functools.total_ordering
class ModuleHash:
    """An immutable, hashable hash of Wasm bytes: BLAKE3 (32 bytes, the default key),
    SHA-256 (32 bytes) or XXH64 (8 bytes).

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
    def blake3(cls, data: Buffer) -> ModuleHash:
        """BLAKE3 of the bytes (32-byte output): the default key, safe for modules from
        any source. Large inputs are hashed on several threads; the digest is the same."""
        import blake3  # imported on first use: only a key computed here needs it

        threads = blake3.blake3.AUTO if memoryview(data).nbytes >= THREADED_BYTES else 1
        return cls("blake3", blake3.blake3(data, max_threads=threads).digest())

    @classmethod
    def sha256(cls, data: Buffer) -> ModuleHash:
        """SHA-256 of the bytes: safe for modules from any source, slower than BLAKE3
        (entries saved under SHA-256 keys load when their key is given)."""
        import hashlib  # imported on first use: slow to import

        return cls("sha256", hashlib.sha256(data).digest())

    @classmethod
    def of(cls, algorithm: str, data: Buffer) -> ModuleHash:
        """The hash of ``data`` by the algorithm named ``algorithm`` ("blake3", "sha256",
        "xxhash")."""
        if algorithm == "blake3":
            return cls.blake3(data)
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
    def blake3_from_bytes(cls, digest: bytes) -> ModuleHash:
        return cls("blake3", digest)

    @classmethod
    def parse(cls, text: str, algorithm: Optional[str] = None) -> ModuleHash:
        """Parse a digest in hex, in any case: of ``algorithm`` when named (its length is
        checked), else taken by its length, 16 digits for xxhash and 64 for blake3 (the
        default key; a SHA-256 digest is 64 digits too, so text that may be one must
        name its algorithm)."""
        if not isinstance(text, str):
            raise TypeError(f"a module hash is text, not {type(text).__name__}")
        if algorithm is None:
            found = _ALGORITHM_OF_LENGTH.get(len(text))
            expected = "16 or 64 hex digits"
        elif algorithm in _DIGEST_SIZES:
            size = _DIGEST_SIZES[algorithm] * 2
            found = algorithm if len(text) == size else None
            expected = f"{size} hex digits for {algorithm}"
        else:
            raise ValueError(f"unknown hash algorithm {algorithm!r}")
        if found is None or not all(c in _HEX_DIGITS for c in text):
            raise ValueError(f"not a module hash ({expected}): {text!r}")
        return cls(found, bytes.fromhex(text))

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
