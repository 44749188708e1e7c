"""Direct mode: the key of a Wasm file from its stamp, so a hit does not read or hash it.

Like git's index and ccache's direct mode, the key of a file is remembered under its stamp
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``, in process memory and as a small
record in ``<cache>/index/``. A stamp stands for the bytes only where the filesystem sets
ctime from the clock on every change and keeps inode numbers unique: a filesystem type on
:data:`TRUSTED_FILESYSTEMS`, mounted read-write. Everywhere else (images, network and FUSE
filesystems, FAT, overlays) the file is read and hashed on every call, unless the cache's
``direct`` setting forces stamps on. A stamp is remembered only if the file's mtime and
ctime were :data:`RACY_SECONDS` old before the read began (git's racy-clean rule) and the
file did not change while it was read. Records are read under the privacy rule; a damaged,
foreign or missing record is a miss, never an error.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
import time
from typing import Callable, Optional

from wasmcache import _core, names, safefs
from wasmcache.errors import CacheError, SourceError, UnsafeCacheError
from wasmcache.hashing import ModuleHash

log = logging.getLogger("wasmcache")

#: A stamp younger than this (seconds) may still change within its timestamp's precision.
RACY_SECONDS = 2.0
#: The environment variable that sets direct mode for caches made without ``direct=``.
ENV_VARIABLE = "WASMCACHE_DIRECT"

#: Filesystem types (statfs ``f_type``) whose stamps are trusted: the kernel sets ctime
#: from its clock on every change of content or metadata (``utime`` cannot set it) and a
#: file keeps its inode number, unique within the mounted filesystem, while it exists.
TRUSTED_FILESYSTEMS: dict[int, str] = {
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
}

_MEMORY_LIMIT = 4096
_RECORD_LIMIT = 256
_RACY_NS = int(RACY_SECONDS * 1e9)
_FD_PATHS = os.path.isdir("/proc/self/fd")
_ST_RDONLY = getattr(os, "ST_RDONLY", 1)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

Stamp = tuple[int, int, int, int, int]

#: The wall clock in nanoseconds, the clock file timestamps are taken from.
_clock: Callable[[], int] = time.time_ns

_memory: dict[tuple[Stamp, str], ModuleHash] = {}
_memory_lock = threading.Lock()


# -- the setting ------------------------------------------------------------------------


def env_setting() -> Optional[bool]:
    """Direct mode as ``WASMCACHE_DIRECT`` sets it: ``1`` on, ``0`` off, ``auto`` or unset
    None (by filesystem type); ValueError for anything else."""
    raw = os.environ.get(ENV_VARIABLE, "")
    value = raw.strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("0", "1"):
        return value == "1"
    raise ValueError(f"{ENV_VARIABLE}={raw!r} is not valid: use 0 (off), 1 (on) or auto")


def setting(direct: object) -> Optional[bool]:
    """A cache's direct-mode setting from its ``direct`` argument: True (stamps always
    trusted), False (every file read and hashed), or None, which defers to
    ``WASMCACHE_DIRECT`` and then to the filesystem type."""
    if direct is None:
        return env_setting()
    if not isinstance(direct, bool):
        raise TypeError(f"direct must be True, False or None, not {type(direct).__name__}")
    return direct


# -- stamps ------------------------------------------------------------------------------


def stamp_of(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _settled(info: os.stat_result, now_ns: int) -> bool:
    """Whether the stamp was at least RACY_SECONDS old at ``now_ns``: a write after that
    moment gets a ctime later than the stamp's, even with coarse timestamps."""
    return now_ns - max(info.st_mtime_ns, info.st_ctime_ns) >= _RACY_NS


def stamps_trusted(fd: int, path: str) -> bool:
    """Whether the filesystem holding the open file ``fd`` (opened from ``path``) keeps
    stamps honest: a type on the allow-list, mounted read-write (a read-only mount is
    typically an image, whose times and inode numbers were chosen when it was built)."""
    where = f"/proc/self/fd/{fd}" if _FD_PATHS else path
    try:
        magic = _core.fs_magic(where)
        read_only = os.fstatvfs(fd).f_flag & _ST_RDONLY
    except (CacheError, OSError) as exc:
        log.debug("cannot tell which filesystem holds %s, reading it: %s", path, exc)
        return False
    return magic in TRUSTED_FILESYSTEMS and not read_only


# -- records -----------------------------------------------------------------------------


def _record_name(stamp: Stamp, algorithm: str) -> str:
    return hashlib.sha256(f"{algorithm}:{stamp}".encode()).hexdigest()


def _record_text(stamp: Stamp, key: ModuleHash) -> bytes:
    return f"wasmcache-direct 1\n{key.algorithm}\n{stamp}\n{key}\n".encode()


