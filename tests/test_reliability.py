"""Guarantees under concurrency, crashes, full disks and hostile files."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
import workers
from conftest import WINDOWS, windows_lacks
from wasmcache import names, synth, winsec

STRESS_SECONDS = float(os.environ.get("WASMCACHE_STRESS_SECONDS", "10"))
KILLS = int(os.environ.get("WASMCACHE_KILLS", "24"))


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if names.is_temp(p.name)]


# -- 1. concurrency -------------------------------------------------------------------------


def test_processes_saving_and_loading_the_same_keys(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [
        context.Process(
            target=workers.stress_worker, args=(str(tmp_path), STRESS_SECONDS, seed, results)
        )
        for seed in range(4)
    ]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=STRESS_SECONDS + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    errors = [r for r in reports if r[0] != "ok"]
    assert not errors, errors[0][2]
    totals = {k: sum(r[2][k] for r in reports) for k in ("save", "hit", "miss")}
    print(f"\n4 processes x {STRESS_SECONDS:g} s: {totals}")
    assert totals["save"] > 0 and totals["hit"] > 0
    assert temp_files(tmp_path) == []


def test_threads_sharing_one_cache(tmp_path, engine):
    cache = wc.FileSystemCache(tmp_path)
    modules = []
    for size, seed in workers.STRESS_MODULES:
        wasm = synth.data_module(size, seed=seed)
        modules.append((wc.ModuleHash.sha256(wasm), wasm, size, wasmtime.Module(engine, wasm)))
    failures: list[BaseException] = []
    counts = {"save": 0, "hit": 0, "miss": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + min(STRESS_SECONDS, 5)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < deadline:
                key, wasm, size, module = rng.choice(modules)
                if rng.random() < 0.4:
                    cache.save(key, engine, module)
                    op = "save"
                else:
                    try:
                        workers.check_module(engine, cache.load(key, engine), wasm, size)
                        op = "hit"
                    except wc.NotFound:
                        op = "miss"
                with lock:
                    counts[op] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, repr(failures[0])
    assert counts["save"] > 0 and counts["hit"] > 0


# -- 2. crashes ---------------------------------------------------------------------------------


def test_sigkill_during_saves_loses_nothing(tmp_path, engine):
    wasm = synth.data_module(48 << 20, seed=7)
    key = wc.ModuleHash.sha256(wasm)
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(wasmtime.Module(engine, wasm).serialize())
    cache_dir = tmp_path / "cache"
    cache = wc.FileSystemCache(cache_dir)
    rng = random.Random(1)
    interrupted = 0
    for _ in range(KILLS):
        before = len(temp_files(cache_dir))
        child = subprocess.Popen(
            [
                sys.executable,
                workers.__file__,
                str(cache_dir),
                str(artifact),
                f"{key.algorithm}:{key}",
            ],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        interrupted += len(temp_files(cache_dir)) > before
        try:
            module = cache.load(key, engine)
        except wc.NotFound:
            continue
        workers.check_module(engine, module, wasm, 48 << 20)
    print(f"\n{KILLS} kills, {interrupted} of them in the middle of writing a file")
    assert interrupted > 0, "no kill landed in the middle of a save"

    # Stale temp files are not entries, do not block a save, and cleanup removes them.
    stale = temp_files(cache_dir)
    assert stale and not any(names.entry_key(p.name) for p in stale)
    cache.save(key, engine, wasmtime.Module.deserialize_file(engine, str(artifact)))
    workers.check_module(engine, cache.load(key, engine), wasm, 48 << 20)
    assert cache.cleanup(older_than=3600) == 0
    old = time.time() - 7200
    for path in stale:
        os.utime(path, (old, old))
    assert cache.cleanup(older_than=3600) == len(stale)
    assert temp_files(cache_dir) == []
    assert cache.path(key, engine).exists()


def test_cleanup_touches_only_temp_names(cache, key, engine, add_module):
    cache.save(key, engine, add_module)
    folder = cache.path(key, engine).parent
    strangers = [folder / "notes.txt", folder / ".hidden.tmp", folder / "0123.bin.1.tmp"]
    for path in strangers:
        path.write_text("not ours")
        os.utime(path, (0, 0))
    assert cache.cleanup(older_than=0) == 0
    assert all(p.exists() for p in strangers)


# -- 3. full disk -------------------------------------------------------------------------------


@windows_lacks("no RLIMIT_FSIZE (a file size limit for a process)")
def test_file_size_limit_raises_and_keeps_older_entry(tmp_path):
    script = textwrap.dedent(f"""
        import os, resource, signal, wasmtime, wasmcache as wc
        from wasmcache import synth
        from wasmcache import names
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        engine = wasmtime.Engine()
        wasm = synth.data_module(4 << 20, seed=5)
        key = wc.ModuleHash.sha256(wasm)
        module = wasmtime.Module(engine, wasm)
        older_wasm = synth.data_module(4096, seed=6)
        cache = wc.FileSystemCache({str(tmp_path)!r})
        cache.save(key, engine, wasmtime.Module(engine, older_wasm))
        before = cache.path(key, engine).read_bytes()
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            cache.save(key, engine, module)
        except wc.FileWriteError as exc:
            assert exc.path == str(cache.path(key, engine)), exc.path
            assert exc.__cause__.errno == 27, exc.__cause__  # EFBIG
            print("error:", exc)
        else:
            raise SystemExit("save past RLIMIT_FSIZE succeeded")
        left = [p for p in cache.path(key, engine).parent.iterdir() if names.is_temp(p.name)]
        assert not left, left
        assert cache.path(key, engine).read_bytes() == before
        store = wasmtime.Store(engine)
        probe = wasmtime.Instance(store, cache.load(key, engine), []).exports(store)["probe"]
        assert probe(store, 4095) == older_wasm[-1]
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error: cannot write cache file" in done.stdout


# -- 5. integrity -----------------------------------------------------------------------------


def test_every_single_byte_flip_is_caught(tmp_path, engine, add_wasm, add_module):
    cache = wc.FileSystemCache(tmp_path)
    key = wc.ModuleHash.sha256(add_wasm)
    cache.save(key, engine, add_module)
    path = cache.path(key, engine)
    entry = path.read_bytes()
    caught = 0
    for index in range(len(entry)):
        flipped = bytearray(entry)
        flipped[index] ^= 0x01
        path.write_bytes(flipped)
        with pytest.raises(wc.DeserializeError):
            cache.load(key, engine)
        assert not path.exists()
        caught += 1
    print(f"\n{caught} of {len(entry)} single-byte flips caught")
    assert caught == len(entry)


# -- 6. hostile files ---------------------------------------------------------------------------


def test_planted_symlink_at_entry_is_replaced_not_followed(
    cache, key, engine, add_module, tmp_path
):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True)
    path.symlink_to(victim)
    cache.save(key, engine, add_module)
    assert victim.read_text() == "precious"
    assert not path.is_symlink()


def test_default_engine_folder_is_private(cache, key, engine, add_module):
    cache.save(key, engine, add_module)
    folder = cache.path(key, engine).parent
    if WINDOWS:  # no mode bits: the folder's owner and DACL
        assert winsec.folder_problem(str(folder)) is None
    else:
        assert folder.stat().st_mode & 0o077 == 0
