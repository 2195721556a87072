//! The listeners `weir run` adds: [`UiListener`] (status page, metrics,
//! event log) and [`JsonProgress`] (`--progress json`).
//!
//! Callbacks run on the driver's (or a receiver's) thread: they convert the
//! event, update the in-memory state under a short lock and the metrics
//! (atomic adds), and hand the event to the event-log writer through a
//! bounded channel without waiting. No I/O happens here.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use weir::listener::{
    BadLineAction, BatchLineage, BatchReport, BatchStarted, BatchSubmitted, BlockRecomputed, CheckpointEvent,
    ExecutorEvent, ExecutorStatus, LiveExecutors, ReceiverBadLine, ReceiverConnected, ReceiverDisconnected,
    ReceiverError, RecoveryEvent, SourceProgress, StreamingListener, TaskRetry,
};

use crate::event::{ms, now_ms, BatchRecord, Event, ExecutorStatusRecord, Logged, PartitionPosition};
use crate::eventlog::EventLogSender;
use crate::metrics::Metrics;
use crate::state::{Limits, UiState};

/// The state and metrics the server reads and the listener writes.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<UiState>,
    pub metrics: Metrics,
    /// Where the running job's executors' status is read between batches
    /// (until the job ends).
    live: Mutex<Option<LiveExecutors>>,
}

impl Shared {
    pub fn new(limits: Limits) -> Arc<Shared> {
        Arc::new(Shared { state: Mutex::new(UiState::new(limits)), metrics: Metrics::new(), live: Mutex::new(None) })
    }

    fn live(&self) -> MutexGuard<'_, Option<LiveExecutors>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every executor's status now into the state and the metrics,
    /// while the job runs: the server calls it before answering the
    /// executors page, its API and `/metrics`, so they show heartbeats,
    /// running tasks and UDF memory as they are, not as of the newest
    /// completed batch. The read copies a few figures per executor under the
    /// backend's lock, taken and released before this state's lock (never
    /// both at once, no I/O under either); a job nobody looks at pays nothing.
    pub fn refresh_executors(&self) {
        let Some(live) = self.live().clone() else { return };
        let executors: Vec<ExecutorStatusRecord> = live.status().iter().map(Into::into).collect();
        if executors.is_empty() {
            return;
        }
        let mut st = self.state();
        if !st.live() {
            return;
        }
        st.apply_executors_status(now_ms(), &executors);
        drop(st);
        self.metrics.observe(&Event::ExecutorsStatus { executors });
    }

    /// The state, even if a thread panicked while holding it (it stays
    /// consistent enough to show: every update is a few field writes).
    pub fn state(&self) -> MutexGuard<'_, UiState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, e: &Logged) {
        self.metrics.observe(&e.event);
        self.state().apply(e);
        if matches!(e.event, Event::JobEnded { .. }) {
            // The executors are gone: the page keeps their last figures.
            *self.live() = None;
        }
    }
}

/// Feeds the status page, the metrics and (optionally) the event log.
#[derive(Debug)]
pub struct UiListener {
    shared: Arc<Shared>,
    log: Option<EventLogSender>,
    /// Bad lines per (source, action): the newest total and problem, and
    /// the total last recorded ([`Event::ReceiverBadLines`]).
    bad_lines: Mutex<BTreeMap<(u32, &'static str), (u64, String, u64)>>,
}

impl UiListener {
    pub fn new(shared: Arc<Shared>, log: Option<EventLogSender>) -> Self {
        UiListener { shared, log, bad_lines: Mutex::default() }
    }

    /// Records the bad-line totals that grew since they were last recorded.
    fn flush_bad_lines(&self) {
        let due: Vec<Event> = {
            let mut m = self.bad_lines.lock().unwrap_or_else(|p| p.into_inner());
            m.iter_mut()
                .filter(|(_, (count, _, recorded))| count > recorded)
                .map(|((source, action), (count, problem, recorded))| {
                    *recorded = *count;
                    Event::ReceiverBadLines {
                        source: *source,
                        action: (*action).to_string(),
                        count: *count,
                        problem: problem.clone(),
                    }
                })
                .collect()
        };
        for e in due {
            self.record(e);
        }
    }

