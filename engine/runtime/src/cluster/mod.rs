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

/// The cluster secret from a file (trimmed) or `WEIR_SECRET`. An empty or
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
        let s = std::fs::read_to_string(f)?;
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
