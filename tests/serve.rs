//! `weir serve` end to end: the real binary as the server and as its
//! client (`weir submit`, `jobs`, `status`, `stop`, `logs`), hostile
//! requests as raw bytes on a TCP socket. Tokens, paths out of a tenant's
//! root, ceilings, job floods, oversized and slow uploads are refused; an
//! honest stateful job writes byte-identical outputs to `weir run`'s beside
//! a hostile tenant's infinite loop, and again after the server is
//! SIGKILLed mid-run and restarted.

use crate::common::*;
use crate::drivers::*;
use sha2::Digest;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ACME: &str = "acme-token-0123456789";
const EVIL: &str = "evil-token-9876543210";
const ADMIN: &str = "admin-token-5555555555";

fn sha(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A server directory: serve.toml with tenants acme (honest) and evil.
fn write_config(dir: &Path) -> PathBuf {
    let cfg = format!(
        r#"listen = "127.0.0.1:0"
state_dir = "state"
master = "local[2]"
max_upload_bytes = 1_000_000
read_timeout_ms = 1000
admin_token_sha256 = "{}"

[tenants.acme]
token_sha256 = "{}"
max_jobs = 2
max_slots = 2

[tenants.acme.limits]
fuel_per_call = 5_000_000_000
deadline_ms = 30000
memory_bytes = 268_435_456

[tenants.evil]
token_sha256 = "{}"
max_jobs = 2
max_slots = 1
allowed_hosts = ["kafka.local"]
kafka_topic_prefixes = ["evil."]
memory_quota_bytes = 40_000_000

[tenants.evil.limits]
fuel_per_call = 50_000_000
deadline_ms = 2000
memory_bytes = 16_777_216
"#,
        sha(ADMIN),
        sha(ACME),
        sha(EVIL)
    );
    let p = dir.join("serve.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// `weir serve` started, and the address it serves on.
fn start_server(config: &Path) -> (Driver, String) {
    start_server_with(weir(), config)
}

/// [`start_server`] from a prepared `weir` command (an S3 server's environment).
fn start_server_with(mut weir: Command, config: &Path) -> (Driver, String) {
    let mut d = Driver::spawn(weir.args(["serve", "--config", config.to_str().unwrap()]));
    let line = d.wait_for(Instant::now() + Duration::from_secs(120), "the server to listen", |l| {
        l.starts_with("weir: serving")
    });
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    (d, addr)
}

/// A client command against `addr` with `token` (through WEIR_TOKEN).
fn client(addr: &str, token: &str, args: &[&str]) -> std::process::Output {
    let mut c: Command = weir();
    c.args(args).args(["--server", &format!("http://{addr}")]).env("WEIR_TOKEN", token);
    run(&mut c)
}

/// One raw HTTP/1.1 request; the status and the body. `body_len` is the
/// Content-Length announced; only `body` is sent.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8], body_len: usize) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {body_len}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn status_json(addr: &str, token: &str, id: &str) -> serde_json::Value {
    let (code, body) = http(addr, "GET", &format!("/api/v1/jobs/{id}"), Some(token), b"", 0);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls a job's status until `pred` holds (panics with the server's log after `secs`).
fn wait_status(
    d: &Driver,
    addr: &str,
    token: &str,
    id: &str,
    secs: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = status_json(addr, token, id);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "job {id} never got there: {v}\nserver log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn submit(addr: &str, token: &str, job: &Path) -> Result<String, String> {
    let out = client(addr, token, &["submit", job.to_str().unwrap()]);
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(text(&out.stderr))
    }
}

/// A job of evil's that never ends (a wall-clock generator) and runs `udf`.
fn generator_job(dir: &Path, name: &str, module: &Path, udf: &str, extra: &str) -> PathBuf {
    let job = format!(
        "batch_interval = \"500ms\"\n{extra}\n[modules]\nm = \"{}\"\n[sources.lines]\ntype = \"generator\"\n\
         lines_per_batch = 20\n[streams]\nout = \"lines.{udf}\"\n[[outputs]]\nstream = \"out\"\n\
         type = \"save_as_text_files\"\nprefix = \"out/x\"\n",
        module.display()
    );
    let p = dir.join(name);
    std::fs::write(&p, job).unwrap();
    p
}

#[test]
fn serve_refuses_bad_tokens_escapes_ceilings_floods_oversized_and_slow_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let (mut server, addr) = start_server(&config);

    // A second server on the same state directory is refused.
    let second = run(weir().args(["serve", "--config", config.to_str().unwrap()]));
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("another weir serve holds the state directory"), "{}", text(&second.stderr));

    // A non-loopback address without TLS is refused unless --insecure.
    let open_cfg = tmp.path().join("open.toml");
    std::fs::write(&open_cfg, "listen = \"0.0.0.0:0\"\nstate_dir = \"open-state\"\n").unwrap();
    let open = run(weir().args(["serve", "--config", open_cfg.to_str().unwrap()]));
    assert!(!open.status.success());
    assert!(text(&open.stderr).contains("not a loopback address"), "{}", text(&open.stderr));

    // Tokens: none, wrong, or right; /healthz needs none.
    assert_eq!(http(&addr, "GET", "/healthz", None, b"", 0).0, 200);
    for path in ["/api/v1/jobs", "/metrics", "/api/openapi.json"] {
        assert_eq!(http(&addr, "GET", path, None, b"", 0).0, 401, "{path} without a token");
        assert_eq!(http(&addr, "GET", path, Some("guess"), b"", 0).0, 401, "{path} with a wrong token");
    }
    let (code, api) = http(&addr, "GET", "/api/openapi.json", Some(ACME), b"", 0);
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert!(api["paths"]["/api/v1/jobs/{id}/stop"]["post"].is_object(), "{api}");
    let no_token = run(weir().args(["jobs", "--server", &format!("http://{addr}")]).env_remove("WEIR_TOKEN"));
    assert!(text(&no_token.stderr).contains("no token"), "{}", text(&no_token.stderr));

    // Paths out of the tenant's root, a ceiling exceeded, print to the server's stdout.
    let spin = module("hostile/infinite_loop.wat");
    let escapes = [
        ("[sources.lines]\ntype = \"directory\"\npath = \"../acme/in\"", "leaves the tenant's root"),
        ("[sources.lines]\ntype = \"batches\"\npath = \"/etc/passwd\"", "absolute path"),
        ("[sources.lines]\ntype = \"socket\"\nhost = \"10.1.2.3\"\nport = 9999", "may not reach"),
        // Kafka: an allowed broker, but a topic outside evil's prefixes.
        (
            "[sources.lines]\ntype = \"kafka\"\nbrokers = \"kafka.local:9092\"\ntopics = [\"evil.in\", \"acme.orders\"]",
            "topic \"acme.orders\": tenant evil may use only topics starting with one of [\"evil.\"]",
        ),
    ];
    for (source, want) in escapes {
        let job = format!(
            "batch_interval = \"1s\"\n[modules]\nm = \"{}\"\n{source}\n[streams]\nout = \"lines.map(m.identity)\"\n\
             [[outputs]]\nstream = \"out\"\ntype = \"save_as_text_files\"\nprefix = \"out/x\"\n",
            spin.display()
        );
        let p = tmp.path().join("escape.toml");
        std::fs::write(&p, job).unwrap();
        let e = submit(&addr, EVIL, &p).unwrap_err();
        assert!(e.contains("403") && e.contains(want), "{source}: {e}");
    }
    let greedy =
        generator_job(tmp.path(), "greedy.toml", &spin, "map(m.identity)", "[limits]\nfuel_per_call = 5_000_000_000");
    let e = submit(&addr, EVIL, &greedy).unwrap_err();
    assert!(e.contains("ceiling fuel_per_call = 50000000"), "{e}");
    let out_escape =
        generator_job(tmp.path(), "outesc.toml", &spin, "map(m.identity)", "").to_string_lossy().into_owned();
    let text_job =
        std::fs::read_to_string(&out_escape).unwrap().replace("prefix = \"out/x\"", "prefix = \"../../acme/x\"");
    std::fs::write(&out_escape, text_job).unwrap();
    assert!(submit(&addr, EVIL, Path::new(&out_escape)).unwrap_err().contains("`..`"));
    let kafka_sink = std::fs::read_to_string(&out_escape).unwrap().replace(
        "type = \"save_as_text_files\"\nprefix = \"../../acme/x\"",
        "type = \"kafka\"\nbrokers = \"kafka.local:9092\"\ntopic = \"acme.results\"",
    );
    std::fs::write(&out_escape, kafka_sink).unwrap();
    let e = submit(&addr, EVIL, Path::new(&out_escape)).unwrap_err();
    assert!(
        e.contains("403") && e.contains("outputs[0].topic: topic \"acme.results\"") && e.contains("[\"evil.\"]"),
        "{e}"
    );

    // A module hash evil never uploaded (acme did).
    let wc = module("wordcount.wasm");
    let acme_job = generator_job(tmp.path(), "acme.toml", &wc, "flat_map(m.split)", "");
    let acme_id = submit(&addr, ACME, &acme_job).unwrap();
    let wc_hash: String =
        sha2::Sha256::digest(std::fs::read(&wc).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    let body = serde_json::json!({
        "job": std::fs::read_to_string(&acme_job).unwrap(),
        "modules": { "m": wc_hash },
    })
    .to_string();
    let (code, msg) = http(&addr, "POST", "/api/v1/jobs", Some(EVIL), body.as_bytes(), body.len());
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("was not uploaded by tenant evil"), "{msg}");

    // Oversized: the server answers 413 from the announced length alone.
    let (code, _) = http(&addr, "PUT", &format!("/api/v1/modules/{}", sha("x")), Some(EVIL), b"", 5_000_000);
    assert_eq!(code, 413);
    // Malformed: bytes that do not hash to the name.
    let (code, msg) = http(&addr, "PUT", &format!("/api/v1/modules/{}", sha("x")), Some(EVIL), b"y", 1);
    assert_eq!(code, 400, "{msg}");

    // Slow clients: half a request line, or headers with a body that never
    // comes, are cut off (read_timeout_ms = 1000), not waited for.
    for partial in [
        "GET /api/v1/jo".to_string(),
        format!(
            "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {EVIL}\r\nContent-Length: 100\r\n\r\n{{"
        ),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(partial.as_bytes()).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "the server kept a stuck client for 20 s: {r:?}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    // The job quota: evil's two jobs run, the flood after them is refused.
    let mut evil_ids = Vec::new();
    for i in 0..2 {
        let j = generator_job(tmp.path(), &format!("evil{i}.toml"), &spin, "map(m.identity)", "");
        evil_ids.push(submit(&addr, EVIL, &j).unwrap());
    }
    for _ in 0..5 {
        let e = submit(&addr, EVIL, &tmp.path().join("evil0.toml")).unwrap_err();
        assert!(e.contains("429") && e.contains("max_jobs = 2"), "{e}");
    }
    let listed = text(&client(&addr, EVIL, &["jobs"]).stdout);
    assert_eq!(listed.lines().count(), 3, "a header and evil's two jobs:\n{listed}");
    assert!(!listed.contains(&acme_id), "{listed}");

    // Another tenant's job does not exist for evil.
    for args in [vec!["status", acme_id.as_str()], vec!["stop", acme_id.as_str()], vec!["logs", acme_id.as_str()]] {
        let o = client(&addr, EVIL, &args);
        assert!(!o.status.success() && text(&o.stderr).contains("404"), "{args:?}: {}", text(&o.stderr));
    }
    assert_eq!(status_json(&addr, ACME, &acme_id)["state"], "running");

    // Stops: graceful and now; the slot is free again afterwards.
    assert!(client(&addr, EVIL, &["stop", &evil_ids[0]]).status.success());
    assert!(client(&addr, EVIL, &["stop", &evil_ids[1], "--now"]).status.success());
    for id in &evil_ids {
        wait_status(&server, &addr, EVIL, id, 60, |v| v["state"] == "stopped");
    }
    let again = submit(&addr, EVIL, &tmp.path().join("evil0.toml")).unwrap();
    assert!(client(&addr, EVIL, &["stop", &again, "--now"]).status.success());

    // /metrics: evil sees its own series only.
    let (code, m) = http(&addr, "GET", "/metrics", Some(EVIL), b"", 0);
    assert_eq!(code, 200);
    assert!(m.contains("weir_serve_submissions_refused_total{tenant=\"evil\",reason=\"max_jobs\"} 5"), "{m}");
    assert!(!m.contains("acme"), "{m}");
    assert!(!server.log().contains(ACME) && !server.log().contains(EVIL), "a token in the log");

    // Token rotation without a restart: the server re-reads serve.toml.
    let rotated = std::fs::read_to_string(&config).unwrap().replace(&sha(ACME), &sha("acme-rotated-token"));
    std::fs::write(&config, rotated).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&addr, "GET", "/api/v1/jobs", Some(ACME), b"", 0).0 != 401 {
        assert!(Instant::now() < deadline, "the old token still works:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(&addr, "GET", "/api/v1/jobs", Some("acme-rotated-token"), b"", 0).0, 200);
    server.kill();
}

/// A job of evil's reading Kafka (an allowed broker and topic) with SASL
/// `sasl` (the fields of `[sources.lines.sasl]`).
fn kafka_sasl_job(dir: &Path, name: &str, sasl: &str) -> PathBuf {
    let job = format!(
        "batch_interval = \"1s\"\n[modules]\nm = \"{}\"\n[sources.lines]\ntype = \"kafka\"\n\
         brokers = \"kafka.local:9092\"\ntopics = [\"evil.in\"]\nbroker_timeout_ms = 1000\n\
         [sources.lines.sasl]\nmechanism = \"PLAIN\"\nusername = \"evil\"\n{sasl}\n\
         [streams]\nout = \"lines.map(m.identity)\"\n[[outputs]]\nstream = \"out\"\n\
         type = \"save_as_text_files\"\nprefix = \"out/x\"\n",
        module("hostile/infinite_loop.wat").display()
    );
    let p = dir.join(name);
    std::fs::write(&p, job).unwrap();
    p
}

#[test]
fn serve_confines_kafka_password_files_to_the_root_and_keeps_inline_passwords_out_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let evil_root = tmp.path().join("state/tenants/evil");
    let acme_root = tmp.path().join("state/tenants/acme");
    std::fs::create_dir_all(evil_root.join("secrets")).unwrap();
    std::fs::create_dir_all(&acme_root).unwrap();
    std::fs::write(acme_root.join("kafka.pw"), "acme-password\n").unwrap();
    std::os::unix::fs::symlink(acme_root.join("kafka.pw"), evil_root.join("secrets/stolen.pw")).unwrap();
    std::fs::write(evil_root.join("secrets/kafka.pw"), "Evil-F1le-Passw0rd\n").unwrap();
    let (mut server, addr) = start_server(&config);

    // A password file outside evil's root: absolute, `..`, a symlink out.
    for (file, says) in [
        ("/etc/passwd", "absolute path"),
        ("../acme/kafka.pw", "`..`"),
        ("secrets/stolen.pw", "resolves outside the tenant's root (a symlink)"),
    ] {
        let job = kafka_sasl_job(tmp.path(), "pwfile.toml", &format!("password_file = \"{file}\""));
        let e = submit(&addr, EVIL, &job).unwrap_err();
        assert!(e.contains("403") && e.contains("sources.lines.sasl.password_file") && e.contains(says), "{file}: {e}");
    }
    // The server's environment, and an inline password: refused, saying
    // to use a password file.
    let env = kafka_sasl_job(tmp.path(), "env.toml", "password_env = \"HOME\"");
    let e = submit(&addr, EVIL, &env).unwrap_err();
    assert!(e.contains("403") && e.contains("sources.lines.sasl.password_env") && e.contains("password_file"), "{e}");
    let inline = kafka_sasl_job(tmp.path(), "inline.toml", "password = \"Inl1ne-Evil-Passw0rd\"");
    let e = submit(&addr, EVIL, &inline).unwrap_err();
    assert!(e.contains("403") && e.contains("sources.lines.sasl.password:") && e.contains("`password_file`"), "{e}");
    assert!(!e.contains("Inl1ne-Evil"), "the refusal does not echo the password: {e}");
    // Nothing of the refused jobs was kept.
    assert!(!evil_root.join("jobs").exists() || std::fs::read_dir(evil_root.join("jobs")).unwrap().count() == 0);

    // A password file inside the root is accepted; the job file the server
    // keeps names it (absolute) and holds no password; it is 0600.
    let good = kafka_sasl_job(tmp.path(), "good.toml", "password_file = \"secrets/kafka.pw\"");
    let id = submit(&addr, EVIL, &good).unwrap();
    let kept = evil_root.join("jobs").join(&id).join("job.toml");
    let body = std::fs::read_to_string(&kept).unwrap();
    let want = evil_root.canonicalize().unwrap().join("secrets/kafka.pw");
    assert!(body.contains(&format!("password_file = \"{}\"", want.display())), "{body}");
    assert!(!body.contains("Evil-F1le"), "{body}");
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    // (It may have failed already: kafka.local does not resolve.)
    let _ = client(&addr, EVIL, &["stop", &id, "--now"]);
    wait_status(&server, &addr, EVIL, &id, 90, |v| v["state"] != "running" && v["state"] != "stopping");

    // The operator allows inline passwords (serve.toml is re-read): the job
    // file then holds the password, readable by the server's user only.
    let allowed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("read_timeout_ms = 1000\n", "read_timeout_ms = 1000\nallow_inline_kafka_passwords = true\n");
    std::fs::write(&config, allowed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        match submit(&addr, EVIL, &inline) {
            Ok(id) => break id,
            Err(e) => {
                assert!(e.contains("sources.lines.sasl.password:"), "{e}");
                assert!(Instant::now() < deadline, "serve.toml was not re-read:\n{}", server.log());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let kept = evil_root.join("jobs").join(&id).join("job.toml");
    assert!(std::fs::read_to_string(&kept).unwrap().contains("Inl1ne-Evil-Passw0rd"));
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    let registry = tmp.path().join("state/registry");
    assert_eq!(std::fs::metadata(&registry).unwrap().permissions().mode() & 0o777, 0o700);
    let _ = client(&addr, EVIL, &["stop", &id, "--now"]);
    // The server's log holds neither password.
    let log = server.log();
    assert!(!log.contains("Inl1ne-Evil") && !log.contains("Evil-F1le"), "{log}");
    server.kill();
}

/// Everything a job wrote under `out/x-*` (its `save_as_text_files` prefix
/// `out/x`), as one string.
fn job_output(root: &Path, id: &str) -> String {
    read_outputs(&root.join("jobs").join(id).join("out/out"), "x")
        .into_values()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n")
}

/// A directory source's path is checked at submission, but the directory
/// is read for as long as the job runs: a symlink the tenant puts there
/// later (to another tenant's file) is refused when the file is opened,
/// with a warning in the job's log, while a symlink within the root and
/// plain files are read.
#[test]
fn serve_reads_a_directory_source_only_inside_the_tenant_root_whatever_is_linked_in_later() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let evil_root = tmp.path().join("state/tenants/evil");
    let acme_root = tmp.path().join("state/tenants/acme");
    std::fs::create_dir_all(evil_root.join("in")).unwrap();
    std::fs::create_dir_all(&acme_root).unwrap();
    std::fs::write(evil_root.join("in/a"), "evil-line-1\n").unwrap();
    let (mut server, addr) = start_server(&config);
    let job = tmp.path().join("dir.toml");
    std::fs::write(
        &job,
        "batch_interval = \"200ms\"\n[sources.lines]\ntype = \"directory\"\npath = \"in\"\n\
         [[outputs]]\nstream = \"lines\"\ntype = \"save_as_text_files\"\nprefix = \"out/x\"\n",
    )
    .unwrap();
    let id = submit(&addr, EVIL, &job).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !job_output(&evil_root, &id).contains("evil-line-1") {
        assert!(Instant::now() < deadline, "the first file was not read:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Written now, so their age makes them new files for the next batches.
    std::fs::write(acme_root.join("secret.txt"), "acme-secret-data\n").unwrap();
    std::fs::write(evil_root.join("inside.txt"), "evil-inside-line\n").unwrap();
    std::os::unix::fs::symlink(acme_root.join("secret.txt"), evil_root.join("in/b-out")).unwrap();
    std::os::unix::fs::symlink(evil_root.join("inside.txt"), evil_root.join("in/c-in")).unwrap();
    std::fs::write(evil_root.join("in/d"), "evil-line-2\n").unwrap();
    let logs = || text(&client(&addr, EVIL, &["logs", &id]).stdout);
    loop {
        let out = job_output(&evil_root, &id);
        if out.contains("evil-line-2") && out.contains("evil-inside-line") && logs().contains("b-out") {
            break;
        }
        assert!(Instant::now() < deadline, "the later files were not read or refused:\n{out}\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = logs();
    assert!(log.contains("b-out: leads to") && log.contains("outside the source's root"), "{log}");
    assert!(!job_output(&evil_root, &id).contains("acme-secret"), "another tenant's file was read");
    let _ = client(&addr, EVIL, &["stop", &id, "--now"]);
    server.kill();
}

/// Evil's long-running job over its `batches` file `in.jsonl` (2000
/// batches of `evil-line`), writing under `out/x`; the server, its address, the
/// roots of evil and acme and the job's id, once the job has written.
fn running_batches_job(tmp: &Path) -> (Driver, String, PathBuf, PathBuf, String) {
    let config = write_config(tmp);
    let evil_root = tmp.join("state/tenants/evil");
    let acme_root = tmp.join("state/tenants/acme");
    std::fs::create_dir_all(&evil_root).unwrap();
    std::fs::create_dir_all(&acme_root).unwrap();
    // Enough batches to still be running when the server is killed.
    std::fs::write(evil_root.join("in.jsonl"), "[\"evil-line\"]\n".repeat(2000)).unwrap();
    let (server, addr) = start_server(&config);
    let job = tmp.join("batches.toml");
    std::fs::write(
        &job,
        "batch_interval = \"200ms\"\n[sources.lines]\ntype = \"batches\"\npath = \"in.jsonl\"\n\
         [[outputs]]\nstream = \"lines\"\ntype = \"save_as_text_files\"\nprefix = \"out/x\"\n",
    )
    .unwrap();
    let id = submit(&addr, EVIL, &job).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !job_output(&evil_root, &id).contains("evil-line") {
        assert!(Instant::now() < deadline, "the job did not run:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr, evil_root, acme_root, id)
}

/// Files a job names are read again when a restarted server reloads it:
/// a `batches` file checked at submission and swapped afterwards for a
/// symlink to another tenant's file is refused on the reload (the job
/// fails, naming the file), not read into the job's outputs.
#[test]
fn serve_refuses_a_job_file_swapped_for_a_symlink_out_of_the_root_when_it_reloads_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, _, evil_root, acme_root, id) = running_batches_job(tmp.path());
    std::fs::write(acme_root.join("secret.jsonl"), "[\"acme-secret-data\"]\n".repeat(2000)).unwrap();
    server.kill();
    std::fs::remove_file(evil_root.join("in.jsonl")).unwrap();
    std::os::unix::fs::symlink(acme_root.join("secret.jsonl"), evil_root.join("in.jsonl")).unwrap();
    let (mut server, addr) = start_server(&tmp.path().join("serve.toml"));
    let v = wait_status(&server, &addr, EVIL, &id, 60, |v| v["state"] == "failed");
    let why = v["message"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("in.jsonl") && why.contains("outside"), "{v}");
    assert!(!job_output(&evil_root, &id).contains("acme-secret"), "another tenant's file was read");
    server.kill();
}

/// A job's output directory swapped for a symlink out of the root while
/// the server was down: the reloaded job fails naming it, and writes
/// nothing where the link leads.
#[test]
fn serve_refuses_to_write_through_an_output_directory_swapped_for_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, _, evil_root, acme_root, id) = running_batches_job(tmp.path());
    server.kill();
    let out = evil_root.join("jobs").join(&id).join("out");
    std::fs::rename(&out, evil_root.join("old-out")).unwrap();
    std::os::unix::fs::symlink(&acme_root, &out).unwrap();
    let (mut server, addr) = start_server(&tmp.path().join("serve.toml"));
    let v = wait_status(&server, &addr, EVIL, &id, 60, |v| v["state"] == "failed");
    let why = v["message"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("outside the tenant's root") && why.contains("not written"), "{v}");
    assert_eq!(std::fs::read_dir(&acme_root).unwrap().count(), 0, "nothing was written in acme's root");
    server.kill();
}

/// The same swap while the job runs: its next batches fail, naming the
/// link, and nothing is written through it into acme's root.
#[test]
fn serve_refuses_to_write_through_an_output_directory_swapped_for_a_symlink_while_the_job_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, addr, evil_root, acme_root, id) = running_batches_job(tmp.path());
    let out = evil_root.join("jobs").join(&id).join("out");
    // A batch may recreate `out` between the rename and the link: again.
    let mut moved = 0;
    loop {
        std::fs::rename(&out, evil_root.join(format!("old-out-{moved}"))).unwrap();
        moved += 1;
        if std::os::unix::fs::symlink(&acme_root, &out).is_ok() {
            break;
        }
    }
    let v = wait_status(&server, &addr, EVIL, &id, 60, |v| {
        v["progress"]["last_error"].as_str().is_some_and(|e| e.contains("outside the tenant's root"))
    });
    let why = v["progress"]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains(&out.display().to_string()) && why.contains("not written"), "{v}");
    assert!(client(&addr, EVIL, &["stop", &id, "--now"]).status.success());
    wait_status(&server, &addr, EVIL, &id, 60, |v| v["state"] != "running");
    assert_eq!(std::fs::read_dir(&acme_root).unwrap().count(), 0, "nothing was written in acme's root");
    server.kill();
}

/// The job's checkpoint directory swapped while the job runs for a symlink
/// to a look-alike in another tenant's root: its checkpoint writes fail,
/// naming where the link leads, and nothing is written through it; the job
/// goes on (a failed checkpoint fails no batch).
#[test]
fn serve_refuses_to_write_checkpoints_through_a_checkpoint_directory_swapped_for_a_symlink_while_the_job_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, addr, evil_root, acme_root, id) = running_batches_job(tmp.path());
    // Where the link leads looks like a checkpoint directory, so a write
    // that followed it would land.
    let target = acme_root.join("data");
    for d in ["metadata", "state", "wal"] {
        std::fs::create_dir_all(target.join(d)).unwrap();
    }
    let ckpt = evil_root.join("jobs").join(&id).join("checkpoint");
    std::fs::rename(&ckpt, evil_root.join("old-checkpoint")).unwrap();
    std::os::unix::fs::symlink(&target, &ckpt).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let logs = loop {
        let logs = text(&client(&addr, EVIL, &["logs", &id]).stdout);
        if logs.contains("checkpoint failed") && logs.contains("outside") {
            break logs;
        }
        assert!(Instant::now() < deadline, "no checkpoint refused:\n{logs}\nserver:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(logs.contains(&target.canonicalize().unwrap().display().to_string()), "{logs}");
    acme_goes_on_as(&server, &addr, EVIL, &id);
    assert!(client(&addr, EVIL, &["stop", &id, "--now"]).status.success());
    wait_status(&server, &addr, EVIL, &id, 60, |v| v["state"] != "running");
    let written = tree(&target);
    assert!(written.is_empty(), "written through the link into acme's root: {:?}", written.keys());
    server.kill();
}

#[test]
fn serve_outputs_match_weir_run_beside_a_hostile_tenant_and_after_a_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    // The reference: the same stateful job under `weir run`.
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let job = stateful_job(&reference, 150);
    let out = run(weir().args(["run", job.to_str().unwrap(), "--checkpoint"]).arg(reference.join("ckpt")).arg("-q"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = tree(&reference.join("out"));
    assert!(want.len() > 100, "{} files", want.len());

    // The tenant's copy: its input in its root, the job file beside it.
    let root = tmp.path().join("state/tenants/acme");
    std::fs::create_dir_all(&root).unwrap();
    let acme_job = stateful_job(&root, 150);

    let (mut server, addr) = start_server(&config);
    // The hostile tenant: an infinite loop in every call, and a memory bomb.
    let spin = generator_job(tmp.path(), "spin.toml", &module("hostile/infinite_loop.wat"), "map(m.spin)", "");
    let spin_id = submit(&addr, EVIL, &spin).unwrap();
    let bomb = generator_job(tmp.path(), "bomb.toml", &module("hostile/memory_bomb.wat"), "map(m.grow)", "");
    let bomb_id = submit(&addr, EVIL, &bomb).unwrap();
    // The bomb is stopped (after a batch) before the kill: it stays stopped.
    wait_status(&server, &addr, EVIL, &bomb_id, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(1));
    assert!(client(&addr, EVIL, &["stop", &bomb_id]).status.success());
    wait_status(&server, &addr, EVIL, &bomb_id, 120, |v| v["state"] == "stopped");

    let id = submit(&addr, ACME, &acme_job).unwrap();
    let before =
        wait_status(&server, &addr, ACME, &id, 120, |v| v["progress"]["batches_completed"].as_u64().unwrap_or(0) >= 10);
    assert_eq!(before["state"], "running", "{before}");
    server.kill(); // SIGKILL, mid-run

    let (server, addr) = start_server(&config);
    let recovered = server.log().lines().find(|l| l.starts_with("weir: recovered")).unwrap_or_default().to_string();
    assert!(recovered.contains(&id) && recovered.contains(&spin_id), "{}", server.log());
    assert!(!recovered.contains(&bomb_id), "a stopped job was restarted: {recovered}");
    assert_eq!(status_json(&addr, EVIL, &bomb_id)["state"], "stopped");
    let done = wait_status(&server, &addr, ACME, &id, 300, |v| v["state"] != "running");
    assert_eq!(done["state"], "finished", "{done}");
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{done}");
    let got = tree(&root.join("jobs").join(&id).join("out/out"));
    assert_same_tree(&got, &want, "weir serve (SIGKILLed and restarted) vs weir run");
    let logs = text(&client(&addr, ACME, &["logs", &id]).stdout);
    assert!(logs.contains("recovered from checkpoint"), "{logs}");

    // The hostile job failed its batches (out of fuel) and nothing else.
    let spin_status = status_json(&addr, EVIL, &spin_id);
    let spin_logs = text(&client(&addr, EVIL, &["logs", &spin_id]).stdout);
    assert!(spin_logs.contains("fuel"), "{spin_status}\n{spin_logs}");
    let bomb_logs = text(&client(&addr, EVIL, &["logs", &bomb_id]).stdout);
    assert!(bomb_logs.contains("FAILED"), "{bomb_logs}");
}

/// Bytes of the files under `dir` as the server's quota walk counts them
/// (symlinks by their own length).
fn walked_bytes(dir: &Path) -> u64 {
    let mut todo = vec![dir.to_path_buf()];
    let mut bytes = 0;
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    bytes
}

/// `checkpoint_root` and `output_root` on object storage: a stateful job's
/// checkpoint and outputs are in the bucket under its tenant and job, not in
/// the job's directory; the server SIGKILLed mid-run and started again
/// recovers the job from the bucket, its outputs (read back with boto3)
/// byte-identical to `weir run`'s files; and the objects count against the
/// tenant's storage quota.
#[test]
fn serve_keeps_checkpoints_and_outputs_on_object_storage_recovers_from_them_and_counts_them_in_the_quota() {
    let Some(s3) = crate::object_store::S3Server::start() else { return };
    s3.bucket("serve-ckpt");
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let base = std::fs::read_to_string(&config).unwrap().replace(
        "admin_token_sha256",
        "checkpoint_root = \"s3://serve-ckpt/weir/\"\noutput_root = \"s3://serve-ckpt/outputs\"\nadmin_token_sha256",
    );
    std::fs::write(&config, &base).unwrap();
    let want = crate::fencing::reference(120);
    let root = tmp.path().join("state/tenants/acme");
    std::fs::create_dir_all(&root).unwrap();
    let acme_job = stateful_job(&root, 120);

    let (mut server, addr) = start_server_with(s3.weir(), &config);
    let id = submit(&addr, ACME, &acme_job).unwrap();
    let before =
        wait_status(&server, &addr, ACME, &id, 120, |v| v["progress"]["batches_completed"].as_u64().unwrap_or(0) >= 10);
    let ckpt = before["checkpoint"].as_str().unwrap().to_string();
    let prefix = format!("weir/acme/{id}-");
    assert!(ckpt.starts_with(&format!("s3://serve-ckpt/{prefix}")), "{before}");
    let key = ckpt.trim_start_matches("s3://serve-ckpt/").to_string();
    let objects = s3.sizes("serve-ckpt", &format!("{key}/"));
    assert!(objects.keys().any(|k| k.starts_with("metadata/")), "{:?}", objects.keys().collect::<Vec<_>>());
    assert!(!root.join("jobs").join(&id).join("checkpoint").exists(), "a checkpoint in the job's directory too");
    let outputs: Vec<String> =
        before["outputs"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect();
    let out_key = format!("outputs/acme/{}", key.trim_start_matches("weir/acme/"));
    assert_eq!(outputs.len(), 2, "{before}");
    assert!(outputs.iter().all(|o| o.starts_with(&format!("s3://serve-ckpt/{out_key}/out/"))), "{before}");
    server.kill(); // SIGKILL, mid-run

    let (mut server, addr) = start_server_with(s3.weir(), &config);
    let done = wait_status(&server, &addr, ACME, &id, 300, |v| v["state"] != "running");
    assert_eq!(done["state"], "finished", "{done}\n{}", server.log());
    assert_eq!(done["checkpoint"], ckpt.as_str());
    let got = s3.objects("serve-ckpt", &format!("{out_key}/out/"));
    assert_same_tree(&got, &want, "weir serve, checkpoint and outputs on S3, read back with boto3");
    assert!(!root.join("jobs").join(&id).join("out").exists(), "outputs in the job's directory too");
    let logs = text(&client(&addr, ACME, &["logs", &id]).stdout);
    assert!(logs.contains("recovered from checkpoint"), "{logs}");
    // The checkpoint reads back whole where the status says it is.
    let inspect = run(s3.weir().args(["checkpoint", "inspect", &ckpt]));
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    server.kill();

    // A quota between the root alone and the root with the bucket's
    // checkpoint refuses the next submission, naming both together.
    let in_root = walked_bytes(&root);
    let in_bucket: u64 = s3.sizes("serve-ckpt", "weir/acme/").values().sum::<u64>()
        + s3.sizes("serve-ckpt", "outputs/acme/").values().sum::<u64>();
    let outputs_bytes: u64 = got.values().map(|v| v.len() as u64).sum();
    assert!(in_bucket > 1000 + outputs_bytes, "{in_bucket} bytes in the bucket, {outputs_bytes} of them outputs");
    let quota = in_root + in_bucket / 2;
    let cfg = base.replace("max_slots = 2\n", &format!("max_slots = 2\nstorage_quota_bytes = {quota}\n"));
    std::fs::write(&config, cfg).unwrap();
    let (mut server, addr) = start_server_with(s3.weir(), &config);
    let refused = submit(&addr, ACME, &acme_job).unwrap_err();
    let used: u64 = refused
        .split("uses ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{refused}"));
    assert!(used >= in_root + in_bucket, "{used} < {in_root} + {in_bucket}: {refused}");
    assert!(refused.contains(&format!("storage_quota_bytes = {quota}")), "{refused}");
    server.kill();
}

/// A self-signed certificate for 127.0.0.1 (the openssl command, which
/// scripts/test.sh installs): (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = run(Command::new("openssl").args([
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
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "openssl (scripts/test.sh installs it): {}", text(&out.stderr));
    (cert, key)
}

