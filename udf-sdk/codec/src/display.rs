//! Rendering encoded values as Spark's `toString` does: `(word,3)`, `1.0`,
//! `null`. Lists render as `[a, b]`; bytes as `0x` + lowercase hex.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::*;

/// Renders one encoded value; malformed input renders as `<malformed: ...>`.
pub fn render(v: &[u8]) -> String {
    let mut out = Vec::new();
    match render_checked(v, &mut out) {
        // Strings are copied only when valid UTF-8 (else replaced), so this
        // conversion never fails on what `render_into` wrote.
        Ok(()) => String::from_utf8(out).unwrap_or_else(|e| lossy(e.as_bytes())),
        Err(e) => alloc::format!("<malformed: {e}>"),
    }
}

/// Appends the rendering of one encoded value to `out`. A malformed value is
/// an error, and `out` is then left as it was. (Sinks use
/// [`render_append_bytes`], which renders with no allocation of its own.)
pub fn render_append(v: &[u8], out: &mut String) -> Result<(), CodecError> {
    let mut b = Vec::new();
    render_checked(v, &mut b)?;
    out.push_str(&String::from_utf8(b).unwrap_or_else(|e| lossy(e.as_bytes())));
    Ok(())
}

/// Appends the rendering of one encoded value to `out`, as bytes: the hot
/// path of text outputs, which write bytes anyway (a whole partition into
/// one buffer). What it appends is always valid UTF-8 (a string that is not
/// renders with U+FFFD, as `String::from_utf8_lossy` does), without a UTF-8
/// walk over every short ASCII word. A malformed value is an error, and
/// `out` is then left as it was.
pub fn render_append_bytes(v: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let len = out.len();
    render_checked(v, out).inspect_err(|_| out.truncate(len))
}

/// Renders in one walk over the value; on a malformed value, the error is
/// the one [`skip_value`] gives for it, as when the value was checked whole
/// before rendering.
fn render_checked(v: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    match render_into(v, 0, out, 0) {
        Ok(_) => Ok(()),
        Err(e) => Err(skip_value(v, 0).err().unwrap_or(e)),
    }
}

fn render_into(buf: &[u8], at: usize, out: &mut Vec<u8>, depth: usize) -> Result<usize, CodecError> {
    let Some(&tag) = buf.get(at) else {
        return skip_value(buf, at);
    };
    match tag {
        TAG_NULL => out.extend_from_slice(b"null"),
        TAG_FALSE => out.extend_from_slice(b"false"),
        TAG_TRUE => out.extend_from_slice(b"true"),
        TAG_I64 => push_i64(out, read_u64(buf, at + 1)? as i64),
        TAG_F64 => java_double(f64::from_bits(read_u64(buf, at + 1)?), out),
        TAG_STR => {
            let end = skip_value(buf, at)?;
            let b = &buf[at + 5..end];
            // Most strings are short ASCII words: no UTF-8 walk for them.
            if ascii(b) || core::str::from_utf8(b).is_ok() {
                out.extend_from_slice(b);
            } else {
                out.extend_from_slice(lossy(b).as_bytes());
            }
            return Ok(end);
        }
        TAG_BYTES => {
            let end = skip_value(buf, at)?;
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"0x");
            for &b in &buf[at + 5..end] {
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            return Ok(end);
        }
        TAG_TUPLE | TAG_LIST => {
            if depth >= MAX_DEPTH {
                return Err(CodecError { offset: at, what: "values nested too deeply" });
            }
            let n = read_u32(buf, at + 1)?;
            let (open, sep, close): (u8, &[u8], u8) =
                if tag == TAG_TUPLE { (b'(', b",", b')') } else { (b'[', b", ", b']') };
            out.push(open);
            let mut p = at + 5;
            for i in 0..n {
                if i > 0 {
                    out.extend_from_slice(sep);
                }
                p = render_into(buf, p, out, depth + 1)?;
            }
            out.push(close);
            return Ok(p);
        }
        _ => return skip_value(buf, at),
    }
    // The fixed-size scalars.
    Ok(at + if matches!(tag, TAG_I64 | TAG_F64) { 9 } else { 1 })
}

