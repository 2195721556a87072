//! The driver: the batch loop of one job, in named steps. At each batch time
//! it **receives** every source's records (stored as input blocks),
//! **generates** the batch's RDDs from the graph, **runs the outputs** (one
//! job per output operation), **checkpoints** (metadata after every batch,
//! state every checkpoint interval) and **forgets** what no window or state
//! recovery needs any more. Before the first batch it **recovers** from a
//! checkpoint when there is one (`recover.rs`), and re-runs the batches that
//! were generated but not finished — including those whose output failed: a
//! batch is completed only when every output was written.
//!
//! Batch times are multiples of the batch interval. With the `wall` clock the
//! first batch is at the next multiple after the start (`zero time` = first −
//! interval) and each batch waits for its time; with the `logical` clock zero
//! time is 0 and the next batch starts as soon as the previous one is done.
//!
//! What the run does is told to its listeners (`crate::listener`); the
//! driver prints nothing itself.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dag::{DagScheduler, SchedulerMetrics};
use super::options::{Clock, Master, RunOptions};
use super::output_writer::{self, Computed, OutputWriter, Written};
use super::prefetch::{poll_all, Polled};
use crate::checkpoint::{CheckpointDir, CheckpointStats, InputRecord, Metadata};
use crate::cluster::{ClusterBackend, ClusterConfig};
use crate::executor::{BlockStore, ExecutorBackend, LocalExecutors};
use crate::listener::{
    BatchLineage, BatchReport, BatchStarted, BatchSubmitted, ListenerBus, OutputOpInfo, SourceProgress, UdfUsage,
};
use crate::rdd::{BlockId, Rdd, RddId, RddOp};
use crate::sink::Sink;
use crate::source::Source;
use crate::udf::ModuleRegistry;
use crate::EngineError;
use weir_plan::graph::{generate, Generated, Graph, NodeOp};
use weir_plan::rate::PidRateEstimator;

/// What a run did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunReport {
    /// The newest batches (at most `RunOptions::report_history`).
    pub batches: VecDeque<BatchReport>,
    /// Batches run in all (also those no longer in `batches`).
    pub batches_run: u64,
    /// Batches in which an output operation failed, in all.
    pub batches_failed: u64,
    pub metrics: SchedulerMetrics,
    /// The checkpoint writer's counters (with a checkpoint directory).
    pub checkpoint: Option<CheckpointStats>,
}

impl RunReport {
    /// The retained batches that failed.
    pub fn failed_batches(&self) -> impl Iterator<Item = &BatchReport> {
        self.batches.iter().filter(|b| !b.errors.is_empty())
    }

    fn push(&mut self, b: BatchReport, keep: usize) {
        self.batches_run += 1;
        if !b.errors.is_empty() {
            self.batches_failed += 1;
        }
        self.batches.push_back(b);
        while self.batches.len() > keep.max(1) {
            self.batches.pop_front();
        }
    }
}

/// A job ready to run: its graph and everything it owns.
pub struct Job {
    pub graph: Graph,
    /// The job's identity in checkpoints (the job file's SHA-256).
    pub job_hash: String,
    pub job_name: String,
    /// Module file name -> SHA-256, for checkpoints.
    pub modules: BTreeMap<String, String>,
    /// What its checkpoints' state depends on (empty without checkpoints).
    pub identity: weir_plan::identity::JobIdentity,
    /// Relative paths in the job (sources, outputs) resolve against this.
    pub base_dir: PathBuf,
    pub registry: Arc<ModuleRegistry>,
    /// The job's outputs, in the graph's order, ready to write.
    pub sinks: Vec<Arc<dyn Sink>>,
    /// Sources the embedder made (`SourceSpec::Custom { id }` indexes here).
    pub custom_sources: Vec<Option<Box<dyn Source>>>,
}

/// Where the batch loop is: what it has recorded and what it must re-run.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) zero_time: i64,
    /// Each batch's input, as recorded (what a re-run reads again).
    pub(super) inputs: BTreeMap<i64, Vec<InputRecord>>,
    /// Generated but not finished.
    pub(super) pending: Vec<i64>,
    pub(super) last_completed: Option<i64>,
    /// Batches to re-run after recovery, oldest first.
    pub(super) replay: VecDeque<i64>,
    /// The number of the newest batch generated (time = zero + k·interval).
    pub(super) k: i64,
}

impl Progress {
    /// The oldest batch generated but not finished (running or failed).
    pub(super) fn oldest_pending(&self) -> Option<i64> {
        self.pending.iter().min().copied()
    }
}

