//! Issue 11, "a failure is never marked done": outputs that fail (a full
//! disk, a full stdout) leave their batch pending and are re-run after a
//! restart; a corrupt data checkpoint falls back to an older consistent one;
//! hostile lengths in a checkpoint are refused, not allocated; the driver
//! lock survives its lock file being deleted; a record nested too deeply is
//! refused at the source.

use crate::common::*;
use crate::drivers::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// 12 batches of words (batch 7 empty).
fn batches() -> Vec<Vec<String>> {
    word_batches((5, 7, 3))
}

/// Running totals (data checkpoint every 3 s) and a sliding window with an
/// inverse function, both saved as text files under `out/`.
fn stateful_job() -> String {
    format!(
        r#"batch_interval = "1s"
clock = "logical"
[modules]
wordcount = "{}"
[sources.lines]
type = "batches"
path = "in.jsonl"
[streams]
words    = "lines.flat_map(wordcount.split)"
pairs    = "words.map(wordcount.pair)"
totals   = "pairs.update_state_by_key(wordcount.running_total).checkpoint(3s)"
windowed = "pairs.reduce_by_key_and_window(wordcount.sum, wordcount.subtract, 4s, 2s)"
[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "out/totals"
[[outputs]]
stream = "windowed"
type = "save_as_text_files"
prefix = "out/windowed"
"#,
        module("wordcount.wasm").display()
    )
}

fn setup(dir: &Path, job: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let data: String = batches().iter().map(|b| serde_json::to_string(b).unwrap() + "\n").collect();
    std::fs::write(dir.join("in.jsonl"), data).unwrap();
    let p = dir.join("job.toml");
    std::fs::write(&p, job).unwrap();
    p
}

fn run_job(job: &Path, ckpt: &Path, extra: &[&str]) -> std::process::Output {
    run(weir().arg("run").arg(job).arg("--checkpoint").arg(ckpt).args(extra))
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\n{err}", out.status);
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

fn ran(stderr: &str) -> Vec<i64> {
    stderr.lines().filter_map(progress).map(|p| p.0).collect()
}

/// The outputs of a clean, uninterrupted run.
fn clean_outputs() -> std::collections::BTreeMap<String, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    ok(&run_job(&job, &tmp.path().join("ckpt"), &[]), "the clean run");
    let out = tree(&tmp.path().join("out"));
    assert!(out.len() > 24, "{:?}", out.keys());
    out
}

/// A small tmpfs mounted on a directory, unmounted on drop (even when the
/// test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(st.is_ok_and(|s| s.success()), "cannot mount a tmpfs on {} (the test runs as root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the filesystem of `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0x55u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    p
}

/// Temporary or set-aside directories a sink left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.contains(".old"))
        .collect()
}

#[test]
fn a_batch_whose_output_failed_stays_pending_and_is_rerun_after_a_restart() {
    let want = clean_outputs();
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    let out = tmp.path().join("out");
    let mnt = Tmpfs::mount(&out, "512k");

    let err = ok(&run_job(&job, &ckpt, &["--batches", "3"]), "the first 3 batches");
    assert_eq!(ran(&err), vec![1000, 2000, 3000], "{err}");

    // The output disk fills up: the next batches' outputs fail.
    let filler = fill(&out);
    let started = Instant::now();
    let res = run_job(&job, &ckpt, &["--batches", "5"]);
    let err = text(&res.stderr);
    assert!(!res.status.success(), "failed outputs must fail the run:\n{err}");
    assert!(res.status.code().is_some(), "died: {:?}\n{err}", res.status);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("retrying"), "failed outputs are retried:\n{err}");
    assert_eq!(ran(&err), vec![4000, 5000, 6000, 7000, 8000], "{err}");
    let failed_times: Vec<i64> =
        err.lines().filter(|l| l.contains("FAILED")).filter_map(progress).map(|p| p.0).collect();
    assert!(failed_times.len() >= 4, "the full disk fails the batches: {err}");
    assert!(started.elapsed() < Duration::from_secs(60), "the retries are bounded: {:?}", started.elapsed());
    assert_eq!(leftovers(&out), Vec::<String>::new(), "temporary directories left behind");
    // Not recorded as done: the checkpoint has them pending.
    let s = text(&run(weir().args(["checkpoint", "inspect"]).arg(&ckpt)).stdout);
    let pending = s.lines().find(|l| l.starts_with("pending batches:")).unwrap_or_default().to_string();
    assert!(pending.contains("4000 ms") && pending.contains("8000 ms"), "{s}");

    // Space again: a restart re-runs exactly the failed batches, then goes on.
    std::fs::remove_file(&filler).unwrap();
    let err = ok(&run_job(&job, &ckpt, &[]), "the run after the disk was freed");
    // Exactly the failed ones first (pending), then the rest.
    let mut want_ran = failed_times.clone();
    want_ran.extend([9000, 10000, 11000, 12000]);
    assert_eq!(ran(&err), want_ran, "{err}");
    assert_eq!(leftovers(&out), Vec::<String>::new());
    assert_same_tree(&tree(&out), &want, "outputs after a full disk vs a clean run");
    drop(mnt);
}

