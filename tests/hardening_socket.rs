//! The socket receiver against hostile input (issue 11): a test-held TCP
//! server sends exactly the bytes of each case to `weir run` (wall clock,
//! 100 ms batches), whose job saves every received line as it is; what came
//! out is compared with what was sent. Invalid UTF-8 under each
//! `on_invalid_utf8` policy, a character split across two reads, a last line
//! without a newline, lines longer than `max_line_bytes` (memory stays
//! bounded), `\r\n` / NUL / empty lines, a connection reset in the middle of
//! a line, and a write-ahead log that runs out of space (a real small tmpfs)
//! in the middle of an append.
//!
//! Synchronisation is by what the driver prints on stderr (progress lines,
//! warnings) and by the write-ahead log; never by sleeping.

use crate::common::*;
use crate::drivers::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weir::checkpoint::wal;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A job that saves the socket's lines as they are (`out/lines-<time>`).
struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    job: PathBuf,
    listener: TcpListener,
}

impl Case {
    /// `fields`: extra lines of the `[sources.lines]` table.
    fn new(fields: &str) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let job = dir.join("job.toml");
        std::fs::write(
            &job,
            format!(
                r#"batch_interval = "100ms"
[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}
{fields}
[streams]
[[outputs]]
stream = "lines"
type = "save_as_text_files"
prefix = "out/lines"
"#
            ),
        )
        .unwrap();
        Case { _tmp: tmp, dir, job, listener }
    }

    fn driver(&self) -> Driver {
        Driver::spawn(weir().arg("run").arg(&self.job).args(["--clock", "wall"]))
    }

    fn accept(&self) -> TcpStream {
        accept(&self.listener, TIMEOUT)
    }

    /// Every line saved, batch by batch, part by part (split at `\n` only:
    /// a `\r` in a line is the line's).
    fn saved(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs: Vec<(i64, PathBuf)> = std::fs::read_dir(self.dir.join("out"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let t = e.file_name().to_string_lossy().strip_prefix("lines-")?.parse().ok()?;
                        Some((t, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        for (_, d) in dirs {
            let mut parts: Vec<PathBuf> = std::fs::read_dir(d)
                .unwrap()
                .map(|p| p.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-"))
                .collect();
            parts.sort();
            for p in parts {
                let s = String::from_utf8(std::fs::read(p).unwrap()).unwrap();
                out.extend(s.split_terminator('\n').map(String::from));
            }
        }
        out
    }
}

fn send(conn: &mut TcpStream, bytes: &[u8]) {
    conn.write_all(bytes).unwrap();
    conn.flush().unwrap();
}

/// Reads progress lines until `n` records in all came in (more is a failure).
fn wait_records(d: &mut Driver, n: u64, deadline: Instant) {
    let mut seen = 0;
    while seen < n {
        let l = d.wait_for(deadline, &format!("{n} records (seen {seen})"), |l| progress(l).is_some());
        seen += progress(&l).unwrap().1;
    }
    assert_eq!(seen, n, "more records than lines sent:\n{}", d.log());
}

/// Sends `bytes` on one connection (kept open), waits for `want.len()`
/// records and one more batch, and compares what was saved with `want`.
fn expect_lines(fields: &str, bytes: &[u8], want: &[&str]) -> (Case, Driver) {
    let c = Case::new(fields);
    let deadline = Instant::now() + TIMEOUT;
    let mut d = c.driver();
    let mut conn = c.accept();
    send(&mut conn, bytes);
    wait_records(&mut d, want.len() as u64, deadline);
    let l = d.wait_for(deadline, "one more batch", |l| progress(l).is_some());
    assert_eq!(progress(&l).unwrap().1, 0, "a record too many:\n{}", d.log());
    d.kill();
    assert_eq!(c.saved(), want, "{}", d.log());
    (c, d)
}

#[test]
fn invalid_utf8_is_replaced_by_default_and_no_other_line_is_lost() {
    let (_, d) = expect_lines("", b"a\nb\xFFc\xC3\nd\n", &["a", "b\u{FFFD}c\u{FFFD}", "d"]);
    assert!(!d.log().contains("reconnecting"), "the receiver reconnected:\n{}", d.log());
}

#[test]
fn invalid_utf8_skip_drops_only_that_line_with_a_counted_warning() {
    let (_, d) = expect_lines("on_invalid_utf8 = \"skip\"", b"a\nb\xFF\nc\n\xFE\nd\n", &["a", "c", "d"]);
    let log = d.log();
    assert!(log.contains("invalid UTF-8") && log.contains("1 skipped so far"), "no warning:\n{log}");
    assert!(log.contains("2 skipped so far"), "the second skipped line is counted:\n{log}");
}

#[test]
fn invalid_utf8_fail_reports_and_drops_the_connection() {
    let c = Case::new("on_invalid_utf8 = \"fail\"");
    let deadline = Instant::now() + TIMEOUT;
    let mut d = c.driver();
    let mut conn = c.accept();
    send(&mut conn, b"a\nb\xFF\nnot read\n");
    // The receiver drops the connection (the server sees it closed) and reconnects.
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    match conn.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let mut conn2 = c.accept();
    send(&mut conn2, b"after\n");
    wait_records(&mut d, 2, deadline);
    d.kill();
    assert_eq!(c.saved(), ["a", "after"], "{}", d.log());
    assert!(d.log().contains("invalid UTF-8"), "no error reported:\n{}", d.log());
}

#[test]
fn a_character_split_across_two_reads_is_decoded_whole() {
    let c = Case::new("");
    let deadline = Instant::now() + TIMEOUT;
    let mut d = c.driver();
    let mut conn = c.accept();
    // "é" is C3 A9: the first byte arrives with "first\n", the second after
    // the batch that took "first" (so surely in another read).
    send(&mut conn, b"first\nh\xC3");
    wait_records(&mut d, 1, deadline);
    d.wait_for(deadline, "one more batch", |l| progress(l).is_some());
    send(&mut conn, b"\xA9llo\nlast\n");
    wait_records(&mut d, 2, deadline);
    d.kill();
    assert_eq!(c.saved(), ["first", "héllo", "last"], "{}", d.log());
}

#[test]
fn a_last_line_without_a_newline_is_a_line() {
    let c = Case::new("");
    let deadline = Instant::now() + TIMEOUT;
    let mut d = c.driver();
    let mut conn = c.accept();
    send(&mut conn, b"one\ntwo");
    drop(conn);
    wait_records(&mut d, 2, deadline);
    d.kill();
    assert_eq!(c.saved(), ["one", "two"], "{}", d.log());
}

#[test]
fn crlf_nul_and_empty_lines_arrive_as_sent() {
    // One `\r` before the `\n` is the line ending's; any other is the line's.
    expect_lines("", b"a\r\nb\0c\n\n\r\nd\r\r\ne\rf\n", &["a", "b\0c", "", "", "d\r", "e\rf"]);
}

#[test]
fn a_connection_reset_mid_line_keeps_what_was_received() {
    let c = Case::new("");
    let deadline = Instant::now() + TIMEOUT;
    let mut d = c.driver();
    let mut conn = c.accept();
    send(&mut conn, b"whole\npart");
    wait_records(&mut d, 1, deadline);
    // A reset (RST), not a close: SO_LINGER 0.
    socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO)).unwrap();
    drop(conn);
    let mut conn2 = c.accept();
    send(&mut conn2, b"next\n");
    wait_records(&mut d, 2, deadline);
    d.kill();
    assert_eq!(c.saved(), ["whole", "part", "next"], "{}", d.log());
    assert!(d.log().contains("in the middle of a line"), "no warning:\n{}", d.log());
}

#[test]
fn very_many_tiny_lines_and_a_burst_all_arrive_once_through_the_log() {
    let c = Case::new("");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut d =
        Driver::spawn(weir().arg("run").arg(&c.job).args(["--clock", "wall", "--checkpoint"]).arg(c.dir.join("ckpt")));
    let mut conn = c.accept();
    // 200000 lines of 0 or 1 byte, then a burst of 16 MiB in 100-byte lines.
    let mut want: Vec<String> = (0..200_000).map(|i| if i % 2 == 0 { String::new() } else { "x".into() }).collect();
    want.extend((0..(16 << 20) / 101).map(|i| format!("{i:0>100}")));
    let mut bytes = want.join("\n");
    bytes.push('\n');
    send(&mut conn, bytes.as_bytes());
    wait_records(&mut d, want.len() as u64, deadline);
    d.kill();
    let saved = c.saved();
    assert_eq!(saved.len(), want.len(), "{}", d.log());
    assert!(saved == want, "the lines differ");
}

/// The driver's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_long_line_is_truncated_at_a_character_and_memory_stays_bounded() {
    let c = Case::new("max_line_bytes = 1000");
    let deadline = Instant::now() + TIMEOUT;
    let mut d = c.driver();
    let mut conn = c.accept();
    send(&mut conn, b"short\n");
    wait_records(&mut d, 1, deadline);
    let before = peak_rss(d.pid());
    // 64 MiB in one line; "é" straddles the limit (bytes 999 and 1000), so
    // the cut is before it.
    let mut big = vec![b'x'; 999];
    big.extend_from_slice("é".as_bytes());
    big.resize(64 << 20, b'y');
    for chunk in big.chunks(1 << 20) {
        send(&mut conn, chunk);
    }
    send(&mut conn, b"\nafter\n");
    wait_records(&mut d, 2, deadline);
    let grew = peak_rss(d.pid()).saturating_sub(before);
    d.kill();
    let want = ["short".to_string(), "x".repeat(999), "after".to_string()];
    assert_eq!(c.saved(), want, "{}", d.log());
    assert!(grew < 16 << 20, "the driver's peak memory grew by {grew} bytes for a 64 MiB line");
    assert!(d.log().contains("truncated"), "no warning:\n{}", d.log());
}

#[test]
fn a_64_mib_burst_without_newlines_then_lines_keeps_memory_bounded_by_either_policy() {
    for (fields, kept) in [("", Some(1usize << 20)), ("on_long_line = \"skip\"", None)] {
        let c = Case::new(fields);
        let deadline = Instant::now() + TIMEOUT;
        let mut d = c.driver();
        let mut conn = c.accept();
        send(&mut conn, b"first\n");
        wait_records(&mut d, 1, deadline);
        let before = peak_rss(d.pid());
        // One write: 64 MiB with no newline, its end and 1000 lines after it
        // in the same buffer (they arrive in the reads that end the long line).
        let mut burst = vec![b'z'; 64 << 20];
        burst.push(b'\n');
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
        for l in &lines {
            burst.extend_from_slice(l.as_bytes());
            burst.push(b'\n');
        }
        send(&mut conn, &burst);
        drop(burst);
        let n = 1 + lines.len() as u64 + u64::from(kept.is_some());
        wait_records(&mut d, n - 1, deadline);
        let grew = peak_rss(d.pid()).saturating_sub(before);
        d.kill();
        let saved = c.saved();
        let mut want = vec!["first".to_string()];
        if let Some(k) = kept {
            want.push("z".repeat(k));
        }
        want.extend(lines.iter().cloned());
        assert_eq!(saved.len(), want.len(), "{fields:?}: {}", d.log());
        assert!(saved == want, "{fields:?}: the lines differ");
        eprintln!("{fields:?}: peak RSS grew by {} KiB for a 64 MiB burst", grew >> 10);
        assert!(grew < 24 << 20, "{fields:?}: the driver's peak memory grew by {grew} bytes for a 64 MiB burst");
    }
}

#[test]
fn a_long_line_is_skipped_by_policy() {
    let mut bytes = b"short\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'y', 100_000));
    bytes.extend_from_slice(b"\nafter\n");
    let (_, d) = expect_lines("max_line_bytes = 10\non_long_line = \"skip\"", &bytes, &["short", "after"]);
    assert!(d.log().contains("1 skipped so far"), "no warning:\n{}", d.log());
}

#[test]
fn a_bad_max_line_bytes_is_a_job_error() {
    let c = Case::new("max_line_bytes = 0");
    let out = run(weir().arg("run").arg(&c.job).args(["--batches", "1"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("max_line_bytes must be between 1 and"), "{}", text(&out.stderr));
}

/// A tmpfs mounted at a directory, unmounted when dropped (even when the
/// test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(st.is_ok_and(|s| s.success()), "cannot mount a tmpfs at {} (run as root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a driver still holding a file does not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every segment of the log parses to its end: no torn record hides the
/// records after it.
fn assert_no_torn_record(wal_dir: &Path, log: &str) {
    for seq in wal::segments(wal_dir, 0) {
        let len = std::fs::metadata(wal::segment_path(wal_dir, 0, seq)).unwrap().len();
        let (_, ranges) = wal::read_from(wal_dir, 0, wal::WalPosition { seq, offset: 0 }).unwrap();
        let parsed = ranges.iter().filter(|r| r.seq == seq).map(|r| r.end).max().unwrap_or(0);
        assert_eq!(parsed, len, "segment {seq}: {len} bytes, only {parsed} parse:\n{log}");
    }
}

fn wal_bytes(lines: &[String]) -> u64 {
    lines.iter().map(|l| 8 + l.len() as u64).sum()
}

fn send_lines(conn: &mut TcpStream, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    send(conn, s.as_bytes());
}

#[test]
fn a_full_disk_stops_the_receiver_until_it_can_log_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let _mount = Tmpfs::mount(&ckpt, "4m");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, socket_totals_job(listener.local_addr().unwrap().port(), None)).unwrap();
    let driver = |extra: &[&str]| {
        Driver::spawn(weir().arg("run").arg(&job).args(["--clock", "wall", "--checkpoint"]).arg(&ckpt).args(extra))
    };
    let wal_dir = ckpt.join("wal");
    let deadline = Instant::now() + Duration::from_secs(90);
    let lines = |tag: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{tag} w{} w{} common", i % 7, i % 31)).collect()
    };
    let (a, b, c) = (lines("a", 300), lines("b", 3000), lines("c", 500));

    let mut d1 = driver(&[]);
    let mut conn = accept(&listener, TIMEOUT);
    send_lines(&mut conn, &a);
    wait_records(&mut d1, a.len() as u64, deadline);

    // Fill the disk, then send lines the receiver cannot log.
    let filler = ckpt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
    send_lines(&mut conn, &b);
    d1.wait_for(deadline, "the failed append", |l| l.contains("write-ahead log append failed"));
    // The failed append left no torn record (its bytes were cut off).
    assert_no_torn_record(&wal_dir, &d1.log());
    std::fs::remove_file(&filler).unwrap();

    // Space is back: the receiver logs the lines it held, then reads on.
    wait_records(&mut d1, b.len() as u64, deadline);
    send_lines(&mut conn, &c);
    let all: Vec<String> = a.iter().chain(&b).chain(&c).cloned().collect();
    let seg = wal_segment_len(&wal_dir);
    while seg() < wal_bytes(&all) {
        assert!(Instant::now() < deadline, "the lines never reached the log:\n{}", d1.log());
        std::thread::yield_now();
    }
    assert_eq!(seg(), wal_bytes(&all), "the log holds more than was sent:\n{}", d1.log());
    // Killed as soon as everything is logged: some of it may not be in a batch yet.
    d1.kill();
    drop(conn);
    assert_no_torn_record(&wal_dir, &d1.log());

    let mut d2 = driver(&["--batches", "5"]);
    let status = d2.wait_exit(TIMEOUT, "the restarted driver to run 5 batches");
    let logs = format!("--- driver 1\n{}--- driver 2\n{}", d1.log(), d2.log());
    assert!(status.success(), "{logs}");
    let outputs = read_outputs(&tmp.path().join("out"), "totals");
    let (_, newest) = outputs.iter().next_back().unwrap_or_else(|| panic!("no output:\n{logs}"));
    assert_eq!(sum_counts(newest), native_counts(all.iter().map(|s| s.as_str())), "{logs}");
}

