"""Ed25519 keys and signatures over manifests (see :mod:`wasmcache.manifest`).

A signature covers a manifest's signed bytes, which name the engine id, the key, the kind
and the SHA-256 and length of the entry, so it cannot be moved to another key, engine or
content. A key is named by its id: the first 8 bytes (16 hex digits) of the SHA-256 of its
raw public bytes. Needs ``cryptography`` (the ``s3`` extra).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

from wasmcache._optional import require
from wasmcache.errors import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

PrivateKeyLike = Union["Ed25519PrivateKey", bytes, str, "os.PathLike[str]"]
PublicKeyLike = Union["Ed25519PublicKey", bytes, str, "os.PathLike[str]"]
_PemSource = Union[bytes, str, "os.PathLike[str]"]
#: Bytes of an Ed25519 signature.
SIGNATURE_SIZE = 64


def _crypto() -> Any:
    require("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def _pem(value: _PemSource, what: str) -> bytes:
    """PEM text given as bytes, or as the path of a PEM file."""
    if isinstance(value, bytes):
        return value
    path = Path(os.fspath(value))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} PEM file {path}: {exc.strerror}") from exc


def _load_key(value: object, private: bool) -> Any:
    """An Ed25519 key object given as itself, PEM bytes or a PEM file's path."""
    serialization, ed25519 = _crypto()
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    what = "signing key" if private else "trusted key"
    if isinstance(value, wanted):
        return value
    pem = _pem(cast(_PemSource, value), what)
    try:
        if private:
            key = serialization.load_pem_private_key(pem, password=None)
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the {what} is not an unencrypted PEM key: {exc}") from exc
    if not isinstance(key, wanted):
        raise ValueError(f"the {what} must be Ed25519, not {type(key).__name__}")
    return key


def load_private_key(value: PrivateKeyLike) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, PEM bytes or a PEM file's path."""
    return cast("Ed25519PrivateKey", _load_key(value, private=True))


def load_public_key(value: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM bytes or a PEM file's path."""
    return cast("Ed25519PublicKey", _load_key(value, private=False))


def key_id(public: Ed25519PublicKey) -> str:
    serialization, _ = _crypto()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs manifests with one private key."""

    def __init__(self, private: PrivateKeyLike) -> None:
        self._key = load_private_key(private)
        self.public_key = self._key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message`` (a manifest's signed bytes)."""
        return bytes(self._key.sign(message))


class Verifier:
    """Accepts messages signed by one of the trusted public keys."""

    def __init__(self, trusted: Iterable[PublicKeyLike]) -> None:
        keys = [load_public_key(k) for k in trusted]
        if not keys:
            raise ValueError("trusted_keys is empty: no object could ever be loaded")
        self._keys = {key_id(k): k for k in keys}

    def check(
        self, message: bytes, signer: Optional[str], signature: Optional[bytes], name: str
    ) -> None:
        """Return if ``signature`` by key ``signer`` is valid for ``message``; else raise
        SignatureError naming the object ``name`` and the key id."""
        from cryptography.exceptions import InvalidSignature

        if signer is None or signature is None:
            raise SignatureError(f"{name} is not signed; only signed objects are trusted")
        public = self._keys.get(signer)
        if public is None:
            raise SignatureError(f"{name} is signed by key {signer}, which is not trusted")
        try:
            public.verify(signature, message)
        except InvalidSignature:
            raise SignatureError(
                f"{name} has an invalid signature for key {signer}: its content, key or "
                "engine is not what was signed"
            ) from None


def generate_pem_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PEM, public PEM)."""
    serialization, ed25519 = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return bytes(private_pem), bytes(public_pem)
