//! `--event-log DIR`: listener events as JSON lines (`events-NNNNNN.jsonl`),
//! written by a thread of its own, rotated by size and bounded in number of
//! files. Each file starts with the job's description, so the newest files
//! alone still make a page. `weir history DIR` reads them back
//! ([`read_dir`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::event::{Event, Logged};
use crate::Error;

/// Events queued for the writer before new ones are dropped (and counted).
const QUEUE: usize = 8192;
/// Longest line `weir history` reads; longer ones are skipped.
const MAX_LINE: usize = 1 << 20;

/// Size and number bounds of an event log.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_file_bytes: u64,
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { max_file_bytes: 16 << 20, max_files: 8 }
    }
}

/// The listener's end: never blocks.
#[derive(Debug, Clone)]
pub struct EventLogSender {
    tx: SyncSender<Option<Logged>>,
    dropped: Arc<AtomicU64>,
}

impl EventLogSender {
    pub fn send(&self, e: Logged) {
        match self.tx.try_send(Some(e)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread; [`EventLog::finish`] flushes and waits for it.
#[derive(Debug)]
pub struct EventLog {
    sender: Option<EventLogSender>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl EventLog {
    /// Creates `dir` if needed and starts the writer.
    pub fn start(dir: &Path, rotation: Rotation) -> Result<EventLog, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
        let first = next_index(dir)?;
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut w = Writer { dir: dir.to_path_buf(), rotation, index: first, file: None, written: 0, header: None };
        // Fail at start, not later, if the directory is not writable.
        w.open()?;
        let thread = std::thread::Builder::new()
            .name("weir-event-log".into())
            .spawn(move || w.run(rx))
            .map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
        Ok(EventLog { sender: Some(EventLogSender { tx, dropped: dropped.clone() }), thread: Some(thread), dropped })
    }

    pub fn sender(&self) -> Option<EventLogSender> {
        self.sender.clone()
    }

    /// Tells the writer to stop after what is queued, waits for it, and
    /// reports events dropped because it lagged. (Listeners may still hold
    /// senders: the stop is a message, not the channel closing.)
    pub fn finish(mut self) {
        if let Some(s) = self.sender.take() {
            let _ = s.tx.send(None);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let d = self.dropped.load(Ordering::Relaxed);
        if d > 0 {
            tracing::warn!("event log: {d} event(s) dropped (the writer could not keep up)");
        }
    }
}

struct Writer {
    dir: PathBuf,
    rotation: Rotation,
    index: u64,
    file: Option<BufWriter<File>>,
    written: u64,
    /// The job description, repeated at the start of every file.
    header: Option<String>,
}

fn file_name(i: u64) -> String {
    format!("events-{i:06}.jsonl")
}

/// The event-log files in `dir`, oldest first.
pub fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let mut out: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("events-")?.strip_suffix(".jsonl")?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn next_index(dir: &Path) -> Result<u64, Error> {
    Ok(files(dir)?.last().map_or(1, |(n, _)| n + 1))
}

impl Writer {
    fn open(&mut self) -> Result<(), Error> {
        let path = self.dir.join(file_name(self.index));
        let f = File::create(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
        let mut f = BufWriter::new(f);
        self.written = 0;
        if let Some(h) = &self.header {
            f.write_all(h.as_bytes()).map_err(|e| Error::Io { path, source: e })?;
            self.written = h.len() as u64;
        }
        self.file = Some(f);
        self.prune();
        Ok(())
    }

    /// Removes the oldest files beyond the bound.
    fn prune(&self) {
        let Ok(all) = files(&self.dir) else { return };
        let excess = all.len().saturating_sub(self.rotation.max_files);
        for (_, p) in all.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!("event log: cannot remove {}: {e}", p.display());
            }
        }
    }

    fn write(&mut self, e: &Logged) -> Result<(), Error> {
        let mut line = serde_json::to_string(e).map_err(|e| Error::Json(e.to_string()))?;
        if line.len() >= MAX_LINE {
            // `weir history` skips a line this long: a batch keeps its record
            // without its stages' task lists (the figures and errors stay).
            let Event::BatchCompleted(b) = &e.event else {
                tracing::warn!("event log: an event of {} bytes is over {MAX_LINE}: not written", line.len());
                return Ok(());
            };
            let mut b = b.clone();
            for s in b.outputs.iter_mut().flat_map(|o| o.stages.iter_mut()) {
                s.task_list.clear();
            }
            let slim = Logged { at_ms: e.at_ms, event: Event::BatchCompleted(b) };
            line = serde_json::to_string(&slim).map_err(|e| Error::Json(e.to_string()))?;
            if line.len() >= MAX_LINE {
                tracing::warn!("event log: batch record of {} bytes is over {MAX_LINE}: not written", line.len());
                return Ok(());
            }
        }
        line.push('\n');
        if matches!(e.event, Event::JobStarted(_)) {
            self.header = Some(line.clone());
        }
        if self.written > 0 && self.written + line.len() as u64 > self.rotation.max_file_bytes {
            if let Some(mut f) = self.file.take() {
                let _ = f.flush();
            }
            self.index += 1;
            self.open()?;
            if matches!(e.event, Event::JobStarted(_)) {
                // open() already wrote it as the header.
                return Ok(());
            }
        }
        let path = self.dir.join(file_name(self.index));
        if let Some(f) = &mut self.file {
            f.write_all(line.as_bytes()).map_err(|e| Error::Io { path, source: e })?;
            self.written += line.len() as u64;
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Option<Logged>>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut failed = false;
        loop {
            // Flush once the events stop coming for a moment: one write per
            // burst, and a log that is current whenever the job is idle.
            let e = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(f) = &mut self.file {
                        let _ = f.flush();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Err(err) = self.write(&e) {
                // Logged once: the job goes on without its event log.
                if !failed {
                    tracing::warn!("event log: {err}");
                    failed = true;
                }
            }
        }
        if let Some(mut f) = self.file.take() {
            let _ = f.flush();
        }
    }
}

/// Reads and discards bytes up to and including the next `\n` (or the
/// end), holding no more than the reader's buffer.
fn skip_line(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let data = match r.fill_buf() {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if data.is_empty() {
            return Ok(());
        }
        match data.iter().position(|b| *b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = data.len();
                r.consume(n);
            }
        }
    }
}

/// Reads every event of the log in `dir`, oldest first. Lines that are too
/// long or do not parse are skipped and counted (a log cut by a crash ends
/// in half a line).
pub fn read_dir(dir: &Path) -> Result<(Vec<Logged>, usize), Error> {
    let mut out = Vec::new();
    let mut bad = 0;
    let all = files(dir)?;
    if all.is_empty() {
        return Err(Error::NoEventLog(dir.to_path_buf()));
    }
    for (i, (_, path)) in all.iter().enumerate() {
        let f = File::open(path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
        let mut r = BufReader::new(f);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut r)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::Io { path: path.clone(), source: e })?;
            if n == 0 {
                break;
            }
            if buf.len() > MAX_LINE {
                bad += 1;
                // Skip the rest of the long line, a buffer at a time (never
                // held: a line of a damaged log may be any length).
                skip_line(&mut r).map_err(|e| Error::Io { path: path.clone(), source: e })?;
                continue;
            }
            match serde_json::from_slice::<Logged>(&buf) {
                // Every file but the first repeats the job description.
                Ok(e) if i > 0 && matches!(e.event, Event::JobStarted(_)) && !out.is_empty() => {}
                Ok(e) => out.push(e),
                Err(_) => bad += 1,
            }
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::JobInfo;

    #[test]
    fn rotates_bounds_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::start(dir.path(), Rotation { max_file_bytes: 400, max_files: 3 }).unwrap();
        let tx = log.sender().unwrap();
        tx.send(Logged { at_ms: 1, event: Event::JobStarted(JobInfo::default()) });
        for t in 0..50 {
            tx.send(Logged {
                at_ms: 2,
                event: Event::BatchSubmitted { time: t, records_in: 1, records_per_source: vec![1], replayed: false },
            });
        }
        drop(tx);
        log.finish();
        let f = files(dir.path()).unwrap();
        assert_eq!(f.len(), 3, "{f:?}");
        let (events, bad) = read_dir(dir.path()).unwrap();
        assert_eq!(bad, 0);
        // A crash mid-line: the half line is skipped, the rest is read.
        let last = &f[2].1;
        let mut bytes = std::fs::read(last).unwrap();
        bytes.extend_from_slice(b"{\"at_ms\":3,\"event\":{\"type\":\"batch_");
        std::fs::write(last, bytes).unwrap();
        let (again, bad) = read_dir(dir.path()).unwrap();
        assert_eq!((again.len(), bad), (events.len(), 1));
        assert!(matches!(events[0].event, Event::JobStarted(_)));
        assert!(matches!(events.last().unwrap().event, Event::BatchSubmitted { time: 49, .. }));
        let starts = events.iter().filter(|e| matches!(e.event, Event::JobStarted(_))).count();
        assert_eq!(starts, 1);
    }

    /// A batch record whose task lists would make a line over the reader's
    /// limit is written without them (its figures and errors kept), so
    /// `weir history` still shows the batch.
    #[test]
    fn a_batch_record_too_long_for_a_line_loses_its_task_lists_not_itself() {
        use crate::event::{BatchRecord, OutputRecord, StageRecord, TaskRecord};
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::start(dir.path(), Rotation::default()).unwrap();
        let tx = log.sender().unwrap();
        let task = |p: u32| TaskRecord {
            partition: p,
            attempt: 0,
            executor: String::new(),
            duration_ms: 1.0,
            failure: Some("x".repeat(1024)),
        };
        let stage = StageRecord {
            rdd: "r".into(),
            kind: "result".into(),
            tasks: 32,
            duration_ms: 1.0,
            executors: vec![],
            task_list: (0..32).map(task).collect(),
            task_ms: Some([1.0, 1.0, 1.0]),
        };
        let output = OutputRecord {
            index: 0,
            description: String::new(),
            stream: None,
            duration_ms: 1.0,
            stages: vec![stage; 40],
            error: Some("boom".into()),
            records_out: None,
        };
        let record = BatchRecord {
            time: 1000,
            records_in: 5,
            records_per_source: vec![5],
            processing_ms: 1.0,
            scheduling_delay_ms: 0.0,
            total_delay_ms: 1.0,
            errors: vec!["boom".into()],
            outputs: vec![output],
            ..BatchRecord::default()
        };
        assert!(serde_json::to_string(&record).unwrap().len() > MAX_LINE, "the record must be too long");
        tx.send(Logged { at_ms: 1, event: Event::BatchCompleted(record) });
        drop(tx);
        log.finish();
        let (events, bad) = read_dir(dir.path()).unwrap();
        assert_eq!(bad, 0);
        let Some(Event::BatchCompleted(b)) =
            events.iter().map(|e| &e.event).find(|e| matches!(e, Event::BatchCompleted(_)))
        else {
            panic!("the batch was not written: {events:?}")
        };
        assert_eq!((b.time, b.errors.len(), b.outputs[0].stages.len()), (1000, 1, 40));
        assert!(b.outputs[0].stages.iter().all(|s| s.task_list.is_empty() && s.task_ms.is_some()));
    }

    /// The rest of a line over the limit is skipped without being kept,
    /// and the lines after it are read.
    #[test]
    fn skip_line_discards_up_to_the_newline_a_buffer_at_a_time() {
        let mut bytes = vec![b'x'; 3 * MAX_LINE];
        bytes.extend_from_slice(b"\nnext\n");
        let mut r = BufReader::with_capacity(4096, &bytes[..]);
        skip_line(&mut r).unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "next\n");
        let mut r = BufReader::new(&b"no newline"[..]);
        skip_line(&mut r).unwrap();
        assert!(r.fill_buf().unwrap().is_empty());
    }
}
