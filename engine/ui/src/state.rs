//! What the status page shows, kept in memory and bounded: the newest
//! batches with their outputs, stages, retries and recomputed blocks, the
//! newest checkpoints, executors, receiver errors and recovery notes. Built
//! by applying [`Logged`] events in order, live or from an event log.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::event::{
    BatchRecord, CheckpointRecord, Event, ExecutorStatusRecord, JobInfo, Logged, PartitionPosition, SourceDetailsRecord,
};

/// How much the state keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Completed batches kept (the newest).
    pub batches: usize,
    /// Retries and recomputed blocks kept per batch.
    pub per_batch: usize,
    /// Checkpoint writes kept.
    pub checkpoints: usize,
    /// Executors kept (lost ones are dropped first).
    pub executors: usize,
    /// Recovery notes and receiver messages kept.
    pub notes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { batches: 1000, per_batch: 100, checkpoints: 200, executors: 1000, notes: 100 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Retry {
    pub rdd: String,
    pub partition: u32,
    pub attempt: u32,
    pub failure: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recomputed {
    pub block: String,
    pub digest_matches: bool,
    /// The executor whose loss made it necessary, if one did.
    pub lost_executor: Option<String>,
    pub at_ms: u64,
}

/// A completed batch with what happened while it ran.
#[derive(Debug, Clone, Serialize)]
pub struct BatchView {
    #[serde(flatten)]
    pub record: BatchRecord,
    pub replayed: bool,
    pub submitted_at_ms: Option<u64>,
    pub completed_at_ms: u64,
    pub retries: Vec<Retry>,
    pub recomputed_blocks: Vec<Recomputed>,
    /// Retries or blocks past the per-batch bound (counted, not kept).
    pub dropped_details: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointView {
    #[serde(flatten)]
    pub record: CheckpointRecord,
    pub ok: bool,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecutorView {
    pub executor: String,
    pub active: bool,
    pub added_at_ms: Option<u64>,
    pub added_reason: String,
    pub lost_at_ms: Option<u64>,
    pub lost_reason: Option<String>,
    /// Heartbeats the driver received from it (`None`: in-process threads,
    /// or no status yet), and when the newest came (ms since the epoch).
    pub heartbeats: Option<u64>,
    pub last_heartbeat_at_ms: Option<u64>,
    /// How long before `status_at_ms` the newest heartbeat came (`None`
    /// for in-process threads and lost executors). While the job runs the
    /// status is read as the page or API is asked, so this grows while an
    /// executor is silent.
    pub last_heartbeat_age_ms: Option<u64>,
    /// Tasks it finished (retries and resubmissions each count), tasks that
    /// failed there, and tasks running there at the newest status.
    pub tasks_run: u64,
    pub tasks_failed: u64,
    pub tasks_running: u64,
    /// Linear memory of its UDF instances at the newest status, and the
    /// most at once (bytes; `None` until it said).
    pub udf_memory_bytes: Option<u64>,
    pub udf_memory_peak_bytes: Option<u64>,
    /// Blocks recomputed because this executor was lost (they were held
    /// there), with the digest check of each in the batch's details.
    pub blocks_recomputed: u64,
    /// When the newest status was taken (ms since the epoch).
    pub status_at_ms: Option<u64>,
}

impl ExecutorView {
    fn new(executor: &str) -> Self {
        ExecutorView {
            executor: executor.to_string(),
            active: false,
            added_at_ms: None,
            added_reason: String::new(),
            lost_at_ms: None,
            lost_reason: None,
            heartbeats: None,
            last_heartbeat_at_ms: None,
            last_heartbeat_age_ms: None,
            tasks_run: 0,
            tasks_failed: 0,
            tasks_running: 0,
            udf_memory_bytes: None,
            udf_memory_peak_bytes: None,
            blocks_recomputed: 0,
            status_at_ms: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceView {
    /// Records this source gave, over every batch seen.
    pub records_in: u64,
    /// Records it gave to the newest batch.
    pub last_batch_records: u64,
    /// Partitioned sources (Kafka): each partition's position and lag when
    /// the newest batch was cut (at most [`MAX_PARTITIONS`]).
    pub positions: Vec<PartitionPosition>,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    /// Receivers: connected now (`None` before the first attempt ends).
    pub connected: Option<bool>,
    /// Receivers: connections made after the first one.
    pub reconnects: u64,
    /// Receivers: when the connection state last changed, and why it was
    /// last lost.
    pub connection_changed_at_ms: Option<u64>,
    pub last_disconnect: Option<String>,
    /// Lines its policies changed or dropped, per action (`replaced`,
    /// `skipped`, `truncated`, `failed`), and the newest problem.
    pub bad_lines: BTreeMap<String, u64>,
    pub last_bad_line: Option<String>,
    /// A receiver's write-ahead log, a directory's files read, as the
    /// newest batch was cut.
    #[serde(flatten)]
    pub details: SourceDetailsRecord,
}

/// Recent file paths kept per source, and the longest path kept.
const MAX_RECENT_FILES: usize = 5;
const MAX_PATH_BYTES: usize = 4096;

/// What one output operation wrote, over every batch seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputView {
    /// The stream it writes (graph node id).
    pub stream: Option<u32>,
    /// Records written since the start (completed writes; a batch re-run
    /// after recovery counts again).
    pub records_out: u64,
    /// Records it wrote in the newest batch (`None`: nothing to write then).
    pub last_batch_records_out: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub what: String,
    pub detail: String,
    pub at_ms: u64,
}

/// A batch submitted but not completed yet.
#[derive(Debug, Clone, Default)]
struct Pending {
    records_in: u64,
    replayed: bool,
    submitted_at_ms: u64,
    retries: Vec<Retry>,
    recomputed: Vec<Recomputed>,
    dropped: u64,
}

/// A batch in flight ([`UiState::active`]).
#[derive(Debug, Clone)]
pub struct ActiveBatch {
    pub time: i64,
    pub records_in: u64,
    pub replayed: bool,
    pub submitted_at_ms: u64,
    /// Its jobs are running (else it waits for the batch before it).
    pub running: bool,
    pub retries: Vec<Retry>,
    pub recomputed: Vec<Recomputed>,
}

/// Totals since the job started (not bounded by the retained window).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub batches_completed: u64,
    pub batches_failed: u64,
    pub records_in: u64,
    /// Records written by all output operations.
    pub records_out: u64,
    pub task_retries: u64,
    pub blocks_recomputed: u64,
    pub blocks_digest_mismatch: u64,
    pub checkpoint_writes: u64,
    pub checkpoint_failures: u64,
    pub executors_added: u64,
    pub executors_lost: u64,
    pub receiver_errors: u64,
    pub receiver_reconnects: u64,
}

/// The whole UI state.
#[derive(Debug, Default)]
pub struct UiState {
    pub limits: Limits,
    pub job: Option<JobInfo>,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// Served from an event log (`weir history`), not a running job.
    pub history: bool,
    pub totals: Totals,
    pub batches: VecDeque<BatchView>,
    pending: BTreeMap<i64, Pending>,
    /// The batch running now (its time), for attributing recomputed blocks.
    running: Option<i64>,
    pub checkpoints: VecDeque<CheckpointView>,
    pub executors: BTreeMap<String, ExecutorView>,
    pub sources: BTreeMap<u32, SourceView>,
    /// Per output operation (by index, only the job's).
    pub outputs: BTreeMap<usize, OutputView>,
    pub recovery: VecDeque<Note>,
    pub last_event_ms: Option<u64>,
    /// The newest batch lineage shown: (batch time, (output, plan) pairs),
    /// each plan cut to [`MAX_PLAN_BYTES`] (an event log is not trusted).
    pub lineage: Option<(i64, Vec<(String, String)>)>,
}

/// Partitions kept per source (a topic may have thousands).
pub const MAX_PARTITIONS: usize = 1024;

/// The longest plan kept per output, and the most outputs kept.
pub const MAX_PLAN_BYTES: usize = 64 * 1024;
const MAX_PLANS: usize = 64;

fn cut_at(s: &str, max: usize) -> String {
    crate::event::cut(s, max)
}

/// A batch record as kept: each stage's task list at most
/// [`weir::listener::TASKS_SHOWN`] long and its failures cut (an event log
/// is not trusted to keep them short).
fn bounded(r: &BatchRecord) -> BatchRecord {
    let mut r = r.clone();
    for s in r.outputs.iter_mut().flat_map(|o| o.stages.iter_mut()) {
        s.task_list.truncate(weir::listener::TASKS_SHOWN);
        for t in &mut s.task_list {
            if let Some(f) = &mut t.failure {
                if f.len() > crate::event::MAX_TASK_FAILURE_BYTES {
                    *f = cut_at(f, crate::event::MAX_TASK_FAILURE_BYTES);
                }
            }
        }
    }
    r
}

fn push_bounded<T>(q: &mut VecDeque<T>, x: T, max: usize) {
    q.push_back(x);
    while q.len() > max {
        q.pop_front();
    }
}

impl UiState {
    pub fn new(limits: Limits) -> Self {
        UiState { limits, ..UiState::default() }
    }

    /// Whether the job still runs (the page then refreshes itself).
    pub fn live(&self) -> bool {
        !self.history && self.ended_at_ms.is_none()
    }

    /// The batch submitted but not completed, with its submission time.
    pub fn in_flight(&self) -> Vec<(i64, u64, u64)> {
        self.pending.iter().map(|(t, p)| (*t, p.records_in, p.submitted_at_ms)).collect()
    }

    /// A batch submitted and not completed yet, as far as it got.
    pub fn active(&self, time: i64) -> Option<ActiveBatch> {
        self.pending.get(&time).map(|p| ActiveBatch {
            time,
            records_in: p.records_in,
            replayed: p.replayed,
            submitted_at_ms: p.submitted_at_ms,
            running: self.running == Some(time),
            retries: p.retries.clone(),
            recomputed: p.recomputed.clone(),
        })
    }

    pub fn batch(&self, time: i64) -> Option<&BatchView> {
        // Batches arrive in time order (re-runs after recovery may repeat a
        // time: the newest wins).
        self.batches.iter().rev().find(|b| b.record.time == time)
    }

    pub fn apply(&mut self, e: &Logged) {
        let at = e.at_ms;
        self.last_event_ms = Some(at);
        let lim = self.limits;
        match &e.event {
            Event::JobStarted(info) => {
                self.job = Some(info.clone());
                self.started_at_ms.get_or_insert(at);
            }
            Event::BatchSubmitted { time, records_in, records_per_source, replayed } => {
                // Only sources the job lists (an event log is a file, and its
                // indices are not trusted to be few).
                let known = self.job.as_ref().map_or(0, |j| j.sources.len());
                for (i, n) in records_per_source.iter().enumerate().take(known) {
                    let v = self.sources.entry(i as u32).or_default();
                    v.records_in = v.records_in.saturating_add(*n);
                    v.last_batch_records = *n;
                }
                // Bounded: a batch that never completes is dropped with the oldest.
                if self.pending.len() >= lim.batches {
                    self.pending.pop_first();
                }
                self.pending.insert(
                    *time,
                    Pending { records_in: *records_in, replayed: *replayed, submitted_at_ms: at, ..Pending::default() },
                );
            }
            Event::BatchStarted { time, .. } => self.running = Some(*time),
            Event::SourceProgress { source, positions, details, .. } => {
                let known = self.job.as_ref().map_or(0, |j| j.sources.len());
                if (*source as usize) < known {
                    let v = self.sources.entry(*source).or_default();
                    v.positions = positions.iter().take(MAX_PARTITIONS).cloned().collect();
                    for p in &mut v.positions {
                        p.partition = cut_at(&p.partition, 300);
                    }
                    if let Some(d) = details {
                        // Bounded: an event log is not trusted to list few files.
                        let skip = d.recent_files.len().saturating_sub(MAX_RECENT_FILES);
                        v.details = SourceDetailsRecord {
                            recent_files: d.recent_files.iter().skip(skip).map(|f| cut_at(f, MAX_PATH_BYTES)).collect(),
                            ..d.clone()
                        };
                    }
                }
            }
            Event::BatchLineage { time, plans } => {
                let plans =
                    plans.iter().take(MAX_PLANS).map(|(o, p)| (cut_at(o, 1024), cut_at(p, MAX_PLAN_BYTES))).collect();
                self.lineage = Some((*time, plans));
            }
            Event::BatchCompleted(r) => {
                let p = self.pending.remove(&r.time).unwrap_or_default();
                if self.running == Some(r.time) {
                    self.running = None;
                }
                self.totals.batches_completed += 1;
                if !r.errors.is_empty() {
                    self.totals.batches_failed += 1;
                }
                self.totals.records_in += r.records_in;
                // Only outputs the job lists (an event log is not trusted to
                // have few indices).
                let known = self.job.as_ref().map_or(0, |j| j.outputs.len());
                for o in r.outputs.iter().filter(|o| o.index < known) {
                    let v = self.outputs.entry(o.index).or_default();
                    v.stream = o.stream.or(v.stream);
                    v.last_batch_records_out = o.records_out;
                    let n = o.records_out.unwrap_or(0);
                    v.records_out = v.records_out.saturating_add(n);
                    self.totals.records_out = self.totals.records_out.saturating_add(n);
                }
                let view = BatchView {
                    record: bounded(r),
                    replayed: p.replayed,
                    submitted_at_ms: (p.submitted_at_ms > 0).then_some(p.submitted_at_ms),
                    completed_at_ms: at,
                    retries: p.retries,
                    recomputed_blocks: p.recomputed,
                    dropped_details: p.dropped,
                };
                push_bounded(&mut self.batches, view, lim.batches);
            }
            Event::ReceiverError { source, message } => {
                self.totals.receiver_errors += 1;
                let s = self.sources.entry(*source).or_default();
                s.errors += 1;
                s.last_error = Some(message.clone());
                s.last_error_at_ms = Some(at);
            }
            Event::ReceiverBadLines { source, action, count, problem } if self.known_source(*source) => {
                let s = self.sources.entry(*source).or_default();
                // Only the four actions (an event log is not trusted).
                if crate::event::BAD_LINE_ACTIONS.contains(&action.as_str()) {
                    let c = s.bad_lines.entry(action.clone()).or_default();
                    *c = (*c).max(*count);
                }
                s.last_bad_line = Some(cut_at(problem, MAX_PATH_BYTES));
            }
            Event::ReceiverConnected { source, reconnects, .. } if self.known_source(*source) => {
                let s = self.sources.entry(*source).or_default();
                if *reconnects > 0 {
                    s.reconnects = s.reconnects.saturating_add(1);
                    self.totals.receiver_reconnects = self.totals.receiver_reconnects.saturating_add(1);
                }
                s.connected = Some(true);
                s.connection_changed_at_ms = Some(at);
            }
            Event::ReceiverDisconnected { source, reason, .. } if self.known_source(*source) => {
                let s = self.sources.entry(*source).or_default();
                s.connected = Some(false);
                s.connection_changed_at_ms = Some(at);
                s.last_disconnect = Some(cut_at(reason, 1024));
            }
            // Of a source the job does not list (an event log is not trusted).
            Event::ReceiverConnected { .. } | Event::ReceiverDisconnected { .. } | Event::ReceiverBadLines { .. } => {}
            Event::Recovery { what, detail } => push_bounded(
                &mut self.recovery,
                Note { what: what.clone(), detail: detail.clone(), at_ms: at },
                lim.notes,
            ),
            Event::CheckpointWritten(c) | Event::CheckpointFailed(c) => {
                let ok = matches!(e.event, Event::CheckpointWritten(_));
                if ok {
                    self.totals.checkpoint_writes += 1;
                } else {
                    self.totals.checkpoint_failures += 1;
                }
                push_bounded(
                    &mut self.checkpoints,
                    CheckpointView { record: c.clone(), ok, at_ms: at },
                    lim.checkpoints,
                );
            }
            Event::ExecutorAdded { executor, reason } => {
                self.totals.executors_added += 1;
                if self.executors.len() >= lim.executors && !self.executors.contains_key(executor) {
                    self.evict_executor();
                }
                self.executors.insert(
                    executor.clone(),
                    ExecutorView {
                        active: true,
                        added_at_ms: Some(at),
                        added_reason: reason.clone(),
                        ..ExecutorView::new(executor)
                    },
                );
            }
            Event::ExecutorLost { executor, reason } => {
                self.totals.executors_lost += 1;
                if self.executors.len() >= lim.executors && !self.executors.contains_key(executor) {
                    self.evict_executor();
                }
                let x = self.executors.entry(executor.clone()).or_insert_with(|| ExecutorView::new(executor));
                x.active = false;
                x.lost_at_ms = Some(at);
                x.lost_reason = Some(reason.clone());
            }
            Event::TaskRetry { batch_time, rdd, partition, attempt, failure } => {
                self.totals.task_retries += 1;
                let r = Retry {
                    rdd: rdd.clone(),
                    partition: *partition,
                    attempt: *attempt,
                    failure: failure.clone(),
                    at_ms: at,
                };
                if let Some(p) = self.pending.get_mut(batch_time) {
                    if p.retries.len() < lim.per_batch {
                        p.retries.push(r);
                    } else {
                        p.dropped += 1;
                    }
                }
            }
            Event::ExecutorsStatus { executors } => self.apply_executors_status(at, executors),
            Event::BlockRecomputed { block, digest_matches, lost_executor } => {
                self.totals.blocks_recomputed += 1;
                if !digest_matches {
                    self.totals.blocks_digest_mismatch += 1;
                }
                if let Some(x) = lost_executor.as_ref().and_then(|e| self.executors.get_mut(e)) {
                    x.blocks_recomputed = x.blocks_recomputed.saturating_add(1);
                }
                let r = Recomputed {
                    block: block.clone(),
                    digest_matches: *digest_matches,
                    lost_executor: lost_executor.as_ref().map(|e| cut_at(e, 300)),
                    at_ms: at,
                };
                // A block is recomputed while a batch runs (or right after, by
                // a test hook): it belongs to the running or newest batch.
                if let Some(p) = self.running.and_then(|t| self.pending.get_mut(&t)) {
                    if p.recomputed.len() < lim.per_batch {
                        p.recomputed.push(r);
                    } else {
                        p.dropped += 1;
                    }
                } else if let Some(b) = self.batches.back_mut() {
                    if b.recomputed_blocks.len() < lim.per_batch {
                        b.recomputed_blocks.push(r);
                    } else {
                        b.dropped_details += 1;
                    }
                }
            }
            Event::JobEnded { .. } => {
                self.ended_at_ms = Some(at);
            }
        }
    }

    /// Every executor's status taken at `at`: with each completed batch
    /// (an event), or read live as the page or API is asked
    /// ([`crate::Shared::refresh_executors`]; not an event: it is not
    /// logged and does not move `last_event_ms`). Counts only go up: a live
    /// read that raced a batch's status does not take them back.
    pub fn apply_executors_status(&mut self, at: u64, executors: &[ExecutorStatusRecord]) {
        let lim = self.limits;
        for s in executors.iter().take(lim.executors) {
            if self.executors.len() >= lim.executors && !self.executors.contains_key(&s.executor) {
                self.evict_executor();
            }
            let x = self.executors.entry(s.executor.clone()).or_insert_with(|| ExecutorView {
                // Seen only through its status (the driver's threads).
                active: s.alive,
                ..ExecutorView::new(&s.executor)
            });
            if !s.alive {
                x.active = false;
            }
            x.heartbeats = match (s.heartbeats, x.heartbeats) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(age) = s.last_heartbeat_age_ms {
                x.last_heartbeat_at_ms = Some(at.saturating_sub(age));
            }
            x.last_heartbeat_age_ms = if x.active { s.last_heartbeat_age_ms } else { None };
            x.tasks_run = x.tasks_run.max(s.tasks_run);
            x.tasks_failed = x.tasks_failed.max(s.tasks_failed);
            x.tasks_running = s.tasks_running;
            x.udf_memory_bytes = s.udf_memory_bytes.or(x.udf_memory_bytes);
            x.udf_memory_peak_bytes = s.udf_memory_peak_bytes.or(x.udf_memory_peak_bytes);
            x.status_at_ms = Some(at);
        }
    }

    fn known_source(&self, id: u32) -> bool {
        self.job.as_ref().is_some_and(|j| (id as usize) < j.sources.len())
    }

    fn evict_executor(&mut self) {
        let victim = self
            .executors
            .iter()
            .find(|(_, x)| !x.active)
            .or_else(|| self.executors.iter().next())
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.executors.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(time: i64, records_in: u64) -> BatchRecord {
        BatchRecord {
            time,
            records_in,
            records_per_source: vec![records_in],
            processing_ms: 1.0,
            scheduling_delay_ms: 0.5,
            total_delay_ms: 1.5,
            ..BatchRecord::default()
        }
    }

    fn one_source_job() -> JobInfo {
        JobInfo {
            name: "j".into(),
            weir_version: String::new(),
            master: String::new(),
            clock: String::new(),
            batch_interval_ms: 1000,
            parallelism: 2,
            sources: vec![crate::event::SourceInfo {
                id: 0,
                kind: "kafka".into(),
                description: "t".into(),
                receiver: false,
            }],
            streams: vec![],
            outputs: vec![],
            modules: Default::default(),
            limits: Default::default(),
        }
    }

    #[test]
    fn per_source_records_and_positions_are_bounded_to_the_jobs_sources() {
        let mut s = UiState::new(Limits::default());
        s.apply(&Logged { at_ms: 0, event: Event::JobStarted(one_source_job()) });
        for (t, n) in [(1, 5), (2, 7)] {
            // A hostile event log: counts for sources the job does not have.
            let event =
                Event::BatchSubmitted { time: t, records_in: n, records_per_source: vec![n, 99, 99], replayed: false };
            s.apply(&Logged { at_ms: 1, event });
        }
        assert_eq!(s.sources.len(), 1);
        assert_eq!((s.sources[&0].records_in, s.sources[&0].last_batch_records), (12, 7));
        let positions: Vec<PartitionPosition> = (0..MAX_PARTITIONS + 10)
            .map(|i| PartitionPosition { partition: format!("t/{i}"), next: 1, end: 3 })
            .collect();
        s.apply(&Logged {
            at_ms: 2,
            event: Event::SourceProgress { source: 0, time: 2, positions: positions.clone(), details: None },
        });
        s.apply(&Logged { at_ms: 2, event: Event::SourceProgress { source: 7, time: 2, positions, details: None } });
        assert_eq!(s.sources.len(), 1, "an unknown source is ignored");
        assert_eq!(s.sources[&0].positions.len(), MAX_PARTITIONS);
    }

    #[test]
    fn bad_line_counts_from_an_event_log_are_bounded() {
        let mut s = UiState::new(Limits::default());
        s.apply(&Logged { at_ms: 0, event: Event::JobStarted(one_source_job()) });
        // A hostile event log: an unknown source, a flood of made-up
        // actions, a problem text of 1 MiB.
        let bad = |source: u32, action: String, problem: String| Logged {
            at_ms: 1,
            event: Event::ReceiverBadLines { source, action, count: 3, problem },
        };
        s.apply(&bad(7, "skipped".into(), "x".into()));
        assert!(!s.sources.contains_key(&7), "an unknown source is ignored");
        for i in 0..100 {
            s.apply(&bad(0, format!("action-{i}"), "y".repeat(1 << 20)));
        }
        s.apply(&bad(0, "skipped".into(), "z".into()));
        let v = &s.sources[&0];
        assert_eq!(v.bad_lines.keys().collect::<Vec<_>>(), ["skipped"], "only the four actions");
        assert_eq!(v.last_bad_line.as_deref(), Some("z"));
        s.apply(&bad(0, "truncated".into(), "y".repeat(1 << 20)));
        let cut = s.sources[&0].last_bad_line.clone().unwrap_or_default();
        assert!(cut.len() <= MAX_PATH_BYTES + 4, "the problem text is cut: {} bytes", cut.len());
    }

    #[test]
    fn a_batchs_task_lists_from_an_event_log_are_bounded() {
        let mut s = UiState::new(Limits::default());
        s.apply(&Logged { at_ms: 0, event: Event::JobStarted(one_source_job()) });
        // A hostile event log: 10 000 task attempts, the first failures 1 MiB.
        let task = |p: u32| crate::event::TaskRecord {
            partition: p,
            attempt: 0,
            executor: String::new(),
            duration_ms: 1.0,
            failure: Some("f".repeat(if p < 4 { 1 << 20 } else { 10 })),
        };
        let stage = crate::event::StageRecord {
            rdd: "r".into(),
            kind: "result".into(),
            tasks: 10_000,
            duration_ms: 1.0,
            executors: vec![],
            task_list: (0..10_000).map(task).collect(),
            task_ms: None,
        };
        let mut b = batch(1, 1);
        b.outputs = vec![crate::event::OutputRecord {
            index: 0,
            description: String::new(),
            stream: None,
            duration_ms: 0.0,
            stages: vec![stage],
            error: None,
            records_out: None,
        }];
        s.apply(&Logged { at_ms: 1, event: Event::BatchCompleted(b) });
        let kept = &s.batches.back().expect("the batch is kept").record.outputs[0].stages[0].task_list;
        assert_eq!(kept.len(), weir::listener::TASKS_SHOWN);
        let longest = kept.iter().filter_map(|t| t.failure.as_ref()).map(String::len).max().unwrap_or(0);
        assert!(longest <= crate::event::MAX_TASK_FAILURE_BYTES + 4, "failures are cut: {longest} bytes");
    }

    #[test]
    fn records_out_and_reconnects_count_only_the_jobs_outputs_and_sources() {
        let mut s = UiState::new(Limits::default());
        let mut job = one_source_job();
        job.outputs =
            vec![crate::event::OutputSpecInfo { index: 0, stream: 3, description: "o".into(), kind: "print".into() }];
        s.apply(&Logged { at_ms: 0, event: Event::JobStarted(job) });
        let out = |index: usize, records_out: Option<u64>| crate::event::OutputRecord {
            index,
            description: String::new(),
            stream: Some(3),
            duration_ms: 0.0,
            stages: vec![],
            error: None,
            records_out,
        };
        for (t, n) in [(1, Some(4)), (2, None), (3, Some(6))] {
            let mut b = batch(t, 1);
            // A hostile event log: an output the job does not have.
            b.outputs = vec![out(0, n), out(9, Some(1000))];
            s.apply(&Logged { at_ms: 1, event: Event::BatchCompleted(b) });
        }
        assert_eq!(s.totals.records_out, 10);
        assert_eq!(s.outputs.len(), 1);
        assert_eq!((s.outputs[&0].records_out, s.outputs[&0].last_batch_records_out), (10, Some(6)));
        for (source, reconnects) in [(0, 0), (0, 1), (5, 1), (0, 2)] {
            let event = Event::ReceiverConnected { source, address: "a:1".into(), reconnects };
            s.apply(&Logged { at_ms: 2, event });
        }
        let event = Event::ReceiverDisconnected { source: 5, address: "a:1".into(), reason: "x".into() };
        s.apply(&Logged { at_ms: 3, event });
        assert_eq!(s.sources.len(), 1, "an unknown source is ignored");
        assert_eq!((s.sources[&0].reconnects, s.sources[&0].connected), (2, Some(true)));
        assert_eq!(s.totals.receiver_reconnects, 2);
        let event = Event::ReceiverDisconnected { source: 0, address: "a:1".into(), reason: "gone".into() };
        s.apply(&Logged { at_ms: 4, event });
        assert_eq!(s.sources[&0].connected, Some(false));
        assert_eq!(s.sources[&0].last_disconnect.as_deref(), Some("gone"));
    }

    /// Executor status snapshots update the executors' views (a heartbeat's
    /// age becomes a time), a block recomputed after a loss is charged to
    /// the lost executor only, the executors kept stay bounded, and a
    /// source's recent files stay at five.
    #[test]
    fn executor_status_and_recomputations_after_a_loss_are_kept_bounded() {
        use crate::event::ExecutorStatusRecord;
        let mut s = UiState::new(Limits { executors: 3, ..Limits::default() });
        s.apply(&Logged { at_ms: 0, event: Event::JobStarted(one_source_job()) });
        for x in ["a:1", "b:1"] {
            s.apply(&Logged { at_ms: 1, event: Event::ExecutorAdded { executor: x.into(), reason: "pid".into() } });
        }
        let status = |executor: &str, alive: bool, tasks_run: u64| ExecutorStatusRecord {
            executor: executor.into(),
            alive,
            heartbeats: Some(7),
            last_heartbeat_age_ms: Some(40),
            tasks_run,
            tasks_failed: 1,
            tasks_running: 2,
            udf_memory_bytes: Some(65536),
            udf_memory_peak_bytes: Some(131072),
        };
        s.apply(&Logged {
            at_ms: 1000,
            event: Event::ExecutorsStatus { executors: vec![status("a:1", true, 5), status("b:1", true, 6)] },
        });
        let a = &s.executors["a:1"];
        assert_eq!((a.tasks_run, a.tasks_failed, a.tasks_running, a.heartbeats), (5, 1, 2, Some(7)));
        assert_eq!((a.last_heartbeat_at_ms, a.udf_memory_peak_bytes), (Some(960), Some(131072)));
        s.apply(&Logged { at_ms: 1100, event: Event::ExecutorLost { executor: "a:1".into(), reason: "gone".into() } });
        for lost in [Some("a:1"), Some("nobody:1"), None] {
            let event = Event::BlockRecomputed {
                block: "rdd_1@1_p0".into(),
                digest_matches: true,
                lost_executor: lost.map(String::from),
            };
            s.apply(&Logged { at_ms: 1200, event });
        }
        assert_eq!((s.executors["a:1"].blocks_recomputed, s.executors["b:1"].blocks_recomputed), (1, 0));
        assert_eq!(s.totals.blocks_recomputed, 3);
        assert!(!s.executors.contains_key("nobody:1"));
        // A hostile event log: many executors in one status.
        let many: Vec<ExecutorStatusRecord> = (0..50).map(|i| status(&format!("x:{i}"), true, 1)).collect();
        s.apply(&Logged { at_ms: 1300, event: Event::ExecutorsStatus { executors: many } });
        assert!(s.executors.len() <= 3, "{}", s.executors.len());
        let details = crate::event::SourceDetailsRecord {
            files_seen: Some(40),
            recent_files: (0..40).map(|i| format!("f{i}")).collect(),
            ..Default::default()
        };
        let event = Event::SourceProgress { source: 0, time: 1, positions: vec![], details: Some(details) };
        s.apply(&Logged { at_ms: 1400, event });
        assert_eq!(s.sources[&0].details.recent_files, ["f35", "f36", "f37", "f38", "f39"]);
    }

    /// A status read live (as the API is asked) moves the figures on
    /// without an event: the heartbeat's age is as of the read, counts never
    /// go back (a live read that raced a batch's status), and a lost
    /// executor has no age.
    #[test]
    fn live_statuses_update_ages_and_keep_counts_monotone() {
        let mut s = UiState::new(Limits::default());
        s.apply(&Logged { at_ms: 1, event: Event::ExecutorAdded { executor: "a:1".into(), reason: "pid".into() } });
        let status = |age: u64, tasks_run: u64, alive: bool| ExecutorStatusRecord {
            executor: "a:1".into(),
            alive,
            heartbeats: Some(tasks_run),
            last_heartbeat_age_ms: alive.then_some(age),
            tasks_run,
            tasks_failed: 0,
            tasks_running: 1,
            udf_memory_bytes: None,
            udf_memory_peak_bytes: None,
        };
        s.apply_executors_status(5000, &[status(100, 9, true)]);
        s.apply_executors_status(7000, &[status(2100, 7, true)]);
        let a = &s.executors["a:1"];
        assert_eq!(
            (a.last_heartbeat_age_ms, a.last_heartbeat_at_ms, a.status_at_ms),
            (Some(2100), Some(4900), Some(7000))
        );
        assert_eq!((a.tasks_run, a.heartbeats), (9, Some(9)), "counts never go back");
        assert_eq!(s.last_event_ms, Some(1), "a live read is not an event");
        s.apply(&Logged { at_ms: 8000, event: Event::ExecutorLost { executor: "a:1".into(), reason: "x".into() } });
        s.apply_executors_status(9000, &[status(0, 10, false)]);
        let a = &s.executors["a:1"];
        assert_eq!((a.active, a.last_heartbeat_age_ms, a.tasks_run), (false, None, 10));
    }

    #[test]
    fn keeps_the_newest_batches_and_attributes_retries() {
        let mut s = UiState::new(Limits { batches: 3, ..Limits::default() });
        for t in 1..=5 {
            let at = t as u64;
            s.apply(&Logged {
                at_ms: at,
                event: Event::BatchSubmitted { time: t, records_in: 2, records_per_source: vec![2], replayed: false },
            });
            s.apply(&Logged {
                at_ms: at,
                event: Event::TaskRetry {
                    batch_time: t,
                    rdd: "r".into(),
                    partition: 0,
                    attempt: 0,
                    failure: "boom".into(),
                },
            });
            s.apply(&Logged { at_ms: at, event: Event::BatchCompleted(batch(t, 2)) });
        }
        assert_eq!(s.batches.len(), 3);
        assert_eq!(s.batches.front().map(|b| b.record.time), Some(3));
        assert_eq!(s.totals.batches_completed, 5);
        assert_eq!(s.totals.records_in, 10);
        assert_eq!(s.batch(5).map(|b| b.retries.len()), Some(1));
        assert!(s.in_flight().is_empty());
    }
}
