//! The UI's own copy of the listener events: owned, serializable records
//! (durations in milliseconds) that the live listener, the event log and
//! `weir history` share. The status page is built by applying these records
//! in order ([`crate::state::UiState::apply`]), so a page served from an
//! event log is the page the live job served.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weir::listener as l;
use weir_plan::graph::{Graph, NodeOp};
use weir_plan::sink::OutputSpec;
use weir_plan::source::SourceSpec;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One event with the wall-clock time it was observed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logged {
    pub at_ms: u64,
    pub event: Event,
}

/// The actions of [`Event::ReceiverBadLines`] (an event log's others are ignored).
pub const BAD_LINE_ACTIONS: [&str; 4] = ["replaced", "skipped", "truncated", "failed"];

/// Everything the UI records (one JSON object per line in an event log).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    JobStarted(JobInfo),
    BatchSubmitted {
        time: i64,
        records_in: u64,
        /// Records each source gave (by source index); absent in event logs
        /// of earlier versions.
        #[serde(default)]
        records_per_source: Vec<u64>,
        replayed: bool,
    },
    BatchStarted {
        time: i64,
        scheduling_delay_ms: f64,
    },
    /// Where a partitioned source (Kafka) stands after cutting a batch.
    SourceProgress {
        source: u32,
        time: i64,
        positions: Vec<PartitionPosition>,
        /// The source's write-ahead log or files read (absent: nothing to
        /// tell, or an event log of an earlier version).
        #[serde(default)]
        details: Option<SourceDetailsRecord>,
    },
    /// The outputs' lineage of a batch (at most one a second).
    BatchLineage {
        time: i64,
        plans: Vec<(String, String)>,
    },
    BatchCompleted(BatchRecord),
    ReceiverError {
        source: u32,
        message: String,
    },
    /// Lines a source's policies changed or dropped (`on_invalid_utf8`,
    /// `on_long_line`): `count` is the total of `action` (`replaced`,
    /// `skipped`, `truncated`, `failed`) since it started, `problem` the
    /// newest. Recorded at the first such line and then at most once a
    /// batch, so a stream of bad lines does not flood the event log.
    ReceiverBadLines {
        source: u32,
        action: String,
        count: u64,
        problem: String,
    },
    /// A receiver connected; `reconnects` counts the connections before
    /// this one.
    ReceiverConnected {
        source: u32,
        address: String,
        reconnects: u64,
    },
    /// A receiver's connection ended (it reconnects).
    ReceiverDisconnected {
        source: u32,
        address: String,
        reason: String,
    },
    Recovery {
        what: String,
        detail: String,
    },
    CheckpointWritten(CheckpointRecord),
    CheckpointFailed(CheckpointRecord),
    ExecutorAdded {
        executor: String,
        reason: String,
    },
    ExecutorLost {
        executor: String,
        reason: String,
    },
    TaskRetry {
        batch_time: i64,
        rdd: String,
        partition: u32,
        attempt: u32,
        failure: String,
    },
    BlockRecomputed {
        block: String,
        digest_matches: bool,
        /// The executor whose loss made it necessary (absent: another
        /// reason, or an event log of an earlier version).
        #[serde(default)]
        lost_executor: Option<String>,
    },
    /// Every executor's status, sent with each batch's completion.
    ExecutorsStatus {
        executors: Vec<ExecutorStatusRecord>,
    },
    JobEnded {
        batches_run: u64,
        batches_failed: u64,
    },
}

/// A source's own figures (see `weir::listener::SourceDetails`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDetailsRecord {
    /// A receiver's write-ahead log on disk: bytes and segment files.
    pub wal_bytes: Option<u64>,
    pub wal_files: Option<u64>,
    /// A directory source: files read since the run started, and the
    /// newest few paths (oldest first).
    pub files_seen: Option<u64>,
    #[serde(default)]
    pub recent_files: Vec<String>,
}

impl From<&l::SourceDetails> for SourceDetailsRecord {
    fn from(d: &l::SourceDetails) -> Self {
        SourceDetailsRecord {
            wal_bytes: d.wal_bytes,
            wal_files: d.wal_files,
            files_seen: d.files_seen,
            recent_files: d.recent_files.clone(),
        }
    }
}

/// One executor's status (see `weir::listener::ExecutorStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorStatusRecord {
    /// Block server address; `""`: the driver's own threads (`local[N]`).
    pub executor: String,
    pub alive: bool,
    /// Heartbeats received (`null`: in-process threads do not heartbeat).
    pub heartbeats: Option<u64>,
    pub last_heartbeat_age_ms: Option<u64>,
    pub tasks_run: u64,
    pub tasks_failed: u64,
    pub tasks_running: u64,
    pub udf_memory_bytes: Option<u64>,
    pub udf_memory_peak_bytes: Option<u64>,
}

