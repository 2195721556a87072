//! How to run a job: where its executors run ([`Master`]), which clock
//! drives its batches ([`Clock`]), its checkpoint directory, its cluster
//! settings and its listeners ([`RunOptions`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::checkpoint::CheckpointOptions;
use crate::executor::PoolTenant;
use crate::listener::StreamingListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Wall,
    Logical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Master {
    /// N executor threads in this process.
    Local(usize),
    /// `executors` executor processes on this machine, `cores` tasks each.
    LocalCluster { executors: u32, cores: u32 },
    /// Wait for `executors` executors to join from anywhere (`--listen`).
    Cluster { executors: u32 },
}

impl std::str::FromStr for Master {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("unknown master {s:?}: expected local, local[N], local[*], local-cluster[N], local-cluster[N,CORES] or cluster[N]")
        };
        if s == "local" {
            return Ok(Master::Local(1));
        }
        let args = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(']'));
        let num = |x: &str| x.trim().parse::<u32>().ok().filter(|n| *n > 0);
        if let Some(inner) = args("local-cluster[") {
            let mut it = inner.split(',');
            let executors = it.next().and_then(num).ok_or_else(bad)?;
            let cores = match it.next() {
                Some(c) => num(c).ok_or_else(bad)?,
                None => 1,
            };
            return Ok(Master::LocalCluster { executors, cores });
        }
        if let Some(inner) = args("cluster[") {
            return Ok(Master::Cluster { executors: num(inner).ok_or_else(bad)? });
        }
        let inner = args("local[").ok_or_else(bad)?;
        if inner == "*" {
            return Ok(Master::Local(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)));
        }
        match inner.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Master::Local(n)),
            _ => Err(bad()),
        }
    }
}

/// How to run a job. Construct with `RunOptions::default()` and set fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct RunOptions {
    pub master: Master,
    /// Run the job's tasks on this tenant's seat at a shared executor pool
    /// (`weir serve`) instead of starting the executors `master` names.
    pub pool: Option<PoolTenant>,
    pub clock: Clock,
    /// Stop after this many batches.
    pub max_batches: Option<u64>,
    /// Print each output's lineage before its first batch.
    pub explain: bool,
    /// Observers of the run (progress line, metrics, status page, ...).
    pub listeners: Vec<Arc<dyn StreamingListener>>,
    /// Batches the [`RunReport`](super::RunReport) keeps (the newest N).
    pub report_history: usize,
    /// Asks the run to stop (Ctrl-C, [`crate::dstream::StreamingHandle::stop`]).
    pub stop: StopSignal,
    /// Called after each batch with the scheduler and the batch's output RDDs
    /// (tests use it to drop blocks and recompute them).
    #[cfg(feature = "test-hooks")]
    pub after_batch: Option<AfterBatch>,
    /// Checkpoint and recover through this directory.
    pub checkpoint: Option<CheckpointOptions>,
    /// For executor processes: where to listen, the secret, the heartbeat timeout.
    pub cluster: ClusterOptions,
    /// Directory sources read only files whose real path (symlinks
    /// followed, checked on each opened file) is inside this directory; a
    /// file that leads out is skipped with a warning. Overrides a source's
    /// own `root`. `weir serve` sets it to the tenant's root.
    pub source_root: Option<PathBuf>,
    /// `save_as_text_files` outputs write only where the real path of
    /// their directory (symlinks followed, checked at every batch) is
    /// inside this directory; a batch whose directory leads out fails
    /// without writing. `weir serve` sets it to the tenant's root.
    pub output_root: Option<PathBuf>,
    /// Benchmarks only: run stateful streams without a checkpoint directory
    /// (state lives in memory; a crash loses it).
    pub allow_state_without_checkpoint: bool,
    /// How often a failed output write (a sink's `write`, e.g. on a full
    /// disk) is tried again within the batch before the batch fails and
    /// stays pending (default 2).
    pub output_retries: u32,
    /// The wait before the first retry of an output write, doubling after
    /// each (default 100 ms).
    pub output_retry_backoff: Duration,
    /// The most batches that may stay pending after their outputs failed
    /// (default [`DEFAULT_MAX_PENDING_BATCHES`]): one more stops the run with
    /// an error. Each keeps its input, and with a checkpoint the lineage back
    /// to the oldest, so an output failing for ever would grow memory (and
    /// every metadata checkpoint) without bound.
    pub max_pending_batches: usize,
}

/// The default of [`RunOptions::max_pending_batches`].
pub const DEFAULT_MAX_PENDING_BATCHES: usize = 100;

/// A request to stop a run, shared between the run and whoever stops it.
///
/// Either way the batch in flight finishes (its outputs are whole). A
/// graceful stop also runs the batches already owed — a re-run backlog after
/// recovery, and one last batch that takes what receivers have accepted but
/// not yet given to a batch — so nothing accepted waits for a restart.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    requested: Arc<AtomicBool>,
    graceful: Arc<AtomicBool>,
}

impl StopSignal {
    /// Asks the run to stop (see the type's documentation).
    pub fn request(&self, graceful: bool) {
        self.graceful.store(graceful, Ordering::Relaxed);
        self.requested.store(true, Ordering::Release);
    }
    /// Asks again; returns whether it had been asked before.
    pub fn request_again(&self, graceful: bool) -> bool {
        self.graceful.store(graceful, Ordering::Relaxed);
        self.requested.swap(true, Ordering::AcqRel)
    }
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
    pub fn is_graceful(&self) -> bool {
        self.graceful.load(Ordering::Relaxed)
    }
}

/// Options of `local-cluster` and `cluster` masters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterOptions {
    pub listen: Option<String>,
    pub secret: Option<Vec<u8>>,
    /// An executor silent for this long is lost (at least 500 ms).
    pub heartbeat_timeout: Duration,
    /// With no executor connected for this long, the batch in flight fails
    /// with an error instead of waiting (default 60 s).
    pub no_executor_timeout: Duration,
    /// The program `local-cluster[N]` starts as executors (see
    /// [`crate::cluster::find_executor_binary`]).
    pub executor_binary: Option<PathBuf>,
    /// The largest frame the driver (and its local executors) take from an
    /// authenticated peer: from 1 MiB to 1 GiB, the default
    /// ([`crate::cluster::protocol::MAX_FRAME`]).
    pub max_frame_bytes: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            listen: None,
            secret: None,
            heartbeat_timeout: Duration::from_secs(3),
            no_executor_timeout: Duration::from_secs(60),
            executor_binary: None,
            max_frame_bytes: crate::cluster::protocol::MAX_FRAME,
        }
    }
}

/// A test hook run after each batch (cargo feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub type AfterBatch =
    Arc<std::sync::Mutex<dyn FnMut(&mut super::dag::DagScheduler, i64, &[Option<crate::rdd::RddId>]) + Send>>;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            master: Master::Local(2),
            pool: None,
            clock: Clock::Logical,
            max_batches: None,
            explain: false,
            listeners: Vec::new(),
            report_history: 1000,
            stop: StopSignal::default(),
            #[cfg(feature = "test-hooks")]
            after_batch: None,
            checkpoint: None,
            cluster: ClusterOptions::default(),
            source_root: None,
            output_root: None,
            allow_state_without_checkpoint: false,
            output_retries: 2,
            output_retry_backoff: Duration::from_millis(100),
            max_pending_batches: DEFAULT_MAX_PENDING_BATCHES,
        }
    }
}
