//! Input rate control (Spark's `spark.streaming.backpressure.*`): how many
//! records per second a source may take, and the PID estimator that sets
//! it from each batch's processing time and scheduling delay.
//!
//! The estimator is a port of Spark's `PIDRateEstimator`: the error is the
//! difference between the rate it last published and the rate the batch was
//! actually processed at; the integral term is the backlog a scheduling
//! delay stands for, spread over one batch interval. It is pure arithmetic
//! (no clock of its own: the caller passes the batch's time), so the driver
//! and the tests feed it the same numbers and get the same rates.

use serde::{Deserialize, Serialize};

/// Spark's default proportional gain (`spark.streaming.backpressure.pid.proportional`).
pub const DEFAULT_PROPORTIONAL: f64 = 1.0;
/// Spark's default integral gain.
pub const DEFAULT_INTEGRAL: f64 = 0.2;
/// Spark's default derivative gain.
pub const DEFAULT_DERIVATIVE: f64 = 0.0;
/// Spark's default lowest estimated rate, records per second.
pub const DEFAULT_MIN_RATE: u64 = 100;

/// The job's rate settings: top-level `backpressure = true` and the
/// `[rate]` table (`initial`, `min`, `max`, records per second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSpec {
    /// Estimate each source's rate from how batches keep up.
    pub backpressure: bool,
    /// The rate before the first estimate (backpressure only; none:
    /// unlimited until then, bounded by `max`).
    pub initial: Option<u64>,
    /// The lowest rate the estimator gives (backpressure only; default
    /// [`DEFAULT_MIN_RATE`]).
    pub min: Option<u64>,
    /// The highest rate a source takes, with or without backpressure.
    pub max: Option<u64>,
}

impl RateSpec {
    /// Checks the settings against each other; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, v) in [("initial", self.initial), ("min", self.min), ("max", self.max)] {
            if v == Some(0) {
                return Err(format!("[rate] {key} must be at least 1 record per second"));
            }
        }
        if !self.backpressure {
            for (key, v) in [("initial", self.initial), ("min", self.min)] {
                if v.is_some() {
                    return Err(format!(
                        "[rate] {key} is used only with backpressure = true (without it only [rate] max applies)"
                    ));
                }
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(format!("[rate] min ({min}) is above max ({max})"));
            }
        }
        Ok(())
    }

    /// True when a source's rate is bounded at all.
    pub fn limits(&self) -> bool {
        self.backpressure || self.max.is_some()
    }

    /// The rate a source may take, records per second, given the newest
    /// estimate: the estimate (or `initial` before there is one), bounded by
    /// `max`; `None` when nothing bounds it.
    pub fn effective(&self, estimate: Option<f64>) -> Option<f64> {
        let chosen = if self.backpressure { estimate.or(self.initial.map(|r| r as f64)) } else { None };
        match (chosen, self.max) {
            (Some(r), Some(m)) => Some(r.min(m as f64)),
            (Some(r), None) => Some(r),
            (None, Some(m)) => Some(m as f64),
            (None, None) => None,
        }
    }

    /// A PID estimator with Spark's default gains and this spec's `min`.
    pub fn estimator(&self, batch_interval_ms: i64) -> PidRateEstimator {
        PidRateEstimator::new(
            batch_interval_ms,
            DEFAULT_PROPORTIONAL,
            DEFAULT_INTEGRAL,
            DEFAULT_DERIVATIVE,
            self.min.unwrap_or(DEFAULT_MIN_RATE) as f64,
        )
    }
}

/// Spark's PID rate estimator: the rate (records per second) the next
/// batches should take so that they are processed within the batch interval.
#[derive(Debug, Clone)]
pub struct PidRateEstimator {
    batch_interval_ms: f64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    first_run: bool,
    latest_time: i64,
    latest_rate: f64,
    latest_error: f64,
}

impl PidRateEstimator {
    /// Gains below zero count as zero, a batch interval below 1 ms as 1 ms
    /// and a minimum rate below 1 as 1 (Spark refuses them; here the job
    /// file is checked before this is built, so clamping only guards the
    /// arithmetic).
    pub fn new(batch_interval_ms: i64, proportional: f64, integral: f64, derivative: f64, min_rate: f64) -> Self {
        PidRateEstimator {
            batch_interval_ms: batch_interval_ms.max(1) as f64,
            proportional: proportional.max(0.0),
            integral: integral.max(0.0),
            derivative: derivative.max(0.0),
            min_rate: if min_rate.is_finite() { min_rate.max(1.0) } else { DEFAULT_MIN_RATE as f64 },
            first_run: true,
            latest_time: -1,
            latest_rate: -1.0,
            latest_error: -1.0,
        }
    }

