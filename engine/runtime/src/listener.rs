//! Listener events: what a running job tells observers (Spark's
//! `StreamingListener`). The driver, the DAG scheduler, the checkpoint
//! writer, the cluster backend and receivers emit events on a
//! [`ListenerBus`]; listeners watch the record path, they never weave through
//! it. The console progress line ([`ConsoleProgress`]) is one listener; the
//! library itself prints nothing to stdout or stderr (only the `print`
//! output operation writes to stdout, because the job asked for it).
//!
//! Events are delivered synchronously on the emitting thread (the driver's
//! loop, the checkpoint writer, a receiver thread), so a listener must be
//! quick and must not block: hand work to a channel if it is slow.
//!
//! A batch's outputs are written while the next batch's jobs run, so batch
//! *t + 1* may be started and submitted before batch *t* is completed;
//! each batch's own events come in order (started, submitted, completed),
//! and completions come in batch order.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// A batch's inputs are recorded and its RDDs generated; its output
/// operations are about to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchSubmitted {
    pub time: i64,
    pub records_in: u64,
    /// Records each source gave (by source index; the sum is `records_in`).
    pub records_per_source: Vec<u64>,
    /// A batch re-run after recovery (its inputs were read again).
    pub replayed: bool,
    /// Each output's lineage (output description, explanation), when the run
    /// was asked to explain its plan (first batch only).
    pub plans: Vec<(String, String)>,
}

/// The lineage of a batch's outputs, for status pages: sent only to
/// listeners whose `wants_lineage` is true, at most once a second.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchLineage {
    pub time: i64,
    /// (output description, plan as `explain` writes it, bounded).
    pub plans: Vec<(String, String)>,
}

/// Where a partitioned source stands after cutting a batch (Kafka: per
/// topic partition, the next offset and the high watermark seen).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceProgress {
    pub source: u32,
    pub time: i64,
    pub positions: Vec<SourcePosition>,
    /// What else the source can tell (its write-ahead log, the files it
    /// read), when it has something to tell.
    pub details: Option<SourceDetails>,
}

/// A source's own figures for status pages, taken as a batch is cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceDetails {
    /// A receiver with a write-ahead log: the bytes and segment files its
    /// log holds on disk now.
    pub wal_bytes: Option<u64>,
    pub wal_files: Option<u64>,
    /// A directory source: files read since this run started, and the
    /// newest few of their paths (oldest first).
    pub files_seen: Option<u64>,
    pub recent_files: Vec<String>,
}

/// One partition of a source: `end - next` records are waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// `topic/partition` for Kafka.
    pub partition: String,
    pub next: i64,
    pub end: i64,
}

/// A batch starts running (after waiting for its time with the wall clock).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchStarted {
    pub time: i64,
    pub scheduling_delay: Duration,
}

/// One stage a batch ran: the RDD it computed, its tasks and its duration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageInfo {
    /// The RDD the stage computed (`time/node`), or the shuffle it fed.
    pub rdd: String,
    /// `"result"` or `"shuffle map"`.
    pub kind: &'static str,
    pub tasks: u32,
    pub duration: Duration,
    /// The executors that ran its tasks, retries included (block server
    /// addresses; `""` for the driver's own threads under `local[N]`).
    pub executors: Vec<String>,
    /// Some of its task attempts, by partition then attempt: every failed
    /// one and the slowest of the rest, at most [`TASKS_SHOWN`] in all (a
    /// stage may have thousands of tasks; the summary covers them all).
    pub task_list: Vec<TaskInfo>,
    /// The shortest, median and longest run time of all its task attempts
    /// that finished (`None` when none did).
    pub task_times: Option<[Duration; 3]>,
}

/// The most task attempts a [`StageInfo`] lists.
pub const TASKS_SHOWN: usize = 32;

/// One attempt of one task of a stage, as its executor reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    pub partition: u32,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// The executor that ran it (`""`: the driver's threads).
    pub executor: String,
    /// Its run time on the executor.
    pub duration: Duration,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

impl TaskInfo {
    pub fn new(partition: u32, attempt: u32, executor: String, duration: Duration, failure: Option<String>) -> Self {
        TaskInfo { partition, attempt, executor, duration, failure }
    }
}

