//! DStreams: the Rust API for building a streaming job (`StreamingContext`,
//! `DStream`), in Spark's vocabulary. It builds a [`graph::Graph`] — plain data
//! — that the driver ([`crate::scheduler::Driver`]) runs; a job file
//! (`crate::job`) builds the same graph through this API. A job runs to its
//! end with [`StreamingContext::run`], or in the background with
//! [`StreamingContext::start`], which returns a [`StreamingHandle`] to stop it
//! and await its termination. Embedders plug in their own
//! [`Source`] and [`Sink`].
//!
//! ```no_run
//! # fn main() -> Result<(), weir::EngineError> {
//! use std::time::Duration;
//! use weir::dstream::StreamingContext;
//! let mut ssc = StreamingContext::new(Duration::from_secs(1))?;
//! let wc = ssc.module("udfs/wordcount.wasm")?;
//! let lines = ssc.socket_text_stream("localhost", 9999);
//! let counts = lines
//!     .flat_map(&wc.udf("split"))?
//!     .map(&wc.udf("pair"))?
//!     .reduce_by_key(&wc.udf("sum"))?;
//! counts.print()?;
//! ssc.run(Default::default())?;
//! # Ok(()) }
//! ```

pub use weir_plan::graph;

mod dataset;
mod state_spec;
mod transform;
pub use dataset::{dataset_param_from_path, Dataset, DatasetHandle, MAX_DATASET_BYTES};
pub use state_spec::StateSpec;
pub use transform::BatchRdd;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_codec::Value;

use crate::rdd::{Aggregation, JoinKind, NarrowOp, PairFilter, Reducer, UdfParams, UdfRef};
use crate::scheduler::{Driver, Job, RunOptions, RunReport};
use crate::sink::{self, Collected, ForeachRdd, OutputSpec, Sink};
use crate::source::{Source, SourceSpec};
use crate::udf::{ModuleRegistry, UdfKind, UdfLimits, UdfModule, UdfRuntime};
use crate::EngineError;
use graph::{Graph, NodeId, NodeOp, Output};
use weir_plan::limits::duration_ms;

/// A function of a loaded module, not yet bound to a kind, with the
/// parameters the job gives it, if any.
#[derive(Clone, Debug)]
pub struct Udf {
    module: Arc<UdfModule>,
    name: String,
    params: Option<UdfParams>,
}

impl Udf {
    /// This function with parameters (`ops.plus(4)`): the instance that
    /// runs it gets them before its first call (`docs/udf-abi.md` §3a).
    /// The module must take parameters (checked when bound to a kind).
    pub fn with_params(mut self, params: UdfParams) -> Udf {
        self.params = Some(params);
        self
    }

    /// Binds to `kind`, checking the module exports it as such (and takes
    /// parameters, if given).
    fn bind(&self, kind: UdfKind) -> Result<UdfRef, EngineError> {
        self.module.check_function(&self.name, kind)?;
        if self.params.is_some() {
            self.module.check_params(&self.name, kind)?;
        }
        Ok(UdfRef {
            module: self.module.hash(),
            module_name: self.module.name().to_string(),
            function: self.name.clone(),
            kind,
            params: self.params.clone(),
        })
    }
    /// How stream labels (and so lineage diffs) name it: `ops.plus(4)`.
    fn label(&self) -> String {
        let name = format!("{}.{}", self.module.name().trim_end_matches(".wasm").trim_end_matches(".wat"), self.name);
        match &self.params {
            Some(p) => format!("{name}({p})"),
            None => name,
        }
    }
}

/// A loaded module.
#[derive(Clone, Debug)]
pub struct ModuleHandle(Arc<UdfModule>);

impl ModuleHandle {
    pub fn udf(&self, name: &str) -> Udf {
        Udf { module: self.0.clone(), name: name.to_string(), params: None }
    }
    pub fn module(&self) -> &Arc<UdfModule> {
        &self.0
    }
}

struct Inner {
    graph: Graph,
    collectors: Vec<Collected>,
    foreach: Vec<ForeachRdd>,
    custom_sources: Vec<Option<Box<dyn Source>>>,
    custom_sinks: Vec<Arc<dyn Sink>>,
    /// The job-file stream each node was written in (checkpoint identity
    /// and its diffs).
    names: std::collections::BTreeMap<NodeId, String>,
    /// `StreamingContext::remember`: every stream keeps its RDDs this long.
    remember_ms: i64,
    /// Set once the job runs on its own thread: where `slice` asks.
    slices: Option<crate::scheduler::SliceQueue>,
    /// Every static dataset loaded (name -> source and content hash): the
    /// checkpoint records them for `weir checkpoint inspect`.
    datasets: std::collections::BTreeMap<String, weir_plan::identity::LoadedDataset>,
}

/// The entry point: holds the graph being built and the job's modules.
pub struct StreamingContext {
    inner: Rc<RefCell<Inner>>,
    registry: Arc<ModuleRegistry>,
    base_dir: PathBuf,
    /// The job's name and hash in checkpoints (a job file sets them).
    identity: Option<(String, String)>,
}

/// A stream of batches (one RDD per slide).
#[derive(Clone)]
pub struct DStream {
    inner: Rc<RefCell<Inner>>,
    node: NodeId,
}

impl StreamingContext {
    /// A context with UDF limits scaled to the batch interval
    /// ([`UdfLimits::for_batch_interval`]) and `parallelism` 2.
    pub fn new(batch_interval: Duration) -> Result<Self, EngineError> {
        Self::with_limits(batch_interval, UdfLimits::for_batch_interval(batch_interval.as_millis() as i64))
    }