/// A running job: its sources, scheduler, checkpoint and progress.
pub struct Driver {
    pub(super) job: Job,
    pub(super) opts: RunOptions,
    pub(super) ckpt: Option<CheckpointDir>,
    pub(super) sources: Vec<Box<dyn Source>>,
    /// Source index -> the graph node of its input stream.
    pub(super) source_nodes: BTreeMap<u32, u32>,
    pub(super) blocks: Arc<BlockStore>,
    pub(super) dag: DagScheduler,
    pub(super) memo: Generated,
    pub(super) progress: Progress,
    pub(super) listeners: ListenerBus,
    report: RunReport,
    explained: bool,
    /// When the lineage was last shown to a listener that asks for it.
    lineage_shown: Option<Instant>,
    /// A graceful stop's last batch has been generated.
    drained: bool,
    /// With the logical clock, how long to wait before the next batch after
    /// empty ones (grows while the sources stay empty, reset by a record).
    pub(super) idle: Duration,
    /// The next batch's input, read while this batch ran (`prefetch.rs`).
    pub(super) prefetched: Option<super::prefetch::Prefetched>,
    /// Writes batches' outputs while the next batch computes.
    writer: Option<OutputWriter>,
    /// Batches computed whose outputs are being written, oldest first.
    in_flight: VecDeque<InFlight>,
    /// `DStream::slice` requests, served between batches.
    pub(super) slices: super::slice::SliceQueue,
    /// The latest batch time generated.
    pub(super) latest: Option<i64>,
    /// RDDs before this time are forgotten (see `forget`).
    pub(super) horizon: i64,
    /// The newest output error (named when too many batches are pending).
    last_output_error: Option<String>,
    /// Per source: its backpressure estimator and the rate limit in force.
    rates: Vec<RateControl>,
    /// Executor losses counted in batch reports so far.
    lost_reported: u64,
}

/// One source's rate controller (Spark's `RateController`): fed each
/// completed batch, it sets the source's rate limit.
struct RateControl {
    /// With backpressure only.
    estimator: Option<PidRateEstimator>,
    /// Records per second the source may take now (`None`: unbounded).
    limit: Option<f64>,
    /// Backpressure's newest estimate (records per second), before `[rate]
    /// max` bounds it; `None` before the first.
    estimate: Option<f64>,
}

/// Batches whose writes may be in flight while the next batch computes:
/// the writer thread shares the cores with the executors, so it may fall a
/// batch behind and catch up in the next batch instead of holding the
/// executors idle at every batch's end (`output_writer.rs`).
const WRITES_IN_FLIGHT: usize = 2;
/// How often, and in how many lines per output, listeners that ask for it
/// are shown the lineage.
const LINEAGE_EVERY: Duration = Duration::from_secs(1);
const LINEAGE_LINES: usize = 200;

/// The longest wait between empty batches with the logical clock.
const MAX_IDLE: Duration = Duration::from_millis(200);

pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Driver {
    /// Checks the job can run, opens its checkpoint, sources and executors,
    /// and recovers from the checkpoint when it holds one.
    pub fn new(mut job: Job, opts: RunOptions) -> Result<Self, EngineError> {
        let g = &job.graph;
        let stateful: Vec<&str> = g.nodes.iter().filter(|n| n.op.is_stateful()).map(|n| n.label.as_str()).collect();
        if !stateful.is_empty() && opts.checkpoint.is_none() && !opts.allow_state_without_checkpoint {
            return Err(EngineError::Graph(format!(
                "{} keep state across batches, so the job needs a checkpoint directory (--checkpoint DIR): \
                 without one a driver crash would lose the state, and its lineage would grow without bound",
                stateful.join(", ")
            )));
        }
        if let Some(root) = &opts.source_root {
            super::recover::confine_directory_sources(&mut job, root);
        }
        if let Some(root) = &opts.output_root {
            super::recover::confine_outputs(&mut job, root);
        }
        let listeners = ListenerBus::new(opts.listeners.clone());
        let (ckpt, recovered) = super::recover::open_checkpoint(&job, &opts, &listeners)?;
        let sources = super::recover::open_sources(&mut job, ckpt.as_ref(), &listeners)?;
        let source_nodes = job
            .graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                NodeOp::Source { source } => Some((source, n.id)),
                _ => None,
            })
            .collect();
        let blocks = match opts.pool.as_ref().and_then(|p| p.block_budget()) {
            Some(b) => BlockStore::with_budget(b.clone()),
            None => BlockStore::new(),
        };
        let dag = start_executors(&job, &opts, &blocks, &listeners)?;
        let zero_time = match opts.clock {
            Clock::Logical => 0,
            Clock::Wall => (now_ms() / job.graph.batch_interval_ms) * job.graph.batch_interval_ms,
        };
        let rate = job.graph.rate;
        let mut sources = sources;
        let rates = sources
            .iter_mut()
            .map(|s| {
                let limit = rate.effective(None);
                s.set_rate_limit(limit);
                RateControl {
                    estimator: rate.backpressure.then(|| rate.estimator(job.graph.batch_interval_ms)),
                    limit,
                    estimate: None,
                }
            })
            .collect();
        let mut d = Driver {
            job,
            opts,
            ckpt,
            sources,
            source_nodes,
            blocks,
            dag,
            memo: Generated::default(),
            progress: Progress { zero_time, ..Progress::default() },
            listeners,
            report: RunReport::default(),
            explained: false,
            lineage_shown: None,
            drained: false,
            idle: Duration::ZERO,
            prefetched: None,
            writer: None,
            in_flight: VecDeque::new(),
            slices: Default::default(),
            latest: None,
            horizon: i64::MIN,
            last_output_error: None,
            rates,
            lost_reported: 0,
        };
        d.recover(recovered)?;
        Ok(d)
    }

    /// Runs batches until the sources are exhausted (logical clock), the
    /// batch limit is reached, or the stop flag is set.
    pub fn run(self) -> Result<RunReport, EngineError> {
        let slices = self.slices.clone();
        let r = self.run_batches();
        slices.end();
        r
    }

    fn run_batches(mut self) -> Result<RunReport, EngineError> {
        let mut ran: u64 = 0;
        while let Some((time, replayed)) = self.next_batch(ran) {
            self.serve_slices();
            ran += 1;
            let scheduling_delay = match self.opts.clock {
                Clock::Wall => Duration::from_millis((now_ms() - time).max(0) as u64),
                Clock::Logical => Duration::ZERO,
            };
            self.listeners.emit(|l| l.on_batch_started(&BatchStarted { time, scheduling_delay }));
            let started = Instant::now();
            let mut before = self.dag.metrics.clone();
            // An executor lost between batches counts in the next batch's report.
            before.executors_lost = self.lost_reported;
            let (input_partitions, per_source) = match self.receive(time, replayed) {
                Ok(r) => r,
                Err(e) => {
                    self.finish_written();
                    return Err(e);
                }
            };
            let records_in = per_source.iter().sum();
            self.note_idle(records_in, replayed);
            let outs = self.generate(time, &per_source, replayed, &input_partitions);
            let computed = self.run_outputs_prefetching(time, &outs, ran);
            // The previous batches' writes overlapped this batch's jobs.
            self.finish_written_to(WRITES_IN_FLIGHT - 1);
            let after = self.dag.metrics.clone();
            self.lost_reported = after.executors_lost;
            let per_source = self.progress.inputs.get(&time).map(|r| r.iter().map(|i| i.records).collect());
            let rate_limits = self.rates.iter().map(|r| r.limit).collect();
            let backpressure_rates = self.rates.iter().map(|r| r.estimate).collect();
            let batch = InFlight {
                time,
                records_in,
                started,
                scheduling_delay,
                before,
                after,
                outs,
                replayed,
                per_source: per_source.unwrap_or_default(),
                rate_limits,
                backpressure_rates,
            };
            self.write_outputs(batch, computed);
            if let Err(e) = self.check_pending().and_then(|()| self.check_fence()) {
                self.finish_written();
                if let Some(c) = &self.ckpt {
                    c.flush();
                }
                return Err(e);
            }
        }
        self.finish_written();
        if let Some(c) = &self.ckpt {
            c.flush();
            self.report.checkpoint = Some(c.stats());
        }
        self.check_fence()?;
        self.report.metrics = self.dag.metrics.clone();
        Ok(self.report)
    }

    /// A driver whose checkpoint location another driver took over (a
    /// newer epoch) stops: its commits are refused, so nothing it computes
    /// would be recorded.
    fn check_fence(&self) -> Result<(), EngineError> {
        match self.ckpt.as_ref().and_then(|c| c.fence().fenced()) {
            Some(f) => Err(f.into()),
            None => Ok(()),
        }
    }

    /// Hands a computed batch's outputs to the writer. Test hooks that look
    /// at a batch right after it need its writes done before the next one
    /// starts, so then (and if the writer cannot start) it waits for them.
    fn write_outputs(&mut self, batch: InFlight, computed: Vec<Computed>) {
        if self.writer.is_none() {
            let fence = self.ckpt.as_ref().map(|c| c.fence());
            match OutputWriter::start(self.opts.output_retries, self.opts.output_retry_backoff, fence) {
                Ok(w) => self.writer = Some(w),
                Err(e) => tracing::warn!("cannot start the output writer thread ({e}); writing outputs in line"),
            }
        }
        let time = batch.time;
        self.in_flight.push_back(batch);
        match self.writer.as_mut() {
            Some(w) => {
                if let Some(done) = w.submit(time, computed) {
                    self.complete_batch(done);
                }
            }
            None => {
                let fence = self.ckpt.as_ref().map(|c| c.fence());
                let (retries, backoff) = (self.opts.output_retries, self.opts.output_retry_backoff);
                let done = output_writer::write_now(time, computed, retries, backoff, fence.as_deref());
                self.complete_batch(done);
            }
        }
        #[cfg(feature = "test-hooks")]
        if self.opts.after_batch.is_some() {
            self.finish_written();
        }
    }

    /// Batches left pending by failed outputs are bounded: each keeps its
    /// input (and, with a checkpoint, the lineage and input blocks back to the
    /// oldest, which every metadata checkpoint lists), so past
    /// `max_pending_batches` the run stops rather than grow without bound. A
    /// restart with the same checkpoint re-runs them.
    fn check_pending(&self) -> Result<(), EngineError> {
        let p = &self.progress;
        let failed: Vec<i64> =
            p.pending.iter().copied().filter(|t| !self.in_flight.iter().any(|b| b.time == *t)).collect();
        if failed.len() <= self.opts.max_pending_batches {
            return Ok(());
        }
        let (oldest, newest) = (failed.iter().min().copied().unwrap_or(0), failed.iter().max().copied().unwrap_or(0));
        Err(EngineError::Sink(crate::sink::SinkError::TooManyPending {
            count: failed.len(),
            limit: self.opts.max_pending_batches,
            oldest,
            newest,
            last: self.last_output_error.clone().unwrap_or_default(),
        }))
    }

    /// Waits for the batches whose writes are in flight, and completes them.
    fn finish_written(&mut self) {
        self.finish_written_to(0);
    }

    /// Waits for the oldest batches whose writes are in flight until at
    /// most `keep` are, and completes them.
    fn finish_written_to(&mut self, keep: usize) {
        while self.in_flight.len() > keep {
            let done = self.writer.as_mut().and_then(|w| w.take());
            let done = done.unwrap_or_else(|| {
                let time = self.in_flight.front().map_or(0, |b| b.time);
                let mut info = OutputOpInfo::new(0, "outputs".into());
                info.error = Some(format!("the output writer stopped before batch {time} ms was written"));
                Written { time, outputs: vec![info], finished: Instant::now() }
            });
            self.complete_batch(done);
        }
    }

    /// The end of a batch whose outputs were written: completed (or left
    /// pending), checkpointed, reported, and what it no longer needs forgotten.
    fn complete_batch(&mut self, done: Written) {
        let Some(b) = self.in_flight.pop_front() else { return };
        debug_assert_eq!(b.time, done.time);
        let time = b.time;
        if let Some(e) = done.outputs.iter().find_map(|o| o.error.as_ref()) {
            self.last_output_error = Some(e.clone());
        }
        self.complete(time, done.outputs.iter().any(|o| o.error.is_some()));
        self.checkpoint(time);
        let report = batch_report(&b, &done);
        self.estimate_rates(&b, &report);
        if !self.listeners.is_empty() {
            let status = self.dag.executors_status();
            self.listeners.emit(|l| l.on_executors_status(&status));
        }
        self.listeners.emit(|l| l.on_batch_completed(&report));
        self.report.push(report, self.opts.report_history);
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &self.opts.after_batch {
            (hook.lock().unwrap_or_else(|p| p.into_inner()))(&mut self.dag, time, &b.outs);
        }
        self.forget(time);
    }

    /// Whether any source's intake is bounded: a `[rate] max` or
    /// backpressure's estimate.
    pub(super) fn rate_controlled(&self) -> bool {
        self.rates.iter().any(|r| r.estimator.is_some() || r.limit.is_some())
    }

    /// Backpressure: feeds each source's estimator with the batch and gives
    /// the source its new limit. A re-run batch is not fed: its input was
    /// taken before this run (at another rate), and its scheduling delay
    /// counts from a batch time in the past. The estimator's clock is the
    /// batch time (Spark uses the processing end time; only the derivative
    /// term, off by default, looks at it), so no wall clock enters it.
    fn estimate_rates(&mut self, b: &InFlight, report: &BatchReport) {
        if b.replayed {
            return;
        }
        let rate = self.job.graph.rate;
        let processing = report.processing.as_millis() as u64;
        let scheduling = report.scheduling_delay.as_millis() as u64;
        for (i, c) in self.rates.iter_mut().enumerate() {
            let Some(e) = c.estimator.as_mut() else { continue };
            let n = b.per_source.get(i).copied().unwrap_or(0);
            let Some(estimate) = e.compute(b.time, n, processing, scheduling) else { continue };
            c.estimate = Some(estimate);
            let limit = rate.effective(Some(estimate));
            tracing::debug!(source = i, estimate, ?limit, "backpressure: new rate estimate");
            if limit != c.limit {
                c.limit = limit;
                if let Some(s) = self.sources.get_mut(i) {
                    s.set_rate_limit(limit);
                }
            }
        }
    }

    /// The next batch's time and whether it is a re-run, or `None` when the
    /// run is over. With the wall clock, waits for the batch's time.
    fn next_batch(&mut self, ran: u64) -> Option<(i64, bool)> {
        if self.opts.max_batches.is_some_and(|m| ran >= m) {
            return None;
        }
        let stop = &self.opts.stop;
        if stop.is_requested() && !stop.is_graceful() {
            return None;
        }
        if let Some(t) = self.progress.replay.pop_front() {
            return Some((t, true));
        }
        if stop.is_requested() {
            // Graceful: one last batch takes what the sources hold, unless
            // it was already taken after the request. (A batch whose input
            // was read early, before the request, runs first.)
            if self.drained {
                return None;
            }
            self.drained = self.prefetched.is_none();
        }
        let finite = self.opts.clock == Clock::Logical && !self.sources.is_empty();
        if finite && self.prefetched.is_none() && self.sources.iter().all(|s| s.exhausted()) {
            return None;
        }
        self.progress.k += 1;
        let time = self.progress.zero_time + self.progress.k * self.job.graph.batch_interval_ms;
        if self.opts.clock == Clock::Wall && !self.drained {
            // Ahead of time: the last batch completes now, not after the wait.
            self.finish_written();
            let wait = time - now_ms();
            if wait > 0 {
                // Executors lost meanwhile show as lost at once.
                self.dag.idle_until(Instant::now() + Duration::from_millis(wait as u64));
            }
        } else if !self.idle.is_zero() && !self.drained {
            self.finish_written();
            // Logical clock, sources with nothing to give: a short backoff
            // instead of thousands of empty batches a second.
            self.dag.idle_until(Instant::now() + self.idle);
        }
        Some((time, false))
    }

    /// Grows the logical clock's idle backoff after an empty batch of a source
    /// that may still give records, and resets it when records come.
    fn note_idle(&mut self, records_in: u64, replayed: bool) {
        let waiting = self.sources.iter().any(|s| s.waits_for_input() && !s.exhausted());
        self.idle = if records_in > 0 || replayed || !waiting || self.opts.clock == Clock::Wall {
            Duration::ZERO
        } else {
            (self.idle * 2).clamp(Duration::from_millis(1), MAX_IDLE)
        };
    }

    /// Receive: each source's batch becomes the input RDD's blocks (a re-run
    /// batch already has them, read again from its record). Returns the
    /// partitions of each source's input and the records each source gave.
    fn receive(&mut self, time: i64, replayed: bool) -> Result<(BTreeMap<u32, u32>, Vec<u64>), EngineError> {
        let mut input_partitions = BTreeMap::new();
        let mut per_source = Vec::with_capacity(self.sources.len());
        if replayed {
            for (i, rec) in self.progress.inputs.get(&time).into_iter().flatten().enumerate() {
                input_partitions.insert(i as u32, rec.partitions);
                per_source.push(rec.records);
            }
            return Ok((input_partitions, per_source));
        }
        let polled = match self.take_prefetched(time)? {
            Some(p) => p,
            None => {
                let wall = self.opts.clock == Clock::Wall;
                let details = !self.listeners.is_empty();
                poll_all(&mut self.sources, time, wall, self.job.graph.parallelism, details)?
            }
        };
        let mut recs = Vec::new();
        for (i, Polled { parts, descriptor, positions, details }) in polled.into_iter().enumerate() {
            let n = records_in_partitions(&parts);
            per_source.push(n);
            if !positions.is_empty() || details.is_some() {
                let e = SourceProgress { source: i as u32, time, positions, details };
                self.listeners.emit(|l| l.on_source_progress(&e));
            }
            let partitions = match self.source_nodes.get(&(i as u32)) {
                Some(&node) => self.store_input(time, node, i as u32, parts)?.partitions,
                None => 1,
            };
            input_partitions.insert(i as u32, partitions);
            recs.push(InputRecord { partitions, records: n, descriptor });
        }
        self.progress.inputs.insert(time, recs);
        self.progress.pending.push(time);
        Ok((input_partitions, per_source))
    }

    /// Generate: the batch's RDDs from the graph. Its inputs are recorded in
    /// the metadata checkpoint before it runs.
    fn generate(
        &mut self,
        time: i64,
        per_source: &[u64],
        replayed: bool,
        input_partitions: &BTreeMap<u32, u32>,
    ) -> Vec<Option<RddId>> {
        let g = &self.job.graph;
        let outs = generate(g, self.progress.zero_time, time, input_partitions, &mut self.memo, &mut self.dag.lineage);
        self.latest = Some(self.latest.map_or(time, |l| l.max(time)));
        if let Some(c) = &self.ckpt {
            c.write_metadata_until(self.snapshot(), self.progress.oldest_pending());
        }
        let mut plans = Vec::new();
        if self.opts.explain && !self.explained {
            self.explained = true;
            for (o, r) in g.outputs.iter().zip(&outs) {
                if let Some(r) = r {
                    plans.push((format!("{:?}", o.spec), self.dag.lineage.explain(*r)));
                }
            }
        }
        self.show_lineage(time, &outs);
        let records_in = per_source.iter().sum();
        let e = BatchSubmitted { time, records_in, records_per_source: per_source.to_vec(), replayed, plans };
        self.listeners.emit(|l| l.on_batch_submitted(&e));
        outs
    }

    /// The outputs' lineage, to listeners that ask for it (a status page),
    /// at most once a second and bounded in size.
    fn show_lineage(&mut self, time: i64, outs: &[Option<RddId>]) {
        if !self.listeners.wants_lineage() || self.lineage_shown.is_some_and(|t| t.elapsed() < LINEAGE_EVERY) {
            return;
        }
        self.lineage_shown = Some(Instant::now());
        let plans: Vec<(String, String)> = (self.job.graph.outputs.iter().zip(outs))
            .filter_map(|(o, r)| {
                Some((format!("{:?}", o.spec), self.dag.lineage.explain_bounded((*r)?, LINEAGE_LINES)))
            })
            .collect();
        let e = BatchLineage { time, plans };
        self.listeners.emit(|l| l.on_batch_lineage(&e));
    }

    /// A batch whose outputs all succeeded is completed; one whose output
    /// failed stays pending (the checkpoint says so, and a restart re-runs
    /// it), while later batches go on as in Spark.
    fn complete(&mut self, time: i64, failed: bool) {
        let p = &mut self.progress;
        if failed {
            if !p.pending.contains(&time) {
                p.pending.push(time);
                p.pending.sort_unstable();
            }
            tracing::warn!("batch {time} ms stays pending: an output failed; a restart re-runs it");
            return;
        }
        p.pending.retain(|t| *t != time);
        p.last_completed = Some(p.last_completed.map_or(time, |l| l.max(time)));
    }

    /// Run outputs: one job per output operation, its result to be handed
    /// to the output's sink (by the writer). A failed output fails the
    /// batch, not the run.
    pub(super) fn run_outputs(&mut self, time: i64, outs: &[Option<RddId>]) -> Vec<Computed> {
        let g = &self.job.graph;
        let mut computed = Vec::new();
        for (index, (o, r)) in g.outputs.iter().zip(outs.iter().copied()).enumerate() {
            let started = Instant::now();
            let mut info = OutputOpInfo::new(index, format!("{:?}", o.spec));
            info.stream = o.node;
            let mut write = None;
            match r {
                Some(rdd) => {
                    tracing::debug!("batch {time} ms, output {:?}:\n{}", o.spec, self.dag.lineage.explain(rdd));
                    let result = self.dag.run_job(rdd).map_err(|e| e.to_string());
                    // The writer clears it if the write fails.
                    info.records_out = result.as_ref().ok().map(|parts| records_in_partitions(parts));
                    write = Some((self.job.sinks.get(index).cloned(), result));
                }
                None => {
                    // No RDD at one of the stream's own times: something it
                    // depends on (an input, a state) is lost — say so.
                    let n = g.node(o.node);
                    if (time - self.progress.zero_time) % n.slide_ms == 0 {
                        info.error = Some(format!(
                            "{}: cannot be computed at {time} ms: an input or state it needs is lost (see the log)",
                            n.label
                        ));
                    }
                }
            }
            info.stages = self.dag.take_stages();
            computed.push(Computed { info, started, write });
        }
        computed
    }

    /// Checkpoint: state RDDs due at this time (data checkpoints), then the
    /// metadata (this batch is finished, or pending if it failed).
    fn checkpoint(&mut self, time: i64) {
        let Some(c) = &self.ckpt else { return };
        let g = &self.job.graph;
        for n in g.nodes.iter().filter(|n| n.op.is_stateful()) {
            let Some(every) = n.checkpoint_ms else { continue };
            if (time - self.progress.zero_time) % every != 0 {
                continue;
            }
            let id = RddId { time, node: n.id };
            if self.dag.lineage.get(id).is_none() {
                continue;
            }
            match self.dag.run_job(id) {
                Ok(parts) => {
                    // The job-file name of the stream, for messages.
                    let stateful = self.job.identity.stateful.iter().find(|s| s.node == n.id);
                    let name = stateful.map_or_else(|| n.label.clone(), |s| s.display_name());
                    c.write_state(n.id, &name, time, parts.into_iter().map(Arc::new).collect())
                }
                Err(e) => tracing::warn!("cannot take a data checkpoint of {} at {time} ms: {e}", n.label),
            }
        }
        // Stages run for the checkpoint are not any output's.
        self.dag.take_stages();
        c.write_metadata_until(self.snapshot(), self.progress.oldest_pending());
    }

    /// Forget what no window needs and no state recovery can need: lineage
    /// and inputs go back to the newest durable data checkpoint of every
    /// stateful stream (at or before the oldest pending batch, which a
    /// restart re-runs from there), which truncates their lineage.
    fn forget(&mut self, time: i64) {
        let g = &self.job.graph;
        let mut horizon = time - g.remember_ms();
        if let Some(c) = &self.ckpt {
            let durable = c.durable_state_until(self.progress.oldest_pending());
            for n in g.nodes.iter().filter(|n| n.op.is_stateful()) {
                match durable.get(&n.id) {
                    Some(r) => {
                        horizon = horizon.min(r.time - n.op.lookback_ms());
                        let id = RddId { time: r.time, node: n.id };
                        if let Some(rdd) = self.dag.lineage.rdds.get_mut(&id) {
                            rdd.op = RddOp::Checkpointed { path: c.state_path(&r.file), bounds: g.checkpoint };
                        }
                    }
                    None => horizon = horizon.min(self.progress.zero_time + 1),
                }
            }
        }
        self.horizon = horizon;
        self.memo.forget_before(horizon);
        self.dag.forget_before(horizon);
        let p = &mut self.progress;
        p.inputs.retain(|t, _| *t >= horizon || p.pending.contains(t));
    }

    /// Stores a source's partitions as the blocks of its input RDD at `time`.
    pub(super) fn store_input(
        &mut self,
        time: i64,
        node: u32,
        source: u32,
        parts: Vec<Vec<u8>>,
    ) -> Result<Rdd, EngineError> {
        let id = RddId { time, node };
        let rdd = Rdd {
            id,
            partitions: parts.len() as u32,
            op: RddOp::Input { source },
            persist: true,
            label: format!("input of source {source}"),
        };
        for (p, data) in parts.into_iter().enumerate() {
            let bid = BlockId::Rdd { rdd: id, partition: p as u32 };
            let digest = crate::rdd::digest(&data);
            self.blocks.put(bid, Arc::new(data)).map_err(|error| EngineError::OverBudget {
                time,
                source_index: source,
                error,
            })?;
            self.dag.register_block(bid, digest);
        }
        Ok(rdd)
    }

    /// The metadata checkpoint of where the run is now.
    pub(super) fn snapshot(&self) -> Metadata {
        let p = &self.progress;
        Metadata {
            seq: 0,
            job_hash: self.job.job_hash.clone(),
            job: self.job.job_name.clone(),
            modules: self.job.modules.clone(),
            batch_interval_ms: self.job.graph.batch_interval_ms,
            zero_time: p.zero_time,
            last_completed: p.last_completed,
            pending: p.pending.clone(),
            inputs: p.inputs.clone(),
            cursors: self.cursors(),
            state: BTreeMap::new(),
            identity: Some(self.job.identity.clone()),
        }
    }
}