#[test]
fn an_output_failing_for_ever_stops_the_run_past_the_pending_limit_and_a_restart_reruns_them() {
    let want = clean_outputs();
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    // `out` is a file: every output write fails (ENOTDIR), for ever.
    std::fs::write(tmp.path().join("out"), "not a directory").unwrap();
    let r = run_bounded(
        weir().arg("run").arg(&job).arg("--checkpoint").arg(&ckpt).args(["--max-pending-batches", "5"]),
        Duration::from_secs(60),
    );
    let err = &r.stderr;
    assert!(!r.timed_out, "{err}");
    assert_eq!(r.code, Some(1), "an error exit, not success or a crash:\n{err}");
    // Stopped at the 6th pending batch (the 7th and 8th, computed while the
    // writer was up to two batches behind, may have run too), not at the end
    // of the input (12).
    let times = ran(err);
    assert!(times.len() <= 8 && times[..6] == [1000, 2000, 3000, 4000, 5000, 6000], "{err}");
    let last = err.lines().rev().find(|l| l.contains("error")).unwrap_or_default();
    assert!(
        last.contains("6 batches are pending")
            && last.contains("1000 ms to 6000 ms")
            && last.contains("--max-pending-batches")
            && last.contains(&format!("writing {}", tmp.path().join("out").display())),
        "{err}"
    );
    let s = text(&run(weir().args(["checkpoint", "inspect"]).arg(&ckpt)).stdout);
    let pending = s.lines().find(|l| l.starts_with("pending batches:")).unwrap_or_default().to_string();
    assert!(pending.contains("1000 ms") && pending.contains("6000 ms"), "{s}");

    // The output works again: a restart re-runs the pending batches, then
    // the rest, and writes what a clean run writes.
    std::fs::remove_file(tmp.path().join("out")).unwrap();
    let err = ok(&run_job(&job, &ckpt, &[]), "the run after the output was fixed");
    assert_eq!(ran(&err), (1..=12).map(|k| k * 1000).collect::<Vec<_>>(), "{err}");
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "outputs after a failing output vs a clean run");
}

#[test]
fn a_corrupt_newest_state_checkpoint_falls_back_to_an_older_consistent_one() {
    let want = clean_outputs();
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "8"]), "the first 8 batches");
    // The totals' newest data checkpoint is at 6000 ms: flip a byte in it.
    let s = text(&run(weir().args(["checkpoint", "inspect"]).arg(&ckpt)).stdout);
    let line =
        s.lines().find(|l| l.starts_with("state of stream") && l.contains("batch 6000 ms")).unwrap_or_else(|| {
            panic!("no state at 6000 ms:\n{s}");
        });
    let file = line.split("state/").nth(1).unwrap().split(' ').next().unwrap();
    let path = ckpt.join("state").join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() - 3;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let err = ok(&run_job(&job, &ckpt, &[]), "the run after the state was corrupted");
    assert!(err.contains("falling back"), "{err}");
    assert!(err.contains(file), "the bad file is named: {err}");
    assert!(err.contains("recovered from checkpoint"), "{err}");
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "outputs after state fallback vs a clean run");
}

