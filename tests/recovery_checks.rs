//! End-to-end checks of what a restarted driver refuses or survives: a
//! changed job or UDF module, corrupt metadata checkpoints (fallback, and
//! `weir checkpoint inspect`), two drivers on one checkpoint directory, and
//! stateful operations without a checkpoint directory.

use crate::common::*;
use crate::drivers::*;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Batches of the `batches` source: 12 batches (one of them empty).
fn batches() -> Vec<Vec<String>> {
    word_batches((7, 3, 5))
}

fn jsonl(batches: &[Vec<String>]) -> String {
    batches.iter().map(|b| serde_json::to_string(b).unwrap() + "\n").collect()
}

/// A stateful WordCount: running totals (data checkpoint every 3 batches)
/// and a sliding count with an inverse function, both saved as text files.
fn stateful_job(module: &str) -> String {
    format!(
        r#"batch_interval = "1s"
clock = "logical"

[modules]
wordcount = "{module}"

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
"#
    )
}

fn wordcount_path() -> String {
    module("wordcount.wasm").display().to_string()
}

/// A job directory with the job file and its input; returns the job path.
fn setup(dir: &Path, job: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("in.jsonl"), jsonl(&batches())).unwrap();
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

/// The outputs of a clean, uninterrupted run of `job` (in its own directory).
fn clean_outputs(job: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let p = setup(tmp.path(), job);
    ok(&run_job(&p, &tmp.path().join("ckpt"), &[]), "the clean run");
    let outs = read_outputs(&tmp.path().join("out"), "totals");
    assert_eq!(outs.len(), 12, "one totals directory per batch");
    // Sanity: the last running totals are the word count of everything.
    let all = batches().concat();
    assert_eq!(sum_counts(&outs[&12000]), native_counts(all.iter().map(|s| s.as_str())));
    tree(&tmp.path().join("out"))
}

fn newest_metadata(ckpt: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ckpt.join("metadata"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    v.sort();
    v.reverse();
    v
}

fn inspect(ckpt: &Path) -> String {
    let out = run(weir().args(["checkpoint", "inspect"]).arg(ckpt));
    assert!(out.status.success(), "inspect failed: {}", text(&out.stderr));
    text(&out.stdout)
}

fn line_with<'a>(s: &'a str, prefix: &str) -> &'a str {
    s.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{s}"))
}

#[test]
fn an_edit_outside_the_state_recovers() {
    let want = clean_outputs(&stateful_job(&wordcount_path()));
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job(&wordcount_path()));
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "7"]), "the first 7 batches");

    // A comment, a stateless stream before the stateful ones (which moves
    // them to other nodes of the graph) and an output more: the state does
    // not depend on any of them.
    let body = std::fs::read_to_string(&job)
        .unwrap()
        .replace("[streams]\n", "[streams]\n# an edit\nshouting = \"lines.map(wordcount.pair)\"\n")
        + "\n[[outputs]]\nstream = \"shouting\"\ntype = \"save_as_text_files\"\nprefix = \"extra/shouting\"\n";
    std::fs::write(&job, &body).unwrap();
    let err = ok(&run_job(&job, &ckpt, &[]), "the run of the edited job");
    assert!(err.contains("recovered from checkpoint"), "{err}");
    let ran: Vec<i64> = progress_lines(&err).iter().map(|p| p.0).collect();
    assert_eq!(ran, (8..=12).map(|b| b * 1000).collect::<Vec<_>>(), "it carried on after batch 7: {err}");
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "the state's outputs vs a clean run");
    let extra = read_outputs(&tmp.path().join("extra"), "shouting");
    assert_eq!(extra.keys().copied().collect::<Vec<_>>(), (8..=12).map(|b| b * 1000).collect::<Vec<_>>());
}

/// The job with totals counting characters instead of words (a change of
/// what the stateful stream `totals` reads); the window is unchanged.
fn chars_job() -> String {
    stateful_job(&wordcount_path()).replace(
        "totals   = \"pairs.update_state_by_key",
        "chars    = \"lines.flat_map(ops.chars)\"\ncpairs   = \"chars.map(wordcount.pair)\"\ntotals   = \"cpairs.update_state_by_key",
    ).replace("[modules]\n", &format!("[modules]\nops = \"{}\"\n", module("testops.wasm").display()))
}

