//! The driver's side of a cluster: accepts executors (authenticated),
//! hands them tasks, relays their results, watches their heartbeats, and
//! declares an executor lost when its connection drops or it falls silent.
//! A lost executor's running tasks are reported failed (`ExecutorLost`) so the
//! scheduler runs them elsewhere; its blocks are reported gone so lost map
//! outputs are recomputed from lineage. Anything it sends after that is
//! ignored: its connection is shut and its id is never reused.
//!
//! Nothing writes to a socket while holding the driver's lock: each executor
//! has a writer thread fed by a bounded queue, and its writes time out after
//! the heartbeat timeout. An executor that stops reading is thus lost like a
//! silent one, and never holds up results or the heartbeat check.
//!
//! A stage's lineage goes to an executor once (`Stage`), and its tasks name
//! it (`Run { stage, .. }`): tasks with equal lineage share a stage id.
//! Module answers are queued as references to the registry's bytes, so a
//! peer that asks again and again costs a bounded queue of pointers.
//!
//! One driver may run many jobs' tasks on its executors ([`SharedCluster`],
//! `weir serve`'s pool); `weir run`'s [`ClusterBackend`] is the case of one
//! job. Each job registers its module registry (so its sandbox limits),
//! block store and result channel; its tasks are queued under its tenant,
//! and a free executor slot takes the next task that deficit round robin
//! ([`Drr`]) grants, so tenants share the executors by weight, each capped at
//! its `max_slots`. Every frame names its job: the executors keep each job's
//! modules and blocks apart, a module is sent only from the asking job's own
//! registry, and a job that ends is told to every executor (`EndJob`) so
//! they drop its blocks — if an executor's send queue is full then, its
//! `EndJob` waits on the driver and is queued as soon as there is room.
//! A task whose job prefers an executor that is busy is passed over, not
//! waited for, by the tasks behind it, and waits for that executor at most
//! the locality wait while other jobs' tasks hold it.
//! A lost executor's running tasks go back to their
//! own jobs as `ExecutorLost`, and every job hears that its blocks are gone.
//!
//! Connections are capped ([`super::gate`]); the handshake has a deadline.
//! `local-cluster[N]` starts a replacement when one of its executors is lost
//! (after a backoff, up to [`MAX_RESTARTS`] in a row), and a driver with no
//! executor for `no_executor_timeout` fails the tasks it holds with a clear
//! error instead of waiting for ever.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::block_server::{self, JobBlocks};
use super::gate::{Gate, Ticket};
use super::protocol::{self, Admission, BlockQuota, FromExecutor, JobId, Role, StageId, ToExecutor, STAGE_CACHE};
use crate::executor::block_store::BlockBudget;
use crate::executor::pool::{Drr, Pool, PoolTenant};
use crate::executor::{BackendEvent, BlockStore, ExecutorBackend, Task, TaskFailure, TaskResult};
use crate::listener::{ExecutorEvent, ListenerBus};
use crate::rdd::{Rdd, RddId};
use crate::udf::{ModuleHash, ModuleRegistry, UdfLimits};

/// The shortest heartbeat timeout accepted: several heartbeat intervals, so
/// one late heartbeat does not lose an executor (and 0 does not lose all).
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// Replacements of lost `local-cluster` executors started in a row (a
/// replacement that stays `STABLE_AFTER` resets the count), as Spark's
/// standalone master caps executor retries.
pub const MAX_RESTARTS: u32 = 10;
/// A replacement that lives this long counts as a success.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Backoff before the first replacement in a row, doubled after each up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How a driver runs its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Executor processes to start on this machine (`local-cluster[N]`).
    pub local_executors: u32,
    /// Tasks per executor process.
    pub cores: u32,
    /// Address to accept executors on (default: loopback, any port).
    pub listen: Option<String>,
    /// Remote executors to wait for before the first batch.
    pub wait_for: u32,
    /// The cluster secret; generated for local-cluster when absent.
    pub secret: Option<Vec<u8>>,
    /// An executor silent for this long is declared lost (at least
    /// [`MIN_HEARTBEAT_TIMEOUT`]).
    pub heartbeat_timeout: Duration,
    /// With no executor connected for this long, the tasks the driver holds
    /// fail (and with them the batch) instead of waiting.
    pub no_executor_timeout: Duration,
    /// The program started for local executors (`PROGRAM executor --driver
    /// ...`); `None` looks for `weir` beside the current executable, then on
    /// `PATH`.
    pub executor_binary: Option<std::path::PathBuf>,
    /// Told when executors join (losses are told by the scheduler).
    pub listeners: ListenerBus,
    /// How long a task waits for its job's preferred executor
    /// ([`ExecutorBackend::prefer`]) while other jobs' tasks fill that
    /// executor's slots, before it runs on any executor (Spark's
    /// `spark.locality.wait`); [`DEFAULT_LOCALITY_WAIT`] by default.
    pub locality_wait: Duration,
    /// The largest frame taken from an authenticated executor or block
    /// fetcher ([`protocol::check_frame_limit`]); local executors get the
    /// same limit.
    pub max_frame: usize,
}

/// [`ClusterConfig::locality_wait`]'s default (Spark's `spark.locality.wait`).
pub const DEFAULT_LOCALITY_WAIT: Duration = Duration::from_secs(3);

/// The program `local-cluster[N]` starts as executors: the configured one,
/// else `weir` beside the current executable, else `weir` on `PATH`.
pub fn find_executor_binary(configured: Option<&std::path::Path>) -> std::io::Result<std::path::PathBuf> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the executor binary {} does not exist", p.display()),
            ))
        };
    }
    let name = format!("weir{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(&name)));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(&name)).collect::<Vec<_>>())
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| p.is_file()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "local-cluster needs the `weir` binary to start executors: none beside this program or on PATH; \
             install it (cargo install --path engine/cli) or set the executor binary in the cluster options",
        )
    })
}

type StageRdds = BTreeMap<RddId, Rdd>;

/// Lineages the driver has given stage ids to, newest first. Tasks of one
/// job with equal lineage get the same id, so an executor receives it once;
/// two jobs never share a stage id, even with equal lineage.
#[derive(Default)]
struct Stages {
    recent: VecDeque<(StageId, JobId, Arc<StageRdds>)>,
    next: StageId,
}

/// Lineages remembered for matching new tasks: well above the stages in
/// flight at once (a batch's output jobs, windows).
const STAGES_REMEMBERED: usize = 64;

impl Stages {
    fn id_of(&mut self, job: JobId, rdds: &StageRdds) -> StageId {
        if let Some((id, _, _)) = self.recent.iter().find(|(_, j, r)| *j == job && **r == *rdds) {
            return *id;
        }
        self.next += 1;
        self.recent.push_front((self.next, job, Arc::new(rdds.clone())));
        self.recent.truncate(STAGES_REMEMBERED);
        self.next
    }
}

