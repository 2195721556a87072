//! Reading text files' lines straight into a batch's partitions, on every
//! core.
//!
//! A batch's input used to be one core's serial work before any task ran:
//! read each file line by line into one encoded batch, then copy it into
//! partitions. Here a file is first *scanned* (its lines counted, with a
//! sparse index of line starts), then the partitions are *encoded* in
//! parallel, each thread reading its own line range of the files through
//! the handles the scan opened (positioned reads, so a file deleted in
//! between is still read whole).
//!
//! Partitions are cut exactly as [`split_batch`] cuts an encoded batch,
//! by [`slice_start`] (Spark's `ParallelCollectionRDD.slice`), in order,
//! counted over every line read (a line skipped as invalid UTF-8 or as too
//! long still takes its place). A re-run batch goes through the same code
//! with the recorded lengths, so it gets the same partitions, byte for byte.
//!
//! A line longer than `max_line_bytes` is cut (at a UTF-8 character) or
//! skipped, and never held whole: a reader keeps at most the limit (plus a
//! byte) of it and reads the rest a chunk at a time, discarding it, up to
//! its `\n`. A thread's memory is bounded by `max_line_bytes` + [`CHUNK`],
//! whatever the file holds. Positions are unaffected: a batch records whole
//! files' lengths, and the scan counts a long line as one line, as the read
//! does.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::lines::utf8_cut;
use weir_codec::{BatchBuilder, CodecError, Records};
use weir_plan::source::{InvalidUtf8Policy, LongLinePolicy};

/// A line start is indexed every this many lines: finding where a range
/// starts reads at most this many lines of the file for nothing.
const STRIDE: u64 = 1024;

/// The read buffer of one thread reading one file.
const READ_BUFFER: usize = 64 * 1024;

/// Batches with fewer lines are encoded on the calling thread (threads cost
/// more than they save).
const PARALLEL_LINES: u64 = 4096;

/// Why one file could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("has {has} bytes, fewer than the {len} the batch read: it was truncated or replaced")]
    Short { has: u64, len: u64 },
    #[error("line {line}: invalid UTF-8")]
    InvalidUtf8 { line: u64 },
    /// The file opened (a symlink followed) is not inside the source's root.
    #[error("leads to {}, outside the source's root {} (a symlink out of it); not read", real.display(), root.display())]
    OutsideRoot { real: PathBuf, root: PathBuf },
}

/// A file taken into a batch: the open handle and what the scan found.
pub(super) struct Scanned {
    pub(super) path: PathBuf,
    file: File,
    /// Bytes the batch reads (the file's length when opened, or the
    /// recorded span).
    pub(super) len: u64,
    /// Lines in those bytes (a last line without `\n` counts).
    lines: u64,
    /// Byte offset of line `k * STRIDE`.
    marks: Vec<u64>,
    /// The file's length or modification time changed during the scan.
    pub(super) changed: bool,
}

/// Opens `path` and counts the lines of its first `limit` bytes (the whole
/// file as it is when opened if `None`). With a `root` (canonical), a file
/// whose real path is outside it is refused before anything is read.
pub(super) fn scan(path: &Path, limit: Option<u64>, root: Option<&Path>) -> Result<Scanned, FileError> {
    // Non-blocking: a name swapped for a FIFO since the listing would block
    // the open until a writer came (for ever). The flag changes nothing for
    // a regular file's reads; anything else is refused below.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if let Some(root) = root {
        if let Some(real) = crate::files::outside_root(&file, path, root)? {
            return Err(FileError::OutsideRoot { real, root: root.to_path_buf() });
        }
    }
    let before = file.metadata()?;
    // Checked on the open file: the name may have changed since the listing.
    if !before.is_file() {
        return Err(FileError::NotRegular);
    }
    let len = limit.unwrap_or(before.len());
    if before.len() < len {
        return Err(FileError::Short { has: before.len(), len });
    }
    let mut r = (&file).take(len);
    let mut buf = vec![0u8; READ_BUFFER];
    let (mut got, mut lines, mut last) = (0u64, 0u64, b'\n');
    let mut marks = vec![0u64];
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        for at in memchr::memchr_iter(b'\n', &buf[..k]) {
            lines += 1;
            if lines % STRIDE == 0 {
                marks.push(got + at as u64 + 1);
            }
        }
        got += k as u64;
        last = buf[k - 1];
    }
    if got < len {
        // Shrank while being read.
        return Err(FileError::Short { has: got, len });
    }
    if last != b'\n' {
        lines += 1;
    }
    let after = file.metadata()?;
    let changed = after.len() != before.len() || after.modified().ok() != before.modified().ok();
    Ok(Scanned { path: path.to_path_buf(), file, len, lines, marks, changed })
}

