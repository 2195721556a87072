//! Conversions between Rust types and encoded values (`docs/udf-abi.md`).
//! Decoding borrows from the input buffer where it can (`&str`, `Bytes`).

use weir_codec::*;

/// Decodes one encoded value (exactly one, already delimited).
pub trait FromValue<'a>: Sized {
    fn from_value(v: &'a [u8]) -> Result<Self, String>;

    /// Decodes the value starting at `at` in `buf`, returning it and where
    /// it ends (scalars and strings override this to parse their header once).
    #[inline]
    fn decode_at(buf: &'a [u8], at: usize) -> Result<(Self, usize), String> {
        let end = skip_value(buf, at).map_err(|e| e.to_string())?;
        Ok((Self::from_value(&buf[at..end])?, end))
    }
}

/// Appends the canonical encoding of `self`.
pub trait ToValue {
    fn write(&self, out: &mut Vec<u8>);
}

/// A bytes value, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes<'a>(pub &'a [u8]);

/// Any value, left encoded (pass-through without decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Raw<'a>(pub &'a [u8]);

fn tag_name(v: &[u8]) -> &'static str {
    match v.first() {
        Some(&TAG_NULL) => "null",
        Some(&TAG_FALSE) | Some(&TAG_TRUE) => "bool",
        Some(&TAG_I64) => "i64",
        Some(&TAG_F64) => "f64",
        Some(&TAG_STR) => "string",
        Some(&TAG_BYTES) => "bytes",
        Some(&TAG_TUPLE) => "tuple",
        Some(&TAG_LIST) => "list",
        _ => "malformed value",
    }
}

#[cold]
fn mismatch<T>(want: &str, v: &[u8]) -> Result<T, String> {
    Err(format!("expected {want}, got {}", tag_name(v)))
}

#[inline(always)]
fn u32_at(v: &[u8], at: usize) -> Result<u32, String> {
    match v.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => truncated(),
    }
}

#[cold]
fn truncated<T>() -> Result<T, String> {
    Err("truncated value".to_string())
}

fn scalar8(v: &[u8]) -> Result<[u8; 8], String> {
    let mut a = [0u8; 8];
    a.copy_from_slice(v.get(1..9).ok_or("truncated value")?);
    Ok(a)
}

impl<'a> FromValue<'a> for &'a str {
    #[inline(always)]
    fn decode_at(buf: &'a [u8], at: usize) -> Result<(Self, usize), String> {
        if buf.get(at) != Some(&TAG_STR) {
            return mismatch("string", buf.get(at..).unwrap_or_default());
        }
        let len = u32_at(buf, at + 1)? as usize;
        let Some(b) = buf.get(at + 5..at + 5 + len) else { return truncated() };
        // SAFETY: as in `from_value`.
        Ok((unsafe { core::str::from_utf8_unchecked(b) }, at + 5 + len))
    }
    #[inline]
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        if v.first() != Some(&TAG_STR) {
            return mismatch("string", v);
        }
        let len = u32_at(v, 1)? as usize;
        let b = v.get(5..5 + len).ok_or("truncated string")?;
        // The host validates every string it hands over (ABI §2), and strings
        // a chained call passes on were written from `&str` by this SDK.
        // SAFETY: see above; a violation could only garble this sandboxed guest.
        Ok(unsafe { core::str::from_utf8_unchecked(b) })
    }
}
impl<'a> FromValue<'a> for String {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        <&str>::from_value(v).map(|s| s.to_string())
    }
}
impl<'a> FromValue<'a> for Bytes<'a> {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        if v.first() != Some(&TAG_BYTES) {
            return mismatch("bytes", v);
        }
        let len = u32_at(v, 1)? as usize;
        Ok(Bytes(v.get(5..5 + len).ok_or("truncated bytes")?))
    }
}
impl<'a> FromValue<'a> for Raw<'a> {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        Ok(Raw(v))
    }
}
impl<'a> FromValue<'a> for i64 {
    #[inline(always)]
    fn decode_at(buf: &'a [u8], at: usize) -> Result<(Self, usize), String> {
        match buf.get(at..at + 9) {
            Some(b) if b[0] == TAG_I64 => {
                Ok((i64::from_le_bytes([b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]]), at + 9))
            }
            _ if buf.get(at) == Some(&TAG_I64) => truncated(),
            _ => mismatch("i64", buf.get(at..).unwrap_or_default()),
        }
    }
    #[inline]
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        if v.first() != Some(&TAG_I64) {
            return mismatch("i64", v);
        }
        Ok(i64::from_le_bytes(scalar8(v)?))
    }
}
impl<'a> FromValue<'a> for i32 {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        let x = i64::from_value(v)?;
        i32::try_from(x).map_err(|_| format!("{x} does not fit in i32"))
    }
}
impl<'a> FromValue<'a> for f64 {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        match v.first() {
            Some(&TAG_F64) => Ok(f64::from_le_bytes(scalar8(v)?)),
            // Integers widen to doubles, as numeric literals in job files are i64.
            Some(&TAG_I64) => Ok(i64::from_le_bytes(scalar8(v)?) as f64),
            _ => mismatch("f64", v),
        }
    }
}
impl<'a> FromValue<'a> for bool {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        match v.first() {
            Some(&TAG_TRUE) => Ok(true),
            Some(&TAG_FALSE) => Ok(false),
            _ => mismatch("bool", v),
        }
    }
}
impl<'a> FromValue<'a> for () {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        match v.first() {
            Some(&TAG_NULL) => Ok(()),
            _ => mismatch("null", v),
        }
    }
}
impl<'a, T: FromValue<'a>> FromValue<'a> for Option<T> {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        if v.first() == Some(&TAG_NULL) {
            Ok(None)
        } else {
            T::from_value(v).map(Some)
        }
    }
    #[inline]
    fn decode_at(buf: &'a [u8], at: usize) -> Result<(Self, usize), String> {
        if buf.get(at) == Some(&TAG_NULL) {
            Ok((None, at + 1))
        } else {
            T::decode_at(buf, at).map(|(x, end)| (Some(x), end))
        }
    }
}
impl<'a> FromValue<'a> for Value {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        Value::decode(v).map_err(|e| e.to_string())
    }
}

