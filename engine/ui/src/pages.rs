//! The status pages (server-rendered HTML with server-drawn SVG plots;
//! nothing is loaded from elsewhere), `/metrics` and the JSON API.
//! Spark's Streaming tab is the model of the main page.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::json;

use crate::event::JobInfo;
use crate::http::{percent_encode, Request, Response};
use crate::listener::Shared;
use crate::state::{BatchView, UiState};

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
/// Rows of the completed-batches table (the plots use every retained batch).
const TABLE_ROWS: usize = 100;

/// Dispatches a request.
pub fn route(req: &Request, shared: &Shared, with_token: bool) -> Response {
    // Links carry the token when it came in the query (a browser has no
    // other way to send it).
    let q = match req.query.iter().find(|(k, _)| k == "token") {
        Some((_, t)) if with_token => format!("?token={}", percent_encode(t)),
        _ => String::new(),
    };
    let path = req.path.trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // What shows executors reads their status now, not as of the newest
    // completed batch (before the state's lock is taken).
    if matches!(segs.as_slice(), ["metrics"] | ["executors"] | ["api", "v1", "executors"]) {
        shared.refresh_executors();
    }
    if segs.as_slice() == ["metrics"] {
        return Response::new(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        );
    }
    let st = shared.state();
    match segs.as_slice() {
        [] => Response::new(200, HTML, streaming_page(&st, &q)),
        ["batches", t] => match t.parse::<i64>().ok() {
            Some(t) => match (st.batch(t), st.active(t)) {
                (Some(b), _) => Response::new(200, HTML, batch_page(&st, b, &q)),
                (None, Some(a)) => Response::new(200, HTML, active_batch_page(&st, &a, &q)),
                (None, None) => not_found(&st, &q),
            },
            None => not_found(&st, &q),
        },
        ["job"] => Response::new(200, HTML, job_page(&st, &q)),
        ["executors"] => Response::new(200, HTML, executors_page(&st, &q)),
        ["checkpoints"] => Response::new(200, HTML, checkpoints_page(&st, &q)),
        ["sources"] => Response::new(200, HTML, sources_page(&st, &q)),
        ["api", "v1", rest @ ..] => api(&st, rest),
        _ => not_found(&st, &q),
    }
}

fn not_found(st: &UiState, q: &str) -> Response {
    Response::new(404, HTML, page(st, q, "Not found", "<p>No such page (or the batch is no longer retained).</p>"))
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn fmt_ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// A batch time: wall-clock times (after 2001) as UTC clock time, logical
/// ones (multiples of the interval from 0) in ms.
pub fn fmt_batch_time(t: i64) -> String {
    if t > 1_000_000_000_000 {
        fmt_time(t as u64)
    } else {
        format!("{t} ms")
    }
}

fn fmt_time(at_ms: u64) -> String {
    // UTC clock time of day, enough to relate events to each other and to logs.
    let s = at_ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60, at_ms % 1000)
}

/// The pages' style sheet (inline: nothing is loaded from elsewhere).
pub const STYLE: &str = "body{font-family:sans-serif;margin:0 1.5em 2em;color:#222}nav{background:#2c3e50;margin:0 -1.5em 1em;padding:.6em 1.5em}\
nav a{color:#fff;margin-right:1.2em;text-decoration:none}nav b{color:#f39c12;margin-right:1.5em}table{border-collapse:collapse;margin:.5em 0 1.2em}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px;vertical-align:top}th{background:#f3f3f3}\
.fail{color:#c0392b;font-weight:bold}.ok{color:#27ae60}svg{background:#fafafa;border:1px solid #ddd}\
.plot td{border:none}.muted{color:#777}code{font-size:12px}";

fn page(st: &UiState, q: &str, title: &str, body: &str) -> String {
    let job = st.job.as_ref().map(|j| j.name.as_str()).unwrap_or("");
    let refresh = if st.live() { "<meta http-equiv=\"refresh\" content=\"2\">" } else { "" };
    let status = if st.history {
        "history (from an event log)".to_string()
    } else if st.live() {
        "running".to_string()
    } else {
        "finished".to_string()
    };
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">{refresh}<title>Weir: {t}</title><style>{STYLE}</style></head><body>\
<nav><b>Weir</b><a href=\"/{q}\">Streaming</a><a href=\"/job{q}\">Job</a><a href=\"/executors{q}\">Executors</a>\
<a href=\"/checkpoints{q}\">Checkpoints</a><a href=\"/sources{q}\">Sources</a><a href=\"/metrics{q}\">Metrics</a></nav>\
<h2>{t}</h2><p class=\"muted\">{j} &middot; {status}</p>{body}</body></html>",
        t = esc(title),
        j = esc(job),
    )
}

// ---- plots ----

