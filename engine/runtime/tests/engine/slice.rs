//! `DStream::slice` and `remember` on a running job, as Spark's
//! BasicOperationsSuite "slice" and "slice - has not been initialized":
//! a slice returns the RDDs a stream produced over a time range (both ends
//! aligned to its slide and included), compared here with what an output of
//! the same stream collected; RDDs older than the job remembers are refused.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weir::codec::Value;
use weir::dstream::{DStream, StreamingContext};
use weir::listener::{BatchReport, StreamingListener};
use weir::scheduler::{Clock, Master, RunOptions, SliceError};
use weir::source::SourceSpec;

/// The latest batch completed, for waiting on it.
#[derive(Default)]
struct Latest(Mutex<i64>, Condvar);

impl StreamingListener for Latest {
    fn on_batch_completed(&self, b: &BatchReport) {
        let mut t = self.0.lock().unwrap();
        *t = (*t).max(b.time);
        self.1.notify_all();
    }
}

impl Latest {
    /// Waits (up to a minute) until batch `time` has completed.
    fn wait_for(&self, time: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut t = self.0.lock().unwrap();
        while *t < time {
            let left = deadline.checked_duration_since(Instant::now()).expect("batch did not complete within 60 s");
            t = self.1.wait_timeout(t, left).unwrap().0;
        }
    }
}

/// A generator stream (never ends), collected; `remember` if given.
fn job(remember: Option<Duration>) -> (StreamingContext, DStream, Arc<Mutex<Vec<(i64, Vec<Value>)>>>) {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let spec = SourceSpec::Generator { lines_per_batch: 3, words_per_line: 2, vocabulary: 50, seed: 7, batches: None };
    let lines = ssc.source(spec, "generator");
    let collected = lines.collect().unwrap();
    if let Some(d) = remember {
        ssc.remember(d);
    }
    (ssc, lines, collected)
}

fn opts(latest: &Arc<Latest>) -> RunOptions {
    let mut o = RunOptions::default();
    o.master = Master::Local(2);
    o.clock = Clock::Logical;
    o.listeners = vec![latest.clone()];
    o
}

#[test]
fn slice_returns_the_rdds_of_a_time_range_while_the_job_runs() {
    let (ssc, lines, collected) = job(Some(Duration::from_secs(3600)));
    // Spark: "slice - has not been initialized".
    assert_eq!(lines.slice(0, 1000), Err(SliceError::NotStarted));
    let latest = Arc::new(Latest::default());
    let handle = ssc.start(opts(&latest)).unwrap();
    latest.wait_for(5000);
    let want = |from: i64, to: i64| -> Vec<(i64, Vec<Value>)> {
        collected.lock().unwrap().iter().filter(|(t, _)| (from..=to).contains(t)).cloned().collect()
    };
    // Spark's cases: (0, 1000) is batch 1000 alone (time 0 is no batch);
    // (1000, 2000) both ends; (2000, 4000) three batches.
    let one = lines.slice(0, 1000).unwrap();
    assert_eq!(one, want(1000, 1000));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].1.len(), 3, "3 lines per batch");
    assert_eq!(lines.slice(1000, 2000).unwrap(), want(1000, 2000));
    let three = lines.slice(2000, 4000).unwrap();
    assert_eq!(three.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![2000, 3000, 4000]);
    assert_eq!(three, want(2000, 4000));
    // Times align down to the slide: 1500..2500 is 1000..2000.
    assert_eq!(lines.slice(1500, 2500).unwrap(), want(1000, 2000));
    // An empty range, and a batch that has not run.
    assert_eq!(lines.slice(3000, 2000).unwrap(), vec![]);
    let err = lines.slice(1000, 1_000_000_000).unwrap_err();
    assert!(err.to_string().contains("has not run yet"), "{err}");
    handle.stop(false).unwrap();
    assert_eq!(lines.slice(1000, 1000), Err(SliceError::Ended));
}

#[test]
fn without_remember_old_rdds_are_forgotten_and_a_slice_of_them_is_refused() {
    let (ssc, lines, _collected) = job(None);
    let latest = Arc::new(Latest::default());
    let handle = ssc.start(opts(&latest)).unwrap();
    // The job keeps about two batches (no window): batch 1000 is long gone.
    latest.wait_for(20_000);
    let err = lines.slice(1000, 1000).unwrap_err();
    assert!(
        matches!(&err, SliceError::Refused { why, .. } if why.contains("forgotten") && why.contains("remember")),
        "{err}"
    );
    handle.stop(false).unwrap();
}

/// `DStream::remember` on one stream (not the context) keeps its RDDs far
/// back; a stream derived from it slices the same range from them, as in
/// Spark (whose `slice` computes a forgotten RDD from its parents').
#[test]
fn a_streams_own_remember_keeps_its_rdds_for_slices() {
    let (ssc, lines, collected) = job(None);
    lines.remember(Duration::from_secs(3600)).unwrap();
    let counts = lines.count().unwrap();
    let counted = counts.collect().unwrap();
    let latest = Arc::new(Latest::default());
    let handle = ssc.start(opts(&latest)).unwrap();
    latest.wait_for(20_000);
    let at = |c: &Arc<Mutex<Vec<(i64, Vec<Value>)>>>, t: i64| -> Vec<(i64, Vec<Value>)> {
        c.lock().unwrap().iter().filter(|(x, _)| *x == t).cloned().collect()
    };
    assert_eq!(lines.slice(1000, 1000).unwrap(), at(&collected, 1000));
    assert_eq!(counts.slice(1000, 2000).unwrap(), [at(&counted, 1000), at(&counted, 2000)].concat());
    assert_eq!(counts.slice(1000, 1000).unwrap(), vec![(1000, vec![Value::I64(3)])]);
    handle.stop(false).unwrap();
}