/// A batch computed, whose outputs are being written.
struct InFlight {
    time: i64,
    records_in: u64,
    started: Instant,
    scheduling_delay: Duration,
    /// The scheduler's counters before and after the batch's jobs.
    before: SchedulerMetrics,
    after: SchedulerMetrics,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    outs: Vec<Option<RddId>>,
    /// A batch re-run after recovery.
    replayed: bool,
    /// Records taken from each source.
    per_source: Vec<u64>,
    /// Each source's rate limit when the batch took its records.
    rate_limits: Vec<Option<f64>>,
    /// Each source's backpressure estimate then.
    backpressure_rates: Vec<Option<f64>>,
}

fn batch_report(b: &InFlight, done: &Written) -> BatchReport {
    let (m, before) = (&b.after, &b.before);
    BatchReport {
        time: b.time,
        records_in: b.records_in,
        records_per_source: b.per_source.clone(),
        processing: done.finished.saturating_duration_since(b.started),
        scheduling_delay: b.scheduling_delay,
        errors: done.outputs.iter().filter_map(|o| o.error.clone()).collect(),
        outputs: done.outputs.clone(),
        executors_lost: m.executors_lost - before.executors_lost,
        map_tasks_recomputed: m.map_tasks_recomputed - before.map_tasks_recomputed,
        blocks_recomputed: m.blocks_recomputed - before.blocks_recomputed,
        tasks_resubmitted: m.tasks_resubmitted - before.tasks_resubmitted,
        rate_limits: b.rate_limits.clone(),
        backpressure_rates: b.backpressure_rates.clone(),
        udf_usage: usage_between(&before.udf, &m.udf),
    }
}

