//! Weir's observability front end: the status page (Spark's Streaming tab
//! as the model), `/metrics` in the Prometheus text format, a JSON API,
//! `--progress json` and the event log that `weir history` serves.
//!
//! It is a crate of its own so that embedders of the `weir` library compile
//! no HTTP server: everything here is fed by a [`weir::listener`] listener
//! ([`UiListener`]) that `weir run` adds to the run's options.
//!
//! ```no_run
//! # fn main() -> Result<(), weir_ui::Error> {
//! let ui = weir_ui::Ui::start(weir_ui::UiOptions::default(), weir_ui::event::JobInfo::default())?;
//! // opts.listeners.push(ui.listener()); ... run the job ...
//! ui.finish(0, 0);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod dag;
pub mod event;
pub mod eventlog;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod pages;
pub mod state;

pub use listener::{JsonProgress, ReceiverLog, Shared, UiListener};

use event::{now_ms, Event, JobInfo};
use eventlog::{EventLog, Rotation};
use state::Limits;

/// What can go wrong starting the page, the event log or `weir history`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bad status page address {0}")]
    Address(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the status page address {0} is not a loopback address: it needs --ui-token-file")]
    NeedsToken(String),
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("event log: {0}")]
    Json(String),
    #[error("no event log (events-*.jsonl) in {}", .0.display())]
    NoEventLog(PathBuf),
}

/// Where and how to serve, and where to log events. Construct with
/// `UiOptions::default()` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UiOptions {
    /// `HOST:PORT` to serve on (a taken port: the next free one; port 0:
    /// any), or `None` for no server.
    pub addr: Option<String>,
    /// Requests must carry this token (required off loopback).
    pub token: Option<String>,
    pub limits: Limits,
    pub event_log: Option<PathBuf>,
    pub rotation: Rotation,
}

/// The default address (Spark's UI port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:4040";

impl Default for UiOptions {
    fn default() -> Self {
        UiOptions {
            addr: Some(DEFAULT_ADDR.into()),
            token: None,
            limits: Limits::default(),
            event_log: None,
            rotation: Rotation::default(),
        }
    }
}

/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

/// Reads a token file (its first line, trimmed): a regular file of at most
/// 64 KiB (`/dev/zero` or a FIFO given by mistake is refused, not read for
/// ever).
pub fn read_token(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let bytes = weir::files::read_limited(path, MAX_TOKEN_FILE_BYTES).map_err(|e| match e {
        weir::files::ReadError::Io(e) => io(e),
        other => io(std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string())),
    })?;
    let s = String::from_utf8(bytes)
        .map_err(|_| io(std::io::Error::new(std::io::ErrorKind::InvalidData, "the token file is not UTF-8 text")))?;
    let t = s.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(Error::EmptyToken(path.to_path_buf()));
    }
    Ok(t)
}

/// Checks the address/token pair and binds the server.
fn start_server(addr: &str, token: Option<String>, shared: Arc<Shared>) -> Result<SocketAddr, Error> {
    if token.is_none() && !http::is_loopback(addr)? {
        return Err(Error::NeedsToken(addr.to_string()));
    }
    let listener = http::bind(addr)?;
    http::serve(listener, token, shared)
}

/// The status page of a running job.
#[derive(Debug)]
pub struct Ui {
    listener: Arc<UiListener>,
    addr: Option<SocketAddr>,
    log: Option<EventLog>,
}

impl Ui {
    /// Starts the server (if `opts.addr`) and the event log (if
    /// `opts.event_log`), and records the job's description.
    pub fn start(opts: UiOptions, job: JobInfo) -> Result<Ui, Error> {
        let shared = Shared::new(opts.limits);
        // The server first: if it cannot start, no event-log file is made.
        let addr = match &opts.addr {
            Some(a) => Some(start_server(a, opts.token.clone(), shared.clone())?),
            None => None,
        };
        let log = match &opts.event_log {
            Some(dir) => Some(EventLog::start(dir, opts.rotation)?),
            None => None,
        };
        let listener = Arc::new(UiListener::new(shared, log.as_ref().and_then(|l| l.sender())));
        listener.record(Event::JobStarted(job));
        Ok(Ui { listener, addr, log })
    }

    /// The listener to add to the run's options.
    pub fn listener(&self) -> Arc<UiListener> {
        self.listener.clone()
    }

    /// The address the page is served on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Records the end of the job and flushes the event log. The page stays
    /// up until the process exits.
    pub fn finish(self, batches_run: u64, batches_failed: u64) {
        self.listener.record(Event::JobEnded { batches_run, batches_failed });
        if let Some(log) = self.log {
            log.finish();
        }
    }
}

/// `weir history DIR`: the pages of a finished job from its event log,
/// served on `addr`. Returns the bound address and how many lines were skipped.
pub fn serve_history(
    dir: &Path,
    addr: &str,
    token: Option<String>,
    limits: Limits,
) -> Result<(SocketAddr, usize, u64), Error> {
    let (events, bad) = eventlog::read_dir(dir)?;
    let shared = Shared::new(limits);
    shared.state().history = true;
    let n = events.len() as u64;
    for e in &events {
        shared.apply(e);
    }
    // A log cut short (the job was killed) has no end: its last event is it.
    {
        let mut st = shared.state();
        if st.ended_at_ms.is_none() {
            st.ended_at_ms = st.last_event_ms.or(Some(now_ms()));
        }
    }
    let a = start_server(addr, token, shared)?;
    Ok((a, bad, n))
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn a_token_file_is_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  s3cret \nsecond line\n").unwrap();
        assert_eq!(read_token(&f).unwrap(), "s3cret");
        let e = read_token(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::write(&f, vec![b'a'; (64 << 10) + 1]).unwrap();
        let e = read_token(&f).unwrap_err().to_string();
        assert!(e.contains("over the limit"), "{e}");
    }
}
