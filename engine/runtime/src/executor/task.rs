//! Tasks: the unit of work an executor runs, as plain data (stage lineage,
//! partition, module hashes) — never a closure — so that a remote process can
//! run it. [`run_task`] computes one partition by walking the lineage in the
//! task, pipelining narrow operations and reading shuffle buckets in
//! map-partition order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use weir_codec as codec;

use super::block_store::{Block, BlockStore};
use super::calls::{bad_data, engine_fault, pair, records, UdfCalls};
use super::{shuffle, state};
use crate::rdd::{Aggregation, BlockId, JoinKind, NarrowOp, Rdd, RddId, RddOp, ShuffleId, UdfRef};
use crate::udf::abi::batch_count;
use crate::udf::{ModuleRegistry, UdfKind};
pub use weir_plan::task::{Task, TaskFailure, TaskKind, TaskOutput, TaskResult};

/// What a task computes with: the job's modules and the block store.
pub struct TaskEnv<'a> {
    pub registry: &'a ModuleRegistry,
    pub blocks: &'a BlockStore,
    /// Fetches blocks from another process's block server (executors in
    /// their own processes): one request per server for many blocks.
    pub fetch: Option<&'a (dyn Fn(&[BlockId], &str) -> Vec<Option<Block>> + Sync)>,
    /// This executor's address, reported with results.
    pub executor: String,
}

/// Runs one task to completion. Never panics on user data: UDF failures,
/// malformed records and missing blocks come back as a [`TaskFailure`].
pub fn run_task(env: &TaskEnv<'_>, task: &Task) -> TaskResult {
    let start = Instant::now();
    let mut cx = TaskCx { env, task, udfs: UdfCalls::new(env.registry, task.batch_time), written: Vec::new() };
    let outcome = match &task.kind {
        TaskKind::Result { rdd } => cx
            .compute(*rdd, task.partition)
            // A block also kept in the store is copied; a pipelined one is not.
            .map(|b| TaskOutput::Partition(Arc::try_unwrap(b).unwrap_or_else(|shared| (*shared).clone()))),
        TaskKind::ShuffleMap { shuffle, parent_index, map } => cx.shuffle_map(*shuffle, *parent_index, *map),
    };
    let outcome = outcome.map_err(|e| e.locate(task.batch_time, target(task), task.partition));
    TaskResult {
        task_id: task.id,
        attempt: task.attempt,
        outcome,
        blocks: cx.written,
        udf_calls: cx.udfs.count,
        micros: start.elapsed().as_micros() as u64,
        executor: env.executor.clone(),
        udf_usage: cx.udfs.usage(),
    }
}

/// The RDD a task computes (a map task: the shuffle it writes).
fn target(task: &Task) -> RddId {
    match &task.kind {
        TaskKind::Result { rdd } => *rdd,
        TaskKind::ShuffleMap { shuffle, .. } => *shuffle,
    }
}

/// [`run_task`], with a panic in the task turned into a failed task (an
/// engine fault carrying the panic's message): a worker thread that died
/// with its task would leave the scheduler waiting for a result forever.
/// Every worker loop runs tasks through this.
pub fn run_task_guarded(env: &TaskEnv<'_>, task: &Task) -> TaskResult {
    let start = Instant::now();
    // Unwind safety: a task shares only the block store and the module
    // registry, whose locks recover from poisoning, and whose contents a
    // panicking task cannot leave half-written (blocks are put whole).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_task(env, task))) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a panic without a message)".into());
            tracing::error!("task {} (attempt {}) panicked: {message}", task.id, task.attempt);
            TaskResult {
                task_id: task.id,
                attempt: task.attempt,
                outcome: Err(TaskFailure::engine(format!("task panicked: {message}")).locate(
                    task.batch_time,
                    target(task),
                    task.partition,
                )),
                // Blocks it wrote before panicking stay unreported: the
                // task failed, so nothing counts on them.
                blocks: Vec::new(),
                udf_calls: 0,
                micros: start.elapsed().as_micros() as u64,
                executor: env.executor.clone(),
                udf_usage: Vec::new(),
            }
        }
    }
}

