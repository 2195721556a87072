//! Kafka over mutual TLS against a TLS server Weir did not write: OpenSSL,
//! through a small Python proxy (`tests/tls_proxy.py`) in front of Tansu
//! that terminates TLS, requires a client certificate from the test's CA
//! and relays the bytes to the broker (Tansu 0.6 cannot serve TLS itself:
//! docs/sources.md). Tansu advertises the proxy's port, so every connection
//! a client makes (bootstrap and partition leader) is TLS.
//!
//! The certificates are made here with the `openssl` command: a CA, the
//! server's certificate for 127.0.0.1, a client certificate for Weir and
//! one for kafka-python (a third-party TLS client, which produces the input
//! and reads the output back through the same proxy), and a second CA that
//! signs a stranger's certificate. Then: a WordCount job reads the topic and
//! writes its counts to a file and to a Kafka topic, both over TLS, and the
//! counts are exact; a job presenting the stranger's certificate, and a job
//! that does not trust the server's CA, each fail with an error naming the
//! broker, and the proxy refused the stranger's handshake.

use crate::common::*;
use crate::kafka::{client_at, free_port, lines, Broker};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(Command::new("openssl").current_dir(dir).args(args));
    assert!(out.status.success(), "openssl {args:?} (scripts/test.sh installs it): {}", text(&out.stderr));
}

/// A self-signed CA `<name>.pem` / `<name>.key` in `dir`.
fn ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
}

/// A certificate `<name>.pem` / `<name>.key` for `cn`, signed by CA `ca`,
/// for `usage` (`serverAuth` with 127.0.0.1 as its address, or `clientAuth`).
fn leaf(dir: &Path, ca: &str, name: &str, cn: &str, usage: &str) {
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &csr,
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &ext,
        ],
    );
}

