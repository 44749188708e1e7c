/*
 * wasmcache C core: LZW codec, atomic file write, cache path building, filesystem type.
 *
 * Everything between the CDEF markers is also the cffi cdef of wasmcache._native,
 * so it must stay plain declarations (no preprocessor lines, no macros).
 * Every int function returns WMC_OK (0) or a negative wmc_status; wmc_strerror names it.
 */
#ifndef WASMCACHE_H
#define WASMCACHE_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
enum wmc_status {
    WMC_OK = 0,
    WMC_ERR_NOMEM = -1,          /* an allocation failed */
    WMC_ERR_ARGUMENT = -2,       /* a NULL pointer or an out-of-range argument */
    WMC_ERR_OS = -3,             /* a system call failed; *err_no holds errno */
    WMC_ERR_UNSUPPORTED = -4,    /* the platform has no such facility */
    WMC_ERR_LZW_CODE = -10,      /* a code above the next free code, or a bad first code */
    WMC_ERR_LZW_NO_END = -11,    /* the input ended before the end code */
    WMC_ERR_LZW_TOO_LARGE = -12, /* the output would exceed the caller's cap */
    WMC_ERR_LZW_NOT_ELF = -13,   /* WMC_LZW_EXPECT_ELF: the output cannot be an ELF image */
    WMC_ERR_PATH_COMPONENT = -20,/* a path component is empty or could escape its folder */
    WMC_ERR_PATH_TOO_LONG = -21  /* the output buffer is too small for the path */
};

enum wmc_write_flags {
    WMC_FSYNC_FILE = 1,          /* fsync the temp file before the rename */
    WMC_FSYNC_DIR = 2            /* fsync the folder after the rename */
};

enum wmc_lzw_flags {
    WMC_LZW_EXPECT_ELF = 1       /* stop once the output cannot be one whole ELF image */
};

/* A short, constant English description of a wmc_status. */
const char *wmc_strerror(int status);

/* Decode an LZW stream (MSB bit order, 8-bit symbols, weezl-compatible).
 * On success the *out_len decoded bytes start at *out_data, inside the buffer *out_buf
 * (from malloc; free it with wmc_free). Decoding that would produce more than max_out
 * bytes fails with WMC_ERR_LZW_TOO_LARGE without allocating more than max_out + 288
 * bytes. With WMC_LZW_EXPECT_ELF in flags, the first 64 output bytes must be an ELF
 * file header and the output may not pass the end of the image that header describes
 * (else WMC_ERR_LZW_NOT_ELF, as soon as that is known). On failure *out_buf is NULL and
 * *err_offset is the input byte offset where the bad code started (in_len when the input
 * ended without an end code). */
int wmc_lzw_decode(const uint8_t *in, size_t in_len, size_t max_out, int flags,
                   uint8_t **out_buf, uint8_t **out_data, size_t *out_len, size_t *err_offset);

/* Encode bytes as an LZW stream (clear code first, end code last, zero-padded).
 * On success *out is a buffer from malloc holding *out_len bytes: free it with wmc_free. */
int wmc_lzw_encode(const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len);

void wmc_free(void *p);

/* Write payload then trailer to the new file temp, created exclusively (POSIX:
 * O_CREAT|O_EXCL|O_NOFOLLOW; Windows: CREATE_NEW with FILE_FLAG_OPEN_REPARSE_POINT), so an
 * existing name or a planted link is never opened, then rename it over target in one step.
 * Bytes are written unchanged (no text mode anywhere). A non-zero mode (at most 07777) is
 * set on the temp file before it is written (else it keeps 0644 less the umask); Windows
 * files have no mode bits and take their folder's inherited ACL. WMC_FSYNC_FILE flushes
 * the file before the rename (fsync; F_FULLFSYNC on macOS; FlushFileBuffers on Windows);
 * WMC_FSYNC_DIR makes the rename durable (POSIX: fsync of the folder; Windows, which cannot
 * flush a folder: MOVEFILE_WRITE_THROUGH). Paths are bytes on POSIX and UTF-8 on Windows
 * (anything else fails with EILSEQ). On failure the temp file (if created) is removed,
 * target is untouched, and *err_no holds the errno of the failing call (on Windows, the
 * errno CPython gives the Win32 error; EEXIST: pick another temp). */
int wmc_atomic_write(const char *temp, const char *target, const uint8_t *payload,
                     size_t payload_len, const uint8_t *trailer, size_t trailer_len, int flags,
                     unsigned int mode, int *err_no);

/* Write "<dir>/<engine_id>-v<version>/<HEX>.bin" (HEX: the digest in uppercase hex)
 * into out (NUL-terminated, out_cap bytes at most); *out_len gets its length.
 * dir must be non-empty and hold no NUL; engine_id must be [A-Za-z0-9._-]+ and not
 * "." or ".." (on Windows, nor a device name such as "NUL.x"); digest_len must be 1..64.
 * The separator is '/' on POSIX; on Windows it is '\\', and dir may end in either. */
int wmc_cache_path(const char *dir, size_t dir_len, const char *engine_id, size_t engine_id_len,
                   uint32_t version, const uint8_t *digest, size_t digest_len,
                   char *out, size_t out_cap, size_t *out_len);

/* Write the temp name of a file being written to target, "<folder>/.<name>.<pid>.<16 hex
 * digits of suffix>.tmp", into out (NUL-terminated, out_cap bytes at most). target must
 * hold a file name (not end in a separator) and no NUL. The folder part ends at the last
 * '/' (on Windows: the last '/' or '\\', else a drive prefix "C:"). */
int wmc_temp_path(const char *target, size_t target_len, uint64_t pid, uint64_t suffix,
                  char *out, size_t out_cap, size_t *out_len);

/* The type number (statfs f_type, a "magic" such as 0xEF53 for ext2/3/4) of the
 * filesystem holding path, following links, into *out_magic. WMC_ERR_UNSUPPORTED where the
 * platform has no such number (anything but Linux); WMC_ERR_OS with *err_no on failure. */
int wmc_fs_magic(const char *path, uint64_t *out_magic, int *err_no);

/* The id of the mount that holds the open file fd (statx's stx_mnt_id) into *out_id, and
 * in *out_unique whether it is the kernel's unique id (never reused until reboot; Linux
 * 6.8) rather than the reusable one (Linux 5.8). WMC_ERR_UNSUPPORTED where the kernel or
 * platform gives neither; WMC_ERR_OS with *err_no on failure. */
int wmc_mount_id(int fd, uint64_t *out_id, int *out_unique, int *err_no);
/* CDEF END */

#endif
