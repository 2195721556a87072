//! WordCount in Zig: the same functions, with the same outputs byte for
//! byte, as the Rust udfs/wordcount, the C udfs/c/wordcount.c, the
//! AssemblyScript udfs/assemblyscript/wordcount.ts and the WAT
//! udfs/wat/wordcount.wat:
//!
//!   split      flat_map   line -> its words (split on ASCII whitespace, no empty words)
//!   pair       map        word -> (word, 1)
//!   sum        reduce     left fold of a + b over each group (wrapping)
//!   subtract   reduce     left fold of a - b over each group (wrapping)
//!
//! The SDK (udf-sdk/zig/weir.zig) exports each function under its plain name
//! and declares its kind in the module's `weir:exports` section. Built by
//! udfs/build.sh into udfs/wordcount_zig.wasm.

const weir = @import("weir");

/// Rust's u8::is_ascii_whitespace: space, \t, \n, \x0c, \r (not \x0b).
fn isWs(b: u8) bool {
    return b == ' ' or b == '\t' or b == '\n' or b == 0x0c or b == '\r';
}

/// A line: its words, as strings. Returns how many it wrote.
fn split(r: *weir.Reader, w: *weir.Writer) u32 {
    const s = r.str();
    var i: usize = 0;
    var words: u32 = 0;
    while (true) {
        while (i < s.len and isWs(s[i])) i += 1;
        if (i == s.len) break;
        const start = i;
        while (i < s.len and !isWs(s[i])) i += 1;
        w.str(s[start..i]);
        words += 1;
    }
    return words;
}

/// A word: the pair (word, 1).
fn pair(r: *weir.Reader, w: *weir.Writer) void {
    const word = r.str();
    w.tuple(2);
    w.str(word);
    w.int(1);
}

fn sum(a: i64, b: i64) i64 {
    return a +% b;
}

fn subtract(a: i64, b: i64) i64 {
    return a -% b;
}

comptime {
    weir.flatMap("split", split);
    weir.map("pair", pair);
    weir.reduce("sum", sum);
    weir.reduce("subtract", subtract);
}
