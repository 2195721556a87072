//! Issue 14: the status page, `/metrics`, the JSON API, `--progress json`,
//! the event log and `weir history`, fetched over plain HTTP on 127.0.0.1
//! and checked against what the job did.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{module, read_outputs, run, text, weir};
use crate::drivers::{progress, Driver};

const LINES_PER_BATCH: u64 = 7;

/// An endless WordCount over a generator of 7 lines a batch (so records
/// in = 7 x batches), 100 ms batches on the wall clock.
fn generator_job(dir: &Path, batches: Option<u64>) -> PathBuf {
    let job = format!(
        r#"batch_interval = "100ms"
[modules]
wordcount = "{}"
[sources.lines]
type = "generator"
lines_per_batch = {LINES_PER_BATCH}
words_per_line = 3
vocabulary = 50
{}
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
counts = "pairs.reduce_by_key(wordcount.sum)"
[[outputs]]
stream = "counts"
type = "save_as_text_files"
prefix = "out/counts"
"#,
        module("wordcount.wasm").display(),
        batches.map(|b| format!("batches = {b}")).unwrap_or_default()
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, job).unwrap();
    p
}

struct Http {
    status: u16,
    headers: String,
    body: String,
}

/// A GET with a plain TcpStream (one request per connection).
fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Http {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    assert_eq!(body.len(), len, "{path}: body length");
    Http { status, headers: head.to_string(), body: body.to_string() }
}

fn get_ok(addr: SocketAddr, path: &str) -> Http {
    let r = get(addr, path, None);
    assert_eq!(r.status, 200, "GET {path}: {}\n{}", r.headers, r.body);
    r
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = get_ok(addr, path);
    assert!(r.headers.contains("application/json"), "{path}: {}", r.headers);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

/// The address a driver printed (`weir: status page at http://A/`).
fn page_addr(d: &mut Driver, what: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    let l = d.wait_for(deadline, what, |l| l.contains(" at http://"));
    let a = l.split("http://").nth(1).unwrap().split('/').next().unwrap();
    a.parse().unwrap()
}

/// `weir run JOB` in `dir` with the status page on any free port and
/// `args` after it; the driver and the page's address.
fn run_with_ui(dir: &Path, job: &Path, args: &[&str]) -> (Driver, SocketAddr) {
    let mut d = Driver::spawn(weir().current_dir(dir).arg("run").arg(job).args(["--ui", "127.0.0.1:0"]).args(args));
    let addr = page_addr(&mut d, "the status page address");
    (d, addr)
}

/// `weir history EVENTS` on any free port; the server and its address.
fn history(events: &Path) -> (Driver, SocketAddr) {
    let mut h = Driver::spawn(weir().arg("history").arg(events).args(["--ui", "127.0.0.1:0"]));
    let addr = page_addr(&mut h, "the history address");
    (h, addr)
}

/// SIGTERM: the driver drains and must exit successfully.
fn stop(d: &mut Driver) {
    let ok = std::process::Command::new("kill").args(["-TERM", &d.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    let st = d.wait_exit(Duration::from_secs(60), "the driver to exit after SIGTERM");
    assert!(st.success(), "{st:?}\n{}", d.log());
}

/// A path as a command-line argument (temporary directories are UTF-8).
fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A strict reader of the Prometheus/OpenMetrics text format: every sample
/// belongs to a family declared by `# TYPE` with a suffix its type allows,
/// names and labels are well formed, values are numbers, `# EOF` ends it,
/// and histogram buckets are cumulative with `+Inf` equal to `_count`.
/// Returns `name{labels}` -> value.
fn parse_metrics(s: &str) -> BTreeMap<String, f64> {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut eof = false;
    for line in s.lines() {
        assert!(!eof, "a line after # EOF: {line}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kw, name) = (it.next().unwrap(), it.next().unwrap_or(""));
            assert!(name_ok(name), "bad metric name in {line:?}");
            match kw {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = it.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "info", "stateset", "unknown"].contains(&t),
                        "bad type in {line:?}"
                    );
                    assert!(types.insert(name.to_string(), t.to_string()).is_none(), "family declared twice: {name}");
                }
                _ => panic!("bad comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample {line:?}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}")))),
            None => (series, None),
        };
        assert!(name_ok(name), "bad name in {line:?}");
        if let Some(labels) = labels {
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(name_ok(k), "bad label name in {line:?}");
                assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "unquoted label value in {line:?}");
            }
        }
        let family = types
            .iter()
            .filter(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{f}{s}"))
            })
            .map(|(f, _)| f.clone())
            .next();
        assert!(family.is_some(), "sample of no declared family: {line:?}");
        assert!(out.insert(series.to_string(), v).is_none(), "sample twice: {line:?}");
    }
    assert!(eof, "no # EOF");
    for (f, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = out
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&format!("{f}_bucket{{le=\""))?.strip_suffix("\"}")?;
                Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{f}: buckets not cumulative");
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{f}: no +Inf bucket");
        assert_eq!(buckets.last().map(|b| b.1), out.get(&format!("{f}_count")).copied(), "{f}: +Inf != count");
    }
    out
}

/// The rows of the Streaming page's completed-batches table.
fn batch_rows(html: &str) -> Vec<String> {
    let table = html.split("<table id=\"batches\">").nth(1).expect("a batch table").split("</table>").next().unwrap();
    table.split("<tr>").skip(2).map(|r| r.to_string()).collect()
}

