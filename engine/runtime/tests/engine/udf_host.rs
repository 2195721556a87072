//! The WebAssembly host against real modules: every function kind of
//! `udfs/testops.wasm`, WordCount in four languages (Rust, C, WAT with
//! kind:name exports and with `weir:exports`, AssemblyScript) giving
//! identical bytes, every hostile module in `udfs/hostile/` failing with its
//! own typed error, and determinism of float-heavy code.
//!
//! The `.wasm` modules are built by `bash udfs/build.sh`; these tests fail
//! (they never skip) when they are missing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use weir::udf::{ModuleRegistry, UdfError, UdfErrorKind, UdfKind, UdfLimits, UdfModule, UdfRuntime};
use weir_codec::Value;

// ---------------------------------------------------------------- helpers

fn udfs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../udfs")
}

/// A module file under `udfs/`; panics when it is missing (never skips).
fn module_path(rel: &str) -> PathBuf {
    let p = udfs_dir().join(rel);
    assert!(p.is_file(), "{} does not exist: run udfs/build.sh first", p.display());
    p
}

fn runtime() -> Arc<UdfRuntime> {
    static RT: OnceLock<Arc<UdfRuntime>> = OnceLock::new();
    RT.get_or_init(|| UdfRuntime::shared().expect("UDF runtime")).clone()
}

fn load(rel: &str) -> Arc<UdfModule> {
    load_with(rel, UdfLimits::default())
}

