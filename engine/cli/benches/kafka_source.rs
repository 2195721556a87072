//! The Kafka source's throughput as users run it: `weir run` of a WordCount
//! job reading a topic from its start, against a plain consumer loop of
//! the same client (rskafka) reading the same topic, in the same command.
//!
//!     cargo bench -p weir-cli --bench kafka_source
//!
//! A Tansu broker (in memory, installed by `scripts/kafka-broker.sh` under
//! `target/test-servers`, started on a free loopback port) is filled once
//! with WEIR_BENCH_RECORDS seeded lines (default 200 000, 10 words each)
//! over WEIR_BENCH_PARTITIONS partitions (default 2) by kafka-python. Every
//! repetition (WEIR_BENCH_REPS, default 3) then runs, back to back:
//!
//! * the plain loop, twice: rskafka fetching every partition from offset 0
//!   to its high watermark as the source does (4 MiB fetches, partitions
//!   one after another, one current-thread runtime), counting the records
//!   (`fetch only`); and the same with a native word count over the
//!   values (`fetch + native WordCount`: words borrowed from the records,
//!   one FxHash map, as run_wordcount's native loop);
//! * `weir run --batches 1 --clock logical --master local[2]` of the
//!   WordCount job (`kafka` source, `starting_offsets = "earliest"`, no
//!   rate limit, so the one batch takes the whole topic; split, pair,
//!   reduce_by_key, `save_as_text_files`), whole process; and the same job
//!   on an empty topic, whose time (start-up, module compilation, topic
//!   metadata, exit) is subtracted to give the net records/s.
//!
//! Medians are printed; every run's word total is checked against the
//! native count. The broker shares the machine with whichever side runs,
//! so both pay for it alike.

#[path = "../../runtime/benches/shared/native.rs"]
mod native;

use native::{cpu_steal, Fast};
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rskafka::client::partition::UnknownTopicHandling;
use rskafka::client::ClientBuilder;

const TOPIC: &str = "bench";
const EMPTY: &str = "bench-empty";
/// As the source's fetches (engine/runtime/src/source/kafka.rs).
const FETCH_MAX_BYTES: i32 = 4 << 20;

struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// (tansu binary, PYTHONPATH for kafka-python), installed when missing.
fn tools(root: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new("bash")
        .arg(root.join("scripts/kafka-broker.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("bash scripts/kafka-broker.sh");
    assert!(out.status.success(), "scripts/kafka-broker.sh failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| PathBuf::from(text.lines().find_map(|l| l.strip_prefix(k)).expect("kafka-broker.sh output"));
    (get("TANSU="), get("KAFKA_PYTHONPATH="))
}

fn start_broker(tansu: &Path) -> Broker {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/", "--silent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start tansu");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker { child, port }
}

/// Runs tests/kafka_client.py with `stdin`; returns its stdout.
fn client(root: &Path, pythonpath: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("python3")
        .arg(root.join("tests/kafka_client.py"))
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "kafka_client.py {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Seeded lines of `words` words from a vocabulary of 10 000.
fn corpus(n: usize, words: usize) -> Vec<String> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n).map(|_| (0..words).map(|_| format!("w{}", next() % 10_000)).collect::<Vec<_>>().join(" ")).collect()
}

/// What a plain loop read: records, value bytes, words (0 when not
/// counted), and the seconds spent counting.
struct Read {
    records: u64,
    bytes: u64,
    words: u64,
    counting: f64,
}

/// rskafka fetching every partition of `topic` from 0 to its high
/// watermark, optionally counting words.
fn plain_loop(addr: &str, topic: &str, count_words: bool) -> Read {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = ClientBuilder::new(vec![addr.to_string()]).max_message_size(16 << 20).build().await.unwrap();
        let partitions =
            client.list_topics().await.unwrap().into_iter().find(|t| t.name == topic).expect("the topic").partitions;
        let mut read = Read { records: 0, bytes: 0, words: 0, counting: 0.0 };
        for p in partitions {
            let pc = client.partition_client(topic.to_string(), p, UnknownTopicHandling::Error).await.unwrap();
            let mut counts: HashMap<Vec<u8>, u64, Fast> = HashMap::default();
            let mut off = 0i64;
            loop {
                let (recs, high) = pc.fetch_records(off, 1..FETCH_MAX_BYTES, 500).await.unwrap();
                let t = Instant::now();
                for r in &recs {
                    let v = r.record.value.as_deref().unwrap_or_default();
                    read.records += 1;
                    read.bytes += v.len() as u64;
                    if count_words {
                        for w in v.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
                            match counts.get_mut(w) {
                                Some(c) => *c += 1,
                                None => {
                                    counts.insert(w.to_vec(), 1);
                                }
                            }
                            read.words += 1;
                        }
                    }
                    off = off.max(r.offset + 1);
                }
                read.counting += t.elapsed().as_secs_f64();
                if off >= high {
                    break;
                }
            }
            std::hint::black_box(&counts);
        }
        read
    })
}