#[test]
fn the_status_page_metrics_api_and_history_show_what_the_job_did() {
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), None);
    let events = dir.path().join("events");
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--event-log", arg(&events)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeMap::new();
    while seen.len() < 4 {
        let (t, n) = progress(&d.wait_for(deadline, "a progress line", |l| progress(l).is_some())).unwrap();
        seen.insert(t, n);
    }

    // The JSON API against the progress lines already printed.
    let status = json(addr, "/api/v1/status");
    assert_eq!(status["state"], "running");
    assert_eq!(status["batch_interval_ms"], 100);
    let done = status["totals"]["batches_completed"].as_u64().unwrap();
    assert!(done >= seen.len() as u64, "{status}");
    assert_eq!(status["totals"]["records_in"].as_u64().unwrap(), LINES_PER_BATCH * done);
    let batches = json(addr, "/api/v1/batches");
    let listed: BTreeMap<i64, u64> = batches
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["time"].as_i64().unwrap(), b["records_in"].as_u64().unwrap()))
        .collect();
    for (t, n) in &seen {
        assert_eq!(listed.get(t), Some(n), "batch {t} in /api/v1/batches");
    }
    let (&t0, _) = seen.iter().next().unwrap();
    let one = json(addr, &format!("/api/v1/batches/{t0}"));
    assert_eq!(one["records_in"].as_u64(), Some(LINES_PER_BATCH));
    // Records out: what the output wrote to its files for that batch.
    let t0_lines = read_outputs(&dir.path().join("out"), "counts")[&t0].len() as u64;
    assert!(t0_lines > 0);
    assert_eq!(one["outputs"][0]["records_out"].as_u64(), Some(t0_lines), "{one}");
    assert_eq!(one["outputs"][0]["stream"].as_u64(), Some(3), "{one}");
    assert_eq!(one["records_per_source"], serde_json::json!([LINES_PER_BATCH]), "{one}");
    let stages: Vec<&str> =
        one["outputs"][0]["stages"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(stages, ["shuffle map", "result"], "{one}");
    // local[N]: the driver's own threads ran every task.
    for st in one["outputs"][0]["stages"].as_array().unwrap() {
        assert_eq!(st["executors"], serde_json::json!([""]), "{one}");
    }
    let streams = json(addr, "/api/v1/streams");
    let kinds: Vec<&str> = streams["streams"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["source", "narrow", "narrow", "shuffle"]);
    assert_eq!(streams["modules"]["wordcount.wasm"].as_str().map(|h| h.len()), Some(64));
    let sources = json(addr, "/api/v1/sources");
    assert_eq!(sources[0]["kind"], "generator");
    let src_records = sources[0]["records_in"].as_u64().unwrap();
    assert!(src_records >= LINES_PER_BATCH && src_records.is_multiple_of(LINES_PER_BATCH), "{sources}");
    assert_eq!(sources[0]["last_batch_records"].as_u64(), Some(LINES_PER_BATCH), "{sources}");
    // The driver's threads as the one executor, with the tasks it ran so far
    // (at least the two stages of each completed batch).
    let x = json(addr, "/api/v1/executors");
    assert_eq!(x.as_array().map(Vec::len), Some(1), "{x}");
    assert_eq!(x[0]["executor"], "", "{x}");
    assert!(x[0]["tasks_run"].as_u64().unwrap() >= 2 * done, "{x}");
    assert!(json(addr, "/api/v1/checkpoints")["checkpoints"].is_array());
    assert_eq!(get(addr, "/api/v1/nothing", None).status, 404);
    assert_eq!(get(addr, "/batches/1", None).status, 404);

    // /metrics parses strictly, and agrees with itself and the API.
    let m = get_ok(addr, "/metrics");
    assert!(m.headers.contains("openmetrics-text"), "{}", m.headers);
    let metrics = parse_metrics(&m.body);
    let batches_total = metrics["weir_batches_total"];
    assert!(batches_total >= done as f64);
    assert_eq!(metrics["weir_records_in_total"], batches_total * LINES_PER_BATCH as f64);
    assert_eq!(metrics["weir_batch_processing_seconds_count"], batches_total);
    // Per source: counted as batches are submitted, so the batch in flight too.
    let per_source = metrics["weir_source_records_in_total{source=\"0\",kind=\"generator\"}"];
    let in_total = metrics["weir_records_in_total"];
    assert!(
        per_source >= in_total && per_source <= in_total + 2.0 * LINES_PER_BATCH as f64,
        "source 0: {per_source} records, all sources {in_total}"
    );
    assert_eq!(per_source % LINES_PER_BATCH as f64, 0.0);
    assert_eq!(metrics["weir_batches_failed_total"], 0.0);
    for name in ["weir_task_retries_total", "weir_executors_added_total", "weir_executors_lost_total"] {
        assert_eq!(metrics.get(name), Some(&0.0), "{name}");
    }
    // Per module: split, pair and sum at least once a batch, fuel burned,
    // no failure; and the batch's own figures in the API.
    let calls = metrics["weir_udf_calls_total{module=\"wordcount.wasm\"}"];
    assert!(calls >= 3.0 * batches_total, "{calls} calls in {batches_total} batches");
    assert!(metrics["weir_udf_fuel_total{module=\"wordcount.wasm\"}"] > calls, "fuel of {calls} calls");
    assert_eq!(metrics["weir_udf_failures_total{module=\"wordcount.wasm\"}"], 0.0);
    let usage = &one["udf_usage"][0];
    assert_eq!(usage["module"], "wordcount.wasm", "{one}");
    assert!(usage["calls"].as_u64().unwrap() >= 3 && usage["fuel"].as_u64().unwrap() > 0, "{one}");

    // The pages: four plots with data, links to batches, the graph.
    let home = get_ok(addr, "/");
    assert!(home.headers.contains("text/html"));
    assert!(home.body.contains("http-equiv=\"refresh\""), "a running job's page refreshes itself");
    let plots = home.body.matches("<path class=\"data\" d=\"M").count();
    assert_eq!(plots, 8, "four timelines and four histograms with data");
    assert_eq!(home.body.matches("class=\"reference\"").count(), 2, "the batch interval on two timelines");
    assert!(home.body.contains(&format!("href=\"/batches/{t0}\"")));
    assert!(!home.body.contains("src=") && !home.body.contains("href=\"http"), "nothing loaded from elsewhere");
    let batch = get_ok(addr, &format!("/batches/{t0}"));
    assert!(batch.body.contains("shuffle map") && batch.body.contains("Recomputed blocks (0)"), "{}", batch.body);
    assert!(
        batch.body.contains(&format!("<span class=\"records-out\">{t0_lines} records out</span>")),
        "{}",
        batch.body
    );
    assert!(batch.body.contains("<td class=\"executors\">driver</td>"), "{}", batch.body);
    assert!(batch.body.contains(&format!("Records in per source: 0 (generator): {LINES_PER_BATCH}")), "{}", batch.body);
    let jobp = get_ok(addr, "/job");
    assert!(jobp.body.contains("reduce_by_key(wordcount.sum)") && jobp.body.contains("wordcount.wasm"));
    assert!(jobp.body.contains("fuel_per_call"));
    // The graph drawn: a box per stream (4) and output (1), an arrow per link.
    assert!(jobp.body.contains("<svg id=\"dag\""), "the job page draws the graph");
    assert_eq!(jobp.body.matches("<g class=\"node\"").count(), 5, "{}", jobp.body);
    assert_eq!(jobp.body.matches("<path class=\"edge\"").count(), 4, "{}", jobp.body);
    // The lineage of a recent batch: the output's RDD down to its input,
    // across the shuffle of reduce_by_key.
    assert!(jobp.body.contains("Lineage of batch"), "{}", jobp.body);
    let plan = jobp.body.split("<pre class=\"plan\">").nth(1).expect("a plan").split("</pre>").next().unwrap();
    assert!(plan.contains("&lt;- shuffle") && plan.contains("reduce_by_key(wordcount.sum)"), "{plan}");
    assert!(plan.lines().count() >= 4, "{plan}");
    for p in ["/executors", "/checkpoints", "/sources"] {
        assert!(get_ok(addr, p).body.contains("</html>"), "{p}");
    }
    // Only GET and HEAD; a huge request head is refused.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /{} HTTP/1.1\r\n", "x".repeat(20_000)).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");

    // The live page's batch table, to compare with the history's.
    let live_home = get_ok(addr, "/").body;
    let live_rows = batch_rows(&live_home);
    assert!(live_rows.len() >= seen.len(), "{live_home}");

    // SIGTERM: the job drains; then `weir history` serves the same figures.
    stop(&mut d);
    let all: Vec<(i64, u64)> = d.log().lines().filter_map(progress).collect();
    let (mut h, haddr) = history(&events);
    let hs = json(haddr, "/api/v1/status");
    assert_eq!(hs["state"], "history");
    assert_eq!(hs["totals"]["batches_completed"].as_u64(), Some(all.len() as u64), "{hs}");
    assert_eq!(hs["totals"]["records_in"].as_u64(), Some(all.iter().map(|b| b.1).sum::<u64>()));
    let hb = json(haddr, "/api/v1/batches");
    assert_eq!(hb.as_array().unwrap().len(), all.len());
    let hm = parse_metrics(&get_ok(haddr, "/metrics").body);
    assert_eq!(hm["weir_batches_total"], all.len() as f64);
    // Records out over the whole run: every line of every output file.
    let written = read_outputs(&dir.path().join("out"), "counts");
    assert_eq!(written.len(), all.len(), "a file per batch");
    let lines_out: u64 = written.values().map(|l| l.len() as u64).sum();
    assert_eq!(hs["totals"]["records_out"].as_u64(), Some(lines_out), "{hs}");
    assert_eq!(hm["weir_records_out_total"], lines_out as f64);
    assert_eq!(hm["weir_stream_records_out_total{output=\"save_as_text_files#0\",stream=\"3\"}"], lines_out as f64);
    let hstreams = json(haddr, "/api/v1/streams");
    assert_eq!(hstreams["outputs"][0]["records_out"].as_u64(), Some(lines_out), "{hstreams}");
    let (&last, last_lines) = written.iter().next_back().unwrap();
    assert_eq!(hstreams["outputs"][0]["last_batch_records_out"].as_u64(), Some(last_lines.len() as u64));
    for b in hb.as_array().unwrap() {
        let t = b["time"].as_i64().unwrap();
        assert_eq!(b["records_out"].as_u64(), Some(written[&t].len() as u64), "batch {t} (last {last})");
    }
    // local[N]: one executor, the driver's threads, which ran every task
    // of every stage of every batch (no retries, no checkpoint jobs here).
    let stage_tasks: u64 = hb
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let one = json(haddr, &format!("/api/v1/batches/{}", b["time"]));
            let stages = one["outputs"][0]["stages"].as_array().unwrap().clone();
            stages.iter().map(|s| s["tasks"].as_u64().unwrap()).sum::<u64>()
        })
        .sum();
    assert!(stage_tasks >= 2 * all.len() as u64, "{stage_tasks} tasks in {} batches", all.len());
    let hx = json(haddr, "/api/v1/executors");
    let hx = hx.as_array().unwrap();
    assert_eq!(hx.len(), 1, "{hx:?}");
    let x = &hx[0];
    assert_eq!((x["executor"].as_str(), x["active"].as_bool()), (Some(""), Some(true)), "{x}");
    assert_eq!(x["tasks_run"].as_u64(), Some(stage_tasks), "{x}");
    assert_eq!((x["tasks_failed"].as_u64(), x["tasks_running"].as_u64()), (Some(0), Some(0)), "{x}");
    assert!(x["heartbeats"].is_null() && x["last_heartbeat_at_ms"].is_null(), "threads do not heartbeat: {x}");
    assert_eq!(x["blocks_recomputed"].as_u64(), Some(0), "{x}");
    // UDF memory: whole WebAssembly pages (64 KiB), some held at the peak.
    let peak = x["udf_memory_peak_bytes"].as_u64().unwrap();
    assert!(peak >= 65536 && peak.is_multiple_of(65536), "{x}");
    assert!(x["udf_memory_bytes"].as_u64().unwrap() <= peak, "{x}");
    assert_eq!(hm["weir_executor_tasks_total{executor=\"driver\"}"], stage_tasks as f64);
    assert_eq!(hm["weir_executor_task_failures_total{executor=\"driver\"}"], 0.0);
    assert_eq!(hm["weir_executor_tasks_running{executor=\"driver\"}"], 0.0);
    let xpage = get_ok(haddr, "/executors").body;
    assert!(xpage.contains("driver (in-process threads)"), "{xpage}");
    assert!(xpage.contains(&format!("<td class=\"tasks-run\">{stage_tasks}</td>")), "{xpage}");
    let hhome = get_ok(haddr, "/");
    assert!(!hhome.body.contains("http-equiv=\"refresh\""), "a finished job's page does not refresh");
    // The history's batch table has every row the live page showed, as it was.
    // (It lists the newest 100: live rows older than its oldest are not compared.)
    let hrows = batch_rows(&hhome.body);
    let row_time =
        |r: &str| -> i64 { r.split("href=\"/batches/").nth(1).unwrap().split('"').next().unwrap().parse().unwrap() };
    let oldest = hrows.iter().map(|r| row_time(r)).min().unwrap();
    let compared = live_rows.iter().filter(|r| row_time(r) >= oldest).count();
    assert!(compared >= seen.len().min(hrows.len()), "{compared} rows compared");
    for row in live_rows.iter().filter(|r| row_time(r) >= oldest) {
        assert!(hrows.contains(row), "the live row {row} is not in the history's table:\n{}", hhome.body);
    }
    assert_eq!(hhome.body.matches("<path class=\"data\" d=\"M").count(), 8);
    get_ok(haddr, &format!("/batches/{t0}"));
    h.kill();
}

