//! The Weir UDF ABI v1 for Zig (docs/udf-abi.md, docs/udfs.md).
//!
//! Import this file as the module `weir` and a Zig source is a Weir UDF
//! module: the SDK exports what every module needs (`weir_abi_version`,
//! `weir_alloc`, `weir_batch_time`, `weir_params`), reads records with a
//! bounds-checked `Reader`, writes them with a growable `Writer`, and one
//! helper per kind exports a function under a plain name and declares its
//! kind in the module's `weir:exports` custom section:
//!
//!     const weir = @import("weir");
//!
//!     fn pair(r: *weir.Reader, w: *weir.Writer) void {
//!         w.tuple(2);
//!         w.str(r.str());
//!         w.int(1);
//!     }
//!     fn sum(a: i64, b: i64) i64 { return a +% b; }
//!
//!     comptime {
//!         weir.map("pair", pair);  // export "pair", declared "pair = map"
//!         weir.reduce("sum", sum); // export "sum", declared "sum = reduce"
//!     }
//!
//! Why the custom section and not `@export(.., .{ .name = "map:pair" })`:
//! the section keeps export names plain identifiers (what `export fn` and
//! other tools expect), and `declare` lets a hand-written `export fn` be a
//! UDF too. The section is written by a line of global assembly, which needs
//! Zig's LLVM backend: build with `-fllvm` (udfs/build.sh shows the whole
//! command; `-rdynamic` keeps the exports).
//!
//! Memory: every task gets a fresh instance and the host makes one
//! `weir_alloc` per call, after it has read the previous call's output, so
//! `weir_alloc` resets a bump allocator to its floor (as `udfs/c/weir_abi.h`
//! does) and nothing is freed. The parameters (`weir_params`) live below
//! that floor for the instance's life.
//!
//! Input bytes are never trusted: every read is bounds-checked; the first
//! problem is kept in `Reader.err` (later reads return zeros) and returned to
//! the host as the call's error, naming the export.

const std = @import("std");

pub const NULL: u8 = 0x00;
pub const FALSE: u8 = 0x01;
pub const TRUE: u8 = 0x02;
pub const I64: u8 = 0x03;
pub const F64: u8 = 0x04;
pub const STR: u8 = 0x05;
pub const BYTES: u8 = 0x06;
pub const TUPLE: u8 = 0x07;
pub const LIST: u8 = 0x08;

/// Nesting deeper than this is refused, as the host does.
pub const max_depth = 64;

// ------------------------------------------------------------ allocator

extern const __heap_base: u8;

var heap_floor: usize = 0;
var heap_top: usize = 0;

/// `len` bytes, 8-aligned, from the bump allocator; grows linear memory as
/// needed and traps (the host reports a trap or the memory limit) when it
/// cannot.
pub fn bump(len: usize) [*]u8 {
    const base = @intFromPtr(&__heap_base);
    if (heap_floor < base) heap_floor = base;
    if (heap_top < heap_floor) heap_top = heap_floor;
    const p = (heap_top + 7) & ~@as(usize, 7);
    const end = std.math.add(usize, p, len) catch @trap();
    const have = @wasmMemorySize(0) * 65536;
    if (end > have) {
        const pages = (end - have + 65535) / 65536;
        if (@wasmMemoryGrow(0, pages) < 0) @trap();
    }
    heap_top = end;
    return @ptrFromInt(p);
}

fn abiVersion() callconv(.c) i32 {
    return 1;
}

fn alloc(len: u32) callconv(.c) u32 {
    heap_top = heap_floor; // see "Memory" above
    return @intCast(@intFromPtr(bump(len)));
}

// ------------------------------------------------------------ batch time and parameters

var batch_time_ms: i64 = 0;
var params_bytes: ?[]const u8 = null;

fn setBatchTime(t: i64) callconv(.c) void {
    batch_time_ms = t;
}

fn setParams(ptr: u32, len: u32) callconv(.c) i64 {
    const bytes = @as([*]const u8, @ptrFromInt(ptr))[0..len];
    // Decoded once here, so malformed parameters fail the job at load.
    _ = Params.parse(bytes) catch return failWith("malformed parameters: expected (function, [positional], [named])");
    params_bytes = bytes;
    // The buffer came from the last weir_alloc: keep it below the floor.
    heap_floor = heap_top;
    return 0;
}

