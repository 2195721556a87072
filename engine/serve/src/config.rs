//! The operator's `serve.toml`: where the server listens, its state
//! directory, its master, and every tenant with its token, quotas and
//! sandbox ceilings (`docs/serve.md`).
//!
//! Every limit has a default and the defaults are safe: a tenant that sets
//! nothing gets one job, one slot, small sandbox ceilings, no network
//! sources. Unknown keys are refused with the file and line, as job files
//! are. Tokens are stored as SHA-256 hex digests and compared in constant
//! time; the file is re-read when it changes, so a token rotates without a
//! restart ([`ConfigWatch`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ServeError;

/// Largest `serve.toml` read, in bytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Default ceilings of a tenant's UDF sandbox: about half a second of CPU per
/// call, a 5 s watchdog, 64 MiB of linear memory per instance.
pub const DEFAULT_FUEL_PER_CALL: u64 = 1_000_000_000;
pub const DEFAULT_DEADLINE_MS: u64 = 5_000;
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// Default UDF memory of a tenant's live jobs together: 1 GiB (sixteen
/// instances at the default ceiling).
pub const DEFAULT_MEMORY_QUOTA_BYTES: u64 = 1 << 30;
/// Default bytes of blocks a tenant's live jobs hold together in the
/// server: 1 GiB.
pub const DEFAULT_BLOCK_QUOTA_BYTES: u64 = 1 << 30;
/// Default `locality_wait_ms`: the runtime's (Spark's `spark.locality.wait`, 3 s).
pub const DEFAULT_LOCALITY_WAIT_MS: u64 = 3_000;
/// Largest `locality_wait_ms`: a minute (a task held up longer than that
/// for one busy executor is no longer a locality question; the no-executor
/// timeout is a minute too).
pub const MAX_LOCALITY_WAIT_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    cluster_listen: Option<String>,
    #[serde(default)]
    cluster_secret_file: Option<PathBuf>,
    #[serde(default)]
    locality_wait_ms: Option<u64>,
    #[serde(default)]
    cluster_max_frame_bytes: Option<u64>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    admin_token_sha256: Option<String>,
    #[serde(default)]
    max_upload_bytes: Option<u64>,
    #[serde(default)]
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    read_timeout_ms: Option<u64>,
    #[serde(default)]
    storage_check_interval_ms: Option<u64>,
    /// The bound on the compiled-code disk cache (`weir::udf::cache`).
    #[serde(default)]
    cache_max_bytes: Option<u64>,
    /// Whether a job may give a Kafka SASL password inline (it then lies in
    /// the registry's job file); by default only `password_file`.
    #[serde(default)]
    allow_inline_kafka_passwords: Option<bool>,
    /// Where jobs' checkpoints go: an object-store URL (`None`: each job's
    /// directory in its tenant's root).
    #[serde(default)]
    checkpoint_root: Option<String>,
    /// Where jobs' `save_as_text_files` outputs go: an object-store URL
    /// (`None`: each job's directory in its tenant's root).
    #[serde(default)]
    output_root: Option<String>,
    /// A cgroup v1 `cpu` directory where each tenant gets a child with its
    /// weight in `cpu.shares` ([`crate::cpu`]).
    #[serde(default)]
    cpu_cgroup: Option<PathBuf>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    token_sha256: String,
    #[serde(default)]
    max_jobs: Option<u32>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    max_slots: Option<u32>,
    #[serde(default)]
    max_parallelism: Option<u32>,
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    storage_quota_bytes: Option<u64>,
    #[serde(default)]
    memory_quota_bytes: Option<u64>,
    #[serde(default)]
    block_quota_bytes: Option<u64>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    kafka_topic_prefixes: Vec<String>,
    #[serde(default)]
    checkpoint_root: Option<String>,
    #[serde(default)]
    output_root: Option<String>,
    #[serde(default)]
    limits: Option<CeilingsFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CeilingsFile {
    #[serde(default)]
    fuel_per_call: Option<u64>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    memory_bytes: Option<usize>,
}

/// The ceilings of a tenant's UDF sandbox: a job may ask for less, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    pub fuel_per_call: u64,
    pub deadline_ms: u64,
    pub memory_bytes: usize,
}

