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

/// Fuel per second of batch interval in the interval-relative defaults:
/// about two seconds of what compiled WebAssembly burns on a current core
/// (5·10^10 units ran out in about 23 s here).
const FUEL_PER_INTERVAL_SECOND: u64 = 5_000_000_000;

impl UdfLimits {
    /// Defaults scaled to a job's batch interval: a call may take about two
    /// intervals of CPU (fuel; at least 5·10^9 units), so a runaway function
    /// stops the stream for seconds, not minutes (running out of fuel is
    /// deterministic and not retried). The wall-clock watchdog (30
    /// intervals, at least 30 s) stays far above what the fuel allows even
    /// on a loaded machine: it is retried, and must not beat the fuel.
    pub fn for_batch_interval(interval_ms: i64) -> Self {
        let ms = interval_ms.clamp(1, 3_600_000) as u64;
        UdfLimits {
            fuel_per_call: (FUEL_PER_INTERVAL_SECOND.saturating_mul(ms) / 1000).max(FUEL_PER_INTERVAL_SECOND),
            deadline_ms: ms.saturating_mul(30).max(30_000),
            ..UdfLimits::default()
        }
    }
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

/// A job file's `[limits]`: each field given overrides the interval-relative
/// default ([`UdfLimits::for_batch_interval`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdfLimitsOverrides {
    pub fuel_per_call: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub memory_bytes: Option<usize>,
    pub module_bytes: Option<usize>,
    pub output_bytes: Option<usize>,
    pub log_lines_per_call: Option<u32>,
}

impl UdfLimitsOverrides {
    /// `base` with the fields given here replaced.
    pub fn apply(&self, base: UdfLimits) -> UdfLimits {
        UdfLimits {
            fuel_per_call: self.fuel_per_call.unwrap_or(base.fuel_per_call),
            deadline_ms: self.deadline_ms.unwrap_or(base.deadline_ms),
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            module_bytes: self.module_bytes.unwrap_or(base.module_bytes),
            output_bytes: self.output_bytes.unwrap_or(base.output_bytes),
            log_lines_per_call: self.log_lines_per_call.unwrap_or(base.log_lines_per_call),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_scale_with_the_batch_interval() {
        let one_second = UdfLimits::for_batch_interval(1000);
        assert_eq!((one_second.fuel_per_call, one_second.deadline_ms), (5_000_000_000, 30_000));
        let ten_seconds = UdfLimits::for_batch_interval(10_000);
        assert_eq!((ten_seconds.fuel_per_call, ten_seconds.deadline_ms), (50_000_000_000, 300_000));
        // Short intervals keep a floor; absurd ones do not overflow.
        assert_eq!(UdfLimits::for_batch_interval(100).deadline_ms, 30_000);
        assert_eq!(UdfLimits::for_batch_interval(100).fuel_per_call, 5_000_000_000);
        assert_eq!(UdfLimits::for_batch_interval(i64::MAX).deadline_ms, 108_000_000);
        let o = UdfLimitsOverrides { deadline_ms: Some(5), ..Default::default() };
        assert_eq!(o.apply(one_second).deadline_ms, 5);
        assert_eq!(o.apply(one_second).fuel_per_call, one_second.fuel_per_call);
    }
}
