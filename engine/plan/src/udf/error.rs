//! Typed UDF errors. Each names the module (file name and hash prefix), the
//! export, the function kind and, when known, the batch time and partition,
//! so a user can find the failing code and the data that made it fail.

use std::fmt;

use super::abi::UdfKind;

/// Where a UDF failure happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdfSite {
    /// The module's file name, e.g. `wordcount.wasm`.
    pub module: String,
    /// The first 12 hex digits of the module's SHA-256.
    pub hash: String,
    pub export: Option<String>,
    pub kind: Option<UdfKind>,
    pub batch_time_ms: Option<i64>,
    pub partition: Option<u32>,
}

impl fmt::Display for UdfSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "module {}", self.module)?;
        if !self.hash.is_empty() {
            write!(f, " (sha256 {})", self.hash)?;
        }
        if let Some(e) = &self.export {
            write!(f, ", export {e:?}")?;
        }
        if let Some(k) = self.kind {
            write!(f, " ({k})")?;
        }
        if let Some(t) = self.batch_time_ms {
            write!(f, ", batch {t} ms")?;
        }
        if let Some(p) = self.partition {
            write!(f, ", partition {p}")?;
        }
        Ok(())
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdfErrorKind {
    #[error("cannot read the module file: {0}")]
    Io(#[source] std::io::Error),
    #[error("module is {size} bytes, over the limit of {limit} bytes ([limits] module_bytes)")]
    ModuleTooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly module (no \\0asm header and not WAT text)")]
    NotWasm,
    #[error("malformed module: {0}")]
    Malformed(String),
    #[error("this WebAssembly component is not a UDF component: a component must export the interface weir:udf/udf@2.0.0 (ABI v2, the WIT package of udf-sdk/wit)")]
    Component,
    #[error("invalid custom section \"weir:exports\": {0}")]
    ExportsSection(String),
    #[error(
        "module imports {module}::{name}; only weir::log (i32, i32) -> () may be imported (no WASI, no host access)"
    )]
    ForbiddenImport { module: String, name: String },
    #[error("missing export {name:?} required by the Weir UDF ABI v1")]
    MissingExport { name: String },
    #[error("export {name:?} has the wrong type: expected {expected}")]
    MistypedExport { name: String, expected: &'static str },
    #[error("export {name:?} names an unknown function kind {kind:?} (known: map, flat_map, filter, key_by, map_partitions, reduce, update, map_with_state)")]
    UnknownKind { name: String, kind: String },
    #[error("module speaks UDF ABI version {found}; this engine supports version 1")]
    UnsupportedAbiVersion { found: i64 },
    #[error("module has no {kind} function named {name:?} (it has: {available})")]
    NoSuchFunction { name: String, kind: UdfKind, available: String },
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    #[error("trapped: {message}{}{}", guest_message.as_ref().map(|m| format!(" (guest said: {m})")).unwrap_or_default(), backtrace.as_ref().map(|b| format!("\nwasm backtrace:\n{b}")).unwrap_or_default())]
    Trap { message: String, guest_message: Option<String>, backtrace: Option<String> },
    #[error("ran out of fuel ({fuel} units per call); the function runs too long or loops forever")]
    OutOfFuel { fuel: u64 },
    #[error("exceeded the wall-clock deadline of {ms} ms per call")]
    Deadline { ms: u64 },
    #[error("exceeded the linear memory limit of {limit} bytes")]
    MemoryLimit { limit: usize },
    #[error("call stack overflow (recursion too deep)")]
    StackOverflow,
    #[error("the function reported an error: {0}")]
    Guest(String),
    /// The job file's parameters cannot be handed over: the module takes
    /// none (no `weir_params` export, or a component), or `weir_params`
    /// refused them.
    #[error("parameters: {0}")]
    Params(String),
    #[error("malformed output: {0}")]
    MalformedOutput(String),
    #[error("output is {size} bytes, over the limit of {limit} bytes")]
    OutputTooLarge { size: usize, limit: usize },
}

/// A UDF failure at a site.
#[derive(Debug, thiserror::Error)]
#[error("{site}: {kind}")]
#[non_exhaustive]
pub struct UdfError {
    /// Boxed: errors travel in `Result`s on hot paths; keep them small.
    pub site: Box<UdfSite>,
    // Not a `#[source]`: the message already includes it.
    pub kind: UdfErrorKind,
}

impl UdfError {
    pub fn new(site: UdfSite, kind: UdfErrorKind) -> Self {
        UdfError { site: Box::new(site), kind }
    }

    /// True when retrying the call cannot help: the failure comes from the
    /// data or the code of the call, or from a limit it ran into. The
    /// deadline counts as one: it sits far above what the fuel allows, so a
    /// call that reaches it is looping or blocked, and four more tries would
    /// only cost four more deadlines. Only host I/O is transient.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self.kind, UdfErrorKind::Io(_))
    }
}
