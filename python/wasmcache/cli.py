"""The ``wasmcache`` command: run, compile, ls, stats, verify, prune, clear, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import wasmtime

from wasmcache import direct, kinds, runner, synth
from wasmcache.base import ModuleCache, read_wasm
from wasmcache.config import default_cache_dir
from wasmcache.engine import engine_id
from wasmcache.errors import CacheError
from wasmcache.failures import Failed, cause_lines, report
from wasmcache.filesystem import FileSystemCache
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled
from wasmcache.options import engine_from_options
from wasmcache.progress import elapsed
from wasmcache.runner import RUN_OPTIONS, Guest, UsageError, guest_env

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


T = TypeVar("T")


def parse_size(text: str) -> int:
    """Bytes from a size like ``1048576``, ``512K``, ``512M``, ``2G``, ``1.5GiB``."""
    match = _SIZE.fullmatch(text)
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


def cli_engine(args: Optional[argparse.Namespace] = None) -> wasmtime.Engine:
    """The engine of the commands: the library's default ``wasmtime.Engine()``, or the one
    of the ``-O``/``-W`` options (as :func:`wasmcache.options.engine_from_options` builds
    it), so ``wasmcache compile`` fills exactly what a program's ``load_or_compile`` reads."""
    optimize = getattr(args, "optimize", None) or []
    wasm = getattr(args, "wasm", None) or []
    try:
        return engine_from_options(optimize, wasm)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def interruptible(work: Callable[[], T]) -> T:
    """Run ``work`` in a thread; Ctrl-C ends the process at once with exit code 130
    (a compile or a guest cannot be stopped from Python; a save in progress leaves only a
    temp file, which cleanup removes)."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="wasmcache-work", daemon=True)
    worker.start()
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


def _compile(
    cache: Optional[ModuleCache],
    engine: wasmtime.Engine,
    path: str,
    wasm: Optional[bytes] = None,
) -> Compiled:
    """The module or component at ``path`` (or ``wasm``, its bytes): from the cache, or
    compiled (and cached), saying so on stderr when that takes a while; Ctrl-C ends the
    process at once. Failed names the file and wasmtime's causes."""
    try:
        size = human(len(wasm) if wasm is not None else os.stat(path).st_size)
    except OSError as exc:
        raise Failed(f"cannot read {path}", exc) from exc
    source: Union[bytes, str] = wasm if wasm is not None else path

    def work() -> Compiled:
        if cache is None:
            data = wasm if wasm is not None else read_wasm(path)
            return kinds.compile(engine, data)
        return cache.load_or_compile(engine, source)

    try:
        with elapsed(f"compiling {os.path.basename(path)} ({size})"):
            return interruptible(work)
    except (wasmtime.WasmtimeError, CacheError) as exc:
        raise Failed(f"cannot compile {path}", exc) from exc


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


def _split_run_options(args: argparse.Namespace) -> set[str]:
    """Take run's own -W options out of args.wasm; return the ones turned on."""
    engine_options, run_options = [], set()
    for option in args.wasm or []:
        name, _, value = option.partition("=")
        if name in RUN_OPTIONS:
            if value.lower() in ("", "y", "yes", "true"):
                run_options.add(name)
        else:
            engine_options.append(option)
    args.wasm = engine_options
    return run_options


def _inherit_env(wasi_options: Sequence[str]) -> bool:
    """The -S options: only inherit-env[=y|n] is known; anything else is a usage error."""
    inherit = False
    for option in wasi_options:
        name, _, value = option.partition("=")
        if name != "inherit-env" or value.lower() not in (
            "",
            "y",
            "yes",
            "true",
            "n",
            "no",
            "false",
        ):
            raise UsageError(f"unknown -S option {option!r} (known: inherit-env[=y|n])")
        inherit = value.lower() in ("", "y", "yes", "true")
    return inherit


def cmd_run(args: argparse.Namespace, cache: FileSystemCache) -> int:
    options = _split_run_options(args)
    engine = cli_engine(args)
    source = args.file
    stack = None if args.no_cache else runtime_cache(args, cache)
    guest = Guest(
        source,
        args.args,
        argv0=args.argv0,
        dirs=args.dir or [],
        env=guest_env(_inherit_env(args.wasi or []), args.env or []),
        invoke=args.invoke,
        options=options,
    )  # fmt: skip
    if source.endswith(".wat"):
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise Failed(f"cannot read {source}", exc) from exc
        try:
            wasm = bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as exc:
            raise Failed(f"cannot parse {source} as WebAssembly text", exc) from exc
        compiled = _compile(stack, engine, source, wasm)
    else:
        compiled = _compile(stack, engine, source)
    try:
        call = runner.prepare(engine, compiled, guest)
    except wasmtime.WasmtimeError as exc:
        raise Failed(f"cannot instantiate {source}", exc) from exc
    code: int = interruptible(call)
    return code


