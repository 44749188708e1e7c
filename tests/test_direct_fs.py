"""Direct mode on real filesystems: where stamps lie (squashfs images swapped on one loop
device) the file is read; where a writable filesystem comes from an image (two ext4 images
with equal stamps swapped on one loop device, mounted read-write) the mount's unique id
tells them apart; where they are honest (ext4, tmpfs) a redeploy changes them."""

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
from support import Reads, forge_xxh64_collision
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


def unique_mount_ids(path: Path) -> bool:
    """Whether the kernel gives the mount holding ``path`` an id unique until reboot."""
    fd = os.open(path, os.O_RDONLY)
    try:
        found = _core.mount_id(fd)
    finally:
        os.close(fd)
    return found is not None and found[1]


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
    """Images mounted in turn at one mount point through one loop device (read-only
    squashfs, or another type mounted read-write)."""

    def __init__(self, point: Path, fstype: str = "squashfs") -> None:
        self.point = point
        self.fstype = fstype
        self.device = ""
        self.mounted = False

    def mount(self, image: Path) -> None:
        ro = ["--read-only"] if self.fstype == "squashfs" else []
        if not self.device:
            self.device = _run("losetup", "--find", "--show", *ro, str(image))
        else:
            for attempt in range(100):  # detaching completes asynchronously on some kernels
                try:
                    _run("losetup", *ro, self.device, str(image))
                    break
                except RuntimeError:
                    if attempt == 99:
                        raise
                    time.sleep(0.05)
        options = "ro" if self.fstype == "squashfs" else "rw"
        _run("mount", "-t", self.fstype, "-o", options, self.device, str(self.point))
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


def test_direct_true_trusts_squashfs_stamps_within_a_mount(squashfs, tmp_path, engine, monkeypatch):
    """Forcing direct mode on trusts the stamp: a hit reads nothing; another image with
    the same stamp mounted in its place is a new mount, so it is read."""
    loop, _, v2 = squashfs
    app = loop.point / "app.wasm"
    if not unique_mount_ids(app):
        pytest.skip("the kernel gives no unique mount ids (Linux 6.8 and later do)")
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c", direct=True)
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert reads.count == 1
    loop.swap(v2)
    assert call_add(engine, cache.load_or_compile(engine, app)) == 1337
    assert reads.count == 2


def test_direct_true_without_unique_mount_ids_trusts_squashfs_stamps(
    squashfs, tmp_path, engine, monkeypatch
):
    """Where the kernel cannot tell mounts apart, forcing direct mode on trusts the stamp
    alone: another image with the same stamp is not noticed (the risk ``direct=True``
    takes)."""
    monkeypatch.setattr(direct._core, "mount_id", lambda fd: (42, False))
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


# -- ext4 images with equal stamps swapped on one loop device, mounted read-write -------

#: The times every inode of the ext4 images gets (what an image author chooses).
EXT4_TIME = "20200101000000"
EXT4_UUID = "11111111-2222-3333-4444-555555555555"


def _ext4_missing() -> str:
    if sys.platform != "linux":
        return "ext4 and loop devices are Linux's"
    if os.geteuid() != 0:
        return "mounting a loop device needs root"
    for tool in ("mke2fs", "debugfs"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian: apt-get install e2fsprogs)"
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        return "no loop devices here"
    return ""


def _ext4_image(tree: Path, image: Path) -> None:
    """A reproducible ext4 image of ``tree``: fixed creation time, UUID and hash seed,
    and app.wasm's inode times set to :data:`EXT4_TIME` (mtime, ctime and atime)."""
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1600000000")
    done = subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-I", "256", "-U", EXT4_UUID, "-E",
         f"hash_seed={EXT4_UUID}", "-d", str(tree), str(image), "8M"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"mke2fs failed: {done.stderr.strip()}")
    commands = [f"sif app.wasm {field} {EXT4_TIME}" for field in ("mtime", "ctime", "atime")]
    commands += [f"sif app.wasm {field} 0" for field in ("mtime_extra", "ctime_extra")]
    for command in commands:
        _run("debugfs", "-w", "-R", command, str(image))


