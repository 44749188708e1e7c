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

/* ---------------------------------------------------------------- decoder */

typedef struct {
    uint8_t *data;
    size_t len;   /* bytes of output so far */
    size_t cap;   /* usable bytes; the allocation is cap + COPY_SLACK */
    size_t max;   /* the caller's cap on len */
} out_buffer;

/* Make room for `need` more bytes (need <= LZW_MAX_STRING). */
static int out_reserve(out_buffer *ob, size_t need) {
    if (need > ob->max - ob->len) return WMC_ERR_LZW_TOO_LARGE;
    if (need <= ob->cap - ob->len) return WMC_OK;
    size_t want = ob->len + need;
    size_t cap = ob->cap;
    while (cap < want) cap = cap > ob->max / 2 ? ob->max : cap * 2;
    uint8_t *grown = realloc(ob->data, cap + COPY_SLACK);
    if (!grown) return WMC_ERR_NOMEM;
    ob->data = grown;
    ob->cap = cap;
    return WMC_OK;
}

/* Copy n bytes from src to dst where src + n <= dst, in 16-byte chunks that may write up
 * to 15 bytes past dst + n (into the slack or text written later). Reads before dst are
 * never changed by the copy, so the n bytes that matter are always right. */
static inline void copy_earlier(uint8_t *dst, const uint8_t *src, size_t n) {
    size_t i = 0;
    do {
        uint8_t chunk[16];
        memcpy(chunk, src + i, 16);
        memcpy(dst + i, chunk, 16);
        i += 16;
    } while (i < n);
}

typedef struct {
    const uint8_t *in;
    size_t in_len;
    size_t in_pos;
    uint64_t bits;   /* unread bits, left-aligned */
    unsigned nbits;
} bit_reader;

static inline void reader_refill(bit_reader *br) {
    if (br->in_len - br->in_pos >= 8) {
        uint64_t word = 0;
        for (unsigned k = 0; k < 8; k++) word = (word << 8) | br->in[br->in_pos + k];
        unsigned take = (64 - br->nbits) / 8;
        /* take is 0..8; shifting a 64-bit value by 64 is undefined, so handle 8 apart. */
        if (take == 8) {
            br->bits = word;
        } else if (take > 0) {
            br->bits |= (word >> (64 - 8 * take)) << (64 - br->nbits - 8 * take);
        }
        br->in_pos += take;
        br->nbits += 8 * take;
        return;
    }
    while (br->nbits <= 56 && br->in_pos < br->in_len) {
        br->bits |= (uint64_t)br->in[br->in_pos++] << (56 - br->nbits);
        br->nbits += 8;
    }
}

int wmc_lzw_decode(const uint8_t *in, size_t in_len, size_t max_out,
                   uint8_t **out, size_t *out_len, size_t *err_offset) {
    if (!out || !out_len || !err_offset || (!in && in_len)) return WMC_ERR_ARGUMENT;
    *out = NULL;
    *out_len = 0;
    *err_offset = 0;

    size_t *start = malloc(LZW_MAX_CODES * sizeof *start);
    uint16_t *length = malloc(LZW_MAX_CODES * sizeof *length);
    out_buffer ob = {NULL, 0, 0, max_out};
    size_t first_cap = in_len > (SIZE_MAX / 4) ? SIZE_MAX / 4 : in_len * 3;
    if (first_cap < 4096) first_cap = 4096;
    if (first_cap > max_out) first_cap = max_out;
    if (start && length) {
        ob.data = malloc(first_cap + COPY_SLACK);
        ob.cap = first_cap;
    }
    int status = WMC_OK;
    if (!start || !length || !ob.data) {
        status = WMC_ERR_NOMEM;
        goto done;
    }

    bit_reader br = {in, in_len, 0, 0, 0};
    unsigned width = LZW_MIN_WIDTH;
    unsigned next = LZW_FIRST_FREE;
    int have_prev = 0;
    size_t prev_pos = 0, prev_len = 0;

    for (;;) {
        if (br.nbits < width) {
            reader_refill(&br);
            if (br.nbits < width) {
                *err_offset = in_len;
                status = WMC_ERR_LZW_NO_END;
                goto done;
            }
        }
        size_t code_offset = (br.in_pos * 8 - br.nbits) / 8;
        unsigned code = (unsigned)(br.bits >> (64 - width));
        br.bits <<= width;
        br.nbits -= width;

        if (code == LZW_CLEAR) {
            width = LZW_MIN_WIDTH;
            next = LZW_FIRST_FREE;
            have_prev = 0;
            continue;
        }
        if (code == LZW_END) break;

        size_t pos = ob.len;
        size_t code_len;
        if (code < 256) {
            if ((status = out_reserve(&ob, 1)) != WMC_OK) goto fail_at;
            ob.data[pos] = (uint8_t)code;
            code_len = 1;
        } else if (!have_prev || code > next) {
            status = WMC_ERR_LZW_CODE;
            goto fail_at;
        } else if (code < next) {
            code_len = length[code];
            if ((status = out_reserve(&ob, code_len)) != WMC_OK) goto fail_at;
            copy_earlier(ob.data + pos, ob.data + start[code], code_len);
        } else {
            /* code == next: the previous string plus its own first byte. */
            code_len = prev_len + 1;
            if ((status = out_reserve(&ob, code_len)) != WMC_OK) goto fail_at;
            copy_earlier(ob.data + pos, ob.data + prev_pos, prev_len);
            ob.data[pos + prev_len] = ob.data[prev_pos];
        }

        if (have_prev && next < LZW_MAX_CODES) {
            start[next] = prev_pos;
            length[next] = (uint16_t)(prev_len + 1);
            if (next == (1u << width) - 1 && width < LZW_MAX_WIDTH) width++;
            next++;
        }
        have_prev = 1;
        prev_pos = pos;
        prev_len = code_len;
        ob.len = pos + code_len;
        continue;

    fail_at:
        *err_offset = code_offset;
        goto done;
    }

done:
    free(start);
    free(length);
    if (status != WMC_OK) {
        free(ob.data);
        return status;
    }
    *out = ob.data;
    *out_len = ob.len;
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