#[test]
fn a_state_checkpoint_file_over_its_bound_is_refused_before_it_is_read() {
    let want = clean_outputs();
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "8"]), "the first 8 batches");
    let s = text(&run(weir().args(["checkpoint", "inspect"]).arg(&ckpt)).stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("state of stream") && l.contains("batch 6000 ms"))
        .unwrap_or_else(|| panic!("no state at 6000 ms:\n{s}"));
    let file = line.split("state/").nth(1).unwrap().split(' ').next().unwrap();
    // The newest data checkpoint becomes 2 GiB (sparse: no disk used), over
    // the 1 GiB a data checkpoint may hold. Reading it whole, as before,
    // costs 2 GiB of memory.
    let path = ckpt.join("state").join(file);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(2 << 30).unwrap();

    let r = run_bounded(weir().arg("run").arg(&job).arg("--checkpoint").arg(&ckpt), Duration::from_secs(120));
    let err = &r.stderr;
    eprintln!("exit {:?} in {:?}, peak RSS {} kB", r.code, r.elapsed, r.peak_kb);
    assert!(!r.timed_out && r.code == Some(0) && !err.contains("panicked"), "{:?}:\n{err}", r.code);
    let named =
        err.lines().find(|l| l.contains(file) && l.contains("2147483648 bytes, more than the 1073741824 allowed"));
    assert!(named.is_some(), "the file and the bound are named:\n{err}");
    assert!(err.contains("falling back") && err.contains("recovered from checkpoint"), "{err}");
    assert!(r.peak_kb < 200 << 10, "peak RSS {} kB:\n{err}", r.peak_kb);
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "outputs after a refused state file vs a clean run");
}

/// bincode 2 (standard): a varint of 2^62 (0xFD marker, then u64le).
fn huge_len() -> Vec<u8> {
    let mut v = vec![0xFD];
    v.extend_from_slice(&(1u64 << 62).to_le_bytes());
    v
}

#[test]
fn a_checkpoint_claiming_a_huge_length_is_refused_not_allocated() {
    use weir::checkpoint::file::{frame, FileKind};
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    std::fs::create_dir_all(ckpt.join("metadata")).unwrap();
    // seq 0, then the job hash: a string of 2^62 bytes (valid frame and checksum).
    let mut payload = vec![0u8];
    payload.extend(huge_len());
    payload.extend_from_slice(b"abc");
    std::fs::write(ckpt.join("metadata/checkpoint-00000000000000000000"), frame(FileKind::Metadata, &payload)).unwrap();

    let out = run(weir().args(["checkpoint", "inspect"]).arg(&ckpt));
    let s = text(&out.stdout);
    assert!(out.status.success(), "inspect: {:?}\n{}", out.status, text(&out.stderr));
    assert!(s.contains("INVALID") && s.contains("checkpoint-00000000000000000000"), "{s}");

    let out = run_job(&job, &ckpt, &["--batches", "2"]);
    let err = text(&out.stderr);
    assert!(out.status.code().is_some(), "weir run died: {:?}\n{err}", out.status);
    assert!(err.contains("not usable"), "{err}");
}

/// A live driver's lease is its epoch file (`DIR/epochs/<epoch>`), with
/// the legacy `DIR/lock` written beside it and an flock on `DIR` as a hint.
/// Deleting the legacy file leaves the epoch file to refuse a second driver;
/// deleting the epoch files too leaves the flock to refuse it. Neither
/// deletion stops the first driver.
#[test]
fn deleting_the_lease_files_does_not_let_a_second_driver_in() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, socket_totals_job(listener.local_addr().unwrap().port(), None)).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let cmd = || {
        let mut c = weir();
        c.arg("run").arg(&job).args(["--clock", "wall", "--checkpoint"]).arg(&ckpt);
        c
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut first = Driver::spawn(&mut cmd());
    first.wait_for(deadline, "the first driver's first batch", |l| progress(l).is_some());
    assert!(ckpt.join("epochs").is_dir(), "the lease is kept in epoch files");
    for (deleted, why) in [("lock", "the epoch file"), ("epochs", "the flock")] {
        let p = ckpt.join(deleted);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        let mut second = Driver::spawn(&mut cmd());
        let status = second.wait_exit(Duration::from_secs(40), "the second driver to give up");
        let err = second.log();
        assert!(!status.success(), "with {deleted} deleted a second driver ran beside a live one:\n{err}");
        assert!(err.contains("in use by another driver"), "with {deleted} deleted, {why} refuses: {err}");
        // The first driver goes on: a batch after every one it had done.
        let last = first.log().lines().filter_map(progress).map(|(t, _)| t).max().unwrap();
        first.wait_for(deadline, "the first driver's next batch", |l| progress(l).is_some_and(|(t, _)| t > last));
    }
    first.kill();
}

