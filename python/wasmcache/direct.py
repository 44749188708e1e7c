"""Direct mode: the key of a Wasm file from its stamp, so a hit does not read or hash it.

Like git's index and ccache's direct mode, the key of a file is remembered under its stamp
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` and the mount holding it (this
boot's id and the mount's unique id), in process memory and as a small line in
``<cache>/index/records``. So a record never outlives the mount it was made on: another
filesystem mounted later in its place, even from the same device with the same stamps,
is never taken for it. A stamp stands for the bytes only where the filesystem sets
ctime from the clock on every change and keeps inode numbers unique: a filesystem type on
:data:`TRUSTED_FILESYSTEMS`, mounted read-write, and, where the kernel gives no unique
mount id (before Linux 6.8), not on a loop or network block device, whose content can be
swapped under one device number. Everywhere else (images, network and FUSE filesystems,
FAT, overlays) the file is read and hashed on every call, unless the cache's ``direct``
setting forces stamps on. A file that is not a regular file once opened (a FIFO swapped
in) is read as a stream and never stamped. A stamp is remembered only if the file's mtime and
ctime were :data:`RACY_SECONDS` old before the read began (git's racy-clean rule) and the
file did not change while it was read. Records are read under the privacy rule; a damaged,
foreign or missing record is a miss, never an error.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from typing import Any, Callable, Optional

from wasmcache import _core, names, safefs
from wasmcache.errors import CacheError, SourceError, UnsafeCacheError
from wasmcache.hashing import ModuleHash
from wasmcache.logs import log

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
_RACY_NS = int(RACY_SECONDS * 1e9)
_FD_PATHS = sys.platform != "win32" and os.path.isdir("/proc/self/fd")
_ST_RDONLY = getattr(os, "ST_RDONLY", 1)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

Stamp = tuple[int, int, int, int, int]
#: A stamp and the mount it was taken on (see :func:`mount_of`): what records are keyed by.
Mark = tuple[Stamp, str]

#: Where Linux says which boot this is.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
#: Block device majors whose content can change under one device number while no unique
#: mount id tells the mounts apart: loop devices and network block devices.
REATTACHABLE_MAJORS = {7: "loop", 43: "nbd"}

#: The wall clock in nanoseconds, the clock file timestamps are taken from.
_clock: Callable[[], int] = time.time_ns

_memory: dict[tuple[Mark, str], ModuleHash] = {}
_boot: Optional[str] = None
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


def settled(info: os.stat_result, now_ns: int) -> bool:
    """Whether the stamp was at least RACY_SECONDS old at ``now_ns``: a write after that
    moment gets a ctime later than the stamp's, even with coarse timestamps."""
    return now_ns - max(info.st_mtime_ns, info.st_ctime_ns) >= _RACY_NS


def boot_id() -> str:
    """This boot's id, read once per process ("" where the system does not say)."""
    global _boot
    if _boot is None:
        try:
            with open(BOOT_ID_PATH, "rb") as f:
                text = f.read(128).strip()
        except OSError:
            text = b""
        valid = 0 < len(text) <= 64 and all(c in b"0123456789abcdef-" for c in text)
        _boot = text.decode("ascii") if valid else ""
    return _boot


def _major(device: int) -> int:
    """The major number of a device (-1 where the OS has none: Windows' volume serials)."""
    return os.major(device) if hasattr(os, "major") else -1


def mount_of(fd: int, info: os.stat_result) -> Optional[str]:
    """What ties a stamp of the open file ``fd`` (``info``: its fstat) to the mount it
    was taken on: this boot's id and the mount's id, unique until reboot where the kernel
    gives one (Linux 6.8 and later). Without one, a mount id is reused after an unmount,
    so a loop or network block device (:data:`REATTACHABLE_MAJORS`), which can show another
    filesystem under the same device number and stamps, gives None: its stamps are not
    to be trusted."""
    try:
        found = _core.mount_id(fd)
    except CacheError:
        found = None
    if found is not None and found[1]:
        return f"{boot_id()} {found[0]}"
    if _major(info.st_dev) in REATTACHABLE_MAJORS:
        return None
    return f"{boot_id()} {'-' if found is None else found[0]}r"