pub(crate) struct TaskCx<'a, 'e> {
    env: &'a TaskEnv<'e>,
    task: &'a Task,
    /// The task's UDF instances.
    udfs: UdfCalls<'a>,
    written: Vec<(BlockId, u128)>,
}

impl TaskCx<'_, '_> {
    fn rdd(&self, id: RddId) -> Result<&Rdd, TaskFailure> {
        self.task.rdds.get(&id).ok_or_else(|| engine_fault(format!("task lineage lacks {id}")))
    }

    fn store(&mut self, id: BlockId, block: Block) -> Result<Block, TaskFailure> {
        self.env.blocks.put(id, block.clone()).map_err(|e| TaskFailure::OverBudget(e.to_string()))?;
        self.written.push((id, crate::rdd::digest(&block)));
        Ok(block)
    }

    /// A block from this executor's store, or fetched from where the task
    /// says it lives (and kept here).
    fn get_block(&self, id: &BlockId) -> Option<Block> {
        if let Some(b) = self.env.blocks.get(id) {
            return Some(b);
        }
        let fetch = self.env.fetch?;
        let (_, addr) = self.task.locations.iter().find(|(b, _)| b == id)?;
        let b = fetch(std::slice::from_ref(id), addr).pop().flatten()?;
        // Not kept when over the budget: used by this task alone.
        let _ = self.env.blocks.put(*id, b.clone());
        Some(b)
    }

    /// Fetches the blocks in `ids` that are not here, one request per block
    /// server, and keeps them here (a reducer's shuffle buckets).
    fn prefetch(&self, ids: &[BlockId]) {
        let Some(fetch) = self.env.fetch else { return };
        let mut by_addr: BTreeMap<&str, Vec<BlockId>> = BTreeMap::new();
        for id in ids {
            if self.env.blocks.contains(id) {
                continue;
            }
            if let Some((_, addr)) = self.task.locations.iter().find(|(b, _)| b == id) {
                by_addr.entry(addr.as_str()).or_default().push(*id);
            }
        }
        for (addr, ids) in by_addr {
            for (id, b) in ids.iter().zip(fetch(&ids, addr)) {
                if let Some(b) = b {
                    // Over the budget: fetched again when read.
                    let _ = self.env.blocks.put(*id, b);
                }
            }
        }
    }

    /// Computes (or reads) partition `p` of `id`. An engine fault or bad
    /// data is located at the innermost partition it arose in.
    pub(crate) fn compute(&mut self, id: RddId, p: u32) -> Result<Block, TaskFailure> {
        // The UDFs of `id` see its batch time, even in a later batch's task.
        let outer = self.udfs.set_time(id.time);
        let r = self.compute_unlocated(id, p).map_err(|e| e.locate(self.task.batch_time, id, p));
        self.udfs.set_time(outer);
        r
    }

