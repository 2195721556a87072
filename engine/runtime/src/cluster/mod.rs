//! Executors as processes: `local-cluster[N]` (N executor processes on this
//! machine) and executors on other machines (`weir executor --driver`), all
//! driven by the same scheduler through [`driver::ClusterBackend`].
//! The protocol is in [`protocol`] (and `docs/cluster.md`); blocks move
//! between processes through [`block_server`].

pub mod block_server;
pub mod driver;
pub mod executor;
pub mod protocol;

pub use driver::{find_executor_binary, ClusterBackend, ClusterConfig, SendStats};

/// The cluster secret from `WEIR_SECRET` or a file.
pub fn secret_from(file: Option<&std::path::Path>) -> std::io::Result<Option<Vec<u8>>> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)?;
        return Ok(Some(s.trim().as_bytes().to_vec()));
    }
    Ok(std::env::var("WEIR_SECRET").ok().filter(|s| !s.is_empty()).map(|s| s.into_bytes()))
}
