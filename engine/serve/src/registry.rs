//! The durable registry of jobs: one JSON file per job under
//! `state_dir/registry/`, each written to a temporary name, fsynced,
//! renamed and the directory fsynced (the checkpoints' discipline), so a
//! SIGKILL leaves either the old record or the new one. The state
//! directory is locked (`serve.lock`) for the server's life: a second
//! server on it is refused.
//!
//! What the server keeps is private to its user: the state directory (when
//! the server creates it), the registry and the module store are 0700, and
//! every file written through [`write_atomic`] (records, modules, each
//! job's `job.toml`) is 0600, since a job file may hold a tenant's Kafka
//! password (where the operator allows inline ones). Job files an older
//! server wrote readable by others are made 0600 when the registry is
//! opened. Jobs' directories (outputs, checkpoints, logs, in the tenant's
//! root) keep the umask: their outputs are the tenant's to read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ServeError;

/// Largest registry record read, in bytes.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Where a job is in its life. `Running` survives a restart (the job is
/// recovered from its checkpoint); the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    /// Asked to stop; becomes `Stopped` when its driver returns.
    Stopping,
    Stopped,
    /// Its sources ended and every batch ran.
    Finished,
    Failed,
}

impl JobState {
    pub fn is_live(self) -> bool {
        matches!(self, JobState::Running | JobState::Stopping)
    }
}

/// One job as the registry keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    /// The submitted file's name (for people).
    pub name: String,
    pub state: JobState,
    /// Unix time of the submission, ms.
    pub submitted_ms: u64,
    /// The job's directory: its rewritten job file, checkpoint, outputs, log.
    pub dir: PathBuf,
    /// `save_as_text_files` prefixes as rewritten (absolute).
    pub outputs: Vec<PathBuf>,
    /// Executor threads (`local[N]`).
    pub slots: u32,
    /// Why it failed, or how it stopped.
    #[serde(default)]
    pub message: Option<String>,
    /// UDF memory the job may hold at once (`memory_bytes` x modules x
    /// slots), counted against its tenant's `memory_quota_bytes`. Records of
    /// older servers have none.
    #[serde(default)]
    pub udf_memory_bytes: u64,
    /// The object-store URL of the job's checkpoint, fixed at submission
    /// (the tenant's `checkpoint_root` then); `None`: `checkpoint` in its
    /// directory. Records of older servers have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The object-store URL its `save_as_text_files` outputs go under,
    /// fixed at submission (the tenant's `output_root` then); `None`: `out/`
    /// in its directory. Records of older servers have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl JobRecord {
    pub fn job_file(&self) -> PathBuf {
        self.dir.join("job.toml")
    }
    /// Where the job's checkpoint is: its object-store URL, or
    /// `checkpoint` in its directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        match &self.checkpoint {
            Some(url) => PathBuf::from(url),
            None => self.dir.join("checkpoint"),
        }
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("job.log")
    }
}

/// The registry: records in memory, each change written through.
pub struct Registry {
    dir: PathBuf,
    jobs: BTreeMap<String, JobRecord>,
    next: u64,
    /// Held (locked) for the registry's life.
    _lock: File,
}

/// Creates `dir` and its missing parents with mode 0700 (an existing
/// directory is left as it is).
/// Each directory created is made durable in its parent (records and
/// modules are then committed into it).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    weir::checkpoint::store::create_dir_all_durable_mode(dir, 0o700)
}

/// Takes group and other permissions off `path` if it has any (the
/// registry's directory, or a job file, as an older server left them).
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode();
    if meta.file_type().is_symlink() || mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
}

/// Writes `bytes` to `path` atomically and durably, readable and writable
/// by the server's user only (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::options().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // A temporary file a crash left keeps its mode when reopened: set
        // it before anything is written.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

