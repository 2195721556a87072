//! Checkpoints and text outputs on object storage (cargo feature
//! `object-store`): `s3://bucket/prefix`, `gs://bucket/prefix`,
//! `az://container/prefix`, through the `object_store` crate.
//!
//! Object stores have no rename and no flock, so:
//!
//! * every checkpoint file is one immutable object written whole by a single
//!   PUT (atomic per object: a reader sees all of it or none of it); the
//!   checksummed frame of [`super::file`] still catches a corrupt object, and
//!   recovery falls back to an older checkpoint as on local disk;
//! * one driver per location is enforced by a **lease object** (`<prefix>/lock`,
//!   [`Lease`]) created with a conditional PUT (`If-None-Match: *`) and renewed
//!   with `If-Match` on its ETag. The rule is in [`Lease::acquire`].
//!
//! Text outputs (`save_as_text_files` part objects) bigger than
//! [`MULTIPART_PART_BYTES`] are written by an [`ObjectWriter`] as a multipart
//! upload, one part at a time: a big partition is never buffered whole nor
//! sent as one giant PUT, and the object appears only when the upload is
//! completed (an upload that fails is aborted, so no half object is seen).
//!
//! Credentials and endpoint come from the standard environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`); plain HTTP is
//! allowed on its own only for a loopback endpoint. `object_store` is async:
//! a private current-thread tokio runtime runs each request to completion
//! (`block_on`), every request under a deadline, with bounded retries.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, MultipartUpload, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

use super::store::{CheckpointBounds, CheckpointStore};

/// The most the lease object may hold.
const MAX_LEASE_BYTES: u64 = 64 << 10;
/// What a read reserves before the body arrives (the rest grows with it).
const INITIAL_READ_BYTES: u64 = 8 << 20;
/// The size of one part of a text output's multipart upload, and the size
/// from which a text output object is uploaded in parts (8 MiB: above S3's
/// 5 MiB minimum part, and 10,000 parts make 80 GB).
pub const MULTIPART_PART_BYTES: usize = 8 << 20;
/// The deadline of one request, retries included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);
// The bounds on reads and listings are the job's `[checkpoint]` settings
// (`CheckpointBounds`, defaults in `weir_plan::limits`):
//
// * `stall_timeout_ms` (15 s): the longest an object's body may go without
//   a byte. A server that sends the headers and part of a body and then
//   stalls is given up on then, not after the whole request deadline of
//   120 s (the client's own 30 s attempt timeout would be retried, each
//   retry stalling again).
// * `max_list_pages` (100): S3 returns up to 1000 keys a page and a
//   checkpoint location holds a few hundred objects (one page), so a server
//   that says "truncated" page after page is hostile or broken.
// * `max_list_keys` (100 000): past it, a listing is refused rather than
//   grown in memory.
// * `max_state_bytes` / `max_metadata_bytes` (1 GiB / 64 MiB, as on disk):
//   a server declaring more, or streaming an endless body under a huge
//   declared length, is refused long before it costs memory.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectStoreError {
    #[error(
        "{url}: not an object-store URL (expected s3://bucket/prefix, gs://bucket/prefix or az://container/prefix)"
    )]
    Url { url: String },
    #[error("{url}: {source}")]
    Build { url: String, source: object_store::Error },
    #[error("{url}: cannot start the object-store client runtime: {source}")]
    Runtime { url: String, source: std::io::Error },
}

/// A prefix in an object store, with its own small runtime.
pub struct ObjectStoreCheckpoint {
    /// The location's URL, without a trailing `/` (for messages).
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The same client, listing page by page (bounded: `max_list_pages`).
    lister: Arc<dyn PaginatedListStore>,
    prefix: ObjectPath,
    rt: tokio::runtime::Runtime,
    bounds: CheckpointBounds,
}

impl std::fmt::Debug for ObjectStoreCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStoreCheckpoint({})", self.url)
    }
}

/// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`) points at this machine.
fn loopback_endpoint() -> bool {
    let ep = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).unwrap_or_default();
    let Some(rest) = ep.strip_prefix("http://") else { return false };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
}

/// Plain HTTP: by itself for a loopback endpoint, else when
/// `AWS_ALLOW_HTTP=true` says so. (Read here: the client options set below
/// replace the ones `from_env` read, `AWS_ALLOW_HTTP` among them.)
fn allow_http() -> bool {
    loopback_endpoint() || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl ObjectStoreCheckpoint {
    /// Opens `url` (`s3://bucket/prefix`, ...), configured from the
    /// environment, under the default bounds.
    pub fn open(url: &str) -> Result<Self, ObjectStoreError> {
        Self::open_with(url, CheckpointBounds::default())
    }

    /// Opens `url`, its reads and listings under `bounds`.
    pub fn open_with(url: &str, bounds: CheckpointBounds) -> Result<Self, ObjectStoreError> {
        let url = url.trim_end_matches('/').to_string();
        let bad = || ObjectStoreError::Url { url: url.clone() };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_string();
        if !super::is_object_store_url(&url) {
            return Err(bad());
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad());
        }
        let prefix = ObjectPath::from(prefix);
        // Every request has a deadline: connect, whole request, and retries.
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_allow_http(allow_http());
        let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(60), ..Default::default() };
        let build = |source| ObjectStoreError::Build { url: url.clone(), source };
        fn both<S: ObjectStore + PaginatedListStore>(s: S) -> (Arc<dyn ObjectStore>, Arc<dyn PaginatedListStore>) {
            let s = Arc::new(s);
            (s.clone(), s)
        }
        let (store, lister) = match scheme.as_str() {
            "s3" | "s3a" => both(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(build)?,
            ),
            "gs" => both(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(build)?,
            ),
            _ => both(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(build)?,
            ),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ObjectStoreError::Runtime { url: url.clone(), source })?;
        Ok(ObjectStoreCheckpoint { url, store, lister, prefix, rt, bounds })
    }

    /// The same bucket, another prefix under this one (a batch's output).
    fn key(&self, name: &str) -> ObjectPath {
        name.split('/').filter(|s| !s.is_empty()).fold(self.prefix.clone(), |p, s| p.child(s))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one request to completion, under [`REQUEST_DEADLINE`].
    fn run<T>(&self, name: &str, f: impl std::future::Future<Output = object_store::Result<T>>) -> std::io::Result<T> {
        match self.rt.block_on(async { tokio::time::timeout(REQUEST_DEADLINE, f).await }) {
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{}/{name}: no answer within {} s", self.url, REQUEST_DEADLINE.as_secs()),
            )),
            Ok(r) => r.map_err(to_io),
        }
    }

    /// PUT with a mode; returns the new object's ETag.
    fn put_mode(&self, name: &str, bytes: &[u8], mode: PutMode) -> std::io::Result<Option<String>> {
        let key = self.key(name);
        let payload = PutPayload::from(bytes.to_vec());
        let opts = PutOptions { mode, ..Default::default() };
        Ok(self.run(name, self.store.put_opts(&key, payload, opts))?.e_tag)
    }

    /// GET of at most `limit` bytes; returns the bytes and the ETag.
    fn get_bounded(&self, name: &str, limit: u64) -> std::io::Result<(Vec<u8>, Option<String>)> {
        self.get_within(name, limit, None)
    }

    /// [`Self::get_bounded`]; `setting`, when the bound is a job setting,
    /// names it in the error of an object over it.
    fn get_within(&self, name: &str, limit: u64, setting: Option<&str>) -> std::io::Result<(Vec<u8>, Option<String>)> {
        let key = self.key(name);
        let url = &self.url;
        let stall = Duration::from_millis(self.bounds.stall_timeout_ms);
        self.run(name, async {
            let r = self.store.get(&key).await?;
            if r.meta.size > limit {
                let by = setting.map(|s| format!(" ([checkpoint] {s} in the job file)")).unwrap_or_default();
                return Err(object_store::Error::Generic {
                    store: "weir",
                    source: format!("{url}/{name}: {} bytes, more than the {limit} allowed{by}", r.meta.size).into(),
                });
            }
            let etag = r.meta.e_tag.clone();
            let declared = r.meta.size;
            // Not `r.bytes()`: it reserves the declared size up front, and a
            // hostile server declares what it likes. Grow with what arrives,
            // and stop at the first byte past the declared size.
            let mut body = r.into_stream();
            let mut out = Vec::with_capacity(declared.min(INITIAL_READ_BYTES) as usize);
            loop {
                let next = tokio::time::timeout(stall, futures_util::StreamExt::next(&mut body));
                let Ok(next) = next.await else {
                    return Err(object_store::Error::Generic {
                        store: "weir",
                        source: format!(
                            "{url}/{name}: the server stalled: no byte for {} ms ([checkpoint] stall_timeout_ms) \
                             after {} of the {declared} bytes declared",
                            stall.as_millis(),
                            out.len()
                        )
                        .into(),
                    });
                };
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| object_store::Error::Generic {
                    store: "weir",
                    source: format!("{url}/{name}: reading the body after {} bytes: {e}", out.len()).into(),
                })?;
                if out.len() as u64 + chunk.len() as u64 > declared {
                    return Err(object_store::Error::Generic {
                        store: "weir",
                        source: format!("{url}/{name}: the server sent more than the {declared} bytes it declared")
                            .into(),
                    });
                }
                out.extend_from_slice(&chunk);
            }
            if (out.len() as u64) < declared {
                return Err(object_store::Error::Generic {
                    store: "weir",
                    source: format!("{url}/{name}: {} of the {declared} bytes declared arrived", out.len()).into(),
                });
            }
            Ok((out, etag))
        })
    }
}

