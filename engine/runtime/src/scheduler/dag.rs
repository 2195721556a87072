//! The DAG scheduler: turns a request for an RDD's partitions into stages
//! (cut at shuffle boundaries) and tasks, runs them on the executors, retries
//! failed tasks, and recomputes lost shuffle outputs when a fetch fails.
//!
//! A task failure is retried (up to `max_task_failures` attempts) only when
//! it may pass on another try (see [`TaskFailure::is_deterministic`]).
//!
//! Every block a task writes comes back with its digest. The first digest of
//! a block is remembered; a recomputed block must match it, byte for byte, or
//! the job fails loudly (a UDF or the engine is not deterministic).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use crate::executor::{BackendEvent, ExecutorBackend, Task, TaskFailure, TaskKind, TaskOutput};
use crate::listener::{
    summarize_tasks, BlockRecomputed, ExecutorEvent, ExecutorStatus, ListenerBus, LiveExecutors, StageInfo, TaskInfo,
    TaskRetry,
};
use crate::rdd::{BlockId, Lineage, RddId, RddOp, ShuffleId};
use weir_plan::task::UdfUsage;

/// Counters the scheduler keeps (per job).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerMetrics {
    pub tasks_run: u64,
    pub task_failures: u64,
    pub fetch_failures: u64,
    /// Blocks written again after having been written before (recomputation).
    pub blocks_recomputed: u64,
    pub map_tasks_recomputed: u64,
    pub udf_calls: u64,
    /// Executors found dead or silent.
    pub executors_lost: u64,
    /// Tasks run again because their executor was lost.
    pub tasks_resubmitted: u64,
    /// Per module name: UDF calls, fuel and failures.
    pub udf: std::collections::BTreeMap<String, UdfUsage>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    #[error("partition {partition} of {rdd} failed {attempts} time(s): {failure}")]
    TaskFailed { rdd: RddId, partition: u32, attempts: u32, failure: TaskFailure },
    #[error(
        "recomputed block {block} differs from the original (digest {recomputed:032x}, originally {original:032x}): \
         a UDF or the engine is not deterministic"
    )]
    Nondeterministic { block: BlockId, original: u128, recomputed: u128 },
    #[error("{0}")]
    Lost(String),
}

/// One stage's tasks in flight: task id -> (output slot, task), what came
/// back, and what went wrong.
struct StageRun {
    rdd: RddId,
    index: HashMap<u64, (usize, Task)>,
    outputs: Vec<Option<TaskOutput>>,
    failure: Option<StageError>,
    /// Map outputs that tasks found missing.
    lost: Vec<(ShuffleId, u32)>,
}

enum StageError {
    /// Map outputs that tasks found missing, sorted.
    Fetch(Vec<(ShuffleId, u32)>),
    Job(JobError),
}

pub struct DagScheduler {
    backend: Box<dyn ExecutorBackend>,
    results: Receiver<BackendEvent>,
    /// Where each block lives, when executors are processes (block server
    /// address); blocks of in-process executors have no entry.
    locations: HashMap<BlockId, String>,
    pub lineage: Lineage,
    /// Which map outputs of each shuffle are complete.
    map_outputs: HashMap<ShuffleId, Vec<bool>>,
    digests: HashMap<BlockId, u128>,
    next_task: u64,
    /// Attempts per task before its job fails (spark.task.maxFailures).
    pub max_task_failures: u32,
    pub metrics: SchedulerMetrics,
    /// Told of retries, recomputed blocks and lost executors.
    pub listeners: ListenerBus,
    /// Stages run since the last [`DagScheduler::take_stages`].
    stages: Vec<StageInfo>,
    /// Executors that ran a task of the stage running now (sorted, for the
    /// stage's [`StageInfo`]).
    stage_executors: std::collections::BTreeSet<String>,
    /// The task attempts of the stage running now (for its [`StageInfo`]).
    stage_tasks: Vec<TaskInfo>,
    /// The executor the current job's tasks are kept on after one of its
    /// fetches failed (see [`DagScheduler::run_job`]).
    colocated: Option<String>,
    /// Tasks finished per executor, and the executors lost; shared with
    /// [`DagScheduler::live_executors`] (a status page reads them between
    /// batches), so behind a lock taken once per finished task.
    executor_tasks: Arc<Mutex<ExecutorTasks>>,
    /// Blocks held by an executor when it was lost, with its address: a
    /// recomputation of one is charged to that loss. Forgotten with their
    /// batch ([`DagScheduler::forget_before`]).
    lost_blocks: HashMap<BlockId, String>,
}

/// Per executor (block server address; `""` for the driver's threads):
/// tasks finished there and tasks that failed there; and the executors
/// lost (kept while their task counts are).
#[derive(Debug, Default)]
struct ExecutorTasks {
    counts: std::collections::BTreeMap<String, (u64, u64)>,
    lost: std::collections::BTreeSet<String>,
}