#[test]
fn serve_speaks_tls_with_its_certificate_and_not_plain_http() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path());
    let cfg = tmp.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [tenants.acme]\ntoken_sha256 = \"{}\"\n",
            cert.display(),
            key.display(),
            sha(ACME)
        ),
    )
    .unwrap();
    let mut d = Driver::spawn(weir().args(["serve", "--config", cfg.to_str().unwrap()]));
    let line = d.wait_for(Instant::now() + Duration::from_secs(120), "the server to listen", |l| {
        l.starts_with("weir: serving")
    });
    let addr = line.split("https://").nth(1).and_then(|r| r.split('/').next()).expect(&line).to_string();
    let url = format!("https://{addr}");
    // The client trusts the certificate given, and the token works over TLS.
    let ok = run(weir().args(["jobs", "--server", &url, "--ca-file", cert.to_str().unwrap()]).env("WEIR_TOKEN", ACME));
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("ID"), "{}", text(&ok.stdout));
    // Without the certificate the client refuses the server.
    let untrusted = run(weir().args(["jobs", "--server", &url]).env("WEIR_TOKEN", ACME));
    assert!(!untrusted.status.success());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (code, _) = http(&addr, "GET", "/healthz", None, b"", 0);
    assert_eq!(code, 0, "plain HTTP was answered on the TLS port");
    d.kill();
}

