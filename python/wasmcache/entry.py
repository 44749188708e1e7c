"""The entry format, and the one answer to "what is this open file, and is it whole?".

Today's entry (``WMCACHE2``) is::

    artifact | metadata (JSON) | u32 LE metadata length | trailer

where the artifact is what wasmtime serialized, the metadata describes it (:class:`Info`)
and the 24-byte trailer holds the payload length (u64 LE; the payload is everything before
the trailer), the XXH3-64 of the payload (u64 LE) and the magic. So the checksum covers
the metadata too, and the metadata is read with two small preads, without mapping the
artifact. Older shapes still load, as modules: ``WMCACHE1`` (artifact + trailer), a bare
artifact (what ``Module.serialize()`` writes) and an LZW stream of one (see
:mod:`wasmcache.legacy`).
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import time
from typing import Any, Literal, NamedTuple, Optional, Union

import xxhash

from wasmcache.elf import ELF_HEADER_SIZE, ELF_MAGIC, elf_extent
from wasmcache.hashing import ModuleHash
from wasmcache.kinds import KINDS, Kind, wasmtime_version
from wasmcache.names import pattern as _pattern
from wasmcache.safefs import pread as _pread

Buffer = Union[bytes, bytearray, memoryview]
Shape = Literal["trailer", "bare", "lzw"]

MAGIC = b"WMCACHE2"
MAGIC_V1 = b"WMCACHE1"
MAGICS = (MAGIC, MAGIC_V1)
TRAILER = struct.Struct("<QQ8s")
TRAILER_SIZE = TRAILER.size
_META_LENGTH = struct.Struct("<I")
MAX_META = 1 << 16
#: Longest source name an entry records (characters).
MAX_SOURCE = 1024
_MAX_VERSION = 64  # characters of a wasmtime version
_MAX_SIZE = (1 << 63) - 1
_MAX_DEPTH = 8  # nesting of JSON arrays and objects in metadata, however unknown
_CHECKSUM = r"[0-9a-f]{16}"
#: What an entry records of the name it was saved under (as the remote manifest spells it).
_ENGINE_ID = r"[A-Za-z0-9._-]{1,255}"
_KEY_ALGORITHM = r"[a-z0-9]{1,16}"
_KEY = r"[0-9A-F]{16,128}"


class Corrupt(Exception):
    """Internal: the entry cannot be loaded; the message says why."""


class Trailer(NamedTuple):
    payload_length: int
    checksum: int
    magic: bytes


class _OriginFields(NamedTuple):
    source: Optional[str] = None
    wasm_size: Optional[int] = None
    compile_seconds: Optional[float] = None


class Origin(_OriginFields):
    """What the compiler knew: the source file's name (at most 1024 characters, no NUL),
    the Wasm size in bytes, the compile time in seconds. Checked when made and when saved:
    TypeError for a wrong type, ValueError for a negative or non-finite number or a bad
    name."""

    __slots__ = ()

    def __new__(
        cls,
        source: Optional[str] = None,
        wasm_size: Optional[int] = None,
        compile_seconds: Optional[float] = None,
    ) -> Origin:
        made = super().__new__(cls, source, wasm_size, compile_seconds)
        check_origin(made)
        return made


def _number(value: object, name: str, *, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {wanted} or None, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or value > _MAX_SIZE:
        raise ValueError(f"{name} must be finite, not negative and below 2**63: {value!r}")


def check_origin(origin: object) -> None:
    """TypeError unless ``origin`` is an Origin (or None) of the right types; ValueError
    for a negative or non-finite number, or a source name with NUL or too long."""
    if origin is None:
        return
    if not isinstance(origin, Origin):
        raise TypeError(f"origin must be an Origin or None, not {type(origin).__name__}")
    source, wasm_size, seconds = origin
    if source is not None:
        if not isinstance(source, str):
            raise TypeError(f"Origin.source must be a str or None, not {type(source).__name__}")
        if "\0" in source:
            raise ValueError("Origin.source must not contain NUL")
        if len(source) > MAX_SOURCE:
            raise ValueError(f"Origin.source is longer than {MAX_SOURCE} characters")
    if wasm_size is not None:
        _number(wasm_size, "Origin.wasm_size", integer=True)
    if seconds is not None:
        _number(seconds, "Origin.compile_seconds", integer=False)


class Info(NamedTuple):
    """An entry's description (older entries: kind "module", everything else None)."""

    kind: Kind = "module"
    source: Optional[str] = None
    wasm_size: Optional[int] = None
    compile_seconds: Optional[float] = None
    created: Optional[float] = None
    wasmtime: Optional[str] = None
    artifact_length: Optional[int] = None
    artifact_checksum: Optional[int] = None
    #: The engine id and key the entry was saved under (None in entries written before
    #: entries recorded them).
    engine_id: Optional[str] = None
    key_algorithm: Optional[str] = None
    key: Optional[str] = None  # the digest in uppercase hex

    def names_other(self, key: ModuleHash, engine_id: str) -> Optional[str]:
        """Why an entry with this description may not stand for ``key`` and
        ``engine_id`` (it records another), or None; an entry that records neither
        stands for whatever name it is found under."""
        if self.key is not None and (self.key_algorithm, self.key) != (key.algorithm, str(key)):
            return (
                f"it was saved under key {self.key_algorithm}:{self.key}, not {key.algorithm}:{key}"
            )
        if self.engine_id is not None and self.engine_id != engine_id:
            return f"it was saved for engine {self.engine_id}, not {engine_id}"
        return None


