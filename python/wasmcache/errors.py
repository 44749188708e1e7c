"""The exceptions wasmcache raises; every runtime failure derives from :class:`CacheError`.

Wrong argument types or values are ``TypeError`` or ``ValueError`` at the call; a compile
failure of invalid Wasm is wasmtime's own ``WasmtimeError``, unchanged.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class CacheError(Exception):
    """Root of every runtime error raised by wasmcache."""


class NotFound(CacheError, LookupError):
    """The cache holds no entry for this key and engine."""


class _PathError(CacheError):
    """An error about one file; ``path`` names it, ``errno`` is the system's error number
    when a system call failed (and ``__cause__`` the OSError)."""

    def __init__(
        self, message: str, path: Optional[PathLike] = None, errno: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class FileReadError(_PathError):
    """A cache file exists but could not be read, or is not a regular file."""


class FileWriteError(_PathError):
    """A cache file could not be written; nothing was left behind."""


class SourceError(_PathError):
    """The Wasm file given as a path could not be read."""


class UnsafeCacheError(_PathError):
    """A cache folder or file that others could have filled: owned by another user (with
    ``shared_group``: by someone outside the cache folder's group, or not in that group),
    writable by group or others (with ``shared_group``: by others), a symbolic link, or a
    file with more than one link. The message names the path, the reason and the fix; the
    cache is not used."""


class UnsafeEntryError(UnsafeCacheError):
    """One entry breaks the rule (another owner, several links, group- or world-writable):
    it is not loaded, and the next save of its key replaces it."""


class OutOfMemory(CacheError, MemoryError):
    """The C core could not allocate the memory a decode or write needed."""


class EngineIdError(CacheError):
    """The id of an Engine's settings could not be read from wasmtime."""


class SerializeError(CacheError):
    """A module could not be turned into an artifact to store."""


class DeserializeError(CacheError):
    """An entry exists but cannot be loaded; the cache removed it."""


class KindMismatch(CacheError):
    """The entry holds a module where a component was asked for, or the reverse."""


class LZWError(CacheError, ValueError):
    """An LZW stream is malformed, decodes past the output cap, or (for a legacy entry)
    cannot hold a compiled artifact. ``reason`` is one of "code", "no-end", "too-large",
    "not-elf"."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class RemoteError(CacheError):
    """An object store failed; the message names the object key. ``__cause__`` is the
    client's exception."""


class RemoteUnavailable(RemoteError):
    """The object store could not be reached, or kept failing (network, timeouts, 5xx)."""


class RemoteAccessDenied(RemoteError, PermissionError):
    """The object store refused the credentials or the operation."""


class RemoteBucketNotFound(RemoteError):
    """The bucket does not exist."""


class RemoteCorrupt(RemoteError, DeserializeError):
    """A remote object is not what its header or manifest says (malformed header, wrong
    length, digest mismatch, undecodable body); nothing of it was kept."""


class SignatureError(RemoteError):
    """A remote object is unsigned, signed by a key that is not trusted, or its signature
    does not match its content; it was neither kept nor loaded. The message names the
    object and the key id."""
