//! Beyond one host: a driver and three executors on simulated hosts (Linux
//! network namespaces, `tests/netns_hosts.rs`), under nemeses in the manner
//! of Jepsen, at seeded moments — SIGKILL of an executor, SIGSTOP/SIGCONT,
//! a host's link down and up while its processes run on, executors
//! partitioned from each other but not from the driver, two of three
//! executors killed at once, and the driver killed and started again on
//! another host from the same checkpoint. Every run's outputs must be
//! byte-identical to a failure-free `local[2]` run of the same job.
//!
//! The executors run `weir executor --driver D1,D2 --rejoin`: an executor
//! whose driver went away (died, moved, or declared it lost and closed its
//! connection) joins again as a new incarnation; the test itself is the
//! "supervisor" that starts a new executor where one was SIGKILLed.
//!
//! The tests need root (network namespaces); elsewhere they say why they
//! were skipped, and under `WEIR_REQUIRE_TEST_SERVERS=1` (scripts/test.sh)
//! they fail instead. Each run prints the time from every fault to the
//! first batch completed after it (recorded in `docs/fault-tolerance.md`);
//! timings are figures, not assertions, beyond generous deadlines that turn
//! a hang into a failure.

use crate::cluster::{serial, signal, Proc, SIGCONT, SIGKILL, SIGSTOP};
use crate::common::*;
use crate::netns_hosts::{require, World};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SECRET: &str = "netns-test-secret";
/// The driver's heartbeat timeout in these runs (ms).
const HEARTBEAT_MS: u64 = 1000;
/// How long any awaited event may take before the test fails as hung.
const PATIENCE: Duration = Duration::from_secs(60);
const PORT: u16 = 7077;

/// The nemesis seed: `default`, or `WEIR_NEMESIS_SEED` (to run other
/// schedules; the test prints the seed it used).
fn seed(default: u64) -> u64 {
    let s = std::env::var("WEIR_NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("nemesis seed {s}");
    s
}

/// Batch time of a progress line.
fn batch_of(l: &str) -> Option<i64> {
    crate::cluster::progress_time(l)
}

/// The driver's executor-loss line for `pid`.
fn lost_line(l: &str, pid: u32) -> bool {
    l.contains(") lost: ") && l.contains(&format!("(pid {pid},"))
}

/// The driver's join line for `pid`: `executor N (pid P, blocks at A) joined ...`.
fn joined_line(l: &str, pid: u32) -> bool {
    l.contains(" joined with ") && l.contains(&format!("(pid {pid},"))
}

/// Runs the job on `local[2]` (on this machine, no faults) and returns its
/// outputs: the reference every faulty run must equal.
fn reference(batches: usize) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let job = stateful_job(dir.path(), batches);
    let ckpt = dir.path().join("ckpt");
    let out = run(weir()
        .args(["run", job.to_str().unwrap(), "--master", "local[2]", "-q", "--checkpoint"])
        .arg(&ckpt)
        .env_remove("WEIR_SECRET"));
    assert!(out.status.success(), "the reference run failed: {}", text(&out.stderr));
    tree(&dir.path().join("out"))
}

/// A fault and what followed it.
struct Figure {
    what: String,
    /// Fault -> the driver declared the executor(s) lost.
    lost_after: Option<Duration>,
    /// Fault -> the first batch completed after it.
    first_batch_after: Duration,
    /// Loss declared -> the first batch completed after that.
    after_loss: Option<Duration>,
}

fn print_figures(test: &str, figures: &[Figure]) {
    let mut ms: Vec<u128> = figures.iter().map(|f| f.first_batch_after.as_millis()).collect();
    ms.sort();
    for f in figures {
        let ms = |d: Option<Duration>| d.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "-".into());
        eprintln!(
            "{test}: {:<44} fault -> lost {:>8}; fault -> first batch {:>8}; lost -> first batch {:>8}",
            f.what,
            ms(f.lost_after),
            ms(Some(f.first_batch_after)),
            ms(f.after_loss)
        );
    }
    if !ms.is_empty() {
        let p = |q: f64| ms[(((ms.len() - 1) as f64) * q).round() as usize];
        eprintln!("{test}: {} faults; fault -> first batch: median {} ms, p99 {} ms", ms.len(), p(0.5), p(0.99));
    }
}

/// The driver of a run, with what it said.
struct Run<'w> {
    world: &'w World,
    driver: Proc,
    /// Executor host -> its current executor process.
    execs: BTreeMap<String, Proc>,
    drivers: String,
}

