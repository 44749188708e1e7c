"""What a slow step says on stderr: a live timer on a terminal, one line elsewhere (a CI
log), so a long compile never looks hung."""

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
    seconds; when ``stream`` is not a terminal, one line ``label, this can take a while``
    once it has run that long."""
    if not stream.isatty():
        finished = threading.Event()

        def say_once() -> None:
            if not finished.wait(after):
                stream.write(f"{label}, this can take a while\n")
                stream.flush()

        notice = threading.Thread(target=say_once, daemon=True)
        notice.start()
        try:
            yield
        finally:
            finished.set()
            notice.join()
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
