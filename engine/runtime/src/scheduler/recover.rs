//! The driver's first step: open the checkpoint directory and, when it holds
//! a checkpoint of this job, recover from it — source positions, the inputs
//! of recorded batches (read again), the newest durable state, and the
//! batches that were generated but not finished (re-run first).
//!
//! A fresh job writes its first metadata checkpoint, durably, before any
//! batch runs: a driver killed at any moment after its receivers opened
//! restarts from it and replays what they logged.

use std::path::Path;
use std::sync::Arc;

use super::driver::{Driver, Job};
use super::job_change::check_compatible;
use super::options::RunOptions;
use crate::checkpoint::{self, CheckpointDir, CheckpointError, Metadata};
use crate::listener::{ListenerBus, RecoveryEvent};
use crate::rdd::{BlockId, Rdd, RddId, RddOp};
use crate::source::{self, Source, SourceError, SourceSpec};
use crate::EngineError;
use weir_plan::graph::register;

/// Opens (or clears, with `fresh`) the checkpoint directory and checks that
/// what it holds belongs to this job.
pub(super) fn open_checkpoint(
    job: &Job,
    opts: &RunOptions,
    listeners: &ListenerBus,
) -> Result<(Option<CheckpointDir>, Option<Metadata>), EngineError> {
    let Some(c) = &opts.checkpoint else { return Ok((None, None)) };
    let (mut dir, rec) = CheckpointDir::open_location(c, job.graph.checkpoint)?;
    dir.set_listeners(listeners.clone());
    for (_, why) in &rec.invalid {
        let e = RecoveryEvent::InvalidCheckpoint { reason: why.clone() };
        tracing::warn!("checkpoint not usable, falling back to an older one: {why}");
        listeners.emit(|l| l.on_recovery(&e));
    }
    if rec.metadata.is_none() && rec.state_lost {
        return Err(EngineError::Checkpoint(CheckpointError::Mismatch(format!(
            "{}: no metadata checkpoint has valid data checkpoints (see the warnings above), so the state \
             of the job's stateful streams is lost; run with --fresh to discard the checkpoint and start over",
            c.dir.display()
        ))));
    }
    let mut metadata = rec.metadata;
    if let Some(m) = &mut metadata {
        check_compatible(job, m, c)?;
    }
    Ok((Some(dir), metadata))
}

/// Sets every directory source's `root` to `root` (the embedder's, e.g.
/// a tenant's, overrides the job's own). The job's hash and identity were
/// taken from the job as written, so checkpoints still match.
pub(super) fn confine_directory_sources(job: &mut Job, root: &Path) {
    for s in &mut job.graph.sources {
        if let SourceSpec::Directory { root: r, .. } = s {
            *r = Some(root.to_path_buf());
        }
    }
}

/// Confines every sink that writes local files to `root` ([`crate::sink::Sink::confined`]).
pub(super) fn confine_outputs(job: &mut Job, root: &Path) {
    for s in &mut job.sinks {
        if let Some(c) = s.confined(root) {
            *s = c;
        }
    }
}

/// Starts the job's sources; receivers log to the checkpoint's WAL.
pub(super) fn open_sources(
    job: &mut Job,
    ckpt: Option<&CheckpointDir>,
    listeners: &ListenerBus,
) -> Result<Vec<Box<dyn Source>>, EngineError> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for (i, s) in job.graph.sources.iter().enumerate() {
        if let SourceSpec::Custom { id, .. } = s {
            let taken = job.custom_sources.get_mut(*id).and_then(Option::take);
            let src = taken.ok_or_else(|| {
                SourceError::Replay(format!("custom source {id} of the job was not given (or already used)"))
            })?;
            sources.push(src);
            continue;
        }
        if let (SourceSpec::Socket { .. }, Some(c)) = (s, ckpt) {
            if c.is_remote() {
                // The receiver's write-ahead log is an append-only local
                // file; an object store has no append.
                return Err(EngineError::Checkpoint(CheckpointError::Mismatch(format!(
                    "source {i} is a socket, whose receiver needs a write-ahead log in a local checkpoint \
                     directory; {} is an object-store location: checkpoint to a local directory for socket \
                     sources",
                    c.root().display()
                ))));
            }
        }
        let wal = ckpt.map(|c| source::WalAt {
            dir: checkpoint::wal_dir(c.root()),
            source: i as u32,
            confine: c.confine().map(Path::to_path_buf),
        });
        sources.push(source::open(s, &job.base_dir, wal, listeners, job.graph.batch_interval_ms)?);
    }
    Ok(sources)
}

