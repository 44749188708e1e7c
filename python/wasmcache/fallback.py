"""FallbackCache: a primary cache in front of a fallback one (memory before disk, disk
before a remote store)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import wasmtime

from wasmcache.base import ModuleCache
from wasmcache.errors import CacheError, DeserializeError, NotFound
from wasmcache.hashing import ModuleHash

log = logging.getLogger("wasmcache")


class FallbackCache(ModuleCache):
    """Loads try ``primary``, then ``fallback``; a fallback hit is saved into the primary
    (a failed promotion is only logged). Saves go to both; contains asks both."""

    def __init__(self, primary: ModuleCache, fallback: ModuleCache) -> None:
        self.primary = primary
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"{self.primary!r}.with_fallback({self.fallback!r})"

    def load(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        try:
            return self.primary.load(key, engine)
        except (NotFound, DeserializeError):
            pass
        except CacheError as exc:
            log.warning(
                "primary cache %r failed for %s, trying the fallback: %s", self.primary, key, exc
            )
        module = self.fallback.load(key, engine)
        try:
            self.primary.save(key, engine, module)
        except CacheError as exc:
            log.warning("could not promote %s into %r: %s", key, self.primary, exc)
        return module

    def save(self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        errors = []
        for cache in (self.primary, self.fallback):
            try:
                cache.save(key, engine, module)
            except CacheError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        return self.primary.contains(key, engine) or self.fallback.contains(key, engine)

    @property
    def lock_scope(self) -> int:  # type: ignore[override]
        return max(self.primary.lock_scope, self.fallback.lock_scope)

    def compile_lock(
        self, key: ModuleHash, engine: wasmtime.Engine
    ) -> contextlib.AbstractContextManager[Any]:
        widest = max((self.primary, self.fallback), key=lambda cache: cache.lock_scope)
        return widest.compile_lock(key, engine)
