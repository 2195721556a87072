/*
 * weir_abi.h: the Weir UDF ABI v1 for freestanding C (docs/udf-abi.md).
 *
 * One header, no libc, no imports. It gives a C guest:
 *
 *   - the three exports every module needs: `memory` (wasm-ld exports it
 *     by default), `weir_abi_version` and `weir_alloc`, defined here
 *     (include this header in exactly one .c file);
 *   - a bump allocator over linear memory (weir_bump);
 *   - a bounds-checked reader for encoded values (struct weir_rd);
 *   - a growable writer for the output batch (struct weir_wr);
 *   - weir_ok / weir_err, which pack the i64 a UDF export returns;
 *   - the batch time and the job file's parameters (docs/udf-abi.md,
 *     section 3a): the header exports `weir_batch_time` and `weir_params`;
 *     weir_batch_time() returns the time, weir_param("n", 0, &rd) puts a
 *     reader at the parameter named "n", else at positional value 0;
 *   - per-kind wrappers (WEIR_MAP, WEIR_FLAT_MAP, WEIR_FILTER, WEIR_KEY_BY,
 *     WEIR_MAP_PARTITIONS, WEIR_REDUCE_I64, WEIR_REDUCE_F64) that define the
 *     export, walk the input batch and write the output batch's header, so
 *     a function only reads its record and writes its value(s). They refuse
 *     parameters ("map:f takes no parameters"); a function that reads them
 *     is exported with WEIR_MAP_PARAMS (and WEIR_FLAT_MAP_PARAMS,
 *     WEIR_FILTER_PARAMS, WEIR_KEY_BY_PARAMS, WEIR_MAP_PARTITIONS_PARAMS):
 *
 *       static void pair(struct weir_rd *in, struct weir_wr *out) {
 *           uint32_t n;
 *           const uint8_t *word = weir_rd_str(in, &n);
 *           weir_put_tuple(out, 2);
 *           weir_put_str(out, word, n);
 *           weir_put_i64(out, 1);
 *       }
 *       WEIR_MAP(pair)        // exports "map:pair"
 *
 *       static void plus(struct weir_rd *in, struct weir_wr *out) {
 *           struct weir_rd p;        // `ops.plus(4)` or `ops.plus(n = 4)`
 *           if (!weir_param("n", 0, &p)) { weir_fail(in, "plus: no parameter n"); return; }
 *           int64_t n = weir_rd_i64(&p);
 *           if (p.err) { weir_fail(in, p.err); return; }
 *           weir_put_i64(out, weir_rd_i64(in) + n);
 *       }
 *       WEIR_MAP_PARAMS(plus) // exports "map:plus", which takes parameters
 *
 * The encoding, little-endian throughout:
 *
 *   00 null | 01 false | 02 true | 03 i64 | 04 f64 | 05 u32 len, utf-8 bytes
 *   06 u32 len, bytes | 07 u32 n, n values (tuple) | 08 u32 n, n values (list)
 *   batch = u32 count, then count values
 *
 * A UDF is exported as "<kind>:<name>" with type (i32 ptr, i32 len) -> i64:
 *
 *   __attribute__((export_name("map:pair")))
 *   long long pair(const unsigned char *in, unsigned len) { ... }
 *
 * Memory: every task gets a fresh instance and the host makes exactly one
 * weir_alloc per call, right before the call, once it has copied the
 * previous call's output out. So weir_alloc resets the bump pointer to the
 * heap base before allocating: a call's input and everything the call
 * allocates live until the next weir_alloc, and an instance that serves many
 * calls does not grow without bound. Nothing is ever freed individually.
 * The parameters (weir_params) are the exception: their buffer stays, and
 * weir_alloc resets to just above it instead.
 *
 * Errors: the reader records the first error in `rd.err` (a static string)
 * and afterwards returns zeros, so a function can read a whole record and
 * check once. weir_err() returns the message to the host with bit 63 set;
 * the host reports it as a guest error naming the module and export.
 */
#ifndef WEIR_ABI_H
#define WEIR_ABI_H

#include <stddef.h>
#include <stdint.h>

