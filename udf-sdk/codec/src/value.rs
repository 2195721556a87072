//! `Value`: a decoded record, for tests, tools and the job file's literals.
//! The engine's hot paths never decode; they move encoded bytes.

use alloc::string::String;
use alloc::vec::Vec;

use crate::*;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    I64(i64),
    F64(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
}

impl Value {
    pub fn pair(k: Value, v: Value) -> Value {
        Value::Tuple(alloc::vec![k, v])
    }
    pub fn str(s: &str) -> Value {
        Value::Str(s.into())
    }

    /// Appends the canonical encoding of this value.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            Value::Null => w.null(),
            Value::Bool(b) => w.bool(*b),
            Value::I64(v) => w.i64(*v),
            Value::F64(v) => w.f64(*v),
            Value::Str(s) => w.str(s),
            Value::Bytes(b) => w.bytes(b),
            Value::Tuple(xs) | Value::List(xs) => {
                if matches!(self, Value::Tuple(_)) {
                    w.tuple(xs.len() as u32)
                } else {
                    w.list(xs.len() as u32)
                }
                for x in xs {
                    x.encode_into(out);
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes one value occupying all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Value, CodecError> {
        let (v, end) = Self::decode_at(buf, 0, 0)?;
        if end != buf.len() {
            return Err(CodecError { offset: end, what: "trailing bytes after value" });
        }
        Ok(v)
    }

    /// Decodes a batch into its records; bytes after the last record are
    /// an error, as for [`crate::validate_batch`].
    pub fn decode_batch(buf: &[u8]) -> Result<Vec<Value>, CodecError> {
        let mut out = Vec::new();
        let mut records = Records::new(buf)?;
        for r in records.by_ref() {
            out.push(Value::decode(r?)?);
        }
        if records.pos != buf.len() {
            return Err(CodecError { offset: records.pos, what: "trailing bytes after the batch's records" });
        }
        Ok(out)
    }

    /// Encodes records as a batch.
    pub fn encode_batch(records: &[Value]) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for r in records {
            b.push_with(|w| r.encode_into(w.buf));
        }
        b.finish()
    }

    fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<(Value, usize), CodecError> {
        let end = skip_value(buf, at)?;
        let v = match buf[at] {
            TAG_NULL => Value::Null,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_I64 => Value::I64(read_u64(buf, at + 1)? as i64),
            TAG_F64 => Value::F64(f64::from_bits(read_u64(buf, at + 1)?)),
            TAG_STR => match core::str::from_utf8(&buf[at + 5..end]) {
                Ok(s) => Value::Str(s.into()),
                Err(_) => return Err(CodecError { offset: at, what: "string is not valid UTF-8" }),
            },
            TAG_BYTES => Value::Bytes(buf[at + 5..end].to_vec()),
            t => {
                if depth >= MAX_DEPTH {
                    return Err(CodecError { offset: at, what: "values nested too deeply" });
                }
                let n = read_u32(buf, at + 1)?;
                let mut xs = Vec::new();
                let mut p = at + 5;
                for _ in 0..n {
                    let (x, e) = Self::decode_at(buf, p, depth + 1)?;
                    xs.push(x);
                    p = e;
                }
                if t == TAG_TUPLE {
                    Value::Tuple(xs)
                } else {
                    Value::List(xs)
                }
            }
        };
        Ok((v, end))
    }
}

impl core::fmt::Display for Value {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&crate::display::render(&self.encode()))
    }
}