/// One object written in pieces ([`ObjectStoreCheckpoint::writer`]): the
/// caller renders its bytes into parts of about [`MULTIPART_PART_BYTES`]
/// ([`ObjectWriter::put_part`]) and hands over the rest at the end
/// ([`ObjectWriter::finish`]). An object that never reached a full part is
/// one PUT; a bigger one is a multipart upload, started at the first part and
/// completed by `finish`. Dropped unfinished (an error on the way), the
/// upload is aborted: nothing of it becomes visible.
pub struct ObjectWriter<'a> {
    store: &'a ObjectStoreCheckpoint,
    name: String,
    upload: Option<Box<dyn MultipartUpload>>,
    parts: usize,
}

/// A test-only failure (cargo feature `failpoints`):
/// `WEIR_FAILPOINT_MULTIPART_FAIL_AFTER_PARTS=N` fails a multipart upload
/// once N parts are uploaded (before the next part or the completion).
#[cfg(feature = "failpoints")]
fn multipart_failure_due(parts: usize) -> bool {
    std::env::var("WEIR_FAILPOINT_MULTIPART_FAIL_AFTER_PARTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| parts >= n)
}

#[cfg(not(feature = "failpoints"))]
fn multipart_failure_due(_parts: usize) -> bool {
    false
}

impl ObjectWriter<'_> {
    fn injected_failure(&self) -> std::io::Result<()> {
        if multipart_failure_due(self.parts) {
            return Err(std::io::Error::other(format!(
                "{}/{}: injected failure after {} parts (WEIR_FAILPOINT_MULTIPART_FAIL_AFTER_PARTS)",
                self.store.url, self.name, self.parts
            )));
        }
        Ok(())
    }

    /// Uploads `bytes` as the next part (starting the multipart upload at
    /// the first). Every part but the last must be at least 5 MiB on S3:
    /// callers send parts of at least [`MULTIPART_PART_BYTES`].
    pub fn put_part(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        let store = self.store;
        if self.upload.is_none() {
            let key = store.key(&self.name);
            self.upload = Some(store.run(&self.name, store.store.put_multipart(&key))?);
        }
        self.injected_failure()?;
        let Some(upload) = self.upload.as_mut() else { return Ok(()) };
        let part = upload.put_part(PutPayload::from(bytes));
        store.run(&self.name, part)?;
        self.parts += 1;
        Ok(())
    }

    /// Writes the rest (`bytes`, possibly empty) and makes the object
    /// visible: one PUT when no part was uploaded, else the last part and the
    /// completion of the upload.
    pub fn finish(mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        if self.upload.is_none() {
            return self.store.put_mode(&self.name, &bytes, PutMode::Overwrite).map(|_| ());
        }
        if !bytes.is_empty() {
            self.put_part(bytes)?;
        }
        self.injected_failure()?;
        let store = self.store;
        let Some(mut upload) = self.upload.take() else { return Ok(()) };
        match store.run(&self.name, upload.complete()) {
            Ok(_) => Ok(()),
            Err(e) => {
                // Completion failed: abort, so the parts do not linger.
                self.upload = Some(upload);
                Err(e)
            }
        }
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            // Best effort, under the request deadline: a failed abort
            // leaves invisible parts that the bucket's lifecycle rules
            // (AbortIncompleteMultipartUpload) reclaim; the object itself
            // never appears.
            if let Err(e) = self.store.run(&self.name, upload.abort()) {
                tracing::warn!("{}/{}: cannot abort the multipart upload: {e}", self.store.url, self.name);
            }
        }
    }
}