/// One tenant, with every default applied.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    token_sha256: [u8; 32],
    /// Jobs that may run (or wait to run) at once.
    pub max_jobs: u32,
    /// Share of the pool's slots under contention: tasks are handed out in
    /// proportion to weights (deficit round robin, [`crate::pool`]).
    pub weight: u32,
    /// Tasks this tenant's jobs together run at once on the pool, at most.
    pub max_slots: u32,
    /// Largest `parallelism` (partitions) a job may ask for.
    pub max_parallelism: u32,
    /// Absolute: where the tenant's inputs, checkpoints and outputs live.
    pub root: PathBuf,
    pub storage_quota_bytes: u64,
    /// UDF memory all its live jobs may hold at once: each job counts
    /// `memory_bytes` x its modules x its executor threads.
    pub memory_quota_bytes: u64,
    /// Bytes of blocks (received input, shuffle outputs, persisted and
    /// state partitions) its live jobs may hold together in the server:
    /// a block past it fails its task (retried) or, for input, the job.
    pub block_quota_bytes: u64,
    /// Hosts (`host` or `host:port`) socket sources and Kafka may reach.
    pub allowed_hosts: Vec<String>,
    /// Kafka topics this tenant may read and write: those that start with
    /// one of these (none by default).
    pub kafka_topic_prefixes: Vec<String>,
    /// Where this tenant's jobs keep their checkpoints: an object-store URL
    /// (`s3://bucket/prefix`, `gs://…`, `az://…`; its own, else the
    /// server's `checkpoint_root`), under which each job gets
    /// `<tenant>/<job id>-<submission ms>`. `None`: the job's directory in
    /// the root. The bytes there count against `storage_quota_bytes`.
    pub checkpoint_root: Option<String>,
    /// Where this tenant's jobs write their `save_as_text_files` outputs: an
    /// object-store URL (its own, else the server's `output_root`), under
    /// which each job gets `<tenant>/<job id>-<submission ms>/<prefix>`.
    /// `None`: `out/` in the job's directory in the root. The bytes there
    /// count against `storage_quota_bytes`.
    pub output_root: Option<String>,
    pub ceilings: Ceilings,
}

/// The server's configuration, with every default applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: String,
    /// Absolute.
    pub state_dir: PathBuf,
    pub master: String,
    /// Where executors join (`local-cluster[N]`, `cluster[N]`); `None`:
    /// loopback, any free port.
    pub cluster_listen: Option<String>,
    /// The cluster secret's file (absolute): executors prove they know it.
    /// Needed for `cluster[N]`; `local-cluster[N]` generates one without it.
    pub cluster_secret_file: Option<PathBuf>,
    /// How long a task waits for its job's preferred executor while other
    /// jobs' tasks fill it, before it runs on any executor (ms; 0: it does
    /// not wait). Executor processes only (`weir::cluster::ClusterConfig::locality_wait`).
    pub locality_wait_ms: u64,
    /// The largest frame taken from an authenticated executor or block
    /// fetcher (bytes, 1 MiB to 1 GiB; `weir run --max-frame-bytes`).
    pub cluster_max_frame_bytes: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    admin_token_sha256: Option<[u8; 32]>,
    /// Largest request body (a module or a job), in bytes.
    pub max_upload_bytes: u64,
    /// A request must be answered in this long.
    pub request_timeout_ms: u64,
    /// A client must send its headers, and then its body, each within this long.
    pub read_timeout_ms: u64,
    /// How often the roots of tenants with live jobs are measured against
    /// their `storage_quota_bytes` (`quota`).
    pub storage_check_interval_ms: u64,
    /// The bound on the compiled-code disk cache, in bytes (`None`:
    /// `WEIR_CACHE_MAX_BYTES`, else 2 GiB; `weir::udf::cache`).
    pub cache_max_bytes: Option<u64>,
    /// Whether a submitted job may give a Kafka SASL `password` inline
    /// (default false: the server would keep every tenant's password in its
    /// state directory; jobs name a `password_file` in their root instead).
    /// Follows reloads (it is checked at submission).
    pub allow_inline_kafka_passwords: bool,
    /// Where each tenant gets a CPU cgroup weighted by its `weight`, which
    /// its jobs' driver threads and the pool's threads running its tasks
    /// join ([`crate::cpu`]); absolute. `None`: no cgroups. Read at start.
    pub cpu_cgroup: Option<PathBuf>,
    pub tenants: BTreeMap<String, Tenant>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Tenant(String),
    /// `admin_token_sha256`: sees every tenant's metrics (never runs jobs).
    Admin,
}

/// SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A tenant name becomes part of paths and job ids.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A `checkpoint_root` or `output_root` (`key`) as given, checked: an
/// object-store URL with a bucket, without its trailing `/`. Local
/// checkpoints and outputs need no setting (they live in each job's
/// directory, inside its tenant's root).
fn object_root(key: &str, url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    if !weir::checkpoint::is_object_store_url(url) || url.split_once("://").is_some_and(|(_, r)| r.starts_with('/')) {
        let what = if key == "checkpoint_root" { "checkpoints" } else { "outputs" };
        return Err(format!(
            "{key} = {url:?}: expected an object-store URL (s3://bucket/prefix, gs://bucket/prefix or \
             az://container/prefix); local {what} need no setting"
        ));
    }
    Ok(url.to_string())
}

/// One `[tenants.NAME]` table with its defaults applied; `err` names the
/// table's line.
fn tenant_from(
    name: &str,
    t: TenantFile,
    state_dir: &Path,
    err: &dyn Fn(String) -> ServeError,
) -> Result<Tenant, ServeError> {
    if !valid_name(name) {
        return Err(err(format!("tenant {name:?}: names are 1-64 of a-z, 0-9 and _")));
    }
    let token = parse_digest(&t.token_sha256)
        .ok_or_else(|| err(format!("tenant {name}: token_sha256: expected 64 hex digits (sha256 of the token)")))?;
    let positive = |v: Option<u32>, default: u32, what: &str| match v {
        Some(0) => Err(err(format!("tenant {name}: {what} must be at least 1"))),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let root_rel = t.root.unwrap_or_else(|| PathBuf::from("tenants").join(name));
    let root = if root_rel.is_absolute() { root_rel } else { state_dir.join(root_rel) };
    let c = t.limits.unwrap_or_default();
    let ceilings = Ceilings {
        fuel_per_call: c.fuel_per_call.unwrap_or(DEFAULT_FUEL_PER_CALL),
        deadline_ms: c.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS),
        memory_bytes: c.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES),
    };
    // An empty prefix would allow every topic: the operator names prefixes.
    if t.kafka_topic_prefixes.iter().any(|p| p.is_empty() || p.chars().any(|c| c.is_control())) {
        return Err(err(format!("tenant {name}: kafka_topic_prefixes: a prefix must be non-empty text")));
    }
    if ceilings.fuel_per_call == 0 || ceilings.deadline_ms == 0 || ceilings.memory_bytes < 65_536 {
        return Err(err(format!(
            "tenant {name}: limits: fuel_per_call and deadline_ms must be positive, memory_bytes at least 65536"
        )));
    }
    Ok(Tenant {
        name: name.to_string(),
        token_sha256: token,
        max_jobs: positive(t.max_jobs, 1, "max_jobs")?,
        weight: match positive(t.weight, 1, "weight")? {
            w if w > weir::executor::pool::MAX_WEIGHT => {
                return Err(err(format!("tenant {name}: weight must be at most {}", weir::executor::pool::MAX_WEIGHT)))
            }
            w => w,
        },
        max_slots: positive(t.max_slots, 1, "max_slots")?,
        max_parallelism: positive(t.max_parallelism, 8, "max_parallelism")?,
        root,
        storage_quota_bytes: t.storage_quota_bytes.unwrap_or(1 << 30),
        memory_quota_bytes: match t.memory_quota_bytes {
            Some(0) => return Err(err(format!("tenant {name}: memory_quota_bytes must be at least 1"))),
            Some(n) => n,
            None => DEFAULT_MEMORY_QUOTA_BYTES,
        },
        block_quota_bytes: match t.block_quota_bytes {
            Some(0) => return Err(err(format!("tenant {name}: block_quota_bytes must be at least 1"))),
            Some(n) => n,
            None => DEFAULT_BLOCK_QUOTA_BYTES,
        },
        allowed_hosts: t.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        kafka_topic_prefixes: t.kafka_topic_prefixes,
        checkpoint_root: t
            .checkpoint_root
            .map(|u| object_root("checkpoint_root", &u).map_err(|m| err(format!("tenant {name}: {m}"))))
            .transpose()?,
        output_root: t
            .output_root
            .map(|u| object_root("output_root", &u).map_err(|m| err(format!("tenant {name}: {m}"))))
            .transpose()?,
        ceilings,
    })
}