    pub fn with_limits(batch_interval: Duration, limits: UdfLimits) -> Result<Self, EngineError> {
        let runtime = UdfRuntime::shared()?;
        Self::with_registry(batch_interval, Arc::new(ModuleRegistry::new(runtime, limits)))
    }

    /// A context whose modules load into `registry`. The batch interval is
    /// 1 ms to a year (`weir_plan::limits`).
    pub fn with_registry(batch_interval: Duration, registry: Arc<ModuleRegistry>) -> Result<Self, EngineError> {
        let graph = Graph::try_new(duration_ms(batch_interval), 2).map_err(|e| EngineError::Graph(e.0))?;
        Ok(StreamingContext {
            inner: Rc::new(RefCell::new(Inner {
                graph,
                collectors: Vec::new(),
                foreach: Vec::new(),
                custom_sources: Vec::new(),
                custom_sinks: Vec::new(),
                names: Default::default(),
                remember_ms: 0,
                slices: None,
                datasets: Default::default(),
            })),
            registry,
            base_dir: PathBuf::from("."),
            identity: None,
        })
    }

    /// Names the job in checkpoints: a checkpoint written under one identity
    /// is refused under another. By default it is the graph's own hash.
    pub fn set_identity(&mut self, name: &str, hash: &str) {
        self.identity = Some((name.to_string(), hash.to_string()));
    }

    /// Relative paths (modules, sources, outputs) resolve against `dir`.
    pub fn set_base_dir(&mut self, dir: impl Into<PathBuf>) {
        self.base_dir = dir.into();
    }

    /// Default number of partitions of sources and shuffles: 1 to
    /// [`MAX_PARTITIONS`](weir_plan::limits::MAX_PARTITIONS).
    pub fn set_parallelism(&mut self, n: u32) -> Result<(), EngineError> {
        self.inner.borrow_mut().graph.set_parallelism(n).map_err(|e| EngineError::Graph(e.0))
    }

    /// How fast sources may take records: backpressure and the `[rate]`
    /// bounds (checked with [`RateSpec::check`](weir_plan::rate::RateSpec::check)).
    /// What reading and writing the job's checkpoints may cost (a job
    /// file's `[checkpoint]`; defaults otherwise): data and metadata
    /// checkpoints over their bound are not written, and refused when read.
    pub fn set_checkpoint_bounds(&mut self, bounds: weir_plan::limits::CheckpointBounds) -> Result<(), EngineError> {
        bounds.check().map_err(EngineError::Graph)?;
        self.inner.borrow_mut().graph.checkpoint = bounds;
        Ok(())
    }

