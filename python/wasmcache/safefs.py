"""Opening and checking files in a cache folder: never through a link, never blocking on
a FIFO, and only what the user (or root) could have put there.

The rule for a private cache: the cache folder and each engine folder is a real folder
(not a link) owned by the user or root and not writable by group or others; an entry is a
regular file owned by the user or root, not writable by group or others, with one link.
With ``shared_group`` group write is allowed (others' never): everyone in the folder's
group can then put native code into every member's processes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from typing import Callable, Optional

from wasmcache import _core, names
from wasmcache.errors import FileReadError, FileWriteError, UnsafeCacheError, UnsafeEntryError

log = logging.getLogger("wasmcache")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: Flags of every read of a file in a cache folder.
READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
#: Flags of every file wasmcache creates there (a name that exists is never opened).
CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
#: Flags of lock files (created if missing, shared by every process, never a link).
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a regular file"


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open an existing regular file for reading. FileNotFoundError if nothing is there;
    FileReadError at once for a link, FIFO, device, socket or folder."""
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileReadError(f"{path} is a symbolic link", path, exc.errno) from exc
        raise FileReadError(f"cannot open {path}: {exc.strerror}", path, exc.errno) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileReadError(f"{path} is {_kind(info.st_mode)}, not a cache file", path)
    return fd, info


def _owner_ok(info: os.stat_result) -> bool:
    return info.st_uid in (os.geteuid(), 0)


def _forbidden_bits(shared_group: bool) -> int:
    return stat.S_IWOTH if shared_group else stat.S_IWGRP | stat.S_IWOTH


def check_folder(path: str, *, shared_group: bool = False) -> bool:
    """Check a cache or engine folder against the rule; False if there is no folder there
    (nothing yet, or a file in the way: using it fails as any write would), and
    UnsafeCacheError (naming path, reason and fix) if it breaks the rule."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UnsafeCacheError(f"cannot check {path}: {exc.strerror}", path, exc.errno) from exc
    if stat.S_ISLNK(info.st_mode):
        reason, fix = "is a symbolic link", f"replace it by a real folder: rm {path}"
    elif not stat.S_ISDIR(info.st_mode):
        return False
    elif not _owner_ok(info):
        reason = f"is owned by uid {info.st_uid}, not by this user or root"
        fix = f"use a folder of your own, or remove it: rm -r {path}"
    elif info.st_mode & _forbidden_bits(shared_group):
        reason = f"is writable by {'others' if shared_group else 'group or others'}"
        fix = f"chmod {'770' if shared_group else '700'} {path}"
    else:
        return True
    raise UnsafeCacheError(
        f"refusing cache folder {path}: it {reason}; anyone who can write it could run code "
        f"in this process. Fix: {fix}",
        path,
    )


def check_entry(path: str, info: os.stat_result, *, shared_group: bool = False) -> None:
    """Check an open entry (its fstat) against the rule; UnsafeCacheError if it breaks it."""
    if not _owner_ok(info):
        reason = f"is owned by uid {info.st_uid}, not by this user or root"
    elif info.st_nlink != 1:
        reason = f"has {info.st_nlink} links (another name could change it)"
    elif info.st_mode & _forbidden_bits(shared_group):
        reason = "is writable by group or others"
    else:
        return
    raise UnsafeEntryError(
        f"refusing cache entry {path}: it {reason}. Fix: remove it (rm {path}) or run "
        "`wasmcache verify --fix`",
        path,
    )


def make_folders(cache_dir: str, engine_dir: Optional[str], *, shared_group: bool) -> None:
    """Create the cache folder and an engine folder (0700, or 0770 when shared) when
    missing; an existing one must be a real folder."""
    mode = 0o770 if shared_group else 0o700
    os.makedirs(cache_dir, mode=mode, exist_ok=True)
    if engine_dir is None:
        return
    try:
        os.mkdir(engine_dir, mode)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(engine_dir).st_mode):
            raise


def same_file(path: str, opened: os.stat_result) -> bool:
    """Whether ``path`` (not followed) still names the file that was opened."""
    try:
        current = os.lstat(path)
    except OSError:
        return False
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def discard(path: str, opened: os.stat_result) -> None:
    """Remove a corrupt file, unless another writer has replaced it meanwhile."""
    if same_file(path, opened):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove corrupt cache entry %s: %s", path, exc)


def write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def read_at_most(path: str, limit: int) -> Optional[bytes]:
    """The whole of a small regular file (never a link or FIFO), or None if it is missing,
    unreadable or longer than ``limit``."""
    try:
        fd, info = open_regular(path)
    except (OSError, FileReadError):
        return None
    try:
        if info.st_size > limit:
            return None
        return os.pread(fd, limit + 1, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


#: Attempts at creating a file whose folder a concurrent prune may remove meanwhile.
CREATE_ATTEMPTS = 8


def create_temp(path: str, make_folder: Callable[[str], None]) -> tuple[str, int]:
    """A new temp file beside ``path``, open for writing: its folder is made with
    ``make_folder`` when missing (again if a concurrent prune removes it meanwhile)."""
    for attempt in range(CREATE_ATTEMPTS):
        temp = names.temp_path(path)
        try:
            return temp, os.open(temp, CREATE_FLAGS, 0o644)
        except FileExistsError:
            continue
        except FileNotFoundError as exc:
            if attempt == CREATE_ATTEMPTS - 1:
                raise FileWriteError(f"cannot write {path}: {exc.strerror}", path) from exc
            with contextlib.suppress(FileNotFoundError):
                make_folder(os.path.dirname(path))
        except OSError as exc:
            raise FileWriteError(f"cannot write {path}: {exc.strerror}", path, exc.errno) from exc
    raise FileWriteError(f"cannot write {path}: no free temp name", path, errno.EEXIST)


def write_file(
    path: str,
    payload: _core.Buffer,
    trailer: bytes,
    make_folder: Callable[[str], None],
    *,
    fsync: bool,
) -> None:
    """Write payload + trailer to ``path`` atomically (temp file + rename), its folder made
    with ``make_folder`` when missing (again if a concurrent prune removes it meanwhile)."""
    for attempt in range(CREATE_ATTEMPTS):
        last = attempt == CREATE_ATTEMPTS - 1
        try:
            _core.atomic_write(names.temp_path(path), path, payload, trailer, fsync=fsync)
            return
        except FileWriteError as exc:
            if last or exc.errno not in (errno.EEXIST, errno.ENOENT):
                raise
            if exc.errno == errno.EEXIST:
                continue
        try:
            make_folder(os.path.dirname(path))
        except FileNotFoundError:
            continue  # pruned again meanwhile
        except OSError as exc:
            raise FileWriteError(
                f"cannot create the folder of {path}: {exc.strerror}", path, exc.errno
            ) from exc