/// What a stage's listeners see of its task attempts: the shortest, median
/// and longest run time of them all, and at most [`TASKS_SHOWN`] of them
/// (failures first, then the slowest), in partition and attempt order.
pub fn summarize_tasks(mut tasks: Vec<TaskInfo>) -> (Vec<TaskInfo>, Option<[Duration; 3]>) {
    let mut times: Vec<Duration> = tasks.iter().map(|t| t.duration).collect();
    times.sort_unstable();
    let quantiles = (!times.is_empty()).then(|| [times[0], times[times.len() / 2], times[times.len() - 1]]);
    if tasks.len() > TASKS_SHOWN {
        tasks.sort_by(|a, b| b.failure.is_some().cmp(&a.failure.is_some()).then(b.duration.cmp(&a.duration)));
        tasks.truncate(TASKS_SHOWN);
    }
    tasks.sort_by_key(|t| (t.partition, t.attempt));
    (tasks, quantiles)
}

/// One output operation of a batch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutputOpInfo {
    /// The output's index in the job and what it is (`print`, ...).
    pub index: usize,
    pub description: String,
    /// The stream (graph node id) the output writes.
    pub stream: u32,
    pub duration: Duration,
    pub stages: Vec<StageInfo>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Records the output wrote: its stream's records at this batch (the
    /// sum of its partitions' record counts). `None` when the stream has no
    /// RDD at this time (a window between slides) or the output failed.
    pub records_out: Option<u64>,
}

/// What happened in one batch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchReport {
    pub time: i64,
    pub records_in: u64,
    /// Records each source gave (by source index; the sum is `records_in`).
    pub records_per_source: Vec<u64>,
    pub processing: Duration,
    pub scheduling_delay: Duration,
    /// The error of each output operation that failed.
    pub errors: Vec<String>,
    /// Per output operation: duration, stages, error.
    pub outputs: Vec<OutputOpInfo>,
    /// What failures cost this batch: executors lost, map outputs
    /// recomputed, blocks recomputed, tasks resubmitted.
    pub executors_lost: u64,
    pub map_tasks_recomputed: u64,
    pub blocks_recomputed: u64,
    pub tasks_resubmitted: u64,
    /// Per source (by index): the rate limit, records per second, in force
    /// when the batch took its records (`None`: unbounded). Set by
    /// backpressure and `[rate] max`.
    pub rate_limits: Vec<Option<f64>>,
    /// Per source: backpressure's newest rate estimate (records per second)
    /// when the batch took its records, before `[rate] max` bounds it
    /// (`None`: no backpressure, or no estimate yet: the limit is then
    /// `[rate] initial` or `max`).
    pub backpressure_rates: Vec<Option<f64>>,
    /// Per module (by name, sorted): the batch's UDF calls, fuel burned and
    /// failed calls, retried and recomputing tasks included.
    pub udf_usage: Vec<UdfUsage>,
}

pub use weir_plan::task::UdfUsage;

impl OutputOpInfo {
    pub fn new(index: usize, description: String) -> Self {
        OutputOpInfo {
            index,
            description,
            stream: 0,
            duration: Duration::ZERO,
            stages: Vec::new(),
            error: None,
            records_out: None,
        }
    }
}

impl BatchReport {
    /// Total delay: scheduling delay plus processing time.
    pub fn total_delay(&self) -> Duration {
        self.scheduling_delay + self.processing
    }
}

/// A receiver could not read (connection refused, reset, ...); it retries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverError {
    pub source: u32,
    pub message: String,
}

/// A receiver connected to its server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverConnected {
    pub source: u32,
    /// `host:port` it connected to.
    pub address: String,
    /// Connections this receiver made before this one (0 on the first
    /// connection; each later one is a reconnect).
    pub reconnects: u64,
}

/// A receiver's connection ended (the server closed it, it broke, or the
/// receiver dropped it by its `on_invalid_utf8 = "fail"` policy); the
/// receiver reconnects with backoff. Not sent when the job stops.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverDisconnected {
    pub source: u32,
    pub address: String,
    /// Why, in words.
    pub reason: String,
}

