//! One pool of executor threads shared by many jobs (`weir serve`), with its
//! slots handed to tenants by deficit round robin.
//!
//! [`SharedPool`] runs N worker threads. Each job run on it gets a
//! [`PooledExecutors`] (through a [`PoolTenant`] in
//! [`RunOptions::pool`](crate::scheduler::RunOptions)): an
//! [`ExecutorBackend`] whose `submit` queues the task under the job's tenant.
//! A queued task carries only its job's number; the job's module registry,
//! block store and result channel stay in the pool's table of jobs, so every
//! job keeps its own [`BlockStore`] and never sees another job's blocks.
//! Tasks still run through [`run_task_guarded`]: fuel and the epoch deadline
//! bound a task, so a hostile job holds a worker no longer than its sandbox
//! lets one call run, and a panic fails only that task.
//!
//! **Scheduling** ([`Drr`]). Each tenant has a FIFO queue of its jobs'
//! tasks, a weight (`weight` of `serve.toml`) and a cap on its running tasks
//! (`max_slots`). Tenants with queued tasks form a ring. A free worker visits
//! the ring from its front: a tenant at its cap is passed over (and earns
//! nothing); any other tenant earns its weight in credit (its *deficit*) and
//! gets the task at the head of its queue if its credit reaches the cost of
//! a task, which is the largest weight among the tenants that could run one
//! now; the task's cost is then taken from its credit and the tenant goes to
//! the back of the ring. So, under contention, tenants get tasks in
//! proportion to their weights (2:1 weights, 2:1 grants), interleaved one
//! task per visit rather than in bursts, and the heaviest runnable tenant is
//! always served on its visit, so a visit round never comes back empty.
//! Every task costs the same: the pool cannot know a task's length before it
//! runs, and cannot take a worker back from a running task, which bounds
//! what fairness can do — a tenant whose task is queued waits at most until
//! some worker finishes its current task.
//!
//! Credit is not banked: a tenant whose queue empties leaves the ring and
//! loses its credit, and credit is capped at one task's cost. A tenant that
//! joins the ring (its queue was empty) goes to its front with one grant
//! owed, so the first task of a batch that arrives behind another tenant's
//! long backlog starts on the next free worker, within one task length.
//!
//! Dropping a job's [`PooledExecutors`] (the job ended) removes its queued
//! tasks and its entry in the table of jobs; its running tasks finish and
//! their results are dropped. Dropping the [`SharedPool`] stops the workers
//! after their current task and closes every job's result channel, so their
//! schedulers fail with "all executors are gone" instead of waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{run_task_guarded, BackendEvent, BlockStore, ExecutorBackend, Task, TaskEnv, TASK_STACK_BYTES};
use crate::udf::ModuleRegistry;

/// How long an idle worker waits for a task before it looks again (a guard
/// against a missed wake-up; a submission wakes a worker at once).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Largest weight a tenant may have (bounds the credit arithmetic).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// One tenant's place in the [`Drr`].
struct TenantQueue<T> {
    weight: u64,
    cap: usize,
    running: usize,
    deficit: u64,
    /// Joined the ring with one grant owed (see the module documentation).
    fresh: bool,
    queue: VecDeque<T>,
}

/// Deficit round robin over tenants' FIFO queues of `T` (see the module
/// documentation). Pure bookkeeping: no threads, no clocks.
pub struct Drr<T> {
    tenants: HashMap<String, TenantQueue<T>>,
    /// Tenants with queued items, the next visited first. A tenant is in the
    /// ring exactly when its queue is not empty.
    ring: VecDeque<String>,
    /// The cap of a tenant never configured.
    default_cap: usize,
}

impl<T> Drr<T> {
    /// A scheduler where a tenant not given its own settings has weight 1
    /// and may run `default_cap` items at once.
    pub fn new(default_cap: usize) -> Self {
        Drr { tenants: HashMap::new(), ring: VecDeque::new(), default_cap: default_cap.max(1) }
    }

