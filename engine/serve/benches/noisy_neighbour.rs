//! The noisy neighbour: a victim tenant's WordCount batch processing time
//! alone, and beside a neighbour tenant that saturates its quota of the
//! shared executor pool, on one `weir serve`, in the same command.
//!
//!     cargo bench -p weir-serve --bench noisy_neighbour
//!
//! It runs the release binary (`target/release/weir`, or WEIR_BIN; build it
//! first with `cargo build --release -p weir-cli`), on `master = "local[2]"` (WEIR_BENCH_SLOTS). Both tenants have
//! `max_slots` = the pool's size; the neighbour weight 1, the victim
//! WEIR_BENCH_VICTIM_WEIGHT (default 1). WEIR_BENCH_CPU_CGROUP names a
//! cgroup v1 `cpu` directory for the server's `cpu_cgroup` (each tenant's
//! threads in a cgroup weighted by its weight; unset: none).
//!
//! - The victim: WordCount over a `directory` source, one 10 000-line corpus
//!   file per batch (the `run_wordcount` bench's files: `gen_corpus.py`,
//!   WEIR_BENCH_LINES lines, default 2 000 000), wall clock, batches of
//!   WEIR_BENCH_INTERVAL (default 200ms), WEIR_BENCH_BATCHES of them
//!   (default 60), `save_as_text_files`. It uses a fraction of the pool.
//! - The neighbour: WordCount over the seeded generator, logical clock
//!   (batches back to back, never idle), 100 000 lines of 10 words per
//!   batch in WEIR_BENCH_NOISY_PARTITIONS partitions (default 16), so it
//!   always has tasks queued for every slot it may use.
//!
//! Each repetition (WEIR_BENCH_REPS, default 3) runs the victim alone, then
//! starts the neighbour, waits for its first batch, and runs the victim
//! again beside it. Batch processing times come from the server's API: the
//! victim's log (`GET /api/v1/jobs/{id}/logs`, the progress lines `processed
//! in N ms`); its first batch (module instantiation, cold caches) is left
//! out. Printed: median and p99 over every repetition's batches, alone and
//! beside the neighbour, and their ratios (target: p99 within 1.25x).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use sha2::Digest;

