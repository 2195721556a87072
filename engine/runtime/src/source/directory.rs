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
//!   file, is late);
//! * a line longer than `max_line_bytes` is cut or skipped (`on_long_line`)
//!   with a warning naming the file and the line, and is never held whole
//!   (a file of one 200 MB line costs the limit, not the line).
//!
//! Files are scanned (lines counted), then read line by line straight into
//! the batch's partitions on every core (`text_split`), so the driver holds
//! a file's records once, never the file's text beside them. A batch records
//! each file's length as read ([`FileSpan`]), so a replay reads the same
//! bytes (into the same partitions) even if the file grew since.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::text_split::{encode, scan, FileError, FileStats, LinePolicy, Scanned};
use super::{InputDescriptor, Source, SourceCursor, SourceError};
use crate::listener::{BadLineAction, ListenerBus, ReceiverBadLine, ReceiverError};
use weir_plan::source::{FileSpan, InvalidUtf8Policy, LongLinePolicy};

/// How far back, before a batch time, a new file's modification time may be.
const DIRECTORY_REMEMBER: Duration = Duration::from_secs(60);

/// Batches in which a file that fails to read (or keeps changing while it
/// is read) is tried, in all.
pub(super) const READ_ATTEMPTS: u32 = 3;

/// Names of files still being written (Hadoop's hidden-file rule, HDFS's
/// `_COPYING_`, editors' and downloaders' temporary names).
fn ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with('_')
        || name.ends_with("._COPYING_")
        || name.ends_with(".tmp")
        || name.ends_with('~')
}

/// The job's settings of a directory source.
#[derive(Debug, Clone)]
pub(super) struct Options {
    /// Files are read only if their real path is inside this directory
    /// (canonical).
    pub(super) root: Option<PathBuf>,
    pub(super) new_files_only: bool,
    /// Invalid UTF-8 and long lines.
    pub(super) lines: LinePolicy,
    /// At most this many files per batch.
    pub(super) max_files: usize,
}

pub(super) struct DirectorySource {
    dir: PathBuf,
    /// Files outside it (by their real path) are not read.
    root: Option<PathBuf>,
    new_files_only: bool,
    lines: LinePolicy,
    max_files: usize,
    /// Files left for a later batch by `max_files` (exempt from the age
    /// rule), with the modification time they were taken in order by.
    waiting: BTreeMap<PathBuf, SystemTime>,
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
    /// Files read in this run, and the newest [`RECENT_FILES`] of them
    /// (for the Sources page).
    files_read: u64,
    recent: std::collections::VecDeque<PathBuf>,
    /// Lines replaced, skipped, truncated in this run (the running counts
    /// of `ReceiverBadLine`, by `BadLineAction`).
    bad_lines: [u64; 3],
    /// Files whose metadata was read, in all (for tests).
    #[cfg(test)]
    looked_at: u64,
}

/// Paths of the newest files read kept for the Sources page.
const RECENT_FILES: usize = 5;

impl DirectorySource {
    pub(super) fn new(dir: PathBuf, options: Options, bus: ListenerBus, index: u32) -> DirectorySource {
        DirectorySource {
            dir,
            root: options.root,
            new_files_only: options.new_files_only,
            lines: options.lines,
            max_files: options.max_files.max(1),
            waiting: BTreeMap::new(),
            seen: BTreeSet::new(),
            attempts: BTreeMap::new(),
            given_up: BTreeSet::new(),
            warned: BTreeSet::new(),
            listed: false,
            missing: false,
            bus,
            index,
            files_read: 0,
            recent: std::collections::VecDeque::new(),
            bad_lines: [0; 3],
            #[cfg(test)]
            looked_at: 0,
        }
    }