/// How a text source treats its lines.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinePolicy {
    pub(super) utf8: InvalidUtf8Policy,
    /// The longest line kept, in bytes without its line ending (at least 1).
    pub(super) max_line_bytes: usize,
    pub(super) on_long_line: LongLinePolicy,
}

/// What a file's lines needed beyond being read: lines of invalid UTF-8
/// replaced or skipped, lines longer than the limit cut or skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FileStats {
    pub(super) invalid: u64,
    pub(super) long: u64,
    /// The first long line: its number (from 1) and its length in bytes
    /// (without its line ending).
    pub(super) first_long: Option<(u64, u64)>,
}

impl FileStats {
    fn long_line(&mut self, line: u64, len: u64) {
        self.long += 1;
        self.first(line, len);
    }

    fn first(&mut self, line: u64, len: u64) {
        if self.first_long.is_none_or(|(l, _)| line < l) {
            self.first_long = Some((line, len));
        }
    }

    /// Adds what another thread found in the same file.
    fn add(&mut self, o: FileStats) {
        self.invalid += o.invalid;
        self.long += o.long;
        if let Some((line, len)) = o.first_long {
            self.first(line, len);
        }
    }
}

/// What encoding gave: the partitions, and per file what its lines needed.
pub(super) struct Encoded {
    pub(super) parts: Vec<Vec<u8>>,
    pub(super) stats: Vec<FileStats>,
}

/// The lines of `files`, in order, as `n` partitions (fewer if there are
/// fewer lines; at least one). An error names the index of the file.
pub(super) fn encode(files: &[Scanned], n: u32, policy: LinePolicy) -> Result<Encoded, (usize, FileError)> {
    let policy = LinePolicy { max_line_bytes: policy.max_line_bytes.max(1), ..policy };
    let total: u64 = files.iter().map(|f| f.lines).sum();
    let n = slices(total, n);
    let ranges: Vec<(u64, u64)> = (0..n).map(|p| (slice_start(total, n, p), slice_start(total, n, p + 1))).collect();
    let threads = if total < PARALLEL_LINES { 1 } else { crate::cores().min(ranges.len()) };
    let next = AtomicUsize::new(0);
    let work = || -> Result<Vec<(usize, Vec<u8>, Vec<FileStats>)>, (usize, FileError)> {
        let mut done = Vec::new();
        loop {
            let p = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(from, to)) = ranges.get(p) else { return Ok(done) };
            let mut stats = vec![FileStats::default(); files.len()];
            let part = encode_range(files, from, to, &policy, &mut stats)?;
            done.push((p, part, stats));
        }
    };
    let results = if threads <= 1 {
        vec![work()]
    } else {
        // This thread is one of the readers: one thread fewer to start per batch.
        std::thread::scope(|s| {
            let hs: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mine = work();
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err((0, FileError::Io(std::io::Error::other("a reader panicked")))))
                })
                .chain([mine])
                .collect()
        })
    };
    let mut parts = vec![Vec::new(); ranges.len()];
    let mut stats = vec![FileStats::default(); files.len()];
    for r in results {
        for (p, part, st) in r? {
            parts[p] = part;
            stats.iter_mut().zip(st).for_each(|(a, b)| a.add(b));
        }
    }
    Ok(Encoded { parts, stats })
}

/// Lines `from..to` of the files (counted over all of them) as one batch.
fn encode_range(
    files: &[Scanned],
    from: u64,
    to: u64,
    policy: &LinePolicy,
    stats: &mut [FileStats],
) -> Result<Vec<u8>, (usize, FileError)> {
    // Sized up front from the files' bytes per line (plus each record's
    // 5-byte header), so the partition is not copied as it grows; a line
    // keeps at most `max_line_bytes` (one huge line says nothing of the rest).
    let (bytes, lines) = files.iter().fold((0u64, 0u64), |(b, l), f| (b + f.len, l + f.lines));
    let per_line = (bytes / lines.max(1)).min(policy.max_line_bytes as u64);
    let want = (to - from).saturating_mul(per_line + 6);
    let mut b = BatchBuilder::with_capacity(usize::try_from(want).unwrap_or(0).min(MAX_PRESIZE));
    let mut first = 0u64;
    for (i, f) in files.iter().enumerate() {
        let (lo, hi) = (from.max(first), to.min(first + f.lines));
        if lo < hi {
            read_lines(f, lo - first, hi - first, policy, &mut b, &mut stats[i]).map_err(|e| (i, e))?;
        }
        first += f.lines;
    }
    Ok(b.finish())
}