const W: f64 = 560.0;
const H: f64 = 150.0;
const HW: f64 = 260.0;
const PAD: f64 = 36.0;

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// A timeline: `points` (batch time, value) as a line, with an optional
/// dashed reference line (the batch interval). Always has a `<path>`.
fn timeline(points: &[(i64, f64)], reference: Option<f64>, unit: &str) -> String {
    let ymax = nice_max(points.iter().map(|p| p.1).fold(reference.unwrap_or(0.0), f64::max));
    let (x0, x1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (a.0 as f64, b.0 as f64),
        (Some(a), _) => (a.0 as f64 - 1.0, a.0 as f64 + 1.0),
        _ => (0.0, 1.0),
    };
    let x = |t: f64| PAD + (t - x0) / (x1 - x0) * (W - PAD - 8.0);
    let y = |v: f64| H - 18.0 - v / ymax * (H - 28.0);
    let mut d = String::new();
    for (i, (t, v)) in points.iter().enumerate() {
        let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, x(*t as f64), y(*v));
    }
    let mut s =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">");
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/><line x1=\"{PAD}\" y1=\"10\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#999\"/>\
<text x=\"2\" y=\"14\" font-size=\"10\">{ymax}</text><text x=\"2\" y=\"{b}\" font-size=\"10\">0 {unit}</text>",
        b = H - 18.0,
        r = W - 8.0,
        ymax = trim_num(ymax),
    );
    if points.len() > 1 {
        let _ = write!(
            s,
            "<text x=\"{PAD}\" y=\"{H}\" font-size=\"10\" dy=\"-4\">{}</text><text x=\"{}\" y=\"{H}\" font-size=\"10\" dy=\"-4\" text-anchor=\"end\">{}</text>",
            fmt_batch_time(x0 as i64),
            W - 8.0,
            fmt_batch_time(x1 as i64)
        );
    }
    if let Some(r) = reference {
        let _ = write!(
            s,
            "<line class=\"reference\" x1=\"{PAD}\" y1=\"{yr:.1}\" x2=\"{xr}\" y2=\"{yr:.1}\" stroke=\"#e67e22\" stroke-dasharray=\"4 3\"/>\
<text x=\"{xr}\" y=\"{yr:.1}\" dy=\"-3\" font-size=\"10\" text-anchor=\"end\" fill=\"#e67e22\">batch interval</text>",
            yr = y(r),
            xr = W - 8.0
        );
    }
    let _ = write!(s, "<path class=\"data\" d=\"{d}\" fill=\"none\" stroke=\"#2980b9\" stroke-width=\"1.5\"/>");
    for (t, v) in points.iter().rev().take(1) {
        let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#2980b9\"/>", x(*t as f64), y(*v));
    }
    s.push_str("</svg>");
    s
}

/// A histogram of `values` on the same vertical scale as the timeline
/// (horizontal bars, as Spark draws it).
fn histogram(values: &[f64], reference: Option<f64>) -> String {
    const BINS: usize = 10;
    let ymax = nice_max(values.iter().copied().fold(reference.unwrap_or(0.0), f64::max));
    let mut counts = [0usize; BINS];
    for v in values {
        let i = ((v / ymax) * BINS as f64).floor() as usize;
        counts[i.min(BINS - 1)] += 1;
    }
    let cmax = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bin_h = (H - 28.0) / BINS as f64;
    let mut d = String::new();
    for (i, c) in counts.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        let w = *c as f64 / cmax * (HW - 20.0);
        let y_top = H - 18.0 - (i + 1) as f64 * bin_h;
        let _ = write!(d, "M10,{y_top:.1} h{w:.1} v{:.1} h{:.1} Z ", bin_h - 1.0, -w);
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{HW}\" height=\"{H}\" viewBox=\"0 0 {HW} {H}\">\
<line x1=\"10\" y1=\"10\" x2=\"10\" y2=\"{b}\" stroke=\"#999\"/><text x=\"{r}\" y=\"{H}\" dy=\"-4\" font-size=\"10\" text-anchor=\"end\">{n} batch(es)</text>\
<path class=\"data\" d=\"{d}\" fill=\"#2980b9\" fill-opacity=\"0.6\"/></svg>",
        b = H - 18.0,
        r = HW - 4.0,
        n = cmax as usize,
    )
}

fn trim_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

// ---- pages ----

