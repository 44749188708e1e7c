"""Housekeeping of a cache folder: listing, verifying, pruning, clearing, cleaning up.

Automatic pruning never runs inside a save nor while this thread holds a compile lock:
a save only asks for it (:func:`wasmcache.housekeeping.in_background`), and it runs on a
background thread once the compile lock is released, at most once per interval across
processes (a stamp file and a lock). The hot path never imports this module
(:mod:`wasmcache.housekeeping` holds what it needs).

Only names in wasmcache's formats (see :mod:`wasmcache.names`) are ever touched; nothing
is followed through a link; a lock file is removed only by whoever holds its lock. Every
folder walked and every file read passes the privacy rule first (:mod:`wasmcache.safefs`),
and a file is removed only if its name still holds the file that was checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from wasmcache import entry, legacy, locks, names, safefs
from wasmcache.entry import Corrupt
from wasmcache.errors import CacheError, FileWriteError, UnsafeCacheError
from wasmcache.hashing import ModuleHash
from wasmcache.housekeeping import STALE_TEMP_AGE, Housekeeping
from wasmcache.logs import log


class CacheEntry(NamedTuple):
    """One entry file of a FileSystemCache."""

    path: Path
    engine_folder: str  # "<engine id>-v<format version>"
    key: ModuleHash
    size: int
    last_used: float  # seconds since the epoch (the file's access time, set on hits)


def entries(cache: Housekeeping) -> list[CacheEntry]:
    """:meth:`Housekeeping.entries`."""
    return [found for found, _ in _entries(_checked(cache))]


def describe_entry(cache: Housekeeping, found: CacheEntry) -> Optional[entry.Info]:
    """:meth:`Housekeeping.describe`."""
    return describe(str(found.path), shared_group=cache.shared_group, group=_group(cache))


def described(cache: Housekeeping) -> list[tuple[CacheEntry, Optional[entry.Info]]]:
    """:meth:`Housekeeping.described`."""
    return [
        (_Found(path, name, folder, info, Path(path).parent).entry(), about)
        for path, name, folder, info, about in _described(_checked(cache))
    ]


def cleanup_cache(cache: Housekeeping, older_than: float) -> int:
    """:meth:`Housekeeping.cleanup`."""
    return cleanup(_checked(cache), older_than)


class Engine(NamedTuple):
    """An engine folder that passed the rule, with the lstat it passed with."""

    path: str
    name: str
    info: os.stat_result


class Folders(NamedTuple):
    """A cache's folders, each checked against the privacy rule."""

    cache_dir: str
    shared_group: bool
    group: int  # the cache folder's
    engines: list[Engine]
    index_dir: Optional[str]  # None: no index folder


def _group(cache: Housekeeping) -> Optional[int]:
    for known in (getattr(cache, "_gid", None), cache._listed_group):
        if isinstance(known, int):
            return known  # the folder's group, taken when it passed the rule
    try:
        return os.lstat(cache.cache_dir).st_gid
    except OSError:
        return None


def _scan(folder: Union[str, int]) -> list[os.DirEntry[str]]:
    """The items of a folder (named, or open: then each item's path is its name); empty
    if it is missing or unreadable."""
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
    named = cache._named_gid
    info = safefs.folder_info(cache_dir, shared_group=shared, group=named, exact=named is not None)
    if info is None:
        return None
    group = cache._listed_group = info.st_gid
    engines = []
    for item in _scan(cache_dir):
        if names.is_engine_folder(item.name):
            passed = safefs.folder_info(item.path, shared_group=shared, group=group)
            if passed is not None:
                engines.append(Engine(item.path, item.name, passed))
    index_dir = names.index_folder(cache_dir)
    checked = safefs.check_folder(index_dir, shared_group=shared, group=group)
    return Folders(cache_dir, shared, group, engines, index_dir if checked else None)


#: Whether an engine folder is held open while its entries are read, each opened relative
#: to it (POSIX): a folder swapped for another, or for a link, after it passed the rule
#: then cannot redirect the opens. Windows opens by path (no ``dir_fd``).
_AT_FOLDER = (
    os.open in os.supports_dir_fd and os.scandir in os.supports_fd and hasattr(os, "O_DIRECTORY")
)
_FOLDER_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
#: How often an engine folder replaced between its check and its open is checked again.
_HOLD_ATTEMPTS = 3


