//! The HTTP API of `weir serve` (axum): jobs, modules, logs, outputs,
//! `/metrics`, `/api/openapi.json` and `/healthz`. Every route but
//! `/healthz` needs `Authorization: Bearer TOKEN`; a tenant sees only its
//! own jobs (another tenant's job is "not found"). Bodies are bounded
//! (`max_upload_bytes`; an announced length above it is refused before
//! anything is read) and must arrive within `read_timeout_ms`; every request
//! is answered within `request_timeout_ms`. The blocking work (files, loading a job) runs on
//! tokio's blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::config::Principal;
use crate::server::{Server, Submission};
use crate::ServeError;

/// The OpenAPI description served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route, as `METHOD path` (checked against [`OPENAPI`] by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("put", "/api/v1/modules/{sha256}"),
    ("get", "/api/v1/modules/{sha256}"),
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("post", "/api/v1/jobs/{id}/stop"),
    ("get", "/api/v1/jobs/{id}/logs"),
    ("get", "/api/v1/jobs/{id}/outputs"),
    ("get", "/api/v1/pool"),
    ("get", "/ui"),
    ("get", "/ui/login"),
    ("post", "/ui/login"),
    ("post", "/ui/logout"),
    ("get", "/ui/jobs/{id}"),
    ("get", "/ui/jobs/{id}/logs"),
];

/// An error as the API answers it: the status and `{"error": "..."}`.
pub struct ApiError(ServeError);

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(json!({ "error": self.0.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The request's body: at most `max_upload_bytes` (413), arriving within
/// `read_timeout_ms` (408).
async fn read_body(s: &Server, body: Body) -> Result<Bytes, Response> {
    let cfg = s.config();
    let limit = usize::try_from(cfg.max_upload_bytes).unwrap_or(usize::MAX);
    let fail = |code: StatusCode, m: String| (code, Json(json!({ "error": m }))).into_response();
    match tokio::time::timeout(Duration::from_millis(cfg.read_timeout_ms), axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than max_upload_bytes = {limit} ({e})"),
        )),
        Err(_) => Err(fail(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time (read_timeout_ms)".into())),
    }
}

/// The router over `server`.
pub fn router(server: Arc<Server>) -> Router {
    let cfg = server.config();
    let limit = usize::try_from(cfg.max_upload_bytes).unwrap_or(usize::MAX);
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/modules/{sha256}", put(put_module).get(has_module))
        .route("/api/v1/jobs", get(list_jobs).post(submit_job))
        .route("/api/v1/jobs/{id}", get(job_status))
        .route("/api/v1/jobs/{id}/stop", post(stop_job))
        .route("/api/v1/jobs/{id}/logs", get(job_logs))
        .route("/api/v1/jobs/{id}/outputs", get(job_outputs))
        .route("/api/v1/pool", get(pool_status))
        .merge(crate::ui::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |req: Request, next: Next| deadline(timeout, limit, req, next)))
        .with_state(server)
}

/// A request must be answered within the deadline, so a slow or stuck
/// client cannot hold a handler; a body announced larger than the limit is
/// refused before a byte of it is read.
async fn deadline(timeout: Duration, limit: usize, req: Request, next: Next) -> Response {
    let announced =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        let msg = format!("the body is larger than max_upload_bytes = {limit}");
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({ "error": msg }))).into_response();
    }
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, Json(json!({ "error": "request timed out" }))).into_response(),
    }
}

/// Who the bearer token names. The token itself is never logged.
fn principal(s: &Server, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ServeError::Unauthorized)?;
    Ok(s.config().authenticate(token).ok_or(ServeError::Unauthorized)?)
}

/// The tenant the token names (the admin token runs no jobs).
fn tenant(s: &Server, headers: &HeaderMap) -> ApiResult<String> {
    match principal(s, headers)? {
        Principal::Tenant(t) => Ok(t),
        Principal::Admin => Err(ServeError::Refused("the admin token reads /metrics only".into()).into()),
    }
}

/// Runs blocking work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ServeError> + Send + 'static) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError),
        Err(e) => Err(ServeError::Io(format!("internal: {e}")).into()),
    }
}

async fn openapi(State(s): State<Arc<Server>>, headers: HeaderMap) -> ApiResult<Response> {
    principal(&s, &headers)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}

async fn put_module(
    State(s): State<Arc<Server>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    let body = match read_body(&s, body).await {
        Ok(b) => b,
        Err(r) => return Ok(r),
    };
    let h = hash.clone();
    blocking(move || s.store().put(&t, &h, &body)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "sha256": hash }))).into_response())
}

async fn has_module(State(s): State<Arc<Server>>, Path(hash): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    if s.store().owns(&t, &hash) {
        Ok(Json(json!({ "sha256": hash })).into_response())
    } else {
        Err(ServeError::NotFound(format!("module {hash}")).into())
    }
}

