//! The UDF calls of one task: one fresh instance per module per task (so no
//! memory survives from one task to another, and a recomputation never
//! depends on an old instance), dropped after a failed call; and the record
//! helpers every operation shares. The bottom of the executor's modules:
//! `task` -> `shuffle`, `state` -> `groups` -> `calls`.

use std::collections::HashMap;

use weir_codec as codec;

use crate::rdd::{UdfParams, UdfRef};
use crate::udf::{ModuleHash, ModuleRegistry, UdfInstance, UdfKind};
pub use weir_plan::task::TaskFailure;

/// Which instance serves a call: one per module, and apart from that one
/// per use of a function with parameters (its own parameters are handed to
/// its instance) and, for a module that asks for the batch time, one per
/// batch time (a task may recompute an older batch's RDD: its calls see
/// that batch's time, so a recomputation is byte-identical).
#[derive(Clone, PartialEq, Eq, Hash)]
struct InstanceKey {
    module: ModuleHash,
    params: Option<(String, UdfKind, UdfParams)>,
    time: Option<i64>,
}

/// The instances and call count of one task.
pub(crate) struct UdfCalls<'a> {
    registry: &'a ModuleRegistry,
    batch_time: i64,
    /// The batch time of the RDD being computed (see [`UdfCalls::set_time`]).
    time: i64,
    instances: HashMap<InstanceKey, UdfInstance>,
    /// UDF calls made (for metrics).
    pub(crate) count: u64,
}

impl<'a> UdfCalls<'a> {
    pub(crate) fn new(registry: &'a ModuleRegistry, batch_time: i64) -> Self {
        UdfCalls { registry, batch_time, time: batch_time, instances: HashMap::new(), count: 0 }
    }

    /// Sets the batch time of the RDD whose UDFs are called next (the task
    /// may compute older batches' RDDs on the way); returns the previous
    /// one, to restore.
    pub(crate) fn set_time(&mut self, time: i64) -> i64 {
        std::mem::replace(&mut self.time, time)
    }

    fn key(&self, f: &UdfRef, takes_time: bool) -> InstanceKey {
        InstanceKey {
            module: f.module,
            params: f.params.as_ref().map(|p| (f.function.clone(), f.kind, p.clone())),
            time: takes_time.then_some(self.time),
        }
    }

    fn instance(&mut self, f: &UdfRef, partition: u32) -> Result<(&mut UdfInstance, InstanceKey), TaskFailure> {
        let module = self.registry.get(&f.module).ok_or_else(|| {
            engine_fault(format!(
                "module {} (sha256 {}) is not loaded on this executor",
                f.module_name,
                f.module.short()
            ))
        })?;
        let key = self.key(f, module.takes_batch_time());
        if !self.instances.contains_key(&key) {
            // A module that asks for the batch time gets its RDD's; the
            // others keep the task's (a component's clocks read it).
            let time = if module.takes_batch_time() { self.time } else { self.batch_time };
            let params = f.params.as_ref().map(|p| (f.function.as_str(), f.kind, p));
            let inst = module.instantiate_with(Some(time), Some(partition), params)?;
            self.instances.insert(key.clone(), inst);
        }
        let inst = self.instances.get_mut(&key).ok_or_else(|| engine_fault("instance vanished"))?;
        Ok((inst, key))
    }

    /// Runs functions of one module as a chained call on the batch made of
    /// `parts` (see `pipeline_into`); `consume` reads the output in place.
    pub(crate) fn call_chain_with<R>(
        &mut self,
        steps: &[&UdfRef],
        count: u32,
        parts: &[&[u8]],
        partition: u32,
        consume: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, TaskFailure> {
        let names: Vec<(&str, UdfKind)> = steps.iter().map(|f| (f.function.as_str(), f.kind)).collect();
        self.count += steps.len() as u64;
        let (inst, key) = self.instance(steps[0], partition)?;
        let r = inst.call_chain_with(&names, count, parts, consume);
        r.map_err(|e| {
            // A failed instance is never reused.
            self.instances.remove(&key);
            e.into()
        })
    }

    /// Calls `f` as a `kind` function on the batch made of `parts` (holding
    /// `count` records); `consume` reads the output in place in guest memory.
    pub(crate) fn call_in_place<R>(
        &mut self,
        f: &UdfRef,
        kind: UdfKind,
        count: u32,
        parts: &[&[u8]],
        partition: u32,
        consume: impl FnOnce(&[u8]) -> Result<R, TaskFailure>,
    ) -> Result<Result<R, TaskFailure>, TaskFailure> {
        self.count += 1;
        let (inst, key) = self.instance(f, partition)?;
        let r = inst.call_chain_with(&[(f.function.as_str(), kind)], count, parts, consume);
        r.map_err(|e| {
            // A failed instance is never reused.
            self.instances.remove(&key);
            e.into()
        })
    }

    /// Calls a UDF on one batch in this task's instance of its module.
    pub(crate) fn call(&mut self, f: &UdfRef, input: &[u8], partition: u32) -> Result<Vec<u8>, TaskFailure> {
        self.call_kind(f, f.kind, input, partition)
    }

    pub(crate) fn call_kind(
        &mut self,
        f: &UdfRef,
        kind: UdfKind,
        input: &[u8],
        partition: u32,
    ) -> Result<Vec<u8>, TaskFailure> {
        let (inst, key) = self.instance(f, partition)?;
        let r = inst.call(&f.function, kind, input);
        self.count += 1;
        match r {
            Ok(out) => Ok(out),
            Err(e) => {
                // A failed instance is never reused.
                self.instances.remove(&key);
                Err(e.into())
            }
        }
    }
}

/// Records an operation cannot use (see [`TaskFailure::BadData`]): never
/// retried. The failure is located where it surfaces (`TaskCx::compute`).
pub(crate) fn bad_data(msg: impl Into<String>) -> TaskFailure {
    TaskFailure::bad_data(msg)
}

/// The engine failed, not the data (see [`TaskFailure::Engine`]): retried.
pub(crate) fn engine_fault(msg: impl Into<String>) -> TaskFailure {
    TaskFailure::engine(msg)
}

pub(crate) fn records(batch: &[u8]) -> Result<codec::Records<'_>, TaskFailure> {
    codec::Records::new(batch).map_err(|e| bad_data(format!("malformed batch: {e}")))
}

#[inline]
pub(crate) fn pair(rec: &[u8]) -> Result<(&[u8], &[u8]), TaskFailure> {
    codec::split_pair(rec).map_err(|_| not_pair(rec))
}

#[cold]
fn not_pair(rec: &[u8]) -> TaskFailure {
    bad_data(format!("expected a (key, value) pair, got {}", codec::display::render(rec)))
}
