//! Stateful operations through the real engine, with Spark's semantics:
//! update_state_by_key (with initial state and key removal), map_with_state
//! (per-value calls, timeout, state snapshots), and windows with an inverse
//! function, which must agree with their plain counterparts; map_with_state
//! and state_snapshots also through a job file.

use std::path::Path;
use std::time::Duration;

use weir::codec::Value;
use weir::dstream::{ModuleHandle, StateSpec, StreamingContext};
use weir::scheduler::CheckpointOptions;
use weir::scheduler::{Clock, Master, RunOptions};

fn module(ssc: &StreamingContext, name: &str) -> ModuleHandle {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs").join(name);
    assert!(p.exists(), "{} is missing: run udfs/build.sh first", p.display());
    ssc.module(&p).unwrap()
}

fn opts(dir: &Path) -> RunOptions {
    {
        let mut o = RunOptions::default();
        o.master = Master::Local(2);
        o.clock = Clock::Logical;
        o.checkpoint = Some(CheckpointOptions::new(dir));
        o
    }
}

fn s(x: &str) -> Value {
    Value::Str(x.into())
}
fn i(x: i64) -> Value {
    Value::I64(x)
}
fn kv(k: &str, v: i64) -> Value {
    Value::pair(s(k), i(v))
}
fn pairs(xs: &[(&str, i64)]) -> Vec<Value> {
    xs.iter().map(|(k, v)| kv(k, *v)).collect()
}

/// Batch outputs as sorted lists (a shuffle's order across partitions is not part of the contract).
fn sorted(batches: &[(i64, Vec<Value>)]) -> Vec<(i64, Vec<String>)> {
    batches
        .iter()
        .map(|(t, vs)| {
            let mut v: Vec<String> = vs.iter().map(|x| x.to_string()).collect();
            v.sort();
            (*t, v)
        })
        .collect()
}

