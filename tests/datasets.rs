//! Static datasets (`[datasets]`) through `weir run`: joined, unioned and
//! subtracted inside `transform` (as Spark jobs use a static RDD in
//! `transform(rdd => rdd.join(static))`), read by a UDF as a lookup table,
//! on `local[2]` and `local-cluster[2]` alike; errors that name the file
//! and line; and recovery: identical outputs after a SIGKILL, a changed
//! dataset refused as a job change naming it.

use crate::common::*;
use crate::dstream_api::{lines, ok, outputs, run_both, saved};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const USERS: &str = "[[\"u1\", \"Ada\"], [\"u2\", \"Bob\"]]\n[[\"u4\", \"Dan\"]]\n";

fn sorted(m: BTreeMap<i64, Vec<String>>) -> Vec<(i64, Vec<String>)> {
    m.into_iter()
        .map(|(t, mut v)| {
            v.sort();
            (t, v)
        })
        .collect()
}

#[test]
fn a_dataset_is_an_rdd_of_every_batch_inside_transform_and_a_lookup_table_for_udfs() {
    let body = "[datasets]\nusers = \"users.jsonl\"\nknown = \"known\"\n\
        [sources.events]\ntype = \"batches\"\npath = \"events.jsonl\"\n\
        [sources.ids]\ntype = \"batches\"\npath = \"ids.jsonl\"\n\
        [streams]\n\
        joined = 'events.transform(\"rdd.join(users)\")'\n\
        left = 'events.transform(\"rdd.left_outer_join(users)\")'\n\
        windowed = 'events.window(2s, 2s).transform(\"rdd.join(users).count()\")'\n\
        unknown = 'ids.transform(\"rdd.subtract(known)\")'\n\
        both = 'ids.transform_with(ids, \"rdd.union(known).distinct(1)\")'\n\
        named = \"ids.map(ops.lookup(users))\"\n";
    let body = format!(
        "{body}{}{}{}{}{}{}",
        saved("joined"),
        saved("left"),
        saved("windowed"),
        saved("unknown"),
        saved("both"),
        saved("named")
    );
    let events = "[[\"u1\", 1], [\"u3\", 2], [\"u4\", 3]]\n[[\"u2\", 4], [\"u2\", 5]]\n[]\n[[\"u1\", 6]]\n";
    let ids = "[\"u1\", \"u9\"]\n[\"u2\", \"k1\"]\n[]\n[\"k2\", \"u4\"]\n";
    let files = [
        ("users.jsonl", USERS.to_string()),
        ("events.jsonl", events.to_string()),
        ("ids.jsonl", ids.to_string()),
        // A directory of text files: one string record per line, files in
        // name order; `_`- and `.`-prefixed names are not read.
        ("known/a.txt", "k1\nk2\n".to_string()),
        ("known/b.txt", "u1\n".to_string()),
        ("known/_ignored.txt", "u9\n".to_string()),
    ];
    let (out, dir) = run_both(&body, &files, None);
    ok(&out);
    let d = dir.path();
    // Spark's join of each batch with the static RDD: a key both have.
    assert_eq!(
        sorted(outputs(d, "joined")),
        vec![
            (1000, lines(&["(u1,(1,Ada))", "(u4,(3,Dan))"])),
            (2000, lines(&["(u2,(4,Bob))", "(u2,(5,Bob))"])),
            (3000, vec![]),
            (4000, lines(&["(u1,(6,Ada))"])),
        ]
    );
    assert_eq!(
        sorted(outputs(d, "left")),
        vec![
            (1000, lines(&["(u1,(1,Ada))", "(u3,(2,null))", "(u4,(3,Dan))"])),
            (2000, lines(&["(u2,(4,Bob))", "(u2,(5,Bob))"])),
            (3000, vec![]),
            (4000, lines(&["(u1,(6,Ada))"])),
        ]
    );
    // A windowed stream slides every 2 s: the dataset follows its slide.
    assert_eq!(sorted(outputs(d, "windowed")), vec![(2000, lines(&["4"])), (4000, lines(&["1"]))]);
    assert_eq!(
        sorted(outputs(d, "unknown")),
        vec![(1000, lines(&["u9"])), (2000, lines(&["u2"])), (3000, vec![]), (4000, lines(&["u4"]))]
    );
    // Every batch has the dataset's records, even an empty one.
    let known = ["k1", "k2", "u1"];
    let with = |extra: &[&str]| {
        let mut v: Vec<String> = known.iter().chain(extra).map(|s| s.to_string()).collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(
        sorted(outputs(d, "both")),
        vec![(1000, with(&["u1", "u9"])), (2000, with(&["u2", "k1"])), (3000, with(&[])), (4000, with(&["k2", "u4"]))]
    );
    // The UDF got the dataset's records as its parameter (all of them, in
    // file order: u4 is on the file's second line).
    assert_eq!(
        sorted(outputs(d, "named")),
        vec![
            (1000, lines(&["(u1,Ada)", "(u9,null)"])),
            (2000, lines(&["(k1,null)", "(u2,Bob)"])),
            (3000, vec![]),
            (4000, lines(&["(k2,null)", "(u4,Dan)"])),
        ]
    );
}

/// A job over `dir`: events joined with the dataset, saved.
fn write_recovery_job(dir: &Path, batches: usize) {
    let job = "batch_interval = \"1s\"\n\
        [datasets]\nusers = \"users.jsonl\"\n\
        [sources.events]\ntype = \"batches\"\npath = \"events.jsonl\"\n\
        [streams]\njoined = 'events.transform(\"rdd.left_outer_join(users)\")'\n\
        [[outputs]]\nstream = \"joined\"\ntype = \"save_as_text_files\"\nprefix = \"out/joined\"\n";
    std::fs::write(dir.join("job.toml"), job).unwrap();
    std::fs::write(dir.join("users.jsonl"), USERS).unwrap();
    let events: String =
        (0..batches).map(|i| format!("[[\"u{}\", {i}], [\"u{}\", {i}]]\n", i % 5, (i + 2) % 5)).collect();
    std::fs::write(dir.join("events.jsonl"), events).unwrap();
}

fn weir_run(dir: &Path, ckpt: &str, extra: &[&str]) -> std::process::Command {
    let mut c = weir();
    c.args(["run", dir.join("job.toml").to_str().unwrap(), "--clock", "logical", "--checkpoint"])
        .arg(dir.join(ckpt))
        .args(extra);
    c
}

#[test]
fn a_dataset_job_recovers_identically_after_sigkill_and_refuses_a_changed_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_recovery_job(d, 40);
    let clean = run(&mut weir_run(d, "ckpt-clean", &["-q"]));
    ok(&clean);
    let expected = tree(&d.join("out"));
    assert_eq!(expected.keys().filter(|k| k.ends_with("_SUCCESS")).count(), 40);
    std::fs::rename(d.join("out"), d.join("out-clean")).unwrap();

    // SIGKILL once a few batches are done (progress lines pace it), then
    // restart on the same checkpoint until the job finishes.
    let mut killed = false;
    for attempt in 0..10 {
        let mut child = weir_run(d, "ckpt", &["--master", "local-cluster[2]"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                if line.starts_with("batch ") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut seen = 0;
        while seen < 3 && !killed {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(()) => seen += 1,
                Err(_) => break,
            }
        }
        if !killed && child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
        let status = child.wait().unwrap();
        let err = reader.join().unwrap();
        assert!(!err.contains("panicked"), "{err}");
        if status.success() {
            if killed {
                break;
            }
            // Finished before the kill: start over.
            std::fs::remove_dir_all(d.join("ckpt")).unwrap();
            std::fs::remove_dir_all(d.join("out")).unwrap();
        }
        assert!(attempt < 9, "the job never finished after a kill: {err}");
    }
    assert!(killed, "the driver was never killed mid-run");
    assert_eq!(tree(&d.join("out")), expected, "the same files, byte for byte, after a SIGKILL");

    // The same checkpoint with a changed dataset: refused, naming it.
    std::fs::write(d.join("users.jsonl"), USERS.replace("Bob", "Bea")).unwrap();
    let out = run(&mut weir_run(d, "ckpt", &[]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("dataset \"users\" changed: content sha256 "), "the diff names the dataset: {err}");
    assert!(err.contains("--accept-job-change"), "{err}");
    // Accepted, it runs.
    let out = run(&mut weir_run(d, "ckpt", &["--accept-job-change"]));
    ok(&out);
}

#[test]
fn dataset_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let job = |streams: &str, datasets: &str| {
        format!(
            "batch_interval = \"1s\"\n[datasets]\n{datasets}\n\
             [sources.events]\ntype = \"batches\"\npath = \"events.jsonl\"\n\
             [modules]\nops = \"{}\"\n\
             [streams]\n{streams}\n[[outputs]]\nstream = \"out\"\ntype = \"print\"\n",
            module("testops.wasm").display()
        )
    };
    std::fs::write(d.join("events.jsonl"), "[[\"u1\", 1]]\n").unwrap();
    std::fs::write(d.join("users.jsonl"), USERS).unwrap();
    let check = |job: String, wants: &[&str]| {
        std::fs::write(d.join("job.toml"), job).unwrap();
        let out = run(weir().args(["run", d.join("job.toml").to_str().unwrap(), "--clock", "logical"]));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        for w in wants {
            assert!(err.contains(w), "wanted {w:?} in: {err}");
        }
    };
    let users = "users = \"users.jsonl\"\nzones = \"users.jsonl\"";
    // An unknown name in a transform: the valid ones, with their lines.
    check(
        job("out = 'events.transform(\"rdd.join(usres)\")'", users),
        &["job.toml:11:", "no dataset, source or stream named \"usres\"", "users (line 3), zones (line 4)"],
    );
    check(job("out = \"events.map(ops.lookup(usres))\"", users), &["job.toml:11:", "`usres`", "users (line 3)"]);
    // A dataset outside a transform is refused, saying where it goes.
    check(job("out = \"events.join(users)\"", users), &["job.toml:11:", "\"users\" is a dataset"]);
    // A malformed file: its name and line.
    std::fs::write(d.join("bad.jsonl"), "[[\"u1\", 1]]\n[[\"u2\", 2]\n").unwrap();
    check(job("out = \"events\"", "bad = \"bad.jsonl\""), &["job.toml:3:", "dataset bad", "bad.jsonl:2:"]);
    // A missing one.
    check(job("out = \"events\"", "gone = \"gone.jsonl\""), &["job.toml:3:", "dataset gone", "gone.jsonl"]);
    // Over the size limit: refused, naming the file.
    let big = format!("[\"{}\"]\n", "x".repeat(17 << 20));
    std::fs::write(d.join("big.jsonl"), big).unwrap();
    check(job("out = \"events\"", "big = \"big.jsonl\""), &["job.toml:3:", "dataset big", "big.jsonl", "16777216"]);
}

#[test]
fn the_rust_api_joins_a_dataset_in_a_transform_closure_and_hands_it_to_a_udf() {
    use weir::codec::Value;
    use weir::dstream::StreamingContext;
    use weir::scheduler::{Clock, RunOptions};
    let s = |x: &str| Value::Str(x.into());
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let ops = ssc.module(module("testops.wasm")).unwrap();
    let users = ssc.dataset("users", &[Value::pair(s("u1"), s("Ada")), Value::pair(s("u2"), s("Bob"))]).unwrap();
    let events = ssc.queue_stream(vec![
        vec![Value::pair(s("u1"), Value::I64(1)), Value::pair(s("u3"), Value::I64(2))],
        vec![Value::pair(s("u2"), Value::I64(3))],
    ]);
    let joined = events.transform(|rdd| rdd.left_outer_join(&rdd.dataset(&users)?)).unwrap().collect().unwrap();
    let ids = ssc.queue_stream(vec![vec![s("u1"), s("u3")], vec![s("u2")]]);
    let looked_up = ids.map(&ops.udf("lookup").with_params(users.params().unwrap())).unwrap().collect().unwrap();
    let mut o = RunOptions::default();
    o.clock = Clock::Logical;
    ssc.run(o).unwrap();
    let show = |c: &weir::sink::Collected| -> Vec<(i64, Vec<String>)> {
        c.lock()
            .unwrap()
            .iter()
            .map(|(t, v)| {
                let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                v.sort();
                (*t, v)
            })
            .collect()
    };
    assert_eq!(
        show(&joined),
        vec![(1000, lines(&["(u1,(1,Ada))", "(u3,(2,null))"])), (2000, lines(&["(u2,(3,Bob))"]))]
    );
    assert_eq!(show(&looked_up), vec![(1000, lines(&["(u1,Ada)", "(u3,null)"])), (2000, lines(&["(u2,Bob)"]))]);
}

#[test]
fn checkpoint_inspect_shows_each_dataset_with_its_source_and_content_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A file and a directory inside transform, and a file handed to a UDF
    // as a parameter only (no RDD of it in the graph).
    let job = format!(
        "batch_interval = \"1s\"\n\
         [modules]\nops = \"{}\"\n\
         [datasets]\nusers = \"users.jsonl\"\nknown = \"known\"\nnames = \"names.jsonl\"\n\
         [sources.events]\ntype = \"batches\"\npath = \"events.jsonl\"\n\
         [sources.ids]\ntype = \"batches\"\npath = \"ids.jsonl\"\n\
         [streams]\njoined = 'events.transform(\"rdd.join(users)\")'\n\
         unknown = 'ids.transform(\"rdd.subtract(known)\")'\n\
         named = \"ids.map(ops.lookup(names))\"\n{}{}{}",
        module("testops.wasm").display(),
        saved("joined"),
        saved("unknown"),
        saved("named")
    );
    std::fs::write(d.join("job.toml"), job).unwrap();
    std::fs::write(d.join("users.jsonl"), USERS).unwrap();
    std::fs::write(d.join("names.jsonl"), "[[\"k1\", \"Kay\"]]\n").unwrap();
    std::fs::create_dir(d.join("known")).unwrap();
    std::fs::write(d.join("known/a.txt"), "k1\n").unwrap();
    std::fs::write(d.join("events.jsonl"), "[[\"u1\", 1]]\n[[\"u2\", 2]]\n").unwrap();
    std::fs::write(d.join("ids.jsonl"), "[\"k1\", \"u9\"]\n[]\n").unwrap();
    ok(&run(&mut weir_run(d, "ckpt", &["-q"])));

    // `dataset NAME: SOURCE (sha256 HASH)`, one line per dataset: the hashes.
    let inspect = || {
        let out = run(weir().args(["checkpoint", "inspect"]).arg(d.join("ckpt")));
        let s = text(&out.stdout);
        assert!(out.status.success(), "{s}{}", text(&out.stderr));
        let mut found = BTreeMap::new();
        for (name, source) in
            [("known", "directory known"), ("names", "file names.jsonl"), ("users", "file users.jsonl")]
        {
            let head = format!("dataset {name}: {source} (sha256 ");
            let line = s.lines().find(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("no {head:?} in:\n{s}"));
            let hash = line[head.len()..].trim_end_matches(')').to_string();
            assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
            found.insert(name, hash);
        }
        assert_eq!(s.lines().filter(|l| l.starts_with("dataset ")).count(), 3, "{s}");
        found
    };
    let before = inspect();
    assert_eq!(before.values().collect::<std::collections::BTreeSet<_>>().len(), 3, "distinct contents: {before:?}");

    // The hash is the one recovery compares: a changed file is refused
    // naming the recorded hash, and once accepted, inspect shows the new one.
    std::fs::write(d.join("users.jsonl"), USERS.replace("Bob", "Bea")).unwrap();
    let out = run(&mut weir_run(d, "ckpt", &[]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("content sha256 {} in the checkpoint", &before["users"][..12])), "{err}");
    // More input, so the accepted run writes a checkpoint of its own.
    std::fs::write(d.join("events.jsonl"), "[[\"u1\", 1]]\n[[\"u2\", 2]]\n[[\"u2\", 3]]\n").unwrap();
    std::fs::write(d.join("ids.jsonl"), "[\"k1\", \"u9\"]\n[]\n[\"k1\"]\n").unwrap();
    ok(&run(&mut weir_run(d, "ckpt", &["-q", "--accept-job-change"])));
    assert_eq!(read_outputs(&d.join("out"), "joined")[&3000], vec!["(u2,(3,Bea))".to_string()], "the new dataset");
    let after = inspect();
    assert_ne!(after["users"], before["users"], "the new content's hash");
    assert_eq!((&after["known"], &after["names"]), (&before["known"], &before["names"]));
}