/// The most a partition's buffer is sized for before it is read (it grows
/// past this if it must): an estimate must not reserve memory for nothing.
const MAX_PRESIZE: usize = 256 << 20;

/// Bytes read from a file at a time by one thread.
const CHUNK: usize = 256 * 1024;

/// Reads lines `from..to` of one file into `b`.
///
/// Chunks of the file are read whole and cut at `\n`; the complete lines of
/// a chunk are checked as UTF-8 in one pass (a line of a valid run is valid:
/// it is cut at ASCII bytes), and only a run that fails, or that is longer
/// than `max_line_bytes` (it may hold a long line), is looked at line by
/// line. A line that outgrows the buffer grows it up to `max_line_bytes` +
/// 2 bytes (a line of exactly the limit may end in `\r\n`); past that it is
/// long, and [`long_line`] reads it to its end without keeping it.
fn read_lines(
    f: &Scanned,
    from: u64,
    to: u64,
    policy: &LinePolicy,
    b: &mut BatchBuilder,
    stats: &mut FileStats,
) -> Result<(), FileError> {
    let max = policy.max_line_bytes;
    let start = f.marks.get((from / STRIDE) as usize).copied().unwrap_or(0);
    let mut src = At { file: &f.file, pos: start, end: f.len };
    let mut buf = vec![0u8; CHUNK];
    let (mut have, mut eof) = (0usize, false);
    let mut k = from - from % STRIDE;
    while k < to {
        if !eof {
            if have == buf.len() {
                // `buf` holds one line without its `\n` (the complete lines
                // before it were taken).
                if have > max.saturating_add(1) {
                    // Longer than the limit, whatever ends it.
                    k += 1;
                    (have, eof) = long_line(&mut src, &mut buf, have, k, k > from, policy, b, stats)?;
                    continue;
                }
                // Room for more of it.
                let grown = buf.len().saturating_mul(2).min(max.saturating_add(2));
                buf.resize(grown.max(buf.len() + 1), 0);
            }
            let got = read_full(&mut src, &mut buf[have..])?;
            eof = have + got < buf.len();
            have += got;
        }
        note_buffer(buf.len());
        // The complete lines read so far; at the end, the rest is a line.
        let complete = if eof { have } else { memchr::memrchr(b'\n', &buf[..have]).map_or(0, |i| i + 1) };
        let run = &buf[..complete];
        // Decided once per chunk: every line is valid; none can be longer
        // than the limit (true unless the buffer grew past it).
        let valid = std::str::from_utf8(run).is_ok();
        let short = complete <= max;
        let mut at = 0;
        while at < complete && k < to {
            let end = memchr::memchr(b'\n', &run[at..]).map_or(complete, |i| at + i + 1);
            let line = &run[at..end];
            at = end;
            k += 1;
            if k <= from {
                continue;
            }
            // As `str::lines`: `\n` or `\r\n` ends a line; a bare `\r` does not.
            let text = match line.strip_suffix(b"\n") {
                Some(l) => l.strip_suffix(b"\r").unwrap_or(l),
                None => line,
            };
            if valid && (short || text.len() <= max) {
                b.push_with(|w| push_str(w, text));
                continue;
            }
            let text = if text.len() > max {
                stats.long_line(k, text.len() as u64);
                match policy.on_long_line {
                    LongLinePolicy::Skip => continue,
                    LongLinePolicy::Truncate => &text[..utf8_cut(text, max)],
                }
            } else {
                text
            };
            push_checked(text, k, policy.utf8, b, stats)?;
        }
        if k < to && eof && at >= have {
            // Fewer lines than the scan counted: the file changed under us.
            return Err(FileError::Short { has: src.pos, len: f.len });
        }
        buf.copy_within(at..have, 0);
        have -= at;
    }
    Ok(())
}

