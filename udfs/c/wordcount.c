/*
 * WordCount in freestanding C: the same four functions, with the same
 * outputs byte for byte, as the Rust udfs/wordcount and udfs/wat/wordcount.wat.
 *
 *   flat_map:split    line -> its words (split on ASCII whitespace, no empty words)
 *   map:pair          word -> (word, 1)
 *   reduce:sum        left fold of a + b over each group (wrapping, like Rust release)
 *   reduce:subtract   left fold of a - b over each group
 *
 * Built by udfs/build.sh:
 *   clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wl,--no-entry \
 *         -Wl,--export-dynamic -o wordcount_c.wasm c/wordcount.c
 * The module imports nothing.
 */
#include "weir_abi.h"

/* Rust's u8::is_ascii_whitespace: space, \t, \n, \x0c, \r (not \x0b). */
static inline int is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n' || b == '\f' || b == '\r'; }

WEIR_EXPORT("flat_map:split") int64_t split(const uint8_t *in, uint32_t len) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 5);
    /* Words cost 5 header bytes each; a typical text needs about 2 * len.
     * The writer grows if that is not enough. */
    struct weir_wr w = weir_writer(2 * (uint64_t)len);
    uint32_t words = 0;
    for (uint32_t i = 0; i < n && !r.err; i++) {
        uint32_t l;
        const uint8_t *s = weir_rd_str(&r, &l);
        const uint8_t *e = s + l;
        while (!r.err) {
            while (s < e && is_ws(*s)) s++;
            if (s == e) break;
            const uint8_t *start = s;
            while (s < e && !is_ws(*s)) s++;
            weir_put_str(&w, start, (uint32_t)(s - start));
            words++;
        }
    }
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, words);
}

WEIR_EXPORT("map:pair") int64_t pair(const uint8_t *in, uint32_t len) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 5);
    /* Each record grows by the tuple header (5) and the count (9). */
    struct weir_wr w = weir_writer(len + 14 * (uint64_t)n);
    for (uint32_t i = 0; i < n && !r.err; i++) {
        uint32_t l;
        const uint8_t *s = weir_rd_str(&r, &l);
        weir_put_tuple(&w, 2);
        weir_put_str(&w, s, l);
        weir_put_i64(&w, 1);
    }
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, n);
}

/* Folds each group (a non-empty list of i64) left to right: + or -. */
static int64_t fold(const uint8_t *in, uint32_t len, int subtract) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 5 + 9);
    struct weir_wr w = weir_writer(4 + 9 * (uint64_t)n);
    for (uint32_t i = 0; i < n && !r.err; i++) {
        uint32_t k = weir_rd_list(&r);
        if (r.err) break;
        if (k == 0) return weir_err("a group to reduce is empty");
        uint64_t acc = (uint64_t)weir_rd_i64(&r);
        for (uint32_t j = 1; j < k && !r.err; j++) {
            uint64_t x = (uint64_t)weir_rd_i64(&r);
            acc = subtract ? acc - x : acc + x; /* unsigned: wraps, no UB */
        }
        weir_put_i64(&w, (int64_t)acc);
    }
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, n);
}

WEIR_EXPORT("reduce:sum") int64_t sum(const uint8_t *in, uint32_t len) { return fold(in, len, 0); }

WEIR_EXPORT("reduce:subtract") int64_t subtract(const uint8_t *in, uint32_t len) { return fold(in, len, 1); }
