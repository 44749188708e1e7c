"""Locks that make concurrent misses of one key compile it once, across threads and
processes. File locks are advisory (flock), released by the OS when the holder dies, so a
crashed process never blocks anyone. A lock file is only ever unlinked by a process that
holds its flock, and a process that takes a lock checks that the path still names the
file it locked, so a lock stays a lock while files are removed around it. The holder of a
compile lock removes its file when it releases it (still holding the flock), so a key's
lock file exists only while someone compiles it.

On Windows the lock is LockFileEx's exclusive lock of the file's first byte (the lock files
are empty), also released by the OS when its holder dies; msvcrt.locking is not used,
since its blocking form gives up after ten seconds. Lock files are opened with delete
sharing there, so the holder can unlink one that others wait on.

Work that must not run while this thread holds a compile lock (housekeeping) is handed
to :func:`after_release`: it runs at once when no compile lock is held, else as soon as
the last one is released."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Callable, Optional

from wasmcache.errors import UnsafeCacheError
from wasmcache.logs import log
from wasmcache.safefs import open_lock, same_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

if sys.platform == "win32":
    from wasmcache import winsec
#: Whether this platform has file locks (flock, or LockFileEx on Windows).
_FILE_LOCKS = fcntl is not None or sys.platform == "win32"


#: Times a lock is taken again because its file was replaced while waiting for it.
_ATTEMPTS = 100


class _Held(threading.local):
    """How many compile locks this thread holds, and what waits for their release."""

    depth = 0
    waiting: Optional[list[Callable[[], None]]] = None


_held = _Held()


def held() -> int:
    """How many compile locks (:func:`thread_lock` locks) this thread holds now."""
    return _held.depth


def after_release(work: Callable[[], None]) -> None:
    """Run ``work`` now if this thread holds no compile lock, else right after it releases
    the last one. ``work`` must be quick (it hands anything slow to another thread)."""
    if _held.depth == 0:
        work()
        return
    if _held.waiting is None:
        _held.waiting = []
    _held.waiting.append(work)


class NamedLock:
    """A lock shared by everyone who asks :func:`thread_lock` for the same name; holding
    it counts as holding a compile lock (:func:`held`)."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> NamedLock:
        self._lock.acquire()
        _held.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        _held.depth -= 1
        if _held.depth == 0 and _held.waiting:
            waiting, _held.waiting = _held.waiting, None
            for work in waiting:
                try:
                    work()
                except Exception:  # never let deferred work break the release
                    log.exception("deferred work after a compile lock failed")


_named: weakref.WeakValueDictionary[str, NamedLock] = weakref.WeakValueDictionary()
_named_guard = threading.Lock()
_flock_warned = False


def thread_lock(name: str) -> NamedLock:
    """The lock of ``name`` in this process: equal names share one lock, different names
    never do (so locks taken in a fixed order cannot deadlock). It lives while in use."""
    with _named_guard:
        lock = _named.get(name)
        if lock is None:
            lock = _named[name] = NamedLock()
        return lock


def _flock_unsupported(path: str, exc: OSError) -> None:
    global _flock_warned
    if not _flock_warned:
        _flock_warned = True
        log.warning(
            "file locks do not work at %s (%s): only threads of this process are kept from "
            "compiling the same module twice",
            path,
            exc.strerror,
        )


def _open(path: str, *, create: bool, shared_group: bool, group: Optional[int]) -> Optional[int]:
    try:
        return open_lock(path, create=create, shared_group=shared_group, group=group)
    except UnsafeCacheError as exc:
        log.warning("not using lock file %s: %s", path, exc)
        return None
    except OSError:
        return None  # no folder, read-only cache, or a planted link: no file lock


def _lock(fd: int, *, block: bool) -> None:
    """Take the exclusive lock of ``fd``; BlockingIOError if another holds it and
    ``block`` is False, another OSError if the file cannot be locked."""
    if sys.platform == "win32":
        if not winsec.lock(fd, block=block):
            raise BlockingIOError(11, "held by another process")
        return
    assert fcntl is not None
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))


def _close(fd: int) -> None:
    """Close a lock file's fd, which releases its lock (on Windows released first:
    Windows frees the locks of a closed handle only when it gets to it)."""
    if sys.platform == "win32":
        with contextlib.suppress(OSError):  # not locked by this fd
            winsec.unlock(fd)
    os.close(fd)


def _locked_fd(
    path: str, *, block: bool, shared_group: bool, group: Optional[int]
) -> Optional[int]:
    """An fd of ``path`` holding its exclusive flock, or None if the lock cannot be had
    (held by another, with ``block`` False; or no lock file possible)."""
    for _ in range(_ATTEMPTS):
        fd = _open(path, create=True, shared_group=shared_group, group=group)
        if fd is None:
            return None
        try:
            _lock(fd, block=block)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            _flock_unsupported(path, exc)
            return None
        if same_file(path, os.fstat(fd)):
            return fd
        _close(fd)  # removed or replaced while we waited: lock the file there now
    log.warning("%s keeps changing while it is locked: not locking it", path)
    return None


@contextlib.contextmanager
def file_lock(
    path: str,
    *,
    shared_group: bool = False,
    group: Optional[int] = None,
    remove: bool = False,
) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block; yields
    whether a file lock is held (False: a read-only cache, or no flock here). With
    ``shared_group``, members of ``group`` (the cache folder's) share the lock file.
    With ``remove`` the file is unlinked on release, while its flock is still held and
    only if the path still names it: a waiter blocked on it then finds it gone and locks
    the file at the path instead (see :func:`_locked_fd`)."""
    fd = (
        _locked_fd(path, block=True, shared_group=shared_group, group=group)
        if _FILE_LOCKS
        else None
    )
    try:
        yield fd is not None
    finally:
        if fd is not None:
            if remove:
                _unlink_held(path, fd)
            _close(fd)  # closing releases the lock


def _unlink_held(path: str, fd: int) -> None:
    """Unlink the lock file ``path`` whose flock ``fd`` holds, if the path still names it."""
    try:
        if same_file(path, os.fstat(fd)):
            os.unlink(path)
    except OSError:
        pass  # a read-only folder, or removed meanwhile: the file stays a lock


@contextlib.contextmanager
def try_file_lock(
    path: str,
    *,
    shared_group: bool = False,
    group: Optional[int] = None,
    remove: bool = False,
) -> Iterator[bool]:
    """Take an exclusive flock on ``path`` if nobody holds it; yields whether it did.
    ``remove`` as for :func:`file_lock`."""
    if not _FILE_LOCKS:
        yield True
        return
    fd = _locked_fd(path, block=False, shared_group=shared_group, group=group)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            if remove:
                _unlink_held(path, fd)
            _close(fd)


def remove_if_free(path: str, *, shared_group: bool = False, group: Optional[int] = None) -> bool:
    """Unlink the lock file ``path`` if nobody holds it (taking its lock first); return
    whether it was removed. A file that breaks the rule is not a lock: left alone."""
    if not _FILE_LOCKS:
        return False
    fd = _open(path, create=False, shared_group=shared_group, group=group)
    if fd is None:
        return False
    try:
        try:
            _lock(fd, block=False)
        except OSError:
            return False
        if not same_file(path, os.fstat(fd)):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        _close(fd)
