"""ObjectStoreCache: compiled modules and components in S3-compatible object storage,
shared by a fleet.

Objects live at ``<prefix>/<engine id>-v<N>/<HASH>.bin`` (see :mod:`wasmcache.names`) in
the format of :mod:`wasmcache.transfer`: a header holding the manifest (see
:mod:`wasmcache.manifest`; signed when a signing key is given) and the entry, zstd-compressed.
A hit streams the object through the decompressor into a temp file in the local cache
folder, computing the entry's SHA-256 as it goes, renames it into place only if that
matches the manifest, and maps it: the next load on this machine is a local hit. Needs
the ``s3`` extra (obstore, zstandard, cryptography).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any, Optional, Union

import wasmtime

from wasmcache import entry, kinds, metrics, names, transfer
from wasmcache._image import artifact_bytes
from wasmcache._optional import require
from wasmcache.base import ModuleCache
from wasmcache.direct import Index
from wasmcache.engine import engine_id
from wasmcache.entry import Buffer, Origin
from wasmcache.errors import (
    CacheError,
    DeserializeError,
    KindMismatch,
    NotFound,
    RemoteAccessDenied,
    RemoteBucketNotFound,
    RemoteCorrupt,
    RemoteUnavailable,
    SignatureError,
)
from wasmcache.filesystem import FileSystemCache
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import Compiled, Kind
from wasmcache.lease import WAIT_BEATS as LEASE_WAIT_BEATS
from wasmcache.lease import Lease
from wasmcache.logs import log
from wasmcache.signing import PrivateKeyLike, PublicKeyLike, Signer, Verifier

#: The most object names a cache remembers as refused (then it starts again).
_REFUSED_LIMIT = 1024

#: Objects larger than this go up as multipart uploads in parts of this size.
PART_SIZE = 16 << 20


def _obstore() -> Any:
    return require("obstore")


def remote_error(exc: BaseException, what: str) -> CacheError:
    """The CacheError for an exception of the object store client, by its type; ``what``
    names the object or operation. (A missing bucket also comes as "not found": the cache
    tells it apart by asking for the bucket itself.)"""
    from obstore import exceptions as ox

    if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError, PermissionError)):
        return RemoteAccessDenied(f"access denied to {what}: {_first_line(exc)}")
    if isinstance(exc, (ox.NotFoundError, FileNotFoundError)):
        return NotFound(f"no remote object {what}")
    return RemoteUnavailable(f"object store failed for {what}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _split_url(url_or_bucket: str) -> tuple[str, str]:
    if url_or_bucket.startswith("s3://"):
        rest = url_or_bucket[len("s3://") :]
        bucket, _, path = rest.partition("/")
        return bucket, path.strip("/")
    return url_or_bucket, ""


class ObjectStoreCache(ModuleCache):
    """A cache in an S3-compatible bucket (AWS S3, MinIO, Ceph, SeaweedFS, R2...).

    ``url_or_bucket`` is ``"s3://bucket/some/prefix"`` or a bucket name; ``prefix`` is put
    before every key (after any prefix in the URL). Downloads land in ``local``, the
    FileSystemCache this one usually stands behind (default: one in ``local_dir``, or in
    :func:`~wasmcache.default_cache_dir`), checked before they are renamed into place.
    Credentials and region come from the usual AWS environment variables unless given;
    ``endpoint`` (with ``allow_http`` for plain http) points at a non-AWS store. ``store``
    takes a ready obstore store instead.

    Trust: with ``trusted_keys`` (Ed25519 public keys, or PEM bytes or files), only objects
    whose manifest is signed by one of them, and whose entry then has exactly the SHA-256
    that manifest gives, are ever kept or loaded (:class:`~wasmcache.SignatureError`, or
    ``RemoteCorrupt`` for content that differs); objects of older formats are refused.
    ``signing_key`` (an Ed25519 private key, or PEM) signs what this cache uploads.

    ``timeout`` is how long a transfer may make no progress before it fails (not a bound on
    the whole transfer). Uploads are compressed with zstd at ``compression_level`` (``None``:
    sent as they are).

    Concurrent misses across the fleet compile once: ``load_or_compile`` takes a lease
    object beside the entry, renewed every ``heartbeat`` seconds; others wait for the
    entry, and take the lease over when its holder stops renewing it. A waiter waits at
    most ``lease_wait`` seconds (default: 40 heartbeats), however alive the lease looks,
    then compiles for itself; ``poll_seconds`` is its first pause between looks (they
    back off to a quarter heartbeat, see :mod:`wasmcache.lease`). ``save`` uploads
    nothing when the bucket already holds an object of today's format for the key that
    this cache would accept (and that is signed by its signing key, when it has one).
    """

    lock_scope = 2
    metrics_tier = "remote"

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
        timeout: float = 30.0,
        max_retries: int = 3,
        signing_key: Optional[PrivateKeyLike] = None,
        trusted_keys: Optional[Iterable[PublicKeyLike]] = None,
        compression_level: Optional[int] = 3,
        heartbeat: float = 5.0,
        poll_seconds: float = 0.5,
        lease_wait: Optional[float] = None,
        store: Any = None,
    ) -> None:
        obstore = _obstore()
        if local is not None and local_dir is not None:
            raise ValueError("give local or local_dir, not both")
        if local is not None and not isinstance(local, FileSystemCache):
            raise TypeError(f"local must be a FileSystemCache, not {type(local).__name__}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 < heartbeat <= 10:
            raise ValueError("heartbeat must be more than 0 and at most 10 seconds")
        if not poll_seconds > 0:
            raise ValueError("poll_seconds must be positive")
        if lease_wait is not None:
            if isinstance(lease_wait, bool) or not isinstance(lease_wait, (int, float)):
                raise TypeError(f"lease_wait must be seconds, not {type(lease_wait).__name__}")
            if not 0 <= lease_wait < math.inf:
                raise ValueError("lease_wait must be 0 or more seconds, and finite")
        self.local = local if local is not None else FileSystemCache(local_dir)
        # Counted into the local folder's metrics file, beside the local tier's counts.
        metrics.counters(self).keep_in(metrics.counters(self.local).file)
        self.signer = Signer(signing_key) if signing_key is not None else None
        self._own = Verifier([self.signer.public_key]) if self.signer is not None else None
        self.verifier = Verifier(trusted_keys) if trusted_keys is not None else None
        self.compression_level = compression_level
        self.heartbeat = heartbeat
        self.poll_seconds = poll_seconds
        self.lease_wait = float(LEASE_WAIT_BEATS * heartbeat if lease_wait is None else lease_wait)
        self._bucket_seen = False
        # A cache that trusts keys but cannot sign uploads nothing its fleet would take.
        self._uploads = self.verifier is None or self.signer is not None
        # Objects whose content a load refused: a save replaces them (bounded).
        self._refused: set[str] = set()
        url_prefix = ""
        if store is None:
            if not url_or_bucket:
                raise ValueError("give a bucket name or an s3:// URL (or a store)")
            bucket, url_prefix = _split_url(url_or_bucket)
            config: dict[str, Any] = {"conditional_put": "etag"}
            for name, value in (
                ("endpoint", endpoint),
                ("region", region),
                ("access_key_id", access_key_id),
                ("secret_access_key", secret_access_key),
            ):
                if value is not None:
                    config[name] = value
            client: dict[str, Any] = {
                "connect_timeout": datetime.timedelta(seconds=min(timeout, 10.0)),
                "read_timeout": datetime.timedelta(seconds=timeout),  # no bytes for this long
                "timeout": datetime.timedelta(days=1),  # the whole transfer: no bound
            }
            if allow_http is not None:
                client["allow_http"] = allow_http
            elif endpoint is not None and endpoint.startswith("http://"):
                client["allow_http"] = True
            retry = {
                "max_retries": max_retries,
                "retry_timeout": datetime.timedelta(seconds=max(timeout, 1.0)),
            }
            try:
                store = obstore.store.S3Store(
                    bucket, config=config, client_options=client, retry_config=retry
                )
            except ValueError:
                # obstore before 0.9 (the last for Python 3.9) has no read_timeout: bound
                # each request at ten times the stall timeout instead.
                del client["read_timeout"]
                client["timeout"] = datetime.timedelta(seconds=10 * timeout)
                store = obstore.store.S3Store(
                    bucket, config=config, client_options=client, retry_config=retry
                )
            # Uploads: one request per part of at most PART_SIZE, so a bound per request
            # also bounds a stalled upload.
            upload_client = {**client, "timeout": datetime.timedelta(seconds=4 * timeout)}
            self._upload_store = obstore.store.S3Store(
                bucket, config=config, client_options=upload_client, retry_config=retry
            )
            self.url = f"s3://{bucket}"
        else:
            self._upload_store = store
            self.url = repr(store)
        self._store = store
        self.prefix = "/".join(p for p in (url_prefix, prefix.strip("/")) if p)

    def __repr__(self) -> str:
        return f"ObjectStoreCache({self.url!r}, prefix={self.prefix!r})"

    def metrics(self) -> metrics.Values:
        """This cache's counters, ``{tier: {counter: value}}`` (see :mod:`wasmcache.metrics`):
        the remote tier's loads, downloads, uploads and refusals, and its compiles."""
        return metrics.counters(self).snapshot()

    def _direct_index(self) -> Optional[Index]:
        return self.local._direct_index()  # records go where the downloads go

    def object_key(self, key: ModuleHash, engine: wasmtime.Engine, *, lease: bool = False) -> str:
        """``<prefix>/<engine id>-v<N>/<HASH>.bin`` (or ``.lease``)."""
        if not isinstance(key, ModuleHash):
            raise TypeError(f"key must be a ModuleHash, not {type(key).__name__}")
        return names.object_name(self.prefix, engine_id(engine), key, lease=lease)

    # -- the ModuleCache methods ------------------------------------------------------------

    def load(
        self, key: ModuleHash, engine: wasmtime.Engine, *, kind: Optional[Kind] = None
    ) -> Compiled:
        obstore = _obstore()
        name = self.object_key(key, engine)
        counters = metrics.counters(self)
        try:
            chunks = iter(obstore.get(self._store, name).stream(min_chunk_size=transfer.CHUNK))
        except Exception as exc:
            error = self._error(exc, name)
            if isinstance(error, NotFound):
                counters.miss()
            raise error from exc
        chunks = self._guarded(transfer.prefetched(chunks), name)
        try:
            download = transfer.Download(
                chunks, name, engine_id(engine), key, kind or "", self.verifier
            )
            module = self.local.receive(
                key, engine, download, verify=not download.checked, kind=kind
            )
        except (SignatureError, DeserializeError, KindMismatch) as exc:
            counters.add("refusals")  # RemoteCorrupt is a DeserializeError
            if isinstance(exc, RemoteCorrupt):
                if len(self._refused) >= _REFUSED_LIMIT:
                    self._refused.clear()
                self._refused.add(name)
            raise
        counters.hit(*metrics.last_loaded())
        counters.add("downloads")
        log.debug("remote hit %s (%s)", key, name)
        return module

    def _guarded(self, chunks: Iterator[Any], name: str) -> Iterator[Any]:
        """The download's chunks, with client errors turned into CacheErrors."""
        try:
            yield from chunks
        except Exception as exc:
            raise self._error(exc, name) from exc

    def _error(self, exc: BaseException, name: str) -> CacheError:
        error = remote_error(exc, name)
        if isinstance(error, NotFound) and not self._bucket_seen:
            self._check_bucket(name)
        return error

    def _check_bucket(self, name: str) -> None:
        """RemoteBucketNotFound if the bucket is missing (asked once per cache)."""
        obstore = _obstore()
        try:
            obstore.head(self._store, "")  # a HEAD of the bucket itself
        except Exception as exc:
            error = remote_error(exc, self.url)
            if isinstance(error, NotFound):
                raise RemoteBucketNotFound(f"bucket not found: {self.url} (for {name})") from exc
            raise error from exc
        self._bucket_seen = True

    def save(
        self,
        key: ModuleHash,
        engine: wasmtime.Engine,
        module: Compiled,
        *,
        origin: Optional[Origin] = None,
    ) -> None:
        obstore = _obstore()
        name = self.object_key(key, engine)
        kind = kinds.of(module)
        if not self._uploads:
            # Every machine that trusts keys would refuse what this one uploads unsigned.
            log.debug("not uploading %s: this cache trusts keys but has none to sign with", key)
            return
        if self._already_there(name, key, engine, kind):
            log.debug("not uploading %s: %s is already there", key, name)
            return
        payload = artifact_bytes(module)
        sealed = entry.seal(payload, kind, origin, key=key, engine_id=engine_id(engine))
        pieces, manifest = transfer.encode(
            engine_id(engine),
            key,
            kind,
            payload,
            sealed.tail,
            self.signer,
            level=self.compression_level,
        )
        size = sum(len(memoryview(p)) for p in pieces)
        try:
            if size <= PART_SIZE:
                obstore.put(self._upload_store, name, b"".join(pieces), use_multipart=False)
            else:
                # A failed multipart upload is aborted by the client (tested).
                obstore.put(
                    self._upload_store,
                    name,
                    _parts(pieces),
                    chunk_size=PART_SIZE,
                    max_concurrency=4,
                )
        except Exception as exc:
            raise self._error(exc, name) from exc
        metrics.counters(self).add("uploads")
        metrics.counters(self).add("bytes_written", size)
        log.debug(
            "uploaded %s (%d bytes, %d compressed) to %s",
            key,
            manifest.entry_length,
            size,
            name,
        )

    def _already_there(
        self, name: str, key: ModuleHash, engine: wasmtime.Engine, kind: str
    ) -> bool:
        """Whether the bucket holds an object at ``name`` that a load here would accept as
        far as its header tells (today's format, naming this key, engine and kind; signed
        by a trusted key where keys are trusted, and by this cache's own key when it
        signs). One ranged GET of the header; any doubt means no."""
        obstore = _obstore()
        if name in self._refused:
            return False  # its header may be fine, its body was not: replace it
        try:
            size = int(obstore.head(self._store, name)["size"])
            head = bytes(obstore.get_range(self._store, name, start=0, length=transfer.HEAD_BYTES))
        except Exception:  # missing, or unreadable: the upload says what is wrong
            return False
        header = transfer.header_of(head, name)
        if header is None or size != transfer.object_size(head, header):
            return False  # a body cut short or padded is no object to keep
        try:
            transfer.check_header(header, name, engine_id(engine), key, kind, self.verifier)
            if self._own is not None:
                signed = header.manifest.signed_bytes()
                self._own.check(signed, header.signer, header.signature, name)
        except CacheError:
            return False
        return True

    def contains(self, key: ModuleHash, engine: wasmtime.Engine) -> bool:
        obstore = _obstore()
        name = self.object_key(key, engine)
        try:
            obstore.head(self._store, name)
        except Exception as exc:
            error = self._error(exc, name)
            if isinstance(error, NotFound):
                return False
            raise error from exc
        return True

    # -- compile once per fleet -------------------------------------------------------------------

    @contextlib.contextmanager
    def compile_lock(self, key: ModuleHash, engine: wasmtime.Engine) -> Iterator[None]:
        """The fleet-wide lease of this key (see :mod:`wasmcache.lease`), waited for at
        most ``lease_wait`` seconds; when the store refuses it (or cannot do conditional
        puts) there is none (one warning) and the machine compiles on its own. A cache
        that uploads nothing (it trusts keys but has none to sign with) takes no lease:
        others would wait for an object it never sends."""
        if not self._uploads:
            yield
            return
        lease = Lease(
            self._store,
            self.object_key(key, engine, lease=True),
            self.heartbeat,
            self.poll_seconds,
            self.lease_wait,
        )
        held = False
        try:
            held = lease.acquire(lambda: self.contains(key, engine))
        except Exception as exc:
            log.warning("no fleet-wide compile lease for %s: %s", key, exc)
        try:
            yield
        finally:
            if held:
                lease.release()


def _parts(pieces: list[Buffer]) -> Iterator[memoryview]:
    """The object in slices of at most PART_SIZE, without joining it."""
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), PART_SIZE):
            yield view[start : start + PART_SIZE]
