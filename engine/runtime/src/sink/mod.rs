//! Output operations: what happens to each batch's result.
//!
//! * `print` — Spark's format on stdout: a dashed line, `Time: <ms> ms`, a
//!   dashed line, the first `num` records, `...` if there are more, a blank
//!   line. At-least-once: a batch re-run after a crash prints again. A
//!   failed write fails the batch, except a closed pipe (`| head`).
//! * `save_as_text_files` — `prefix-<time>[.suffix]/part-NNNNN`, one record per
//!   line. The batch is written into a temporary directory next to the target
//!   and renamed into place, so a batch's output appears whole or not at all,
//!   and a re-run batch replaces it: exactly one copy per batch time.
//!   With an object-store prefix (`s3://bucket/out/totals`, cargo feature
//!   `object-store`) there is no rename: each part is one object (one PUT),
//!   and `_SUCCESS` is written last — a reader that waits for `_SUCCESS` never
//!   sees half a batch, and a re-run batch overwrites the same keys.
//! * `kafka` — each record's text produced to a Kafka topic (`sink/kafka.rs`,
//!   behind the `kafka` feature). At-least-once: headers let readers drop
//!   the copies a re-run batch produces.
//! * `collect` — keeps the records in memory, decoded (Rust API, tests).
//! * `foreach_rdd` — hands each batch's encoded partitions to a function on
//!   the driver (Rust API): Spark's `foreachRDD`, for custom sinks and for
//!   consumers that read the records in place without decoding them.

#[cfg(feature = "kafka")]
mod kafka;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use weir_codec::{display::render, Records, Value};
pub use weir_plan::sink::OutputSpec;

/// Records collected by a `collect` output: `(batch time, records)`.
pub type Collected = Arc<Mutex<Vec<(i64, Vec<Value>)>>>;

/// A `foreach_rdd` function: gets the batch time and the batch's partitions
/// (each an encoded batch, `docs/udf-abi.md` §2, readable with
/// `weir::codec::Records`), in partition order. An `Err` fails the batch with
/// that message.
pub type ForeachRdd = Arc<dyn Fn(i64, &[Vec<u8>]) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("malformed record in output: {0}")]
    Malformed(String),
    #[error("foreach_rdd at batch {time} ms: {message}")]
    Foreach { time: i64, message: String },
    /// A Kafka output failed (a missing topic, an unreachable broker past
    /// its timeout, a produce refused).
    #[error("{0}")]
    Kafka(String),
    /// An embedder's sink failed.
    #[error("{0}")]
    Custom(String),
    /// Outputs kept failing: more batches are pending than the run keeps.
    #[error(
        "{count} batches are pending because their outputs failed ({oldest} ms to {newest} ms; the last error: \
         {last}); the run stops past {limit} (--max-pending-batches) rather than keep their inputs and lineage \
         without bound: fix the output and restart (with the same --checkpoint the pending batches are re-run)"
    )]
    TooManyPending { count: usize, limit: usize, oldest: i64, newest: i64, last: String },
    /// The commit was refused: another driver took the checkpoint location
    /// over (`checkpoint::fence`). Never retried.
    #[error("{0}")]
    Fenced(String),
    /// The output directory leads out of the directory the run's outputs
    /// are confined to (a symlink put in its place). Never retried.
    #[error("{dir} leads to {real}, outside the tenant's root {root} (a symlink); not written")]
    OutsideRoot { dir: PathBuf, real: PathBuf, root: PathBuf },
}

/// Runs an output's commit step — the rename that publishes a batch, a
/// `_SUCCESS` object — through the driver's fence, or directly.
pub type CommitGate<'a> = &'a dyn Fn(&mut dyn FnMut() -> Result<(), SinkError>) -> Result<(), SinkError>;

/// The gate of a driver without a checkpoint: every commit runs.
pub fn ungated(commit: &mut dyn FnMut() -> Result<(), SinkError>) -> Result<(), SinkError> {
    commit()
}

impl SinkError {
    /// Whether writing again may succeed: I/O (a full disk, a lost
    /// connection) and an embedder's sink may; a malformed result fails the
    /// same way every time, and a `foreach_rdd` function's `Err` is that
    /// function's decision, so neither is retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Io { .. } | SinkError::Custom(_))
    }
}

