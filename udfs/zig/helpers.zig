//! The rest of the Zig SDK (udf-sdk/zig/weir.zig), one function per kind,
//! with parameters and the batch time; tests/udf_dev.rs calls each. Built
//! by udfs/build.sh into udfs/zig_helpers.wasm.
//!
//!   plus            map              x -> x + n  (parameter `n`, or the first positional one)
//!   double          map              x -> 2x  (takes no parameters)
//!   stamp           map              x -> (x, batch time)
//!   is_long         filter           strings longer than 3 bytes
//!   first           key_by           a tuple's first element
//!   count           map_partitions   the partition's record count
//!   fmax            reduce           the largest f64 of each group
//!   longest         reduce           the longest string (the first of equals)
//!   span            reduce           (min, max) pairs -> the pair spanning them all
//!   merged          reduce           lists of i64 -> their concatenation
//!   first_set       reduce           the first non-null value (i64 or null)
//!   widest          reduce           any values -> the one with the longest encoding (weir.Raw)
//!   sum_with_times  update           state (sum, [batch times that brought values])
//!   running         map_with_state   a running total per key, emitted per value
//!   swap            map              (a, b) -> (b, a): a hand-written export,
//!                                    declared as "swap_pair" with weir.declare

const weir = @import("weir");

fn plus(r: *weir.Reader, w: *weir.Writer, p: ?weir.Params) void {
    const x = r.int();
    const params = p orelse return r.fail("plus needs a parameter n");
    var n = params.get("n", 0) orelse return r.fail("plus: no parameter n");
    const add = n.int();
    if (n.err) |e| return r.fail(e);
    w.int(x +% add);
}

fn double(r: *weir.Reader, w: *weir.Writer) void {
    w.int(r.int() *% 2);
}

fn stamp(r: *weir.Reader, w: *weir.Writer) void {
    const v = r.raw();
    w.tuple(2);
    w.raw(v);
    w.int(weir.batchTime());
}

fn isLong(r: *weir.Reader) bool {
    return r.str().len > 3;
}

fn first(r: *weir.Reader, w: *weir.Writer) void {
    const n = r.tuple();
    if (n == 0) return r.fail("first: an empty tuple");
    w.raw(r.raw());
    var i: u32 = 1;
    while (i < n) : (i += 1) r.skip();
}

fn count(r: *weir.Reader, n: u32, w: *weir.Writer) u32 {
    var i: u32 = 0;
    while (i < n) : (i += 1) r.skip();
    w.int(n);
    return 1;
}

fn fmax(a: f64, b: f64) f64 {
    return if (b > a) b else a;
}

// The generic weir.reduce over strings, tuples, lists, optionals and
// values of any type.
fn longest(a: []const u8, b: []const u8) []const u8 {
    return if (b.len > a.len) b else a;
}

const Span = struct { i64, i64 };

fn span(a: Span, b: Span) Span {
    return .{ @min(a[0], b[0]), @max(a[1], b[1]) };
}

fn merged(a: []const i64, b: []const i64) []const i64 {
    const out: [*]i64 = @ptrCast(@alignCast(weir.bump((a.len + b.len) * @sizeOf(i64))));
    @memcpy(out[0..a.len], a);
    @memcpy(out[a.len .. a.len + b.len], b);
    return out[0 .. a.len + b.len];
}

fn firstSet(a: ?i64, b: ?i64) ?i64 {
    return a orelse b;
}

fn widest(a: weir.Raw, b: weir.Raw) weir.Raw {
    return if (b.encoded.len > a.encoded.len) b else a;
}

fn sumWithTimes(g: *weir.UpdateGroup, w: *weir.Writer) void {
    var total: i64 = 0;
    var times = weir.Reader.init(&.{});
    var ntimes: u32 = 0;
    if (g.state) |s| {
        var st = weir.Reader.init(s);
        _ = st.tuple();
        total = st.int();
        ntimes = st.list();
        times = st;
        if (st.err) |e| return g.values.fail(e);
    }
    var i: u32 = 0;
    while (i < g.count) : (i += 1) total +%= g.values.int();
    const now = g.count > 0;
    w.tuple(2);
    w.int(total);
    w.list(ntimes + @intFromBool(now));
    i = 0;
    while (i < ntimes) : (i += 1) w.int(times.int());
    if (now) w.int(weir.batchTime());
}

fn running(g: *weir.StateGroup, w: *weir.Writer) u32 {
    if (g.timing_out) {
        w.nil(); // no output, the state removed
        return 0;
    }
    var total: i64 = 0;
    if (g.state) |s| {
        var st = weir.Reader.init(s);
        total = st.int();
    }
    var i: u32 = 0;
    while (i < g.count) : (i += 1) {
        total +%= g.values.int();
        w.int(total);
    }
    w.int(total);
    return g.count;
}

fn swapPair(r: *weir.Reader, w: *weir.Writer) void {
    if (r.tuple() != 2) return r.fail("swap: expected a pair");
    const a = r.raw();
    const b = r.raw();
    w.tuple(2);
    w.raw(b);
    w.raw(a);
}

/// A hand-written export with a plain name; its declaration gives it the
/// function name "swap_pair".
export fn swap(ptr: u32, len: u32) i64 {
    var r = weir.Reader.init(@as([*]const u8, @ptrFromInt(ptr))[0..len]);
    const n = r.batch(1);
    var w = weir.Writer.init(2 * @as(usize, len) + 64);
    var i: u32 = 0;
    while (i < n and r.err == null) : (i += 1) swapPair(&r, &w);
    if (r.err) |e| return weir.failWith(e);
    return w.finish(n);
}

comptime {
    weir.map("plus", plus);
    weir.map("double", double);
    weir.map("stamp", stamp);
    weir.filter("is_long", isLong);
    weir.keyBy("first", first);
    weir.mapPartitions("count", count);
    weir.reduceF64("fmax", fmax);
    weir.reduce("longest", longest);
    weir.reduce("span", span);
    weir.reduce("merged", merged);
    weir.reduce("first_set", firstSet);
    weir.reduce("widest", widest);
    weir.update("sum_with_times", sumWithTimes);
    weir.mapWithState("running", running);
    weir.declare("swap = map:swap_pair");
}