fn load_with(rel: &str, limits: UdfLimits) -> Arc<UdfModule> {
    let path = module_path(rel);
    UdfModule::load(&runtime(), &path, limits).unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

/// Calls `name` on a fresh instance with an encoded batch; returns the raw
/// output batch.
fn call_raw(m: &Arc<UdfModule>, name: &str, kind: UdfKind, input: &[u8]) -> Result<Vec<u8>, UdfError> {
    let mut inst = m.instantiate(None, None)?;
    inst.call(name, kind, input)
}

/// Calls `name` on a fresh instance with decoded records; returns decoded ones.
fn call(m: &Arc<UdfModule>, name: &str, kind: UdfKind, input: &[Value]) -> Result<Vec<Value>, UdfError> {
    let out = call_raw(m, name, kind, &Value::encode_batch(input))?;
    Ok(Value::decode_batch(&out).expect("the host only returns valid batches"))
}

fn ok(m: &Arc<UdfModule>, name: &str, kind: UdfKind, input: &[Value]) -> Vec<Value> {
    call(m, name, kind, input).unwrap_or_else(|e| panic!("{kind}:{name} failed: {e}"))
}

fn err(m: &Arc<UdfModule>, name: &str, kind: UdfKind, input: &[Value]) -> UdfError {
    match call(m, name, kind, input) {
        Ok(v) => panic!("{kind}:{name} should have failed, returned {v:?}"),
        Err(e) => e,
    }
}

fn s(x: &str) -> Value {
    Value::str(x)
}
fn i(x: i64) -> Value {
    Value::I64(x)
}
fn strs(xs: &[&str]) -> Vec<Value> {
    xs.iter().map(|x| s(x)).collect()
}
fn ints(xs: &[i64]) -> Vec<Value> {
    xs.iter().map(|&x| i(x)).collect()
}
fn bools(xs: &[bool]) -> Vec<Value> {
    xs.iter().map(|&x| Value::Bool(x)).collect()
}
fn list(xs: Vec<Value>) -> Value {
    Value::List(xs)
}
fn tuple(xs: Vec<Value>) -> Value {
    Value::Tuple(xs)
}
fn pair(k: Value, v: Value) -> Value {
    Value::pair(k, v)
}

/// Asserts the error's Display names the module and (for call errors) the export.
fn assert_names(e: &UdfError, module: &str, export: Option<&str>) {
    let text = e.to_string();
    assert!(text.contains(module), "error does not name module {module}: {text}");
    if let Some(x) = export {
        assert!(text.contains(&format!("{x:?}")), "error does not name export {x}: {text}");
        assert_eq!(e.site.export.as_deref(), Some(x), "{text}");
    }
}

/// The identity function of the hostile modules, as proof they still serve calls.
fn assert_identity_works(m: &Arc<UdfModule>) {
    let input = vec![i(1), s("two"), tuple(vec![Value::Null, Value::Bool(true)])];
    assert_eq!(ok(m, "identity", UdfKind::Map, &input), input);
}

// ---------------------------------------------------------------- testops: every kind

#[test]
fn testops_exports_every_kind() {
    let m = load("testops.wasm");
    let f = m.functions();
    let expect = [
        ("upper", UdfKind::Map),
        ("double", UdfKind::Map),
        ("parse_int", UdfKind::Map),
        ("fail_on_boom", UdfKind::Map),
        ("panic_on_panic", UdfKind::Map),
        ("float_chaos", UdfKind::Map),
        ("identity", UdfKind::Map),
        ("repeat", UdfKind::FlatMap),
        ("chars", UdfKind::FlatMap),
        ("is_even", UdfKind::Filter),
        ("is_long", UdfKind::Filter),
        ("positive_value", UdfKind::Filter),
        ("below_two", UdfKind::Filter),
        ("first_char", UdfKind::KeyBy),
        ("count_and_sum", UdfKind::MapPartitions),
        ("max", UdfKind::Reduce),
        ("concat", UdfKind::Reduce),
        ("total_or_drop", UdfKind::Update),
        ("count_seen", UdfKind::MapWithState),
        ("first_seen", UdfKind::MapWithState),
    ];
    for (name, kind) in expect {
        assert_eq!(m.kinds_of(name), [kind], "testops.wasm should export {kind}:{name}; has {f:?}");
        assert_eq!(m.function(name, kind).map(|f| f.export.clone()), Some(kind.export_name(name)));
    }
    for k in UdfKind::ALL {
        assert!(f.iter().any(|x| x.kind == k), "testops.wasm exports no {k} function");
    }
}

#[test]
fn testops_map() {
    let m = load("testops.wasm");
    assert_eq!(ok(&m, "upper", UdfKind::Map, &strs(&["hello", "Grüße", ""])), strs(&["HELLO", "GRÜSSE", ""]));
    assert_eq!(ok(&m, "double", UdfKind::Map, &ints(&[1, -3, 0, 21])), ints(&[2, -6, 0, 42]));
    assert_eq!(ok(&m, "parse_int", UdfKind::Map, &strs(&[" 42 ", "-7"])), ints(&[42, -7]));
    assert_eq!(ok(&m, "double", UdfKind::Map, &[]), vec![]);
    let any = vec![
        Value::Null,
        Value::Bool(false),
        i(i64::MIN),
        Value::F64(-0.0),
        s("ünïcödé"),
        Value::Bytes(vec![0, 255, 7]),
        tuple(vec![s("k"), list(vec![i(1), list(vec![]), Value::Null])]),
    ];
    let out = call_raw(&m, "identity", UdfKind::Map, &Value::encode_batch(&any)).expect("identity");
    assert_eq!(out, Value::encode_batch(&any), "identity must echo the bytes");
}

#[test]
fn testops_flat_map() {
    let m = load("testops.wasm");
    assert_eq!(ok(&m, "repeat", UdfKind::FlatMap, &ints(&[2, 0, 3, -1])), ints(&[2, 2, 3, 3, 3]));
    assert_eq!(ok(&m, "repeat", UdfKind::FlatMap, &ints(&[0, 0])), vec![]);
    assert_eq!(ok(&m, "chars", UdfKind::FlatMap, &strs(&["ab", "", "é!"])), strs(&["a", "b", "é", "!"]));
}

#[test]
fn testops_filter() {
    let m = load("testops.wasm");
    assert_eq!(ok(&m, "is_even", UdfKind::Filter, &ints(&[1, 2, 3, 4, -2])), bools(&[false, true, false, true, true]));
    // chars, not bytes: "éééé" is 4 characters in 8 bytes.
    assert_eq!(
        ok(&m, "is_long", UdfKind::Filter, &strs(&["abc", "abcd", "éé", "éééé"])),
        bools(&[false, true, false, true])
    );
}

#[test]
fn testops_key_by() {
    let m = load("testops.wasm");
    // The guest returns the key only; the engine pairs it with the record.
    assert_eq!(
        ok(&m, "first_char", UdfKind::KeyBy, &strs(&["apple", "", "Zoo", "ßtraße"])),
        strs(&["a", "", "Z", "ß"])
    );
}

#[test]
fn testops_map_partitions() {
    let m = load("testops.wasm");
    assert_eq!(ok(&m, "count_and_sum", UdfKind::MapPartitions, &ints(&[1, 2, 3, 4])), ints(&[4, 10]));
    assert_eq!(ok(&m, "count_and_sum", UdfKind::MapPartitions, &[]), ints(&[0, 0]));
    // A record of the wrong type is a guest error, not a partial result.
    let e = err(&m, "count_and_sum", UdfKind::MapPartitions, &[i(1), s("x")]);
    assert!(matches!(e.kind, UdfErrorKind::Guest(_)), "{e}");
}

#[test]
fn testops_reduce_is_a_left_fold() {
    let m = load("testops.wasm");
    let groups = vec![list(ints(&[3, 1, 2])), list(ints(&[-5])), list(ints(&[7, 7]))];
    assert_eq!(ok(&m, "max", UdfKind::Reduce, &groups), ints(&[3, -5, 7]));
    let groups = vec![list(strs(&["a", "b", "c"])), list(strs(&["x"])), list(strs(&["", "y", ""]))];
    assert_eq!(ok(&m, "concat", UdfKind::Reduce, &groups), strs(&["abc", "x", "y"]));
    // The inverse-function use: inv(inv(acc, old1), old2), again a left fold.
    let wc = load("wordcount.wasm");
    assert_eq!(ok(&wc, "subtract", UdfKind::Reduce, &[list(ints(&[10, 3, 2]))]), ints(&[5]));
}

#[test]
fn testops_update_key_form() {
    let m = load("testops.wasm");
    // (key, [new values], state or null) -> new state or null (remove).
    let groups = vec![
        tuple(vec![s("a"), list(ints(&[1, 2])), Value::Null]),
        tuple(vec![s("b"), list(vec![]), i(5)]),
        tuple(vec![s("c"), list(ints(&[4])), i(10)]),
        tuple(vec![s("d"), list(vec![]), Value::Null]),
    ];
    assert_eq!(ok(&m, "total_or_drop", UdfKind::Update, &groups), vec![i(3), Value::Null, i(14), Value::Null]);
}

#[test]
fn wordcount_update_two_arg_form() {
    // fn(values, state) -> state: the key is on the wire but not passed.
    let m = load("wordcount.wasm");
    let groups = vec![
        tuple(vec![s("a"), list(ints(&[1, 2])), Value::Null]),
        tuple(vec![s("b"), list(vec![]), i(5)]),
        tuple(vec![s("c"), list(ints(&[4])), i(10)]),
    ];
    assert_eq!(ok(&m, "running_total", UdfKind::Update, &groups), ints(&[3, 5, 14]));
}

#[test]
fn testops_map_with_state() {
    let m = load("testops.wasm");
    // (key, [values], state or null, timing_out) -> ([outputs], state or null)
    let groups = vec![
        tuple(vec![s("a"), list(ints(&[1, 2, 3])), Value::Null, Value::Bool(false)]),
        tuple(vec![s("b"), list(vec![]), i(4), Value::Bool(true)]),
        tuple(vec![s("c"), list(ints(&[5])), i(10), Value::Bool(false)]),
        tuple(vec![s("d"), list(vec![]), Value::Null, Value::Bool(false)]),
    ];
    let expect = vec![
        tuple(vec![list(vec![pair(s("a"), i(1)), pair(s("a"), i(3)), pair(s("a"), i(6))]), i(6)]),
        // Timing out: one call with no value, one output, state kept as it was.
        tuple(vec![list(vec![pair(s("b"), i(-1))]), i(4)]),
        tuple(vec![list(vec![pair(s("c"), i(15))]), i(15)]),
        tuple(vec![list(vec![]), Value::Null]),
    ];
    assert_eq!(ok(&m, "count_seen", UdfKind::MapWithState, &groups), expect);
}

/// `#[map_with_state(optional)]`: a call returning `None` emits nothing, so
/// a group's outputs list is shorter than its calls (Spark's `Option`).
#[test]
fn testops_map_with_state_may_emit_nothing() {
    let m = load("testops.wasm");
    let groups = vec![
        tuple(vec![s("a"), list(ints(&[7, 8, 9])), Value::Null, Value::Bool(false)]),
        tuple(vec![s("b"), list(ints(&[1])), i(2), Value::Bool(false)]),
        tuple(vec![s("c"), list(vec![]), i(4), Value::Bool(true)]),
    ];
    let expect = vec![
        // Only the first of three calls emits.
        tuple(vec![list(vec![pair(s("a"), i(7))]), i(3)]),
        // Seen before: nothing emitted, the state still updated.
        tuple(vec![list(vec![]), i(3)]),
        tuple(vec![list(vec![pair(s("c timed out"), i(4))]), i(4)]),
    ];
    assert_eq!(ok(&m, "first_seen", UdfKind::MapWithState, &groups), expect);
}

#[test]
fn one_instance_serves_many_calls() {
    let m = load("testops.wasm");
    let mut inst = m.instantiate(Some(1000), Some(3)).expect("instance");
    for n in 0..50i64 {
        let out = inst.call("double", UdfKind::Map, &Value::encode_batch(&ints(&[n, -n]))).expect("double");
        assert_eq!(Value::decode_batch(&out).expect("batch"), ints(&[2 * n, -2 * n]));
        let out = inst.call("is_even", UdfKind::Filter, &Value::encode_batch(&ints(&[n]))).expect("is_even");
        assert_eq!(Value::decode_batch(&out).expect("batch"), bools(&[n % 2 == 0]));
    }
}

#[test]
fn wrong_kind_or_name_is_refused() {
    let m = load("testops.wasm");
    let e = err(&m, "double", UdfKind::Filter, &ints(&[1]));
    assert!(matches!(e.kind, UdfErrorKind::NoSuchFunction { .. }), "{e}");
    let e = err(&m, "nope", UdfKind::Map, &ints(&[1]));
    assert!(matches!(e.kind, UdfErrorKind::NoSuchFunction { .. }), "{e}");
    // Same instance: a correct call first must not let a wrong-kind call through.
    let mut inst = m.instantiate(None, None).expect("instance");
    inst.call("double", UdfKind::Map, &Value::encode_batch(&ints(&[1]))).expect("double");
    let e = inst.call("double", UdfKind::Filter, &Value::encode_batch(&ints(&[1]))).expect_err("wrong kind");
    assert!(matches!(e.kind, UdfErrorKind::NoSuchFunction { .. }), "{e}");
}

// ---------------------------------------------------------------- guest errors and panics

#[test]
fn guest_reported_error_is_typed_and_named() {
    let m = load("testops.wasm");
    assert_eq!(ok(&m, "fail_on_boom", UdfKind::Map, &strs(&["a", "b"])), strs(&["a", "b"]));
    let e = err(&m, "fail_on_boom", UdfKind::Map, &strs(&["a", "boom", "c"]));
    match &e.kind {
        UdfErrorKind::Guest(msg) => assert!(msg.contains("refusing to process record \"boom\""), "{msg}"),
        k => panic!("expected a guest error, got {k:?}"),
    }
    assert_names(&e, "testops.wasm", Some("map:fail_on_boom"));
    assert!(e.is_deterministic());
    let e = err(&m, "parse_int", UdfKind::Map, &strs(&["12", "x"]));
    assert!(matches!(&e.kind, UdfErrorKind::Guest(msg) if msg.contains("cannot parse \"x\"")), "{e}");
    // Type mismatch between the data and the function's signature.
    let e = err(&m, "double", UdfKind::Map, &strs(&["not a number"]));
    assert!(matches!(&e.kind, UdfErrorKind::Guest(msg) if msg.contains("expected i64")), "{e}");
}

#[test]
fn guest_panic_is_a_trap_with_the_panic_message() {
    let m = load("testops.wasm");
    let e = err(&m, "panic_on_panic", UdfKind::Map, &strs(&["fine", "panic"]));
    match &e.kind {
        UdfErrorKind::Trap { guest_message: Some(g), .. } => assert!(g.contains("asked to panic"), "{g}"),
        k => panic!("expected a trap with the guest's message, got {k:?}"),
    }
    assert_names(&e, "testops.wasm", Some("map:panic_on_panic"));
    assert!(e.to_string().contains("asked to panic"), "{e}");
    // The module is fine afterwards.
    assert_eq!(ok(&m, "panic_on_panic", UdfKind::Map, &strs(&["fine"])), strs(&["fine"]));
}

#[test]
fn batch_time_and_partition_appear_in_errors() {
    let m = load("testops.wasm");
    let mut inst = m.instantiate(Some(1_700_000_000_000), Some(7)).expect("instance");
    let e = inst.call("fail_on_boom", UdfKind::Map, &Value::encode_batch(&strs(&["boom"]))).expect_err("boom");
    let text = e.to_string();
    assert!(text.contains("batch 1700000000000 ms") && text.contains("partition 7"), "{text}");
}

// ---------------------------------------------------------------- WordCount in every core-module language

const WORDCOUNTS: [&str; 6] = [
    "wordcount.wasm",
    "wordcount_c.wasm",
    "wat/wordcount.wat",
    "wat/wordcount_plain.wat",
    "wordcount_as.wasm",
    "wordcount_zig.wasm",
];

fn tricky_lines() -> Vec<&'static str> {
    vec![
        "to be or not to be",
        "",
        "   ",
        "  leading and trailing  ",
        "tabs\tand\t\ttabs",
        "multiple    spaces  here",
        "line\nbreaks\r\nand\x0cform\rfeeds",
        // U+000B is not ASCII whitespace for Rust's split_ascii_whitespace.
        "vertical\x0btab stays\x0binside",
        "Grüße aus Köln — naïve café",
        "日本語 テキスト\u{3000}全角スペース",
        "emoji 🎉 party\u{a0}nbsp",
        "a",
        "to",
    ]
}

