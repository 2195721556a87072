//! Checkpointing: what a restarted driver needs to carry on exactly where the
//! last one was (`docs/fault-tolerance.md`).
//!
//! ```text
//! <dir>/epochs/<epoch>                one file per driver epoch: its lease (JSON; see [`fence`])
//! <dir>/lock                          the newest driver's lease, for Weir versions before epoch files
//! <dir>/metadata/checkpoint-<seq>-e<epoch>  metadata checkpoints (newest N kept)
//! <dir>/state/<node>-<time>.state     data checkpoints of state RDDs
//! <dir>/wal/<source>-<seq>.log        receivers' write-ahead logs
//! ```
//!
//! The location may also be an object-store URL (`s3://bucket/prefix`, ...;
//! cargo feature `object-store`, [`objstore`]): the same `metadata/` and
//! `state/` objects, each written whole by one PUT, and a lease object `lock`
//! instead of the epoch files. There is no `wal/` there: a source that needs a
//! write-ahead log (a socket) is refused with an object-store checkpoint.
//!
//! A metadata checkpoint is written when a batch is generated (its inputs are
//! recorded, it is pending) and when it completes (or stays pending, when an
//! output failed). Data checkpoints hold the
//! partitions of stateful streams every checkpoint interval. All writes go
//! through one background writer in submission order (so a metadata file is
//! durable only after the state files it names); the batch loop only takes an
//! in-memory snapshot. A failed write is logged and counted and the job goes
//! on; the next snapshot tries again.

pub mod fence;
pub mod file;
mod gc;
#[cfg(feature = "object-store")]
pub mod objstore;
mod options;
pub mod store;
pub mod wal;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use file::FileKind;
use weir_plan::source::{InputDescriptor, SourceCursor};

use crate::listener::{CheckpointEvent, ListenerBus};
pub use options::CheckpointOptions;
pub use store::{CheckpointBounds, CheckpointStore, LocalDir};

/// A source's part of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub partitions: u32,
    pub records: u64,
    pub descriptor: InputDescriptor,
}

/// A data checkpoint of one stateful stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRef {
    pub time: i64,
    /// File name under `state/`.
    pub file: String,
    pub partitions: u32,
    pub records: u64,
    pub bytes: u64,
}

/// The metadata checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub seq: u64,
    /// SHA-256 of the job (the job file's bytes).
    pub job_hash: String,
    pub job: String,
    /// Module file name -> SHA-256.
    pub modules: BTreeMap<String, String>,
    pub batch_interval_ms: i64,
    pub zero_time: i64,
    pub last_completed: Option<i64>,
    /// Generated but not completed, oldest first.
    pub pending: Vec<i64>,
    /// Each source's input of every batch still needed for recovery.
    pub inputs: BTreeMap<i64, Vec<InputRecord>>,
    /// Where each source resumes after the newest batch in `inputs`.
    pub cursors: Vec<SourceCursor>,
    /// The newest durable data checkpoint of each stateful stream (by node).
    pub state: BTreeMap<u32, StateRef>,
    /// What the state depends on: sources and stateful streams with their
    /// lineage signatures. `None` in checkpoints written before it existed
    /// (those are recovered only by the same job file, by `job_hash`).
    pub identity: Option<weir_plan::identity::JobIdentity>,
}

/// A metadata checkpoint as written with an older shape of the job
/// identity `I`: before it recorded static datasets
/// (`weir_plan::identity::JobIdentityV1`), or before it recorded the
/// datasets' sources (`JobIdentityV2`).
#[derive(Serialize, Deserialize)]
struct MetadataV2<I> {
    seq: u64,
    job_hash: String,
    job: String,
    modules: BTreeMap<String, String>,
    batch_interval_ms: i64,
    zero_time: i64,
    last_completed: Option<i64>,
    pending: Vec<i64>,
    inputs: BTreeMap<i64, Vec<InputRecord>>,
    cursors: Vec<SourceCursor>,
    state: BTreeMap<u32, StateRef>,
    identity: Option<I>,
}

impl<I: Into<weir_plan::identity::JobIdentity>> From<MetadataV2<I>> for Metadata {
    fn from(m: MetadataV2<I>) -> Self {
        Metadata {
            seq: m.seq,
            job_hash: m.job_hash,
            job: m.job,
            modules: m.modules,
            batch_interval_ms: m.batch_interval_ms,
            zero_time: m.zero_time,
            last_completed: m.last_completed,
            pending: m.pending,
            inputs: m.inputs,
            cursors: m.cursors,
            state: m.state,
            identity: m.identity.map(Into::into),
        }
    }
}

/// A metadata checkpoint as written before [`Metadata::identity`] existed.
/// bincode is not self-describing, so such a file is decoded as this shape
/// when the current one does not fit.
#[derive(Serialize, Deserialize)]
struct MetadataV1 {
    seq: u64,
    job_hash: String,
    job: String,
    modules: BTreeMap<String, String>,
    batch_interval_ms: i64,
    zero_time: i64,
    last_completed: Option<i64>,
    pending: Vec<i64>,
    inputs: BTreeMap<i64, Vec<InputRecord>>,
    cursors: Vec<SourceCursor>,
    state: BTreeMap<u32, StateRef>,
}

impl From<MetadataV1> for Metadata {
    fn from(m: MetadataV1) -> Self {
        Metadata {
            seq: m.seq,
            job_hash: m.job_hash,
            job: m.job,
            modules: m.modules,
            batch_interval_ms: m.batch_interval_ms,
            zero_time: m.zero_time,
            last_completed: m.last_completed,
            pending: m.pending,
            inputs: m.inputs,
            cursors: m.cursors,
            state: m.state,
            identity: None,
        }
    }
}

impl Metadata {
    pub fn newest_batch(&self) -> Option<i64> {
        self.inputs.keys().next_back().copied().into_iter().chain(self.last_completed).max()
    }
}

/// Counters of the checkpoint writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub metadata_written: u64,
    pub state_written: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_write_micros: u64,
    pub last_state_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("checkpoint directory {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error(
        "checkpoint directory {dir} is in use by another driver{}; one driver per checkpoint directory",
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Locked {
        dir: PathBuf,
        /// Who: `pid N on HOST, driver epoch E; why` (or less, when less is known).
        holder: Option<String>,
    },
    #[error("{0}")]
    Mismatch(String),
    #[error(
        "checkpoint location {location} is in use by another driver ({owner}); one driver per checkpoint location \
         (its lease object {location}/lock is renewed; it is taken over only once it stops being renewed)"
    )]
    Leased { location: String, owner: String },
    /// An object-store location could not be used (or this build lacks the
    /// `object-store` feature).
    #[error("{0}")]
    ObjectStore(String),
}