/// tests/tls_proxy.py on `port` in front of the broker; its lines (one per
/// handshake) arrive on `log`. Killed when dropped.
struct TlsProxy {
    child: Child,
    log: Receiver<String>,
    seen: Vec<String>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsProxy {
    fn start(port: u16, upstream: u16, certs: &Path) -> TlsProxy {
        let c = |f: &str| certs.join(f).display().to_string();
        let mut child = Command::new("python3")
            .arg(repo().join("tests/tls_proxy.py"))
            .args([port.to_string(), upstream.to_string(), c("server.pem"), c("server.key"), c("ca.pem")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let out = child.stdout.take().unwrap();
        let (tx, log) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = TlsProxy { child, log, seen: Vec::new() };
        p.wait_for("ready", Duration::from_secs(30));
        p
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("the TLS proxy said no `{prefix}` line ({e}); so far: {:?}", self.seen));
            self.seen.push(l.clone());
            if l.starts_with(prefix) {
                return l;
            }
        }
    }
}

/// The job: WordCount over topic `in` with the source's TLS settings
/// `tls` (a TOML inline table), counts to `out/counts` and to topic `out`
/// over the same TLS.
fn job(dir: &Path, name: &str, brokers: &str, tls: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "batch_interval = \"1s\"\nclock = \"logical\"\n[modules]\nwordcount = \"{}\"\n\
             [sources.lines]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"in\"]\n\
             starting_offsets = \"earliest\"\nbroker_timeout_ms = 60000\ntls = {tls}\n\
             [streams]\nwords = \"lines.flat_map(wordcount.split)\"\npairs = \"words.map(wordcount.pair)\"\n\
             counts = \"pairs.reduce_by_key(wordcount.sum)\"\n\
             [[outputs]]\nstream = \"counts\"\ntype = \"save_as_text_files\"\nprefix = \"out-{name}/counts\"\n\
             [[outputs]]\nstream = \"counts\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"out\"\ntls = {tls}\n",
            module("wordcount.wasm").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn kafka_over_mutual_tls_with_openssl_counts_exactly_and_refuses_untrusted_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    ca(&certs, "ca");
    ca(&certs, "other-ca");
    leaf(&certs, "ca", "server", "127.0.0.1", "serverAuth");
    leaf(&certs, "ca", "client", "weir-client", "clientAuth");
    leaf(&certs, "ca", "python", "python-client", "clientAuth");
    leaf(&certs, "other-ca", "stranger", "stranger", "clientAuth");

    let proxy_port = free_port();
    let broker = Broker::start_advertising(free_port(), proxy_port);
    let mut proxy = TlsProxy::start(proxy_port, broker.port, &certs);
    let tls_addr = format!("127.0.0.1:{proxy_port}");
    let (ca_pem, py_pem, py_key) = (certs.join("ca.pem"), certs.join("python.pem"), certs.join("python.key"));
    let py_tls = [
        ("WEIR_TEST_KAFKA_CA", ca_pem.as_path()),
        ("WEIR_TEST_KAFKA_CERT", py_pem.as_path()),
        ("WEIR_TEST_KAFKA_KEY", py_key.as_path()),
    ];
    let python =
        |args: &[&str], stdin: &str| client_at(&tls_addr, &py_tls, args, stdin).unwrap_or_else(|e| panic!("{e}"));
    // Every client goes through the proxy (the broker advertises it).
    python(&["create", "in", "2"], "");
    python(&["create", "out", "1"], "");
    let input = lines(77, 200);
    let n = python(&["produce", "in"], &(input.join("\n") + "\n"));
    assert_eq!(n.trim(), "200", "kafka-python produced every line over TLS");
    assert_eq!(proxy.wait_for("ok ", Duration::from_secs(5)), "ok python-client");

    // Relative paths: under the job file's folder.
    let good = "{ ca_file = \"certs/ca.pem\", cert_file = \"certs/client.pem\", key_file = \"certs/client.key\" }";
    let j = job(tmp.path(), "good", &tls_addr, good);
    let out = run(weir().arg("run").arg(&j).args(["--batches", "2"]).stdout(Stdio::null()).stderr(Stdio::piped()));
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    let files = read_outputs(&tmp.path().join("out-good"), "counts");
    let got = sum_counts(files.values().flatten());
    assert_eq!(got, native_counts(input.iter().map(String::as_str)), "exact counts read over TLS");
    assert_eq!(proxy.wait_for("ok weir", Duration::from_secs(5)), "ok weir-client", "Weir presented its certificate");

    // What the Kafka output wrote over TLS, read back by kafka-python over
    // TLS (a marker moves Tansu's end past the output's last batch).
    let mut want: Vec<String> = files.values().flatten().cloned().collect();
    python(&["produce", "out"], "end-marker\n");
    let consumed = python(&["consume", "out", &(want.len() + 1).to_string()], "");
    let mut got: Vec<String> = consumed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].as_str().unwrap().to_string())
        .filter(|v| v != "end-marker")
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the Kafka output's records over TLS");

    // A job with wrong TLS settings fails at once (not retried for the 60 s
    // of broker_timeout_ms), naming the broker and the reason, and runs
    // nothing.
    let refused = |name: &str, tls: &str, reason: &str| {
        let j = job(tmp.path(), name, &tls_addr, tls);
        let started = Instant::now();
        let out = run(weir().arg("run").arg(&j).args(["--batches", "1"]).stdout(Stdio::null()).stderr(Stdio::piped()));
        let log = text(&out.stderr);
        assert!(!out.status.success(), "{name}: the handshake was accepted:\n{log}");
        assert!(started.elapsed() < Duration::from_secs(20), "{name}: failed at once: {log}");
        assert!(log.contains(&tls_addr), "{name}: names the broker: {log}");
        assert!(log.contains(reason), "{name}: says why ({reason}): {log}");
        assert!(read_outputs(&tmp.path().join(format!("out-{name}")), "counts").is_empty(), "{name}: nothing ran");
    };
    // A client certificate from another CA: the server refuses the handshake.
    let stranger =
        "{ ca_file = \"certs/ca.pem\", cert_file = \"certs/stranger.pem\", key_file = \"certs/stranger.key\" }";
    refused("stranger", stranger, "received fatal alert");
    let why = proxy.wait_for("refused", Duration::from_secs(5));
    assert!(why.to_lowercase().contains("certificate") || why.contains("unknown ca"), "{why}");
    // A job that trusts another CA refuses the server's certificate.
    let distrust =
        "{ ca_file = \"certs/other-ca.pem\", cert_file = \"certs/client.pem\", key_file = \"certs/client.key\" }";
    refused("distrust", distrust, "invalid peer certificate");

    assert!(!proxy.seen.iter().any(|l| l == "ok stranger"), "{:?}", proxy.seen);
}
