//! Every DStream operation, run through the real engine: a `StreamingContext`
//! with `queue_stream` inputs, the operation(s) under test, `collect()`, and
//! `run` with `local[2]` and the logical clock (batch times 1000, 2000, ...).
//! Expected outputs follow Spark Streaming's semantics; where Spark leaves the
//! order of a shuffle's output unspecified, batches are compared as sorted
//! multisets, and `output_order_is_deterministic` shows that the order Weir
//! does produce never changes between runs or numbers of executor threads.
//!
//! Also: recomputation of dropped blocks from lineage (shuffle buckets,
//! persisted window parents), and UDF failures that fail one batch only.
//!
//! The `.wasm` modules are built by `bash udfs/build.sh`; these tests fail
//! (they never skip) when they are missing.

// Building a job returns the engine's (large) error type by design.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::codec::Value;
use weir::dstream::{DStream, ModuleHandle, StreamingContext};
use weir::executor::block_store::BlockStore;
use weir::rdd::{BlockId, RddId, RddOp};
use weir::scheduler::AfterBatch;
use weir::scheduler::{Clock, DagScheduler, Master, RunOptions, RunReport};
use weir::EngineError;

// ---------------------------------------------------------------- helpers

type Batches = Vec<(i64, Vec<Value>)>;

const TESTOPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/testops.wasm");
const WORDCOUNT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/wordcount.wasm");

fn ctx() -> StreamingContext {
    StreamingContext::new(Duration::from_secs(1)).expect("streaming context")
}

fn load(ssc: &StreamingContext, path: &str) -> ModuleHandle {
    assert!(Path::new(path).is_file(), "{path} is missing: run udfs/build.sh first");
    ssc.module(path).unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

fn testops(ssc: &StreamingContext) -> ModuleHandle {
    load(ssc, TESTOPS)
}

fn wordcount(ssc: &StreamingContext) -> ModuleHandle {
    load(ssc, WORDCOUNT)
}

fn opts(threads: usize) -> RunOptions {
    {
        let mut o = RunOptions::default();
        o.master = Master::Local(threads);
        o.clock = Clock::Logical;
        o
    }
}

/// Runs the job; fails the test if any batch failed.
fn run_ok(ssc: StreamingContext, o: RunOptions) -> RunReport {
    let report = ssc.run(o).expect("run");
    let failed: Vec<_> = report.failed_batches().map(|b| (b.time, b.errors.clone())).collect();
    assert!(failed.is_empty(), "batches failed: {failed:?}");
    report
}

fn taken(c: &Arc<Mutex<Batches>>) -> Batches {
    c.lock().unwrap().clone()
}

/// One queue stream of `input` through `build`, collected, on `local[threads]`.
fn run1_on(
    threads: usize,
    input: Vec<Vec<Value>>,
    build: impl FnOnce(&StreamingContext, &DStream) -> Result<DStream, EngineError>,
) -> Batches {
    let ssc = ctx();
    let src = ssc.queue_stream(input);
    let out = build(&ssc, &src).expect("building the job");
    let c = out.collect().expect("collect");
    run_ok(ssc, opts(threads));
    taken(&c)
}

/// As [`run1`], with a checkpoint directory (for operations that keep state
/// from batch to batch, as `count_by_window` does).
fn run1_checkpointed(
    input: Vec<Vec<Value>>,
    build: impl FnOnce(&StreamingContext, &DStream) -> Result<DStream, EngineError>,
) -> Batches {
    let dir = tempfile::tempdir().expect("checkpoint directory");
    let ssc = ctx();
    let src = ssc.queue_stream(input);
    let out = build(&ssc, &src).expect("building the job");
    let c = out.collect().expect("collect");
    let mut o = opts(2);
    o.checkpoint = Some(weir::scheduler::CheckpointOptions::new(dir.path()));
    run_ok(ssc, o);
    taken(&c)
}

fn run1(
    input: Vec<Vec<Value>>,
    build: impl FnOnce(&StreamingContext, &DStream) -> Result<DStream, EngineError>,
) -> Batches {
    run1_on(2, input, build)
}

/// Two queue streams through `build`, collected, on `local[2]`.
fn run2(
    a: Vec<Vec<Value>>,
    b: Vec<Vec<Value>>,
    build: impl FnOnce(&StreamingContext, &DStream, &DStream) -> Result<DStream, EngineError>,
) -> Batches {
    let ssc = ctx();
    let (x, y) = (ssc.queue_stream(a), ssc.queue_stream(b));
    let out = build(&ssc, &x, &y).expect("building the job");
    let c = out.collect().expect("collect");
    run_ok(ssc, opts(2));
    taken(&c)
}

fn s(x: &str) -> Value {
    Value::str(x)
}
fn i(x: i64) -> Value {
    Value::I64(x)
}
fn p(k: Value, v: Value) -> Value {
    Value::pair(k, v)
}
fn l(xs: Vec<Value>) -> Value {
    Value::List(xs)
}
fn strs(xs: &[&str]) -> Vec<Value> {
    xs.iter().map(|x| s(x)).collect()
}
fn ints(xs: &[i64]) -> Vec<Value> {
    xs.iter().map(|&x| i(x)).collect()
}
/// `(str, i64)` pairs.
fn kvs(xs: &[(&str, i64)]) -> Vec<Value> {
    xs.iter().map(|&(k, v)| p(s(k), i(v))).collect()
}
/// `(str, str)` pairs.
fn kss(xs: &[(&str, &str)]) -> Vec<Value> {
    xs.iter().map(|&(k, v)| p(s(k), s(v))).collect()
}
/// Batch times 1000, 2000, ... for `outs`.
fn every_second(outs: Vec<Vec<Value>>) -> Batches {
    outs.into_iter().enumerate().map(|(k, v)| (1000 * (k as i64 + 1), v)).collect()
}

/// A canonical order for values (Value is not Ord): by encoding.
fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.encode());
    v
}

/// Each batch's records as a sorted multiset, with the lists inside grouped
/// values sorted too (Spark does not order the values of a group).
fn normalized(batches: Batches) -> Batches {
    fn norm(v: Value) -> Value {
        match v {
            Value::List(xs) => Value::List(sorted(xs.into_iter().map(norm).collect())),
            Value::Tuple(xs) => Value::Tuple(xs.into_iter().map(norm).collect()),
            x => x,
        }
    }
    batches.into_iter().map(|(t, v)| (t, sorted(v.into_iter().map(norm).collect()))).collect()
}

#[track_caller]
fn assert_unordered(got: Batches, want: Batches) {
    assert_eq!(normalized(got), normalized(want));
}

// ---------------------------------------------------------------- narrow

#[test]
fn map() {
    let out =
        run1(vec![strs(&["a", "bc"]), vec![], strs(&["d", "ee", "f"])], |ssc, src| src.map(&testops(ssc).udf("upper")));
    assert_eq!(out, every_second(vec![strs(&["A", "BC"]), vec![], strs(&["D", "EE", "F"])]));

    let out = run1(vec![ints(&[1, -2, 3, 0, 5])], |ssc, src| src.map(&testops(ssc).udf("double")));
    assert_eq!(out, every_second(vec![ints(&[2, -4, 6, 0, 10])]));
}

#[test]
fn map_chained_keeps_order() {
    let out = run1(vec![strs(&["3", "1", "4", "1", "5"])], |ssc, src| {
        let t = testops(ssc);
        src.map(&t.udf("parse_int"))?.map(&t.udf("double"))?.map(&t.udf("double"))
    });
    assert_eq!(out, every_second(vec![ints(&[12, 4, 16, 4, 20])]));
}

#[test]
fn flat_map() {
    let out = run1(vec![strs(&["ab", "", "c"]), vec![], strs(&["", ""])], |ssc, src| {
        src.flat_map(&testops(ssc).udf("chars"))
    });
    assert_eq!(out, every_second(vec![strs(&["a", "b", "c"]), vec![], vec![]]));

    // 0 and negative counts produce nothing.
    let out = run1(vec![ints(&[2, 0, 1, -1, 3])], |ssc, src| src.flat_map(&testops(ssc).udf("repeat")));
    assert_eq!(out, every_second(vec![ints(&[2, 2, 1, 3, 3, 3])]));
}

#[test]
fn filter() {
    let out = run1(vec![ints(&[1, 2, 3, 4, 5, 6]), vec![], ints(&[1, 3, 5]), ints(&[8])], |ssc, src| {
        src.filter(&testops(ssc).udf("is_even"))
    });
    assert_eq!(out, every_second(vec![ints(&[2, 4, 6]), vec![], vec![], ints(&[8])]));

    let out = run1(vec![strs(&["abcd", "abc", "", "héllo"])], |ssc, src| src.filter(&testops(ssc).udf("is_long")));
    assert_eq!(out, every_second(vec![strs(&["abcd", "héllo"])]));
}

#[test]
fn map_partitions() {
    // A batch is split into `parallelism` (2) contiguous partitions as
    // Spark's makeRDD slices it (ParallelCollectionRDD.positions: [i*5/2,
    // (i+1)*5/2)): [1,2] and [3,4,5]; an empty batch is one empty partition, on which the function
    // still runs (Spark calls mapPartitions' function on empty iterators).
    let out = run1(vec![ints(&[1, 2, 3, 4, 5]), vec![], ints(&[7])], |ssc, src| {
        src.map_partitions(&testops(ssc).udf("count_and_sum"))
    });
    assert_eq!(out, every_second(vec![ints(&[2, 3, 3, 12]), ints(&[0, 0]), ints(&[1, 7])]));
}

#[test]
fn key_by() {
    let out = run1(vec![strs(&["apple", "avocado", "banana", ""]), vec![]], |ssc, src| {
        src.key_by(&testops(ssc).udf("first_char"))
    });
    assert_eq!(out, every_second(vec![kss(&[("a", "apple"), ("a", "avocado"), ("b", "banana"), ("", "")]), vec![]]));
}

#[test]
fn glom() {
    // Spark's makeRDD slicing (ParallelCollectionRDD.positions): 5 records
    // over 2 partitions are [0, 2) and [2, 5).
    let out = run1(vec![strs(&["a", "b", "c", "d", "e"]), strs(&["x"]), vec![]], |_, src| src.glom());
    assert_eq!(
        out,
        every_second(vec![
            vec![l(strs(&["a", "b"])), l(strs(&["c", "d", "e"]))],
            vec![l(strs(&["x"]))],
            vec![l(vec![])],
        ])
    );

    // With parallelism 3, three contiguous partitions: 7 records as
    // [0, 2), [2, 4), [4, 7).
    let mut ssc = ctx();
    ssc.set_parallelism(3).unwrap();
    let c = ssc.queue_stream(vec![ints(&[1, 2, 3, 4, 5, 6, 7])]).glom().unwrap().collect().unwrap();
    run_ok(ssc, opts(2));
    assert_eq!(taken(&c), every_second(vec![vec![l(ints(&[1, 2])), l(ints(&[3, 4])), l(ints(&[5, 6, 7]))]]));
}

#[test]
fn repartition() {
    let input = vec![ints(&[1, 2, 3, 4, 5, 6, 7]), ints(&[9]), vec![]];
    let out = run1(input.clone(), |_, src| src.repartition(3)?.glom());
    assert_eq!(out.len(), 3);
    for ((t, parts), (k, want)) in out.iter().zip(input.iter().enumerate()) {
        assert_eq!(*t, 1000 * (k as i64 + 1));
        assert_eq!(parts.len(), 3, "repartition(3) makes 3 partitions at {t}: {parts:?}");
        let all: Vec<Value> = parts
            .iter()
            .flat_map(|part| match part {
                Value::List(xs) => xs.clone(),
                other => panic!("glom gave {other:?}"),
            })
            .collect();
        assert_eq!(sorted(all), sorted(want.clone()), "repartition keeps every record once, at {t}");
    }
    // Round robin: 7 records over 3 partitions are spread evenly.
    let sizes: Vec<usize> = out[0].1.iter().map(|v| if let Value::List(xs) = v { xs.len() } else { 0 }).collect();
    assert!(sizes.iter().all(|&n| (2..=3).contains(&n)), "uneven repartition: {sizes:?}");

    // repartition(1) gathers everything into one partition.
    let out = run1(vec![ints(&[1, 2, 3, 4, 5])], |_, src| src.repartition(1)?.glom());
    assert_eq!(out.len(), 1);
    let [Value::List(xs)] = out[0].1.as_slice() else { panic!("one partition expected: {out:?}") };
    assert_eq!(sorted(xs.clone()), ints(&[1, 2, 3, 4, 5]));
}

