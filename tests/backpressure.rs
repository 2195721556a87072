//! Backpressure end to end: a socket job whose UDF (`testops.spin`, tens of
//! microseconds a record) is slower than its input, fed as fast as TCP
//! takes it. With `backpressure = true` the batches' scheduling delay stays
//! bounded and the rate limit settles; without it the first batches take
//! everything and the delay grows. Every line sent is in the output exactly
//! once, also across a SIGKILL of a rate-limited driver (a batch then takes
//! part of what was received, and of its write-ahead log ranges).
//!
//! Everything is measured from the driver's progress lines (its console
//! listener's batch-completed events) and its outputs, never by sleeping.

use crate::common::*;
use crate::drivers::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use std::time::{Duration, Instant};
use weir::checkpoint::wal;

const TIMEOUT: Duration = Duration::from_secs(120);
const INTERVAL_MS: u64 = 200;

/// One completed batch as its progress line tells it.
#[derive(Debug, Clone, Copy)]
struct Batch {
    time: i64,
    records: u64,
    processing_ms: u64,
    scheduling_ms: u64,
    /// The rate limit of the (only) source, records per second.
    limit: Option<f64>,
}

/// Parses `batch T ms: N records in, processed in P ms, scheduling delay D
/// ms[, rate limit R records/s]`.
fn batch(line: &str) -> Option<Batch> {
    let (time, records) = progress(line)?;
    let (_, rest) = line.split_once("processed in ")?;
    let (p, rest) = rest.split_once(" ms")?;
    let (_, rest) = rest.split_once("scheduling delay ")?;
    let (d, rest) = rest.split_once(" ms")?;
    let limit = rest.split_once("rate limit ").and_then(|(_, r)| r.split_once(" records/s")).map(|(r, _)| r);
    Some(Batch {
        time,
        records,
        processing_ms: p.parse().ok()?,
        scheduling_ms: d.parse().ok()?,
        limit: limit.and_then(|r| if r == "unbounded" { None } else { r.parse().ok() }),
    })
}

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("line-{i:07}")).collect()
}

/// Writes `lines` as fast as the connection takes them (a rate-limited
/// receiver slows this thread through TCP), then keeps it open.
fn feed(mut conn: TcpStream, lines: Vec<String>) -> std::thread::JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        for chunk in lines.chunks(1000) {
            let mut s = chunk.join("\n");
            s.push('\n');
            if conn.write_all(s.as_bytes()).is_err() {
                break;
            }
        }
        conn
    })
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    job: PathBuf,
    listener: TcpListener,
}

impl Setup {
    fn new(rate: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let job = dir.join("job.toml");
        let body = format!(
            "batch_interval = \"{INTERVAL_MS}ms\"\n\
             parallelism = 1\n\
             {rate}\n\
             [modules]\n\
             testops = \"{}\"\n\
             [sources.lines]\n\
             type = \"socket\"\n\
             host = \"127.0.0.1\"\n\
             port = {port}\n\
             [streams]\n\
             slow = \"lines.map(testops.spin)\"\n\
             [[outputs]]\n\
             stream = \"slow\"\n\
             type = \"save_as_text_files\"\n\
             prefix = \"out/lines\"\n",
            module("testops.wasm").display()
        );
        std::fs::write(&job, body).unwrap();
        Setup { _tmp: tmp, dir, job, listener }
    }

    fn driver(&self) -> Driver {
        Driver::spawn(
            weir()
                .current_dir(&self.dir)
                .arg("run")
                .arg(&self.job)
                .args(["--master", "local[1]", "--clock", "wall", "--checkpoint"])
                .arg(self.dir.join("ckpt")),
        )
    }

    fn outputs(&self) -> Vec<String> {
        read_outputs(&self.dir.join("out"), "lines").into_values().flatten().collect()
    }
}