impl Config {
    /// Reads and checks `serve.toml`.
    pub fn load(path: &Path) -> Result<Config, ServeError> {
        let bytes = weir::files::read_limited(path, MAX_CONFIG_BYTES)
            .map_err(|e| ServeError::config(path, None, format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| ServeError::config(path, None, "not UTF-8 text".into()))?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path` (relative paths are taken
    /// from `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ServeError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let f: ConfigFile = toml::from_str(text)
            .map_err(|e| ServeError::config(path, e.span().map(|s| line_of(s.start)), e.message().to_string()))?;
        // Errors after parsing name the line of the tenant's table.
        let line_of_key = |key: &str| text.find(key).map(line_of);
        let err = |key: &str, m: String| ServeError::config(path, line_of_key(key), m);
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        let state_dir = base.join(f.state_dir.unwrap_or_else(|| PathBuf::from("serve-state")));
        let admin_token_sha256 = match &f.admin_token_sha256 {
            None => None,
            Some(t) => Some(parse_digest(t).ok_or_else(|| {
                err("admin_token_sha256", "admin_token_sha256: expected 64 hex digits (sha256 of the token)".into())
            })?),
        };
        let server_checkpoint_root = match &f.checkpoint_root {
            Some(u) => Some(object_root("checkpoint_root", u).map_err(|m| err("checkpoint_root", m))?),
            None => None,
        };
        let server_output_root = match &f.output_root {
            Some(u) => Some(object_root("output_root", u).map_err(|m| err("output_root", m))?),
            None => None,
        };
        let mut tenants = BTreeMap::new();
        let mut seen_tokens: Vec<[u8; 32]> = Vec::new();
        for (name, t) in f.tenants {
            let key = format!("[tenants.{name}]");
            let e = |m: String| err(&key, m);
            let mut tenant = tenant_from(&name, t, &state_dir, &e)?;
            if tenant.checkpoint_root.is_none() {
                tenant.checkpoint_root.clone_from(&server_checkpoint_root);
            }
            if tenant.output_root.is_none() {
                tenant.output_root.clone_from(&server_output_root);
            }
            if seen_tokens.contains(&tenant.token_sha256) || admin_token_sha256 == Some(tenant.token_sha256) {
                return Err(e(format!("tenant {name}: token_sha256 is another tenant's token")));
            }
            seen_tokens.push(tenant.token_sha256);
            tenants.insert(name, tenant);
        }
        let max_upload_bytes = f.max_upload_bytes.unwrap_or(32 << 20);
        if max_upload_bytes == 0 {
            return Err(err("max_upload_bytes", "max_upload_bytes must be positive".into()));
        }
        let request_timeout_ms = f.request_timeout_ms.unwrap_or(60_000);
        let read_timeout_ms = f.read_timeout_ms.unwrap_or(10_000);
        let storage_check_interval_ms = f.storage_check_interval_ms.unwrap_or(5_000);
        for (key, v) in [
            ("request_timeout_ms", request_timeout_ms),
            ("read_timeout_ms", read_timeout_ms),
            ("storage_check_interval_ms", storage_check_interval_ms),
        ] {
            if !(100..=600_000).contains(&v) {
                return Err(err(key, format!("{key} must be between 100 and 600000")));
            }
        }
        if f.cache_max_bytes == Some(0) {
            return Err(err(
                "cache_max_bytes",
                "cache_max_bytes must be positive (to keep no compiled code on disk, set WEIR_CACHE_DIR to \"\")"
                    .into(),
            ));
        }
        if f.tls_cert.is_some() != f.tls_key.is_some() {
            return Err(err("tls_", "tls_cert and tls_key go together".into()));
        }
        let master = f.master.unwrap_or_else(|| "local[2]".into());
        let cluster_secret_file = f.cluster_secret_file.map(|p| base.join(p));
        let locality_wait_ms = f.locality_wait_ms.unwrap_or(DEFAULT_LOCALITY_WAIT_MS);
        if locality_wait_ms > MAX_LOCALITY_WAIT_MS {
            return Err(err(
                "locality_wait_ms",
                format!(
                    "locality_wait_ms must be between 0 (no wait) and {MAX_LOCALITY_WAIT_MS}, not {locality_wait_ms}"
                ),
            ));
        }
        let cluster_max_frame_bytes = weir::cluster::protocol::check_frame_limit(
            f.cluster_max_frame_bytes.unwrap_or(weir::cluster::protocol::MAX_FRAME as u64),
        )
        .map_err(|e| err("cluster_max_frame_bytes", format!("cluster_max_frame_bytes: {e}")))?;
        match master.parse::<weir::scheduler::Master>() {
            Ok(weir::scheduler::Master::Local(_)) => {
                if f.cluster_max_frame_bytes.is_some() {
                    return Err(err(
                        "cluster_max_frame_bytes",
                        format!("cluster_max_frame_bytes needs executor processes: master {master:?} runs threads"),
                    ));
                }
                if f.cluster_listen.is_some() || cluster_secret_file.is_some() {
                    return Err(err(
                        "cluster_",
                        format!("cluster_listen and cluster_secret_file need executor processes: master {master:?} runs threads"),
                    ));
                }
                if f.locality_wait_ms.is_some() {
                    return Err(err(
                        "locality_wait_ms",
                        format!("locality_wait_ms needs executor processes: master {master:?} runs threads, which share one block store and prefer none"),
                    ));
                }
            }
            Ok(weir::scheduler::Master::LocalCluster { .. } | weir::scheduler::Master::Cluster { .. })
                if f.cpu_cgroup.is_some() =>
            {
                return Err(err(
                    "cpu_cgroup",
                    format!("cpu_cgroup needs master local[N]: master {master:?} runs tasks in executor processes, which the server does not place in its tenants' cgroups"),
                ));
            }
            Ok(weir::scheduler::Master::LocalCluster { .. }) => {}
            Ok(weir::scheduler::Master::Cluster { .. }) => {
                if cluster_secret_file.is_none() || f.cluster_listen.is_none() {
                    return Err(err(
                        "master",
                        format!("master {master:?}: executors join over the network, so cluster_listen (the address they join) and cluster_secret_file (the secret they prove) are required"),
                    ));
                }
            }
            Err(m) => return Err(err("master", format!("master: {m}"))),
        }
        Ok(Config {
            path: path.to_path_buf(),
            listen: f.listen.unwrap_or_else(|| "127.0.0.1:7077".into()),
            state_dir,
            master,
            cluster_listen: f.cluster_listen,
            cluster_secret_file,
            locality_wait_ms,
            cluster_max_frame_bytes,
            tls_cert: f.tls_cert.map(|p| base.join(p)),
            tls_key: f.tls_key.map(|p| base.join(p)),
            admin_token_sha256,
            max_upload_bytes,
            request_timeout_ms,
            read_timeout_ms,
            storage_check_interval_ms,
            cache_max_bytes: f.cache_max_bytes,
            allow_inline_kafka_passwords: f.allow_inline_kafka_passwords.unwrap_or(false),
            cpu_cgroup: f.cpu_cgroup.map(|p| base.join(p)),
            tenants,
        })
    }

    /// Who presents `token`, if anyone. Every tenant's digest is compared
    /// (in constant time), whichever matches.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in self.tenants.values() {
            if bool::from(t.token_sha256.ct_eq(&digest)) {
                found = Some(Principal::Tenant(t.name.clone()));
            }
        }
        if let Some(a) = &self.admin_token_sha256 {
            if bool::from(a.ct_eq(&digest)) {
                found = Some(Principal::Admin);
            }
        }
        found
    }

    /// The task slots of the pool: the threads of `local[N]`, the
    /// executors times their cores of `local-cluster[N,C]`. Executors that
    /// join (`cluster[N]`) say their own cores, so there is no bound but
    /// each tenant's `max_slots`.
    pub fn slots(&self) -> u32 {
        match self.master.parse::<weir::scheduler::Master>() {
            Ok(weir::scheduler::Master::Local(n)) => u32::try_from(n).unwrap_or(u32::MAX),
            Ok(weir::scheduler::Master::LocalCluster { executors, cores }) => executors.saturating_mul(cores),
            Ok(weir::scheduler::Master::Cluster { .. }) => u32::MAX,
            Err(_) => 1,
        }
    }
}