fn avg(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Records per second of a batch: its records over the batch interval.
fn input_rate(b: &BatchView, interval_ms: i64) -> f64 {
    b.record.records_in as f64 * 1000.0 / interval_ms.max(1) as f64
}

fn streaming_page(st: &UiState, q: &str) -> String {
    let interval = st.job.as_ref().map_or(1000, |j| j.batch_interval_ms);
    let bs: Vec<&BatchView> = st.batches.iter().collect();
    let series =
        |f: &dyn Fn(&BatchView) -> f64| -> Vec<(i64, f64)> { bs.iter().map(|b| (b.record.time, f(b))).collect() };
    let rows: [(&str, &str, Vec<(i64, f64)>, Option<f64>); 4] = [
        ("Input rate", "rec/s", series(&|b| input_rate(b, interval)), None),
        ("Scheduling delay", "ms", series(&|b| b.record.scheduling_delay_ms), None),
        ("Processing time", "ms", series(&|b| b.record.processing_ms), Some(interval as f64)),
        ("Total delay", "ms", series(&|b| b.record.total_delay_ms), Some(interval as f64)),
    ];
    let t = &st.totals;
    let mut body = String::new();
    let uptime = match (st.started_at_ms, st.ended_at_ms.or(st.last_event_ms)) {
        (Some(a), Some(b)) => format!("{:.1} s", (b.saturating_sub(a)) as f64 / 1000.0),
        _ => "-".into(),
    };
    let _ = write!(
        body,
        "<p>Batch interval <b>{interval} ms</b> &middot; up {uptime} &middot; <b>{}</b> completed batches ({} failed, {} retained) &middot; <b>{}</b> records in &middot; <b>{}</b> records out</p>",
        t.batches_completed,
        t.batches_failed,
        st.batches.len(),
        t.records_in,
        t.records_out
    );
    body.push_str(
        "<table class=\"plot\" id=\"plots\"><tr><th></th><th>Timeline (batch time)</th><th>Histogram</th></tr>",
    );
    for (name, unit, pts, reference) in &rows {
        let vals: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let _ = write!(
            body,
            "<tr><td><b>{name}</b><br>avg {:.1} {unit}</td><td>{}</td><td>{}</td></tr>",
            avg(&vals),
            timeline(pts, *reference, unit),
            histogram(&vals, *reference)
        );
    }
    body.push_str("</table>");
    let in_flight = st.in_flight();
    if !in_flight.is_empty() {
        body.push_str("<h3>Active batches</h3><table><tr><th>Batch time</th><th>Records</th><th>Submitted</th></tr>");
        for (time, recs, at) in in_flight {
            let _ = write!(
                body,
                "<tr><td><a href=\"/batches/{time}{q}\">{time} ms</a></td><td>{recs}</td><td>{}</td></tr>",
                fmt_time(at)
            );
        }
        body.push_str("</table>");
    }
    let _ = write!(
        body,
        "<h3>Completed batches (newest {} of {})</h3><table id=\"batches\"><tr><th>Batch time</th><th>Records</th><th>Records out</th><th>Scheduling delay</th>\
<th>Processing time</th><th>Total delay</th><th>Outputs</th><th>Status</th></tr>",
        bs.len().min(TABLE_ROWS),
        t.batches_completed
    );
    for b in bs.iter().rev().take(TABLE_ROWS) {
        let r = &b.record;
        let status = if r.errors.is_empty() {
            "<span class=\"ok\">ok</span>".to_string()
        } else {
            format!("<span class=\"fail\">failed</span> {}", esc(&r.errors.join("; ")))
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"/batches/{t}{q}\" title=\"{t} ms\">{tt}</a>{rep}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td></tr>",
            r.records_in,
            r.outputs.iter().filter_map(|o| o.records_out).sum::<u64>(),
            fmt_ms(r.scheduling_delay_ms),
            fmt_ms(r.processing_ms),
            fmt_ms(r.total_delay_ms),
            r.outputs.len(),
            t = r.time,
            tt = fmt_batch_time(r.time),
            rep = if b.replayed { " (re-run)" } else { "" },
        );
    }
    body.push_str("</table>");
    page(st, q, "Streaming", &body)
}

/// `""` is the driver's own threads (`local[N]`).
fn executor_name(x: &str) -> &str {
    if x.is_empty() {
        "driver"
    } else {
        x
    }
}

/// A stage's task attempts (those the record keeps: failures and the
/// slowest), folded under the stage table.
fn tasks_table(body: &mut String, s: &crate::event::StageRecord) {
    let _ = write!(
        body,
        "<details class=\"tasks\"><summary>Tasks of <code>{}</code> ({} attempt(s) shown{})</summary><table><tr><th>Partition</th><th>Attempt</th><th>Executor</th><th>Duration</th><th>Result</th></tr>",
        esc(&s.rdd),
        s.task_list.len(),
        if s.task_list.len() >= weir::listener::TASKS_SHOWN { "; a stage lists at most this many: the failed ones first, then the slowest" } else { "" }
    );
    for t in &s.task_list {
        let _ = write!(
            body,
            "<tr class=\"task\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.partition,
            t.attempt,
            esc(executor_name(&t.executor)),
            fmt_ms(t.duration_ms),
            t.failure.as_ref().map_or_else(
                || "<span class=\"ok\">ok</span>".to_string(),
                |f| format!("<span class=\"fail\">{}</span>", esc(f))
            )
        );
    }
    body.push_str("</table></details>");
}

/// The "Task retries (N)" heading and table of a batch's retries.
fn retries_table(body: &mut String, retries: &[crate::state::Retry]) {
    let _ = write!(body, "<h3>Task retries ({})</h3>", retries.len());
    if retries.is_empty() {
        return;
    }
    body.push_str("<table><tr><th>RDD</th><th>Partition</th><th>Attempt</th><th>Failure</th></tr>");
    for x in retries {
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.rdd),
            x.partition,
            x.attempt,
            esc(&x.failure)
        );
    }
    body.push_str("</table>");
}

