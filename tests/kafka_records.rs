//! The Kafka source's record shapes and its backpressure, against a real
//! broker (Tansu, per test, as in `kafka.rs`) with records produced by
//! kafka-python: `key = true` pairs with `value_format = "json"` and
//! `"bytes"` as a UDF receives them, a record that is not JSON failing the
//! batch with its topic, partition and offset, and a backlog read by a UDF
//! slower than the topic under `backpressure = true`, followed through
//! `--progress json`.

use crate::common::*;
use crate::drivers::*;
use crate::kafka::Broker;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Produces `(key, value)` records (None: absent) with kafka-python, one
/// request each, round-robin over the topic's partitions.
fn produce_kv(broker: &Broker, topic: &str, records: &[(Option<&[u8]>, Option<&[u8]>)]) {
    let field = |f: &Option<&[u8]>| f.map_or("-".to_string(), hex);
    let input: String = records.iter().map(|(k, v)| format!("{} {}\n", field(k), field(v))).collect();
    let n = broker.client(&["produce-kv", topic], &input);
    assert_eq!(n.trim(), records.len().to_string(), "records produced");
}

/// A job reading `topic` with `fields` added to the source; `streams` are
/// `name = "expr"` lines, each stream written to out-<name>/<stream>.
fn job(dir: &Path, name: &str, broker: &Broker, topic: &str, fields: &str, streams: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "batch_interval = \"1s\"\nclock = \"logical\"\n[modules]\nwordcount = \"{}\"\ntestops = \"{}\"\n\
         [sources.lines]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\nstarting_offsets = \"earliest\"\n\
         {fields}\n[streams]\n",
        module("wordcount.wasm").display(),
        module("testops.wasm").display(),
        broker.addr()
    );
    for (s, e) in streams {
        text += &format!("{s} = \"{e}\"\n");
    }
    for (s, _) in streams {
        text += &format!("[[outputs]]\nstream = \"{s}\"\ntype = \"save_as_text_files\"\nprefix = \"out-{name}/{s}\"\n");
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn weir_run(job: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = weir();
    c.arg("run").arg(job).args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
    run(&mut c)
}

/// Every line of every batch of out-<name>/<stream>, sorted.
fn all_lines(dir: &Path, name: &str, stream: &str) -> Vec<String> {
    let mut v: Vec<String> = read_outputs(&dir.join(format!("out-{name}")), stream).into_values().flatten().collect();
    v.sort();
    v
}

#[test]
fn keyed_json_records_reach_the_udfs_as_key_value_pairs() {
    let broker = Broker::start();
    broker.create("kv", 2);
    let words = ["alpha", "beta", "gamma"];
    // Keys are words, values JSON integers; one record without a key and
    // one with an array value (a tuple).
    let mut records: Vec<(Option<Vec<u8>>, Option<Vec<u8>>)> = (0..30i64)
        .map(|i| (Some(words[i as usize % 3].as_bytes().to_vec()), Some(i.to_string().into_bytes())))
        .collect();
    records.push((None, Some(b"100".to_vec())));
    let borrowed: Vec<(Option<&[u8]>, Option<&[u8]>)> =
        records.iter().map(|(k, v)| (k.as_deref(), v.as_deref())).collect();
    produce_kv(&broker, "kv", &borrowed);
    let mut want_seen: Vec<String> = (0..30i64).map(|i| format!("({},{i})", words[i as usize % 3])).collect();
    want_seen.push("(null,100)".into());
    want_seen.sort();
    let mut want_sums: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(w, word)| format!("({word},{})", (0..30i64).filter(|i| *i as usize % 3 == w).sum::<i64>()))
        .collect();
    want_sums.push("(null,100)".into());
    want_sums.sort();

    let tmp = tempfile::tempdir().unwrap();
    // identity: the record exactly as the UDF got it; sum: the values are
    // integers and the keys group (a string value would fail the sum).
    let j = job(
        tmp.path(),
        "json",
        &broker,
        "kv",
        "key = true\nvalue_format = \"json\"",
        &[("seen", "lines.map(testops.identity)"), ("sums", "lines.reduce_by_key(wordcount.sum)")],
    );
    let out = weir_run(&j, &["--batches", "2"]);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(all_lines(tmp.path(), "json", "seen"), want_seen, "{log}");
    assert_eq!(all_lines(tmp.path(), "json", "sums"), want_sums, "{log}");

    // The same records without `key`: the values alone.
    let j =
        job(tmp.path(), "values", &broker, "kv", "value_format = \"json\"", &[("seen", "lines.map(testops.identity)")]);
    let out = weir_run(&j, &["--batches", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut want: Vec<String> = (0..30).map(|i: i64| i.to_string()).chain(["100".to_string()]).collect();
    want.sort();
    assert_eq!(all_lines(tmp.path(), "values", "seen"), want);
}

#[test]
fn keyed_bytes_records_arrive_byte_for_byte_with_absent_keys_and_values_as_null() {
    let broker = Broker::start();
    broker.create("raw", 1);
    // Not UTF-8, with a NUL: a string format would have replaced them.
    let records: [(Option<&[u8]>, Option<&[u8]>); 4] = [
        (Some(b"\xff\x00k"), Some(b"\xc3\x28\x00v")),
        (Some(b"plain"), Some(b"\x80")),
        (None, Some(b"\x01\x02")),
        (Some(b"\xfe"), None),
    ];
    produce_kv(&broker, "raw", &records);
    let tmp = tempfile::tempdir().unwrap();
    let j = job(
        tmp.path(),
        "bytes",
        &broker,
        "raw",
        "key = true\nvalue_format = \"bytes\"",
        &[("seen", "lines.map(testops.identity)")],
    );
    let out = weir_run(&j, &["--batches", "1"]);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    // One partition: the batch holds the records in offset order. Bytes
    // render as 0x + hex, so every byte shows.
    let got: Vec<String> = read_outputs(&tmp.path().join("out-bytes"), "seen").into_values().flatten().collect();
    assert_eq!(got, ["(0xff006b,0xc3280076)", "(0x706c61696e,0x80)", "(null,0x0102)", "(0xfe,null)"], "{log}");
}

#[test]
fn a_record_that_is_not_json_fails_the_batch_naming_topic_partition_and_offset() {
    let broker = Broker::start();
    broker.create("bad", 2);
    // Round-robin over 2 partitions: records 0, 2, 4 in partition 0 (offsets
    // 0, 1, 2), 1, 3 in partition 1. The broken one is record 3: bad/1
    // offset 1.
    let records: [(Option<&[u8]>, Option<&[u8]>); 5] = [
        (Some(b"a"), Some(b"1")),
        (Some(b"b"), Some(b"2")),
        (Some(b"c"), Some(b"[3, \"x\"]")),
        (Some(b"d"), Some(b"{\"not\": json")),
        (Some(b"e"), Some(b"5")),
    ];
    produce_kv(&broker, "bad", &records);
    let tmp = tempfile::tempdir().unwrap();
    let j = job(
        tmp.path(),
        "bad",
        &broker,
        "bad",
        "key = true\nvalue_format = \"json\"",
        &[("seen", "lines.map(testops.identity)")],
    );
    let out = weir_run(&j, &["--batches", "2"]);
    let log = text(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("kafka bad/1 offset 1: invalid JSON value"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(read_outputs(&tmp.path().join("out-bad"), "seen").is_empty(), "no batch was written: {log}");
    // A JSON object is a record the codec has no shape for: refused the same way.
    broker.create("obj", 1);
    produce_kv(&broker, "obj", &[(None, Some(b"7")), (None, Some(b"{\"a\": 1}"))]);
    let j =
        job(tmp.path(), "obj", &broker, "obj", "value_format = \"json\"", &[("seen", "lines.map(testops.identity)")]);
    let out = weir_run(&j, &["--batches", "1"]);
    let log = text(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("kafka obj/0 offset 1: "), "{log}");
}

// ------------------------------------------------------------ backpressure

const INTERVAL_MS: u64 = 200;

/// One `--progress json` line: (records in, the source's rate limit,
/// processing and scheduling delay in ms, for the report).
fn json_batch(line: &str) -> Option<(u64, Option<f64>, f64, f64)> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let records = v.get("records_in")?.as_u64()?;
    let limit = v.get("rate_limits")?.as_array()?.first().and_then(serde_json::Value::as_f64);
    let ms = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    Some((records, limit, ms("processing_ms"), ms("scheduling_delay_ms")))
}

/// A `--progress json` line's backpressure estimate of source 0.
fn backpressure_rate(line: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v.get("backpressure_rates")?.as_array()?.first().and_then(serde_json::Value::as_f64)
}

#[test]
fn backpressure_bounds_kafka_batches_over_a_backlog_and_counts_every_record_once() {
    let broker = Broker::start();
    let partitions = 2u64;
    broker.create("backlog", partitions as u32);
    let n = 60_000u64;
    let sent: Vec<String> = (0..n).map(|i| format!("rec-{i:06}")).collect();
    let count = broker.client(&["produce-backlog", "backlog"], &(sent.join("\n") + "\n"));
    assert_eq!(count.trim(), n.to_string(), "records produced");

    // `testops.spin` costs tens of microseconds a record: the first
    // batches' 10 000 records (initial = 50 000/s over 200 ms; the rate
    // stays at `initial` until the second batch completes) are several
    // intervals of work, so the estimator must lower the rate, and the
    // rest of the backlog (40 000) is taken under its estimates.
    let initial = 50_000.0;
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("bp.toml");
    std::fs::write(
        &job,
        format!(
            "batch_interval = \"{INTERVAL_MS}ms\"\nparallelism = 1\nbackpressure = true\n\
             [rate]\ninitial = {initial}\nmin = 100\n\
             [modules]\ntestops = \"{}\"\n\
             [sources.lines]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"backlog\"]\nstarting_offsets = \"earliest\"\n\
             [streams]\nslow = \"lines.map(testops.spin)\"\n\
             [[outputs]]\nstream = \"slow\"\ntype = \"save_as_text_files\"\nprefix = \"out/slow\"\n",
            module("testops.wasm").display(),
            broker.addr()
        ),
    )
    .unwrap();
    let mut d = Driver::spawn(weir().current_dir(tmp.path()).arg("run").arg(&job).args([
        "--master",
        "local[1]",
        "--clock",
        "wall",
        "--progress",
        "json",
    ]));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut batches = Vec::new();
    let mut lines_seen = Vec::new();
    let mut taken = 0;
    // Until the backlog is taken and an empty batch follows (caught up).
    loop {
        let line = d.wait_for(deadline, "progress JSON until the backlog is taken", |l| json_batch(l).is_some());
        let b = json_batch(&line).unwrap();
        taken += b.0;
        batches.push(b);
        lines_seen.push(line);
        if taken >= n && b.0 == 0 {
            break;
        }
    }
    d.kill();
    let report = batches
        .iter()
        .map(|(r, l, p, d)| format!("{r} in, limit {l:?}, processed in {p} ms, scheduling delay {d} ms"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{report}");
    assert_eq!(taken, n, "every record counted once in records_in:\n{report}");
    // The limit is backpressure's estimate once there is one (no `[rate]
    // max` here), `initial` before: both are reported.
    let estimates: Vec<Option<f64>> = lines_seen.iter().map(|l| backpressure_rate(l)).collect();
    assert!(estimates.iter().filter(|e| e.is_some()).count() >= 3, "estimates reported: {estimates:?}\n{report}");
    for ((_, limit, ..), e) in batches.iter().zip(&estimates) {
        match e {
            Some(e) => assert_eq!(*limit, Some(*e), "the limit is the estimate:\n{report}"),
            None => assert_eq!(*limit, Some(initial), "before any estimate, initial:\n{report}"),
        }
    }
    for (i, (records, limit, ..)) in batches.iter().enumerate() {
        let limit = limit.unwrap_or_else(|| panic!("batch {i} has no rate limit:\n{report}"));
        assert!(limit >= 100.0, "never below min:\n{report}");
        // Per partition: the limit split evenly, over one interval, at
        // least one record (`per_partition_limit`); the JSON has the exact
        // limit.
        let per = ((limit / partitions as f64) * INTERVAL_MS as f64 / 1000.0).floor().max(1.0) as u64;
        assert!(
            *records <= per * partitions,
            "batch {i} took {records} > {} at {limit}/s:\n{report}",
            per * partitions
        );
    }
    let first = batches.iter().find(|b| b.0 > 0).unwrap();
    assert!(first.0 <= 10_000, "initial = 50 000/s over 200 ms:\n{report}");
    let lowest = batches.iter().filter_map(|b| b.1).fold(f64::INFINITY, f64::min);
    assert!(lowest < initial / 2.0, "the rate estimate dropped below half of initial:\n{report}");
    // Taken under the estimates: more batches than `initial` would need.
    let under_estimates = batches.iter().filter(|b| b.0 > 0 && b.1.is_some_and(|l| l < initial)).count();
    assert!(under_estimates >= 3, "the backlog's rest was taken under the lowered estimates:\n{report}");

    // The scheduling delay the first batches built up is worked off: the
    // newest quarter of the batches starts sooner than the worst did.
    let delays: Vec<f64> = batches.iter().map(|b| b.3).collect();
    let peak = delays.iter().copied().fold(0.0, f64::max);
    let tail = delays[delays.len() * 3 / 4..].iter().copied().fold(0.0, f64::max);
    assert!(tail < peak, "the delay came down from its peak ({peak} ms; newest quarter up to {tail} ms):\n{report}");

    // The outputs: every record once.
    let got: Vec<String> = read_outputs(&tmp.path().join("out"), "slow").into_values().flatten().collect();
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "duplicated records in the output");
    assert_eq!(distinct, sent.iter().collect::<BTreeSet<_>>(), "records lost or changed");
}