class Index:
    """The records of one cache folder, ``<cache>/index/<sha256 of the stamp>``, under
    the privacy rule: the cache and index folders are checked once, as engine folders
    are, before any record is read or written, and each record is opened without
    following links and checked as an entry is. An index folder that breaks the rule is
    not used (one warning); the records then stay in process memory."""

    def __init__(self, cache_dir: str, *, shared_group: bool = False) -> None:
        self.cache_dir = cache_dir
        self.folder = names.index_folder(cache_dir)
        self.shared_group = shared_group
        self._checked = False
        self._refused: Optional[UnsafeCacheError] = None
        self._group: Optional[int] = None  # the cache folder's, with shared_group
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Index({self.folder!r})"

    def usable(self) -> bool:
        """Whether records may be read and written here (both folders pass the rule, or
        do not exist yet and are made private by the first record)."""
        if self._checked:
            return True
        with self._lock:
            if self._refused is not None:
                return False
            folder = self.cache_dir
            try:
                if not safefs.check_folder(folder, shared_group=self.shared_group):
                    return True  # not there yet: made private by the first record
                group = os.lstat(folder).st_gid if self.shared_group else None
                folder = self.folder
                if not safefs.check_folder(folder, shared_group=self.shared_group, group=group):
                    return True
            except OSError:
                return False  # changing meanwhile: memory only, checked again next time
            except UnsafeCacheError as exc:
                if folder == self.folder:
                    log.warning("not using direct-mode records, keeping them in memory: %s", exc)
                self._refused = exc  # the cache folder's own refusal is reported by its loads
                return False
            self._group = group
            self._checked = True
            return True

    def lookup(self, stamp: Stamp, algorithm: str) -> Optional[ModuleHash]:
        """The key recorded for ``stamp``, or None (no record, or one not to be trusted)."""
        if not self._checked:
            return None  # no folders yet, or not checked: nothing to trust
        path = names.index_record_path(self.cache_dir, _record_name(stamp, algorithm))
        text = safefs.read_at_most(
            path, _RECORD_LIMIT, shared_group=self.shared_group, group=self._group
        )
        if text is None:
            return None
        try:
            key = ModuleHash.parse(text.decode("ascii").split("\n")[3])
        except (UnicodeDecodeError, IndexError, ValueError):
            return None
        if key.algorithm != algorithm or text != _record_text(stamp, key):
            return None
        return key

    def remember(self, stamp: Stamp, key: ModuleHash) -> None:
        """Write the record of ``stamp`` (atomically); a read-only or full cache only
        keeps it in memory."""
        path = names.index_record_path(self.cache_dir, _record_name(stamp, key.algorithm))
        temp = names.temp_path(path)
        try:
            if not self._checked:
                self._make_folders()
                if not (self.usable() and self._checked):
                    return
            try:
                _core.atomic_write(temp, path, _record_text(stamp, key), b"")
            except CacheError as exc:
                if getattr(exc, "errno", None) != errno.ENOENT:
                    raise
                self._make_folders()  # removed since it was checked (a clear)
                _core.atomic_write(temp, path, _record_text(stamp, key), b"")
        except (CacheError, OSError) as exc:
            log.debug("direct-mode record for %s kept in memory only: %s", key, exc)
            safefs.unlink_quietly(temp)

    def _make_folders(self) -> None:
        safefs.make_folders(self.cache_dir, self.folder, shared_group=self.shared_group)


def _lookup(index: Optional[Index], stamp: Stamp, algorithm: str) -> Optional[ModuleHash]:
    with _memory_lock:
        key = _memory.get((stamp, algorithm))
    if key is not None or index is None:
        return key
    key = index.lookup(stamp, algorithm)
    if key is not None:
        _remember_in_memory(stamp, key)
    return key


def _remember_in_memory(stamp: Stamp, key: ModuleHash) -> None:
    with _memory_lock:
        if len(_memory) >= _MEMORY_LIMIT:
            _memory.clear()
        _memory[(stamp, key.algorithm)] = key


def _remember(index: Optional[Index], stamp: Stamp, key: ModuleHash) -> None:
    _remember_in_memory(stamp, key)
    if index is not None:
        index.remember(stamp, key)


# -- reading -----------------------------------------------------------------------------


def hash_bytes(data: bytes, algorithm: str) -> ModuleHash:
    return ModuleHash.of(algorithm, data)


def _source_error(path: str, exc: OSError) -> SourceError:
    return SourceError(f"cannot read the Wasm file {path}: {exc.strerror or exc}", path, exc.errno)


def read_source(path: str, fd: Optional[int] = None) -> tuple[bytes, Optional[os.stat_result]]:
    """The bytes of the Wasm file at ``path`` (read from ``fd`` when it is open already)
    and its fstat (None if it changed while it was read, or is not a regular file);
    SourceError names the path."""
    try:
        with open(path, "rb") if fd is None else open(fd, "rb", closefd=False) as f:
            before = os.fstat(f.fileno())
            if stat.S_ISDIR(before.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            data = f.read()
            after = os.fstat(f.fileno())
    except OSError as exc:
        raise _source_error(path, exc) from exc
    unchanged = stat.S_ISREG(after.st_mode) and stamp_of(before) == stamp_of(after)
    return data, (after if unchanged else None)


def key_of_file(
    path: str,
    algorithm: str,
    index: Optional[Index] = None,
    *,
    direct: Optional[bool] = None,
) -> tuple[ModuleHash, Optional[bytes]]:
    """The key of the Wasm file at ``path`` and, if it had to be read, its bytes (None
    when the key came from its stamp). ``index`` holds the on-disk records (None: process
    memory only). ``direct``: True trusts stamps on any filesystem, False reads and hashes
    every time, None trusts them on :data:`TRUSTED_FILESYSTEMS` only."""
    if direct is False:
        data, _ = read_source(path)
        return hash_bytes(data, algorithm), data
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            data, _ = read_source(path)  # a pipe or device: read as it comes, never stamped
            return hash_bytes(data, algorithm), data
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _source_error(path, exc) from exc
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise _source_error(path, exc) from exc
        if stat.S_ISREG(info.st_mode):
            os.set_blocking(fd, True)  # opened without blocking in case it was swapped for a FIFO
        trusted = stat.S_ISREG(info.st_mode) and (direct is True or stamps_trusted(fd, path))
        if trusted and _settled(info, _clock()):
            key = _lookup(index, stamp_of(info), algorithm)
            if key is not None:
                return key, None
        before = _clock()  # taken before the read: see _settled
        data, read_info = read_source(path, fd)
    finally:
        os.close(fd)
    key = hash_bytes(data, algorithm)
    if trusted and read_info is not None and _settled(read_info, before):
        _remember(index, stamp_of(read_info), key)
    return key, data
