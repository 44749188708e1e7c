"""Counters: each one, in-process and summed across processes in the cache folder, the
Prometheus text, and a metrics file that cannot be trusted."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import wasmtime
from hypothesis import given
from hypothesis import strategies as st

import wasmcache as wc
from conftest import WINDOWS, call_add
from wasmcache import metrics, names, synth
from wasmcache.hashing import DEFAULT_ALGORITHM


def default_key(data: bytes) -> wc.ModuleHash:
    return wc.ModuleHash.of(DEFAULT_ALGORITHM, data)


def test_a_miss_a_compile_and_a_hit_are_counted(tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    size = cache.path(default_key(add_wasm), engine).stat().st_size
    seconds = cache.describe(cache.entries()[0]).compile_seconds
    after_miss = cache.metrics()
    assert after_miss["filesystem"]["misses"] == 2  # before the lock and under it
    assert after_miss["filesystem"]["hits"] == 0
    assert after_miss["filesystem"]["bytes_written"] == size
    assert after_miss["compile"]["compiles"] == 1
    assert after_miss["compile"]["compile_seconds"] > 0
    assert call_add(engine, cache.load_or_compile(engine, add_wasm)) == 5
    after_hit = cache.metrics()["filesystem"]
    assert after_hit["hits"] == 1 and after_hit["bytes_read"] == size
    assert after_hit["saved_seconds"] == pytest.approx(seconds)
    assert cache.metrics()["compile"]["compiles"] == 1


def test_a_removed_corrupt_entry_is_counted(tmp_path, engine, add_wasm, add_module):
    cache = wc.FileSystemCache(tmp_path / "c")
    key = default_key(add_wasm)
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(wc.DeserializeError):
        cache.load(key, engine)
    assert cache.metrics()["filesystem"]["corrupt_removed"] == 1


def test_a_stack_sums_its_parts_and_memory_hits_save_the_recorded_seconds(
    tmp_path, engine, add_wasm
):
    disk = wc.FileSystemCache(tmp_path / "c")
    disk.load_or_compile(engine, add_wasm)
    recorded = disk.describe(disk.entries()[0]).compile_seconds
    memory = wc.MemoryCache()
    stack = memory.with_fallback(disk)
    for _ in range(3):
        assert call_add(engine, stack.load_or_compile(engine, add_wasm)) == 5
    values = stack.metrics()
    assert values["memory"]["misses"] == 1 and values["memory"]["hits"] == 2
    assert values["memory"]["saved_seconds"] == pytest.approx(2 * recorded)
    assert values["filesystem"]["hits"] == 1
    assert values["compile"]["compiles"] == 1  # the disk cache's own, summed in
    assert memory.metrics()["memory"]["hits"] == 2


def test_a_memory_cache_refuses_a_bad_origin(engine, add_wasm, add_module):
    memory = wc.MemoryCache()
    with pytest.raises(TypeError, match="origin"):
        memory.save(default_key(add_wasm), engine, add_module, origin="app.wasm")  # type: ignore[arg-type]
    assert not memory.contains(default_key(add_wasm), engine)


def test_counters_refuse_unknown_names_and_bad_amounts():
    counters = metrics.Counters("memory")
    with pytest.raises(ValueError, match="no counter"):
        counters.add("bytes_read")  # not a memory tier counter
    with pytest.raises(ValueError, match="only grows"):
        counters.add("hits", -1)
    with pytest.raises(ValueError, match="only grows"):
        counters.add("saved_seconds", math.inf)
    with pytest.raises(TypeError):
        counters.add("hits", True)
    with pytest.raises(ValueError, match="unknown tier"):
        metrics.Counters("disk")


def test_the_remote_tier_counts_through_the_module_functions():
    class Remote:
        metrics_tier = "remote"

    remote = Remote()
    for name in ("downloads", "uploads", "refusals", "downloads"):
        metrics.count(remote, name)
    metrics.counters(remote).hit(10, 1.5)
    values = metrics.of(remote)["remote"]
    assert (values["downloads"], values["uploads"], values["refusals"]) == (2, 1, 1)
    assert (values["hits"], values["bytes_read"], values["saved_seconds"]) == (1, 10, 1.5)


# -- across processes -------------------------------------------------------------------

_USE = textwrap.dedent(
    """
    import sys, wasmtime, wasmcache as wc
    cache = wc.FileSystemCache(sys.argv[1])
    cache.load_or_compile(wasmtime.Engine(), bytes.fromhex(sys.argv[2]))
    """
)


def _stats(folder, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasmcache", "--cache-dir", str(folder), "stats", *extra],
        capture_output=True,
        text=True,
    )


def test_stats_sums_the_counters_of_two_processes(tmp_path, add_wasm):
    folder = tmp_path / "c"
    for _ in range(2):  # the first compiles, the second hits; each flushes at exit
        done = subprocess.run(
            [sys.executable, "-c", _USE, str(folder), add_wasm.hex()],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    done = _stats(folder, "--json")
    assert done.returncode == 0, done.stderr
    counted = json.loads(done.stdout)["metrics"]
    assert counted["compile"]["compiles"] == 1
    assert counted["filesystem"]["hits"] == 1
    assert counted["filesystem"]["misses"] == 2
    entry_size = json.loads(done.stdout)["bytes"]
    assert counted["filesystem"]["bytes_written"] == entry_size
    assert counted["filesystem"]["bytes_read"] == entry_size


# -- Prometheus -------------------------------------------------------------------------

_SAMPLE = re.compile(r'([a-z_]+)\{tier="([a-z]+)"\} (\S+)')


def _parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Every sample of the text format, checked line by line: HELP, then TYPE counter,
    then the samples of that metric."""
    assert text.endswith("\n")
    values: dict[str, dict[str, float]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current.startswith("wasmcache_") and current.endswith("_total")
            continue
        if line.startswith("# TYPE "):
            assert line.split()[2:] == [current, "counter"]
            continue
        match = _SAMPLE.fullmatch(line)
        assert match is not None, line
        assert match.group(1) == current
        name = current[len("wasmcache_") : -len("_total")]
        values.setdefault(match.group(2), {})[name] = float(match.group(3))
    return values


def test_prometheus_text_parses_back_to_the_counters(tmp_path, engine, add_wasm):
    stack = wc.MemoryCache().with_fallback(wc.FileSystemCache(tmp_path / "c"))
    for _ in range(2):
        stack.load_or_compile(engine, add_wasm)
    values = stack.metrics()
    parsed = _parse_prometheus(metrics.prometheus_text(values))
    assert parsed == {
        tier: {k: float(v) for k, v in counts.items()} for tier, counts in values.items()
    }
    with pytest.raises(ValueError):
        metrics.prometheus_text(values, prefix="bad prefix")


def test_stats_prints_prometheus_text(tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.flush_metrics()
    done = _stats(cache.cache_dir, "--format", "prometheus")
    assert done.returncode == 0, done.stderr
    parsed = _parse_prometheus(done.stdout)
    assert parsed["compile"]["compiles"] == 1.0
    assert parsed["filesystem"]["bytes_written"] > 0


# -- a metrics file that cannot be trusted ----------------------------------------------

_HEADER = b"wasmcache-metrics 1\n"

BAD_FILES = {
    "garbage": b"\xff\xfe not text",
    "empty": b"",
    "no header": b"memory.hits 1\n",
    "other format": b"wasmcache-metrics 2\nmemory.hits 1\n",
    "the JSON of another version": json.dumps(
        {"format": "wasmcache-metrics", "version": 1, "counters": {}}
    ).encode(),
    "unknown tier": _HEADER + b"disk.hits 1\n",
    "counter of another tier": _HEADER + b"memory.downloads 1\n",
    "no value": _HEADER + b"memory.hits\n",
    "two spaces": _HEADER + b"memory.hits  1\n",
    "negative": _HEADER + b"memory.hits -1\n",
    "leading plus": _HEADER + b"memory.hits +1\n",
    "underscores": _HEADER + b"memory.hits 1_000\n",
    "float count": _HEADER + b"memory.hits 1.5\n",
    "seconds not a number": _HEADER + b"compile.compile_seconds nan\n",
    "seconds infinite": _HEADER + b"compile.compile_seconds 1e999\n",
    "seconds negative": _HEADER + b"compile.compile_seconds -0.5\n",
    "seconds of two points": _HEADER + b"compile.compile_seconds 1.2.3\n",
    "huge integer": _HEADER + b"memory.hits " + b"9" * 400 + b"\n",
    "at 2^63": _HEADER + b"memory.hits 9223372036854775808\n",
    "non-ASCII digits": _HEADER + "memory.hits \u0661\n".encode(),
    "last line cut": _HEADER + b"memory.hits 1",
    "key twice": _HEADER + b"memory.hits 1\nmemory.hits 2\n",
    "too large": _HEADER + b"memory.hits 1\n" * (metrics.FILE_LIMIT // 14 + 1),
}


@given(
    st.dictionaries(
        st.sampled_from(sorted(metrics.TIERS)),
        st.fixed_dictionaries(
            {},
            optional={
                name: st.floats(0, 2.0**62, allow_nan=False)
                if name in metrics.SECONDS
                else st.integers(0, (1 << 63) - 1)
                for name in metrics.COUNTERS
            },
        ),
    )
)
def test_the_file_format_reads_back_what_it_wrote(drawn):
    values = {
        tier: {name: v for name, v in counts.items() if name in metrics.TIERS[tier]}
        for tier, counts in drawn.items()
    }
    values = {tier: counts for tier, counts in values.items() if counts}
    read = metrics.parse(metrics.dump(values))
    assert read == values
    assert all(
        type(v) is (float if name in metrics.SECONDS else int)
        for counts in read.values()
        for name, v in counts.items()
    )


def test_reading_the_file_imports_no_json(tmp_path):
    """Start-up cost: the flush at exit and stats read the file without a JSON parser."""
    (tmp_path / "c").mkdir(mode=0o700)
    code = (
        "import sys\n"
        "from wasmcache import metrics\n"
        f"f = metrics.MetricsFile({str(tmp_path / 'c')!r})\n"
        "f.add({'memory': {'hits': 2}}); f.add({'memory': {'hits': 3}})\n"
        "assert f.read() == {'memory': {'hits': 5}}, f.read()\n"
        "print(sorted(m for m in ('json', 'wasmcache.schema') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("flaw", sorted(BAD_FILES))
def test_a_bad_metrics_file_is_refused_and_then_replaced(flaw, tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.wait_housekeeping(timeout=60)  # the save's flush is done
    (cache.cache_dir / names.METRICS).write_bytes(BAD_FILES[flaw])
    done = _stats(cache.cache_dir, "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "metrics not shown" in done.stderr
    shown = json.loads(done.stdout)
    assert shown["metrics_refused"] and shown["metrics"]["filesystem"]["hits"] == 0
    cache.load_or_compile(engine, add_wasm)  # a hit: one more to flush
    assert cache.flush_metrics()  # replaced by one that holds what was counted since
    assert metrics.MetricsFile(str(cache.cache_dir)).read()["filesystem"]["hits"] == 1


def test_a_metrics_file_behind_a_link_is_not_read(tmp_path, engine, add_wasm):
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.wait_housekeeping(timeout=60) and cache.flush_metrics()
    real = cache.cache_dir / names.METRICS
    elsewhere = tmp_path / "elsewhere"
    real.rename(elsewhere)
    real.symlink_to(elsewhere)
    with pytest.raises(metrics.BadMetrics, match="symbolic link"):
        metrics.MetricsFile(str(cache.cache_dir)).read()
    done = _stats(cache.cache_dir)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "metrics not shown" in done.stderr


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="Windows: no POSIX users"
    if sys.platform == "win32"
    else "plants a file as another user",
)
def test_a_metrics_file_of_another_user_is_not_read(tmp_path, engine, add_wasm):
    import pwd

    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.wait_housekeeping(timeout=60) and cache.flush_metrics()
    nobody = pwd.getpwnam("nobody")
    os.chown(cache.cache_dir / names.METRICS, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(metrics.BadMetrics, match="owned by uid"):
        metrics.MetricsFile(str(cache.cache_dir)).read()


def test_a_flush_without_a_cache_folder_writes_nothing(tmp_path):
    counters = metrics.Counters("filesystem")
    counters.keep_in(metrics.MetricsFile(str(tmp_path / "none")))
    counters.add("hits")
    assert counters.flush()
    assert not (tmp_path / "none").exists()


def test_a_hit_costs_no_file_work(tmp_path, engine, add_wasm, monkeypatch):
    """Hits only count: nothing is flushed until a save or the exit."""
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.load_or_compile(engine, add_wasm)
    assert cache.wait_housekeeping(timeout=60)
    flushed = []
    monkeypatch.setattr(metrics.MetricsFile, "add", lambda self, delta: flushed.append(delta))
    for _ in range(3):
        cache.load_or_compile(engine, add_wasm)
    assert cache.wait_housekeeping(timeout=60)
    assert flushed == [] and cache.metrics()["filesystem"]["hits"] == 3


def test_saves_flush_the_counters_in_the_background(tmp_path, engine, monkeypatch):
    cache = wc.FileSystemCache(tmp_path / "c")
    wasm = synth.data_module(16 << 10, seed=3)
    cache.load_or_compile(engine, wasm)
    assert cache.wait_housekeeping(timeout=60)
    # A short-lived process leaves nothing running in the folder after its saves: the
    # counters wait for the exit, or for the interval of a long-lived process.
    assert metrics.MetricsFile(str(cache.cache_dir)).read() == {}
    monkeypatch.setattr(cache, "_metrics_due", 0.0)  # the interval has passed
    cache.save(wc.ModuleHash.sha256(wasm), engine, wasmtime.Module(engine, wasm))
    assert cache.wait_housekeeping(timeout=60)
    kept = metrics.MetricsFile(str(cache.cache_dir)).read()
    assert kept["compile"]["compiles"] == 1
    assert kept["filesystem"]["bytes_written"] == cache.metrics()["filesystem"]["bytes_written"]


def test_a_read_only_cache_costs_no_wait_at_exit(tmp_path, engine, add_wasm, monkeypatch):
    """A cache folder this process cannot write (a read-only mount, another user's folder)
    keeps no counters: the flush gives up at once instead of waiting for a lock file it
    can never create."""
    import subprocess

    if WINDOWS:
        pytest.skip("Windows: no mount command (a read-only mount)")
    if os.geteuid() != 0 or not shutil_which("mount"):
        pytest.skip("needs root to mount a read-only filesystem")
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cache = wc.FileSystemCache(mount / "c")
        cache.load_or_compile(engine, add_wasm)
        assert cache.wait_housekeeping(timeout=60) and cache.flush_metrics()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        reader = wc.FileSystemCache(mount / "c")
        reader.load_or_compile(engine, add_wasm)  # a hit: something to flush
        sleeps: list[float] = []
        monkeypatch.setattr(metrics.time, "sleep", sleeps.append)
        reader.flush_metrics()
        assert sleeps == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def shutil_which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None
