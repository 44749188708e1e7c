"""Checksum passes remembered for the rest of a boot: an entry whose stamp was checked
since the machine started is not read again before it is mapped.

Checking an entry's XXH3-64 reads every byte of it (21 ms for yosys' 210 MiB entry);
mapping it without the check reads only the pages the program touches. An entry is only
ever replaced by a rename (a new inode, a new ctime) and never written in place by
wasmcache, so a file whose stamp ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``
was checked holds the bytes that were checked, unless they changed without the kernel
seeing a write (a failing disk, a raw write to the device, memory errors): that is what
the checksum of every load would still catch, and what this module gives up for the
rest of the boot.

The stamp stands for the bytes only where direct mode trusts stamps (the filesystem type
is on :data:`wasmcache.direct.TRUSTED_FILESYSTEMS`, mounted read-write), and only once it
is :data:`wasmcache.direct.RACY_SECONDS` old before the check began; anywhere else, in a
cache with ``shared_group``, or without a boot id, every load checks the entry as before.
The record, ``<cache>/.checked``, is one file: its first line names the boot
(``/proc/sys/kernel/random/boot_id``), the others are stamps. It is read under the
privacy rule and replaced whole by an atomic rename; a record of another boot, or one
that is damaged, missing or unsafe, means "not checked". Whoever can write it can write
entries too, so it gives nobody a power they did not have.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from wasmcache import _core, direct, entry, names, safefs
from wasmcache.errors import CacheError
from wasmcache.logs import log

#: The most stamps a record keeps (the oldest half goes when it is full).
MAX_STAMPS = 2048
_HEADER = b"wasmcache-checked 1 "
_LIMIT = 128 + MAX_STAMPS * 200  # bytes: a header and MAX_STAMPS lines (stamp and mount)

#: The wall clock in nanoseconds, the clock file timestamps are taken from.
_clock: Callable[[], int] = time.time_ns
_lock = threading.Lock()


def boot_id() -> Optional[bytes]:
    """This boot's id, or None where the system does not say (see :func:`direct.boot_id`)."""
    return direct.boot_id().encode("ascii") or None


def record_path(cache_dir: str) -> str:
    return names.checked_path(cache_dir)


def _line(fd: int, info: os.stat_result, path: str) -> Optional[bytes]:
    """The record's line for the entry open at ``fd`` (``info``: its fstat): its stamp and
    the mount it is on, so a record never outlives that mount; None where its stamp may
    not stand for its bytes (direct mode's rule, :func:`direct.trusted_mount`)."""
    mount = direct.trusted_mount(fd, path, info, None)
    if mount is None:
        return None
    return b"%d %d %d %d %d " % direct.stamp_of(info) + mount.encode("ascii") + b"\n"


def _read(cache_dir: str, boot: bytes) -> Optional[bytes]:
    """The record's stamp lines (each ending in a newline, the first preceded by one), or
    None if there is no record of this boot that passes the rule."""
    text = safefs.read_at_most(record_path(cache_dir), _LIMIT)
    header = _HEADER + boot + b"\n"
    if text is None or not text.startswith(header) or not text.endswith(b"\n"):
        return None
    return text[len(header) - 1 :]


def checked_this_boot(cache_dir: str, fd: int, info: os.stat_result, path: str) -> bool:
    """Whether the entry open at ``fd`` (``info``: its fstat) had its checksum checked
    since the machine started, with the same stamp, on a filesystem whose stamps are
    trusted."""
    boot = boot_id()
    line = _line(fd, info, path) if boot is not None else None
    if boot is None or line is None:
        return False
    lines = _read(cache_dir, boot)
    return lines is not None and b"\n" + line in lines


def remember(cache_dir: str, fd: int, info: os.stat_result, path: str, before_ns: int) -> None:
    """Record that the entry open at ``fd`` passed its checksum check, which began at
    ``before_ns`` (the wall clock): only if its stamp was settled by then and stands for
    its bytes. A failure to write leaves the next load checking again (logged)."""
    if direct.stamp_of(info) != direct.stamp_of(os.fstat(fd)):
        return  # changed while it was read
    if not direct.settled(info, before_ns):
        return
    boot = boot_id()
    line = _line(fd, info, path) if boot is not None else None
    if boot is None or line is None:
        return
    with _lock:
        lines = _read(cache_dir, boot) or b"\n"
        if b"\n" + line in lines:
            return
        kept = lines[1:].splitlines(keepends=True)
        if len(kept) >= MAX_STAMPS:
            kept = kept[len(kept) // 2 :]
        text = _HEADER + boot + b"\n" + b"".join(kept) + line
        target = record_path(cache_dir)
        temp = names.temp_path(target)
        try:
            _core.atomic_write(temp, target, text, b"", mode=0o600)
        except CacheError as exc:
            log.debug("not recording the check of %s: %s", path, exc)
            safefs.unlink_quietly(temp)


def inspect(
    cache_dir: str,
    fd: int,
    info: os.stat_result,
    path: str,
    *,
    verify: bool,
    shared_group: bool = False,
) -> entry.Shape:
    """:func:`wasmcache.entry.inspect` of the entry open at ``fd`` (``info``: its fstat,
    ``path``: its name in ``cache_dir``), with the checksum pass skipped when it was
    already done this boot (see the module's text) and recorded when it is done here.
    ``shared_group`` caches check every time."""
    if not verify:
        return entry.inspect(fd, info.st_size, verify=False)
    if not shared_group and checked_this_boot(cache_dir, fd, info, path):
        shape = entry.inspect(fd, info.st_size, verify=False)
        if shape == "trailer":
            return shape
    before = _clock()
    shape = entry.inspect(fd, info.st_size, verify=True)
    if shape == "trailer" and not shared_group:
        remember(cache_dir, fd, info, path, before)
    return shape
