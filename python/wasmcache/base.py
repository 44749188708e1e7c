"""ModuleCache: what every cache offers, with async twins of each blocking method."""

from __future__ import annotations

import abc
import contextlib
import functools
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

import wasmtime

from wasmcache import direct, kinds, locks
from wasmcache.direct import Index
from wasmcache.engine import engine_id
from wasmcache.entry import MAX_SOURCE, Origin
from wasmcache.errors import (
    CacheError,
    DeserializeError,
    NotFound,
    UnsafeCacheError,
    UnsafeEntryError,
)
from wasmcache.hashing import DEFAULT_ALGORITHM, ModuleHash
from wasmcache.kinds import Compiled, Kind
from wasmcache.logs import log

if TYPE_CHECKING:
    from wasmcache.fallback import FallbackCache

T = TypeVar("T")
WasmSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking cache work in the default executor, off the event loop."""
    import asyncio  # imported on first use: it costs more than the rest of wasmcache

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


def read_wasm(wasm: WasmSource) -> bytes:
    """The bytes of a module given as bytes-like or as a path (SourceError if unreadable)."""
    if isinstance(wasm, (bytes, bytearray, memoryview)):
        return bytes(wasm)
    if isinstance(wasm, (str, os.PathLike)):
        return direct.read_source(os.fspath(wasm))[0]
    raise TypeError(f"wasm must be bytes-like or a path, not {type(wasm).__name__}")


def source_name(path: Union[str, bytes, None]) -> Optional[str]:
    """What an entry records as its source for ``path``: the file's name as
    ``os.fsdecode`` gives it, its last :data:`~wasmcache.entry.MAX_SOURCE` characters if
    longer, None for no path or a name an entry cannot hold (so recording it never
    fails)."""
    if not path:
        return None
    try:
        decoded = os.fsdecode(path)
    except UnicodeDecodeError:  # Windows: bytes names must be UTF-8 there
        assert isinstance(path, bytes)
        decoded = path.decode("utf-8", "replace")
    name = os.path.basename(decoded)[-MAX_SOURCE:]
    return name if name and "\0" not in name else None


class ModuleCache(abc.ABC):
    """A store of compiled modules and components keyed by (Wasm hash, engine).

    Subclasses implement :meth:`load`, :meth:`save` and :meth:`contains`; the ``a``-prefixed
    coroutines run them in a worker thread so an event loop never blocks on disk or wasmtime.
    """

    @abc.abstractmethod
    def load(
        self, key: ModuleHash, engine: wasmtime.Engine, *, kind: Optional[Kind] = None
    ) -> Compiled:
        """The cached ``wasmtime.Module`` or ``wasmtime.component.Component``;
        :class:`~wasmcache.NotFound` if there is none, :class:`~wasmcache.KindMismatch` if
        ``kind`` ("module" or "component") is given and the entry is of the other kind."""

    @abc.abstractmethod
    def save(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        module: Compiled,
        *,
        origin: Optional[Origin] = None,
    ) -> None:
        """Store ``module`` (a module or component compiled by ``engine``) under ``key``;
        ``origin`` describes it (source name, Wasm size, compile time) where kept."""

    @abc.abstractmethod
    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        """Whether an entry exists for ``key`` and ``engine``."""

    #: Direct mode for paths: True trusts a file's stamp on any filesystem, False reads
    #: and hashes the file on every call, None (auto) trusts stamps where the filesystem
    #: keeps them honest (see :mod:`wasmcache.direct`). Set from ``direct=`` and
    #: ``WASMCACHE_DIRECT`` when a cache is made.
    direct: Optional[bool] = None
    #: Where this cache keeps direct-mode records on disk (None: process memory only).
    _index: Optional[Index] = None

    def _use_direct(
        self,
        setting: Optional[bool],
        cache_dir: Optional[str] = None,
        *,
        shared_group: bool = False,
    ) -> None:
        """Set :attr:`direct` from a ``direct=`` argument (ValueError for a bad
        ``WASMCACHE_DIRECT``) and keep records in ``<cache_dir>/index`` when given."""
        self.direct = direct.setting(setting)
        if cache_dir is not None:
            self._index = direct.Index(cache_dir, shared_group=shared_group)

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
    ) -> Compiled:
        """The compiled ``wasm`` (bytes, or the path of a .wasm file): a ``wasmtime.Module``,
        or a ``wasmtime.component.Component`` when the binary is a component. Loaded from
        the cache, or compiled and saved on a miss (or after a corrupt entry was removed).

        ``key`` defaults to the BLAKE3 of the bytes; for a path it comes from the file's
        stamp when the cache has seen that file unchanged before and trusts its stamps
        (direct mode, see :attr:`direct`), so a hit neither reads nor hashes it. A key
        given for a path is used as it is, for the load and the save. A failure to save
        is logged, not raised: the caller still gets its module. A cache that is not
        private is not used at all (one warning).
        """
        return self._load_or_compile(engine, wasm, key)[0]

    def _load_or_compile(
        self, engine: wasmtime.Engine, wasm: WasmSource, key: Optional[ModuleHash]
    ) -> tuple[Compiled, ModuleHash]:
        """:meth:`load_or_compile`, and the key it loaded or saved under (for a file that
        changed since its stamp was taken, the key of the bytes compiled)."""
        if not isinstance(engine, wasmtime.Engine):
            raise TypeError(f"expected a wasmtime.Engine, got {type(engine).__name__}")
        data: Optional[bytes] = None
        path: Optional[str] = None
        from_stamp = False
        if isinstance(wasm, (str, os.PathLike)):
            path = os.fspath(wasm)
            if key is None:
                key, data = direct.key_of_file(
                    path, DEFAULT_ALGORITHM, self._direct_index(), direct=self._direct_setting()
                )
                from_stamp = data is None
        else:
            data = read_wasm(wasm)
            if key is None:
                key = ModuleHash.of(DEFAULT_ALGORITHM, data)
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        # A key from a file's stamp is of bytes already read once: their kind is the entry's.
        kind = kinds.of_wasm(data) if data is not None else None
        module = self._try_load(key, engine, kind)
        if module is not None:
            return module, key
        if self._unusable is not None:
            return kinds.compile(engine, data if data is not None else read_wasm(wasm)), key
        with self.compile_lock(key, engine):
            module = self._try_load(key, engine, kind)  # compiled by someone else meanwhile?
            if module is not None:
                return module, key
            if data is None:
                assert path is not None
                data = read_wasm(path)
            if from_stamp:
                # Compile what the file holds now, under the key of exactly those bytes.
                actual = direct.hash_bytes(data, key.algorithm)
                if actual != key:
                    log.debug("%s changed since its stamp was taken; key %s", path, actual)
                    key = actual
            start = time.perf_counter()
            module = kinds.compile(engine, data)
            seconds = time.perf_counter() - start
            from wasmcache import metrics  # the compile tier's counters

            metrics.counters(self).compiled(seconds)
            origin = Origin(source_name(path), len(data), round(seconds, 3))
            try:
                self.save(key, engine, module, origin=origin)
            except CacheError as exc:
                log.warning("compiled %s but could not cache it: %s", key, exc)
            return module, key

    #: Set (to the error) once this cache was found unusable for load_or_compile.
    _unusable: Optional[UnsafeCacheError] = None

    def _direct_index(self) -> Optional[Index]:
        """Where direct mode keeps its records now, or None for process memory only (no
        folder, or one that breaks the privacy rule)."""
        index = self._index
        return index if index is not None and index.usable() else None

    def _direct_setting(self) -> Optional[bool]:
        return self.direct if self.direct is not None else direct.env_setting()

    def _try_load(
        self, key: ModuleHash, engine: wasmtime.Engine, kind: Optional[Kind]
    ) -> Optional[Compiled]:
        """The cached module, or None on a miss or when the cache cannot serve it (a
        removed corrupt entry, an unreadable file: logged, and the caller compiles)."""
        if self._unusable is not None:
            return None
        try:
            return self.load(key, engine, kind=kind)
        except (NotFound, DeserializeError):
            return None
        except UnsafeEntryError as exc:
            log.warning("not loading %s, compiling instead: %s", key, exc)
            return None
        except UnsafeCacheError as exc:
            self._unusable = exc
            log.warning("not using the cache, compiling without it: %s", exc)
            return None
        except CacheError as exc:
            log.warning("cache unusable for %s, compiling instead: %s", key, exc)
            return None

    def with_fallback(self, other: ModuleCache) -> FallbackCache:
        """A cache that tries this one first, then ``other`` (promoting its hits here)."""
        from wasmcache.fallback import FallbackCache

        return FallbackCache(self, other)

    async def aload(
        self, key: ModuleHash, engine: wasmtime.Engine, *, kind: Optional[Kind] = None
    ) -> Compiled:
        return await _in_thread(self.load, key, engine, kind=kind)

    async def asave(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        module: Compiled,
        *,
        origin: Optional[Origin] = None,
    ) -> None:
        await _in_thread(self.save, key, engine, module, origin=origin)

    async def acontains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        return await _in_thread(self.contains, key, engine)

    async def aload_or_compile(
        self, engine: wasmtime.Engine, wasm: WasmSource, *, key: Optional[ModuleHash] = None
    ) -> Compiled:
        return await _in_thread(self.load_or_compile, engine, wasm, key=key)
