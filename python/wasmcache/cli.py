"""The ``wasmcache`` command: run, compile, ls, stats, verify, prune, clear, demo."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, TypeVar, Union, cast

import wasmtime

from wasmcache import kinds, logs, options, runargs, runner
from wasmcache.base import ModuleCache, read_wasm
from wasmcache.config import default_cache_dir
from wasmcache.display import shown
from wasmcache.engine import engine_id
from wasmcache.errors import CacheError
from wasmcache.failures import Failed, cause_lines, report
from wasmcache.filesystem import FileSystemCache
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled
from wasmcache.options import Settings
from wasmcache.progress import elapsed
from wasmcache.runner import Guest, GuestError, UsageError, guest_env

if TYPE_CHECKING:
    import argparse

    from wasmcache.maintenance import Listed

#: A size (compiled by ``re`` when first used: compiling costs time at every start).
_SIZE = r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: Room for the host's frames on the thread that runs a guest with a large wasm stack.
_THREAD_STACK = 8 << 20


T = TypeVar("T")


def parse_size(text: str) -> int:
    """Bytes from a size like ``1048576``, ``512K``, ``512M``, ``2G``, ``1.5GiB``."""
    match = re.fullmatch(_SIZE, text, re.IGNORECASE)
    if not match:
        raise UsageError(f"not a size: {text!r} (use e.g. 512M or 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def cli_settings(args: Optional[argparse.Namespace] = None) -> Settings:
    """The -O/-C/-W/-S options of a command, parsed as wasmtime parses them."""
    try:
        return options.parse(
            getattr(args, "optimize", None) or [],
            getattr(args, "wasm", None) or [],
            getattr(args, "codegen", None) or [],
            getattr(args, "wasi", None) or [],
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cli_engine(args: Optional[argparse.Namespace] = None) -> wasmtime.Engine:
    """The engine of the commands: the library's default ``wasmtime.Engine()``, or the one
    of the ``-O``/``-C``/``-W`` options (as :func:`wasmcache.options.engine_from_options`
    builds it), so ``wasmcache compile`` fills exactly what a program's ``load_or_compile``
    reads."""
    try:
        return options.engine_of(cli_settings(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def interruptible(work: Callable[[], T], stack_size: int = 0) -> T:
    """Run ``work`` in a thread (with a stack of ``stack_size`` bytes, 0 for the default);
    Ctrl-C ends the process at once with exit code 130 (a compile or a guest cannot be
    stopped from Python; a save in progress leaves only a temp file, which cleanup
    removes)."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    previous = threading.stack_size(stack_size) if stack_size else None
    try:
        worker = threading.Thread(target=call, name="wasmcache-work", daemon=True)
        worker.start()
    finally:
        if previous is not None:
            threading.stack_size(previous)
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def read_text(path: str, data: bytes) -> bytes:
    """The binary of WebAssembly text ``data`` (read from ``path``); Failed names the file
    (never ``<anon>``)."""
    what = f"cannot parse {path} as WebAssembly text"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Failed(what, ValueError(f"not valid UTF-8 (byte {exc.start})")) from None
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        message = str(exc).replace("<anon>", path)
        raise Failed(what, wasmtime.WasmtimeError(message)) from None


def source_bytes(path: str) -> Optional[bytes]:
    """What to compile for ``path``: None for a binary file (compiled from its path, so
    direct mode applies), else the binary itself: of standard input for ``-``, of
    WebAssembly text (told by content, not by name). Failed if it cannot be read."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                if f.read(4) == b"\0asm":
                    return None
                f.seek(0)
                data = f.read()
    except OSError as exc:
        raise Failed(f"cannot read {path}", exc) from exc
    return data if data[:4] == b"\0asm" else read_text(path, data)


def _compile(
    cache: Optional[ModuleCache],
    engine: wasmtime.Engine,
    path: str,
    wasm: Optional[bytes] = None,
) -> tuple[Compiled, Optional[ModuleHash]]:
    """The module or component at ``path`` (or ``wasm``, its bytes): from the cache, or
    compiled (and cached), saying so on stderr when that takes a while; Ctrl-C ends the
    process at once. Also the key it was loaded or saved under (None without a cache).
    Failed names the file and wasmtime's causes."""
    try:
        size = human(len(wasm) if wasm is not None else os.stat(path).st_size)
    except OSError as exc:
        raise Failed(f"cannot read {path}", exc) from exc
    source: Union[bytes, str] = wasm if wasm is not None else path

    def work() -> tuple[Compiled, Optional[ModuleHash]]:
        if cache is None:
            data = wasm if wasm is not None else read_wasm(path)
            return kinds.compile(engine, data), None
        return cache._load_or_compile(engine, source, None)

    try:
        with elapsed(f"compiling {shown(os.path.basename(path))} ({size})"):
            return interruptible(work)
    except (wasmtime.WasmtimeError, CacheError) as exc:
        raise Failed(f"cannot compile {path}", exc) from exc


