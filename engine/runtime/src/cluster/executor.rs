//! `weir executor --driver HOST:PORT[,HOST:PORT...]`: an executor process.
//! It proves it knows the cluster secret, serves its block store to peers,
//! receives stage lineages (keeping the last `STAGE_CACHE`) and tasks that
//! name them, fetches the UDF modules it lacks from the driver by hash
//! (checking each one's SHA-256, compiling it once), runs tasks on `cores`
//! threads with a fresh instance per module per task, and sends results and
//! heartbeats. It exits when its driver goes away — or, with `--rejoin`,
//! joins again (the same driver after a partition heals, or the next address
//! of the list after the driver moved to another host). The driver
//! heartbeats too: a driver from which nothing arrives for the heartbeat
//! timeout (its host vanished, or a partition cut it off, and no TCP error
//! will say so for minutes) is treated as gone.
//!
//! One executor serves every job its driver gives it (`weir serve` runs many
//! jobs on one set of executors): each job is registered with its own UDF
//! sandbox limits (`Job`), its modules are compiled under those limits in a
//! registry of its own and its blocks kept in a store of its own, and
//! `EndJob` drops both. A task names its job, so blocks and modules of
//! different jobs never mix even where their ids or hashes coincide.
//!
//! Every join is a new **incarnation**: a new executor id from the driver's
//! `Welcome`, a new block store, block server and task threads. The old
//! incarnation's block server is retired and its task threads can write
//! only to the old (closed) connection, and every result names the
//! incarnation that computed it, so nothing computed before a rejoin — which
//! the driver declared lost and may have re-run elsewhere — is ever
//! delivered or served as current.

use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::block_server;
use super::block_server::JobBlocks;
use super::protocol::{
    self, Admission, BlockQuota, FromExecutor, JobId, Role, StageId, ToExecutor, PROTOCOL_VERSION, STAGE_CACHE,
};
use crate::executor::block_store::BlockBudget;
use crate::executor::{run_task_guarded, BlockStore, Task, TaskEnv, TaskFailure, TaskResult};
use crate::udf::{ModuleHash, ModuleRegistry, UdfRuntime};

/// How often an executor tells its driver it is alive.
/// (Several fit in the driver's minimum heartbeat timeout.)
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How long a write to the driver may make no progress before the executor
/// gives up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TCP connect to a driver address may take (an unreachable
/// host answers nothing; the OS default is minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an executor waits for anything from its driver (by default):
/// the driver heartbeats every 100 ms, so this is 30 missed heartbeats, the
/// driver's own default for its executors.
pub const DEFAULT_DRIVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// The shortest driver timeout accepted (five driver heartbeats).
pub const MIN_DRIVER_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between rounds over the driver addresses when rejoining: doubles
/// from the first to the last.
const REJOIN_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    #[error("cannot reach the driver at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("the driver at {addr} refused this executor: {source}")]
    Refused { addr: String, source: std::io::Error },
    #[error("no driver at {addrs} accepted this executor for {} ms (last: {last})", waited.as_millis())]
    NoDriver { addrs: String, waited: Duration, last: Box<ExecutorError> },
    #[error(
        "the driver at {addr} sent nothing (not even a heartbeat) for {} ms: treating it as lost \
         (its host is gone or cut off); exiting, as --rejoin was not given",
        silent.as_millis()
    )]
    DriverSilent { addr: String, silent: Duration },
    #[error("{0}")]
    Other(String),
}

impl ExecutorError {
    /// Whether trying again may succeed: the driver was unreachable, or the
    /// handshake broke off (a partition, a driver starting or dying). A
    /// refusal (wrong secret, version) or a bad module is final.
    fn transient(&self) -> bool {
        match self {
            ExecutorError::Connect { .. } => true,
            ExecutorError::Refused { source, .. } => source.kind() != std::io::ErrorKind::PermissionDenied,
            _ => false,
        }
    }
}