    fn compute_unlocated(&mut self, id: RddId, p: u32) -> Result<Block, TaskFailure> {
        let block_id = BlockId::Rdd { rdd: id, partition: p };
        if let Some(b) = self.get_block(&block_id) {
            return Ok(b);
        }
        let rdd = self.rdd(id)?.clone();
        let data: Block = match &rdd.op {
            RddOp::Input { .. } => return Err(TaskFailure::InputLost(block_id)),
            RddOp::Dataset(d) => match d.partition(p) {
                Some(bytes) => Arc::new(bytes.to_vec()),
                None => return Err(engine_fault(format!("dataset {} has no partition {p}", d.name()))),
            },
            RddOp::Checkpointed { path, bounds } => Arc::new(state::read_checkpointed(path, p, *bounds)?),
            RddOp::State { prev, grouped, update, initial } => {
                let prev = match (prev, initial) {
                    (Some(r), _) => Some(self.compute(*r, p)?),
                    (None, Some(init)) => Some(Arc::new(state::partition_of_pairs(init, p, rdd.partitions)?)),
                    (None, None) => None,
                };
                let groups = self.groups_of(*grouped, p)?;
                let groups: Vec<&[u8]> = groups.iter().map(|b| b.as_slice()).collect();
                Arc::new(state::update_state(
                    &mut self.udfs,
                    update,
                    prev.as_deref().map(|v| v.as_slice()),
                    &groups,
                    p,
                )?)
            }
            RddOp::MapWithState { prev, grouped, f, timeout_ms, initial } => {
                let prev = match (prev, initial) {
                    (Some(r), _) => state::Prev::Tagged(self.compute(*r, p)?),
                    (None, Some(init)) => state::Prev::Pairs(state::partition_of_pairs(init, p, rdd.partitions)?),
                    (None, None) => state::Prev::None,
                };
                let grouped = self.compute(*grouped, p)?;
                Arc::new(state::map_with_state(&mut self.udfs, f, *timeout_ms, id.time, &prev, &grouped, p)?)
            }
            RddOp::InvWindow { prev, entering, leaving, reduce, inverse, filter } => {
                let prev = match prev {
                    Some(r) => Some(self.compute(*r, p)?),
                    None => None,
                };
                let leaving: Vec<Block> = leaving.iter().map(|r| self.compute(*r, p)).collect::<Result<_, _>>()?;
                let entering: Vec<Block> = entering.iter().map(|r| self.compute(*r, p)).collect::<Result<_, _>>()?;
                let l: Vec<&[u8]> = leaving.iter().map(|b| b.as_slice()).collect();
                let e: Vec<&[u8]> = entering.iter().map(|b| b.as_slice()).collect();
                Arc::new(state::inverse_window(
                    &mut self.udfs,
                    id.time,
                    reduce,
                    inverse,
                    filter.as_ref(),
                    prev.as_deref().map(|v| v.as_slice()),
                    &l,
                    &e,
                    p,
                )?)
            }
            RddOp::Narrow { .. } => {
                let (base, ops) = self.narrow_run(id, p)?;
                let input = self.compute(base, p)?;
                self.pipeline(&ops, input, p)?
            }
            RddOp::Union { parents } => {
                let mut idx = p;
                let mut found = None;
                for parent in parents {
                    let n = self.rdd(*parent)?.partitions;
                    if idx < n {
                        found = Some((*parent, idx));
                        break;
                    }
                    idx -= n;
                }
                let Some((parent, idx)) = found else {
                    return Err(engine_fault(format!("union {id} has no partition {p}")));
                };
                self.compute(parent, idx)?
            }
            RddOp::Coalesce { parent, parent_partitions } => {
                let mut out = codec::BatchBuilder::new();
                for q in crate::rdd::coalesced(p, rdd.partitions, *parent_partitions) {
                    out.append_batch(&self.compute(*parent, q)?)?;
                }
                Arc::new(out.finish())
            }
            RddOp::Cartesian { left, right, right_partitions } => {
                let r = (*right_partitions).max(1);
                let (lb, rb) = (self.compute(*left, p / r)?, self.compute(*right, p % r)?);
                Arc::new(cartesian(&lb, &rb)?)
            }
            RddOp::Shuffled { map_partitions, aggregation, .. } => {
                let buckets = self.buckets(id, map_partitions.iter().sum(), p)?;
                let parent_of_map = parent_index_table(map_partitions);
                Arc::new(shuffle::reduce_side(
                    &mut self.udfs,
                    id,
                    aggregation,
                    &buckets,
                    &parent_of_map,
                    map_partitions.len(),
                    p,
                )?)
            }
        };
        if rdd.persist {
            self.store(block_id, data)
        } else {
            Ok(data)
        }
    }

