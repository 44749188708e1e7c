/* Build "<dir>/<engine id>-v<version>/<HEX>.bin" with checked components. */
#include "wasmcache.h"

#include <stdio.h>
#include <string.h>

#define MAX_DIGEST 64

static int engine_id_ok(const char *s, size_t n) {
    if (n == 0) return 0;
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

int wmc_cache_path(const char *dir, size_t dir_len, const char *engine_id, size_t engine_id_len,
                   uint32_t version, const uint8_t *digest, size_t digest_len,
                   char *out, size_t out_cap, size_t *out_len) {
    static const char hex[] = "0123456789ABCDEF";
    if (!dir || !engine_id || !digest || !out || !out_len) return WMC_ERR_ARGUMENT;
    if (digest_len == 0 || digest_len > MAX_DIGEST) return WMC_ERR_ARGUMENT;
    if (dir_len == 0 || memchr(dir, '\0', dir_len) != NULL) return WMC_ERR_PATH_COMPONENT;
    if (!engine_id_ok(engine_id, engine_id_len)) return WMC_ERR_PATH_COMPONENT;

    /* Drop trailing slashes of dir, but keep a lone "/". */
    while (dir_len > 1 && dir[dir_len - 1] == '/') dir_len--;
    int root = dir_len == 1 && dir[0] == '/';

    char version_text[16];
    int vlen = snprintf(version_text, sizeof version_text, "%lu", (unsigned long)version);
    if (vlen <= 0) return WMC_ERR_ARGUMENT;

    size_t need = dir_len + (root ? 0 : 1) + engine_id_len + 2 + (size_t)vlen + 1 +
                  2 * digest_len + 4;
    if (need + 1 > out_cap || need < dir_len) return WMC_ERR_PATH_TOO_LONG;

    char *p = out;
    memcpy(p, dir, dir_len);
    p += dir_len;
    if (!root) *p++ = '/';
    memcpy(p, engine_id, engine_id_len);
    p += engine_id_len;
    *p++ = '-';
    *p++ = 'v';
    memcpy(p, version_text, (size_t)vlen);
    p += vlen;
    *p++ = '/';
    for (size_t i = 0; i < digest_len; i++) {
        *p++ = hex[digest[i] >> 4];
        *p++ = hex[digest[i] & 15];
    }
    memcpy(p, ".bin", 4);
    p += 4;
    *p = '\0';
    *out_len = (size_t)(p - out);
    return WMC_OK;
}
