//! `weir executor --driver HOST:PORT`: an executor process. It proves it
//! knows the cluster secret, serves its block store to peers, receives
//! stage lineages (keeping the last `STAGE_CACHE`) and tasks that name them,
//! fetches the UDF modules it lacks from the driver by hash (checking
//! each one's SHA-256, compiling it once), runs tasks on `cores`
//! threads with a fresh instance per module per task, and sends results and
//! heartbeats. It exits when its driver goes away.

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::block_server;
use super::protocol::{self, Admission, FromExecutor, Role, StageId, ToExecutor, PROTOCOL_VERSION, STAGE_CACHE};
use crate::executor::{run_task_guarded, BlockStore, Task, TaskEnv};
use crate::udf::{ModuleHash, ModuleRegistry, UdfRuntime};

/// How often an executor tells its driver it is alive.
/// (Several fit in the driver's minimum heartbeat timeout.)
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How long a write to the driver may make no progress before the executor
/// gives up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    #[error("cannot reach the driver at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("the driver at {addr} refused this executor: {source}")]
    Refused { addr: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

/// Runs an executor until its driver goes away. `version` is the protocol
/// version to claim (tests use another to check refusal).
pub fn run(driver: &str, secret: &[u8], cores: u32, version: u32) -> Result<(), ExecutorError> {
    let mut conn = TcpStream::connect(driver).map_err(|e| ExecutorError::Connect { addr: driver.into(), source: e })?;
    let local_ip = conn.local_addr().map_err(|e| ExecutorError::Other(e.to_string()))?.ip();
    let blocks = BlockStore::new();
    let listener = TcpListener::bind((local_ip, 0)).map_err(|e| ExecutorError::Other(e.to_string()))?;
    let block_addr = listener.local_addr().map_err(|e| ExecutorError::Other(e.to_string()))?.to_string();
    let secret = Arc::new(secret.to_vec());
    let role = Role::Executor { slots: cores.max(1), block_addr: block_addr.clone(), pid: std::process::id() };
    let admission = protocol::connect(&mut conn, &secret, role, version)
        .map_err(|e| ExecutorError::Refused { addr: driver.into(), source: e })?;
    let Admission::Welcome { executor_id, limits } = admission else {
        return Err(ExecutorError::Other("refused".into()));
    };
    // The handshake's deadline set these; from now on the driver may be
    // quiet for long (no tasks), and heartbeats tell it this one is alive.
    conn.set_read_timeout(None).map_err(|e| ExecutorError::Other(e.to_string()))?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| ExecutorError::Other(e.to_string()))?;
    block_server::serve(listener, blocks.clone(), secret.clone());
    tracing::info!("executor {executor_id} joined {driver}; blocks at {block_addr}");

    let runtime = UdfRuntime::new().map_err(|e| ExecutorError::Other(e.to_string()))?;
    let registry = Arc::new(ModuleRegistry::new(runtime, limits));
    let writer = Arc::new(Mutex::new(conn.try_clone().map_err(|e| ExecutorError::Other(e.to_string()))?));

    // Heartbeats until the connection fails.
    {
        let writer = writer.clone();
        let _ = std::thread::Builder::new().name("weir-heartbeat".into()).spawn(move || loop {
            std::thread::sleep(HEARTBEAT_INTERVAL);
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if protocol::write_frame(&mut *w, &FromExecutor::Heartbeat).is_err() {
                std::process::exit(0);
            }
        });
    }

    // Task threads.
    let (tx, rx) = channel::<Task>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..cores.max(1) {
        let (rx, writer, registry, blocks, secret, addr) =
            (rx.clone(), writer.clone(), registry.clone(), blocks.clone(), secret.clone(), block_addr.clone());
        let _ = std::thread::Builder::new()
            .name(format!("weir-task-{i}"))
            .stack_size(crate::executor::TASK_STACK_BYTES)
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(task) = next else { return };
                let fetch = |ids: &[crate::rdd::BlockId], from: &str| block_server::fetch(from, &secret, ids);
                let env = TaskEnv { registry: &registry, blocks: &blocks, fetch: Some(&fetch), executor: addr.clone() };
                let result = run_task_guarded(&env, &task);
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                if protocol::write_frame(&mut *w, &FromExecutor::Result(Box::new(result))).is_err() {
                    std::process::exit(0);
                }
            });
    }

    // Tasks wait here until the modules they use have arrived: a module this
    // executor lacks is fetched from the driver by hash, once.
    let mut waiting: Vec<Task> = Vec::new();
    let mut asked: std::collections::HashSet<ModuleHash> = Default::default();
    let mut unavailable: std::collections::HashSet<ModuleHash> = Default::default();
    // Stage lineages, oldest first (the driver mirrors this bound and order).
    let mut stages: std::collections::VecDeque<(StageId, Arc<StageRdds>)> = Default::default();
    loop {
        match protocol::read_frame::<ToExecutor>(&mut conn) {
            Ok(ToExecutor::Module { name, hash, bytes }) => match registry.insert_bytes(&name, &bytes) {
                Ok(m) if m.hash() == hash => {}
                Ok(m) => {
                    return Err(ExecutorError::Other(format!(
                        "module {name} arrived with sha256 {}, expected {hash}",
                        m.hash()
                    )))
                }
                Err(e) => return Err(ExecutorError::Other(format!("module {name}: {e}"))),
            },
            Ok(ToExecutor::NoModule { hash }) => {
                // The tasks that need it run anyway and fail with a clear error.
                tracing::error!("the driver has no module with sha256 {hash}");
                unavailable.insert(hash);
            }
            Ok(ToExecutor::Stage { stage, rdds }) => {
                stages.retain(|(s, _)| *s != stage);
                stages.push_back((stage, Arc::new(rdds)));
                while stages.len() > STAGE_CACHE {
                    stages.pop_front();
                }
            }
            Ok(ToExecutor::Run { stage, mut task }) => {
                let Some((_, rdds)) = stages.iter().find(|(s, _)| *s == stage) else {
                    // Never guess a lineage: the driver sends it and the task again.
                    tracing::debug!("task {} names stage {stage}, which this executor does not hold", task.id);
                    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                    let msg = FromExecutor::UnknownStage { stage, task_id: task.id };
                    if protocol::write_frame(&mut *w, &msg).is_err() {
                        return Ok(());
                    }
                    continue;
                };
                task.rdds = (**rdds).clone();
                for h in task.modules() {
                    if registry.get(&h).is_none() && asked.insert(h) {
                        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                        if protocol::write_frame(&mut *w, &FromExecutor::NeedModule { hash: h }).is_err() {
                            return Ok(());
                        }
                    }
                }
                waiting.push(*task);
            }
            Ok(ToExecutor::Shutdown) => return Ok(()),
            Err(_) => return Ok(()), // the driver is gone
        }
        let (ready, still): (Vec<Task>, Vec<Task>) = waiting
            .drain(..)
            .partition(|t| t.modules().iter().all(|h| registry.get(h).is_some() || unavailable.contains(h)));
        waiting = still;
        for t in ready {
            if tx.send(t).is_err() {
                return Ok(());
            }
        }
    }
}

type StageRdds = std::collections::BTreeMap<crate::rdd::RddId, crate::rdd::Rdd>;

/// Protocol version this build speaks (for `weir executor`).
pub const VERSION: u32 = PROTOCOL_VERSION;