    /// The buckets of reduce partition `p` of shuffle `id`, one per map
    /// partition, in map-partition order.
    fn buckets(&self, id: RddId, maps: u32, p: u32) -> Result<Vec<Block>, TaskFailure> {
        let ids: Vec<BlockId> = (0..maps).map(|m| BlockId::Shuffle { shuffle: id, map: m, reduce: p }).collect();
        self.prefetch(&ids);
        let mut buckets = Vec::with_capacity(ids.len());
        // Every missing map output is reported at once, so the scheduler
        // recomputes them all in one round.
        let mut missing = Vec::new();
        for (m, bid) in (0..maps).zip(&ids) {
            match self.get_block(bid) {
                Some(b) => buckets.push(b),
                None => missing.push(m),
            }
        }
        if !missing.is_empty() {
            return Err(TaskFailure::FetchFailed { shuffle: id, maps: missing });
        }
        Ok(buckets)
    }

    /// The `(key, [values])` groups of partition `p` of `id`, the grouping
    /// under update_state_by_key: the map sides' groups as they are when
    /// `id` is a group_by_key shuffle that nothing keeps (the update merges
    /// them into its own input), else `id`'s partition.
    fn groups_of(&mut self, id: RddId, p: u32) -> Result<Vec<Block>, TaskFailure> {
        let rdd = self.rdd(id)?;
        match &rdd.op {
            RddOp::Shuffled { map_partitions, aggregation: Aggregation::GroupByKey, .. } if !rdd.persist => {
                self.buckets(id, map_partitions.iter().sum(), p)
            }
            _ => Ok(vec![self.compute(id, p)?]),
        }
    }

    fn shuffle_map(&mut self, shuffle: ShuffleId, parent_index: u32, map: u32) -> Result<TaskOutput, TaskFailure> {
        let rdd = self.rdd(shuffle)?.clone();
        let RddOp::Shuffled { parents, aggregation, map_partitions } = &rdd.op else {
            return Err(engine_fault(format!("{shuffle} is not a shuffled RDD")));
        };
        let parent =
            *parents.get(parent_index as usize).ok_or_else(|| engine_fault("shuffle parent index out of range"))?;
        let maps = map_partitions.iter().sum();
        let mut side = shuffle::MapSide::new(aggregation, shuffle, map, rdd.partitions).with_maps(maps);
        if let Some(&bounds) = rdd.op.map_side_reads().first() {
            if bounds == parent {
                // A range sort's bounds are read by the other map tasks;
                // their own map task has nothing to send.
                for r in 0..rdd.partitions {
                    self.store(
                        BlockId::Shuffle { shuffle, map, reduce: r },
                        Arc::new(codec::BatchBuilder::new().finish()),
                    )?;
                }
                return Ok(TaskOutput::MapDone);
            }
            let block = self.compute(bounds, 0)?;
            side = side.with_bounds(super::range::read_bounds(&block)?);
        }
        self.compute_into(parent, self.task.partition, &mut |chunk| side.feed(chunk))?;
        let outer = self.udfs.set_time(shuffle.time);
        let buckets = side.finish(&mut self.udfs);
        self.udfs.set_time(outer);
        let buckets = buckets?;
        for (r, data) in buckets.into_iter().enumerate() {
            self.store(BlockId::Shuffle { shuffle, map, reduce: r as u32 }, Arc::new(data))?;
        }
        Ok(TaskOutput::MapDone)
    }

    /// The run of narrow RDDs ending at `id` that are computed together:
    /// the first RDD below them that is stored or made otherwise, and their
    /// operations in order.
    fn narrow_run(&self, id: RddId, p: u32) -> Result<(RddId, Vec<NarrowOp>), TaskFailure> {
        let mut ops: Vec<NarrowOp> = Vec::new();
        let mut base = id;
        loop {
            let r = self.rdd(base)?;
            let RddOp::Narrow { parent, ops: o } = &r.op else { break };
            let stored =
                base != id && (r.persist || self.env.blocks.contains(&BlockId::Rdd { rdd: base, partition: p }));
            if stored {
                break;
            }
            ops.splice(0..0, o.iter().cloned());
            base = *parent;
        }
        Ok((base, ops))
    }