/// Decimal digits of `v` without the formatting machinery (the hot path of
/// text outputs: every count of a WordCount).
fn push_i64(out: &mut Vec<u8>, v: i64) {
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
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

/// `Double.toString` as the JVM prints it: `1.0`, `0.001`, `1.0E7`, `1.5E-4`,
/// `NaN`, `Infinity`.
fn java_double(x: f64, out: &mut Vec<u8>) {
    if x.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if x.is_infinite() {
        out.extend_from_slice(if x > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    let a = x.abs();
    if x == 0.0 || (1e-3..1e7).contains(&a) {
        let mut s = String::new();
        let _ = write!(s, "{x}");
        if !s.contains('.') {
            s.push_str(".0");
        }
        out.extend_from_slice(s.as_bytes());
    } else {
        // Rust's shortest round-trip digits, JVM layout: mantissa always has a
        // fractional part, exponent after an upper-case E.
        let mut s = String::new();
        let _ = write!(s, "{x:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        out.extend_from_slice(m.as_bytes());
        if !m.contains('.') {
            out.extend_from_slice(b".0");
        }
        out.push(b'E');
        out.extend_from_slice(e.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::Value;
    use alloc::vec;

    /// Every kind of value renders as Spark prints it, nested ones too.
    #[test]
    fn renders_values_as_spark_prints_them() {
        let v = Value::pair(
            Value::str("wörd"),
            Value::List(vec![
                Value::I64(-12),
                Value::F64(1.5),
                Value::Null,
                Value::Bool(true),
                Value::Tuple(vec![Value::Bytes(vec![0, 255]), Value::Bool(false)]),
            ]),
        );
        assert_eq!(render(&v.encode()), "(wörd,[-12, 1.5, null, true, (0x00ff,false)])");
        let mut out = String::from("x");
        render_append(&Value::pair(Value::str("a"), Value::I64(3)).encode(), &mut out).unwrap();
        assert_eq!(out, "x(a,3)");
        let mut bytes = b"y".to_vec();
        render_append_bytes(&v.encode(), &mut bytes).unwrap();
        assert_eq!(bytes, "y(wörd,[-12, 1.5, null, true, (0x00ff,false)])".as_bytes());
    }

    /// A string that is not valid UTF-8 (which a checked batch never holds,
    /// but a renderer must not pass on) renders with U+FFFD, and the bytes
    /// written are valid UTF-8; short ASCII and multi-byte strings of every
    /// length render as they are.
    #[test]
    fn strings_render_as_valid_utf8() {
        let raw_str = |b: &[u8]| {
            let mut v = vec![TAG_STR];
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
            v
        };
        let mut out = Vec::new();
        render_append_bytes(&raw_str(b"ab\xffcd"), &mut out).unwrap();
        assert_eq!(core::str::from_utf8(&out), Ok("ab\u{fffd}cd"));
        assert_eq!(render(&raw_str(b"\xc3")), "\u{fffd}");
        for n in 0..40 {
            let word: String = "aé".chars().cycle().take(n).collect();
            let mut out = Vec::new();
            render_append_bytes(&Value::str(&word).encode(), &mut out).unwrap();
            assert_eq!(out, word.as_bytes(), "{n}");
            let ascii: String = "a".repeat(n);
            out.clear();
            render_append_bytes(&Value::str(&ascii).encode(), &mut out).unwrap();
            assert_eq!(out, ascii.as_bytes(), "{n}");
        }
    }

    /// A malformed value is refused with the error `skip_value` gives for
    /// it, and `render_append` leaves its buffer as it was, even when the
    /// fault comes after parts that could be rendered.
    #[test]
    fn malformed_values_are_refused_whole() {
        let good = Value::pair(Value::str("word"), Value::I64(7)).encode();
        let cases = [
            good[..good.len() - 3].to_vec(), // the count cut short
            {
                let mut b = good.clone();
                b[5] = 0x7f; // an unknown tag where the key starts
                b
            },
            {
                let mut b = good.clone();
                b[1] = 3; // a third element that is not there
                b
            },
            vec![],
        ];
        for bad in cases {
            let want = skip_value(&bad, 0).unwrap_err();
            let mut out = String::from("kept");
            assert_eq!(render_append(&bad, &mut out), Err(want.clone()), "{bad:?}");
            assert_eq!(out, "kept", "{bad:?}");
            let mut bytes = b"kept".to_vec();
            assert_eq!(render_append_bytes(&bad, &mut bytes), Err(want.clone()), "{bad:?}");
            assert_eq!(bytes, b"kept", "{bad:?}");
            assert_eq!(render(&bad), alloc::format!("<malformed: {want}>"));
        }
        // Nesting deeper than MAX_DEPTH is an error, not a stack overflow.
        let mut deep = Value::I64(1);
        for _ in 0..MAX_DEPTH + 1 {
            deep = Value::List(vec![deep]);
        }
        assert!(render_append(&deep.encode(), &mut String::new()).is_err());
    }
}