#[test]
fn union() {
    let out = run2(vec![strs(&["a1", "a2"]), strs(&["a3"]), vec![]], vec![strs(&["b1"]), vec![], vec![]], |_, a, b| {
        a.union(b)
    });
    // The union's partitions are the first stream's, then the second's.
    assert_eq!(out, every_second(vec![strs(&["a1", "a2", "b1"]), strs(&["a3"]), vec![]]));

    // A stream united with itself has every record twice (as in Spark).
    let out = run1(vec![ints(&[1, 2])], |_, src| src.union(src));
    assert_eq!(out, every_second(vec![ints(&[1, 2, 1, 2])]));
}

#[test]
fn union_of_different_slides_is_a_graph_error() {
    let ssc = ctx();
    let a = ssc.queue_stream(vec![]);
    let b = ssc.queue_stream(vec![]);
    let w = a.window(Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let err = w.union(&b).err().expect("union of 2 s and 1 s slides must fail");
    assert!(matches!(err, EngineError::Graph(_)), "{err}");
    assert!(err.to_string().contains("different slide"), "{err}");
}

#[test]
fn map_values() {
    let out = run1(vec![kvs(&[("a", 1), ("b", 2), ("a", -3)]), vec![]], |ssc, src| {
        src.map_values(&testops(ssc).udf("double"))
    });
    assert_eq!(out, every_second(vec![kvs(&[("a", 2), ("b", 4), ("a", -6)]), vec![]]));
}

#[test]
fn flat_map_values() {
    let out = run1(vec![kvs(&[("a", 2), ("b", 0), ("c", 1), ("d", 3)]), vec![]], |ssc, src| {
        src.flat_map_values(&testops(ssc).udf("repeat"))
    });
    assert_eq!(out, every_second(vec![kvs(&[("a", 2), ("a", 2), ("c", 1), ("d", 3), ("d", 3), ("d", 3)]), vec![]]));
}

#[test]
fn wordcount_pipeline() {
    let lines = strs(&["to be or", "not to be", "", "  be  "]);
    let out = run1(vec![lines, vec![], strs(&["x"])], |ssc, src| {
        let wc = wordcount(ssc);
        src.flat_map(&wc.udf("split"))?.map(&wc.udf("pair"))?.reduce_by_key(&wc.udf("sum"))
    });
    assert_unordered(
        out,
        every_second(vec![kvs(&[("to", 2), ("be", 3), ("or", 1), ("not", 1)]), vec![], kvs(&[("x", 1)])]),
    );
}

// ---------------------------------------------------------------- global aggregations

#[test]
fn count() {
    let out = run1(vec![strs(&["a", "b", "c"]), vec![], strs(&["x"]), vec![]], |_, src| src.count());
    // The count of an empty batch is [0], not [].
    assert_eq!(out, every_second(vec![ints(&[3]), ints(&[0]), ints(&[1]), ints(&[0])]));
}

#[test]
fn reduce() {
    let out = run1(vec![ints(&[3, 9, 2, 7, 1]), vec![], ints(&[5]), ints(&[-4, -8])], |ssc, src| {
        src.reduce(&testops(ssc).udf("max"))
    });
    // The reduce of an empty batch is empty.
    assert_eq!(out, every_second(vec![ints(&[9]), vec![], ints(&[5]), ints(&[-4])]));
}

#[test]
fn reduce_folds_in_record_order() {
    // concat is order-sensitive: partitions [a,b,c] and [d,e] fold to "abc"
    // and "de", merged in map-partition order.
    let out =
        run1(vec![strs(&["a", "b", "c", "d", "e"]), strs(&["z"])], |ssc, src| src.reduce(&testops(ssc).udf("concat")));
    assert_eq!(out, every_second(vec![strs(&["abcde"]), strs(&["z"])]));
}

// ---------------------------------------------------------------- by key

#[test]
fn count_by_value() {
    let out = run1(vec![strs(&["a", "b", "a", "c", "a"]), vec![], strs(&["b", "b"])], |_, src| src.count_by_value());
    assert_unordered(out, every_second(vec![kvs(&[("a", 3), ("b", 1), ("c", 1)]), vec![], kvs(&[("b", 2)])]));

    // Any value can be counted, pairs included.
    let out = run1(vec![vec![p(i(1), s("x")), p(i(1), s("x")), i(1), Value::Null]], |_, src| src.count_by_value());
    assert_unordered(out, every_second(vec![vec![p(p(i(1), s("x")), i(2)), p(i(1), i(1)), p(Value::Null, i(1))]]));
}

#[test]
fn reduce_by_key() {
    let input = vec![kvs(&[("a", 1), ("b", 2), ("a", 3), ("c", 7), ("a", 5)]), kvs(&[("b", 5)]), vec![]];
    let out = run1(input.clone(), |ssc, src| src.reduce_by_key(&testops(ssc).udf("max")));
    assert_unordered(out, every_second(vec![kvs(&[("a", 5), ("b", 2), ("c", 7)]), kvs(&[("b", 5)]), vec![]]));

    let out = run1(input, |ssc, src| src.reduce_by_key(&wordcount(ssc).udf("sum")));
    assert_unordered(out, every_second(vec![kvs(&[("a", 9), ("b", 2), ("c", 7)]), kvs(&[("b", 5)]), vec![]]));
}

#[test]
fn reduce_by_key_into_n_partitions() {
    let keys: Vec<Value> = (0..20).map(|k| p(i(k % 7), i(1))).collect();
    let out = run1(vec![keys], |ssc, src| src.reduce_by_key_into(&wordcount(ssc).udf("sum"), Some(5))?.glom());
    let parts = &out[0].1;
    assert_eq!(parts.len(), 5);
    let mut all = Vec::new();
    for part in parts {
        let Value::List(xs) = part else { panic!("{part:?}") };
        all.extend(xs.iter().cloned());
    }
    let want: Vec<Value> = (0..7).map(|k| p(i(k), i(if k < 6 { 3 } else { 2 }))).collect();
    assert_eq!(sorted(all), sorted(want));
}

/// `foreach_rdd` gets each batch's partitions, encoded, in partition order:
/// the same records `collect` decodes; an `Err` fails that batch only.
#[test]
fn foreach_rdd_sees_each_batch_encoded_and_can_fail_a_batch() {
    let ssc = ctx();
    let wc = wordcount(&ssc);
    let input = vec![kvs(&[("a", 1), ("b", 2), ("a", 3)]), kvs(&[("c", 4)]), kvs(&[("d", 5)])];
    let counts = ssc.queue_stream(input).reduce_by_key(&wc.udf("sum")).unwrap();
    let collected = counts.collect().unwrap();
    let seen: Arc<Mutex<Vec<(i64, Vec<Vec<u8>>)>>> = Arc::default();
    let s2 = seen.clone();
    counts
        .foreach_rdd(move |time, parts| {
            s2.lock().unwrap().push((time, parts.to_vec()));
            if time == 2000 {
                return Err("the sink is full".into());
            }
            Ok(())
        })
        .unwrap();
    let report = ssc.run(opts(2)).unwrap();
    let failed: Vec<(i64, Vec<String>)> = report.failed_batches().map(|b| (b.time, b.errors.clone())).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, 2000);
    assert!(failed[0].1.iter().any(|e| e.contains("foreach_rdd at batch 2000 ms: the sink is full")), "{failed:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![1000, 2000, 3000]);
    let collected = taken(&collected);
    for ((t, parts), (ct, values)) in seen.iter().zip(&collected) {
        assert_eq!(t, ct);
        assert_eq!(parts.len(), 2, "one encoded batch per partition");
        let decoded: Vec<Value> = parts.iter().flat_map(|p| Value::decode_batch(p).unwrap()).collect();
        assert_eq!(&decoded, values, "batch {t}");
    }
    assert_eq!(sorted(collected[0].1.clone()), sorted(kvs(&[("a", 4), ("b", 2)])));
}

#[test]
fn reduce_by_key_needs_pairs() {
    let ssc = ctx();
    let t = testops(&ssc);
    let c = ssc.queue_stream(vec![ints(&[1, 2]), kvs(&[("a", 1)])]).reduce_by_key(&t.udf("max")).unwrap();
    let c = c.collect().unwrap();
    let report = ssc.run(opts(2)).unwrap();
    let errors = &report.batches[0].errors;
    assert!(errors.iter().any(|e| e.contains("expected a (key, value) pair")), "{errors:?}");
    assert!(report.batches[1].errors.is_empty());
    assert_eq!(taken(&c), vec![(2000, kvs(&[("a", 1)]))]);
}

#[test]
fn keys_are_compared_as_encoded_values() {
    // 1 and "1" are different keys; 0.0 and -0.0 too (Java's Double.equals);
    // every NaN is the one canonical NaN.
    let input = vec![vec![
        i(1),
        s("1"),
        i(1),
        Value::F64(0.0),
        Value::F64(-0.0),
        Value::F64(f64::NAN),
        Value::F64(-f64::NAN),
        Value::F64(f64::from_bits(0x7ff0_0000_0000_0001)),
        Value::Tuple(vec![]),
        Value::List(vec![]),
    ]];
    let out = run1(input, |_, src| src.count_by_value());
    let enc = |b: &Batches| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = b[0].1.iter().map(Value::encode).collect();
        v.sort();
        v
    };
    let want = every_second(vec![vec![
        p(i(1), i(2)),
        p(s("1"), i(1)),
        p(Value::F64(0.0), i(1)),
        p(Value::F64(-0.0), i(1)),
        p(Value::F64(f64::NAN), i(3)),
        p(Value::Tuple(vec![]), i(1)),
        p(Value::List(vec![]), i(1)),
    ]]);
    assert_eq!(enc(&out), enc(&want));
}

#[test]
fn group_by_key() {
    let out = run1(vec![kvs(&[("a", 1), ("b", 2), ("a", 3), ("a", 4)]), vec![], kvs(&[("c", 0)])], |_, src| {
        src.group_by_key()
    });
    assert_unordered(
        out,
        every_second(vec![
            vec![p(s("a"), l(ints(&[1, 3, 4]))), p(s("b"), l(ints(&[2])))],
            vec![],
            vec![p(s("c"), l(ints(&[0])))],
        ]),
    );
}

// ---------------------------------------------------------------- joins

fn join_left() -> Vec<Vec<Value>> {
    vec![kvs(&[("a", 1), ("a", 2), ("b", 3), ("c", 4)]), kvs(&[("a", 1)]), vec![]]
}
fn join_right() -> Vec<Vec<Value>> {
    vec![kss(&[("a", "x"), ("b", "y"), ("b", "z"), ("d", "w")]), vec![], kss(&[("e", "v")])]
}
fn jr(k: &str, v: Value, w: Value) -> Value {
    p(s(k), Value::Tuple(vec![v, w]))
}
const N: Value = Value::Null;

#[test]
fn join() {
    let out = run2(join_left(), join_right(), |_, a, b| a.join(b));
    assert_unordered(
        out,
        every_second(vec![
            vec![jr("a", i(1), s("x")), jr("a", i(2), s("x")), jr("b", i(3), s("y")), jr("b", i(3), s("z"))],
            vec![],
            vec![],
        ]),
    );
}

#[test]
fn left_outer_join() {
    let out = run2(join_left(), join_right(), |_, a, b| a.left_outer_join(b));
    assert_unordered(
        out,
        every_second(vec![
            vec![
                jr("a", i(1), s("x")),
                jr("a", i(2), s("x")),
                jr("b", i(3), s("y")),
                jr("b", i(3), s("z")),
                jr("c", i(4), N),
            ],
            vec![jr("a", i(1), N)],
            vec![],
        ]),
    );
}

