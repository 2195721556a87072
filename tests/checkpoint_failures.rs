//! Checkpoint writes that fail for a while (through the Rust API, in
//! process): the job goes on, the failures are counted and the last error
//! says why, and checkpoints resume once the directory is writable again.
//!
//! The directory is made unwritable by renaming its `metadata/` and `state/`
//! away and putting plain files of those names in their place, so every
//! write into them fails even as root; then put back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weir::checkpoint::{self, CheckpointStats};
use weir::codec::Value;
use weir::dstream::StreamingContext;
use weir::scheduler::{AfterBatch, CheckpointOptions};
use weir::scheduler::{Clock, RunOptions};

const WORDCOUNT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/wordcount.wasm");
const BATCHES: usize = 16;
const BREAK_AT: i64 = 5000;
const RESTORE_AT: i64 = 10_000;

fn input() -> Vec<Vec<Value>> {
    let words = ["a", "b", "c", "d", "e", "f", "g"];
    (0..BATCHES)
        .map(|b| {
            (0..b % 3 + 1)
                .map(|l| {
                    Value::str(
                        &(0..(b + l) % 4 + 1).map(|i| words[(b * 3 + l + i * 2) % 7]).collect::<Vec<_>>().join(" "),
                    )
                })
                .collect()
        })
        .collect()
}

/// Running totals after each batch, natively.
fn expected(input: &[Vec<Value>]) -> Vec<(i64, BTreeMap<String, i64>)> {
    let mut totals = BTreeMap::new();
    let mut out = Vec::new();
    for (i, batch) in input.iter().enumerate() {
        for line in batch {
            let Value::Str(s) = line else { panic!("{line:?}") };
            for w in s.split_ascii_whitespace() {
                *totals.entry(w.to_string()).or_insert(0) += 1;
            }
        }
        out.push(((i as i64 + 1) * 1000, totals.clone()));
    }
    out
}

fn as_totals(values: &[Value]) -> BTreeMap<String, i64> {
    values
        .iter()
        .map(|v| match v {
            Value::Tuple(kv) => match (&kv[0], &kv[1]) {
                (Value::Str(k), Value::I64(c)) => (k.clone(), *c),
                other => panic!("not a (word, count) pair: {other:?}"),
            },
            other => panic!("not a pair: {other:?}"),
        })
        .collect()
}

fn set_aside(p: &Path) -> PathBuf {
    p.with_file_name(format!("{}.away", p.file_name().unwrap().to_string_lossy()))
}

/// Replaces `metadata/` and `state/` with plain files.
fn break_dir(root: &Path) {
    for d in [checkpoint::metadata_dir(root), checkpoint::state_dir(root)] {
        std::fs::rename(&d, set_aside(&d)).unwrap();
        std::fs::write(&d, "not a directory").unwrap();
    }
}

fn restore_dir(root: &Path) {
    for d in [checkpoint::metadata_dir(root), checkpoint::state_dir(root)] {
        std::fs::remove_file(&d).unwrap();
        std::fs::rename(set_aside(&d), &d).unwrap();
    }
}

/// The engine's log (warnings), captured: the checkpoint writer is a
/// background thread, and its failures are known only through the log.
#[derive(Clone, Default)]
struct Log(Arc<(Mutex<String>, Condvar)>);

struct LogWriter(Log);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (text, cv) = &*(self.0).0;
        text.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        cv.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn install() -> Log {
        let log = Log::default();
        let l = log.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(l.clone()))
            .init();
        log
    }

    fn text(&self) -> String {
        self.0 .0.lock().unwrap().clone()
    }

    /// Waits until the log has `n` lines containing `what` (no sleeping: the
    /// writer notifies).
    fn wait_for(&self, what: &str, n: usize, timeout: Duration) {
        let (text, cv) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut t = text.lock().unwrap();
        while t.lines().filter(|l| l.contains(what)).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what:?} in the log within {timeout:?}:\n{t}");
            t = cv.wait_timeout(t, left).unwrap().0;
        }
    }
}