/// What the driver has sent to executors (frames written, not queued).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// `Stage` frames (lineage registrations).
    pub stage_frames: u64,
    /// `Run` frames (tasks).
    pub run_frames: u64,
    /// Bytes of every frame written, all kinds.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    stage_frames: AtomicU64,
    run_frames: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SendStats {
        SendStats {
            stage_frames: self.stage_frames.load(Ordering::Relaxed),
            run_frames: self.run_frames.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

struct Running {
    stage: StageId,
    task: Task,
    /// Whose slot it holds in the [`Drr`].
    tenant: String,
}

struct Conn {
    addr: String,
    pid: u32,
    slots: u32,
    /// The largest frame it takes (its handshake said; clamped).
    limit: usize,
    /// For shutting the connection when the executor is lost.
    sock: TcpStream,
    /// To its writer thread; dropping it ends the thread.
    out: SyncSender<Outgoing>,
    writer: Option<JoinHandle<()>>,
    /// Its running tasks, by job and task id.
    running: HashMap<(JobId, u64), Running>,
    /// The stage lineages it holds, oldest first (mirrors its cache).
    stages: VecDeque<StageId>,
    /// The jobs it has been told of (`Job`), not yet ended.
    jobs: HashSet<JobId>,
    /// Jobs that ended while its send queue was full: their `EndJob` is
    /// queued as soon as there is room (each monitor tick), so an executor
    /// that was busy when a job ended still drops that job's blocks and
    /// modules. At most one per job it was told of.
    ends: VecDeque<JobId>,
    last_seen: Instant,
    /// Heartbeats received and the UDF memory (now, peak) it reported, for
    /// the status page (whose heartbeat age is `last_seen`'s: the silence
    /// the heartbeat timeout measures, from the join on).
    heartbeats: u64,
    udf_memory: Option<(u64, u64)>,
    /// When the driver listens on an unspecified address (`0.0.0.0:P`,
    /// `[::]:P`, as in a container), its block server's address names no
    /// host another machine can reach: (that address, the one this
    /// executor reached the driver on with the block server's port). Its
    /// tasks' block locations are rewritten from the first to the second.
    driver_blocks: Option<(String, String)>,
}

/// What an executor is told of a job before its first task there.
struct JobTerms {
    job: JobId,
    limits: UdfLimits,
    budget: Option<Arc<BlockBudget>>,
}

impl JobTerms {
    fn of(job: JobId, e: &JobEntry) -> JobTerms {
        JobTerms { job, limits: *e.registry.limits(), budget: e.budget.clone() }
    }

    /// The `Job` frame, with the budget's limit as it is now (a server's
    /// reload reaches the executors a job is first sent to after it).
    fn frame(&self) -> ToExecutor {
        let blocks = self.budget.as_ref().map(|b| BlockQuota { what: b.what().to_string(), bytes: b.limit() });
        ToExecutor::Job { job: self.job, limits: self.limits, blocks }
    }
}

/// A job running on the driver's executors.
struct JobEntry {
    tenant: String,
    /// Its name in the pool's status (a server's job id; `""`: unnamed).
    name: String,
    /// Its modules (sent only to its own tasks' executors) and limits.
    registry: Arc<ModuleRegistry>,
    /// The budget of its blocks on the driver, which executors apply to
    /// its blocks on them too (`None`: unbounded).
    budget: Option<Arc<BlockBudget>>,
    events: Sender<BackendEvent>,
    /// Its tasks go only to the executor with this block address, while
    /// it is connected ([`ExecutorBackend::prefer`]).
    prefer: Option<String>,
}

/// A task waiting for an executor slot.
struct Queued {
    job: JobId,
    stage: StageId,
    task: Task,
    /// When dispatch first found it waiting for its job's preferred
    /// executor (busy): after the locality wait it may run anywhere.
    blocked_since: std::cell::Cell<Option<Instant>>,
}

struct State {
    executors: BTreeMap<u64, Conn>,
    /// Queued tasks, by tenant (one tenant for `weir run`).
    queue: Drr<Queued>,
    jobs: HashMap<JobId, JobEntry>,
    next_job: JobId,
    next_id: u64,
    /// The driver is stopping: executors leaving is expected.
    stopping: bool,
    /// Since when no executor has been connected (None while one is).
    empty_since: Option<Instant>,
    /// The no-executor timeout has been logged as an error (once per spell).
    empty_reported: bool,
    /// Addresses of the executors lost, newest last (at most
    /// [`LOST_KEPT`]): a status read between batches shows them lost at
    /// once, before a job's scheduler hears of the loss.
    lost: std::collections::VecDeque<String>,
}

/// Lost executors' addresses kept for status reads.
const LOST_KEPT: usize = 1024;

struct Shared {
    state: Mutex<State>,
    joined: Condvar,
    /// Each job's blocks on the driver (input blocks), served by its block server.
    blocks: Arc<JobBlocks>,
    block_addr: String,
    secret: Arc<Vec<u8>>,
    timeout: Duration,
    listeners: ListenerBus,
    stages: Mutex<Stages>,
    counters: Counters,
    no_executor_timeout: Duration,
    /// [`ClusterConfig::locality_wait`].
    locality_wait: Duration,
    /// [`ClusterConfig::max_frame`].
    max_frame: usize,
    /// The `local-cluster` executor processes, and how to start more.
    local: Mutex<Local>,
}

/// `local-cluster[N]`'s executor processes.
#[derive(Default)]
struct Local {
    /// How many should be connected.
    want: u32,
    /// The program and arguments that start one, with the secret.
    command: Option<(std::path::PathBuf, Vec<String>, String)>,
    children: Vec<Child>,
    /// Replacements started in a row without one staying [`STABLE_AFTER`].
    restarts: u32,
    /// When the next replacement may start.
    next_start: Option<Instant>,
    /// Started, not yet joined: (pid, when).
    starting: Vec<(u32, Instant)>,
    /// Pids of joined executors, with when they joined.
    joined: HashMap<u32, Instant>,
    gave_up: bool,
}

impl Local {
    fn spawn(&mut self) -> std::io::Result<u32> {
        let Some((exe, args, secret)) = &self.command else {
            return Err(std::io::Error::other("no executor program"));
        };
        let child = Command::new(exe).args(args).env("WEIR_SECRET", secret).spawn()?;
        let pid = child.id();
        self.children.push(child);
        self.starting.push((pid, Instant::now()));
        Ok(pid)
    }
}

/// `local-cluster[N]` and remote executors, for one job (`weir run`).
pub struct ClusterBackend {
    shared: Arc<Shared>,
    job: JobId,
    blocks: Arc<BlockStore>,
}

/// What a writer thread sends: a message, or a module by reference (encoded
/// only when written, so queued answers do not copy its bytes).
enum Outgoing {
    Msg(ToExecutor),
    Module { job: JobId, name: String, hash: ModuleHash, bytes: Arc<Vec<u8>> },
}

/// Why a message could not be queued for an executor.
#[derive(Debug, thiserror::Error)]
enum QueueError {
    #[error("its send queue is full (it is not reading)")]
    Full,
    #[error("its connection is closed")]
    Closed,
}

/// Frames queued for one executor beyond its task slots (module answers,
/// lineage, shutdown). Bounded, since `slots` comes from the peer.
fn queue_bound(slots: u32) -> usize {
    64 + 2 * slots.min(1024) as usize
}

impl Conn {
    fn send(&self, msg: ToExecutor) -> Result<(), QueueError> {
        self.send_out(Outgoing::Msg(msg))
    }

    /// Tells the executor that `job` ended, now if its queue has room, else
    /// as soon as it has ([`Conn::send_ends`]).
    fn end_job(&mut self, job: JobId) {
        self.ends.push_back(job);
        self.send_ends();
        if self.ends.contains(&job) {
            tracing::debug!(
                "executor (pid {}): its send queue is full; it is told that job {job} ended once it has room",
                self.pid
            );
        }
    }

    /// Queues the `EndJob`s that waited for room, oldest first, while there is room.
    fn send_ends(&mut self) {
        while let Some(&job) = self.ends.front() {
            match self.send(ToExecutor::EndJob { job }) {
                Ok(()) => {
                    self.ends.pop_front();
                }
                Err(QueueError::Full) => return,
                // Its connection is going: the executor drops every job with it.
                Err(QueueError::Closed) => {
                    self.ends.clear();
                    return;
                }
            }
        }
    }

    fn send_out(&self, msg: Outgoing) -> Result<(), QueueError> {
        self.out.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Closed,
        })
    }

    /// Queues task `task` of stage `stage` of the job `terms` describe, with the job's
    /// registration and the stage's lineage first unless the executor holds
    /// them.
    fn send_task(&mut self, terms: &JobTerms, stage: StageId, task: &Task) -> Result<(), QueueError> {
        let job = terms.job;
        if !self.jobs.contains(&job) {
            self.send(terms.frame())?;
            self.jobs.insert(job);
        }
        if !self.stages.contains(&stage) {
            self.send(ToExecutor::Stage { job, stage, rdds: task.rdds.clone() })?;
            self.stages.push_back(stage);
            while self.stages.len() > STAGE_CACHE {
                self.stages.pop_front();
            }
        }
        let bare = Task {
            id: task.id,
            attempt: task.attempt,
            batch_time: task.batch_time,
            rdds: BTreeMap::new(),
            partition: task.partition,
            kind: task.kind.clone(),
            locations: match &self.driver_blocks {
                Some((own, reached)) => task
                    .locations
                    .iter()
                    .map(|(b, a)| (*b, if a == own { reached.clone() } else { a.clone() }))
                    .collect(),
                None => task.locations.clone(),
            },
        };
        self.send(ToExecutor::Run { job, stage, task: Box::new(bare) })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Never taken while holding the state lock's guard.
    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues tasks for executors with free slots (least loaded first), in
    /// the order the [`Drr`] grants them across tenants. Only queues: the
    /// executors' writer threads do the writing.
    ///
    /// A task whose job prefers an executor ([`ExecutorBackend::prefer`])
    /// goes there; while that executor's slots are full the task waits, but
    /// it is passed over rather than holding up the tasks behind it (its
    /// tenant's and other tenants'). If other jobs' tasks fill that
    /// executor, it waits at most the locality wait, then runs anywhere
    /// (its own job's tasks there end, and it follows them).
    fn dispatch(&self, st: &mut State) {
        let now = Instant::now();
        let wait = self.locality_wait;
        while st.executors.values().any(|c| (c.running.len() as u32) < c.slots) {
            let (jobs, executors) = (&st.jobs, &st.executors);
            let fits = |q: &Queued| match preferred_of(jobs, executors, q.job) {
                None => true,
                Some((_, c)) if (c.running.len() as u32) < c.slots => true,
                Some((_, c)) => {
                    let since = q.blocked_since.get().unwrap_or(now);
                    q.blocked_since.set(Some(since));
                    now.duration_since(since) >= wait && c.running.keys().any(|(j, _)| *j != q.job)
                }
            };
            let Some((tenant, q)) = st.queue.grant_where(fits) else { return };
            let Some(entry) = st.jobs.get(&q.job) else {
                st.queue.done(&tenant); // its job ended after queuing it
                continue;
            };
            let terms = JobTerms::of(q.job, entry);
            let preferred = preferred_of(&st.jobs, &st.executors, q.job)
                .filter(|(_, c)| (c.running.len() as u32) < c.slots)
                .map(|(id, _)| id);
            let pick = preferred.or_else(|| {
                st.executors
                    .iter()
                    .filter(|(_, c)| (c.running.len() as u32) < c.slots)
                    .min_by_key(|(id, c)| (c.running.len(), **id))
                    .map(|(id, _)| *id)
            });
            let Some(id) = pick else {
                st.queue.requeue(&tenant, q); // not reached: it fitted
                return;
            };
            let Some(conn) = st.executors.get_mut(&id) else { return };
            match conn.send_task(&terms, q.stage, &q.task) {
                Ok(()) => {
                    let Queued { job, stage, task, .. } = q;
                    conn.running.insert((job, task.id), Running { stage, task, tenant });
                }
                Err(e) => {
                    st.queue.requeue(&tenant, q);
                    self.lose(st, id, &format!("cannot send to it: {e}"));
                }
            }
        }
    }

    /// Removes an executor: its tasks fail with ExecutorLost, its blocks are
    /// reported gone (to every job), and nothing it sends from now on is heard.
    fn lose(&self, st: &mut State, id: u64, reason: &str) {
        let Some(conn) = st.executors.remove(&id) else { return };
        // Also wakes its writer thread if it is blocked writing.
        let _ = conn.sock.shutdown(std::net::Shutdown::Both);
        for r in conn.running.values() {
            st.queue.done(&r.tenant);
        }
        if st.stopping {
            return;
        }
        st.lost.retain(|a| a != &conn.addr);
        if st.lost.len() >= LOST_KEPT {
            st.lost.pop_front();
        }
        st.lost.push_back(conn.addr.clone());
        tracing::warn!(
            "executor {id} (pid {}, {}) lost: {reason}; {} running task(s) go elsewhere",
            conn.pid,
            conn.addr,
            conn.running.len()
        );
        for j in st.jobs.values() {
            let lost = BackendEvent::ExecutorLost { executor: conn.addr.clone(), reason: reason.to_string() };
            let _ = j.events.send(lost);
        }
        for ((job, _), r) in conn.running {
            let Some(j) = st.jobs.get(&job) else { continue };
            let t = r.task;
            let _ = j.events.send(BackendEvent::Task(TaskResult {
                task_id: t.id,
                attempt: t.attempt,
                outcome: Err(TaskFailure::ExecutorLost(format!("executor {id}: {reason}"))),
                blocks: vec![],
                udf_calls: 0,
                micros: 0,
                executor: String::new(),
                udf_usage: Vec::new(),
            }));
        }
    }

    /// Registers a job of `tenant`: its modules, its blocks on the driver,
    /// and the channel its results go to.
    fn add_job(
        &self,
        tenant: &str,
        name: &str,
        registry: Arc<ModuleRegistry>,
        blocks: &Arc<BlockStore>,
    ) -> std::io::Result<(JobId, Receiver<BackendEvent>)> {
        // A module goes to executors in one frame: one over the limit the
        // driver's executors are started with is refused here, by name.
        if let Some((module, bytes)) = registry.module_sizes().into_iter().find(|(_, b)| b + 1024 > self.max_frame) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "module {module} is {bytes} bytes: it cannot be sent to executors under a frame limit of {} bytes (--max-frame-bytes)",
                    self.max_frame
                ),
            ));
        }
        let (events, rx) = std::sync::mpsc::channel();
        let mut st = self.lock();
        if st.stopping {
            return Err(std::io::Error::other("the executor pool has shut down"));
        }
        let job = st.next_job;
        st.next_job += 1;
        self.blocks.insert(job, blocks.clone());
        let (tenant, name, budget) = (tenant.to_string(), name.to_string(), blocks.budget().cloned());
        let entry = JobEntry { tenant, name, registry, budget, events, prefer: None };
        st.jobs.insert(job, entry);
        Ok((job, rx))
    }

    /// Job `job` is over: its queued tasks are dropped, its running ones'
    /// results will be, and every executor that ran it drops its blocks and
    /// modules.
    fn remove_job(&self, job: JobId) {
        let mut st = self.lock();
        st.jobs.remove(&job);
        st.queue.retain(|q| q.job != job);
        self.blocks.remove(job);
        for c in st.executors.values_mut() {
            if c.jobs.remove(&job) {
                c.end_job(job);
            }
        }
        self.dispatch(&mut st);
    }

    /// Queues a task of job `job` (under its tenant) and hands out work.
    fn submit(&self, job: JobId, task: Task) {
        // Matched outside the global lock: comparing lineage takes time.
        let stage = self.stages.lock().unwrap_or_else(|p| p.into_inner()).id_of(job, &task.rdds);
        let mut st = self.lock();
        let Some(tenant) = st.jobs.get(&job).map(|j| j.tenant.clone()) else { return };
        st.queue.push(&tenant, Queued { job, stage, task, blocked_since: Default::default() });
        self.dispatch(&mut st);
    }

    /// Task slots of every connected executor.
    fn slots(&self) -> usize {
        self.lock().executors.values().map(|c| c.slots as usize).sum()
    }

    fn prefer(&self, job: JobId, executor: Option<&str>) {
        let mut st = self.lock();
        if let Some(j) = st.jobs.get_mut(&job) {
            j.prefer = executor.map(String::from);
        }
        // A new preference starts a new wait.
        st.queue.retain(|q| {
            if q.job == job {
                q.blocked_since.set(None);
            }
            true
        });
        self.dispatch(&mut st);
    }

    /// Stops every executor (`Shutdown`) and the local ones' processes.
    fn shutdown(&self) {
        let conns = {
            let mut st = self.lock();
            st.stopping = true;
            std::mem::take(&mut st.executors)
        };
        // Queued after what each executor has been sent; dropping the conns
        // closes the queues, so the writers end once they have written them.
        let mut writers = Vec::new();
        for (_, mut c) in conns {
            let _ = c.send(ToExecutor::Shutdown);
            writers.extend(c.writer.take());
        }
        // A writer stuck on an executor that does not read gives up after
        // its write timeout; do not wait longer than that for the rest.
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(2));
        while writers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut local = self.local();
        local.want = 0;
        for c in local.children.iter_mut() {
            // Executors exit when their driver goes; make sure of it.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Loses executor `id` (unless it is gone already) and gives its tasks
    /// to the others.
    fn lose_and_dispatch(&self, id: u64, reason: &str) {
        let mut st = self.lock();
        self.lose(&mut st, id, reason);
        self.dispatch(&mut st);
    }
}