/// Reads progress lines until the batches took `n` records in all and the
/// job has caught up (an empty batch started less than an interval late);
/// returns every batch seen.
fn until_caught_up(d: &mut Driver, n: u64, deadline: Instant) -> Vec<Batch> {
    let mut seen = Vec::new();
    let mut taken = 0;
    loop {
        let line = d.wait_for(deadline, "progress lines until every line is taken", |l| batch(l).is_some());
        let b = batch(&line).unwrap();
        taken += b.records;
        seen.push(b);
        if taken >= n && b.records == 0 && b.scheduling_ms < INTERVAL_MS {
            break;
        }
    }
    assert_eq!(taken, n, "batches took more lines than were sent:\n{}", d.log());
    seen
}

/// Every line sent is in the outputs, once.
fn assert_exactly_once(got: Vec<String>, sent: &[String], what: &str) {
    let total = got.len();
    let distinct: BTreeSet<String> = got.into_iter().collect();
    assert_eq!(distinct.len(), total, "{what}: duplicated lines in the output");
    assert_eq!(distinct, sent.iter().cloned().collect::<BTreeSet<_>>(), "{what}: lines lost or changed");
}

/// Runs a job over `n` lines sent at once; returns its batches.
fn run(rate: &str, n: usize) -> Vec<Batch> {
    let s = Setup::new(rate);
    let mut d = s.driver();
    let sent = lines(n);
    let feeder = feed(accept(&s.listener, TIMEOUT), sent.clone());
    let seen = until_caught_up(&mut d, n as u64, Instant::now() + TIMEOUT);
    d.kill();
    drop(feeder.join());
    assert_exactly_once(s.outputs(), &sent, rate);
    seen
}

/// A spin is tens of microseconds: 60 000 lines are seconds of work, far
/// more than one 200 ms batch can process.
const LINES: usize = 60_000;

/// Records per second of processing time over `batches`.
fn processing_rate(batches: &[Batch]) -> f64 {
    let (n, ms) = batches.iter().fold((0, 0), |(n, ms), b| (n + b.records, ms + b.processing_ms));
    n as f64 * 1000.0 / ms.max(1) as f64
}

