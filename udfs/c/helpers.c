/*
 * The record helpers of weir_abi.h beyond WordCount, one small function
 * each, for the tests (tests/udf_dev.rs calls them through `weir udf call`):
 *
 *   filter:is_long         keep strings longer than 3 bytes
 *   key_by:first           a tuple's first element (copied encoded, any type)
 *   map:describe           any value -> (type name, its value or a summary)
 *   map_partitions:count   the partition -> its record count
 *   reduce:fmax            the largest f64 of each group
 *   plain export "swap"    (a, b) -> (b, a), declared with WEIR_DECLARE as
 *                          the map function "swap_pair"
 *
 * Built by udfs/build.sh into udfs/c_helpers.wasm.
 */
#include "weir_abi.h"

static int is_long(struct weir_rd *in) {
    uint32_t len;
    weir_rd_str(in, &len);
    return len > 3;
}
WEIR_FILTER(is_long)

static void first(struct weir_rd *in, struct weir_wr *out) {
    uint32_t n = weir_rd_tuple(in), len;
    if (n == 0) {
        weir_fail(in, "first: an empty tuple");
        return;
    }
    const uint8_t *v = weir_rd_raw(in, &len);
    for (uint32_t i = 1; i < n; i++) weir_rd_skip(in);
    if (!in->err) weir_put_raw(out, v, len);
}
WEIR_KEY_BY(first)

static void describe(struct weir_rd *in, struct weir_wr *out) {
    uint32_t len;
    weir_put_tuple(out, 2);
    switch (weir_rd_peek(in)) {
    case WEIR_NULL:
        weir_rd_null(in);
        weir_put_cstr(out, "null");
        weir_put_null(out);
        break;
    case WEIR_TRUE:
    case WEIR_FALSE:
        weir_put_cstr(out, "bool");
        weir_put_bool(out, !weir_rd_bool(in));
        break;
    case WEIR_I64:
        weir_put_cstr(out, "i64");
        weir_put_i64(out, weir_rd_i64(in));
        break;
    case WEIR_F64:
        weir_put_cstr(out, "f64");
        weir_put_f64(out, weir_rd_f64(in) * 2);
        break;
    case WEIR_BYTES: {
        const uint8_t *b = weir_rd_bytes(in, &len);
        weir_put_cstr(out, "bytes");
        weir_put_bytes(out, b, len);
        break;
    }
    case WEIR_LIST:
    case WEIR_TUPLE: {
        uint8_t tag = weir_rd_peek(in);
        uint32_t n = tag == WEIR_LIST ? weir_rd_list(in) : weir_rd_tuple(in);
        for (uint32_t i = 0; i < n; i++) weir_rd_skip(in);
        weir_put_cstr(out, tag == WEIR_LIST ? "list" : "tuple");
        weir_put_i64(out, n);
        break;
    }
    default: {
        const uint8_t *s = weir_rd_str(in, &len);
        weir_put_cstr(out, "str");
        weir_put_str(out, s, len);
    }
    }
}
WEIR_MAP(describe)

static uint32_t count(struct weir_rd *in, uint32_t n, struct weir_wr *out) {
    for (uint32_t i = 0; i < n; i++) weir_rd_skip(in);
    weir_put_i64(out, n);
    return 1;
}
WEIR_MAP_PARTITIONS(count)

static double fmax(double a, double b) { return a > b ? a : b; }
WEIR_REDUCE_F64(fmax)

WEIR_DECLARE("swap = map:swap_pair");
static void swap_pair(struct weir_rd *in, struct weir_wr *out) {
    uint32_t la, lb;
    if (weir_rd_tuple(in) != 2) {
        weir_fail(in, "swap: expected a pair");
        return;
    }
    const uint8_t *a = weir_rd_raw(in, &la);
    const uint8_t *b = weir_rd_raw(in, &lb);
    weir_put_tuple(out, 2);
    weir_put_raw(out, b, lb);
    weir_put_raw(out, a, la);
}
__attribute__((export_name("swap"))) int64_t swap(const uint8_t *in, uint32_t len) {
    return weir_run_map(in, len, swap_pair);
}
