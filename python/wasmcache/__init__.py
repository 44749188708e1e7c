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
    SerializeError,
)
from wasmcache.filesystem import FileSystemCache
from wasmcache.hashing import ModuleHash

__all__ = [
    "ARTIFACT_VERSION",
    "CacheError",
    "DeserializeError",
    "FileReadError",
    "FileSystemCache",
    "FileWriteError",
    "ModuleCache",
    "ModuleHash",
    "NotFound",
    "SerializeError",
    "engine_id",
    "lzw",
]
