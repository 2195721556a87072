//! UDF ABI v2 (components) against the Python and JavaScript components that
//! `udfs/build.sh` builds with componentize-py and componentize-js: WordCount giving the Rust
//! module's bytes, the deterministic WASI stand-ins (clock, random,
//! environment, files), the limits (fuel, memory), captured output, the
//! on-disk cache of compiled components.
//!
//! A Python component embeds CPython (about 20 MB), a JavaScript one
//! SpiderMonkey (about 12 MB): compiling one takes tens
//! of seconds, so each component is loaded once per test binary (and the
//! compiled code is read from the disk cache after the first run); further
//! loads with other limits come from that cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use weir::udf::component::{cache_dir, CompiledFrom};
use weir::udf::{UdfErrorKind, UdfKind, UdfLimits, UdfModule, UdfRuntime};
use weir_codec::Value;

fn module_path(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs").join(rel);
    assert!(p.is_file(), "{} does not exist: run udfs/build.sh first", p.display());
    p
}

fn runtime() -> Arc<UdfRuntime> {
    static RT: OnceLock<Arc<UdfRuntime>> = OnceLock::new();
    RT.get_or_init(|| UdfRuntime::shared().expect("UDF runtime")).clone()
}

fn load_with(rel: &str, limits: UdfLimits) -> Arc<UdfModule> {
    UdfModule::load(&runtime(), &module_path(rel), limits).unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

fn wordcount_py() -> Arc<UdfModule> {
    static M: OnceLock<Arc<UdfModule>> = OnceLock::new();
    M.get_or_init(|| load_with("wordcount_py.wasm", UdfLimits::default())).clone()
}

/// The hostile component with limits small enough to hit quickly.
fn hostile_py() -> Arc<UdfModule> {
    static M: OnceLock<Arc<UdfModule>> = OnceLock::new();
    M.get_or_init(|| {
        let limits = UdfLimits { fuel_per_call: 2_000_000_000, memory_bytes: 256 << 20, ..UdfLimits::default() };
        load_with("hostile_py.wasm", limits)
    })
    .clone()
}

fn s(x: &str) -> Value {
    Value::str(x)
}

fn call_at(
    m: &Arc<UdfModule>,
    batch: i64,
    partition: u32,
    name: &str,
    kind: UdfKind,
    input: &[Value],
) -> Result<Vec<u8>, weir::udf::UdfError> {
    let mut inst = m.instantiate(Some(batch), Some(partition))?;
    inst.call(name, kind, &Value::encode_batch(input))
}

fn decode(b: &[u8]) -> Vec<Value> {
    Value::decode_batch(b).expect("the host returns valid batches")
}

fn wordcount_js() -> Arc<UdfModule> {
    static M: OnceLock<Arc<UdfModule>> = OnceLock::new();
    M.get_or_init(|| load_with("wordcount_js.wasm", UdfLimits::default())).clone()
}

/// The hostile JavaScript component, with the limits of [`hostile_py`].
fn hostile_js() -> Arc<UdfModule> {
    static M: OnceLock<Arc<UdfModule>> = OnceLock::new();
    M.get_or_init(|| {
        let limits = UdfLimits { fuel_per_call: 2_000_000_000, memory_bytes: 256 << 20, ..UdfLimits::default() };
        load_with("hostile_js.wasm", limits)
    })
    .clone()
}

/// Groups (word, 1) pairs by word, in order of first appearance.
fn groups_of(pairs: &[Value]) -> Vec<Value> {
    let mut keys: Vec<Value> = Vec::new();
    let mut groups: Vec<Vec<Value>> = Vec::new();
    for p in pairs {
        let Value::Tuple(kv) = p else { panic!("not a pair: {p:?}") };
        match keys.iter().position(|k| *k == kv[0]) {
            Some(j) => groups[j].push(kv[1].clone()),
            None => {
                keys.push(kv[0].clone());
                groups.push(vec![kv[1].clone()]);
            }
        }
    }
    groups.into_iter().map(Value::List).collect()
}

/// Every WordCount function of `guest` gives the bytes of the Rust module's
/// on the same input (`lang` names it in failures).
fn assert_wordcount_matches_rust(guest: &Arc<UdfModule>, lang: &str) {
    let rust = load_with("wordcount.wasm", UdfLimits::default());
    assert_eq!(guest.abi_version(), 2);
    assert_eq!(rust.abi_version(), 1);
    let fs: Vec<(String, UdfKind)> = guest.functions().iter().map(|f| (f.name.clone(), f.kind)).collect();
    let want = [
        ("pair", UdfKind::Map),
        ("running_total", UdfKind::Update),
        ("split", UdfKind::FlatMap),
        ("subtract", UdfKind::Reduce),
        ("sum", UdfKind::Reduce),
    ];
    assert_eq!(fs, want.iter().map(|(n, k)| (n.to_string(), *k)).collect::<Vec<_>>());
    let lines: Vec<Value> = [
        "to be or not to be",
        "",
        "  leading and trailing  ",
        "tabs\tand\t\ttabs",
        "line\nbreaks\r\nand\x0cform\rfeeds",
        // U+000B, U+00A0 and U+3000 are not ASCII whitespace: they stay inside words.
        "vertical\x0btab stays\x0binside",
        "emoji 🎉 party\u{a0}nbsp 日本語\u{3000}全角",
        "Grüße aus Köln — naïve café",
    ]
    .iter()
    .map(|l| s(l))
    .collect();
    let run = |m: &Arc<UdfModule>| {
        let mut inst = m.instantiate(Some(1000), Some(0)).expect("instance");
        let words = inst.call("split", UdfKind::FlatMap, &Value::encode_batch(&lines)).expect("split");
        // A chained call (split then pair in one go) as a stage runs it.
        let pairs = inst
            .call_chain(&[("split", UdfKind::FlatMap), ("pair", UdfKind::Map)], &Value::encode_batch(&lines))
            .expect("split+pair");
        let groups = Value::encode_batch(&groups_of(&decode(&pairs)));
        let sums = inst.call("sum", UdfKind::Reduce, &groups).expect("sum");
        let diffs = inst.call("subtract", UdfKind::Reduce, &groups).expect("subtract");
        let state = Value::encode_batch(&[
            Value::Tuple(vec![s("a"), Value::List(vec![Value::I64(2), Value::I64(3)]), Value::Null]),
            Value::Tuple(vec![s("b"), Value::List(vec![]), Value::I64(7)]),
        ]);
        let totals = inst.call("running_total", UdfKind::Update, &state).expect("running_total");
        [words, pairs, sums, diffs, totals]
    };
    let (want, got) = (run(&rust), run(guest));
    assert!(decode(&want[0]).len() > 20, "the input has words");
    for (i, what) in ["split", "split+pair", "sum", "subtract", "running_total"].iter().enumerate() {
        assert_eq!(got[i], want[i], "{what}: {lang} {:?} vs Rust {:?}", decode(&got[i]), decode(&want[i]));
    }
}

#[test]
fn python_wordcount_gives_the_rust_modules_bytes_for_every_function() {
    assert_wordcount_matches_rust(&wordcount_py(), "Python");
}

#[test]
fn javascript_wordcount_gives_the_rust_modules_bytes_for_every_function() {
    assert_wordcount_matches_rust(&wordcount_js(), "JavaScript");
}

/// What every hostile guest must show alike: a wrong kind is refused, an
/// endless loop runs out of fuel (deterministic: not retried, naming the
/// module and export), memory growth stops at the job's limit.
fn assert_contained(m: &Arc<UdfModule>, file: &str) {
    let e = call_at(m, 0, 0, "shout", UdfKind::FlatMap, &[s("x")]).expect_err("wrong kind");
    assert!(matches!(e.kind, UdfErrorKind::NoSuchFunction { .. }), "{e}");
    let e = call_at(m, 0, 0, "spin", UdfKind::Map, &[s("x")]).expect_err("spin");
    assert!(matches!(e.kind, UdfErrorKind::OutOfFuel { .. }), "{e}");
    assert!(e.is_deterministic());
    let text = e.to_string();
    assert!(text.contains(file) && text.contains("\"map:spin\""), "{text}");
    let e = call_at(m, 0, 0, "grow", UdfKind::Map, &[s("x")]).expect_err("grow");
    assert!(matches!(e.kind, UdfErrorKind::MemoryLimit { limit } if limit == 256 << 20), "{e}");
}

/// Random numbers are a function of (module, batch time, partition).
fn assert_seeded_random(m: &Arc<UdfModule>) -> Vec<u8> {
    let rand = |batch, part| call_at(m, batch, part, "entropy", UdfKind::Map, &[s("r")]).expect("entropy");
    let r = rand(2000, 1);
    assert_eq!(rand(2000, 1), r);
    assert_ne!(rand(2000, 2), r);
    assert_ne!(rand(3000, 1), r);
    r
}

#[test]
fn python_errors_are_typed_and_name_the_function_batch_and_partition() {
    let m = hostile_py();
    // An exception: the traceback and the captured print come back.
    let e = call_at(&m, 5000, 3, "shout", UdfKind::Map, &[s("x")]).expect_err("shout raises");
    let text = e.to_string();
    let UdfErrorKind::Guest(msg) = &e.kind else { panic!("not a guest error: {text}") };
    assert!(msg.contains("ValueError: bad record 'x'"), "{msg}");
    assert!(msg.contains("about to fail on x"), "the captured stdout is attached: {msg}");
    assert!(text.contains("hostile_py.wasm") && text.contains("\"map:shout\""), "{text}");
    assert!(text.contains("batch 5000 ms") && text.contains("partition 3"), "{text}");
    assert_contained(&m, "hostile_py.wasm");
    // No filesystem: nothing is preopened, so no path opens.
    for path in ["/etc/passwd", "wordcount.py", "."] {
        let e = call_at(&m, 0, 0, "read_file", UdfKind::Map, &[s(path)]).expect_err("read_file");
        let UdfErrorKind::Guest(msg) = &e.kind else { panic!("{path}: {e}") };
        assert!(msg.contains("Error"), "{path}: {msg}");
    }
    // The instance a failure left is dropped; a new one still serves calls.
    let out = call_at(&m, 0, 0, "environ", UdfKind::Map, &[s("x")]).expect("environ");
    assert_eq!(decode(&out), vec![Value::Tuple(vec![s("x"), Value::List(vec![])])], "no environment");
}

#[test]
fn python_clock_and_random_are_functions_of_batch_and_partition() {
    let m = hostile_py();
    let clock = |batch, part| call_at(&m, batch, part, "clock", UdfKind::Map, &[s("r")]).expect("clock");
    // The clock reads the batch time, twice the same (a sleep returns at
    // once), so branching on it gives the same answer on every recompute.
    let first = clock(1_700_000_000_000, 0);
    assert_eq!(clock(1_700_000_000_000, 0), first, "recomputed on a fresh instance");
    assert_eq!(clock(1_700_000_000_000, 5), first, "the clock does not depend on the partition");
    let v = decode(&first);
    let want = Value::Tuple(vec![
        s("r"),
        s("still"),
        Value::I64(1_700_000_000_000),
        Value::I64(1_700_000_000_000 * 1_000_000),
    ]);
    assert_eq!(v, vec![want]);
    assert_ne!(clock(1_700_000_001_000, 0), first, "another batch reads another time");
    assert_seeded_random(&m);
}

#[test]
fn javascript_errors_are_typed_and_name_the_function_batch_and_partition() {
    let m = hostile_js();
    // A thrown error: its message, the JavaScript stack and the captured
    // console.log come back.
    let e = call_at(&m, 5000, 3, "shout", UdfKind::Map, &[s("x")]).expect_err("shout throws");
    let text = e.to_string();
    let UdfErrorKind::Guest(msg) = &e.kind else { panic!("not a guest error: {text}") };
    assert!(msg.contains("TypeError: bad record \"x\""), "{msg}");
    assert!(msg.contains("shout@"), "the stack names the function: {msg}");
    assert!(msg.contains("about to fail on x"), "the captured stdout is attached: {msg}");
    assert!(text.contains("hostile_js.wasm") && text.contains("\"map:shout\""), "{text}");
    assert!(text.contains("batch 5000 ms") && text.contains("partition 3"), "{text}");
    assert_contained(&m, "hostile_js.wasm");
    // No network and no files: fetch has no wasi:http behind it and stops
    // the call with a typed error, whatever the URL.
    for path in ["/etc/passwd", "wordcount.js"] {
        let e = call_at(&m, 0, 0, "read_file", UdfKind::Map, &[s(path)]).expect_err("read_file");
        assert!(matches!(e.kind, UdfErrorKind::Trap { .. } | UdfErrorKind::Guest(_)), "{path}: {e}");
    }
    // The instance a failure left is dropped; a new one still serves calls.
    let out = call_at(&m, 0, 0, "concat", UdfKind::Reduce, &[Value::List(vec![s("a"), s("b")])]).expect("concat");
    assert_eq!(decode(&out), vec![s("ab")]);
}

#[test]
fn javascript_clock_and_random_are_functions_of_batch_and_partition() {
    let m = hostile_js();
    let clock = |batch, part| call_at(&m, batch, part, "clock", UdfKind::Map, &[s("r")]).expect("clock");
    // Date.now() reads the batch time, the same however often it is read.
    let first = clock(1_700_000_000_000, 0);
    assert_eq!(clock(1_700_000_000_000, 0), first, "recomputed on a fresh instance");
    assert_eq!(clock(1_700_000_000_000, 5), first, "the clock does not depend on the partition");
    let v = decode(&first);
    let [Value::Tuple(t)] = v.as_slice() else { panic!("one tuple: {v:?}") };
    assert_eq!(t[..3], [s("r"), s("still"), Value::I64(1_700_000_000_000)], "{v:?}");
    assert_ne!(clock(1_700_000_001_000, 0), first, "another batch reads another time");
    // crypto.getRandomValues and Math.random.
    let v = decode(&assert_seeded_random(&m));
    let [Value::Tuple(t)] = v.as_slice() else { panic!("one tuple: {v:?}") };
    assert!(matches!(&t[1], Value::Bytes(b) if b.len() == 8 && b.iter().any(|&x| x != 0)), "{v:?}");
    assert!(matches!(t[2], Value::F64(x) if (0.0..1.0).contains(&x)), "{v:?}");
}

#[test]
fn compiled_components_are_cached_on_disk_by_hash_and_engine() {
    let m = wordcount_py();
    let dir = cache_dir().expect("a cache directory (HOME or WEIR_CACHE_DIR is set)");
    let hex = m.hash().hex();
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&hex) && n.ends_with(".cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "one cache entry for {hex} in {}: {entries:?}", dir.display());
    // A second load in this process (other limits: a new module) reuses
    // the process's compiled code; one through a runtime of its own (as in
    // another process) reads the disk cache.
    let limits = UdfLimits { fuel_per_call: 1_000_000_000, ..UdfLimits::default() };
    let same = load_with("wordcount_py.wasm", limits);
    assert_eq!(same.compiled_from(), CompiledFrom::Process);
    let fresh = UdfRuntime::new().expect("a runtime of its own");
    let again = UdfModule::load(&fresh, &module_path("wordcount_py.wasm"), limits).expect("load");
    assert_eq!(again.compiled_from(), CompiledFrom::Cache);
    assert_eq!(again.hash(), m.hash());
    let mut inst = again.instantiate(Some(1), Some(0)).expect("instance");
    let out = inst.call("split", UdfKind::FlatMap, &Value::encode_batch(&[s("a b")])).expect("split");
    assert_eq!(decode(&out), vec![s("a"), s("b")]);
}

#[test]
fn a_damaged_cache_entry_is_recompiled_never_trusted_blindly() {
    // A tiny component (it lacks the weir:udf interface, so loading it
    // fails after the compile): cheap to compile, enough to exercise the cache.
    let path = module_path("check/component.wat");
    let binary = weir::udf::to_binary(&std::fs::read(&path).expect("read")).expect("WAT").into_owned();
    let hex = weir::udf::ModuleHash::of(&binary).hex();
    // Each load through a runtime of its own (as in a new process), so that
    // it reads the disk cache rather than the process's compiled code.
    let load = || {
        let rt = UdfRuntime::new().expect("a runtime of its own");
        let e = UdfModule::load(&rt, &path, UdfLimits::default()).expect_err("no weir:udf/udf export");
        assert!(matches!(&e.kind, UdfErrorKind::MissingExport { name } if name == "weir:udf/udf@2.0.0"), "{e}");
    };
    load();
    let dir = cache_dir().expect("a cache directory");
    let entry = std::fs::read_dir(&dir)
        .expect("cache directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&hex)))
        .unwrap_or_else(|| panic!("no cache entry for {hex} in {}", dir.display()));
    let good = std::fs::read(&entry).expect("entry");
    // Truncated, then garbage: each is refused by wasmtime and rewritten.
    for bad in [good[..good.len() / 2].to_vec(), b"\x7fELF not a compiled component".to_vec()] {
        std::fs::write(&entry, &bad).expect("damage the entry");
        load();
        let now = std::fs::read(&entry).expect("entry");
        assert_ne!(now, bad, "the damaged entry was replaced");
        assert_eq!(now.len(), good.len(), "by a fresh compile of the same component");
    }
}

// ------------------------------------------------- parameters (weir:udf/params)

fn params_py() -> Arc<UdfModule> {
    static M: OnceLock<Arc<UdfModule>> = OnceLock::new();
    M.get_or_init(|| load_with("params_py.wasm", UdfLimits::default())).clone()
}

fn params(positional: Vec<Value>, named: Vec<(&str, Value)>) -> weir::rdd::UdfParams {
    weir::rdd::UdfParams::new(positional, named.into_iter().map(|(n, v)| (n.to_string(), v)).collect()).unwrap()
}

/// Calls `name` of `kind` on an instance given `p` (as a job hands them).
fn call_with(
    m: &Arc<UdfModule>,
    name: &str,
    kind: UdfKind,
    p: &weir::rdd::UdfParams,
    input: &[Value],
) -> Result<Vec<Value>, weir::udf::UdfError> {
    let mut inst = m.instantiate_with(Some(1000), Some(0), Some((name, kind, p)))?;
    Ok(decode(&inst.call(name, kind, &Value::encode_batch(input))?))
}

#[test]
fn a_component_exporting_weir_udf_params_gets_the_job_files_parameters() {
    let m = params_py();
    assert!(m.takes_params(), "params_py exports weir:udf/params");
    let ints = |xs: &[i64]| xs.iter().map(|&x| Value::I64(x)).collect::<Vec<_>>();
    // py.plus(4) and py.plus(n = 10): the SDK binds them to `n`.
    let out = call_with(&m, "plus", UdfKind::Map, &params(vec![Value::I64(4)], vec![]), &ints(&[1, 2])).unwrap();
    assert_eq!(out, ints(&[5, 6]));
    let out = call_with(&m, "plus", UdfKind::Map, &params(vec![], vec![("n", Value::I64(10))]), &ints(&[1])).unwrap();
    assert_eq!(out, ints(&[11]));
    // A string parameter for a filter (a call returns its verdicts).
    let lines = [s("ERROR disk"), s("INFO ok"), s("ERROR net")];
    let out = call_with(&m, "level_is", UdfKind::Filter, &params(vec![s("ERROR")], vec![]), &lines).unwrap();
    assert_eq!(out, vec![Value::Bool(true), Value::Bool(false), Value::Bool(true)]);
    // Two instances with different parameters do not share them.
    let p100 = params(vec![Value::I64(100)], vec![]);
    assert_eq!(call_with(&m, "plus", UdfKind::Map, &p100, &ints(&[1])).unwrap(), ints(&[101]));
    // The component refuses what its functions do not declare, when the
    // instance is made (the job fails to load), with its message.
    let refused = |name: &str, kind, p: weir::rdd::UdfParams| {
        let e = m.probe_params(name, kind, &p).expect_err("refused");
        let UdfErrorKind::Params(msg) = &e.kind else { panic!("not a parameter error: {e}") };
        msg.clone()
    };
    let msg = refused("plus", UdfKind::Map, params(vec![], vec![("m", Value::I64(1))]));
    assert!(msg.contains("set-params refused m = 1") && msg.contains("unknown parameter 'm'"), "{msg}");
    let msg = refused("plus", UdfKind::Map, params(vec![Value::I64(1), Value::I64(2)], vec![]));
    assert!(msg.contains("given 2 by position"), "{msg}");
    let msg = refused("double", UdfKind::Map, params(vec![Value::I64(1)], vec![]));
    assert!(msg.contains("map:double takes no parameters"), "{msg}");
    assert!(m.probe_params("plus", UdfKind::Map, &params(vec![Value::I64(4)], vec![])).is_ok());
    // Without parameters, a function that declares some fails its call;
    // one that declares none works as before.
    let e = call_at(&m, 0, 0, "plus", UdfKind::Map, &ints(&[1])).expect_err("plus needs n");
    assert!(e.to_string().contains("map:plus needs parameters (n)"), "{e}");
    assert_eq!(decode(&call_at(&m, 0, 0, "double", UdfKind::Map, &ints(&[4])).unwrap()), ints(&[8]));
}

#[test]
fn a_component_without_weir_udf_params_is_refused_parameters() {
    // Built for the world `guest` (no weir:udf/params): unchanged, and a
    // job giving it parameters is refused before any instance is made.
    let m = wordcount_py();
    assert!(!m.takes_params());
    let e = m.check_params("pair", UdfKind::Map).expect_err("no parameters");
    let text = e.to_string();
    assert!(text.contains("does not export the interface weir:udf/params@2.0.0"), "{text}");
    let e = m
        .instantiate_with(None, None, Some(("pair", UdfKind::Map, &params(vec![Value::I64(1)], vec![]))))
        .err()
        .expect("refused");
    assert!(matches!(e.kind, UdfErrorKind::Params(_)), "{e}");
}
