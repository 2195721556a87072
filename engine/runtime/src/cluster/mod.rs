//! Executors as processes: `local-cluster[N]` (N executor processes on this
//! machine) and executors on other machines (`weir executor --driver`), all
//! driven by the same scheduler through [`driver::ClusterBackend`].
//! The protocol is in [`protocol`] (and `docs/cluster.md`); blocks move
//! between processes through [`block_server`].

pub mod block_server;
pub mod driver;
pub mod executor;
pub mod gate;
pub mod protocol;

pub use driver::{
    find_executor_binary, ClusterBackend, ClusterConfig, PoolExecutor, PoolJobTasks, SendStats, SharedCluster,
    DEFAULT_LOCALITY_WAIT,
};

/// The largest secret file read.
const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;

/// The cluster secret from a file (trimmed; a regular file of at most
/// 64 KiB) or `WEIR_SECRET`. An empty or
/// whitespace-only secret is an error, never a secret: anyone could prove
/// they know it.
pub fn secret_from(file: Option<&std::path::Path>) -> std::io::Result<Option<Vec<u8>>> {
    let empty = |what: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} is empty: a cluster secret cannot be empty"),
        )
    };
    if let Some(f) = file {
        // A regular file, bounded: `/dev/zero` or a FIFO given by mistake is
        // refused, not read for ever.
        let bytes = crate::files::read_limited(f, MAX_SECRET_FILE_BYTES).map_err(|e| match e {
            crate::files::ReadError::Io(e) => e,
            other => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the secret file {}: {other}", f.display()),
            ),
        })?;
        let s = String::from_utf8(bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the secret file {} is not UTF-8 text", f.display()),
            )
        })?;
        if s.trim().is_empty() {
            return Err(empty(format!("the secret file {}", f.display())));
        }
        return Ok(Some(s.trim().as_bytes().to_vec()));
    }
    match std::env::var("WEIR_SECRET") {
        Ok(s) if s.is_empty() => Ok(None),
        Ok(s) if s.trim().is_empty() => Err(empty("WEIR_SECRET".into())),
        Ok(s) => Ok(Some(s.trim().as_bytes().to_vec())),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_file_is_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, " s3cret\n").unwrap();
        assert_eq!(super::secret_from(Some(&f)).unwrap(), Some(b"s3cret".to_vec()));
        let e = super::secret_from(Some(std::path::Path::new("/dev/zero"))).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::write(&f, vec![b'a'; (64 << 10) + 1]).unwrap();
        let e = super::secret_from(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("over the limit"), "{e}");
    }
}
