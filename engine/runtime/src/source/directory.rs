//! `directory`: new text files in a directory (Spark's textFileStream).
//!
//! A messy directory is normal, so nothing in it stops the job:
//! * a file that cannot be read (permissions, I/O error) is skipped with a
//!   warning and tried again in the next batches, [`READ_ATTEMPTS`] times in
//!   all; a file deleted before it could be read is skipped with a warning;
//! * a missing (or unlistable) directory is waited for: one warning when it
//!   goes, one note when it is back;
//! * symlinks are followed to regular files; subdirectories are not read;
//!   FIFOs, sockets and devices are skipped with a warning (once per name);
//! * hidden and temporary names (`.x`, `_x`, `x._COPYING_`, `x.tmp`, `x~`)
//!   are files still being written and are ignored;
//! * with the wall clock, a file modified more than the remember window
//!   ([`DIRECTORY_REMEMBER`]) before the batch time is skipped with a warning
//!   (once per name) — except in a run's first listing when the source is
//!   not `new_files_only`, which takes every file already there;
//! * a file that changes while it is read is put back and read again in a
//!   later batch (after [`READ_ATTEMPTS`] tries, what was read is taken);
//! * with `max_files_per_batch`, the oldest files are taken and the rest
//!   wait (a waiting file is exempt from the age rule: the job, not the
//!   file, is late).
//!
//! Files are read line by line straight into the batch, so the driver holds
//! a file's records once, never the file's text beside them. A batch records
//! each file's length as read ([`FileSpan`]), so a replay reads the same
//! bytes even if the file grew since.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{InputDescriptor, Source, SourceCursor, SourceError};
use crate::listener::{ListenerBus, ReceiverError};
use weir_codec::BatchBuilder;
use weir_plan::source::{FileSpan, InvalidUtf8Policy};

/// How far back, before a batch time, a new file's modification time may be.
const DIRECTORY_REMEMBER: Duration = Duration::from_secs(60);

/// Batches in which a file that fails to read (or keeps changing while it
/// is read) is tried, in all.
pub(super) const READ_ATTEMPTS: u32 = 3;

/// The read buffer: memory per file read is this plus the longest line.
const READ_BUFFER: usize = 64 * 1024;

/// Why one file could not be read.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("has {has} bytes, fewer than the {len} the batch read: it was truncated or replaced")]
    Short { has: u64, len: u64 },
    #[error("line {line}: invalid UTF-8")]
    InvalidUtf8 { line: usize },
}

/// What reading one file gave.
struct ReadOutcome {
    /// Bytes read (the file's length when it was opened, or the recorded span).
    len: u64,
    /// The file's length or modification time changed while it was read.
    changed: bool,
    /// Lines that were not valid UTF-8 (replaced or skipped).
    invalid_lines: u64,
}

/// Names of files still being written (Hadoop's hidden-file rule, HDFS's
/// `_COPYING_`, editors' and downloaders' temporary names).
fn ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with('_')
        || name.ends_with("._COPYING_")
        || name.ends_with(".tmp")
        || name.ends_with('~')
}

/// Reads the lines of the first `limit` bytes of `path` (the whole file as
/// it is when opened if `None`) into `b`. On error, `b` may hold some of the
/// file's lines: the caller truncates it back.
fn read_file(
    path: &Path,
    limit: Option<u64>,
    b: &mut BatchBuilder,
    policy: InvalidUtf8Policy,
) -> Result<ReadOutcome, FileError> {
    let file = File::open(path)?;
    let before = file.metadata()?;
    // Checked on the open file: the name may have changed since the listing.
    if !before.is_file() {
        return Err(FileError::NotRegular);
    }
    let len = limit.unwrap_or(before.len());
    if before.len() < len {
        return Err(FileError::Short { has: before.len(), len });
    }
    let mut r = BufReader::with_capacity(READ_BUFFER, (&file).take(len));
    let mut line = Vec::new();
    let (mut got, mut n, mut invalid_lines) = (0u64, 0usize, 0u64);
    loop {
        line.clear();
        let k = r.read_until(b'\n', &mut line)?;
        if k == 0 {
            break;
        }
        got += k as u64;
        n += 1;
        // As `str::lines`: `\n` or `\r\n` ends a line; a bare `\r` does not.
        let text = match line.strip_suffix(b"\n") {
            Some(l) => l.strip_suffix(b"\r").unwrap_or(l),
            None => &line[..],
        };
        match std::str::from_utf8(text) {
            Ok(t) => b.push_with(|w| w.str(t)),
            Err(_) => {
                invalid_lines += 1;
                match policy {
                    InvalidUtf8Policy::Replace => {
                        let t = String::from_utf8_lossy(text);
                        b.push_with(|w| w.str(&t));
                    }
                    InvalidUtf8Policy::Skip => {}
                    InvalidUtf8Policy::Fail => return Err(FileError::InvalidUtf8 { line: n }),
                }
            }
        }
    }
    if got < len {
        // Shrank while being read.
        return Err(FileError::Short { has: got, len });
    }
    let after = file.metadata()?;
    let changed = after.len() != before.len() || after.modified().ok() != before.modified().ok();
    Ok(ReadOutcome { len, changed, invalid_lines })
}