def compile_source(cache: Optional[ModuleCache], engine: wasmtime.Engine, path: str) -> Compiled:
    """:func:`_compile` of a binary, a text file or standard input (``-``)."""
    return _compile(cache, engine, path, source_bytes(path))[0]


# -- the fleet tier and its keys ------------------------------------------------------------


def _pem_source(value: str) -> Union[bytes, str]:
    """A key given on the command line or in the environment: PEM text, or a file's path."""
    return value.encode() if value.lstrip().startswith("-----BEGIN") else value


def runtime_cache(args: argparse.Namespace, local: FileSystemCache) -> ModuleCache:
    """The local folder, in front of the shared bucket when one is configured
    (``--remote`` or ``$WASMCACHE_REMOTE``)."""
    url = args.remote or os.environ.get("WASMCACHE_REMOTE")
    if not url:
        return local
    from wasmcache.remote import ObjectStoreCache

    signing = args.signing_key or os.environ.get("WASMCACHE_SIGNING_KEY")
    trusted = list(args.trusted_key or [])
    if not trusted and os.environ.get("WASMCACHE_TRUSTED_KEYS"):
        text = os.environ["WASMCACHE_TRUSTED_KEYS"]
        trusted = [text] if "-----BEGIN" in text else text.split(os.pathsep)
    try:
        shared = ObjectStoreCache(
            url,
            endpoint=args.endpoint or os.environ.get("WASMCACHE_ENDPOINT"),
            local=local,
            signing_key=_pem_source(signing) if signing else None,
            trusted_keys=[_pem_source(t) for t in trusted] if trusted else None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return local.with_fallback(shared)


def cmd_keygen(args: argparse.Namespace, cache: FileSystemCache) -> int:
    from wasmcache.signing import generate_pem_pair

    folder = Path(args.out)
    private_path, public_path = folder / f"{args.name}.pem", folder / f"{args.name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path} exists: not overwriting a key")
    private, public = generate_pem_pair()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_bytes(public)
    print(f"signing key (keep it secret, for the machines that compile): {private_path}")
    print(f"public key (for every machine that loads, --trusted-key): {public_path}")
    return 0


# -- commands ------------------------------------------------------------------------


def _preloads(
    specs: Sequence[str], stack: Optional[ModuleCache], engine: wasmtime.Engine
) -> list[tuple[str, Compiled]]:
    """The --preload NAME=PATH modules, compiled (through the cache) in order."""
    preloads = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise UsageError(f"--preload {spec}: must contain exactly one equals sign (NAME=PATH)")
        compiled = compile_source(stack, engine, path)
        if kinds.of(compiled) != "module":
            raise Failed(f"cannot preload {path}", ValueError("components cannot be preloaded"))
        preloads.append((name, compiled))
    return preloads


def cmd_run(args: argparse.Namespace, cache: FileSystemCache) -> int:
    settings = cli_settings(args)
    engine = cli_engine(args)
    source = args.file
    use_cache = settings.cache and not args.no_cache
    stack = runtime_cache(args, cache) if use_cache else None
    env = guest_env(settings.wasi["inherit-env"], args.env or [])
    preloads = _preloads(args.preload or [], stack, engine)
    binary = source_bytes(source)
    compiled = _compile(stack, engine, source, binary)[0]
    guest = Guest(
        "/dev/stdin" if source == "-" else source,
        args.args,
        argv0=args.argv0,
        dirs=args.dir or [],
        env=env,
        invoke=args.invoke,
        settings=settings,
        preloads=preloads,
        binary=binary,
    )
    call = runner.prepare(engine, compiled, guest)
    stack_size = 0
    if settings.max_wasm_stack is not None and settings.max_wasm_stack > _THREAD_STACK // 2:
        stack_size = settings.max_wasm_stack + _THREAD_STACK
    code: int = interruptible(call, stack_size)
    return code


