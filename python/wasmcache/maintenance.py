"""Housekeeping of a cache folder: listing, verifying, pruning, clearing, cleaning up.

Only names in wasmcache's formats (see :mod:`wasmcache.names`) are ever touched; nothing
is followed through a link; a lock file is removed only by whoever holds its lock. Every
folder walked and every file read passes the privacy rule first (:mod:`wasmcache.safefs`),
and a file is removed only if its name still holds the file that was checked.
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
    ``legacy_max_bytes`` say what to check). Each first checks the cache folder, then every
    engine folder it finds and the index folder, against the privacy rule, exactly as a
    load does (UnsafeCacheError, the same message); each removes only a file it checked,
    by identity, so a file renamed into place since stays."""

    shared_group: bool
    legacy_max_bytes: int

    @property
    def cache_dir(self) -> Path:
        raise NotImplementedError

    def entries(self) -> list[CacheEntry]:
        """Every entry of every engine folder (other names are ignored)."""
        return [found for found, _ in _entries(_checked(self))]

    def describe(self, found: CacheEntry) -> Optional[entry.Info]:
        """What an entry says of itself (kind, source name, Wasm size, compile time,
        creation time, wasmtime version), read without mapping it; an older entry gives
        a module's defaults; None if it cannot be read, breaks the rule or is damaged
        (its metadata not of the schema included)."""
        return describe(str(found.path), shared_group=self.shared_group, group=_group(self))

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
        return cleanup(_checked(self), older_than)


def record_use(fd: int, info: os.stat_result, interval: float) -> None:
    """Set an entry's access time to now (what prune's LRU order reads), at most once per
    ``interval`` seconds; a read-only cache is fine."""
    now = time.time()
    if now - info.st_atime >= interval:
        with contextlib.suppress(OSError):
            os.utime(fd, (now, info.st_mtime))


class Folders(NamedTuple):
    """A cache's folders, each checked against the privacy rule."""

    cache_dir: str
    shared_group: bool
    group: int  # the cache folder's
    engines: list[os.DirEntry[str]]
    index_dir: Optional[str]  # None: no index folder


def _group(cache: Housekeeping) -> Optional[int]:
    try:
        return os.lstat(cache.cache_dir).st_gid
    except OSError:
        return None


def _scan(folder: str) -> list[os.DirEntry[str]]:
    """The items of a folder; empty if it is missing or unreadable."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _checked(cache: Housekeeping) -> Optional[Folders]:
    """The cache folder, its engine folders and its index folder, after each passed the
    rule (UnsafeCacheError names the first that does not); None if there is no cache
    folder. A file at an engine folder's name is not a folder: skipped."""
    cache_dir, shared = str(cache.cache_dir), cache.shared_group
    info = safefs.folder_info(cache_dir, shared_group=shared)
    if info is None:
        return None
    group = info.st_gid
    engines = [
        item
        for item in _scan(cache_dir)
        if names.is_engine_folder(item.name)
        and safefs.check_folder(item.path, shared_group=shared, group=group)
    ]
    index_dir = names.index_folder(cache_dir)
    checked = safefs.check_folder(index_dir, shared_group=shared, group=group)
    return Folders(cache_dir, shared, group, engines, index_dir if checked else None)


def _at_entry_names(folders: Optional[Folders]) -> Iterator[tuple[CacheEntry, os.stat_result]]:
    """Whatever sits at an entry name (regular or not), with its lstat."""
    for folder in folders.engines if folders else []:
        for item in _scan(folder.path):
            key = names.entry_key(item.name)
            if key is None:
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except OSError:
                continue
            found = CacheEntry(Path(item.path), folder.name, key, info.st_size, info.st_atime)
            yield found, info


def _entries(folders: Optional[Folders]) -> Iterator[tuple[CacheEntry, os.stat_result]]:
    """Every entry file of the cache with its lstat, in no particular order."""
    for found, info in _at_entry_names(folders):
        if stat.S_ISREG(info.st_mode):
            yield found, info


