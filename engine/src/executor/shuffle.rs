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

/// Keys in first-seen order with their values. Keys are hashed once (the
/// partitioner's hash, reused for bucketing); a lookup touches only the hash
/// table slot and the key bytes. After the last `add`, `finish` lays the
/// values out group by group (a counting sort, stable: values keep their
/// input order within a key).
#[derive(Default)]
struct Groups<'a> {
    table: HashTable<Slot>,
    groups: Vec<Group<'a>>,
    /// (value, its group), in input order.
    values: Vec<(&'a [u8], u32)>,
    /// The values, grouped (filled by `finish`).
    ordered: Vec<&'a [u8]>,
}

/// A table slot. Short keys (most keys) are kept inline so that a lookup
/// compares them without touching the record they came from.
struct Slot {
    hash: u64,
    group: u32,
    len: u32,
    inline: [u8; INLINE_KEY],
}

const INLINE_KEY: usize = 20;

struct Group<'a> {
    hash: u64,
    key: &'a [u8],
    start: u32,
    len: u32,
}

#[inline]
fn key_eq(a: &[u8], b: &[u8]) -> bool {
    // Keys are short; a plain loop beats a call to memcmp.
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl<'a> Groups<'a> {
    fn with_capacity(n: usize) -> Self {
        Groups {
            table: HashTable::with_capacity(n / 4),
            groups: Vec::with_capacity(n / 4),
            values: Vec::with_capacity(n),
            ordered: Vec::new(),
        }
    }

    #[inline]
    fn add(&mut self, k: &'a [u8], v: &'a [u8]) {
        let h = key_hash(k);
        let groups = &self.groups;
        let found = self.table.find(h, |s| {
            s.hash == h
                && s.len as usize == k.len()
                && if k.len() <= INLINE_KEY {
                    key_eq(&s.inline[..k.len()], k)
                } else {
                    key_eq(groups[s.group as usize].key, k)
                }
        });
        let g = match found {
            Some(s) => s.group,
            None => {
                let g = self.groups.len() as u32;
                self.groups.push(Group { hash: h, key: k, start: 0, len: 0 });
                let mut inline = [0u8; INLINE_KEY];
                if k.len() <= INLINE_KEY {
                    inline[..k.len()].copy_from_slice(k);
                }
                self.table.insert_unique(h, Slot { hash: h, group: g, len: k.len() as u32, inline }, |s| s.hash);
                g
            }
        };
        self.values.push((v, g));
    }

    fn finish(&mut self) {
        for &(_, g) in &self.values {
            self.groups[g as usize].len += 1;
        }
        let mut start = 0u32;
        let mut pos = Vec::with_capacity(self.groups.len());
        for g in &mut self.groups {
            g.start = start;
            pos.push(start);
            start += g.len;
        }
        self.ordered = vec![&[][..]; self.values.len()];
        for &(v, g) in &self.values {
            let p = &mut pos[g as usize];
            self.ordered[*p as usize] = v;
            *p += 1;
        }
    }

    /// The values of group `g`, in input order (after `finish`).
    fn values_of(&self, g: &Group<'a>) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.ordered[g.start as usize..(g.start + g.len) as usize].iter().copied()
    }

    /// Each group's values folded with `r`, in group order.
    /// Folds each group's values with `r` and hands `(group, folded value)` to
    /// `emit`, in group order. Single values need no call; all other groups go
    /// to the UDF in one batch.
    fn fold_each(
        &self,
        cx: &mut TaskCx<'_, '_>,
        r: &Reducer,
        p: u32,
        mut emit: impl FnMut(&Group<'a>, &[u8]),
    ) -> Result<(), TaskFailure> {
        let f = match r {
            Reducer::Udf(f) => f,
            Reducer::SumI64 | Reducer::SubI64 => {
                for g in &self.groups {
                    emit(g, &fold(cx, r, &[&self.ordered[g.start as usize..(g.start + g.len) as usize]], p)?[0]);
                }
                return Ok(());
            }
        };
        let mut input = codec::BatchBuilder::with_capacity(self.values.len() * 16);
        for g in self.groups.iter().filter(|g| g.len > 1) {
            input.push_with(|w| w.list(g.len));
            for v in self.values_of(g) {
                input.extend_current(v);
            }
        }
        let out = if input.is_empty() { None } else { Some(cx.call_kind(f, UdfKind::Reduce, &input.finish(), p)?) };
        let mut folded = match &out {
            Some(o) => Some(records(o)?),
            None => None,
        };
        for g in &self.groups {
            if g.len > 1 {
                let v = folded.as_mut().and_then(|it| it.next()).ok_or_else(|| bad("reduce output too short"))?;
                emit(g, v?);
            } else {
                emit(g, self.ordered[g.start as usize]);
            }
        }
        Ok(())
    }
}

/// The partitioner's hash (`rdd::partition_of` is this mod n).
#[inline]
pub(crate) fn key_hash(k: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(k, PARTITION_SEED)
}

/// Folds each group of values into one value, left to right.
pub(crate) fn fold(
    cx: &mut TaskCx<'_, '_>,
    r: &Reducer,
    groups: &[&[&[u8]]],
    p: u32,
) -> Result<Vec<Vec<u8>>, TaskFailure> {
    match r {
        Reducer::SumI64 | Reducer::SubI64 => groups
            .iter()
            .map(|vs| {
                let mut acc: Option<i64> = None;
                for v in vs.iter() {
                    let x = codec::as_i64(v)
                        .ok_or_else(|| bad(format!("count/sum expects integers, got {}", codec::display::render(v))))?;
                    acc = Some(match (acc, r) {
                        (None, _) => x,
                        (Some(a), Reducer::SumI64) => a.wrapping_add(x),
                        (Some(a), _) => a.wrapping_sub(x),
                    });
                }
                Ok(codec::encode_i64(acc.unwrap_or(0)).to_vec())
            })
            .collect(),
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

/// Splits one map partition into `n` buckets.
pub(crate) fn map_side(
    cx: &mut TaskCx<'_, '_>,
    agg: &Aggregation,
    input: &Block,
    map: u32,
    n: u32,
) -> Result<Vec<Vec<u8>>, TaskFailure> {
    let mut buckets: Vec<codec::BatchBuilder> = (0..n).map(|_| codec::BatchBuilder::new()).collect();
    let p = map;
    match agg {
        Aggregation::ReduceByKey(r) => {
            let recs = records(input)?;
            let mut g = Groups::with_capacity(recs.remaining() as usize);
            for rec in recs {
                let (k, v) = pair(rec?)?;
                g.add(k, v);
            }
            g.finish();
            g.fold_each(cx, r, p, |grp, v| {
                buckets[(grp.hash % n as u64) as usize].push_with(|w| codec::write_pair(w.buf, grp.key, v))
            })?;
        }
        Aggregation::GroupByKey | Aggregation::CoGroup => {
            for rec in records(input)? {
                let rec = rec?;
                let (k, _) = pair(rec)?;
                buckets[(key_hash(k) % n as u64) as usize].push_raw(rec);
            }
        }
        Aggregation::Repartition => {
            for (i, rec) in records(input)?.enumerate() {
                let rec = rec.map_err(|e| bad(e.to_string()))?;
                buckets[(map as usize + i) % n as usize].push_raw(rec);
            }
        }
        Aggregation::Count => {
            let c = records(input)?.remaining() as i64;
            buckets[0].push_raw(&codec::encode_i64(c));
        }
        Aggregation::Reduce(r) => {
            let vals: Vec<&[u8]> = records(input)?.collect::<Result<_, _>>().map_err(|e| bad(e.to_string()))?;
            if !vals.is_empty() {
                let folded = fold(cx, r, &[vals.as_slice()], p)?;
                if let Some(v) = folded.first() {
                    buckets[0].push_raw(v);
                }
            }
        }
    }
    Ok(buckets.into_iter().map(|b| b.finish()).collect())
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
            let n: usize =
                buckets.iter().map(|b| codec::Records::new(b).map(|r| r.remaining() as usize).unwrap_or(0)).sum();
            let mut g = Groups::with_capacity(n);
            for b in buckets {
                for rec in records(b)? {
                    let (k, v) = pair(rec?)?;
                    g.add(k, v);
                }
            }
            g.finish();
            if let Aggregation::ReduceByKey(r) = agg {
                g.fold_each(cx, r, p, |grp, v| out.push_with(|w| codec::write_pair(w.buf, grp.key, v)))?;
            } else {
                for grp in &g.groups {
                    out.push_with(|w| {
                        w.tuple(2);
                        w.raw(grp.key);
                        w.list(grp.len);
                    });
                    for v in g.values_of(grp) {
                        out.extend_current(v);
                    }
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