class Sealed(NamedTuple):
    """What follows an artifact in its entry, and what it says of the artifact."""

    tail: bytes  # metadata, its length and the trailer
    length: int  # of the whole entry
    checksum: int  # the trailer's: XXH3-64 of the payload
    kind: Kind
    artifact_length: int
    artifact_checksum: int
    names: tuple[Optional[str], Optional[str], Optional[str]]  # engine id, key algorithm, key


def checksum(payload: Buffer) -> int:
    """XXH3-64 of the payload."""
    return xxhash.xxh3_64_intdigest(payload)


def seal(
    artifact: Buffer,
    kind: Kind,
    origin: Optional[Origin] = None,
    *,
    key: Optional[ModuleHash] = None,
    engine_id: Optional[str] = None,
) -> Sealed:
    """The metadata block and trailer of a new entry for ``artifact``, recording the
    ``key`` and ``engine_id`` it is saved under when given."""
    check_origin(origin)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if key is not None and not isinstance(key, ModuleHash):
        raise TypeError(f"key must be a ModuleHash or None, not {type(key).__name__}")
    if engine_id is not None and not (
        isinstance(engine_id, str) and _pattern(_ENGINE_ID).fullmatch(engine_id)
    ):
        raise ValueError(f"not an engine id: {engine_id!r}")
    origin = origin or Origin()
    hasher = xxhash.xxh3_64(artifact)
    artifact_checksum = hasher.intdigest()
    meta: dict[str, Any] = {
        "kind": kind,
        "source": origin.source,
        "wasm_size": origin.wasm_size,
        "compile_seconds": origin.compile_seconds,
        "created": time.time(),
        "wasmtime": wasmtime_version(),
        "artifact_length": len(artifact),
        "artifact_checksum": f"{artifact_checksum:016x}",
    }
    if engine_id is not None:
        meta["engine_id"] = engine_id
    if key is not None:
        meta["key_algorithm"], meta["key"] = key.algorithm, str(key)
    import json  # imported by the writer only: a load never needs it

    block = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    block += _META_LENGTH.pack(len(block))
    hasher.update(block)
    payload_length, digest = len(artifact) + len(block), hasher.intdigest()
    trailer = TRAILER.pack(payload_length, digest, MAGIC)
    names = (engine_id, None if key is None else key.algorithm, None if key is None else str(key))
    return Sealed(
        block + trailer, payload_length + TRAILER_SIZE, digest, kind, len(artifact),
        artifact_checksum, names,
    )  # fmt: skip


def read_trailer(tail: bytes) -> Optional[Trailer]:
    """The trailer in the last 24 bytes of a file, or None if they are not one."""
    if len(tail) != TRAILER_SIZE:
        return None
    length, digest, magic = TRAILER.unpack(tail)
    return Trailer(length, digest, magic) if magic in MAGICS else None