impl<'w> Run<'w> {
    /// An executor on `host` that rejoins whichever driver of the list runs.
    fn start_executor(&mut self, host: &str) -> u32 {
        let p = self.world.spawn(
            host,
            SECRET,
            &[
                "-v",
                "executor",
                "--driver",
                &self.drivers,
                "--cores",
                "2",
                "--rejoin",
                "--rejoin-timeout-ms",
                "60000",
                "--heartbeat-timeout-ms",
                &HEARTBEAT_MS.to_string(),
            ],
        );
        let pid = p.pid();
        self.execs.insert(host.to_string(), p);
        pid
    }

    fn pid(&self, host: &str) -> u32 {
        self.execs[host].pid()
    }

    /// Waits for a driver line satisfying `pred`; its arrival time.
    fn await_driver(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Instant {
        match self.driver.wait_line(PATIENCE, pred) {
            Some((t, _)) => t,
            None => panic!("the driver ended before {what}:\n{}", self.driver.text()),
        }
    }

    /// The first batch completed after `since` (among the lines read
    /// already, or the next one).
    fn first_batch_after(&mut self, since: Instant) -> Duration {
        let seen = self.driver.timed_lines().iter().find(|(t, l)| *t >= since && batch_of(l).is_some());
        if let Some((t, _)) = seen {
            return *t - since;
        }
        loop {
            let t = self.await_driver("a batch completed after the fault", |l| batch_of(l).is_some());
            if t >= since {
                return t - since;
            }
        }
    }

    /// Lets `n` batches complete (a seeded pause between faults).
    fn batches(&mut self, n: u64) {
        for _ in 0..n {
            self.await_driver("the next batch", |l| batch_of(l).is_some());
        }
    }
}

/// Waits for executor `p` (after its connection was closed) to say it joins again.
fn await_rejoin(p: &mut Proc, what: &str) {
    if p.wait_line(PATIENCE, |l| l.contains("joining again as a new executor")).is_none() {
        panic!("{what}: the executor exited instead of rejoining:\n{}", p.text());
    }
}

/// SIGKILL and SIGSTOP of one executor, its host's link down, executors
/// partitioned from each other, two executors killed at once: in a seeded
/// order, at seeded moments, during one run of the stateful windowed job.
/// After each loss the driver must say the executor was lost (for the silent
/// ones, by the heartbeat timeout), finish a batch without it, and take it
/// back as a new incarnation when it returns (a paused or cut-off executor
/// rejoins by itself; a killed one is restarted). The outputs must equal
/// the failure-free run's, byte for byte.
#[test]
fn netns_executor_nemeses_keep_outputs_identical() {
    let Some(()) = require("netns_executor_nemeses_keep_outputs_identical") else { return };
    let _serial = serial();
    let batches = 200;
    let expected = std::thread::spawn(move || reference(batches));
    let world = World::new(&["driver", "e1", "e2", "e3"]);
    let job = stateful_job(&world.host("driver").dir, batches);
    let listen = format!("{}:{PORT}", world.host("driver").ip);
    let driver = world.spawn(
        "driver",
        SECRET,
        &[
            "-v",
            "run",
            job.to_str().unwrap(),
            "--master",
            "cluster[3]",
            "--listen",
            &listen,
            "--checkpoint",
            "ckpt",
            "--heartbeat-timeout-ms",
            &HEARTBEAT_MS.to_string(),
        ],
    );
    let mut r = Run { world: &world, driver, execs: BTreeMap::new(), drivers: listen.clone() };
    for h in ["e1", "e2", "e3"] {
        r.start_executor(h);
    }
    r.batches(3);

    let mut rng = Rng(seed(20261130));
    let mut order = vec!["kill", "pause", "link", "partition", "kill-two"];
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let hosts = ["e1", "e2", "e3"];
    let mut figures = Vec::new();
    for nemesis in order {
        r.batches(2 + rng.below(4));
        std::thread::sleep(Duration::from_millis(rng.below(150))); // the fault's seeded moment
        let victim = hosts[rng.below(3) as usize];
        let fig = match nemesis {
            "kill" => kill(&mut r, &[victim]),
            "kill-two" => {
                let other = hosts.iter().copied().find(|h| *h != victim).unwrap();
                kill(&mut r, &[victim, other])
            }
            "pause" => pause(&mut r, victim),
            "link" => link_down(&mut r, victim),
            _ => partition_executors(&mut r, &hosts),
        };
        figures.push(fig);
    }
    let status = r.driver.finish();
    let log = r.driver.text();
    assert!(status.success(), "the job failed under the nemeses ({status}):\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    for (h, p) in r.execs.iter_mut() {
        let s = p.finish();
        assert!(s.success(), "executor on {h} failed ({s}):\n{}", p.text());
    }
    let expected = expected.join().unwrap();
    let got = tree(&world.host("driver").dir.join("out"));
    crate::drivers::assert_same_tree(&got, &expected, "after the executor nemeses");
    print_figures("executor nemeses", &figures);
}

/// A silent executor (stopped, or cut off) is declared lost by the
/// heartbeat timeout: allowed a generous margin for a loaded machine, but
/// not the minutes a TCP retransmission timeout would take.
fn assert_lost_in_time(after: Duration, what: &str) {
    let bound = Duration::from_millis(HEARTBEAT_MS + 4000);
    assert!(after <= bound, "{what} was declared lost after {after:?}, not within the heartbeat timeout ({HEARTBEAT_MS} ms, margin to {bound:?})");
}

/// SIGKILLs the executors on `victims` at the same moment; waits for the
/// losses and a batch without them, then starts new ones there.
fn kill(r: &mut Run, victims: &[&str]) -> Figure {
    let pids: Vec<u32> = victims.iter().map(|h| r.pid(h)).collect();
    let at = Instant::now();
    for p in &pids {
        signal(*p, SIGKILL);
    }
    // The losses in whatever order the driver notices them.
    let mut lost = at;
    let mut pending = pids.clone();
    while !pending.is_empty() {
        let left = pending.clone();
        lost = r.await_driver("the killed executors' losses", |l| left.iter().any(|p| lost_line(l, *p)));
        let line = r.driver.lines().last().unwrap_or_default().to_string();
        pending.retain(|p| !lost_line(&line, *p));
    }
    let first = r.first_batch_after(at);
    let after_loss = r.first_batch_after(lost);
    for h in victims {
        let mut old = r.execs.remove(*h).unwrap();
        old.finish();
        let pid = r.start_executor(h);
        r.await_driver("the restarted executor's join", |l| joined_line(l, pid));
    }
    Figure {
        what: format!("SIGKILL of {}", victims.join(" and ")),
        lost_after: Some(lost - at),
        first_batch_after: first,
        after_loss: Some(after_loss),
    }
}

/// SIGSTOPs one executor past the heartbeat timeout: it must be declared
/// lost by silence while stopped; once continued it finds its connection
/// closed and rejoins as a new incarnation (same pid, new executor id).
fn pause(r: &mut Run, victim: &str) -> Figure {
    let pid = r.pid(victim);
    let at = Instant::now();
    signal(pid, SIGSTOP);
    let lost = r.await_driver("the paused executor's loss", |l| lost_line(l, pid) && l.contains("no heartbeat"));
    assert_lost_in_time(lost - at, "a stopped executor");
    let first = r.first_batch_after(at);
    let after_loss = r.first_batch_after(lost);
    signal(pid, SIGCONT);
    let p = r.execs.get_mut(victim).unwrap();
    await_rejoin(p, "after SIGCONT");
    r.await_driver("the continued executor's rejoin", |l| joined_line(l, pid));
    Figure {
        what: format!("SIGSTOP of {victim} (SIGCONT after loss)"),
        lost_after: Some(lost - at),
        first_batch_after: first,
        after_loss: Some(after_loss),
    }
}

/// Takes one executor host's link down: the executor runs on but reaches
/// nobody. It must be declared lost by the heartbeat timeout while the link
/// is still down, a batch must complete without it, and when the link
/// comes back it must rejoin as a new incarnation, never deliver a result
/// of its old one.
fn link_down(r: &mut Run, victim: &str) -> Figure {
    let pid = r.pid(victim);
    let at = Instant::now();
    r.world.link(victim, false);
    let lost = r.await_driver("the cut-off executor's loss", |l| lost_line(l, pid));
    assert_lost_in_time(lost - at, "a cut-off executor");
    let first = r.first_batch_after(at);
    let after_loss = r.first_batch_after(lost);
    r.world.link(victim, true);
    let p = r.execs.get_mut(victim).unwrap();
    await_rejoin(p, "after its link came back");
    r.await_driver("the reconnected executor's rejoin", |l| joined_line(l, pid));
    Figure {
        what: format!("link of {victim} down (up after loss)"),
        lost_after: Some(lost - at),
        first_batch_after: first,
        after_loss: Some(after_loss),
    }
}

/// Cuts every executor off from the other executors (they still reach the
/// driver: heartbeats pass, shuffle fetches between them fail) for a few
/// batches, then heals.
fn partition_executors(r: &mut Run, hosts: &[&str]) -> Figure {
    let from = r.driver.timed_lines().len();
    let at = Instant::now();
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            r.world.partition(a, b, true);
        }
    }
    let first = r.first_batch_after(at);
    r.batches(1);
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            r.world.partition(a, b, false);
        }
    }
    // Heartbeats passed all along: nobody was declared lost.
    let during: Vec<&str> = r.driver.timed_lines()[from..].iter().map(|(_, l)| l.as_str()).collect();
    // The partition was real: a shuffle fetch between executors failed, and
    // the scheduler kept a job's tasks on one executor.
    assert!(
        during.iter().any(|l| l.contains("could not fetch from a peer")),
        "no shuffle fetch failed while the executors were partitioned:
{}",
        during.join("\n")
    );
    assert!(
        !during.iter().any(|l| l.contains(") lost: ")),
        "an executor was declared lost although it reached the driver:
{}",
        during.join("\n")
    );
    Figure {
        what: "executors partitioned from each other".into(),
        lost_after: None,
        first_batch_after: first,
        after_loss: None,
    }
}