/// A page port that is taken: the next free one is used and printed, for
/// the default `127.0.0.1:4040` and for a port given with `--ui`.
#[test]
fn a_taken_page_port_moves_to_the_next_free_one_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), None);
    // A port given: held here, so the page goes to one of the next.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let (mut d, addr) = run_with_ui_at(dir.path(), &job, &format!("127.0.0.1:{port}"));
    assert!((port + 1..port + 16).contains(&addr.port()), "{port} taken, page at {addr}");
    assert_eq!(get(addr, "/", None).status, 200);
    stop(&mut d);
    // The default: 4040 held here (when another job on the machine holds
    // it instead, it may free it meanwhile: then 4040 is fine too).
    let held_default = std::net::TcpListener::bind("127.0.0.1:4040");
    let mut d = Driver::spawn(weir().current_dir(dir.path()).arg("run").arg(&job));
    let addr = page_addr(&mut d, "the status page address");
    let first = if held_default.is_ok() { 4041 } else { 4040 };
    assert!((first..4056).contains(&addr.port()), "4040 taken, page at {addr}");
    assert_eq!(get(addr, "/", None).status, 200);
    stop(&mut d);
}

/// `weir run JOB` in `dir` with the status page at `ui`.
fn run_with_ui_at(dir: &Path, job: &Path, ui: &str) -> (Driver, SocketAddr) {
    let mut d = Driver::spawn(weir().current_dir(dir).arg("run").arg(job).args(["--ui", ui]));
    let addr = page_addr(&mut d, "the status page address");
    (d, addr)
}