/// The batch time (ms since the epoch) of the RDD this instance computes;
/// 0 outside a job (`weir udf call`). docs/udf-abi.md, section 3a.
pub fn batchTime() i64 {
    return batch_time_ms;
}

/// The parameters the job file gave this use of the function
/// (`ops.plus(4)`, `geo.within(km = 10)`), or null when it gave none.
pub fn params() ?Params {
    const b = params_bytes orelse return null;
    return Params.parse(b) catch null;
}

/// `(function, [positional], [(name, value)])`, as `weir_params` got it;
/// named values are sorted by name.
pub const Params = struct {
    /// `<kind>:<name>` of the function given them.
    function: []const u8,
    /// The encoded list of positional values.
    positional: []const u8,
    /// The encoded list of `(name, value)` pairs.
    named: []const u8,

    pub const ParseError = error{MalformedParameters};

    fn parse(b: []const u8) ParseError!Params {
        var r = Reader.init(b);
        if (r.tuple() != 3) return error.MalformedParameters;
        const function = r.str();
        const positional = r.raw();
        const named = r.raw();
        if (r.err != null or r.avail() != 0) return error.MalformedParameters;
        if (positional.len == 0 or positional[0] != LIST) return error.MalformedParameters;
        if (named.len == 0 or named[0] != LIST) return error.MalformedParameters;
        return .{ .function = function, .positional = positional, .named = named };
    }

    /// How many positional values there are.
    pub fn count(self: Params) u32 {
        var r = Reader.init(self.positional);
        return r.list();
    }

    /// A reader at the value named `name`, else at positional value
    /// `index`, else null (the parameter was not given).
    pub fn get(self: Params, name: []const u8, index: u32) ?Reader {
        var r = Reader.init(self.named);
        const n = r.list();
        var i: u32 = 0;
        while (i < n and r.err == null) : (i += 1) {
            _ = r.tuple();
            const k = r.str();
            if (std.mem.eql(u8, k, name)) return r;
            r.skip();
        }
        var p = Reader.init(self.positional);
        const m = p.list();
        if (index >= m) return null;
        var j: u32 = 0;
        while (j < index) : (j += 1) p.skip();
        return if (p.err == null) p else null;
    }
};

comptime {
    @export(&abiVersion, .{ .name = "weir_abi_version" });
    @export(&alloc, .{ .name = "weir_alloc" });
    @export(&setBatchTime, .{ .name = "weir_batch_time" });
    @export(&setParams, .{ .name = "weir_params" });
}

// ------------------------------------------------------------ results

/// The packed result: bits 0..31 pointer, 32..62 length, 63 error flag.
pub fn pack(ptr: usize, len: usize, is_error: bool) i64 {
    var v: u64 = @as(u64, @intCast(ptr)) | (@as(u64, @intCast(len & 0x7fff_ffff)) << 32);
    if (is_error) v |= @as(u64, 1) << 63;
    return @bitCast(v);
}

/// A guest error: the host reports `msg` as the call's failure.
pub fn failWith(msg: []const u8) i64 {
    return pack(@intFromPtr(msg.ptr), msg.len, true);
}

// ------------------------------------------------------------ reading