/// A deterministic text of `n` lines of about 10 words.
fn generated_lines(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let vocab = ["the", "a", "stream", "of", "records", "wörd", "flows", "to", "sink", "über", "x", "weir"];
    let seps = [" ", " ", " ", "  ", "\t", " \n "];
    (0..n)
        .map(|_| {
            let mut l = String::new();
            for w in 0..(next() % 12) {
                if w > 0 || next() % 4 == 0 {
                    l.push_str(seps[(next() % seps.len() as u64) as usize]);
                }
                l.push_str(vocab[(next() % vocab.len() as u64) as usize]);
            }
            l
        })
        .collect()
}

/// Groups the (word, 1) pairs by word, in order of first appearance.
fn group_counts(pairs: &[Value]) -> Vec<Value> {
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
    groups.into_iter().map(list).collect()
}

/// Runs split, pair, sum and subtract through one module; returns the four raw outputs.
fn wordcount_pipeline(m: &Arc<UdfModule>, lines: &[Value]) -> [Vec<u8>; 4] {
    let words = call_raw(m, "split", UdfKind::FlatMap, &Value::encode_batch(lines)).expect("split");
    let pairs = call_raw(m, "pair", UdfKind::Map, &words).expect("pair");
    let groups = group_counts(&Value::decode_batch(&pairs).expect("pairs"));
    let groups = Value::encode_batch(&groups);
    let sums = call_raw(m, "sum", UdfKind::Reduce, &groups).expect("sum");
    let diffs = call_raw(m, "subtract", UdfKind::Reduce, &groups).expect("subtract");
    [words, pairs, sums, diffs]
}

