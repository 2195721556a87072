//! `batches` files (one JSON array of records per line) and `queue`
//! batches (Rust API): finite, replayable by index.

use std::path::Path;

use weir_codec::{BatchBuilder, Value};

use super::{InputDescriptor, Source, SourceCursor, SourceError};

pub(super) fn empty_batch() -> Vec<u8> {
    BatchBuilder::new().finish()
}

/// JSON -> value: strings, integers (i64), other numbers (f64), booleans,
/// null; arrays become tuples (so `["a", 1]` is the pair `(a,1)`).
pub fn json_to_value(j: &serde_json::Value) -> Result<Value, String> {
    Ok(match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => Value::F64(n.as_f64().ok_or_else(|| format!("number {n} out of range"))?),
        },
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(xs) => Value::Tuple(xs.iter().map(json_to_value).collect::<Result<_, _>>()?),
        serde_json::Value::Object(_) => return Err("objects are not records; use arrays for tuples".into()),
    })
}

/// Largest `batches` file read (and `initial_state` file), in bytes: the
/// whole file is held in memory, decoded.
pub const MAX_BATCHES_FILE_BYTES: u64 = 256 << 20;

/// Reads a `batches` file: one JSON array of records per line. A regular
/// file of at most [`MAX_BATCHES_FILE_BYTES`].
pub fn read_batches_file(path: &Path) -> Result<Vec<Vec<u8>>, SourceError> {
    read_batches_file_limited(path, MAX_BATCHES_FILE_BYTES)
}

/// As [`read_batches_file`], for a file of at most `limit` bytes.
pub fn read_batches_file_limited(path: &Path, limit: u64) -> Result<Vec<Vec<u8>>, SourceError> {
    let bytes = crate::files::read_data(path, limit).map_err(|e| SourceError::File { path: path.into(), source: e })?;
    let text = String::from_utf8(bytes).map_err(|e| SourceError::Parse {
        path: path.into(),
        line: e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1,
        what: "not UTF-8 text".into(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let perr = |what: String| SourceError::Parse { path: path.into(), line: i + 1, what };
        if line.trim().is_empty() {
            out.push(BatchBuilder::new().finish());
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(line).map_err(|e| perr(format!("invalid JSON: {e}")))?;
        let serde_json::Value::Array(recs) = j else {
            return Err(perr("expected a JSON array of records (one batch per line)".into()));
        };
        let mut b = BatchBuilder::new();
        for (j, r) in recs.iter().enumerate() {
            let v = json_to_value(r).map_err(perr)?;
            // Checked as every reader will check it (nesting, the codec's
            // limits): a record they would refuse is refused here, naming
            // it, rather than dropped with the rest of its batch later.
            let mut enc = v.encode();
            weir_codec::validate_value(&mut enc, 0).map_err(|e| {
                let what = if e.what.contains("nested") {
                    format!("record {} is nested deeper than {} levels", j + 1, weir_codec::MAX_DEPTH)
                } else {
                    format!("record {}: {}", j + 1, e.what)
                };
                perr(what)
            })?;
            b.push_raw(&enc);
        }
        out.push(b.finish());
    }
    Ok(out)
}

pub(super) fn lines_batch<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for l in lines {
        b.push_with(|w| w.str(l));
    }
    b.finish()
}

/// Batches given up front (a `batches` file or a queue): finite, replayable
/// by index.
pub(super) struct QueueSource {
    batches: Vec<Vec<u8>>,
    next: usize,
}

impl QueueSource {
    pub(super) fn new(batches: Vec<Vec<u8>>) -> Self {
        QueueSource { batches, next: 0 }
    }
}

impl Source for QueueSource {
    fn poll(&mut self, _time: i64, _wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        let i = self.next;
        self.next += 1;
        Ok((self.batches.get(i).cloned().unwrap_or_else(empty_batch), InputDescriptor::Line(i as u64)))
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::Line(i) | InputDescriptor::Queue(i) => {
                Ok(self.batches.get(*i as usize).cloned().unwrap_or_else(empty_batch))
            }
            other => Err(SourceError::Replay(format!("a batches source cannot replay {other:?}"))),
        }
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Next(self.next as u64)
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        match c {
            SourceCursor::Next(n) => {
                self.next = *n as usize;
                Ok(())
            }
            other => Err(SourceError::Replay(format!("a batches source cannot resume at {other:?}"))),
        }
    }
    fn exhausted(&self) -> bool {
        self.next >= self.batches.len()
    }
    fn waits_for_input(&self) -> bool {
        false
    }
    /// Every batch is fixed up front: the next one may be read any time.
    fn has_backlog(&self) -> bool {
        !self.exhausted()
    }
}