/// The configuration, re-read when the file's modification time changes
/// (checked at most once a second): tokens and quotas change without a
/// restart. A file that no longer parses keeps the last good configuration
/// (and says so in the log).
pub struct ConfigWatch {
    inner: Mutex<Watched>,
}

struct Watched {
    config: Arc<Config>,
    mtime: Option<SystemTime>,
    checked: std::time::Instant,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ConfigWatch {
    pub fn new(config: Config) -> Self {
        let m = mtime(&config.path);
        ConfigWatch {
            inner: Mutex::new(Watched { config: Arc::new(config), mtime: m, checked: std::time::Instant::now() }),
        }
    }

    /// The current configuration (re-read if the file changed).
    pub fn get(&self) -> Arc<Config> {
        let mut w = match self.inner.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        if w.checked.elapsed() >= std::time::Duration::from_secs(1) {
            w.checked = std::time::Instant::now();
            let m = mtime(&w.config.path);
            if m != w.mtime {
                w.mtime = m;
                self.reload(&mut w);
            }
        }
        w.config.clone()
    }

    /// Re-reads the file now (SIGHUP).
    pub fn reload_now(&self) {
        let mut w = match self.inner.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        w.mtime = mtime(&w.config.path);
        self.reload(&mut w);
    }

    fn reload(&self, w: &mut Watched) {
        match Config::load(&w.config.path) {
            Ok(mut c) => {
                // Where the server listens and keeps its state is fixed for
                // its life; tenants, tokens and quotas follow the file.
                c.listen = w.config.listen.clone();
                c.state_dir = w.config.state_dir.clone();
                c.master = w.config.master.clone();
                c.cluster_listen = w.config.cluster_listen.clone();
                c.cluster_secret_file = w.config.cluster_secret_file.clone();
                c.locality_wait_ms = w.config.locality_wait_ms;
                c.tls_cert = w.config.tls_cert.clone();
                c.tls_key = w.config.tls_key.clone();
                c.cpu_cgroup = w.config.cpu_cgroup.clone();
                // The cache bound follows the file (from the next write on;
                // a removed key falls back to WEIR_CACHE_MAX_BYTES or 2 GiB).
                weir::udf::cache::set_cache_max_bytes(c.cache_max_bytes.unwrap_or(0));
                tracing::info!(target: "weir::serve", "configuration reloaded ({} tenant(s))", c.tenants.len());
                w.config = Arc::new(c);
            }
            Err(e) => {
                tracing::warn!(target: "weir::serve", "configuration not reloaded, keeping the last good one: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ServeError> {
        Config::parse(Path::new("/etc/weir/serve.toml"), text)
    }

    const TOKEN: &str = "s3cret-acme";

    fn acme() -> String {
        format!("[tenants.acme]\ntoken_sha256 = \"{}\"\n", sha256_hex(TOKEN.as_bytes()))
    }

    #[test]
    fn checkpoint_and_output_roots_are_object_store_urls_a_tenants_own_first() {
        let bob = format!("[tenants.bob]\ntoken_sha256 = \"{}\"\n", sha256_hex(b"bob"));
        let field = |t: &Tenant, key: &str| {
            if key == "checkpoint_root" {
                t.checkpoint_root.clone()
            } else {
                t.output_root.clone()
            }
        };
        for key in ["checkpoint_root", "output_root"] {
            // None by default: checkpoints and outputs stay in the jobs' directories.
            assert_eq!(field(&parse(&acme()).unwrap().tenants["acme"], key), None);
            let c =
                parse(&format!("{key} = \"s3://ckpts/weir/\"\n{}{key} = \"gs://acme-own\"\n{bob}", acme())).unwrap();
            assert_eq!(field(&c.tenants["acme"], key).as_deref(), Some("gs://acme-own"), "{key}");
            assert_eq!(
                field(&c.tenants["bob"], key).as_deref(),
                Some("s3://ckpts/weir"),
                "{key}: the server's, without its /"
            );
            for bad in ["/var/ckpt", "file:///var/ckpt", "s3://", "s3:///x", "ftp://h/x"] {
                let e = parse(&format!("master = \"local[2]\"\n{key} = \"{bad}\"\n{}", acme())).err().unwrap();
                let m = e.to_string();
                assert!(
                    m.contains("serve.toml:2") && m.contains(key) && m.contains("object-store URL") && m.contains(bad),
                    "{bad}: {m}"
                );
                let e = parse(&format!("{}{key} = \"{bad}\"\n", acme())).err().unwrap();
                assert!(e.to_string().contains(&format!("tenant acme: {key}")), "{bad}: {e}");
            }
        }
        // Each is its own: a checkpoint root does not move outputs.
        let c = parse(&format!("checkpoint_root = \"s3://ckpts/weir\"\n{}", acme())).unwrap();
        assert_eq!(c.tenants["acme"].output_root, None);
    }

    #[test]
    fn the_issue_shape_parses_and_defaults_are_safe() {
        let text = format!(
            "listen = \"127.0.0.1:7077\"\nstate_dir = \"serve-state\"\nmaster = \"local[2]\"\n{}max_jobs = 4\nweight = 2\n\
             max_slots = 2\nroot = \"tenants/acme\"\nstorage_quota_bytes = 10_000_000_000\n[tenants.acme.limits]\n\
             fuel_per_call = 1_000_000_000\ndeadline_ms = 2000\nmemory_bytes = 268_435_456\n\
             [tenants.bob]\ntoken_sha256 = \"{}\"\n",
            acme(),
            sha256_hex(b"bob")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/weir/serve-state"));
        let a = &c.tenants["acme"];
        assert_eq!((a.max_jobs, a.weight, a.max_slots), (4, 2, 2));
        assert_eq!(a.root, Path::new("/etc/weir/serve-state/tenants/acme"));
        assert_eq!(a.ceilings, Ceilings { fuel_per_call: 1_000_000_000, deadline_ms: 2000, memory_bytes: 268_435_456 });
        let b = &c.tenants["bob"];
        assert_eq!((b.max_jobs, b.max_slots), (1, 1));
        assert!(b.allowed_hosts.is_empty());
        assert!(b.kafka_topic_prefixes.is_empty(), "no Kafka topic by default");
        assert_eq!(b.memory_quota_bytes, DEFAULT_MEMORY_QUOTA_BYTES);
        assert_eq!(b.block_quota_bytes, DEFAULT_BLOCK_QUOTA_BYTES);
        assert_eq!(b.ceilings.fuel_per_call, DEFAULT_FUEL_PER_CALL);
        assert!(!c.allow_inline_kafka_passwords, "inline Kafka passwords are refused by default");
        assert!(parse("allow_inline_kafka_passwords = true\n").unwrap().allow_inline_kafka_passwords);
        assert_eq!(c.authenticate(TOKEN), Some(Principal::Tenant("acme".into())));
        assert_eq!(c.authenticate("bob"), Some(Principal::Tenant("bob".into())));
        assert_eq!(c.authenticate("s3cret-acmf"), None);
        assert_eq!(c.authenticate(""), None);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_line() {
        let e = parse(&format!("{}max_job = 3\n", acme())).unwrap_err().to_string();
        assert!(e.contains("/etc/weir/serve.toml:3:") && e.contains("max_job"), "{e}");
        let e = parse(&format!("{}[tenants.acme.limits]\nfuel = 1\n", acme())).unwrap_err().to_string();
        assert!(e.contains("serve.toml:4:") && e.contains("fuel"), "{e}");
        let e = parse("[tenants.acme]\ntoken_sha256 = \"abc\"\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:1:") && e.contains("64 hex digits"), "{e}");
        let e = parse(&format!("{}max_jobs = 0\n", acme())).unwrap_err().to_string();
        assert!(e.contains("max_jobs must be at least 1"), "{e}");
        let e = parse(&format!("{}weight = 1000001\n", acme())).unwrap_err().to_string();
        assert!(e.contains("serve.toml:1:") && e.contains("weight must be at most 1000000"), "{e}");
        let e = parse(&format!("{}[tenants.b]\ntoken_sha256 = \"{}\"\n", acme(), sha256_hex(TOKEN.as_bytes())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another tenant's token"), "{e}");
        let e = parse("master = \"cluster[2]\"\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:1:") && e.contains("cluster_secret_file"), "{e}");
        let e = parse("master = \"local[2]\"\ncluster_listen = \"127.0.0.1:0\"\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:2:") && e.contains("runs threads"), "{e}");
        let c = parse("master = \"local-cluster[2,3]\"\n").unwrap();
        assert_eq!(c.slots(), 6);
        let c =
            parse("master = \"cluster[2]\"\ncluster_listen = \"0.0.0.0:7078\"\ncluster_secret_file = \"s\"\n").unwrap();
        assert_eq!(c.cluster_secret_file.as_deref(), Some(Path::new("/etc/weir/s")));
        let e = parse(&format!("{}kafka_topic_prefixes = [\"acme.\", \"\"]\n", acme())).unwrap_err().to_string();
        assert!(e.contains("serve.toml:1:") && e.contains("kafka_topic_prefixes"), "{e}");
        let e = parse(&format!("[tenants.\"../x\"]\ntoken_sha256 = \"{}\"\n", sha256_hex(b"x"))).unwrap_err();
        assert!(e.to_string().contains("names are"), "{e}");
    }

    #[test]
    fn the_cluster_frame_limit_is_a_bounded_key_of_executor_processes() {
        let cluster = "master = \"local-cluster[2]\"\n";
        assert_eq!(parse(cluster).unwrap().cluster_max_frame_bytes, weir::cluster::protocol::MAX_FRAME);
        let c = parse(&format!("{cluster}cluster_max_frame_bytes = 2097152\n")).unwrap();
        assert_eq!(c.cluster_max_frame_bytes, 2 << 20);
        for bad in ["1000", "2147483648"] {
            let e = parse(&format!("{cluster}cluster_max_frame_bytes = {bad}\n")).unwrap_err().to_string();
            assert!(e.contains("serve.toml:2:") && e.contains("out of range"), "{bad}: {e}");
        }
        let e = parse("master = \"local[2]\"\ncluster_max_frame_bytes = 2097152\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:2:") && e.contains("runs threads"), "{e}");
    }

    #[test]
    fn the_locality_wait_is_a_bounded_key_of_executor_processes() {
        let cluster = "master = \"cluster[2]\"\ncluster_listen = \"0.0.0.0:7078\"\ncluster_secret_file = \"s\"\n";
        assert_eq!(parse(cluster).unwrap().locality_wait_ms, DEFAULT_LOCALITY_WAIT_MS);
        assert_eq!(parse("").unwrap().locality_wait_ms, 3000, "the default, whatever the master");
        let c = parse(&format!("{cluster}locality_wait_ms = 250\n")).unwrap();
        assert_eq!(c.locality_wait_ms, 250);
        assert_eq!(parse(&format!("{cluster}locality_wait_ms = 0\n")).unwrap().locality_wait_ms, 0, "0: no wait");
        let c = parse("master = \"local-cluster[2]\"\nlocality_wait_ms = 60000\n").unwrap();
        assert_eq!(c.locality_wait_ms, MAX_LOCALITY_WAIT_MS);
        let e = parse(&format!("{cluster}locality_wait_ms = 60001\n")).unwrap_err().to_string();
        assert!(
            e.contains("serve.toml:4:")
                && e.contains("locality_wait_ms must be between 0 (no wait) and 60000, not 60001"),
            "{e}"
        );
        let e = parse(&format!("{cluster}locality_wait_ms = -1\n")).unwrap_err().to_string();
        assert!(e.contains("serve.toml:4:"), "a negative wait is refused at its line: {e}");
        let e = parse("master = \"local[2]\"\nlocality_wait_ms = 100\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:2:") && e.contains("locality_wait_ms needs executor processes"), "{e}");
    }

    #[test]
    fn the_cpu_cgroup_is_a_path_for_a_pool_of_threads() {
        assert_eq!(parse("").unwrap().cpu_cgroup, None);
        let c = parse("cpu_cgroup = \"/sys/fs/cgroup/cpu/weir\"\n").unwrap();
        assert_eq!(c.cpu_cgroup.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu/weir")));
        let c = parse("cpu_cgroup = \"cg\"\n").unwrap();
        assert_eq!(c.cpu_cgroup.as_deref(), Some(Path::new("/etc/weir/cg")), "relative to serve.toml");
        let e =
            parse("master = \"local-cluster[2]\"\ncpu_cgroup = \"/sys/fs/cgroup/cpu/weir\"\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:2:") && e.contains("cpu_cgroup needs master local[N]"), "{e}");
    }

    #[test]
    fn the_compiled_code_cache_bound_is_optional_and_positive() {
        assert_eq!(parse("").unwrap().cache_max_bytes, None);
        assert_eq!(parse("cache_max_bytes = 1_073_741_824\n").unwrap().cache_max_bytes, Some(1 << 30));
        let e = parse("listen = \"127.0.0.1:1\"\ncache_max_bytes = 0\n").unwrap_err().to_string();
        assert!(e.contains("serve.toml:2:") && e.contains("cache_max_bytes must be positive"), "{e}");
    }
}
