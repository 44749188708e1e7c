# The cffi extension built from csrc/wasmcache.h (see cmake/ffi_build.py).
from typing import Any

ffi: Any
lib: Any
