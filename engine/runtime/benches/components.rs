//! WordCount's functions in every guest language, against native Rust: the
//! cold start of each module (compiling it; for the Python and JavaScript
//! components also loading it from the disk cache), a task's
//! instantiation, and split, pair and sum over a batch of 10 000 lines
//! through each guest — Python and JavaScript (components, ABI v2), Zig,
//! AssemblyScript, C, hand-written WAT and Rust (core modules) — and the
//! same three steps as plain Rust over the decoded lines (words borrowed
//! from the input, one FxHash map for the sums: no encoding, no sandbox).
//!
//!     cargo bench -p weir --bench components
//!     WEIR_BENCH_GUESTS=js,c cargo bench -p weir --bench components   # some guests (py, js, zig, as, c, wat)
//!
//! The modules are built by `bash udfs/build.sh` (`udfs/wordcount_*.wasm`,
//! `udfs/wat/wordcount.wat` is read as text). The compile is measured
//! against an empty cache directory of its own (`WEIR_CACHE_DIR` is set to a
//! temporary directory), so it neither reads nor fills the user's cache.
//! Every guest's sums are checked against Rust's, and Rust's against the
//! native count. Prints a Markdown table (docs/benchmarks.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::codec::Value;

// The FxHash of the native loops (benches/shared/native.rs).
#[allow(dead_code)]
#[path = "shared/native.rs"]
mod native_loop;
use native_loop::Fast;
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

