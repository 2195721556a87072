//! Scheduling: the job generator (the batch loop) and the DAG scheduler
//! (stages, tasks, retries, recomputation of lost shuffle outputs).

pub mod dag;
pub mod job_generator;

pub use dag::{DagScheduler, JobError, SchedulerMetrics};
pub use job_generator::{Clock, ClusterOptions, Master, RunOptions, RunReport};
