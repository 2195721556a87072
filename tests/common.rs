//! Helpers shared by the end-to-end tests: paths, running the `weir` binary,
//! reading `save_as_text_files` outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// A built UDF module; fails loudly if `udfs/build.sh` has not run.
pub fn module(name: &str) -> PathBuf {
    let p = repo().join("udfs").join(name);
    assert!(p.exists(), "{} is missing: run udfs/build.sh first", p.display());
    p.canonicalize().unwrap()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot start weir")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `prefix-<time>` directories under `dir`, by batch time, each with the
/// concatenated lines of its part files (in part order).
pub fn read_outputs(dir: &Path, prefix: &str) -> BTreeMap<i64, Vec<String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(t) = name.strip_prefix(&format!("{prefix}-")) else { continue };
        let Ok(t) = t.parse::<i64>() else { continue };
        let mut parts: Vec<PathBuf> = std::fs::read_dir(e.path())
            .unwrap()
            .map(|p| p.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-"))
            .collect();
        parts.sort();
        let mut lines = Vec::new();
        for p in parts {
            lines.extend(std::fs::read_to_string(p).unwrap().lines().map(String::from));
        }
        out.insert(t, lines);
    }
    out
}

/// Parses `(word,3)` lines into a map, summing duplicates across batches.
pub fn sum_counts<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let inner = l.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or_else(|| panic!("not a pair: {l}"));
        let (w, c) = inner.rsplit_once(',').unwrap();
        *m.entry(w.to_string()).or_insert(0) += c.parse::<i64>().unwrap();
    }
    m
}

/// WordCount done natively: the reference.
pub fn native_counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        for w in l.split_ascii_whitespace() {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// A small seeded generator (the tests must not depend on a crate's RNG).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every file under `dir`, relative path -> bytes.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The stateful, windowed WordCount of the crash tests: update_state_by_key
/// running totals (data checkpoint every 4 s) and reduce_by_key_and_window
/// with an inverse function, both to save_as_text_files, over a seeded
/// `batches` file of `batches` lines. Returns the job file.
pub fn stateful_job(dir: &Path, batches: usize) -> PathBuf {
    let mut rng = Rng(7);
    let vocab = ["spark", "flink", "weir", "stream", "batch", "window", "state", "wasm", "lineage", "driver", "kafka"];
    let mut data = String::new();
    for _ in 0..batches {
        let recs: Vec<String> = (0..rng.below(15))
            .map(|_| {
                let words: Vec<&str> =
                    (0..1 + rng.below(6)).map(|_| vocab[rng.below(vocab.len() as u64) as usize]).collect();
                format!("\"{}\"", words.join(" "))
            })
            .collect();
        data.push_str(&format!("[{}]\n", recs.join(",")));
    }
    std::fs::write(dir.join("input.jsonl"), data).unwrap();
    let job = format!(
        r#"batch_interval = "1s"
clock = "logical"
[modules]
wordcount = "{}"
[sources.lines]
type = "batches"
path = "input.jsonl"
[streams]
words    = "lines.flat_map(wordcount.split)"
pairs    = "words.map(wordcount.pair)"
totals   = "pairs.update_state_by_key(wordcount.running_total).checkpoint(4s)"
windowed = "pairs.reduce_by_key_and_window(wordcount.sum, wordcount.subtract, 6s, 2s)"
[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "out/totals"
[[outputs]]
stream = "windowed"
type = "save_as_text_files"
prefix = "out/windowed"
"#,
        module("wordcount.wasm").display()
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, job).unwrap();
    p
}

/// Twelve batches of words from a nine-word vocabulary (batch 7 empty): the
/// word at (batch b, line l, position i) is `(b*mix.0 + l*mix.1 + i*mix.2) % 9`.
pub fn word_batches(mix: (u64, u64, u64)) -> Vec<Vec<String>> {
    let words = ["spark", "weir", "wasm", "state", "batch", "driver", "kafka", "flink", "lineage"];
    (0..12u64)
        .map(|b| {
            if b == 6 {
                return vec![];
            }
            (0..(b % 4 + 2))
                .map(|l| {
                    (0..(b + l) % 5 + 1)
                        .map(|i| words[((b * mix.0 + l * mix.1 + i * mix.2) % 9) as usize])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .collect()
}

/// The listening TCP ports of process `pid` (from /proc).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        if let Ok(t) = std::fs::read_link(fd.path()) {
            if let Some(i) = t.to_string_lossy().strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                ports.push(u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap());
            }
        }
    }
    ports
}

/// How a bounded run of a child ended: its exit status (None when it was
/// killed at the deadline or died of a signal), its peak resident memory in
/// kB and its stderr.
pub struct Bounded {
    pub code: Option<i32>,
    pub timed_out: bool,
    pub peak_kb: u64,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Runs `cmd` (stdout discarded, stderr collected) for at most `limit`,
/// killing it at the deadline. The peak RSS is the child's `VmHWM` (its own
/// address space's high-water mark), read every 5 ms until it exits: not
/// `wait4`'s `ru_maxrss`, which a child spawned with `vfork` inherits from
/// this (multi-test, possibly big) process at `exec`.
#[allow(clippy::zombie_processes)]
pub fn run_bounded(cmd: &mut Command, limit: std::time::Duration) -> Bounded {
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("cannot start weir");
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut timed_out = false;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut peak_kb = 0u64;
    loop {
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
        peak_kb = peak_kb.max(hwm.unwrap_or(0));
        // SAFETY: our own child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4 failed");
        if r == pid {
            break;
        }
        if started.elapsed() >= limit && !timed_out {
            timed_out = true;
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let code = if libc::WIFEXITED(status) { Some(libc::WEXITSTATUS(status)) } else { None };
    Bounded {
        code,
        timed_out,
        // The sampled VmHWM (see above), never `usage.ru_maxrss`.
        peak_kb,
        stderr: reader.join().unwrap(),
        elapsed: started.elapsed(),
    }
}
