//! Checkpoints and outputs on object storage (issue 13), against a local S3
//! server: the server mode of the PyPI package `moto`, installed by
//! `scripts/test-servers.sh` under `target/test-servers/py` (CI's
//! `scripts/test.sh` does it when missing). Without it these tests say so and
//! pass, unless `WEIR_REQUIRE_TEST_SERVERS=1` (set by `scripts/test.sh`).
//!
//! Each test starts its own server on a free loopback port (killed by a Drop
//! guard), creates a bucket with a plain HTTP PUT, and reads objects back
//! with boto3 (which moto brings): a third-party client.

use crate::common::*;
use crate::drivers::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto S3 server on a loopback port, killed on drop.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) port: u16,
    py: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_dir() -> PathBuf {
    std::env::var_os("WEIR_TEST_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/test-servers"))
        .join("py")
}

/// HTTP/1.1 request without a body; returns the status code.
fn http(port: u16, method: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let code = String::from_utf8_lossy(&head[9..12]).parse::<u16>().map_err(std::io::Error::other)?;
    Ok(code)
}

impl S3Server {
    /// Starts moto, or returns None (after saying why) when it is not installed.
    pub(crate) fn start() -> Option<S3Server> {
        let py = python_dir();
        if !py.join("moto").is_dir() {
            let msg = format!("moto is not installed in {} (run scripts/test-servers.sh)", py.display());
            assert!(std::env::var_os("WEIR_REQUIRE_TEST_SERVERS").is_none(), "{msg}");
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", &py)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start python3");
        let server = S3Server { child, port, py };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/", Duration::from_secs(2)).is_err() {
            assert!(Instant::now() < deadline, "moto did not answer on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    pub(crate) fn bucket(&self, name: &str) {
        let code = http(self.port, "PUT", &format!("/{name}"), Duration::from_secs(10)).unwrap();
        assert_eq!(code, 200, "creating bucket {name}");
    }

    /// A `weir` command configured for this server.
    pub(crate) fn weir(&self) -> Command {
        let mut c = weir();
        self.env(&mut c);
        c
    }

    /// The variables that point an S3 client (weir, boto3, Tansu's
    /// object_store) at this server.
    pub(crate) fn env_pairs(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}", self.port);
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", url.as_str()),
            ("AWS_ENDPOINT", url.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    pub(crate) fn env(&self, c: &mut Command) {
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port));
    }