#[test]
fn failed_checkpoint_writes_are_counted_and_the_job_goes_on() {
    let log = Log::install();
    assert!(Path::new(WORDCOUNT).is_file(), "{WORDCOUNT} is missing: run udfs/build.sh first");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ckpt");
    let input = input();

    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = ssc.module(WORDCOUNT).unwrap();
    let words = ssc.queue_stream(input.clone()).flat_map(&wc.udf("split")).unwrap();
    let pairs = words.map(&wc.udf("pair")).unwrap();
    let totals = pairs.update_state_by_key(&wc.udf("running_total")).unwrap();
    // Data checkpoints every 2 batches: some fall in the outage.
    let totals = totals.checkpoint(Duration::from_secs(2)).unwrap();
    let collected = totals.collect().unwrap();

    let hook_root = root.clone();
    let hook_log = log.clone();
    let broken_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = broken_seen.clone();
    let hook: AfterBatch = Arc::new(Mutex::new(move |_: &mut weir::scheduler::DagScheduler, time: i64, _: &[_]| {
        if time == BREAK_AT {
            break_dir(&hook_root);
        }
        if time == RESTORE_AT {
            // The writer runs behind the batches: make sure it has hit the
            // broken directory (at least twice) before it is repaired.
            hook_log.wait_for("checkpoint write failed", 2, Duration::from_secs(60));
            restore_dir(&hook_root);
        }
        seen.lock().unwrap().push(time);
    }));
    let report = ssc
        .run({
            let mut o = RunOptions::default();
            o.clock = Clock::Logical;
            o.checkpoint = Some(CheckpointOptions::new(&root));
            o.after_batch = Some(hook);
            o
        })
        .expect("the run goes on although checkpoint writes fail");

    // Every batch ran and produced its output.
    let failed: Vec<_> = report.failed_batches().map(|b| (b.time, b.errors.clone())).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(report.batches.len(), BATCHES);
    assert_eq!(broken_seen.lock().unwrap().len(), BATCHES);
    let got: Vec<(i64, BTreeMap<String, i64>)> =
        collected.lock().unwrap().iter().map(|(t, v)| (*t, as_totals(v))).collect();
    assert_eq!(got, expected(&input), "the running totals of every batch, through the outage");

    // The failures were counted, and the last error says why.
    let stats: CheckpointStats = report.checkpoint.clone().expect("checkpoint stats with a checkpoint directory");
    assert!(stats.failures > 0, "{stats:?}");
    let err = stats.last_error.clone().expect("the last error is kept");
    // The cause: the file in the way (or, while the directory is being put
    // back, its absence), and the path under the checkpoint directory.
    assert!(err.contains("Not a directory") || err.contains("No such file or directory"), "the cause: {err}");
    let (metadata, state) = (checkpoint::metadata_dir(&root), checkpoint::state_dir(&root));
    assert!(err.contains(&*metadata.to_string_lossy()) || err.contains(&*state.to_string_lossy()), "the path: {err}");
    let warnings = log.text();
    assert_eq!(
        warnings.lines().filter(|l| l.contains("checkpoint write failed")).count() as u64,
        stats.failures,
        "one warning per failure:\n{warnings}"
    );
    assert!(warnings.contains("the job goes on"), "{warnings}");
    // Everything queued after the repair was written: 2 metadata
    // checkpoints per batch and a data checkpoint every 2 batches.
    let after = BATCHES as u64 - RESTORE_AT as u64 / 1000;
    assert!(stats.metadata_written >= 2 * after, "{stats:?}");
    assert!(stats.state_written >= after / 2, "{stats:?}");

    // Checkpoints resumed: the newest valid one is of the last batch, and
    // the data checkpoint it names was written after the outage and reads.
    let rec = checkpoint::load_newest(&root);
    assert!(rec.invalid.is_empty(), "{:?}", rec.invalid);
    let m = rec.metadata.expect("a metadata checkpoint");
    let last = BATCHES as i64 * 1000;
    assert_eq!(m.last_completed, Some(last), "{m:?}");
    assert!(m.pending.is_empty(), "{m:?}");
    assert_eq!(m.state.len(), 1, "{m:?}");
    for r in m.state.values() {
        assert_eq!(r.time, last, "the newest data checkpoint is of the last batch: {r:?}");
        let parts = checkpoint::read_state(&root, r).expect("the data checkpoint reads back");
        assert_eq!(parts.len() as u32, r.partitions);
    }
}
