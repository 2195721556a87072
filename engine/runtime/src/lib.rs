//! Weir: a micro-batch stream processing engine whose user functions are
//! WebAssembly. A record's path through the modules is one-directional:
//! [`source`] -> blocks ([`executor::block_store`]) -> RDD lineage ([`rdd`],
//! built per batch by [`dstream`]) -> tasks ([`scheduler`], [`executor`]) ->
//! UDF calls ([`udf`]) -> shuffle ([`executor::shuffle`]) -> outputs ([`sink`]).
//! Job files ([`job`]) and the Rust API ([`dstream::StreamingContext`]) build
//! the same graph. See `docs/architecture.md`.

pub mod checkpoint;
pub mod cluster;
pub mod dstream;
pub mod executor;
pub mod files;
pub mod job;
#[cfg(feature = "kafka")]
mod kafka_security;
pub mod listener;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod udf;

pub use weir_codec as codec;

/// The wasmtime release the UDF host is built on (pinned in the workspace;
/// a test checks this against `Cargo.lock`).
pub const WASMTIME_VERSION: &str = "48.0.8";
/// The UDF ABI versions this engine runs (`docs/udf-abi.md`).
pub const UDF_ABI_VERSIONS: &[i64] = &[weir_plan::udf::abi::ABI_VERSION, udf::component::ABI_VERSION];
pub use weir_plan as plan;
/// RDD lineage (from the plan crate).
pub use weir_plan::rdd;

/// Errors of the engine library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Udf(#[from] udf::UdfError),
    #[error(transparent)]
    JobFile(#[from] files::JobFileError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("invalid job graph: {0}")]
    Graph(String),
    #[error("executor: {0}")]
    Executor(String),
    /// A static dataset that cannot be loaded or used (it names the dataset).
    #[error("{0}")]
    Dataset(String),
    /// Another driver took the checkpoint location over (a newer epoch):
    /// this one writes nothing more and stops.
    #[error(transparent)]
    Fenced(#[from] checkpoint::fence::Fenced),
    /// A batch's input does not fit in the job's block budget (a
    /// `weir serve` tenant's `block_quota_bytes`).
    #[error("batch {time} ms, the input of source {source_index}: {error}")]
    OverBudget { time: i64, source_index: u32, error: executor::block_store::OverBudget },
}

/// The cores this process may use, asked once: the answer reads cgroup
/// files, which cost more than a small batch's encoding or output.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}