#define WEIR_NULL 0x00
#define WEIR_FALSE 0x01
#define WEIR_TRUE 0x02
#define WEIR_I64 0x03
#define WEIR_F64 0x04
#define WEIR_STR 0x05
#define WEIR_BYTES 0x06
#define WEIR_TUPLE 0x07
#define WEIR_LIST 0x08

#define WEIR_EXPORT(name) __attribute__((export_name(name)))

/* ------------------------------------------------------------ libc bits */

/* clang lowers struct copies and loops to calls to these even with
 * -ffreestanding; with -nostdlib nobody else provides them. With bulk
 * memory (-mbulk-memory) they would become memory.copy / memory.fill. */
void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

/* ------------------------------------------------------------ allocator */

/* End of the linker's static data: the heap starts here. */
extern unsigned char __heap_base;

static uintptr_t weir_heap_top;
/* Where weir_alloc resets to: the heap base, or above the parameters. */
static uintptr_t weir_heap_floor;

/* Returns `len` bytes, 8-aligned; grows linear memory as needed; traps
 * (the host reports a trap, or a memory-limit error) when it cannot grow. */
static inline void *weir_bump(uint32_t len) {
    uintptr_t base = (uintptr_t)&__heap_base;
    if (weir_heap_top < base) weir_heap_top = base;
    uintptr_t p = (weir_heap_top + 7) & ~(uintptr_t)7;
    uintptr_t end = p + len;
    if (end < p) __builtin_trap();
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uintptr_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) __builtin_trap();
    }
    weir_heap_top = end;
    return (void *)p;
}

WEIR_EXPORT("weir_abi_version") int weir_abi_version(void) { return 1; }

WEIR_EXPORT("weir_alloc") void *weir_alloc(uint32_t len) {
    uintptr_t base = (uintptr_t)&__heap_base;
    weir_heap_top = weir_heap_floor > base ? weir_heap_floor : base; /* see "Memory" above */
    return weir_bump(len);
}

/* ------------------------------------------------------------ results */

/* The packed result: bits 0..31 pointer, 32..62 length, 63 error flag. */
static inline int64_t weir_pack(const void *ptr, uint32_t len, int error) {
    uint64_t v = (uint64_t)(uintptr_t)ptr | ((uint64_t)(len & 0x7fffffffu) << 32);
    if (error) v |= (uint64_t)1 << 63;
    return (int64_t)v;
}

static inline uint32_t weir_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* A guest error: the host reports `msg` (static, UTF-8) as the failure. */
static inline int64_t weir_err(const char *msg) { return weir_pack(msg, weir_strlen(msg), 1); }

/* ------------------------------------------------------------ reading */

struct weir_rd {
    const uint8_t *p;   /* next byte */
    const uint8_t *end; /* one past the last byte */
    const char *err;    /* first error, or 0 */
};

static inline struct weir_rd weir_reader(const void *ptr, uint32_t len) {
    struct weir_rd r = {(const uint8_t *)ptr, (const uint8_t *)ptr + len, 0};
    return r;
}

static inline int weir_fail(struct weir_rd *r, const char *msg) {
    if (!r->err) r->err = msg;
    r->p = r->end;
    return 0;
}

static inline uint32_t weir_avail(const struct weir_rd *r) { return (uint32_t)(r->end - r->p); }

static inline uint32_t weir_rd_u32(struct weir_rd *r) {
    if (weir_avail(r) < 4) return weir_fail(r, "truncated input");
    uint32_t v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24;
    r->p += 4;
    return v;
}

static inline uint64_t weir_rd_u64(struct weir_rd *r) {
    uint64_t lo = weir_rd_u32(r);
    uint64_t hi = weir_rd_u32(r);
    return lo | hi << 32;
}

/* Consumes a tag byte; an error (message `what`) if it is not `tag`. */
static inline int weir_rd_tag(struct weir_rd *r, uint8_t tag, const char *what) {
    if (weir_avail(r) < 1 || *r->p != tag) return weir_fail(r, what);
    r->p++;
    return 1;
}