/// split, pair and sum as plain Rust over `lines`: each line split on
/// whitespace into words borrowed from it, each word paired with 1, the
/// pairs summed by word in one FxHash map. Returns the three times (best of
/// REPS each) and the sums.
fn native(lines: &[String]) -> ([Duration; 3], std::collections::HashMap<&str, i64, Fast>) {
    let (split, words) = best(REPS, || {
        let mut words: Vec<&str> = Vec::with_capacity(lines.len() * 10);
        for l in lines {
            words.extend(l.split_ascii_whitespace());
        }
        words
    });
    let (pair, pairs) = best(REPS, || words.iter().map(|w| (*w, 1i64)).collect::<Vec<_>>());
    let (sum, sums) = best(REPS, || {
        let mut m: std::collections::HashMap<&str, i64, Fast> = Default::default();
        for (w, n) in &pairs {
            *m.entry(w).or_insert(0) += n;
        }
        m
    });
    ([split, pair, sum], sums)
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

/// What one module measured.
struct Figures {
    name: &'static str,
    size: u64,
    compile: Duration,
    from_cache: Option<Duration>,
    instantiate: Duration,
    times: [Duration; 3],
    fuel: u64,
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // (column, file, key for WEIR_BENCH_GUESTS); Rust last, the baseline.
    let guests = [
        ("Python", "udfs/wordcount_py.wasm", "py"),
        ("JavaScript", "udfs/wordcount_js.wasm", "js"),
        ("Zig", "udfs/wordcount_zig.wasm", "zig"),
        ("AssemblyScript", "udfs/wordcount_as.wasm", "as"),
        ("C", "udfs/wordcount_c.wasm", "c"),
        ("WAT", "udfs/wat/wordcount.wat", "wat"),
    ];
    let only = std::env::var("WEIR_BENCH_GUESTS").ok();
    let guests: Vec<_> =
        guests.into_iter().filter(|g| only.as_deref().is_none_or(|o| o.split(',').any(|k| k == g.2))).collect();
    let rust_path = root.join("udfs/wordcount.wasm");
    for p in guests.iter().map(|g| root.join(g.1)).chain([rust_path.clone()]) {
        assert!(p.is_file(), "{} is missing: run bash udfs/build.sh", p.display());
    }
    let cache = tempfile::tempdir().expect("temporary cache directory");
    // Before any thread reads the environment: the bench's own cache.
    std::env::set_var("WEIR_CACHE_DIR", cache.path());
    let rt = UdfRuntime::new().expect("runtime");
    let limits = UdfLimits::default();
    let input = Value::encode_batch(&lines());

    let (rust_load, rust) = best(REPS, || UdfModule::load(&rt, &rust_path, limits).expect("load the Rust module"));
    let inst_rust = best(20, || rust.instantiate(Some(1000), Some(0)).expect("instance")).0;
    let (t_rust, fuel_rust, out_rust) = wordcount(&rust, &input);
    let texts: Vec<String> =
        lines().into_iter().map(|v| if let Value::Str(s) = v { s } else { unreachable!() }).collect();
    let (t_native, native_sums) = native(&texts);
    let total = native_sums.values().sum::<i64>();
    assert_eq!(total, 100_000, "the native count");
    let rust_total: i64 = Value::decode_batch(&out_rust)
        .expect("sums")
        .iter()
        .map(|v| if let Value::I64(n) = v { *n } else { panic!("a sum that is not an integer: {v:?}") })
        .sum();
    assert_eq!(rust_total, total, "Rust's sums and the native count");
    let mut figures = Vec::new();
    for (name, rel, _) in &guests {
        let path = root.join(rel);
        let t = Instant::now();
        let m = UdfModule::load(&rt, &path, limits).unwrap_or_else(|e| panic!("load {name}: {e}"));
        let compile = t.elapsed();
        // Only components are cached on disk; a core module's load is
        // its compile.
        let component = m.abi_version() == 2;
        let from_cache =
            component.then(|| best(REPS, || UdfModule::load(&rt, &path, limits).expect("load from the cache")).0);
        let instantiate = best(20, || m.instantiate(Some(1000), Some(0)).expect("instance")).0;
        let (times, fuel, out) = wordcount(&m, &input);
        assert_eq!(out, out_rust, "{name} and Rust sums differ");
        println!(
            "{}: {} ({:.2} MB)",
            if component { "component" } else { "core module" },
            path.display(),
            m.size() as f64 / 1e6
        );
        figures.push(Figures { name, size: m.size() as u64, compile, from_cache, instantiate, times, fuel });
    }
    figures.push(Figures {
        name: "Rust",
        size: std::fs::metadata(&rust_path).map(|m| m.len()).unwrap_or(0),
        compile: rust_load,
        from_cache: None,
        instantiate: inst_rust,
        times: t_rust,
        fuel: fuel_rust,
    });

    let cols = |f: &dyn Fn(&Figures) -> String| figures.iter().map(f).collect::<Vec<_>>().join(" | ");
    println!();
    println!(
        "| | {} |",
        cols(&|f| if f.from_cache.is_none() {
            format!("{} (core module)", f.name)
        } else {
            format!("{} (component)", f.name)
        })
    );
    println!("|---|{}", "---|".repeat(figures.len()));
    println!("| size, MB | {} |", cols(&|f| format!("{:.1}", f.size as f64 / 1e6)));
    println!(
        "| cold start: compile, ms | {} |",
        cols(&|f| if f.from_cache.is_some() {
            ms(f.compile)
        } else {
            format!("{} (load incl. compile)", ms(f.compile))
        })
    );
    println!(
        "| cold start: load from the disk cache, ms | {} |",
        cols(&|f| f.from_cache.map(ms).unwrap_or("-".into()))
    );
    println!("| per-task instantiation, ms | {} |", cols(&|f| format!("{:.3}", f.instantiate.as_secs_f64() * 1e3)));
    for (i, what) in
        ["split (flat_map), 10 000 lines", "pair (map), 100 000 words", "sum (reduce), 12 groups"].iter().enumerate()
    {
        println!(
            "| {what}, ms | {} |",
            cols(&|f| {
                if f.name == "Rust" {
                    ms(f.times[i])
                } else {
                    let ratio = f.times[i].as_secs_f64() / t_rust[i].as_secs_f64().max(1e-9);
                    // One decimal near 1x (a core module), none far above.
                    if ratio < 10.0 {
                        format!("{} ({ratio:.1}x)", ms(f.times[i]))
                    } else {
                        format!("{} ({ratio:.0}x)", ms(f.times[i]))
                    }
                }
            })
        );
    }
    println!(
        "| split+pair+sum, ms (words/s) | {} |",
        cols(&|f| {
            let total: Duration = f.times.iter().sum();
            format!("{} ({:.3} M/s)", ms(total), 100_000.0 / total.as_secs_f64() / 1e6)
        })
    );
    println!("| fuel, split+pair+sum | {} |", cols(&|f| format!("{:.1} M", f.fuel as f64 / 1e6)));
    let native_total: Duration = t_native.iter().sum();
    println!(
        "| split+pair+sum against native Rust ({} ms: {} / {} / {}) | {} |",
        ms(native_total),
        ms(t_native[0]),
        ms(t_native[1]),
        ms(t_native[2]),
        cols(&|f| {
            let total: Duration = f.times.iter().sum();
            format!("{:.1}x", total.as_secs_f64() / native_total.as_secs_f64().max(1e-9))
        })
    );
}
