"""FileSystemCache: compiled modules and components as files in a private folder, loaded
by mmap."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional, Union

import wasmtime

from wasmcache import checked, entry, housekeeping, kinds, legacy, locks, metrics, names, safefs
from wasmcache._image import artifact_bytes
from wasmcache.base import ModuleCache
from wasmcache.config import default_cache_dir
from wasmcache.engine import engine_id
from wasmcache.entry import Buffer, Corrupt, Origin
from wasmcache.errors import (
    DeserializeError,
    FileReadError,
    FileWriteError,
    NotFound,
    UnsafeCacheError,
)
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled, Kind
from wasmcache.logs import log
from wasmcache.metrics import Values as MetricValues

# Loading through the open descriptor's own path maps exactly the file that was checked,
# even if another process renames a new entry over the path in between: /proc/self/fd/N
# on Linux, /dev/fd/N on macOS (opening it duplicates the descriptor). Windows has no such
# path; there the entry is held open without delete sharing while it is checked and
# mapped, so nobody can rename over the path or remove it meanwhile (safefs.open_regular).
_FD_DIR: Optional[str]
if sys.platform == "win32":  # (under Wine, /proc names the host's, not this process's)
    _FD_DIR = None
elif os.path.isdir("/proc/self/fd"):
    _FD_DIR = "/proc/self/fd"
elif sys.platform == "darwin" and os.path.isdir("/dev/fd"):
    _FD_DIR = "/dev/fd"
else:
    _FD_DIR = None


class FileSystemCache(housekeeping.Housekeeping, ModuleCache):
    """Compiled modules and components stored as ``<cache_dir>/<engine id>-v<N>/<HASH>.bin``.

    ``cache_dir`` defaults to :func:`default_cache_dir`; it must be private (see
    :mod:`wasmcache.safefs`). ``shared_group=True`` lets the folder's group write too,
    if this process is in it; a group name or gid there also requires the cache folder
    to belong to exactly that group.
    ``verify`` checks each entry's length and XXH3-64 checksum before wasmtime maps it
    (with ``verify=False`` only the length). ``fsync`` makes saves durable across a power
    loss. With ``max_bytes``, the least recently used entries are pruned once the cache
    grows past it, at most once per ``prune_interval`` seconds across all processes: a
    save only asks for it, and it runs on a background thread once no compile lock of
    this thread is held (:meth:`wait_housekeeping` waits for it). Legacy
    LZW entries larger than ``legacy_max_bytes``, or decoding past it, count as corrupt.
    ``direct`` sets direct mode for paths (see :attr:`ModuleCache.direct`; None: from
    ``WASMCACHE_DIRECT``, else by filesystem type); its records live in
    ``<cache_dir>/index``, under the same privacy rule as the engine folders.

    :meth:`metrics` gives the counters of this cache object; they are added to the
    folder's ``.metrics`` (what ``wasmcache stats`` sums) after saves and at exit.
    """

    lock_scope = 1
    metrics_tier = "filesystem"
    #: The cache folder's group, once the folder passed the rule: with ``shared_group``
    #: its members may own what is in the cache.
    _gid: Optional[int] = None
    #: A long-lived process adds its counters to the folder at most this often (seconds).
    METRICS_INTERVAL = 60.0
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
        legacy_max_bytes: int = 1 << 30,
        shared_group: Union[bool, str, int] = False,
        direct: Optional[bool] = None,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if legacy_max_bytes < 0:
            raise ValueError("legacy_max_bytes must not be negative")
        folder = os.fspath(default_cache_dir() if cache_dir is None else cache_dir)
        if not isinstance(folder, str) or not folder:
            raise ValueError("cache_dir must be a non-empty path")
        self._dir = os.path.realpath(folder)  # resolved once
        self._dir_bytes = os.fsencode(self._dir)
        self.verify = verify
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.prune_interval = prune_interval
        self.legacy_max_bytes = legacy_max_bytes
        #: Whether the cache folder's group is trusted (see :mod:`wasmcache.safefs`).
        self.shared_group, self._named_gid = safefs.group_setting(shared_group)
        self._private: set[str] = set()  # folders that passed the privacy rule
        self._use_direct(direct, self._dir, shared_group=self.shared_group)
        if self._index is not None:
            self._index.named_group = self._named_gid
        self._prune_due = 0.0  # time.monotonic() before which no prune is asked for
        # Counters go to the folder at exit, on flush_metrics(), and from a long-lived
        # process at most once per METRICS_INTERVAL: a short script's saves leave nothing
        # running in the folder after they return.
        self._metrics_due = time.monotonic() + self.METRICS_INTERVAL
        self._counters = metrics.Counters(self.metrics_tier)
        self._counters.keep_in(metrics.MetricsFile(self._dir, shared_group=self.shared_group))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dir!r}, verify={self.verify})"

    @property
    def cache_dir(self) -> Path:
        return Path(self._dir)

    def metrics(self) -> MetricValues:
        """This cache's counters, ``{tier: {counter: value}}`` (see :mod:`wasmcache.metrics`):
        the ``filesystem`` tier's hits, misses, saved compile seconds, bytes read and
        written, corrupt entries removed; the ``compile`` tier's compiles and seconds."""
        return self._counters.snapshot()

    def flush_metrics(self) -> bool:
        """Add what this cache counted since the last flush to the folder's ``.metrics``
        now (done after saves and at exit anyway); return whether that worked."""
        return self._counters.flush()

    def wait_housekeeping(self, timeout: Optional[float] = None) -> bool:
        """Wait until the background housekeeping of this process (automatic pruning,
        metrics) is done; return whether it was within ``timeout`` seconds."""
        return housekeeping.wait_idle(timeout)

    def path(self, key: ModuleHash, engine: wasmtime.Engine) -> Path:
        """Where the entry for ``key`` and ``engine`` lives (whether or not it exists)."""
        return Path(self._entry_path(key, engine))

    # -- the ModuleCache methods ---------------------------------------------------------

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        path = self._checked_path(key, engine)
        try:
            fd, _ = safefs.open_regular(path)
        except (FileNotFoundError, FileReadError):
            return False
        os.close(fd)
        return True

    def load(
        self, key: ModuleHash, engine: wasmtime.Engine, *, kind: Optional[Kind] = None
    ) -> Compiled:
        path = self._checked_path(key, engine)
        try:
            fd, info = safefs.open_regular(path)
        except FileNotFoundError:
            log.debug("miss %s at %s", key, path)
            self._counters.miss()
            raise NotFound(f"no cache entry for {key} at {path}") from None
        try:
            safefs.check_entry(path, info, shared_group=self.shared_group, group=self._gid, fd=fd)
            try:
                shape = checked.inspect(
                    self._dir, fd, info, path, verify=self.verify,
                    shared_group=bool(self.shared_group),
                )  # fmt: skip
                described = entry.read_info(fd, info.st_size)
                _check_name(described, key, engine)
                kinds.check(kind, described.kind, path)
                if shape == "lzw":
                    artifact = legacy.decode(fd, info.st_size, self.legacy_max_bytes)
                    if sys.platform == "win32":
                        fd = _closed(fd)  # Windows renames over no file open without delete sharing
                    module = legacy.migrate(self, key, engine, path, artifact)
                    self._counters.hit(info.st_size)
                    return module
                module = _deserialize(engine, path, fd, described.kind)
                housekeeping.record_use(fd, info, self.touch_interval)
            except Corrupt as exc:
                if sys.platform == "win32":
                    fd = _closed(fd)  # Windows removes no file open without delete sharing
                safefs.discard(path, info)
                self._counters.add("corrupt_removed")
                self._counters.miss()
                raise DeserializeError(f"removed corrupt cache entry {path}: {exc}") from (
                    exc.__cause__
                )
            except OSError as exc:
                raise FileReadError(
                    f"cannot read cache entry {path}: {exc.strerror}", path, exc.errno
                ) from exc
        finally:
            if fd >= 0:
                os.close(fd)
        log.debug("hit %s at %s", key, path)
        self._counters.hit(info.st_size, described.compile_seconds)
        metrics.note_loaded(info.st_size, described.compile_seconds)
        return module

    def save(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        module: Compiled,
        *,
        origin: Optional[Origin] = None,
    ) -> None:
        """Store ``module`` (a module or a component) with what ``origin`` says of it."""
        path = self._checked_path(key, engine)
        payload = artifact_bytes(module)
        sealed = entry.seal(payload, kinds.of(module), origin, key=key, engine_id=engine_id(engine))
        if self._holds(path, sealed):
            # Replacing a big file costs more than writing it (the old one's blocks are
            # freed in the rename); an identical entry is kept as it is.
            log.debug("%s is already saved at %s", key, path)
            return
        safefs.write_file(
            path,
            payload,
            sealed.tail,
            self._make_folders,
            fsync=self.fsync,
            shared_group=self.shared_group,
        )
        log.debug("saved %s (%d bytes) to %s", key, len(payload), path)
        self._counters.add("bytes_written", sealed.length)
        self._after_write()

    def receive(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        chunks: Iterable[Buffer],
        *,
        verify: bool = True,
        kind: Optional[Kind] = None,
    ) -> Compiled:
        """Store an entry that arrives in pieces (a download) and load it: the pieces go
        to a temp file in the entry's folder, which is verified (format, length, XXH3-64)
        before it is renamed into place and mapped through its own descriptor. A bad or
        partial stream is never kept: DeserializeError for bad content, FileWriteError for
        local trouble; any error raised by ``chunks`` itself passes through. ``verify=False``
        when ``chunks`` checked the content's checksum itself (the length and trailer are
        still checked). An entry whose metadata names another key or engine is refused as
        corrupt before it is renamed into place. Honours ``fsync`` and asks for automatic
        pruning like a save. An entry of the other ``kind`` is kept, and KindMismatch
        raised."""
        path = self._checked_path(key, engine)
        temp, fd = safefs.create_temp(path, self._make_folders, shared_group=self.shared_group)
        try:
            try:
                for chunk in chunks:
                    safefs.write_all(fd, memoryview(chunk))
                written = os.fstat(fd)
                size = written.st_size
                if entry.inspect(fd, size, verify=verify) != "trailer":
                    raise Corrupt("not an entry in wasmcache's format")
                described = entry.read_info(fd, size)
                _check_name(described, key, engine)
                found = described.kind
                if self.fsync:
                    os.fsync(fd)
                mapped = _place(temp, path)
            except OSError as exc:
                raise FileWriteError(
                    f"cannot write cache entry {path}: {exc.strerror}", path, exc.errno
                ) from exc
            kinds.check(kind, found, path)
            if sys.platform == "win32":
                fd = _hold_for_mapping(fd, written, mapped)
            module = _deserialize(engine, mapped, fd, found)
        except Corrupt as exc:
            # Renamed into place only to be rejected by wasmtime: remove it there.
            placed = safefs.same_file(path, os.fstat(fd))
            if sys.platform == "win32":
                fd = _closed(fd)  # Windows removes no file open without delete sharing
            safefs.unlink_quietly(path if placed else temp)
            raise DeserializeError(f"received a corrupt entry for {key}: {exc}") from (
                exc.__cause__
            )
        except BaseException:
            safefs.unlink_quietly(temp)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        log.debug("received %s (%d bytes) at %s", key, size, path)
        self._counters.add("bytes_written", size)
        metrics.note_loaded(size, described.compile_seconds)
        self._after_write()
        return module

    @contextlib.contextmanager
    def compile_lock(self, key: ModuleHash, engine: wasmtime.Engine) -> Iterator[None]:
        """A thread lock and an advisory file lock ``<engine folder>/.<HASH>.lock``, whose
        file its holder removes when it releases it."""
        path = self._checked_path(key, engine)
        with locks.thread_lock(path):
            with contextlib.suppress(OSError):  # no folder: no lock file, the thread lock holds
                self._make_folders(os.path.dirname(path))
            with locks.file_lock(
                names.lock_path(path), shared_group=self.shared_group, group=self._gid, remove=True
            ):
                yield

    # -- housekeeping, off the hot path --------------------------------------------------

    def _after_write(self) -> None:
        """Ask for automatic pruning and a flush of the counters, each when due: both run
        on the housekeeping thread once this thread holds no compile lock."""
        now = time.monotonic()
        if self.max_bytes is not None and now >= self._prune_due:
            housekeeping.in_background(("prune", self._dir), self._auto_prune)
        if now >= self._metrics_due:
            self._metrics_due = now + self.METRICS_INTERVAL
            counters = self._counters
            housekeeping.in_background(("metrics", id(counters)), counters.flush)

    def _auto_prune(self) -> None:
        if self.max_bytes is None:
            return
        from wasmcache import maintenance  # the listing and pruning code, off the hot path

        wait = maintenance.maybe_prune(self, self.max_bytes, self.prune_interval)
        self._prune_due = time.monotonic() + wait

    # -- internals -----------------------------------------------------------------------

    def _entry_path(self, key: ModuleHash, engine: wasmtime.Engine) -> str:
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        return names.entry_path(self._dir_bytes, engine_id(engine), key)

    def _checked_path(self, key: ModuleHash, engine: wasmtime.Engine) -> str:
        """The entry's path, after its cache and engine folders passed the privacy rule
        (UnsafeCacheError if not); checked once per folder while they exist."""
        path = self._entry_path(key, engine)
        for folder in (self._dir, os.path.dirname(path)):
            if folder not in self._private:
                top = folder == self._dir
                info = safefs.folder_info(
                    folder,
                    shared_group=self.shared_group,
                    group=self._named_gid if top else self._gid,
                    exact=top and self._named_gid is not None,
                )
                if info is None:
                    break  # not there yet: created private by the first save
                if folder == self._dir:
                    self._gid = info.st_gid
                self._private.add(folder)
        return path

    def _make_folders(self, engine_dir: str) -> None:
        safefs.make_folders(
            self._dir, engine_dir, shared_group=self.shared_group, group=self._named_gid
        )

    def _holds(self, path: str, sealed: entry.Sealed) -> bool:
        try:
            fd, _ = safefs.open_regular(path)
        except (OSError, FileReadError):
            return False
        try:
            safefs.check_entry(
                path, os.fstat(fd), shared_group=self.shared_group, group=self._gid, fd=fd
            )
            return entry.holds(fd, sealed)
        except UnsafeCacheError:
            return False
        finally:
            os.close(fd)


