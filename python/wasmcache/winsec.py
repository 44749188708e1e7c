"""Windows: who owns a file or folder and who else may change it (its owner SID and DACL),
and the Win32 opens and locks the cache needs there.

The rule on Windows (what ``safefs`` enforces with it): a cache, engine or index folder,
and a file read in one, is owned by this process's user (the token's user SID), SYSTEM or
the Administrators group, and its DACL allows nobody else to write, append, delete, change
its ACL or take its ownership. SYSTEM (the OS itself) and Administrators (who hold the
backup, restore and take-ownership privileges, so can change any file anyway, and whom
Windows makes the owner of what an elevated process creates) are Windows' counterpart of
root in the POSIX rule; every user profile's own DACL grants both full control. OWNER
RIGHTS grants only to the owner, which the rule checks; CREATOR OWNER is a template for
new children, which only someone already allowed to create them can make. A missing
(NULL) DACL lets everyone do everything and is refused. Deny entries are not weighed
(refusing more is safe); an allow entry of a type that cannot be read is refused.

The parsing of SIDs and ACLs is plain Python over the bytes Windows returns, every length
checked against the buffer it sits in; it runs (and is tested) on every platform. Only
the functions that call Win32 need Windows.
"""

from __future__ import annotations

import struct
import sys
from typing import NamedTuple, Optional

# -- access rights and ACE types (winnt.h) ------------------------------------------------

FILE_WRITE_DATA = 0x0002  # a folder: FILE_ADD_FILE
FILE_APPEND_DATA = 0x0004  # a folder: FILE_ADD_SUBDIRECTORY
FILE_DELETE_CHILD = 0x0040
DELETE = 0x00010000
WRITE_DAC = 0x00040000
WRITE_OWNER = 0x00080000
MAXIMUM_ALLOWED = 0x02000000
GENERIC_ALL = 0x10000000
GENERIC_WRITE = 0x40000000
#: Rights that let their holder change what a file holds, or which files a folder holds:
#: write or append (add a file or folder), delete (rename away, then replace), delete a
#: child, change the ACL, take ownership, and the generic rights that include them.
WRITE_RIGHTS = (
    FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | FILE_DELETE_CHILD
    | DELETE
    | WRITE_DAC
    | WRITE_OWNER
    | MAXIMUM_ALLOWED
    | GENERIC_ALL
    | GENERIC_WRITE
)

_ALLOWED = 0x00
_ALLOWED_OBJECT = 0x05
_ALLOWED_CALLBACK = 0x09
_ALLOWED_CALLBACK_OBJECT = 0x0B
_DENIED = {0x01, 0x06, 0x0A, 0x0C}
#: Audit, alarm, label and attribute entries: they grant nothing.
_GRANT_NOTHING = {0x02, 0x03, 0x07, 0x08, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15}
_OBJECT_TYPE_PRESENT = 0x1
_INHERITED_OBJECT_TYPE_PRESENT = 0x2

SYSTEM = "S-1-5-18"
ADMINISTRATORS = "S-1-5-32-544"
OWNER_RIGHTS = "S-1-3-4"
CREATOR_OWNER = "S-1-3-0"
#: Principals besides the user that may own a cache folder or file (see the module doc).
TRUSTED_OWNERS = frozenset({SYSTEM, ADMINISTRATORS})
#: Principals whose write access the rule accepts besides the user's.
TRUSTED_WRITERS = frozenset({SYSTEM, ADMINISTRATORS, OWNER_RIGHTS, CREATOR_OWNER})
_NAMES = {
    SYSTEM: "SYSTEM",
    ADMINISTRATORS: "Administrators",
    "S-1-1-0": "Everyone",
    "S-1-5-11": "Authenticated Users",
    "S-1-5-32-545": "Users",
    "S-1-5-4": "INTERACTIVE",
    "S-1-3-1": "CREATOR GROUP",
}

_ACL_HEADER = struct.Struct("<BBHHH")  # revision, 0, size, ace count, 0
_ACE_HEADER = struct.Struct("<BBH")  # type, flags, size
_MAX_SUB_AUTHORITIES = 15


class Ace(NamedTuple):
    """An allow entry of a DACL: who (a SID string) gets which rights."""

    sid: str
    mask: int
    flags: int