/// The WordCount job over `topic`, writing under `out`.
fn job(dir: &Path, module: &Path, addr: &str, topic: &str) -> PathBuf {
    let p = dir.join(format!("{topic}.toml"));
    std::fs::write(
        &p,
        format!(
            "batch_interval = \"1s\"\n[modules]\nwordcount = \"{}\"\n\
             [sources.lines]\ntype = \"kafka\"\nbrokers = \"{addr}\"\ntopics = [\"{topic}\"]\n\
             starting_offsets = \"earliest\"\n\
             [streams]\nwords = \"lines.flat_map(wordcount.split)\"\npairs = \"words.map(wordcount.pair)\"\n\
             counts = \"pairs.reduce_by_key(wordcount.sum)\"\n\
             [[outputs]]\nstream = \"counts\"\ntype = \"save_as_text_files\"\nprefix = \"out-{topic}/counts\"\n",
            module.display()
        ),
    )
    .unwrap();
    p
}

/// Runs `weir run` of `job` for one batch; returns (seconds, records in,
/// sum of the counts written).
fn weir_run(weir: &Path, dir: &Path, job: &Path, topic: &str) -> (f64, u64, u64) {
    let out_dir = dir.join(format!("out-{topic}"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let t = Instant::now();
    let out = Command::new(weir)
        .current_dir(dir)
        .arg("run")
        .arg(job)
        .args(["--batches", "1", "--clock", "logical", "--master", "local[2]", "--ui", "off", "--progress", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("weir");
    let secs = t.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir run failed:\n{log}");
    let records = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|v| v.get("records_in").and_then(serde_json::Value::as_u64))
        .sum();
    let mut words = 0;
    for d in std::fs::read_dir(&out_dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if !f.file_name().to_string_lossy().starts_with("part-") {
                continue;
            }
            for l in std::fs::read_to_string(f.path()).unwrap_or_default().lines() {
                words += l.trim_end_matches(')').rsplit_once(',').and_then(|(_, n)| n.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    (secs, records, words)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let weir = PathBuf::from(std::env::var("WEIR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").into()));
    let module = root.join("udfs/wordcount.wasm").canonicalize().expect("run udfs/build.sh first");
    let records = env_or("WEIR_BENCH_RECORDS", 200_000);
    let partitions = env_or("WEIR_BENCH_PARTITIONS", 2);
    let reps = env_or("WEIR_BENCH_REPS", 3).max(1);

    let (tansu, pythonpath) = tools(&root);
    let broker = start_broker(&tansu);
    let addr = format!("127.0.0.1:{}", broker.port);
    client(&root, &pythonpath, &["create", &addr, TOPIC, &partitions.to_string()], "");
    client(&root, &pythonpath, &["create", &addr, EMPTY, &partitions.to_string()], "");
    let lines = corpus(records, 10);
    let t = Instant::now();
    let n = client(&root, &pythonpath, &["produce-backlog", &addr, TOPIC], &(lines.join("\n") + "\n"));
    assert_eq!(n.trim(), records.to_string());
    let words_total = (records * 10) as u64;
    println!(
        "topic {TOPIC}: {records} records ({} MB of values), {partitions} partition(s), produced in {:.1} s",
        lines.iter().map(|l| l.len()).sum::<usize>() / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let steal = cpu_steal();

    let dir = tempfile::tempdir().unwrap();
    let full = job(dir.path(), &module, &addr, TOPIC);
    let empty = job(dir.path(), &module, &addr, EMPTY);
    let (mut fetch, mut count, mut whole, mut net, mut base) = (vec![], vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let t = Instant::now();
        let r = plain_loop(&addr, TOPIC, false);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(r.records, records as u64, "the plain loop read every record");
        let mb = r.bytes / 1_000_000;
        fetch.push(records as f64 / s);

        let t = Instant::now();
        let r = plain_loop(&addr, TOPIC, true);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(r.words, words_total, "the plain loop's words");
        count.push(records as f64 / s);
        let counting = r.counting;

        let (s0, r0, _) = weir_run(&weir, dir.path(), &empty, EMPTY);
        assert_eq!(r0, 0);
        let (s, r, w) = weir_run(&weir, dir.path(), &full, TOPIC);
        assert_eq!((r, w), (records as u64, words_total), "weir read every record and counted every word");
        whole.push(records as f64 / s);
        net.push(records as f64 / (s - s0).max(1e-3));
        base.push(s0);
        println!(
            "rep {rep}: fetch {:.0} rec/s ({} MB), fetch+count {:.0} rec/s (counting {counting:.3} s); weir run {s:.2} s ({:.0} rec/s), \
             empty topic {s0:.2} s, net {:.0} rec/s",
            fetch[rep],
            mb,
            count[rep],
            whole[rep],
            net[rep]
        );
    }
    let (f, c) = (median(&mut fetch), median(&mut count));
    let (w, n, b) = (median(&mut whole), median(&mut net), median(&mut base));
    println!("\nmedians of {reps} ({records} records, {partitions} partitions):");
    println!("  plain rskafka loop, fetch only:           {f:>10.0} records/s");
    println!("  plain rskafka loop, fetch + native count: {c:>10.0} records/s");
    println!(
        "  weir run WordCount, whole process:        {w:>10.0} records/s ({:.0}% of fetch + count)",
        100.0 * w / c
    );
    println!(
        "  weir run WordCount, net of start-up:      {n:>10.0} records/s ({:.0}% of fetch + count; start-up {b:.2} s)",
        100.0 * n / c
    );
    if let (Some(before), Some(after)) = (steal, cpu_steal()) {
        println!(
            "  hypervisor steal during the run: {:.1}%",
            100.0 * (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
        );
    }
}
