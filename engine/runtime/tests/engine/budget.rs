//! A tenant's block budget on a shared pool (`weir serve`'s
//! `block_quota_bytes`): a batch whose shuffle outputs would take the
//! tenant's blocks past the budget fails with an error naming it, the
//! batches around it complete, every byte is given back when the job ends,
//! and an input past the budget stops the run with an error naming the
//! batch and the source.

use std::sync::Arc;
use std::time::Duration;

use weir::codec::Value;
use weir::dstream::StreamingContext;
use weir::executor::block_store::BlockBudget;
use weir::executor::SharedPool;
use weir::scheduler::{Clock, RunOptions};
use weir::EngineError;

/// `n` records of about 100 bytes.
fn records(n: usize) -> Vec<Value> {
    (0..n).map(|i| Value::str(&format!("{i:06}{}", "x".repeat(94)))).collect()
}

fn opts(pool: &SharedPool, budget: &Arc<BlockBudget>) -> RunOptions {
    let mut o = RunOptions::default();
    o.clock = Clock::Logical;
    o.pool = Some(pool.tenant("acme").with_block_budget(budget.clone()));
    o
}

#[test]
fn a_batch_past_the_block_budget_fails_alone_and_every_byte_is_given_back() {
    let pool = SharedPool::start(2).expect("pool");
    let budget = BlockBudget::new("tenant acme's block_quota_bytes", 100_000);
    let ssc = StreamingContext::new(Duration::from_secs(1)).expect("context");
    // ~60 kB of input fits; with its repartition's ~60 kB of shuffle
    // outputs it does not. The batches around it are small.
    let src = ssc.queue_stream(vec![records(10), records(600), records(1)]);
    let out = src.repartition(2).and_then(|d| d.count()).expect("job");
    let got = out.collect().expect("collect");
    let report = ssc.run(opts(&pool, &budget)).expect("run");
    let errors: Vec<(i64, Vec<String>)> = report.batches.iter().map(|b| (b.time, b.errors.clone())).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].1.is_empty() && errors[2].1.is_empty(), "only the big batch fails: {errors:?}");
    let e = errors[1].1.join("\n");
    assert!(e.contains("over tenant acme's block_quota_bytes = 100000"), "{e}");
    let counts: Vec<(i64, Vec<Value>)> = got.lock().unwrap().clone();
    let small: Vec<&Vec<Value>> = counts.iter().filter(|(t, _)| *t != 2000).map(|(_, v)| v).collect();
    assert_eq!(small, vec![&vec![Value::I64(10)], &vec![Value::I64(1)]], "{counts:?}");
    assert_eq!(budget.held(), 0, "the job's blocks are given back when it ends");
}

#[test]
fn an_input_past_the_block_budget_stops_the_run_naming_the_batch_and_source() {
    let pool = SharedPool::start(1).expect("pool");
    let budget = BlockBudget::new("tenant acme's block_quota_bytes", 10_000);
    let ssc = StreamingContext::new(Duration::from_secs(1)).expect("context");
    let src = ssc.queue_stream(vec![records(5), records(500)]);
    let _out = src.count().and_then(|d| d.collect()).expect("job");
    let e = match ssc.run(opts(&pool, &budget)) {
        Err(e @ EngineError::OverBudget { .. }) => e.to_string(),
        other => panic!("expected the input refused: {:?}", other.map(|r| r.batches_run)),
    };
    assert!(e.starts_with("batch 2000 ms, the input of source 0: "), "{e}");
    assert!(e.contains("over tenant acme's block_quota_bytes = 10000"), "{e}");
    assert_eq!(budget.held(), 0);
}
