/*
 * wasmcache C core: LZW codec, atomic file write, cache path building.
 *
 * Everything between the CDEF markers is also the cffi cdef of wasmcache._native,
 * so it must stay plain declarations (no preprocessor lines, no macros).
 * Every function returns WMC_OK (0) or a negative wmc_status.
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
    WMC_ERR_LZW_CODE = -10,      /* a code above the next free code, or a bad first code */
    WMC_ERR_LZW_NO_END = -11,    /* the input ended before the end code */
    WMC_ERR_LZW_TOO_LARGE = -12, /* the output would exceed the caller's cap */
    WMC_ERR_PATH_COMPONENT = -20,/* a path component is empty or could escape its folder */
    WMC_ERR_PATH_TOO_LONG = -21  /* the output buffer is too small for the path */
};

enum wmc_write_flags {
    WMC_FSYNC_FILE = 1,          /* fsync the temp file before the rename */
    WMC_FSYNC_DIR = 2            /* fsync the folder after the rename */
};

/* Decode an LZW stream (MSB bit order, 8-bit symbols, weezl-compatible).
 * On success the *out_len decoded bytes start at *out_data, inside the buffer *out_buf
 * (from malloc; free it with wmc_free). Decoding that would produce more than max_out
 * bytes fails with WMC_ERR_LZW_TOO_LARGE without allocating more than max_out + 288
 * bytes. On failure *out_buf is NULL and *err_offset is the input byte offset where the
 * bad code started (in_len when the input ended without an end code). */
int wmc_lzw_decode(const uint8_t *in, size_t in_len, size_t max_out,
                   uint8_t **out_buf, uint8_t **out_data, size_t *out_len, size_t *err_offset);

/* Encode bytes as an LZW stream (clear code first, end code last, zero-padded).
 * On success *out is a buffer from malloc holding *out_len bytes: free it with wmc_free. */
int wmc_lzw_encode(const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len);

void wmc_free(void *p);

/* Write payload then trailer to a new temp file created exclusively (O_EXCL|O_NOFOLLOW)
 * in target's folder, then rename it over target. On failure the temp file is removed,
 * target is untouched, and *err_no holds the errno of the failing call. */
int wmc_atomic_write(const char *target, const uint8_t *payload, size_t payload_len,
                     const uint8_t *trailer, size_t trailer_len, int flags, int *err_no);

/* Write "<dir>/<engine_id>-v<version>/<HEX>.bin" (HEX: the digest in uppercase hex)
 * into out (NUL-terminated, out_cap bytes at most); *out_len gets its length.
 * dir must be non-empty and hold no NUL; engine_id must be [A-Za-z0-9._-]+ and not
 * "." or ".."; digest_len must be 1..64. */
int wmc_cache_path(const char *dir, size_t dir_len, const char *engine_id, size_t engine_id_len,
                   uint32_t version, const uint8_t *digest, size_t digest_len,
                   char *out, size_t out_cap, size_t *out_len);
/* CDEF END */

#endif