/// The executor job `job` prefers, when it prefers one and that one is connected.
fn preferred_of<'a>(
    jobs: &HashMap<JobId, JobEntry>,
    executors: &'a BTreeMap<u64, Conn>,
    job: JobId,
) -> Option<(u64, &'a Conn)> {
    let addr = jobs.get(&job)?.prefer.as_ref()?;
    executors.iter().find(|(_, c)| c.addr == *addr).map(|(id, c)| (*id, c))
}

/// Writes what is queued for executor `id`, outside the driver's lock; a
/// write that fails or makes no progress for the heartbeat timeout, or a
/// frame over the executor's `limit`, loses the executor. Ends when the
/// queue's sender is dropped (the executor was removed) or after a failed
/// write.
fn writer_loop(shared: Arc<Shared>, (id, limit): (u64, usize), mut sock: TcpStream, rx: Receiver<Outgoing>) {
    let timeout = shared.timeout.max(Duration::from_millis(1));
    if let Err(e) = sock.set_write_timeout(Some(timeout)) {
        shared.lose_and_dispatch(id, &format!("cannot set a write timeout on its connection ({e})"));
        return;
    }
    for out in rx {
        let msg = match out {
            Outgoing::Msg(m) => m,
            Outgoing::Module { job, name, hash, bytes } => {
                ToExecutor::Module { job, name, hash, bytes: bytes.to_vec() }
            }
        };
        let (stage, run) = match &msg {
            ToExecutor::Stage { .. } => (1, 0),
            ToExecutor::Run { .. } => (0, 1),
            _ => (0, 0),
        };
        let what = match &msg {
            ToExecutor::Module { name, .. } => format!("module {name}"),
            ToExecutor::Stage { .. } => "a stage's lineage".to_string(),
            ToExecutor::Run { .. } => "a task".to_string(),
            _ => "a frame".to_string(),
        };
        let written = protocol::encode_frame(&msg).and_then(|frame| {
            drop(msg);
            if frame.len() - 4 > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{what} is a frame of {} bytes, over the executor's limit of {limit} bytes (its --max-frame-bytes)",
                        frame.len() - 4
                    ),
                ));
            }
            sock.write_all(&frame)?;
            sock.flush()?;
            Ok(frame.len() as u64)
        });
        match written {
            Ok(n) => {
                let c = &shared.counters;
                c.stage_frames.fetch_add(stage, Ordering::Relaxed);
                c.run_frames.fetch_add(run, Ordering::Relaxed);
                c.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let why = if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                    format!("it accepted nothing sent to it for {} ms", timeout.as_millis())
                } else if e.kind() == std::io::ErrorKind::InvalidInput {
                    e.to_string()
                } else {
                    format!("cannot send to it ({e})")
                };
                shared.lose_and_dispatch(id, &why);
                return;
            }
        }
    }
}

impl ClusterBackend {
    /// Starts listening, starts local executor processes, and waits until
    /// the executors it expects have joined.
    pub fn start(
        cfg: &ClusterConfig,
        registry: Arc<ModuleRegistry>,
        blocks: Arc<BlockStore>,
    ) -> std::io::Result<(Self, Receiver<BackendEvent>)> {
        let shared = start_shared(cfg, Drr::new(usize::MAX))?;
        // One job, of one tenant: the DRR is then a FIFO.
        let (job, rx) = match shared.add_job("", "", registry, &blocks) {
            Ok(j) => j,
            Err(e) => {
                // Nothing else will stop the executors and threads started.
                shared.shutdown();
                return Err(e);
            }
        };
        let backend = ClusterBackend { shared: shared.clone(), job, blocks };
        wait_for_executors(&shared, cfg.local_executors + cfg.wait_for)?;
        Ok((backend, rx))
    }

    /// Frames and bytes written to executors so far.
    pub fn send_stats(&self) -> SendStats {
        self.shared.counters.snapshot()
    }

    /// Pids of the executor processes this driver started.
    pub fn executor_pids(&self) -> Vec<u32> {
        self.shared.local().children.iter().map(|c| c.id()).collect()
    }
}

/// Waits (at most 60 s) until `want` executors are connected.
fn wait_for_executors(shared: &Shared, want: u32) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut st = shared.lock();
    while (st.executors.len() as u32) < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("only {} of {want} executors joined within 60 s", st.executors.len()),
            ));
        }
        st = shared.joined.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
    }
    Ok(())
}

/// Starts listening and starts the local executor processes (without
/// waiting for them to join), with no job yet.
fn start_shared(cfg: &ClusterConfig, queue: Drr<Queued>) -> std::io::Result<Arc<Shared>> {
    if cfg.heartbeat_timeout < MIN_HEARTBEAT_TIMEOUT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a heartbeat timeout of {} ms is too short: the minimum is {} ms (executors heartbeat every {} ms)",
                cfg.heartbeat_timeout.as_millis(),
                MIN_HEARTBEAT_TIMEOUT.as_millis(),
                super::executor::HEARTBEAT_INTERVAL.as_millis()
            ),
        ));
    }
    if cfg.no_executor_timeout < MIN_HEARTBEAT_TIMEOUT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a no-executor timeout of {} ms is too short: the minimum is {} ms",
                cfg.no_executor_timeout.as_millis(),
                MIN_HEARTBEAT_TIMEOUT.as_millis()
            ),
        ));
    }
    protocol::check_frame_limit(cfg.max_frame as u64)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if cfg.secret.as_ref().is_some_and(|s| s.iter().all(|b| b.is_ascii_whitespace())) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the cluster secret is empty: a cluster secret cannot be empty",
        ));
    }
    let listen = cfg.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
    let loopback = listen.starts_with("127.") || listen.starts_with("localhost") || listen.starts_with("[::1]");
    let secret = match (&cfg.secret, loopback) {
        (Some(s), _) => s.clone(),
        (None, true) => protocol::random_bytes()?.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes(),
        (None, false) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("refusing to accept executors on {listen} without a cluster secret (set WEIR_SECRET or --secret-file); without one the driver listens on loopback only"),
            ))
        }
    };
    let secret = Arc::new(secret);
    let listener = TcpListener::bind(&listen)?;
    let addr = listener.local_addr()?;
    // The driver's own block server (input blocks), on the same interface.
    let block_listener = TcpListener::bind((addr.ip(), 0))?;
    let block_addr = block_listener.local_addr()?.to_string();
    let blocks = Arc::new(JobBlocks::default());
    // Serves for the driver's lifetime: its handle is never retired.
    let _ = block_server::serve(block_listener, blocks.clone(), secret.clone(), cfg.max_frame);

    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            executors: BTreeMap::new(),
            queue,
            jobs: HashMap::new(),
            next_job: 0,
            next_id: 0,
            stopping: false,
            empty_since: None,
            empty_reported: false,
            lost: Default::default(),
        }),
        joined: Condvar::new(),
        blocks,
        block_addr,
        secret: secret.clone(),
        timeout: cfg.heartbeat_timeout,
        listeners: cfg.listeners.clone(),
        stages: Mutex::new(Stages::default()),
        counters: Counters::default(),
        no_executor_timeout: cfg.no_executor_timeout,
        locality_wait: cfg.locality_wait,
        max_frame: cfg.max_frame,
        local: Mutex::new(Local::default()),
    });
    accept_loop(listener, shared.clone());
    monitor(shared.clone());

    if cfg.local_executors > 0 {
        let exe = find_executor_binary(cfg.executor_binary.as_deref())?;
        let beat = cfg.heartbeat_timeout.as_millis().to_string();
        let args = [
            "executor",
            "--driver",
            &addr.to_string(),
            "--cores",
            &cfg.cores.to_string(),
            "--heartbeat-timeout-ms",
            &beat,
            "--max-frame-bytes",
            &cfg.max_frame.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut local = shared.local();
        local.want = cfg.local_executors;
        local.command = Some((exe, args, String::from_utf8_lossy(&secret).into_owned()));
        for _ in 0..cfg.local_executors {
            if let Err(e) = local.spawn() {
                drop(local);
                shared.shutdown();
                return Err(e);
            }
        }
    }
    tracing::info!("driver accepting executors on {addr}; waiting for {}", cfg.local_executors + cfg.wait_for);
    Ok(shared)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("weir-driver-accept".into()).spawn(move || {
        let gate = Gate::new();
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    block_server::accept_failed(&e);
                    continue;
                }
            };
            let ticket = match gate.admit(&conn) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("refused a connection: {e}");
                    continue;
                }
            };
            let shared = shared.clone();
            let _ = std::thread::Builder::new()
                .name("weir-executor-conn".into())
                .spawn(move || serve_connection(conn, ticket, shared));
        }
    });
}

