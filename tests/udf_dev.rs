//! The UDF development loop through the `weir` binary: `weir udf check`
//! explaining what a module is and needs, `weir udf call` running one
//! function on JSON records, modules whose exports are declared in a
//! `weir:exports` custom section, and `weir udf new` templates built and
//! called.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn check(path: &Path) -> (Option<i32>, String, String) {
    let out = run(weir().args(["udf", "check", path.to_str().unwrap()]));
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `weir udf call`: (exit code, stdout parsed as JSON when it succeeded, stderr).
fn call(module: &Path, args: &[&str]) -> (Option<i32>, Option<serde_json::Value>, String) {
    let out = run(weir().args(["udf", "call", module.to_str().unwrap()]).args(args));
    let json = out.status.success().then(|| {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
    });
    (out.status.code(), json, text(&out.stderr))
}

#[test]
fn udf_check_lists_exports_without_a_kind_and_exits_1_with_a_hint() {
    let (code, out, err) = check(&module("check/plain_exports.wat"));
    assert_eq!(code, Some(1), "no usable function is a failure:\n{out}{err}");
    assert!(out.contains("exports of the UDF type without a kind (ignored):\n    identity\n    upper\n"), "{out}");
    assert!(!out.contains("helper"), "an export of another type is no candidate: {out}");
    assert!(err.contains("weir:exports") && err.contains("flat_map:split"), "the hint names both ways out: {err}");
    assert!(err.contains("exports no UDF"), "{err}");
}

#[test]
fn udf_check_lists_every_import_and_what_the_host_provides() {
    let (code, out, err) = check(&module("check/wasi_imports.wat"));
    assert_eq!(code, Some(1), "{out}{err}");
    for line in [
        "wasi_snapshot_preview1.fd_write: func (i32, i32, i32, i32) -> i32  (WASI, not provided",
        "wasi_snapshot_preview1.clock_time_get: func (i32, i64, i32) -> i32  (WASI, not provided",
        "env.abort: func (i32, i32, i32, i32)  (not provided",
        "weir.log: func (i32, i32)  (provided by the host)",
        "memory: 2 pages (128.0 KiB) at start, maximum 16 pages (1.0 MiB)",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // All three, although loading stops at the first.
    assert!(err.contains("3 import(s) the host does not provide"), "{err}");
    assert!(err.contains("wasm32-unknown-unknown"), "{err}");
    assert!(err.contains("imports wasi_snapshot_preview1::fd_write"), "the loader's own error: {err}");
}

#[test]
fn udf_check_recognises_a_component_and_names_its_imports() {
    let (code, out, err) = check(&module("check/component.wat"));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("a WebAssembly component (component model) that is not a valid Weir UDF component"), "{out}");
    assert!(out.contains("wasi:cli/environment@0.2.0  (WASI 0.2: deterministic stand-in)"), "{out}");
    assert!(out.contains("component exports:\n    double\n"), "{out}");
    assert!(err.contains("ABI v2") && err.contains("weir:udf/udf@2.0.0"), "{err}");
    assert!(err.contains("missing export \"weir:udf/udf@2.0.0\""), "the loader's own error: {err}");
}

