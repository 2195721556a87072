//! The Weir record encoding, version 1 (see `docs/udf-abi.md`).
//!
//! Every record that crosses the UDF boundary, sits in a block or goes
//! through a shuffle is a *value* in this encoding. It is shared by the host
//! (the engine) and the guest SDK, so it is `no_std` + `alloc`.
//!
//! The encoding is canonical by construction: every value has exactly one
//! byte representation (fixed-width integers and lengths, NaN canonicalised by
//! the host when it validates guest output). The engine therefore hashes,
//! compares and groups keys by their raw bytes without decoding them, and two
//! guests written in different languages that produce the same value produce
//! the same bytes.
//!
//! ```text
//! value  := 0x00                         null
//!         | 0x01 | 0x02                  false | true
//!         | 0x03 i64le                   64-bit signed integer
//!         | 0x04 f64le                   IEEE-754 binary64
//!         | 0x05 u32le(len) utf8[len]    string
//!         | 0x06 u32le(len) byte[len]    bytes
//!         | 0x07 u32le(n) value[n]       tuple (a pair is a 2-tuple)
//!         | 0x08 u32le(n) value[n]       list
//! batch  := u32le(count) value[count]
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub mod display;
mod value;

pub use value::Value;

pub const TAG_NULL: u8 = 0x00;
pub const TAG_FALSE: u8 = 0x01;
pub const TAG_TRUE: u8 = 0x02;
pub const TAG_I64: u8 = 0x03;
pub const TAG_F64: u8 = 0x04;
pub const TAG_STR: u8 = 0x05;
pub const TAG_BYTES: u8 = 0x06;
pub const TAG_TUPLE: u8 = 0x07;
pub const TAG_LIST: u8 = 0x08;

/// The one NaN bit pattern a valid value may carry.
pub const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// Nesting deeper than this is refused (it protects the host's stack).
pub const MAX_DEPTH: usize = 64;

/// What is wrong with a buffer, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

fn err<T>(offset: usize, what: &'static str) -> Result<T, CodecError> {
    Err(CodecError { offset, what })
}

// ---------------------------------------------------------------- writing

