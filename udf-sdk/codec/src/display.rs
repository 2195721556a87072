//! Rendering encoded values as Spark's `toString` does: `(word,3)`, `1.0`,
//! `null`. Lists render as `[a, b]`; bytes as `0x` + lowercase hex.

use alloc::string::String;
use core::fmt::Write;

use crate::*;

/// Renders one encoded value; malformed input renders as `<malformed: ...>`.
pub fn render(v: &[u8]) -> String {
    let mut s = String::new();
    if let Err(e) = render_checked(v, &mut s) {
        s.clear();
        let _ = write!(s, "<malformed: {e}>");
    }
    s
}

/// Appends the rendering of one encoded value to `out` (no allocation of
/// its own: sinks render a whole partition into one buffer). A malformed
/// value is an error, and `out` is then left as it was.
pub fn render_append(v: &[u8], out: &mut String) -> Result<(), CodecError> {
    let len = out.len();
    render_checked(v, out).inspect_err(|_| out.truncate(len))
}

/// Renders in one walk over the value (the hot path of text outputs); on a
/// malformed value, the error is the one [`skip_value`] gives for it, as
/// when the value was checked whole before rendering.
fn render_checked(v: &[u8], out: &mut String) -> Result<(), CodecError> {
    match render_into(v, 0, out, 0) {
        Ok(_) => Ok(()),
        Err(e) => Err(skip_value(v, 0).err().unwrap_or(e)),
    }
}

fn render_into(buf: &[u8], at: usize, out: &mut String, depth: usize) -> Result<usize, CodecError> {
    let Some(&tag) = buf.get(at) else {
        return skip_value(buf, at);
    };
    match tag {
        TAG_NULL => out.push_str("null"),
        TAG_FALSE => out.push_str("false"),
        TAG_TRUE => out.push_str("true"),
        TAG_I64 => push_i64(out, read_u64(buf, at + 1)? as i64),
        TAG_F64 => java_double(f64::from_bits(read_u64(buf, at + 1)?), out),
        TAG_STR => {
            let end = skip_value(buf, at)?;
            let b = &buf[at + 5..end];
            match core::str::from_utf8(b) {
                Ok(t) => out.push_str(t),
                Err(_) => out.push_str(&lossy(b)),
            }
            return Ok(end);
        }
        TAG_BYTES => {
            let end = skip_value(buf, at)?;
            out.push_str("0x");
            for b in &buf[at + 5..end] {
                let _ = write!(out, "{b:02x}");
            }
            return Ok(end);
        }
        TAG_TUPLE | TAG_LIST => {
            if depth >= MAX_DEPTH {
                return Err(CodecError { offset: at, what: "values nested too deeply" });
            }
            let n = read_u32(buf, at + 1)?;
            let (open, sep, close) = if tag == TAG_TUPLE { ('(', ",", ')') } else { ('[', ", ", ']') };
            out.push(open);
            let mut p = at + 5;
            for i in 0..n {
                if i > 0 {
                    out.push_str(sep);
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