    fn entry(&mut self, tenant: &str) -> &mut TenantQueue<T> {
        let cap = self.default_cap;
        self.tenants.entry(tenant.to_string()).or_insert_with(|| TenantQueue {
            weight: 1,
            cap,
            running: 0,
            deficit: 0,
            fresh: false,
            queue: VecDeque::new(),
        })
    }

    /// Sets a tenant's weight (1..=[`MAX_WEIGHT`]) and cap on running items
    /// (at least 1); values out of range are clamped.
    pub fn set_tenant(&mut self, tenant: &str, weight: u32, cap: usize) {
        let t = self.entry(tenant);
        t.weight = u64::from(weight.clamp(1, MAX_WEIGHT));
        t.cap = cap.max(1);
    }

    /// Queues `item` at the back of `tenant`'s queue.
    pub fn push(&mut self, tenant: &str, item: T) {
        let t = self.entry(tenant);
        let joins = t.queue.is_empty();
        t.queue.push_back(item);
        if joins {
            t.deficit = 0;
            t.fresh = true;
            self.ring.push_front(tenant.to_string());
        }
    }

    /// The next item to run and its tenant, if any tenant with queued items
    /// is under its cap; the tenant's running count goes up by one (give it
    /// back with [`Drr::done`]).
    pub fn grant(&mut self) -> Option<(String, T)> {
        self.grant_where(|_| true)
    }

    /// [`Drr::grant`] among the items for which `fits` holds: a tenant
    /// whose first item that fits is not first in its queue gets that one
    /// (its earlier items keep their places), and a tenant with none that
    /// fits is passed over like one at its cap, keeping its credit. So an
    /// item that cannot run yet (its preferred executor is busy) holds up
    /// neither its tenant's other items nor other tenants'.
    pub fn grant_where(&mut self, mut fits: impl FnMut(&T) -> bool) -> Option<(String, T)> {
        // Each runnable tenant's first item that fits, found once.
        let mut first: HashMap<String, usize> = HashMap::new();
        for n in &self.ring {
            let Some(t) = self.tenants.get(n) else { continue };
            if t.running >= t.cap || first.contains_key(n) {
                continue;
            }
            if let Some(i) = t.queue.iter().position(&mut fits) {
                first.insert(n.clone(), i);
            }
        }
        let cost = first.keys().filter_map(|n| self.tenants.get(n)).map(|t| t.weight).max()?;
        // The heaviest runnable tenant is served on its visit, so one lap
        // of the ring is enough; the bound only guards the invariant.
        for _ in 0..=self.ring.len() {
            let name = self.ring.pop_front()?;
            let Some(t) = self.tenants.get_mut(&name) else { continue };
            if t.queue.is_empty() {
                t.deficit = 0;
                continue;
            }
            let Some(&at) = first.get(&name) else {
                // At its cap, or nothing of it can run now.
                self.ring.push_back(name);
                continue;
            };
            if t.fresh {
                t.fresh = false;
            } else {
                t.deficit = t.deficit.min(cost) + t.weight;
                if t.deficit < cost {
                    self.ring.push_back(name);
                    continue;
                }
                t.deficit -= cost;
            }
            let item = t.queue.remove(at)?;
            t.running += 1;
            if t.queue.is_empty() {
                t.deficit = 0;
            } else {
                self.ring.push_back(name.clone());
            }
            return Some((name, item));
        }
        None
    }

