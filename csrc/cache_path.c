/*
 * The two names the C core builds: an entry's path "<dir>/<engine id>-v<version>/<HEX>.bin"
 * and a temp file's path "<folder>/.<name>.<pid>.<16 hex>.tmp". Every size is checked
 * before it is added, so no length can wrap.
 *
 * Separators: POSIX has only the slash (a backslash is an ordinary byte of a name there).
 * Windows takes both slash and backslash, and a drive prefix "C:" also ends a folder part
 * ("C:x.bin" is x.bin in drive C's current folder); the separator added there is Windows'
 * own backslash. Windows also opens a device, not a file, for a name whose part before
 * its first dot is CON, PRN, AUX, NUL, COM1-9 or LPT1-9, so such engine ids are refused.
 */
#include "wasmcache.h"

#include <string.h>

#if defined(_WIN32)
#define SEPARATOR '\\'
static int is_separator(char c) { return c == '/' || c == '\\'; }
/* Length of a drive prefix "X:" at the start of path (0 if none). */
static size_t drive_prefix(const char *path, size_t len) {
    if (len >= 2 && path[1] == ':' &&
        ((path[0] >= 'A' && path[0] <= 'Z') || (path[0] >= 'a' && path[0] <= 'z')))
        return 2;
    return 0;
}
#else
#define SEPARATOR '/'
static int is_separator(char c) { return c == '/'; }
static size_t drive_prefix(const char *path, size_t len) {
    (void)path;
    (void)len;
    return 0;
}
#endif

#define MAX_DIGEST 64
static const char hex_upper[] = "0123456789ABCDEF";
static const char hex_lower[] = "0123456789abcdef";

#if defined(_WIN32)
static char upper(char c) { return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c; }

/* Whether s[0..n) names one of Windows' reserved devices (any case). */
static int device_name(const char *s, size_t n) {
    static const char *const names[] = {"CON", "PRN", "AUX", "NUL"};
    for (size_t k = 0; k < 4; k++) {
        if (n == 3 && upper(s[0]) == names[k][0] && upper(s[1]) == names[k][1] &&
            upper(s[2]) == names[k][2])
            return 1;
    }
    if (n == 4 && s[3] >= '1' && s[3] <= '9') {
        char a = upper(s[0]), b = upper(s[1]), c = upper(s[2]);
        if ((a == 'C' && b == 'O' && c == 'M') || (a == 'L' && b == 'P' && c == 'T')) return 1;
    }
    return 0;
}
#endif

static int engine_id_ok(const char *s, size_t n) {
    if (n == 0) return 0;
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
#if defined(_WIN32)
    /* The folder is "<engine id>-v<version>": its part before the first dot is the engine
     * id's part before its first dot, if it has a dot. */
    const char *dot = memchr(s, '.', n);
    if (dot && device_name(s, (size_t)(dot - s))) return 0;
#endif
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

/* *total += n, or 0 if that would wrap. */
static int add_size(size_t *total, size_t n) {
    if (n > SIZE_MAX - *total) return 0;
    *total += n;
    return 1;
}

/* Decimal digits of v into buf (at least 20 bytes, no NUL); returns how many. */
static size_t put_decimal(char *buf, uint64_t v) {
    char rev[20];
    size_t n = 0;
    do {
        rev[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) buf[i] = rev[n - 1 - i];
    return n;
}

int wmc_cache_path(const char *dir, size_t dir_len, const char *engine_id, size_t engine_id_len,
                   uint32_t version, const uint8_t *digest, size_t digest_len,
                   char *out, size_t out_cap, size_t *out_len) {
    if (!dir || !engine_id || !digest || !out || !out_len) return WMC_ERR_ARGUMENT;
    if (digest_len == 0 || digest_len > MAX_DIGEST) return WMC_ERR_ARGUMENT;
    if (dir_len == 0 || memchr(dir, '\0', dir_len) != NULL) return WMC_ERR_PATH_COMPONENT;
    if (!engine_id_ok(engine_id, engine_id_len)) return WMC_ERR_PATH_COMPONENT;

    /* Drop trailing separators of dir, but keep the one of a root ("/", or Windows' "C:" and
     * a backslash). A bare drive "C:" is that drive's current folder: nothing is added. */
    size_t drive = drive_prefix(dir, dir_len);
    while (dir_len > drive + 1 && is_separator(dir[dir_len - 1])) dir_len--;
    int root = dir_len == drive || (dir_len == drive + 1 && is_separator(dir[drive]));

    char version_text[20];
    size_t vlen = put_decimal(version_text, version);

    /* dir [/] engine_id -v version / HEX .bin NUL */
    size_t need = dir_len;
    if (!add_size(&need, (root ? 0u : 1u) + 2u + 1u + 4u + 1u) || !add_size(&need, engine_id_len) ||
        !add_size(&need, vlen) || !add_size(&need, 2 * digest_len))
        return WMC_ERR_PATH_TOO_LONG;
    if (need > out_cap) return WMC_ERR_PATH_TOO_LONG;

    char *p = out;
    memcpy(p, dir, dir_len);
    p += dir_len;
    if (!root) *p++ = SEPARATOR;
    memcpy(p, engine_id, engine_id_len);
    p += engine_id_len;
    *p++ = '-';
    *p++ = 'v';
    memcpy(p, version_text, vlen);
    p += vlen;
    *p++ = SEPARATOR;
    for (size_t i = 0; i < digest_len; i++) {
        *p++ = hex_upper[digest[i] >> 4];
        *p++ = hex_upper[digest[i] & 15];
    }
    memcpy(p, ".bin", 4);
    p += 4;
    *p = '\0';
    *out_len = (size_t)(p - out);
    return WMC_OK;
}

int wmc_temp_path(const char *target, size_t target_len, uint64_t pid, uint64_t suffix,
                  char *out, size_t out_cap, size_t *out_len) {
    if (!target || !out || !out_len) return WMC_ERR_ARGUMENT;
    if (target_len == 0 || is_separator(target[target_len - 1]) ||
        memchr(target, '\0', target_len) != NULL)
        return WMC_ERR_PATH_COMPONENT;

    /* The folder part: up to and with the last separator, else a drive prefix, else none. */
    size_t dir_len = drive_prefix(target, target_len);
    for (size_t i = target_len; i > 0; i--) {
        if (is_separator(target[i - 1])) {
            dir_len = i;
            break;
        }
    }
    if (dir_len == target_len) return WMC_ERR_PATH_COMPONENT; /* "C:": no file name */
    const char *name = target + dir_len;
    size_t name_len = target_len - dir_len;

    char pid_text[20];
    size_t pid_len = put_decimal(pid_text, pid);

    /* folder/ . name . pid . 16 hex .tmp NUL */
    size_t need = dir_len;
    if (!add_size(&need, name_len) || !add_size(&need, pid_len) ||
        !add_size(&need, 1u + 1u + 1u + 16u + 4u + 1u))
        return WMC_ERR_PATH_TOO_LONG;
    if (need > out_cap) return WMC_ERR_PATH_TOO_LONG;

    char *p = out;
    memcpy(p, target, dir_len);
    p += dir_len;
    *p++ = '.';
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = '.';
    memcpy(p, pid_text, pid_len);
    p += pid_len;
    *p++ = '.';
    for (int shift = 60; shift >= 0; shift -= 4) *p++ = hex_lower[(suffix >> shift) & 15];
    memcpy(p, ".tmp", 4);
    p += 4;
    *p = '\0';
    *out_len = (size_t)(p - out);
    return WMC_OK;
}