impl<'a, T: FromValue<'a>> FromValue<'a> for Vec<T> {
    fn from_value(v: &'a [u8]) -> Result<Self, String> {
        Self::decode_at(v, 0).map(|(xs, _)| xs)
    }
    /// One pass over the elements, each decoded where it starts (no
    /// separate pass to cut the list into slices first): the values of an
    /// `update` group are read once.
    #[inline]
    fn decode_at(buf: &'a [u8], at: usize) -> Result<(Self, usize), String> {
        match buf.get(at) {
            Some(&TAG_LIST) | Some(&TAG_TUPLE) => {}
            _ => return mismatch("list", buf.get(at..).unwrap_or_default()),
        }
        let n = u32_at(buf, at + 1)? as usize;
        // Every element takes at least a byte: a count past the bytes left
        // is malformed, and must not size the allocation.
        let mut xs = Vec::with_capacity(n.min(buf.len().saturating_sub(at + 5)));
        let mut p = at + 5;
        for _ in 0..n {
            let (x, end) = T::decode_at(buf, p)?;
            xs.push(x);
            p = end;
        }
        Ok((xs, p))
    }
}

macro_rules! tuple_impls {
    ($n:expr; $($t:ident $i:tt),+) => {
        impl<'a, $($t: FromValue<'a>),+> FromValue<'a> for ($($t,)+) {
            fn from_value(v: &'a [u8]) -> Result<Self, String> {
                Self::decode_at(v, 0).map(|(x, _)| x)
            }
            /// One pass: each element decoded where it starts.
            #[inline]
            #[allow(non_snake_case)]
            fn decode_at(buf: &'a [u8], at: usize) -> Result<(Self, usize), String> {
                match buf.get(at) {
                    Some(&TAG_TUPLE) | Some(&TAG_LIST) => {}
                    _ => return mismatch(concat!(stringify!($n), "-tuple"), buf.get(at..).unwrap_or_default()),
                }
                let n = u32_at(buf, at + 1)?;
                if n != $n {
                    return Err(format!("expected a {}-tuple, got {} elements", $n, n));
                }
                let p = at + 5;
                // Each element's value is bound to its type parameter's name.
                $(let ($t, p) = <$t>::decode_at(buf, p)?;)+
                Ok((($($t,)+), p))
            }
        }
        impl<$($t: ToValue),+> ToValue for ($($t,)+) {
            #[inline(always)]
            fn write(&self, out: &mut Vec<u8>) {
                Writer::new(out).tuple($n);
                $(self.$i.write(out);)+
            }
        }
    };
}
tuple_impls!(1; A 0);
tuple_impls!(2; A 0, B 1);
tuple_impls!(3; A 0, B 1, C 2);
tuple_impls!(4; A 0, B 1, C 2, D 3);