/// Spark's `print()` block for one batch.
pub fn format_print(time: i64, partitions: &[Vec<u8>], num: usize) -> String {
    let mut s = String::new();
    s.push_str("-------------------------------------------\n");
    s.push_str(&format!("Time: {time} ms\n"));
    s.push_str("-------------------------------------------\n");
    let mut shown = 0;
    'outer: for p in partitions {
        let Ok(recs) = Records::new(p) else { continue };
        for r in recs {
            let Ok(r) = r else { continue };
            if shown == num {
                s.push_str("...\n");
                break 'outer;
            }
            s.push_str(&render(r));
            s.push('\n');
            shown += 1;
        }
    }
    s.push('\n');
    s
}

/// The directory a batch's text files go to.
pub fn batch_dir(base: &Path, prefix: &str, suffix: Option<&str>, time: i64) -> PathBuf {
    let name = match suffix {
        Some(s) if !s.is_empty() => format!("{prefix}-{time}.{s}"),
        _ => format!("{prefix}-{time}"),
    };
    base.join(name)
}

/// Writes `prefix-<time>[.suffix]/part-NNNNN` atomically (write to a temporary
/// directory, fsync, rename into place; an existing directory from an earlier
/// run of the same batch is replaced).
pub fn save_as_text_files(
    base: &Path,
    prefix: &str,
    suffix: Option<&str>,
    time: i64,
    partitions: &[Vec<u8>],
) -> Result<PathBuf, SinkError> {
    save_as_text_files_gated(base, prefix, suffix, time, partitions, &ungated)
}

/// [`save_as_text_files`], its rename into place run through `gate`.
fn save_as_text_files_gated(
    base: &Path,
    prefix: &str,
    suffix: Option<&str>,
    time: i64,
    partitions: &[Vec<u8>],
    gate: CommitGate,
) -> Result<PathBuf, SinkError> {
    let target = batch_dir(base, prefix, suffix, time);
    let parent = target.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SinkError::Io { path, source }
    };
    crate::checkpoint::store::create_dir_all_durable(&parent).map_err(io(&parent))?;
    // Leftovers of an earlier attempt at this batch by a driver that died.
    let (tmp_prefix, old_prefix) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    remove_leftovers(&parent, |n| n.starts_with(&tmp_prefix) || n.starts_with(&old_prefix));
    write_batch_dir(&parent, &name, &target, partitions, gate)
}

/// Removes the entries of `dir` whose names `is_leftover` picks.
fn remove_leftovers(dir: &Path, is_leftover: impl Fn(&str) -> bool) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        if is_leftover(&e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether `name` is a temporary or replaced directory that a writer of
/// `stem-<time>[.suffix]` leaves when it dies: `.stem-<time>[.suffix].tmp-<pid>`
/// or `.old-<pid>`.
fn is_batch_leftover(name: &str, stem: &str, suffix: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_prefix(stem)).and_then(|n| n.strip_prefix('-')) else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let mut rest = &rest[digits..];
    if let Some(s) = suffix.filter(|s| !s.is_empty()) {
        match rest.strip_prefix('.').and_then(|r| r.strip_prefix(s)) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    let pid = rest.strip_prefix(".tmp-").or_else(|| rest.strip_prefix(".old-"));
    pid.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes a batch's directory `parent/name` (= `target`) through a temporary
/// directory, without looking for leftovers of other writers.
/// The rename into place (and its fsync) runs through `gate`: it is the commit.
fn write_batch_dir(
    parent: &Path,
    name: &str,
    target: &Path,
    partitions: &[Vec<u8>],
    gate: CommitGate,
) -> Result<PathBuf, SinkError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SinkError::Io { path, source }
    };
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    // A failed attempt (a full disk) leaves nothing behind: the batch stays
    // pending and is written again later.
    // The rename is durable only once the directory is: a failure there
    // fails the batch (its re-run replaces the copy).
    let mut commit = || {
        publish(parent, name, &tmp, target)?;
        crate::checkpoint::store::sync_dir(parent).map_err(io(parent))
    };
    let written = write_parts(&tmp, partitions).and_then(|()| gate(&mut commit));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    Ok(target.to_path_buf())
}

