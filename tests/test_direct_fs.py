"""Direct mode on real filesystems: where stamps lie (squashfs images swapped on one loop
device) the file is read, where they are honest (ext4, tmpfs) a redeploy changes them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import wasmcache as wc
from conftest import call_add
from support import forge_xxh64_collision
from wasmcache import _core, direct, names

#: squashfs images are built with every time set to this (a reproducible build).
BUILD_TIME = 1_000_000_000


@pytest.fixture(autouse=True)
def fresh_memory() -> Iterator[None]:
    direct._memory.clear()
    yield
    direct._memory.clear()


@pytest.fixture(scope="module")
def versions() -> tuple[bytes, bytes]:
    """Two modules of one size: add(2, 3) is 5 in v1 and 1337 in v2."""
    return forge_xxh64_collision()


class Reads:
    """Counts reads of Wasm sources."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = direct.read_source

        def counting(path: str, fd=None):  # type: ignore[no-untyped-def]
            self.count += 1
            return real(path, fd)

        monkeypatch.setattr(direct, "read_source", counting)


CHILD = textwrap.dedent(
    """
    import sys

    import wasmtime

    import wasmcache as wc

    engine = wasmtime.Engine()
    module = wc.FileSystemCache(sys.argv[1]).load_or_compile(engine, sys.argv[2])
    store = wasmtime.Store(engine)
    print(wasmtime.Instance(store, module, []).exports(store)["add"](store, 2, 3))
    """
)


