//! Reading the files a job names (the job file, modules, `batches` files)
//! with a size limit. Only regular files are read (after following
//! symlinks): a device such as `/dev/zero` would be read until memory runs
//! out, and opening a FIFO waits for a writer for ever. The size is checked
//! before reading and enforced while reading (the file may grow meanwhile).
//!
//! A thread may be confined to a directory ([`confine_thread`]): then
//! every file read here must really be inside it, judged on the opened
//! descriptor after every symlink (`/proc/self/fd`), so a link swapped in
//! after a job was checked cannot lead a read out. `weir serve` confines
//! each job's thread to its tenant's root while it loads and runs the job.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A job file problem: where and what (re-exported as
/// `weir::job::JobFileError`; it lives here, at the bottom of the crate,
/// because the crate's error ([`crate::EngineError`]) carries it).
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
#[non_exhaustive]
pub struct JobFileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file (it is {0}); only regular files are read")]
    NotRegular(&'static str),
    #[error("the file is {size} bytes or more, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// This thread is confined to `root` and the file opened is not in it.
    #[error("leads to {}, outside {} (a symlink out of it); not read", real.display(), root.display())]
    OutsideRoot { real: PathBuf, root: PathBuf },
}

/// What kind of file `meta` describes, for an error message.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

thread_local! {
    /// The directory this thread's reads must stay inside (canonical).
    static CONFINED_TO: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Confines this thread's reads through this module to `root` (made
/// canonical; a root that cannot be resolved confines to itself as given,
/// which then holds nothing) until the guard is dropped.
pub fn confine_thread(root: &Path) -> Confined {
    let before = CONFINED_TO.with(|c| c.replace(Some(confinement(root))));
    Confined { before }
}

/// A root as confinement compares it: canonical (so a root reached
/// through a symlink still holds its files), or as given when it cannot be
/// resolved (then nothing is inside it, and every file is refused).
pub(crate) fn confinement(root: &Path) -> PathBuf {
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// Ends a [`confine_thread`] (restoring what was there before).
pub struct Confined {
    before: Option<PathBuf>,
}

impl Drop for Confined {
    fn drop(&mut self) {
        let before = self.before.take();
        CONFINED_TO.with(|c| *c.borrow_mut() = before);
    }
}

/// Where the open `file` (opened as `path`) really is, when that is not
/// inside `root` (canonical); `None` when it is. Judged by the kernel's
/// name for the descriptor, so no symlink swapped in after an earlier
/// check can redirect it; by the canonical `path` where `/proc` is missing.
pub(crate) fn outside_root(file: &File, path: &Path, root: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::os::fd::AsRawFd;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).or_else(|_| path.canonicalize())?;
    Ok((!real.starts_with(root)).then_some(real))
}

/// Refuses `file` when this thread is confined and it is outside the root.
fn check_confined(file: &File, path: &Path) -> Result<(), ReadError> {
    let Some(root) = CONFINED_TO.with(|c| c.borrow().clone()) else { return Ok(()) };
    match outside_root(file, path, &root)? {
        None => Ok(()),
        Some(real) => Err(ReadError::OutsideRoot { real, root }),
    }
}

/// Where `full` (a path under `root`, canonical) really leads when that is
/// outside `root`: the longest existing part of it and its canonical path
/// (symlinks followed). `None` when it stays inside (or nothing of it
/// under the root exists yet).
pub fn resolves_outside(root: &Path, full: &Path) -> std::io::Result<Option<(PathBuf, PathBuf)>> {
    let mut existing = full;
    loop {
        if std::fs::symlink_metadata(existing).is_ok() {
            let real = existing.canonicalize()?;
            return Ok((!real.starts_with(root)).then(|| (existing.to_path_buf(), real)));
        }
        match existing.parent() {
            Some(p) if p.starts_with(root) => existing = p,
            _ => return Ok(None),
        }
    }
}

/// `Err` (permission denied, saying where it leads) when `path` (under
/// `root`, canonical) leads outside `root` ([`resolves_outside`]): checked
/// before each write of a confined checkpoint directory, so a directory
/// swapped for a symlink while the job runs leads no write elsewhere.
pub fn check_inside(root: &Path, path: &Path) -> std::io::Result<()> {
    match resolves_outside(root, path)? {
        None => Ok(()),
        Some((at, real)) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} leads to {}, outside {}: not written", at.display(), real.display(), root.display()),
        )),
    }
}

/// Checks that `path` is a regular file of at most `limit` bytes, without
/// opening it.
pub fn check_regular(path: &Path, limit: u64) -> Result<u64, ReadError> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(&meta)));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { size: meta.len(), limit });
    }
    Ok(meta.len())
}

/// Reads the regular file `path`, at most `limit` bytes (the engine's own
/// files: the job file, modules, checkpoints; never confined).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    read_bounded(path, limit, false)
}

/// Reads a data file the job names (a `batches` file, an initial state, a
/// dataset, a Kafka TLS or password file): as [`read_limited`], and inside
/// this thread's confinement when it has one ([`confine_thread`]).
pub fn read_data(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    read_bounded(path, limit, true)
}

fn read_bounded(path: &Path, limit: u64, confined: bool) -> Result<Vec<u8>, ReadError> {
    // Checked before opening: opening a FIFO blocks.
    let size = check_regular(path, limit)?;
    // Non-blocking, so that a name swapped for a FIFO after the check does
    // not block the open; a regular file reads the same either way.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if confined {
        check_confined(&file, path)?;
    }
    // And again on what was opened (the path may have been replaced).
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(&meta)));
    }
    let mut bytes = Vec::with_capacity(size.min(limit) as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confined thread reads data files only inside its root (judged on
    /// the opened file, so through symlinks), engine files anywhere, and
    /// the confinement ends with its guard; other threads never had it.
    #[test]
    fn a_confined_thread_reads_data_only_inside_its_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("in"), b"mine").unwrap();
        std::fs::write(tmp.path().join("secret"), b"theirs").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("in"), root.join("also-in")).unwrap();
        {
            let _c = confine_thread(&root);
            assert_eq!(read_data(&root.join("in"), 10).unwrap(), b"mine");
            assert_eq!(read_data(&root.join("also-in"), 10).unwrap(), b"mine");
            let e = read_data(&root.join("out"), 10).unwrap_err();
            assert!(matches!(e, ReadError::OutsideRoot { .. }), "{e}");
            assert!(e.to_string().contains("secret, outside"), "{e}");
            assert_eq!(read_limited(&root.join("out"), 10).unwrap(), b"theirs", "engine files are not confined");
            let other = std::thread::spawn({
                let out = root.join("out");
                move || read_data(&out, 10).unwrap()
            });
            assert_eq!(other.join().unwrap(), b"theirs", "only this thread is confined");
        }
        assert_eq!(read_data(&root.join("out"), 10).unwrap(), b"theirs", "the guard ended it");
    }

    #[test]
    fn devices_fifos_directories_and_large_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_limited(Path::new("/dev/zero"), 10), Err(ReadError::NotRegular("a character device"))));
        assert!(matches!(read_limited(dir.path(), 10), Err(ReadError::NotRegular("a directory"))));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(read_limited(&fifo, 10), Err(ReadError::NotRegular("a FIFO"))));
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_limited(&f, 10).unwrap(), b"0123456789");
        assert!(matches!(read_limited(&f, 9), Err(ReadError::TooLarge { size: 10, limit: 9 })));
        // Through a symlink, the target counts.
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("/dev/zero", &l).unwrap();
        assert!(matches!(read_limited(&l, 10), Err(ReadError::NotRegular(_))));
    }
}
