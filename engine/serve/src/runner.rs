//! One job on a thread of its own, run by the `weir` library as `weir run`
//! runs it: its own driver (on this thread) and block store, its tasks on
//! the server's shared executor pool under its tenant's seat
//! ([`crate::pool`]), its checkpoint in its job directory, its
//! [`StopSignal`]. Its status comes from its listener events; its log is a
//! bounded ring in memory plus a size-capped file in the job directory. A
//! job that fails, traps or panics ends only its own thread.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use weir::executor::{PoolTenant, ThreadPlacement};
use weir::listener::{
    BatchReport, CheckpointEvent, ConsoleProgress, ExecutorEvent, ReceiverError, RecoveryEvent, StreamingListener,
    TaskRetry,
};
use weir::scheduler::{CheckpointOptions, Clock, RunOptions, StopSignal};
use weir::udf::UdfRuntime;

use crate::registry::{JobRecord, JobState};

/// Log lines kept in memory per job.
const RING_LINES: usize = 2000;
/// The log file stops growing here (and says so).
const LOG_FILE_MAX_BYTES: u64 = 16 << 20;

/// What the listener saw of a job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub batches_completed: u64,
    pub batches_failed: u64,
    pub records_in: u64,
    /// The newest batch's time (ms) and processing time (ms).
    pub last_batch_time: Option<i64>,
    pub last_processing_ms: Option<u64>,
    /// The checkpoint sequence number the job recovered from, if it did.
    pub recovered_from: Option<u64>,
    pub last_error: Option<String>,
    pub checkpoints_written: u64,
    pub checkpoints_failed: u64,
}

struct LogRing {
    lines: VecDeque<(u64, String)>,
    next: u64,
    file: Option<File>,
    file_bytes: u64,
}

/// A job's status and log, shared by its thread, its listener and the API.
pub struct JobShared {
    pub id: String,
    pub tenant: String,
    progress: Mutex<Progress>,
    log: Mutex<LogRing>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl JobShared {
    pub fn new(rec: &JobRecord) -> Arc<JobShared> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(rec.log_file()).ok();
        let file_bytes = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        Arc::new(JobShared {
            id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            progress: Mutex::new(Progress::default()),
            log: Mutex::new(LogRing { lines: VecDeque::new(), next: 0, file, file_bytes }),
        })
    }

    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    /// Appends a line to the job's log (ring and file).
    pub fn log(&self, line: String) {
        let mut l = lock(&self.log);
        if l.file_bytes < LOG_FILE_MAX_BYTES {
            let mut text = format!("{line}\n");
            if l.file_bytes + text.len() as u64 >= LOG_FILE_MAX_BYTES {
                text = "weir: log file full; further lines only in memory\n".into();
            }
            l.file_bytes += text.len() as u64;
            if let Some(f) = l.file.as_mut() {
                let _ = f.write_all(text.as_bytes());
            }
        }
        let seq = l.next;
        l.next += 1;
        l.lines.push_back((seq, line));
        while l.lines.len() > RING_LINES {
            l.lines.pop_front();
        }
    }

    /// Lines numbered `since` and after (at most `max`), and the number of
    /// the next line to ask for.
    pub fn lines_since(&self, since: u64, max: usize) -> (Vec<String>, u64) {
        let l = lock(&self.log);
        let lines: Vec<(u64, String)> = l.lines.iter().filter(|(s, _)| *s >= since).take(max).cloned().collect();
        let next = lines.last().map_or(l.next.max(since).min(l.next), |(s, _)| s + 1);
        (lines.into_iter().map(|(_, s)| s).collect(), next)
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut lock(&self.progress));
    }
}

/// The job's listener: progress and log lines.
struct JobListener(Arc<JobShared>);

impl StreamingListener for JobListener {
    fn on_batch_completed(&self, b: &BatchReport) {
        self.0.update(|p| {
            p.batches_completed += 1;
            p.records_in += b.records_in;
            p.last_batch_time = Some(b.time);
            p.last_processing_ms = Some(b.processing.as_millis() as u64);
            if !b.errors.is_empty() {
                p.batches_failed += 1;
                p.last_error = Some(b.errors.join("; "));
            }
        });
        self.0.log(ConsoleProgress::format(b));
    }
    fn on_receiver_error(&self, e: &ReceiverError) {
        self.0.log(format!("receiver error (source {}): {}", e.source, e.message));
    }
    fn on_recovery(&self, e: &RecoveryEvent) {
        match e {
            RecoveryEvent::InvalidCheckpoint { reason } => {
                self.0.log(format!("checkpoint not usable, falling back to an older one: {reason}"))
            }
            RecoveryEvent::Recovered { seq, last_completed, pending } => {
                self.0.update(|p| p.recovered_from = Some(*seq));
                self.0.log(format!(
                    "recovered from checkpoint {seq} (last completed batch: {}); re-running {pending} pending batch(es)",
                    last_completed.map(|t| format!("{t} ms")).unwrap_or_else(|| "none".into())
                ))
            }
            other => self.0.log(format!("recovery: {other:?}")),
        }
    }
    fn on_checkpoint_written(&self, _e: &CheckpointEvent) {
        self.0.update(|p| p.checkpoints_written += 1);
    }
    fn on_checkpoint_failed(&self, e: &CheckpointEvent) {
        self.0.update(|p| p.checkpoints_failed += 1);
        self.0.log(format!("{} checkpoint failed: {}", e.kind, e.error.as_deref().unwrap_or("?")));
    }
    fn on_executor_lost(&self, e: &ExecutorEvent) {
        self.0.log(format!("executor {} lost: {}", e.executor, e.reason));
    }
    fn on_task_retry(&self, e: &TaskRetry) {
        self.0.log(format!(
            "batch {} ms: task {} partition {} attempt {} failed: {}",
            e.batch_time, e.rdd, e.partition, e.attempt, e.failure
        ));
    }
}

