"""The wasmcache command, driven as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import wasmtime

import wasmcache as wc
from conftest import PRIVATE_HINT, WINDOWS, open_to_everyone, windows_lacks
from support import LOOP_WAT, default_sigint, ended
from wasmcache import synth
from wasmcache.cli import parse_size
from wasmcache.display import shown
from wasmcache.hashing import DEFAULT_ALGORITHM
from wasmcache.kinds import wasmtime_version
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
    script = shutil.which("wasmcache", path=sysconfig.get_path("scripts"))
    assert script is not None
    done = subprocess.run(
        [script, "--cache-dir", tmp_path / "other", "run", hello], capture_output=True, text=True
    )
    assert done.returncode == 41, done.stderr
    assert list((tmp_path / "other").glob("*/*.bin"))


@windows_lacks("no SIGINT to send to a process (Ctrl-C is a console event)")
def test_run_is_interrupted_by_ctrl_c(tmp_path, env):
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    command = [sys.executable, "-m", "wasmcache", "run", str(path)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with ended(subprocess.Popen(command, env=env, preexec_fn=default_sigint, **pipes)) as proc:
        assert proc.stdout.readline() == b"looping\n"  # the guest runs: now interrupt it
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130


def test_compile_ls_stats(hello, env):
    done = wasmcache("compile", hello, env=env, check_code=0)
    assert "cached" in done.stdout
    entries = ls(env)
    assert len(entries) == 1
    assert set(entries[0]) == {
        "key", "engine", "bytes", "last_used", "path", "kind", "source", "wasm_size",
        "compile_seconds", "created", "wasmtime",
    }  # fmt: skip
    assert entries[0]["kind"] == "module" and entries[0]["source"] == Path(hello).name
    assert entries[0]["wasm_size"] == Path(hello).stat().st_size
    assert entries[0]["wasmtime"] == wasmtime_version()
    stats = json.loads(wasmcache("stats", "--json", env=env, check_code=0).stdout)
    assert stats["entries"] == 1
    assert stats["bytes"] == entries[0]["bytes"]
    assert list(stats["engine_folders"]) == [entries[0]["engine"]]
    text = wasmcache("ls", env=env, check_code=0).stdout
    assert entries[0]["key"][:16] in text
    assert "entries:" in wasmcache("stats", env=env, check_code=0).stdout


def test_verify_and_fix(hello, env):
    wasmcache("compile", hello, env=env, check_code=0)
    assert "1 entry checked, 0 bad" in wasmcache("verify", env=env, check_code=0).stdout
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
    assert "removed 1 entry (" in wasmcache("prune", "--max-bytes", "0", env=env).stdout
    wasmcache("compile", hello, env=env, check_code=0)
    assert "removed 1 entry from" in wasmcache("clear", env=env, check_code=0).stdout
    assert ls(env) == []


def test_demo(env):
    done = wasmcache("demo", "--functions", "300", "--data-mb", "2", env=env, check_code=0)
    for label in (
        "cold compile",
        "save to a temporary cache",
        "warm load",
        "speed-up",
        "data check ok",
    ):
        assert label in done.stdout


@pytest.mark.parametrize(
    "args, code",
    [
        (["run", "/no/such/file.wasm"], 1),
        (["prune", "--max-bytes", "lots"], 2),
        (["run", "NOT_WASM"], 1),
    ],
)
def test_errors_name_the_file_and_each_cause_without_traceback(args, code, env, tmp_path):
    (tmp_path / "NOT_WASM").write_bytes(b"definitely not wasm")
    done = wasmcache(*args, env=env, cwd=tmp_path, check_code=code)
    lines = done.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(r"wasmcache( \w+)?: error:", line))
    assert all(line.startswith(("  caused by: ", "    ")) for line in lines[first + 1 :])
    assert "Traceback" not in done.stderr
    if args[0] == "run":
        assert args[1] in lines[first]


def test_compile_error_gives_wasmtime_cause_chain(tmp_path, env):
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0\x01\xff")  # a type section cut short
    done = wasmcache("compile", bad, env=env, check_code=1)
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"wasmcache: error: cannot compile {shown(bad)}"  # Windows: "\\" twice
    assert lines[1] == "  caused by: failed to parse WebAssembly module"
    assert len(lines) >= 3 and all(line.startswith("  caused by: ") for line in lines[1:])


def test_run_a_module_without_start_instantiates_it(tmp_path, env):
    path = tmp_path / "lib.wasm"
    path.write_bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    done = wasmcache("run", path, env=env, check_code=0)
    assert done.stdout == done.stderr == ""


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
    assert cache.contains(wc.ModuleHash.of(DEFAULT_ALGORITHM, hello.read_bytes()), engine)
    assert "1 entry (" in wasmcache("stats", env=env, check_code=0).stdout


def test_engine_options_match_the_library(hello, env):
    wasmcache("compile", "-O", "opt-level=0", "-W", "simd=y", hello, env=env, check_code=0)
    engine = engine_from_options(["opt-level=0"], ["simd=y"])
    key = wc.ModuleHash.of(DEFAULT_ALGORITHM, hello.read_bytes())
    assert wc.FileSystemCache(env["WASMCACHE_DIR"]).contains(key, engine)
    assert not wc.FileSystemCache(env["WASMCACHE_DIR"]).contains(key, wasmtime.Engine())
    bad = wasmcache("compile", "-W", "no-such-feature=y", hello, env=env, check_code=2)
    assert "unknown option '-W no-such-feature=y'" in bad.stderr
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
    assert lines[0].split() == [
        "SOURCE", "KIND", "SIZE", "COMPILE", "LAST", "USED", "KEY", "ENGINE"
    ] and len(lines) == 2  # fmt: skip
    row = lines[1].split()
    assert row[:2] == [Path(hello).name, "module"] and row[3] == "KiB"  # a human size
    assert float(row[4]) >= 0 and row[5] == "s"  # the compile time the entry holds


def test_stats_counts_kinds_and_compile_time(hello, env):
    wasmcache("compile", hello, env=env, check_code=0)
    (row,) = ls(env)
    stats = json.loads(wasmcache("stats", "--json", env=env, check_code=0).stdout)
    assert (stats["modules"], stats["components"]) == (1, 0)
    assert stats["compile_seconds"] == pytest.approx(row["compile_seconds"], abs=1e-3)
    text = wasmcache("stats", env=env, check_code=0).stdout
    assert "1 entry" in text and "1 module, 0 components" in text
    assert "compile time held:" in text


def test_compile_says_when_nothing_was_cached(hello, tmp_path):
    cache_dir = tmp_path / "shared"
    cache_dir.mkdir()
    open_to_everyone(cache_dir)  # refused: others could write it
    env = {**os.environ, "WASMCACHE_DIR": str(cache_dir)}
    done = wasmcache("compile", hello, env=env, check_code=1)
    assert "NOT cached" in done.stderr and PRIVATE_HINT in done.stderr


@windows_lacks("no SIGINT to send to a process (Ctrl-C is a console event)")
def test_ctrl_c_during_a_compile_exits_130_at_once(tmp_path, env):
    slow = tmp_path / "slow.wasm"
    slow.write_bytes(synth.data_module(1 << 20, functions=30000, seed=13))
    command = [sys.executable, "-m", "wasmcache", "compile", str(slow)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    popen = subprocess.Popen(command, env=env, preexec_fn=default_sigint, text=True, **pipes)
    with ended(popen) as proc:
        line = proc.stderr.readline()  # said once the compile has run a second
        assert "compiling slow.wasm" in line and "this can take a while" in line
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        assert proc.wait(timeout=20) == 130
        assert time.monotonic() - start < 2
    cache_dir = Path(env["WASMCACHE_DIR"])
    assert not list(cache_dir.glob("*/*.bin"))  # nothing half-written is visible


# -- `run` takes wasmtime run's flags ------------------------------------------------------------

_WASI_PRELUDE = """
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $prestat_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; print len bytes at ptr, then a newline
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store8 (i32.const 16) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
"""

# Prints the guest name of preopened fd 3 (or "none"), then the environment as one blob.
PROBE_WAT = (
    "(module"
    + _WASI_PRELUDE
    + """
  (data (i32.const 32) "none")
  (func (export "_start")
    (if (i32.eqz (call $prestat_get (i32.const 3) (i32.const 64)))
      (then
        (drop (call $prestat_name (i32.const 3) (i32.const 128) (i32.load (i32.const 68))))
        (call $print (i32.const 128) (i32.load (i32.const 68))))
      (else (call $print (i32.const 32) (i32.const 4))))
    (drop (call $environ_sizes (i32.const 72) (i32.const 76)))
    (drop (call $environ_get (i32.const 1024) (i32.const 4096)))
    (call $print (i32.const 4096) (i32.load (i32.const 76)))))