#[test]
fn right_outer_join() {
    let out = run2(join_left(), join_right(), |_, a, b| a.right_outer_join(b));
    assert_unordered(
        out,
        every_second(vec![
            vec![
                jr("a", i(1), s("x")),
                jr("a", i(2), s("x")),
                jr("b", i(3), s("y")),
                jr("b", i(3), s("z")),
                jr("d", N, s("w")),
            ],
            vec![],
            vec![jr("e", N, s("v"))],
        ]),
    );
}

#[test]
fn full_outer_join() {
    let out = run2(join_left(), join_right(), |_, a, b| a.full_outer_join(b));
    assert_unordered(
        out,
        every_second(vec![
            vec![
                jr("a", i(1), s("x")),
                jr("a", i(2), s("x")),
                jr("b", i(3), s("y")),
                jr("b", i(3), s("z")),
                jr("c", i(4), N),
                jr("d", N, s("w")),
            ],
            vec![jr("a", i(1), N)],
            vec![jr("e", N, s("v"))],
        ]),
    );
}

#[test]
fn join_with_null_values_and_non_string_keys() {
    // A null *value* on one side is data, not a missing side.
    let a = vec![vec![p(i(1), N), p(i(2), s("two"))]];
    let b = vec![vec![p(i(1), s("one")), p(i(3), N)]];
    let out = run2(a, b, |_, a, b| a.full_outer_join(b));
    let row = |k: i64, v: Value, w: Value| p(i(k), Value::Tuple(vec![v, w]));
    assert_unordered(out, every_second(vec![vec![row(1, N, s("one")), row(2, s("two"), N), row(3, N, N)]]));
}

#[test]
fn self_join() {
    let out = run1(vec![kvs(&[("k", 1), ("j", 0), ("k", 2)])], |_, src| src.join(src));
    assert_unordered(
        out,
        every_second(vec![vec![
            jr("k", i(1), i(1)),
            jr("k", i(1), i(2)),
            jr("k", i(2), i(1)),
            jr("k", i(2), i(2)),
            jr("j", i(0), i(0)),
        ]]),
    );
}

#[test]
fn join_of_windows() {
    let a = vec![kvs(&[("a", 1)]), kvs(&[("b", 2)]), kvs(&[("a", 3)])];
    let b = vec![kss(&[("b", "x")]), vec![], kss(&[("a", "y")])];
    let out = run2(a, b, |_, a, b| a.window(secs(2), secs(1))?.left_outer_join(&b.window(secs(2), secs(1))?));
    assert_unordered(
        out,
        every_second(vec![
            vec![jr("a", i(1), N)],
            vec![jr("a", i(1), N), jr("b", i(2), s("x"))],
            vec![jr("b", i(2), N), jr("a", i(3), s("y"))],
        ]),
    );
}

#[test]
fn cogroup() {
    let out = run2(join_left(), join_right(), |_, a, b| a.cogroup(b));
    let cg = |k: &str, vs: Vec<Value>, ws: Vec<Value>| p(s(k), Value::Tuple(vec![l(vs), l(ws)]));
    assert_unordered(
        out,
        every_second(vec![
            vec![
                cg("a", ints(&[1, 2]), strs(&["x"])),
                cg("b", ints(&[3]), strs(&["y", "z"])),
                cg("c", ints(&[4]), vec![]),
                cg("d", vec![], strs(&["w"])),
            ],
            vec![cg("a", ints(&[1]), vec![])],
            vec![cg("e", vec![], strs(&["v"]))],
        ]),
    );
}

// ---------------------------------------------------------------- windows

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn window_sliding_by_the_batch_interval() {
    // Early windows are partial; trailing empty batches drain the window.
    let out = run1(vec![ints(&[1]), ints(&[2]), ints(&[3]), ints(&[4]), vec![], vec![], vec![]], |_, src| {
        src.window(secs(3), secs(1))
    });
    assert_eq!(
        out,
        every_second(vec![
            ints(&[1]),
            ints(&[1, 2]),
            ints(&[1, 2, 3]),
            ints(&[2, 3, 4]),
            ints(&[3, 4]),
            ints(&[4]),
            vec![],
        ])
    );
}

#[test]
fn window_with_a_longer_slide() {
    // Windows are produced every 2 s only: at 2000, 4000, 6000.
    let input = vec![ints(&[1]), ints(&[2]), ints(&[3]), ints(&[4]), ints(&[5]), ints(&[6])];
    let out = run1(input.clone(), |_, src| src.window(secs(3), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[1, 2])), (4000, ints(&[2, 3, 4])), (6000, ints(&[4, 5, 6]))]);

    // Tumbling windows.
    let out = run1(input.clone(), |_, src| src.window(secs(2), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[1, 2])), (4000, ints(&[3, 4])), (6000, ints(&[5, 6]))]);

    // A window shorter than its slide skips batches (as in Spark).
    let out = run1(input.clone(), |_, src| src.window(secs(1), secs(3)));
    assert_eq!(out, vec![(3000, ints(&[3])), (6000, ints(&[6]))]);

    // window(1 s, 1 s) is the identity.
    let out = run1(input.clone(), |_, src| src.window_of(secs(1)));
    assert_eq!(out, every_second(input));
}

#[test]
fn window_of_batches_with_different_partition_counts() {
    // Batch 1000 has two partitions, batch 2000 one, batch 3000 none with
    // records. The window first exists at 2000, when the input RDD of 1000
    // must still have its own two partitions.
    let input = vec![ints(&[1, 2, 3]), ints(&[4]), vec![], ints(&[5, 6, 7, 8])];
    let out = run1(input.clone(), |_, src| src.window(secs(2), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[1, 2, 3, 4])), (4000, ints(&[5, 6, 7, 8]))]);

    let out = run1(vec![ints(&[1]), ints(&[2, 3, 4]), ints(&[5, 6]), vec![]], |_, src| src.window(secs(3), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[1, 2, 3, 4])), (4000, ints(&[2, 3, 4, 5, 6]))]);

    // The same through a narrow transformation and a shuffle.
    let out =
        run1_checkpointed(input, |ssc, src| src.map(&testops(ssc).udf("double"))?.count_by_window(secs(2), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[4])), (4000, ints(&[4]))]);
}

#[test]
fn window_of_a_window() {
    let input: Vec<Vec<Value>> = (1..=8).map(|x| ints(&[x])).collect();
    let out = run1(input, |_, src| src.window(secs(2), secs(2))?.window(secs(4), secs(4)));
    assert_eq!(out, vec![(4000, ints(&[1, 2, 3, 4])), (8000, ints(&[5, 6, 7, 8]))]);
}

#[test]
fn window_of_a_sliding_window() {
    // The outer window at 10000 reads the inner one at 6000..10000, made
    // only then (no output needed them before), which reads the input back
    // to 2000: lookbacks add up along a chain of windows.
    let input: Vec<Vec<Value>> = (1..=10).map(|x| ints(&[x])).collect();
    let out = run1(input, |_, src| src.window(secs(5), secs(1))?.window(secs(5), secs(5)));
    let w1 = |x: i64| (1.max(x - 4)..=x).collect::<Vec<i64>>();
    let w2 = |t: i64| ints(&(t - 4..=t).flat_map(w1).collect::<Vec<i64>>());
    assert_eq!(out, vec![(5000, w2(5)), (10000, w2(10))]);
}

#[test]
fn window_durations_must_be_multiples_of_the_slide() {
    let ssc = ctx();
    let src = ssc.queue_stream(vec![]);
    let ms = Duration::from_millis;
    for (len, slide) in [(ms(1500), secs(1)), (secs(2), ms(1500)), (ms(0), secs(1)), (secs(1), ms(0))] {
        let err = src.window(len, slide).err().unwrap_or_else(|| panic!("window({len:?}, {slide:?}) must fail"));
        assert!(matches!(err, EngineError::Graph(_)), "{err}");
        assert!(err.to_string().contains("multiple of the parent's slide duration"), "{err}");
    }
    // The windowed operations check the same way.
    let t = testops(&ssc);
    let pairs = ssc.queue_stream(vec![]);
    assert!(matches!(src.reduce_by_window(&t.udf("max"), ms(2500), secs(1)), Err(EngineError::Graph(_))));
    assert!(matches!(src.count_by_window(secs(2), ms(500)), Err(EngineError::Graph(_))));
    assert!(matches!(pairs.reduce_by_key_and_window(&t.udf("max"), ms(1001), secs(1)), Err(EngineError::Graph(_))));
    assert!(matches!(pairs.group_by_key_and_window(secs(3), ms(999)), Err(EngineError::Graph(_))));
    assert!(matches!(src.count_by_value_and_window(ms(100), secs(1)), Err(EngineError::Graph(_))));
    // A window of a window: multiples of the inner window's slide (2 s).
    let w = src.window(secs(4), secs(2)).unwrap();
    assert_eq!(w.slide_ms(), 2000);
    assert!(matches!(w.window(secs(3), secs(2)), Err(EngineError::Graph(_))));
    assert!(matches!(w.window(secs(4), secs(1)), Err(EngineError::Graph(_))));
    assert!(w.window(secs(6), secs(4)).is_ok());
}

#[test]
fn reduce_by_window() {
    let input = vec![ints(&[1, 5]), ints(&[3]), vec![], ints(&[2]), vec![], vec![], vec![]];
    let out = run1(input.clone(), |ssc, src| src.reduce_by_window(&testops(ssc).udf("max"), secs(3), secs(1)));
    // The window of 5000..7000 holds no records: its reduce is empty.
    assert_eq!(out, every_second(vec![ints(&[5]), ints(&[5]), ints(&[5]), ints(&[3]), ints(&[2]), ints(&[2]), vec![]]));

    let out = run1(input, |ssc, src| src.reduce_by_window(&testops(ssc).udf("max"), secs(2), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[5])), (4000, ints(&[2])), (6000, vec![])]);

    // Folded in time order.
    let out = run1(vec![strs(&["a", "b"]), strs(&["c"]), strs(&["d"])], |ssc, src| {
        src.reduce_by_window(&testops(ssc).udf("concat"), secs(2), secs(1))
    });
    assert_eq!(out, every_second(vec![strs(&["ab"]), strs(&["abc"]), strs(&["cd"])]));
}

#[test]
fn count_by_window() {
    let input = vec![strs(&["a", "b"]), strs(&["c"]), vec![], strs(&["d", "e", "f"]), vec![], vec![], vec![]];
    let out = run1_checkpointed(input.clone(), |_, src| src.count_by_window(secs(3), secs(1)));
    // A window emptied after data arrived counts 0 (Spark's countByWindow
    // keeps its one key once it exists).
    assert_eq!(out, every_second(ints(&[2, 3, 3, 4, 3, 3, 0]).into_iter().map(|x| vec![x]).collect()));

    let out = run1_checkpointed(input, |_, src| src.count_by_window(secs(2), secs(2)));
    assert_eq!(out, vec![(2000, ints(&[3])), (4000, ints(&[3])), (6000, ints(&[0]))]);

    // Windows before any record arrived emit nothing, as in Spark (its
    // countByWindow is reduceByWindow(_ + _, _ - _), whose key appears with
    // the first record).
    let input = vec![vec![], vec![], strs(&["a"]), vec![], vec![], vec![]];
    let out = run1_checkpointed(input, |_, src| src.count_by_window(secs(2), secs(1)));
    assert_eq!(out, every_second(vec![vec![], vec![], ints(&[1]), ints(&[1]), ints(&[0]), ints(&[0])]));

    // Without a checkpoint directory it is refused, as every stateful stream.
    let ssc = ctx();
    let c = ssc.queue_stream(vec![]).count_by_window(secs(2), secs(1)).unwrap().collect().unwrap();
    let err = ssc.run(opts(2)).map(|_| ()).expect_err("count_by_window needs a checkpoint directory");
    assert!(err.to_string().contains("needs a checkpoint directory"), "{err}");
    drop(c);
}

