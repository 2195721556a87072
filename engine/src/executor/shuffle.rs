//! Shuffle: the map side buckets (and for reduce_by_key, combines) a
//! partition's records by the hash partitioner; the reduce side reads the
//! buckets of every map partition **in map-partition order** and merges them.
//! Keys are grouped in first-seen order, so the output never depends on hash
//! map iteration or on the order in which map tasks finished.

use std::collections::HashMap;

use hashbrown::HashTable;
use weir_codec as codec;

use super::block_store::Block;
use super::task::{pair, records, TaskCx, TaskFailure};
use crate::rdd::{Aggregation, Reducer, PARTITION_SEED};
use crate::udf::UdfKind;

fn bad(msg: impl Into<String>) -> TaskFailure {
    TaskFailure::Other(msg.into())
}

/// Keys in first-seen order with their values, owned (the records they come
/// from may be a UDF's output, gone after the next call). Keys are hashed
/// once (the partitioner's hash, reused for bucketing); a lookup touches
/// only the hash table slot and the key bytes. Values are appended to one
/// buffer as they come; `finish` lays them out group by group (stable:
/// values keep their input order within a key) with one scatter pass.
#[derive(Default)]
struct Groups {
    table: HashTable<Slot>,
    groups: Vec<Group>,
    /// The distinct keys, back to back.
    keys: Vec<u8>,
    /// Per value, in input order: its group and its length.
    recs: Vec<(u32, u32)>,
    /// The values, in input order, back to back.
    vals: Vec<u8>,
    /// The values, grouped (filled by `finish`).
    grouped: Vec<u8>,
}

/// A table slot. Short keys (most keys) are kept inline so that a lookup
/// compares them without touching the key buffer.
struct Slot {
    hash: u64,
    /// The group's value count and bytes, counted here because a lookup has
    /// just brought the slot into the cache (the group may not be).
    bytes: u64,
    count: u32,
    group: u32,
    len: u32,
    inline: [u8; INLINE_KEY],
}

const INLINE_KEY: usize = 20;

struct Group {
    hash: u64,
    key: (usize, usize),
    /// How many values, and their total size.
    count: u32,
    bytes: usize,
    /// Where its values start in `grouped` (after `finish`).
    start: usize,
}