/// One raw HTTP/1.1 request with extra headers: the status, the response's
/// headers and its body.
fn http_headers(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

#[test]
fn serve_status_page_lists_only_the_tenants_own_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let (mut server, addr) = start_server(&config);
    let wc = module("wordcount.wasm");
    let acme_id = submit(&addr, ACME, &generator_job(tmp.path(), "a.toml", &wc, "flat_map(m.split)", "")).unwrap();
    let evil_id = submit(&addr, EVIL, &generator_job(tmp.path(), "e.toml", &wc, "flat_map(m.split)", "")).unwrap();
    let bearer = |t: &str| format!("Bearer {t}");

    // UDF memory: evil's running job holds 16 MiB (memory_bytes x 1 module x
    // 1 thread); one with three modules needs 48 MiB more, past its 40 MB.
    let one = std::fs::read_to_string(tmp.path().join("e.toml")).unwrap();
    let m = format!("m2 = \"{0}\"\nm3 = \"{0}\"\n", wc.display());
    std::fs::write(tmp.path().join("three.toml"), one.replace("[modules]\n", &format!("[modules]\n{m}"))).unwrap();
    let e = submit(&addr, EVIL, &tmp.path().join("three.toml")).unwrap_err();
    assert!(e.contains("429") && e.contains("3 module(s)") && e.contains("memory_quota_bytes = 40000000"), "{e}");
    assert!(e.contains("live jobs hold 16777216"), "{e}");
    assert_eq!(status_json(&addr, EVIL, &evil_id)["udf_memory_bytes"], 16_777_216);

    // No token, or a wrong one: 401 with the token form.
    let (code, head, body) = http_headers(&addr, "GET", "/ui", &[], b"");
    assert_eq!(code, 401, "{body}");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("action=\"/ui/login\"") && !body.contains(&acme_id), "{body}");
    let (code, _, _) = http_headers(&addr, "GET", "/ui", &[("Authorization", &bearer("guess"))], b"");
    assert_eq!(code, 401);
    let (code, _, _) = http_headers(&addr, "GET", &format!("/ui/jobs/{acme_id}"), &[], b"");
    assert_eq!(code, 401);

    // Each tenant sees its own jobs, with links to their pages; the admin all.
    let page = |token: &str| {
        let (code, _, body) = http_headers(&addr, "GET", "/ui", &[("Authorization", &bearer(token))], b"");
        assert_eq!(code, 200, "{body}");
        assert!(!body.contains("://"), "the page loads or links something elsewhere: {body}");
        body
    };
    let a = page(ACME);
    assert!(a.contains(&format!("href=\"/ui/jobs/{acme_id}\"")), "{a}");
    assert!(a.contains(&format!("href=\"/ui/jobs/{acme_id}/logs\"")), "{a}");
    assert!(a.contains("running") && !a.contains(&evil_id), "{a}");
    let e = page(EVIL);
    assert!(e.contains(&evil_id) && !e.contains(&acme_id), "{e}");
    let all = page(ADMIN);
    assert!(all.contains(&evil_id) && all.contains(&acme_id), "{all}");

    // A job's pages: its own tenant's only.
    let get = |path: &str, token: &str| http_headers(&addr, "GET", path, &[("Authorization", &bearer(token))], b"");
    let (code, _, body) = get(&format!("/ui/jobs/{evil_id}"), ACME);
    assert_eq!(code, 404, "{body}");
    let (code, _, body) = get(&format!("/ui/jobs/{evil_id}/logs"), ACME);
    assert_eq!(code, 404, "{body}");
    wait_status(&server, &addr, ACME, &acme_id, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(1));
    let (code, _, body) = get(&format!("/ui/jobs/{acme_id}"), ACME);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Batches completed") && body.contains("checkpoint"), "{body}");
    let (code, _, body) = get(&format!("/ui/jobs/{acme_id}/logs"), ACME);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("job {acme_id}: starting on the shared executor pool (tenant acme)")), "{body}");

    // A browser: the token form sets a cookie for /ui only, the cookie shows the page.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (code, _, _) = http_headers(&addr, "POST", "/ui/login", &form, b"token=guess");
    assert_eq!(code, 401);
    let (code, head, _) = http_headers(&addr, "POST", "/ui/login", &form, format!("token={EVIL}").as_bytes());
    assert_eq!(code, 303, "{head}");
    let cookie_line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect(&head);
    for want in [&format!("weir_token={EVIL}"), "Path=/ui", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie_line.contains(want), "{cookie_line}");
    }
    let cookie = format!("weir_token={EVIL}");
    let (code, _, body) = http_headers(&addr, "GET", "/ui", &[("Cookie", &cookie)], b"");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&evil_id) && !body.contains(&acme_id), "{body}");
    // The cookie is for the pages, not the API.
    let (code, _, _) = http_headers(&addr, "GET", "/api/v1/jobs", &[("Cookie", &cookie)], b"");
    assert_eq!(code, 401);
    assert!(!server.log().contains(ACME) && !server.log().contains(EVIL), "a token in the log");
    server.kill();
}

