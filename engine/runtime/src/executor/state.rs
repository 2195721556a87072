//! Stateful partitions: `update_state_by_key` and windows with an inverse
//! function. Both combine the previous RDD of the same stream (same
//! partitioning) with this batch's partitions, so their lineage is a chain
//! that data checkpoints cut. Keys keep a deterministic order: the previous
//! state's order, then new keys in first-seen order.

use std::collections::HashMap;

use weir_codec as codec;

use super::calls::{bad_data, engine_fault, pair, records, TaskFailure, UdfCalls};
use super::groups::KeyMap;
use super::shuffle::{fold, key_hash, ListMerge};
use crate::rdd::{PairFilter, Reducer, UdfRef};
use crate::udf::UdfKind;

/// update_state_by_key on one partition: `prev` holds `(k, state)` pairs,
/// `groups` the batch's `(k, [values])` records: the map sides' groups of
/// the shuffle (a key in several of them has its lists joined in their
/// order) or one block already merged. The update function is called for
/// every key (with `[]` for keys without new values); a null result removes
/// the key. The groups are merged straight into the function's input: each
/// key is hashed once and each value copied once.
pub(crate) fn update_state(
    cx: &mut UdfCalls<'_>,
    update: &UdfRef,
    prev: Option<&[u8]>,
    groups: &[&[u8]],
    p: u32,
) -> Result<Vec<u8>, TaskFailure> {
    let null: &[u8] = &[codec::TAG_NULL];
    let n_prev = prev.and_then(|p| codec::Records::new(p).ok()).map_or(0, |r| r.remaining() as usize);
    // The state's keys first, in its order; then new keys in first-seen order.
    let mut merged = ListMerge::for_batches(groups, n_prev);
    let states = match prev {
        Some(prev) => merged.seed_pairs(prev)?,
        None => Vec::new(),
    };
    for g in groups {
        merged.add_groups(g)?;
    }
    let mut input = codec::BatchBuilder::with_capacity(merged.bytes() + states.iter().map(|s| s.len()).sum::<usize>());
    for i in 0..merged.keys.len() {
        merged.prefetch_values(i + 4);
        input.push_with(|w| {
            w.tuple(3);
            w.raw(merged.keys[i].key);
            merged.write_values(i, w);
            w.raw(states.get(i).copied().unwrap_or(null));
        });
    }
    let out = cx.call_kind(update, UdfKind::Update, &input.finish(), p)?;
    let mut b = codec::BatchBuilder::with_capacity(out.len() + merged.keys.len() * 16);
    for (key, s) in merged.keys.iter().zip(records(&out)?) {
        let s = s?;
        if s != null {
            b.push_with(|w| codec::write_pair(w.buf, key.key, s));
        }
    }
    Ok(b.finish())
}

/// The per-key inputs of a window step.
#[derive(Default)]
struct Key<'a> {
    prev: Option<&'a [u8]>,
    old: Vec<&'a [u8]>,
    new: Vec<&'a [u8]>,
}

