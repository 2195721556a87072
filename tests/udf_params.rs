//! UDF parameters from the job file (`ops.plus(4)`, `ops.within(lat =
//! 52.5, ...)`) and the batch time handed to functions (Spark's
//! `updateStateByKey((time, key, values, state) => ...)`), through `weir
//! run` on `local[2]` and `local-cluster[2]`: what they change in the
//! outputs, the job file's errors (file:line), a changed parameter refusing
//! recovery with a diff naming it, and what `weir udf check` says.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

/// The `[modules]` table: testops, and the Python component (ABI v2)
/// when `body` uses it (loading it costs a compilation).
fn modules(body: &str) -> String {
    let mut m = format!("\n[modules]\nops = \"{}\"\n", module("testops.wasm").display());
    // The C and AssemblyScript guests of the same functions (weir_abi.h's
    // and the AssemblyScript SDK's parameter helpers).
    if body.contains("c.") {
        m.push_str(&format!("c = \"{}\"\n", module("c_params.wasm").display()));
    }
    if body.contains("asc.") {
        m.push_str(&format!("asc = \"{}\"\n", module("params_as.wasm").display()));
    }
    if body.contains("py.") {
        m.push_str(&format!("py = \"{}\"\n", module("wordcount_py.wasm").display()));
    }
    // The components (ABI v2) that export weir:udf/params: the JavaScript
    // and Python SDKs' parameters.
    if body.contains("js.") {
        m.push_str(&format!("js = \"{}\"\n", module("params_js.wasm").display()));
    }
    if body.contains("pyp.") {
        m.push_str(&format!("pyp = \"{}\"\n", module("params_py.wasm").display()));
    }
    m
}

fn saved(stream: &str) -> String {
    format!("[[outputs]]\nstream = \"{stream}\"\ntype = \"save_as_text_files\"\nprefix = \"out/{stream}\"\n")
}

fn write_job(dir: &Path, body: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let job = dir.join("job.toml");
    std::fs::write(&job, format!("batch_interval = \"1s\"\n{body}{}", modules(body))).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    job
}

fn run_on(job: &Path, master: &str, extra: &[&str]) -> Output {
    let ckpt = job.parent().unwrap().join("ckpt");
    run(weir()
        .arg("run")
        .arg(job)
        .args(["--clock", "logical", "--master", master, "--checkpoint"])
        .arg(&ckpt)
        .args(extra))
}

