//! The write-ahead log of a receiver: received lines are appended (and
//! fsynced) to a segment in `<checkpoint>/wal/` *before* they count as
//! received, so a driver crash loses none of them. Batches record the WAL
//! ranges they took; a re-run batch reads exactly those ranges again.
//!
//! Segment `wal/<source>-<seq>.log` is a sequence of records
//! `u32le len | u32le crc32c | len bytes (one UTF-8 line)`. Each driver run
//! starts a new segment, and a segment is closed and the next one started
//! once an append would take it past [`DEFAULT_SEGMENT_BYTES`] (64 MiB): a
//! long-running receiver leaves many bounded files, and the checkpoint's
//! garbage collection deletes the ones wholly before the oldest position a
//! kept checkpoint still needs. One append always goes wholly into one
//! segment, so a range (which is within one append, or a part of it) never
//! spans two.
//!
//! A torn last record (crash mid-append) fails its length or checksum and
//! ends the segment: it was never acknowledged. A failed append (a full
//! disk) is cut off again, so it never hides the records of a later append.
//!
//! Reading never loads a whole segment: a batch's range is read by seeking
//! to it and reading exactly its bytes (checked against the file's length
//! first: a range comes from a checkpoint and is not trusted), and recovery
//! streams records. A record's length is bounded before anything is
//! allocated for it, by [`MAX_RECORD_BYTES`] and by the bytes the segment
//! (or range) still holds; a length beyond either is a torn or corrupt
//! record and ends the segment like a bad checksum.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use weir_plan::source::{WalPosition, WalRange};

/// A segment is closed and the next one started once an append would take
/// it past this many bytes (an append larger than this goes alone into a
/// segment of its own).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The longest record a receiver writes, and so the longest one a reader
/// accepts: a line holds at most `max_line_bytes` bytes (at most
/// [`weir_plan::source::MAX_MAX_LINE_BYTES`], 1 GiB), and replacing its
/// invalid bytes by U+FFFD (3 bytes each) at most triples that. A record
/// claiming more is corrupt. (The bytes left in the segment bound a
/// record's length too, and in practice far more tightly.)
pub const MAX_RECORD_BYTES: u64 = 3 * weir_plan::source::MAX_MAX_LINE_BYTES as u64;

/// A record's header: `u32le len | u32le crc32c`.
const HEADER_BYTES: u64 = 8;

/// The read buffer when streaming a segment.
const READ_BUFFER: usize = 64 << 10;

/// Why a segment or a range could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("write-ahead log segment {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A range (from a checkpoint) that ends before it starts.
    #[error("write-ahead log segment {path}: range {start}..{end} ends before it starts (a corrupt checkpoint?)")]
    BadRange { path: PathBuf, start: u64, end: u64 },
    /// A range (from a checkpoint) past the end of its segment: the
    /// segment was cut short or replaced after the range was logged.
    #[error(
        "write-ahead log segment {path}: range {start}..{end} is beyond the segment's {len} bytes \
         (the segment was truncated or replaced after the range was logged)"
    )]
    BeyondSegment { path: PathBuf, start: u64, end: u64, len: u64 },
    /// A torn or corrupt record inside a range that was acknowledged (and
    /// recorded in a checkpoint): lines the sender was told were safe are
    /// gone, so the batch cannot be read again as it was first computed.
    #[error(
        "write-ahead log segment {path}: a torn or corrupt record at byte {at}, inside the acknowledged range          {start}..{end}: the {lines} line(s) before it are intact, the rest of the range is lost (damage to the          log after it was written), so its batch cannot be read again as it was computed"
    )]
    Damaged { path: PathBuf, at: u64, start: u64, end: u64, lines: usize },
}

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

/// The segment size a writer rolls over at: [`DEFAULT_SEGMENT_BYTES`], or
/// (cargo feature `failpoints`, for tests) `WEIR_FAILPOINT_WAL_SEGMENT_BYTES`.
fn segment_bytes() -> u64 {
    #[cfg(feature = "failpoints")]
    if let Some(n) = std::env::var("WEIR_FAILPOINT_WAL_SEGMENT_BYTES").ok().and_then(|v| v.parse::<u64>().ok()) {
        return n.max(1);
    }
    DEFAULT_SEGMENT_BYTES
}

