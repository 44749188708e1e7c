"""load_or_compile, MemoryCache, FallbackCache, default_cache_dir, pruning."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap
import time
import weakref

import pytest
import wasmtime

import support
import wasmcache as wc
from conftest import WINDOWS, call_add
from wasmcache import synth
from wasmcache.hashing import DEFAULT_ALGORITHM


def default_key(data: bytes) -> wc.ModuleHash:
    """The key load_or_compile computes for ``data``."""
    return wc.ModuleHash.of(DEFAULT_ALGORITHM, data)


class Failing(wc.ModuleCache):
    """A cache whose every operation fails."""

    def load(self, key, engine, *, kind=None):
        raise wc.FileReadError("boom", "/nowhere")

    def save(self, key, engine, module, *, origin=None):
        raise wc.FileWriteError("boom", "/nowhere")

    def contains(self, key, engine):
        return False


# -- load_or_compile ------------------------------------------------------------------------------


def test_load_or_compile_miss_then_hit(cache, engine, add_wasm, caplog):
    key = default_key(add_wasm)
    with caplog.at_level(logging.DEBUG, logger="wasmcache"):
        first = cache.load_or_compile(engine, add_wasm)
    assert call_add(engine, first) == 5
    assert cache.contains(key, engine)
    assert any(r.getMessage().startswith("saved") for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="wasmcache"):
        second = cache.load_or_compile(engine, add_wasm)
    assert call_add(engine, second) == 5
    assert not any(r.getMessage().startswith("saved") for r in caplog.records)


def test_load_or_compile_from_path_and_custom_key(cache, engine, add_wasm, tmp_path):
    path = tmp_path / "add.wasm"
    path.write_bytes(add_wasm)
    key = wc.ModuleHash.xxhash(add_wasm)  # the caller's choice of key
    assert call_add(engine, cache.load_or_compile(engine, path, key=key)) == 5
    assert call_add(engine, cache.load_or_compile(engine, str(path), key=key)) == 5
    assert cache.contains(key, engine)
    assert not cache.contains(default_key(add_wasm), engine)


def test_load_or_compile_replaces_corrupt_entry(cache, engine, add_wasm):
    key = default_key(add_wasm)
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 10)
    assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    assert call_add(engine, cache.load(key, engine)) == 5


def test_load_or_compile_survives_a_failing_save(engine, add_wasm, caplog):
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        module = Failing().with_fallback(wc.MemoryCache()).load_or_compile(engine, add_wasm)
    assert call_add(engine, module) == 5
    assert "could not cache" in caplog.text


def test_load_or_compile_bad_input(cache, engine):
    with pytest.raises(TypeError):
        cache.load_or_compile(engine, 12345)  # type: ignore[arg-type]
    with pytest.raises(wasmtime.WasmtimeError):
        cache.load_or_compile(engine, b"not wasm")


def test_aload_or_compile(cache, engine, add_wasm):
    module = asyncio.run(cache.aload_or_compile(engine, add_wasm))
    assert call_add(engine, module) == 5


def test_concurrent_misses_compile_once_across_processes(tmp_path):
    """Several processes miss the same key at once: exactly one compiles and saves."""
    wasm_path = tmp_path / "slow.wasm"
    wasm_path.write_bytes(synth.data_module(1 << 20, functions=3000, seed=11))
    script = support.RACE_PRELUDE + textwrap.dedent(f"""
        import logging, sys, wasmtime, wasmcache as wc
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
        cache = wc.FileSystemCache({str(tmp_path / "cache")!r})
        engine = wasmtime.Engine()
        module = cache.load_or_compile(engine, {str(wasm_path)!r})
        store = wasmtime.Store(engine)
        assert wasmtime.Instance(store, module, []).exports(store)["add"](store, 1, 2) == 3
    """)
    done = support.race(script, 4, tmp_path / "go", timeout=120)
    assert all(d.returncode == 0 for d in done), [d.stdout + d.stderr for d in done]
    outputs = [d.stdout for d in done]
    saves = sum(line.startswith("saved") for out in outputs for line in out.splitlines())
    hits = sum(line.startswith("hit") for out in outputs for line in out.splitlines())
    print(f"\n4 processes: {saves} compile+save, {hits} hits")
    assert saves == 1
    assert hits == 3


def test_compile_lock_is_released_when_the_holder_dies(tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path)
    key = default_key(add_wasm)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time, wasmtime, wasmcache as wc
            cache = wc.FileSystemCache({str(tmp_path)!r})
            key = wc.ModuleHash.parse({str(key)!r})
            with cache.compile_lock(key, wasmtime.Engine()):
                print("locked", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    holder.kill()
    holder.wait()
    start = time.monotonic()
    assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    assert time.monotonic() - start < 10


# -- MemoryCache and FallbackCache -----------------------------------------------------------------


def test_memory_cache(engine, add_module, key):
    mem = wc.MemoryCache()
    assert not mem.contains(key, engine)
    with pytest.raises(wc.NotFound):
        mem.load(key, engine)
    mem.save(key, engine, add_module)
    assert mem.load(key, engine) is add_module
    assert mem.contains(key, engine)
    other = wasmtime.Engine(_config(cranelift_opt_level="none"))
    assert not mem.contains(key, other)


def test_a_dropped_memory_cache_is_freed(engine, add_module, key):
    """Nothing the Engine holds refers to a MemoryCache that saved one of its modules."""
    for max_entries in (None, 2):
        caches = []
        for _ in range(200):
            mem = wc.MemoryCache(max_entries=max_entries)
            mem.save(key, engine, add_module)
            caches.append(weakref.ref(mem))
        del mem
        gc.collect()
        assert [c for c in caches if c() is not None] == []


def test_memory_cache_lru_after_an_engine_is_gone(add_wasm, engine, add_module):
    """The use-order slots of a dead Engine are dropped as they come up for eviction, so
    the live entries stay within max_entries and a later Engine is served."""
    mem = wc.MemoryCache(max_entries=2)
    keys = [default_key(bytes([i])) for i in range(4)]
    other = wasmtime.Engine()
    gone = weakref.ref(other)
    mem.save(keys[0], other, wasmtime.Module(other, add_wasm))
    mem.save(keys[1], other, wasmtime.Module(other, add_wasm))
    del other
    gc.collect()
    assert gone() is None and len(mem) == 0
    mem.save(keys[2], engine, add_module)
    mem.save(keys[3], engine, add_module)
    mem.load(keys[2], engine)
    mem.save(keys[0], engine, add_module)  # evicts keys[3], the least recently used
    assert [mem.contains(k, engine) for k in keys] == [True, False, True, False]
    assert len(mem) == 2


def _config(**settings) -> wasmtime.Config:
    config = wasmtime.Config()
    for name, value in settings.items():
        setattr(config, name, value)
    return config


def test_memory_cache_lru(engine, add_module):
    mem = wc.MemoryCache(max_entries=2)
    keys = [default_key(bytes([i])) for i in range(3)]
    mem.save(keys[0], engine, add_module)
    mem.save(keys[1], engine, add_module)
    mem.load(keys[0], engine)  # 0 is now the most recently used
    mem.save(keys[2], engine, add_module)
    assert mem.contains(keys[0], engine)
    assert not mem.contains(keys[1], engine)
    assert mem.contains(keys[2], engine)
    assert len(mem) == 2
    with pytest.raises(ValueError):
        wc.MemoryCache(max_entries=0)


def test_fallback_promotes_hits(cache, engine, add_module, key):
    mem = wc.MemoryCache()
    stack = mem.with_fallback(cache)
    assert isinstance(stack, wc.FallbackCache)
    cache.save(key, engine, add_module)
    assert not mem.contains(key, engine)
    assert stack.contains(key, engine)
    assert call_add(engine, stack.load(key, engine)) == 5
    assert mem.contains(key, engine)


def test_fallback_save_writes_both_and_miss_raises(cache, engine, add_module, key):
    mem = wc.MemoryCache()
    stack = mem.with_fallback(cache)
    with pytest.raises(wc.NotFound):
        stack.load(key, engine)
    stack.save(key, engine, add_module)
    assert mem.contains(key, engine) and cache.contains(key, engine)


def test_fallback_promotion_failure_only_logs(cache, engine, add_module, key, caplog):
    cache.save(key, engine, add_module)
    stack = Failing().with_fallback(cache)
    with caplog.at_level(logging.WARNING, logger="wasmcache"):
        assert call_add(engine, stack.load(key, engine)) == 5
    assert "could not promote" in caplog.text


def test_fallback_save_failure_still_writes_the_other(cache, engine, add_module, key):
    stack = Failing().with_fallback(cache)
    with pytest.raises(wc.FileWriteError):
        stack.save(key, engine, add_module)
    assert cache.contains(key, engine)


def test_fallback_uses_the_shared_lock(cache):
    stack = wc.MemoryCache().with_fallback(cache)
    assert stack.lock_scope == 1


# -- default folder ------------------------------------------------------------------------


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WASMCACHE_DIR", str(tmp_path / "env-cache"))
    assert wc.default_cache_dir() == tmp_path / "env-cache"
    assert wc.FileSystemCache().cache_dir == tmp_path / "env-cache"


def test_default_cache_dir_platform(monkeypatch, tmp_path, engine, add_module, key):
    monkeypatch.delenv("WASMCACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = wc.default_cache_dir()
    if WINDOWS:
        # platformdirs' rule there: %LOCALAPPDATA%\wasmcache\Cache, from the shell (not from
        # the environment, so not saved into here: it is the user's own cache).
        assert (folder.parent.name, folder.name) == ("wasmcache", "Cache")
        assert wc.FileSystemCache().cache_dir == folder
        return
    assert folder.name == "wasmcache"
    cache = wc.FileSystemCache()
    cache.save(key, engine, add_module)
    assert (folder.stat().st_mode & 0o777) == 0o700


# -- eviction ------------------------------------------------------------------------


def _fill(cache, engine, count):
    keys = []
    for i in range(count):
        wasm = synth.data_module(64 << 10, seed=100 + i)
        key = default_key(wasm)
        cache.save(key, engine, wasmtime.Module(engine, wasm))
        assert cache.wait_housekeeping(timeout=60)  # automatic pruning, if any
        keys.append(key)
    return keys


def test_prune_removes_least_recently_used(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path)
    keys = _fill(cache, engine, 4)
    now = time.time()
    for age, key in zip((400, 300, 200, 100), keys):
        path = cache.path(key, engine)
        os.utime(path, (now - age, path.stat().st_mtime))
    cache.touch_interval = 0
    cache.load(keys[0], engine)  # the oldest becomes the newest
    size = cache.path(keys[0], engine).stat().st_size
    removed = cache.prune(max_bytes=2 * size + size // 2)
    assert [e.key for e in removed] == [keys[1], keys[2]]
    assert cache.contains(keys[0], engine) and cache.contains(keys[3], engine)
    assert not cache.contains(keys[1], engine)


def test_prune_keeps_loaded_modules_valid(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path)
    wasm = synth.data_module(1 << 20, seed=9)
    key = default_key(wasm)
    cache.save(key, engine, wasmtime.Module(engine, wasm))
    module = cache.load(key, engine)
    cache.prune(max_bytes=0)
    assert cache.entries() == []
    store = wasmtime.Store(engine)
    probe = wasmtime.Instance(store, module, []).exports(store)["probe"]
    assert probe(store, (1 << 20) - 1) == wasm[-1]


def test_prune_removes_empty_engine_folders_and_ignores_strangers(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path)
    keys = _fill(cache, engine, 2)
    old = tmp_path / "wasmtime-0.1-deadbeef-v1"
    old.mkdir()
    engine_dir = cache.path(keys[0], engine).parent
    strangers = [
        tmp_path / "README",  # not an engine folder's name
        tmp_path / "notes" / "0123456789ABCDEF.bin",  # an entry's name, outside engine folders
        engine_dir / "notes.txt",  # not an entry's name
        engine_dir / "0123456789abcdef.bin",  # lowercase: not a name wasmcache writes
    ]
    for stranger in strangers:
        stranger.parent.mkdir(exist_ok=True)
        stranger.write_text("not wasmcache's")
    removed = cache.prune(max_bytes=0)
    assert len(removed) == 2 and cache.entries() == []
    assert not old.exists()
    assert engine_dir.is_dir()  # still holds strangers, so not removed
    for stranger in strangers:
        assert stranger.read_text() == "not wasmcache's", stranger


def test_automatic_prune_after_save(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path, max_bytes=300_000, prune_interval=0)
    keys = _fill(cache, engine, 5)
    assert cache.wait_housekeeping(timeout=60)
    total = sum(e.size for e in cache.entries())
    assert total <= 300_000
    assert cache.contains(keys[-1], engine)


def test_automatic_prune_at_most_once_per_interval(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path, max_bytes=1, prune_interval=3600)
    keys = _fill(cache, engine, 3)
    # The first save pruned (leaving only what it just wrote); later ones did not.
    assert [cache.contains(k, engine) for k in keys] == [False, True, True]


def test_entries_ignore_foreign_names(cache, engine, add_module, key):
    cache.save(key, engine, add_module)
    folder = cache.path(key, engine).parent
    (folder / "0123456789abcdef.bin").write_text("lowercase: not an entry name")
    (folder / "foo.bin").write_text("x")
    (cache.cache_dir / "0123456789ABCDEF.bin").write_text("outside an engine folder")
    assert [e.key.digest for e in cache.entries()] == [key.digest]


def test_verify_entries(cache, engine, add_module, key):
    cache.save(key, engine, add_module)
    other = default_key(b"other")
    bad_path = cache.path(other, engine)
    bad_path.write_bytes(cache.path(key, engine).read_bytes()[:-30] + b"\0" * 30)
    bad = cache.verify_entries()
    assert [e.key.digest for e, _ in bad] == [other.digest]
    assert bad_path.exists()
    cache.verify_entries(fix=True)
    assert not bad_path.exists()
    assert cache.verify_entries() == []
