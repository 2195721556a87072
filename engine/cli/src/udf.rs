//! `weir udf check` and `weir udf call`: the UDF development loop's
//! commands. `check` explains what a module is and what it would need;
//! `call` runs one function on records given as JSON, in the same sandbox
//! and through the same calls a job uses.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use weir::codec::{self, Value};
use weir::udf::inspect::{self, Report};
use weir::udf::{UdfErrorKind, UdfKind, UdfLimits, UdfModule, UdfRuntime};

use crate::cli::print_out;

/// The hint for exports the host cannot see as UDFs.
const NAMING_HINT: &str = "hint: name each UDF export <kind>:<name> (e.g. \"flat_map:split\"), or, when the \
toolchain cannot emit a ':' in an export name, declare the plain exports in a custom section \"weir:exports\" \
with lines like `split = flat_map` (docs/udf-abi.md, section 1)";

/// `weir udf check MODULE`: what the module holds, then the verdict of
/// loading it exactly as a job would. Exit 1 when a job could not use it:
/// invalid, or valid but without a single function.
pub fn check(path: &Path) -> Result<ExitCode> {
    let runtime = UdfRuntime::shared()?;
    let limits = UdfLimits::default();
    let bytes = weir::udf::read_module_file(path, &limits)
        .with_context(|| format!("{} is not a valid Weir UDF module", path.display()))?;
    let report = inspect::inspect(&runtime, &bytes)
        .map_err(|e| anyhow!("{} is not a valid Weir UDF module: {e}", path.display()))?;
    let loaded = UdfModule::from_bytes(
        &runtime,
        path.file_name().map(|n| n.to_string_lossy().into()).unwrap_or_else(|| "?".into()),
        path.to_path_buf(),
        &bytes,
        limits,
    );
    let mut out = String::new();
    match &loaded {
        Ok(m) if !m.functions().is_empty() && m.abi_version() == weir::udf::component::ABI_VERSION => {
            let _ = writeln!(out, "{}: valid Weir UDF component (ABI v{})", path.display(), m.abi_version());
        }
        Ok(m) if !m.functions().is_empty() => {
            let _ = writeln!(out, "{}: valid Weir UDF module (ABI v{})", path.display(), m.abi_version());
        }
        Ok(m) if m.abi_version() == weir::udf::component::ABI_VERSION => {
            let _ = writeln!(out, "{}: a component of UDF ABI v2, but no UDF a job can use", path.display());
        }
        Ok(_) => {
            let _ = writeln!(out, "{}: a core module of UDF ABI v1, but no UDF a job can use", path.display());
        }
        Err(_) if report.component.is_some() => {
            let _ = writeln!(
                out,
                "{}: a WebAssembly component (component model) that is not a valid Weir UDF component",
                path.display()
            );
        }
        Err(_) => {
            let _ = writeln!(out, "{}: a core WebAssembly module that is not a valid Weir UDF module", path.display());
        }
    }
    describe(&mut out, &report, &limits);
    if let Ok(m) = &loaded {
        {
            use weir::udf::cache::CompiledFrom;
            // The inspection compiled a core module (or found it compiled);
            // the load then reused that code.
            let how = match report.compiled_from.unwrap_or(m.compiled_from()) {
                CompiledFrom::Cache => "loaded compiled from the cache",
                CompiledFrom::Compiled | CompiledFrom::Process => "compiled now",
            };
            let dir = weir::udf::cache::cache_root()
                .map(|d| format!(" ({})", d.display()))
                .unwrap_or_else(|| " (cache off)".into());
            let _ = writeln!(out, "  {how}{dir}");
        }
        // What a job may hand it besides batches (ABI §3a).
        let params = if m.takes_params() && m.is_component() {
            "yes (exports weir:udf/params@2.0.0: a job may write module.function(args))"
        } else if m.takes_params() {
            "yes (exports weir_params: a job may write module.function(args))"
        } else if m.is_component() {
            "no (does not export weir:udf/params@2.0.0)"
        } else {
            "no (no weir_params export)"
        };
        let time = if m.takes_batch_time() {
            "yes (exports weir_batch_time)"
        } else if m.is_component() {
            "read from the WASI clocks (a component)"
        } else {
            "no (no weir_batch_time export)"
        };
        let _ = writeln!(out, "  parameters: {params}");
        let _ = writeln!(out, "  batch time: {time}");
        if m.functions().is_empty() {
            out.push_str("  functions: none\n");
        } else {
            out.push_str("  functions:\n");
        }
        for f in m.functions() {
            let via = if f.export == f.kind.export_name(&f.name) {
                String::new()
            } else {
                format!("  (export {:?}, declared in weir:exports)", f.export)
            };
            let _ = writeln!(out, "  {:<15} {}{via}", f.kind.as_str(), f.name);
        }
    }
    print_out(&out)?;
    let m = match loaded {
        Ok(m) => m,
        Err(e) => {
            for h in hints(&report, &e.kind) {
                eprintln!("{h}");
            }
            return Err(e).with_context(|| format!("{} is not a valid Weir UDF module", path.display()));
        }
    };
    if !report.unnamed.is_empty() {
        eprintln!("{NAMING_HINT}");
    }
    if m.functions().is_empty() {
        if report.unnamed.is_empty() {
            eprintln!("hint: a UDF is an export of type {} (docs/udf-abi.md, section 1)", inspect::UDF_EXPORT_TYPE);
        }
        bail!("{} exports no UDF: a job could not call anything in it", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The report's lines: size, imports, memory, exports the host ignores,
/// declarations, a component's interface.
fn describe(out: &mut String, r: &Report, limits: &UdfLimits) {
    let _ = writeln!(out, "  sha256 {}\n  {} bytes (module_bytes limit: {})", r.hash, r.size, limits.module_bytes);
    if let Some(c) = &r.component {
        let _ = writeln!(out, "  component imports:{}", if c.imports.is_empty() { " none" } else { "" });
        if c.imports.iter().any(|i| i.starts_with("wasi:")) {
            out.push_str(
                "    (WASI 0.2 is served by deterministic stand-ins: no files, network or environment; clocks read \
                 the batch time; random numbers seeded per batch and partition; stdout and stderr go to the log)\n",
            );
        }
        for i in &c.imports {
            let wasi = if i.starts_with("wasi:") { "  (WASI 0.2: deterministic stand-in)" } else { "  (not provided)" };
            let _ = writeln!(out, "    {i}{wasi}");
        }
        let _ = writeln!(out, "  component exports:{}", if c.exports.is_empty() { " none" } else { "" });
        for e in &c.exports {
            let _ = writeln!(out, "    {e}");
        }
        return;
    }
    let _ = writeln!(out, "  imports:{}", if r.imports.is_empty() { " none" } else { "" });
    for i in &r.imports {
        let status = if i.provided {
            "provided by the host"
        } else if i.is_wasi() {
            "WASI, not provided: Weir gives UDFs no filesystem, clock, randomness or environment"
        } else {
            "not provided: only weir.log (i32, i32) may be imported"
        };
        let _ = writeln!(out, "    {}.{}: {}  ({status})", i.module, i.name, i.ty);
    }
    match r.memory {
        Some((min, max)) => {
            let max =
                max.map(|m| format!("{m} pages ({})", bytes_text(m.saturating_mul(65536)))).unwrap_or("none".into());
            let _ = writeln!(
                out,
                "  memory: {min} pages ({}) at start, maximum {max}; a job caps it at memory_bytes (default {})",
                bytes_text(min.saturating_mul(65536)),
                bytes_text(limits.memory_bytes as u64)
            );
            if min.saturating_mul(65536) > limits.memory_bytes as u64 {
                let _ = writeln!(
                    out,
                    "    the initial memory is over the default limit: the job needs [limits] memory_bytes >= {}",
                    min.saturating_mul(65536)
                );
            }
        }
        None => out.push_str("  memory: not exported\n"),
    }
    match &r.declared {
        Ok(d) if d.is_empty() => {}
        Ok(d) => {
            out.push_str("  weir:exports declarations:\n");
            for d in d {
                let _ = writeln!(out, "    {} = {}:{}", d.export, d.kind, d.name);
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  weir:exports section: invalid: {e}");
        }
    }
    if !r.unnamed.is_empty() {
        let _ = writeln!(out, "  exports of the UDF type without a kind (ignored):");
        for n in &r.unnamed {
            let _ = writeln!(out, "    {n}");
        }
    }
}

fn bytes_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// What to do about a load error, given what the module holds.
fn hints(r: &Report, e: &UdfErrorKind) -> Vec<String> {
    let mut h = Vec::new();
    match e {
        UdfErrorKind::Component => h.push(
            "hint: a UDF component (ABI v2) exports the interface weir:udf/udf@2.0.0 of udf-sdk/wit \
             (docs/udf-abi.md, version 2)"
                .to_string(),
        ),
        _ if r.component.is_some() => h.push(format!(
            "hint: a UDF component (ABI v2) exports the interface {} of udf-sdk/wit and imports nothing but WASI 0.2 \
             (docs/udf-abi.md, version 2); Python: udf-sdk/python and componentize-py (docs/udfs.md)",
            weir::udf::component::EXPORT_INTERFACE
        )),
        UdfErrorKind::ForbiddenImport { .. } => {
            let missing: Vec<String> =
                r.imports.iter().filter(|i| !i.provided).map(|i| format!("{}.{}", i.module, i.name)).collect();
            h.push(format!(
                "hint: the module needs {} import(s) the host does not provide: {}",
                missing.len(),
                missing.join(", ")
            ));
            if r.imports.iter().any(|i| i.is_wasi()) {
                h.push(
                    "hint: UDFs get no WASI: build for wasm32-unknown-unknown (Rust) or with -nostdlib (C), \
                     and do not print, read files or clocks in a UDF (log through weir.log)"
                        .to_string(),
                );
            }
        }
        UdfErrorKind::UnknownKind { .. } | UdfErrorKind::ExportsSection(_) => h.push(NAMING_HINT.to_string()),
        _ => {}
    }
    h
}

/// `weir udf call MODULE FUNC --input JSON [--kind K] [--param [NAME=]VALUE]...
/// [--batch-time MS] [--partition N]`; `at` is (batch time, partition).
pub fn call(
    path: &Path,
    function: &str,
    input: &str,
    kind: Option<UdfKind>,
    params: &[String],
    at: (Option<i64>, Option<u32>),
) -> Result<ExitCode> {
    let runtime = UdfRuntime::shared()?;
    let m = UdfModule::load(&runtime, path, UdfLimits::default())
        .with_context(|| format!("{} is not a valid Weir UDF module", path.display()))?;
    let kind = resolve_kind(&m, path, function, kind)?;
    m.check_function(function, kind)?;
    // Parsed before the input, so a bad --param is named first.
    let params = parse_params(params)?;
    if let Some(p) = &params {
        m.check_params(function, kind)?;
        // What a job does when it loads: the parameters handed over on a
        // fresh instance, and a call on an empty batch (where the Rust SDK
        // decodes them, naming a missing or unknown one).
        m.probe_params(function, kind, p)?;
    }
    // `@FILE`: the records from a file (a command line holds at most 128 KiB).
    let file_text;
    let input = match input.strip_prefix('@') {
        Some(file) => {
            let bytes = weir::files::read_limited(Path::new(file), weir::source::MAX_BATCHES_FILE_BYTES)
                .with_context(|| format!("reading --input {input}"))?;
            file_text = String::from_utf8(bytes).with_context(|| format!("--input {input} is not UTF-8"))?;
            file_text.as_str()
        }
        None => input,
    };
    let json: serde_json::Value = serde_json::from_str(input).context("--input is not valid JSON")?;
    let serde_json::Value::Array(records) = json else {
        bail!("--input must be a JSON array of records, e.g. '[\"to be\", \"or not\"]'");
    };
    let mut batch = codec::BatchBuilder::new();
    for (i, r) in records.iter().enumerate() {
        let v = input_value(kind, r).map_err(|e| anyhow!("--input record {}: {e}", i + 1))?;
        let mut enc = v.encode();
        codec::validate_value(&mut enc, 0).map_err(|e| anyhow!("--input record {}: {}", i + 1, e.what))?;
        batch.push_raw(&enc);
    }
    let batch = batch.finish();
    let mut inst = m.instantiate_with(at.0, at.1, params.as_ref().map(|p| (function, kind, p)))?;
    let started = Instant::now();
    let out = inst.call(function, kind, &batch)?;
    let elapsed = started.elapsed();
    let fuel = inst.fuel_used();
    let values = Value::decode_batch(&out).map_err(|e| anyhow!("the output batch does not decode: {e}"))?;
    let json: Vec<serde_json::Value> = values.iter().map(value_to_json).collect();
    print_out(&format!("{}\n", serde_json::Value::Array(json)))?;
    let export = m.function(function, kind).map(|f| f.export.clone()).unwrap_or_else(|| kind.export_name(function));
    let mut given = params.as_ref().map(|p| format!(" with parameters ({p})")).unwrap_or_default();
    if let Some(t) = at.0 {
        given.push_str(&format!(" at batch time {t}"));
    }
    eprintln!(
        "weir: {} {export:?} ({kind}){given}: {} record(s) in, {} out; fuel {fuel}; {:.3} ms",
        m.name(),
        records.len(),
        values.len(),
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}

/// The `--param` flags as the parameters a job file would give
/// (`ops.plus(4)`, `geo.within(lat = 52.5)`): `NAME=VALUE` is named, a bare
/// `VALUE` positional; `None` when there are none. A value is a JSON
/// scalar (the values a job file can write) or `@PATH`, a dataset's
/// records as one list (a job file's bare dataset name). Errors name the
/// flag.
fn parse_params(flags: &[String]) -> Result<Option<weir::rdd::UdfParams>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let mut positional = Vec::new();
    let mut named: Vec<(String, Value)> = Vec::new();
    let mut shown = Vec::new();
    let mut has_dataset = false;
    for flag in flags {
        let (name, text) = split_param(flag);
        let what = match name {
            Some(n) => format!("--param {n}"),
            None => format!("--param {flag} (positional value {})", positional.len() + 1),
        };
        let value = if let Some(file) = text.strip_prefix('@') {
            has_dataset = true;
            weir::dstream::dataset_param_from_path(Path::new(file)).with_context(|| what.clone())?
        } else {
            param_value(text).map_err(|e| anyhow!("{what}: {e}"))?
        };
        shown.push(match name {
            Some(n) => format!("{n} = {}", if text.starts_with('@') { text.to_string() } else { show(&value) }),
            None if text.starts_with('@') => text.to_string(),
            None => show(&value),
        });
        match name {
            Some(n) => named.push((n.to_string(), value)),
            None if !named.is_empty() => {
                bail!("{what} follows a named one: give the positional values first, as a job file does")
            }
            None => positional.push(value),
        }
    }
    let p = weir::rdd::UdfParams::new(positional, named).map_err(|e| anyhow!("--param: {e}"))?;
    Ok(Some(if has_dataset { p.with_shown(shown.join(", ")) } else { p }))
}

/// `NAME=VALUE` -> `(Some(NAME), VALUE)`, anything else `(None, flag)`. A
/// name is what a job file allows (letters, digits, `_`, `-`, not starting
/// with a digit or `-`), so a quoted string holding `=` stays positional.
fn split_param(flag: &str) -> (Option<&str>, &str) {
    if let Some((name, value)) = flag.split_once('=') {
        let mut cs = name.chars();
        let starts = cs.next().is_some_and(|c| c.is_alphabetic() || c == '_');
        if starts && cs.all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
            return (Some(name), value);
        }
    }
    (None, flag)
}

/// One parameter value: a JSON number, string, boolean or null.
fn param_value(text: &str) -> Result<Value, String> {
    const KINDS: &str = "a value is a JSON number, \"text\" in double quotes (--param 'level=\"ERROR\"'), \
                         true, false, null, or @PATH (a dataset's records)";
    let j: serde_json::Value = serde_json::from_str(text).map_err(|_| format!("{text:?} is not a value ({KINDS})"))?;
    match j {
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            Err(format!("{text} is not a value a job file can give ({KINDS})"))
        }
        j => weir::source::json_to_value(&j),
    }
}

/// A value as a job file writes it (`"ERROR"`, `4`, `52.5`).
fn show(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The kind to call `function` as: `--kind`, or the only kind the module
/// has a function of that name for.
fn resolve_kind(m: &Arc<UdfModule>, path: &Path, function: &str, kind: Option<UdfKind>) -> Result<UdfKind> {
    let kinds = m.kinds_of(function);
    if let Some(k) = kind {
        return Ok(k);
    }
    match kinds.as_slice() {
        [k] => Ok(*k),
        [] => {
            let have: Vec<String> = m.functions().iter().map(|f| format!("{} ({})", f.name, f.kind)).collect();
            let have = if have.is_empty() { "no functions".to_string() } else { have.join(", ") };
            bail!("module {} has no function named {function:?} (it has: {have})", path.display())
        }
        many => {
            let names: Vec<&str> = many.iter().map(|k| k.as_str()).collect();
            bail!(
                "module {} has {} functions named {function:?} ({}): pass --kind to choose one",
                path.display(),
                many.len(),
                names.join(", ")
            )
        }
    }
}

/// One `--input` entry as the function's kind expects it (docs/udfs.md):
/// records are JSON values with arrays as tuples; a `reduce` group is an
/// array of values (a list); an `update` group `[key, [values], state]`; a
/// `map_with_state` group `[key, [values], state, timing_out]`.
fn input_value(kind: UdfKind, j: &serde_json::Value) -> Result<Value, String> {
    let list = |j: &serde_json::Value, what: &str| -> Result<Value, String> {
        match j {
            serde_json::Value::Array(xs) => {
                Ok(Value::List(xs.iter().map(weir::source::json_to_value).collect::<Result<_, _>>()?))
            }
            _ => Err(format!("{what} must be a JSON array")),
        }
    };
    let parts = |n: usize, shape: &str| -> Result<&Vec<serde_json::Value>, String> {
        match j {
            serde_json::Value::Array(xs) if xs.len() == n => Ok(xs),
            _ => Err(format!("a {kind} group is {shape}")),
        }
    };
    match kind {
        UdfKind::Reduce => {
            let v = list(j, "a reduce group (the values of one key)")?;
            match &v {
                Value::List(xs) if xs.is_empty() => Err("a reduce group must not be empty".into()),
                _ => Ok(v),
            }
        }
        UdfKind::Update => {
            let xs = parts(3, "[key, [new values], state or null]")?;
            let key = weir::source::json_to_value(&xs[0])?;
            let state = weir::source::json_to_value(&xs[2])?;
            Ok(Value::Tuple(vec![key, list(&xs[1], "the new values")?, state]))
        }
        UdfKind::MapWithState => {
            let xs = parts(4, "[key, [values], state or null, timing_out]")?;
            let key = weir::source::json_to_value(&xs[0])?;
            let state = weir::source::json_to_value(&xs[2])?;
            let Some(t) = xs[3].as_bool() else { return Err("timing_out must be true or false".into()) };
            Ok(Value::Tuple(vec![key, list(&xs[1], "the values")?, state, Value::Bool(t)]))
        }
        _ => weir::source::json_to_value(j),
    }
}

/// A decoded value as JSON: tuples and lists as arrays, bytes as a `0x…`
/// string, non-finite doubles as the strings `NaN`, `Infinity`, `-Infinity`.
fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::I64(i) => J::from(*i),
        Value::F64(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or_else(|| J::String(v.to_string())),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(_) => J::String(v.to_string()),
        Value::Tuple(xs) | Value::List(xs) => J::Array(xs.iter().map(value_to_json).collect()),
    }
}
