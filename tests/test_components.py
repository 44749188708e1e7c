"""Components cached as modules are: every tier, the entry's kind, and `wasmcache run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from support import command_component, split_entry
from wasmcache import kinds
from wasmcache.display import shown
from wasmcache.hashing import DEFAULT_ALGORITHM

pytestmark = pytest.mark.skipif(
    not kinds.components_supported(), reason="wasmtime-py before 40 has no components"
)


@pytest.fixture(scope="module")
def component_wasm() -> bytes:
    return command_component("hello from a component\n", 0)


def run_component(engine: wasmtime.Engine, component) -> str:
    """Run wasi:cli/run in-process, capturing the guest's stdout in a file."""
    from wasmtime.component import Linker

    return_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"component-out-{os.getpid()}"
    linker = Linker(engine)
    linker.add_wasip2()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(return_path)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, component)
    interface = instance.get_export_index(store, "wasi:cli/run@0.2.0")
    run = instance.get_func(store, instance.get_export_index(store, "run", interface))
    with pytest.raises(wasmtime.ExitTrap) as exit_:
        run(store)
    assert exit_.value.code == 0
    try:
        return return_path.read_text()
    finally:
        return_path.unlink()


def test_kind_of_wasm(component_wasm, add_wasm):
    assert kinds.of_wasm(component_wasm) == "component"
    assert kinds.of_wasm(add_wasm) == "module"
    assert kinds.of_wasm(b"garbage") == "module"  # wasmtime says what is wrong with it


def test_load_or_compile_caches_a_component(tmp_path, engine, component_wasm):
    cache = wc.FileSystemCache(tmp_path)
    first = cache.load_or_compile(engine, component_wasm)
    assert isinstance(first, kinds.component_class())
    key = wc.ModuleHash.of(DEFAULT_ALGORITHM, component_wasm)
    _, meta = split_entry(cache.path(key, engine).read_bytes())
    assert meta["kind"] == "component" and meta["wasm_size"] == len(component_wasm)
    assert meta["compile_seconds"] >= 0
    # a new engine and cache object, as a new process: a hit of the right type that runs
    fresh = wasmtime.Engine()
    loaded = wc.FileSystemCache(tmp_path).load(key, fresh)
    assert isinstance(loaded, kinds.component_class())
    assert run_component(fresh, loaded) == "hello from a component\n"


def test_component_from_a_path_keeps_its_name(tmp_path, engine, component_wasm):
    path = tmp_path / "hello.component.wasm"
    path.write_bytes(component_wasm)
    cache = wc.FileSystemCache(tmp_path / "cache")
    assert isinstance(cache.load_or_compile(engine, path), kinds.component_class())
    assert isinstance(cache.load_or_compile(engine, path), kinds.component_class())  # direct mode
    (found,) = cache.entries()
    info = cache.describe(found)
    assert info is not None and (info.kind, info.source) == ("component", path.name)


def test_asking_for_the_other_kind_is_a_clean_error(tmp_path, engine, component_wasm, add_wasm):
    cache = wc.FileSystemCache(tmp_path)
    component_key = wc.ModuleHash.sha256(component_wasm)
    module_key = wc.ModuleHash.sha256(add_wasm)
    cache.save(component_key, engine, kinds.compile(engine, component_wasm, "component"))
    cache.save(module_key, engine, wasmtime.Module(engine, add_wasm))
    with pytest.raises(wc.KindMismatch, match="holds a component, not a module"):
        cache.load(component_key, engine, kind="module")
    with pytest.raises(wc.KindMismatch, match="holds a module, not a component"):
        cache.load(module_key, engine, kind="component")
    assert cache.contains(component_key, engine)  # nothing removed for asking
    assert isinstance(cache.load(component_key, engine, kind="component"), kinds.component_class())
    memory = wc.MemoryCache()
    memory.save(component_key, engine, cache.load(component_key, engine))
    with pytest.raises(wc.KindMismatch):
        memory.load(component_key, engine, kind="module")
    with pytest.raises(TypeError):
        memory.save(module_key, engine, b"neither")  # type: ignore[arg-type]


def test_explicit_key_of_the_other_kind_compiles_instead(
    tmp_path, engine, component_wasm, add_wasm
):
    """An explicit key that names a module's entry, given a component's bytes: the
    mismatch is a miss (logged), the component is compiled and replaces the entry."""
    cache = wc.FileSystemCache(tmp_path)
    key = wc.ModuleHash.sha256(add_wasm)
    cache.save(key, engine, wasmtime.Module(engine, add_wasm))
    got = cache.load_or_compile(engine, component_wasm, key=key)
    assert isinstance(got, kinds.component_class())