def in_new_process(cache_dir: Path, source: Path) -> int:
    """add(2, 3) of ``source`` as a new process with its own FileSystemCache finds it."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache_dir), str(source)], capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr
    return int(child.stdout)


def stamp(path: Path) -> direct.Stamp:
    return direct.stamp_of(os.stat(path))


# -- squashfs images swapped on one loop device -----------------------------------------


def _squashfs_missing() -> str:
    if sys.platform != "linux":
        return "squashfs and loop devices are Linux's"
    if os.geteuid() != 0:
        return "mounting a loop device needs root"
    if shutil.which("mksquashfs") is None:
        return "mksquashfs is missing (Debian: apt-get install squashfs-tools)"
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        return "no loop devices here"
    return ""


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class LoopMount:
    """Images mounted in turn at one mount point through one loop device."""

    def __init__(self, point: Path) -> None:
        self.point = point
        self.device = ""
        self.mounted = False

    def mount(self, image: Path) -> None:
        if not self.device:
            self.device = _run("losetup", "--find", "--show", "--read-only", str(image))
        else:
            for attempt in range(100):  # detaching completes asynchronously on some kernels
                try:
                    _run("losetup", "--read-only", self.device, str(image))
                    break
                except RuntimeError:
                    if attempt == 99:
                        raise
                    time.sleep(0.05)
        _run("mount", "-t", "squashfs", "-o", "ro", self.device, str(self.point))
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            _run("umount", str(self.point))
            self.mounted = False
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)

    def swap(self, image: Path) -> None:
        """Put ``image`` where the current one was, on the same loop device."""
        device = self.device
        self.unmount()
        self.device = device
        self.mount(image)


@pytest.fixture
def squashfs(
    tmp_path: Path, versions: tuple[bytes, bytes]
) -> Iterator[tuple[LoopMount, Path, Path]]:
    """A mount point and two reproducible squashfs images holding v1 and v2 of app.wasm."""
    missing = _squashfs_missing()
    if missing:
        pytest.skip(missing)
    images = []
    for name, wasm in zip(("v1", "v2"), versions):
        tree = tmp_path / f"{name}-tree"
        tree.mkdir()
        (tree / "app.wasm").write_bytes(wasm)
        image = tmp_path / f"{name}.squashfs"
        _run(
            "mksquashfs",
            str(tree),
            str(image),
            "-all-time",
            str(BUILD_TIME),
            "-mkfs-time",
            str(BUILD_TIME),
            "-all-root",
            "-noappend",
            "-quiet",
        )
        images.append(image)
    point = tmp_path / "mnt"
    point.mkdir()
    loop = LoopMount(point)
    try:
        try:
            loop.mount(images[0])
        except RuntimeError as exc:
            pytest.skip(f"cannot mount a squashfs image here: {exc}")
        yield loop, images[0], images[1]
    finally:
        loop.unmount()


def test_swapped_squashfs_images_serve_the_new_code(squashfs, tmp_path, engine):
    """v1 and v2 have the same stamp (device, inode, size, mtime, ctime); direct mode
    does not trust squashfs stamps, so v2's code runs after the swap, in this process and
    in a new one."""
    loop, _, v2 = squashfs
    app = loop.point / "app.wasm"
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert in_new_process(cache.cache_dir, app) == 5
    v1_stamp, v1_bytes = stamp(app), app.read_bytes()
    assert v1_stamp[3] == v1_stamp[4] == BUILD_TIME * 10**9  # settled long ago

    loop.swap(v2)
    assert stamp(app) == v1_stamp  # the attack: nothing in the stamp tells them apart
    assert app.read_bytes() != v1_bytes
    assert call_add(engine, cache.load_or_compile(engine, app)) == 1337
    assert in_new_process(cache.cache_dir, app) == 1337
    assert not (cache.cache_dir / names.INDEX_FOLDER).exists()


def test_direct_true_trusts_squashfs_stamps(squashfs, tmp_path, engine, monkeypatch):
    """Forcing direct mode on trusts the stamp: a hit reads nothing, and another image
    with the same stamp is not noticed (the risk ``direct=True`` takes)."""
    loop, _, v2 = squashfs
    app = loop.point / "app.wasm"
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c", direct=True)
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert reads.count == 1
    assert len(list((cache.cache_dir / names.INDEX_FOLDER).iterdir())) == 1
    loop.swap(v2)
    assert call_add(engine, cache.load_or_compile(engine, app)) == 5  # stale, as documented
    assert reads.count == 1
    auto = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, auto.load_or_compile(engine, app)) == 1337
    assert reads.count == 2


def test_direct_false_reads_squashfs_every_time(squashfs, tmp_path, engine, monkeypatch):
    loop, _, _ = squashfs
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c", direct=False)
    for expected in (1, 2):
        assert call_add(engine, cache.load_or_compile(engine, loop.point / "app.wasm")) == 5
        assert reads.count == expected


# -- a redeploy with cp -p on filesystems whose stamps are trusted ------------------------

FOLDERS = {"ext4": (0xEF53, None), "tmpfs": (0x01021994, "/dev/shm")}


@pytest.fixture(params=sorted(FOLDERS))
def trusted_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A folder on ext4 (the test's temp folder, if it is there) or tmpfs (/dev/shm)."""
    magic, parent = FOLDERS[request.param]
    folder = Path(tempfile.mkdtemp(dir=parent)) if parent and os.path.isdir(parent) else tmp_path
    try:
        if _core.fs_magic(str(folder)) != magic:
            pytest.skip(f"{folder} is not on {request.param}")
        yield folder
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def test_a_cp_p_redeploy_changes_the_stamp(trusted_folder, tmp_path, engine, versions, monkeypatch):
    """``cp -p`` rewrites the deployed file in place (same inode) and restores size and
    mtime (two builds at one SOURCE_DATE_EPOCH); the kernel still sets its ctime, so the
    stamp changes and the new code runs."""
    builds = []
    for name, wasm in zip(("build1", "build2"), versions):
        (trusted_folder / name).mkdir()
        built = trusted_folder / name / "app.wasm"
        built.write_bytes(wasm)
        os.utime(built, (BUILD_TIME, BUILD_TIME))
        builds.append(built)
    (trusted_folder / "deploy").mkdir()
    app = trusted_folder / "deploy" / "app.wasm"
    # The stamps count as settled without waiting: the clock runs ahead of the files.
    monkeypatch.setattr(direct, "_clock", lambda: time.time_ns() + 60 * 10**9)
    reads = Reads(monkeypatch)
    _run("cp", "-p", str(builds[0]), str(app))
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert reads.count == 1  # trusted: the second call used the stamp
    before = stamp(app)

    _run("cp", "-p", str(builds[1]), str(app))
    after = stamp(app)
    assert after[:4] == before[:4]  # device, inode, size, mtime: all kept
    assert after[4] != before[4]  # ctime: set by the kernel
    assert call_add(engine, cache.load_or_compile(engine, app)) == 1337
    direct._memory.clear()
    assert call_add(engine, wc.FileSystemCache(tmp_path / "c").load_or_compile(engine, app)) == 1337