    /// Computes partition `p` of `id` and hands it to `sink` — in chunks,
    /// straight from the UDF's memory, when `id` is a narrow pipeline that
    /// nothing keeps (so a shuffle's map side never holds the whole output).
    fn compute_into(&mut self, id: RddId, p: u32, sink: &mut Sink<'_>) -> Result<(), TaskFailure> {
        let rdd = self.rdd(id)?;
        let pipelined = matches!(rdd.op, RddOp::Narrow { .. })
            && !rdd.persist
            && !self.env.blocks.contains(&BlockId::Rdd { rdd: id, partition: p });
        if !pipelined {
            let block = self.compute(id, p)?;
            return sink(&block);
        }
        let (base, ops) = self.narrow_run(id, p)?;
        let input = self.compute(base, p)?;
        let outer = self.udfs.set_time(id.time);
        let r = self.pipeline_into(&ops, &input, p, sink).map_err(|e| e.locate(self.task.batch_time, id, p));
        self.udfs.set_time(outer);
        r
    }

    /// Applies narrow operations in order and returns the whole result.
    fn pipeline(&mut self, ops: &[NarrowOp], input: Block, p: u32) -> Result<Block, TaskFailure> {
        if ops.is_empty() {
            return Ok(input);
        }
        let mut out = codec::BatchBuilder::with_capacity(input.len());
        self.pipeline_into(ops, &input, p, &mut |chunk| Ok(out.append_batch(chunk)?))?;
        Ok(Arc::new(out.finish()))
    }

    /// Applies narrow operations in order, handing the output to `sink` as
    /// one or more batches. When every operation works record by record,
    /// the input goes through in chunks of about [`CHUNK_BYTES`], so each
    /// chunk's intermediate batches stay in the CPU's cache; the output is
    /// the same bytes as one call over the whole partition. Consecutive map
    /// / flat_map / map_partitions functions of one module run as one chained
    /// call: a chunk enters guest memory once and is read out of it once.
    fn pipeline_into(
        &mut self,
        ops: &[NarrowOp],
        input: &[u8],
        p: u32,
        sink: &mut Sink<'_>,
    ) -> Result<(), TaskFailure> {
        if ops.is_empty() {
            return sink(input);
        }
        #[cfg(feature = "test-hooks")]
        super::test_hooks::check_batch(input);
        let runs = runs(ops);
        if input.len() <= CHUNK_BYTES || !ops.iter().all(per_record) {
            let header = input.get(..4).ok_or_else(|| bad_data("malformed batch: no header"))?;
            return self.run_chunk(&runs, batch_count(input), &[header, &input[4..]], p, sink);
        }
        for (count, body) in codec::chunks(input, CHUNK_BYTES)? {
            self.run_chunk(&runs, count, &[&count.to_le_bytes(), body], p, sink)?;
        }
        Ok(())
    }