impl ObjectStoreCheckpoint {
    /// A writer of the object `name`, written in parts ([`ObjectWriter`]).
    pub fn writer(&self, name: &str) -> ObjectWriter<'_> {
        ObjectWriter { store: self, name: name.to_string(), upload: None, parts: 0 }
    }
}

fn to_io(e: object_store::Error) -> std::io::Error {
    use std::io::ErrorKind;
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        object_store::Error::Precondition { .. } => ErrorKind::WouldBlock,
        object_store::Error::NotImplemented => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    };
    std::io::Error::new(kind, e.to_string())
}

impl ObjectStoreCheckpoint {
    /// Bytes of every object under this prefix, at any depth (a storage
    /// quota's measure), listing at most `max_list_pages` pages; `false`
    /// when the listing was cut there, so the sum is a lower bound.
    pub fn usage(&self) -> std::io::Result<(u64, bool)> {
        // Keys under the prefix, not beside it (`p/a`, not `pa/`).
        let prefix = (!self.prefix.as_ref().is_empty()).then(|| format!("{}/", self.prefix));
        let max_pages = self.bounds.max_list_pages as usize;
        let (mut bytes, mut complete) = (0u64, false);
        self.run("", async {
            let mut token = None;
            for _ in 0..max_pages {
                let opts = PaginatedListOptions { page_token: token.take(), ..Default::default() };
                let r = self.lister.list_paginated(prefix.as_deref(), opts).await?;
                bytes = r.result.objects.iter().fold(bytes, |b, o| b.saturating_add(o.size));
                match r.page_token {
                    Some(t) => token = Some(t),
                    None => {
                        complete = true;
                        break;
                    }
                }
            }
            Ok(())
        })?;
        Ok((bytes, complete))
    }
}

