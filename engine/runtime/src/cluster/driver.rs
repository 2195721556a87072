//! The driver's side of a cluster: accepts executors (authenticated),
//! hands them tasks, relays their results, watches their heartbeats, and
//! declares an executor lost when its connection drops or it falls silent.
//! A lost executor's running tasks are reported failed (`ExecutorLost`) so the
//! scheduler runs them elsewhere; its blocks are reported gone so lost map
//! outputs are recomputed from lineage. Anything it sends after that is
//! ignored: its connection is shut and its id is never reused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::block_server;
use super::protocol::{self, Admission, FromExecutor, Role, ToExecutor};
use crate::executor::{BackendEvent, BlockStore, ExecutorBackend, Task, TaskFailure, TaskResult};
use crate::listener::{ExecutorEvent, ListenerBus};
use crate::udf::ModuleRegistry;

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
    /// An executor silent for this long is declared lost.
    pub heartbeat_timeout: Duration,
    /// The program started for local executors (`PROGRAM executor --driver
    /// ...`); `None` looks for `weir` beside the current executable, then on
    /// `PATH`.
    pub executor_binary: Option<std::path::PathBuf>,
    /// Told when executors join (losses are told by the scheduler).
    pub listeners: ListenerBus,
}

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

struct Conn {
    addr: String,
    pid: u32,
    slots: u32,
    writer: TcpStream,
    running: HashMap<u64, Task>,
    last_seen: Instant,
}

struct State {
    executors: BTreeMap<u64, Conn>,
    queue: VecDeque<Task>,
    next_id: u64,
    /// The driver is stopping: executors leaving is expected.
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    joined: Condvar,
    events: Sender<BackendEvent>,
    registry: Arc<ModuleRegistry>,
    secret: Arc<Vec<u8>>,
    timeout: Duration,
    listeners: ListenerBus,
}

/// `local-cluster[N]` and remote executors.
pub struct ClusterBackend {
    shared: Arc<Shared>,
    blocks: Arc<BlockStore>,
    block_addr: String,
    children: Mutex<Vec<Child>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends queued tasks to executors with free slots (least loaded first).
    fn dispatch(&self, st: &mut State) {
        let mut failed = Vec::new();
        while let Some(task) = st.queue.front() {
            let pick = st
                .executors
                .iter()
                .filter(|(_, c)| (c.running.len() as u32) < c.slots)
                .min_by_key(|(id, c)| (c.running.len(), **id))
                .map(|(id, _)| *id);
            let Some(id) = pick else { break };
            let task = task.clone();
            let Some(conn) = st.executors.get_mut(&id) else { break };
            let ok = true;
            if ok && protocol::write_frame(&mut conn.writer, &ToExecutor::Run(Box::new(task.clone()))).is_ok() {
                conn.running.insert(task.id, task);
                st.queue.pop_front();
            } else {
                failed.push(id);
                break;
            }
        }
        for id in failed {
            self.lose(st, id, "cannot send to it");
            self.dispatch(st);
        }
    }