/// The job's settings of a directory source.
#[derive(Debug, Clone, Copy)]
pub(super) struct Options {
    pub(super) new_files_only: bool,
    pub(super) utf8: InvalidUtf8Policy,
    /// At most this many files per batch.
    pub(super) max_files: usize,
}

pub(super) struct DirectorySource {
    dir: PathBuf,
    new_files_only: bool,
    utf8: InvalidUtf8Policy,
    max_files: usize,
    /// Files left for a later batch by `max_files` (exempt from the age rule).
    waiting: BTreeSet<PathBuf>,
    /// Files read (the cursor); only names still in the directory are kept.
    seen: BTreeSet<PathBuf>,
    /// Files not read yet, with the batches that tried and failed.
    attempts: BTreeMap<PathBuf, u32>,
    /// Files given up on in this run (not in the cursor: a restarted driver
    /// tries them again).
    given_up: BTreeSet<PathBuf>,
    /// Files already warned about (old, not regular, unreadable metadata),
    /// so a warning is given once per name, not once per batch.
    warned: BTreeSet<PathBuf>,
    /// A listing succeeded in this run.
    listed: bool,
    /// The directory could not be listed at the last poll (warned).
    missing: bool,
    bus: ListenerBus,
    index: u32,
}

impl DirectorySource {
    pub(super) fn new(dir: PathBuf, options: Options, bus: ListenerBus, index: u32) -> DirectorySource {
        DirectorySource {
            dir,
            new_files_only: options.new_files_only,
            utf8: options.utf8,
            max_files: options.max_files.max(1),
            waiting: BTreeSet::new(),
            seen: BTreeSet::new(),
            attempts: BTreeMap::new(),
            given_up: BTreeSet::new(),
            warned: BTreeSet::new(),
            listed: false,
            missing: false,
            bus,
            index,
        }
    }

    /// Logs a warning and tells listeners (as a receiver error of this source).
    fn warn(&self, message: String) {
        tracing::warn!("directory source: {message}");
        let e = ReceiverError { source: self.index, message };
        self.bus.emit(|l| l.on_receiver_error(&e));
    }

    fn warn_once(&mut self, path: &Path, message: String) {
        if self.warned.insert(path.to_path_buf()) {
            self.warn(message);
        }
    }

    /// The directory's entries that are not hidden or temporary names.
    fn list(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !ignored_name(&entry.file_name().to_string_lossy()) {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    /// A file that failed (or changed while read) in this batch: tried again
    /// in the next batches, then given up on.
    fn failed(&mut self, path: &Path, why: &str) {
        let n = self.attempts.get(path).copied().unwrap_or(0) + 1;
        if n >= READ_ATTEMPTS {
            self.attempts.remove(path);
            self.given_up.insert(path.to_path_buf());
            self.warn(format!("{}: {why}; skipped for good after {n} attempts", path.display()));
        } else {
            self.attempts.insert(path.to_path_buf(), n);
            self.warn(format!(
                "{}: {why}; skipped, will try again next batch (attempt {n} of {READ_ATTEMPTS})",
                path.display()
            ));
        }
    }

    /// The files to read at `time`, oldest first.
    fn candidates(&mut self, listing: &[PathBuf], time: i64, wall: bool, first: bool) -> Vec<PathBuf> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(time.max(0) as u64);
        let mut new = Vec::new();
        for path in listing {
            if self.seen.contains(path) || self.given_up.contains(path) {
                continue;
            }
            // Follows symlinks: a link to a regular file is read.
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) => {
                    self.warn_once(path, format!("{}: {e}; skipped until it can be read", path.display()));
                    continue;
                }
            };
            if meta.is_dir() {
                continue;
            }
            if !meta.is_file() {
                self.warn_once(path, format!("{}: not a regular file; skipped", path.display()));
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            // The first listing of a run takes every file unless
            // `new_files_only`; a file being retried keeps its place.
            let age_rule = wall
                && (!first || self.new_files_only)
                && !self.attempts.contains_key(path)
                && !self.waiting.contains(path);
            if wall && mtime > t {
                // Modified after the batch time: it belongs to a later batch.
                continue;
            }
            if age_rule && mtime + DIRECTORY_REMEMBER < t {
                let age = t.duration_since(mtime).unwrap_or_default().as_secs();
                self.warn_once(
                    path,
                    format!(
                        "{}: modified {age} s before the batch, more than the {} s remember window; skipped \
                         (move files in with a fresh modification time)",
                        path.display(),
                        DIRECTORY_REMEMBER.as_secs()
                    ),
                );
                continue;
            }
            new.push((mtime, path.clone()));
        }
        new.sort();
        // Beyond the per-batch limit, files wait (and keep their place).
        self.waiting = new.iter().skip(self.max_files).map(|(_, p)| p.clone()).collect();
        new.into_iter().take(self.max_files).map(|(_, p)| p).collect()
    }
}

