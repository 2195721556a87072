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

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use weir_codec::{BatchBuilder, Value};

/// A source as described in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    Socket {
        host: String,
        port: u16,
    },
    Directory {
        path: PathBuf,
    },
    Batches {
        path: PathBuf,
    },
    Generator {
        #[serde(default = "default_lines")]
        lines_per_batch: u64,
        #[serde(default = "default_words")]
        words_per_line: u32,
        #[serde(default = "default_vocab")]
        vocabulary: u32,
        #[serde(default)]
        seed: u64,
        /// Stop after this many batches (unbounded if absent).
        #[serde(default)]
        batches: Option<u64>,
    },
    /// Encoded batches (Rust API only).
    #[serde(skip)]
    Queue {
        batches: Vec<Vec<u8>>,
    },
}

fn default_lines() -> u64 {
    10_000
}
fn default_words() -> u32 {
    10
}
fn default_vocab() -> u32 {
    10_000
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {what}")]
    Parse { path: PathBuf, line: usize, what: String },
}

/// A running source.
pub trait Source: Send {
    /// The records of the batch at `time`, as an encoded batch.
    fn poll(&mut self, time: i64, wall_clock: bool) -> Result<Vec<u8>, SourceError>;
    /// True when the source is finite and has nothing more to give.
    fn exhausted(&self) -> bool;
}

/// Starts the source a spec describes. `base` resolves relative paths.
pub fn open(spec: &SourceSpec, base: &Path) -> Result<Box<dyn Source>, SourceError> {
    Ok(match spec {
        SourceSpec::Socket { host, port } => Box::new(SocketSource::start(host.clone(), *port)),
        SourceSpec::Directory { path } => Box::new(DirectorySource { dir: base.join(path), seen: HashSet::new() }),
        SourceSpec::Batches { path } => Box::new(QueueSource { batches: read_batches_file(&base.join(path))?.into() }),
        SourceSpec::Generator { lines_per_batch, words_per_line, vocabulary, seed, batches } => {
            Box::new(GeneratorSource {
                lines: *lines_per_batch,
                words: (*words_per_line).max(1),
                vocab: (*vocabulary).max(1),
                seed: *seed,
                left: *batches,
            })
        }
        SourceSpec::Queue { batches } => Box::new(QueueSource { batches: batches.clone().into() }),
    })
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

struct QueueSource {
    batches: VecDeque<Vec<u8>>,
}

impl Source for QueueSource {
    fn poll(&mut self, _time: i64, _wall: bool) -> Result<Vec<u8>, SourceError> {
        Ok(self.batches.pop_front().unwrap_or_else(|| BatchBuilder::new().finish()))
    }
    fn exhausted(&self) -> bool {
        self.batches.is_empty()
    }
}

/// How far back, before a batch time, a new file's modification time may be.
const DIRECTORY_REMEMBER: Duration = Duration::from_secs(60);

struct DirectorySource {
    dir: PathBuf,
    seen: HashSet<PathBuf>,
}

impl Source for DirectorySource {
    fn poll(&mut self, time: i64, wall: bool) -> Result<Vec<u8>, SourceError> {
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
        let mut b = BatchBuilder::new();
        for (_, path) in new {
            let text = std::fs::read(&path).map_err(|e| SourceError::Io { path: path.clone(), source: e })?;
            for l in String::from_utf8_lossy(&text).lines() {
                b.push_with(|w| w.str(l));
            }
            self.seen.insert(path);
        }
        Ok(b.finish())
    }
    fn exhausted(&self) -> bool {
        false
    }
}

/// A receiver: a background thread reading lines from `host:port`.
struct SocketSource {
    buffer: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl SocketSource {
    fn start(host: String, port: u16) -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (buf, st) = (buffer.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name("weir-receiver".into()).spawn(move || {
            let mut backoff = Duration::from_millis(100);
            while !st.load(Ordering::Relaxed) {
                match TcpStream::connect((host.as_str(), port)) {
                    Ok(conn) => {
                        tracing::info!("receiver connected to {host}:{port}");
                        backoff = Duration::from_millis(100);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut r = BufReader::new(conn);
                        let mut line = String::new();
                        loop {
                            if st.load(Ordering::Relaxed) {
                                return;
                            }
                            match r.read_line(&mut line) {
                                Ok(0) => break,
                                Ok(_) => {
                                    let l = line.trim_end_matches(['\n', '\r']).to_string();
                                    buf.lock().unwrap_or_else(|p| p.into_inner()).push(l);
                                    line.clear();
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(e) => {
                                    tracing::warn!("receiver lost {host}:{port}: {e}");
                                    break;
                                }
                            }
                        }
                        tracing::info!("receiver: {host}:{port} closed the connection; reconnecting");
                    }
                    Err(e) => tracing::debug!("receiver cannot connect to {host}:{port}: {e}; retrying in {backoff:?}"),
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the socket receiver: {e}");
        }
        SocketSource { buffer, stop }
    }
}

impl Source for SocketSource {
    fn poll(&mut self, _time: i64, _wall: bool) -> Result<Vec<u8>, SourceError> {
        let lines = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(lines_batch(lines.iter().map(|s| s.as_str())))
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

impl Source for GeneratorSource {
    fn poll(&mut self, time: i64, _wall: bool) -> Result<Vec<u8>, SourceError> {
        if let Some(l) = &mut self.left {
            if *l == 0 {
                return Ok(BatchBuilder::new().finish());
            }
            *l -= 1;
        }
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
        Ok(b.finish())
    }
    fn exhausted(&self) -> bool {
        self.left == Some(0)
    }
}
