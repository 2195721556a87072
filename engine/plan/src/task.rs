//! Task wire types: the unit of work an executor runs, as plain data (stage
//! lineage, partition, module hashes), never a closure, so that a remote
//! process can run it; and what comes back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rdd::{BlockId, NarrowOp, Rdd, RddId, RddOp, ShuffleId};
use crate::udf::{ModuleHash, UdfError};
use weir_codec as codec;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: u64,
    pub attempt: u32,
    pub batch_time: i64,
    /// The RDDs this task may compute (see `Lineage::stage_closure`).
    pub rdds: BTreeMap<RddId, Rdd>,
    pub partition: u32,
    pub kind: TaskKind,
    /// Where blocks this task may read live, when not on its executor
    /// (another executor's or the driver's block server address).
    #[serde(default)]
    pub locations: Vec<(BlockId, String)>,
}

impl Task {
    /// The UDF modules the task's lineage uses, by hash.
    pub fn modules(&self) -> Vec<ModuleHash> {
        use crate::rdd::{Aggregation, PairFilter, Reducer};
        let mut v = Vec::new();
        let red = |r: &Reducer, v: &mut Vec<ModuleHash>| {
            if let Reducer::Udf(f) = r {
                v.push(f.module)
            }
        };
        for r in self.rdds.values() {
            match &r.op {
                RddOp::Narrow { ops, .. } => {
                    for op in ops {
                        if let NarrowOp::Udf(f) | NarrowOp::MapValues(f) | NarrowOp::FlatMapValues(f) = op {
                            v.push(f.module)
                        }
                    }
                }
                RddOp::Shuffled { aggregation: Aggregation::ReduceByKey(r) | Aggregation::Reduce(r), .. } => {
                    red(r, &mut v)
                }
                RddOp::State { update, .. } => v.push(update.module),
                RddOp::MapWithState { f, .. } => v.push(f.module),
                RddOp::InvWindow { reduce, inverse, filter, .. } => {
                    red(reduce, &mut v);
                    red(inverse, &mut v);
                    if let Some(PairFilter::Udf(f)) = filter {
                        v.push(f.module);
                    }
                }
                _ => {}
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskKind {
    /// Compute partition `partition` of parent `parent_index` of the shuffled
    /// RDD `shuffle` and write its buckets (map index `map`).
    ShuffleMap { shuffle: ShuffleId, parent_index: u32, map: u32 },
    /// Compute partition `partition` of `rdd` and return it.
    Result { rdd: RddId },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: u64,
    pub attempt: u32,
    pub outcome: Result<TaskOutput, TaskFailure>,
    /// Digests of the blocks this task wrote.
    pub blocks: Vec<(BlockId, u128)>,
    /// Records read from input blocks and UDF calls made, for metrics.
    pub udf_calls: u64,
    pub micros: u64,
    /// The block server address of the executor that ran it ("" in-process).
    #[serde(default)]
    pub executor: String,
    /// What each module's functions cost in this task (by module name).
    #[serde(default)]
    pub udf_usage: Vec<UdfUsage>,
}

/// One module's use in a task, a batch or a run: calls, fuel its instances
/// burned (their own code and the ABI's allocations), failed calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdfUsage {
    pub module: String,
    pub calls: u64,
    pub fuel: u64,
    /// Calls that failed (a trap, a limit, malformed output, a guest error).
    pub failures: u64,
    /// Of the failures, the calls whose code trapped (`unreachable`, an
    /// out-of-bounds access, a division by zero, a stack overflow, ...).
    /// `serde(default)` reads JSON event logs of earlier versions (the
    /// cluster protocol's bincode has no defaults: its version changed).
    #[serde(default)]
    pub traps: u64,
}

impl UdfUsage {
    /// Adds `other`'s figures (same module) into this one.
    pub fn add(&mut self, other: &UdfUsage) {
        // Figures from peers: saturate rather than overflow.
        self.calls = self.calls.saturating_add(other.calls);
        self.fuel = self.fuel.saturating_add(other.fuel);
        self.failures = self.failures.saturating_add(other.failures);
        self.traps = self.traps.saturating_add(other.traps);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskOutput {
    MapDone,
    Partition(Vec<u8>),
}

/// Why a task failed. [`TaskFailure::is_deterministic`] says whether running
/// it again can help: the scheduler retries only failures that are not.
///
/// Engine faults and bad data are told apart so that retries go where they
/// can help:
/// - [`TaskFailure::BadData`]: the bytes of a record or batch are not what
///   the operation needs (a codec error, a value that is not a pair, a
///   non-integer to sum, a UDF's output of the wrong shape). The same input
///   gives the same bytes, so it is deterministic and never retried.
/// - [`TaskFailure::Engine`]: the engine or its environment failed (a lineage
///   or module the task should carry is missing, a checkpoint cannot be
///   read, a task panicked). Treated as transient and retried.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TaskFailure {
    #[error("shuffle output {shuffle} is missing map partition(s) {maps:?}")]
    FetchFailed { shuffle: ShuffleId, maps: Vec<u32> },
    #[error("input block {0} is missing (not recoverable from lineage)")]
    InputLost(BlockId),
    #[error("{message}")]
    Udf { message: String, deterministic: bool },
    #[error("the executor running the task was lost: {0}")]
    ExecutorLost(String),
    /// `rdd` and `partition` name the innermost partition being computed when
    /// it failed; `rdd` is `None` only until the task locates the failure
    /// (see [`TaskFailure::locate`]); every failure a task returns has it.
    #[error("engine fault{}: {message}", Site(*batch_time, *rdd, *partition))]
    Engine { batch_time: i64, rdd: Option<RddId>, partition: u32, message: String },
    /// As [`TaskFailure::Engine`], for records the operation cannot use.
    #[error("bad data{}: {message}", Site(*batch_time, *rdd, *partition))]
    BadData { batch_time: i64, rdd: Option<RddId>, partition: u32, message: String },
    /// A block the task computed does not fit in its job's block budget
    /// (a `weir serve` tenant's `block_quota_bytes`): retried, as the
    /// tenant's other jobs may free blocks meanwhile.
    #[error("{0}")]
    OverBudget(String),
}

impl TaskFailure {
    /// An engine fault, not yet located (see [`TaskFailure::locate`]).
    pub fn engine(message: impl Into<String>) -> Self {
        TaskFailure::Engine { batch_time: 0, rdd: None, partition: 0, message: message.into() }
    }

    /// Bad data, not yet located (see [`TaskFailure::locate`]).
    pub fn bad_data(message: impl Into<String>) -> Self {
        TaskFailure::BadData { batch_time: 0, rdd: None, partition: 0, message: message.into() }
    }

    /// Says where an engine fault or bad data happened, unless a deeper
    /// computation already did (the innermost site is the most useful).
    pub fn locate(mut self, time: i64, id: RddId, p: u32) -> Self {
        if let TaskFailure::Engine { batch_time, rdd, partition, .. }
        | TaskFailure::BadData { batch_time, rdd, partition, .. } = &mut self
        {
            if rdd.is_none() {
                (*batch_time, *rdd, *partition) = (time, Some(id), p);
            }
        }
        self
    }

    /// True when running the task again gives the same failure, so it is
    /// not retried: a deterministic UDF failure, bad data, or a lost input
    /// block (nothing can recompute it). Everything else (a lost executor, a
    /// missing shuffle output, an engine fault, host I/O) may pass.
    pub fn is_deterministic(&self) -> bool {
        match self {
            TaskFailure::Udf { deterministic, .. } => *deterministic,
            TaskFailure::BadData { .. } | TaskFailure::InputLost(_) => true,
            TaskFailure::FetchFailed { .. }
            | TaskFailure::ExecutorLost(_)
            | TaskFailure::Engine { .. }
            | TaskFailure::OverBudget(_) => false,
        }
    }
}

/// Formats the site of an engine fault or bad data (nothing when unknown).
struct Site(i64, Option<RddId>, u32);

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(rdd) => write!(f, " in partition {} of {rdd} (batch {} ms)", self.2, self.0),
            None => Ok(()),
        }
    }
}

impl From<codec::CodecError> for TaskFailure {
    fn from(e: codec::CodecError) -> Self {
        TaskFailure::bad_data(format!("malformed record: {e}"))
    }
}

impl From<UdfError> for TaskFailure {
    fn from(e: UdfError) -> Self {
        TaskFailure::Udf { deterministic: e.is_deterministic(), message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_site_locates_a_failure() {
        let (inner, outer) = (RddId { time: 2000, node: 3 }, RddId { time: 2000, node: 5 });
        let f = TaskFailure::bad_data("expected a pair").locate(2000, inner, 1).locate(2000, outer, 0);
        assert!(matches!(f, TaskFailure::BadData { rdd: Some(r), partition: 1, batch_time: 2000, .. } if r == inner));
        assert_eq!(f.to_string(), "bad data in partition 1 of rdd_3@2000 (batch 2000 ms): expected a pair");
        assert_eq!(TaskFailure::engine("lost").to_string(), "engine fault: lost");
    }

    #[test]
    fn bad_data_is_deterministic_and_engine_faults_are_not() {
        let codec_error: TaskFailure = codec::Records::new(&[1]).map(|_| ()).unwrap_err().into();
        assert!(matches!(codec_error, TaskFailure::BadData { .. }), "{codec_error:?}");
        assert!(codec_error.is_deterministic());
        assert!(!TaskFailure::engine("checkpoint unreadable").is_deterministic());
        assert!(TaskFailure::Udf { message: "trap".into(), deterministic: true }.is_deterministic());
        assert!(!TaskFailure::Udf { message: "host I/O".into(), deterministic: false }.is_deterministic());
        assert!(!TaskFailure::ExecutorLost("gone".into()).is_deterministic());
    }
}
