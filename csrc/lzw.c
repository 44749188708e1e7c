/*
 * LZW codec in the format of the `weezl` crate with BitOrder::Msb and 8-bit symbols:
 * clear = 256, end = 257, first free code 258, codes 9 to 12 bits wide, packed
 * most-significant bit first. The decoder widens after adding the entry 2^w - 1
 * (GIF style), keeps a full table frozen until a clear code, and ignores input after
 * the end code.
 *
 * Decoding copies each code's string from where it was written earlier in the output
 * (every table entry is a prefix of text already decoded), so a code costs one short
 * copy instead of a walk down a chain of links.
 */
#include "wasmcache.h"

#include <stdlib.h>
#include <string.h>

#define LZW_CLEAR 256u
#define LZW_END 257u
#define LZW_FIRST_FREE 258u
#define LZW_MAX_CODES 4096u
#define LZW_MIN_WIDTH 9u
#define LZW_MAX_WIDTH 12u
/* Longest string a code can stand for: one byte plus one per table entry. */
#define LZW_MAX_STRING (1u + LZW_MAX_CODES - LZW_FIRST_FREE)
/* Room kept past the logical end of the output so copies may run in 16-byte chunks. */
#define COPY_SLACK 32u

void wmc_free(void *p) { free(p); }

const char *wmc_strerror(int status) {
    switch (status) {
    case WMC_OK: return "success";
    case WMC_ERR_NOMEM: return "out of memory";
    case WMC_ERR_ARGUMENT: return "invalid argument";
    case WMC_ERR_OS: return "system call failed";
    case WMC_ERR_UNSUPPORTED: return "not supported on this platform";
    case WMC_ERR_LZW_CODE: return "invalid LZW code";
    case WMC_ERR_LZW_NO_END: return "LZW stream ends without an end code";
    case WMC_ERR_LZW_TOO_LARGE: return "LZW stream decodes past the output cap";
    case WMC_ERR_LZW_NOT_ELF: return "LZW stream does not hold one whole ELF image";
    case WMC_ERR_PATH_COMPONENT: return "unsafe or empty path component";
    case WMC_ERR_PATH_TOO_LONG: return "path too long";
    default: return "unknown status";
    }
}

/* ---------------------------------------------------------------- decoder */

/* The output buffer starts with the 256 byte values in order, so that a literal code c is
 * "the 1-byte string at offset c" like every other code: one copy path for all codes. */
#define PREFIX 256u

typedef struct {
    uint8_t *data;
    size_t len;   /* bytes written, PREFIX included */
    size_t cap;   /* usable bytes; the allocation is cap + COPY_SLACK */
    size_t max;   /* cap on len, PREFIX included */
} out_buffer;

/* Grow so that `need` more bytes fit, or fail if that would pass the caller's cap. */
static int out_grow(out_buffer *ob, size_t need) {
    if (need > ob->max - ob->len) return WMC_ERR_LZW_TOO_LARGE;
    size_t want = ob->len + need;
    size_t cap = ob->cap;
    while (cap < want) cap = cap > ob->max / 2 ? ob->max : cap * 2;
    uint8_t *grown = realloc(ob->data, cap + COPY_SLACK);
    if (!grown) return WMC_ERR_NOMEM;
    ob->data = grown;
    ob->cap = cap;
    return WMC_OK;
}

/* Copy n >= 1 bytes from src to dst, where src < dst and src + n <= dst + 1, in 16-byte
 * chunks that may write up to 15 bytes past dst + n (into the slack, or into text that
 * later codes overwrite). Every byte of src before dst is read before anything can
 * change it; the one byte that may overlap (src + n - 1 == dst, the KwKwK case) is
 * stored again at the end, once dst[0] holds its final value. */
static inline void copy_string(uint8_t *dst, const uint8_t *src, size_t n) {
    size_t i = 0;
    do {
        uint8_t chunk[16];
        memcpy(chunk, src + i, 16);
        memcpy(dst + i, chunk, 16);
        i += 16;
    } while (i < n);
    dst[n - 1] = src[n - 1];
}

