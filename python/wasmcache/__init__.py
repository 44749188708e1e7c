"""wasmcache: an on-disk cache of compiled WebAssembly modules for wasmtime."""

from wasmcache import lzw
from wasmcache.artifact import ARTIFACT_VERSION
from wasmcache.base import ModuleCache
from wasmcache.engine import engine_id
from wasmcache.errors import (
    CacheError,
    DeserializeError,
    FileReadError,
    FileWriteError,
    NotFound,
    RemoteAccessDenied,
    RemoteBucketNotFound,
    RemoteError,
    RemoteUnavailable,
    SerializeError,
)
from wasmcache.fallback import FallbackCache
from wasmcache.filesystem import FileSystemCache, default_cache_dir
from wasmcache.hashing import ModuleHash
from wasmcache.layout import CacheEntry
from wasmcache.memory import MemoryCache
from wasmcache.remote import ObjectStoreCache

__all__ = [
    "ARTIFACT_VERSION",
    "CacheEntry",
    "CacheError",
    "DeserializeError",
    "FallbackCache",
    "FileReadError",
    "FileSystemCache",
    "FileWriteError",
    "MemoryCache",
    "ModuleCache",
    "ModuleHash",
    "NotFound",
    "ObjectStoreCache",
    "RemoteAccessDenied",
    "RemoteBucketNotFound",
    "RemoteError",
    "RemoteUnavailable",
    "SerializeError",
    "default_cache_dir",
    "engine_id",
    "lzw",
]
