//! The server's state and its operations: submit, stop, list, status,
//! logs, and recovery of the jobs that were running when it last died.
//! Every operation takes the tenant the token named; a job of another
//! tenant is "not found" (its existence is not revealed).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use weir::udf::UdfRuntime;

use crate::config::{Config, ConfigWatch, Tenant};
use crate::pool::ServePool;
use crate::registry::{JobRecord, JobState, Registry};
use crate::runner::{self, Handle, JobShared, Outcome, Progress};
use crate::store::ModuleStore;
use crate::submit;
use crate::ServeError;

/// Entries a storage-quota walk visits at most.
const QUOTA_WALK_ENTRIES: usize = 1_000_000;
/// Log lines one request returns at most.
pub const MAX_LOG_LINES: usize = 1000;

/// A submission: the job file's text and its modules' hashes by name.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The job file's name, for people (default `job.toml`).
    #[serde(default)]
    pub name: Option<String>,
    pub job: String,
    #[serde(default)]
    pub modules: BTreeMap<String, String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub state: JobState,
    pub submitted_ms: u64,
    pub slots: u32,
    pub message: Option<String>,
    pub outputs: Vec<PathBuf>,
    pub checkpoint: PathBuf,
    /// UDF memory the job may hold at once, counted against its tenant's
    /// `memory_quota_bytes`.
    pub udf_memory_bytes: u64,
    pub progress: Option<Progress>,
}