/* Eight bytes as a big-endian number (the stream packs codes most-significant bit first). */
static inline uint64_t load_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#elif !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
    v = 0;
    for (unsigned k = 0; k < 8; k++) v = (v << 8) | p[k];
#endif
    return v;
}

/* Bytes of an ELF file header wanted before its image's extent is known. */
#define ELF_HEADER 64u

static uint64_t load_uint(const uint8_t *p, unsigned n, int big) {
    uint64_t v = 0;
    for (unsigned k = 0; k < n; k++) v = (v << 8) | p[big ? k : n - 1 - k];
    return v;
}

/* The end of the ELF image whose file header starts at h (ELF_HEADER bytes): the end of
 * its section header table, which wasmtime writes last. 0 if h is not such a header. */
static uint64_t elf_extent(const uint8_t *h) {
    if (memcmp(h, "\x7f" "ELF", 4) != 0) return 0;
    if ((h[4] != 1 && h[4] != 2) || (h[5] != 1 && h[5] != 2)) return 0;
    int is64 = h[4] == 2, big = h[5] == 2;
    uint64_t shoff = is64 ? load_uint(h + 0x28, 8, big) : load_uint(h + 0x20, 4, big);
    uint64_t shentsize = load_uint(h + (is64 ? 0x3A : 0x2E), 2, big);
    uint64_t shnum = load_uint(h + (is64 ? 0x3C : 0x30), 2, big);
    if (shnum == 0 || shentsize == 0) return 0;
    uint64_t table = shnum * shentsize; /* both < 2^16: no wrap */
    if (shoff > UINT64_MAX - table || shoff + table < ELF_HEADER) return 0;
    return shoff + table;
}

