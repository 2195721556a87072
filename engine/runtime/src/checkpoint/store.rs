//! Where checkpoint files live. [`CheckpointStore`] is the interface: named
//! blobs, each written atomically and durably, listed by directory. The
//! default, [`LocalDir`], is a directory on a local filesystem; an object
//! store (S3-compatible, through the `object_store` crate) can implement the
//! same four calls. The lease files and the receivers' write-ahead logs are
//! local files beside it (an object store has its own lease, and an
//! append-only log has no object-store equivalent without more design).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use weir_plan::limits::CheckpointBounds;

/// The default bound of a metadata checkpoint file, on disk or as an object
/// (`[checkpoint] max_metadata_bytes`). Metadata is small (a few KiB;
/// pending batches are capped), so a bigger file is corrupt or hostile, and
/// is refused before it is read.
pub const MAX_METADATA_FILE_BYTES: u64 = weir_plan::limits::DEFAULT_MAX_METADATA_BYTES;
/// The default bound of a data checkpoint (`state/` file: every partition of
/// one stateful stream at one time), on disk or as an object
/// (`[checkpoint] max_state_bytes`). Reading one back costs about twice its
/// size (the file, then the decoded partitions), so a bigger one is refused
/// before anything is allocated for it, and a state that would encode bigger
/// is not written (a failed checkpoint write, logged; the job goes on)
/// rather than written and found unreadable at recovery.
pub const MAX_STATE_FILE_BYTES: u64 = weir_plan::limits::DEFAULT_MAX_STATE_BYTES;

/// The error of a checkpoint file over its bound: `size` bytes (declared by
/// a server, or a file's length), more than `limit`, which `setting` sets.
pub fn too_big(what: &str, size: u64, limit: u64, setting: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{what}{size} bytes, more than the {limit} allowed ([checkpoint] {setting} in the job file)"),
    )
}

/// Checkpoint storage: names are `dir/file` (e.g. `metadata/checkpoint-…`).
pub trait CheckpointStore: Send + Sync {
    /// Stores `bytes` under `name`, all or nothing, durably.
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()>;
    fn get(&self, name: &str) -> std::io::Result<Vec<u8>>;
    /// The file names in `dir`, sorted (temporary files excluded).
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>>;
    fn delete(&self, name: &str) -> std::io::Result<()>;
    /// Where `name` is, for messages (a path, a URL).
    fn locate(&self, name: &str) -> PathBuf;
    /// The bounds its files are read and written under.
    fn bounds(&self) -> CheckpointBounds;
}

/// A checkpoint directory on a local filesystem: write to a temporary name
/// (`.<name>.<pid>.tmp`), fsync, rename into place, fsync the directory.
pub struct LocalDir {
    root: PathBuf,
    bounds: CheckpointBounds,
    /// Files are read, written and deleted only where their real path is
    /// inside this directory (`weir serve`: the tenant's root).
    confine: Option<PathBuf>,
}

impl LocalDir {
    /// The directory `root`, under the default bounds.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir::with_bounds(root, CheckpointBounds::default())
    }

    /// The directory `root`, its files read and written under `bounds`.
    pub fn with_bounds(root: impl Into<PathBuf>, bounds: CheckpointBounds) -> Self {
        LocalDir { root: root.into(), bounds, confine: None }
    }

    /// This directory, its files read, written and deleted only where
    /// their real path (symlinks followed, checked at each) is inside
    /// `root` (canonical); elsewhere the operation fails.
    pub fn confined(mut self, root: Option<PathBuf>) -> Self {
        self.confine = root;
        self
    }

    fn check(&self, path: &Path) -> std::io::Result<()> {
        match &self.confine {
            Some(root) => crate::files::check_inside(root, path),
            None => Ok(()),
        }
    }
}

/// Fsyncs a directory, so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    synced::record(dir);
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, with every directory it creates made durable in its
/// parent (the parent fsynced after the create): files committed into a new
/// directory must not vanish with it in a crash because its own name was
/// never written out. Directories that exist already are left as they are.
pub fn create_dir_all_durable(dir: &Path) -> std::io::Result<()> {
    create_dir_all_durable_mode(dir, 0o777)
}

/// [`create_dir_all_durable`], each directory it creates made with `mode`
/// (less the umask).
pub fn create_dir_all_durable_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut d = dir;
    // An empty parent is the working directory, which exists.
    while !d.as_os_str().is_empty() && !d.is_dir() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(m) {
            Ok(()) => {}
            // Made meanwhile by another writer: its name may not be durable
            // yet either, so the parent is synced all the same.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && m.is_dir() => {}
            Err(e) => return Err(e),
        }
        sync_dir(parent_or_cwd(m))?;
    }
    Ok(())
}

/// A path's parent directory, `.` for a bare relative name.
fn parent_or_cwd(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The directories this thread fsynced, for tests of what is made durable
/// (unit tests only).
#[cfg(test)]
pub(crate) mod synced {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local!(static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) });

    pub(crate) fn record(dir: &Path) {
        SYNCED.with(|s| s.borrow_mut().push(dir.to_path_buf()));
    }

    /// The directories fsynced on this thread since the last call.
    pub(crate) fn take() -> Vec<PathBuf> {
        SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }
}