#[test]
fn reduce_by_key_and_window() {
    let input = vec![kvs(&[("a", 1), ("b", 1)]), kvs(&[("a", 2)]), kvs(&[("b", 3), ("b", 4)]), vec![], vec![], vec![]];
    let out =
        run1(input.clone(), |ssc, src| src.reduce_by_key_and_window(&wordcount(ssc).udf("sum"), secs(3), secs(1)));
    assert_unordered(
        out,
        every_second(vec![
            kvs(&[("a", 1), ("b", 1)]),
            kvs(&[("a", 3), ("b", 1)]),
            kvs(&[("a", 3), ("b", 8)]),
            kvs(&[("a", 2), ("b", 7)]),
            kvs(&[("b", 7)]),
            vec![],
        ]),
    );

    let out = run1(input, |ssc, src| src.reduce_by_key_and_window(&wordcount(ssc).udf("sum"), secs(3), secs(2)));
    assert_unordered(out, vec![(2000, kvs(&[("a", 3), ("b", 1)])), (4000, kvs(&[("a", 2), ("b", 7)])), (6000, vec![])]);

    // Values of a key are folded in time order.
    let out = run1(vec![kss(&[("k", "x")]), kss(&[("k", "y"), ("j", "1")]), kss(&[("k", "z")])], |ssc, src| {
        src.reduce_by_key_and_window(&testops(ssc).udf("concat"), secs(2), secs(1))
    });
    assert_unordered(
        out,
        every_second(vec![kss(&[("k", "x")]), kss(&[("k", "xy"), ("j", "1")]), kss(&[("k", "yz"), ("j", "1")])]),
    );
}

#[test]
fn group_by_key_and_window() {
    let input = vec![kvs(&[("a", 1)]), kvs(&[("a", 2), ("b", 3)]), kvs(&[("b", 4)]), vec![]];
    let out = run1(input, |_, src| src.group_by_key_and_window(secs(2), secs(1)));
    let g = |k: &str, vs: &[i64]| p(s(k), l(ints(vs)));
    assert_unordered(
        out,
        every_second(vec![
            vec![g("a", &[1])],
            vec![g("a", &[1, 2]), g("b", &[3])],
            vec![g("a", &[2]), g("b", &[3, 4])],
            vec![g("b", &[4])],
        ]),
    );
}

#[test]
fn count_by_value_and_window() {
    let input = vec![strs(&["x", "y", "x"]), strs(&["x"]), strs(&["z"]), vec![], vec![]];
    let out = run1(input.clone(), |_, src| src.count_by_value_and_window(secs(2), secs(1)));
    assert_unordered(
        out,
        every_second(vec![
            kvs(&[("x", 2), ("y", 1)]),
            kvs(&[("x", 3), ("y", 1)]),
            kvs(&[("x", 1), ("z", 1)]),
            kvs(&[("z", 1)]),
            vec![],
        ]),
    );

    let out = run1(input, |_, src| src.count_by_value_and_window(secs(4), secs(2)));
    assert_unordered(out, vec![(2000, kvs(&[("x", 3), ("y", 1)])), (4000, kvs(&[("x", 3), ("y", 1), ("z", 1)]))]);
}

// ---------------------------------------------------------------- determinism

/// A job with every kind of shuffle, and its outputs in the order produced.
fn shuffle_job(threads: usize) -> Vec<Batches> {
    let input = vec![
        kss(&[("k", "a"), ("k", "b"), ("j", "x"), ("k", "c"), ("k", "d"), ("j", "y")]),
        kss(&[("m", "1"), ("k", "e"), ("m", "2"), ("n", "3"), ("m", "4")]),
        vec![],
        kss(&[("k", "f"), ("j", "z")]),
    ];
    let other = vec![kss(&[("j", "J"), ("k", "K1"), ("q", "Q"), ("k", "K2")]), vec![], kss(&[("z", "Z")]), vec![]];
    let ssc = ctx();
    let t = testops(&ssc);
    let concat = t.udf("concat");
    let src = ssc.queue_stream(input);
    let right = ssc.queue_stream(other);
    let outs = vec![
        src.reduce_by_key(&concat).unwrap(),
        src.group_by_key().unwrap(),
        src.count_by_value().unwrap(),
        src.reduce_by_key_and_window(&concat, secs(2), secs(1)).unwrap(),
        src.group_by_key_and_window(secs(3), secs(1)).unwrap(),
        src.full_outer_join(&right).unwrap(),
        src.cogroup(&right).unwrap(),
        src.repartition(3).unwrap().glom().unwrap(),
        // Everything in one reduce partition.
        src.map_values(&t.udf("upper")).unwrap().reduce_by_key_into(&concat, Some(1)).unwrap(),
    ];
    let collected: Vec<_> = outs.iter().map(|o| o.collect().unwrap()).collect();
    run_ok(ssc, opts(threads));
    collected.iter().map(taken).collect()
}

#[test]
fn output_order_is_deterministic() {
    let first = shuffle_job(2);
    assert_eq!(first, shuffle_job(2), "two runs on local[2] differ");
    assert_eq!(first, shuffle_job(1), "local[1] and local[2] differ");
    assert_eq!(first, shuffle_job(4), "local[4] and local[2] differ");

    // The reduce side merges in map-partition order, whatever task finished
    // first: "ab" (map partition 0) + "cd" (map partition 1) = "abcd", and
    // group values arrive in record order.
    let rbk = &first[0];
    assert_eq!(rbk[0].0, 1000);
    assert_eq!(sorted(rbk[0].1.clone()), sorted(kss(&[("k", "abcd"), ("j", "xy")])));
    assert_eq!(sorted(rbk[1].1.clone()), sorted(kss(&[("m", "124"), ("k", "e"), ("n", "3")])));
    let gbk = &first[1];
    assert!(gbk[0].1.contains(&p(s("k"), l(strs(&["a", "b", "c", "d"])))), "{:?}", gbk[0]);
    assert!(gbk[0].1.contains(&p(s("j"), l(strs(&["x", "y"])))), "{:?}", gbk[0]);
    // Windows fold batches in time order.
    let rbkw = &first[3];
    assert!(rbkw[1].1.contains(&p(s("k"), s("abcde"))), "{:?}", rbkw[1]);
    assert!(rbkw[3].1.contains(&p(s("k"), s("f"))), "{:?}", rbkw[3]);
    let gbkw = &first[4];
    assert!(gbkw[3].1.contains(&p(s("k"), l(strs(&["e", "f"])))), "{:?}", gbkw[3]);
    // Everything in one reduce partition: keys in first-seen order.
    assert_eq!(first[8][0].1, kss(&[("k", "ABCD"), ("j", "XY")]));
    assert_eq!(first[8][1].1, kss(&[("m", "124"), ("k", "E"), ("n", "3")]));
}

// ---------------------------------------------------------------- recomputation

fn hook(f: impl FnMut(&mut DagScheduler, i64, &[Option<RddId>]) + Send + 'static) -> AfterBatch {
    Arc::new(Mutex::new(f))
}

/// Drops `victims` from the block store, recomputes `rdd` from lineage, and
/// checks the result, the recomputation count and every dropped block's digest.
fn drop_and_recompute(dag: &mut DagScheduler, rdd: RddId, victims: &[BlockId]) -> Vec<Vec<u8>> {
    assert!(!victims.is_empty(), "nothing to drop");
    let original = dag.run_job(rdd).expect("run_job before dropping");
    let store: Arc<BlockStore> = dag.backend().blocks().clone();
    let digests: Vec<u128> =
        victims.iter().map(|b| dag.digest_of(b).unwrap_or_else(|| panic!("no digest for {b}"))).collect();
    let dropped = store.remove_where(|b| victims.contains(b));
    let mut want = victims.to_vec();
    want.sort();
    assert_eq!(dropped, want, "dropped exactly the victims");
    let before = dag.metrics.clone();
    let again = dag.run_job(rdd).unwrap_or_else(|e| panic!("recomputing {rdd}: {e}"));
    assert_eq!(again, original, "recomputed {rdd} differs from the original");
    assert_eq!(
        dag.metrics.blocks_recomputed - before.blocks_recomputed,
        victims.len() as u64,
        "blocks recomputed for {rdd} after dropping {victims:?}"
    );
    assert!(
        dag.metrics.fetch_failures > before.fetch_failures || victims.iter().all(|b| matches!(b, BlockId::Rdd { .. }))
    );
    for (b, d) in victims.iter().zip(digests) {
        assert_eq!(dag.digest_of(b), Some(d), "digest of {b} changed");
        let block = store.get(b).unwrap_or_else(|| panic!("{b} was not recomputed"));
        assert_eq!(weir::rdd::digest(&block), d, "bytes of {b} differ");
    }
    again
}

#[test]
fn a_python_components_parameters_reach_each_use_of_its_function() {
    // `map(py.plus(4)).map(py.plus(n = 100))` over a component exporting
    // weir:udf/params: each use gets its own instance with its own values.
    let ssc = ctx();
    let py = load(&ssc, concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/params_py.wasm"));
    let p4 = py.udf("plus").with_params(weir::rdd::UdfParams::new(vec![i(4)], vec![]).unwrap());
    let p100 = py.udf("plus").with_params(weir::rdd::UdfParams::new(vec![], vec![("n".into(), i(100))]).unwrap());
    let out = ssc.queue_stream(vec![ints(&[1, 2, 3]), ints(&[10])]).map(&p4).unwrap().map(&p100).unwrap();
    let c = out.collect().unwrap();
    run_ok(ssc, opts(2));
    assert_eq!(taken(&c), every_second(vec![ints(&[105, 106, 107]), ints(&[114])]));
}

#[test]
fn the_batch_time_and_parameters_recompute_to_identical_blocks() {
    // update_state_by_key's function gets the batch time (its state lists
    // the batches that brought values) after a map_values with a
    // parameter. Dropping the state blocks of batches 2000 and 3000 makes
    // the task of 3000 recompute 2000's state too: that function must see
    // 2000, or the recomputed bytes differ.
    let tmp = tempfile::tempdir().unwrap();
    let ssc = ctx();
    let t = testops(&ssc);
    let plus = t.udf("plus").with_params(weir::rdd::UdfParams::new(vec![i(1)], vec![]).unwrap());
    let input = vec![kvs(&[("a", 1), ("b", 2)]), kvs(&[("a", 3)]), kvs(&[("c", 4)])];
    let state =
        ssc.queue_stream(input).map_values(&plus).unwrap().update_state_by_key(&t.udf("sum_with_times")).unwrap();
    let node = state.node();
    let c = state.collect().unwrap();
    let recomputed: Arc<Mutex<Batches>> = Arc::default();
    let r2 = recomputed.clone();
    let mut o = opts(2);
    o.checkpoint = Some(weir::scheduler::CheckpointOptions::new(tmp.path()));
    o.after_batch = Some(hook(move |dag, time, outs| {
        if time != 3000 {
            return;
        }
        let rdd = outs[0].expect("the state every batch");
        assert_eq!(rdd.node, node);
        let victims: Vec<BlockId> = dag
            .backend()
            .blocks()
            .ids()
            .into_iter()
            .filter(|b| matches!(b, BlockId::Rdd { rdd: r, .. } if r.node == node && r.time >= 2000))
            .collect();
        assert!(victims.iter().any(|b| matches!(b, BlockId::Rdd { rdd: r, .. } if r.time == 2000)), "{victims:?}");
        let again = drop_and_recompute(dag, rdd, &victims);
        r2.lock().unwrap().push((time, decode(&again)));
    }));
    run_ok(ssc, o);
    let collected = taken(&c);
    let at_3000 = collected.iter().find(|(t, _)| *t == 3000).expect("batch 3000").clone();
    assert_eq!(*recomputed.lock().unwrap(), vec![at_3000.clone()], "recomputed state equals the batch's");
    let times = |xs: &[i64]| Value::List(xs.iter().map(|&x| i(x)).collect());
    let st = |sum: i64, ts: &[i64]| Value::Tuple(vec![i(sum), times(ts)]);
    assert_unordered(
        vec![at_3000],
        vec![(3000, vec![p(s("a"), st(6, &[1000, 2000])), p(s("b"), st(3, &[1000])), p(s("c"), st(5, &[3000]))])],
    );
}

fn decode(parts: &[Vec<u8>]) -> Vec<Value> {
    parts.iter().flat_map(|p| Value::decode_batch(p).unwrap()).collect()
}

#[test]
fn lost_shuffle_buckets_are_recomputed_from_lineage() {
    let ssc = ctx();
    let wc = wordcount(&ssc);
    let lines = vec![strs(&["a b a", "c a b", "b b d", "a e"]), strs(&["x y", "y x z"]), strs(&["q"])];
    let counts = ssc
        .queue_stream(lines)
        .flat_map(&wc.udf("split"))
        .unwrap()
        .map(&wc.udf("pair"))
        .unwrap()
        .reduce_by_key(&wc.udf("sum"))
        .unwrap();
    let c = counts.collect().unwrap();
    let recomputed: Arc<Mutex<Batches>> = Arc::default();
    let r2 = recomputed.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        let rdd = outs[0].expect("reduce_by_key produces every batch");
        // All shuffle buckets written by map partition 0.
        let victims: Vec<BlockId> = dag
            .backend()
            .blocks()
            .ids()
            .into_iter()
            .filter(|b| matches!(b, BlockId::Shuffle { shuffle, map: 0, .. } if *shuffle == rdd))
            .collect();
        assert_eq!(victims.len(), 2, "one bucket per reduce partition: {victims:?}");
        let maps_before = dag.metrics.map_tasks_recomputed;
        let again = drop_and_recompute(dag, rdd, &victims);
        assert_eq!(dag.metrics.map_tasks_recomputed - maps_before, 1, "only map partition 0 runs again");
        r2.lock().unwrap().push((time, decode(&again)));
    }));
    let report = run_ok(ssc, o);
    let collected = taken(&c);
    assert_eq!(collected.len(), 3);
    assert_eq!(*recomputed.lock().unwrap(), collected, "recomputed results equal the batches' outputs");
    assert_unordered(
        collected,
        every_second(vec![
            kvs(&[("a", 4), ("b", 4), ("c", 1), ("d", 1), ("e", 1)]),
            kvs(&[("x", 2), ("y", 2), ("z", 1)]),
            kvs(&[("q", 1)]),
        ]),
    );
    assert_eq!(report.metrics.blocks_recomputed, 6);
    assert_eq!(report.metrics.task_failures, 0);
}

