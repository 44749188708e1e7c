"""Legacy (LZW) entries: bounded in what is read, decoded and kept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import wasmcache as wc
from wasmcache import lzw


def _peak_rss_of(script: str) -> tuple[int, str]:
    """Run ``script`` in a child; return its peak RSS growth over its start (bytes) and
    stdout (the script prints the start RSS as "base N")."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    base = int(
        next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("base"))
    )
    peak = int(
        next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("peak"))
    )
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return 0, done.stdout  # AddressSanitizer's own memory makes RSS meaningless there
    return (peak - base) * 1024, done.stdout


_MEASURE = """
import time, wasmtime, wasmcache as wc


def peak_kib():
    \"\"\"The peak resident set (KiB): ru_maxrss, or Windows' peak working set.\"\"\"
    try:
        import resource
    except ImportError:
        import ctypes
        from ctypes import wintypes

        sizes = ("Peak", "Working", "QuotaPeakPaged", "QuotaPaged", "QuotaPeakNonPaged",
                 "QuotaNonPaged", "Pagefile", "PeakPagefile")  # PROCESS_MEMORY_COUNTERS

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("faults", wintypes.DWORD)] + [
                (name, ctypes.c_size_t) for name in sizes
            ]

        counters = Counters()
        counters.cb = ctypes.sizeof(Counters)
        kernel32 = ctypes.WinDLL("kernel32")
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        get = kernel32.K32GetProcessMemoryInfo
        get.argtypes = [wintypes.HANDLE, ctypes.POINTER(Counters), wintypes.DWORD]
        assert get(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb)
        return counters.Peak // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


engine = wasmtime.Engine()
cache = wc.FileSystemCache({cache!r})
key = wc.ModuleHash.parse({key!r})
wc.engine_id(engine)
print("base", peak_kib())
start = time.monotonic()
try:
    cache.load(key, engine)
except wc.DeserializeError as exc:
    print("error", type(exc).__name__, exc)
print("seconds", time.monotonic() - start)
print("peak", peak_kib())
print("kept", cache.path(key, engine).exists())
"""


def test_a_huge_sparse_file_is_rejected_without_reading_it(cache, key, engine):
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True, mode=0o700)
    with open(path, "wb") as f:
        f.truncate(4 << 30)
    grown, out = _peak_rss_of(_MEASURE.format(cache=str(cache.cache_dir), key=str(key)))
    assert "error DeserializeError" in out and "too large" in out
    assert "kept False" in out
    assert grown < 64 << 20, out
    with open(path, "wb") as f:
        f.truncate(900 << 20)  # under the cap: only its first bytes are read
    grown, out = _peak_rss_of(_MEASURE.format(cache=str(cache.cache_dir), key=str(key)))
    assert "error DeserializeError" in out and "kept False" in out
    assert grown < 64 << 20, out


def _elf_header(extent: int) -> bytes:
    """An ELF64 little-endian file header whose section table ends at ``extent``."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[0x28:0x30] = (extent - 64).to_bytes(8, "little")  # e_shoff
    header[0x3A:0x3C] = (64).to_bytes(2, "little")  # e_shentsize
    header[0x3C:0x3E] = (1).to_bytes(2, "little")  # e_shnum
    return bytes(header)


def _bomb(header: bytes, repeats: int) -> bytes:
    """An LZW stream of ``header`` followed by ~3.8 KB per 12-bit code, ``repeats`` times."""
    from support import CLEAR, END, pack

    codes = [CLEAR, *header, *range(258 + len(header) - 1, 4096), *([4095] * repeats), END]
    return pack(codes)


def test_an_lzw_bomb_is_stopped_by_its_elf_header(cache, key, engine):
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True, mode=0o700)
    # Its header claims 1.46 GiB: more than the cap, so decoding stops right after it.
    path.write_bytes(_bomb(_elf_header(1_570_000_000), 400_000))
    assert path.stat().st_size < 700_000
    grown, out = _peak_rss_of(_MEASURE.format(cache=str(cache.cache_dir), key=str(key)))
    assert "error DeserializeError" in out and "kept False" in out
    assert grown < 64 << 20, out
    # Garbage that is no ELF image stops at its first bytes.
    path.write_bytes(_bomb(b"\x00" * 64, 400_000))
    grown, out = _peak_rss_of(_MEASURE.format(cache=str(cache.cache_dir), key=str(key)))
    assert "does not hold one whole ELF image" in out and "kept False" in out
    assert grown < 64 << 20, out


def test_an_lzw_bomb_stops_at_the_configured_cap(tmp_path, key, engine):
    cache = wc.FileSystemCache(tmp_path / "c", legacy_max_bytes=8 << 20)
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(_bomb(_elf_header(20 << 20), 10_000))  # claims 20 MiB, decodes ~38 MB
    with pytest.raises(wc.DeserializeError, match="past the output cap"):
        cache.load(key, engine)
    assert not path.exists()


def test_a_legacy_artifact_wasmtime_rejects_is_removed_once(cache, key, engine):
    """Decodes to a whole ELF image that is no artifact: one decode, then a miss."""
    fake = _elf_header(1 << 20) + bytes((1 << 20) - 64)
    path = cache.path(key, engine)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(lzw.encode(fake))
    with pytest.raises(wc.DeserializeError, match="wasmtime rejected"):
        cache.load(key, engine)
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir()] == []  # no temp file left either
    with pytest.raises(wc.NotFound):
        cache.load(key, engine)