def inspect(fd: int, size: int, *, verify: bool) -> Shape:
    """What the open file holds: "trailer" (an entry in today's or the previous format:
    length checked, and with ``verify`` the checksum), "bare" (a whole artifact) or "lzw"
    (maybe an LZW stream: decoding decides). Raises Corrupt for anything else."""
    if size == 0:
        raise Corrupt("empty file")
    tail = _pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) if size >= TRAILER_SIZE else b""
    trailer = read_trailer(tail)
    if trailer is not None:
        if trailer.payload_length != size - TRAILER_SIZE:
            raise Corrupt(
                f"length mismatch: trailer says {trailer.payload_length} bytes, "
                f"file holds {size - TRAILER_SIZE}"
            )
        if verify and file_checksum(fd, trailer.payload_length) != trailer.checksum:
            raise Corrupt("checksum mismatch")
        return "trailer"
    head = _pread(fd, ELF_HEADER_SIZE, 0)
    if head.startswith(ELF_MAGIC):
        # A bare artifact is exactly its ELF length; anything else is an entry whose
        # trailer was damaged, or a truncated file.
        if elf_extent(head) != size:
            raise Corrupt("artifact without a valid trailer, or truncated")
        return "bare"
    return "lzw"


def read_info(fd: int, size: int) -> Info:
    """The description of an entry :func:`inspect` accepted: today's format carries one
    (Corrupt if it is damaged); every older shape is a module, described by the defaults."""
    tail = _pread(fd, TRAILER_SIZE, size - TRAILER_SIZE) if size >= TRAILER_SIZE else b""
    trailer = read_trailer(tail)
    if trailer is None or trailer.magic != MAGIC:
        return Info()
    end = size - TRAILER_SIZE - _META_LENGTH.size
    if end < 0:
        raise Corrupt("too short for its metadata")
    raw_length = _pread(fd, _META_LENGTH.size, end)
    if len(raw_length) != _META_LENGTH.size:
        raise Corrupt("file shrank while its metadata was read")
    (length,) = _META_LENGTH.unpack(raw_length)
    if length > min(MAX_META, end):
        raise Corrupt(f"metadata length {length} out of range")
    info = parse_info(_pread(fd, length, end - length))
    if info.artifact_length != end - length:
        raise Corrupt("metadata does not describe this file")
    return info


#: Bytes read from an entry's end to describe it in one read: the trailer, the metadata's
#: length and metadata of up to 996 bytes (a longer one is read by :func:`read_info`).
_TAIL_READ = 1024
#: What follows the metadata: its length (u32) and the trailer.
_AFTER_META = _META_LENGTH.size + TRAILER_SIZE
#: The metadata's length and the trailer's payload length, side by side.
_LENGTHS = struct.Struct("<IQ")


def describe(fd: int, size: int) -> Info:
    """What :func:`inspect` (without the checksum) and then :func:`read_info` give, in
    one read of the entry's end when its metadata fits in it. Corrupt for a damaged file."""
    end = size - _AFTER_META
    if end >= 0:
        n = size if size < _TAIL_READ else _TAIL_READ
        tail = _pread(fd, n, size - n)
        if len(tail) == n and tail.endswith(MAGIC):  # today's trailer
            at = n - _AFTER_META  # where the metadata ends (at <= end)
            length, payload_length = _LENGTHS.unpack_from(tail, at)
            if payload_length != size - TRAILER_SIZE:
                raise Corrupt(
                    f"length mismatch: trailer says {payload_length} bytes, "
                    f"file holds {size - TRAILER_SIZE}"
                )
            if length <= at and length <= MAX_META:
                raw = tail[at - length : at]
                info = _canonical(raw) or parse_info(raw)  # an Info is never empty
                if info.artifact_length != end - length:
                    raise Corrupt("metadata does not describe this file")
                return info
    inspect(fd, size, verify=False)
    return read_info(fd, size)


def _field(meta: dict[str, Any], name: str, types: tuple[type, ...], required: bool) -> Any:
    value = meta.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise Corrupt(f"damaged metadata: {name} is {type(value).__name__}")
    if isinstance(value, (int, float)) and (not math.isfinite(value) or value < 0):
        raise Corrupt(f"damaged metadata: {name} is {value!r}")
    return value


