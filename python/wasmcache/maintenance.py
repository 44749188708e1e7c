"""Housekeeping of a cache folder: listing, verifying, pruning, clearing, cleaning up.

Only names in wasmcache's formats (see :mod:`wasmcache.names`) are ever touched; nothing
is followed through a link; a lock file is removed only by whoever holds its lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Optional

from wasmcache import entry, legacy, locks, names, safefs
from wasmcache.entry import Corrupt
from wasmcache.errors import CacheError, FileWriteError
from wasmcache.hashing import ModuleHash

log = logging.getLogger("wasmcache")

#: Temp files older than this (seconds) are left over from an interrupted save or download:
#: a live one is renamed long before (a stalled download fails after its idle timeout).
STALE_TEMP_AGE = 600.0
#: Direct-mode records not rewritten for this long are dropped by prune (seconds).
INDEX_RECORD_AGE = 7 * 86400.0


class CacheEntry(NamedTuple):
    """One entry file of a FileSystemCache."""

    path: Path
    engine_folder: str  # "<engine id>-v<format version>"
    key: ModuleHash
    size: int
    last_used: float  # seconds since the epoch (the file's access time, set on hits)


class Housekeeping:
    """The housekeeping methods of FileSystemCache (its ``cache_dir``, ``shared_group`` and
    ``legacy_max_bytes`` say what to check)."""

    shared_group: bool
    legacy_max_bytes: int

    @property
    def cache_dir(self) -> Path:
        raise NotImplementedError

    def entries(self) -> list[CacheEntry]:
        """Every entry of every engine folder (other names are ignored)."""
        return list(entries(str(self.cache_dir)))

    def describe(self, found: CacheEntry) -> Optional[entry.Info]:
        """What an entry says of itself (kind, source name, Wasm size, compile time,
        creation time, wasmtime version), read without mapping it; an older entry gives
        a module's defaults; None if it cannot be read or is damaged."""
        return describe(str(found.path))

    def verify_entries(self, *, fix: bool = False) -> list[tuple[CacheEntry, str]]:
        """Check every entry's format, length and checksum (without wasmtime); return the
        bad ones with the reason. With ``fix`` the bad ones are removed."""
        return verify(self, fix=fix)

    def prune(self, max_bytes: int) -> list[CacheEntry]:
        """Remove least recently used entries until the cache holds at most ``max_bytes``,
        plus stale temp files, free lock files and empty engine folders; return the removed
        entries. Entries that live modules map stay valid (unlinked, never truncated)."""
        return prune(self, max_bytes)

    def clear(self) -> int:
        """Remove every entry, temp file, free lock file and direct-mode record; return how
        many entries."""
        return clear(self)

    def cleanup(self, older_than: float = STALE_TEMP_AGE) -> int:
        """Remove temp files of interrupted saves older than ``older_than`` seconds, and
        lock files as old that nobody holds; return how many were removed."""
        return cleanup(str(self.cache_dir), older_than)


def record_use(fd: int, info: os.stat_result, interval: float) -> None:
    """Set an entry's access time to now (what prune's LRU order reads), at most once per
    ``interval`` seconds; a read-only cache is fine."""
    now = time.time()
    if now - info.st_atime >= interval:
        with contextlib.suppress(OSError):
            os.utime(fd, (now, info.st_mtime))


