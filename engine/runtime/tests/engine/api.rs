//! The embedding surface: listeners see a run's events in order (with
//! per-output and per-stage timings, recomputed blocks, checkpoints and
//! recovery), the report keeps a bounded history, a job started in the
//! background stops on request, and streams of two contexts cannot meet.

use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::codec::Value;
use weir::dstream::StreamingContext;
use weir::listener::{
    BatchReport, BatchStarted, BatchSubmitted, BlockRecomputed, CheckpointEvent, RecoveryEvent, StreamingListener,
};
use weir::rdd::{BlockId, RddId};
use weir::scheduler::{AfterBatch, CheckpointOptions, Clock, Master, RunOptions};
use weir::source::SourceSpec;

const WORDCOUNT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/wordcount.wasm");

/// Every event, as a short line, in the order the listener got it.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl StreamingListener for Recorder {
    fn on_batch_submitted(&self, e: &BatchSubmitted) {
        self.push(format!("submitted {} records={} replayed={}", e.time, e.records_in, e.replayed));
    }
    fn on_batch_started(&self, e: &BatchStarted) {
        self.push(format!("started {}", e.time));
    }
    fn on_batch_completed(&self, b: &BatchReport) {
        let stages: Vec<String> = b.outputs.iter().flat_map(|o| o.stages.iter().map(|s| s.kind.to_string())).collect();
        self.push(format!("completed {} outputs={} stages={}", b.time, b.outputs.len(), stages.join("+")));
    }
    fn on_block_recomputed(&self, e: &BlockRecomputed) {
        self.push(format!("recomputed matches={}", e.digest_matches));
    }
    fn on_checkpoint_written(&self, e: &CheckpointEvent) {
        self.push(format!("checkpoint {} bytes>0={}", e.kind, e.bytes > 0));
    }
    fn on_recovery(&self, e: &RecoveryEvent) {
        if let RecoveryEvent::Recovered { pending, .. } = e {
            self.push(format!("recovered pending={pending}"));
        }
    }
}

fn wordcount_job(ssc: &StreamingContext, batches: Vec<Vec<Value>>) -> weir::dstream::DStream {
    assert!(Path::new(WORDCOUNT).is_file(), "{WORDCOUNT} is missing: run udfs/build.sh first");
    let wc = ssc.module(WORDCOUNT).unwrap();
    ssc.queue_stream(batches)
        .flat_map(&wc.udf("split"))
        .unwrap()
        .map(&wc.udf("pair"))
        .unwrap()
        .reduce_by_key(&wc.udf("sum"))
        .unwrap()
}

fn lines(n: usize) -> Vec<Vec<Value>> {
    (0..n).map(|i| vec![Value::Str(format!("a b {i}")), Value::Str("a".into())]).collect()
}

fn opts() -> RunOptions {
    let mut o = RunOptions::default();
    o.master = Master::Local(2);
    o.clock = Clock::Logical;
    o
}

#[test]
fn listener_sees_batches_in_order_with_stages() {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    wordcount_job(&ssc, lines(3)).collect().unwrap();
    let rec = Arc::new(Recorder::default());
    let mut o = opts();
    o.listeners.push(rec.clone());
    let report = ssc.run(o).unwrap();
    assert_eq!(report.batches_run, 3);
    // Each batch's events in order; a batch's outputs are written while the
    // next batch runs, so the next may start before it completes, but it
    // completes before the next completes.
    let events = rec.events();
    let at = |e: String| events.iter().position(|x| *x == e).unwrap_or_else(|| panic!("no {e:?} in {events:?}"));
    let mut last_completed = None;
    for t in [1000, 2000, 3000] {
        let started = at(format!("started {t}"));
        let submitted = at(format!("submitted {t} records=2 replayed=false"));
        let completed = at(format!("completed {t} outputs=1 stages=shuffle map+result"));
        assert!(started < submitted && submitted < completed, "{events:?}");
        assert!(last_completed.is_none_or(|l| l < completed), "completions in batch order: {events:?}");
        if t > 1000 {
            assert!(at(format!("submitted {}", t - 1000) + " records=2 replayed=false") < started, "{events:?}");
        }
        last_completed = Some(completed);
    }
    assert_eq!(events.len(), 9, "{events:?}");
    let b = &report.batches[0];
    assert_eq!(b.outputs[0].stages.iter().map(|s| s.tasks).sum::<u32>(), 4, "2 map + 2 reduce tasks");
    assert!(b.outputs[0].duration <= b.processing);
}

