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
//! Every error names the file, the line and what was expected. The
//! operations, their arguments and the names offered when one is unknown
//! come from the plan's one list of operations (`weir_plan::ops`), which
//! `docs/jobs.md` is tested against.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::dstream::{DStream, DatasetHandle, ModuleHandle, StateSpec, StreamingContext, Udf};
use crate::rdd::UdfParams;
use crate::scheduler::Clock;
use crate::sink::OutputSpec;
use crate::source::SourceSpec;
use crate::udf::{ModuleRegistry, UdfLimits, UdfLimitsOverrides, UdfRuntime};
use crate::EngineError;
use weir_plan::ops::{self, ArgShape, Op, ParamKind};

/// A job file problem: where and what (defined in [`crate::files`], below
/// the scheduler, which reports it through [`crate::EngineError`]).
pub use crate::files::JobFileError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    batch_interval: Spanned<String>,
    #[serde(default)]
    parallelism: Option<Spanned<u32>>,
    #[serde(default)]
    clock: Option<Spanned<String>>,
    #[serde(default)]
    limits: Option<UdfLimitsOverrides>,
    /// Spark's `spark.streaming.backpressure.enabled`.
    #[serde(default)]
    backpressure: Option<Spanned<bool>>,
    #[serde(default)]
    rate: Option<Spanned<RateFile>>,
    /// `[checkpoint]`: what reading and writing its checkpoints may cost.
    #[serde(default)]
    checkpoint: Option<Spanned<CheckpointFile>>,
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
    /// Dataset name -> a file in the format of a `batches` source, or a
    /// directory of text files: loaded once, used in `transform`
    /// expressions and as UDF parameters.
    #[serde(default)]
    datasets: BTreeMap<String, Spanned<String>>,
}

/// `[rate]`: records per second.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateFile {
    #[serde(default)]
    initial: Option<Spanned<u64>>,
    #[serde(default)]
    min: Option<Spanned<u64>>,
    #[serde(default)]
    max: Option<Spanned<u64>>,
}

/// `[checkpoint]`: the bounds of `weir_plan::limits::CheckpointBounds`,
/// each defaulting to its constant there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    #[serde(default)]
    max_state_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    max_metadata_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    stall_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    max_list_pages: Option<Spanned<u32>>,
    #[serde(default)]
    max_list_keys: Option<Spanned<u32>>,
}

impl CheckpointFile {
    /// The bounds it sets (the rest default), or the span of the first
    /// setting out of its range and why.
    fn bounds(&self) -> Result<weir_plan::limits::CheckpointBounds, (std::ops::Range<usize>, String)> {
        let mut b = weir_plan::limits::CheckpointBounds::default();
        let one = |v: &Option<Spanned<u64>>, set: &mut u64| {
            if let Some(v) = v {
                *set = *v.get_ref();
            }
        };
        one(&self.max_state_bytes, &mut b.max_state_bytes);
        one(&self.max_metadata_bytes, &mut b.max_metadata_bytes);
        one(&self.stall_timeout_ms, &mut b.stall_timeout_ms);
        if let Some(v) = &self.max_list_pages {
            b.max_list_pages = *v.get_ref();
        }
        if let Some(v) = &self.max_list_keys {
            b.max_list_keys = *v.get_ref();
        }
        b.check().map_err(|m| {
            // The line of the setting the message names.
            let span = if m.starts_with("max_state_bytes") {
                self.max_state_bytes.as_ref().map(Spanned::span)
            } else if m.starts_with("max_metadata_bytes") {
                self.max_metadata_bytes.as_ref().map(Spanned::span)
            } else if m.starts_with("stall_timeout_ms") {
                self.stall_timeout_ms.as_ref().map(Spanned::span)
            } else if m.starts_with("max_list_pages") {
                self.max_list_pages.as_ref().map(Spanned::span)
            } else {
                self.max_list_keys.as_ref().map(Spanned::span)
            };
            (span.unwrap_or_default(), format!("[checkpoint] {m}"))
        })?;
        Ok(b)
    }
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
    /// `kafka`: bootstrap brokers, topic, client id, broker timeout.
    #[serde(default)]
    brokers: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// `kafka`: TLS and SASL (`tls = { ca_file = ... }`, `sasl = { ... }`).
    #[serde(default)]
    tls: Option<weir_plan::source::KafkaTls>,
    #[serde(default)]
    sasl: Option<weir_plan::source::KafkaSasl>,
}

/// Where inline SASL passwords are in a job file (`sources.NAME.sasl.password`,
/// `outputs[i].sasl.password`): only what the job hash needs to leave them
/// out. Every other field is ignored here (the full parse checks them).
#[derive(Deserialize)]
struct SecretSpans {
    #[serde(default)]
    sources: BTreeMap<String, HoldsSasl>,
    #[serde(default)]
    outputs: Vec<HoldsSasl>,
}

#[derive(Deserialize)]
struct HoldsSasl {
    #[serde(default)]
    sasl: Option<SaslSecret>,
}

#[derive(Deserialize)]
struct SaslSecret {
    #[serde(default)]
    password: Option<Spanned<toml::Value>>,
}

/// SHA-256 of the job file, as recorded in checkpoints (`job_hash`) — with
/// every inline SASL password replaced by `"<redacted>"` first, so the
/// checkpoint holds no hash of the secret (a hash of a known file with one
/// unknown password is a password verifier) and a rotated password is not
/// a changed job. A file without an inline password hashes as its bytes,
/// as it always did. A file that does not parse hashes as its bytes too
/// (loading it fails anyway, naming the line).
fn job_hash(text: &str) -> String {
    let spans: Vec<std::ops::Range<usize>> = match toml::from_str::<SecretSpans>(text) {
        Ok(f) => {
            let mut v: Vec<_> = f
                .sources
                .into_values()
                .chain(f.outputs)
                .filter_map(|h| h.sasl.and_then(|s| s.password).map(|p| p.span()))
                .collect();
            v.sort_by_key(|r| r.start);
            v
        }
        Err(_) => Vec::new(),
    };
    if spans.is_empty() {
        return crate::udf::ModuleHash::of(text.as_bytes()).hex();
    }
    let mut redacted = String::with_capacity(text.len());
    let mut at = 0;
    for r in spans {
        // Spans come from the parser over `text`; checked all the same.
        let (Some(before), true) = (text.get(at..r.start), r.end <= text.len() && r.start >= at) else {
            continue;
        };
        redacted.push_str(before);
        redacted.push_str("\"<redacted>\"");
        at = r.end;
    }
    redacted.push_str(text.get(at..).unwrap_or_default());
    crate::udf::ModuleHash::of(redacted.as_bytes()).hex()
}

/// A parsed job, ready to run.
pub struct Job {
    pub path: PathBuf,
    pub context: StreamingContext,
    /// The clock the job asks for (the CLI may override it).
    pub clock: Option<Clock>,
    /// SHA-256 of the job file (inline SASL passwords left out, see `job_hash`).
    pub hash: String,
}

/// Largest job file read, in bytes.
pub const MAX_JOB_FILE_BYTES: u64 = 16 << 20;

/// Parses a duration: `500ms`, `1s`, `2m`, `1h`, or a bare number of ms;
/// 1 ms to a year ([`weir_plan::limits::MAX_DURATION_MS`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid duration {s:?}: expected e.g. 500ms, 1s, 2m"));
    }
    let max = weir_plan::limits::MAX_DURATION_MS as u64;
    // Numbers too large for u64 are out of range, not malformed.
    let too_long = || format!("invalid duration {s:?}: longer than the maximum of 1 year ({max} ms)");
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let unit_ms: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        u => return Err(format!("invalid duration {s:?}: unknown unit {u:?} (ms, s, m, h)")),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(too_long)?;
    if ms == 0 {
        return Err(format!("invalid duration {s:?}: must be positive"));
    }
    if ms > max {
        return Err(too_long());
    }
    Ok(Duration::from_millis(ms))
}

/// Reads the job file: a regular file of at most [`MAX_JOB_FILE_BYTES`],
/// UTF-8 text.
fn read_job_file(path: &Path) -> Result<String, JobFileError> {
    let fail = |line: Option<usize>, message: String| JobFileError { file: path.into(), line, message };
    let bytes =
        crate::files::read_limited(path, MAX_JOB_FILE_BYTES).map_err(|e| fail(None, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        fail(Some(line), "not UTF-8 text (a job file is TOML, which is UTF-8)".into())
    })
}

/// `path` made absolute against `base`, `.` and `..` removed, and its
/// directory's symlinks resolved when it exists: two spellings of one place
/// compare equal.
fn normalize(base: &Path, path: &str) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    let joined = base.join(path);
    let absolute =
        if joined.is_absolute() { joined } else { std::env::current_dir().map(|d| d.join(&joined)).unwrap_or(joined) };
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    match (out.parent().and_then(|p| p.canonicalize().ok()), out.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => out,
    }
}

/// The 1-based line of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A job file error at a span of `text` (the file `path` holds): the
/// message with the span's line.
fn span_error<'a>(
    path: &'a Path,
    text: &'a str,
) -> impl Fn(Option<std::ops::Range<usize>>, String) -> JobFileError + 'a {
    move |span, message| JobFileError { file: path.into(), line: span.map(|s| line_at(text, s.start)), message }
}

/// The `[checkpoint]` bounds a job file sets (the rest default), read
/// without loading its modules: `weir checkpoint inspect --job` reads a
/// checkpoint under the bounds its job writes and recovers it under, so a
/// file the job accepts is not reported invalid (nor one it refuses valid).
pub fn checkpoint_bounds(path: &Path) -> Result<weir_plan::limits::CheckpointBounds, JobFileError> {
    /// Only `[checkpoint]`; every other key is the full parser's business.
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        checkpoint: Option<Spanned<CheckpointFile>>,
    }
    let text = read_job_file(path)?;
    let err = span_error(path, &text);
    let file: Only = toml::from_str(&text).map_err(|e| err(e.span(), e.message().to_string()))?;
    match &file.checkpoint {
        None => Ok(weir_plan::limits::CheckpointBounds::default()),
        Some(c) => c.get_ref().bounds().map_err(|(span, m)| {
            let span = if span.is_empty() { c.span() } else { span };
            err(Some(span), m)
        }),
    }
}