/// A bounds-checked reader over encoded values (docs/udf-abi.md, section 2).
pub const Reader = struct {
    buf: []const u8,
    pos: usize = 0,
    /// The first error, or null; afterwards every read returns zeros.
    err: ?[]const u8 = null,

    pub fn init(encoded: []const u8) Reader {
        return .{ .buf = encoded };
    }

    /// Records the first error and stops reading.
    pub fn fail(self: *Reader, msg: []const u8) void {
        if (self.err == null) self.err = msg;
        self.pos = self.buf.len;
    }

    pub fn avail(self: *const Reader) usize {
        return self.buf.len - self.pos;
    }

    /// The next value's tag, without consuming it (0xff at the end).
    pub fn peek(self: *const Reader) u8 {
        return if (self.avail() > 0) self.buf[self.pos] else 0xff;
    }

    fn take(self: *Reader, n: usize, what: []const u8) ?[]const u8 {
        if (self.avail() < n) {
            self.fail(what);
            return null;
        }
        const s = self.buf[self.pos .. self.pos + n];
        self.pos += n;
        return s;
    }

    pub fn u32le(self: *Reader) u32 {
        const b = self.take(4, "truncated input") orelse return 0;
        return std.mem.readInt(u32, b[0..4], .little);
    }

    fn tag(self: *Reader, t: u8, what: []const u8) bool {
        if (self.peek() != t) {
            self.fail(what);
            return false;
        }
        self.pos += 1;
        return true;
    }

    /// A batch header: the record count (each record is at least `min`
    /// bytes, so a count the buffer cannot hold is an error).
    pub fn batch(self: *Reader, min: usize) u32 {
        const n = self.u32le();
        if (min > 0 and n > self.avail() / min) {
            self.fail("malformed input batch: count too large");
            return 0;
        }
        return n;
    }

    fn lengthPrefixed(self: *Reader, what: []const u8) []const u8 {
        const n = self.u32le();
        return self.take(n, what) orelse &.{};
    }

    /// A string value: its UTF-8 bytes, in place.
    pub fn str(self: *Reader) []const u8 {
        if (!self.tag(STR, "expected a string")) return &.{};
        return self.lengthPrefixed("string runs past the end of the input");
    }

    /// A bytes value, in place.
    pub fn bytes(self: *Reader) []const u8 {
        if (!self.tag(BYTES, "expected bytes")) return &.{};
        return self.lengthPrefixed("bytes run past the end of the input");
    }

    pub fn int(self: *Reader) i64 {
        if (!self.tag(I64, "expected an i64")) return 0;
        const b = self.take(8, "truncated input") orelse return 0;
        return std.mem.readInt(i64, b[0..8], .little);
    }

    pub fn float(self: *Reader) f64 {
        if (!self.tag(F64, "expected an f64")) return 0;
        const b = self.take(8, "truncated input") orelse return 0;
        return @bitCast(std.mem.readInt(u64, b[0..8], .little));
    }

    pub fn boolean(self: *Reader) bool {
        const t = self.peek();
        if (t != TRUE and t != FALSE) {
            self.fail("expected a bool");
            return false;
        }
        self.pos += 1;
        return t == TRUE;
    }

    pub fn nil(self: *Reader) void {
        _ = self.tag(NULL, "expected null");
    }

    /// A tuple header: the element count (a pair: 2).
    pub fn tuple(self: *Reader) u32 {
        if (!self.tag(TUPLE, "expected a tuple")) return 0;
        return self.u32le();
    }

    /// A list header: the element count.
    pub fn list(self: *Reader) u32 {
        if (!self.tag(LIST, "expected a list")) return 0;
        return self.u32le();
    }

    /// Skips one value of any type.
    pub fn skip(self: *Reader) void {
        self.skipDepth(0);
    }

    fn skipDepth(self: *Reader, depth: u32) void {
        if (depth > max_depth) return self.fail("values nested too deeply");
        const t = self.peek();
        if (t == 0xff and self.avail() == 0) return self.fail("truncated input");
        self.pos += 1;
        switch (t) {
            NULL, FALSE, TRUE => {},
            I64, F64 => _ = self.take(8, "truncated input"),
            STR, BYTES => _ = self.lengthPrefixed("value runs past the end of the input"),
            TUPLE, LIST => {
                const n = self.u32le();
                var i: u32 = 0;
                while (i < n and self.err == null) : (i += 1) self.skipDepth(depth + 1);
            },
            else => self.fail("unknown value tag"),
        }
    }

    /// One whole value, still encoded (a key, to copy with `Writer.raw`).
    pub fn raw(self: *Reader) []const u8 {
        const start = self.pos;
        self.skip();
        return if (self.err == null) self.buf[start..self.pos] else &.{};
    }
};

// ------------------------------------------------------------ writing