    pub fn set_rate(&mut self, rate: weir_plan::rate::RateSpec) -> Result<(), EngineError> {
        rate.check().map_err(EngineError::Graph)?;
        self.inner.borrow_mut().graph.rate = rate;
        Ok(())
    }

    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        &self.registry
    }

    /// Loads a UDF module (`.wasm` or `.wat`).
    pub fn module(&self, path: impl AsRef<Path>) -> Result<ModuleHandle, EngineError> {
        Ok(ModuleHandle(self.registry.load(&self.base_dir.join(path))?))
    }

    pub fn source(&self, spec: SourceSpec, label: &str) -> DStream {
        let mut inner = self.inner.borrow_mut();
        let source = inner.graph.sources.len() as u32;
        inner.graph.sources.push(spec);
        // A source node has no parents, so adding it cannot fail.
        let node = inner.graph.add(vec![], NodeOp::Source { source }, label.to_string()).unwrap_or(0);
        DStream { inner: self.inner.clone(), node }
    }

    /// Lines from a TCP server (a receiver).
    pub fn socket_text_stream(&self, host: &str, port: u16) -> DStream {
        let spec = SourceSpec::Socket {
            host: host.into(),
            port,
            on_invalid_utf8: Default::default(),
            max_line_bytes: weir_plan::source::DEFAULT_MAX_LINE_BYTES,
            on_long_line: Default::default(),
        };
        self.source(spec, &format!("socket({host}:{port})"))
    }

    /// Lines of new files in a directory (the first batch takes the files
    /// already there; invalid UTF-8 is replaced; a line longer than 1 MiB is
    /// truncated).
    pub fn text_file_stream(&self, dir: impl Into<PathBuf>) -> DStream {
        let path = dir.into();
        let label = format!("directory({})", path.display());
        let spec = SourceSpec::Directory {
            path,
            new_files_only: false,
            on_invalid_utf8: Default::default(),
            max_files_per_batch: None,
            max_line_bytes: weir_plan::source::DEFAULT_MAX_LINE_BYTES,
            on_long_line: Default::default(),
            root: None,
        };
        self.source(spec, &label)
    }

    /// A stream from the embedder's own [`Source`] (replayable or
    /// receiver-style; see the trait for the recovery contract). `name`
    /// identifies it in the graph and in checkpoints.
    pub fn custom_stream(&self, name: &str, source: Box<dyn Source>) -> DStream {
        let id = {
            let mut inner = self.inner.borrow_mut();
            inner.custom_sources.push(Some(source));
            inner.custom_sources.len() - 1
        };
        self.source(SourceSpec::Custom { id, name: name.to_string() }, name)
    }

    /// Explicit batches, one per batch time (Spark's queueStream).
    pub fn queue_stream(&self, batches: Vec<Vec<Value>>) -> DStream {
        let batches = batches.iter().map(|b| Value::encode_batch(b)).collect();
        self.source(SourceSpec::Queue { batches }, "queue")
    }

    /// The graph built so far.
    pub fn graph(&self) -> Graph {
        self.inner.borrow().graph.clone()
    }

    /// Runs the job until its sources are exhausted (logical clock), the
    /// batch limit is reached, or `opts.stop` is set: [`StreamingContext::start`]
    /// and [`StreamingHandle::await_termination`] in one call, on this thread.
    /// The driver walks the graph recursively on it: a graph near
    /// `weir_plan::limits::MAX_GRAPH_DEPTH` deep wants a few MiB of stack
    /// (a main thread's 8 MiB is plenty; `start` gives its thread 64 MiB).
    pub fn run(self, opts: RunOptions) -> Result<RunReport, EngineError> {
        Driver::new(self.job(&opts)?, opts)?.run()
    }

    /// Starts the job on a thread of its own and returns at once (after
    /// recovery and the executors' start, whose errors it returns).
    pub fn start(self, opts: RunOptions) -> Result<StreamingHandle, EngineError> {
        let stop = opts.stop.clone();
        let driver = Driver::new(self.job(&opts)?, opts)?;
        self.inner.borrow_mut().slices = Some(driver.slice_queue());
        let thread = std::thread::Builder::new()
            .name("weir-driver".into())
            .stack_size(crate::executor::TASK_STACK_BYTES)
            .spawn(move || driver.run())
            .map_err(|e| EngineError::Executor(format!("cannot start the driver thread: {e}")))?;
        Ok(StreamingHandle { stop, thread: Some(thread) })
    }

    /// Spark's `StreamingContext.remember`: every stream keeps the RDDs it
    /// produced for at least `duration` (longer if a window needs them), so
    /// that [`DStream::slice`] can return them. Kept RDDs cost memory: their
    /// inputs stay in the driver's block store.
    pub fn remember(&self, duration: Duration) {
        let mut inner = self.inner.borrow_mut();
        inner.remember_ms = inner.remember_ms.max(duration_ms(duration));
    }

    /// The job as the driver runs it: graph, identity, modules and sinks.
    fn job(&self, opts: &RunOptions) -> Result<Job, EngineError> {
        let mut inner = self.inner.borrow_mut();
        let remember_ms = inner.remember_ms;
        for n in &mut inner.graph.nodes {
            n.remember_ms = n.remember_ms.max(remember_ms);
        }
        if inner.graph.outputs.is_empty() {
            return Err(EngineError::Graph("the job has no output operation (print, save_as_text_files, ...)".into()));
        }
        // The hash only identifies the job in its checkpoints; without them
        // it is not worth hashing every queued batch.
        let (job_name, job_hash) = self.identity.clone().unwrap_or_else(|| {
            let hash = if opts.checkpoint.is_some() { graph_hash(&inner.graph) } else { String::new() };
            ("(Rust API job)".to_string(), hash)
        });
        let identity = match opts.checkpoint {
            Some(_) => weir_plan::identity::JobIdentity {
                loaded_datasets: inner.datasets.clone(),
                ..weir_plan::identity::JobIdentity::of(&inner.graph, &inner.names)
            },
            None => Default::default(),
        };
        let mut sinks = Vec::new();
        for o in &inner.graph.outputs {
            sinks.push(sink::open(
                &o.spec,
                &self.base_dir,
                &job_name,
                &inner.collectors,
                &inner.foreach,
                &inner.custom_sinks,
            )?);
        }
        Ok(Job {
            job_name,
            job_hash,
            modules: self.registry.modules(),
            identity,
            graph: inner.graph.clone(),
            base_dir: self.base_dir.clone(),
            registry: self.registry.clone(),
            sinks,
            custom_sources: std::mem::take(&mut inner.custom_sources),
        })
    }
}

/// A job running on its own thread ([`StreamingContext::start`]).
#[derive(Debug)]
pub struct StreamingHandle {
    stop: crate::scheduler::options::StopSignal,
    thread: Option<std::thread::JoinHandle<Result<RunReport, EngineError>>>,
}

impl StreamingHandle {
    /// Asks the job to stop and waits for it. Either way the batch in flight
    /// finishes (its outputs are written whole); `graceful` also runs the
    /// batches already owed and one last batch with what the sources hold,
    /// as Spark's `stop(stopGracefully = true)` drains received data (see
    /// [`StopSignal`](crate::scheduler::StopSignal)).
    pub fn stop(mut self, graceful: bool) -> Result<RunReport, EngineError> {
        self.stop.request(graceful);
        self.join()
    }

    /// The job's stop signal (to stop it from another thread).
    pub fn stop_signal(&self) -> crate::scheduler::StopSignal {
        self.stop.clone()
    }

    /// Waits until the job ends by itself (sources exhausted, batch limit,
    /// or a stop from elsewhere) and returns its report.
    pub fn await_termination(mut self) -> Result<RunReport, EngineError> {
        self.join()
    }