#[test]
fn udf_check_and_call_run_a_python_component() {
    let m = module("wordcount_py.wasm");
    let (code, out, err) = check(&m);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("valid Weir UDF component (ABI v2)"), "{out}");
    assert!(out.contains("wasi:random/random@0.2.9  (WASI 0.2: deterministic stand-in)"), "{out}");
    assert!(out.contains("component exports:\n") && out.contains("\n    weir:udf/udf@2.0.0\n"), "{out}");
    for f in ["flat_map        split", "map             pair", "reduce          sum", "update          running_total"] {
        assert!(out.contains(f), "missing {f:?} in {out}");
    }
    // The check compiled it or found it compiled: the call reads the cache.
    let (code, json, err) = call(&m, &["split", "--input", r#"["to be or", "not  to be"]"#]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json, Some(serde_json::json!(["to", "be", "or", "not", "to", "be"])), "{err}");
    assert!(err.contains("\"flat_map:split\" (flat_map): 2 record(s) in, 6 out; fuel "), "{err}");
    let (code, json, err) = call(&m, &["running_total", "--input", r#"[["a", [1, 2], null], ["b", [], 5]]"#]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json, Some(serde_json::json!([3, 5])), "{err}");
    // A Python exception: the traceback, naming the module and the function.
    let (code, _, err) = call(&module("hostile_py.wasm"), &["shout", "--input", r#"["x"]"#]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("hostile_py.wasm") && err.contains("\"map:shout\""), "{err}");
    assert!(err.contains("ValueError: bad record 'x'") && err.contains("about to fail on x"), "{err}");
}

#[test]
fn udf_check_shows_the_abi_memory_and_declared_exports_of_a_valid_module() {
    let (code, out, err) = check(&module("wat/wordcount_plain.wat"));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("valid Weir UDF module (ABI v1)"), "{out}");
    assert!(out.contains("imports: none"), "{out}");
    assert!(out.contains("memory: 1 pages (64.0 KiB) at start, maximum none"), "{out}");
    assert!(out.contains("    wc_sum = reduce:sum\n"), "{out}");
    for f in [
        "flat_map        split  (export \"split\", declared in weir:exports)",
        "reduce          sum  (export \"wc_sum\", declared in weir:exports)",
        "reduce          subtract  (export \"subtract\"",
        "map             pair  (export \"pair\"",
    ] {
        assert!(out.contains(f), "missing {f:?} in:\n{out}");
    }
    // A module built with kind:name exports says nothing about declarations.
    let (code, out, _) = check(&module("wordcount.wasm"));
    assert_eq!(code, Some(0));
    assert!(out.contains("weir.log: func (i32, i32)  (provided by the host)") && !out.contains("declared"), "{out}");
}

/// A module with a `weir:exports` section `section` and a UDF-typed export
/// `f` (and a mistyped export `g`).
fn declaring(dir: &Path, name: &str, section: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let wat = format!(
        r#"(module
  (@custom "weir:exports" "{section}")
  (memory (export "memory") 1)
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param i32 i32) (result i64) (i64.const 0))
  (func (export "map:f") (param i32 i32) (result i64) (i64.const 0))
  (func (export "g") (param i32) (result i32) (i32.const 0)))"#
    );
    std::fs::write(&p, wat).unwrap();
    p
}

#[test]
fn bad_weir_exports_sections_are_refused_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    for (section, want) in [
        (
            "f = flat_map\\nnope = map",
            "declares export \\\"nope\\\" as map function \\\"nope\\\", but the module has no such export",
        ),
        ("f = flatmap", "unknown function kind \\\"flatmap\\\""),
        ("f = flat_map\\ng = filter", "export \\\"g\\\" has the wrong type"),
        ("f = map", "map function \\\"f\\\" is both export \\\"f\\\" and export \\\"map:f\\\""),
        ("f = map\\nf = filter", "line 2: export \\\"f\\\" is declared twice"),
    ] {
        let p = declaring(tmp.path(), "m.wat", section);
        let (code, out, err) = check(&p);
        assert_eq!(code, Some(1), "{section:?} accepted:\n{out}");
        let want = want.replace("\\\"", "\"");
        assert!(err.contains(&want), "{section:?}: expected {want:?} in {err}");
        assert!(err.contains("m.wat"), "the error names the module: {err}");
    }
    // A good declaration next to a kind:name export: both functions usable.
    let p = declaring(tmp.path(), "ok.wat", "f = flat_map");
    let (code, out, err) = check(&p);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("flat_map        f  (export \"f\"") && out.contains("map             f\n"), "{out}");
}

