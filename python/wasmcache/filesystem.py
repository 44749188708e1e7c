"""FileSystemCache: compiled modules as files, loaded by mmap with no copy."""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional, Union

import wasmtime

from wasmcache import _core, layout, locks
from wasmcache._image import artifact_bytes
from wasmcache.artifact import (
    ARTIFACT_VERSION,
    ELF_HEADER_SIZE,
    ELF_MAGIC,
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
from wasmcache.layout import CacheEntry

log = logging.getLogger("wasmcache")

# Loading through /proc/self/fd/N maps exactly the file that was checked, even if another
# process renames a new entry over the path in between.
_FD_PATHS = os.path.isdir("/proc/self/fd")


class _Corrupt(Exception):
    """Internal: the entry cannot be loaded; the message says why."""


class FileSystemCache(ModuleCache):
    """Compiled modules stored as ``<cache_dir>/<engine id>-v<N>/<HASH>.bin``.

    ``cache_dir`` defaults to :func:`default_cache_dir`. ``verify`` checks each entry's
    length and XXH3-64 checksum before wasmtime maps it (with ``verify=False`` only the
    length). ``fsync`` makes saves durable across a power loss at the cost of a flush per
    save. With ``max_bytes``, saves prune the least recently used entries (of every
    engine folder) once the cache grows past it, at most once per ``prune_interval``
    seconds across all processes.
    """

    lock_scope = 1
    #: Hits record the time of use at most this often per entry (seconds).
    touch_interval = 60.0

    def __init__(
        self,
        cache_dir: Union[str, os.PathLike[str], None] = None,
        *,
        verify: bool = True,
        fsync: bool = False,
        max_bytes: Optional[int] = None,
        prune_interval: float = 60.0,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self._dir = Path(default_cache_dir() if cache_dir is None else cache_dir)
        self._dir_bytes = os.fsencode(self._dir)
        self.verify = verify
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.prune_interval = prune_interval

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
        trailer = make_trailer(payload)
        if _holds_entry(path, trailer):
            # Replacing a big file costs more than writing it (the old one's blocks are
            # freed in the rename); an identical entry is kept as it is.
            log.debug("%s is already saved at %s", key, path)
            return
        self._write_entry(path, payload, trailer)
        log.debug("saved %s (%d bytes) to %s", key, len(payload), path)
        if self.max_bytes is not None:
            self._maybe_prune()

    @contextlib.contextmanager
    def compile_lock(self, key: ModuleHash, engine: wasmtime.Engine) -> Iterator[None]:
        """A thread lock and an advisory file lock ``<engine folder>/.<HASH>.lock``."""
        path = self._entry_path(key, engine)
        folder, name = os.path.split(path)
        with locks.thread_lock(path):
            with contextlib.suppress(OSError):  # no folder: no lock file, the thread lock holds
                self._make_folders(folder)
            with locks.file_lock(os.path.join(folder, f".{name[: -len('.bin')]}.lock")):
                yield

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
                self._record_use(fd, info)
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

    def receive(
        self, key: ModuleHash, engine: wasmtime.Engine, chunks: Iterable[Buffer]
    ) -> wasmtime.Module:
        """Store an entry that arrives in pieces (a download) and load it: the pieces go
        to a temp file in the entry's folder, which is verified (format, length, XXH3-64)
        before it is renamed into place. A bad or partial stream is never kept:
        DeserializeError for bad content, FileWriteError for local trouble; any error
        raised by ``chunks`` itself passes through."""
        path = self._entry_path(key, engine)
        folder, name = os.path.split(path)
        temp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(8).hex()}.tmp")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            try:
                fd = os.open(temp, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
            except FileNotFoundError:
                self._make_folders(folder)
                fd = os.open(temp, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise FileWriteError(f"cannot write cache entry {path}: {exc.strerror}", path) from exc
        try:
            try:
                for chunk in chunks:
                    _write_all(fd, memoryview(chunk))
                size = os.fstat(fd).st_size
                if _inspect(fd, size, verify=True) != "trailer":
                    raise _Corrupt("not an entry in wasmcache's format")
                os.rename(temp, path)
            except OSError as exc:
                raise FileWriteError(
                    f"cannot write cache entry {path}: {exc.strerror}", path
                ) from exc
            module = _deserialize_file(engine, path, fd)
        except _Corrupt as exc:
            # Renamed into place only to be rejected by wasmtime: remove it there.
            current = _stat_or_none(path)
            placed = current is not None and os.path.samestat(os.fstat(fd), current)
            _unlink_quietly(path if placed else temp)
            raise DeserializeError(f"received a corrupt entry for {key}: {exc}") from (
                exc.__cause__
            )
        except BaseException:
            _unlink_quietly(temp)
            raise
        finally:
            os.close(fd)
        log.debug("received %s (%d bytes) at %s", key, size, path)
        return module

    # -- housekeeping --------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every entry of every engine folder (names outside the entry format are
        ignored)."""
        return list(layout.entries(self._dir))

    def verify_entries(self, *, fix: bool = False) -> list[tuple[CacheEntry, str]]:
        """Check every entry's format, length and checksum (without wasmtime); return the
        bad ones with the reason. With ``fix`` the bad ones are removed."""
        bad = []
        for entry in self.entries():
            try:
                fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                bad.append((entry, f"unreadable: {exc.strerror}"))
                continue
            try:
                info = os.fstat(fd)
                kind = _inspect(fd, info.st_size, verify=True)
                if kind == "lzw":
                    _decode_lzw_entry(fd, info.st_size)
            except _Corrupt as exc:
                bad.append((entry, str(exc)))
                if fix:
                    self._discard(str(entry.path), info)
            except OSError as exc:
                bad.append((entry, f"unreadable: {exc.strerror}"))
            finally:
                os.close(fd)
        return bad

    def prune(self, max_bytes: int) -> list[CacheEntry]:
        """Remove least recently used entries until the cache holds at most ``max_bytes``,
        plus stale temp files and empty engine folders; return the removed entries.
        Entries that live modules map are unlinked, never truncated, so they stay valid."""
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        all_entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in all_entries)
        removed = []
        for entry in all_entries:
            if total <= max_bytes:
                break
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not prune %s: %s", entry.path, exc)
                continue
            total -= entry.size
            removed.append(entry)
        self.cleanup()
        for folder in layout.engine_folders(self._dir):
            with contextlib.suppress(OSError):
                os.rmdir(folder.path)  # only succeeds when empty
        if removed:
            log.debug("pruned %d entries from %s", len(removed), self._dir)
        return removed

    def clear(self) -> int:
        """Remove every entry (and temp and lock file); return how many entries."""
        removed = 0
        for entry in self.entries():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        self.cleanup(older_than=0)
        for folder in layout.engine_folders(self._dir):
            with contextlib.suppress(OSError):
                os.rmdir(folder.path)
        return removed

    def _maybe_prune(self) -> None:
        """Prune to max_bytes if no process did within prune_interval (shared stamp file),
        under a lock that all processes share; never blocks a save."""
        stamp = self._dir / ".last-prune"
        try:
            if time.time() - stamp.stat().st_mtime < self.prune_interval:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        with locks.try_file_lock(str(self._dir / ".prune.lock")) as locked:
            if not locked:
                return
            try:
                stamp.touch()
                self.prune(self.max_bytes or 0)
            except OSError as exc:
                log.warning("automatic pruning of %s failed: %s", self._dir, exc)

    def _record_use(self, fd: int, info: os.stat_result) -> None:
        """Set the entry's access time to now (what prune's LRU order reads), at most once
        per touch_interval; a read-only cache is fine."""
        now = time.time()
        if now - info.st_atime >= self.touch_interval:
            with contextlib.suppress(OSError):
                os.utime(fd, (now, info.st_mtime))

    # -- housekeeping: temp files -------------------------------------------------------

    def cleanup(self, older_than: float = 3600.0) -> int:
        """Remove temp files that interrupted saves left behind, and per-key lock files,
        older than ``older_than`` seconds; return how many were removed. Only names in
        this cache's temp and lock formats are touched."""
        cutoff = time.time() - older_than
        removed = 0
        for entry in layout.temp_files(self._dir):
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

    def _write_entry(self, path: str, payload: Buffer, trailer: Optional[bytes] = None) -> None:
        """Write payload + trailer atomically, creating the folders (0700) when missing."""
        if trailer is None:
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
        if _inspect(fd, size, verify=self.verify) != "lzw":
            return _deserialize_file(engine, path, fd)
        return self._load_lzw_entry(engine, path, _decode_lzw_entry(fd, size))

    def _load_lzw_entry(
        self, engine: wasmtime.Engine, path: str, artifact: memoryview
    ) -> wasmtime.Module:
        """Load an entry the older LZW-compressing cache wrote (already decoded), storing
        it anew in today's format so the next load maps it directly."""
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


def default_cache_dir() -> Path:
    """``$WASMCACHE_DIR`` if set, else the user's cache folder (platformdirs) +
    ``wasmcache``."""
    configured = os.environ.get("WASMCACHE_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("wasmcache", appauthor=False))


def _inspect(fd: int, size: int, *, verify: bool) -> str:
    """What the open entry holds: "trailer" (today's format, checked), "bare" (an
    artifact as module.serialize() writes it) or "lzw" (maybe an LZW stream: decoding
    decides). Raises _Corrupt for anything else."""
    if size == 0:
        raise _Corrupt("empty file")
    tail = os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) if size >= TRAILER_SIZE else b""
    trailer = read_trailer(tail)
    if trailer is not None:
        if trailer.payload_length != size - TRAILER_SIZE:
            raise _Corrupt(
                f"length mismatch: trailer says {trailer.payload_length} bytes, "
                f"file holds {size - TRAILER_SIZE}"
            )
        if verify and _file_checksum(fd, trailer.payload_length) != trailer.checksum:
            raise _Corrupt("checksum mismatch")
        return "trailer"
    head = os.pread(fd, ELF_HEADER_SIZE, 0)
    if head.startswith(ELF_MAGIC):
        # A bare artifact is exactly its ELF length; anything else is an entry whose
        # trailer was damaged, or a truncated file.
        if elf_extent(head) != size:
            raise _Corrupt("artifact without a valid trailer, or truncated")
        return "bare"
    return "lzw"


def _decode_lzw_entry(fd: int, size: int) -> memoryview:
    """The artifact in an LZW entry; _Corrupt if it is not a valid stream of one."""
    try:
        artifact = _core.lzw_decode_view(_read_all(fd, size))
    except LZWError as exc:
        raise _Corrupt(f"neither an artifact nor a valid LZW stream ({exc})") from exc
    if artifact[: len(ELF_MAGIC)] != ELF_MAGIC:
        raise _Corrupt("LZW stream does not hold a compiled artifact")
    return artifact


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _stat_or_none(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _holds_entry(path: str, trailer: bytes) -> bool:
    """Whether ``path`` is already a whole, checked entry with exactly this trailer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size < TRAILER_SIZE or os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) != trailer:
            return False
        return _inspect(fd, size, verify=True) == "trailer"
    except (OSError, _Corrupt):
        return False
    finally:
        os.close(fd)


def _deserialize_file(engine: wasmtime.Engine, path: str, fd: int) -> wasmtime.Module:
    source = f"/proc/self/fd/{fd}" if _FD_PATHS else path
    try:
        return wasmtime.Module.deserialize_file(engine, source)
    except wasmtime.WasmtimeError as exc:
        raise _Corrupt(f"wasmtime rejected the artifact: {exc}") from exc


def _file_checksum(fd: int, length: int) -> int:
    if length == 0:
        return checksum(b"")
    # MAP_POPULATE maps the whole file in one call instead of a fault per page.
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ) as mapped:
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