#[test]
fn serve_fails_a_job_over_its_storage_quota_and_keeps_the_others_running() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    // evil's root may hold 20 kB; the roots are measured every 200 ms.
    let cfg = std::fs::read_to_string(&config)
        .unwrap()
        .replace("read_timeout_ms = 1000\n", "read_timeout_ms = 1000\nstorage_check_interval_ms = 200\n")
        .replace("[tenants.evil.limits]", "storage_quota_bytes = 20_000\n\n[tenants.evil.limits]");
    std::fs::write(&config, cfg).unwrap();
    let (mut server, addr) = start_server(&config);
    let wc = module("wordcount.wasm");
    let acme_id = submit(&addr, ACME, &generator_job(tmp.path(), "a.toml", &wc, "flat_map(m.split)", "")).unwrap();
    let evil_id = submit(&addr, EVIL, &generator_job(tmp.path(), "e.toml", &wc, "flat_map(m.split)", "")).unwrap();

    let failed = wait_status(&server, &addr, EVIL, &evil_id, 180, |v| v["state"] != "running");
    assert_eq!(failed["state"], "failed", "{failed}");
    let msg = failed["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("storage quota exceeded")
            && msg.contains("storage_quota_bytes = 20000")
            && msg.contains("tenant evil"),
        "{failed}"
    );
    let used: u64 = msg.split("holds ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(used > 20_000, "{msg}");
    let logs = text(&client(&addr, EVIL, &["logs", &evil_id]).stdout);
    assert!(logs.contains("storage_quota_bytes = 20000"), "{logs}");
    // Stopped after its batch in flight: its checkpoint reads back whole.
    let ckpt = failed["checkpoint"].as_str().unwrap();
    let inspect = run(weir().args(["checkpoint", "inspect", ckpt]));
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));

    // acme's job goes on.
    let now = status_json(&addr, ACME, &acme_id);
    assert_eq!(now["state"], "running", "{now}");
    let n = now["progress"]["batches_completed"].as_u64().unwrap_or(0);
    let later = wait_status(&server, &addr, ACME, &acme_id, 120, |v| {
        v["progress"]["batches_completed"].as_u64() >= Some(n + 2)
    });
    assert_eq!(later["state"], "running", "{later}");
    server.kill();
}