#[test]
fn udf_call_runs_each_kind_on_json_records() {
    let wc = module("wordcount.wasm");
    let (code, json, err) = call(&wc, &["split", "--input", r#"["to be or", "  not to be "]"#]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json.unwrap(), serde_json::json!(["to", "be", "or", "not", "to", "be"]));
    // The stats line: module, export, kind, counts, fuel (a number above 0), time.
    let stats = err.lines().find(|l| l.contains("\"flat_map:split\"")).unwrap_or_else(|| panic!("{err}"));
    assert!(stats.contains("wordcount.wasm") && stats.contains("2 record(s) in, 6 out"), "{stats}");
    let fuel: u64 = stats.split("fuel ").nth(1).and_then(|s| s.split(';').next()).unwrap().parse().unwrap();
    assert!(fuel > 0, "{stats}");
    assert!(stats.trim_end().ends_with(" ms"), "{stats}");

    let (_, json, err) = call(&wc, &["pair", "--input", r#"["a", "b"]"#]);
    assert_eq!(json.expect(&err), serde_json::json!([["a", 1], ["b", 1]]));
    // reduce: each entry is a group (a list), folded left.
    let (_, json, err) = call(&wc, &["subtract", "--input", "[[10, 1, 2], [5]]"]);
    assert_eq!(json.expect(&err), serde_json::json!([7, 5]));
    let ops = module("testops.wasm");
    // update: [key, [new values], state]; null state is "no state yet".
    let (_, json, err) = call(&ops, &["total_or_drop", "--input", r#"[["a", [1, 2], null], ["b", [], 5]]"#]);
    let json = json.expect(&err);
    assert_eq!(json.as_array().map(|a| a.len()), Some(2), "{json}");
    assert_eq!(json[0], serde_json::json!(3), "{json}");
    // map_with_state: [key, [values], state, timing_out] -> ([outputs], state).
    let (_, json, err) = call(&ops, &["count_seen", "--input", r#"[["a", [1, 2], null, false]]"#]);
    assert_eq!(json.expect(&err), serde_json::json!([[[["a", 1], ["a", 3]], 3]]));
    let (_, json, err) = call(&ops, &["is_even", "--input", "[1, 2, 3, 4]"]);
    assert_eq!(json.expect(&err), serde_json::json!([false, true, false, true]));
    // --input @FILE: the same records from a file.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lines.json");
    std::fs::write(&file, r#"["to be or", "  not to be "]"#).unwrap();
    let (_, json, err) = call(&wc, &["split", "--input", &format!("@{}", file.display())]);
    assert_eq!(json.expect(&err), serde_json::json!(["to", "be", "or", "not", "to", "be"]));
    let (code, _, err) = call(&wc, &["split", "--input", "@/nonexistent/lines.json"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("reading --input @/nonexistent/lines.json"), "{err}");
    // Doubles stay doubles; non-finite ones are strings.
    let (_, json, err) = call(&ops, &["identity", "--input", "[1.5, 2]"]);
    assert_eq!(json.expect(&err), serde_json::json!([1.5, 2]));
}

#[test]
fn udf_call_errors_name_the_module_the_export_and_what_to_do() {
    let wc = module("wordcount.wasm");
    let two = module("check/two_kinds.wat");
    let ops = module("testops.wasm");
    for (m, args, want) in [
        (&wc, &["nope", "--input", "[]"][..], "has no function named \"nope\" (it has: pair (map),"),
        (
            &wc,
            &["sum", "--kind", "map", "--input", "[]"],
            "export \"map:sum\": module has no map function named \"sum\"",
        ),
        (&two, &["same", "--input", "[1]"], "2 functions named \"same\" (map, flat_map): pass --kind"),
        (&wc, &["split", "--input", "[\"a\""], "--input is not valid JSON"),
        (&wc, &["split", "--input", "{\"a\": 1}"], "must be a JSON array"),
        (&wc, &["sum", "--input", "[[]]"], "record 1: a reduce group must not be empty"),
        (&wc, &["split", "--input", "[1]"], "export \"flat_map:split\" (flat_map): the function reported an error"),
        (&ops, &["parse_int", "--input", "[\"x\"]"], "testops.wasm (sha256 "),
    ] {
        let (code, _, err) = call(m, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    let (code, json, err) = call(&two, &["same", "--kind", "flat_map", "--input", "[1, \"x\"]"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json.unwrap(), serde_json::json!([1, "x"]));
    assert!(err.contains("\"flat_map:same\" (flat_map)"), "{err}");
}

#[test]
fn udf_call_passes_parameters_as_a_job_file_gives_them_and_names_a_bad_one() {
    let ops = module("testops.wasm");
    let ok = |args: &[&str]| {
        let (code, json, err) = call(&ops, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        (json.unwrap(), err)
    };
    // Positional (`ops.plus(4)`) and named (`ops.plus(n = -10)`).
    let (json, err) = ok(&["plus", "--input", "[1, 2]", "--param", "4"]);
    assert_eq!(json, serde_json::json!([5, 6]));
    assert!(err.contains("\"map:plus\" (map) with parameters (4): 2 record(s) in"), "{err}");
    let (json, _) = ok(&["plus", "--input", "[1, 2]", "--param", "n=-10"]);
    assert_eq!(json, serde_json::json!([-9, -8]));
    // A string, and decimals by name in any order.
    let logs = r#"["ERROR disk full", "INFO started", "WARN slow"]"#;
    let (json, _) = ok(&["level_is", "--input", logs, "--param", "\"WARN\""]);
    assert_eq!(json, serde_json::json!([false, false, true]));
    let points = "[[52.52, 13.40], [52.39, 13.06], [53.55, 9.99]]";
    let within = |km: &str| {
        let km = format!("km={km}");
        ok(&["within", "--input", points, "--param", &km, "--param", "lon=13.4", "--param", "lat=52.5"]).0
    };
    assert_eq!(within("10"), serde_json::json!([true, false, false]));
    assert_eq!(within("100"), serde_json::json!([true, true, false]), "the parameter changes the result");
    // @PATH: a dataset's records as one list (a job file's `ops.lookup(users)`).
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users.jsonl");
    std::fs::write(&users, "[[\"u1\", \"Ada\"]]\n[[\"u2\", \"Bob\"]]\n").unwrap();
    let (json, err) = ok(&["lookup", "--input", r#"["u2", "u9"]"#, "--param", &format!("@{}", users.display())]);
    assert_eq!(json, serde_json::json!([["u2", "Bob"], ["u9", null]]));
    assert!(err.contains(&format!("with parameters (@{})", users.display())), "{err}");

    // Errors name the parameter and say what is wrong.
    let wat = module("wat/wordcount.wat");
    let missing = format!("@{}", tmp.path().join("nope.jsonl").display());
    for (m, args, want) in [
        (&ops, &["level_is", "--input", "[]", "--param", "level=ERROR"][..], "--param level: \"ERROR\" is not a value"),
        (
            &ops,
            &["plus", "--input", "[]", "--param", "n=[1, 2]"],
            "--param n: [1, 2] is not a value a job file can give",
        ),
        (
            &ops,
            &["plus", "--input", "[]", "--param", "n=1", "--param", "2"],
            "--param 2 (positional value 1) follows a named one",
        ),
        (
            &ops,
            &["plus", "--input", "[]", "--param", "n=1", "--param", "n=2"],
            "--param: parameter \"n\" is given twice",
        ),
        (&ops, &["plus", "--input", "[1]", "--param", "m=1"], "unknown parameter `m`"),
        (&ops, &["plus", "--input", "[1]", "--param", "m=1"], "export \"map:plus\""),
        (&ops, &["plus", "--input", "[1]", "--param", "\"x\""], "export \"map:plus\""),
        (&ops, &["double", "--input", "[1]", "--param", "3"], "map:double takes no parameters"),
        (
            &wat,
            &["split", "--input", "[]", "--param", "3"],
            "the module takes no parameters (it does not export weir_params)",
        ),
        (&ops, &["lookup", "--input", "[]", "--param", &format!("users={missing}")], "--param users"),
        (&ops, &["lookup", "--input", "[]", "--param", &format!("users={missing}")], "nope.jsonl"),
    ] {
        let (code, _, err) = call(m, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    // Without --param, a function that needs one says which.
    let (code, _, err) = call(&ops, &["plus", "--input", "[1]"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing parameter `n`"), "{err}");
}

/// WordCount over a directory with `module`: the `save_as_text_files` outputs.
fn wordcount_outputs(dir: &Path, module: &Path) -> std::collections::BTreeMap<i64, Vec<String>> {
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "1s"
[modules]
wordcount = "{}"
[sources.lines]
type = "directory"
path = "in"
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
counts = "pairs.reduce_by_key(wordcount.sum)"
[[outputs]]
stream = "counts"
type = "save_as_text_files"
prefix = "out/counts"
"#,
            module.display()
        ),
    )
    .unwrap();
    let out = run(weir().args(["run", job.to_str().unwrap(), "--clock", "logical", "--batches", "1", "--ui", "off"]));
    assert!(out.status.success(), "{}: {}", module.display(), text(&out.stderr));
    read_outputs(&dir.join("out"), "counts")
}

#[test]
fn wordcount_in_every_guest_language_gives_identical_output_through_weir_run() {
    let input = "to be or not to be\nthat is the question\n  whether tis nobler\tin the mind to suffer\nü ü 日本\n";
    let modules = [
        "wordcount.wasm",
        "wordcount_c.wasm",
        "wat/wordcount.wat",
        // Plain export names, declared in a weir:exports section:
        "wat/wordcount_plain.wat",
        "wordcount_as.wasm",
        // Zig (udf-sdk/zig), plain exports declared by the SDK.
        "wordcount_zig.wasm",
        // A Python component (ABI v2).
        "wordcount_py.wasm",
        // A JavaScript component (ABI v2).
        "wordcount_js.wasm",
    ];
    let mut outputs = Vec::new();
    for m in modules {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("in")).unwrap();
        std::fs::write(tmp.path().join("in/a.txt"), input).unwrap();
        outputs.push(wordcount_outputs(tmp.path(), &module(m)));
    }
    assert_eq!(sum_counts(&outputs[0][&1000]), native_counts(input.lines()));
    for (m, o) in modules.iter().zip(&outputs).skip(1) {
        assert_eq!(outputs[0], *o, "{m} differs from the Rust WordCount");
    }
}

/// Runs a template's `build.sh` in `dir`; panics with its output on failure.
fn build_template(dir: &Path) {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("build.sh").current_dir(dir);
    // The Rust template: the versions and the compiled dependencies of the
    // repository's own UDF build (udfs/), so no resolution and no rebuild of
    // the SDK's dependencies from scratch.
    if dir.join("Cargo.toml").exists() {
        std::fs::copy(repo().join("udfs/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
        let udfs_target = repo().join("udfs/target");
        let target = if udfs_target.is_dir() { udfs_target } else { repo().join("target") };
        cmd.env("CARGO_TARGET_DIR", target);
    }
    // The Python template: the componentize-py udfs/build.sh installed.
    for t in ["udfs/target", "target"] {
        let cpy = repo().join(t).join("componentize-py");
        if cpy.join("bin/componentize-py").exists() {
            cmd.env("COMPONENTIZE_PY", cpy);
            break;
        }
    }
    // The AssemblyScript template: the compiler udfs/build.sh installed.
    for t in ["udfs/target", "target"] {
        let asc = repo().join(t).join("assemblyscript/node_modules/.bin/asc");
        if asc.exists() {
            cmd.env("ASC", asc);
            break;
        }
    }
    // The Zig template: the compiler udfs/build.sh installed.
    for t in ["udfs/target", "target"] {
        let zig = repo().join(t).join("ziglang/ziglang/zig");
        if zig.exists() {
            cmd.env("ZIG", zig);
            break;
        }
    }
    // The JavaScript template: the toolchain udfs/build.sh installed.
    for t in ["udfs/target", "target"] {
        let tc = repo().join(t).join("componentize-js");
        if tc.join("node_modules/@bytecodealliance/componentize-js").is_dir() {
            cmd.env("WEIR_JS_TOOLCHAIN", tc);
            break;
        }
    }
    let out = cmd.output().expect("cannot run bash");
    assert!(out.status.success(), "{} build failed:\n{}{}", dir.display(), text(&out.stdout), text(&out.stderr));
}

#[test]
fn udf_new_templates_build_and_their_functions_run() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["rust", "c", "assemblyscript", "zig", "python", "js"] {
        let dir = tmp.path().join(format!("wc-{lang}"));
        let out = run(weir().args(["udf", "new", lang, "my-wc", "--dir", dir.to_str().unwrap()]));
        assert!(out.status.success(), "{lang}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("bash build.sh"), "it says how to build: {}", text(&out.stdout));
        for f in ["build.sh", "job.toml", "README.md", "in/sample.txt"] {
            assert!(dir.join(f).is_file(), "{lang}: no {f}");
        }
        build_template(&dir);
        let m = dir.join("my_wc.wasm");
        let (code, out, err) = check(&m);
        assert_eq!(code, Some(0), "{lang}: {out}{err}");
        for f in ["flat_map        split", "map             pair", "reduce          sum"] {
            assert!(out.contains(f), "{lang}: missing {f:?} in {out}");
        }
        let (_, json, err) = call(&m, &["split", "--input", r#"["to be or", "not to be"]"#]);
        assert_eq!(json.expect(&err), serde_json::json!(["to", "be", "or", "not", "to", "be"]), "{lang}");
        let (_, json, err) = call(&m, &["pair", "--input", r#"["to"]"#]);
        assert_eq!(json.expect(&err), serde_json::json!([["to", 1]]), "{lang}");
        let (_, json, err) = call(&m, &["sum", "--input", "[[1, 2, 3], [4]]"]);
        assert_eq!(json.expect(&err), serde_json::json!([6, 4]), "{lang}");
        // The job it comes with runs WordCount over its sample.
        let job = dir.join("job.toml");
        let out =
            run(weir().args(["run", job.to_str().unwrap(), "--clock", "logical", "--batches", "1", "--ui", "off"]));
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{lang}: {}", text(&out.stderr));
        for line in ["(to,2)", "(be,2)", "(question,1)"] {
            assert!(stdout.lines().any(|l| l == line), "{lang}: no {line} in {stdout}");
        }
    }
    // Never over a directory with files in it; names must be usable.
    let dir = tmp.path().join("wc-c");
    let out = run(weir().args(["udf", "new", "c", "again", "--dir", dir.to_str().unwrap()]));
    assert!(!out.status.success() && text(&out.stderr).contains("not empty"), "{}", text(&out.stderr));
    let out = run(weir().args(["udf", "new", "c", "../x"]).current_dir(tmp.path()));
    assert!(!out.status.success() && text(&out.stderr).contains("not a usable name"), "{}", text(&out.stderr));
}

#[test]
fn the_c_headers_record_helpers_read_and_write_every_type() {
    let m = module("c_helpers.wasm");
    for (f, input, want) in [
        ("is_long", r#"["ab", "abcd"]"#, serde_json::json!([false, true])),
        ("first", r#"[["k", 1], [[1, 2], 3]]"#, serde_json::json!(["k", [1, 2]])),
        (
            "describe",
            r#"[null, true, 5, 1.5, "s", [1, 2, 3]]"#,
            serde_json::json!([["null", null], ["bool", false], ["i64", 5], ["f64", 3.0], ["str", "s"], ["tuple", 3]]),
        ),
        ("count", r#"[1, 2, "x"]"#, serde_json::json!([3])),
        ("fmax", "[[1.5, -2.0, 3.25], [0.5]]", serde_json::json!([3.25, 0.5])),
        ("swap_pair", r#"[["a", 1], [[2], null]]"#, serde_json::json!([[1, "a"], [null, [2]]])),
    ] {
        let (code, json, err) = call(&m, &[f, "--input", input]);
        assert_eq!(code, Some(0), "{f}: {err}");
        assert_eq!(json.unwrap(), want, "{f}");
    }
    // WEIR_DECLARE: the plain export "swap" is the map function "swap_pair".
    let (_, out, _) = check(&m);
    assert!(out.contains("map             swap_pair  (export \"swap\", declared in weir:exports)"), "{out}");
    // A reader error becomes the guest's error, naming the export.
    let (code, _, err) = call(&m, &["first", "--input", "[[]]"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("export \"key_by:first\" (key_by): the function reported an error: first: an empty tuple"),
        "{err}"
    );
    let (_, _, err) = call(&m, &["is_long", "--input", "[1]"]);
    assert!(err.contains("expected a string"), "{err}");
}

#[test]
fn the_zig_sdk_exports_every_kind_with_parameters_and_the_batch_time() {
    let m = module("zig_helpers.wasm");
    for (f, input, want) in [
        ("double", "[1, -4]", serde_json::json!([2, -8])),
        ("stamp", r#"["a"]"#, serde_json::json!([["a", 0]])),
        ("is_long", r#"["ab", "abcd"]"#, serde_json::json!([false, true])),
        ("first", r#"[["k", 1], [[1, 2], 3]]"#, serde_json::json!(["k", [1, 2]])),
        ("count", r#"[1, 2, "x"]"#, serde_json::json!([3])),
        ("fmax", "[[1.5, -2.0, 3.25], [0.5]]", serde_json::json!([3.25, 0.5])),
        ("swap_pair", r#"[["a", 1], [[2], null]]"#, serde_json::json!([[1, "a"], [null, [2]]])),
        (
            "running",
            r#"[["a", [1, 2], null, false], ["b", [5], 10, false], ["c", [], 3, true]]"#,
            serde_json::json!([[[1, 3], 3], [[15], 15], [[], null]]),
        ),
        // The generic weir.reduce: strings, tuples, optionals, any value.
        ("longest", r#"[["a", "abc", "ab", "xyz"], ["x"]]"#, serde_json::json!(["abc", "x"])),
        ("span", "[[[1, 5], [0, 3], [2, 9]], [[4, 4]]]", serde_json::json!([[0, 9], [4, 4]])),
        ("first_set", "[[null, 4, 5], [null, null]]", serde_json::json!([4, null])),
        ("widest", r#"[[1, "abc", [1, 2], null]]"#, serde_json::json!([[1, 2]])),
    ] {
        let (code, json, err) = call(&m, &[f, "--input", input]);
        assert_eq!(code, Some(0), "{f}: {err}");
        assert_eq!(json.unwrap(), want, "{f}");
    }
    // Every function is a plain export the SDK declared; `swap` is
    // declared by hand (weir.declare) as the map function "swap_pair".
    let (code, out, _) = check(&m);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "map             swap_pair  (export \"swap\", declared in weir:exports)",
        "update          sum_with_times  (export \"sum_with_times\", declared in weir:exports)",
        "map_with_state  running  (export \"running\", declared in weir:exports)",
        "parameters: yes",
        "batch time: yes",
    ] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
    // A reader error is the call's error, naming the export.
    let (code, _, err) = call(&m, &["first", "--input", "[[]]"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("export \"first\" (key_by): the function reported an error: first: an empty tuple"), "{err}");
    let (_, _, err) = call(&m, &["is_long", "--input", "[1]"]);
    assert!(err.contains("expected a string"), "{err}");
    // A value of the wrong type fails the generic reduce, naming the export.
    for (f, input, want) in [
        ("longest", "[[\"a\", 1]]", "export \"longest\" (reduce): the function reported an error: expected a string"),
        ("span", "[[[1, 2, 3]]]", "a tuple of the wrong length"),
        ("span", "[[[1, \"x\"]]]", "expected an i64"),
    ] {
        let (code, _, err) = call(&m, &[f, "--input", input]);
        assert_eq!(code, Some(1), "{f}: {err}");
        assert!(err.contains(want), "{f}: expected {want:?} in {err}");
    }

    // In a job: parameters (positional and named), the batch time, and
    // update_state_by_key's function reading it.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("nums.jsonl"), "[1, 2]\n[10]\n").unwrap();
    std::fs::write(tmp.path().join("pairs.jsonl"), "[[\"a\", 1], [\"b\", 2]]\n[[\"a\", 3]]\n").unwrap();
    let job = |streams: &str| {
        let outs: String = ["plus4", "minus10", "stamped", "totals", "merged"]
            .iter()
            .filter(|s| streams.contains(&format!("{s} =")))
            .map(|s| format!("[[outputs]]\nstream = \"{s}\"\ntype = \"save_as_text_files\"\nprefix = \"out/{s}\"\n"))
            .collect();
        let path = tmp.path().join("job.toml");
        std::fs::write(
            &path,
            format!(
                "batch_interval = \"1s\"\n[modules]\nz = \"{}\"\n[sources.nums]\ntype = \"batches\"\npath = \"nums.jsonl\"\n\
                 [sources.pairs]\ntype = \"batches\"\npath = \"pairs.jsonl\"\n[streams]\n{streams}{outs}",
                m.display()
            ),
        )
        .unwrap();
        // update_state_by_key keeps state: the job needs a checkpoint.
        let ckpt = tmp.path().join("ckpt");
        run(weir()
            .args(["run", path.to_str().unwrap(), "--clock", "logical", "--ui", "off", "--checkpoint"])
            .arg(&ckpt))
    };
    let out = job("plus4 = \"nums.map(z.plus(4))\"\nminus10 = \"nums.map(z.plus(n = -10))\"\n\
         stamped = \"nums.map(z.stamp)\"\ntotals = \"pairs.update_state_by_key(z.sum_with_times)\"\n\
         merged = \"nums.glom().reduce(z.merged)\"\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = |s: &str| read_outputs(&tmp.path().join("out"), s);
    let l = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(got("plus4")[&1000], l(&["5", "6"]));
    assert_eq!(got("plus4")[&2000], l(&["14"]));
    assert_eq!(got("minus10")[&1000], l(&["-9", "-8"]), "a named, negative parameter");
    // weir.reduce over lists: each partition's list (glom), concatenated.
    assert_eq!(got("merged")[&1000], l(&["[1, 2]"]));
    assert_eq!(got("merged")[&2000], l(&["[10]"]));
    assert_eq!(got("stamped")[&1000], l(&["(1,1000)", "(2,1000)"]));
    assert_eq!(got("stamped")[&2000], l(&["(10,2000)"]), "each batch's own time");
    let mut totals = got("totals")[&2000].clone();
    totals.sort();
    assert_eq!(totals, l(&["(a,(4,[1000, 2000]))", "(b,(2,[1000]))"]));
    // A function that takes no parameters refuses them when the job loads.
    let out = job("plus4 = \"nums.map(z.double(3))\"\n");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("map:double takes no parameters"), "{err}");
}

#[test]
fn one_instance_calls_two_kinds_of_one_name() {
    // `map:same` and `flat_map:same` in one job: each operation reaches its
    // own export (a cache keyed by name alone would mix them up).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("in.jsonl"), "[\"a\", \"b\"]\n").unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "1s"
[modules]
two = "{}"
[sources.lines]
type = "batches"
path = "in.jsonl"
[streams]
mapped = "lines.map(two.same)"
flat = "mapped.flat_map(two.same)"
[[outputs]]
stream = "flat"
type = "save_as_text_files"
prefix = "out/flat"
"#,
            module("check/two_kinds.wat").display()
        ),
    )
    .unwrap();
    let out = run(weir().args(["run", job.to_str().unwrap(), "--clock", "logical", "--ui", "off"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outputs = read_outputs(&tmp.path().join("out"), "flat");
    assert_eq!(outputs[&1000], vec!["a", "b"]);
}

#[test]
fn compiled_modules_are_cached_on_disk_for_the_next_process_and_a_damaged_entry_is_recompiled() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let m = module("wordcount.wasm");
    let check_with_cache = || {
        let out = run(weir().env("WEIR_CACHE_DIR", &cache).args(["udf", "check", m.to_str().unwrap()]));
        assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    let first = check_with_cache();
    assert!(first.contains(&format!("  compiled now ({})", cache.display())), "{first}");
    let entries: Vec<_> = std::fs::read_dir(cache.join("modules")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(entries.len(), 1, "one compiled module: {entries:?}");
    assert!(entries[0].extension().is_some_and(|e| e == "cwasm"), "{entries:?}");
    let second = check_with_cache();
    assert!(second.contains("  loaded compiled from the cache"), "{second}");
    // A damaged entry is refused by wasmtime, compiled afresh and rewritten.
    let good = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &good[..good.len() / 3]).unwrap();
    let third = check_with_cache();
    assert!(third.contains("  compiled now"), "{third}");
    assert_eq!(std::fs::read(&entries[0]).unwrap().len(), good.len(), "the entry was rewritten");
    // Off: nothing written, still works.
    let off = tmp.path().join("off");
    let out = run(weir().env("WEIR_CACHE_DIR", "").env("HOME", &off).args(["udf", "check", m.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("  compiled now (cache off)"), "{}", text(&out.stdout));
    assert!(!off.exists(), "the cache off writes nothing");
    // Code loaded from the cache runs.
    let out = run(weir()
        .env("WEIR_CACHE_DIR", &cache)
        .args(["udf", "call", m.to_str().unwrap(), "split"])
        .args(["--input", r#"["to be or"]"#]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!(["to", "be", "or"]));
}

/// The disk cache is bounded (`WEIR_CACHE_MAX_BYTES`): past the bound the
/// least recently used entries go, the newest stays, and a process whose
/// module was evicted compiles it again and runs it.
#[test]
fn the_compiled_code_cache_evicts_the_least_recently_used_entries_past_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let mods = [module("wordcount.wasm"), module("testops.wasm"), module("wordcount_c.wasm")];
    let check = |cache: &Path, max: u64, m: &Path| {
        let out = run(weir().env("WEIR_CACHE_DIR", cache).env("WEIR_CACHE_MAX_BYTES", max.to_string()).args([
            "udf",
            "check",
            m.to_str().unwrap(),
        ]));
        assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    let entries = |cache: &Path| -> BTreeMap<String, u64> {
        std::fs::read_dir(cache.join("modules"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect()
    };
    // Each module's entry (its name starts with the module's SHA-256) and size,
    // from a cache with room for all.
    let sizes = tmp.path().join("sizes");
    let mut entry: Vec<(String, u64)> = Vec::new();
    for m in &mods {
        check(&sizes, 1 << 40, m);
        let new = entries(&sizes).into_iter().find(|(n, _)| !entry.iter().any(|(e, _)| e == n)).unwrap();
        entry.push(new);
    }
    assert_eq!(entries(&sizes).len(), 3);
    // Room for any two entries, not for three.
    let total: u64 = entry.iter().map(|(_, n)| n).sum();
    let bound = total - entry.iter().map(|(_, n)| *n).min().unwrap();
    let cache = tmp.path().join("cache");
    let name = |i: usize| entry[i].0.clone();
    for (i, m) in mods.iter().enumerate() {
        let out = check(&cache, bound, m);
        assert!(out.contains("  compiled now"), "{out}");
        // Distinct modification times, whatever the filesystem's resolution.
        let file = cache.join("modules").join(name(i));
        let t = std::time::SystemTime::now() - Duration::from_secs(100 - 10 * i as u64);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(t).unwrap();
    }
    let left = entries(&cache);
    assert_eq!(left.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![name(1), name(2)];
        v.sort();
        v
    });
    assert!(left.values().sum::<u64>() <= bound, "{left:?} over {bound}");
    // The second is used (loaded from the cache: it becomes the most
    // recently used), then the evicted first is compiled again: the one
    // that goes now is the third, the least recently used.
    assert!(check(&cache, bound, &mods[1]).contains("  loaded compiled from the cache"));
    let again = check(&cache, bound, &mods[0]);
    assert!(again.contains("  compiled now"), "the evicted module is compiled again: {again}");
    let left = entries(&cache);
    assert_eq!(left.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![name(0), name(1)];
        v.sort();
        v
    });
    // Code compiled again after its eviction runs.
    let out = run(weir()
        .env("WEIR_CACHE_DIR", &cache)
        .env("WEIR_CACHE_MAX_BYTES", bound.to_string())
        .args(["udf", "call", mods[0].to_str().unwrap(), "split"])
        .args(["--input", r#"["to be or"]"#]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!(["to", "be", "or"]));
}

#[test]
fn udf_call_hands_the_instance_the_batch_time_given() {
    let m = module("testops.wasm");
    let input = r#"[["a", [1, 2], null], ["b", [4], [10, [7]]]]"#;
    let at = |extra: &[&str]| {
        let mut args = vec!["sum_with_times", "--input", input];
        args.extend_from_slice(extra);
        let (code, json, err) = call(&m, &args);
        assert_eq!(code, Some(0), "{err}");
        json.unwrap()
    };
    // The state records the batch times that brought values: the one given,
    // or 0 without the flag.
    assert_eq!(at(&["--batch-time", "5000"]), serde_json::json!([[3, [5000]], [14, [7, 5000]]]));
    assert_eq!(at(&["--batch-time", "5000", "--partition", "3"]), serde_json::json!([[3, [5000]], [14, [7, 5000]]]));
    assert_eq!(at(&[]), serde_json::json!([[3, [0]], [14, [7, 0]]]));
    let (_, _, err) = call(&m, &["sum_with_times", "--input", input, "--batch-time", "5000"]);
    assert!(err.contains("(update) at batch time 5000: 2 record(s) in"), "{err}");
    let (code, _, err) = call(&m, &["sum_with_times", "--input", input, "--batch-time", "soon"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--batch-time") && err.contains("soon"), "{err}");
}