/// The driver is SIGKILLed at seeded moments and started again on the
/// other driver host, from the same checkpoint (a directory only the two
/// driver hosts use: the stand-in for object storage, which also holds the
/// job's input and outputs). The executors, given both addresses, find the
/// new driver by themselves. Outputs must equal the failure-free run's.
#[test]
fn netns_driver_moves_to_another_host_and_executors_follow() {
    let Some(()) = require("netns_driver_moves_to_another_host_and_executors_follow") else { return };
    let _serial = serial();
    let batches = 90;
    let expected = std::thread::spawn(move || reference(batches));
    let world = World::new(&["d1", "d2", "e1", "e2", "e3"]);
    let store = world.root.path().join("object-store");
    std::fs::create_dir_all(&store).unwrap();
    let job = stateful_job(&store, batches);
    let addr = |h: &str| format!("{}:{PORT}", world.host(h).ip);
    let drivers = format!("{},{}", addr("d1"), addr("d2"));
    let start_driver = |host: &str| -> Proc {
        let listen = addr(host);
        let ckpt = store.join("ckpt");
        world.spawn(
            host,
            SECRET,
            &[
                "-v",
                "run",
                job.to_str().unwrap(),
                "--master",
                "cluster[3]",
                "--listen",
                &listen,
                "--checkpoint",
                ckpt.to_str().unwrap(),
                "--heartbeat-timeout-ms",
                &HEARTBEAT_MS.to_string(),
            ],
        )
    };
    let mut r = Run { world: &world, driver: start_driver("d1"), execs: BTreeMap::new(), drivers };
    for h in ["e1", "e2", "e3"] {
        r.start_executor(h);
    }
    let mut rng = Rng(seed(77));
    let mut figures = Vec::new();
    let mut on = "d1";
    for _ in 0..3 {
        r.batches(3 + rng.below(8));
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        let old = r.driver.pid();
        let at = Instant::now();
        signal(old, SIGKILL);
        r.driver.finish();
        on = if on == "d1" { "d2" } else { "d1" };
        let started = Instant::now();
        r.driver = start_driver(on);
        let first = r.first_batch_after(started);
        assert!(
            r.driver.lines().any(|l| l.contains("recovered from checkpoint")),
            "the new driver did not recover from the checkpoint:\n{}",
            r.driver.text()
        );
        figures.push(Figure {
            what: format!("driver SIGKILLed, started on {on}"),
            lost_after: None,
            first_batch_after: first,
            after_loss: None,
        });
        let since_kill = started + first - at;
        eprintln!("driver move to {on}: kill -> first batch {} ms", since_kill.as_millis());
    }
    let status = r.driver.finish();
    let log = r.driver.text();
    assert!(status.success(), "the last driver failed ({status}):\n{log}");
    for (h, p) in r.execs.iter_mut() {
        let s = p.finish();
        assert!(s.success(), "executor on {h} failed ({s}):\n{}", p.text());
        let joins = p.lines().filter(|l| l.contains(" joined ")).count();
        assert!(joins >= 4, "executor on {h} joined {joins} driver(s), not all four:\n{}", p.text());
    }
    let expected = expected.join().unwrap();
    crate::drivers::assert_same_tree(&tree(&store.join("out")), &expected, "after the driver moved");
    print_figures("driver moves (new driver start -> first batch)", &figures);
}

