"""The two kinds of compiled WebAssembly: core modules and components.

A Wasm binary says which it is in its first eight bytes (the version and layer fields
after ``\\0asm``); a compiled object is a ``wasmtime.Module`` or a
``wasmtime.component.Component`` (wasmtime-py 40 and newer).
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import wasmtime

from wasmcache.errors import CacheError, KindMismatch

if TYPE_CHECKING:
    from wasmtime.component import Component

Kind = Literal["module", "component"]
KINDS: tuple[Kind, ...] = ("module", "component")
#: A compiled module or component.
Compiled = Union[wasmtime.Module, "Component"]

_WASM_MAGIC = b"\0asm"
_COMPONENT_VERSION = b"\x0d\x00\x01\x00"  # version 0xd, layer 1


@functools.cache
def _component_class() -> Optional[type[Component]]:
    """wasmtime.component.Component, imported on first use (it costs 15 ms), or None."""
    try:
        from wasmtime.component import Component
    except ImportError:  # wasmtime-py before 40
        return None
    return Component


def components_supported() -> bool:
    return _component_class() is not None


def component_class() -> type[Component]:
    """wasmtime.component.Component; a CacheError naming the need if it is missing."""
    component = _component_class()
    if component is None:
        raise CacheError(f"components need wasmtime 40 or newer (this is {wasmtime_version()})")
    return component


@functools.cache
def wasmtime_version() -> str:
    """The installed wasmtime-py's version, read once: from the ``METADATA`` of the one
    ``wasmtime-<version>.dist-info`` beside the imported ``wasmtime`` package (what
    importlib.metadata reads, without the 10-25 ms its import costs), else through
    importlib.metadata."""
    found = _version_beside(os.path.dirname(os.path.dirname(os.path.abspath(wasmtime.__file__))))
    if found is not None:
        return found
    import importlib.metadata

    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - odd installs
        return "unknown"


_DIST_INFO = re.compile(r"wasmtime-([^-]+)\.dist-info")


def _version_beside(folder: str) -> Optional[str]:
    """The version of the single wasmtime dist-info in ``folder`` whose METADATA names
    the same version, or None (none, several, or unreadable)."""
    try:
        with os.scandir(folder) as entries:
            found = [m.group(1) for e in entries if (m := _DIST_INFO.fullmatch(e.name))]
        if len(found) != 1:
            return None
        metadata = os.path.join(folder, f"wasmtime-{found[0]}.dist-info", "METADATA")
        with open(metadata, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return None
    for line in head.splitlines():
        if line.startswith("Version:"):
            version = line[len("Version:") :].strip()
            return version if version == found[0] else None
        if not line:
            break
    return None


def of_wasm(data: Union[bytes, bytearray, memoryview]) -> Kind:
    """The kind a Wasm binary declares ("module" for anything that is not a component:
    wasmtime then says what is wrong with it)."""
    head = bytes(data[:8])
    if head[:4] == _WASM_MAGIC and head[4:8] == _COMPONENT_VERSION:
        return "component"
    return "module"


def of(compiled: Any) -> Kind:
    """The kind of a compiled object (TypeError for anything else)."""
    if isinstance(compiled, wasmtime.Module):
        return "module"
    component = _component_class()
    if component is not None and isinstance(compiled, component):
        return "component"
    raise TypeError(
        f"expected a wasmtime.Module or wasmtime.component.Component, got {type(compiled).__name__}"
    )


def check(wanted: Union[Kind, None], found: Kind, what: str) -> None:
    """KindMismatch when ``wanted`` is given and is not ``found``."""
    if wanted is not None and wanted != found:
        raise KindMismatch(f"{what} holds a {found}, not a {wanted}")


def compile(engine: wasmtime.Engine, wasm: bytes, kind: Optional[Kind] = None) -> Compiled:
    """Compile ``wasm`` as ``kind`` (default: the kind its header declares)."""
    if (kind or of_wasm(wasm)) == "component":
        return component_class()(engine, wasm)
    return wasmtime.Module(engine, wasm)


def deserialize_file(engine: wasmtime.Engine, path: str, kind: Kind) -> Compiled:
    if kind == "component":
        return component_class().deserialize_file(engine, path)
    return wasmtime.Module.deserialize_file(engine, path)


def deserialize(engine: wasmtime.Engine, artifact: bytes, kind: Kind) -> Compiled:
    if kind == "component":
        return component_class().deserialize(engine, artifact)
    return wasmtime.Module.deserialize(engine, artifact)