/// This kernel boot and pid namespace (Linux): with a pid, tells a driver on
/// the same machine whether a lease's holder still runs.
pub(crate) fn machine_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
    if boot.trim().is_empty() || ns.is_empty() {
        return String::new();
    }
    format!("{} {ns}", boot.trim())
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".into())
}

/// A lease's holder ran on this machine (same boot, same pid namespace) and
/// its process is gone: its lease can be taken at once.
pub(crate) fn holder_is_dead_here(machine: &str, pid: u32) -> bool {
    let here = machine_id();
    !here.is_empty() && machine == here && !Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// The newest driver epoch a metadata checkpoint in `store` names (0: none).
pub(crate) fn newest_epoch(store: &dyn CheckpointStore) -> u64 {
    metadata_files(store).iter().map(|f| f.epoch).max().unwrap_or(0)
}

/// The URL schemes of object-store locations (`file://` is a local directory).
const OBJECT_STORE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Whether `s` names an object-store location (`s3://…`, `gs://…`, `az://…`).
pub fn is_object_store_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, rest)| OBJECT_STORE_SCHEMES.contains(&scheme) && !rest.is_empty())
}

/// The object-store URL `p` names, if it names one (without a trailing `/`).
pub fn object_store_url(p: &Path) -> Option<String> {
    let s = p.to_str()?;
    is_object_store_url(s).then(|| s.trim_end_matches('/').to_string())
}

/// The bytes a checkpoint location holds and whether all were counted, for
/// object-store locations (a local one is measured by walking it; `None`).
/// For `weir serve`'s storage quotas.
pub fn remote_usage(p: &Path) -> Option<Result<(u64, bool), CheckpointError>> {
    let url = object_store_url(p)?;
    #[cfg(feature = "object-store")]
    let usage = remote_store(&url, CheckpointBounds::default()).and_then(|store| {
        store.usage().map_err(|e| CheckpointError::ObjectStore(format!("{url}: listing its objects: {e}")))
    });
    #[cfg(not(feature = "object-store"))]
    let usage = remote_store(&url, CheckpointBounds::default()).map(|_| (0, false));
    Some(usage)
}

/// A local checkpoint path: `file:///x` is `/x`, anything else is itself.
pub fn local_path(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("file://")) {
        Some(rest) => PathBuf::from(rest),
        None => p.to_path_buf(),
    }
}

/// The shared store of an object-store URL, under `bounds`.
#[cfg(feature = "object-store")]
fn remote_store(url: &str, bounds: CheckpointBounds) -> Result<Arc<objstore::ObjectStoreCheckpoint>, CheckpointError> {
    objstore::shared_with(url, bounds).map_err(|e| CheckpointError::ObjectStore(e.to_string()))
}

#[cfg(not(feature = "object-store"))]
fn remote_store(url: &str, _bounds: CheckpointBounds) -> Result<Arc<LocalDir>, CheckpointError> {
    Err(CheckpointError::ObjectStore(format!(
        "{url}: this build of Weir has no object-storage support (cargo feature `weir/object-store`)"
    )))
}

/// What keeps other drivers out while this one runs.
enum Guard {
    /// The flock on a local directory (when this driver got it: a paused
    /// driver it took over from may still hold it) and its lease.
    Flock(#[allow(dead_code)] Option<File>, Arc<fence::LocalLease>),
    /// The renewed lease object of an object-store location.
    #[cfg(feature = "object-store")]
    Lease(#[allow(dead_code)] objstore::Lease),
}

impl Drop for Guard {
    // Irrefutable without the `object-store` feature.
    #[allow(irrefutable_let_patterns)]
    fn drop(&mut self) {
        // Released (its epoch kept) only if still this driver's.
        if let Guard::Flock(_, lease) = self {
            lease.release();
        }
    }
}

enum WriteJob {
    State {
        node: u32,
        /// The stream's name, for messages.
        stream: String,
        time: i64,
        partitions: Vec<Arc<Vec<u8>>>,
    },
    /// A metadata checkpoint; it names, of each stream, the newest durable
    /// data checkpoint at or before the time given (all when `None`).
    Metadata(Box<Metadata>, Option<i64>),
    Flush(Sender<()>),
}

/// Durable data checkpoints: node -> time -> file (pruned as files are
/// collected). Older ones stay usable while a batch before the newest is
/// pending: its re-run needs the state as it was before it.
type DurableState = BTreeMap<u32, BTreeMap<i64, StateRef>>;

/// Of each stream, the newest durable data checkpoint at or before `until`.
fn newest_until(d: &DurableState, until: Option<i64>) -> BTreeMap<u32, StateRef> {
    d.iter()
        .filter_map(|(node, refs)| {
            let r = match until {
                Some(t) => refs.range(..=t).next_back(),
                None => refs.iter().next_back(),
            };
            r.map(|(_, r)| (*node, r.clone()))
        })
        .collect()
}

/// An open checkpoint directory, held by this driver.
pub struct CheckpointDir {
    /// The directory, or the object-store URL (for messages and lineage).
    root: PathBuf,
    store: Arc<dyn CheckpointStore>,
    remote: bool,
    /// A local directory's files only inside this directory
    /// ([`CheckpointOptions::confine`]).
    confine: Option<PathBuf>,
    _guard: Guard,
    fence: Arc<fence::Fence>,
    writer: Sender<WriteJob>,
    stats: Arc<Mutex<CheckpointStats>>,
    durable_state: Arc<Mutex<DurableState>>,
    listeners: Arc<OnceLock<ListenerBus>>,
}

/// The checkpoint writer thread's state: writes run off the batch loop, so
/// checkpointing never stalls a batch for more than taking the snapshot.
struct Writer {
    /// Where receivers' write-ahead logs are (local directories only).
    wal_root: Option<PathBuf>,
    /// Old log segments are deleted only while `wal_root` is inside this.
    confine: Option<PathBuf>,
    /// Every write is a commit through this driver's fence: none once
    /// another driver has taken the location over.
    fence: Arc<fence::Fence>,
    store: Arc<dyn CheckpointStore>,
    stats: Arc<Mutex<CheckpointStats>>,
    durable: Arc<Mutex<DurableState>>,
    /// The newest metadata checkpoints written (what garbage collection keeps).
    kept: VecDeque<Metadata>,
    keep: usize,
    seq: u64,
    listeners: Arc<OnceLock<ListenerBus>>,
    /// What the location holds, for garbage collection between listings.
    known: gc::Known,
}

impl Writer {
    fn handle(&mut self, job: WriteJob) {
        let t = Instant::now();
        let (kind, time, result) = match job {
            WriteJob::Flush(ack) => {
                let _ = ack.send(());
                return;
            }
            WriteJob::State { node, stream, time, partitions } => {
                ("state", Some(time), self.state(node, &stream, time, &partitions))
            }
            WriteJob::Metadata(m, until) => ("metadata", m.newest_batch(), self.metadata(*m, until)),
        };
        let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.last_write_micros = t.elapsed().as_micros() as u64;
        let mut e = CheckpointEvent { kind, time, bytes: 0, duration: t.elapsed(), error: None };
        match result {
            Ok(bytes) => {
                drop(st);
                e.bytes = bytes;
                if let Some(l) = self.listeners.get() {
                    l.emit(|l| l.on_checkpoint_written(&e));
                }
            }
            Err(err) => {
                st.failures += 1;
                tracing::warn!("checkpoint write failed (the job goes on; retried with the next checkpoint): {err}");
                st.last_error = Some(err.clone());
                drop(st);
                e.error = Some(err);
                if let Some(l) = self.listeners.get() {
                    l.emit(|l| l.on_checkpoint_failed(&e));
                }
            }
        }
    }

    fn state(&mut self, node: u32, stream: &str, time: i64, partitions: &[Arc<Vec<u8>>]) -> Result<u64, String> {
        let r = self
            .fence
            .commit(|| {
                fence::failpoint_stop_in_commit("state");
                write_state(&*self.store, node, stream, time, partitions)
            })
            .map_err(|e| e.to_string())??;
        let bytes = r.bytes;
        self.known.wrote_state(&r.file);
        let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.state_written += 1;
        st.last_state_bytes = r.bytes;
        drop(st);
        self.durable.lock().unwrap_or_else(|p| p.into_inner()).entry(node).or_default().insert(time, r);
        Ok(bytes)
    }

    fn metadata(&mut self, mut m: Metadata, until: Option<i64>) -> Result<u64, String> {
        m.seq = self.seq;
        // Only data checkpoints known to be durable are named.
        m.state = newest_until(&self.durable.lock().unwrap_or_else(|p| p.into_inner()), until);
        let epoch = self.fence.epoch();
        let bytes = self
            .fence
            .commit(|| {
                fence::failpoint_stop_in_commit("metadata");
                write_metadata(&*self.store, &m, epoch)
            })
            .map_err(|e| e.to_string())??;
        self.known.wrote_metadata(&metadata_name(m.seq, epoch));
        self.seq += 1;
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).metadata_written += 1;
        self.kept.push_back(m);
        while self.kept.len() > self.keep {
            self.kept.pop_front();
        }
        // Deleting is a commit too: a driver taken over since its write above
        // deletes nothing (its view of what to keep is stale).
        // A log directory that leads out of the root (swapped for a link)
        // has nothing of this job's to delete.
        let wal_root = self.wal_root.as_deref().filter(|w| match &self.confine {
            Some(root) => crate::files::check_inside(root, w).is_ok(),
            None => true,
        });
        let (store, kept, keep, known) = (&*self.store, &self.kept, self.keep, &mut self.known);
        let gc = self.fence.commit(|| gc::collect_garbage(store, wal_root, kept, keep, known));
        let Ok(oldest) = gc else { return Ok(bytes) };
        // Forget what garbage collection deleted (older than any kept checkpoint names).
        for (node, refs) in self.durable.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            if let Some(&o) = oldest.get(node) {
                refs.retain(|t, _| *t >= o);
            }
        }
        Ok(bytes)
    }
}

