//! Compiled code, kept: in the process (by module hash) and on disk.
//!
//! Compiling a module with Cranelift costs a few hundred milliseconds for a
//! small Rust UDF and tens of seconds for an interpreter-sized component, and
//! the same bytes are compiled again and again without a cache: by each
//! `weir run`, by every executor process of a `local-cluster` or a cluster,
//! by each new incarnation of an executor that rejoins a (new) driver, and by
//! a driver that restarts on another host. So compiled code is kept twice:
//!
//! - in the process, by SHA-256 (a `Memo` in the shared runtime), so a new
//!   job, registry or executor incarnation in the same process never compiles
//!   a module the process has compiled before;
//! - on disk, under [`cache_root`], so the next process loads it in
//!   milliseconds. Each file is named by the module's SHA-256 and a hash of
//!   everything that makes compiled code differ (wasmtime's version and
//!   configuration as wasmtime hashes them, Weir's version), written under a
//!   temporary name and renamed into place, so it is never seen half-written.
//!   An entry wasmtime refuses (another version, a damaged file) is compiled
//!   afresh and rewritten. Deleting the directory is always safe.
//!
//! The disk cache is bounded ([`cache_max_bytes`]: `WEIR_CACHE_MAX_BYTES`,
//! or `cache_max_bytes` in `weir serve`'s `serve.toml`; 2 GiB by default),
//! since a long-running `weir serve` compiles every tenant's modules. Entries
//! go least recently used first: a load sets an entry's modification time
//! to now, and after each write the oldest entries (by modification time)
//! are deleted until the cache fits ([`evict`]). Several processes share one
//! cache without a lock: an entry deleted under another process costs that
//! process a recompilation, never an error (a loaded entry is mapped, and a
//! mapping outlives the file's name; one deleted before it is opened is
//! simply compiled again).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::{ModuleHash, UdfErrorKind};

/// How compiled code was obtained (for `weir udf check` and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledFrom {
    /// Compiled now (and written to the disk cache when there is one).
    Compiled,
    /// Loaded from the on-disk cache.
    Cache,
    /// Already compiled by this process (another job, registry or executor
    /// incarnation loaded the same bytes).
    Process,
}

/// The cache's base directory: `$WEIR_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/weir`, else `$HOME/.cache/weir`. `WEIR_CACHE_DIR` set to
/// the empty string turns the disk cache off (the in-process one stays).
pub fn cache_root() -> Option<PathBuf> {
    match std::env::var_os("WEIR_CACHE_DIR") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d)),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            Some(d) => Some(PathBuf::from(d).join("weir")),
            None => Some(PathBuf::from(std::env::var_os("HOME").filter(|d| !d.is_empty())?).join(".cache/weir")),
        },
    }
}

/// The disk cache's default bound: 2 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 2 << 30;

/// The bound a process set ([`set_cache_max_bytes`]); 0 when none was set.
static CACHE_MAX_BYTES: AtomicU64 = AtomicU64::new(0);

/// Sets this process's bound on the disk cache (`weir serve`'s
/// `cache_max_bytes`), over `WEIR_CACHE_MAX_BYTES`; 0 unsets it (back to
/// the variable or the default). To keep no compiled code on disk, set
/// `WEIR_CACHE_DIR` to the empty string.
pub fn set_cache_max_bytes(bytes: u64) {
    CACHE_MAX_BYTES.store(bytes, Ordering::Relaxed);
}

/// The bound on the disk cache's compiled code, in bytes: what the process
/// set ([`set_cache_max_bytes`]), else `$WEIR_CACHE_MAX_BYTES` (a positive
/// number of bytes), else [`DEFAULT_CACHE_MAX_BYTES`].
pub fn cache_max_bytes() -> u64 {
    match CACHE_MAX_BYTES.load(Ordering::Relaxed) {
        0 => {}
        n => return n,
    }
    let Some(v) = std::env::var_os("WEIR_CACHE_MAX_BYTES") else { return DEFAULT_CACHE_MAX_BYTES };
    match v.to_str().and_then(|v| v.trim().parse::<u64>().ok()).filter(|n| *n > 0) {
        Some(n) => n,
        None => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "WEIR_CACHE_MAX_BYTES={v:?} is not a positive number of bytes; the compiled-code cache keeps \
                     its default bound of {DEFAULT_CACHE_MAX_BYTES} bytes"
                )
            });
            DEFAULT_CACHE_MAX_BYTES
        }
    }
}