pub struct Server {
    config: ConfigWatch,
    state_dir: PathBuf,
    registry: Mutex<Registry>,
    store: ModuleStore,
    runtime: Arc<UdfRuntime>,
    /// The executor threads every job's tasks run on.
    pool: ServePool,
    handles: Mutex<HashMap<String, Handle>>,
    /// Submissions one at a time: the job quota is checked and taken together.
    submitting: Mutex<()>,
    shutting_down: AtomicBool,
    /// Refusals by (tenant, reason), for /metrics.
    refusals: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Jobs being stopped because they must fail (the storage quota), with
    /// the message they end with.
    failing: Mutex<HashMap<String, String>>,
    /// Bytes of object-store checkpoints of jobs that no longer run (they
    /// no longer change): listed once for the storage quota, then reused.
    settled_usage: Mutex<HashMap<PathBuf, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Server {
    /// Opens the state directory (refused if another server holds it) and
    /// the module store. Jobs are not started yet ([`Server::recover`]).
    pub fn open(config: Config) -> Result<Arc<Server>, ServeError> {
        if let Some(n) = config.cache_max_bytes {
            weir::udf::cache::set_cache_max_bytes(n);
        }
        let registry = Registry::open(&config.state_dir)?;
        let store = ModuleStore::open(&config.state_dir)?;
        let runtime = UdfRuntime::shared().map_err(|e| ServeError::Io(format!("the WebAssembly engine: {e}")))?;
        let interval = Duration::from_millis(config.storage_check_interval_ms);
        let pool = ServePool::start(&config)?;
        let server = Arc::new(Server {
            state_dir: config.state_dir.clone(),
            config: ConfigWatch::new(config),
            registry: Mutex::new(registry),
            store,
            runtime,
            pool,
            handles: Mutex::new(HashMap::new()),
            submitting: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            refusals: Mutex::new(BTreeMap::new()),
            failing: Mutex::new(HashMap::new()),
            settled_usage: Mutex::new(HashMap::new()),
        });
        crate::quota::spawn_watch(Arc::downgrade(&server), interval)
            .map_err(|e| ServeError::Io(format!("cannot start the storage-quota thread: {e}")))?;
        Ok(server)
    }

    pub fn config(&self) -> Arc<Config> {
        let c = self.config.get();
        // A reloaded file's weights and caps reach the pool before use.
        self.pool.apply(&c);
        c
    }

    pub fn reload_config(&self) {
        self.config.reload_now();
    }

    /// `tenant`'s block budget: the bytes of blocks its live jobs hold in
    /// the server, against its `block_quota_bytes`.
    pub fn block_budget(&self, tenant: &str) -> Option<Arc<weir::executor::block_store::BlockBudget>> {
        self.pool.block_budget(tenant)
    }

    /// The executor pool now, as `only` may see it (`None`: the operator).
    pub fn pool_status(&self, only: Option<&str>) -> crate::pool::PoolView {
        self.pool.status(only)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn store(&self) -> &ModuleStore {
        &self.store
    }

    /// Starts again every job the registry says was running (each recovers
    /// from its checkpoint); a job that was being stopped is stopped.
    pub fn recover(self: &Arc<Self>) -> Vec<String> {
        let records: Vec<JobRecord> = lock(&self.registry).all().filter(|r| r.state.is_live()).cloned().collect();
        let mut started = Vec::new();
        for rec in records {
            if rec.state == JobState::Stopping {
                self.set_state(
                    &rec.id,
                    JobState::Stopped,
                    Some("stopped (the server restarted while it stopped)".into()),
                );
                continue;
            }
            match self.start(&rec) {
                Ok(()) => started.push(rec.id.clone()),
                Err(e) => self.set_state(&rec.id, JobState::Failed, Some(format!("could not restart: {e}"))),
            }
        }
        started
    }

    fn set_state(&self, id: &str, state: JobState, message: Option<String>) {
        if let Err(e) = lock(&self.registry).set_state(id, state, message) {
            tracing::error!(target: "weir::serve", "job {id}: the registry could not record {state:?}: {e}");
        }
    }

    /// Starts `rec` on its own thread.
    fn start(self: &Arc<Self>, rec: &JobRecord) -> Result<(), ServeError> {
        let me = Arc::downgrade(self);
        let id = rec.id.clone();
        self.config(); // the pool knows the tenant's current weight and cap
        let seat = self.pool.tenant(&rec.tenant).for_job(&rec.id);
        // Directory sources read only inside the tenant's root, checked on
        // every file they open (a symlink put there after submission).
        // (A root that cannot be resolved confines to itself as written,
        // which then holds nothing; a tenant no longer configured, to the
        // job's own directory.)
        let root = match self.config().tenants.get(&rec.tenant) {
            Some(t) => t.root.canonicalize().unwrap_or_else(|_| t.root.clone()),
            None => rec.dir.clone(),
        };
        let place = self.pool.placement();
        let handle = runner::spawn(rec, self.runtime.clone(), seat, Some(root), place, move |o: Outcome| {
            let Some(s) = me.upgrade() else { return };
            // A server shutting down stops its jobs, but they stay
            // `running` in the registry: the next start resumes them.
            if !s.shutting_down.load(Ordering::SeqCst) {
                match lock(&s.failing).remove(&id) {
                    Some(why) => s.set_state(&id, JobState::Failed, Some(why)),
                    None => s.set_state(&id, o.state, o.message),
                }
            }
        })
        .map_err(|e| ServeError::Io(format!("cannot start a thread for the job: {e}")))?;
        lock(&self.handles).insert(rec.id.clone(), handle);
        Ok(())
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The ids of the live jobs (running, stopping) of each tenant.
    pub(crate) fn live_jobs_by_tenant(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in lock(&self.registry).all().filter(|r| r.state.is_live()) {
            out.entry(r.tenant.clone()).or_default().push(r.id.clone());
        }
        out
    }

    /// What `tenant`'s storage holds: its `root` (walked within
    /// `max_entries` and `deadline`) and its jobs' object-store checkpoints
    /// and outputs (listed; a job that no longer runs is listed once). A
    /// listing that fails counts nothing and makes the figure a lower bound.
    pub(crate) fn storage_usage(
        &self,
        tenant: &str,
        root: &Path,
        max_entries: usize,
        deadline: Instant,
    ) -> crate::quota::Usage {
        let mut u = crate::quota::measure(root, max_entries, deadline);
        let remote: Vec<(PathBuf, bool)> = lock(&self.registry)
            .all()
            .filter(|r| r.tenant == tenant)
            .flat_map(|r| {
                let live = r.state.is_live();
                let places = r.checkpoint.iter().chain(&r.output);
                places.map(move |url| (PathBuf::from(url), live)).collect::<Vec<_>>()
            })
            .collect();
        for (loc, live) in remote {
            if let Some(b) = lock(&self.settled_usage).get(&loc).filter(|_| !live) {
                u.bytes = u.bytes.saturating_add(*b);
                continue;
            }
            match weir::checkpoint::remote_usage(&loc) {
                Some(Ok((bytes, complete))) => {
                    u.bytes = u.bytes.saturating_add(bytes);
                    u.complete &= complete;
                    if !live && complete {
                        lock(&self.settled_usage).insert(loc, bytes);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "weir::serve", "tenant {tenant}: storage quota: {e}");
                    u.complete = false;
                }
                None => {}
            }
        }
        u
    }

    /// Stops job `id` after its batch in flight (its checkpoint written)
    /// and records it `failed` with `why` when its driver returns. Once per
    /// job: a job already failing is left alone.
    pub(crate) fn fail_job(&self, id: &str, why: String) {
        let handles = lock(&self.handles);
        let Some(h) = handles.get(id) else { return };
        if h.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return;
        }
        let mut failing = lock(&self.failing);
        if failing.contains_key(id) {
            return;
        }
        h.shared.log(format!("job {id}: {why}"));
        h.stop.request(true);
        failing.insert(id.to_string(), why);
    }

    fn refuse(&self, tenant: &str, reason: &'static str, e: ServeError) -> ServeError {
        *lock(&self.refusals).entry((tenant.to_string(), reason)).or_insert(0) += 1;
        tracing::info!(target: "weir::serve", "tenant {tenant}: submission refused: {e}");
        e
    }

    pub fn refusals(&self) -> BTreeMap<(String, &'static str), u64> {
        lock(&self.refusals).clone()
    }

    fn tenant(&self, name: &str) -> Result<Tenant, ServeError> {
        self.config().tenants.get(name).cloned().ok_or(ServeError::Unauthorized)
    }

    /// Checks, stores and starts a job of `tenant`.
    pub fn submit(self: &Arc<Self>, tenant: &str, sub: Submission) -> Result<JobView, ServeError> {
        let t = self.tenant(tenant)?;
        let _one = lock(&self.submitting);
        let live = lock(&self.registry).all().filter(|r| r.tenant == t.name && r.state.is_live()).count();
        if live >= t.max_jobs as usize {
            return Err(self.refuse(
                tenant,
                "max_jobs",
                ServeError::Quota(format!("tenant {} runs {live} job(s) already (max_jobs = {})", t.name, t.max_jobs)),
            ));
        }
        std::fs::create_dir_all(&t.root).map_err(|e| ServeError::Io(format!("tenant root: {e}")))?;
        let root = t.root.canonicalize().map_err(|e| ServeError::Io(format!("tenant root: {e}")))?;
        let used = self
            .storage_usage(
                &t.name,
                &root,
                QUOTA_WALK_ENTRIES,
                // Bounded by entries, as before; no deadline of its own here.
                Instant::now() + Duration::from_secs(24 * 3600),
            )
            .bytes;
        if used >= t.storage_quota_bytes {
            return Err(self.refuse(
                tenant,
                "storage_quota",
                ServeError::Quota(format!(
                    "tenant {} uses {used} bytes of its storage_quota_bytes = {}",
                    t.name, t.storage_quota_bytes
                )),
            ));
        }
        let id = lock(&self.registry).next_id(&t.name);
        let dir = root.join("jobs").join(&id);
        let submitted_ms = now_ms();
        // The submission time keeps a job's locations its own even if a
        // state directory started afresh hands out its id again.
        let remote = |r: &String| format!("{r}/{}/{id}-{submitted_ms}", t.name);
        let output = t.output_root.as_ref().map(remote);
        let policy = submit::ServerPolicy { allow_inline_kafka_passwords: self.config().allow_inline_kafka_passwords };
        let place = submit::Place { dir: &dir, output: output.as_deref() };
        let prepared = match submit::prepare(&t, policy, &root, place, &sub.job, &sub.modules, &self.store) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(tenant, "policy", e)),
        };
        let slots = t.max_slots.min(self.config().slots()).max(1);
        let udf_memory_bytes = self.memory_reservation(&t, &prepared, slots)?;
        let rec = JobRecord {
            id: id.clone(),
            tenant: t.name.clone(),
            name: sub.name.unwrap_or_else(|| "job.toml".into()).chars().take(200).collect(),
            state: JobState::Running,
            submitted_ms,
            checkpoint: t.checkpoint_root.as_ref().map(remote),
            output,
            dir: dir.clone(),
            outputs: prepared.outputs,
            slots,
            message: None,
            udf_memory_bytes,
        };
        let io = |e: std::io::Error| ServeError::Io(format!("job directory {}: {e}", dir.display()));
        // The job file may hold an inline Kafka password (where the
        // operator allows one): it is the server's alone (0600, as
        // everything `write_atomic` writes). The directory keeps the
        // operator's umask: its outputs are the tenant's to read.
        weir::checkpoint::store::create_dir_all_durable(&dir).map_err(io)?;
        crate::registry::write_atomic(&rec.job_file(), prepared.text.as_bytes()).map_err(io)?;
        // The loader checks everything else (and names the line); a job
        // that does not load is never registered.
        if let Err(e) = weir::job::load(&rec.job_file(), self.runtime.clone()) {
            let _ = std::fs::remove_dir_all(&dir);
            let msg = e.to_string().replace(&rec.job_file().display().to_string(), &rec.name);
            return Err(self.refuse(tenant, "invalid_job", ServeError::Job(msg)));
        }
        lock(&self.registry).put(rec.clone())?;
        self.start(&rec)?;
        tracing::info!(target: "weir::serve", "tenant {}: job {id} submitted", t.name);
        Ok(self.view(&rec))
    }