/// What `open` found in the directory.
pub struct Recovered {
    /// The newest metadata checkpoint whose data checkpoints are all valid.
    pub metadata: Option<Metadata>,
    /// Files that could not be used, and why (newest first).
    pub invalid: Vec<(PathBuf, String)>,
    /// Some metadata checkpoint was readable but none had valid data
    /// checkpoints: starting over would silently drop the state.
    pub state_lost: bool,
}

fn io_err(dir: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { dir: dir.to_path_buf(), source }
}

pub fn metadata_dir(root: &Path) -> PathBuf {
    root.join("metadata")
}
pub fn state_dir(root: &Path) -> PathBuf {
    root.join("state")
}
pub fn wal_dir(root: &Path) -> PathBuf {
    root.join("wal")
}

/// Metadata checkpoints in `store`, by sequence number: (seq, name); none
/// when they cannot be listed (for garbage collection and inspection, where
/// that deletes or claims nothing; starting a run uses
/// [`try_metadata_files`]).
fn metadata_files(store: &dyn CheckpointStore) -> Vec<MetadataFile> {
    try_metadata_files(store).unwrap_or_default()
}

/// A metadata checkpoint's name: `checkpoint-<seq>-e<epoch>` (epoch 0: a
/// `checkpoint-<seq>` of a driver before epochs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MetadataFile {
    seq: u64,
    epoch: u64,
    name: String,
}

fn parse_metadata_name(n: &str) -> Option<MetadataFile> {
    let rest = n.strip_prefix("checkpoint-")?;
    let (seq, epoch) = match rest.split_once("-e") {
        Some((s, e)) => (s.parse().ok()?, e.parse().ok()?),
        None => (rest.parse().ok()?, 0),
    };
    Some(MetadataFile { seq, epoch, name: format!("metadata/{n}") })
}

/// Metadata checkpoints in `store` by (sequence number, epoch), or why they
/// cannot be listed.
fn try_metadata_files(store: &dyn CheckpointStore) -> std::io::Result<Vec<MetadataFile>> {
    let mut v: Vec<MetadataFile> =
        store.list("metadata")?.iter().map(String::as_str).filter_map(parse_metadata_name).collect();
    v.sort();
    Ok(v)
}

/// Why a metadata checkpoint written by a fenced driver is not used: a newer
/// epoch had already written one at or before its sequence number, so it
/// was written after that epoch took the location over (in an object
/// store's check-then-write window). `None`: it is not stale.
fn stale_metadata(files: &[MetadataFile], f: &MetadataFile) -> Option<String> {
    let newer = files.iter().filter(|o| o.seq <= f.seq && o.epoch > f.epoch).map(|o| o.epoch).max()?;
    Some(format!(
        "written by driver epoch {} after epoch {newer} had taken the location over (a fenced driver's write); ignored",
        f.epoch
    ))
}

/// Decodes a bincode payload (standard config) with a limit sized from its
/// length: a length read from disk (a string, a list) cannot claim more than
/// the payload could hold, so a corrupt or hostile one is refused before
/// anything is allocated for it. bincode counts a decoded value's in-memory
/// size (at most 16 bytes per encoded byte: an integer, a container entry),
/// so 16 × the payload bounds every valid file; the limit is a const
/// generic, hence the next power of two.
fn decode_bounded<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let budget = payload.len().saturating_mul(16).saturating_add(4096);
    macro_rules! within {
        ($($bits:literal),*) => {
            $(
                if budget <= 1usize << $bits {
                    let config = bincode::config::standard().with_limit::<{ 1usize << $bits }>();
                    return bincode::serde::decode_from_slice(payload, config).and_then(|(v, n)| whole(v, n, payload));
                }
            )*
        };
    }
    within!(16, 20, 24, 28, 32, 36, 40, 44);
    Err(bincode::error::DecodeError::LimitExceeded)
}

