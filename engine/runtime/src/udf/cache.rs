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

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
                memo.put(hash, &code);
                return Ok((code, CompiledFrom::Cache));
            }
            Err(e) => tracing::warn!(file = %file.display(), "compiled code cache entry refused, recompiling: {e:#}"),
        }
    }
    let code = T::compile(engine, binary).map_err(|e| UdfErrorKind::Malformed(format!("{e:#}")))?;
    if let Some(file) = file {
        if let Err(e) = store(&code, &file) {
            tracing::warn!(file = %file.display(), "cannot cache the compiled code: {e}");
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