impl Registry {
    /// Opens (creating) `state_dir`, takes its lock and reads every record.
    /// A record that cannot be read is skipped with a warning (and kept on
    /// disk for the operator), never fatal.
    pub fn open(state_dir: &Path) -> Result<Registry, ServeError> {
        let io = |what: &str, e: std::io::Error| ServeError::Io(format!("{what} {}: {e}", state_dir.display()));
        create_private_dir(state_dir).map_err(|e| io("cannot create", e))?;
        let lock_path = state_dir.join("serve.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("cannot open the lock of", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ServeError::Locked(state_dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("cannot lock", e)),
        }
        let dir = state_dir.join("registry");
        create_private_dir(&dir).map_err(|e| io("cannot create the registry in", e))?;
        make_private(&dir).map_err(|e| io("cannot make private the registry in", e))?;
        let mut jobs = BTreeMap::new();
        let mut next = 1;
        let entries = std::fs::read_dir(&dir).map_err(|e| io("cannot read the registry in", e))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let rec = weir::files::read_limited(&p, MAX_RECORD_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).map_err(|e| e.to_string()));
            match rec {
                Ok(r) if p.file_stem().is_some_and(|s| s.to_string_lossy() == r.id) => {
                    if let Some(n) = r.id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()) {
                        next = next.max(n + 1);
                    }
                    // Written by an older server, the job file may be
                    // readable by others (and hold an inline password).
                    let job_file = r.job_file();
                    if let Err(e) = make_private(&job_file) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(target: "weir::serve", "{}: cannot make it private: {e}", job_file.display());
                        }
                    }
                    jobs.insert(r.id.clone(), r);
                }
                Ok(_) => tracing::warn!(target: "weir::serve", "{}: its id is not its name; skipped", p.display()),
                Err(e) => {
                    tracing::warn!(target: "weir::serve", "{}: unreadable registry record, skipped: {e}", p.display())
                }
            }
        }
        Ok(Registry { dir, jobs, next, _lock: lock })
    }

    /// A new job id for `tenant` (`<tenant>-<n>`, n unique in this state dir).
    pub fn next_id(&mut self, tenant: &str) -> String {
        let id = format!("{tenant}-{}", self.next);
        self.next += 1;
        id
    }

    pub fn get(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// Writes `rec` through to disk, then keeps it.
    pub fn put(&mut self, rec: JobRecord) -> Result<(), ServeError> {
        let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| ServeError::Io(e.to_string()))?;
        let path = self.dir.join(format!("{}.json", rec.id));
        write_atomic(&path, &bytes).map_err(|e| ServeError::Io(format!("writing {}: {e}", path.display())))?;
        self.jobs.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Sets a job's state (and message) durably.
    pub fn set_state(&mut self, id: &str, state: JobState, message: Option<String>) -> Result<(), ServeError> {
        let Some(mut rec) = self.jobs.get(id).cloned() else { return Ok(()) };
        rec.state = state;
        if message.is_some() {
            rec.message = message;
        }
        self.put(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            tenant: "acme".into(),
            name: "job.toml".into(),
            state,
            submitted_ms: 1,
            dir: PathBuf::from("/x"),
            outputs: vec![],
            slots: 1,
            message: None,
            udf_memory_bytes: 0,
            checkpoint: None,
            output: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_a_second_opener_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = Registry::open(tmp.path()).unwrap();
        let id = r.next_id("acme");
        assert_eq!(id, "acme-1");
        r.put(rec(&id, JobState::Running)).unwrap();
        r.put(rec("acme-7", JobState::Stopped)).unwrap();
        let url = "s3://b/weir/acme/acme-8-1700000000000";
        r.put(JobRecord { checkpoint: Some(url.into()), ..rec("acme-8", JobState::Running) }).unwrap();
        assert!(matches!(Registry::open(tmp.path()), Err(ServeError::Locked(_))));
        // A torn or hostile record is skipped, not fatal.
        std::fs::write(tmp.path().join("registry/acme-9.json"), b"{not json").unwrap();
        drop(r);
        let mut r = Registry::open(tmp.path()).unwrap();
        assert_eq!(r.get("acme-1").unwrap().state, JobState::Running);
        assert_eq!(r.get("acme-7").unwrap().state, JobState::Stopped);
        assert!(r.get("acme-9").is_none());
        // A checkpoint on object storage comes back as its URL; one in the
        // job's directory (every record of an older server) as that path.
        assert_eq!(r.get("acme-8").unwrap().checkpoint_dir(), PathBuf::from(url));
        assert_eq!(r.get("acme-1").unwrap().checkpoint_dir(), PathBuf::from("/x/checkpoint"));
        assert_eq!(r.next_id("bob"), "bob-9");
    }

    #[test]
    fn what_the_server_writes_is_private_and_older_job_files_are_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        // A job directory and file as an older server left them: 0755 / 0644,
        // and its registry directory 0755.
        let job_dir = tmp.path().join("root/jobs/acme-1");
        std::fs::create_dir_all(&job_dir).unwrap();
        std::fs::set_permissions(&job_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(job_dir.join("job.toml"), "password = \"p\"\n").unwrap();
        std::fs::set_permissions(job_dir.join("job.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir_all(state.join("registry")).unwrap();
        std::fs::set_permissions(state.join("registry"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        {
            let mut r = Registry::open(&state).unwrap();
            // The operator's state directory is left as it is; the registry is the server's.
            assert_eq!(mode(&state), 0o755);
            assert_eq!(mode(&state.join("registry")), 0o700);
            r.put(JobRecord { dir: job_dir.clone(), ..rec("acme-1", JobState::Running) }).unwrap();
            assert_eq!(mode(&state.join("registry/acme-1.json")), 0o600);
            let f = tmp.path().join("any");
            write_atomic(&f, b"x").unwrap();
            assert_eq!(mode(&f), 0o600);
            // Over a temporary file a crash left readable by others.
            std::fs::write(tmp.path().join(".any.tmp"), b"old").unwrap();
            std::fs::set_permissions(tmp.path().join(".any.tmp"), std::fs::Permissions::from_mode(0o644)).unwrap();
            write_atomic(&f, b"y").unwrap();
            assert_eq!((mode(&f), std::fs::read(&f).unwrap()), (0o600, b"y".to_vec()));
            create_private_dir(&tmp.path().join("a/b")).unwrap();
            assert_eq!((mode(&tmp.path().join("a")), mode(&tmp.path().join("a/b"))), (0o700, 0o700));
        }
        // Opened again, the registry makes the old job's file private (its
        // directory, the tenant's outputs, keeps its mode).
        let _r = Registry::open(&state).unwrap();
        assert_eq!(mode(&job_dir.join("job.toml")), 0o600);
        assert_eq!(mode(&job_dir), 0o755);
        // A state directory the server creates is private.
        let fresh = tmp.path().join("fresh/state");
        let _f = Registry::open(&fresh).unwrap();
        assert_eq!((mode(&tmp.path().join("fresh")), mode(&fresh)), (0o700, 0o700));
    }
}