#[test]
fn lost_window_blocks_are_recomputed_from_lineage() {
    let ssc = ctx();
    let wc = wordcount(&ssc);
    let input = vec![
        kvs(&[("a", 1), ("b", 1), ("c", 1), ("a", 1)]),
        kvs(&[("a", 2), ("d", 2), ("b", 2)]),
        kvs(&[("c", 3), ("a", 3), ("e", 3), ("f", 3)]),
        kvs(&[("b", 4)]),
    ];
    let per_batch = ssc.queue_stream(input).reduce_by_key(&wc.udf("sum")).unwrap();
    let windowed = per_batch.window(secs(3), secs(1)).unwrap().reduce_by_key(&wc.udf("sum")).unwrap();
    let (inner, outer) = (per_batch.node(), windowed.node());
    let c = windowed.collect().unwrap();
    let checked = Arc::new(Mutex::new(Vec::new()));
    let ch = checked.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        if time != 3000 {
            return;
        }
        let rdd = outs[0].expect("window every second");
        assert_eq!(rdd.node, outer);
        let early = RddId { time: 1000, node: inner };
        // The window's union: which of the outer shuffle's map partitions
        // read the reduce_by_key RDD of batch 1000.
        let RddOp::Shuffled { parents, .. } = &dag.lineage.get(rdd).unwrap().op else { panic!("not a shuffle") };
        let RddOp::Union { parents: window } = &dag.lineage.get(parents[0]).unwrap().op else { panic!("not a union") };
        assert_eq!(window.iter().map(|r| r.time).collect::<Vec<_>>(), vec![1000, 2000, 3000]);
        assert_eq!(window[0], early);
        let early_parts = dag.lineage.get(early).unwrap().partitions;
        let store = dag.backend().blocks().clone();
        assert!(store.contains(&BlockId::Rdd { rdd: early, partition: 0 }), "the window's parent is persisted");

        // 1. The persisted partitions of the parent at 1000, and the outer
        //    shuffle's buckets of the map partitions that read them.
        let victims: Vec<BlockId> = store
            .ids()
            .into_iter()
            .filter(|b| match b {
                BlockId::Rdd { rdd: r, .. } => *r == early,
                BlockId::Shuffle { shuffle, map, .. } => *shuffle == rdd && *map < early_parts,
            })
            .collect();
        assert_eq!(victims.len() as u32, early_parts + 2 * early_parts, "{victims:?}");
        let first = drop_and_recompute(dag, rdd, &victims);

        // 2. Deeper: also every bucket that map partition 0 of the parent's
        //    own shuffle wrote (both of its partitions read one of them).
        let victims: Vec<BlockId> = store
            .ids()
            .into_iter()
            .filter(|b| match b {
                BlockId::Rdd { rdd: r, .. } => *r == early,
                BlockId::Shuffle { shuffle, map, .. } if *shuffle == early => *map == 0,
                BlockId::Shuffle { shuffle, map, .. } => *shuffle == rdd && *map < early_parts,
            })
            .collect();
        assert_eq!(victims.len() as u32, early_parts + 2 + 2 * early_parts, "{victims:?}");
        let second = drop_and_recompute(dag, rdd, &victims);
        assert_eq!(first, second);
        ch.lock().unwrap().push((time, decode(&second)));
    }));
    run_ok(ssc, o);
    let collected = taken(&c);
    let checked = checked.lock().unwrap().clone();
    assert_eq!(checked.len(), 1, "the hook ran its checks at 3000");
    assert_eq!(checked[0], collected[2]);
    assert_unordered(
        collected,
        every_second(vec![
            kvs(&[("a", 2), ("b", 1), ("c", 1)]),
            kvs(&[("a", 4), ("b", 3), ("c", 1), ("d", 2)]),
            kvs(&[("a", 7), ("b", 3), ("c", 4), ("d", 2), ("e", 3), ("f", 3)]),
            kvs(&[("a", 5), ("b", 6), ("c", 3), ("d", 2), ("e", 3), ("f", 3)]),
        ]),
    );
}

#[test]
fn losing_every_map_output_of_a_wide_shuffle_is_recoverable() {
    // A window over 12 batches of 2 partitions: 24 map partitions, all lost.
    let ssc = ctx();
    let input: Vec<Vec<Value>> = (0..12).map(|k| kvs(&[("a", k), ("b", 1), ("c", k), ("d", 2)])).collect();
    let out = ssc.queue_stream(input).group_by_key_and_window(secs(12), secs(12)).unwrap();
    let c = out.collect().unwrap();
    let ran = Arc::new(Mutex::new(false));
    let r = ran.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        let Some(rdd) = outs[0] else { return };
        assert_eq!(time, 12000);
        let victims: Vec<BlockId> = dag
            .backend()
            .blocks()
            .ids()
            .into_iter()
            .filter(|b| matches!(b, BlockId::Shuffle { shuffle, .. } if *shuffle == rdd))
            .collect();
        assert_eq!(victims.len(), 24 * 2);
        drop_and_recompute(dag, rdd, &victims);
        *r.lock().unwrap() = true;
    }));
    run_ok(ssc, o);
    assert!(*ran.lock().unwrap());
    let got = taken(&c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.len(), 4);
}

#[test]
fn a_lost_input_block_fails_the_job_without_retries() {
    let ssc = ctx();
    let t = testops(&ssc);
    let out = ssc.queue_stream(vec![ints(&[1, 2, 3])]).map(&t.udf("double")).unwrap();
    let c = out.collect().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, _, outs| {
        let rdd = outs[0].unwrap();
        let failures = dag.metrics.task_failures;
        let gone = dag
            .backend()
            .blocks()
            .remove_where(|b| matches!(b, BlockId::Rdd { rdd: r, partition: 0 } if r.time == rdd.time));
        assert_eq!(gone.len(), 1, "{gone:?}");
        let err = dag.run_job(rdd).expect_err("an input block cannot be recomputed");
        *s2.lock().unwrap() = Some((err.to_string(), dag.metrics.task_failures - failures));
    }));
    run_ok(ssc, o);
    assert_eq!(taken(&c), every_second(vec![ints(&[2, 4, 6])]));
    let (msg, failures) = seen.lock().unwrap().clone().expect("hook ran");
    assert!(msg.contains("not recoverable from lineage"), "{msg}");
    assert_eq!(failures, 1, "an input loss is not retried: {msg}");
}

// ---------------------------------------------------------------- failures

#[test]
fn a_udf_failure_fails_only_its_batch() {
    let ssc = ctx();
    let t = testops(&ssc);
    let src = ssc.queue_stream(vec![strs(&["a", "b"]), strs(&["x", "boom"]), strs(&["c"]), vec![]]);
    let c = src.map(&t.udf("fail_on_boom")).unwrap().collect().unwrap();
    let report = ssc.run(opts(2)).expect("the run itself succeeds");
    assert_eq!(report.batches.len(), 4);
    let failed: Vec<i64> = report.failed_batches().map(|b| b.time).collect();
    assert_eq!(failed, vec![2000]);
    let err = report.batches[1].errors.join("\n");
    for needle in ["testops.wasm", "fail_on_boom", "batch 2000 ms", "refusing to process record", "1 time(s)"] {
        assert!(err.contains(needle), "error should mention {needle:?}: {err}");
    }
    // Only the partition holding "boom" failed, once: an error the guest
    // reports is deterministic, so it is not retried.
    assert_eq!(report.metrics.task_failures, 1);
    // A guest's own error is a failed call, not a trap.
    let usage = &report.batches[1].udf_usage;
    assert_eq!(
        usage.iter().map(|u| (u.module.as_str(), u.failures, u.traps)).collect::<Vec<_>>(),
        [("testops.wasm", 1, 0)]
    );
    // Both partitions' tasks are listed, with the shortest, median and
    // longest task time.
    let stage = &report.batches[1].outputs[0].stages[0];
    let parts: Vec<(u32, u32, bool)> =
        stage.task_list.iter().map(|t| (t.partition, t.attempt, t.failure.is_some())).collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts.iter().filter(|p| p.2).count(), 1, "{parts:?}");
    let [lo, mid, hi] = stage.task_times.expect("task times");
    assert!(lo <= mid && mid <= hi, "{lo:?} {mid:?} {hi:?}");
    assert_eq!(taken(&c), vec![(1000, strs(&["a", "b"])), (3000, strs(&["c"])), (4000, vec![])]);
}

#[test]
fn a_udf_failure_in_a_shuffle_map_stage_fails_only_its_batch() {
    let ssc = ctx();
    let t = testops(&ssc);
    let src = ssc.queue_stream(vec![strs(&["a", "a"]), strs(&["boom", "b"]), strs(&["b", "c", "b"])]);
    let checked = src.map(&t.udf("fail_on_boom")).unwrap();
    let counts = checked.count_by_value().unwrap().collect().unwrap();
    // A second output of the same batch, without the failing UDF, succeeds.
    let total = src.count().unwrap().collect().unwrap();
    let report = ssc.run(opts(2)).unwrap();
    let errs: Vec<(i64, usize)> = report.batches.iter().map(|b| (b.time, b.errors.len())).collect();
    assert_eq!(errs, vec![(1000, 0), (2000, 1), (3000, 0)]);
    assert!(report.batches[1].errors[0].contains("fail_on_boom"), "{:?}", report.batches[1].errors);
    // Deterministic: attempted once, not retried.
    assert_eq!(report.metrics.task_failures, 1);
    assert_unordered(taken(&counts), vec![(1000, kvs(&[("a", 2)])), (3000, kvs(&[("b", 2), ("c", 1)]))]);
    assert_eq!(taken(&total), every_second(vec![ints(&[2]), ints(&[2]), ints(&[3])]));
}

