"""Coverage-guided fuzzing of the LZW decoder with atheris.

Every input must either decode (and then agree with a second decode capped exactly at its
length) or raise LZWError; anything else (another exception, a crash, a sanitizer report)
is a bug. Seeds come from the weezl vectors in tests/data.

    pip install atheris
    python fuzz/fuzz_lzw.py -atheris_runs=200000 fuzz/corpus     # corpus folder optional

For memory errors in the C core, install wasmcache built with the sanitizers first
(see .ci/run) and run under LD_PRELOAD of libasan as .ci/run does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from wasmcache import lzw

CAP = 1 << 22


def seeds() -> list[bytes]:
    vectors = Path(__file__).resolve().parent.parent / "tests" / "data" / "lzw_vectors.json"
    data = json.loads(vectors.read_text())
    return [bytes.fromhex(v["stream"]) for v in data["decode"]] + [
        bytes.fromhex(v["weezl"]) for v in data["encode"]
    ]


def test_one_input(data: bytes) -> None:
    try:
        out = lzw.decode(data, max_output=CAP)
    except lzw.LZWError:
        return
    if lzw.decode(data, max_output=len(out)) != out:
        raise AssertionError("decode differs under an exact output cap")
    if out and lzw.decode(lzw.encode(out)) != out:
        raise AssertionError("round trip of decoded output failed")


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        folder = Path(corpus[0])
        folder.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (folder / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