/// reduce_by_key_and_window with an inverse function, on one partition:
/// `value = reduce(inverse(prev, reduce(old...)), reduce(new...))`, as Spark
/// computes it; a key with no previous value takes the reduce of its new
/// values. Keys whose value reaches zero are kept unless `filter` drops them;
/// a key dropped while values of it are still in the window fails the batch
/// (`time`) when they leave, as in Spark.
#[allow(clippy::too_many_arguments)]
pub(crate) fn inverse_window(
    cx: &mut UdfCalls<'_>,
    time: i64,
    reduce: &Reducer,
    inverse: &Reducer,
    filter: Option<&PairFilter>,
    prev: Option<&[u8]>,
    leaving: &[&[u8]],
    entering: &[&[u8]],
    p: u32,
) -> Result<Vec<u8>, TaskFailure> {
    let mut order: Vec<&[u8]> = Vec::new();
    let mut keys: KeyMap<'_, Key> = KeyMap::default();
    if let Some(prev) = prev {
        for r in records(prev)? {
            let (k, v) = pair(r?)?;
            order.push(k);
            keys.entry(k).or_default().prev = Some(v);
        }
    }
    // Values leaving a window were in it, so their key has a previous value
    // unless `filter` dropped it while it was still in the window.
    let mut dropped: Vec<&[u8]> = Vec::new();
    for part in leaving {
        for r in records(part)? {
            let (k, v) = pair(r?)?;
            match keys.get_mut(k) {
                Some(e) => e.old.push(v),
                None => dropped.push(k),
            }
        }
    }
    for part in entering {
        for r in records(part)? {
            let (k, v) = pair(r?)?;
            let e = keys.entry(k).or_insert_with(|| {
                order.push(k);
                Key::default()
            });
            e.new.push(v);
        }
    }
    // As Spark's ReducedWindowedDStream: such a key with new values takes
    // their reduce; without, there is nothing to compute it from, and Spark
    // fails the batch ("Neither previous window has value for key, nor new
    // values found") rather than silently skip what is leaving.
    if let Some(k) = dropped.into_iter().find(|k| !keys.contains_key(k)) {
        return Err(bad_data(format!(
            "window with an inverse function at batch {time} ms: key {} has values leaving the window but no \
             value in the previous window (the window's filter dropped it while values of it were still in the \
             window); let the filter keep a key until its values have left the window",
            short_render(k)
        )));
    }
    // Each step is one batched UDF call over the keys that need it.
    let with_old: Vec<&[u8]> =
        order.iter().copied().filter(|k| keys[k].prev.is_some() && !keys[k].old.is_empty()).collect();
    let old_lists: Vec<&[&[u8]]> = with_old.iter().map(|k| keys[k].old.as_slice()).collect();
    let old_reduced = fold(cx, reduce, &old_lists, p)?;
    let mut temp: KeyMap<'_, Vec<u8>> = KeyMap::default();
    {
        let pairs: Vec<[&[u8]; 2]> =
            with_old.iter().zip(&old_reduced).filter_map(|(k, o)| Some([keys[k].prev?, o.as_slice()])).collect();
        let lists: Vec<&[&[u8]]> = pairs.iter().map(|pr| pr.as_slice()).collect();
        for (k, v) in with_old.iter().zip(fold(cx, inverse, &lists, p)?) {
            temp.insert(k, v);
        }
    }
    let with_new: Vec<&[u8]> = order.iter().copied().filter(|k| !keys[k].new.is_empty()).collect();
    let new_lists: Vec<&[&[u8]]> = with_new.iter().map(|k| keys[k].new.as_slice()).collect();
    let new_reduced: KeyMap<'_, Vec<u8>> = with_new.iter().copied().zip(fold(cx, reduce, &new_lists, p)?).collect();
    // Keys with both a running value and new values: one more reduce.
    let both: Vec<&[u8]> =
        order.iter().copied().filter(|k| keys[k].prev.is_some() && new_reduced.contains_key(k)).collect();
    let both_vals: Vec<Vec<u8>> = both
        .iter()
        .map(|k| temp.get(k).cloned().or_else(|| keys[k].prev.map(|v| v.to_vec())).unwrap_or_default())
        .collect();
    let both_pairs: Vec<[&[u8]; 2]> =
        both.iter().zip(&both_vals).map(|(k, t)| [t.as_slice(), new_reduced[k].as_slice()]).collect();
    let both_lists: Vec<&[&[u8]]> = both_pairs.iter().map(|pr| pr.as_slice()).collect();
    let merged: KeyMap<'_, Vec<u8>> = both.iter().copied().zip(fold(cx, reduce, &both_lists, p)?).collect();

    let mut out = codec::BatchBuilder::new();
    for k in &order {
        let e = &keys[k];
        let v: Option<&[u8]> = if let Some(m) = merged.get(k) {
            Some(m)
        } else if e.prev.is_some() {
            temp.get(k).map(|t| t.as_slice()).or(e.prev)
        } else {
            new_reduced.get(k).map(|v| v.as_slice())
        };
        if let Some(v) = v {
            out.push_with(|w| codec::write_pair(w.buf, k, v));
        }
    }
    let out = out.finish();
    match filter {
        None => Ok(out),
        Some(PairFilter::NonZero) => {
            let mut b = codec::BatchBuilder::with_capacity(out.len());
            for r in records(&out)? {
                let r = r?;
                let (_, v) = pair(r)?;
                if codec::as_i64(v) != Some(0) {
                    b.push_raw(r);
                }
            }
            Ok(b.finish())
        }
        Some(PairFilter::Udf(f)) => {
            let keep = cx.call_kind(f, UdfKind::Filter, &out, p)?;
            let mut b = codec::BatchBuilder::with_capacity(out.len());
            for (r, flag) in records(&out)?.zip(keep.get(4..).unwrap_or_default()) {
                if *flag == codec::TAG_TRUE {
                    b.push_raw(r?);
                }
            }
            Ok(b.finish())
        }
    }
}

