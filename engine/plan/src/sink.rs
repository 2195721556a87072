//! Output descriptors: what a job says happens to each batch's result.
//! Running sinks live in the runtime (`weir::sink`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputSpec {
    Print {
        #[serde(default = "default_num")]
        num: usize,
    },
    SaveAsTextFiles {
        prefix: String,
        #[serde(default)]
        suffix: Option<String>,
    },
    /// Index into the context's collectors (Rust API only).
    #[serde(skip)]
    Collect { id: usize },
    /// Index into the context's `foreach_rdd` functions (Rust API only).
    #[serde(skip)]
    ForeachRdd { id: usize },
    /// Index into the context's custom sinks (Rust API only).
    #[serde(skip)]
    Custom { id: usize },
}

fn default_num() -> usize {
    10
}