/// A value decoded from `n` bytes of `payload` counts only if they are all
/// of it: bincode stops where the value ends, so a longer payload of a newer
/// shape (or a truncated one) would otherwise decode as an older, shorter
/// shape and lose what follows.
fn whole<T>(v: T, n: usize, payload: &[u8]) -> Result<T, bincode::error::DecodeError> {
    match payload.len().checked_sub(n) {
        Some(0) => Ok(v),
        _ => Err(bincode::error::DecodeError::OtherString(format!(
            "{} byte(s) after the value",
            payload.len().saturating_sub(n)
        ))),
    }
}

fn decode_metadata(store: &dyn CheckpointStore, name: &str) -> Result<Metadata, String> {
    let payload = file::read(store, name, FileKind::Metadata).map_err(|e| e.to_string())?;
    decode_metadata_payload(&payload)
        .map_err(|e| format!("{}: undecodable metadata: {e}", store.locate(name).display()))
}

/// A metadata checkpoint of this version, or of the one before identities.
fn decode_metadata_payload(payload: &[u8]) -> Result<Metadata, bincode::error::DecodeError> {
    decode_bounded::<Metadata>(payload)
        .or_else(|e| {
            decode_bounded::<MetadataV2<weir_plan::identity::JobIdentityV2>>(payload).map(Metadata::from).map_err(|_| e)
        })
        .or_else(|e| {
            decode_bounded::<MetadataV2<weir_plan::identity::JobIdentityV1>>(payload).map(Metadata::from).map_err(|_| e)
        })
        .or_else(|e| decode_bounded::<MetadataV1>(payload).map(Metadata::from).map_err(|_| e))
}

/// A decoded metadata checkpoint is usable only with every data checkpoint
/// it names: recovery needs the pair.
fn check_state_files(store: &dyn CheckpointStore, name: &str, m: &Metadata) -> Result<(), String> {
    for r in m.state.values() {
        read_state_in(store, r).map_err(|e| {
            format!("{}: the data checkpoint it names is not usable: {e}", store.locate(name).display())
        })?;
    }
    Ok(())
}

/// Reads the newest valid metadata checkpoint of a local checkpoint
/// directory, falling back to older ones.
pub fn load_newest(root: &Path) -> Recovered {
    load_newest_in(&LocalDir::new(root))
}

/// Reads the newest valid metadata checkpoint in `store` whose data
/// checkpoints are valid too, falling back to older ones.
pub fn load_newest_in(store: &dyn CheckpointStore) -> Recovered {
    load_newest_of(store, metadata_files(store))
}

/// `load_newest_in` over a listing already made.
fn load_newest_of(store: &dyn CheckpointStore, files: Vec<MetadataFile>) -> Recovered {
    let mut invalid = Vec::new();
    let mut state_lost = false;
    for f in files.iter().rev() {
        let name = &f.name;
        if let Some(why) = stale_metadata(&files, f) {
            invalid.push((store.locate(name), format!("{}: {why}", store.locate(name).display())));
            continue;
        }
        let checked = decode_metadata(store, name).and_then(|m| {
            check_state_files(store, name, &m).inspect_err(|_| state_lost = true)?;
            Ok(m)
        });
        match checked {
            Ok(m) => return Recovered { metadata: Some(m), invalid, state_lost: false },
            Err(e) => invalid.push((store.locate(name), e)),
        }
    }
    Recovered { metadata: None, invalid, state_lost }
}

/// Reads the partitions of a data checkpoint of a checkpoint directory or
/// object-store location (`root` is then its URL).
pub fn read_state(root: &Path, r: &StateRef) -> Result<Vec<Vec<u8>>, String> {
    read_state_bounded(root, r, CheckpointBounds::default())
}

/// [`read_state`] under the job's checkpoint bounds (an executor reading a
/// data checkpoint its lineage names).
pub fn read_state_bounded(root: &Path, r: &StateRef, bounds: CheckpointBounds) -> Result<Vec<Vec<u8>>, String> {
    match object_store_url(root) {
        Some(url) => read_state_in(&*remote_store(&url, bounds).map_err(|e| e.to_string())?, r),
        None => read_state_in(&LocalDir::with_bounds(local_path(root), bounds), r),
    }
}

/// Reads the partitions of a data checkpoint in `store`.
pub fn read_state_in(store: &dyn CheckpointStore, r: &StateRef) -> Result<Vec<Vec<u8>>, String> {
    let name = format!("state/{}", r.file);
    let payload = file::read(store, &name, FileKind::State).map_err(|e| e.to_string())?;
    decode_bounded(&payload).map_err(|e| format!("{}: undecodable state: {e}", store.locate(&name).display()))
}

/// What a local checkpoint directory has that an object store has not.
struct Local {
    confine: Option<PathBuf>,
}

impl CheckpointDir {
    /// Opens the checkpoint location of `c` — a local directory (`file://`
    /// URLs too) or an object-store URL — clearing it first with `fresh`.
    /// Its files are read and written under `bounds` (the job's
    /// `[checkpoint]`).
    pub fn open_location(
        c: &CheckpointOptions,
        bounds: CheckpointBounds,
    ) -> Result<(Self, Recovered), CheckpointError> {
        let Some(url) = object_store_url(&c.dir) else {
            let confine = c.confine.clone();
            return CheckpointDir::open_local(&local_path(&c.dir), c.keep, c.lease_ttl, bounds, c.fresh, confine);
        };
        #[cfg(feature = "object-store")]
        {
            let store = remote_store(&url, bounds)?;
            let lease = objstore::Lease::acquire(store.clone(), c.lease_ttl).map_err(|e| match e {
                objstore::LeaseError::Held { owner } => CheckpointError::Leased { location: url.clone(), owner },
                other => CheckpointError::ObjectStore(format!("{url}/lock: cannot take the lease: {other}")),
            })?;
            if c.fresh {
                // Everything but the lease, which is ours now.
                for d in ["metadata", "state"] {
                    let io = |e: std::io::Error| CheckpointError::ObjectStore(format!("{url}/{d}: {e}"));
                    for n in store.list(d).map_err(io)? {
                        store.delete(&format!("{d}/{n}")).map_err(io)?;
                    }
                }
            }
            let fence = Arc::new(lease.fence());
            tracing::info!("checkpoint location {url}: driver epoch {}", fence.epoch());
            CheckpointDir::start(PathBuf::from(&url), store, None, Guard::Lease(lease), fence, c.keep)
        }
        #[cfg(not(feature = "object-store"))]
        {
            // Always an error in this build.
            remote_store(&url, bounds).and_then(|_| Err(CheckpointError::ObjectStore(url.clone())))
        }
    }