/// The pairs of an encoded batch that the hash partitioner puts in partition
/// `p` of `n` (the initial state of update_state_by_key, split like the state).
pub(crate) fn partition_of_pairs(pairs: &[u8], p: u32, n: u32) -> Result<Vec<u8>, TaskFailure> {
    let mut b = codec::BatchBuilder::new();
    for r in records(pairs)? {
        let r = r?;
        let (k, _) = pair(r)?;
        if key_hash(k) % n.max(1) as u64 == p as u64 {
            b.push_raw(r);
        }
    }
    Ok(b.finish())
}

/// The state a map_with_state partition starts from.
pub(crate) enum Prev {
    /// The first batch, without an initial state.
    None,
    /// The previous RDD's tagged records (only the `(0, k, state,
    /// last_update_ms)` ones matter).
    Tagged(super::block_store::Block),
    /// The first batch's initial state: `(k, state)` pairs, last updated at
    /// this batch (as Spark's `MapWithStateRDD.createFromPairRDD`).
    Pairs(Vec<u8>),
}

/// map_with_state on one partition, from `prev`; `grouped` holds `(k, [values])`.
/// Keys with values get one call of `f` per value, in order; keys without
/// values keep their state untouched unless they have been idle for more
/// than `timeout_ms`, in which case `f` is called once with no value (timing
/// out) and the key's state is removed. The plan gives `timeout_ms` only on
/// batches whose state is checkpointed (Spark's rule).
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_with_state(
    cx: &mut UdfCalls<'_>,
    f: &UdfRef,
    timeout_ms: Option<i64>,
    time: i64,
    prev: &Prev,
    grouped: &[u8],
    p: u32,
) -> Result<Vec<u8>, TaskFailure> {
    let null: &[u8] = &[codec::TAG_NULL];
    let empty_list: &[u8] = &[codec::TAG_LIST, 0, 0, 0, 0];
    // key -> (state, last update, new values)
    let mut keys: Vec<(&[u8], &[u8], i64, Option<&[u8]>)> = Vec::new();
    let mut index: KeyMap<'_, usize> = KeyMap::default();
    match prev {
        Prev::None => {}
        Prev::Tagged(prev) => {
            for r in records(prev)? {
                let xs = codec::elements(r?)?;
                if xs.len() == 4 && codec::as_i64(xs[0]) == Some(0) {
                    index.insert(xs[1], keys.len());
                    keys.push((xs[1], xs[2], codec::as_i64(xs[3]).unwrap_or(time), None));
                }
            }
        }
        Prev::Pairs(pairs) => {
            for r in records(pairs)? {
                let (k, s) = pair(r?)?;
                // A null state is no state (the ABI's "absent"); a key
                // given twice keeps its first state.
                if s != null && !index.contains_key(k) {
                    index.insert(k, keys.len());
                    keys.push((k, s, time, None));
                }
            }
        }
    }
    for r in records(grouped)? {
        let (k, vs) = pair(r?)?;
        match index.get(k) {
            Some(&i) => keys[i].3 = Some(vs),
            None => {
                index.insert(k, keys.len());
                keys.push((k, null, time, Some(vs)));
            }
        }
    }
    // Which keys get a call: those with values, and those timing out.
    let mut calls = codec::BatchBuilder::new();
    let mut called = Vec::new();
    for (i, (k, st, last, vs)) in keys.iter().enumerate() {
        // Spark's threshold: last update strictly before `time - timeout`.
        let timing_out = vs.is_none() && timeout_ms.is_some_and(|t| last.saturating_add(t) < time);
        if vs.is_some() || timing_out {
            calls.push_with(|w| {
                w.tuple(4);
                w.raw(k);
                w.raw(vs.unwrap_or(empty_list));
                w.raw(st);
                w.bool(timing_out);
            });
            // Calls `f` makes for this group: one per value, or one timing out.
            let n_calls = if timing_out { 1 } else { codec::elements(vs.unwrap_or(empty_list))?.len() };
            called.push((i, timing_out, n_calls));
        }
    }
    let out =
        if called.is_empty() { None } else { Some(cx.call_kind(f, UdfKind::MapWithState, &calls.finish(), p)?) };
    let mut results: HashMap<usize, (Vec<&[u8]>, Option<&[u8]>)> = HashMap::new();
    if let Some(out) = &out {
        for ((i, timing_out, n_calls), r) in called.iter().zip(records(out)?) {
            let xs = codec::elements(r?)?;
            let outputs = codec::elements(xs.first().copied().unwrap_or(empty_list))?;
            // At most one output per call (a call may emit nothing: Spark's
            // `Option` return); more is a malformed output, never kept.
            if outputs.len() > *n_calls {
                return Err(bad_data(format!(
                    "malformed output of {f}: {} outputs for key {} after {n_calls} call(s); a map_with_state \
                     function emits at most one record per call",
                    outputs.len(),
                    short_render(keys[*i].0)
                )));
            }
            let st = xs.get(1).copied().filter(|s| *s != null && !*timing_out);
            results.insert(*i, (outputs, st));
        }
    }
    let mut b = codec::BatchBuilder::new();
    let mut emitted = Vec::new();
    for (i, (k, st, last, _)) in keys.iter().enumerate() {
        let (state, updated) = match results.get(&i) {
            Some((outs, s)) => {
                emitted.extend(outs.iter().copied());
                (*s, time)
            }
            None => ((*st != null).then_some(*st), *last),
        };
        if let Some(s) = state {
            b.push_with(|w| {
                w.tuple(4);
                w.i64(0);
                w.raw(k);
                w.raw(s);
                w.i64(updated);
            });
        }
    }
    for o in emitted {
        b.push_with(|w| {
            w.tuple(2);
            w.i64(1);
            w.raw(o);
        });
    }
    Ok(b.finish())
}