/// A growable writer for an output batch; its first 4 bytes hold the count.
pub const Writer = struct {
    buf: [*]u8,
    len: usize,
    cap: usize,

    /// A writer with room for about `hint` bytes (it grows as needed).
    pub fn init(hint: usize) Writer {
        const cap = std.math.clamp(hint, 16, 1 << 30);
        return .{ .buf = bump(cap), .len = 4, .cap = cap };
    }

    fn reserve(self: *Writer, n: usize) void {
        if (self.cap - self.len >= n) return;
        const want = self.len + n;
        const cap = @max(self.cap * 2, want);
        if (cap > 0x7fff_ffff) @trap();
        const b = bump(cap);
        @memcpy(b[0..self.len], self.buf[0..self.len]);
        self.buf = b;
        self.cap = cap;
    }

    fn byte(self: *Writer, b: u8) void {
        self.reserve(1);
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn u32le(self: *Writer, v: u32) void {
        self.reserve(4);
        std.mem.writeInt(u32, self.buf[self.len..][0..4], v, .little);
        self.len += 4;
    }

    fn u64le(self: *Writer, v: u64) void {
        self.reserve(8);
        std.mem.writeInt(u64, self.buf[self.len..][0..8], v, .little);
        self.len += 8;
    }

    pub fn nil(self: *Writer) void {
        self.byte(NULL);
    }

    pub fn boolean(self: *Writer, b: bool) void {
        self.byte(if (b) TRUE else FALSE);
    }

    pub fn int(self: *Writer, v: i64) void {
        self.byte(I64);
        self.u64le(@bitCast(v));
    }

    /// Any NaN is written as the canonical one (the host would rewrite it).
    pub fn float(self: *Writer, d: f64) void {
        self.byte(F64);
        self.u64le(if (std.math.isNan(d)) 0x7ff8_0000_0000_0000 else @bitCast(d));
    }

    fn prefixed(self: *Writer, t: u8, s: []const u8) void {
        self.reserve(5 + s.len);
        self.byte(t);
        self.u32le(@intCast(s.len));
        @memcpy(self.buf[self.len..][0..s.len], s);
        self.len += s.len;
    }

    /// A string value (`s` must be UTF-8; the host checks).
    pub fn str(self: *Writer, s: []const u8) void {
        self.prefixed(STR, s);
    }

    pub fn bytes(self: *Writer, b: []const u8) void {
        self.prefixed(BYTES, b);
    }

    /// A tuple header for `n` elements (a pair: 2).
    pub fn tuple(self: *Writer, n: u32) void {
        self.byte(TUPLE);
        self.u32le(n);
    }

    /// A list header for `n` elements.
    pub fn list(self: *Writer, n: u32) void {
        self.byte(LIST);
        self.u32le(n);
    }

    /// A list header whose count is not known yet: returns where it is, for
    /// `endList` to fill in.
    pub fn beginList(self: *Writer) usize {
        self.list(0);
        return self.len - 4;
    }

    pub fn endList(self: *Writer, at: usize, n: u32) void {
        std.mem.writeInt(u32, self.buf[at..][0..4], n, .little);
    }

    /// An already encoded value (from `Reader.raw`), copied as is.
    pub fn raw(self: *Writer, v: []const u8) void {
        self.reserve(v.len);
        @memcpy(self.buf[self.len..][0..v.len], v);
        self.len += v.len;
    }

    /// Finishes the batch with `count` values: the packed result.
    pub fn finish(self: *Writer, count: u32) i64 {
        std.mem.writeInt(u32, self.buf[0..4], count, .little);
        return pack(@intFromPtr(self.buf), self.len, false);
    }
};

// ------------------------------------------------------------ kinds

/// What `update` gets per key: `(key, [new values], state or null)`.
pub const UpdateGroup = struct {
    /// The key, encoded (copy it with `Writer.raw`, read it with `Reader.init`).
    key: []const u8,
    /// A reader at the first new value; `count` values follow.
    values: Reader,
    count: u32,
    /// The state, encoded, or null when the key has none yet.
    state: ?[]const u8,
};

/// What `map_with_state` gets per key: `(key, [values], state or null,
/// timing_out)`.
pub const StateGroup = struct {
    key: []const u8,
    values: Reader,
    count: u32,
    state: ?[]const u8,
    /// The key is timing out: no values, and at most one output.
    timing_out: bool,
};

/// Declares a plain export as a UDF in the `weir:exports` custom section
/// (docs/udf-abi.md, section 1): `comptime { weir.declare("f = map"); }`
/// next to a hand-written `export fn f(ptr: u32, len: u32) i64`. One
/// declaration per use, without quotes, backslashes or line breaks.
pub fn declare(comptime decl: []const u8) void {
    comptime {
        for (decl) |c| if (c == '"' or c == '\\' or c == '\n') @compileError("weir.declare: no quotes, backslashes or line breaks: " ++ decl);
    }
    _ = Declaration(decl);
}

fn Declaration(comptime decl: []const u8) type {
    return struct {
        comptime {
            asm (".section \".custom_section.weir:exports\",\"\",@\n.ascii \"" ++ decl ++ "\\n\"\n.text\n");
        }
    };
}

fn arity(comptime f: anytype) usize {
    return @typeInfo(@TypeOf(f)).@"fn".param_types.len;
}

/// The parameters for a function that takes them (`with` its last
/// argument); a function that takes none refuses them.
fn paramsFor(comptime with: bool) ?Params {
    return if (with) params() else null;
}

fn refuseParams(comptime export_name: []const u8, comptime with: bool) ?i64 {
    if (params_bytes != null and !with) return failWith(export_name ++ " takes no parameters (give it a last argument p: ?weir.Params)");
    return null;
}

fn exportAs(comptime name: []const u8, comptime kind: []const u8, comptime run: fn (u32, u32) callconv(.c) i64) void {
    @export(&run, .{ .name = name });
    declare(name ++ " = " ++ kind);
}

fn input(ptr: u32, len: u32) []const u8 {
    return @as([*]const u8, @ptrFromInt(ptr))[0..len];
}

fn done(r: *Reader, w: *Writer, count: u32) i64 {
    if (r.err) |e| return failWith(e);
    return w.finish(count);
}

/// Exports `f` as the `map` function `name`: `f(r, w)` reads one record
/// and writes exactly one value (`f(r, w, p: ?weir.Params)` takes the
/// job's parameters).
pub fn map(comptime name: []const u8, comptime f: anytype) void {
    exportAs(name, "map", OneToOne("map:" ++ name, f).run);
}

/// Exports `f` as the `key_by` function `name`: `f(r, w)` writes the key
/// of one record (the host pairs it with the record).
pub fn keyBy(comptime name: []const u8, comptime f: anytype) void {
    exportAs(name, "key_by", OneToOne("key_by:" ++ name, f).run);
}

fn OneToOne(comptime export_name: []const u8, comptime f: anytype) type {
    const with = arity(f) == 3;
    return struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, with)) |e| return e;
            var r = Reader.init(input(ptr, len));
            const n = r.batch(1);
            var w = Writer.init(2 * @as(usize, len) + 64);
            var i: u32 = 0;
            while (i < n and r.err == null) : (i += 1) {
                if (with) f(&r, &w, paramsFor(with)) else f(&r, &w);
            }
            return done(&r, &w, n);
        }
    };
}

