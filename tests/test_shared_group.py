"""``shared_group=True`` with two real users and a group made for the test: members share
entries and compile locks in a setgid folder (``chgrp G dir && chmod 2770 dir``), and
nobody outside the group, nor anything writable by others, is trusted.

Each user's part runs in a forked child that has become that user (initgroups, setgid,
setuid, umask 077: sharing must not depend on the umask); the interpreter is not readable
by other users, so they cannot start their own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import wasmtime

import wasmcache as wc
from conftest import ADD_WAT, call_add, windows_lacks
from wasmcache import kinds, locks, names
from wasmcache.hashing import DEFAULT_ALGORITHM

if sys.platform != "win32":  # (the whole module is POSIX-only: see pytestmark)
    import grp
    import pwd


def default_key(data: bytes) -> wc.ModuleHash:
    """The key load_or_compile computes for ``data``."""
    return wc.ModuleHash.of(DEFAULT_ALGORITHM, data)


pytestmark = [
    windows_lacks("no POSIX groups or users (a shared group is a POSIX rule)"),
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
    # Warm every lazy import in the parent: the children cannot read the interpreter's
    # library as the users they become.
    with tempfile.TemporaryDirectory() as warm:
        source = Path(warm) / "add.wasm"
        source.write_bytes(wasmtime.wat2wasm(ADD_WAT))
        cache = wc.FileSystemCache(Path(warm) / "c", shared_group=True)
        cache.load_or_compile(made, source)
        cache.load(default_key(source.read_bytes()), made)
        cache.verify_entries()
        cache.wait_housekeeping(timeout=60)
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
    key = default_key(add_wasm)

    def compile_as_a() -> str:
        cache = wc.FileSystemCache(folder, shared_group=True)
        held = cache.compile_lock
        seen = []

        @contextlib.contextmanager
        def watched(k: wc.ModuleHash, e: wasmtime.Engine) -> Iterator[None]:
            with held(k, e):
                lock = os.stat(names.lock_path(str(cache.path(k, e))))
                seen.append(f"{lock.st_gid} {stat.S_IMODE(lock.st_mode):o}")
                yield

        cache.compile_lock = watched  # type: ignore[method-assign]
        added = call_add(engine, cache.load_or_compile(engine, add_wasm))
        cache.wait_housekeeping(timeout=60)
        cache.flush_metrics()
        return f"{added} {seen[0]}"

    # The lock file, while held, is the group's and group-writable; released, it is gone.
    assert _as(people.a, compile_as_a) == f"5 {people.gid} 660"
    path = wc.FileSystemCache(folder).path(key, engine)
    entry, engine_dir = path.stat(), path.parent.stat()
    assert (entry.st_uid, entry.st_gid) == (people.a.pw_uid, people.gid)
    assert stat.S_IMODE(entry.st_mode) == 0o640  # group-readable despite umask 077
    assert engine_dir.st_gid == people.gid and stat.S_IMODE(engine_dir.st_mode) == 0o2770
    assert not Path(names.lock_path(str(path))).exists()
    counts = (folder / names.METRICS).stat()
    assert counts.st_gid == people.gid and stat.S_IMODE(counts.st_mode) == 0o640

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
        module = cache.load(default_key(other_wasm), engine)
        return str(call_add(engine, module))

    assert _as(people.a, load_as_a) == "-1"

    def verify_as_b() -> str:
        return repr(wc.FileSystemCache(folder, shared_group=True).verify_entries())

    assert _as(people.b, verify_as_b) == "[]"


def test_members_share_the_compile_lock(people, place, engine):
    folder = _shared_folder(people, place, people.a)
    key = default_key(b"locked")
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
    key = default_key(add_wasm)
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


# -- the group must be one of this process's ----------------------------------------------

EVIL_WAT = ADD_WAT.replace("i32.add", "i32.mul")


def test_a_folder_of_a_group_this_user_is_not_in_is_refused(people, place, engine):
    """Any user can make the shared folder first, with a group of their own (nobody and
    nogroup here): its group is not one of the member's, so it is refused, and the
    planted code never runs."""
    mallory = pwd.getpwnam("nobody")
    folder = place / "team-cache"
    good, evil = wasmtime.wat2wasm(ADD_WAT), wasmtime.wat2wasm(EVIL_WAT)
    evil_module = wasmtime.Module(engine, evil)

    def plant() -> str:
        folder.mkdir(0o2755)
        cache = wc.FileSystemCache(folder, shared_group=True)
        cache.save(default_key(good), engine, evil_module)
        path = cache.path(default_key(good), engine)
        path.parent.chmod(0o2755)
        path.chmod(0o644)
        return "planted"

    assert _as(mallory, plant) == "planted"
    assert os.stat(folder).st_gid not in os.getgrouplist(people.b.pw_name, people.b.pw_gid)

    def load() -> object:
        return wc.FileSystemCache(folder, shared_group=True).load(default_key(good), engine)

    message = _as(people.b, _expect(wc.UnsafeCacheError, load))
    assert f"group {mallory.pw_gid}" in message and "not in" in message

    def compile_anyway() -> str:
        cache = wc.FileSystemCache(folder, shared_group=True)
        return str(call_add(engine, cache.load_or_compile(engine, good)))

    assert _as(people.b, compile_anyway) == "5"  # compiled without the cache


def test_root_outside_the_group_is_refused_too(people, saved, engine):
    """Root trusting a group it is not in would run its members' code: refused alike."""
    assert people.gid not in os.getgroups() and os.getegid() != people.gid
    with pytest.raises(wc.UnsafeCacheError, match="which this process is not in"):
        wc.FileSystemCache(saved.folder, shared_group=True).load(saved.key, engine)