#[test]
fn a_trapping_udf_is_attempted_once() {
    let ssc = ctx();
    let t = testops(&ssc);
    let src = ssc.queue_stream(vec![strs(&["a"]), strs(&["panic", "b"]), strs(&["c"])]);
    let c = src.map(&t.udf("panic_on_panic")).unwrap().collect().unwrap();
    let report = ssc.run(opts(2)).expect("the run itself succeeds");
    let failed: Vec<i64> = report.failed_batches().map(|b| b.time).collect();
    assert_eq!(failed, vec![2000]);
    let err = report.batches[1].errors.join("\n");
    for needle in ["panic_on_panic", "trapped", "asked to panic", "1 time(s)"] {
        assert!(err.contains(needle), "error should mention {needle:?}: {err}");
    }
    // A trap fails the same way on a fresh instance: retrying cannot help.
    assert_eq!(report.metrics.task_failures, 1);
    assert_eq!(taken(&c), vec![(1000, strs(&["a"])), (3000, strs(&["c"]))]);
    // The module's figures count the call as a failure and a trap.
    let usage = &report.batches[1].udf_usage;
    assert_eq!(
        usage.iter().map(|u| (u.module.as_str(), u.failures, u.traps)).collect::<Vec<_>>(),
        [("testops.wasm", 1, 1)]
    );
    // The stage lists its task attempts: the failed one with its failure.
    let tasks: Vec<_> = report.batches[1].outputs.iter().flat_map(|o| &o.stages).flat_map(|s| &s.task_list).collect();
    let failed: Vec<_> = tasks.iter().filter(|t| t.failure.is_some()).collect();
    assert_eq!(failed.len(), 1, "{tasks:?}");
    assert_eq!(failed[0].attempt, 0);
    assert!(failed[0].failure.as_deref().unwrap().contains("asked to panic"), "{failed:?}");
}

/// A panic inside a task (here injected by a test hook when a narrow
/// operation sees one record) fails that task with the panic's message,
/// like an engine fault (retried, then the batch fails), and never hangs
/// the job: the worker thread lives on to run later batches.
#[cfg(feature = "test-hooks")]
#[test]
fn a_panic_in_a_task_fails_its_batch_with_the_message_and_later_batches_run() {
    // A record no other test uses: the hook is process-global.
    let poison = s("operations.rs: panic on this record");
    let _hook = weir::executor::test_hooks::panic_on_record(&poison);
    // Without the guard a panicking worker never reports its task and the
    // scheduler waits forever: bound the wait so that fails, not hangs.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ssc = ctx();
        let t = testops(&ssc);
        let src = ssc.queue_stream(vec![strs(&["a"]), vec![s("x"), poison], strs(&["c"]), strs(&["d"])]);
        let c = src.map(&t.udf("fail_on_boom")).unwrap().collect().unwrap();
        let _ = tx.send((ssc.run(opts(1)), c));
    });
    let (report, c) = rx.recv_timeout(Duration::from_secs(120)).expect("the job hung");
    let report = report.expect("the run itself succeeds");
    let failed: Vec<i64> = report.failed_batches().map(|b| b.time).collect();
    assert_eq!(failed, vec![2000]);
    let err = report.batches[1].errors.join("\n");
    for needle in ["task panicked", "a narrow operation saw the record", "panic on this record", "batch 2000 ms"] {
        assert!(err.contains(needle), "error should mention {needle:?}: {err}");
    }
    // An engine fault is transient: retried up to spark.task.maxFailures.
    assert!(err.contains("4 time(s)"), "{err}");
    assert_eq!(report.metrics.task_failures, 4);
    // One worker thread (local[1]) ran every later batch.
    assert_eq!(taken(&c), vec![(1000, strs(&["a"])), (3000, strs(&["c"])), (4000, strs(&["d"]))]);
}

#[test]
fn a_job_without_outputs_is_refused() {
    let ssc = ctx();
    let _ = ssc.queue_stream(vec![ints(&[1])]).count().unwrap();
    let err = ssc.run(opts(2)).expect_err("no output operation");
    assert!(matches!(err, EngineError::Graph(_)), "{err}");
}

// ---------------------------------------------------------------- large partitions

/// Lines of seeded pseudo-random words (some not ASCII), about `bytes` long.
fn big_lines(bytes: usize, seed: u64) -> Vec<String> {
    let words = ["a", "weir", "stream", "café", "naïve", "batch", "lineage", "x", "zürich", "partition"];
    let mut x = seed;
    let mut out = Vec::new();
    let mut total = 0;
    while total < bytes {
        let mut line = Vec::new();
        for _ in 0..1 + (x >> 60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            line.push(words[(x >> 33) as usize % words.len()]);
        }
        let line = line.join(" ");
        total += line.len() + 5;
        out.push(line);
    }
    out
}

#[test]
fn large_partitions_go_through_the_pipeline_in_chunks_with_the_same_result() {
    // About 1 MB per batch: each partition is cut into many chunks on its
    // way through split -> pair (and filter/map below), which must change
    // nothing: the counts equal a plain count, and record order is kept.
    let lines = big_lines(1 << 20, 7);
    let mut want = std::collections::BTreeMap::<&str, i64>::new();
    for w in lines.iter().flat_map(|l| l.split_ascii_whitespace()) {
        *want.entry(w).or_default() += 1;
    }
    let ssc = ctx();
    let wc = wordcount(&ssc);
    let src = ssc.queue_stream(vec![lines.iter().map(|l| s(l)).collect::<Vec<_>>()]);
    let counts = src.flat_map(&wc.udf("split")).unwrap().map(&wc.udf("pair")).unwrap();
    let c = counts.reduce_by_key(&wc.udf("sum")).unwrap().collect().unwrap();
    let report = run_ok(ssc, opts(2));
    let want: Vec<Value> = want.iter().map(|(k, n)| p(s(k), i(*n))).collect();
    assert_unordered(taken(&c), every_second(vec![want]));
    // Whole partitions would make 2 chained calls of 2 steps (plus at most 4
    // sum calls); 512 KiB partitions in 64 KiB chunks make at least 8 each.
    assert!(report.metrics.udf_calls >= 2 * 8 * 2, "not chunked: {} UDF calls", report.metrics.udf_calls);

    // Order within the batch is kept exactly: filter then map over 200 000
    // integers (1.8 MB), compared with the same done natively.
    let xs: Vec<i64> = (0..200_000).map(|k| (k * 7919) % 100_003 - 50_000).collect();
    let out = run1(vec![ints(&xs)], |ssc, src| {
        let t = testops(ssc);
        src.filter(&t.udf("is_even"))?.map(&t.udf("double"))
    });
    let want: Vec<i64> = xs.iter().filter(|x| *x % 2 == 0).map(|x| x * 2).collect();
    assert_eq!(out, every_second(vec![ints(&want)]));
}

#[test]
fn map_partitions_sees_a_large_partition_whole() {
    // map_partitions is never cut into chunks: one [count, sum] per partition
    // (2 partitions), however large.
    let xs: Vec<i64> = (0..200_000).collect();
    let out = run1(vec![ints(&xs)], |ssc, src| src.map_partitions(&testops(ssc).udf("count_and_sum")));
    let (a, b) = xs.split_at(100_000);
    let want = ints(&[a.len() as i64, a.iter().sum(), b.len() as i64, b.iter().sum()]);
    assert_eq!(out, every_second(vec![want]));
}

// ---------------------------------------------------------------- RDD operations (issue 12)
//
// The operations Spark users reach for through `transform(rdd => ...)`,
// directly on DStreams. Expected outputs follow Spark's RDD suites
// (SortingSuite, RDDSuite, PairRDDFunctionsSuite), per batch.

#[test]
fn sort_by_key() {
    // Spark's SortingSuite: sortByKey ascending and descending. Keys compare
    // as decoded values: -1 < 2 < 10 (their encodings would not), and
    // equal keys keep their order in the batch (partitions in order).
    let input = vec![
        vec![p(i(10), s("x")), p(i(-1), s("y")), p(i(2), s("z")), p(i(-1), s("w"))],
        kvs(&[("b", 2), ("a", 1), ("c", 3), ("a", 0)]),
        vec![],
    ];
    let out = run1(input.clone(), |_, src| src.sort_by_key(true));
    assert_eq!(
        out,
        every_second(vec![
            vec![p(i(-1), s("y")), p(i(-1), s("w")), p(i(2), s("z")), p(i(10), s("x"))],
            kvs(&[("a", 1), ("a", 0), ("b", 2), ("c", 3)]),
            vec![],
        ])
    );
    let out = run1(input, |_, src| src.sort_by_key(false));
    assert_eq!(
        out,
        every_second(vec![
            vec![p(i(10), s("x")), p(i(2), s("z")), p(i(-1), s("y")), p(i(-1), s("w"))],
            kvs(&[("c", 3), ("b", 2), ("a", 1), ("a", 0)]),
            vec![],
        ])
    );
    // `parallelism` (2) partitions by range, whatever the input's; the
    // partitions in order are the sorted batch.
    let out = run1(vec![kvs(&[("b", 1), ("a", 2), ("d", 3), ("c", 4), ("e", 5), ("f", 6)])], |_, src| {
        src.repartition(3)?.sort_by_key(true)?.glom()
    });
    assert_eq!(
        out,
        every_second(vec![vec![l(kvs(&[("a", 2), ("b", 1), ("c", 4)])), l(kvs(&[("d", 3), ("e", 5), ("f", 6)]))]])
    );
    // Records that are not pairs fail the batch, not the job.
    let ssc = ctx();
    let c = ssc.queue_stream(vec![ints(&[1]), kvs(&[("a", 1)])]).sort_by_key(true).unwrap();
    let c = c.collect().unwrap();
    let report = ssc.run(opts(2)).expect("run");
    assert_eq!(report.failed_batches().map(|b| b.time).collect::<Vec<_>>(), vec![1000]);
    assert_eq!(taken(&c), vec![(2000, kvs(&[("a", 1)]))]);
}

/// The partitions of one batch sorted by `sort_by_key_into(ascending, n)`
/// (a glom), with the input cut into `input_partitions` by `repartition`.
fn sorted_partitions(input: Vec<Value>, input_partitions: Option<u32>, ascending: bool, n: u32) -> Vec<Vec<Value>> {
    let out = run1(vec![input], |_, src| {
        let src = match input_partitions {
            Some(k) => src.repartition(k)?,
            None => src.clone(),
        };
        src.sort_by_key_into(ascending, Some(n))?.glom()
    });
    assert_eq!(out.len(), 1, "one batch");
    let parts: Vec<Vec<Value>> = out[0]
        .1
        .iter()
        .map(|g| match g {
            Value::List(xs) => xs.clone(),
            other => panic!("glom gave {other:?}"),
        })
        .collect();
    assert_eq!(parts.len(), n as usize, "the sorted RDD has the {n} partitions asked for");
    parts
}

fn key_of(v: &Value) -> i64 {
    match v {
        Value::Tuple(kv) => match kv.first() {
            Some(Value::I64(k)) => *k,
            other => panic!("key {other:?}"),
        },
        other => panic!("not a pair: {other:?}"),
    }
}

