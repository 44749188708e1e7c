"""The bytes of a compiled module or component to store: a module's straight from
wasmtime's memory when possible.

wasmtime's C API exports ``wasmtime_module_image_range``: the module's in-memory image,
byte for byte what ``Module.serialize()`` returns, but with no copy. wasmtime-py reaches it
only through its private ``_bindings`` module, so ``Module.serialize()`` stays the fallback.
Components have no such export: theirs is always ``serialize()``'s copy.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable, Optional

import wasmtime

from wasmcache.elf import elf_length
from wasmcache.errors import SerializeError
from wasmcache.kinds import Compiled, of
from wasmcache.logs import log


def _find_image_range() -> Optional[Callable[..., Any]]:
    try:
        from wasmtime import _bindings
    except ImportError:  # pragma: no cover - depends on the wasmtime release
        return None
    return getattr(_bindings, "wasmtime_module_image_range", None)


_image_range = _find_image_range()


def zero_copy_available() -> bool:
    return _image_range is not None


def _image_view(module: wasmtime.Module) -> Optional[memoryview]:
    """A read-only view of the module's image, valid while ``module`` lives; None if the
    binding is missing or fails."""
    if _image_range is None:
        return None
    try:
        start, end = ctypes.c_void_p(), ctypes.c_void_p()
        _image_range(module.ptr(), ctypes.byref(start), ctypes.byref(end))
    except Exception as exc:  # an unexpected wasmtime-py: fall back to serialize()
        log.debug("wasmtime_module_image_range unusable (%s); using serialize()", exc)
        return None
    if not start.value or not end.value or end.value <= start.value:
        return None
    size = end.value - start.value
    return memoryview((ctypes.c_ubyte * size).from_address(start.value)).cast("B")


def artifact_bytes(compiled: Compiled, *, zero_copy: bool = True) -> memoryview:
    """The artifact (an ELF image) cut to its ELF length, as a read-only view.

    With ``zero_copy`` a module's view points into wasmtime's own memory (keep ``compiled``
    alive while using it); otherwise, or when that is not possible, it is
    ``serialize()``'s copy.
    """
    kind = of(compiled)
    view = _image_view(compiled) if zero_copy and isinstance(compiled, wasmtime.Module) else None
    if view is None or elf_length(view) is None:
        try:
            view = memoryview(compiled.serialize())
        except wasmtime.WasmtimeError as exc:
            raise SerializeError(f"wasmtime could not serialize the {kind}: {exc}") from exc
    length = elf_length(view)
    if length is None:
        raise SerializeError("wasmtime's artifact is not a complete ELF image")
    return view[:length].toreadonly()