/// A key as messages show it: rendered, cut to 200 characters.
fn short_render(k: &[u8]) -> String {
    let r = codec::display::render(k);
    match r.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &r[..at]),
        None => r,
    }
}

/// Selects map_with_state's tagged records: tag 0 -> `(k, state)`, tag 1 ->
/// the emitted record.
pub(crate) fn select_tagged(input: &[u8], tag: u8) -> Result<Vec<u8>, TaskFailure> {
    let mut b = codec::BatchBuilder::new();
    for r in records(input)? {
        let xs = codec::elements(r?)?;
        if codec::as_i64(xs.first().copied().unwrap_or_default()) != Some(tag as i64) {
            continue;
        }
        match (tag, xs.as_slice()) {
            (0, [_, k, s, _]) => b.push_with(|w| codec::write_pair(w.buf, k, s)),
            (1, [_, o]) => b.push_raw(o),
            _ => return Err(bad_data("malformed map_with_state record")),
        }
    }
    Ok(b.finish())
}

/// Reads partition `p` of a data checkpoint file.
/// `path` is `<root>/state/<file>`; `<root>` may be an object-store URL.
/// The file is read under the job's checkpoint `bounds`.
pub(crate) fn read_checkpointed(
    path: &str,
    p: u32,
    bounds: weir_plan::limits::CheckpointBounds,
) -> Result<Vec<u8>, TaskFailure> {
    let (dir, name) = match path.rsplit_once("/state/") {
        Some((root, name)) => (std::path::Path::new(root), name.to_string()),
        None => (std::path::Path::new("."), path.to_string()),
    };
    let path = std::path::Path::new(path);
    let r = crate::checkpoint::StateRef { time: 0, file: name, partitions: 0, records: 0, bytes: 0 };
    let parts = crate::checkpoint::read_state_bounded(dir, &r, bounds)
        .map_err(|e| engine_fault(format!("data checkpoint: {e}")))?;
    parts
        .into_iter()
        .nth(p as usize)
        .ok_or_else(|| engine_fault(format!("data checkpoint {} has no partition {p}", path.display())))
}