    /// The UDF memory the job may hold at once, if it fits in what the
    /// tenant's live jobs leave of its `memory_quota_bytes` (else 429,
    /// naming the figures).
    fn memory_reservation(&self, t: &Tenant, p: &submit::Prepared, slots: u32) -> Result<u64, ServeError> {
        let need = p.udf_memory_bytes(slots);
        let held: u64 = lock(&self.registry)
            .all()
            .filter(|r| r.tenant == t.name && r.state.is_live())
            .map(|r| r.udf_memory_bytes)
            .fold(0u64, u64::saturating_add);
        if held.saturating_add(need) <= t.memory_quota_bytes {
            return Ok(need);
        }
        Err(self.refuse(
            &t.name,
            "memory_quota",
            ServeError::Quota(format!(
                "the job needs {need} bytes of UDF memory (memory_bytes = {} x {} module(s) x {slots} executor \
                 thread(s)); tenant {}'s live jobs hold {held} of its memory_quota_bytes = {}",
                p.memory_bytes,
                p.modules.max(1),
                t.name,
                t.memory_quota_bytes
            )),
        ))
    }

    fn view(&self, rec: &JobRecord) -> JobView {
        let progress = lock(&self.handles).get(&rec.id).map(|h| h.shared.progress());
        JobView {
            id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            name: rec.name.clone(),
            state: rec.state,
            submitted_ms: rec.submitted_ms,
            slots: rec.slots,
            message: rec.message.clone(),
            outputs: rec.outputs.clone(),
            checkpoint: rec.checkpoint_dir(),
            udf_memory_bytes: rec.udf_memory_bytes,
            progress,
        }
    }