/// Appends to this run's segments.
pub struct WalWriter {
    dir: PathBuf,
    source: u32,
    file: std::fs::File,
    /// The segment appended to now.
    pub seq: u64,
    /// The end of the last whole record appended.
    pub offset: u64,
    /// A failed append may have left bytes after `offset` that could not be
    /// cut off yet.
    torn: bool,
    /// Roll over to a new segment past this size.
    segment_bytes: u64,
    /// New segments only where the log's directory really is inside this
    /// directory (`weir serve`: the tenant's root).
    confine: Option<PathBuf>,
}

impl WalWriter {
    /// Opens the next segment after the existing ones.
    pub fn create(dir: &Path, source: u32) -> std::io::Result<Self> {
        Self::with_segment_bytes(dir, source, segment_bytes(), None)
    }

    /// As [`WalWriter::create`], making segments only while `dir`'s real
    /// path (symlinks followed, checked at each new segment) is inside
    /// `root` (canonical): otherwise the creation, or the append that would
    /// roll over, fails.
    pub fn create_confined(dir: &Path, source: u32, root: Option<PathBuf>) -> std::io::Result<Self> {
        Self::with_segment_bytes(dir, source, segment_bytes(), root)
    }

    /// As [`WalWriter::create`], rolling over to a new segment once an
    /// append would take one past `segment_bytes`.
    pub fn with_segment_bytes(
        dir: &Path,
        source: u32,
        segment_bytes: u64,
        confine: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        if let Some(root) = &confine {
            crate::files::check_inside(root, dir)?;
        }
        super::store::create_dir_all_durable(dir)?;
        let seq = segments(dir, source).last().map(|s| s + 1).unwrap_or(0);
        let file = open_new(dir, source, seq)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            source,
            file,
            seq,
            offset: 0,
            torn: false,
            segment_bytes: segment_bytes.max(1),
            confine,
        })
    }

    /// Closes the segment and starts the next one. Every append to the old
    /// one was made durable when it was acknowledged.
    fn roll_over(&mut self) -> std::io::Result<()> {
        let seq = self.seq + 1;
        let path = segment_path(&self.dir, self.source, seq);
        if let Some(root) = &self.confine {
            // The segment's own path too: a link planted at its name
            // would be followed by the open below.
            crate::files::check_inside(root, &path)?;
        }
        // Only this writer makes segment `seq` (the checkpoint lock): one
        // there already is from an earlier attempt that failed after the
        // create, and is taken if it is still empty.
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        if len != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{}: the next log segment exists already and holds {len} bytes", path.display()),
            ));
        }
        super::store::sync_dir(&self.dir)?;
        self.file = file;
        self.seq = seq;
        self.offset = 0;
        self.torn = false;
        Ok(())
    }

    /// Appends lines and makes them durable; returns the range they occupy
    /// (in one segment: a new one when this append would take the current
    /// one past its size). On failure (a full disk, an I/O error) nothing
    /// is appended: a part of the records that reached the file is cut off
    /// again, so no torn record is left before the records of a later
    /// append (a torn record ends a segment's reading, and would hide them).
    pub fn append(&mut self, lines: &[String]) -> std::io::Result<WalRange> {
        let mut buf = Vec::new();
        for l in lines {
            let len = u32::try_from(l.len()).ok().filter(|n| u64::from(*n) <= MAX_RECORD_BYTES).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("a line of {} bytes (a log record holds at most {MAX_RECORD_BYTES})", l.len()),
                )
            })?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(l.as_bytes()).to_le_bytes());
            buf.extend_from_slice(l.as_bytes());
        }
        if self.offset > 0 && self.offset.saturating_add(buf.len() as u64) > self.segment_bytes {
            // A new segment also leaves behind a torn tail that could not be
            // cut off: it ends the old segment after its last whole record.
            self.roll_over()?;
        }
        if self.torn {
            self.file.set_len(self.offset)?;
            self.torn = false;
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

/// Creates segment `seq` (it must not exist) and makes its name durable.
fn open_new(dir: &Path, source: u32, seq: u64) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().create_new(true).append(true).open(segment_path(dir, source, seq))?;
    super::store::sync_dir(dir)?;
    Ok(file)
}