/// One connection to the executor port: the handshake, then (for an
/// executor) its registration and its messages until it ends.
fn serve_connection(mut conn: TcpStream, mut ticket: Ticket, shared: Arc<Shared>) {
    let id = {
        let mut st = shared.lock();
        st.next_id += 1;
        st.next_id
    };
    // Each job's limits go with its `Job` frame; the welcome's are unused.
    let limits = UdfLimits::default();
    let role = match protocol::accept(&mut conn, &shared.secret, |role| match role {
        Role::Executor { .. } => Admission::Welcome { executor_id: id, limits, max_frame: shared.max_frame as u64 },
        Role::BlockFetch => Admission::Refused { reason: "this is the driver's executor port".into() },
    }) {
        Ok(r) => r,
        Err(e) => {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!("refused a connection from {peer}: {e}");
            return;
        }
    };
    if !ticket.authenticated() {
        return; // dropped to make room meanwhile
    }
    let Role::Executor { slots, block_addr, pid, max_frame } = role else { return };
    let limit = protocol::peer_frame_limit(max_frame);
    if !register_executor(&conn, &shared, id, (slots.max(1), limit), &block_addr, pid) {
        return;
    }
    let _ = conn.set_read_timeout(None);
    // Results and heartbeats, until the connection ends.
    loop {
        let msg = protocol::read_frame_limited::<FromExecutor>(&mut conn, shared.max_frame);
        let mut st = shared.lock();
        if !on_message(&shared, &mut st, id, msg) {
            return;
        }
    }
}

/// When the driver's block server is on an unspecified address (its
/// executor port listens on `0.0.0.0` or `[::]`): that address, and the one
/// an executor whose connection arrived at `local` reaches it on (the
/// interface it connected to, with the block server's port; an IPv4 peer
/// of an IPv6 socket gets the IPv4 address). `None` when the address is
/// one every executor can use as it is.
fn reachable_block_addr(own: &str, local: Option<std::net::SocketAddr>) -> Option<(String, String)> {
    let own_addr: std::net::SocketAddr = own.parse().ok()?;
    if !own_addr.ip().is_unspecified() {
        return None;
    }
    let ip = local?.ip().to_canonical();
    Some((own.to_string(), std::net::SocketAddr::new(ip, own_addr.port()).to_string()))
}

/// Adds an authenticated executor, with its writer thread, and hands it
/// work. False when it could not be set up (the connection is closed).
/// `(slots, limit)`: its task slots and the largest frame it takes.
fn register_executor(
    conn: &TcpStream,
    shared: &Arc<Shared>,
    id: u64,
    (slots, limit): (u32, usize),
    block_addr: &str,
    pid: u32,
) -> bool {
    let (Ok(sock), Ok(wsock)) = (conn.try_clone(), conn.try_clone()) else { return false };
    let (out, rx) = std::sync::mpsc::sync_channel(queue_bound(slots));
    {
        let mut st = shared.lock();
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("weir-executor-send".into())
            .spawn(move || writer_loop(w, (id, limit), wsock, rx));
        let Ok(writer) = writer else {
            tracing::warn!("cannot start a writer thread for executor {id} (pid {pid}); closing it");
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return false;
        };
        st.executors.insert(
            id,
            Conn {
                addr: block_addr.to_string(),
                pid,
                slots,
                limit,
                sock,
                out,
                writer: Some(writer),
                running: HashMap::new(),
                stages: VecDeque::new(),
                jobs: HashSet::new(),
                ends: VecDeque::new(),
                last_seen: Instant::now(),
                heartbeats: 0,
                udf_memory: None,
                driver_blocks: reachable_block_addr(&shared.block_addr, conn.local_addr().ok()),
            },
        );
        tracing::info!("executor {id} (pid {pid}, blocks at {block_addr}) joined with {slots} slot(s)");
        shared.dispatch(&mut st);
    }
    shared.joined.notify_all();
    let e = ExecutorEvent { executor: block_addr.to_string(), reason: format!("pid {pid}, {slots} slot(s)") };
    shared.listeners.emit(|l| l.on_executor_added(&e));
    true
}

/// One message (or the end) of executor `id`'s connection, under the
/// driver's lock (which does no I/O: sends go to the writer's queue).
/// False when the connection is done with.
fn on_message(shared: &Shared, st: &mut State, id: u64, msg: std::io::Result<FromExecutor>) -> bool {
    let Some(c) = st.executors.get_mut(&id) else { return false }; // lost: ignore it
    let sent = match msg {
        Ok(FromExecutor::Heartbeat { udf_memory_bytes, udf_memory_peak_bytes }) => {
            c.last_seen = Instant::now();
            c.heartbeats = c.heartbeats.saturating_add(1);
            c.udf_memory = Some((udf_memory_bytes, udf_memory_peak_bytes));
            Ok(())
        }
        Ok(FromExecutor::NeedModule { job, hash }) => {
            c.last_seen = Instant::now();
            // Only the asking job's own modules: a job never gets another's
            // module by naming its hash.
            let msg = match st.jobs.get(&job).and_then(|j| j.registry.get(&hash)) {
                // Over what it takes: it is told there is none, and the
                // tasks that need it fail (a bounded number of attempts)
                // instead of the executor being lost over it again and again.
                Some(m) if m.bytes().len() + 1024 > c.limit => {
                    tracing::warn!(
                        "executor {id} (pid {}) takes frames of at most {} bytes: module {} ({} bytes) cannot be sent to it",
                        c.pid,
                        c.limit,
                        m.name(),
                        m.bytes().len()
                    );
                    Outgoing::Msg(ToExecutor::NoModule { job, hash })
                }
                Some(m) => Outgoing::Module { job, name: m.name().to_string(), hash, bytes: m.bytes().clone() },
                None => Outgoing::Msg(ToExecutor::NoModule { job, hash }),
            };
            c.send_out(msg)
        }
        Ok(FromExecutor::UnknownStage { job, stage, task_id }) => {
            c.last_seen = Instant::now();
            // It evicted (or never got) the lineage: forget that it holds
            // it, so the task goes again with its lineage.
            c.stages.retain(|s| *s != stage);
            let terms = st.jobs.get(&job).map(|j| JobTerms::of(job, j));
            match (c.running.get(&(job, task_id)), terms) {
                (Some(r), Some(terms)) if r.stage == stage => {
                    let task = r.task.clone();
                    c.send_task(&terms, stage, &task)
                }
                _ => Ok(()), // no longer its task: nothing to resend
            }
        }
        Ok(FromExecutor::Result { executor_id, job, result: r }) => {
            c.last_seen = Instant::now();
            if executor_id != id {
                // A result of another incarnation (this process rejoined, or
                // it lies): its task may have been re-run since, and its
                // blocks were declared lost. Never count it.
                tracing::warn!(
                    "executor {id} (pid {}) sent a result of task {} computed as executor {executor_id}: ignored (stale incarnation)",
                    c.pid,
                    r.task_id
                );
                return true;
            }
            if let Some(run) = c.running.remove(&(job, r.task_id)) {
                st.queue.done(&run.tenant);
                // A job that ended no longer listens: its result is dropped.
                if let Some(j) = st.jobs.get(&job) {
                    let _ = j.events.send(BackendEvent::Task(*r));
                }
            }
            shared.dispatch(st);
            Ok(())
        }
        Err(e) => {
            shared.lose(st, id, &format!("connection ended ({e})"));
            shared.dispatch(st);
            return false;
        }
    };
    if let Err(e) = sent {
        shared.lose(st, id, &format!("cannot send to it: {e}"));
        shared.dispatch(st);
        return false;
    }
    true
}