#[test]
fn an_edit_of_a_stateful_stream_is_refused_with_a_diff_unless_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job(&wordcount_path()));
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "7"]), "the first 7 batches");
    let s = inspect(&ckpt);
    assert!(s.contains("stateful stream \"totals\" (update_state_by_key(wordcount.running_total))"), "{s}");
    assert!(s.contains("stateful stream \"windowed\""), "{s}");
    let totals_state = line_with(&s, "state of stream \"totals\"");
    let k: usize =
        totals_state.split("batch ").nth(1).and_then(|r| r.split(" ms").next()).unwrap().parse::<usize>().unwrap()
            / 1000;

    std::fs::write(&job, chars_job()).unwrap();
    let out = run_job(&job, &ckpt, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a changed stateful stream continued its old state silently:\n{err}");
    assert!(err.contains("stateful stream \"totals\""), "the diff names the stream: {err}");
    assert!(err.contains("- words: flat_map(wordcount.split)"), "the diff shows what left: {err}");
    assert!(err.contains("+ chars: flat_map(testops.chars)"), "the diff shows what came: {err}");
    assert!(!err.contains("\"windowed\""), "the window did not change: {err}");
    assert!(err.contains("--accept-job-change") && err.contains("--fresh"), "{err}");
    assert!(progress_lines(&err).is_empty(), "no batch ran: {err}");

    let err = ok(&run_job(&job, &ckpt, &["--accept-job-change"]), "the run with --accept-job-change");
    assert!(err.contains("recovered from checkpoint"), "{err}");
    let ran: Vec<i64> = progress_lines(&err).iter().map(|p| p.0).collect();
    assert_eq!(ran, (8..=12).map(|b| b * 1000).collect::<Vec<_>>(), "{err}");
    // The totals kept their state (words up to the data checkpoint) and
    // counted characters from there on (batches after the checkpoint are
    // recomputed with the new lineage).
    let b = batches();
    let mut want = native_counts(b[..k].iter().flatten().map(|s| s.as_str()));
    for line in b[k..].iter().flatten() {
        for c in line.chars() {
            *want.entry(c.to_string()).or_insert(0) += 1;
        }
    }
    let outs = read_outputs(&tmp.path().join("out"), "totals");
    assert_eq!(sum_counts(&outs[&12000]), want, "state kept across the accepted change");
}

#[test]
fn a_changed_source_is_refused_even_when_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job(&wordcount_path()));
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "3"]), "the first 3 batches");
    std::fs::copy(tmp.path().join("in.jsonl"), tmp.path().join("other.jsonl")).unwrap();
    let body = std::fs::read_to_string(&job).unwrap().replace("path = \"in.jsonl\"", "path = \"other.jsonl\"");
    std::fs::write(&job, body).unwrap();
    let out = run_job(&job, &ckpt, &["--accept-job-change"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("sources changed"), "{err}");
    assert!(err.contains("in.jsonl") && err.contains("other.jsonl"), "both sources are named: {err}");
    assert!(progress_lines(&err).is_empty(), "no batch ran: {err}");
}