def _text(meta: dict[str, Any], name: str, limit: int, required: bool = False) -> Optional[str]:
    value: Optional[str] = _field(meta, name, (str,), required)
    if value is not None and (len(value) > limit or "\0" in value):
        raise Corrupt(f"damaged metadata: {name} is too long or holds NUL")
    return value


def _seconds(meta: dict[str, Any], name: str) -> Optional[float]:
    value = _field(meta, name, (int, float), False)
    return None if value is None else float(value)


_NUMBER = r"(?:null|((?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?))"
_INTEGER = r"(?:0|[1-9][0-9]{0,18})"


def _plain(limit: int) -> str:
    """null, or a string of at most ``limit`` characters without escapes or controls."""
    return r'(?:null|"([^"\\\x00-\x1f\x7f]{0,' + str(limit) + r'})")'


#: The metadata exactly as :func:`seal` writes it (sorted keys, ASCII, no escapes in the
#: strings): read without the general parser, to the same Info. Every part is anchored
#: and unambiguous, so a match costs one pass; a field that is null matches no group.
_CANONICAL = (
    r'\{"artifact_checksum":"([0-9a-f]{16})","artifact_length":(' + _INTEGER + r"),"
    r'"compile_seconds":' + _NUMBER + r',"created":' + _NUMBER + r","
    r'(?:"engine_id":"([A-Za-z0-9._-]{1,255})",)?'
    r'(?:"key":"([0-9A-F]{16,128})","key_algorithm":"([a-z0-9]{1,16})",)?'
    r'"kind":"(module|component)","source":' + _plain(MAX_SOURCE) + r","
    r'"wasm_size":(?:null|(' + _INTEGER + r')),"wasmtime":' + _plain(_MAX_VERSION) + r"\}"
)
#: An Info from a tuple of its fields in order, without the keyword handling of Info().
_new_info = tuple.__new__
_canonical_pattern: Optional[re.Pattern[str]] = None  # _CANONICAL, compiled when first used
#: Metadata blocks a process reads by hand before it compiles _CANONICAL: a start that
#: loads a few entries never pays the compile (1.5 ms), a listing of thousands reads at
#: the pattern's speed (three times the hand reader's).
_BY_HAND = 64
_by_hand_left = _BY_HAND
#: The fields of seal's form, in order, as the four layouts it writes have them.
_LAYOUTS = frozenset(
    ("artifact_checksum", "artifact_length", "compile_seconds", "created", *names,
     "kind", "source", "wasm_size", "wasmtime")
    for names in ((), ("engine_id",), ("key", "key_algorithm"),
                  ("engine_id", "key", "key_algorithm"))
)  # fmt: skip
_HEX_DIGITS = "0123456789abcdef"
_ENGINE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_KEY_CHARS = "0123456789ABCDEF"
_ALGORITHM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
Groups = tuple[Optional[str], ...]


class _NotCanonical(Exception):
    """Internal: a value of the hand reader outside _CANONICAL."""


def _canonical(raw: bytes) -> Optional[Info]:
    """The Info of metadata in :func:`seal`'s own form, or None for anything else (then
    the general parser decides)."""
    global _canonical_pattern, _by_hand_left
    if not raw.isascii():
        return None
    text = raw.decode("ascii")
    pattern = _canonical_pattern
    if pattern is None and _by_hand_left > 0:
        _by_hand_left -= 1
        groups = _groups_by_hand(text)
    else:
        if pattern is None:
            pattern = _canonical_pattern = re.compile(_CANONICAL)
        match = pattern.fullmatch(text)
        groups = None if match is None else match.groups()
    return None if groups is None else _info_of(groups)