    /// An item of `tenant` handed out by [`Drr::grant`] has finished.
    pub fn done(&mut self, tenant: &str) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.running = t.running.saturating_sub(1);
        }
    }

    /// Keeps only the queued items for which `keep` holds; tenants left
    /// with nothing queued leave the ring (and their credit).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for t in self.tenants.values_mut() {
            t.queue.retain(&mut keep);
            if t.queue.is_empty() {
                t.deficit = 0;
                t.fresh = false;
            }
        }
        let tenants = &self.tenants;
        self.ring.retain(|n| tenants.get(n).is_some_and(|t| !t.queue.is_empty()));
    }

    /// Puts `item`, handed out by [`Drr::grant`] and not run after all (no
    /// executor could take it), back at the head of `tenant`'s queue, and
    /// gives back its running count.
    pub fn requeue(&mut self, tenant: &str, item: T) {
        let t = self.entry(tenant);
        t.running = t.running.saturating_sub(1);
        let joins = t.queue.is_empty();
        t.queue.push_front(item);
        if joins {
            t.fresh = true;
            self.ring.push_front(tenant.to_string());
        }
    }

    /// No tenant has anything queued.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The cap on `tenant`'s running items (the default for a tenant never configured).
    pub fn cap(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(self.default_cap, |t| t.cap)
    }

    /// Items queued for `tenant`.
    pub fn queued(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.queue.len())
    }

    /// Items of `tenant` handed out and not yet done.
    pub fn running(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.running)
    }
}

/// A task waiting in the pool, and the job it belongs to.
struct Queued {
    job: u64,
    task: Task,
}

/// What a job's tasks compute with, and where their results go.
#[derive(Clone)]
struct JobEnv {
    registry: Arc<ModuleRegistry>,
    blocks: Arc<BlockStore>,
    results: Sender<BackendEvent>,
}

struct State {
    drr: Drr<Queued>,
    jobs: HashMap<u64, JobEnv>,
    next_job: u64,
    shutdown: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when a task is queued or the pool shuts down.
    wake: Condvar,
    workers: usize,
    /// Where a worker's thread goes while it runs a tenant's tasks.
    placement: Option<Arc<dyn ThreadPlacement>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only ever changed whole under the lock (no user code
        // runs under it), so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a worker's thread is placed while it runs a tenant's tasks: `weir
/// serve` puts it in the tenant's CPU cgroup (`cpu_cgroup` of `serve.toml`),
/// so the kernel shares the cores by tenant weight among everything each
/// tenant has running, tasks and job drivers alike (the pool's DRR alone
/// cannot: it hands out slots, and a job's driver-side work takes no slot).
pub trait ThreadPlacement: Send + Sync {
    /// Places the calling thread with `tenant`. Called on a worker before
    /// it runs a task of `tenant` when its last task was another tenant's
    /// (or it has run none). A failure is the implementation's to report:
    /// the task runs regardless.
    fn enter(&self, tenant: &str);
}

/// N executor threads shared by every job given one of its [`PoolTenant`]s.
pub struct SharedPool {
    inner: Arc<Inner>,
}

impl SharedPool {
    /// Starts `workers` threads (at least one).
    pub fn start(workers: usize) -> std::io::Result<SharedPool> {
        SharedPool::start_placed(workers, None)
    }

    /// [`SharedPool::start`], with each worker placed by `placement` for
    /// the tenant whose task it runs.
    pub fn start_placed(workers: usize, placement: Option<Arc<dyn ThreadPlacement>>) -> std::io::Result<SharedPool> {
        let pool = SharedPool::idle(workers, placement);
        for i in 0..pool.inner.workers {
            let inner = pool.inner.clone();
            std::thread::Builder::new()
                .name(format!("weir-pool-{i}"))
                .stack_size(TASK_STACK_BYTES)
                .spawn(move || work(&inner))?;
        }
        Ok(pool)
    }

    /// The pool's bookkeeping without its threads.
    fn idle(workers: usize, placement: Option<Arc<dyn ThreadPlacement>>) -> SharedPool {
        let workers = workers.max(1);
        SharedPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State { drr: Drr::new(workers), jobs: HashMap::new(), next_job: 0, shutdown: false }),
                wake: Condvar::new(),
                workers,
                placement,
            }),
        }
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Sets `tenant`'s weight and its cap on running tasks (`max_slots`;
    /// never more than the pool's workers). Takes effect at the next grant.
    pub fn set_tenant(&self, tenant: &str, weight: u32, max_slots: usize) {
        self.inner.lock().drr.set_tenant(tenant, weight, max_slots.min(self.inner.workers));
    }

    /// Where the jobs of `tenant` get their executors.
    pub fn tenant(&self, tenant: &str) -> PoolTenant {
        PoolTenant::new(Arc::new(ThreadSeat { inner: self.inner.clone() }), tenant)
    }

    /// Tasks of `tenant` queued, and running.
    pub fn load(&self, tenant: &str) -> (usize, usize) {
        let s = self.inner.lock();
        (s.drr.queued(tenant), s.drr.running(tenant))
    }
}

