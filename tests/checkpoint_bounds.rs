//! The checkpoint bounds of a job file's `[checkpoint]` table (issue 11):
//! a data checkpoint larger than `max_state_bytes` is refused — not
//! written, named by stream, time and bound, never recorded as durable —
//! while the job goes on as the checkpoint-failure policy says, and a
//! restart still recovers the exact state; a metadata checkpoint larger
//! than `max_metadata_bytes` is refused on recovery, naming the file and
//! the bound, and recovery falls back to the older one. `weir checkpoint
//! inspect --job` reads a checkpoint under the job file's bounds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{module, read_outputs, run, text, weir};

/// Running totals over `input.jsonl`, a data checkpoint every batch, and
/// `settings` appended (a `[checkpoint]` table, or nothing).
fn job(dir: &Path, name: &str, settings: &str) -> PathBuf {
    let text = format!(
        r#"batch_interval = "1s"
clock = "logical"
[modules]
wordcount = "{}"
[sources.lines]
type = "batches"
path = "input.jsonl"
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
totals = "pairs.update_state_by_key(wordcount.running_total).checkpoint(1s)"
[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "out/totals"
{settings}"#,
        module("wordcount.wasm").display()
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Batch 1: three words (a state of a few dozen bytes); every later batch
/// 60 new words, so the state passes 1 KiB at batch 2 and keeps growing.
fn input(batches: usize) -> String {
    let mut s = String::from("[\"alpha beta gamma\"]\n");
    for b in 1..batches {
        let words: Vec<String> = (0..60).map(|i| format!("word{b:02}x{i:03}")).collect();
        s.push_str(&format!("[\"{}\", \"alpha\"]\n", words.join(" ")));
    }
    s
}

fn state_files(ckpt: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ckpt.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The outputs of a run of `job` in `dir`, by batch time (lines sorted).
fn outputs(dir: &Path) -> BTreeMap<i64, Vec<String>> {
    let mut o = read_outputs(&dir.join("out"), "totals");
    for lines in o.values_mut() {
        lines.sort();
    }
    o
}

#[test]
fn a_state_checkpoint_over_max_state_bytes_is_refused_and_the_job_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (bounded, reference) = (tmp.path().join("bounded"), tmp.path().join("reference"));
    for d in [&bounded, &reference] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("input.jsonl"), input(6)).unwrap();
    }
    // The reference: no bound, no interruption, all six batches.
    let r = job(&reference, "job.toml", "");
    let out = run(weir().arg("run").arg(&r).arg("--checkpoint").arg(reference.join("ckpt")).arg("-q"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = outputs(&reference);
    assert_eq!(want.len(), 6, "{want:?}");

    // The same job with max_state_bytes = 1024, four batches first.
    let j = job(&bounded, "job.toml", "[checkpoint]\nmax_state_bytes = 1024\n");

    // `weir checkpoint inspect --job` reads a checkpoint under that job's
    // bounds: the reference's newest state (over 1 KiB) is one the bounded
    // job would refuse, and the default bounds accept it.
    let inspect = |extra: &[&std::ffi::OsStr]| {
        let out = run(weir().args(["checkpoint", "inspect"]).arg(reference.join("ckpt")).args(extra));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let plain = inspect(&[]);
    assert!(!plain.contains("INVALID") && plain.contains("last completed batch: 6000 ms"), "{plain}");
    let under_job = inspect(&["--job".as_ref(), j.as_os_str()]);
    assert!(
        under_job.lines().any(|l| l.contains("INVALID")
            && l.contains("more than the 1024 allowed ([checkpoint] max_state_bytes in the job file)")),
        "{under_job}"
    );
    let out = run(weir()
        .args(["checkpoint", "inspect"])
        .arg(reference.join("ckpt"))
        .arg("--job")
        .arg(bounded.join("missing.toml")));
    assert!(!out.status.success() && text(&out.stderr).contains("missing.toml"), "{}", text(&out.stderr));
    let ckpt = bounded.join("ckpt");
    let out = run(weir().arg("run").arg(&j).arg("--checkpoint").arg(&ckpt).args(["--batches", "4"]));
    let log = text(&out.stderr);
    // The policy: a failed checkpoint write is logged and the job goes on.
    assert!(out.status.success(), "a refused data checkpoint does not stop the job:\n{log}");
    for t in [2000, 3000, 4000] {
        let line = log.lines().find(|l| {
            l.contains("checkpoint write failed")
                && l.contains(
                    "data checkpoint of stream \"totals\" (update_state_by_key(wordcount.running_total)) (node",
                )
                && l.contains(&format!(") at {t} ms ("))
                && l.contains("the largest, partition")
                && l.contains("more than the 1024 allowed ([checkpoint] max_state_bytes in the job file)")
        });
        assert!(line.is_some(), "no refusal naming the stream, {t} ms and the bound:\n{log}");
    }
    // Only the first batch's state (small) was written; nothing refused was
    // left on disk, not even as a temporary file.
    let files = state_files(&ckpt);
    assert_eq!(files.len(), 1, "state files: {files:?}");
    assert!(files[0].ends_with("-1000.state"), "state files: {files:?}");
    // Nothing refused is recorded as durable: the newest metadata names the
    // state at 1000 ms, and keeps every input since (a restart needs them).
    let m = weir::checkpoint::load_newest(&ckpt).metadata.expect("a metadata checkpoint");
    let named: Vec<i64> = m.state.values().map(|r| r.time).collect();
    assert_eq!(named, vec![1000], "the metadata names {:?}", m.state);
    assert_eq!(m.last_completed, Some(4000));
    for t in [2000, 3000, 4000] {
        assert!(m.inputs.contains_key(&t), "the input of {t} ms is gone: {:?}", m.inputs.keys());
    }
    // The outputs of every batch were written, and are right.
    let got = outputs(&bounded);
    assert_eq!(got, want.range(..=4000).map(|(t, l)| (*t, l.clone())).collect::<BTreeMap<_, _>>());

    // A restart recovers from the state at 1000 ms plus the recorded inputs,
    // and its totals equal the uninterrupted run's.
    let out = run(weir().arg("run").arg(&j).arg("--checkpoint").arg(&ckpt).arg("-q"));
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(outputs(&bounded), want, "outputs after the restart differ from the uninterrupted run's:\n{log}");
    assert_eq!(state_files(&ckpt).len(), 1, "state files: {:?}", state_files(&ckpt));
}

#[test]
fn a_metadata_checkpoint_over_max_metadata_bytes_is_refused_on_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("input.jsonl"), input(5)).unwrap();
    let plain = job(dir, "plain.toml", "");
    let ckpt = dir.join("ckpt");
    let out = run(weir().arg("run").arg(&plain).arg("--checkpoint").arg(&ckpt).args(["--batches", "3", "-q"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = ckpt.join("metadata");
    let real: Vec<(String, u64)> = std::fs::read_dir(&meta)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    let biggest = real.iter().map(|(_, n)| *n).max().unwrap();
    let newest = real.iter().map(|(n, _)| n.clone()).max().unwrap();
    // A bound every real metadata checkpoint (and the next run's) is under,
    // and a newer file over it: garbage, which must never be read.
    let bound = (biggest * 2).max(1024);
    let seq: u64 = newest.trim_start_matches("checkpoint-").split("-e").next().unwrap().parse().unwrap();
    let hostile = meta.join(format!("checkpoint-{:020}-e1", seq + 1));
    std::fs::write(&hostile, vec![0xA5u8; bound as usize + 100]).unwrap();

    let bounded = job(dir, "bounded.toml", &format!("[checkpoint]\nmax_metadata_bytes = {bound}\n"));
    let out = run(weir().arg("run").arg(&bounded).arg("--checkpoint").arg(&ckpt));
    let log = text(&out.stderr);
    assert!(out.status.success(), "recovery falls back to the older checkpoint:\n{log}");
    let says = format!(
        "{}: {} bytes, more than the {bound} allowed ([checkpoint] max_metadata_bytes in the job file)",
        hostile.display(),
        bound + 100
    );
    assert!(log.lines().any(|l| l.contains("checkpoint not usable") && l.contains(&says)), "{says:?} not in:\n{log}");
    // It recovered from the older checkpoint: batches 4 and 5 ran, and the
    // totals equal an uninterrupted run's.
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    std::fs::write(reference.join("input.jsonl"), input(5)).unwrap();
    let r = job(&reference, "job.toml", "");
    let out = run(weir().arg("run").arg(&r).arg("--checkpoint").arg(reference.join("ckpt")).arg("-q"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(outputs(dir), outputs(&reference), "{log}");
}