/// Reads the lines of a range: seeks to its start and reads exactly its
/// bytes. The range comes from a checkpoint: one that ends before it starts
/// or past the end of the segment is an error naming the segment, and so is
/// a torn or corrupt record inside it ([`WalError::Damaged`]: the range was
/// acknowledged, so that is damage to the log; a batch re-run with part of
/// its input would silently differ from the one first computed).
pub fn read_range(dir: &Path, source: u32, r: &WalRange) -> Result<Vec<String>, WalError> {
    let path = segment_path(dir, source, r.seq);
    let io = |e| WalError::Io { path: path.clone(), source: e };
    let file = std::fs::File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    read_range_in(file, len, &path, r)
}

/// [`read_range`] in an open segment of `len` bytes.
fn read_range_in<F: Read + Seek>(file: F, len: u64, path: &Path, r: &WalRange) -> Result<Vec<String>, WalError> {
    if r.start > r.end {
        return Err(WalError::BadRange { path: path.to_path_buf(), start: r.start, end: r.end });
    }
    if r.end > len {
        return Err(WalError::BeyondSegment { path: path.to_path_buf(), start: r.start, end: r.end, len });
    }
    let want = r.end - r.start;
    let (lines, used) =
        records_at(file, r.start, want).map_err(|e| WalError::Io { path: path.to_path_buf(), source: e })?;
    if used < want {
        return Err(WalError::Damaged {
            path: path.to_path_buf(),
            at: r.start + used,
            start: r.start,
            end: r.end,
            lines: lines.len(),
        });
    }
    Ok(lines)
}

/// Everything in the log from `from` on: the lines and the ranges they came from.
pub fn read_from(dir: &Path, source: u32, from: WalPosition) -> Result<(Vec<String>, Vec<WalRange>), WalError> {
    read_from_before(dir, source, from, u64::MAX)
}

/// Like `read_from`, but only segments numbered below `before` (a restarted
/// driver reads what earlier runs logged, not its own new segments, whose
/// lines its receiver already holds). Each segment is streamed from its
/// start (or from `from` in `from`'s segment), up to its end or its first
/// torn or corrupt record; a segment gives one range.
pub fn read_from_before(
    dir: &Path,
    source: u32,
    from: WalPosition,
    before: u64,
) -> Result<(Vec<String>, Vec<WalRange>), WalError> {
    let mut lines = Vec::new();
    let mut ranges = Vec::new();
    for seq in segments(dir, source).into_iter().filter(|s| *s >= from.seq && *s < before) {
        let path = segment_path(dir, source, seq);
        let io = |e| WalError::Io { path: path.clone(), source: e };
        let file = std::fs::File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let start = if seq == from.seq { from.offset.min(len) } else { 0 };
        let (ls, used) = records_at(file, start, len - start).map_err(io)?;
        if !ls.is_empty() {
            ranges.push(WalRange { seq, start, end: start + used });
            lines.extend(ls);
        }
    }
    Ok((lines, ranges))
}

/// The whole records in the `left` bytes of `file` from `start` on, read
/// through a buffer no larger than those bytes (see [`read_records`]).
fn records_at<F: Read + Seek>(mut file: F, start: u64, left: u64) -> std::io::Result<(Vec<String>, u64)> {
    file.seek(SeekFrom::Start(start))?;
    let cap = usize::try_from(left).map_or(READ_BUFFER, |w| w.clamp(1, READ_BUFFER));
    read_records(&mut BufReader::with_capacity(cap, file.take(left)), left)
}

