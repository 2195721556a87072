//! `weir serve`: one long-running process that hosts many tenants' streaming
//! jobs (`docs/serve.md`).
//!
//! - [`config`]: the operator's `serve.toml` (tenants, tokens, quotas,
//!   sandbox ceilings), re-read when it changes;
//! - [`submit`]: a submitted job checked against its tenant's policy and
//!   rewritten to run from the server (module store, tenant root, job
//!   directory);
//! - [`store`]: UDF modules content-addressed by SHA-256;
//! - [`registry`]: the durable list of jobs and the state directory's lock;
//! - [`pool`]: the one executor pool every job's tasks run on, shared by
//!   tenants by weight (deficit round robin);
//! - [`cpu`]: each tenant's CPU cgroup weighted by its `weight`
//!   (`cpu_cgroup`), which its driver threads and the pool threads running
//!   its tasks join;
//! - [`runner`]: a job's driver on a thread of its own, through the `weir`
//!   library, with its status and logs;
//! - [`quota`]: the storage quota of tenants with running jobs, measured
//!   while they run;
//! - [`server`]: the above put together (submit, stop, list, recover);
//! - [`ui`]: the status page listing a tenant's jobs;
//! - [`api`]: the HTTP API (axum), [`http`]: the listener (TLS, timeouts,
//!   connection limit).

pub mod api;
pub mod config;
pub mod cpu;
pub mod http;
pub mod pool;
pub mod quota;
pub mod registry;
pub mod runner;
pub mod server;
pub mod store;
pub mod submit;
pub mod ui;

pub use config::Config;
pub use server::Server;

use std::path::Path;

/// What `weir serve` refuses or fails at. The API maps each kind to an
/// HTTP status ([`ServeError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A `serve.toml` problem: where and what.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Config { file: String, line: Option<usize>, message: String },
    #[error("another weir serve holds the state directory {0} (serve.lock)")]
    Locked(String),
    #[error("{0}")]
    Io(String),
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The job breaks its tenant's policy (403).
    #[error("refused: {0}")]
    Refused(String),
    /// A quota is used up (429).
    #[error("quota: {0}")]
    Quota(String),
    #[error("missing or unknown token")]
    Unauthorized,
    #[error("no such job: {0}")]
    NotFound(String),
    /// The job file does not load (400), with the loader's message.
    #[error("{0}")]
    Job(String),
    /// Starting the listener (TLS files, bind, policy).
    #[error("{0}")]
    Listen(String),
}

impl ServeError {
    pub(crate) fn config(file: &Path, line: Option<usize>, message: String) -> Self {
        ServeError::Config { file: file.display().to_string(), line, message }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            ServeError::BadRequest(_) | ServeError::Job(_) => 400,
            ServeError::Unauthorized => 401,
            ServeError::Refused(_) => 403,
            ServeError::NotFound(_) => 404,
            ServeError::Quota(_) => 429,
            _ => 500,
        }
    }
}
