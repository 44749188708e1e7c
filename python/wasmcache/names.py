"""Every name wasmcache gives a file, folder or object, and how each is recognised.

Entry paths come from the C builder (``wmc_cache_path``) and temp names from
``wmc_temp_path``; everything else is built here. Nothing outside this module builds or
matches a name in a cache folder or a bucket.

A cache folder holds::

    <cache_dir>/<engine id>-v<N>/<HASH>.bin        an entry
    <cache_dir>/<engine id>-v<N>/.<HASH>.bin.<pid>.<16 hex>.tmp   a save in progress
    <cache_dir>/<engine id>-v<N>/.<HASH>.lock      the compile lock of one key
    <cache_dir>/.prune.lock, .last-prune           automatic pruning's lock and stamp
    <cache_dir>/.metrics, .metrics.lock            counters summed across processes
    <cache_dir>/index/records                      direct mode: file stamps -> keys
    <cache_dir>/index/.records.<pid>.<16 hex>.tmp  the index log being rewritten
    <cache_dir>/index/<64 hex>                     an index record of an older version

and a bucket ``<prefix>/<engine id>-v<N>/<HASH>.bin`` and ``.../<HASH>.lease``.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Optional

from wasmcache import _core
from wasmcache.hashing import ModuleHash

#: Version of the on-disk format; part of every engine folder's name.
ARTIFACT_VERSION = 1

_KEY = r"(?:[0-9A-F]{16}|[0-9A-F]{64})"
_ENGINE_FOLDER = r"[A-Za-z0-9._-]+-v[0-9]+"
_ENTRY = rf"({_KEY})\.bin"
_TEMP = rf"\.(?:{_KEY}\.bin|[0-9a-f]{{64}}|records|metrics)\.[0-9]+\.[0-9a-f]{{16}}\.tmp"
_LOCK = rf"\.{_KEY}\.lock"
_INDEX_RECORD = r"[0-9a-f]{64}"


@functools.cache
def pattern(source: str) -> re.Pattern[str]:
    """``source`` compiled once, when first used (compiling at import costs every start)."""
    return re.compile(source)


#: The algorithm an entry name's digest is read as, by its length (as ModuleHash.parse).
_ALGORITHM_OF_HEX = {n: ModuleHash.parse("0" * n).algorithm for n in (16, 64)}
PRUNE_LOCK = ".prune.lock"
PRUNE_STAMP = ".last-prune"
INDEX_FOLDER = "index"
INDEX_LOG = "records"
METRICS = ".metrics"
METRICS_LOCK = ".metrics.lock"
CHECKED = ".checked"


# -- building --------------------------------------------------------------------------


def entry_path(cache_dir: bytes, engine_id: str, key: ModuleHash) -> str:
    """``<cache_dir>/<engine id>-v<N>/<HASH>.bin``."""
    raw = _core.cache_path(cache_dir, engine_id.encode("ascii"), ARTIFACT_VERSION, key.digest)
    return os.fsdecode(raw)


def temp_path(target: str) -> str:
    """A fresh temp name beside ``target``, for writing it: ``.<name>.<pid>.<16 hex>.tmp``."""
    suffix = int.from_bytes(os.urandom(8), "little")
    return os.fsdecode(_core.temp_path(os.fsencode(target), os.getpid(), suffix))


def lock_path(entry: str) -> str:
    """The compile lock of an entry: ``<engine folder>/.<HASH>.lock``."""
    folder, name = os.path.split(entry)
    return os.path.join(folder, f".{name[: -len('.bin')]}.lock")


def prune_lock_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, PRUNE_LOCK)


def prune_stamp_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, PRUNE_STAMP)


def checked_path(cache_dir: str) -> str:
    """``<cache_dir>/.checked``: the entries whose checksum passed this boot."""
    return os.path.join(cache_dir, CHECKED)


def index_folder(cache_dir: str) -> str:
    return os.path.join(cache_dir, INDEX_FOLDER)


def index_log_path(cache_dir: str) -> str:
    """Where direct mode keeps the keys of file stamps: ``<cache_dir>/index/records``."""
    return os.path.join(cache_dir, INDEX_FOLDER, INDEX_LOG)


def metrics_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, METRICS)


def metrics_lock_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, METRICS_LOCK)


def object_name(prefix: str, engine_id: str, key: ModuleHash, *, lease: bool = False) -> str:
    """``<prefix>/<engine id>-v<N>/<HASH>.bin`` (or ``.lease``) in a bucket: the entry's
    path relative to a cache folder, from the same builder."""
    relative = entry_path(b".", engine_id, key)[2:]  # drop "./"
    if lease:
        relative = relative[: -len(".bin")] + ".lease"
    return f"{prefix}/{relative}" if prefix else relative


# -- recognising -----------------------------------------------------------------------


def is_engine_folder(name: str) -> bool:
    return pattern(_ENGINE_FOLDER).fullmatch(name) is not None


def entry_key(name: str) -> Optional[ModuleHash]:
    """The key an entry file name stands for, or None if ``name`` is not an entry's."""
    match = pattern(_ENTRY).fullmatch(name)
    if match is None:
        return None
    digest = match.group(1)  # hex digits of a known length: checked by the pattern
    return ModuleHash(_ALGORITHM_OF_HEX[len(digest)], bytes.fromhex(digest))


def is_entry(name: str) -> bool:
    return pattern(_ENTRY).fullmatch(name) is not None


def is_temp(name: str) -> bool:
    return pattern(_TEMP).fullmatch(name) is not None


def is_lock(name: str) -> bool:
    return pattern(_LOCK).fullmatch(name) is not None


def is_index_record(name: str) -> bool:
    return pattern(_INDEX_RECORD).fullmatch(name) is not None
