//! Job files: TOML in, DStream graph out (`docs/jobs.md`).
//!
//! ```toml
//! batch_interval = "1s"
//!
//! [modules]
//! wordcount = "../udfs/wordcount.wasm"
//!
//! [sources.lines]
//! type = "socket"
//! host = "localhost"
//! port = 9999
//!
//! [streams]
//! words  = "lines.flat_map(wordcount.split)"
//! pairs  = "words.map(wordcount.pair)"
//! counts = "pairs.reduce_by_key(wordcount.sum)"
//!
//! [[outputs]]
//! stream = "counts"
//! type = "print"
//! ```
//!
//! Every error names the file, the line and what was expected.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::dstream::{DStream, ModuleHandle, StreamingContext, Udf};
use crate::scheduler::Clock;
use crate::source::SourceSpec;
use crate::udf::{ModuleRegistry, UdfLimits, UdfRuntime};
use crate::EngineError;

/// A job file problem: where and what.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct JobFileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    batch_interval: Spanned<String>,
    #[serde(default)]
    parallelism: Option<u32>,
    #[serde(default)]
    clock: Option<Spanned<String>>,
    #[serde(default)]
    limits: Option<UdfLimits>,
    #[serde(default)]
    modules: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    sources: BTreeMap<String, Spanned<SourceSpec>>,
    #[serde(default)]
    streams: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    outputs: Vec<Spanned<OutputFile>>,
    /// Stream name -> the initial state of an update_state_by_key stream: a
    /// file like a `batches` source's, whose records are `[key, state]` pairs.
    #[serde(default)]
    initial_state: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputFile {
    stream: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    num: Option<usize>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
}

/// A parsed job, ready to run.
pub struct Job {
    pub path: PathBuf,
    pub context: StreamingContext,
    /// The clock the job asks for (the CLI may override it).
    pub clock: Option<Clock>,
    /// SHA-256 of the job file.
    pub hash: String,
}

/// Parses a duration: `500ms`, `1s`, `2m`, `1h`, or a bare number of ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 1s, 2m"))?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "m" | "min" => n * 60_000,
        "h" => n * 3_600_000,
        u => return Err(format!("invalid duration {s:?}: unknown unit {u:?} (ms, s, m, h)")),
    };
    if ms == 0 {
        return Err(format!("invalid duration {s:?}: must be positive"));
    }
    Ok(Duration::from_millis(ms))
}

/// Loads a job file: parses it, loads its modules, builds its graph.
pub fn load(path: &Path, runtime: std::sync::Arc<UdfRuntime>) -> Result<Job, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| JobFileError {
        file: path.into(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    let hash = crate::udf::ModuleHash::of(text.as_bytes()).hex();
    let line_of = |offset: usize| Some(text[..offset.min(text.len())].matches('\n').count() + 1);
    let err = |span: Option<std::ops::Range<usize>>, message: String| JobFileError {
        file: path.into(),
        line: span.and_then(|s| line_of(s.start)),
        message,
    };
    let file: JobFile = toml::from_str(&text).map_err(|e| err(e.span(), e.message().to_string()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));

    let interval = parse_duration(file.batch_interval.get_ref())
        .map_err(|m| err(Some(file.batch_interval.span()), format!("batch_interval: {m}")))?;
    let clock = match &file.clock {
        None => None,
        Some(c) => Some(match c.get_ref().as_str() {
            "wall" => Clock::Wall,
            "logical" => Clock::Logical,
            other => {
                return Err(
                    err(Some(c.span()), format!("clock: expected \"wall\" or \"logical\", got {other:?}")).into()
                )
            }
        }),
    };
    let registry = std::sync::Arc::new(ModuleRegistry::new(runtime, file.limits.unwrap_or_default()));
    let mut ssc = StreamingContext::with_registry(interval, registry);
    ssc.set_base_dir(&base);
    ssc.set_identity(&path.display().to_string(), &hash);
    if let Some(p) = file.parallelism {
        ssc.set_parallelism(p);
    }

    let mut modules: HashMap<String, ModuleHandle> = HashMap::new();
    for (name, p) in &file.modules {
        let m = ssc.module(p.get_ref()).map_err(|e| err(Some(p.span()), format!("module {name}: {e}")))?;
        modules.insert(name.clone(), m);
    }
    let mut streams: HashMap<String, DStream> = HashMap::new();
    for (name, spec) in &file.sources {
        if let SourceSpec::Socket { max_line_bytes, .. } = spec.get_ref() {
            if !(1..=weir_plan::source::MAX_MAX_LINE_BYTES).contains(max_line_bytes) {
                return Err(err(
                    Some(spec.span()),
                    format!(
                        "source {name}: max_line_bytes must be between 1 and {} (got {max_line_bytes})",
                        weir_plan::source::MAX_MAX_LINE_BYTES
                    ),
                )
                .into());
            }
        }
        let label = format!("{name} ({})", source_type(spec.get_ref()));
        streams.insert(name.clone(), ssc.source(spec.get_ref().clone(), &label));
    }
    let mut b =
        Builder { file: &file, modules: &modules, streams, resolving: Vec::new(), err: &err, base: base.clone() };
    for name in file.streams.keys() {
        b.resolve(name, None)?;
    }
    if file.outputs.is_empty() {
        return Err(
            err(None, "the job has no [[outputs]]: add e.g. { stream = \"counts\", type = \"print\" }".into()).into()
        );
    }
    for o in &file.outputs {
        let span = Some(o.span());
        let o = o.get_ref();
        let s = b.resolve(&o.stream, span.clone())?;
        match o.kind.as_str() {
            "print" => s.print_n(o.num.unwrap_or(10))?,
            "save_as_text_files" => {
                let Some(prefix) = &o.prefix else {
                    return Err(err(span, "save_as_text_files needs prefix = \"dir/name\"".into()).into());
                };
                s.save_as_text_files(prefix, o.suffix.as_deref())?
            }
            k => {
                return Err(err(
                    span,
                    format!("unknown output type {k:?}: expected \"print\" or \"save_as_text_files\""),
                )
                .into())
            }
        }
    }
    Ok(Job { path: path.into(), context: ssc, clock, hash })
}

fn source_type(s: &SourceSpec) -> &'static str {
    match s {
        SourceSpec::Socket { .. } => "socket",
        SourceSpec::Directory { .. } => "directory",
        SourceSpec::Batches { .. } => "batches",
        SourceSpec::Generator { .. } => "generator",
        SourceSpec::Queue { .. } => "queue",
        SourceSpec::Custom { .. } => "custom",
    }
}