#[test]
fn progress_json_writes_one_object_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), Some(3));
    let out = run(weir().current_dir(dir.path()).arg("run").arg(&job).args([
        "--clock",
        "logical",
        "--ui",
        "off",
        "--progress",
        "json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", text(&out.stderr));
    // Records out: each batch's count is the lines its output wrote, and
    // the running total their sum.
    let written = read_outputs(&dir.path().join("out"), "counts");
    assert_eq!(written.len(), 3, "{written:?}");
    let mut total = 0;
    for l in &lines {
        assert_eq!(l["records_in"].as_u64(), Some(LINES_PER_BATCH));
        assert_eq!(l["records_per_source"], serde_json::json!([LINES_PER_BATCH]), "{l}");
        assert!(l["processing_ms"].as_f64().is_some() && l["errors"].as_array().unwrap().is_empty());
        let t = l["time"].as_i64().unwrap();
        let want = written[&t].len() as u64;
        assert!(want > 0, "batch {t} wrote nothing");
        assert_eq!(l["outputs"][0]["records_out"].as_u64(), Some(want), "batch {t}: {l}");
        // counts = reduce_by_key(...) is node 3 (lines, words, pairs before it).
        assert_eq!(l["outputs"][0]["stream"].as_u64(), Some(3), "{l}");
        total += want;
        assert_eq!(l["records_out_total"], serde_json::json!([total]), "{l}");
    }
}

#[test]
fn a_page_off_loopback_needs_a_token_and_a_token_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), Some(2));
    let out =
        run(weir().current_dir(dir.path()).arg("run").arg(&job).args(["--ui", "0.0.0.0:0", "--clock", "logical"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--ui-token-file"), "{}", text(&out.stderr));

    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-t0ken\n").unwrap();
    let job = generator_job(dir.path(), None);
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--ui-token-file", arg(&token)]);
    assert_eq!(get(addr, "/", None).status, 401);
    assert_eq!(get(addr, "/metrics", Some("wrong")).status, 401);
    assert_eq!(get(addr, "/api/v1/status?token=s3cret-t0kem", None).status, 401);
    assert_eq!(get(addr, "/metrics", Some("s3cret-t0ken")).status, 200);
    let home = get(addr, "/?token=s3cret-t0ken", None);
    assert_eq!(home.status, 200);
    assert!(home.body.contains("href=\"/job?token=s3cret-t0ken\""), "links keep the token");
    d.kill();
}

#[test]
fn a_receiver_that_cannot_connect_warns_once_and_the_sources_page_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, crate::drivers::socket_totals_job(port, None)).unwrap();
    let ckpt = dir.path().join("ckpt");
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--checkpoint", arg(&ckpt)]);
    // Poll the API (with a deadline) until the receiver has failed 3 times.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = json(addr, "/api/v1/sources");
        if s[0]["errors"].as_u64().unwrap_or(0) >= 3 {
            assert!(s[0]["last_error"].as_str().unwrap().contains(&format!("127.0.0.1:{port}")), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the receiver did not fail 3 times: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = get_ok(addr, "/sources");
    assert!(page.body.contains(&format!("cannot connect to 127.0.0.1:{port}")), "{}", page.body);
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert!(m["weir_receiver_errors_total{source=\"0\"}"] >= 3.0);
    d.kill();
    let warnings = d.log().lines().filter(|l| l.contains("WARN") && l.contains("cannot connect")).count();
    assert_eq!(warnings, 1, "{}", d.log());
}

/// Headless Chromium (Debian `chromium`; scripts/test.sh installs it)
/// renders the Streaming page of a running job to a screenshot kept under
/// the target directory; the HTML it was served has the four plots with
/// data. Skipped (with a note) when Chromium is missing, except under CI or
/// `scripts/test.sh` (`WEIR_REQUIRE_TEST_SERVERS=1`), which installs it.
#[test]
fn the_streaming_page_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("WEIR_REQUIRE_TEST_SERVERS").is_some();
        assert!(!required, "chromium is missing (scripts/test.sh installs it)");
        eprintln!("skipped: no chromium on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), None);
    let (mut d, addr) = run_with_ui(dir.path(), &job, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..3 {
        d.wait_for(deadline, "a progress line", |l| progress(l).is_some());
    }
    let html = get_ok(addr, "/").body;
    let plots: Vec<&str> =
        html.split("<path class=\"data\" d=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(plots.len(), 8, "four timelines, four histograms");
    for p in &plots {
        assert!(p.starts_with('M') && p.len() > 10, "an empty plot: {p:?}");
    }

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("observability");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("streaming.png");
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("http://{addr}/"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium: {status:?}");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{} bytes", bytes.len());

    // The page as the browser built it (its DOM after parsing and layout):
    // the four plots have data and the batch table has rows.
    let dom_file = shots.join("streaming.dom.html");
    let mut c = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("http://{addr}/"))
        .stdout(std::fs::File::create(&dom_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("chromium --dump-dom did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium --dump-dom: {status:?}");
    let dom = std::fs::read_to_string(&dom_file).unwrap();
    let paths: Vec<&str> =
        dom.split("<path class=\"data\" d=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(paths.len(), 8, "the browser's DOM has four timelines and four histograms");
    assert!(paths.iter().all(|p| p.starts_with('M') && p.len() > 10), "an empty plot in the browser: {paths:?}");
    let rows = batch_rows(&dom);
    assert!(rows.len() >= 3, "the browser's batch table has {} rows: {dom}", rows.len());
    assert!(rows.iter().all(|r| r.contains("href=\"/batches/")), "{rows:?}");
    d.kill();
}

/// The driver's child processes (the executors of `local-cluster[N]`).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Polls `path` (with a deadline) until `done` holds; returns that answer.
fn poll(addr: SocketAddr, path: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = json(addr, path);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {path} is still {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An executor killed while no batch runs shows as lost at once, not when
/// the next batch's first stage hears of it: the page's loss time is before
/// the next batch's time, and that batch's report counts the loss.
#[test]
fn an_executor_killed_between_batches_shows_lost_before_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Batches far apart (3 s) and small: the kill lands well between two;
    // two partitions, so both executors run tasks.
    let job = generator_job(dir.path(), None);
    let text = std::fs::read_to_string(&job).unwrap();
    let slow = text.replace("batch_interval = \"100ms\"", "batch_interval = \"3s\"\nparallelism = 2");
    assert_ne!(text, slow);
    std::fs::write(&job, slow).unwrap();
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--master", "local-cluster[2]"]);
    // A batch completed with tasks on both executors, none in flight.
    let execs = poll(addr, "/api/v1/executors", "both executors to run tasks", |v| {
        v.as_array().is_some_and(|a| {
            a.iter().filter(|x| x["active"] == true && x["tasks_run"].as_u64() >= Some(1)).count() == 2
        })
    });
    let done = poll(addr, "/api/v1/status", "a completed batch, none in flight", |v| {
        v["totals"]["batches_completed"].as_u64() >= Some(1) && v["in_flight"].as_array().is_some_and(Vec::is_empty)
    });
    let completed = done["totals"]["batches_completed"].as_u64().unwrap();
    let x = &execs.as_array().unwrap()[0];
    let victim = x["executor"].as_str().unwrap().to_string();
    let pid: u32 = x["added_reason"]
        .as_str()
        .and_then(|r| r.strip_prefix("pid "))
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{x}"));
    let ok = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(ok.success());
    // First the live status says so; then the driver's loss event (its
    // reason and time) comes, while it waits for the next batch.
    poll(addr, "/api/v1/executors", "the killed executor shown inactive", |v| executor(v, &victim)["active"] == false);
    let lost = poll(addr, "/api/v1/executors", "the killed executor's loss event", |v| {
        executor(v, &victim)["lost_reason"].as_str().is_some_and(|r| !r.is_empty())
    });
    let x = executor(&lost, &victim);
    assert_eq!(x["active"], false, "{lost}");
    let lost_at = x["lost_at_ms"].as_i64().unwrap_or_else(|| panic!("{lost}"));
    // The next batch: its time is after the loss, and it counts it.
    let next =
        poll(addr, "/api/v1/status", "the next batch", |v| v["totals"]["batches_completed"].as_u64() > Some(completed));
    let batches = json(addr, "/api/v1/batches");
    let mut times: Vec<i64> = batches.as_array().unwrap().iter().map(|b| b["time"].as_i64().unwrap()).collect();
    times.sort();
    // The batch after the loss counts it, the one before does not; the
    // loss came before the later batch's time.
    let lost_in = |t: i64| json(addr, &format!("/api/v1/batches/{t}"))["executors_lost"].as_u64();
    let t = times[completed as usize];
    assert!(lost_at < t, "lost at {lost_at}, after batch {t} ms started: {lost}\n{batches}\n{next}");
    for b in &times {
        assert_eq!(lost_in(*b), Some(u64::from(*b == t)), "batch {b}: {batches}");
    }
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_executors_lost_total"], 1.0);
    stop(&mut d);
}

#[test]
fn executors_and_checkpoints_pages_follow_a_local_cluster_losing_an_executor() {
    let dir = tempfile::tempdir().unwrap();
    // Running totals (state, so checkpoints) over the generator.
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "200ms"
[modules]
wordcount = "{}"
[sources.lines]
type = "generator"
lines_per_batch = {LINES_PER_BATCH}
words_per_line = 3
vocabulary = 50
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
totals = "pairs.update_state_by_key(wordcount.running_total).checkpoint(400ms)"
[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "out/totals"
"#,
            module("wordcount.wasm").display()
        ),
    )
    .unwrap();
    let ckpt = dir.path().join("ckpt");
    let events = dir.path().join("events");
    let (mut d, addr) = run_with_ui(
        dir.path(),
        &job,
        &["--master", "local-cluster[2]", "--event-log", arg(&events), "--checkpoint", arg(&ckpt)],
    );
    let execs = poll(addr, "/api/v1/executors", "two executors", |v| {
        v.as_array().is_some_and(|a| a.iter().filter(|x| x["active"] == true).count() == 2)
    });
    for x in execs.as_array().unwrap() {
        assert!(x["added_reason"].as_str().unwrap().contains("pid"), "{x}");
    }
    // A batch's stages name the executors (block server addresses) that
    // ran their tasks.
    let addrs: Vec<String> =
        execs.as_array().unwrap().iter().map(|x| x["executor"].as_str().unwrap().to_string()).collect();
    let b = poll(addr, "/api/v1/batches", "a batch", |v| v.as_array().is_some_and(|a| !a.is_empty()));
    let t = b[0]["time"].as_i64().unwrap();
    let one = json(addr, &format!("/api/v1/batches/{t}"));
    let stages = one["outputs"][0]["stages"].as_array().unwrap();
    assert!(!stages.is_empty(), "{one}");
    for st in stages {
        let ran: Vec<&str> = st["executors"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert!(
            !ran.is_empty() && ran.iter().all(|x| addrs.iter().any(|a| a == x)),
            "{ran:?} not among {addrs:?}: {one}"
        );
    }
    // Both executors heartbeat (every 100 ms), ran tasks with UDF memory
    // (whole 64 KiB pages) and lost none; the driver's status is fresh.
    let execs = poll(addr, "/api/v1/executors", "heartbeats and tasks from both executors", |v| {
        v.as_array().is_some_and(|a| {
            a.iter().filter(|x| x["heartbeats"].as_u64() >= Some(3) && x["tasks_run"].as_u64() >= Some(1)).count() == 2
        })
    });
    for x in execs.as_array().unwrap() {
        let (beat, status) = (x["last_heartbeat_at_ms"].as_u64().unwrap(), x["status_at_ms"].as_u64().unwrap());
        // Fresh: within a few heartbeat timeouts (3 s) even on a loaded machine.
        assert!(beat <= status && status - beat < 10_000, "a recent heartbeat: {x}");
        assert_eq!(x["tasks_failed"].as_u64(), Some(0), "{x}");
        let peak = x["udf_memory_peak_bytes"].as_u64().unwrap();
        assert!(peak >= 65536 && peak.is_multiple_of(65536), "{x}");
    }
    let cps = poll(addr, "/api/v1/checkpoints", "checkpoints written", |v| {
        v["checkpoints"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["kind"] == "metadata") && a.iter().any(|c| c["kind"] == "state"))
    });
    assert_eq!(cps["failed"], 0);
    let page = get_ok(addr, "/checkpoints");
    assert!(page.body.contains("metadata") && page.body.contains("written"));

    // kill -9 one executor: the driver notices, the pages say so, and the
    // state blocks it held are recomputed (to their original digests) and
    // charged to its loss.
    let kids = children(d.pid());
    assert_eq!(kids.len(), 2, "{kids:?}");
    let ok = std::process::Command::new("kill").args(["-KILL", &kids[0].to_string()]).status().unwrap();
    assert!(ok.success());
    let execs = poll(addr, "/api/v1/executors", "an executor lost, its blocks recomputed", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x["active"] == false && x["blocks_recomputed"].as_u64() >= Some(1)))
    });
    let lost: Vec<&serde_json::Value> = execs.as_array().unwrap().iter().filter(|x| x["active"] == false).collect();
    assert_eq!(lost.len(), 1, "{execs}");
    assert!(lost[0]["lost_reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(lost[0]["added_reason"].as_str().unwrap().contains(&format!("pid {}", kids[0])), "{execs}");
    let victim = lost[0]["executor"].as_str().unwrap().to_string();
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert!(m["weir_executors_added_total"] >= 2.0, "a replacement may have joined");
    assert_eq!(m["weir_executors_lost_total"], 1.0);
    assert!(m["weir_checkpoint_writes_total{kind=\"metadata\"}"] >= 1.0);
    assert!(get_ok(addr, "/executors").body.contains("lost"));

    // SIGTERM; the event log, served by `weir history`, holds the figures
    // still (nothing moves any more, so they can be compared exactly).
    stop(&mut d);
    let (mut h, haddr) = history(&events);
    let hx = json(haddr, "/api/v1/executors");
    let x = hx.as_array().unwrap().iter().find(|x| x["executor"] == victim.as_str()).unwrap();
    assert_eq!(x["active"], false, "{x}");
    let charged = x["blocks_recomputed"].as_u64().unwrap();
    // Every block charged to the loss is on a batch's page, with its digest
    // check, and no block is charged to an executor that was not lost.
    let mut listed = 0;
    let mut page_of = None;
    for b in json(haddr, "/api/v1/batches").as_array().unwrap() {
        let t = b["time"].as_i64().unwrap();
        let one = json(haddr, &format!("/api/v1/batches/{t}"));
        assert_eq!(one["dropped_details"], 0, "{one}");
        for r in one["recomputed_blocks"].as_array().unwrap() {
            if let Some(e) = r["lost_executor"].as_str() {
                assert_eq!(e, victim, "{one}");
                assert_eq!(r["digest_matches"], true, "{one}");
                listed += 1;
                page_of.get_or_insert((t, r["block"].as_str().unwrap().to_string()));
            }
        }
    }
    assert!(charged >= 1 && listed == charged, "{charged} charged to {victim}, {listed} listed");
    let hm = parse_metrics(&get_ok(haddr, "/metrics").body);
    assert_eq!(hm[&format!("weir_executor_blocks_recomputed_total{{executor=\"{victim}\"}}")], charged as f64);
    assert!(hm["weir_blocks_recomputed_total{digest=\"match\"}"] >= charged as f64);
    assert_eq!(hm["weir_blocks_recomputed_total{digest=\"mismatch\"}"], 0.0);
    let (t, block) = page_of.unwrap();
    let bpage = get_ok(haddr, &format!("/batches/{t}")).body;
    assert!(
        bpage.contains(&format!(
            "<tr><td><code>{block}</code></td><td><span class=\"ok\">matches the original</span></td>\
<td>executor <code>{victim}</code> was lost</td></tr>"
        )),
        "{bpage}"
    );
    let xpage = get_ok(haddr, "/executors").body;
    assert!(xpage.contains(&format!("<td class=\"recomputed\">{charged}</td>")), "{xpage}");
    // Tasks per executor: each executor ran at least the tasks the stages
    // name it for (once per stage), and the per-executor series agree.
    for x in hx.as_array().unwrap() {
        let name = x["executor"].as_str().unwrap();
        let run = x["tasks_run"].as_u64().unwrap();
        assert_eq!(hm[&format!("weir_executor_tasks_total{{executor=\"{name}\"}}")], run as f64, "{x}");
        assert_eq!(
            hm[&format!("weir_executor_heartbeats_total{{executor=\"{name}\"}}")],
            x["heartbeats"].as_u64().unwrap() as f64
        );
    }
    h.kill();
}

#[test]
fn verbose_logs_show_weirs_events_but_not_the_compilers() {
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), Some(2));
    let out =
        run(weir().current_dir(dir.path()).arg("run").arg(&job).args(["--clock", "logical", "--ui", "off", "-vv"]));
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.lines().any(|l| l.contains("DEBUG")), "-vv shows Weir's debug events:\n{err}");
    // Cranelift at debug level writes thousands of lines compiling a module.
    assert!(err.lines().count() < 500, "{} lines: wasmtime/cranelift internals leaked into -vv", err.lines().count());
}

/// A real TCP server drops the receiver's connection `DROPS` times (after
/// sending it lines), then keeps the last connection open: the receiver
/// reconnected exactly `DROPS` times, is connected, and took every line.
/// Then the server goes away: the receiver shows as disconnected, and each
/// change of state was one warning.
#[test]
fn receiver_reconnects_are_counted_and_the_connection_state_shown() {
    const DROPS: u64 = 3;
    const LINES: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, crate::drivers::socket_totals_job(port, None)).unwrap();
    let ckpt = dir.path().join("ckpt");
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--checkpoint", arg(&ckpt)]);
    let mut last = None;
    for i in 0..=DROPS {
        let mut conn = crate::drivers::accept(&server, Duration::from_secs(30));
        for j in 0..LINES {
            writeln!(conn, "conn{i} line{j}").unwrap();
        }
        conn.flush().unwrap();
        if i < DROPS {
            drop(conn); // the server closes: the receiver must reconnect
        } else {
            last = Some(conn);
        }
    }
    let total = (DROPS + 1) * LINES;
    let s = poll(addr, "/api/v1/sources", "every line in and the last connection up", |v| {
        v[0]["records_in"].as_u64() == Some(total) && v[0]["connected"] == true
    });
    assert_eq!(s[0]["reconnects"].as_u64(), Some(DROPS), "{s}");
    assert_eq!(json(addr, "/api/v1/status")["totals"]["receiver_reconnects"].as_u64(), Some(DROPS));
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_receiver_reconnects_total{source=\"0\"}"], DROPS as f64);
    assert_eq!(m["weir_receiver_connected{source=\"0\"}"], 1.0);
    let page = get_ok(addr, "/sources").body;
    assert!(page.contains("<td class=\"reconnects\">3</td>"), "{page}");
    assert!(page.contains("<span class=\"ok\">connected</span>"), "{page}");
    // The write-ahead log: one segment (this run's) holding every line sent,
    // 8 bytes of header each ("connI lineJ" is 11 bytes), as on disk. It is
    // measured as a batch is cut: wait for a batch cut after the last line.
    let wal_bytes = total * (8 + 11);
    let s = poll(addr, "/api/v1/sources", "the write-ahead log with every line", |v| {
        v[0]["wal_bytes"].as_u64() == Some(wal_bytes)
    });
    assert_eq!(s[0]["wal_files"].as_u64(), Some(1), "{s}");
    let on_disk: Vec<u64> = walk(&ckpt)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(on_disk, [wal_bytes], "the segment files under {}", ckpt.display());
    assert_eq!(parse_metrics(&get_ok(addr, "/metrics").body)["weir_source_wal_bytes{source=\"0\"}"], wal_bytes as f64);
    let page = get_ok(addr, "/sources").body;
    assert!(page.contains(&format!("<p class=\"wal\">{wal_bytes} bytes in 1 segment file(s)</p>")), "{page}");

    // The server goes away: the connection ends and reconnecting fails.
    drop(server);
    drop(last);
    let s = poll(addr, "/api/v1/sources", "the receiver disconnected", |v| {
        v[0]["connected"] == false && v[0]["errors"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(s[0]["reconnects"].as_u64(), Some(DROPS), "{s}");
    assert!(s[0]["last_disconnect"].as_str().unwrap().contains("closed"), "{s}");
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_receiver_connected{source=\"0\"}"], 0.0);
    assert_eq!(m["weir_receiver_reconnects_total{source=\"0\"}"], DROPS as f64);
    assert!(get_ok(addr, "/sources").body.contains("<span class=\"fail\">disconnected</span>"));
    d.kill();
    let log = d.log();
    let warn = |what: &str| log.lines().filter(|l| l.contains("WARN") && l.contains(what)).count();
    assert_eq!(warn("closed the connection"), DROPS as usize + 1, "{log}");
    assert_eq!(warn("cannot connect"), 1, "{log}");
}

/// Lines a socket source's policies skip and truncate are counted per
/// action in the sources API, on the page and in
/// `weir_receiver_bad_lines_total`, and in the event log's history.
#[test]
fn bad_lines_a_receiver_skips_and_truncates_are_counted_in_the_api_metrics_page_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let job = dir.path().join("job.toml");
    let body = crate::drivers::socket_totals_job(port, None).replace(
        &format!("port = {port}\n"),
        &format!("port = {port}\non_invalid_utf8 = \"skip\"\nmax_line_bytes = 16\n"),
    );
    std::fs::write(&job, body).unwrap();
    let events = dir.path().join("events.jsonl");
    let ckpt = dir.path().join("ckpt");
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--event-log", arg(&events), "--checkpoint", arg(&ckpt)]);
    let mut conn = crate::drivers::accept(&server, Duration::from_secs(30));
    conn.write_all(
        b"good one\nbad \xff\xfe one\nbad \xc3 two\na line far longer than sixteen bytes\nbad \xff three\ngood two\n",
    )
    .unwrap();
    conn.flush().unwrap();
    let s = poll(addr, "/api/v1/sources", "the good and truncated lines in, the bad counted", |v| {
        v[0]["records_in"].as_u64() == Some(3) && v[0]["bad_lines"]["skipped"].as_u64() == Some(3)
    });
    assert_eq!(s[0]["bad_lines"]["truncated"].as_u64(), Some(1), "{s}");
    assert!(s[0]["last_bad_line"].as_str().is_some_and(|p| !p.is_empty()), "{s}");
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_receiver_bad_lines_total{source=\"0\",action=\"skipped\"}"], 3.0);
    assert_eq!(m["weir_receiver_bad_lines_total{source=\"0\",action=\"truncated\"}"], 1.0);
    let page = get_ok(addr, "/sources").body;
    assert!(page.contains("<p class=\"bad-lines\">3 skipped, 1 truncated;"), "{page}");
    drop(conn);
    stop(&mut d);
    // The history shows the same counts from the event log.
    let (mut h, haddr) = history(&events);
    let s = json(haddr, "/api/v1/sources");
    assert_eq!(s[0]["bad_lines"]["skipped"].as_u64(), Some(3), "{s}");
    assert_eq!(s[0]["bad_lines"]["truncated"].as_u64(), Some(1), "{s}");
    h.kill();
}