#[inline]
fn key_eq(a: &[u8], b: &[u8]) -> bool {
    // Keys are short; a plain loop beats a call to memcmp.
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl Groups {
    fn new() -> Self {
        // The table starts small and grows with the distinct keys: sized for
        // the record count it would sprawl over memory that is mostly empty,
        // and every probe would miss the cache.
        Groups { table: HashTable::with_capacity(1 << 10), ..Default::default() }
    }

    fn key(&self, g: &Group) -> &[u8] {
        &self.keys[g.key.0..g.key.0 + g.key.1]
    }

    #[inline]
    fn add(&mut self, k: &[u8], v: &[u8]) {
        let h = key_hash(k);
        let (groups, keys) = (&self.groups, &self.keys);
        let found = self.table.find_mut(h, |s| {
            s.hash == h
                && s.len as usize == k.len()
                && if k.len() <= INLINE_KEY {
                    key_eq(&s.inline[..k.len()], k)
                } else {
                    let (at, n) = groups[s.group as usize].key;
                    key_eq(&keys[at..at + n], k)
                }
        });
        let g = match found {
            Some(s) => {
                s.count += 1;
                s.bytes += v.len() as u64;
                s.group
            }
            None => {
                let g = self.groups.len() as u32;
                self.groups.push(Group { hash: h, key: (self.keys.len(), k.len()), count: 0, bytes: 0, start: 0 });
                self.keys.extend_from_slice(k);
                let mut inline = [0u8; INLINE_KEY];
                if k.len() <= INLINE_KEY {
                    inline[..k.len()].copy_from_slice(k);
                }
                let slot = Slot { hash: h, bytes: v.len() as u64, count: 1, group: g, len: k.len() as u32, inline };
                self.table.insert_unique(h, slot, |s| s.hash);
                g
            }
        };
        self.recs.push((g, v.len() as u32));
        match <&[u8; 9]>::try_from(v) {
            // An i64 (the usual count or sum): a fixed-size copy, no memcpy call.
            Ok(v9) => self.vals.extend_from_slice(v9),
            Err(_) => self.vals.extend_from_slice(v),
        }
    }

    fn finish(&mut self) {
        for s in self.table.iter() {
            let g = &mut self.groups[s.group as usize];
            g.count = s.count;
            g.bytes = s.bytes as usize;
        }
        let mut cursor = Vec::with_capacity(self.groups.len());
        let mut start = 0;
        for g in &mut self.groups {
            g.start = start;
            cursor.push(start);
            start += g.bytes;
        }
        self.grouped = vec![0u8; start];
        let mut at = 0;
        for &(g, n) in &self.recs {
            let n = n as usize;
            let c = &mut cursor[g as usize];
            self.grouped[*c..*c + n].copy_from_slice(&self.vals[at..at + n]);
            *c += n;
            at += n;
        }
        self.recs = Vec::new();
        self.vals = Vec::new();
    }

    /// The values of group `g`, back to back, in input order (after `finish`).
    fn values_of(&self, g: &Group) -> &[u8] {
        &self.grouped[g.start..g.start + g.bytes]
    }

    /// Folds each group's values with `r` and hands `(key, hash, folded
    /// value)` to `emit`, in group order. Single values need no call; all
    /// other groups go to the UDF in one batch.
    fn fold_each(
        &self,
        cx: &mut TaskCx<'_, '_>,
        r: &Reducer,
        p: u32,
        mut emit: impl FnMut(&[u8], u64, &[u8]),
    ) -> Result<(), TaskFailure> {
        let f = match r {
            Reducer::Udf(f) => f,
            Reducer::SumI64 | Reducer::SubI64 => {
                for g in &self.groups {
                    emit(self.key(g), g.hash, &fold_i64(r, values(self.values_of(g)))?);
                }
                return Ok(());
            }
        };
        let multi: usize = self.groups.iter().filter(|g| g.count > 1).map(|g| g.bytes + 5).sum();
        let mut input = codec::BatchBuilder::with_capacity(multi);
        for g in self.groups.iter().filter(|g| g.count > 1) {
            input.push_with(|w| w.list(g.count));
            input.extend_current(self.values_of(g));
        }
        let out = if input.is_empty() { None } else { Some(cx.call_kind(f, UdfKind::Reduce, &input.finish(), p)?) };
        let mut folded = match &out {
            Some(o) => Some(records(o)?),
            None => None,
        };
        for g in &self.groups {
            if g.count > 1 {
                let v = folded.as_mut().and_then(|it| it.next()).ok_or_else(|| bad("reduce output too short"))?;
                emit(self.key(g), g.hash, v?);
            } else {
                emit(self.key(g), g.hash, self.values_of(g));
            }
        }
        Ok(())
    }
}

fn pairs(batch: &[u8]) -> Result<codec::Pairs<'_>, TaskFailure> {
    codec::Pairs::new(batch).map_err(|e| bad(format!("malformed batch: {e}")))
}

/// The error for a record of `batch` that is not a pair (or is malformed).
#[cold]
fn not_a_pair(batch: &[u8], e: codec::CodecError) -> TaskFailure {
    match codec::skip_value(batch, e.offset) {
        Ok(end) => pair(&batch[e.offset..end]).err().unwrap_or_else(|| bad(format!("malformed batch: {e}"))),
        Err(_) => bad(format!("malformed batch: {e}")),
    }
}

/// The values laid out back to back in `buf`.
fn values(buf: &[u8]) -> impl Iterator<Item = Result<&[u8], TaskFailure>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= buf.len() {
            return None;
        }
        Some(match codec::skip_value(buf, at) {
            Ok(end) => {
                let v = &buf[at..end];
                at = end;
                Ok(v)
            }
            Err(e) => {
                at = buf.len();
                Err(bad(format!("malformed value: {e}")))
            }
        })
    })
}

/// The partitioner's hash (`rdd::partition_of` is this mod n).
#[inline]
pub(crate) fn key_hash(k: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(k, PARTITION_SEED)
}

/// Folds integers with native addition (or subtraction), left to right.
fn fold_i64<'v>(
    r: &Reducer,
    vals: impl Iterator<Item = Result<&'v [u8], TaskFailure>>,
) -> Result<[u8; 9], TaskFailure> {
    let mut acc: Option<i64> = None;
    for v in vals {
        let v = v?;
        let x = codec::as_i64(v)
            .ok_or_else(|| bad(format!("count/sum expects integers, got {}", codec::display::render(v))))?;
        acc = Some(match (acc, r) {
            (None, _) => x,
            (Some(a), Reducer::SubI64) => a.wrapping_sub(x),
            (Some(a), _) => a.wrapping_add(x),
        });
    }
    Ok(codec::encode_i64(acc.unwrap_or(0)))
}