    /// Opens (creating) a checkpoint directory, takes its lease, and reads
    /// the newest valid metadata checkpoint. A lease renewed by a live
    /// driver is refused; a dead driver's (on this machine) or a released
    /// one is simply taken ([`fence::LocalLease`]).
    pub fn open(root: &Path, keep: usize) -> Result<(Self, Recovered), CheckpointError> {
        CheckpointDir::open_leased(root, keep, std::time::Duration::from_secs(30))
    }

    /// [`CheckpointDir::open`] with the lease's TTL: a holder that has not
    /// renewed its lease for `ttl` (paused, hung) is taken over, and
    /// fenced from then on ([`fence`]).
    pub fn open_leased(
        root: &Path,
        keep: usize,
        ttl: std::time::Duration,
    ) -> Result<(Self, Recovered), CheckpointError> {
        CheckpointDir::open_bounded(root, keep, ttl, CheckpointBounds::default())
    }

    /// [`CheckpointDir::open_leased`], its files read and written under `bounds`.
    pub fn open_bounded(
        root: &Path,
        keep: usize,
        ttl: std::time::Duration,
        bounds: CheckpointBounds,
    ) -> Result<(Self, Recovered), CheckpointError> {
        CheckpointDir::open_local(root, keep, ttl, bounds, false, None)
    }

    /// [`CheckpointDir::open_bounded`], its checkpoints cleared first with
    /// `fresh` — once the lease is this driver's: a live driver's directory
    /// is never cleared (its lease refuses this driver), and one taken over
    /// from a paused driver is fenced.
    fn open_local(
        root: &Path,
        keep: usize,
        ttl: std::time::Duration,
        bounds: CheckpointBounds,
        fresh: bool,
        confine: Option<PathBuf>,
    ) -> Result<(Self, Recovered), CheckpointError> {
        // Absolute, because the lineage hands this path to executors to
        // read data checkpoints from, and an executor process (on another
        // host, or started elsewhere) has its own working directory: a
        // relative `ckpt/state/...` would name a file that is not there.
        let root = &std::path::absolute(root).map_err(io_err(root))?;
        for d in [root.to_path_buf(), metadata_dir(root), state_dir(root), wal_dir(root)] {
            store::create_dir_all_durable(&d).map_err(io_err(root))?;
        }
        let lock = match take_lock(root) {
            Ok(l) => Some(l),
            Err(CheckpointError::Locked { .. }) => None,
            Err(e) => return Err(e),
        };
        let lease = fence::LocalLease::acquire(root, ttl, lock.is_some()).map_err(|e| match e {
            fence::Refused::Held { holder } => CheckpointError::Locked { dir: root.clone(), holder },
            fence::Refused::Io(e) => io_err(root)(e),
        })?;
        if fresh {
            let cleared = remove_checkpoints(root).and_then(|()| {
                [metadata_dir(root), state_dir(root), wal_dir(root)]
                    .iter()
                    .try_for_each(|d| store::create_dir_all_durable(d))
            });
            if let Err(e) = cleared {
                lease.release();
                return Err(io_err(root)(e));
            }
        }
        if lock.is_some() {
            // Only when no live driver holds the directory: a paused one's
            // half-written file is not a leftover until it is fenced.
            remove_temporary_files(root);
        }
        let epoch = lease.epoch();
        tracing::info!("checkpoint directory {}: driver epoch {epoch}", root.display());
        let fence = Arc::new(fence::Fence::new(epoch, root.display().to_string(), Box::new(lease.clone())));
        let store: Arc<dyn CheckpointStore> = Arc::new(LocalDir::with_bounds(root, bounds).confined(confine.clone()));
        let local = Some(Local { confine });
        CheckpointDir::start(root.to_path_buf(), store, local, Guard::Flock(lock, lease), fence, keep)
    }