    /// Records an event (also used for `JobStarted` and `JobEnded`, which
    /// the CLI emits itself).
    pub fn record(&self, event: Event) {
        let e = Logged { at_ms: now_ms(), event };
        self.shared.apply(&e);
        if let Some(log) = &self.log {
            log.send(e);
        }
    }
}

impl StreamingListener for UiListener {
    fn on_batch_submitted(&self, e: &BatchSubmitted) {
        self.record(Event::BatchSubmitted {
            time: e.time,
            records_in: e.records_in,
            records_per_source: e.records_per_source.clone(),
            replayed: e.replayed,
        });
    }
    fn wants_lineage(&self) -> bool {
        true
    }
    fn on_batch_lineage(&self, e: &BatchLineage) {
        self.record(Event::BatchLineage { time: e.time, plans: e.plans.clone() });
    }
    fn on_source_progress(&self, e: &SourceProgress) {
        let positions = e
            .positions
            .iter()
            .map(|p| PartitionPosition { partition: p.partition.clone(), next: p.next, end: p.end })
            .collect();
        self.record(Event::SourceProgress {
            source: e.source,
            time: e.time,
            positions,
            details: e.details.as_ref().map(Into::into),
        });
    }
    fn on_batch_started(&self, e: &BatchStarted) {
        self.record(Event::BatchStarted { time: e.time, scheduling_delay_ms: ms(e.scheduling_delay) });
    }
    fn on_batch_completed(&self, e: &BatchReport) {
        self.flush_bad_lines();
        self.record(Event::BatchCompleted(e.into()));
    }
    fn on_receiver_error(&self, e: &ReceiverError) {
        self.record(Event::ReceiverError { source: e.source, message: e.message.clone() });
    }
    fn on_receiver_bad_line(&self, e: &ReceiverBadLine) {
        let action = match e.action {
            BadLineAction::Replaced => "replaced",
            BadLineAction::Skipped => "skipped",
            BadLineAction::Truncated => "truncated",
            _ => "failed",
        };
        let first = {
            let mut m = self.bad_lines.lock().unwrap_or_else(|p| p.into_inner());
            let entry = m.entry((e.source, action)).or_insert((0, String::new(), 0));
            entry.0 = entry.0.max(e.count);
            entry.1.clone_from(&e.problem);
            entry.2 == 0
        };
        // The first one at once (a page shows a new problem without waiting
        // for the batch); later ones with the next batch.
        if first {
            self.flush_bad_lines();
        }
    }
    fn on_receiver_connected(&self, e: &ReceiverConnected) {
        self.record(Event::ReceiverConnected {
            source: e.source,
            address: e.address.clone(),
            reconnects: e.reconnects,
        });
    }
    fn on_receiver_disconnected(&self, e: &ReceiverDisconnected) {
        self.record(Event::ReceiverDisconnected {
            source: e.source,
            address: e.address.clone(),
            reason: e.reason.clone(),
        });
    }
    fn on_recovery(&self, e: &RecoveryEvent) {
        self.record(e.into());
    }
    fn on_checkpoint_written(&self, e: &CheckpointEvent) {
        self.record(Event::CheckpointWritten(e.into()));
    }
    fn on_checkpoint_failed(&self, e: &CheckpointEvent) {
        self.record(Event::CheckpointFailed(e.into()));
    }
    fn on_executor_added(&self, e: &ExecutorEvent) {
        self.record(Event::ExecutorAdded { executor: e.executor.clone(), reason: e.reason.clone() });
    }
    fn on_executor_lost(&self, e: &ExecutorEvent) {
        self.record(Event::ExecutorLost { executor: e.executor.clone(), reason: e.reason.clone() });
    }
    fn on_task_retry(&self, e: &TaskRetry) {
        self.record(Event::TaskRetry {
            batch_time: e.batch_time,
            rdd: e.rdd.clone(),
            partition: e.partition,
            attempt: e.attempt,
            failure: e.failure.clone(),
        });
    }
    fn on_block_recomputed(&self, e: &BlockRecomputed) {
        self.record(Event::BlockRecomputed {
            block: e.block.clone(),
            digest_matches: e.digest_matches,
            lost_executor: e.lost_executor.clone(),
        });
    }
    fn on_executors_status(&self, e: &[ExecutorStatus]) {
        self.record(Event::ExecutorsStatus { executors: e.iter().map(Into::into).collect() });
    }
    fn on_live_executors(&self, e: &LiveExecutors) {
        *self.shared.live() = Some(e.clone());
    }
}

/// Logs a warning when a receiver starts failing to connect (naming the
/// address, from the receiver's message), once per change of state rather
/// than on every retry. The receiver itself logs losing a connection (a
/// warning) and each failed retry (debug); `weir run` always adds this.
#[derive(Debug, Default)]
pub struct ReceiverLog {
    /// Per source, the last message seen.
    last: Mutex<HashMap<u32, String>>,
}

impl StreamingListener for ReceiverLog {
    fn on_receiver_error(&self, e: &ReceiverError) {
        let changed = {
            let mut m = self.last.lock().unwrap_or_else(|p| p.into_inner());
            m.insert(e.source, e.message.clone()).as_deref() != Some(e.message.as_str())
        };
        if changed && e.message.starts_with("cannot connect") {
            tracing::warn!("receiver of source {}: {} (retrying)", e.source, e.message);
        }
    }
    /// A connection made is a change of state: the next failure to
    /// connect warns again, even with the same message.
    fn on_receiver_connected(&self, e: &ReceiverConnected) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).remove(&e.source);
    }
}