@pytest.fixture
def ext4(tmp_path: Path, versions: tuple[bytes, bytes]) -> Iterator[tuple[LoopMount, Path]]:
    """Two reproducible ext4 images holding v1 and v2 of app.wasm with equal stamps, v1
    mounted read-write through a loop device; yields the mount and v2's image."""
    missing = _ext4_missing()
    if missing:
        pytest.skip(missing)
    images = []
    for name, wasm in zip(("v1", "v2"), versions):
        tree = tmp_path / f"{name}-tree"
        tree.mkdir()
        (tree / "app.wasm").write_bytes(wasm)
        image = tmp_path / f"{name}.ext4"
        try:
            _ext4_image(tree, image)
        except RuntimeError as exc:
            pytest.skip(f"cannot build an ext4 image here: {exc}")
        images.append(image)
    point = tmp_path / "mnt"
    point.mkdir()
    loop = LoopMount(point, "ext4")
    try:
        try:
            loop.mount(images[0])
        except RuntimeError as exc:
            pytest.skip(f"cannot mount an ext4 image here: {exc}")
        yield loop, images[1]
    finally:
        loop.unmount()


def _swap_with_equal_stamps(loop: LoopMount, image: Path) -> None:
    app = loop.point / "app.wasm"
    before, content = stamp(app), app.read_bytes()
    assert _core.fs_magic(str(app)) == 0xEF53 and not os.statvfs(app).f_flag & os.ST_RDONLY
    loop.swap(image)
    assert stamp(app) == before  # the attack: nothing in the stamp tells them apart
    assert app.read_bytes() != content


def test_swapped_ext4_images_serve_the_new_code(ext4, tmp_path, engine):
    """ext4 mounted read-write is trusted, but two images can repeat a stamp on one loop
    device: the mount's unique id is part of the stamp, so v2's code runs after the swap,
    in this process and in a new one."""
    loop, v2 = ext4
    app = loop.point / "app.wasm"
    if not unique_mount_ids(app):
        pytest.skip("the kernel gives no unique mount ids (Linux 6.8 and later do)")
    cache = wc.FileSystemCache(tmp_path / "c")
    assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert in_new_process(cache.cache_dir, app) == 5
    assert (cache.cache_dir / names.INDEX_FOLDER / names.INDEX_LOG).exists()  # trusted
    _swap_with_equal_stamps(loop, v2)
    assert call_add(engine, cache.load_or_compile(engine, app)) == 1337
    assert in_new_process(cache.cache_dir, app) == 1337


def test_a_trusted_ext4_stamp_hits_within_its_mount(ext4, tmp_path, engine, monkeypatch):
    """Within one mount the stamp is still trusted: the second load reads nothing."""
    loop, _ = ext4
    app = loop.point / "app.wasm"
    if not unique_mount_ids(app):
        pytest.skip("the kernel gives no unique mount ids (Linux 6.8 and later do)")
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(3):
        assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert reads.count == 1


def test_without_unique_mount_ids_a_loop_device_is_read(ext4, tmp_path, engine, monkeypatch):
    """Where the kernel gives no unique mount id (before Linux 6.8), or only one it may
    reuse, nothing tells two mounts of one loop device apart: its files are read and
    hashed every time, and v2's code runs after the swap."""
    loop, v2 = ext4
    app = loop.point / "app.wasm"
    for answer in (None, (42, False)):
        monkeypatch.setattr(direct._core, "mount_id", lambda fd, answer=answer: answer)
        fd = os.open(app, os.O_RDONLY)
        try:
            assert not direct.stamps_trusted(fd, str(app))
        finally:
            os.close(fd)
    reads = Reads(monkeypatch)
    cache = wc.FileSystemCache(tmp_path / "c")
    for _ in range(2):
        assert call_add(engine, cache.load_or_compile(engine, app)) == 5
    assert reads.count == 2
    _swap_with_equal_stamps(loop, v2)
    assert call_add(engine, cache.load_or_compile(engine, app)) == 1337
    assert not (cache.cache_dir / names.INDEX_FOLDER).exists()


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
