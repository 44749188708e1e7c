"""Housekeeping removes only the file it checked: a good entry renamed into place after the
check (by a concurrent save) stays, as it does for ``load``'s removal of a corrupt entry."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wasmcache as wc
from conftest import call_add
from wasmcache import maintenance, safefs


def _good_copy(cache: wc.FileSystemCache, path: Path) -> Path:
    """A whole, good copy of the entry at ``path`` under another name in its folder (what a
    concurrent save renames into place)."""
    spare = path.with_name("spare")
    shutil.copyfile(path, spare)
    spare.chmod(0o600)
    return spare


def _corrupt(path: Path) -> None:
    """Put a corrupt entry at ``path`` (a new file, as a torn write would leave)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = path.with_name("bad")
    bad.write_bytes(bytes(data))
    bad.chmod(0o600)
    os.replace(bad, path)


def test_verify_fix_keeps_a_good_entry_renamed_in_after_the_check(
    cache, key, engine, add_module, monkeypatch
):
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    spare = _good_copy(cache, path)
    _corrupt(path)
    checked = maintenance._problem

    def check_then_save(*args: object) -> tuple[object, object]:
        answer = checked(*args)  # type: ignore[arg-type]
        os.replace(spare, path)  # a concurrent save lands between check and removal
        return answer

    monkeypatch.setattr(maintenance, "_problem", check_then_save)
    ((found, reason),) = cache.verify_entries(fix=True)
    assert found.path == path and "checksum" in reason
    monkeypatch.undo()
    assert path.exists(), "the good entry renamed into place was removed"
    assert call_add(engine, cache.load(key, engine)) == 5
    assert cache.verify_entries() == []


def _listing_then_save(
    monkeypatch: pytest.MonkeyPatch, path: Path, spare: Path, name: str = "_at_entry_names"
) -> None:
    """Make the listing of ``name`` finish, then rename ``spare`` over ``path``."""
    listing = getattr(maintenance, name)

    def listed_then_saved(*args: object) -> Iterator[object]:
        items = list(listing(*args))
        os.replace(spare, path)
        yield from items

    monkeypatch.setattr(maintenance, name, listed_then_saved)


def _one_pass_then_save(monkeypatch: pytest.MonkeyPatch, path: Path, spare: Path) -> None:
    """Make prune's one pass over the folders finish, then rename ``spare`` over ``path``."""
    listing = maintenance._list

    def listed_then_saved(*args: Any, **kwargs: Any) -> Any:
        found = listing(*args, **kwargs)
        os.replace(spare, path)
        return found

    monkeypatch.setattr(maintenance, "_list", listed_then_saved)


def test_clear_keeps_a_good_entry_renamed_in_after_the_listing(
    cache, key, engine, add_module, monkeypatch
):
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    spare = _good_copy(cache, path)
    _listing_then_save(monkeypatch, path, spare)
    assert cache.clear() == 0  # the listed file was gone: replaced, not removed
    monkeypatch.undo()
    assert call_add(engine, cache.load(key, engine)) == 5


def test_prune_keeps_a_good_entry_renamed_in_after_the_listing(
    cache, key, engine, add_module, monkeypatch
):
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    spare = _good_copy(cache, path)
    _one_pass_then_save(monkeypatch, path, spare)
    assert cache.prune(0) == []
    monkeypatch.undo()
    assert call_add(engine, cache.load(key, engine)) == 5
    assert [e.path for e in cache.prune(0)] == [path]  # listed now: pruned
    assert not path.exists()


def test_cleanup_keeps_a_fresh_file_at_a_checked_temp_name(cache, key, engine, add_module):
    """A stale temp file's name taken by a new file after it was listed: the new one stays."""
    cache.save(key, engine, add_module)
    folder = cache.path(key, engine).parent
    stale = folder / f".{key}.bin.1.0123456789abcdef.tmp"
    stale.write_bytes(b"old")
    os.utime(stale, (1, 1))
    info = os.lstat(stale)
    newer = folder / "newer"
    newer.write_bytes(b"new")
    os.replace(newer, stale)
    assert not safefs.remove_checked(str(stale), info)
    assert stale.read_bytes() == b"new"
    assert safefs.remove_checked(str(stale), os.lstat(stale))
    assert not stale.exists()