async fn submit_job(State(s): State<Arc<Server>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    let body = match read_body(&s, body).await {
        Ok(b) => b,
        Err(r) => return Ok(r),
    };
    let sub: Submission = serde_json::from_slice(&body).map_err(|e| {
        ServeError::BadRequest(format!("a submission is {{\"job\": \"TOML\", \"modules\": {{name: sha256}}}}: {e}"))
    })?;
    let view = blocking(move || s.submit(&t, sub)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list_jobs(State(s): State<Arc<Server>>, headers: HeaderMap) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    Ok(Json(s.list(&t)).into_response())
}

async fn job_status(State(s): State<Arc<Server>>, Path(id): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    Ok(Json(s.status(&t, &id)?).into_response())
}

#[derive(Deserialize)]
struct StopQuery {
    #[serde(default)]
    now: bool,
}

async fn stop_job(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    Ok(Json(s.stop(&t, &id, q.now)?).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    since: u64,
    /// Wait up to this long (ms, at most 10 s) for a line when there is none.
    #[serde(default)]
    wait_ms: u64,
}

async fn job_logs(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    let cap = Duration::from_millis(q.wait_ms.min(10_000).min(s.config().request_timeout_ms / 2));
    let end = tokio::time::Instant::now() + cap;
    loop {
        let (lines, next, live) = s.logs(&t, &id, q.since)?;
        if !lines.is_empty() || !live || tokio::time::Instant::now() >= end {
            return Ok(Json(json!({ "lines": lines, "next": next, "live": live })).into_response());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job_outputs(State(s): State<Arc<Server>>, Path(id): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let t = tenant(&s, &headers)?;
    let v = s.status(&t, &id)?;
    Ok(Json(json!({ "outputs": v.outputs, "checkpoint": v.checkpoint })).into_response())
}

/// The shared executor pool now: its executor processes (slots,
/// heartbeats, the jobs with tasks on each). A tenant sees every executor
/// but only its own jobs on them; the admin token sees every tenant's.
async fn pool_status(State(s): State<Arc<Server>>, headers: HeaderMap) -> ApiResult<Response> {
    let only = match principal(&s, &headers)? {
        Principal::Tenant(t) => Some(t),
        Principal::Admin => None,
    };
    Ok(Json(s.pool_status(only.as_deref())).into_response())
}

/// `/metrics`: per job (`tenant`, `job` labels) and per tenant; a tenant's
/// token sees its own series, the admin token every tenant's.
async fn metrics(State(s): State<Arc<Server>>, headers: HeaderMap) -> ApiResult<Response> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type Labels = Vec<(String, String)>;
    let only = match principal(&s, &headers)? {
        Principal::Tenant(t) => Some(t),
        Principal::Admin => None,
    };
    let mut reg = prometheus_client::registry::Registry::with_prefix("weir_serve");
    let batches = Family::<Labels, Counter>::default();
    let failed = Family::<Labels, Counter>::default();
    let records = Family::<Labels, Counter>::default();
    let last = Family::<Labels, Gauge>::default();
    let jobs = Family::<Labels, Gauge>::default();
    let refused = Family::<Labels, Counter>::default();
    let mut states: BTreeMap<(String, String), i64> = BTreeMap::new();
    for v in s.all_views(only.as_deref()) {
        let state = serde_json::to_value(v.state).ok().and_then(|x| x.as_str().map(String::from)).unwrap_or_default();
        *states.entry((v.tenant.clone(), state)).or_insert(0) += 1;
        if let Some(p) = v.progress {
            let l = vec![("tenant".to_string(), v.tenant.clone()), ("job".to_string(), v.id.clone())];
            batches.get_or_create(&l).inc_by(p.batches_completed);
            failed.get_or_create(&l).inc_by(p.batches_failed);
            records.get_or_create(&l).inc_by(p.records_in);
            last.get_or_create(&l).set(p.last_batch_time.unwrap_or(0));
        }
    }
    for ((tenant, state), n) in states {
        jobs.get_or_create(&vec![("tenant".into(), tenant), ("state".into(), state)]).set(n);
    }
    for ((tenant, reason), n) in s.refusals() {
        if only.as_deref().is_none_or(|t| t == tenant) {
            refused.get_or_create(&vec![("tenant".into(), tenant), ("reason".into(), reason.into())]).inc_by(n);
        }
    }
    let blocks = Family::<Labels, Gauge>::default();
    let block_quota = Family::<Labels, Gauge>::default();
    for t in s.config().tenants.values().filter(|t| only.as_deref().is_none_or(|o| o == t.name)) {
        let l = vec![("tenant".to_string(), t.name.clone())];
        let held = s.block_budget(&t.name).map_or(0, |b| b.held());
        blocks.get_or_create(&l).set(i64::try_from(held).unwrap_or(i64::MAX));
        block_quota.get_or_create(&l).set(i64::try_from(t.block_quota_bytes).unwrap_or(i64::MAX));
    }
    reg.register("block_bytes", "Bytes of blocks a tenant's live jobs hold in the server", blocks);
    reg.register("block_quota_bytes", "A tenant's block_quota_bytes", block_quota);
    reg.register("batches", "Batches completed by a job (since the server started)", batches);
    reg.register("batches_failed", "Batches of a job in which an output failed", failed);
    reg.register("records_in", "Records a job received", records);
    reg.register("last_batch_time_ms", "The newest completed batch's time", last);
    reg.register("jobs", "Jobs by tenant and state", jobs);
    reg.register("submissions_refused", "Submissions refused, by tenant and reason", refused);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| ServeError::Io(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_description_lists_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = Vec::new();
        for (p, ops) in paths {
            // Path-level `parameters` is not a method.
            for m in ops.as_object().unwrap().keys().filter(|k| *k != "parameters") {
                documented.push((m.clone(), p.clone()));
            }
        }
        let mut routes: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
