//! Writing a batch's outputs while the next batch computes.
//!
//! A sink's write (rendering, `fsync`, renames) used to be serial work at
//! the end of every batch while the executors sat idle. The driver now
//! hands a batch's computed results to this writer thread and goes on to
//! the next batch; it completes (and checkpoints) the batch when the writer
//! reports back, before it completes the next one. So:
//! * sinks still see writes one at a time, in batch order;
//! * a batch is recorded as completed only once every output was written
//!   (until then the metadata checkpoint lists it as pending, and a restart
//!   re-runs it), exactly as before;
//! * at most `WRITES_IN_FLIGHT` (two) batches' writes are in flight while the
//!   next batch computes (memory: three batches' results; `driver.rs` says
//!   why two).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::fence::Fence;
use crate::listener::OutputOpInfo;
use crate::sink::{CommitGate, Sink, SinkError};

/// One output of a batch, computed and ready to write.
pub(super) struct Computed {
    pub(super) info: OutputOpInfo,
    /// When the output's job started (its duration includes the write).
    pub(super) started: Instant,
    /// The sink and the job's result: `None` when the output had no job
    /// (its error is already in `info`).
    pub(super) write: Option<(Option<Arc<dyn Sink>>, Result<Vec<Vec<u8>>, String>)>,
}

/// A batch's writes, done: the outputs' infos and when the last ended.
pub(super) struct Written {
    pub(super) time: i64,
    pub(super) outputs: Vec<OutputOpInfo>,
    pub(super) finished: Instant,
}

struct Batch {
    time: i64,
    outputs: Vec<Computed>,
}

/// The writer thread and its two channels.
pub(super) struct OutputWriter {
    tx: Option<Sender<Batch>>,
    rx: Receiver<Written>,
    thread: Option<JoinHandle<()>>,
    /// Batches handed over and not yet taken back.
    in_flight: usize,
    /// How failed writes are retried (also for a batch written in line).
    retries: u32,
    backoff: Duration,
    fence: Option<Arc<Fence>>,
}

impl OutputWriter {
    /// Starts the thread; failed writes are tried again `retries` times,
    /// `backoff` apart (doubling).
    /// Every write is a commit through `fence` (the checkpoint location's):
    /// a fenced driver publishes nothing.
    pub(super) fn start(retries: u32, backoff: Duration, fence: Option<Arc<Fence>>) -> std::io::Result<OutputWriter> {
        let (tx, jobs) = channel::<Batch>();
        let (done, rx) = channel();
        let f = fence.clone();
        let thread = std::thread::Builder::new().name("weir-output".into()).spawn(move || {
            for b in jobs {
                let written = write_batch(b, retries, backoff, f.as_deref());
                if done.send(written).is_err() {
                    return;
                }
            }
        })?;
        Ok(OutputWriter { tx: Some(tx), rx, thread: Some(thread), in_flight: 0, retries, backoff, fence })
    }

    /// Hands a batch's outputs to the thread (or writes them here if the
    /// thread is gone, so nothing computed is dropped).
    pub(super) fn submit(&mut self, time: i64, outputs: Vec<Computed>) -> Option<Written> {
        let batch = Batch { time, outputs };
        // Without the thread (gone, or being dropped) the batch is written
        // here, with the same retries: nothing computed is dropped.
        let fence = self.fence.as_deref();
        let Some(tx) = self.tx.as_ref() else { return Some(write_batch(batch, self.retries, self.backoff, fence)) };
        match tx.send(batch) {
            Ok(()) => {
                self.in_flight += 1;
                None
            }
            Err(e) => Some(write_batch(e.0, self.retries, self.backoff, fence)),
        }
    }

    /// Waits for the oldest batch handed over, if any.
    pub(super) fn take(&mut self) -> Option<Written> {
        if self.in_flight == 0 {
            return None;
        }
        self.in_flight -= 1;
        // The thread ends only when the channel closes; a panic in a sink
        // ends it early, and the batch's outputs then count as failed.
        self.rx.recv().ok()
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a batch's outputs here, on the calling thread.
pub(super) fn write_now(
    time: i64,
    outputs: Vec<Computed>,
    retries: u32,
    backoff: Duration,
    fence: Option<&Fence>,
) -> Written {
    write_batch(Batch { time, outputs }, retries, backoff, fence)
}

/// Writes a batch's outputs in order, each with its retries, each as one
/// commit through `fence` (refused once another driver took over).
fn write_batch(b: Batch, retries: u32, backoff: Duration, fence: Option<&Fence>) -> Written {
    let mut outputs = Vec::with_capacity(b.outputs.len());
    for c in b.outputs {
        let mut info = c.info;
        if let Some((sink, result)) = c.write {
            let written = result.and_then(|parts| {
                let sink = sink.ok_or("the output has no sink")?;
                let gate = |commit: &mut dyn FnMut() -> Result<(), SinkError>| -> Result<(), SinkError> {
                    match fence {
                        Some(f) => f
                            .commit(|| {
                                crate::checkpoint::fence::failpoint_stop_in_commit("output");
                                commit()
                            })
                            .map_err(|e| SinkError::Fenced(e.to_string()))?,
                        None => commit(),
                    }
                };
                write_with_retries(sink.as_ref(), b.time, info.index, &parts, retries, backoff, &gate)
            });
            if let Err(e) = written {
                tracing::error!("batch {} ms failed: {e}", b.time);
                info.error = Some(e);
                info.records_out = None;
            }
        }
        info.duration = c.started.elapsed();
        outputs.push(info);
    }
    Written { time: b.time, outputs, finished: Instant::now() }
}

/// One sink write. A failed write (a full disk) is tried again, with
/// backoff, `retries` times when the sink says the failure is transient;
/// the job's result is kept, not recomputed.
pub(super) fn write_with_retries(
    sink: &dyn Sink,
    time: i64,
    index: usize,
    parts: &[Vec<u8>],
    retries: u32,
    mut backoff: Duration,
    gate: CommitGate,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        // A sink that panics fails its output, not the writer thread.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.write_gated(time, parts, gate)))
            .map_err(|_| format!("output {index} panicked while writing batch {time} ms"))?;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt < retries && e.is_transient() => {
                attempt += 1;
                tracing::warn!(
                    "batch {time} ms: output {index} failed: {e}; retrying in {backoff:?} ({attempt} of {retries})"
                );
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