fn ok(out: &Output) -> String {
    let err = text(&out.stderr);
    assert!(out.status.success(), "weir run failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// One job running `streams` (`{m}` standing for the module) over each
/// module `m` of `mods` (only the streams it names), written to
/// `out/<m>_<stream>`, over the batches, logs and ids sources and the
/// `users` dataset; run on `local[2]` and on `local-cluster[2]`. The
/// directories of the two runs, in that order.
fn on_both_masters(mods: &[(&str, &[&str])], streams: &[(&str, &str)]) -> Vec<tempfile::TempDir> {
    let mut body = "[datasets]\nusers = \"users.jsonl\"\n\
        [sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n\
        [sources.logs]\ntype = \"batches\"\npath = \"logs.jsonl\"\n\
        [sources.ids]\ntype = \"batches\"\npath = \"ids.jsonl\"\n[streams]\n"
        .to_string();
    let mut outs = String::new();
    for (m, names) in mods {
        for (name, expr) in streams.iter().filter(|(n, _)| names.contains(n)) {
            body.push_str(&format!("{m}_{name} = '{}'\n", expr.replace("{m}", m)));
            outs.push_str(&saved(&format!("{m}_{name}")));
        }
    }
    let body = format!("{body}{outs}");
    let files = [
        ("nums.jsonl", NUMS),
        ("logs.jsonl", LOGS),
        ("ids.jsonl", "[\"u1\", \"u9\"]\n[\"u2\"]\n[]\n"),
        ("users.jsonl", "[[\"u1\", \"Ada\"], [\"u2\", \"Bob\"]]\n"),
    ];
    ["local[2]", "local-cluster[2]"]
        .iter()
        .map(|master| {
            let tmp = tempfile::tempdir().unwrap();
            let job = write_job(tmp.path(), &body, &files);
            ok(&run_on(&job, master, &[]));
            tmp
        })
        .collect()
}

/// Runs the one stream `x = expr` over `nums.jsonl` on `local[2]`, which
/// must fail: its stderr.
fn refused_on_local(expr: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let body =
        format!("[sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n[streams]\nx = \"{expr}\"\n{}", saved("x"));
    let job = write_job(tmp.path(), &body, &[("nums.jsonl", NUMS)]);
    let out = run_on(&job, "local[2]", &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{expr} was accepted:\n{err}");
    err
}

const NUMS: &str = "[1, 2, 3]\n[10]\n[]\n";
const LOGS: &str = "[\"ERROR disk full\", \"INFO started\", \"WARN slow\", \"ERROR again\"]\n[\"INFO x\"]\n[]\n";
/// Berlin (52.52, 13.40), Potsdam (52.39, 13.06, about 26 km away) and
/// Hamburg (53.55, 9.99, about 255 km away).
const POINTS: &str = "[[52.52, 13.40], [52.39, 13.06], [53.55, 9.99]]\n[]\n[]\n";
const PAIRS: &str = "[[\"a\", 1], [\"b\", 2]]\n[[\"a\", 3]]\n[]\n";

#[test]
fn parameters_and_the_batch_time_change_results_alike_on_both_masters() {
    let body = "[sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n\
        [sources.logs]\ntype = \"batches\"\npath = \"logs.jsonl\"\n\
        [sources.points]\ntype = \"batches\"\npath = \"points.jsonl\"\n\
        [sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
        [streams]\n\
        plus4 = \"nums.map(ops.plus(4))\"\n\
        minus10 = \"nums.map(ops.plus(n = -10))\"\n\
        twice = \"nums.map(ops.plus(4)).map(ops.plus(100)).map(ops.double)\"\n\
        errors = 'logs.filter(ops.level_is(\"ERROR\"))'\n\
        warns = 'logs.filter(ops.level_is(\"WARN\"))'\n\
        near = \"points.filter(ops.within(lat = 52.5, lon = 13.4, km = 10))\"\n\
        region = \"points.filter(ops.within(km = 100, lon = 13.4, lat = 52.5))\"\n\
        stamped = \"nums.map(ops.scaled_at(factor = 10))\"\n\
        transformed = 'nums.transform(\"rdd.map(ops.plus(1000))\")'\n\
        totals = \"pairs.map_values(ops.plus(1)).update_state_by_key(ops.sum_with_times)\"\n";
    let streams =
        ["plus4", "minus10", "twice", "errors", "warns", "near", "region", "stamped", "transformed", "totals"];
    let body = format!("{body}{}", streams.iter().map(|s| saved(s)).collect::<String>());
    let files = [("nums.jsonl", NUMS), ("logs.jsonl", LOGS), ("points.jsonl", POINTS), ("pairs.jsonl", PAIRS)];
    let mut trees = Vec::new();
    let mut dirs = Vec::new();
    for master in ["local[2]", "local-cluster[2]"] {
        let tmp = tempfile::tempdir().unwrap();
        let job = write_job(tmp.path(), &body, &files);
        ok(&run_on(&job, master, &[]));
        trees.push(tree(&tmp.path().join("out")));
        dirs.push(tmp);
    }
    assert!(!trees[0].is_empty());
    assert_eq!(trees[0], trees[1], "local-cluster[2] writes the same files, byte for byte, as local[2]");
    let out = |s: &str| -> BTreeMap<i64, Vec<String>> { read_outputs(&dirs[0].path().join("out"), s) };
    let l = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(out("plus4")[&1000], l(&["5", "6", "7"]));
    assert_eq!(out("plus4")[&2000], l(&["14"]));
    assert_eq!(out("minus10")[&1000], l(&["-9", "-8", "-7"]), "a named, negative parameter");
    // One export used with two parameters in one pipeline: each use keeps
    // its own.
    assert_eq!(out("twice")[&1000], l(&["210", "212", "214"]));
    assert_eq!(out("errors")[&1000], l(&["ERROR disk full", "ERROR again"]));
    assert_eq!(out("warns")[&1000], l(&["WARN slow"]));
    assert_eq!(out("near")[&1000], l(&["(52.52,13.4)"]), "Potsdam and Hamburg are farther than 10 km");
    assert_eq!(out("region")[&1000], l(&["(52.52,13.4)", "(52.39,13.06)"]), "named parameters in any order");
    assert_eq!(out("stamped")[&1000], l(&["(10,1000)", "(20,1000)", "(30,1000)"]));
    assert_eq!(out("stamped")[&2000], l(&["(100,2000)"]), "each batch's own time");
    assert_eq!(out("transformed")[&2000], l(&["1010"]), "parameters inside a transform expression");
    // update_state_by_key's function got each batch's time: the state
    // lists the batches that brought values.
    let totals = out("totals");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(totals[&1000].clone()), l(&["(a,(2,[1000]))", "(b,(3,[1000]))"]));
    assert_eq!(sorted(totals[&2000].clone()), l(&["(a,(6,[1000, 2000]))", "(b,(3,[1000]))"]));
    assert_eq!(sorted(totals[&3000].clone()), l(&["(a,(6,[1000, 2000]))", "(b,(3,[1000]))"]));
}

#[test]
fn malformed_parameter_lists_are_refused_naming_the_line() {
    let cases: &[(&str, &str)] = &[
        ("nums.map(ops.plus(4)", "unterminated argument list of map"),
        ("nums.map(ops.plus(4, )", "expected a value"),
        ("nums.map(ops.plus(4 5))", "expected `,` or `)` after a value, found `5`"),
        ("nums.map(ops.plus(n = ))", "expected a value"),
        ("nums.map(ops.plus(n = 1, 2))", "a positional value follows a named one"),
        ("nums.map(ops.plus(10s))", "`10s` is not a value"),
        ("nums.map(ops.plus(n = 1, n = 2))", "parameter \"n\" is given twice"),
        ("nums.map(ops.plus(99999999999999999999))", "number too large"),
        // A bare name is a dataset's records; this job has none.
        (
            "nums.map(ops.plus(four))",
            "`four` is neither a value (a number, \"text\", true, false or null) nor a dataset",
        ),
        // Found by the probe when the job loads, not in its first batch.
        ("nums.map(ops.plus(m = 1))", "unknown parameter `m` (parameters: n)"),
        ("nums.map(ops.plus())", "missing parameter `n`"),
        ("nums.map(ops.plus(\"four\"))", "parameter `n`"),
        ("nums.map(ops.double(2))", "map:double takes no parameters"),
        // A component (ABI v2) built without weir:udf/params takes none: a
        // clear error, not a silent drop.
        ("nums.flat_map(py.split(1))", "does not export the interface weir:udf/params@2.0.0"),
    ];
    for (expr, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let body = format!(
            "[sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n\n[streams]\nx = '{expr}'\n{}",
            saved("x")
        );
        let job = write_job(tmp.path(), &body, &[("nums.jsonl", NUMS)]);
        let out = run_on(&job, "local[2]", &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{expr} was accepted:\n{err}");
        // `batch_interval` is line 1, `x = ...` line 7.
        assert!(err.contains("job.toml:7: stream x"), "{expr}: the error names the file and line:\n{err}");
        assert!(err.contains(want), "{expr}: expected {want:?} in:\n{err}");
        assert!(!err.contains("batch 1000 ms"), "{expr}: refused before any batch ran:\n{err}");
    }
}

#[test]
fn a_changed_parameter_refuses_recovery_with_a_diff_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let body = |n: i64| {
        format!(
            "[sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n\
             [streams]\ntotals = \"pairs.map_values(ops.plus({n})).update_state_by_key(ops.sum_with_times)\"\n{}",
            saved("totals")
        )
    };
    let job = write_job(tmp.path(), &body(1), &[("pairs.jsonl", PAIRS)]);
    ok(&run_on(&job, "local[2]", &["--batches", "2"]));
    // The same job with another parameter.
    write_job(tmp.path(), &body(2), &[]);
    let out = run_on(&job, "local[2]", &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a changed parameter continued the old state:\n{err}");
    assert!(err.contains("stateful stream \"totals\""), "{err}");
    assert!(err.contains("- totals: map_values(testops.plus(1))"), "the diff shows the old parameter: {err}");
    assert!(err.contains("+ totals: map_values(testops.plus(2))"), "the diff shows the new parameter: {err}");
    // Unchanged, it recovers.
    write_job(tmp.path(), &body(1), &[]);
    let err = ok(&run_on(&job, "local[2]", &[]));
    assert!(err.contains("recovered from checkpoint"), "{err}");
}

#[test]
fn udf_check_says_whether_a_module_takes_parameters_and_the_batch_time() {
    let out = run(weir().args(["udf", "check"]).arg(module("testops.wasm")));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    assert!(s.contains("parameters: yes (exports weir_params"), "{s}");
    assert!(s.contains("batch time: yes (exports weir_batch_time)"), "{s}");
    for m in ["c_params.wasm", "params_as.wasm"] {
        let out = run(weir().args(["udf", "check"]).arg(module(m)));
        let s = text(&out.stdout);
        assert!(s.contains("parameters: yes (exports weir_params"), "{m}: {s}");
        assert!(s.contains("batch time: yes (exports weir_batch_time)"), "{m}: {s}");
    }
    let out = run(weir().args(["udf", "check"]).arg(module("wat/wordcount.wat")));
    let s = text(&out.stdout);
    assert!(s.contains("parameters: no (no weir_params export)"), "{s}");
    assert!(s.contains("batch time: no (no weir_batch_time export)"), "{s}");
}

#[test]
fn c_and_assemblyscript_guests_read_parameters_and_the_batch_time_as_the_rust_sdk_does() {
    // The same streams over testops (Rust SDK), c_params.wasm (weir_abi.h)
    // and params_as.wasm (the AssemblyScript SDK).
    let streams = [
        ("plus4", "nums.map({m}.plus(4))"),
        ("minus10", "nums.map({m}.plus(n = -10))"),
        ("errors", "logs.filter({m}.level_is(\"ERROR\"))"),
        ("warns", "logs.filter({m}.level_is(\"WARN\"))"),
        ("stamped", "nums.map({m}.scaled_at(factor = 10))"),
        ("named", "ids.map({m}.lookup(users))"),
    ];
    let all: Vec<&str> = streams.iter().map(|(n, _)| *n).collect();
    let mods: Vec<(&str, &[&str])> = ["ops", "c", "asc"].iter().map(|m| (*m, &all[..])).collect();
    let dirs = on_both_masters(&mods, &streams);
    let l = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for dir in &dirs {
        let out = |s: &str| -> BTreeMap<i64, Vec<String>> { read_outputs(&dir.path().join("out"), s) };
        for m in ["c", "asc"] {
            let o = |s: &str| out(&format!("{m}_{s}"));
            assert_eq!(o("plus4")[&1000], l(&["5", "6", "7"]), "{m}");
            assert_eq!(o("plus4")[&2000], l(&["14"]), "{m}");
            assert_eq!(o("minus10")[&1000], l(&["-9", "-8", "-7"]), "{m}: a named, negative parameter");
            assert_eq!(o("errors")[&1000], l(&["ERROR disk full", "ERROR again"]), "{m}");
            assert_eq!(o("warns")[&1000], l(&["WARN slow"]), "{m}: the parameter changes the result");
            assert_eq!(o("stamped")[&1000], l(&["(10,1000)", "(20,1000)", "(30,1000)"]), "{m}");
            assert_eq!(o("stamped")[&2000], l(&["(100,2000)"]), "{m}: each batch's own time");
            assert_eq!(o("named")[&1000], l(&["(u1,Ada)", "(u9,null)"]), "{m}: a dataset as a lookup table");
            assert_eq!(o("named")[&2000], l(&["(u2,Bob)"]), "{m}");
            // And every stream is the Rust SDK's, batch for batch.
            for (name, _) in streams {
                assert_eq!(o(name), out(&format!("ops_{name}")), "{m}_{name} differs from the Rust SDK's");
            }
        }
    }
    // A function that takes no parameters refuses them when the job loads,
    // and one that needs them names the missing one.
    for m in ["c", "asc"] {
        for (expr, want) in
            [("nums.map({m}.double(3))", "map:double takes no parameters"), ("nums.map({m}.plus)", "no parameter n")]
        {
            let err = refused_on_local(&expr.replace("{m}", m));
            assert!(err.contains(want), "{m}: {expr}: expected {want:?} in {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // The AssemblyScript SDK checks what the module declared
    // (`takesParams("map:plus", ["n"])`) itself, when the job loads: an
    // unknown, repeated or missing name, too many values.
    for (expr, want) in [
        ("nums.map(asc.plus(m = 1))", "unknown parameter `m` (parameters: n)"),
        ("nums.map(asc.plus(1, n = 2))", "parameter `n` is given twice"),
        ("nums.map(asc.plus())", "missing parameter `n`"),
        ("nums.map(asc.plus(1, 2))", "map:plus takes 1 parameter(s) (n), given 2 by position"),
        ("nums.map(asc.scaled_at(n = 2))", "unknown parameter `n` (parameters: factor)"),
    ] {
        let err = refused_on_local(expr);
        assert!(err.contains("weir_params refused") && err.contains(want), "{expr}: expected {want:?} in {err}");
        assert!(!err.contains("batch 1000 ms"), "{expr}: refused before any batch ran:\n{err}");
    }
}

#[test]
fn components_read_parameters_as_the_rust_sdk_does_and_alike_on_both_masters() {
    // The same streams over testops (Rust SDK), params_js.wasm (the
    // JavaScript SDK) and params_py.wasm (the Python SDK): components that
    // export weir:udf/params. On local-cluster[2] the executor processes
    // load the components themselves and get each use's parameters with
    // its task.
    let streams = [
        ("plus4", "nums.map({m}.plus(4))"),
        ("minus10", "nums.map({m}.plus(n = -10))"),
        ("twice", "nums.map({m}.plus(4)).map({m}.plus(100)).map({m}.double)"),
        ("errors", "logs.filter({m}.level_is(\"ERROR\"))"),
        ("warns", "logs.filter({m}.level_is(\"WARN\"))"),
        ("stamped", "nums.map({m}.scaled_at(factor = 10))"),
        ("named", "ids.map({m}.lookup(users))"),
    ];
    // udfs/python/params.py has plus, level_is and double only.
    let mods: [(&str, &[&str]); 3] = [
        ("ops", &["plus4", "minus10", "twice", "errors", "warns", "stamped", "named"]),
        ("js", &["plus4", "minus10", "twice", "errors", "warns", "stamped", "named"]),
        ("pyp", &["plus4", "minus10", "twice", "errors", "warns"]),
    ];
    let dirs = on_both_masters(&mods, &streams);
    let trees: Vec<_> = dirs.iter().map(|d| tree(&d.path().join("out"))).collect();
    assert!(!trees[0].is_empty());
    assert_eq!(
        trees[0], trees[1],
        "components with parameters write the same files on local-cluster[2] as on local[2], byte for byte"
    );
    let l = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let out = |s: &str| -> BTreeMap<i64, Vec<String>> { read_outputs(&dirs[0].path().join("out"), s) };
    for (m, names) in [mods[1], mods[2]] {
        let o = |s: &str| out(&format!("{m}_{s}"));
        assert_eq!(o("plus4")[&1000], l(&["5", "6", "7"]), "{m}");
        assert_eq!(o("plus4")[&2000], l(&["14"]), "{m}");
        assert_eq!(o("minus10")[&1000], l(&["-9", "-8", "-7"]), "{m}: a named, negative parameter");
        assert_eq!(o("twice")[&1000], l(&["210", "212", "214"]), "{m}: each use keeps its own parameters");
        assert_eq!(o("errors")[&1000], l(&["ERROR disk full", "ERROR again"]), "{m}");
        assert_eq!(o("warns")[&1000], l(&["WARN slow"]), "{m}: another parameter, another result");
        if m == "js" {
            assert_eq!(o("stamped")[&1000], l(&["(10,1000)", "(20,1000)", "(30,1000)"]), "Date.now()");
            assert_eq!(o("stamped")[&2000], l(&["(100,2000)"]), "each batch's own time");
            assert_eq!(o("named")[&1000], l(&["(u1,Ada)", "(u9,null)"]), "a dataset as a lookup table");
            assert_eq!(o("named")[&2000], l(&["(u2,Bob)"]));
        }
        // And every stream is the Rust SDK's, batch for batch.
        for &name in names {
            assert_eq!(o(name), out(&format!("ops_{name}")), "{m}_{name} differs from the Rust SDK's");
        }
    }
}

#[test]
fn the_javascript_sdk_refuses_parameters_its_functions_do_not_declare() {
    // Refused when the job loads (set-params, then the probe), with the
    // SDK's message and the job file's line; a function that declares
    // parameters and is given none fails its first call.
    for (expr, want, at_load) in [
        ("nums.map(js.plus(m = 1))", "map:plus: unknown parameter 'm' (it takes: n)", true),
        ("nums.map(js.plus(1, n = 2))", "map:plus: parameter 'n' is given twice", true),
        ("nums.map(js.plus(1, 2))", "map:plus takes 1 parameter(s) (n), given 2 by position", true),
        ("nums.map(js.scaled_at())", "map:scaled_at: missing parameter(s) factor", true),
        ("nums.map(js.double(3))", "map:double takes no parameters", true),
        ("nums.map(js.plus)", "map:plus needs parameters (n)", false),
    ] {
        let err = refused_on_local(expr);
        assert!(err.contains(want), "{expr}: expected {want:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        if at_load {
            assert!(err.contains("set-params refused"), "{expr}: refused by the component:\n{err}");
            assert!(err.contains("job.toml:6: stream x"), "{expr}: the error names the file and line:\n{err}");
            assert!(!err.contains("batch 1000 ms"), "{expr}: refused before any batch ran:\n{err}");
        }
    }
    // What `weir udf check` and `weir udf call --param` say of it.
    let out = run(weir().args(["udf", "check"]).arg(module("params_js.wasm")));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    assert!(s.contains("parameters: yes (exports weir:udf/params@2.0.0"), "{s}");
    let out = run(weir().args(["udf", "check"]).arg(module("wordcount_js.wasm")));
    let s = text(&out.stdout);
    assert!(s.contains("parameters: no (does not export weir:udf/params@2.0.0)"), "{s}");
    let call = |param: &str| {
        let out = run(weir()
            .args(["udf", "call"])
            .arg(module("params_js.wasm"))
            .args(["plus", "--input", "[1, 2]", "--param", param]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(call("4"), serde_json::json!([5, 6]));
    assert_eq!(call("n=-10"), serde_json::json!([-9, -8]), "the parameter changes the result");
}
