"""Engine settings from wasmtime CLI's option strings, so that a program and the
``wasmcache`` command build the same Engine, and so agree on its id and its cache entries.

``-O opt-level=0|1|2|s`` and ``-W NAME[=y|n]`` for wasm features, ``-W max-wasm-stack=N``.
No option at all is ``wasmtime.Engine()``, the library's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import wasmtime

_OPT_LEVELS = {"0": "none", "1": "speed", "2": "speed", "s": "speed_and_size"}
_YES = {"", "y", "yes", "true"}
_NO = {"n", "no", "false"}
#: -W names of wasm features -> wasmtime.Config attributes.
FEATURES = {
    "bulk-memory": "wasm_bulk_memory",
    "exceptions": "wasm_exceptions",
    "function-references": "wasm_function_references",
    "gc": "wasm_gc",
    "memory64": "wasm_memory64",
    "multi-memory": "wasm_multi_memory",
    "multi-value": "wasm_multi_value",
    "reference-types": "wasm_reference_types",
    "relaxed-simd": "wasm_relaxed_simd",
    "simd": "wasm_simd",
    "tail-call": "wasm_tail_call",
    "threads": "wasm_threads",
    "wide-arithmetic": "wasm_wide_arithmetic",
}


def _split(option: str) -> tuple[str, str]:
    name, _, value = option.partition("=")
    return name.strip(), value.strip()


def config_from_options(optimize: Sequence[str] = (), wasm: Sequence[str] = ()) -> wasmtime.Config:
    """A Config from ``-O`` and ``-W`` option strings; ValueError names a bad one."""
    config = wasmtime.Config()
    for option in optimize:
        name, value = _split(option)
        if name != "opt-level" or value not in _OPT_LEVELS:
            raise ValueError(f"unknown -O option {option!r} (use opt-level=0|1|2|s)")
        config.cranelift_opt_level = _OPT_LEVELS[value]
    for option in wasm:
        name, value = _split(option)
        if name == "max-wasm-stack":
            if not value.isdigit() or int(value) <= 0:
                raise ValueError(f"-W max-wasm-stack takes a number of bytes, not {value!r}")
            config.max_wasm_stack = int(value)
        elif name in FEATURES and value.lower() in _YES | _NO:
            setattr(config, FEATURES[name], value.lower() in _YES)
        else:
            known = ", ".join(["max-wasm-stack=N", *sorted(FEATURES)])
            raise ValueError(f"unknown -W option {option!r} (known: {known})")
    return config


def engine_from_options(optimize: Sequence[str] = (), wasm: Sequence[str] = ()) -> wasmtime.Engine:
    """The Engine of these option strings (``wasmtime.Engine()`` when there are none)."""
    if not optimize and not wasm:
        return wasmtime.Engine()
    return wasmtime.Engine(config_from_options(optimize, wasm))