def _hold(folders: Folders, engine: Engine) -> Optional[int]:
    """The engine folder opened without following a link, and found to be the folder that
    passed the rule (same device and inode); None if it is gone, unreadable or a file now.
    One replaced since it was checked is checked again (UnsafeCacheError for a link or a
    folder that breaks the rule)."""
    checked: Optional[os.stat_result] = engine.info
    for _ in range(_HOLD_ATTEMPTS):
        if checked is None:
            return None
        try:
            fd = os.open(engine.path, _FOLDER_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                return None  # gone or unreadable: nothing listed, as by a scan
        else:
            held = os.fstat(fd)
            if held.st_ino == checked.st_ino and held.st_dev == checked.st_dev:
                return fd
            os.close(fd)
        # Replaced since it passed (a link now, a file, another folder): the rule again.
        checked = safefs.folder_info(
            engine.path, shared_group=folders.shared_group, group=folders.group
        )
    raise UnsafeCacheError(
        f"refusing cache folder {engine.path}: it was replaced again and again while it was "
        "being checked",
        engine.path,
    )


class _Found(NamedTuple):
    """Whatever sits at an entry name, with its lstat (a CacheEntry made on demand)."""

    path: str
    name: str
    folder: str  # the engine folder's name
    info: os.stat_result
    parent: Path  # the engine folder, shared by its entries

    def entry(self) -> CacheEntry:
        key = names.entry_key(self.name)
        assert key is not None
        info = self.info
        return CacheEntry(self.parent / self.name, self.folder, key, info.st_size, info.st_atime)


class _Listing(NamedTuple):
    """One pass over the engine folders: what sits at entry names, temp and lock files."""

    found: list[_Found]
    temps: list[tuple[str, os.stat_result]]
    locks: list[tuple[str, os.stat_result]]


def _list(folders: Optional[Folders], *, extra: bool = False) -> _Listing:
    """Each engine folder read once; names that are not wasmcache's are skipped before
    anything else is asked of them. Temp and lock files only with ``extra``."""
    listing = _Listing([], [], [])
    for folder in folders.engines if folders else []:
        parent = Path(folder.path)
        for item in _scan(folder.path):
            name = item.name
            if name.startswith("."):
                if not extra:
                    continue
                into = (
                    listing.temps
                    if names.is_temp(name)
                    else listing.locks
                    if names.is_lock(name)
                    else None
                )
                if into is not None:
                    with contextlib.suppress(OSError):
                        into.append((item.path, item.stat(follow_symlinks=False)))
                continue
            if not names.is_entry(name):
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except OSError:
                continue
            listing.found.append(_Found(item.path, name, folder.name, info, parent))
    return listing


def _at_entry_names(folders: Optional[Folders]) -> Iterator[tuple[CacheEntry, os.stat_result]]:
    """Whatever sits at an entry name (regular or not), with its lstat."""
    for found in _list(folders).found:
        yield found.entry(), found.info


def _entries(folders: Optional[Folders]) -> Iterator[tuple[CacheEntry, os.stat_result]]:
    """Every entry file of the cache with its lstat, in no particular order."""
    for found in _list(folders).found:
        if stat.S_ISREG(found.info.st_mode):
            yield found.entry(), found.info


def describe(
    path: str, *, shared_group: bool = False, group: Optional[int] = None
) -> Optional[entry.Info]:
    """The Info of the entry at ``path``, or None if it cannot be read, breaks the rule
    or is damaged."""
    return _read_described(path, shared_group, group)[1]


#: Reading an entry to describe it is not a use: its access time (what prune's LRU order
#: reads) stays as the last hit left it. Only a file's owner (or root) may ask for this.
_NOATIME = getattr(os, "O_NOATIME", 0)
_UNUSED_FLAGS = safefs.READ_FLAGS | _NOATIME


def _open_unused(path: str, folder: Optional[int] = None) -> int:
    """``path`` (relative to the open ``folder`` if given) opened for reading as
    :func:`safefs.open_regular` opens it (never through a link, never blocking), without
    updating its access time where the system allows."""
    if _NOATIME:
        try:
            return os.open(path, _UNUSED_FLAGS, dir_fd=folder)
        except PermissionError:
            pass  # not the file's owner: an ordinary open
    return os.open(path, safefs.READ_FLAGS, dir_fd=folder)


def _read_described(
    path: str,
    shared_group: bool,
    group: Optional[int],
    folder: Optional[int] = None,
    name: str = "",
) -> tuple[Optional[os.stat_result], Optional[entry.Info]]:
    """The fstat of the regular file at ``path`` (None if it cannot be opened, or is not
    one) and its Info (None if it breaks the rule or is damaged); the file opened once,
    as ``name`` relative to the open ``folder`` if given (``path`` then only names it)."""
    try:
        fd = _open_unused(path) if folder is None else _open_unused(name, folder)
    except OSError:
        return None, None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, None
        try:
            safefs.check_entry(path, info, shared_group=shared_group, group=group, fd=fd)
            return info, entry.describe(fd, info.st_size)
        except (OSError, Corrupt, CacheError):
            return info, None
    except OSError:
        return None, None
    finally:
        os.close(fd)


def _described(
    folders: Optional[Folders],
) -> Iterator[tuple[str, str, str, os.stat_result, Optional[entry.Info]]]:
    """Every entry file (a regular file at an entry name): its path, name, engine folder's
    name, stat and Info, from one pass over the engine folders. Each engine folder is held
    open (:func:`_hold`) and its entries are opened relative to it. A name the folder's
    listing types as anything but a regular file is skipped unopened; each other one is
    opened once, its fstat standing for the lstat a listing takes (the same file, never
    followed); one that cannot be opened is listed as its lstat shows it, undescribed."""
    if folders is None:
        return
    shared, group = folders.shared_group, folders.group
    is_entry, read = names.is_entry, _read_described
    for engine in folders.engines:
        folder = _hold(folders, engine) if _AT_FOLDER else None
        if _AT_FOLDER and folder is None:
            continue
        try:
            engine_name, prefix = engine.name, engine.path + os.sep
            for item in _scan(engine.path if folder is None else folder):
                name = item.name
                if not is_entry(name):
                    continue
                try:
                    if not item.is_file(follow_symlinks=False):  # the listing's type: no call
                        continue
                except OSError:
                    continue
                path = prefix + name
                info, about = read(path, shared, group, folder, name)
                if info is None:
                    try:
                        info = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not stat.S_ISREG(info.st_mode):
                        continue
                yield path, name, engine_name, info, about
        finally:
            if folder is not None:
                os.close(folder)


class Listed(NamedTuple):
    """One entry as ``wasmcache ls`` shows it: plain values, what it says of itself."""

    path: str
    engine_folder: str
    key: str  # the key's digest as the entry's name holds it (uppercase hex)
    size: int
    last_used: float
    info: Optional[entry.Info]


def listed(cache: Housekeeping) -> list[Listed]:
    """Every entry with what :meth:`Housekeeping.describe` says of it, in listing order,
    without a CacheEntry each (see :meth:`Housekeeping.described`)."""
    new = tuple.__new__  # Listed(...) without its keyword handling, once per entry
    return [
        new(Listed, (path, folder, name[:-4], info.st_size, info.st_atime, about))
        for path, name, folder, info, about in _described(_checked(cache))
    ]


class Summary(NamedTuple):
    """Totals of one engine folder (what ``wasmcache stats`` prints)."""

    entries: int
    bytes: int
    modules: int
    components: int
    compile_seconds: float  # recorded by the entries that know theirs
    oldest_use: Optional[float]
    newest_use: Optional[float]


def summarize(cache: Housekeeping) -> dict[str, Summary]:
    """Per engine folder: its entries, their bytes, kinds and recorded compile time, and
    the range of their last uses; from one listing, each entry described as
    :meth:`Housekeeping.describe` does (an entry that cannot be described counts in
    entries and bytes only)."""
    folders = _checked(cache)
    if folders is None:
        return {}
    totals: dict[str, list[Any]] = {}
    total: list[Any] = []
    at = None  # the engine folder of ``total`` (entries come folder by folder)
    for _path, _name, folder, info, described in _described(folders):
        if folder != at:
            total, at = totals.setdefault(folder, [0, 0, 0, 0, 0.0, None, None]), folder
        total[0] += 1
        total[1] += info.st_size
        if described is not None:
            total[2 if described.kind == "module" else 3] += 1
            total[4] += described.compile_seconds or 0.0
        used = info.st_atime
        total[5] = used if total[5] is None else min(total[5], used)
        total[6] = used if total[6] is None else max(total[6], used)
    return {folder: Summary(*total) for folder, total in totals.items()}


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
            reason, checked = _problem(cache, folders, path, found)
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
    cache: Housekeeping, folders: Folders, path: str, found: CacheEntry
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
        safefs.check_entry(
            path, info, shared_group=folders.shared_group, group=folders.group, fd=fd
        )
        shape = entry.inspect(fd, info.st_size, verify=True)
        if shape == "lzw":
            legacy.decode(fd, info.st_size, cache.legacy_max_bytes).release()
        described = entry.read_info(fd, info.st_size)  # damaged metadata is a problem too
        other = _names_other(described, found)
        if other is not None:
            raise Corrupt(f"its metadata does not name this entry: {other}")
    except (Corrupt, CacheError) as exc:
        return str(exc), info
    except OSError as exc:
        return f"unreadable: {exc.strerror}", info
    finally:
        os.close(fd)
    return None, info


def _names_other(described: entry.Info, found: CacheEntry) -> Optional[str]:
    """Why an entry may not stand for the name it is found under (its metadata records
    another key digest or engine id), or None. A name holds no key algorithm, so only
    the digest is compared here; a load compares both."""
    engine = found.engine_folder.rpartition("-v")[0]
    if described.key is not None and described.key != str(found.key):
        return f"it was saved under key {described.key_algorithm}:{described.key}"
    if described.engine_id is not None and described.engine_id != engine:
        return f"it was saved for engine {described.engine_id}"
    return None


def prune(cache: Housekeeping, max_bytes: int) -> list[CacheEntry]:
    """Remove least recently used entries until at most ``max_bytes`` remain, then stale
    temp files, free lock files, old direct-mode records and empty engine folders. Each
    folder is read once; a CacheEntry is made only for what is removed."""
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    folders = _checked(cache)
    if folders is None:
        return []
    listing = _list(folders, extra=True)
    _cleanup_listed(folders, listing, STALE_TEMP_AGE)
    found = [f for f in listing.found if stat.S_ISREG(f.info.st_mode)]
    # Temp files of saves and downloads in progress hold disk too: they count.
    total = sum(f.info.st_size for f in found)
    total += sum(info.st_size for path, info in listing.temps if os.path.lexists(path))
    removed = []
    if total > max_bytes:
        found.sort(key=lambda f: f.info.st_atime)
        for candidate in found:
            if total <= max_bytes:
                break
            try:
                if not safefs.remove_checked(candidate.path, candidate.info):
                    continue  # gone, or a new file renamed into place since it was listed
            except OSError as exc:
                log.warning("could not prune %s: %s", candidate.path, exc)
                continue
            total -= candidate.info.st_size
            removed.append(candidate.entry())
    _remove_index_records(folders, log_too=False)
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
    _remove_index_records(folders, log_too=True)
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
    listing = _list(folders, extra=True)
    if folders.index_dir is not None:
        for item in _scan(folders.index_dir):
            if names.is_temp(item.name):
                with contextlib.suppress(OSError):
                    listing.temps.append((item.path, item.stat(follow_symlinks=False)))
    return _cleanup_listed(folders, listing, older_than)


def _cleanup_listed(folders: Folders, listing: _Listing, older_than: float) -> int:
    cutoff = time.time() - older_than
    removed = 0
    for path, info in listing.temps + listing.locks:
        if info.st_mtime > cutoff:
            continue
        try:
            if names.is_lock(os.path.basename(path)):
                removed += locks.remove_if_free(
                    path, shared_group=folders.shared_group, group=folders.group
                )
            else:
                removed += safefs.remove_checked(path, info)
        except OSError as exc:
            log.warning("could not remove stale temp file %s: %s", path, exc)
    if removed:
        log.debug("removed %d stale temp and lock files under %s", removed, folders.cache_dir)
    return removed


# -- automatic pruning ------------------------------------------------------------------


def maybe_prune(cache: Housekeeping, max_bytes: int, interval: float) -> float:
    """Prune to ``max_bytes`` if no process did within ``interval`` seconds (a shared
    stamp file), under a lock all processes share (given up at once if another process
    holds it). A stamp or lock file that breaks the rule stops automatic pruning, with a
    warning naming it. Return how many seconds until pruning may be due again."""
    cache_dir = str(cache.cache_dir)
    stamp = names.prune_stamp_path(cache_dir)
    shared, group = cache.shared_group, _group(cache)
    try:
        age = time.time() - _stamp_time(stamp, shared_group=shared, group=group)
        if 0 <= age < interval:
            return interval - age
    except FileNotFoundError:
        pass
    except (OSError, CacheError) as exc:
        log.warning("automatic pruning of %s skipped: %s", cache_dir, exc)
        return interval
    prune_lock = names.prune_lock_path(cache_dir)
    with locks.try_file_lock(prune_lock, shared_group=shared, group=group) as locked:
        if not locked:
            return interval  # another process prunes right now
        try:
            _touch(stamp, shared_group=shared, group=group)
            prune(cache, max_bytes)
        except (OSError, CacheError) as exc:
            log.warning("automatic pruning of %s failed: %s", cache_dir, exc)
    return interval


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
        if sys.platform == "win32":
            os.utime(path)  # no utime of a descriptor there; the file was just checked
        else:
            os.utime(fd)
    finally:
        os.close(fd)


def _remove_index_records(folders: Folders, *, log_too: bool) -> None:
    """Remove the records of an older version (one file per stamp: never read now) and,
    with ``log_too``, the index log."""
    if folders.index_dir is None:
        return
    for item in _scan(folders.index_dir):
        is_log = log_too and item.name == names.INDEX_LOG
        if not (is_log or names.is_index_record(item.name)):
            continue
        with contextlib.suppress(OSError):
            safefs.remove_checked(item.path, item.stat(follow_symlinks=False))


def _remove_empty_folders(folders: Folders) -> None:
    paths = [f.path for f in folders.engines] + ([folders.index_dir] if folders.index_dir else [])
    for folder in paths:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only succeeds when empty