    /// Feeds one completed batch: `time` (ms, increasing), the records it
    /// took, its processing time and its scheduling delay (ms). Returns the
    /// new rate, or `None` when there is none yet (the first batch only
    /// measures) or the batch says nothing (no records, no processing time,
    /// or not newer than the last one fed).
    pub fn compute(&mut self, time: i64, elements: u64, processing_ms: u64, scheduling_ms: u64) -> Option<f64> {
        if time <= self.latest_time || elements == 0 || processing_ms == 0 {
            return None;
        }
        // Seconds since the last update: close to the batch interval.
        let since_update = (time - self.latest_time) as f64 / 1000.0;
        // What the batch was processed at, records per second.
        let processing_rate = elements as f64 / processing_ms as f64 * 1000.0;
        // Desired (the rate last published) minus measured.
        let error = self.latest_rate - processing_rate;
        // A scheduling delay s stands for s * processing_rate records that
        // earlier batches could not process; taken over one batch interval
        // that is a rate, the accumulated ("historical") error.
        let historical = scheduling_ms as f64 * processing_rate / self.batch_interval_ms;
        let d_error = (error - self.latest_error) / since_update;
        let new_rate =
            (self.latest_rate - self.proportional * error - self.integral * historical - self.derivative * d_error)
                .max(self.min_rate);
        self.latest_time = time;
        if self.first_run {
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            self.first_run = false;
            None
        } else {
            self.latest_rate = new_rate;
            self.latest_error = error;
            Some(new_rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("a rate");
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn the_first_batch_only_measures_and_later_ones_follow_spark_arithmetic() {
        let mut e = PidRateEstimator::new(1000, 1.0, 0.2, 0.0, 100.0);
        // 1000 records in 500 ms: 2000/s measured, nothing published.
        assert_eq!(e.compute(1000, 1000, 500, 0), None);
        // 1500 records in 1000 ms = 1500/s, 500 ms late:
        // error = 2000 - 1500 = 500; historical = 500 * 1500 / 1000 = 750;
        // new = 2000 - 500 - 0.2 * 750 = 1350.
        close(e.compute(2000, 1500, 1000, 500), 1350.0);
        // 1350 records in 900 ms = 1500/s, not late:
        // error = 1350 - 1500 = -150; new = 1350 + 150 = 1500.
        close(e.compute(3000, 1350, 900, 0), 1500.0);
    }

    #[test]
    fn the_derivative_term_uses_the_error_change_per_second() {
        let mut e = PidRateEstimator::new(1000, 1.0, 0.0, 0.5, 1.0);
        // 1000/s measured.
        assert_eq!(e.compute(1000, 100, 100, 0), None);
        // 800/s, 2 s later: error = 1000 - 800 = 200; d = (200 - 0) / 2 = 100;
        // new = 1000 - 200 - 0.5 * 100 = 750.
        close(e.compute(3000, 800, 1000, 0), 750.0);
    }

    #[test]
    fn the_rate_never_falls_below_the_minimum() {
        let mut e = PidRateEstimator::new(100, 1.0, 0.2, 0.0, 100.0);
        // 100/s measured.
        assert_eq!(e.compute(100, 10, 100, 0), None);
        // 10/s and 10 s late: 100 - 90 - 0.2 * (10000 * 10 / 100) = -190 -> 100.
        close(e.compute(200, 1, 100, 10_000), 100.0);
    }

    #[test]
    fn batches_that_say_nothing_change_nothing() {
        let mut e = PidRateEstimator::new(1000, 1.0, 0.2, 0.0, 100.0);
        assert_eq!(e.compute(1000, 0, 500, 0), None);
        assert_eq!(e.compute(1000, 10, 0, 0), None);
        // Still the first run: this one only measures (400/s).
        assert_eq!(e.compute(1000, 200, 500, 0), None);
        // Not newer than the last: ignored.
        assert_eq!(e.compute(1000, 10, 10, 0), None);
        // 400 in 1000 ms = 400/s: error 0, new = 400.
        close(e.compute(2000, 400, 1000, 0), 400.0);
    }

    #[test]
    fn a_steady_overload_converges_to_the_processing_rate() {
        // Records cost 1 ms each (1000/s); the estimate settles there.
        let mut e = RateSpec { backpressure: true, ..RateSpec::default() }.estimator(1000);
        let mut rate = 5000.0;
        let mut last = None;
        for k in 1..=30 {
            let n = rate as u64;
            if let Some(r) = e.compute(k * 1000, n, n, 0) {
                rate = r;
                last = Some(r);
            }
        }
        close(last, 1000.0);
    }

    #[test]
    fn specs_are_checked_and_bound_the_estimate() {
        let bp = RateSpec { backpressure: true, initial: Some(500), min: Some(10), max: Some(2000) };
        assert_eq!(bp.check(), Ok(()));
        assert_eq!(bp.effective(None), Some(500.0));
        assert_eq!(bp.effective(Some(5000.0)), Some(2000.0));
        assert_eq!(bp.effective(Some(50.0)), Some(50.0));
        let max_only = RateSpec { max: Some(300), ..RateSpec::default() };
        assert_eq!(max_only.effective(Some(5.0)), Some(300.0));
        assert_eq!(RateSpec::default().effective(None), None);
        assert!(!RateSpec::default().limits());
        let e = RateSpec { initial: Some(5), ..RateSpec::default() }.check().unwrap_err();
        assert!(e.contains("initial") && e.contains("backpressure = true"), "{e}");
        let e = RateSpec { backpressure: true, min: Some(0), ..RateSpec::default() }.check().unwrap_err();
        assert!(e.contains("min must be at least 1"), "{e}");
        let e = RateSpec { backpressure: true, min: Some(9), max: Some(3), ..RateSpec::default() }.check().unwrap_err();
        assert!(e.contains("min (9) is above max (3)"), "{e}");
    }
}