    /// Removes an executor: its tasks fail with ExecutorLost, its blocks are
    /// reported gone, and nothing it sends from now on is heard.
    fn lose(&self, st: &mut State, id: u64, reason: &str) {
        let Some(conn) = st.executors.remove(&id) else { return };
        let _ = conn.writer.shutdown(std::net::Shutdown::Both);
        if st.stopping {
            return;
        }
        tracing::warn!(
            "executor {id} (pid {}, {}) lost: {reason}; {} running task(s) go elsewhere",
            conn.pid,
            conn.addr,
            conn.running.len()
        );
        let _ =
            self.events.send(BackendEvent::ExecutorLost { executor: conn.addr.clone(), reason: reason.to_string() });
        for (_, t) in conn.running {
            let _ = self.events.send(BackendEvent::Task(TaskResult {
                task_id: t.id,
                attempt: t.attempt,
                outcome: Err(TaskFailure::ExecutorLost(format!("executor {id}: {reason}"))),
                blocks: vec![],
                udf_calls: 0,
                micros: 0,
                executor: String::new(),
            }));
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
        block_server::serve(block_listener, blocks.clone(), secret.clone());

        let (events, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                executors: BTreeMap::new(),
                queue: VecDeque::new(),
                next_id: 0,
                stopping: false,
            }),
            joined: Condvar::new(),
            events,
            registry,
            secret: secret.clone(),
            timeout: cfg.heartbeat_timeout,
            listeners: cfg.listeners.clone(),
        });
        accept_loop(listener, shared.clone());
        monitor(shared.clone());

        let mut children = Vec::new();
        let exe = if cfg.local_executors > 0 {
            find_executor_binary(cfg.executor_binary.as_deref())?
        } else {
            std::path::PathBuf::new()
        };
        for _ in 0..cfg.local_executors {
            let child = Command::new(&exe)
                .args(["executor", "--driver", &addr.to_string(), "--cores", &cfg.cores.to_string()])
                .env("WEIR_SECRET", String::from_utf8_lossy(&secret).as_ref())
                .spawn()?;
            children.push(child);
        }
        let want = cfg.local_executors + cfg.wait_for;
        tracing::info!("driver accepting executors on {addr}; waiting for {want}");
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
        drop(st);
        Ok((ClusterBackend { shared, blocks, block_addr, children: Mutex::new(children) }, rx))
    }

    /// Pids of the executor processes this driver started.
    pub fn executor_pids(&self) -> Vec<u32> {
        self.children.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|c| c.id()).collect()
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("weir-driver-accept".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let shared = shared.clone();
            let _ = std::thread::Builder::new().name("weir-executor-conn".into()).spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let id = {
                    let mut st = shared.lock();
                    st.next_id += 1;
                    st.next_id
                };
                let limits = *shared.registry.limits();
                let role = match protocol::accept(&mut conn, &shared.secret, |role| match role {
                    Role::Executor { .. } => Admission::Welcome { executor_id: id, limits },
                    Role::BlockFetch => Admission::Refused { reason: "this is the driver's executor port".into() },
                }) {
                    Ok(r) => r,
                    Err(e) => {
                        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                        tracing::warn!("refused a connection from {peer}: {e}");
                        return;
                    }
                };
                let Role::Executor { slots, block_addr, pid } = role else { return };
                let Ok(writer) = conn.try_clone() else { return };
                let _ = conn.set_read_timeout(None);
                {
                    let mut st = shared.lock();
                    st.executors.insert(
                        id,
                        Conn {
                            addr: block_addr.clone(),
                            pid,
                            slots: slots.max(1),
                            writer,
                            running: HashMap::new(),
                            last_seen: Instant::now(),
                        },
                    );
                    tracing::info!("executor {id} (pid {pid}, blocks at {block_addr}) joined with {slots} slot(s)");
                    shared.dispatch(&mut st);
                }
                shared.joined.notify_all();
                let e = ExecutorEvent { executor: block_addr.clone(), reason: format!("pid {pid}, {slots} slot(s)") };
                shared.listeners.emit(|l| l.on_executor_added(&e));
                // Results and heartbeats, until the connection ends.
                loop {
                    let msg = protocol::read_frame::<FromExecutor>(&mut conn);
                    let mut st = shared.lock();
                    let Some(c) = st.executors.get_mut(&id) else { return }; // lost: ignore it
                    match msg {
                        Ok(FromExecutor::Heartbeat) => c.last_seen = Instant::now(),
                        Ok(FromExecutor::NeedModule { hash }) => {
                            c.last_seen = Instant::now();
                            let msg = match shared.registry.get(&hash) {
                                Some(m) => {
                                    ToExecutor::Module { name: m.name().to_string(), hash, bytes: m.bytes().to_vec() }
                                }
                                None => ToExecutor::NoModule { hash },
                            };
                            if protocol::write_frame(&mut c.writer, &msg).is_err() {
                                shared.lose(&mut st, id, "cannot send to it");
                                shared.dispatch(&mut st);
                                return;
                            }
                        }
                        Ok(FromExecutor::Result(r)) => {
                            c.last_seen = Instant::now();
                            if c.running.remove(&r.task_id).is_some() {
                                let _ = shared.events.send(BackendEvent::Task(*r));
                            }
                            shared.dispatch(&mut st);
                        }
                        Err(e) => {
                            shared.lose(&mut st, id, &format!("connection ended ({e})"));
                            shared.dispatch(&mut st);
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// Declares silent executors lost.
fn monitor(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("weir-heartbeats".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut st = shared.lock();
        let silent: Vec<u64> =
            st.executors.iter().filter(|(_, c)| c.last_seen.elapsed() > shared.timeout).map(|(id, _)| *id).collect();
        for id in silent {
            let t = shared.timeout;
            shared.lose(&mut st, id, &format!("no heartbeat for {} ms", t.as_millis()));
        }
        shared.dispatch(&mut st);
    });
}

impl ExecutorBackend for ClusterBackend {
    fn submit(&self, task: Task) {
        let mut st = self.shared.lock();
        st.queue.push_back(task);
        self.shared.dispatch(&mut st);
    }
    fn block_address(&self) -> Option<String> {
        Some(self.block_addr.clone())
    }
    fn slots(&self) -> usize {
        self.shared.lock().executors.values().map(|c| c.slots as usize).sum()
    }
    fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.stopping = true;
        for (_, c) in st.executors.iter_mut() {
            let _ = protocol::write_frame(&mut c.writer, &ToExecutor::Shutdown);
        }
        drop(st);
        for c in self.children.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            // Executors exit when their driver goes; make sure of it.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