/// Writes each partition as `part-NNNNN` and `_SUCCESS` into `tmp`, fsynced.
/// Parts are rendered and written on up to one thread per core (the job's
/// tasks are done, so the cores are free): the output of a batch would
/// otherwise be one core's serial work in every batch.
fn write_parts(tmp: &Path, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = crate::cores().min(partitions.len()).max(1);
    let worker = || -> Result<(), SinkError> {
        let mut text = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(p) = partitions.get(i) else { return Ok(()) };
            text.clear();
            render_lines_into(p, &mut text)?;
            write_part(&tmp.join(format!("part-{i:05}")), &text)?;
        }
    };
    let results: Vec<Result<(), SinkError>> = if threads == 1 {
        vec![worker()]
    } else {
        // This thread is one of the writers: one thread fewer to start per batch.
        std::thread::scope(|s| {
            let hs: Vec<_> = (1..threads).map(|_| s.spawn(worker)).collect();
            let mine = worker();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(SinkError::Custom("a part writer panicked".into()))))
                .chain([mine])
                .collect()
        })
    };
    results.into_iter().collect::<Result<(), _>>()?;
    let success = tmp.join("_SUCCESS");
    std::fs::File::create(&success).map_err(|source| SinkError::Io { path: success.clone(), source })?;
    // The parts' names (and `_SUCCESS`) are entries of `tmp`: durable only
    // once `tmp` is, before the rename publishes it.
    crate::checkpoint::store::sync_dir(tmp).map_err(|source| SinkError::Io { path: tmp.to_path_buf(), source })
}

/// One part file, written whole and fsynced.
fn write_part(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let io = |source| SinkError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Appends a partition's records to `out` as text lines, one per record.
fn render_lines_into(partition: &[u8], out: &mut Vec<u8>) -> Result<(), SinkError> {
    let malformed = |e: weir_codec::CodecError| SinkError::Malformed(e.to_string());
    for r in Records::new(partition).map_err(malformed)? {
        weir_codec::display::render_append_bytes(r.map_err(malformed)?, out).map_err(malformed)?;
        out.push(b'\n');
    }
    Ok(())
}

/// Renames `tmp` to `target`. A re-run batch's old copy is moved aside
/// first and put back if the rename fails, so a failure never loses it.
fn publish(parent: &Path, name: &str, tmp: &Path, target: &Path) -> Result<(), SinkError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SinkError::Io { path, source }
    };
    if !target.exists() {
        return std::fs::rename(tmp, target).map_err(io(target));
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    std::fs::rename(target, &old).map_err(io(target))?;
    if let Err(e) = std::fs::rename(tmp, target) {
        let _ = std::fs::rename(&old, target);
        return Err(io(target)(e));
    }
    std::fs::remove_dir_all(&old).map_err(io(&old))
}

/// Decodes a result's partitions, in order.
pub fn decode_partitions(partitions: &[Vec<u8>]) -> Result<Vec<Value>, SinkError> {
    let mut out = Vec::new();
    for p in partitions {
        out.extend(Value::decode_batch(p).map_err(|e| SinkError::Malformed(e.to_string()))?);
    }
    Ok(out)
}

/// Where a batch's result goes: one per output operation of a job. The
/// driver calls `write` once per batch time, in batch order, with the
/// batch's partitions (each an encoded batch, `docs/udf-abi.md` §2). An
/// `Err` fails that batch's output operation; the run goes on.
///
/// After a driver crash a batch may be written again with the same records
/// (its re-run reads exactly the same input): a sink that makes `write`
/// idempotent per batch time (as `save_as_text_files` does, by replacing
/// `prefix-<time>` atomically) gives end-to-end exactly-once output.
pub trait Sink: Send + Sync {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError>;

    /// [`Sink::write`] with its commit step run through `gate` (the driver's
    /// fence: refused once another driver took over). By default the whole
    /// write is the commit; a sink that prepares its output first and
    /// publishes it in one step gates only that step.
    fn write_gated(&self, time: i64, partitions: &[Vec<u8>], gate: CommitGate) -> Result<(), SinkError> {
        gate(&mut || self.write(time, partitions))
    }

    /// This sink writing only under `root` (canonical), checked at every
    /// write, if it writes local files; `None` for the others.
    fn confined(&self, _root: &Path) -> Option<Arc<dyn Sink>> {
        None
    }
}

/// `print`: Spark's block on stdout. At-least-once.
#[derive(Debug, Clone)]
pub struct PrintSink {
    pub num: usize,
}

impl Sink for PrintSink {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        let mut out = std::io::stdout().lock();
        let written = out.write_all(format_print(time, partitions, self.num).as_bytes()).and_then(|()| out.flush());
        match written {
            // stdout closed (a pipe to `head`): the output is the reader's to drop.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            // Anything else (a full disk behind a redirect) loses the output:
            // the batch fails, so it is not recorded as done.
            Err(source) => Err(SinkError::Io { path: PathBuf::from("<stdout>"), source }),
            Ok(()) => Ok(()),
        }
    }
}