/// Exports `f` as the `flat_map` function `name`: `f(r, w)` reads one
/// record, writes any number of values and returns how many.
pub fn flatMap(comptime name: []const u8, comptime f: anytype) void {
    const export_name = "flat_map:" ++ name;
    const with = arity(f) == 3;
    exportAs(name, "flat_map", struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, with)) |e| return e;
            var r = Reader.init(input(ptr, len));
            const n = r.batch(1);
            var w = Writer.init(2 * @as(usize, len) + 64);
            var count: u32 = 0;
            var i: u32 = 0;
            while (i < n and r.err == null) : (i += 1) {
                count += if (with) f(&r, &w, paramsFor(with)) else f(&r, &w);
            }
            return done(&r, &w, count);
        }
    }.run);
}

/// Exports `f` as the `filter` function `name`: `f(r)` reads one record
/// and returns whether to keep it.
pub fn filter(comptime name: []const u8, comptime f: anytype) void {
    const export_name = "filter:" ++ name;
    const with = arity(f) == 2;
    exportAs(name, "filter", struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, with)) |e| return e;
            var r = Reader.init(input(ptr, len));
            const n = r.batch(1);
            var w = Writer.init(4 + @as(usize, n));
            var i: u32 = 0;
            while (i < n and r.err == null) : (i += 1) {
                w.boolean(if (with) f(&r, paramsFor(with)) else f(&r));
            }
            return done(&r, &w, n);
        }
    }.run);
}

/// Exports `f` as the `map_partitions` function `name`: `f(r, n, w)` reads
/// the partition's `n` records and returns how many values it wrote.
pub fn mapPartitions(comptime name: []const u8, comptime f: anytype) void {
    const export_name = "map_partitions:" ++ name;
    const with = arity(f) == 4;
    exportAs(name, "map_partitions", struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, with)) |e| return e;
            var r = Reader.init(input(ptr, len));
            const n = r.batch(1);
            var w = Writer.init(2 * @as(usize, len) + 64);
            var count: u32 = 0;
            if (r.err == null) count = if (with) f(&r, n, &w, paramsFor(with)) else f(&r, n, &w);
            return done(&r, &w, count);
        }
    }.run);
}

