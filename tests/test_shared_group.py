"""``shared_group=True`` with two real users and a group made for the test: members share
entries and compile locks in a setgid folder (``chgrp G dir && chmod 2770 dir``), and
nobody outside the group, nor anything writable by others, is trusted.

Each user's part runs in a forked child that has become that user (initgroups, setgid,
setuid, umask 077: sharing must not depend on the umask); the interpreter is not readable
by other users, so they cannot start their own.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import select
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import wasmtime

import wasmcache as wc
from conftest import ADD_WAT, call_add
from wasmcache import kinds, locks, names

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root to create users and a group and to act as them",
    ),
    pytest.mark.skipif(
        not (shutil.which("useradd") and shutil.which("groupadd")),
        reason="needs useradd and groupadd",
    ),
]


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="module")
def people() -> Iterator[SimpleNamespace]:
    """Group G with members A and B; C outside it. Removed at the end."""
    suffix = secrets.token_hex(3)
    group = f"wmcg{suffix}"
    users = {role: f"wmc{role}{suffix}" for role in ("a", "b", "c")}
    made: list[str] = []
    try:
        _run("groupadd", group)
        for role, name in users.items():
            extra = ["-G", group] if role in "ab" else []
            _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", *extra, name)
            made.append(name)
        yield SimpleNamespace(
            gid=grp.getgrnam(group).gr_gid, **{r: pwd.getpwnam(n) for r, n in users.items()}
        )
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    """One engine for the parent and the children: serial compilation, since a forked
    child has none of the parent's compile threads."""
    config = wasmtime.Config()
    config.parallel_compilation = False
    made = wasmtime.Engine(config)
    wc.engine_id(made)
    return made


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder every user can make folders in, as /tmp (pytest's own are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="wasmcache-group-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _become(user: pwd.struct_passwd) -> None:
    os.initgroups(user.pw_name, user.pw_gid)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.umask(0o077)


def _fork(user: pwd.struct_passwd, work: Callable[[], str]) -> tuple[int, int]:
    """Start ``work`` as ``user`` in a forked child; return its pid and the read end of
    the pipe its answer comes through."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read)
            _become(user)
            answer = "ok " + work()
        except BaseException as exc:
            answer = f"error {type(exc).__name__}: {exc}"
            code = 1
        os.write(write, answer.encode())
        os._exit(code)
    os.close(write)
    return pid, read


def _answer(pid: int, read: int) -> str:
    ready, _, _ = select.select([read], [], [], 120)
    if not ready:
        os.kill(pid, 9)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and ready, answer
    return answer[3:]


def _as(user: pwd.struct_passwd, work: Callable[[], str]) -> str:
    """What ``work`` returned when run as ``user`` (its error fails the test)."""
    return _answer(*_fork(user, work))


def _expect(error: type[BaseException], work: Callable[[], object]) -> Callable[[], str]:
    """A piece of work that must raise ``error``; it returns the message."""

    def run() -> str:
        try:
            work()
        except error as exc:
            return str(exc)
        raise AssertionError(f"no {error.__name__}")

    return run


def _no_compiling() -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("compiled although a member's entry was there")

    kinds.compile = refuse  # type: ignore[assignment]  # in a forked child only


def _shared_folder(people: SimpleNamespace, place: Path, owner: pwd.struct_passwd) -> Path:
    """The documented setup, done by ``owner``: mkdir, chgrp G, chmod 2770."""
    folder = place / "cache"

    def setup() -> str:
        folder.mkdir()
        os.chown(folder, -1, people.gid)
        folder.chmod(0o2770)
        return "made"

    assert _as(owner, setup) == "made"
    return folder


def test_members_share_entries_and_compile_locks(people, place, engine):
    folder = _shared_folder(people, place, people.a)
    add_wasm = wasmtime.wat2wasm(ADD_WAT)
    other_wasm = wasmtime.wat2wasm(ADD_WAT.replace("i32.add", "i32.sub"))
    key = wc.ModuleHash.sha256(add_wasm)

    def compile_as_a() -> str:
        cache = wc.FileSystemCache(folder, shared_group=True)
        return str(call_add(engine, cache.load_or_compile(engine, add_wasm)))

    assert _as(people.a, compile_as_a) == "5"
    path = wc.FileSystemCache(folder).path(key, engine)
    entry, engine_dir = path.stat(), path.parent.stat()
    assert (entry.st_uid, entry.st_gid) == (people.a.pw_uid, people.gid)
    assert stat.S_IMODE(entry.st_mode) == 0o640  # group-readable despite umask 077
    assert engine_dir.st_gid == people.gid and stat.S_IMODE(engine_dir.st_mode) == 0o2770
    lock = Path(names.lock_path(str(path))).stat()
    assert lock.st_gid == people.gid and stat.S_IMODE(lock.st_mode) == 0o660

    def load_as_b() -> str:
        _no_compiling()
        cache = wc.FileSystemCache(folder, shared_group=True)
        hit = call_add(engine, cache.load(key, engine))
        again = call_add(engine, cache.load_or_compile(engine, add_wasm))
        return f"{hit} {again}"

    assert _as(people.b, load_as_b) == "5 5"
    after = path.stat()
    assert (after.st_ino, after.st_uid) == (entry.st_ino, people.a.pw_uid)  # not replaced

    def compile_as_b() -> str:
        cache = wc.FileSystemCache(folder, shared_group=True)
        return str(call_add(engine, cache.load_or_compile(engine, other_wasm)))

    assert _as(people.b, compile_as_b) == "-1"

    def load_as_a() -> str:
        _no_compiling()
        cache = wc.FileSystemCache(folder, shared_group=True)
        module = cache.load(wc.ModuleHash.sha256(other_wasm), engine)
        return str(call_add(engine, module))

    assert _as(people.a, load_as_a) == "-1"
    assert wc.FileSystemCache(folder, shared_group=True).verify_entries() == []


def test_members_share_the_compile_lock(people, place, engine):
    folder = _shared_folder(people, place, people.a)
    key = wc.ModuleHash.sha256(b"locked")
    cache = wc.FileSystemCache(folder, shared_group=True)
    lock = names.lock_path(str(cache.path(key, engine)))
    held_read, held_write = os.pipe()
    go_read, go_write = os.pipe()

    def hold_as_a() -> str:
        with wc.FileSystemCache(folder, shared_group=True).compile_lock(key, engine):
            os.write(held_write, b"held")
            os.read(go_read, 1)  # until the parent says release
        return "released"

    def try_as_b() -> str:
        with locks.try_file_lock(lock, shared_group=True, group=people.gid) as got:
            return "got" if got else "busy"

    holder, answer = _fork(people.a, hold_as_a)
    try:
        assert select.select([held_read], [], [], 120)[0], "the holder never took the lock"
        assert os.read(held_read, 4) == b"held"
        assert _as(people.b, try_as_b) == "busy"
    finally:
        os.write(go_write, b"x")
    assert _answer(holder, answer) == "released"
    assert _as(people.b, try_as_b) == "got"  # opened A's lock file, took its flock
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o660


@pytest.fixture
def saved(people, place, engine) -> SimpleNamespace:
    """A shared folder made by A, holding an entry A saved."""
    folder = _shared_folder(people, place, people.a)
    add_wasm = wasmtime.wat2wasm(ADD_WAT)
    key = wc.ModuleHash.sha256(add_wasm)
    module = wasmtime.Module(engine, add_wasm)

    def save_as_a() -> str:
        wc.FileSystemCache(folder, shared_group=True).save(key, engine, module)
        return "saved"

    assert _as(people.a, save_as_a) == "saved"
    path = wc.FileSystemCache(folder).path(key, engine)
    return SimpleNamespace(folder=folder, key=key, path=path)


def _load_as(user: pwd.struct_passwd, saved: SimpleNamespace, engine, error=None) -> str:
    def load() -> object:
        return wc.FileSystemCache(saved.folder, shared_group=True).load(saved.key, engine)

    if error is None:
        return _as(user, lambda: str(call_add(engine, load())))  # type: ignore[arg-type]
    return _as(user, _expect(error, load))


def test_a_world_writable_entry_of_a_member_is_refused(people, saved, engine):
    assert _load_as(people.b, saved, engine) == "5"
    saved.path.chmod(0o642)
    assert "writable by others" in _load_as(people.b, saved, engine, wc.UnsafeEntryError)


def _replant(path: Path, uid: int, gid: int) -> None:
    """Put a copy of the entry at ``path`` there, owned by ``uid``:``gid`` (as root)."""
    copy = path.with_name("copy")
    shutil.copyfile(path, copy)
    os.chown(copy, uid, gid)
    copy.chmod(0o640)
    os.replace(copy, path)


def test_an_entry_of_a_non_member_is_refused(people, saved, engine):
    _replant(saved.path, people.c.pw_uid, people.gid)
    message = _load_as(people.b, saved, engine, wc.UnsafeEntryError)
    assert f"uid {people.c.pw_uid}" in message and "member" in message


def test_a_members_entry_outside_the_group_is_refused(people, saved, engine):
    _replant(saved.path, people.b.pw_uid, people.b.pw_gid)
    message = _load_as(people.a, saved, engine, wc.UnsafeEntryError)
    assert f"not to the cache folder's group {people.gid}" in message


def test_a_folder_of_a_non_member_is_refused(people, saved, engine):
    os.chown(saved.folder, people.c.pw_uid, people.gid)
    saved.folder.chmod(0o2770)
    message = _load_as(people.b, saved, engine, wc.UnsafeCacheError)
    assert str(saved.folder) in message and "member" in message


def test_without_shared_group_a_members_entry_is_refused(people, saved, engine):
    def load() -> object:
        return wc.FileSystemCache(saved.folder).load(saved.key, engine)

    message = _as(people.b, _expect(wc.UnsafeCacheError, load))
    assert f"owned by uid {people.a.pw_uid}, not by this user or root" in message
