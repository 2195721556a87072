//! Weir: a micro-batch stream processing engine whose user functions are
//! WebAssembly. See `docs/architecture.md` for how the modules fit together.

pub mod udf;