impl Drop for SharedPool {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.shutdown = true;
        s.drr.retain(|_| false);
        // Dropping the result senders ends every job's wait for results.
        s.jobs.clear();
        drop(s);
        self.inner.wake.notify_all();
    }
}

/// A worker: takes the next task the scheduler grants, runs it, reports it.
fn work(inner: &Inner) {
    // The tenant this thread was last placed for.
    let mut placed: Option<String> = None;
    loop {
        let (tenant, queued, env) = {
            let mut s = inner.lock();
            loop {
                if s.shutdown {
                    return;
                }
                match s.drr.grant() {
                    Some((tenant, q)) => match s.jobs.get(&q.job).cloned() {
                        Some(env) => break (tenant, q, env),
                        // The job ended after queuing it: nothing to run.
                        None => s.drr.done(&tenant),
                    },
                    None => s = inner.wake.wait_timeout(s, IDLE_RECHECK).map_or_else(|p| p.into_inner().0, |r| r.0),
                }
            }
        };
        if let Some(p) = &inner.placement {
            if placed.as_deref() != Some(tenant.as_str()) {
                p.enter(&tenant);
                placed = Some(tenant.clone());
            }
        }
        let env_ref = TaskEnv { registry: &env.registry, blocks: &env.blocks, fetch: None, executor: String::new() };
        let result = run_task_guarded(&env_ref, &queued.task);
        inner.lock().drr.done(&tenant);
        // The slot is free again before the scheduler hears of the result,
        // so its next task is never held back by a stale running count. A
        // job that ended no longer listens: its result is dropped.
        let _ = env.results.send(BackendEvent::Task(result));
    }
}

/// An executor pool many jobs share: [`SharedPool`]'s threads, or executor
/// processes ([`crate::cluster::SharedCluster`]). A job joins it under its
/// tenant and gets its own backend and result channel.
pub trait Pool: Send + Sync {
    /// Registers a job of `tenant` (its modules and block store); `job`
    /// names it in the pool's status (`""`: unnamed).
    fn join(
        &self,
        tenant: &str,
        job: &str,
        registry: Arc<ModuleRegistry>,
        blocks: Arc<BlockStore>,
    ) -> std::io::Result<(Box<dyn ExecutorBackend>, Receiver<BackendEvent>)>;
    /// What the pool is, for messages.
    fn describe(&self) -> String;
}

/// A tenant's seat at a shared pool ([`SharedPool`], or a
/// [`crate::cluster::SharedCluster`]): what a job is run with
/// ([`RunOptions::pool`](crate::scheduler::RunOptions)).
#[derive(Clone)]
pub struct PoolTenant {
    pool: Arc<dyn Pool>,
    tenant: String,
    /// The job's name in the pool's status.
    job: String,
    /// What the tenant's jobs' blocks may hold together (held by the job's
    /// driver and, on a pool of threads, by its tasks).
    budget: Option<Arc<super::block_store::BlockBudget>>,
}

impl std::fmt::Debug for PoolTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolTenant({} on {})", self.tenant, self.pool.describe())
    }
}

impl PoolTenant {
    /// `tenant`'s seat at `pool`.
    pub fn new(pool: Arc<dyn Pool>, tenant: &str) -> Self {
        PoolTenant { pool, tenant: tenant.to_string(), job: String::new(), budget: None }
    }