impl ExecutorTasks {
    /// The backend's status of its connected executors (`connected`) with
    /// the tasks finished on each, plus the executors only these counts
    /// know (lost ones, or all when the backend cannot tell).
    fn add_to(&self, mut out: Vec<ExecutorStatus>) -> Vec<ExecutorStatus> {
        // The backend's lost executors that never ran a task of this job are
        // another job's (a shared pool) or none of its business.
        out.retain(|s| s.alive || self.counts.contains_key(&s.executor));
        for s in &mut out {
            if let Some((run, failed)) = self.counts.get(&s.executor) {
                (s.tasks_run, s.tasks_failed) = (*run, *failed);
            }
        }
        for (name, (run, failed)) in &self.counts {
            if out.iter().any(|s| &s.executor == name) {
                continue;
            }
            let mut s = ExecutorStatus::new(name.clone());
            s.alive = !self.lost.contains(name);
            (s.tasks_run, s.tasks_failed) = (*run, *failed);
            out.push(s);
        }
        out
    }
}

/// The lock, even if a thread panicked holding it (counts stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Executors whose task counts are kept (lost ones are forgotten first):
/// a cluster that replaces executors for days gets new addresses.
const MAX_EXECUTORS_KEPT: usize = 1024;

/// Fetch-failure rounds before giving up on a job.
const MAX_STAGE_ROUNDS: u32 = 16;

impl DagScheduler {
    pub fn new(backend: Box<dyn ExecutorBackend>, results: Receiver<BackendEvent>) -> Self {
        DagScheduler {
            backend,
            results,
            locations: HashMap::new(),
            lineage: Lineage::default(),
            map_outputs: HashMap::new(),
            digests: HashMap::new(),
            next_task: 0,
            max_task_failures: 4,
            metrics: SchedulerMetrics::default(),
            listeners: ListenerBus::default(),
            stages: Vec::new(),
            stage_executors: Default::default(),
            stage_tasks: Vec::new(),
            colocated: None,
            executor_tasks: Default::default(),
            lost_blocks: HashMap::new(),
        }
    }

    pub fn backend(&self) -> &dyn ExecutorBackend {
        &*self.backend
    }