/// At most this many compiled modules are kept in a process beyond those
/// its jobs hold (a long-running `weir serve` sees many tenants' modules).
const MEMO_ENTRIES: usize = 64;

/// Compiled code of one kind, by module hash, in this process.
pub(super) struct Memo<T>(Mutex<HashMap<ModuleHash, T>>);

impl<T: Clone> Memo<T> {
    pub(super) fn new() -> Self {
        Memo(Mutex::new(HashMap::new()))
    }

    fn get(&self, hash: &ModuleHash) -> Option<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(hash).cloned()
    }

    fn put(&self, hash: &ModuleHash, code: &T) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MEMO_ENTRIES && !map.contains_key(hash) {
            // Which entry goes does not matter for correctness (a module
            // dropped here is compiled or loaded from disk again if needed).
            if let Some(k) = map.keys().next().copied() {
                map.remove(&k);
            }
        }
        map.insert(*hash, code.clone());
    }
}

/// What can be compiled and cached: core modules and components.
pub(super) trait Compiled: Clone + Sized {
    /// The disk cache's subdirectory for this kind.
    const DIR: &'static str;
    fn compile(engine: &Engine, binary: &[u8]) -> wasmtime::Result<Self>;
    /// # Safety
    /// `file` must hold wasmtime's own serialization of this kind (see
    /// `compiled`).
    unsafe fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Self>;
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
}

impl Compiled for Module {
    const DIR: &'static str = "modules";
    fn compile(engine: &Engine, binary: &[u8]) -> wasmtime::Result<Self> {
        Module::new(engine, binary)
    }
    unsafe fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { Module::deserialize_file(engine, file) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Module::serialize(self)
    }
}

impl Compiled for Component {
    const DIR: &'static str = "components";
    fn compile(engine: &Engine, binary: &[u8]) -> wasmtime::Result<Self> {
        Component::new(engine, binary)
    }
    unsafe fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { Component::deserialize_file(engine, file) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
}

/// The disk cache's directory for compiled code of kind `T`.
pub(super) fn cache_dir_of<T: Compiled>() -> Option<PathBuf> {
    Some(cache_root()?.join(T::DIR))
}

/// The cache file of `hash`: its hash, and a hash of everything that makes
/// compiled code differ.
fn cache_file<T: Compiled>(engine: &Engine, hash: &ModuleHash) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    Some(cache_dir_of::<T>()?.join(format!("{}-{:016x}.cwasm", hash.hex(), h.finish())))
}

