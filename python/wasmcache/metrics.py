"""Counters a cache keeps of its own work: read in-process with ``cache.metrics()``, summed
across processes in the cache folder, printed in Prometheus's text exposition format.

Every cache has one :class:`Counters`, made on first use (:func:`counters`). Its values
are grouped by tier: ``memory``, ``filesystem`` and ``remote`` for the tiers that load
and store, ``compile`` for the compiles after misses. :data:`TIERS` says which counters
each tier has and :data:`COUNTERS` what each means; all only ever grow. Counting is one
locked addition, so a hit pays nothing more.

A cache with a folder keeps its process's counts there too (:class:`MetricsFile`,
``<cache>/.metrics``): what was counted since the last flush is added to the file under a
lock, after saves (off the compile lock, in the background) and at exit. ``wasmcache
stats`` reads the sum. The file is read under the privacy rule and parsed under a schema;
one that breaks either is refused (and replaced by the next flush)."""

from __future__ import annotations

import atexit
import contextlib
import errno
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Optional, Union

from wasmcache import _core, locks, names, safefs
from wasmcache.errors import CacheError
from wasmcache.logs import log

Number = Union[int, float]
#: ``{tier: {counter: value}}``: what ``cache.metrics()`` returns and the file keeps.
Values = dict[str, dict[str, Number]]

#: Every counter: name -> what it counts.
COUNTERS: dict[str, str] = {
    "hits": "loads served from this tier",
    "misses": "loads this tier could not serve",
    "saved_seconds": "compile seconds that hits avoided, as recorded in the entries",
    "bytes_read": "bytes of entries loaded or received",
    "bytes_written": "bytes of entries written or uploaded",
    "corrupt_removed": "corrupt entries removed",
    "downloads": "entries downloaded from the remote store",
    "uploads": "entries uploaded to the remote store",
    "refusals": "remote objects refused (bad signature, corrupt, wrong kind or key)",
    "compiles": "modules and components compiled after a miss",
    "compile_seconds": "seconds spent compiling after misses",
}
_LOADS = ("hits", "misses", "saved_seconds")
#: Every tier and its counters.
TIERS: dict[str, tuple[str, ...]] = {
    "memory": _LOADS,
    "filesystem": (*_LOADS, "bytes_read", "bytes_written", "corrupt_removed"),
    "remote": (
        *_LOADS,
        "bytes_read",
        "bytes_written",
        "corrupt_removed",
        "downloads",
        "uploads",
        "refusals",
    ),
    "compile": ("compiles", "compile_seconds"),
}
#: Counters in seconds (floats); the others count things or bytes (integers).
SECONDS = frozenset({"saved_seconds", "compile_seconds"})
#: The metrics file is refused beyond this size (bytes).
FILE_LIMIT = 1 << 16
_FORMAT = "wasmcache-metrics"
_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"  # compiled by re when first used
_VERSION = 1
_HEADER = f"{_FORMAT} {_VERSION}"
_DECIMAL = "0123456789.e+-"  # the characters of a value in seconds
_MAX_COUNT = 1 << 63


def _zeros(tiers: Iterable[str]) -> Values:
    return {tier: {name: 0.0 if name in SECONDS else 0 for name in TIERS[tier]} for tier in tiers}