/* The batch header: the record count. Every record takes at least `min`
 * bytes, so a count that cannot fit in the buffer is an error. */
static inline uint32_t weir_rd_batch(struct weir_rd *r, uint32_t min) {
    uint32_t n = weir_rd_u32(r);
    if (min && n > weir_avail(r) / min) return weir_fail(r, "malformed input batch: count too large");
    return n;
}

/* A string value: sets *len and returns a pointer to its bytes (in place). */
static inline const uint8_t *weir_rd_str(struct weir_rd *r, uint32_t *len) {
    *len = 0;
    if (!weir_rd_tag(r, WEIR_STR, "expected a string")) return r->p;
    uint32_t n = weir_rd_u32(r);
    if (n > weir_avail(r)) {
        weir_fail(r, "string runs past the end of the input");
        return r->p;
    }
    const uint8_t *s = r->p;
    r->p += n;
    *len = n;
    return s;
}

static inline int64_t weir_rd_i64(struct weir_rd *r) {
    if (!weir_rd_tag(r, WEIR_I64, "expected an i64")) return 0;
    return (int64_t)weir_rd_u64(r);
}

/* A list header: returns the element count. */
static inline uint32_t weir_rd_list(struct weir_rd *r) {
    if (!weir_rd_tag(r, WEIR_LIST, "expected a list")) return 0;
    return weir_rd_u32(r);
}

/* The tag of the next value, without consuming it (0xff at the end). */
static inline uint8_t weir_rd_peek(const struct weir_rd *r) { return weir_avail(r) ? *r->p : 0xff; }

static inline void weir_rd_null(struct weir_rd *r) { weir_rd_tag(r, WEIR_NULL, "expected null"); }

/* A bool value: 0 or 1. */
static inline int weir_rd_bool(struct weir_rd *r) {
    if (weir_avail(r) >= 1 && (*r->p == WEIR_TRUE || *r->p == WEIR_FALSE)) return *r->p++ == WEIR_TRUE;
    return weir_fail(r, "expected a bool");
}

