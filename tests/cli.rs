//! End-to-end tests of the `weir` binary: job file errors, `weir udf check`,
//! a failing UDF, the file-based WordCount example.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;

fn write_job(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn wordcount_job(module: &Path, source: &str, outputs: &str) -> String {
    format!(
        r#"batch_interval = "1s"

[modules]
wordcount = "{}"

{source}

[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
counts = "pairs.reduce_by_key(wordcount.sum)"

{outputs}
"#,
        module.display()
    )
}

#[test]
fn file_wordcount_matches_a_native_count() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("in");
    std::fs::create_dir(&data).unwrap();
    let input = "a b c a\nthe quick brown fox\n\n  jumps\tover the lazy dog a\n";
    std::fs::write(data.join("one.txt"), input).unwrap();
    std::fs::write(data.join("two.txt"), "fox fox fox\n").unwrap();
    let job = write_job(
        tmp.path(),
        &wordcount_job(
            &module("wordcount.wasm"),
            "[sources.lines]\ntype = \"directory\"\npath = \"in\"",
            "[[outputs]]\nstream = \"counts\"\ntype = \"save_as_text_files\"\nprefix = \"out/counts\"\n\n[[outputs]]\nstream = \"counts\"\ntype = \"print\"",
        ),
    );
    let out = run(weir().args(["run", job.to_str().unwrap(), "--clock", "logical", "--batches", "2"]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let outputs = read_outputs(&tmp.path().join("out"), "counts");
    assert_eq!(outputs.keys().copied().collect::<Vec<_>>(), vec![1000, 2000]);
    let all = format!("{input}fox fox fox\n");
    assert_eq!(sum_counts(&outputs[&1000]), native_counts(all.lines()));
    assert!(outputs[&2000].is_empty(), "the second batch has no new files");
    // print: Spark's format.
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "-------------------------------------------\nTime: 1000 ms\n-------------------------------------------\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("\n...\n"), "more than 10 distinct words: the list ends with ...: {stdout}");
    assert!(stdout.contains("Time: 2000 ms\n-------------------------------------------\n\n"));
    // One progress line per batch.
    let stderr = text(&out.stderr);
    assert!(stderr.contains("batch 1000 ms: 5 records in"), "{stderr}");
}

#[test]
fn bad_job_files_name_file_line_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let m = module("wordcount.wasm");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            wordcount_job(
                &m,
                "[sources.lines]\ntype = \"socket\"\nhost = \"localhost\"\nport = 9",
                "[[outputs]]\nstream = \"counts\"\ntype = \"print\"",
            )
            .replace("reduce_by_key(wordcount.sum)", "reduce_by_kee(wordcount.sum)"),
            "job.toml:14",
            "unknown operation",
        ),
        (
            wordcount_job(
                &m,
                "[sources.lines]\ntype = \"socket\"\nhost = \"localhost\"\nport = 9",
                "[[outputs]]\nstream = \"counts\"\ntype = \"print\"",
            )
            .replace("wordcount.split", "wordcount.splat"),
            "job.toml:12",
            "no flat_map function named \"splat\"",
        ),
        (
            wordcount_job(
                &m,
                "[sources.lines]\ntype = \"socket\"\nhost = \"localhost\"\nport = 9",
                "[[outputs]]\nstream = \"counts\"\ntype = \"print\"",
            )
            .replace("pairs.reduce_by_key(wordcount.sum)", "pairs.reduce_by_key(wordcount.pair)"),
            "job.toml:14",
            "no reduce function named \"pair\"",
        ),
        (
            wordcount_job(
                &m,
                "[sources.lines]\ntype = \"sockett\"",
                "[[outputs]]\nstream = \"counts\"\ntype = \"print\"",
            ),
            "job.toml:7",
            "sockett",
        ),
        ("batch_interval = \"1s\"\n[streams\n".to_string(), "job.toml:2", "TOML"),
        ("batch_interval = \"1 fortnight\"\n".to_string(), "job.toml:1", "unknown unit"),
        (
            wordcount_job(
                &m,
                "[sources.lines]\ntype = \"socket\"\nhost = \"localhost\"\nport = 9",
                "[[outputs]]\nstream = \"nope\"\ntype = \"print\"",
            ),
            "job.toml:16",
            "no source or stream named \"nope\"",
        ),
        (
            "batch_interval = \"1s\"\n[modules]\nwc = \"missing.wasm\"\n".to_string(),
            "job.toml:3",
            "cannot read the module file",
        ),
    ];
    for (body, at, what) in cases {
        let job = write_job(tmp.path(), &body);
        let out = run(weir().args(["run", job.to_str().unwrap(), "--batches", "1", "--clock", "logical"]));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "accepted a bad job:\n{body}");
        assert!(err.contains(at), "error should name {at}: {err}\njob:\n{body}");
        assert!(err.to_lowercase().contains(&what.to_lowercase()), "error should say {what:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn udf_check_lists_functions_and_rejects_hostile_modules() {
    let out = run(weir().args(["udf", "check", module("wordcount.wasm").to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for f in ["flat_map        split", "map             pair", "reduce          sum", "update          running_total"] {
        assert!(s.contains(f), "missing {f:?} in:\n{s}");
    }
    let hostile = repo().join("udfs/hostile");
    for (file, why) in [
        ("forbidden_import.wat", "wasi_snapshot_preview1"),
        ("missing_export.wat", "weir_alloc"),
        ("wrong_abi.wat", "version 2"),
        ("not_wasm.bin", "not a WebAssembly module"),
    ] {
        let out = run(weir().args(["udf", "check", hostile.join(file).to_str().unwrap()]));
        assert!(!out.status.success(), "{file} accepted");
        let err = text(&out.stderr);
        assert!(err.contains(why), "{file}: expected {why:?} in {err}");
    }
}

/// Three batches whose second holds a record (`panic`) on which
/// `testops.panic_on_panic` traps.
fn trapping_job(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("in.jsonl"), "[\"a\", \"b\"]\n[\"c\", \"panic\", \"d\"]\n[\"e\"]\n").unwrap();
    let job = format!(
        r#"batch_interval = "1s"
[modules]
ops = "{}"
[sources.lines]
type = "batches"
path = "in.jsonl"
[streams]
checked = "lines.map(ops.panic_on_panic)"
[[outputs]]
stream = "checked"
type = "save_as_text_files"
prefix = "out/checked"
"#,
        module("testops.wasm").display()
    );
    write_job(dir, &job)
}

#[test]
fn a_trapping_udf_fails_its_batch_with_a_clear_error_and_later_batches_run() {
    let tmp = tempfile::tempdir().unwrap();
    let job = trapping_job(tmp.path());
    let out = run(weir().args(["run", job.to_str().unwrap(), "--clock", "logical"]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a failed batch makes the exit status 1: {err}");
    assert!(err.contains("batch 2000 ms"), "{err}");
    assert!(err.contains("testops.wasm") && err.contains("map:panic_on_panic"), "{err}");
    assert!(err.contains("asked to panic"), "the guest's panic message reaches the user: {err}");
    assert!(!err.contains("panicked at engine"), "{err}");
    let outputs = read_outputs(&tmp.path().join("out"), "checked");
    assert_eq!(outputs.keys().copied().collect::<Vec<_>>(), vec![1000, 3000], "batches 1 and 3 still produce output");
    assert_eq!(outputs[&3000], vec!["e"]);
}

/// Each batch's progress object names what every module cost: calls, fuel
/// and failed calls (a trap is a failure; the deterministic one is not
/// retried, so the failing batch has exactly one).
#[test]
fn progress_json_reports_udf_calls_fuel_and_failures_per_module() {
    let tmp = tempfile::tempdir().unwrap();
    let job = trapping_job(tmp.path());
    let out = run(weir().args(["run", job.to_str().unwrap(), "--clock", "logical", "--progress", "json"]));
    let err = text(&out.stderr);
    let usage: BTreeMap<i64, serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with("{\"time\":"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["time"].as_i64().unwrap(), v["udf_usage"].clone()))
        .collect();
    assert_eq!(usage.keys().copied().collect::<Vec<_>>(), [1000, 2000, 3000], "{err}");
    for (t, u) in &usage {
        let u = u.as_array().unwrap_or_else(|| panic!("batch {t}: {u}"));
        assert_eq!(u.len(), 1, "batch {t}: one module: {u:?}");
        assert_eq!(u[0]["module"], "testops.wasm", "batch {t}");
        assert!(u[0]["calls"].as_u64().unwrap() >= 1, "batch {t}: {u:?}");
        assert!(u[0]["fuel"].as_u64().unwrap() > 0, "batch {t}: the guest burned no fuel? {u:?}");
        let failures = if *t == 2000 { 1 } else { 0 };
        assert_eq!(u[0]["failures"].as_u64(), Some(failures), "batch {t}: {u:?}");
    }
}

#[test]
fn version_names_the_abi_wasmtime_and_commit() {
    let out = run(weir().arg("--version"));
    assert!(out.status.success());
    let v = text(&out.stdout);
    assert!(v.starts_with(&format!("weir {} (", env!("CARGO_PKG_VERSION"))), "{v}");
    assert!(v.contains("UDF ABI: v1, v2"), "{v}");
    assert!(v.contains(&format!("wasmtime: {}", weir::WASMTIME_VERSION)), "{v}");
    // The version the engine claims is the one it is built with.
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    let pinned = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(String::from)))
        .expect("wasmtime in Cargo.lock");
    assert_eq!(pinned, weir::WASMTIME_VERSION);
}
