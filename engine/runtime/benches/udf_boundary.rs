//! The cost of the UDF boundary: WordCount's split, pair and sum through
//! WebAssembly (`udfs/wordcount.wasm`, via the engine's host) against the
//! same three functions written natively in Rust, in the same run, over the
//! same encoded batches. Both sides read and write the record encoding (the
//! engine moves encoded bytes either way); the WASM side also pays for the
//! copy into guest memory, the copy out and the host's output validation.
//!
//! `cargo bench -p weir --bench udf_boundary` (build the modules first:
//! `bash udfs/build.sh`). Prints a table of medians over several repetitions.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::udf::{abi, UdfKind, UdfLimits, UdfModule, UdfRuntime};
use weir_codec::{as_i64, as_str, elements, BatchBuilder, Records, Writer};

/// Batch sizes, in lines.
const BATCHES: [usize; 3] = [1, 100, 10_000];
/// Lines processed per repetition (in batches of the size being measured).
const LINES_PER_REP: usize = 20_000;
const REPS: usize = 9;
const INSTANTIATIONS: usize = 300;

// ---------------------------------------------------------------- input

/// splitmix64: a fixed-seed generator, so every run sees the same text.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `n` lines of 8 to 12 words (10 on average) from a 1000-word vocabulary
/// with a skewed (roughly Zipfian) choice of words.
fn lines(n: usize, rng: &mut Rng) -> Vec<String> {
    let vocab: Vec<String> = {
        let mut r = Rng(7);
        (0..1000).map(|_| (0..2 + r.below(8)).map(|_| (b'a' + r.below(26) as u8) as char).collect()).collect()
    };
    (0..n)
        .map(|_| {
            let words = 8 + rng.below(5);
            let mut l = String::new();
            for w in 0..words {
                if w > 0 {
                    l.push(' ');
                }
                // min of two uniforms: small indices are more frequent.
                let i = rng.below(vocab.len()).min(rng.below(vocab.len()));
                l.push_str(&vocab[i]);
            }
            l
        })
        .collect()
}

fn encode_lines(ls: &[String]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for l in ls {
        b.push_with(|w| w.str(l));
    }
    b.finish()
}

/// The input of `sum`: the pairs grouped by word, each group a list of counts.
fn groups_of(pairs: &[u8]) -> (Vec<u8>, usize) {
    let mut order: Vec<&[u8]> = Vec::new();
    let mut counts: std::collections::HashMap<&[u8], Vec<i64>> = std::collections::HashMap::new();
    for r in Records::new(pairs).expect("pairs batch") {
        let (k, v) = weir_codec::split_pair(r.expect("pair")).expect("pair");
        let e = counts.entry(k).or_default();
        if e.is_empty() {
            order.push(k);
        }
        e.push(as_i64(v).expect("count"));
    }
    let mut b = BatchBuilder::new();
    let mut values = 0;
    for k in &order {
        let vs = &counts[k];
        values += vs.len();
        b.push_with(|w| {
            w.list(vs.len() as u32);
            for &v in vs {
                w.i64(v);
            }
        });
    }
    (b.finish(), values)
}

// ---------------------------------------------------------------- native

fn native_split(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 2);
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut n = 0u32;
    for r in Records::new(input).expect("batch") {
        let line = as_str(r.expect("record")).expect("string");
        for w in line.split_ascii_whitespace() {
            Writer::new(&mut out).str(w);
            n += 1;
        }
    }
    weir_codec::patch_u32(&mut out, 0, n);
    out
}

fn native_pair(input: &[u8]) -> Vec<u8> {
    let recs = Records::new(input).expect("batch");
    let mut out = Vec::with_capacity(input.len() + 14 * recs.remaining() as usize);
    out.extend_from_slice(&recs.remaining().to_le_bytes());
    for r in recs {
        let word = as_str(r.expect("record")).expect("string");
        let mut w = Writer::new(&mut out);
        w.tuple(2);
        w.str(word);
        w.i64(1);
    }
    out
}

fn native_sum(input: &[u8]) -> Vec<u8> {
    let recs = Records::new(input).expect("batch");
    let mut out = Vec::with_capacity(4 + 9 * recs.remaining() as usize);
    out.extend_from_slice(&recs.remaining().to_le_bytes());
    for r in recs {
        let xs = elements(r.expect("group")).expect("list");
        let mut acc = as_i64(xs[0]).expect("i64");
        for x in &xs[1..] {
            acc = acc.wrapping_add(as_i64(x).expect("i64"));
        }
        Writer::new(&mut out).i64(acc);
    }
    out
}