static inline double weir_rd_f64(struct weir_rd *r) {
    if (!weir_rd_tag(r, WEIR_F64, "expected an f64")) return 0;
    uint64_t bits = weir_rd_u64(r);
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

/* A bytes value: sets *len and returns a pointer to its bytes (in place). */
static inline const uint8_t *weir_rd_bytes(struct weir_rd *r, uint32_t *len) {
    *len = 0;
    if (!weir_rd_tag(r, WEIR_BYTES, "expected bytes")) return r->p;
    uint32_t n = weir_rd_u32(r);
    if (n > weir_avail(r)) {
        weir_fail(r, "bytes run past the end of the input");
        return r->p;
    }
    const uint8_t *s = r->p;
    r->p += n;
    *len = n;
    return s;
}

/* A tuple header: returns the element count (a pair: 2). */
static inline uint32_t weir_rd_tuple(struct weir_rd *r) {
    if (!weir_rd_tag(r, WEIR_TUPLE, "expected a tuple")) return 0;
    return weir_rd_u32(r);
}

/* Skips one value of any type (nesting at most 64 levels, as the host
 * allows). */
static inline void weir_rd_skip_depth(struct weir_rd *r, int depth) {
    if (depth > 64) {
        weir_fail(r, "values nested too deeply");
        return;
    }
    if (weir_avail(r) < 1) {
        weir_fail(r, "truncated input");
        return;
    }
    uint8_t tag = *r->p++;
    switch (tag) {
    case WEIR_NULL:
    case WEIR_FALSE:
    case WEIR_TRUE:
        return;
    case WEIR_I64:
    case WEIR_F64:
        if (weir_avail(r) < 8) {
            weir_fail(r, "truncated input");
            return;
        }
        r->p += 8;
        return;
    case WEIR_STR:
    case WEIR_BYTES: {
        uint32_t n = weir_rd_u32(r);
        if (n > weir_avail(r)) {
            weir_fail(r, "value runs past the end of the input");
            return;
        }
        r->p += n;
        return;
    }
    case WEIR_TUPLE:
    case WEIR_LIST: {
        uint32_t n = weir_rd_u32(r);
        for (uint32_t i = 0; i < n && !r->err; i++) weir_rd_skip_depth(r, depth + 1);
        return;
    }
    default:
        weir_fail(r, "unknown value tag");
    }
}

static inline void weir_rd_skip(struct weir_rd *r) { weir_rd_skip_depth(r, 0); }

/* One whole value, still encoded: sets *len and returns a pointer to it, to
 * copy it unchanged into the output with weir_put_raw (a key, say). */
static inline const uint8_t *weir_rd_raw(struct weir_rd *r, uint32_t *len) {
    const uint8_t *start = r->p;
    weir_rd_skip(r);
    *len = r->err ? 0 : (uint32_t)(r->p - start);
    return start;
}

/* ------------------------------------------------------------ batch time and parameters */

/* docs/udf-abi.md, section 3a. The host calls weir_batch_time on every fresh
 * instance in a job and weir_params once on an instance that serves a
 * function the job file gives parameters, before any call. */

static int64_t weir_batch_time_ms;
/* The parameters' positional list and named list (encoded), or 0. */
static const uint8_t *weir_params_pos, *weir_params_named, *weir_params_fn;
static uint32_t weir_params_pos_len, weir_params_named_len, weir_params_fn_len;

WEIR_EXPORT("weir_batch_time") void weir_export_batch_time(int64_t time_ms) { weir_batch_time_ms = time_ms; }

/* `(function, [positional], [(name, value)...])`, named ones sorted by name. */
WEIR_EXPORT("weir_params") int64_t weir_export_params(const uint8_t *ptr, uint32_t len) {
    struct weir_rd r = weir_reader(ptr, len);
    uint32_t fn_len, pos_len, named_len;
    if (weir_rd_tuple(&r) != 3) return weir_err("malformed parameters: expected (function, [positional], [named])");
    const uint8_t *fn = weir_rd_str(&r, &fn_len);
    uint8_t pos_tag = weir_rd_peek(&r);
    const uint8_t *pos = weir_rd_raw(&r, &pos_len);
    uint8_t named_tag = weir_rd_peek(&r);
    const uint8_t *named = weir_rd_raw(&r, &named_len);
    if (r.err || weir_avail(&r) || pos_tag != WEIR_LIST || named_tag != WEIR_LIST)
        return weir_err("malformed parameters: expected (function, [positional], [named])");
    weir_params_fn = fn;
    weir_params_fn_len = fn_len;
    weir_params_pos = pos;
    weir_params_pos_len = pos_len;
    weir_params_named = named;
    weir_params_named_len = named_len;
    /* The buffer came from the last weir_alloc: keep it below the floor. */
    weir_heap_floor = weir_heap_top;
    return 0;
}

/* The batch time (ms since the epoch) of the RDD this instance computes;
 * 0 outside a job (`weir udf call`). */
static inline int64_t weir_batch_time(void) { return weir_batch_time_ms; }

/* Whether the job file gave this function parameters. */
static inline int weir_has_params(void) { return weir_params_pos != 0; }

/* `<kind>:<name>` of the function the parameters are for (0 without). */
static inline const uint8_t *weir_params_function(uint32_t *len) {
    *len = weir_params_fn_len;
    return weir_params_fn;
}

/* How many positional values the parameters have. */
static inline uint32_t weir_param_count(void) {
    if (!weir_params_pos) return 0;
    struct weir_rd r = weir_reader(weir_params_pos, weir_params_pos_len);
    return weir_rd_list(&r);
}

static inline int weir_name_is(const uint8_t *s, uint32_t n, const char *name) {
    uint32_t i = 0;
    for (; i < n; i++)
        if (!name[i] || (uint8_t)name[i] != s[i]) return 0;
    return name[i] == 0;
}

/* Sets *out to a reader at the parameter named `name` (NUL-terminated; 0
 * for none), else at positional value `index`, and returns 1; returns 0
 * when neither was given. Read the value with the weir_rd_* functions and
 * check out->err. */
static inline int weir_param(const char *name, uint32_t index, struct weir_rd *out) {
    if (!weir_params_pos) return 0;
    struct weir_rd r = weir_reader(weir_params_named, weir_params_named_len);
    uint32_t n = weir_rd_list(&r);
    for (uint32_t i = 0; name && i < n && !r.err; i++) {
        uint32_t len;
        weir_rd_tuple(&r);
        const uint8_t *k = weir_rd_str(&r, &len);
        if (!r.err && weir_name_is(k, len, name)) {
            *out = r;
            return 1;
        }
        weir_rd_skip(&r);
    }
    r = weir_reader(weir_params_pos, weir_params_pos_len);
    n = weir_rd_list(&r);
    if (index >= n) return 0;
    for (uint32_t i = 0; i < index && !r.err; i++) weir_rd_skip(&r);
    if (r.err) return 0;
    *out = r;
    return 1;
}

/* ------------------------------------------------------------ writing */

struct weir_wr {
    uint8_t *buf;
    uint32_t len;
    uint32_t cap;
};

/* A writer with initial room for about `hint` bytes (it grows as needed);
 * the first 4 bytes hold the batch count. */
static inline struct weir_wr weir_writer(uint64_t hint) {
    uint32_t cap = hint < 16 ? 16 : hint > (1u << 30) ? (1u << 30) : (uint32_t)hint;
    struct weir_wr w = {weir_bump(cap), 4, cap};
    return w;
}

/* Makes room for `n` more bytes (moves the buffer to a bigger bump block). */
static inline void weir_reserve(struct weir_wr *w, uint32_t n) {
    if (w->cap - w->len >= n) return;
    uint64_t want = (uint64_t)w->len + n;
    uint64_t cap = (uint64_t)w->cap * 2;
    if (cap < want) cap = want;
    if (cap > 0x7fffffffu) __builtin_trap();
    uint8_t *b = weir_bump((uint32_t)cap);
    memcpy(b, w->buf, w->len);
    w->buf = b;
    w->cap = (uint32_t)cap;
}

static inline void weir_put_u8(struct weir_wr *w, uint8_t b) {
    weir_reserve(w, 1);
    w->buf[w->len++] = b;
}

static inline void weir_put_u32(struct weir_wr *w, uint32_t v) {
    weir_reserve(w, 4);
    uint8_t *o = w->buf + w->len;
    o[0] = (uint8_t)v;
    o[1] = (uint8_t)(v >> 8);
    o[2] = (uint8_t)(v >> 16);
    o[3] = (uint8_t)(v >> 24);
    w->len += 4;
}

static inline void weir_put_i64(struct weir_wr *w, int64_t v) {
    weir_put_u8(w, WEIR_I64);
    weir_put_u32(w, (uint32_t)(uint64_t)v);
    weir_put_u32(w, (uint32_t)((uint64_t)v >> 32));
}

static inline void weir_put_str(struct weir_wr *w, const uint8_t *s, uint32_t n) {
    weir_reserve(w, 5 + n);
    weir_put_u8(w, WEIR_STR);
    weir_put_u32(w, n);
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static inline void weir_put_null(struct weir_wr *w) { weir_put_u8(w, WEIR_NULL); }

static inline void weir_put_bool(struct weir_wr *w, int b) { weir_put_u8(w, b ? WEIR_TRUE : WEIR_FALSE); }

/* Any NaN is written as the canonical one (the host would rewrite it). */
static inline void weir_put_f64(struct weir_wr *w, double d) {
    uint64_t bits;
    if (d != d) {
        bits = 0x7ff8000000000000ull;
    } else {
        memcpy(&bits, &d, 8);
    }
    weir_put_u8(w, WEIR_F64);
    weir_put_u32(w, (uint32_t)bits);
    weir_put_u32(w, (uint32_t)(bits >> 32));
}

static inline void weir_put_bytes(struct weir_wr *w, const uint8_t *b, uint32_t n) {
    weir_reserve(w, 5 + n);
    weir_put_u8(w, WEIR_BYTES);
    weir_put_u32(w, n);
    memcpy(w->buf + w->len, b, n);
    w->len += n;
}

/* A NUL-terminated string as a string value. */
static inline void weir_put_cstr(struct weir_wr *w, const char *s) {
    weir_put_str(w, (const uint8_t *)s, weir_strlen(s));
}

/* An already encoded value (from weir_rd_raw), copied as is. */
static inline void weir_put_raw(struct weir_wr *w, const uint8_t *v, uint32_t n) {
    weir_reserve(w, n);
    memcpy(w->buf + w->len, v, n);
    w->len += n;
}

/* A list header for `n` elements. */
static inline void weir_put_list(struct weir_wr *w, uint32_t n) {
    weir_put_u8(w, WEIR_LIST);
    weir_put_u32(w, n);
}

/* A tuple header for `n` elements (a pair: n = 2). */
static inline void weir_put_tuple(struct weir_wr *w, uint32_t n) {
    weir_put_u8(w, WEIR_TUPLE);
    weir_put_u32(w, n);
}

/* Finishes the batch: writes `count` into the header and returns the
 * packed (ptr, len) for the host. */
static inline int64_t weir_ok(struct weir_wr *w, uint32_t count) {
    uint8_t *o = w->buf;
    o[0] = (uint8_t)count;
    o[1] = (uint8_t)(count >> 8);
    o[2] = (uint8_t)(count >> 16);
    o[3] = (uint8_t)(count >> 24);
    return weir_pack(w->buf, w->len, 0);
}

/* ------------------------------------------------------------ kinds */

/* The loops behind the WEIR_<KIND> macros: they read the batch header, call
 * the function once per record (or pair of values), count what it writes
 * and finish the output batch. A function reports a bad record with
 * weir_fail(in, "message"): the call then returns that message as the
 * guest error. The output writer starts at about twice the input's size and
 * grows as needed. */

/* map, key_by: the function writes exactly one value per record. */
static inline int64_t weir_run_map(const uint8_t *in, uint32_t len, void (*fn)(struct weir_rd *, struct weir_wr *)) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 1);
    struct weir_wr w = weir_writer(2 * (uint64_t)len + 64);
    for (uint32_t i = 0; i < n && !r.err; i++) fn(&r, &w);
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, n);
}

