"""Running a WASI program as ``wasmtime run`` does: a core module's ``_start`` (or an
``--invoke``d export), or a WASI 0.2 command component's ``wasi:cli/run``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import wasmtime

from wasmcache import kinds
from wasmcache.kinds import Compiled

#: -W options of `run` itself (wasmtime's names); every other -W configures the engine.
RUN_OPTIONS = ("unknown-imports-trap", "unknown-imports-default")
#: wasmtime run's exit code for a trap (128 + SIGABRT).
TRAP_EXIT = 134
_RUN_INTERFACE = "wasi:cli/run@0.2"


class UsageError(Exception):
    """A bad argument: reported with exit code 2."""


@dataclass
class Guest:
    """What the guest gets: wasmtime run's defaults are nothing preopened, no environment."""

    source: str
    args: Sequence[str] = ()
    argv0: Optional[str] = None
    dirs: Sequence[str] = ()  # HOST[::GUEST]
    env: list[list[str]] = field(default_factory=list)
    invoke: Optional[str] = None
    options: set[str] = field(default_factory=set)  # RUN_OPTIONS turned on

    def __post_init__(self) -> None:
        for spec in self.dirs:  # checked before any compile
            host = spec.partition("::")[0]
            if not os.path.isdir(host):
                raise UsageError(f"--dir {spec}: {host} is not a folder")


def guest_env(inherit: bool, items: Sequence[str]) -> list[list[str]]:
    """wasmtime run's rule: nothing from the host unless asked (-S inherit-env, --env)."""
    env: dict[str, str] = dict(os.environ) if inherit else {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise UsageError(f"--env takes NAME[=VALUE], not {item!r}")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return [[k, v] for k, v in env.items()]


def _wasi(guest: Guest) -> wasmtime.WasiConfig:
    wasi = wasmtime.WasiConfig()
    wasi.argv = [guest.argv0 or os.path.basename(guest.source), *guest.args]
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.env = guest.env
    for spec in guest.dirs:
        host, _, inside = spec.partition("::")
        wasi.preopen_dir(host, inside or host)
    return wasi


def _typed(value: str, kind: wasmtime.ValType) -> object:
    text = str(kind)
    try:
        if text in ("i32", "i64"):
            return int(value, 0)
        if text in ("f32", "f64"):
            return float(value)
    except ValueError:
        raise UsageError(f"not a {text}: {value!r}") from None
    raise UsageError(f"--invoke cannot pass a {text} from the command line")


def prepare(engine: wasmtime.Engine, compiled: Compiled, guest: Guest) -> Any:
    """Instantiate the guest; return the call that runs it to an exit code (to be run
    where Ctrl-C cannot reach it, see :func:`wasmcache.cli.interruptible`)."""
    if kinds.of(compiled) == "component":
        return _prepare_component(engine, compiled, guest)
    assert isinstance(compiled, wasmtime.Module)
    return _prepare_module(engine, compiled, guest)


def _prepare_module(engine: wasmtime.Engine, module: wasmtime.Module, guest: Guest) -> Any:
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_wasi(_wasi(guest))
    for option, method in (
        ("unknown-imports-trap", "define_unknown_imports_as_traps"),
        ("unknown-imports-default", "define_unknown_imports_as_default_values"),
    ):
        if option in guest.options:
            define = getattr(linker, method, None)
            if define is None:
                raise UsageError(f"-W {option} needs a newer wasmtime than this one")
            define(module) if option == "unknown-imports-trap" else define(store, module)
    instance = linker.instantiate(store, module)
    exports = instance.exports(store)

    def call() -> int:
        if guest.invoke is None:
            start = exports.get("_start")
            if not isinstance(start, wasmtime.Func):
                raise UsageError(f"{guest.source} is not a WASI command (no _start export)")
            return _exit_code(guest, lambda: start(store))
        initialize = exports.get("_initialize")
        func = exports.get(guest.invoke)
        if not isinstance(func, wasmtime.Func):
            raise UsageError(f"{guest.source} exports no function {guest.invoke!r}")
        params = func.type(store).params
        if len(params) != len(guest.args):
            raise UsageError(
                f"{guest.invoke} takes {len(params)} arguments, {len(guest.args)} given"
            )
        values = [_typed(v, t) for v, t in zip(guest.args, params)]

        def invoke() -> None:
            if isinstance(initialize, wasmtime.Func):
                initialize(store)
            result = func(store, *values)
            for value in result if isinstance(result, list) else [result]:
                if value is not None:
                    print(value)

        return _exit_code(guest, invoke)

    return call


def _prepare_component(engine: wasmtime.Engine, compiled: Compiled, guest: Guest) -> Any:
    from wasmtime.component import Linker

    component = kinds.component_class()
    assert isinstance(compiled, component)

    if guest.invoke is not None:
        raise UsageError("--invoke calls a core module's export; a component runs wasi:cli/run")
    if "unknown-imports-default" in guest.options:
        raise UsageError("-W unknown-imports-default applies to core modules only")
    linker = Linker(engine)
    linker.add_wasip2()
    if "unknown-imports-trap" in guest.options:
        linker.define_unknown_imports_as_traps(compiled)
    store = wasmtime.Store(engine)
    store.set_wasi(_wasi(guest))
    names = [n for n in compiled.type.exports(engine) if n.startswith(_RUN_INTERFACE)]
    if not names:
        raise UsageError(f"{guest.source} is not a WASI command component (no wasi:cli/run)")
    instance = linker.instantiate(store, compiled)
    interface = instance.get_export_index(store, names[0])
    index = None if interface is None else instance.get_export_index(store, "run", interface)
    run = None if index is None else instance.get_func(store, index)
    if run is None:
        raise UsageError(f"{guest.source}: {names[0]} has no run function")

    def call() -> int:
        outcome: list[Any] = []
        code = _exit_code(guest, lambda: outcome.append(run(store)))
        if code == 0 and outcome and getattr(outcome[0], "tag", "ok") != "ok":
            return 1  # run returned an error: wasmtime run's exit code for it
        return code

    return call


def _exit_code(guest: Guest, work: Any) -> int:
    """Run ``work``; the guest's exit code, or wasmtime run's for a trap (its message and
    wasm backtrace printed as one block)."""
    try:
        work()
        return 0
    except wasmtime.ExitTrap as exc:
        return exc.code
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        message = exc.message if isinstance(exc, wasmtime.Trap) else str(exc)
        sys.stdout.flush()
        print(f"wasmcache: error: failed to run {guest.source}\n{message}", file=sys.stderr)
        return TRAP_EXIT