#[test]
fn wordcount_three_languages_same_bytes() {
    let mods: Vec<_> = WORDCOUNTS.iter().map(|p| load(p)).collect();
    for m in &mods {
        for (f, k) in [
            ("split", UdfKind::FlatMap),
            ("pair", UdfKind::Map),
            ("sum", UdfKind::Reduce),
            ("subtract", UdfKind::Reduce),
        ] {
            m.check_function(f, k).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let lines = strs(&tricky_lines());
    let outs: Vec<_> = mods.iter().map(|m| wordcount_pipeline(m, &lines)).collect();

    // The expected words, from Rust's own definition.
    let words: Vec<&str> = tricky_lines().iter().flat_map(|l| l.split_ascii_whitespace()).collect();
    assert_eq!(Value::decode_batch(&outs[0][0]).expect("words"), strs(&words));
    assert!(
        words.contains(&"vertical\x0btab")
            && words.contains(&"テキスト\u{3000}全角スペース")
            && words.contains(&"party\u{a0}nbsp")
    );
    let pairs: Vec<Value> = words.iter().map(|w| pair(s(w), i(1))).collect();
    assert_eq!(Value::decode_batch(&outs[0][1]).expect("pairs"), pairs);
    let sums = Value::decode_batch(&outs[0][2]).expect("sums");
    let groups = group_counts(&pairs);
    let expect: Vec<Value> =
        groups.iter().map(|g| if let Value::List(xs) = g { i(xs.len() as i64) } else { unreachable!() }).collect();
    assert_eq!(sums, expect);
    assert!(sums.contains(&i(2)), "\"to\" and \"be\" appear twice");

    for (m, o) in WORDCOUNTS.iter().zip(&outs).skip(1) {
        for (f, (a, b)) in ["split", "pair", "sum", "subtract"].iter().zip(outs[0].iter().zip(o)) {
            assert_eq!(a, b, "{f}: {m} differs from wordcount.wasm");
        }
    }
}

#[test]
fn wordcount_three_languages_edge_cases() {
    let mods: Vec<_> = WORDCOUNTS.iter().map(|p| load(p)).collect();
    let cases: Vec<(&str, UdfKind, Vec<Value>)> = vec![
        ("split", UdfKind::FlatMap, vec![]),
        ("split", UdfKind::FlatMap, strs(&["", " \t\n\r\x0c "])),
        ("pair", UdfKind::Map, vec![]),
        ("pair", UdfKind::Map, strs(&["", "ü", "with space"])),
        ("sum", UdfKind::Reduce, vec![]),
        ("sum", UdfKind::Reduce, vec![list(ints(&[i64::MAX, 1])), list(ints(&[-1, -2, -3])), list(ints(&[42]))]),
        ("subtract", UdfKind::Reduce, vec![list(ints(&[i64::MIN, 1])), list(ints(&[10, 3, 2])), list(ints(&[0]))]),
    ];
    for (f, k, input) in cases {
        let enc = Value::encode_batch(&input);
        let outs: Vec<Vec<u8>> = mods
            .iter()
            .zip(WORDCOUNTS)
            .map(|(m, p)| call_raw(m, f, k, &enc).unwrap_or_else(|e| panic!("{p} {f} {input:?}: {e}")))
            .collect();
        for (o, p) in outs.iter().zip(WORDCOUNTS).skip(1) {
            assert_eq!(outs[0], *o, "{f} {input:?}: {p} differs from Rust");
        }
    }
    // Overflow wraps in all three (Rust release semantics).
    let wc = &mods[0];
    let r = ok(wc, "sum", UdfKind::Reduce, &[list(ints(&[i64::MAX, 1]))]);
    assert_eq!(r, ints(&[i64::MIN]));

    // Input of the wrong type: a guest error from every implementation.
    for (m, p) in mods.iter().zip(WORDCOUNTS) {
        let e = err(m, "split", UdfKind::FlatMap, &ints(&[1]));
        assert!(matches!(e.kind, UdfErrorKind::Guest(_)), "{p}: {e}");
        let e = err(m, "sum", UdfKind::Reduce, &[list(strs(&["x"]))]);
        assert!(matches!(e.kind, UdfErrorKind::Guest(_)), "{p}: {e}");
        let e = err(m, "sum", UdfKind::Reduce, &[list(vec![])]);
        assert!(matches!(e.kind, UdfErrorKind::Guest(_)), "{p}: {e}");
        let export = m.function("sum", UdfKind::Reduce).map(|f| f.export.clone());
        assert_names(&e, p.rsplit('/').next().unwrap_or(p), export.as_deref());
    }
}

#[test]
fn wordcount_three_languages_large_batch_and_reused_instance() {
    let mods: Vec<_> = WORDCOUNTS.iter().map(|p| load(p)).collect();
    let lines: Vec<Value> = generated_lines(10_000, 42).iter().map(|l| s(l)).collect();
    let outs: Vec<_> = mods.iter().map(|m| wordcount_pipeline(m, &lines)).collect();
    assert!(Value::decode_batch(&outs[0][0]).expect("words").len() > 40_000);
    for (p, o) in WORDCOUNTS.iter().zip(&outs).skip(1) {
        assert!(outs[0] == *o, "{p} differs from wordcount.wasm on the generated text");
    }
    // Many calls on one instance (the C and WAT bump allocators reset per call).
    for (m, p) in mods.iter().zip(WORDCOUNTS) {
        let mut inst = m.instantiate(None, None).expect("instance");
        for seed in 0..20 {
            let lines: Vec<Value> = generated_lines(500, seed).iter().map(|l| s(l)).collect();
            let got = inst.call("split", UdfKind::FlatMap, &Value::encode_batch(&lines)).expect("split");
            let fresh = call_raw(&mods[0], "split", UdfKind::FlatMap, &Value::encode_batch(&lines)).expect("split");
            assert!(got == fresh, "{p}: call {seed} on a reused instance differs");
        }
    }
}

// ---------------------------------------------------------------- hostile modules

fn hostile(name: &str) -> String {
    format!("hostile/{name}")
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let limits = UdfLimits { fuel_per_call: 2_000_000, ..UdfLimits::default() };
    let m = load_with(&hostile("infinite_loop.wat"), limits);
    let e = err(&m, "spin", UdfKind::Map, &ints(&[1]));
    assert!(matches!(e.kind, UdfErrorKind::OutOfFuel { fuel: 2_000_000 }), "{e}");
    assert!(e.is_deterministic());
    assert_names(&e, "infinite_loop.wat", Some("map:spin"));
    assert_identity_works(&m);
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let limits = UdfLimits { fuel_per_call: u64::MAX / 4, deadline_ms: 50, ..UdfLimits::default() };
    let m = load_with(&hostile("infinite_loop.wat"), limits);
    let started = std::time::Instant::now();
    let e = err(&m, "spin", UdfKind::Map, &ints(&[1]));
    assert!(matches!(e.kind, UdfErrorKind::Deadline { ms: 50 }), "{e}");
    assert!(e.is_deterministic(), "a deadline is not retried: it would only cost four more deadlines");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the watchdog fired late: {:?}", started.elapsed());
    assert_names(&e, "infinite_loop.wat", Some("map:spin"));
    assert_identity_works(&m);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let limits = UdfLimits { memory_bytes: 4 << 20, ..UdfLimits::default() };
    let m = load_with(&hostile("memory_bomb.wat"), limits);
    let e = err(&m, "grow", UdfKind::Map, &ints(&[1]));
    assert!(matches!(e.kind, UdfErrorKind::MemoryLimit { limit } if limit == 4 << 20), "{e}");
    assert_names(&e, "memory_bomb.wat", Some("map:grow"));
    assert_identity_works(&m);
}

#[test]
fn trap_is_a_trap() {
    let m = load(&hostile("trap.wat"));
    let e = err(&m, "boom", UdfKind::Map, &ints(&[1]));
    match &e.kind {
        UdfErrorKind::Trap { message, guest_message, .. } => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(guest_message.is_none());
        }
        k => panic!("expected a trap, got {k:?}"),
    }
    assert_names(&e, "trap.wat", Some("map:boom"));
    assert_identity_works(&m);
}

#[test]
fn stack_overflow_is_reported_as_such() {
    let m = load(&hostile("stack_overflow.wat"));
    let e = err(&m, "recurse", UdfKind::Map, &ints(&[1]));
    assert!(matches!(e.kind, UdfErrorKind::StackOverflow), "{e}");
    assert_names(&e, "stack_overflow.wat", Some("map:recurse"));
    assert_identity_works(&m);
}

#[test]
fn malformed_output_is_refused() {
    let m = load(&hostile("malformed_output.wat"));
    for (f, k) in [
        ("bad", UdfKind::Map),
        ("short", UdfKind::Map),
        ("trailing", UdfKind::Map),
        ("bad_utf8", UdfKind::Map),
        ("not_bool", UdfKind::Filter),
    ] {
        let e = err(&m, f, k, &ints(&[1, 2]));
        assert!(matches!(e.kind, UdfErrorKind::MalformedOutput(_)), "{f}: {e}");
        assert_names(&e, "malformed_output.wat", Some(&format!("{k}:{f}")));
    }
    let e = err(&m, "short", UdfKind::Map, &ints(&[1, 2, 3]));
    assert!(e.to_string().contains("one value per input (3), returned 0"), "{e}");
    assert_identity_works(&m);
}

#[test]
fn out_of_bounds_result_is_refused() {
    let m = load(&hostile("out_of_bounds.wat"));
    for f in ["oob", "straddle", "oob_error"] {
        let e = err(&m, f, UdfKind::Map, &ints(&[1]));
        match &e.kind {
            UdfErrorKind::MalformedOutput(msg) => assert!(msg.contains("outside linear memory"), "{f}: {msg}"),
            k => panic!("{f}: expected malformed output, got {k:?}"),
        }
        assert_names(&e, "out_of_bounds.wat", Some(&format!("map:{f}")));
    }
    assert_identity_works(&m);
}

#[test]
fn load_time_refusals_are_typed_and_leave_the_registry_usable() {
    let reg = ModuleRegistry::new(runtime(), UdfLimits::default());
    let load_err = |rel: &str| match reg.load(&module_path(&hostile(rel))) {
        Ok(m) => panic!("{rel} should be refused, loaded {m:?}"),
        Err(e) => {
            assert_names(&e, rel, None);
            e
        }
    };

    let e = load_err("missing_export.wat");
    assert!(matches!(&e.kind, UdfErrorKind::MissingExport { name } if name == "weir_alloc"), "{e}");
    assert!(e.to_string().contains("weir_alloc"), "{e}");

    let e = load_err("wrong_abi.wat");
    assert!(matches!(e.kind, UdfErrorKind::UnsupportedAbiVersion { found: 2 }), "{e}");

    let e = load_err("forbidden_import.wat");
    match &e.kind {
        UdfErrorKind::ForbiddenImport { module, name } => {
            assert_eq!((module.as_str(), name.as_str()), ("wasi_snapshot_preview1", "fd_write"))
        }
        k => panic!("expected a forbidden import, got {k:?}"),
    }
    assert!(e.to_string().contains("wasi_snapshot_preview1::fd_write"), "{e}");

    let e = load_err("not_wasm.bin");
    assert!(matches!(e.kind, UdfErrorKind::NotWasm), "{e}");

    // The same registry goes on serving a good module.
    let wc = reg.load(&module_path("wordcount.wasm")).expect("wordcount.wasm");
    assert!(reg.get(&wc.hash()).is_some());
    assert_eq!(ok(&wc, "split", UdfKind::FlatMap, &strs(&["after the refusals"])), strs(&["after", "the", "refusals"]));
}

#[test]
fn runtime_failures_leave_the_registry_usable() {
    let limits = UdfLimits { fuel_per_call: 5_000_000, memory_bytes: 8 << 20, ..UdfLimits::default() };
    let reg = ModuleRegistry::new(runtime(), limits);
    let cases: [(&str, &str, fn(&UdfErrorKind) -> bool); 5] = [
        ("infinite_loop.wat", "spin", |k| matches!(k, UdfErrorKind::OutOfFuel { .. })),
        ("memory_bomb.wat", "grow", |k| matches!(k, UdfErrorKind::MemoryLimit { .. })),
        ("trap.wat", "boom", |k| matches!(k, UdfErrorKind::Trap { .. })),
        ("stack_overflow.wat", "recurse", |k| matches!(k, UdfErrorKind::StackOverflow)),
        ("malformed_output.wat", "bad", |k| matches!(k, UdfErrorKind::MalformedOutput(_))),
    ];
    for (file, f, is) in cases {
        let m = reg.load(&module_path(&hostile(file))).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Twice, each time on a fresh instance: the failure does not stick.
        for _ in 0..2 {
            let e = err(&m, f, UdfKind::Map, &ints(&[1]));
            assert!(is(&e.kind), "{file}: {e}");
            assert_identity_works(&m);
        }
        // The registry hands back the same compiled module by hash.
        assert!(Arc::ptr_eq(&reg.get(&m.hash()).expect("registered"), &m));
    }
}

#[test]
fn wat_text_with_multibyte_characters_around_4_kib_is_wat() {
    // A long comment of 2-byte characters: byte 4096 falls inside one of
    // them. The file is WAT all the same.
    for pad in 0..2 {
        let mut text = String::from(";; ");
        text.push_str(&"x".repeat(pad));
        text.push_str(&"é".repeat(3000));
        text.push('\n');
        text.push_str(&std::fs::read_to_string(module_path("hostile/trap.wat")).expect("trap.wat"));
        let reg = ModuleRegistry::new(runtime(), UdfLimits::default());
        let m = reg.insert_bytes("padded.wat", text.as_bytes()).unwrap_or_else(|e| panic!("pad {pad}: {e}"));
        assert_identity_works(&m);
    }
}

// ---------------------------------------------------------------- determinism

fn chaos_input() -> Vec<u8> {
    let xs = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        1e300,
        -1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        std::f64::consts::PI,
        5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
    ];
    Value::encode_batch(&xs.iter().map(|&x| Value::F64(x)).collect::<Vec<_>>())
}

