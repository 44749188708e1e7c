"""The arguments of ``wasmcache run`` read without argparse, when they take only the
common forms: options by their exact names, each value as the next argument (or after
``=``, or attached to a short option), then the program and its arguments. Anything else
(help, an abbreviation, ``--``, a value that starts with ``-``, no program) is left to
argparse, which reads it the same way and reports what is wrong. Importing and building
argparse's parser costs every start a few milliseconds; reading the common forms costs
microseconds. Both readers give the same values (tests/test_runargs.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

#: Options taken before ``run`` and after it: name -> (attribute, kind).
GLOBAL = {
    "--cache-dir": ("cache_dir", "value"),
    "-v": ("verbose", "flag"),
    "--verbose": ("verbose", "flag"),
    "--remote": ("remote", "value"),
    "--endpoint": ("endpoint", "value"),
    "--signing-key": ("signing_key", "value"),
    "--trusted-key": ("trusted_key", "append"),
}
#: Options of ``run`` alone.
RUN = {
    "-O": ("optimize", "append"),
    "--optimize": ("optimize", "append"),
    "-C": ("codegen", "append"),
    "--codegen": ("codegen", "append"),
    "-W": ("wasm", "append"),
    "--wasm": ("wasm", "append"),
    "-S": ("wasi", "append"),
    "--wasi": ("wasi", "append"),
    "--no-cache": ("no_cache", "flag"),
    "--dir": ("dir", "append"),
    "--env": ("env", "append"),
    "--invoke": ("invoke", "value"),
    "--preload": ("preload", "append"),
    "--argv0": ("argv0", "value"),
}
#: What argparse gives an option that is not there.
DEFAULTS: dict[str, Any] = {
    "cache_dir": None,
    "verbose": False,
    "remote": None,
    "endpoint": None,
    "signing_key": None,
    "trusted_key": None,
    "optimize": None,
    "codegen": None,
    "wasm": None,
    "wasi": None,
    "no_cache": False,
    "dir": None,
    "env": None,
    "invoke": None,
    "preload": None,
    "argv0": None,
}


def _option(
    argv: Sequence[str], at: int, table: dict[str, tuple[str, str]], into: dict[str, Any]
) -> int:
    """Read the option at ``argv[at]`` into ``into``; how many arguments it took, 0 if it
    is not in one of the common forms."""
    arg = argv[at]
    name, equals, attached = arg.partition("=")
    taken = 1
    if name in table and equals:
        value: Optional[str] = attached
    elif arg in table:
        name, value = arg, None
    elif len(arg) > 2 and arg[:2] in table and arg[1] != "-" and arg[2] != "=":
        name, value = arg[:2], arg[2:]
    else:
        return 0
    attribute, kind = table[name]
    if kind == "flag":
        if value is not None:
            return 0
        into[attribute] = True
        return taken
    if value is None:
        if at + 1 >= len(argv) or argv[at + 1].startswith("-"):
            return 0
        value, taken = argv[at + 1], 2
    if kind == "append":
        into[attribute] = [*into.get(attribute, []), value]
    else:
        into[attribute] = value
    return taken


def parse(argv: Sequence[str]) -> Optional[dict[str, Any]]:
    """The values argparse gives a ``run`` command line (less the handler and parser),
    or None when it is not in the common forms."""
    before: dict[str, Any] = {}
    at = 0
    while True:
        if at >= len(argv):
            return None
        if argv[at] == "run":
            at += 1
            break
        taken = _option(argv, at, GLOBAL, before)
        if not taken:
            return None
        at += taken
    after: dict[str, Any] = {}
    both = {**GLOBAL, **RUN}
    while at < len(argv):
        arg = argv[at]
        if arg == "-" or not arg.startswith("-"):
            # A value given after the command replaces the one given before it.
            return {
                **DEFAULTS,
                **before,
                **after,
                "command": "run",
                "file": arg,
                "args": list(argv[at + 1 :]),
            }
        taken = _option(argv, at, both, after)
        if not taken:
            return None
        at += taken
    return None