/// Loads a job file: parses it, loads its modules, builds its graph.
pub fn load(path: &Path, runtime: std::sync::Arc<UdfRuntime>) -> Result<Job, EngineError> {
    let text = read_job_file(path)?;
    let hash = job_hash(&text);
    let line_of = |offset: usize| Some(line_at(&text, offset));
    let err = span_error(path, &text);
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
    let limits = file.limits.unwrap_or_default().apply(UdfLimits::for_batch_interval(interval.as_millis() as i64));
    let registry = std::sync::Arc::new(ModuleRegistry::new(runtime, limits));
    let mut ssc = StreamingContext::with_registry(interval, registry)
        .map_err(|e| err(Some(file.batch_interval.span()), format!("batch_interval: {e}")))?;
    ssc.set_base_dir(&base);
    ssc.set_identity(&path.display().to_string(), &hash);
    if let Some(p) = &file.parallelism {
        ssc.set_parallelism(*p.get_ref()).map_err(|e| match e {
            EngineError::Graph(m) => err(Some(p.span()), m),
            other => err(Some(p.span()), other.to_string()),
        })?;
    }
    if file.backpressure.is_some() || file.rate.is_some() {
        let r = file.rate.as_ref().map(|r| r.get_ref());
        let value = |f: fn(&RateFile) -> &Option<Spanned<u64>>| r.and_then(|r| f(r).as_ref().map(|v| *v.get_ref()));
        let spec = weir_plan::rate::RateSpec {
            backpressure: file.backpressure.as_ref().is_some_and(|b| *b.get_ref()),
            initial: value(|r| &r.initial),
            min: value(|r| &r.min),
            max: value(|r| &r.max),
        };
        if let Err(m) = spec.check() {
            // The line of the key the message names, else of the table.
            let key = |f: fn(&RateFile) -> &Option<Spanned<u64>>| r.and_then(|r| f(r).as_ref().map(|v| v.span()));
            let span = if m.starts_with("[rate] initial") {
                key(|r| &r.initial)
            } else if m.starts_with("[rate] min") {
                key(|r| &r.min)
            } else if m.starts_with("[rate] max") {
                key(|r| &r.max)
            } else {
                None
            };
            let span = span.or_else(|| file.rate.as_ref().map(|r| r.span()));
            return Err(err(span, m).into());
        }
        ssc.set_rate(spec)?;
    }
    if let Some(c) = &file.checkpoint {
        let bounds = c.get_ref().bounds().map_err(|(span, m)| {
            let span = if span.is_empty() { c.span() } else { span };
            err(Some(span), m)
        })?;
        ssc.set_checkpoint_bounds(bounds)?;
    }
    // A stream named like a source would hide it: every reference to the
    // name would mean one of them, silently.
    for (name, expr) in &file.streams {
        if let Some(src) = file.sources.get(name) {
            let at = line_of(src.span().start).unwrap_or(0);
            return Err(err(
                Some(expr.span()),
                format!("stream {name:?} has the name of the source on line {at}: rename one of them"),
            )
            .into());
        }
    }
    for (name, p) in &file.initial_state {
        if !file.streams.contains_key(name) {
            return Err(err(
                Some(p.span()),
                format!(
                    "initial_state: no stream named {name:?} in [streams] (known: {})",
                    sorted(file.streams.keys().map(|k| k.as_str()).collect())
                ),
            )
            .into());
        }
    }

    // A dataset is named in expressions where streams are: its name must
    // not clash with one, nor with the names a transform expression gives.
    let mut datasets: BTreeMap<String, DatasetHandle> = BTreeMap::new();
    for (name, p) in &file.datasets {
        let clash = if name == "rdd" || name == "other" {
            Some("a transform expression names its RDDs `rdd` and `other`".to_string())
        } else if let Some(s) = file.sources.get(name) {
            Some(format!("the source on line {} has that name", line_of(s.span().start).unwrap_or(0)))
        } else {
            file.streams
                .get(name)
                .map(|s| format!("the stream on line {} has that name", line_of(s.span().start).unwrap_or(0)))
        };
        if let Some(why) = clash {
            return Err(err(Some(p.span()), format!("dataset {name:?}: rename it ({why})")).into());
        }
        let d = ssc.dataset_from_path(name, p.get_ref()).map_err(|e| err(Some(p.span()), e.to_string()))?;
        datasets.insert(name.clone(), d);
    }

    let mut modules: HashMap<String, ModuleHandle> = HashMap::new();
    for (name, p) in &file.modules {
        let m = ssc.module(p.get_ref()).map_err(|e| err(Some(p.span()), format!("module {name}: {e}")))?;
        modules.insert(name.clone(), m);
    }
    let mut streams: HashMap<String, DStream> = HashMap::new();
    for (name, spec) in &file.sources {
        let at = Some(spec.span());
        spec.get_ref().check().map_err(|m| err(at.clone(), format!("source {name}: {m}")))?;
        if let SourceSpec::Batches { path: p } = spec.get_ref() {
            // Read when the job starts; a file that exists is checked now, to
            // name the line (one that does not may yet be written).
            let full = base.join(p);
            if full.exists() {
                crate::files::check_regular(&full, crate::source::MAX_BATCHES_FILE_BYTES)
                    .map_err(|e| err(at.clone(), format!("source {name}: {}: {e}", full.display())))?;
            }
        }
        if let SourceSpec::Kafka {
            brokers,
            topics,
            max_rate_per_partition,
            broker_timeout_ms,
            max_decompressed_bytes,
            tls,
            sasl,
            ..
        } = spec.get_ref()
        {
            let inflate = weir_plan::source::KAFKA_MAX_DECOMPRESSED_BYTES_RANGE;
            let problem = if brokers.split(',').all(|b| b.trim().is_empty()) {
                Some("brokers must name at least one \"host:port\"".to_string())
            } else if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
                Some("topics must name at least one topic (and no empty name)".to_string())
            } else if *max_rate_per_partition == Some(0) {
                Some("max_rate_per_partition must be at least 1".to_string())
            } else if !(1..=3_600_000).contains(broker_timeout_ms) {
                Some(format!("broker_timeout_ms must be between 1 and 3600000 (got {broker_timeout_ms})"))
            } else if !inflate.contains(max_decompressed_bytes) {
                Some(format!(
                    "max_decompressed_bytes must be between {} and {} (got {max_decompressed_bytes})",
                    inflate.start(),
                    inflate.end()
                ))
            } else {
                check_kafka_security(tls.as_deref(), sasl.as_deref(), &base).err()
            };
            if let Some(p) = problem {
                return Err(err(Some(spec.span()), format!("source {name}: {p}")).into());
            }
        }
        let label = format!("{name} ({})", source_type(spec.get_ref()));
        let s = ssc.source(spec.get_ref().clone(), &label);
        s.name_nodes_from(s.node(), name);
        streams.insert(name.clone(), s);
    }
    let mut b = Builder {
        in_transform: None,
        file: &file,
        modules: &modules,
        streams,
        err: &err,
        line_of: &line_of,
        datasets: &datasets,
        base: base.clone(),
        initial_used: Default::default(),
    };
    for name in file.streams.keys() {
        b.resolve(name, None)?;
    }
    // An initial state no update_state_by_key takes would be ignored silently.
    for (name, p) in &file.initial_state {
        if !b.initial_used.contains(name) {
            return Err(err(
                Some(p.span()),
                format!("initial_state: stream {name:?} has no update_state_by_key or map_with_state to start from it"),
            )
            .into());
        }
    }
    if file.outputs.is_empty() {
        return Err(
            err(None, "the job has no [[outputs]]: add e.g. { stream = \"counts\", type = \"print\" }".into()).into()
        );
    }
    // Output prefix (resolved) and suffix -> the line of the output using them.
    let mut prefixes: HashMap<(PathBuf, Option<String>), usize> = HashMap::new();
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
                // Two outputs writing the same directories would overwrite
                // each other's batches.
                let key = (normalize(&base, prefix), o.suffix.clone());
                let line = line_of(o_span_start(&span)).unwrap_or(0);
                if let Some(first) = prefixes.insert(key, line) {
                    return Err(err(
                        span,
                        format!(
                            "save_as_text_files: prefix {prefix:?}{} is already written by the output on line {first}: \
                             two outputs would overwrite each other's batch directories",
                            o.suffix.as_ref().map(|s| format!(" (suffix {s:?})")).unwrap_or_default()
                        ),
                    )
                    .into());
                }
                s.save_as_text_files(prefix, o.suffix.as_deref())?
            }
            "kafka" => {
                let (Some(brokers), Some(topic)) = (&o.brokers, &o.topic) else {
                    return Err(
                        err(span, "a kafka output needs brokers = \"host:port\" and topic = \"name\"".into()).into()
                    );
                };
                let timeout_ms = o.timeout_ms.unwrap_or(60_000);
                check_kafka_security(o.tls.as_ref(), o.sasl.as_ref(), &base).map_err(|m| err(span.clone(), m))?;
                if brokers.split(',').all(|b| b.trim().is_empty())
                    || topic.is_empty()
                    || !(1..=3_600_000).contains(&timeout_ms)
                {
                    return Err(err(
                        span,
                        "a kafka output needs a broker, a topic, and timeout_ms between 1 and 3600000".into(),
                    )
                    .into());
                }
                s.output_spec(OutputSpec::Kafka {
                    brokers: brokers.clone(),
                    topic: topic.clone(),
                    client_id: o.client_id.clone(),
                    timeout_ms,
                    tls: o.tls.clone().map(Box::new),
                    sasl: o.sasl.clone().map(Box::new),
                })?
            }
            k => {
                return Err(err(
                    span,
                    format!("unknown output type {k:?}: expected \"print\", \"save_as_text_files\" or \"kafka\""),
                )
                .into())
            }
        }
    }
    Ok(Job { path: path.into(), context: ssc, clock, hash })
}

fn o_span_start(span: &Option<std::ops::Range<usize>>) -> usize {
    span.as_ref().map(|r| r.start).unwrap_or(0)
}

fn source_type(s: &SourceSpec) -> &'static str {
    match s {
        SourceSpec::Socket { .. } => "socket",
        SourceSpec::Directory { .. } => "directory",
        SourceSpec::Batches { .. } => "batches",
        SourceSpec::Generator { .. } => "generator",
        SourceSpec::Kafka { .. } => "kafka",
        SourceSpec::Queue { .. } => "queue",
        SourceSpec::Custom { .. } => "custom",
    }
}

