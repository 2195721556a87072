//! Source descriptors: what a job says a source is, and what a batch took
//! from it (recorded in checkpoints so a re-run batch reads the same records).
//! Running sources live in the runtime (`weir::source`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A source as described in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    Socket {
        host: String,
        port: u16,
        /// What a line that is not valid UTF-8 becomes.
        #[serde(default)]
        on_invalid_utf8: InvalidUtf8Policy,
        /// The longest line kept whole, in bytes (without its line ending).
        #[serde(default = "default_max_line_bytes")]
        max_line_bytes: u32,
        /// What a line longer than `max_line_bytes` becomes.
        #[serde(default)]
        on_long_line: LongLinePolicy,
    },
    Directory {
        path: PathBuf,
        /// Only files that appear after the job starts (Spark's
        /// `newFilesOnly`). Off by default: the first batch of a run takes
        /// every file already in the directory, whatever its age.
        #[serde(default)]
        new_files_only: bool,
        /// What to do with a line that is not valid UTF-8.
        #[serde(default)]
        on_invalid_utf8: InvalidUtf8Policy,
        /// At most this many files per batch, oldest first (Spark's
        /// `maxFilesPerTrigger`); the rest wait for later batches. Unbounded
        /// if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_files_per_batch: Option<u32>,
        /// The longest line kept whole, in bytes (without its line ending):
        /// a reader never holds more of one line, however long it is.
        #[serde(default = "default_max_line_bytes")]
        max_line_bytes: u32,
        /// What a line longer than `max_line_bytes` becomes.
        #[serde(default)]
        on_long_line: LongLinePolicy,
        /// Only files whose real path (symlinks followed, checked on the
        /// opened file) is inside this directory are read; one that leads
        /// out of it is skipped with a warning (and fails a replay).
        /// `weir serve` sets it to the tenant's root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<PathBuf>,
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
    /// Kafka topics read directly (Spark's Direct approach): every batch
    /// takes offset ranges per partition, decided and recorded before the
    /// batch runs, so a re-run batch reads the same records.
    Kafka {
        /// `host:port[,host:port]`: the bootstrap brokers.
        brokers: String,
        topics: Vec<String>,
        /// Where a partition never read before starts.
        #[serde(default)]
        starting_offsets: StartingOffsets,
        /// At most this many records per partition per second of batch
        /// interval (unbounded if absent, up to [`KAFKA_MAX_RECORDS_PER_PARTITION`]).
        #[serde(default)]
        max_rate_per_partition: Option<u64>,
        /// How a record's value becomes a record of the stream.
        #[serde(default)]
        value_format: KafkaValueFormat,
        /// Records become `(key, value)` pairs (a missing key is null).
        #[serde(default)]
        key: bool,
        #[serde(default)]
        client_id: Option<String>,
        /// What to do when the next offset of a partition is no longer (or
        /// not yet) in the log.
        #[serde(default)]
        on_offset_out_of_range: OffsetOutOfRangePolicy,
        /// How long a batch waits for an unreachable broker (retrying with
        /// backoff) before the job fails.
        #[serde(default = "default_broker_timeout_ms")]
        broker_timeout_ms: u64,
        /// The most bytes the compressed record batches of one fetch
        /// response may inflate to (a decompression bomb is refused).
        #[serde(default = "default_max_decompressed_bytes")]
        max_decompressed_bytes: u64,
        /// TLS to the brokers (`[sources.NAME.tls]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<Box<KafkaTls>>,
        /// SASL authentication (`[sources.NAME.sasl]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sasl: Option<Box<KafkaSasl>>,
    },
    /// Encoded batches (Rust API only).
    #[serde(skip)]
    Queue {
        batches: Vec<Vec<u8>>,
    },
    /// A source an embedder made (Rust API only): index into the context's
    /// custom sources; `name` identifies it in checkpoints and messages.
    #[serde(skip)]
    Custom {
        id: usize,
        name: String,
    },
}

/// What a text source (socket, directory) does with a line that is not valid UTF-8.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidUtf8Policy {
    /// Invalid bytes become U+FFFD (the replacement character).
    #[default]
    Replace,
    /// The line is dropped (with a warning; counted).
    Skip,
    /// Socket: a receiver error, the connection is dropped (the receiver
    /// reconnects). Directory: the batch fails with the file and line.
    Fail,
}

/// Where a Kafka partition without a recorded position starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartingOffsets {
    Earliest,
    /// Only records produced after the job started (Spark's default).
    #[default]
    Latest,
}

/// How a Kafka record's value (and key) is decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaValueFormat {
    /// UTF-8 text (invalid bytes become U+FFFD).
    #[default]
    String,
    /// The bytes as they are.
    Bytes,
    /// One JSON value per record, as in `batches` files (arrays are tuples).
    Json,
}

/// What a Kafka source does when a partition's next offset is out of range
/// (deleted by retention, or beyond the log's end after a topic was recreated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetOutOfRangePolicy {
    /// The job fails with the topic, partition and offsets.
    #[default]
    Error,
    /// Resume at the earliest offset still in the log (a warning counts the
    /// records skipped).
    Earliest,
    /// Resume at the end of the log (a warning counts the records skipped).
    Latest,
}

/// TLS to Kafka brokers (`[sources.NAME.tls]`, or `tls = { ... }` on a Kafka
/// output). Relative paths are resolved against the job file's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM file of the certificate authorities to trust (the system's roots
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate (chain), for brokers that ask for
    /// one; needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key; needs `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
}

