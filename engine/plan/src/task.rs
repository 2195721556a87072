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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskOutput {
    MapDone,
    Partition(Vec<u8>),
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum TaskFailure {
    #[error("shuffle output {shuffle} is missing map partition(s) {maps:?}")]
    FetchFailed { shuffle: ShuffleId, maps: Vec<u32> },
    #[error("input block {0} is missing (not recoverable from lineage)")]
    InputLost(BlockId),
    #[error("{message}")]
    Udf { message: String, deterministic: bool },
    #[error("the executor running the task was lost: {0}")]
    ExecutorLost(String),
    #[error("{0}")]
    Other(String),
}

impl From<codec::CodecError> for TaskFailure {
    fn from(e: codec::CodecError) -> Self {
        TaskFailure::Other(format!("malformed record: {e}"))
    }
}

impl From<UdfError> for TaskFailure {
    fn from(e: UdfError) -> Self {
        TaskFailure::Udf { deterministic: e.is_deterministic(), message: e.to_string() }
    }
}
