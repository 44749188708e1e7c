"""wasmcache: a cache of compiled WebAssembly modules and components for wasmtime."""

from wasmcache import lzw
from wasmcache.base import ModuleCache
from wasmcache.config import default_cache_dir
from wasmcache.engine import engine_id
from wasmcache.entry import Info, Origin
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
    RemoteError,
    RemoteUnavailable,
    SerializeError,
    SignatureError,
    SourceError,
    UnsafeCacheError,
    UnsafeEntryError,
)
from wasmcache.fallback import FallbackCache
from wasmcache.filesystem import FileSystemCache
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled, Kind
from wasmcache.maintenance import CacheEntry
from wasmcache.memory import MemoryCache
from wasmcache.names import ARTIFACT_VERSION
from wasmcache.remote import ObjectStoreCache

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