/// Declares silent executors lost, fails the tasks of a driver that has had
/// no executor for too long, and replaces lost `local-cluster` executors.
fn monitor(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("weir-heartbeats".into()).spawn(move || loop {
        std::thread::sleep(protocol::DRIVER_HEARTBEAT_INTERVAL);
        let connected: Vec<u32> = {
            let mut st = shared.lock();
            let silent: Vec<u64> = st
                .executors
                .iter()
                .filter(|(_, c)| c.last_seen.elapsed() > shared.timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in silent {
                let t = shared.timeout;
                shared.lose(&mut st, id, &format!("no heartbeat for {} ms", t.as_millis()));
            }
            shared.dispatch(&mut st);
            if st.stopping {
                return;
            }
            for c in st.executors.values_mut() {
                c.send_ends();
            }
            heartbeat_executors(&st);
            fail_without_executors(&shared, &mut st);
            st.executors.values().map(|c| c.pid).collect()
        };
        replace_local(&shared, &connected);
    });
}

/// Tells every executor the driver is alive (every monitor tick, 100 ms), so
/// an executor whose driver's host vanished notices within its timeout. A
/// full queue skips the beat: the executor is being sent other frames,
/// which tell it as much.
fn heartbeat_executors(st: &State) {
    for c in st.executors.values() {
        let _ = c.send(ToExecutor::Heartbeat);
    }
}

/// With no executor connected for `no_executor_timeout`, fails the tasks
/// waiting for one (they are retried, and fail again at once, so the batch
/// fails with this error).
fn fail_without_executors(shared: &Shared, st: &mut State) {
    if !st.executors.is_empty() {
        st.empty_since = None;
        st.empty_reported = false;
        return;
    }
    let since = *st.empty_since.get_or_insert_with(Instant::now);
    if since.elapsed() < shared.no_executor_timeout || st.queue.is_empty() {
        return;
    }
    let why = format!(
        "no executor connected for {} ms (the no-executor timeout is {} ms)",
        since.elapsed().as_millis(),
        shared.no_executor_timeout.as_millis()
    );
    if !std::mem::replace(&mut st.empty_reported, true) {
        tracing::error!("{why}: failing the tasks that wait for one until an executor joins");
    }
    let mut failed = Vec::new();
    st.queue.retain(|q| {
        failed.push((q.job, q.task.id, q.task.attempt));
        false
    });
    for (job, task_id, attempt) in failed {
        let Some(j) = st.jobs.get(&job) else { continue };
        let _ = j.events.send(BackendEvent::Task(TaskResult {
            task_id,
            attempt,
            outcome: Err(TaskFailure::engine(why.clone())),
            blocks: vec![],
            udf_calls: 0,
            micros: 0,
            executor: String::new(),
            udf_usage: Vec::new(),
        }));
    }
}

/// Keeps `local-cluster[N]`'s N executors: reaps exited ones, and starts a
/// replacement for each one missing, after a backoff that doubles with each
/// replacement in a row, up to [`MAX_RESTARTS`] in a row. `connected` are
/// the pids of the executors connected now.
fn replace_local(shared: &Shared, connected: &[u32]) {
    let mut local = shared.local();
    if local.want == 0 || local.command.is_none() {
        return;
    }
    local.children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    let children: Vec<u32> = local.children.iter().map(|c| c.id()).collect();
    let now = Instant::now();
    // Started ones that joined or exited are no longer starting; one that
    // has not joined in a minute is killed (it is stuck) and replaced.
    let mut stuck = Vec::new();
    local.starting.retain(|(pid, at)| {
        if connected.contains(pid) || !children.contains(pid) {
            return false;
        }
        if at.elapsed() > Duration::from_secs(60) {
            stuck.push(*pid);
            return false;
        }
        true
    });
    for c in local.children.iter_mut().filter(|c| stuck.contains(&c.id())) {
        let _ = c.kill();
    }
    for pid in connected.iter().filter(|p| children.contains(p)) {
        local.joined.entry(*pid).or_insert(now);
    }
    // Lost ones: one that ran long enough was a success.
    let lost: Vec<(u32, Instant)> =
        local.joined.iter().filter(|(p, _)| !connected.contains(p)).map(|(p, t)| (*p, *t)).collect();
    for (pid, since) in lost {
        local.joined.remove(&pid);
        if since.elapsed() >= STABLE_AFTER {
            local.restarts = 0;
        }
    }
    if local.joined.values().any(|t| t.elapsed() >= STABLE_AFTER) && local.joined.len() as u32 >= local.want {
        local.restarts = 0;
    }
    let have = local.joined.len() + local.starting.len();
    if have as u32 >= local.want || local.gave_up {
        local.next_start = None;
        return;
    }
    if local.restarts >= MAX_RESTARTS {
        local.gave_up = true;
        tracing::error!(
            "{MAX_RESTARTS} local executors were started in a row and none stayed {} s: no more replacements",
            STABLE_AFTER.as_secs()
        );
        return;
    }
    let backoff = FIRST_BACKOFF.saturating_mul(1 << local.restarts.min(16)).min(MAX_BACKOFF);
    let at = *local.next_start.get_or_insert(now + backoff);
    if now < at {
        return;
    }
    local.next_start = None;
    local.restarts += 1;
    match local.spawn() {
        Ok(pid) => tracing::warn!(
            "started executor pid {pid} to replace a lost one ({} of {}, replacement {} in a row)",
            have + 1,
            local.want,
            local.restarts
        ),
        Err(e) => tracing::error!("cannot start a replacement executor: {e}"),
    }
}

impl ExecutorBackend for ClusterBackend {
    fn submit(&self, task: Task) {
        self.shared.submit(self.job, task);
    }
    fn block_address(&self) -> Option<String> {
        Some(self.shared.block_addr.clone())
    }
    fn slots(&self) -> usize {
        self.shared.slots()
    }
    fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }
    fn prefer(&self, executor: Option<&str>) {
        self.shared.prefer(self.job, executor);
    }
    /// The connected executors, then the lost ones (alive: false).
    fn executor_status(&self) -> Vec<crate::listener::ExecutorStatus> {
        connected_status(&self.shared)
    }
    fn live_status(&self) -> Option<crate::executor::LiveStatus> {
        // Weak: a status page asking after the run must not keep the
        // driver's state alive.
        let shared = Arc::downgrade(&self.shared);
        Some(Arc::new(move || shared.upgrade().map(|s| connected_status(&s)).unwrap_or_default()))
    }
}

/// Every connected executor's status, copied under the lock (a few figures
/// each; the heartbeat's age is taken now, so it grows while one is silent),
/// then the executors lost (`alive: false`; a scheduler keeps only those
/// that ran its tasks), so a loss shows at once, not when a job's next stage
/// hears of it.
fn connected_status(shared: &Shared) -> Vec<crate::listener::ExecutorStatus> {
    let st = shared.lock();
    let connected = st.executors.values().map(|c| {
        let mut s = crate::listener::ExecutorStatus::new(c.addr.clone());
        s.heartbeats = Some(c.heartbeats);
        s.last_heartbeat_age_ms = Some(c.last_seen.elapsed().as_millis() as u64);
        s.tasks_running = c.running.len() as u64;
        s.udf_memory_bytes = c.udf_memory.map(|m| m.0);
        s.udf_memory_peak_bytes = c.udf_memory.map(|m| m.1);
        s
    });
    // An address that rejoined (a restarted executor on the same port) is
    // connected, not lost.
    let lost = st.lost.iter().filter(|a| !st.executors.values().any(|c| &c.addr == *a)).map(|a| {
        let mut s = crate::listener::ExecutorStatus::new(a.clone());
        s.alive = false;
        s
    });
    connected.chain(lost).collect()
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// One set of executor processes shared by many jobs (`weir serve` with
/// `master = "local-cluster[N]"` or `"cluster[N]"`): the cluster analogue of
/// [`crate::executor::SharedPool`]. Jobs join it through a [`PoolTenant`]
/// ([`SharedCluster::tenant`]); its executor slots go to tenants by
/// deficit round robin with their weights, each tenant capped at its
/// `max_slots`. Dropping it shuts the executors down.
pub struct SharedCluster {
    shared: Arc<Shared>,
}

impl SharedCluster {
    /// Starts listening and starts `cfg.local_executors` executor processes
    /// (replaced when lost). It does not wait for executors: tasks queue
    /// until one joins (and fail after the no-executor timeout).
    pub fn start(cfg: &ClusterConfig) -> std::io::Result<SharedCluster> {
        Ok(SharedCluster { shared: start_shared(cfg, Drr::new(1))? })
    }

    /// Sets `tenant`'s weight and its cap on running tasks (`max_slots`).
    /// Takes effect at the next task handed out.
    pub fn set_tenant(&self, tenant: &str, weight: u32, max_slots: usize) {
        let mut st = self.shared.lock();
        st.queue.set_tenant(tenant, weight, max_slots);
        self.shared.dispatch(&mut st);
    }

    /// Where the jobs of `tenant` get their executors.
    pub fn tenant(&self, tenant: &str) -> PoolTenant {
        PoolTenant::new(Arc::new(ClusterSeat { shared: self.shared.clone() }), tenant)
    }

    /// Tasks of `tenant` queued, and running.
    pub fn load(&self, tenant: &str) -> (usize, usize) {
        let st = self.shared.lock();
        (st.queue.queued(tenant), st.queue.running(tenant))
    }

    /// Executors connected now, and their task slots together.
    pub fn executors(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.executors.len(), st.executors.values().map(|c| c.slots as usize).sum())
    }

    /// Jobs registered now.
    pub fn jobs(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// Every connected executor now: process, slots, heartbeats (the age
    /// taken now, so it grows while one is silent), UDF memory, and the
    /// jobs whose tasks run on it. Copied under the driver's lock (no I/O);
    /// bounded by the executors and their slots.
    pub fn status(&self) -> Vec<PoolExecutor> {
        let st = self.shared.lock();
        st.executors
            .iter()
            .map(|(id, c)| {
                let mut jobs: BTreeMap<JobId, PoolJobTasks> = BTreeMap::new();
                for (job, _) in c.running.keys() {
                    let Some(j) = st.jobs.get(job) else { continue };
                    let e = jobs.entry(*job).or_insert_with(|| PoolJobTasks {
                        tenant: j.tenant.clone(),
                        job: j.name.clone(),
                        tasks_running: 0,
                    });
                    e.tasks_running += 1;
                }
                PoolExecutor {
                    id: *id,
                    pid: c.pid,
                    address: c.addr.clone(),
                    slots: c.slots,
                    heartbeats: c.heartbeats,
                    last_heartbeat_age_ms: Some(c.last_seen.elapsed().as_millis() as u64),
                    tasks_running: c.running.len() as u64,
                    udf_memory_bytes: c.udf_memory.map(|m| m.0),
                    udf_memory_peak_bytes: c.udf_memory.map(|m| m.1),
                    jobs: jobs.into_values().collect(),
                }
            })
            .collect()
    }

    /// Pids of the executor processes it started (and has not reaped).
    pub fn executor_pids(&self) -> Vec<u32> {
        self.shared.local().children.iter().map(|c| c.id()).collect()
    }
}

impl Drop for SharedCluster {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// One executor of a [`SharedCluster`], as [`SharedCluster::status`] sees
/// it now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolExecutor {
    /// The id the driver gave it (never reused).
    pub id: u64,
    /// Its process id (on its own machine) and block server address.
    pub pid: u32,
    pub address: String,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Heartbeats received from it, and how long it has been silent: since
    /// its newest heartbeat or other message, or since it joined (the
    /// silence the heartbeat timeout measures).
    pub heartbeats: u64,
    pub last_heartbeat_age_ms: Option<u64>,
    /// Tasks running on it now, of every job.
    pub tasks_running: u64,
    /// Linear memory of its UDF instances, now and at the peak (bytes; as
    /// of its newest heartbeat).
    pub udf_memory_bytes: Option<u64>,
    pub udf_memory_peak_bytes: Option<u64>,
    /// The jobs with tasks running on it, by the order they joined.
    pub jobs: Vec<PoolJobTasks>,
}

/// A job's tasks running on one executor of a [`SharedCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolJobTasks {
    pub tenant: String,
    /// The job's name ([`PoolTenant::for_job`]; `""`: unnamed).
    pub job: String,
    pub tasks_running: u64,
}

