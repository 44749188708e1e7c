"""FileSystemCache: compiled modules as files, loaded by mmap with no copy."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import stat
import time
from pathlib import Path
from typing import Optional, Union

import wasmtime

from wasmcache import _core
from wasmcache._image import artifact_bytes
from wasmcache.artifact import (
    ARTIFACT_VERSION,
    ELF_HEADER_SIZE,
    ELF_MAGIC,
    TEMP_NAME,
    TRAILER_SIZE,
    Buffer,
    checksum,
    elf_extent,
    make_trailer,
    read_trailer,
)
from wasmcache.base import ModuleCache
from wasmcache.engine import engine_id
from wasmcache.errors import (
    DeserializeError,
    FileReadError,
    FileWriteError,
    LZWError,
    NotFound,
)
from wasmcache.hashing import ModuleHash

log = logging.getLogger("wasmcache")

# Loading through /proc/self/fd/N maps exactly the file that was checked, even if another
# process renames a new entry over the path in between.
_FD_PATHS = os.path.isdir("/proc/self/fd")


class _Corrupt(Exception):
    """Internal: the entry cannot be loaded; the message says why."""


class FileSystemCache(ModuleCache):
    """Compiled modules stored as ``<cache_dir>/<engine id>-v<N>/<HASH>.bin``.

    ``verify`` checks each entry's length and XXH3-64 checksum before wasmtime maps it
    (with ``verify=False`` only the length). ``fsync`` makes saves durable across a power
    loss at the cost of a flush per save.
    """

    def __init__(
        self,
        cache_dir: Union[str, os.PathLike[str]],
        *,
        verify: bool = True,
        fsync: bool = False,
    ) -> None:
        self._dir = Path(cache_dir)
        self._dir_bytes = os.fsencode(self._dir)
        self.verify = verify
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._dir)!r}, verify={self.verify})"

    @property
    def cache_dir(self) -> Path:
        return self._dir

    # -- paths -------------------------------------------------------------------------

    def _entry_path(self, key: ModuleHash, engine: wasmtime.Engine) -> str:
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        raw = _core.cache_path(
            self._dir_bytes, engine_id(engine).encode("ascii"), ARTIFACT_VERSION, key.digest
        )
        return os.fsdecode(raw)

    def path(self, key: ModuleHash, engine: wasmtime.Engine) -> Path:
        """Where the entry for ``key`` and ``engine`` lives (whether or not it exists)."""
        return Path(self._entry_path(key, engine))

    # -- the ModuleCache methods ---------------------------------------------------------

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        return os.path.isfile(self._entry_path(key, engine))

    def save(self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        path = self._entry_path(key, engine)
        payload = artifact_bytes(module)
        self._write_entry(path, payload)
        log.debug("saved %s (%d bytes) to %s", key, len(payload), path)

    def load(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        path = self._entry_path(key, engine)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            log.debug("miss %s at %s", key, path)
            raise NotFound(f"no cache entry for {key} at {path}") from None
        except OSError as exc:
            raise FileReadError(f"cannot open cache entry {path}: {exc.strerror}", path) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileReadError(f"cache entry {path} is not a regular file", path)
            try:
                module = self._load_open_entry(engine, path, fd, info.st_size)
            except _Corrupt as exc:
                self._discard(path, info)
                raise DeserializeError(f"removed corrupt cache entry {path}: {exc}") from (
                    exc.__cause__
                )
            except OSError as exc:
                raise FileReadError(
                    f"cannot read cache entry {path}: {exc.strerror}", path
                ) from exc
        finally:
            os.close(fd)
        log.debug("hit %s at %s", key, path)
        return module

    # -- housekeeping --------------------------------------------------------------------

    def cleanup(self, older_than: float = 3600.0) -> int:
        """Remove temp files that interrupted saves left behind and that are older than
        ``older_than`` seconds; return how many were removed. Only names in the temp
        format of this cache are touched."""
        cutoff = time.time() - older_than
        removed = 0
        for folder in _engine_folders(self._dir):
            for entry in _scan(folder):
                if not TEMP_NAME.fullmatch(entry.name):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("could not remove stale temp file %s: %s", entry.path, exc)
        if removed:
            log.debug("removed %d stale temp files under %s", removed, self._dir)
        return removed

    # -- internals -----------------------------------------------------------------------

    def _write_entry(self, path: str, payload: Buffer) -> None:
        """Write payload + trailer atomically, creating the folders (0700) when missing."""
        trailer = make_trailer(payload)
        try:
            try:
                _core.atomic_write(path, payload, len(payload), trailer, fsync=self.fsync)
            except FileNotFoundError:
                self._make_folders(os.path.dirname(path))
                _core.atomic_write(path, payload, len(payload), trailer, fsync=self.fsync)
        except OSError as exc:
            raise FileWriteError(
                f"cannot write cache entry {path}: {exc.strerror or exc}", path
            ) from exc

    def _make_folders(self, engine_dir: str) -> None:
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        try:
            os.mkdir(engine_dir, 0o700)
        except FileExistsError:
            if not os.path.isdir(engine_dir):
                raise

    def _load_open_entry(
        self, engine: wasmtime.Engine, path: str, fd: int, size: int
    ) -> wasmtime.Module:
        """Check the open entry and hand it to wasmtime; raise _Corrupt if it is bad."""
        if size == 0:
            raise _Corrupt("empty file")
        trailer = (
            read_trailer(os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE))
            if (size >= TRAILER_SIZE)
            else None
        )
        if trailer is not None:
            if trailer.payload_length != size - TRAILER_SIZE:
                raise _Corrupt(
                    f"length mismatch: trailer says {trailer.payload_length} bytes, "
                    f"file holds {size - TRAILER_SIZE}"
                )
            if self.verify and _file_checksum(fd, trailer.payload_length) != trailer.checksum:
                raise _Corrupt("checksum mismatch")
            return _deserialize_file(engine, path, fd)
        head = os.pread(fd, ELF_HEADER_SIZE, 0)
        if head.startswith(ELF_MAGIC):
            # A bare artifact, as module.serialize() writes it: exactly its ELF length.
            # Anything longer is an entry whose trailer was damaged.
            if elf_extent(head) != size:
                raise _Corrupt("artifact without a valid trailer, or truncated")
            return _deserialize_file(engine, path, fd)
        return self._load_lzw_entry(engine, path, fd, size)

    def _load_lzw_entry(
        self, engine: wasmtime.Engine, path: str, fd: int, size: int
    ) -> wasmtime.Module:
        """Decode an entry the older LZW-compressing cache wrote, then store it anew in
        today's format so the next load maps it directly."""
        try:
            artifact = _core.lzw_decode_view(_read_all(fd, size))
        except LZWError as exc:
            raise _Corrupt(f"neither an artifact nor a valid LZW stream ({exc})") from exc
        if artifact[: len(ELF_MAGIC)] != ELF_MAGIC:
            raise _Corrupt("LZW stream does not hold a compiled artifact")
        try:
            self._write_entry(path, artifact)
        except FileWriteError as exc:
            log.warning("could not rewrite LZW entry %s: %s", path, exc)
            try:
                return wasmtime.Module.deserialize(engine, artifact.tobytes())
            except wasmtime.WasmtimeError as err:
                raise _Corrupt(f"wasmtime rejected the decoded artifact: {err}") from err
        log.debug("rewrote LZW entry %s in format v%d", path, ARTIFACT_VERSION)
        # The file at `path` is now the one just written; a bad artifact in it is removed
        # like any corrupt entry (the LZW file it replaced was no better).
        with open(path, "rb") as rewritten:
            try:
                return _deserialize_file(engine, path, rewritten.fileno())
            except _Corrupt:
                self._discard(path, os.fstat(rewritten.fileno()))
                raise

    @staticmethod
    def _discard(path: str, opened: os.stat_result) -> None:
        """Remove a corrupt entry, unless another writer has replaced it meanwhile."""
        try:
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove corrupt cache entry %s: %s", path, exc)


def _scan(folder: Union[str, Path]) -> list[os.DirEntry[str]]:
    """The entries of a folder; empty if it is missing or unreadable."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _engine_folders(cache_dir: Path) -> list[str]:
    """Engine folders of a cache (``<engine id>-v<N>``); anything else is ignored."""
    return [
        e.path
        for e in _scan(cache_dir)
        if _ENGINE_FOLDER.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    ]


_ENGINE_FOLDER = re.compile(r"[A-Za-z0-9._-]+-v[0-9]+")


def _deserialize_file(engine: wasmtime.Engine, path: str, fd: int) -> wasmtime.Module:
    source = f"/proc/self/fd/{fd}" if _FD_PATHS else path
    try:
        return wasmtime.Module.deserialize_file(engine, source)
    except wasmtime.WasmtimeError as exc:
        raise _Corrupt(f"wasmtime rejected the artifact: {exc}") from exc


def _file_checksum(fd: int, length: int) -> Optional[int]:
    if length == 0:
        return checksum(b"")
    with mmap.mmap(fd, length, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return checksum(view)
        finally:
            view.release()


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 30), offset)
        if not chunk:
            raise OSError(errno.EIO, "file shrank while being read")
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