def cmd_compile(args: argparse.Namespace, cache: FileSystemCache) -> int:
    engine = cli_engine(args)
    stack = runtime_cache(args, cache)
    failed = 0
    for path in args.files:
        start = time.perf_counter()
        _, key = _compile(stack, engine, path, source_bytes(path))
        assert key is not None
        try:
            cached = cache.contains(key, engine)
        except CacheError:
            cached = False  # the warning above says why
        if not cached:
            print(
                f"{shown(path)}: compiled but NOT cached (see the warning above)", file=sys.stderr
            )
            failed += 1
            continue
        print(f"{shown(path)}: cached ({time.perf_counter() - start:.2f} s)")
    return 1 if failed else 0


def _entry_rows(cache: FileSystemCache) -> list[Listed]:
    """Every entry, the most recently used first (entries used at the same time in
    listing order). The cyclic garbage collector waits meanwhile: the listing makes a few
    objects per entry and no cycles, which it would walk again and again (a tenth of
    the time at 50,000 entries)."""
    import gc

    from wasmcache.maintenance import listed

    paused = gc.isenabled()
    gc.disable()
    try:
        rows = listed(cache)
    finally:
        if paused:
            gc.enable()
    rows.sort(key=attrgetter("last_used"), reverse=True)  # reverse=True keeps ties in order
    return rows


def _row_dict(row: Listed) -> dict[str, Any]:
    info = row.info
    return {
        "key": row.key,
        "engine": row.engine_folder,
        "bytes": row.size,
        "last_used": row.last_used,
        "path": row.path,
        "kind": info.kind if info else None,
        "source": info.source if info else None,
        "wasm_size": info.wasm_size if info else None,
        "compile_seconds": info.compile_seconds if info else None,
        "created": info.created if info else None,
        "wasmtime": info.wasmtime if info else None,
    }


def _source_column(name: Optional[str]) -> str:
    """An entry's source as ``ls`` shows it: escaped, "-" for none, its last 21
    characters after "..." when longer than 24."""
    source = shown(name) if name else "-"
    return source if len(source) <= 24 else "..." + source[-21:]


