//! Signals and supervision: SIGTERM drains like the first Ctrl-C (the batch
//! in flight finishes, the checkpoint is written, exit 0); a supervisor
//! forwards SIGINT/SIGTERM to its driver and waits for it, never leaving it
//! running alone with the checkpoint lock; a logical clock over a source
//! with nothing to give idles instead of spinning.

use crate::common::*;
use crate::drivers::*;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

/// An endless generator job with running totals (state) and text outputs.
fn endless_job(dir: &Path) -> std::path::PathBuf {
    let job = format!(
        r#"
batch_interval = "1s"
clock = "logical"

[modules]
wordcount = "{wc}"

[sources.lines]
type = "generator"
lines_per_batch = 200
vocabulary = 50

[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
totals = "pairs.update_state_by_key(wordcount.running_total)"

[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "out/totals"
"#,
        wc = module("wordcount.wasm").display()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, job).unwrap();
    path
}

fn send(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{signal} {pid}");
}

/// Waits for `n` progress lines; returns the last batch time.
fn progress_lines(d: &mut Driver, n: usize) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    for _ in 0..n {
        last = progress(&d.wait_for(deadline, "a progress line", |l| progress(l).is_some())).unwrap().0;
    }
    last
}

/// The batch times with a complete output directory.
fn complete_batches(dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(dir.join("out"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("_SUCCESS").exists())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("totals-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn last_completed_in_checkpoint(ckpt: &Path) -> String {
    let out = run(weir().args(["checkpoint", "inspect"]).arg(ckpt));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().find(|l| l.starts_with("last completed batch")).unwrap_or_default().to_string()
}

#[test]
fn sigterm_finishes_the_batch_in_flight_checkpoints_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let job = endless_job(dir.path());
    let ckpt = dir.path().join("ckpt");
    let mut d = Driver::spawn(weir().arg("run").arg(&job).arg("--checkpoint").arg(&ckpt));
    progress_lines(&mut d, 3);
    send(d.pid(), "TERM");
    let status = d.wait_exit(Duration::from_secs(60), "the driver to drain and exit");
    let log = d.log();
    assert_eq!(status.code(), Some(0), "SIGTERM drains and exits 0:\n{log}");
    assert!(log.contains("stopping after the batch in flight"), "{log}");
    let last = log.lines().filter_map(progress).map(|(t, _)| t).max().unwrap();
    // Every batch reported is complete on disk and recorded as done; none after.
    let done = complete_batches(dir.path());
    assert_eq!(done, (1..=last / 1000).map(|k| k * 1000).collect::<Vec<_>>(), "{log}");
    assert_eq!(last_completed_in_checkpoint(&ckpt), format!("last completed batch: {last} ms"));
}

fn supervisor_forwards(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let job = endless_job(dir.path());
    let ckpt = dir.path().join("ckpt");
    let mut sup = Driver::spawn(weir().arg("run").arg(&job).arg("--checkpoint").arg(&ckpt).arg("--supervise"));
    progress_lines(&mut sup, 2);
    send(sup.pid(), signal);
    let status = sup.wait_exit(Duration::from_secs(60), "the supervisor to exit after its driver");
    let log = sup.log();
    assert_eq!(status.code(), Some(0), "the driver drained and the supervisor passed on its status:\n{log}");
    assert!(!log.contains("restart"), "a forwarded signal is not a crash to restart from:\n{log}");
    // No driver was left behind holding the checkpoint: a new one starts.
    let again = run(weir().arg("run").arg(&job).arg("--checkpoint").arg(&ckpt).args(["--batches", "1"]));
    assert!(again.status.success(), "the checkpoint is still locked:\n{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("recovered from checkpoint"), "{}", text(&again.stderr));
}

#[test]
fn supervisor_forwards_sigterm_and_waits_for_its_driver() {
    supervisor_forwards("TERM");
}

#[test]
fn supervisor_forwards_sigint_and_waits_for_its_driver() {
    supervisor_forwards("INT");
}

#[test]
fn logical_clock_idles_when_a_receiver_has_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "batch_interval = \"1s\"\nclock = \"logical\"\n[modules]\nwordcount = \"{}\"\n\
             [sources.lines]\ntype = \"socket\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             [streams]\nwords = \"lines.flat_map(wordcount.split)\"\n\
             [[outputs]]\nstream = \"words\"\ntype = \"print\"\n",
            module("wordcount.wasm").display()
        ),
    )
    .unwrap();
    let mut d = Driver::spawn(weir().arg("run").arg(&job));
    let _conn = accept(&listener, Duration::from_secs(30));
    let first = progress_lines(&mut d, 1);
    // A measuring window, not a synchronisation: how many empty batches run
    // in it. Spinning ran about 11 000 a second; idling runs a handful.
    std::thread::sleep(Duration::from_secs(2));
    send(d.pid(), "TERM");
    d.wait_exit(Duration::from_secs(30), "the driver to exit");
    let batches = d.log().lines().filter_map(progress).filter(|(t, _)| *t > first).count();
    assert!(batches < 60, "{batches} empty batches in 2 s: the logical clock spins");
    assert!(batches >= 2, "the driver kept running batches ({batches})");
}