def cmd_compile(args: argparse.Namespace, cache: FileSystemCache) -> int:
    engine = cli_engine(args)
    stack = runtime_cache(args, cache)
    failed = 0
    for path in args.files:
        start = time.perf_counter()
        _compile(stack, engine, path)
        key, _ = direct.key_of_file(path, "sha256", None)
        try:
            cached = cache.contains(key, engine)
        except CacheError:
            cached = False  # the warning above says why
        if not cached:
            print(f"{path}: compiled but NOT cached (see the warning above)", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: cached ({time.perf_counter() - start:.2f} s)")
    return 1 if failed else 0


def _entry_rows(cache: FileSystemCache) -> list[dict[str, Any]]:
    rows = []
    for found in sorted(cache.entries(), key=lambda e: -e.last_used):
        info = cache.describe(found)
        rows.append(
            {
                "key": str(found.key),
                "engine": found.engine_folder,
                "bytes": found.size,
                "last_used": found.last_used,
                "path": str(found.path),
                "kind": info.kind if info else None,
                "source": info.source if info else None,
                "wasm_size": info.wasm_size if info else None,
                "compile_seconds": info.compile_seconds if info else None,
                "created": info.created if info else None,
                "wasmtime": info.wasmtime if info else None,
            }
        )
    return rows


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} s"


def cmd_ls(args: argparse.Namespace, cache: FileSystemCache) -> int:
    rows = _entry_rows(cache)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no entries in {cache.cache_dir}")
        return 0
    print(
        f"{'SOURCE':<24} {'KIND':<9} {'SIZE':>10} {'COMPILE':>9} {'LAST USED':<16} "
        f"{'KEY':<16} ENGINE"
    )
    for row in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        source = row["source"] or "-"
        if len(source) > 24:
            source = "..." + source[-21:]
        print(
            f"{source:<24} {row['kind'] or '?':<9} {human(row['bytes']):>10} "
            f"{_seconds(row['compile_seconds']):>9} {used:<16} {row['key'][:16]:<16} "
            f"{row['engine']}"
        )
    return 0


def cmd_stats(args: argparse.Namespace, cache: FileSystemCache) -> int:
    rows = _entry_rows(cache)
    folders: dict[str, dict[str, Any]] = {}
    for row in rows:
        folder = folders.setdefault(
            row["engine"], {"entries": 0, "bytes": 0, "compile_seconds": 0.0}
        )
        folder["entries"] += 1
        folder["bytes"] += row["bytes"]
        folder["compile_seconds"] += row["compile_seconds"] or 0.0
    stats = {
        "cache_dir": str(cache.cache_dir),
        "engine_id": engine_id(cli_engine(args)),
        "entries": len(rows),
        "bytes": sum(r["bytes"] for r in rows),
        "modules": sum(1 for r in rows if r["kind"] == "module"),
        "components": sum(1 for r in rows if r["kind"] == "component"),
        # What rebuilding the cache would cost (entries that recorded their compile time).
        "compile_seconds": round(sum(r["compile_seconds"] or 0.0 for r in rows), 3),
        "engine_folders": folders,
        "oldest_use": min((r["last_used"] for r in rows), default=None),
        "newest_use": max((r["last_used"] for r in rows), default=None),
    }
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"cache folder: {stats['cache_dir']}")
    print(
        f"entries:      {_count(stats['entries'], 'entry', 'entries')} ({human(stats['bytes'])}): "
        f"{_count(stats['modules'], 'module', 'modules')}, "
        f"{_count(stats['components'], 'component', 'components')}"
    )
    print(f"compile time held: {stats['compile_seconds']:.1f} s (what a new cache would spend)")
    for name, folder in sorted(folders.items()):
        print(
            f"  {name}: {_count(folder['entries'], 'entry', 'entries')}, "
            f"{human(folder['bytes'])}, {folder['compile_seconds']:.1f} s of compiling"
        )
    return 0


def cmd_verify(args: argparse.Namespace, cache: FileSystemCache) -> int:
    checked = len(cache.entries())
    bad = cache.verify_entries(fix=args.fix)
    for entry, reason in bad:
        action = "removed" if args.fix else "bad"
        print(f"{action}: {entry.path}: {reason}")
    print(f"{checked} entries checked, {len(bad)} bad" + (" (removed)" if args.fix and bad else ""))
    return 1 if bad and not args.fix else 0


def cmd_prune(args: argparse.Namespace, cache: FileSystemCache) -> int:
    removed = cache.prune(parse_size(args.max_bytes))
    freed = sum(e.size for e in removed)
    print(f"removed {len(removed)} entries ({human(freed)})")
    return 0


def cmd_clear(args: argparse.Namespace, cache: FileSystemCache) -> int:
    print(f"removed {cache.clear()} entries from {cache.cache_dir}")
    return 0


