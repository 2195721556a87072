//! Issue 11: nothing a network peer sends before it has authenticated may
//! cost the driver or an executor memory or crash them, idle or slow
//! connections may not exhaust them, and a driver whose executors are all
//! gone fails its batches (or replaces local executors) instead of waiting
//! for ever. Hostile bytes are sent from the test over real sockets on
//! 127.0.0.1; memory is the target's VmRSS from /proc; "keeps running"
//! means new progress lines after the attack. The tests share the cluster
//! tests' lock: their timings mean something only when run one at a time.

use crate::cluster::{
    alive, children, executor_cmd, free_port, progress_time, run_cmd, run_with_deadline, serial, signal,
    signal_quietly, wait_until, wordcount_job, Proc, SIGCONT, SIGKILL, SIGSTOP,
};
use crate::common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "ports-test-secret";

/// The resident set of `pid` in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A long WordCount (it runs until the test stops it).
fn long_job(dir: &Path) -> std::path::PathBuf {
    wordcount_job(dir, 2, 200, 1_000_000, false)
}

/// A `cluster[1]` driver on 127.0.0.1 with a secret file and one real
/// executor that has joined and run batches.
struct Cluster {
    d: Proc,
    exec: Proc,
    addr: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(extra: &[&str], fd_limit: Option<u32>) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let job = long_job(tmp.path());
        let secret_file = tmp.path().join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        // No status page: the tests count the driver's listening ports and fds.
        let mut args = vec!["--listen", addr.as_str(), "--secret-file", secret_file.to_str().unwrap(), "--ui", "off"];
        args.extend_from_slice(extra);
        let run = run_cmd(&job, "cluster[1]", &args);
        let mut cmd = match fd_limit {
            // The driver with few descriptors, as on a host with a low limit.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(run.get_program())
                    .args(run.get_args())
                    .env_remove("WEIR_SECRET");
                c
            }
            None => run,
        };
        cmd.current_dir(tmp.path());
        let mut d = Proc::spawn(&mut cmd);
        wait_until("the driver to accept connections", Duration::from_secs(30), || {
            assert!(d.child.try_wait().unwrap().is_none(), "the driver exited early:\n{}", d.text());
            listening_ports(d.pid()).len() >= 2
        });
        let exec = Proc::spawn(executor_cmd(&addr).env("WEIR_SECRET", SECRET));
        assert!(d.wait_progress(2), "no batches ran:\n{}", d.text());
        Cluster { d, exec, addr, _tmp: tmp }
    }

    fn driver_port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The driver's block server port (its other listening port).
    fn driver_block_port(&self) -> u16 {
        let own = self.driver_port();
        let ports: Vec<u16> = listening_ports(self.d.pid()).into_iter().filter(|p| *p != own).collect();
        assert_eq!(ports.len(), 1, "the driver listens on its port and its block server's: {ports:?}");
        ports[0]
    }

    fn exec_block_port(&self) -> u16 {
        let ports = listening_ports(self.exec.pid());
        assert_eq!(ports.len(), 1, "an executor listens on its block server's port only: {ports:?}");
        ports[0]
    }

    /// Both processes still run and the driver completes `n` more batches.
    fn still_working(&mut self, n: u64, what: &str) {
        assert!(alive(self.d.pid()), "{what}: the driver died:\n{}", self.d.text());
        assert!(alive(self.exec.pid()), "{what}: the executor died:\n{}", self.d.text());
        for _ in 0..n {
            let got = self.d.wait_line(Duration::from_secs(30), |l| progress_time(l).is_some());
            assert!(got.is_some(), "{what}: the driver stopped completing batches:\n{}", self.d.text());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        signal_quietly(self.exec.pid(), SIGKILL);
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends a frame header claiming 1 GiB, then up to `bytes` of its body
/// (until the peer closes); returns the growth of `pid`'s RSS in KiB,
/// measured while the connection is still open.
fn claim_a_gibibyte(mut s: TcpStream, pid: u32, bytes: usize) -> u64 {
    let before = rss_kib(pid);
    s.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < bytes && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let after = rss_kib(pid);
    after.saturating_sub(before)
}

/// A 60-byte `Hello` frame (magic, version, proof, `Role::Executor`) whose
/// block address claims a length of 2^62 bytes.
fn hello_claiming_2_pow_62() -> Vec<u8> {
    let mut body = b"WEIR".to_vec();
    body.push(2); // version (varint)
    body.extend_from_slice(&[0u8; 32]); // proof
    body.push(0); // Role::Executor
    body.push(1); // slots
    body.push(0xfd); // a u64 varint follows: the string's length
    body.extend_from_slice(&(1u64 << 62).to_le_bytes());
    body.resize(60, b'x');
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// Sends `bytes` and waits (bounded) until the peer closes the connection.
fn send_and_await_close(port: u16, bytes: &[u8]) {
    let mut s = connect(port);
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Frame headers claiming 1 GiB and a hello claiming a 2^62-byte string,
/// sent before authenticating to the driver's port, the driver's block
/// server and an executor's block server: no process grows by more than a
/// few MB, none dies, and the driver keeps completing batches.
#[test]
fn hostile_frames_before_authentication() {
    let _serial = serial();
    let mut c = Cluster::start(&[], None);
    let (dpid, epid) = (c.d.pid(), c.exec.pid());
    let targets = [
        ("driver port", c.driver_port(), dpid),
        ("driver block server", c.driver_block_port(), dpid),
        ("executor block server", c.exec_block_port(), epid),
    ];
    for (what, port, pid) in targets {
        let grew = claim_a_gibibyte(connect(port), pid, 256 << 20);
        eprintln!("{what}: a 1 GiB frame header grew pid {pid} by {grew} KiB");
        assert!(grew < 32 << 10, "{what}: a 1 GiB frame header grew pid {pid}'s RSS by {grew} KiB");
        send_and_await_close(port, &hello_claiming_2_pow_62());
        c.still_working(2, what);
    }
}

/// A fake driver whose challenge frame claims 1 GiB: the executor does not
/// allocate it, and gives up with an error.
#[test]
fn a_fake_drivers_huge_challenge_costs_an_executor_nothing() {
    let _serial = serial();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut e = Proc::spawn(executor_cmd(&addr).env("WEIR_SECRET", SECRET));
    let (s, _) = l.accept().unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let grew = claim_a_gibibyte(s, e.pid(), 256 << 20);
    eprintln!("a 1 GiB challenge grew the executor by {grew} KiB");
    assert!(grew < 32 << 10, "a 1 GiB challenge grew the executor's RSS by {grew} KiB");
    wait_until("the executor to give up", Duration::from_secs(20), || e.child.try_wait().unwrap().is_some());
    let status = e.finish();
    assert!(!status.success(), "the executor accepted a hostile driver:\n{}", e.text());
}

/// Hundreds of idle connections to a driver with 256 descriptors: it keeps
/// completing batches (unauthenticated connections are capped and dropped).
#[test]
fn idle_connections_do_not_exhaust_the_driver() {
    let _serial = serial();
    let mut c = Cluster::start(&[], Some(256));
    let port = c.driver_port();
    let bport = c.driver_block_port();
    let mut idle = Vec::new();
    for i in 0..600 {
        let p = if i % 2 == 0 { port } else { bport };
        if let Ok(s) = TcpStream::connect_timeout(&format!("127.0.0.1:{p}").parse().unwrap(), Duration::from_secs(1)) {
            idle.push(s);
        }
    }
    eprintln!("{} idle connections open; the driver has {} descriptors", idle.len(), open_fds(c.d.pid()));
    c.still_working(3, "600 idle connections");
    assert!(open_fds(c.d.pid()) < 240, "the driver holds {} descriptors", open_fds(c.d.pid()));
    drop(idle);
}

/// Connections that send half a header, or a byte now and then, are closed
/// within the handshake deadline, on the driver's port and block server.
#[test]
fn slow_or_half_handshakes_are_dropped_within_the_deadline() {
    let _serial = serial();
    let mut c = Cluster::start(&[], None);
    let ports = [c.driver_port(), c.driver_block_port()];
    let waits: Vec<_> = ports
        .into_iter()
        .flat_map(|p| [(p, true), (p, false)])
        .map(|(port, half)| {
            std::thread::spawn(move || {
                let mut s = connect(port);
                s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let start = Instant::now();
                let mut buf = [0u8; 256];
                if half {
                    s.write_all(&[60, 0]).unwrap();
                }
                // A byte every half second (slowloris) or nothing more.
                while start.elapsed() < Duration::from_secs(20) {
                    match s.read(&mut buf) {
                        Ok(0) => return Some(start.elapsed()),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return Some(start.elapsed()),
                    }
                    if !half && s.write_all(&[1]).is_err() {
                        return Some(start.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    for (i, w) in waits.into_iter().enumerate() {
        let closed = w.join().unwrap();
        eprintln!("slow connection {i}: closed after {closed:?}");
        assert!(closed.is_some_and(|t| t < Duration::from_secs(8)), "connection {i} open 8 s or more: {closed:?}");
    }
    c.still_working(2, "slow handshakes");
}

/// An authenticated peer that never reads its socket and floods the driver
/// with module requests: the driver's memory stays bounded, the peer is
/// lost, and the batches go on.
#[test]
fn a_non_reading_executor_flooding_module_requests_does_not_stop_the_driver() {
    use weir::cluster::protocol::{self, FromExecutor, Role};
    let _serial = serial();
    let mut c = Cluster::start(&["--heartbeat-timeout-ms", "2000"], None);
    let base = rss_kib(c.d.pid());
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let role = Role::Executor { slots: 4096, block_addr: "127.0.0.1:1".into(), pid: 4_000_001, max_frame: 1 << 30 };
    protocol::connect(&mut s, SECRET.as_bytes(), role, protocol::PROTOCOL_VERSION).unwrap();
    let hash = weir::udf::ModuleHash::of(&std::fs::read(module("wordcount.wasm")).unwrap());
    let frame = protocol::encode_frame(&FromExecutor::NeedModule { job: 0, hash }).unwrap();
    let start = Instant::now();
    let mut peak = 0;
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(8) {
        if s.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
        if sent.is_multiple_of(256) {
            peak = peak.max(rss_kib(c.d.pid()));
        }
    }
    let grew = peak.saturating_sub(base);
    eprintln!("{sent} module requests; the driver grew by {grew} KiB");
    assert!(grew < 48 << 10, "module requests grew the driver by {grew} KiB");
    c.d.wait_line(Duration::from_secs(30), |l| l.contains("lost") && l.contains("4000001"))
        .unwrap_or_else(|| panic!("the flooding executor was never lost:\n{}", c.d.text()));
    c.still_working(3, "a module-request flood");
}

/// `--max-frame-bytes` lowers the limit of frames from authenticated
/// peers: an executor that sends a frame over it (2 MiB against 1 MiB, far
/// under the 1 GiB default) is disconnected and declared lost, naming the
/// limit, and the batches go on. Out-of-range limits are refused.
#[test]
fn a_configured_frame_limit_disconnects_an_authenticated_peer_over_it() {
    use weir::cluster::protocol::{self, Role};
    let _serial = serial();
    let mut c = Cluster::start(&["--max-frame-bytes", "1048576"], None);
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let role = Role::Executor { slots: 1, block_addr: "127.0.0.1:1".into(), pid: 4_000_002, max_frame: 1 << 30 };
    protocol::connect(&mut s, SECRET.as_bytes(), role, protocol::PROTOCOL_VERSION).unwrap();
    s.write_all(&(2u32 << 20).to_le_bytes()).unwrap();
    let _ = s.write_all(&[0u8; 4096]);
    let (_, line) =
        c.d.wait_line(Duration::from_secs(30), |l| l.contains("lost") && l.contains("4000002"))
            .unwrap_or_else(|| panic!("the peer over the limit was never lost:\n{}", c.d.text()));
    assert!(line.contains("over the 1048576-byte limit"), "{line}");
    c.still_working(2, "a frame over the configured limit");

    let tmp = tempfile::tempdir().unwrap();
    let job = long_job(tmp.path());
    for bytes in ["1000", "2147483648"] {
        let mut cmd = run_cmd(&job, "local-cluster[1]", &["--max-frame-bytes", bytes]);
        cmd.current_dir(tmp.path());
        let (status, err) = run_with_deadline(&mut cmd, Duration::from_secs(30));
        assert!(
            !status.success() && err.contains("--max-frame-bytes") && err.contains("out of range"),
            "{bytes}: {err}"
        );
        let mut ex = executor_cmd("127.0.0.1:1");
        ex.args(["--max-frame-bytes", bytes]).env("WEIR_SECRET", SECRET);
        let (status, err) = run_with_deadline(&mut ex, Duration::from_secs(20));
        assert!(!status.success() && err.contains("out of range"), "executor, {bytes}: {err}");
    }
}

/// Legitimate frames over a lowered `--max-frame-bytes` fail clearly
/// instead of losing executor after executor: a job whose module (the
/// Python WordCount, about 19 MB) could not be sent to the executors is
/// refused at start naming it; a task whose result (a partition of about
/// 3 MB of output lines) is over the driver's limit fails once,
/// deterministically, naming the limit, with no executor lost; on the
/// way, shuffle fetches over the limit are split block by block.
#[test]
fn frames_over_a_lowered_limit_fail_the_job_or_the_task_naming_the_limit() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let py = tmp.path().join("py.toml");
    std::fs::write(
        &py,
        format!(
            "batch_interval = \"1s\"\n[modules]\nwc = \"{}\"\n[sources.lines]\ntype = \"generator\"\nlines_per_batch = 10\nwords_per_line = 2\nvocabulary = 5\nbatches = 1\n[streams]\nwords = \"lines.flat_map(wc.split)\"\n[[outputs]]\nstream = \"words\"\ntype = \"print\"\n",
            module("wordcount_py.wasm").display()
        ),
    )
    .unwrap();
    let mut cmd = run_cmd(&py, "local-cluster[1]", &["--max-frame-bytes", "1048576", "--ui", "off"]);
    cmd.current_dir(tmp.path());
    let (status, err) = run_with_deadline(&mut cmd, Duration::from_secs(60));
    assert!(!status.success(), "{err}");
    assert!(err.contains("module wordcount_py.wasm is") && err.contains("--max-frame-bytes"), "{err}");

    let big = tmp.path().join("big.toml");
    std::fs::write(
        &big,
        // Eight input partitions of about 0.5 MB (under the limit, fetched
        // one each), one output partition of about 4 MB (over it): the
        // reducer's fetch of several buckets at once is over the limit too,
        // and is asked for again block by block.
        "batch_interval = \"1s\"\nparallelism = 8\n[sources.lines]\ntype = \"generator\"\nlines_per_batch = 200000\nwords_per_line = 3\nvocabulary = 1000\nbatches = 2\n[streams]\none = \"lines.repartition(1)\"\n[[outputs]]\nstream = \"one\"\ntype = \"save_as_text_files\"\nprefix = \"out/one\"\n",
    )
    .unwrap();
    let mut cmd =
        run_cmd(&big, "local-cluster[2]", &["--max-frame-bytes", "1048576", "--ui", "off", "--clock", "logical"]);
    cmd.current_dir(tmp.path());
    let (status, err) = run_with_deadline(&mut cmd, Duration::from_secs(120));
    assert!(!status.success(), "the batches fail: {err}");
    assert!(err.contains("over the driver's frame limit of 1048576 bytes"), "{err}");
    assert!(err.contains("1 time(s)") && !err.contains("4 time(s)"), "deterministic, not retried: {err}");
    assert!(!err.contains(") lost: "), "no executor is lost over it: {err}");
}

/// An empty or whitespace-only secret file is an error, not a secret.
#[test]
fn an_empty_secret_file_is_refused() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let job = long_job(tmp.path());
    for content in ["", " \n\t \n"] {
        let f = tmp.path().join("secret");
        std::fs::write(&f, content).unwrap();
        let addr = format!("0.0.0.0:{}", free_port());
        let mut cmd = run_cmd(&job, "cluster[1]", &["--listen", &addr, "--secret-file", f.to_str().unwrap()]);
        let (status, err) = run_with_deadline(&mut cmd, Duration::from_secs(20));
        assert!(!status.success() && err.contains("empty"), "secret {content:?} accepted ({status}):\n{err}");
        let mut ex = executor_cmd("127.0.0.1:1");
        ex.args(["--secret-file", f.to_str().unwrap()]);
        let (status, err) = run_with_deadline(&mut ex, Duration::from_secs(20));
        assert!(!status.success() && err.contains("empty"), "executor: secret {content:?} accepted:\n{err}");
    }
}

/// A heartbeat timeout below the minimum is refused with a clear error
/// (0 used to lose every executor at once and wait for ever).
#[test]
fn a_heartbeat_timeout_below_the_minimum_is_refused() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let job = long_job(tmp.path());
    for ms in ["0", "100"] {
        let mut cmd = run_cmd(&job, "local-cluster[1]", &["--heartbeat-timeout-ms", ms]);
        cmd.current_dir(tmp.path());
        let (status, err) = run_with_deadline(&mut cmd, Duration::from_secs(30));
        assert!(!status.success() && err.contains("heartbeat timeout"), "{ms} ms accepted ({status}):\n{err}");
    }
}

/// The next progress line within `t` (None if there is none).
fn next_batch(d: &mut Proc, t: Duration) -> bool {
    d.wait_line(t, |l| progress_time(l).is_some()).is_some()
}

/// Every local-cluster executor SIGKILLed, then every one SIGSTOPped past
/// the heartbeat timeout: the driver starts replacements and goes on.
#[test]
fn local_cluster_replaces_lost_executors() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let job = long_job(tmp.path());
    let mut cmd = run_cmd(&job, "local-cluster[2]", &["--heartbeat-timeout-ms", "800"]);
    cmd.current_dir(tmp.path());
    let mut d = Proc::spawn(&mut cmd);
    assert!(d.wait_progress(2), "{}", d.text());
    let first: Vec<u32> = children(d.pid()).into_iter().filter(|p| alive(*p)).collect();
    assert_eq!(first.len(), 2, "{first:?}");
    for p in &first {
        signal(*p, SIGKILL);
    }
    wait_until("replacements to run", Duration::from_secs(30), || {
        children(d.pid()).into_iter().filter(|p| alive(*p) && !first.contains(p)).count() == 2
    });
    d.drain();
    assert!(next_batch(&mut d, Duration::from_secs(30)) && next_batch(&mut d, Duration::from_secs(30)));

    let second: Vec<u32> = children(d.pid()).into_iter().filter(|p| alive(*p) && !first.contains(p)).collect();
    struct Cont(Vec<u32>);
    impl Drop for Cont {
        fn drop(&mut self) {
            for p in &self.0 {
                signal_quietly(*p, SIGCONT);
            }
        }
    }
    let _cont = Cont(second.clone());
    for p in &second {
        signal(*p, SIGSTOP);
    }
    wait_until("replacements of the stopped executors", Duration::from_secs(30), || {
        children(d.pid()).into_iter().filter(|p| alive(*p) && !first.contains(p) && !second.contains(p)).count() == 2
    });
    d.drain();
    assert!(next_batch(&mut d, Duration::from_secs(30)) && next_batch(&mut d, Duration::from_secs(30)));
    for p in &second {
        signal(*p, SIGCONT);
    }
    let _ = d.child.kill();
}

/// A `cluster[1]` driver whose only executor is killed fails its batches
/// with a clear error once it has had no executor for
/// `--no-executor-timeout-ms`, instead of waiting for ever.
#[test]
fn a_driver_without_executors_fails_its_batches_instead_of_waiting_for_ever() {
    let _serial = serial();
    let mut c = Cluster::start(&["--no-executor-timeout-ms", "1500"], None);
    let killed = Instant::now();
    signal(c.exec.pid(), SIGKILL);
    for _ in 0..2 {
        let (at, line) =
            c.d.wait_line(Duration::from_secs(30), |l| progress_time(l).is_some() && l.contains("FAILED"))
                .unwrap_or_else(|| panic!("the driver ended:\n{}", c.d.text()));
        eprintln!("{:?} after the kill: {line}", at - killed);
        assert!(line.contains("no executor connected"), "no clear error: {line}");
    }
    let _ = c.d.child.kill();
}