/// `save_as_text_files`: `prefix-<time>[.suffix]/part-NNNNN`, atomically.
///
/// Leftovers of writers that died (their temporary directories) are
/// removed once, at the sink's first write, for every batch time: listing
/// the output directory at every batch would cost time that grows with the
/// number of batches ever written.
#[derive(Debug, Clone)]
pub struct TextFilesSink {
    base: PathBuf,
    prefix: String,
    suffix: Option<String>,
    swept: Arc<std::sync::atomic::AtomicBool>,
    /// Writes only where this really is (see [`Sink::confined`]).
    root: Option<PathBuf>,
}

impl TextFilesSink {
    pub fn new(base: PathBuf, prefix: String, suffix: Option<String>) -> TextFilesSink {
        TextFilesSink { base, prefix, suffix, swept: Arc::default(), root: None }
    }
}

impl Sink for TextFilesSink {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        self.write_gated(time, partitions, &ungated)
    }

    /// Only the rename into place (and its fsync) is the commit.
    fn write_gated(&self, time: i64, partitions: &[Vec<u8>], gate: CommitGate) -> Result<(), SinkError> {
        let target = batch_dir(&self.base, &self.prefix, self.suffix.as_deref(), time);
        let parent = target.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Checked before anything is created: a directory swapped for a
        // symlink out of the root would otherwise lead the writes (and the
        // directories made for them) elsewhere. What remains is the moment
        // between this check and the rename.
        if let Some(root) = &self.root {
            match crate::files::resolves_outside(root, &parent) {
                Ok(None) => {}
                Ok(Some((dir, real))) => return Err(SinkError::OutsideRoot { dir, real, root: root.clone() }),
                Err(source) => return Err(SinkError::Io { path: parent, source }),
            }
        }
        crate::checkpoint::store::create_dir_all_durable(&parent)
            .map_err(|source| SinkError::Io { path: parent.clone(), source })?;
        if !self.swept.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let zero = batch_dir(&self.base, &self.prefix, None, 0);
            let zero = zero.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stem = zero.strip_suffix("-0").unwrap_or(&zero);
            remove_leftovers(&parent, |n| is_batch_leftover(n, stem, self.suffix.as_deref()));
        }
        write_batch_dir(&parent, &name, &target, partitions, gate).map(|_| ())
    }

    fn confined(&self, root: &Path) -> Option<Arc<dyn Sink>> {
        Some(Arc::new(TextFilesSink { root: Some(root.to_path_buf()), ..self.clone() }))
    }
}

/// `collect`: decoded records kept in memory (Rust API, tests).
#[derive(Clone)]
pub struct CollectSink(pub Collected);

impl Sink for CollectSink {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        let values = decode_partitions(partitions)?;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((time, values));
        Ok(())
    }
}

/// `foreach_rdd`: a driver-side function gets each batch's partitions.
#[derive(Clone)]
pub struct ForeachSink(pub ForeachRdd);

impl Sink for ForeachSink {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        (self.0)(time, partitions).map_err(|message| SinkError::Foreach { time, message })
    }
}

/// The sink an output spec describes. `base` resolves relative paths;
/// `Collect`, `ForeachRdd` and `Custom` index the context's own lists;
/// `job` names the job in the Kafka output's headers.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
pub fn open(
    spec: &OutputSpec,
    base: &Path,
    job: &str,
    collectors: &[Collected],
    foreach: &[ForeachRdd],
    custom: &[Arc<dyn Sink>],
) -> Result<Arc<dyn Sink>, SinkError> {
    let missing = |what: &str, id: usize| SinkError::Malformed(format!("the job names {what} {id}, which it lacks"));
    Ok(match spec {
        OutputSpec::Print { num } => Arc::new(PrintSink { num: *num }),
        OutputSpec::SaveAsTextFiles { prefix, suffix } if crate::checkpoint::is_object_store_url(prefix) => {
            object_text_files(prefix, suffix.clone())?
        }
        OutputSpec::SaveAsTextFiles { prefix, suffix } => {
            Arc::new(TextFilesSink::new(base.to_path_buf(), prefix.clone(), suffix.clone()))
        }
        OutputSpec::Collect { id } => {
            Arc::new(CollectSink(collectors.get(*id).ok_or(missing("collector", *id))?.clone()))
        }
        OutputSpec::ForeachRdd { id } => {
            Arc::new(ForeachSink(foreach.get(*id).ok_or(missing("foreach_rdd function", *id))?.clone()))
        }
        OutputSpec::Custom { id } => custom.get(*id).ok_or(missing("custom sink", *id))?.clone(),
        #[cfg(feature = "kafka")]
        OutputSpec::Kafka { brokers, topic, client_id, timeout_ms, tls, sasl } => Arc::new(kafka::KafkaSink::new(
            brokers,
            topic,
            client_id.clone(),
            std::time::Duration::from_millis(*timeout_ms),
            job,
            crate::kafka_security::KafkaSecurity::load(tls.as_deref(), sasl.as_deref(), base)
                .map_err(SinkError::Kafka)?,
        )?),
        #[cfg(not(feature = "kafka"))]
        OutputSpec::Kafka { .. } => {
            return Err(SinkError::Kafka(
                "this build of weir has no Kafka support (build the weir crate with the `kafka` feature)".into(),
            ))
        }
    })
}