    /// Warns of the lines of `path` a policy changed or dropped in this
    /// batch (one warning per file and kind, naming the first long line),
    /// and tells listeners as a receiver does
    /// (`StreamingListener::on_receiver_bad_line`, one event per file and
    /// kind, with the running count of the source).
    fn bad_lines(&mut self, path: &Path, st: &FileStats) {
        if st.invalid > 0 {
            let (action, what) = match self.lines.utf8 {
                InvalidUtf8Policy::Skip => (BadLineAction::Skipped, "skipped"),
                _ => (BadLineAction::Replaced, "replaced"),
            };
            let problem = format!("{}: {} line(s) of invalid UTF-8 {what}", path.display(), st.invalid);
            self.warn(problem.clone());
            self.tell(problem, action, st.invalid);
        }
        if let (true, Some((line, len))) = (st.long > 0, st.first_long) {
            let max = self.lines.max_line_bytes;
            let (action, what) = match self.lines.on_long_line {
                LongLinePolicy::Skip => (BadLineAction::Skipped, "skipped"),
                LongLinePolicy::Truncate => (BadLineAction::Truncated, "truncated"),
            };
            let problem = if st.long == 1 {
                format!("{}: line {line} ({len} bytes) is longer than max_line_bytes = {max}; {what}", path.display())
            } else {
                format!(
                    "{}: {} lines longer than max_line_bytes = {max} {what} (the first, line {line}, has {len} bytes)",
                    path.display(),
                    st.long
                )
            };
            self.warn(problem.clone());
            self.tell(problem, action, st.long);
        }
    }

    fn tell(&mut self, problem: String, action: BadLineAction, lines: u64) {
        let slot = match action {
            BadLineAction::Replaced => 0,
            BadLineAction::Skipped => 1,
            _ => 2,
        };
        self.bad_lines[slot] += lines;
        let e = ReceiverBadLine { source: self.index, problem, action, count: self.bad_lines[slot] };
        self.bus.emit(|l| l.on_receiver_bad_line(&e));
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
    fn candidates(&mut self, unseen: &[&Path], time: i64, wall: bool, first: bool) -> Vec<PathBuf> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(time.max(0) as u64);
        let mut new = Vec::new();
        for &path in unseen {
            // A file left waiting was looked at in an earlier batch and keeps
            // its place: with a backlog of N files and `max_files` per batch,
            // looking at every one again made each batch cost N `stat`s.
            if let Some(&mtime) = self.waiting.get(path) {
                new.push((mtime, path.to_path_buf()));
                continue;
            }
            #[cfg(test)]
            {
                self.looked_at += 1;
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
            let age_rule = wall && (!first || self.new_files_only) && !self.attempts.contains_key(path);
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
            new.push((mtime, path.to_path_buf()));
        }
        new.sort();
        // Beyond the per-batch limit, files wait (and keep their place).
        self.waiting = new.iter().skip(self.max_files).map(|(m, p)| (p.clone(), *m)).collect();
        new.into_iter().take(self.max_files).map(|(_, p)| p).collect()
    }
}

/// A path's bytes: the key of the lookups over a listing. Hashed and
/// compared as bytes, not component by component as `Path` does (which cost
/// more than the rest of a small batch's listing); every name here comes
/// from the same `read_dir` joins, so equal paths have equal bytes. Sets of
/// them are only looked up, never iterated.
fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
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

/// A test-only race (cargo feature `failpoints`): the file named by
/// `WEIR_FAILPOINT_DIRECTORY_SWAP_BEFORE_READ` is replaced, after the
/// listing and just before it is read, by a FIFO (`WEIR_FAILPOINT_DIRECTORY_SWAP_TO=fifo`)
/// or a symlink to the path given there (`/dev/zero`).
#[cfg(feature = "failpoints")]
fn swap_before_read(path: &Path) {
    let Some(name) = std::env::var_os("WEIR_FAILPOINT_DIRECTORY_SWAP_BEFORE_READ") else { return };
    if path.file_name() != Some(name.as_os_str()) {
        return;
    }
    let to = std::env::var("WEIR_FAILPOINT_DIRECTORY_SWAP_TO").unwrap_or_else(|_| "fifo".into());
    let _ = std::fs::remove_file(path);
    if to == "fifo" {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
        // SAFETY: a valid NUL-terminated path; mkfifo touches no memory of ours.
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    } else {
        let _ = std::os::unix::fs::symlink(to, path);
    }
}

#[cfg(not(feature = "failpoints"))]
fn swap_before_read(_path: &Path) {}

impl DirectorySource {
    /// Scans the batch's files: the ones that cannot be read now (or changed
    /// while scanned, and may be tried again) are put back for later.
    fn scan_candidates(&mut self, files: Vec<PathBuf>) -> Vec<Scanned> {
        let mut taken = Vec::new();
        for path in files {
            remove_before_read(&path);
            swap_before_read(&path);
            match scan(&path, None, self.root.as_deref()) {
                Ok(f) if f.changed && self.attempts.get(&path).copied().unwrap_or(0) + 1 < READ_ATTEMPTS => {
                    self.failed(&path, "changed while it was read (still being written?)");
                }
                Ok(f) => {
                    if f.changed {
                        self.warn(format!(
                            "{}: still changing after {READ_ATTEMPTS} attempts; took its first {} bytes",
                            path.display(),
                            f.len
                        ));
                    }
                    taken.push(f);
                }
                Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.attempts.remove(&path);
                    self.warn(format!("{}: deleted before it could be read; skipped", path.display()));
                }
                Err(e @ FileError::OutsideRoot { .. }) => {
                    // Not worth another attempt: the link leads out.
                    self.attempts.remove(&path);
                    self.given_up.insert(path.clone());
                    self.warn(format!("{}: {e}; skipped for good", path.display()));
                }
                Err(e) => self.failed(&path, &e.to_string()),
            }
        }
        taken
    }
}

