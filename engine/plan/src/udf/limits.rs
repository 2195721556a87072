//! Per-job sandbox limits for UDF calls. They belong to a job (a job's
//! module registry carries its own), never to the process.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdfLimits {
    /// Fuel per call (about one unit per WebAssembly instruction). Running
    /// out is deterministic, so it is the hard CPU limit.
    pub fuel_per_call: u64,
    /// Wall-clock watchdog per call, in milliseconds. It only ever fails a
    /// task; fuel is what makes a runaway function fail the same way each time.
    pub deadline_ms: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Largest module file accepted, in bytes.
    pub module_bytes: usize,
    /// Largest output buffer one call may return, in bytes.
    pub output_bytes: usize,
    /// Log lines a call may emit through `weir::log`; the rest are dropped.
    pub log_lines_per_call: u32,
}

impl Default for UdfLimits {
    fn default() -> Self {
        UdfLimits {
            fuel_per_call: 50_000_000_000,
            deadline_ms: 60_000,
            memory_bytes: 1 << 30,
            module_bytes: 64 << 20,
            output_bytes: 1 << 30,
            log_lines_per_call: 100,
        }
    }
}
