"""The wasmcache command, driven as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from wasmcache import synth
from wasmcache.cli import parse_size
from wasmcache.options import engine_from_options

HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $args_sizes_get (i32.const 100) (i32.const 104)))
    ;; exit code: 40 + argc (the program name counts)
    (call $proc_exit (i32.add (i32.const 40) (i32.load (i32.const 100))))))
"""

# Says "looping" on stdout, then spins forever.
LOOP_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "looping\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))
"""


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "WASMCACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def hello(tmp_path):
    path = tmp_path / "hello.wasm"
    path.write_bytes(wasmtime.wat2wasm(HELLO_WAT))
    return path


def wasmcache(*args, env, check_code=None, cwd=None, timeout=120):
    done = subprocess.run(
        [sys.executable, "-m", "wasmcache", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    if check_code is not None:
        assert done.returncode == check_code, done.stdout + done.stderr
    return done


def ls(env):
    return json.loads(wasmcache("ls", "--json", env=env, check_code=0).stdout)


def test_run_prints_and_passes_exit_code_through(hello, env, tmp_path):
    done = wasmcache("run", hello, "a", "b", env=env, cwd=tmp_path)
    assert done.stdout == "hello from wasm\n"
    assert done.returncode == 43
    assert done.stderr == ""
    assert len(ls(env)) == 1
    again = wasmcache("run", hello, env=env, cwd=tmp_path)
    assert (again.stdout, again.returncode) == ("hello from wasm\n", 41)
    assert len(ls(env)) == 1


def test_run_no_cache(hello, env):
    done = wasmcache("run", "--no-cache", hello, env=env)
    assert done.returncode == 41
    assert ls(env) == []


def test_console_script_and_cache_dir_option(hello, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "wasmcache")
    done = subprocess.run(
        [script, "--cache-dir", tmp_path / "other", "run", hello], capture_output=True, text=True
    )
    assert done.returncode == 41, done.stderr
    assert list((tmp_path / "other").glob("*/*.bin"))


def test_run_is_interrupted_by_ctrl_c(tmp_path, env):
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmcache", "run", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"looping\n"  # the guest runs: now interrupt it
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130


def test_compile_ls_stats(hello, env):
    done = wasmcache("compile", hello, env=env, check_code=0)
    assert "cached" in done.stdout
    entries = ls(env)
    assert len(entries) == 1
    assert set(entries[0]) == {"key", "engine", "bytes", "last_used", "path"}
    stats = json.loads(wasmcache("stats", "--json", env=env, check_code=0).stdout)
    assert stats["entries"] == 1
    assert stats["bytes"] == entries[0]["bytes"]
    assert list(stats["engine_folders"]) == [entries[0]["engine"]]
    text = wasmcache("ls", env=env, check_code=0).stdout
    assert entries[0]["key"] in text
    assert "entries:" in wasmcache("stats", env=env, check_code=0).stdout


def test_verify_and_fix(hello, env):
    wasmcache("compile", hello, env=env, check_code=0)
    assert "1 entries checked, 0 bad" in wasmcache("verify", env=env, check_code=0).stdout
    path = ls(env)[0]["path"]
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    done = wasmcache("verify", env=env, check_code=1)
    assert "checksum mismatch" in done.stdout
    wasmcache("verify", "--fix", env=env, check_code=0)
    assert ls(env) == []


def test_prune_and_clear(hello, env, tmp_path):
    wasmcache("compile", hello, env=env, check_code=0)
    assert "removed 0 entries" in wasmcache("prune", "--max-bytes", "1G", env=env).stdout
    assert "removed 1 entries" in wasmcache("prune", "--max-bytes", "0", env=env).stdout
    wasmcache("compile", hello, env=env, check_code=0)
    assert "removed 1 entries" in wasmcache("clear", env=env, check_code=0).stdout
    assert ls(env) == []


def test_demo(env):
    done = wasmcache("demo", "--functions", "300", "--data-mb", "2", env=env, check_code=0)
    for label in ("cold compile", "save to the cache", "warm load", "speed-up", "data check ok"):
        assert label in done.stdout


@pytest.mark.parametrize(
    "args, code",
    [
        (["run", "/no/such/file.wasm"], 1),
        (["prune", "--max-bytes", "lots"], 2),
        (["run", "NOT_WASM"], 1),
    ],
)
def test_errors_are_one_line_without_traceback(args, code, env, tmp_path):
    (tmp_path / "NOT_WASM").write_bytes(b"definitely not wasm")
    done = wasmcache(*args, env=env, cwd=tmp_path, check_code=code)
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("wasmcache: error:")
    assert "Traceback" not in done.stderr


def test_run_a_module_without_start(tmp_path, env):
    path = tmp_path / "lib.wasm"
    path.write_bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    done = wasmcache("run", path, env=env, check_code=2)
    assert "not a WASI command" in done.stderr


def test_verbose_shows_traceback(env):
    done = wasmcache("-v", "run", "/no/such/file.wasm", env=env)
    assert done.returncode != 0
    assert "Traceback" in done.stderr


@pytest.mark.parametrize(
    "text, size",
    [
        ("0", 0),
        ("1000", 1000),
        ("512K", 512 << 10),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("10mb", 10 << 20),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


# -- one engine, honest output ------------------------------------------------------------------


def test_compile_fills_what_the_librarys_default_engine_loads(hello, env, tmp_path):
    wasmcache("compile", hello, env=env, check_code=0)
    cache = wc.FileSystemCache(env["WASMCACHE_DIR"])
    engine = wasmtime.Engine()
    assert cache.contains(wc.ModuleHash.sha256(hello.read_bytes()), engine)
    assert "1 entry (" in wasmcache("stats", env=env, check_code=0).stdout


def test_engine_options_match_the_library(hello, env):
    wasmcache("compile", "-O", "opt-level=0", "-W", "simd=y", hello, env=env, check_code=0)
    engine = engine_from_options(["opt-level=0"], ["simd=y"])
    key = wc.ModuleHash.sha256(hello.read_bytes())
    assert wc.FileSystemCache(env["WASMCACHE_DIR"]).contains(key, engine)
    assert not wc.FileSystemCache(env["WASMCACHE_DIR"]).contains(key, wasmtime.Engine())
    bad = wasmcache("compile", "-W", "no-such-feature=y", hello, env=env, check_code=2)
    assert "unknown -W option" in bad.stderr
    with pytest.raises(ValueError, match="opt-level"):
        engine_from_options(["speed=9"])


def test_version_and_bare_command(env):
    version = wasmcache("--version", env=env, check_code=0).stdout
    assert version.startswith("wasmcache ") and "wasmtime " in version
    bare = wasmcache(env=env, check_code=0).stdout
    for command in ("run", "compile", "ls", "stats", "verify", "prune", "clear", "keygen"):
        assert command in bare


def test_ls_has_a_header(hello, env):
    wasmcache("compile", hello, env=env, check_code=0)
    lines = wasmcache("ls", env=env, check_code=0).stdout.splitlines()
    assert lines[0].split() == ["KEY", "SIZE", "LAST", "USED", "ENGINE"] and len(lines) == 2


def test_compile_says_when_nothing_was_cached(hello, tmp_path):
    cache_dir = tmp_path / "shared"
    cache_dir.mkdir()
    cache_dir.chmod(0o777)  # refused: others could write it
    env = {**os.environ, "WASMCACHE_DIR": str(cache_dir)}
    done = wasmcache("compile", hello, env=env, check_code=1)
    assert "NOT cached" in done.stderr and "chmod 700" in done.stderr


def test_ctrl_c_during_a_compile_exits_130_at_once(tmp_path, env):
    slow = tmp_path / "slow.wasm"
    slow.write_bytes(synth.data_module(1 << 20, functions=30000, seed=13))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmcache", "compile", str(slow)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()  # said once the compile has run a second
    assert "compiling slow.wasm" in line and "this can take a while" in line
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    assert proc.wait(timeout=20) == 130
    assert time.monotonic() - start < 2
    cache_dir = Path(env["WASMCACHE_DIR"])
    assert not list(cache_dir.glob("*/*.bin"))  # nothing half-written is visible
