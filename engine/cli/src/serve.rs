//! `weir serve` (the multi-tenant job server, `weir_serve`) and its clients:
//! `weir submit`, `weir jobs`, `weir status`, `weir stop`, `weir logs`. The
//! clients speak the server's HTTP API (`docs/serve.md`) with the token of
//! `--token-file` or `WEIR_TOKEN`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::Digest;

/// Largest job file and module the client uploads (the server has its own
/// limit, `max_upload_bytes`).
const MAX_JOB_BYTES: u64 = 16 << 20;
const MAX_MODULE_BYTES: u64 = 256 << 20;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The server's configuration (`docs/serve.md`).
    #[arg(long)]
    pub config: PathBuf,
    /// Allow a non-loopback `listen` address without TLS.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's URL (default: the WEIR_SERVER environment variable, else
    /// http://127.0.0.1:7077).
    #[arg(long)]
    pub server: Option<String>,
    /// File holding the API token (default: the WEIR_TOKEN environment variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A PEM certificate to trust for an https server (e.g. self-signed).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The job file; the modules its [modules] name are uploaded with it.
    pub job: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// The job's id (as `weir submit` printed it).
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `weir serve --config serve.toml`: serves until SIGINT or SIGTERM, then
/// stops every job after its batch in flight (they resume at the next
/// start). SIGHUP re-reads the configuration (tokens, quotas).
pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let config = weir_serve::Config::load(&args.config)?;
    let tenants = config.tenants.len();
    let server = weir_serve::Server::open(config.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-serve")
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    rt.block_on(async {
        let listener = weir_serve::http::Listener::bind(&config, args.insecure).await?;
        let scheme = if listener.is_tls() { "https" } else { "http" };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let s = server.clone();
        let started = tokio::task::spawn_blocking(move || s.recover()).await.context("recovering jobs")?;
        if !started.is_empty() {
            eprintln!("weir: recovered {} job(s): {}", started.len(), started.join(", "));
        }
        eprintln!("weir: serving {tenants} tenant(s) at {scheme}://{addr}/ (state in {})", config.state_dir.display());
        eprintln!("weir: status page at {scheme}://{addr}/ui");
        let s = server.clone();
        let shutdown = async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
            else {
                return std::future::pending().await;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => s.reload_config(),
                }
            }
        };
        listener.serve(weir_serve::api::router(server.clone()), shutdown).await;
        anyhow::Ok(())
    })?;
    eprintln!("weir: stopping every job after its batch in flight");
    server.shutdown(Duration::from_secs(60));
    Ok(ExitCode::SUCCESS)
}

/// An API client: base URL, token, a small runtime for reqwest.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    rt: tokio::runtime::Runtime,
}

impl Client {
    fn new(a: &ServerArgs) -> Result<Client> {
        let base = a
            .server
            .clone()
            .or_else(|| std::env::var("WEIR_SERVER").ok())
            .unwrap_or_else(|| "http://127.0.0.1:7077".into())
            .trim_end_matches('/')
            .to_string();
        let token = match &a.token_file {
            Some(p) => {
                let b = weir::files::read_limited(p, 64 << 10).with_context(|| format!("reading {}", p.display()))?;
                String::from_utf8_lossy(&b).trim().to_string()
            }
            None => std::env::var("WEIR_TOKEN").unwrap_or_default().trim().to_string(),
        };
        if token.is_empty() {
            bail!("no token: pass --token-file or set WEIR_TOKEN");
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        if let Some(ca) = &a.ca_file {
            let pem = weir::files::read_limited(ca, 1 << 20).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("--ca-file")?);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Client { http: b.build().context("the HTTP client")?, base, token, rt })
    }

    /// Sends a request; the JSON answer, or the server's error as an error.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some((bytes, ct)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        self.rt.block_on(async {
            let r = req.send().await.with_context(|| format!("cannot reach {}", self.base))?;
            let status = r.status().as_u16();
            let bytes = r.bytes().await.context("reading the server's answer")?;
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes).trim().to_string() }));
            Ok((status, v))
        })
    }

    fn ok(&self, method: reqwest::Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Value> {
        let (status, v) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or("").to_string();
            bail!("the server answered {status}: {msg}");
        }
        Ok(v)
    }
}