    /// Runs a boto3 script (`s3` is a client of this server); returns stdout.
    pub(crate) fn boto3(&self, script: &str) -> String {
        let mut c = Command::new("python3");
        self.env(&mut c);
        let prelude = "import boto3, json, sys, base64\ns3 = boto3.client('s3', endpoint_url=__import__('os').environ['AWS_ENDPOINT_URL'])\n";
        let out = c.env("PYTHONPATH", &self.py).args(["-c", &format!("{prelude}{script}")]).output().unwrap();
        assert!(out.status.success(), "boto3 script failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Every object's size under `prefix` in `bucket`: key (without the
    /// prefix) -> bytes, listed only (what a running job deletes meanwhile
    /// is never read back).
    pub(crate) fn sizes(&self, bucket: &str, prefix: &str) -> BTreeMap<String, u64> {
        let out = self.boto3(&format!(
            "out = {{}}\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        out[o['Key'][len('{prefix}'):]] = o['Size']\nprint(json.dumps(out))\n"
        ));
        serde_json::from_str(out.trim()).unwrap()
    }

    /// Every object under `prefix` in `bucket`: key (without the prefix) -> bytes.
    pub(crate) fn objects(&self, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let out = self.boto3(&format!(
            "out = {{}}\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        out[o['Key'][len('{prefix}'):]] = base64.b64encode(s3.get_object(Bucket='{bucket}', Key=o['Key'])['Body'].read()).decode()\nprint(json.dumps(out))\n"
        ));
        let m: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
        m.into_iter().map(|(k, v)| (k, b64(&v))).collect()
    }
}

/// Base64 decoding (the tests must not need a crate for it).
fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn run_with(server: &S3Server, job: &Path, ckpt: &str) -> std::process::Output {
    let mut c = server.weir();
    c.args(["run", job.to_str().unwrap(), "--checkpoint", ckpt, "-q"]);
    run(&mut c)
}

#[test]
fn s3_checkpoint_outputs_are_identical_after_sigkills() {
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-ckpt");
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 40);

    let clean = run_with(&server, &job, "s3://weir-ckpt/clean");
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let expected = tree(&tmp.path().join("out"));
    std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
    assert!(expected.len() > 40, "one directory per output per batch");

    let mut rng = Rng(1313);
    let (mut kills, mut runs, mut recoveries) = (0, 0, 0);
    loop {
        runs += 1;
        assert!(runs < 60, "the job never finished ({kills} kills)");
        let mut cmd = server.weir();
        cmd.args(["run", job.to_str().unwrap(), "--checkpoint", "s3://weir-ckpt/killed"]);
        let mut d = Driver::spawn(&mut cmd);
        // Killed after a seeded number of progress lines (0: during start-up
        // or recovery), unless it finished first.
        let wait_for = rng.below(8);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < wait_for {
            match d.next_line(deadline, "progress") {
                Some(l) if l.starts_with("batch ") => seen += 1,
                Some(_) => {}
                None => break,
            }
        }
        let killed = kills < 6 && d.child.try_wait().unwrap().is_none();
        if killed {
            d.kill();
            kills += 1;
        }
        let status = d.wait_exit(Duration::from_secs(120), "the driver to exit");
        let log = d.log();
        assert!(!log.contains("panicked"), "{log}");
        if log.contains("recovered from checkpoint") {
            recoveries += 1;
        }
        if !killed {
            assert!(status.success(), "the driver failed: {log}");
            if kills >= 6 {
                break;
            }
        }
    }
    assert!(recoveries >= 1, "no run recovered");
    assert_same_tree(&tree(&tmp.path().join("out")), &expected, "outputs after SIGKILLs (S3 checkpoint)");
    eprintln!("{kills} SIGKILLs, {runs} runs, {recoveries} recoveries: outputs identical");
}

/// A job that runs until stopped (wall clock, endless generator).
fn endless_job(dir: &Path) -> PathBuf {
    let job = format!(
        r#"batch_interval = "300ms"
clock = "wall"
[modules]
wordcount = "{}"
[sources.lines]
type = "generator"
lines_per_batch = 5
words_per_line = 3
vocabulary = 20
seed = 1
[streams]
words = "lines.flat_map(wordcount.split)"
[[outputs]]
stream = "words"
type = "print"
"#,
        module("wordcount.wasm").display()
    );
    let p = dir.join("endless.toml");
    std::fs::write(&p, job).unwrap();
    p
}

#[test]
fn a_second_driver_on_one_s3_location_is_refused_naming_the_first() {
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-two");
    let tmp = tempfile::tempdir().unwrap();
    let job = endless_job(tmp.path());
    let loc = "s3://weir-two/job";
    let driver = |ttl: &str| {
        let mut c = server.weir();
        c.args(["run", job.to_str().unwrap(), "--checkpoint", loc, "--checkpoint-lease-ms", ttl]);
        Driver::spawn(&mut c)
    };
    let mut first = driver("1500");
    first.wait_for(Instant::now() + Duration::from_secs(60), "the first driver's first batch", |l| {
        l.starts_with("batch ")
    });

    let mut second = driver("1500");
    let status = second.wait_exit(Duration::from_secs(30), "the second driver to be refused");
    let log = second.log();
    assert!(!status.success(), "{log}");
    let owner = format!("pid {} on", first.pid());
    assert!(log.contains("is in use by another driver") && log.contains(&owner), "{log}");
    assert!(log.contains(loc), "{log}");
    assert!(first.child.try_wait().unwrap().is_none(), "the first driver stopped: {}", first.log());

    // Once the first is gone (killed: its lease stays behind), a new driver
    // on this machine sees its process is gone and takes the lease over.
    first.kill();
    let mut third = driver("1500");
    third.wait_for(Instant::now() + Duration::from_secs(60), "the third driver's first batch", |l| {
        l.starts_with("batch ")
    });
    assert!(third.log().contains("recovered from checkpoint"), "{}", third.log());
}

#[test]
fn a_corrupt_newest_s3_checkpoint_falls_back_to_an_older_one() {
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-corrupt");
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 20);
    let loc = "s3://weir-corrupt/job";
    let first = run_with(&server, &job, loc);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let expected = tree(&tmp.path().join("out"));

