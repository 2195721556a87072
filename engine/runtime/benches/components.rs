//! UDF components (ABI v2) against core modules: the cold start of the
//! Python WordCount component (compiling it, and loading it from the disk
//! cache), a task's instantiation, and WordCount's split, pair and sum over
//! a batch of 10 000 lines through Python and through Rust.
//!
//!     cargo bench -p weir --bench components
//!
//! The components are `udfs/wordcount_py.wasm` and `udfs/wordcount.wasm`
//! (`bash udfs/build.sh`). The compile is measured against an empty cache
//! directory of its own (`WEIR_CACHE_DIR` is set to a temporary directory),
//! so it neither reads nor fills the user's cache. Prints a Markdown table
//! (docs/benchmarks.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::codec::Value;
use weir::udf::{UdfKind, UdfLimits, UdfModule, UdfRuntime};

const LINES: usize = 10_000;
const REPS: usize = 5;

/// 10 000 lines of 10 words from a 12-word vocabulary (as the per-language
/// table of docs/benchmarks.md).
fn lines() -> Vec<Value> {
    let vocab = ["the", "a", "stream", "of", "records", "flows", "to", "sink", "over", "weir", "river", "x"];
    let mut x: u64 = 42;
    (0..LINES)
        .map(|_| {
            let words: Vec<&str> = (0..10)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    vocab[(x % vocab.len() as u64) as usize]
                })
                .collect();
            Value::str(&words.join(" "))
        })
        .collect()
}

fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        last = Some(r);
    }
    (best, last.expect("at least one rep"))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Groups (word, 1) pairs by word, for `sum`.
fn groups(pairs: &[u8]) -> Vec<u8> {
    let mut keys: Vec<Value> = Vec::new();
    let mut groups: Vec<Vec<Value>> = Vec::new();
    for p in Value::decode_batch(pairs).expect("pairs") {
        let Value::Tuple(kv) = p else { panic!("not a pair") };
        match keys.iter().position(|k| *k == kv[0]) {
            Some(j) => groups[j].push(kv[1].clone()),
            None => {
                keys.push(kv[0].clone());
                groups.push(vec![kv[1].clone()]);
            }
        }
    }
    Value::encode_batch(&groups.into_iter().map(Value::List).collect::<Vec<_>>())
}

/// (split ms, pair ms, sum ms, fuel of the three) for one module.
fn wordcount(m: &Arc<UdfModule>, input: &[u8]) -> ([Duration; 3], u64, Vec<u8>) {
    let mut fuel = 0;
    let (split, words) = best(REPS, || {
        let mut inst = m.instantiate(Some(1000), Some(0)).expect("instance");
        inst.call("split", UdfKind::FlatMap, input).expect("split")
    });
    let mut inst = m.instantiate(Some(1000), Some(0)).expect("instance");
    inst.call("split", UdfKind::FlatMap, input).expect("split");
    fuel += inst.fuel_used();
    let (pair, pairs) = best(REPS, || {
        let mut inst = m.instantiate(Some(1000), Some(0)).expect("instance");
        inst.call("pair", UdfKind::Map, &words).expect("pair")
    });
    inst.call("pair", UdfKind::Map, &words).expect("pair");
    fuel += inst.fuel_used();
    let g = groups(&pairs);
    let (sum, sums) = best(REPS, || {
        let mut inst = m.instantiate(Some(1000), Some(0)).expect("instance");
        inst.call("sum", UdfKind::Reduce, &g).expect("sum")
    });
    inst.call("sum", UdfKind::Reduce, &g).expect("sum");
    fuel += inst.fuel_used();
    ([split, pair, sum], fuel, sums)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py_path = root.join("udfs/wordcount_py.wasm");
    let rust_path = root.join("udfs/wordcount.wasm");
    for p in [&py_path, &rust_path] {
        assert!(p.is_file(), "{} is missing: run bash udfs/build.sh", p.display());
    }
    let cache = tempfile::tempdir().expect("temporary cache directory");
    // Before any thread reads the environment: the bench's own cache.
    std::env::set_var("WEIR_CACHE_DIR", cache.path());
    let rt = UdfRuntime::new().expect("runtime");
    let limits = UdfLimits::default();

    let t = Instant::now();
    let py = UdfModule::load(&rt, &py_path, limits).expect("load the Python component");
    let compile = t.elapsed();
    let (from_cache, _) = best(REPS, || UdfModule::load(&rt, &py_path, limits).expect("load from the cache"));
    let (rust_load, rust) = best(REPS, || UdfModule::load(&rt, &rust_path, limits).expect("load the Rust module"));
    let inst_py = best(20, || py.instantiate(Some(1000), Some(0)).expect("instance")).0;
    let inst_rust = best(20, || rust.instantiate(Some(1000), Some(0)).expect("instance")).0;

    let input = Value::encode_batch(&lines());
    let (t_py, fuel_py, out_py) = wordcount(&py, &input);
    let (t_rust, fuel_rust, out_rust) = wordcount(&rust, &input);
    assert_eq!(out_py, out_rust, "Python and Rust sums differ");

    println!("component: {} ({} MB)", py_path.display(), py.size() / 1_000_000);
    println!();
    println!("| | Python (component) | Rust (core module) |");
    println!("|---|---|---|");
    println!("| cold start: compile, ms | {} | {} (load incl. compile) |", ms(compile), ms(rust_load));
    println!("| cold start: load from the disk cache, ms | {} | - |", ms(from_cache));
    println!(
        "| per-task instantiation, ms | {:.2} | {:.3} |",
        inst_py.as_secs_f64() * 1e3,
        inst_rust.as_secs_f64() * 1e3
    );
    for (i, what) in
        ["split (flat_map), 10 000 lines", "pair (map), 100 000 words", "sum (reduce), 12 groups"].iter().enumerate()
    {
        let ratio = t_py[i].as_secs_f64() / t_rust[i].as_secs_f64().max(1e-9);
        println!("| {what}, ms | {} ({ratio:.0}x) | {} |", ms(t_py[i]), ms(t_rust[i]));
    }
    let total_py: Duration = t_py.iter().sum();
    let total_rust: Duration = t_rust.iter().sum();
    println!(
        "| split+pair+sum, ms (words/s) | {} ({:.2} M/s) | {} ({:.1} M/s) |",
        ms(total_py),
        100_000.0 / total_py.as_secs_f64() / 1e6,
        ms(total_rust),
        100_000.0 / total_rust.as_secs_f64() / 1e6
    );
    println!("| fuel, split+pair+sum | {:.0} M | {:.1} M |", fuel_py as f64 / 1e6, fuel_rust as f64 / 1e6);
}
