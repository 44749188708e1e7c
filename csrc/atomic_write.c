/*
 * Write a file so that readers only ever see the old content or the whole new content:
 * write to a temp file created exclusively in the target's folder, then rename it over
 * the target. The temp name is ".<target name>.<pid>.<16 hex digits>.tmp".
 */
#define _POSIX_C_SOURCE 200809L
#include "wasmcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif

/* Largest count passed to one write(2); Linux moves at most about 2 GiB per call anyway. */
#define WRITE_CHUNK ((size_t)1 << 30)
#define CREATE_ATTEMPTS 64

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t temp_suffix(void) {
    static uint64_t counter;
    uint64_t n = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    struct timespec ts = {0, 0};
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec;
    return mix64(seed ^ mix64(n ^ ((uint64_t)getpid() << 40)) ^ (uint64_t)(uintptr_t)&counter);
}

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

static int fsync_dir(const char *dir) {
#ifdef O_DIRECTORY
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
#else
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
#endif
    if (fd < 0) return -1;
    int rc;
    do {
        rc = fsync(fd);
    } while (rc != 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int wmc_atomic_write(const char *target, const uint8_t *payload, size_t payload_len,
                     const uint8_t *trailer, size_t trailer_len, int flags, int *err_no) {
    if (!target || !err_no || (!payload && payload_len) || (!trailer && trailer_len))
        return WMC_ERR_ARGUMENT;
    *err_no = 0;
    size_t target_len = strlen(target);
    if (target_len == 0 || target[target_len - 1] == '/') return WMC_ERR_ARGUMENT;

    const char *slash = strrchr(target, '/');
    size_t dir_len = slash ? (size_t)(slash - target) : 0;
    const char *name = slash ? slash + 1 : target;
    /* dir + "/." + name + "." + pid (<= 20) + "." + 16 hex + ".tmp" + NUL */
    size_t tmp_cap = target_len + 2 + 1 + 20 + 1 + 16 + 4 + 1;
    char *tmp = malloc(tmp_cap);
    char *dir = malloc(dir_len + 2);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return WMC_ERR_NOMEM;
    }
    if (slash) {
        memcpy(dir, target, dir_len);
        dir[dir_len] = '\0';
        if (dir_len == 0) strcpy(dir, "/");
    } else {
        strcpy(dir, ".");
    }

    int fd = -1;
    for (int attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
        snprintf(tmp, tmp_cap, "%.*s%s.%s.%ld.%016llx.tmp", (int)dir_len, target,
                 slash ? "/" : "", name, (long)getpid(), (unsigned long long)temp_suffix());
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd >= 0 || errno != EEXIST) break;
    }
    if (fd < 0) {
        *err_no = errno;
        free(tmp);
        free(dir);
        return WMC_ERR_OS;
    }

    int ok = write_all(fd, payload, payload_len) == 0 && write_all(fd, trailer, trailer_len) == 0;
    if (ok && (flags & WMC_FSYNC_FILE)) {
        int rc;
        do {
            rc = fsync(fd);
        } while (rc != 0 && errno == EINTR);
        ok = rc == 0;
    }
    if (!ok) *err_no = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        *err_no = errno;
    }
    if (ok && rename(tmp, target) != 0) {
        ok = 0;
        *err_no = errno;
    }
    if (!ok) {
        unlink(tmp);
    } else if ((flags & WMC_FSYNC_DIR) && fsync_dir(dir) != 0) {
        /* The new file is in place; only its durability is in doubt. Report it. */
        *err_no = errno;
        ok = 0;
    }
    free(tmp);
    free(dir);
    return ok ? WMC_OK : WMC_ERR_OS;
}