/// A batch still in flight: what is known so far (the page refreshes
/// itself, and shows the completed batch once it is).
fn active_batch_page(st: &UiState, a: &crate::state::ActiveBatch, q: &str) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<table><tr><th>Batch time</th><td>{} ms{}</td></tr><tr><th>Records in</th><td>{}</td></tr>\
<tr><th>Submitted</th><td>{}</td></tr><tr><th>Status</th><td class=\"active\">{}</td></tr>\
<tr><th>So far</th><td>{} task retry(ies), {} block(s) recomputed</td></tr></table>",
        a.time,
        if a.replayed { " (re-run after recovery)" } else { "" },
        a.records_in,
        fmt_time(a.submitted_at_ms),
        if a.running { "running" } else { "queued (waits for the batch before it)" },
        a.retries.len(),
        a.recomputed.len()
    );
    retries_table(&mut body, &a.retries);
    page(st, q, &format!("Batch {} (active)", a.time), &body)
}

fn batch_page(st: &UiState, b: &BatchView, q: &str) -> String {
    let r = &b.record;
    let mut body = String::new();
    let _ = write!(
        body,
        "<table><tr><th>Batch time</th><td>{} ms{}</td></tr><tr><th>Records in</th><td>{}</td></tr>\
<tr><th>Scheduling delay</th><td>{}</td></tr><tr><th>Processing time</th><td>{}</td></tr><tr><th>Total delay</th><td>{}</td></tr>\
<tr><th>Status</th><td>{}</td></tr><tr><th>Recovery</th><td>{} executor(s) lost, {} map output(s) and {} block(s) recomputed, {} task(s) resubmitted</td></tr></table>",
        r.time,
        if b.replayed { " (re-run after recovery)" } else { "" },
        r.records_in,
        fmt_ms(r.scheduling_delay_ms),
        fmt_ms(r.processing_ms),
        fmt_ms(r.total_delay_ms),
        if r.errors.is_empty() { "ok".to_string() } else { format!("<span class=\"fail\">failed</span>: {}", esc(&r.errors.join("; "))) },
        r.executors_lost,
        r.map_tasks_recomputed,
        r.blocks_recomputed,
        r.tasks_resubmitted,
    );
    let sources: Vec<String> = r
        .records_per_source
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = st.job.as_ref().and_then(|j| j.sources.get(i)).map(|s| s.kind.as_str()).unwrap_or("source");
            format!("{i} ({name}): {n}")
        })
        .collect();
    if !sources.is_empty() {
        let _ = write!(body, "<p id=\"records-in\">Records in per source: {}</p>", esc(&sources.join(", ")));
    }
    if r.rate_limits.iter().any(Option::is_some) {
        let limits: Vec<String> = r
            .rate_limits
            .iter()
            .map(|l| l.map_or_else(|| "unbounded".into(), |l| format!("{l:.0} records/s")))
            .collect();
        let _ = write!(body, "<p>Rate limit per source (backpressure): {}</p>", esc(&limits.join(", ")));
    }
    body.push_str("<h3>Output operations</h3>");
    for o in &r.outputs {
        let _ = write!(
            body,
            "<h4>Output {}: <code>{}</code>{} &middot; {} &middot; <span class=\"records-out\">{}</span>{}</h4><table><tr><th>Stage (RDD)</th><th>Kind</th><th>Tasks</th><th>Duration</th><th>Task time (min / median / max)</th><th>Executors</th></tr>",
            o.index,
            esc(&o.description),
            o.stream
                .map(|id| {
                    let label = st.job.as_ref().and_then(|j| j.streams.iter().find(|s| s.id == id)).map(|s| s.label.as_str());
                    format!(" of stream {id} <code>{}</code>", esc(label.unwrap_or("")))
                })
                .unwrap_or_default(),
            fmt_ms(o.duration_ms),
            o.records_out.map_or_else(|| "no records out".to_string(), |n| format!("{n} records out")),
            o.error.as_ref().map(|e| format!(" &middot; <span class=\"fail\">{}</span>", esc(e))).unwrap_or_default()
        );
        for s in &o.stages {
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"task-times\">{}</td><td class=\"executors\">{}</td></tr>",
                esc(&s.rdd),
                esc(&s.kind),
                s.tasks,
                fmt_ms(s.duration_ms),
                s.task_ms.map_or_else(|| "-".into(), |[a, m, z]| format!("{} / {} / {}", fmt_ms(a), fmt_ms(m), fmt_ms(z))),
                esc(&s.executors.iter().map(|x| executor_name(x)).collect::<Vec<_>>().join(", "))
            );
        }
        body.push_str("</table>");
        for s in o.stages.iter().filter(|s| !s.task_list.is_empty()) {
            tasks_table(&mut body, s);
        }
    }
    retries_table(&mut body, &b.retries);
    let _ = write!(body, "<h3>Recomputed blocks ({})</h3>", b.recomputed_blocks.len());
    if !b.recomputed_blocks.is_empty() {
        body.push_str("<table><tr><th>Block</th><th>Digest check</th><th>Because</th></tr>");
        for x in &b.recomputed_blocks {
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&x.block),
                if x.digest_matches {
                    "<span class=\"ok\">matches the original</span>"
                } else {
                    "<span class=\"fail\">DIFFERS from the original</span>"
                },
                x.lost_executor
                    .as_ref()
                    .map(|e| format!("executor <code>{}</code> was lost", esc(e)))
                    .unwrap_or_else(|| "the block was missing".into())
            );
        }
        body.push_str("</table>");
    }
    if b.dropped_details > 0 {
        let _ = write!(body, "<p class=\"muted\">{} more retries/blocks not kept.</p>", b.dropped_details);
    }
    page(st, q, &format!("Batch {} ms", r.time), &body)
}