/// A forced task retry: a task that panics on one record (the test hook
/// `WEIR_TEST_PANIC_ON_RECORD`, an engine fault, so transient) fails every
/// attempt, is retried up to 4 attempts, and the batch fails. The event log's
/// history shows each retry on the Batch page, in the API and in
/// `weir_task_retries_total`, and the failed batch.
#[test]
fn forced_task_retries_show_on_the_batch_page_api_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    let poison = "observability.rs: a transient fault on this record";
    std::fs::write(dir.path().join("in.jsonl"), format!("[\"a\", \"b\", \"{poison}\", \"c\", \"d\"]\n")).unwrap();
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "100ms"
[modules]
testops = "{}"
[sources.lines]
type = "batches"
path = "in.jsonl"
[streams]
upper = "lines.map(testops.upper)"
[[outputs]]
stream = "upper"
type = "save_as_text_files"
prefix = "out/upper"
"#,
            module("testops.wasm").display()
        ),
    )
    .unwrap();
    let events = dir.path().join("events");
    let out = run(weir()
        .current_dir(dir.path())
        .env("WEIR_TEST_PANIC_ON_RECORD", poison)
        .arg("run")
        .arg(&job)
        .args(["--clock", "logical", "--ui", "off", "--event-log"])
        .arg(&events));
    let err = text(&out.stderr);
    assert!(err.contains("task panicked") && err.contains("4 time(s)"), "{err}");
    let (mut h, addr) = history(&events);
    let batches = json(addr, "/api/v1/batches");
    assert_eq!(batches.as_array().unwrap().len(), 1, "{batches}");
    let t = batches[0]["time"].as_i64().unwrap();
    assert_eq!(batches[0]["failed"], true, "{batches}");
    let b = json(addr, &format!("/api/v1/batches/{t}"));
    let retries = b["retries"].as_array().unwrap();
    // The partition holding the record: attempts 0, 1 and 2 failed and were
    // retried (its 4th attempt's failure fails the batch). No other
    // partition holds it, so none other is retried.
    let mut attempts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in retries {
        assert!(r["failure"].as_str().unwrap().contains("task panicked"), "{r}");
        attempts.entry(r["partition"].as_u64().unwrap()).or_default().push(r["attempt"].as_u64().unwrap());
    }
    assert_eq!(attempts.len(), 1, "only the partition holding the record is retried: {b}");
    for (p, a) in &attempts {
        let mut a = a.clone();
        a.sort();
        assert_eq!(a, [0, 1, 2], "partition {p}: {b}");
    }
    // The stage lists every attempt: the poisoned partition's four, failed,
    // and the other partition's one, which passed.
    let tasks = b["outputs"][0]["stages"][0]["task_list"].as_array().unwrap();
    let failed: Vec<u64> =
        tasks.iter().filter(|t| !t["failure"].is_null()).map(|t| t["attempt"].as_u64().unwrap()).collect();
    assert_eq!(failed, [0, 1, 2, 3], "{b}");
    assert!(
        tasks
            .iter()
            .filter(|t| !t["failure"].is_null())
            .all(|t| t["failure"].as_str().unwrap().contains("task panicked")),
        "{b}"
    );
    assert_eq!(tasks.iter().filter(|t| t["failure"].is_null()).count(), 1, "{b}");
    assert!(b["outputs"][0]["stages"][0]["task_ms"].as_array().is_some_and(|q| q.len() == 3), "{b}");
    assert_eq!(b["outputs"][0]["records_out"], serde_json::Value::Null, "a failed output wrote nothing: {b}");
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_task_retries_total"], retries.len() as f64);
    assert_eq!(m["weir_batches_failed_total"], 1.0);
    assert_eq!(m["weir_records_out_total"], 0.0);
    assert_eq!(json(addr, "/api/v1/status")["totals"]["task_retries"].as_u64(), Some(retries.len() as u64));
    let page = get_ok(addr, &format!("/batches/{t}")).body;
    assert!(page.contains(&format!("<h3>Task retries ({})</h3>", retries.len())), "{page}");
    assert!(page.contains("no records out") && page.contains("class=\"fail\""), "{page}");
    assert_eq!(page.matches("<tr class=\"task\">").count(), 5, "{page}");
    h.kill();
}