impl Source for DirectorySource {
    fn details(&self) -> Option<crate::listener::SourceDetails> {
        Some(crate::listener::SourceDetails {
            files_seen: Some(self.files_read),
            recent_files: self.recent.iter().map(|p| p.display().to_string()).collect(),
            ..Default::default()
        })
    }
    fn poll(&mut self, time: i64, wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        let (mut parts, d) = self.poll_partitions(time, wall, 1)?;
        Ok((parts.pop().unwrap_or_else(|| weir_codec::BatchBuilder::new().finish()), d))
    }
    fn poll_partitions(
        &mut self,
        time: i64,
        wall: bool,
        n: u32,
    ) -> Result<(Vec<Vec<u8>>, InputDescriptor), SourceError> {
        let listing = match self.list() {
            Ok(l) => l,
            Err(e) => {
                if !self.missing {
                    self.missing = true;
                    self.warn(format!("{}: {e}; waiting for the directory", self.dir.display()));
                }
                return Ok((vec![weir_codec::BatchBuilder::new().finish()], InputDescriptor::FileSpans(Vec::new())));
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
        // Hashed, not ordered: a path comparison walks components, and this
        // runs for every remembered name in every batch.
        let present: HashSet<&[u8]> = listing.iter().map(|p| path_bytes(p)).collect();
        self.seen.retain(|p| present.contains(path_bytes(p)));
        self.attempts.retain(|p, _| present.contains(path_bytes(p)));
        self.given_up.retain(|p| present.contains(path_bytes(p)));
        self.warned.retain(|p| present.contains(path_bytes(p)));
        self.waiting.retain(|p, _| present.contains(path_bytes(p)));
        // Names read or given up on are dropped before anything else looks
        // at the listing (most of a long-lived directory, every batch).
        let unseen: Vec<&Path> = {
            let known: HashSet<&[u8]> = self.seen.iter().chain(&self.given_up).map(|p| path_bytes(p)).collect();
            listing.iter().map(PathBuf::as_path).filter(|p| !known.contains(path_bytes(p))).collect()
        };

        let candidates = self.candidates(&unseen, time, wall, first);
        let mut taken = self.scan_candidates(candidates);
        // A file that fails while its lines are read (truncated since the
        // scan) is put back like one that failed the scan, and the batch is
        // read again without it.
        let encoded = loop {
            match encode(&taken, n, self.lines) {
                Ok(e) => break e,
                Err((i, FileError::InvalidUtf8 { line })) => {
                    return Err(SourceError::Parse {
                        path: taken[i].path.clone(),
                        line: line as usize,
                        what: "invalid UTF-8 (on_invalid_utf8 = fail)".into(),
                    })
                }
                Err((i, e)) => {
                    let f = taken.remove(i);
                    self.failed(&f.path, &e.to_string());
                }
            }
        };
        let mut spans = Vec::new();
        for (f, st) in taken.into_iter().zip(encoded.stats) {
            self.bad_lines(&f.path, &st);
            self.attempts.remove(&f.path);
            self.seen.insert(f.path.clone());
            self.files_read += 1;
            if self.recent.len() >= RECENT_FILES {
                self.recent.pop_front();
            }
            self.recent.push_back(f.path.clone());
            spans.push(FileSpan { path: f.path, len: f.len });
        }
        Ok((encoded.parts, InputDescriptor::FileSpans(spans)))
    }
    fn replay(&self, time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        let mut parts = self.replay_partitions(time, d, 1)?;
        Ok(parts.pop().unwrap_or_else(|| weir_codec::BatchBuilder::new().finish()))
    }
    fn replay_partitions(&self, _time: i64, d: &InputDescriptor, n: u32) -> Result<Vec<Vec<u8>>, SourceError> {
        let spans: Vec<(&Path, Option<u64>)> = match d {
            InputDescriptor::FileSpans(s) => s.iter().map(|s| (s.path.as_path(), Some(s.len))).collect(),
            // Recorded before spans: the whole file.
            InputDescriptor::Files(f) => f.iter().map(|p| (p.as_path(), None)).collect(),
            other => return Err(SourceError::Replay(format!("a directory source cannot replay {other:?}"))),
        };
        let failed = |path: &Path, e: FileError| match e {
            FileError::Io(source) => SourceError::Io { path: path.to_path_buf(), source },
            FileError::InvalidUtf8 { line } => {
                SourceError::Parse { path: path.to_path_buf(), line: line as usize, what: "invalid UTF-8".into() }
            }
            other => SourceError::Replay(format!("{}: {other}", path.display())),
        };
        let mut files = Vec::new();
        for (path, len) in spans {
            files.push(scan(path, len, self.root.as_deref()).map_err(|e| failed(path, e))?);
        }
        encode(&files, n, self.lines).map(|e| e.parts).map_err(|(i, e)| failed(&files[i].path, e))
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Files(self.seen.clone())
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        match c {
            SourceCursor::Files(f) => {
                // Spelled as this run's listing spells them (`dir.join(name)`)
                // however the job file spelled the directory before, so the
                // byte-wise lookups of `path_bytes` find them.
                self.seen = f
                    .iter()
                    .map(|p| match (p.parent(), p.file_name()) {
                        (Some(d), Some(n)) if d == self.dir => self.dir.join(n),
                        _ => p.clone(),
                    })
                    .collect();
                Ok(())
            }
            other => Err(SourceError::Replay(format!("a directory source cannot resume at {other:?}"))),
        }
    }
    fn exhausted(&self) -> bool {
        false
    }
    fn has_backlog(&self) -> bool {
        !self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_line_bytes: usize, on_long_line: LongLinePolicy) -> LinePolicy {
        LinePolicy { utf8: InvalidUtf8Policy::Replace, max_line_bytes, on_long_line }
    }

    /// Lines heard by a listener.
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<(BadLineAction, u64, String)>>);

    impl crate::listener::StreamingListener for Heard {
        fn on_receiver_bad_line(&self, e: &ReceiverBadLine) {
            self.0.lock().unwrap().push((e.action, e.count, e.problem.clone()));
        }
    }

    /// Warnings (receiver errors) heard by a listener.
    #[derive(Default)]
    struct Warnings(std::sync::Mutex<Vec<String>>);

    impl crate::listener::StreamingListener for Warnings {
        fn on_receiver_error(&self, e: &ReceiverError) {
            self.0.lock().unwrap().push(e.message.clone());
        }
    }

    /// A long line is cut (or skipped), warned of with its file and line,
    /// and counted in the receivers' bad-line event, with a running count.
    #[test]
    fn long_lines_are_cut_or_skipped_and_reported_with_file_and_line() {
        for (long, kept) in [(LongLinePolicy::Truncate, Some("0123456789")), (LongLinePolicy::Skip, None)] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a"), "ok\n0123456789abcdef\nok\n0123456789xyz").unwrap();
            let heard = std::sync::Arc::new(Heard::default());
            let bus = ListenerBus::new(vec![heard.clone()]);
            let options = Options { root: None, new_files_only: false, lines: policy(10, long), max_files: 10 };
            let mut s = DirectorySource::new(dir.path().to_path_buf(), options, bus, 3);
            let (parts, _) = s.poll_partitions(1000, false, 2).unwrap();
            let lines: Vec<String> = parts
                .iter()
                .flat_map(|p| weir_codec::Records::new(p).unwrap().map(|r| weir_codec::display::render(r.unwrap())))
                .collect();
            let mut want = vec!["ok"];
            want.extend(kept);
            want.push("ok");
            want.extend(kept);
            assert_eq!(lines, want, "{long:?}");
            std::fs::write(dir.path().join("b"), "0123456789+\n").unwrap();
            s.poll_partitions(2000, false, 1).unwrap();
            let heard = heard.0.lock().unwrap();
            let action = if kept.is_some() { BadLineAction::Truncated } else { BadLineAction::Skipped };
            assert_eq!(heard.iter().map(|h| (h.0, h.1)).collect::<Vec<_>>(), vec![(action, 2), (action, 3)]);
            assert!(heard[0].2.contains("/a: 2 lines longer than max_line_bytes = 10"), "{}", heard[0].2);
            assert!(heard[0].2.contains("line 2, has 16 bytes"), "{}", heard[0].2);
            assert!(heard[1].2.contains("/b: line 1 (11 bytes) is longer"), "{}", heard[1].2);
        }
    }