/// float_chaos over `chaos_input` in 3 fresh instances of a module loaded
/// into `rt`; asserts they agree and returns the output and the fuel used.
fn chaos_run(rt: &Arc<UdfRuntime>) -> (Vec<u8>, u64) {
    let m = UdfModule::load(rt, &module_path("testops.wasm"), UdfLimits::default()).expect("testops");
    let input = chaos_input();
    let mut first: Option<(Vec<u8>, u64)> = None;
    for _ in 0..3 {
        let mut inst = m.instantiate(None, None).expect("instance");
        let out = inst.call("float_chaos", UdfKind::Map, &input).expect("float_chaos");
        let fuel = inst.fuel_used();
        match &first {
            None => first = Some((out, fuel)),
            Some((o, f)) => {
                assert!(*o == out, "float_chaos differs between fresh instances");
                assert_eq!(*f, fuel, "fuel use differs between fresh instances");
            }
        }
    }
    first.expect("three runs")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn collect_f64(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::F64(x) => out.push(*x),
        Value::Tuple(xs) | Value::List(xs) => xs.iter().for_each(|x| collect_f64(x, out)),
        _ => {}
    }
}

#[test]
fn float_chaos_is_bit_identical_across_instances_and_runtimes() {
    let (a, fuel_a) = chaos_run(&runtime());
    let other = UdfRuntime::new().expect("second runtime");
    let (b, fuel_b) = chaos_run(&other);
    assert!(a == b, "float_chaos differs between two UdfRuntimes:\n{}\n{}", hex(&a), hex(&b));
    assert_eq!(fuel_a, fuel_b);

    let records = Value::decode_batch(&a).expect("batch");
    assert_eq!(records.len(), 13);
    let mut fs = Vec::new();
    records.iter().for_each(|r| collect_f64(r, &mut fs));
    assert_eq!(fs.len(), 13 * 7);
    let nans = fs.iter().filter(|x| x.is_nan()).count();
    assert!(nans > 13, "float_chaos should produce plenty of NaNs, got {nans}");
    for x in &fs {
        if x.is_nan() {
            assert_eq!(x.to_bits(), 0x7ff8_0000_0000_0000, "non-canonical NaN {:#x}", x.to_bits());
        }
    }
    // Byte level too: no NaN pattern other than the canonical one anywhere.
    let canon = 0x7ff8_0000_0000_0000u64.to_le_bytes();
    let mut p = 0;
    while let Some(at) = a[p..].iter().position(|&t| t == 0x04) {
        let q = p + at;
        if q + 9 <= a.len() {
            let bits = u64::from_le_bytes(a[q + 1..q + 9].try_into().expect("8 bytes"));
            if f64::from_bits(bits).is_nan() {
                assert_eq!(a[q + 1..q + 9], canon);
            }
        }
        p = q + 1;
    }
    // Signed zeros survive: x.mul_add(-0.0, -0.0) for x = 1.0 is -0.0.
    let Value::List(one) = &records[2] else { panic!("float_chaos returns a list") };
    assert_eq!(one[6], Value::F64(-0.0));
    assert_eq!(one[6].encode()[1..], (-0.0f64).to_bits().to_le_bytes());
    assert_eq!(one[5], Value::F64(f64::INFINITY));
}

