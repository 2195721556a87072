//! The status page of `weir serve` (`/ui`): the jobs of the tenant whose
//! token is presented (the admin token: every tenant's), with state,
//! batches, last batch time and links to each job's status and log pages.
//! Server-rendered HTML in `weir-ui`'s style; nothing is loaded from
//! elsewhere.
//!
//! The token comes as the API's `Authorization: Bearer`, or, for a browser,
//! from the form at `/ui/login`, which keeps it in a cookie limited to this
//! server's `/ui` pages (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS;
//! no `Domain`, so no other host gets it). The pages only read; the API
//! never takes the cookie, so a page of another site cannot act with it.
//! Tokens are never put in URLs (they would reach logs and histories).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use weir_ui::pages::{esc, fmt_batch_time, STYLE};

use crate::config::Principal;
use crate::server::{JobView, Server};
use crate::ServeError;

/// The cookie that holds a browser's token.
pub const COOKIE: &str = "weir_token";
/// Log lines a log page shows (the newest).
const LOG_PAGE_LINES: u64 = 1000;

/// The routes of the status page (state: the server).
pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/ui", get(jobs_page))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/jobs/{id}", get(job_page))
        .route("/ui/jobs/{id}/logs", get(log_page))
}

/// The token of the `Authorization: Bearer` header, else of the cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')).map(String::from))
    })
}

fn principal(s: &Server, headers: &HeaderMap) -> Option<Principal> {
    presented_token(headers).and_then(|t| s.config().authenticate(&t))
}

/// A page: the headers every page has (no caching, no framing, nothing
/// loaded from elsewhere) around `body`.
fn html(status: StatusCode, title: &str, who: Option<&Principal>, refresh: bool, body: &str) -> Response {
    let refresh = if refresh { "<meta http-equiv=\"refresh\" content=\"5\">" } else { "" };
    let (who, logout) = match who {
        Some(Principal::Tenant(t)) => (format!("tenant {}", esc(t)), true),
        Some(Principal::Admin) => ("the operator (every tenant)".to_string(), true),
        None => (String::new(), false),
    };
    let logout = if logout {
        "<form method=\"post\" action=\"/ui/logout\" style=\"display:inline\"><button>Log out</button></form>"
    } else {
        ""
    };
    let page = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">{refresh}<title>Weir serve: {t}</title>\
         <style>{STYLE}</style></head><body><nav><b>Weir serve</b><a href=\"/ui\">Jobs</a>{logout}</nav>\
         <h2>{t}</h2><p class=\"muted\">{who}</p>{body}</body></html>",
        t = esc(title)
    );
    let mut r = (status, page).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    r
}

fn login_body(note: &str) -> String {
    format!(
        "{note}<form method=\"post\" action=\"/ui/login\"><p>API token: <input type=\"password\" name=\"token\" \
         autocomplete=\"off\" size=\"40\"> <button>Show my jobs</button></p></form><p class=\"muted\">The token is \
         kept in a cookie for this server's /ui pages only. Programs send <code>Authorization: Bearer TOKEN</code> \
         instead.</p>"
    )
}