def _scan(folder: str) -> list[os.DirEntry[str]]:
    """The items of a folder; empty if it is missing or unreadable."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def engine_folders(cache_dir: str) -> list[os.DirEntry[str]]:
    """Engine folders of a cache (real folders, not links)."""
    return [
        e
        for e in _scan(cache_dir)
        if names.is_engine_folder(e.name) and e.is_dir(follow_symlinks=False)
    ]


def _at_entry_names(cache_dir: str) -> Iterator[tuple[CacheEntry, int]]:
    """Whatever sits at an entry name (regular or not), with its lstat mode."""
    for folder in engine_folders(cache_dir):
        for item in _scan(folder.path):
            key = names.entry_key(item.name)
            if key is None:
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except OSError:
                continue
            found = CacheEntry(Path(item.path), folder.name, key, info.st_size, info.st_atime)
            yield found, info.st_mode


def entries(cache_dir: str) -> Iterator[CacheEntry]:
    """Every entry file of the cache, in no particular order."""
    for found, mode in _at_entry_names(cache_dir):
        if stat.S_ISREG(mode):
            yield found


def describe(path: str) -> Optional[entry.Info]:
    try:
        fd, info = safefs.open_regular(path)
    except (OSError, CacheError):
        return None
    try:
        entry.inspect(fd, info.st_size, verify=False)
        return entry.read_info(fd, info.st_size)
    except (OSError, Corrupt):
        return None
    finally:
        os.close(fd)


def verify(cache: Housekeeping, *, fix: bool) -> list[tuple[CacheEntry, str]]:
    """Check whatever sits at entry names: rule, format, length, checksum (and a legacy
    entry's stream); return the bad ones with the reason, removing them with ``fix``."""
    bad = []
    for found, mode in _at_entry_names(str(cache.cache_dir)):
        path = str(found.path)
        reason = _problem(cache, path) if stat.S_ISREG(mode) else "not a regular file"
        if reason is None:
            continue
        bad.append((found, reason))
        if fix and not stat.S_ISDIR(mode):
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("could not remove bad entry %s: %s", path, exc)
    return bad


def _problem(cache: Housekeeping, path: str) -> Optional[str]:
    try:
        fd, info = safefs.open_regular(path)
    except FileNotFoundError:
        return None  # removed meanwhile
    except (OSError, CacheError) as exc:
        return f"unreadable: {exc}"
    try:
        safefs.check_entry(path, info, shared_group=cache.shared_group)
        shape = entry.inspect(fd, info.st_size, verify=True)
        if shape == "lzw":
            legacy.decode(fd, info.st_size, cache.legacy_max_bytes).release()
        entry.read_info(fd, info.st_size)  # damaged metadata is a problem too
    except (Corrupt, CacheError) as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def prune(cache: Housekeeping, max_bytes: int) -> list[CacheEntry]:
    """Remove least recently used entries until at most ``max_bytes`` remain, then stale
    temp files, free lock files, old direct-mode records and empty engine folders."""
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    cache_dir = str(cache.cache_dir)
    cleanup(cache_dir, STALE_TEMP_AGE)
    ordered = sorted(entries(cache_dir), key=lambda e: e.last_used)
    # Temp files of saves and downloads in progress hold disk too: they count.
    total = sum(e.size for e in ordered) + _temp_bytes(cache_dir)
    removed = []
    for found in ordered:
        if total <= max_bytes:
            break
        try:
            os.unlink(found.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not prune %s: %s", found.path, exc)
            continue
        total -= found.size
        removed.append(found)
    _remove_index_records(cache_dir, INDEX_RECORD_AGE)
    _remove_empty_folders(cache_dir)
    if removed:
        log.debug("pruned %d entries from %s", len(removed), cache_dir)
    return removed


def clear(cache: Housekeeping) -> int:
    """Remove whatever sits at entry names, every temp file, free lock files and
    direct-mode records; return how many entries."""
    cache_dir = str(cache.cache_dir)
    removed = 0
    for found, mode in list(_at_entry_names(cache_dir)):
        if stat.S_ISDIR(mode):
            continue
        try:
            os.unlink(found.path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _clear_error(cache_dir, exc) from exc
    cleanup(cache_dir, older_than=0)
    _remove_index_records(cache_dir, 0)
    safefs.unlink_quietly(names.prune_stamp_path(cache_dir))
    _remove_empty_folders(cache_dir)
    return removed


def _clear_error(cache_dir: str, exc: OSError) -> CacheError:
    return FileWriteError(
        f"cannot clear {cache_dir}: {exc.strerror} ({exc.filename})", exc.filename, exc.errno
    )


def cleanup(cache_dir: str, older_than: float) -> int:
    """Remove temp files older than ``older_than`` seconds and lock files as old that
    nobody holds; return how many were removed."""
    cutoff = time.time() - older_than
    removed = 0
    folders = [f.path for f in engine_folders(cache_dir)] + [names.index_folder(cache_dir)]
    for folder in folders:
        for item in _scan(folder):
            is_temp, is_lock = names.is_temp(item.name), names.is_lock(item.name)
            if not (is_temp or is_lock):
                continue
            try:
                if item.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
                if is_lock:
                    removed += locks.remove_if_free(item.path)
                    continue
                os.unlink(item.path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove stale temp file %s: %s", item.path, exc)
    if removed:
        log.debug("removed %d stale temp and lock files under %s", removed, cache_dir)
    return removed


def _temp_bytes(cache_dir: str) -> int:
    total = 0
    for folder in engine_folders(cache_dir):
        for item in _scan(folder.path):
            if names.is_temp(item.name):
                with contextlib.suppress(OSError):
                    total += item.stat(follow_symlinks=False).st_size
    return total


def maybe_prune(cache: Housekeeping, max_bytes: int, interval: float) -> None:
    """Prune to ``max_bytes`` if no process did within ``interval`` seconds (a shared
    stamp file), under a lock all processes share; never blocks a save."""
    cache_dir = str(cache.cache_dir)
    stamp = names.prune_stamp_path(cache_dir)
    try:
        if time.time() - os.lstat(stamp).st_mtime < interval:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    with locks.try_file_lock(names.prune_lock_path(cache_dir)) as locked:
        if not locked:
            return
        try:
            _touch(stamp)
            prune(cache, max_bytes)
        except OSError as exc:
            log.warning("automatic pruning of %s failed: %s", cache_dir, exc)


def _touch(path: str) -> None:
    """Create ``path`` or set its times to now, never through a link."""
    fd = os.open(path, safefs.LOCK_FLAGS, 0o600)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def _remove_index_records(cache_dir: str, older_than: float) -> None:
    cutoff = time.time() - older_than
    for item in _scan(names.index_folder(cache_dir)):
        if not names.is_index_record(item.name):
            continue
        with contextlib.suppress(OSError):
            if item.stat(follow_symlinks=False).st_mtime <= cutoff:
                os.unlink(item.path)


def _remove_empty_folders(cache_dir: str) -> None:
    for folder in [f.path for f in engine_folders(cache_dir)] + [names.index_folder(cache_dir)]:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only succeeds when empty
