//! Checkpointing costs: throughput of a stateful WordCount with data
//! checkpoints every batch / every 10 s (the default) / never, against a
//! stateless WordCount without any checkpoint; data checkpoint write time and
//! size against state size; recovery time (restart to first completed batch)
//! against state size.
//!
//!     cargo bench -p weir --bench checkpoint
//!
//! WEIR_BENCH_MAX_KEYS caps the state sizes (default 10^7).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::checkpoint::CheckpointDir;
use weir::codec::{BatchBuilder, Value};
use weir::dstream::{ModuleHandle, StreamingContext};
use weir::scheduler::CheckpointOptions;
use weir::scheduler::{Clock, Master, RunOptions};

fn module(ssc: &StreamingContext) -> ModuleHandle {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs/wordcount.wasm");
    assert!(p.exists(), "run udfs/build.sh first");
    ssc.module(&p).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 40 batches of 10 000 lines through split -> pair -> update_state_by_key
/// (or reduce_by_key when `stateful` is false). `ckpt_every: None` runs the
/// stateful job with checkpointing off entirely (no directory).
fn throughput(ckpt_every: Option<Duration>, stateful: bool) -> Duration {
    let batches: Vec<Vec<Value>> =
        (0..40).map(|b| common::lines(10_000, 11 + b as u64).into_iter().map(Value::Str).collect()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = module(&ssc);
    let pairs = ssc.queue_stream(batches).flat_map(&wc.udf("split")).unwrap().map(&wc.udf("pair")).unwrap();
    let out = if stateful {
        let s = pairs.update_state_by_key(&wc.udf("running_total")).unwrap();
        match ckpt_every {
            Some(d) => s.checkpoint(d).unwrap(),
            None => s,
        }
    } else {
        pairs.reduce_by_key(&wc.udf("sum")).unwrap()
    };
    out.count().unwrap().collect().unwrap();
    let opts = {
        let mut o = RunOptions::default();
        o.master = Master::Local(2);
        o.clock = Clock::Logical;
        o.checkpoint = (stateful && ckpt_every.is_some()).then(|| CheckpointOptions::new(tmp.path()));
        o.allow_state_without_checkpoint = ckpt_every.is_none();
        o
    };
    let t = Instant::now();
    let r = ssc.run(opts).unwrap();
    assert!(r.failed_batches().next().is_none());
    t.elapsed()
}

fn state_batch(keys: usize, parts: usize) -> Vec<Arc<Vec<u8>>> {
    let mut bs: Vec<BatchBuilder> = (0..parts).map(|_| BatchBuilder::new()).collect();
    for k in 0..keys {
        bs[k % parts].push_with(|w| {
            w.tuple(2);
            w.str(&format!("key{k}"));
            w.i64(k as i64);
        });
    }
    bs.into_iter().map(|b| Arc::new(b.finish())).collect()
}

fn main() {
    let max_keys: usize = std::env::var("WEIR_BENCH_MAX_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    println!("## Stateful WordCount throughput, 40 batches x 10 000 lines (400 000 lines, ~4 M words), local[2]");
    println!("medians of 3 runs\n");
    println!("| run | seconds | words/s | vs checkpointing off |");
    println!("|---|---:|---:|---:|");
    let reps = 3;
    let stateless = median((0..reps).map(|_| throughput(None, false)).collect());
    let never = median((0..reps).map(|_| throughput(None, true)).collect());
    let default = median((0..reps).map(|_| throughput(Some(Duration::from_secs(10)), true)).collect());
    let every = median((0..reps).map(|_| throughput(Some(Duration::from_secs(1)), true)).collect());
    let words = 4_000_000.0;
    for (name, d) in [
        ("reduce_by_key, no checkpoint directory", stateless),
        ("update_state_by_key, checkpointing off", never),
        ("update_state_by_key, data checkpoint every 10 s (default)", default),
        ("update_state_by_key, data checkpoint every batch", every),
    ] {
        println!(
            "| {name} | {:.3} | {:.2} M | {:+.1}% |",
            d.as_secs_f64(),
            words / d.as_secs_f64() / 1e6,
            (d.as_secs_f64() / never.as_secs_f64() - 1.0) * 100.0
        );
    }

    println!("\n## Data checkpoint write (serialise + write + fsync + rename), by state size\n");
    println!("| keys | bytes | write time | MB/s |");
    println!("|---:|---:|---:|---:|");
    let mut keys = 10_000;
    while keys <= max_keys {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = CheckpointDir::open(tmp.path(), 10).unwrap();
        let parts = state_batch(keys, 2);
        let t = Instant::now();
        dir.write_state(0, "bench", 1000, parts);
        dir.flush();
        let took = t.elapsed();
        let st = dir.stats();
        assert_eq!(st.failures, 0, "{:?}", st.last_error);
        println!(
            "| {keys} | {} | {:.1} ms | {:.0} |",
            st.last_state_bytes,
            took.as_secs_f64() * 1e3,
            st.last_state_bytes as f64 / took.as_secs_f64() / 1e6
        );
        keys *= 10;
    }

    println!("\n## Recovery: restart to first completed batch, by state size\n");
    println!("| keys of state | recovery + 1 batch | of which the batch itself |");
    println!("|---:|---:|---:|");
    let mut keys = 10_000;
    while keys <= max_keys.min(1_000_000) {
        let tmp = tempfile::tempdir().unwrap();
        let first: Vec<Value> = (0..keys).map(|k| Value::Str(format!("key{k}"))).collect();
        let build = |n_batches: usize| {
            let mut ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
            ssc.set_identity("recovery bench", "fixed");
            let wc = module(&ssc);
            let mut batches = vec![first.clone(), vec![Value::Str("x".into())]];
            batches.truncate(n_batches.min(2));
            while batches.len() < n_batches {
                batches.push(vec![Value::Str("y".into())]);
            }
            let s = ssc
                .queue_stream(batches)
                .map(&wc.udf("pair"))
                .unwrap()
                .update_state_by_key(&wc.udf("running_total"))
                .unwrap()
                .checkpoint(Duration::from_secs(2))
                .unwrap();
            s.count().unwrap().collect().unwrap();
            ssc
        };
        let opts = || {
            let mut o = RunOptions::default();
            o.master = Master::Local(2);
            o.clock = Clock::Logical;
            o.checkpoint = Some(CheckpointOptions::new(tmp.path()));
            o
        };
        // Two batches: the state (keys + 1) is checkpointed at 2000 ms.
        build(2).run(opts()).unwrap();
        let ssc = build(3);
        let t = Instant::now();
        let r = ssc.run(opts()).unwrap();
        let took = t.elapsed();
        assert_eq!(r.batches.len(), 1);
        println!(
            "| {keys} | {:.1} ms | {:.1} ms |",
            took.as_secs_f64() * 1e3,
            r.batches[0].processing.as_secs_f64() * 1e3
        );
        keys *= 10;
    }
}
