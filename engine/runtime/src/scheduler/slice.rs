//! `DStream::slice` on a running job (Spark's `DStream.slice`): the records
//! of the RDDs a stream produced over a time range. The caller's thread puts
//! a request in a [`SliceQueue`] shared with the driver, which serves it
//! between batches (the DAG scheduler is the driver thread's), computing the
//! RDDs from their lineage as long as the job remembers them (its longest
//! window, or `remember(d)`), and answers on a channel; the caller waits with
//! a deadline. When the driver ends, waiting callers are answered at once.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use weir_codec::Value;
use weir_plan::graph::rdd_of;
use weir_plan::limits;

use super::Driver;

/// How long `slice` waits for the driver (it answers between batches).
pub const SLICE_DEADLINE: Duration = Duration::from_secs(120);

/// The records of each batch of a slice: `(batch time ms, records)`.
pub type Sliced = Vec<(i64, Vec<Value>)>;

/// Why a slice was not answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SliceError {
    #[error("slice: the job has not been started (slice works on a job started with StreamingContext::start)")]
    NotStarted,
    #[error("slice: the job has ended")]
    Ended,
    #[error("slice: the driver did not answer within {0:?} (it answers between batches)")]
    Timeout(Duration),
    #[error("slice({from} ms, {to} ms) of {stream}: {why}")]
    Refused { stream: String, from: i64, to: i64, why: String },
}

struct Request {
    node: u32,
    from: i64,
    to: i64,
    reply: mpsc::Sender<Result<Sliced, SliceError>>,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    ended: bool,
}

/// Requests from `DStream::slice` to a running driver.
#[derive(Clone, Default)]
pub struct SliceQueue(Arc<Mutex<State>>);

impl SliceQueue {
    /// Asks for the RDDs of stream `node` from `from` to `to` (ms) and waits
    /// up to `deadline` for the answer.
    pub(crate) fn ask(&self, node: u32, from: i64, to: i64, deadline: Duration) -> Result<Sliced, SliceError> {
        let (reply, answer) = mpsc::channel();
        {
            let mut s = self.0.lock().map_err(|_| SliceError::Ended)?;
            if s.ended {
                return Err(SliceError::Ended);
            }
            s.requests.push(Request { node, from, to, reply });
        }
        answer.recv_timeout(deadline).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => SliceError::Timeout(deadline),
            mpsc::RecvTimeoutError::Disconnected => SliceError::Ended,
        })?
    }

    fn take(&self) -> Vec<Request> {
        self.0.lock().map(|mut s| std::mem::take(&mut s.requests)).unwrap_or_default()
    }

    /// The driver ended: answer every waiting caller and refuse new ones.
    pub(super) fn end(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.ended = true;
            for r in s.requests.drain(..) {
                let _ = r.reply.send(Err(SliceError::Ended));
            }
        }
    }
}

impl Driver {
    /// The queue `DStream::slice` puts its requests in.
    pub fn slice_queue(&self) -> SliceQueue {
        self.slices.clone()
    }

    /// Answers the slices asked for since the last batch.
    pub(super) fn serve_slices(&mut self) {
        for r in self.slices.take() {
            let answer = self.slice(r.node, r.from, r.to);
            // The caller may have given up waiting.
            let _ = r.reply.send(answer);
        }
    }

    /// Spark's `DStream.slice`: both ends aligned down to the stream's
    /// slide, every RDD from one to the other (both included).
    fn slice(&mut self, node: u32, from: i64, to: i64) -> Result<Sliced, SliceError> {
        let g = &self.job.graph;
        let Some(n) = g.nodes.get(node as usize) else {
            return Err(SliceError::Refused {
                stream: format!("stream {node}"),
                from,
                to,
                why: "no such stream".into(),
            });
        };
        let refuse = |why: String| SliceError::Refused { stream: n.label.clone(), from, to, why };
        let (zero, slide) = (self.progress.zero_time, n.slide_ms.max(1));
        let align = |t: i64| zero.saturating_add(t.saturating_sub(zero).div_euclid(slide).saturating_mul(slide));
        let (first, last) = (align(from).max(zero + slide), align(to));
        if first > last {
            return Ok(Vec::new());
        }
        let latest = self.latest.unwrap_or(zero);
        if last > latest {
            return Err(refuse(format!("batch {last} ms has not run yet (the latest is {latest} ms)")));
        }
        if first < self.horizon {
            return Err(refuse(format!(
                "batch {first} ms is forgotten: the job keeps RDDs from {} ms on (remember(d) keeps them longer)",
                self.horizon
            )));
        }
        if (last - first) / slide >= limits::MAX_WINDOW_BATCHES {
            return Err(refuse(format!("more than {} batches in one slice", limits::MAX_WINDOW_BATCHES)));
        }
        let mut out = Vec::new();
        let mut t = first;
        while t <= last {
            if let Some(id) = rdd_of(g, zero, node, t, &mut self.memo, &mut self.dag.lineage) {
                let parts = self.dag.run_job(id).map_err(|e| refuse(format!("batch {t} ms: {e}")))?;
                let mut records = Vec::new();
                for p in &parts {
                    records.extend(Value::decode_batch(p).map_err(|e| refuse(format!("batch {t} ms: {e}")))?);
                }
                out.push((t, records));
            }
            t += slide;
        }
        // Stages run for a slice are not any output's.
        self.dag.take_stages();
        Ok(out)
    }
}
