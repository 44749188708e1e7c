"""Running a WASI program as ``wasmtime run`` does: a core module (its ``_initialize``, then
the ``--invoke``d export, or ``""`` or ``_start`` if it has one), or a WASI 0.2 command
component's ``wasi:cli/run``.

Exit codes as wasmtime's: the guest's ``proc_exit`` code (0 to 125), 134 for a trap (a
timeout included), 1 for any other failure (an invalid exit status, a host error, a bad
``--invoke`` argument).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

import wasmtime

from wasmcache import kinds
from wasmcache.display import shown
from wasmcache.failures import cause_lines, report
from wasmcache.kinds import Compiled
from wasmcache.options import Settings

if TYPE_CHECKING:
    from wasmcache import preview0

#: wasmtime run's exit code for a trap (128 + SIGABRT).
TRAP_EXIT = 134
_RUN_INTERFACE = "wasi:cli/run@0.2"
#: The import module of WASI preview 0 (``wasmcache.preview0.NAME``; that module and its
#: adapter are imported only for a program that imports it).
PREVIEW0 = "wasi_unstable"


class UsageError(Exception):
    """A bad argument: reported with exit code 2."""


class GuestError(Exception):
    """A failure of the run that is not a trap (exit 1, as wasmtime)."""


class Guest:
    """What the guest gets: wasmtime run's defaults are nothing preopened, no environment."""

    def __init__(
        self,
        source: str,
        args: Sequence[str] = (),
        *,
        argv0: Optional[str] = None,
        dirs: Sequence[str] = (),  # HOST[::GUEST]
        env: Optional[list[list[str]]] = None,
        invoke: Optional[str] = None,
        settings: Optional[Settings] = None,
        preloads: Sequence[tuple[str, Compiled]] = (),
        binary: Optional[bytes] = None,
    ) -> None:
        self.source = source
        self.binary = binary  # the module's bytes where they are not the file at source
        self.args = args
        self.argv0 = argv0
        self.dirs = dirs
        self.env: list[list[str]] = env if env is not None else []
        self.invoke = invoke
        self.settings = settings if settings is not None else Settings()
        self.preloads = preloads

    def __repr__(self) -> str:
        return f"Guest({self.source!r}, {list(self.args)!r})"


def guest_env(inherit: bool, items: Sequence[str]) -> list[list[str]]:
    """wasmtime run's rule: nothing from the host unless asked (-S inherit-env, --env);
    every --env item is passed, in order, repeated names included."""
    env: list[list[str]] = []
    if inherit:
        env = [[name, _text(value, f"environment variable {name}")] for name, value in _host_env()]
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise UsageError(f"--env takes NAME[=VALUE], not {item!r}")
        if sep:
            env.append([name, _text(value, f"--env {name}")])
        elif name in os.environ:
            env.append([name, _text(os.environ[name], f"environment variable {name}")])
    return env


def _host_env() -> list[tuple[str, str]]:
    for name in os.environ:
        _text(name, "an environment variable's name")
    return list(os.environ.items())