impl From<&l::ExecutorStatus> for ExecutorStatusRecord {
    fn from(s: &l::ExecutorStatus) -> Self {
        ExecutorStatusRecord {
            executor: s.executor.clone(),
            alive: s.alive,
            heartbeats: s.heartbeats,
            last_heartbeat_age_ms: s.last_heartbeat_age_ms,
            tasks_run: s.tasks_run,
            tasks_failed: s.tasks_failed,
            tasks_running: s.tasks_running,
            udf_memory_bytes: s.udf_memory_bytes,
            udf_memory_peak_bytes: s.udf_memory_peak_bytes,
        }
    }
}

/// One partition of a source: `end - next` records wait (Kafka's lag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    pub partition: String,
    pub next: i64,
    pub end: i64,
}

/// What the job is: set once at start (the first line of each event-log file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobInfo {
    pub name: String,
    pub weir_version: String,
    pub master: String,
    pub clock: String,
    pub batch_interval_ms: i64,
    pub parallelism: u32,
    pub sources: Vec<SourceInfo>,
    pub streams: Vec<StreamInfo>,
    pub outputs: Vec<OutputSpecInfo>,
    /// Module file name -> SHA-256.
    pub modules: BTreeMap<String, String>,
    /// The UDF limits every call runs under (name -> value).
    pub limits: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    pub id: u32,
    pub kind: String,
    pub description: String,
    /// Receivers (sockets) connect and can fail; replayable sources read files.
    pub receiver: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamInfo {
    pub id: u32,
    pub label: String,
    /// `source`, `narrow`, `union`, `shuffle`, `window`, `state`, ...
    pub kind: String,
    /// Window length and slide, state timeouts, shuffle partitions.
    pub detail: String,
    pub parents: Vec<u32>,
    pub slide_ms: i64,
    pub stateful: bool,
    pub checkpoint_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputSpecInfo {
    pub index: usize,
    pub stream: u32,
    pub description: String,
    /// The output operation's kind as the job file names it (`print`,
    /// `save_as_text_files`, `kafka`, ...); empty in event logs of earlier
    /// versions.
    #[serde(default)]
    pub kind: String,
}

impl OutputSpecInfo {
    /// The output's name in metric labels: its kind and index
    /// (`save_as_text_files#0`), readable and as bounded as the job's
    /// outputs. An event log without kinds takes the description's leading
    /// word.
    pub fn label(&self) -> String {
        let kind = if self.kind.is_empty() {
            let k: String =
                self.description.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            if k.is_empty() {
                "output".to_string()
            } else {
                k
            }
        } else {
            self.kind.clone()
        };
        format!("{kind}#{}", self.index)
    }
}

impl JobInfo {
    /// The job's plain description from its graph; the caller fills in the
    /// name, master, clock, modules and limits.
    pub fn from_graph(g: &Graph) -> JobInfo {
        let sources = g
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (kind, description, receiver) = match s {
                    SourceSpec::Socket { host, port, .. } => ("socket", format!("{host}:{port}"), true),
                    SourceSpec::Directory { path, .. } => ("directory", path.display().to_string(), false),
                    SourceSpec::Batches { path } => ("batches", path.display().to_string(), false),
                    SourceSpec::Kafka { brokers, topics, .. } => {
                        ("kafka", format!("{} @ {brokers}", topics.join(",")), false)
                    }
                    SourceSpec::Generator { lines_per_batch, words_per_line, vocabulary, batches, .. } => (
                        "generator",
                        format!(
                            "{lines_per_batch} lines/batch, {words_per_line} words/line, vocabulary {vocabulary}{}",
                            batches.map(|b| format!(", {b} batches")).unwrap_or_default()
                        ),
                        false,
                    ),
                    SourceSpec::Queue { batches } => ("queue", format!("{} batches", batches.len()), false),
                    SourceSpec::Custom { name, .. } => ("custom", name.clone(), false),
                };
                SourceInfo { id: i as u32, kind: kind.into(), description, receiver }
            })
            .collect();
        let streams = g
            .nodes
            .iter()
            .map(|n| {
                let (kind, detail) = match &n.op {
                    NodeOp::Source { source } => ("source", format!("source {source}")),
                    NodeOp::Dataset { dataset, .. } => (
                        "dataset",
                        format!(
                            "dataset {} (sha256 {}, {} bytes)",
                            dataset.name(),
                            dataset.short_hash(),
                            dataset.bytes()
                        ),
                    ),
                    NodeOp::Narrow(_) => ("narrow", String::new()),
                    NodeOp::Sample { .. } => ("narrow", "sample".into()),
                    NodeOp::Coalesce { partitions } => {
                        ("narrow", format!("coalesce to at most {partitions} partitions"))
                    }
                    NodeOp::Cartesian => ("narrow", "cartesian".into()),
                    NodeOp::Union => ("union", String::new()),
                    NodeOp::Shuffle { partitions, .. } => ("shuffle", format!("{partitions} partitions")),
                    NodeOp::Window { length_ms, slide_ms } => {
                        ("window", format!("length {length_ms} ms, slide {slide_ms} ms"))
                    }
                    NodeOp::State { .. } => ("state", "update_state_by_key".into()),
                    NodeOp::MapWithState { timeout_ms, .. } => (
                        "state",
                        format!(
                            "map_with_state{}",
                            timeout_ms.map(|t| format!(", timeout {t} ms")).unwrap_or_default()
                        ),
                    ),
                    NodeOp::InvWindow { length_ms, slide_ms, .. } => {
                        ("window", format!("inverse reduce, length {length_ms} ms, slide {slide_ms} ms"))
                    }
                };
                StreamInfo {
                    id: n.id,
                    label: n.label.clone(),
                    kind: kind.into(),
                    detail,
                    parents: n.parents.clone(),
                    slide_ms: n.slide_ms,
                    stateful: n.op.is_stateful(),
                    checkpoint_ms: n.checkpoint_ms,
                }
            })
            .collect();
        let outputs = g
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| OutputSpecInfo {
                index: i,
                stream: o.node,
                kind: match &o.spec {
                    OutputSpec::Print { .. } => "print",
                    OutputSpec::SaveAsTextFiles { .. } => "save_as_text_files",
                    OutputSpec::Collect { .. } => "collect",
                    OutputSpec::ForeachRdd { .. } => "foreach_rdd",
                    OutputSpec::Custom { .. } => "custom",
                    OutputSpec::Kafka { .. } => "kafka",
                }
                .into(),
                description: match &o.spec {
                    OutputSpec::Print { num } => format!("print({num})"),
                    OutputSpec::SaveAsTextFiles { prefix, suffix } => format!(
                        "save_as_text_files({prefix}{})",
                        suffix.as_ref().map(|s| format!(", {s}")).unwrap_or_default()
                    ),
                    OutputSpec::Collect { .. } => "collect".into(),
                    OutputSpec::ForeachRdd { .. } => "foreach_rdd".into(),
                    OutputSpec::Custom { .. } => "custom sink".into(),
                    OutputSpec::Kafka { brokers, topic, .. } => format!("kafka({topic} @ {brokers})"),
                },
            })
            .collect();
        JobInfo {
            weir_version: env!("CARGO_PKG_VERSION").into(),
            batch_interval_ms: g.batch_interval_ms,
            parallelism: g.parallelism,
            sources,
            streams,
            outputs,
            ..JobInfo::default()
        }
    }

    /// Records the UDF limits (from the module registry).
    pub fn set_limits(&mut self, limits: &weir::udf::UdfLimits) {
        let mut m = BTreeMap::new();
        m.insert("fuel_per_call".into(), limits.fuel_per_call);
        m.insert("deadline_ms".into(), limits.deadline_ms);
        m.insert("memory_bytes".into(), limits.memory_bytes as u64);
        m.insert("module_bytes".into(), limits.module_bytes as u64);
        m.insert("output_bytes".into(), limits.output_bytes as u64);
        m.insert("log_lines_per_call".into(), u64::from(limits.log_lines_per_call));
        self.limits = m;
    }
}