/// SASL authentication to Kafka brokers (`[sources.NAME.sasl]`).
///
/// The password is a secret: it is read from the job file, or (with
/// `password_env` / `password_file`) from the environment or a file when
/// the client is built, and kept in memory only. It is never serialized (a
/// serialized spec carries `password_env` or `password_file`, which name
/// where it is, but not `password`) and its `Debug` shows `<redacted>`, so
/// neither a spec printed into a log nor a hash over a spec's `Debug` holds
/// it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// The password itself (the job file then holds a secret)...
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// ...or the environment variable holding it...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// ...or a file holding it (trailing line breaks dropped; relative to
    /// the job file's folder). Exactly one of the three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// A SASL mechanism, named as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// The most records a Kafka batch takes from one partition.
pub const KAFKA_MAX_RECORDS_PER_PARTITION: u64 = 1_000_000;

fn default_broker_timeout_ms() -> u64 {
    60_000
}

/// Default of a Kafka source's `max_decompressed_bytes`: 256 MiB.
pub const KAFKA_DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;
/// The range a Kafka source's `max_decompressed_bytes` may take: at least
/// one fetch's worth of raw bytes (4 MiB are asked for), at most 64 GiB.
pub const KAFKA_MAX_DECOMPRESSED_BYTES_RANGE: std::ops::RangeInclusive<u64> = (4 << 20)..=(64 << 30);

fn default_max_decompressed_bytes() -> u64 {
    KAFKA_DEFAULT_MAX_DECOMPRESSED_BYTES
}

/// A text source's (socket, directory) handling of a line longer than
/// `max_line_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongLinePolicy {
    /// The line is cut to the limit (at a UTF-8 character boundary).
    #[default]
    Truncate,
    /// The line is dropped.
    Skip,
}

/// 1 MiB: the default `max_line_bytes` of a socket or directory source.
pub const DEFAULT_MAX_LINE_BYTES: u32 = 1 << 20;

/// 1 GiB: the largest `max_line_bytes` a socket or directory source accepts.
pub const MAX_MAX_LINE_BYTES: u32 = 1 << 30;

fn default_max_line_bytes() -> u32 {
    DEFAULT_MAX_LINE_BYTES
}

impl SourceSpec {
    /// Checks the fields a spec's type bounds (`docs/jobs.md`, "Limits"):
    /// a generator's sizes, a socket's port, a socket's or directory's line
    /// limit.
    pub fn check(&self) -> Result<(), String> {
        use crate::limits::{MAX_GENERATOR_LINES, MAX_GENERATOR_WORDS, MAX_GENERATOR_WORDS_PER_LINE};
        match self {
            SourceSpec::Socket { port: 0, .. } => Err("port 0 is not a port to connect to (1 to 65535)".into()),
            SourceSpec::Socket { max_line_bytes, .. } | SourceSpec::Directory { max_line_bytes, .. }
                if !(1..=MAX_MAX_LINE_BYTES).contains(max_line_bytes) =>
            {
                Err(format!("max_line_bytes must be between 1 and {MAX_MAX_LINE_BYTES} (got {max_line_bytes})"))
            }
            SourceSpec::Generator { lines_per_batch, words_per_line, vocabulary, .. } => {
                // Zero used to be taken as 1, silently.
                if *words_per_line == 0 || *vocabulary == 0 {
                    return Err("words_per_line and vocabulary must be at least 1".into());
                }
                if *lines_per_batch > MAX_GENERATOR_LINES {
                    return Err(format!(
                        "lines_per_batch ({lines_per_batch}) is over the maximum of {MAX_GENERATOR_LINES}"
                    ));
                }
                if *words_per_line > MAX_GENERATOR_WORDS_PER_LINE {
                    return Err(format!(
                        "words_per_line ({words_per_line}) is over the maximum of {MAX_GENERATOR_WORDS_PER_LINE}"
                    ));
                }
                let words = lines_per_batch.saturating_mul((*words_per_line).max(1) as u64);
                if words > MAX_GENERATOR_WORDS {
                    return Err(format!(
                        "lines_per_batch × words_per_line ({words}) is over the maximum of {MAX_GENERATOR_WORDS} words per batch"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
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

/// What a batch took from a source: enough to read exactly the same records
/// again when the batch is re-run (recorded in the metadata checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputDescriptor {
    /// Line `n` (0-based) of a `batches` file.
    Line(u64),
    /// Item `n` of a queue.
    Queue(u64),
    /// The files a `directory` batch read, in order.
    Files(Vec<PathBuf>),
    /// A generator's batch: a pure function of the batch time (or empty).
    Generated { empty: bool },
    /// Ranges of a receiver's write-ahead log.
    Wal(Vec<WalRange>),
    /// Received without a write-ahead log (no checkpoint directory): cannot
    /// be read again.
    Unreplayable,
    /// An embedder's source: its own description of what a batch took.
    Custom(Vec<u8>),
    /// The files a `directory` batch read, in order, each with the number
    /// of bytes read from it (a file that grows later reads the same again).
    FileSpans(Vec<FileSpan>),
    /// The offset ranges a Kafka batch took, per partition.
    KafkaRanges(Vec<KafkaRange>),
}

/// Offsets `from..until` (until exclusive) of one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

/// The next offset of one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOffset {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

/// The first `len` bytes of a file, as a `directory` batch read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpan {
    pub path: PathBuf,
    pub len: u64,
}

/// Where a source resumes after the newest batch recorded in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceCursor {
    Next(u64),
    Files(BTreeSet<PathBuf>),
    Generator {
        left: Option<u64>,
    },
    Wal(WalPosition),
    None,
    /// An embedder's source: its own position.
    Custom(Vec<u8>),
    /// A Kafka source: the next offset of every partition it has seen.
    Kafka(Vec<KafkaOffset>),
}

/// A range of one segment: records starting at byte `start` up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRange {
    pub seq: u64,
    pub start: u64,
    pub end: u64,
}

/// A position in the log: everything before it has been allocated to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WalPosition {
    pub seq: u64,
    pub offset: u64,
}