/// In a child process (this test binary run again) the output is the same
/// bytes: nothing depends on the process, its address layout or its CPU
/// feature probing.
#[test]
fn float_chaos_is_bit_identical_across_processes() {
    const CHILD: &str = "WEIR_UDF_HOST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let (out, fuel) = chaos_run(&runtime());
        println!("CHAOS={} FUEL={fuel}", hex(&out));
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new(exe)
        .args(["--exact", "udf_host::float_chaos_is_bit_identical_across_processes", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&child.stderr));
    // libtest prints "test … ... " on the same line before the test's output.
    let line = stdout
        .lines()
        .find_map(|l| l.find("CHAOS=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no digest in: {stdout}"));
    let (out, fuel) = chaos_run(&runtime());
    assert_eq!(line, format!("CHAOS={} FUEL={fuel}", hex(&out)));
}

/// A chained call (split's output handed to pair inside guest memory) gives
/// the same bytes as two separate calls, in every guest language, and the
/// instance keeps serving calls of both styles afterwards.
#[test]
fn chained_calls_equal_separate_calls_in_every_language() {
    let lines = strs(&["to be or not", "", "  to\tbe ", "that is the question", "ünïcödé wörds"]);
    let input = Value::encode_batch(&lines);
    for rel in WORDCOUNTS {
        let m = load(rel);
        let mut inst = m.instantiate(None, None).unwrap();
        for _ in 0..3 {
            let words = inst.call("split", UdfKind::FlatMap, &input).unwrap();
            let separate = inst.call("pair", UdfKind::Map, &words).unwrap();
            let chained = inst.call_chain(&[("split", UdfKind::FlatMap), ("pair", UdfKind::Map)], &input).unwrap();
            assert_eq!(chained, separate, "{rel}: chained and separate calls differ");
            assert_eq!(Value::decode_batch(&chained).unwrap().len(), 12, "{rel}");
        }
    }
    // A wrong kind anywhere in the chain is refused before the guest runs.
    let m = load("wordcount.wasm");
    let mut inst = m.instantiate(None, None).unwrap();
    let e = inst.call_chain(&[("split", UdfKind::FlatMap), ("pair", UdfKind::FlatMap)], &input).unwrap_err();
    assert!(matches!(e.kind, UdfErrorKind::NoSuchFunction { .. }), "{e}");
}