#[test]
fn a_record_nested_too_deeply_is_refused_at_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    std::fs::write(tmp.path().join("in.jsonl"), format!("[\"a\"]\n[\"b\", {deep}, \"c\"]\n[\"d\"]\n")).unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        "batch_interval = \"1s\"\nclock = \"logical\"\n[sources.lines]\ntype = \"batches\"\npath = \"in.jsonl\"\n\
         [[outputs]]\nstream = \"lines\"\ntype = \"save_as_text_files\"\nprefix = \"out/lines\"\n",
    )
    .unwrap();
    let out = run(weir().arg("run").arg(&job));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a record nested 70 deep was accepted:\n{err}");
    assert!(err.contains("in.jsonl:2:"), "names the file and line: {err}");
    assert!(err.contains("nested"), "{err}");
    assert!(read_outputs(&tmp.path().join("out"), "lines").is_empty(), "nothing ran");
}

#[test]
fn print_to_a_full_stdout_fails_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("in.jsonl"), "[\"a b\"]\n[\"c\"]\n").unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        "batch_interval = \"1s\"\nclock = \"logical\"\n[sources.lines]\ntype = \"batches\"\npath = \"in.jsonl\"\n\
         [[outputs]]\nstream = \"lines\"\ntype = \"print\"\n",
    )
    .unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = weir().arg("run").arg(&job).stdout(full.try_clone().unwrap()).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "print to a full stdout succeeded:\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // So does `weir checkpoint inspect`.
    let ckpt = tmp.path().join("ckpt");
    let _ = run(weir().arg("run").arg(&job).arg("--checkpoint").arg(&ckpt));
    let out = weir().args(["checkpoint", "inspect"]).arg(&ckpt).stdout(full).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "inspect to a full stdout succeeded:\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