/// How a job's run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: JobState,
    pub message: Option<String>,
}

/// A job running (or done) in this server.
pub struct Handle {
    pub shared: Arc<JobShared>,
    pub stop: StopSignal,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts `rec`'s job on a thread: loads its (rewritten) job file, runs it
/// with its tasks on `seat` (its tenant's at the shared pool), recovering
/// from its checkpoint if it has one, and calls `on_end` with how it ended.
pub fn spawn(
    rec: &JobRecord,
    runtime: Arc<UdfRuntime>,
    seat: PoolTenant,
    root: Option<PathBuf>,
    place: Option<Arc<dyn ThreadPlacement>>,
    on_end: impl FnOnce(Outcome) + Send + 'static,
) -> std::io::Result<Handle> {
    let shared = JobShared::new(rec);
    let stop = StopSignal::default();
    let (sh, st, rec) = (shared.clone(), stop.clone(), rec.clone());
    let thread = std::thread::Builder::new().name(format!("weir-job-{}", rec.id)).spawn(move || {
        // First: the threads the job starts are born in the same cgroup.
        if let Some(p) = place {
            p.enter(&rec.tenant);
        }
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&rec, runtime, seat, root, sh.clone(), st.clone())
        })) {
            Ok(o) => o,
            Err(_) => Outcome { state: JobState::Failed, message: Some("the job's driver panicked".into()) },
        };
        sh.log(format!(
            "job {}: {}{}",
            rec.id,
            serde_json::to_value(outcome.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            outcome.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ));
        on_end(outcome);
    })?;
    Ok(Handle { shared, stop, thread: Some(thread) })
}

/// Why writing at `place` would leave `root` (canonical), if it would.
fn leads_out_of(root: &std::path::Path, place: &std::path::Path) -> Option<String> {
    match crate::submit::resolves_outside(root, place) {
        Ok(None) => None,
        // The message a confined output gives when it refuses a batch.
        Ok(Some((dir, real))) => {
            Some(weir::sink::SinkError::OutsideRoot { dir, real, root: root.to_path_buf() }.to_string())
        }
        Err(e) => Some(format!("{}: {e}", place.display())),
    }
}

fn run(
    rec: &JobRecord,
    runtime: Arc<UdfRuntime>,
    seat: PoolTenant,
    root: Option<PathBuf>,
    shared: Arc<JobShared>,
    stop: StopSignal,
) -> Outcome {
    let failed = |m: String| Outcome { state: JobState::Failed, message: Some(m) };
    // Every data file the job names (a batches file, an initial state, a
    // dataset, Kafka TLS and password files) is read on this thread, when
    // the job loads and when its clients are built: confined to the
    // tenant's root, checked on each opened file (a symlink swapped in
    // after submission leads nowhere).
    let _confined = root.as_deref().map(weir::files::confine_thread);
    let job = match weir::job::load(&rec.job_file(), runtime) {
        Ok(j) => j,
        Err(e) => return failed(e.to_string()),
    };
    // Where the job writes (its checkpoint, its outputs) must still be in
    // the root as the server made it: a directory swapped for a symlink
    // while the server was down would lead the writes elsewhere.
    if let Some(root) = &root {
        // (An object-store checkpoint or output location is the operator's,
        // not a path.)
        let mut places: Vec<PathBuf> = rec.checkpoint.is_none().then(|| rec.checkpoint_dir()).into_iter().collect();
        if rec.output.is_none() {
            places.extend(rec.outputs.iter().cloned());
        }
        if let Some(escape) = places.iter().find_map(|p| leads_out_of(root, p)) {
            return failed(escape);
        }
    }
    let mut opts = RunOptions::default();
    opts.pool = Some(seat);
    // Outputs on object storage are the operator's location, not a path.
    opts.output_root = root.clone().filter(|_| rec.output.is_none());
    let mut checkpoint = CheckpointOptions::new(rec.checkpoint_dir());
    // A local checkpoint directory swapped for a symlink while the job
    // runs leads no checkpoint or log write elsewhere.
    checkpoint.confine = root.clone().filter(|_| rec.checkpoint.is_none());
    opts.source_root = root;
    opts.clock = job.clock.unwrap_or(Clock::Wall);
    opts.stop = stop.clone();
    opts.listeners.push(Arc::new(JobListener(shared.clone())));
    opts.checkpoint = Some(checkpoint);
    shared.log(format!("job {}: starting on the shared executor pool (tenant {})", rec.id, rec.tenant));
    match job.context.run(opts) {
        Err(e) => failed(e.to_string()),
        Ok(_) if stop.is_requested() => Outcome {
            state: JobState::Stopped,
            message: Some(if stop.is_graceful() { "stopped after the batch in flight" } else { "stopped now" }.into()),
        },
        Ok(r) if r.batches_failed > 0 => failed(format!("{} of {} batch(es) failed", r.batches_failed, r.batches_run)),
        Ok(r) => Outcome { state: JobState::Finished, message: Some(format!("{} batch(es) run", r.batches_run)) },
    }
}