/// Instances come from a pool of reused slots (`udf/mod.rs`, `pooling`): a
/// task's instance must still start from zeroed memory, below and above the
/// part of a slot that is kept resident. `map:scribble` grows memory to
/// ~40 MiB and writes non-zero bytes at 1, 20 and 36 MiB; `map:peek` grows
/// it the same way and traps if any of those bytes is not zero.
#[test]
fn a_reused_instance_slot_starts_from_zeroed_memory() {
    const WAT: &str = r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func $grow (if (i32.lt_u (memory.size) (i32.const 640))
    (then (drop (memory.grow (i32.sub (i32.const 640) (memory.size)))))))
  (func $same (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))
  (func (export "map:scribble") (param $ptr i32) (param $len i32) (result i64)
    (call $grow)
    (i64.store (i32.const 0x100000) (i64.const -1))
    (i64.store (i32.const 0x1400000) (i64.const -1))
    (i64.store (i32.const 0x2400000) (i64.const -1))
    (call $same (local.get $ptr) (local.get $len)))
  (func (export "map:peek") (param $ptr i32) (param $len i32) (result i64)
    (call $grow)
    (if (i64.ne (i64.const 0) (i64.or (i64.load (i32.const 0x100000))
          (i64.or (i64.load (i32.const 0x1400000)) (i64.load (i32.const 0x2400000)))))
      (then unreachable))
    (call $same (local.get $ptr) (local.get $len)))
)"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slot_reuse.wat");
    std::fs::write(&path, WAT).unwrap();
    let m = UdfModule::load(&runtime(), &path, UdfLimits::default()).unwrap();
    let input = Value::encode_batch(&ints(&[7]));
    for round in 0..20 {
        let mut a = m.instantiate(None, None).unwrap();
        assert_eq!(a.call("scribble", UdfKind::Map, &input).unwrap(), input);
        // `peek` does see the bytes where they are (the check can fail).
        assert!(a.call("peek", UdfKind::Map, &input).is_err(), "round {round}: peek missed the scribbles");
        drop(a);
        let mut b = m.instantiate(None, None).unwrap();
        let peeked = b.call("peek", UdfKind::Map, &input);
        assert_eq!(peeked.unwrap_or_else(|e| panic!("round {round}: memory of an earlier instance: {e}")), input);
    }
}