/// `binary` compiled: from this process's memo, else the disk cache, else
/// compiled now (and then kept in both).
pub(super) fn compiled<T: Compiled>(
    engine: &Engine,
    memo: &Memo<T>,
    binary: &[u8],
    hash: &ModuleHash,
) -> Result<(T, CompiledFrom), UdfErrorKind> {
    if let Some(code) = memo.get(hash) {
        return Ok((code, CompiledFrom::Process));
    }
    let file = cache_file::<T>(engine, hash);
    if let Some(file) = file.as_ref().filter(|f| f.is_file()) {
        // SAFETY: deserializing trusts the file to be wasmtime's own output.
        // It is: the cache directory is Weir's, each file is written by
        // `store` below from wasmtime's `serialize` under a temporary name
        // and renamed into place (never seen half-written), and its name is
        // the SHA-256 of the module plus the engine's compatibility hash, so
        // it holds the compilation of exactly these bytes for exactly this
        // engine. wasmtime still checks the header, version and
        // configuration, and a file it refuses is compiled afresh.
        match unsafe { T::deserialize(engine, file) } {
            Ok(code) => {
                touch(file);
                memo.put(hash, &code);
                return Ok((code, CompiledFrom::Cache));
            }
            // Evicted by another process between the check and the open.
            Err(_) if !file.exists() => {
                tracing::debug!(file = %file.display(), "compiled code cache entry evicted meanwhile, recompiling")
            }
            Err(e) => tracing::warn!(file = %file.display(), "compiled code cache entry refused, recompiling: {e:#}"),
        }
    }
    let code = T::compile(engine, binary).map_err(|e| UdfErrorKind::Malformed(format!("{e:#}")))?;
    if let Some(file) = file {
        match store(&code, &file) {
            Ok(()) => {
                // The cache's root: the kind's directory's parent.
                if let Some(root) = file.parent().and_then(Path::parent) {
                    if let Err(e) = evict(root, cache_max_bytes(), &file) {
                        tracing::warn!(dir = %root.display(), "cannot bound the compiled code cache: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!(file = %file.display(), "cannot cache the compiled code: {e}"),
        }
    }
    memo.put(hash, &code);
    Ok((code, CompiledFrom::Compiled))
}

fn store<T: Compiled>(code: &T, file: &Path) -> io::Result<()> {
    let bytes = code.serialize().map_err(|e| io::Error::other(format!("{e:#}")))?;
    let dir = file.parent().ok_or_else(|| io::Error::other("no cache directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, &bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// Marks a cache entry as just used (its modification time: what eviction
/// orders by). A failure only makes it look older.
fn touch(file: &Path) {
    let now = SystemTime::now();
    if let Err(e) = std::fs::File::open(file).and_then(|f| f.set_modified(now)) {
        tracing::debug!(file = %file.display(), "cannot mark the cache entry as used: {e}");
    }
}

/// What [`evict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Entries deleted, oldest first.
    pub files: Vec<PathBuf>,
    /// The cache's size afterwards, in bytes (entries only).
    pub bytes: u64,
}

/// Deletes the least recently used entries (`*.cwasm` under `root`'s
/// `modules/` and `components/`, oldest modification time first) until they
/// hold at most `max_bytes`, never `keep` (the entry just written: the
/// newest stays even alone over the bound). An entry another process
/// deleted meanwhile counts as deleted; temporary files of writes in
/// progress are not entries.
pub fn evict(root: &Path, max_bytes: u64, keep: &Path) -> io::Result<Evicted> {
    let mut entries: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
    for dir in [<Module as Compiled>::DIR, <Component as Compiled>::DIR] {
        let rd = match std::fs::read_dir(root.join(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd.filter_map(Result::ok) {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "cwasm") {
                continue;
            }
            // Gone since the listing: another process evicted it.
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() {
                entries.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), path, meta.len()));
            }
        }
    }
    let mut total: u64 = entries.iter().map(|(_, _, n)| n).sum();
    let mut out = Evicted::default();
    if total <= max_bytes {
        out.bytes = total;
        return Ok(out);
    }
    entries.sort();
    for (_, path, len) in entries {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot evict a compiled code cache entry: {e}");
                continue;
            }
        }
        total -= len;
        out.files.push(path);
    }
    out.bytes = total;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An entry of `len` bytes used `age_s` seconds before `now`.
    fn entry(root: &Path, kind: &str, name: &str, len: usize, now: SystemTime, age_s: u64) -> PathBuf {
        let dir = root.join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{name}.cwasm"));
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(now - Duration::from_secs(age_s)).unwrap();
        p
    }

    #[test]
    fn the_least_recently_used_entries_go_first_across_kinds_and_the_newest_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let now = SystemTime::now();
        let oldest = entry(root, "modules", "a", 400, now, 50);
        let old = entry(root, "components", "b", 400, now, 40);
        let used = entry(root, "modules", "c", 400, now, 30);
        let newest = entry(root, "modules", "d", 400, now, 0);
        // A write in progress (another process's temporary file): not an entry.
        std::fs::write(root.join("modules").join(".tmpXYZ"), vec![0u8; 4000]).unwrap();
        // Under the bound: nothing goes.
        assert_eq!(evict(root, 1600, &newest).unwrap(), Evicted { files: vec![], bytes: 1600 });
        // `used` is loaded now (touched): it becomes the newest but one.
        touch(&used);
        let e = evict(root, 900, &newest).unwrap();
        assert_eq!(e.files, vec![oldest.clone(), old.clone()]);
        assert_eq!(e.bytes, 800);
        assert!(!oldest.exists() && !old.exists() && used.exists() && newest.exists());
        // The newest stays even alone over the bound.
        let e = evict(root, 10, &newest).unwrap();
        assert_eq!(e.files, vec![used.clone()]);
        assert!(newest.exists() && e.bytes == 400);
        assert!(root.join("modules").join(".tmpXYZ").exists());
    }

    #[test]
    fn entries_gone_before_the_listing_and_a_missing_directory_are_not_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let now = SystemTime::now();
        let gone = entry(root, "modules", "a", 500, now, 20);
        let newest = entry(root, "modules", "b", 500, now, 0);
        // Deleted by another process before this one lists the cache.
        std::fs::remove_file(&gone).unwrap();
        assert_eq!(evict(root, 600, &newest).unwrap().bytes, 500);
        // A cache directory that does not exist yet is an empty cache.
        assert_eq!(evict(&root.join("none"), 1, &newest).unwrap(), Evicted::default());
    }
}