fn strs(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

#[test]
fn update_state_by_key_keeps_running_totals_calls_every_key_and_removes_on_null() {
    let tmp = tempfile::tempdir().unwrap();
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = module(&ssc, "wordcount.wasm");
    let ops = module(&ssc, "testops.wasm");
    let input =
        ssc.queue_stream(vec![pairs(&[("a", 1), ("b", 1), ("a", 1)]), pairs(&[("b", 5)]), vec![], pairs(&[("c", 2)])]);
    let totals = input.update_state_by_key(&wc.udf("running_total")).unwrap().collect().unwrap();
    // total_or_drop removes a key in a batch that brings it no values.
    let dropping = input.update_state_by_key(&ops.udf("total_or_drop")).unwrap().collect().unwrap();
    let seeded = input
        .update_state_by_key_with_initial(&wc.udf("running_total"), Some(pairs(&[("a", 100), ("z", 7)])))
        .unwrap()
        .collect()
        .unwrap();
    // An initial state holding a key twice: the key keeps its first state
    // (Spark's cogroup takes `headOption`), and is one key afterwards.
    let seeded_twice = input
        .update_state_by_key_with_initial(&wc.udf("running_total"), Some(pairs(&[("a", 100), ("z", 7), ("a", 5)])))
        .unwrap()
        .collect()
        .unwrap();
    let report = ssc.run(opts(tmp.path())).unwrap();
    assert!(report.failed_batches().next().is_none());
    assert_eq!(
        sorted(&seeded_twice.lock().unwrap())[..2],
        [(1000, strs(&["(a,102)", "(b,1)", "(z,7)"])), (2000, strs(&["(a,102)", "(b,6)", "(z,7)"]))]
    );
    assert_eq!(
        sorted(&totals.lock().unwrap()),
        vec![
            (1000, strs(&["(a,2)", "(b,1)"])),
            (2000, strs(&["(a,2)", "(b,6)"])),
            (3000, strs(&["(a,2)", "(b,6)"])),
            (4000, strs(&["(a,2)", "(b,6)", "(c,2)"])),
        ]
    );
    assert_eq!(
        sorted(&dropping.lock().unwrap()),
        vec![(1000, strs(&["(a,2)", "(b,1)"])), (2000, strs(&["(b,6)"])), (3000, vec![]), (4000, strs(&["(c,2)"])),]
    );
    assert_eq!(
        sorted(&seeded.lock().unwrap())[0],
        (1000, strs(&["(a,102)", "(b,1)", "(z,7)"])),
        "the initial state is the previous state of the first batch"
    );
}

#[test]
fn map_with_state_calls_per_value_times_out_idle_keys_and_snapshots_state() {
    let tmp = tempfile::tempdir().unwrap();
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let ops = module(&ssc, "testops.wasm");
    let input = ssc.queue_stream(vec![
        pairs(&[("a", 1), ("a", 2), ("b", 10)]),
        pairs(&[("a", 3)]),
        vec![],
        vec![],
        pairs(&[("b", 1)]),
    ]);
    // count_seen emits (key, running sum) per value and (key, -1) when timing out.
    // Keys time out only on batches whose state is checkpointed (Spark's
    // MapWithStateRDD full scan): every batch here.
    let mapped = input
        .map_with_state(&ops.udf("count_seen"), Some(Duration::from_secs(2)))
        .unwrap()
        .checkpoint(Duration::from_secs(1))
        .unwrap();
    let out = mapped.collect().unwrap();
    let snaps = mapped.state_snapshots().unwrap().collect().unwrap();
    let report = ssc.run(opts(tmp.path())).unwrap();
    assert!(report.failed_batches().next().is_none(), "{:?}", report.batches);
    let out = out.lock().unwrap();
    let by_time: Vec<(i64, Vec<String>)> =
        out.iter().map(|(t, vs)| (*t, vs.iter().map(|v| v.to_string()).collect())).collect();
    // Per-value calls in order within a key (a: 1 then 3). Spark's threshold
    // (OpenHashMapBasedStateMap.getByTime): a key times out at t when its
    // last update is before t - timeout, so b (last 1000) at 4000, a (last
    // 2000) at 5000.
    let mut first = by_time[0].1.clone();
    first.sort();
    assert_eq!(first, strs(&["(a,1)", "(a,3)", "(b,10)"]));
    assert_eq!(by_time[1].1, strs(&["(a,6)"]));
    assert_eq!(by_time[2].1, Vec::<String>::new());
    assert_eq!(by_time[3].1, strs(&["(b,-1)"]));
    let mut last = by_time[4].1.clone();
    last.sort();
    assert_eq!(last, strs(&["(a,-1)", "(b,1)"]), "b's state was removed when it timed out");
    assert_eq!(
        sorted(&snaps.lock().unwrap()),
        vec![
            (1000, strs(&["(a,3)", "(b,10)"])),
            (2000, strs(&["(a,6)", "(b,10)"])),
            (3000, strs(&["(a,6)", "(b,10)"])),
            (4000, strs(&["(a,6)"])),
            (5000, strs(&["(b,1)"])),
        ]
    );
}

#[test]
fn windows_with_an_inverse_function_agree_with_plain_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = module(&ssc, "wordcount.wasm");
    let words = ["a", "b", "c", "d", "e"];
    let mut batches: Vec<Vec<Value>> =
        (0..24).map(|b| (0..(b * 7 % 5)).map(|j| s(words[(b * 3 + j * 2) % 5])).collect()).collect();
    // A word seen once: its windowed count returns to zero when it leaves.
    batches[0].push(s("z"));
    let input = ssc.queue_stream(batches);
    let (len, slide) = (Duration::from_secs(4), Duration::from_secs(2));
    let ps = input.map(&wc.udf("pair")).unwrap();
    let plain = ps.reduce_by_key_and_window(&wc.udf("sum"), len, slide).unwrap().collect().unwrap();
    let inv = ps
        .reduce_by_key_and_window_inv(&wc.udf("sum"), &wc.udf("subtract"), len, slide, None)
        .unwrap()
        .collect()
        .unwrap();
    let cbv = input.count_by_value_and_window(len, slide).unwrap().collect().unwrap();
    let cbv_inv = input.count_by_value_and_window_inv(len, slide).unwrap().collect().unwrap();
    let ints = ssc.queue_stream((0..24).map(|b| (0..b % 4).map(|j| i(b as i64 * 10 + j as i64)).collect()).collect());
    let rw = ints.reduce_by_window(&wc.udf("sum"), len, slide).unwrap().collect().unwrap();
    let rw_inv = ints.reduce_by_window_inv(&wc.udf("sum"), &wc.udf("subtract"), len, slide).unwrap().collect().unwrap();
    let report = ssc.run(opts(tmp.path())).unwrap();
    assert!(report.failed_batches().next().is_none(), "{:?}", report.batches);

    // Spark keeps keys whose windowed value fell to 0 (no filter given).
    let plain = sorted(&plain.lock().unwrap());
    let inv = sorted(&inv.lock().unwrap());
    assert_eq!(plain.len(), inv.len());
    for ((t1, p), (t2, v)) in plain.iter().zip(&inv) {
        assert_eq!(t1, t2);
        let nonzero: Vec<String> = v.iter().filter(|x| !x.ends_with(",0)")).cloned().collect();
        assert_eq!(p, &nonzero, "window at {t1} ms");
    }
    assert!(inv.iter().any(|(_, v)| v.iter().any(|x| x.ends_with(",0)"))), "some key returned to zero and was kept");
    // countByValueAndWindow filters zero counts: exactly equal.
    assert_eq!(sorted(&cbv.lock().unwrap()), sorted(&cbv_inv.lock().unwrap()));
    // reduce_by_window: the same single value (an empty window gives 0 with the inverse form
    // once a value has been seen, nothing with the plain one).
    let rw = sorted(&rw.lock().unwrap());
    let rw_inv = sorted(&rw_inv.lock().unwrap());
    for ((t, a), (_, b)) in rw.iter().zip(&rw_inv) {
        if !a.is_empty() {
            assert_eq!(a, b, "reduce_by_window at {t} ms");
        }
    }
}