// ---------------------------------------------------------------- measuring

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

struct Case {
    lines: Vec<u8>,
    words: Vec<u8>,
    groups: Vec<u8>,
    n_lines: usize,
    n_words: usize,
    n_groups: usize,
    n_values: usize,
}

fn case(batch: usize) -> Case {
    let mut rng = Rng(0x5745_4952 ^ batch as u64);
    let lines = encode_lines(&lines(batch, &mut rng));
    let words = native_split(&lines);
    let pairs = native_pair(&words);
    let (groups, n_values) = groups_of(&pairs);
    let count = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    Case { n_lines: batch, n_words: count(&words), n_groups: count(&groups), n_values, lines, words, groups }
}

/// Median time per batch of split, pair and sum, WASM and native.
struct Timings {
    wasm: [Duration; 3],
    native: [Duration; 3],
    /// split and pair as one chained call (the engine's path for a stage).
    chained: Duration,
}

const FUNCS: [(&str, UdfKind); 3] = [("split", UdfKind::FlatMap), ("pair", UdfKind::Map), ("sum", UdfKind::Reduce)];

fn measure(m: &Arc<UdfModule>, c: &Case) -> Timings {
    let inputs = [&c.lines, &c.words, &c.groups];
    let natives: [fn(&[u8]) -> Vec<u8>; 3] = [native_split, native_pair, native_sum];
    let iters = (LINES_PER_REP / c.n_lines).max(2);
    let mut wasm: [Vec<Duration>; 3] = Default::default();
    let mut native: [Vec<Duration>; 3] = Default::default();
    for _ in 0..REPS {
        for f in 0..3 {
            // One instance per repetition (a task), created outside the timing:
            // instantiation is measured on its own.
            let mut inst = m.instantiate(None, None).expect("instance");
            let (name, kind) = FUNCS[f];
            let warm = inst.call(name, kind, inputs[f]).expect("wasm call");
            assert!(warm == natives[f](inputs[f]), "{name}: WASM and native outputs differ");
            let t = Instant::now();
            for _ in 0..iters {
                black_box(inst.call(name, kind, black_box(inputs[f])).expect("wasm call"));
            }
            wasm[f].push(t.elapsed() / iters as u32);

            let t = Instant::now();
            for _ in 0..iters {
                black_box(natives[f](black_box(inputs[f])));
            }
            native[f].push(t.elapsed() / iters as u32);
        }
    }
    let mut chained = Vec::new();
    for _ in 0..REPS {
        let mut inst = m.instantiate(None, None).expect("instance");
        let steps = [FUNCS[0], FUNCS[1]];
        assert!(inst.call_chain(&steps, inputs[0]).expect("chain") == native_pair(&native_split(inputs[0])));
        let t = Instant::now();
        for _ in 0..iters {
            black_box(inst.call_chain(&steps, black_box(inputs[0])).expect("chain"));
        }
        chained.push(t.elapsed() / iters as u32);
    }
    let med = |v: &mut [Vec<Duration>; 3]| [0, 1, 2].map(|i| median(std::mem::take(&mut v[i])));
    Timings { wasm: med(&mut wasm), native: med(&mut native), chained: median(chained) }
}

fn rate(records: usize, per_batch: Duration) -> f64 {
    records as f64 / per_batch.as_secs_f64()
}