#[cfg(feature = "object-store")]
enum PartError {
    Io(std::io::Error),
    Sink(SinkError),
}

/// Renders a partition as text lines into the object `key`, handing the
/// writer a part whenever [`MULTIPART_PART_BYTES`](crate::checkpoint::objstore::MULTIPART_PART_BYTES)
/// have been rendered: a big partition's text is never held whole, and goes
/// up as a multipart upload (a small one as one PUT).
#[cfg(feature = "object-store")]
fn write_object_part(
    store: &crate::checkpoint::objstore::ObjectStoreCheckpoint,
    key: &str,
    partition: &[u8],
) -> Result<(), PartError> {
    use crate::checkpoint::objstore::MULTIPART_PART_BYTES;
    let malformed = |e: weir_codec::CodecError| PartError::Sink(SinkError::Malformed(e.to_string()));
    let mut writer = store.writer(key);
    let mut text = Vec::new();
    for r in Records::new(partition).map_err(malformed)? {
        weir_codec::display::render_append_bytes(r.map_err(malformed)?, &mut text).map_err(malformed)?;
        text.push(b'\n');
        if text.len() >= MULTIPART_PART_BYTES {
            writer.put_part(std::mem::take(&mut text)).map_err(PartError::Io)?;
        }
    }
    writer.finish(text).map_err(PartError::Io)
}

#[cfg(not(feature = "object-store"))]
fn object_text_files(prefix: &str, _suffix: Option<String>) -> Result<Arc<dyn Sink>, SinkError> {
    Err(SinkError::Custom(format!(
        "save_as_text_files to {prefix}: this build of Weir has no object-storage support (cargo feature \
         `weir/object-store`)"
    )))
}

#[cfg(feature = "object-store")]
fn object_text_files(prefix: &str, suffix: Option<String>) -> Result<Arc<dyn Sink>, SinkError> {
    let bad =
        || SinkError::Custom(format!("save_as_text_files: {prefix} needs a name after the bucket (s3://bucket/name)"));
    let (base, name) = prefix.trim_end_matches('/').rsplit_once('/').ok_or_else(bad)?;
    if name.is_empty() || !crate::checkpoint::is_object_store_url(base) {
        return Err(bad());
    }
    let store = crate::checkpoint::objstore::shared(base).map_err(|e| SinkError::Custom(e.to_string()))?;
    Ok(Arc::new(ObjectTextFilesSink { store, name: name.to_string(), suffix }))
}

/// `save_as_text_files` to an object store: `<prefix>-<time>[.suffix]/part-NNNNN`
/// objects, then `_SUCCESS`.
#[cfg(feature = "object-store")]
pub struct ObjectTextFilesSink {
    store: Arc<crate::checkpoint::objstore::ObjectStoreCheckpoint>,
    /// The prefix's last segment (the store is at the rest).
    name: String,
    suffix: Option<String>,
}

