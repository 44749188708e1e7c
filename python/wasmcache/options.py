"""wasmtime CLI's option strings (``-O``, ``-C``, ``-W``, ``-S``), parsed as wasmtime parses
them, so that a program and the ``wasmcache`` command build the same Engine, and so agree on
its id and its cache entries.

Each option is a comma-separated group of ``NAME[=VALUE]`` items (``-W simd=n,timeout=2s``).
Booleans are ``y``/``yes``/``true``, ``n``/``no``/``false`` or nothing (yes); numbers are
decimal or ``0x`` hex, ``_`` ignored; durations are ``N`` (seconds), ``Ns``, ``Nms``, ``Nus``,
``Nns``. An unknown option, a bad value, and an option wasmtime-py cannot honour are all
ValueError, whose message names the option. No option at all is ``wasmtime.Engine()``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import re
from collections.abc import Sequence
from typing import Optional

import wasmtime

_OPT_LEVELS = {"0": "none", "1": "speed", "2": "speed", "s": "speed_and_size"}
#: -W names of wasm features (and other engine switches) -> wasmtime.Config attributes.
FEATURES = {
    "bulk-memory": "wasm_bulk_memory",
    "component-model": "wasm_component_model",
    "custom-page-sizes": "wasm_custom_page_sizes",
    "exceptions": "wasm_exceptions",
    "function-references": "wasm_function_references",
    "gc": "wasm_gc",
    "gc-support": "gc_support",
    "memory64": "wasm_memory64",
    "multi-memory": "wasm_multi_memory",
    "multi-value": "wasm_multi_value",
    "nan-canonicalization": "cranelift_nan_canonicalization",
    "reference-types": "wasm_reference_types",
    "relaxed-simd": "wasm_relaxed_simd",
    "relaxed-simd-deterministic": "wasm_relaxed_simd_deterministic",
    "shared-memory": "shared_memory",
    "simd": "wasm_simd",
    "stack-switching": "wasm_stack_switching",
    "tail-call": "wasm_tail_call",
    "threads": "wasm_threads",
    "wide-arithmetic": "wasm_wide_arithmetic",
    "epoch-interruption": "epoch_interruption",
}
#: -W store limits -> wasmtime.Store.set_limits keywords.
LIMITS = {
    "max-memory-size": "memory_size",
    "max-table-elements": "table_elements",
    "max-instances": "instances",
    "max-tables": "tables",
    "max-memories": "memories",
}
#: -O options that are wasmtime.Config attributes: name -> (attribute, kind of value).
_OPTIMIZE = {
    "memory-reservation": ("memory_reservation", "size"),
    "memory-reservation-for-growth": ("memory_reservation_for_growth", "size"),
    "memory-guard-size": ("memory_guard_size", "size"),
    "memory-may-move": ("memory_may_move", "bool"),
    "memory-init-cow": ("memory_init_cow", "bool"),
}
_CODEGEN = {
    "parallel-compilation": "parallel_compilation",
    "native-unwind-info": "native_unwind_info",
    "cranelift-debug-verifier": "cranelift_debug_verifier",
}
#: -S options wasmcache honours (wasmtime's names) and their defaults.
WASI_DEFAULTS = {
    "cli": True,
    "inherit-env": False,
    "inherit-stdin": True,
    "inherit-stdout": True,
    "inherit-stderr": True,
    "preview0": True,
}
#: The space wasmtime's CLI leaves for host frames above the wasm stack on an async stack.
HOST_STACK = 512 << 10
_DEFAULT_ASYNC_STACK = 2 << 20

# wasmtime's options that wasmtime-py gives no way to honour, with the reason.
_IMPOSSIBLE = {
    "-O": "wasmtime-py has no setting for it",
    "-C": "wasmtime-py has no setting for it",
    "-W": "wasmtime-py has no setting for it",
    "-S": "wasmtime-py's WASI has no setting for it",
}
_KNOWN_ELSEWHERE = {
    "-O": {
        "regalloc-algorithm", "gc-heap-may-move", "gc-heap-reservation",
        "gc-heap-reservation-for-growth", "gc-heap-guard-size", "gc-heap-initial-size",
        "guard-before-linear-memory", "table-lazy-init", "pooling-allocator",
        "memory-guaranteed-dense-image-size",
    },
    "-C": {
        "compiler", "collector", "cache-config", "inlining",
        "metadata-for-internal-asserts", "metadata-for-gc-heap-corruption",
    },
    "-W": {
        "async-stack-zeroing", "wmemcheck", "trap-on-grow-failure", "all-proposals",
        "shared-everything-threads", "branch-hinting", "extended-const",
        "concurrency-support",
    },
    "-S": {
        "cli-exit-with-code", "nn", "threads", "http", "config", "keyvalue", "listenfd",
        "tcplisten", "tls", "nn-graph", "inherit-network", "allow-ip-name-lookup", "tcp",
        "udp", "network-error-code", "cwd", "config-var", "keyvalue-in-memory-data", "p3",
        "max-resources", "hostcall-fuel", "max-component-handles", "max-random-size",
        "max-http-fields-size",
    },
}  # fmt: skip


class Settings:
    """Everything the options say: the engine's part and the run's part. (A plain class:
    dataclasses costs the command's start-up milliseconds to import.)"""

    def __init__(self) -> None:
        self.config: dict[str, object] = {}  # wasmtime.Config attributes
        self.max_wasm_stack: Optional[int] = None
        self.async_stack_size: Optional[int] = None
        self.timeout: Optional[float] = None  # seconds
        self.fuel: Optional[int] = None
        self.limits: dict[str, int] = {}  # wasmtime.Store.set_limits
        self.unknown_imports_trap = False
        self.unknown_imports_default = False
        self.cache = True
        self.wasi: dict[str, bool] = dict(WASI_DEFAULTS)

    def __repr__(self) -> str:
        return f"Settings({vars(self)!r})"

    @property
    def engine_key(self) -> tuple[object, ...]:
        """What decides the Engine (equal keys, equal engines)."""
        return (
            tuple(sorted(self.config.items())),
            self.max_wasm_stack,
            self.async_stack_size,
        )


def parse_bool(option: str, value: Optional[str]) -> bool:
    """wasmtime's booleans: nothing, y, yes, true; n, no, false (nothing else)."""
    if value in (None, "y", "yes", "true"):
        return True
    if value in ("n", "no", "false"):
        return False
    raise ValueError(f"{option}: unknown boolean {value!r} (use y or n)")


def parse_number(option: str, value: Optional[str]) -> int:
    """wasmtime's sizes and counts: decimal or 0x hex, ``_`` ignored."""
    text = (value or "").replace("_", "")
    match = re.fullmatch(r"0x([0-9a-fA-F]+)|\+?([0-9]+)", text)
    if value is None or not match:
        raise ValueError(f"{option}: not a number: {value!r}")
    number = int(match.group(1), 16) if match.group(1) else int(match.group(2))
    if number >= 1 << 64:
        raise ValueError(f"{option}: number too large to fit in target type: {value!r}")
    return number


_DURATION = r"\+?([0-9]+)(s|ms|us|\u03bcs|ns)?"  # compiled by re when first used
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9}