/// Records in a job's result: each partition is an encoded batch whose
/// header counts its records (an empty partition may be no bytes at all).
fn records_in_partitions(parts: &[Vec<u8>]) -> u64 {
    parts.iter().map(|p| weir_codec::Records::new(p).map_or(0, |r| u64::from(r.remaining()))).sum()
}

/// The UDF usage of the modules between two snapshots of the counters.
fn usage_between(before: &BTreeMap<String, UdfUsage>, after: &BTreeMap<String, UdfUsage>) -> Vec<UdfUsage> {
    let zero = UdfUsage::default();
    after
        .values()
        .map(|a| {
            let b = before.get(&a.module).unwrap_or(&zero);
            UdfUsage {
                module: a.module.clone(),
                calls: a.calls.saturating_sub(b.calls),
                fuel: a.fuel.saturating_sub(b.fuel),
                failures: a.failures.saturating_sub(b.failures),
                traps: a.traps.saturating_sub(b.traps),
            }
        })
        .filter(|u| u.calls > 0 || u.failures > 0)
        .collect()
}

/// Starts the executors `opts.master` asks for (or joins `opts.pool`), and
/// the scheduler over them.
fn start_executors(
    job: &Job,
    opts: &RunOptions,
    blocks: &Arc<BlockStore>,
    listeners: &ListenerBus,
) -> Result<DagScheduler, EngineError> {
    if let Some(pool) = &opts.pool {
        let (b, r) = pool.executors(job.registry.clone(), blocks.clone()).map_err(|e| {
            EngineError::Executor(format!("cannot join the shared executor pool as tenant {}: {e}", pool.tenant()))
        })?;
        let mut dag = DagScheduler::new(b, r);
        dag.listeners = listeners.clone();
        dag.announce_live_executors();
        return Ok(dag);
    }
    let (backend, results): (Box<dyn ExecutorBackend>, _) = match opts.master {
        Master::Local(slots) => {
            let (b, r) = LocalExecutors::start(slots, job.registry.clone(), blocks.clone())
                .map_err(|e| EngineError::Executor(format!("cannot start executor threads: {e}")))?;
            (Box::new(b), r)
        }
        Master::LocalCluster { .. } | Master::Cluster { .. } => {
            let (local_executors, cores, wait_for) = match opts.master {
                Master::LocalCluster { executors, cores } => (executors, cores, 0),
                Master::Cluster { executors } => (0, 1, executors),
                Master::Local(_) => (0, 1, 0),
            };
            let cfg = ClusterConfig {
                local_executors,
                cores,
                listen: opts.cluster.listen.clone(),
                wait_for,
                secret: opts.cluster.secret.clone(),
                heartbeat_timeout: opts.cluster.heartbeat_timeout,
                no_executor_timeout: opts.cluster.no_executor_timeout,
                executor_binary: opts.cluster.executor_binary.clone(),
                listeners: listeners.clone(),
                locality_wait: crate::cluster::DEFAULT_LOCALITY_WAIT,
                max_frame: opts.cluster.max_frame_bytes,
            };
            let (b, r) = ClusterBackend::start(&cfg, job.registry.clone(), blocks.clone())
                .map_err(|e| EngineError::Executor(format!("cannot start the cluster: {e}")))?;
            (Box::new(b), r)
        }
    };
    let mut dag = DagScheduler::new(backend, results);
    dag.listeners = listeners.clone();
    dag.announce_live_executors();
    Ok(dag)
}
