"""Locks that make concurrent misses of one key compile it once, across threads and
processes. File locks are advisory (flock) and released by the OS when the holder dies,
so a crashed process never blocks anyone."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class NamedLock:
    """A lock shared by everyone who asks :func:`thread_lock` for the same name."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> NamedLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_named: weakref.WeakValueDictionary[str, NamedLock] = weakref.WeakValueDictionary()
_named_guard = threading.Lock()


def thread_lock(name: str) -> NamedLock:
    """The lock of ``name`` in this process: equal names share one lock, different names
    never do (so locks taken in a fixed order cannot deadlock). It lives while in use."""
    with _named_guard:
        lock = _named.get(name)
        if lock is None:
            lock = _named[name] = NamedLock()
        return lock


def _open_lock_file(path: str) -> Optional[int]:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[Optional[int]]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block. Yields None
    without locking when the file cannot be created (a read-only cache still works)."""
    fd = _open_lock_file(path) if fcntl is not None else None
    if fd is None:
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def try_file_lock(path: str) -> Iterator[bool]:
    """Take an exclusive flock on ``path`` if nobody holds it; yields whether it did."""
    if fcntl is None:
        yield True
        return
    fd = _open_lock_file(path)
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