/// A completed batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchRecord {
    pub time: i64,
    pub records_in: u64,
    /// Records each source gave (by source index); absent in event logs of
    /// earlier versions.
    #[serde(default)]
    pub records_per_source: Vec<u64>,
    pub processing_ms: f64,
    pub scheduling_delay_ms: f64,
    pub total_delay_ms: f64,
    pub errors: Vec<String>,
    pub outputs: Vec<OutputRecord>,
    pub executors_lost: u64,
    pub map_tasks_recomputed: u64,
    pub blocks_recomputed: u64,
    pub tasks_resubmitted: u64,
    /// Per source: the rate limit (records per second) in force when the
    /// batch took its records; `null`: unbounded.
    #[serde(default)]
    pub rate_limits: Vec<Option<f64>>,
    /// Per source: backpressure's newest estimate (records per second)
    /// then, before `[rate] max`; `null`: no backpressure or no estimate yet.
    #[serde(default)]
    pub backpressure_rates: Vec<Option<f64>>,
    /// Per module: the batch's UDF calls, fuel burned and failed calls.
    #[serde(default)]
    pub udf_usage: Vec<l::UdfUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub index: usize,
    pub description: String,
    /// The stream (graph node id) the output writes; absent in event logs
    /// of earlier versions.
    #[serde(default)]
    pub stream: Option<u32>,
    pub duration_ms: f64,
    pub stages: Vec<StageRecord>,
    pub error: Option<String>,
    /// Records the output wrote in this batch (`null`: none to write at
    /// this time, or the output failed).
    #[serde(default)]
    pub records_out: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub rdd: String,
    pub kind: String,
    pub tasks: u32,
    pub duration_ms: f64,
    /// The executors that ran its tasks (`""`: the driver's threads under
    /// `local[N]`); absent in event logs of earlier versions.
    #[serde(default)]
    pub executors: Vec<String>,
    /// Some of its task attempts (every failed one and the slowest, at most
    /// `weir::listener::TASKS_SHOWN`), by partition and attempt; absent in
    /// event logs of earlier versions.
    #[serde(default)]
    pub task_list: Vec<TaskRecord>,
    /// The shortest, median and longest run time of all its task attempts,
    /// in milliseconds.
    #[serde(default)]
    pub task_ms: Option<[f64; 3]>,
}

