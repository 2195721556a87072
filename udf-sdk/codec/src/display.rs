//! Rendering encoded values as Spark's `toString` does: `(word,3)`, `1.0`,
//! `null`. Lists render as `[a, b]`; bytes as `0x` + lowercase hex.

use alloc::string::String;
use core::fmt::Write;

use crate::*;

/// Renders one encoded value; malformed input renders as `<malformed: ...>`.
pub fn render(v: &[u8]) -> String {
    let mut s = String::new();
    if let Err(e) = render_into(v, 0, &mut s, 0) {
        s.clear();
        let _ = write!(s, "<malformed: {e}>");
    }
    s
}

/// Appends the rendering of one encoded value to `out` (no allocation of
/// its own: sinks render a whole partition into one buffer). A malformed
/// value is an error, and `out` may then hold part of its rendering.
pub fn render_append(v: &[u8], out: &mut String) -> Result<(), CodecError> {
    render_into(v, 0, out, 0).map(|_| ())
}

fn render_into(buf: &[u8], at: usize, out: &mut String, depth: usize) -> Result<usize, CodecError> {
    let end = skip_value(buf, at)?;
    match buf[at] {
        TAG_NULL => out.push_str("null"),
        TAG_FALSE => out.push_str("false"),
        TAG_TRUE => out.push_str("true"),
        TAG_I64 => push_i64(out, read_u64(buf, at + 1)? as i64),
        TAG_F64 => java_double(f64::from_bits(read_u64(buf, at + 1)?), out),
        TAG_STR => match core::str::from_utf8(&buf[at + 5..end]) {
            Ok(t) => out.push_str(t),
            Err(_) => out.push_str(&lossy(&buf[at + 5..end])),
        },
        TAG_BYTES => {
            out.push_str("0x");
            for b in &buf[at + 5..end] {
                let _ = write!(out, "{b:02x}");
            }
        }
        t => {
            if depth >= MAX_DEPTH {
                return Err(CodecError { offset: at, what: "values nested too deeply" });
            }
            let n = read_u32(buf, at + 1)?;
            let (open, sep, close) = if t == TAG_TUPLE { ('(', ",", ')') } else { ('[', ", ", ']') };
            out.push(open);
            let mut p = at + 5;
            for i in 0..n {
                if i > 0 {
                    out.push_str(sep);
                }
                p = render_into(buf, p, out, depth + 1)?;
            }
            out.push(close);
        }
    }
    Ok(end)
}

/// Decimal digits of `v` without the formatting machinery (the hot path of
/// text outputs: every count of a WordCount).
fn push_i64(out: &mut String, v: i64) {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push('-');
    }
    // ASCII digits: always valid UTF-8.
    out.push_str(core::str::from_utf8(&digits[i..]).unwrap_or_default());
}

/// `Double.toString` as the JVM prints it: `1.0`, `0.001`, `1.0E7`, `1.5E-4`,
/// `NaN`, `Infinity`.
fn java_double(x: f64, out: &mut String) {
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    let a = x.abs();
    if x == 0.0 || (1e-3..1e7).contains(&a) {
        let mut s = String::new();
        let _ = write!(s, "{x}");
        if !s.contains('.') {
            s.push_str(".0");
        }
        out.push_str(&s);
    } else {
        // Rust's shortest round-trip digits, JVM layout: mantissa always has a
        // fractional part, exponent after an upper-case E.
        let mut s = String::new();
        let _ = write!(s, "{x:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        out.push_str(m);
        if !m.contains('.') {
            out.push_str(".0");
        }
        out.push('E');
        out.push_str(e);
    }
}
