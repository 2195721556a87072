//! Shuffle: the map side buckets (and for reduce_by_key, combines) a
//! partition's records by the hash partitioner; the reduce side reads the
//! buckets of every map partition **in map-partition order** and merges them.
//! Keys are grouped in first-seen order, so the output never depends on hash
//! map iteration or on the order in which map tasks finished.

use std::collections::HashMap;

use weir_codec as codec;
use xxhash_rust::xxh3::Xxh3Builder;

use super::block_store::Block;
use super::task::{pair, records, TaskCx, TaskFailure};
use crate::rdd::{partition_of, Aggregation, Reducer};
use crate::udf::UdfKind;

fn bad(msg: impl Into<String>) -> TaskFailure {
    TaskFailure::Other(msg.into())
}

/// Keys in first-seen order with their values.
#[derive(Default)]
struct Groups<'a> {
    index: HashMap<&'a [u8], u32, Xxh3Builder>,
    groups: Vec<(&'a [u8], Vec<&'a [u8]>)>,
}

impl<'a> Groups<'a> {
    fn add(&mut self, k: &'a [u8], v: &'a [u8]) {
        match self.index.get(k) {
            Some(&i) => self.groups[i as usize].1.push(v),
            None => {
                self.index.insert(k, self.groups.len() as u32);
                self.groups.push((k, vec![v]));
            }
        }
    }
}

/// Folds each group of values into one value, left to right.
fn fold(cx: &mut TaskCx<'_, '_>, r: &Reducer, groups: &[&[&[u8]]], p: u32) -> Result<Vec<Vec<u8>>, TaskFailure> {
    match r {
        Reducer::SumI64 => groups
            .iter()
            .map(|vs| {
                let mut s: i64 = 0;
                for v in vs.iter() {
                    let x = codec::as_i64(v)
                        .ok_or_else(|| bad(format!("count/sum expects integers, got {}", codec::display::render(v))))?;
                    s = s.wrapping_add(x);
                }
                Ok(codec::encode_i64(s).to_vec())
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
            let mut g = Groups::default();
            for rec in records(input)? {
                let (k, v) = pair(rec.map_err(|e| bad(e.to_string()))?)?;
                g.add(k, v);
            }
            let vals: Vec<&[&[u8]]> = g.groups.iter().map(|(_, vs)| vs.as_slice()).collect();
            let combined = fold(cx, r, &vals, p)?;
            for ((k, _), v) in g.groups.iter().zip(&combined) {
                buckets[partition_of(k, n) as usize].push_with(|w| codec::write_pair(w.buf, k, v));
            }
        }
        Aggregation::GroupByKey | Aggregation::CoGroup => {
            for rec in records(input)? {
                let rec = rec.map_err(|e| bad(e.to_string()))?;
                let (k, _) = pair(rec)?;
                buckets[partition_of(k, n) as usize].push_raw(rec);
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
        Aggregation::ReduceByKey(r) => {
            let mut g = Groups::default();
            for b in buckets {
                for rec in records(b)? {
                    let (k, v) = pair(rec.map_err(|e| bad(e.to_string()))?)?;
                    g.add(k, v);
                }
            }
            let vals: Vec<&[&[u8]]> = g.groups.iter().map(|(_, vs)| vs.as_slice()).collect();
            let folded = fold(cx, r, &vals, p)?;
            for ((k, _), v) in g.groups.iter().zip(&folded) {
                out.push_with(|w| codec::write_pair(w.buf, k, v));
            }
        }
        Aggregation::GroupByKey => {
            let mut g = Groups::default();
            for b in buckets {
                for rec in records(b)? {
                    let (k, v) = pair(rec.map_err(|e| bad(e.to_string()))?)?;
                    g.add(k, v);
                }
            }
            for (k, vs) in &g.groups {
                out.push_with(|w| {
                    w.tuple(2);
                    w.raw(k);
                    w.list(vs.len() as u32);
                    vs.iter().for_each(|v| w.raw(v));
                });
            }
        }
        Aggregation::CoGroup => {
            // Per key, one list of values per parent.
            let mut index: HashMap<&[u8], usize, Xxh3Builder> = HashMap::default();
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