def _groups_by_hand(text: str) -> Optional[Groups]:
    """What ``fullmatch`` of _CANONICAL groups for ``text`` (None: no match), found with
    string methods: no string of the form holds a quote, so every quote delimits one and
    the text splits at quotes into names, string values and what lies between (a colon,
    a number or null, a comma or the closing brace); the names are checked against the
    layouts, each value against its part of the pattern (numbers with a lowercase
    exponent only: seal writes no other)."""
    parts = text.split('"')
    if parts[0] != "{":
        return None
    fields: dict[str, str] = {}
    at, end = 1, len(parts)
    while at < end:
        name = parts[at]
        between = parts[at + 1] if at + 1 < end else ""
        if between == ":" and at + 3 < end:  # a string: its text, then what follows it
            value, after = f'"{parts[at + 2]}"', parts[at + 3]
            at += 4
        elif between[:1] == ":":  # a number or null, and the comma or brace after it
            value, after = between[1:-1], between[-1:]
            at += 2
        else:
            return None
        if after != ("}" if at >= end else ",") or name in fields:
            return None
        fields[name] = value
    if tuple(fields) not in _LAYOUTS:
        return None
    get = fields.get
    try:
        return (
            _word(fields["artifact_checksum"], _HEX_DIGITS, 16, 16),
            _integer(fields["artifact_length"]),
            _decimal(fields["compile_seconds"]),
            _decimal(fields["created"]),
            _word(get("engine_id"), _ENGINE_CHARS, 1, 255),
            _word(get("key"), _KEY_CHARS, 16, 128),
            _word(get("key_algorithm"), _ALGORITHM_CHARS, 1, 16),
            _kind(fields["kind"]),
            _plain_text(fields["source"], MAX_SOURCE),
            None if fields["wasm_size"] == "null" else _integer(fields["wasm_size"]),
            _plain_text(fields["wasmtime"], _MAX_VERSION),
        )
    except _NotCanonical:
        return None


def _integer(value: str) -> str:
    """_INTEGER (``value`` is ASCII, so isdigit means 0-9)."""
    if value.isdigit() and len(value) <= 19 and (value[0] != "0" or value == "0"):
        return value
    raise _NotCanonical


def _decimal(value: str) -> Optional[str]:
    """_NUMBER: None for null."""
    if value == "null":
        return None
    mantissa, e, exponent = value.partition("e")
    whole, point, fraction = mantissa.partition(".")
    if exponent[:1] in ("+", "-"):
        exponent = exponent[1:]
    if (
        whole.isdigit() and len(whole) <= 20 and (whole[0] != "0" or whole == "0")
        and (not point or (fraction.isdigit() and len(fraction) <= 20))
        and (not e or (exponent.isdigit() and len(exponent) <= 3))
    ):  # fmt: skip
        return value
    raise _NotCanonical


