"""Opening and checking files in a cache folder: never through a link, never blocking on
a FIFO, and only what the user (or root) could have put there.

The rule for a private cache: the cache folder, each engine folder and the index folder is
a real folder (not a link) owned by the user or root and not writable by group or others;
a file read there (entry, index record, lock, prune stamp) is a regular file owned by the
user or root, not writable by group or others, with one link.

With ``shared_group`` the cache folder's group G is trusted too, and only if this process
is in G (its effective or a supplementary group; root too, since trusting a group means
running its members' code): a folder or file may be owned by any member of G (primary
group or listed member) if it belongs to G, and may be group-writable if it belongs to G;
nothing may be writable by others, and nothing may carry a POSIX ACL that names a user or
group (the ACL's mask shows as the group bits, so the mode would hide who else can write).
Everyone in G can then put native code into every member's processes. What wasmcache
creates there is made the group's: folders 2770 in G without inherited ACLs, entries
group-readable, lock and stamp files group-writable.

On Windows the owner is a SID and who may write is a DACL (:mod:`wasmcache.winsec` has
the rule); ``shared_group`` does not exist there. An entry is opened without delete
sharing, so nobody can rename over it or remove it while it is checked and mapped; a
file that cannot be replaced or removed because it is open or mapped elsewhere is kept
and tried again later.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import struct
import sys
from typing import Callable, Optional, Union

from wasmcache import _core, names
from wasmcache.errors import FileReadError, FileWriteError, UnsafeCacheError, UnsafeEntryError
from wasmcache.logs import log

if sys.platform == "win32":
    from wasmcache import winsec

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Windows' C runtime translates line ends in a descriptor not opened binary.
_BINARY = getattr(os, "O_BINARY", 0)
#: Flags of every read of a file in a cache folder.
READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC | _BINARY
#: Flags of every file wasmcache creates there (a name that exists is never opened).
CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
#: Flags of lock files (created if missing, shared by every process, never a link).
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _BINARY
#: Windows: the attribute of a link or junction (a reparse point).
_REPARSE_POINT = 0x400


def _is_reparse_point(info: os.stat_result) -> bool:
    return bool(getattr(info, "st_file_attributes", 0) & _REPARSE_POINT)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a regular file"


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open an existing regular file for reading. FileNotFoundError if nothing is there;
    FileReadError at once for a link, FIFO, device, socket or folder. On Windows the
    file is held without delete sharing until it is closed: nobody can rename another
    file over the path or remove it meanwhile, so a mapping of the path is of the file
    checked (so it is removed only after it is closed)."""
    try:
        if sys.platform == "win32":
            fd = winsec.open_fd(
                path,
                access=winsec.GENERIC_READ,
                # Not FILE_SHARE_DELETE: no rename over it or removal while it is open.
                # Write sharing as the rule allows: only the user may write it anyway.
                share=winsec.FILE_SHARE_READ | winsec.FILE_SHARE_WRITE,
                disposition=winsec.OPEN_EXISTING,
                flags=winsec.FILE_FLAG_BACKUP_SEMANTICS,  # a folder opens, to be named one
            )
        else:
            fd = os.open(path, READ_FLAGS)
    except FileNotFoundError as exc:
        if sys.platform == "win32" and _file_in_the_way(path):
            # Windows says "path not found" where POSIX says ENOTDIR.
            message = f"cannot open {path}: a file is in the way of its folder (Not a directory)"
            raise FileReadError(message, path, errno.ENOTDIR) from exc
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileReadError(f"{path} is a symbolic link", path, exc.errno) from exc
        if exc.errno == errno.ENOTDIR:
            message = f"cannot open {path}: a file is in the way of its folder (Not a directory)"
            raise FileReadError(message, path, exc.errno) from exc
        raise FileReadError(f"cannot open {path}: {exc.strerror}", path, exc.errno) from exc
    info = os.fstat(fd)
    if sys.platform == "win32" and winsec.fd_attributes(fd) & _REPARSE_POINT:
        os.close(fd)  # opened itself, not followed
        raise FileReadError(f"{path} is a link (a reparse point)", path)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileReadError(f"{path} is {_kind(info.st_mode)}, not a cache file", path)
    return fd, info


