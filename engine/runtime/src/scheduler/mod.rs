//! Scheduling: the driver (the batch loop in named steps: recover, receive,
//! generate, run outputs, checkpoint, forget) and the DAG scheduler (stages,
//! tasks, retries, recomputation of lost shuffle outputs).

pub mod dag;
pub mod driver;
mod job_change;
pub mod options;
mod output_writer;
mod prefetch;
mod recover;
pub mod slice;

pub use dag::{DagScheduler, JobError, SchedulerMetrics};
pub use driver::{Driver, Job, RunReport};
#[cfg(feature = "test-hooks")]
pub use options::AfterBatch;
pub use options::{
    CheckpointOptions, Clock, ClusterOptions, Master, RunOptions, StopSignal, DEFAULT_MAX_PENDING_BATCHES,
};
pub use slice::{SliceError, SliceQueue, Sliced};
