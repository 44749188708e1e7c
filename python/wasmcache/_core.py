"""Typed wrappers over the C core (``wasmcache._native``).

Every C status goes through :func:`_check`, the one place that turns a status into an
exception (its message starts with the C core's own text, ``wmc_strerror``) or, for the
facilities only some platforms have, into "not available here" for the caller to read as
"not trusted".
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, Optional, Union

from wasmcache._native import ffi, lib
from wasmcache.errors import CacheError, FileReadError, FileWriteError, LZWError, OutOfMemory

Buffer = Union[bytes, bytearray, memoryview]

#: Largest output :func:`lzw_decode` produces unless told otherwise (2 GiB).
DEFAULT_MAX_OUTPUT = 2 << 30
_SIZE_MAX = sys.maxsize  # caps beyond this mean "no cap" (and stay a valid size_t)
_LZW_REASONS = {
    lib.WMC_ERR_LZW_CODE: "code",
    lib.WMC_ERR_LZW_NO_END: "no-end",
    lib.WMC_ERR_LZW_TOO_LARGE: "too-large",
    lib.WMC_ERR_LZW_NOT_ELF: "not-elf",
}


def strerror(status: int) -> str:
    """The C core's description of a status."""
    return str(ffi.string(lib.wmc_strerror(status)).decode("ascii"))


def _fail(
    status: int,
    *,
    what: str,
    path: Optional[str] = None,
    err_no: int = 0,
    offset: Optional[int] = None,
    reading: bool = False,
) -> NoReturn:
    message = strerror(status)
    if status == lib.WMC_ERR_NOMEM:
        raise OutOfMemory(f"{message} while {what}")
    if status == lib.WMC_ERR_OS:
        cause = OSError(err_no, os.strerror(err_no), path)
        if reading:
            raise FileReadError(f"cannot {what}: {os.strerror(err_no)}", path, errno=err_no) from (
                cause
            )
        raise FileWriteError(
            f"cannot write cache file {path}: {os.strerror(err_no)}", path, errno=err_no
        ) from cause
    reason = _LZW_REASONS.get(status)
    if reason is not None:
        raise LZWError(f"{message} at byte {offset} ({what})", reason)
    if status == lib.WMC_ERR_UNSUPPORTED:
        raise CacheError(f"{message}: {what}")
    raise ValueError(f"{message}: {what}")


def _check(status: int, *, optional: bool = False, **context: Any) -> bool:
    """True if ``status`` is WMC_OK. False if it is WMC_ERR_UNSUPPORTED and the facility is
    ``optional`` (only some platforms have it: the caller then trusts nothing it would
    have told). Otherwise raise the exception the status stands for."""
    if status == lib.WMC_OK:
        return True
    if optional and status == lib.WMC_ERR_UNSUPPORTED:
        return False
    _fail(status, **context)


def _buffer(data: object, name: str) -> Any:
    """A cffi view of a contiguous bytes-like object (no copy). Use it in a ``with`` block:
    the view holds an export of ``data``'s buffer until released, and a traceback that
    keeps the frame alive must not keep the export (a memoryview with an export cannot be
    released, and the garbage collector then crashes the interpreter)."""
    try:
        return ffi.from_buffer("uint8_t[]", data)
    except (TypeError, BufferError) as exc:
        raise TypeError(f"{name} must be a contiguous bytes-like object: {exc}") from None