def _honest(fd: int, path: str) -> bool:
    """Whether the filesystem type holding ``fd`` is on the allow-list, mounted
    read-write."""
    if sys.platform == "win32":
        return False  # no filesystem type to go by: stamps only when direct is forced on
    where = f"/proc/self/fd/{fd}" if _FD_PATHS else path
    try:
        magic = _core.fs_magic(where)
        if magic is None:  # not Linux: no filesystem type to check against the list
            return False
        read_only = os.fstatvfs(fd).f_flag & _ST_RDONLY
    except (CacheError, OSError) as exc:
        log.debug("cannot tell which filesystem holds %s, reading it: %s", path, exc)
        return False
    return magic in TRUSTED_FILESYSTEMS and not read_only


def trusted_mount(
    fd: int, path: str, info: os.stat_result, direct: Optional[bool]
) -> Optional[str]:
    """The mount part of the stamp of the open regular file ``fd`` (from ``path``;
    ``info``: its fstat) if its stamp may stand for its bytes, else None. ``direct``
    True trusts any filesystem; None asks :func:`stamps_trusted`'s questions."""
    if direct is not True and not _honest(fd, path):
        return None
    mount = mount_of(fd, info)
    if mount is None and direct is True:
        return f"{boot_id()} -r"  # forced on: trusted whatever the device
    if mount is None:
        log.debug("not trusting the stamp of %s: a %s device without unique mount ids", path,
                  REATTACHABLE_MAJORS[_major(info.st_dev)])  # fmt: skip
    return mount


def stamps_trusted(fd: int, path: str) -> bool:
    """Whether the filesystem holding the open file ``fd`` (opened from ``path``) keeps
    stamps honest: a type on the allow-list, mounted read-write (a read-only mount is
    typically an image, whose times and inode numbers were chosen when it was built),
    and not on a loop or network block device unless the kernel tells its mounts apart
    (:func:`mount_of`)."""
    try:
        return trusted_mount(fd, path, os.fstat(fd), None) is not None
    except OSError:
        return False


# -- records ---------------------------------------------------------------------------

#: The index log is compacted (its older half dropped) before it grows past this.
LOG_LIMIT = 1 << 20
#: A line of the index log: the stamp's digest, the key's algorithm, the key's digest.
_HEX = b"0123456789abcdef"
_sha256: Optional[Callable[[bytes], Any]] = None


def _sha256_function() -> Callable[[bytes], Any]:
    """SHA-256 as the interpreter has it built in (``_sha2``; ``_sha256`` before Python
    3.12): the digests of ``hashlib.sha256``, without the import of OpenSSL that
    ``hashlib`` costs at every start; ``hashlib``'s where the interpreter has none."""
    global _sha256
    if _sha256 is None:
        for name in ("_sha2", "_sha256"):
            try:
                _sha256 = __import__(name).sha256
                break
            except (ImportError, AttributeError):
                continue
        else:
            import hashlib

            _sha256 = hashlib.sha256
    return _sha256


def _record_name(stamp: Mark, algorithm: str) -> str:
    """The SHA-256 of a stamp with its mount and the algorithm it is keyed with,
    lowercase hex."""
    (dev, ino, size, mtime, ctime), mount = stamp
    text = f"{algorithm}:{dev} {ino} {size} {mtime} {ctime} {mount}"
    digest: str = _sha256_function()(text.encode()).hexdigest()
    return digest


def _record_line(stamp: Mark, key: ModuleHash) -> bytes:
    return f"{_record_name(stamp, key.algorithm)} {key.algorithm} {key.digest.hex()}\n".encode()


