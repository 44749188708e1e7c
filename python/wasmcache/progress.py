"""A live elapsed-time indicator on stderr for slow steps (a terminal only)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def elapsed(label: str, *, stream: TextIO = sys.stderr, after: float = 1.0) -> Iterator[None]:
    """Show ``label... N.N s`` on ``stream`` while the block runs longer than ``after``
    seconds; nothing at all when ``stream`` is not a terminal."""
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    start = time.monotonic()
    shown = False

    def tick() -> None:
        nonlocal shown
        if done.wait(after):
            return
        while not done.is_set():
            stream.write(f"\r{label}... {time.monotonic() - start:.1f} s")
            stream.flush()
            shown = True
            done.wait(0.1)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        if shown:
            stream.write(f"\r{label}... {time.monotonic() - start:.1f} s, done\n")
            stream.flush()
