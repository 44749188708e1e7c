"""FallbackCache: a primary cache in front of a fallback one (memory before disk, disk
before a remote store)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import wasmtime

from wasmcache import direct as direct_mode
from wasmcache import metrics
from wasmcache.base import ModuleCache
from wasmcache.entry import Origin
from wasmcache.errors import CacheError, DeserializeError, NotFound
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled, Kind
from wasmcache.logs import log
from wasmcache.metrics import Values as MetricValues


class FallbackCache(ModuleCache):
    """Loads try ``primary``, then ``fallback``; a fallback hit is saved into the primary
    (a failed promotion is only logged). Saves go to both; contains asks both.

    Direct mode keeps its records in the first part that has an on-disk index (say the
    FileSystemCache behind a MemoryCache). ``direct`` defaults to the parts' settings:
    off if either part turns it off, on if either turns it on, else automatic.

    :meth:`metrics` sums the parts' counters and this cache's compiles; the counters of
    a part without a folder (a MemoryCache) are kept in the first part's that has one."""

    metrics_tier = None

    def __init__(
        self, primary: ModuleCache, fallback: ModuleCache, *, direct: Optional[bool] = None
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        setting = direct_mode.setting(direct)
        if direct is None:
            parts = (primary.direct, fallback.direct)
            if False in parts:
                setting = False
            elif True in parts:
                setting = True
        self.direct = setting
        self._counters = metrics.Counters(None)
        kept = metrics.counters(primary).file or metrics.counters(fallback).file
        for counted in (self._counters, metrics.counters(primary), metrics.counters(fallback)):
            counted.keep_in(kept)

    def metrics(self) -> MetricValues:
        """The sum of the parts' counters and this cache's own (its compiles after
        misses), ``{tier: {counter: value}}`` (see :mod:`wasmcache.metrics`)."""
        return metrics.merge(
            (self._counters.snapshot(), metrics.of(self.primary), metrics.of(self.fallback))
        )

    def __repr__(self) -> str:
        return f"{self.primary!r}.with_fallback({self.fallback!r})"

    def load(
        self, key: ModuleHash, engine: wasmtime.Engine, *, kind: Optional[Kind] = None
    ) -> Compiled:
        try:
            return self.primary.load(key, engine, kind=kind)
        except (NotFound, DeserializeError):
            pass
        except CacheError as exc:
            log.warning(
                "primary cache %r failed for %s, trying the fallback: %s", self.primary, key, exc
            )
        metrics.note_loaded(0, None)
        module = self.fallback.load(key, engine, kind=kind)
        if self.primary.contains(key, engine):
            return module  # already there (a remote tier downloads into its local folder)
        # The entry's recorded compile time goes along, for the primary's hits to count.
        seconds = metrics.last_loaded()[1]
        try:
            self.primary.save(key, engine, module, origin=Origin(compile_seconds=seconds))
        except CacheError as exc:
            log.warning("could not promote %s into %r: %s", key, self.primary, exc)
        return module

    def save(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        module: Compiled,
        *,
        origin: Optional[Origin] = None,
    ) -> None:
        errors = []
        for cache in (self.primary, self.fallback):
            try:
                cache.save(key, engine, module, origin=origin)
            except CacheError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        if self.primary.contains(key, engine):
            return True
        try:
            return self.fallback.contains(key, engine)
        except CacheError as exc:
            log.warning("fallback cache %r failed for %s: %s", self.fallback, key, exc)
            return False

    def _direct_index(self) -> Optional[direct_mode.Index]:
        index = self.primary._direct_index()
        return index if index is not None else self.fallback._direct_index()

    @property
    def lock_scope(self) -> int:  # type: ignore[override]
        return max(self.primary.lock_scope, self.fallback.lock_scope)

    @contextlib.contextmanager
    def compile_lock(self, key: ModuleHash, engine: wasmtime.Engine) -> Iterator[None]:
        """The locks of the parts that reach beyond this process, primary first (say the
        machine-wide file lock, then the fleet-wide lease); the primary's if none do."""
        parts = [c for c in (self.primary, self.fallback) if c.lock_scope > 0] or [self.primary]
        with contextlib.ExitStack() as stack:
            for cache in parts:
                stack.enter_context(cache.compile_lock(key, engine))
            yield