/* flat_map: the function writes any number of values and returns how many. */
static inline int64_t weir_run_flat_map(const uint8_t *in, uint32_t len,
                                        uint32_t (*fn)(struct weir_rd *, struct weir_wr *)) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 1);
    struct weir_wr w = weir_writer(2 * (uint64_t)len + 64);
    uint32_t count = 0;
    for (uint32_t i = 0; i < n && !r.err; i++) count += fn(&r, &w);
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, count);
}

/* filter: the function reads one record and returns whether to keep it. */
static inline int64_t weir_run_filter(const uint8_t *in, uint32_t len, int (*fn)(struct weir_rd *)) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 1);
    struct weir_wr w = weir_writer(4 + (uint64_t)n);
    for (uint32_t i = 0; i < n && !r.err; i++) weir_put_bool(&w, fn(&r));
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, n);
}

/* map_partitions: the function gets the reader positioned after the batch
 * header and the record count, reads them all, and returns how many values
 * it wrote. */
static inline int64_t weir_run_map_partitions(const uint8_t *in, uint32_t len,
                                              uint32_t (*fn)(struct weir_rd *, uint32_t, struct weir_wr *)) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 1);
    struct weir_wr w = weir_writer(2 * (uint64_t)len + 64);
    uint32_t count = r.err ? 0 : fn(&r, n, &w);
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, count);
}