def cmd_demo(args: argparse.Namespace, cache: FileSystemCache) -> int:
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
        print(f"save to the cache:          {saved * 1e3:9.1f} ms  ({human(size)} entry)")
        del module

        fresh_engine = wasmtime.Engine()  # as a new process would
        start = time.perf_counter()
        loaded = demo_cache.load(key, fresh_engine, kind="module")
        assert isinstance(loaded, wasmtime.Module)
        warm = time.perf_counter() - start
        print(f"warm load from the cache:   {warm * 1e3:9.1f} ms")
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
        "-O", dest="optimize", action="append", metavar="opt-level=N",
        help="optimization: opt-level=0|1|2|s (as wasmtime run -O)",
    )  # fmt: skip
    parser.add_argument(
        "-W", dest="wasm", action="append", metavar="NAME[=y|n]",
        help="wasm features and limits, e.g. simd=n, max-wasm-stack=N (as wasmtime run -W)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmcache",
        description="Cache of compiled WebAssembly modules and components for wasmtime.",
    )
    parser.add_argument(
        "--cache-dir", help="cache folder (default: $WASMCACHE_DIR or the user cache folder)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, tracebacks")
    parser.add_argument("--version", action="version", version=_versions())
    fleet = parser.add_argument_group("shared bucket (run and compile)")
    fleet.add_argument(
        "--remote", metavar="s3://BUCKET/PREFIX", help="also use this bucket ($WASMCACHE_REMOTE)"
    )
    fleet.add_argument("--endpoint", help="S3 endpoint URL ($WASMCACHE_ENDPOINT)")
    fleet.add_argument(
        "--signing-key",
        metavar="PEM",
        help="sign uploads with this Ed25519 key file ($WASMCACHE_SIGNING_KEY: a path or PEM)",
    )
    fleet.add_argument(
        "--trusted-key",
        metavar="PEM",
        action="append",
        help="load only objects signed by this public key file (repeatable; "
        "$WASMCACHE_TRUSTED_KEYS: paths separated by ':', or PEM)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run a WASI program as `wasmtime run` does, compiled code from the cache"
    )
    _engine_options(run)
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
        "-S", dest="wasi", action="append", metavar="inherit-env",
        help="WASI options: inherit-env passes the whole host environment",
    )  # fmt: skip
    run.add_argument("--invoke", metavar="NAME", help="call this export with ARGS, print results")
    run.add_argument("--argv0", help="the program name the guest sees")
    run.add_argument("file", help="the .wasm (or .wat) file")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")
    run.set_defaults(handler=cmd_run)

    comp = sub.add_parser("compile", help="compile modules into the cache ahead of time")
    _engine_options(comp)
    comp.add_argument("files", nargs="+", metavar="FILE.wasm")
    comp.set_defaults(handler=cmd_compile)

    for name, handler, text in (
        ("ls", cmd_ls, "list entries"),
        ("stats", cmd_stats, "entries and bytes per engine folder"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)

    verify = sub.add_parser("verify", help="check every entry's length and checksum")
    verify.add_argument("--fix", action="store_true", help="remove the bad entries")
    verify.set_defaults(handler=cmd_verify)

    prune = sub.add_parser("prune", help="remove least recently used entries")
    prune.add_argument(
        "--max-bytes", required=True, metavar="SIZE", help="size to shrink to, like 512M or 2G"
    )
    prune.set_defaults(handler=cmd_prune)

    clear = sub.add_parser("clear", help="remove every entry")
    clear.set_defaults(handler=cmd_clear)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signed entries")
    keygen.add_argument("--out", default=".", help="folder of the two PEM files (default: .)")
    keygen.add_argument("--name", default="wasmcache", help="file name stem (default: wasmcache)")
    keygen.set_defaults(handler=cmd_keygen)

    demo = sub.add_parser("demo", help="compile a generated module cold, then load it warm")
    demo.add_argument("--functions", type=int, default=16000, help=argparse.SUPPRESS)
    demo.add_argument("--data-mb", type=int, default=64, help=argparse.SUPPRESS)
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `wasmcache`: say what it can do
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="wasmcache: %(levelname)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace, FileSystemCache], int] = args.handler
    try:
        cache = FileSystemCache(args.cache_dir or default_cache_dir())
        return handler(args, cache)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"wasmcache: error: {exc}", file=sys.stderr)
        return 2
    except Failed as exc:
        if args.verbose:
            raise
        report(exc.what, cause_lines(exc.cause))
        return 1
    except (CacheError, OSError, wasmtime.WasmtimeError, ValueError) as exc:
        if args.verbose:
            raise
        lines = cause_lines(exc)
        report(lines[0], lines[1:])
        return 1
    except KeyboardInterrupt:
        return 130