/// How an incarnation ended.
enum Ended {
    /// The driver said so: the job is over.
    Shutdown,
    /// The connection to the driver ended (the driver died or moved, or it
    /// declared this executor lost and closed it).
    DriverGone,
    /// Nothing arrived from the driver for the driver timeout.
    DriverSilent(Duration),
}

/// How an executor process runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorOptions {
    /// Tasks at once.
    pub cores: u32,
    /// The protocol version to claim (tests use another to check refusal).
    pub version: u32,
    /// `Some(give_up_after)`: join again when the driver goes away.
    pub rejoin: Option<Duration>,
    /// A driver silent for this long is lost (at least [`MIN_DRIVER_TIMEOUT`]).
    pub driver_timeout: Duration,
    /// The largest frame taken from the driver, a block fetcher or a block
    /// server ([`protocol::check_frame_limit`]).
    pub max_frame: usize,
}

impl ExecutorOptions {
    pub fn new(cores: u32) -> Self {
        ExecutorOptions {
            cores,
            version: PROTOCOL_VERSION,
            rejoin: None,
            driver_timeout: DEFAULT_DRIVER_TIMEOUT,
            max_frame: protocol::MAX_FRAME,
        }
    }
}

/// Runs an executor until its driver goes away. `version` is the protocol
/// version to claim (tests use another to check refusal).
pub fn run(driver: &str, secret: &[u8], cores: u32, version: u32) -> Result<(), ExecutorError> {
    let opts = ExecutorOptions { version, ..ExecutorOptions::new(cores) };
    run_with(&[driver.to_string()], secret, &opts)
}