#[test]
fn backpressure_bounds_the_scheduling_delay_where_an_unlimited_job_falls_behind() {
    let free = run("", LINES);
    // The limited run must last long enough for the estimator to settle and
    // be judged (at least 10 batches after the first 5) whatever this
    // machine's speed: it gets about 30 batches' worth of what the free run
    // processed per second (a fast machine once finished 30 000 lines in 12
    // batches).
    let per_batch = processing_rate(&free) * INTERVAL_MS as f64 / 1000.0;
    let n = LINES.max((per_batch * 30.0) as usize);
    let limited = run("backpressure = true\n[rate]\ninitial = 500\nmin = 50", n);
    let report = |bs: &[Batch]| {
        bs.iter()
            .map(|b| format!("{} ms: {} in, delay {} ms, limit {:?}", b.time, b.records, b.scheduling_ms, b.limit))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Without backpressure: a batch takes everything received, so one batch
    // holds seconds of work and the batches after it start seconds late.
    let most = free.iter().map(|b| b.records).max().unwrap();
    let worst = free.iter().map(|b| b.scheduling_ms).max().unwrap();
    eprintln!("without backpressure:\n{}\nwith backpressure:\n{}", report(&free), report(&limited));
    assert!(free.iter().all(|b| b.limit.is_none()), "no limit without backpressure:\n{}", report(&free));
    assert!(
        worst >= 5 * INTERVAL_MS,
        "without backpressure the scheduling delay should grow past 5 batch intervals:\n{}",
        report(&free)
    );

    // With it: the first batch takes at most initial × interval (100 lines);
    // then every batch is bounded by the limit in force when it polled.
    let first = limited.iter().find(|b| b.records > 0).unwrap();
    assert!(first.records <= 100, "initial = 500/s over 200 ms:\n{}", report(&limited));
    for b in &limited {
        let l = b.limit.unwrap_or_else(|| panic!("a rate limit on every batch:\n{}", report(&limited)));
        assert!(l >= 50.0, "never below min:\n{}", report(&limited));
        // The line rounds the limit to a whole number.
        let bound = ((l + 0.5) * INTERVAL_MS as f64 / 1000.0).ceil() as u64;
        assert!(b.records <= bound, "batch {} took {} > limit {l}/s:\n{}", b.time, b.records, report(&limited));
    }
    assert!(limited.iter().map(|b| b.records).max().unwrap() < most, "{}", report(&limited));
    // The delay stays bounded once the estimator has measured a few batches
    // (the first batches run at `initial`, before any estimate).
    let settled: Vec<&Batch> = limited.iter().filter(|b| b.records > 0).skip(5).collect();
    assert!(settled.len() >= 10, "enough batches to judge:\n{}", report(&limited));
    let bounded = settled.iter().map(|b| b.scheduling_ms).max().unwrap();
    assert!(
        bounded < worst && bounded <= 5 * INTERVAL_MS,
        "with backpressure the scheduling delay stays under 5 intervals (got {bounded} ms; {worst} ms without):\n{}",
        report(&limited)
    );
    // The rate converges on what the job processes: over the last half of
    // the run the median limit is within a factor of 3 of the records per
    // second of processing time (the PID oscillates around it, as Spark's
    // does, and the shared machine's load moves both).
    let tail = &settled[settled.len() / 2..];
    let mut limits: Vec<f64> = tail.iter().filter_map(|b| b.limit).collect();
    limits.sort_by(f64::total_cmp);
    let median = limits[limits.len() / 2];
    let processed = processing_rate(&settled.iter().map(|b| **b).collect::<Vec<_>>());
    assert!(
        median >= processed / 3.0 && median <= processed * 3.0,
        "the rate limit should settle near the processing rate ({processed:.0}/s; median limit {median:.0}/s):\n{}",
        report(&limited)
    );
}

#[test]
fn a_rate_limited_receiver_loses_and_repeats_nothing_across_a_sigkill() {
    let s = Setup::new("backpressure = true\n[rate]\ninitial = 2000\nmin = 100\nmax = 5000");
    let n = 20_000;
    let sent = lines(n);
    let mut d = s.driver();
    let feeder = feed(accept(&s.listener, TIMEOUT), sent.clone());
    let deadline = Instant::now() + TIMEOUT;
    // Killed after a few batches that took part of the input: the receiver
    // holds more than a batch takes, so batches end inside log ranges.
    let mut taken = 0;
    let mut batches = 0;
    while batches < 6 {
        let b = batch(&d.wait_for(deadline, "six batches with records", |l| batch(l).is_some())).unwrap();
        if b.records > 0 {
            batches += 1;
            taken += b.records;
        }
    }
    d.kill();
    drop(feeder.join());
    // What the receiver logged was received (a prefix of what was sent, in
    // order); what was still in the socket is lost with the connection, so
    // the sender sends it again to the next run.
    let (logged, _) = wal::read_from(&s.dir.join("ckpt/wal"), 0, wal::WalPosition { seq: 0, offset: 0 }).unwrap();
    assert_eq!(logged, sent[..logged.len()], "the log holds what was sent, in order");
    assert!(
        (logged.len() as u64) > taken && logged.len() < n,
        "the kill should come while received lines wait for a batch ({taken} taken, {} logged)",
        logged.len()
    );

    let mut d = s.driver();
    let feeder = feed(accept(&s.listener, TIMEOUT), sent[logged.len()..].to_vec());
    // Until every line is in the outputs: then nothing more may come.
    loop {
        d.wait_for(deadline, "progress lines until every line is written", |l| batch(l).is_some());
        if s.outputs().len() >= n {
            break;
        }
    }
    d.kill();
    drop(feeder.join());
    assert_exactly_once(s.outputs(), &sent, "across a SIGKILL");
}
