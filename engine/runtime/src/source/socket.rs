//! `socket`: a receiver reading lines from a TCP server, logging them to
//! the write-ahead log before they count as received.
//!
//! Every byte from the server is untrusted. Bytes are split into lines at
//! `\n` before they are decoded (a character split across two reads is
//! whole by then; see `lines`), a line keeps at most `max_line_bytes` in
//! memory, and a line that is not UTF-8 or is too long is handled by the
//! source's policies. A non-empty last line without a newline is a line.
//! A line is acknowledged (handed to a batch) only once it is in the log;
//! when the log cannot be written (a full disk) the receiver keeps the lines
//! and stops reading until it can (TCP backpressure), retrying with backoff.
//!
//! With a rate limit (backpressure, `[rate] max`) the receiver reads at most
//! that many lines a second (a token bucket: it takes lines out of its read
//! buffer only as tokens allow, so the rest waits there and then in the
//! socket, and the sender is slowed by TCP; nothing is dropped), and a batch
//! takes at most rate × batch interval lines: the rest stays received, and
//! logged, for the next batch. A batch's WAL ranges then end at the line it
//! took last, which may be inside one append's range.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::lines::{LineSplitter, RawLine};
use super::queue::lines_batch;
use super::{InputDescriptor, Source, SourceCursor, SourceError, WalPosition, WalRange};
use crate::checkpoint::wal::{self, WalWriter};
use crate::listener::{
    BadLineAction, ListenerBus, ReceiverBadLine, ReceiverConnected, ReceiverDisconnected, ReceiverError,
};
use weir_plan::source::{InvalidUtf8Policy, LongLinePolicy};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 << 10;

/// Received lines not yet given to a batch, in bytes, above which the
/// receiver stops reading until the driver takes them (so a burst waits in
/// the socket, not in memory).
const MAX_BUFFERED_BYTES: u64 = 64 << 20;

/// The longest wait between two attempts to append to a log that failed.
const MAX_APPEND_BACKOFF: Duration = Duration::from_secs(1);

/// The longest burst the token bucket allows, as seconds of its rate (as
/// Spark's receiver rate limiter, a Guava `RateLimiter`).
const MAX_BURST_SECONDS: f64 = 1.0;

/// A rate shared by the source (which sets it) and its receiver thread:
/// records per second as `f64` bits, 0 for none.
#[derive(Clone, Default)]
struct SharedRate(Arc<AtomicU64>);

impl SharedRate {
    fn set(&self, r: Option<f64>) {
        let bits = match r {
            Some(r) if r.is_finite() && r > 0.0 => r.to_bits(),
            _ => 0,
        };
        self.0.store(bits, Ordering::Relaxed);
    }
    fn get(&self) -> Option<f64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        }
    }
}

/// The receiver's token bucket: one token a line, `rate` tokens a second,
/// at most [`MAX_BURST_SECONDS`] of them stored.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new() -> Self {
        Bucket { tokens: 0.0, last: Instant::now() }
    }

    /// Adds the tokens earned since the last call at `rate`.
    fn refill(&mut self, rate: f64) {
        let now = Instant::now();
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min((rate * MAX_BURST_SECONDS).max(1.0));
        self.last = now;
    }

    /// How long until one whole token is there at `rate`.
    fn wait(&self, rate: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / rate).clamp(0.001, 1.0))
    }
}

/// How many bytes of `data` hold at most `lines` line ends, and how many
/// line ends that is: the cut falls just after the `lines`-th `\n`.
fn cut_after_lines(data: &[u8], lines: usize) -> (usize, usize) {
    let mut seen = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return (i + 1, seen);
            }
        }
    }
    (data.len(), seen)
}

/// How a socket source treats what it reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinePolicy {
    pub on_invalid_utf8: InvalidUtf8Policy,
    pub max_line_bytes: u32,
    pub on_long_line: LongLinePolicy,
}

/// Lines received and not yet given to a batch, with the WAL ranges that
/// hold them (when there is a WAL).
#[derive(Default)]
struct Received {
    lines: Vec<String>,
    /// Bytes of `lines` this run's receiver added.
    bytes: u64,
    ranges: Vec<WalRange>,
}

/// The buffer shared by the receiver thread and the source, and the signal
/// that the driver took what it held.
type Shared = Arc<(Mutex<Received>, Condvar)>;