    /// This seat with the tenant's block budget: every job run on it keeps
    /// its blocks within it (see [`super::block_store`]).
    pub fn with_block_budget(mut self, budget: Arc<super::block_store::BlockBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn block_budget(&self) -> Option<&Arc<super::block_store::BlockBudget>> {
        self.budget.as_ref()
    }

    /// This seat for the job named `job` (a server's job id): the pool's
    /// status names the jobs whose tasks run on each executor.
    pub fn for_job(mut self, job: &str) -> Self {
        self.job = job.to_string();
        self
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Registers a job (its modules and block store) with the pool: its
    /// backend, and the channel its task results arrive on.
    pub fn executors(
        &self,
        registry: Arc<ModuleRegistry>,
        blocks: Arc<BlockStore>,
    ) -> std::io::Result<(Box<dyn ExecutorBackend>, Receiver<BackendEvent>)> {
        self.pool.join(&self.tenant, &self.job, registry, blocks)
    }
}

/// The threads of a [`SharedPool`] as a [`Pool`].
struct ThreadSeat {
    inner: Arc<Inner>,
}

impl Pool for ThreadSeat {
    fn join(
        &self,
        tenant: &str,
        _job: &str,
        registry: Arc<ModuleRegistry>,
        blocks: Arc<BlockStore>,
    ) -> std::io::Result<(Box<dyn ExecutorBackend>, Receiver<BackendEvent>)> {
        let (b, rx) = join_threads(&self.inner, tenant, registry, blocks)?;
        Ok((Box::new(b), rx))
    }
    fn describe(&self) -> String {
        format!("{} pool threads", self.inner.workers)
    }
}

/// Registers a job of `tenant` with the pool's threads.
fn join_threads(
    inner: &Arc<Inner>,
    tenant: &str,
    registry: Arc<ModuleRegistry>,
    blocks: Arc<BlockStore>,
) -> std::io::Result<(PooledExecutors, Receiver<BackendEvent>)> {
    let (results, rx) = channel();
    let mut s = inner.lock();
    if s.shutdown {
        return Err(std::io::Error::other("the shared executor pool has shut down"));
    }
    let job = s.next_job;
    s.next_job += 1;
    s.jobs.insert(job, JobEnv { registry, blocks: blocks.clone(), results });
    let slots = s.drr.tenants.get(tenant).map_or(inner.workers, |t| t.cap.min(inner.workers));
    drop(s);
    Ok((PooledExecutors { inner: inner.clone(), tenant: tenant.to_string(), job, slots, blocks }, rx))
}

/// One job's executors on a [`SharedPool`].
pub struct PooledExecutors {
    inner: Arc<Inner>,
    tenant: String,
    job: u64,
    slots: usize,
    blocks: Arc<BlockStore>,
}

impl ExecutorBackend for PooledExecutors {
    fn submit(&self, task: Task) {
        let mut s = self.inner.lock();
        // After a shutdown (or once this job is gone) nothing runs it; the
        // job's result channel is closed, which its scheduler sees.
        if s.shutdown || !s.jobs.contains_key(&self.job) {
            return;
        }
        s.drr.push(&self.tenant, Queued { job: self.job, task });
        drop(s);
        self.inner.wake.notify_one();
    }
    fn slots(&self) -> usize {
        self.slots
    }
    fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }
}

impl Drop for PooledExecutors {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.jobs.remove(&self.job);
        let job = self.job;
        s.drr.retain(|q| q.job != job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants `n` items (never marking them done) and counts them per tenant.
    fn grants(d: &mut Drr<u32>, n: usize) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            let (t, _) = d.grant().expect("an item");
            *c.entry(t).or_insert(0) += 1;
        }
        c
    }

    fn backlog(d: &mut Drr<u32>, tenant: &str, n: u32) {
        for i in 0..n {
            d.push(tenant, i);
        }
    }