    // Flip the last byte of the newest metadata checkpoint (its checksum fails).
    let meta = server.objects("weir-corrupt", "job/metadata/");
    let (newest, bytes) = meta.iter().next_back().unwrap();
    let older = meta.keys().nth_back(1).unwrap().strip_prefix("checkpoint-").unwrap();
    // `<seq>-e<driver epoch>`
    let older: u64 = older.split("-e").next().unwrap().parse().unwrap();
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() ^= 0xff;
    std::fs::write(tmp.path().join("bad"), &bad).unwrap();
    server.boto3(&format!(
        "s3.put_object(Bucket='weir-corrupt', Key='job/metadata/{newest}', Body=open('{}', 'rb').read())",
        tmp.path().join("bad").display()
    ));

    let again = run_with(&server, &job, loc);
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("checkpoint not usable") && err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&format!("recovered from checkpoint {older}")), "{err}");
    assert_same_tree(&tree(&tmp.path().join("out")), &expected, "outputs after falling back");

    let inspect = run(server.weir().args(["checkpoint", "inspect", loc]));
    let out = text(&inspect.stdout);
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    assert!(out.contains("checkpoint location s3://weir-corrupt/job") && out.contains("newest valid"), "{out}");
}

#[test]
fn save_as_text_files_to_s3_equals_a_local_run() {
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-out");
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 12);
    let local = run_with(&server, &job, tmp.path().join("ckpt-local").to_str().unwrap());
    assert!(local.status.success(), "{}", text(&local.stderr));
    let want = tree(&tmp.path().join("out"));

    // The same job, its outputs on S3.
    let s3_job = tmp.path().join("s3-job.toml");
    let body = std::fs::read_to_string(&job).unwrap().replace("prefix = \"out/", "prefix = \"s3://weir-out/out/");
    std::fs::write(&s3_job, body).unwrap();
    let remote = run_with(&server, &s3_job, "s3://weir-out/ckpt");
    assert!(remote.status.success(), "{}", text(&remote.stderr));
    let got = server.objects("weir-out", "out/");
    assert_same_tree(&got, &want, "objects read back with boto3 vs a local run's files");
    let batches = got.keys().filter(|k| k.ends_with("/_SUCCESS")).count();
    assert_eq!(batches, want.keys().filter(|k| k.ends_with("/_SUCCESS")).count());
    assert!(batches >= 12, "{batches} batches with _SUCCESS");

    // A socket source needs a local write-ahead log: refused, saying why.
    let sock = tmp.path().join("sock.toml");
    std::fs::write(&sock, socket_totals_job(1, None)).unwrap();
    let refused = run(server.weir().args(["run", sock.to_str().unwrap(), "--checkpoint", "s3://weir-out/sock"]));
    let err = text(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("write-ahead log") && err.contains("local checkpoint directory"), "{err}");
}

// ------------------------------------------------- a hostile "S3" server
//
// An HTTP/1.1 server held by the test on 127.0.0.1 that plays an S3 bucket
// just well enough (lease GET/PUT, ListObjectsV2, object GET/PUT/DELETE) to
// lead `weir run --checkpoint s3://...` to one hostile answer.

#[derive(Clone, Copy, Debug, PartialEq)]
enum HostileS3 {
    /// The lease object declares 2^40 bytes, then zeros for ever.
    HugeLease,
    /// The metadata checkpoint declares 2^40 bytes, then zeros for ever.
    HugeMetadata,
    /// The metadata checkpoint declares 1 GiB (less than any state object
    /// may hold) and streams zeros for ever: only a bound below the
    /// declared length keeps memory small.
    GiBMetadata,
    /// Listing the metadata checkpoints fails (HTTP 500, every time): the
    /// run must not take the location for an empty one.
    ListFails,
    /// The metadata checkpoint: headers declaring 1000 bytes, 10 bytes of
    /// body, then nothing (the connection held open).
    StalledMetadata,
    /// A real metadata checkpoint ([`REAL_METADATA`]) whose data checkpoint
    /// stalls like `StalledMetadata`.
    StalledState,
    /// A real metadata checkpoint whose data checkpoint declares 2 GiB (over
    /// the 1 GiB bound, under the 4 GiB one of before) and streams zeros.
    HugeState,
    /// Listing the metadata checkpoints: "truncated", with a new
    /// continuation token and no key, page after page for ever.
    EndlessEmptyListing,
    /// The same, with 5000 keys a page (more than S3's 1000: the key bound
    /// is met before the page bound).
    EndlessListing,
}

