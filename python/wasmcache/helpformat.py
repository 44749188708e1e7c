"""The argparse pieces of the command line: ``--version``, looked up when asked for, and
help laid out to the terminal's width found once. Imported only when argparse is (a
``run`` in the common forms never needs it, see :mod:`wasmcache.runargs`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional


def terminal_columns() -> int:
    """The width help text is wrapped to, as ``shutil.get_terminal_size`` tells it
    ($COLUMNS, else the terminal's, else 80), without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        stream = sys.__stdout__
        try:
            columns = os.get_terminal_size(stream.fileno()).columns if stream else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class Formatter(argparse.HelpFormatter):
    """argparse's help layout, with the width found once (argparse imports shutil and
    asks the terminal for every option it is given)."""

    columns: Optional[int] = None

    def __init__(self, prog: str) -> None:
        if Formatter.columns is None:
            Formatter.columns = terminal_columns()
        super().__init__(prog, width=Formatter.columns - 2)


def version_action(versions: Callable[[], str]) -> type[argparse.Action]:
    """A ``--version`` action that prints ``versions()`` (reading the installed
    packages' metadata costs every other command milliseconds, so only when asked)."""

    class Version(argparse.Action):
        def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
            kwargs.setdefault("help", "show the versions of wasmcache and wasmtime and exit")
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
            print(versions())
            parser.exit()

    return Version
