//! Prefetch: reading the next batch's input while this batch's jobs run.
//!
//! A batch's first step, reading its sources (a directory source reads and
//! encodes its files), used to run while the executors waited. When the
//! next batch's input is already there, the driver reads it on a thread of
//! its own while the current batch's output jobs run, and the next batch
//! starts with its input in hand. "Already there" means what the batch
//! would read is decided now: every source has a backlog (files left over
//! by `max_files_per_batch`, the batches of a `batches` file or a queue,
//! fixed up front), or the wall clock is past the next batch's
//! time (the run is behind; a directory source takes files by modification
//! time up to the batch time, so reading now or later takes the same files).
//! Otherwise (a run that keeps up, a logical-clock run whose input arrives
//! between batches, a source under a rate limit or backpressure, whose next
//! limit comes from this batch's completion) the next batch reads its
//! sources at its own start, as before.
//!
//! Recovery stays exact: the input read early is recorded in the metadata
//! checkpoint only when its batch is generated, so until then every
//! metadata checkpoint carries the sources' cursors from *before* the
//! prefetch. A driver killed in between reads that input again after the
//! restart; a run stopped at once drops it unrecorded, to the same effect.

use super::driver::Driver;
use super::options::Clock;
use super::output_writer::Computed;
use crate::listener::{SourceDetails, SourcePosition};
use crate::rdd::RddId;
use crate::source::{InputDescriptor, Source, SourceCursor, SourceError};

/// One source's records for a batch, cut into partitions.
pub(super) struct Polled {
    pub(super) parts: Vec<Vec<u8>>,
    pub(super) descriptor: InputDescriptor,
    pub(super) positions: Vec<SourcePosition>,
    /// For status pages (asked only when someone listens).
    pub(super) details: Option<SourceDetails>,
}

/// The next batch's input, read early.
pub(super) struct Prefetched {
    pub(super) time: i64,
    /// The sources' cursors before it was read: what metadata checkpoints
    /// record until its batch is generated.
    pub(super) cursors: Vec<SourceCursor>,
    pub(super) polled: Result<Vec<Polled>, SourceError>,
}

/// Reads every source's batch at `time`, in `n` partitions each (with the
/// sources' details when `details`).
pub(super) fn poll_all(
    sources: &mut [Box<dyn Source>],
    time: i64,
    wall: bool,
    n: u32,
    details: bool,
) -> Result<Vec<Polled>, SourceError> {
    let mut out = Vec::with_capacity(sources.len());
    for s in sources.iter_mut() {
        let (parts, descriptor) = s.poll_partitions(time, wall, n)?;
        let details = if details { s.details() } else { None };
        out.push(Polled { parts, descriptor, positions: s.positions(), details });
    }
    Ok(out)
}

impl Driver {
    /// The next batch's time when its input may be read now (see the module
    /// doc), given that `ran` batches have started.
    fn prefetch_time(&self, ran: u64) -> Option<i64> {
        #[cfg(feature = "test-hooks")]
        if self.opts.after_batch.is_some() {
            // Hooks look at (and change) the world between batches.
            return None;
        }
        let stop = &self.opts.stop;
        if self.prefetched.is_some()
            || self.sources.is_empty()
            || !self.progress.replay.is_empty()
            || stop.is_requested()
            || self.opts.max_batches.is_some_and(|m| ran >= m)
            || !self.idle.is_zero()
            || self.rate_controlled()
        {
            // A rate limit or backpressure decides how much the next batch
            // takes from what this batch's completion teaches: read early,
            // it would take it at the old rate.
            return None;
        }
        let next = self.progress.zero_time + (self.progress.k + 1) * self.job.graph.batch_interval_ms;
        let decided = match self.opts.clock {
            Clock::Wall => next <= super::driver::now_ms(),
            Clock::Logical => false,
        };
        (decided || self.sources.iter().all(|s| s.has_backlog())).then_some(next)
    }

    /// Run outputs, with the next batch's input read meanwhile when it may be.
    pub(super) fn run_outputs_prefetching(&mut self, time: i64, outs: &[Option<RddId>], ran: u64) -> Vec<Computed> {
        let Some(next) = self.prefetch_time(ran) else {
            return self.run_outputs(time, outs);
        };
        let cursors = self.sources.iter().map(|s| s.cursor()).collect();
        let mut sources = std::mem::take(&mut self.sources);
        let (wall, n) = (self.opts.clock == Clock::Wall, self.job.graph.parallelism);
        let details = !self.listeners.is_empty();
        let (computed, polled) = std::thread::scope(|s| {
            let reader = std::thread::Builder::new()
                .name("weir-prefetch".into())
                .spawn_scoped(s, || poll_all(&mut sources, next, wall, n, details));
            let computed = self.run_outputs(time, outs);
            let polled = match reader {
                Ok(h) => Some(h.join().unwrap_or_else(|_| {
                    Err(SourceError::Custom(format!("reading the input of batch {next} ms panicked")))
                })),
                Err(e) => {
                    tracing::debug!("cannot start the prefetch thread ({e}); batch {next} ms reads at its start");
                    None
                }
            };
            (computed, polled)
        });
        self.sources = sources;
        if polled.is_some() {
            tracing::debug!("batch {next} ms: input read early, while batch {time} ms ran");
        }
        self.prefetched = polled.map(|polled| Prefetched { time: next, cursors, polled });
        computed
    }

    /// The input read early for the batch at `time`, if any.
    pub(super) fn take_prefetched(&mut self, time: i64) -> Result<Option<Vec<Polled>>, SourceError> {
        match self.prefetched.take() {
            Some(p) if p.time == time => p.polled.map(Some),
            Some(p) => {
                // Not this batch's (the next batch is the one read, so this
                // should not happen): the sources go back to where they were
                // before it, and this batch reads them itself.
                tracing::warn!("input read early for batch {} ms is not used by batch {time} ms; read again", p.time);
                for (s, c) in self.sources.iter_mut().zip(&p.cursors) {
                    s.restore(c)?;
                }
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The sources' cursors as a metadata checkpoint records them.
    pub(super) fn cursors(&self) -> Vec<SourceCursor> {
        match &self.prefetched {
            Some(p) => p.cursors.clone(),
            None => self.sources.iter().map(|s| s.cursor()).collect(),
        }
    }
}