"""
)

REACTOR_WAT = """
(module
  (global $base (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $base (i32.const 100)))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (global.get $base) (i32.add (local.get 0) (local.get 1))))
  (func (export "half") (param f64) (result f64) (f64.mul (local.get 0) (f64.const 0.5))))
"""

TRAP_WAT = """
(module
  (func $inner unreachable)
  (func (export "_start") (call $inner)))
"""

UNKNOWN_IMPORT_WAT = """
(module
  (import "host" "call" (func $call (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3)))
  (func (export "uses_it") (drop (call $call (i32.const 1)))))
"""


def _write(tmp_path, name, wat):
    path = tmp_path / name
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def test_run_preopens_and_inherits_nothing_by_default(tmp_path, env):
    probe = _write(tmp_path, "probe.wasm", PROBE_WAT)
    out = wasmcache("run", probe, env={**env, "HOST_SECRET": "x"}, check_code=0).stdout
    lines = out.split("\n")
    assert lines[0] == "none" and "HOST_SECRET" not in out


def test_run_dir_maps_a_host_folder_at_a_guest_path(tmp_path, env):
    probe = _write(tmp_path, "probe.wasm", PROBE_WAT)
    share = tmp_path / "share"
    share.mkdir()
    out = wasmcache("run", "--dir", f"{share}::/share", probe, env=env, check_code=0).stdout
    assert out.split("\n")[0] == "/share"
    out = wasmcache("run", "--dir", str(share), probe, env=env, check_code=0).stdout
    assert out.split("\n")[0] == str(share)
    bad = wasmcache("run", "--dir", str(tmp_path / "missing"), probe, env=env, check_code=1)
    assert "is not a folder" in bad.stderr


def test_run_env_and_inherit_env(tmp_path, env):
    probe = _write(tmp_path, "probe.wasm", PROBE_WAT)
    host = {**env, "FROM_HOST": "h"}
    out = wasmcache(
        "run", "--env", "GREETING=hi", "--env", "FROM_HOST", probe, env=host, check_code=0
    ).stdout
    assert "GREETING=hi" in out and "FROM_HOST=h" in out and "PATH=" not in out
    out = wasmcache("run", "-S", "inherit-env", probe, env=host, check_code=0).stdout
    assert "FROM_HOST=h" in out and "PATH=" in out


def test_run_invoke_calls_initialize_then_prints_results(tmp_path, env):
    reactor = _write(tmp_path, "reactor.wasm", REACTOR_WAT)
    assert wasmcache("run", "--invoke", "add", reactor, "2", "3", env=env, check_code=0).stdout == (
        "105\n"
    )
    assert wasmcache("run", "--invoke", "half", reactor, "5", env=env, check_code=0).stdout == (
        "2.5\n"
    )
    bad = wasmcache("run", "--invoke", "add", reactor, "2", env=env, check_code=1)
    assert "not enough arguments for `add`" in bad.stderr


def test_run_a_trap_prints_one_block_and_exits_134(tmp_path, env):
    trapping = _write(tmp_path, "trap.wasm", TRAP_WAT)
    done = wasmcache("run", trapping, env=env, check_code=134)
    assert "unreachable" in done.stderr and "Traceback" not in done.stderr
    assert "failed to run" in done.stderr


def test_run_unknown_imports(tmp_path, env):
    module = _write(tmp_path, "imports.wasm", UNKNOWN_IMPORT_WAT)
    refused = wasmcache("run", module, env=env, check_code=1)
    assert "host" in refused.stderr and "Traceback" not in refused.stderr
    if not hasattr(wasmtime.Linker, "define_unknown_imports_as_traps"):
        old = wasmcache("run", "-W", "unknown-imports-trap=y", module, env=env, check_code=2)
        assert "needs a newer wasmtime" in old.stderr
        pytest.skip("this wasmtime cannot stub unknown imports")
    wasmcache("run", "-W", "unknown-imports-trap=y", module, env=env, check_code=3)
    wasmcache("run", "-W", "unknown-imports-default=y", module, env=env, check_code=3)
    called = wasmcache(
        "run", "-W", "unknown-imports-trap=y", "--invoke", "uses_it", module, env=env
    )
    assert called.returncode == 1  # a host error, not a trap, as in wasmtime run


def test_run_wat_text_and_argv0(tmp_path, env):
    text = tmp_path / "exit.wat"
    text.write_text(HELLO_WAT)
    done = wasmcache("run", "--argv0", "hello", text, "a", env=env, check_code=42)
    assert "hello from wasm" in done.stdout


def test_run_refuses_unknown_wasi_options_before_compiling(tmp_path, env):
    path = tmp_path / "app.wasm"
    path.write_bytes(b"not even wasm: the option is refused first")
    done = wasmcache("run", "-S", "tcp=y", path, env=env, check_code=2)
    assert "-S tcp=y: not supported" in done.stderr
    done = wasmcache("run", "-S", "no-such=y", path, env=env, check_code=2)
    assert "unknown option '-S no-such=y'" in done.stderr
    assert wasmcache("run", "-S", "inherit-env=n", path, env=env).returncode == 1  # known


def test_cause_lines_split_wasmtime_chains_and_follow_causes():
    from wasmcache.failures import cause_lines

    inner = RuntimeError(
        "failed to parse WebAssembly module\n\nCaused by:\n    0: section too large\n"
        "    1: unexpected end-of-file (at offset 0xa)"
    )
    outer = wc.DeserializeError("removed corrupt cache entry /c/X.bin")
    outer.__cause__ = inner
    assert cause_lines(outer) == [
        "removed corrupt cache entry /c/X.bin",
        "failed to parse WebAssembly module",
        "section too large",
        "unexpected end-of-file (at offset 0xa)",
    ]
    missing = FileNotFoundError(2, "No such file or directory", "/x.wasm")
    assert cause_lines(missing) == ["No such file or directory"]


# -- names shown safely; text keyed as its binary; options anywhere ------------------------------

# A newline, an ANSI colour and an OSC title sequence, bytes that are not UTF-8.
ODD_NAMES = [b"new\nline.wasm", b"\x1b[31mred\x1b]0;title\x07.wasm", b"bad\xff\xfe.wasm"]
SHOWN_NAMES = ["new\\nline.wasm", "\\x1b[31mred\\x1b]0;title\\x07.wasm", "bad\\xff\\xfe.wasm"]


@windows_lacks("names hold no control characters and no bytes outside UTF-16")
def test_names_are_escaped_in_every_command(tmp_path, env):
    strict = {**env, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    paths = []
    for i, name in enumerate(ODD_NAMES):
        path = os.path.join(os.fsencode(tmp_path), name)
        with open(path, "wb") as f:
            f.write(wasmtime.wat2wasm(f'(module (func (export "f{i}")))'))
        paths.append(os.fsdecode(path))
    compiled = wasmcache("compile", *paths, env=strict, check_code=0)
    listed = wasmcache("ls", env=strict, check_code=0)
    for done in (compiled, listed):
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout
        assert "\udcff" not in done.stdout and "\ufffd" not in done.stdout
    assert len(compiled.stdout.splitlines()) == 3
    lines = listed.stdout.splitlines()
    assert len(lines) == 4  # the header and one line per entry, each on its own line
    sources = sorted(line.split(" module ")[0].strip() for line in lines[1:])
    assert sources == sorted(s if len(s) <= 24 else "..." + s[-21:] for s in SHOWN_NAMES)
    assert all(shown in compiled.stdout for shown in SHOWN_NAMES)
    rows = json.loads(wasmcache("ls", "--json", env=strict, check_code=0).stdout)
    assert sorted(os.fsencode(r["source"]) for r in rows) == sorted(ODD_NAMES)
    wasmcache("stats", env=strict, check_code=0)
    missing = wasmcache("run", os.fsdecode(b"/no/such/\x1b[2J\xff.wasm"), env=strict, check_code=1)
    assert "\x1b" not in missing.stderr and "/no/such/\\x1b[2J\\xff.wasm" in missing.stderr


def test_shown():
    from wasmcache.display import shown

    assert shown("plain name.wasm") == "plain name.wasm"
    assert shown("caf\u00e9 \u65e5\u672c.wasm") == "caf\u00e9 \u65e5\u672c.wasm"
    assert shown("a\\b\tc\rd\ne") == "a\\\\b\\tc\\rd\\ne"
    assert shown("\x00\x7f\x9b\u2028\u202e") == "\\x00\\x7f\\x9b\\u2028\\u202e"
    if not WINDOWS:  # (Windows' names are UTF-16: no byte name is undecodable)
        assert shown(b"\xff/x") == "\\xff/x" and shown(os.fsdecode(b"\xc3")) == "\\xc3"


def test_compile_of_text_fills_what_run_and_load_or_compile_use(tmp_path, env):
    text = tmp_path / "app.wat"
    text.write_text(HELLO_WAT)
    wasmcache("compile", text, env=env, check_code=0)
    assert len(ls(env)) == 1
    binary = bytes(wasmtime.wat2wasm(HELLO_WAT))
    cache = wc.FileSystemCache(env["WASMCACHE_DIR"])
    assert cache.contains(wc.ModuleHash.of(DEFAULT_ALGORITHM, binary), wasmtime.Engine())
    wasmcache("run", text, env=env, check_code=41)
    assert len(ls(env)) == 1


def test_global_options_after_the_command(hello, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WASMCACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    folder = tmp_path / "chosen"
    wasmcache("compile", "--cache-dir", folder, hello, env=env, check_code=0)
    rows = json.loads(wasmcache("ls", "--json", "--cache-dir", folder, env=env).stdout)
    assert len(rows) == 1
    assert "1 entry" in wasmcache("--cache-dir", folder, "stats", env=env, check_code=0).stdout
    assert not (tmp_path / "xdg").exists() or not list((tmp_path / "xdg").rglob("*.bin"))


def test_usage_errors_show_the_commands_usage(env):
    done = wasmcache("prune", "--max-bytes", "lots", env=env, check_code=2)
    assert done.stderr.startswith("usage: wasmcache prune")
    assert "wasmcache prune: error: not a size" in done.stderr
    done = wasmcache("run", "--preload", "nothing", "x.wasm", env=env, check_code=2)
    assert done.stderr.startswith("usage: wasmcache run")


def test_missing_s3_extra_is_one_line(hello, tmp_path, env):
    fake = tmp_path / "without-s3" / "obstore"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'obstore'\", name='obstore')\n"
    )
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    remote = {**env, "PYTHONPATH": path, "WASMCACHE_REMOTE": "s3://bucket/prefix"}
    done = wasmcache("compile", hello, env=remote, check_code=1)
    assert done.stderr.count("\n") == 1, done.stderr
    assert 'pip install "wasmcache[s3]"' in done.stderr and "Traceback" not in done.stderr


@windows_lacks("environment values are UTF-16 text: none is invalid UTF-8")
def test_non_utf8_environment_value_is_named(tmp_path, env):
    probe = tmp_path / "probe.wasm"
    probe.write_bytes(wasmtime.wat2wasm(PROBE_WAT))
    odd = {**env, "ODD_VALUE": os.fsdecode(b"caf\xe9")}
    done = wasmcache("run", "--env", "ODD_VALUE", probe, env=odd, check_code=1)
    assert "ODD_VALUE is not valid UTF-8" in done.stderr and "Traceback" not in done.stderr
    done = wasmcache("run", "-S", "inherit-env", probe, env=odd, check_code=1)
    assert "ODD_VALUE is not valid UTF-8" in done.stderr


def test_max_wasm_stack_above_the_async_stack_never_aborts(hello, env):
    engine = engine_from_options([], ["max-wasm-stack=5242880"])
    assert isinstance(engine, wasmtime.Engine)
    wasmcache("compile", "-W", "max-wasm-stack=5242880", hello, env=env, check_code=0)
    wasmcache("run", "-W", "max-wasm-stack=5242880", hello, env=env, check_code=41)
    try:
        engine_from_options([], ["gc=y,reference-types=n"])
    except ValueError as exc:  # wasmtime 40 and later refuse it; older ones take it
        assert "wasmtime refuses" in str(exc)
    else:
        from importlib.metadata import version

        assert int(version("wasmtime").split(".")[0]) < 40


def test_the_probe_in_a_new_process_says_what_the_forked_one_says():
    """Where there is no fork (Windows) the probe runs in a new Python: same answers."""
    from wasmcache import options

    good = options.parse([], ["max-wasm-stack=5242880"])
    assert options._probe_spawned(good) == (False, "")
    bad = options.parse([], ["gc=y,reference-types=n"])
    failed, text = options._probe_spawned(bad)
    if int(wasmtime_version().split(".")[0]) >= 40:
        assert failed and "on an `Err` value" in text
        if hasattr(os, "fork"):
            assert options._probe_forked(bad)[0]


def _ls_cache(tmp_path, count: int) -> tuple[wc.FileSystemCache, list[Path]]:
    cache = wc.FileSystemCache(tmp_path / "lscache")
    engine = wasmtime.Engine()
    paths = []
    for n in range(count):
        wasm = wasmtime.wat2wasm(f'(module (func (export "f{n}")))')
        key = wc.ModuleHash.sha256(wasm)
        cache.save(key, engine, wasmtime.Module(engine, wasm), origin=wc.Origin(f"m{n}.wasm"))
        paths.append(cache.path(key, engine))
    return cache, paths


def test_ls_and_stats_leave_each_entrys_last_use_alone(tmp_path, capsys):
    """Describing an entry is not a use: prune's LRU order (the access times) is what the
    hits left, however often ls and stats read the entries."""
    from wasmcache import cli

    cache, paths = _ls_cache(tmp_path, 3)
    old = time.time() - 86400
    for n, path in enumerate(paths):
        os.utime(path, (old + 60 * n, old))
    before = [os.stat(p).st_atime for p in paths]
    for args in (["ls"], ["ls", "--json"], ["stats"], ["stats", "--json"]):
        assert cli.main(["--cache-dir", str(cache.cache_dir), *args]) == 0
    capsys.readouterr()
    assert [os.stat(p).st_atime for p in paths] == before
    assert [e.last_used for e in cache.entries()] == [
        os.stat(e.path).st_atime for e in cache.entries()
    ]


def test_ls_rows_most_recent_first_with_local_minutes(tmp_path, capsys):
    from wasmcache import cli

    cache, paths = _ls_cache(tmp_path, 4)
    base = 1_700_000_000.0
    used = [base + 30.5, base + 3600 * 24 * 200, base + 30.5, base - 1e6]
    for path, t in zip(paths, used):
        os.utime(path, (t, t))
    order = [e.path for e in cache.entries()]  # listing order: ties keep it
    expected = sorted(order, key=lambda p: -os.stat(p).st_atime)
    assert cli.main(["--cache-dir", str(cache.cache_dir), "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [str(p) for p in expected]
    assert cli.main(["--cache-dir", str(cache.cache_dir), "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    for line, row in zip(lines, rows):
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        assert line.split()[0] == row["source"] and stamp in line
        assert line.endswith(f" {row['key'][:16]} {row['engine']}")
    assert len(lines) == 4


@pytest.mark.parametrize(
    "zone",
    [
        "UTC0",
        "LMT0:44:30",  # an offset of seconds: minutes of UTC are not minutes of local time
        "XST-5:45",
        "CET-1CEST,M3.5.0,M10.5.0/3",  # a change of offset within the sampled range
    ],
)
@windows_lacks("no time.tzset: a process cannot switch its TZ rules")
def test_ls_minutes_are_strftimes(zone, monkeypatch):
    from wasmcache import cli

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        minute = cli._Minutes()
        start = 1_711_846_800.0 - 7200  # two hours before the last Sunday of March 2024, 1:00 UTC
        for t in [start + 13.25 * n for n in range(1200)] + [-1.5, 0.0, 59.999, 60.0]:
            assert minute(t) == time.strftime("%Y-%m-%d %H:%M", time.localtime(t)), t
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ls_lines_keep_their_columns(tmp_path, capsys):
    """Each row as the format specs <24 <9 >10 >9 <16 lay it out, whatever the entry says:
    a long name cut to its end, a name with a control character escaped, no compile
    time, no source, an entry that cannot be described."""
    import gc

    from wasmcache import cli

    cache = wc.FileSystemCache(tmp_path / "lscache")
    engine = wasmtime.Engine()
    origins = [
        wc.Origin("m.wasm", 5, 0.25),
        wc.Origin("a-rather-long-module-name-indeed.wasm", 5, 12.5),
        wc.Origin("tab\there.wasm", None, None),
        wc.Origin(None, None, 3.0),
        wc.Origin("m.wasm", 7, 0.0),
    ]
    for n, origin in enumerate(origins):
        wasm = wasmtime.wat2wasm(f'(module (func (export "f{n}")))')
        cache.save(wc.ModuleHash.sha256(wasm), engine, wasmtime.Module(engine, wasm), origin=origin)
    damaged = cache.path(wc.ModuleHash.sha256(b"damaged"), engine)
    damaged.write_bytes(b"not an entry")
    damaged.chmod(0o600)
    assert cli.main(["--cache-dir", str(cache.cache_dir), "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert cli.main(["--cache-dir", str(cache.cache_dir), "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert gc.isenabled()  # paused while listing only
    expected = []
    for row in rows:
        if row["kind"] is None:
            source, kind, seconds = "-", "?", "-"
        else:
            source = row["source"].replace("\t", "\\t") if row["source"] else "-"
            source = source if len(source) <= 24 else "..." + source[-21:]
            kind = row["kind"]
            seconds = "-" if row["compile_seconds"] is None else f"{row['compile_seconds']:.1f} s"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        expected.append(
            f"{source:<24} {kind:<9} {cli.human(row['bytes']):>10} {seconds:>9} {used:<16} "
            f"{row['key'][:16]} {row['engine']}"
        )
    assert lines == expected and len(lines) == 6
    assert any(line.startswith("...dule-name-indeed.wasm ") for line in lines)


def test_ls_leaves_the_collector_off_when_it_was_off(tmp_path, capsys):
    import gc

    from wasmcache import cli

    cache, _ = _ls_cache(tmp_path, 2)
    gc.disable()
    try:
        assert cli.main(["--cache-dir", str(cache.cache_dir), "ls"]) == 0
        assert not gc.isenabled()
    finally:
        gc.enable()
    capsys.readouterr()