/// Folds each group of values into one value, left to right.
pub(crate) fn fold(
    cx: &mut TaskCx<'_, '_>,
    r: &Reducer,
    groups: &[&[&[u8]]],
    p: u32,
) -> Result<Vec<Vec<u8>>, TaskFailure> {
    match r {
        Reducer::SumI64 | Reducer::SubI64 => {
            groups.iter().map(|vs| Ok(fold_i64(r, vs.iter().map(|v| Ok(*v)))?.to_vec())).collect()
        }
        Reducer::Udf(f) => {
            // Single values need no call; the rest go in one batch.
            let mut input = codec::BatchBuilder::new();
            for vs in groups.iter().filter(|vs| vs.len() > 1) {
                input.push_with(|w| {
                    w.list(vs.len() as u32);
                    vs.iter().for_each(|v| w.raw(v));
                });
            }
            let out =
                if input.is_empty() { None } else { Some(cx.call_kind(f, UdfKind::Reduce, &input.finish(), p)?) };
            let mut folded = match &out {
                Some(o) => Some(records(o)?),
                None => None,
            };
            let mut res = Vec::with_capacity(groups.len());
            for vs in groups {
                if vs.len() > 1 {
                    let v = folded.as_mut().and_then(|it| it.next()).ok_or_else(|| bad("reduce output too short"))?;
                    res.push(v.map_err(|e| bad(e.to_string()))?.to_vec());
                } else if let Some(v) = vs.first() {
                    res.push(v.to_vec());
                }
            }
            Ok(res)
        }
    }
}

/// The map side of a shuffle: takes one map partition batch by batch (see
/// `TaskCx::compute_into`) and splits it into `n` buckets, combining values
/// per key first for reduce_by_key.
pub(crate) struct MapSide<'a> {
    agg: &'a Aggregation,
    map: u32,
    n: u32,
    buckets: Vec<codec::BatchBuilder>,
    groups: Groups,
    /// Records seen so far (repartition deals them round-robin).
    seen: u64,
    /// Values for a global reduce; records for count.
    values: codec::BatchBuilder,
}

impl<'a> MapSide<'a> {
    pub(crate) fn new(agg: &'a Aggregation, map: u32, n: u32) -> Self {
        MapSide {
            agg,
            map,
            n,
            buckets: (0..n).map(|_| codec::BatchBuilder::new()).collect(),
            groups: if matches!(agg, Aggregation::ReduceByKey(_)) { Groups::new() } else { Groups::default() },
            seen: 0,
            values: codec::BatchBuilder::new(),
        }
    }

    /// Takes one batch of the map partition.
    pub(crate) fn feed(&mut self, batch: &[u8]) -> Result<(), TaskFailure> {
        let n = self.n as u64;
        match self.agg {
            Aggregation::ReduceByKey(_) => {
                for kv in pairs(batch)? {
                    let (k, v) = kv.map_err(|e| not_a_pair(batch, e))?;
                    self.groups.add(k, v);
                }
            }
            Aggregation::GroupByKey | Aggregation::CoGroup => {
                for rec in records(batch)? {
                    let rec = rec?;
                    let (k, _) = pair(rec)?;
                    self.buckets[(key_hash(k) % n) as usize].push_raw(rec);
                }
            }
            Aggregation::Repartition => {
                for rec in records(batch)? {
                    let rec = rec.map_err(|e| bad(e.to_string()))?;
                    self.buckets[((self.map as u64 + self.seen) % n) as usize].push_raw(rec);
                    self.seen += 1;
                }
            }
            Aggregation::Count => self.seen += records(batch)?.remaining() as u64,
            Aggregation::Reduce(_) => self.values.append_batch(batch)?,
        }
        Ok(())
    }