int wmc_lzw_decode(const uint8_t *in, size_t in_len, size_t max_out, int flags,
                   uint8_t **out_buf, uint8_t **out_data, size_t *out_len, size_t *err_offset) {
    if (!out_buf || !out_data || !out_len || !err_offset || (!in && in_len))
        return WMC_ERR_ARGUMENT;
    *out_buf = NULL;
    *out_data = NULL;
    *out_len = 0;
    *err_offset = 0;
    if (in_len > SIZE_MAX / 8) return WMC_ERR_ARGUMENT;
    if (max_out > SIZE_MAX - PREFIX - COPY_SLACK) max_out = SIZE_MAX - PREFIX - COPY_SLACK;

    /* Each code's string as (offset in the output << 16 | length). */
    uint64_t *table = malloc(LZW_MAX_CODES * sizeof *table);
    out_buffer ob = {NULL, PREFIX, 0, max_out + PREFIX};
    size_t first_cap = in_len > SIZE_MAX / 8 ? SIZE_MAX / 8 : in_len * 3;
    if (first_cap < 4096) first_cap = 4096;
    if (first_cap > max_out) first_cap = max_out;
    first_cap += PREFIX;
    if (table) {
        ob.data = malloc(first_cap + COPY_SLACK);
        ob.cap = first_cap;
    }
    if (!table || !ob.data) {
        free(table);
        free(ob.data);
        return WMC_ERR_NOMEM;
    }
    for (unsigned c = 0; c < 256; c++) {
        ob.data[c] = (uint8_t)c;
        table[c] = (uint64_t)c << 16 | 1u;
    }

    /* Codes are read with one 8-byte load at the bit position; the last bytes of the input
     * are read from a zero-padded copy so no load runs past the input. */
    const size_t total_bits = in_len * 8;
    const size_t fast_end = in_len >= 8 ? (in_len - 8) * 8 + 1 : 0;
    const size_t tail_base = in_len >= 8 ? in_len - 8 : 0;
    uint8_t tail[16] = {0};
    if (in_len) memcpy(tail, in + tail_base, in_len - tail_base);

    size_t bitpos = 0;
    /* After a clear, `next` starts one below the first free code: the first code then
     * "adds" slot 257 (never read: 257 is the end code) and every later code adds the slot
     * the code before it prepared, so no flag is needed for "first code since the clear". */
    unsigned width = LZW_MIN_WIDTH;
    unsigned next = LZW_FIRST_FREE - 1;
    unsigned bump_at = (1u << LZW_MIN_WIDTH) - 1; /* widen after adding this entry */
    unsigned highest_valid = LZW_FIRST_FREE - 1;  /* codes above it are invalid */
    uint8_t *out = ob.data;
    size_t pos = PREFIX, cap = ob.cap;
    int status = WMC_OK;
    /* With WMC_LZW_EXPECT_ELF, the header is checked once this much output exists. */
    const int expect_elf = (flags & WMC_LZW_EXPECT_ELF) != 0;
    size_t check_at = expect_elf ? PREFIX + ELF_HEADER : SIZE_MAX;

    for (;;) {
        uint64_t word;
        if (bitpos < fast_end) { /* 8 bytes from here: more bits than any code needs */
            word = load_be64(in + (bitpos >> 3));
        } else if (bitpos + width <= total_bits) {
            word = load_be64(tail + ((bitpos >> 3) - tail_base));
        } else {
            *err_offset = in_len;
            status = WMC_ERR_LZW_NO_END;
            break;
        }
        unsigned code = (unsigned)((word << (bitpos & 7)) >> (64 - width));
        size_t code_start = bitpos;
        bitpos += width;

        if (code > highest_valid) {
            *err_offset = code_start / 8;
            status = WMC_ERR_LZW_CODE;
            break;
        }
        if (code - LZW_CLEAR < 2u) {
            if (code == LZW_END) break;
            width = LZW_MIN_WIDTH;
            next = LZW_FIRST_FREE - 1;
            bump_at = (1u << LZW_MIN_WIDTH) - 1;
            highest_valid = LZW_FIRST_FREE - 1;
            continue;
        }

        uint64_t entry = table[code];
        size_t code_len = (size_t)(entry & 0xFFFFu);
        if (code_len > cap - pos) {
            ob.len = pos;
            if ((status = out_grow(&ob, code_len)) != WMC_OK) {
                /* Past the cap set from the ELF header: past the image's end. */
                if (status == WMC_ERR_LZW_TOO_LARGE && expect_elf && check_at == SIZE_MAX)
                    status = WMC_ERR_LZW_NOT_ELF;
                *err_offset = code_start / 8;
                break;
            }
            out = ob.data;
            cap = ob.cap;
        }
        copy_string(out + pos, out + (size_t)(entry >> 16), code_len);

        if (next < LZW_MAX_CODES) {
            /* The entry the previous code prepared is now in the table. */
            if (next == bump_at && width < LZW_MAX_WIDTH) {
                width++;
                bump_at = (1u << width) - 1;
            }
            next++;
            /* Entry `next` is always "this string + one byte", whatever code comes next,
             * so it is set now; that also makes the KwKwK code (== next) valid. */
            if (next < LZW_MAX_CODES) {
                table[next] = (uint64_t)pos << 16 | (uint64_t)(code_len + 1);
                highest_valid = next;
            } else {
                highest_valid = LZW_MAX_CODES - 1;
            }
        }
        pos += code_len;

        if (pos >= check_at) {
            check_at = SIZE_MAX;
            uint64_t extent = elf_extent(out + PREFIX);
            if (extent == 0 || extent < pos - PREFIX) {
                *err_offset = code_start / 8;
                status = WMC_ERR_LZW_NOT_ELF;
                break;
            }
            if (extent > ob.max - PREFIX) {
                *err_offset = code_start / 8;
                status = WMC_ERR_LZW_TOO_LARGE;
                break;
            }
            /* No output may pass the image's end: the cap becomes that end. */
            ob.max = PREFIX + (size_t)extent;
            if (ob.cap > ob.max) ob.cap = cap = ob.max;
        }
    }
    if (status == WMC_OK && expect_elf) {
        /* The stream ended: it must have produced the whole image, header included. */
        if (check_at != SIZE_MAX || pos != ob.max) {
            *err_offset = in_len;
            status = WMC_ERR_LZW_NOT_ELF;
        }
    }

    free(table);
    if (status != WMC_OK) {
        free(ob.data);
        return status;
    }
    *out_buf = ob.data;
    *out_data = ob.data + PREFIX;
    *out_len = pos - PREFIX;
    return WMC_OK;
}