    /// Runs `runs` over one batch given as the concatenation of `parts`.
    fn run_chunk(
        &mut self,
        runs: &[Run<'_>],
        count: u32,
        parts: &[&[u8]],
        p: u32,
        sink: &mut Sink<'_>,
    ) -> Result<(), TaskFailure> {
        let mut cur: Option<Vec<u8>> = None;
        for (i, run) in runs.iter().enumerate() {
            let last = i + 1 == runs.len();
            let (n, input): (u32, Vec<&[u8]>) = match &cur {
                Some(b) => (batch_count(b), vec![b.as_slice()]),
                None => (count, parts.to_vec()),
            };
            match run {
                Run::Chain(steps) => {
                    if last {
                        return self.udfs.call_chain_with(steps, n, &input, p, |out| sink(out))?;
                    }
                    cur = Some(self.udfs.call_chain_with(steps, n, &input, p, |out| out.to_vec())?);
                }
                Run::Op(op) => {
                    let joined;
                    let batch: &[u8] = match input.as_slice() {
                        [one] => one,
                        many => {
                            joined = many.concat();
                            &joined
                        }
                    };
                    let out = self.apply(op, batch, p)?;
                    if last {
                        return sink(&out);
                    }
                    cur = Some(out);
                }
            }
        }
        Ok(())
    }
    fn apply(&mut self, op: &NarrowOp, input: &[u8], p: u32) -> Result<Vec<u8>, TaskFailure> {
        let recs = || records(input);
        Ok(match op {
            // map, flat_map and map_partitions run as chained calls (`runs`).
            NarrowOp::Udf(f) => match f.kind {
                UdfKind::Filter => {
                    let keep = self.udfs.call(f, input, p)?;
                    let mut b = codec::BatchBuilder::with_capacity(input.len());
                    for (r, flag) in recs()?.zip(&keep[4..]) {
                        if *flag == codec::TAG_TRUE {
                            b.push_raw(r?);
                        }
                    }
                    b.finish()
                }
                UdfKind::KeyBy => {
                    let keys = self.udfs.call(f, input, p)?;
                    let mut b = codec::BatchBuilder::with_capacity(input.len() * 2);
                    for (r, k) in recs()?.zip(records(&keys)?) {
                        b.push_with(|w| codec::write_pair(w.buf, k.unwrap_or_default(), r.unwrap_or_default()));
                    }
                    b.finish()
                }
                k => return Err(engine_fault(format!("{k} function {f} cannot be used as a narrow transformation"))),
            },
            NarrowOp::MapValues(f) => {
                let (keys, values) = split_pairs(input)?;
                let out = self.udfs.call(f, &values, p)?;
                let mut b = codec::BatchBuilder::with_capacity(input.len());
                for (k, v) in keys.iter().zip(records(&out)?) {
                    b.push_with(|w| codec::write_pair(w.buf, k, v.unwrap_or_default()));
                }
                b.finish()
            }
            NarrowOp::FlatMapValues(f) => {
                // flat_map's output does not say which input made it, so each
                // value goes in its own call: correct, and slower than map_values.
                let mut b = codec::BatchBuilder::with_capacity(input.len());
                for r in recs()? {
                    let (k, v) = pair(r?)?;
                    let mut one = codec::BatchBuilder::new();
                    one.push_raw(v);
                    let out = self.udfs.call(f, &one.finish(), p)?;
                    for o in records(&out)? {
                        b.push_with(|w| codec::write_pair(w.buf, k, o.unwrap_or_default()));
                    }
                }
                b.finish()
            }
            NarrowOp::Glom => {
                let n = codec::Records::new(input).map_err(|e| bad_data(e.to_string()))?.remaining();
                let mut b = codec::BatchBuilder::with_capacity(input.len() + 5);
                b.push_with(|w| {
                    w.list(n);
                    w.raw(&input[4..]);
                });
                b.finish()
            }
            NarrowOp::PairWithOne | NarrowOp::PairWithNull => {
                let mut b = codec::BatchBuilder::with_capacity(input.len() * 2);
                let one = codec::encode_i64(1);
                for r in recs()? {
                    let r = r.map_err(|e| bad_data(e.to_string()))?;
                    b.push_with(|w| match op {
                        NarrowOp::PairWithOne => codec::write_pair(w.buf, r, &one),
                        _ => codec::write_pair(w.buf, &[codec::TAG_NULL], r),
                    });
                }
                b.finish()
            }
            NarrowOp::Values => {
                let (_, values) = split_pairs(input)?;
                values
            }
            NarrowOp::Join(kind) => join_rows(input, *kind)?,
            NarrowOp::Tagged(tag) => state::select_tagged(input, *tag)?,
            NarrowOp::Keys => {
                let mut b = codec::BatchBuilder::with_capacity(input.len());
                for r in recs()? {
                    b.push_raw(pair(r.map_err(|e| bad_data(e.to_string()))?)?.0);
                }
                b.finish()
            }
            NarrowOp::Sample { seed, threshold } => {
                // The whole partition at once (not per_record): positions
                // count from the partition's start.
                let mut b = codec::BatchBuilder::with_capacity(input.len());
                for (i, r) in recs()?.enumerate() {
                    let r = r.map_err(|e| bad_data(e.to_string()))?;
                    if crate::rdd::sample_keeps(*seed, *threshold, p, i as u64, r) {
                        b.push_raw(r);
                    }
                }
                b.finish()
            }
            NarrowOp::Subtract | NarrowOp::Intersection => set_rows(input, op == &NarrowOp::Subtract)?,
            NarrowOp::ZipWithIndex => {
                let mut b = codec::BatchBuilder::with_capacity(input.len() + input.len() / 2);
                for (i, r) in recs()?.enumerate() {
                    let r = r.map_err(|e| bad_data(e.to_string()))?;
                    b.push_with(|w| codec::write_pair(w.buf, r, &codec::encode_i64(i as i64)));
                }
                b.finish()
            }
        })
    }
}

/// Where a computed partition goes, batch by batch.
pub(crate) type Sink<'s> = dyn FnMut(&[u8]) -> Result<(), TaskFailure> + 's;

/// Input bytes per chunk of a record-by-record pipeline: small enough that a
/// chunk and what the UDFs make of it stay in L2, large enough that the cost
/// of a call (about a microsecond) is noise.
const CHUNK_BYTES: usize = 64 * 1024;

/// A step of a pipeline: a chained call of one module's functions, or one
/// other operation.
enum Run<'a> {
    Chain(Vec<&'a UdfRef>),
    Op(&'a NarrowOp),
}

fn chainable(op: &NarrowOp) -> Option<&UdfRef> {
    match op {
        NarrowOp::Udf(f) if matches!(f.kind, UdfKind::Map | UdfKind::FlatMap | UdfKind::MapPartitions) => Some(f),
        _ => None,
    }
}

/// Groups operations into runs: consecutive chainable functions of one
/// module form one chained call.
fn runs(ops: &[NarrowOp]) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        match chainable(&ops[i]) {
            Some(f) => {
                let mut steps = vec![f];
                i += 1;
                // A function with parameters has an instance of its own
                // (they are handed to the instance), so it chains with
                // nothing but uses of itself with the same parameters.
                let same_instance = |g: &&UdfRef| {
                    g.module == f.module
                        && (g.params.is_none() && f.params.is_none()
                            || (g.params == f.params && g.function == f.function && g.kind == f.kind))
                };
                while let Some(g) = ops.get(i).and_then(chainable).filter(same_instance) {
                    steps.push(g);
                    i += 1;
                }
                out.push(Run::Chain(steps));
            }
            None => {
                out.push(Run::Op(&ops[i]));
                i += 1;
            }
        }
    }
    out
}