def _text(value: str, what: str) -> str:
    """``value``, which the guest gets as UTF-8: GuestError naming ``what`` if it is not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GuestError(f"{what} is not valid UTF-8") from None
    return value


def _wasi(guest: Guest) -> wasmtime.WasiConfig:
    wasi = wasmtime.WasiConfig()
    argv0 = guest.argv0 if guest.argv0 is not None else os.path.basename(guest.source)
    wasi.argv = [_text(a, "an argument") for a in (argv0, *guest.args)]
    flags = guest.settings.wasi
    if flags["inherit-stdin"]:
        wasi.inherit_stdin()
    if flags["inherit-stdout"]:
        wasi.inherit_stdout()
    if flags["inherit-stderr"]:
        wasi.inherit_stderr()
    wasi.env = guest.env
    for spec in guest.dirs:
        host, _, inside = spec.partition("::")
        if not os.path.isdir(host):
            raise GuestError(f"--dir {spec}: {host} is not a folder")
        wasi.preopen_dir(host, inside or host)
    return wasi


def prepare(engine: wasmtime.Engine, compiled: Compiled, guest: Guest) -> Callable[[], int]:
    """The call that runs the guest to an exit code (to be run where Ctrl-C cannot reach it,
    see :func:`wasmcache.cli.interruptible`); what it prints on failure is said there too."""
    if kinds.of(compiled) == "component":
        if guest.preloads:
            raise UsageError("--preload cannot be used with components")
        if guest.invoke is not None:
            raise UsageError(
                "--invoke on a component is not supported (a component runs its wasi:cli/run)"
            )
        return lambda: _run(
            guest, engine, lambda store: _run_component(engine, compiled, guest, store)
        )
    assert isinstance(compiled, wasmtime.Module)
    module = compiled
    return lambda: _run(guest, engine, lambda store: _run_module(engine, module, guest, store))


def _store(engine: wasmtime.Engine, guest: Guest) -> wasmtime.Store:
    settings = guest.settings
    store = wasmtime.Store(engine)
    if settings.limits:
        store.set_limits(**settings.limits)
    if settings.fuel is not None:
        store.set_fuel(settings.fuel)
    if settings.timeout is not None:
        store.set_epoch_deadline(1)
    if settings.wasi["cli"]:
        store.set_wasi(_wasi(guest))
    return store


def _run(guest: Guest, engine: wasmtime.Engine, work: Callable[[wasmtime.Store], int]) -> int:
    """Run ``work``; the guest's exit code, or wasmtime run's for a failure, which is
    reported (a trap's message and wasm backtrace as one block)."""
    timer: Optional[threading.Timer] = None
    try:
        store = _store(engine, guest)
        if guest.settings.timeout is not None:
            timer = threading.Timer(guest.settings.timeout, engine.increment_epoch)
            timer.daemon = True
            timer.start()
        return work(store)
    except wasmtime.ExitTrap as exc:
        if guest.settings.wasi["cli"]:
            return exc.code
        return _failed(guest, exc)
    except wasmtime.Trap as exc:
        return _trapped(guest, exc.message)
    except wasmtime.WasmtimeError as exc:
        if _is_trap(str(exc)):  # a component's trap arrives as a plain error
            return _trapped(guest, str(exc))
        return _failed(guest, exc)
    except GuestError as exc:
        return _failed(guest, exc)
    finally:
        if timer is not None:
            timer.cancel()


def _is_trap(message: str) -> bool:
    """Whether a wasmtime error message is a trap's (its cause is a ``wasm trap``)."""
    return any(line.strip().startswith("wasm trap:") for line in message.splitlines())


def _trapped(guest: Guest, message: str) -> int:
    """Report a trap as one block (message and wasm backtrace); wasmtime run's exit code."""
    sys.stdout.flush()
    what = f"failed to run {guest.source}"
    if guest.settings.timeout is not None and "interrupt" in message:
        what += f" (timed out after {guest.settings.timeout:g} s)"
    lines = [f"wasmcache: error: {what}", *message.splitlines()]
    print("\n".join(shown(line) for line in lines), file=sys.stderr)
    return TRAP_EXIT


def _failed(guest: Guest, exc: BaseException) -> int:
    sys.stdout.flush()
    report(f"failed to run {guest.source}", cause_lines(exc))
    return 1


def _run_module(
    engine: wasmtime.Engine, module: wasmtime.Module, guest: Guest, store: wasmtime.Store
) -> int:
    settings = guest.settings
    linker = wasmtime.Linker(engine)
    adapter: Optional[preview0.Adapter] = None
    if settings.wasi["cli"]:
        linker.define_wasi()
        if settings.wasi["preview0"] and any(i.module == PREVIEW0 for i in module.imports):
            from wasmcache import preview0

            adapter = preview0.Adapter(engine, store, linker, module)
    for name, preloaded in guest.preloads:
        assert isinstance(preloaded, wasmtime.Module)
        linker.define_module(store, name, preloaded)
    for wanted, method in (
        (settings.unknown_imports_trap, "define_unknown_imports_as_traps"),
        (settings.unknown_imports_default, "define_unknown_imports_as_default_values"),
    ):
        if wanted:
            define = getattr(linker, method, None)
            if define is None:
                raise UsageError(f"{method} needs a newer wasmtime than this one")
            define(module) if method.endswith("traps") else define(store, module)
    instance = linker.instantiate(store, module)
    exports = instance.exports(store)
    if adapter is not None:
        adapter.attach(instance)
    initialize = exports.get("_initialize")
    if isinstance(initialize, wasmtime.Func):
        initialize(store)
    if guest.invoke is not None:
        name = guest.invoke
        func = exports.get(name)
        if not isinstance(func, wasmtime.Func):
            raise GuestError(f"no func export named `{guest.invoke}` found")
    else:
        found = exports.get("")
        name = "" if isinstance(found, wasmtime.Func) else "_start"
        func = exports.get(name)
        if not isinstance(func, wasmtime.Func):
            return 0  # nothing to run: instantiating it was the run
    _refuse_v128(guest, name)
    _call(store, func, guest)
    return 0


def _refuse_v128(guest: Guest, name: str) -> None:
    """GuestError if the export ``name`` has a v128 parameter or result: wasmtime-py's C
    API aborts the process when asked for such a signature, so it is read from the
    binary first (the type section only, unless a v128 appears there)."""
    from wasmcache import signatures

    def signature() -> Optional[signatures.Signature]:
        if guest.binary is not None:
            if not signatures.may_hold_v128(guest.binary):
                return None
            return signatures.export_signature(guest.binary, name)
        try:
            with open(guest.source, "rb") as f:
                if not signatures.may_hold_v128(f):
                    return None
                f.seek(0)
                return signatures.export_signature(f, name)
        except OSError:
            return None  # read as compiled: nothing more to learn here

    found = signature()
    if found is None:
        return
    params, results = found
    if signatures.V128 in params:
        raise GuestError("unsupported argument type v128")
    if signatures.V128 in results:
        raise GuestError("unsupported result type v128: wasmtime-py cannot pass v128 values")


def _call(store: wasmtime.Store, func: wasmtime.Func, guest: Guest) -> None:
    """Call ``func`` with the arguments parsed for its parameters; print its results."""
    ty = func.type(store)
    params = ty.params
    if len(guest.args) < len(params):
        name = f"`{guest.invoke}`" if guest.invoke is not None else "command default"
        raise GuestError(f"not enough arguments for {name}")
    arguments: list[object] = []
    if params:
        from wasmcache import invoke as values  # imported for arguments and results only

        try:
            arguments = [values.parse(text, kind) for text, kind in zip(guest.args, params)]
        except values.InvokeError as exc:
            raise GuestError(str(exc)) from None
    result: Any = func(store, *arguments)
    results = ty.results
    if not results:
        return
    from wasmcache import invoke as values

    outputs = result if len(results) > 1 else [result]
    for value, kind in zip(outputs, results):
        print(values.format_result(value, kind))


def _run_component(
    engine: wasmtime.Engine, compiled: Compiled, guest: Guest, store: wasmtime.Store
) -> int:
    from wasmtime.component import Linker

    component = kinds.component_class()
    assert isinstance(compiled, component)
    if guest.settings.unknown_imports_default:
        raise GuestError("cannot use -W unknown-imports-default with components")
    linker = Linker(engine)
    if guest.settings.wasi["cli"]:
        linker.add_wasip2()
    if guest.settings.unknown_imports_trap:
        linker.define_unknown_imports_as_traps(compiled)
    names = [n for n in compiled.type.exports(engine) if n.startswith(_RUN_INTERFACE)]
    if not names:
        raise GuestError("no exported instance named `wasi:cli/run@0.2.x` found")
    instance = linker.instantiate(store, compiled)
    interface = instance.get_export_index(store, names[0])
    index = None if interface is None else instance.get_export_index(store, "run", interface)
    run = None if index is None else instance.get_func(store, index)
    if run is None:
        raise GuestError(f"{names[0]} has no run function")
    outcome = run(store)
    return 0 if getattr(outcome, "tag", "ok") == "ok" else 1  # `err`: exit 1, silently