    /// Waits until `deadline` (between batches), handling the backend's
    /// events meanwhile: an executor lost while no stage runs is marked lost
    /// at once (its blocks forgotten, listeners told), not when the next
    /// batch's first stage reads the event. A task result arriving now is a
    /// finished stage's straggler (a resubmitted task's first attempt), which
    /// a stage would ignore too.
    pub fn idle_until(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.results.recv_timeout(left) {
                Ok(BackendEvent::ExecutorLost { executor, reason }) => self.executor_lost(&executor, &reason),
                Ok(BackendEvent::Task(_)) => {}
                Err(RecvTimeoutError::Timeout) => return,
                // No backend left to hear from: the next stage reports it.
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    return;
                }
            }
        }
    }

    /// Records an input block stored by the driver.
    pub fn register_block(&mut self, id: BlockId, digest: u128) {
        self.digests.insert(id, digest);
        if let Some(addr) = self.backend.block_address() {
            self.locations.insert(id, addr);
        }
    }

    /// An executor is gone: forget where its blocks were, and mark the map
    /// outputs it held as missing (they are recomputed when next needed).
    fn executor_lost(&mut self, executor: &str, reason: &str) {
        let gone: Vec<BlockId> =
            self.locations.iter().filter(|(_, a)| a.as_str() == executor).map(|(b, _)| *b).collect();
        let mut lost_maps = 0;
        for b in &gone {
            self.locations.remove(b);
            self.lost_blocks.insert(*b, executor.to_string());
            if let BlockId::Shuffle { shuffle, map, .. } = b {
                if let Some(m) = self.map_outputs.get_mut(shuffle).and_then(|v| v.get_mut(*map as usize)) {
                    if *m {
                        lost_maps += 1;
                    }
                    *m = false;
                }
            }
        }
        self.metrics.executors_lost += 1;
        {
            let mut t = lock(&self.executor_tasks);
            if t.counts.contains_key(executor) {
                t.lost.insert(executor.to_string());
            }
        }
        let e = ExecutorEvent { executor: executor.to_string(), reason: reason.to_string() };
        self.listeners.emit(|l| l.on_executor_lost(&e));
        tracing::warn!(
            "executor {executor} lost ({reason}): {} block(s) gone, {lost_maps} map output(s) to recompute",
            gone.len()
        );
    }

    /// Counts a finished task against the executor that ran it. In a
    /// cluster, `""` marks results the driver made up for tasks whose
    /// executor was lost (or that no executor took): not counted.
    fn count_task(&mut self, executor: &str, outcome: &Result<TaskOutput, TaskFailure>) {
        if executor.is_empty() && self.backend.block_address().is_some() {
            return;
        }
        let mut t = lock(&self.executor_tasks);
        let t = &mut *t;
        if !t.counts.contains_key(executor) {
            if t.counts.len() >= MAX_EXECUTORS_KEPT {
                let victim = t.lost.pop_first().or_else(|| t.counts.keys().next().cloned());
                if let Some(v) = victim {
                    t.counts.remove(&v);
                }
            }
            t.counts.insert(executor.to_string(), (0, 0));
        }
        if let Some(c) = t.counts.get_mut(executor) {
            c.0 += 1;
            if outcome.is_err() {
                c.1 += 1;
            }
        }
    }

    /// Every executor's status: the backend's (liveness, heartbeats,
    /// running tasks, UDF memory) with the tasks this scheduler saw finish
    /// on it, and the executors it saw lost.
    pub fn executors_status(&self) -> Vec<ExecutorStatus> {
        // The backend's lock is taken and released before the counts' (never both).
        let connected = self.backend.executor_status();
        lock(&self.executor_tasks).add_to(connected)
    }

    /// [`DagScheduler::executors_status`] for any thread at any time: a
    /// status page reads it between batches. Costs nothing until asked.
    pub fn live_executors(&self) -> LiveExecutors {
        let backend = self.backend.live_status();
        let tasks = Arc::downgrade(&self.executor_tasks);
        LiveExecutors::new(move || {
            // Gone with the scheduler: the run is over.
            let Some(tasks) = tasks.upgrade() else { return Vec::new() };
            let connected = backend.as_ref().map(|b| b()).unwrap_or_default();
            let status = lock(&tasks).add_to(connected);
            status
        })
    }

    /// Gives the listeners [`DagScheduler::live_executors`] (once, as the
    /// run's executors start).
    pub fn announce_live_executors(&self) {
        if !self.listeners.is_empty() {
            let live = self.live_executors();
            self.listeners.emit(|l| l.on_live_executors(&live));
        }
    }

    /// The stages run since the last call (timings for listeners).
    pub fn take_stages(&mut self) -> Vec<StageInfo> {
        std::mem::take(&mut self.stages)
    }

    pub fn digest_of(&self, id: &BlockId) -> Option<u128> {
        self.digests.get(id).copied()
    }

    /// Computes every partition of `rdd`, in order.
    ///
    /// When a task cannot fetch a shuffle output from a peer that the driver
    /// still reaches (executors partitioned from each other, not from the
    /// driver), re-running the map task on any executor could fail the same
    /// way for ever. So after a fetch failure the rest of the job — the
    /// recomputed map tasks and the next round of its tasks — is kept on the
    /// executor that reported it (while it is connected): every output it
    /// then needs is its own. The next job spreads over all executors again.
    pub fn run_job(&mut self, rdd: RddId) -> Result<Vec<Vec<u8>>, JobError> {
        let r = self.run_job_rounds(rdd);
        if self.colocated.take().is_some() {
            self.backend.prefer(None);
        }
        r
    }

    fn run_job_rounds(&mut self, rdd: RddId) -> Result<Vec<Vec<u8>>, JobError> {
        let partitions =
            self.lineage.get(rdd).ok_or_else(|| JobError::Lost(format!("{rdd} is not in the lineage")))?.partitions;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let attempt = self.ensure_shuffles(rdd).and_then(|()| {
                let rdds = self.lineage.stage_closure(&[rdd]);
                let tasks =
                    (0..partitions).map(|p| self.task(rdd.time, rdds.clone(), p, TaskKind::Result { rdd })).collect();
                self.run_tasks(tasks, rdd)
            });
            match attempt {
                Ok(outs) => {
                    return Ok(outs
                        .into_iter()
                        .map(|o| match o {
                            TaskOutput::Partition(b) => b,
                            TaskOutput::MapDone => Vec::new(),
                        })
                        .collect())
                }
                Err(StageError::Fetch(lost)) => {
                    self.metrics.fetch_failures += 1;
                    for (shuffle, map) in &lost {
                        if let Some(v) = self.map_outputs.get_mut(shuffle) {
                            if let Some(m) = v.get_mut(*map as usize) {
                                *m = false;
                            }
                        }
                    }
                    // Kept on one executor after a fetch failure: every map
                    // output it would have to fetch from another executor may
                    // be unreachable too. Recompute them all there in the next
                    // round, rather than finding them one fetch failure (and
                    // one round) at a time — a window over many batches would
                    // run out of rounds.
                    if let Some(exec) = self.colocated.clone() {
                        let elsewhere: Vec<(RddId, u32)> = self
                            .locations
                            .iter()
                            .filter_map(|(b, at)| match b {
                                BlockId::Shuffle { shuffle, map, .. } if *at != exec => Some((*shuffle, *map)),
                                _ => None,
                            })
                            .collect();
                        for (shuffle, map) in elsewhere {
                            if let Some(m) = self.map_outputs.get_mut(&shuffle).and_then(|v| v.get_mut(map as usize)) {
                                *m = false;
                            }
                        }
                    }
                    tracing::info!("shuffle outputs lost: {lost:?}; recomputing them from lineage");
                    if rounds >= MAX_STAGE_ROUNDS {
                        return Err(JobError::Lost(format!("gave up on {rdd} after {rounds} fetch failures")));
                    }
                }
                Err(StageError::Job(e)) => return Err(e),
            }
        }
    }

    fn task(
        &mut self,
        time: i64,
        rdds: std::collections::BTreeMap<RddId, crate::rdd::Rdd>,
        partition: u32,
        kind: TaskKind,
    ) -> Task {
        self.next_task += 1;
        // The locations of every block of the task's RDDs and shuffles.
        let mut locations: Vec<(BlockId, String)> = self
            .locations
            .iter()
            .filter(|(b, _)| match b {
                BlockId::Rdd { rdd, .. } => rdds.contains_key(rdd),
                BlockId::Shuffle { shuffle, .. } => rdds.contains_key(shuffle),
            })
            .map(|(b, a)| (*b, a.clone()))
            .collect();
        locations.sort();
        Task { id: self.next_task, attempt: 0, batch_time: time, rdds, partition, kind, locations }
    }

    /// Runs the map stages `rdd` depends on whose outputs are incomplete.
    fn ensure_shuffles(&mut self, rdd: RddId) -> Result<(), StageError> {
        for shuffle in self.lineage.shuffle_dependencies(rdd) {
            let Some(r) = self.lineage.get(shuffle).cloned() else { continue };
            let RddOp::Shuffled { parents, map_partitions, .. } = &r.op else { continue };
            let total: u32 = map_partitions.iter().sum();
            let done = self.map_outputs.entry(shuffle).or_insert_with(|| vec![false; total as usize]).clone();
            let mut tasks = Vec::new();
            let mut maps = Vec::new();
            let mut m = 0u32;
            for (i, (parent, n)) in parents.iter().zip(map_partitions).enumerate() {
                for p in 0..*n {
                    if !done.get(m as usize).copied().unwrap_or(false) {
                        let mut roots = vec![*parent];
                        roots.extend(r.op.map_side_reads());
                        let mut rdds = self.lineage.stage_closure(&roots);
                        rdds.insert(shuffle, r.clone());
                        let kind = TaskKind::ShuffleMap { shuffle, parent_index: i as u32, map: m };
                        tasks.push(self.task(shuffle.time, rdds, p, kind));
                        maps.push(m);
                    }
                    m += 1;
                }
            }
            if tasks.is_empty() {
                continue;
            }
            let recompute = done.iter().any(|d| *d)
                || self.digests.contains_key(&BlockId::Shuffle { shuffle, map: maps[0], reduce: 0 });
            self.run_tasks(tasks, shuffle)?;
            if recompute {
                self.metrics.map_tasks_recomputed += maps.len() as u64;
            }
            if let Some(v) = self.map_outputs.get_mut(&shuffle) {
                for m in maps {
                    v[m as usize] = true;
                }
            }
        }
        Ok(())
    }

    /// Runs a stage's tasks to completion (with retries), and records the
    /// stage's timing for listeners; outputs in task order.
    fn run_tasks(&mut self, tasks: Vec<Task>, rdd: RddId) -> Result<Vec<TaskOutput>, StageError> {
        let started = Instant::now();
        let (count, kind) = match tasks.first().map(|t| &t.kind) {
            Some(TaskKind::ShuffleMap { .. }) => (tasks.len() as u32, "shuffle map"),
            _ => (tasks.len() as u32, "result"),
        };
        self.stage_executors.clear();
        self.stage_tasks.clear();
        let r = self.run_stage_tasks(tasks, rdd);
        let executors = std::mem::take(&mut self.stage_executors).into_iter().collect();
        let (task_list, task_times) = summarize_tasks(std::mem::take(&mut self.stage_tasks));
        self.stages.push(StageInfo {
            rdd: rdd.to_string(),
            kind,
            tasks: count,
            duration: started.elapsed(),
            executors,
            task_list,
            task_times,
        });
        r
    }

    fn run_stage_tasks(&mut self, tasks: Vec<Task>, rdd: RddId) -> Result<Vec<TaskOutput>, StageError> {
        let mut run = StageRun {
            rdd,
            index: HashMap::new(),
            outputs: (0..tasks.len()).map(|_| None).collect(),
            failure: None,
            lost: Vec::new(),
        };
        for (i, t) in tasks.into_iter().enumerate() {
            run.index.insert(t.id, (i, t.clone()));
            self.backend.submit(t);
        }
        while !run.index.is_empty() {
            let res = match self.results.recv() {
                Ok(BackendEvent::Task(res)) => res,
                Ok(BackendEvent::ExecutorLost { executor, reason }) => {
                    self.executor_lost(&executor, &reason);
                    continue;
                }
                Err(_) => return Err(StageError::Job(JobError::Lost("all executors are gone".into()))),
            };
            let Some((i, task)) = run.index.remove(&res.task_id) else { continue };
            // An attempt lost with its executor never reported: it runs
            // again (same attempt number), and that run is the one listed.
            if !matches!(res.outcome, Err(TaskFailure::ExecutorLost(_))) {
                self.stage_tasks.push(TaskInfo::new(
                    task.partition,
                    task.attempt,
                    res.executor.clone(),
                    Duration::from_micros(res.micros),
                    res.outcome.as_ref().err().map(ToString::to_string),
                ));
            }
            // Bounded by the executors there are (a name each).
            if !self.stage_executors.contains(&res.executor) {
                self.stage_executors.insert(res.executor.clone());
            }
            if !res.executor.is_empty() {
                for (b, _) in &res.blocks {
                    self.locations.insert(*b, res.executor.clone());
                }
            }
            self.metrics.tasks_run += 1;
            self.count_task(&res.executor, &res.outcome);
            self.metrics.udf_calls += res.udf_calls;
            for u in &res.udf_usage {
                self.metrics
                    .udf
                    .entry(u.module.clone())
                    .or_insert_with(|| UdfUsage { module: u.module.clone(), ..Default::default() })
                    .add(u);
            }
            self.check_digests(&res.blocks, &mut run.failure);
            if matches!(res.outcome, Err(TaskFailure::FetchFailed { .. }))
                && !res.executor.is_empty()
                && self.colocated.is_none()
            {
                tracing::info!("keeping this job's tasks on {} (it could not fetch from a peer)", res.executor);
                self.backend.prefer(Some(&res.executor));
                self.colocated = Some(res.executor.clone());
            }
            match res.outcome {
                Ok(out) => run.outputs[i] = Some(out),
                Err(f) => self.task_failed(&mut run, i, task, f),
            }
        }
        if let Some(f) = run.failure {
            return Err(f);
        }
        if !run.lost.is_empty() {
            // Every missing output any task reported, recomputed in one round.
            run.lost.sort();
            run.lost.dedup();
            return Err(StageError::Fetch(run.lost));
        }
        Ok(run.outputs.into_iter().map(|o| o.unwrap_or(TaskOutput::MapDone)).collect())
    }

    /// Remembers the first digest of each block; a recomputed block must
    /// have its original digest, or the job fails (non-determinism).
    fn check_digests(&mut self, blocks: &[(BlockId, u128)], failure: &mut Option<StageError>) {
        for (block, d) in blocks {
            match self.digests.get(block) {
                Some(orig) if orig != d => {
                    let lost_executor = self.lost_blocks.remove(block);
                    let e = BlockRecomputed { block: block.to_string(), digest_matches: false, lost_executor };
                    self.listeners.emit(|l| l.on_block_recomputed(&e));
                    if failure.is_none() {
                        *failure = Some(StageError::Job(JobError::Nondeterministic {
                            block: *block,
                            original: *orig,
                            recomputed: *d,
                        }));
                    }
                }
                Some(_) => {
                    self.metrics.blocks_recomputed += 1;
                    let lost_executor = self.lost_blocks.remove(block);
                    let e = BlockRecomputed { block: block.to_string(), digest_matches: true, lost_executor };
                    self.listeners.emit(|l| l.on_block_recomputed(&e));
                }
                None => {
                    self.digests.insert(*block, *d);
                }
            }
        }
    }

    /// A task failed: note lost map outputs (fetch failure), run it again
    /// elsewhere (lost executor), retry it (transient), or fail the stage.
    fn task_failed(&mut self, run: &mut StageRun, i: usize, task: Task, f: TaskFailure) {
        let rdd = run.rdd;
        match f {
            TaskFailure::FetchFailed { shuffle, maps } => run.lost.extend(maps.into_iter().map(|m| (shuffle, m))),
            TaskFailure::ExecutorLost(why) => {
                // Not the task's fault: run it again elsewhere, uncounted.
                tracing::info!(
                    "task {} (partition {} of {rdd}) resubmitted: executor lost ({why})",
                    task.id,
                    task.partition
                );
                self.metrics.tasks_resubmitted += 1;
                run.index.insert(task.id, (i, task.clone()));
                self.backend.submit(task);
            }
            f => {
                self.metrics.task_failures += 1;
                // A trap, bad data or a lost input fails the same way
                // every time: retrying only multiplies the cost.
                let retriable = !f.is_deterministic();
                if retriable && task.attempt + 1 < self.max_task_failures && run.failure.is_none() {
                    tracing::warn!(
                        "task {} (partition {} of {rdd}) failed, attempt {}: {f}",
                        task.id,
                        task.partition,
                        task.attempt + 1
                    );
                    let e = TaskRetry {
                        batch_time: task.batch_time,
                        rdd: rdd.to_string(),
                        partition: task.partition,
                        attempt: task.attempt,
                        failure: f.to_string(),
                    };
                    self.listeners.emit(|l| l.on_task_retry(&e));
                    let mut again = task;
                    again.attempt += 1;
                    run.index.insert(again.id, (i, again.clone()));
                    self.backend.submit(again);
                } else if run.failure.is_none() {
                    run.failure = Some(StageError::Job(JobError::TaskFailed {
                        rdd,
                        partition: task.partition,
                        attempts: task.attempt + 1,
                        failure: f,
                    }));
                }
            }
        }
    }

    /// Forgets RDDs, shuffles and blocks of batches before `time`.
    pub fn forget_before(&mut self, time: i64) {
        self.lineage.rdds.retain(|id, _| id.time >= time);
        self.map_outputs.retain(|id, _| id.time >= time);
        let old = |b: &BlockId| match b {
            BlockId::Rdd { rdd, .. } => rdd.time < time,
            BlockId::Shuffle { shuffle, .. } => shuffle.time < time,
        };
        self.digests.retain(|b, _| !old(b));
        self.locations.retain(|b, _| !old(b));
        self.lost_blocks.retain(|b, _| !old(b));
        self.backend.blocks().remove_where(old);
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler against a fake backend that runs no code: it answers
    //! each task at once, as `behaviour` says, and remembers every task it
    //! was given, so stages, attempts and resubmissions can be counted.

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::executor::{BlockStore, TaskResult};
    use crate::rdd::{Aggregation, NarrowOp, Rdd};

    type Behaviour = Box<dyn Fn(&Task) -> Result<TaskOutput, TaskFailure> + Send + Sync>;

    struct FakeBackend {
        events: Mutex<Sender<BackendEvent>>,
        behaviour: Behaviour,
        submitted: Arc<Mutex<Vec<Task>>>,
        blocks: Arc<BlockStore>,
    }

    thread_local! {
        /// The fake backend's placement preference (`prefer`), and each task
        /// submitted (by partition and kind) with the preference in force.
        static PREFERRED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
        static PLACED: std::cell::RefCell<Vec<(String, Option<String>)>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    impl ExecutorBackend for FakeBackend {
        fn submit(&self, task: Task) {
            let pref = PREFERRED.with(|p| p.borrow().clone());
            PLACED.with(|p| p.borrow_mut().push((kinds(std::slice::from_ref(&task)).remove(0), pref)));
            let outcome = (self.behaviour)(&task);
            let result = TaskResult {
                task_id: task.id,
                attempt: task.attempt,
                outcome,
                blocks: Vec::new(),
                udf_calls: 0,
                micros: 0,
                executor: "fake-executor:1".into(),
                udf_usage: Vec::new(),
            };
            self.submitted.lock().unwrap().push(task);
            self.events.lock().unwrap().send(BackendEvent::Task(result)).unwrap();
        }
        fn slots(&self) -> usize {
            1
        }
        fn blocks(&self) -> &Arc<BlockStore> {
            &self.blocks
        }
        fn prefer(&self, executor: Option<&str>) {
            PREFERRED.with(|p| *p.borrow_mut() = executor.map(String::from));
        }
    }

    /// After a fetch failure, the recomputed map task and the next round of
    /// result tasks are kept on the executor that reported it (executors
    /// partitioned from each other would otherwise re-run the map output
    /// somewhere the reducer cannot reach, for ever); the next job is free
    /// to go anywhere again.
    #[test]
    fn after_a_fetch_failure_the_job_stays_on_the_executor_that_reported_it() {
        let (lineage, s, out) = shuffle_job();
        let fetches = AtomicU32::new(0);
        let (mut dag, _) = scheduler(lineage, move |t| match t.kind {
            TaskKind::Result { .. } if t.partition == 0 && fetches.fetch_add(1, Ordering::SeqCst) == 0 => {
                Err(TaskFailure::FetchFailed { shuffle: s, maps: vec![1] })
            }
            _ => ok(t),
        });
        PLACED.with(|p| p.borrow_mut().clear());
        assert_eq!(dag.run_job(out).unwrap().len(), 3);
        let placed = PLACED.with(|p| p.borrow().clone());
        let on = |k: &str, p: Option<&str>| (k.to_string(), p.map(String::from));
        let here = Some("fake-executor:1");
        assert_eq!(
            placed,
            [
                on("map 0 of 2", None),
                on("map 1 of 2", None),
                on("result 0 of 3", None),
                on("result 1 of 3", None),
                on("result 2 of 3", None),
                on("map 1 of 2", here),
                on("result 0 of 3", here),
                on("result 1 of 3", here),
                on("result 2 of 3", here),
            ]
        );
        assert_eq!(PREFERRED.with(|p| p.borrow().clone()), None, "the preference outlived the job");
    }

    /// Succeeds: a map task writes nothing, a result task returns no bytes.
    fn ok(task: &Task) -> Result<TaskOutput, TaskFailure> {
        Ok(match task.kind {
            TaskKind::ShuffleMap { .. } => TaskOutput::MapDone,
            TaskKind::Result { .. } => TaskOutput::Partition(Vec::new()),
        })
    }

    const T: i64 = 1000;

    fn id(node: u32) -> RddId {
        RddId { time: T, node }
    }

    fn add(lineage: &mut Lineage, node: u32, partitions: u32, op: RddOp) -> RddId {
        let rdd = Rdd { id: id(node), partitions, op, persist: false, label: format!("rdd{node}") };
        lineage.rdds.insert(id(node), rdd);
        id(node)
    }

    fn narrow(parent: RddId) -> RddOp {
        RddOp::Narrow { parent, ops: vec![NarrowOp::PairWithOne] }
    }

    fn shuffled(parent: RddId, map_partitions: u32) -> RddOp {
        RddOp::Shuffled { parents: vec![parent], map_partitions: vec![map_partitions], aggregation: Aggregation::Count }
    }

    fn scheduler(
        lineage: Lineage,
        behaviour: impl Fn(&Task) -> Result<TaskOutput, TaskFailure> + Send + Sync + 'static,
    ) -> (DagScheduler, Arc<Mutex<Vec<Task>>>) {
        let (tx, rx) = channel();
        let submitted = Arc::new(Mutex::new(Vec::new()));
        let backend = FakeBackend {
            events: Mutex::new(tx),
            behaviour: Box::new(behaviour),
            submitted: submitted.clone(),
            blocks: BlockStore::new(),
        };
        let mut dag = DagScheduler::new(Box::new(backend), rx);
        dag.lineage = lineage;
        (dag, submitted)
    }

    /// input (2) -> narrow -> narrow: one stage, no shuffle.
    fn narrow_job() -> (Lineage, RddId) {
        let mut l = Lineage::default();
        let input = add(&mut l, 0, 2, RddOp::Input { source: 0 });
        let a = add(&mut l, 1, 2, narrow(input));
        let b = add(&mut l, 2, 2, narrow(a));
        (l, b)
    }

    /// input (2) -> narrow -> shuffle (3) -> narrow.
    fn shuffle_job() -> (Lineage, RddId, RddId) {
        let mut l = Lineage::default();
        let input = add(&mut l, 0, 2, RddOp::Input { source: 0 });
        let a = add(&mut l, 1, 2, narrow(input));
        let s = add(&mut l, 2, 3, shuffled(a, 2));
        let out = add(&mut l, 3, 3, narrow(s));
        (l, s, out)
    }

    fn kinds(tasks: &[Task]) -> Vec<String> {
        tasks
            .iter()
            .map(|t| match t.kind {
                TaskKind::ShuffleMap { shuffle, map, .. } => format!("map {} of {}", map, shuffle.node),
                TaskKind::Result { rdd } => format!("result {} of {}", t.partition, rdd.node),
            })
            .collect()
    }

    fn nodes(task: &Task) -> Vec<u32> {
        task.rdds.keys().map(|r| r.node).collect()
    }

    #[test]
    fn narrow_operations_pipeline_in_one_stage() {
        let (lineage, out) = narrow_job();
        let (mut dag, submitted) = scheduler(lineage, ok);
        assert_eq!(dag.run_job(out).unwrap().len(), 2);
        let tasks = submitted.lock().unwrap().clone();
        assert_eq!(kinds(&tasks), ["result 0 of 2", "result 1 of 2"]);
        // Each task carries the whole narrow chain down to the input.
        assert!(tasks.iter().all(|t| nodes(t) == [0, 1, 2]), "{:?}", tasks.iter().map(nodes).collect::<Vec<_>>());
    }

    #[test]
    fn a_shuffle_cuts_the_job_into_a_map_stage_and_a_result_stage() {
        let (lineage, s, out) = shuffle_job();
        let (mut dag, submitted) = scheduler(lineage, ok);
        assert_eq!(dag.run_job(out).unwrap().len(), 3);
        let tasks = submitted.lock().unwrap().clone();
        assert_eq!(kinds(&tasks), ["map 0 of 2", "map 1 of 2", "result 0 of 3", "result 1 of 3", "result 2 of 3"]);
        // The map stage pipelines input -> narrow into the shuffle's buckets.
        for t in &tasks[..2] {
            assert_eq!(nodes(t), [0, 1, 2]);
        }
        // The result stage starts at the shuffle: nothing before it.
        for t in &tasks[2..] {
            assert_eq!(nodes(t), [2, 3]);
        }
        assert_eq!(dag.map_outputs.get(&s), Some(&vec![true, true]));
        // A second job over the same shuffle reuses its map outputs.
        dag.run_job(out).unwrap();
        assert_eq!(kinds(&submitted.lock().unwrap()[5..]), ["result 0 of 3", "result 1 of 3", "result 2 of 3"]);
    }

    #[test]
    fn chained_shuffles_run_their_map_stages_parents_first() {
        let mut l = Lineage::default();
        let input = add(&mut l, 0, 1, RddOp::Input { source: 0 });
        let s1 = add(&mut l, 1, 2, shuffled(input, 1));
        let a = add(&mut l, 2, 2, narrow(s1));
        let s2 = add(&mut l, 3, 1, shuffled(a, 2));
        let (mut dag, submitted) = scheduler(l, ok);
        dag.run_job(s2).unwrap();
        let tasks = submitted.lock().unwrap().clone();
        assert_eq!(kinds(&tasks), ["map 0 of 1", "map 0 of 3", "map 1 of 3", "result 0 of 3"]);
        assert_eq!(nodes(&tasks[1]), [1, 2, 3]);
    }

    /// Runs a one-partition job whose task always fails with `failure`;
    /// returns the attempts made and the job's error.
    fn attempts_when_failing_with(failure: TaskFailure) -> (u32, JobError) {
        let mut l = Lineage::default();
        let input = add(&mut l, 0, 1, RddOp::Input { source: 0 });
        let out = add(&mut l, 1, 1, narrow(input));
        let (mut dag, submitted) = scheduler(l, move |_| Err(failure.clone()));
        let err = dag.run_job(out).unwrap_err();
        let tasks = submitted.lock().unwrap().clone();
        let attempts: Vec<u32> = tasks.iter().map(|t| t.attempt).collect();
        assert_eq!(attempts, (0..tasks.len() as u32).collect::<Vec<_>>(), "one task, attempt after attempt");
        assert!(tasks.iter().all(|t| t.id == tasks[0].id));
        assert_eq!(dag.metrics.tasks_run, tasks.len() as u64);
        assert_eq!(dag.metrics.task_failures, tasks.len() as u64);
        match &err {
            JobError::TaskFailed { attempts, .. } => assert_eq!(*attempts as usize, tasks.len()),
            e => panic!("expected a task failure, got {e}"),
        }
        (tasks.len() as u32, err)
    }

    #[test]
    fn deterministic_failures_are_not_retried() {
        let trap = TaskFailure::Udf { message: "trapped: unreachable".into(), deterministic: true };
        let deadline = TaskFailure::Udf { message: "exceeded the wall-clock deadline".into(), deterministic: true };
        for f in [
            trap,
            deadline,
            TaskFailure::bad_data("malformed batch"),
            TaskFailure::InputLost(BlockId::Rdd { rdd: id(0), partition: 0 }),
        ] {
            let (attempts, err) = attempts_when_failing_with(f.clone());
            assert_eq!(attempts, 1, "{f}: {err}");
            assert!(err.to_string().contains("1 time(s)"), "{err}");
        }
    }

    #[test]
    fn transient_failures_are_retried_up_to_max_task_failures() {
        let io = TaskFailure::Udf { message: "host I/O failed".into(), deterministic: false };
        for f in [io, TaskFailure::engine("checkpoint unreadable")] {
            let (attempts, err) = attempts_when_failing_with(f.clone());
            assert_eq!(attempts, 4, "{f}: {err}");
            assert!(err.to_string().contains("4 time(s)"), "{err}");
        }
    }

    #[test]
    fn a_transient_failure_that_passes_on_retry_does_not_fail_the_job() {
        let (lineage, out) = narrow_job();
        let calls = AtomicU32::new(0);
        let (mut dag, submitted) = scheduler(lineage, move |t| {
            // Partition 1 fails twice, then succeeds.
            if t.partition == 1 && calls.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(TaskFailure::engine("a transient fault"));
            }
            ok(t)
        });
        assert_eq!(dag.run_job(out).unwrap().len(), 2);
        let attempts: Vec<(u32, u32)> = submitted.lock().unwrap().iter().map(|t| (t.partition, t.attempt)).collect();
        assert_eq!(attempts, [(0, 0), (1, 0), (1, 1), (1, 2)]);
        assert_eq!((dag.metrics.tasks_run, dag.metrics.task_failures), (4, 2));
    }

    #[test]
    fn a_fetch_failure_resubmits_the_lost_map_outputs_then_the_result_stage() {
        let (lineage, s, out) = shuffle_job();
        let fetches = AtomicU32::new(0);
        let (mut dag, submitted) = scheduler(lineage, move |t| match t.kind {
            // The first reduce task finds map output 1 gone (once).
            TaskKind::Result { .. } if t.partition == 0 && fetches.fetch_add(1, Ordering::SeqCst) == 0 => {
                Err(TaskFailure::FetchFailed { shuffle: s, maps: vec![1] })
            }
            _ => ok(t),
        });
        assert_eq!(dag.run_job(out).unwrap().len(), 3);
        let tasks = submitted.lock().unwrap().clone();
        assert_eq!(
            kinds(&tasks),
            [
                "map 0 of 2",
                "map 1 of 2",
                "result 0 of 3",
                "result 1 of 3",
                "result 2 of 3",
                // Only the lost map output is recomputed, then every result task.
                "map 1 of 2",
                "result 0 of 3",
                "result 1 of 3",
                "result 2 of 3",
            ]
        );
        assert_eq!(dag.metrics.fetch_failures, 1);
        assert_eq!(dag.metrics.map_tasks_recomputed, 1);
        // A fetch failure is not the task's fault: no failure is counted.
        assert_eq!(dag.metrics.task_failures, 0);
        assert_eq!(dag.map_outputs.get(&s), Some(&vec![true, true]));
    }

    #[test]
    fn a_failing_map_task_fails_the_job_before_any_result_task_runs() {
        let (lineage, _, out) = shuffle_job();
        let trap = TaskFailure::Udf { message: "trapped".into(), deterministic: true };
        let (mut dag, submitted) = scheduler(lineage, move |t| match t.kind {
            TaskKind::ShuffleMap { map: 1, .. } => Err(trap.clone()),
            _ => ok(t),
        });
        let err = dag.run_job(out).unwrap_err();
        assert!(matches!(err, JobError::TaskFailed { partition: 1, attempts: 1, .. }), "{err}");
        assert_eq!(kinds(&submitted.lock().unwrap()), ["map 0 of 2", "map 1 of 2"]);
    }
}
