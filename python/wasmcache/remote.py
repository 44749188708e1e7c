"""ObjectStoreCache: compiled modules in S3-compatible object storage, shared by a fleet.

Objects are ``<prefix>/<engine id>-v<N>/<HASH>.bin`` in the on-disk format (artifact +
trailer). A hit streams the object into a temp file in the local cache folder, verifies it,
renames it into place and maps it from there, so the next load on this machine is a local
hit. Needs the ``s3`` extra (obstore, a small native client of the Rust object_store crate).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, Optional, Union

import wasmtime

from wasmcache import names
from wasmcache._image import artifact_bytes
from wasmcache.base import ModuleCache
from wasmcache.engine import engine_id
from wasmcache.entry import make_trailer
from wasmcache.errors import (
    CacheError,
    NotFound,
    RemoteAccessDenied,
    RemoteBucketNotFound,
    RemoteUnavailable,
)
from wasmcache.filesystem import FileSystemCache
from wasmcache.hashing import ModuleHash

log = logging.getLogger("wasmcache")

#: Objects larger than this go up as multipart uploads in parts of this size.
PART_SIZE = 16 << 20


def _obstore() -> Any:
    try:
        import obstore
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "ObjectStoreCache needs the s3 extra: pip install 'wasmcache[s3]'"
        ) from exc
    return obstore


def remote_error(exc: Exception, what: str) -> CacheError:
    """The CacheError for an exception of the object store client; ``what`` names the
    object or operation."""
    from obstore import exceptions as ox

    text = str(exc)
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return RemoteBucketNotFound(f"bucket not found for {what}: {_first_line(text)}")
    if isinstance(exc, (FileNotFoundError, ox.NotFoundError)):
        return NotFound(f"no remote object {what}")
    if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError)) or (
        "AccessDenied" in text or "403" in text
    ):
        return RemoteAccessDenied(f"access denied to {what}: {_first_line(text)}")
    return RemoteUnavailable(f"object store failed for {what}: {_first_line(text)}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def _split_url(url_or_bucket: str) -> tuple[str, str]:
    if url_or_bucket.startswith("s3://"):
        rest = url_or_bucket[len("s3://") :]
        bucket, _, path = rest.partition("/")
        return bucket, path.strip("/")
    return url_or_bucket, ""


class ObjectStoreCache(ModuleCache):
    """A cache in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2...).

    ``url_or_bucket`` is ``"s3://bucket/some/prefix"`` or a bucket name; ``prefix`` is put
    before every key (after any prefix in the URL). Downloads land in ``local``, the
    FileSystemCache this one usually stands behind (default: one in ``local_dir``, or in
    :func:`~wasmcache.default_cache_dir`), verified before they are renamed into place.
    Credentials and region come from the usual AWS environment variables unless given;
    ``endpoint`` (with ``allow_http`` for plain http) points at a non-AWS store. ``store``
    takes a ready obstore store instead.

    Concurrent misses across the fleet compile once: ``load_or_compile`` takes a lease
    object (a conditional put of ``<HASH>.lease`` beside the entry), others wait for the
    entry to appear; a lease older than ``lease_seconds`` (its holder died) is taken over.
    """

    lock_scope = 2

    def __init__(
        self,
        url_or_bucket: Optional[str] = None,
        *,
        prefix: str = "",
        local: Optional[FileSystemCache] = None,
        local_dir: Union[str, os.PathLike[str], None] = None,
        endpoint: Optional[str] = None,
        region: Optional[str] = None,
        access_key_id: Optional[str] = None,
        secret_access_key: Optional[str] = None,
        allow_http: Optional[bool] = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        lease_seconds: float = 900.0,
        poll_seconds: float = 0.5,
        store: Any = None,
    ) -> None:
        obstore = _obstore()
        if local is not None and local_dir is not None:
            raise ValueError("give local or local_dir, not both")
        if local is not None and not isinstance(local, FileSystemCache):
            raise TypeError(f"local must be a FileSystemCache, not {type(local).__name__}")
        self.local = local if local is not None else FileSystemCache(local_dir)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        url_prefix = ""
        if store is None:
            if not url_or_bucket:
                raise ValueError("give a bucket name or an s3:// URL (or a store)")
            bucket, url_prefix = _split_url(url_or_bucket)
            config: dict[str, Any] = {}
            for name, value in (
                ("endpoint", endpoint),
                ("region", region),
                ("access_key_id", access_key_id),
                ("secret_access_key", secret_access_key),
            ):
                if value is not None:
                    config[name] = value
            config.setdefault("conditional_put", "etag")
            client: dict[str, Any] = {"timeout": f"{timeout:g}s", "connect_timeout": "10s"}
            if allow_http is not None:
                client["allow_http"] = allow_http
            elif endpoint is not None and endpoint.startswith("http://"):
                client["allow_http"] = True
            import datetime

            retry = {
                "max_retries": max_retries,
                "retry_timeout": datetime.timedelta(seconds=max(timeout, 1.0)),
            }
            store = obstore.store.S3Store(
                bucket, config=config, client_options=client, retry_config=retry
            )
            self.url = f"s3://{bucket}"
        else:
            self.url = repr(store)
        self._store = store
        self.prefix = "/".join(p for p in (url_prefix, prefix.strip("/")) if p)

    def __repr__(self) -> str:
        return f"ObjectStoreCache({self.url!r}, prefix={self.prefix!r})"

    def object_key(self, key: ModuleHash, engine: wasmtime.Engine, *, lease: bool = False) -> str:
        """``<prefix>/<engine id>-v<N>/<HASH>.bin`` (or ``.lease``)."""
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        return names.object_name(self.prefix, engine_id(engine), key, lease=lease)

    # -- the ModuleCache methods ------------------------------------------------------------

    def load(self, key: ModuleHash, engine: wasmtime.Engine) -> wasmtime.Module:
        obstore = _obstore()
        name = self.object_key(key, engine)
        try:
            result = obstore.get(self._store, name)
            chunks = result.stream(min_chunk_size=8 << 20)
        except Exception as exc:
            raise remote_error(exc, name) from exc
        module = self.local.receive(key, engine, self._guarded(chunks, name))
        log.debug("remote hit %s (%s)", key, name)
        return module

    @staticmethod
    def _guarded(chunks: Any, name: str) -> Iterator[Any]:
        """The download's chunks, with client errors turned into CacheErrors."""
        try:
            yield from chunks
        except Exception as exc:
            raise remote_error(exc, name) from exc

    def save(self, key: ModuleHash, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        obstore = _obstore()
        name = self.object_key(key, engine)
        payload = artifact_bytes(module)
        trailer = make_trailer(payload)
        try:
            if len(payload) + len(trailer) <= PART_SIZE:
                obstore.put(self._store, name, bytes(payload) + trailer, use_multipart=False)
            else:
                parts = [payload[i : i + PART_SIZE] for i in range(0, len(payload), PART_SIZE)]
                obstore.put(
                    self._store, name, [*parts, trailer], chunk_size=PART_SIZE, max_concurrency=4
                )
        except Exception as exc:
            raise remote_error(exc, name) from exc
        log.debug("uploaded %s (%d bytes) to %s", key, len(payload) + len(trailer), name)

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        obstore = _obstore()
        name = self.object_key(key, engine)
        try:
            obstore.head(self._store, name)
        except Exception as exc:
            error = remote_error(exc, name)
            if isinstance(error, NotFound):
                return False
            raise error from exc
        return True

    # -- compile once per fleet -------------------------------------------------------------------

    @contextlib.contextmanager
    def compile_lock(self, key: ModuleHash, engine: wasmtime.Engine) -> Iterator[None]:
        """A lease object beside the entry: taken by a conditional put; others wait until
        the entry appears, the lease is released, or it grows older than lease_seconds."""
        obstore = _obstore()
        lease = self.object_key(key, engine, lease=True)
        held = False
        try:
            held = self._take_lease(obstore, key, engine, lease)
            yield
        finally:
            if held:
                with contextlib.suppress(Exception):
                    obstore.delete(self._store, lease)

    def _take_lease(
        self, obstore: Any, key: ModuleHash, engine: wasmtime.Engine, lease: str
    ) -> bool:
        import socket

        from obstore import exceptions as ox

        owner = f"{socket.gethostname()} pid {os.getpid()} at {time.time():.0f}".encode()
        while True:
            try:
                obstore.put(self._store, lease, owner, mode="create")
                return True
            except (ox.AlreadyExistsError, ox.PreconditionError):
                pass
            except ox.NotSupportedError:
                log.warning("%r cannot put conditionally: no fleet-wide compile lock", self)
                return False
            except Exception as exc:
                log.warning(
                    "could not take the compile lease %s: %s", lease, remote_error(exc, lease)
                )
                return False
            # Someone else compiles: wait for the entry, a released lease or a stale one.
            if self._wait_for_lease(obstore, key, engine, lease):
                return False

    def _wait_for_lease(
        self, obstore: Any, key: ModuleHash, engine: wasmtime.Engine, lease: str
    ) -> bool:
        """Poll until the entry exists (True) or the lease may be taken (False)."""
        from obstore import exceptions as ox

        while True:
            try:
                if self.contains(key, engine):
                    return True
                meta = obstore.head(self._store, lease)
            except ox.NotFoundError:
                return False  # released without an entry: try to take it
            except Exception as exc:
                log.warning("waiting for lease %s failed: %s", lease, exc)
                return True  # give up waiting; the caller compiles or loads itself
            age = time.time() - meta["last_modified"].timestamp()
            if age > self.lease_seconds:
                log.warning("taking over stale compile lease %s (%.0f s old)", lease, age)
                with contextlib.suppress(Exception):
                    obstore.delete(self._store, lease)
                return False
            time.sleep(self.poll_seconds)