class Counters:
    """The counters of one cache: its own tier and the compile tier. Safe to update from
    any thread; :meth:`flush` adds what was counted since the last flush to the cache
    folder's :class:`MetricsFile`, when the cache has one."""

    __slots__ = ("_flush_lock", "_flushed", "_lock", "_values", "file", "tier")

    def __init__(self, tier: Optional[str]) -> None:
        if tier is not None and (tier not in TIERS or tier == "compile"):
            raise ValueError(f"unknown tier {tier!r} (memory, filesystem, remote or None)")
        self.tier = tier
        tiers = ("compile",) if tier is None else (tier, "compile")
        self._values = _zeros(tiers)
        self._flushed = _zeros(tiers)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.file: Optional[MetricsFile] = None

    def __repr__(self) -> str:
        return f"Counters({self.tier!r}, {self.snapshot()})"

    def add(self, name: str, amount: Number = 1, *, tier: Optional[str] = None) -> None:
        """Add ``amount`` (finite, >= 0) to counter ``name`` of ``tier`` (default: the
        cache's own; ``compiles`` and ``compile_seconds`` are the compile tier's).
        ValueError for a counter the tier does not have, or a bad amount."""
        if tier is None:
            tier = "compile" if name in TIERS["compile"] else self.tier
        values = self._values.get(tier or "")
        if values is None or name not in values:
            raise ValueError(f"tier {tier!r} of this cache has no counter {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"a count is a number, not {type(amount).__name__}")
        if amount < 0 or not math.isfinite(amount):
            raise ValueError(f"a counter only grows: {name} += {amount!r}")
        with self._lock:
            values[name] += amount

    def hit(self, size: int = 0, seconds: Optional[float] = None) -> None:
        """One hit of the cache's tier: ``size`` bytes read, ``seconds`` of compiling
        saved (the entry's recorded compile time, when it has one)."""
        values = self._values[self.tier or ""]
        with self._lock:
            values["hits"] += 1
            if seconds is not None and seconds > 0 and math.isfinite(seconds):
                values["saved_seconds"] += seconds
            if size:
                values["bytes_read"] += size

    def miss(self) -> None:
        values = self._values[self.tier or ""]
        with self._lock:
            values["misses"] += 1

    def compiled(self, seconds: float) -> None:
        """One compile after a miss, that took ``seconds``."""
        values = self._values["compile"]
        with self._lock:
            values["compiles"] += 1
            values["compile_seconds"] += max(0.0, seconds)

    def snapshot(self) -> Values:
        """Every counter's value now, ``{tier: {counter: value}}``."""
        with self._lock:
            return {tier: dict(values) for tier, values in self._values.items()}

    def keep_in(self, file: Optional[MetricsFile]) -> None:
        """Flush to ``file`` from now on (the first folder given wins), at exit too."""
        if file is None or self.file is not None:
            return
        self.file = file
        _register(self)

    def flush(self) -> bool:
        """Add what was counted since the last flush to the metrics file; return whether
        that worked (nothing to add, or no file, is True). Never raises for the file."""
        file = self.file
        if file is None:
            return True
        with self._flush_lock:
            now = self.snapshot()
            delta = subtract(now, self._flushed)
            if not any(v for counts in delta.values() for v in counts.values()):
                return True
            try:
                file.add(delta)
            except (CacheError, OSError, ValueError) as exc:
                log.debug("metrics of %s not kept: %s", file.cache_dir, exc)
                return False
            self._flushed = now
            return True


def counters(cache: object) -> Counters:
    """The counters of ``cache``, made on first use: its ``metrics_tier`` ("memory",
    "filesystem", "remote") and the compile tier, or the compile tier alone for a cache
    class that names no tier."""
    found = getattr(cache, "_counters", None)
    if isinstance(found, Counters):
        return found
    made = Counters(getattr(cache, "metrics_tier", None))
    with contextlib.suppress(AttributeError):  # a class with __slots__: not kept
        cache._counters = made  # type: ignore[attr-defined]
    return made


_loaded = threading.local()


def note_loaded(size: int, seconds: Optional[float]) -> None:
    """Remember, for this thread, the size and recorded compile time of the entry it
    loaded or received last (what a tier in front counts as a hit's saving)."""
    _loaded.value = (size, seconds)


def last_loaded() -> tuple[int, Optional[float]]:
    """The size and recorded compile time of the entry this thread loaded or received
    last ((0, None) before any)."""
    value: tuple[int, Optional[float]] = getattr(_loaded, "value", (0, None))
    return value


def count(cache: object, name: str, amount: Number = 1) -> None:
    """Add ``amount`` to counter ``name`` of ``cache``'s own tier (or, for ``compiles``
    and ``compile_seconds``, its compile tier)."""
    counters(cache).add(name, amount)


def of(cache: object) -> Values:
    """What ``cache.metrics()`` returns, for any cache."""
    method = getattr(cache, "metrics", None)
    return method() if callable(method) else counters(cache).snapshot()


def merge(parts: Iterable[Mapping[str, Mapping[str, Number]]]) -> Values:
    """The sum of several ``{tier: {counter: value}}`` (of tiers, of processes)."""
    total: Values = {}
    for part in parts:
        for tier, values in part.items():
            into = total.setdefault(tier, {})
            for name, value in values.items():
                into[name] = into.get(name, 0) + value
    return total


def subtract(now: Values, before: Values) -> Values:
    return {
        tier: {name: value - before.get(tier, {}).get(name, 0) for name, value in values.items()}
        for tier, values in now.items()
    }


# -- the file ---------------------------------------------------------------------------


class BadMetrics(ValueError):
    """A metrics file that breaks the schema, the privacy rule or the size bound."""


def parse(raw: bytes) -> Values:
    """``{tier: {counter: value}}`` from a metrics file's bytes: ASCII lines, each ended by
    a newline, the first ``wasmcache-metrics 1``, each other ``<tier>.<counter> <value>``
    for a known tier and one of its counters, named once, its value a decimal from 0 to
    2^63 (an integer, but for seconds). BadMetrics for anything else."""
    if len(raw) > FILE_LIMIT:
        raise BadMetrics(f"larger than {FILE_LIMIT} bytes")
    if not raw.isascii() or not raw.endswith(b"\n"):
        raise BadMetrics("not lines of ASCII text")
    lines = raw.decode("ascii").split("\n")[:-1]
    if lines[0] != _HEADER:
        raise BadMetrics(f"not {_FORMAT} version {_VERSION}")
    values: Values = {}
    for number, line in enumerate(lines[1:], 2):
        name, _, text = line.partition(" ")
        tier, _, counter = name.partition(".")
        if counter not in TIERS.get(tier, ()):
            raise BadMetrics(f"line {number}: no counter {name!r}")
        counts = values.setdefault(tier, {})
        if counter in counts:
            raise BadMetrics(f"line {number}: {name} twice")
        counts[counter] = _count(text, seconds=counter in SECONDS, where=f"line {number}")
    return values


def _count(text: str, *, seconds: bool, where: str) -> Number:
    """The value of one counter's line: digits (and, for seconds, a decimal point and an
    exponent), from 0 to 2^63."""
    value: Optional[Number] = None
    if seconds and 0 < len(text) <= 32 and text[0].isdigit() and not text.strip(_DECIMAL):
        with contextlib.suppress(ValueError):
            value = float(text)
    elif not seconds and 0 < len(text) <= 19 and text.isdigit():
        value = int(text)
    if value is None or not 0 <= value < _MAX_COUNT or not math.isfinite(value):
        raise BadMetrics(f"{where}: not a count: {text[:40]!r}")
    return value


def dump(values: Mapping[str, Mapping[str, Number]]) -> bytes:
    """The bytes of a metrics file holding ``values`` (what :func:`parse` reads back)."""
    lines = [_HEADER]
    for tier in sorted(values):
        for name in sorted(values[tier]):
            value = values[tier][name]
            lines.append(
                f"{tier}.{name} {float(value)!r}"
                if name in SECONDS
                else f"{tier}.{name} {int(value)}"
            )
    return ("\n".join(lines) + "\n").encode("ascii")


def _writable(folder: str) -> bool:
    """Whether this process may create files in ``folder`` (by its effective ids; a
    read-only mount says no)."""
    effective = os.access in os.supports_effective_ids
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=effective)


