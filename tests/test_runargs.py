"""`wasmcache run`'s arguments read without argparse give exactly argparse's values, and
anything outside the common forms is left to argparse."""

from __future__ import annotations

import pytest

from wasmcache import cli, runargs

SAME = [
    ["run", "app.wasm"],
    ["run", "-"],
    ["run", "app.wasm", "-v", "--dir", "x", "--", "-h"],
    ["-v", "run", "app.wasm"],
    ["--cache-dir", "/c", "run", "app.wasm", "a", "b"],
    ["--cache-dir=/c", "--verbose", "run", "--cache-dir", "/d", "app.wasm"],
    ["--cache-dir=", "run", "app.wasm"],
    ["--remote", "run", "run", "app.wasm"],
    ["--trusted-key", "a.pem", "--trusted-key=b.pem", "run", "app.wasm"],
    ["--trusted-key", "a.pem", "run", "--trusted-key", "c.pem", "app.wasm"],
    ["--endpoint", "http://h", "--signing-key", "k.pem", "run", "-v", "app.wasm"],
    ["run", "-O", "opt-level=0", "-Oopt-level=2", "-O=x", "app.wasm"],
    ["run", "-C", "cache=n", "--codegen", "parallel-compilation=n", "app.wasm"],
    ["run", "-W", "max-wasm-stack=1000000", "--wasm=simd=n", "-Wtimeout=2s", "app.wasm"],
    ["run", "-S", "inherit-env", "-Scli=n", "--wasi", "preview0=n", "app.wasm"],
    ["run", "--no-cache", "--dir", "a::/a", "--dir=b", "app.wasm", "--dir", "c"],
    ["run", "--env", "A=1", "--env", "B", "--invoke", "f", "app.wasm", "1", "-2"],
    ["run", "--preload", "m=m.wasm", "--argv0", "name", "app.wasm"],
    ["run", "--argv0=", "app.wasm"],
    ["run", "--env", "", "app.wasm"],
]

LEFT_TO_ARGPARSE = [
    [],
    ["run"],
    ["run", "-h"],
    ["--help"],
    ["--version"],
    ["ls"],
    ["compile", "run"],
    ["--cache", "/c", "run", "app.wasm"],  # an abbreviation
    ["run", "--no-c", "app.wasm"],
    ["run", "--argv0", "-x", "app.wasm"],  # a value that looks like an option
    ["run", "--", "app.wasm"],
    ["run", "-vO", "x", "app.wasm"],
    ["run", "--verbose=yes", "app.wasm"],
    ["run", "--dir"],
    ["-x", "run", "app.wasm"],
    ["run", "--unknown", "app.wasm"],
]


def _argparse_values(argv: list[str]) -> dict[str, object]:
    args = cli.build_parser().parse_args(argv)
    values = vars(args)
    assert values.pop("handler") is cli.cmd_run
    values.pop("parser")
    return values


@pytest.mark.parametrize("argv", SAME, ids=" ".join)
def test_common_forms_read_as_argparse_reads_them(argv):
    assert runargs.parse(argv) == _argparse_values(argv)
    only = vars(cli.build_parser("run").parse_args(argv))
    only.pop("handler"), only.pop("parser")
    assert only == _argparse_values(argv)


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_other_forms_are_left_to_argparse(argv):
    assert runargs.parse(argv) is None


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "x"], "run"),
        (["-v", "--cache-dir", "c", "ls"], "ls"),
        (["--cache-dir=c", "stats", "--json"], "stats"),
        (["--cache", "c", "ls"], None),
        (["-h"], None),
        ([], None),
    ],
)
def test_command_named(argv, named):
    assert cli.command_named(argv) == named


def test_a_usage_error_of_a_quick_run_shows_runs_usage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WASMCACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a.wat").write_text("(module)")
    assert cli.main(["run", "-S", "nonsense", str(tmp_path / "a.wat")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wasmcache run ")
    assert "wasmcache run: error:" in err
