"""The layout of a cache folder: which names are engine folders, entries and temp files.

Listings only ever report names in these formats; anything else in a cache folder is
left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Union

from wasmcache.artifact import ENTRY_NAME, TEMP_NAME
from wasmcache.hashing import ModuleHash

ENGINE_FOLDER = re.compile(r"[A-Za-z0-9._-]+-v[0-9]+")
LOCK_NAME = re.compile(r"\.(?:[0-9A-F]{16}|[0-9A-F]{64})\.lock")


class CacheEntry(NamedTuple):
    """One entry file of a FileSystemCache."""

    path: Path
    engine_folder: str  # "<engine id>-v<format version>"
    key: ModuleHash
    size: int
    last_used: float  # seconds since the epoch (the file's access time, set on hits)


def scan(folder: Union[str, Path]) -> list[os.DirEntry[str]]:
    """The entries of a folder; empty if it is missing or unreadable."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def engine_folders(cache_dir: Union[str, Path]) -> list[os.DirEntry[str]]:
    """Engine folders of a cache (``<engine id>-v<N>``, real folders, not links)."""
    return [
        e
        for e in scan(cache_dir)
        if ENGINE_FOLDER.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    ]


def entries(cache_dir: Union[str, Path]) -> Iterator[CacheEntry]:
    """Every entry file of the cache, in no particular order."""
    for folder in engine_folders(cache_dir):
        for item in scan(folder.path):
            if not ENTRY_NAME.fullmatch(item.name):
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if not item.is_file(follow_symlinks=False):
                continue
            yield CacheEntry(
                Path(item.path),
                folder.name,
                ModuleHash.parse(item.name[: -len(".bin")]),
                info.st_size,
                info.st_atime,
            )


def temp_files(cache_dir: Union[str, Path]) -> Iterator[os.DirEntry[str]]:
    """Temp files of interrupted or running saves, and per-key lock files."""
    for folder in engine_folders(cache_dir):
        for item in scan(folder.path):
            if TEMP_NAME.fullmatch(item.name) or LOCK_NAME.fullmatch(item.name):
                yield item