/// The name and bytes of a metadata checkpoint of a real run, for the
/// hostile modes that need one (set before those servers start).
static REAL_METADATA: std::sync::OnceLock<(String, Vec<u8>)> = std::sync::OnceLock::new();

/// Serves one connection (keep-alive) as a `mode` bucket.
fn serve_s3(mut s: TcpStream, mode: HostileS3) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        let (method, target) = {
            let mut f = head[0].split_whitespace();
            (f.next().unwrap_or("").to_string(), f.next().unwrap_or("").to_string())
        };
        let len: u64 = head
            .iter()
            .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).unwrap();
        let path = target.split('?').next().unwrap_or("").to_string();
        let endless = |s: &mut TcpStream, declared: u64| {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nETag: \"h\"\r\nLast-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\n");
            let zeros = vec![0u8; 1 << 16];
            while s.write_all(&zeros).is_ok() {}
        };
        let reply = |s: &mut TcpStream, status: &str, body: &str| {
            write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"e1\"\r\n\r\n{body}", body.len())
        };
        // Headers and 10 bytes of 1000, then the connection is held open
        // until the client hangs up.
        let stall = |s: &mut TcpStream| {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"h\"\r\nLast-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\n0123456789");
            let _ = s.flush();
            let _ = s.read(&mut [0u8; 1]);
        };
        let listing_page = |keys: &str, token: Option<&str>| {
            let more = match token {
                Some(t) => format!("<IsTruncated>true</IsTruncated><NextContinuationToken>{t}</NextContinuationToken>"),
                None => "<IsTruncated>false</IsTruncated>".to_string(),
            };
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>bucket</Name>{more}{keys}</ListBucketResult>")
        };
        let contents = |key: &str| {
            format!("<Contents><Key>{key}</Key><LastModified>2026-11-30T00:00:00.000Z</LastModified><ETag>\"m\"</ETag><Size>100</Size></Contents>")
        };
        let real = matches!(mode, HostileS3::StalledState | HostileS3::HugeState);
        let listing_metadata = target.contains("list-type=2") && target.contains("prefix=p%2Fmetadata%2F");
        let ok = match (method.as_str(), path.as_str()) {
            ("GET", "/bucket") if listing_metadata && real => {
                let (name, _) = REAL_METADATA.get().unwrap();
                reply(&mut s, "200 OK", &listing_page(&contents(&format!("p/metadata/{name}")), None))
            }
            ("GET", p) if real && p.starts_with("/bucket/p/metadata/") => {
                let (_, bytes) = REAL_METADATA.get().unwrap();
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"r\"\r\nLast-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\n", bytes.len());
                s.write_all(bytes)
            }
            ("GET", p) if mode == HostileS3::StalledState && p.starts_with("/bucket/p/state/") => return stall(&mut s),
            ("GET", p) if mode == HostileS3::HugeState && p.starts_with("/bucket/p/state/") => {
                return endless(&mut s, 2 << 30)
            }
            ("GET", "/bucket/p/metadata/checkpoint-1000") if mode == HostileS3::StalledMetadata => {
                return stall(&mut s)
            }
            ("GET", "/bucket")
                if listing_metadata && matches!(mode, HostileS3::EndlessEmptyListing | HostileS3::EndlessListing) =>
            {
                // Each page's token is new: the client never sees a repeat.
                let page: u64 = target
                    .split("continuation-token=")
                    .nth(1)
                    .and_then(|t| t.split('&').next())
                    .and_then(|t| t.trim_start_matches("page").parse().ok())
                    .unwrap_or(0);
                let keys: String = if mode == HostileS3::EndlessListing {
                    (0..5000).map(|i| contents(&format!("p/metadata/checkpoint-{:020}", page * 5000 + i))).collect()
                } else {
                    String::new()
                };
                reply(&mut s, "200 OK", &listing_page(&keys, Some(&format!("page{}", page + 1))))
            }
            // The lease is taken by a conditional PUT: refused, so the
            // driver reads the holder's lease.
            ("PUT", "/bucket/p/lock") if mode == HostileS3::HugeLease => reply(&mut s, "412 Precondition Failed", ""),
            ("GET", "/bucket/p/lock") if mode == HostileS3::HugeLease => return endless(&mut s, 1 << 40),
            ("GET", "/bucket/p/metadata/checkpoint-1000") => {
                return endless(&mut s, if mode == HostileS3::HugeMetadata { 1 << 40 } else { 1 << 30 })
            }
            ("GET", "/bucket") if mode == HostileS3::ListFails && target.contains("prefix=p%2Fmetadata%2F") => reply(
                &mut s,
                "500 Internal Server Error",
                "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>no</Message></Error>",
            ),
            ("GET", "/bucket") if target.contains("list-type=2") => {
                let listing = if target.contains("prefix=p%2Fmetadata%2F") {
                    "<Contents><Key>p/metadata/checkpoint-1000</Key><LastModified>2026-11-30T00:00:00.000Z\
                     </LastModified><ETag>\"m\"</ETag><Size>100</Size></Contents>"
                } else {
                    ""
                };
                reply(
                    &mut s,
                    "200 OK",
                    &format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>bucket</Name>\
                         <IsTruncated>false</IsTruncated>{listing}</ListBucketResult>"
                    ),
                )
            }
            ("GET", _) => reply(
                &mut s,
                "404 Not Found",
                "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>no</Message></Error>",
            ),
            ("PUT", _) => reply(&mut s, "200 OK", ""),
            ("DELETE", _) => reply(&mut s, "204 No Content", ""),
            _ => reply(&mut s, "400 Bad Request", ""),
        };
        if ok.is_err() {
            return;
        }
    }
}