#[test]
fn stateful_streams_refuse_to_run_without_a_checkpoint_directory() {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = module(&ssc, "wordcount.wasm");
    let input = ssc.queue_stream(vec![pairs(&[("a", 1)])]);
    input.update_state_by_key(&wc.udf("running_total")).unwrap().collect().unwrap();
    let err = ssc
        .run({
            let mut o = RunOptions::default();
            o.clock = Clock::Logical;
            o
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint directory"), "{err}");
    assert!(err.contains("update_state_by_key"), "{err}");
}

/// Batch time -> the sorted lines of a save_as_text_files output
/// `dir/<prefix>-<time>/part-*`.
fn saved(dir: &Path, prefix: &str) -> Vec<(i64, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(Ok(t)) = name.strip_prefix(&format!("{prefix}-")).map(str::parse::<i64>) else { continue };
        let mut lines = Vec::new();
        for p in std::fs::read_dir(e.path()).unwrap() {
            let p = p.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("part-") {
                lines.extend(std::fs::read_to_string(p).unwrap().lines().map(String::from));
            }
        }
        lines.sort();
        out.push((t, lines));
    }
    out.sort();
    out
}

#[test]
fn a_job_file_runs_map_with_state_and_state_snapshots_with_sparks_semantics() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs/testops.wasm");
    assert!(ops.exists(), "{} is missing: run udfs/build.sh first", ops.display());
    // The same input as map_with_state_calls_per_value_times_out_idle_keys_and_snapshots_state.
    std::fs::write(
        tmp.path().join("in.jsonl"),
        "[[\"a\", 1], [\"a\", 2], [\"b\", 10]]\n[[\"a\", 3]]\n[]\n[]\n[[\"b\", 1]]\n",
    )
    .unwrap();
    let out = |stream: &str| {
        format!("[[outputs]]\nstream = \"{stream}\"\ntype = \"save_as_text_files\"\nprefix = \"out/{stream}\"\n")
    };
    let job = format!(
        "batch_interval = \"1s\"\n\n[modules]\nops = \"{}\"\n\n[sources.pairs]\ntype = \"batches\"\npath = \"in.jsonl\"\n\n\
         [streams]\n\
         seen = \"pairs.map_with_state(ops.count_seen, 2s).checkpoint(1s)\"\n\
         states = \"seen.state_snapshots()\"\n\
         forever = \"pairs.map_with_state(ops.count_seen)\"\n\
         forever_states = \"pairs.map_with_state(ops.count_seen).state_snapshots()\"\n\n{}{}{}{}",
        ops.display(),
        out("seen"),
        out("states"),
        out("forever"),
        out("forever_states"),
    );
    let path = tmp.path().join("job.toml");
    std::fs::write(&path, job).unwrap();
    let runtime = weir::udf::UdfRuntime::new().unwrap();
    let job = weir::job::load(&path, runtime).unwrap();
    let report = job
        .context
        .run({
            let mut o = opts(&tmp.path().join("checkpoint"));
            o.max_batches = Some(5);
            o
        })
        .unwrap();
    assert!(report.failed_batches().next().is_none(), "{:?}", report.batches);
    let dir = tmp.path().join("out");
    // As through the API: one record per value, in order within a key;
    // b idle since 1000 times out at 4000 (last update before 4000 - 2 s)
    // with one last call (b,-1), a at 5000; b's state was removed, so it
    // starts again at 5000.
    assert_eq!(
        saved(&dir, "seen"),
        vec![
            (1000, strs(&["(a,1)", "(a,3)", "(b,10)"])),
            (2000, strs(&["(a,6)"])),
            (3000, vec![]),
            (4000, strs(&["(b,-1)"])),
            (5000, strs(&["(a,-1)", "(b,1)"])),
        ]
    );
    assert_eq!(
        saved(&dir, "states"),
        vec![
            (1000, strs(&["(a,3)", "(b,10)"])),
            (2000, strs(&["(a,6)", "(b,10)"])),
            (3000, strs(&["(a,6)", "(b,10)"])),
            (4000, strs(&["(a,6)"])),
            (5000, strs(&["(b,1)"])),
        ]
    );
    // Without a timeout keys never time out: no last calls, b carries on.
    assert_eq!(
        saved(&dir, "forever"),
        vec![
            (1000, strs(&["(a,1)", "(a,3)", "(b,10)"])),
            (2000, strs(&["(a,6)"])),
            (3000, vec![]),
            (4000, vec![]),
            (5000, strs(&["(b,11)"])),
        ]
    );
    assert_eq!(saved(&dir, "forever_states").last(), Some(&(5000, strs(&["(a,6)", "(b,11)"]))));
}