def _check_name(described: entry.Info, key: ModuleHash, engine: wasmtime.Engine) -> None:
    """Corrupt if the entry records another key or engine than the name it is loaded
    under (it was renamed or copied there)."""
    other = described.names_other(key, engine_id(engine))
    if other is not None:
        raise Corrupt(f"its metadata does not name this entry: {other}")


def _closed(fd: int) -> int:
    """Close ``fd`` early; -1 stands for it closed."""
    os.close(fd)
    return -1


def _place(temp: str, path: str) -> str:
    """Rename the received ``temp`` over ``path``; return the path to map. On Windows a
    file at ``path`` that is mapped, or open without delete sharing, cannot be replaced:
    the entry there stays, and the temp file is mapped instead (removed as a stale temp
    file once nothing maps it)."""
    if sys.platform != "win32":
        os.rename(temp, path)
        return path
    try:
        os.replace(temp, path)
    except PermissionError:
        if not safefs.is_regular(path):
            raise
        log.debug("%s is in use: not replaced now, its download is loaded from %s", path, temp)
        return temp
    return path


def _hold_for_mapping(fd: int, written: os.stat_result, where: str) -> int:
    """Windows: the received file at ``where`` (open for writing as ``fd``, which is
    closed; ``written``: its fstat before the rename, as a handle's volume may not be
    told after it) open again as :func:`safefs.open_regular` opens it: read-only, so
    wasmtime can open it to map, and without delete sharing, so nobody renames over it
    before it is mapped. Corrupt (the file kept) if another file took its place first."""
    try:
        held, info = safefs.open_regular(where)
    except (OSError, FileReadError) as exc:
        raise Corrupt(f"it was replaced before it could be loaded: {exc}") from None
    if (info.st_dev, info.st_ino) != (written.st_dev, written.st_ino):
        os.close(held)
        raise Corrupt("it was replaced before it could be loaded")
    os.close(fd)
    return held


def _deserialize(engine: wasmtime.Engine, path: str, fd: int, kind: Kind) -> Compiled:
    source = path if _FD_DIR is None else f"{_FD_DIR}/{fd}"
    try:
        return kinds.deserialize_file(engine, source, kind)
    except wasmtime.WasmtimeError as exc:
        raise Corrupt(f"wasmtime rejected the artifact: {exc}") from exc
