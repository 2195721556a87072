//! The UDF calls of one task: one fresh instance per module per task (so no
//! memory survives from one task to another, and a recomputation never
//! depends on an old instance), dropped after a failed call; and the record
//! helpers every operation shares. The bottom of the executor's modules:
//! `task` -> `shuffle`, `state` -> `groups` -> `calls`.

use std::collections::{BTreeMap, HashMap};

use weir_codec as codec;

use crate::rdd::{UdfParams, UdfRef};
use crate::udf::{ModuleHash, ModuleRegistry, UdfError, UdfErrorKind, UdfInstance, UdfKind};
pub use weir_plan::task::{TaskFailure, UdfUsage};

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
    /// Per module name: calls, failures, and the fuel of instances already
    /// dropped (see [`UdfCalls::usage`]).
    usage: BTreeMap<String, UdfUsage>,
    /// The module name of each instance's key.
    names: HashMap<ModuleHash, String>,
}

impl<'a> UdfCalls<'a> {
    pub(crate) fn new(registry: &'a ModuleRegistry, batch_time: i64) -> Self {
        UdfCalls {
            registry,
            batch_time,
            time: batch_time,
            instances: HashMap::new(),
            count: 0,
            usage: BTreeMap::new(),
            names: HashMap::new(),
        }
    }

    /// Adds to a module's figures; its name is allocated only the first
    /// time (this runs on every call).
    fn add_usage(&mut self, module: &str, calls: u64, fuel: u64, failed: Option<&UdfError>) {
        let failures = u64::from(failed.is_some());
        let traps = u64::from(
            failed.is_some_and(|e| matches!(e.kind, UdfErrorKind::Trap { .. } | UdfErrorKind::StackOverflow)),
        );
        match self.usage.get_mut(module) {
            Some(u) => {
                u.calls += calls;
                u.fuel += fuel;
                u.failures += failures;
                u.traps += traps;
            }
            None => {
                let u = UdfUsage { module: module.to_string(), calls, fuel, failures, traps };
                self.usage.insert(module.to_string(), u);
            }
        }
    }

    /// Counts `calls` calls of `f`'s module, and a failure when `failed`:
    /// the failed instance is dropped (never reused) and its fuel counted.
    fn account(&mut self, f: &UdfRef, key: &InstanceKey, calls: u64, failed: Option<&UdfError>) {
        self.count += calls;
        let fuel = if failed.is_some() { self.instances.remove(key).map_or(0, |i| i.fuel_burned()) } else { 0 };
        self.add_usage(&f.module_name, calls, fuel, failed);
    }

    /// What each module cost in this task so far, by module name: the fuel
    /// of live instances included.
    pub(crate) fn usage(&self) -> Vec<UdfUsage> {
        let mut usage = self.usage.clone();
        for (key, inst) in &self.instances {
            if let Some(name) = self.names.get(&key.module) {
                let u = usage
                    .entry(name.clone())
                    .or_insert_with(|| UdfUsage { module: name.clone(), ..Default::default() });
                u.fuel += inst.fuel_burned();
            }
        }
        usage.into_values().collect()
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
            let inst = match module.instantiate_with(Some(time), Some(partition), params) {
                Ok(i) => i,
                Err(e) => {
                    // A start-up that traps or runs out of fuel is the module's failure.
                    self.add_usage(&f.module_name, 0, 0, Some(&e));
                    return Err(e.into());
                }
            };
            self.names.entry(f.module).or_insert_with(|| f.module_name.clone());
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
        let (inst, key) = self.instance(steps[0], partition)?;
        let r = inst.call_chain_with(&names, count, parts, consume);
        self.account(steps[0], &key, steps.len() as u64, r.as_ref().err());
        r.map_err(Into::into)
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
        let (inst, key) = self.instance(f, partition)?;
        let r = inst.call_chain_with(&[(f.function.as_str(), kind)], count, parts, consume);
        self.account(f, &key, 1, r.as_ref().err());
        r.map_err(Into::into)
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
        self.account(f, &key, 1, r.as_ref().err());
        r.map_err(Into::into)
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

/// [`pair`] of a record that is one whole value (as a batch's records are
/// cut, which walked it already): the value is the rest of the record, so
/// its elements are not walked again.
#[inline]
pub(crate) fn pair_of_record(rec: &[u8]) -> Result<(&[u8], &[u8]), TaskFailure> {
    match rec {
        [codec::TAG_TUPLE, 2, 0, 0, 0, ..] => {
            let k_end = codec::skip_value(rec, 5).map_err(|_| not_pair(rec))?;
            Ok((&rec[5..k_end], &rec[k_end..]))
        }
        _ => Err(not_pair(rec)),
    }
}

#[cold]
fn not_pair(rec: &[u8]) -> TaskFailure {
    bad_data(format!("expected a (key, value) pair, got {}", codec::display::render(rec)))
}
