"""Configuration read from the environment: where the cache lives by default."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$WASMCACHE_DIR`` if set (and not empty), else the user's cache folder
    (platformdirs) + ``wasmcache``."""
    configured = os.environ.get("WASMCACHE_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("wasmcache", appauthor=False))
