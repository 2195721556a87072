//! What happens when a job changed between runs on one checkpoint. The
//! checkpoint records what its state depends on
//! ([`JobIdentity`](weir_plan::identity::JobIdentity): the sources and, per
//! stateful stream, a signature of its lineage). An edit elsewhere (an
//! output, a stateless branch, a comment) recovers normally, the state
//! moving to the streams' new node ids. An edit of a stateful stream's
//! lineage is refused with a diff, unless the user accepts it
//! (`--accept-job-change`; `--accept-module-change` when only module hashes
//! differ). A changed source is always refused: the recorded positions and
//! inputs belong to the old one.

use std::collections::BTreeMap;

use super::driver::Job;
use super::options::CheckpointOptions;
use crate::checkpoint::{CheckpointError, Metadata};
use crate::EngineError;
use weir_plan::identity::Comparison;

fn refuse<T>(msg: String) -> Result<T, EngineError> {
    Err(EngineError::Checkpoint(CheckpointError::Mismatch(msg)))
}

/// Refuses to continue a checkpoint of another job; otherwise moves the
/// checkpoint's state (`m.state`, by node) onto this job's streams.
pub(super) fn check_compatible(job: &Job, m: &mut Metadata, c: &CheckpointOptions) -> Result<(), EngineError> {
    if m.batch_interval_ms != job.graph.batch_interval_ms {
        return refuse(format!(
            "the batch interval changed ({} ms in the checkpoint, {} ms now); run with --fresh to start over",
            m.batch_interval_ms, job.graph.batch_interval_ms
        ));
    }
    let Some(old) = &m.identity else { return check_legacy(job, m, c.accept_module_change) };
    let cmp = old.compare(&job.identity);
    if !cmp.sources.is_empty() {
        return refuse(format!(
            "the job's sources changed since the checkpoint was written; the positions and inputs it \
             recorded belong to the old sources. Run with --fresh to start over.\n{}",
            cmp.diff()
        ));
    }
    if !cmp.is_same() {
        let accepted = c.accept_job_change || (cmp.modules_only() && c.accept_module_change);
        if !accepted {
            return refuse(refusal(job, m, &cmp));
        }
        tracing::warn!("continuing a checkpoint of a changed job, as asked:\n{}", cmp.diff());
    }
    for changed in changed_modules(job, m) {
        tracing::warn!("UDF module changed since the checkpoint: {changed}; batches re-run with the new code");
    }
    move_state(m, &cmp);
    Ok(())
}

/// The message of a refused change: what changed, as a diff, and the ways on.
fn refusal(job: &Job, m: &Metadata, cmp: &Comparison) -> String {
    if cmp.modules_only() {
        return format!(
            "UDF module changed since the checkpoint was written: {}; run with --accept-module-change to \
             continue with the new module (recomputed batches then use the new code), or --fresh to start over\n{}",
            changed_modules(job, m).join(", "),
            cmp.diff()
        );
    }
    format!(
        "{} changed since the checkpoint was written in what its state depends on:\n{}\n\
         Run with --accept-job-change to continue anyway (streams that match keep their state, a removed \
         stream's state is dropped, a new stream starts without state), or --fresh to start over.",
        job.job_name,
        cmp.diff()
    )
}

/// State of the checkpoint's nodes, under the new job's node ids; the state
/// of a stream with no counterpart is dropped.
fn move_state(m: &mut Metadata, cmp: &Comparison) {
    let mut to: BTreeMap<u32, u32> = cmp.same.clone();
    to.extend(cmp.changed.iter().map(|c| (c.old.node, c.new.node)));
    let old = std::mem::take(&mut m.state);
    for (node, r) in old {
        match to.get(&node) {
            Some(new) => {
                m.state.insert(*new, r);
            }
            None => tracing::warn!("the checkpoint's state of stream {node} is dropped: the job no longer has it"),
        }
    }
}

/// Module files whose hash differs from the checkpoint's.
fn changed_modules(job: &Job, m: &Metadata) -> Vec<String> {
    let mut changed = Vec::new();
    for (name, h) in &job.modules {
        match m.modules.get(name) {
            Some(old) if old != h => changed.push(format!("{name} (sha256 {old} in the checkpoint, {h} now)")),
            _ => {}
        }
    }
    changed
}

/// A checkpoint written before identities existed: only the same job file
/// (by hash) continues it, as then.
fn check_legacy(job: &Job, m: &Metadata, accept_module_change: bool) -> Result<(), EngineError> {
    if m.job_hash != job.job_hash {
        return refuse(format!(
            "the job changed since the checkpoint was written: {} had sha256 {}, {} now has sha256 {} \
             (a checkpoint from an older Weir records no lineage to compare); run with --fresh to discard \
             the checkpoint and start over",
            m.job, m.job_hash, job.job_name, job.job_hash
        ));
    }
    let changed = changed_modules(job, m);
    if !changed.is_empty() && !accept_module_change {
        return refuse(format!(
            "UDF module changed since the checkpoint was written: {}; run with --accept-module-change to \
             continue with the new module (recomputed batches then use the new code), or --fresh to start over",
            changed.join(", ")
        ));
    }
    Ok(())
}