#[test]
fn a_changed_job_is_refused_until_fresh() {
    let want = clean_outputs(&stateful_job(&wordcount_path()));
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job(&wordcount_path()));
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &[]), "the first run");

    // The window's length is part of its state's meaning.
    let body = std::fs::read_to_string(&job).unwrap().replace("4s, 2s", "6s, 2s");
    std::fs::write(&job, &body).unwrap();
    let out = run_job(&job, &ckpt, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a changed job continued an old checkpoint:\n{err}");
    assert!(err.contains("changed since the checkpoint"), "the error says the job changed: {err}");
    assert!(err.contains("stateful stream \"windowed\""), "{err}");
    assert!(err.contains("--fresh"), "the error says how to start over: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(progress_lines(&err).is_empty(), "no batch ran: {err}");

    // --fresh: from scratch, all batches again, the same totals as a clean run.
    std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
    let err = ok(&run_job(&job, &ckpt, &["--fresh"]), "the --fresh run");
    assert!(!err.contains("recovered from checkpoint"), "--fresh must not recover: {err}");
    assert_eq!(progress_lines(&err).len(), 12, "all 12 batches ran again: {err}");
    let got = read_outputs(&tmp.path().join("out"), "totals");
    let clean: BTreeMap<String, Vec<u8>> = want.into_iter().filter(|(k, _)| k.starts_with("totals")).collect();
    let fresh: BTreeMap<String, Vec<u8>> =
        tree(&tmp.path().join("out")).into_iter().filter(|(k, _)| k.starts_with("totals")).collect();
    assert_eq!(got.len(), 12);
    assert_same_tree(&fresh, &clean, "totals after --fresh vs a clean run");

    // The fresh checkpoint is the new job's: a plain restart is accepted now.
    let err = ok(&run_job(&job, &ckpt, &[]), "a restart after --fresh");
    assert!(err.contains("recovered from checkpoint"), "{err}");
}

fn progress_lines(stderr: &str) -> Vec<(i64, u64)> {
    stderr.lines().filter_map(progress).collect()
}

/// Appends a custom section (id 0, name, payload) to a wasm module: a valid
/// module with every export of the original, but different bytes.
fn append_custom_section(path: &Path) {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"weir-test";
    let payload = vec![0xabu8; 200];
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    let mut section = vec![0u8];
    leb(body.len(), &mut section);
    section.extend_from_slice(&body);
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\0asm");
    bytes.extend_from_slice(&section);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_changed_module_is_refused_unless_accepted() {
    let want = clean_outputs(&stateful_job(&wordcount_path()));
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("wordcount.wasm");
    std::fs::copy(module("wordcount.wasm"), &copy).unwrap();
    let job = setup(tmp.path(), &stateful_job("wordcount.wasm"));
    let ckpt = tmp.path().join("ckpt");
    // Part of the job, so that the accepted run has batches left to run.
    ok(&run_job(&job, &ckpt, &["--batches", "7"]), "the first run");

    append_custom_section(&copy);
    let check = run(weir().args(["udf", "check"]).arg(&copy));
    assert!(check.status.success(), "the changed module is still valid: {}", text(&check.stderr));

    let out = run_job(&job, &ckpt, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a changed module was used without --accept-module-change:\n{err}");
    assert!(err.contains("wordcount.wasm"), "the error names the module file: {err}");
    assert!(err.contains("changed"), "{err}");
    assert!(err.contains("--accept-module-change"), "{err}");
    assert!(!err.contains("job changed"), "the job file did not change: {err}");
    assert!(progress_lines(&err).is_empty(), "no batch ran: {err}");

    let err = ok(&run_job(&job, &ckpt, &["--accept-module-change"]), "the run with --accept-module-change");
    assert!(err.contains("recovered from checkpoint"), "{err}");
    let ran: Vec<i64> = progress_lines(&err).iter().map(|p| p.0).collect();
    assert_eq!(ran, (8..=12).map(|b| b * 1000).collect::<Vec<_>>(), "it carried on after batch 7: {err}");
    // Same functions, so the same outputs as a clean run.
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "outputs with the accepted module vs a clean run");
}

#[test]
fn corrupt_checkpoints_fall_back_and_inspect_reports_them() {
    let want = clean_outputs(&stateful_job(&wordcount_path()));
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job(&wordcount_path()));
    let ckpt = tmp.path().join("ckpt");
    let err = ok(&run_job(&job, &ckpt, &["--batches", "8"]), "the first 8 batches");
    assert_eq!(progress_lines(&err).len(), 8, "{err}");

    // A valid directory: what inspect shows.
    let s = inspect(&ckpt);
    assert!(!s.contains("INVALID"), "{s}");
    assert!(line_with(&s, "job: ").contains("job.toml"), "{s}");
    assert!(line_with(&s, "job: ").contains("sha256 "), "{s}");
    assert!(line_with(&s, "module: ").contains("wordcount.wasm (sha256 "), "{s}");
    assert_eq!(line_with(&s, "last completed batch:"), "last completed batch: 8000 ms", "{s}");
    assert_eq!(line_with(&s, "pending batches:"), "pending batches: none", "{s}");
    assert_eq!(line_with(&s, "source 0:"), "source 0: next batch line 8", "{s}");
    // Two stateful streams: the totals (checkpointed every 3 s, so at 6000)
    // and the window; each line gives its size and whether the file is ok.
    let states: Vec<&str> = s.lines().filter(|l| l.starts_with("state of stream")).collect();
    assert!(!states.is_empty(), "no state listed:\n{s}");
    assert!(states.iter().any(|l| l.contains("batch 6000 ms")), "{s}");
    for l in &states {
        assert!(l.contains(" key(s), ") && l.contains(" bytes, state/") && l.ends_with("(ok)"), "{l}");
    }

    let files = newest_metadata(&ckpt);
    assert!(files.len() >= 3, "{files:?}");
    let (newest, second) = (files[0].clone(), files[1].clone());

    // The newest is torn (truncated to half).
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(len / 2).unwrap();
    let s = inspect(&ckpt);
    let bad = line_with(&s, "  INVALID");
    assert!(bad.contains(&*newest.file_name().unwrap().to_string_lossy()), "{s}");
    assert!(bad.contains("torn") || bad.contains("truncated"), "the reason: {s}");
    // The one before: batch 8000 generated, not completed.
    assert_eq!(line_with(&s, "last completed batch:"), "last completed batch: 7000 ms", "{s}");
    assert_eq!(line_with(&s, "pending batches:"), "pending batches: 8000 ms", "{s}");

    // The second newest gets a flipped byte in the middle.
    let mut bytes = std::fs::read(&second).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&second, bytes).unwrap();
    let out = run(weir().args(["checkpoint", "inspect"]).arg(&ckpt));
    assert!(out.status.success(), "inspect of a corrupt directory exits 0: {}", text(&out.stderr));
    let s = text(&out.stdout);
    let invalid: Vec<&str> = s.lines().filter(|l| l.trim_start().starts_with("INVALID")).collect();
    assert_eq!(invalid.len(), 2, "both bad files listed:\n{s}");
    assert!(invalid[0].contains(&*newest.file_name().unwrap().to_string_lossy()), "{s}");
    assert!(invalid[1].contains(&*second.file_name().unwrap().to_string_lossy()), "{s}");
    assert!(invalid[1].contains("checksum"), "the reason: {s}");
    // The third newest was written when batch 8000 was generated, while
    // batch 7000's outputs were still being written (they overlap the next
    // batch): both pending.
    assert_eq!(line_with(&s, "last completed batch:"), "last completed batch: 6000 ms", "{s}");
    assert_eq!(line_with(&s, "pending batches:"), "pending batches: 7000 ms, 8000 ms", "{s}");

    // Run to the end: falls back to the third newest and redoes batches 7 and 8.
    let err = ok(&run_job(&job, &ckpt, &[]), "the run after corruption");
    for f in [&newest, &second] {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            err.lines().any(|l| l.contains(&*name) && l.contains("not usable")),
            "{name} reported as not usable: {err}"
        );
    }
    assert!(err.contains("falling back"), "{err}");
    assert!(err.contains("recovered from checkpoint"), "{err}");
    let ran: Vec<i64> = progress_lines(&err).iter().map(|p| p.0).collect();
    assert_eq!(ran, (7..=12).map(|b| b * 1000).collect::<Vec<_>>(), "{err}");
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "outputs after recovery vs a clean run");

    // And the directory is healthy again at the end.
    let s = inspect(&ckpt);
    assert_eq!(line_with(&s, "last completed batch:"), "last completed batch: 12000 ms", "{s}");
    assert!(s.lines().filter(|l| l.starts_with("state of stream")).all(|l| l.ends_with("(ok)")), "{s}");
}

