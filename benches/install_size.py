"""Install size and import time of a built wheel, as a Markdown section for BENCHMARKS.md.

Usage: python benches/install_size.py WHEEL PYTHON [PYTHON...] [--out install.md]

For each interpreter: a fresh venv per extra ("", "s3", "test") with the wheel installed,
its size on disk (site-packages, less what a bare venv holds), and the time of
``import wasmcache`` over ``python -c pass`` (best of 15 runs each, same interpreter).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

RUNS = 15


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


def _best_seconds(python: Path, code: str) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([str(python), "-c", code], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def measure(wheel: Path, interpreter: str, scratch: Path) -> list[str]:
    version = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    bare = scratch / f"bare-{version}"
    subprocess.run([interpreter, "-m", "venv", str(bare)], check=True)
    baseline = _tree_bytes(_site_packages(bare))
    rows = []
    for extra in ("", "s3", "test"):
        venv = scratch / f"{version}-{extra or 'base'}"
        subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
        spec = f"{wheel}[{extra}]" if extra else str(wheel)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", spec], check=True
        )
        size = _tree_bytes(_site_packages(venv)) - baseline
        own = _tree_bytes(_site_packages(venv) / "wasmcache")
        cell = f"{size / 1e6:.1f} MB (wasmcache itself {own / 1e3:.0f} kB)"
        if not extra:
            python = venv / "bin" / "python"
            empty = _best_seconds(python, "pass")
            wasmtime_only = _best_seconds(python, "import wasmtime")
            full = _best_seconds(python, "import wasmcache")
            rows.append(
                f"| {version} | base | {cell} | {(full - empty) * 1e3:.0f} ms "
                f"(wasmtime alone {(wasmtime_only - empty) * 1e3:.0f} ms) |"
            )
        else:
            rows.append(f"| {version} | [{extra}] | {cell} | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("wheel", type=Path)
    parser.add_argument("pythons", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("install.md"))
    args = parser.parse_args()
    lines = [
        "## Install size and import time",
        "",
        f"Wheel `{args.wheel.name}`: {args.wheel.stat().st_size / 1e3:.0f} kB. Installed size "
        "is site-packages of a fresh venv less a bare venv's; import time is the best of "
        f"{RUNS} runs of `python -c 'import wasmcache'` less `python -c pass`.",
        "",
        "| Python | extra | installed | import wasmcache |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for interpreter in args.pythons:
            lines += measure(args.wheel.resolve(), interpreter, Path(scratch))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