/// A runaway function under the default limits of a 1 s job: its batch fails
/// with the function named and "ran out of fuel" at the interval-scaled
/// budget, once (not retried), and the next batches run.
#[test]
fn a_runaway_udf_under_default_limits_fails_its_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "[\"a\"]\n[\"b\"]\n[\"c\"]\n").unwrap();
    let job = format!(
        "batch_interval = \"1s\"\nclock = \"logical\"\n[modules]\nloop = \"{}\"\n\
         [sources.lines]\ntype = \"batches\"\npath = \"in.jsonl\"\n\
         [streams]\nspun = \"lines.filter(loop.spin_on_b)\"\n\
         [[outputs]]\nstream = \"spun\"\ntype = \"save_as_text_files\"\nprefix = \"out/spun\"\n",
        spin_module(dir.path()).display()
    );
    let path = dir.path().join("job.toml");
    std::fs::write(&path, job).unwrap();
    let out = run(weir().arg("run").arg(&path));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let failed: Vec<&str> = err.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "only the batch with \"b\" fails: {err}");
    assert!(failed[0].starts_with("batch 2000 ms"), "{err}");
    assert!(failed[0].contains("export \"filter:spin_on_b\""), "the line names the function: {err}");
    assert!(failed[0].contains("ran out of fuel (5000000000 units per call)"), "{err}");
    assert!(failed[0].contains("failed 1 time(s)"), "running out of fuel is not retried: {err}");
    let outs = read_outputs(&dir.path().join("out"), "spun");
    assert_eq!(outs.keys().copied().collect::<Vec<_>>(), vec![1000, 3000], "{err}");
}

/// A filter that loops for ever on the record "b" and keeps everything else.
fn spin_module(dir: &Path) -> std::path::PathBuf {
    // Records are encoded strings (tag 0x05, u32 length, bytes); the batch
    // is u32 count then records. The output of a filter is u32 count then
    // one bool per record (0x02: true). "b" is [5,1,0,0,0,98]. The result
    // packs (length << 32) | pointer (docs/udf-abi.md §3).
    let wat = r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $p))
  (func (export "filter:spin_on_b") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32) (local $i i32) (local $at i32) (local $slen i32) (local $out i32)
    (local.set $n (i32.load (local.get $ptr)))
    (local.set $at (i32.add (local.get $ptr) (i32.const 4)))
    (local.set $out (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get $n) (i32.const 4))))
    (i32.store (local.get $out) (local.get $n))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $slen (i32.load (i32.add (local.get $at) (i32.const 1))))
        (if (i32.and (i32.eq (local.get $slen) (i32.const 1))
                     (i32.eq (i32.load8_u (i32.add (local.get $at) (i32.const 5))) (i32.const 98)))
          (then (loop $forever (br $forever))))
        (i32.store8 (i32.add (i32.add (local.get $out) (i32.const 4)) (local.get $i)) (i32.const 2))
        (local.set $at (i32.add (local.get $at) (i32.add (local.get $slen) (i32.const 5))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i64.or (i64.shl (i64.extend_i32_u (i32.add (local.get $n) (i32.const 4))) (i64.const 32))
            (i64.extend_i32_u (local.get $out)))))
"#;
    let path = dir.join("spin.wat");
    std::fs::write(&path, wat).unwrap();
    path
}
