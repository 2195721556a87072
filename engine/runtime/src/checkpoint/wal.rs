//! The write-ahead log of a receiver: received lines are appended (and
//! fsynced) to a segment in `<checkpoint>/wal/` *before* they count as
//! received, so a driver crash loses none of them. Batches record the WAL
//! ranges they took; a re-run batch reads exactly those ranges again.
//!
//! Segment `wal/<source>-<seq>.log` is a sequence of records
//! `u32le len | u32le crc32c | len bytes (one UTF-8 line)`. Each driver run
//! starts a new segment. A torn last record (crash mid-append) fails its
//! length or checksum and ends the segment: it was never acknowledged. A
//! failed append (a full disk) is cut off again, so it never hides the
//! records of a later append.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use weir_plan::source::{WalPosition, WalRange};

pub fn segment_path(dir: &Path, source: u32, seq: u64) -> PathBuf {
    dir.join(format!("{source}-{seq:010}.log"))
}

/// Segments of `source` in `dir`, by sequence number.
pub fn segments(dir: &Path, source: u32) -> Vec<u64> {
    let prefix = format!("{source}-");
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix(&prefix)?.strip_suffix(".log")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Appends to a new segment.
pub struct WalWriter {
    file: std::fs::File,
    pub seq: u64,
    /// The end of the last whole record appended.
    pub offset: u64,
    /// A failed append may have left bytes after `offset` that could not be
    /// cut off yet.
    torn: bool,
}

impl WalWriter {
    /// Opens the next segment after the existing ones.
    pub fn create(dir: &Path, source: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let seq = segments(dir, source).last().map(|s| s + 1).unwrap_or(0);
        let file = std::fs::OpenOptions::new().create_new(true).append(true).open(segment_path(dir, source, seq))?;
        super::store::sync_dir(dir)?;
        Ok(WalWriter { file, seq, offset: 0, torn: false })
    }

    /// Appends lines and makes them durable; returns the range they occupy.
    /// On failure (a full disk, an I/O error) nothing is appended: a part
    /// of the records that reached the file is cut off again, so no torn
    /// record is left before the records of a later append (a torn record
    /// ends a segment's reading, and would hide them).
    pub fn append(&mut self, lines: &[String]) -> std::io::Result<WalRange> {
        if self.torn {
            self.file.set_len(self.offset)?;
            self.torn = false;
        }
        let mut buf = Vec::new();
        for l in lines {
            let len = u32::try_from(l.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("a line of {} bytes", l.len()))
            })?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(l.as_bytes()).to_le_bytes());
            buf.extend_from_slice(l.as_bytes());
        }
        if let Err(e) = self.file.write_all(&buf).and_then(|()| self.file.sync_data()) {
            // The file is opened for appending: once cut back, the next
            // append writes at `offset` again.
            self.torn = self.file.set_len(self.offset).is_err();
            return Err(e);
        }
        let start = self.offset;
        self.offset += buf.len() as u64;
        Ok(WalRange { seq: self.seq, start, end: self.offset })
    }
}

/// Reads the lines of a range. A torn or corrupt record ends the read.
pub fn read_range(dir: &Path, source: u32, r: &WalRange) -> std::io::Result<Vec<String>> {
    let bytes = std::fs::read(segment_path(dir, source, r.seq))?;
    let end = (r.end as usize).min(bytes.len());
    Ok(parse(&bytes[(r.start as usize).min(end)..end]).0)
}

/// Everything in the log from `from` on: the lines and the ranges they came from.
pub fn read_from(dir: &Path, source: u32, from: WalPosition) -> std::io::Result<(Vec<String>, Vec<WalRange>)> {
    read_from_before(dir, source, from, u64::MAX)
}

/// Like `read_from`, but only segments numbered below `before` (a restarted
/// driver reads what earlier runs logged, not its own new segment, whose
/// lines its receiver already holds).
pub fn read_from_before(
    dir: &Path,
    source: u32,
    from: WalPosition,
    before: u64,
) -> std::io::Result<(Vec<String>, Vec<WalRange>)> {
    let mut lines = Vec::new();
    let mut ranges = Vec::new();
    for seq in segments(dir, source).into_iter().filter(|s| *s >= from.seq && *s < before) {
        let bytes = std::fs::read(segment_path(dir, source, seq))?;
        let start = if seq == from.seq { (from.offset as usize).min(bytes.len()) } else { 0 };
        let (ls, used) = parse(&bytes[start..]);
        if !ls.is_empty() {
            ranges.push(WalRange { seq, start: start as u64, end: (start + used) as u64 });
            lines.extend(ls);
        }
    }
    Ok((lines, ranges))
}

/// Parses whole records; returns them and the bytes they used.
fn parse(mut b: &[u8]) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while b.len() >= 8 {
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let Some(data) = b.get(8..8 + len) else { break };
        if crc32c::crc32c(data) != crc {
            break;
        }
        out.push(String::from_utf8_lossy(data).into_owned());
        used += 8 + len;
        b = &b[8 + len..];
    }
    (out, used)
}