def describe(
    path: str, *, shared_group: bool = False, group: Optional[int] = None
) -> Optional[entry.Info]:
    """The Info of the entry at ``path``, or None if it cannot be read, breaks the rule
    or is damaged."""
    try:
        fd, info = safefs.open_regular(path)
    except (OSError, CacheError):
        return None
    try:
        safefs.check_entry(path, info, shared_group=shared_group, group=group)
        entry.inspect(fd, info.st_size, verify=False)
        return entry.read_info(fd, info.st_size)
    except (OSError, Corrupt, CacheError):
        return None
    finally:
        os.close(fd)


def verify(cache: Housekeeping, *, fix: bool) -> list[tuple[CacheEntry, str]]:
    """Check whatever sits at entry names: rule, format, length, checksum (and a legacy
    entry's stream); return the bad ones with the reason, removing them with ``fix`` (only
    the file that was checked: one renamed into place since stays)."""
    folders = _checked(cache)
    bad = []
    for found, listed in _at_entry_names(folders):
        assert folders is not None
        path = str(found.path)
        if stat.S_ISREG(listed.st_mode):
            reason, checked = _problem(cache, folders, path)
        else:
            reason, checked = "not a regular file", listed
        if reason is None:
            continue
        bad.append((found, reason))
        if fix and checked is not None and not stat.S_ISDIR(checked.st_mode):
            try:
                safefs.remove_checked(path, checked)
            except OSError as exc:
                log.warning("could not remove bad entry %s: %s", path, exc)
    return bad


def _problem(
    cache: Housekeeping, folders: Folders, path: str
) -> tuple[Optional[str], Optional[os.stat_result]]:
    """What is wrong with the entry at ``path`` (None: nothing), and the fstat of the
    file checked (None if none could be opened)."""
    try:
        fd, info = safefs.open_regular(path)
    except FileNotFoundError:
        return None, None  # removed meanwhile
    except (OSError, CacheError) as exc:
        return f"unreadable: {exc}", None
    try:
        safefs.check_entry(path, info, shared_group=folders.shared_group, group=folders.group)
        shape = entry.inspect(fd, info.st_size, verify=True)
        if shape == "lzw":
            legacy.decode(fd, info.st_size, cache.legacy_max_bytes).release()
        entry.read_info(fd, info.st_size)  # damaged metadata is a problem too
    except (Corrupt, CacheError) as exc:
        return str(exc), info
    except OSError as exc:
        return f"unreadable: {exc.strerror}", info
    finally:
        os.close(fd)
    return None, info


def prune(cache: Housekeeping, max_bytes: int) -> list[CacheEntry]:
    """Remove least recently used entries until at most ``max_bytes`` remain, then stale
    temp files, free lock files, old direct-mode records and empty engine folders."""
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    folders = _checked(cache)
    if folders is None:
        return []
    cleanup(folders, STALE_TEMP_AGE)
    ordered = sorted(_entries(folders), key=lambda pair: pair[0].last_used)
    # Temp files of saves and downloads in progress hold disk too: they count.
    total = sum(found.size for found, _ in ordered) + _temp_bytes(folders)
    removed = []
    for found, listed in ordered:
        if total <= max_bytes:
            break
        try:
            if not safefs.remove_checked(str(found.path), listed):
                continue  # gone, or a new file renamed into place since it was listed
        except OSError as exc:
            log.warning("could not prune %s: %s", found.path, exc)
            continue
        total -= found.size
        removed.append(found)
    _remove_index_records(folders, INDEX_RECORD_AGE)
    _remove_empty_folders(folders)
    if removed:
        log.debug("pruned %d entries from %s", len(removed), folders.cache_dir)
    return removed


def clear(cache: Housekeeping) -> int:
    """Remove whatever sits at entry names, every temp file, free lock files and
    direct-mode records; return how many entries."""
    folders = _checked(cache)
    if folders is None:
        return 0
    removed = 0
    for found, listed in list(_at_entry_names(folders)):
        if stat.S_ISDIR(listed.st_mode):
            continue
        try:
            removed += safefs.remove_checked(str(found.path), listed)
        except OSError as exc:
            raise _clear_error(folders.cache_dir, exc) from exc
    cleanup(folders, older_than=0)
    _remove_index_records(folders, 0)
    stamp = names.prune_stamp_path(folders.cache_dir)
    with contextlib.suppress(OSError):
        safefs.remove_checked(stamp, os.lstat(stamp))  # never followed
    _remove_empty_folders(folders)
    return removed


