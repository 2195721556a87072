//! Executors as processes: WordCount throughput at local[2] (threads) vs
//! local-cluster[2] (processes), and what an executor's death costs: the
//! processing time of the batch during which one of local-cluster[3]'s
//! executors is SIGKILLed, against the median batch.
//!
//!     cargo bench -p weir --bench cluster

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::codec::Value;
use weir::dstream::StreamingContext;
use weir::scheduler::AfterBatch;
use weir::scheduler::{Clock, Master, RunOptions};

fn wordcount(
    exe: &Path,
    master: Master,
    batches: Vec<Vec<Value>>,
    hook: Option<AfterBatch>,
) -> (Duration, Vec<Duration>) {
    let ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    let wc = ssc.module(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs/wordcount.wasm")).unwrap();
    ssc.queue_stream(batches)
        .flat_map(&wc.udf("split"))
        .unwrap()
        .map(&wc.udf("pair"))
        .unwrap()
        .reduce_by_key(&wc.udf("sum"))
        .unwrap()
        .count()
        .unwrap()
        .collect()
        .unwrap();
    let mut opts = {
        let mut o = RunOptions::default();
        o.master = master;
        o.clock = Clock::Logical;
        o.after_batch = hook;
        o
    };
    opts.cluster.executor_binary = Some(exe.to_path_buf());
    let t = Instant::now();
    let r = ssc.run(opts).unwrap();
    assert!(r.failed_batches().next().is_none(), "{:?}", r.batches);
    (t.elapsed(), r.batches.iter().map(|b| b.processing).collect())
}

fn children() -> Vec<u32> {
    let mut v = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            v.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    v
}

fn main() {
    // The executors are the `weir` binary of the same build (target/release/weir).
    let exe = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.join("weir")));
    let Some(exe) = exe.filter(|p| p.is_file()) else {
        eprintln!("the cluster bench needs the weir binary: run `cargo build --release -p weir-cli` first");
        std::process::exit(2);
    };
    let corpus = common::lines(400_000, 5);
    let words = 4_000_000.0;
    println!("## WordCount, 400 000 lines (4 M words), logical clock; medians of 3 runs\n");
    println!("| master | lines/batch | seconds | words/s |");
    println!("|---|---:|---:|---:|");
    for batch in [100_000usize, 10_000] {
        for (name, master) in
            [("local[2]", Master::Local(2)), ("local-cluster[2]", Master::LocalCluster { executors: 2, cores: 1 })]
        {
            let mut ts: Vec<Duration> = (0..3)
                .map(|_| {
                    let batches =
                        corpus.chunks(batch).map(|c| c.iter().map(|l| Value::Str(l.clone())).collect()).collect();
                    wordcount(&exe, master, batches, None).0
                })
                .collect();
            ts.sort();
            println!("| {name} | {batch} | {:.3} | {:.2} M |", ts[1].as_secs_f64(), words / ts[1].as_secs_f64() / 1e6);
        }
    }

    println!("\n## An executor SIGKILLed mid-batch (local-cluster[3], 20 batches of 20 000 lines)\n");
    let batches: Vec<Vec<Value>> =
        (0..20).map(|b| common::lines(20_000, 100 + b).into_iter().map(Value::Str).collect()).collect();
    let killed = Arc::new(Mutex::new(false));
    let k = killed.clone();
    let hook: AfterBatch = Arc::new(Mutex::new(
        move |_: &mut weir::scheduler::DagScheduler, time: i64, _: &[Option<weir::rdd::RddId>]| {
            // After batch 10, kill one executor 30 ms into the next batch.
            if time == 10_000 && !*k.lock().unwrap() {
                *k.lock().unwrap() = true;
                let victim = children()[0];
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = std::process::Command::new("kill").args(["-9", &victim.to_string()]).status();
                });
            }
        },
    ));
    let (_, times) = wordcount(&exe, Master::LocalCluster { executors: 3, cores: 1 }, batches, Some(hook));
    let affected = times[10];
    let mut others: Vec<Duration> =
        times.iter().enumerate().filter(|(i, _)| *i != 10 && *i > 0).map(|(_, d)| *d).collect();
    others.sort();
    let median = others[others.len() / 2];
    println!("| batch | processing time |");
    println!("|---|---:|");
    println!("| median of the other batches | {:.1} ms |", median.as_secs_f64() * 1e3);
    println!("| the batch during which the executor died | {:.1} ms |", affected.as_secs_f64() * 1e3);
    println!(
        "\nexecutor death to batch completion: about {:.1} ms ({:.1} ms more than a normal batch)",
        (affected.as_secs_f64() - 0.030) * 1e3,
        (affected.as_secs_f64() - median.as_secs_f64()) * 1e3
    );
}