/// What a receiver did with a line it could not take as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadLineAction {
    /// Invalid UTF-8 bytes became U+FFFD (`on_invalid_utf8 = "replace"`).
    Replaced,
    /// The line was dropped (`on_invalid_utf8` or `on_long_line = "skip"`).
    Skipped,
    /// The line was cut to `max_line_bytes` (`on_long_line = "truncate"`).
    Truncated,
    /// The connection was dropped (`on_invalid_utf8 = "fail"`).
    Failed,
}

/// A receiver (or a directory source) read a line that was not valid
/// UTF-8 or was longer than its `max_line_bytes`, and applied its policy.
/// A receiver tells of each line; a directory source tells once per file
/// and kind of problem in a batch, naming the file (and, for long lines,
/// the first one's number).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverBadLine {
    pub source: u32,
    /// What was wrong with the line (or the file's lines).
    pub problem: String,
    pub action: BadLineAction,
    /// Lines this source has treated with `action` since it started,
    /// these included.
    pub count: u64,
}

/// What recovery from a checkpoint found and does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RecoveryEvent {
    /// A checkpoint file was not usable; an older one is used instead.
    InvalidCheckpoint { reason: String },
    /// The driver resumed from metadata checkpoint `seq`.
    Recovered { seq: u64, last_completed: Option<i64>, pending: usize },
}

/// A checkpoint file was written (durably) or failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointEvent {
    /// `"metadata"` or `"state"`.
    pub kind: &'static str,
    /// The batch time it belongs to (metadata: the newest batch recorded).
    pub time: Option<i64>,
    pub bytes: u64,
    pub duration: Duration,
    /// Why it failed (for `on_checkpoint_failed`).
    pub error: Option<String>,
}

/// An executor joined or was lost.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorEvent {
    /// Its block server address (`""` for in-process executors).
    pub executor: String,
    pub reason: String,
}

/// A task failed and is run again.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskRetry {
    pub batch_time: i64,
    pub rdd: String,
    pub partition: u32,
    /// The attempt that failed (0-based).
    pub attempt: u32,
    pub failure: String,
}

/// A block that existed before was computed again, and its digest checked
/// against the original.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BlockRecomputed {
    pub block: String,
    /// True when the recomputed bytes have the original digest.
    pub digest_matches: bool,
    /// The executor whose loss made it necessary (the block was held there
    /// when it was lost); `None` when it was recomputed for another reason
    /// (a dropped block, a lost shuffle fetch, a test hook).
    pub lost_executor: Option<String>,
}

/// Where one executor stands: sent for every executor the scheduler knows,
/// with each batch's completion ([`StreamingListener::on_executors_status`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExecutorStatus {
    /// Its block server address (`""`: the driver's own threads, `local[N]`).
    pub executor: String,
    /// Connected now (false once it was lost).
    pub alive: bool,
    /// Heartbeats the driver received from it (`None`: in-process threads,
    /// which do not heartbeat).
    pub heartbeats: Option<u64>,
    /// Since its last heartbeat (or any message), in milliseconds, when the
    /// status was taken (`None` as for `heartbeats`, or once it is lost).
    pub last_heartbeat_age_ms: Option<u64>,
    /// Tasks it finished (successful or not; retries and resubmissions
    /// each count), tasks that failed there, and tasks running there now.
    pub tasks_run: u64,
    pub tasks_failed: u64,
    pub tasks_running: u64,
    /// Linear memory of the UDF instances alive in it now, and the most at
    /// once since it started (bytes; `None` when it has not said yet).
    pub udf_memory_bytes: Option<u64>,
    pub udf_memory_peak_bytes: Option<u64>,
}

impl ExecutorStatus {
    pub fn new(executor: String) -> Self {
        ExecutorStatus {
            executor,
            alive: true,
            heartbeats: None,
            last_heartbeat_age_ms: None,
            tasks_run: 0,
            tasks_failed: 0,
            tasks_running: 0,
            udf_memory_bytes: None,
            udf_memory_peak_bytes: None,
        }
    }
}

