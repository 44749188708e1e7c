/*
 * What kind of filesystem, and which mount of it, holds a file. Direct mode trusts a file's
 * stamp (device, inode, size, mtime, ctime) only on filesystems known to keep those honest,
 * told apart by the type number the kernel reports, and only within one mount (an image
 * mounted again may repeat an earlier image's stamps). Only Linux has these numbers;
 * elsewhere the caller is told so and reads the file instead.
 */
#ifdef __linux__
#define _GNU_SOURCE
#endif
#include "wasmcache.h"

#include <errno.h>

#ifdef __linux__
#include <string.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>
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
    /* macOS and the BSDs name filesystems by string (f_fstypename), Windows by volume
     * flags: no number to check against the allow-list, so no stamp is trusted. */
    *out_magic = 0;
    return WMC_ERR_UNSUPPORTED;
#endif
}

/* statx(2) is called through syscall(2) with its buffer laid out here (the layout is part
 * of the kernel's ABI: 256 bytes, stx_mask at 0, stx_mnt_id at 0x90), so the C core needs
 * neither glibc 2.28's statx() nor kernel headers that know it. */
#define STATX_BUFFER 256u
#define STATX_MASK_AT 0u
#define STATX_MNT_ID_AT 0x90u
#define MOUNT_ID 0x00001000u        /* STATX_MNT_ID (Linux 5.8) */
#define MOUNT_ID_UNIQUE 0x00004000u /* STATX_MNT_ID_UNIQUE (Linux 6.8) */
#define EMPTY_PATH 0x1000           /* AT_EMPTY_PATH */
/* The kernel numbers unique mount ids from 2^31 up, above every reused id. A "unique" id
 * below that did not come from a kernel that keeps them (qemu-user 7.2 passes the mask
 * bit through but leaves the field 0): it is reported as not unique, so the caller falls
 * back to the rule for kernels without unique ids instead of trusting one number for
 * every mount. */
#define MOUNT_ID_UNIQUE_FIRST (UINT64_C(1) << 31)

int wmc_mount_id(int fd, uint64_t *out_id, int *out_unique, int *err_no) {
    if (fd < 0 || out_id == NULL || out_unique == NULL || err_no == NULL)
        return WMC_ERR_ARGUMENT;
    *err_no = 0;
    *out_id = 0;
    *out_unique = 0;
#if defined(__linux__) && defined(SYS_statx)
    uint64_t buffer[STATX_BUFFER / sizeof(uint64_t)];
    memset(buffer, 0, sizeof buffer);
    long rc;
    do {
        rc = syscall(SYS_statx, fd, "", EMPTY_PATH, MOUNT_ID | MOUNT_ID_UNIQUE, buffer);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        if (errno == ENOSYS) return WMC_ERR_UNSUPPORTED;
        *err_no = errno;
        return WMC_ERR_OS;
    }
    uint32_t mask;
    memcpy(&mask, (const unsigned char *)buffer + STATX_MASK_AT, sizeof mask);
    if (!(mask & (MOUNT_ID | MOUNT_ID_UNIQUE))) return WMC_ERR_UNSUPPORTED;
    memcpy(out_id, (const unsigned char *)buffer + STATX_MNT_ID_AT, sizeof *out_id);
    *out_unique = (mask & MOUNT_ID_UNIQUE) != 0 && *out_id >= MOUNT_ID_UNIQUE_FIRST;
    return WMC_OK;
#else
    /* No statx outside Linux (nor in headers too old to number it): no mount id; the
     * outputs stay zero. */
    return WMC_ERR_UNSUPPORTED;
#endif
}
