"""How the command reports a failure: what failed, then one line per cause.

wasmtime's errors carry their causes as a "Caused by:" list in the message; Python's carry
theirs as ``__cause__``. Both become ``caused by:`` lines, so a user sees the whole chain
without a traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Optional

from wasmcache.display import shown


class Failed(Exception):
    """A failure to report as ``what`` and the whole cause chain of ``cause``, exit 1."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(what)
        self.what = what
        self.cause = cause


def cause_lines(exc: BaseException) -> list[str]:
    """One line per cause: the exception's own message (wasmtime's "Caused by:" list split
    into its items), then those of its ``__cause__`` chain."""
    lines: list[str] = []
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip() or type(current).__name__
        if isinstance(current, OSError) and current.strerror and not current.__cause__:
            text = current.strerror  # the path is named by the line above
        head, _, causes = text.partition("\n\nCaused by:\n")
        lines.append("\n".join(line.rstrip() for line in head.splitlines() if line.strip()))
        for line in causes.splitlines():
            item = re.sub(r"^\s*\d+:\s*", "", line).strip()
            if item and item not in lines:
                lines.append(item)
        current = current.__cause__
    return lines


def report(what: str, causes: Sequence[str]) -> None:
    """The error, then one line per cause (a cause's own further lines indented); control
    characters and undecodable bytes in them escaped (:func:`wasmcache.display.shown`)."""
    print(f"wasmcache: error: {shown(what)}", file=sys.stderr)
    for cause in causes:
        first, *rest = cause.splitlines() or [""]
        print(f"  caused by: {shown(first)}", file=sys.stderr)
        for line in rest:
            print(f"    {shown(line)}", file=sys.stderr)
