//! The DStream API through `weir run`, with expected outputs derived from
//! Spark's semantics (each test cites the Spark suite it follows): how an
//! input batch is cut into partitions, `count_by_window`, windows with an
//! inverse function and a filter, and `map_with_state` (emitting nothing,
//! time-outs on checkpointed batches, `checkpoint(d)`, an initial state).
//! Every job runs on `local[2]` and on `local-cluster[2]`, and the two give
//! the same output files byte for byte.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

/// Runs `job.toml` of `dir` with the logical clock on `master`, with a
/// checkpoint directory, for `batches` batches (until the sources end if
/// `None`); the outputs land in `dir/out`.
fn run_on(dir: &Path, master: &str, batches: Option<u32>) -> Output {
    let job = dir.join("job.toml");
    let ckpt = dir.join("ckpt");
    let mut cmd = weir();
    cmd.args(["run", job.to_str().unwrap(), "--clock", "logical", "--master", master, "--checkpoint"]).arg(&ckpt);
    if let Some(n) = batches {
        cmd.args(["--batches", &n.to_string()]);
    }
    run(&mut cmd)
}

/// Writes the job (`body`, then the modules `ops` and `wc`) and its input
/// files, runs it on `local[2]` and `local-cluster[2]` (see [`run_on`]),
/// checks both runs wrote the same output files byte for byte, and returns
/// the `local[2]` run and its directory.
pub(crate) fn run_both(body: &str, files: &[(&str, String)], batches: Option<u32>) -> (Output, tempfile::TempDir) {
    let modules = format!(
        "\n[modules]\nops = \"{}\"\nwc = \"{}\"\n",
        module("testops.wasm").display(),
        module("wordcount.wasm").display()
    );
    let mut results = Vec::new();
    for master in ["local[2]", "local-cluster[2]"] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("job.toml"), format!("batch_interval = \"1s\"\n{body}{modules}")).unwrap();
        for (name, content) in files {
            let p = tmp.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let out = run_on(tmp.path(), master, batches);
        let written = tmp.path().join("out");
        let files = if written.exists() { tree(&written) } else { BTreeMap::new() };
        results.push((out, files, tmp));
    }
    let (cluster, local) = (results.pop().unwrap(), results.pop().unwrap());
    assert_eq!(
        local.0.status.code(),
        cluster.0.status.code(),
        "local[2] and local-cluster[2] end alike; local stderr: {}\ncluster stderr: {}",
        text(&local.0.stderr),
        text(&cluster.0.stderr)
    );
    assert!(!local.1.is_empty(), "the job wrote outputs: {}", text(&local.0.stderr));
    assert_eq!(local.1, cluster.1, "local-cluster[2] writes the same files, byte for byte, as local[2]");
    (local.0, local.2)
}

pub(crate) fn outputs(dir: &Path, prefix: &str) -> BTreeMap<i64, Vec<String>> {
    read_outputs(&dir.join("out"), prefix)
}

pub(crate) fn saved(stream: &str) -> String {
    format!("[[outputs]]\nstream = \"{stream}\"\ntype = \"save_as_text_files\"\nprefix = \"out/{stream}\"\n")
}

pub(crate) fn ok(out: &Output) {
    assert!(out.status.success(), "weir run failed: {}", text(&out.stderr));
}

