"""ModuleCache: what every cache offers, with async twins of each blocking method."""

from __future__ import annotations

import abc
import functools
from typing import Any, Callable, TypeVar

import wasmtime

from wasmcache.hashing import ModuleHash

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking cache work in the default executor, off the event loop."""
    import asyncio  # imported on first use: it costs more than the rest of wasmcache

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args))


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

    async def aload(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        return await _in_thread(self.load, key, engine)

    async def asave(
        self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module
    ) -> None:
        await _in_thread(self.save, key, engine, module)

    async def acontains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        return await _in_thread(self.contains, key, engine)
