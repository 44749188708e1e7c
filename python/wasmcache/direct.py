"""Direct mode: the key of a Wasm file from its stamp, so a hit does not read or hash it.

Like git's index and ccache's direct mode, the key of a file is remembered under its stamp
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``, in process memory and as a small
record in the cache folder. Rewriting a file changes its ctime even when its size and
mtime are restored, so the stamp changes. A stamp is only remembered once the file's
mtime and ctime are a little in the past (the racy-git rule), and only if the file did
not change while it was read. A damaged or missing record is a miss, never an error.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from typing import Optional

from wasmcache import _core, names
from wasmcache.errors import CacheError, SourceError
from wasmcache.hashing import ModuleHash
from wasmcache.safefs import read_at_most, unlink_quietly

#: A stamp younger than this (seconds) may still change within its timestamp's precision.
RACY_SECONDS = 2.0
_MEMORY_LIMIT = 4096
_RECORD_LIMIT = 256

Stamp = tuple[int, int, int, int, int]

_memory: dict[tuple[Stamp, str], ModuleHash] = {}
_memory_lock = threading.Lock()


def stamp_of(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _trusted(info: os.stat_result) -> bool:
    newest = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
    return stat.S_ISREG(info.st_mode) and time.time() - newest >= RACY_SECONDS


def _record_name(stamp: Stamp, algorithm: str) -> str:
    return hashlib.sha256(f"{algorithm}:{stamp}".encode()).hexdigest()


def _record_text(stamp: Stamp, key: ModuleHash) -> bytes:
    return f"wasmcache-direct 1\n{key.algorithm}\n{stamp}\n{key}\n".encode()


def _lookup(index_root: Optional[str], stamp: Stamp, algorithm: str) -> Optional[ModuleHash]:
    with _memory_lock:
        key = _memory.get((stamp, algorithm))
    if key is not None or index_root is None:
        return key
    path = names.index_record_path(index_root, _record_name(stamp, algorithm))
    text = read_at_most(path, _RECORD_LIMIT)
    if text is None:
        return None
    try:
        parts = text.decode("ascii").split("\n")
        key = ModuleHash.parse(parts[3])
    except (UnicodeDecodeError, IndexError, ValueError):
        return None
    if key.algorithm != algorithm or text != _record_text(stamp, key):
        return None
    _remember_in_memory(stamp, key)
    return key


def _remember_in_memory(stamp: Stamp, key: ModuleHash) -> None:
    with _memory_lock:
        if len(_memory) >= _MEMORY_LIMIT:
            _memory.clear()
        _memory[(stamp, key.algorithm)] = key


def _remember(index_root: Optional[str], stamp: Stamp, key: ModuleHash) -> None:
    _remember_in_memory(stamp, key)
    if index_root is None:
        return
    path = names.index_record_path(index_root, _record_name(stamp, key.algorithm))
    temp = names.temp_path(path)
    try:
        try:
            _core.atomic_write(temp, path, _record_text(stamp, key), b"")
        except CacheError as exc:
            if getattr(exc, "errno", None) != errno.ENOENT:
                raise
            os.makedirs(names.index_folder(index_root), mode=0o700, exist_ok=True)
            _core.atomic_write(temp, path, _record_text(stamp, key), b"")
    except (CacheError, OSError):
        unlink_quietly(temp)  # a read-only or full cache: the memory record still serves


def hash_bytes(data: bytes, algorithm: str) -> ModuleHash:
    return ModuleHash.sha256(data) if algorithm == "sha256" else ModuleHash.xxhash(data)


def read_source(path: str) -> tuple[bytes, Optional[os.stat_result]]:
    """The bytes of the Wasm file at ``path`` and its fstat (None if it changed while it
    was read, or is not a regular file); SourceError names the path."""
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            if stat.S_ISDIR(before.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            data = f.read()
            after = os.fstat(f.fileno())
    except OSError as exc:
        raise SourceError(
            f"cannot read the Wasm file {path}: {exc.strerror or exc}", path, exc.errno
        ) from exc
    unchanged = stat.S_ISREG(after.st_mode) and stamp_of(before) == stamp_of(after)
    return data, (after if unchanged else None)


def key_of_file(
    path: str, algorithm: str, index_root: Optional[str]
) -> tuple[ModuleHash, Optional[bytes]]:
    """The key of the Wasm file at ``path`` and, if it had to be read, its bytes (None
    when the key came from its stamp). ``index_root`` is the cache folder holding the
    records, or None to remember in process memory only."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SourceError(
            f"cannot read the Wasm file {path}: {exc.strerror or exc}", path, exc.errno
        ) from exc
    if _trusted(info):
        key = _lookup(index_root, stamp_of(info), algorithm)
        if key is not None:
            return key, None
    data, read_info = read_source(path)
    key = hash_bytes(data, algorithm)
    if read_info is not None and _trusted(read_info):
        _remember(index_root, stamp_of(read_info), key)
    return key, data
