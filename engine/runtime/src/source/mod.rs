//! Sources: where records come from, one batch per batch time.
//!
//! * `socket` — a receiver: a thread reads lines from a TCP server and hands
//!   them to the next batch; it reconnects with backoff and never fails the job.
//!   Lines are split from bytes (`lines`) and bounded in length.
//! * `directory` — new text files in a directory (Spark's textFileStream):
//!   files should appear atomically (write elsewhere, then rename in); each
//!   file is read once, line by line; the first batch takes the files already
//!   there (unless `new_files_only`); later, with the wall clock, only files
//!   modified within the remember window (60 s) before the batch time count.
//!   Unreadable files, a missing directory and odd entries are skipped with
//!   a warning, never fatal; a line longer than `max_line_bytes` is cut or
//!   skipped, and never held whole.
//! * `batches` — a JSON-lines file, one line per batch (a JSON array of
//!   records), for tests and replays; finite.
//! * `generator` — seeded synthetic text, for benchmarks; deterministic per
//!   batch time.
//! * `queue` — batches given through the Rust API (Spark's queueStream); finite.
//! * `kafka` — Kafka topics read directly by offset ranges recorded per
//!   batch (behind the `kafka` cargo feature).

mod directory;
mod generator;
#[cfg(feature = "kafka")]
pub(crate) mod kafka;
mod lines;
mod queue;
mod socket;
mod text_split;

use std::path::{Path, PathBuf};

