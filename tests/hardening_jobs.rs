//! Issue 11, "Job files: refuse, never crash": job files with values out of
//! range (partitions, durations, generator sizes, graph depth), files that
//! are not regular files, and names that clash are refused with
//! `job.toml:LINE: ...` and exit status 1 — never an abort, a stack
//! overflow, a hang or a run with wrapped-around values.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `weir run` may take to refuse a job (or run one batch).
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `weir run JOB --batches 1 --clock logical`, killing it after
/// [`DEADLINE`]: (exit code, or None when killed by a signal; stderr).
fn run_job(job: &Path) -> (Option<i32>, String) {
    let dir = job.parent().unwrap();
    let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let mut child = weir()
        .args(["run", job.to_str().unwrap(), "--batches", "1", "--clock", "logical", "-q"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("cannot start weir");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir run {} hung: {}", job.display(), std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(&err).unwrap_or_default())
}

/// Writes `body` as `job.toml` in a new directory (with a one-batch
/// `in.jsonl`, so that a job not refused runs), runs it and checks it is
/// refused cleanly (exit 1, no panic) with an error naming `at` and saying
/// each of `what`.
fn refused(body: &str, at: &str, what: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "[\"a b\", \"c\"]\n").unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, body).unwrap();
    refused_file(&job, at, what);
    dir
}

