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
use crate::dstream::graph::{generate, Generated, Graph, NodeOp};
use crate::executor::{BlockStore, LocalExecutors};
use crate::rdd::{BlockId, RddId};
use crate::sink::{self, Collected, OutputSpec};
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
}

impl std::str::FromStr for Master {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown master {s:?}: expected local, local[N] or local[*]");
        if s == "local" {
            return Ok(Master::Local(1));
        }
        let inner = s.strip_prefix("local[").and_then(|r| r.strip_suffix(']')).ok_or_else(bad)?;
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
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub batches: Vec<BatchReport>,
    pub metrics: SchedulerMetrics,
}

impl RunReport {
    pub fn failed_batches(&self) -> impl Iterator<Item = &BatchReport> {
        self.batches.iter().filter(|b| !b.errors.is_empty())
    }
}

/// A job ready to run: its graph and everything it owns.
pub struct JobRunner {
    pub graph: Graph,
    /// Relative paths in the job (sources, outputs) resolve against this.
    pub base_dir: PathBuf,
    pub registry: Arc<ModuleRegistry>,
    pub collectors: Vec<Collected>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        for s in &g.sources {
            sources.push(source::open(s, &self.base_dir)?);
        }
        let source_nodes: BTreeMap<u32, u32> = g
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                NodeOp::Source { source } => Some((source, n.id)),
                _ => None,
            })
            .collect();
        let Master::Local(slots) = opts.master;
        let blocks = BlockStore::new();
        let (backend, results) = LocalExecutors::start(slots, self.registry.clone(), blocks.clone())
            .map_err(|e| EngineError::Executor(format!("cannot start executor threads: {e}")))?;
        let mut dag = DagScheduler::new(Box::new(backend), results);
        let mut memo = Generated::default();

        let zero_time = match opts.clock {
            Clock::Logical => 0,
            Clock::Wall => (now_ms() / interval) * interval,
        };
        let remember = g.remember_ms();
        let mut report = RunReport::default();
        let mut explained = false;
        let mut k: i64 = 0;
        loop {
            if opts.stop.load(Ordering::Relaxed) {
                break;
            }
            if opts.max_batches.is_some_and(|m| k as u64 >= m) {
                break;
            }
            k += 1;
            let time = zero_time + k * interval;
            if opts.clock == Clock::Wall {
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

            // Receive: each source's batch becomes the input RDD's blocks.
            let mut inputs = BTreeMap::new();
            let mut records_in = 0u64;
            for (i, src) in sources.iter_mut().enumerate() {
                let batch = src.poll(time, opts.clock == Clock::Wall)?;
                records_in += weir_codec::Records::new(&batch).map(|r| r.remaining() as u64).unwrap_or(0);
                let parts = split_batch(&batch, g.parallelism);
                inputs.insert(i as u32, parts.len() as u32);
                if let Some(&node) = source_nodes.get(&(i as u32)) {
                    for (p, data) in parts.into_iter().enumerate() {
                        let id = BlockId::Rdd { rdd: RddId { time, node }, partition: p as u32 };
                        dag.register_block(id, crate::rdd::digest(&data));
                        blocks.put(id, Arc::new(data));
                    }
                }
            }

            let outs = generate(g, zero_time, time, &inputs, &mut memo, &mut dag.lineage);
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
                let Some(rdd) = r else { continue };
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
            let b = BatchReport { time, records_in, processing: started.elapsed(), scheduling_delay, errors };
            if opts.progress {
                let status =
                    if b.errors.is_empty() { String::new() } else { format!(", FAILED: {}", b.errors.join("; ")) };
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
            let horizon = time - remember;
            memo.forget_before(horizon);
            dag.forget_before(horizon);
            if opts.clock == Clock::Logical && !sources.is_empty() && sources.iter().all(|s| s.exhausted()) {
                break;
            }
        }
        report.metrics = dag.metrics.clone();
        Ok(report)
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
        }
        Ok(())
    }
}