/// Exports `f` as the `reduce` function `name`: the left fold
/// `f(f(v1, v2), v3)...` of each group, over values of any type `T` that
/// `read` and `write` know (`f: fn (T, T) T`; Rust's `#[weir_udf::reduce]`):
///
///     fn longest(a: []const u8, b: []const u8) []const u8 { return if (b.len > a.len) b else a; }
///     fn span(a: struct { i64, i64 }, b: struct { i64, i64 }) struct { i64, i64 } { ... }
///     comptime { weir.reduce("longest", longest); weir.reduce("span", span); }
///
/// A value that is not a `T` fails the call, naming the export.
pub fn reduce(comptime name: []const u8, comptime f: anytype) void {
    const F = @typeInfo(@TypeOf(f)).@"fn";
    const T = F.return_type orelse @compileError("weir.reduce: f must return its value type");
    if (F.param_types.len != 2 or F.param_types[0] != T or F.param_types[1] != T)
        @compileError("weir.reduce: f must be fn (T, T) T, got " ++ @typeName(@TypeOf(f)));
    exportAs(name, "reduce", Reduce("reduce:" ++ name, T, f).run);
}

/// `reduce` over i64 values (kept for modules written before `reduce`).
pub fn reduceI64(comptime name: []const u8, comptime f: fn (i64, i64) i64) void {
    reduce(name, f);
}

/// `reduce` over f64 values.
pub fn reduceF64(comptime name: []const u8, comptime f: fn (f64, f64) f64) void {
    reduce(name, f);
}

fn Reduce(comptime export_name: []const u8, comptime T: type, comptime f: fn (T, T) T) type {
    return struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, false)) |e| return e;
            var r = Reader.init(input(ptr, len));
            // A group is a list (5 bytes) of at least one value (1 byte).
            const n = r.batch(5 + 1);
            var w = Writer.init(@as(usize, len) + 64);
            var i: u32 = 0;
            while (i < n and r.err == null) : (i += 1) {
                const k = r.list();
                if (r.err != null) break;
                if (k == 0) return failWith("a group to reduce is empty");
                var acc = read(T, &r);
                var j: u32 = 1;
                while (j < k and r.err == null) : (j += 1) acc = f(acc, read(T, &r));
                if (r.err != null) break;
                write(T, &w, acc);
            }
            return done(&r, &w, n);
        }
    };
}

/// Any value, still encoded (read with `Reader.init(v.encoded)`, written
/// back unchanged): a `T` of `read`, `write` and `reduce` that takes every
/// type.
pub const Raw = struct { encoded: []const u8 };

/// Reads one value as a `T`: `i64`, `f64`, `bool`, `[]const u8` (a string),
/// `Raw` (any value), `?T` (null or a `T`), `[]const T` (a list; its
/// elements are copied into memory from `bump`, valid until the call
/// returns), or a struct (a tuple of its fields, in order: `struct { []const
/// u8, i64 }` is a pair). A value of another type sets `r.err` and gives a
/// zero value.
pub fn read(comptime T: type, r: *Reader) T {
    if (T == i64) return r.int();
    if (T == f64) return r.float();
    if (T == bool) return r.boolean();
    if (T == []const u8) return r.str();
    if (T == Raw) return .{ .encoded = r.raw() };
    switch (@typeInfo(T)) {
        .optional => |o| {
            if (r.peek() == NULL) {
                r.pos += 1;
                return null;
            }
            return read(o.child, r);
        },
        .pointer => |p| {
            if (p.size != .slice or !p.attrs.@"const") @compileError("weir.read: a list is a []const T, not " ++ @typeName(T));
            const n = r.list();
            // Every element takes at least one byte: a count that does not
            // fit in the input is refused before allocating.
            if (n > r.avail()) {
                r.fail("a list's count runs past the end of the input");
                return &.{};
            }
            if (r.err != null or n == 0) return &.{};
            const size = std.math.mul(usize, n, @sizeOf(p.child)) catch {
                r.fail("a list too large for memory");
                return &.{};
            };
            const items: [*]p.child = @ptrCast(@alignCast(bump(size)));
            var i: u32 = 0;
            while (i < n) : (i += 1) items[i] = read(p.child, r);
            return items[0..n];
        },
        .@"struct" => |st| {
            var v: T = undefined;
            const n = r.tuple();
            if (r.err == null and n != st.field_names.len) r.fail("a tuple of the wrong length");
            inline for (st.field_names, st.field_types) |fname, ftype| @field(v, fname) = read(ftype, r);
            return v;
        },
        else => @compileError("weir.read: no encoding for " ++ @typeName(T)),
    }
}

