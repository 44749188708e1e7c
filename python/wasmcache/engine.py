"""engine_id: a deterministic, filesystem-safe id of what a compiled artifact depends on."""

from __future__ import annotations

import re
import threading
import weakref

import wasmtime
import xxhash

from wasmcache.elf import elf_section
from wasmcache.errors import EngineIdError
from wasmcache.kinds import wasmtime_version

_EMPTY_MODULE = b"\0asm\x01\0\0\0"
_ENGINE_SECTION = ".wasmtime.engine"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

_ids: weakref.WeakKeyDictionary[wasmtime.Engine, str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _compute(engine: wasmtime.Engine) -> str:
    artifact = wasmtime.Module(engine, _EMPTY_MODULE).serialize()
    section = elf_section(artifact, _ENGINE_SECTION)
    if section is None:
        raise EngineIdError(
            "wasmtime's artifact has no .wasmtime.engine section: this wasmtime release "
            "is not supported"
        )
    # The section holds the wasmtime version, target, flags, tunables and features.
    version = _UNSAFE.sub("_", wasmtime_version())
    return f"wasmtime-{version}-{xxhash.xxh3_64_hexdigest(section)}"


def engine_id(engine: wasmtime.Engine) -> str:
    """Id of everything an artifact compiled by ``engine`` depends on (wasmtime version,
    target, settings, features). Equal engines give equal ids in every process; computed
    once per Engine object."""
    try:
        return _ids[engine]
    except KeyError:
        pass
    except TypeError:
        raise TypeError(f"expected a wasmtime.Engine, got {type(engine).__name__}") from None
    if not isinstance(engine, wasmtime.Engine):
        raise TypeError(f"expected a wasmtime.Engine, got {type(engine).__name__}")
    ident = _compute(engine)
    with _lock:
        return _ids.setdefault(engine, ident)