/// evil's blocks may hold 50 kB; its job receives far more per batch. The
/// job fails with the quota named, its bytes are given back, and acme's
/// job goes on.
#[test]
fn serve_holds_a_tenant_to_its_block_quota_and_keeps_the_others_running() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let cfg = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[tenants.evil.limits]", "block_quota_bytes = 50_000\n\n[tenants.evil.limits]");
    std::fs::write(&config, cfg).unwrap();
    let (mut server, addr) = start_server(&config);
    let wc = module("wordcount.wasm");
    let acme_id = submit(&addr, ACME, &generator_job(tmp.path(), "a.toml", &wc, "flat_map(m.split)", "")).unwrap();
    let big = tmp.path().join("big.toml");
    std::fs::write(
        &big,
        format!(
            "batch_interval = \"500ms\"\n[modules]\nm = \"{}\"\n[sources.lines]\ntype = \"generator\"\n\
             lines_per_batch = 5000\nwords_per_line = 10\n[streams]\nwords = \"lines.flat_map(m.split)\"\n\
             [[outputs]]\nstream = \"words\"\ntype = \"save_as_text_files\"\nprefix = \"out/w\"\n",
            wc.display()
        ),
    )
    .unwrap();
    let evil_id = submit(&addr, EVIL, &big).unwrap();
    let failed = wait_status(&server, &addr, EVIL, &evil_id, 120, |v| v["state"] != "running");
    assert_eq!(failed["state"], "failed", "{failed}");
    let msg = failed["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("the input of source 0") && msg.contains("over tenant evil's block_quota_bytes = 50000"),
        "{failed}"
    );
    // Given back: evil holds nothing now; the quota is in the metrics.
    let (code, metrics) = http(&addr, "GET", "/metrics", Some(ADMIN), b"", 0);
    assert_eq!(code, 200, "{metrics}");
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(sample("weir_serve_block_bytes{tenant=\"evil\"} "), 0.0);
    assert_eq!(sample("weir_serve_block_quota_bytes{tenant=\"evil\"} "), 50_000.0);
    assert_eq!(sample("weir_serve_block_quota_bytes{tenant=\"acme\"} "), (1u64 << 30) as f64);
    acme_goes_on(&server, &addr, &acme_id);
    server.kill();
}

/// acme's job completes two more batches, none failed, and still runs.
fn acme_goes_on(server: &Driver, addr: &str, acme_id: &str) {
    acme_goes_on_as(server, addr, ACME, acme_id)
}

/// A running job of the tenant of `token` completes two more batches, none failed.
fn acme_goes_on_as(server: &Driver, addr: &str, token: &str, id: &str) {
    let n = status_json(addr, token, id)["progress"]["batches_completed"].as_u64().unwrap_or(0);
    let later =
        wait_status(server, addr, token, id, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(n + 2));
    assert_eq!(later["state"], "running", "{later}");
    assert_eq!(later["progress"]["batches_failed"].as_u64(), Some(0), "{later}");
}

const VICTIM: &str = "victim-token-0123456789";
const NOISY: &str = "noisy-token-0123456789";