    fn record(&self, tenant: &str, id: &str) -> Result<JobRecord, ServeError> {
        match lock(&self.registry).get(id) {
            Some(r) if r.tenant == tenant => Ok(r.clone()),
            _ => Err(ServeError::NotFound(id.to_string())),
        }
    }

    pub fn list(&self, tenant: &str) -> Vec<JobView> {
        let recs: Vec<JobRecord> = lock(&self.registry).all().filter(|r| r.tenant == tenant).cloned().collect();
        recs.iter().map(|r| self.view(r)).collect()
    }

    /// Every job's progress, for /metrics (`None`: every tenant).
    pub fn all_views(&self, tenant: Option<&str>) -> Vec<JobView> {
        let recs: Vec<JobRecord> =
            lock(&self.registry).all().filter(|r| tenant.is_none_or(|t| r.tenant == t)).cloned().collect();
        recs.iter().map(|r| self.view(r)).collect()
    }

    pub fn status(&self, tenant: &str, id: &str) -> Result<JobView, ServeError> {
        Ok(self.view(&self.record(tenant, id)?))
    }

    /// Asks a job to stop: gracefully (the batch in flight finishes and is
    /// checkpointed) or now.
    pub fn stop(&self, tenant: &str, id: &str, now: bool) -> Result<JobView, ServeError> {
        let rec = self.record(tenant, id)?;
        if rec.state.is_live() {
            self.set_state(id, JobState::Stopping, None);
            if let Some(h) = lock(&self.handles).get(id) {
                h.stop.request(!now);
            }
        }
        self.status(tenant, id)
    }

    /// The job's log lines from number `since` on, the next number, and
    /// whether more may come.
    pub fn logs(&self, tenant: &str, id: &str, since: u64) -> Result<(Vec<String>, u64, bool), ServeError> {
        let rec = self.record(tenant, id)?;
        let shared: Option<Arc<JobShared>> = lock(&self.handles).get(id).map(|h| h.shared.clone());
        let live = rec.state.is_live();
        match shared {
            Some(s) => {
                let (lines, next) = s.lines_since(since, MAX_LOG_LINES);
                Ok((lines, next, live))
            }
            None => {
                // A job of an earlier life of the server: its log file's tail.
                let text = read_tail(&rec.log_file(), 256 << 10);
                let all: Vec<String> = text.lines().map(String::from).collect();
                let from = (since as usize).min(all.len());
                let lines: Vec<String> = all[from..].iter().take(MAX_LOG_LINES).cloned().collect();
                let next = (from + lines.len()) as u64;
                Ok((lines, next, live))
            }
        }
    }

    /// Stops every job after its batch in flight (they stay `running` in the
    /// registry and resume at the next start) and waits for them, at most
    /// `deadline`.
    pub fn shutdown(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let threads: Vec<std::thread::JoinHandle<()>> = {
            let mut h = lock(&self.handles);
            h.values().for_each(|h| h.stop.request(true));
            h.values_mut().filter_map(|h| h.thread.take()).collect()
        };
        let end = Instant::now() + deadline;
        for t in threads {
            while !t.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The last `max` bytes of a file, as text.
fn read_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    if len > max && f.seek(SeekFrom::Start(len - max)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