/// The stream `id` and its ancestors as a nested list (depth-bounded: the
/// graph is a DAG, and a shared parent is listed under each child).
fn stream_tree(job: &JobInfo, id: u32, depth: usize, out: &mut String) {
    let Some(s) = job.streams.iter().find(|s| s.id == id) else { return };
    let _ = write!(
        out,
        "<li><b>{}</b> <code>{}</code> <span class=\"muted\">#{} {}{}</span>",
        esc(&s.kind),
        esc(&s.label),
        s.id,
        esc(&s.detail),
        if s.stateful { " &middot; stateful" } else { "" }
    );
    if let Some(src) = job.sources.iter().find(|x| s.kind == "source" && s.detail == format!("source {}", x.id)) {
        let _ = write!(out, " &larr; {} <code>{}</code>", esc(&src.kind), esc(&src.description));
    }
    if !s.parents.is_empty() && depth < 64 {
        out.push_str("<ul>");
        for p in &s.parents {
            stream_tree(job, *p, depth + 1, out);
        }
        out.push_str("</ul>");
    }
    out.push_str("</li>");
}

fn job_page(st: &UiState, q: &str) -> String {
    let Some(j) = &st.job else { return page(st, q, "Job", "<p>No job description yet.</p>") };
    let mut body = String::new();
    let _ = write!(
        body,
        "<table><tr><th>Job</th><td>{}</td></tr><tr><th>Weir</th><td>{}</td></tr><tr><th>Master</th><td>{}</td></tr>\
<tr><th>Clock</th><td>{}</td></tr><tr><th>Batch interval</th><td>{} ms</td></tr><tr><th>Parallelism</th><td>{}</td></tr></table>",
        esc(&j.name),
        esc(&j.weir_version),
        esc(&j.master),
        esc(&j.clock),
        j.batch_interval_ms,
        j.parallelism
    );
    body.push_str("<h3>DStream graph</h3>");
    match crate::dag::layout(j) {
        Some(l) => body.push_str(&crate::dag::svg(&l)),
        None => body.push_str("<p class=\"muted\">Too many streams to draw; see the table below.</p>"),
    }
    body.push_str(
        "<p class=\"muted\">Each output with the streams it reads, down to the sources.</p><ul id=\"graph\">",
    );
    for o in &j.outputs {
        let out = st.outputs.get(&o.index).map_or(0, |v| v.records_out);
        let _ = write!(
            body,
            "<li><b>output {}</b> <code>{}</code> &middot; {out} records out<ul>",
            o.index,
            esc(&o.description)
        );
        stream_tree(j, o.stream, 0, &mut body);
        body.push_str("</ul></li>");
    }
    body.push_str("</ul><h3>Streams</h3><table><tr><th>#</th><th>Kind</th><th>Label</th><th>Detail</th><th>Parents</th><th>Slide</th><th>Checkpoint</th></tr>");
    for s in &j.streams {
        let parents: Vec<String> = s.parents.iter().map(|p| p.to_string()).collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
            s.id,
            esc(&s.kind),
            esc(&s.label),
            esc(&s.detail),
            parents.join(", "),
            s.slide_ms,
            s.checkpoint_ms.map(|c| format!("every {c} ms")).unwrap_or_default()
        );
    }
    body.push_str("</table>");
    match &st.lineage {
        Some((t, plans)) => {
            let _ = write!(body, "<h3 id=\"lineage\">Lineage of batch {}</h3>", fmt_batch_time(*t));
            for (o, p) in plans {
                let _ = write!(body, "<p><code>{}</code></p><pre class=\"plan\">{}</pre>", esc(o), esc(p));
            }
        }
        None => body.push_str("<h3 id=\"lineage\">Lineage</h3><p class=\"muted\">No batch yet.</p>"),
    }
    body.push_str("<h3>UDF modules</h3><table><tr><th>Module</th><th>SHA-256</th></tr>");
    for (name, hash) in &j.modules {
        let _ = write!(body, "<tr><td>{}</td><td><code>{}</code></td></tr>", esc(name), esc(hash));
    }
    body.push_str("</table><h3>UDF limits (per call)</h3><table>");
    for (k, v) in &j.limits {
        let _ = write!(body, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    }
    body.push_str("</table>");
    page(st, q, "Job", &body)
}

