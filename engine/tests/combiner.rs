//! reduce_by_key's in-guest combiner (the `combine:<name>` export the Rust
//! SDK adds to every reduce function) must give exactly what the host's own
//! grouping gives: the C guest has no combiner, so the same job through it
//! takes the host path.

use std::path::Path;
use std::time::Duration;

use weir::codec::Value;
use weir::dstream::StreamingContext;
use weir::scheduler::{Clock, Master, RunOptions};

fn run(module: &str, master: Master) -> (bool, Vec<(i64, Vec<String>)>) {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../udfs").join(module);
    assert!(p.exists(), "{} is missing: run udfs/build.sh first", p.display());
    let wc = ssc.module(&p).unwrap();
    let has = wc.module().has_combiner("sum");
    let words = ["a", "b", "c", "dd", "eee", "ä", "b c", "a"];
    let batches: Vec<Vec<Value>> = (0..6)
        .map(|b| {
            (0..(b * 37 % 50)).map(|i| Value::Str(format!("{} {}", words[(b + i) % 8], words[(i * 3) % 8]))).collect()
        })
        .collect();
    let out = ssc
        .queue_stream(batches)
        .flat_map(&wc.udf("split"))
        .unwrap()
        .map(&wc.udf("pair"))
        .unwrap()
        .reduce_by_key(&wc.udf("sum"))
        .unwrap()
        .collect()
        .unwrap();
    let r = ssc.run(RunOptions { master, clock: Clock::Logical, ..Default::default() }).unwrap();
    assert!(r.failed_batches().next().is_none());
    let got = out
        .lock()
        .unwrap()
        .iter()
        .map(|(t, vs)| {
            let mut v: Vec<String> = vs.iter().map(|x| x.to_string()).collect();
            v.sort();
            (*t, v)
        })
        .collect();
    (has, got)
}

#[test]
fn the_guest_combiner_and_the_host_grouping_agree() {
    let (rust_has, rust) = run("wordcount.wasm", Master::Local(2));
    let (c_has, c) = run("wordcount_c.wasm", Master::Local(2));
    assert!(rust_has, "the Rust SDK exports combine:sum");
    assert!(!c_has, "the C guest has no combiner (so it takes the host path)");
    assert_eq!(rust, c);
    assert!(rust.iter().any(|(_, v)| v.len() > 3));
    // And the same bytes in the same order on every run.
    assert_eq!(run("wordcount.wasm", Master::Local(1)).1, rust);
}