use crate::listener::{ListenerBus, SourcePosition};
use directory::DirectorySource;
use generator::GeneratorSource;
use queue::QueueSource;
pub use queue::{json_to_value, read_batches_file, read_batches_file_limited, MAX_BATCHES_FILE_BYTES};
use socket::SocketSource;
pub use text_split::split_batch;
pub use weir_plan::source::{
    FileSpan, InputDescriptor, InvalidUtf8Policy, KafkaOffset, KafkaRange, KafkaValueFormat, LongLinePolicy,
    OffsetOutOfRangePolicy, SourceCursor, SourceSpec, StartingOffsets, WalPosition, WalRange, DEFAULT_MAX_LINE_BYTES,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file a source reads is not a regular file or is too large.
    #[error("{path}: {source}")]
    File { path: PathBuf, source: crate::files::ReadError },
    /// A source spec out of its bounds (`SourceSpec::check`).
    #[error("{0}")]
    Invalid(String),
    #[error("{path}:{line}: {what}")]
    Parse { path: PathBuf, line: usize, what: String },
    #[error("cannot re-read the input of a batch: {0}")]
    Replay(String),
    /// A receiver's write-ahead log could not be read (a segment or a range
    /// of it, named).
    #[error(transparent)]
    Wal(#[from] crate::checkpoint::wal::WalError),
    /// A Kafka source failed (a missing topic, an unreachable broker past its
    /// timeout, offsets out of range, an undecodable record).
    #[error("{0}")]
    Kafka(String),
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
    /// As `poll`, with the records cut into `n` partitions (fewer if there
    /// are fewer records; at least one), in order, cut as Spark's `makeRDD`
    /// cuts a collection (slice `i` = records `[i*len/n, (i+1)*len/n)`). The default cuts `poll`'s batch ([`split_batch`]); a source
    /// that can build the partitions itself, in parallel, does (the
    /// directory source).
    fn poll_partitions(
        &mut self,
        time: i64,
        wall_clock: bool,
        n: u32,
    ) -> Result<(Vec<Vec<u8>>, InputDescriptor), SourceError> {
        let (batch, d) = self.poll(time, wall_clock)?;
        Ok((split_or_refuse(batch, n, time)?, d))
    }
    /// As `replay`, cut into `n` partitions exactly as `poll_partitions`
    /// cut them.
    fn replay_partitions(&self, time: i64, d: &InputDescriptor, n: u32) -> Result<Vec<Vec<u8>>, SourceError> {
        split_or_refuse(self.replay(time, d)?, n, time)
    }
    /// Where to resume after the last batch polled.
    fn cursor(&self) -> SourceCursor;
    /// For status pages: each partition's next position and the end of
    /// what was there when the last batch was cut (Kafka offsets and high
    /// watermarks; the lag is the difference). Empty for sources without
    /// such positions.
    fn positions(&self) -> Vec<SourcePosition> {
        Vec::new()
    }
    /// For status pages: the source's write-ahead log, the files it read
    /// ([`crate::listener::SourceDetails`]); `None` when it has nothing to
    /// tell (the default).
    fn details(&self) -> Option<crate::listener::SourceDetails> {
        None
    }
    /// Resumes at a cursor taken by `cursor` (driver recovery).
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError>;
    /// True when the source is finite and has nothing more to give.
    fn exhausted(&self) -> bool;
    /// True when an empty poll may mean "nothing yet" (records arrive from
    /// outside: a socket, a directory): with the logical clock the driver then
    /// waits a little before the next batch instead of spinning. Sources
    /// whose every batch is decided up front (a queue, a generator) say false.
    fn waits_for_input(&self) -> bool {
        true
    }
    /// True when input for the next batch is already waiting beyond what
    /// the last batch took (files left over by `max_files_per_batch`): the
    /// driver may then read the next batch while this one runs
    /// (`scheduler/prefetch.rs`). False (the default) when what the next
    /// batch gets may still change before its time.
    fn has_backlog(&self) -> bool {
        false
    }
    /// Bounds how many records per second the source takes from now on
    /// (`None`: unbounded): backpressure's estimate and `[rate] max`. The
    /// driver calls it before the first batch and after each batch the
    /// estimate changes. Sources that cannot be slowed ignore it (the
    /// default); `socket` and `kafka` honour it.
    fn set_rate_limit(&mut self, _records_per_second: Option<f64>) {}
}

/// [`split_batch`], a malformed batch refused (never partly dropped).
fn split_or_refuse(batch: Vec<u8>, n: u32, time: i64) -> Result<Vec<Vec<u8>>, SourceError> {
    split_batch(batch, n).map_err(|e| SourceError::Custom(format!("a malformed batch at {time} ms: {e}")))
}

/// Where a receiver keeps its write-ahead log.
#[derive(Debug, Clone)]
pub struct WalAt {
    /// The checkpoint's WAL directory.
    pub dir: PathBuf,
    /// The source's index in the job.
    pub source: u32,
    /// The log is written and read only while `dir`'s real path (symlinks
    /// followed) is inside this directory (`weir serve`: the tenant's root).
    pub confine: Option<PathBuf>,
}

/// Starts the source a spec describes. `base` resolves relative paths;
/// `wal` is where a receiver logs what it receives.
/// `listeners` hear of receiver errors. `batch_interval_ms` turns per-second
/// rate limits into per-batch ones.
pub fn open(
    spec: &SourceSpec,
    base: &Path,
    wal: Option<WalAt>,
    listeners: &ListenerBus,
    batch_interval_ms: i64,
) -> Result<Box<dyn Source>, SourceError> {
    spec.check().map_err(SourceError::Invalid)?;
    Ok(match spec {
        SourceSpec::Socket { host, port, on_invalid_utf8, max_line_bytes, on_long_line } => {
            let policy = socket::LinePolicy {
                on_invalid_utf8: *on_invalid_utf8,
                max_line_bytes: *max_line_bytes,
                on_long_line: *on_long_line,
            };
            Box::new(SocketSource::start(host.clone(), *port, policy, wal, listeners.clone(), batch_interval_ms)?)
        }
        SourceSpec::Directory {
            path,
            new_files_only,
            on_invalid_utf8,
            max_files_per_batch,
            max_line_bytes,
            on_long_line,
            root,
        } => Box::new(DirectorySource::new(
            base.join(path),
            directory::Options {
                root: root.as_ref().map(|r| crate::files::confinement(&base.join(r))),
                new_files_only: *new_files_only,
                lines: text_split::LinePolicy {
                    utf8: *on_invalid_utf8,
                    max_line_bytes: *max_line_bytes as usize,
                    on_long_line: *on_long_line,
                },
                max_files: max_files_per_batch.map_or(usize::MAX, |n| n as usize),
            },
            listeners.clone(),
            wal.as_ref().map_or(0, |w| w.source),
        )),
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
        #[cfg(feature = "kafka")]
        SourceSpec::Kafka {
            brokers,
            topics,
            starting_offsets,
            max_rate_per_partition,
            value_format,
            key,
            client_id,
            on_offset_out_of_range,
            broker_timeout_ms,
            max_decompressed_bytes,
            tls,
            sasl,
        } => Box::new(kafka::KafkaSource::start(kafka::KafkaConfig {
            max_decompressed_bytes: *max_decompressed_bytes,
            brokers: brokers.split(',').map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect(),
            topics: topics.clone(),
            starting_offsets: *starting_offsets,
            max_rate_per_partition: *max_rate_per_partition,
            value_format: *value_format,
            key: *key,
            client_id: client_id.clone(),
            on_offset_out_of_range: *on_offset_out_of_range,
            broker_timeout: std::time::Duration::from_millis(*broker_timeout_ms),
            batch_interval_ms,
            security: crate::kafka_security::KafkaSecurity::load(tls.as_deref(), sasl.as_deref(), base)
                .map_err(SourceError::Kafka)?,
        })?),
        #[cfg(not(feature = "kafka"))]
        SourceSpec::Kafka { .. } => {
            return Err(SourceError::Kafka(
                "this build of weir has no Kafka support (build the weir crate with the `kafka` feature)".into(),
            ))
        }
        SourceSpec::Custom { name, .. } => {
            return Err(SourceError::Replay(format!("custom source {name:?} is opened by its context, not by a spec")))
        }
    })
}