fn executors_page(st: &UiState, q: &str) -> String {
    let mut body = String::new();
    let active = st.executors.values().filter(|x| x.active).count();
    let _ = write!(
        body,
        "<p>{active} active &middot; {} added &middot; {} lost</p>",
        st.totals.executors_added, st.totals.executors_lost
    );
    if st.executors.is_empty() {
        let master = st.job.as_ref().map_or("", |j| j.master.as_str());
        let _ = write!(
            body,
            "<p class=\"muted\">No executor status yet (master <code>{}</code>): it comes as the executors start.</p>",
            esc(master)
        );
    } else {
        body.push_str(
            "<table><tr><th>Executor</th><th>Status</th><th>Added</th><th>Lost</th><th>Reason</th>\
<th>Heartbeats</th><th>Last heartbeat</th><th>Tasks run</th><th>Running</th><th>Failed</th>\
<th>UDF memory (peak)</th><th>Blocks recomputed after its loss</th></tr>",
        );
        // While the job runs the figures are read as the page is asked
        // (a heartbeat's age grows while an executor is silent); a history
        // page shows them as of the newest status in its log.
        let now = st.last_event_ms.unwrap_or(0);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
        for x in st.executors.values() {
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td class=\"heartbeats\">{}</td><td class=\"heartbeat-age\">{}</td><td class=\"tasks-run\">{}</td><td class=\"tasks-running\">{}</td>\
<td class=\"tasks-failed\">{}</td><td class=\"udf-memory\">{}</td><td class=\"recomputed\">{}</td></tr>",
                esc(if x.executor.is_empty() { "driver (in-process threads)" } else { &x.executor }),
                if x.active { "<span class=\"ok\">active</span>" } else { "<span class=\"fail\">lost</span>" },
                x.added_at_ms.map(fmt_time).unwrap_or_default(),
                x.lost_at_ms.map(fmt_time).unwrap_or_default(),
                esc(x.lost_reason.as_deref().unwrap_or(&x.added_reason)),
                x.heartbeats.map(|h| h.to_string()).unwrap_or_else(|| "&ndash;".into()),
                x.last_heartbeat_age_ms
                    .or(x.last_heartbeat_at_ms.map(|t| now.saturating_sub(t)))
                    .map(|age| format!("{age} ms ago"))
                    .unwrap_or_else(|| "&ndash;".into()),
                x.tasks_run,
                x.tasks_running,
                x.tasks_failed,
                match (x.udf_memory_bytes, x.udf_memory_peak_bytes) {
                    (Some(m), Some(p)) => format!("{} ({})", mib(m), mib(p)),
                    (Some(m), None) => mib(m),
                    _ => "&ndash;".into(),
                },
                x.blocks_recomputed,
            );
        }
        body.push_str("</table>");
    }
    page(st, q, "Executors", &body)
}

fn checkpoints_page(st: &UiState, q: &str) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>{} written &middot; {} failed</p><table><tr><th>When</th><th>Kind</th><th>Batch time</th><th>Bytes</th><th>Duration</th><th>Result</th></tr>",
        st.totals.checkpoint_writes, st.totals.checkpoint_failures
    );
    for c in st.checkpoints.iter().rev() {
        let r = &c.record;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_time(c.at_ms),
            esc(&r.kind),
            r.time.map(|t| format!("{t} ms")).unwrap_or_default(),
            r.bytes,
            fmt_ms(r.duration_ms),
            match &r.error {
                None => "<span class=\"ok\">written</span>".to_string(),
                Some(e) => format!("<span class=\"fail\">failed</span>: {}", esc(e)),
            }
        );
    }
    body.push_str("</table><h3>Recovery</h3>");
    if st.recovery.is_empty() {
        body.push_str("<p class=\"muted\">The job did not recover from a checkpoint.</p>");
    } else {
        body.push_str("<table><tr><th>When</th><th>What</th><th>Detail</th></tr>");
        for n in &st.recovery {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                fmt_time(n.at_ms),
                esc(&n.what),
                esc(&n.detail)
            );
        }
        body.push_str("</table>");
    }
    page(st, q, "Checkpoints", &body)
}

