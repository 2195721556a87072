//! `socket`: a receiver reading lines from a TCP server, logging them to
//! the write-ahead log before they count as received.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::queue::lines_batch;
use super::{InputDescriptor, Source, SourceCursor, SourceError, WalPosition, WalRange};
use crate::checkpoint::wal::{self, WalWriter};
use crate::listener::{ListenerBus, ReceiverError};

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
pub(super) struct SocketSource {
    buffer: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    wal: Option<(PathBuf, u32)>,
    /// Everything before this has been given to a batch.
    allocated: Option<WalPosition>,
    /// The log segment this run writes.
    segment: Option<u64>,
}

impl SocketSource {
    pub(super) fn start(
        host: String,
        port: u16,
        wal: Option<(PathBuf, u32)>,
        bus: ListenerBus,
    ) -> Result<Self, SourceError> {
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