impl CheckpointStore for ObjectStoreCheckpoint {
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        // One PUT: the object appears whole or not at all.
        self.put_mode(name, bytes, PutMode::Overwrite).map(|_| ())
    }
    fn get(&self, name: &str) -> std::io::Result<Vec<u8>> {
        let (limit, setting) = self.bounds.max_file_bytes(name);
        self.get_within(name, limit, Some(setting)).map(|(b, _)| b)
    }
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        // Page by page, bounded: `list_with_delimiter` follows continuation
        // tokens for as long as the server hands them out, keeping every key.
        let prefix = format!("{}/", self.key(dir));
        let url = &self.url;
        let refuse =
            |why: String| object_store::Error::Generic { store: "weir", source: format!("{url}/{dir}: {why}").into() };
        let mut v: Vec<String> = Vec::new();
        let (max_pages, max_keys) = (self.bounds.max_list_pages as usize, self.bounds.max_list_keys as usize);
        self.run(dir, async {
            let mut token = None;
            for page in 1.. {
                if page > max_pages {
                    return Err(refuse(format!(
                        "the listing goes on past {max_pages} pages ({} keys so far); refused \
                         ([checkpoint] max_list_pages)",
                        v.len()
                    )));
                }
                let opts = PaginatedListOptions {
                    delimiter: Some("/".into()),
                    page_token: token.take(),
                    ..Default::default()
                };
                let r = self.lister.list_paginated(Some(&prefix), opts).await?;
                if v.len() + r.result.objects.len() > max_keys {
                    return Err(refuse(format!(
                        "the listing holds more than {max_keys} keys; refused ([checkpoint] max_list_keys)"
                    )));
                }
                v.extend(
                    r.result
                        .objects
                        .into_iter()
                        .filter_map(|o| o.location.filename().map(str::to_string))
                        .filter(|n| !n.starts_with('.')),
                );
                match r.page_token {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            Ok(())
        })?;
        v.sort();
        Ok(v)
    }
    fn delete(&self, name: &str) -> std::io::Result<()> {
        self.run(name, self.store.delete(&self.key(name)))
    }
    fn locate(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}/{name}", self.url))
    }
    fn bounds(&self) -> CheckpointBounds {
        self.bounds
    }
}

/// Stores opened by URL, shared (a store and its runtime are not free, and
/// executors read data checkpoints by URL), under the default bounds.
pub fn shared(url: &str) -> Result<Arc<ObjectStoreCheckpoint>, ObjectStoreError> {
    shared_with(url, CheckpointBounds::default())
}

/// [`shared`] under `bounds`: one store per URL and bounds (jobs of one
/// `weir serve` may set different bounds on one bucket).
pub fn shared_with(url: &str, bounds: CheckpointBounds) -> Result<Arc<ObjectStoreCheckpoint>, ObjectStoreError> {
    type Stores = HashMap<(String, CheckpointBounds), Arc<ObjectStoreCheckpoint>>;
    static STORES: OnceLock<Mutex<Stores>> = OnceLock::new();
    let url = url.trim_end_matches('/');
    let mut m = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let key = (url.to_string(), bounds);
    if let Some(s) = m.get(&key) {
        return Ok(s.clone());
    }
    let s = Arc::new(ObjectStoreCheckpoint::open_with(url, bounds)?);
    m.insert(key, s.clone());
    Ok(s)
}

// ---------------------------------------------------------------------------
// The lease.

/// What the lease object holds (JSON, at most [`MAX_LEASE_BYTES`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    /// For messages: `pid N on HOST`.
    owner: String,
    pid: u32,
    /// This kernel boot and pid namespace (Linux): with the pid, tells a
    /// driver on the same machine whether the holder still runs.
    machine: String,
    /// Random: who wrote the lease (a renewal bumps `renewals`).
    token: u64,
    renewals: u64,
    ttl_ms: u64,
    /// The driver epoch of the holder (`super::fence`); 0 in leases of
    /// drivers before epochs.
    #[serde(default)]
    epoch: u64,
    /// Released by its holder at exit: free to take at once. The object is
    /// kept (not deleted) so that an older driver that wakes up later still
    /// finds the newer epoch that fenced it.
    #[serde(default)]
    released: bool,
}