/// A receiver: a background thread reading lines from `host:port`. With a
/// checkpoint directory, every line is in the write-ahead log (fsynced)
/// before it counts as received.
pub(super) struct SocketSource {
    buffer: Shared,
    stop: Arc<AtomicBool>,
    wal: Option<super::WalAt>,
    /// Everything before this has been given to a batch.
    allocated: Option<WalPosition>,
    /// The first log segment this run writes (later ones, rolled over to,
    /// are numbered above it).
    segment: Option<u64>,
    /// The rate limit the receiver reads at (set by the driver).
    rate: SharedRate,
    batch_interval_ms: i64,
}

impl SocketSource {
    pub(super) fn start(
        host: String,
        port: u16,
        policy: LinePolicy,
        wal: Option<super::WalAt>,
        bus: ListenerBus,
        batch_interval_ms: i64,
    ) -> Result<Self, SourceError> {
        let index = wal.as_ref().map_or(0, |w| w.source);
        let buffer: Shared = Arc::new((Mutex::new(Received::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = match &wal {
            Some(w) => Some(
                WalWriter::create_confined(&w.dir, w.source, w.confine.clone())
                    .map_err(|e| SourceError::Io { path: w.dir.clone(), source: e })?,
            ),
            None => None,
        };
        let allocated = writer.as_ref().map(|w| WalPosition { seq: w.seq, offset: 0 });
        let segment = writer.as_ref().map(|w| w.seq);
        let rate = SharedRate::default();
        let mut receiver = Receiver {
            rate: rate.clone(),
            host,
            port,
            index,
            policy,
            bus,
            buffer: buffer.clone(),
            stop: stop.clone(),
            writer,
            counts: [0; 4],
        };
        let spawned = std::thread::Builder::new().name("weir-receiver".into()).spawn(move || receiver.run());
        if let Err(e) = spawned {
            tracing::error!("cannot start the socket receiver: {e}");
        }
        Ok(SocketSource { buffer, stop, wal, allocated, segment, rate, batch_interval_ms })
    }
}

/// Why the receiver stopped reading a connection.
enum Closed {
    /// The server closed it.
    Eof,
    /// Reading failed (reset, ...).
    Lost(std::io::Error),
    /// A line was not UTF-8 and the policy is `fail`.
    Invalid,
    /// The source is being dropped.
    Stopped,
}

/// The receiver thread's state.
struct Receiver {
    host: String,
    port: u16,
    index: u32,
    policy: LinePolicy,
    bus: ListenerBus,
    buffer: Shared,
    stop: Arc<AtomicBool>,
    writer: Option<WalWriter>,
    /// Lines treated with each `BadLineAction` (by `action_slot`).
    counts: [u64; 4],
    rate: SharedRate,
}

fn action_slot(a: BadLineAction) -> usize {
    match a {
        BadLineAction::Replaced => 0,
        BadLineAction::Skipped => 1,
        BadLineAction::Truncated => 2,
        _ => 3,
    }
}

impl Receiver {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn report(&self, message: String) {
        let e = ReceiverError { source: self.index, message };
        self.bus.emit(|l| l.on_receiver_error(&e));
    }

    /// Sleeps `d`, waking early when the source is dropped; false then.
    fn pause(&self, d: Duration) -> bool {
        let (lock, cv) = &*self.buffer;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + d;
        while !self.stopped() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            // Woken by the driver's polls and by drop; bounded for the stop flag.
            g = cv.wait_timeout(g, left.min(Duration::from_millis(50))).unwrap_or_else(|p| p.into_inner()).0;
        }
        false
    }

    /// Connects, reads, reconnects with backoff until the source is dropped.
    /// Listeners hear of every connection made and lost (a status page
    /// shows whether the receiver is connected and counts reconnects).
    fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut connections: u64 = 0;
        while !self.stopped() {
            let (host, port) = (self.host.clone(), self.port);
            let address = format!("{host}:{port}");
            match TcpStream::connect((host.as_str(), port)) {
                Ok(conn) => {
                    tracing::info!("receiver connected to {address}");
                    backoff = Duration::from_millis(100);
                    let e = ReceiverConnected { source: self.index, address: address.clone(), reconnects: connections };
                    connections += 1;
                    self.bus.emit(|l| l.on_receiver_connected(&e));
                    let reason = match self.read_connection(conn) {
                        Closed::Stopped => return,
                        Closed::Eof => {
                            tracing::warn!("receiver: {address} closed the connection; reconnecting");
                            "the server closed the connection".to_string()
                        }
                        Closed::Lost(e) => {
                            tracing::warn!("receiver lost {address}: {e}; reconnecting");
                            self.report(format!("lost {address}: {e}"));
                            format!("lost: {e}")
                        }
                        Closed::Invalid => {
                            tracing::info!("receiver: dropped the connection to {address}; reconnecting");
                            "dropped by the receiver (on_invalid_utf8 = \"fail\")".to_string()
                        }
                    };
                    let e = ReceiverDisconnected { source: self.index, address, reason };
                    self.bus.emit(|l| l.on_receiver_disconnected(&e));
                }
                Err(e) => {
                    tracing::debug!("receiver cannot connect to {address}: {e}; retrying in {backoff:?}");
                    self.report(format!("cannot connect to {address}: {e}"));
                }
            }
            if !self.pause(backoff) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Reads one connection until it ends; every line read before the end
    /// is delivered (logged, then handed to the next batch).
    fn read_connection(&mut self, conn: TcpStream) -> Closed {
        // A bounded read lets the thread notice a stop.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
        let mut r = BufReader::with_capacity(READ_CHUNK, conn);
        let mut splitter = LineSplitter::new(self.policy.max_line_bytes as usize);
        let mut raw: Vec<RawLine> = Vec::new();
        let mut bucket = Bucket::new();
        loop {
            if !self.wait_for_room() {
                return Closed::Stopped;
            }
            // Lines the rate limit lets through now; the bucket starts empty
            // whenever there was no limit.
            let allowed = match self.rate.get() {
                None => {
                    bucket = Bucket::new();
                    usize::MAX
                }
                Some(rate) => {
                    bucket.refill(rate);
                    if bucket.tokens < 1.0 {
                        if !self.pause(bucket.wait(rate)) {
                            return Closed::Stopped;
                        }
                        continue;
                    }
                    bucket.tokens.floor() as usize
                }
            };
            let mut closed = match r.fill_buf() {
                Ok([]) => Some(Closed::Eof),
                Ok(data) => {
                    // Only whole allowed lines leave the read buffer; the
                    // rest waits there (and the sender, in the socket).
                    let (n, lines) = cut_after_lines(data, allowed);
                    splitter.feed(&data[..n], &mut raw);
                    r.consume(n);
                    if allowed != usize::MAX {
                        bucket.tokens -= lines as f64;
                    }
                    None
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    None
                }
                Err(e) => Some(Closed::Lost(e)),
            };
            if closed.is_some() {
                // What was received of a last line is a line, whether the
                // server closed cleanly or the connection broke.
                if matches!(closed, Some(Closed::Lost(_))) && splitter.partial_len() > 0 {
                    tracing::warn!(
                        "receiver: the connection broke in the middle of a line; keeping its {} bytes as a line",
                        splitter.partial_len()
                    );
                }
                raw.extend(splitter.finish());
            }
            let mut lines = Vec::with_capacity(raw.len());
            for l in raw.drain(..) {
                match self.decode(l) {
                    Ok(Some(s)) => lines.push(s),
                    Ok(None) => {}
                    Err(()) => {
                        // The rest of the connection is not read: the lines
                        // after this one in this read go with it.
                        closed = Some(Closed::Invalid);
                        break;
                    }
                }
            }
            raw.clear();
            if !self.deliver(lines) {
                return Closed::Stopped;
            }
            if let Some(c) = closed {
                return c;
            }
        }
    }

    /// Waits while the lines not yet given to a batch exceed their bound;
    /// false when the source is dropped meanwhile.
    fn wait_for_room(&self) -> bool {
        let (lock, cv) = &*self.buffer;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        while g.bytes > MAX_BUFFERED_BYTES {
            if self.stopped() {
                return false;
            }
            g = cv.wait_timeout(g, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
        }
        !self.stopped()
    }

    /// A line by the source's policies: `Ok(None)` when skipped, `Err` when
    /// the connection must be dropped.
    fn decode(&mut self, l: RawLine) -> Result<Option<String>, ()> {
        let max = self.policy.max_line_bytes;
        let long = l.is_long(max as usize);
        if long {
            let problem = format!("a line of {} bytes is longer than max_line_bytes = {max}", l.len);
            if self.policy.on_long_line == LongLinePolicy::Skip {
                self.bad_line(problem, BadLineAction::Skipped);
                return Ok(None);
            }
            self.bad_line(problem, BadLineAction::Truncated);
        }
        match String::from_utf8(l.bytes) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                let problem = "a line of invalid UTF-8".to_string();
                match self.policy.on_invalid_utf8 {
                    InvalidUtf8Policy::Replace => {
                        self.bad_line(problem, BadLineAction::Replaced);
                        Ok(Some(String::from_utf8_lossy(e.as_bytes()).into_owned()))
                    }
                    InvalidUtf8Policy::Skip => {
                        self.bad_line(problem, BadLineAction::Skipped);
                        Ok(None)
                    }
                    InvalidUtf8Policy::Fail => {
                        self.bad_line(problem.clone(), BadLineAction::Failed);
                        let (host, port) = (&self.host, self.port);
                        tracing::error!("receiver: {problem} from {host}:{port}; dropping the connection");
                        self.report(format!("{problem} from {host}:{port} (on_invalid_utf8 = \"fail\")"));
                        Err(())
                    }
                }
            }
        }
    }

    /// Counts a line a policy changed or dropped, tells the listeners, and
    /// warns at the 1st, 2nd, 4th, 8th, ... of each kind (a stream of bad
    /// lines must not flood the log).
    fn bad_line(&mut self, problem: String, action: BadLineAction) {
        let slot = action_slot(action);
        self.counts[slot] += 1;
        let count = self.counts[slot];
        if count.is_power_of_two() {
            let done = match action {
                BadLineAction::Replaced => "invalid bytes replaced by U+FFFD",
                BadLineAction::Skipped => "skipped",
                BadLineAction::Truncated => "truncated",
                _ => "connection dropped",
            };
            tracing::warn!("receiver {}:{}: {problem}: {done} ({count} {done} so far)", self.host, self.port);
        }
        let e = ReceiverBadLine { source: self.index, problem, action, count };
        self.bus.emit(|l| l.on_receiver_bad_line(&e));
    }

    /// Logs `lines` (retrying with backoff while the log cannot be
    /// written; nothing is read meanwhile), then hands them to the next
    /// batch. False when the source is dropped first (the lines were never
    /// acknowledged).
    fn deliver(&mut self, lines: Vec<String>) -> bool {
        if lines.is_empty() {
            return true;
        }
        let mut range = None;
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u64;
        while let Some(w) = self.writer.as_mut() {
            match w.append(&lines) {
                Ok(r) => {
                    if failures > 0 {
                        tracing::warn!(
                            "receiver: write-ahead log append succeeded after {failures} failed attempt(s); reading again"
                        );
                    }
                    range = Some(r);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        // Not durable, so not received: keep the lines and
                        // read nothing more until the log takes them.
                        tracing::error!(
                            "receiver: write-ahead log append failed: {e}; holding {} line(s) and retrying",
                            lines.len()
                        );
                        self.report(format!("write-ahead log append failed: {e}"));
                    } else {
                        tracing::debug!("receiver: write-ahead log append failed again: {e}");
                    }
                    if !self.pause(backoff) {
                        return false;
                    }
                    backoff = (backoff * 2).min(MAX_APPEND_BACKOFF);
                }
            }
        }
        let (lock, _) = &*self.buffer;
        let mut b = lock.lock().unwrap_or_else(|p| p.into_inner());
        b.bytes += lines.iter().map(|l| l.len() as u64).sum::<u64>();
        b.lines.extend(lines);
        if let Some(r) = range {
            b.ranges.push(r);
        }
        true
    }
}

/// Takes the first `n` lines of `r` with the WAL ranges that hold them
/// (when there are ranges), and the log position just after the last line
/// taken. A line's record is 8 bytes of header and its bytes (`wal`), so a
/// range is cut at a line boundary by adding up the lines it holds.
fn take_front(r: &mut Received, n: usize) -> (Vec<String>, Vec<WalRange>, Option<WalPosition>) {
    let n = n.min(r.lines.len());
    if n == 0 {
        return (Vec::new(), Vec::new(), None);
    }
    let rest_lines = r.lines.split_off(n);
    let lines = std::mem::replace(&mut r.lines, rest_lines);
    r.bytes = r.lines.iter().map(|l| l.len() as u64).sum();
    if r.ranges.is_empty() {
        return (lines, Vec::new(), None);
    }
    // Walk the ranges line by line: `(ri, off)` is where the next line starts.
    let mut ri = 0;
    let mut off = r.ranges[0].start;
    for l in &lines {
        while ri < r.ranges.len() && off >= r.ranges[ri].end {
            ri += 1;
            if let Some(next) = r.ranges.get(ri) {
                off = next.start;
            }
        }
        off += 8 + l.len() as u64;
    }
    let Some(cut) = r.ranges.get(ri).copied() else {
        // More lines than the ranges hold: cannot happen (every line is
        // logged before it is received); keep every range with the batch
        // rather than describe it short.
        tracing::error!("socket source: received lines and their log ranges disagree; the batch takes every range");
        let ranges = std::mem::take(&mut r.ranges);
        let end = ranges.last().map(|l| WalPosition { seq: l.seq, offset: l.end });
        return (lines, ranges, end);
    };
    let off = off.min(cut.end);
    let mut taken: Vec<WalRange> = r.ranges.drain(..ri).collect();
    taken.push(WalRange { seq: cut.seq, start: cut.start, end: off });
    if off < cut.end {
        r.ranges[0] = WalRange { seq: cut.seq, start: off, end: cut.end };
    } else {
        r.ranges.remove(0);
    }
    (lines, taken, Some(WalPosition { seq: cut.seq, offset: off }))
}

impl Source for SocketSource {
    /// The write-ahead log's segments of this source on disk (a listing and
    /// a `stat` per segment, once a batch; only with a checkpoint directory).
    fn details(&self) -> Option<crate::listener::SourceDetails> {
        let w = self.wal.as_ref()?;
        let (dir, source) = (&w.dir, &w.source);
        let (mut bytes, mut files) = (0u64, 0u64);
        for seq in wal::segments(dir, *source) {
            // A segment removed meanwhile (pruned after a checkpoint) is
            // simply not counted.
            if let Ok(m) = std::fs::metadata(wal::segment_path(dir, *source, seq)) {
                bytes = bytes.saturating_add(m.len());
                files += 1;
            }
        }
        Some(crate::listener::SourceDetails { wal_bytes: Some(bytes), wal_files: Some(files), ..Default::default() })
    }
    fn poll(&mut self, _time: i64, _wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        // A batch takes at most rate × interval lines (at least one).
        let most = match self.rate.get() {
            Some(r) => (r * self.batch_interval_ms.max(1) as f64 / 1000.0).ceil().max(1.0) as usize,
            None => usize::MAX,
        };
        let (lock, cv) = &*self.buffer;
        let (lines, ranges, after) = take_front(&mut lock.lock().unwrap_or_else(|p| p.into_inner()), most);
        // The receiver may be waiting for room.
        cv.notify_all();
        let batch = lines_batch(lines.iter().map(|s| s.as_str()));
        if self.wal.is_none() {
            return Ok((batch, InputDescriptor::Unreplayable));
        }
        if let Some(p) = after {
            self.allocated = Some(p);
        }
        Ok((batch, InputDescriptor::Wal(ranges)))
    }
    fn set_rate_limit(&mut self, records_per_second: Option<f64>) {
        self.rate.set(records_per_second);
        // A receiver waiting for tokens looks at the new rate now.
        self.buffer.1.notify_all();
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match (d, &self.wal) {
            (InputDescriptor::Wal(ranges), Some(w)) => {
                confined(w)?;
                let mut lines = Vec::new();
                for r in ranges {
                    lines.extend(wal::read_range(&w.dir, w.source, r)?);
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
        let (SourceCursor::Wal(from), Some(w)) = (c, &self.wal) else { return Ok(()) };
        confined(w)?;
        let (dir, source) = (&w.dir, &w.source);
        // Received before the crash but not yet in a batch: the next batch takes it.
        // Only earlier runs' segments: what this run's receiver has already
        // logged in its own segments (this run's first one, and those it
        // rolled over to) is in the buffer.
        let before = self.segment.unwrap_or(u64::MAX);
        let (lines, ranges) = wal::read_from_before(dir, *source, *from, before)?;
        // Until the next batch takes them, those lines are still untaken:
        // a checkpoint written before then (the re-runs of pending batches)
        // must resume here, not at this run's new segment.
        self.allocated = Some(*from);
        let mut b = self.buffer.0.lock().unwrap_or_else(|p| p.into_inner());
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
        self.buffer.1.notify_all();
    }
}

/// Refuses to read a log whose directory leads out of its root (a
/// directory swapped for a symlink to someone else's files).
fn confined(w: &super::WalAt) -> Result<(), SourceError> {
    match &w.confine {
        Some(root) => {
            crate::files::check_inside(root, &w.dir).map_err(|e| SourceError::Io { path: w.dir.clone(), source: e })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: std::ops::Range<usize>) -> Vec<String> {
        r.map(|i| format!("line {i}{}", "x".repeat(i % 5))).collect()
    }

    #[test]
    fn a_batch_takes_the_first_lines_and_exactly_the_log_bytes_that_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 0).unwrap();
        let all = lines(0..10);
        let mut r = Received::default();
        for chunk in [&all[0..4], &all[4..7], &all[7..10]] {
            r.ranges.push(w.append(chunk).unwrap());
            r.lines.extend(chunk.iter().cloned());
        }
        let read = |ranges: &[WalRange]| -> Vec<String> {
            ranges.iter().flat_map(|x| wal::read_range(dir.path(), 0, x).unwrap()).collect()
        };
        // Cut inside the second append.
        let (got, ranges, after) = take_front(&mut r, 5);
        assert_eq!(got, all[0..5]);
        assert_eq!(read(&ranges), all[0..5]);
        assert_eq!(ranges.len(), 2);
        // The cursor: reading from it gives exactly what was not taken.
        let after = after.unwrap();
        assert_eq!(wal::read_from(dir.path(), 0, after).unwrap().0, all[5..10]);
        assert_eq!(read(&r.ranges), all[5..10]);
        assert_eq!(r.bytes, all[5..10].iter().map(|l| l.len() as u64).sum::<u64>());
        // Cut exactly at the end of an append.
        let (got, ranges, after) = take_front(&mut r, 2);
        assert_eq!((got.as_slice(), read(&ranges).as_slice()), (&all[5..7], &all[5..7]));
        assert_eq!(wal::read_from(dir.path(), 0, after.unwrap()).unwrap().0, all[7..10]);
        assert_eq!(r.ranges.len(), 1);
        // More than there is: everything.
        let (got, ranges, after) = take_front(&mut r, 100);
        assert_eq!((got.as_slice(), read(&ranges).as_slice()), (&all[7..10], &all[7..10]));
        assert!(wal::read_from(dir.path(), 0, after.unwrap()).unwrap().0.is_empty());
        assert!(r.lines.is_empty() && r.ranges.is_empty());
        assert_eq!(take_front(&mut r, 3), (Vec::new(), Vec::new(), None));
    }

    #[test]
    fn without_a_log_a_batch_takes_lines_only() {
        let mut r = Received { lines: lines(0..3), ..Received::default() };
        let (got, ranges, after) = take_front(&mut r, 2);
        assert_eq!((got, ranges, after), (lines(0..2), Vec::new(), None));
        assert_eq!(r.lines, lines(2..3));
    }

    #[test]
    fn the_read_buffer_is_cut_after_the_allowed_line_ends() {
        assert_eq!(cut_after_lines(b"a\nb\nc\n", 2), (4, 2));
        assert_eq!(cut_after_lines(b"a\nb\nc", 5), (5, 2));
        assert_eq!(cut_after_lines(b"abc", 1), (3, 0));
        assert_eq!(cut_after_lines(b"a\nb\n", usize::MAX), (4, 2));
    }

    #[test]
    fn the_bucket_holds_at_most_one_second_of_its_rate() {
        let mut b = Bucket { tokens: 0.0, last: Instant::now() - Duration::from_secs(10) };
        b.refill(50.0);
        assert_eq!(b.tokens, 50.0);
        b.tokens = 0.5;
        b.last = Instant::now();
        // Half a token missing at 10/s: 50 ms.
        let w = b.wait(10.0);
        assert!(w <= Duration::from_millis(50) && w >= Duration::from_millis(40), "{w:?}");
    }
}