#[test]
fn report_keeps_a_bounded_history() {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    wordcount_job(&ssc, lines(10)).collect().unwrap();
    let mut o = opts();
    o.report_history = 3;
    let report = ssc.run(o).unwrap();
    assert_eq!(report.batches_run, 10);
    assert_eq!(report.batches.iter().map(|b| b.time).collect::<Vec<_>>(), vec![8000, 9000, 10000]);
}

#[test]
fn listener_hears_of_recomputed_blocks() {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    wordcount_job(&ssc, lines(1)).collect().unwrap();
    let rec = Arc::new(Recorder::default());
    let mut o = opts();
    o.listeners.push(rec.clone());
    let hook: AfterBatch =
        Arc::new(Mutex::new(move |dag: &mut weir::scheduler::DagScheduler, _t: i64, outs: &[Option<RddId>]| {
            let rdd = outs[0].unwrap();
            let blocks = dag.backend().blocks().clone();
            let gone = blocks.remove_where(|b| matches!(b, BlockId::Shuffle { shuffle, .. } if *shuffle == rdd));
            assert!(!gone.is_empty());
            dag.run_job(rdd).unwrap();
        }));
    o.after_batch = Some(hook);
    ssc.run(o).unwrap();
    let recomputed: Vec<String> = rec.events().into_iter().filter(|e| e.starts_with("recomputed")).collect();
    assert!(!recomputed.is_empty(), "no block recomputed: {:?}", rec.events());
    assert!(recomputed.iter().all(|e| e == "recomputed matches=true"), "{recomputed:?}");
}

#[test]
fn listener_hears_of_checkpoints_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let run = |n: usize, max: Option<u64>| {
        let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
        wordcount_job(&ssc, lines(n)).collect().unwrap();
        let rec = Arc::new(Recorder::default());
        let mut o = opts();
        o.listeners.push(rec.clone());
        o.checkpoint = Some(CheckpointOptions::new(dir.path()));
        o.max_batches = max;
        ssc.run(o).unwrap();
        rec.events()
    };
    let first = run(4, Some(2));
    assert!(first.iter().any(|e| e == "checkpoint metadata bytes>0=true"), "{first:?}");
    let second = run(4, None);
    assert_eq!(second.first().map(String::as_str), Some("recovered pending=0"), "{second:?}");
    assert!(second.iter().any(|e| e.starts_with("completed 3000")), "resumes after batch 2000: {second:?}");
}

/// Signals each completed batch's time.
struct Progress(Mutex<Sender<i64>>);

impl StreamingListener for Progress {
    fn on_batch_completed(&self, b: &BatchReport) {
        let _ = self.0.lock().unwrap().send(b.time);
    }
}

#[test]
fn started_job_stops_on_request() {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = ssc.module(WORDCOUNT).unwrap();
    // An endless source: only a stop ends this job.
    let gen = SourceSpec::Generator { lines_per_batch: 10, words_per_line: 3, vocabulary: 50, seed: 1, batches: None };
    ssc.source(gen, "generator").flat_map(&wc.udf("split")).unwrap().count().unwrap().collect().unwrap();
    let (tx, rx) = channel();
    let mut o = opts();
    o.listeners.push(Arc::new(Progress(Mutex::new(tx))));
    let handle = ssc.start(o).unwrap();
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(60)).expect("a batch completes");
    }
    let report = handle.stop(false).unwrap();
    assert!(report.batches_run >= 3, "{}", report.batches_run);
    assert_eq!(report.batches_failed, 0);
}

#[test]
fn streams_of_two_contexts_cannot_be_combined() {
    let a = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let b = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let (x, y) = (a.queue_stream(lines(1)), b.queue_stream(lines(1)));
    let union = x.union(&y).err().expect("union across contexts is refused").to_string();
    assert!(union.contains("two different StreamingContexts"), "{union}");
    let join = x.join(&y).err().expect("join across contexts is refused").to_string();
    assert!(join.contains("two different StreamingContexts"), "{join}");
    assert!(x.union(&a.queue_stream(lines(1))).is_ok());
}

#[test]
fn a_missing_executor_binary_is_a_clear_error() {
    let e = weir::cluster::find_executor_binary(Some(Path::new("/nonexistent/weir"))).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/weir does not exist"), "{e}");
}