/// The lease of one checkpoint location, held by this driver while it lives.
/// Dropping it stops the renewals and marks the lease object released.
pub struct Lease {
    store: Arc<ObjectStoreCheckpoint>,
    state: Arc<LeaseState>,
    token: u64,
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// Shared between the driver's checkpoint writer and the renewal thread.
pub struct LeaseState {
    stop: Mutex<bool>,
    wake: std::sync::Condvar,
    lost: AtomicBool,
    /// When the last renewal succeeded (ms since `epoch`).
    renewed_ms: AtomicU64,
    epoch: Instant,
    ttl: Duration,
    why_lost: Mutex<Option<String>>,
    /// This holder's driver epoch and token.
    driver_epoch: u64,
    token: u64,
}

impl LeaseState {
    /// Whether the lease is still surely ours: not lost, and renewed within
    /// two thirds of its TTL (a taker waits a whole TTL of silence first).
    pub fn check(&self) -> Result<(), String> {
        if self.lost.load(Ordering::Acquire) {
            let why = self.why_lost.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
            return Err(format!("the checkpoint lease is lost ({why}); this driver no longer writes checkpoints"));
        }
        let since = (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.renewed_ms.load(Ordering::Acquire));
        if since > self.ttl.as_millis() as u64 * 2 / 3 {
            return Err(format!("the checkpoint lease was not renewed for {since} ms; not writing until it is"));
        }
        Ok(())
    }

    /// Renewed within half its TTL and not lost: a taker must see the lease
    /// unchanged for a whole TTL after the last renewal, so none can have
    /// taken it yet, and a commit needs no read of the lease object.
    fn surely_ours(&self) -> bool {
        let since = (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.renewed_ms.load(Ordering::Acquire));
        !self.lost.load(Ordering::Acquire) && since < self.ttl.as_millis() as u64 / 2
    }