/// Every executor's status *now*, for status pages that show it between
/// batches ([`StreamingListener::on_executors_status`] comes only as batches
/// complete, so during a long batch, or with an executor that stopped
/// answering, it is stale exactly when a user looks). Handed once to each
/// listener when the run's executors start
/// ([`StreamingListener::on_live_executors`]). Nothing is computed until
/// [`LiveExecutors::status`] is called: then the backend copies a few
/// figures per executor under its lock (no I/O) and the scheduler adds the
/// tasks it saw finish, so heartbeats and tasks starting and finishing show
/// at once, and a heartbeat's age grows while an executor is silent. Empty
/// once the run's executors are gone. Cheap to clone (shared).
#[derive(Clone)]
pub struct LiveExecutors {
    status: Arc<dyn Fn() -> Vec<ExecutorStatus> + Send + Sync>,
}

impl LiveExecutors {
    pub fn new(status: impl Fn() -> Vec<ExecutorStatus> + Send + Sync + 'static) -> Self {
        LiveExecutors { status: Arc::new(status) }
    }

    /// Every executor's status as of now (the same figures as
    /// [`StreamingListener::on_executors_status`]).
    pub fn status(&self) -> Vec<ExecutorStatus> {
        (self.status)()
    }
}

impl std::fmt::Debug for LiveExecutors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveExecutors")
    }
}

/// Observes a running job. Every method has an empty default, so a listener
/// implements only what it needs.
pub trait StreamingListener: Send + Sync {
    fn on_batch_submitted(&self, _e: &BatchSubmitted) {}
    fn on_batch_started(&self, _e: &BatchStarted) {}
    fn on_batch_completed(&self, _e: &BatchReport) {}
    fn on_receiver_error(&self, _e: &ReceiverError) {}
    fn on_receiver_connected(&self, _e: &ReceiverConnected) {}
    fn on_receiver_disconnected(&self, _e: &ReceiverDisconnected) {}
    fn on_receiver_bad_line(&self, _e: &ReceiverBadLine) {}
    fn on_recovery(&self, _e: &RecoveryEvent) {}
    fn on_checkpoint_written(&self, _e: &CheckpointEvent) {}
    fn on_checkpoint_failed(&self, _e: &CheckpointEvent) {}
    fn on_executor_added(&self, _e: &ExecutorEvent) {}
    fn on_executor_lost(&self, _e: &ExecutorEvent) {}
    fn on_task_retry(&self, _e: &TaskRetry) {}
    fn on_block_recomputed(&self, _e: &BlockRecomputed) {}
    /// Every executor's status, just before each [`BatchReport`].
    fn on_executors_status(&self, _e: &[ExecutorStatus]) {}
    /// Where to read every executor's status at any time (once, as the
    /// executors start): keep it to show live figures between batches.
    fn on_live_executors(&self, _e: &LiveExecutors) {}
    /// True to be sent [`BatchLineage`] events (explaining a plan costs a
    /// little, so the driver does it only for listeners that show it).
    fn wants_lineage(&self) -> bool {
        false
    }
    fn on_batch_lineage(&self, _e: &BatchLineage) {}
    fn on_source_progress(&self, _e: &SourceProgress) {}
}

/// The listeners of one job. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ListenerBus {
    listeners: Arc<Vec<Arc<dyn StreamingListener>>>,
}

impl std::fmt::Debug for ListenerBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ListenerBus({} listener(s))", self.listeners.len())
    }
}

impl ListenerBus {
    pub fn new(listeners: Vec<Arc<dyn StreamingListener>>) -> Self {
        ListenerBus { listeners: Arc::new(listeners) }
    }

    /// Calls `f` on every listener, in the order they were added.
    pub fn emit(&self, f: impl Fn(&dyn StreamingListener)) {
        for l in self.listeners.iter() {
            f(&**l);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Whether any listener wants [`BatchLineage`] events.
    pub fn wants_lineage(&self) -> bool {
        self.listeners.iter().any(|l| l.wants_lineage())
    }
}

/// The console: one progress line per batch on stderr, plus recovery notes
/// and explained plans (receiver errors reach stderr through `tracing`). `weir run` adds it unless `--quiet`.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleProgress {
    /// One line per batch (off: only recovery notes and plans).
    pub batches: bool,
}

impl ConsoleProgress {
    fn line(&self, s: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{s}");
    }