/// Appends encoded values to a byte vector.
///
/// Containers are written header-first: `tuple(n)` / `list(n)` followed by
/// exactly `n` values. When the count is not known in advance, write a
/// placeholder with [`Writer::list_placeholder`] and patch it.
pub struct Writer<'a> {
    pub buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }
    #[inline]
    pub fn null(&mut self) {
        self.buf.push(TAG_NULL);
    }
    #[inline]
    pub fn bool(&mut self, b: bool) {
        self.buf.push(if b { TAG_TRUE } else { TAG_FALSE });
    }
    #[inline]
    pub fn i64(&mut self, v: i64) {
        self.buf.push(TAG_I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    pub fn f64(&mut self, v: f64) {
        let bits = if v.is_nan() { CANONICAL_NAN } else { v.to_bits() };
        self.buf.push(TAG_F64);
        self.buf.extend_from_slice(&bits.to_le_bytes());
    }
    #[inline]
    pub fn str(&mut self, s: &str) {
        self.buf.push(TAG_STR);
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.push(TAG_BYTES);
        self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(b);
    }
    #[inline]
    pub fn tuple(&mut self, n: u32) {
        self.buf.push(TAG_TUPLE);
        self.buf.extend_from_slice(&n.to_le_bytes());
    }
    #[inline]
    pub fn list(&mut self, n: u32) {
        self.buf.push(TAG_LIST);
        self.buf.extend_from_slice(&n.to_le_bytes());
    }
    /// Writes a list header with count 0 and returns where to patch it.
    pub fn list_placeholder(&mut self) -> usize {
        self.buf.push(TAG_LIST);
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        at
    }
    /// Appends an already-encoded value verbatim.
    #[inline]
    pub fn raw(&mut self, encoded: &[u8]) {
        self.buf.extend_from_slice(encoded);
    }
}

/// Patches a `u32le` count written earlier at `at`.
pub fn patch_u32(buf: &mut [u8], at: usize, n: u32) {
    buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

/// A position in a [`BatchBuilder`], from [`BatchBuilder::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMark {
    bytes: usize,
    count: u32,
}

/// Builds a batch: `u32le(count)` followed by the values.
#[derive(Default, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + 4);
        buf.extend_from_slice(&0u32.to_le_bytes());
        BatchBuilder { buf, count: 0 }
    }
    /// Appends one already-encoded record.
    #[inline]
    pub fn push_raw(&mut self, encoded: &[u8]) {
        self.buf.extend_from_slice(encoded);
        self.count += 1;
    }
    /// Appends one record written through a [`Writer`].
    #[inline]
    pub fn push_with(&mut self, f: impl FnOnce(&mut Writer<'_>)) {
        f(&mut Writer::new(&mut self.buf));
        self.count += 1;
    }
    /// Appends bytes to the record being written (not a new record), e.g.
    /// the elements after a container header pushed with `push_with`.
    #[inline]
    pub fn extend_current(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// Appends every record of a valid batch (its header is dropped).
    pub fn append_batch(&mut self, batch: &[u8]) -> Result<(), CodecError> {
        let n = read_u32(batch, 0)?;
        self.buf.extend_from_slice(&batch[4..]);
        self.count += n;
        Ok(())
    }
    pub fn len(&self) -> u32 {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Where the builder is now, to [`truncate`](Self::truncate) back to.
    pub fn mark(&self) -> BatchMark {
        BatchMark { bytes: self.buf.len(), count: self.count }
    }
    /// Drops every record pushed since `m` was taken (e.g. the lines of a
    /// file whose read failed halfway).
    pub fn truncate(&mut self, m: BatchMark) {
        if m.bytes >= 4 && m.bytes <= self.buf.len() && m.count <= self.count {
            self.buf.truncate(m.bytes);
            self.count = m.count;
        }
    }
    pub fn finish(mut self) -> Vec<u8> {
        patch_u32(&mut self.buf, 0, self.count);
        self.buf
    }
}

// ---------------------------------------------------------------- reading

#[inline]
fn read_u32(buf: &[u8], at: usize) -> Result<u32, CodecError> {
    match buf.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => err(at, "truncated u32"),
    }
}

#[inline]
fn read_u64(buf: &[u8], at: usize) -> Result<u64, CodecError> {
    match buf.get(at..at + 8) {
        Some(b) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        }
        None => err(at, "truncated 8-byte scalar"),
    }
}

/// Returns the end offset of the value starting at `at`, without checking
/// UTF-8 or NaNs (use [`validate_value`] for untrusted input).
#[inline]
pub fn skip_value(buf: &[u8], at: usize) -> Result<usize, CodecError> {
    match skip_scalar(buf, at) {
        Some(r) => r,
        None => skip_inner(buf, at, 0),
    }
}

/// The end of a scalar at `at`, or `None` for a container (or a missing
/// tag): the hot path of every reader, kept small enough to inline.
#[inline(always)]
fn skip_scalar(buf: &[u8], at: usize) -> Option<Result<usize, CodecError>> {
    let tag = *buf.get(at)?;
    Some(match tag {
        TAG_NULL | TAG_FALSE | TAG_TRUE => Ok(at + 1),
        TAG_I64 | TAG_F64 => {
            if buf.len() < at + 9 {
                err(at, "truncated 8-byte scalar")
            } else {
                Ok(at + 9)
            }
        }
        TAG_STR | TAG_BYTES => str_end(buf, at),
        TAG_TUPLE | TAG_LIST => return None,
        _ => err(at, "unknown type tag"),
    })
}

/// The end of the string or bytes value at `at` (its length checked against
/// the buffer).
#[inline(always)]
fn str_end(buf: &[u8], at: usize) -> Result<usize, CodecError> {
    let len = read_u32(buf, at + 1)? as usize;
    match (at + 5).checked_add(len).filter(|&e| e <= buf.len()) {
        Some(end) => Ok(end),
        None => err(at, "string/bytes length runs past the end of the buffer"),
    }
}

