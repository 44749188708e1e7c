"""Code that runs in child processes of the reliability tests (importable under spawn)."""

from __future__ import annotations

import os
import random
import sys
import time
import traceback

import wasmtime

import wasmcache as wc
from wasmcache import synth

# Modules the stress workers share: (data bytes, seed). Different seeds give different keys;
# the large one makes torn reads likely if writes were not atomic.
STRESS_MODULES = [(0, 1), (4096, 2), (2 << 20, 3), (6 << 20, 4)]


def check_module(engine: wasmtime.Engine, module: wasmtime.Module, wasm: bytes, size: int):
    """Instantiate and check exports: add, and the last data byte through probe."""
    store = wasmtime.Store(engine)
    exports = wasmtime.Instance(store, module, []).exports(store)
    assert exports["add"](store, 40, 2) == 42
    if size:
        assert exports["probe"](store, size - 1) == wasm[-1]


def stress_worker(cache_dir: str, seconds: float, seed: int, results) -> None:
    """Save and load the shared modules at random until the deadline; report counts or
    the first failure."""
    try:
        rng = random.Random(seed)
        engine = wasmtime.Engine()
        cache = wc.FileSystemCache(cache_dir)
        modules = []
        for size, module_seed in STRESS_MODULES:
            wasm = synth.data_module(size, seed=module_seed)
            modules.append((wc.ModuleHash.sha256(wasm), wasm, size, None))
        counts = {"save": 0, "hit": 0, "miss": 0}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            index = rng.randrange(len(modules))
            key, wasm, size, compiled = modules[index]
            if rng.random() < 0.4:
                if compiled is None:
                    compiled = wasmtime.Module(engine, wasm)
                    modules[index] = (key, wasm, size, compiled)
                cache.save(key, engine, compiled)
                counts["save"] += 1
            else:
                try:
                    loaded = cache.load(key, engine)
                except wc.NotFound:
                    counts["miss"] += 1
                    continue
                check_module(engine, loaded, wasm, size)
                counts["hit"] += 1
        results.put(("ok", os.getpid(), counts))
    except BaseException:
        results.put(("error", os.getpid(), traceback.format_exc()))


def save_forever(cache_dir: str, artifact_path: str, key_text: str) -> None:
    """Save one module again and again, as after a miss, until killed (SIGKILL test).
    ``key_text`` is ``ALGORITHM:HEX`` (64 hex digits alone would not say which hash)."""
    engine = wasmtime.Engine()
    module = wasmtime.Module.deserialize_file(engine, artifact_path)
    cache = wc.FileSystemCache(cache_dir)
    algorithm, digits = key_text.split(":")
    key = wc.ModuleHash.parse(digits, algorithm)
    path = cache.path(key, engine)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        # An identical entry would be kept as it is: remove it so every save writes.
        if path.exists():
            path.unlink()
        cache.save(key, engine, module)


if __name__ == "__main__":
    save_forever(*sys.argv[1:4])