/// A deadline is deterministic (issue 10): a UDF slower than its deadline
/// (`testops.spin` over 5000 lines, `deadline_ms = 1`) fails its task on the
/// first attempt, nothing is retried, and the batch fails naming the
/// deadline.
#[test]
fn a_deadline_fails_its_task_once_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "100ms"
[limits]
deadline_ms = 1
[modules]
testops = "{}"
[sources.lines]
type = "generator"
lines_per_batch = 5000
words_per_line = 3
vocabulary = 50
batches = 1
[streams]
slow = "lines.map(testops.spin)"
[[outputs]]
stream = "slow"
type = "save_as_text_files"
prefix = "out/slow"
"#,
            module("testops.wasm").display()
        ),
    )
    .unwrap();
    let events = dir.path().join("events");
    let out = run(weir()
        .current_dir(dir.path())
        .arg("run")
        .arg(&job)
        .args(["--clock", "logical", "--ui", "off", "--event-log"])
        .arg(&events));
    let err = text(&out.stderr);
    assert!(err.contains("deadline") && err.contains("1 time(s)"), "{err}");
    assert!(!err.contains("4 time(s)"), "{err}");
    let (mut h, addr) = history(&events);
    let batches = json(addr, "/api/v1/batches");
    assert_eq!(batches[0]["failed"], true, "{batches}");
    let t = batches[0]["time"].as_i64().unwrap();
    let b = json(addr, &format!("/api/v1/batches/{t}"));
    assert_eq!(b["retries"].as_array().map(Vec::len), Some(0), "a deadline is not retried: {b}");
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_task_retries_total"], 0.0);
    assert_eq!(m["weir_batches_failed_total"], 1.0);
    h.kill();
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A directory source given files one at a time: the Sources page, API and
/// metrics count the files it read and list the newest five, newest first
/// on the page.
#[test]
fn the_sources_page_shows_the_files_a_directory_source_read() {
    const FILES: u64 = 7;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "100ms"
[modules]
wordcount = "{}"
[sources.lines]
type = "directory"
path = "in"
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
counts = "pairs.reduce_by_key(wordcount.sum)"
[[outputs]]
stream = "counts"
type = "save_as_text_files"
prefix = "out/counts"
"#,
            module("wordcount.wasm").display()
        ),
    )
    .unwrap();
    let (mut d, addr) = run_with_ui(dir.path(), &job, &[]);
    let mut names = Vec::new();
    for i in 1..=FILES {
        // Written under a hidden name, then renamed: never read half-written.
        let name = format!("part-{i}.txt");
        std::fs::write(input.join(".tmp"), format!("file {i} a\nfile {i} b\n")).unwrap();
        std::fs::rename(input.join(".tmp"), input.join(&name)).unwrap();
        names.push(name);
        poll(addr, "/api/v1/sources", "the file read", |v| v[0]["files_seen"].as_u64() == Some(i));
    }
    let s = json(addr, "/api/v1/sources");
    assert_eq!(s[0]["records_in"].as_u64(), Some(2 * FILES), "{s}");
    let recent: Vec<String> = s[0]["recent_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Path::new(f.as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(recent, names[2..], "the newest five, oldest first: {s}");
    assert!(s[0]["wal_bytes"].is_null(), "no write-ahead log: {s}");
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_source_files_read_total{source=\"0\"}"], FILES as f64);
    let page = get_ok(addr, "/sources").body;
    assert!(page.contains(&format!("<p class=\"files-seen\">{FILES} file(s) read</p>")), "{page}");
    let listed = page.split("<ul class=\"recent-files\">").nth(1).unwrap().split("</ul>").next().unwrap();
    let on_page: Vec<&str> = listed.split("<li>").skip(1).collect();
    assert_eq!(on_page.len(), 5, "{listed}");
    assert!(on_page[0].contains("part-7.txt") && on_page[4].contains("part-3.txt"), "newest first: {listed}");
    d.kill();
}

