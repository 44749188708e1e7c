"""WASI snapshot 0 (``wasi_unstable``) for core modules, on top of wasmtime-py's preview 1.

wasmtime-py links ``wasi_snapshot_preview1`` only. Snapshot 0 has the same functions with the
same signatures; four differ in what their pointers hold:

- ``fd_seek``: the ``whence`` values are cur=0, end=1, set=2 (preview 1: set=0, cur=1, end=2);
- ``fd_filestat_get``, ``path_filestat_get``: ``filestat.nlink`` is a u32 at offset 20 and the
  struct is 56 bytes (preview 1: a u64 at 24, 64 bytes);
- ``poll_oneoff``: a clock subscription carries an ``identifier`` u64 before the clock id, so
  a subscription is 56 bytes (preview 1: 48). Events are laid out alike.

Preview 1's functions write to the memory their caller exports as ``memory``; so the guest's
``wasi_unstable`` imports are host functions that forward to a small adapter instance whose
``memory`` export is the guest's own memory and whose functions call preview 1. The four
above are converted on the way, in place (the bytes they borrow are restored).
"""

from __future__ import annotations

import struct
from typing import Any, Optional

import wasmtime

NAME = "wasi_unstable"
_P1 = "wasi_snapshot_preview1"
_ERRNO_INVAL = 28
_ERRNO_FAULT = 21
# Signatures (params, results) of the functions both snapshots have.
_I, _L = "i32", "i64"
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "args_get": ((_I, _I), (_I,)),
    "args_sizes_get": ((_I, _I), (_I,)),
    "environ_get": ((_I, _I), (_I,)),
    "environ_sizes_get": ((_I, _I), (_I,)),
    "clock_res_get": ((_I, _I), (_I,)),
    "clock_time_get": ((_I, _L, _I), (_I,)),
    "fd_advise": ((_I, _L, _L, _I), (_I,)),
    "fd_allocate": ((_I, _L, _L), (_I,)),
    "fd_close": ((_I,), (_I,)),
    "fd_datasync": ((_I,), (_I,)),
    "fd_fdstat_get": ((_I, _I), (_I,)),
    "fd_fdstat_set_flags": ((_I, _I), (_I,)),
    "fd_fdstat_set_rights": ((_I, _L, _L), (_I,)),
    "fd_filestat_get": ((_I, _I), (_I,)),
    "fd_filestat_set_size": ((_I, _L), (_I,)),
    "fd_filestat_set_times": ((_I, _L, _L, _I), (_I,)),
    "fd_pread": ((_I, _I, _I, _L, _I), (_I,)),
    "fd_prestat_get": ((_I, _I), (_I,)),
    "fd_prestat_dir_name": ((_I, _I, _I), (_I,)),
    "fd_pwrite": ((_I, _I, _I, _L, _I), (_I,)),
    "fd_read": ((_I, _I, _I, _I), (_I,)),
    "fd_readdir": ((_I, _I, _I, _L, _I), (_I,)),
    "fd_renumber": ((_I, _I), (_I,)),
    "fd_seek": ((_I, _L, _I, _I), (_I,)),
    "fd_sync": ((_I,), (_I,)),
    "fd_tell": ((_I, _I), (_I,)),
    "fd_write": ((_I, _I, _I, _I), (_I,)),
    "path_create_directory": ((_I, _I, _I), (_I,)),
    "path_filestat_get": ((_I, _I, _I, _I, _I), (_I,)),
    "path_filestat_set_times": ((_I, _I, _I, _I, _L, _L, _I), (_I,)),
    "path_link": ((_I, _I, _I, _I, _I, _I, _I), (_I,)),
    "path_open": ((_I, _I, _I, _I, _I, _L, _L, _I, _I), (_I,)),
    "path_readlink": ((_I, _I, _I, _I, _I, _I), (_I,)),
    "path_remove_directory": ((_I, _I, _I), (_I,)),
    "path_rename": ((_I, _I, _I, _I, _I, _I), (_I,)),
    "path_symlink": ((_I, _I, _I, _I, _I), (_I,)),
    "path_unlink_file": ((_I, _I, _I), (_I,)),
    "poll_oneoff": ((_I, _I, _I, _I), (_I,)),
    "proc_exit": ((_I,), ()),
    "proc_raise": ((_I,), (_I,)),
    "sched_yield": ((), (_I,)),
    "random_get": ((_I, _I), (_I,)),
    "sock_recv": ((_I, _I, _I, _I, _I, _I), (_I,)),
    "sock_send": ((_I, _I, _I, _I, _I), (_I,)),
    "sock_shutdown": ((_I, _I), (_I,)),
}
_WHENCE = {0: 1, 1: 2, 2: 0}  # snapshot 0 -> preview 1
_SUB0, _SUB1 = 56, 48  # subscription sizes
_STAT0, _STAT1 = 56, 64  # filestat sizes