    fn lose(&self, why: String) {
        tracing::error!("checkpoint lease lost: {why}");
        *self.why_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.lost.store(true, Ordering::Release);
    }
}

use super::{holder_is_dead_here, hostname, machine_id, random_token};

/// Why a lease could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Another driver holds it and renews it.
    #[error("held by {owner}")]
    Held { owner: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const LEASE: &str = "lock";

impl Lease {
    /// Takes the lease of the location `store` is at, for a driver that
    /// renews it every `ttl / 3`. The rule:
    ///
    /// 1. no lease object: create it with `If-None-Match: *` — of two drivers
    ///    racing, exactly one PUT succeeds;
    /// 2. a lease whose holder ran on this machine (same kernel boot and pid
    ///    namespace) and whose process is gone: taken over at once;
    /// 3. otherwise the lease is watched: if it changes (a renewal) within
    ///    the holder's TTL, the holder is alive and this driver is refused,
    ///    naming it; if it stays unchanged for a whole TTL (measured on this
    ///    machine's monotonic clock, so clocks need not agree), the holder is
    ///    presumed dead and the lease is taken over with `If-Match` on the
    ///    ETag that was watched — of two takers, one wins.
    ///
    /// A holder stops writing checkpoints when it has not renewed for 2/3 of
    /// its TTL, before a taker can have waited a whole TTL.
    pub fn acquire(store: Arc<ObjectStoreCheckpoint>, ttl: Duration) -> Result<Lease, LeaseError> {
        let ttl = ttl.max(Duration::from_millis(300));
        // Epochs only grow: above every epoch a metadata checkpoint names
        // and the lease replaced.
        let floor = super::newest_epoch(&*store);
        let mut body = LeaseBody {
            owner: format!("pid {} on {}", std::process::id(), hostname()),
            pid: std::process::id(),
            machine: machine_id(),
            token: random_token(),
            renewals: 0,
            ttl_ms: ttl.as_millis() as u64,
            epoch: floor + 1,
            released: false,
        };
        let encode = |b: &LeaseBody| serde_json::to_vec(b).map_err(std::io::Error::other);
        // (ETag watched, since when, the holder's TTL)
        let mut watched: Option<(Option<String>, Instant, Duration)> = None;
        // A bounded wait: the longest TTL a holder may claim, and then some.
        let deadline = Instant::now() + Duration::from_secs(600);
        let etag = loop {
            if Instant::now() > deadline {
                return Err(LeaseError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the lease kept changing hands",
                )));
            }
            match store.put_mode(LEASE, &encode(&body)?, PutMode::Create) {
                Ok(etag) => break etag,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            let (bytes, etag) = match store.get_bounded(LEASE, MAX_LEASE_BYTES) {
                Ok(x) => x,
                // Released between our PUT and GET: try to create it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let holder: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
            let owner = holder.as_ref().map_or_else(|| "an unreadable lease".to_string(), |h| h.owner.clone());
            // A holder may claim at most 10 minutes; an unreadable lease gets 1 minute.
            let holder_ttl = Duration::from_millis(holder.as_ref().map_or(60_000, |h| h.ttl_ms).clamp(300, 600_000));
            let take_now = holder.as_ref().is_some_and(|h| h.released || holder_is_dead_here(&h.machine, h.pid));
            body.epoch = holder.as_ref().map_or(0, |h| h.epoch).max(floor) + 1;
            let take = match &watched {
                _ if take_now => true,
                Some((seen, _, _)) if *seen != etag => return Err(LeaseError::Held { owner }),
                Some((_, since, t)) => since.elapsed() >= *t,
                None => {
                    tracing::info!(
                        "checkpoint {} is leased by {owner}; waiting up to {} ms to see whether it renews it",
                        store.url(),
                        holder_ttl.as_millis()
                    );
                    watched = Some((etag.clone(), Instant::now(), holder_ttl));
                    false
                }
            };
            if take {
                let v = UpdateVersion { e_tag: etag.clone(), version: None };
                match store.put_mode(LEASE, &encode(&body)?, PutMode::Update(v)) {
                    Ok(new) => {
                        tracing::warn!(
                            "took over the checkpoint lease of {owner} (no longer running); this driver is epoch {}",
                            body.epoch
                        );
                        break new;
                    }
                    // Someone else renewed or took it: watch again.
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::NotFound) => {
                        watched = None;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            std::thread::sleep((holder_ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500)));
        };
        let state = Arc::new(LeaseState {
            stop: Mutex::new(false),
            wake: std::sync::Condvar::new(),
            lost: AtomicBool::new(false),
            renewed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            ttl,
            why_lost: Mutex::new(None),
            driver_epoch: body.epoch,
            token: body.token,
        });
        let (st, s, token) = (state.clone(), store.clone(), body.token);
        let renewer = std::thread::Builder::new()
            .name("weir-lease".into())
            .spawn(move || renew(&s, &st, body, etag))
            .map_err(LeaseError::Io)?;
        Ok(Lease { store, state, token, renewer: Some(renewer) })
    }

    pub fn state(&self) -> Arc<LeaseState> {
        self.state.clone()
    }

    /// This driver's fence on the location (`super::fence`).
    pub fn fence(&self) -> super::fence::Fence {
        let holder = LeaseHolder { store: self.store.clone(), state: self.state.clone() };
        super::fence::Fence::new(self.state.driver_epoch, self.store.url().to_string(), Box::new(holder))
    }
}

/// Checks, before each commit, that the lease is still this driver's:
/// renewed within half its TTL (no taker can have waited out a TTL since),
/// or else the lease object read and compared, then the commit (a
/// check-then-write window: see `super::fence`). A driver that was paused
/// or cut off past half its TTL reads the object, and finds who took over.
/// (It used to be read before every commit: about seven GETs a batch.)
struct LeaseHolder {
    store: Arc<ObjectStoreCheckpoint>,
    state: Arc<LeaseState>,
}

impl super::fence::Holder for LeaseHolder {
    fn commit_if_held(&self, commit: &mut dyn FnMut()) -> Result<(), super::fence::FenceError> {
        use super::fence::{FenceError, Fenced};
        if self.state.surely_ours() {
            commit();
            return Ok(());
        }
        let location = self.store.url().to_string();
        let check = |why: String| FenceError::Check { location: location.clone(), why };
        // Overdue but not known to be lost (the store is unreachable, say):
        // no commit, and no request that would wait for the store.
        if let Err(why) = self.state.check() {
            if !self.state.lost.load(Ordering::Acquire) {
                return Err(check(why));
            }
        }
        let (bytes, _) = self.store.get_bounded(LEASE, MAX_LEASE_BYTES).map_err(|e| check(e.to_string()))?;
        let body: LeaseBody = serde_json::from_slice(&bytes).map_err(|e| check(format!("unreadable lease: {e}")))?;
        if body.token != self.state.token {
            self.state.lose(format!("epoch {} ({}) took over", body.epoch, body.owner));
            let newer = body.epoch;
            return Err(
                Fenced { location: location.clone(), mine: self.state.driver_epoch, newer, owner: body.owner }.into()
            );
        }
        // Ours, but not renewed lately: not sure enough to commit.
        self.state.check().map_err(check)?;
        commit();
        Ok(())
    }
}

/// The renewal loop: every TTL/3, a conditional PUT on the last ETag. A
/// refused one means another driver took the lease: this one is lost for good.
fn renew(store: &ObjectStoreCheckpoint, st: &LeaseState, mut body: LeaseBody, mut etag: Option<String>) {
    loop {
        let stopped = st.stop.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = st.wake.wait_timeout(stopped, st.ttl / 3).unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return;
        }
        drop(stopped);
        body.renewals += 1;
        let Ok(bytes) = serde_json::to_vec(&body) else { return };
        let v = UpdateVersion { e_tag: etag.clone(), version: None };
        match store.put_mode(LEASE, &bytes, PutMode::Update(v)) {
            Ok(new) => {
                etag = new;
                st.renewed_ms.store(st.epoch.elapsed().as_millis() as u64, Ordering::Release);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::NotFound) => {
                st.lose(format!("another driver took over {}/{LEASE}: {e}", store.url()));
                return;
            }
            // A network error: retried at the next tick; `check` stops the
            // writes meanwhile once the renewal is overdue.
            Err(e) => tracing::warn!("cannot renew the checkpoint lease: {e}"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.state.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.state.wake.notify_all();
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        // Released only when still ours (never after a takeover), by a
        // conditional PUT on the ETag just read: a taker in between keeps
        // its lease. The object stays, marked released, with this epoch: an
        // older driver that wakes up later is fenced naming it.
        let held = self
            .store
            .get_bounded(LEASE, MAX_LEASE_BYTES)
            .ok()
            .and_then(|(b, etag)| serde_json::from_slice::<LeaseBody>(&b).ok().map(|b| (b, etag)))
            .filter(|(b, _)| b.token == self.token);
        if let Some((mut body, etag)) = held {
            body.released = true;
            let released = serde_json::to_vec(&body).map_err(std::io::Error::other).and_then(|bytes| {
                self.store.put_mode(LEASE, &bytes, PutMode::Update(UpdateVersion { e_tag: etag, version: None }))
            });
            if let Err(e) = released {
                tracing::warn!("cannot release the checkpoint lease {}/{LEASE}: {e}", self.store.url());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A bucket whose listing never ends: every page "truncated", with a new
    /// token and one object claiming `u64::MAX` bytes.
    fn endless_listing() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = s.set_nodelay(true);
                std::thread::spawn(move || {
                    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                    for page in 0u64.. {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>\
                             <IsTruncated>true</IsTruncated><NextContinuationToken>t{page}</NextContinuationToken>\
                             <Contents><Key>p/k{page}</Key><LastModified>2026-11-30T00:00:00.000Z</LastModified>\
                             <ETag>\"e\"</ETag><Size>{}</Size></Contents></ListBucketResult>",
                            u64::MAX
                        );
                        if write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// A hostile listing cannot keep a storage-quota measure going or
    /// overflow it: it stops at `max_list_pages`, says the sum is a lower
    /// bound, and sizes saturate.
    #[test]
    fn usage_stops_at_the_page_bound_and_saturates() {
        let port = endless_listing();
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ] {
            std::env::set_var(k, v);
        }
        let bounds = CheckpointBounds { max_list_pages: 5, ..Default::default() };
        let store = ObjectStoreCheckpoint::open_with("s3://b/p", bounds).unwrap();
        let started = Instant::now();
        assert_eq!(store.usage().unwrap(), (u64::MAX, false));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
