//! A submitted job checked against its tenant's policy and rewritten for
//! the server: module names point into the module store, inputs resolve
//! inside the tenant's root, outputs go under the job's own directory,
//! `[limits]` stay under the tenant's ceilings (a job asking for more is
//! refused, naming the ceiling; one asking for nothing gets the engine's
//! default capped by the ceiling), network sources reach only allowed hosts.
//! Kafka secrets stay out of the server's state: a SASL password comes
//! from a `password_file` inside the tenant's root (an inline `password`
//! only where the operator allows it, `password_env` never).
//!
//! The rewrite edits the TOML document in place (`toml_edit`), so the lines
//! of the loader's errors are the lines of the file the tenant submitted.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike, Value};

use crate::config::Tenant;
use crate::store::ModuleStore;
use crate::ServeError;

/// The job as the server will run it.
#[derive(Debug)]
pub struct Prepared {
    /// The rewritten job file.
    pub text: String,
    /// Every `save_as_text_files` prefix, rewritten (absolute).
    pub outputs: Vec<PathBuf>,
    /// The job's `limits.memory_bytes` (as capped).
    pub memory_bytes: u64,
    /// Modules the job names: a task of a fused stage may hold an instance
    /// of each at once.
    pub modules: u64,
}

impl Prepared {
    /// UDF memory the job may hold at once with `slots` executor threads
    /// (one task each): every module's instance at its full `memory_bytes`.
    pub fn udf_memory_bytes(&self, slots: u32) -> u64 {
        self.memory_bytes.saturating_mul(self.modules.max(1)).saturating_mul(u64::from(slots.max(1)))
    }
}

fn refused(m: String) -> ServeError {
    ServeError::Refused(m)
}

/// `rel` as a path that stays where it is put: relative, no `..`, no
/// control characters.
fn check_relative(what: &str, rel: &str) -> Result<PathBuf, ServeError> {
    if rel.is_empty() || rel.chars().any(|c| c.is_control()) {
        return Err(refused(format!("{what}: {rel:?} is not a usable path")));
    }
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(refused(format!("{what}: {rel:?} leaves the tenant's root (`..` is not allowed)")))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(format!(
                    "{what}: {rel:?} is an absolute path; paths are relative to the tenant's root"
                )))
            }
        }
    }
    Ok(p.to_path_buf())
}

/// `rel` under `root` (canonical), refusing anything that resolves outside
/// it: the longest existing part of the path is canonicalised (symlinks
/// followed) and must still be inside the root.
pub fn inside_root(root: &Path, what: &str, rel: &str) -> Result<PathBuf, ServeError> {
    let full = root.join(check_relative(what, rel)?);
    match resolves_outside(root, &full) {
        Ok(None) => Ok(full),
        Ok(Some(_)) => Err(refused(format!("{what}: {rel:?} resolves outside the tenant's root (a symlink)"))),
        Err(e) => Err(refused(format!("{what}: {rel:?}: {e}"))),
    }
}

pub use weir::files::resolves_outside;

/// Whether every `host:port` of `list` (comma-separated) is allowed.
fn hosts_allowed(t: &Tenant, list: &str) -> Result<(), ServeError> {
    for hp in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let hp = hp.to_ascii_lowercase();
        let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
        if !t.allowed_hosts.iter().any(|a| *a == hp || a == host) {
            return Err(refused(format!(
                "{hp}: tenant {} may not reach this host (allowed_hosts: [{}])",
                t.name,
                t.allowed_hosts.join(", ")
            )));
        }
    }
    Ok(())
}

/// Whether `topic` starts with one of the tenant's `kafka_topic_prefixes`.
fn topic_allowed(t: &Tenant, what: &str, topic: &str) -> Result<(), ServeError> {
    if t.kafka_topic_prefixes.iter().any(|p| topic.starts_with(p.as_str())) {
        return Ok(());
    }
    Err(refused(format!(
        "{what}: topic {topic:?}: tenant {} may use only topics starting with one of [{}] (kafka_topic_prefixes)",
        t.name,
        t.kafka_topic_prefixes.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
    )))
}

