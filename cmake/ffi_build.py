"""Generate the C source of the cffi extension ``wasmcache._native``.

The cdef is the part of ``wasmcache.h`` between the CDEF markers, so the header stays the
one source of truth for the C API.

Usage: python ffi_build.py HEADER OUTPUT_C
"""

import sys
from pathlib import Path

import cffi

BEGIN = "/* CDEF BEGIN */"
END = "/* CDEF END */"


def cdef_from_header(text: str) -> str:
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < start:
        raise SystemExit(f"header lacks the {BEGIN} ... {END} markers")
    return text[start + len(BEGIN) : stop]


def main(header: str, output: str) -> None:
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(Path(header).read_text()))
    ffi.set_source("wasmcache._native", '#include "wasmcache.h"')
    ffi.emit_c_code(output)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