def sid_string(data: bytes, offset: int = 0, end: Optional[int] = None) -> tuple[str, int]:
    """The SID at ``offset`` of ``data`` (not past ``end``) as ``S-1-...`` text, and its
    length in bytes. ValueError if it does not fit or is not a SID."""
    limit = len(data) if end is None else min(end, len(data))
    if offset < 0 or offset + 8 > limit:
        raise ValueError("a SID runs past its buffer")
    revision, count = data[offset], data[offset + 1]
    if revision != 1 or count > _MAX_SUB_AUTHORITIES:
        raise ValueError(f"not a SID (revision {revision}, {count} sub-authorities)")
    length = 8 + 4 * count
    if offset + length > limit:
        raise ValueError("a SID runs past its buffer")
    authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
    subs = struct.unpack_from(f"<{count}I", data, offset + 8)
    return "-".join(["S-1", str(authority), *map(str, subs)]), length


def acl_allows(acl: bytes) -> list[Ace]:
    """The allow entries of an ACL (its bytes, as long as its header says). ValueError for
    a malformed ACL or an allow entry that cannot be read."""
    if len(acl) < _ACL_HEADER.size:
        raise ValueError("an ACL shorter than its header")
    revision, _, size, count, _ = _ACL_HEADER.unpack_from(acl)
    if revision not in (2, 4) or size < _ACL_HEADER.size or size > len(acl):
        raise ValueError(f"not an ACL (revision {revision}, size {size} of {len(acl)})")
    allows = []
    offset = _ACL_HEADER.size
    for _ in range(count):
        if offset + _ACE_HEADER.size > size:
            raise ValueError("an ACL entry runs past its ACL")
        kind, flags, ace_size = _ACE_HEADER.unpack_from(acl, offset)
        end = offset + ace_size
        if ace_size < _ACE_HEADER.size + 4 or ace_size % 4 or end > size:
            raise ValueError(f"an ACL entry of {ace_size} bytes does not fit its ACL")
        if kind in (_ALLOWED, _ALLOWED_CALLBACK, _ALLOWED_OBJECT, _ALLOWED_CALLBACK_OBJECT):
            (mask,) = struct.unpack_from("<I", acl, offset + 4)
            sid_at = offset + 8
            if kind in (_ALLOWED_OBJECT, _ALLOWED_CALLBACK_OBJECT):
                if sid_at + 4 > end:
                    raise ValueError("an object ACL entry runs past its size")
                (present,) = struct.unpack_from("<I", acl, sid_at)
                sid_at += 4
                sid_at += 16 * bool(present & _OBJECT_TYPE_PRESENT)
                sid_at += 16 * bool(present & _INHERITED_OBJECT_TYPE_PRESENT)
            sid, _ = sid_string(acl, sid_at, end)
            allows.append(Ace(sid, mask, flags))
        elif kind not in _DENIED and kind not in _GRANT_NOTHING:
            raise ValueError(f"an ACL entry of unknown type {kind:#x}")
        offset = end
    return allows


def describe(sid: str) -> str:
    """A SID as a message shows it: its well-known name, if it has one, and the SID."""
    name = _NAMES.get(sid)
    return f"{name} ({sid})" if name else sid


def problem(owner: str, dacl: Optional[bytes], user: str) -> Optional[str]:
    """Why a file or folder owned by ``owner`` with DACL ``dacl`` (None: no DACL at all)
    breaks the rule for ``user`` (a SID string), as the end of "it ..."; None if it keeps
    it."""
    if owner != user and owner not in TRUSTED_OWNERS:
        return f"is owned by {describe(owner)}, not by this user ({user}), SYSTEM or Administrators"
    if dacl is None:
        return "has no access control list, so everyone may write it"
    try:
        allows = acl_allows(dacl)
    except ValueError as exc:
        return f"has an access control list that cannot be read ({exc})"
    for ace in allows:
        if ace.sid != user and ace.sid not in TRUSTED_WRITERS and ace.mask & WRITE_RIGHTS:
            return (
                f"lets {describe(ace.sid)} write or change it (access mask {ace.mask:#010x} "
                "in its access control list)"
            )
    return None


