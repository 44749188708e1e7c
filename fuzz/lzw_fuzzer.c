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
    /* The ELF-expecting decode either fails with an LZW status or agrees with the plain one. */
    uint8_t *ebuf = NULL, *eout = NULL;
    size_t elen = 0;
    int erc = wmc_lzw_decode(data, size, CAP, WMC_LZW_EXPECT_ELF, &ebuf, &eout, &elen, &err);
    check(erc == WMC_OK || erc == WMC_ERR_LZW_CODE || erc == WMC_ERR_LZW_NO_END ||
          erc == WMC_ERR_LZW_TOO_LARGE || erc == WMC_ERR_LZW_NOT_ELF);
    check(erc == WMC_OK || ebuf == NULL);
    int rc = wmc_lzw_decode(data, size, CAP, 0, &buf, &out, &len, &err);
    if (rc != WMC_OK) {
        check(rc == WMC_ERR_LZW_CODE || rc == WMC_ERR_LZW_NO_END || rc == WMC_ERR_LZW_TOO_LARGE);
        check(buf == NULL && err <= size);
        wmc_free(ebuf);
        return 0;
    }
    check(len <= CAP);
    if (erc == WMC_OK) {
        check(elen == len && memcmp(eout, out, len) == 0 && len >= 64);
        wmc_free(ebuf);
    }

    uint8_t *buf2 = NULL, *out2 = NULL;
    size_t len2 = 0;
    check(wmc_lzw_decode(data, size, len, 0, &buf2, &out2, &len2, &err) == WMC_OK);
    check(len2 == len && memcmp(out, out2, len) == 0);
    wmc_free(buf2);
    if (len > 0) {
        check(wmc_lzw_decode(data, size, len - 1, 0, &buf2, &out2, &len2, &err) ==
              WMC_ERR_LZW_TOO_LARGE);
    }

    uint8_t *enc = NULL;
    size_t enc_len = 0;
    check(wmc_lzw_encode(out, len, &enc, &enc_len) == WMC_OK);
    check(wmc_lzw_decode(enc, enc_len, len, 0, &buf2, &out2, &len2, &err) == WMC_OK);
    check(len2 == len && memcmp(out, out2, len) == 0);
    wmc_free(buf2);
    wmc_free(enc);
    wmc_free(buf);
    return 0;
}