/// Runs an executor that joins the first of `drivers` that accepts it.
/// Without `rejoin` it stops when that driver goes away (or when none of
/// them accepts it). With `rejoin: Some(give_up_after)`, whenever its driver
/// goes away it joins again, as a new incarnation, the first that accepts
/// it, trying them in turn with backoff, until a driver shuts it down (the
/// job is over) or none accepts it for `give_up_after`.
pub fn run_with(drivers: &[String], secret: &[u8], opts: &ExecutorOptions) -> Result<(), ExecutorError> {
    if drivers.is_empty() {
        return Err(ExecutorError::Other("no driver address".into()));
    }
    protocol::check_frame_limit(opts.max_frame as u64).map_err(ExecutorError::Other)?;
    if opts.driver_timeout < MIN_DRIVER_TIMEOUT {
        return Err(ExecutorError::Other(format!(
            "a heartbeat timeout of {} ms is too short: the minimum is {} ms (the driver heartbeats every {} ms)",
            opts.driver_timeout.as_millis(),
            MIN_DRIVER_TIMEOUT.as_millis(),
            protocol::DRIVER_HEARTBEAT_INTERVAL.as_millis()
        )));
    }
    let rejoin = opts.rejoin;
    let mut since = Instant::now();
    let mut backoff = REJOIN_BACKOFF.0;
    // Where a round starts: after the address whose driver was just lost
    // (it died, moved, or vanished: the next host is likelier, and an
    // unreachable one costs a whole connect timeout).
    let mut first = 0;
    loop {
        let mut last = None;
        for i in 0..drivers.len() {
            let at = (first + i) % drivers.len();
            let addr = &drivers[at];
            match incarnation(addr, secret, opts) {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::DriverGone) if rejoin.is_none() => return Ok(()),
                Ok(Ended::DriverSilent(silent)) if rejoin.is_none() => {
                    return Err(ExecutorError::DriverSilent { addr: addr.clone(), silent })
                }
                Ok(ended) => {
                    if let Ended::DriverSilent(t) = ended {
                        tracing::warn!(
                            "the driver at {addr} sent nothing for {} ms: treating it as lost",
                            t.as_millis()
                        );
                    }
                    tracing::warn!("lost the driver at {addr}; joining again as a new executor");
                    since = Instant::now();
                    backoff = REJOIN_BACKOFF.0;
                    first = at + 1;
                    last = None;
                    break;
                }
                Err(e) if e.transient() => {
                    tracing::debug!("{e}");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Some(last) = last else { continue };
        match rejoin {
            None => return Err(last),
            Some(limit) if since.elapsed() >= limit => {
                let addrs = drivers.join(",");
                return Err(ExecutorError::NoDriver { addrs, waited: since.elapsed(), last: Box::new(last) });
            }
            Some(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(REJOIN_BACKOFF.1);
            }
        }
    }
}

/// The connection of one incarnation, shared by its threads. The first
/// thread that fails to write to it marks it dead and shuts it, which also
/// ends the incarnation's read loop; no thread ever writes to a newer
/// incarnation's connection.
struct Link {
    writer: Mutex<TcpStream>,
    live: AtomicBool,
    /// The largest frame the driver takes (its welcome said).
    driver_limit: usize,
}

impl Link {
    /// Sends `msg`; false (and the link is dead) when it cannot.
    fn send(&self, msg: &FromExecutor) -> bool {
        if !self.live.load(Ordering::SeqCst) {
            return false;
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if protocol::write_frame(&mut *w, msg).is_err() {
            self.kill(&w);
            return false;
        }
        true
    }

    /// Sends a task's result; one over the driver's frame limit is sent as
    /// the task's failure instead (deterministic: the same task makes the
    /// same result), naming the limit. Encoded once.
    fn send_result(&self, executor_id: u64, job: JobId, result: TaskResult) -> bool {
        let msg = FromExecutor::Result { executor_id, job, result: Box::new(result) };
        let size = match protocol::encode_frame(&msg) {
            Ok(frame) if frame.len() - 4 <= self.driver_limit => return self.send_frame(&frame),
            Ok(frame) => format!("{} bytes", frame.len() - 4),
            Err(e) => format!("not sendable ({e})"),
        };
        let FromExecutor::Result { mut result, .. } = msg else { return false };
        result.outcome = Err(TaskFailure::bad_data(format!(
            "the task's result is {size}, over the driver's frame limit of {} bytes (--max-frame-bytes)",
            self.driver_limit
        )));
        result.blocks.clear();
        self.send(&FromExecutor::Result { executor_id, job, result })
    }

    /// Sends an encoded frame; false (and the link is dead) when it cannot.
    fn send_frame(&self, frame: &[u8]) -> bool {
        if !self.live.load(Ordering::SeqCst) {
            return false;
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.write_all(frame).and_then(|()| w.flush()).is_err() {
            self.kill(&w);
            return false;
        }
        true
    }

    fn kill(&self, sock: &TcpStream) {
        self.live.store(false, Ordering::SeqCst);
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
}

/// A joined incarnation: its connection, the listener of its block server
/// (on the interface that reaches the driver) and its id. (Each job's
/// sandbox limits come with its `Job` frame, not with the welcome.)
struct Joined {
    conn: TcpStream,
    listener: TcpListener,
    block_addr: String,
    executor_id: u64,
    /// The largest frame the driver takes.
    driver_limit: usize,
}

/// Connects to `driver` (with a deadline) and completes the handshake.
fn join(driver: &str, secret: &[u8], opts: &ExecutorOptions) -> Result<Joined, ExecutorError> {
    let (cores, version) = (opts.cores, opts.version);
    let connect_err = |source| ExecutorError::Connect { addr: driver.into(), source };
    let other = |e: std::io::Error| ExecutorError::Other(e.to_string());
    let addr = driver
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err(std::io::Error::other("the address resolves to nothing")))?;
    let mut conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(connect_err)?;
    let listener = TcpListener::bind((conn.local_addr().map_err(other)?.ip(), 0)).map_err(other)?;
    let block_addr = listener.local_addr().map_err(other)?.to_string();
    let role = Role::Executor {
        slots: cores.max(1),
        block_addr: block_addr.clone(),
        pid: std::process::id(),
        max_frame: opts.max_frame as u64,
    };
    let admission = protocol::connect(&mut conn, secret, role, version)
        .map_err(|e| ExecutorError::Refused { addr: driver.into(), source: e })?;
    let Admission::Welcome { executor_id, max_frame, .. } = admission else {
        return Err(ExecutorError::Other("refused".into()));
    };
    let driver_limit = protocol::peer_frame_limit(max_frame);
    // The handshake's deadline set these; from now on the driver
    // heartbeats, so a read that waits longer than the driver timeout means
    // the driver is gone (or cut off), even though TCP says nothing yet.
    conn.set_read_timeout(Some(opts.driver_timeout)).map_err(other)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(other)?;
    Ok(Joined { conn, listener, block_addr, executor_id, driver_limit })
}

/// One incarnation: joins `driver`, then serves it until it goes away.
fn incarnation(driver: &str, secret: &[u8], opts: &ExecutorOptions) -> Result<Ended, ExecutorError> {
    let Joined { conn, listener, block_addr, executor_id, driver_limit } = join(driver, secret, opts)?;
    let cores = opts.cores;
    // Each job's blocks apart (its `Job` frame adds its store): a fetch
    // names its job, so jobs sharing this executor never read each other's.
    let blocks = Arc::new(JobBlocks::default());
    let secret = Arc::new(secret.to_vec());
    let server = block_server::serve(listener, blocks.clone(), secret.clone(), opts.max_frame);
    tracing::info!("executor {executor_id} joined {driver}; blocks at {block_addr}");

    let runtime = UdfRuntime::shared().map_err(|e| ExecutorError::Other(e.to_string()))?;
    let writer = conn.try_clone().map_err(|e| ExecutorError::Other(e.to_string()))?;
    let link = Arc::new(Link { writer: Mutex::new(writer), live: AtomicBool::new(true), driver_limit });
    spawn_heartbeat(link.clone());
    let tasks = spawn_task_threads(cores, executor_id, &link, &secret, &block_addr, opts.max_frame);
    let env = DriverEnv { link: &link, runtime, blocks: &blocks, executor_id, block_addr: &block_addr };
    let ended = serve_driver(conn, &env, tasks, opts);
    // Whatever ended it, this incarnation is over: its connection is shut
    // (its task threads can no longer send), its blocks are served no more.
    {
        let w = link.writer.lock().unwrap_or_else(|p| p.into_inner());
        link.kill(&w);
    }
    server.retire();
    ended
}

/// Heartbeats until the link dies.
fn spawn_heartbeat(link: Arc<Link>) {
    let _ = std::thread::Builder::new().name("weir-heartbeat".into()).spawn(move || loop {
        std::thread::sleep(HEARTBEAT_INTERVAL);
        let (udf_memory_bytes, udf_memory_peak_bytes) = crate::udf::udf_memory();
        if !link.send(&FromExecutor::Heartbeat { udf_memory_bytes, udf_memory_peak_bytes }) {
            return;
        }
    });
}

/// A task ready to run, with what its job computes with.
struct ReadyTask {
    job: JobId,
    registry: Arc<ModuleRegistry>,
    blocks: Arc<BlockStore>,
    task: Task,
}

/// A job this executor runs tasks of: its modules (compiled under its own
/// sandbox limits) and its block store.
struct JobEnv {
    registry: Arc<ModuleRegistry>,
    blocks: Arc<BlockStore>,
}

/// Starts the incarnation's task threads; they end when the returned
/// sender is dropped, or when their result cannot be sent.
fn spawn_task_threads(
    cores: u32,
    executor_id: u64,
    link: &Arc<Link>,
    secret: &Arc<Vec<u8>>,
    block_addr: &str,
    max_frame: usize,
) -> Sender<ReadyTask> {
    let (tx, rx) = channel::<ReadyTask>();
    let rx = Arc::new(Mutex::new(rx));
    let fetcher = Arc::new(block_server::Fetcher::new(max_frame));
    for i in 0..cores.max(1) {
        let (rx, link, secret, addr) = (rx.clone(), link.clone(), secret.clone(), block_addr.to_string());
        let fetcher = fetcher.clone();
        let _ = std::thread::Builder::new()
            .name(format!("weir-task-{i}"))
            .stack_size(crate::executor::TASK_STACK_BYTES)
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(ReadyTask { job, registry, blocks, task }) = next else { return };
                let fetch = |ids: &[crate::rdd::BlockId], from: &str| fetcher.fetch(from, &secret, job, ids);
                let env = TaskEnv { registry: &registry, blocks: &blocks, fetch: Some(&fetch), executor: addr.clone() };
                let result = run_task_guarded(&env, &task);
                if !link.send_result(executor_id, job, result) {
                    return;
                }
            });
    }
    tx
}

/// What [`serve_driver`] works with.
struct DriverEnv<'a> {
    link: &'a Link,
    runtime: Arc<UdfRuntime>,
    blocks: &'a Arc<JobBlocks>,
    executor_id: u64,
    block_addr: &'a str,
}

/// The block budgets of the jobs on this executor, by the name the driver
/// gives them: a `weir serve` tenant's `block_quota_bytes` holds all of its
/// jobs' blocks in this process together, as the server's own budget holds
/// them in the server's.
#[derive(Default)]
struct Budgets(std::collections::HashMap<String, Arc<BlockBudget>>);

impl Budgets {
    /// A new job's block store, under `quota` (unbounded without one). The
    /// limit follows the newest `Job` frame that names the budget.
    fn store(&mut self, quota: Option<BlockQuota>) -> Arc<BlockStore> {
        let Some(BlockQuota { what, bytes }) = quota else { return BlockStore::new() };
        // Budgets no store holds any more are dropped: the map follows the
        // jobs held (at most MAX_JOBS), not the executor's history.
        self.0.retain(|_, b| Arc::strong_count(b) > 1);
        let what: String = what.chars().take(200).collect();
        let budget = self.0.entry(what.clone()).or_insert_with(|| BlockBudget::new(what, bytes));
        budget.set_limit(bytes);
        BlockStore::with_budget(budget.clone())
    }
}

/// Jobs an executor holds at once: a driver never has more in flight (a
/// server's jobs are capped by its tenants' `max_jobs`); a peer that
/// registers more is refused rather than served without bound.
pub const MAX_JOBS: usize = 4096;

/// Reads what the driver sends until it goes away (or shuts this executor
/// down). Tasks wait here until the modules they use have arrived: a module
/// this executor lacks is fetched from the driver by hash, once per job.
fn serve_driver(
    mut conn: TcpStream,
    env: &DriverEnv<'_>,
    tx: Sender<ReadyTask>,
    opts: &ExecutorOptions,
) -> Result<Ended, ExecutorError> {
    let driver_timeout = opts.driver_timeout;
    let link = env.link;
    let mut jobs: std::collections::HashMap<JobId, JobEnv> = Default::default();
    let mut waiting: Vec<(JobId, Task)> = Vec::new();
    let mut asked: std::collections::HashSet<(JobId, ModuleHash)> = Default::default();
    let mut unavailable: std::collections::HashSet<(JobId, ModuleHash)> = Default::default();
    // Stage lineages, oldest first (the driver mirrors this bound and order).
    let mut stages: std::collections::VecDeque<(StageId, JobId, Arc<StageRdds>)> = Default::default();
    let mut budgets = Budgets::default();
    loop {
        match protocol::read_frame_limited::<ToExecutor>(&mut conn, opts.max_frame) {
            Ok(ToExecutor::Job { job, limits, blocks: quota }) => {
                if !jobs.contains_key(&job) {
                    if jobs.len() >= MAX_JOBS {
                        return Err(ExecutorError::Other(format!(
                            "the driver registered more than {MAX_JOBS} jobs at once on this executor"
                        )));
                    }
                    let registry = Arc::new(ModuleRegistry::new(env.runtime.clone(), limits));
                    let blocks = env.blocks.insert(job, budgets.store(quota));
                    jobs.insert(job, JobEnv { registry, blocks });
                }
            }
            Ok(ToExecutor::EndJob { job }) => {
                // Its running tasks keep what they hold until they end; its
                // blocks are served no more and freed with the last of them.
                let had = jobs.remove(&job).is_some();
                let released = env.blocks.remove(job);
                waiting.retain(|(j, _)| *j != job);
                asked.retain(|(j, _)| *j != job);
                unavailable.retain(|(j, _)| *j != job);
                if had {
                    let (n, bytes) = released.map_or((0, 0), |b| (b.ids().len(), b.bytes()));
                    tracing::info!(
                        "job {job} ended: released its {n} block(s) ({bytes} bytes) and modules; {} job(s) held",
                        jobs.len()
                    );
                }
            }
            Ok(ToExecutor::Module { job, name, hash, bytes }) => {
                let Some(j) = jobs.get(&job) else { continue }; // the job ended meanwhile
                match j.registry.insert_bytes(&name, &bytes) {
                    Ok(m) if m.hash() == hash => {}
                    Ok(m) => {
                        return Err(ExecutorError::Other(format!(
                            "module {name} arrived with sha256 {}, expected {hash}",
                            m.hash()
                        )))
                    }
                    // A module that does not compile under its job's limits
                    // fails that job's tasks, never the executor.
                    Err(e) => {
                        tracing::error!("job {job}: module {name}: {e}");
                        unavailable.insert((job, hash));
                    }
                }
            }
            Ok(ToExecutor::NoModule { job, hash }) => {
                // The tasks that need it run anyway and fail with a clear error.
                tracing::error!("the driver has no module with sha256 {hash} for job {job}");
                unavailable.insert((job, hash));
            }
            Ok(ToExecutor::Stage { job, stage, rdds }) => {
                stages.retain(|(s, _, _)| *s != stage);
                stages.push_back((stage, job, Arc::new(rdds)));
                while stages.len() > STAGE_CACHE {
                    stages.pop_front();
                }
            }
            Ok(ToExecutor::Run { job, stage, mut task }) => {
                let Some((_, _, rdds)) = stages.iter().find(|(s, j, _)| *s == stage && *j == job) else {
                    // Never guess a lineage: the driver sends it and the task again.
                    tracing::debug!("task {} names stage {stage}, which this executor does not hold", task.id);
                    if !link.send(&FromExecutor::UnknownStage { job, stage, task_id: task.id }) {
                        return Ok(Ended::DriverGone);
                    }
                    continue;
                };
                if !jobs.contains_key(&job) {
                    // The driver registers a job before its first task; a
                    // task of a job not held fails (it is retried).
                    let result = TaskResult {
                        task_id: task.id,
                        attempt: task.attempt,
                        outcome: Err(TaskFailure::engine(format!("job {job} is not registered on this executor"))),
                        blocks: vec![],
                        udf_calls: 0,
                        micros: 0,
                        executor: env.block_addr.to_string(),
                        udf_usage: Vec::new(),
                    };
                    let msg = FromExecutor::Result { executor_id: env.executor_id, job, result: Box::new(result) };
                    if !link.send(&msg) {
                        return Ok(Ended::DriverGone);
                    }
                    continue;
                }
                task.rdds = (**rdds).clone();
                for h in task.modules() {
                    let have = jobs.get(&job).is_some_and(|j| j.registry.get(&h).is_some());
                    if !have && asked.insert((job, h)) && !link.send(&FromExecutor::NeedModule { job, hash: h }) {
                        return Ok(Ended::DriverGone);
                    }
                }
                waiting.push((job, *task));
            }
            Ok(ToExecutor::Heartbeat) => {}
            Ok(ToExecutor::Shutdown) => return Ok(Ended::Shutdown),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(Ended::DriverSilent(driver_timeout))
            }
            Err(e) => {
                // Say why when it is this side's refusal (a frame over its
                // limit, a malformed frame), not just a closed connection.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    tracing::warn!(
                        "leaving the driver: it sent a frame this executor refuses: {e} (--max-frame-bytes)"
                    );
                }
                return Ok(Ended::DriverGone);
            }
        }
        let (ready, still): (Vec<(JobId, Task)>, Vec<(JobId, Task)>) =
            waiting.drain(..).partition(|(job, t)| match jobs.get(job) {
                Some(j) => t.modules().iter().all(|h| j.registry.get(h).is_some() || unavailable.contains(&(*job, *h))),
                None => true,
            });
        waiting = still;
        for (job, task) in ready {
            let Some(j) = jobs.get(&job) else { continue };
            let ready = ReadyTask { job, registry: j.registry.clone(), blocks: j.blocks.clone(), task };
            if tx.send(ready).is_err() {
                return Ok(Ended::DriverGone);
            }
        }
    }
}