/// Whether an operation's output for a record depends on that record alone
/// (so a partition may go through it in chunks). map_partitions and glom see
/// the whole partition.
fn per_record(op: &NarrowOp) -> bool {
    match op {
        NarrowOp::Udf(f) => f.kind != UdfKind::MapPartitions,
        // Positions count over the whole partition.
        NarrowOp::Glom | NarrowOp::Sample { .. } | NarrowOp::ZipWithIndex => false,
        _ => true,
    }
}

/// For each global map index, the parent it belongs to.
fn parent_index_table(map_partitions: &[u32]) -> Vec<u32> {
    map_partitions.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i as u32, n as usize)).collect()
}

fn split_pairs(input: &[u8]) -> Result<(Vec<&[u8]>, Vec<u8>), TaskFailure> {
    let mut keys = Vec::new();
    let mut values = codec::BatchBuilder::with_capacity(input.len());
    for r in records(input)? {
        let (k, v) = pair(r.map_err(|e| bad_data(e.to_string()))?)?;
        keys.push(k);
        values.push_raw(v);
    }
    Ok((keys, values.finish()))
}

/// Cogroup output `(x, ([v...], [w...]))` of records paired with a
/// count: for subtract, `x` once per `v` when there is no `w`; for
/// intersection, `x` once when both sides have it.
fn set_rows(input: &[u8], subtract: bool) -> Result<Vec<u8>, TaskFailure> {
    let mut b = codec::BatchBuilder::with_capacity(input.len());
    for r in records(input)? {
        let (x, groups) = pair(r.map_err(|e| bad_data(e.to_string()))?)?;
        let g = codec::elements(groups).map_err(|e| bad_data(e.to_string()))?;
        let [vs, ws] = g.as_slice() else {
            return Err(bad_data("subtract and intersection expect cogroup output of two streams"));
        };
        let count = |l: &[u8]| codec::elements(l).map(|e| e.len()).map_err(|e| bad_data(e.to_string()));
        let (nv, nw) = (count(vs)?, count(ws)?);
        let times = match (subtract, nw) {
            (true, 0) => nv,
            (true, _) => 0,
            (false, _) => usize::from(nv > 0 && nw > 0),
        };
        (0..times).for_each(|_| b.push_raw(x));
    }
    Ok(b.finish())
}