#[test]
fn inspect_of_a_missing_directory_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(weir().args(["checkpoint", "inspect"]).arg(tmp.path().join("nope")));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not a directory"), "{}", text(&out.stderr));
}

#[test]
fn one_driver_per_checkpoint_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // Held, never written to: the job runs until killed.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, socket_totals_job(listener.local_addr().unwrap().port(), None)).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let cmd = || {
        let mut c = weir();
        c.arg("run").arg(&job).args(["--clock", "wall", "--checkpoint"]).arg(&ckpt);
        c
    };
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut first = Driver::spawn(&mut cmd());
    first.wait_for(deadline, "the first driver's first batch", |l| progress(l).is_some());
    let segments_before = std::fs::read_dir(ckpt.join("wal")).unwrap().count();

    let started = Instant::now();
    let mut second = Driver::spawn(&mut cmd());
    let status = second.wait_exit(Duration::from_secs(30), "the second driver to give up");
    let took = started.elapsed();
    let err = second.log();
    assert!(!status.success(), "a second driver ran on a directory in use:\n{err}");
    assert!(err.contains("in use by another driver"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "the message names the live driver: {err}");
    assert!(took < Duration::from_secs(20), "the second driver took {took:?} to give up");
    assert!(progress_lines(&err).is_empty(), "{err}");
    assert_eq!(
        std::fs::read_dir(ckpt.join("wal")).unwrap().count(),
        segments_before,
        "the refused driver must not touch the directory"
    );
    // Not even with --fresh: it must not clear a live driver's directory.
    let before = tree(&ckpt.join("wal"));
    let mut fresh = Driver::spawn(cmd().arg("--fresh"));
    let status = fresh.wait_exit(Duration::from_secs(30), "the --fresh driver to give up");
    let err = fresh.log();
    assert!(!status.success(), "--fresh ran on a directory in use:\n{err}");
    assert!(err.contains("in use by another driver"), "{err}");
    assert!(progress_lines(&err).is_empty(), "{err}");
    let after = tree(&ckpt.join("wal"));
    assert!(
        before.keys().all(|k| after.contains_key(k)),
        "the refused --fresh driver deleted the live driver's write-ahead log: {:?} -> {:?}",
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );

    // The first one is unaffected: it keeps running batches.
    first.wait_for(deadline, "the first driver's next batch", |l| progress(l).is_some());
    let newest = newest_metadata(&ckpt);
    assert!(!newest.is_empty(), "the live driver's checkpoints are gone");

    // A dead driver's lock is taken over.
    first.kill();
    let mut third = Driver::spawn(&mut cmd());
    third.wait_for(deadline, "the third driver's recovery", |l| l.contains("recovered from checkpoint"));
    third.wait_for(deadline, "the third driver's first batch", |l| progress(l).is_some());
    third.kill();
    let err = third.log();
    assert!(!err.contains("in use"), "{err}");
}