#[test]
fn map_with_state_starts_from_a_state_spec_initial_state() {
    // Spark's StateSpec.function(f).initialState(rdd): the initial keys are
    // there before the first batch (MapWithStateSuite "mapWithState - initial
    // states, with nothing returned as from mapping function").
    let tmp = tempfile::tempdir().unwrap();
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let ops = module(&ssc, "testops.wasm");
    let input = ssc.queue_stream(vec![pairs(&[("a", 1), ("b", 2)]), pairs(&[("a", 3)])]);
    let spec = StateSpec::function(&ops.udf("count_seen")).initial_state(pairs(&[("a", 100), ("z", 5)]));
    let mapped = input.map_with_state_spec(spec).unwrap();
    let out = mapped.collect().unwrap();
    let snaps = mapped.state_snapshots().unwrap().collect().unwrap();
    // The initial state is data of the graph: part of the job's identity.
    let with = |pairs: Vec<Value>| {
        let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
        let f = module(&ssc, "testops.wasm").udf("count_seen");
        let s = ssc.queue_stream(vec![]).map_with_state_spec(StateSpec::function(&f).initial_state(pairs)).unwrap();
        s.collect().unwrap();
        ssc.graph()
    };
    assert_ne!(with(pairs(&[("a", 100)])), with(pairs(&[("a", 101)])), "another initial state is another job");
    assert_eq!(with(pairs(&[("a", 100)])), with(pairs(&[("a", 100)])));
    let report = ssc.run(opts(tmp.path())).unwrap();
    assert!(report.failed_batches().next().is_none(), "{:?}", report.batches);
    assert_eq!(sorted(&out.lock().unwrap()), vec![(1000, strs(&["(a,101)", "(b,2)"])), (2000, strs(&["(a,104)"]))]);
    assert_eq!(
        sorted(&snaps.lock().unwrap()),
        vec![(1000, strs(&["(a,101)", "(b,2)", "(z,5)"])), (2000, strs(&["(a,104)", "(b,2)", "(z,5)"]))]
    );
    // Records that are not (key, state) pairs, or null states, are refused.
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let f = module(&ssc, "testops.wasm").udf("count_seen");
    let src = ssc.queue_stream(vec![]);
    for (bad, why) in
        [(vec![i(1)], "is not a (key, state) pair"), (vec![Value::pair(s("a"), Value::Null)], "null state")]
    {
        let Err(err) = src.map_with_state_spec(StateSpec::function(&f).initial_state(bad)) else {
            panic!("an initial state that {why} must be refused")
        };
        assert!(err.to_string().contains("initial state record 1") && err.to_string().contains(why), "{err}");
    }
}

#[test]
fn a_map_with_state_function_emitting_more_than_one_output_per_call_fails_its_batch() {
    // docs/udf-abi.md §4: at most one output per call (a call may emit
    // nothing). udfs/hostile/malformed_output.wat's too_many returns two for
    // a key with one value.
    let tmp = tempfile::tempdir().unwrap();
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let hostile = module(&ssc, "hostile/malformed_output.wat");
    let input = ssc.queue_stream(vec![pairs(&[("a", 1)])]);
    let out = input.map_with_state(&hostile.udf("too_many"), None).unwrap().collect().unwrap();
    let report = ssc.run(opts(tmp.path())).unwrap();
    let failed: Vec<_> = report.failed_batches().collect();
    assert_eq!(failed.len(), 1, "{:?}", report.batches);
    let err = failed[0].errors.join("; ");
    assert!(err.contains("malformed output") && err.contains("too_many"), "{err}");
    assert!(err.contains("2 outputs for key a after 1 call"), "{err}");
    assert!(out.lock().unwrap().iter().all(|(_, v)| v.is_empty()), "nothing of the batch is kept");
}