/* reduce over i64 values: the left fold fn(fn(v1, v2), v3)... per group. */
static inline int64_t weir_run_reduce_i64(const uint8_t *in, uint32_t len, int64_t (*fn)(int64_t, int64_t)) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 5 + 9);
    struct weir_wr w = weir_writer(4 + 9 * (uint64_t)n);
    for (uint32_t i = 0; i < n && !r.err; i++) {
        uint32_t k = weir_rd_list(&r);
        if (r.err) break;
        if (k == 0) return weir_err("a group to reduce is empty");
        int64_t acc = weir_rd_i64(&r);
        for (uint32_t j = 1; j < k && !r.err; j++) acc = fn(acc, weir_rd_i64(&r));
        weir_put_i64(&w, acc);
    }
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, n);
}

/* reduce over f64 values, the same way. */
static inline int64_t weir_run_reduce_f64(const uint8_t *in, uint32_t len, double (*fn)(double, double)) {
    struct weir_rd r = weir_reader(in, len);
    uint32_t n = weir_rd_batch(&r, 5 + 9);
    struct weir_wr w = weir_writer(4 + 9 * (uint64_t)n);
    for (uint32_t i = 0; i < n && !r.err; i++) {
        uint32_t k = weir_rd_list(&r);
        if (r.err) break;
        if (k == 0) return weir_err("a group to reduce is empty");
        double acc = weir_rd_f64(&r);
        for (uint32_t j = 1; j < k && !r.err; j++) acc = fn(acc, weir_rd_f64(&r));
        weir_put_f64(&w, acc);
    }
    if (r.err) return weir_err(r.err);
    return weir_ok(&w, n);
}