/// Crash injection for fault tests (cargo feature `failpoints`, off in
/// release builds users run): `WEIR_CRASH_AT_CHECKPOINT_WRITE=N` aborts the
/// process halfway through its N-th checkpoint file write; with
/// `WEIR_CRASH_MARKER=path` only once (the marker file records that it did).
#[cfg(feature = "failpoints")]
fn crash_injection_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let Some(n) = std::env::var("WEIR_CRASH_AT_CHECKPOINT_WRITE").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return false;
    };
    if WRITES.fetch_add(1, Ordering::Relaxed) + 1 != n {
        return false;
    }
    match std::env::var_os("WEIR_CRASH_MARKER") {
        Some(marker) => std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok(),
        None => true,
    }
}

#[cfg(not(feature = "failpoints"))]
fn crash_injection_due() -> bool {
    false
}

impl CheckpointStore for LocalDir {
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.root.join(name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // This process's own temporary name: a driver fenced in the middle
        // of a write must not truncate a newer driver's file of that name.
        let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
        self.check(&dir)?;
        // Made new (O_EXCL): a symlink left at the temporary name is not
        // followed, it is removed (a leftover of this pid, or planted).
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_file(&tmp)?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if crash_injection_due() {
            // Die with half a file written: what a power cut or SIGKILL leaves.
            let _ = f.write_all(&bytes[..bytes.len() / 2]);
            let _ = f.sync_all();
            std::process::abort();
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    }
    fn get(&self, name: &str) -> std::io::Result<Vec<u8>> {
        // Not `fs::read`: it allocates whatever length the file has. The
        // length is checked first, on the open handle, and the read is cut
        // one byte past the bound in case the file grows meanwhile.
        let (limit, setting) = self.bounds.max_file_bytes(name);
        self.check(&self.root.join(name))?;
        let f = std::fs::File::open(self.root.join(name))?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"));
        }
        if meta.len() > limit {
            return Err(too_big("", meta.len(), limit, setting));
        }
        let mut out = Vec::with_capacity(meta.len() as usize);
        f.take(limit + 1).read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("grew past the {limit} bytes allowed while it was read"),
            ));
        }
        Ok(out)
    }
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        self.check(&self.root.join(dir))?;
        let mut v: Vec<String> = std::fs::read_dir(self.root.join(dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        Ok(v)
    }
    fn delete(&self, name: &str) -> std::io::Result<()> {
        // (`remove_file` never follows a link: the directory is what counts.)
        let path = self.root.join(name);
        self.check(path.parent().unwrap_or(&self.root))?;
        std::fs::remove_file(path)
    }
    fn locate(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    fn bounds(&self) -> CheckpointBounds {
        self.bounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_directories_durably_syncs_the_parent_of_each_one_created() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        synced::take();
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        let want: Vec<PathBuf> = ["", "a", "a/b"].iter().map(|p| tmp.path().join(p)).collect();
        assert_eq!(synced::take(), want);
        create_dir_all_durable(&deep).unwrap();
        assert!(synced::take().is_empty(), "nothing created, nothing synced");
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        assert!(create_dir_all_durable(&tmp.path().join("file/x")).is_err(), "a file in the way is an error");
    }

    #[test]
    fn a_confined_directory_writes_reads_and_deletes_nothing_through_a_link_out_of_its_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(root.join("ckpt/metadata")).unwrap();
        std::fs::create_dir_all(other.join("metadata")).unwrap();
        let root = root.canonicalize().unwrap();
        let dir = LocalDir::new(root.join("ckpt")).confined(Some(root.clone()));
        dir.put("metadata/a", b"inside").unwrap();
        assert_eq!(dir.get("metadata/a").unwrap(), b"inside");

        // A file of the directory swapped for a link to another's file.
        std::fs::write(other.join("secret"), b"secret").unwrap();
        std::fs::remove_file(root.join("ckpt/metadata/a")).unwrap();
        std::os::unix::fs::symlink(other.join("secret"), root.join("ckpt/metadata/a")).unwrap();
        let e = dir.get("metadata/a").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        // A link planted at the temporary name is not followed.
        let tmp_name = root.join(format!("ckpt/metadata/.b.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(other.join("secret"), &tmp_name).unwrap();
        dir.put("metadata/b", b"mine").unwrap();
        assert_eq!(std::fs::read(other.join("secret")).unwrap(), b"secret");

        // The directory itself swapped for a link: nothing goes through it.
        std::fs::rename(root.join("ckpt/metadata"), root.join("old")).unwrap();
        std::os::unix::fs::symlink(other.join("metadata"), root.join("ckpt/metadata")).unwrap();
        let e = dir.put("metadata/c", b"leak").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("outside") && e.to_string().contains("other"), "{e}");
        assert!(dir.list("metadata").is_err());
        std::fs::write(other.join("metadata/d"), b"theirs").unwrap();
        assert!(dir.delete("metadata/d").is_err());
        assert_eq!(std::fs::read_dir(other.join("metadata")).unwrap().count(), 1, "only their own file");
        // Unconfined, the same directory follows the link (what `weir run` does with a user's own links).
        LocalDir::new(root.join("ckpt")).put("metadata/e", b"x").unwrap();
        assert!(other.join("metadata/e").exists());
    }
}
