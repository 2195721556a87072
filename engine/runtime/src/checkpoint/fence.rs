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
//! * **Local directory** ([`LocalLease`]): no lock is held across anything.
//!   Each driver epoch is a file `<dir>/epochs/<epoch>` (zero-padded) that
//!   its driver creates with `O_EXCL` (of two drivers racing for an epoch,
//!   one creates it; the other is refused) and then alone rewrites (its
//!   renewals, tmp+rename); a commit first checks that no newer epoch file
//!   exists. That is a **check-then-write window** of one commit, as on an
//!   object store: a driver paused between its check and its write can still
//!   write once after a takeover, and recovery ignores what it wrote (see
//!   `super::stale_metadata`). A taker watches the holder's file on its own
//!   monotonic clock and takes over once it stayed unchanged for a whole
//!   TTL, so hosts sharing the directory need not agree on the time. The
//!   directory itself stays flocked by the holder for its life, as a hint
//!   that a live driver is there when no lease file says so.
//! * **Object store** (`objstore::Lease`): the lease object carries the
//!   epoch and is only ever replaced by a conditional PUT; a commit whose
//!   driver renewed the lease within half its TTL needs no read (a taker
//!   waits a whole TTL of no renewal), any other GETs it and compares — a
//!   **check-then-write window**, as no object store offers a
//!   transaction over two objects: a driver frozen between its check and its
//!   PUT can still write once after a takeover. Recovery then ignores that
//!   write (see `super::stale_metadata`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
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
#[non_exhaustive]
pub enum FenceError {
    #[error(transparent)]
    Fenced(#[from] Fenced),
    #[error("checking the driver epoch at {location}: {why}")]
    Check { location: String, why: String },
}

/// How a location checks that its lease is still this driver's.
pub(crate) trait Holder: Send + Sync {
    /// Runs `commit` only if the lease still names this driver (checked
    /// just before it: a check-then-write window of one commit).
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

/// What an epoch file `<dir>/epochs/<epoch>` holds (JSON); also the legacy
/// `<dir>/lock` of the Weir versions before epoch files.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct LockBody {
    /// For messages: `pid N on HOST`.
    owner: String,
    pid: u32,
    /// This kernel boot and pid namespace (`super::machine_id`).
    machine: String,
    token: u64,
    epoch: u64,
    /// Bumped by every renewal, so that the file changes: a taker watches it.
    #[serde(default)]
    renewals: u64,
    /// The holder's wall clock at its last renewal (ms since 1970): for
    /// people, and for Weir versions before epoch files, which judged
    /// staleness by it. This version never does: clocks need not agree.
    renewed_unix_ms: u64,
    ttl_ms: u64,
    released: bool,
}

/// The most a lease file (an epoch file, `<dir>/lock`) may hold.
const MAX_LOCK_BYTES: u64 = 64 << 10;
/// The most entries `<dir>/epochs` may hold: a driver keeps [`KEEP_EPOCHS`].
const MAX_EPOCH_ENTRIES: usize = 1024;
/// Epoch files kept (the newest): older ones are garbage-collected.
const KEEP_EPOCHS: usize = 4;
/// The shortest TTL a lease has.
const MIN_TTL: Duration = Duration::from_millis(300);
/// The longest TTL a holder may claim (a taker waits at most that long).
const MAX_HOLDER_TTL: Duration = Duration::from_secs(600);
/// The TTL written into the legacy `<dir>/lock`: a Weir before epoch files
/// judges it by its wall clock, and must never see this driver as silent.
const LEGACY_TTL_MS: u64 = u64::MAX;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// An I/O error naming `path`.
fn at(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn epochs_dir(root: &Path) -> PathBuf {
    root.join("epochs")
}

fn epoch_path(root: &Path, epoch: u64) -> PathBuf {
    epochs_dir(root).join(format!("{epoch:020}"))
}

/// The epoch a name in `<dir>/epochs` stands for: `N` (an epoch file) or
/// `.N.tmp` (a renewal being written).
fn epoch_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).unwrap_or(name);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The epoch files of `root`, ascending; refused when `<dir>/epochs` holds
/// more than [`MAX_EPOCH_ENTRIES`] entries (nothing Weir leaves there).
fn list_epochs(root: &Path) -> std::io::Result<Vec<u64>> {
    let dir = epochs_dir(root);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at(&dir)(e)),
    };
    let mut v = Vec::new();
    for (i, entry) in rd.enumerate() {
        if i >= MAX_EPOCH_ENTRIES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: more than {MAX_EPOCH_ENTRIES} entries, where a driver keeps {KEEP_EPOCHS} epoch files; \
                     not reading further (remove the old ones)",
                    dir.display()
                ),
            ));
        }
        let name = entry.map_err(at(&dir))?.file_name();
        if let Some(e) = name.to_str().filter(|n| !n.starts_with('.')).and_then(epoch_of_name) {
            v.push(e);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// A lease file's bytes (`None`: there is none), at most [`MAX_LOCK_BYTES`].
fn read_lease_file(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match crate::files::read_limited(path, MAX_LOCK_BYTES) {
        Ok(b) => Ok(Some(b)),
        Err(crate::files::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(crate::files::ReadError::Io(e)) => Err(at(path)(e)),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
    }
}

fn parse(bytes: &[u8]) -> Option<LockBody> {
    serde_json::from_slice(bytes).ok()
}

/// The lease files of a directory as read at one moment: what a taker
/// watches (any change is a live driver's doing).
#[derive(Debug, Clone, PartialEq)]
struct View {
    /// The epoch files, ascending.
    epochs: Vec<u64>,
    /// The newest one's bytes.
    newest: Option<Vec<u8>>,
    /// The legacy `<dir>/lock`'s bytes.
    legacy: Option<Vec<u8>>,
}

/// Who holds a directory, by its lease files.
enum Current {
    /// Nobody by a lease: no driver took it, or only drivers before epochs,
    /// whose `<dir>/lock` holds their pid alone (`text`).
    Nobody { text: String },
    /// The holder of `epoch`; `body` is `None` when its file is unreadable
    /// (being written, or damaged).
    Lease { epoch: u64, body: Option<LockBody> },
}

impl View {
    fn read(root: &Path) -> std::io::Result<View> {
        let epochs = list_epochs(root)?;
        let newest = match epochs.last() {
            Some(&e) => read_lease_file(&epoch_path(root, e))?,
            None => None,
        };
        Ok(View { epochs, newest, legacy: read_lease_file(&root.join("lock"))? })
    }

    /// The highest epoch a lease file names.
    fn top(&self) -> u64 {
        let legacy = self.legacy.as_deref().and_then(parse).map_or(0, |b| b.epoch);
        self.epochs.last().copied().unwrap_or(0).max(legacy)
    }

    /// The newest epoch file's holder, or the legacy lock's when it names
    /// a higher epoch (a Weir before epoch files took the directory over).
    fn current(&self) -> Current {
        let legacy = self.legacy.as_deref().and_then(parse);
        match (self.epochs.last().copied(), legacy) {
            (Some(top), Some(l)) if l.epoch > top => Current::Lease { epoch: l.epoch, body: Some(l) },
            (None, Some(l)) => Current::Lease { epoch: l.epoch, body: Some(l) },
            (Some(top), _) => Current::Lease { epoch: top, body: self.newest.as_deref().and_then(parse) },
            (None, None) => Current::Nobody {
                text: self.legacy.as_deref().map(|b| String::from_utf8_lossy(b).trim().to_string()).unwrap_or_default(),
            },
        }
    }
}

/// Why the lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Held by a live driver: who (`pid N on HOST, driver epoch E; why`),
    /// when known.
    #[error("held by another driver{}", holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Held { holder: Option<String> },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Refused: `body` (of `epoch`) is a live driver's, for the reason `why`.
fn held(epoch: u64, body: Option<&LockBody>, why: &str) -> Refused {
    let who = match body {
        Some(b) => format!("{}, driver epoch {epoch}", b.owner),
        None => format!("driver epoch {epoch}, its lease file not readable yet"),
    };
    Refused::Held { holder: Some(format!("{who}; {why}")) }
}

/// A silent holder being taken over: who, and how long it was watched.
struct Takeover {
    owner: String,
    epoch: u64,
    silent: Duration,
}

/// Waits until `root` may be taken, at most the holder's TTL (it is
/// watched: a change of its lease files means a live driver). Returns the
/// highest epoch a lease file names, and whom it takes over from.
fn await_takeable(root: &Path, ttl: Duration, dir_locked: bool) -> Result<(u64, Option<Takeover>), Refused> {
    let mut watched: Option<(View, Instant)> = None;
    let deadline = Instant::now() + MAX_HOLDER_TTL + Duration::from_secs(10);
    loop {
        let view = View::read(root)?;
        let (epoch, body) = match view.current() {
            // Nobody by a lease: the directory flock tells whether a driver runs.
            Current::Nobody { .. } if dir_locked => return Ok((view.top(), None)),
            Current::Nobody { text } => {
                return Err(Refused::Held { holder: Some(text).filter(|t| !t.is_empty()).map(|p| format!("pid {p}")) })
            }
            Current::Lease { epoch, body } => (epoch, body),
        };
        if body.as_ref().is_some_and(|b| b.released || super::holder_is_dead_here(&b.machine, b.pid)) {
            return Ok((view.top(), None));
        }
        let holder_ttl = body.as_ref().map_or(ttl, |b| Duration::from_millis(b.ttl_ms)).clamp(MIN_TTL, MAX_HOLDER_TTL);
        match &watched {
            None => {
                tracing::info!(
                    "checkpoint directory {} is leased by {} (epoch {epoch}); waiting up to {} ms to see whether it \
                     renews its lease",
                    root.display(),
                    body.as_ref().map_or("a driver", |b| b.owner.as_str()),
                    holder_ttl.as_millis()
                );
                watched = Some((view, Instant::now()));
            }
            Some((seen, _)) if *seen != view => {
                return Err(held(epoch, body.as_ref(), "its lease was renewed while this driver watched it"))
            }
            Some((_, since)) if since.elapsed() >= holder_ttl => {
                let owner = body.map_or_else(|| "a driver whose lease file is unreadable".into(), |b| b.owner);
                return Ok((view.top(), Some(Takeover { owner, epoch, silent: since.elapsed() })));
            }
            Some(_) if Instant::now() > deadline => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the lease kept changing hands").into())
            }
            Some(_) => {}
        }
        std::thread::sleep((holder_ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500)));
    }
}