fn skip_inner(buf: &[u8], at: usize, depth: usize) -> Result<usize, CodecError> {
    if let Some(r) = skip_scalar(buf, at) {
        return r;
    }
    let Some(&tag) = buf.get(at) else {
        return err(at, "truncated value (missing tag)");
    };
    debug_assert!(tag == TAG_TUPLE || tag == TAG_LIST);
    if depth >= MAX_DEPTH {
        return err(at, "values nested too deeply");
    }
    let n = read_u32(buf, at + 1)?;
    let mut p = at + 5;
    for _ in 0..n {
        p = match skip_scalar(buf, p) {
            Some(r) => r?,
            None => skip_inner(buf, p, depth + 1)?,
        };
    }
    Ok(p)
}

/// Validates the value at `at` (structure, UTF-8, depth) and rewrites any
/// non-canonical NaN to the canonical one in place. Returns its end offset.
#[inline]
pub fn validate_value(buf: &mut [u8], at: usize) -> Result<usize, CodecError> {
    match validate_scalar(buf, at) {
        Some(r) => r,
        None => validate_container(buf, at, 0),
    }
}

/// Whether `b` is ASCII; short strings (most keys and words) without a call
/// and without a loop: two overlapping word loads cover any length from k to
/// 2k bytes.
#[inline(always)]
pub(crate) fn ascii(b: &[u8]) -> bool {
    const HI: u64 = 0x8080_8080_8080_8080;
    let n = b.len();
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let half = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match n {
        8..=16 => (word(0) | word(n - 8)) & HI == 0,
        4..=7 => (half(0) | half(n - 4)) & HI as u32 == 0,
        0..=3 => b.iter().fold(0u8, |a, &x| a | x) < 0x80,
        _ => b.is_ascii(),
    }
}

/// Validates a scalar at `at`; `None` for a container (or a missing tag).
#[inline(always)]
fn validate_scalar(buf: &mut [u8], at: usize) -> Option<Result<usize, CodecError>> {
    let tag = *buf.get(at)?;
    Some(match tag {
        TAG_NULL | TAG_FALSE | TAG_TRUE => Ok(at + 1),
        TAG_I64 => read_u64(buf, at + 1).map(|_| at + 9),
        TAG_F64 => match read_u64(buf, at + 1) {
            Ok(bits) => {
                if f64::from_bits(bits).is_nan() && bits != CANONICAL_NAN {
                    buf[at + 1..at + 9].copy_from_slice(&CANONICAL_NAN.to_le_bytes());
                }
                Ok(at + 9)
            }
            Err(e) => Err(e),
        },
        TAG_STR | TAG_BYTES => match str_end(buf, at) {
            // Most strings are short and ASCII: check that first.
            Ok(end)
                if tag == TAG_STR && !ascii(&buf[at + 5..end]) && core::str::from_utf8(&buf[at + 5..end]).is_err() =>
            {
                err(at, "string is not valid UTF-8")
            }
            r => r,
        },
        TAG_TUPLE | TAG_LIST => return None,
        _ => err(at, "unknown type tag"),
    })
}

/// Validates the tuple or list at `at` (or reports a missing tag). Inlined
/// into [`validate_value`], so a record that is a tuple of scalars (a pair)
/// is checked without a call; deeper levels go through `validate_nested`.
#[inline(always)]
fn validate_container(buf: &mut [u8], at: usize, depth: usize) -> Result<usize, CodecError> {
    if buf.get(at).is_none() {
        return err(at, "truncated value (missing tag)");
    }
    if depth >= MAX_DEPTH {
        return err(at, "values nested too deeply");
    }
    let n = read_u32(buf, at + 1)?;
    let mut p = at + 5;
    for _ in 0..n {
        p = match validate_scalar(buf, p) {
            Some(r) => r?,
            None => validate_nested(buf, p, depth + 1)?,
        };
    }
    Ok(p)
}

#[inline(never)]
fn validate_nested(buf: &mut [u8], at: usize, depth: usize) -> Result<usize, CodecError> {
    validate_container(buf, at, depth)
}

/// Validates a whole batch (see [`validate_value`]); returns its record count.
/// Trailing bytes after the last record are an error.
pub fn validate_batch(buf: &mut [u8]) -> Result<u32, CodecError> {
    let count = read_u32(buf, 0)?;
    let mut p = 4;
    for _ in 0..count {
        p = validate_value(buf, p)?;
    }
    if p != buf.len() {
        return err(p, "trailing bytes after the last record of the batch");
    }
    Ok(count)
}

