//! Reading the files a job names (the job file, modules, `batches` files)
//! with a size limit. Only regular files are read (after following
//! symlinks): a device such as `/dev/zero` would be read until memory runs
//! out, and opening a FIFO waits for a writer for ever. The size is checked
//! before reading and enforced while reading (the file may grow meanwhile).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file (it is {0}); only regular files are read")]
    NotRegular(&'static str),
    #[error("the file is {size} bytes or more, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
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

/// Reads the regular file `path`, at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    // Checked before opening: opening a FIFO blocks.
    let size = check_regular(path, limit)?;
    // Non-blocking, so that a name swapped for a FIFO after the check does
    // not block the open; a regular file reads the same either way.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
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
