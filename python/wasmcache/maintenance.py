"""Housekeeping of a cache folder: listing, verifying, pruning, clearing, cleaning up.

Automatic pruning never runs inside a save nor while this thread holds a compile lock:
a save only asks for it (:func:`request_prune`), and it runs on a background thread once
the compile lock is released (:func:`wasmcache.locks.after_release`), at most once per
interval across processes (a stamp file and a lock).

Only names in wasmcache's formats (see :mod:`wasmcache.names`) are ever touched; nothing
is followed through a link; a lock file is removed only by whoever holds its lock. Every
folder walked and every file read passes the privacy rule first (:mod:`wasmcache.safefs`),
and a file is removed only if its name still holds the file that was checked.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from wasmcache import entry, legacy, locks, names, safefs
from wasmcache.entry import Corrupt
from wasmcache.errors import CacheError, FileWriteError
from wasmcache.hashing import ModuleHash
from wasmcache.logs import log

#: Temp files older than this (seconds) are left over from an interrupted save or download:
#: a live one is renamed long before (a stalled download fails after its idle timeout).
STALE_TEMP_AGE = 600.0


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
    #: The group ``shared_group`` names (None: the cache folder's own).
    _named_gid: Optional[int] = None
    #: The cache folder's group, taken when a listing checked the folder.
    _listed_group: Optional[int] = None

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

    def described(self) -> list[tuple[CacheEntry, Optional[entry.Info]]]:
        """Every entry with what :meth:`describe` says of it, from one listing."""
        return [
            (_Found(path, name, folder, info, Path(path).parent).entry(), about)
            for path, name, folder, info, about in _described(_checked(self))
        ]

    def summary(self) -> dict[str, Summary]:
        """Per engine folder name: how many entries, their bytes, modules and components,
        their recorded compile seconds and the range of their last uses (one pass; each
        entry described as :meth:`describe` does)."""
        return summarize(self)

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
            if sys.platform == "win32":
                return  # no utime of a descriptor there; NTFS keeps access times itself
            os.utime(fd, (now, info.st_mtime))


class Folders(NamedTuple):
    """A cache's folders, each checked against the privacy rule."""

    cache_dir: str
    shared_group: bool
    group: int  # the cache folder's
    engines: list[os.DirEntry[str]]
    index_dir: Optional[str]  # None: no index folder


def _group(cache: Housekeeping) -> Optional[int]:
    for known in (getattr(cache, "_gid", None), cache._listed_group):
        if isinstance(known, int):
            return known  # the folder's group, taken when it passed the rule
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
    named = cache._named_gid
    info = safefs.folder_info(cache_dir, shared_group=shared, group=named, exact=named is not None)
    if info is None:
        return None
    group = cache._listed_group = info.st_gid
    engines = [
        item
        for item in _scan(cache_dir)
        if names.is_engine_folder(item.name)
        and safefs.check_folder(item.path, shared_group=shared, group=group)
    ]
    index_dir = names.index_folder(cache_dir)
    checked = safefs.check_folder(index_dir, shared_group=shared, group=group)
    return Folders(cache_dir, shared, group, engines, index_dir if checked else None)


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


def _open_unused(path: str) -> int:
    """``path`` opened for reading as :func:`safefs.open_regular` opens it (never through
    a link, never blocking), without updating its access time where the system allows."""
    if _NOATIME:
        try:
            return os.open(path, _UNUSED_FLAGS)
        except PermissionError:
            pass  # not the file's owner: an ordinary open
    return os.open(path, safefs.READ_FLAGS)


def _read_described(
    path: str, shared_group: bool, group: Optional[int]
) -> tuple[Optional[os.stat_result], Optional[entry.Info]]:
    """The fstat of the regular file at ``path`` (None if it cannot be opened, or is not
    one) and its Info (None if it breaks the rule or is damaged); the file opened once."""
    try:
        fd = _open_unused(path)
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
    name, stat and Info, from one pass over the engine folders. A name the folder's
    listing types as anything but a regular file is skipped unopened; each other one is
    opened once, its fstat standing for the lstat a listing takes (the same file, never
    followed); one that cannot be opened is listed as its lstat shows it, undescribed."""
    if folders is None:
        return
    shared, group, is_entry = folders.shared_group, folders.group, names.is_entry
    for folder in folders.engines:
        folder_name = folder.name
        for item in _scan(folder.path):
            name = item.name
            if not is_entry(name):
                continue
            try:
                if not item.is_file(follow_symlinks=False):  # the listing's type: no call
                    continue
            except OSError:
                continue
            path = item.path
            info, about = _read_described(path, shared, group)
            if info is None:
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
            yield path, name, folder_name, info, about


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
