/*
 * libFuzzer target for the C LZW codec: coverage-guided on the C code itself.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc fuzz/lzw_fuzzer.c csrc/lzw.c \
 *         -o lzw_fuzzer && ./lzw_fuzzer -max_total_time=60 fuzz/corpus
 *
 * Every input must decode or fail with an LZW status, never crash or touch memory it does
 * not own; what decodes must decode the same under an exact output cap, fail under a cap one
 * byte smaller, and survive an encode/decode round trip.
 */
#include <stdlib.h>
#include <string.h>

#include "wasmcache.h"

#define CAP ((size_t)1 << 22)

static void check(int ok) {
    if (!ok) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = NULL, *out = NULL;
    size_t len = 0, err = 0;
    int rc = wmc_lzw_decode(data, size, CAP, &buf, &out, &len, &err);
    if (rc != WMC_OK) {
        check(rc == WMC_ERR_LZW_CODE || rc == WMC_ERR_LZW_NO_END || rc == WMC_ERR_LZW_TOO_LARGE);
        check(buf == NULL && err <= size);
        return 0;
    }
    check(len <= CAP);

    uint8_t *buf2 = NULL, *out2 = NULL;
    size_t len2 = 0;
    check(wmc_lzw_decode(data, size, len, &buf2, &out2, &len2, &err) == WMC_OK);
    check(len2 == len && memcmp(out, out2, len) == 0);
    wmc_free(buf2);
    if (len > 0) {
        check(wmc_lzw_decode(data, size, len - 1, &buf2, &out2, &len2, &err) ==
              WMC_ERR_LZW_TOO_LARGE);
    }

    uint8_t *enc = NULL;
    size_t enc_len = 0;
    check(wmc_lzw_encode(out, len, &enc, &enc_len) == WMC_OK);
    check(wmc_lzw_decode(enc, enc_len, len, &buf2, &out2, &len2, &err) == WMC_OK);
    check(len2 == len && memcmp(out, out2, len) == 0);
    wmc_free(buf2);
    wmc_free(enc);
    wmc_free(buf);
    return 0;
}
