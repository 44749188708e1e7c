"""The exceptions wasmcache raises; every one derives from :class:`CacheError`."""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class CacheError(Exception):
    """Root of every error raised by wasmcache."""


class NotFound(CacheError, LookupError):
    """The cache holds no entry for this key and engine."""


class _PathError(CacheError):
    """An error about one file; ``path`` names it and ``__cause__`` is the OSError."""

    def __init__(self, message: str, path: Optional[PathLike] = None) -> None:
        super().__init__(message)
        self.path = path


class FileReadError(_PathError):
    """A cache file exists but could not be read."""


class FileWriteError(_PathError):
    """A cache file could not be written; nothing was left behind."""


class SerializeError(CacheError):
    """A module could not be turned into an artifact to store."""


class DeserializeError(CacheError):
    """An entry exists but cannot be loaded; the cache removed it."""


class LZWError(CacheError, ValueError):
    """An LZW stream is malformed or decodes past the output cap."""


class RemoteError(CacheError):
    """An object store failed; the message names the object key. ``__cause__`` is the
    client's exception."""


class RemoteUnavailable(RemoteError):
    """The object store could not be reached, or kept failing (network, timeouts, 5xx)."""


class RemoteAccessDenied(RemoteError, PermissionError):
    """The object store refused the credentials or the operation."""


class RemoteBucketNotFound(RemoteError):
    """The bucket does not exist."""
