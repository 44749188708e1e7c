/*
 * Write a file so that readers only ever see the old content or the whole new content:
 * write to a temp file created exclusively in the target's folder, then rename it over
 * the target. The caller names the temp file (wmc_temp_path builds the name).
 *
 * Two branches behind the one function: POSIX (Linux, macOS, the BSDs) and Win32. Both
 * open the temp name only if nothing exists there (never through a link), write bytes
 * unchanged, and replace the target in one step; *err_no is an errno value on both, so
 * callers tell "pick another temp name" (EEXIST) apart the same way everywhere.
 */
#if defined(__APPLE__)
/* _POSIX_C_SOURCE alone hides F_FULLFSYNC in macOS's <fcntl.h>. */
#define _DARWIN_C_SOURCE
#endif
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif
#include "wasmcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

/* Largest count passed to one write call: Linux moves at most about 2 GiB per write(2),
 * and WriteFile takes a 32-bit count. */
#define WRITE_CHUNK ((size_t)1 << 30)

static int mode_ok(unsigned int mode) { return mode <= 07777; }

#if defined(_WIN32)
/* ------------------------------------------------------------------ Win32 */

/* Longest path the wide-character APIs take (UNICODE_STRING counts bytes in 16 bits). */
#define WIDE_PATH_MAX 32767

/* The errno value CPython's OSError gives for a Win32 error code, for the codes that
 * opening, writing, flushing and renaming a file report; others read as EIO. */
static int errno_of(DWORD code) {
    switch (code) {
    case ERROR_FILE_EXISTS:
    case ERROR_ALREADY_EXISTS: return EEXIST;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
    case ERROR_INVALID_DRIVE:
    case ERROR_BAD_NETPATH:
    case ERROR_BAD_NET_NAME: return ENOENT;
    case ERROR_ACCESS_DENIED:
    case ERROR_SHARING_VIOLATION:
    case ERROR_LOCK_VIOLATION:
    case ERROR_CURRENT_DIRECTORY:
    case ERROR_WRITE_PROTECT:
    case ERROR_NETWORK_ACCESS_DENIED: return EACCES;
    case ERROR_DISK_FULL:
    case ERROR_HANDLE_DISK_FULL: return ENOSPC;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY: return ENOMEM;
    case ERROR_FILENAME_EXCED_RANGE: return ENAMETOOLONG;
    case ERROR_DIR_NOT_EMPTY: return ENOTEMPTY;
    case ERROR_NOT_SAME_DEVICE: return EXDEV;
    case ERROR_DIRECTORY: return ENOTDIR;
    case ERROR_INVALID_NAME:
    case ERROR_INVALID_PARAMETER: return EINVAL;
    case ERROR_NO_UNICODE_TRANSLATION: return EILSEQ;
    case ERROR_TOO_MANY_OPEN_FILES: return EMFILE;
    default: return EIO;
    }
}

/* A UTF-8 path as a NUL-terminated wide string from malloc. The Win32 file APIs take
 * UTF-16; bytes that are not UTF-8 are refused (EILSEQ), never replaced by U+FFFD, which
 * would name another file. Returns NULL with *err_no set. */
static wchar_t *wide_path(const char *path, int *err_no) {
    size_t n = strlen(path);
    if (n > (size_t)WIDE_PATH_MAX * 3) { /* at most 3 UTF-8 bytes per UTF-16 unit */
        *err_no = ENAMETOOLONG;
        return NULL;
    }
    int units = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, (int)n, NULL, 0);
    if (units <= 0) {
        *err_no = errno_of(GetLastError());
        return NULL;
    }
    if (units > WIDE_PATH_MAX) {
        *err_no = ENAMETOOLONG;
        return NULL;
    }
    wchar_t *wide = malloc(((size_t)units + 1) * sizeof(wchar_t));
    if (!wide) {
        *err_no = ENOMEM;
        return NULL;
    }
    int done = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, (int)n, wide, units);
    if (done != units) {
        *err_no = done <= 0 ? errno_of(GetLastError()) : EIO;
        free(wide);
        return NULL;
    }
    wide[units] = L'\0';
    return wide;
}

static int write_all(HANDLE h, const uint8_t *p, size_t n) {
    while (n > 0) {
        DWORD chunk = (DWORD)(n < WRITE_CHUNK ? n : WRITE_CHUNK);
        DWORD done = 0;
        if (!WriteFile(h, p, chunk, &done, NULL)) return 0;
        if (done == 0) {
            SetLastError(ERROR_WRITE_FAULT);
            return 0;
        }
        p += done;
        n -= done;
    }
    return 1;
}