def _file_in_the_way(path: str) -> bool:
    """Whether the nearest existing folder above ``path`` is in fact not a folder."""
    parent = os.path.dirname(path)
    while parent and parent != os.path.dirname(parent):
        try:
            return not stat.S_ISDIR(os.lstat(parent).st_mode)
        except FileNotFoundError:
            parent = os.path.dirname(parent)
        except OSError:
            return False
    return False


def pread(fd: int, size: int, offset: int) -> bytes:
    """At most ``size`` bytes of the open file ``fd`` from ``offset`` (fewer only at its
    end), without using or moving its position where the platform allows (os.pread;
    Windows: ReadFile at an offset)."""
    if sys.platform == "win32":
        return winsec.pread(fd, size, offset)
    return os.pread(fd, size, offset)


def _owner_ok(info: os.stat_result) -> bool:
    return info.st_uid in (os.geteuid(), 0)


@functools.lru_cache(maxsize=256)
def is_member(uid: int, gid: int) -> bool:
    """Whether user ``uid`` belongs to group ``gid`` (as its primary group or as a listed
    member), from the user and group databases; read once per process."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def in_process_groups(gid: int) -> bool:
    """Whether ``gid`` is this process's effective group or one of its supplementary
    groups (asked each time: a process may change its groups)."""
    return gid == os.getegid() or gid in os.getgroups()


def _group_name(gid: int) -> str:
    import grp

    try:
        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except (KeyError, OverflowError):
        return str(gid)


def group_setting(shared_group: object) -> tuple[bool, Optional[int]]:
    """A cache's ``shared_group`` argument as (shared, the gid it names): False (private),
    True (the cache folder's own group), or a group name or gid that the cache folder must
    carry. TypeError for another type, ValueError for an unknown name or a negative gid."""
    if sys.platform == "win32" and shared_group is not False:
        if not isinstance(shared_group, (bool, int, str)):
            raise TypeError(
                "shared_group must be a bool, a group name or a gid, not "
                f"{type(shared_group).__name__}"
            )
        # Windows has no POSIX groups to trust; whom a folder lets write is its DACL.
        raise ValueError("shared_group needs POSIX groups, which Windows does not have")
    if isinstance(shared_group, bool):
        return shared_group, None
    if isinstance(shared_group, int):
        if shared_group < 0:
            raise ValueError(f"shared_group must not be a negative gid: {shared_group}")
        return True, shared_group
    if isinstance(shared_group, str):
        import grp

        try:
            return True, grp.getgrnam(shared_group).gr_gid
        except KeyError:
            raise ValueError(f"shared_group names no group: {shared_group!r}") from None
    raise TypeError(
        f"shared_group must be a bool, a group name or a gid, not {type(shared_group).__name__}"
    )


# -- POSIX ACLs ---------------------------------------------------------------------------

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_VERSION = 2
_ACL_NAMED = {0x02: "user", 0x08: "group"}  # ACL_USER, ACL_GROUP
#: errno values that mean "no ACL here" (none set, or the filesystem keeps none).
_NO_ACL = {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, getattr(errno, "ENOATTR", -1)}


def _acl_named(value: bytes) -> Optional[str]:
    """The first named user or group entry of an ACL xattr's value, as text, or None if
    it has none; a value that is not an ACL counts as one that names someone."""
    if len(value) < _ACL_HEADER.size or (len(value) - _ACL_HEADER.size) % _ACL_ENTRY.size:
        return "an ACL of unknown format"
    if _ACL_HEADER.unpack_from(value)[0] != _ACL_VERSION:
        return "an ACL of unknown version"
    for tag, _, qualifier in _ACL_ENTRY.iter_unpack(value[_ACL_HEADER.size :]):
        if tag in _ACL_NAMED:
            return f"{_ACL_NAMED[tag]}:{qualifier}"
    return None


def acl_problem(target: Union[int, str], *, folder: bool) -> Optional[str]:
    """Why the file or folder (an open fd, or a path not followed) may be written by
    someone its mode does not show: a POSIX ACL naming a user or group (with ``folder``
    the default ACL too, which new files inherit), or an ACL that cannot be read. None
    if it carries none."""
    names = (ACL_ACCESS, ACL_DEFAULT) if folder else (ACL_ACCESS,)
    for name in names:
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_ACL:
                continue
            return f"has an ACL that cannot be read ({exc.strerror})"
        named = _acl_named(value)
        if named is not None:
            which = "a default ACL" if name == ACL_DEFAULT else "an ACL"
            return f"carries {which} naming {named}, which its mode bits do not show"
    return None


def strip_acls(fd: int) -> None:
    """Remove the ACLs a folder this process created inherited from its parent's default
    ACL (its mode is set again afterwards)."""
    for name in (ACL_ACCESS, ACL_DEFAULT):
        try:
            os.removexattr(fd, name)
        except OSError as exc:
            if exc.errno not in _NO_ACL:
                raise


def _remove(kind: str) -> str:
    return "rm -r {path}" if kind == "folder" else "rm {path}"


def _problem(
    info: os.stat_result, *, shared_group: bool, group: int, kind: str
) -> Optional[tuple[str, str]]:
    """Why a folder or file breaks the rule (reason, fix with ``{path}``), or None.
    ``group`` is the cache folder's group (only used with ``shared_group``)."""
    mine = _owner_ok(info)
    if not shared_group:
        if not mine:
            reason = f"is owned by uid {info.st_uid}, not by this user or root"
            if kind == "folder":
                return reason, "use a folder of your own, or remove it: rm -r {path}"
            return reason, _remove(kind)
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            fix = "chmod 700 {path}" if kind == "folder" else "chmod go-w {path}"
            return "is writable by group or others", fix
        return None
    if info.st_mode & stat.S_IWOTH:
        return "is writable by others", "chmod o-w {path}"
    if not in_process_groups(group):
        reason = (
            f"belongs to group {_group_name(group)}, which this process is not in (shared_group "
            "trusts the cache folder's group only for its members)"
        )
        return reason, (
            "use a cache folder whose group you are in (chgrp <your group> {path}), or join "
            "the group and log in again"
        )
    if (info.st_mode & stat.S_IWGRP or not mine) and info.st_gid != group:
        # Group write, and trust in another member, hold for the cache folder's group only.
        owner = "" if mine else f"is owned by uid {info.st_uid} and "
        reason = f"{owner}belongs to group {info.st_gid}, not to the cache folder's group {group}"
        return reason, f"chgrp {group} {{path}}" if mine else _remove(kind)
    if not mine and not is_member(info.st_uid, group):
        reason = (
            f"is owned by uid {info.st_uid}, who is neither this user, root, nor a member "
            f"of the cache folder's group {group}"
        )
        return reason, _remove(kind)
    return None


def folder_info(
    path: str, *, shared_group: bool = False, group: Optional[int] = None, exact: bool = False
) -> Optional[os.stat_result]:
    """:func:`check_folder`, returning the folder's lstat (None: no folder there)."""
    if sys.platform == "win32":
        return _windows_folder_info(path)
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # nothing yet, or a file in the way of its path: writes fail plainly
    except OSError as exc:
        raise UnsafeCacheError(f"cannot check {path}: {exc.strerror}", path, exc.errno) from exc
    if stat.S_ISLNK(info.st_mode):
        reason, fix = "is a symbolic link", f"replace it by a real folder: rm {path}"
    elif not stat.S_ISDIR(info.st_mode):
        return None
    else:
        trusted = info.st_gid if group is None else group
        problem = None
        if shared_group and exact and info.st_gid != trusted:
            problem = (
                f"belongs to group {_group_name(info.st_gid)}, not to group "
                f"{_group_name(trusted)} that shared_group names",
                f"chgrp {trusted} {{path}} && chmod 2770 {{path}}",
            )
        if problem is None:
            problem = _problem(info, shared_group=shared_group, group=trusted, kind="folder")
        if problem is None and shared_group:
            acl = acl_problem(path, folder=True)
            problem = None if acl is None else (acl, "setfacl -b -k {path}")
        if problem is None:
            return info
        reason, fix = problem[0], problem[1].format(path=path)
    raise UnsafeCacheError(
        f"refusing cache folder {path}: it {reason}; anyone who can write it could run code "
        f"in this process. Fix: {fix}",
        path,
    )


#: What a Windows folder or file that breaks the rule should become: the user, SYSTEM and
#: Administrators alone may write it (what Python's mkdir gives a 0700 folder there).
_WINDOWS_FIX = (
    'icacls "{path}" /inheritance:r /grant:r "%USERNAME%:(OI)(CI)F" "*S-1-5-18:(OI)(CI)F" '
    '"*S-1-5-32-544:(OI)(CI)F"'
)


if sys.platform == "win32":

    def _windows_folder_info(path: str) -> Optional[os.stat_result]:
        """:func:`folder_info` on Windows: the owner SID and DACL of the folder, opened
        without following a link or junction (:func:`winsec.folder_problem`)."""
        try:
            info = os.lstat(path)
            if not (stat.S_ISDIR(info.st_mode) or _is_reparse_point(info)):
                return None
            reason = winsec.folder_problem(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise UnsafeCacheError(f"cannot check {path}: {exc.strerror}", path, exc.errno) from exc
        if reason is None:
            return info
        if reason.startswith("is a link"):
            fix = f"replace it by a real folder: rmdir {path}"
        else:
            fix = "use a folder of your own, or let only you, SYSTEM and Administrators write it: "
            fix += _WINDOWS_FIX.format(path=path)
        raise UnsafeCacheError(
            f"refusing cache folder {path}: it {reason}; anyone who can write it could run code "
            f"in this process. Fix: {fix}",
            path,
        )


def check_folder(
    path: str, *, shared_group: bool = False, group: Optional[int] = None, exact: bool = False
) -> bool:
    """Check a cache, engine or index folder against the rule; False if there is no folder
    there (nothing yet, or a file in the way, here or on its path: using it fails as any
    write would), UnsafeCacheError (naming path, reason and fix) if it breaks the rule.
    ``group`` is the cache folder's group (default: the folder's own), which with
    ``shared_group`` is the group whose members may own and write it; with ``exact`` the
    folder must belong to it (a cache folder whose group the caller named)."""
    return folder_info(path, shared_group=shared_group, group=group, exact=exact) is not None


def _parent_group(path: str) -> int:
    try:
        return os.lstat(os.path.dirname(path) or ".").st_gid
    except OSError:
        return -1  # no group matches


def check_entry(
    path: str,
    info: os.stat_result,
    *,
    shared_group: bool = False,
    group: Optional[int] = None,
    what: str = "cache entry",
    fd: Optional[int] = None,
) -> None:
    """Check an open file in a cache folder (its fstat) against the rule: a regular file
    with one link (or none: renamed over since it was opened), its owner and mode as
    :func:`check_folder` asks (with ``shared_group`` no ACL naming a user or group, read
    from ``fd`` when given); UnsafeEntryError if it breaks it. ``group``: the cache
    folder's group (default: the file's folder's); ``what`` names the file in the
    message."""
    problem: Optional[tuple[str, str]]
    if not stat.S_ISREG(info.st_mode):
        problem = f"is {_kind(info.st_mode)}", "rm {path}"
    elif info.st_nlink > 1:  # 0: replaced since it was opened; no name reaches it now
        problem = f"has {info.st_nlink} links (another name could change it)", "rm {path}"
    elif sys.platform == "win32":
        reason = _windows_file_problem(path, info, fd)
        problem = None if reason is None else (reason, "")
    else:
        if shared_group and group is None:
            group = _parent_group(path)
        problem = _problem(
            info, shared_group=shared_group, group=-1 if group is None else group, kind="file"
        )
        if problem is None and shared_group:
            acl = acl_problem(path if fd is None else fd, folder=False)
            problem = None if acl is None else (acl, "setfacl -b {path}")
    if problem is None:
        return
    fix = f"remove it ({'del' if sys.platform == 'win32' else 'rm'} {path})"
    if what == "cache entry":
        fix += " or run `wasmcache verify --fix`"
    raise UnsafeEntryError(f"refusing {what} {path}: it {problem[0]}. Fix: {fix}", path)


if sys.platform == "win32":

    def _windows_file_problem(path: str, info: os.stat_result, fd: Optional[int]) -> Optional[str]:
        """Why a Windows file breaks the rule: a link, or its owner SID or DACL (read from
        ``fd`` when given, else from the file at ``path`` opened without following it)."""
        if _is_reparse_point(info):
            return "is a link (a reparse point)"
        if fd is not None:
            return winsec.fd_problem(fd)
        try:
            opened = winsec.open_fd(
                path,
                access=winsec.READ_CONTROL | winsec.FILE_READ_ATTRIBUTES,
                share=winsec.FILE_SHARE_READ | winsec.FILE_SHARE_WRITE | winsec.FILE_SHARE_DELETE,
                disposition=winsec.OPEN_EXISTING,
            )
        except OSError as exc:
            return f"cannot be checked ({exc.strerror})"
        try:
            if (os.fstat(opened).st_dev, os.fstat(opened).st_ino) != (info.st_dev, info.st_ino):
                return "was replaced while it was checked"
            return winsec.fd_problem(opened)
        finally:
            os.close(opened)


def _share(fd: int, bits: int) -> None:
    """Give a file or folder this process just created to the group of its folder, with
    ``bits`` (group permissions) added to what the umask left; its other bits are kept."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        return  # made by another process meanwhile: its owner decides
    os.fchmod(fd, stat.S_IMODE(info.st_mode) | bits)


def _share_folder(path: str, group: Optional[int]) -> None:
    """Make a folder this process created the group's: no ACL inherited from its parent,
    its group set to ``group`` (the cache folder's, when given and different), group rwx
    and setgid, so files made in it by any member belong to the group."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return  # made by another process meanwhile: its owner decides
        strip_acls(fd)  # inherited from a default ACL of the parent: the mode says it all
        if group is not None and os.fstat(fd).st_gid != group:
            with contextlib.suppress(OSError):  # not a member: the rule will say so
                os.fchown(fd, -1, group)
        _share(fd, stat.S_IRWXG | stat.S_ISGID)
    finally:
        os.close(fd)


def make_folders(
    cache_dir: str, engine_dir: Optional[str], *, shared_group: bool, group: Optional[int] = None
) -> None:
    """Create the cache folder and an engine folder when missing: 0700, or with
    ``shared_group`` 2770 (what the umask leaves, plus group rwx and setgid, inherited
    ACLs removed) in the cache folder's group (``group``, when the caller named one, for
    a cache folder made here). An existing one must be a real folder and is left as it
    is."""
    mode = 0o770 if shared_group else 0o700
    made = not os.path.lexists(cache_dir)
    os.makedirs(cache_dir, mode=mode, exist_ok=True)
    if made and shared_group:
        _share_folder(cache_dir, group)
    if engine_dir is None:
        return
    try:
        os.mkdir(engine_dir, mode)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(engine_dir).st_mode):
            raise
        return
    if shared_group:
        _share_folder(engine_dir, os.lstat(cache_dir).st_gid)


def same_file(path: str, opened: os.stat_result) -> bool:
    """Whether ``path`` (not followed) still names the file that was opened."""
    try:
        current = os.lstat(path)
    except OSError:
        return False
    if sys.platform == "win32" and opened.st_ino == 0 and opened.st_dev == 0:
        # A listing's stat on Windows (os.scandir) carries no file id: the same size,
        # modification time and attributes stand for the same file. A file renamed into
        # place since has another modification time unless written in the same tick.
        return (current.st_size, current.st_mtime_ns, current.st_file_attributes) == (
            opened.st_size,
            opened.st_mtime_ns,
            opened.st_file_attributes,
        )
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def remove_checked(path: str, checked: os.stat_result) -> bool:
    """Unlink ``path`` only if it still names the file that was checked (same device and
    inode, not followed): a file renamed into place since stays. Return whether it was
    removed; an OSError other than a missing file passes through."""
    if not same_file(path, checked):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except PermissionError as exc:
        # Windows removes no file that is mapped (access denied), or open without delete
        # sharing (a sharing violation: being checked or loaded): it stays, and the next
        # prune or load tries again.
        if sys.platform != "win32" or getattr(exc, "winerror", None) not in (5, 32):
            raise
        log.debug("%s is in use: not removed now", path)
        return False
    return True


def discard(path: str, opened: os.stat_result) -> None:
    """Remove a corrupt file, unless another writer has replaced it meanwhile (on Windows
    only once this process has closed it; one mapped or open elsewhere stays, to be
    removed by a later load or prune)."""
    try:
        remove_checked(path, opened)
    except OSError as exc:
        log.warning("could not remove corrupt cache entry %s: %s", path, exc)


def write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def read_at_most(
    path: str, limit: int, *, shared_group: bool = False, group: Optional[int] = None
) -> Optional[bytes]:
    """The whole of a small regular file that passes the rule (:func:`check_entry`), never
    through a link or blocking on a FIFO; None if it is missing, unreadable, breaks the
    rule or is longer than ``limit``."""
    try:
        fd, info = open_regular(path)
    except (OSError, FileReadError):
        return None
    try:
        check_entry(path, info, shared_group=shared_group, group=group, fd=fd)
        if info.st_size > limit:
            return None
        return pread(fd, limit + 1, 0)
    except (OSError, UnsafeCacheError):
        return None
    finally:
        os.close(fd)


def open_lock(
    path: str,
    *,
    create: bool = True,
    shared_group: bool = False,
    group: Optional[int] = None,
    what: str = "lock file",
) -> int:
    """An fd of the lock or stamp file ``path`` (created when missing with ``create``):
    never through a link, never blocking; a regular file that passes the rule (with one
    link). With ``shared_group`` a file this process creates is made group read-write
    (0660 less what the umask takes from others), so every member can take the lock; a
    file another member made without group write is opened read-only (flock needs no
    more). OSError or UnsafeCacheError if it cannot be had; ``what`` names it there."""
    flags = LOCK_FLAGS | getattr(os, "O_NONBLOCK", 0)
    if not create:
        flags &= ~os.O_CREAT
    try:
        if sys.platform == "win32":
            # Shared for delete: the holder of a lock removes its file while waiters hold
            # it open (see locks.file_lock).
            fd = winsec.open_fd(
                path,
                access=winsec.GENERIC_READ | winsec.GENERIC_WRITE,
                share=winsec.FILE_SHARE_READ | winsec.FILE_SHARE_WRITE | winsec.FILE_SHARE_DELETE,
                disposition=winsec.OPEN_ALWAYS if create else winsec.OPEN_EXISTING,
            )
        else:
            fd = os.open(path, flags, 0o660 if shared_group else 0o600)
    except PermissionError:
        if not shared_group:
            raise
        fd = os.open(path, READ_FLAGS)
    try:
        info = os.fstat(fd)
        check_entry(path, info, shared_group=shared_group, group=group, what=what, fd=fd)
        if shared_group and info.st_mode & 0o060 != 0o060:
            _share(fd, stat.S_IRGRP | stat.S_IWGRP)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Attempts at creating a file whose folder a concurrent prune may remove meanwhile.
CREATE_ATTEMPTS = 8


def create_temp(
    path: str, make_folder: Callable[[str], None], *, shared_group: bool = False
) -> tuple[str, int]:
    """A new temp file beside ``path``, open for writing: its folder is made with
    ``make_folder`` when missing (again if a concurrent prune removes it meanwhile). With
    ``shared_group`` it is made group-readable."""
    for attempt in range(CREATE_ATTEMPTS):
        temp = names.temp_path(path)
        try:
            fd = _create_new(temp)
        except FileExistsError:
            continue
        except FileNotFoundError as exc:
            if attempt == CREATE_ATTEMPTS - 1:
                raise FileWriteError(f"cannot write {path}: {exc.strerror}", path) from exc
            with contextlib.suppress(FileNotFoundError):
                make_folder(os.path.dirname(path))
            continue
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if shared_group:
            try:
                _share(fd, stat.S_IRGRP)
            except OSError as exc:
                os.close(fd)
                unlink_quietly(temp)
                raise _write_error(path, exc) from exc
        return temp, fd
    raise FileWriteError(f"cannot write {path}: no free temp name", path, errno.EEXIST)


def _create_new(temp: str) -> int:
    """A new file at ``temp`` (never an existing name or a link), open for writing."""
    if sys.platform == "win32":
        # Shared for delete, so it can be renamed into place while still open; nobody
        # else may write it meanwhile.
        return winsec.open_fd(
            temp,
            access=winsec.GENERIC_READ | winsec.GENERIC_WRITE,
            share=winsec.FILE_SHARE_READ | winsec.FILE_SHARE_DELETE,
            disposition=winsec.CREATE_NEW,
            flags=winsec.FILE_ATTRIBUTE_NORMAL,
        )
    return os.open(temp, CREATE_FLAGS, 0o644)


def _write_error(path: str, exc: OSError) -> FileWriteError:
    if exc.errno == errno.ENOTDIR:
        reason = "a file is in the way of its folder (Not a directory)"
    else:
        reason = str(exc.strerror)
    return FileWriteError(f"cannot write {path}: {reason}", path, exc.errno)


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and put back at once
    os.umask(mask)
    return mask


def shared_file_mode() -> int:
    """The mode of an entry in a shared folder: what the umask leaves of 0644, plus
    group read (so members can load it whatever their umask)."""
    return (0o644 & ~_umask()) | stat.S_IRGRP


def _in_use(path: str, exc: FileWriteError) -> bool:
    """Whether a failed write on Windows was the rename over a file in use: access
    denied while a file is at the entry's path."""
    if sys.platform != "win32":
        return False
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EBUSY) and is_regular(path)


def is_regular(path: str) -> bool:
    """Whether a regular file (not followed) is at ``path``: what Windows may refuse to
    replace because it is in use (a folder there is another failure)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def write_file(
    path: str,
    payload: _core.Buffer,
    trailer: bytes,
    make_folder: Callable[[str], None],
    *,
    fsync: bool,
    shared_group: bool = False,
) -> None:
    """Write payload + trailer to ``path`` atomically (temp file + rename), its folder made
    with ``make_folder`` when missing (again if a concurrent prune removes it meanwhile).
    With ``shared_group`` the new file is group-readable (its mode set before its first
    byte is written)."""
    mode = shared_file_mode() if shared_group else 0
    for attempt in range(CREATE_ATTEMPTS):
        last = attempt == CREATE_ATTEMPTS - 1
        try:
            _core.atomic_write(
                names.temp_path(path), path, payload, trailer, fsync=fsync, mode=mode
            )
            return
        except FileWriteError as exc:
            if exc.errno == errno.ENOTDIR and isinstance(exc.__cause__, OSError):
                raise _write_error(path, exc.__cause__) from exc.__cause__
            if _in_use(path, exc):
                # Windows replaces no file that is mapped, or open without delete sharing
                # (being loaded): the entry there stays, and a later save replaces it.
                log.debug("%s is in use: not replaced now", path)
                return
            if last or exc.errno not in (errno.EEXIST, errno.ENOENT):
                raise
            if exc.errno == errno.EEXIST:
                continue
        try:
            make_folder(os.path.dirname(path))
        except FileNotFoundError:
            continue  # pruned again meanwhile
        except OSError as exc:
            raise FileWriteError(
                f"cannot create the folder of {path}: {exc.strerror}", path, exc.errno
            ) from exc
