/*
 * WordCount in freestanding C: the same four functions, with the same
 * outputs byte for byte, as the Rust udfs/wordcount and udfs/wat/wordcount.wat.
 *
 *   flat_map:split    line -> its words (split on ASCII whitespace, no empty words)
 *   map:pair          word -> (word, 1)
 *   reduce:sum        left fold of a + b over each group (wrapping, like Rust release)
 *   reduce:subtract   left fold of a - b over each group
 *
 * The WEIR_<KIND> macros of weir_abi.h define the exports and walk the
 * batches; each function here only reads its record and writes its values.
 *
 * Built by udfs/build.sh:
 *   clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wl,--no-entry \
 *         -Wl,--export-dynamic -o wordcount_c.wasm c/wordcount.c
 * The module imports nothing.
 */
#include "weir_abi.h"

/* Rust's u8::is_ascii_whitespace: space, \t, \n, \x0c, \r (not \x0b). */
static inline int is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n' || b == '\f' || b == '\r'; }

/* A line: its words, as strings. Returns how many it wrote. */
static uint32_t split(struct weir_rd *in, struct weir_wr *out) {
    uint32_t len, words = 0;
    const uint8_t *s = weir_rd_str(in, &len);
    const uint8_t *e = s + len;
    while (!in->err) {
        while (s < e && is_ws(*s)) s++;
        if (s == e) break;
        const uint8_t *start = s;
        while (s < e && !is_ws(*s)) s++;
        weir_put_str(out, start, (uint32_t)(s - start));
        words++;
    }
    return words;
}
WEIR_FLAT_MAP(split)

/* A word: the pair (word, 1). */
static void pair(struct weir_rd *in, struct weir_wr *out) {
    uint32_t len;
    const uint8_t *word = weir_rd_str(in, &len);
    weir_put_tuple(out, 2);
    weir_put_str(out, word, len);
    weir_put_i64(out, 1);
}
WEIR_MAP(pair)

/* Unsigned arithmetic: wraps like Rust's release build, no undefined behaviour. */
static int64_t sum(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
WEIR_REDUCE_I64(sum)

static int64_t subtract(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
WEIR_REDUCE_I64(subtract)