if sys.platform == "win32":
    import ctypes
    import functools
    import msvcrt
    import os
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)

    _INVALID_HANDLE = wintypes.HANDLE(-1).value
    GENERIC_READ = 0x80000000
    READ_CONTROL = 0x00020000
    FILE_READ_ATTRIBUTES = 0x0080
    FILE_SHARE_READ = 0x1
    FILE_SHARE_WRITE = 0x2
    FILE_SHARE_DELETE = 0x4
    CREATE_NEW = 1
    OPEN_EXISTING = 3
    OPEN_ALWAYS = 4
    FILE_ATTRIBUTE_DIRECTORY = 0x10
    FILE_ATTRIBUTE_REPARSE_POINT = 0x400
    FILE_ATTRIBUTE_NORMAL = 0x80
    FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
    FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
    _SE_FILE_OBJECT = 1
    _OWNER_SECURITY_INFORMATION = 0x1
    _DACL_SECURITY_INFORMATION = 0x4
    _TOKEN_QUERY = 0x0008
    _TOKEN_USER = 1
    _LOCKFILE_FAIL_IMMEDIATELY = 0x1
    _LOCKFILE_EXCLUSIVE_LOCK = 0x2
    _ERROR_LOCK_VIOLATION = 33
    _ERROR_INSUFFICIENT_BUFFER = 122

    class _Overlapped(ctypes.Structure):
        _fields_ = [
            ("Internal", ctypes.c_size_t),
            ("InternalHigh", ctypes.c_size_t),
            ("Offset", wintypes.DWORD),
            ("OffsetHigh", wintypes.DWORD),
            ("hEvent", wintypes.HANDLE),
        ]

    class _FileInfo(ctypes.Structure):  # BY_HANDLE_FILE_INFORMATION
        _fields_ = [
            ("dwFileAttributes", wintypes.DWORD),
            ("ftCreationTime", wintypes.FILETIME),
            ("ftLastAccessTime", wintypes.FILETIME),
            ("ftLastWriteTime", wintypes.FILETIME),
            ("dwVolumeSerialNumber", wintypes.DWORD),
            ("nFileSizeHigh", wintypes.DWORD),
            ("nFileSizeLow", wintypes.DWORD),
            ("nNumberOfLinks", wintypes.DWORD),
            ("nFileIndexHigh", wintypes.DWORD),
            ("nFileIndexLow", wintypes.DWORD),
        ]

    _CreateFileW = _kernel32.CreateFileW
    _CreateFileW.restype = wintypes.HANDLE
    _CreateFileW.argtypes = [
        wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID, wintypes.DWORD,
        wintypes.DWORD, wintypes.HANDLE,
    ]  # fmt: skip
    _CloseHandle = _kernel32.CloseHandle
    _CloseHandle.restype = wintypes.BOOL
    _CloseHandle.argtypes = [wintypes.HANDLE]
    _GetFileInformationByHandle = _kernel32.GetFileInformationByHandle
    _GetFileInformationByHandle.restype = wintypes.BOOL
    _GetFileInformationByHandle.argtypes = [wintypes.HANDLE, ctypes.POINTER(_FileInfo)]
    _LockFileEx = _kernel32.LockFileEx
    _LockFileEx.restype = wintypes.BOOL
    _LockFileEx.argtypes = [
        wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
        ctypes.POINTER(_Overlapped),
    ]  # fmt: skip
    _UnlockFileEx = _kernel32.UnlockFileEx
    _UnlockFileEx.restype = wintypes.BOOL
    _UnlockFileEx.argtypes = [
        wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
        ctypes.POINTER(_Overlapped),
    ]  # fmt: skip
    _GetCurrentProcess = _kernel32.GetCurrentProcess
    _GetCurrentProcess.restype = wintypes.HANDLE
    _GetCurrentProcess.argtypes = []
    _LocalFree = _kernel32.LocalFree
    _LocalFree.restype = wintypes.HLOCAL
    _LocalFree.argtypes = [wintypes.HLOCAL]
    _OpenProcessToken = _advapi32.OpenProcessToken
    _OpenProcessToken.restype = wintypes.BOOL
    _OpenProcessToken.argtypes = [wintypes.HANDLE, wintypes.DWORD, ctypes.POINTER(wintypes.HANDLE)]
    _GetTokenInformation = _advapi32.GetTokenInformation
    _GetTokenInformation.restype = wintypes.BOOL
    _GetTokenInformation.argtypes = [
        wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID, wintypes.DWORD,
        ctypes.POINTER(wintypes.DWORD),
    ]  # fmt: skip
    _GetSecurityInfo = _advapi32.GetSecurityInfo
    _GetSecurityInfo.restype = wintypes.DWORD
    _GetSecurityInfo.argtypes = [
        wintypes.HANDLE, ctypes.c_int, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID),
        ctypes.POINTER(wintypes.LPVOID), ctypes.POINTER(wintypes.LPVOID),
        ctypes.POINTER(wintypes.LPVOID), ctypes.POINTER(wintypes.LPVOID),
    ]  # fmt: skip
    _GetSecurityDescriptorLength = _advapi32.GetSecurityDescriptorLength
    _GetSecurityDescriptorLength.restype = wintypes.DWORD
    _GetSecurityDescriptorLength.argtypes = [wintypes.LPVOID]

    def _error(code: int, path: Optional[str] = None) -> OSError:
        """The OSError of a Win32 error code (its errno and subclass follow the code)."""
        return OSError(None, ctypes.FormatError(code).strip(), path, code)

    @functools.lru_cache(maxsize=1)
    def user_sid() -> str:
        """This process's user (its token's user SID), as ``S-1-...`` text."""
        token = wintypes.HANDLE()
        if not _OpenProcessToken(_GetCurrentProcess(), _TOKEN_QUERY, ctypes.byref(token)):
            raise _error(ctypes.get_last_error())
        try:
            needed = wintypes.DWORD()
            _GetTokenInformation(token, _TOKEN_USER, None, 0, ctypes.byref(needed))
            code = ctypes.get_last_error()
            if code != _ERROR_INSUFFICIENT_BUFFER or not 16 <= needed.value <= 4096:
                raise _error(code)
            buffer = ctypes.create_string_buffer(needed.value)
            if not _GetTokenInformation(
                token, _TOKEN_USER, buffer, needed.value, ctypes.byref(needed)
            ):
                raise _error(ctypes.get_last_error())
            # TOKEN_USER: a SID_AND_ATTRIBUTES whose first member points into the buffer.
            pointer = ctypes.c_void_p.from_buffer(buffer).value or 0
            start = pointer - ctypes.addressof(buffer)
            if not 0 <= start < needed.value:
                raise ValueError("the token's user SID lies outside its buffer")
            return sid_string(buffer.raw[: needed.value], start)[0]
        finally:
            _CloseHandle(token)

    def _inside(base: int, total: int, pointer: int, size: int) -> None:
        """ValueError unless ``size`` bytes at ``pointer`` lie in the security descriptor
        of ``total`` bytes at ``base``."""
        if not (base <= pointer and pointer + size <= base + total):
            raise ValueError("a part of the security descriptor lies outside it")

    def _read_sid(pointer: int, base: int, total: int) -> str:
        head = ctypes.string_at(pointer, 8)
        if head[0] != 1 or head[1] > _MAX_SUB_AUTHORITIES:
            raise ValueError("the owner is not a SID")
        _inside(base, total, pointer, 8 + 4 * head[1])
        return sid_string(ctypes.string_at(pointer, 8 + 4 * head[1]))[0]

    def handle_problem(handle: int, user: Optional[str] = None) -> Optional[str]:
        """Why the file or folder open as ``handle`` (with READ_CONTROL) breaks the rule,
        or None."""
        owner = wintypes.LPVOID()
        dacl = wintypes.LPVOID()
        descriptor = wintypes.LPVOID()
        code = _GetSecurityInfo(
            handle, _SE_FILE_OBJECT, _OWNER_SECURITY_INFORMATION | _DACL_SECURITY_INFORMATION,
            ctypes.byref(owner), None, ctypes.byref(dacl), None, ctypes.byref(descriptor),
        )  # fmt: skip
        if code != 0:
            return f"has an owner and access control list that cannot be read ({_error(code)})"
        try:
            base = descriptor.value or 0
            total = int(_GetSecurityDescriptorLength(descriptor)) if base else 0
            try:
                if not owner.value:
                    return "has no owner"
                _inside(base, total, owner.value, 8)
                owner_sid = _read_sid(owner.value, base, total)
                acl: Optional[bytes] = None
                if dacl.value:
                    _inside(base, total, dacl.value, _ACL_HEADER.size)
                    size = _ACL_HEADER.unpack(ctypes.string_at(dacl.value, _ACL_HEADER.size))[2]
                    _inside(base, total, dacl.value, size)
                    acl = ctypes.string_at(dacl.value, size)
            except ValueError as exc:
                return f"has an owner or access control list that cannot be read ({exc})"
            return problem(owner_sid, acl, user_sid() if user is None else user)
        finally:
            if base:
                _LocalFree(descriptor)

    def fd_problem(fd: int) -> Optional[str]:
        """:func:`handle_problem` of an open file descriptor."""
        return handle_problem(msvcrt.get_osfhandle(fd))

    def _create(path: str, access: int, share: int, disposition: int, flags: int) -> int:
        handle = _CreateFileW(path, access, share, None, disposition, flags, None)
        if handle is None or handle == _INVALID_HANDLE:
            raise _error(ctypes.get_last_error(), path)
        return int(handle)

    def attributes(handle: int) -> int:
        """The attributes (``FILE_ATTRIBUTE_*``) of an open file or folder."""
        info = _FileInfo()
        if not _GetFileInformationByHandle(handle, ctypes.byref(info)):
            raise _error(ctypes.get_last_error())
        return int(info.dwFileAttributes)

    def folder_problem(path: str) -> Optional[str]:
        """Why the folder ``path`` breaks the rule (a link or junction, or its owner or
        DACL), None if it keeps it. The folder is opened without following a reparse
        point, and the security checked is that of the folder opened. FileNotFoundError
        if nothing is there; NotADirectoryError for a file."""
        handle = _create(
            path,
            READ_CONTROL | FILE_READ_ATTRIBUTES,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            OPEN_EXISTING,
            FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT,
        )
        try:
            found = attributes(handle)
            if found & FILE_ATTRIBUTE_REPARSE_POINT:
                return "is a link (a reparse point: a symbolic link or junction)"
            if not found & FILE_ATTRIBUTE_DIRECTORY:
                raise NotADirectoryError(20, "Not a directory", path)
            return handle_problem(handle)
        finally:
            _CloseHandle(handle)

    def open_fd(path: str, *, access: int, share: int, disposition: int, flags: int = 0) -> int:
        """``path`` opened with CreateFileW, never through a reparse point (a link or
        junction is opened itself), as a binary C file descriptor."""
        handle = _create(path, access, share, disposition, flags | FILE_FLAG_OPEN_REPARSE_POINT)
        try:
            readonly = 0 if access & (GENERIC_WRITE | FILE_WRITE_DATA) else os.O_RDONLY
            return msvcrt.open_osfhandle(handle, readonly | os.O_NOINHERIT)
        except BaseException:
            _CloseHandle(handle)
            raise

    def fd_attributes(fd: int) -> int:
        """:func:`attributes` of an open file descriptor."""
        return attributes(msvcrt.get_osfhandle(fd))

    def lock(fd: int, *, block: bool) -> bool:
        """Take the exclusive lock of the open file ``fd`` (its first byte: the lock files
        are empty, and a range past the end can be locked); False if another handle holds
        it and ``block`` is False. OSError if locking fails otherwise."""
        flags = _LOCKFILE_EXCLUSIVE_LOCK | (0 if block else _LOCKFILE_FAIL_IMMEDIATELY)
        overlapped = _Overlapped()
        if _LockFileEx(msvcrt.get_osfhandle(fd), flags, 0, 1, 0, ctypes.byref(overlapped)):
            return True
        code = ctypes.get_last_error()
        if not block and code == _ERROR_LOCK_VIOLATION:
            return False
        raise _error(code)

    def unlock(fd: int) -> None:
        """Release the lock :func:`lock` took (closing the handle releases it too, but not
        at a moment Windows promises)."""
        overlapped = _Overlapped()
        if not _UnlockFileEx(msvcrt.get_osfhandle(fd), 0, 1, 0, ctypes.byref(overlapped)):
            raise _error(ctypes.get_last_error())

    _ERROR_HANDLE_EOF = 38
    _ReadFile = _kernel32.ReadFile
    _ReadFile.restype = wintypes.BOOL
    _ReadFile.argtypes = [
        wintypes.HANDLE, wintypes.LPVOID, wintypes.DWORD, ctypes.POINTER(wintypes.DWORD),
        ctypes.POINTER(_Overlapped),
    ]  # fmt: skip

    def pread(fd: int, size: int, offset: int) -> bytes:
        """At most ``size`` bytes of ``fd`` from ``offset`` (fewer only at the end):
        ReadFile at an offset, as os.pread does elsewhere."""
        if size < 0 or offset < 0:
            raise ValueError("size and offset must not be negative")
        handle = msvcrt.get_osfhandle(fd)
        pieces = []
        while size > 0:
            piece = min(size, 1 << 30)
            buffer = ctypes.create_string_buffer(piece)
            overlapped = _Overlapped(Offset=offset & 0xFFFFFFFF, OffsetHigh=offset >> 32)
            done = wintypes.DWORD()
            if not _ReadFile(handle, buffer, piece, ctypes.byref(done), ctypes.byref(overlapped)):
                code = ctypes.get_last_error()
                if code == _ERROR_HANDLE_EOF:
                    break
                raise _error(code)
            if done.value > piece:
                raise OSError("ReadFile reported more bytes than asked for")
            if done.value == 0:
                break
            pieces.append(buffer.raw[: done.value])
            size -= done.value
            offset += done.value
        return b"".join(pieces)
