//! Sources: where records come from, one batch per batch time.
//!
//! * `socket` — a receiver: a thread reads lines from a TCP server and hands
//!   them to the next batch; it reconnects with backoff and never fails the job.
//! * `directory` — new text files in a directory (Spark's textFileStream):
//!   files must appear atomically (write elsewhere, then rename in); each file
//!   is read once; with the wall clock, only files modified within the remember
//!   window (60 s) before the batch time count.
//! * `batches` — a JSON-lines file, one line per batch (a JSON array of
//!   records), for tests and replays; finite.
//! * `generator` — seeded synthetic text, for benchmarks; deterministic per
//!   batch time.
//! * `queue` — batches given through the Rust API (Spark's queueStream); finite.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use weir_codec::{BatchBuilder, Value};

use crate::checkpoint::wal::{self, WalWriter};
use crate::listener::{ListenerBus, ReceiverError};
pub use weir_plan::source::{InputDescriptor, SourceCursor, SourceSpec, WalPosition, WalRange};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {what}")]
    Parse { path: PathBuf, line: usize, what: String },
    #[error("cannot re-read the input of a batch: {0}")]
    Replay(String),
    /// An embedder's source failed.
    #[error("{0}")]
    Custom(String),
}

/// A running source: built-in ones are opened from a [`SourceSpec`];
/// embedders pass their own to `StreamingContext::custom_stream`.
///
/// The recovery contract (what makes outputs exactly-once after a driver
/// crash): `poll` returns a batch and an [`InputDescriptor`] that the driver
/// records in the metadata checkpoint *before* the batch runs; after a crash
/// the driver calls `restore` with the newest recorded [`SourceCursor`], then
/// `replay` with each recorded descriptor, which must return the same bytes
/// again. A replayable source (files, a log, Kafka) describes offsets; a
/// receiver-style source (a socket) must make what it accepted durable
/// first (a write-ahead log) and describe that. A source that cannot replay
/// returns [`InputDescriptor::Unreplayable`] and is at-most-once.
pub trait Source: Send {
    /// The records of the batch at `time`, as an encoded batch, and what it
    /// took (to read the same records again).
    fn poll(&mut self, time: i64, wall_clock: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError>;
    /// The records a batch took, again, byte for byte.
    fn replay(&self, time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError>;
    /// Where to resume after the last batch polled.
    fn cursor(&self) -> SourceCursor;
    /// Resumes at a cursor taken by `cursor` (driver recovery).
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError>;
    /// True when the source is finite and has nothing more to give.
    fn exhausted(&self) -> bool;
}

/// Starts the source a spec describes. `base` resolves relative paths;
/// `wal` is the checkpoint's WAL directory and the source's index, for
/// receivers.
/// `listeners` hear of receiver errors.
pub fn open(
    spec: &SourceSpec,
    base: &Path,
    wal: Option<(PathBuf, u32)>,
    listeners: &ListenerBus,
) -> Result<Box<dyn Source>, SourceError> {
    Ok(match spec {
        SourceSpec::Socket { host, port } => {
            Box::new(SocketSource::start(host.clone(), *port, wal, listeners.clone())?)
        }
        SourceSpec::Directory { path } => Box::new(DirectorySource { dir: base.join(path), seen: BTreeSet::new() }),
        SourceSpec::Batches { path } => Box::new(QueueSource::new(read_batches_file(&base.join(path))?)),
        SourceSpec::Generator { lines_per_batch, words_per_line, vocabulary, seed, batches } => {
            Box::new(GeneratorSource {
                lines: *lines_per_batch,
                words: (*words_per_line).max(1),
                vocab: (*vocabulary).max(1),
                seed: *seed,
                left: *batches,
            })
        }
        SourceSpec::Queue { batches } => Box::new(QueueSource::new(batches.clone())),
        SourceSpec::Custom { name, .. } => {
            return Err(SourceError::Replay(format!("custom source {name:?} is opened by its context, not by a spec")))
        }
    })
}

fn empty_batch() -> Vec<u8> {
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

/// Reads a `batches` file: one JSON array of records per line.
pub fn read_batches_file(path: &Path) -> Result<Vec<Vec<u8>>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| SourceError::Io { path: path.into(), source: e })?;
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
        for r in &recs {
            let v = json_to_value(r).map_err(perr)?;
            b.push_with(|w| v.encode_into(w.buf));
        }
        out.push(b.finish());
    }
    Ok(out)
}

fn lines_batch<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for l in lines {
        b.push_with(|w| w.str(l));
    }
    b.finish()
}

/// Batches given up front (a `batches` file or a queue): finite, replayable
/// by index.
struct QueueSource {
    batches: Vec<Vec<u8>>,
    next: usize,
}

