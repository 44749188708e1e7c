"""Locks that make concurrent misses of one key compile it once, across threads and
processes. File locks are advisory (flock) and released by the OS when the holder dies,
so a crashed process never blocks anyone."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_STRIPES = [threading.Lock() for _ in range(64)]


def thread_lock(name: str) -> threading.Lock:
    """One of a fixed pool of locks, chosen by name: equal names share a lock."""
    return _STRIPES[hash(name) % len(_STRIPES)]


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[Optional[int]]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block. Yields None
    without locking when the file cannot be created (a read-only cache still works)."""
    if fcntl is None:
        yield None
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
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