/// A test-only race (cargo feature `failpoints`): the file named by
/// `WEIR_FAILPOINT_DIRECTORY_REMOVE_BEFORE_READ` is deleted after the
/// listing, just before it is read.
#[cfg(feature = "failpoints")]
fn remove_before_read(path: &Path) {
    if let Some(name) = std::env::var_os("WEIR_FAILPOINT_DIRECTORY_REMOVE_BEFORE_READ") {
        if path.file_name() == Some(name.as_os_str()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(not(feature = "failpoints"))]
fn remove_before_read(_path: &Path) {}

impl Source for DirectorySource {
    fn poll(&mut self, time: i64, wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        let listing = match self.list() {
            Ok(l) => l,
            Err(e) => {
                if !self.missing {
                    self.missing = true;
                    self.warn(format!("{}: {e}; waiting for the directory", self.dir.display()));
                }
                return Ok((BatchBuilder::new().finish(), InputDescriptor::FileSpans(Vec::new())));
            }
        };
        if self.missing {
            self.missing = false;
            tracing::info!("directory source: {} can be listed again", self.dir.display());
        }
        let first = !self.listed;
        self.listed = true;
        // Only names still there are remembered: memory follows the
        // directory, not its history (a name that comes back is a new file).
        let present: BTreeSet<&PathBuf> = listing.iter().collect();
        self.seen.retain(|p| present.contains(p));
        self.attempts.retain(|p, _| present.contains(p));
        self.given_up.retain(|p| present.contains(p));
        self.warned.retain(|p| present.contains(p));
        self.waiting.retain(|p| present.contains(p));

        let files = self.candidates(&listing, time, wall, first);
        let mut b = BatchBuilder::new();
        let mut spans = Vec::new();
        for path in files {
            remove_before_read(&path);
            let mark = b.mark();
            match read_file(&path, None, &mut b, self.utf8) {
                Ok(r) if r.changed && self.attempts.get(&path).copied().unwrap_or(0) + 1 < READ_ATTEMPTS => {
                    b.truncate(mark);
                    self.failed(&path, "changed while it was read (still being written?)");
                }
                Ok(r) => {
                    if r.changed {
                        self.warn(format!(
                            "{}: still changing after {READ_ATTEMPTS} attempts; took its first {} bytes",
                            path.display(),
                            r.len
                        ));
                    }
                    if r.invalid_lines > 0 {
                        let what = if self.utf8 == InvalidUtf8Policy::Skip { "skipped" } else { "replaced" };
                        self.warn(format!("{}: {} line(s) of invalid UTF-8 {what}", path.display(), r.invalid_lines));
                    }
                    self.attempts.remove(&path);
                    self.seen.insert(path.clone());
                    spans.push(FileSpan { path, len: r.len });
                }
                Err(FileError::InvalidUtf8 { line }) => {
                    return Err(SourceError::Parse {
                        path,
                        line,
                        what: "invalid UTF-8 (on_invalid_utf8 = fail)".into(),
                    })
                }
                Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    b.truncate(mark);
                    self.attempts.remove(&path);
                    self.warn(format!("{}: deleted before it could be read; skipped", path.display()));
                }
                Err(e) => {
                    b.truncate(mark);
                    self.failed(&path, &e.to_string());
                }
            }
        }
        Ok((b.finish(), InputDescriptor::FileSpans(spans)))
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        let spans: Vec<(&Path, Option<u64>)> = match d {
            InputDescriptor::FileSpans(s) => s.iter().map(|s| (s.path.as_path(), Some(s.len))).collect(),
            // Recorded before spans: the whole file.
            InputDescriptor::Files(f) => f.iter().map(|p| (p.as_path(), None)).collect(),
            other => return Err(SourceError::Replay(format!("a directory source cannot replay {other:?}"))),
        };
        let mut b = BatchBuilder::new();
        for (path, len) in spans {
            read_file(path, len, &mut b, self.utf8).map_err(|e| match e {
                FileError::Io(source) => SourceError::Io { path: path.to_path_buf(), source },
                FileError::InvalidUtf8 { line } => {
                    SourceError::Parse { path: path.to_path_buf(), line, what: "invalid UTF-8".into() }
                }
                other => SourceError::Replay(format!("{}: {other}", path.display())),
            })?;
        }
        Ok(b.finish())
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Files(self.seen.clone())
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        match c {
            SourceCursor::Files(f) => {
                self.seen = f.clone();
                Ok(())
            }
            other => Err(SourceError::Replay(format!("a directory source cannot resume at {other:?}"))),
        }
    }
    fn exhausted(&self) -> bool {
        false
    }
}
