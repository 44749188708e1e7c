"""The fleet-wide compile lease: one object beside the entry, held by at most one machine.

Taking it is a create-only put; the holder renews it by a put conditional on its ETag every
``heartbeat`` seconds (so the ETag changes); a waiter that sees the same ETag for
``1.5 * heartbeat`` of its own clock takes it over with a put conditional on that ETag, so
exactly one waiter wins and no clocks are ever compared. Release writes an empty object,
again conditional on the holder's ETag, so it never frees a lease another machine took.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Optional

log = logging.getLogger("wasmcache")


def _obstore() -> Any:
    import obstore

    return obstore


class Lease:
    """One machine's hold on the lease object ``name`` of ``store``."""

    def __init__(self, store: Any, name: str, heartbeat: float, poll: float) -> None:
        if heartbeat <= 0 or poll <= 0:
            raise ValueError("heartbeat and poll must be positive")
        self.store = store
        self.name = name
        self.heartbeat = heartbeat
        self.poll = poll
        self._etag: Optional[str] = None
        self._beats = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost = False

    def _body(self) -> bytes:
        self._beats += 1
        return f"{socket.gethostname()} pid {os.getpid()} beat {self._beats}\n".encode()

    def _put(self, mode: Any) -> bool:
        from obstore import exceptions as ox

        try:
            result = _obstore().put(self.store, self.name, self._body(), mode=mode)
        except (ox.AlreadyExistsError, ox.PreconditionError, FileExistsError):
            return False
        self._etag = result["e_tag"]
        return True

    def acquire(self, done: Callable[[], bool]) -> bool:
        """Hold the lease (True), or return False once ``done()`` says the work is there.
        Object store errors pass through (the caller then compiles on its own)."""
        from obstore import exceptions as ox

        seen: Optional[str] = None
        seen_at = time.monotonic()
        stale_after = 1.5 * self.heartbeat
        while True:
            if self._put("create"):
                break
            if done():
                return False
            try:
                meta = _obstore().head(self.store, self.name)
            except (ox.NotFoundError, FileNotFoundError):
                continue  # released by deletion meanwhile: try to create it
            etag = meta["e_tag"]
            now = time.monotonic()
            if meta["size"] == 0:  # released without an entry
                if self._put({"e_tag": etag}):
                    break
                continue
            if etag != seen:
                seen, seen_at = etag, now
            elif now - seen_at > stale_after:
                if self._put({"e_tag": etag}):
                    log.warning(
                        "took over compile lease %s: its holder stopped renewing it %.1f s ago",
                        self.name,
                        now - seen_at,
                    )
                    break
                seen, seen_at = None, now
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._renew, name="wasmcache-lease", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._put({"e_tag": self._etag}):
                    self.lost = True
                    log.warning("compile lease %s was taken over by another machine", self.name)
                    return
            except Exception as exc:  # a flaky store: try again at the next beat
                log.warning("could not renew compile lease %s: %s", self.name, exc)

    def release(self) -> None:
        """Stop renewing, and free the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or self._etag is None:
            return
        with contextlib.suppress(Exception):
            _obstore().put(self.store, self.name, b"", mode={"e_tag": self._etag})