/// `weir submit JOB.toml`: uploads the modules the job names (each once:
/// the server keeps them by SHA-256), then the job; prints its id.
pub fn submit(a: &SubmitArgs) -> Result<ExitCode> {
    let c = Client::new(&a.server)?;
    let text = String::from_utf8(
        weir::files::read_limited(&a.job, MAX_JOB_BYTES).with_context(|| format!("reading {}", a.job.display()))?,
    )
    .with_context(|| format!("{} is not UTF-8 text", a.job.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", a.job.display()))?;
    let base = a.job.parent().unwrap_or(Path::new("."));
    let mut modules = BTreeMap::new();
    if let Some(table) = doc.get("modules").and_then(|m| m.as_table()) {
        for (name, p) in table {
            let Some(p) = p.as_str() else { bail!("module {name}: expected a path") };
            let path = base.join(p);
            let bytes = weir::files::read_limited(&path, MAX_MODULE_BYTES)
                .with_context(|| format!("module {name}: reading {}", path.display()))?;
            let hash: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            let (status, _) = c.call(reqwest::Method::GET, &format!("/api/v1/modules/{hash}"), None)?;
            if status != 200 {
                c.ok(reqwest::Method::PUT, &format!("/api/v1/modules/{hash}"), Some((bytes, "application/wasm")))
                    .with_context(|| format!("uploading module {name} ({})", path.display()))?;
            }
            modules.insert(name.clone(), hash);
        }
    }
    let name = a.job.file_name().map(|n| n.to_string_lossy().into_owned());
    let body = serde_json::to_vec(&json!({ "name": name, "job": text, "modules": modules }))?;
    let v = c.ok(reqwest::Method::POST, "/api/v1/jobs", Some((body, "application/json")))?;
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    crate::cli::print_out(&format!("{id}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// `weir jobs`: the tenant's jobs, one a line.
pub fn jobs(a: &ServerArgs) -> Result<ExitCode> {
    let c = Client::new(a)?;
    let v = c.ok(reqwest::Method::GET, "/api/v1/jobs", None)?;
    let mut out = format!("{:<20} {:<9} {:>8} {}\n", "ID", "STATE", "BATCHES", "NAME");
    for j in v.as_array().into_iter().flatten() {
        let s = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let batches = j.pointer("/progress/batches_completed").and_then(Value::as_u64).map(|n| n.to_string());
        out.push_str(&format!(
            "{:<20} {:<9} {:>8} {}\n",
            s("id"),
            s("state"),
            batches.unwrap_or_else(|| "-".into()),
            s("name")
        ));
    }
    crate::cli::print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `weir status ID`: the job as JSON.
pub fn status(a: &JobArgs) -> Result<ExitCode> {
    let c = Client::new(&a.server)?;
    let v = c.ok(reqwest::Method::GET, &format!("/api/v1/jobs/{}", a.id), None)?;
    crate::cli::print_out(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
    Ok(ExitCode::SUCCESS)
}

/// `weir stop ID [--now]`.
pub fn stop(a: &JobArgs, now: bool) -> Result<ExitCode> {
    let c = Client::new(&a.server)?;
    let v = c.ok(reqwest::Method::POST, &format!("/api/v1/jobs/{}/stop?now={now}", a.id), None)?;
    crate::cli::print_out(&format!("{} {}\n", a.id, v.get("state").and_then(Value::as_str).unwrap_or("")))?;
    Ok(ExitCode::SUCCESS)
}

/// `weir logs ID [--follow]`: the job's log; with --follow, until the job ends.
pub fn logs(a: &JobArgs, follow: bool) -> Result<ExitCode> {
    let c = Client::new(&a.server)?;
    let mut since = 0u64;
    loop {
        let wait = if follow { 5000 } else { 0 };
        let v =
            c.ok(reqwest::Method::GET, &format!("/api/v1/jobs/{}/logs?since={since}&wait_ms={wait}", a.id), None)?;
        let lines = v.get("lines").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut out = String::new();
        for l in &lines {
            out.push_str(l.as_str().unwrap_or(""));
            out.push('\n');
        }
        crate::cli::print_out(&out)?;
        since = v.get("next").and_then(Value::as_u64).unwrap_or(since);
        let live = v.get("live").and_then(Value::as_bool).unwrap_or(false);
        if lines.is_empty() && (!follow || !live) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
