//! The job generator: the batch loop. At each batch time it asks every source
//! for its records (stored as input blocks), generates the batch's RDDs from
//! the graph, runs one job per output operation, reports progress, and
//! forgets what no window needs any more.
//!
//! Batch times are multiples of the batch interval. With the `wall` clock the
//! first batch is at the next multiple after the start (`zero time` = first −
//! interval) and each batch waits for its time; with the `logical` clock zero
//! time is 0 and the next batch starts as soon as the previous one is done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_codec::Records;

use super::dag::{DagScheduler, SchedulerMetrics};
use crate::checkpoint::{self, CheckpointDir, CheckpointError, CheckpointStats, InputRecord, Metadata};
use crate::cluster::{ClusterBackend, ClusterConfig};
use crate::dstream::graph::{generate, register, Generated, Graph, NodeOp};
use crate::executor::{BlockStore, ExecutorBackend, LocalExecutors};
use crate::rdd::{BlockId, Rdd, RddId, RddOp};
use crate::sink::{self, Collected, ForeachRdd, OutputSpec};
use crate::source::{self, Source};
use crate::udf::ModuleRegistry;
use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Wall,
    Logical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Master {
    /// N executor threads in this process.
    Local(usize),
    /// `executors` executor processes on this machine, `cores` tasks each.
    LocalCluster { executors: u32, cores: u32 },
    /// Wait for `executors` executors to join from anywhere (`--listen`).
    Cluster { executors: u32 },
}

impl std::str::FromStr for Master {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("unknown master {s:?}: expected local, local[N], local[*], local-cluster[N], local-cluster[N,CORES] or cluster[N]")
        };
        if s == "local" {
            return Ok(Master::Local(1));
        }
        let args = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(']'));
        let num = |x: &str| x.trim().parse::<u32>().ok().filter(|n| *n > 0);
        if let Some(inner) = args("local-cluster[") {
            let mut it = inner.split(',');
            let executors = it.next().and_then(num).ok_or_else(bad)?;
            let cores = match it.next() {
                Some(c) => num(c).ok_or_else(bad)?,
                None => 1,
            };
            return Ok(Master::LocalCluster { executors, cores });
        }
        if let Some(inner) = args("cluster[") {
            return Ok(Master::Cluster { executors: num(inner).ok_or_else(bad)? });
        }
        let inner = args("local[").ok_or_else(bad)?;
        if inner == "*" {
            return Ok(Master::Local(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)));
        }
        match inner.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Master::Local(n)),
            _ => Err(bad()),
        }
    }
}

/// How to run a job.
#[derive(Clone)]
pub struct RunOptions {
    pub master: Master,
    pub clock: Clock,
    /// Stop after this many batches.
    pub max_batches: Option<u64>,
    /// Print each output's lineage before its first batch.
    pub explain: bool,
    /// One progress line per batch on stderr.
    pub progress: bool,
    /// Set to stop after the batch in flight (Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Called after each batch with the scheduler and the batch's output RDDs
    /// (tests use it to drop blocks and recompute them).
    pub after_batch: Option<AfterBatch>,
    /// Checkpoint and recover through this directory.
    pub checkpoint: Option<CheckpointOptions>,
    /// For executor processes: where to listen, the secret, the heartbeat timeout.
    pub cluster: ClusterOptions,
    /// Benchmarks only: run stateful streams without a checkpoint directory
    /// (state lives in memory; a crash loses it).
    pub allow_state_without_checkpoint: bool,
}

/// Options of `local-cluster` and `cluster` masters.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub listen: Option<String>,
    pub secret: Option<Vec<u8>>,
    pub heartbeat_timeout: Duration,
    /// The program `local-cluster[N]` starts as executors (see
    /// [`crate::cluster::find_executor_binary`]).
    pub executor_binary: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { listen: None, secret: None, heartbeat_timeout: Duration::from_secs(3), executor_binary: None }
    }
}