fn refused_file(job: &Path, at: &str, what: &[&str]) {
    let (code, err) = run_job(job);
    assert_eq!(code, Some(1), "a clean failure (exit 1, not a signal or a panic's 101): {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(at), "should name {at}: {err}");
    for w in what {
        assert!(err.contains(w), "should say {w:?}: {err}");
    }
}

/// A job reading a `batches` file (`in.jsonl`, written by the caller or
/// not) through the wordcount module, with `streams` on lines 9 and on.
fn job(head: &str, streams: &str, outputs: &str) -> String {
    format!(
        "batch_interval = \"1s\"\n\
         {head}\n\
         [modules]\n\
         wc = \"{}\"\n\
         [sources.lines]\n\
         type = \"batches\"\n\
         path = \"in.jsonl\"\n\
         [streams]\n\
         {streams}\n\
         {outputs}\n",
        module("wordcount.wasm").display()
    )
}

const PRINT: &str = "[[outputs]]\nstream = \"out\"\ntype = \"print\"";

#[test]
fn partitions_beyond_the_maximum_are_refused() {
    refused(
        &job(
            "parallelism = 4294967295",
            "out = \"lines.flat_map(wc.split).map(wc.pair).reduce_by_key(wc.sum)\"",
            PRINT,
        ),
        "job.toml:2:",
        &["parallelism (4294967295) must be between 1 and 4096"],
    );
    refused(&job("parallelism = 0", "out = \"lines\"", PRINT), "job.toml:2:", &["between 1 and 4096"]);
    refused(
        &job("", "out = \"lines.repartition(4294967295)\"", PRINT),
        "job.toml:9:",
        &["stream out: repartition: argument 1 (n)", "up to 4096", "4294967295"],
    );
    refused(
        &job("", "w = \"lines.flat_map(wc.split)\"\nout = \"w.map(wc.pair).reduce_by_key(wc.sum, 4294967295)\"", PRINT),
        "job.toml:10:",
        &["reduce_by_key", "up to 4096"],
    );
}

#[test]
fn generator_sizes_beyond_the_maximum_are_refused() {
    let body = "batch_interval = \"1s\"\n[sources.lines]\ntype = \"generator\"\nlines_per_batch = 1000000000000\n\
                [streams]\nout = \"lines\"\n[[outputs]]\nstream = \"out\"\ntype = \"print\"\n";
    refused(body, "job.toml:", &["source lines: lines_per_batch (1000000000000) is over the maximum of 10000000"]);
    let many = body.replace("lines_per_batch = 1000000000000", "lines_per_batch = 1000000\nwords_per_line = 10000");
    refused(&many, "job.toml:", &["over the maximum of 100000000 words per batch"]);
    let zero = body.replace("lines_per_batch = 1000000000000", "vocabulary = 0");
    refused(&zero, "job.toml:2:", &["words_per_line and vocabulary must be at least 1"]);
}

#[test]
fn durations_that_would_overflow_are_refused() {
    for interval in ["18446744073709552s", "9223372036854775808ms", "99999999999999999999", "366d", "8761h"] {
        let body = job("", "out = \"lines\"", PRINT).replace("\"1s\"", &format!("\"{interval}\""));
        let what = if interval == "366d" { "unknown unit" } else { "batch_interval: invalid duration" };
        refused(&body, "job.toml:1:", &[what]);
    }
    refused(
        &job("", "out = \"lines.window(18446744073709552s)\"", PRINT),
        "job.toml:9:",
        &["stream out: window: argument 1 (len)", "longer than the maximum of 1 year"],
    );
    // A year is allowed, but not a window of a year of 1 ms batches.
    let body = job("", "out = \"lines.window(8760h)\"", PRINT).replace("\"1s\"", "\"1ms\"");
    refused(&body, "job.toml:9:", &["window spans 31536000000 batches", "maximum of 100000"]);
    refused(
        &job("", "out = \"lines.map(wc.pair).update_state_by_key(wc.running_total).checkpoint(9000h)\"", PRINT),
        "job.toml:9:",
        &["longer than the maximum of 1 year"],
    );
}

#[test]
fn graphs_deeper_than_the_maximum_are_refused_not_a_stack_overflow() {
    // A chain of 5000 streams.
    let mut streams = String::from("s0 = \"lines.glom()\"\n");
    for i in 1..5000 {
        streams += &format!("s{i} = \"s{}.glom()\"\n", i - 1);
    }
    streams += "out = \"s4999\"";
    refused(&job("", &streams, PRINT), "job.toml:", &["operations deep, over the maximum of 1000"]);
    // One expression of 5000 operations.
    let chain = format!("out = \"lines{}\"", ".glom()".repeat(5000));
    refused(&job("", &chain, PRINT), "job.toml:9:", &["stream out: glom:", "over the maximum of 1000"]);
    // A chain of 5000 names for one stream is not deep: it runs.
    let mut aliases = String::from("a0 = \"lines\"\n");
    for i in 1..5000 {
        aliases += &format!("a{i} = \"a{}\"\n", i - 1);
    }
    aliases += "out = \"a4999\"";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "[\"x\"]\n").unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, job("", &aliases, PRINT)).unwrap();
    let (code, err) = run_job(&path);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn the_deepest_graph_allowed_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "[\"x\", \"y\"]\n").unwrap();
    // A source and 999 operations: 1000 deep. Windows are unions, which a
    // task computes recursively (a task thread's default 2 MiB stack
    // overflowed at about 200).
    let path = dir.path().join("job.toml");
    for op in [".glom()", ".window(1s)"] {
        std::fs::write(&path, job("", &format!("out = \"lines{}\"", op.repeat(999)), PRINT)).unwrap();
        let (code, err) = run_job(&path);
        assert_eq!(code, Some(0), "{op}: {err}");
    }
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn modules_and_batches_files_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let linked = dir.path().join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &linked).unwrap();
    for (path, kind) in [
        (PathBuf::from("/dev/zero"), "a character device"),
        (fifo.clone(), "a FIFO"),
        (linked, "a character device"),
        (dir.path().to_path_buf(), "a directory"),
    ] {
        let body = format!("batch_interval = \"1s\"\n[modules]\nm = \"{}\"\n", path.display());
        refused(&body, "job.toml:3:", &["module m", "not a regular file", kind]);
        let body = job("", "out = \"lines\"", PRINT).replace("in.jsonl", path.to_str().unwrap());
        refused(&body, "job.toml:5:", &["source lines", "not a regular file", kind]);
        let body = job("", "out = \"lines.map(wc.pair).update_state_by_key(wc.running_total)\"", PRINT)
            + &format!("[initial_state]\nout = \"{}\"\n", path.display());
        refused(&body, "job.toml:", &["initial state of out", "not a regular file", kind]);
    }
    // The job file itself.
    refused_file(&fifo, "fifo", &["not a regular file (it is a FIFO)"]);
    refused_file(Path::new("/dev/zero"), "/dev/zero", &["not a regular file"]);
}

