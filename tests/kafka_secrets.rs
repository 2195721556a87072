//! A Kafka SASL password is a secret: it reaches the broker and nothing
//! else. A job authenticates (SASL PLAIN) with an inline `password` on its
//! source, a `password_env` on one Kafka output and a `password_file` on
//! another, runs batches with a checkpoint, an event log, `--progress
//! json`, the status page and every log level on; then no file under the
//! checkpoint directory, the event log, the outputs, the stderr log or any
//! page of the status page holds any password (nor its hex or base64
//! forms), while the broker was sent each. The password file is rotated
//! before the recovery: the job is the same job (its hash covers the path,
//! not the contents) and the new password is the one sent.
//!
//! Tansu 0.6 does not complete SASL for a client without its own user
//! store set up, so the test puts a small proxy in front of it: the
//! proxy answers SaslHandshake and SaslAuthenticate itself (accepting
//! PLAIN), records the credentials it was sent, and passes every other
//! request to Tansu unchanged. Tansu advertises the proxy's address, so
//! every connection of the job (bootstrap and partition leaders) goes
//! through it.

use crate::common::*;
use crate::drivers::*;
use crate::kafka::{free_port, Broker};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reads one length-prefixed Kafka frame (None when the peer has gone).
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let len = i32::from_be_bytes(len);
    assert!((0..64 << 20).contains(&len), "a frame of {len} bytes");
    let mut f = vec![0u8; len as usize];
    s.read_exact(&mut f).ok()?;
    Some(f)
}

fn write_frame(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    s.write_all(&f)
}

/// The SASL answer to request `frame` (api key 17 or 36), or None for any
/// other request.
fn sasl_answer(frame: &[u8]) -> Option<Vec<u8>> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let mut r = frame[4..8].to_vec(); // correlation id
    match (key, version) {
        // SaslHandshake v0/v1: no error, mechanisms ["PLAIN"].
        (17, _) => {
            r.extend_from_slice(&0i16.to_be_bytes());
            r.extend_from_slice(&1i32.to_be_bytes());
            r.extend_from_slice(&5i16.to_be_bytes());
            r.extend_from_slice(b"PLAIN");
        }
        // SaslAuthenticate v0/v1: error 0, no message, no bytes (v1: a
        // session lifetime of 0).
        (36, 0 | 1) => {
            r.extend_from_slice(&0i16.to_be_bytes());
            r.extend_from_slice(&(-1i16).to_be_bytes());
            r.extend_from_slice(&0i32.to_be_bytes());
            if version == 1 {
                r.extend_from_slice(&0i64.to_be_bytes());
            }
        }
        // v2 (flexible): header tag buffer, error 0, null compact message,
        // empty compact bytes, lifetime 0, body tag buffer.
        (36, _) => {
            r.push(0);
            r.extend_from_slice(&0i16.to_be_bytes());
            r.push(0);
            r.push(1);
            r.extend_from_slice(&0i64.to_be_bytes());
            r.push(0);
        }
        _ => return None,
    }
    Some(r)
}

/// Serves one client connection: SASL here, the rest relayed to `upstream`
/// one request and one response at a time (Kafka answers in order).
fn relay(mut client: TcpStream, upstream: SocketAddr, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let Ok(mut up) = TcpStream::connect(upstream) else { return };
    while let Some(req) = read_frame(&mut client) {
        if req.len() < 8 {
            return;
        }
        if let Some(answer) = sasl_answer(&req) {
            if i16::from_be_bytes([req[0], req[1]]) == 36 {
                seen.lock().unwrap().push(req.clone());
            }
            if write_frame(&mut client, &answer).is_err() {
                return;
            }
            continue;
        }
        if write_frame(&mut up, &req).is_err() {
            return;
        }
        let Some(resp) = read_frame(&mut up) else { return };
        if write_frame(&mut client, &resp).is_err() {
            return;
        }
    }
}

/// A SASL-answering proxy on `listener` in front of `upstream`; returns
/// the SaslAuthenticate requests it was sent.
fn sasl_proxy(listener: TcpListener, upstream: SocketAddr) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(c) = c else { return };
            let s = s.clone();
            std::thread::spawn(move || relay(c, upstream, s));
        }
    });
    seen
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = ((c[0] as u32) << 16) | ((*c.get(1).unwrap_or(&0) as u32) << 8) | (*c.get(2).unwrap_or(&0) as u32);
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    s
}

/// The forms of `secret` a leak could take: as is, hex, base64.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![secret.as_bytes().to_vec(), hex.into_bytes(), base64(secret.as_bytes()).into_bytes()]
}

/// Every regular file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
    out
}

/// GET `path` on the status page (one request per connection).
fn get(addr: &str, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "GET {path}: {}", text(&raw));
    raw
}

