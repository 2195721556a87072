//! Helpers for end-to-end tests that run long-lived `weir` drivers: a driver
//! whose stderr is read line by line through a pipe (so a test waits for
//! what the driver says, never for a fixed time), progress lines parsed,
//! accepting a receiver's connection with a deadline, whole output trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `weir` driver.
pub struct Driver {
    pub child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    eof: bool,
}

impl Driver {
    /// Starts `cmd` with stderr piped (stdout discarded).
    pub fn spawn(cmd: &mut Command) -> Driver {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("cannot start weir");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut l = log2.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver { child, lines: rx, log, eof: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the driver wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The next stderr line; None once stderr is closed (the driver exited).
    /// Panics (with the log) when nothing comes before `deadline`.
    pub fn next_line(&mut self, deadline: Instant, what: &str) -> Option<String> {
        if self.eof {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                None
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!("timed out waiting for {what}; driver stderr so far:\n{}", self.log())
            }
        }
    }

    /// Reads stderr lines until one satisfies `pred`; returns it. Panics if
    /// the driver exits first or the deadline passes.
    pub fn wait_for(&mut self, deadline: Instant, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        loop {
            match self.next_line(deadline, what) {
                Some(l) if pred(&l) => return l,
                Some(_) => {}
                None => {
                    let status = self.child.wait();
                    panic!("the driver exited ({status:?}) before {what}; stderr:\n{}", self.log())
                }
            }
        }
    }

    /// Waits for the driver to exit by itself (its stderr closes), at most
    /// `timeout`; kills it and panics otherwise.
    pub fn wait_exit(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.next_line(deadline, what).is_some() {}
        self.child.wait().unwrap()
    }

    /// SIGKILL (std's Child::kill), and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Never leave a driver running after a test (even a failing one).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `batch 1700000000100 ms: 12 records in, ...` -> (time, records in).
pub fn progress(line: &str) -> Option<(i64, u64)> {
    let rest = line.strip_prefix("batch ")?;
    let (t, rest) = rest.split_once(" ms: ")?;
    let (k, _) = rest.split_once(" records in")?;
    Some((t.parse().ok()?, k.parse().ok()?))
}

/// Accepts one connection on `listener`, failing the test after `timeout`.
pub fn accept(listener: &TcpListener, timeout: Duration) -> TcpStream {
    let l = listener.try_clone().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept().map(|(s, _)| s));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("accept failed: {e}"),
        Err(_) => panic!("the receiver did not connect within {timeout:?}"),
    }
}

/// Asserts two output trees are byte-identical, naming the first difference.
pub fn assert_same_tree(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    let gk: Vec<&String> = got.keys().collect();
    let wk: Vec<&String> = want.keys().collect();
    if gk != wk {
        let missing: Vec<_> = wk.iter().filter(|k| !got.contains_key(**k)).collect();
        let extra: Vec<_> = gk.iter().filter(|k| !want.contains_key(**k)).collect();
        panic!("{what}: different files; missing {missing:?}, extra {extra:?}");
    }
    for (k, v) in want {
        assert!(
            &got[k] == v,
            "{what}: {k} differs:\n--- got\n{}\n--- want\n{}",
            String::from_utf8_lossy(&got[k]),
            String::from_utf8_lossy(v)
        );
    }
}

/// Socket -> split -> pair -> update_state_by_key running totals ->
/// save_as_text_files under out/totals, 100 ms batches, optionally with a
/// data checkpoint interval (e.g. "200ms").
pub fn socket_totals_job(port: u16, checkpoint: Option<&str>) -> String {
    let every = checkpoint.map(|c| format!(".checkpoint({c})")).unwrap_or_default();
    format!(
        r#"batch_interval = "100ms"
[modules]
wordcount = "{}"
[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
totals = "pairs.update_state_by_key(wordcount.running_total){every}"
[[outputs]]
stream = "totals"
type = "save_as_text_files"
prefix = "out/totals"
"#,
        crate::common::module("wordcount.wasm").display()
    )
}
