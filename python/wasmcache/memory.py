"""MemoryCache: compiled modules and components kept in this process, least recently used
dropped first."""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Optional

import wasmtime

from wasmcache import kinds, metrics
from wasmcache.base import ModuleCache
from wasmcache.entry import Origin, check_origin
from wasmcache.errors import NotFound
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled, Kind
from wasmcache.metrics import Values as MetricValues

#: An entry's place in the use order: its Engine (weakly) and key.
_Slot = tuple["weakref.ref[wasmtime.Engine]", ModuleHash]


class MemoryCache(ModuleCache):
    """A thread-safe in-process cache keyed by (module hash, Engine object): a wasmtime
    module belongs to the Engine that made it, so another Engine, even one of equal
    settings, gets a miss here (and its own module from a disk tier behind). Engines are
    held weakly: an Engine's modules go when it does, and nothing an Engine holds refers
    to the cache, so a dropped cache is freed at once. With ``max_entries`` only the most
    recently used entries are kept. Direct mode (``direct``, see :class:`ModuleCache`)
    keeps its records in process memory. :meth:`metrics` counts hits, misses and the
    compile seconds hits saved (as the saved module's ``origin`` recorded them)."""

    metrics_tier = "memory"

    def __init__(self, max_entries: Optional[int] = None, *, direct: Optional[bool] = None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be at least 1 (or None for no bound)")
        self._use_direct(direct)
        self.max_entries = max_entries
        # Per Engine: key -> (module, its recorded compile seconds).
        self._modules: weakref.WeakKeyDictionary[
            wasmtime.Engine, collections.OrderedDict[ModuleHash, tuple[Compiled, Optional[float]]]
        ] = weakref.WeakKeyDictionary()
        self._counters = metrics.Counters(self.metrics_tier)
        # Use order, kept only with max_entries: at most that many slots, an Engine held
        # weakly (the slots of a dead one are dropped as they come up for eviction).
        self._order: collections.OrderedDict[_Slot, None] = collections.OrderedDict()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._modules.values())

    def __repr__(self) -> str:
        return f"MemoryCache(max_entries={self.max_entries}, entries={len(self)})"

    def metrics(self) -> MetricValues:
        """This cache's counters, ``{tier: {counter: value}}`` (see :mod:`wasmcache.metrics`)."""
        return self._counters.snapshot()

    @staticmethod
    def _check(key: ModuleHash, engine: wasmtime.Engine) -> None:
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        if not isinstance(engine, wasmtime.Engine):
            raise TypeError(f"expected a wasmtime.Engine, got {type(engine).__name__}")

    def load(
        self, key: ModuleHash, engine: wasmtime.Engine, *, kind: Optional[Kind] = None
    ) -> Compiled:
        self._check(key, engine)
        with self._lock:
            per_engine = self._modules.get(engine)
            found = None if per_engine is None else per_engine.get(key)
            if found is None:
                self._counters.miss()
                raise NotFound(f"no cached module for {key} in memory for this engine")
            module, seconds = found
            kinds.check(kind, kinds.of(module), f"the memory entry for {key}")
            if self.max_entries is not None:
                self._order.move_to_end((weakref.ref(engine), key))
        self._counters.hit(0, seconds)
        return module

    def save(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        module: Compiled,
        *,
        origin: Optional[Origin] = None,
    ) -> None:
        self._check(key, engine)
        kinds.of(module)  # TypeError for anything but a module or component
        check_origin(origin)
        seconds = None if origin is None else origin.compile_seconds
        with self._lock:
            per_engine = self._modules.get(engine)
            if per_engine is None:
                per_engine = self._modules[engine] = collections.OrderedDict()
            per_engine[key] = (module, seconds)
            if self.max_entries is not None:
                slot = (weakref.ref(engine), key)
                self._order[slot] = None
                self._order.move_to_end(slot)
                self._evict(self.max_entries)

    def _evict(self, limit: int) -> None:
        while len(self._order) > limit:
            (engine_ref, key), _ = self._order.popitem(last=False)
            engine = engine_ref()
            modules = None if engine is None else self._modules.get(engine)
            if modules is not None:
                modules.pop(key, None)

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        self._check(key, engine)
        with self._lock:
            per_engine = self._modules.get(engine)
            return per_engine is not None and key in per_engine

    def clear(self) -> None:
        with self._lock:
            self._modules.clear()
            self._order.clear()