#[test]
fn sasl_passwords_reach_the_broker_and_no_file_log_or_page() {
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let broker = Broker::start_advertising(free_port(), proxy_port);
    let seen = sasl_proxy(proxy, ([127, 0, 0, 1], broker.port).into());
    broker.create("in", 2);
    broker.create("out", 1);
    broker.create("out-file", 1);
    let input = crate::kafka::lines(7, 40);
    broker.produce("in", &input);

    // Distinct, unlikely strings: any occurrence is a leak.
    let inline = "Inl1ne-S3cret-9f2c7a";
    let from_env = "Env-S3cret-41d8b0e6";
    let from_file = "F1le-S3cret-7be2c015";
    let rotated = "R0tated-F1le-S3cret-c3a9";
    let tmp = tempfile::tempdir().unwrap();
    // Relative to the job file's folder (the runs' working directory is
    // another one); a trailing newline, as `echo` leaves, is not part of it.
    std::fs::create_dir(tmp.path().join("secrets")).unwrap();
    let pw_file = tmp.path().join("secrets/kafka.pw");
    std::fs::write(&pw_file, format!("{from_file}\n")).unwrap();
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let proxied = format!("127.0.0.1:{proxy_port}");
    let job = tmp.path().join("secret.toml");
    std::fs::write(
        &job,
        format!(
            "batch_interval = \"1s\"\nclock = \"logical\"\n[modules]\nwordcount = \"{}\"\n\
             [sources.lines]\ntype = \"kafka\"\nbrokers = \"{proxied}\"\ntopics = [\"in\"]\n\
             starting_offsets = \"earliest\"\nmax_rate_per_partition = 10\n\
             [sources.lines.sasl]\nmechanism = \"PLAIN\"\nusername = \"weir-in\"\npassword = \"{inline}\"\n\
             [streams]\nwords = \"lines.flat_map(wordcount.split)\"\npairs = \"words.map(wordcount.pair)\"\n\
             counts = \"pairs.reduce_by_key(wordcount.sum)\"\n\
             [[outputs]]\nstream = \"counts\"\ntype = \"save_as_text_files\"\nprefix = \"out/counts\"\n\
             [[outputs]]\nstream = \"counts\"\ntype = \"kafka\"\nbrokers = \"{proxied}\"\ntopic = \"out\"\n\
             sasl = {{ mechanism = \"PLAIN\", username = \"weir-out\", password_env = \"WEIR_TEST_KAFKA_PW\" }}\n\
             [[outputs]]\nstream = \"counts\"\ntype = \"kafka\"\nbrokers = \"{proxied}\"\ntopic = \"out-file\"\n\
             sasl = {{ mechanism = \"PLAIN\", username = \"weir-file\", password_file = \"secrets/kafka.pw\" }}\n",
            module("wordcount.wasm").display()
        ),
    )
    .unwrap();
    let ckpt = tmp.path().join("ckpt");
    let events = tmp.path().join("events");
    let run = |batches: &str| {
        let mut cmd = weir();
        cmd.current_dir(&cwd)
            .env("WEIR_TEST_KAFKA_PW", from_env)
            .env("WEIR_LOG", "trace")
            .arg("run")
            .arg(&job)
            .args(["--batches", batches, "--progress", "json", "--ui", "127.0.0.1:0", "--checkpoint"])
            .arg(&ckpt)
            .arg("--event-log")
            .arg(&events);
        Driver::spawn(&mut cmd)
    };
    let mut d = run("4");
    let deadline = Instant::now() + Duration::from_secs(90);
    let l = d.wait_for(deadline, "the status page's address", |l| l.contains(" at http://"));
    let ui = l.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    // Pages while it runs: after the second batch.
    let mut batches = 0;
    d.wait_for(deadline, "two batches", |l| {
        batches += usize::from(l.contains("\"records_in\""));
        batches == 2
    });
    let mut pages = Vec::new();
    for p in [
        "/",
        "/job",
        "/sources",
        "/checkpoints",
        "/executors",
        "/metrics",
        "/api/v1/status",
        "/api/v1/batches",
        "/api/v1/streams",
        "/api/v1/sources",
    ] {
        pages.push((format!("GET {p}"), get(&ui, p)));
    }
    let status = d.wait_exit(Duration::from_secs(90), "the job to finish");
    let log1 = d.log();
    assert!(status.success(), "{log1}");
    // A second run recovers from the checkpoint (the password is taken from
    // the job file again, not from anywhere the first run wrote), with the
    // password file rotated meanwhile: the same job, the new password.
    std::fs::write(&pw_file, format!("{rotated}\n")).unwrap();
    let mut d = run("6");
    let status = d.wait_exit(Duration::from_secs(90), "the recovered job to finish");
    let log2 = d.log();
    assert!(status.success(), "{log2}");
    assert!(log2.contains("\"records_in\""), "{log2}");

    // The broker was sent both: the passwords were used.
    let sent = seen.lock().unwrap().clone();
    assert!(sent.iter().any(|f| contains(f, format!("\0weir-in\0{inline}").as_bytes())), "source authenticated");
    assert!(sent.iter().any(|f| contains(f, format!("\0weir-out\0{from_env}").as_bytes())), "output authenticated");
    let file_auth = |pw: &str| sent.iter().any(|f| contains(f, format!("\0weir-file\0{pw}").as_bytes()));
    assert!(file_auth(from_file), "the password file's output authenticated");
    assert!(file_auth(rotated), "the recovery read the rotated password file");
    for pw in [from_file, rotated] {
        assert!(!sent.iter().any(|f| contains(f, format!("{pw}\n").as_bytes())), "the newline was dropped");
    }
    let counted = sum_counts(read_outputs(&tmp.path().join("out"), "counts").values().flatten());
    assert_eq!(counted, native_counts(input.iter().map(String::as_str)), "the job read everything");

    // ...and nothing else holds them.
    let mut places = files(&ckpt);
    assert!(places.iter().any(|(p, _)| p.contains("metadata")), "checkpoints were written: {places:?}");
    places.extend(files(&events));
    places.extend(files(&tmp.path().join("out")));
    places.push(("stderr of the first run".into(), log1.into_bytes()));
    places.push(("stderr of the recovery".into(), log2.into_bytes()));
    places.extend(pages);
    assert!(places.len() > 10, "{places:?}");
    for (what, bytes) in &places {
        for secret in [inline, from_env, from_file, rotated] {
            for form in forms(secret) {
                assert!(!contains(bytes, &form), "{what} holds a password ({}):\n{}", text(&form), text(bytes));
            }
        }
    }
}