/// `--progress json`: one JSON object per completed batch on stderr (the
/// fields of `/api/v1/batches/{time}` without the retained details), plus
/// `records_out_total`: per output, the records it wrote since the start.
#[derive(Debug, Default)]
pub struct JsonProgress {
    /// Per output (by index): records written so far.
    totals: Mutex<Vec<u64>>,
}

/// A progress line: the batch and the running totals.
#[derive(serde::Serialize)]
struct ProgressLine<'a> {
    #[serde(flatten)]
    batch: &'a BatchRecord,
    records_out_total: &'a [u64],
}

impl JsonProgress {
    /// The line of a batch; `totals` are the outputs' running totals after it.
    pub fn format(b: &BatchReport, totals: &[u64]) -> String {
        let r = BatchRecord::from(b);
        serde_json::to_string(&ProgressLine { batch: &r, records_out_total: totals })
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl StreamingListener for JsonProgress {
    fn on_batch_completed(&self, b: &BatchReport) {
        let line = {
            let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            // The job's outputs are few and fixed: one slot each.
            for o in &b.outputs {
                if totals.len() <= o.index {
                    totals.resize(o.index + 1, 0);
                }
                totals[o.index] = totals[o.index].saturating_add(o.records_out.unwrap_or(0));
            }
            Self::format(b, &totals)
        };
        // The text progress line is written the same way (stderr is the
        // console; a line per batch is what the user asked for).
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::event::{OutputRecord, StageRecord};

    #[test]
    #[ignore]
    fn cost_of_a_batch_event() {
        let shared = Shared::new(Limits::default());
        let l = UiListener::new(shared.clone(), None);
        let stage = StageRecord {
            rdd: "rdd_3@600".into(),
            kind: "result".into(),
            tasks: 2,
            duration_ms: 1.0,
            executors: vec![String::new()],
            task_list: vec![],
            task_ms: None,
        };
        let out = OutputRecord {
            index: 0,
            description: "save".into(),
            stream: Some(3),
            duration_ms: 2.0,
            stages: vec![stage.clone(), stage],
            error: None,
            records_out: Some(5),
        };
        let n = 200_000;
        let t = std::time::Instant::now();
        for i in 0..n {
            l.record(Event::BatchSubmitted { time: i, records_in: 5, records_per_source: vec![5], replayed: false });
            l.record(Event::BatchStarted { time: i, scheduling_delay_ms: 0.0 });
            l.record(Event::BatchCompleted(BatchRecord {
                time: i,
                records_in: 5,
                records_per_source: vec![5],
                processing_ms: 3.0,
                scheduling_delay_ms: 0.0,
                total_delay_ms: 3.0,
                outputs: vec![out.clone()],
                ..BatchRecord::default()
            }));
        }
        eprintln!("{:?} per batch", t.elapsed() / n as u32);
    }
}