#[test]
fn sort_by_key_partitions_by_range_as_sparks_sorting_suite() {
    // SortingSuite "large array with many partitions" / "partition
    // balancing" / "partition balancing for descending sort": 1000 distinct
    // keys, shuffled, sorted into 4 partitions: the concatenation is the
    // sorted array, each partition holds a range (its last key before the
    // next one's first) and none is far from a quarter.
    let pairs: Vec<Value> = (0..1000i64).map(|x| p(i((x * 7919) % 1000), i(x))).collect();
    let mut want = pairs.clone();
    want.sort_by_key(key_of);
    for ascending in [true, false] {
        let parts = sorted_partitions(pairs.clone(), Some(5), ascending, 4);
        let all: Vec<Value> = parts.concat();
        let mut expected = want.clone();
        if !ascending {
            expected.reverse();
        }
        assert_eq!(all, expected, "ascending {ascending}");
        for w in parts.windows(2) {
            let (a, b) = (key_of(w[0].last().unwrap()), key_of(w[1].first().unwrap()));
            assert!(if ascending { a < b } else { a > b }, "ranges out of order: {a} then {b}");
        }
        let sizes: Vec<usize> = parts.iter().map(|x| x.len()).collect();
        assert!(sizes.iter().all(|&n| n > 100 && n < 400), "unbalanced: {sizes:?}");
    }
    // The same batch sorted again (another run) is cut at the same bounds.
    assert_eq!(sorted_partitions(pairs.clone(), Some(5), true, 4), sorted_partitions(pairs, Some(5), true, 4));

    // "more partitions than elements": 2 elements into 30 partitions; the
    // ranges beyond the keys stay empty (Spark's RDD would have fewer).
    let parts = sorted_partitions(vec![p(i(2), s("b")), p(i(1), s("a"))], None, true, 30);
    assert_eq!(parts.concat(), vec![p(i(1), s("a")), p(i(2), s("b"))]);
    assert_eq!(parts.iter().filter(|x| !x.is_empty()).count(), 2);
    // "empty RDD".
    assert!(sorted_partitions(vec![], None, false, 3).iter().all(|x| x.is_empty()));

    // Skewed: every key equal. One partition gets them all, in their order
    // in the batch (partitions in order), ascending or descending.
    let same: Vec<Value> = (0..300).map(|x| p(i(7), i(x))).collect();
    for ascending in [true, false] {
        let parts = sorted_partitions(same.clone(), None, ascending, 4);
        assert_eq!(parts.iter().filter(|x| !x.is_empty()).count(), 1, "{parts:?}");
        assert_eq!(parts.concat(), same);
    }

    // Fewer distinct keys than partitions, with ties: a stable sort, as the
    // one-partition sort gives (equal keys keep their order in the batch).
    let few: Vec<Value> = (0..60i64).map(|x| p(i((x * 7) % 3 - 1), i(x))).collect();
    let mut stable = few.clone();
    stable.sort_by_key(key_of);
    let one = sorted_partitions(few.clone(), None, true, 1);
    assert_eq!(one.concat(), stable);
    let parts = sorted_partitions(few.clone(), None, true, 8);
    assert_eq!(parts.concat(), stable);
    assert!(parts.iter().filter(|x| !x.is_empty()).count() <= 3);
    let mut desc = few.clone();
    desc.sort_by_key(|v| std::cmp::Reverse(key_of(v)));
    assert_eq!(sorted_partitions(few, None, false, 8).concat(), desc);
}

#[test]
fn sort_by() {
    let input = vec![strs(&["banana", "apple", "cherry", "avocado"])];
    let out = run1(input.clone(), |ssc, src| src.sort_by(&testops(ssc).udf("first_char"), true));
    assert_eq!(out, every_second(vec![strs(&["apple", "avocado", "banana", "cherry"])]));
    let out = run1(input, |ssc, src| src.sort_by(&testops(ssc).udf("first_char"), false));
    assert_eq!(out, every_second(vec![strs(&["cherry", "banana", "apple", "avocado"])]));
}

#[test]
fn distinct() {
    // RDDSuite: parallelize(1, 2, 3, 4, 2, 3).distinct() == {1, 2, 3, 4}.
    let out = run1(vec![ints(&[1, 2, 3, 4, 2, 3]), strs(&["a", "a", "a"]), vec![]], |_, src| src.distinct());
    assert_unordered(out.clone(), every_second(vec![ints(&[1, 2, 3, 4]), strs(&["a"]), vec![]]));
    // The order (by reduce partition, keys first-seen within one) is the
    // same every run, on any number of threads.
    assert_eq!(
        run1_on(1, vec![ints(&[1, 2, 3, 4, 2, 3]), strs(&["a", "a", "a"]), vec![]], |_, src| src.distinct()),
        out
    );
    let out = run1(vec![vec![p(s("k"), i(1)), p(s("k"), i(1)), p(s("k"), i(2))]], |_, src| src.distinct_into(Some(3)));
    assert_unordered(out, every_second(vec![vec![p(s("k"), i(1)), p(s("k"), i(2))]]));
}

#[test]
fn subtract() {
    // PairRDDFunctionsSuite "subtract": (1, 2, 3) - (2, 3, 4) == (1); the
    // left's duplicates are kept.
    let out = run2(
        vec![ints(&[1, 2, 3]), ints(&[1, 1, 2, 3, 3]), vec![], ints(&[5])],
        vec![ints(&[2, 3, 4]), ints(&[3]), ints(&[1]), vec![]],
        |_, a, b| a.subtract(b),
    );
    assert_unordered(out, every_second(vec![ints(&[1]), ints(&[1, 1, 2]), vec![], ints(&[5])]));
}

#[test]
fn intersection() {
    // RDDSuite: "intersection" and "intersection strips duplicates in an input".
    let out = run2(
        vec![ints(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), ints(&[1, 2, 3, 3]), ints(&[1])],
        vec![ints(&[2, 4, 6, 8, 10]), ints(&[1, 1, 2, 3]), vec![]],
        |_, a, b| a.intersection(b),
    );
    assert_unordered(out, every_second(vec![ints(&[2, 4, 6, 8, 10]), ints(&[1, 2, 3]), vec![]]));
}

#[test]
fn sample() {
    let batch: Vec<Value> = (0..1000).map(i).collect();
    let input = vec![batch.clone(), batch.clone()];
    let all = run1(input.clone(), |_, src| src.sample(1.0, 7));
    assert_eq!(all, every_second(vec![batch.clone(), batch.clone()]));
    let none = run1(input.clone(), |_, src| src.sample(0.0, 7));
    assert_eq!(none, every_second(vec![vec![], vec![]]));
    let half = run1(input.clone(), |_, src| src.sample(0.3, 7));
    for (_, kept) in &half {
        assert!((230..=370).contains(&kept.len()), "sample(0.3) of 1000 kept {}", kept.len());
        // A subsequence: order kept, nothing made up.
        let mut rest = batch.iter();
        assert!(kept.iter().all(|k| rest.any(|x| x == k)));
    }
    // Seeded: the same every run and on any number of threads...
    assert_eq!(run1_on(1, input.clone(), |_, src| src.sample(0.3, 7)), half);
    // ... but each batch (same records, another time) and each seed samples anew.
    assert_ne!(half[0].1, half[1].1);
    assert_ne!(run1(input, |_, src| src.sample(0.3, 8)), half);
    // Out of range fractions are refused when the job is built.
    let ssc = ctx();
    let src = ssc.queue_stream(vec![]);
    assert!(matches!(src.sample(1.5, 1), Err(EngineError::Graph(_))));
    assert!(matches!(src.sample(f64::NAN, 1), Err(EngineError::Graph(_))));
}

#[test]
fn take_and_top() {
    let input = vec![ints(&[3, 1, 4, 1, 5, 9, 2, 6]), vec![], ints(&[7])];
    // The first n, partitions in order ([3, 1, 4, 1] and [5, 9, 2, 6]).
    let out = run1(input.clone(), |_, src| src.take(5));
    assert_eq!(out, every_second(vec![ints(&[3, 1, 4, 1, 5]), vec![], ints(&[7])]));
    assert_eq!(run1(input.clone(), |_, src| src.take(0)), every_second(vec![vec![], vec![], vec![]]));
    // RDDSuite "top with predefined ordering": greatest first.
    let out = run1(input.clone(), |_, src| src.top(3));
    assert_eq!(out, every_second(vec![ints(&[9, 6, 5]), vec![], ints(&[7])]));
    let out = run1(vec![strs(&["b", "a", "d", "c", "a"])], |_, src| src.top(10));
    assert_eq!(out, every_second(vec![strs(&["d", "c", "b", "a", "a"])]));
    // RDDSuite "top with custom ordering": by f(x), ties in the value order.
    let words = vec![strs(&["banana", "apple", "cherry", "avocado"])];
    let out = run1(words.clone(), |ssc, src| src.top_by(3, &testops(ssc).udf("first_char")));
    assert_eq!(out, every_second(vec![strs(&["cherry", "banana", "avocado"])]));
    let out = run1(words, |ssc, src| src.top_by(10, &testops(ssc).udf("first_char")));
    assert_eq!(out, every_second(vec![strs(&["cherry", "banana", "avocado", "apple"])]));
    let ssc = ctx();
    let src = ssc.queue_stream(vec![]);
    assert!(matches!(src.take(1_000_001), Err(EngineError::Graph(_))));
}

#[test]
fn zip_with_index() {
    // RDDSuite "zipWithIndex": positions over the whole batch, partitions in
    // order, from 0 in every batch.
    let out = run1(vec![strs(&["a", "b", "c", "d", "e"]), strs(&["x"]), vec![]], |_, src| src.zip_with_index());
    assert_eq!(
        out,
        every_second(vec![
            vec![p(s("a"), i(0)), p(s("b"), i(1)), p(s("c"), i(2)), p(s("d"), i(3)), p(s("e"), i(4))],
            vec![p(s("x"), i(0))],
            vec![],
        ])
    );
}

#[test]
fn cartesian() {
    // RDDSuite "cartesian": every pair. Left partition [1] and [2] by right
    // partitions [x, y] and [z]: left-major.
    let out =
        run2(vec![ints(&[1, 2]), ints(&[3]), vec![]], vec![strs(&["x", "y", "z"]), vec![], strs(&["q"])], |_, a, b| {
            a.cartesian(b)
        });
    let pairs = |xs: &[(i64, &str)]| xs.iter().map(|&(a, b)| p(i(a), s(b))).collect::<Vec<_>>();
    assert_eq!(
        out,
        every_second(vec![pairs(&[(1, "x"), (1, "y"), (1, "z"), (2, "x"), (2, "y"), (2, "z")]), vec![], vec![]])
    );
    // With itself, as in Spark.
    let out = run1(vec![ints(&[1, 2])], |_, a| a.cartesian(a));
    assert_eq!(out, every_second(vec![vec![p(i(1), i(1)), p(i(1), i(2)), p(i(2), i(1)), p(i(2), i(2))]]));
}

#[test]
fn coalesce() {
    let mut ssc = ctx();
    ssc.set_parallelism(4).unwrap();
    let src = ssc.queue_stream(vec![ints(&[1, 2, 3, 4, 5, 6, 7, 8])]);
    let two = src.coalesce(2).unwrap().glom().unwrap().collect().unwrap();
    let one = src.coalesce(1).unwrap().glom().unwrap().collect().unwrap();
    let same = src.coalesce(9).unwrap().glom().unwrap().collect().unwrap();
    run_ok(ssc, opts(2));
    // Neighbouring partitions merged in order: [1,2][3,4] and [5,6][7,8].
    assert_eq!(taken(&two), every_second(vec![vec![l(ints(&[1, 2, 3, 4])), l(ints(&[5, 6, 7, 8]))]]));
    assert_eq!(taken(&one), every_second(vec![vec![l(ints(&[1, 2, 3, 4, 5, 6, 7, 8]))]]));
    // More partitions than there are: unchanged (no shuffle).
    assert_eq!(taken(&same).first().map(|(_, v)| v.len()), Some(4));
}

/// Drops every shuffle bucket of `rdd`'s shuffle written by map partition 0
/// and checks that recomputation gives the same bytes.
fn drop_map_zero(dag: &mut DagScheduler, shuffle: RddId, rdd: RddId) -> Vec<Vec<u8>> {
    let victims: Vec<BlockId> = dag
        .backend()
        .blocks()
        .ids()
        .into_iter()
        .filter(|b| matches!(b, BlockId::Shuffle { shuffle: s, map: 0, .. } if *s == shuffle))
        .collect();
    drop_and_recompute(dag, rdd, &victims)
}

