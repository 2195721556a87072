//! Executors: where tasks run. [`ExecutorBackend`] is the interface the
//! scheduler drives; [`LocalExecutors`] (`local[N]`) runs N worker threads in
//! the driver's process over a shared [`BlockStore`]; [`pool::SharedPool`]
//! runs one set of threads for many jobs (`weir serve`), shared by tenants
//! by deficit round robin. A task is data ([`Task`]), so a remote process
//! can implement the same interface.

pub mod block_store;
mod calls;
mod groups;
pub mod order;
pub mod pool;
mod range;
pub mod shuffle;
pub mod state;
pub mod task;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

pub use block_store::{Block, BlockStore};
pub use pool::{Pool, PoolTenant, PooledExecutors, SharedPool, ThreadPlacement};
pub use task::{run_task, run_task_guarded, Task, TaskEnv, TaskFailure, TaskKind, TaskOutput, TaskResult};

use crate::udf::ModuleRegistry;

/// What a backend reports to the scheduler.
#[derive(Debug)]
pub enum BackendEvent {
    /// A task finished (or failed).
    Task(TaskResult),
    /// An executor is gone (dead or silent): the blocks it held are lost. Its
    /// running tasks are reported failed with `TaskFailure::ExecutorLost`.
    ExecutorLost { executor: String, reason: String },
}

/// Runs tasks somewhere and reports their results.
pub trait ExecutorBackend: Send + Sync {
    /// Queues a task; its [`TaskResult`] arrives on the backend's event channel.
    fn submit(&self, task: Task);
    /// Where executors fetch the blocks the driver holds (input blocks), when
    /// executors are other processes.
    fn block_address(&self) -> Option<String> {
        None
    }
    /// How many tasks run at once.
    fn slots(&self) -> usize;
    /// The block store tasks read and write (for the scheduler's bookkeeping
    /// and test hooks).
    fn blocks(&self) -> &Arc<BlockStore>;
    /// Runs tasks submitted from now on only on the executor whose block
    /// address is `executor`, while it is connected (None: anywhere again).
    /// Executors in this process share one block store: nothing to do.
    fn prefer(&self, _executor: Option<&str>) {}
    /// Each executor's liveness, heartbeats, running tasks and UDF memory
    /// (the scheduler adds the tasks it saw finish). Empty when the backend
    /// cannot tell (a pool shared by jobs).
    fn executor_status(&self) -> Vec<crate::listener::ExecutorStatus> {
        Vec::new()
    }
    /// [`ExecutorBackend::executor_status`] callable from any thread at any
    /// time (a status page asking between batches), without this backend:
    /// it answers empty once the backend is gone. `None` when the backend
    /// cannot tell.
    fn live_status(&self) -> Option<LiveStatus> {
        None
    }
}

/// See [`ExecutorBackend::live_status`].
pub type LiveStatus = Arc<dyn Fn() -> Vec<crate::listener::ExecutorStatus> + Send + Sync>;

/// Stack of a thread that runs tasks (and of the driver's thread): a task
/// computes its partition through its lineage recursively, one frame set
/// per RDD, and a graph may be `weir_plan::limits::MAX_GRAPH_DEPTH` deep.
/// Only the pages used are committed.
pub const TASK_STACK_BYTES: usize = 64 << 20;

/// `local[N]`: N worker threads in this process.
pub struct LocalExecutors {
    queue: Sender<Task>,
    slots: usize,
    blocks: Arc<BlockStore>,
    /// Tasks submitted and not finished (queued or running on a thread).
    in_flight: Arc<std::sync::atomic::AtomicU64>,
}

impl LocalExecutors {
    pub fn start(
        slots: usize,
        registry: Arc<ModuleRegistry>,
        blocks: Arc<BlockStore>,
    ) -> std::io::Result<(Self, Receiver<BackendEvent>)> {
        let (queue, tasks) = channel::<Task>();
        let (results_tx, results) = channel::<BackendEvent>();
        let tasks = Arc::new(Mutex::new(tasks));
        let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for i in 0..slots.max(1) {
            let (tasks, results_tx, registry, blocks, in_flight) =
                (tasks.clone(), results_tx.clone(), registry.clone(), blocks.clone(), in_flight.clone());
            std::thread::Builder::new().name(format!("weir-executor-{i}")).stack_size(TASK_STACK_BYTES).spawn(
                move || loop {
                    let next = tasks.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(task) = next else { return };
                    let env = TaskEnv { registry: &registry, blocks: &blocks, fetch: None, executor: String::new() };
                    let result = run_task_guarded(&env, &task);
                    in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    if results_tx.send(BackendEvent::Task(result)).is_err() {
                        return;
                    }
                },
            )?;
        }
        Ok((LocalExecutors { queue, slots: slots.max(1), blocks, in_flight }, results))
    }
}

impl ExecutorBackend for LocalExecutors {
    fn submit(&self, task: Task) {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The workers only stop when this sender is dropped, so this cannot fail.
        let _ = self.queue.send(task);
    }
    fn slots(&self) -> usize {
        self.slots
    }
    fn blocks(&self) -> &Arc<BlockStore> {
        &self.blocks
    }
    /// The driver's threads as one executor (`""`), with this process's
    /// UDF memory.
    fn executor_status(&self) -> Vec<crate::listener::ExecutorStatus> {
        vec![local_status(&self.in_flight)]
    }
    fn live_status(&self) -> Option<LiveStatus> {
        // Weak: the worker threads hold the counter until the run ends.
        let in_flight = Arc::downgrade(&self.in_flight);
        Some(Arc::new(move || in_flight.upgrade().map(|n| vec![local_status(&n)]).unwrap_or_default()))
    }
}

/// The driver's threads as one executor: tasks submitted and not finished,
/// and this process's UDF memory.
fn local_status(in_flight: &std::sync::atomic::AtomicU64) -> crate::listener::ExecutorStatus {
    let mut s = crate::listener::ExecutorStatus::new(String::new());
    s.tasks_running = in_flight.load(std::sync::atomic::Ordering::Relaxed);
    let (now, peak) = crate::udf::udf_memory();
    (s.udf_memory_bytes, s.udf_memory_peak_bytes) = (Some(now), Some(peak));
    s
}