struct Builder<'a, E: Fn(Option<std::ops::Range<usize>>, String) -> JobFileError> {
    file: &'a JobFile,
    modules: &'a HashMap<String, ModuleHandle>,
    streams: HashMap<String, DStream>,
    err: &'a E,
    /// The line of a byte offset of the job file.
    line_of: &'a dyn Fn(usize) -> Option<usize>,
    /// `[datasets]`, by name.
    datasets: &'a BTreeMap<String, DatasetHandle>,
    base: PathBuf,
    /// The streams whose `[initial_state]` an update_state_by_key or a
    /// map_with_state took.
    initial_used: std::collections::HashSet<String>,
    /// Inside a `transform` expression: the stream `other` names
    /// (`transform_with`'s second stream), if any. No other stream may be
    /// named there.
    in_transform: Option<Option<DStream>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(u64, String),
    /// A number with a decimal point, as written.
    Decimal(String),
    /// Text in double quotes (a transform's expression), without them.
    Str(String),
    Dot,
    Open,
    Close,
    Comma,
    /// `=` between a parameter's name and its value (`km = 10`).
    Eq,
    /// The sign of a negative parameter value (`ops.plus(-4)`).
    Minus,
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
            '=' => {
                out.push(Tok::Eq);
                i += 1
            }
            // A sign only where a value starts (elsewhere `-` is part of a
            // name).
            '-' if cs.get(i + 1).is_some_and(|c| c.is_ascii_digit())
                && matches!(out.last(), Some(Tok::Open | Tok::Comma | Tok::Eq)) =>
            {
                out.push(Tok::Minus);
                i += 1
            }
            '"' => {
                // No escapes: an expression never contains a quote.
                let end = cs[i + 1..].iter().position(|&c| c == '"').ok_or("unterminated \"...\" argument")?;
                out.push(Tok::Str(cs[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
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
                // A decimal fraction (`0.25`): a dot followed by a digit.
                if us == i && cs.get(i) == Some(&'.') && cs.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                    while i < cs.len() && cs[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.push(Tok::Decimal(cs[st..i].iter().collect()));
                    continue;
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
    /// `module.function`, with its parameters when written
    /// `module.function(args)`.
    Qualified(String, String, Option<ParsedParams>),
    Num(u64, String),
    Decimal(String),
    Text(String),
}

/// A function's parameters as written: values, and names of datasets
/// (`ops.lookup(users)`), whose records are the value.
#[derive(Debug)]
struct ParsedParams {
    positional: Vec<ParamVal>,
    named: Vec<(String, ParamVal)>,
}

#[derive(Debug)]
enum ParamVal {
    Value(weir_codec::Value),
    Dataset(String),
}

impl ParsedParams {
    /// The parameters, datasets replaced by their records (a list):
    /// `dataset` finds one by name.
    fn resolve(&self, dataset: &dyn Fn(&str) -> Result<weir_codec::Value, String>) -> Result<UdfParams, String> {
        let show = |v: &ParamVal| match v {
            ParamVal::Value(weir_codec::Value::Str(s)) => format!("{s:?}"),
            ParamVal::Value(other) => other.to_string(),
            ParamVal::Dataset(n) => n.clone(),
        };
        let value = |v: &ParamVal| match v {
            ParamVal::Value(v) => Ok(v.clone()),
            ParamVal::Dataset(n) => dataset(n),
        };
        let positional = self.positional.iter().map(value).collect::<Result<Vec<_>, _>>()?;
        let named = self.named.iter().map(|(n, v)| Ok((n.clone(), value(v)?))).collect::<Result<Vec<_>, String>>()?;
        let p = UdfParams::new(positional, named)?;
        let has_dataset =
            self.positional.iter().chain(self.named.iter().map(|(_, v)| v)).any(|v| matches!(v, ParamVal::Dataset(_)));
        if !has_dataset {
            return Ok(p);
        }
        let mut shown: Vec<String> = self.positional.iter().map(show).collect();
        let mut named: Vec<&(String, ParamVal)> = self.named.iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        shown.extend(named.iter().map(|(n, v)| format!("{n} = {}", show(v))));
        Ok(p.with_shown(shown.join(", ")))
    }
}

/// A stream expression: the stream it starts from and its operations with
/// their arguments, in order.
struct Expr {
    first: String,
    calls: Vec<(String, Vec<Arg>)>,
}

/// Parses `<stream>.<operation>(args)[.<operation>(args)...]`.
fn parse_expr(s: &str) -> Result<Expr, String> {
    let toks = lex(s)?;
    let mut it = toks.into_iter().peekable();
    let Some(Tok::Ident(first)) = it.next() else {
        return Err("expected `<stream>.<operation>(...)`".into());
    };
    let mut calls = Vec::new();
    while let Some(t) = it.next() {
        if t != Tok::Dot {
            return Err(format!("expected `.` before the next operation, found {t:?}"));
        }
        let Some(Tok::Ident(op)) = it.next() else {
            return Err("expected an operation name after `.`".into());
        };
        if it.next() != Some(Tok::Open) {
            return Err(format!("expected `(` after {op}"));
        }
        let mut args = Vec::new();
        loop {
            match it.next() {
                Some(Tok::Close) => break,
                Some(Tok::Ident(a)) => {
                    if it.peek() == Some(&Tok::Dot) {
                        it.next();
                        let Some(Tok::Ident(b)) = it.next() else {
                            return Err(format!("expected a function name after `{a}.`"));
                        };
                        let params = if it.peek() == Some(&Tok::Open) {
                            it.next();
                            Some(parse_params(&mut it, &a, &b)?)
                        } else {
                            None
                        };
                        args.push(Arg::Qualified(a, b, params));
                    } else {
                        args.push(Arg::Name(a));
                    }
                }
                Some(Tok::Num(n, u)) => args.push(Arg::Num(n, u)),
                Some(Tok::Decimal(d)) => args.push(Arg::Decimal(d)),
                Some(Tok::Str(t)) => args.push(Arg::Text(t)),
                Some(Tok::Comma) => {}
                _ => return Err(format!("unterminated argument list of {op}")),
            }
        }
        calls.push((op, args));
    }
    Ok(Expr { first, calls })
}

/// Parses a function's parameter list after its `(`, through its `)`:
/// values (integers, decimals, `"text"`, `true`, `false`, `null`), the
/// positional ones first, then `name = value` ones, separated by commas
/// (`geo.within(lat = 52.5, lon = 13.4, km = 10)`).
fn parse_params(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Tok>>,
    module: &str,
    function: &str,
) -> Result<ParsedParams, String> {
    use weir_codec::Value;
    let what = format!("parameters of {module}.{function}");
    let mut positional: Vec<ParamVal> = Vec::new();
    let mut named: Vec<(String, ParamVal)> = Vec::new();
    // Names given twice are refused here, with the parameters' text.
    let done = |positional: Vec<ParamVal>, named: Vec<(String, ParamVal)>| {
        let names: Vec<(String, Value)> = named.iter().map(|(n, _)| (n.clone(), Value::Null)).collect();
        UdfParams::new(vec![], names).map_err(|m| format!("{what}: {m}"))?;
        Ok(ParsedParams { positional, named })
    };
    let show = |t: Option<Tok>| match t {
        None => "the end of the expression".to_string(),
        Some(Tok::Ident(s)) | Some(Tok::Decimal(s)) => format!("`{s}`"),
        Some(Tok::Num(n, u)) => format!("`{n}{u}`"),
        Some(Tok::Str(s)) => format!("\"{s}\""),
        Some(Tok::Dot) => "`.`".into(),
        Some(Tok::Open) => "`(`".into(),
        Some(Tok::Close) => "`)`".into(),
        Some(Tok::Comma) => "`,`".into(),
        Some(Tok::Eq) => "`=`".into(),
        Some(Tok::Minus) => "`-`".into(),
    };
    if it.peek() == Some(&Tok::Close) {
        it.next();
        return done(positional, named);
    }
    loop {
        // `name = value` or `value`.
        let mut name = None;
        let mut t = it.next();
        if let Some(Tok::Ident(n)) = &t {
            if it.peek() == Some(&Tok::Eq) {
                it.next();
                name = Some(n.clone());
                t = it.next();
            }
        }
        let negative = t == Some(Tok::Minus);
        if negative {
            t = it.next();
        }
        let value = match t {
            Some(Tok::Num(n, u)) if u.is_empty() => {
                let v = if negative { 0i64.checked_sub_unsigned(n) } else { i64::try_from(n).ok() };
                ParamVal::Value(Value::I64(v.ok_or_else(|| {
                    format!("{what}: integer {}{n} does not fit in 64 bits", if negative { "-" } else { "" })
                })?))
            }
            Some(Tok::Num(n, u)) => {
                return Err(format!(
                    "{what}: `{n}{u}` is not a value (a number has no unit here; text is written in double quotes)"
                ))
            }
            Some(Tok::Decimal(d)) => match d.parse::<f64>() {
                Ok(f) if f.is_finite() => ParamVal::Value(Value::F64(if negative { -f } else { f })),
                _ => return Err(format!("{what}: `{d}` is not a finite number")),
            },
            Some(Tok::Str(text)) if !negative => ParamVal::Value(Value::Str(text)),
            Some(Tok::Ident(w)) if !negative && w == "true" => ParamVal::Value(Value::Bool(true)),
            Some(Tok::Ident(w)) if !negative && w == "false" => ParamVal::Value(Value::Bool(false)),
            Some(Tok::Ident(w)) if !negative && w == "null" => ParamVal::Value(Value::Null),
            // A bare name is a dataset (`ops.lookup(users)`), checked when
            // the function is bound.
            Some(Tok::Ident(w)) if !negative => ParamVal::Dataset(w),
            other => {
                return Err(format!(
                    "{what}: expected a value (a number, \"text\", true, false or null), found {}",
                    show(other)
                ))
            }
        };
        match name {
            Some(n) => named.push((n, value)),
            None if !named.is_empty() => {
                return Err(format!("{what}: a positional value follows a named one (write the positional ones first)"))
            }
            None => positional.push(value),
        }
        if positional.len() + named.len() > MAX_PARAMS {
            return Err(format!("{what}: more than {MAX_PARAMS} parameters"));
        }
        match it.next() {
            Some(Tok::Comma) => continue,
            Some(Tok::Close) => break,
            other => return Err(format!("{what}: expected `,` or `)` after a value, found {}", show(other))),
        }
    }
    done(positional, named)
}

/// Most parameters one function use may have.
const MAX_PARAMS: usize = 256;

impl Expr {
    /// The streams the expression reads: the one it starts from and the
    /// stream arguments of its operations (as the list of operations places
    /// them; an operation whose arguments match no form reads none, and
    /// fails when the stream is built).
    fn dependencies(&self) -> Vec<&str> {
        let mut deps = vec![self.first.as_str()];
        for (op, args) in &self.calls {
            let shapes: Vec<ArgShape> = args.iter().map(Arg::shape).collect();
            let Ok((spec, slots)) = ops::select(op, &shapes) else { continue };
            for (param, slot) in spec.params.iter().zip(&slots) {
                if let (ParamKind::Stream, Some(Arg::Name(n))) = (param.kind, slot.and_then(|i| args.get(i))) {
                    deps.push(n);
                }
            }
        }
        deps
    }
}

impl<E: Fn(Option<std::ops::Range<usize>>, String) -> JobFileError> Builder<'_, E> {
    /// The job's datasets, each with the line it is declared on:
    /// `users (line 7), zones (line 8)`, or `none`.
    fn dataset_list(&self) -> String {
        if self.file.datasets.is_empty() {
            return "none: declare one under [datasets]".into();
        }
        let shown: Vec<String> = self
            .file
            .datasets
            .iter()
            .map(|(n, p)| format!("{n} (line {})", (self.line_of)(p.span().start).unwrap_or(0)))
            .collect();
        shown.join(", ")
    }

    /// The `[initial_state]` of stream `name`, read now (`(key, state)` pairs
    /// in the format of a `batches` file), if the job file gives one.
    fn initial_state(&mut self, name: &str) -> Result<Option<Vec<weir_codec::Value>>, EngineError> {
        let Some(p) = self.file.initial_state.get(name) else { return Ok(None) };
        self.initial_used.insert(name.to_string());
        let path = self.base.join(p.get_ref());
        let at = |m: String| (self.err)(Some(p.span()), format!("initial state of {name}: {m}"));
        let batches = crate::source::read_batches_file(&path).map_err(|e| at(e.to_string()))?;
        let mut pairs = Vec::new();
        for b in &batches {
            pairs.extend(weir_codec::Value::decode_batch(b).map_err(|e| at(e.to_string()))?);
        }
        Ok(Some(pairs))
    }

    /// The stream `name` (a source, or a stream built from its expression
    /// after the streams it reads). Depth-first with a stack of its own, not
    /// the thread's: a chain of thousands of streams must not overflow it.
    fn resolve(&mut self, name: &str, used_at: Option<std::ops::Range<usize>>) -> Result<DStream, EngineError> {
        if let Some(s) = self.streams.get(name) {
            return Ok(s.clone());
        }
        // The streams being resolved, each waiting for the one after it.
        let mut pending: Vec<(String, Option<std::ops::Range<usize>>)> = vec![(name.to_string(), used_at)];
        while let Some((n, at)) = pending.last().cloned() {
            if self.streams.contains_key(&n) {
                pending.pop();
                continue;
            }
            let Some(expr) = self.file.streams.get(&n) else {
                let known: Vec<&str> = self
                    .streams
                    .keys()
                    .map(|s| s.as_str())
                    .chain(self.file.streams.keys().map(|s| s.as_str()))
                    .collect();
                return Err(
                    (self.err)(at, format!("no source or stream named {n:?} (known: {})", sorted(known))).into()
                );
            };
            let parsed = parse_expr(expr.get_ref()).ok();
            let deps = parsed.as_ref().map(Expr::dependencies).unwrap_or_default();
            // A dataset is not built (a misplaced one is refused, naming
            // it, when the operation is applied).
            let is_dataset = |d: &str| self.datasets.contains_key(d) && !self.file.streams.contains_key(d);
            match deps.into_iter().find(|d| !self.streams.contains_key(*d) && !is_dataset(d)) {
                Some(d) => {
                    if let Some(looped) = pending.iter().find(|(p, _)| p == d) {
                        let span = self.file.streams.get(&looped.0).map(|e| e.span());
                        return Err((self.err)(span, format!("stream {d:?} depends on itself")).into());
                    }
                    pending.push((d.to_string(), Some(expr.span())));
                }
                None => {
                    let s = self.build(&n, expr)?;
                    self.streams.insert(n, s);
                    pending.pop();
                }
            }
        }
        self.streams
            .get(name)
            .cloned()
            .ok_or_else(|| (self.err)(None, format!("internal: stream {name:?} was not built")).into())
    }

    /// Builds stream `name` from its expression; the streams it reads are
    /// built already (see `resolve`).
    fn build(&mut self, name: &str, expr: &Spanned<String>) -> Result<DStream, EngineError> {
        let span = Some(expr.span());
        let e = |m: String| (self.err)(span.clone(), format!("stream {name}: {m}"));
        let parsed = parse_expr(expr.get_ref()).map_err(e)?;
        let mut cur = self.resolve(&parsed.first, span.clone())?;
        let first_node = cur.graph_len();
        for (op, args) in &parsed.calls {
            cur = self.apply(&cur, op, args, name, span.clone()).map_err(|err| match err {
                EngineError::JobFile(f) => EngineError::JobFile(f),
                other => e(format!("{op}: {other}")).into(),
            })?;
        }
        cur.name_nodes_from(first_node, name);
        Ok(cur)
    }

    /// Applies a transform expression (`rdd.op(args)...`) to `s`: its
    /// operations, each acting on the batch's RDD, are the stream's own
    /// per-batch operations; `other` names `other`.
    fn transform(
        &mut self,
        s: &DStream,
        text: &str,
        other: Option<DStream>,
        name: &str,
        span: Option<std::ops::Range<usize>>,
    ) -> Result<DStream, EngineError> {
        let e =
            |m: String| -> EngineError { (self.err)(span.clone(), format!("stream {name}: transform: {m}")).into() };
        if self.in_transform.is_some() {
            return Err(e("a transform expression cannot contain another transform".into()));
        }
        let parsed = parse_expr(text).map_err(|m| e(format!("{m} in \"{text}\"")))?;
        if parsed.first != "rdd" {
            return Err(e(format!("the expression starts from `rdd` (the batch's RDD), not {:?}", parsed.first)));
        }
        let mut cur = s.clone();
        self.in_transform = Some(other);
        let mut result = Ok(());
        for (op, args) in &parsed.calls {
            let shapes: Vec<ArgShape> = args.iter().map(Arg::shape).collect();
            if let Ok((spec, _)) = ops::select(op, &shapes) {
                if !spec.per_batch() {
                    result = Err(e(format!(
                        "{} does not act on one batch's RDD (windows, stateful operations and transforms are \
                         applied to the stream instead)",
                        spec.signature()
                    )));
                    break;
                }
            }
            match self.apply(&cur, op, args, name, span.clone()) {
                Ok(next) => cur = next,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        self.in_transform = None;
        result.map(|()| cur)
    }

    /// Applies operation `op` to `s`: the form and the meaning of each
    /// argument come from the plan's list of operations (`weir_plan::ops`).
    fn apply(
        &mut self,
        s: &DStream,
        op: &str,
        args: &[Arg],
        name: &str,
        span: Option<std::ops::Range<usize>>,
    ) -> Result<DStream, EngineError> {
        let e = |m: String| -> EngineError { (self.err)(span.clone(), format!("stream {name}: {op}: {m}")).into() };
        let shapes: Vec<ArgShape> = args.iter().map(Arg::shape).collect();
        let (spec, slots) = ops::select(op, &shapes).map_err(|err| match err {
            // Keeps the wording `stream x: unknown operation "y" (valid: ...)`.
            ops::ArgsError::Unknown { .. } => (self.err)(span.clone(), format!("stream {name}: {err}")).into(),
            other => e(other.to_string()),
        })?;
        // One value per parameter, None for an optional one left out.
        let mut vals: Vec<Option<Val>> = Vec::with_capacity(slots.len());
        for (param, slot) in spec.params.iter().zip(&slots) {
            let Some(i) = *slot else {
                vals.push(None);
                continue;
            };
            let what = |m: String| e(format!("argument {} ({}): {m}", i + 1, param.name));
            vals.push(Some(match (param.kind, args.get(i)) {
                (ParamKind::Udf(kind), Some(Arg::Qualified(m, f, params))) => {
                    let Some(h) = self.modules.get(m) else {
                        return Err(what(format!(
                            "no module named {m:?} in [modules] (known: {})",
                            sorted(self.modules.keys().map(|k| k.as_str()).collect())
                        )));
                    };
                    // The kind comes from the list, so a function exported
                    // with another kind is refused here, naming the line.
                    h.module().check_function(f, kind).map_err(|err| e(err.to_string()))?;
                    match params {
                        Some(p) => {
                            let datasets = self.datasets;
                            let valid = self.dataset_list();
                            let p = p
                                .resolve(&|n| match datasets.get(n) {
                                    Some(d) => d.as_param().map_err(|err| err.to_string()),
                                    None => Err(format!(
                                        "parameters of {m}.{f}: `{n}` is neither a value (a number, \"text\", \
                                         true, false or null) nor a dataset (datasets: {valid})"
                                    )),
                                })
                                .map_err(&e)?;
                            h.module().probe_params(f, kind, &p).map_err(|err| e(err.to_string()))?;
                            Val::Udf(h.udf(f).with_params(p))
                        }
                        None => Val::Udf(h.udf(f)),
                    }
                }
                (ParamKind::Duration, Some(Arg::Num(n, u))) => {
                    Val::Duration(parse_duration(&format!("{n}{u}")).map_err(what)?)
                }
                // Every count is a number of partitions.
                (ParamKind::Count, Some(Arg::Num(n, _))) => match u32::try_from(*n) {
                    Ok(n) if n > 0 && n <= weir_plan::limits::MAX_PARTITIONS => Val::Count(n),
                    _ => {
                        return Err(what(format!(
                            "must be a positive integer up to {} (partitions), got {n}",
                            weir_plan::limits::MAX_PARTITIONS
                        )))
                    }
                },
                (ParamKind::Stream, Some(Arg::Name(n))) => match self.in_transform.clone() {
                    None if self.datasets.contains_key(n) && !self.file.streams.contains_key(n) => {
                        return Err(what(format!(
                            "{n:?} is a dataset: name it inside a transform expression, \
                             e.g. transform(\"rdd.{op}({n})\")"
                        )))
                    }
                    None => Val::Stream(self.resolve(n, span.clone())?),
                    Some(Some(o)) if n == "other" => Val::Stream(o),
                    Some(other) => match self.datasets.get(n) {
                        Some(d) => Val::Stream(s.dataset_rdd(d)?),
                        // Another stream's RDD of the same batch: a transform
                        // over several streams (Spark's context-level
                        // `transform`).
                        None if self.file.sources.contains_key(n) || self.file.streams.contains_key(n) => {
                            // (Resolved as outside the expression: the
                            // stream may itself be a transform.)
                            self.in_transform = None;
                            let resolved = self.resolve(n, span.clone());
                            self.in_transform = Some(other);
                            Val::Stream(resolved?)
                        }
                        None => {
                            let valid = self.dataset_list();
                            let o = if other.is_some() { "; `other` is transform_with's stream" } else { "" };
                            let mut streams: Vec<&str> =
                                self.file.sources.keys().chain(self.file.streams.keys()).map(|k| k.as_str()).collect();
                            streams.sort_unstable();
                            return Err(what(format!(
                                "no dataset, source or stream named {n:?} (datasets: {valid}{o}; sources and \
                                 streams: {})",
                                streams.join(", ")
                            )));
                        }
                    },
                },
                (ParamKind::Expr, Some(Arg::Text(t))) => Val::Text(t.clone()),
                (ParamKind::Records, Some(Arg::Num(n, _))) if *n <= weir_plan::limits::MAX_TAKE => Val::Int(*n),
                (ParamKind::Records, Some(Arg::Num(n, _))) => {
                    return Err(what(format!("must be at most {} records, got {n}", weir_plan::limits::MAX_TAKE)))
                }
                (ParamKind::Seed, Some(Arg::Num(n, _))) => Val::Int(*n),
                (ParamKind::Fraction, Some(Arg::Num(n, _))) if *n <= 1 => Val::Fraction(*n as f64),
                (ParamKind::Fraction, Some(Arg::Num(n, _))) => {
                    return Err(what(format!("must be from 0 to 1, got {n}")))
                }
                (ParamKind::Fraction, Some(Arg::Decimal(d))) => match d.parse::<f64>() {
                    Ok(f) if (0.0..=1.0).contains(&f) => Val::Fraction(f),
                    _ => return Err(what(format!("must be from 0 to 1, got {d}"))),
                },
                (ParamKind::Bool, Some(Arg::Name(b))) => Val::Bool(b == "true"),
                (kind, _) => return Err(what(format!("must be {kind}"))),
            }));
        }
        let internal = || e(format!("internal: arguments of {} do not match the list", spec.signature()));
        let udf = |i: usize| match vals.get(i) {
            Some(Some(Val::Udf(u))) => Ok(u),
            _ => Err(internal()),
        };
        let opt_dur = |i: usize| match vals.get(i) {
            Some(Some(Val::Duration(d))) => Ok(Some(*d)),
            Some(None) => Ok(None),
            _ => Err(internal()),
        };
        let dur = |i: usize| opt_dur(i)?.ok_or_else(internal);
        // A window's slide defaults to the stream's own slide, as in Spark.
        let slide = |i: usize| Ok::<_, EngineError>(opt_dur(i)?.unwrap_or(Duration::from_millis(s.slide_ms() as u64)));
        let count = |i: usize| match vals.get(i) {
            Some(Some(Val::Count(n))) => Ok(Some(*n)),
            Some(None) => Ok(None),
            _ => Err(internal()),
        };
        let other = |i: usize| match vals.get(i) {
            Some(Some(Val::Stream(o))) => Ok(o),
            _ => Err(internal()),
        };
        let opt_udf = |i: usize| match vals.get(i) {
            Some(Some(Val::Udf(u))) => Ok(Some(u)),
            Some(None) => Ok(None),
            _ => Err(internal()),
        };
        let int = |i: usize| match vals.get(i) {
            Some(Some(Val::Int(n))) => Ok(*n),
            _ => Err(internal()),
        };
        let fraction = |i: usize| match vals.get(i) {
            Some(Some(Val::Fraction(f))) => Ok(*f),
            _ => Err(internal()),
        };
        // `ascending` defaults to true, as in Spark.
        let ascending = |i: usize| match vals.get(i) {
            Some(Some(Val::Bool(b))) => Ok(*b),
            Some(None) => Ok(true),
            _ => Err(internal()),
        };
        let text = |i: usize| match vals.get(i) {
            Some(Some(Val::Text(t))) => Ok(t.clone()),
            _ => Err(internal()),
        };
        Ok(match spec.op {
            Op::Transform => {
                let t = text(0)?;
                self.transform(s, &t, None, name, span)?
            }
            Op::TransformWith => {
                let (o, t) = (other(0)?.clone(), text(1)?);
                self.transform(s, &t, Some(o), name, span)?
            }
            Op::Map => s.map(udf(0)?)?,
            Op::FlatMap => s.flat_map(udf(0)?)?,
            Op::Filter => s.filter(udf(0)?)?,
            Op::MapPartitions => s.map_partitions(udf(0)?)?,
            Op::KeyBy => s.key_by(udf(0)?)?,
            Op::MapValues => s.map_values(udf(0)?)?,
            Op::FlatMapValues => s.flat_map_values(udf(0)?)?,
            Op::Glom => s.glom()?,
            Op::Repartition => s.repartition(count(0)?.ok_or_else(internal)?)?,
            Op::Union => s.union(other(0)?)?,
            Op::Count => s.count()?,
            Op::Reduce => s.reduce(udf(0)?)?,
            Op::CountByValue => s.count_by_value()?,
            Op::ReduceByKey => s.reduce_by_key_into(udf(0)?, count(1)?)?,
            Op::GroupByKey => s.group_by_key()?,
            Op::Cogroup => s.cogroup(other(0)?)?,
            Op::Join => s.join(other(0)?)?,
            Op::LeftOuterJoin => s.left_outer_join(other(0)?)?,
            Op::RightOuterJoin => s.right_outer_join(other(0)?)?,
            Op::FullOuterJoin => s.full_outer_join(other(0)?)?,
            Op::Window => s.window(dur(0)?, slide(1)?)?,
            Op::ReduceByWindow => s.reduce_by_window(udf(0)?, dur(1)?, slide(2)?)?,
            Op::CountByWindow => s.count_by_window(dur(0)?, slide(1)?)?,
            Op::ReduceByKeyAndWindow => s.reduce_by_key_and_window(udf(0)?, dur(1)?, slide(2)?)?,
            Op::GroupByKeyAndWindow => s.group_by_key_and_window(dur(0)?, slide(1)?)?,
            Op::CountByValueAndWindow => s.count_by_value_and_window(dur(0)?, slide(1)?)?,
            Op::UpdateStateByKey => s.update_state_by_key_with_initial(udf(0)?, self.initial_state(name)?)?,
            Op::ReduceByKeyAndWindowInv => {
                s.reduce_by_key_and_window_inv(udf(0)?, udf(1)?, dur(2)?, slide(3)?, opt_udf(4)?)?
            }
            Op::ReduceByWindowInv => s.reduce_by_window_inv(udf(0)?, udf(1)?, dur(2)?, slide(3)?)?,
            Op::MapWithState => {
                let spec = StateSpec::function(udf(0)?);
                let spec = match opt_dur(1)? {
                    Some(d) => spec.timeout(d),
                    None => spec,
                };
                let spec = match self.initial_state(name)? {
                    Some(pairs) => spec.initial_state(pairs),
                    None => spec,
                };
                s.map_with_state_spec(spec)?
            }
            Op::StateSnapshots => s.state_snapshots()?,
            Op::Checkpoint => s.checkpoint(dur(0)?)?,
            Op::SortByKey => s.sort_by_key_into(ascending(0)?, count(1)?)?,
            Op::SortBy => s.sort_by_into(udf(0)?, ascending(1)?, count(2)?)?,
            Op::Distinct => s.distinct_into(count(0)?)?,
            Op::Subtract => s.subtract(other(0)?)?,
            Op::Intersection => s.intersection(other(0)?)?,
            Op::Sample => s.sample(fraction(0)?, int(1)?)?,
            Op::Take => s.take(int(0)?)?,
            Op::Top => match vals.get(1) {
                Some(Some(Val::Udf(f))) => s.top_by(int(0)?, f)?,
                _ => s.top(int(0)?)?,
            },
            Op::ZipWithIndex => s.zip_with_index()?,
            Op::Cartesian => s.cartesian(other(0)?)?,
            Op::Coalesce => s.coalesce(count(0)?.ok_or_else(internal)?)?,
        })
    }
}

/// An argument's value, of the kind its parameter asks for.
enum Val {
    Udf(Udf),
    Duration(Duration),
    Count(u32),
    Stream(DStream),
    /// A number of records, a seed.
    Int(u64),
    Fraction(f64),
    Bool(bool),
    Text(String),
}

impl Arg {
    fn shape(&self) -> ArgShape {
        match self {
            Arg::Name(n) if n == "true" || n == "false" => ArgShape::Bool,
            Arg::Name(_) => ArgShape::Name,
            Arg::Qualified(..) => ArgShape::Function,
            Arg::Num(_, u) => ArgShape::Number { unit: !u.is_empty() },
            Arg::Decimal(_) => ArgShape::Decimal,
            Arg::Text(_) => ArgShape::Text,
        }
    }
}

fn sorted(mut v: Vec<&str>) -> String {
    v.sort();
    // A stream already built is both in the streams and in the file.
    v.dedup();
    v.join(", ")
}

/// TLS files and SASL settings of a Kafka source or output, checked when the
/// job loads (the error then carries the job file's line).
#[cfg(feature = "kafka")]
fn check_kafka_security(
    tls: Option<&weir_plan::source::KafkaTls>,
    sasl: Option<&weir_plan::source::KafkaSasl>,
    base: &Path,
) -> Result<(), String> {
    crate::kafka_security::KafkaSecurity::load(tls, sasl, base).map(|_| ())
}

#[cfg(not(feature = "kafka"))]
fn check_kafka_security(
    _tls: Option<&weir_plan::source::KafkaTls>,
    _sasl: Option<&weir_plan::source::KafkaSasl>,
    _base: &Path,
) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};

    use weir_plan::ops::{OpSpec, OPERATIONS};

    use crate::udf::UdfKind;

    /// One wasmtime engine for all these tests (compiling is what costs).
    fn runtime() -> Arc<UdfRuntime> {
        static RT: OnceLock<Arc<UdfRuntime>> = OnceLock::new();
        RT.get_or_init(|| UdfRuntime::shared().unwrap()).clone()
    }

    /// A module exporting one stub function per kind, named after its kind:
    /// `stub.map` is a map function, `stub.update` an update function, ...
    /// Nothing runs here, so the stubs only have to have the ABI's types.
    fn stub_module() -> String {
        let mut wat = String::from(
            "(module (memory (export \"memory\") 1)\n\
             (func (export \"weir_abi_version\") (result i32) (i32.const 1))\n\
             (func (export \"weir_alloc\") (param i32) (result i32) (i32.const 1024))\n",
        );
        for k in UdfKind::ALL {
            wat += &format!("(func (export \"{k}:{k}\") (param i32 i32) (result i64) (i64.const 0))\n");
        }
        wat + ")"
    }

    /// The line of the job's first `[streams]` entry.
    const STREAMS_LINE: usize = 11;

    /// Loads a job whose `[streams]` are `streams` (the first on line 11)
    /// and whose output prints stream `out`.
    fn load_job(streams: &str) -> Result<Job, EngineError> {
        load_job_with(streams, "1s")
    }

    fn load_job_with(streams: &str, interval: &str) -> Result<Job, EngineError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stub.wat"), stub_module()).unwrap();
        std::fs::write(dir.path().join("in.jsonl"), "[[\"a\", 1]]\n").unwrap();
        let body = format!(
            "batch_interval = \"{interval}\"\n\
             \n\
             [modules]\n\
             stub = \"stub.wat\"\n\
             \n\
             [sources.lines]\n\
             type = \"batches\"\n\
             path = \"in.jsonl\"\n\
             \n\
             [streams]\n\
             {streams}\n\
             \n\
             [[outputs]]\n\
             stream = \"out\"\n\
             type = \"print\"\n"
        );
        let path = dir.path().join("job.toml");
        std::fs::write(&path, body).unwrap();
        load(&path, runtime())
    }

    /// The error a job gives, as the CLI prints it.
    fn error_of(streams: &str) -> String {
        match load_job(streams) {
            Ok(_) => panic!("accepted:\n{streams}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_error(streams: &str, line: usize, parts: &[&str]) {
        let msg = error_of(streams);
        assert!(msg.contains(&format!("job.toml:{line}: ")), "should name job.toml:{line}: {msg}");
        for p in parts {
            assert!(msg.contains(p), "should say {p:?}: {msg}");
        }
    }

    #[test]
    fn inline_sasl_passwords_are_left_out_of_the_job_hash_and_of_debug_and_serialized_specs() {
        let file = |pw: &str| {
            format!(
                "batch_interval = \"1s\"\n[sources.lines]\ntype = \"kafka\"\nbrokers = \"b:9092\"\ntopics = [\"t\"]\n\
                 [sources.lines.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = {pw}\n\
                 [[outputs]]\nstream = \"lines\"\ntype = \"kafka\"\nbrokers = \"b:9092\"\ntopic = \"o\"\n\
                 sasl = {{ mechanism = \"PLAIN\", username = \"u\", password = {pw} }}\n"
            )
        };
        let secret = file("\"s3cr3t-hunter2\"");
        // Both passwords (source and output) are replaced, in place.
        assert_eq!(job_hash(&secret), crate::udf::ModuleHash::of(file("\"<redacted>\"").as_bytes()).hex());
        assert_ne!(job_hash(&secret), crate::udf::ModuleHash::of(secret.as_bytes()).hex());
        // A rotated password (written as a literal string) is the same job.
        assert_eq!(job_hash(&secret), job_hash(&file("'another one'")));
        // Without a password, the file's bytes as before.
        let plain = "batch_interval = \"1s\"\n";
        assert_eq!(job_hash(plain), crate::udf::ModuleHash::of(plain.as_bytes()).hex());

        let sasl: weir_plan::source::KafkaSasl =
            toml::from_str("mechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"s3cr3t-hunter2\"").unwrap();
        assert_eq!(sasl.password.as_deref(), Some("s3cr3t-hunter2"), "kept in memory for the client");
        let debug = format!("{sasl:?}");
        assert!(!debug.contains("s3cr3t") && debug.contains("<redacted>"), "{debug}");
        let json = serde_json::to_string(&sasl).unwrap();
        assert!(!json.contains("s3cr3t") && !json.contains("password\""), "{json}");
    }

    #[test]
    #[cfg(feature = "kafka")]
    fn a_password_file_resolves_under_the_job_file_and_its_contents_are_not_in_the_job_hash() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs");
        std::fs::create_dir_all(jobs.join("secrets")).unwrap();
        std::fs::write(jobs.join("stub.wat"), stub_module()).unwrap();
        let pw = jobs.join("secrets/kafka.pw");
        std::fs::write(&pw, "first-password\n").unwrap();
        let body = "batch_interval = \"1s\"\n[modules]\nstub = \"stub.wat\"\n\
                    [sources.lines]\ntype = \"batches\"\npath = \"in.jsonl\"\n\
                    [streams]\nout = \"lines.map(stub.map)\"\n[[outputs]]\nstream = \"out\"\ntype = \"kafka\"\n\
                    brokers = \"b:9092\"\ntopic = \"o\"\n\
                    sasl = { mechanism = \"PLAIN\", username = \"u\", password_file = \"secrets/kafka.pw\" }\n";
        let path = jobs.join("job.toml");
        std::fs::write(&path, body).unwrap();
        // Relative to the job file's folder, not the working directory.
        let first = load(&path, runtime()).unwrap();
        // The file holds only the path: the hash is the file's bytes, and
        // a rotated password (new file contents) is the same job.
        assert_eq!(first.hash, crate::udf::ModuleHash::of(body.as_bytes()).hex());
        std::fs::write(&pw, "second-password\n").unwrap();
        assert_eq!(load(&path, runtime()).unwrap().hash, first.hash);
        // A missing file fails the load naming the line, the key and the path.
        std::fs::remove_file(&pw).unwrap();
        let e = load(&path, runtime()).err().expect("a missing password file is an error").to_string();
        assert!(e.contains("job.toml:") && e.contains("kafka sasl.password_file"), "{e}");
        assert!(e.contains(&pw.display().to_string()) && e.contains("No such file"), "{e}");
    }

    /// Loads a job whose only source is `source` (TOML fields after `[sources.lines]`).
    fn load_source(source: &str) -> Result<Job, EngineError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stub.wat"), stub_module()).unwrap();
        let body = format!(
            "batch_interval = \"1s\"\n[modules]\nstub = \"stub.wat\"\n[sources.lines]\n{source}\n\
             [streams]\nout = \"lines.map(stub.map)\"\n[[outputs]]\nstream = \"out\"\ntype = \"print\"\n"
        );
        let path = dir.path().join("job.toml");
        std::fs::write(&path, body).unwrap();
        load(&path, runtime())
    }

    #[test]
    fn checkpoint_bounds_default_are_set_and_are_refused_naming_the_setting_and_line() {
        use weir_plan::limits::CheckpointBounds;
        // Line 7 is `[checkpoint]`, line 8 its first setting.
        let src = "type = \"batches\"\npath = \"in.jsonl\"\n[checkpoint]\n";
        let job = load_source(src).unwrap();
        assert_eq!(job.context.graph().checkpoint, CheckpointBounds::default());
        let set = "max_state_bytes = 4096\nmax_metadata_bytes = 2048\nstall_timeout_ms = 500\n\
                   max_list_pages = 3\nmax_list_keys = 10";
        let job = load_source(&format!("{src}{set}")).unwrap();
        let want = CheckpointBounds {
            max_state_bytes: 4096,
            max_metadata_bytes: 2048,
            stall_timeout_ms: 500,
            max_list_pages: 3,
            max_list_keys: 10,
        };
        assert_eq!(job.context.graph().checkpoint, want);
        for (setting, says) in [
            ("max_state_bytes = 10", "[checkpoint] max_state_bytes (10) must be between 1024 and 1099511627776"),
            ("max_metadata_bytes = 0", "[checkpoint] max_metadata_bytes (0) must be between 1024"),
            ("stall_timeout_ms = 0", "[checkpoint] stall_timeout_ms (0) must be between 1 and 3600000"),
            ("max_list_pages = 0", "[checkpoint] max_list_pages (0) must be between 1"),
            ("max_list_keys = 0", "[checkpoint] max_list_keys (0) must be between 1"),
            ("max_state_bytes = -1", "invalid value"),
            ("max_state = 1", "unknown field `max_state`, expected one of `max_state_bytes`, `max_metadata_bytes`"),
        ] {
            let msg = load_source(&format!("{src}{setting}")).err().expect(setting).to_string();
            assert!(msg.contains("job.toml:8: ") && msg.contains(says), "{setting}: {msg}");
        }
    }

    #[test]
    fn kafka_sources_take_defaults_and_refuse_bad_fields_naming_the_line() {
        use weir_plan::source::{KafkaValueFormat, OffsetOutOfRangePolicy, StartingOffsets};
        let job = load_source("type = \"kafka\"\nbrokers = \"b:9092\"\ntopics = [\"t\"]").unwrap();
        match &job.context.graph().sources[0] {
            SourceSpec::Kafka {
                brokers,
                topics,
                starting_offsets,
                max_rate_per_partition,
                value_format,
                key,
                client_id,
                on_offset_out_of_range,
                broker_timeout_ms,
                max_decompressed_bytes,
                tls,
                sasl,
            } => {
                assert_eq!(*max_decompressed_bytes, 256 << 20);
                assert_eq!((tls, sasl), (&None, &None));
                assert_eq!((brokers.as_str(), topics.as_slice()), ("b:9092", &["t".to_string()][..]));
                assert_eq!(*starting_offsets, StartingOffsets::Latest);
                assert_eq!((*max_rate_per_partition, *key, client_id.as_deref()), (None, false, None));
                assert_eq!(*value_format, KafkaValueFormat::String);
                assert_eq!(*on_offset_out_of_range, OffsetOutOfRangePolicy::Error);
                assert_eq!(*broker_timeout_ms, 60_000);
            }
            other => panic!("not a kafka source: {other:?}"),
        }
        let cases = [
            ("brokers = \"b:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"", "unknown field `group_id`"),
            ("brokers = \" , \"\ntopics = [\"t\"]", "brokers must name"),
            ("brokers = \"b:1\"\ntopics = []", "topics must name"),
            ("brokers = \"b:1\"\ntopics = [\"t\"]\nmax_rate_per_partition = 0", "at least 1"),
            ("brokers = \"b:1\"\ntopics = [\"t\"]\nbroker_timeout_ms = 0", "broker_timeout_ms must be"),
            (
                "brokers = \"b:1\"\ntopics = [\"t\"]\nmax_decompressed_bytes = 1024",
                "max_decompressed_bytes must be between 4194304 and 68719476736 (got 1024)",
            ),
            ("brokers = \"b:1\"\ntopics = [\"t\"]\nstarting_offsets = \"first\"", "unknown variant `first`"),
        ];
        for (fields, want) in cases {
            let err = match load_source(&format!("type = \"kafka\"\n{fields}")) {
                Ok(_) => panic!("accepted: {fields}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("job.toml:") && err.contains(want), "{fields}: {err}");
        }
    }

    /// Loads a job whose top of file (before `[modules]`) is `head` after
    /// `batch_interval` (line 1).
    fn load_head(head: &str) -> Result<Job, EngineError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stub.wat"), stub_module()).unwrap();
        let body = format!(
            "batch_interval = \"1s\"\n{head}\n[modules]\nstub = \"stub.wat\"\n[sources.lines]\ntype = \"socket\"\n\
             host = \"localhost\"\nport = 9\n[streams]\nout = \"lines.map(stub.map)\"\n[[outputs]]\nstream = \"out\"\n\
             type = \"print\"\n"
        );
        let path = dir.path().join("job.toml");
        std::fs::write(&path, body).unwrap();
        load(&path, runtime())
    }

    #[test]
    fn backpressure_and_rate_keys_are_read_and_bad_values_name_their_line() {
        use weir_plan::rate::RateSpec;
        let job = load_head("backpressure = true\n[rate]\ninitial = 500\nmin = 10\nmax = 2000").unwrap();
        let want = RateSpec { backpressure: true, initial: Some(500), min: Some(10), max: Some(2000) };
        assert_eq!(job.context.graph().rate, want);
        let job = load_head("[rate]\nmax = 300").unwrap();
        assert_eq!(job.context.graph().rate, RateSpec { max: Some(300), ..RateSpec::default() });
        assert_eq!(load_head("").unwrap().context.graph().rate, RateSpec::default());
        let cases = [
            // (head, line, what the error says)
            (
                "backpressure = true\n[rate]\ninitial = 5\nburst = 3",
                5,
                "unknown field `burst`, expected one of `initial`, `min`, `max`",
            ),
            ("backpressure = true\n[rate]\nmin = 0", 4, "[rate] min must be at least 1"),
            ("backpressure = true\n[rate]\nmax = -5", 4, "-5"),
            ("backpressure = true\n[rate]\nmin = 50\nmax = 20", 4, "[rate] min (50) is above max (20)"),
            ("[rate]\ninitial = 100", 3, "[rate] initial is used only with backpressure = true"),
            ("backpressure = \"yes\"", 2, "yes"),
        ];
        for (head, line, want) in cases {
            let err = match load_head(head) {
                Ok(_) => panic!("accepted: {head}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(&format!("job.toml:{line}: ")) && err.contains(want), "{head}: {err}");
        }
    }

    #[test]
    fn unknown_operations_name_the_line_and_every_valid_operation() {
        let msg = error_of("out = \"lines.map(stub.map).frobnicate()\"");
        assert!(
            msg.contains(&format!("job.toml:{STREAMS_LINE}: stream out: unknown operation \"frobnicate\"")),
            "{msg}"
        );
        for name in ops::names() {
            assert!(msg.contains(name), "{name} is valid but not offered: {msg}");
        }
        // The same list the docs are checked against, not a copy of it.
        assert!(msg.contains("map_with_state") && msg.contains("state_snapshots"), "{msg}");
    }

    #[test]
    fn fractions_booleans_and_record_counts_are_read_and_bounded() {
        let job = load_job("out = \"lines.sample(0.25, 7).sort_by_key(false).take(1000000)\"").unwrap();
        let ops: Vec<weir_plan::graph::NodeOp> = job.context.graph().nodes.into_iter().map(|n| n.op).collect();
        assert!(ops.contains(&weir_plan::graph::NodeOp::Sample { seed: 7, threshold: 1 << 30 }), "{ops:?}");
        assert!(load_job("out = \"lines.sample(1, 0).sort_by(stub.key_by, true)\"").is_ok());
        assert_error(
            "out = \"lines.sample(1.5, 7)\"",
            STREAMS_LINE,
            &["sample: argument 1 (fraction): must be from 0 to 1, got 1.5"],
        );
        assert_error(
            "out = \"lines.sample(2, 7)\"",
            STREAMS_LINE,
            &["argument 1 (fraction): must be from 0 to 1, got 2"],
        );
        assert_error("out = \"lines.take(1000001)\"", STREAMS_LINE, &["must be at most 1000000 records"]);
        assert_error(
            "out = \"lines.sort_by_key(yes)\"",
            STREAMS_LINE,
            &["argument 1 (ascending) must be true or false"],
        );
        assert_error("out = \"lines.coalesce(0)\"", STREAMS_LINE, &["must be a positive integer"]);
    }

    #[test]
    fn a_transform_expression_is_the_same_plan_as_its_operations_on_the_stream() {
        let ops_of = |streams: &str| -> Vec<weir_plan::graph::NodeOp> {
            let job = load_job(streams).unwrap_or_else(|e| panic!("{streams}: {e}"));
            job.context.graph().nodes.into_iter().map(|n| n.op).collect()
        };
        assert_eq!(
            ops_of("out = 'lines.transform(\"rdd.map(stub.map).sort_by_key(false).take(10)\")'"),
            ops_of("out = \"lines.map(stub.map).sort_by_key(false).take(10)\"")
        );
        assert_eq!(
            ops_of(
                "other = \"lines.map(stub.map)\"\nout = 'lines.transform_with(other, \"rdd.join(other).distinct()\")'"
            ),
            ops_of("other = \"lines.map(stub.map)\"\nout = \"lines.join(other).distinct()\"")
        );
        assert_error(
            "out = 'lines.transform(\"rdd.window(2s)\")'",
            STREAMS_LINE,
            &["transform: window(len[, slide]) does not act on one batch's RDD"],
        );
        assert_error(
            "out = 'lines.transform(\"rdd.update_state_by_key(stub.update)\")'",
            STREAMS_LINE,
            &["does not act on one batch's RDD"],
        );
        // Other streams' RDDs of the batch (a transform over several streams).
        assert_eq!(
            ops_of("x = \"lines.map(stub.map)\"\nout = 'lines.transform(\"rdd.union(x).subtract(lines)\")'"),
            ops_of("x = \"lines.map(stub.map)\"\nout = \"lines.union(x).subtract(lines)\"")
        );
        assert_error(
            "x = \"lines.map(stub.map)\"\nout = 'lines.transform(\"rdd.union(y)\")'",
            STREAMS_LINE + 1,
            &["no dataset, source or stream named \"y\" (datasets: none: declare one under [datasets]; sources and \
               streams: lines, out, x)"],
        );
        assert_error("out = 'lines.transform(\"lines.distinct()\")'", STREAMS_LINE, &["starts from `rdd`"]);
        assert_error(
            "out = 'lines.transform(\"rdd.transform(rdd)\")'",
            STREAMS_LINE,
            // An expression holds no quotes, so no transform inside.
            &["transform: argument 1 (expr) must be an RDD expression"],
        );
        assert_error("out = 'lines.transform(\"rdd.map(stub.map)'", STREAMS_LINE, &["unterminated"]);
        assert_error("out = 'lines.transform(rdd)'", STREAMS_LINE, &["argument 1 (expr) must be an RDD expression"]);
    }

    #[test]
    fn unknown_streams_and_modules_name_the_line_and_what_exists() {
        assert_error(
            "x = \"lines.map(stub.map)\"\nout = \"nope.map(stub.map)\"",
            STREAMS_LINE + 1,
            &["no source or stream named \"nope\" (known: lines, out, x)"],
        );
        assert_error("out = \"lines.union(ghost)\"", STREAMS_LINE, &["no source or stream named \"ghost\""]);
        assert_error("out = \"lines.map(nomod.map)\"", STREAMS_LINE, &["no module named \"nomod\"", "(known: stub)"]);
        // The output's line when it names an unknown stream.
        let msg = error_of("other = \"lines.map(stub.map)\"");
        assert!(msg.contains("job.toml:13: no source or stream named \"out\" (known: lines, other)"), "{msg}");
    }

    #[test]
    fn arguments_of_the_wrong_kind_name_the_line_and_what_was_expected() {
        // A function exported with another kind than the operation's.
        assert_error(
            "out = \"lines.map(stub.filter)\"",
            STREAMS_LINE,
            &["stream out: map:", "no map function named \"filter\"", "filter (filter)"],
        );
        assert_error("out = \"lines.reduce_by_key(stub.map)\"", STREAMS_LINE, &["no reduce function named \"map\""]);
        assert_error(
            "out = \"lines.map_with_state(stub.update)\"",
            STREAMS_LINE,
            &["no map_with_state function named \"update\""],
        );
        // Not a function at all, a stream where a function goes, and so on.
        assert_error(
            "out = \"lines.map(10s)\"",
            STREAMS_LINE,
            &["argument 1 (f) must be a function of kind map, written module.function: map(f)"],
        );
        assert_error("out = \"lines.join(stub.map)\"", STREAMS_LINE, &["argument 1 (other) must be a stream name"]);
        assert_error(
            "out = \"lines.reduce_by_key(stub.reduce, 2s)\"",
            STREAMS_LINE,
            &["argument 2 (n) must be a positive integer: reduce_by_key(f[, n])"],
        );
        assert_error("out = \"lines.repartition(0)\"", STREAMS_LINE, &["argument 1 (n): must be a positive integer"]);
        assert_error("out = \"lines.count(stub.map)\"", STREAMS_LINE, &["takes 0 argument(s), got 1: count()"]);
        assert_error(
            "out = \"lines.reduce_by_window(stub.reduce)\"",
            STREAMS_LINE,
            &["match none of its forms: reduce_by_window(f, len[, slide]), reduce_by_window(f, inv, len[, slide])"],
        );
        assert_error(
            "out = \"lines.map(stub.map).state_snapshots()\"",
            STREAMS_LINE,
            &["state_snapshots() applies to a stream made by map_with_state"],
        );
        assert_error(
            "out = \"lines.map(stub.map).checkpoint(10s)\"",
            STREAMS_LINE,
            &["checkpoint() applies to stateful streams only"],
        );
    }

    #[test]
    fn bad_durations_name_the_line() {
        assert_error("out = \"lines.window(3fortnights)\"", STREAMS_LINE, &["unknown unit \"fortnights\""]);
        assert_error("out = \"lines.window(0s)\"", STREAMS_LINE, &["must be positive"]);
        assert_error(
            "out = \"lines.window(1500ms)\"",
            STREAMS_LINE,
            &["window length (1500 ms) must be a positive multiple of the parent's slide duration (1000 ms)"],
        );
        assert_error(
            "out = \"lines.window(4s, 1500ms)\"",
            STREAMS_LINE,
            &["slide (1500 ms) must be a positive multiple"],
        );
        assert_error(
            "out = \"lines.update_state_by_key(stub.update).checkpoint(2500ms)\"",
            STREAMS_LINE,
            &["checkpoint interval (2500 ms) must be a positive multiple of the slide (1000 ms)"],
        );
        let msg = match load_job_with("out = \"lines\"", "a while") {
            Ok(_) => panic!("accepted a bad batch interval"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("job.toml:1: batch_interval: invalid duration"), "{msg}");
    }

    #[test]
    fn cycles_name_the_line_of_the_stream_that_depends_on_itself() {
        assert_error("out = \"out.map(stub.map)\"", STREAMS_LINE, &["stream \"out\" depends on itself"]);
        // out -> a -> b -> a: reported at a's line, where the loop closes.
        assert_error(
            "a = \"b.map(stub.map)\"\nb = \"a.map(stub.map)\"\nout = \"a.count()\"",
            STREAMS_LINE,
            &["stream \"a\" depends on itself"],
        );
        assert_error("out = \"lines.union(out)\"", STREAMS_LINE, &["stream \"out\" depends on itself"]);
    }

    /// `spec` applied to `lines` with a value for each parameter (optional
    /// ones only if `all`).
    fn call(spec: &OpSpec, all: bool) -> String {
        let args: Vec<String> = spec
            .params
            .iter()
            .filter(|p| all || !p.optional)
            .map(|p| match p.kind {
                ParamKind::Udf(k) => format!("stub.{k}"),
                ParamKind::Duration => match p.name {
                    "len" => "4s".into(),
                    "slide" => "2s".into(),
                    _ => "10s".into(),
                },
                ParamKind::Count | ParamKind::Records | ParamKind::Seed => "3".into(),
                ParamKind::Fraction => "0.5".into(),
                ParamKind::Bool => "false".into(),
                ParamKind::Expr => "\\\"rdd.distinct().take(3)\\\"".into(),
                ParamKind::Stream => "other".into(),
            })
            .collect();
        // The operations that apply only to some streams get one.
        let input = match spec.op {
            Op::StateSnapshots => "lines.map_with_state(stub.map_with_state)",
            Op::Checkpoint => "lines.update_state_by_key(stub.update)",
            _ => "lines",
        };
        format!("{input}.{}({})", spec.name, args.join(", "))
    }

    #[test]
    fn every_operation_in_the_list_is_accepted_by_the_parser() {
        for spec in OPERATIONS {
            for all in [false, true] {
                let expr = call(spec, all);
                let job = load_job(&format!("other = \"lines.map(stub.map)\"\nout = \"{expr}\""))
                    .unwrap_or_else(|e| panic!("{} refused as {expr}: {e}", spec.signature()));
                let graph = job.context.graph();
                let stateful = graph.nodes.iter().any(|n| n.op.is_stateful());
                assert_eq!(stateful, spec.stateful, "{expr}: stateful as the list says");
            }
        }
    }

    /// `(signature, stateful, description)` of every row of the operation
    /// tables in `docs/jobs.md` (the `## Operations` section; rows under a
    /// `### Stateful` heading are stateful).
    fn documented_operations() -> Vec<(String, bool, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/jobs.md");
        let text = std::fs::read_to_string(path).unwrap();
        let mut rows = Vec::new();
        let (mut inside, mut stateful) = (false, false);
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                inside = h.trim() == "Operations";
                stateful = false;
            } else if let Some(h) = line.strip_prefix("### ") {
                stateful = h.starts_with("Stateful");
            } else if inside && line.starts_with('|') && !line.starts_with("|---") {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
                assert_eq!(cells.len(), 2, "docs/jobs.md: an operation row has two cells: {line}");
                if cells[0] == "operation" {
                    continue;
                }
                let sig = cells[0].strip_prefix('`').and_then(|c| c.strip_suffix('`')).filter(|c| !c.contains('`'));
                let sig = sig.unwrap_or_else(|| panic!("docs/jobs.md: one `operation(args)` per row: {line}"));
                rows.push((sig.to_string(), stateful, cells[1].to_string()));
            }
        }
        rows
    }

    #[test]
    fn the_docs_operation_tables_and_the_parser_list_the_same_operations() {
        let docs = documented_operations();
        let list: Vec<(String, bool, String)> =
            OPERATIONS.iter().map(|s| (s.signature(), s.stateful, s.summary.to_string())).collect();
        let row = |(sig, stateful, what): &(String, bool, String)| {
            format!("{}| `{sig}` | {what} |", if *stateful { "(stateful) " } else { "" })
        };
        let missing: Vec<String> = list.iter().filter(|r| !docs.contains(r)).map(row).collect();
        let extra: Vec<String> = docs.iter().filter(|r| !list.contains(r)).map(row).collect();
        // What the docs' tables should be, ready to paste.
        let table = |stateful: bool| {
            list.iter()
                .filter(|r| r.1 == stateful)
                .map(|(sig, _, what)| format!("| `{sig}` | {what} |\n"))
                .collect::<String>()
        };
        assert!(
            missing.is_empty() && extra.is_empty() && docs == list,
            "docs/jobs.md and weir_plan::ops::OPERATIONS disagree.\n\
             In the list, not (so) in the docs:\n{}\n\
             In the docs, not (so) in the list:\n{}\n\
             The tables should read:\n{}\n### Stateful operations\n\n{}",
            missing.join("\n"),
            extra.join("\n"),
            table(false),
            table(true),
        );
        // Every documented name is one the parser dispatches.
        for (sig, ..) in &docs {
            let name = sig.split('(').next().unwrap_or_default();
            assert!(ops::forms(name).next().is_some(), "{name} is documented but the parser does not know it");
        }
    }

    #[test]
    fn durations_are_bounded_and_never_wrap() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("8760h"), Ok(Duration::from_secs(365 * 24 * 3600)));
        for s in ["18446744073709552s", "9223372036854775808ms", "99999999999999999999999", "8761h", "31536000001"] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("longer than the maximum of 1 year"), "{s}: {e}");
        }
        assert!(parse_duration("0ms").unwrap_err().contains("must be positive"));
        assert!(parse_duration("s").unwrap_err().contains("expected e.g."));
        assert!(parse_duration("-5s").unwrap_err().contains("expected e.g."));
    }

    #[test]
    fn a_stream_named_like_a_source_is_refused() {
        assert_error(
            "lines = \"lines.map(stub.map)\"\nout = \"lines\"",
            STREAMS_LINE,
            &["stream \"lines\" has the name of the source on line 6"],
        );
    }

    /// A small seeded generator (no RNG crate for one test).
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
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }
    }

    /// A random stream expression: mostly plausible tokens, some noise.
    fn random_expr(rng: &mut Rng) -> String {
        const TOKENS: &[&str] = &[
            "lines",
            "out",
            "other",
            "x",
            "stub",
            "map",
            "flat_map",
            "window",
            "repartition",
            "reduce_by_key",
            "union",
            "join",
            "update_state_by_key",
            "checkpoint",
            "map_with_state",
            "state_snapshots",
            "glom",
            "count",
            "reduce_by_window",
            ".",
            ".",
            ".",
            "(",
            "(",
            ")",
            ")",
            ",",
            "0",
            "1",
            "3",
            "4294967295",
            "18446744073709551616",
            "2s",
            "10s",
            "1500ms",
            "9223372036854775808ms",
            "7fortnights",
            "stub.map",
            "stub.reduce",
            "stub.update",
            "stub.filter",
            " ",
            "-",
            "_",
            "é",
            "\\t",
            "#",
            "\\\"",
        ];
        let n = rng.below(12);
        (0..n).map(|_| rng.pick(TOKENS)).collect()
    }

    /// Writes `body` as a job file and loads it, failing with the input if
    /// loading panics.
    fn load_never_panics(dir: &Path, body: &[u8]) -> Result<Job, EngineError> {
        let path = dir.join("job.toml");
        std::fs::write(&path, body).unwrap();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&path, runtime()))) {
            Ok(r) => r,
            Err(_) => panic!("loading panicked on:\n{}", String::from_utf8_lossy(body)),
        }
    }

    /// Bounded random input: TOML-ish job files built from plausible and
    /// out-of-range pieces, and random stream expressions, load as a job or
    /// as a `JobFileError` naming the job file — never a panic.
    #[test]
    fn arbitrary_job_files_load_or_give_a_job_file_error() {
        const LINES: &[&str] = &[
            "batch_interval = \"1s\"",
            "batch_interval = \"0s\"",
            "batch_interval = \"18446744073709552s\"",
            "batch_interval = 5",
            "parallelism = 4294967295",
            "parallelism = -1",
            "parallelism = 0",
            "parallelism = 3",
            "clock = \"logical\"",
            "clock = 1",
            "[limits]",
            "module_bytes = 0",
            "fuel_per_call = 18446744073709551615",
            "[modules]",
            "stub = \"stub.wat\"",
            "m = \"/dev/zero\"",
            "[sources.lines]",
            "[sources.other]",
            "[sources.x]",
            "type = \"batches\"",
            "type = \"generator\"",
            "type = \"socket\"",
            "type = \"nope\"",
            "path = \"in.jsonl\"",
            "path = \"/dev/zero\"",
            "lines_per_batch = 1000000000000",
            "lines_per_batch = 3",
            "words_per_line = 4294967295",
            "host = \"localhost\"",
            "port = 0",
            "port = 70000",
            "[streams]",
            "[initial_state]",
            "out = \"x.jsonl\"",
            "[[outputs]]",
            "stream = \"out\"",
            "stream = \"lines\"",
            "type = \"print\"",
            "type = \"save_as_text_files\"",
            "prefix = \"o\"",
            "prefix = \"./o\"",
            "suffix = \"s\"",
            "num = 1000000000000000000",
            "num = -3",
            "bogus = 1",
            "[bogus]",
            "= = =",
            "[",
            "\"",
            "'''",
        ];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stub.wat"), stub_module()).unwrap();
        std::fs::write(dir.path().join("in.jsonl"), "[[\"a\", 1]]\n").unwrap();
        let mut rng = Rng(11);
        let (mut ok, mut refused) = (0, 0);
        for case in 0..400 {
            let mut body = String::new();
            for _ in 0..rng.below(16) {
                match rng.below(8) {
                    0 => {
                        let name = rng.pick(&["out", "other", "x", "lines"]);
                        body += &format!("{name} = \"{}\"", random_expr(&mut rng));
                    }
                    1 => body.push(char::from(rng.below(128) as u8)),
                    _ => body += rng.pick(LINES),
                }
                body.push('\n');
            }
            // A quarter of the cases: a plausible job around a random expression.
            if case % 4 == 0 {
                body = format!(
                    "batch_interval = \"1s\"\n[modules]\nstub = \"stub.wat\"\n[sources.lines]\ntype = \"batches\"\n\
                     path = \"in.jsonl\"\n[streams]\nother = \"lines\"\nout = \"{}\"\n[[outputs]]\nstream = \"out\"\n\
                     type = \"print\"\n",
                    random_expr(&mut rng)
                );
            }
            let mut bytes = body.into_bytes();
            if case % 50 == 7 {
                bytes.push(0xff);
            }
            match load_never_panics(dir.path(), &bytes) {
                Ok(_) => ok += 1,
                Err(EngineError::JobFile(e)) => {
                    assert!(e.file.ends_with("job.toml"), "{e}");
                    refused += 1
                }
                Err(other) => panic!("not a job file error: {other}\non:\n{}", String::from_utf8_lossy(&bytes)),
            }
        }
        assert!(refused > 300, "mostly refused ({ok} loaded, {refused} refused)");
    }
}