def parse_duration(option: str, value: Optional[str]) -> float:
    """wasmtime's durations: N (seconds), Ns, Nms, Nus, Nns; as seconds."""
    match = re.fullmatch(_DURATION, value or "")
    if value is None or not match:
        raise ValueError(f"{option}: not a duration: {value!r} (use e.g. 2s or 500ms)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _items(flag: str, groups: Sequence[str]) -> list[tuple[str, Optional[str], str]]:
    """(name, value or None, the item as written) of each comma-separated item."""
    items = []
    for group in groups:
        for item in group.split(","):
            name, sep, value = item.partition("=")
            items.append((name, value if sep else None, f"{flag} {item}"))
    return items


def _refuse(flag: str, name: str, option: str, known: Sequence[str]) -> ValueError:
    if name in _KNOWN_ELSEWHERE[flag] or (flag == "-C" and name.startswith("cranelift-")):
        return ValueError(f"{option}: not supported, {_IMPOSSIBLE[flag]}")
    return ValueError(f"unknown option {option!r} (known: {', '.join(sorted(known))})")


def parse(
    optimize: Sequence[str] = (),
    wasm: Sequence[str] = (),
    codegen: Sequence[str] = (),
    wasi: Sequence[str] = (),
) -> Settings:
    """The Settings of these option groups; ValueError names the first bad item."""
    for groups, flag in ((optimize, "-O"), (wasm, "-W"), (codegen, "-C"), (wasi, "-S")):
        if isinstance(groups, (str, bytes)):
            raise TypeError(f"{flag} options must be a sequence of strings, not one string")
    s = Settings()
    for name, value, option in _items("-O", optimize):
        if name == "opt-level":
            if value not in _OPT_LEVELS:
                raise ValueError(f"{option}: use opt-level=0|1|2|s")
            s.config["cranelift_opt_level"] = _OPT_LEVELS[value]
        elif name in _OPTIMIZE:
            attribute, kind = _OPTIMIZE[name]
            parsed = parse_number if kind == "size" else parse_bool
            s.config[attribute] = parsed(option, value)
        else:
            raise _refuse("-O", name, option, ["opt-level", *_OPTIMIZE])
    for name, value, option in _items("-C", codegen):
        if name == "cache":
            s.cache = parse_bool(option, value)
        elif name in _CODEGEN:
            s.config[_CODEGEN[name]] = parse_bool(option, value)
        elif name == "compiler" and value == "cranelift":
            pass  # the only compiler wasmtime-py has
        else:
            raise _refuse("-C", name, option, ["cache", "compiler=cranelift", *_CODEGEN])
    for name, value, option in _items("-W", wasm):
        if name in FEATURES:
            s.config[FEATURES[name]] = parse_bool(option, value)
        elif name in LIMITS:
            s.limits[LIMITS[name]] = parse_number(option, value)
        elif name == "max-wasm-stack":
            s.max_wasm_stack = parse_number(option, value)
        elif name == "async-stack-size":
            s.async_stack_size = parse_number(option, value)
        elif name == "fuel":
            s.fuel = parse_number(option, value)
        elif name == "timeout":
            s.timeout = parse_duration(option, value)
        elif name == "unknown-imports-trap":
            s.unknown_imports_trap = parse_bool(option, value)
        elif name == "unknown-imports-default":
            s.unknown_imports_default = parse_bool(option, value)
        elif name == "unknown-exports-allow":
            parse_bool(option, value)  # wasmcache never refuses unknown exports
        else:
            known = [*FEATURES, *LIMITS, "max-wasm-stack", "async-stack-size", "fuel"]
            known += ["timeout", "unknown-imports-trap", "unknown-imports-default"]
            raise _refuse("-W", name, option, known)
    for name, value, option in _items("-S", wasi):
        key = "cli" if name == "common" else name
        if key in WASI_DEFAULTS:
            s.wasi[key] = parse_bool(option, value)
        elif name == "preview2":
            if not parse_bool(option, value):
                raise ValueError(f"{option}: not supported (the legacy WASI is gone)")
        else:
            raise _refuse("-S", name, option, [*WASI_DEFAULTS, "common", "preview2"])
    if s.fuel is not None:
        s.config["consume_fuel"] = True
    if s.timeout is not None:
        s.config["epoch_interruption"] = True
    return s


def _set_async_stack_size(config: wasmtime.Config, size: int) -> None:
    """Set the async stack size, which wasmtime-py has no property for (its C library does);
    ValueError where it is missing."""
    from wasmtime import _ffi  # the library wasmtime-py loaded

    setter = getattr(_ffi.dll, "wasmtime_config_async_stack_size_set", None)
    if setter is None:
        raise ValueError(
            f"-W max-wasm-stack above {_DEFAULT_ASYNC_STACK - HOST_STACK} bytes needs a "
            "larger async stack, which this wasmtime-py cannot set"
        )
    setter.restype = None
    setter.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    setter(ctypes.cast(config.ptr(), ctypes.c_void_p), size)


def config_of(settings: Settings) -> wasmtime.Config:
    """A fresh Config with the engine's part of ``settings``."""
    config = wasmtime.Config()
    for attribute, value in settings.config.items():
        setattr(config, attribute, value)
    stack = settings.max_wasm_stack
    if stack is not None:
        if stack <= 0:
            raise ValueError("-W max-wasm-stack must be above 0")
        config.max_wasm_stack = stack
    async_size = settings.async_stack_size
    if async_size is None and stack is not None and stack > _DEFAULT_ASYNC_STACK - HOST_STACK:
        async_size = stack + HOST_STACK  # as wasmtime's CLI does
    if async_size is not None:
        _set_async_stack_size(config, async_size)
    return config


_checked: dict[tuple[object, ...], Optional[str]] = {}


def _probe(settings: Settings) -> Optional[str]:
    """Build the engine in a child process: wasmtime-py aborts the process on a Config that
    wasmtime rejects, so the error is learnt there. None if the engine builds."""
    if settings.engine_key in _checked:
        return _checked[settings.engine_key]
    if hasattr(os, "fork"):
        failed, text = _probe_forked(settings)
    else:
        failed, text = _probe_spawned(settings)
    error = None
    if failed:
        found = re.search(r"on an `Err` value: (.*)", text)
        error = found.group(1).strip() if found else "wasmtime refused this configuration"
    _checked[settings.engine_key] = error
    return error


def _probe_forked(settings: Settings) -> tuple[bool, str]:
    """The probe in a forked child: whether it failed, and what it wrote to stderr."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            faulthandler.disable()  # the abort is expected here
            os.dup2(write_end, 2)
            os.environ["RUST_BACKTRACE"] = "0"
            wasmtime.Engine(config_of(settings))
            os._exit(0)
        except BaseException:
            os._exit(3)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    failed = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    return failed, b"".join(chunks).decode("utf-8", "replace")


#: The spawned probe: the engine part of the settings (a literal) in argv[1].
_PROBE_CHILD = """
import ast, sys, wasmtime
from wasmcache import options
settings = options.Settings()
settings.config, settings.max_wasm_stack, settings.async_stack_size = ast.literal_eval(sys.argv[1])
try:
    wasmtime.Engine(options.config_of(settings))
except BaseException:
    sys.exit(3)
"""


def _probe_spawned(settings: Settings) -> tuple[bool, str]:
    """The probe in a new Python process, where there is no fork (Windows): whether it
    failed, and what it wrote to stderr. The settings travel as a literal (str, int, bool
    and None values only)."""
    import subprocess
    import sys

    literal = repr((settings.config, settings.max_wasm_stack, settings.async_stack_size))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE_CHILD, literal],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RUST_BACKTRACE": "0"},
        check=False,
    )
    return done.returncode != 0, done.stderr.decode("utf-8", "replace")


def engine_of(settings: Settings) -> wasmtime.Engine:
    """The Engine of ``settings`` (``wasmtime.Engine()`` when they change nothing);
    ValueError for a configuration wasmtime refuses."""
    if settings.engine_key == Settings().engine_key:
        return wasmtime.Engine()
    error = _probe(settings)
    if error is not None:
        raise ValueError(f"wasmtime refuses these options: {error}")
    return wasmtime.Engine(config_of(settings))


def config_from_options(optimize: Sequence[str] = (), wasm: Sequence[str] = ()) -> wasmtime.Config:
    """A Config from ``-O`` and ``-W`` option strings; ValueError names a bad one."""
    return config_of(parse(optimize, wasm))


def engine_from_options(
    optimize: Sequence[str] = (),
    wasm: Sequence[str] = (),
    codegen: Sequence[str] = (),
) -> wasmtime.Engine:
    """The Engine of these ``-O``, ``-W`` and ``-C`` option strings, the one ``wasmcache
    run``/``compile`` use with them (``wasmtime.Engine()`` when there are none)."""
    return engine_of(parse(optimize, wasm, codegen))