/// `--checkpoint DIR` and its flags.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub dir: PathBuf,
    /// Metadata checkpoints kept (default 10).
    pub keep: usize,
    /// Discard what the directory holds and start over.
    pub fresh: bool,
    /// Continue although a UDF module's hash differs from the checkpoint's.
    pub accept_module_change: bool,
}

impl CheckpointOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointOptions { dir: dir.into(), keep: 10, fresh: false, accept_module_change: false }
    }
}

pub type AfterBatch = Arc<std::sync::Mutex<dyn FnMut(&mut DagScheduler, i64, &[Option<RddId>]) + Send>>;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            master: Master::Local(2),
            clock: Clock::Logical,
            max_batches: None,
            explain: false,
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
            after_batch: None,
            checkpoint: None,
            cluster: ClusterOptions::default(),
            allow_state_without_checkpoint: false,
        }
    }
}

/// What happened in one batch.
#[derive(Debug, Clone)]
pub struct BatchReport {
    pub time: i64,
    pub records_in: u64,
    pub processing: Duration,
    pub scheduling_delay: Duration,
    /// The error of each output operation that failed.
    pub errors: Vec<String>,
    /// What failures cost this batch: executors lost, map outputs
    /// recomputed, blocks recomputed, tasks resubmitted.
    pub executors_lost: u64,
    pub map_tasks_recomputed: u64,
    pub blocks_recomputed: u64,
    pub tasks_resubmitted: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub batches: Vec<BatchReport>,
    pub metrics: SchedulerMetrics,
    /// The checkpoint writer's counters (with a checkpoint directory).
    pub checkpoint: Option<CheckpointStats>,
}

impl RunReport {
    pub fn failed_batches(&self) -> impl Iterator<Item = &BatchReport> {
        self.batches.iter().filter(|b| !b.errors.is_empty())
    }
}

/// A job ready to run: its graph and everything it owns.
pub struct JobRunner {
    pub graph: Graph,
    /// The job's identity in checkpoints (the job file's SHA-256).
    pub job_hash: String,
    pub job_name: String,
    /// Module file name -> SHA-256, for checkpoints.
    pub modules: BTreeMap<String, String>,
    /// Relative paths in the job (sources, outputs) resolve against this.
    pub base_dir: PathBuf,
    pub registry: Arc<ModuleRegistry>,
    pub collectors: Vec<Collected>,
    pub foreach: Vec<ForeachRdd>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Stores a source's batch as the blocks of its input RDD at `time`.
fn store_input(
    dag: &mut DagScheduler,
    blocks: &BlockStore,
    time: i64,
    node: u32,
    source: u32,
    batch: &[u8],
    parallelism: u32,
) -> Rdd {
    let parts = split_batch(batch, parallelism);
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
        dag.register_block(bid, crate::rdd::digest(&data));
        blocks.put(bid, Arc::new(data));
    }
    rdd
}

/// Splits an encoded batch into up to `n` contiguous partitions (at least one).
fn split_batch(batch: &[u8], n: u32) -> Vec<Vec<u8>> {
    let Ok(recs) = Records::new(batch) else { return vec![weir_codec::BatchBuilder::new().finish()] };
    let total = recs.remaining() as usize;
    let n = (n.max(1) as usize).min(total.max(1));
    let per = total.div_ceil(n).max(1);
    let mut parts: Vec<weir_codec::BatchBuilder> = (0..n).map(|_| weir_codec::BatchBuilder::new()).collect();
    for (i, r) in recs.enumerate() {
        if let Ok(r) = r {
            parts[i / per].push_raw(r);
        }
    }
    parts.into_iter().map(|b| b.finish()).collect()
}

