"""Make tests/data/lzw_vectors.json with the real weezl crate as the oracle.

Needs cargo and Debian's librust-weezl-dev (weezl 0.1.5); builds tools/weezl-ref offline.
Each decode vector is a stream and weezl's answer (the decoded bytes, or "rejected").
Each encode vector is an input and weezl's encoding of it. (That wasmcache's own encoding
decodes with weezl is checked live by tests/test_lzw.py whenever weezl-ref is built.)

Usage: python tools/make_lzw_vectors.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import CLEAR, END, pack, weezl, weezl_binary  # noqa: E402  (shared test helpers)

OUTPUT = ROOT / "tests" / "data" / "lzw_vectors.json"

# weezl 0.1.5 rejects a stream without a leading clear code; weezl 0.1.7 and later accept
# it with the initial table, which is what wasmcache follows. The expected output of these
# vectors is therefore set here rather than taken from the 0.1.5 oracle.
TODAYS_WEEZL = {
    "no_leading_clear": b"AB",
    "no_leading_clear_kwkwk": b"AAAB",
}


def sample_inputs() -> dict[str, bytes]:
    rng = random.Random(20261126)
    text = b"the quick brown fox jumps over the lazy dog. " * 40
    return {
        "empty": b"",
        "one_byte": b"A",
        "two_bytes": b"AB",
        "abc": b"abcabcabcabc",
        "kwkwk_run": b"A" * 50,
        "text": text,
        "zeros_64k": bytes(65536),
        "random_600": rng.randbytes(600),
        "random_6000_table_full": rng.randbytes(6000),
        "all_bytes": bytes(range(256)) * 20,
        "skewed": bytes(rng.choice(b"aaaaabbbc\x00\xff") for _ in range(20000)),
        "elf_like": b"\x7fELF\x02\x01\x01" + bytes(200) + rng.randbytes(3000) + bytes(5000),
    }


def crafted_streams(weezl_text: bytes) -> dict[str, bytes]:
    literal_fill = [CLEAR] + [65 + (i % 3) for i in range(3900)]
    return {
        "empty_input": b"",
        "only_end": pack([CLEAR, END]),
        "end_first": pack([END]),
        "kwkwk_after_clear": pack([CLEAR, 65, 258, END]),
        "kwkwk_chain": pack([CLEAR, 65, 258, 259, 260, END]),
        "code_above_next": pack([CLEAR, 65, 300, END]),
        "code_just_above_next": pack([CLEAR, 65, 66, 260, END]),
        "first_code_258_after_clear": pack([CLEAR, 258, END]),
        "first_code_259_after_clear": pack([CLEAR, 259, END]),
        "no_end_code": pack([CLEAR, 65, 66, 67]),
        "clear_clear": pack([CLEAR, CLEAR, 65, 66, END]),
        "clear_mid_stream": pack([CLEAR, 65, 66, 258, CLEAR, 67, 258, 259, END]),
        "kwkwk_after_mid_clear_rejected": pack([CLEAR, 65, 66, CLEAR, 258, END]),
        "end_right_after_clear": pack([CLEAR, 65, CLEAR, END]),
        "frozen_table": pack(literal_fill + [4095, 3000, 258, 65, END]),
        "frozen_table_then_clear": pack(literal_fill + [4095, CLEAR, 66, 258, END]),
        "width_growth_boundary": pack([CLEAR] + [i % 256 for i in range(600)] + [511, 512, END]),
        "trailing_garbage": weezl_text + b"\xde\xad\xbe\xef" * 8,
        "truncated": weezl_text[:-3],
        "no_leading_clear": pack([65, 66, END]),
        "no_leading_clear_kwkwk": pack([65, 258, 66, END]),
        "no_leading_clear_bad_first": pack([258, END]),
    }


def main() -> None:
    if weezl_binary(build=True) is None:
        raise SystemExit("tools/weezl-ref did not build (needs cargo + librust-weezl-dev)")
    inputs = sample_inputs()
    encode_vectors = []
    for name, data in inputs.items():
        theirs = weezl("encode", data)
        assert theirs is not None and weezl("decode", theirs) == data, name
        encode_vectors.append({"name": name, "input": data.hex(), "weezl": theirs.hex()})

    decode_vectors = []
    for name, stream in crafted_streams(weezl("encode", inputs["text"]) or b"").items():
        result = weezl("decode", stream)
        source = "weezl 0.1.5"
        if name in TODAYS_WEEZL:
            assert result is None, f"{name}: weezl 0.1.5 was expected to reject it"
            result, source = TODAYS_WEEZL[name], "docs/design.md (weezl >= 0.1.7)"
        decode_vectors.append(
            {
                "name": name,
                "stream": stream.hex(),
                "output": None if result is None else result.hex(),
                "source": source,
            }
        )

    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(
        json.dumps(
            {
                "oracle": "weezl 0.1.5 (Debian librust-weezl-dev), BitOrder::Msb, 8-bit symbols",
                "encode": encode_vectors,
                "decode": decode_vectors,
            },
            indent=1,
        )
        + "\n"
    )
    print(
        f"wrote {len(encode_vectors)} encode and {len(decode_vectors)} decode vectors "
        f"to {OUTPUT.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