pub(crate) fn lines(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

/// Spark's `ParallelCollectionRDD.positions(length, numSlices)`: slice `i`
/// holds elements `[i * length / numSlices, (i + 1) * length / numSlices)`.
fn positions(length: u64, slices: u64) -> Vec<(u64, u64)> {
    (0..slices).map(|i| (i * length / slices, (i + 1) * length / slices)).collect()
}

/// How `glom` shows a slice of consecutive integers: `[a, b, c]`.
fn glom_of(xs: impl Iterator<Item = u64>) -> String {
    format!("[{}]", xs.map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

#[test]
fn input_batches_are_cut_into_partitions_as_sparks_make_rdd() {
    // BasicOperationsSuite "glom" and "mapPartitions" (2 input partitions,
    // sizes that divide evenly) and ParallelCollectionSplitSuite (sizes that
    // do not: the cut is `positions`), from a `batches` source and from the
    // directory source's parallel reader (over 4096 lines, so on threads),
    // which must cut alike.
    let n = 10_000u64;
    let numbers: String = (1..=n).map(|x| format!("{x}\n")).collect();
    let body = "parallelism = 3\n\
        [sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n\
        [sources.lines]\ntype = \"directory\"\npath = \"in\"\n\
        [streams]\n\
        glommed = \"nums.glom()\"\n\
        sums = \"nums.map_partitions(ops.count_and_sum)\"\n\
        file_sums = \"lines.map(ops.parse_int).map_partitions(ops.count_and_sum)\"\n";
    let body = format!("{body}{}{}{}", saved("glommed"), saved("sums"), saved("file_sums"));
    let batches = "[1,2,3,4,5,6]\n[1,2,3,4,5,6,7]\n[1,2,3,4,5,6,7,8,9,10]\n[1]\n[]\n".to_string();
    // The directory source never ends: five batches.
    let (out, dir) = run_both(&body, &[("nums.jsonl", batches), ("in/numbers.txt", numbers)], Some(5));
    ok(&out);
    let glommed = outputs(dir.path(), "glommed");
    let sums = outputs(dir.path(), "sums");
    for (t, len) in [(1000, 6u64), (2000, 7), (3000, 10)] {
        let cut = positions(len, 3);
        let want: Vec<String> = cut.iter().map(|&(a, b)| glom_of(a + 1..=b)).collect();
        assert_eq!(glommed[&t], want, "batch {t}: {len} records over 3 partitions");
        let want: Vec<String> =
            cut.iter().flat_map(|&(a, b)| [(b - a).to_string(), (a + 1..=b).sum::<u64>().to_string()]).collect();
        assert_eq!(sums[&t], want, "batch {t}: map_partitions sees the same slices");
    }
    // Spelled out once: 7 over 3 is [1, 2], [3, 4], [5, 6, 7] (the old cut
    // was 3, 3, 1); 10 over 3 is 3, 3, 4.
    assert_eq!(glommed[&2000], lines(&["[1, 2]", "[3, 4]", "[5, 6, 7]"]));
    assert_eq!(glommed[&3000], lines(&["[1, 2, 3]", "[4, 5, 6]", "[7, 8, 9, 10]"]));
    // Fewer records than partitions: one partition per record; none: one empty one.
    assert_eq!(glommed[&4000], lines(&["[1]"]));
    assert_eq!(glommed[&5000], lines(&["[]"]));
    // The directory source reads a file's lines straight into partitions
    // on several threads: the same cut.
    let want: Vec<String> = positions(n, 3)
        .iter()
        .flat_map(|&(a, b)| [(b - a).to_string(), (a + 1..=b).sum::<u64>().to_string()])
        .collect();
    assert_eq!(outputs(dir.path(), "file_sums")[&1000], want);
    assert_eq!(want[0], "3333", "10000 lines over 3: 3333, 3333, 3334");
}

#[test]
fn count_by_window_emits_as_sparks_count_by_window() {
    // WindowOperationsSuite "countByWindow": window 2 s, slide 1 s. Spark's
    // countByWindow is reduceByWindow(_ + _, _ - _): nothing before the
    // first record, then the count, 0 once every record has left.
    let body = "[sources.a]\ntype = \"batches\"\npath = \"a.jsonl\"\n\
        [sources.b]\ntype = \"batches\"\npath = \"b.jsonl\"\n\
        [streams]\n\
        counted = \"a.count_by_window(2s, 1s)\"\n\
        late = \"b.count_by_window(2s, 1s)\"\n";
    let body = format!("{body}{}{}", saved("counted"), saved("late"));
    let a = "[1]\n[1]\n[1, 2]\n[0]\n[]\n[]\n".to_string();
    let b = "[]\n[]\n[\"x\"]\n[]\n[]\n[]\n".to_string();
    let (out, dir) = run_both(&body, &[("a.jsonl", a), ("b.jsonl", b)], None);
    ok(&out);
    let counted: Vec<Vec<String>> = outputs(dir.path(), "counted").into_values().collect();
    // Spark's expected output: Seq(Seq(1), Seq(2), Seq(3), Seq(3), Seq(1), Seq(0)).
    assert_eq!(counted, ["1", "2", "3", "3", "1", "0"].map(|c| lines(&[c])).to_vec());
    let late = outputs(dir.path(), "late");
    let none: Vec<String> = Vec::new();
    assert_eq!(
        late.values().cloned().collect::<Vec<_>>(),
        vec![none.clone(), none, lines(&["1"]), lines(&["1"]), lines(&["0"]), lines(&["0"])]
    );
}

#[test]
fn an_inverse_window_with_a_filter_follows_spark_and_fails_on_a_key_dropped_inside_the_window() {
    // WindowOperationsSuite "reduceByKeyAndWindow with inverse and filter
    // functions - key removed from window" (window 2 s, slide 1 s, filter
    // `_._2 != 0`): (a,1), (a,2), (a,1), then nothing.
    let body = "[sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [streams]\n\
        kept = \"pairs.reduce_by_key_and_window(wc.sum, wc.subtract, 2s, 1s, ops.positive_value)\"\n";
    let input = "[[\"a\", 1]]\n[[\"a\", 1]]\n[]\n[]\n".to_string();
    let (out, dir) = run_both(&format!("{body}{}", saved("kept")), &[("pairs.jsonl", input.clone())], None);
    ok(&out);
    let kept: Vec<Vec<String>> = outputs(dir.path(), "kept").into_values().collect();
    assert_eq!(kept, vec![lines(&["(a,1)"]), lines(&["(a,2)"]), lines(&["(a,1)"]), vec![]]);

    // A filter that drops `a` at 2000 (value 2) while both its values are
    // still in the window: at 3000 the value of 1000 leaves, and there is
    // no previous value to take it from and no new value. Spark's
    // ReducedWindowedDStream throws there ("Neither previous window has
    // value for key, nor new values found"); Weir fails the batch, naming
    // the key and the batch time, instead of skipping what leaves.
    let body = "[sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [streams]\n\
        dropped = \"pairs.reduce_by_key_and_window(wc.sum, wc.subtract, 2s, 1s, ops.below_two)\"\n";
    let (out, dir) = run_both(&format!("{body}{}", saved("dropped")), &[("pairs.jsonl", input)], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a failed batch makes the exit status 1: {err}");
    assert!(err.contains("batch 3000 ms") && err.contains("key a "), "the error names the batch and the key: {err}");
    assert!(err.contains("values leaving the window"), "{err}");
    let dropped = outputs(dir.path(), "dropped");
    assert_eq!(dropped.get(&1000), Some(&lines(&["(a,1)"])));
    assert_eq!(dropped.get(&2000), Some(&vec![]), "the filter dropped (a,2)");
    assert!(!dropped.contains_key(&3000), "the failed batch wrote nothing: {dropped:?}");
}

/// Each batch's output lines, sorted (their order across partitions is not
/// part of the result).
fn sorted_batches(m: BTreeMap<i64, Vec<String>>) -> Vec<(i64, Vec<String>)> {
    m.into_iter()
        .map(|(t, mut v)| {
            v.sort();
            (t, v)
        })
        .collect()
}

#[test]
fn map_with_state_may_emit_nothing_for_a_call() {
    // MapWithStateSuite's mapping functions return Option (Spark's
    // `StateSpec.function((time, key, value, state) => Option[T])`): None
    // emits nothing. testops.first_seen emits a key's first value only.
    let body = "[sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [streams]\n\
        first = \"pairs.map_with_state(ops.first_seen)\"\n\
        states = \"first.state_snapshots()\"\n";
    let input = "[[\"a\", 1], [\"a\", 2], [\"b\", 3]]\n[[\"a\", 4], [\"b\", 5], [\"c\", 6]]\n[]\n".to_string();
    let (out, dir) = run_both(&format!("{body}{}{}", saved("first"), saved("states")), &[("pairs.jsonl", input)], None);
    ok(&out);
    let sorted =
        |m: BTreeMap<i64, Vec<String>>| -> Vec<Vec<String>> { sorted_batches(m).into_iter().map(|(_, v)| v).collect() };
    assert_eq!(sorted(outputs(dir.path(), "first")), vec![lines(&["(a,1)", "(b,3)"]), lines(&["(c,6)"]), vec![]]);
    // Every call still updates the state (the count of values seen).
    assert_eq!(
        sorted(outputs(dir.path(), "states")),
        vec![lines(&["(a,2)", "(b,1)"]), lines(&["(a,3)", "(b,2)", "(c,1)"]), lines(&["(a,3)", "(b,2)", "(c,1)"])]
    );
}

#[test]
fn map_with_state_functions_get_the_batch_time() {
    // Spark's StateSpec.function((time, key, value, state) => ...): the
    // mapping function is given the batch time; testops.stamp emits
    // (key, time) per value and keeps the time as the key's state, on both
    // masters alike.
    let body = "[sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [streams]\n\
        stamped = \"pairs.map_with_state(ops.stamp)\"\n\
        states = \"stamped.state_snapshots()\"\n";
    let input = "[[\"a\", 1], [\"a\", 2], [\"b\", 3]]\n[[\"a\", 4], [\"c\", 6]]\n[]\n".to_string();
    let (out, dir) =
        run_both(&format!("{body}{}{}", saved("stamped"), saved("states")), &[("pairs.jsonl", input)], None);
    ok(&out);
    let sorted = sorted_batches;
    let stamped = sorted(outputs(dir.path(), "stamped"));
    assert_eq!(stamped.len(), 3, "{stamped:?}");
    let (t1, t2) = (stamped[0].0, stamped[1].0);
    assert!(t1 > 0 && t2 > t1, "{stamped:?}");
    let at = |t: i64, keys: &[&str]| keys.iter().map(|k| format!("({k},{t})")).collect::<Vec<_>>();
    assert_eq!(stamped[0].1, at(t1, &["a", "a", "b"]));
    assert_eq!(stamped[1].1, at(t2, &["a", "c"]));
    assert!(stamped[2].1.is_empty());
    // The state is the time of each key's newest value.
    let states = sorted(outputs(dir.path(), "states"));
    let mut second = at(t2, &["a", "c"]);
    second.extend(at(t1, &["b"]));
    second.sort();
    assert_eq!(
        states.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        vec![at(t1, &["a", "b"]), second.clone(), second]
    );
}

#[test]
fn map_with_state_times_out_on_checkpointed_batches_from_an_initial_state() {
    // Spark's mapWithState: keys time out only on batches whose state is
    // checkpointed (MapWithStateRDD's full scan), when last updated before
    // `batch time - timeout` (OpenHashMapBasedStateMap.getByTime); the
    // default interval is 10 slides (InternalMapWithStateDStream); an
    // initial state (StateSpec.initialState) counts as updated at the first
    // batch (MapWithStateRDD.createFromPairRDD).
    let body = "[sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [streams]\n\
        seen = \"pairs.map_with_state(ops.count_seen, 2s).checkpoint(2s)\"\n\
        states = \"seen.state_snapshots()\"\n\
        lazy = \"pairs.map_with_state(ops.count_seen, 2s)\"\n\
        [initial_state]\n\
        seen = \"initial.jsonl\"\n";
    let input = "[[\"a\", 1], [\"b\", 10]]\n[[\"a\", 3]]\n[]\n[]\n[]\n[]\n".to_string();
    let initial = "[[\"a\", 100], [\"z\", 5]]\n".to_string();
    let (out, dir) = run_both(
        &format!("{body}{}{}{}", saved("seen"), saved("states"), saved("lazy")),
        &[("pairs.jsonl", input), ("initial.jsonl", initial)],
        None,
    );
    ok(&out);
    let sorted = |m: BTreeMap<i64, Vec<String>>| -> Vec<(i64, Vec<String>)> {
        m.into_iter()
            .map(|(t, mut v)| {
                v.sort();
                (t, v)
            })
            .collect()
    };
    // Checkpointed (and so scanned) at 2000, 4000, 6000: b and z (last
    // updated at 1000) time out at 4000 (1000 < 4000 - 2000), a (2000) at 6000.
    assert_eq!(
        sorted(outputs(dir.path(), "seen")),
        vec![
            (1000, lines(&["(a,101)", "(b,10)"])),
            (2000, lines(&["(a,104)"])),
            (3000, vec![]),
            (4000, lines(&["(b,-1)", "(z,-1)"])),
            (5000, vec![]),
            (6000, lines(&["(a,-1)"])),
        ]
    );
    assert_eq!(
        sorted(outputs(dir.path(), "states")),
        vec![
            (1000, lines(&["(a,101)", "(b,10)", "(z,5)"])),
            (2000, lines(&["(a,104)", "(b,10)", "(z,5)"])),
            (3000, lines(&["(a,104)", "(b,10)", "(z,5)"])),
            (4000, lines(&["(a,104)"])),
            (5000, lines(&["(a,104)"])),
            (6000, vec![]),
        ]
    );
    // The default interval (10 slides): no batch of these six is scanned,
    // so nothing times out yet; no initial state here.
    assert_eq!(
        sorted(outputs(dir.path(), "lazy")),
        vec![
            (1000, lines(&["(a,1)", "(b,10)"])),
            (2000, lines(&["(a,4)"])),
            (3000, vec![]),
            (4000, vec![]),
            (5000, vec![]),
            (6000, vec![]),
        ]
    );
}

#[test]
fn a_bad_initial_state_for_map_with_state_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("pairs.jsonl"), "[]\n").unwrap();
    std::fs::write(tmp.path().join("initial.jsonl"), "[[\"a\", 1], [\"a\", 2]]\n").unwrap();
    let job = format!(
        "batch_interval = \"1s\"\n[modules]\nops = \"{}\"\n\
         [sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
         [streams]\nseen = \"pairs.map_with_state(ops.count_seen)\"\n\
         [initial_state]\nseen = \"initial.jsonl\"\n{}",
        module("testops.wasm").display(),
        saved("seen")
    );
    std::fs::write(tmp.path().join("job.toml"), job).unwrap();
    let out = run_on(tmp.path(), "local[2]", None);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a key twice in the initial state is refused");
    assert!(
        err.contains("job.toml:") && err.contains("initial state record 2") && err.contains("repeats a key"),
        "{err}"
    );
}

#[test]
fn rdd_operations_follow_spark_through_weir_run_on_both_masters() {
    // The operations Spark users reach for through `transform(rdd => ...)`
    // (SortingSuite, RDDSuite, PairRDDFunctionsSuite), on `local[2]` and
    // `local-cluster[2]` (run_both: the same bytes), directly and inside
    // `transform`.
    let body = "[sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n\
        [sources.other]\ntype = \"batches\"\npath = \"other.jsonl\"\n\
        [sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [sources.words]\ntype = \"batches\"\npath = \"words.jsonl\"\n\
        [sources.many]\ntype = \"batches\"\npath = \"many.jsonl\"\n\
        [streams]\n\
        sorted = \"pairs.sort_by_key(false)\"\n\
        sorted_by = \"words.sort_by(ops.first_char)\"\n\
        distinct = \"nums.distinct()\"\n\
        subtract = 'nums.transform_with(other, \"rdd.subtract(other)\")'\n\
        intersection = \"nums.intersection(other)\"\n\
        taken = 'nums.transform(\"rdd.take(3)\")'\n\
        top = \"nums.top(2)\"\n\
        top_by = \"words.top(3, ops.first_char)\"\n\
        top_by_in = 'words.transform(\"rdd.top(1, ops.first_char)\")'\n\
        several = 'nums.transform(\"rdd.subtract(other).union(other)\")'\n\
        zipped = \"words.zip_with_index()\"\n\
        cartesian = \"nums.take(2).cartesian(other)\"\n\
        coalesced = \"nums.coalesce(1).glom()\"\n\
        sampled = \"many.sample(0.5, 7)\"\n\
        ranged = \"spread.sort_by_key(false, 3)\"\n\
        [sources.spread]\ntype = \"batches\"\npath = \"spread.jsonl\"\n";
    let names = [
        "sorted",
        "sorted_by",
        "distinct",
        "subtract",
        "intersection",
        "taken",
        "top",
        "top_by",
        "top_by_in",
        "several",
        "zipped",
        "cartesian",
        "coalesced",
        "sampled",
        "ranged",
    ];
    let body = format!("{body}{}", names.iter().map(|n| saved(n)).collect::<String>());
    let many: Vec<String> = (1..=200).map(|x| x.to_string()).collect();
    let many = format!("[{}]\n[{}]\n[]\n", many.join(","), many.join(","));
    // 300 pairs over 101 keys, then all one key, then none.
    let spread: Vec<(i64, i64)> = (0..300).map(|x| ((x * 37) % 101, x)).collect();
    let pair_json = |ps: &[(i64, i64)]| ps.iter().map(|(k, v)| format!("[{k}, {v}]")).collect::<Vec<_>>().join(",");
    let same: Vec<(i64, i64)> = (0..50).map(|x| (9, x)).collect();
    let spread_file = format!("[{}]\n[{}]\n[]\n", pair_json(&spread), pair_json(&same));
    let spread_input = [spread, same, vec![]];
    let spread = spread_file;
    let files = [
        ("nums.jsonl", "[1, 2, 3, 4, 2, 3]\n[5, 5, 6]\n[]\n".to_string()),
        ("other.jsonl", "[2, 3, 4]\n[6]\n[1]\n".to_string()),
        ("pairs.jsonl", "[[\"b\", 2], [\"a\", 1], [\"c\", 3], [\"a\", 0]]\n[]\n[[\"x\", 1]]\n".to_string()),
        ("words.jsonl", "[\"banana\", \"apple\", \"cherry\", \"avocado\"]\n[\"x\"]\n[]\n".to_string()),
        ("many.jsonl", many),
        ("spread.jsonl", spread),
    ];
    let (out, dir) = run_both(&body, &files, None);
    ok(&out);
    let d = dir.path();
    let exact = |name: &str| outputs(d, name).into_values().collect::<Vec<_>>();
    let unordered = |name: &str| {
        outputs(d, name)
            .into_values()
            .map(|mut v| {
                v.sort();
                v
            })
            .collect::<Vec<_>>()
    };
    let none: Vec<String> = vec![];
    // Stable: equal keys keep their order in the batch.
    assert_eq!(exact("sorted"), vec![lines(&["(c,3)", "(b,2)", "(a,1)", "(a,0)"]), none.clone(), lines(&["(x,1)"])]);
    assert_eq!(exact("sorted_by"), vec![lines(&["apple", "avocado", "banana", "cherry"]), lines(&["x"]), none.clone()]);
    assert_eq!(unordered("distinct"), vec![lines(&["1", "2", "3", "4"]), lines(&["5", "6"]), none.clone()]);
    // The left's duplicates are kept.
    assert_eq!(unordered("subtract"), vec![lines(&["1"]), lines(&["5", "5"]), none.clone()]);
    assert_eq!(unordered("intersection"), vec![lines(&["2", "3", "4"]), lines(&["6"]), none.clone()]);
    // Partitions in order: [1, 2, 3] and [4, 2, 3].
    assert_eq!(exact("taken"), vec![lines(&["1", "2", "3"]), lines(&["5", "5", "6"]), none.clone()]);
    assert_eq!(exact("top"), vec![lines(&["4", "3"]), lines(&["6", "5"]), none.clone()]);
    // Greatest first character first; apple and avocado tie on it and come
    // in their own order, greatest first (RDDSuite "top with custom ordering").
    assert_eq!(exact("top_by"), vec![lines(&["cherry", "banana", "avocado"]), lines(&["x"]), none.clone()]);
    assert_eq!(exact("top_by_in"), vec![lines(&["cherry"]), lines(&["x"]), none.clone()]);
    // A transform naming another stream (Spark's context-level transform).
    assert_eq!(unordered("several"), vec![lines(&["1", "2", "3", "4"]), lines(&["5", "5", "6"]), lines(&["1"])]);
    assert_eq!(
        exact("zipped"),
        vec![lines(&["(banana,0)", "(apple,1)", "(cherry,2)", "(avocado,3)"]), lines(&["(x,0)"]), none.clone()]
    );
    // Left-major over pairs of partitions: the left's one partition [1, 2]
    // by the right's [2] and [3, 4].
    assert_eq!(
        exact("cartesian"),
        vec![lines(&["(1,2)", "(2,2)", "(1,3)", "(1,4)", "(2,3)", "(2,4)"]), lines(&["(5,6)", "(5,6)"]), none.clone()]
    );
    assert_eq!(exact("coalesced"), vec![lines(&["[1, 2, 3, 4, 2, 3]"]), lines(&["[5, 5, 6]"]), lines(&["[]"])]);
    // Seeded: a subsequence of about half, different in each batch (the
    // time is mixed into the seed), and the same bytes on both masters.
    let sampled = exact("sampled");
    let all: Vec<String> = (1..=200).map(|x| x.to_string()).collect();
    for kept in &sampled[..2] {
        assert!((60..=140).contains(&kept.len()), "sample(0.5) of 200 kept {}", kept.len());
        let mut rest = all.iter();
        assert!(kept.iter().all(|k| rest.any(|x| x == k)), "a subsequence: {kept:?}");
    }
    assert_ne!(sampled[0], sampled[1]);
    assert_eq!(sampled[2], none);
    // sort_by_key(false, 3): three part files per batch, each a range of
    // keys (descending), together the batch stably sorted: what one
    // partition's sort gives (SortingSuite "sort descending").
    let ranged: Vec<(i64, Vec<Vec<(i64, i64)>>)> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let t: i64 = e.file_name().to_str()?.strip_prefix("ranged-")?.parse().ok()?;
            let mut names: Vec<_> = std::fs::read_dir(e.path())
                .unwrap()
                .map(|f| f.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("part-"))
                .collect();
            names.sort();
            let parts = names
                .iter()
                .map(|n| {
                    let text = std::fs::read_to_string(e.path().join(n)).unwrap();
                    text.lines()
                        .map(|l| {
                            let (k, v) = l.trim_matches(|c| c == '(' || c == ')').split_once(',').unwrap();
                            (k.parse().unwrap(), v.parse().unwrap())
                        })
                        .collect()
                })
                .collect();
            Some((t, parts))
        })
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(ranged.len(), 3, "three batches");
    for ((t, parts), input) in ranged.iter().zip(&spread_input) {
        assert_eq!(parts.len(), 3, "batch {t}: one part file per partition");
        let mut want = input.clone();
        want.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
        assert_eq!(parts.concat(), want, "batch {t}");
        let full: Vec<&Vec<(i64, i64)>> = parts.iter().filter(|p| !p.is_empty()).collect();
        for w in full.windows(2) {
            let (last, first) = (w[0].last().unwrap().0, w[1].first().unwrap().0);
            assert!(last > first, "batch {t}: part ranges overlap ({last} then {first})");
        }
    }
    assert!(ranged[0].1.iter().all(|p| p.len() > 30), "300 records over 101 keys spread: {:?}", ranged[0].1);
    assert_eq!(ranged[1].1.iter().filter(|p| !p.is_empty()).count(), 1, "one key: one range");
}