/// Creates `<root>/epochs/<epoch>` holding `body`, unless another driver
/// created it first (`O_EXCL`): of two drivers racing for an epoch, one
/// wins and the other is refused.
fn claim(root: &Path, body: &LockBody) -> Result<(), Refused> {
    let path = epoch_path(root, body.epoch);
    let mut f = match File::create_new(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(raced(root, body.epoch)),
        Err(e) => return Err(at(&path)(e).into()),
    };
    let written = serde_json::to_vec(body)
        .map_err(std::io::Error::other)
        .and_then(|b| f.write_all(&b))
        .and_then(|()| f.sync_all())
        .and_then(|()| super::store::sync_dir(&epochs_dir(root)));
    if let Err(e) = written {
        // An empty epoch file would make the next driver wait a whole TTL.
        let _ = std::fs::remove_file(&path);
        return Err(at(&path)(e).into());
    }
    Ok(())
}

/// Refused: another driver created the epoch file first (its content may
/// take a moment to be written: read again, briefly, to name it).
fn raced(root: &Path, epoch: u64) -> Refused {
    let path = epoch_path(root, epoch);
    let mut body = None;
    for _ in 0..20 {
        body = read_lease_file(&path).ok().flatten().as_deref().and_then(parse);
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    held(epoch, body.as_ref(), "it took the directory at the same moment as this driver")
}

/// Writes `bytes` to `path` through `tmp` (rename: readers see the old or
/// the new content, never a part).
fn replace(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(tmp).map_err(at(tmp))?;
    f.write_all(bytes).map_err(at(tmp))?;
    drop(f);
    std::fs::rename(tmp, path).map_err(at(path))
}

/// Rewrites this driver's own epoch file (a renewal, a release). Not
/// fsynced: only its change matters, to drivers running now.
fn write_own(root: &Path, b: &LockBody) -> std::io::Result<()> {
    let tmp = epochs_dir(root).join(format!(".{:020}.tmp", b.epoch));
    replace(&tmp, &epoch_path(root, b.epoch), &serde_json::to_vec(b).map_err(std::io::Error::other)?)
}

/// Writes the legacy `<dir>/lock` (for Weir versions before epoch files:
/// they respect it, and a driver of theirs that this one took over from
/// finds it fenced), with a TTL they never see lapse.
fn write_legacy(root: &Path, b: &LockBody) -> std::io::Result<()> {
    let legacy = LockBody { ttl_ms: LEGACY_TTL_MS, ..b.clone() };
    let tmp = root.join(format!(".lock.{}.tmp", b.epoch));
    replace(&tmp, &root.join("lock"), &serde_json::to_vec(&legacy).map_err(std::io::Error::other)?)?;
    super::store::sync_dir(root)
}

/// Deletes the epoch files (and leftover renewals) older than the newest
/// [`KEEP_EPOCHS`], never `mine` or above.
fn collect_epoch_garbage(root: &Path, mine: u64) {
    let Ok(epochs) = list_epochs(root) else { return };
    let oldest_kept = epochs.len().checked_sub(KEEP_EPOCHS).map_or(0, |i| epochs[i]).min(mine);
    let Ok(rd) = std::fs::read_dir(epochs_dir(root)) else { return };
    for entry in rd.take(MAX_EPOCH_ENTRIES).filter_map(|e| e.ok()) {
        let name = entry.file_name();
        if name.to_str().and_then(epoch_of_name).is_some_and(|e| e < oldest_kept) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The lease of a local checkpoint directory (see the module doc).
pub struct LocalLease {
    root: PathBuf,
    epoch: u64,
    /// This driver's epoch file as last written; locked while it is
    /// written, so that a renewal never overwrites the release.
    body: Mutex<LockBody>,
    /// Set once a newer driver was seen: this one is fenced for good.
    lost: Mutex<Option<Fenced>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl LocalLease {
    /// Takes the lease of `root`, whose directory flock this driver got
    /// (`dir_locked`) or not (a live process holds it, maybe paused). Taken
    /// at once when no lease names a holder (and the flock was got), the
    /// holder released it, or it ran on this machine and is gone; taken
    /// over when the holder's lease files stay unchanged for its whole TTL
    /// on this machine's monotonic clock (paused, hung or cut off: it is
    /// fenced from now on); refused as soon as they change (it renews).
    pub(crate) fn acquire(root: &Path, ttl: Duration, dir_locked: bool) -> Result<Arc<LocalLease>, Refused> {
        let ttl = ttl.max(MIN_TTL);
        let dir = epochs_dir(root);
        super::store::create_dir_all_durable(&dir).map_err(at(&dir))?;
        let (top, takeover) = await_takeable(root, ttl, dir_locked)?;
        // Epochs only grow: above every lease file and metadata checkpoint.
        let epoch = top.max(super::newest_epoch(&super::store::LocalDir::new(root))) + 1;
        let body = LockBody {
            owner: format!("pid {} on {}", std::process::id(), super::hostname()),
            pid: std::process::id(),
            machine: super::machine_id(),
            token: super::random_token(),
            epoch,
            renewals: 0,
            renewed_unix_ms: unix_ms(),
            ttl_ms: ttl.as_millis() as u64,
            released: false,
        };
        claim(root, &body)?;
        if let Some(t) = takeover {
            tracing::warn!(
                "taking over checkpoint directory {} from {} (epoch {}), whose lease did not change for {} ms; \
                 this driver is epoch {epoch}",
                root.display(),
                t.owner,
                t.epoch,
                t.silent.as_millis()
            );
        }
        if let Err(e) = write_legacy(root, &body) {
            tracing::warn!("checkpoint directory {}: older Weir versions may not see this driver: {e}", root.display());
        }
        collect_epoch_garbage(root, epoch);
        let lease = Arc::new(LocalLease {
            root: root.to_path_buf(),
            epoch,
            body: Mutex::new(body),
            lost: Mutex::new(None),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let l = lease.clone();
        std::thread::Builder::new().name("weir-lease".into()).spawn(move || l.renew_loop(ttl)).map_err(at(root))?;
        Ok(lease)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    /// The driver that took the directory over, if one did: an epoch file
    /// above this driver's, or a legacy `<dir>/lock` of a higher epoch (a
    /// Weir before epoch files). Once seen, for good.
    fn newer(&self) -> std::io::Result<Option<Fenced>> {
        if let Some(f) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(Some(f));
        }
        let newer = match list_epochs(&self.root)?.last().copied().filter(|&e| e > self.epoch) {
            // Fenced whatever it holds: its name is the epoch.
            Some(e) => Some((e, read_lease_file(&epoch_path(&self.root, e)).ok().flatten().as_deref().and_then(parse))),
            None => read_lease_file(&self.root.join("lock"))
                .ok()
                .flatten()
                .as_deref()
                .and_then(parse)
                .filter(|b| b.epoch > self.epoch)
                .map(|b| (b.epoch, Some(b))),
        };
        let Some((epoch, body)) = newer else { return Ok(None) };
        let owner = body.map_or_else(|| "a driver whose lease file is unreadable".into(), |b| b.owner);
        let f = Fenced { location: self.location(), mine: self.epoch, newer: epoch, owner };
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.clone());
        Ok(Some(f))
    }

    fn stopped(&self) -> bool {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every TTL/3 until stopped or fenced: rewrites this driver's own
    /// epoch file (its renewal counter bumped), unless a newer one exists.
    fn renew_loop(&self, ttl: Duration) {
        loop {
            let stopped = self.stop.lock().unwrap_or_else(|p| p.into_inner());
            let (stopped, _) = self.wake.wait_timeout(stopped, ttl / 3).unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
            drop(stopped);
            match self.newer() {
                Ok(Some(f)) => {
                    tracing::warn!("the lease of checkpoint directory {} is lost: {f}", self.root.display());
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("cannot renew the lease of checkpoint directory {}: {e}", self.root.display());
                    continue;
                }
            }
            let mut b = self.body.lock().unwrap_or_else(|p| p.into_inner());
            if self.stopped() {
                return;
            }
            b.renewals += 1;
            b.renewed_unix_ms = unix_ms();
            if let Err(e) = write_own(&self.root, &b) {
                tracing::warn!("cannot renew the lease of checkpoint directory {}: {e}", self.root.display());
            }
        }
    }

    /// Stops the renewals and marks the lease released (keeping its epoch),
    /// if it is still this driver's.
    pub(crate) fn release(&self) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
        // After the renewal thread's last write, if it was writing.
        let mut b = self.body.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(self.newer(), Ok(None)) {
            return;
        }
        b.released = true;
        let mut released = write_own(&self.root, &b);
        let legacy = read_lease_file(&self.root.join("lock")).ok().flatten().as_deref().and_then(parse);
        if legacy.is_some_and(|l| l.token == b.token) {
            released = released.and(write_legacy(&self.root, &b));
        }
        if let Err(e) = released {
            tracing::warn!("cannot release the lease of checkpoint directory {}: {e}", self.root.display());
        }
    }

    /// Stops the renewals as a paused process would (tests).
    #[cfg(test)]
    fn freeze(&self) {
        let _b = self.body.lock().unwrap_or_else(|p| p.into_inner());
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }
}

impl Holder for Arc<LocalLease> {
    fn commit_if_held(&self, commit: &mut dyn FnMut()) -> Result<(), FenceError> {
        match self.newer() {
            Ok(None) => {
                commit();
                Ok(())
            }
            Ok(Some(f)) => Err(f.into()),
            Err(e) => Err(FenceError::Check { location: self.location(), why: e.to_string() }),
        }
    }
}

/// A test-only pause (cargo feature `failpoints`): with
/// `WEIR_FAILPOINT_STOP_IN_COMMIT=<kind>:<n>` (kind `metadata`, `state` or
/// `output`), the n-th commit of that kind stops the whole process
/// (SIGSTOP) after its fence check passed and before it writes anything: a
/// driver paused inside a commit, which `tests/fencing.rs` takes over.
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint_stop_in_commit(kind: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Commits of the one kind the variable names.
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let Ok(v) = std::env::var("WEIR_FAILPOINT_STOP_IN_COMMIT") else { return };
    let Some(n) = v.strip_prefix(kind).and_then(|r| r.strip_prefix(':')).and_then(|n| n.parse::<u64>().ok()) else {
        return;
    };
    let count = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
    if count == n {
        tracing::warn!("failpoint WEIR_FAILPOINT_STOP_IN_COMMIT: stopping inside {kind} commit {n}");
        // SAFETY: raise(3) has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn failpoint_stop_in_commit(_kind: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(super::super::metadata_dir(d.path())).unwrap();
        d
    }

    /// A holder on another machine (so never "dead here").
    fn foreign(epoch: u64, ttl_ms: u64) -> LockBody {
        LockBody {
            owner: "pid 1 on elsewhere".into(),
            pid: 1,
            machine: "another machine".into(),
            token: 5,
            epoch,
            renewals: 0,
            renewed_unix_ms: unix_ms(),
            ttl_ms,
            released: false,
        }
    }

    fn write_epoch_file(root: &Path, b: &LockBody) {
        std::fs::create_dir_all(epochs_dir(root)).unwrap();
        std::fs::write(epoch_path(root, b.epoch), serde_json::to_vec(b).unwrap()).unwrap();
    }

    /// Who holds the directory, by the refusal `r`.
    fn held_by(r: Result<Arc<LocalLease>, Refused>) -> String {
        match r {
            Err(Refused::Held { holder: Some(h) }) => h,
            other => panic!("{:?}", other.map(|l| l.epoch())),
        }
    }

    /// Runs `f` on a thread; panics if it has not returned within `limit`
    /// (code that waits on a lock would otherwise hang the test).
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).unwrap_or_else(|_| panic!("did not return within {limit:?}"))
    }

    /// A live holder's lease is refused; once taken over (here: released),
    /// the next driver has a higher epoch and the old one's commits are
    /// refused, naming both epochs, and never run.
    #[test]
    fn a_taken_over_driver_is_fenced_and_its_commit_never_runs() {
        let d = dir();
        // Long enough that a loaded machine still renews well within it.
        let ttl = Duration::from_secs(3);
        let a = LocalLease::acquire(d.path(), ttl, true).unwrap();
        assert_eq!(a.epoch(), 1);
        let fence_a = Fence::new(1, "here".into(), Box::new(a.clone()));
        assert_eq!(fence_a.commit(|| 7).unwrap(), 7);
        let refused = LocalLease::acquire(d.path(), ttl, false);
        let h = held_by(refused);
        assert!(h.contains(&format!("pid {}", std::process::id())) && h.contains("driver epoch 1"), "{h}");
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
        b.release();
    }

    /// A holder paused inside a commit (its commit blocked, its renewals
    /// stopped as a SIGSTOP stops every thread) does not keep a new driver
    /// out: the directory is taken over after the TTL, and the old holder's
    /// next commit is refused as fenced. (With a lock held across commits,
    /// the new driver would wait for the paused one.)
    #[test]
    fn a_holder_paused_inside_a_commit_is_taken_over_after_its_ttl() {
        let d = dir();
        let root = d.path().to_path_buf();
        let ttl = Duration::from_millis(500);
        let a = LocalLease::acquire(&root, ttl, true).unwrap();
        let fence_a = Arc::new(Fence::new(a.epoch(), "here".into(), Box::new(a.clone())));
        let (entered, inside) = channel();
        let (go, wait) = channel::<()>();
        let f = fence_a.clone();
        let paused = std::thread::spawn(move || {
            f.commit(|| {
                entered.send(()).unwrap();
                wait.recv_timeout(Duration::from_secs(30)).unwrap();
            })
        });
        inside.recv_timeout(Duration::from_secs(10)).unwrap();
        a.freeze();
        let started = Instant::now();
        let b = within(Duration::from_secs(10), move || LocalLease::acquire(&root, ttl, false)).unwrap();
        assert!(started.elapsed() >= ttl, "taken over after {:?}, before the TTL", started.elapsed());
        assert_eq!(b.epoch(), 2);
        // The paused commit finishes (its one-commit window); the next is refused.
        go.send(()).unwrap();
        assert!(paused.join().unwrap().is_ok());
        let mut ran = false;
        let e = fence_a.commit(|| ran = true).unwrap_err();
        assert!(!ran, "a fenced commit ran");
        let FenceError::Fenced(f) = e else { panic!("{e}") };
        assert_eq!((f.mine, f.newer), (1, 2));
        assert!(f.to_string().contains("holds epoch 1"), "{f}");
        b.release();
    }

    /// A holder whose file stops changing is taken over after its TTL (on
    /// this machine's clock, whatever its wall clock said); one whose file
    /// changes is refused.
    #[test]
    fn an_unrenewed_lease_is_taken_over_after_its_ttl_and_a_renewed_one_is_refused() {
        let d = dir();
        let root = d.path().to_path_buf();
        // Its wall clock far in the future: not a reason to wait longer.
        let silent = LockBody { renewed_unix_ms: u64::MAX / 2, ..foreign(41, 400) };
        write_epoch_file(&root, &silent);
        let started = Instant::now();
        let l = LocalLease::acquire(&root, Duration::from_secs(30), false).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
        assert_eq!(l.epoch(), 42);
        l.release();

        let live = foreign(50, 2_000);
        write_epoch_file(&root, &live);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (root.clone(), stop.clone());
        let renewer = std::thread::spawn(move || {
            let mut b = live;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                b.renewals += 1;
                write_own(&r, &b).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let refused = LocalLease::acquire(&root, Duration::from_secs(30), false);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renewer.join().unwrap();
        let h = held_by(refused);
        assert!(h.contains("pid 1 on elsewhere") && h.contains("driver epoch 50"), "{h}");
    }

    /// The legacy `<dir>/lock`: its epoch counts, a live holder of its own
    /// (a bare pid, with the directory flocked) is respected, a silent one
    /// is taken over after its TTL and finds the lock naming the new epoch
    /// (so an older Weir's driver is fenced).
    #[test]
    fn a_legacy_lock_file_is_respected_and_its_epoch_counts() {
        let d = dir();
        std::fs::write(d.path().join("lock"), "4242\n").unwrap();
        let refused = LocalLease::acquire(d.path(), Duration::from_secs(30), false);
        let h = held_by(refused);
        assert_eq!(h, "pid 4242");
        let l = LocalLease::acquire(d.path(), Duration::from_secs(30), true).unwrap();
        assert_eq!(l.epoch(), 1);
        l.release();

        let old = LockBody { renewals: 0, ..foreign(7, 300) };
        let text = serde_json::to_string(&old).unwrap().replace(",\"renewals\":0", "");
        std::fs::write(d.path().join("lock"), text).unwrap();
        let l = LocalLease::acquire(d.path(), Duration::from_secs(30), false).unwrap();
        assert_eq!(l.epoch(), 8);
        let lock: LockBody = serde_json::from_slice(&std::fs::read(d.path().join("lock")).unwrap()).unwrap();
        assert_eq!((lock.epoch, lock.token, lock.ttl_ms), (8, l.body.lock().unwrap().token, LEGACY_TTL_MS));
        l.release();
        let lock: LockBody = serde_json::from_slice(&std::fs::read(d.path().join("lock")).unwrap()).unwrap();
        assert!(lock.released);
    }

    /// Two drivers racing for a free directory: exactly one gets it.
    #[test]
    fn of_two_drivers_racing_exactly_one_wins() {
        for _ in 0..5 {
            let d = dir();
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (root, b) = (d.path().to_path_buf(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        LocalLease::acquire(&root, Duration::from_secs(3), true)
                    })
                })
                .collect();
            let results: Vec<_> = racers.into_iter().map(|h| h.join().unwrap()).collect();
            let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "{:?}", results.iter().map(|r| r.as_ref().map(|l| l.epoch())).collect::<Vec<_>>());
            assert_eq!(won[0].epoch(), 1);
            let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
            assert!(matches!(lost, Refused::Held { holder: Some(_) }), "{lost}");
            won[0].release();
        }
    }

    /// Old epoch files are collected (the newest few kept); what is read
    /// from the directory is bounded.
    #[test]
    fn epoch_files_are_collected_and_reads_are_bounded() {
        let d = dir();
        for e in 1..=9 {
            let l = LocalLease::acquire(d.path(), Duration::from_millis(600), true).unwrap();
            assert_eq!(l.epoch(), e);
            l.release();
        }
        assert_eq!(list_epochs(d.path()).unwrap(), vec![6, 7, 8, 9]);
        // A huge newest epoch file: refused by its size, naming it.
        std::fs::write(epoch_path(d.path(), 10), vec![b' '; MAX_LOCK_BYTES as usize + 1]).unwrap();
        let e = LocalLease::acquire(d.path(), Duration::from_millis(600), true).err().unwrap();
        assert!(e.to_string().contains("00000000000000000010") && e.to_string().contains("limit"), "{e}");
        std::fs::remove_file(epoch_path(d.path(), 10)).unwrap();
        for e in 100..100 + MAX_EPOCH_ENTRIES as u64 {
            std::fs::write(epoch_path(d.path(), e), b"").unwrap();
        }
        let e = LocalLease::acquire(d.path(), Duration::from_millis(600), true).err().unwrap();
        assert!(e.to_string().contains("more than 1024 entries"), "{e}");
    }
}