/// A WordCount job over the seeded generator (logical clock, so finite and
/// the same bytes every run): `batches` batches of `lines` lines.
fn generator_wordcount(dir: &Path, lines: u32, batches: u32, parallelism: u32) -> PathBuf {
    let job = format!(
        "batch_interval = \"1s\"\nclock = \"logical\"\nparallelism = {parallelism}\n[modules]\nwordcount = \"{}\"\n\
         [sources.lines]\ntype = \"generator\"\nlines_per_batch = {lines}\nwords_per_line = 10\nbatches = {batches}\n\
         seed = 3\n[streams]\nwords = \"lines.flat_map(wordcount.split)\"\npairs = \"words.map(wordcount.pair)\"\n\
         counts = \"pairs.reduce_by_key(wordcount.sum)\"\n[[outputs]]\nstream = \"counts\"\n\
         type = \"save_as_text_files\"\nprefix = \"out/counts\"\n",
        module("wordcount.wasm").display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("job.toml");
    std::fs::write(&p, job).unwrap();
    p
}

/// Names of the threads of process `pid` that start with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

#[test]
fn serve_runs_two_tenants_on_one_shared_pool_and_the_victim_keeps_pace_beside_a_saturating_neighbour() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmaster = \"local[2]\"\n\
         [tenants.victim]\ntoken_sha256 = \"{}\"\nweight = 1\nmax_slots = 2\n\
         [tenants.noisy]\ntoken_sha256 = \"{}\"\nweight = 1\nmax_slots = 2\n",
        sha(VICTIM),
        sha(NOISY)
    );
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, cfg).unwrap();
    // The victim: small batches. The neighbour: 100 times the words per
    // batch, four partitions, so it keeps both workers busy throughout.
    let (victim_batches, noisy_batches) = (20u64, 100u64);
    let jobs = [("victim", 200, victim_batches, 2), ("noisy", 20_000, noisy_batches, 4)];
    let mut want = Vec::new();
    for (name, lines, batches, par) in jobs {
        let reference = tmp.path().join("reference").join(name);
        let job = generator_wordcount(&reference, lines, batches as u32, par);
        let out = run(weir().args(["run", job.to_str().unwrap(), "-q"]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let files = tree(&reference.join("out"));
        assert_eq!(files.len() as u64, batches * (par as u64 + 1), "{name}: {:?}", files.keys().collect::<Vec<_>>());
        want.push(files);
    }

    let (server, addr) = start_server(&config);
    // One pool for the server: two worker threads, and no job starts its own.
    // (A new thread takes its name itself, just after it starts: waited for.)
    crate::cluster::wait_until("the pool's two named threads", Duration::from_secs(10), || {
        threads_named(server.pid(), "weir-pool-") >= 2
    });
    assert_eq!(threads_named(server.pid(), "weir-pool-"), 2);
    let noisy_job = generator_wordcount(&tmp.path().join("noisy"), 20_000, noisy_batches as u32, 4);
    let noisy = submit(&addr, NOISY, &noisy_job).unwrap();
    wait_status(&server, &addr, NOISY, &noisy, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(1));
    let victim_job = generator_wordcount(&tmp.path().join("victim"), 200, victim_batches as u32, 2);
    let victim = submit(&addr, VICTIM, &victim_job).unwrap();
    assert_eq!(threads_named(server.pid(), "weir-pool-"), 2);
    assert_eq!(threads_named(server.pid(), "weir-executor"), 0);

    // The victim's batches complete while the neighbour still saturates the
    // pool: all of them, before the neighbour's last.
    let done = wait_status(&server, &addr, VICTIM, &victim, 300, |v| v["state"] != "running");
    let beside = status_json(&addr, NOISY, &noisy);
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["progress"]["batches_completed"].as_u64(), Some(victim_batches), "{done}");
    assert_eq!(beside["state"], "running", "the neighbour ended before the victim: {beside}");
    let noisy_done_then = beside["progress"]["batches_completed"].as_u64().unwrap_or(0);
    assert!(noisy_done_then < noisy_batches, "neighbour at {noisy_done_then} of {noisy_batches}: {beside}");

    let noisy_end = wait_status(&server, &addr, NOISY, &noisy, 600, |v| v["state"] != "running");
    assert_eq!(noisy_end["state"], "finished", "{noisy_end}");
    for ((name, id, token), want) in [("victim", &victim, VICTIM), ("noisy", &noisy, NOISY)].into_iter().zip(&want) {
        let got = tree(&tmp.path().join("state/tenants").join(name).join("jobs").join(id).join("out/out"));
        assert_same_tree(&got, want, &format!("{name} on the shared pool vs weir run alone"));
        let logs = text(&client(&addr, token, &["logs", id]).stdout);
        assert!(logs.contains("shared executor pool"), "{logs}");
    }
}

/// `weir run` alone of each (tenant, lines per batch, batches) WordCount
/// job (parallelism 2) under `dir/reference/`: its output trees.
fn references(dir: &Path, jobs: &[(&str, u32, u64)]) -> Vec<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut want = Vec::new();
    for &(name, lines, batches) in jobs {
        let reference = dir.join("reference").join(name);
        let job = generator_wordcount(&reference, lines, batches as u32, 2);
        let out = run(weir().args(["run", job.to_str().unwrap(), "-q"]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let files = tree(&reference.join("out"));
        assert_eq!(files.len() as u64, batches * 3, "{name}: {:?}", files.keys().collect::<Vec<_>>());
        want.push(files);
    }
    want
}

/// Live (not zombie) `weir executor` processes whose parent is `pid`.
fn executor_children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next().unwrap_or(""), f.next().and_then(|p| p.parse::<u32>().ok()));
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(pid) && state != "Z" && String::from_utf8_lossy(&cmdline).contains("executor") {
            found.push(child);
        }
    }
    found.sort();
    found
}

/// Waits until `pid` has `n` live executor children, whose pids it returns.
fn wait_executors(server: &Driver, n: usize, what: &str) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let kids = executor_children(server.pid());
        if kids.len() == n {
            return kids;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} executor(s), not {n}\nserver log:\n{}",
            kids.len(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `master = "local-cluster[2]"`: the server's one pool is two executor
/// processes it started. Two honest tenants' WordCount jobs (the same
/// graph and parallelism, so their RDD and block ids coincide: only the
/// job identity on every frame keeps their blocks apart) run on it beside
/// a hostile tenant's infinite loop; one executor is SIGKILLed mid-run.
/// Both outputs are byte-identical to `weir run` alone, the victim finishes
/// while the loop still runs, and the server replaces the killed executor.
#[test]
fn serve_on_local_cluster_matches_weir_run_beside_a_hostile_loop_and_a_killed_executor() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmaster = \"local-cluster[2]\"\n\
         [tenants.victim]\ntoken_sha256 = \"{}\"\nweight = 1\nmax_slots = 2\n\
         [tenants.noisy]\ntoken_sha256 = \"{}\"\nweight = 1\nmax_slots = 2\n\
         [tenants.evil]\ntoken_sha256 = \"{}\"\nmax_jobs = 2\nmax_slots = 1\nmemory_quota_bytes = 40_000_000\n\
         [tenants.evil.limits]\nfuel_per_call = 50_000_000\ndeadline_ms = 2000\nmemory_bytes = 16_777_216\n",
        sha(VICTIM),
        sha(NOISY),
        sha(EVIL)
    );
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, cfg).unwrap();
    let (victim_batches, noisy_batches) = (40u64, 60u64);
    let want = references(tmp.path(), &[("victim", 300, victim_batches), ("noisy", 3_000, noisy_batches)]);

    let (server, addr) = start_server(&config);
    let first = wait_executors(&server, 2, "the pool at start");
    // Executor processes, not threads: the server runs no task threads.
    assert_eq!(threads_named(server.pid(), "weir-pool-"), 0);

    let spin = generator_job(tmp.path(), "spin.toml", &module("hostile/infinite_loop.wat"), "map(m.spin)", "");
    let spin_id = submit(&addr, EVIL, &spin).unwrap();
    let bomb = generator_job(tmp.path(), "bomb.toml", &module("hostile/memory_bomb.wat"), "map(m.grow)", "");
    let bomb_id = submit(&addr, EVIL, &bomb).unwrap();
    let noisy_job = generator_wordcount(&tmp.path().join("noisy"), 3_000, noisy_batches as u32, 2);
    let noisy = submit(&addr, NOISY, &noisy_job).unwrap();
    let victim_job = generator_wordcount(&tmp.path().join("victim"), 300, victim_batches as u32, 2);
    let victim = submit(&addr, VICTIM, &victim_job).unwrap();

    // Mid-run: kill -9 one executor process.
    wait_status(&server, &addr, VICTIM, &victim, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(3));
    let killed = first[0];
    let out = run(Command::new("kill").args(["-9", &killed.to_string()]));
    assert!(out.status.success(), "kill -9 {killed}: {}", text(&out.stderr));
    let at_kill = status_json(&addr, NOISY, &noisy);
    assert_eq!(at_kill["state"], "running", "the neighbour ended before the kill: {at_kill}");

    let done = wait_status(&server, &addr, VICTIM, &victim, 300, |v| v["state"] != "running");
    assert_eq!(done["state"], "finished", "{done}\nserver log:\n{}", server.log());
    assert_eq!(done["progress"]["batches_completed"].as_u64(), Some(victim_batches), "{done}");
    // The infinite loop was running all along and did not hold the victim up.
    assert_eq!(status_json(&addr, EVIL, &spin_id)["state"], "running");
    let noisy_end = wait_status(&server, &addr, NOISY, &noisy, 600, |v| v["state"] != "running");
    assert_eq!(noisy_end["state"], "finished", "{noisy_end}\nserver log:\n{}", server.log());

    for ((name, id, token), want) in [("victim", &victim, VICTIM), ("noisy", &noisy, NOISY)].into_iter().zip(&want) {
        let got = tree(&tmp.path().join("state/tenants").join(name).join("jobs").join(id).join("out/out"));
        assert_same_tree(&got, want, &format!("{name} on local-cluster[2] (an executor SIGKILLed) vs weir run alone"));
        let logs = text(&client(&addr, token, &["logs", id]).stdout);
        assert!(logs.contains("shared executor pool"), "{logs}");
    }
    // The tenant's ceilings hold inside the executor processes: the loop
    // ran out of evil's 50 000 000 units (the engine's default is larger),
    // and the memory bomb's batches failed at its 16 MiB.
    let spin_logs = text(&client(&addr, EVIL, &["logs", &spin_id]).stdout);
    assert!(spin_logs.contains("ran out of fuel (50000000 units per call)"), "{spin_logs}");
    let bomb_logs = text(&client(&addr, EVIL, &["logs", &bomb_id]).stdout);
    assert!(bomb_logs.contains("FAILED"), "{bomb_logs}");
    assert_eq!(status_json(&addr, EVIL, &bomb_id)["state"], "running", "{bomb_logs}");

    // The loss was seen, and the pool is back to two processes.
    let log = server.log();
    assert!(log.contains(&format!("(pid {killed}")) && log.contains("lost"), "{log}");
    let now = wait_executors(&server, 2, "after the replacement");
    assert!(!now.contains(&killed), "{now:?}");
}