/// Reads whole records from `r`, which holds at most `left` more bytes;
/// returns them and the bytes they used. A record whose length is beyond
/// [`MAX_RECORD_BYTES`] or the bytes left, or whose checksum fails, ends
/// the read (a torn last record, or damage): nothing is allocated for a
/// length before it is checked against both.
fn read_records(r: &mut impl BufRead, mut left: u64) -> std::io::Result<(Vec<String>, u64)> {
    let mut out = Vec::new();
    let mut used = 0;
    let mut header = [0u8; HEADER_BYTES as usize];
    while left >= HEADER_BYTES {
        if !read_or_eof(r, &mut header)? {
            break;
        }
        let len = u64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES || len > left - HEADER_BYTES {
            break;
        }
        // Bounded just above: by the bytes the segment still holds.
        let mut data = vec![0u8; len as usize];
        if !read_or_eof(r, &mut data)? || crc32c::crc32c(&data) != crc {
            break;
        }
        out.push(String::from_utf8(data).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
        used += HEADER_BYTES + len;
        left -= HEADER_BYTES + len;
    }
    Ok((out, used))
}

/// Fills `buf`; false when the input ends first (a file cut short since
/// its length was taken).
fn read_or_eof(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(tag: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{tag} {i} {}", "x".repeat(i % 37))).collect()
    }

    /// A segment file counting the bytes read from it.
    struct Counting {
        file: std::fs::File,
        read: u64,
    }

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.file.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl Seek for Counting {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.file.seek(pos)
        }
    }

    #[test]
    fn a_range_of_a_big_segment_reads_only_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::with_segment_bytes(dir.path(), 0, u64::MAX, None).unwrap();
        // About 4 MiB before and after the range.
        let filler: Vec<String> = (0..4096).map(|i| format!("{i:01000}")).collect();
        w.append(&filler).unwrap();
        let want = lines("middle", 100);
        let r = w.append(&want).unwrap();
        w.append(&filler).unwrap();
        let path = segment_path(dir.path(), 0, r.seq);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 8_000_000, "{len}");

        let mut counted = Counting { file: std::fs::File::open(&path).unwrap(), read: 0 };
        let got = read_range_in(&mut counted, len, &path, &r).unwrap();
        assert_eq!(got, want);
        assert_eq!(counted.read, r.end - r.start, "read {} bytes for a range of {}", counted.read, r.end - r.start);
        assert_eq!(read_range(dir.path(), 0, &r).unwrap(), want);
        // A part of a range, cut at a record boundary, and an empty range.
        let part = WalRange { seq: r.seq, start: r.start, end: r.start + wal_len(&want[..10]) };
        assert_eq!(read_range(dir.path(), 0, &part).unwrap(), want[..10]);
        assert!(read_range(dir.path(), 0, &WalRange { seq: r.seq, start: r.end, end: r.end }).unwrap().is_empty());
    }

    fn wal_len(lines: &[String]) -> u64 {
        lines.iter().map(|l| HEADER_BYTES + l.len() as u64).sum()
    }

    #[test]
    fn a_range_that_is_not_in_its_segment_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 3).unwrap();
        let r = w.append(&lines("a", 5)).unwrap();
        let path = segment_path(dir.path(), 3, r.seq);
        let beyond = WalRange { seq: r.seq, start: r.start, end: r.end + 1 };
        let e = read_range(dir.path(), 3, &beyond).unwrap_err();
        assert!(matches!(e, WalError::BeyondSegment { len, .. } if len == r.end), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(&format!("0..{}", r.end + 1)), "{msg}");
        // Far beyond: refused before anything is allocated or read.
        let far = WalRange { seq: r.seq, start: 1 << 40, end: u64::MAX };
        assert!(matches!(read_range(dir.path(), 3, &far), Err(WalError::BeyondSegment { .. })));
        let backwards = WalRange { seq: r.seq, start: 10, end: 2 };
        let e = read_range(dir.path(), 3, &backwards).unwrap_err();
        assert!(matches!(e, WalError::BadRange { start: 10, end: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("10..2"), "{e}");
        // A missing segment names its path.
        let e = read_range(dir.path(), 3, &WalRange { seq: 99, start: 0, end: 1 }).unwrap_err();
        assert!(matches!(e, WalError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&segment_path(dir.path(), 3, 99).display().to_string()), "{e}");
    }

    /// A record header claiming `len` bytes, with a checksum of nothing.
    fn corrupt_header(len: u32) -> Vec<u8> {
        let mut h = len.to_le_bytes().to_vec();
        h.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        h
    }

    #[test]
    fn a_corrupt_huge_length_ends_the_segment_without_reading_or_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 0).unwrap();
        let before = lines("before", 20);
        let r = w.append(&before).unwrap();
        let path = segment_path(dir.path(), 0, r.seq);
        // Damage after the acknowledged records, then whole records that
        // the damage hides (as a torn record does).
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&corrupt_header(u32::MAX - 7)).unwrap();
        f.write_all(&[7u8; 100]).unwrap();
        drop(f);
        let (got, ranges) = read_from(dir.path(), 0, WalPosition { seq: 0, offset: 0 }).unwrap();
        assert_eq!(got, before);
        assert_eq!(ranges, vec![WalRange { seq: 0, start: 0, end: r.end }]);
        // A range over the damage (one a checkpoint acknowledged) is refused,
        // naming where the damage is and what is intact.
        let len = std::fs::metadata(&path).unwrap().len();
        let all = WalRange { seq: 0, start: 0, end: len };
        let e = read_range(dir.path(), 0, &all).unwrap_err();
        assert!(matches!(e, WalError::Damaged { at, lines: 20, .. } if at == r.end), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(&format!("byte {}", r.end)), "{msg}");
        assert_eq!(read_range(dir.path(), 0, &WalRange { seq: 0, start: 0, end: r.end }).unwrap(), before);

        // The length is refused before the data is read: a reader that
        // claims endless bytes is asked for the header only, whether the
        // length is beyond MAX_RECORD_BYTES or beyond what the input holds.
        for (len, left) in [(u32::MAX, u64::MAX), ((MAX_RECORD_BYTES + 1) as u32, u64::MAX), (1000, 999 + HEADER_BYTES)]
        {
            let mut input = corrupt_header(len);
            input.extend_from_slice(&[0u8; 64]);
            let mut c = std::io::Cursor::new(input);
            let (got, used) = read_records(&mut c, left).unwrap();
            assert_eq!((got.len(), used), (0, 0));
            assert_eq!(c.position(), HEADER_BYTES, "length {len}: data was read");
        }
        // A length within bounds whose data is cut short (a file truncated
        // since its length was taken) ends the read too.
        let mut input = corrupt_header(1000);
        input.extend_from_slice(&[0u8; 10]);
        let (got, used) = read_records(&mut std::io::Cursor::new(input), 1 << 20).unwrap();
        assert_eq!((got.len(), used), (0, 0));
    }

    #[test]
    fn a_torn_last_record_ends_the_segment_and_the_next_segment_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 0).unwrap();
        let a = lines("a", 10);
        let ra = w.append(&a).unwrap();
        // A crash mid-append: half a record.
        let mut f = std::fs::OpenOptions::new().append(true).open(segment_path(dir.path(), 0, 0)).unwrap();
        let mut rec = 50u32.to_le_bytes().to_vec();
        rec.extend_from_slice(&crc32c::crc32c(&[b'z'; 50]).to_le_bytes());
        rec.extend_from_slice(&[b'z'; 20]);
        f.write_all(&rec).unwrap();
        drop(f);
        // The next run's segment.
        let mut w2 = WalWriter::create(dir.path(), 0).unwrap();
        let b = lines("b", 5);
        let rb = w2.append(&b).unwrap();
        assert_eq!(rb.seq, 1);
        let (got, ranges) = read_from(dir.path(), 0, WalPosition { seq: 0, offset: 0 }).unwrap();
        assert_eq!(got, [a.clone(), b.clone()].concat());
        assert_eq!(ranges, vec![ra, rb]);
        // Only the segments before 1; from a position inside segment 0.
        let from = WalPosition { seq: 0, offset: wal_len(&a[..4]) };
        let (got, ranges) = read_from_before(dir.path(), 0, from, 1).unwrap();
        assert_eq!(got, a[4..]);
        assert_eq!(ranges, vec![WalRange { seq: 0, start: from.offset, end: ra.end }]);
    }

    #[test]
    fn segments_roll_over_and_an_append_stays_in_one_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::with_segment_bytes(dir.path(), 0, 1000, None).unwrap();
        let mut all = Vec::new();
        let mut appended = Vec::new();
        for i in 0..40 {
            // Every seventh append is bigger than a whole segment.
            let chunk = if i % 7 == 3 { lines(&format!("big{i}"), 60) } else { lines(&format!("c{i}"), 3) };
            let r = w.append(&chunk).unwrap();
            appended.push((r, chunk.clone()));
            all.extend(chunk);
        }
        let segs = segments(dir.path(), 0);
        assert!(segs.len() > 5, "{segs:?}");
        assert_eq!(segs, (0..segs.len() as u64).collect::<Vec<_>>());
        for (r, chunk) in &appended {
            assert_eq!(&read_range(dir.path(), 0, r).unwrap(), chunk, "{r:?}");
            let len = std::fs::metadata(segment_path(dir.path(), 0, r.seq)).unwrap().len();
            // A segment past its size holds one append that began it.
            assert!(r.end <= 1000 || (r.start == 0 && r.end == len), "{r:?} in a segment of {len} bytes");
        }
        for s in &segs {
            let len = std::fs::metadata(segment_path(dir.path(), 0, *s)).unwrap().len();
            let starts = appended.iter().filter(|(r, _)| r.seq == *s).count();
            assert!(len <= 1000 || starts == 1, "segment {s}: {len} bytes in {starts} appends");
        }
        let (got, ranges) = read_from(dir.path(), 0, WalPosition { seq: 0, offset: 0 }).unwrap();
        assert_eq!(got, all);
        assert_eq!(ranges.len(), segs.len());
        // A restart continues after the last segment.
        assert_eq!(WalWriter::create(dir.path(), 0).unwrap().seq, segs.len() as u64);
    }

    #[test]
    fn a_roll_over_retried_after_a_failure_takes_the_empty_segment_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::with_segment_bytes(dir.path(), 0, 100, None).unwrap();
        let a = lines("a", 4);
        w.append(&a).unwrap();
        // As if a first attempt created segment 1 and then failed.
        std::fs::write(segment_path(dir.path(), 0, 1), b"").unwrap();
        let b = lines("b", 4);
        let r = w.append(&b).unwrap();
        assert_eq!((r.seq, r.start), (1, 0));
        assert_eq!(read_range(dir.path(), 0, &r).unwrap(), b);
        // One that holds records is never appended to.
        std::fs::write(segment_path(dir.path(), 0, 2), b"not empty").unwrap();
        let e = w.append(&lines("c", 4)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(w.seq, 1);
    }

    #[test]
    fn a_confined_log_makes_no_segment_through_a_link_out_of_its_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(root.join("wal")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let root = root.canonicalize().unwrap();
        let mut w = WalWriter::with_segment_bytes(&root.join("wal"), 0, 10, Some(root.clone())).unwrap();
        w.append(&["first line".to_string()]).unwrap();
        // The directory swapped for a link: the append that would roll over fails.
        std::fs::rename(root.join("wal"), root.join("old-wal")).unwrap();
        std::os::unix::fs::symlink(&other, root.join("wal")).unwrap();
        let e = w.append(&["second line".to_string()]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert!(WalWriter::create_confined(&root.join("wal"), 1, Some(root.clone())).is_err());
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0, "no segment made through the link");
    }
}
