"""wasmcache: a cache of compiled WebAssembly modules and components for wasmtime.

The names below are imported on first use, so a program (or the ``wasmcache`` command)
pays only for the parts it touches: ``import wasmcache`` alone imports the exceptions.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from wasmcache.errors import (
    CacheError,
    DeserializeError,
    EngineIdError,
    FileReadError,
    FileWriteError,
    KindMismatch,
    LZWError,
    NotFound,
    OutOfMemory,
    RemoteAccessDenied,
    RemoteBucketNotFound,
    RemoteCorrupt,
    RemoteError,
    RemoteUnavailable,
    SerializeError,
    SignatureError,
    SourceError,
    UnsafeCacheError,
    UnsafeEntryError,
)

if TYPE_CHECKING:
    from wasmcache import lzw
    from wasmcache.base import ModuleCache
    from wasmcache.config import default_cache_dir
    from wasmcache.engine import engine_id
    from wasmcache.entry import Info, Origin
    from wasmcache.fallback import FallbackCache
    from wasmcache.filesystem import FileSystemCache
    from wasmcache.hashing import ModuleHash
    from wasmcache.kinds import Compiled, Kind
    from wasmcache.maintenance import CacheEntry
    from wasmcache.memory import MemoryCache
    from wasmcache.names import ARTIFACT_VERSION
    from wasmcache.remote import ObjectStoreCache

#: Where each lazily imported name lives.
_LAZY = {
    "ARTIFACT_VERSION": "wasmcache.names",
    "CacheEntry": "wasmcache.maintenance",
    "Compiled": "wasmcache.kinds",
    "FallbackCache": "wasmcache.fallback",
    "FileSystemCache": "wasmcache.filesystem",
    "Info": "wasmcache.entry",
    "Kind": "wasmcache.kinds",
    "MemoryCache": "wasmcache.memory",
    "ModuleCache": "wasmcache.base",
    "ModuleHash": "wasmcache.hashing",
    "ObjectStoreCache": "wasmcache.remote",
    "Origin": "wasmcache.entry",
    "default_cache_dir": "wasmcache.config",
    "engine_id": "wasmcache.engine",
}
_SUBMODULES = ("lzw",)


def _module(name: str) -> Any:
    """The module ``name``, imported if needed (``importlib`` itself costs an import)."""
    __import__(name)
    return sys.modules[name]


def __getattr__(name: str) -> Any:
    """Import a public name (or the ``lzw`` module) the first time it is asked for."""
    if name in _SUBMODULES:
        value: Any = _module(f"wasmcache.{name}")
    elif name in _LAZY:
        value = getattr(_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'wasmcache' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ARTIFACT_VERSION",
    "CacheEntry",
    "CacheError",
    "Compiled",
    "DeserializeError",
    "EngineIdError",
    "FallbackCache",
    "FileReadError",
    "FileSystemCache",
    "FileWriteError",
    "Info",
    "Kind",
    "KindMismatch",
    "LZWError",
    "MemoryCache",
    "ModuleCache",
    "ModuleHash",
    "NotFound",
    "ObjectStoreCache",
    "Origin",
    "OutOfMemory",
    "RemoteAccessDenied",
    "RemoteBucketNotFound",
    "RemoteCorrupt",
    "RemoteError",
    "RemoteUnavailable",
    "SerializeError",
    "SignatureError",
    "SourceError",
    "UnsafeCacheError",
    "UnsafeEntryError",
    "default_cache_dir",
    "engine_id",
    "lzw",
]