impl ToValue for str {
    #[inline(always)]
    fn write(&self, out: &mut Vec<u8>) {
        write_str(out, self)
    }
}

/// Appends a string value; its bytes go through [`extend_short`], which
/// copies words without a `memory.copy` libcall.
#[inline(always)]
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(TAG_STR);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    extend_short(out, s.as_bytes());
}
impl ToValue for String {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).str(self)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    #[inline(always)]
    fn write(&self, out: &mut Vec<u8>) {
        (**self).write(out)
    }
}
impl<T: ToValue + ?Sized> ToValue for Box<T> {
    fn write(&self, out: &mut Vec<u8>) {
        (**self).write(out)
    }
}
impl ToValue for i64 {
    #[inline]
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).i64(*self)
    }
}
impl ToValue for i32 {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).i64(*self as i64)
    }
}
impl ToValue for u32 {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).i64(*self as i64)
    }
}
impl ToValue for usize {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).i64(*self as i64)
    }
}
impl ToValue for f64 {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).f64(*self)
    }
}
impl ToValue for bool {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).bool(*self)
    }
}
impl ToValue for () {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).null()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write(out),
            None => Writer::new(out).null(),
        }
    }
}
impl<T: ToValue> ToValue for [T] {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).list(self.len() as u32);
        for x in self {
            x.write(out);
        }
    }
}
impl<T: ToValue> ToValue for Vec<T> {
    fn write(&self, out: &mut Vec<u8>) {
        self.as_slice().write(out)
    }
}
impl ToValue for Bytes<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        Writer::new(out).bytes(self.0)
    }
}
impl ToValue for Raw<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0)
    }
}
impl ToValue for Value {
    fn write(&self, out: &mut Vec<u8>) {
        self.encode_into(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the short-string stores' boundaries encodes as
    /// the codec's writer does, after whatever the buffer already held.
    #[test]
    fn short_strings_encode_like_the_codec_writer() {
        let text: String = (0..40u8).map(|i| (b'a' + i % 26) as char).collect();
        for n in 0..=40 {
            let s = &text[..n];
            let mut fast = vec![7u8, 8];
            s.write(&mut fast);
            let mut want = vec![7u8, 8];
            Writer::new(&mut want).str(s);
            assert_eq!(fast, want, "length {n}");
        }
    }

    /// Lists, tuples and options decode in one pass where they start, end
    /// where the value ends, and refuse malformed counts without sizing an
    /// allocation by them.
    #[test]
    fn containers_decode_in_place_and_refuse_bad_counts() {
        let v: Vec<(&str, Option<i64>)> = vec![("a", Some(1)), ("bc", None), ("", Some(-7))];
        let mut buf = vec![9u8];
        v.write(&mut buf);
        let end = buf.len();
        (Some(3i64),).write(&mut buf);
        let (got, at) = Vec::<(&str, Option<i64>)>::decode_at(&buf, 1).unwrap();
        assert_eq!((got, at), (v.clone(), end));
        assert_eq!(<(Option<i64>,)>::decode_at(&buf, at).unwrap(), ((Some(3),), buf.len()));
        assert_eq!(Vec::<(&str, Option<i64>)>::from_value(&buf[1..end]).unwrap(), v);
        // A count of 2^32 - 1 elements in a 9-byte buffer: truncated, not an abort.
        let huge = [TAG_LIST, 0xff, 0xff, 0xff, 0xff, TAG_I64, 0, 0, 0];
        assert_eq!(Vec::<i64>::decode_at(&huge, 0).unwrap_err(), "truncated value");
        let wrong = [TAG_TUPLE, 3, 0, 0, 0, TAG_NULL, TAG_NULL, TAG_NULL];
        assert_eq!(<((), ())>::decode_at(&wrong, 0).unwrap_err(), "expected a 2-tuple, got 3 elements");
        assert_eq!(Vec::<i64>::from_value(&[TAG_I64, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(), "expected list, got i64");
    }
}