/// A Kafka source's brokers and topics. A pattern subscription is refused:
/// whether a regular expression matches only names under a prefix is not
/// something the server can prove in general, and the engine reads named
/// topics only.
fn kafka_source_allowed(t: &Tenant, what: &str, src: &Item) -> Result<(), ServeError> {
    hosts_allowed(t, str_of(src, "brokers").unwrap_or_default()).map_err(|e| refused(format!("{what}: {e}")))?;
    if src.get("topic_pattern").is_some() || src.get("pattern").is_some() {
        return Err(refused(format!(
            "{what}: topic patterns are not allowed in weir serve (a pattern cannot be confined to \
             kafka_topic_prefixes); name the topics in `topics`"
        )));
    }
    let topics = src.get("topics").and_then(Item::as_array);
    for topic in topics.into_iter().flat_map(|a| a.iter()) {
        // Non-strings are the loader's to refuse, with the line.
        if let Some(name) = topic.as_str() {
            topic_allowed(t, &format!("{what}.topics"), name)?;
        }
    }
    Ok(())
}

/// A Kafka source's or output's `tls` and `sasl` tables: TLS files and
/// `sasl.password_file` are the tenant's (paths inside its root, rewritten
/// absolute, like a directory source's). `sasl.password_env` is refused —
/// it names a variable of the *server's* environment, which would let a job
/// send any of the server's secrets (a cloud key, another tenant's
/// password) to a broker as its password. An inline `sasl.password` is
/// refused unless the operator allows it (`allow_inline_kafka_passwords`):
/// the job file, password included, would stay in the server's state
/// directory for the job's restarts.
fn kafka_security_allowed(
    root: &Path,
    what: &str,
    item: &mut dyn TableLike,
    allow_inline_password: bool,
) -> Result<(), ServeError> {
    if let Some(sasl) = item.get_mut("sasl") {
        if sasl.get("password_env").is_some() {
            return Err(refused(format!(
                "{what}.sasl.password_env: a job on weir serve may not read the server's environment; \
                 put the password in a file inside the tenant's root and name it with `password_file`"
            )));
        }
        if sasl.get("password").is_some() && !allow_inline_password {
            return Err(refused(format!(
                "{what}.sasl.password: this server does not keep Kafka passwords in its job registry; \
                 put the password in a file inside the tenant's root and name it with `password_file` \
                 (the operator may allow inline passwords with allow_inline_kafka_passwords = true)"
            )));
        }
        if let Some(sasl) = sasl.as_table_like_mut() {
            if let Some(p) = sasl.get("password_file").and_then(Item::as_str) {
                let full = inside_root(root, &format!("{what}.sasl.password_file"), p)?;
                sasl.insert("password_file", toml_edit::value(full.display().to_string()));
            }
        }
    }
    if let Some(tls) = item.get_mut("tls").and_then(Item::as_table_like_mut) {
        for key in ["ca_file", "cert_file", "key_file"] {
            if let Some(p) = tls.get(key).and_then(Item::as_str) {
                let full = inside_root(root, &format!("{what}.tls.{key}"), p)?;
                tls.insert(key, toml_edit::value(full.display().to_string()));
            }
        }
    }
    Ok(())
}

fn str_of<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key).and_then(Item::as_str)
}

/// What the server allows every tenant's jobs beyond their own tenant's
/// settings (from the top of `serve.toml`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerPolicy {
    /// `allow_inline_kafka_passwords`.
    pub allow_inline_kafka_passwords: bool,
}