impl Driver {
    /// Recover: restores the run from `recovered`, or makes a fresh job's
    /// first checkpoint durable.
    pub(super) fn recover(&mut self, recovered: Option<Metadata>) -> Result<(), EngineError> {
        let Some(m) = recovered else {
            if let Some(c) = &self.ckpt {
                c.write_metadata(self.snapshot());
                c.flush();
            }
            return Ok(());
        };
        self.progress.zero_time = m.zero_time;
        for (src, cur) in self.sources.iter_mut().zip(&m.cursors) {
            src.restore(cur)?;
        }
        self.replay_inputs(&m)?;
        self.restore_state(&m)?;
        let p = &mut self.progress;
        p.inputs = m.inputs.clone();
        p.last_completed = m.last_completed;
        p.pending = m.pending.clone();
        p.replay = m.pending.iter().copied().collect();
        if let Some(newest) = m.newest_batch() {
            p.k = (newest - p.zero_time) / self.job.graph.batch_interval_ms;
        }
        let e = RecoveryEvent::Recovered { seq: m.seq, last_completed: m.last_completed, pending: p.replay.len() };
        tracing::info!("{e:?}");
        self.listeners.emit(|l| l.on_recovery(&e));
        Ok(())
    }

    /// Inputs of recorded batches: read again and stored as blocks, so the
    /// windows and states that reach back to them can be rebuilt.
    fn replay_inputs(&mut self, m: &Metadata) -> Result<(), EngineError> {
        for (t, recs) in &m.inputs {
            for (i, rec) in recs.iter().enumerate() {
                let Some(&node) = self.source_nodes.get(&(i as u32)) else { continue };
                let parts = self.sources[i].replay_partitions(*t, &rec.descriptor, self.job.graph.parallelism)?;
                let rdd = self.store_input(*t, node, i as u32, parts)?;
                register(&mut self.memo, &mut self.dag.lineage, node, rdd);
            }
        }
        Ok(())
    }

    /// The newest durable state of each stateful stream, as checkpointed RDDs.
    fn restore_state(&mut self, m: &Metadata) -> Result<(), EngineError> {
        let Some(c) = &self.ckpt else { return Ok(()) };
        for (node, r) in &m.state {
            let parts = c.read_state(r).map_err(|e| {
                EngineError::Checkpoint(CheckpointError::Mismatch(format!("cannot restore state: {e}")))
            })?;
            let id = RddId { time: r.time, node: *node };
            for (p, data) in parts.into_iter().enumerate() {
                let bid = BlockId::Rdd { rdd: id, partition: p as u32 };
                self.dag.register_block(bid, crate::rdd::digest(&data));
                self.blocks.put(bid, Arc::new(data)).map_err(|e| {
                    EngineError::Checkpoint(CheckpointError::Mismatch(format!("cannot restore state: {e}")))
                })?;
            }
            let label = self.job.graph.nodes.get(*node as usize).map(|n| n.label.clone()).unwrap_or_default();
            let op = RddOp::Checkpointed { path: c.state_path(&r.file), bounds: self.job.graph.checkpoint };
            register(
                &mut self.memo,
                &mut self.dag.lineage,
                *node,
                Rdd { id, partitions: r.partitions, op, persist: true, label },
            );
        }
        Ok(())
    }
}