#[test]
fn lost_blocks_of_sorted_and_distinct_rdds_are_recomputed_to_the_same_bytes() {
    let ssc = ctx();
    let input = vec![kvs(&[("b", 2), ("a", 1), ("c", 3), ("a", 0), ("b", 5)]), kvs(&[("z", 1), ("y", 2), ("z", 3)])];
    let src = ssc.queue_stream(input);
    let sorted_s = src.sort_by_key(false).unwrap();
    let distinct_s = src.distinct().unwrap();
    let (sort_node, distinct_node) = (sorted_s.node(), distinct_s.node());
    let c1 = sorted_s.collect().unwrap();
    let c2 = distinct_s.collect().unwrap();
    let recomputed: Arc<Mutex<Vec<Batches>>> = Arc::new(Mutex::new(vec![vec![], vec![]]));
    let r2 = recomputed.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        let sorted_rdd = outs[0].expect("sorted every batch");
        assert_eq!(sorted_rdd.node, sort_node);
        let again = drop_map_zero(dag, sorted_rdd, sorted_rdd);
        r2.lock().unwrap()[0].push((time, decode(&again)));
        // distinct: keys(reduce_by_key(...)); its shuffle is the keys' parent.
        let distinct_rdd = outs[1].expect("distinct every batch");
        assert_eq!(distinct_rdd.node, distinct_node);
        let RddOp::Narrow { parent, .. } = dag.lineage.get(distinct_rdd).unwrap().op else { panic!("not keys") };
        let again = drop_map_zero(dag, parent, distinct_rdd);
        r2.lock().unwrap()[1].push((time, decode(&again)));
    }));
    run_ok(ssc, o);
    let rec = recomputed.lock().unwrap().clone();
    assert_eq!(rec[0], taken(&c1));
    assert_eq!(rec[1], taken(&c2));
    assert_eq!(
        taken(&c1),
        every_second(vec![
            kvs(&[("c", 3), ("b", 2), ("b", 5), ("a", 1), ("a", 0)]),
            kvs(&[("z", 1), ("z", 3), ("y", 2)]),
        ])
    );
}

#[test]
fn lost_range_bounds_and_sort_buckets_are_recomputed_to_the_same_bytes() {
    // A sort into 3 partitions by range: dropping every block map partition
    // 0 wrote — its key sample for the bounds and its sorted buckets —
    // recomputes both shuffles; the bounds come out the same, so every
    // bucket has its original digest (drop_and_recompute checks them).
    let ssc = ctx();
    let batch: Vec<Value> = (0..400i64).map(|x| p(i((x * 37) % 101), i(x))).collect();
    let sorted_s = ssc.queue_stream(vec![batch.clone(), batch]).sort_by_key_into(false, Some(3)).unwrap();
    let node = sorted_s.node();
    let c = sorted_s.collect().unwrap();
    let recomputed: Arc<Mutex<Batches>> = Arc::default();
    let r2 = recomputed.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        let rdd = outs[0].expect("sorted every batch");
        assert_eq!(rdd.node, node);
        let RddOp::Shuffled { parents, .. } = dag.lineage.get(rdd).unwrap().op.clone() else { panic!("not a shuffle") };
        let bounds = parents[1];
        let victims: Vec<BlockId> = dag
            .backend()
            .blocks()
            .ids()
            .into_iter()
            .filter(|b| matches!(b, BlockId::Shuffle { shuffle, map: 0, .. } if *shuffle == rdd || *shuffle == bounds))
            .collect();
        // One sample bucket, three sort buckets.
        assert_eq!(victims.len(), 4, "{victims:?}");
        let again = drop_and_recompute(dag, rdd, &victims);
        r2.lock().unwrap().push((time, decode(&again)));
    }));
    run_ok(ssc, o);
    assert_eq!(*recomputed.lock().unwrap(), taken(&c));
    let mut want: Vec<Value> = (0..400i64).map(|x| p(i((x * 37) % 101), i(x))).collect();
    want.sort_by_key(|v| std::cmp::Reverse(key_of(v)));
    assert_eq!(taken(&c), every_second(vec![want.clone(), want]));
}

#[test]
fn lost_blocks_of_a_sampled_rdd_are_recomputed_to_the_same_bytes() {
    let ssc = ctx();
    let batch: Vec<Value> = (0..200).map(i).collect();
    let sampled = ssc.queue_stream(vec![batch.clone(), batch]).sample(0.5, 42).unwrap();
    // A window keeps its parent's partitions as blocks: those are dropped.
    let windowed = sampled.window(secs(1), secs(1)).unwrap();
    let node = sampled.node();
    let c = windowed.collect().unwrap();
    let recomputed: Arc<Mutex<Batches>> = Arc::default();
    let r2 = recomputed.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        let rdd = outs[0].expect("a window every second");
        let sample_rdd = RddId { time, node };
        let victims: Vec<BlockId> = dag
            .backend()
            .blocks()
            .ids()
            .into_iter()
            .filter(|b| matches!(b, BlockId::Rdd { rdd: r, .. } if *r == sample_rdd))
            .collect();
        assert_eq!(victims.len(), 2, "both sampled partitions are blocks: {victims:?}");
        let again = drop_and_recompute(dag, rdd, &victims);
        r2.lock().unwrap().push((time, decode(&again)));
    }));
    run_ok(ssc, o);
    assert_eq!(*recomputed.lock().unwrap(), taken(&c));
    assert!(taken(&c).iter().all(|(_, v)| (60..=140).contains(&v.len())));
}

#[test]
fn transform_and_transform_with() {
    // Spark's transform(rdd => rdd.sortByKey(false).take(2)), per batch.
    let input = vec![kvs(&[("b", 2), ("a", 1), ("c", 3)]), kvs(&[("x", 1)]), vec![]];
    let out = run1(input.clone(), |_, src| src.transform(|rdd| rdd.sort_by_key(false)?.take(2)));
    assert_eq!(out, every_second(vec![kvs(&[("c", 3), ("b", 2)]), kvs(&[("x", 1)]), vec![]]));
    // The same plan as the operations on the stream.
    let ssc = ctx();
    let src = ssc.queue_stream(input);
    let a = src.transform(|rdd| rdd.distinct()?.sort_by_key(true)).unwrap();
    let b = src.distinct().unwrap().sort_by_key(true).unwrap();
    let g = ssc.graph();
    let ops = |d: &DStream| {
        let mut v = Vec::new();
        let mut n = d.node();
        while let Some(node) = g.nodes.get(n as usize).filter(|x| !x.parents.is_empty()) {
            v.push(format!("{:?}", node.op));
            n = node.parents[0];
        }
        v
    };
    assert_eq!(ops(&a), ops(&b));
    // transformWith: the other stream's RDD of the same batch.
    let out = run2(join_left(), join_right(), |_, a, b| a.transform_with(b, |x, y| x.join(&y)?.sort_by_key(true)));
    let want = run2(join_left(), join_right(), |_, a, b| a.join(b)?.sort_by_key(true));
    assert_eq!(out, want);
    assert!(!out.iter().all(|(_, v)| v.is_empty()));
    // The context's transform over several streams (Spark's
    // ssc.transform(Seq(a, b), ...)): each stream's RDD of the batch, in order.
    let out = run2(join_left(), join_right(), |ssc, a, b| {
        ssc.transform(&[a, b], |rdds| rdds[1].join(&rdds[0])?.sort_by_key(true))
    });
    let want = run2(join_left(), join_right(), |_, a, b| b.join(a)?.sort_by_key(true));
    assert_eq!(out, want);
    let ssc = ctx();
    assert!(matches!(ssc.transform(&[], |mut r| Ok(r.remove(0))), Err(EngineError::Graph(_))));
    let elsewhere = ctx().queue_stream(vec![]);
    assert!(matches!(ssc.transform(&[&elsewhere], |mut r| Ok(r.remove(0))), Err(EngineError::Graph(_))));
}

/// WordCount whose `split` and `pair` come from the guest `wc` (a file
/// under `udfs/`) and whose `sum` is the Rust module's, next to the
/// `stamp`/`concat` pair of the guest `hostile` (when given: a map that
/// reads the clock twice and random bytes). After every batch it drops the
/// first map task's shuffle output of each reduce_by_key, recomputes it
/// from lineage ([`drop_and_recompute`] checks the digests) and checks the
/// recomputed results equal the batch's. Returns the counts (checked
/// against WordCount's) and the stamps.
fn recompute_a_guests_wordcount(wc: &str, hostile: Option<&str>) -> Batches {
    let udfs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/");
    let ssc = ctx();
    let guest = load(&ssc, &format!("{udfs}{wc}"));
    let rust = wordcount(&ssc);
    let lines = vec![strs(&["a b a", "c a b", "b b d", "a e"]), strs(&["x y", "y x z"])];
    let words = ssc.queue_stream(lines).flat_map(&guest.udf("split")).unwrap();
    let counts = words.map(&guest.udf("pair")).unwrap().reduce_by_key(&rust.udf("sum")).unwrap();
    let c = counts.collect().unwrap();
    let st = hostile.map(|h| {
        let h = load(&ssc, &format!("{udfs}{h}"));
        words.map(&h.udf("stamp")).unwrap().reduce_by_key(&h.udf("concat")).unwrap().collect().unwrap()
    });
    let recomputed: Arc<Mutex<Vec<Batches>>> = Arc::default();
    let r2 = recomputed.clone();
    let mut o = opts(2);
    o.after_batch = Some(hook(move |dag, time, outs| {
        let mut again = Vec::new();
        for out in outs {
            let rdd = out.expect("reduce_by_key produces every batch");
            let victims: Vec<BlockId> = dag
                .backend()
                .blocks()
                .ids()
                .into_iter()
                .filter(|b| matches!(b, BlockId::Shuffle { shuffle, map: 0, .. } if *shuffle == rdd))
                .collect();
            again.push((time, decode(&drop_and_recompute(dag, rdd, &victims))));
        }
        r2.lock().unwrap().push(again);
    }));
    run_ok(ssc, o);
    let counts = taken(&c);
    let recomputed = recomputed.lock().unwrap().clone();
    assert_eq!(recomputed.len(), 2, "{wc}: both batches recomputed");
    assert_eq!(recomputed.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), counts, "{wc}");
    assert_unordered(
        counts,
        every_second(vec![
            kvs(&[("a", 4), ("b", 4), ("c", 1), ("d", 1), ("e", 1)]),
            kvs(&[("x", 2), ("y", 2), ("z", 1)]),
        ]),
    );
    let Some(st) = st else { return Vec::new() };
    let stamps = taken(&st);
    assert_eq!(recomputed.iter().map(|r| r[1].clone()).collect::<Vec<_>>(), stamps, "{hostile:?}");
    stamps
}

/// The first stamp's string (`word@<clock>...`).
fn first_stamp(stamps: &Batches) -> String {
    let Value::Tuple(kv) = &stamps[0].1[0] else { panic!("{:?}", stamps[0]) };
    let Value::Str(v) = &kv[1] else { panic!("{kv:?}") };
    v.clone()
}

#[test]
fn lost_blocks_of_a_python_job_recompute_to_the_same_bytes_clock_and_random_included() {
    // ABI v2 components inside a job, next to a v1 module: WordCount in
    // Python, and a Python map that reads the clock twice and random bytes.
    let stamps = recompute_a_guests_wordcount("wordcount_py.wasm", Some("hostile_py.wasm"));
    // The clock read the batch time, twice the same.
    let v = first_stamp(&stamps);
    assert!(v.contains("@1.0:") && !v.contains('!'), "{v}");
}

#[test]
fn lost_blocks_of_a_javascript_job_recompute_to_the_same_bytes_clock_and_random_included() {
    // The JavaScript components (SpiderMonkey): Date.now() read twice and
    // Math.random() in `stamp`.
    let stamps = recompute_a_guests_wordcount("wordcount_js.wasm", Some("hostile_js.wasm"));
    // Date.now() is the batch time (ms), twice the same.
    let v = first_stamp(&stamps);
    assert!(v.contains("@1000:") && !v.contains('!'), "{v}");
    assert!(stamps.iter().all(|(_, vs)| !vs.is_empty()), "{stamps:?}");
}

#[test]
fn lost_blocks_of_assemblyscript_and_zig_jobs_recompute_to_the_same_bytes() {
    // Core modules whose kinds come from a weir:exports section.
    for wc in ["wordcount_as.wasm", "wordcount_zig.wasm"] {
        recompute_a_guests_wordcount(wc, None);
    }
}