// The largest read buffer of this thread (tests: memory stays bounded).
#[cfg(test)]
thread_local! {
    static PEAK_BUFFER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn note_buffer(len: usize) {
    PEAK_BUFFER.with(|p| p.set(p.get().max(len)));
}

#[cfg(not(test))]
#[inline(always)]
fn note_buffer(_len: usize) {}

/// Pushes one line that may not be UTF-8, by the policy for invalid lines.
#[inline]
fn push_checked(
    text: &[u8],
    line: u64,
    utf8: InvalidUtf8Policy,
    b: &mut BatchBuilder,
    stats: &mut FileStats,
) -> Result<(), FileError> {
    if std::str::from_utf8(text).is_ok() {
        b.push_with(|w| push_str(w, text));
        return Ok(());
    }
    stats.invalid += 1;
    match utf8 {
        InvalidUtf8Policy::Replace => {
            let t = String::from_utf8_lossy(text);
            b.push_with(|w| w.str(&t));
        }
        InvalidUtf8Policy::Skip => {}
        InvalidUtf8Policy::Fail => return Err(FileError::InvalidUtf8 { line }),
    }
    Ok(())
}

/// Line `line` of the file, whose first `have` bytes fill `buf` without a
/// `\n` and are more than `max_line_bytes` + 1: keeps its first
/// `max_line_bytes` + 1 bytes (enough to cut it at a character), reads the
/// rest a chunk at a time into the bytes after them and discards it up to
/// its `\n` (or the end), then cuts or skips it (`take`: the line is in the
/// range being read). What was read after its `\n` is left at the start of
/// `buf`: returns how many bytes that is, and whether the read reached the
/// end. `buf` ends up `max_line_bytes` + 1 + [`CHUNK`] long at most.
#[allow(clippy::too_many_arguments)]
fn long_line(
    src: &mut At<'_>,
    buf: &mut Vec<u8>,
    have: usize,
    line: u64,
    take: bool,
    policy: &LinePolicy,
    b: &mut BatchBuilder,
    stats: &mut FileStats,
) -> Result<(usize, bool), FileError> {
    let keep = policy.max_line_bytes + 1;
    let room = CHUNK;
    if buf.len() != keep + room {
        buf.resize(keep + room, 0);
    }
    // The line's bytes so far (its line ending not yet known) and its last.
    let (mut len, mut last) = (have as u64, buf[have - 1]);
    let (rest, eof, ending) = loop {
        let got = read_full(src, &mut buf[keep..])?;
        let piece = &buf[keep..keep + got];
        if let Some(i) = memchr::memchr(b'\n', piece) {
            len += i as u64;
            if i > 0 {
                last = piece[i - 1];
            }
            // `\r\n`: the `\r` is the line ending's.
            let ending = u64::from(last == b'\r');
            break (keep + i + 1..keep + got, got < room, ending);
        }
        len += got as u64;
        if got < room {
            // The end of the file ends the line (a `\r` there is the line's).
            break (keep..keep, true, 0);
        }
        last = piece[got - 1];
    };
    if take {
        stats.long_line(line, len - ending);
        if policy.on_long_line == LongLinePolicy::Truncate {
            let head = &buf[..keep];
            push_checked(&head[..utf8_cut(head, policy.max_line_bytes)], line, policy.utf8, b, stats)?;
        }
    }
    let n = rest.len();
    buf.copy_within(rest, 0);
    Ok((n, eof))
}

/// Writes `text`, known to be UTF-8, as a string value (as `Writer::str`,
/// without checking it again).
#[inline]
fn push_str(w: &mut weir_codec::Writer<'_>, text: &[u8]) {
    w.buf.push(weir_codec::TAG_STR);
    w.buf.extend_from_slice(&(text.len() as u32).to_le_bytes());
    w.buf.extend_from_slice(text);
}

/// Fills `buf` from `r` until it is full or `r` ends; how many bytes came.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Positioned reads of `file` from `pos` up to `end`: threads share the
/// handle without sharing a file offset.
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

/// How many partitions a batch of `total` records is cut into when `n` are
/// asked for: `n`, fewer if it has fewer records, at least one.
pub(super) fn slices(total: u64, n: u32) -> u64 {
    (n.max(1) as u64).min(total.max(1))
}

/// The first record of slice `p` of `n` over `total` records: Spark's
/// `ParallelCollectionRDD.positions`, slice `p` = `[p*total/n,
/// (p+1)*total/n)`, so when `total` does not divide evenly the cut
/// falls where `makeRDD` puts it (7 over 3: 2, 2, 3; 10 over 4: 2, 3, 2, 3). O(1): the
/// hot path computes it once per partition.
pub(super) fn slice_start(total: u64, n: u64, p: u64) -> u64 {
    // u128: `p * total` may pass u64 for huge counts.
    ((p.min(n) as u128 * total as u128) / n.max(1) as u128) as u64
}

/// Bytes moved at a time when a batch is split: the batch gives back
/// its tail as it goes, so splitting needs this much beside the batch, not
/// a second copy of it.
const SPLIT_CHUNK: usize = 4 << 20;

/// Splits an encoded batch into `n` contiguous partitions (fewer if it has
/// fewer records; at least one), in order, cut as Spark's `makeRDD` cuts a
/// collection (`slice_start`: 7 records over 3 give 2, 2, 3). Memory
/// stays about one batch: the last
/// partitions are moved out of the batch's tail, which is shrunk as it goes
/// (the allocator returns the pages of a large block), and the first
/// partition is what is left of the batch itself.
pub fn split_batch(mut batch: Vec<u8>, n: u32) -> Result<Vec<Vec<u8>>, CodecError> {
    let recs = Records::new(&batch)?;
    let total = recs.remaining() as u64;
    let n64 = slices(total, n);
    let n = n64 as usize;
    // Each partition's first byte and record count; a malformed record
    // fails the split (the batch is refused, never partly dropped).
    let mut starts = vec![None; n];
    let mut counts = vec![0u32; n];
    let mut end = 4;
    let (mut p, mut next) = (0usize, slice_start(total, n64, 1));
    for (i, r) in recs.enumerate() {
        let r = r?;
        while i as u64 >= next && p + 1 < n {
            p += 1;
            next = slice_start(total, n64, p as u64 + 1);
        }
        starts[p].get_or_insert(end);
        counts[p] += 1;
        end += r.len();
    }
    batch.truncate(end);
    let mut parts = Vec::with_capacity(n);
    for p in (1..n).rev() {
        let Some(start) = starts[p] else {
            parts.push(BatchBuilder::new().finish());
            continue;
        };
        let len = batch.len() - start;
        // Zeroed memory of a fresh allocation is not touched until written.
        let mut part = vec![0u8; 4 + len];
        part[..4].copy_from_slice(&counts[p].to_le_bytes());
        let mut left = len;
        while left > 0 {
            let c = left.min(SPLIT_CHUNK);
            let from = start + left - c;
            part[4 + left - c..4 + left].copy_from_slice(&batch[from..from + c]);
            left -= c;
            batch.truncate(from);
            batch.shrink_to_fit();
        }
        parts.push(part);
    }
    if batch.len() >= 4 {
        batch[..4].copy_from_slice(&counts[0].to_le_bytes());
    }
    parts.push(batch);
    parts.reverse();
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The default line limit (1 MiB, truncate) and `policy` for invalid UTF-8.
    fn utf8(policy: InvalidUtf8Policy) -> LinePolicy {
        LinePolicy {
            utf8: policy,
            max_line_bytes: weir_plan::source::DEFAULT_MAX_LINE_BYTES as usize,
            on_long_line: LongLinePolicy::Truncate,
        }
    }

    fn lines_of(parts: &[Vec<u8>]) -> Vec<Vec<String>> {
        parts
            .iter()
            .map(|p| Records::new(p).unwrap().map(|r| weir_codec::display::render(r.unwrap())).collect())
            .collect()
    }

    /// The parallel encoder cuts exactly where splitting one encoded batch
    /// would, across file boundaries, strides and a last line without `\n`.
    #[test]
    fn encode_matches_split_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut all = BatchBuilder::new();
        for (i, lines) in [0usize, 1, 5000, 3, 2100].into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let mut f = File::create(&path).unwrap();
            for l in 0..lines {
                let text = format!("file {i} line {l}");
                all.push_with(|w| w.str(&text));
                if i == 3 && l == lines - 1 {
                    write!(f, "{text}").unwrap();
                } else if l % 7 == 0 {
                    write!(f, "{text}\r\n").unwrap();
                } else {
                    writeln!(f, "{text}").unwrap();
                }
            }
            files.push(scan(&path, None, None).unwrap());
        }
        let all = all.finish();
        for n in [1, 2, 3, 7, 64] {
            let got = encode(&files, n, utf8(InvalidUtf8Policy::Replace)).unwrap();
            let want = split_batch(all.clone(), n).unwrap();
            assert_eq!(lines_of(&got.parts), lines_of(&want), "n = {n}");
            assert_eq!(got.parts, want, "n = {n}: bytes");
        }
    }

    /// Spark's `ParallelCollectionRDD.positions` (ParallelCollectionSplitSuite,
    /// "slicing ... non-divisible"): slice i = [i*len/n, (i+1)*len/n).
    #[test]
    fn split_batch_cuts_as_sparks_make_rdd() {
        let batch = |k: i64| {
            let mut b = BatchBuilder::new();
            (0..k).for_each(|x| b.push_with(|w| w.i64(x)));
            b.finish()
        };
        let sizes = |parts: &[Vec<u8>]| parts.iter().map(|p| Records::new(p).unwrap().remaining()).collect::<Vec<_>>();
        assert_eq!(sizes(&split_batch(batch(7), 3).unwrap()), vec![2, 2, 3]);
        assert_eq!(sizes(&split_batch(batch(5), 2).unwrap()), vec![2, 3]);
        assert_eq!(sizes(&split_batch(batch(10), 4).unwrap()), vec![2, 3, 2, 3]);
        assert_eq!(sizes(&split_batch(batch(6), 3).unwrap()), vec![2, 2, 2]);
        // Fewer records than partitions: one each; none: one empty partition.
        assert_eq!(sizes(&split_batch(batch(2), 4).unwrap()), vec![1, 1]);
        assert_eq!(sizes(&split_batch(batch(0), 4).unwrap()), vec![0]);
        let parts = split_batch(batch(7), 3).unwrap();
        assert_eq!(lines_of(&parts), vec![vec!["0", "1"], vec!["2", "3"], vec!["4", "5", "6"]]);
        assert_eq!(slice_start(u64::MAX, 4096, 4095), (u64::MAX as u128 * 4095 / 4096) as u64);
    }

    #[test]
    fn invalid_utf8_is_counted_per_file_and_fail_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        std::fs::write(&path, b"ok\n\xff\xfe\nok\n").unwrap();
        let files = vec![scan(&path, None, None).unwrap()];
        let got = encode(&files, 2, utf8(InvalidUtf8Policy::Skip)).unwrap();
        assert_eq!(got.stats[0].invalid, 1);
        assert_eq!(lines_of(&got.parts).concat(), vec!["ok", "ok"]);
        match encode(&files, 2, utf8(InvalidUtf8Policy::Fail)) {
            Err((0, FileError::InvalidUtf8 { line: 2 })) => {}
            other => panic!("expected line 2 of file 0, got {:?}", other.map(|e| e.stats)),
        }
    }

    /// Lines cut across read chunks, a line longer than a chunk, `\r\n`
    /// at a chunk's edge and invalid UTF-8 deep in a chunk read the same as
    /// decoding the whole file line by line does.
    #[test]
    fn lines_across_chunks_read_as_the_whole_file_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut bytes = Vec::new();
        let mut l = 0u64;
        while bytes.len() < 3 * CHUNK {
            match l % 997 {
                5 => bytes.extend(std::iter::repeat_n(b'x', CHUNK + 17)),
                11 => bytes.extend_from_slice(b"bad \xff\xfe here"),
                _ => bytes.extend_from_slice(format!("line {l} {}", "y".repeat((l % 13) as usize)).as_bytes()),
            }
            bytes.extend_from_slice(if l.is_multiple_of(3) { b"\r\n" } else { b"\n" });
            l += 1;
        }
        bytes.extend_from_slice(b"last without newline");
        std::fs::write(&path, &bytes).unwrap();
        let want: Vec<String> = bytes
            .split(|&c| c == b'\n')
            .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
            .collect();
        let files = vec![scan(&path, None, None).unwrap()];
        for n in [1, 2, 5] {
            let got = encode(&files, n, utf8(InvalidUtf8Policy::Replace)).unwrap();
            let got: Vec<String> = got
                .parts
                .iter()
                .flat_map(|p| Records::new(p).unwrap().map(|r| weir_codec::Value::decode(r.unwrap()).unwrap()))
                .map(|v| match v {
                    weir_codec::Value::Str(s) => s,
                    other => panic!("not a string: {other:?}"),
                })
                .collect();
            assert_eq!(got.len(), want.len(), "n = {n}");
            assert!(got == want, "n = {n}: lines differ");
        }
        let skipped = encode(&files, 3, utf8(InvalidUtf8Policy::Skip)).unwrap();
        assert_eq!(skipped.stats[0].invalid, want.iter().filter(|l| l.contains('\u{fffd}')).count() as u64);
    }

    #[test]
    fn a_recorded_span_reads_only_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grew");
        std::fs::write(&path, b"a\nb\nc\n").unwrap();
        let files = vec![scan(&path, Some(4), None).unwrap()];
        assert_eq!(lines_of(&encode(&files, 1, utf8(InvalidUtf8Policy::Replace)).unwrap().parts), vec![vec!["a", "b"]]);
        assert!(matches!(scan(&path, Some(100), None), Err(FileError::Short { has: 6, len: 100 })));
    }

    /// What the lines of `bytes` should be: the socket's splitter (which
    /// keeps at most the limit of a line) over the whole file, then the
    /// policies; and the long lines' numbers and lengths.
    fn expected(bytes: &[u8], max: usize, long: LongLinePolicy) -> (Vec<String>, Vec<(u64, u64)>) {
        let mut sp = crate::source::lines::LineSplitter::new(max);
        let mut raw = Vec::new();
        sp.feed(bytes, &mut raw);
        raw.extend(sp.finish());
        let (mut out, mut longs) = (Vec::new(), Vec::new());
        for (i, l) in raw.into_iter().enumerate() {
            if l.is_long(max) {
                longs.push((i as u64 + 1, l.len));
                if long == LongLinePolicy::Skip {
                    continue;
                }
            }
            out.push(String::from_utf8_lossy(&l.bytes).into_owned());
        }
        (out, longs)
    }

    fn strings(parts: &[Vec<u8>]) -> Vec<String> {
        parts
            .iter()
            .flat_map(|p| Records::new(p).unwrap().map(|r| weir_codec::Value::decode(r.unwrap()).unwrap()))
            .map(|v| match v {
                weir_codec::Value::Str(s) => s,
                other => panic!("not a string: {other:?}"),
            })
            .collect()
    }

    /// A file of short lines around lines longer than `max`: across several
    /// chunks, a character straddling the limit, `\r\n` after a long line,
    /// exactly the limit before `\r\n`, one byte over, invalid UTF-8 in a
    /// long line's head, a line between the chunk size and the limit, and a
    /// long last line without `\n`. Returns the bytes and where the first
    /// long line starts.
    fn messy(max: usize) -> (Vec<u8>, usize) {
        let mut b = Vec::new();
        let short = |b: &mut Vec<u8>, from: usize, n: usize| {
            for l in from..from + n {
                b.extend_from_slice(format!("line {l} {}\n", "s".repeat(l % 11)).as_bytes());
            }
        };
        short(&mut b, 0, 1200);
        let at = b.len();
        // "é" is bytes 999 and 1000 of the line.
        b.extend(std::iter::repeat_n(b'x', 999));
        b.extend_from_slice("é".as_bytes());
        b.extend(std::iter::repeat_n(b'y', 3 * CHUNK + 17));
        b.push(b'\n');
        short(&mut b, 1200, 1200);
        b.extend(std::iter::repeat_n(b'e', max));
        b.extend_from_slice(b"\r\n");
        b.extend(std::iter::repeat_n(b'o', max + 1));
        b.push(b'\n');
        b.extend(std::iter::repeat_n(b'z', 2 * CHUNK));
        b.extend_from_slice(b"\r\n\n");
        b.push(0xff);
        b.extend(std::iter::repeat_n(b'w', 2 * CHUNK + 1));
        b.push(b'\n');
        b.extend(std::iter::repeat_n(b'm', CHUNK + 1));
        b.push(b'\n');
        short(&mut b, 2400, 900);
        b.extend(std::iter::repeat_n(b'q', CHUNK + 5));
        (b, at)
    }

    /// Lines longer than `max_line_bytes` are cut at a character (or
    /// skipped) wherever the chunks fall, every other line reads as the
    /// whole file split line by line does, in any number of partitions (so
    /// reads starting at a line mark too), the long lines' numbers are
    /// exact, and a reader's buffer never outgrows the limit plus a chunk.
    #[test]
    fn long_lines_across_chunks_are_cut_or_skipped_and_the_buffer_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for max in [1000, CHUNK + 3, 1] {
            let (bytes, _) = messy(max);
            let path = dir.path().join(format!("messy-{max}"));
            std::fs::write(&path, &bytes).unwrap();
            let files = vec![scan(&path, None, None).unwrap()];
            assert_eq!(files[0].len, bytes.len() as u64);
            for long in [LongLinePolicy::Truncate, LongLinePolicy::Skip] {
                let (want, longs) = expected(&bytes, max, long);
                assert!(longs.len() >= 5, "max {max}: {longs:?}");
                let policy = LinePolicy { utf8: InvalidUtf8Policy::Replace, max_line_bytes: max, on_long_line: long };
                for n in [1, 3, 7] {
                    PEAK_BUFFER.with(|p| p.set(0));
                    let got = encode(&files, n, policy).unwrap();
                    let lines = strings(&got.parts);
                    assert_eq!(lines.len(), want.len(), "max {max}, {long:?}, n = {n}");
                    for (i, (g, w)) in lines.iter().zip(&want).enumerate() {
                        assert!(
                            g == w,
                            "max {max}, {long:?}, n = {n}: line {i} differs ({} vs {} bytes)",
                            g.len(),
                            w.len()
                        );
                    }
                    let st = got.stats[0];
                    assert_eq!((st.long, st.first_long), (longs.len() as u64, longs.first().copied()), "max {max}");
                    let peak = PEAK_BUFFER.with(|p| p.get());
                    assert!(peak <= max + 1 + CHUNK, "max {max}: a {peak}-byte buffer");
                    // The same bytes again (a replay).
                    assert_eq!(encode(&files, n, policy).unwrap().parts, got.parts);
                }
                if max == 1000 && long == LongLinePolicy::Truncate {
                    // The character straddling the limit is not split.
                    assert_eq!(want[1200], "x".repeat(999));
                    assert_eq!(longs[0], (1201, 999 + 2 + 3 * CHUNK as u64 + 17));
                }
            }
        }
    }

    /// A recorded span ending inside a long line reads the lines before it
    /// and the long line's part in the span as its last line, as the scan
    /// counted it; the next span's bytes are not read.
    #[test]
    fn a_span_ending_inside_a_long_line_reads_exactly_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, at) = messy(1000);
        let path = dir.path().join("messy");
        std::fs::write(&path, &bytes).unwrap();
        // Inside the first chunk read of the line, and chunks later.
        for part in [5000, 2 * CHUNK + 5] {
            let files = vec![scan(&path, Some((at + part) as u64), None).unwrap()];
            assert_eq!(files[0].lines, 1201);
            for (long, n) in [(LongLinePolicy::Truncate, 1201), (LongLinePolicy::Skip, 1200)] {
                let policy = LinePolicy { utf8: InvalidUtf8Policy::Replace, max_line_bytes: 1000, on_long_line: long };
                let got = encode(&files, 2, policy).unwrap();
                let lines = strings(&got.parts);
                assert_eq!(lines.len(), n, "{part}");
                assert_eq!(lines[1199], format!("line 1199 {}", "s".repeat(1199 % 11)));
                assert_eq!(got.stats[0].first_long, Some((1201, part as u64)));
                if n == 1201 {
                    assert_eq!(lines[1200], "x".repeat(999));
                }
            }
        }
    }

    /// With `on_invalid_utf8 = "fail"`, an invalid long line fails naming
    /// its line; a long line that is cut to valid bytes does not.
    #[test]
    fn a_long_line_is_cut_before_it_is_checked_as_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = b"ok\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 10));
        bytes.extend(std::iter::repeat_n(0xff, CHUNK * 2));
        bytes.extend_from_slice(b"\n\xffbad\nok\n");
        std::fs::write(&path, &bytes).unwrap();
        let files = vec![scan(&path, None, None).unwrap()];
        let policy = |max| LinePolicy {
            utf8: InvalidUtf8Policy::Fail,
            max_line_bytes: max,
            on_long_line: LongLinePolicy::Truncate,
        };
        match encode(&files, 1, policy(10)) {
            Err((0, FileError::InvalidUtf8 { line: 3 })) => {}
            other => panic!("expected line 3, got {:?}", other.map(|e| e.stats)),
        }
        match encode(&files, 1, policy(11)) {
            Err((0, FileError::InvalidUtf8 { line: 2 })) => {}
            other => panic!("expected line 2, got {:?}", other.map(|e| e.stats)),
        }
    }
}