type StageRdds = std::collections::BTreeMap<crate::rdd::RddId, crate::rdd::Rdd>;

/// Protocol version this build speaks (for `weir executor`).
pub const VERSION: u32 = PROTOCOL_VERSION;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udf::UdfLimits;

    /// A fake driver that authenticates the executor and then says nothing
    /// (its host vanished): the executor must give up on it within its
    /// driver timeout (plus a little), with the error naming the driver,
    /// instead of waiting for TCP to give up.
    #[test]
    fn an_executor_whose_driver_falls_silent_gives_up_within_the_deadline() {
        let secret = b"silent-driver-secret".to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let s = secret.clone();
        let (held_tx, held_rx) = channel::<TcpStream>();
        let fake = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let limits = UdfLimits::default();
            protocol::accept(&mut conn, &s, |_| Admission::Welcome {
                executor_id: 1,
                limits,
                max_frame: protocol::MAX_FRAME as u64,
            })
            .unwrap();
            // Keep the connection open (no FIN, no RST), and send nothing.
            held_tx.send(conn).unwrap();
        });
        let timeout = Duration::from_millis(700);
        let opts = ExecutorOptions { driver_timeout: timeout, ..ExecutorOptions::new(1) };
        let started = Instant::now();
        let (done_tx, done_rx) = channel();
        let a = addr.clone();
        std::thread::spawn(move || done_tx.send(run_with(&[a], &secret, &opts)).unwrap());
        // A deadline on the test itself: far beyond the executor's.
        let result = done_rx.recv_timeout(Duration::from_secs(20)).expect("the executor waited for ever");
        let took = started.elapsed();
        fake.join().unwrap();
        let _conn = held_rx.recv().unwrap();
        match result {
            Err(ExecutorError::DriverSilent { addr: a, silent }) => {
                assert_eq!(a, addr);
                assert_eq!(silent, timeout);
            }
            other => panic!("expected the driver to be declared silent, got {other:?}"),
        }
        assert!(took >= timeout, "gave up after {took:?}, before its {timeout:?} deadline");
        assert!(took < timeout + Duration::from_secs(5), "gave up only after {took:?}");
    }

    /// Heartbeats keep an idle executor with its driver: a fake driver that
    /// sends only heartbeats, for several driver timeouts, then `Shutdown`,
    /// ends the executor cleanly (not as silent).
    #[test]
    fn driver_heartbeats_keep_an_idle_executor() {
        let secret = b"beating-driver-secret".to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let s = secret.clone();
        let fake = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let limits = UdfLimits::default();
            protocol::accept(&mut conn, &s, |_| Admission::Welcome {
                executor_id: 1,
                limits,
                max_frame: protocol::MAX_FRAME as u64,
            })
            .unwrap();
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                protocol::write_frame(&mut conn, &ToExecutor::Heartbeat).unwrap();
                std::thread::sleep(protocol::DRIVER_HEARTBEAT_INTERVAL);
            }
            protocol::write_frame(&mut conn, &ToExecutor::Shutdown).unwrap();
            conn
        });
        let opts = ExecutorOptions { driver_timeout: Duration::from_millis(600), ..ExecutorOptions::new(1) };
        let (done_tx, done_rx) = channel();
        std::thread::spawn(move || done_tx.send(run_with(&[addr], &secret, &opts)).unwrap());
        let result = done_rx.recv_timeout(Duration::from_secs(20)).expect("the executor did not end");
        let _conn = fake.join().unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn a_driver_timeout_below_the_minimum_is_refused() {
        let opts = ExecutorOptions { driver_timeout: Duration::from_millis(100), ..ExecutorOptions::new(1) };
        let e = run_with(&["127.0.0.1:1".into()], b"s", &opts).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
    }
}