    /// True once the job has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn join(&mut self) -> Result<RunReport, EngineError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => Err(EngineError::Executor(format!("the driver panicked: {}", panic_message(&panic)))),
            None => Err(EngineError::Executor("the job was already joined".into())),
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A job's identity when no job file names it: the SHA-256 of its graph
/// (queued batches hashed as bytes, not formatted).
fn graph_hash(g: &Graph) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{:?}|{}|{}|{:?}", g.nodes, g.batch_interval_ms, g.parallelism, g.outputs).as_bytes());
    for s in &g.sources {
        match s {
            SourceSpec::Queue { batches } => {
                for b in batches {
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
            }
            other => h.update(format!("{other:?}").as_bytes()),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

type R = Result<DStream, EngineError>;

impl DStream {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// How many nodes the job's graph has (the next node's id).
    pub(crate) fn graph_len(&self) -> NodeId {
        self.inner.borrow().graph.nodes.len() as NodeId
    }

    /// Names the nodes from `first` on that have no name yet `name`: the
    /// job-file stream they were written in.
    pub(crate) fn name_nodes_from(&self, first: NodeId, name: &str) {
        let mut inner = self.inner.borrow_mut();
        for id in first..inner.graph.nodes.len() as NodeId {
            inner.names.entry(id).or_insert_with(|| name.to_string());
        }
    }

    fn add(&self, parents: Vec<NodeId>, op: NodeOp, label: String) -> R {
        let node = self.inner.borrow_mut().graph.add(parents, op, label).map_err(|e| EngineError::Graph(e.0))?;
        Ok(DStream { inner: self.inner.clone(), node })
    }

    fn narrow(&self, op: NarrowOp, label: String) -> R {
        self.add(vec![self.node], NodeOp::Narrow(op), label)
    }

    fn parallelism(&self) -> u32 {
        self.inner.borrow().graph.parallelism
    }

    /// How often this stream produces an RDD, in ms.
    pub fn slide_ms(&self) -> i64 {
        let inner = self.inner.borrow();
        inner.graph.node(self.node).slide_ms
    }

    /// Streams of two contexts belong to two jobs: they cannot be combined.
    fn same_context(&self, others: &[&DStream]) -> Result<(), EngineError> {
        if others.iter().all(|o| Rc::ptr_eq(&self.inner, &o.inner)) {
            return Ok(());
        }
        Err(EngineError::Graph(
            "cannot combine streams of two different StreamingContexts (union, join, cogroup): \
             each context is its own job; build both streams from the same context"
                .into(),
        ))
    }

    fn shuffle(&self, others: &[&DStream], aggregation: Aggregation, partitions: Option<u32>, label: String) -> R {
        self.same_context(others)?;
        let mut parents = vec![self.node];
        parents.extend(others.iter().map(|o| o.node));
        let partitions = partitions.unwrap_or_else(|| self.parallelism()).max(1);
        self.add(parents, NodeOp::Shuffle { aggregation, partitions }, label)
    }

    fn udf_op(&self, f: &Udf, kind: UdfKind, name: &str) -> R {
        self.narrow(NarrowOp::Udf(f.bind(kind)?), format!("{name}({})", f.label()))
    }

    pub fn map(&self, f: &Udf) -> R {
        self.udf_op(f, UdfKind::Map, "map")
    }
    pub fn flat_map(&self, f: &Udf) -> R {
        self.udf_op(f, UdfKind::FlatMap, "flat_map")
    }
    pub fn filter(&self, f: &Udf) -> R {
        self.udf_op(f, UdfKind::Filter, "filter")
    }
    pub fn map_partitions(&self, f: &Udf) -> R {
        self.udf_op(f, UdfKind::MapPartitions, "map_partitions")
    }
    /// `x -> (f(x), x)`.
    pub fn key_by(&self, f: &Udf) -> R {
        self.udf_op(f, UdfKind::KeyBy, "key_by")
    }
    pub fn map_values(&self, f: &Udf) -> R {
        self.narrow(NarrowOp::MapValues(f.bind(UdfKind::Map)?), format!("map_values({})", f.label()))
    }
    pub fn flat_map_values(&self, f: &Udf) -> R {
        self.narrow(NarrowOp::FlatMapValues(f.bind(UdfKind::FlatMap)?), format!("flat_map_values({})", f.label()))
    }
    /// Each partition as one list.
    pub fn glom(&self) -> R {
        self.narrow(NarrowOp::Glom, "glom".into())
    }
    pub fn repartition(&self, n: u32) -> R {
        self.shuffle(&[], Aggregation::Repartition, Some(n), format!("repartition({n})"))
    }
    pub fn union(&self, other: &DStream) -> R {
        self.same_context(&[other])?;
        self.add(vec![self.node, other.node], NodeOp::Union, "union".into())
    }
    /// The number of records of each batch (`[0]` for an empty batch).
    pub fn count(&self) -> R {
        self.shuffle(&[], Aggregation::Count, Some(1), "count".into())
    }
    /// The fold of each batch (an empty batch stays empty).
    pub fn reduce(&self, f: &Udf) -> R {
        let r = Reducer::Udf(f.bind(UdfKind::Reduce)?);
        self.shuffle(&[], Aggregation::Reduce(r), Some(1), format!("reduce({})", f.label()))
    }
    /// `(x, count)` per distinct x.
    pub fn count_by_value(&self) -> R {
        self.narrow(NarrowOp::PairWithOne, "pair_with_one".into())?.shuffle(
            &[],
            Aggregation::ReduceByKey(Reducer::SumI64),
            None,
            "count_by_value".into(),
        )
    }
    pub fn reduce_by_key(&self, f: &Udf) -> R {
        self.reduce_by_key_into(f, None)
    }
    pub fn reduce_by_key_into(&self, f: &Udf, partitions: Option<u32>) -> R {
        let r = Reducer::Udf(f.bind(UdfKind::Reduce)?);
        self.shuffle(&[], Aggregation::ReduceByKey(r), partitions, format!("reduce_by_key({})", f.label()))
    }
    pub fn group_by_key(&self) -> R {
        self.shuffle(&[], Aggregation::GroupByKey, None, "group_by_key".into())
    }
    /// `(k, ([v...], [w...]))`.
    pub fn cogroup(&self, other: &DStream) -> R {
        self.shuffle(&[other], Aggregation::CoGroup, None, "cogroup".into())
    }
    fn join_kind(&self, other: &DStream, kind: JoinKind, name: &str) -> R {
        self.cogroup(other)?.narrow(NarrowOp::Join(kind), name.into())
    }
    /// `(k, (v, w))` for every pair of values with the same key.
    pub fn join(&self, other: &DStream) -> R {
        self.join_kind(other, JoinKind::Inner, "join")
    }
    /// Like join; keys only on the left give `(k, (v, null))`.
    pub fn left_outer_join(&self, other: &DStream) -> R {
        self.join_kind(other, JoinKind::LeftOuter, "left_outer_join")
    }
    pub fn right_outer_join(&self, other: &DStream) -> R {
        self.join_kind(other, JoinKind::RightOuter, "right_outer_join")
    }
    pub fn full_outer_join(&self, other: &DStream) -> R {
        self.join_kind(other, JoinKind::FullOuter, "full_outer_join")
    }

    /// On pairs: each batch sorted by key (Spark's sortByKey), into
    /// `parallelism` partitions by range: the partitions in order are the
    /// sorted batch. Keys compare as decoded values
    /// ([`crate::executor::order`]); equal keys keep their order.
    pub fn sort_by_key(&self, ascending: bool) -> R {
        self.sort_by_key_into(ascending, None)
    }
    /// `sort_by_key` into `partitions` partitions (default: `parallelism`).
    /// Above one, a first shuffle samples the keys and picks the range
    /// bounds (Spark's RangePartitioner; see `executor::range`), which are
    /// part of the lineage of every partition of the sorted RDD.
    pub fn sort_by_key_into(&self, ascending: bool, partitions: Option<u32>) -> R {
        let n = partitions.unwrap_or_else(|| self.parallelism()).max(1);
        let name = if ascending { "sort_by_key" } else { "sort_by_key(false)" };
        if n == 1 {
            return self.shuffle(&[], Aggregation::SortByKey { ascending }, Some(1), name.into());
        }
        let bounds =
            self.shuffle(&[], Aggregation::RangeBounds { partitions: n }, Some(1), format!("range_bounds({n})"))?;
        self.shuffle(&[&bounds], Aggregation::SortByKey { ascending }, Some(n), name.into())
    }
    /// Each batch sorted by `f(x)` (`f` of kind `key_by`; Spark's sortBy),
    /// into `parallelism` partitions by range, as `sort_by_key`.
    pub fn sort_by(&self, f: &Udf, ascending: bool) -> R {
        self.sort_by_into(f, ascending, None)
    }
    /// `sort_by` into `partitions` partitions (default: `parallelism`).
    pub fn sort_by_into(&self, f: &Udf, ascending: bool, partitions: Option<u32>) -> R {
        self.key_by(f)?
            .sort_by_key_into(ascending, partitions)?
            .narrow(NarrowOp::Values, format!("sort_by({})", f.label()))
    }
    /// Each distinct record of a batch once (Spark's distinct).
    pub fn distinct(&self) -> R {
        self.distinct_into(None)
    }
    /// `distinct` into `partitions` partitions (default: `parallelism`).
    pub fn distinct_into(&self, partitions: Option<u32>) -> R {
        self.narrow(NarrowOp::PairWithOne, "pair_with_one".into())?
            .shuffle(&[], Aggregation::ReduceByKey(Reducer::SumI64), partitions, "distinct".into())?
            .narrow(NarrowOp::Keys, "keys".into())
    }
    /// Both streams' records paired with a count, cogrouped, then `op`.
    fn set_op(&self, other: &DStream, op: NarrowOp, name: &str) -> R {
        self.same_context(&[other])?;
        let a = self.narrow(NarrowOp::PairWithOne, "pair_with_one".into())?;
        let b = other.narrow(NarrowOp::PairWithOne, "pair_with_one".into())?;
        a.cogroup(&b)?.narrow(op, name.into())
    }
    /// The records of each batch not in `other`'s batch; duplicates are kept
    /// (Spark's subtract).
    pub fn subtract(&self, other: &DStream) -> R {
        self.set_op(other, NarrowOp::Subtract, "subtract")
    }
    /// The records in both batches, each once (Spark's intersection).
    pub fn intersection(&self, other: &DStream) -> R {
        self.set_op(other, NarrowOp::Intersection, "intersection")
    }
    /// Each record with probability `fraction` (0 to 1), without
    /// replacement. Whether a record is kept is a hash of `seed`, the batch
    /// time, the record and its position: the same in every run and
    /// recomputation.
    pub fn sample(&self, fraction: f64, seed: u64) -> R {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(EngineError::Graph(format!("sample: the fraction ({fraction}) must be from 0 to 1")));
        }
        let threshold = crate::rdd::sample_threshold(fraction);
        self.add(vec![self.node], NodeOp::Sample { seed, threshold }, format!("sample({fraction}, {seed})"))
    }
    fn check_take(n: u64, name: &str) -> Result<(), EngineError> {
        if n > weir_plan::limits::MAX_TAKE {
            return Err(EngineError::Graph(format!("{name}({n}): at most {} records", weir_plan::limits::MAX_TAKE)));
        }
        Ok(())
    }
    /// The first `n` records of each batch, partitions in order, in one
    /// partition (Spark's take, as a stream).
    pub fn take(&self, n: u64) -> R {
        Self::check_take(n, "take")?;
        self.shuffle(&[], Aggregation::Take(n), Some(1), format!("take({n})"))
    }
    /// The `n` greatest records of each batch in the value order, greatest
    /// first, in one partition (Spark's top).
    pub fn top(&self, n: u64) -> R {
        Self::check_take(n, "top")?;
        self.shuffle(&[], Aggregation::Top(n), Some(1), format!("top({n})"))
    }
    /// The `n` records of each batch whose `f(x)` is greatest, greatest
    /// first, in one partition (Spark's `top(n)(ordering)` with an ordering
    /// on `f(x)`). Records with equal `f(x)` come in their own value order,
    /// so the result does not depend on partitioning.
    pub fn top_by(&self, n: u64, f: &Udf) -> R {
        Self::check_take(n, "top")?;
        self.key_by(f)?
            .shuffle(&[], Aggregation::Top(n), Some(1), format!("top({n}, {})", f.label()))?
            .narrow(NarrowOp::Values, "values".into())
    }
    /// `(x, i)`, `i` the position of `x` in its batch from 0 (Spark's
    /// zipWithIndex), gathered into one partition.
    pub fn zip_with_index(&self) -> R {
        self.shuffle(&[], Aggregation::Gather, Some(1), "gather".into())?
            .narrow(NarrowOp::ZipWithIndex, "zip_with_index".into())
    }
    /// `(x, y)` for every record `x` of this batch and `y` of `other`'s.
    pub fn cartesian(&self, other: &DStream) -> R {
        self.same_context(&[other])?;
        self.add(vec![self.node, other.node], NodeOp::Cartesian, "cartesian".into())
    }
    /// At most `n` partitions, neighbouring partitions merged in order,
    /// without a shuffle (Spark's coalesce).
    pub fn coalesce(&self, n: u32) -> R {
        self.add(vec![self.node], NodeOp::Coalesce { partitions: n }, format!("coalesce({n})"))
    }

    /// The union of the last `length` of batches, every `slide`.
    pub fn window(&self, length: Duration, slide: Duration) -> R {
        let (length_ms, slide_ms) = (duration_ms(length), duration_ms(slide));
        self.add(
            vec![self.node],
            NodeOp::Window { length_ms, slide_ms },
            format!("window({length_ms} ms, {slide_ms} ms)"),
        )
    }
    /// `window` with the slide equal to this stream's.
    pub fn window_of(&self, length: Duration) -> R {
        let slide = Duration::from_millis(self.slide_ms() as u64);
        self.window(length, slide)
    }
    pub fn reduce_by_window(&self, f: &Udf, length: Duration, slide: Duration) -> R {
        self.reduce(f)?.window(length, slide)?.reduce(f)
    }
    /// The number of records in each window, as Spark's countByWindow
    /// computes it: a window with an inverse (`+` entering, `-` leaving)
    /// over one key, so nothing is emitted before the first record arrives
    /// and `0` once every record has left the window. Needs a checkpoint
    /// directory (as in Spark).
    pub fn count_by_window(&self, length: Duration, slide: Duration) -> R {
        // Spark: map(_ => 1L).reduceByWindow(_ + _, _ - _, ...), which keys
        // every value by one key and reduces it by key and window.
        let ones = self
            .narrow(NarrowOp::PairWithOne, "pair_with_one".into())?
            .narrow(NarrowOp::Values, "one".into())?
            .narrow(NarrowOp::PairWithNull, "pair_with_null".into())?;
        let per_batch = ones.shuffle(&[], Aggregation::ReduceByKey(Reducer::SumI64), Some(1), "count".into())?;
        let (length_ms, slide_ms) = (duration_ms(length), duration_ms(slide));
        let op =
            NodeOp::InvWindow { length_ms, slide_ms, reduce: Reducer::SumI64, inverse: Reducer::SubI64, filter: None };
        let w = self.add_on(&per_batch, op, format!("count_by_window({length_ms} ms, {slide_ms} ms)"))?;
        w.narrow(NarrowOp::Values, "values".into())
    }
    pub fn reduce_by_key_and_window(&self, f: &Udf, length: Duration, slide: Duration) -> R {
        self.reduce_by_key(f)?.window(length, slide)?.reduce_by_key(f)
    }
    pub fn group_by_key_and_window(&self, length: Duration, slide: Duration) -> R {
        self.window(length, slide)?.group_by_key()
    }
    pub fn count_by_value_and_window(&self, length: Duration, slide: Duration) -> R {
        self.count_by_value()?.window(length, slide)?.shuffle(
            &[],
            Aggregation::ReduceByKey(Reducer::SumI64),
            None,
            "count_by_value_and_window".into(),
        )
    }

    /// Running state per key (Spark's updateStateByKey): `f` (kind `update`)
    /// gets each key's values of the batch and its previous state, for every
    /// key every batch, and returns the new state or null to remove the key.
    /// Needs a checkpoint directory.
    pub fn update_state_by_key(&self, f: &Udf) -> R {
        self.update_state_by_key_with_initial(f, None)
    }

    /// update_state_by_key starting from `initial` `(key, state)` pairs.
    pub fn update_state_by_key_with_initial(&self, f: &Udf, initial: Option<Vec<Value>>) -> R {
        let update = f.bind(UdfKind::Update)?;
        let initial = initial.map(|pairs| Value::encode_batch(&pairs));
        let grouped = self.group_by_key()?;
        self.add_on(&grouped, NodeOp::State { update, initial }, format!("update_state_by_key({})", f.label()))
    }

    /// Spark's mapWithState: `f` (kind `map_with_state`) is called for each
    /// value of a key, in order, with the key's state, and emits at most one
    /// record per call. With a timeout, a key idle longer than that gets one
    /// last call (timing out, no value) and its state is removed; as in
    /// Spark, keys time out on the batches whose state is checkpointed
    /// (every 10 slides unless `checkpoint(d)` says otherwise). The result is
    /// the emitted records; `state_snapshots()` on it gives `(k, state)` for
    /// every key. Needs a checkpoint directory.
    pub fn map_with_state(&self, f: &Udf, timeout: Option<Duration>) -> R {
        let spec = StateSpec::function(f);
        self.map_with_state_spec(match timeout {
            Some(d) => spec.timeout(d),
            None => spec,
        })
    }

    /// `map_with_state` as Spark's `mapWithState(StateSpec...)`, with an
    /// initial state if the spec has one.
    pub fn map_with_state_spec(&self, spec: StateSpec) -> R {
        let fr = spec.f.bind(UdfKind::MapWithState)?;
        let label = format!("map_with_state({})", spec.f.label());
        let initial = spec.encoded_initial(&label)?;
        let grouped = self.group_by_key()?;
        let timeout_ms = spec.timeout.map(duration_ms);
        let st = self.add_on(&grouped, NodeOp::MapWithState { f: fr, timeout_ms, initial }, label)?;
        st.narrow(NarrowOp::Tagged(1), "mapped".into())
    }

    /// The map_with_state node behind a stream made by `map_with_state` (or
    /// its `state_snapshots()`), if it is one.
    fn map_with_state_node(&self) -> Option<NodeId> {
        let inner = self.inner.borrow();
        let n = inner.graph.node(self.node);
        match (&n.op, n.parents.first()) {
            (NodeOp::Narrow(NarrowOp::Tagged(_)), Some(&p))
                if matches!(inner.graph.node(p).op, NodeOp::MapWithState { .. }) =>
            {
                Some(p)
            }
            _ => None,
        }
    }

    /// The `(k, state)` of every key after each batch, for a stream made by
    /// `map_with_state`.
    pub fn state_snapshots(&self) -> R {
        let mapped = matches!(self.inner.borrow().graph.node(self.node).op, NodeOp::Narrow(NarrowOp::Tagged(1)));
        let Some(parent) = self.map_with_state_node().filter(|_| mapped) else {
            let label = self.inner.borrow().graph.node(self.node).label.clone();
            return Err(EngineError::Graph(format!(
                "{label}: state_snapshots() applies to a stream made by map_with_state"
            )));
        };
        let st = DStream { inner: self.inner.clone(), node: parent };
        st.narrow(NarrowOp::Tagged(0), "state_snapshots".into())
    }

    fn add_on(&self, parent: &DStream, op: NodeOp, label: String) -> R {
        parent.add(vec![parent.node], op, label)
    }

    /// reduce_by_key_and_window with an inverse function: each window is the
    /// previous one plus the batches entering (`f`) minus those leaving
    /// (`inverse`). `filter` (kind `filter`, over pairs) drops keys; without
    /// it keys whose value returns to zero are kept, as in Spark. Needs a
    /// checkpoint directory.
    pub fn reduce_by_key_and_window_inv(
        &self,
        f: &Udf,
        inverse: &Udf,
        length: Duration,
        slide: Duration,
        filter: Option<&Udf>,
    ) -> R {
        let reduce = Reducer::Udf(f.bind(UdfKind::Reduce)?);
        let inv = Reducer::Udf(inverse.bind(UdfKind::Reduce)?);
        let filter = match filter {
            Some(u) => Some(PairFilter::Udf(u.bind(UdfKind::Filter)?)),
            None => None,
        };
        let per_batch = self.reduce_by_key(f)?;
        let (length_ms, slide_ms) = (duration_ms(length), duration_ms(slide));
        let label =
            format!("reduce_by_key_and_window({}, {}, {length_ms} ms, {slide_ms} ms)", f.label(), inverse.label());
        self.add_on(&per_batch, NodeOp::InvWindow { length_ms, slide_ms, reduce, inverse: inv, filter }, label)
    }

    /// reduce_by_window with an inverse function (see
    /// `reduce_by_key_and_window_inv`): one value per window.
    pub fn reduce_by_window_inv(&self, f: &Udf, inverse: &Udf, length: Duration, slide: Duration) -> R {
        let keyed = self.narrow(NarrowOp::PairWithNull, "pair_with_null".into())?;
        let reduce = Reducer::Udf(f.bind(UdfKind::Reduce)?);
        let inv = Reducer::Udf(inverse.bind(UdfKind::Reduce)?);
        let per_batch = keyed.reduce_by_key_into(f, Some(1))?;
        let (length_ms, slide_ms) = (duration_ms(length), duration_ms(slide));
        let label = format!("reduce_by_window({}, {}, {length_ms} ms, {slide_ms} ms)", f.label(), inverse.label());
        let w = self.add_on(
            &per_batch,
            NodeOp::InvWindow { length_ms, slide_ms, reduce, inverse: inv, filter: None },
            label,
        )?;
        w.narrow(NarrowOp::Values, "values".into())
    }

    /// count_by_value_and_window computed incrementally (counts added and
    /// subtracted natively; keys whose count reaches zero dropped, as Spark's
    /// countByValueAndWindow does). Needs a checkpoint directory.
    pub fn count_by_value_and_window_inv(&self, length: Duration, slide: Duration) -> R {
        let per_batch = self.count_by_value()?;
        let (length_ms, slide_ms) = (duration_ms(length), duration_ms(slide));
        let op = NodeOp::InvWindow {
            length_ms,
            slide_ms,
            reduce: Reducer::SumI64,
            inverse: Reducer::SubI64,
            filter: Some(PairFilter::NonZero),
        };
        self.add_on(&per_batch, op, format!("count_by_value_and_window({length_ms} ms, {slide_ms} ms)"))
    }

    /// Sets how often a stateful stream's RDD is written to a data
    /// checkpoint (a multiple of its slide; default: the smallest multiple >=
    /// 10 s, and 10 slides for map_with_state, as in Spark). On a stream made
    /// by `map_with_state` (or its `state_snapshots()`) it sets its state's.
    pub fn checkpoint(&self, interval: Duration) -> R {
        // On a map_with_state stream (the emitted records or the snapshots),
        // the interval is its state's, as Spark's MapWithStateDStream does.
        let node = self.map_with_state_node().unwrap_or(self.node);
        let mut inner = self.inner.borrow_mut();
        inner.graph.set_checkpoint_interval(node, duration_ms(interval)).map_err(|e| EngineError::Graph(e.0))?;
        Ok(self.clone())
    }

    /// Keeps this stream's RDDs for at least `duration` (Spark's
    /// `DStream.remember`; [`StreamingContext::remember`] does it for every
    /// stream), so that [`DStream::slice`] can return them.
    pub fn remember(&self, duration: Duration) -> R {
        let mut inner = self.inner.borrow_mut();
        let n = &mut inner.graph.nodes[self.node as usize];
        n.remember_ms = n.remember_ms.max(duration_ms(duration));
        Ok(self.clone())
    }

    /// Spark's `DStream.slice`: the records of every RDD this stream
    /// produced from `from_ms` to `to_ms` (batch times, both aligned down to
    /// the stream's slide, both included), by batch time, computed from
    /// their lineage. Only while the job runs ([`StreamingContext::start`]),
    /// for batches that have run and that the job still remembers (its
    /// longest window, or `remember`). The driver answers between batches;
    /// this waits up to [`crate::scheduler::slice::SLICE_DEADLINE`]. Do not
    /// call it from a `foreach_rdd` function or a listener (they run on the
    /// driver, which would wait for itself until the deadline).
    pub fn slice(&self, from_ms: i64, to_ms: i64) -> Result<crate::scheduler::Sliced, crate::scheduler::SliceError> {
        let queue = self.inner.borrow().slices.clone();
        let queue = queue.ok_or(crate::scheduler::SliceError::NotStarted)?;
        queue.ask(self.node, from_ms, to_ms, crate::scheduler::slice::SLICE_DEADLINE)
    }

    fn output(&self, spec: OutputSpec) -> Result<(), EngineError> {
        self.inner.borrow_mut().graph.outputs.push(Output { node: self.node, spec });
        Ok(())
    }
    /// Prints the first 10 records of each batch, Spark's way.
    pub fn print(&self) -> Result<(), EngineError> {
        self.print_n(10)
    }
    pub fn print_n(&self, num: usize) -> Result<(), EngineError> {
        self.output(OutputSpec::Print { num })
    }
    /// Writes `prefix-<time>[.suffix]/part-NNNNN` per batch.
    pub fn save_as_text_files(&self, prefix: &str, suffix: Option<&str>) -> Result<(), EngineError> {
        self.output(OutputSpec::SaveAsTextFiles { prefix: prefix.into(), suffix: suffix.map(Into::into) })
    }
    /// Produces each record's text to a Kafka topic (at-least-once; needs
    /// the `kafka` feature when the job runs).
    pub fn save_to_kafka(&self, brokers: &str, topic: &str) -> Result<(), EngineError> {
        self.output(OutputSpec::Kafka {
            brokers: brokers.into(),
            topic: topic.into(),
            client_id: None,
            timeout_ms: 60_000,
            tls: None,
            sasl: None,
        })
    }
    /// Any output a job file can describe.
    pub(crate) fn output_spec(&self, spec: OutputSpec) -> Result<(), EngineError> {
        self.output(spec)
    }
    /// Keeps each batch's records in memory (tests, embedding).
    pub fn collect(&self) -> Result<Collected, EngineError> {
        let c: Collected = Arc::new(Mutex::new(Vec::new()));
        let id = {
            let mut inner = self.inner.borrow_mut();
            inner.collectors.push(c.clone());
            inner.collectors.len() - 1
        };
        self.output(OutputSpec::Collect { id })?;
        Ok(c)
    }
    /// Calls `f` on the driver with each batch's time and its partitions,
    /// encoded (Spark's `foreachRDD`; see [`ForeachRdd`]). For sinks that
    /// read records in place instead of decoding them into [`Value`]s.
    pub fn foreach_rdd(
        &self,
        f: impl Fn(i64, &[Vec<u8>]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<(), EngineError> {
        let id = {
            let mut inner = self.inner.borrow_mut();
            inner.foreach.push(Arc::new(f));
            inner.foreach.len() - 1
        };
        self.output(OutputSpec::ForeachRdd { id })
    }
    /// Writes each batch to the embedder's own [`Sink`].
    pub fn write_to(&self, sink: Arc<dyn Sink>) -> Result<(), EngineError> {
        let id = {
            let mut inner = self.inner.borrow_mut();
            inner.custom_sinks.push(sink);
            inner.custom_sinks.len() - 1
        };
        self.output(OutputSpec::Custom { id })
    }
}
