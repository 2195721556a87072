//! Weir's plans as pure data. A streaming job is a DStream [`graph`] of
//! sources, operations and outputs; at every batch time the graph generates
//! RDDs whose [`rdd`] lineage says how each partition is computed; the
//! scheduler cuts lineage into [`task`]s that name UDFs by module hash
//! ([`udf`]). Everything here is data and pure functions over it: no
//! wasmtime, no threads, no I/O. It builds for `wasm32-unknown-unknown`, so
//! a plan can be inspected anywhere. The runtime (crate `weir`) runs plans.

pub mod dataset;
pub mod graph;
pub mod identity;
pub mod limits;
pub mod ops;
pub mod rate;
pub mod rdd;
pub mod sink;
pub mod source;
pub mod task;
pub mod udf;

pub use weir_codec as codec;