def _clear_error(cache_dir: str, exc: OSError) -> CacheError:
    return FileWriteError(
        f"cannot clear {cache_dir}: {exc.strerror} ({exc.filename})", exc.filename, exc.errno
    )


def cleanup(folders: Optional[Folders], older_than: float) -> int:
    """Remove temp files older than ``older_than`` seconds and lock files as old that
    nobody holds; return how many were removed."""
    if folders is None:
        return 0
    cutoff = time.time() - older_than
    removed = 0
    paths = [f.path for f in folders.engines] + ([folders.index_dir] if folders.index_dir else [])
    for folder in paths:
        for item in _scan(folder):
            is_temp, is_lock = names.is_temp(item.name), names.is_lock(item.name)
            if not (is_temp or is_lock):
                continue
            try:
                info = item.stat(follow_symlinks=False)
                if info.st_mtime > cutoff:
                    continue
                if is_lock:
                    removed += locks.remove_if_free(
                        item.path, shared_group=folders.shared_group, group=folders.group
                    )
                    continue
                removed += safefs.remove_checked(item.path, info)
            except OSError as exc:
                log.warning("could not remove stale temp file %s: %s", item.path, exc)
    if removed:
        log.debug("removed %d stale temp and lock files under %s", removed, folders.cache_dir)
    return removed


def _temp_bytes(folders: Folders) -> int:
    total = 0
    for folder in folders.engines:
        for item in _scan(folder.path):
            if names.is_temp(item.name):
                with contextlib.suppress(OSError):
                    total += item.stat(follow_symlinks=False).st_size
    return total


def maybe_prune(cache: Housekeeping, max_bytes: int, interval: float) -> None:
    """Prune to ``max_bytes`` if no process did within ``interval`` seconds (a shared
    stamp file), under a lock all processes share; never blocks a save. A stamp or lock
    file that breaks the rule stops automatic pruning, with a warning naming it."""
    cache_dir = str(cache.cache_dir)
    stamp = names.prune_stamp_path(cache_dir)
    shared, group = cache.shared_group, _group(cache)
    try:
        if time.time() - _stamp_time(stamp, shared_group=shared, group=group) < interval:
            return
    except FileNotFoundError:
        pass
    except (OSError, CacheError) as exc:
        log.warning("automatic pruning of %s skipped: %s", cache_dir, exc)
        return
    prune_lock = names.prune_lock_path(cache_dir)
    with locks.try_file_lock(prune_lock, shared_group=shared, group=group) as locked:
        if not locked:
            return
        try:
            _touch(stamp, shared_group=shared, group=group)
            prune(cache, max_bytes)
        except (OSError, CacheError) as exc:
            log.warning("automatic pruning of %s failed: %s", cache_dir, exc)


def _stamp_time(path: str, *, shared_group: bool, group: Optional[int]) -> float:
    """When pruning last ran: the stamp file's mtime, read under the rule."""
    fd, info = safefs.open_regular(path)
    try:
        safefs.check_entry(path, info, shared_group=shared_group, group=group, what="prune stamp")
        return info.st_mtime
    finally:
        os.close(fd)


def _touch(path: str, *, shared_group: bool, group: Optional[int]) -> None:
    """Create ``path`` or set its times to now, never through a link, under the rule."""
    fd = safefs.open_lock(path, shared_group=shared_group, group=group, what="prune stamp")
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def _remove_index_records(folders: Folders, older_than: float) -> None:
    if folders.index_dir is None:
        return
    cutoff = time.time() - older_than
    for item in _scan(folders.index_dir):
        if not names.is_index_record(item.name):
            continue
        with contextlib.suppress(OSError):
            info = item.stat(follow_symlinks=False)
            if info.st_mtime <= cutoff:
                safefs.remove_checked(item.path, info)


def _remove_empty_folders(folders: Folders) -> None:
    paths = [f.path for f in folders.engines] + ([folders.index_dir] if folders.index_dir else [])
    for folder in paths:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only succeeds when empty
