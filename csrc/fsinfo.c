/*
 * What kind of filesystem holds a path. Direct mode trusts a file's stamp (device, inode,
 * size, mtime, ctime) only on filesystems known to keep those honest, and it tells them
 * apart by the type number the kernel reports. Only Linux has such a number with a fixed
 * meaning; elsewhere the caller is told so and reads the file instead.
 */
#ifdef __linux__
#define _GNU_SOURCE
#endif
#include "wasmcache.h"

#include <errno.h>

#ifdef __linux__
#include <sys/vfs.h>
#endif

int wmc_fs_magic(const char *path, uint64_t *out_magic, int *err_no) {
    if (path == NULL || out_magic == NULL || err_no == NULL) return WMC_ERR_ARGUMENT;
    *err_no = 0;
#ifdef __linux__
    struct statfs info;
    int rc;
    do {
        rc = statfs(path, &info);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        *err_no = errno;
        return WMC_ERR_OS;
    }
    /* f_type is a signed word on some architectures: keep its 32 bits as the kernel set them. */
    *out_magic = (uint64_t)(uint32_t)info.f_type;
    return WMC_OK;
#else
    *out_magic = 0;
    return WMC_ERR_UNSUPPORTED;
#endif
}