    /// A backlog drained `max_files` at a time looks at each file's
    /// metadata once, not once per batch, and still takes every file once,
    /// oldest first; a file that arrives meanwhile is looked at once too.
    #[test]
    fn a_backlog_is_looked_at_once_and_taken_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..40u64 {
            let path = dir.path().join(format!("f{i:02}"));
            std::fs::write(&path, format!("line {i}\n")).unwrap();
            // Newest first by name, so the order taken is the times', not the names'.
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t - Duration::from_secs(i)).unwrap();
        }
        let options = Options {
            root: None,
            new_files_only: false,
            lines: policy(1 << 20, LongLinePolicy::Truncate),
            max_files: 2,
        };
        let mut s = DirectorySource::new(dir.path().to_path_buf(), options, ListenerBus::default(), 0);
        let mut lines = Vec::new();
        for b in 0..25i64 {
            if b == 5 {
                std::fs::write(dir.path().join("late"), "late\n").unwrap();
            }
            let (parts, _) = s.poll_partitions(1000 * (b + 1), false, 1).unwrap();
            lines.extend(
                parts.iter().flat_map(|p| {
                    weir_codec::Records::new(p).unwrap().map(|r| weir_codec::display::render(r.unwrap()))
                }),
            );
        }
        let mut want: Vec<String> = (0..40).rev().map(|i| format!("line {i}")).collect();
        let late_at = want.len();
        want.insert(late_at, "late".into());
        assert_eq!(lines, want);
        assert_eq!(s.looked_at, 41, "each file's metadata read once");
        assert!(!s.has_backlog());
    }

    /// A cursor saved with one spelling of the directory still marks its
    /// files as read when the job file spells the directory another way
    /// (the lookups compare bytes, so the restore respells the names).
    #[test]
    fn a_restored_cursor_matches_however_the_directory_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "read before\n").unwrap();
        std::fs::write(dir.path().join("b"), "new\n").unwrap();
        let respelled = PathBuf::from(format!("{}//", dir.path().display()));
        let options = Options {
            root: None,
            new_files_only: false,
            lines: policy(1 << 20, LongLinePolicy::Truncate),
            max_files: 10,
        };
        let mut s = DirectorySource::new(respelled, options, ListenerBus::default(), 0);
        s.restore(&SourceCursor::Files([dir.path().join("a")].into())).unwrap();
        let (parts, _) = s.poll_partitions(1000, false, 1).unwrap();
        let lines: Vec<String> = parts
            .iter()
            .flat_map(|p| weir_codec::Records::new(p).unwrap().map(|r| weir_codec::display::render(r.unwrap())))
            .collect();
        assert_eq!(lines, vec!["new"]);
        // And it is not read again.
        let (parts, _) = s.poll_partitions(2000, false, 1).unwrap();
        assert_eq!(parts.iter().map(|p| weir_codec::Records::new(p).unwrap().remaining()).sum::<u32>(), 0);
    }

    /// With a root, a file is read only if its real path is inside it: a
    /// symlink in the directory to a file outside the root is skipped for
    /// good with a warning (also when it was swapped in after an earlier
    /// batch listed a regular file under that name), a symlink within the
    /// root is followed, and a replay of a range whose file now leads out
    /// fails instead of reading it.
    #[test]
    fn a_root_keeps_symlinks_out_of_it_from_being_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let dir = root.join("in");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.join("mine"), "inside\n").unwrap();
        std::fs::write(tmp.path().join("secret"), "outside\n").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("a-out")).unwrap();
        std::os::unix::fs::symlink(root.join("mine"), dir.join("b-in")).unwrap();
        std::fs::write(dir.join("c"), "plain\n").unwrap();
        // One modification time for all (files are taken in (mtime, name)
        // order): the writes above may straddle a tick of the file clock.
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
        for f in [root.join("mine"), tmp.path().join("secret"), dir.join("c")] {
            std::fs::File::options().write(true).open(f).unwrap().set_modified(when).unwrap();
        }
        let options = Options {
            root: Some(crate::files::confinement(&root)),
            new_files_only: false,
            lines: policy(1 << 20, LongLinePolicy::Truncate),
            max_files: 10,
        };
        let warned = std::sync::Arc::new(Warnings::default());
        let bus = ListenerBus::new(vec![warned.clone()]);
        let mut s = DirectorySource::new(dir.clone(), options, bus, 0);
        let read = |parts: &[Vec<u8>]| -> Vec<String> {
            parts
                .iter()
                .flat_map(|p| weir_codec::Records::new(p).unwrap().map(|r| weir_codec::display::render(r.unwrap())))
                .collect()
        };
        let (parts, d) = s.poll_partitions(1000, false, 1).unwrap();
        assert_eq!(read(&parts), vec!["inside", "plain"]);
        let w = warned.0.lock().unwrap().join("\n");
        assert!(w.contains("a-out: leads to") && w.contains("outside the source's root"), "{w}");
        assert!(w.contains("skipped for good"), "{w}");
        // Nothing tries it again.
        let (parts, _) = s.poll_partitions(2000, false, 1).unwrap();
        assert!(read(&parts).is_empty());
        // The file read at 1000 swapped for a link out: its replay refuses.
        std::fs::remove_file(dir.join("c")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("c")).unwrap();
        let e = s.replay_partitions(1000, &d, 1).unwrap_err().to_string();
        assert!(e.contains("outside the source's root"), "{e}");
        // Without a root the same link is followed.
        let options = Options {
            root: None,
            new_files_only: false,
            lines: policy(1 << 20, LongLinePolicy::Truncate),
            max_files: 10,
        };
        let mut free = DirectorySource::new(dir, options, ListenerBus::default(), 0);
        let (parts, _) = free.poll_partitions(1000, false, 1).unwrap();
        assert_eq!(read(&parts), vec!["outside", "inside", "outside"]);
    }
}