/// Spark's `DStream.slice` (Rust API) on `local-cluster[2]`: the driver
/// computes the sliced RDDs on executor processes, and they equal what the
/// stream produced (a reduce, so a shuffle between the executors).
#[test]
fn slice_on_a_local_cluster_returns_the_rdds_the_stream_produced() {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;
    use weir::codec::Value;
    use weir::dstream::StreamingContext;
    use weir::listener::{BatchReport, StreamingListener};
    use weir::plan::source::SourceSpec;
    use weir::scheduler::{Clock, Master, RunOptions};

    #[derive(Default)]
    struct Done(Mutex<i64>, Condvar);
    impl StreamingListener for Done {
        fn on_batch_completed(&self, b: &BatchReport) {
            *self.0.lock().unwrap() = b.time;
            self.1.notify_all();
        }
    }
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = ssc.module(module("wordcount.wasm")).unwrap();
    let spec = SourceSpec::Generator { lines_per_batch: 20, words_per_line: 3, vocabulary: 7, seed: 3, batches: None };
    let words = ssc.source(spec, "generator").flat_map(&wc.udf("split")).unwrap();
    let counts = words.map(&wc.udf("pair")).unwrap().reduce_by_key(&wc.udf("sum")).unwrap();
    let collected = counts.collect().unwrap();
    ssc.remember(Duration::from_secs(3600));
    let done = Arc::new(Done::default());
    let mut o = RunOptions::default();
    o.master = Master::LocalCluster { executors: 2, cores: 1 };
    o.clock = Clock::Logical;
    o.listeners = vec![done.clone()];
    o.cluster.executor_binary = Some(env!("CARGO_BIN_EXE_weir").into());
    let handle = ssc.start(o).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut t = done.0.lock().unwrap();
    while *t < 4000 {
        assert!(std::time::Instant::now() < deadline, "batch 4000 never completed");
        t = done.1.wait_timeout(t, Duration::from_secs(1)).unwrap().0;
    }
    drop(t);
    let sorted = |mut v: Vec<Value>| {
        v.sort_by_key(|x| x.encode());
        v
    };
    let want: Vec<(i64, Vec<Value>)> = collected
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| (2000..=4000).contains(t))
        .map(|(t, v)| (*t, sorted(v.clone())))
        .collect();
    assert_eq!(want.len(), 3);
    let got: Vec<(i64, Vec<Value>)> =
        counts.slice(2000, 4000).unwrap().into_iter().map(|(t, v)| (t, sorted(v))).collect();
    assert_eq!(got, want);
    handle.stop(false).unwrap();
}
