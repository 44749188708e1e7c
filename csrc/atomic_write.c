/*
 * Write a file so that readers only ever see the old content or the whole new content:
 * write to a temp file created exclusively in the target's folder, then rename it over
 * the target. The caller names the temp file (wmc_temp_path builds the name).
 */
#define _POSIX_C_SOURCE 200809L
#include "wasmcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif

/* Largest count passed to one write(2); Linux moves at most about 2 GiB per call anyway. */
#define WRITE_CHUNK ((size_t)1 << 30)

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

static int fsync_retry(int fd) {
    int rc;
    do {
        rc = fsync(fd);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

/* fsync the folder that holds path (its part before the last '/', or "."). */
static int fsync_parent(const char *path) {
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
    int rc = fsync_retry(fd);
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int wmc_atomic_write(const char *temp, const char *target, const uint8_t *payload,
                     size_t payload_len, const uint8_t *trailer, size_t trailer_len, int flags,
                     unsigned int mode, int *err_no) {
    if (!temp || !target || !err_no || (!payload && payload_len) || (!trailer && trailer_len))
        return WMC_ERR_ARGUMENT;
    *err_no = 0;
    if (temp[0] == '\0' || target[0] == '\0' || mode > 07777) return WMC_ERR_ARGUMENT;

    int fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        *err_no = errno;
        return WMC_ERR_OS;
    }
    /* The umask applied at open; an explicit mode (a shared cache's group-readable files)
     * is set on the new file before any byte is in it. */
    int ok = mode == 0 || fchmod(fd, (mode_t)mode) == 0;
    ok = ok && write_all(fd, payload, payload_len) == 0 && write_all(fd, trailer, trailer_len) == 0;
    if (ok && (flags & WMC_FSYNC_FILE)) ok = fsync_retry(fd) == 0;
    if (!ok) *err_no = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        *err_no = errno;
    }
    if (ok && rename(temp, target) != 0) {
        ok = 0;
        *err_no = errno;
    }
    if (!ok) {
        unlink(temp);
        return WMC_ERR_OS;
    }
    if ((flags & WMC_FSYNC_DIR) && fsync_parent(target) != 0) {
        /* The new file is in place; only its durability is in doubt. Report it. */
        *err_no = errno;
        return WMC_ERR_OS;
    }
    return WMC_OK;
}
