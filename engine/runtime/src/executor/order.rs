//! The total order over encoded values that `sort_by_key`, `sort_by` and
//! `top` use (`docs/jobs.md`, "Ordering"): values are compared decoded, not
//! by their bytes, so `-1 < 2` and `"a" < "b"` hold as written.
//!
//! By type first: null < false < true < numbers < strings < bytes < tuples
//! < lists. Numbers (i64 and f64) compare numerically with each other, an
//! i64 before an f64 of equal value; f64s follow IEEE-754's total order
//! (`-0.0 < 0.0`, NaN — canonical, positive — after every number). Strings
//! and bytes compare bytewise (UTF-8 bytewise is code-point order); tuples
//! and lists lexicographically, element by element, a prefix first. A
//! malformed value (never in a validated block) sorts after well-formed
//! ones, by its bytes, so the order stays total.

use std::cmp::Ordering;

use weir_codec as codec;

/// A number, for numeric comparison across i64 and f64.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

/// The rank of a type in the order, and what a value holds.
enum Parsed<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(&'a [u8]),
    Bytes(&'a [u8]),
    Tuple(Vec<&'a [u8]>),
    List(Vec<&'a [u8]>),
}

impl Parsed<'_> {
    fn rank(&self) -> u8 {
        match self {
            Parsed::Null => 0,
            Parsed::Bool(_) => 1,
            Parsed::Num(_) => 2,
            Parsed::Str(_) => 3,
            Parsed::Bytes(_) => 4,
            Parsed::Tuple(_) => 5,
            Parsed::List(_) => 6,
        }
    }
}

fn parse(v: &[u8]) -> Option<Parsed<'_>> {
    let tag = *v.first()?;
    let eight = || -> Option<[u8; 8]> { v.get(1..9)?.try_into().ok() };
    Some(match tag {
        codec::TAG_NULL => Parsed::Null,
        codec::TAG_FALSE => Parsed::Bool(false),
        codec::TAG_TRUE => Parsed::Bool(true),
        codec::TAG_I64 => Parsed::Num(Num::I(i64::from_le_bytes(eight()?))),
        codec::TAG_F64 => Parsed::Num(Num::F(f64::from_le_bytes(eight()?))),
        codec::TAG_STR | codec::TAG_BYTES => {
            let len = u32::from_le_bytes(v.get(1..5)?.try_into().ok()?) as usize;
            let body = v.get(5..5usize.checked_add(len)?)?;
            if tag == codec::TAG_STR {
                Parsed::Str(body)
            } else {
                Parsed::Bytes(body)
            }
        }
        codec::TAG_TUPLE => Parsed::Tuple(codec::elements(v).ok()?),
        codec::TAG_LIST => Parsed::List(codec::elements(v).ok()?),
        _ => return None,
    })
}

/// Compares an i64 with an f64 exactly (no rounding of the i64).
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        // Canonical NaN is positive: after every number.
        return Ordering::Less;
    }
    // Rounding is monotonic: if the rounded i64 differs from f, so does i,
    // the same way.
    let r = i as f64;
    match r.partial_cmp(&f) {
        Some(Ordering::Equal) | None => {}
        Some(o) => return o,
    }
    // f is an integer equal to i rounded; 2^63 itself does not fit an i64.
    if f >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    // Equal values: the i64 first.
    i.cmp(&(f as i64)).then(Ordering::Less)
}

fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x.cmp(&y),
        (Num::F(x), Num::F(y)) => x.total_cmp(&y),
        (Num::I(x), Num::F(y)) => cmp_int_float(x, y),
        (Num::F(x), Num::I(y)) => cmp_int_float(y, x).reverse(),
    }
}

/// Compares two encoded values in the order described above.
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    compare_at(a, b, 0)
}

fn compare_at(a: &[u8], b: &[u8], depth: usize) -> Ordering {
    // Identical bytes are equal values (the encoding is canonical).
    if a == b {
        return Ordering::Equal;
    }
    let (pa, pb) = match (parse(a), parse(b)) {
        (Some(x), Some(y)) if depth < codec::MAX_DEPTH => (x, y),
        (Some(_), None) => return Ordering::Less,
        (None, Some(_)) => return Ordering::Greater,
        _ => return a.cmp(b),
    };
    match (&pa, &pb) {
        (Parsed::Bool(x), Parsed::Bool(y)) => x.cmp(y),
        (Parsed::Num(x), Parsed::Num(y)) => cmp_num(*x, *y),
        (Parsed::Str(x), Parsed::Str(y)) | (Parsed::Bytes(x), Parsed::Bytes(y)) => x.cmp(y),
        (Parsed::Tuple(xs), Parsed::Tuple(ys)) | (Parsed::List(xs), Parsed::List(ys)) => {
            for (x, y) in xs.iter().zip(ys) {
                match compare_at(x, y, depth + 1) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => pa.rank().cmp(&pb.rank()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_codec::Value;

    #[test]
    fn values_compare_decoded_in_a_total_order() {
        let ordered = vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::F64(f64::NEG_INFINITY),
            Value::I64(i64::MIN),
            Value::I64(-2),
            Value::F64(-1.5),
            Value::I64(0),
            Value::F64(-0.0),
            Value::F64(0.0),
            Value::F64(0.5),
            Value::I64(1),
            Value::F64(1.0),
            Value::I64(10),
            Value::I64(i64::MAX),
            Value::F64(9_223_372_036_854_775_808.0),
            Value::F64(f64::INFINITY),
            Value::F64(f64::NAN),
            Value::str(""),
            Value::str("B"),
            Value::str("a"),
            Value::str("ab"),
            Value::str("é"),
            Value::Bytes(vec![0]),
            Value::Tuple(vec![Value::I64(-1), Value::str("z")]),
            Value::Tuple(vec![Value::I64(2)]),
            Value::Tuple(vec![Value::I64(2), Value::Null]),
            Value::List(vec![]),
            Value::List(vec![Value::I64(1)]),
        ];
        let enc: Vec<Vec<u8>> = ordered.iter().map(|v| v.encode()).collect();
        for (i, a) in enc.iter().enumerate() {
            for (j, b) in enc.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{:?} vs {:?}", ordered[i], ordered[j]);
            }
        }
        // Malformed values sort last, by bytes: still total.
        assert_eq!(compare(&[0xff], &Value::Null.encode()), Ordering::Greater);
        assert_eq!(compare(&[0xfe], &[0xff]), Ordering::Less);
    }
}
