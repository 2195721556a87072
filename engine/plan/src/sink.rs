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
    /// Each record's text (as `save_as_text_files` writes it) produced to a
    /// Kafka topic, with headers naming the job, batch time, partition and
    /// sequence. At-least-once: a re-run batch produces again.
    Kafka {
        /// `host:port[,host:port]`: the bootstrap brokers.
        brokers: String,
        topic: String,
        #[serde(default)]
        client_id: Option<String>,
        /// How long a batch's output waits for an unreachable broker
        /// (retrying with backoff) before the batch fails.
        #[serde(default = "default_kafka_timeout_ms")]
        timeout_ms: u64,
        /// TLS to the brokers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<Box<crate::source::KafkaTls>>,
        /// SASL authentication.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sasl: Option<Box<crate::source::KafkaSasl>>,
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

fn default_kafka_timeout_ms() -> u64 {
    60_000
}

fn default_num() -> usize {
    10
}
