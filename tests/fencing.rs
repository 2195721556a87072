//! Driver epochs and fencing (issue 18): a driver paused past its lease and
//! taken over by a new driver on the same checkpoint must write no
//! checkpoint and no output after the takeover, and stop with an error
//! naming its epoch and the newer one; the outputs must equal an
//! uninterrupted run's. Real processes, SIGSTOP/SIGCONT, every wait with a
//! deadline.

use crate::cluster::{signal, wait_until, SIGCONT, SIGSTOP};
use crate::common::*;
use crate::drivers::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lease TTL of these runs (ms).
const LEASE_MS: u64 = 1000;

/// Outputs of an uninterrupted `local[2]` run of the stateful job.
pub(crate) fn reference(batches: usize) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let job = stateful_job(dir.path(), batches);
    let out = run(weir()
        .args(["run", job.to_str().unwrap(), "--master", "local[2]", "-q", "--checkpoint"])
        .arg(dir.path().join("ckpt")));
    assert!(out.status.success(), "the reference run failed: {}", text(&out.stderr));
    tree(&dir.path().join("out"))
}

/// How long ago the lease in `<ckpt>/lock` was last renewed.
fn lease_age(ckpt: &Path) -> Duration {
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("lock")).unwrap_or_default()).unwrap_or_default();
    let renewed = body["renewed_unix_ms"].as_u64().unwrap_or(u64::MAX);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    Duration::from_millis(now.saturating_sub(renewed))
}

/// Whether process `pid` holds a flock on `dir` (from /proc/locks, by inode).
fn holds_flock(pid: u32, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(dir).unwrap().ino();
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            && f.get(5).is_some_and(|d| d.ends_with(&format!(":{ino}")))
    })
}

/// Stops `pid` outside a commit: a driver paused inside one holds the
/// commit lock, which a new driver waits for (see docs/fault-tolerance.md);
/// this test is about the one paused between commits.
fn pause_between_commits(pid: u32, ckpt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        signal(pid, SIGSTOP);
        wait_until("the driver to stop", Duration::from_secs(10), || crate::cluster::proc_state(pid) == Some('T'));
        if !holds_flock(pid, &ckpt.join("metadata")) {
            return;
        }
        assert!(Instant::now() < deadline, "the driver was inside a commit at every pause for 30 s");
        signal(pid, SIGCONT);
    }
}

/// A local checkpoint directory: driver A paused past its lease, driver B
/// takes over (epoch 2) and runs the job to its end, then A is continued.
/// A must stop, fenced, naming epochs 1 and 2, without changing a single
/// checkpoint or output file; the outputs equal an uninterrupted run's.
#[test]
fn a_paused_driver_taken_over_commits_nothing_afterwards_and_stops_fenced() {
    let _serial = crate::cluster::serial();
    let batches = 120;
    let expected = std::thread::spawn(move || reference(batches));
    let tmp = tempfile::tempdir().unwrap();
    let job = stateful_job(tmp.path(), batches);
    let ckpt = tmp.path().join("ckpt");
    let cmd = || {
        let mut c = weir();
        c.args(["run", job.to_str().unwrap(), "--master", "local[2]", "--checkpoint"]).arg(&ckpt);
        c.args(["--checkpoint-lease-ms", &LEASE_MS.to_string()]);
        c
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut a = Driver::spawn(&mut cmd());
    a.wait_for(deadline, "driver A's first batch", |l| progress(l).is_some());
    pause_between_commits(a.pid(), &ckpt);
    wait_until("A's lease to lapse", Duration::from_secs(30), || lease_age(&ckpt) > Duration::from_millis(LEASE_MS));

    let mut b = Driver::spawn(&mut cmd());
    let status = b.wait_exit(Duration::from_secs(120), "driver B to finish the job");
    let blog = b.log();
    assert!(status.success(), "driver B failed ({status}):\n{blog}");
    assert!(blog.contains("taking over checkpoint directory") && blog.contains("this driver is epoch 2"), "{blog}");
    let (meta_after_b, out_after_b) = (tree(&ckpt.join("metadata")), tree(&tmp.path().join("out")));
    let state_after_b = tree(&ckpt.join("state"));

    signal(a.pid(), SIGCONT);
    let status = a.wait_exit(Duration::from_secs(60), "driver A to stop, fenced");
    let alog = a.log();
    assert!(!status.success(), "the fenced driver exited 0:\n{alog}");
    assert!(
        alog.contains("fenced") && alog.contains("holds epoch 1") && alog.contains("epoch 2"),
        "driver A's error does not name its epoch and the newer one:\n{alog}"
    );
    assert_same_tree(&tree(&ckpt.join("metadata")), &meta_after_b, "metadata checkpoints after A was continued");
    assert_same_tree(&tree(&ckpt.join("state")), &state_after_b, "data checkpoints after A was continued");
    assert_same_tree(&tree(&tmp.path().join("out")), &out_after_b, "outputs after A was continued");
    assert_same_tree(&tree(&tmp.path().join("out")), &expected.join().unwrap(), "outputs after the takeover");
}