/* Each macro exports function `fn` (defined above it) as "<kind>:fn". The
 * plain ones refuse parameters (so a job file's `m.fn(4)` fails when the
 * job loads, not silently); the _PARAMS ones are for functions that read
 * them with weir_param. */
#define WEIR_DEFINE_EXPORT(kind, fn, run, refuse)                                                          \
    WEIR_EXPORT(#kind ":" #fn) int64_t weir_export_##kind##_##fn(const uint8_t *in, uint32_t len) {        \
        if (refuse && weir_has_params())                                                                   \
            return weir_err(#kind ":" #fn " takes no parameters (export it with the _PARAMS macro)");      \
        return weir_run_##run(in, len, fn);                                                                \
    }
#define WEIR_MAP(fn) WEIR_DEFINE_EXPORT(map, fn, map, 1)
#define WEIR_MAP_PARAMS(fn) WEIR_DEFINE_EXPORT(map, fn, map, 0)
#define WEIR_KEY_BY(fn) WEIR_DEFINE_EXPORT(key_by, fn, map, 1)
#define WEIR_KEY_BY_PARAMS(fn) WEIR_DEFINE_EXPORT(key_by, fn, map, 0)
#define WEIR_FLAT_MAP(fn) WEIR_DEFINE_EXPORT(flat_map, fn, flat_map, 1)
#define WEIR_FLAT_MAP_PARAMS(fn) WEIR_DEFINE_EXPORT(flat_map, fn, flat_map, 0)
#define WEIR_FILTER(fn) WEIR_DEFINE_EXPORT(filter, fn, filter, 1)
#define WEIR_FILTER_PARAMS(fn) WEIR_DEFINE_EXPORT(filter, fn, filter, 0)
#define WEIR_MAP_PARTITIONS(fn) WEIR_DEFINE_EXPORT(map_partitions, fn, map_partitions, 1)
#define WEIR_MAP_PARTITIONS_PARAMS(fn) WEIR_DEFINE_EXPORT(map_partitions, fn, map_partitions, 0)
#define WEIR_REDUCE_I64(fn) WEIR_DEFINE_EXPORT(reduce, fn, reduce_i64, 1)
#define WEIR_REDUCE_F64(fn) WEIR_DEFINE_EXPORT(reduce, fn, reduce_f64, 1)

/* Declares a plain export as a UDF in the module's "weir:exports" custom
 * section (docs/udf-abi.md, section 1), for an export whose name cannot be
 * "<kind>:<name>". One declaration per use, without quotes or backslashes:
 *
 *     WEIR_DECLARE("ident = map");
 *     __attribute__((export_name("ident"))) int64_t ident(...) { ... }
 *
 * (clang 14 does not place C data in custom sections, hence the assembler.) */
#define WEIR_DECLARE(decl) \
    __asm__(".section \".custom_section.weir:exports\",\"\",@\n.ascii \"" decl "\\n\"\n.text\n")

#endif