/// `GET /api/v1/pool` as `token`: the parsed answer.
fn pool(addr: &str, token: &str) -> serde_json::Value {
    let (code, body) = http(addr, "GET", "/api/v1/pool", Some(token), b"", 0);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls the pool as `token` until `pred` holds (panics with the server's log after 120 s).
fn wait_pool(
    d: &Driver,
    addr: &str,
    token: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = pool(addr, token);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: the pool is {v}\nserver log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `master = "local-cluster[2,2]"`: the server's API and page show its
/// pool: both executor processes (their pids), 2 slots each, heartbeats
/// arriving, and the jobs with tasks on each — a tenant sees the executors
/// but only its own jobs (the admin token every tenant's, with the tenant).
#[test]
fn serve_shows_its_pool_executors_with_their_slots_and_only_the_tenants_own_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmaster = \"local-cluster[2,2]\"\n\
         admin_token_sha256 = \"{}\"\n\
         [tenants.acme]\ntoken_sha256 = \"{}\"\nmax_slots = 4\n\
         [tenants.acme.limits]\nfuel_per_call = 100_000_000_000\n\
         [tenants.evil]\ntoken_sha256 = \"{}\"\n",
        sha(ADMIN),
        sha(ACME),
        sha(EVIL)
    );
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, cfg).unwrap();
    let (server, addr) = start_server(&config);
    let kids = wait_executors(&server, 2, "the pool at start");
    let (code, _) = http(&addr, "GET", "/api/v1/pool", None, b"", 0);
    assert_eq!(code, 401);

    // Both processes, with their slots, heartbeating.
    let p = wait_pool(&server, &addr, ACME, "two executors heartbeating", |v| {
        v["executors"].as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["heartbeats"].as_u64() >= Some(2)))
    });
    assert_eq!(
        (p["master"].as_str(), p["kind"].as_str(), p["slots"].as_u64()),
        (Some("local-cluster[2,2]"), Some("processes"), Some(4)),
        "{p}"
    );
    let mut pids: Vec<u32> =
        p["executors"].as_array().unwrap().iter().map(|x| x["pid"].as_u64().unwrap() as u32).collect();
    pids.sort();
    assert_eq!(pids, kids, "{p}");
    for x in p["executors"].as_array().unwrap() {
        assert_eq!(x["slots"], 2, "{x}");
        assert!(x["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{x}");
        // Healthy: heartbeats every 100 ms (within the 3 s timeout, or it would be gone).
        assert!(x["last_heartbeat_age_ms"].as_u64().is_some_and(|a| a < 3000), "{x}");
        assert_eq!(x["jobs"], serde_json::json!([]), "{x}");
    }

    // acme's job keeps the pool busy (more work per batch than an interval).
    let job = format!(
        "batch_interval = \"500ms\"\nparallelism = 8\n[limits]\nfuel_per_call = 50000000000\n[modules]\ntestops = \"{}\"\n[sources.lines]\n\
         type = \"generator\"\nlines_per_batch = 16000\nwords_per_line = 2\n[streams]\n\
         slow = \"lines.map(testops.spin)\"\n[[outputs]]\nstream = \"slow\"\ntype = \"save_as_text_files\"\n\
         prefix = \"out/x\"\n",
        module("testops.wasm").display()
    );
    let job_file = tmp.path().join("busy.toml");
    std::fs::write(&job_file, job).unwrap();
    let id = submit(&addr, ACME, &job_file).unwrap();
    let on = |v: &serde_json::Value| {
        v["executors"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["jobs"].as_array().is_some_and(|j| {
                    j.iter().any(|j| j["job"] == id.as_str() && j["tasks_running"].as_u64() >= Some(1))
                })
            })
        })
    };
    let mine = wait_pool(&server, &addr, ACME, "acme's job on an executor", on);
    for x in mine["executors"].as_array().unwrap() {
        for j in x["jobs"].as_array().unwrap() {
            assert_eq!((j["tenant"].as_str(), j["job"].as_str()), (Some("acme"), Some(id.as_str())), "{mine}");
        }
    }
    let all = wait_pool(&server, &addr, ADMIN, "the operator to see acme's job", on);
    let all_tasks: u64 =
        all["executors"].as_array().unwrap().iter().map(|x| x["tasks_running"].as_u64().unwrap()).sum();
    assert!(all_tasks >= 1, "{all}");
    // Right after, another tenant sees the executors, but neither acme's
    // job nor its tasks.
    let theirs = pool(&addr, EVIL);
    assert_eq!(theirs["executors"].as_array().map(Vec::len), Some(2), "{theirs}");
    assert!(!theirs.to_string().contains(&id), "{theirs}");
    for x in theirs["executors"].as_array().unwrap() {
        assert_eq!((x["tasks_running"].as_u64(), &x["jobs"]), (Some(0), &serde_json::json!([])), "{theirs}");
    }
    // The page shows the pool too, with the tenant's own job.
    let page = wait_until_page(&server, &addr, ACME, &id);
    for pid in &kids {
        assert!(page.contains(&format!("<td class=\"pid\">{pid}</td>")), "{page}");
    }
    assert_eq!(page.matches("<td class=\"slots\">2</td>").count(), 2, "{page}");
    let (code, evil_page) = http(&addr, "GET", "/ui", Some(EVIL), b"", 0);
    assert_eq!(code, 200);
    assert!(evil_page.contains("Executor pool") && !evil_page.contains(&id), "{evil_page}");
    let out = client(&addr, ACME, &["stop", &id, "--now"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The `/ui` page as `token` once it lists job `id` on an executor.
fn wait_until_page(d: &Driver, addr: &str, token: &str, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, page) = http(addr, "GET", "/ui", Some(token), b"", 0);
        assert_eq!(code, 200, "{page}");
        if page.contains("Executor pool") && page.contains(&format!("{id}</a> (")) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {id} on an executor: {page}\nserver log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `master = "cluster[2]"`: the executors are processes the operator starts
/// (`weir executor --driver CLUSTER_LISTEN --secret-file FILE`), not the
/// server's children. Two such executors join with the secret of
/// `cluster_secret_file`; two tenants' WordCount jobs of the same graph run
/// on them. One executor is SIGKILLed mid-run: nothing replaces it, the
/// server declares it lost and both jobs complete on the other (its tasks
/// re-run, its blocks recomputed), with outputs byte-identical to `weir run`
/// alone. Each job that ends is released on the surviving executor
/// (`EndJob`): it ends holding no job's blocks or modules.
#[test]
fn serve_on_cluster_with_executors_the_operator_started_survives_a_killed_executor() {
    use crate::cluster::{alive, executor_cmd, free_port, signal, Proc, SIGKILL};
    let tmp = tempfile::tempdir().unwrap();
    let cluster_listen = format!("127.0.0.1:{}", free_port());
    let secret = tmp.path().join("cluster.secret");
    std::fs::write(&secret, "serve-cluster-test-secret\n").unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmaster = \"cluster[2]\"\n\
         cluster_listen = \"{cluster_listen}\"\ncluster_secret_file = \"cluster.secret\"\n\
         [tenants.victim]\ntoken_sha256 = \"{}\"\nweight = 1\nmax_slots = 2\n\
         [tenants.noisy]\ntoken_sha256 = \"{}\"\nweight = 1\nmax_slots = 2\n",
        sha(VICTIM),
        sha(NOISY)
    );
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, cfg).unwrap();
    let (victim_batches, noisy_batches) = (30u64, 40u64);
    let want = references(tmp.path(), &[("victim", 300, victim_batches), ("noisy", 3_000, noisy_batches)]);

    let (server, addr) = start_server(&config);
    let executor = || {
        let mut c = executor_cmd(&cluster_listen);
        c.args(["--cores", "2", "--secret-file", secret.to_str().unwrap()]).env("WEIR_LOG", "warn,weir=info");
        let mut p = Proc::spawn(&mut c);
        p.wait_line(Duration::from_secs(60), |l| l.contains("joined")).expect("the executor exited before joining");
        p
    };
    let (mut doomed, mut survivor) = (executor(), executor());
    // The server starts no executor of its own.
    assert_eq!(executor_children(server.pid()), Vec::<u32>::new());
    assert_eq!(threads_named(server.pid(), "weir-pool-"), 0);

    let noisy_job = generator_wordcount(&tmp.path().join("noisy"), 3_000, noisy_batches as u32, 2);
    let noisy = submit(&addr, NOISY, &noisy_job).unwrap();
    let victim_job = generator_wordcount(&tmp.path().join("victim"), 300, victim_batches as u32, 2);
    let victim = submit(&addr, VICTIM, &victim_job).unwrap();

    // Mid-run: kill -9 one executor.
    wait_status(&server, &addr, VICTIM, &victim, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(3));
    let killed = doomed.pid();
    signal(killed, SIGKILL);
    assert!(doomed.finish().code().is_none(), "the executor was not killed");
    let at_kill = status_json(&addr, NOISY, &noisy);
    assert_eq!(at_kill["state"], "running", "the neighbour ended before the kill: {at_kill}");

    for (id, token, batches) in [(&victim, VICTIM, victim_batches), (&noisy, NOISY, noisy_batches)] {
        let done = wait_status(&server, &addr, token, id, 600, |v| v["state"] != "running");
        assert_eq!(done["state"], "finished", "{done}\nserver log:\n{}", server.log());
        assert_eq!(done["progress"]["batches_completed"].as_u64(), Some(batches), "{done}");
    }
    for ((name, id), want) in [("victim", &victim), ("noisy", &noisy)].into_iter().zip(&want) {
        let got = tree(&tmp.path().join("state/tenants").join(name).join("jobs").join(id).join("out/out"));
        assert_same_tree(&got, want, &format!("{name} on cluster[2] (an executor SIGKILLed) vs weir run alone"));
    }
    let log = server.log();
    assert!(log.contains(&format!("(pid {killed}")) && log.contains("lost"), "{log}");
    assert!(!log.contains("started executor pid"), "the server started an executor of its own:\n{log}");

    // Both jobs ran on the survivor after the kill, and both were released there.
    let ended = |l: &str| l.contains("ended: released");
    survivor.wait_line(Duration::from_secs(60), ended).expect("the survivor exited");
    let (_, last) = survivor.wait_line(Duration::from_secs(60), ended).expect("the survivor exited");
    assert!(last.ends_with("; 0 job(s) held"), "{last}\n{}", survivor.text());
    assert!(alive(survivor.pid()), "{}", survivor.text());
}

