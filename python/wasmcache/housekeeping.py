"""What a cache's hot path needs of housekeeping: the housekeeping methods (which load
:mod:`wasmcache.maintenance`, the listing and pruning code, only when one is called), an
entry's use stamp, and the background thread that runs housekeeping off the compile lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from wasmcache import locks
from wasmcache.logs import log

if TYPE_CHECKING:
    from wasmcache import entry
    from wasmcache.maintenance import CacheEntry, Summary

#: Temp files older than this (seconds) are left over from an interrupted save or download:
#: a live one is renamed long before (a stalled download fails after its idle timeout).
STALE_TEMP_AGE = 600.0


class Housekeeping:
    """The housekeeping methods of FileSystemCache (its ``cache_dir``, ``shared_group`` and
    ``legacy_max_bytes`` say what to check). Each first checks the cache folder, then every
    engine folder it finds and the index folder, against the privacy rule, exactly as a
    load does (UnsafeCacheError, the same message); each removes only a file it checked,
    by identity, so a file renamed into place since stays."""

    shared_group: bool
    legacy_max_bytes: int
    #: The group ``shared_group`` names (None: the cache folder's own).
    _named_gid: Optional[int] = None
    #: The cache folder's group, taken when a listing checked the folder.
    _listed_group: Optional[int] = None

    @property
    def cache_dir(self) -> Path:
        raise NotImplementedError

    def entries(self) -> list[CacheEntry]:
        """Every entry of every engine folder (other names are ignored)."""
        from wasmcache import maintenance

        return maintenance.entries(self)

    def describe(self, found: CacheEntry) -> Optional[entry.Info]:
        """What an entry says of itself (kind, source name, Wasm size, compile time,
        creation time, wasmtime version), read without mapping it; an older entry gives
        a module's defaults; None if it cannot be read, breaks the rule or is damaged
        (its metadata not of the schema included)."""
        from wasmcache import maintenance

        return maintenance.describe_entry(self, found)

    def described(self) -> list[tuple[CacheEntry, Optional[entry.Info]]]:
        """Every entry with what :meth:`describe` says of it, from one listing."""
        from wasmcache import maintenance

        return maintenance.described(self)

    def summary(self) -> dict[str, Summary]:
        """Per engine folder name: how many entries, their bytes, modules and components,
        their recorded compile seconds and the range of their last uses (one pass; each
        entry described as :meth:`describe` does)."""
        from wasmcache import maintenance

        return maintenance.summarize(self)

    def verify_entries(self, *, fix: bool = False) -> list[tuple[CacheEntry, str]]:
        """Check every entry's format, length and checksum (without wasmtime); return the
        bad ones with the reason. With ``fix`` the bad ones are removed."""
        from wasmcache import maintenance

        return maintenance.verify(self, fix=fix)

    def prune(self, max_bytes: int) -> list[CacheEntry]:
        """Remove least recently used entries until the cache holds at most ``max_bytes``,
        plus stale temp files, free lock files and empty engine folders; return the removed
        entries. Entries that live modules map stay valid (unlinked, never truncated)."""
        from wasmcache import maintenance

        return maintenance.prune(self, max_bytes)

    def clear(self) -> int:
        """Remove every entry, temp file, free lock file and direct-mode record; return how
        many entries."""
        from wasmcache import maintenance

        return maintenance.clear(self)

    def cleanup(self, older_than: float = STALE_TEMP_AGE) -> int:
        """Remove temp files of interrupted saves older than ``older_than`` seconds, and
        lock files as old that nobody holds; return how many were removed."""
        from wasmcache import maintenance

        return maintenance.cleanup_cache(self, older_than)


def record_use(fd: int, info: os.stat_result, interval: float) -> None:
    """Set an entry's access time to now (what prune's LRU order reads), at most once per
    ``interval`` seconds; a read-only cache is fine."""
    now = time.time()
    if now - info.st_atime >= interval:
        with contextlib.suppress(OSError):
            if sys.platform == "win32":
                return  # no utime of a descriptor there; NTFS keeps access times itself
            os.utime(fd, (now, info.st_mtime))


class _Worker:
    """One background thread per process that runs housekeeping handed to it, each job
    once however often it is asked for while it waits."""

    def __init__(self) -> None:
        self._jobs: dict[object, Callable[[], object]] = {}
        self._busy = False
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def submit(self, name: object, job: Callable[[], object]) -> None:
        with self._changed:
            if name in self._jobs:
                return
            self._jobs[name] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="wasmcache-housekeeping", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs:
                    self._busy = False
                    self._changed.notify_all()
                    if not self._changed.wait(timeout=30.0) and not self._jobs:
                        self._thread = None
                        return  # idle: a later job starts a new thread
                name = next(iter(self._jobs))
                job = self._jobs.pop(name)
                self._busy = True
            try:
                job()
            except Exception:
                log.exception("housekeeping failed")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until no job is queued or running; return whether that happened."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._jobs or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True


_worker = _Worker()


def in_background(name: object, job: Callable[[], object]) -> None:
    """Run ``job`` on the housekeeping thread once this thread holds no compile lock
    (at once if it holds none); a job of the same ``name`` already waiting is not added
    again."""
    locks.after_release(lambda: _worker.submit(name, job))


def wait_idle(timeout: Optional[float] = None) -> bool:
    """Wait until the background housekeeping of this process is done; return whether
    it was within ``timeout`` seconds."""
    return _worker.wait(timeout)