fn sources_page(st: &UiState, q: &str) -> String {
    let mut body = String::new();
    let rate = st.batches.back().map(|b| input_rate(b, st.job.as_ref().map_or(1000, |j| j.batch_interval_ms)));
    let _ = write!(
        body,
        "<p>{} records in &middot; newest batch {} rec/s &middot; {} receiver error(s)</p>",
        st.totals.records_in,
        rate.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
        st.totals.receiver_errors
    );
    body.push_str("<table><tr><th>#</th><th>Kind</th><th>Description</th><th>Receiver</th><th>Reconnects</th><th>Rate limit</th><th>Backpressure rate</th><th>Records in</th><th>Newest batch</th><th>Errors</th><th>Last error</th></tr>");
    for s in sources(st) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"receiver\">{}</td><td class=\"reconnects\">{}</td><td>{}</td><td class=\"backpressure\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.id,
            esc(&s.kind),
            esc(&s.description),
            match (s.receiver, s.connected) {
                (false, _) => "no".to_string(),
                (true, None) => "not connected yet".to_string(),
                (true, Some(true)) => "<span class=\"ok\">connected</span>".to_string(),
                (true, Some(false)) => format!(
                    "<span class=\"fail\">disconnected</span> {}",
                    s.last_disconnect.as_deref().map(esc).unwrap_or_default()
                ),
            },
            if s.receiver { s.reconnects.to_string() } else { "-".into() },
            s.rate_limit.map_or_else(|| "unbounded".to_string(), |r| format!("{r:.0} records/s")),
            s.backpressure_rate.map_or_else(|| "-".to_string(), |r| format!("{r:.0} records/s")),
            s.records_in,
            s.last_batch_records,
            s.errors,
            s.last_error
                .as_ref()
                .map(|e| format!(
                    "{} <span class=\"muted\">{}</span>",
                    esc(e),
                    s.last_error_at_ms.map(fmt_time).unwrap_or_default()
                ))
                .unwrap_or_default()
        );
    }
    body.push_str("</table>");
    for s in sources(st).into_iter().filter(|s| !s.bad_lines.is_empty()) {
        let counts: Vec<String> = s.bad_lines.iter().map(|(a, n)| format!("{n} {}", esc(a))).collect();
        let _ = write!(
            body,
            "<h3>Source {} bad lines</h3><p class=\"bad-lines\">{}; newest: {}</p>",
            s.id,
            counts.join(", "),
            s.last_bad_line.as_deref().map(esc).unwrap_or_default()
        );
    }
    for s in sources(st) {
        let d = &s.details;
        if let (Some(bytes), Some(files)) = (d.wal_bytes, d.wal_files) {
            let _ = write!(
                body,
                "<h3>Source {} write-ahead log</h3><p class=\"wal\">{bytes} bytes in {files} segment file(s)</p>",
                s.id
            );
        }
        if let Some(n) = d.files_seen {
            let _ = write!(body, "<h3>Source {} files</h3><p class=\"files-seen\">{n} file(s) read</p>", s.id);
            if !d.recent_files.is_empty() {
                body.push_str("<ul class=\"recent-files\">");
                for f in d.recent_files.iter().rev() {
                    let _ = write!(body, "<li><code>{}</code></li>", esc(f));
                }
                body.push_str("</ul>");
            }
        }
    }
    for s in sources(st).iter().filter(|s| !s.positions.is_empty()) {
        let lag: i64 = s.positions.iter().map(|p| (p.end - p.next).max(0)).sum();
        let _ = write!(
            body,
            "<h3>Source {} partitions</h3><p>lag {lag} record(s) when the newest batch was cut</p>\
<table class=\"positions\"><tr><th>Partition</th><th>Next offset</th><th>High watermark</th><th>Lag</th></tr>",
            s.id
        );
        for p in &s.positions {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.partition),
                p.next,
                p.end,
                (p.end - p.next).max(0)
            );
        }
        body.push_str("</table>");
    }
    page(st, q, "Sources", &body)
}

// ---- JSON API ----

#[derive(Serialize)]
struct SourceJson {
    id: u32,
    kind: String,
    description: String,
    receiver: bool,
    records_in: u64,
    last_batch_records: u64,
    /// Kafka: per partition, the next offset and the high watermark.
    positions: Vec<crate::event::PartitionPosition>,
    errors: u64,
    last_error: Option<String>,
    last_error_at_ms: Option<u64>,
    /// Receivers: connected now (`null` before the first attempt ended).
    connected: Option<bool>,
    /// Receivers: connections made after the first one.
    reconnects: u64,
    connection_changed_at_ms: Option<u64>,
    last_disconnect: Option<String>,
    /// Lines its `on_invalid_utf8` / `on_long_line` policies changed or
    /// dropped, per action, and the newest problem.
    bad_lines: std::collections::BTreeMap<String, u64>,
    last_bad_line: Option<String>,
    /// Records per second the source may take (backpressure, `[rate] max`)
    /// when the newest batch took its records; `null`: unbounded.
    rate_limit: Option<f64>,
    /// Backpressure's estimate then, before `[rate] max` bounds it; `null`:
    /// no backpressure, or no estimate yet.
    backpressure_rate: Option<f64>,
    /// A receiver's write-ahead log (`wal_bytes`, `wal_files`), a
    /// directory's files read (`files_seen`, `recent_files`).
    #[serde(flatten)]
    details: crate::event::SourceDetailsRecord,
}