/// Where a job lives: its directory (job file, log, local checkpoint and
/// outputs) and, when its outputs go to object storage, their location.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub dir: &'a Path,
    /// An object-store URL (`<output_root>/<tenant>/<id>-<ms>`): every
    /// `save_as_text_files` prefix goes under it instead of `dir/out`.
    pub output: Option<&'a str>,
}

impl<'a> Place<'a> {
    /// Everything in `dir`.
    pub fn local(dir: &'a Path) -> Place<'a> {
        Place { dir, output: None }
    }
}

/// Checks and rewrites the job `text` of tenant `t` (root `root`,
/// canonical) to run from `place`. `modules` maps the job's module names
/// to the hashes uploaded.
pub fn prepare(
    t: &Tenant,
    policy: ServerPolicy,
    root: &Path,
    place: Place<'_>,
    text: &str,
    modules: &BTreeMap<String, String>,
    store: &ModuleStore,
) -> Result<Prepared, ServeError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(1);
        ServeError::BadRequest(format!("job.toml:{line}: {}", e.message()))
    })?;
    rewrite_modules(t, &mut doc, modules, store)?;
    cap_limits(t, &mut doc)?;
    if let Some(p) = doc.get("parallelism").and_then(Item::as_integer) {
        if p > i64::from(t.max_parallelism) {
            return Err(refused(format!(
                "parallelism = {p} is above tenant {}'s ceiling max_parallelism = {}",
                t.name, t.max_parallelism
            )));
        }
    }
    if let Some(sources) = doc.get_mut("sources").and_then(Item::as_table_like_mut) {
        for (name, src) in sources.iter_mut() {
            let what = format!("sources.{}", name.get());
            match str_of(src, "type") {
                Some("directory") | Some("batches") => {
                    if let Some(p) = str_of(src, "path") {
                        let full = inside_root(root, &format!("{what}.path"), p)?;
                        src["path"] = toml_edit::value(full.display().to_string());
                    }
                }
                Some("socket") => {
                    let host = str_of(src, "host").unwrap_or_default();
                    let port = src.get("port").and_then(Item::as_integer).unwrap_or(0);
                    hosts_allowed(t, &format!("{host}:{port}")).map_err(|e| refused(format!("{what}: {e}")))?;
                }
                Some("kafka") => {
                    kafka_source_allowed(t, &what, src)?;
                    if let Some(tl) = src.as_table_like_mut() {
                        kafka_security_allowed(root, &what, tl, policy.allow_inline_kafka_passwords)?;
                    }
                }
                // Generators read nothing; unknown types are the loader's to refuse.
                _ => {}
            }
        }
    }
    if let Some(initial) = doc.get_mut("initial_state").and_then(Item::as_table_like_mut) {
        for (name, p) in initial.iter_mut() {
            if let Some(s) = p.as_str() {
                let full = inside_root(root, &format!("initial_state.{}", name.get()), s)?;
                *p = toml_edit::value(full.display().to_string());
            }
        }
    }
    let outputs = rewrite_outputs(t, policy, root, &mut doc, place)?;
    // cap_limits set it: the job's own value or the capped default.
    let memory_bytes = doc
        .get("limits")
        .and_then(|l| l.get("memory_bytes"))
        .and_then(Item::as_integer)
        .map_or(t.ceilings.memory_bytes as u64, |n| n.max(0) as u64);
    Ok(Prepared { text: doc.to_string(), outputs, memory_bytes, modules: modules.len() as u64 })
}

fn rewrite_modules(
    t: &Tenant,
    doc: &mut DocumentMut,
    modules: &BTreeMap<String, String>,
    store: &ModuleStore,
) -> Result<(), ServeError> {
    let mut named = std::collections::BTreeSet::new();
    if let Some(table) = doc.get_mut("modules").and_then(Item::as_table_like_mut) {
        for (key, item) in table.iter_mut() {
            let name = key.get().to_string();
            let Some(hash) = modules.get(&name) else {
                return Err(ServeError::BadRequest(format!("module {name}: not uploaded with the job")));
            };
            if !store.owns(&t.name, hash) {
                return Err(refused(format!(
                    "module {name}: sha256 {hash} was not uploaded by tenant {} (upload the module first)",
                    t.name
                )));
            }
            *item = toml_edit::value(store.path(hash).display().to_string());
            named.insert(name);
        }
    }
    if let Some(extra) = modules.keys().find(|k| !named.contains(*k)) {
        return Err(ServeError::BadRequest(format!(
            "module {extra}: uploaded, but the job's [modules] do not name it"
        )));
    }
    Ok(())
}

