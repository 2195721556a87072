/*
 * Parameters from the job file and the batch time in C (weir_abi.h's
 * weir_param and weir_batch_time; docs/udf-abi.md, section 3a): the same
 * functions, with the same outputs, as udfs/testops's (Rust SDK), so
 * tests/udf_params.rs runs one job over both and compares.
 *
 *   map:plus        x -> x + n  (`c.plus(4)` or `c.plus(n = 4)`)
 *   filter:level_is lines whose first word is the level (`c.level_is("ERROR")`)
 *   map:scaled_at   x -> (x * factor, batch time)  (`c.scaled_at(factor = 10)`)
 *   map:lookup      key -> (key, name or null), from a dataset of
 *                   [key, name] pairs (`c.lookup(users)`)
 *   map:double      x -> 2x; takes no parameters (WEIR_MAP refuses them)
 *
 * Built by udfs/build.sh into udfs/c_params.wasm.
 */
#include "weir_abi.h"

/* An i64 parameter named `name` or at positional `index`, else an error on
 * the record's reader (so the call fails naming the export). */
static int64_t param_i64(struct weir_rd *in, const char *name, uint32_t index, const char *missing) {
    struct weir_rd p;
    if (!weir_param(name, index, &p)) {
        weir_fail(in, missing);
        return 0;
    }
    int64_t v = weir_rd_i64(&p);
    if (p.err) weir_fail(in, p.err);
    return v;
}

static void plus(struct weir_rd *in, struct weir_wr *out) {
    int64_t n = param_i64(in, "n", 0, "plus: no parameter n");
    weir_put_i64(out, weir_rd_i64(in) + n);
}
WEIR_MAP_PARAMS(plus)

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0c || c == 0x0b; }

static int level_is(struct weir_rd *in) {
    struct weir_rd p;
    uint32_t want_len, len;
    if (!weir_param("level", 0, &p)) return weir_fail(in, "level_is: no parameter level");
    const uint8_t *want = weir_rd_str(&p, &want_len);
    if (p.err) return weir_fail(in, p.err);
    const uint8_t *s = weir_rd_str(in, &len), *e = s + len;
    while (s < e && is_ws(*s)) s++;
    const uint8_t *w = s;
    while (s < e && !is_ws(*s)) s++;
    if (s == w || (uint32_t)(s - w) != want_len) return 0;
    for (uint32_t i = 0; i < want_len; i++)
        if (w[i] != want[i]) return 0;
    return 1;
}
WEIR_FILTER_PARAMS(level_is)

static void scaled_at(struct weir_rd *in, struct weir_wr *out) {
    int64_t factor = param_i64(in, "factor", 0, "scaled_at: no parameter factor");
    int64_t x = weir_rd_i64(in);
    weir_put_tuple(out, 2);
    weir_put_i64(out, x * factor);
    weir_put_i64(out, weir_batch_time());
}
WEIR_MAP_PARAMS(scaled_at)

static void lookup(struct weir_rd *in, struct weir_wr *out) {
    struct weir_rd table;
    uint32_t key_len;
    if (!weir_param(0, 0, &table)) {
        weir_fail(in, "lookup: no table (give it a dataset: c.lookup(users))");
        return;
    }
    const uint8_t *key = weir_rd_str(in, &key_len);
    weir_put_tuple(out, 2);
    weir_put_str(out, key, key_len);
    uint32_t n = weir_rd_list(&table);
    for (uint32_t i = 0; i < n && !table.err; i++) {
        uint32_t k_len, v_len;
        if (weir_rd_tuple(&table) != 2) weir_fail(&table, "lookup: the table holds [key, name] pairs");
        const uint8_t *k = weir_rd_str(&table, &k_len);
        const uint8_t *v = weir_rd_str(&table, &v_len);
        if (table.err) break;
        if (k_len != key_len) continue;
        uint32_t j = 0;
        while (j < k_len && k[j] == key[j]) j++;
        if (j == k_len) {
            weir_put_str(out, v, v_len);
            return;
        }
    }
    if (table.err) {
        weir_fail(in, table.err);
        return;
    }
    weir_put_null(out);
}
WEIR_MAP_PARAMS(lookup)

static void twice(struct weir_rd *in, struct weir_wr *out) { weir_put_i64(out, weir_rd_i64(in) * 2); }
/* Exported as "double" (a C keyword cannot be the function's name). */
WEIR_DECLARE("weir_double = map:double");
WEIR_EXPORT("weir_double") int64_t weir_double(const uint8_t *in, uint32_t len) {
    if (weir_has_params()) return weir_err("map:double takes no parameters");
    return weir_run_map(in, len, twice);
}