/// The longest an executor may take, after it decided its driver was lost,
/// to join the new one: a connect to the vanished host times out (2 s),
/// the rejoin backoff (at most 500 ms), the handshake, and slack for a
/// loaded machine.
const REJOIN_BOUND: Duration = Duration::from_millis(2000 + 500 + 1500);

/// The driver's host vanishes for ever (its link goes down, then its process
/// dies unseen: no FIN or RST crosses the downed link), and a new driver
/// starts on the other driver host from the same checkpoint. Nothing tells
/// the executors their driver is gone but the driver's silence: each must
/// notice it within its heartbeat timeout (saying so), and join the new
/// driver within the heartbeat timeout plus one retry round — measured on
/// the new driver's join lines. Without driver heartbeats they would wait
/// for TCP to give up (many minutes). Outputs must equal the failure-free
/// run's.
#[test]
fn netns_driver_host_vanishes_and_executors_join_the_new_driver_within_the_heartbeat_timeout() {
    let Some(()) = require("netns_driver_host_vanishes_and_executors_join_the_new_driver_within_the_heartbeat_timeout")
    else {
        return;
    };
    let _serial = serial();
    let batches = 40;
    let expected = std::thread::spawn(move || reference(batches));
    let world = World::new(&["d1", "d2", "e1", "e2", "e3"]);
    let store = world.root.path().join("object-store");
    std::fs::create_dir_all(&store).unwrap();
    let job = stateful_job(&store, batches);
    let addr = |h: &str| format!("{}:{PORT}", world.host(h).ip);
    let drivers = format!("{},{}", addr("d1"), addr("d2"));
    let start_driver = |host: &str| -> Proc {
        let args = moving_driver_args(&job, &store, &addr(host));
        world.spawn(host, SECRET, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut r = Run { world: &world, driver: start_driver("d1"), execs: BTreeMap::new(), drivers };
    for h in ["e1", "e2", "e3"] {
        r.start_executor(h);
    }
    let mut rng = Rng(seed(9090));
    r.batches(3 + rng.below(5));
    std::thread::sleep(Duration::from_millis(rng.below(150)));
    let vanished = Instant::now();
    world.link("d1", false);
    signal(r.driver.pid(), SIGKILL);
    r.driver.finish();
    r.driver = start_driver("d2");
    let accepting = r.await_driver("the new driver accepting executors", |l| l.contains("accepting executors on"));
    // Each executor must notice by the heartbeat timeout, then retry.
    let bound = accepting.max(vanished + Duration::from_millis(HEARTBEAT_MS)) + REJOIN_BOUND;
    let pids: Vec<u32> = ["e1", "e2", "e3"].iter().map(|h| r.pid(h)).collect();
    let mut joins = Vec::new();
    for pid in &pids {
        let seen = r.driver.timed_lines().iter().find(|(_, l)| joined_line(l, *pid)).map(|(t, _)| *t);
        let t = seen.unwrap_or_else(|| r.await_driver("an executor joining the new driver", |l| joined_line(l, *pid)));
        assert!(
            t <= bound,
            "executor pid {pid} joined the new driver {} ms after its host vanished (bound {} ms):\n{}",
            (t - vanished).as_millis(),
            (bound - vanished).as_millis(),
            r.driver.text()
        );
        joins.push((t - vanished).as_millis());
    }
    let first = r.first_batch_after(accepting);
    let status = r.driver.finish();
    assert!(status.success(), "the new driver failed ({status}):\n{}", r.driver.text());
    for (h, p) in r.execs.iter_mut() {
        let s = p.finish();
        assert!(s.success(), "executor on {h} failed ({s}):\n{}", p.text());
        assert!(
            p.lines().any(|l| l.contains("sent nothing for") && l.contains("treating it as lost")),
            "executor on {h} did not notice its driver's silence:\n{}",
            p.text()
        );
    }
    crate::drivers::assert_same_tree(&tree(&store.join("out")), &expected.join().unwrap(), "after the host vanished");
    eprintln!(
        "driver host vanished: executors joined the new driver {joins:?} ms after; new driver accepting -> first batch {} ms",
        first.as_millis()
    );
}

/// A driver of the driver-move tests, listening on `listen`, its checkpoint
/// in the shared `store`.
fn moving_driver_args(job: &std::path::Path, store: &std::path::Path, listen: &str) -> Vec<String> {
    let ckpt = store.join("ckpt");
    let args = ["-v", "run", job.to_str().unwrap(), "--master", "cluster[3]", "--listen", listen, "--checkpoint"];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend([ckpt.to_str().unwrap().to_string(), "--heartbeat-timeout-ms".into(), HEARTBEAT_MS.to_string()]);
    v
}

/// All three executors SIGKILLed at once and kept away past the
/// no-executor timeout: batches must fail with the clear error (not hang),
/// the job must go on once new executors join, the driver must exit saying
/// how many batches failed, and a restart from the checkpoint must re-run
/// exactly those, leaving outputs identical to the failure-free run's.
#[test]
fn netns_all_executors_lost_fails_batches_clearly_then_a_restart_fills_them() {
    let Some(()) = require("netns_all_executors_lost_fails_batches_clearly_then_a_restart_fills_them") else {
        return;
    };
    let _serial = serial();
    let batches = 60;
    let expected = std::thread::spawn(move || reference(batches));
    let world = World::new(&["driver", "e1", "e2", "e3"]);
    let job = stateful_job(&world.host("driver").dir, batches);
    let listen = format!("{}:{PORT}", world.host("driver").ip);
    let driver_args = [
        "-v",
        "run",
        job.to_str().unwrap(),
        "--master",
        "cluster[3]",
        "--listen",
        &listen,
        "--checkpoint",
        "ckpt",
        "--heartbeat-timeout-ms",
        &HEARTBEAT_MS.to_string(),
        "--no-executor-timeout-ms",
        "1000",
    ];
    let driver = world.spawn("driver", SECRET, &driver_args);
    let mut r = Run { world: &world, driver, execs: BTreeMap::new(), drivers: listen.clone() };
    let hosts = ["e1", "e2", "e3"];
    for h in hosts {
        r.start_executor(h);
    }
    let mut rng = Rng(seed(4242));
    r.batches(3 + rng.below(6));
    let pids: Vec<u32> = hosts.iter().map(|h| r.pid(h)).collect();
    let at = Instant::now();
    for p in &pids {
        signal(*p, SIGKILL);
    }
    let failed = r.await_driver("a batch failed for want of executors", |l| {
        l.contains("FAILED") && l.contains("no executor connected")
    });
    for h in hosts {
        let mut old = r.execs.remove(h).unwrap();
        old.finish();
        r.start_executor(h);
    }
    let back = r
        .await_driver("a batch completed once executors were back", |l| batch_of(l).is_some() && !l.contains("FAILED"));
    let status = r.driver.finish();
    let log = r.driver.text();
    assert!(!status.success(), "the driver exited 0 although batches failed:\n{log}");
    let n_failed = log.lines().filter(|l| batch_of(l).is_some() && l.contains("FAILED")).count();
    assert!(
        log.contains(&format!("weir: {n_failed} of ")) && log.contains("batch(es) failed"),
        "the driver did not say how many batches failed ({n_failed}):\n{log}"
    );
    for p in r.execs.values_mut() {
        p.finish();
    }
    // A restart re-runs the failed (pending) batches: outputs complete.
    r.execs.clear();
    r.driver = world.spawn("driver", SECRET, &driver_args);
    for h in hosts {
        r.start_executor(h);
    }
    let status = r.driver.finish();
    assert!(status.success(), "the restarted driver failed ({status}):\n{}", r.driver.text());
    assert!(
        r.driver.lines().any(|l| l.contains(&format!("re-running {n_failed} pending"))),
        "the restart did not re-run the {n_failed} failed batch(es):\n{}",
        r.driver.text()
    );
    for p in r.execs.values_mut() {
        p.finish();
    }
    let expected = expected.join().unwrap();
    crate::drivers::assert_same_tree(&tree(&world.host("driver").dir.join("out")), &expected, "after the restart");
    eprintln!(
        "all executors lost: first failed batch {} ms after the kill, first good batch {} ms after it; {n_failed} batch(es) failed, re-run by the restart",
        (failed - at).as_millis(),
        (back - at).as_millis()
    );
}

/// Fencing across a partition (issue 18). The checkpoint lives on an
/// S3-compatible server (moto) on a host of its own. Driver A on d1 is cut
/// off from everyone (its link down) but kept running; driver B starts on
/// d2, takes the lease over once A's lapses (A cannot renew it), the
/// executors find B by A's silence, and B runs the job to its end. Then
/// A's link comes back: A must stop, fenced, naming both epochs, without
/// publishing any output; the outputs equal the failure-free run's. (A,
/// without executors, waits in its batch for the no-executor timeout, 60 s;
/// the first commit it tries after that is refused.)
#[test]
fn netns_a_partitioned_driver_kept_alive_is_fenced_after_a_takeover() {
    let Some(()) = require("netns_a_partitioned_driver_kept_alive_is_fenced_after_a_takeover") else { return };
    let py = repo().join("target/test-servers/py");
    if !py.join("moto").is_dir() {
        let msg = format!("moto is not installed in {} (run scripts/test-servers.sh)", py.display());
        assert!(std::env::var_os("WEIR_REQUIRE_TEST_SERVERS").is_none(), "{msg}");
        eprintln!("SKIPPED netns_a_partitioned_driver_kept_alive_is_fenced_after_a_takeover: {msg}");
        return;
    }
    let _serial = serial();
    let batches = 40;
    let expected = std::thread::spawn(move || reference(batches));
    let world = World::new(&["s3", "d1", "d2", "e1", "e2", "e3"]);
    let py = py.to_str().unwrap().to_string();
    let endpoint = format!("http://{}:9000", world.host("s3").ip);
    let _moto = world.spawn_program(
        "s3",
        "python3",
        &["-m", "moto.server", "-H", &world.host("s3").ip, "-p", "9000"],
        &[("PYTHONPATH", &py)],
    );
    let create =
        format!("import urllib.request as u; u.urlopen(u.Request('{endpoint}/weir-netns', method='PUT'), timeout=2)");
    crate::cluster::wait_until("moto on its host to create the bucket", PATIENCE, || {
        world.run_on("d2", "python3", &["-c", &create], &[])
    });
    let shared = world.root.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let job = stateful_job(&shared, batches);
    let addr = |h: &str| format!("{}:{PORT}", world.host(h).ip);
    let env = [
        ("WEIR_SECRET", SECRET),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let start_driver = |host: &str| -> Proc {
        let listen = addr(host);
        let args = [
            "-v",
            "run",
            job.to_str().unwrap(),
            "--master",
            "cluster[3]",
            "--listen",
            &listen,
            "--checkpoint",
            "s3://weir-netns/job",
            "--checkpoint-lease-ms",
            "1000",
            "--heartbeat-timeout-ms",
            "1000",
        ];
        world.spawn_program(host, env!("CARGO_BIN_EXE_weir"), &args, &env)
    };
    let drivers = format!("{},{}", addr("d1"), addr("d2"));
    let mut r = Run { world: &world, driver: start_driver("d1"), execs: BTreeMap::new(), drivers };
    for h in ["e1", "e2", "e3"] {
        r.start_executor(h);
    }
    let mut rng = Rng(seed(1818));
    r.batches(3 + rng.below(5));
    world.link("d1", false);
    let mut a = std::mem::replace(&mut r.driver, start_driver("d2"));
    let status = r.driver.finish();
    let blog = r.driver.text();
    assert!(status.success(), "driver B failed ({status}):\n{blog}");
    assert!(blog.contains("took over the checkpoint lease") && blog.contains("this driver is epoch 2"), "{blog}");
    let out_after_b = tree(&shared.join("out"));
    world.link("d1", true);
    let status = a.finish();
    let alog = a.text();
    assert!(!status.success(), "driver A exited 0 after the takeover:\n{alog}");
    assert!(alog.contains("fenced") && alog.contains("holds epoch 1") && alog.contains("epoch 2"), "{alog}");
    crate::drivers::assert_same_tree(&tree(&shared.join("out")), &out_after_b, "outputs after A came back");
    crate::drivers::assert_same_tree(&tree(&shared.join("out")), &expected.join().unwrap(), "after the takeover");
    for (h, p) in r.execs.iter_mut() {
        let s = p.finish();
        assert!(s.success(), "executor on {h} failed ({s}):\n{}", p.text());
    }
}