def test_memory_and_fallback_tiers(tmp_path, engine, component_wasm):
    disk = wc.FileSystemCache(tmp_path)
    disk.load_or_compile(engine, component_wasm)
    stack = wc.MemoryCache().with_fallback(wc.FileSystemCache(tmp_path))
    first = stack.load_or_compile(engine, component_wasm)
    assert isinstance(first, kinds.component_class())
    assert stack.load_or_compile(engine, component_wasm) is first  # from memory now


def test_verify_ls_prune_see_components(tmp_path, engine, component_wasm, add_wasm):
    cache = wc.FileSystemCache(tmp_path)
    cache.load_or_compile(engine, component_wasm)
    cache.load_or_compile(engine, add_wasm)
    assert cache.verify_entries() == []
    assert sorted(cache.describe(e).kind for e in cache.entries()) == ["component", "module"]
    # a flipped byte in the metadata is caught by the checksum
    path = cache.path(wc.ModuleHash.of(DEFAULT_ALGORITHM, component_wasm), engine)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(data)
    ((bad, reason),) = cache.verify_entries()
    assert bad.path == path and "checksum" in reason
    assert len(cache.prune(0)) == 2 and cache.entries() == []


def wasmcache(*args, env, check_code=None):
    done = subprocess.run(
        [sys.executable, "-m", "wasmcache", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check_code is not None:
        assert done.returncode == check_code, done.stderr
    return done


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "WASMCACHE_DIR": str(tmp_path / "cli-cache")}


@pytest.mark.parametrize("status", [0, 1])
def test_run_a_command_component(tmp_path, env, status):
    path = tmp_path / "app.wasm"
    path.write_bytes(command_component(f"component says {status}\n", status))
    cold = wasmcache("run", path, env=env, check_code=status)
    assert cold.stdout == f"component says {status}\n"
    warm = wasmcache("run", path, env=env, check_code=status)
    assert warm.stdout == cold.stdout
    (row,) = json.loads(wasmcache("ls", "--json", env=env, check_code=0).stdout)
    assert (row["kind"], row["source"]) == ("component", "app.wasm")


def test_run_rejects_invoke_for_a_component(tmp_path, env):
    path = tmp_path / "app.wasm"
    path.write_bytes(command_component())
    done = wasmcache("run", "--invoke", "run", path, env=env, check_code=2)
    assert "wasi:cli/run" in done.stderr


def test_compile_then_library_hit(tmp_path, env, component_wasm):
    path = tmp_path / "app.wasm"
    path.write_bytes(component_wasm)
    wasmcache("compile", path, env=env, check_code=0)
    cache = wc.FileSystemCache(env["WASMCACHE_DIR"])
    key = wc.ModuleHash.of(DEFAULT_ALGORITHM, component_wasm)
    assert isinstance(cache.load(key, wasmtime.Engine(), kind="component"), kinds.component_class())


def _bare_component(body: str) -> bytes:
    """A component whose wasi:cli/run runs ``body`` (a core function body returning i32:
    0 for ok), importing an interface no host defines."""
    return bytes(
        wasmtime.wat2wasm(
            f"""
            (component
              (import "example:unknown/thing" (instance (export "f" (func))))
              (core module $M (func (export "run") (result i32) {body}))
              (core instance $m (instantiate $M))
              (func $run (result (result)) (canon lift (core func $m "run")))
              (instance $run-instance (export "run" (func $run)))
              (export "wasi:cli/run@0.2.0" (instance $run-instance)))
            """
        )
    )


def test_run_component_unknown_imports_and_traps(tmp_path, env):
    path = tmp_path / "unknown.wasm"
    path.write_bytes(_bare_component("i32.const 0"))
    done = wasmcache("run", path, env=env, check_code=1)
    assert f"wasmcache: error: failed to run {shown(path)}" in done.stderr
    assert "example:unknown/thing" in done.stderr and "Traceback" not in done.stderr
    wasmcache("run", "-W", "unknown-imports-trap=y", path, env=env, check_code=0)

    trapping = tmp_path / "trap.wasm"
    trapping.write_bytes(_bare_component("unreachable"))
    done = wasmcache("run", "-W", "unknown-imports-trap=y", trapping, env=env, check_code=134)
    assert f"failed to run {shown(trapping)}" in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