fn human(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs/wordcount.wasm");
    assert!(path.is_file(), "{} does not exist: run udfs/build.sh first", path.display());
    let rt = UdfRuntime::new().expect("UDF runtime");
    let t = Instant::now();
    let m = UdfModule::load(&rt, &path, UdfLimits::default()).expect("load wordcount.wasm");
    let load = t.elapsed();

    println!("UDF boundary: udfs/wordcount.wasm through the host vs the same functions in native Rust");
    println!(
        "medians of {REPS} repetitions of ~{LINES_PER_REP} lines each; time per batch; rates in input records per second"
    );
    println!();
    println!(
        "| batch (lines) | function | input records/batch | WASM time/batch | WASM rate | native time/batch | native rate | WASM/native |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut pipeline_ratio_10k = 0.0;
    for batch in BATCHES {
        let c = case(batch);
        let t = measure(&m, &c);
        let what = [("split", c.n_lines, "lines"), ("pair", c.n_words, "words"), ("sum", c.n_groups, "groups")];
        for (f, (name, n, unit)) in what.iter().enumerate() {
            let (w, nat) = (rate(*n, t.wasm[f]), rate(*n, t.native[f]));
            let extra = if f == 2 { format!(" ({} values)", c.n_values) } else { String::new() };
            println!(
                "| {batch} | {name} | {n} {unit}{extra} | {:.2?} | {} | {:.2?} | {} | {:.0}% |",
                t.wasm[f],
                human(w),
                t.native[f],
                human(nat),
                100.0 * w / nat
            );
        }
        let (tw, tn) = (t.wasm.iter().sum::<Duration>(), t.native.iter().sum::<Duration>());
        let ratio = tn.as_secs_f64() / tw.as_secs_f64();
        let tc = t.chained + t.wasm[2];
        let chained_ratio = tn.as_secs_f64() / tc.as_secs_f64();
        if batch == 10_000 {
            pipeline_ratio_10k = chained_ratio;
        }
        println!(
            "| {batch} | **split+pair+sum** | {} lines | {:.2?} | {} | {:.2?} | {} | **{:.0}%** |",
            c.n_lines,
            tw,
            human(rate(c.n_lines, tw)),
            tn,
            human(rate(c.n_lines, tn)),
            100.0 * ratio
        );
        println!(
            "| {batch} | **split→pair chained, +sum** | {} lines | {:.2?} | {} | {:.2?} | {} | **{:.0}%** |",
            c.n_lines,
            tc,
            human(rate(c.n_lines, tc)),
            tn,
            human(rate(c.n_lines, tn)),
            100.0 * chained_ratio
        );
    }

    breakdown(&m, &path);
    other_guests(&rt, &path);

    // Instantiation: every task gets a fresh instance.
    let mut times = Vec::with_capacity(INSTANTIATIONS);
    for _ in 0..INSTANTIATIONS {
        let t = Instant::now();
        let inst = m.instantiate(None, None).expect("instance");
        times.push(t.elapsed());
        drop(black_box(inst));
    }
    times.sort();
    println!();
    println!(
        "instantiation (fresh instance per task, {INSTANTIATIONS} samples): median {:.1?}, p90 {:.1?}, min {:.1?}",
        times[INSTANTIATIONS / 2],
        times[INSTANTIATIONS * 9 / 10],
        times[0]
    );
    println!("module load (read + compile + version probe, once per job): {load:.1?}");
    println!();
    let verdict = if pipeline_ratio_10k >= 0.5 { "meets" } else { "MISSES" };
    println!(
        "target (batch 10000, split+pair+sum as the engine runs it (split→pair chained), WASM >= 50% of native): {:.0}%, {verdict} the target",
        100.0 * pipeline_ratio_10k
    );
}

// ---------------------------------------------------------------- breakdown

/// The guest alone, on a bare wasmtime engine: `fuel` and `epoch` as the
/// host's sandbox sets them, or off; no output validation.
struct Bare {
    store: wasmtime::Store<()>,
    memory: wasmtime::Memory,
    alloc: wasmtime::TypedFunc<i32, i32>,
    funcs: Vec<wasmtime::TypedFunc<(i32, i32), i64>>,
    fuel: bool,
}

impl Bare {
    fn new(path: &Path, fuel: bool) -> Bare {
        let mut c = wasmtime::Config::new();
        c.consume_fuel(fuel).epoch_interruption(fuel).cranelift_nan_canonicalization(fuel);
        let engine = wasmtime::Engine::new(&c).expect("engine");
        let module = wasmtime::Module::from_file(&engine, path).expect("module");
        let mut linker = wasmtime::Linker::new(&engine);
        linker.func_wrap("weir", "log", |_: i32, _: i32| {}).expect("log");
        let mut store = wasmtime::Store::new(&engine, ());
        if fuel {
            store.set_fuel(u64::MAX / 2).expect("fuel");
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let inst = linker.instantiate(&mut store, &module).expect("instance");
        let memory = inst.get_memory(&mut store, "memory").expect("memory");
        let alloc = inst.get_typed_func(&mut store, "weir_alloc").expect("alloc");
        let funcs =
            FUNCS.iter().map(|(n, k)| inst.get_typed_func(&mut store, &k.export_name(n)).expect("export")).collect();
        Bare { store, memory, alloc, funcs, fuel }
    }

    /// Copy in, call, copy out: the boundary minus the host's checks.
    fn call(&mut self, f: usize, input: &[u8]) -> Vec<u8> {
        if self.fuel {
            self.store.set_fuel(u64::MAX / 2).expect("fuel");
        }
        let ptr = self.alloc.call(&mut self.store, input.len() as i32).expect("alloc");
        self.memory.write(&mut self.store, ptr as u32 as usize, input).expect("write");
        let r = self.funcs[f].call(&mut self.store, (ptr, input.len() as i32)).expect("call") as u64;
        let (p, n) = ((r & 0xffff_ffff) as usize, ((r >> 32) & 0x7fff_ffff) as usize);
        self.memory.data(&self.store)[p..p + n].to_vec()
    }
}

fn time_per_call(iters: usize, mut f: impl FnMut()) -> Duration {
    let mut v = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        v.push(t.elapsed() / iters as u32);
    }
    median(v)
}

/// Where the WASM time goes at batch 10000, per function.
fn breakdown(m: &Arc<UdfModule>, path: &Path) {
    let c = case(10_000);
    let inputs = [&c.lines, &c.words, &c.groups];
    let natives: [fn(&[u8]) -> Vec<u8>; 3] = [native_split, native_pair, native_sum];
    let counts = [c.n_lines as u32, c.n_words as u32, c.n_groups as u32];
    let mut bare = Bare::new(path, false);
    let mut metered = Bare::new(path, true);
    println!();
    println!("Where the time goes at batch 10000 (medians, per batch):");
    println!();
    println!("| function | host call (all) | guest, sandbox config, no checks | guest, plain wasmtime | host output validation | native |");
    println!("|---|---:|---:|---:|---:|---:|");
    for f in 0..3 {
        let (name, kind) = FUNCS[f];
        let mut inst = m.instantiate(None, None).expect("instance");
        let out = inst.call(name, kind, inputs[f]).expect("call");
        assert!(bare.call(f, inputs[f]) == out && metered.call(f, inputs[f]) == out);
        let iters = 4;
        let host = time_per_call(iters, || {
            black_box(inst.call(name, kind, inputs[f]).expect("call"));
        });
        let sandboxed = time_per_call(iters, || {
            black_box(metered.call(f, inputs[f]));
        });
        let plain = time_per_call(iters, || {
            black_box(bare.call(f, inputs[f]));
        });
        // Validation only rewrites non-canonical NaNs, so repeating it on
        // one (cache-warm, as after the copy out) buffer measures it fairly.
        let mut b = out.clone();
        let validate = time_per_call(iters, || {
            black_box(abi::validate_output(kind, counts[f], &mut b).expect("valid"));
        });
        let native = time_per_call(iters, || {
            black_box(natives[f](inputs[f]));
        });
        println!("| {name} | {host:.2?} | {sandboxed:.2?} | {plain:.2?} | {validate:.2?} | {native:.2?} |");
    }
}

/// The same pipeline through the C and WAT WordCounts (same output bytes).
fn other_guests(rt: &Arc<UdfRuntime>, rust: &Path) {
    let c = case(10_000);
    let inputs = [&c.lines, &c.words, &c.groups];
    let natives: [fn(&[u8]) -> Vec<u8>; 3] = [native_split, native_pair, native_sum];
    let native: Duration = (0..3).map(|f| time_per_call(4, || drop(black_box(natives[f](inputs[f]))))).sum();
    println!();
    println!("The other WordCount guests at batch 10000 (split+pair+sum through the host, per batch):");
    println!();
    println!("| module | split | pair | sum | total | WASM/native |");
    println!("|---|---:|---:|---:|---:|---:|");
    let dir = rust.parent().expect("udfs/");
    for file in ["wordcount.wasm", "wordcount_c.wasm", "wat/wordcount.wat"] {
        let path = dir.join(file);
        assert!(path.is_file(), "{} does not exist: run udfs/build.sh first", path.display());
        let m = UdfModule::load(rt, &path, UdfLimits::default()).expect("load");
        let mut ts = [Duration::ZERO; 3];
        for (f, (name, kind)) in FUNCS.iter().enumerate() {
            let mut inst = m.instantiate(None, None).expect("instance");
            assert!(inst.call(name, *kind, inputs[f]).expect("call") == natives[f](inputs[f]), "{file} {name}");
            ts[f] = time_per_call(4, || drop(black_box(inst.call(name, *kind, inputs[f]).expect("call"))));
        }
        let total: Duration = ts.iter().sum();
        println!(
            "| {file} | {:.2?} | {:.2?} | {:.2?} | {total:.2?} | {:.0}% |",
            ts[0],
            ts[1],
            ts[2],
            100.0 * native.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!("| native Rust | | | | {native:.2?} | 100% |");
}