impl QueueSource {
    fn new(batches: Vec<Vec<u8>>) -> Self {
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
}

fn read_files(files: &[PathBuf]) -> Result<Vec<u8>, SourceError> {
    let mut b = BatchBuilder::new();
    for path in files {
        let text = std::fs::read(path).map_err(|e| SourceError::Io { path: path.clone(), source: e })?;
        for l in String::from_utf8_lossy(&text).lines() {
            b.push_with(|w| w.str(l));
        }
    }
    Ok(b.finish())
}

/// How far back, before a batch time, a new file's modification time may be.
const DIRECTORY_REMEMBER: Duration = Duration::from_secs(60);

struct DirectorySource {
    dir: PathBuf,
    seen: BTreeSet<PathBuf>,
}

impl Source for DirectorySource {
    fn poll(&mut self, time: i64, wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        let io = |e| SourceError::Io { path: self.dir.clone(), source: e };
        let mut new = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(|e| SourceError::Io { path: self.dir.clone(), source: e })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // Hidden and temporary files are being written; skip them.
            if name.starts_with('.') || name.starts_with('_') || self.seen.contains(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if wall {
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(time.max(0) as u64);
                if mtime > t || mtime + DIRECTORY_REMEMBER < t {
                    continue;
                }
            }
            new.push((mtime, path));
        }
        new.sort();
        let files: Vec<PathBuf> = new.into_iter().map(|(_, p)| p).collect();
        let batch = read_files(&files)?;
        self.seen.extend(files.iter().cloned());
        Ok((batch, InputDescriptor::Files(files)))
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::Files(files) => read_files(files),
            other => Err(SourceError::Replay(format!("a directory source cannot replay {other:?}"))),
        }
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

/// Lines received and not yet given to a batch, with the WAL ranges that
/// hold them (when there is a WAL).
#[derive(Default)]
struct Received {
    lines: Vec<String>,
    ranges: Vec<WalRange>,
    /// The end of the log as far as it has been written.
    end: Option<WalPosition>,
}

/// A receiver: a background thread reading lines from `host:port`. With a
/// checkpoint directory, every line is in the write-ahead log (fsynced)
/// before it counts as received.
struct SocketSource {
    buffer: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    wal: Option<(PathBuf, u32)>,
    /// Everything before this has been given to a batch.
    allocated: Option<WalPosition>,
    /// The log segment this run writes.
    segment: Option<u64>,
}

impl SocketSource {
    fn start(host: String, port: u16, wal: Option<(PathBuf, u32)>, bus: ListenerBus) -> Result<Self, SourceError> {
        let index = wal.as_ref().map_or(0, |(_, i)| *i);
        let report = move |message: String| {
            let e = ReceiverError { source: index, message };
            bus.emit(|l| l.on_receiver_error(&e));
        };
        let buffer = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = match &wal {
            Some((dir, source)) => {
                Some(WalWriter::create(dir, *source).map_err(|e| SourceError::Io { path: dir.clone(), source: e })?)
            }
            None => None,
        };
        let allocated = writer.as_ref().map(|w| WalPosition { seq: w.seq, offset: 0 });
        let segment = writer.as_ref().map(|w| w.seq);
        let (buf, st) = (buffer.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name("weir-receiver".into()).spawn(move || {
            let mut backoff = Duration::from_millis(100);
            while !st.load(Ordering::Relaxed) {
                match TcpStream::connect((host.as_str(), port)) {
                    Ok(conn) => {
                        tracing::info!("receiver connected to {host}:{port}");
                        backoff = Duration::from_millis(100);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut r = BufReader::new(conn);
                        let mut line = String::new();
                        let mut pending: Vec<String> = Vec::new();
                        loop {
                            if st.load(Ordering::Relaxed) {
                                return;
                            }
                            let got = r.read_line(&mut line);
                            let done = match got {
                                Ok(0) => true,
                                Ok(_) if line.ends_with('\n') => {
                                    pending.push(line.trim_end_matches(['\n', '\r']).to_string());
                                    line.clear();
                                    // Keep reading while more is buffered: one WAL
                                    // append (and fsync) covers many lines.
                                    if !r.buffer().is_empty() && pending.len() < 10_000 {
                                        continue;
                                    }
                                    false
                                }
                                Ok(_) => false,
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    false
                                }
                                Err(e) => {
                                    tracing::warn!("receiver lost {host}:{port}: {e}");
                                    report(format!("lost {host}:{port}: {e}"));
                                    true
                                }
                            };
                            if !pending.is_empty() {
                                let batch = std::mem::take(&mut pending);
                                let range = match writer.as_mut().map(|w| w.append(&batch)) {
                                    Some(Ok(r)) => Some(r),
                                    Some(Err(e)) => {
                                        // Not durable, so not received: drop the connection and
                                        // let the sender's data be lost rather than counted without a log.
                                        tracing::error!(
                                            "receiver: write-ahead log append failed: {e}; dropping the connection"
                                        );
                                        report(format!("write-ahead log append failed: {e}"));
                                        break;
                                    }
                                    None => None,
                                };
                                let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                                b.lines.extend(batch);
                                if let Some(r) = range {
                                    b.ranges.push(r);
                                    b.end = Some(WalPosition { seq: r.seq, offset: r.end });
                                }
                            }
                            if done {
                                break;
                            }
                        }
                        tracing::info!("receiver: {host}:{port} closed the connection; reconnecting");
                    }
                    Err(e) => {
                        tracing::debug!("receiver cannot connect to {host}:{port}: {e}; retrying in {backoff:?}");
                        report(format!("cannot connect to {host}:{port}: {e}"));
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the socket receiver: {e}");
        }
        Ok(SocketSource { buffer, stop, wal, allocated, segment })
    }
}

impl Source for SocketSource {
    fn poll(&mut self, _time: i64, _wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        let got = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        let batch = lines_batch(got.lines.iter().map(|s| s.as_str()));
        if self.wal.is_none() {
            return Ok((batch, InputDescriptor::Unreplayable));
        }
        if let Some(end) = got.end {
            self.allocated = Some(end);
        }
        Ok((batch, InputDescriptor::Wal(got.ranges)))
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match (d, &self.wal) {
            (InputDescriptor::Wal(ranges), Some((dir, source))) => {
                let mut lines = Vec::new();
                for r in ranges {
                    lines.extend(
                        wal::read_range(dir, *source, r)
                            .map_err(|e| SourceError::Io { path: dir.clone(), source: e })?,
                    );
                }
                Ok(lines_batch(lines.iter().map(|s| s.as_str())))
            }
            (other, _) => Err(SourceError::Replay(format!(
                "socket input {other:?} cannot be read again (received without a write-ahead log)"
            ))),
        }
    }
    fn cursor(&self) -> SourceCursor {
        match self.allocated {
            Some(p) => SourceCursor::Wal(p),
            None => SourceCursor::None,
        }
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        let (SourceCursor::Wal(from), Some((dir, source))) = (c, &self.wal) else { return Ok(()) };
        // Received before the crash but not yet in a batch: the next batch takes it.
        // Only earlier runs' segments: what this run's receiver has already
        // logged in its own segment is in the buffer.
        let before = self.segment.unwrap_or(u64::MAX);
        let (lines, ranges) = wal::read_from_before(dir, *source, *from, before)
            .map_err(|e| SourceError::Io { path: dir.clone(), source: e })?;
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = lines;
        lines.append(&mut b.lines);
        b.lines = lines;
        let mut ranges = ranges;
        ranges.append(&mut b.ranges);
        b.ranges = ranges;
        Ok(())
    }
    fn exhausted(&self) -> bool {
        false
    }
}

impl Drop for SocketSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Seeded synthetic text: `w<rank>` words with a Zipf-like rank distribution.
struct GeneratorSource {
    lines: u64,
    words: u32,
    vocab: u32,
    seed: u64,
    left: Option<u64>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl GeneratorSource {
    fn generate(&self, time: i64) -> Vec<u8> {
        let mut state = self.seed ^ (time as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut b = BatchBuilder::with_capacity((self.lines * self.words as u64 * 8) as usize);
        let mut line = String::new();
        for _ in 0..self.lines {
            line.clear();
            for i in 0..self.words {
                // u^3 skews ranks towards small numbers (a cheap Zipf-like law).
                let u = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                let rank = ((u * u * u) * self.vocab as f64) as u32;
                if i > 0 {
                    line.push(' ');
                }
                line.push('w');
                line.push_str(&rank.to_string());
            }
            b.push_with(|w| w.str(&line));
        }
        b.finish()
    }
}

impl Source for GeneratorSource {
    fn poll(&mut self, time: i64, _wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        if let Some(l) = &mut self.left {
            if *l == 0 {
                return Ok((empty_batch(), InputDescriptor::Generated { empty: true }));
            }
            *l -= 1;
        }
        Ok((self.generate(time), InputDescriptor::Generated { empty: false }))
    }
    fn replay(&self, time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::Generated { empty: true } => Ok(empty_batch()),
            InputDescriptor::Generated { empty: false } => Ok(self.generate(time)),
            other => Err(SourceError::Replay(format!("a generator cannot replay {other:?}"))),
        }
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Generator { left: self.left }
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        if let SourceCursor::Generator { left } = c {
            self.left = *left;
        }
        Ok(())
    }
    fn exhausted(&self) -> bool {
        self.left == Some(0)
    }
}
