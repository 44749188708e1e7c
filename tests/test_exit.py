"""How `wasmcache run` ends: without the interpreter's teardown once the guest is done,
losing nothing (output flushed when piped, exit handlers run, temp folders removed, other
threads joined, the exit code exact), and 130 on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import wasmtime

from conftest import windows_lacks
from support import LOOP_WAT, default_sigint, ended
from wasmcache import cli

EXIT_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "bye\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const CODE))))
"""

# Prints one line per result through Python's buffered stdout (--invoke).
MANY_WAT = """
(module
  (func (export "many") (param i32) (result i32 i64 f32 f64)
    (local.get 0) (i64.const -7) (f32.const 1.5) (f64.const 0.25)))
"""

TRAP_WAT = '(module (func (export "_start") unreachable))'


def run(*args, **kwargs):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "wasmcache", "run", *map(str, args)],
        capture_output=True,
        timeout=120,
        **kwargs,
    )


def buffered() -> dict[str, str]:
    """The environment, with Python's output buffered as it is by default."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.fixture
def env(tmp_path):
    return {**buffered(), "WASMCACHE_DIR": str(tmp_path / "cache")}


@pytest.mark.parametrize("code", [0, 1, 3, 42, 125])
def test_exit_codes_are_the_guests(tmp_path, env, code):
    path = tmp_path / f"exit{code}.wasm"
    path.write_bytes(wasmtime.wat2wasm(EXIT_WAT.replace("CODE", str(code))))
    for _ in range(2):  # compiled, then from the cache
        done = run(path, env=env)
        assert (done.returncode, done.stdout, done.stderr) == (code, b"bye\n", b"")


def test_a_trap_exits_134_with_its_report(tmp_path, env):
    path = tmp_path / "trap.wasm"
    path.write_bytes(wasmtime.wat2wasm(TRAP_WAT))
    done = run(path, env=env)
    assert done.returncode == 134
    assert b"wasm trap" in done.stderr or b"unreachable" in done.stderr


def test_buffered_output_is_flushed_into_a_pipe(tmp_path, env):
    """--invoke prints through Python's stdout, which a pipe buffers: all of it arrives."""
    path = tmp_path / "many.wasm"
    path.write_bytes(wasmtime.wat2wasm(MANY_WAT))
    done = run("--invoke", "many", path, "5", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"5\n-7\n1.5\n0.25\n"


def test_main_with_arguments_returns_the_code(tmp_path, monkeypatch):
    """Called with argv (from a program or a test), main returns: no early exit."""
    path = tmp_path / "exit3.wasm"
    path.write_bytes(wasmtime.wat2wasm(EXIT_WAT.replace("CODE", "3")))
    monkeypatch.setenv("WASMCACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["run", str(path)]) == 3


_SCRIPT = """
    import atexit, os, sys, tempfile, threading, time
    from wasmcache.cli import exit_now
    kept = tempfile.TemporaryDirectory(dir={tmp!r})
    open(os.path.join(kept.name, "f"), "w").close()
    print(kept.name)
    atexit.register(lambda: print("exit handler ran"))

    def late():
        time.sleep(0.3)
        print("thread done")

    threading.Thread(target=late).start()
    sys.stdout.write("x" * 100000 + "\\n")  # stays in the buffer of a pipe
    {tail}
"""


def _exit_script(tmp_path, tail: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    code = textwrap.dedent(_SCRIPT.format(tmp=str(tmp_path), tail=tail))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, env=buffered()
    )


def test_exit_now_loses_nothing(tmp_path):
    done = _exit_script(tmp_path, "exit_now(7)")
    assert done.returncode == 7, done.stderr
    lines = done.stdout.decode().splitlines()
    folder = lines[0]
    assert lines[1:] == ["x" * 100000, "thread done", "exit handler ran"]
    assert not os.path.exists(folder)  # the temp folder was removed
    assert done.stderr == b""


def test_exit_now_exits_120_when_stdout_cannot_be_flushed(tmp_path):
    """As Python's own exit does when flushing stdout fails."""
    done = _exit_script(tmp_path, "sys.stdout.flush(); os.close(1); print('lost'); exit_now(0)")
    assert done.returncode == 120


@windows_lacks("no SIGINT to send to a process (Ctrl-C is a console event)")
def test_ctrl_c_during_the_guest_exits_130(tmp_path, env):
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    for _ in range(2):  # compiled, then from the cache
        command = [sys.executable, "-m", "wasmcache", "run", str(path)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        with ended(subprocess.Popen(command, env=env, preexec_fn=default_sigint, **pipes)) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"looping\n"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 130
            proc.stdout.close()
            assert proc.stderr is not None
            proc.stderr.close()


def test_the_preview0_name_is_the_adapters():
    from wasmcache import preview0, runner

    assert runner.PREVIEW0 == preview0.NAME


#: Modules a warm `run` of a plain WASI program never needs (only other commands, other
#: programs or a miss do): each costs every start milliseconds.
NOT_AT_START = (
    "argparse", "asyncio", "dataclasses", "decimal", "fractions", "hashlib", "_hashlib",
    "importlib.metadata", "json", "logging", "shutil", "tempfile", "wasmcache.invoke",
    "wasmcache.maintenance", "wasmcache.preview0", "wasmcache.remote", "wasmcache.schema",
    "wasmcache.synth", "wasmtime.component",
)  # fmt: skip


def test_run_imports_only_what_it_needs(tmp_path, env):
    """From the start to the last exit handler (the counters' flush included), a warm
    `run` reads no package metadata and imports none of the modules a hit does not need."""
    path = tmp_path / "exit0.wasm"
    path.write_bytes(wasmtime.wat2wasm(EXIT_WAT.replace("CODE", "0")))
    code = textwrap.dedent(
        f"""
        import atexit, sys
        atexit.register(lambda: print(sorted(set({NOT_AT_START!r}) & set(sys.modules)),
                                      file=sys.stderr))  # runs after the flush (LIFO)
        sys.argv = ["wasmcache", "run", {str(path)!r}]
        from wasmcache.cli import main
        main()
        """
    )
    for _ in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stdout) == (0, "bye\n"), done.stderr
    assert done.stderr == "[]\n"
    assert list((tmp_path / "cache").glob(".metrics"))  # the flush ran, before the print
