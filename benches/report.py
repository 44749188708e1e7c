"""Turn pytest-benchmark JSON into BENCHMARKS.md (and, with matplotlib, a PNG chart).

Usage: python benches/report.py BENCH.json [--out BENCHMARKS.md] [--png benches.png]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

COMMAND = (
    "pip install '.[bench]' && python -m pytest benches --benchmark-only "
    "--benchmark-json=bench.json\n"
    "python -m build && auditwheel repair -w wheelhouse dist/*.whl && "
    "python benches/install_size.py wheelhouse/*.whl PYTHON3.9 PYTHON3.13 --out install.md\n"
    "python benches/report.py bench.json --install install.md"
)


#: extra_info keys shown in a column of their own; every other key goes to the notes.
COLUMNS = frozenset(
    (
        "dataset",
        "artifact_bytes",
        "mb_per_s",
        "baseline",
        "baseline_ms",
        "ratio",
        "target_ratio",
        "target_met",
    )
)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def rows(data: dict) -> list[list[str]]:
    out = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        name = bench["name"].split("[")[0].removeprefix("test_")
        best_ms = bench["stats"]["min"] * 1e3
        out.append(
            [
                info.get("dataset", ""),
                name,
                _fmt(info["artifact_bytes"] / 1e6, 1) if info.get("artifact_bytes") else "",
                _fmt(best_ms, 3),
                _fmt(info.get("mb_per_s"), 0) if "us_per_call" not in info else "",
                info.get("baseline", "") or "",
                _fmt(info.get("baseline_ms"), 3),
                _fmt(info.get("ratio"), 2),
                _fmt(info.get("target_ratio")),
                _fmt(info.get("target_met")),
                "; ".join(f"{k}={_fmt(v)}" for k, v in info.items() if k not in COLUMNS),
            ]
        )
    return out


def machine(data: dict) -> str:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {}).get("brand_raw", "") or platform.processor()
    return (
        f"{m.get('system', '')} {m.get('release', '')}, {cpu}, "
        f"Python {m.get('python_version', '')}; run {data.get('datetime', '')}"
    )


def markdown(data: dict) -> str:
    header = [
        "data",
        "bench",
        "artifact MB",
        "best ms",
        "MB/s",
        "baseline",
        "baseline ms",
        "ratio",
        "target",
        "met",
        "notes",
    ]
    lines = [
        "# Benchmarks",
        "",
        "Produced by:",
        "",
        f"```sh\n{COMMAND}\n```",
        "",
        f"Machine: {machine(data)}",
        "",
        "Ratios are measured in the same run: `ratio` = best time of the bench / best time "
        "of its baseline (lower is better for wasmcache's own rows; for the rows that time "
        "a competitor, the baseline is wasmcache and a ratio above 1 means wasmcache is "
        "faster). `seed_ratio` scales to the seed's 142 MB php.wasm figures (save 408 ms, "
        "load 155 ms).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(data)]
    lines += ["", "## The cost of verify", ""] + verify_cost(data)
    return "\n".join(lines) + "\n"


def verify_cost(data: dict) -> list[str]:
    """What checking the XXH3-64 of every entry on load costs, per data set."""
    best: dict[tuple[str, str], float] = {}
    for bench in data["benchmarks"]:
        name = bench["name"].split("[")[0]
        best[(bench.get("extra_info", {}).get("dataset", ""), name)] = bench["stats"]["min"]
    out = []
    for dataset in sorted({d for d, _ in best}):
        on = best.get((dataset, "test_load_verify_on"))
        off = best.get((dataset, "test_load_verify_off"))
        if on is None or off is None:
            continue
        out.append(
            f"- {dataset}: load with verify {on * 1e3:.2f} ms, without {off * 1e3:.2f} ms: "
            f"verify costs {(on - off) * 1e3:.2f} ms per load (one XXH3-64 pass over the "
            "mapped file, which also brings it into memory)."
        )
    return out


def chart(data: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [b for b in data["benchmarks"] if b["name"].startswith("test_load")]
    labels = [b["name"].removeprefix("test_") for b in benches]
    values = [b["stats"]["min"] * 1e3 for b in benches]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(labels) + 1))
    ax.barh(labels, values)
    ax.set_xscale("log")
    ax.set_xlabel("best time, ms (log scale)")
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json")
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--png")
    parser.add_argument("--install", help="a section from benches/install_size.py to append")
    args = parser.parse_args()
    data = json.loads(Path(args.json).read_text())
    text = markdown(data)
    if args.install:
        text += "\n" + Path(args.install).read_text()
    Path(args.out).write_text(text)
    if args.png:
        chart(data, Path(args.png))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