def test_a_named_group_makes_and_requires_that_group(people, place, engine):
    name = grp.getgrgid(people.gid).gr_name
    folder = place / "named"
    add_wasm = wasmtime.wat2wasm(ADD_WAT)
    key = default_key(add_wasm)

    def compile_as_a() -> str:
        cache = wc.FileSystemCache(folder, shared_group=name)
        return str(call_add(engine, cache.load_or_compile(engine, add_wasm)))

    assert _as(people.a, compile_as_a) == "5"
    made = folder.stat()
    assert made.st_gid == people.gid != people.a.pw_gid  # not A's primary group
    assert stat.S_IMODE(made.st_mode) == 0o2770

    def load_as_b() -> str:
        _no_compiling()
        cache = wc.FileSystemCache(folder, shared_group=people.gid)
        return str(call_add(engine, cache.load(key, engine)))

    assert _as(people.b, load_as_b) == "5"

    # A folder of another group of A's is refused when a group is named, kept with True.
    os.chown(folder, -1, people.a.pw_gid)

    def load_as_a() -> object:
        return wc.FileSystemCache(folder, shared_group=name).load(key, engine)

    message = _as(people.a, _expect(wc.UnsafeCacheError, load_as_a))
    assert f"not to group {people.gid} ({name}) that shared_group names" in message


# -- POSIX ACLs --------------------------------------------------------------------------