/// On executor processes (`local-cluster[1]`) a tenant's `block_quota_bytes`
/// holds its blocks there too, not only on the server: evil's input (about
/// 5 kB a batch) fits its 30 kB on the server, but the shuffle its job
/// writes on the executor (every character of every line, grouped: about
/// 60 kB a batch) does not, and its batches fail naming the quota. acme's
/// job on the same executor goes on.
#[test]
fn serve_on_local_cluster_holds_a_tenant_to_its_block_quota_on_the_executors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmaster = \"local-cluster[1]\"\n\
         [tenants.acme]\ntoken_sha256 = \"{}\"\nmax_slots = 1\n\
         [tenants.evil]\ntoken_sha256 = \"{}\"\nmax_slots = 1\nblock_quota_bytes = 30_000\n",
        sha(ACME),
        sha(EVIL)
    );
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, cfg).unwrap();
    let (mut server, addr) = start_server(&config);
    let wc = module("wordcount.wasm");
    let acme_id = submit(&addr, ACME, &generator_job(tmp.path(), "a.toml", &wc, "flat_map(m.split)", "")).unwrap();
    let chars = tmp.path().join("chars.toml");
    std::fs::write(
        &chars,
        format!(
            "batch_interval = \"500ms\"\n[modules]\nt = \"{}\"\nw = \"{}\"\n[sources.lines]\ntype = \"generator\"\n\
             lines_per_batch = 100\nwords_per_line = 10\n[streams]\nc = \"lines.flat_map(t.chars)\"\n\
             g = \"c.map(w.pair).group_by_key()\"\n[[outputs]]\nstream = \"g\"\ntype = \"save_as_text_files\"\n\
             prefix = \"out/g\"\n",
            module("testops.wasm").display(),
            wc.display()
        ),
    )
    .unwrap();
    let evil_id = submit(&addr, EVIL, &chars).unwrap();
    // Its batches fail (each one's shuffle is refused after retries; the
    // job itself fails once more than --max-pending-batches are pending).
    let failing = wait_status(&server, &addr, EVIL, &evil_id, 120, |v| {
        v["progress"]["batches_failed"].as_u64() >= Some(2) || v["state"] != "running"
    });
    let p = &failing["progress"];
    assert_eq!(p["batches_completed"], p["batches_failed"], "every batch of evil's failed: {failing}");
    let logs = text(&client(&addr, EVIL, &["logs", &evil_id]).stdout);
    assert!(
        logs.contains("block shuffle_") && logs.contains("over tenant evil's block_quota_bytes = 30000"),
        "{failing}\n{logs}"
    );
    assert!(!logs.contains("the input of source 0"), "the server's budget refused it, not the executor's: {logs}");
    assert!(client(&addr, EVIL, &["stop", &evil_id, "--now"]).status.success());
    // acme's job goes on, on the same executor.
    acme_goes_on(&server, &addr, &acme_id);
    server.kill();
}

/// A fresh cgroup v1 `cpu` directory for one test, removed at the end (once
/// the server that used it is gone), or why there can be none here.
struct CpuCgroup(PathBuf);

impl CpuCgroup {
    fn new() -> Result<CpuCgroup, String> {
        let base = Path::new("/sys/fs/cgroup/cpu");
        if !base.join("cpu.shares").is_file() {
            return Err(format!("{} is not a cgroup v1 cpu hierarchy", base.display()));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = base.join(format!("weir-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        Ok(CpuCgroup(dir))
    }

    /// The thread ids in `tenant`'s cgroup.
    fn tasks(&self, tenant: &str) -> Vec<u32> {
        let s = std::fs::read_to_string(self.0.join(tenant).join("tasks")).unwrap_or_default();
        s.split_whitespace().filter_map(|t| t.parse().ok()).collect()
    }

    fn shares(&self, tenant: &str) -> String {
        std::fs::read_to_string(self.0.join(tenant).join("cpu.shares")).unwrap_or_default().trim().to_string()
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // A cgroup goes only when empty: children first, then itself.
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The names (comm) of process `pid`'s threads, by thread id.
fn thread_names(pid: u32) -> std::collections::BTreeMap<u32, String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            Some((tid, std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_string()))
        })
        .collect()
}

#[test]
fn serve_gives_each_tenant_a_cpu_cgroup_with_its_weight_and_puts_its_driver_and_task_threads_there() {
    let cg = match CpuCgroup::new() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED serve_gives_each_tenant_a_cpu_cgroup…: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let base = std::fs::read_to_string(&config).unwrap();
    let with_cgroup = |acme_weight: u32| {
        let t = base.replace("max_slots = 2\n", &format!("max_slots = 2\nweight = {acme_weight}\n"));
        format!("cpu_cgroup = {:?}\n{t}", cg.0.display().to_string())
    };
    std::fs::write(&config, with_cgroup(3)).unwrap();
    let (server, addr) = start_server(&config);
    // Every tenant's cgroup exists from the start, weighted.
    assert_eq!(cg.shares("acme"), "3072");
    assert_eq!(cg.shares("evil"), "1024");
    assert!(cg.tasks("acme").is_empty() && cg.tasks("evil").is_empty(), "no thread placed before any job");

    let wasm = module("wordcount.wasm");
    let acme = submit(&addr, ACME, &generator_job(tmp.path(), "acme.toml", &wasm, "flat_map(m.split)", "")).unwrap();
    wait_status(&server, &addr, ACME, &acme, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(1));
    // Its driver thread, and the pool thread(s) that ran its tasks, are in
    // acme's cgroup; nothing of the server's is in evil's.
    let named = |tids: &[u32], prefix: &str| {
        let names = thread_names(server.pid());
        tids.iter().filter(|t| names.get(t).is_some_and(|n| n.starts_with(prefix))).count()
    };
    let placed = cg.tasks("acme");
    assert_eq!(
        named(&placed, "weir-job-"),
        1,
        "acme's driver thread in acme's cgroup: {placed:?} {:?}",
        thread_names(server.pid())
    );
    assert!(
        named(&placed, "weir-pool-") >= 1,
        "a pool thread that ran acme's task: {placed:?} {:?}",
        thread_names(server.pid())
    );
    assert!(cg.tasks("evil").is_empty());

    // Once evil runs too, pool threads follow the tenant whose task they
    // run: each cgroup gets its own driver and, in turn, pool threads.
    let evil = submit(&addr, EVIL, &generator_job(tmp.path(), "evil.toml", &wasm, "flat_map(m.split)", "")).unwrap();
    wait_status(&server, &addr, EVIL, &evil, 120, |v| v["progress"]["batches_completed"].as_u64() >= Some(1));
    let (mut acme_pool, mut evil_pool) = (false, false);
    crate::cluster::wait_until("pool threads in both tenants' cgroups", Duration::from_secs(60), || {
        acme_pool |= named(&cg.tasks("acme"), "weir-pool-") >= 1;
        evil_pool |= named(&cg.tasks("evil"), "weir-pool-") >= 1;
        acme_pool && evil_pool
    });
    assert_eq!(named(&cg.tasks("evil"), "weir-job-"), 1);
    assert_eq!(named(&cg.tasks("acme"), "weir-job-"), 1);

    // A weight changed in serve.toml reaches the cgroup without a restart.
    std::fs::write(&config, with_cgroup(5)).unwrap();
    crate::cluster::wait_until("acme's new weight in cpu.shares", Duration::from_secs(60), || {
        let _ = status_json(&addr, ACME, &acme); // a request re-reads a changed serve.toml
        cg.shares("acme") == "5120"
    });
    acme_goes_on(&server, &addr, &acme);
    drop(server);
}

#[test]
fn serve_refuses_a_cpu_cgroup_that_is_not_one_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let base = std::fs::read_to_string(&config).unwrap();
    let dir = tmp.path().join("not-a-cgroup");
    std::fs::write(&config, format!("cpu_cgroup = {:?}\n{base}", dir.display().to_string())).unwrap();
    let out = run(weir().args(["serve", "--config", config.to_str().unwrap()]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cpu_cgroup {}", dir.display())) && err.contains("cpu.shares"), "{err}");
}