/// Sends `sig` (`-STOP`, `-CONT`) to process `pid`.
fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// A process stopped with SIGSTOP, continued when this is dropped (so a
/// test that fails midway leaves no stopped executor behind).
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// The executor named `addr` in an `/api/v1/executors` answer.
fn executor<'a>(execs: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    execs.as_array().unwrap().iter().find(|x| x["executor"] == addr).unwrap_or_else(|| panic!("{addr}: {execs}"))
}

/// Executor status is live: during one long batch (a UDF that spins on
/// every record) the API shows the tasks running now, and an executor
/// process stopped with SIGSTOP shows a heartbeat age that grows past the
/// heartbeat interval (100 ms) while its batch is still in flight and the
/// other executor keeps heartbeating. Before, the figures came only with
/// a completed batch: none at all during the first. SIGCONT, and the job
/// completes with every record.
#[test]
fn a_stopped_executor_shows_a_growing_heartbeat_age_while_its_batch_runs() {
    const LINES: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    // One batch of records: "before the batch completes" is "no batch
    // completed yet".
    // The sandbox's deadline is generous: a stopped executor's call takes
    // as long as it is stopped.
    std::fs::write(
        &job,
        format!(
            r#"batch_interval = "500ms"
parallelism = 2
[limits]
deadline_ms = 600000
fuel_per_call = 1000000000000
[modules]
testops = "{}"
[sources.lines]
type = "generator"
lines_per_batch = {LINES}
words_per_line = 2
batches = 1
[streams]
slow = "lines.map(testops.spin)"
[[outputs]]
stream = "slow"
type = "save_as_text_files"
prefix = "out/lines"
"#,
            module("testops.wasm").display()
        ),
    )
    .unwrap();
    // A heartbeat timeout far above the test's stop, so the stopped
    // executor is not declared lost meanwhile.
    let (mut d, addr) =
        run_with_ui(dir.path(), &job, &["--master", "local-cluster[2]", "--heartbeat-timeout-ms", "60000"]);
    let pid_of = |x: &serde_json::Value| -> u32 {
        let r = x["added_reason"].as_str().unwrap();
        r.strip_prefix("pid ")
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{x}"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    // An executor running a task now; stopped. (If its task ended between
    // the answer and the signal, it is continued and another is picked.)
    let (stopped, victim, other, first) = loop {
        let execs = poll(addr, "/api/v1/executors", "an executor running a task", |v| {
            v.as_array().is_some_and(|a| {
                a.iter().filter(|x| x["active"] == true).count() == 2
                    && a.iter().any(|x| x["tasks_running"].as_u64() >= Some(1))
            })
        });
        let busy = execs.as_array().unwrap().iter().find(|x| x["tasks_running"].as_u64() >= Some(1)).unwrap();
        let victim = busy["executor"].as_str().unwrap().to_string();
        let other = execs.as_array().unwrap().iter().find(|x| x["executor"] != victim.as_str()).unwrap();
        let other = other["executor"].as_str().unwrap().to_string();
        let stopped = Stopped::stop(pid_of(busy));
        let now = json(addr, "/api/v1/executors");
        if executor(&now, &victim)["tasks_running"].as_u64() >= Some(1) {
            break (stopped, victim, other, now);
        }
        drop(stopped);
        assert!(Instant::now() < deadline, "no executor could be stopped while running a task: {now}");
    };
    let status = json(addr, "/api/v1/status");
    assert_eq!(status["totals"]["batches_completed"], 0, "the batch completed before the stop: {status}");
    let beats_before = executor(&first, &other)["heartbeats"].as_u64().unwrap();

    // The stopped one's heartbeat age grows past the interval, as of now
    // (status_at_ms), its task still running there; the other heartbeats on.
    let silent = poll(addr, "/api/v1/executors", "the stopped executor's heartbeat age to grow", |v| {
        let x = executor(v, &victim);
        x["last_heartbeat_age_ms"].as_u64() > Some(1000)
            && executor(v, &other)["heartbeats"].as_u64() > Some(beats_before)
    });
    let x = executor(&silent, &victim);
    assert_eq!(x["active"], true, "{silent}");
    assert!(x["tasks_running"].as_u64() >= Some(1), "{silent}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let at = x["status_at_ms"].as_u64().unwrap();
    assert!(at + 5_000 >= now_ms, "the status is taken as the API is asked: {at} vs {now_ms}");
    let age = x["last_heartbeat_age_ms"].as_u64().unwrap();
    let grown = poll(addr, "/api/v1/executors", "the age to keep growing", |v| {
        executor(v, &victim)["last_heartbeat_age_ms"].as_u64() > Some(age + 300)
    });
    let status = json(addr, "/api/v1/status");
    assert_eq!(status["totals"]["batches_completed"], 0, "still in flight: {status}");
    assert_eq!(status["in_flight"].as_array().map(Vec::len), Some(1), "{status}");
    // The page and the metrics say so too.
    let page = get_ok(addr, "/executors").body;
    let ages: Vec<u64> = page
        .split("<td class=\"heartbeat-age\">")
        .skip(1)
        .filter_map(|r| r.split(" ms ago").next().and_then(|n| n.parse().ok()))
        .collect();
    assert!(ages.iter().any(|a| *a > 1000), "{page}");
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert!(m[&format!("weir_executor_tasks_running{{executor=\"{victim}\"}}")] >= 1.0, "{grown}");
    // The batch in flight is linked from the Streaming page's active table,
    // and its page says what is known so far.
    let time = status["in_flight"][0]["time"].as_i64().unwrap_or_else(|| panic!("{status}"));
    let streaming = get_ok(addr, "/").body;
    let active = streaming.split("<h3>Active batches</h3>").nth(1).unwrap_or_else(|| panic!("{streaming}"));
    assert!(active.contains(&format!("<a href=\"/batches/{time}\">{time} ms</a>")), "{active}");
    let page = get_ok(addr, &format!("/batches/{time}")).body;
    assert!(page.contains(&format!("Batch {time} (active)")), "{page}");
    assert!(
        page.contains(&format!("<td>{LINES}</td>")) && page.contains("<td class=\"active\">running</td>"),
        "{page}"
    );

    // Continued: its task finishes and the batch completes with every
    // record (the source then gives empty batches until SIGTERM).
    drop(stopped);
    poll(addr, "/api/v1/status", "the batch to complete after SIGCONT", |v| {
        v["totals"]["batches_completed"].as_u64() >= Some(1)
    });
    let b = json(addr, "/api/v1/batches");
    let first = b.as_array().unwrap().last().unwrap();
    assert_eq!((first["records_in"].as_u64(), &first["failed"]), (Some(LINES), &serde_json::json!(false)), "{b}");
    stop(&mut d);
    let lines: usize = read_outputs(&dir.path().join("out"), "lines").values().map(Vec::len).sum();
    assert_eq!(lines as u64, LINES, "{}", d.log());
}

/// The Checkpoints page, API and metrics follow checkpoint writes that fail
/// (the metadata directory replaced by a file mid-run) and resume (put
/// back), and a restart from the directory shows its recovery, also after
/// a corrupt newest checkpoint file (an older one is used, and the page
/// says which was refused).
#[test]
fn checkpoint_failures_and_recovery_show_on_the_checkpoints_page_api_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let job = generator_job(dir.path(), None);
    let ckpt = dir.path().join("ckpt");
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--checkpoint", arg(&ckpt)]);
    let written = |v: &serde_json::Value| v["written"].as_u64().unwrap_or(0);
    let before = written(&poll(addr, "/api/v1/checkpoints", "a checkpoint written", |v| written(v) >= 2));
    // Break: `metadata/` becomes a plain file; writes fail, the job goes on.
    let meta = weir::checkpoint::metadata_dir(&ckpt);
    let away = meta.with_file_name("metadata.away");
    std::fs::rename(&meta, &away).unwrap();
    std::fs::write(&meta, "not a directory").unwrap();
    let cps = poll(addr, "/api/v1/checkpoints", "failed checkpoint writes", |v| v["failed"].as_u64() >= Some(2));
    let failed: Vec<&serde_json::Value> =
        cps["checkpoints"].as_array().unwrap().iter().filter(|c| !c["error"].is_null()).collect();
    assert!(!failed.is_empty(), "{cps}");
    for c in &failed {
        assert_eq!(c["kind"], "metadata", "{c}");
        let e = c["error"].as_str().unwrap();
        assert!(e.contains("Not a directory") && e.contains(arg(&meta)), "the cause and the path: {e}");
    }
    let m = parse_metrics(&get_ok(addr, "/metrics").body);
    assert_eq!(m["weir_checkpoint_failures_total{kind=\"metadata\"}"], cps["failed"].as_u64().unwrap() as f64);
    let page = get_ok(addr, "/checkpoints").body;
    assert!(page.contains("<span class=\"fail\">failed</span>: ") && page.contains("Not a directory"), "{page}");
    // Repair: writes resume and the count of writes grows again.
    std::fs::remove_file(&meta).unwrap();
    std::fs::rename(&away, &meta).unwrap();
    let after_break = written(&cps);
    assert!(after_break >= before);
    let cps = poll(addr, "/api/v1/checkpoints", "writes after the repair", |v| written(v) >= after_break + 2);
    assert!(cps["recovery"].as_array().unwrap().is_empty(), "a fresh job recovered nothing: {cps}");
    stop(&mut d);

    // Corrupt the newest metadata checkpoint: a restart refuses it, falls
    // back to an older one and recovers; the page shows both.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&meta).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let newest = files.last().expect("metadata checkpoints").clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let (mut d, addr) = run_with_ui(dir.path(), &job, &["--checkpoint", arg(&ckpt)]);
    let cps = poll(addr, "/api/v1/checkpoints", "the recovery", |v| {
        v["recovery"].as_array().is_some_and(|a| a.iter().any(|n| n["what"] == "recovered"))
    });
    let notes = cps["recovery"].as_array().unwrap();
    let name = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        notes.iter().any(|n| n["what"] == "invalid checkpoint" && n["detail"].as_str().unwrap().contains(&name)),
        "the refused file is named: {cps}"
    );
    let page = get_ok(addr, "/checkpoints").body;
    assert!(
        page.contains("recovered") && page.contains("from checkpoint") && page.contains("invalid checkpoint"),
        "{page}"
    );
    stop(&mut d);
}