static int atomic_write_os(const char *temp, const char *target, const uint8_t *payload,
                           size_t payload_len, const uint8_t *trailer, size_t trailer_len,
                           int flags, unsigned int mode, int *err_no) {
    /* Windows files carry no mode bits: a new file takes its folder's inherited ACL, which
     * is what the caller's privacy rule checks. The mode is still range-checked above. */
    (void)mode;
    wchar_t *wtemp = wide_path(temp, err_no);
    if (!wtemp) return WMC_ERR_OS;
    wchar_t *wtarget = wide_path(target, err_no);
    if (!wtarget) {
        free(wtemp);
        return WMC_ERR_OS;
    }
    /* CREATE_NEW fails on any existing name, a link included; FILE_FLAG_OPEN_REPARSE_POINT
     * makes the open act on a reparse point itself, never on what it points to. No
     * sharing: nobody else opens the half-written file. The handle writes bytes as given
     * (the CRT's text mode, which turns "\n" into "\r\n", is not involved). */
    HANDLE h = CreateFileW(wtemp, GENERIC_WRITE, 0, NULL, CREATE_NEW,
                           FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        *err_no = errno_of(GetLastError());
        free(wtemp);
        free(wtarget);
        return WMC_ERR_OS;
    }
    int ok = write_all(h, payload, payload_len) && write_all(h, trailer, trailer_len);
    /* FlushFileBuffers is Windows' fsync: the data and the file's metadata reach the disk. */
    if (ok && (flags & WMC_FSYNC_FILE)) ok = FlushFileBuffers(h) != 0;
    if (!ok) *err_no = errno_of(GetLastError());
    if (!CloseHandle(h) && ok) {
        ok = 0;
        *err_no = errno_of(GetLastError());
    }
    /* Windows cannot open a folder to flush it; MOVEFILE_WRITE_THROUGH instead returns only
     * once the rename itself is on disk, which is what the folder fsync gives on POSIX.
     * MOVEFILE_REPLACE_EXISTING replaces the target in one step (rename() refuses to). */
    DWORD move = MOVEFILE_REPLACE_EXISTING;
    if (flags & WMC_FSYNC_DIR) move |= MOVEFILE_WRITE_THROUGH;
    if (ok && !MoveFileExW(wtemp, wtarget, move)) {
        ok = 0;
        *err_no = errno_of(GetLastError());
    }
    if (!ok) DeleteFileW(wtemp);
    free(wtemp);
    free(wtarget);
    return ok ? WMC_OK : WMC_ERR_OS;
}

#else
/* ------------------------------------------------------------------ POSIX */

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif
/* POSIX read and write bytes unchanged; only some non-POSIX C libraries have a text mode. */
#ifndef O_BINARY
#define O_BINARY 0
#endif

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        size_t chunk = n < WRITE_CHUNK ? n : WRITE_CHUNK;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Make fd's data and metadata durable. On macOS fsync(2) only hands the data to the
 * drive, which may keep it in its volatile cache; F_FULLFSYNC asks the drive to flush.
 * Filesystems that cannot (some network and FUSE ones) refuse with ENOTSUP or EINVAL,
 * and there fsync is the best on offer. */
static int sync_fd(int fd) {
    int rc;
#ifdef F_FULLFSYNC
    do {
        rc = fcntl(fd, F_FULLFSYNC);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0 || (errno != ENOTSUP && errno != EINVAL)) return rc;
#endif
    do {
        rc = fsync(fd);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

/* fsync the folder that holds path (its part before the last '/', or "."): POSIX makes a
 * rename durable only once the folder holding the new name is synced. */
static int sync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) : 1;
    char *dir = malloc(dir_len + 1);
    if (!dir) {
        errno = ENOMEM;
        return -1;
    }
    if (!slash) {
        dir[0] = '.';
    } else if (dir_len == 0) {
        dir[0] = '/';
        dir_len = 1;
    } else {
        memcpy(dir, path, dir_len);
    }
    dir[dir_len] = '\0';
#ifdef O_DIRECTORY
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
#else
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
#endif
    int saved = errno;
    free(dir);
    if (fd < 0) {
        errno = saved;
        return -1;
    }
    int rc = sync_fd(fd);
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int atomic_write_os(const char *temp, const char *target, const uint8_t *payload,
                           size_t payload_len, const uint8_t *trailer, size_t trailer_len,
                           int flags, unsigned int mode, int *err_no) {
    /* O_EXCL with O_NOFOLLOW: an existing name, a planted link included, is never opened. */
    int fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_BINARY, 0644);
    if (fd < 0) {
        *err_no = errno;
        return WMC_ERR_OS;
    }
    /* The umask applied at open; an explicit mode (a shared cache's group-readable files)
     * is set on the new file before any byte is in it. */
    int ok = mode == 0 || fchmod(fd, (mode_t)mode) == 0;
    ok = ok && write_all(fd, payload, payload_len) == 0 && write_all(fd, trailer, trailer_len) == 0;
    if (ok && (flags & WMC_FSYNC_FILE)) ok = sync_fd(fd) == 0;
    if (!ok) *err_no = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        *err_no = errno;
    }
    /* rename(2) replaces the target in one step. */
    if (ok && rename(temp, target) != 0) {
        ok = 0;
        *err_no = errno;
    }
    if (!ok) {
        unlink(temp);
        return WMC_ERR_OS;
    }
    if ((flags & WMC_FSYNC_DIR) && sync_parent(target) != 0) {
        /* The new file is in place; only its durability is in doubt. Report it. */
        *err_no = errno;
        return WMC_ERR_OS;
    }
    return WMC_OK;
}
#endif

int wmc_atomic_write(const char *temp, const char *target, const uint8_t *payload,
                     size_t payload_len, const uint8_t *trailer, size_t trailer_len, int flags,
                     unsigned int mode, int *err_no) {
    if (!temp || !target || !err_no || (!payload && payload_len) || (!trailer && trailer_len))
        return WMC_ERR_ARGUMENT;
    *err_no = 0;
    if (temp[0] == '\0' || target[0] == '\0' || !mode_ok(mode)) return WMC_ERR_ARGUMENT;
    return atomic_write_os(temp, target, payload, payload_len, trailer, trailer_len, flags, mode,
                           err_no);
}
