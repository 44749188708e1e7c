"""Shared fixtures: an engine, a small module exporting ``add``, a cache in a temp folder."""

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