/// A [`SharedCluster`] as a [`Pool`].
struct ClusterSeat {
    shared: Arc<Shared>,
}

impl Pool for ClusterSeat {
    fn join(
        &self,
        tenant: &str,
        job: &str,
        registry: Arc<ModuleRegistry>,
        blocks: Arc<BlockStore>,
    ) -> std::io::Result<(Box<dyn ExecutorBackend>, Receiver<BackendEvent>)> {
        let (job, rx) = self.shared.add_job(tenant, job, registry, &blocks)?;
        let b = ClusterJob { shared: self.shared.clone(), job, tenant: tenant.to_string(), blocks };
        Ok((Box::new(b), rx))
    }
    fn describe(&self) -> String {
        format!("executor processes (driver port for executors: {})", self.shared.block_addr)
    }
}

/// One job's executors on a [`SharedCluster`]. Dropping it (the job ended)
/// removes its queued tasks and tells the executors to drop its blocks.
struct ClusterJob {
    shared: Arc<Shared>,
    job: JobId,
    tenant: String,
    blocks: Arc<BlockStore>,
}

impl ExecutorBackend for ClusterJob {
    fn submit(&self, task: Task) {
        self.shared.submit(self.job, task);
    }
    fn block_address(&self) -> Option<String> {
        Some(self.shared.block_addr.clone())
    }
    fn slots(&self) -> usize {
        let cap = self.shared.lock().queue.cap(&self.tenant);
        self.shared.slots().min(cap).max(1)
    }
    fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }
    fn prefer(&self, executor: Option<&str>) {
        self.shared.prefer(self.job, executor);
    }
}

impl Drop for ClusterJob {
    fn drop(&mut self) {
        self.shared.remove_job(self.job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{TaskKind, TaskOutput};
    use crate::rdd::RddOp;
    use crate::udf::UdfRuntime;

    fn lineage(time: i64, label_bytes: usize) -> StageRdds {
        let id = RddId { time, node: 1 };
        let rdd =
            Rdd { id, partitions: 64, op: RddOp::Input { source: 0 }, persist: false, label: "x".repeat(label_bytes) };
        BTreeMap::from([(id, rdd)])
    }

    fn task(id: u64, rdds: &StageRdds) -> Task {
        let rdd = *rdds.keys().next().unwrap();
        Task {
            id,
            attempt: 0,
            batch_time: rdd.time,
            rdds: rdds.clone(),
            partition: id as u32,
            kind: TaskKind::Result { rdd },
            locations: vec![],
        }
    }

    /// What the fake executor saw: lineages registered, tasks run (with
    /// the lineage each named).
    #[derive(Default)]
    struct Seen {
        stages: Vec<(StageId, StageRdds)>,
        runs: Vec<(StageId, u64)>,
    }

    /// A fake executor with 4 slots: answers every task at once, except the
    /// first task of `forget` (it claims not to hold that stage, once).
    fn fake_executor(addr: String, secret: Vec<u8>, forget: StageId) -> std::thread::JoinHandle<Seen> {
        fake_executor_with(addr, secret, forget, false)
    }

    /// A result for `task` from incarnation `executor_id`, marked by `udf_calls`.
    fn result_of(task: &Task, executor_id: u64, udf_calls: u64) -> FromExecutor {
        FromExecutor::Result {
            executor_id,
            job: 0,
            result: Box::new(TaskResult {
                task_id: task.id,
                attempt: task.attempt,
                outcome: Ok(TaskOutput::MapDone),
                blocks: vec![],
                udf_calls,
                micros: 0,
                executor: String::new(),
                udf_usage: Vec::new(),
            }),
        }
    }

    /// [`fake_executor`]; with `stale`, every result is preceded by one for
    /// the same task claiming another incarnation (`udf_calls` 666).
    /// Connects to the driver at `addr` as an executor with `slots` slots
    /// (retrying until it listens, within 30 s): the link and the id it got.
    fn join_driver(addr: &str, secret: &[u8], slots: u32) -> (TcpStream, u64) {
        join_driver_as(addr, secret, slots, "127.0.0.1:1")
    }

    /// [`join_driver`] as an executor whose blocks are at `block_addr`.
    fn join_driver_as(addr: &str, secret: &[u8], slots: u32, block_addr: &str) -> (TcpStream, u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            match TcpStream::connect(addr) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot reach the driver: {e}");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let role =
            Role::Executor { slots, block_addr: block_addr.into(), pid: 1, max_frame: protocol::MAX_FRAME as u64 };
        let Admission::Welcome { executor_id, .. } =
            protocol::connect(&mut conn, secret, role, protocol::PROTOCOL_VERSION).unwrap()
        else {
            panic!("refused")
        };
        (conn, executor_id)
    }

    fn fake_executor_with(
        addr: String,
        secret: Vec<u8>,
        forget: StageId,
        stale: bool,
    ) -> std::thread::JoinHandle<Seen> {
        std::thread::spawn(move || {
            let (mut conn, me) = join_driver(&addr, &secret, 4);
            let mut seen = Seen::default();
            let mut forgot = false;
            loop {
                match protocol::read_frame::<ToExecutor>(&mut conn) {
                    Ok(ToExecutor::Stage { stage, rdds, .. }) => seen.stages.push((stage, rdds)),
                    Ok(ToExecutor::Run { stage, task, .. }) => {
                        assert!(task.rdds.is_empty(), "a task carried its lineage");
                        let reply = if stage == forget && !forgot {
                            forgot = true;
                            FromExecutor::UnknownStage { job: 0, stage, task_id: task.id }
                        } else {
                            seen.runs.push((stage, task.id));
                            if stale {
                                protocol::write_frame(&mut conn, &result_of(&task, me + 1000, 666)).unwrap();
                            }
                            result_of(&task, me, 1)
                        };
                        protocol::write_frame(&mut conn, &reply).unwrap();
                    }
                    Ok(ToExecutor::Shutdown) | Err(_) => return seen,
                    Ok(_) => {}
                }
            }
        })
    }

    fn start(addr: String, secret: Vec<u8>) -> (ClusterBackend, Receiver<BackendEvent>) {
        let cfg = ClusterConfig {
            local_executors: 0,
            cores: 1,
            listen: Some(addr),
            wait_for: 1,
            secret: Some(secret),
            heartbeat_timeout: Duration::from_secs(30),
            no_executor_timeout: Duration::from_secs(60),
            executor_binary: None,
            listeners: Default::default(),
            locality_wait: DEFAULT_LOCALITY_WAIT,
            max_frame: protocol::MAX_FRAME,
        };
        let registry = Arc::new(ModuleRegistry::new(UdfRuntime::shared().unwrap(), Default::default()));
        ClusterBackend::start(&cfg, registry, BlockStore::new()).unwrap()
    }

    fn free_addr() -> String {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("127.0.0.1:{port}")
    }

    /// What the driver wrote, once it has stopped: a writer counts a frame
    /// after writing it, which may be after the executor has answered.
    fn final_stats(backend: ClusterBackend) -> SendStats {
        let shared = backend.shared.clone();
        drop(backend); // waits for the writers to finish
        shared.counters.snapshot()
    }

    /// Waits for `n` successful task results.
    fn await_results(events: &Receiver<BackendEvent>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for done in 0..n {
            match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(BackendEvent::Task(r)) => assert!(r.outcome.is_ok(), "{:?}", r.outcome),
                Ok(e) => panic!("unexpected {e:?}"),
                Err(e) => panic!("only {done} of {n} results: {e}"),
            }
        }
    }

    /// An executor silent since it joined (no heartbeat yet: stopped, or
    /// hung, right after joining) shows how long it has been silent, from
    /// its joining, as the heartbeat timeout counts it, not "never heard".
    #[test]
    fn an_executor_that_never_heartbeat_shows_its_silence_since_joining() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        let exec = fake_executor(addr.clone(), secret.clone(), 0);
        let (backend, _events) = start(addr, secret);
        let status = backend.executor_status();
        assert_eq!(status.len(), 1, "{status:?}");
        assert_eq!(status[0].heartbeats, Some(0), "the fake executor does not heartbeat");
        assert!(status[0].last_heartbeat_age_ms.is_some(), "no age for a silent executor: {status:?}");
        drop(backend);
        exec.join().unwrap();
    }

