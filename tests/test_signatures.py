"""Export signatures read from a module's binary (what `run` asks before wasmtime-py,
whose C API aborts the process on a v128 signature)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import wasmtime

from wasmcache import signatures

MODULE = """
(module
  (type $pair (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "env" "table" (table 1 funcref))
  (import "env" "memory" (memory 1 2))
  (import "env" "g" (global (mut i64)))
  (memory (export "mem") 0)
  (func (export "add") (type $pair) local.get 0 local.get 1 i32.add)
  (func (export "vec") (param v128 f64) (result f32) f32.const 1)
  (func (export "ret") (result v128) v128.const i64x2 0 0)
  (func (export "_start")))
"""


@pytest.fixture(scope="module")
def binary() -> bytes:
    return bytes(wasmtime.wat2wasm(MODULE))


def test_signatures_of_exports(binary):
    i32, f32, f64, v128 = 0x7F, 0x7D, 0x7C, 0x7B
    assert signatures.export_signature(binary, "add") == (bytes([i32, i32]), bytes([i32]))
    assert signatures.export_signature(binary, "vec") == (bytes([v128, f64]), bytes([f32]))
    assert signatures.export_signature(binary, "ret") == (b"", bytes([v128]))
    assert signatures.export_signature(io.BytesIO(binary), "_start") == (b"", b"")
    assert signatures.export_signature(binary, "mem") is None  # not a function
    assert signatures.export_signature(binary, "missing") is None
    assert signatures.may_hold_v128(binary)
    plain = wasmtime.wat2wasm('(module (func (export "f") (param i64)))')
    assert not signatures.may_hold_v128(plain)


@pytest.mark.parametrize("cut", [0, 4, 9, 12, 20, 40, 60])
def test_damaged_or_foreign_binaries_are_unknown(binary, cut):
    assert signatures.export_signature(binary[:cut], "add") in (None, (b"\x7f\x7f", b"\x7f"))
    assert signatures.export_signature(b"\0asm\x0d\x00\x01\x00", "add") is None  # a component
    assert signatures.may_hold_v128(b"garbage")  # unknown: ask for the signature


def test_run_refuses_v128_without_aborting(tmp_path):
    text = (
        '(module (func (export "vec") (param v128) (result i32) i32.const 1)'
        ' (func (export "ret") (result v128) v128.const i64x2 0 0))'
    )
    (tmp_path / "v.wat").write_text(text)
    for export, message in (("vec", "argument type v128"), ("ret", "result type v128")):
        done = subprocess.run(
            [sys.executable, "-m", "wasmcache", "--cache-dir", str(tmp_path / "c"), "run",
             "--invoke", export, "v.wat", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert message in done.stderr and "panicked" not in done.stderr
