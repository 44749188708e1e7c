"""Imports of the optional dependencies, with the install hint when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

#: What each optional module is for (all come with the ``s3`` extra).
_PURPOSE = {
    "obstore": "ObjectStoreCache",
    "zstandard": "compressed transfers",
    "cryptography": "signed entries",
}


def require(name: str) -> ModuleType:
    """The module ``name``; ImportError saying how to install it if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            f"{_PURPOSE.get(name, name)} needs {name}: pip install 'wasmcache[s3]'"
        ) from exc