    /// Once an executor has been sent more stages than it keeps, the oldest
    /// one's lineage goes again with its next task (the driver mirrors the
    /// executor's cache); a stage it still holds does not.
    #[test]
    fn an_evicted_stages_lineage_is_sent_again() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        let exec = fake_executor(addr.clone(), secret.clone(), 0);
        let (backend, events) = start(addr, secret);
        let lineages: Vec<StageRdds> = (1..=STAGE_CACHE as i64 + 1).map(|t| lineage(t * 1000, 10)).collect();
        let mut next = 0;
        let mut run = |rdds: &StageRdds| {
            next += 1;
            backend.submit(task(next, rdds));
            await_results(&events, 1);
        };
        for l in &lineages {
            run(l); // stages 1..=17: the 17th evicts stage 1
        }
        run(&lineages[STAGE_CACHE]); // held: no lineage
        run(&lineages[0]); // evicted: lineage again (evicting stage 2)
        run(&lineages[2]); // still held
        let stats = final_stats(backend);
        let seen = exec.join().unwrap();
        let mut want: Vec<StageId> = (1..=STAGE_CACHE as u64 + 1).collect();
        want.push(1);
        assert_eq!(seen.stages.iter().map(|(s, _)| *s).collect::<Vec<_>>(), want);
        assert!(seen.stages.last().is_some_and(|(_, r)| *r == lineages[0]), "wrong lineage re-sent");
        assert_eq!((stats.stage_frames, stats.run_frames), (STAGE_CACHE as u64 + 2, STAGE_CACHE as u64 + 4));
    }

    /// A result that names another incarnation than its connection's (an
    /// executor that rejoined and still had a task of its old self running)
    /// is never counted: the driver reports only the real one, which the
    /// executor sent after the stale one on the same connection.
    #[test]
    fn a_result_of_another_incarnation_is_not_counted() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        let exec = fake_executor_with(addr.clone(), secret.clone(), 0, true);
        let (backend, events) = start(addr, secret);
        let rdds = lineage(1000, 10);
        for i in 1..=5u64 {
            backend.submit(task(i, &rdds));
            match events.recv_timeout(Duration::from_secs(30)) {
                Ok(BackendEvent::Task(r)) => {
                    assert_eq!((r.task_id, r.udf_calls), (i, 1), "a stale incarnation's result was counted")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(backend);
        assert_eq!(exec.join().unwrap().runs.len(), 5);
        assert!(events.try_recv().is_err(), "a stale result was reported after all");
    }

    /// Many tasks of two stages: each stage's lineage is sent once (plus
    /// once more when the executor says it lacks it), tasks never carry it.
    #[test]
    fn a_stages_lineage_goes_to_an_executor_once() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        // Stage ids are given in submission order from 1: forget stage 2's.
        let exec = fake_executor(addr.clone(), secret.clone(), 2);
        let (backend, events) = start(addr, secret);
        let (a, b) = (lineage(1000, 100_000), lineage(2000, 50_000));
        let mut want = Vec::new();
        for i in 0..60u64 {
            let (stage, rdds) = if i % 3 == 2 { (2, &b) } else { (1, &a) };
            backend.submit(task(i + 1, rdds));
            want.push((stage, i + 1));
        }
        await_results(&events, 60);
        let stats = final_stats(backend);
        let mut seen = exec.join().unwrap();
        assert_eq!(seen.stages.len(), 3, "stage 1 once, stage 2 twice (once more after it was forgotten)");
        assert_eq!(seen.stages.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 2]);
        assert!(seen.stages[0].1 == a && seen.stages[1].1 == b && seen.stages[2].1 == b, "wrong lineage sent");
        seen.runs.sort_by_key(|(_, t)| *t);
        assert_eq!(seen.runs, want, "every task ran once, naming its stage");
        assert_eq!(stats.stage_frames, 3);
        assert_eq!(stats.run_frames, 61, "60 tasks and the one re-sent");
        // Far less than 60 tasks' worth of lineage (~5 MB) went over the wire.
        assert!(stats.bytes < 400_000, "{stats:?}");
    }

    /// What a fake executor of a shared cluster saw, in order.
    #[derive(Debug, PartialEq)]
    enum Frame {
        Job(JobId, u64),
        EndJob(JobId),
        Stage(JobId, StageId),
        Run(JobId, StageId, u64),
    }

    /// A fake executor with one slot that records every job frame and
    /// answers each task at once, marking the result with its job
    /// (`udf_calls = job * 100 + task id`).
    fn recording_executor(addr: String, secret: Vec<u8>) -> std::thread::JoinHandle<Vec<Frame>> {
        std::thread::spawn(move || {
            let (mut conn, me) = join_driver(&addr, &secret, 1);
            let mut seen = Vec::new();
            loop {
                match protocol::read_frame::<ToExecutor>(&mut conn) {
                    Ok(ToExecutor::Job { job, limits, .. }) => seen.push(Frame::Job(job, limits.fuel_per_call)),
                    Ok(ToExecutor::EndJob { job }) => seen.push(Frame::EndJob(job)),
                    Ok(ToExecutor::Stage { job, stage, .. }) => seen.push(Frame::Stage(job, stage)),
                    Ok(ToExecutor::Run { job, stage, task }) => {
                        seen.push(Frame::Run(job, stage, task.id));
                        let FromExecutor::Result { result, .. } = result_of(&task, me, job * 100 + task.id) else {
                            unreachable!()
                        };
                        let reply = FromExecutor::Result { executor_id: me, job, result };
                        protocol::write_frame(&mut conn, &reply).unwrap();
                    }
                    Ok(ToExecutor::Shutdown) | Err(_) => return seen,
                    Ok(_) => {}
                }
            }
        })
    }

    /// Two tenants' jobs (weights 2 and 1) with equal lineage and equal task
    /// ids on one executor slot: the slot goes to them 2:1, each job is
    /// registered once with its own limits, their stages get different ids,
    /// each job's results reach that job only, and a job that ends is told
    /// to the executor.
    #[test]
    fn two_tenants_jobs_share_an_executor_by_weight_and_never_mix() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        let cfg = ClusterConfig {
            local_executors: 0,
            cores: 1,
            listen: Some(addr.clone()),
            wait_for: 0,
            secret: Some(secret.clone()),
            heartbeat_timeout: Duration::from_secs(30),
            no_executor_timeout: Duration::from_secs(60),
            executor_binary: None,
            listeners: Default::default(),
            locality_wait: DEFAULT_LOCALITY_WAIT,
            max_frame: protocol::MAX_FRAME,
        };
        let cluster = SharedCluster::start(&cfg).unwrap();
        cluster.set_tenant("a", 2, 1);
        cluster.set_tenant("b", 1, 1);
        let runtime = UdfRuntime::shared().unwrap();
        let limits = |fuel| crate::udf::UdfLimits { fuel_per_call: fuel, ..Default::default() };
        let reg_a = Arc::new(ModuleRegistry::new(runtime.clone(), limits(111)));
        let reg_b = Arc::new(ModuleRegistry::new(runtime, limits(222)));
        let (ja, ra) = cluster.tenant("a").executors(reg_a, BlockStore::new()).unwrap();
        let (jb, rb) = cluster.tenant("b").executors(reg_b, BlockStore::new()).unwrap();
        // Queued before any executor joins; the same lineage and task ids in both.
        let rdds = lineage(1000, 10);
        for i in 1..=6u64 {
            ja.submit(task(i, &rdds));
            jb.submit(task(i, &rdds));
        }
        assert_eq!(cluster.load("a"), (6, 0));
        let exec = recording_executor(addr, secret);
        let results = |rx: &Receiver<BackendEvent>| {
            let mut got = Vec::new();
            for _ in 0..6 {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(BackendEvent::Task(r)) => got.push((r.task_id, r.udf_calls)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got.sort();
            got
        };
        let (got_a, got_b) = (results(&ra), results(&rb));
        drop(ja);
        drop(cluster);
        let seen = exec.join().unwrap();
        let job_of = |fuel| {
            seen.iter().find_map(|f| {
                matches!(f, Frame::Job(_, l) if *l == fuel).then(|| match f {
                    Frame::Job(j, _) => *j,
                    _ => unreachable!(),
                })
            })
        };
        let (a, b) = (job_of(111).expect("job a registered"), job_of(222).expect("job b registered"));
        assert_ne!(a, b);
        assert_eq!(got_a, (1..=6).map(|i| (i, a * 100 + i)).collect::<Vec<_>>(), "job a got another's results");
        assert_eq!(got_b, (1..=6).map(|i| (i, b * 100 + i)).collect::<Vec<_>>(), "job b got another's results");
        assert!(rb.try_recv().is_err() && ra.try_recv().is_err());
        let jobs: Vec<&Frame> = seen.iter().filter(|f| matches!(f, Frame::Job(..))).collect();
        assert_eq!(jobs.len(), 2, "each job registered once: {seen:?}");
        let stages: Vec<(JobId, StageId)> =
            seen.iter().filter_map(|f| if let Frame::Stage(j, s) = f { Some((*j, *s)) } else { None }).collect();
        assert_eq!(stages.len(), 2, "one stage per job: {seen:?}");
        assert_ne!(stages[0].1, stages[1].1, "two jobs shared a stage id: {seen:?}");
        let runs: Vec<JobId> =
            seen.iter().filter_map(|f| if let Frame::Run(j, _, _) = f { Some(*j) } else { None }).collect();
        assert_eq!(runs.len(), 12);
        let first6_a = runs[..6].iter().filter(|j| **j == a).count();
        assert_eq!(first6_a, 4, "weights 2:1 give 4 of the first 6 slots to a: {runs:?}");
        assert!(seen.contains(&Frame::EndJob(a)), "the ended job was not told: {seen:?}");
        assert!(!seen.contains(&Frame::EndJob(b)), "{seen:?}");
    }

    /// A shared cluster's configuration for fake executors joining at `addr`.
    fn shared_config(addr: &str, secret: &[u8], locality_wait: Duration) -> ClusterConfig {
        ClusterConfig {
            local_executors: 0,
            cores: 1,
            listen: Some(addr.to_string()),
            wait_for: 0,
            secret: Some(secret.to_vec()),
            heartbeat_timeout: Duration::from_secs(30),
            no_executor_timeout: Duration::from_secs(60),
            executor_binary: None,
            listeners: Default::default(),
            locality_wait,
            max_frame: protocol::MAX_FRAME,
        }
    }

    /// Waits until `n` executors have joined `cluster`.
    fn await_executors(cluster: &SharedCluster, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.executors().0 < n {
            assert!(Instant::now() < deadline, "only {} of {n} executors joined", cluster.executors().0);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A job ends while the executor that ran it is not reading and its
    /// send queue is full (its writer is stuck in a frame bigger than the
    /// socket buffers, the rest of the queue is heartbeats): once the
    /// executor reads again, the `EndJob` arrives after all, so it drops the
    /// job's blocks and modules (the driver once dropped it with a warning).
    #[test]
    fn an_end_job_that_finds_the_send_queue_full_arrives_once_it_drains() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        let cluster = SharedCluster::start(&shared_config(&addr, &secret, DEFAULT_LOCALITY_WAIT)).unwrap();
        let (stuck_tx, stuck_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (a, sec) = (addr.clone(), secret.clone());
        let exec = std::thread::spawn(move || {
            let (mut conn, _) = join_driver(&a, &sec, 1);
            // Reads nothing until the driver is writing the big frame (more
            // than a `Job` frame is waiting in the socket).
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut buf = vec![0u8; 64 << 10];
            while conn.peek(&mut buf).unwrap() < 32 << 10 {
                assert!(Instant::now() < deadline, "the driver never sent the big frame");
                std::thread::sleep(Duration::from_millis(5));
            }
            stuck_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // Now reads everything, for at most 20 s (the driver heartbeats,
            // so a read never waits long).
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                match protocol::read_frame::<ToExecutor>(&mut conn) {
                    Ok(ToExecutor::Job { job, limits, .. }) => seen.push(Frame::Job(job, limits.fuel_per_call)),
                    Ok(ToExecutor::EndJob { job }) => {
                        seen.push(Frame::EndJob(job));
                        break;
                    }
                    Ok(ToExecutor::Shutdown) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            seen
        });
        await_executors(&cluster, 1);
        let registry = Arc::new(ModuleRegistry::new(UdfRuntime::shared().unwrap(), Default::default()));
        let (job, _results) = cluster.tenant("a").executors(registry, BlockStore::new()).unwrap();
        // Its lineage (24 MiB) is more than the socket buffers hold.
        job.submit(task(1, &lineage(1000, 24 << 20)));
        stuck_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        {
            let st = cluster.shared.lock();
            let c = st.executors.values().next().unwrap();
            let mut queued = 0;
            while c.send(ToExecutor::Heartbeat).is_ok() {
                queued += 1;
                assert!(queued <= queue_bound(1), "the writer is not stuck");
            }
        }
        drop(job);
        {
            let st = cluster.shared.lock();
            let c = st.executors.values().next().unwrap();
            assert_eq!(c.ends.len(), 1, "the EndJob found room: the queue was not full");
            assert!(c.jobs.is_empty());
        }
        go_tx.send(()).unwrap();
        let seen = exec.join().unwrap();
        let Some(Frame::Job(j, _)) = seen.first() else { panic!("no Job frame: {seen:?}") };
        assert_eq!(seen.last(), Some(&Frame::EndJob(*j)), "the ended job was never told: {seen:?}");
        assert!(cluster.shared.lock().executors.values().all(|c| c.ends.is_empty()));
    }

    /// A fake executor with one slot, its blocks at `block_addr`: reports
    /// each task it is given, (job, task id), and answers the oldest task
    /// it holds each time it is told to (so its slot stays taken until then).
    fn holding_executor(
        addr: String,
        secret: Vec<u8>,
        block_addr: &'static str,
    ) -> (Receiver<(JobId, u64)>, Sender<()>) {
        let (given_tx, given_rx) = std::sync::mpsc::channel();
        let (answer_tx, answer_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (mut conn, me) = join_driver_as(&addr, &secret, 1, block_addr);
            let mut held = VecDeque::new();
            loop {
                // The driver heartbeats every 100 ms: a read never waits long.
                match protocol::read_frame::<ToExecutor>(&mut conn) {
                    Ok(ToExecutor::Run { job, task, .. }) => {
                        let _ = given_tx.send((job, task.id));
                        held.push_back((job, task));
                    }
                    Ok(ToExecutor::Shutdown) | Err(_) => return,
                    Ok(_) => {}
                }
                while answer_rx.try_recv().is_ok() {
                    let Some((job, task)) = held.pop_front() else { break };
                    let FromExecutor::Result { result, .. } = result_of(&task, me, 1) else { unreachable!() };
                    let reply = FromExecutor::Result { executor_id: me, job, result };
                    if protocol::write_frame(&mut conn, &reply).is_err() {
                        return;
                    }
                }
            }
        });
        (given_rx, answer_tx)
    }

    /// A job that prefers an executor whose slot another job's task holds
    /// does not hold up the tasks queued behind it (they take the free
    /// executor), and after the locality wait its task runs on another
    /// executor. While only its own job's task holds the preferred
    /// executor, it waits for that one.
    #[test]
    fn a_busy_preferred_executor_holds_up_no_other_task_and_is_waited_for_a_bounded_time() {
        let addr = free_addr();
        let secret = b"unit-test-secret".to_vec();
        let wait = Duration::from_millis(500);
        let cluster = SharedCluster::start(&shared_config(&addr, &secret, wait)).unwrap();
        cluster.set_tenant("a", 1, 2);
        cluster.set_tenant("b", 1, 2);
        // X joins first (executor 1: least loaded ties go to it), then Y.
        let (x, answer_x) = holding_executor(addr.clone(), secret.clone(), "127.0.0.1:1");
        await_executors(&cluster, 1);
        let (y, answer_y) = holding_executor(addr, secret, "127.0.0.2:1");
        await_executors(&cluster, 2);
        let runtime = UdfRuntime::shared().unwrap();
        let registry = || Arc::new(ModuleRegistry::new(runtime.clone(), Default::default()));
        let (ja, _ra) = cluster.tenant("a").executors(registry(), BlockStore::new()).unwrap();
        let (jb, _rb) = cluster.tenant("b").executors(registry(), BlockStore::new()).unwrap();
        let (a, b) = (0, 1); // their job numbers, in order of joining
        ja.prefer(Some("127.0.0.1:1"));
        let soon = Duration::from_secs(10);
        let rdds = lineage(1000, 10);

        jb.submit(task(1, &rdds));
        assert_eq!(x.recv_timeout(soon).unwrap(), (b, 1));
        jb.submit(task(2, &rdds));
        assert_eq!(y.recv_timeout(soon).unwrap(), (b, 2));
        // Both slots taken: a's task (first in the ring) and b's third wait.
        jb.submit(task(3, &rdds));
        ja.submit(task(1, &rdds));
        assert_eq!(cluster.load("a"), (1, 0));
        assert_eq!(cluster.load("b"), (1, 2));

        // Y frees: a's task is granted first but waits for X (b's task
        // holds it), and b's third task takes Y meanwhile.
        answer_y.send(()).unwrap();
        let freed = Instant::now();
        assert_eq!(y.recv_timeout(soon).unwrap(), (b, 3), "b's task waited behind a's locality preference");
        // Y frees again while X is still held by b: after the locality
        // wait, a's task runs on Y.
        answer_y.send(()).unwrap();
        assert_eq!(y.recv_timeout(soon).unwrap(), (a, 1));
        assert!(freed.elapsed() >= wait, "a's task did not wait for its preferred executor");
        assert!(x.try_recv().is_err());

        // X frees: a's next task goes there; the one after waits for X,
        // which only a's own task holds, however long, though Y is free.
        answer_x.send(()).unwrap();
        ja.submit(task(2, &rdds));
        assert_eq!(x.recv_timeout(soon).unwrap(), (a, 2));
        ja.submit(task(3, &rdds));
        answer_y.send(()).unwrap();
        assert!(y.recv_timeout(wait * 3).is_err(), "a's task left its preferred executor, which its own job held");
        answer_x.send(()).unwrap();
        assert_eq!(x.recv_timeout(soon).unwrap(), (a, 3));
        drop((ja, jb));
    }

    /// The driver's block address on an unspecified listen address is the
    /// one an executor reached it on; a specific one is left alone.
    #[test]
    fn an_unspecified_block_address_becomes_the_interface_the_executor_reached() {
        let at = |s: &str| Some(s.parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(
            reachable_block_addr("0.0.0.0:4100", at("10.1.2.3:7078")),
            Some(("0.0.0.0:4100".into(), "10.1.2.3:4100".into()))
        );
        assert_eq!(
            reachable_block_addr("[::]:4100", at("[::ffff:10.1.2.3]:7078")),
            Some(("[::]:4100".into(), "10.1.2.3:4100".into())),
            "an IPv4 executor of a dual-stack driver gets the IPv4 address"
        );
        assert_eq!(
            reachable_block_addr("[::]:4100", at("[fd00::5]:7078")),
            Some(("[::]:4100".into(), "[fd00::5]:4100".into()))
        );
        assert_eq!(reachable_block_addr("10.1.2.3:4100", at("10.1.2.3:7078")), None);
        assert_eq!(reachable_block_addr("0.0.0.0:4100", None), None);
    }

    /// A driver listening on 0.0.0.0 (a pod's `cluster_listen`) binds its
    /// block server there too: the tasks it sends an executor locate the
    /// driver's input blocks at the address that executor reached it on
    /// (where the block server answers), not at 0.0.0.0, which names the
    /// executor's own host; other executors' locations are left alone.
    #[test]
    fn tasks_locate_the_drivers_blocks_where_the_executor_reached_it() {
        let port = free_addr().rsplit(':').next().unwrap().to_string();
        let secret = b"unit-test-secret".to_vec();
        let cluster =
            SharedCluster::start(&shared_config(&format!("0.0.0.0:{port}"), &secret, DEFAULT_LOCALITY_WAIT)).unwrap();
        let own = cluster.shared.block_addr.clone();
        assert!(own.starts_with("0.0.0.0:"), "{own}");
        let block_port = own.rsplit(':').next().unwrap().to_string();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (a, sec) = (format!("127.0.0.1:{port}"), secret.clone());
        std::thread::spawn(move || {
            let (mut conn, _) = join_driver(&a, &sec, 1);
            loop {
                match protocol::read_frame::<ToExecutor>(&mut conn) {
                    Ok(ToExecutor::Run { task, .. }) => {
                        let _ = seen_tx.send(task.locations.clone());
                    }
                    Ok(ToExecutor::Shutdown) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        await_executors(&cluster, 1);
        let registry = Arc::new(ModuleRegistry::new(UdfRuntime::shared().unwrap(), Default::default()));
        let (job, _results) = cluster.tenant("a").executors(registry, BlockStore::new()).unwrap();
        let block = |p: u32| crate::rdd::BlockId::Rdd { rdd: RddId { time: 1000, node: 1 }, partition: p };
        let mut t = task(1, &lineage(1000, 10));
        t.locations = vec![(block(0), own.clone()), (block(1), "10.9.8.7:4100".into())];
        job.submit(t);
        let locations = seen_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let reached = format!("127.0.0.1:{block_port}");
        assert_eq!(locations, vec![(block(0), reached.clone()), (block(1), "10.9.8.7:4100".into())]);
        // The driver's block server answers there.
        TcpStream::connect(&reached).unwrap();
        drop(job);
    }
}