fn hostile_s3(mode: HostileS3) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            // Answers go out at once (headers and body are separate writes).
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || serve_s3(s, mode));
        }
    });
    port
}

#[test]
fn a_hostile_s3_server_is_refused_within_bounded_memory_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("in.jsonl"), "[\"a b\"]\n").unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        "batch_interval = \"1s\"\nclock = \"logical\"\n[sources.lines]\ntype = \"batches\"\npath = \"in.jsonl\"\n\
         [streams]\nn = \"lines.count()\"\n[[outputs]]\nstream = \"n\"\ntype = \"print\"\n",
    )
    .unwrap();
    for (mode, object, says) in [
        (HostileS3::HugeLease, "lock", "1099511627776 bytes, more than the 65536 allowed"),
        (HostileS3::HugeMetadata, "metadata/checkpoint-1000", "1099511627776 bytes, more than the 67108864 allowed"),
        (HostileS3::GiBMetadata, "metadata/checkpoint-1000", "1073741824 bytes, more than the 67108864 allowed"),
        (HostileS3::ListFails, "", "cannot list its metadata checkpoints"),
    ] {
        let port = hostile_s3(mode);
        let mut c = weir();
        c.args(["run", job.to_str().unwrap(), "--checkpoint", "s3://bucket/p", "--batches", "1"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        let r = run_bounded(&mut c, Duration::from_secs(90));
        let err = &r.stderr;
        eprintln!("{mode:?}: exit {:?} in {:?}, peak RSS {} kB", r.code, r.elapsed, r.peak_kb);
        assert!(!r.timed_out, "{mode:?}: no end within 90 s:\n{err}");
        assert!(r.code.is_some() && !err.contains("panicked"), "{mode:?}: crashed:\n{err}");
        assert!(r.peak_kb < 200 << 10, "{mode:?}: peak RSS {} kB:\n{err}", r.peak_kb);
        let place = if object.is_empty() { "s3://bucket/p".to_string() } else { format!("s3://bucket/p/{object}") };
        let named = err.lines().find(|l| l.contains(&place) && l.contains(says));
        assert!(named.is_some(), "{mode:?}: no message naming {object} and saying {says:?}:\n{err}");
    }
}

/// A job whose one output partition is about 20 MiB of text (three 8 MiB
/// multipart parts) in its first batch, then a small batch.
fn big_part_job(dir: &Path, prefix: &str) -> PathBuf {
    let mut rng = Rng(8);
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789 ".chars().collect();
    let lines: Vec<String> = (0..2100)
        .map(|i| {
            let body: String = (0..10_000).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            format!("\"{i} {body}\"")
        })
        .collect();
    std::fs::write(dir.join("big.jsonl"), format!("[{}]\n[\"small\",\"batch\"]\n", lines.join(","))).unwrap();
    let job = format!(
        "batch_interval = \"1s\"\nclock = \"logical\"\nparallelism = 1\n[sources.lines]\ntype = \"batches\"\n\
         path = \"big.jsonl\"\n[streams]\nbig = \"lines.coalesce(1)\"\n[[outputs]]\nstream = \"big\"\n\
         type = \"save_as_text_files\"\nprefix = \"{prefix}\"\n"
    );
    let p = dir.join(format!("big-{}.toml", prefix.replace(['/', ':'], "_")));
    std::fs::write(&p, job).unwrap();
    p
}

#[test]
fn a_stalled_body_an_oversized_state_object_and_an_endless_listing_end_in_bounded_time_and_memory() {
    // A real metadata checkpoint naming a data checkpoint, from a local run.
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 6);
    let local = tmp.path().join("ckpt");
    let out = run(weir().arg("run").arg(&job).arg("--checkpoint").arg(&local).arg("-q"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let newest = std::fs::read_dir(local.join("metadata"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("checkpoint-"))
        .max()
        .unwrap();
    let bytes = std::fs::read(local.join("metadata").join(&newest)).unwrap();
    REAL_METADATA.get_or_init(|| (newest.clone(), bytes));
    // The same job with every object-store bound of `[checkpoint]` set
    // lower than its default: the settings, not the defaults, decide.
    let bounded = tmp.path().join("bounded.toml");
    let settings = "\n[checkpoint]\nstall_timeout_ms = 2000\nmax_state_bytes = 4096\nmax_list_pages = 7\n\
                    max_list_keys = 12000\n";
    std::fs::write(&bounded, std::fs::read_to_string(&job).unwrap() + settings).unwrap();
    let stalled = "the server stalled: no byte for 15000 ms ([checkpoint] stall_timeout_ms) after 10 of the 1000 bytes";
    let stalled_2s = "the server stalled: no byte for 2000 ms ([checkpoint] stall_timeout_ms) after 10 of the 1000";
    for (mode, job, object, says) in [
        (HostileS3::StalledMetadata, &job, "metadata/checkpoint-1000", stalled),
        (HostileS3::StalledState, &job, "state/", stalled),
        (HostileS3::HugeState, &job, "state/", "2147483648 bytes, more than the 1073741824 allowed"),
        (HostileS3::EndlessEmptyListing, &job, "metadata", "the listing goes on past 100 pages (0 keys so far)"),
        (HostileS3::EndlessListing, &job, "metadata", "the listing holds more than 100000 keys"),
        (HostileS3::StalledMetadata, &bounded, "metadata/checkpoint-1000", stalled_2s),
        (
            HostileS3::HugeState,
            &bounded,
            "state/",
            "2147483648 bytes, more than the 4096 allowed ([checkpoint] max_state_bytes in the job file)",
        ),
        (HostileS3::EndlessEmptyListing, &bounded, "metadata", "the listing goes on past 7 pages (0 keys so far)"),
        (HostileS3::EndlessListing, &bounded, "metadata", "the listing holds more than 12000 keys"),
    ] {
        let port = hostile_s3(mode);
        let mut c = weir();
        c.args(["run", job.to_str().unwrap(), "--checkpoint", "s3://bucket/p", "--batches", "1"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        let r = run_bounded(&mut c, Duration::from_secs(90));
        let err = &r.stderr;
        eprintln!("{mode:?}: exit {:?} in {:?}, peak RSS {} kB", r.code, r.elapsed, r.peak_kb);
        assert!(!r.timed_out, "{mode:?}: no end within 90 s:\n{err}");
        assert!(r.code.is_some() && !err.contains("panicked"), "{mode:?}: crashed:\n{err}");
        assert!(r.peak_kb < 200 << 10, "{mode:?}: peak RSS {} kB:\n{err}", r.peak_kb);
        // Well within the whole request's 120 s deadline.
        assert!(r.elapsed < Duration::from_secs(60), "{mode:?}: took {:?}:\n{err}", r.elapsed);
        let place = format!("s3://bucket/p/{object}");
        let named = err.lines().find(|l| l.contains(&place) && l.contains(says));
        assert!(named.is_some(), "{mode:?}: no message naming {place} and saying {says:?}:\n{err}");
    }
}

#[test]
fn a_part_bigger_than_8_mib_is_a_multipart_upload_and_a_failed_one_is_aborted() {
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-big");
    let tmp = tempfile::tempdir().unwrap();
    // The reference: the same job to local files.
    let local = big_part_job(tmp.path(), "out/big");
    let out = run(weir().args(["run", local.to_str().unwrap(), "-q"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = tree(&tmp.path().join("out"));
    let first = &want["big-1000/part-00000"];
    assert!(first.len() > 2 * (8 << 20), "the first part is {} bytes, not over two 8 MiB parts", first.len());

    // A failure after two parts are uploaded: the batch's output fails, the
    // upload is aborted: no part object, no _SUCCESS, no upload left open.
    let remote = big_part_job(tmp.path(), "s3://weir-big/out/big");
    let mut c = server.weir();
    c.args(["run", remote.to_str().unwrap(), "--checkpoint", "s3://weir-big/ckpt", "--batches", "1"])
        .env("WEIR_FAILPOINT_MULTIPART_FAIL_AFTER_PARTS", "2");
    let failed = run(&mut c);
    let log = text(&failed.stderr);
    assert!(log.contains("injected failure after 2 parts"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let objects = server.objects("weir-big", "out/");
    assert!(objects.is_empty(), "objects visible after a failed upload: {:?}", objects.keys().collect::<Vec<_>>());
    let open = server.boto3("print(len(s3.list_multipart_uploads(Bucket='weir-big').get('Uploads', [])))");
    assert_eq!(open.trim(), "0", "the failed multipart upload was not aborted");

    // Again without the failure, on the same checkpoint (the failed batch
    // is re-run): the objects equal the local files byte for byte, and the
    // big part went up in three parts (an S3 multipart ETag ends in -3).
    let again = run(server.weir().args(["run", remote.to_str().unwrap(), "--checkpoint", "s3://weir-big/ckpt", "-q"]));
    assert!(again.status.success(), "{}", text(&again.stderr));
    let got = server.objects("weir-big", "out/");
    assert_same_tree(&got, &want, "S3 objects vs local files");
    let etag = server.boto3("print(s3.head_object(Bucket='weir-big', Key='out/big-1000/part-00000')['ETag'])");
    assert!(etag.trim().trim_matches('"').ends_with("-3"), "not a 3-part multipart upload: ETag {etag}");
    let small = server.boto3("print(s3.head_object(Bucket='weir-big', Key='out/big-2000/part-00000')['ETag'])");
    assert!(!small.contains('-'), "a small part is one PUT: ETag {small}");
}

/// A TCP proxy in front of `to` that counts, in what clients send, the
/// occurrences of `pattern` (a request line): its port and the count.
fn counting_proxy(to: u16, pattern: &'static [u8]) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let Ok(mut up) = TcpStream::connect(("127.0.0.1", to)) else { return };
            let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let counted = counted.clone();
            std::thread::spawn(move || {
                // The pattern may straddle two reads: the tail is kept.
                let (mut buf, mut tail) = (vec![0u8; 1 << 16], Vec::new());
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    counted.fetch_add(tail.windows(pattern.len()).filter(|w| *w == pattern).count(), Ordering::SeqCst);
                    tail.drain(..tail.len().saturating_sub(pattern.len() - 1));
                }
                let _ = up.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, count)
}

/// A driver whose lease was renewed lately commits without reading the
/// lease object (issue 13: it was read before every commit, about seven
/// GETs a batch): a 20-batch run with a checkpoint and an output every
/// batch reads it a few times in all, and its outputs are those of a run on
/// local disk. (That a paused driver still reads it, and finds it fenced, is
/// the next test.)
#[test]
fn a_driver_with_a_fresh_lease_commits_without_reading_the_lease_object() {
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-lease");
    let want = crate::fencing::reference(20);
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), 20);
    let (port, gets) = counting_proxy(server.port, b"GET /weir-lease/job/lock ");
    let mut c = server.weir();
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    c.args(["run", job.to_str().unwrap(), "--checkpoint", "s3://weir-lease/job", "-q"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_same_tree(&tree(&tmp.path().join("out")), &want, "outputs with the checkpoint on S3");
    let n = gets.load(std::sync::atomic::Ordering::SeqCst);
    // At most: taking the lease, and releasing it at the end.
    assert!(n <= 3, "{n} GETs of the lease object for 20 batches");
    // The proxy saw the run: its lease was written through it.
    assert!(!server.objects("weir-lease", "job/metadata/").is_empty());
}

/// Fencing on object storage (issue 18): driver A is paused past its
/// lease, driver B takes the location over (epoch 2) and runs the job to
/// its end, then A is continued. A must stop, fenced, naming both epochs,
/// and publish no output after the takeover; a metadata object it may
/// still have PUT (the one in flight in its check-then-write window when it
/// was paused) must be of epoch 1 and ignored by the next recovery; the
/// outputs equal an uninterrupted run's.
#[test]
fn a_paused_driver_taken_over_on_s3_is_fenced_and_its_late_writes_are_ignored() {
    use crate::cluster::{signal, wait_until, SIGCONT, SIGSTOP};
    let Some(server) = S3Server::start() else { return };
    server.bucket("weir-fence");
    let batches = 120;
    let expected = std::thread::spawn(move || crate::fencing::reference(batches));
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), batches);
    let loc = "s3://weir-fence/job";
    let cmd = || {
        let mut c = server.weir();
        c.args(["run", job.to_str().unwrap(), "--master", "local[2]", "--checkpoint", loc]);
        c.args(["--checkpoint-lease-ms", "1000"]);
        c
    };
    let mut a = Driver::spawn(&mut cmd());
    a.wait_for(Instant::now() + Duration::from_secs(120), "driver A's first batch", |l| progress(l).is_some());
    signal(a.pid(), SIGSTOP);
    wait_until("A to stop", Duration::from_secs(10), || crate::cluster::proc_state(a.pid()) == Some('T'));

    let mut b = Driver::spawn(&mut cmd());
    let status = b.wait_exit(Duration::from_secs(180), "driver B to take over and finish the job");
    let blog = b.log();
    assert!(status.success(), "driver B failed ({status}):\n{blog}");
    assert!(blog.contains("took over the checkpoint lease") && blog.contains("this driver is epoch 2"), "{blog}");
    let meta_after_b = server.objects("weir-fence", "job/metadata/");
    let out_after_b = tree(&tmp.path().join("out"));

    signal(a.pid(), SIGCONT);
    let status = a.wait_exit(Duration::from_secs(60), "driver A to stop, fenced");
    let alog = a.log();
    assert!(!status.success(), "the fenced driver exited 0:\n{alog}");
    assert!(alog.contains("fenced") && alog.contains("holds epoch 1") && alog.contains("epoch 2"), "{alog}");
    let late: Vec<String> =
        server.objects("weir-fence", "job/metadata/").into_keys().filter(|k| !meta_after_b.contains_key(k)).collect();
    assert!(late.len() <= 1 && late.iter().all(|k| k.ends_with("-e1")), "A wrote after the takeover: {late:?}");
    assert_same_tree(&tree(&tmp.path().join("out")), &out_after_b, "outputs after A was continued");
    let expected = expected.join().unwrap();
    assert_same_tree(&tree(&tmp.path().join("out")), &expected, "outputs after the takeover");

    // A late write of A's is never what a new driver recovers from.
    let again = run_with(&server, &job, loc);
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    let seq = |k: &String| -> u64 { k.trim_start_matches("checkpoint-").split("-e").next().unwrap().parse().unwrap() };
    let newest_of_b = meta_after_b.keys().map(seq).max().unwrap();
    assert!(err.contains(&format!("recovered from checkpoint {newest_of_b} ")), "not B's newest checkpoint:\n{err}");
    assert_same_tree(&tree(&tmp.path().join("out")), &expected, "outputs after a recovery");
}