    /// Reads the newest checkpoint of a held location and starts the writer
    /// (`local`: `None` for an object store).
    fn start(
        root: PathBuf,
        store: Arc<dyn CheckpointStore>,
        local: Option<Local>,
        guard: Guard,
        fence: Arc<fence::Fence>,
        keep: usize,
    ) -> Result<(Self, Recovered), CheckpointError> {
        // A location whose listing fails is not an empty one: starting over
        // would ignore its checkpoints (and write over their numbers).
        let files = try_metadata_files(&*store).map_err(|e| CheckpointError::Io {
            dir: root.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!("cannot list its metadata checkpoints ({e}); not starting, as that would ignore them"),
            ),
        })?;
        let next_seq = files.iter().map(|f| f.seq + 1).max().unwrap_or(0);
        let recovered = load_newest_of(&*store, files);
        let stats = Arc::new(Mutex::new(CheckpointStats::default()));
        let durable: DurableState = recovered
            .metadata
            .iter()
            .flat_map(|m| m.state.iter())
            .map(|(node, r)| (*node, BTreeMap::from([(r.time, r.clone())])))
            .collect();
        let durable_state = Arc::new(Mutex::new(durable));
        let (tx, rx) = channel::<WriteJob>();
        let listeners: Arc<OnceLock<ListenerBus>> = Arc::default();
        let remote = local.is_none();
        let confine = local.and_then(|l| l.confine);
        let mut writer = Writer {
            wal_root: (!remote).then(|| wal_dir(&root)),
            confine: confine.clone(),
            fence: fence.clone(),
            store: store.clone(),
            stats: stats.clone(),
            durable: durable_state.clone(),
            kept: recovered.metadata.iter().cloned().collect(),
            keep: keep.max(1),
            seq: next_seq,
            listeners: listeners.clone(),
            known: gc::Known::default(),
        };
        std::thread::Builder::new()
            .name("weir-checkpoint".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    writer.handle(job);
                }
            })
            .map_err(|source| CheckpointError::Io { dir: PathBuf::new(), source })?;
        let dir = CheckpointDir {
            root,
            store,
            remote,
            confine,
            _guard: guard,
            fence,
            writer: tx,
            stats,
            durable_state,
            listeners,
        };
        Ok((dir, recovered))
    }

    /// This driver's fence on the location: every checkpoint and output
    /// commit goes through it.
    pub fn fence(&self) -> Arc<fence::Fence> {
        self.fence.clone()
    }

    /// Whether the location is in an object store (no write-ahead logs there).
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Reads the partitions of one of this location's data checkpoints.
    pub fn read_state(&self, r: &StateRef) -> Result<Vec<Vec<u8>>, String> {
        read_state_in(&*self.store, r)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory this local checkpoint's files must stay inside, if any.
    pub fn confine(&self) -> Option<&Path> {
        self.confine.as_deref()
    }

    /// Listeners told of every checkpoint written or failed (set once).
    pub fn set_listeners(&mut self, bus: ListenerBus) {
        let _ = self.listeners.set(bus);
    }

    /// The path (or URL) of a data checkpoint file, as lineage names it.
    pub fn state_path(&self, file: &str) -> String {
        if self.remote {
            return format!("{}/state/{file}", self.root.display());
        }
        state_dir(&self.root).join(file).to_string_lossy().into_owned()
    }

    /// Queues a metadata checkpoint (the caller only built the snapshot).
    pub fn write_metadata(&self, m: Metadata) {
        self.write_metadata_until(m, None);
    }

    /// Queues a metadata checkpoint that names, of each stateful stream, the
    /// newest durable data checkpoint at or before `until` (the oldest
    /// pending batch: its re-run must start from state before it).
    pub fn write_metadata_until(&self, m: Metadata, until: Option<i64>) {
        let _ = self.writer.send(WriteJob::Metadata(Box::new(m), until));
    }

    /// Queues a data checkpoint of a stateful stream's RDD at `time`.
    /// `stream` names it in messages (`"totals" (update_state_by_key(...))`).
    pub fn write_state(&self, node: u32, stream: &str, time: i64, partitions: Vec<Arc<Vec<u8>>>) {
        let _ = self.writer.send(WriteJob::State { node, stream: stream.to_string(), time, partitions });
    }

    /// Waits until every queued write is done (or failed).
    pub fn flush(&self) {
        let (tx, rx) = channel();
        if self.writer.send(WriteJob::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    pub fn stats(&self) -> CheckpointStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest durable data checkpoint of each stateful stream.
    pub fn durable_state(&self) -> BTreeMap<u32, StateRef> {
        self.durable_state_until(None)
    }

    /// Of each stateful stream, the newest durable data checkpoint at or
    /// before `until` (all when `None`).
    pub fn durable_state_until(&self, until: Option<i64>) -> BTreeMap<u32, StateRef> {
        newest_until(&self.durable_state.lock().unwrap_or_else(|p| p.into_inner()), until)
    }

    /// Removes everything (a fresh start on an existing directory). Refused
    /// while another driver holds the directory: its files are in use.
    pub fn clear(root: &Path) -> std::io::Result<()> {
        if !root.is_dir() {
            return Ok(());
        }
        let _lock = take_lock(root).map_err(|e| match e {
            CheckpointError::Locked { holder, .. } => std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "in use by another driver{}; one driver per checkpoint directory",
                    holder.map(|h| format!(" ({h})")).unwrap_or_default()
                ),
            ),
            CheckpointError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?;
        remove_checkpoints(root)
    }
}

/// Removes the metadata and data checkpoints and the write-ahead logs (not
/// the lease files: epochs keep growing across a fresh start).
fn remove_checkpoints(root: &Path) -> std::io::Result<()> {
    for d in [metadata_dir(root), state_dir(root), wal_dir(root)] {
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
    }
    Ok(())
}

/// Takes the directory's lifetime flock, or says which live driver holds it
/// (the pid in `<root>/lock`). A hint only: the lease files decide
/// ([`fence::LocalLease`]); a held flock keeps a driver out only when no
/// lease file names a holder (deleted, or a Weir before epochs), and keeps
/// `--fresh` from clearing the directory. It is on the directory itself, not
/// on a file in it, which could be deleted under a live driver.
fn take_lock(root: &Path) -> Result<File, CheckpointError> {
    let lock_path = root.join("lock");
    let lock = File::open(root).map_err(io_err(root))?;
    if let Err(e) = lock.try_lock() {
        return match e {
            std::fs::TryLockError::WouldBlock => {
                // The lease's pid (JSON), or a pid alone (drivers before epochs).
                // Bounded: only a pid is wanted from it, whatever it holds.
                let text = crate::files::read_limited(&lock_path, 64 << 10)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string());
                let lease = text.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
                let pid = match lease.and_then(|v| v["pid"].as_u64()) {
                    Some(p) => Some(p.to_string()),
                    None => text.filter(|s| !s.is_empty()),
                };
                Err(CheckpointError::Locked { dir: root.into(), holder: pid.map(|p| format!("pid {p}")) })
            }
            std::fs::TryLockError::Error(e) => Err(io_err(root)(e)),
        };
    }
    Ok(lock)
}

/// Removes what a driver killed halfway through a write left (`.<name>.tmp`,
/// never read: only renamed into place when whole). Called with the lock held.
fn remove_temporary_files(root: &Path) {
    for d in [metadata_dir(root), state_dir(root)] {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.ends_with(".tmp") {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }
}

fn write_state(
    store: &dyn CheckpointStore,
    node: u32,
    stream: &str,
    time: i64,
    parts: &[Arc<Vec<u8>>],
) -> Result<StateRef, String> {
    let plain: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let payload = bincode::serde::encode_to_vec(&plain, bincode::config::standard()).map_err(|e| e.to_string())?;
    let name = format!("{node}-{time}.state");
    // Which partition made it big, for the message of a refused one.
    let (largest, largest_bytes) =
        parts.iter().enumerate().map(|(i, p)| (i, p.len())).max_by_key(|(_, n)| *n).unwrap_or_default();
    let what = format!(
        "data checkpoint of stream {stream} (node {node}) at {time} ms ({} partition(s); the largest, partition \
         {largest}, {largest_bytes} bytes)",
        parts.len()
    );
    file::write(store, &format!("state/{name}"), FileKind::State, &payload, &what).map_err(|e| e.to_string())?;
    let records = parts.iter().map(|p| crate::udf::abi::batch_count(p) as u64).sum();
    Ok(StateRef { time, file: name, partitions: parts.len() as u32, records, bytes: payload.len() as u64 })
}

/// Writes metadata checkpoint `m.seq` of driver epoch `epoch`; returns the
/// payload's size.
fn write_metadata(store: &dyn CheckpointStore, m: &Metadata, epoch: u64) -> Result<u64, String> {
    let payload = bincode::serde::encode_to_vec(m, bincode::config::standard()).map_err(|e| e.to_string())?;
    let what = format!("metadata checkpoint {}", m.seq);
    file::write(store, &format!("metadata/{}", metadata_name(m.seq, epoch)), FileKind::Metadata, &payload, &what)
        .map_err(|e| e.to_string())?;
    Ok(payload.len() as u64)
}

/// The name (in `metadata/`) of metadata checkpoint `seq` of driver epoch
/// `epoch`.
fn metadata_name(seq: u64, epoch: u64) -> String {
    format!("checkpoint-{seq:020}-e{epoch}")
}

/// `weir checkpoint inspect`: what the newest valid checkpoint holds.
/// `root` may be an object-store URL: read-only, it takes no lease.
pub fn inspect(root: &Path) -> Result<String, CheckpointError> {
    inspect_bounded(root, CheckpointBounds::default())
}

/// [`inspect`] reading every file under `bounds` (a job's `[checkpoint]`
/// table), as the job itself would on recovery.
pub fn inspect_bounded(root: &Path, bounds: CheckpointBounds) -> Result<String, CheckpointError> {
    if let Some(url) = object_store_url(root) {
        let store = remote_store(&url, bounds)?;
        // Listing first: a missing bucket or bad credentials are an error,
        // not "no checkpoint".
        store.list("metadata").map_err(|e| CheckpointError::ObjectStore(format!("{url}/metadata: {e}")))?;
        return Ok(inspect_in(&*store, &format!("checkpoint location {url}")));
    }
    let root = local_path(root);
    if !root.is_dir() {
        return Err(CheckpointError::Mismatch(format!("{} is not a directory", root.display())));
    }
    Ok(inspect_in(&LocalDir::with_bounds(&root, bounds), &format!("checkpoint directory {}", root.display())))
}

fn inspect_in(store: &dyn CheckpointStore, title: &str) -> String {
    use std::fmt::Write;
    let rec = load_newest_in(store);
    let mut s = String::new();
    let _ = writeln!(s, "{title}");
    let files = metadata_files(store);
    let _ = writeln!(s, "metadata checkpoints: {}", files.len());
    for (_, why) in &rec.invalid {
        // `why` starts with the file's path.
        let _ = writeln!(s, "  INVALID {why}");
    }
    let Some(m) = rec.metadata else {
        let _ = writeln!(s, "no valid metadata checkpoint");
        return s;
    };
    let _ = writeln!(s, "newest valid: checkpoint-{:020}", m.seq);
    let _ = writeln!(s, "job: {} (sha256 {})", m.job, m.job_hash);
    for (name, h) in &m.modules {
        let _ = writeln!(s, "module: {name} (sha256 {h})");
    }
    let _ = writeln!(s, "batch interval: {} ms, zero time: {} ms", m.batch_interval_ms, m.zero_time);
    match m.last_completed {
        Some(t) => {
            let _ = writeln!(s, "last completed batch: {t} ms");
        }
        None => {
            let _ = writeln!(s, "last completed batch: none");
        }
    }
    let pending: Vec<String> = m.pending.iter().map(|t| format!("{t} ms")).collect();
    let _ =
        writeln!(s, "pending batches: {}", if pending.is_empty() { "none".to_string() } else { pending.join(", ") });
    let (first, last) = (m.inputs.keys().next(), m.inputs.keys().next_back());
    if let (Some(a), Some(b)) = (first, last) {
        let _ = writeln!(s, "recorded inputs: {} batch(es), {a} ms .. {b} ms", m.inputs.len());
    }
    for (i, c) in m.cursors.iter().enumerate() {
        let desc = match c {
            SourceCursor::Next(n) => format!("next batch line {n}"),
            SourceCursor::Files(f) => format!("{} file(s) read", f.len()),
            SourceCursor::Generator { left } => match left {
                Some(l) => format!("generator, {l} batch(es) left"),
                None => "generator".into(),
            },
            SourceCursor::Wal(p) => format!("write-ahead log segment {} offset {}", p.seq, p.offset),
            SourceCursor::None => "no position (not replayable)".into(),
            SourceCursor::Custom(b) => format!("custom source position ({} bytes)", b.len()),
            SourceCursor::Kafka(offs) => {
                let parts: Vec<String> =
                    offs.iter().map(|o| format!("{}/{} at {}", o.topic, o.partition, o.next)).collect();
                format!("kafka, next offsets: {}", if parts.is_empty() { "none".into() } else { parts.join(", ") })
            }
        };
        let _ = writeln!(s, "source {i}: {desc}");
        if let Some(w) = m.identity.as_ref().and_then(|id| id.sources.get(i)) {
            let _ = writeln!(s, "  reads {w}");
        }
    }
    inspect_datasets(&mut s, &m);
    inspect_streams(&mut s, store, &m);
    s
}

/// The static datasets the job loaded: name, where the records came from,
/// content hash. A checkpoint written before sources were recorded shows
/// the datasets its identity compares, without a source.
fn inspect_datasets(s: &mut String, m: &Metadata) {
    use std::fmt::Write;
    let Some(id) = &m.identity else { return };
    for (name, d) in &id.loaded_datasets {
        let _ = writeln!(s, "dataset {name}: {} (sha256 {})", d.source, d.hash);
    }
    for (name, hash) in id.datasets.iter().filter(|(n, _)| !id.loaded_datasets.contains_key(*n)) {
        let _ = writeln!(s, "dataset {name}: source not recorded (sha256 {hash})");
    }
}

/// The stateful streams (by name where the job file gives one) and the
/// data checkpoint each holds.
fn inspect_streams(s: &mut String, store: &dyn CheckpointStore, m: &Metadata) {
    use std::fmt::Write;
    let streams = m.identity.as_ref().map(|id| id.stateful.as_slice()).unwrap_or_default();
    if m.identity.is_none() {
        let _ = writeln!(s, "stateful streams: not recorded (a checkpoint from an older Weir)");
    }
    for st in streams {
        let held = if m.state.contains_key(&st.node) { "holds state" } else { "no state checkpointed yet" };
        let _ = writeln!(s, "stateful stream {} (node {}): {held}", st.display_name(), st.node);
    }
    for (node, r) in &m.state {
        let ok = match read_state_in(store, r) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("INVALID: {e}"),
        };
        let name = streams.iter().find(|st| st.node == *node).map(|st| st.display_name());
        let _ = writeln!(
            s,
            "state of stream {}: batch {} ms, {} partition(s), {} key(s), {} bytes, state/{} ({ok})",
            name.unwrap_or_else(|| format!("node {node}")),
            r.time,
            r.partitions,
            r.records,
            r.bytes,
            r.file
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wal::{WalPosition, WalRange};

    #[test]
    fn metadata_of_the_version_before_identities_still_decodes() {
        let v1 = MetadataV1 {
            seq: 7,
            job_hash: "ab".into(),
            job: "job.toml".into(),
            modules: BTreeMap::from([("m.wasm".to_string(), "cd".to_string())]),
            batch_interval_ms: 1000,
            zero_time: 0,
            last_completed: Some(7000),
            pending: vec![8000],
            inputs: BTreeMap::new(),
            cursors: vec![SourceCursor::Next(8)],
            state: BTreeMap::new(),
        };
        let payload = bincode::serde::encode_to_vec(&v1, bincode::config::standard()).unwrap();
        let m = decode_metadata_payload(&payload).unwrap();
        assert_eq!((m.seq, m.last_completed, m.pending.clone(), m.identity.clone()), (7, Some(7000), vec![8000], None));
        // And today's shape round-trips with its identity.
        let mut now = m.clone();
        now.identity = Some(weir_plan::identity::JobIdentity {
            sources: vec!["batches in.jsonl".into()],
            stateful: vec![],
            datasets: BTreeMap::from([("users".to_string(), "ef".to_string())]),
            loaded_datasets: BTreeMap::from([(
                "users".to_string(),
                weir_plan::identity::LoadedDataset { source: "file users.jsonl".into(), hash: "ef".into() },
            )]),
        });
        let payload = bincode::serde::encode_to_vec(&now, bincode::config::standard()).unwrap();
        assert_eq!(decode_metadata_payload(&payload).unwrap(), now);
        // A checkpoint with an identity but written before datasets were
        // recorded decodes, with no datasets.
        let v2 = MetadataV2 {
            seq: 7,
            job_hash: "ab".into(),
            job: "job.toml".into(),
            modules: BTreeMap::new(),
            batch_interval_ms: 1000,
            zero_time: 0,
            last_completed: Some(7000),
            pending: vec![8000],
            inputs: BTreeMap::new(),
            cursors: vec![SourceCursor::Next(8)],
            state: BTreeMap::new(),
            identity: Some(weir_plan::identity::JobIdentityV1 {
                sources: vec!["batches in.jsonl".into()],
                stateful: vec![],
            }),
        };
        let old = bincode::serde::encode_to_vec(&v2, bincode::config::standard()).unwrap();
        let m = decode_metadata_payload(&old).unwrap();
        let id = m.identity.expect("the identity is kept");
        assert_eq!((id.sources, id.datasets.len()), (vec!["batches in.jsonl".to_string()], 0));
        // One written before the datasets' sources were recorded decodes
        // with its datasets and no sources.
        let v3 = MetadataV2 {
            seq: 7,
            job_hash: "ab".into(),
            job: "job.toml".into(),
            modules: BTreeMap::new(),
            batch_interval_ms: 1000,
            zero_time: 0,
            last_completed: Some(7000),
            pending: vec![8000],
            inputs: BTreeMap::new(),
            cursors: vec![SourceCursor::Next(8)],
            state: BTreeMap::new(),
            identity: Some(weir_plan::identity::JobIdentityV2 {
                sources: vec!["batches in.jsonl".into()],
                stateful: vec![],
                datasets: BTreeMap::from([("users".to_string(), "ef".to_string())]),
            }),
        };
        let old = bincode::serde::encode_to_vec(&v3, bincode::config::standard()).unwrap();
        let id = decode_metadata_payload(&old).unwrap().identity.expect("the identity is kept");
        assert_eq!((id.datasets.len(), id.loaded_datasets.len()), (1, 0));
        // Garbage is still refused.
        assert!(decode_metadata_payload(&payload[..payload.len() / 2]).is_err());
    }

    /// Metadata a fenced driver wrote after a newer epoch had written one
    /// at or before its sequence number is never recovered; older epochs'
    /// earlier checkpoints and legacy names stay valid.
    #[test]
    fn a_fenced_drivers_metadata_is_never_recovered() {
        let names = [
            "checkpoint-00000000000000000000",
            "checkpoint-00000000000000000001-e1",
            "checkpoint-00000000000000000002-e2",
            "checkpoint-00000000000000000002-e1",
            "checkpoint-00000000000000000003-e1",
            "checkpoint-00000000000000000004-e2",
            "checkpoint-x",
        ];
        let mut files: Vec<MetadataFile> = names.iter().copied().filter_map(parse_metadata_name).collect();
        files.sort();
        assert_eq!(files.len(), 6);
        let stale: Vec<(u64, u64)> =
            files.iter().filter(|f| stale_metadata(&files, f).is_some()).map(|f| (f.seq, f.epoch)).collect();
        assert_eq!(stale, vec![(2, 1), (3, 1)]);
        assert_eq!((files[0].seq, files[0].epoch), (0, 0));
    }

    /// A metadata checkpoint with these WAL cursors (source by source) and
    /// the WAL ranges of one batch's inputs.
    fn wal_metadata(cursors: &[(u64, u64)], input: &[Vec<WalRange>]) -> Metadata {
        let rec = |ranges: &Vec<WalRange>| InputRecord {
            partitions: 1,
            records: 1,
            descriptor: InputDescriptor::Wal(ranges.clone()),
        };
        Metadata {
            seq: 0,
            job_hash: String::new(),
            job: String::new(),
            modules: BTreeMap::new(),
            batch_interval_ms: 100,
            zero_time: 0,
            last_completed: None,
            pending: vec![100],
            inputs: BTreeMap::from([(100, input.iter().map(rec).collect())]),
            cursors: cursors.iter().map(|&(seq, offset)| SourceCursor::Wal(WalPosition { seq, offset })).collect(),
            state: BTreeMap::new(),
            identity: None,
        }
    }

    /// Segments wholly before the oldest position a kept checkpoint names
    /// (a cursor or a pending batch's range) are deleted, source by source;
    /// the rest stay.
    #[test]
    fn wal_segments_before_every_kept_checkpoint_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let wal_root = wal_dir(dir.path());
        for source in 0..2 {
            let mut w = wal::WalWriter::with_segment_bytes(&wal_root, source, 1, None).unwrap();
            for i in 0..6 {
                w.append(&[format!("line {i}")]).unwrap();
            }
        }
        let store = LocalDir::new(dir.path());
        let r = |seq| WalRange { seq, start: 0, end: 14 };
        let older = wal_metadata(&[(3, 0), (1, 14)], &[vec![r(2)], vec![r(0), r(1)]]);
        let newer = wal_metadata(&[(4, 14), (2, 0)], &[vec![r(3), r(4)], vec![r(2)]]);
        let mut kept = VecDeque::from([older, newer]);
        gc::collect_garbage(&store, Some(&wal_root), &kept, 2, &mut gc::Known::default());
        assert_eq!(wal::segments(&wal_root, 0), vec![2, 3, 4, 5], "source 0: the older batch's range is in 2");
        assert_eq!(wal::segments(&wal_root, 1), (0..6).collect::<Vec<_>>(), "source 1: a range in 0");
        kept.pop_front();
        gc::collect_garbage(&store, Some(&wal_root), &kept, 1, &mut gc::Known::default());
        assert_eq!(wal::segments(&wal_root, 0), vec![3, 4, 5]);
        assert_eq!(wal::segments(&wal_root, 1), vec![2, 3, 4, 5]);
        // What is left reads on from the oldest cursor.
        let (lines, _) = wal::read_from(&wal_root, 1, WalPosition { seq: 2, offset: 0 }).unwrap();
        assert_eq!(lines, ["line 2", "line 3", "line 4", "line 5"]);
    }

    #[test]
    fn object_store_urls_and_local_paths() {
        assert_eq!(object_store_url(Path::new("s3://b/p/")).as_deref(), Some("s3://b/p"));
        assert!(is_object_store_url("gs://b") && is_object_store_url("az://c/x"));
        assert!(!is_object_store_url("s3://") && !is_object_store_url("/tmp/s3://x") && !is_object_store_url("ckpt"));
        assert_eq!(object_store_url(Path::new("file:///tmp/c")), None);
        assert_eq!(local_path(Path::new("file:///tmp/c")), PathBuf::from("/tmp/c"));
        assert_eq!(local_path(Path::new("rel/dir")), PathBuf::from("rel/dir"));
    }
}
