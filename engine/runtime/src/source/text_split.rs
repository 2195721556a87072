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
//! counted over every line read (a line skipped as invalid UTF-8 still
//! takes its place). A re-run batch goes through the same code with the
//! recorded lengths, so it gets the same partitions, byte for byte.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use weir_codec::{BatchBuilder, CodecError, Records};
use weir_plan::source::InvalidUtf8Policy;

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
/// file as it is when opened if `None`).
pub(super) fn scan(path: &Path, limit: Option<u64>) -> Result<Scanned, FileError> {
    // Non-blocking: a name swapped for a FIFO since the listing would block
    // the open until a writer came (for ever). The flag changes nothing for
    // a regular file's reads; anything else is refused below.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
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

/// What encoding gave: the partitions, and per file the lines of invalid
/// UTF-8 it replaced or skipped.
pub(super) struct Encoded {
    pub(super) parts: Vec<Vec<u8>>,
    pub(super) invalid: Vec<u64>,
}

/// The lines of `files`, in order, as `n` partitions (fewer if there are
/// fewer lines; at least one). An error names the index of the file.
pub(super) fn encode(files: &[Scanned], n: u32, policy: InvalidUtf8Policy) -> Result<Encoded, (usize, FileError)> {
    let total: u64 = files.iter().map(|f| f.lines).sum();
    let n = slices(total, n);
    let ranges: Vec<(u64, u64)> = (0..n).map(|p| (slice_start(total, n, p), slice_start(total, n, p + 1))).collect();
    let threads = if total < PARALLEL_LINES { 1 } else { cores().min(ranges.len()) };
    let next = AtomicUsize::new(0);
    let work = || -> Result<Vec<(usize, Vec<u8>, Vec<u64>)>, (usize, FileError)> {
        let mut done = Vec::new();
        loop {
            let p = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(from, to)) = ranges.get(p) else { return Ok(done) };
            let mut invalid = vec![0u64; files.len()];
            let part = encode_range(files, from, to, policy, &mut invalid)?;
            done.push((p, part, invalid));
        }
    };
    let results = if threads <= 1 {
        vec![work()]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err((0, FileError::Io(std::io::Error::other("a reader panicked")))))
                })
                .collect()
        })
    };
    let mut parts = vec![Vec::new(); ranges.len()];
    let mut invalid = vec![0u64; files.len()];
    for r in results {
        for (p, part, inv) in r? {
            parts[p] = part;
            invalid.iter_mut().zip(inv).for_each(|(a, b)| *a += b);
        }
    }
    Ok(Encoded { parts, invalid })
}

/// The cores this process may use, asked once: the answer reads cgroup
/// files, which cost more than a small batch's encoding.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}

/// Lines `from..to` of the files (counted over all of them) as one batch.
fn encode_range(
    files: &[Scanned],
    from: u64,
    to: u64,
    policy: InvalidUtf8Policy,
    invalid: &mut [u64],
) -> Result<Vec<u8>, (usize, FileError)> {
    // Sized up front from the files' bytes per line (plus each record's
    // 5-byte header), so the partition is not copied as it grows.
    let (bytes, lines) = files.iter().fold((0u64, 0u64), |(b, l), f| (b + f.len, l + f.lines));
    let want = (to - from).saturating_mul(bytes / lines.max(1) + 6);
    let mut b = BatchBuilder::with_capacity(usize::try_from(want).unwrap_or(0).min(MAX_PRESIZE));
    let mut first = 0u64;
    for (i, f) in files.iter().enumerate() {
        let (lo, hi) = (from.max(first), to.min(first + f.lines));
        if lo < hi {
            read_lines(f, lo - first, hi - first, policy, &mut b, &mut invalid[i]).map_err(|e| (i, e))?;
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
/// it is cut at ASCII bytes), and only a run that fails is checked line by
/// line to find, count and treat its bad lines.
fn read_lines(
    f: &Scanned,
    from: u64,
    to: u64,
    policy: InvalidUtf8Policy,
    b: &mut BatchBuilder,
    invalid: &mut u64,
) -> Result<(), FileError> {
    let start = f.marks.get((from / STRIDE) as usize).copied().unwrap_or(0);
    let mut src = At { file: &f.file, pos: start, end: f.len };
    let mut buf = vec![0u8; CHUNK];
    let (mut have, mut eof) = (0usize, false);
    let mut k = from - from % STRIDE;
    while k < to {
        if !eof {
            if have == buf.len() {
                // One line longer than the buffer: room for more of it.
                buf.resize(buf.len() * 2, 0);
            }
            let got = read_full(&mut src, &mut buf[have..])?;
            eof = have + got < buf.len();
            have += got;
        }
        // The complete lines read so far; at the end, the rest is a line.
        let complete = if eof { have } else { memchr::memrchr(b'\n', &buf[..have]).map_or(0, |i| i + 1) };
        let run = &buf[..complete];
        let valid = std::str::from_utf8(run).is_ok();
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
            if valid || std::str::from_utf8(text).is_ok() {
                b.push_with(|w| push_str(w, text));
                continue;
            }
            *invalid += 1;
            match policy {
                InvalidUtf8Policy::Replace => {
                    let t = String::from_utf8_lossy(text);
                    b.push_with(|w| w.str(&t));
                }
                InvalidUtf8Policy::Skip => {}
                InvalidUtf8Policy::Fail => return Err(FileError::InvalidUtf8 { line: k }),
            }
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
            files.push(scan(&path, None).unwrap());
        }
        let all = all.finish();
        for n in [1, 2, 3, 7, 64] {
            let got = encode(&files, n, InvalidUtf8Policy::Replace).unwrap();
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
        let files = vec![scan(&path, None).unwrap()];
        let got = encode(&files, 2, InvalidUtf8Policy::Skip).unwrap();
        assert_eq!(got.invalid, vec![1]);
        assert_eq!(lines_of(&got.parts).concat(), vec!["ok", "ok"]);
        match encode(&files, 2, InvalidUtf8Policy::Fail) {
            Err((0, FileError::InvalidUtf8 { line: 2 })) => {}
            other => panic!("expected line 2 of file 0, got {:?}", other.map(|e| e.invalid)),
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
        let files = vec![scan(&path, None).unwrap()];
        for n in [1, 2, 5] {
            let got = encode(&files, n, InvalidUtf8Policy::Replace).unwrap();
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
        let skipped = encode(&files, 3, InvalidUtf8Policy::Skip).unwrap();
        assert_eq!(skipped.invalid, vec![want.iter().filter(|l| l.contains('\u{fffd}')).count() as u64]);
    }

    #[test]
    fn a_recorded_span_reads_only_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grew");
        std::fs::write(&path, b"a\nb\nc\n").unwrap();
        let files = vec![scan(&path, Some(4)).unwrap()];
        assert_eq!(lines_of(&encode(&files, 1, InvalidUtf8Policy::Replace).unwrap().parts), vec![vec!["a", "b"]]);
        assert!(matches!(scan(&path, Some(100)), Err(FileError::Short { has: 6, len: 100 })));
    }
}