def _quoted(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise _NotCanonical
    return value[1:-1]


def _word(value: Optional[str], alphabet: str, shortest: int, longest: int) -> Optional[str]:
    """A quoted string of ``shortest`` to ``longest`` characters of ``alphabet``; None for
    a field the layout leaves out."""
    if value is None:
        return None
    inner = _quoted(value)
    if shortest <= len(inner) <= longest and not inner.strip(alphabet):
        return inner
    raise _NotCanonical


def _kind(value: str) -> str:
    inner = _quoted(value)
    if inner in KINDS:
        return inner
    raise _NotCanonical


def _plain_text(value: str, limit: int) -> Optional[str]:
    """_plain(limit): None for null (an ASCII string is printable exactly when it holds no
    control character and no DEL)."""
    if value == "null":
        return None
    inner = _quoted(value)
    if len(inner) <= limit and inner.isprintable() and '"' not in inner and "\\" not in inner:
        return inner
    raise _NotCanonical


def _info_of(groups: Groups) -> Optional[Info]:
    """The Info of _CANONICAL's groups; None for a value out of range (the general parser
    then says why)."""
    (digest, length, seconds, created, engine, key, algorithm, kind, source, wasm_size,
     version) = groups  # fmt: skip
    assert digest is not None and length is not None
    artifact_length = int(length)
    size = None if wasm_size is None else int(wasm_size)
    seconds_value = None if seconds is None else float(seconds)
    created_value = None if created is None else float(created)
    if (
        artifact_length > _MAX_SIZE
        or (size is not None and size > _MAX_SIZE)
        or seconds_value == math.inf
        or created_value == math.inf
    ):
        return None
    info: Info = _new_info(
        Info, (kind, source, size, seconds_value, created_value, version, artifact_length,
               int(digest, 16), engine, algorithm, key),
    )  # fmt: skip
    return info


def parse_info(raw: bytes) -> Info:
    """The Info in an entry's metadata block, checked against the schema: a JSON object
    of UTF-8 text (size and nesting bounded before it is parsed, no key twice) whose
    known fields have their types and bounds; unknown fields are ignored. Corrupt for
    anything else, whatever the parser meets. Metadata in the form :func:`seal` writes
    is read by one pattern, to the same Info."""
    quick = _canonical(raw)
    if quick is not None:
        return quick
    try:
        return parse_info_general(raw)
    except Corrupt:
        raise
    except Exception as exc:  # untrusted bytes: any surprise of the parser is damage
        raise Corrupt(f"damaged metadata: {type(exc).__name__}: {exc}") from None


def parse_info_general(raw: bytes) -> Info:
    """:func:`parse_info` by the strict JSON reader (:func:`wasmcache.schema.loads`:
    UTF-8 only, one linear scan of the nesting before the parser runs) and the schema's
    checks."""
    from wasmcache import schema  # entries in seal's own form never need it

    try:
        meta = schema.loads(raw, max_size=MAX_META, max_depth=_MAX_DEPTH)
    except schema.Invalid as exc:
        raise Corrupt(f"damaged metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise Corrupt(f"damaged metadata: {type(meta).__name__}, not an object")
    kind = _text(meta, "kind", 16, required=True)
    if kind not in KINDS:
        raise Corrupt(f"damaged metadata: unknown kind {kind!r}")
    wasm_size = _field(meta, "wasm_size", (int,), False)
    length = _field(meta, "artifact_length", (int,), True)
    if length > _MAX_SIZE or (wasm_size is not None and wasm_size > _MAX_SIZE):
        raise Corrupt("damaged metadata: a size out of range")
    digest = _text(meta, "artifact_checksum", 16, required=True)
    if digest is None or not _pattern(_CHECKSUM).fullmatch(digest):
        raise Corrupt(f"damaged metadata: artifact_checksum {digest!r}")
    algorithm = _name(meta, "key_algorithm", _KEY_ALGORITHM)
    key = _name(meta, "key", _KEY)
    if (algorithm is None) != (key is None):
        raise Corrupt("damaged metadata: key and key_algorithm come together")
    return Info(
        kind=kind,  # one of KINDS, checked above
        source=_text(meta, "source", MAX_SOURCE),
        wasm_size=wasm_size,
        compile_seconds=_seconds(meta, "compile_seconds"),
        created=_seconds(meta, "created"),
        wasmtime=_text(meta, "wasmtime", _MAX_VERSION),
        artifact_length=length,
        artifact_checksum=int(digest, 16),
        engine_id=_name(meta, "engine_id", _ENGINE_ID),
        key_algorithm=algorithm,
        key=key,
    )


def _name(meta: dict[str, Any], name: str, pattern: str) -> Optional[str]:
    value: Optional[str] = _field(meta, name, (str,), False)
    if value is not None and not _pattern(pattern).fullmatch(value):
        raise Corrupt(f"damaged metadata: {name} {value[:40]!r}")
    return value


def holds(fd: int, sealed: Sealed) -> bool:
    """Whether the open file is a whole, checked entry of the same artifact and kind as
    ``sealed`` (its other metadata, say its creation time, may differ)."""
    try:
        size = os.fstat(fd).st_size
        if inspect(fd, size, verify=True) != "trailer":
            return False
        info = read_info(fd, size)
        named = (info.engine_id, info.key_algorithm, info.key)
        return (info.kind, info.artifact_length, info.artifact_checksum) == (
            sealed.kind, sealed.artifact_length, sealed.artifact_checksum,
        ) and named in (sealed.names, (None, None, None))  # fmt: skip
    except (OSError, Corrupt):
        return False


def file_checksum(fd: int, length: int) -> int:
    """XXH3-64 of the first ``length`` bytes of the open file."""
    if length == 0:
        return checksum(b"")
    import mmap  # a load whose entry was checked this boot maps nothing here

    # MAP_POPULATE maps the whole file in one call instead of a fault per page.
    if sys.platform == "win32":
        mapping = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
    else:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapping = mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ)
    with mapping as mapped:
        view = memoryview(mapped)
        try:
            return checksum(view)
        finally:
            view.release()