/// Every `(x, y)` of the records of `left` and `right`, left-major, refused
/// past [`weir_plan::limits::MAX_CARTESIAN_BYTES`].
fn cartesian(left: &[u8], right: &[u8]) -> Result<Vec<u8>, TaskFailure> {
    fn collect(b: &[u8]) -> Result<Vec<&[u8]>, TaskFailure> {
        records(b)?.collect::<Result<_, _>>().map_err(|e| bad_data(e.to_string()))
    }
    let (ls, rs) = (collect(left)?, collect(right)?);
    // Each pair: a 5-byte tuple header and both records.
    let bytes = (ls.len() as u64)
        .saturating_mul(right.len() as u64)
        .saturating_add((rs.len() as u64).saturating_mul(left.len() as u64))
        .saturating_add((ls.len() as u64).saturating_mul(rs.len() as u64).saturating_mul(5));
    if bytes > weir_plan::limits::MAX_CARTESIAN_BYTES {
        return Err(bad_data(format!(
            "cartesian of {} by {} records would make about {bytes} bytes in one partition, over the maximum of {}",
            ls.len(),
            rs.len(),
            weir_plan::limits::MAX_CARTESIAN_BYTES
        )));
    }
    let mut b = codec::BatchBuilder::with_capacity(bytes as usize + 4);
    for x in &ls {
        for y in &rs {
            b.push_with(|w| codec::write_pair(w.buf, x, y));
        }
    }
    Ok(b.finish())
}

/// `(k, ([v...], [w...]))` -> join rows `(k, (v, w))`, with null for a
/// missing side in outer joins.
fn join_rows(input: &[u8], kind: JoinKind) -> Result<Vec<u8>, TaskFailure> {
    let mut b = codec::BatchBuilder::with_capacity(input.len());
    let null: &[u8] = &[codec::TAG_NULL];
    for r in records(input)? {
        let (k, groups) = pair(r.map_err(|e| bad_data(e.to_string()))?)?;
        let g = codec::elements(groups).map_err(|e| bad_data(e.to_string()))?;
        if g.len() != 2 {
            return Err(bad_data("join expects cogroup output of two streams"));
        }
        let vs = codec::elements(g[0]).map_err(|e| bad_data(e.to_string()))?;
        let ws = codec::elements(g[1]).map_err(|e| bad_data(e.to_string()))?;
        let mut emit = |v: &[u8], w: &[u8]| {
            b.push_with(|wr| {
                wr.tuple(2);
                wr.raw(k);
                wr.tuple(2);
                wr.raw(v);
                wr.raw(w);
            })
        };
        for v in &vs {
            for w in &ws {
                emit(v, w);
            }
        }
        let left = matches!(kind, JoinKind::LeftOuter | JoinKind::FullOuter);
        let right = matches!(kind, JoinKind::RightOuter | JoinKind::FullOuter);
        if ws.is_empty() && left {
            vs.iter().for_each(|v| emit(v, null));
        }
        if vs.is_empty() && right {
            ws.iter().for_each(|w| emit(null, w));
        }
    }
    Ok(b.finish())
}