struct Builder<'a, E: Fn(Option<std::ops::Range<usize>>, String) -> JobFileError> {
    file: &'a JobFile,
    modules: &'a HashMap<String, ModuleHandle>,
    streams: HashMap<String, DStream>,
    resolving: Vec<String>,
    err: &'a E,
    base: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(u64, String),
    Dot,
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' => i += 1,
            '.' => {
                out.push(Tok::Dot);
                i += 1
            }
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            c if c.is_ascii_digit() => {
                let st = i;
                while i < cs.len() && cs[i].is_ascii_digit() {
                    i += 1;
                }
                let n: u64 =
                    cs[st..i].iter().collect::<String>().parse().map_err(|_| "number too large".to_string())?;
                let us = i;
                while i < cs.len() && cs[i].is_ascii_alphabetic() {
                    i += 1;
                }
                out.push(Tok::Num(n, cs[us..i].iter().collect()));
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' => {
                let st = i;
                while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_' || cs[i] == '-') {
                    i += 1;
                }
                out.push(Tok::Ident(cs[st..i].iter().collect()));
            }
            c => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Arg {
    Name(String),
    Qualified(String, String),
    Num(u64, String),
}

impl<E: Fn(Option<std::ops::Range<usize>>, String) -> JobFileError> Builder<'_, E> {
    fn resolve(&mut self, name: &str, used_at: Option<std::ops::Range<usize>>) -> Result<DStream, EngineError> {
        if let Some(s) = self.streams.get(name) {
            return Ok(s.clone());
        }
        let Some(expr) = self.file.streams.get(name) else {
            let known: Vec<&str> =
                self.streams.keys().map(|s| s.as_str()).chain(self.file.streams.keys().map(|s| s.as_str())).collect();
            return Err(
                (self.err)(used_at, format!("no source or stream named {name:?} (known: {})", sorted(known))).into()
            );
        };
        if self.resolving.iter().any(|n| n == name) {
            return Err((self.err)(Some(expr.span()), format!("stream {name:?} depends on itself")).into());
        }
        self.resolving.push(name.to_string());
        let r = self.build(name, expr);
        self.resolving.pop();
        let s = r?;
        self.streams.insert(name.to_string(), s.clone());
        Ok(s)
    }

    fn build(&mut self, name: &str, expr: &Spanned<String>) -> Result<DStream, EngineError> {
        let span = Some(expr.span());
        let e = |m: String| (self.err)(span.clone(), format!("stream {name}: {m}"));
        let toks = lex(expr.get_ref()).map_err(e)?;
        let mut it = toks.into_iter().peekable();
        let Some(Tok::Ident(first)) = it.next() else {
            return Err(e("expected `<stream>.<operation>(...)`".into()).into());
        };
        let mut cur = self.resolve(&first, span.clone())?;
        while let Some(t) = it.next() {
            if t != Tok::Dot {
                return Err(e(format!("expected `.` before the next operation, found {t:?}")).into());
            }
            let Some(Tok::Ident(op)) = it.next() else {
                return Err(e("expected an operation name after `.`".into()).into());
            };
            if it.next() != Some(Tok::Open) {
                return Err(e(format!("expected `(` after {op}")).into());
            }
            let mut args = Vec::new();
            loop {
                match it.next() {
                    Some(Tok::Close) => break,
                    Some(Tok::Ident(a)) => {
                        if it.peek() == Some(&Tok::Dot) {
                            it.next();
                            let Some(Tok::Ident(b)) = it.next() else {
                                return Err(e(format!("expected a function name after `{a}.`")).into());
                            };
                            args.push(Arg::Qualified(a, b));
                        } else {
                            args.push(Arg::Name(a));
                        }
                    }
                    Some(Tok::Num(n, u)) => args.push(Arg::Num(n, u)),
                    Some(Tok::Comma) => {}
                    _ => return Err(e(format!("unterminated argument list of {op}")).into()),
                }
            }
            cur = self.apply(&cur, &op, &args, name, span.clone()).map_err(|err| match err {
                EngineError::JobFile(f) => EngineError::JobFile(f),
                other => e(format!("{op}: {other}")).into(),
            })?;
        }
        Ok(cur)
    }

    fn apply(
        &mut self,
        s: &DStream,
        op: &str,
        args: &[Arg],
        name: &str,
        span: Option<std::ops::Range<usize>>,
    ) -> Result<DStream, EngineError> {
        let e = |m: String| -> EngineError { (self.err)(span.clone(), format!("stream {name}: {op}: {m}")).into() };
        let udf = |i: usize| -> Result<Udf, EngineError> {
            match args.get(i) {
                Some(Arg::Qualified(m, f)) => match self.modules.get(m) {
                    Some(h) => Ok(h.udf(f)),
                    None => Err(e(format!("no module named {m:?} in [modules]"))),
                },
                _ => Err(e(format!("argument {} must be a function, written module.function", i + 1))),
            }
        };
        let dur = |i: usize| -> Result<Duration, EngineError> {
            match args.get(i) {
                Some(Arg::Num(n, u)) => parse_duration(&format!("{n}{u}")).map_err(e),
                _ => Err(e(format!("argument {} must be a duration such as 10s", i + 1))),
            }
        };
        let opt_dur = |i: usize| -> Result<Option<Duration>, EngineError> {
            if args.len() > i {
                dur(i).map(Some)
            } else {
                Ok(None)
            }
        };
        let int = |i: usize| -> Result<u32, EngineError> {
            match args.get(i) {
                Some(Arg::Num(n, u)) if u.is_empty() && *n > 0 && *n <= u32::MAX as u64 => Ok(*n as u32),
                _ => Err(e(format!("argument {} must be a positive integer", i + 1))),
            }
        };
        let nargs = |lo: usize, hi: usize| -> Result<(), EngineError> {
            if args.len() < lo || args.len() > hi {
                let want = if lo == hi { format!("{lo}") } else { format!("{lo} to {hi}") };
                return Err(e(format!("takes {want} argument(s), got {}", args.len())));
            }
            Ok(())
        };
        let slide = |i: usize| -> Result<Duration, EngineError> {
            Ok(opt_dur(i)?.unwrap_or(Duration::from_millis(s_slide(s) as u64)))
        };
        let other = |i: usize, this: &mut Self| -> Result<DStream, EngineError> {
            match args.get(i) {
                Some(Arg::Name(n)) => this.resolve(n, span.clone()),
                _ => Err(e(format!("argument {} must be a stream name", i + 1))),
            }
        };
        Ok(match op {
            "map" | "flat_map" | "filter" | "map_partitions" | "key_by" | "map_values" | "flat_map_values" => {
                nargs(1, 1)?;
                let f = udf(0)?;
                match op {
                    "map" => s.map(&f)?,
                    "flat_map" => s.flat_map(&f)?,
                    "filter" => s.filter(&f)?,
                    "map_partitions" => s.map_partitions(&f)?,
                    "key_by" => s.key_by(&f)?,
                    "map_values" => s.map_values(&f)?,
                    _ => s.flat_map_values(&f)?,
                }
            }
            "glom" => {
                nargs(0, 0)?;
                s.glom()?
            }
            "count" => {
                nargs(0, 0)?;
                s.count()?
            }
            "count_by_value" => {
                nargs(0, 0)?;
                s.count_by_value()?
            }
            "repartition" => {
                nargs(1, 1)?;
                s.repartition(int(0)?)?
            }
            "reduce" => {
                nargs(1, 1)?;
                s.reduce(&udf(0)?)?
            }
            "reduce_by_key" => {
                nargs(1, 2)?;
                let n = if args.len() > 1 { Some(int(1)?) } else { None };
                s.reduce_by_key_into(&udf(0)?, n)?
            }
            "group_by_key" => {
                nargs(0, 0)?;
                s.group_by_key()?
            }
            "union" | "join" | "left_outer_join" | "right_outer_join" | "full_outer_join" | "cogroup" => {
                nargs(1, 1)?;
                let o = other(0, self)?;
                match op {
                    "union" => s.union(&o)?,
                    "join" => s.join(&o)?,
                    "left_outer_join" => s.left_outer_join(&o)?,
                    "right_outer_join" => s.right_outer_join(&o)?,
                    "full_outer_join" => s.full_outer_join(&o)?,
                    _ => s.cogroup(&o)?,
                }
            }
            "window" => {
                nargs(1, 2)?;
                s.window(dur(0)?, slide(1)?)?
            }
            "reduce_by_window" if matches!(args.get(1), Some(Arg::Qualified(..))) => {
                nargs(3, 4)?;
                s.reduce_by_window_inv(&udf(0)?, &udf(1)?, dur(2)?, slide(3)?)?
            }
            "reduce_by_window" => {
                nargs(2, 3)?;
                s.reduce_by_window(&udf(0)?, dur(1)?, slide(2)?)?
            }
            "count_by_window" => {
                nargs(1, 2)?;
                s.count_by_window(dur(0)?, slide(1)?)?
            }
            "reduce_by_key_and_window" if matches!(args.get(1), Some(Arg::Qualified(..))) => {
                // With an inverse function: (f, inverse, length[, slide][, filter]).
                nargs(3, 5)?;
                let (sl, filter) = match (args.get(3), args.get(4)) {
                    (Some(Arg::Num(..)), f) => (slide(3)?, f.map(|_| udf(4)).transpose()?),
                    (Some(Arg::Qualified(..)), None) => (slide(usize::MAX)?, Some(udf(3)?)),
                    (None, _) => (slide(usize::MAX)?, None),
                    _ => return Err(e("expected (f, inverse, length[, slide][, filter])".into())),
                };
                s.reduce_by_key_and_window_inv(&udf(0)?, &udf(1)?, dur(2)?, sl, filter.as_ref())?
            }
            "reduce_by_key_and_window" => {
                nargs(2, 3)?;
                s.reduce_by_key_and_window(&udf(0)?, dur(1)?, slide(2)?)?
            }
            "update_state_by_key" => {
                nargs(1, 1)?;
                let initial = match self.file.initial_state.get(name) {
                    Some(p) => {
                        let path = self.base.join(p.get_ref());
                        let batches = crate::source::read_batches_file(&path)
                            .map_err(|err| (self.err)(Some(p.span()), format!("initial state of {name}: {err}")))?;
                        let mut pairs = Vec::new();
                        for b in &batches {
                            pairs.extend(weir_codec::Value::decode_batch(b).map_err(|err| e(err.to_string()))?);
                        }
                        Some(pairs)
                    }
                    None => None,
                };
                s.update_state_by_key_with_initial(&udf(0)?, initial)?
            }
            "checkpoint" => {
                nargs(1, 1)?;
                s.checkpoint(dur(0)?)?
            }
            "group_by_key_and_window" => {
                nargs(1, 2)?;
                s.group_by_key_and_window(dur(0)?, slide(1)?)?
            }
            "count_by_value_and_window" => {
                nargs(1, 2)?;
                s.count_by_value_and_window(dur(0)?, slide(1)?)?
            }
            "map_with_state" => {
                return Err(e("map_with_state is not implemented yet (use update_state_by_key)".into()))
            }
            _ => return Err(e("unknown operation (see docs/jobs.md for the list)".into())),
        })
    }
}

fn s_slide(s: &DStream) -> i64 {
    s.slide_ms()
}

fn sorted(mut v: Vec<&str>) -> String {
    v.sort();
    v.join(", ")
}
