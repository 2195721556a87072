//! Issue 13's headline test: Kafka -> stateful, windowed WordCount ->
//! `save_as_text_files` on an S3 server, checkpoint on the same S3 server,
//! with at least 20 seeded driver SIGKILLs at random moments and one broker
//! restart during the run. The output objects must be byte-identical to an
//! uninterrupted run's.
//!
//! Real servers only: moto's S3 server (tests/object_store.rs) holds the
//! checkpoint, the outputs and the broker's own log; Tansu
//! (tests/kafka.rs) keeps its log on that S3 server, so killing the broker
//! and starting it again on the same port and storage is a true restart
//! (nothing is lost with the process). The input is produced by kafka-python,
//! part of it gzip-compressed. Every record is produced before the first
//! driver starts and each batch takes a fixed number of records per
//! partition (`max_rate_per_partition`), so a batch's contents do not depend
//! on when it runs: the clean run is the reference.

use crate::common::*;
use crate::drivers::*;
use crate::kafka::{free_port, lines, Broker};
use crate::object_store::S3Server;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Batches of the comparison (200 ms each, logical clock).
const BATCHES: i64 = 30;
const SEED: u64 = 20_261_130;

fn job(dir: &Path, name: &str, brokers: &str, topic: &str) -> std::path::PathBuf {
    // 3 partitions x 25 records/s x 0.2 s: 15 records a batch; 300 records
    // make 20 batches of input, then nearly empty ones (the window drains).
    let text = format!(
        r#"batch_interval = "200ms"
clock = "logical"
[modules]
wordcount = "{}"
[sources.lines]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
starting_offsets = "earliest"
max_rate_per_partition = 25
broker_timeout_ms = 60000
[streams]
words    = "lines.flat_map(wordcount.split)"
pairs    = "words.map(wordcount.pair)"
totals   = "pairs.update_state_by_key(wordcount.running_total).checkpoint(800ms)"
windowed = "pairs.reduce_by_key_and_window(wordcount.sum, wordcount.subtract, 1200ms, 400ms)"
[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "s3://weir-k/{name}/totals"
[[outputs]]
stream = "windowed"
type = "save_as_text_files"
prefix = "s3://weir-k/{name}/windowed"
"#,
        module("wordcount.wasm").display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// The objects of batches at most `until` ms (`totals-<time>/...`).
fn until(objects: &BTreeMap<String, Vec<u8>>, until: i64) -> BTreeMap<String, Vec<u8>> {
    objects
        .iter()
        .filter(|(k, _)| {
            let dir = k.split('/').next().unwrap_or("");
            dir.rsplit_once('-').and_then(|(_, t)| t.parse::<i64>().ok()).is_some_and(|t| t <= until)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn kafka_windowed_wordcount_on_s3_is_byte_identical_after_20_sigkills_and_a_broker_restart() {
    let Some(s3) = S3Server::start() else { return };
    s3.bucket("weir-k");
    s3.bucket("tansu-log");
    let env = s3.env_pairs();
    let port = free_port();
    let mut broker = Broker::start_with(port, "s3://tansu-log/", &env);
    let started = Instant::now();
    let input = lines(SEED, 300);
    // An empty line per partition (no words, whether it is read or not):
    // Tansu 0.6 with its log on S3 has been seen to report a partition's
    // end one short, hiding its newest record.
    let empty = vec![String::new(); 3];
    let (topic, whole) =
        broker.produce_verified("lines", 3, &[(&input[..210], &[]), (&input[210..], &["gzip"]), (&empty, &[])]);
    eprintln!("produced in {:?}", started.elapsed());
    let tmp = tempfile::tempdir().unwrap();
    let end = BATCHES * 200;

    // The reference: one uninterrupted run.
    let clean = job(tmp.path(), "clean", &broker.addr(), &topic);
    let mut c = s3.weir();
    c.args(["run", clean.to_str().unwrap(), "--checkpoint", "s3://weir-k/ckpt-clean", "--batches"])
        .arg(BATCHES.to_string());
    let mut d = Driver::spawn(&mut c);
    // 30 batches take about 30 s on a quiet machine; under CI's load a
    // batch on this S3 server has taken 2.5 s. Bounds against a hang only.
    let status = d.wait_exit(Duration::from_secs(300), "the clean run");
    assert!(status.success(), "the clean run failed: {}", d.log());
    let expected = until(&s3.objects("weir-k", "clean/"), end);
    let last_totals = expected
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("totals-{end}/part-")))
        .flat_map(|(_, v)| text(v).lines().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    let native = native_counts(input.iter().map(String::as_str));
    let totals = sum_counts(&last_totals);
    if whole {
        assert_eq!(totals, native, "the clean run's totals; its log:\n{}", d.log());
    } else {
        // The broker kept only part of the input (Tansu on S3, see
        // `produce_verified`): the totals can only be checked for words and
        // counts that were produced; the recovered runs are still compared
        // byte for byte with this clean run below.
        eprintln!("the broker lost part of the input: the clean run's totals are checked against it as a bound");
        assert!(!totals.is_empty(), "the clean run counted nothing; its log:\n{}", d.log());
        for (w, n) in &totals {
            assert!(
                native.get(w).is_some_and(|m| n <= m),
                "the clean run counted {w} {n} times, more than produced; its log:\n{}",
                d.log()
            );
        }
    }
    assert_eq!(
        expected.keys().filter(|k| k.ends_with("/_SUCCESS")).count() as i64,
        BATCHES + BATCHES / 2,
        "one _SUCCESS per batch (totals) and per slide of two batches (windowed)"
    );
    eprintln!("clean run done after {:?}", started.elapsed());

    // The same job, killed again and again at seeded moments.
    let killed = job(tmp.path(), "killed", &broker.addr(), &topic);
    let mut rng = Rng(SEED);
    let (mut kills, mut recoveries, mut restarted_broker) = (0, 0, false);
    for run in 0.. {
        assert!(run < 80, "seed {SEED}: the job never finished ({kills} kills)");
        let mut c = s3.weir();
        c.args(["run", killed.to_str().unwrap(), "--checkpoint", "s3://weir-k/ckpt-killed", "--batches"])
            .arg(BATCHES.to_string());
        let mut d = Driver::spawn(&mut c);
        let deadline = Instant::now() + Duration::from_secs(60);
        if kills < 20 {
            // A seeded moment: after 0-3 progress lines (0: during start-up
            // or recovery) and a further 0-149 ms.
            let what = format!("a progress line (seed {SEED})");
            let mut want = rng.below(4);
            while want > 0 {
                match d.next_line(deadline, &what) {
                    Some(l) if progress(&l).is_some() => want -= 1,
                    Some(_) => {}
                    None => break,
                }
            }
            if kills == 10 && !restarted_broker {
                // The broker restart: killed while this driver runs, the
                // driver warns (naming it) and waits; started again on the
                // same port and storage, the run goes on.
                broker.signal(libc::SIGKILL);
                let _ = broker.child.wait();
                let warned = d.wait_for(deadline, &format!("a warning naming the broker (seed {SEED})"), |l| {
                    l.contains("unreachable")
                });
                assert!(warned.contains(&broker.addr()), "seed {SEED}: {warned}");
                // The batch that warned waits for the broker; the batch
                // before it may still be writing. So a batch at least two
                // past the last one completed before the warning was read
                // from the restarted broker, whether input is left or not
                // (a broker that lost records runs out sooner).
                let log = d.log();
                let before = log[..log.find(&warned).unwrap_or(log.len())]
                    .lines()
                    .filter_map(progress)
                    .map(|(t, _)| t)
                    .max()
                    .unwrap_or(i64::MIN / 2);
                broker = Broker::start_with(port, "s3://tansu-log/", &env);
                restarted_broker = true;
                d.wait_for(deadline, &format!("a batch after the broker restart (seed {SEED})"), |l| {
                    progress(l).is_some_and(|(t, n)| n > 0 || t >= before + 400)
                });
            }
            std::thread::sleep(Duration::from_millis(rng.below(150)));
            d.kill();
            kills += 1;
            let log = d.log();
            assert!(!log.contains("panicked"), "seed {SEED}: {log}");
            recoveries += log.contains("recovered from checkpoint") as u32;
            continue;
        }
        let status = d.wait_exit(Duration::from_secs(300), &format!("the last run to finish (seed {SEED})"));
        assert!(status.success(), "seed {SEED}: the last run failed: {}", d.log());
        recoveries += d.log().contains("recovered from checkpoint") as u32;
        break;
    }
    assert!(restarted_broker);
    assert!(recoveries >= 10, "seed {SEED}: only {recoveries} runs recovered from the checkpoint");
    let got = until(&s3.objects("weir-k", "killed/"), end);
    assert_same_tree(&got, &expected, &format!("seed {SEED}: outputs after {kills} SIGKILLs and a broker restart"));
    eprintln!("{kills} SIGKILLs, {recoveries} recoveries, a broker restart: identical, in {:?}", started.elapsed());
}
