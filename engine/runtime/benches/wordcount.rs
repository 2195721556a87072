//! WordCount through the whole engine (queue of batches -> flat_map(split) ->
//! map(pair) -> reduce_by_key(sum) -> foreach_rdd), logical clock, against a
//! plain native Rust loop over the same lines in the same run.
//!
//!     cargo bench -p weir --bench wordcount
//!
//! The corpus is `../shared/bench/gen_corpus.py` output when that script is
//! present (WEIR_CORPUS_LINES lines, default 400 000), else lines from the
//! engine's seeded generator. Batches of 100 000 lines stand for a 1 s
//! interval at Spark's reference rate, 10 000 lines for 100 ms.

mod common;

#[path = "shared/native.rs"]
mod native;

use native::{cpu_steal, Fast};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::codec::{as_i64, Pairs, Value};
use weir::dstream::StreamingContext;
use weir::scheduler::{Clock, Master, RunOptions};

type FxMap<'a> = HashMap<&'a str, u64, Fast>;

fn native_count(lines: &[String]) -> FxMap<'_> {
    let mut m = FxMap::default();
    for l in lines {
        for w in l.split(' ').filter(|w| !w.is_empty()) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

fn native_count_threads(lines: &[String], threads: usize) -> usize {
    let chunk = lines.len().div_ceil(threads);
    let maps: Vec<FxMap<'_>> = std::thread::scope(|s| {
        let hs: Vec<_> = lines.chunks(chunk).map(|c| s.spawn(move || native_count(c))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = FxMap::default();
    for m in maps {
        for (k, v) in m {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total.len()
}

fn corpus(root: &Path) -> Vec<String> {
    let n: usize = std::env::var("WEIR_CORPUS_LINES").ok().and_then(|s| s.parse().ok()).unwrap_or(400_000);
    let script = root.join("../shared/bench/gen_corpus.py");
    let out = root.join(format!("target/bench-corpus-{n}"));
    if script.exists() {
        if !out.join("corpus.txt").exists() {
            let st = std::process::Command::new("python3")
                .arg(&script)
                .args(["--lines", &n.to_string(), "--batches", "1", "--out"])
                .arg(&out)
                .status()
                .expect("python3");
            assert!(st.success(), "gen_corpus.py failed");
        }
        let text = std::fs::read_to_string(out.join("corpus.txt")).unwrap();
        eprintln!("corpus: {} ({n} lines, gen_corpus.py)", out.display());
        return text.lines().map(String::from).collect();
    }
    eprintln!("corpus: engine generator ({n} lines; ../shared/bench/gen_corpus.py not found)");
    common::lines(n, 7)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let module = root.join("udfs/wordcount.wasm");
    assert!(module.exists(), "run udfs/build.sh first");
    let lines = corpus(&root);
    let words: usize = lines.iter().map(|l| l.split(' ').filter(|w| !w.is_empty()).count()).sum();
    println!("WordCount: {} lines, {} words", lines.len(), words);
    println!(
        "{:<34} {:>10} {:>12} {:>12} {:>10} {:>10} {:>9}",
        "run", "seconds", "lines/s", "words/s", "p50 batch", "p99 batch", "vs native"
    );
    // WEIR_BENCH_THREADS=1 (or 2) runs one core count only, WEIR_BENCH_REPS
    // sets the repetitions (median reported): handy under `perf record`.
    let reps: usize = std::env::var("WEIR_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only: Option<usize> = std::env::var("WEIR_BENCH_THREADS").ok().and_then(|s| s.parse().ok());
    let sizes: Vec<usize> = match std::env::var("WEIR_BENCH_BATCH_LINES").ok().and_then(|s| s.parse().ok()) {
        Some(n) => vec![n],
        None => vec![100_000, 10_000],
    };
    let steal_at_start = cpu_steal();
    for threads in [1usize, 2].into_iter().filter(|t| only.is_none_or(|o| o == *t)) {
        // The machine is shared and its speed drifts by more than the
        // differences measured here, so each repetition runs the native loop
        // and then every engine configuration back to back, and "vs native"
        // is the median of the repetitions' own ratios.
        let mut native = Vec::new();
        let mut engine: Vec<Vec<Duration>> = vec![Vec::new(); sizes.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
        let mut batch_times: Vec<Vec<Duration>> = vec![Vec::new(); sizes.len()];
        for _ in 0..reps {
            let t = Instant::now();
            let distinct = native_count_threads(&lines, threads);
            let n = t.elapsed();
            native.push(n);
            assert!(distinct > 0);
            for (i, &batch_lines) in sizes.iter().enumerate() {
                let (total, batches) = run_engine(&module, &lines, words, batch_lines, threads);
                ratios[i].push(n.as_secs_f64() / total.as_secs_f64());
                engine[i].push(total);
                batch_times[i].extend(batches);
            }
        }
        let row = |name: String, secs: f64, p50: Option<Duration>, p99: Option<Duration>, ratio: f64| {
            println!(
                "{:<34} {:>10.3} {:>12.0} {:>12.0} {:>10} {:>10} {:>8.0}%",
                name,
                secs,
                lines.len() as f64 / secs,
                words as f64 / secs,
                p50.map(|d| format!("{} ms", d.as_millis())).unwrap_or_default(),
                p99.map(|d| format!("{} ms", d.as_millis())).unwrap_or_default(),
                ratio * 100.0
            )
        };
        row(format!("native loop, {threads} thread(s)"), percentile(&mut native, 0.5).as_secs_f64(), None, None, 1.0);
        for (i, batch_lines) in sizes.iter().enumerate() {
            let secs = percentile(&mut engine[i], 0.5).as_secs_f64();
            let p50 = percentile(&mut batch_times[i], 0.5);
            let p99 = percentile(&mut batch_times[i], 0.99);
            ratios[i].sort_by(f64::total_cmp);
            let ratio = ratios[i][ratios[i].len() / 2];
            row(format!("weir local[{threads}], {batch_lines} lines/batch"), secs, Some(p50), Some(p99), ratio);
        }
    }
    if let (Some(a), Some(b)) = (steal_at_start, cpu_steal()) {
        let total = (b.1 - a.1).max(1) as f64;
        println!(
            "CPU time stolen by the hypervisor during the run: {:.0}% (figures from runs with much steal are not comparable)",
            (b.0 - a.0) as f64 / total * 100.0
        );
    }
}

/// One WordCount job over `lines` in batches of `batch_lines`: the time of
/// `run` and each batch's processing time.
fn run_engine(
    module: &Path,
    lines: &[String],
    words: usize,
    batch_lines: usize,
    threads: usize,
) -> (Duration, Vec<Duration>) {
    let batches: Vec<Vec<Value>> =
        lines.chunks(batch_lines).map(|c| c.iter().map(|l| Value::Str(l.clone())).collect()).collect();
    let mut ssc = StreamingContext::new(Duration::from_secs(1)).unwrap();
    // WEIR_BENCH_PARALLELISM: partitions per stage (default: the engine's, 2).
    if let Some(n) = std::env::var("WEIR_BENCH_PARALLELISM").ok().and_then(|s| s.parse().ok()) {
        ssc.set_parallelism(n).unwrap();
    }
    let wc = ssc.module(module).unwrap();
    let counts = ssc
        .queue_stream(batches)
        .flat_map(&wc.udf("split"))
        .unwrap()
        .map(&wc.udf("pair"))
        .unwrap()
        .reduce_by_key(&wc.udf("sum"))
        .unwrap();
    // The counts are read in place, as a custom sink would (decoding every
    // record into a `Value` would cost the driver more than the reduce side
    // does).
    let counted = Arc::new(AtomicI64::new(0));
    let c = counted.clone();
    counts
        .foreach_rdd(move |_, parts| {
            let mut n = 0i64;
            for p in parts {
                for kv in Pairs::new(p).map_err(|e| e.to_string())? {
                    let (_, v) = kv.map_err(|e| e.to_string())?;
                    n += as_i64(v).ok_or("count is not an integer")?;
                }
            }
            c.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    let opts = {
        let mut o = RunOptions::default();
        o.master = Master::Local(threads);
        o.clock = Clock::Logical;
        o
    };
    let t = Instant::now();
    let report = ssc.run(opts).unwrap();
    let total = t.elapsed();
    assert!(report.failed_batches().next().is_none());
    assert_eq!(counted.load(Ordering::Relaxed) as usize, words, "every word counted once");
    (total, report.batches.iter().map(|b| b.processing).collect())
}