def adapter_wat(names: list[str]) -> str:
    """The adapter module: ``memory`` (imported, re-exported) and one forwarder per name."""
    parts = ['(module (import "guest" "memory" (memory $m 0))']
    for name in names:
        params, results = SIGNATURES[name]
        types = f"(param {' '.join(params)})" if params else ""
        types += f" (result {' '.join(results)})" if results else ""
        parts.append(f'(import "{_P1}" "{name}" (func ${name} {types}))')
    parts.append('(export "memory" (memory $m))')
    for name in names:
        params, results = SIGNATURES[name]
        gets = " ".join(f"(local.get {i})" for i in range(len(params)))
        types = f"(param {' '.join(params)})" if params else ""
        types += f" (result {' '.join(results)})" if results else ""
        parts.append(f'(func (export "{name}") {types} (call ${name} {gets}))')
    return "\n".join(parts) + ")"


class Adapter:
    """The guest's ``wasi_unstable`` imports, defined in ``linker`` before it instantiates
    the guest; :meth:`attach` to the guest's instance before it runs."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        store: wasmtime.Store,
        linker: wasmtime.Linker,
        module: wasmtime.Module,
    ) -> None:
        self._engine, self._store, self._linker = engine, store, linker
        self._exports: Optional[Any] = None
        self._memory: Optional[wasmtime.Memory] = None
        self._names: list[str] = []
        for item in module.imports:
            if item.module != NAME or item.name not in SIGNATURES:
                continue  # anything else is an unknown import, reported as wasmtime does
            if not isinstance(item.type, wasmtime.FuncType):
                continue
            self._names.append(item.name)
            linker.define_func(NAME, item.name, item.type, self._forwarder(item.name))

    def attach(self, instance: wasmtime.Instance) -> None:
        """Instantiate the adapter over ``instance``'s exported memory."""
        store = self._store
        memory = instance.exports(store).get("memory")
        if not isinstance(memory, wasmtime.Memory):
            memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(0, None)))
        self._memory = memory
        adapter = wasmtime.Module(self._engine, adapter_wat(self._names))
        linker = wasmtime.Linker(self._engine)
        linker.define_wasi()
        linker.define(store, "guest", "memory", memory)
        self._exports = linker.instantiate(store, adapter).exports(store)

    def _call(self, name: str, *args: Any) -> Any:
        if self._exports is None:
            raise wasmtime.Trap(f"{NAME}::{name} called before the module was instantiated")
        return self._exports[name](self._store, *args)

    def _forwarder(self, name: str) -> Any:
        special = {
            "fd_seek": self._fd_seek,
            "fd_filestat_get": self._fd_filestat_get,
            "path_filestat_get": self._path_filestat_get,
            "poll_oneoff": self._poll_oneoff,
        }.get(name)
        if special is not None:
            return special
        return lambda *args: self._call(name, *args)

    # -- the conversions ---------------------------------------------------------------

    def _read(self, at: int, size: int) -> Optional[bytes]:
        assert self._memory is not None
        if at < 0 or at + size > self._memory.data_len(self._store):
            return None
        return bytes(self._memory.read(self._store, at, at + size))

    def _write(self, at: int, data: bytes) -> None:
        assert self._memory is not None
        self._memory.write(self._store, data, at)

    def _fd_seek(self, fd: int, offset: int, whence: int, out: int) -> int:
        if whence not in _WHENCE:
            return _ERRNO_INVAL
        result: int = self._call("fd_seek", fd, offset, _WHENCE[whence], out)
        return result

    def _with_filestat(self, buf: int, call: Any) -> int:
        """Run ``call`` (a preview 1 filestat call into ``buf``) and rewrite the result in
        snapshot 0's layout; the 8 bytes after the guest's 56 are restored."""
        saved = self._read(buf, _STAT1)
        if saved is None:
            return _ERRNO_FAULT
        errno: int = call()
        if errno == 0:
            stat = self._read(buf, _STAT1)
            assert stat is not None
            dev, ino, filetype, nlink, size, atim, mtim, ctim = struct.unpack_from(
                "<QQB7xQQQQQ", stat
            )
            converted = struct.pack(
                "<QQB3xIQQQQ", dev, ino, filetype, min(nlink, 0xFFFFFFFF), size, atim, mtim, ctim
            )
            self._write(buf, converted + saved[_STAT0:])
        else:
            self._write(buf, saved)
        return errno

    def _fd_filestat_get(self, fd: int, buf: int) -> int:
        return self._with_filestat(buf, lambda: self._call("fd_filestat_get", fd, buf))

    def _path_filestat_get(self, fd: int, flags: int, path: int, length: int, buf: int) -> int:
        return self._with_filestat(
            buf, lambda: self._call("path_filestat_get", fd, flags, path, length, buf)
        )

    def _poll_oneoff(self, subs: int, events: int, count: int, out: int) -> int:
        if count < 0:
            return _ERRNO_INVAL
        original = self._read(subs, _SUB0 * count)
        if original is None:
            return _ERRNO_FAULT
        converted = bytearray()
        for i in range(count):
            sub = original[i * _SUB0 : (i + 1) * _SUB0]
            userdata, tag = struct.unpack_from("<QB", sub)
            # clock: drop the identifier; fd_read, fd_write: the fd at the same place
            body = sub[24:56] if tag == 0 else sub[16:48]
            converted += struct.pack("<QB7x", userdata, tag) + body
        self._write(subs, bytes(converted))
        try:
            errno: int = self._call("poll_oneoff", subs, events, count, out)
        finally:
            self._write(subs, original)
        return errno
