//! The storage quota while jobs run: a background thread measures, every
//! `storage_check_interval_ms`, the root of each tenant that has live jobs
//! and its jobs' checkpoints and outputs on object storage (a
//! `checkpoint_root`, an `output_root`; listed);
//! a root over `storage_quota_bytes` fails that tenant's live jobs (each
//! stopped after its batch in flight, so its checkpoint is whole, then
//! recorded `failed` with the quota and the usage in its status and log).
//! Other tenants' jobs are not touched.
//!
//! Why a periodic walk rather than per-batch accounting of bytes written:
//! the bytes under a root come from outputs, checkpoints (written and
//! pruned), the socket WAL, temporary files and the job log, all written by
//! the runtime, which has no per-tenant hook; a walk sees all of them and
//! what was deleted, at the cost of one `lstat` per entry. The walk is
//! bounded (entries and a deadline), runs on one thread, and only for
//! tenants with live jobs. A walk cut short counts what it saw: a lower
//! bound, so a job is never failed wrongly, only noticed later.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::server::Server;

/// Entries one walk visits at most.
const WALK_ENTRIES: usize = 1_000_000;
/// How long one tenant's walk may take.
const WALK_DEADLINE: Duration = Duration::from_secs(2);

/// What a walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    /// False when the walk stopped at its entry limit or deadline (then
    /// `bytes` is a lower bound).
    pub complete: bool,
}

/// Bytes of the files under `dir` (symlinks are not followed), visiting at
/// most `max_entries` entries and stopping at `deadline`.
pub fn measure(dir: &Path, max_entries: usize, deadline: Instant) -> Usage {
    let mut bytes = 0u64;
    let mut seen = 0usize;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            seen += 1;
            // The clock is read every 256 entries: cheap, and often enough.
            if seen > max_entries || (seen.is_multiple_of(256) && Instant::now() >= deadline) {
                return Usage { bytes, complete: false };
            }
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if m.is_dir() {
                todo.push(e.path());
            } else {
                bytes = bytes.saturating_add(m.len());
            }
        }
    }
    Usage { bytes, complete: true }
}

/// The message a job over quota ends with.
pub fn over_quota_message(tenant: &str, used: u64, quota: u64) -> String {
    format!(
        "storage quota exceeded: tenant {tenant}'s storage (its root and its jobs' object-store checkpoints and outputs) holds {used} bytes, \
         over its storage_quota_bytes = {quota}; \
         the job was stopped after its batch in flight (its checkpoint is kept)"
    )
}

/// Starts the watch over `server`; it ends when the server is dropped or
/// shuts down.
pub fn spawn_watch(server: Weak<Server>, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("weir-serve-quota".into()).spawn(move || loop {
        // A periodic check, not synchronisation: nothing waits on it.
        std::thread::sleep(interval);
        let Some(s) = server.upgrade() else { return };
        if s.is_shutting_down() {
            return;
        }
        check(&s);
    })?;
    Ok(())
}

/// One round: every tenant with live jobs is measured once.
fn check(s: &Arc<Server>) {
    let cfg = s.config();
    for (tenant, ids) in s.live_jobs_by_tenant() {
        let Some(t) = cfg.tenants.get(&tenant) else { continue };
        let usage = s.storage_usage(&tenant, &t.root, WALK_ENTRIES, Instant::now() + WALK_DEADLINE);
        if !usage.complete {
            tracing::debug!(target: "weir::serve", "tenant {tenant}: storage walk cut short at {} bytes", usage.bytes);
        }
        if usage.bytes > t.storage_quota_bytes {
            let msg = over_quota_message(&tenant, usage.bytes, t.storage_quota_bytes);
            tracing::warn!(target: "weir::serve", "{msg} (jobs: {})", ids.join(", "));
            for id in ids {
                s.fail_job(&id, msg.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_counts_files_not_symlink_targets_and_stops_at_its_bounds() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/x"), vec![0u8; 1000]).unwrap();
        std::fs::write(tmp.path().join("a/b/y"), vec![0u8; 24]).unwrap();
        let big = tempfile::tempdir().unwrap();
        std::fs::write(big.path().join("huge"), vec![0u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(big.path(), tmp.path().join("a/link")).unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let u = measure(tmp.path(), 100, far);
        assert!(u.complete);
        // The symlink's own length is counted, never what it points at.
        assert!((1024..2000).contains(&u.bytes), "{u:?}");
        let cut = measure(tmp.path(), 2, far);
        assert!(!cut.complete && cut.bytes <= u.bytes, "{cut:?}");
        let m = over_quota_message("evil", 5000, 4096);
        assert!(m.contains("storage_quota_bytes = 4096") && m.contains("5000 bytes"), "{m}");
    }
}
