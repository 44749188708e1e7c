"""Typed wrappers over the C core (``wasmcache._native``): each C status becomes an exception."""

from __future__ import annotations

import os
from typing import Union

from wasmcache._native import ffi, lib
from wasmcache.errors import LZWError

Buffer = Union[bytes, bytearray, memoryview]

#: Largest output :func:`lzw_decode` produces unless told otherwise (2 GiB).
DEFAULT_MAX_OUTPUT = 2 << 30

_LZW_MESSAGES = {
    lib.WMC_ERR_LZW_CODE: "invalid LZW code at byte {offset}",
    lib.WMC_ERR_LZW_NO_END: "LZW stream ends at byte {offset} without an end code",
    lib.WMC_ERR_LZW_TOO_LARGE: "LZW stream decodes to more than {cap} bytes (at byte {offset})",
}


def _take(out: object, out_len: object) -> bytes:
    """Copy a malloc'd C buffer into bytes and free it."""
    try:
        return ffi.buffer(out[0], out_len[0])[:]  # type: ignore[index]
    finally:
        lib.wmc_free(out[0])  # type: ignore[index]


def lzw_decode_view(data: Buffer, max_output: int = DEFAULT_MAX_OUTPUT) -> memoryview:
    """Decode into a C buffer and return a view of it (no copy; freed with the view)."""
    if max_output < 0:
        raise ValueError("max_output must not be negative")
    src = ffi.from_buffer("uint8_t[]", data)
    out_buf = ffi.new("uint8_t **")
    out_data = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    err_offset = ffi.new("size_t *")
    status = lib.wmc_lzw_decode(src, len(src), max_output, out_buf, out_data, out_len, err_offset)
    if status == lib.WMC_OK:
        owner = ffi.gc(out_buf[0], lib.wmc_free)
        skip = int(ffi.cast("uintptr_t", out_data[0])) - int(ffi.cast("uintptr_t", owner))
        # The view keeps the ffi.buffer alive, which keeps `owner` (and the memory) alive.
        return memoryview(ffi.buffer(owner, skip + out_len[0]))[skip:]
    if status == lib.WMC_ERR_NOMEM:
        raise MemoryError("out of memory while decoding LZW")
    template = _LZW_MESSAGES.get(status, "LZW decoding failed with status {status}")
    raise LZWError(template.format(offset=err_offset[0], cap=max_output, status=status))


def lzw_decode(data: Buffer, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
    view = lzw_decode_view(data, max_output)
    try:
        return view.tobytes()
    finally:
        view.release()


def lzw_encode(data: Buffer) -> bytes:
    src = ffi.from_buffer("uint8_t[]", data)
    out = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    status = lib.wmc_lzw_encode(src, len(src), out, out_len)
    if status == lib.WMC_OK:
        return _take(out, out_len)
    if status == lib.WMC_ERR_NOMEM:
        raise MemoryError("out of memory while encoding LZW")
    raise ValueError(f"input too large to LZW-encode ({len(src)} bytes)")


def atomic_write(
    target: str, payload: object, payload_len: int, trailer: bytes, *, fsync: bool = False
) -> None:
    """Write payload + trailer to ``target`` through a temp file and a rename.

    ``payload`` is a bytes-like object or a cffi ``uint8_t *``. Raises OSError (with errno
    and the target's name) on failure; no temp file is left behind then.
    """
    if not isinstance(payload, ffi.CData):
        payload = ffi.from_buffer("uint8_t[]", payload)
    err_no = ffi.new("int *")
    flags = (lib.WMC_FSYNC_FILE | lib.WMC_FSYNC_DIR) if fsync else 0
    status = lib.wmc_atomic_write(
        os.fsencode(target), payload, payload_len, trailer, len(trailer), flags, err_no
    )
    if status == lib.WMC_OK:
        return
    if status == lib.WMC_ERR_NOMEM:
        raise MemoryError("out of memory while writing a cache file")
    if status == lib.WMC_ERR_OS:
        raise OSError(err_no[0], os.strerror(err_no[0]), target)
    raise ValueError(f"cannot write to {target!r} (status {status})")


def cache_path(cache_dir: bytes, engine_id: bytes, version: int, digest: bytes) -> bytes:
    """``<cache_dir>/<engine_id>-v<version>/<HEX>.bin`` as bytes (see ``wmc_cache_path``)."""
    out = ffi.new("char[]", len(cache_dir) + len(engine_id) + 2 * len(digest) + 32)
    out_len = ffi.new("size_t *")
    status = lib.wmc_cache_path(
        cache_dir,
        len(cache_dir),
        engine_id,
        len(engine_id),
        version,
        digest,
        len(digest),
        out,
        len(out),
        out_len,
    )
    if status == lib.WMC_OK:
        return ffi.unpack(out, out_len[0])
    if status == lib.WMC_ERR_PATH_COMPONENT:
        raise ValueError(f"unsafe cache path component: dir={cache_dir!r}, engine={engine_id!r}")
    raise ValueError(f"cannot build a cache path (status {status})")