    #[test]
    fn weights_two_to_one_give_two_to_one_grants() {
        let mut d = Drr::new(1000);
        d.set_tenant("a", 2, 1000);
        d.set_tenant("b", 1, 1000);
        backlog(&mut d, "a", 500);
        backlog(&mut d, "b", 500);
        let c = grants(&mut d, 300);
        assert!((198..=202).contains(&c["a"]), "{c:?}");
        assert!((98..=102).contains(&c["b"]), "{c:?}");
        // Interleaved, not in bursts: never three of b's in a row, nor five of a's.
        let mut d = Drr::new(1000);
        d.set_tenant("a", 2, 1000);
        backlog(&mut d, "a", 100);
        backlog(&mut d, "b", 100);
        let order: String = (0..60).map(|_| if d.grant().unwrap().0 == "a" { 'a' } else { 'b' }).collect();
        assert!(!order.contains("bbb") && !order.contains("aaaaa"), "{order}");
    }

    /// Items that cannot run now are passed over, not waited for: a
    /// tenant's later item that can run is granted before its earlier one
    /// (which keeps its place), and a tenant with nothing that can run
    /// keeps its turn for when it can.
    #[test]
    fn grant_where_passes_over_items_that_cannot_run() {
        let mut d = Drr::new(1000);
        d.push("a", 1); // cannot run (odd)
        d.push("a", 2);
        d.push("b", 3); // cannot run
        let even = |i: &u32| i.is_multiple_of(2);
        assert_eq!(d.grant_where(even), Some(("a".into(), 2)));
        assert_eq!(d.grant_where(even), None, "only items that cannot run are left");
        d.push("b", 4);
        assert_eq!(d.grant_where(even), Some(("b".into(), 4)));
        // What was passed over is still queued, first in its tenant's queue.
        assert_eq!(d.grant(), Some(("a".into(), 1)));
        assert_eq!(d.grant(), Some(("b".into(), 3)));
        assert!(d.is_empty());
    }

    #[test]
    fn finished_tasks_free_slots_in_weight_order_on_a_simulated_pool() {
        // Two workers, tasks of one tick: each tick both finish and both are handed out again.
        let mut d = Drr::new(2);
        d.set_tenant("a", 2, 2);
        d.set_tenant("b", 1, 2);
        backlog(&mut d, "a", 1000);
        backlog(&mut d, "b", 1000);
        let mut c: HashMap<String, usize> = HashMap::new();
        for _ in 0..150 {
            let got: Vec<String> = (0..2).filter_map(|_| d.grant().map(|g| g.0)).collect();
            assert_eq!(got.len(), 2);
            for t in got {
                *c.entry(t.clone()).or_insert(0) += 1;
                d.done(&t);
            }
        }
        assert!((197..=203).contains(&c["a"]) && (97..=103).contains(&c["b"]), "{c:?}");
    }

    #[test]
    fn an_idle_tenant_banks_no_credit() {
        let mut d = Drr::new(1000);
        backlog(&mut d, "a", 1000);
        // b had a task long ago, then nothing while a ran 200.
        d.push("b", 0);
        let _ = grants(&mut d, 201);
        assert_eq!(d.queued("b"), 0);
        backlog(&mut d, "b", 100);
        // Equal weights: of the next 40 grants b gets its half (plus at most
        // the one owed on joining), not a burst for the time it was idle.
        let c = grants(&mut d, 40);
        assert!((20..=21).contains(&c["b"]), "{c:?}");
        let mut d2 = Drr::new(1000);
        backlog(&mut d2, "a", 1000);
        backlog(&mut d2, "b", 100);
        let first: Vec<String> = (0..6).map(|_| d2.grant().unwrap().0).collect();
        assert_eq!(first.iter().filter(|t| *t == "b").count(), 3, "{first:?}");
    }

