//! Driver epochs and fencing (issue 18): a driver paused past its lease and
//! taken over by a new driver on the same checkpoint must write no
//! checkpoint and no output after the takeover (beyond the one commit it
//! was inside, which recovery ignores), and stop with an error naming its
//! epoch and the newer one; the outputs must equal an uninterrupted run's.
//! Real processes, SIGSTOP/SIGCONT, every wait with a deadline.

use crate::cluster::{signal, wait_until, SIGCONT};
use crate::common::*;
use crate::drivers::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// A local checkpoint directory: driver A stops itself (SIGSTOP) inside a
/// metadata checkpoint commit — after its fence check, before its write
/// (`WEIR_FAILPOINT_STOP_IN_COMMIT`). Driver B takes over after the TTL
/// (nothing A holds keeps it waiting; a lock held across the commit kept
/// it out for 60 s) as epoch 2 and runs the job to its end; then A is
/// continued. A finishes the one commit it was inside (its check-then-write
/// window: a metadata checkpoint of epoch 1, which recovery does not use),
/// then stops, fenced, naming epochs 1 and 2, changing nothing else; the
/// outputs equal an uninterrupted run's, and a third driver recovers from
/// the directory and finishes cleanly.
#[test]
fn a_driver_paused_inside_a_commit_is_taken_over_after_its_ttl_and_stops_fenced() {
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
    let mut a = Driver::spawn(cmd().env("WEIR_FAILPOINT_STOP_IN_COMMIT", "metadata:12"));
    a.wait_for(deadline, "driver A to stop inside a metadata commit", |l| l.contains("WEIR_FAILPOINT_STOP_IN_COMMIT"));
    wait_until("driver A to stop", Duration::from_secs(10), || crate::cluster::proc_state(a.pid()) == Some('T'));

    let started = Instant::now();
    let mut b = Driver::spawn(&mut cmd());
    let within = Duration::from_millis(LEASE_MS) + Duration::from_secs(15);
    b.wait_for(started + within, "driver B's first batch, within the TTL + 15 s", |l| progress(l).is_some());
    let status = b.wait_exit(Duration::from_secs(120), "driver B to finish the job");
    let blog = b.log();
    assert!(status.success(), "driver B failed ({status}):\n{blog}");
    assert!(blog.contains("taking over checkpoint directory") && blog.contains("this driver is epoch 2"), "{blog}");
    assert!(crate::cluster::proc_state(a.pid()) == Some('T'), "driver A ran on while B did");
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
    // A's one-commit window: the metadata checkpoint it was inside, no more.
    let meta_after_a = tree(&ckpt.join("metadata"));
    let extra: Vec<&String> = meta_after_a.keys().filter(|k| !meta_after_b.contains_key(*k)).collect();
    assert!(extra.len() == 1 && extra[0].ends_with("-e1"), "A's writes after the takeover: {extra:?}");
    let kept: BTreeMap<String, Vec<u8>> =
        meta_after_a.into_iter().filter(|(k, _)| meta_after_b.contains_key(k)).collect();
    assert_same_tree(&kept, &meta_after_b, "B's metadata checkpoints after A was continued");
    assert_same_tree(&tree(&ckpt.join("state")), &state_after_b, "data checkpoints after A was continued");
    assert_same_tree(&tree(&tmp.path().join("out")), &out_after_b, "outputs after A was continued");
    let expected = expected.join().unwrap();
    assert_same_tree(&tree(&tmp.path().join("out")), &expected, "outputs after the takeover");

    // A third driver recovers from B's checkpoints, not from A's late one.
    let mut c = Driver::spawn(&mut cmd());
    let status = c.wait_exit(Duration::from_secs(120), "driver C to finish");
    let clog = c.log();
    assert!(status.success(), "driver C failed ({status}):\n{clog}");
    assert!(!clog.contains("fenced"), "{clog}");
    assert!(ckpt.join("epochs/00000000000000000003").is_file(), "driver C was not epoch 3");
    assert_same_tree(&tree(&tmp.path().join("out")), &expected, "outputs after a third driver");
}