/// Writes `v` as `read` reads a `T`.
pub fn write(comptime T: type, w: *Writer, v: T) void {
    if (T == i64) return w.int(v);
    if (T == f64) return w.float(v);
    if (T == bool) return w.boolean(v);
    if (T == []const u8) return w.str(v);
    if (T == Raw) return w.raw(v.encoded);
    switch (@typeInfo(T)) {
        .optional => |o| if (v) |x| write(o.child, w, x) else w.nil(),
        .pointer => |p| {
            if (p.size != .slice or !p.attrs.@"const") @compileError("weir.write: a list is a []const T, not " ++ @typeName(T));
            w.list(@intCast(v.len));
            for (v) |x| write(p.child, w, x);
        },
        .@"struct" => |st| {
            w.tuple(st.field_names.len);
            inline for (st.field_names, st.field_types) |fname, ftype| write(ftype, w, @field(v, fname));
        },
        else => @compileError("weir.write: no encoding for " ++ @typeName(T)),
    }
}

/// Reads a group's `state or null` field.
fn optState(r: *Reader) ?[]const u8 {
    if (r.peek() == NULL) {
        r.pos += 1;
        return null;
    }
    return r.raw();
}

/// Exports `f` as the `update` function `name` (`update_state_by_key`):
/// `f(g, w)` gets one key's `UpdateGroup` and writes exactly one value, the
/// new state, or null (`w.nil()`) to remove the key. `weir.batchTime()` is
/// the batch's time.
pub fn update(comptime name: []const u8, comptime f: anytype) void {
    const export_name = "update:" ++ name;
    const with = arity(f) == 3;
    exportAs(name, "update", struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, with)) |e| return e;
            var r = Reader.init(input(ptr, len));
            const n = r.batch(1);
            var w = Writer.init(2 * @as(usize, len) + 64);
            var i: u32 = 0;
            while (i < n and r.err == null) : (i += 1) {
                if (r.tuple() != 3) r.fail("expected an update group (key, [values], state)");
                const key = r.raw();
                const count = r.list();
                const values = r;
                var j: u32 = 0;
                while (j < count and r.err == null) : (j += 1) r.skip();
                const state = optState(&r);
                if (r.err != null) break;
                var g = UpdateGroup{ .key = key, .values = values, .count = count, .state = state };
                if (with) f(&g, &w, paramsFor(with)) else f(&g, &w);
                if (g.values.err) |e| return failWith(e);
            }
            return done(&r, &w, n);
        }
    }.run);
}

/// Exports `f` as the `map_with_state` function `name`: `f(g, w)` gets one
/// key's `StateGroup`, writes its outputs (at most one per value, or one
/// when timing out), then the new state or null, and returns how many
/// outputs it wrote.
pub fn mapWithState(comptime name: []const u8, comptime f: anytype) void {
    const export_name = "map_with_state:" ++ name;
    const with = arity(f) == 3;
    exportAs(name, "map_with_state", struct {
        fn run(ptr: u32, len: u32) callconv(.c) i64 {
            if (refuseParams(export_name, with)) |e| return e;
            var r = Reader.init(input(ptr, len));
            const n = r.batch(1);
            var w = Writer.init(2 * @as(usize, len) + 64);
            var i: u32 = 0;
            while (i < n and r.err == null) : (i += 1) {
                if (r.tuple() != 4) r.fail("expected a map_with_state group (key, [values], state, timing_out)");
                const key = r.raw();
                const count = r.list();
                const values = r;
                var j: u32 = 0;
                while (j < count and r.err == null) : (j += 1) r.skip();
                const state = optState(&r);
                const timing_out = r.boolean();
                if (r.err != null) break;
                var g = StateGroup{ .key = key, .values = values, .count = count, .state = state, .timing_out = timing_out };
                w.tuple(2);
                const at = w.beginList();
                const outs: u32 = if (with) f(&g, &w, paramsFor(with)) else f(&g, &w);
                w.endList(at, outs);
                if (g.values.err) |e| return failWith(e);
            }
            return done(&r, &w, n);
        }
    }.run);
}