fn sources(st: &UiState) -> Vec<SourceJson> {
    let mut out: Vec<SourceJson> = st
        .job
        .iter()
        .flat_map(|j| j.sources.iter())
        .map(|s| {
            let v = st.sources.get(&s.id).cloned().unwrap_or_default();
            SourceJson {
                id: s.id,
                kind: s.kind.clone(),
                description: s.description.clone(),
                receiver: s.receiver,
                records_in: v.records_in,
                last_batch_records: v.last_batch_records,
                positions: v.positions,
                errors: v.errors,
                last_error: v.last_error,
                last_error_at_ms: v.last_error_at_ms,
                connected: v.connected,
                reconnects: v.reconnects,
                connection_changed_at_ms: v.connection_changed_at_ms,
                last_disconnect: v.last_disconnect,
                bad_lines: v.bad_lines,
                last_bad_line: v.last_bad_line,
                rate_limit: rate_limit(st, s.id),
                backpressure_rate: backpressure_rate(st, s.id),
                details: v.details,
            }
        })
        .collect();
    // Errors of sources the description does not list (should not happen).
    for (id, v) in &st.sources {
        if !out.iter().any(|s| s.id == *id) {
            out.push(SourceJson {
                id: *id,
                kind: "unknown".into(),
                description: String::new(),
                receiver: true,
                records_in: v.records_in,
                last_batch_records: v.last_batch_records,
                positions: v.positions.clone(),
                errors: v.errors,
                last_error: v.last_error.clone(),
                last_error_at_ms: v.last_error_at_ms,
                connected: v.connected,
                reconnects: v.reconnects,
                connection_changed_at_ms: v.connection_changed_at_ms,
                last_disconnect: v.last_disconnect.clone(),
                bad_lines: v.bad_lines.clone(),
                last_bad_line: v.last_bad_line.clone(),
                rate_limit: rate_limit(st, *id),
                backpressure_rate: backpressure_rate(st, *id),
                details: v.details.clone(),
            });
        }
    }
    out
}

/// A source's rate limit when the newest batch took its records.
fn rate_limit(st: &UiState, id: u32) -> Option<f64> {
    st.batches.back().and_then(|b| b.record.rate_limits.get(id as usize).copied().flatten())
}

/// A source's backpressure estimate when the newest batch took its records.
fn backpressure_rate(st: &UiState, id: u32) -> Option<f64> {
    st.batches.back().and_then(|b| b.record.backpressure_rates.get(id as usize).copied().flatten())
}

/// The job's outputs with what each wrote so far.
fn outputs_json(st: &UiState) -> Vec<serde_json::Value> {
    st.job
        .iter()
        .flat_map(|j| j.outputs.iter())
        .map(|o| {
            let v = st.outputs.get(&o.index).cloned().unwrap_or_default();
            json!({
                "index": o.index,
                "stream": o.stream,
                "description": o.description,
                "records_out": v.records_out,
                "last_batch_records_out": v.last_batch_records_out,
            })
        })
        .collect()
}

fn json_resp(v: &impl Serialize) -> Response {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => Response::new(200, JSON, b),
        Err(e) => Response::text(500, format!("cannot encode: {e}\n")),
    }
}

fn api(st: &UiState, rest: &[&str]) -> Response {
    match rest {
        ["status"] => json_resp(&json!({
            "job": st.job.as_ref().map(|j| &j.name),
            "state": if st.history { "history" } else if st.live() { "running" } else { "finished" },
            "started_at_ms": st.started_at_ms,
            "ended_at_ms": st.ended_at_ms,
            "batch_interval_ms": st.job.as_ref().map(|j| j.batch_interval_ms),
            "totals": st.totals,
            "retained_batches": st.batches.len(),
            "last_batch_time": st.batches.back().map(|b| b.record.time),
            "in_flight": st.in_flight().iter().map(|(t, r, at)| json!({"time": t, "records_in": r, "submitted_at_ms": at})).collect::<Vec<_>>(),
        })),
        ["batches"] => json_resp(
            &st.batches
                .iter()
                .rev()
                .map(|b| {
                    let r = &b.record;
                    json!({
                        "time": r.time,
                        "records_in": r.records_in,
                        "scheduling_delay_ms": r.scheduling_delay_ms,
                        "processing_ms": r.processing_ms,
                        "total_delay_ms": r.total_delay_ms,
                        "failed": !r.errors.is_empty(),
                        "replayed": b.replayed,
                        "outputs": r.outputs.len(),
                        "records_out": r.outputs.iter().filter_map(|o| o.records_out).sum::<u64>(),
                        "task_retries": b.retries.len(),
                        "blocks_recomputed": b.recomputed_blocks.len(),
                        "rate_limits": r.rate_limits,
                    })
                })
                .collect::<Vec<_>>(),
        ),
        ["batches", t] => match t.parse::<i64>().ok().and_then(|t| st.batch(t)) {
            Some(b) => json_resp(b),
            None => Response::new(404, JSON, "{\"error\":\"no such batch retained\"}\n"),
        },
        ["executors"] => json_resp(&st.executors.values().collect::<Vec<_>>()),
        ["checkpoints"] => json_resp(&json!({
            "written": st.totals.checkpoint_writes,
            "failed": st.totals.checkpoint_failures,
            "checkpoints": st.checkpoints.iter().rev().collect::<Vec<_>>(),
            "recovery": st.recovery,
        })),
        ["streams"] => match &st.job {
            Some(j) => json_resp(&json!({
                "batch_interval_ms": j.batch_interval_ms,
                "streams": j.streams,
                "outputs": outputs_json(st),
                "modules": j.modules,
                "limits": j.limits,
            })),
            None => json_resp(&json!({"streams": [], "outputs": []})),
        },
        ["sources"] => json_resp(&sources(st)),
        _ => Response::new(404, JSON, "{\"error\":\"no such endpoint\"}\n"),
    }
}