def _size(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return min(value, _SIZE_MAX)


def lzw_decode_view(
    data: Buffer, max_output: int = DEFAULT_MAX_OUTPUT, *, expect_elf: bool = False
) -> memoryview:
    """Decode into a C buffer and return a view of it (no copy; freed with the view).
    With ``expect_elf`` the decode stops as soon as the output cannot be one whole ELF
    image (checked on its first 64 bytes)."""
    cap = _size(max_output, "max_output")
    out_buf = ffi.new("uint8_t **")
    out_data = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    err_offset = ffi.new("size_t *")
    flags = lib.WMC_LZW_EXPECT_ELF if expect_elf else 0
    with _buffer(data, "data") as src:
        status = lib.wmc_lzw_decode(
            src, len(src), cap, flags, out_buf, out_data, out_len, err_offset
        )
    _check(status, what=f"output cap {cap} bytes", offset=err_offset[0])
    owner = ffi.gc(out_buf[0], lib.wmc_free)
    skip = int(ffi.cast("uintptr_t", out_data[0])) - int(ffi.cast("uintptr_t", owner))
    # The view keeps the ffi.buffer alive, which keeps `owner` (and the memory) alive.
    return memoryview(ffi.buffer(owner, skip + out_len[0]))[skip:]


def lzw_decode(data: Buffer, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
    view = lzw_decode_view(data, max_output)
    try:
        return view.tobytes()
    finally:
        view.release()


def lzw_encode(data: Buffer) -> bytes:
    out = ffi.new("uint8_t **")
    out_len = ffi.new("size_t *")
    with _buffer(data, "data") as src:
        size = len(src)
        status = lib.wmc_lzw_encode(src, size, out, out_len)
    _check(status, what=f"LZW-encoding {size} bytes")
    try:
        return bytes(ffi.buffer(out[0], out_len[0]))
    finally:
        lib.wmc_free(out[0])


def atomic_write(
    temp: str,
    target: str,
    payload: Buffer,
    trailer: bytes,
    *,
    fsync: bool = False,
    mode: int = 0,
) -> None:
    """Write payload + trailer to the new file ``temp`` (never an existing name or a
    link), then rename it over ``target``. A non-zero ``mode`` is set on the file before
    it is written (else 0644 less the umask; Windows files have no mode and take their
    folder's ACL). Raises FileWriteError (``errno`` set, on Windows as CPython maps the
    Windows error; EEXIST means pick another temp name); no temp file is left behind then."""
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode:#o} is not a file mode")
    err_no = ffi.new("int *")
    flags = (lib.WMC_FSYNC_FILE | lib.WMC_FSYNC_DIR) if fsync else 0
    with _buffer(payload, "payload") as body, _buffer(trailer, "trailer") as tail:
        status = lib.wmc_atomic_write(
            os.fsencode(temp), os.fsencode(target), body, len(body), tail, len(tail), flags,
            mode, err_no,
        )  # fmt: skip
    _check(status, what=f"writing {target}", path=target, err_no=err_no[0])


def cache_path(cache_dir: bytes, engine_id: bytes, version: int, digest: bytes) -> bytes:
    """``<cache_dir>/<engine_id>-v<version>/<HEX>.bin`` as bytes, with the platform's
    separator (see ``wmc_cache_path``)."""
    cap = len(cache_dir) + len(engine_id) + 2 * len(digest) + 32
    out = ffi.new("char[]", cap)
    out_len = ffi.new("size_t *")
    status = lib.wmc_cache_path(
        cache_dir, len(cache_dir), engine_id, len(engine_id), version, digest, len(digest),
        out, cap, out_len,
    )  # fmt: skip
    _check(status, what=f"cache path for dir={cache_dir!r}, engine={engine_id!r}")
    return bytes(ffi.unpack(out, out_len[0]))


def temp_path(target: bytes, pid: int, suffix: int) -> bytes:
    """``<folder>/.<name>.<pid>.<16 hex of suffix>.tmp`` as bytes; the folder part ends at
    the last separator the platform has (see ``wmc_temp_path``)."""
    cap = len(target) + 64
    out = ffi.new("char[]", cap)
    out_len = ffi.new("size_t *")
    status = lib.wmc_temp_path(target, len(target), pid, suffix, out, cap, out_len)
    _check(status, what=f"temp path for {target!r}")
    return bytes(ffi.unpack(out, out_len[0]))


def fs_magic(path: str) -> Optional[int]:
    """The type number (statfs ``f_type``) of the filesystem holding ``path``, or None
    where the platform has none (anything but Linux). FileReadError (``errno`` set) if it
    cannot be asked."""
    magic = ffi.new("uint64_t *")
    err_no = ffi.new("int *")
    status = lib.wmc_fs_magic(os.fsencode(path), magic, err_no)
    what = f"ask which filesystem holds {path}"
    if not _check(status, optional=True, what=what, path=path, err_no=err_no[0], reading=True):
        return None
    return int(magic[0])


def mount_id(fd: int) -> Optional[tuple[int, bool]]:
    """The id of the mount holding the open file ``fd`` and whether it is unique until
    reboot (Linux 6.8 and later) rather than reusable once unmounted; None where the kernel
    gives neither. FileReadError (``errno`` set) if the call fails."""
    value = ffi.new("uint64_t *")
    unique = ffi.new("int *")
    err_no = ffi.new("int *")
    status = lib.wmc_mount_id(fd, value, unique, err_no)
    what = f"ask which mount holds descriptor {fd}"
    if not _check(status, optional=True, what=what, err_no=err_no[0], reading=True):
        return None
    return int(value[0]), bool(unique[0])
