//! Driver epochs and fencing: one writer per checkpoint location, even when
//! an old driver is paused, cut off or slow rather than dead.
//!
//! Every driver incarnation takes a **driver epoch** when it acquires the
//! location: one more than the epoch of the lease it replaces and than every
//! epoch a metadata checkpoint there names (`checkpoint-<seq>-e<epoch>`), so
//! epochs only grow. Every commit — a metadata or data checkpoint, an
//! output's publication (`save_as_text_files`' rename or `_SUCCESS`) — goes
//! through [`Fence::commit`], which first checks that the location's lease
//! still names this driver's epoch and token. A driver whose lease was taken
//! over is **fenced**: the commit is refused with [`Fenced`] (naming both
//! epochs), nothing it computes afterwards is recorded, and the driver stops.
//!
//! * **Local directory** ([`LocalLease`]): the lease is the JSON in
//!   `<dir>/lock`, and every read-modify-write of it — acquisition, renewal,
//!   and each commit with its check — holds a short flock on
//!   `<dir>/metadata`. So a check and its commit are **atomic** with respect
//!   to a takeover: once a new driver has written its epoch, no commit of
//!   an older one can start. The directory itself stays flocked by the
//!   holder for its life, as a hint that a live driver is there (a holder
//!   whose lease was not renewed for a whole TTL can still be taken over:
//!   it is paused or hung).
//! * **Object store** (`objstore::Lease`): the lease object carries the
//!   epoch and is only ever replaced by a conditional PUT; a commit GETs it
//!   and compares — a **check-then-write window**, as no object store offers a
//!   transaction over two objects: a driver frozen between its check and its
//!   PUT can still write once after a takeover. Recovery then ignores that
//!   write (see `super::stale_metadata`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A commit refused because another driver took the location over.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "fenced: this driver holds epoch {mine} of checkpoint location {location}, but epoch {newer} ({owner}) has \
     taken it over; this driver writes no more checkpoints or outputs and stops"
)]
pub struct Fenced {
    pub location: String,
    pub mine: u64,
    pub newer: u64,
    pub owner: String,
}

/// Why a commit did not happen: fenced, or the fence could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(transparent)]
    Fenced(#[from] Fenced),
    #[error("checking the driver epoch at {location}: {why}")]
    Check { location: String, why: String },
}

/// How a location checks that its lease is still this driver's.
pub(crate) trait Holder: Send + Sync {
    /// Runs `commit` only if the lease still names this driver; a local
    /// directory runs it under the same lock as a takeover.
    fn commit_if_held(&self, commit: &mut dyn FnMut()) -> Result<(), FenceError>;
}

/// The fence of one driver on one location.
pub struct Fence {
    epoch: u64,
    location: String,
    holder: Box<dyn Holder>,
    /// Set once a commit was refused: this driver is done.
    fenced: Mutex<Option<Fenced>>,
}

impl Fence {
    pub(crate) fn new(epoch: u64, location: String, holder: Box<dyn Holder>) -> Fence {
        Fence { epoch, location, holder, fenced: Mutex::new(None) }
    }