    /// Combines what was fed and returns the `n` buckets.
    pub(crate) fn finish(mut self, cx: &mut TaskCx<'_, '_>) -> Result<Vec<Vec<u8>>, TaskFailure> {
        // A map task's UDF calls are labelled with its map partition.
        let (n, p) = (self.n as u64, self.map);
        match self.agg {
            Aggregation::ReduceByKey(r) => {
                self.groups.finish();
                let buckets = &mut self.buckets;
                self.groups.fold_each(cx, r, p, |k, h, v| {
                    buckets[(h % n) as usize].push_with(|w| codec::write_pair(w.buf, k, v))
                })?;
            }
            Aggregation::Count => self.buckets[0].push_raw(&codec::encode_i64(self.seen as i64)),
            Aggregation::Reduce(r) => {
                let values = self.values.finish();
                let vals: Vec<&[u8]> = records(&values)?.collect::<Result<_, _>>().map_err(|e| bad(e.to_string()))?;
                if !vals.is_empty() {
                    if let Some(v) = fold(cx, r, &[vals.as_slice()], p)?.first() {
                        self.buckets[0].push_raw(v);
                    }
                }
            }
            Aggregation::GroupByKey | Aggregation::CoGroup | Aggregation::Repartition => {}
        }
        Ok(self.buckets.into_iter().map(|b| b.finish()).collect())
    }
}

/// Merges the buckets of reduce partition `p`, given in map-partition order.
pub(crate) fn reduce_side(
    cx: &mut TaskCx<'_, '_>,
    agg: &Aggregation,
    buckets: &[Block],
    parent_of_map: &[u32],
    parents: usize,
    p: u32,
) -> Result<Vec<u8>, TaskFailure> {
    let mut out = codec::BatchBuilder::new();
    match agg {
        Aggregation::ReduceByKey(_) | Aggregation::GroupByKey => {
            let mut g = Groups::new();
            for b in buckets {
                for kv in pairs(b)? {
                    let (k, v) = kv.map_err(|e| not_a_pair(b, e))?;
                    g.add(k, v);
                }
            }
            g.finish();
            if let Aggregation::ReduceByKey(r) = agg {
                g.fold_each(cx, r, p, |k, _, v| out.push_with(|w| codec::write_pair(w.buf, k, v)))?;
            } else {
                for grp in &g.groups {
                    out.push_with(|w| {
                        w.tuple(2);
                        w.raw(g.key(grp));
                        w.list(grp.count);
                    });
                    out.extend_current(g.values_of(grp));
                }
            }
        }
        Aggregation::CoGroup => {
            // Per key, one list of values per parent.
            let mut index: HashMap<&[u8], usize> = HashMap::new();
            let mut groups: Vec<(&[u8], Vec<Vec<&[u8]>>)> = Vec::new();
            for (m, b) in buckets.iter().enumerate() {
                let parent = *parent_of_map.get(m).ok_or_else(|| bad("cogroup map index out of range"))? as usize;
                for rec in records(b)? {
                    let (k, v) = pair(rec.map_err(|e| bad(e.to_string()))?)?;
                    let i = *index.entry(k).or_insert_with(|| {
                        groups.push((k, vec![Vec::new(); parents]));
                        groups.len() - 1
                    });
                    groups[i].1[parent].push(v);
                }
            }
            for (k, lists) in &groups {
                out.push_with(|w| {
                    w.tuple(2);
                    w.raw(k);
                    w.tuple(lists.len() as u32);
                    for vs in lists {
                        w.list(vs.len() as u32);
                        vs.iter().for_each(|v| w.raw(v));
                    }
                });
            }
        }
        Aggregation::Repartition => {
            for b in buckets {
                for rec in records(b)? {
                    out.push_raw(rec.map_err(|e| bad(e.to_string()))?);
                }
            }
        }
        Aggregation::Count => {
            let mut total: i64 = 0;
            for b in buckets {
                for rec in records(b)? {
                    total += codec::as_i64(rec.map_err(|e| bad(e.to_string()))?).unwrap_or(0);
                }
            }
            out.push_raw(&codec::encode_i64(total));
        }
        Aggregation::Reduce(r) => {
            let mut vals = Vec::new();
            for b in buckets {
                for rec in records(b)? {
                    vals.push(rec.map_err(|e| bad(e.to_string()))?);
                }
            }
            if !vals.is_empty() {
                if let Some(v) = fold(cx, r, &[vals.as_slice()], p)?.first() {
                    out.push_raw(v);
                }
            }
        }
    }
    Ok(out.finish())
}