/// A core module no other test loads (a constant from the clock and the
/// process id), so whether it was compiled or cached is this test's alone.
fn unique_wat_module() -> Vec<u8> {
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ^ u128::from(std::process::id());
    let text = std::fs::read_to_string(module_path("wat/wordcount_plain.wat")).expect("read");
    // A global no function reads: other bytes, the same behaviour.
    let at = text.rfind(')').expect("a module");
    format!("{}(global $nonce i64 (i64.const {}))){}", &text[..at], nonce as i64, &text[at + 1..]).into_bytes()
}

#[test]
fn compiled_core_modules_are_kept_in_the_process_and_on_disk() {
    use weir::udf::cache::{cache_root, CompiledFrom};
    let bytes = unique_wat_module();
    let load = |rt: &Arc<UdfRuntime>| {
        UdfModule::from_bytes(rt, "nonce.wat".into(), "nonce.wat".into(), &bytes, UdfLimits::default())
            .unwrap_or_else(|e| panic!("loading: {e}"))
    };
    let first = load(&runtime());
    assert_eq!(first.compiled_from(), CompiledFrom::Compiled);
    // The same bytes again in this process (another registry, another
    // executor incarnation): no compile, no disk.
    let again = load(&runtime());
    assert_eq!(again.compiled_from(), CompiledFrom::Process);
    // A runtime of its own stands for another process: the disk cache.
    let fresh = UdfRuntime::new().expect("a runtime of its own");
    let other = load(&fresh);
    assert_eq!(other.compiled_from(), CompiledFrom::Cache);
    let hex = other.hash().hex();
    let dir = cache_root().expect("a cache directory").join("modules");
    assert!(
        std::fs::read_dir(&dir)
            .expect("modules cache")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&hex)),
        "no entry for {hex} in {}",
        dir.display()
    );
    // Code from either cache computes what freshly compiled code computes.
    for m in [&first, &again, &other] {
        assert_eq!(ok(m, "split", UdfKind::FlatMap, &[Value::Str("a b a".into())]).len(), 3);
    }
}
