"""The fleet-wide compile lease: one object beside the entry, held by at most one machine.

Taking it is a create-only put; the holder renews it by a put conditional on its ETag every
``heartbeat`` seconds (so the ETag changes); a waiter that sees the same ETag for
``1.5 * heartbeat`` of its own clock takes it over with a put conditional on that ETag, so
exactly one waiter wins and no clocks are ever compared. Release writes an empty object,
again conditional on the holder's ETag, so it never frees a lease another machine took.

A waiter reads only the lease's size and ETag (HEAD requests; the body is never read, so
nothing in it is ever parsed), and waits at most ``wait`` seconds (by default
``WAIT_BEATS`` heartbeats) however alive the lease looks: then it compiles for itself. A
store error while waiting is retried with jittered, capped backoff inside that bound.

Polls are spaced by the holder's rhythm: after an ETag change a waiter knows the holder
cannot renew again for a heartbeat, so it sleeps until just before then and looks every
quarter heartbeat (less up to a quarter of that, at random) until the change shows: about
2.3 HEADs per heartbeat (0.46 a second at the default 5 s heartbeat, under one a second
from 2.5 s up). Each change is thus seen within a quarter heartbeat of when it happened,
so a dead holder's lease is taken over within 1.5 + 0.25 heartbeats of its last renewal
(plus the requests' own time). Before the first change is seen, the pause between looks
starts at ``poll`` and doubles up to the quarter heartbeat.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import threading
import time
from typing import Any, Callable, Optional

from wasmcache.errors import CacheError, RemoteError, RemoteUnavailable
from wasmcache.logs import log

#: A waiter's default bound, in heartbeats (with a 1 s heartbeat: 40 s).
WAIT_BEATS = 40
#: Failed creates of a lease nobody holds, before the machine compiles alone.
_CREATE_TRIES = 3
_MAX_ETAG = 1024


def _obstore() -> Any:
    import obstore

    return obstore


def transient(exc: BaseException) -> bool:
    """Whether a store error may pass (network, timeouts, throttling, 5xx), so waiting
    on is worth it; refusals (credentials, a missing bucket, an unsupported operation)
    will not pass."""
    from obstore import exceptions as ox

    if isinstance(exc, CacheError):
        return isinstance(exc, RemoteUnavailable)
    permanent = (
        ox.PermissionDeniedError, ox.UnauthenticatedError, ox.NotSupportedError,
        ox.NotFoundError, ox.InvalidPathError, ox.UnknownConfigurationKeyError,
        PermissionError, FileNotFoundError, NotImplementedError,
    )  # fmt: skip
    return not isinstance(exc, permanent)


class _Watch:
    """A waiter's view of one holder's renewals: when the ETag last changed, how exactly
    that moment is known, and so when to look again and when the holder is dead."""

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self.quarter = heartbeat / 4
        self.etag: Optional[str] = None
        self.since = 0.0  # when this ETag was first seen
        self.gap = math.inf  # time between that poll and the one before (the uncertainty)
        self._last: Optional[float] = None

    def blind(self) -> None:
        """Forget what was seen: after a failed poll, a renewal may have gone unseen (and
        an unchanged ETag proves nothing about the time in between)."""
        self.etag, self._last = None, None

    def stale(self, etag: str, now: float) -> bool:
        """Record a poll at ``now`` that saw ``etag``; True once it has stayed the same
        for more than 1.5 heartbeats."""
        if etag != self.etag:
            self.gap = math.inf if self._last is None else now - self._last
            self.etag, self.since = etag, now
        self._last = now
        return now - self.since > 1.5 * self.heartbeat

    def next_poll(self, now: float, delay: float) -> float:
        """When to look next: ``delay`` from now (shortened by up to a quarter by
        jitter), not before the holder can have renewed again, and not after the moment
        its lease turns stale."""
        wake = now + delay * random.uniform(0.75, 1.0)
        if self.gap <= self.quarter:
            # The renewal came after the poll before `since`, so the next one comes at
            # least a heartbeat after that poll: no sense looking before.
            earliest = self.since - self.gap + self.heartbeat
            wake = max(wake, earliest - random.uniform(0, self.quarter / 4))
        return min(wake, self.since + 1.5 * self.heartbeat + self.quarter / 8)


class Lease:
    """One machine's hold on the lease object ``name`` of ``store``. ``poll`` is the
    first wait between polls (doubling up to a quarter heartbeat); ``wait`` the bound of
    :meth:`acquire` in seconds (default: ``WAIT_BEATS`` heartbeats)."""

    def __init__(
        self,
        store: Any,
        name: str,
        heartbeat: float,
        poll: float,
        wait: Optional[float] = None,
    ) -> None:
        if heartbeat <= 0 or poll <= 0:
            raise ValueError("heartbeat and poll must be positive")
        if wait is not None and not wait >= 0:
            raise ValueError("wait must not be negative")
        self.store = store
        self.name = name
        self.heartbeat = heartbeat
        self.poll = poll
        self.wait = WAIT_BEATS * heartbeat if wait is None else wait
        self._etag: Optional[str] = None
        self._beats = 0
        self._token = os.urandom(8).hex()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost = False

    def _body(self) -> bytes:
        """A body no other write has: S3 ETags are digests of the content, and a holder
        must never write the ETag of an earlier write (its own or another machine's)."""
        self._beats += 1
        host = socket.gethostname()
        return f"{host} pid {os.getpid()} lease {self._token} beat {self._beats}\n".encode()

    def _put(self, mode: Any) -> bool:
        from obstore import exceptions as ox

        try:
            result = _obstore().put(self.store, self.name, self._body(), mode=mode)
        except (ox.AlreadyExistsError, ox.PreconditionError, FileExistsError):
            return False
        self._etag = self._checked_etag(result.get("e_tag"))
        return True

    def _head(self) -> Optional[tuple[str, int]]:
        """The lease's ETag and size, or None if there is no lease object."""
        from obstore import exceptions as ox

        try:
            meta = _obstore().head(self.store, self.name)
        except (ox.NotFoundError, FileNotFoundError):
            return None
        size = meta.get("size")
        if type(size) is not int or size < 0:
            raise RemoteError(f"the store gives no size for {self.name}: no fleet-wide lease")
        return self._checked_etag(meta.get("e_tag")), size

    def _checked_etag(self, etag: object) -> str:
        if not isinstance(etag, str) or not 0 < len(etag) <= _MAX_ETAG:
            raise RemoteError(f"the store gives no ETag for {self.name}: no fleet-wide lease")
        return etag

    def _backoff(self, failures: int) -> float:
        """The pause after the ``failures``-th store error in a row: doubling from
        ``poll`` up to a heartbeat, the upper half of it chosen at random."""
        ceiling = min(self.heartbeat, self.poll * 2 ** min(failures, 30))
        return random.uniform(ceiling / 2, ceiling)

    def acquire(self, done: Callable[[], bool]) -> bool:
        """Hold the lease (True); or False once ``done()`` says the work is there, or once
        ``wait`` seconds have passed while another machine held it (the caller then
        compiles for itself). Store errors that may pass are retried within that time;
        others, and a lease that cannot be created though nobody holds it, raise (the
        caller then compiles on its own)."""
        deadline = time.monotonic() + self.wait
        watch = _Watch(self.heartbeat)
        delay = min(self.poll, watch.quarter)
        create, first = True, True
        quick = create_failures = failures = 0
        while True:
            if not first and time.monotonic() >= deadline:
                log.warning(
                    "gave up waiting for compile lease %s after %.1f s (its holder renews it "
                    "but has not finished, or the store keeps failing): compiling here",
                    self.name,
                    self.wait,
                )
                return False
            first = False
            wake: Optional[float] = None
            try:
                create_error: Optional[BaseException] = None
                if create:
                    try:
                        if self._put("create"):
                            return self._hold()
                    except Exception as exc:
                        if not transient(exc):
                            raise
                        create_error = exc
                    create = False
                    if create_error is None and done():
                        return False
                found = self._head()
                now = time.monotonic()
                if found is None:  # no lease object (released by deletion, or never made)
                    create = True
                    if create_error is not None:
                        create_failures += 1
                        if create_failures >= _CREATE_TRIES:
                            raise create_error
                        wake = now + self._backoff(create_failures)
                elif found[1] == 0:  # released without an entry (or before it was seen)
                    if done():
                        return False
                    if self._put({"e_tag": found[0]}):
                        return self._hold()
                elif watch.stale(found[0], now):
                    if done():
                        return False
                    if self._put({"e_tag": found[0]}):
                        log.warning(
                            "took over compile lease %s: its holder has not renewed it for %.1f s",
                            self.name,
                            now - watch.since,
                        )
                        return self._hold()
                    watch.blind()
                else:
                    wake = watch.next_poll(now, delay)
                    delay = min(2 * delay, watch.quarter)
                if found is not None:
                    failures = 0
            except Exception as exc:
                if not transient(exc):
                    raise
                failures += 1
                watch.blind()
                log.debug(
                    "compile lease %s: store error %d, retrying: %s", self.name, failures, exc
                )
                wake = time.monotonic() + self._backoff(failures)
            quick += 1
            if wake is None and quick < 3:
                continue  # act on what was seen at once (a free or lost lease)
            if wake is None:
                wake = time.monotonic() + delay
            quick = 0
            time.sleep(max(0.0, min(wake, deadline) - time.monotonic()))

    def _hold(self) -> bool:
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