class MetricsFile:
    """The counters of every process that used a cache folder: ``<cache>/.metrics``,
    lines of text (see :func:`parse`) written by rename under ``<cache>/.metrics.lock``;
    private, or with ``shared_group`` readable by the group (whose members replace it)."""

    #: How long a flush waits for the lock before it gives up (seconds).
    LOCK_WAIT = 2.0

    def __init__(self, cache_dir: str, *, shared_group: bool = False) -> None:
        self.cache_dir = cache_dir
        self.path = names.metrics_path(cache_dir)
        self.shared_group = shared_group

    def __repr__(self) -> str:
        return f"MetricsFile({self.path!r})"

    def _group(self) -> Optional[int]:
        """The cache folder's group once it passed the rule; None if there is no folder
        (UnsafeCacheError if it breaks the rule)."""
        info = safefs.folder_info(self.cache_dir, shared_group=self.shared_group)
        return None if info is None else info.st_gid

    def read(self) -> Values:
        """The sums kept so far (empty if there is no file). BadMetrics for a file that
        breaks the rule, the bound or the schema; UnsafeCacheError for the folder."""
        group = self._group()
        if group is None:
            return {}
        return self._read(group)

    def _read(self, group: int) -> Values:
        try:
            fd, info = safefs.open_regular(self.path)
        except FileNotFoundError:
            return {}
        except (OSError, CacheError) as exc:
            raise BadMetrics(str(exc)) from None
        try:
            try:
                safefs.check_entry(
                    self.path, info, shared_group=self.shared_group, group=group,
                    what="metrics file",
                )  # fmt: skip
            except CacheError as exc:
                raise BadMetrics(str(exc)) from None
            if info.st_size > FILE_LIMIT:
                raise BadMetrics(f"{self.path} is larger than {FILE_LIMIT} bytes")
            raw = safefs.pread(fd, FILE_LIMIT + 1, 0)
        finally:
            os.close(fd)
        try:
            return parse(raw)
        except BadMetrics as exc:
            raise BadMetrics(f"{self.path}: {exc}") from None

    def add(self, delta: Values) -> None:
        """Add ``delta`` to the file, under its lock (given up after :attr:`LOCK_WAIT`
        seconds: TimeoutError). A file that cannot be read is replaced (one warning).
        Nothing happens where there is no cache folder."""
        group = self._group()
        if group is None:
            return
        if not _writable(self.cache_dir):
            return  # a read-only cache (an image, another user's): nothing is kept here
        lock = names.metrics_lock_path(self.cache_dir)
        deadline = time.monotonic() + self.LOCK_WAIT
        while True:
            with locks.try_file_lock(
                lock, shared_group=self.shared_group, group=group, remove=True
            ) as got:
                if got:
                    self._add(delta, group)
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"{lock} is held by another process")
            time.sleep(0.01)

    def _add(self, delta: Values, group: int) -> None:
        try:
            kept = self._read(group)
        except BadMetrics as exc:
            log.warning("replacing a metrics file that cannot be read: %s", exc)
            kept = {}
        text = dump(merge((kept, delta)))
        mode = 0o640 if self.shared_group else 0o600
        temp = names.temp_path(self.path)
        try:
            _core.atomic_write(temp, self.path, text, b"", mode=mode)
        except CacheError:
            safefs.unlink_quietly(temp)
            raise