def _setfacl(*args: str) -> None:
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is missing (Debian: apt-get install acl)")
    done = subprocess.run(["setfacl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no POSIX ACLs here: {done.stderr.strip()}")


def _acl(path: Path) -> bytes:
    """The access and default ACLs of ``path`` (empty: none)."""
    found = b""
    for name in ("system.posix_acl_access", "system.posix_acl_default"):
        with contextlib.suppress(OSError):
            found += os.getxattr(path, name)
    return found


def test_folders_made_under_a_default_acl_do_not_inherit_it(people, place, engine):
    """A project folder's default ACL grants a non-member write; the folders wasmcache
    makes in shared mode drop it, so the non-member cannot rename one entry over
    another's name."""
    project = place / "project"
    project.mkdir()
    os.chown(project, -1, people.gid)
    project.chmod(0o2775)
    _setfacl("-m", "d:u:nobody:rwx", str(project))
    folder = project / "cache"
    a = wasmtime.wat2wasm(ADD_WAT)
    b = wasmtime.wat2wasm(EVIL_WAT)

    def compile_as_a() -> str:
        cache = wc.FileSystemCache(folder, shared_group=True)
        return f"{call_add(engine, cache.load_or_compile(engine, a))} " + str(
            call_add(engine, cache.load_or_compile(engine, b))
        )

    assert _as(people.a, compile_as_a) == "5 6"
    path_a = wc.FileSystemCache(folder).path(default_key(a), engine)
    path_b = wc.FileSystemCache(folder).path(default_key(b), engine)
    for made in (folder, path_a.parent, path_a, folder / names.INDEX_FOLDER):
        if made.exists():
            assert _acl(made) == b"", made

    def rename_as_nobody() -> None:
        os.rename(path_b, path_a)

    _as(pwd.getpwnam("nobody"), _expect(PermissionError, rename_as_nobody))

    def load_as_b() -> str:
        cache = wc.FileSystemCache(folder, shared_group=True)
        return str(call_add(engine, cache.load(default_key(a), engine)))

    assert _as(people.b, load_as_b) == "5"


@pytest.fixture
def root_shared(place, engine) -> SimpleNamespace:
    """A shared folder of root's own group (root is in it), holding one entry."""
    folder = place / "rootshared"
    folder.mkdir()
    os.chown(folder, 0, 0)
    folder.chmod(0o2770)
    add_wasm = wasmtime.wat2wasm(ADD_WAT)
    key = default_key(add_wasm)
    cache = wc.FileSystemCache(folder, shared_group=True)
    cache.save(key, engine, wasmtime.Module(engine, add_wasm))
    return SimpleNamespace(folder=folder, key=key, path=cache.path(key, engine))


@pytest.mark.parametrize("which", ["cache folder", "engine folder", "default ACL"])
def test_a_shared_folder_with_a_named_acl_is_refused(root_shared, engine, which):
    """The ACL's mask shows as the group bits: the mode says only the group may write,
    the ACL says a user outside it may too."""
    target = root_shared.folder if which != "engine folder" else root_shared.path.parent
    entry = "d:u:nobody:rwx" if which == "default ACL" else "u:nobody:rwx"
    shared = wc.FileSystemCache(root_shared.folder, shared_group=True)
    assert call_add(engine, shared.load(root_shared.key, engine)) == 5
    _setfacl("-m", entry, str(target))
    with pytest.raises(wc.UnsafeCacheError, match="ACL naming user:65534") as caught:
        wc.FileSystemCache(root_shared.folder, shared_group=True).load(root_shared.key, engine)
    assert str(target) in str(caught.value) and "setfacl -b" in str(caught.value)
    with pytest.raises(wc.UnsafeCacheError, match="ACL naming"):
        wc.FileSystemCache(root_shared.folder, shared_group=True).verify_entries()


def test_a_shared_entry_with_a_named_acl_is_refused(root_shared, engine):
    _setfacl("-m", "u:nobody:rw", str(root_shared.path))
    assert root_shared.path.stat().st_mode & 0o070 == 0o060  # the mask, as group bits
    with pytest.raises(wc.UnsafeEntryError, match="ACL naming user:65534"):
        wc.FileSystemCache(root_shared.folder, shared_group=True).load(root_shared.key, engine)


def test_in_a_private_cache_a_named_acl_shows_in_the_mode(tmp_path, engine):
    """Private mode needs no ACL check: a named entry's write permission is bounded by
    the mask, which shows as the group bits, which the rule refuses; a mask without
    write leaves the named user unable to write."""
    add_wasm = wasmtime.wat2wasm(ADD_WAT)
    key = default_key(add_wasm)
    cache = wc.FileSystemCache(tmp_path / "c")
    cache.save(key, engine, wasmtime.Module(engine, add_wasm))
    folder = cache.cache_dir
    _setfacl("-m", "u:nobody:rwx", str(folder))
    with pytest.raises(wc.UnsafeCacheError, match="writable by group"):
        wc.FileSystemCache(folder).load(key, engine)
    _setfacl("-m", "u:nobody:rwx,m::rx", str(folder))
    assert call_add(engine, wc.FileSystemCache(folder).load(key, engine)) == 5
    tmp_path.chmod(0o755)

    def write_as_nobody() -> None:
        (folder / "planted").write_bytes(b"x")

    _as(pwd.getpwnam("nobody"), _expect(PermissionError, write_as_nobody))