    /// The progress line of a batch (`batch 3000 ms: 12 records in, ...`).
    pub fn format(b: &BatchReport) -> String {
        let mut status = if b.errors.is_empty() { String::new() } else { format!(", FAILED: {}", b.errors.join("; ")) };
        if b.executors_lost + b.map_tasks_recomputed + b.tasks_resubmitted > 0 {
            status.push_str(&format!(
                ", recovered: {} executor(s) lost, {} map output(s) and {} block(s) recomputed, {} task(s) resubmitted",
                b.executors_lost, b.map_tasks_recomputed, b.blocks_recomputed, b.tasks_resubmitted
            ));
        }
        let limits: Vec<String> =
            b.rate_limits.iter().map(|r| r.map_or_else(|| "unbounded".to_string(), |r| format!("{r:.0}"))).collect();
        if b.rate_limits.iter().any(Option::is_some) {
            status.push_str(&format!(", rate limit {} records/s", limits.join("/")));
        }
        format!(
            "batch {} ms: {} records in, processed in {} ms, scheduling delay {} ms{status}",
            b.time,
            b.records_in,
            b.processing.as_millis(),
            b.scheduling_delay.as_millis()
        )
    }
}

impl StreamingListener for ConsoleProgress {
    fn on_batch_submitted(&self, e: &BatchSubmitted) {
        for (output, plan) in &e.plans {
            self.line(&format!("plan of output {output} at batch {} ms:\n{plan}", e.time));
        }
    }
    fn on_batch_completed(&self, b: &BatchReport) {
        if self.batches {
            self.line(&Self::format(b));
        }
    }
    fn on_recovery(&self, e: &RecoveryEvent) {
        match e {
            RecoveryEvent::InvalidCheckpoint { reason } => {
                self.line(&format!("weir: checkpoint not usable, falling back to an older one: {reason}"))
            }
            RecoveryEvent::Recovered { seq, last_completed, pending } => self.line(&format!(
                "weir: recovered from checkpoint {seq} (last completed batch: {}); re-running {pending} pending batch(es)",
                last_completed.map(|t| format!("{t} ms")).unwrap_or_else(|| "none".into()),
            )),
        }
    }
}

#[cfg(test)]
mod task_summary_tests {
    use super::*;

    fn t(partition: u32, attempt: u32, ms: u64, failed: bool) -> TaskInfo {
        TaskInfo::new(partition, attempt, String::new(), Duration::from_millis(ms), failed.then(|| "boom".into()))
    }

    #[test]
    fn a_long_stage_keeps_its_failures_and_slowest_tasks_in_partition_order() {
        // 200 tasks of 1..=200 ms; partitions 7 and 150 failed (fast).
        let tasks: Vec<TaskInfo> = (0..200).map(|p| t(p, 0, u64::from(p) + 1, p == 7 || p == 150)).collect();
        let (shown, times) = summarize_tasks(tasks);
        assert_eq!(times, Some([Duration::from_millis(1), Duration::from_millis(101), Duration::from_millis(200)]));
        assert_eq!(shown.len(), TASKS_SHOWN);
        let parts: Vec<u32> = shown.iter().map(|t| t.partition).collect();
        let mut expected = vec![7, 150];
        expected.extend(200 - (TASKS_SHOWN as u32 - 2)..200);
        expected.sort();
        assert_eq!(parts, expected);
    }

    #[test]
    fn a_short_stage_keeps_every_attempt() {
        let (shown, times) = summarize_tasks(vec![t(1, 1, 5, false), t(1, 0, 9, true), t(0, 0, 3, false)]);
        let order: Vec<(u32, u32)> = shown.iter().map(|t| (t.partition, t.attempt)).collect();
        assert_eq!(order, [(0, 0), (1, 0), (1, 1)]);
        assert_eq!(times, Some([Duration::from_millis(3), Duration::from_millis(5), Duration::from_millis(9)]));
        assert_eq!(summarize_tasks(vec![]), (vec![], None));
    }
}