# -- every process's counters, kept at exit ---------------------------------------------

_kept: list[Counters] = []
_kept_lock = threading.Lock()


def _register(counters: Counters) -> None:
    with _kept_lock:
        if not _kept:
            atexit.register(flush_all)
        _kept.append(counters)


def flush_all() -> None:
    """Flush every cache's counters to its folder (runs at exit; call it before
    ``os._exit``, which skips exit handlers)."""
    with _kept_lock:
        every = list(_kept)
    for kept in every:
        kept.flush()


# -- Prometheus -------------------------------------------------------------------------


def prometheus_text(values: Mapping[str, Mapping[str, Number]], prefix: str = "wasmcache") -> str:
    """``values`` (what ``cache.metrics()`` returns) in Prometheus's text exposition
    format 0.0.4: per counter a ``# HELP`` and a ``# TYPE ... counter`` line, then one
    sample per tier that has it, ``<prefix>_<counter>_total{tier="..."} <value>``. Serve it
    with the content type ``text/plain; version=0.0.4``."""
    if not isinstance(prefix, str) or not re.fullmatch(_METRIC_NAME, prefix):
        raise ValueError(f"not a metric name prefix: {prefix!r}")
    lines: list[str] = []
    for name, help_text in COUNTERS.items():
        samples = [(tier, values[tier][name]) for tier in TIERS if name in values.get(tier, {})]
        if not samples:
            continue
        metric = f"{prefix}_{name}_total"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} counter")
        for tier, value in samples:
            shown = repr(float(value)) if name in SECONDS else str(int(value))
            lines.append(f'{metric}{{tier="{tier}"}} {shown}')
    return "\n".join(lines) + "\n"