    #[test]
    fn max_slots_caps_a_tenants_running_tasks() {
        let mut d = Drr::new(4);
        d.set_tenant("a", 10, 1);
        d.set_tenant("b", 1, 2);
        backlog(&mut d, "a", 10);
        backlog(&mut d, "b", 10);
        let c = grants(&mut d, 3);
        assert_eq!((c["a"], c["b"]), (1, 2));
        // Both at their caps: nothing more, though workers are free.
        assert!(d.grant().is_none());
        assert_eq!((d.running("a"), d.running("b")), (1, 2));
        d.done("a");
        assert_eq!(d.grant().map(|g| g.0).as_deref(), Some("a"));
        assert!(d.grant().is_none());
        d.done("b");
        assert_eq!(d.grant().map(|g| g.0).as_deref(), Some("b"));
    }

    #[test]
    fn a_tenant_arriving_behind_a_long_backlog_starts_within_one_task_length() {
        // Two workers, tasks of 10 ticks; a (heavier than the pool is wide)
        // has a long backlog; b's first task arrives at tick 15.
        let mut d = Drr::new(2);
        d.set_tenant("a", 4, 2);
        backlog(&mut d, "a", 1000);
        let mut busy: Vec<(u32, String)> = Vec::new(); // (finish tick, tenant)
        let mut b_started = None;
        for tick in 0..100u32 {
            if tick == 15 {
                backlog(&mut d, "b", 5);
            }
            for (_, t) in busy.iter().filter(|(f, _)| *f == tick) {
                d.done(t);
            }
            busy.retain(|(f, _)| *f != tick);
            while busy.len() < 2 {
                let Some((t, _)) = d.grant() else { break };
                if t == "b" && b_started.is_none() {
                    b_started = Some(tick);
                }
                busy.push((tick + 10, t));
            }
        }
        let started = b_started.expect("b never ran");
        assert!(started <= 15 + 10, "b's first task started at tick {started}");
    }

    #[test]
    fn retain_drops_a_jobs_queued_items_and_the_tenant_leaves_the_ring() {
        let mut d = Drr::new(2);
        backlog(&mut d, "a", 4);
        d.push("b", 7);
        d.retain(|x| *x != 7);
        assert_eq!(d.queued("b"), 0);
        let c = grants(&mut d, 2);
        assert_eq!(c.get("b"), None);
    }

    fn a_task(id: u64) -> Task {
        Task {
            id,
            attempt: 0,
            batch_time: 0,
            rdds: Default::default(),
            partition: 0,
            kind: crate::executor::TaskKind::Result { rdd: crate::rdd::RddId { time: 0, node: 1 } },
            locations: Vec::new(),
        }
    }

    #[test]
    fn dropping_a_jobs_backend_removes_its_queued_tasks_only() {
        // No worker threads: the tasks stay queued.
        let pool = SharedPool::idle(2, None);
        let registry =
            Arc::new(ModuleRegistry::new(crate::udf::UdfRuntime::shared().expect("engine"), Default::default()));
        let (one, _rx1) = pool.tenant("t").executors(registry.clone(), BlockStore::new()).expect("job one");
        let (two, _rx2) = pool.tenant("t").executors(registry, BlockStore::new()).expect("job two");
        for i in 0..3 {
            one.submit(a_task(i));
            two.submit(a_task(10 + i));
        }
        assert_eq!(pool.load("t"), (6, 0));
        drop(one);
        assert_eq!(pool.load("t"), (3, 0));
        drop(two);
        assert_eq!(pool.load("t"), (0, 0));
    }

    #[test]
    fn a_task_runs_on_the_pool_and_a_dropped_pool_closes_the_result_channel() {
        let pool = SharedPool::start(1).expect("workers");
        let registry =
            Arc::new(ModuleRegistry::new(crate::udf::UdfRuntime::shared().expect("engine"), Default::default()));
        let (job, rx) = pool.tenant("t").executors(registry, BlockStore::new()).expect("job");
        assert_eq!(job.slots(), 1);
        // Its RDD is not in the task: the task fails, as a result.
        job.submit(a_task(5));
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(BackendEvent::Task(r)) => assert!(r.task_id == 5 && r.outcome.is_err(), "{r:?}"),
            other => panic!("{other:?}"),
        }
        drop(pool);
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_err());
    }
}
