//! `--checkpoint DIR` and its flags, as a job is run with them
//! ([`RunOptions::checkpoint`](crate::scheduler::RunOptions)). Defined here,
//! below the scheduler, because the checkpoint's own checks (module and job
//! changes, confinement) read them; the scheduler re-exports it.

use std::path::PathBuf;
use std::time::Duration;

/// `--checkpoint DIR` and its flags.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointOptions {
    /// A local directory (or `file:///dir`), or an object-store URL
    /// (`s3://bucket/prefix`, `gs://…`, `az://…`; cargo feature `object-store`).
    pub dir: PathBuf,
    /// Metadata checkpoints kept (default 10).
    pub keep: usize,
    /// Discard what the directory holds and start over.
    pub fresh: bool,
    /// Continue although a UDF module's hash differs from the checkpoint's.
    pub accept_module_change: bool,
    /// Continue although a stateful stream's lineage changed (or a stateful
    /// stream was added or removed): matching streams keep their state,
    /// removed ones drop it, new ones start without it.
    pub accept_job_change: bool,
    /// Object-store locations: how long the driver's lease lasts unrenewed
    /// (renewed every third of it; a second driver waits this long before
    /// taking over a lease nobody renews). Default 30 s.
    pub lease_ttl: Duration,
    /// A local directory's files (checkpoints, write-ahead logs) are
    /// written, read and deleted only while their real path (symlinks
    /// followed, checked at each) is inside this directory (canonical);
    /// elsewhere the operation fails like a write to a full disk, and
    /// nothing is written through the link. `weir serve` sets it to the
    /// tenant's root.
    pub confine: Option<PathBuf>,
}

impl CheckpointOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointOptions {
            dir: dir.into(),
            keep: 10,
            fresh: false,
            accept_module_change: false,
            accept_job_change: false,
            lease_ttl: Duration::from_secs(30),
            confine: None,
        }
    }
}
