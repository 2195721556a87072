//! The runtime's integration tests through its public API, folded into one
//! test binary (one link): every operation, stateful streams, and the UDF
//! host against real modules and components.

mod api;
mod architecture;
mod budget;
mod components;
mod operations;
mod properties;
mod slice;
mod stateful;
mod udf_host;
