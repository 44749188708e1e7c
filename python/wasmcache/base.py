"""ModuleCache: what every cache offers, with async twins of each blocking method."""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

import wasmtime

from wasmcache import locks
from wasmcache.engine import engine_id
from wasmcache.errors import CacheError, DeserializeError, NotFound
from wasmcache.hashing import ModuleHash

if TYPE_CHECKING:
    from wasmcache.fallback import FallbackCache

T = TypeVar("T")
WasmSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
log = logging.getLogger("wasmcache")


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking cache work in the default executor, off the event loop."""
    import asyncio  # imported on first use: it costs more than the rest of wasmcache

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


def read_wasm(wasm: WasmSource) -> bytes:
    """The bytes of a module given as bytes-like or as a path."""
    if isinstance(wasm, (bytes, bytearray, memoryview)):
        return bytes(wasm)
    if isinstance(wasm, (str, os.PathLike)):
        with open(wasm, "rb") as f:
            return f.read()
    raise TypeError(f"wasm must be bytes-like or a path, not {type(wasm).__name__}")


class ModuleCache(abc.ABC):
    """A store of compiled modules keyed by (module hash, engine).

    Subclasses implement :meth:`load`, :meth:`save` and :meth:`contains`; the ``a``-prefixed
    coroutines run them in a worker thread so an event loop never blocks on disk or wasmtime.
    """

    @abc.abstractmethod
    def load(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        """The cached module; :class:`~wasmcache.NotFound` if there is none."""

    @abc.abstractmethod
    def save(self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        """Store ``module`` (compiled by ``engine``) under ``key``."""

    @abc.abstractmethod
    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        """Whether an entry exists for ``key`` and ``engine``."""

    #: How far compile_lock reaches: 0 = the threads of one process, 1 = the processes
    #: sharing a machine. A FallbackCache takes the lock of its widest-reaching part.
    lock_scope = 0

    def compile_lock(
        self, key: ModuleHash, engine: wasmtime.Engine
    ) -> contextlib.AbstractContextManager[Any]:
        """Held while compiling ``key`` after a miss, so concurrent misses compile once.
        This default covers the threads of one process; caches shared between processes
        hold a lock those processes share too."""
        return locks.thread_lock(f"{key}/{engine_id(engine)}")

    def load_or_compile(
        self, engine: wasmtime.Engine, wasm: WasmSource, *, key: Optional[ModuleHash] = None
    ) -> wasmtime.Module:
        """The cached module for ``wasm``, compiling and saving it on a miss (or after a
        corrupt entry was removed). ``key`` defaults to the XXH64 of the bytes. A failure
        to save is logged, not raised: the caller still gets its module."""
        data = read_wasm(wasm)
        if key is None:
            key = ModuleHash.xxhash(data)
        module = self._try_load(key, engine)
        if module is not None:
            return module
        with self.compile_lock(key, engine):
            module = self._try_load(key, engine)  # compiled by someone else meanwhile?
            if module is not None:
                return module
            module = wasmtime.Module(engine, data)
            try:
                self.save(key, engine, module)
            except CacheError as exc:
                log.warning("compiled %s but could not cache it: %s", key, exc)
            return module

    def _try_load(self, key: ModuleHash, engine: wasmtime.Engine) -> Optional[wasmtime.Module]:
        """The cached module, or None on a miss or when the cache cannot serve it (a
        removed corrupt entry, an unreadable file: logged, and the caller compiles)."""
        try:
            return self.load(key, engine)
        except (NotFound, DeserializeError):
            return None
        except CacheError as exc:
            log.warning("cache unusable for %s, compiling instead: %s", key, exc)
            return None

    def with_fallback(self, other: ModuleCache) -> FallbackCache:
        """A cache that tries this one first, then ``other`` (promoting its hits here)."""
        from wasmcache.fallback import FallbackCache

        return FallbackCache(self, other)

    async def aload(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        return await _in_thread(self.load, key, engine)

    async def asave(
        self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module
    ) -> None:
        await _in_thread(self.save, key, engine, module)

    async def acontains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        return await _in_thread(self.contains, key, engine)

    async def aload_or_compile(
        self, engine: wasmtime.Engine, wasm: WasmSource, *, key: Optional[ModuleHash] = None
    ) -> wasmtime.Module:
        return await _in_thread(self.load_or_compile, engine, wasm, key=key)
