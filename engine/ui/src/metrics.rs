//! `/metrics`: the job's counters and histograms in the Prometheus
//! (OpenMetrics) text format, through prometheus-client. Updated from the
//! same events as the status page; every update is an atomic add.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::sync::atomic::AtomicU64;

use crate::event::{Event, OutputSpecInfo, SourceInfo};

type Labels = Vec<(String, String)>;

/// The metrics registry and its handles.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    batches: Counter,
    batches_failed: Counter,
    records_in: Counter,
    records_out: Counter,
    stream_records_out: Family<Labels, Counter>,
    receiver_reconnects: Family<Labels, Counter>,
    receiver_connected: Family<Labels, Gauge>,
    /// The job's outputs (for their series' labels).
    output_specs: std::sync::Mutex<Vec<OutputSpecInfo>>,
    source_records_in: Family<Labels, Counter>,
    source_lag: Family<Labels, Gauge>,
    processing: Histogram,
    scheduling_delay: Histogram,
    last_batch_time: Gauge,
    task_retries: Counter,
    blocks_recomputed: Family<Labels, Counter>,
    checkpoint_writes: Family<Labels, Counter>,
    checkpoint_failures: Family<Labels, Counter>,
    checkpoint_duration: Histogram,
    executors_added: Counter,
    executors_lost: Counter,
    receiver_errors: Family<Labels, Counter>,
    receiver_bad_lines: Family<Labels, Counter>,
    /// The job's sources (for the labels of per-source series).
    source_names: std::sync::Mutex<Vec<SourceInfo>>,
    /// The job's UDF module names: the only `module` labels taken.
    module_names: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Per source: its rate limit in records per second (absent: unbounded).
    source_rate_limit: Family<Labels, Gauge<f64, AtomicU64>>,
    source_backpressure_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Per module (by the job's name for it): calls, fuel, failed calls.
    udf_calls: Family<Labels, Counter>,
    udf_fuel: Family<Labels, Counter>,
    udf_failures: Family<Labels, Counter>,
    udf_traps: Family<Labels, Counter>,
    /// Per executor (label `executor`: its block server address, `driver`
    /// for the driver's own threads).
    executor_tasks: Family<Labels, Counter>,
    executor_task_failures: Family<Labels, Counter>,
    executor_tasks_running: Family<Labels, Gauge>,
    executor_heartbeats: Family<Labels, Counter>,
    executor_udf_memory: Family<Labels, Gauge>,
    executor_blocks_recomputed: Family<Labels, Counter>,
    /// Per source: a receiver's write-ahead log bytes, a directory's files read.
    source_wal_bytes: Family<Labels, Gauge>,
    source_files_read: Family<Labels, Counter>,
    /// The executors that have series (at most [`MAX_EXECUTOR_SERIES`]).
    executor_names: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Executors given series of their own: a cluster that replaces executors
/// for days gets new addresses, and the series must stay bounded (the
/// status page keeps as many).
const MAX_EXECUTOR_SERIES: usize = 1000;

/// A source's series labels: its index and kind.
fn source_labels(id: u32, sources: &[SourceInfo]) -> Labels {
    let kind = sources.iter().find(|s| s.id == id).map_or("unknown", |s| s.kind.as_str());
    vec![("source".into(), id.to_string()), ("kind".into(), kind.to_string())]
}

/// An output's series labels: its name (kind and index,
/// `save_as_text_files#0`) and the stream it writes.
fn output_labels(o: &OutputSpecInfo) -> Labels {
    vec![("output".into(), o.label()), ("stream".into(), o.stream.to_string())]
}

/// Seconds, 1 ms to about 65 s.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let m = Metrics {
            batches: Counter::default(),
            batches_failed: Counter::default(),
            records_in: Counter::default(),
            records_out: Counter::default(),
            stream_records_out: Family::default(),
            receiver_reconnects: Family::default(),
            receiver_connected: Family::default(),
            output_specs: Default::default(),
            source_records_in: Family::default(),
            source_lag: Family::default(),
            processing: seconds_buckets(),
            scheduling_delay: seconds_buckets(),
            last_batch_time: Gauge::default(),
            task_retries: Counter::default(),
            blocks_recomputed: Family::default(),
            checkpoint_writes: Family::default(),
            checkpoint_failures: Family::default(),
            checkpoint_duration: seconds_buckets(),
            executors_added: Counter::default(),
            executors_lost: Counter::default(),
            receiver_errors: Family::default(),
            receiver_bad_lines: Family::default(),
            source_names: Default::default(),
            module_names: Default::default(),
            source_rate_limit: Family::default(),
            source_backpressure_rate: Family::default(),
            udf_calls: Family::default(),
            udf_fuel: Family::default(),
            udf_failures: Family::default(),
            udf_traps: Family::default(),
            executor_tasks: Family::default(),
            executor_task_failures: Family::default(),
            executor_tasks_running: Family::default(),
            executor_heartbeats: Family::default(),
            executor_udf_memory: Family::default(),
            executor_blocks_recomputed: Family::default(),
            executor_names: Default::default(),
            source_wal_bytes: Family::default(),
            source_files_read: Family::default(),
            registry: Registry::default(),
        };
        registry.register("batches", "Batches completed", m.batches.clone());
        registry.register("batches_failed", "Batches with a failed output operation", m.batches_failed.clone());
        registry.register("records_in", "Records taken from the sources", m.records_in.clone());
        registry.register("records_out", "Records written by the output operations", m.records_out.clone());
        registry.register(
            "stream_records_out",
            "Records each output operation wrote (labels: the output's kind#index and the stream it writes)",
            m.stream_records_out.clone(),
        );
        registry.register(
            "receiver_reconnects",
            "Connections a receiver made after its first one (per source)",
            m.receiver_reconnects.clone(),
        );
        registry.register(
            "receiver_connected",
            "1 while a receiver is connected to its server, else 0 (per source)",
            m.receiver_connected.clone(),
        );
        registry.register(
            "source_records_in",
            "Records taken from each source (label: the source's index and name)",
            m.source_records_in.clone(),
        );
        registry.register(
            "source_lag_records",
            "Records waiting in each partition of a partitioned source (Kafka) when the newest batch was cut",
            m.source_lag.clone(),
        );
        registry.register("batch_processing_seconds", "Batch processing time", m.processing.clone());
        registry.register(
            "batch_scheduling_delay_seconds",
            "Time a batch waited before it started",
            m.scheduling_delay.clone(),
        );
        registry.register("last_batch_time_ms", "Time of the newest completed batch", m.last_batch_time.clone());
        registry.register("task_retries", "Tasks run again after a failure", m.task_retries.clone());
        registry.register(
            "blocks_recomputed",
            "Blocks computed again (digest: match or mismatch)",
            m.blocks_recomputed.clone(),
        );
        registry.register("checkpoint_writes", "Checkpoint files written", m.checkpoint_writes.clone());
        registry.register("checkpoint_failures", "Checkpoint writes that failed", m.checkpoint_failures.clone());
        registry.register("checkpoint_write_seconds", "Checkpoint write duration", m.checkpoint_duration.clone());
        registry.register("executors_added", "Executors that joined", m.executors_added.clone());
        registry.register("executors_lost", "Executors lost", m.executors_lost.clone());
        registry.register("receiver_errors", "Receiver errors (per source)", m.receiver_errors.clone());
        registry.register(
            "receiver_bad_lines",
            "Lines a source's on_invalid_utf8 / on_long_line policy replaced, skipped, truncated or failed on (per source and action)",
            m.receiver_bad_lines.clone(),
        );
        registry.register("udf_calls", "UDF calls, per module", m.udf_calls.clone());
        registry.register(
            "udf_fuel",
            "Fuel burned by a module's instances (WebAssembly instructions, roughly), per module",
            m.udf_fuel.clone(),
        );
        registry.register(
            "udf_failures",
            "UDF calls that failed (trap, fuel, memory or deadline limit, malformed output, guest error), per module",
            m.udf_failures.clone(),
        );
        registry.register(
            "udf_traps",
            "UDF calls whose WebAssembly code trapped (unreachable, out-of-bounds access, division by zero, stack overflow), per module",
            m.udf_traps.clone(),
        );
        registry.register(
            "source_rate_limit",
            "Records per second a source may take (backpressure, [rate] max), per source",
            m.source_rate_limit.clone(),
        );
        registry.register(
            "source_backpressure_rate",
            "Backpressure's newest rate estimate, records per second, before [rate] max bounds it, per source",
            m.source_backpressure_rate.clone(),
        );
        registry.register(
            "executor_tasks",
            "Tasks an executor finished, successful or not (label: executor)",
            m.executor_tasks.clone(),
        );
        registry.register(
            "executor_task_failures",
            "Tasks that failed on an executor (label: executor)",
            m.executor_task_failures.clone(),
        );
        registry.register(
            "executor_tasks_running",
            "Tasks running on an executor when the newest batch completed (label: executor)",
            m.executor_tasks_running.clone(),
        );
        registry.register(
            "executor_heartbeats",
            "Heartbeats the driver received from an executor process (label: executor)",
            m.executor_heartbeats.clone(),
        );
        registry.register(
            "executor_udf_memory_bytes",
            "Linear memory held by an executor's UDF instances when the newest batch completed (label: executor)",
            m.executor_udf_memory.clone(),
        );
        registry.register(
            "executor_blocks_recomputed",
            "Blocks recomputed because the executor holding them was lost (label: executor)",
            m.executor_blocks_recomputed.clone(),
        );
        registry.register(
            "source_wal_bytes",
            "Bytes of a receiver's write-ahead log on disk when the newest batch was cut (per source)",
            m.source_wal_bytes.clone(),
        );
        registry.register(
            "source_files_read",
            "Files a directory source read since the run started (per source)",
            m.source_files_read.clone(),
        );
        // Series known in advance exist from the start (at 0), so a
        // dashboard sees them before the first checkpoint or recomputation.
        for kind in ["metadata", "state"] {
            drop(m.checkpoint_writes.get_or_create(&vec![("kind".into(), kind.into())]));
            drop(m.checkpoint_failures.get_or_create(&vec![("kind".into(), kind.into())]));
        }
        for d in ["match", "mismatch"] {
            drop(m.blocks_recomputed.get_or_create(&vec![("digest".into(), d.into())]));
        }
        Metrics { registry, ..m }
    }

    pub fn observe(&self, e: &Event) {
        match e {
            Event::BatchCompleted(b) => {
                self.batches.inc();
                if !b.errors.is_empty() {
                    self.batches_failed.inc();
                }
                self.records_in.inc_by(b.records_in);
                let specs = self.output_specs.lock().unwrap_or_else(|p| p.into_inner());
                for o in &b.outputs {
                    // Only the job's outputs (an event log is not trusted).
                    let (Some(spec), Some(n)) = (specs.get(o.index), o.records_out) else { continue };
                    self.records_out.inc_by(n);
                    self.stream_records_out.get_or_create(&output_labels(spec)).inc_by(n);
                }
                drop(specs);
                self.processing.observe(b.processing_ms / 1000.0);
                self.scheduling_delay.observe(b.scheduling_delay_ms / 1000.0);
                self.last_batch_time.set(b.time);
                // Only the job's modules (an event log is not trusted).
                let modules = self.module_names.lock().unwrap_or_else(|p| p.into_inner());
                for u in b.udf_usage.iter().filter(|u| modules.contains(&u.module)) {
                    let labels = vec![("module".to_string(), u.module.clone())];
                    self.udf_calls.get_or_create(&labels).inc_by(u.calls);
                    self.udf_fuel.get_or_create(&labels).inc_by(u.fuel);
                    self.udf_failures.get_or_create(&labels).inc_by(u.failures);
                    self.udf_traps.get_or_create(&labels).inc_by(u.traps);
                }
                // Only the job's sources (an event log is not trusted).
                let known = self.source_names.lock().unwrap_or_else(|p| p.into_inner()).len();
                set_per_source(&self.source_rate_limit, &b.rate_limits, known);
                set_per_source(&self.source_backpressure_rate, &b.backpressure_rates, known);
            }
            Event::JobStarted(j) => {
                // Every source's series exists from the start (at 0).
                for s in &j.sources {
                    drop(self.source_records_in.get_or_create(&source_labels(s.id, &j.sources)));
                }
                for s in j.sources.iter().filter(|s| s.receiver) {
                    let labels = vec![("source".to_string(), s.id.to_string())];
                    drop(self.receiver_reconnects.get_or_create(&labels));
                    drop(self.receiver_connected.get_or_create(&labels));
                }
                *self.source_names.lock().unwrap_or_else(|p| p.into_inner()) = j.sources.clone();
                *self.module_names.lock().unwrap_or_else(|p| p.into_inner()) = j.modules.keys().cloned().collect();
                // Indexed by output index (an event log's are not trusted
                // to be in order).
                let mut specs: Vec<OutputSpecInfo> = j.outputs.clone();
                specs.sort_by_key(|o| o.index);
                specs.retain(|o| o.index < j.outputs.len());
                specs.dedup_by_key(|o| o.index);
                if specs.iter().enumerate().any(|(i, o)| o.index != i) {
                    specs.clear();
                }
                for o in &specs {
                    drop(self.stream_records_out.get_or_create(&output_labels(o)));
                }
                *self.output_specs.lock().unwrap_or_else(|p| p.into_inner()) = specs;
            }
            Event::ReceiverConnected { source, reconnects, .. } if self.known_source(*source) => {
                let labels = vec![("source".to_string(), source.to_string())];
                if *reconnects > 0 {
                    self.receiver_reconnects.get_or_create(&labels).inc();
                }
                self.receiver_connected.get_or_create(&labels).set(1);
            }
            Event::ReceiverDisconnected { source, .. } if self.known_source(*source) => {
                let labels = vec![("source".to_string(), source.to_string())];
                self.receiver_connected.get_or_create(&labels).set(0);
            }
            Event::BatchSubmitted { records_per_source, .. } => {
                let names = self.source_names.lock().unwrap_or_else(|p| p.into_inner());
                for (i, n) in records_per_source.iter().enumerate().take(names.len()) {
                    self.source_records_in.get_or_create(&source_labels(i as u32, &names)).inc_by(*n);
                }
            }
            Event::SourceProgress { source, positions, details, .. } => {
                let known = self.source_names.lock().unwrap_or_else(|p| p.into_inner()).len();
                if (*source as usize) < known {
                    let labels = vec![("source".to_string(), source.to_string())];
                    if let Some(b) = details.as_ref().and_then(|d| d.wal_bytes) {
                        self.source_wal_bytes.get_or_create(&labels).set(b as i64);
                    }
                    if let Some(n) = details.as_ref().and_then(|d| d.files_seen) {
                        // A total since the run started; a counter only goes up.
                        let c = self.source_files_read.get_or_create(&labels);
                        c.inc_by(n.saturating_sub(c.get()));
                    }
                    for p in positions.iter().take(crate::state::MAX_PARTITIONS) {
                        let labels =
                            vec![("source".into(), source.to_string()), ("partition".into(), p.partition.clone())];
                        self.source_lag.get_or_create(&labels).set((p.end - p.next).max(0));
                    }
                }
            }
            Event::TaskRetry { .. } => {
                self.task_retries.inc();
            }
            Event::BlockRecomputed { digest_matches, lost_executor, .. } => {
                let d = if *digest_matches { "match" } else { "mismatch" };
                self.blocks_recomputed.get_or_create(&vec![("digest".into(), d.into())]).inc();
                if let Some(labels) = lost_executor.as_deref().and_then(|e| self.executor_labels(e)) {
                    self.executor_blocks_recomputed.get_or_create(&labels).inc();
                }
            }
            Event::ExecutorsStatus { executors } => {
                for s in executors {
                    let Some(labels) = self.executor_labels(&s.executor) else { continue };
                    // The status carries totals; a counter only goes up.
                    let up = |c: &Counter, total: u64| {
                        c.inc_by(total.saturating_sub(c.get()));
                    };
                    up(&self.executor_tasks.get_or_create(&labels), s.tasks_run);
                    up(&self.executor_task_failures.get_or_create(&labels), s.tasks_failed);
                    self.executor_tasks_running.get_or_create(&labels).set(s.tasks_running as i64);
                    if let Some(h) = s.heartbeats {
                        up(&self.executor_heartbeats.get_or_create(&labels), h);
                    }
                    if let Some(m) = s.udf_memory_bytes {
                        self.executor_udf_memory.get_or_create(&labels).set(m as i64);
                    }
                }
            }
            Event::CheckpointWritten(c) => {
                self.checkpoint_writes.get_or_create(&vec![("kind".into(), c.kind.clone())]).inc();
                self.checkpoint_duration.observe(c.duration_ms / 1000.0);
            }
            Event::CheckpointFailed(c) => {
                self.checkpoint_failures.get_or_create(&vec![("kind".into(), c.kind.clone())]).inc();
            }
            Event::ExecutorAdded { .. } => {
                self.executors_added.inc();
            }
            Event::ExecutorLost { .. } => {
                self.executors_lost.inc();
            }
            Event::ReceiverError { source, .. } => {
                self.receiver_errors.get_or_create(&vec![("source".into(), source.to_string())]).inc();
            }
            Event::ReceiverBadLines { source, action, count, .. }
                if self.known_source(*source) && crate::event::BAD_LINE_ACTIONS.contains(&action.as_str()) =>
            {
                let labels = vec![("source".to_string(), source.to_string()), ("action".to_string(), action.clone())];
                // `count` is a total: the counter goes up to it.
                let c = self.receiver_bad_lines.get_or_create(&labels);
                c.inc_by(count.saturating_sub(c.get()));
            }
            _ => {}
        }
    }

    /// The labels of executor `name`'s series (`driver` for the driver's
    /// threads); `None` past [`MAX_EXECUTOR_SERIES`] executors.
    fn executor_labels(&self, name: &str) -> Option<Labels> {
        let mut names = self.executor_names.lock().unwrap_or_else(|p| p.into_inner());
        if !names.contains(name) {
            if names.len() >= MAX_EXECUTOR_SERIES {
                return None;
            }
            names.insert(name.to_string());
        }
        let label = if name.is_empty() { "driver" } else { name };
        Some(vec![("executor".into(), label.to_string())])
    }

    fn known_source(&self, id: u32) -> bool {
        (id as usize) < self.source_names.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The exposition text (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Sets each of the first `known` sources' gauge in `family` to its value,
/// or removes it where the value is `None` (unbounded, no estimate).
fn set_per_source(family: &Family<Labels, Gauge<f64, AtomicU64>>, values: &[Option<f64>], known: usize) {
    for (i, r) in values.iter().enumerate().take(known) {
        let labels = vec![("source".to_string(), i.to_string())];
        match r {
            Some(r) => {
                family.get_or_create(&labels).set(*r);
            }
            None => {
                family.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BatchRecord, JobInfo, OutputRecord};

    /// Outputs are labelled `kind#index`; an event log of an earlier
    /// version (no kind) takes the description's leading word; an output
    /// the job does not list gets no series.
    #[test]
    fn outputs_are_labelled_by_kind_and_index() {
        let m = Metrics::new();
        let out = |index: usize, stream: u32, description: &str, kind: &str| OutputSpecInfo {
            index,
            stream,
            description: description.into(),
            kind: kind.into(),
        };
        let job = JobInfo {
            outputs: vec![out(0, 3, "print(10)", "print"), out(1, 4, "save_as_text_files(out/x)", "")],
            ..JobInfo::default()
        };
        m.observe(&Event::JobStarted(job));
        let written = |index: usize, n: u64| OutputRecord {
            index,
            description: String::new(),
            stream: None,
            duration_ms: 0.0,
            stages: vec![],
            error: None,
            records_out: Some(n),
        };
        m.observe(&Event::BatchCompleted(BatchRecord {
            time: 1,
            outputs: vec![written(0, 5), written(1, 7), written(2, 1000)],
            ..BatchRecord::default()
        }));
        let text = m.render();
        assert!(text.contains("weir_stream_records_out_total{output=\"print#0\",stream=\"3\"} 5"), "{text}");
        assert!(
            text.contains("weir_stream_records_out_total{output=\"save_as_text_files#1\",stream=\"4\"} 7"),
            "{text}"
        );
        assert_eq!(text.matches("weir_stream_records_out_total{").count(), 2, "{text}");
        assert!(text.contains("weir_records_out_total 12"), "{text}");
    }

    /// UDF figures count per module, traps apart from other failures, and
    /// only for the modules the job loaded (an event log is not trusted).
    #[test]
    fn udf_traps_are_counted_per_known_module() {
        let m = Metrics::new();
        let job = JobInfo { modules: [("ops.wasm".to_string(), "ab".to_string())].into(), ..JobInfo::default() };
        m.observe(&Event::JobStarted(job));
        let usage = |module: &str, failures: u64, traps: u64| weir_plan::task::UdfUsage {
            module: module.into(),
            calls: 10,
            fuel: 100,
            failures,
            traps,
        };
        for t in 1..=2 {
            m.observe(&Event::BatchCompleted(BatchRecord {
                time: t,
                udf_usage: vec![usage("ops.wasm", 3, 2), usage("made-up.wasm", 1, 1)],
                ..BatchRecord::default()
            }));
        }
        let text = m.render();
        assert!(text.contains("weir_udf_traps_total{module=\"ops.wasm\"} 4"), "{text}");
        assert!(text.contains("weir_udf_failures_total{module=\"ops.wasm\"} 6"), "{text}");
        assert!(!text.contains("made-up.wasm"), "{text}");
    }
}