/// A module bigger than `[limits] module_bytes` is refused by its length,
/// naming the module, its size and the bound, before it is read or compiled.
#[test]
fn a_module_over_module_bytes_is_refused_naming_it_and_the_bound() {
    let size = std::fs::metadata(module("wordcount.wasm")).unwrap().len();
    let limit = size / 2;
    let body = job(&format!("[limits]\nmodule_bytes = {limit}"), "out = \"lines.flat_map(wc.split)\"", PRINT);
    refused(&body, "wordcount.wasm", &[&size.to_string(), &limit.to_string(), "[limits] module_bytes"]);
    // At its own size it loads and runs.
    let body = job(&format!("[limits]\nmodule_bytes = {size}"), "out = \"lines.flat_map(wc.split)\"", PRINT);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "[\"a b\", \"c\"]\n").unwrap();
    std::fs::write(dir.path().join("job.toml"), body).unwrap();
    let (code, err) = run_job(&dir.path().join("job.toml"));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_stream_named_like_a_source_is_refused() {
    let body = job("", "lines = \"lines.flat_map(wc.split)\"\nout = \"lines\"", PRINT);
    refused(&body, "job.toml:9:", &["stream \"lines\" has the name of the source on line 5"]);
}

#[test]
fn two_outputs_writing_the_same_directories_are_refused() {
    let save =
        |prefix: &str| format!("[[outputs]]\nstream = \"out\"\ntype = \"save_as_text_files\"\nprefix = \"{prefix}\"\n");
    let body = job("", "out = \"lines\"", &format!("{}{}", save("out/c"), save("./out/../out/c")));
    refused(&body, "job.toml:14:", &["prefix \"./out/../out/c\" is already written by the output on line 10"]);
    // Another suffix writes other directories: allowed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "[\"x\"]\n").unwrap();
    let path = dir.path().join("job.toml");
    let body = job("", "out = \"lines\"", &format!("{}{}suffix = \"b\"\n", save("out/c"), save("out/c")));
    std::fs::write(&path, body).unwrap();
    let (code, err) = run_job(&path);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn neighbours_are_refused_too() {
    // A socket on port 0.
    let body = "batch_interval = \"1s\"\n[sources.lines]\ntype = \"socket\"\nhost = \"localhost\"\nport = 0\n\
                [[outputs]]\nstream = \"lines\"\ntype = \"print\"\n";
    refused(body, "job.toml:", &["source lines: port 0"]);
    // A job file that is not UTF-8, naming the line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, b"batch_interval = \"1s\"\n# caf\xe9\n").unwrap();
    refused_file(&path, "job.toml:2:", &["not UTF-8"]);
    // A job file of more than 16 MiB.
    std::fs::write(&path, format!("batch_interval = \"1s\"\n{}", "# padding\n".repeat(1_700_000))).unwrap();
    refused_file(&path, "job.toml:", &["over the limit of 16777216 bytes"]);
    // An initial state for a stream that does not exist.
    let body = job("", "out = \"lines\"", PRINT) + "[initial_state]\ntotals = \"x.jsonl\"\n";
    refused(&body, "job.toml:", &["initial_state: no stream named \"totals\""]);
    // An initial state for a stream without update_state_by_key.
    let body = job("", "out = \"lines\"", PRINT) + "[initial_state]\nout = \"x.jsonl\"\n";
    refused(&body, "job.toml:", &["initial_state: stream \"out\" has no update_state_by_key"]);
    // Keeping no checkpoint at all (was taken as 1, silently).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.toml"), job("", "out = \"lines\"", PRINT)).unwrap();
    let out =
        run(weir().args(["run", "job.toml", "--checkpoint", "ck", "--keep-checkpoints", "0"]).current_dir(dir.path()));
    assert!(!out.status.success() && text(&out.stderr).contains("--keep-checkpoints"), "{}", text(&out.stderr));
    // A window shorter than the batch interval, a zero interval.
    refused(&job("", "out = \"lines.window(500ms)\"", PRINT), "job.toml:9:", &["must be a positive multiple"]);
    let body = job("", "out = \"lines\"", PRINT).replace("\"1s\"", "\"0s\"");
    refused(&body, "job.toml:1:", &["must be positive"]);
}