/// 401 with the token form.
fn unauthorized(note: &str) -> Response {
    let mut r = html(StatusCode::UNAUTHORIZED, "Sign in", None, false, &login_body(note));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn login_form() -> Response {
    html(StatusCode::OK, "Sign in", None, false, &login_body(""))
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// Whether every byte of `t` may stand in a cookie value (RFC 6265's
/// cookie-octet), so the cookie needs no encoding.
fn cookie_safe(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

async fn login(State(s): State<Arc<Server>>, Form(f): Form<Login>) -> Response {
    let token = f.token.trim();
    if s.config().authenticate(token).is_none() {
        return unauthorized("<p class=\"fail\">Unknown token.</p>");
    }
    if !cookie_safe(token) {
        let note = "<p class=\"fail\">This token has characters a cookie cannot hold; send it in the \
                    Authorization header instead.</p>";
        return html(StatusCode::BAD_REQUEST, "Sign in", None, false, &login_body(note));
    }
    let secure = if s.config().tls_cert.is_some() { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=43200{secure}");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        Err(_) => return unauthorized("<p class=\"fail\">Unusable token.</p>"),
    }
    r
}

async fn logout() -> Response {
    let clear = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn state_name(v: &JobView) -> String {
    serde_json::to_value(v.state).ok().and_then(|x| x.as_str().map(String::from)).unwrap_or_default()
}

/// The jobs `who` may see.
fn visible(s: &Server, who: &Principal) -> Vec<JobView> {
    match who {
        Principal::Tenant(t) => s.list(t),
        Principal::Admin => s.all_views(None),
    }
}

async fn jobs_page(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let Some(who) = principal(&s, &headers) else { return unauthorized("") };
    let jobs = visible(&s, &who);
    let admin = who == Principal::Admin;
    let mut b = String::from("<table><tr><th>Job</th>");
    if admin {
        b.push_str("<th>Tenant</th>");
    }
    b.push_str(
        "<th>Name</th><th>State</th><th>Batches</th><th>Failed</th><th>Records in</th><th>Last batch</th>\
         <th>Message</th><th>Pages</th></tr>",
    );
    for v in jobs.iter().rev() {
        let p = v.progress.clone().unwrap_or_default();
        let id = esc(&v.id);
        let state = state_name(v);
        let class = match state.as_str() {
            "failed" => "fail",
            "running" => "ok",
            _ => "",
        };
        let _ = write!(b, "<tr><td><a href=\"/ui/jobs/{id}\">{id}</a></td>");
        if admin {
            let _ = write!(b, "<td>{}</td>", esc(&v.tenant));
        }
        let _ = write!(
            b,
            "<td>{}</td><td class=\"{class}\">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><a href=\"/ui/jobs/{id}\">status</a> <a href=\"/ui/jobs/{id}/logs\">log</a></td></tr>",
            esc(&v.name),
            p.batches_completed,
            p.batches_failed,
            p.records_in,
            p.last_batch_time.map(fmt_batch_time).unwrap_or_else(|| "-".into()),
            esc(v.message.as_deref().unwrap_or("")),
        );
    }
    b.push_str("</table>");
    if jobs.is_empty() {
        b.push_str("<p>No jobs yet: <code>weir submit JOB.toml</code>.</p>");
    }
    let only = match &who {
        Principal::Tenant(t) => Some(t.as_str()),
        Principal::Admin => None,
    };
    pool_section(&mut b, &s.pool_status(only), admin);
    html(StatusCode::OK, "Jobs", Some(&who), true, &b)
}

/// The shared executor pool under the jobs: each executor process with its
/// slots, heartbeats and the jobs with tasks on it (a tenant: its own).
fn pool_section(b: &mut String, pool: &crate::pool::PoolView, admin: bool) {
    let _ =
        write!(b, "<h3>Executor pool</h3><p><code>{}</code> &middot; {} slot(s)</p>", esc(&pool.master), pool.slots);
    if pool.kind == "threads" {
        b.push_str("<p class=\"muted\">Threads of this server (no executor processes).</p>");
        return;
    }
    if pool.executors.is_empty() {
        b.push_str("<p class=\"muted\">No executor connected: tasks wait for one.</p>");
        return;
    }
    b.push_str(
        "<table class=\"pool\"><tr><th>Executor</th><th>Pid</th><th>Address</th><th>Slots</th><th>Heartbeats</th>\
         <th>Last heartbeat</th><th>Tasks running</th><th>UDF memory (peak)</th><th>Jobs with tasks on it</th></tr>",
    );
    let mib = |m: u64| format!("{:.1} MiB", m as f64 / (1024.0 * 1024.0));
    for x in &pool.executors {
        let jobs: Vec<String> = x
            .jobs
            .iter()
            .map(|j| {
                let who = if admin { format!("{}: ", esc(&j.tenant)) } else { String::new() };
                format!("{who}<a href=\"/ui/jobs/{0}\">{0}</a> ({1})", esc(&j.job), j.tasks_running)
            })
            .collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td class=\"pid\">{}</td><td><code>{}</code></td><td class=\"slots\">{}</td><td>{}</td>\
             <td class=\"heartbeat-age\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            x.id,
            x.pid,
            esc(&x.address),
            x.slots,
            x.heartbeats,
            x.last_heartbeat_age_ms.map(|a| format!("{a} ms ago")).unwrap_or_else(|| "-".into()),
            x.tasks_running,
            match (x.udf_memory_bytes, x.udf_memory_peak_bytes) {
                (Some(m), Some(p)) => format!("{} ({})", mib(m), mib(p)),
                _ => "-".into(),
            },
            if jobs.is_empty() { "-".to_string() } else { jobs.join(", ") },
        );
    }
    b.push_str("</table>");
}

/// Job `id` if `who` may see it (another tenant's job is "not found").
fn find(s: &Server, who: &Principal, id: &str) -> Result<JobView, ServeError> {
    match who {
        Principal::Tenant(t) => s.status(t, id),
        Principal::Admin => {
            s.all_views(None).into_iter().find(|v| v.id == id).ok_or_else(|| ServeError::NotFound(id.to_string()))
        }
    }
}

fn not_found(who: &Principal, id: &str) -> Response {
    html(StatusCode::NOT_FOUND, "Not found", Some(who), false, &format!("<p>No job {}.</p>", esc(id)))
}

async fn job_page(State(s): State<Arc<Server>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(who) = principal(&s, &headers) else { return unauthorized("") };
    let Ok(v) = find(&s, &who, &id) else { return not_found(&who, &id) };
    let p = v.progress.clone().unwrap_or_default();
    let id = esc(&v.id);
    let opt = |o: Option<String>| esc(&o.unwrap_or_else(|| "-".into()));
    let rows = [
        ("Tenant", esc(&v.tenant)),
        ("Name", esc(&v.name)),
        ("State", state_name(&v)),
        ("Message", opt(v.message.clone())),
        ("Executor threads", v.slots.to_string()),
        ("UDF memory reserved", format!("{} bytes", v.udf_memory_bytes)),
        ("Batches completed", p.batches_completed.to_string()),
        ("Batches failed", p.batches_failed.to_string()),
        ("Records in", p.records_in.to_string()),
        ("Last batch", p.last_batch_time.map(fmt_batch_time).unwrap_or_else(|| "-".into())),
        ("Last processing time", opt(p.last_processing_ms.map(|m| format!("{m} ms")))),
        ("Recovered from checkpoint", opt(p.recovered_from.map(|s| s.to_string()))),
        ("Checkpoints written / failed", format!("{} / {}", p.checkpoints_written, p.checkpoints_failed)),
        ("Last error", opt(p.last_error.clone())),
        ("Checkpoint", esc(&v.checkpoint.display().to_string())),
        ("Outputs", esc(&v.outputs.iter().map(|o| o.display().to_string()).collect::<Vec<_>>().join(", "))),
    ];
    let mut b = String::from("<table>");
    for (k, val) in rows {
        let _ = write!(b, "<tr><th>{k}</th><td>{val}</td></tr>");
    }
    let _ = write!(
        b,
        "</table><p><a href=\"/ui/jobs/{id}/logs\">Log</a></p><p class=\"muted\">The API: \
         <code>GET /api/v1/jobs/{id}</code>, <code>GET /api/v1/jobs/{id}/logs</code> \
         (<code>weir status {id}</code>, <code>weir logs {id}</code>).</p>"
    );
    let live = v.state.is_live();
    html(StatusCode::OK, &format!("Job {}", v.id), Some(&who), live, &b)
}

async fn log_page(State(s): State<Arc<Server>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(who) = principal(&s, &headers) else { return unauthorized("") };
    let Ok(v) = find(&s, &who, &id) else { return not_found(&who, &id) };
    // The newest lines: ask where the log ends, then for the tail.
    let tail = s.logs(&v.tenant, &v.id, u64::MAX).and_then(|(_, end, _)| {
        s.logs(&v.tenant, &v.id, end.saturating_sub(LOG_PAGE_LINES)).map(|(lines, _, _)| lines)
    });
    let lines = match tail {
        Ok(l) => l,
        Err(_) => return not_found(&who, &id),
    };
    let mut b = format!("<p><a href=\"/ui/jobs/{}\">Status</a></p><pre>", esc(&v.id));
    for l in &lines {
        b.push_str(&esc(l));
        b.push('\n');
    }
    b.push_str("</pre>");
    html(StatusCode::OK, &format!("Log of {}", v.id), Some(&who), v.state.is_live(), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_first_then_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; weir_token=tok-1; c=d"));
        assert_eq!(presented_token(&h).as_deref(), Some("tok-1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tok-2"));
        assert_eq!(presented_token(&h).as_deref(), Some("tok-2"));
        let mut other = HeaderMap::new();
        other.insert(header::COOKIE, HeaderValue::from_static("weir_tokenx=1"));
        assert_eq!(presented_token(&other), None);
        assert!(cookie_safe("abc+/=09") && !cookie_safe("a;b") && !cookie_safe("a b") && !cookie_safe(""));
    }
}
