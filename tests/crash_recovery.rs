//! The acceptance test of checkpointing: a stateful, windowed WordCount
//! (update_state_by_key running totals + reduce_by_key_and_window with an
//! inverse function + save_as_text_files) over a fixed input, first without
//! failures, then SIGKILLed at random (seeded) moments — and crashed halfway
//! through checkpoint writes — and restarted until it finishes. The output
//! directories of both runs must be byte-identical, batch by batch.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_job(job: &Path, ckpt: &Path) -> Command {
    let mut c = progress_job(job, ckpt);
    c.arg("-q");
    c
}

/// The job with its per-batch progress lines on stderr.
fn progress_job(job: &Path, ckpt: &Path) -> Command {
    let mut c = weir();
    c.args(["run", job.to_str().unwrap(), "--checkpoint", ckpt.to_str().unwrap()]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn outputs_are_identical_after_twenty_plus_sigkills_and_torn_checkpoint_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 120);

    // The failure-free run.
    let clean = run(&mut run_job(&job, &tmp.path().join("ckpt-clean")));
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let expected = tree(&tmp.path().join("out"));
    std::fs::rename(tmp.path().join("out"), tmp.path().join("out-clean")).unwrap();
    assert!(expected.len() > 100, "the job writes one directory per output per batch");

    // The same job, killed again and again.
    let ckpt = tmp.path().join("ckpt");
    let mut rng = Rng(20261124);
    let (mut kills, mut crashes, mut recoveries_with_pending, mut runs) = (0, 0, 0, 0);
    loop {
        runs += 1;
        assert!(runs < 400, "the job never finished ({kills} kills, {crashes} crashes)");
        let mut cmd = progress_job(&job, &ckpt);
        // Every third run dies halfway through one of its checkpoint writes.
        if runs % 3 == 0 {
            cmd.env("WEIR_CRASH_AT_CHECKPOINT_WRITE", (1 + rng.below(8)).to_string());
        }
        // Progress lines on stderr pace the faults: a kill comes after a
        // seeded number of batches (0: during start-up or recovery), plus a
        // seeded delay — so every run gets somewhere, however slow the machine.
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                if line.starts_with("batch ") {
                    let _ = tx.send(line);
                }
            }
            all
        });
        let wait_for = rng.below(6);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < wait_for {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(_) => seen += 1,
                Err(_) => break, // the run ended (or the deadline passed)
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(if wait_for == 0 { 80 } else { 15 })));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        let err = reader.join().unwrap();
        let out = std::process::Output { status, stdout: vec![], stderr: err.clone().into_bytes() };
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        if err.contains("re-running") && !err.contains("re-running 0 pending") {
            recoveries_with_pending += 1;
        }
        match out.status.code() {
            Some(0) if kills >= 20 => break,
            Some(0) => {
                // Finished before enough kills: start over from nothing.
                std::fs::remove_dir_all(&ckpt).unwrap();
                std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
            }
            None => {
                use std::os::unix::process::ExitStatusExt;
                if out.status.signal() == Some(6) {
                    crashes += 1; // aborted halfway through a checkpoint write
                }
            }
            Some(c) => panic!("the driver failed (exit {c}): {err}"),
        }
    }
    let got = tree(&tmp.path().join("out"));
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same files");
    for (name, bytes) in &expected {
        assert!(
            &got[name] == bytes,
            "{name} differs after {kills} kills:\n{}\nvs\n{}",
            String::from_utf8_lossy(&got[name]),
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(kills >= 20, "{kills} kills");
    assert!(crashes >= 1, "no run died mid checkpoint write");
    assert!(recoveries_with_pending >= 1, "no recovery re-ran a pending batch");
    eprintln!("{kills} SIGKILLs, {crashes} crashes mid checkpoint write, {runs} runs: outputs identical");
}

#[test]
fn supervise_restarts_a_driver_that_died() {
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 30);
    let clean = run(&mut run_job(&job, &tmp.path().join("ckpt-clean")));
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let expected = tree(&tmp.path().join("out"));
    std::fs::remove_dir_all(tmp.path().join("out")).unwrap();

    let marker = tmp.path().join("crashed-once");
    let mut cmd = run_job(&job, &tmp.path().join("ckpt"));
    cmd.arg("--supervise").env("WEIR_CRASH_AT_CHECKPOINT_WRITE", "12").env("WEIR_CRASH_MARKER", &marker);
    let out = cmd.output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(marker.exists(), "the first driver did not crash");
    assert!(err.contains("the driver died") && err.contains("restart 1"), "{err}");
    assert!(err.contains("recovered from checkpoint"), "{err}");
    assert_eq!(tree(&tmp.path().join("out")), expected);
}