    /// This driver's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Set once this driver has been fenced (then for good).
    pub fn fenced(&self) -> Option<Fenced> {
        self.fenced.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` (a commit) if this driver still holds the location, and
    /// returns its result; refuses it, for good, once it does not.
    pub fn commit<T>(&self, f: impl FnOnce() -> T) -> Result<T, FenceError> {
        if let Some(f) = self.fenced() {
            return Err(f.into());
        }
        let mut f = Some(f);
        let mut out = None;
        let checked = self.holder.commit_if_held(&mut || out = f.take().map(|f| f()));
        if let Err(FenceError::Fenced(e)) = &checked {
            let mut slot = self.fenced.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                tracing::error!("{e}");
                *slot = Some(e.clone());
            }
        }
        checked?;
        out.ok_or_else(|| FenceError::Check { location: self.location.clone(), why: "the commit did not run".into() })
    }
}

// ---------------------------------------------------------------------------
// The local directory's lease.

/// What `<dir>/lock` holds (JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LockBody {
    owner: String,
    pid: u32,
    machine: String,
    token: u64,
    epoch: u64,
    /// Wall clock of the last renewal (ms since 1970): the hosts that
    /// share a local checkpoint directory must agree on the time to well
    /// within a TTL.
    renewed_unix_ms: u64,
    ttl_ms: u64,
    released: bool,
}

/// The most `<dir>/lock` may hold.
const MAX_LOCK_BYTES: u64 = 64 << 10;
/// How long a commit, renewal or acquisition waits for the short lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The lease of a local checkpoint directory (see the module doc).
pub struct LocalLease {
    root: PathBuf,
    body: Mutex<LockBody>,
    lost: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Why the lease could not be taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Held by a live driver: its pid (for the message).
    Held(Option<String>),
    Io(std::io::Error),
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused::Io(e)
    }
}

/// Holds an exclusive flock on `<root>/metadata` until dropped, waiting for
/// it at most [`LOCK_WAIT`].
fn short_lock(root: &Path) -> std::io::Result<File> {
    let path = super::metadata_dir(root);
    // Named in the error: the directory in the way or missing is the cause.
    let f = File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let until = Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: its lock was held for over {} s", root.display(), LOCK_WAIT.as_secs()),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// The lock file's lease, if it holds one (a pid alone is the format of
/// drivers before epochs: no lease).
fn read_body(root: &Path) -> std::io::Result<(Option<LockBody>, String)> {
    let path = root.join("lock");
    let bytes = match crate::files::read_limited(&path, MAX_LOCK_BYTES) {
        Ok(b) => b,
        Err(crate::files::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, String::new()))
        }
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    };
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    Ok((serde_json::from_slice(&bytes).ok(), text))
}

/// Writes the lock file atomically (temporary file, fsync, rename).
fn write_body(root: &Path, b: &LockBody) -> std::io::Result<()> {
    let tmp = root.join(".lock.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(b).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, root.join("lock"))?;
    super::store::sync_dir(root)
}

impl LocalLease {
    /// Takes the lease of `root`, whose directory flock this driver got
    /// (`dir_locked`) or not (a live process holds it). Taken when nobody
    /// holds it, the holder released it or died on this machine, or the
    /// holder has not renewed it for a whole TTL (paused, hung or cut off:
    /// it is fenced from now on); refused otherwise.
    pub(crate) fn acquire(root: &Path, ttl: Duration, dir_locked: bool) -> Result<Arc<LocalLease>, Refused> {
        let ttl = ttl.max(Duration::from_millis(300));
        let _short = short_lock(root)?;
        let (held, text) = read_body(root)?;
        let takeable = match &held {
            None => dir_locked,
            Some(h) => h.released || super::holder_is_dead_here(&h.machine, h.pid) || stale(h),
        };
        if !takeable {
            let pid = held.as_ref().map(|h| h.pid.to_string()).or(Some(text).filter(|t| !t.is_empty()));
            return Err(Refused::Held(pid));
        }
        let floor = super::newest_epoch(&super::store::LocalDir::new(root));
        let epoch = held.as_ref().map_or(0, |h| h.epoch).max(floor) + 1;
        if let Some(h) = held.as_ref().filter(|h| !h.released && !super::holder_is_dead_here(&h.machine, h.pid)) {
            tracing::warn!(
                "taking over checkpoint directory {} from {} (epoch {}), which has not renewed its lease for {} ms; \
                 this driver is epoch {epoch}",
                root.display(),
                h.owner,
                h.epoch,
                unix_ms().saturating_sub(h.renewed_unix_ms)
            );
        }
        let body = LockBody {
            owner: format!("pid {} on {}", std::process::id(), super::hostname()),
            pid: std::process::id(),
            machine: super::machine_id(),
            token: super::random_token(),
            epoch,
            renewed_unix_ms: unix_ms(),
            ttl_ms: ttl.as_millis() as u64,
            released: false,
        };
        write_body(root, &body)?;
        let lease = Arc::new(LocalLease {
            root: root.to_path_buf(),
            body: Mutex::new(body),
            lost: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let l = lease.clone();
        std::thread::Builder::new().name("weir-lease".into()).spawn(move || l.renew_loop(ttl))?;
        Ok(lease)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.body.lock().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// Under the short lock: `Ok` when the lock file still names this
    /// driver (a missing one is written again: only a takeover replaces
    /// it, and a takeover always writes one), else who took over.
    fn check_locked(&self) -> Result<(), FenceError> {
        let check =
            |why: std::io::Error| FenceError::Check { location: self.root.display().to_string(), why: why.to_string() };
        let mine = self.body.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match read_body(&self.root).map_err(check)?.0 {
            Some(b) if b.token == mine.token => Ok(()),
            Some(b) => {
                self.lost.store(true, Ordering::Release);
                Err(Fenced {
                    location: self.root.display().to_string(),
                    mine: mine.epoch,
                    newer: b.epoch,
                    owner: b.owner,
                }
                .into())
            }
            None => write_body(&self.root, &mine).map_err(check),
        }
    }

    /// Every TTL/3 until stopped or fenced: renews the lease under the short lock.
    fn renew_loop(&self, ttl: Duration) {
        loop {
            let stopped = self.stop.lock().unwrap_or_else(|p| p.into_inner());
            let (stopped, _) = self.wake.wait_timeout(stopped, ttl / 3).unwrap_or_else(|p| p.into_inner());
            if *stopped || self.lost.load(Ordering::Acquire) {
                return;
            }
            drop(stopped);
            let renewed = short_lock(&self.root).map_err(|e| e.to_string()).and_then(|_l| {
                self.check_locked().map_err(|e| e.to_string())?;
                let mut b = self.body.lock().unwrap_or_else(|p| p.into_inner());
                b.renewed_unix_ms = unix_ms();
                write_body(&self.root, &b).map_err(|e| e.to_string())
            });
            if let Err(e) = renewed {
                tracing::warn!("cannot renew the lease of checkpoint directory {}: {e}", self.root.display());
            }
        }
    }

    /// Stops the renewals and marks the lease released (keeping its epoch),
    /// if it is still this driver's.
    pub(crate) fn release(&self) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
        let Ok(_l) = short_lock(&self.root) else { return };
        if self.check_locked().is_ok() {
            let mut b = self.body.lock().unwrap_or_else(|p| p.into_inner()).clone();
            b.released = true;
            if let Err(e) = write_body(&self.root, &b) {
                tracing::warn!("cannot release the lease of checkpoint directory {}: {e}", self.root.display());
            }
        }
    }
}

/// Not renewed for a whole TTL (by the wall clock).
fn stale(b: &LockBody) -> bool {
    unix_ms().saturating_sub(b.renewed_unix_ms) > b.ttl_ms
}

impl Holder for Arc<LocalLease> {
    fn commit_if_held(&self, commit: &mut dyn FnMut()) -> Result<(), FenceError> {
        let _l = short_lock(&self.root)
            .map_err(|e| FenceError::Check { location: self.root.display().to_string(), why: e.to_string() })?;
        self.check_locked()?;
        commit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(super::super::metadata_dir(d.path())).unwrap();
        d
    }

    /// A live holder's lease is refused; once taken over (here: released),
    /// the next driver has a higher epoch and the old one's commits are
    /// refused, naming both epochs, and never run.
    #[test]
    fn a_taken_over_driver_is_fenced_and_its_commit_never_runs() {
        let d = dir();
        let ttl = Duration::from_secs(30);
        let a = LocalLease::acquire(d.path(), ttl, true).unwrap();
        assert_eq!(a.epoch(), 1);
        let fence_a = Fence::new(1, "here".into(), Box::new(a.clone()));
        assert_eq!(fence_a.commit(|| 7).unwrap(), 7);
        assert!(matches!(LocalLease::acquire(d.path(), ttl, false), Err(Refused::Held(Some(_)))));
        a.release();
        let b = LocalLease::acquire(d.path(), ttl, false).unwrap();
        assert_eq!(b.epoch(), 2);
        let mut ran = false;
        let e = fence_a.commit(|| ran = true).unwrap_err();
        assert!(!ran, "a fenced commit ran");
        let FenceError::Fenced(f) = e else { panic!("{e}") };
        assert_eq!((f.mine, f.newer), (1, 2));
        assert!(fence_a.fenced().is_some());
        let fence_b = Fence::new(2, "here".into(), Box::new(b.clone()));
        assert!(fence_b.commit(|| ()).is_ok());
    }

    /// A holder that stops renewing is taken over after its TTL, not before.
    #[test]
    fn an_unrenewed_lease_is_taken_over_after_its_ttl() {
        let d = dir();
        let stale = LockBody {
            owner: "pid 1 on elsewhere".into(),
            pid: 1,
            machine: "another machine".into(),
            token: 5,
            epoch: 41,
            renewed_unix_ms: unix_ms(),
            ttl_ms: 400,
            released: false,
        };
        write_body(d.path(), &stale).unwrap();
        assert!(matches!(LocalLease::acquire(d.path(), Duration::from_secs(30), false), Err(Refused::Held(_))));
        let old = LockBody { renewed_unix_ms: unix_ms() - 1000, ..stale };
        write_body(d.path(), &old).unwrap();
        let l = LocalLease::acquire(d.path(), Duration::from_secs(30), false).unwrap();
        assert_eq!(l.epoch(), 42);
        l.release();
    }
}
