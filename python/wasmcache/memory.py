"""MemoryCache: compiled modules kept in this process, least recently used dropped first."""

from __future__ import annotations

import collections
import threading
from typing import Optional

import wasmtime

from wasmcache.base import ModuleCache
from wasmcache.engine import engine_id
from wasmcache.errors import NotFound
from wasmcache.hashing import ModuleHash


class MemoryCache(ModuleCache):
    """A thread-safe in-process cache keyed by (module hash, engine id); with
    ``max_entries`` it keeps the most recently used entries only."""

    def __init__(self, max_entries: Optional[int] = None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be at least 1 (or None for no bound)")
        self.max_entries = max_entries
        self._modules: collections.OrderedDict[tuple[ModuleHash, str], wasmtime.Module] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return f"MemoryCache(max_entries={self.max_entries}, entries={len(self)})"

    @staticmethod
    def _slot(key: ModuleHash, engine: wasmtime.Engine) -> tuple[ModuleHash, str]:
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        return key, engine_id(engine)

    def load(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        slot = self._slot(key, engine)
        with self._lock:
            try:
                module = self._modules[slot]
            except KeyError:
                raise NotFound(f"no cached module for {key} in memory") from None
            self._modules.move_to_end(slot)
            return module

    def save(self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        if not isinstance(module, wasmtime.Module):
            raise TypeError(f"expected a wasmtime.Module, got {type(module).__name__}")
        slot = self._slot(key, engine)
        with self._lock:
            self._modules[slot] = module
            self._modules.move_to_end(slot)
            if self.max_entries is not None:
                while len(self._modules) > self.max_entries:
                    self._modules.popitem(last=False)

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        with self._lock:
            return self._slot(key, engine) in self._modules

    def clear(self) -> None:
        with self._lock:
            self._modules.clear()