class _Minutes:
    """``time.strftime("%Y-%m-%d %H:%M", time.localtime(t))``, worked out once per minute
    of the epoch whose local time is one minute too (no change of UTC offset within it,
    a whole-minute offset); any other minute is formatted second by second."""

    def __init__(self) -> None:
        self._known: dict[int, Optional[str]] = {}

    def __call__(self, t: float) -> str:
        minute = int(t // 60)
        try:
            shown_minute = self._known[minute]
        except KeyError:
            first, last = time.localtime(minute * 60), time.localtime(minute * 60 + 59)
            whole = first.tm_gmtoff == last.tm_gmtoff and first.tm_gmtoff % 60 == 0
            shown_minute = time.strftime("%Y-%m-%d %H:%M", first) if whole else None
            self._known[minute] = shown_minute
        if shown_minute is None:
            return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
        return shown_minute


def cmd_ls(args: argparse.Namespace, cache: FileSystemCache) -> int:
    rows = _entry_rows(cache)
    if args.json:
        import json

        print(json.dumps([_row_dict(row) for row in rows], indent=2))
        return 0
    if not rows:
        print(f"no entries in {shown(cache.cache_dir)}")
        return 0
    lines = [
        f"{'SOURCE':<24} {'KIND':<9} {'SIZE':>10} {'COMPILE':>9} {'LAST USED':<16} "
        f"{'KEY':<16} ENGINE"
    ]
    minute = _Minutes()
    sizes: dict[int, str] = {}
    sources: dict[Optional[str], str] = {}
    # Columns padded by ljust/rjust (as the format specs <N and >N pad text, at half the cost).
    for _path, engine, key, size, last_used, info in rows:
        size_text = sizes.get(size)
        if size_text is None:
            size_text = sizes[size] = human(size).rjust(10)
        if info is None:
            source, kind, compile_seconds = "-", "?", "-"
        else:
            column = sources.get(info.source)
            if column is None:
                column = sources[info.source] = _source_column(info.source)
            source = column
            kind = info.kind or "?"
            seconds = info.compile_seconds
            compile_seconds = "-" if seconds is None else f"{seconds:.1f} s"
        lines.append(
            f"{source.ljust(24)} {kind.ljust(9)} {size_text} {compile_seconds.rjust(9)} "
            f"{minute(last_used).ljust(16)} {key[:16]} {engine}"  # a key: 16 or 64 hex digits
        )
    lines.append("")
    sys.stdout.write("\n".join(lines))
    return 0


def cmd_stats(args: argparse.Namespace, cache: FileSystemCache) -> int:
    from wasmcache import metrics

    summary = cache.summary()
    kept = metrics.MetricsFile(str(cache.cache_dir), shared_group=cache.shared_group)
    refused: Optional[str] = None
    try:
        counted = kept.read()
    except metrics.BadMetrics as exc:
        counted, refused = {}, str(exc)
    counters = metrics.merge((metrics.Counters("filesystem").snapshot(), counted))
    if refused is not None:
        print(f"wasmcache: warning: metrics not shown: {shown(refused)}", file=sys.stderr)
    fmt = "json" if args.json else args.format
    if fmt == "prometheus":
        sys.stdout.write(metrics.prometheus_text(counters))
        return 0
    folders = {
        name: {
            "entries": part.entries,
            "bytes": part.bytes,
            "compile_seconds": round(part.compile_seconds, 3),
        }
        for name, part in summary.items()
    }
    parts = list(summary.values())
    used = [u for part in parts for u in (part.oldest_use, part.newest_use) if u is not None]
    entries, total = sum(p.entries for p in parts), sum(p.bytes for p in parts)
    modules, components = sum(p.modules for p in parts), sum(p.components for p in parts)
    # What rebuilding the cache would cost (entries that recorded their compile time).
    held = round(sum(p.compile_seconds for p in parts), 3)
    if fmt == "json":
        stats = {
            "cache_dir": str(cache.cache_dir),
            "engine_id": engine_id(cli_engine(args)),
            "entries": entries,
            "bytes": total,
            "modules": modules,
            "components": components,
            "compile_seconds": held,
            "engine_folders": folders,
            "oldest_use": min(used, default=None),
            "newest_use": max(used, default=None),
            # Summed over every process that used the folder (see wasmcache.metrics).
            "metrics": counters,
            "metrics_refused": refused,
        }
        import json

        print(json.dumps(stats, indent=2))
        return 0
    print(f"cache folder: {shown(cache.cache_dir)}")
    print(
        f"entries:      {_count(entries, 'entry', 'entries')} ({human(total)}): "
        f"{_count(modules, 'module', 'modules')}, "
        f"{_count(components, 'component', 'components')}"
    )
    print(f"compile time held: {held:.1f} s (what a new cache would spend)")
    for name, folder in sorted(folders.items()):
        print(
            f"  {shown(name)}: {_count(int(folder['entries']), 'entry', 'entries')}, "
            f"{human(folder['bytes'])}, {folder['compile_seconds']:.1f} s of compiling"
        )
    if refused is None:
        print("since counting began (every process that used this folder):")
        for tier, values in counters.items():
            shown_values = ", ".join(
                f"{name} {value:.1f}" if name in metrics.SECONDS else f"{name} {value}"
                for name, value in values.items()
            )
            print(f"  {tier}: {shown_values}")
    return 0


def cmd_verify(args: argparse.Namespace, cache: FileSystemCache) -> int:
    checked = len(cache.entries())
    bad = cache.verify_entries(fix=args.fix)
    for entry, reason in bad:
        action = "removed" if args.fix else "bad"
        print(f"{action}: {shown(entry.path)}: {shown(reason)}")
    removed = " (removed)" if args.fix and bad else ""
    print(f"{_count(checked, 'entry', 'entries')} checked, {len(bad)} bad{removed}")
    return 1 if bad and not args.fix else 0


def cmd_prune(args: argparse.Namespace, cache: FileSystemCache) -> int:
    removed = cache.prune(parse_size(args.max_bytes))
    freed = sum(e.size for e in removed)
    print(f"removed {_count(len(removed), 'entry', 'entries')} ({human(freed)})")
    return 0


def cmd_clear(args: argparse.Namespace, cache: FileSystemCache) -> int:
    removed = _count(cache.clear(), "entry", "entries")
    print(f"removed {removed} from {shown(cache.cache_dir)}")
    return 0


def cmd_demo(args: argparse.Namespace, cache: FileSystemCache) -> int:
    import tempfile

    from wasmcache import synth

    functions, data_mb = args.functions, args.data_mb
    with tempfile.TemporaryDirectory(prefix="wasmcache-demo-") as scratch:
        demo_cache = FileSystemCache(Path(scratch) / "cache")
        wasm = synth.data_module(data_mb << 20, functions=functions, seed=2026)
        key = ModuleHash.xxhash(wasm)
        print(f"module: {human(len(wasm))} of wasm ({functions} functions, {data_mb} MiB of data)")

        engine = wasmtime.Engine()
        start = time.perf_counter()
        with elapsed("cold compile"):
            module = wasmtime.Module(engine, wasm)
        cold = time.perf_counter() - start
        print(f"cold compile (wasmtime):    {cold * 1e3:9.1f} ms")

        start = time.perf_counter()
        demo_cache.save(key, engine, module)
        saved = time.perf_counter() - start
        size = demo_cache.path(key, engine).stat().st_size
        print(f"save to a temporary cache:  {saved * 1e3:9.1f} ms  ({human(size)} entry)")
        del module

        fresh_engine = wasmtime.Engine()  # as a new process would
        start = time.perf_counter()
        loaded = demo_cache.load(key, fresh_engine, kind="module")
        assert isinstance(loaded, wasmtime.Module)
        warm = time.perf_counter() - start
        print(f"warm load from it:          {warm * 1e3:9.1f} ms")
        print(f"speed-up:                   {cold / warm:9.0f}x")

        store = wasmtime.Store(fresh_engine)
        exports = wasmtime.Instance(store, loaded, []).exports(store)
        add, probe = exports["add"], exports["probe"]
        assert isinstance(add, wasmtime.Func) and isinstance(probe, wasmtime.Func)
        ok = add(store, 2, 3) == 5 and probe(store, (data_mb << 20) - 1) == wasm[-1]
        print(
            f"the loaded module runs: add(2, 3) = {add(store, 2, 3)}, "
            f"data check {'ok' if ok else 'FAILED'}"
        )
        return 0 if ok else 1


# -- parsing and dispatch ------------------------------------------------------------------------


def _versions() -> str:
    import importlib.metadata

    return (
        f"wasmcache {importlib.metadata.version('wasmcache')} "
        f"(wasmtime {importlib.metadata.version('wasmtime')})"
    )


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """wasmtime CLI's engine options, with their names (see wasmcache.options)."""
    parser.add_argument(
        "-O", "--optimize", dest="optimize", action="append", metavar="KEY[=VAL[,..]]",
        help="optimization, e.g. opt-level=0|1|2|s (as wasmtime run -O)",
    )  # fmt: skip
    parser.add_argument(
        "-C", "--codegen", dest="codegen", action="append", metavar="KEY[=VAL[,..]]",
        help="codegen: cache=y|n (wasmcache's cache), parallel-compilation, ... (as wasmtime -C)",
    )  # fmt: skip
    parser.add_argument(
        "-W", "--wasm", dest="wasm", action="append", metavar="KEY[=VAL[,..]]",
        help="wasm features and limits, e.g. simd=n, max-wasm-stack=N, timeout=2s "
        "(as wasmtime run -W)",
    )  # fmt: skip


def _global_options(parser: argparse.ArgumentParser, below: bool) -> None:
    """The options every command takes, before or after its name (``below``: in a
    subcommand, where an absent option leaves the value given before it)."""
    import argparse

    default: Any = argparse.SUPPRESS if below else None
    parser.add_argument(
        "--cache-dir", default=default,
        help="cache folder (default: $WASMCACHE_DIR or the user cache folder)",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS if below else False,
        help="debug logs, tracebacks",
    )  # fmt: skip
    fleet = parser.add_argument_group("shared bucket (run and compile)")
    fleet.add_argument(
        "--remote", metavar="s3://BUCKET/PREFIX", default=default,
        help="also use this bucket ($WASMCACHE_REMOTE)",
    )  # fmt: skip
    fleet.add_argument("--endpoint", default=default, help="S3 endpoint URL ($WASMCACHE_ENDPOINT)")
    fleet.add_argument(
        "--signing-key", metavar="PEM", default=default,
        help="sign uploads with this Ed25519 key file ($WASMCACHE_SIGNING_KEY: a path or PEM)",
    )  # fmt: skip
    fleet.add_argument(
        "--trusted-key", metavar="PEM", action="append", default=default,
        help="load only objects signed by this public key file (repeatable; "
        "$WASMCACHE_TRUSTED_KEYS: paths separated by ':', or PEM)",
    )  # fmt: skip


#: The options taken before a command, in the exact spellings :func:`command_named`
#: looks past: the flags, and those that take a value.
_GLOBAL_FLAGS = frozenset({"-v", "--verbose"})
_GLOBAL_VALUED = frozenset(
    {"--cache-dir", "--remote", "--endpoint", "--signing-key", "--trusted-key"}
)


def command_named(argv: Sequence[str]) -> Optional[str]:
    """The command ``argv`` runs, when only global options in their exact spellings
    come before it; None otherwise (help, an abbreviation, no command)."""
    position = 0
    while position < len(argv):
        arg = argv[position]
        if arg in _GLOBAL_FLAGS:
            position += 1
        elif arg in _GLOBAL_VALUED:
            position += 2
        elif arg.partition("=")[0] in _GLOBAL_VALUED:
            position += 1
        else:
            return None if arg.startswith("-") else arg
    return None


class _Skipped:
    """Stands in for the parser of a command that is not being run: whatever it is
    given is dropped (building the parsers of every command costs milliseconds)."""

    def __getattr__(self, name: str) -> Callable[..., _Skipped]:
        return self._drop

    def _drop(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, a command's name, the one of that
    command alone (parses its arguments exactly as the whole parser does)."""
    import argparse

    from wasmcache.helpformat import Formatter, version_action

    parser = argparse.ArgumentParser(
        prog="wasmcache",
        description="Cache of compiled WebAssembly modules and components for wasmtime.",
        formatter_class=Formatter,
    )
    _global_options(parser, below=False)
    parser.add_argument("--version", action=version_action(_versions))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Any, text: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return cast(argparse.ArgumentParser, _Skipped())
        p = sub.add_parser(name, help=text, description=text, formatter_class=Formatter)
        _global_options(p, below=True)
        p.set_defaults(handler=handler, parser=p)
        return p

    run = command(
        "run", cmd_run, "run a WASI program as `wasmtime run` does, compiled code from the cache"
    )
    _engine_options(run)
    run.add_argument(
        "-S", "--wasi", dest="wasi", action="append", metavar="KEY[=VAL[,..]]",
        help="WASI options: inherit-env, cli=n, preview0=n, inherit-stdin=n, ... (as wasmtime -S)",
    )  # fmt: skip
    run.add_argument("--no-cache", action="store_true", help="compile without the cache")
    run.add_argument(
        "--dir", action="append", metavar="HOST[::GUEST]",
        help="give the guest this host folder, at GUEST (default: the same path); repeatable",
    )  # fmt: skip
    run.add_argument(
        "--env", action="append", metavar="NAME[=VALUE]",
        help="set a guest environment variable (without VALUE: the host's); repeatable",
    )  # fmt: skip
    run.add_argument(
        "--invoke", metavar="NAME", help="call this export with ARGS, print its results"
    )
    run.add_argument(
        "--preload", action="append", metavar="NAME=PATH",
        help="instantiate this module first, for the main module's imports from NAME",
    )  # fmt: skip
    run.add_argument("--argv0", help="the program name the guest sees")
    run.add_argument("file", help="the .wasm or .wat file (text or binary), - for stdin")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")

    comp = command("compile", cmd_compile, "compile modules into the cache ahead of time")
    _engine_options(comp)
    comp.add_argument("files", nargs="+", metavar="FILE.wasm")

    for name, handler, text in (
        ("ls", cmd_ls, "list entries"),
        ("stats", cmd_stats, "entries and bytes per engine folder, counters of every process"),
    ):
        p = command(name, handler, text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "stats":
            p.add_argument(
                "--format", choices=("text", "json", "prometheus"), default="text",
                help="text (default), json (as --json), or prometheus: the counters in "
                "Prometheus's text exposition format",
            )  # fmt: skip

    verify = command("verify", cmd_verify, "check every entry's length and checksum")
    verify.add_argument("--fix", action="store_true", help="remove the bad entries")

    prune = command("prune", cmd_prune, "remove least recently used entries")
    prune.add_argument(
        "--max-bytes", required=True, metavar="SIZE", help="size to shrink to, like 512M or 2G"
    )

    command("clear", cmd_clear, "remove every entry")

    keygen = command("keygen", cmd_keygen, "make an Ed25519 key pair for signed entries")
    keygen.add_argument("--out", default=".", help="folder of the two PEM files (default: .)")
    keygen.add_argument("--name", default="wasmcache", help="file name stem (default: wasmcache)")

    demo = command("demo", cmd_demo, "compile a generated module cold, then load it warm")
    demo.add_argument("--functions", type=int, default=16000, help=argparse.SUPPRESS)
    demo.add_argument("--data-mb", type=int, default=64, help=argparse.SUPPRESS)
    return parser


#: Every command's name.
COMMANDS = frozenset(
    {"run", "compile", "ls", "stats", "verify", "prune", "clear", "keygen", "demo"}
)
_S3_EXTRA = {"obstore", "zstandard", "cryptography"}


def _missing_extra(exc: ImportError) -> Optional[str]:
    """One line for a missing dependency of the ``s3`` extra (None for another one)."""
    current: Optional[BaseException] = exc
    while current is not None:
        name = getattr(current, "name", None)
        if name and name.partition(".")[0] in _S3_EXTRA:
            return (
                f"{name.partition('.')[0]} is not installed: the shared bucket and signed "
                'entries need the s3 extra: pip install "wasmcache[s3]"'
            )
        current = current.__cause__
    return None


class _Arguments:
    """What :func:`wasmcache.runargs.parse` read, as argparse's namespace has it."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _namespace(values: dict[str, Any], *, handler: Any) -> argparse.Namespace:
    """The namespace argparse would give for ``values`` (its parser made if needed)."""
    return cast("argparse.Namespace", _Arguments({**values, "handler": handler, "parser": None}))


def _command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` (``run``: the one command read without argparse), for
    its usage line."""
    found: argparse.ArgumentParser = (
        build_parser(command).parse_known_args([command, "-"])[0].parser
    )
    return found


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` as the interpreter's own exit would, less its
    teardown (freeing every object and module, which for a mapped program costs tens of
    milliseconds): other non-daemon threads are joined, exit handlers run (temp folders
    are removed, logs flushed) and stdout and stderr are flushed (a failed flush exits
    120, as Python does); files the guest wrote were written by system calls and are
    closed by the kernel."""
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    import atexit

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        with contextlib.suppress(BaseException):  # atexit reports them, as at any exit
            run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = 120
    os._exit(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command with ``argv`` (default: the process's arguments); its exit code.

    Without ``argv`` (the console script and ``python -m wasmcache``), ``run`` ends the
    process through :func:`exit_now` once the guest is done, skipping the interpreter's
    teardown; with ``argv`` the code is returned."""
    code, ran = _main(argv)
    if argv is None and ran:
        exit_now(code)
    return code


def _main(argv: Optional[Sequence[str]]) -> tuple[int, bool]:
    """The exit code, and whether it is a guest's (``run`` went through to its end)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # "\n" as written, as wasmtime's CLI does (no "\r\n" on Windows)
        reconfigure(newline="\n")
    arguments = sys.argv[1:] if argv is None else list(argv)
    quick = runargs.parse(arguments)
    if quick is not None:
        args = _namespace(quick, handler=cmd_run)
    else:
        named = command_named(arguments)
        parser = build_parser(named if named in COMMANDS else None)
        args = parser.parse_args(arguments)
        if args.command is None:  # bare `wasmcache`: say what it can do
            parser.print_help()
            return 0, False
    logs.configure(logs.DEBUG if args.verbose else logs.WARNING)
    handler: Callable[[argparse.Namespace, FileSystemCache], int] = args.handler
    try:
        cache = FileSystemCache(args.cache_dir or default_cache_dir())
        return handler(args, cache), args.command == "run"
    except UsageError as exc:
        (args.parser or _command_parser(args.command)).print_usage(sys.stderr)
        print(f"wasmcache {args.command}: error: {shown(str(exc))}", file=sys.stderr)
        return 2, False
    except Failed as exc:
        if args.verbose:
            raise
        report(exc.what, cause_lines(exc.cause))
        return 1, False
    except ImportError as exc:
        line = _missing_extra(exc)
        if args.verbose or line is None:
            raise
        report(line, [])
        return 1, False
    except (CacheError, OSError, wasmtime.WasmtimeError, ValueError, GuestError) as exc:
        if args.verbose:
            raise
        lines = cause_lines(exc)
        report(lines[0], lines[1:])
        return 1, False
    except KeyboardInterrupt:
        return 130, False