/// One task attempt of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub partition: u32,
    pub attempt: u32,
    /// `""`: the driver's threads under `local[N]`.
    pub executor: String,
    pub duration_ms: f64,
    /// Why it failed (cut to [`MAX_TASK_FAILURE_BYTES`]), if it did.
    pub failure: Option<String>,
}

/// The longest task failure a [`TaskRecord`] keeps (a trap's message may
/// carry a long WebAssembly backtrace; the batch's error has it whole).
pub const MAX_TASK_FAILURE_BYTES: usize = 1024;

impl From<&l::TaskInfo> for TaskRecord {
    fn from(t: &l::TaskInfo) -> Self {
        TaskRecord {
            partition: t.partition,
            attempt: t.attempt,
            executor: t.executor.clone(),
            duration_ms: ms(t.duration),
            failure: t.failure.as_deref().map(|f| cut(f, MAX_TASK_FAILURE_BYTES)),
        }
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), marked when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n...", &s[..end])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub kind: String,
    pub time: Option<i64>,
    pub bytes: u64,
    pub duration_ms: f64,
    pub error: Option<String>,
}

impl From<&l::BatchReport> for BatchRecord {
    fn from(b: &l::BatchReport) -> Self {
        BatchRecord {
            time: b.time,
            records_in: b.records_in,
            records_per_source: b.records_per_source.clone(),
            processing_ms: ms(b.processing),
            scheduling_delay_ms: ms(b.scheduling_delay),
            total_delay_ms: ms(b.total_delay()),
            errors: b.errors.clone(),
            outputs: b
                .outputs
                .iter()
                .map(|o| OutputRecord {
                    index: o.index,
                    description: o.description.clone(),
                    stream: Some(o.stream),
                    duration_ms: ms(o.duration),
                    stages: o
                        .stages
                        .iter()
                        .map(|s| StageRecord {
                            rdd: s.rdd.clone(),
                            kind: s.kind.to_string(),
                            tasks: s.tasks,
                            duration_ms: ms(s.duration),
                            executors: s.executors.clone(),
                            task_list: s.task_list.iter().map(TaskRecord::from).collect(),
                            task_ms: s.task_times.map(|q| q.map(ms)),
                        })
                        .collect(),
                    error: o.error.clone(),
                    records_out: o.records_out,
                })
                .collect(),
            executors_lost: b.executors_lost,
            map_tasks_recomputed: b.map_tasks_recomputed,
            blocks_recomputed: b.blocks_recomputed,
            tasks_resubmitted: b.tasks_resubmitted,
            rate_limits: b.rate_limits.clone(),
            backpressure_rates: b.backpressure_rates.clone(),
            udf_usage: b.udf_usage.clone(),
        }
    }
}

impl From<&l::CheckpointEvent> for CheckpointRecord {
    fn from(c: &l::CheckpointEvent) -> Self {
        CheckpointRecord {
            kind: c.kind.to_string(),
            time: c.time,
            bytes: c.bytes,
            duration_ms: ms(c.duration),
            error: c.error.clone(),
        }
    }
}

impl From<&l::RecoveryEvent> for Event {
    fn from(e: &l::RecoveryEvent) -> Self {
        match e {
            l::RecoveryEvent::InvalidCheckpoint { reason } => {
                Event::Recovery { what: "invalid checkpoint".into(), detail: reason.clone() }
            }
            l::RecoveryEvent::Recovered { seq, last_completed, pending } => Event::Recovery {
                what: "recovered".into(),
                detail: format!(
                    "from checkpoint {seq}, last completed batch {}, {pending} pending batch(es) re-run",
                    last_completed.map(|t| format!("{t} ms")).unwrap_or_else(|| "none".into())
                ),
            },
            // The enum is non-exhaustive: a future variant still shows up.
            #[allow(unreachable_patterns)]
            other => Event::Recovery { what: "recovery".into(), detail: format!("{other:?}") },
        }
    }
}