#[test]
fn stateful_operations_need_a_checkpoint_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let job = setup(tmp.path(), &stateful_job(&wordcount_path()));
    let out = run(weir().arg("run").arg(&job));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a stateful job ran without a checkpoint directory:\n{err}");
    assert!(err.contains("checkpoint directory") && err.contains("--checkpoint"), "{err}");
    // Why: the state would be lost with the driver.
    assert!(err.contains("keep state across batches") && err.contains("lose the state"), "{err}");
    // It names the stateful streams.
    assert!(err.contains("update_state_by_key"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing ran");

    // A window with an inverse function alone is stateful too.
    let window_only = stateful_job(&wordcount_path()).replace(
        "totals   = \"pairs.update_state_by_key(wordcount.running_total).checkpoint(3s)\"\n",
        "totals   = \"pairs.reduce_by_key(wordcount.sum)\"\n",
    );
    assert!(!window_only.contains("update_state_by_key"));
    let job = setup(tmp.path(), &window_only);
    let out = run(weir().arg("run").arg(&job));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("reduce_by_key_and_window") && err.contains("--checkpoint"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing ran");

    // Stateless jobs still run without one.
    let stateless = window_only
        .replace("[[outputs]]\nstream = \"windowed\"", "[[outputs]]\nstream = \"totals\"")
        .replace("windowed = \"pairs.reduce_by_key_and_window(wordcount.sum, wordcount.subtract, 4s, 2s)\"\n", "");
    let job = setup(tmp.path(), &stateless);
    ok(&run(weir().arg("run").arg(&job)), "a stateless job without --checkpoint");
}

#[test]
fn a_changed_initial_state_is_refused_and_the_diff_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let with_initial = stateful_job(&wordcount_path()) + "\n[initial_state]\ntotals = \"initial.jsonl\"\n";
    let job = setup(tmp.path(), &with_initial);
    std::fs::write(tmp.path().join("initial.jsonl"), "[[\"spark\", 100], [\"zebra\", 5]]\n").unwrap();
    let ckpt = tmp.path().join("ckpt");
    ok(&run_job(&job, &ckpt, &["--batches", "3"]), "the first 3 batches");

    // The same file again: recovers.
    let err = ok(&run_job(&job, &ckpt, &["--batches", "4"]), "a restart with the same initial state");
    assert!(err.contains("recovered from checkpoint"), "{err}");

    // Another initial state: what the totals started from changed.
    std::fs::write(tmp.path().join("initial.jsonl"), "[[\"spark\", 1]]\n").unwrap();
    let out = run_job(&job, &ckpt, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a changed initial state continued the old state silently:\n{err}");
    assert!(err.contains("stateful stream \"totals\""), "{err}");
    assert!(err.contains("an argument they do not show changed (an initial state"), "{err}");
    assert!(err.contains("--accept-job-change"), "{err}");
    assert!(progress_lines(&err).is_empty(), "no batch ran: {err}");
}