#[test]
fn leftover_temporary_files_in_the_checkpoint_directory_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "2"]), "two batches");
    // What a driver killed halfway through a write leaves.
    let stale = [ckpt.join("metadata/.checkpoint-00000000000000000099.tmp"), ckpt.join("state/.3-9000.state.tmp")];
    for p in &stale {
        std::fs::write(p, b"half a file").unwrap();
    }
    ok(&run_job(&job, &ckpt, &["--batches", "1"]), "one more batch");
    for p in &stale {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

/// Running totals of `batches()` after each batch, natively.
fn expected_totals() -> Vec<(i64, std::collections::BTreeMap<String, i64>)> {
    let mut totals = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for (i, b) in batches().iter().enumerate() {
        for line in b {
            for w in line.split_ascii_whitespace() {
                *totals.entry(w.to_string()).or_insert(0) += 1;
            }
        }
        out.push(((i as i64 + 1) * 1000, totals.clone()));
    }
    out
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(i64, std::collections::BTreeMap<String, i64>)>>>;

/// An embedder's sink (retried like I/O, unlike a `foreach_rdd` `Err`) that
/// fails at `fail_at`; what it was given goes to `seen`, each call to `calls`.
struct FlakySink {
    fail_at: Option<i64>,
    seen: Seen,
    calls: Seen,
}

impl weir::sink::Sink for FlakySink {
    fn write(&self, time: i64, parts: &[Vec<u8>]) -> Result<(), weir::sink::SinkError> {
        use weir::codec::Value;
        self.calls.lock().unwrap().push((time, Default::default()));
        if Some(time) == self.fail_at {
            return Err(weir::sink::SinkError::Custom("the disk is full".into()));
        }
        let mut m = std::collections::BTreeMap::new();
        for p in parts {
            for v in Value::decode_batch(p).unwrap() {
                let Value::Tuple(kv) = v else { panic!("{v:?}") };
                let (Value::Str(k), Value::I64(c)) = (&kv[0], &kv[1]) else { panic!("{kv:?}") };
                m.insert(k.clone(), *c);
            }
        }
        self.seen.lock().unwrap().push((time, m));
        Ok(())
    }
}

/// Running totals (data checkpoint every 3 s) to a [`FlakySink`].
fn totals_context(fail_at: Option<i64>, seen: Seen, calls: Seen) -> weir::dstream::StreamingContext {
    use weir::codec::Value;
    let ssc = weir::dstream::StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = ssc.module(module("wordcount.wasm")).unwrap();
    let input: Vec<Vec<Value>> = batches().iter().map(|b| b.iter().map(|s| Value::str(s)).collect()).collect();
    let totals = ssc
        .queue_stream(input)
        .flat_map(&wc.udf("split"))
        .unwrap()
        .map(&wc.udf("pair"))
        .unwrap()
        .update_state_by_key(&wc.udf("running_total"))
        .unwrap()
        .checkpoint(Duration::from_secs(3))
        .unwrap();
    totals.write_to(std::sync::Arc::new(FlakySink { fail_at, seen, calls })).unwrap();
    ssc
}

#[test]
fn later_batches_complete_while_a_failed_one_stays_pending_and_only_it_is_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ckpt");
    let opts = || {
        let mut o = weir::scheduler::RunOptions::default();
        o.checkpoint = Some(weir::scheduler::CheckpointOptions::new(&root));
        o.output_retries = 2;
        o.output_retry_backoff = Duration::from_millis(1);
        o
    };
    let want = expected_totals();

    // Batch 4000 fails; the others (and the state after it) go on.
    let (seen, calls) = (Seen::default(), Seen::default());
    let report = totals_context(Some(4000), seen.clone(), calls.clone()).run(opts()).unwrap();
    assert_eq!((report.batches_run, report.batches_failed), (12, 1));
    let tried = calls.lock().unwrap().iter().filter(|c| c.0 == 4000).count();
    assert_eq!(tried, 3, "one attempt and two retries");
    let others: Vec<_> = want.iter().filter(|w| w.0 != 4000).cloned().collect();
    assert_eq!(*seen.lock().unwrap(), others, "the batches after the failed one");
    let m = weir::checkpoint::load_newest(&root).metadata.expect("a checkpoint");
    assert_eq!(m.pending, vec![4000], "the failed batch is not done: {m:?}");
    assert_eq!(m.last_completed, Some(12000));
    // Its re-run needs the state from before it (the newest one is at 12000).
    assert!(m.state.values().all(|r| r.time <= 4000), "{:?}", m.state);

    // After a restart exactly the failed batch runs, with the right state.
    let (seen, calls) = (Seen::default(), Seen::default());
    let report = totals_context(None, seen.clone(), calls).run(opts()).unwrap();
    assert_eq!((report.batches_run, report.batches_failed), (1, 0));
    assert_eq!(*seen.lock().unwrap(), vec![want[3].clone()]);
    let m = weir::checkpoint::load_newest(&root).metadata.expect("a checkpoint");
    assert!(m.pending.is_empty(), "{m:?}");
    assert_eq!(m.last_completed, Some(12000));
}

#[test]
fn with_no_consistent_checkpoint_left_recovery_refuses_rather_than_drop_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job());
    let ckpt = tmp.path().join("ckpt");
    // Ten batches: the ten metadata checkpoints kept are all from after the
    // first data checkpoint was written (batch 3000 ms, completed up to two
    // batches after it was generated).
    ok(&run_job(&job, &ckpt, &["--batches", "10"]), "the first 10 batches");
    // Every data checkpoint is corrupt: every kept metadata checkpoint names one.
    for e in std::fs::read_dir(ckpt.join("state")).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
    }
    let out = run_job(&job, &ckpt, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "ran without its state:\n{err}");
    assert!(err.contains("state") && err.contains("--fresh"), "{err}");
    assert!(ran(&err).is_empty(), "{err}");
    ok(&run_job(&job, &ckpt, &["--fresh"]), "--fresh starts over");
}