/// The total length of the first run's log segment(s).
fn wal_segment_len(wal_dir: &Path) -> impl Fn() -> u64 + '_ {
    move || {
        wal::segments(wal_dir, 0)
            .into_iter()
            .map(|s| std::fs::metadata(wal::segment_path(wal_dir, 0, s)).map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Whether the newest log segment ends with `line` (the receiver appends in
/// order, so every line sent before it is logged too). A segment deleted
/// or growing meanwhile is simply looked at again.
fn logged_up_to(wal_dir: &Path, line: &str) -> bool {
    let Some(&last) = wal::segments(wal_dir, 0).last() else { return false };
    wal::read_from(wal_dir, 0, wal::WalPosition { seq: last, offset: 0 })
        .is_ok_and(|(lines, _)| lines.last().is_some_and(|l| l == line))
}

/// A line longer than `max_line_bytes` (cut, or skipped, by policy) among
/// the lines of a checkpointed stateful job whose driver is SIGKILLed as
/// soon as its lines are logged, with batches pending and lines not yet in
/// any batch; the log rolls over to a new segment every 4 KiB (the long
/// line's record alone is bigger), and segments no checkpoint needs any more
/// are deleted while it runs. Restarted on the same checkpoint, the job
/// counts every line that was acknowledged (logged) exactly once, the long
/// one as its policy made it.
#[test]
fn a_long_line_and_a_sigkill_count_every_acknowledged_line_once() {
    const MAX: usize = 6000;
    for policy in ["truncate", "skip"] {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = tmp.path().join("ckpt");
        let wal_dir = ckpt.join("wal");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let job = socket_totals_job(port, Some("200ms")).replace(
            &format!("port = {port}\n"),
            &format!("port = {port}\nmax_line_bytes = {MAX}\non_long_line = \"{policy}\"\n"),
        );
        let job_path = tmp.path().join("job.toml");
        std::fs::write(&job_path, job).unwrap();
        let driver = |extra: &[&str]| {
            Driver::spawn(
                weir()
                    .arg("run")
                    .arg(&job_path)
                    .args(["--clock", "wall", "--checkpoint"])
                    .arg(&ckpt)
                    .args(extra)
                    .env("WEIR_FAILPOINT_WAL_SEGMENT_BYTES", "4096"),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        let lines = |tag: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{tag} w{} w{} common", i % 7, i % 23)).collect()
        };
        // 200 KB of words in one line: cut at MAX bytes (ASCII), or skipped.
        let long: String = (0..200_000 / 8).map(|i| format!("long{:03} ", i % 500)).collect();
        let kept_long = match policy {
            "truncate" => vec![long[..MAX].to_string()],
            _ => vec![],
        };
        let (a1, a2, b, c) = (lines("a", 300), lines("after", 300), lines("b", 300), lines("c", 300));

        let mut d1 = driver(&[]);
        let mut conn = accept(&listener, TIMEOUT);
        let mut first: Vec<String> = a1.clone();
        first.push(long.clone());
        first.extend(a2.iter().cloned());
        send_lines(&mut conn, &first);
        let n_first = (a1.len() + kept_long.len() + a2.len()) as u64;
        wait_records(&mut d1, n_first, deadline);
        // Sends of 100 lines (about 2.5 KB: each goes to a new segment),
        // each logged before the next is sent.
        let send_logged = |conn: &mut TcpStream, lines: &[String], d: &Driver| {
            for chunk in lines.chunks(100) {
                send_lines(conn, chunk);
                while !logged_up_to(&wal_dir, chunk.last().unwrap()) {
                    assert!(Instant::now() < deadline, "the lines never reached the log:\n{}", d.log());
                    std::thread::yield_now();
                }
            }
        };
        send_logged(&mut conn, &b, &d1);
        wait_records(&mut d1, b.len() as u64, deadline);
        // Batches took everything in segment 0 and a data checkpoint covers
        // them: once the kept checkpoints no longer name it, it is deleted.
        while wal::segments(&wal_dir, 0).first() == Some(&0) {
            assert!(Instant::now() < deadline, "segment 0 was never deleted:\n{}", d1.log());
            d1.wait_for(deadline, "a batch", |l| progress(l).is_some());
        }
        // Killed as soon as the last line is logged: some lines in no batch
        // yet, the batch that took others maybe not checkpointed.
        send_logged(&mut conn, &c, &d1);
        d1.kill();
        drop(conn);
        let segments = wal::segments(&wal_dir, 0);
        assert!(
            segments.last().is_some_and(|s| *s >= 4),
            "{policy}: the log did not roll over: {segments:?}\n{}",
            d1.log()
        );

        let mut d2 = driver(&["--batches", "5"]);
        let status = d2.wait_exit(TIMEOUT, "the restarted driver to run 5 batches");
        let logs = format!("--- {policy}: driver 1\n{}--- driver 2\n{}", d1.log(), d2.log());
        assert!(status.success(), "{logs}");
        assert!(d2.log().contains("recovered from checkpoint"), "{logs}");
        let sent: Vec<String> = a1.iter().chain(&kept_long).chain(&a2).chain(&b).chain(&c).cloned().collect();
        let outputs = read_outputs(&tmp.path().join("out"), "totals");
        let (_, newest) = outputs.iter().next_back().unwrap_or_else(|| panic!("no output:\n{logs}"));
        let want = native_counts(sent.iter().map(|s| s.as_str()));
        assert_eq!(sum_counts(newest), want, "{logs}");
        if policy == "truncate" {
            assert!(want.keys().any(|w| w.starts_with("long")), "the cut line counts");
        }
    }
}