const VICTIM: &str = "victim-bench-token-0123456789";
const NOISY: &str = "noisy-bench-token-0123456789";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn sha(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `weir serve`, its address, and its stderr lines.
struct ServerProc {
    child: Child,
    addr: String,
    lines: Receiver<String>,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(weir: &Path, config: &Path) -> ServerProc {
    let mut child = Command::new(weir)
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start weir serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned (killed and waited for on drop) before anything can fail.
    let mut server = ServerProc { child, addr: String::new(), lines: rx };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server.lines.recv_timeout(left).expect("weir serve did not say where it listens within 60 s");
        if let Some(rest) = line.strip_prefix("weir: serving").and_then(|l| l.split("http://").nth(1)) {
            server.addr = rest.split('/').next().unwrap_or_default().to_string();
            return server;
        }
    }
}

/// One HTTP/1.1 request: status and body.
fn http(addr: &str, method: &str, path: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to weir serve");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn status(addr: &str, token: &str, id: &str) -> serde_json::Value {
    let (code, body) = http(addr, "GET", &format!("/api/v1/jobs/{id}"), token);
    assert_eq!(code, 200, "status of {id}: {body}");
    serde_json::from_str(&body).expect("status JSON")
}

fn completed(v: &serde_json::Value) -> u64 {
    v["progress"]["batches_completed"].as_u64().unwrap_or(0)
}

/// Polls `id` until it has completed `n` batches (or panics after `secs`).
fn wait_batches(addr: &str, token: &str, id: &str, n: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = status(addr, token, id);
        assert_eq!(v["state"], "running", "job {id} is not running: {v}");
        if completed(&v) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} did not reach {n} batches in {secs} s: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn submit(weir: &Path, addr: &str, token: &str, job: &Path) -> String {
    let out = Command::new(weir)
        .arg("submit")
        .arg(job)
        .args(["--server", &format!("http://{addr}")])
        .env("WEIR_TOKEN", token)
        .output()
        .expect("weir submit");
    assert!(out.status.success(), "weir submit: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stop(addr: &str, token: &str, id: &str) {
    let (code, body) = http(addr, "POST", &format!("/api/v1/jobs/{id}/stop?now=true"), token);
    assert_eq!(code, 200, "stop {id}: {body}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while status(addr, token, id)["state"] == "stopping" {
        assert!(Instant::now() < deadline, "job {id} did not stop within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processing times (ms) of a job's batches, from its log.
fn processing_times(addr: &str, token: &str, id: &str) -> Vec<f64> {
    let mut times = Vec::new();
    let mut since = 0u64;
    loop {
        let (code, body) = http(addr, "GET", &format!("/api/v1/jobs/{id}/logs?since={since}"), token);
        assert_eq!(code, 200, "logs of {id}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("logs JSON");
        let lines = v["lines"].as_array().cloned().unwrap_or_default();
        for l in lines.iter().filter_map(|l| l.as_str()) {
            if let Some(ms) = l.split("processed in ").nth(1).and_then(|r| r.split(" ms").next()) {
                assert!(!l.contains("FAILED"), "a victim batch failed: {l}");
                times.push(ms.parse::<f64>().expect("processing ms"));
            }
        }
        let next = v["next"].as_u64().unwrap_or(since);
        if lines.is_empty() || next == since {
            return times;
        }
        since = next;
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// The run_wordcount bench's corpus cut into 10 000-line files (made once).
fn corpus_files(root: &Path, lines: usize) -> Vec<PathBuf> {
    let base = root.join(format!("target/bench-run-corpus-{lines}"));
    if !base.join("corpus.txt").exists() {
        let script = root.join("../shared/bench/gen_corpus.py");
        assert!(script.exists(), "{} is needed for this benchmark", script.display());
        let st = Command::new("python3")
            .arg(&script)
            .args(["--lines", &lines.to_string(), "--batches", "1", "--out"])
            .arg(&base)
            .status()
            .expect("python3");
        assert!(st.success(), "gen_corpus.py failed");
    }
    let dir = base.join("files-10000");
    if !dir.join(".done").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let text = std::fs::read_to_string(base.join("corpus.txt")).expect("corpus.txt");
        let all: Vec<&str> = text.lines().collect();
        for (i, chunk) in all.chunks(10_000).enumerate() {
            std::fs::write(dir.join(format!("batch_{i:05}.txt")), format!("{}\n", chunk.join("\n"))).expect("write");
        }
        std::fs::write(dir.join(".done"), "").expect("write");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

/// The release `weir` binary (WEIR_BIN: that one). Building it from here
/// would take cargo's lock while `cargo bench` may hold it.
fn weir_binary(root: &Path) -> PathBuf {
    if let Ok(b) = std::env::var("WEIR_BIN") {
        return PathBuf::from(b);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let weir = target.join("release/weir");
    assert!(weir.exists(), "{} is missing: cargo build --release -p weir-cli first", weir.display());
    weir
}

/// Runs the victim once on `files` (copied into its root under `name`):
/// its batches' processing times, the first left out.
fn victim_run(weir: &Path, addr: &str, state: &Path, files: &[PathBuf], name: &str, interval: &str) -> Vec<f64> {
    let root = state.join("tenants/victim");
    let input = root.join(name);
    std::fs::create_dir_all(&input).expect("victim input");
    for f in files {
        std::fs::copy(f, input.join(f.file_name().expect("name"))).expect("copy corpus file");
    }
    let module = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../udfs/wordcount.wasm");
    let job = format!(
        "batch_interval = \"{interval}\"\n[modules]\nwordcount = \"{}\"\n[sources.lines]\ntype = \"directory\"\n\
         path = \"{name}\"\nmax_files_per_batch = 1\n[streams]\nwords = \"lines.flat_map(wordcount.split)\"\n\
         pairs = \"words.map(wordcount.pair)\"\ncounts = \"pairs.reduce_by_key(wordcount.sum)\"\n[[outputs]]\n\
         stream = \"counts\"\ntype = \"save_as_text_files\"\nprefix = \"out/counts\"\n",
        module.display()
    );
    let job_file = state.join(format!("{name}.toml"));
    std::fs::write(&job_file, job).expect("victim job");
    let id = submit(weir, addr, VICTIM, &job_file);
    let n = files.len() as u64;
    wait_batches(addr, VICTIM, &id, n, 60 + 5 * n);
    stop(addr, VICTIM, &id);
    let times = processing_times(addr, VICTIM, &id);
    assert!(times.len() as u64 >= n, "{} batch times for {n} batches", times.len());
    times.into_iter().take(n as usize).skip(1).collect()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let reps: usize = env_or("WEIR_BENCH_REPS", 3);
    let batches: usize = env_or("WEIR_BENCH_BATCHES", 60);
    let lines: usize = env_or("WEIR_BENCH_LINES", 2_000_000);
    let slots: usize = env_or("WEIR_BENCH_SLOTS", 2);
    let partitions: usize = env_or("WEIR_BENCH_NOISY_PARTITIONS", 16);
    let interval: String = env_or("WEIR_BENCH_INTERVAL", "200ms".to_string());
    let weir = weir_binary(&root);
    let files = corpus_files(&root, lines);
    assert!(files.len() >= batches, "{} corpus files for {batches} batches: raise WEIR_BENCH_LINES", files.len());
    let files = &files[..batches];

    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let victim_weight: u32 = env_or("WEIR_BENCH_VICTIM_WEIGHT", 1);
    let tenant = |name: &str, token: &str, weight: u32| {
        format!(
            "[tenants.{name}]\ntoken_sha256 = \"{}\"\nmax_jobs = 2\nweight = {weight}\nmax_slots = {slots}\n\
             max_parallelism = 64\nstorage_quota_bytes = 100_000_000_000\n",
            sha(token)
        )
    };
    let config = tmp.path().join("serve.toml");
    let cgroup = std::env::var("WEIR_BENCH_CPU_CGROUP").ok().filter(|c| !c.is_empty());
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmaster = \"local[{slots}]\"\n{}{}{}",
        cgroup.as_ref().map(|c| format!("cpu_cgroup = {c:?}\n")).unwrap_or_default(),
        tenant("victim", VICTIM, victim_weight),
        tenant("noisy", NOISY, 1)
    );
    std::fs::write(&config, text).expect("serve.toml");
    let noisy_job = tmp.path().join("noisy.toml");
    let module = root.join("udfs/wordcount.wasm");
    std::fs::write(
        &noisy_job,
        format!(
            "batch_interval = \"1s\"\nclock = \"logical\"\nparallelism = {partitions}\n[modules]\nwordcount = \"{}\"\n\
             [sources.lines]\ntype = \"generator\"\nlines_per_batch = 100000\nwords_per_line = 10\n[streams]\n\
             words = \"lines.flat_map(wordcount.split)\"\npairs = \"words.map(wordcount.pair)\"\n\
             counts = \"pairs.reduce_by_key(wordcount.sum)\"\n[[outputs]]\nstream = \"counts\"\n\
             type = \"save_as_text_files\"\nprefix = \"out/counts\"\n",
            module.display()
        ),
    )
    .expect("noisy job");

    let server = start_server(&weir, &config);
    println!(
        "noisy neighbour: weir serve, local[{slots}], victim WordCount {batches} batches of 10000 lines every {interval}, \
         neighbour WordCount 1M words/batch in {partitions} partitions back to back; weights victim {victim_weight}, \
         neighbour 1; {reps} repetition(s); cpu_cgroup {}",
        cgroup.as_deref().unwrap_or("none")
    );
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let a = victim_run(&weir, &server.addr, &state, files, &format!("alone-{rep}"), &interval);
        let noisy = submit(&weir, &server.addr, NOISY, &noisy_job);
        wait_batches(&server.addr, NOISY, &noisy, 1, 300);
        let before = completed(&status(&server.addr, NOISY, &noisy));
        let b = victim_run(&weir, &server.addr, &state, files, &format!("beside-{rep}"), &interval);
        let after = completed(&status(&server.addr, NOISY, &noisy));
        stop(&server.addr, NOISY, &noisy);
        println!(
            "rep {rep}: alone median {:.0} ms p99 {:.0} ms | beside median {:.0} ms p99 {:.0} ms | neighbour ran {} batch(es) meanwhile",
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            percentile(&b, 0.5),
            percentile(&b, 0.99),
            after - before
        );
        assert!(after > before, "the neighbour made no progress beside the victim");
        alone.extend(a);
        beside.extend(b);
    }
    let (am, ap, bm, bp) =
        (percentile(&alone, 0.5), percentile(&alone, 0.99), percentile(&beside, 0.5), percentile(&beside, 0.99));
    println!();
    println!("| victim batch processing | batches | median | p99 |");
    println!("|---|---|---|---|");
    println!("| alone | {} | {am:.0} ms | {ap:.0} ms |", alone.len());
    println!("| beside the neighbour | {} | {bm:.0} ms | {bp:.0} ms |", beside.len());
    println!("| ratio | | {:.2}x | {:.2}x (target <= 1.25x) |", bm / am.max(1.0), bp / ap.max(1.0));
}