impl JobRunner {
    pub fn run(self, opts: RunOptions) -> Result<RunReport, EngineError> {
        let g = &self.graph;
        let interval = g.batch_interval_ms;
        let stateful: Vec<&str> = g.nodes.iter().filter(|n| n.op.is_stateful()).map(|n| n.label.as_str()).collect();
        if !stateful.is_empty() && opts.checkpoint.is_none() && !opts.allow_state_without_checkpoint {
            return Err(EngineError::Graph(format!(
                "{} keep state across batches, so the job needs a checkpoint directory (--checkpoint DIR): \
                 without one a driver crash would lose the state, and its lineage would grow without bound",
                stateful.join(", ")
            )));
        }
        let (ckpt, recovered) = match &opts.checkpoint {
            Some(c) => {
                if c.fresh {
                    CheckpointDir::clear(&c.dir)
                        .map_err(|e| EngineError::Checkpoint(CheckpointError::Io { dir: c.dir.clone(), source: e }))?;
                }
                let (dir, rec) = CheckpointDir::open(&c.dir, c.keep)?;
                for (_, why) in &rec.invalid {
                    eprintln!("weir: checkpoint not usable, falling back to an older one: {why}");
                }
                (Some(dir), rec.metadata)
            }
            None => (None, None),
        };
        if let (Some(m), Some(c)) = (&recovered, &opts.checkpoint) {
            self.check_compatible(m, c.accept_module_change)?;
        }
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        for (i, s) in g.sources.iter().enumerate() {
            let wal = ckpt.as_ref().map(|c| (checkpoint::wal_dir(c.root()), i as u32));
            sources.push(source::open(s, &self.base_dir, wal)?);
        }
        let source_nodes: BTreeMap<u32, u32> = g
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                NodeOp::Source { source } => Some((source, n.id)),
                _ => None,
            })
            .collect();
        let blocks = BlockStore::new();
        let (backend, results): (Box<dyn ExecutorBackend>, _) = match opts.master {
            Master::Local(slots) => {
                let (b, r) = LocalExecutors::start(slots, self.registry.clone(), blocks.clone())
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
                    executor_binary: opts.cluster.executor_binary.clone(),
                };
                let (b, r) = ClusterBackend::start(&cfg, self.registry.clone(), blocks.clone())
                    .map_err(|e| EngineError::Executor(format!("cannot start the cluster: {e}")))?;
                (Box::new(b), r)
            }
        };
        let mut dag = DagScheduler::new(backend, results);
        let mut memo = Generated::default();

        let mut zero_time = match opts.clock {
            Clock::Logical => 0,
            Clock::Wall => (now_ms() / interval) * interval,
        };
        // Each batch's input, as recorded (what a re-run reads again).
        let mut inputs: BTreeMap<i64, Vec<InputRecord>> = BTreeMap::new();
        let mut pending: Vec<i64> = Vec::new();
        let mut last_completed: Option<i64> = None;
        let mut replay: std::collections::VecDeque<i64> = Default::default();
        let mut k: i64 = 0;
        if let (None, Some(c)) = (&recovered, &ckpt) {
            // A fresh job: its first metadata checkpoint is durable before
            // any batch runs. A driver killed at any moment after its
            // receivers opened then restarts from it and replays what they
            // logged, instead of starting over without it.
            c.write_metadata(self.snapshot(zero_time, None, &[], &inputs, &sources));
            c.flush();
        }
        if let (Some(m), Some(c)) = (&recovered, &ckpt) {
            zero_time = m.zero_time;
            for (src, cur) in sources.iter_mut().zip(&m.cursors) {
                src.restore(cur)?;
            }
            // Inputs of recorded batches: read again and stored as blocks, so
            // the windows and states that reach back to them can be rebuilt.
            for (t, recs) in &m.inputs {
                for (i, rec) in recs.iter().enumerate() {
                    let Some(&node) = source_nodes.get(&(i as u32)) else { continue };
                    let batch = sources[i].replay(*t, &rec.descriptor)?;
                    let rdd = store_input(&mut dag, &blocks, *t, node, i as u32, &batch, g.parallelism);
                    register(&mut memo, &mut dag.lineage, node, rdd);
                }
            }
            for (node, r) in &m.state {
                let parts = checkpoint::read_state(c.root(), r).map_err(|e| {
                    EngineError::Checkpoint(CheckpointError::Mismatch(format!("cannot restore state: {e}")))
                })?;
                let id = RddId { time: r.time, node: *node };
                for (p, data) in parts.into_iter().enumerate() {
                    let bid = BlockId::Rdd { rdd: id, partition: p as u32 };
                    dag.register_block(bid, crate::rdd::digest(&data));
                    blocks.put(bid, Arc::new(data));
                }
                let path = checkpoint::state_dir(c.root()).join(&r.file).to_string_lossy().into_owned();
                let label = g.nodes.get(*node as usize).map(|n| n.label.clone()).unwrap_or_default();
                register(
                    &mut memo,
                    &mut dag.lineage,
                    *node,
                    Rdd { id, partitions: r.partitions, op: RddOp::Checkpointed { path }, persist: true, label },
                );
            }
            inputs = m.inputs.clone();
            last_completed = m.last_completed;
            pending = m.pending.clone();
            replay = m.pending.iter().copied().collect();
            if let Some(newest) = m.newest_batch() {
                k = (newest - zero_time) / interval;
            }
            eprintln!(
                "weir: recovered from checkpoint {} (last completed batch: {}); re-running {} pending batch(es)",
                m.seq,
                m.last_completed.map(|t| format!("{t} ms")).unwrap_or_else(|| "none".into()),
                replay.len()
            );
        }

        let remember = g.remember_ms();
        let mut report = RunReport::default();
        let mut explained = false;
        let mut ran: u64 = 0;
        loop {
            if opts.stop.load(Ordering::Relaxed) {
                break;
            }
            if opts.max_batches.is_some_and(|m| ran >= m) {
                break;
            }
            let replayed = replay.pop_front();
            if replayed.is_none()
                && opts.clock == Clock::Logical
                && !sources.is_empty()
                && sources.iter().all(|s| s.exhausted())
            {
                break;
            }
            ran += 1;
            let time = match replayed {
                Some(t) => t,
                None => {
                    k += 1;
                    zero_time + k * interval
                }
            };
            if opts.clock == Clock::Wall && replayed.is_none() {
                let wait = time - now_ms();
                if wait > 0 {
                    std::thread::sleep(Duration::from_millis(wait as u64));
                }
            }
            let scheduling_delay = match opts.clock {
                Clock::Wall => Duration::from_millis((now_ms() - time).max(0) as u64),
                Clock::Logical => Duration::ZERO,
            };
            let started = Instant::now();
            let before = dag.metrics.clone();

            // Receive: each source's batch becomes the input RDD's blocks
            // (a re-run batch already has them, read again from its record).
            let mut input_partitions = BTreeMap::new();
            let mut records_in = 0u64;
            if replayed.is_some() {
                for (i, rec) in inputs.get(&time).into_iter().flatten().enumerate() {
                    input_partitions.insert(i as u32, rec.partitions);
                    records_in += rec.records;
                }
            } else {
                let mut recs = Vec::new();
                for (i, src) in sources.iter_mut().enumerate() {
                    let (batch, descriptor) = src.poll(time, opts.clock == Clock::Wall)?;
                    let n = Records::new(&batch).map(|r| r.remaining() as u64).unwrap_or(0);
                    records_in += n;
                    let partitions = match source_nodes.get(&(i as u32)) {
                        Some(&node) => {
                            store_input(&mut dag, &blocks, time, node, i as u32, &batch, g.parallelism).partitions
                        }
                        None => 1,
                    };
                    input_partitions.insert(i as u32, partitions);
                    recs.push(InputRecord { partitions, records: n, descriptor });
                }
                inputs.insert(time, recs);
                pending.push(time);
            }

            let outs = generate(g, zero_time, time, &input_partitions, &mut memo, &mut dag.lineage);
            if let Some(c) = &ckpt {
                // The batch is generated: its inputs are recorded before it runs.
                c.write_metadata(self.snapshot(zero_time, last_completed, &pending, &inputs, &sources));
            }
            if opts.explain && !explained {
                explained = true;
                for (o, r) in g.outputs.iter().zip(&outs) {
                    if let Some(r) = r {
                        eprintln!("plan of output {:?} at batch {time} ms:\n{}", o.spec, dag.lineage.explain(*r));
                    }
                }
            }
            let mut errors = Vec::new();
            for (o, r) in g.outputs.iter().zip(outs.iter().copied()) {
                let Some(rdd) = r else {
                    // No RDD at one of the stream's own times: something it
                    // depends on (an input, a state) is lost — say so.
                    let n = g.node(o.node);
                    if (time - zero_time) % n.slide_ms == 0 {
                        errors.push(format!(
                            "{}: cannot be computed at {time} ms: an input or state it needs is lost (see the log)",
                            n.label
                        ));
                    }
                    continue;
                };
                tracing::debug!("batch {time} ms, output {:?}:\n{}", o.spec, dag.lineage.explain(rdd));
                let result = dag
                    .run_job(rdd)
                    .map_err(|e| e.to_string())
                    .and_then(|parts| self.emit(&o.spec, time, &parts).map_err(|e| e.to_string()));
                if let Err(e) = result {
                    tracing::error!("batch {time} ms failed: {e}");
                    errors.push(e);
                }
            }
            pending.retain(|t| *t != time);
            last_completed = Some(last_completed.map_or(time, |l| l.max(time)));
            if let Some(c) = &ckpt {
                // Data checkpoints of stateful streams due at this time.
                for n in g.nodes.iter().filter(|n| n.op.is_stateful()) {
                    let Some(every) = n.checkpoint_ms else { continue };
                    if (time - zero_time) % every != 0 {
                        continue;
                    }
                    let id = RddId { time, node: n.id };
                    if dag.lineage.get(id).is_none() {
                        continue;
                    }
                    match dag.run_job(id) {
                        Ok(parts) => c.write_state(n.id, time, parts.into_iter().map(Arc::new).collect()),
                        Err(e) => tracing::warn!("cannot take a data checkpoint of {} at {time} ms: {e}", n.label),
                    }
                }
                c.write_metadata(self.snapshot(zero_time, last_completed, &pending, &inputs, &sources));
            }
            let m = &dag.metrics;
            let b = BatchReport {
                time,
                records_in,
                processing: started.elapsed(),
                scheduling_delay,
                errors,
                executors_lost: m.executors_lost - before.executors_lost,
                map_tasks_recomputed: m.map_tasks_recomputed - before.map_tasks_recomputed,
                blocks_recomputed: m.blocks_recomputed - before.blocks_recomputed,
                tasks_resubmitted: m.tasks_resubmitted - before.tasks_resubmitted,
            };
            if opts.progress {
                let mut status =
                    if b.errors.is_empty() { String::new() } else { format!(", FAILED: {}", b.errors.join("; ")) };
                if b.executors_lost + b.map_tasks_recomputed + b.tasks_resubmitted > 0 {
                    status.push_str(&format!(
                        ", recovered: {} executor(s) lost, {} map output(s) and {} block(s) recomputed, {} task(s) resubmitted",
                        b.executors_lost, b.map_tasks_recomputed, b.blocks_recomputed, b.tasks_resubmitted
                    ));
                }
                eprintln!(
                    "batch {} ms: {} records in, processed in {} ms, scheduling delay {} ms{status}",
                    b.time,
                    b.records_in,
                    b.processing.as_millis(),
                    b.scheduling_delay.as_millis()
                );
            }
            report.batches.push(b);
            if let Some(hook) = &opts.after_batch {
                (hook.lock().unwrap_or_else(|p| p.into_inner()))(&mut dag, time, &outs);
            }
            // Forget what no window needs and no state recovery can need:
            // lineage and inputs go back to the newest durable data checkpoint
            // of every stateful stream, which truncates their lineage.
            let mut horizon = time - remember;
            if let Some(c) = &ckpt {
                let durable = c.durable_state();
                for n in g.nodes.iter().filter(|n| n.op.is_stateful()) {
                    match durable.get(&n.id) {
                        Some(r) => {
                            horizon = horizon.min(r.time - n.op.lookback_ms());
                            let id = RddId { time: r.time, node: n.id };
                            if let Some(rdd) = dag.lineage.rdds.get_mut(&id) {
                                let path = checkpoint::state_dir(c.root()).join(&r.file).to_string_lossy().into_owned();
                                rdd.op = RddOp::Checkpointed { path };
                            }
                        }
                        None => horizon = horizon.min(zero_time + 1),
                    }
                }
            }
            memo.forget_before(horizon);
            dag.forget_before(horizon);
            inputs.retain(|t, _| *t >= horizon || pending.contains(t));
        }
        if let Some(c) = &ckpt {
            c.flush();
            report.checkpoint = Some(c.stats());
        }
        report.metrics = dag.metrics.clone();
        Ok(report)
    }

    fn snapshot(
        &self,
        zero_time: i64,
        last_completed: Option<i64>,
        pending: &[i64],
        inputs: &BTreeMap<i64, Vec<InputRecord>>,
        sources: &[Box<dyn Source>],
    ) -> Metadata {
        Metadata {
            seq: 0,
            job_hash: self.job_hash.clone(),
            job: self.job_name.clone(),
            modules: self.modules.clone(),
            batch_interval_ms: self.graph.batch_interval_ms,
            zero_time,
            last_completed,
            pending: pending.to_vec(),
            inputs: inputs.clone(),
            cursors: sources.iter().map(|s| s.cursor()).collect(),
            state: BTreeMap::new(),
        }
    }

    /// Refuses to continue a checkpoint of another job or other modules.
    fn check_compatible(&self, m: &Metadata, accept_module_change: bool) -> Result<(), EngineError> {
        let refuse = |msg: String| Err(EngineError::Checkpoint(CheckpointError::Mismatch(msg)));
        if m.job_hash != self.job_hash {
            return refuse(format!(
                "the job changed since the checkpoint was written: {} had sha256 {}, {} now has sha256 {}; \
                 run with --fresh to discard the checkpoint and start over",
                m.job, m.job_hash, self.job_name, self.job_hash
            ));
        }
        if m.batch_interval_ms != self.graph.batch_interval_ms {
            return refuse(format!(
                "the batch interval changed ({} ms in the checkpoint, {} ms now); run with --fresh to start over",
                m.batch_interval_ms, self.graph.batch_interval_ms
            ));
        }
        let mut changed = Vec::new();
        for (name, h) in &self.modules {
            match m.modules.get(name) {
                Some(old) if old != h => changed.push(format!("{name} (sha256 {old} in the checkpoint, {h} now)")),
                _ => {}
            }
        }
        if !changed.is_empty() && !accept_module_change {
            return refuse(format!(
                "UDF module changed since the checkpoint was written: {}; run with --accept-module-change to \
                 continue with the new module (recomputed batches then use the new code), or --fresh to start over",
                changed.join(", ")
            ));
        }
        Ok(())
    }

    fn emit(&self, spec: &OutputSpec, time: i64, parts: &[Vec<u8>]) -> Result<(), EngineError> {
        match spec {
            OutputSpec::Print { num } => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(sink::format_print(time, parts, *num).as_bytes());
                let _ = out.flush();
            }
            OutputSpec::SaveAsTextFiles { prefix, suffix } => {
                sink::save_as_text_files(&self.base_dir, prefix, suffix.as_deref(), time, parts)?;
            }
            OutputSpec::Collect { id } => {
                let values = sink::decode_partitions(parts)?;
                if let Some(c) = self.collectors.get(*id) {
                    c.lock().unwrap_or_else(|p| p.into_inner()).push((time, values));
                }
            }
            OutputSpec::ForeachRdd { id } => {
                if let Some(f) = self.foreach.get(*id) {
                    f(time, parts).map_err(|message| sink::SinkError::Foreach { time, message })?;
                }
            }
        }
        Ok(())
    }
}