/// Each of the three sandbox limits: above the ceiling is refused; absent
/// becomes the engine's interval default capped by the ceiling.
fn cap_limits(t: &Tenant, doc: &mut DocumentMut) -> Result<(), ServeError> {
    let interval_ms = doc
        .get("batch_interval")
        .and_then(Item::as_str)
        .and_then(|s| weir::job::parse_duration(s).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(1000);
    let defaults = weir::udf::UdfLimits::for_batch_interval(interval_ms);
    let c = t.ceilings;
    let fields: [(&str, u64, u64); 3] = [
        ("fuel_per_call", c.fuel_per_call, defaults.fuel_per_call),
        ("deadline_ms", c.deadline_ms, defaults.deadline_ms),
        ("memory_bytes", c.memory_bytes as u64, defaults.memory_bytes as u64),
    ];
    if doc.get("limits").is_none() {
        doc["limits"] = toml_edit::table();
    }
    let Some(limits) = doc.get_mut("limits").and_then(Item::as_table_like_mut) else {
        return Err(ServeError::BadRequest("limits: expected a table".into()));
    };
    for (key, ceiling, default) in fields {
        match limits.get(key) {
            Some(v) => {
                let n = v
                    .as_integer()
                    .ok_or_else(|| ServeError::BadRequest(format!("limits.{key}: expected an integer")))?;
                if n <= 0 || n as u64 > ceiling {
                    return Err(refused(format!(
                        "limits.{key} = {n} is outside tenant {}'s ceiling {key} = {ceiling} (a job may ask for 1 to {ceiling})",
                        t.name
                    )));
                }
            }
            None => {
                let v = default.min(ceiling).min(i64::MAX as u64) as i64;
                limits.insert(key, Item::Value(Value::from(v)));
            }
        }
    }
    Ok(())
}

fn rewrite_outputs(
    t: &Tenant,
    policy: ServerPolicy,
    root: &Path,
    doc: &mut DocumentMut,
    place: Place<'_>,
) -> Result<Vec<PathBuf>, ServeError> {
    let mut out = Vec::new();
    let Some(outputs) = doc.get_mut("outputs") else { return Ok(out) };
    let Some(arr) = outputs.as_array_of_tables_mut() else {
        return Err(ServeError::BadRequest("outputs: expected [[outputs]] tables".into()));
    };
    for (i, o) in arr.iter_mut().enumerate() {
        let what = format!("outputs[{i}]");
        match o.get("type").and_then(Item::as_str) {
            Some("save_as_text_files") => {
                if let Some(prefix) = o.get("prefix").and_then(Item::as_str) {
                    let rel = check_relative(&format!("{what}.prefix"), prefix)?;
                    let full = match place.output {
                        // Object keys: the prefix's parts joined with `/`
                        // (no `.` parts; `..` was refused).
                        Some(url) => {
                            let parts: Vec<String> = rel
                                .components()
                                .filter(|c| matches!(c, Component::Normal(_)))
                                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                                .collect();
                            PathBuf::from(format!("{url}/{}", parts.join("/")))
                        }
                        None => place.dir.join("out").join(rel),
                    };
                    o["prefix"] = toml_edit::value(full.display().to_string());
                    out.push(full);
                }
            }
            Some("print") => {
                return Err(refused(format!(
                    "{what}: print writes to the server's standard output, which tenants share; \
                     use save_as_text_files (outputs are kept per job)"
                )))
            }
            Some("kafka") => {
                let brokers = o.get("brokers").and_then(Item::as_str).unwrap_or_default().to_string();
                hosts_allowed(t, &brokers).map_err(|e| refused(format!("{what}: {e}")))?;
                if let Some(topic) = o.get("topic").and_then(Item::as_str) {
                    topic_allowed(t, &format!("{what}.topic"), topic)?;
                }
                kafka_security_allowed(root, &what, o, policy.allow_inline_kafka_passwords)?;
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{sha256_hex, Config};

    fn tenant(extra: &str) -> Tenant {
        let text = format!(
            "[tenants.acme]\ntoken_sha256 = \"{}\"\nallowed_hosts = [\"feed.local\"]\n{extra}",
            sha256_hex(b"t")
        );
        Config::parse(Path::new("/s/serve.toml"), &text).unwrap().tenants["acme"].clone()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        store: ModuleStore,
        hash: String,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("in")).unwrap();
        let root = root.canonicalize().unwrap();
        let store = ModuleStore::open(tmp.path()).unwrap();
        let bytes = b"(module)";
        let hash = sha256_hex(bytes);
        store.put("acme", &hash, bytes).unwrap();
        Fixture { _tmp: tmp, root, store, hash }
    }

    fn job(source: &str, output: &str, limits: &str) -> String {
        format!(
            "batch_interval = \"1s\"\n{limits}\n[modules]\nwc = \"../udfs/wc.wasm\"\n[sources.lines]\n{source}\n\
             [streams]\nw = \"lines.flat_map(wc.split)\"\n[[outputs]]\nstream = \"w\"\n{output}\n"
        )
    }

    fn prep(f: &Fixture, t: &Tenant, text: &str) -> Result<Prepared, ServeError> {
        let m = BTreeMap::from([("wc".to_string(), f.hash.clone())]);
        prepare(t, ServerPolicy::default(), &f.root, Place::local(&f.root.join("jobs/acme-1")), text, &m, &f.store)
    }

    const DIR: &str = "type = \"directory\"\npath = \"in\"";
    const SAVE: &str = "type = \"save_as_text_files\"\nprefix = \"out/w\"";

    /// With an output location on object storage, a prefix goes under it
    /// (its `.` parts dropped, `/`-joined), and `..` is still refused.
    #[test]
    fn outputs_go_under_the_jobs_object_store_location() {
        let f = fixture();
        let t = tenant("");
        let m = BTreeMap::from([("wc".to_string(), f.hash.clone())]);
        let dir = f.root.join("jobs/acme-1");
        let place = Place { dir: &dir, output: Some("s3://b/weir/acme/acme-1-7") };
        let text = job(DIR, "type = \"save_as_text_files\"\nprefix = \"./out/./w\"", "");
        let p = prepare(&t, ServerPolicy::default(), &f.root, place, &text, &m, &f.store).unwrap();
        let want = "s3://b/weir/acme/acme-1-7/out/w";
        assert_eq!(p.outputs, vec![PathBuf::from(want)]);
        let doc: DocumentMut = p.text.parse().unwrap();
        assert_eq!(doc["outputs"][0]["prefix"].as_str(), Some(want));
        let bad = job(DIR, "type = \"save_as_text_files\"\nprefix = \"../bob/w\"", "");
        let e = prepare(&t, ServerPolicy::default(), &f.root, place, &bad, &m, &f.store).unwrap_err();
        assert!(e.to_string().contains("`..` is not allowed"), "{e}");
    }

    #[test]
    fn an_honest_job_is_rewritten_into_the_store_the_root_and_the_job_directory() {
        let f = fixture();
        let t = tenant("");
        let submitted = job(DIR, SAVE, "");
        let p = prep(&f, &t, &submitted).unwrap();
        let doc: toml::Table = toml::from_str(&p.text).unwrap();
        assert_eq!(doc["modules"]["wc"].as_str().unwrap(), f.store.path(&f.hash).to_str().unwrap());
        assert_eq!(doc["sources"]["lines"]["path"].as_str().unwrap(), f.root.join("in").to_str().unwrap());
        let want = f.root.join("jobs/acme-1/out/out/w");
        assert_eq!(doc["outputs"][0]["prefix"].as_str().unwrap(), want.to_str().unwrap());
        assert_eq!(p.outputs, vec![want]);
        // Limits nobody asked for: the engine's default, capped by the ceiling.
        assert_eq!(doc["limits"]["fuel_per_call"].as_integer().unwrap(), 1_000_000_000);
        assert_eq!(doc["limits"]["deadline_ms"].as_integer().unwrap(), 5_000);
        // Its UDF memory: the capped default (64 MiB) x one module x slots.
        assert_eq!(p.udf_memory_bytes(3), 3 * (64 << 20));
        // The lines of the submitted file are kept (errors name them).
        let streams_line = |t: &str| t.lines().position(|l| l.starts_with("[streams]"));
        assert_eq!(streams_line(&p.text), streams_line(&submitted));
        assert!(streams_line(&submitted).is_some());
    }

    #[test]
    fn paths_out_of_the_root_are_refused() {
        let f = fixture();
        let t = tenant("");
        for p in ["../other", "/etc", "in/../../x", ""] {
            let e = prep(&f, &t, &job(&format!("type = \"directory\"\npath = \"{p}\""), SAVE, "")).unwrap_err();
            assert!(matches!(e, ServeError::Refused(_)), "{p}: {e}");
        }
        std::os::unix::fs::symlink("/etc", f.root.join("in/escape")).unwrap();
        let e = prep(&f, &t, &job("type = \"batches\"\npath = \"in/escape/passwd\"", SAVE, "")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = prep(&f, &t, &job(DIR, "type = \"save_as_text_files\"\nprefix = \"../../bob/out\"", "")).unwrap_err();
        assert!(e.to_string().contains("`..`"), "{e}");
        let e = prep(&f, &t, &job(DIR, "type = \"print\"", "")).unwrap_err();
        assert!(e.to_string().contains("save_as_text_files"), "{e}");
    }

    #[test]
    fn limits_above_a_ceiling_are_refused_naming_it_and_hosts_must_be_allowed() {
        let f = fixture();
        let t = tenant("[tenants.acme.limits]\ndeadline_ms = 2000\n");
        let e = prep(&f, &t, &job(DIR, SAVE, "[limits]\ndeadline_ms = 0")).unwrap_err().to_string();
        assert!(e.contains("limits.deadline_ms = 0") && e.contains("ceiling deadline_ms = 2000"), "{e}");
        let e = prep(&f, &t, &job(DIR, SAVE, "[limits]\nmemory_bytes = 1099511627776")).unwrap_err().to_string();
        assert!(e.contains("ceiling memory_bytes = 67108864"), "{e}");
        assert!(prep(&f, &t, &job(DIR, SAVE, "[limits]\ndeadline_ms = 1500")).is_ok());
        let sock = |h: &str| format!("type = \"socket\"\nhost = \"{h}\"\nport = 9999");
        let e = prep(&f, &t, &job(&sock("10.0.0.1"), SAVE, "")).unwrap_err().to_string();
        assert!(e.contains("may not reach"), "{e}");
        assert!(prep(&f, &t, &job(&sock("feed.local"), SAVE, "")).is_ok());
        // A module hash this tenant never uploaded.
        let m = BTreeMap::from([("wc".to_string(), sha256_hex(b"someone else's"))]);
        let e = prepare(
            &t,
            ServerPolicy::default(),
            &f.root,
            Place::local(&f.root.join("j")),
            &job(DIR, SAVE, ""),
            &m,
            &f.store,
        )
        .unwrap_err();
        assert!(e.to_string().contains("was not uploaded by tenant acme"), "{e}");
    }

    #[test]
    fn kafka_topics_must_start_with_a_tenant_prefix() {
        let f = fixture();
        let kafka = |topics: &str| format!("type = \"kafka\"\nbrokers = \"feed.local:9092\"\ntopics = [{topics}]");
        let sink = |topic: &str| format!("type = \"kafka\"\nbrokers = \"feed.local:9092\"\ntopic = \"{topic}\"");
        // By default no topic is allowed.
        let e = prep(&f, &tenant(""), &job(&kafka("\"acme.in\""), SAVE, "")).unwrap_err().to_string();
        assert!(e.contains("topic \"acme.in\"") && e.contains("[]"), "{e}");
        let t = tenant("kafka_topic_prefixes = [\"acme.\", \"shared-acme-\"]\n");
        assert!(prep(&f, &t, &job(&kafka("\"acme.in\", \"shared-acme-x\""), SAVE, "")).is_ok());
        assert!(prep(&f, &t, &job(DIR, &sink("acme.out"), "")).is_ok());
        let e = prep(&f, &t, &job(&kafka("\"acme.in\", \"bob.in\""), SAVE, "")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ServeError::Refused(_)), "{e}");
        assert!(msg.contains("sources.lines.topics") && msg.contains("\"bob.in\""), "{msg}");
        assert!(msg.contains("[\"acme.\", \"shared-acme-\"]"), "{msg}");
        // `acme` alone is not under `acme.`.
        let e = prep(&f, &t, &job(DIR, &sink("acme"), "")).unwrap_err().to_string();
        assert!(e.contains("outputs[0].topic") && e.contains("\"acme\""), "{e}");
        let pattern = format!("{}\ntopic_pattern = \"acme\\\\..*\"", kafka("\"acme.in\""));
        let e = prep(&f, &t, &job(&pattern, SAVE, "")).unwrap_err().to_string();
        assert!(e.contains("topic patterns are not allowed"), "{e}");
    }

    #[test]
    fn kafka_password_env_and_inline_passwords_are_refused_and_password_and_tls_files_stay_in_the_tenant_root() {
        let f = fixture();
        let t = tenant("kafka_topic_prefixes = [\"acme.\"]\n");
        let src =
            |extra: &str| format!("type = \"kafka\"\nbrokers = \"feed.local:9092\"\ntopics = [\"acme.in\"]\n{extra}");
        let sink =
            |extra: &str| format!("type = \"kafka\"\nbrokers = \"feed.local:9092\"\ntopic = \"acme.out\"\n{extra}");
        // The server's environment is not the tenant's: AWS_SECRET_ACCESS_KEY
        // would go to the broker as the password.
        let env =
            "[sources.lines.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"AWS_SECRET_ACCESS_KEY\"";
        let e = prep(&f, &t, &job(&src(env), SAVE, "")).unwrap_err();
        assert!(matches!(e, ServeError::Refused(_)), "{e}");
        assert!(e.to_string().contains("sources.lines.sasl.password_env"), "{e}");
        let e = prep(
            &f,
            &t,
            &job(DIR, &sink("sasl = { mechanism = \"PLAIN\", username = \"u\", password_env = \"HOME\" }"), ""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("outputs[0].sasl.password_env"), "{e}");
        assert!(e.to_string().contains("password_file"), "the refusal says what to do instead: {e}");
        // An inline password would stay in the server's state directory:
        // refused by default, naming the key and what to use instead...
        let inline = "[sources.lines.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"p\"";
        let e = prep(&f, &t, &job(&src(inline), SAVE, "")).unwrap_err();
        assert!(matches!(e, ServeError::Refused(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("sources.lines.sasl.password:") && msg.contains("`password_file`"), "{msg}");
        assert!(!msg.contains("\"p\""), "the refusal does not echo the password: {msg}");
        let e =
            prep(&f, &t, &job(DIR, &sink("sasl = { mechanism = \"PLAIN\", username = \"u\", password = \"p\" }"), ""))
                .unwrap_err();
        assert!(e.to_string().contains("outputs[0].sasl.password:"), "{e}");
        // ...and accepted where the operator allows it.
        let m = BTreeMap::from([("wc".to_string(), f.hash.clone())]);
        let allow = ServerPolicy { allow_inline_kafka_passwords: true };
        let j = f.root.join("j");
        assert!(prepare(&t, allow, &f.root, Place::local(&j), &job(&src(inline), SAVE, ""), &m, &f.store).is_ok());
        // A password file: inside the root, rewritten absolute (table and inline).
        let file = "[sources.lines.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_file = \"in/kafka.pw\"";
        let p = prep(&f, &t, &job(&src(file), SAVE, "")).unwrap();
        let doc: toml::Table = toml::from_str(&p.text).unwrap();
        let want = f.root.join("in/kafka.pw");
        assert_eq!(doc["sources"]["lines"]["sasl"]["password_file"].as_str().unwrap(), want.to_str().unwrap());
        let inline_file = "sasl = { mechanism = \"PLAIN\", username = \"u\", password_file = \"in/kafka.pw\" }";
        let p = prep(&f, &t, &job(DIR, &sink(inline_file), "")).unwrap();
        let doc: toml::Table = toml::from_str(&p.text).unwrap();
        assert_eq!(doc["outputs"][0]["sasl"]["password_file"].as_str().unwrap(), want.to_str().unwrap());
        // Outside the root: absolute, `..`, or a symlink out.
        std::os::unix::fs::symlink("/etc", f.root.join("in/etc")).unwrap();
        for (bad, says) in [
            ("/etc/weir/kafka.pw", "absolute path"),
            ("../other/kafka.pw", "`..`"),
            ("in/../../kafka.pw", "`..`"),
            ("in/etc/passwd", "symlink"),
        ] {
            let e = prep(
                &f,
                &t,
                &job(
                    DIR,
                    &sink(&format!("sasl = {{ mechanism = \"PLAIN\", username = \"u\", password_file = \"{bad}\" }}")),
                    "",
                ),
            )
            .unwrap_err();
            assert!(matches!(e, ServeError::Refused(_)), "{bad}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("outputs[0].sasl.password_file") && msg.contains(says), "{bad}: {msg}");
        }
        // TLS files: inside the root, rewritten absolute (table and inline).
        let p = prep(&f, &t, &job(&src("[sources.lines.tls]\nca_file = \"in/ca.pem\""), SAVE, "")).unwrap();
        let doc: toml::Table = toml::from_str(&p.text).unwrap();
        let want = f.root.join("in/ca.pem");
        assert_eq!(doc["sources"]["lines"]["tls"]["ca_file"].as_str().unwrap(), want.to_str().unwrap());
        let p =
            prep(&f, &t, &job(DIR, &sink("tls = { key_file = \"in/k.pem\", cert_file = \"in/c.pem\" }"), "")).unwrap();
        let doc: toml::Table = toml::from_str(&p.text).unwrap();
        let tls = &doc["outputs"][0]["tls"];
        assert_eq!(tls["key_file"].as_str().unwrap(), f.root.join("in/k.pem").to_str().unwrap());
        assert_eq!(tls["cert_file"].as_str().unwrap(), f.root.join("in/c.pem").to_str().unwrap());
        for bad in ["/etc/weir/serve.key", "../other/key.pem"] {
            let e = prep(&f, &t, &job(DIR, &sink(&format!("tls = {{ key_file = \"{bad}\" }}")), "")).unwrap_err();
            assert!(e.to_string().contains("outputs[0].tls.key_file"), "{bad}: {e}");
        }
    }
}