#[cfg(feature = "object-store")]
impl Sink for ObjectTextFilesSink {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        self.write_gated(time, partitions, &ungated)
    }

    /// Withdrawing an earlier `_SUCCESS` and writing the new one are the
    /// commits (parts are invisible to readers without `_SUCCESS`).
    fn write_gated(&self, time: i64, partitions: &[Vec<u8>], gate: CommitGate) -> Result<(), SinkError> {
        use crate::checkpoint::CheckpointStore;
        let dir = batch_dir(Path::new(""), &self.name, self.suffix.as_deref(), time).to_string_lossy().into_owned();
        let io = |key: &str| {
            let path = self.store.locate(key);
            move |source| SinkError::Io { path, source }
        };
        let not_found_ok = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        };
        // An earlier attempt's `_SUCCESS` goes first: it must never vouch
        // for a mix of its parts and this attempt's.
        let success = format!("{dir}/_SUCCESS");
        gate(&mut || not_found_ok(self.store.delete(&success)).map_err(io(&success)))?;
        for (i, p) in partitions.iter().enumerate() {
            let key = format!("{dir}/part-{i:05}");
            write_object_part(&self.store, &key, p).map_err(|e| match e {
                PartError::Io(source) => SinkError::Io { path: self.store.locate(&key), source },
                PartError::Sink(e) => e,
            })?;
        }
        // Parts beyond this attempt's, left by an earlier one.
        for n in self.store.list(&dir).map_err(io(&dir))? {
            let extra =
                n.strip_prefix("part-").and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i >= partitions.len());
            if extra {
                let key = format!("{dir}/{n}");
                not_found_ok(self.store.delete(&key)).map_err(io(&key))?;
            }
        }
        gate(&mut || self.store.put(&success, b"").map_err(io(&success)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_stem_time_suffix_and_pid() {
        for (name, suffix, yes) in [
            (".counts-100.tmp-4242", None, true),
            (".counts-100.old-7", None, true),
            (".counts--5.tmp-1", None, true),
            (".counts-100.txt.tmp-1", Some("txt"), true),
            (".counts-100.tmp-1", Some("txt"), false),
            (".counts-100", None, false),
            ("counts-100.tmp-1", None, false),
            (".counts-x-100.tmp-1", None, false),
            (".countsx-100.tmp-1", None, false),
            (".counts-100.tmp-", None, false),
            (".counts-100.tmp-12a", None, false),
            (".other-100.tmp-1", None, false),
        ] {
            assert_eq!(is_batch_leftover(name, "counts", suffix), yes, "{name} with suffix {suffix:?}");
        }
    }

    /// The first write removes what dead writers left for any batch time of
    /// this sink, and nothing of another sink's; later writes do not list
    /// the directory again.
    #[test]
    fn the_first_write_sweeps_every_batch_leftover_of_this_sink_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let names = [".counts-100.tmp-99999", ".counts-200.old-1", ".counts-x-100.tmp-5", ".other-100.tmp-5"];
        for n in names {
            std::fs::create_dir_all(out.join(n).join("sub")).unwrap();
        }
        let sink = TextFilesSink::new(dir.path().to_path_buf(), "out/counts".into(), None);
        let batch = weir_codec::Value::encode_batch(&[weir_codec::Value::str("a")]);
        sink.write(300, std::slice::from_ref(&batch)).unwrap();
        let left: Vec<bool> = names.iter().map(|n| out.join(n).exists()).collect();
        assert_eq!(left, [false, false, true, true], "after the first write");
        assert_eq!(std::fs::read_to_string(out.join("counts-300/part-00000")).unwrap(), "a\n");
        std::fs::create_dir(out.join(".counts-100.tmp-1")).unwrap();
        sink.write(400, &[batch]).unwrap();
        assert!(out.join(".counts-100.tmp-1").exists(), "a later write listed the directory again");
    }

    /// What a crash must not take back once a batch is written: the new
    /// output directories' names, the parts' names in the batch directory
    /// (synced before the rename publishes it), and the rename itself.
    #[test]
    fn a_batch_directory_is_durable_down_to_its_parts_and_up_to_new_parents() {
        use crate::checkpoint::store::synced;
        let dir = tempfile::tempdir().unwrap();
        let sink = TextFilesSink::new(dir.path().to_path_buf(), "out/deep/counts".into(), None);
        let batch = weir_codec::Value::encode_batch(&[weir_codec::Value::str("a")]);
        synced::take();
        sink.write(300, std::slice::from_ref(&batch)).unwrap();
        let out = dir.path().join("out");
        let tmp = out.join("deep").join(format!(".counts-300.tmp-{}", std::process::id()));
        assert_eq!(
            synced::take(),
            [dir.path().to_path_buf(), out.clone(), tmp, out.join("deep")],
            "synced: the parents of the two new directories, the batch directory before its rename, its parent after"
        );
        sink.write(400, &[batch]).unwrap();
        assert_eq!(synced::take().len(), 2, "an existing parent is not synced again");
    }
}