def _find(log: bytes, digest: bytes, algorithm: str) -> Optional[ModuleHash]:
    """The key of the last whole, well-formed line of ``log`` for ``digest`` (a line is
    ``<64 hex> <algorithm: 1-16 of a-z0-9> <key: 16-128 hex>``, lowercase)."""
    end = len(log)
    name = algorithm.encode()
    while True:
        at = log.rfind(digest, 0, end)
        if at < 0:
            return None
        end = at
        if at > 0 and log[at - 1 : at] != b"\n":
            continue  # inside another line
        stop = log.find(b"\n", at)
        fields = log[at:stop].split(b" ") if stop >= 0 else []
        if len(fields) != 3 or fields[1] != name:
            continue
        found, _, key = fields
        if (
            len(found) == 64 and not found.strip(_HEX)
            and 16 <= len(key) <= 128 and len(key) % 2 == 0 and not key.strip(_HEX)
        ):  # fmt: skip
            try:
                return ModuleHash(algorithm, bytes.fromhex(key.decode()))
            except ValueError:
                continue  # a key of the wrong length for its algorithm


class Index:
    """The records of one cache folder: one append-only log, ``<cache>/index/records``,
    a line per stamp (``<sha256 of algorithm and stamp> <algorithm> <key>``), bounded by
    :data:`LOG_LIMIT` (compacted to its newer half, by a rename, before it would pass it).
    Under the privacy rule: the cache and index folders are checked once, as engine
    folders are, before the log is read or written, and the log is opened without
    following links and checked as an entry is before a byte of it is trusted. An index
    folder that breaks the rule is not used (one warning); the records then stay in
    process memory. A log that breaks the rule is not read, and the next record replaces
    it. A damaged line is skipped; a record lost to a race is a miss, never an error."""

    def __init__(self, cache_dir: str, *, shared_group: bool = False) -> None:
        self.cache_dir = cache_dir
        self.folder = names.index_folder(cache_dir)
        self.path = names.index_log_path(cache_dir)
        self.shared_group = shared_group
        self._checked = False
        self._refused: Optional[UnsafeCacheError] = None
        self._group: Optional[int] = None  # the cache folder's, with shared_group
        #: The group the cache folder must belong to, when the cache's ``shared_group``
        #: names one.
        self.named_group: Optional[int] = None
        self._lock = threading.Lock()
        self._seen: tuple[tuple[int, int, int, int], bytes] = ((0, 0, 0, 0), b"")

    def __repr__(self) -> str:
        return f"Index({self.folder!r})"

    @property
    def _mode(self) -> int:
        """The log's mode: private, or read-write for the group (whose members append)."""
        return 0o660 if self.shared_group else 0o600

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
                named = self.named_group
                if not safefs.check_folder(
                    folder, shared_group=self.shared_group, group=named, exact=named is not None
                ):
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

    def _read(self) -> Optional[bytes]:
        """The whole log if it passes the rule and is within twice :data:`LOG_LIMIT`."""
        try:
            fd, info = safefs.open_regular(self.path)
        except (OSError, CacheError):
            return None
        try:
            safefs.check_entry(
                self.path, info, shared_group=self.shared_group, group=self._group,
                what="direct-mode index", fd=fd,
            )  # fmt: skip
            if info.st_size > 2 * LOG_LIMIT:
                return None
            seen = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            with self._lock:
                if self._seen[0] == seen:
                    return self._seen[1]
            data = safefs.pread(fd, info.st_size, 0)
            if len(data) == info.st_size:
                with self._lock:
                    self._seen = (seen, data)
            return data
        except (OSError, CacheError):
            return None
        finally:
            os.close(fd)

    def lookup(self, stamp: Mark, algorithm: str) -> Optional[ModuleHash]:
        """The key recorded for ``stamp``, or None (no record, or none to be trusted)."""
        if not self._checked:
            return None  # no folders yet, or not checked: nothing to trust
        data = self._read()
        if data is None:
            return None
        return _find(data, _record_name(stamp, algorithm).encode(), algorithm)

    def remember(self, stamp: Mark, key: ModuleHash) -> None:
        """Append the record of ``stamp`` to the log (compacting or replacing it first
        when it is full or breaks the rule); a read-only or full cache only keeps it in
        memory."""
        line = _record_line(stamp, key)
        try:
            if not self._checked:
                self._make_folders()
                if not (self.usable() and self._checked):
                    return
            self._append(line)
        except (CacheError, OSError) as exc:
            log.debug("direct-mode record for %s kept in memory only: %s", key, exc)

    def _append(self, line: bytes) -> None:
        try:
            fd = os.open(self.path, _APPEND_FLAGS)
        except FileNotFoundError:
            self._rewrite(b"", line)
            return
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EACCES, errno.ENXIO):
                raise
            self._rewrite(b"", line)  # a link, or not ours to write: replaced
            return
        kept: Optional[bytes] = None  # set: the log is to be replaced (by kept + line)
        try:
            info = os.fstat(fd)
            try:
                safefs.check_entry(
                    self.path, info, shared_group=self.shared_group, group=self._group,
                    what="direct-mode index", fd=fd,
                )  # fmt: skip
            except CacheError:
                kept = b""
            else:
                if info.st_size + len(line) > LOG_LIMIT:
                    kept = safefs.pread(fd, LOG_LIMIT, max(0, info.st_size - LOG_LIMIT // 2))
                else:
                    os.write(fd, line)  # O_APPEND: one write, never interleaved with another
        finally:
            os.close(fd)
        if kept is not None:  # replaced once closed: Windows cannot replace an open file
            self._rewrite(kept, line)

    def _rewrite(self, kept: bytes, line: bytes) -> None:
        """Replace the log by the whole lines of ``kept`` (the newer part of the old one)
        and ``line``, through a temp file made with the log's mode before its first byte."""
        if kept:
            start = kept.find(b"\n") + 1 if not kept.startswith(b"\n") else 1
            kept = kept[start : kept.rfind(b"\n") + 1]
        temp = names.temp_path(self.path)
        try:
            _core.atomic_write(temp, self.path, kept + line, b"", mode=self._mode)
        except CacheError as exc:
            safefs.unlink_quietly(temp)
            if getattr(exc, "errno", None) != errno.ENOENT:
                raise
            self._make_folders()  # removed since it was checked (a clear)
            _core.atomic_write(temp, self.path, line, b"", mode=self._mode)

    def _make_folders(self) -> None:
        safefs.make_folders(
            self.cache_dir, self.folder, shared_group=self.shared_group, group=self.named_group
        )


_APPEND_FLAGS = (
    os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)  # fmt: skip


def _lookup(index: Optional[Index], stamp: Mark, algorithm: str) -> Optional[ModuleHash]:
    with _memory_lock:
        key = _memory.get((stamp, algorithm))
    if key is not None or index is None:
        return key
    key = index.lookup(stamp, algorithm)
    if key is not None:
        _remember_in_memory(stamp, key)
    return key


def _remember_in_memory(stamp: Mark, key: ModuleHash) -> None:
    with _memory_lock:
        if len(_memory) >= _MEMORY_LIMIT:
            _memory.clear()
        _memory[(stamp, key.algorithm)] = key


def _remember(index: Optional[Index], stamp: Mark, key: ModuleHash) -> None:
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
    if data is None:  # a descriptor that does not block had nothing to give
        raise SourceError(f"cannot read the Wasm file {path}: no data yet", path, errno.EAGAIN)
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
        info = os.fstat(fd)
        # Opened without blocking in case it was swapped for a FIFO: whatever it turned out
        # to be, it is read blocking, as a pipe is (a FIFO is never stamped).
        if sys.platform != "win32":  # files never block there
            os.set_blocking(fd, True)
        mount = None
        if stat.S_ISREG(info.st_mode):
            mount = trusted_mount(fd, path, info, direct)
        if mount is not None and settled(info, _clock()):
            key = _lookup(index, (stamp_of(info), mount), algorithm)
            if key is not None:
                return key, None
        before = _clock()  # taken before the read: see settled
        data, read_info = read_source(path, fd)
    except OSError as exc:
        raise _source_error(path, exc) from exc
    finally:
        os.close(fd)
    key = hash_bytes(data, algorithm)
    if mount is not None and read_info is not None and settled(read_info, before):
        _remember(index, (stamp_of(read_info), mount), key)
    return key, data