/// Iterates over the raw records of a batch that is known to be valid
/// (produced by the engine or checked by [`validate_batch`]).
#[derive(Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> Records<'a> {
    pub fn new(batch: &'a [u8]) -> Result<Self, CodecError> {
        Ok(Records { buf: batch, pos: 4, left: read_u32(batch, 0)? })
    }
    /// Records left, as the header claims them, but never more than the
    /// bytes left (a record takes at least one): a size hint a malformed or
    /// hostile header cannot inflate. Exact for a well-formed batch.
    pub fn remaining(&self) -> u32 {
        self.left.min(u32::try_from(self.buf.len().saturating_sub(self.pos)).unwrap_or(u32::MAX))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], CodecError>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match skip_value(self.buf, self.pos) {
            Ok(end) => {
                let r = &self.buf[self.pos..end];
                self.pos = end;
                Some(Ok(r))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}

/// Cuts a batch into runs of whole records of about `bytes` bytes each:
/// `(record count, the records' bytes)`, in order. The cut depends only on
/// the batch's bytes, so it is the same on every run.
pub fn chunks(batch: &[u8], bytes: usize) -> Result<Vec<(u32, &[u8])>, CodecError> {
    let n = read_u32(batch, 0)?;
    let mut out = Vec::new();
    let (mut start, mut p, mut count) = (4usize, 4usize, 0u32);
    for _ in 0..n {
        p = skip_value(batch, p)?;
        count += 1;
        if p - start >= bytes {
            out.push((count, &batch[start..p]));
            (start, count) = (p, 0);
        }
    }
    if count > 0 || out.is_empty() {
        out.push((count, &batch[start..p]));
    }
    Ok(out)
}

/// Iterates over a batch of `(key, value)` pairs known to be valid, giving
/// each pair's key and value bytes. A record that is not a 2-tuple ends the
/// iteration with an error whose offset is that record's.
#[derive(Clone)]
pub struct Pairs<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> Pairs<'a> {
    pub fn new(batch: &'a [u8]) -> Result<Self, CodecError> {
        Ok(Pairs { buf: batch, pos: 4, left: read_u32(batch, 0)? })
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), CodecError>;
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (buf, at) = (self.buf, self.pos);
        let r = if buf.get(at) == Some(&TAG_TUPLE) && read_u32(buf, at + 1) == Ok(2) {
            skip_value(buf, at + 5).and_then(|k_end| skip_value(buf, k_end).map(|v_end| (k_end, v_end)))
        } else {
            err(at, "expected a (key, value) pair")
        };
        match r {
            Ok((k_end, v_end)) => {
                self.pos = v_end;
                Some(Ok((&buf[at + 5..k_end], &buf[k_end..v_end])))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}

/// Splits an encoded 2-tuple into the raw bytes of its key and its value.
#[inline]
pub fn split_pair(rec: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    if rec.first() != Some(&TAG_TUPLE) || read_u32(rec, 1)? != 2 {
        return err(0, "expected a (key, value) pair");
    }
    let k_end = skip_value(rec, 5)?;
    let v_end = skip_value(rec, k_end)?;
    Ok((&rec[5..k_end], &rec[k_end..v_end]))
}

/// Writes the 2-tuple `(key, value)` from two already-encoded values.
#[inline]
pub fn write_pair(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.push(TAG_TUPLE);
    out.extend_from_slice(&2u32.to_le_bytes());
    extend_short(out, key);
    extend_short(out, value);
}

/// `buf.extend_from_slice(b)`, with slices of up to 16 bytes (most keys,
/// words and scalar values) copied by fixed-size moves instead of a call to
/// memcpy — natively a call, in WebAssembly a `memory.copy` libcall, either
/// costing more than copying a word.
#[inline(always)]
pub fn extend_short(buf: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n > 16 {
        buf.extend_from_slice(b);
        return;
    }
    let at = buf.len();
    buf.extend_from_slice(&[0u8; 16]);
    let d = &mut buf[at..at + n];
    // Two overlapping moves of k bytes cover any length from k to 2k.
    if n >= 8 {
        d[..8].copy_from_slice(&b[..8]);
        d[n - 8..].copy_from_slice(&b[n - 8..]);
    } else if n >= 4 {
        d[..4].copy_from_slice(&b[..4]);
        d[n - 4..].copy_from_slice(&b[n - 4..]);
    } else if n > 0 {
        d[0] = b[0];
        d[n / 2] = b[n / 2];
        d[n - 1] = b[n - 1];
    }
    buf.truncate(at + n);
}

/// Reads the elements of an encoded list or tuple as raw values.
pub fn elements(v: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    match v.first() {
        Some(&TAG_TUPLE) | Some(&TAG_LIST) => {}
        _ => return err(0, "expected a list or tuple"),
    }
    let n = read_u32(v, 1)?;
    // Each element takes at least a byte: a count past the bytes left must
    // not size the allocation (the walk below refuses it).
    let mut out = Vec::with_capacity((n as usize).min(v.len().saturating_sub(5)));
    let mut p = 5;
    for _ in 0..n {
        let e = skip_value(v, p)?;
        out.push(&v[p..e]);
        p = e;
    }
    Ok(out)
}

/// Decodes a scalar i64 value.
pub fn as_i64(v: &[u8]) -> Option<i64> {
    if v.first() == Some(&TAG_I64) {
        read_u64(v, 1).ok().map(|b| b as i64)
    } else {
        None
    }
}

/// Decodes a string value.
pub fn as_str(v: &[u8]) -> Option<&str> {
    if v.first() == Some(&TAG_STR) {
        let len = read_u32(v, 1).ok()? as usize;
        core::str::from_utf8(v.get(5..5 + len)?).ok()
    } else {
        None
    }
}

/// Encodes a single i64 value.
pub fn encode_i64(v: i64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = TAG_I64;
    out[1..].copy_from_slice(&v.to_le_bytes());
    out
}

pub(crate) fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    /// Counts in headers are claims: as size hints they are bounded by the
    /// bytes that follow, and walking past what is there is an error, never
    /// an allocation of 4 G entries.
    #[test]
    fn lying_counts_cannot_size_allocations() {
        let lie = [0xff, 0xff, 0xff, 0xff, TAG_NULL, TAG_NULL];
        let recs = Records::new(&lie).unwrap();
        assert_eq!(recs.remaining(), 2);
        assert_eq!(recs.filter(|r| r.is_ok()).count(), 2);
        let list = [TAG_LIST, 0xff, 0xff, 0xff, 0xff, TAG_NULL];
        assert!(elements(&list).is_err());
        let mut good = vec![0u8; 4];
        good[0] = 3;
        good.extend_from_slice(&[TAG_NULL, TAG_TRUE, TAG_FALSE]);
        assert_eq!(Records::new(&good).unwrap().remaining(), 3, "exact for a well-formed batch");
    }

    fn strs(xs: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for x in xs {
            b.push_with(|w| w.str(x));
        }
        b.finish()
    }

    /// Every length around the short copies' boundaries appends exactly
    /// the bytes, after whatever the buffer held.
    #[test]
    fn extend_short_appends_exactly() {
        let src: Vec<u8> = (0..40u8).collect();
        for n in 0..=40 {
            let mut buf = vec![0xAA, 0xBB, 0xCC];
            extend_short(&mut buf, &src[..n]);
            let mut want = vec![0xAA, 0xBB, 0xCC];
            want.extend_from_slice(&src[..n]);
            assert_eq!(buf, want, "length {n}");
        }
    }

    #[test]
    fn chunks_cut_at_whole_records_and_rejoin_to_the_batch() {
        let words: Vec<String> = (0..1000).map(|i| "w".repeat(1 + i % 13)).collect();
        let batch = strs(&words.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        for size in [1, 7, 64, 1000, 1 << 20] {
            let cs = chunks(&batch, size).unwrap();
            assert_eq!(cs.iter().map(|c| c.0).sum::<u32>(), 1000, "size {size}");
            let mut rejoined = BatchBuilder::new();
            for (n, body) in &cs {
                let mut one = n.to_le_bytes().to_vec();
                one.extend_from_slice(body);
                assert_eq!(Records::new(&one).unwrap().count(), *n as usize);
                rejoined.append_batch(&one).unwrap();
            }
            assert_eq!(rejoined.finish(), batch, "size {size}");
            assert!(cs.iter().rev().skip(1).all(|(_, b)| b.len() >= size), "every chunk but the last is full");
        }
        assert_eq!(chunks(&strs(&[]), 64).unwrap(), vec![(0, &[][..])]);
    }

    #[test]
    fn pairs_give_keys_and_values_and_stop_at_a_non_pair() {
        let mut b = BatchBuilder::new();
        b.push_with(|w| {
            w.tuple(2);
            w.str("a");
            w.i64(1);
        });
        b.push_with(|w| w.i64(5));
        let batch = b.finish();
        let mut it = Pairs::new(&batch).unwrap();
        let (k, v) = it.next().unwrap().unwrap();
        assert_eq!((as_str(k), as_i64(v)), (Some("a"), Some(1)));
        let e = it.next().unwrap().unwrap_err();
        assert_eq!(e.offset, 4 + 5 + 6 + 9, "the offset of the record that is not a pair");
        assert!(it.next().is_none());
    }

    #[test]
    fn validation_fast_paths_still_refuse_bad_strings() {
        let mut bad = strs(&["ok", "caf\u{e9}"]);
        let n = bad.len();
        bad[n - 1] = 0xff; // the last byte of "café" is no longer UTF-8
        assert!(validate_batch(&mut bad).is_err());
        let mut good = strs(&["ok", "caf\u{e9}", &"x".repeat(40)]);
        assert_eq!(validate_batch(&mut good), Ok(3));
        // Every length and every position of a stray byte, in a pair (the
        // inlined tuple path) and alone.
        for n in 0..=40usize {
            for bad_at in 0..n {
                let word = "y".repeat(n);
                let mut b = BatchBuilder::new();
                b.push_with(|w| {
                    w.tuple(2);
                    w.str(&word);
                    w.i64(1);
                });
                let mut batch = b.finish();
                assert_eq!(validate_batch(&mut batch.clone()), Ok(1), "length {n}");
                batch[4 + 5 + 5 + bad_at] = 0x80;
                assert!(validate_batch(&mut batch).is_err(), "length {n}, stray byte at {bad_at}");
                let mut one = strs(&[&word]);
                one[4 + 5 + bad_at] = 0xC3; // a lead byte with no continuation
                assert!(validate_batch(&mut one).is_err(), "length {n}, lead byte at {bad_at}");
            }
        }
    }

    /// Bounded random input (a fuzz run in every `cargo test`): random bytes
    /// and mutated valid batches never make a reader panic or over-read,
    /// and the validator, the iterator and the decoder agree on what is valid.
    #[test]
    fn hostile_bytes_never_panic_and_readers_agree() {
        let mut seed = 0x5745_4952_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = strs(&["to be", "", "or not"]);
        {
            let mut b = BatchBuilder::new();
            b.push_with(|w| {
                w.tuple(2);
                w.str("k");
                w.list(2);
                w.i64(-3);
                w.f64(1.5);
            });
            b.push_with(|w| w.bytes(&[0, 1, 2]));
            b.push_with(|w| w.null());
            valid.extend_from_slice(&b.finish()[4..]);
            patch_u32(&mut valid, 0, 6);
        }
        for case in 0..20_000u32 {
            let mut buf = if case % 3 == 0 {
                let n = (next() % 64) as usize;
                (0..n).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % v.len();
                    match next() % 3 {
                        0 => v[at] = next() as u8,
                        1 => v.truncate(at),
                        _ => v.insert(at, next() as u8),
                    }
                    if v.is_empty() {
                        break;
                    }
                }
                v
            };
            let iterated: Option<u32> = Records::new(&buf)
                .ok()
                .and_then(|recs| recs.map(|r| r.map(|r| display::render(r).len())).collect::<Result<Vec<_>, _>>().ok())
                .map(|v| v.len() as u32);
            let decoded = Value::decode_batch(&buf).map(|v| v.len() as u32);
            let _ = chunks(&buf, 1 + (next() % 32) as usize);
            let validated = validate_batch(&mut buf);
            if let Ok(n) = validated {
                assert_eq!(decoded.as_ref().ok(), Some(&n), "case {case}: the decoder refuses what validates");
                assert_eq!(iterated, Some(n), "case {case}: the iterator disagrees with the validator");
            }
        }
    }
}
