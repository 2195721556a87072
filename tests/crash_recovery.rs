//! The acceptance test of checkpointing: a stateful, windowed WordCount
//! (update_state_by_key running totals + reduce_by_key_and_window with an
//! inverse function + save_as_text_files) over a fixed input, first without
//! failures, then SIGKILLed at random (seeded) moments — and crashed halfway
//! through checkpoint writes — and restarted until it finishes. The output
//! directories of both runs must be byte-identical, batch by batch.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A small seeded generator (the test must not depend on a crate's RNG).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn setup(dir: &Path, batches: usize) -> PathBuf {
    let mut rng = Rng(7);
    let vocab = ["spark", "flink", "weir", "stream", "batch", "window", "state", "wasm", "lineage", "driver", "kafka"];
    let mut data = String::new();
    for _ in 0..batches {
        let recs: Vec<String> = (0..rng.below(15))
            .map(|_| {
                let words: Vec<&str> =
                    (0..1 + rng.below(6)).map(|_| vocab[rng.below(vocab.len() as u64) as usize]).collect();
                format!("\"{}\"", words.join(" "))
            })
            .collect();
        data.push_str(&format!("[{}]\n", recs.join(",")));
    }
    std::fs::write(dir.join("input.jsonl"), data).unwrap();
    let job = format!(
        r#"batch_interval = "1s"
clock = "logical"
[modules]
wordcount = "{}"
[sources.lines]
type = "batches"
path = "input.jsonl"
[streams]
words    = "lines.flat_map(wordcount.split)"
pairs    = "words.map(wordcount.pair)"
totals   = "pairs.update_state_by_key(wordcount.running_total).checkpoint(4s)"
windowed = "pairs.reduce_by_key_and_window(wordcount.sum, wordcount.subtract, 6s, 2s)"
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
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, job).unwrap();
    p
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn run_job(job: &Path, ckpt: &Path) -> Command {
    let mut c = weir();
    c.args(["run", job.to_str().unwrap(), "--checkpoint", ckpt.to_str().unwrap(), "-q"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn outputs_are_identical_after_twenty_plus_sigkills_and_torn_checkpoint_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), 120);

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
        let mut cmd = run_job(&job, &ckpt);
        // Every third run dies halfway through one of its checkpoint writes.
        if runs % 3 == 0 {
            cmd.env("WEIR_CRASH_AT_CHECKPOINT_WRITE", (1 + rng.below(8)).to_string());
        }
        let mut child = cmd.spawn().unwrap();
        // The fault's timing, drawn from the seed (not a synchronisation).
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let out = child.wait_with_output().unwrap();
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
    let job = setup(tmp.path(), 30);
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