/* ---------------------------------------------------------------- encoder */

#define HASH_BITS 13u
#define HASH_SIZE (1u << HASH_BITS)

typedef struct {
    uint32_t key[HASH_SIZE];   /* (prefix << 8 | byte) + 1; 0 = empty */
    uint16_t code[HASH_SIZE];
} code_table;

static inline uint32_t slot_of(uint32_t key) {
    return (uint32_t)((key * 2654435761u) >> (32 - HASH_BITS));
}

typedef struct {
    uint8_t *data;
    size_t len;
    uint64_t acc;     /* pending bits, right-aligned */
    unsigned nacc;
} bit_writer;

static inline void writer_put(bit_writer *bw, unsigned code, unsigned width) {
    bw->acc = (bw->acc << width) | code;
    bw->nacc += width;
    while (bw->nacc >= 8) {
        bw->nacc -= 8;
        bw->data[bw->len++] = (uint8_t)(bw->acc >> bw->nacc);
    }
}

static inline void writer_finish(bit_writer *bw) {
    if (bw->nacc > 0) {
        bw->data[bw->len++] = (uint8_t)(bw->acc << (8 - bw->nacc));
        bw->nacc = 0;
    }
}

int wmc_lzw_encode(const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len) {
    if (!out || !out_len || (!in && in_len)) return WMC_ERR_ARGUMENT;
    *out = NULL;
    *out_len = 0;
    /* At most one 12-bit code per input byte, a clear per 3838 codes, and clear/last/end. */
    if (in_len > SIZE_MAX / 4) return WMC_ERR_ARGUMENT;
    size_t bound = (in_len + in_len / 1024 + 8) / 2 * 3 + 16;

    code_table *table = malloc(sizeof *table);
    bit_writer bw = {malloc(bound), 0, 0, 0};
    if (!table || !bw.data) {
        free(table);
        free(bw.data);
        return WMC_ERR_NOMEM;
    }
    memset(table->key, 0, sizeof table->key);

    unsigned width = LZW_MIN_WIDTH;
    unsigned next = LZW_FIRST_FREE;
    writer_put(&bw, LZW_CLEAR, width);
    if (in_len > 0) {
        unsigned cur = in[0];
        for (size_t i = 1; i < in_len; i++) {
            uint8_t byte = in[i];
            uint32_t key = ((uint32_t)cur << 8 | byte) + 1;
            uint32_t slot = slot_of(key);
            while (table->key[slot] != 0 && table->key[slot] != key)
                slot = (slot + 1) & (HASH_SIZE - 1);
            if (table->key[slot] == key) {
                cur = table->code[slot];
                continue;
            }
            writer_put(&bw, cur, width);
            table->key[slot] = key;
            table->code[slot] = (uint16_t)next;
            next++;
            if (next > (1u << width) && width < LZW_MAX_WIDTH) width++;
            if (next > LZW_MAX_CODES) {
                writer_put(&bw, LZW_CLEAR, width);
                memset(table->key, 0, sizeof table->key);
                width = LZW_MIN_WIDTH;
                next = LZW_FIRST_FREE;
            }
            cur = byte;
        }
        writer_put(&bw, cur, width);
        /* The decoder adds one more entry on reading that last code, and may widen. */
        if (next >= (1u << width) && width < LZW_MAX_WIDTH) width++;
    }
    writer_put(&bw, LZW_END, width);
    writer_finish(&bw);
    free(table);
    *out = bw.data;
    *out_len = bw.len;
    return WMC_OK;
}
