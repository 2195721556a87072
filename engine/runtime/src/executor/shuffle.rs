//! Shuffle: the map side buckets (and for reduce_by_key, combines) a
//! partition's records by the hash partitioner; the reduce side reads the
//! buckets of every map partition **in map-partition order** and merges them.
//! Keys are grouped in first-seen order, so the output never depends on hash
//! map iteration or on the order in which map tasks finished.

use weir_codec as codec;

use super::block_store::Block;
use super::calls::{bad_data, engine_fault, pair, pair_of_record, records, TaskFailure, UdfCalls};
pub(crate) use super::groups::key_hash;
use super::groups::{fold_i64, prefetch, with_lookahead, Groups, KeyIndex, KeyMap, Site};
use super::order;
use super::range;
use crate::rdd::{Aggregation, RddId, Reducer};
use crate::udf::UdfKind;

fn pairs(batch: &[u8]) -> Result<codec::Pairs<'_>, TaskFailure> {
    codec::Pairs::new(batch).map_err(|e| bad_data(format!("malformed batch: {e}")))
}

/// The error for a record of `batch` that is not a pair (or is malformed).
#[cold]
fn not_a_pair(batch: &[u8], e: codec::CodecError) -> TaskFailure {
    match codec::skip_value(batch, e.offset) {
        Ok(end) => pair(&batch[e.offset..end]).err().unwrap_or_else(|| bad_data(format!("malformed batch: {e}"))),
        Err(_) => bad_data(format!("malformed batch: {e}")),
    }
}

/// Folds each group of values into one value, left to right.
pub(crate) fn fold(
    cx: &mut UdfCalls<'_>,
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
                    let v =
                        folded.as_mut().and_then(|it| it.next()).ok_or_else(|| bad_data("reduce output too short"))?;
                    res.push(v.map_err(|e| bad_data(e.to_string()))?.to_vec());
                } else if let Some(v) = vs.first() {
                    res.push(v.to_vec());
                }
            }
            Ok(res)
        }
    }
}

/// The `k` greatest records of `batch`, greatest first (equal records are
/// identical bytes, so ties cannot reorder anything).
fn top(batch: &[u8], k: u64) -> Result<Vec<&[u8]>, TaskFailure> {
    let mut v: Vec<&[u8]> = records(batch)?.collect::<Result<_, _>>().map_err(|e| bad_data(e.to_string()))?;
    v.sort_by(|a, b| order::compare(b, a));
    v.truncate(usize::try_from(k).unwrap_or(usize::MAX));
    Ok(v)
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
    /// A range sort's bounds (ascending), when it has them.
    bounds: Option<Vec<Vec<u8>>>,
    /// The sample of a range sort's bounds shuffle.
    reservoir: Option<range::Reservoir>,
}

impl<'a> MapSide<'a> {
    pub(crate) fn new(agg: &'a Aggregation, shuffle: RddId, map: u32, n: u32) -> Self {
        MapSide {
            agg,
            map,
            n,
            buckets: (0..n).map(|_| codec::BatchBuilder::new()).collect(),
            groups: if matches!(agg, Aggregation::ReduceByKey(_) | Aggregation::GroupByKey) {
                Groups::at(Site { node: shuffle.node, reduce_side: false }, None)
            } else {
                Groups::default()
            },
            seen: 0,
            values: codec::BatchBuilder::new(),
            bounds: None,
            reservoir: match agg {
                Aggregation::RangeBounds { partitions } => {
                    Some(range::Reservoir::new(range::sample_per_map(*partitions, 1), map))
                }
                _ => None,
            },
        }
    }

    /// A range sort's map side: cut by `bounds` (ascending, see
    /// [`range::partition_of`]) instead of gathering into bucket 0.
    pub(crate) fn with_bounds(mut self, bounds: Vec<Vec<u8>>) -> Self {
        self.bounds = Some(bounds);
        self
    }

    /// A range bounds shuffle's map side, out of `maps` map partitions: how
    /// many keys it samples (Spark's per-partition sample size).
    pub(crate) fn with_maps(mut self, maps: u32) -> Self {
        if let Aggregation::RangeBounds { partitions } = self.agg {
            self.reservoir = Some(range::Reservoir::new(range::sample_per_map(*partitions, maps), self.map));
        }
        self
    }

    /// Takes one batch of the map partition.
    pub(crate) fn feed(&mut self, batch: &[u8]) -> Result<(), TaskFailure> {
        let n = self.n as u64;
        match self.agg {
            // group_by_key groups on the map side too (keys once per map
            // partition, values as lists): it moves and hashes a key per
            // distinct key, not per record, on the reduce side.
            Aggregation::ReduceByKey(_) | Aggregation::GroupByKey => {
                self.groups.add_all(pairs(batch)?.map(|kv| kv.map_err(|e| not_a_pair(batch, e))))?;
            }
            Aggregation::CoGroup => {
                for rec in records(batch)? {
                    let rec = rec?;
                    let (k, _) = pair(rec)?;
                    self.buckets[(key_hash(k) % n) as usize].push_raw(rec);
                }
            }
            Aggregation::Repartition => {
                for rec in records(batch)? {
                    let rec = rec.map_err(|e| bad_data(e.to_string()))?;
                    self.buckets[((self.map as u64 + self.seen) % n) as usize].push_raw(rec);
                    self.seen += 1;
                }
            }
            Aggregation::Count => self.seen += records(batch)?.remaining() as u64,
            Aggregation::Reduce(_) | Aggregation::Top(_) => self.values.append_batch(batch)?,
            Aggregation::Gather => self.buckets[0].append_batch(batch)?,
            Aggregation::SortByKey { ascending } => {
                let last = self.buckets.len().saturating_sub(1);
                for rec in records(batch)? {
                    let rec = rec?;
                    // Refused here, in the map task, naming the bad record.
                    let (k, _) = pair(rec)?;
                    let b = match &self.bounds {
                        Some(bounds) => range::partition_of(bounds, k, *ascending).min(last),
                        None => 0,
                    };
                    self.buckets[b].push_raw(rec);
                }
            }
            Aggregation::RangeBounds { .. } => {
                if let Some(r) = self.reservoir.as_mut() {
                    r.feed(batch)?;
                }
            }
            Aggregation::Take(k) => {
                // Only the first k of each map partition can be among the
                // first k of all of them.
                for rec in records(batch)? {
                    if self.seen >= *k {
                        break;
                    }
                    self.buckets[0].push_raw(rec.map_err(|e| bad_data(e.to_string()))?);
                    self.seen += 1;
                }
            }
        }
        Ok(())
    }

    /// Combines what was fed and returns the `n` buckets.
    pub(crate) fn finish(mut self, cx: &mut UdfCalls<'_>) -> Result<Vec<Vec<u8>>, TaskFailure> {
        // A map task's UDF calls are labelled with its map partition.
        let (n, p) = (self.n as u64, self.map);
        match self.agg {
            Aggregation::ReduceByKey(r) => {
                self.groups.finish();
                // Room for every (key, folded value), assuming 9-byte values
                // (an i64) and keys spread evenly: the buckets rarely grow.
                let out = self.groups.key_bytes() + self.groups.groups.len() * 14;
                let each = out / self.n as usize + out / (8 * self.n as usize);
                self.buckets.iter_mut().for_each(|b| *b = codec::BatchBuilder::with_capacity(each));
                let buckets = &mut self.buckets;
                self.groups.fold_each(cx, r, p, |k, h, v| {
                    buckets[(h % n) as usize].push_with(|w| codec::write_pair(w.buf, k, v))
                })?;
            }
            Aggregation::GroupByKey => {
                // `(key, [values])` per key, in first-seen order.
                self.groups.finish();
                let g = &self.groups;
                for grp in &g.groups {
                    let b = &mut self.buckets[(grp.hash % n) as usize];
                    b.push_with(|w| {
                        w.tuple(2);
                        w.raw(g.key(grp));
                        w.list(grp.count);
                    });
                    b.extend_current(g.values_of(grp));
                }
            }
            Aggregation::Count => self.buckets[0].push_raw(&codec::encode_i64(self.seen as i64)),
            Aggregation::RangeBounds { .. } => {
                if let (Some(r), Some(b)) = (self.reservoir.take(), self.buckets.first_mut()) {
                    r.finish(b);
                }
            }
            Aggregation::Reduce(r) => {
                let values = self.values.finish();
                let vals: Vec<&[u8]> =
                    records(&values)?.collect::<Result<_, _>>().map_err(|e| bad_data(e.to_string()))?;
                if !vals.is_empty() {
                    if let Some(v) = fold(cx, r, &[vals.as_slice()], p)?.first() {
                        self.buckets[0].push_raw(v);
                    }
                }
            }
            Aggregation::Top(k) => {
                // Each map partition sends only its own top k.
                let values = self.values.finish();
                for v in top(&values, *k)? {
                    self.buckets[0].push_raw(v);
                }
            }
            Aggregation::CoGroup
            | Aggregation::Repartition
            | Aggregation::Gather
            | Aggregation::SortByKey { .. }
            | Aggregation::Take(_) => {}
        }
        Ok(self.buckets.into_iter().map(|b| b.finish()).collect())
    }
}

/// The reduce side of group_by_key: the map sides' `(key, [values])`
/// records merged into one list per key. Keys come in first-seen order and
/// values in map-partition order, then input order: the same records as
/// grouping every pair here would give.
fn merge_groups(buckets: &[Block], out: &mut codec::BatchBuilder) -> Result<(), TaskFailure> {
    let buckets: Vec<&[u8]> = buckets.iter().map(|b| b.as_slice()).collect();
    let mut m = ListMerge::for_batches(&buckets, 0);
    for b in buckets {
        m.add_groups(b)?;
    }
    *out = codec::BatchBuilder::with_capacity(m.bytes());
    for i in 0..m.keys.len() {
        m.prefetch_values(i + 4);
        out.push_with(|w| {
            w.tuple(2);
            w.raw(m.keys[i].key);
            m.write_values(i, w);
        });
    }
    Ok(())
}

/// One key of a [`ListMerge`]: its bytes, its value count, and its lists
/// (first, last) as a chain in [`ListMerge::lists`].
pub(crate) struct MergedKey<'a> {
    pub(crate) key: &'a [u8],
    count: u32,
    first: usize,
    last: usize,
}

/// The end of a chain of lists.
const NO_LIST: usize = usize::MAX;

/// Value lists of map-side `(key, [values])` groups merged per key without
/// copying them: each key keeps a chain of the list bodies it had in each
/// bucket, written out back to back when its record is built. Keys are in
/// the order they were first seeded or seen; values in bucket order.
pub(crate) struct ListMerge<'a> {
    pub(crate) keys: Vec<MergedKey<'a>>,
    /// (list body, next in the key's chain).
    lists: Vec<(&'a [u8], usize)>,
    index: KeyIndex,
    /// Bytes of the keys and values, with room for the headers.
    bytes: usize,
}

impl<'a> ListMerge<'a> {
    /// Room for `seeds` keys to be seeded and the records of `batches`
    /// (their counts bounded by their bytes).
    pub(crate) fn for_batches(batches: &[&[u8]], seeds: usize) -> Self {
        let records: usize = batches.iter().map(|b| codec::Records::new(b).map_or(0, |r| r.remaining() as usize)).sum();
        let keys = seeds.max(records);
        ListMerge {
            keys: Vec::with_capacity(keys),
            lists: Vec::with_capacity(records),
            index: KeyIndex::with_capacity(keys),
            bytes: 0,
        }
    }

    /// Seeds the keys of a state's `(key, state)` pairs, in its order (each
    /// before any key added later, without values yet), and returns their
    /// states in the same order. A key twice (only an initial state can hold
    /// one so) keeps its first place and first state, as Spark's cogroup
    /// takes `headOption`.
    pub(crate) fn seed_pairs(&mut self, pairs: &'a [u8]) -> Result<Vec<&'a [u8]>, TaskFailure> {
        let mut states = Vec::with_capacity(self.keys.capacity());
        let items = records(pairs)?.map(|r| {
            let (k, s) = pair(r?)?;
            Ok::<_, TaskFailure>((k, s, key_hash(k)))
        });
        // A state of tens of thousands of keys outgrows the caches: its
        // lookups are prefetched a few keys ahead (as the map side's).
        with_lookahead(
            self,
            items,
            |m, &(_, _, h)| m.index.prefetch(h),
            |m, (k, s, h)| {
                if m.insert(k, h, 0, NO_LIST) {
                    states.push(s);
                }
                Ok(())
            },
        )?;
        Ok(states)
    }

    /// Adds a batch of `(key, [values])` records.
    pub(crate) fn add_groups(&mut self, batch: &'a [u8]) -> Result<(), TaskFailure> {
        let items = records(batch)?.map(|rec| {
            let (k, vs) = pair_of_record(rec.map_err(|e| bad_data(e.to_string()))?)?;
            let (count, body) = list_body(vs).ok_or_else(|| bad_data("grouped values are not a list"))?;
            Ok::<_, TaskFailure>((k, body, count, key_hash(k)))
        });
        with_lookahead(
            self,
            items,
            |m, &(_, _, _, h)| m.index.prefetch(h),
            |m, (k, body, count, h)| m.add_list(k, body, count, h),
        )
    }

    /// Adds key `k`'s list (`count` values in `body`) at the end of its chain.
    #[inline]
    fn add_list(&mut self, k: &'a [u8], body: &'a [u8], count: u32, h: u64) -> Result<(), TaskFailure> {
        let at = self.lists.len();
        self.lists.push((body, NO_LIST));
        self.bytes += body.len();
        let keys = &self.keys;
        match self.index.get_or_insert(h, k, keys.len() as u32, |i| keys[i as usize].key) {
            Some(i) => {
                let key = &mut self.keys[i as usize];
                key.count = key.count.checked_add(count).ok_or_else(|| bad_data("a key with over 2^32 values"))?;
                match key.last {
                    NO_LIST => key.first = at,
                    last => self.lists[last].1 = at,
                }
                key.last = at;
            }
            None => self.push_key(k, count, at),
        }
        Ok(())
    }

    /// Inserts key `k` (hash `h`) with its first list at `first` unless it
    /// is there already; whether it was inserted.
    #[inline]
    fn insert(&mut self, k: &'a [u8], h: u64, count: u32, first: usize) -> bool {
        let keys = &self.keys;
        match self.index.get_or_insert(h, k, keys.len() as u32, |i| keys[i as usize].key) {
            Some(_) => false,
            None => {
                self.push_key(k, count, first);
                true
            }
        }
    }

    fn push_key(&mut self, k: &'a [u8], count: u32, first: usize) {
        self.keys.push(MergedKey { key: k, count, first, last: first });
        self.bytes += k.len() + 10;
    }

    /// About the bytes of every key and value list, encoded.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hints the CPU to fetch key `i`'s first values, a few keys before
    /// [`write_values`](Self::write_values) copies them: the lists of
    /// consecutive keys lie far apart in the buckets.
    #[inline]
    pub(crate) fn prefetch_values(&self, i: usize) {
        if let Some(&(body, _)) = self.keys.get(i).and_then(|k| self.lists.get(k.first)) {
            if let Some(b) = body.first() {
                prefetch(b);
            }
        }
    }

    /// Writes key `i`'s values as one list (`[]` for a seeded key no batch had).
    pub(crate) fn write_values(&self, i: usize, w: &mut codec::Writer<'_>) {
        let key = &self.keys[i];
        w.list(key.count);
        let mut at = key.first;
        while let Some(&(body, next)) = self.lists.get(at) {
            w.raw(body);
            at = next;
        }
    }
}

/// A whole encoded list (as `pair` cut it): its count and its elements' bytes.
fn list_body(v: &[u8]) -> Option<(u32, &[u8])> {
    match v {
        [codec::TAG_LIST, a, b, c, d, body @ ..] => Some((u32::from_le_bytes([*a, *b, *c, *d]), body)),
        _ => None,
    }
}

/// Merges the buckets of reduce partition `p`, given in map-partition order.
pub(crate) fn reduce_side(
    cx: &mut UdfCalls<'_>,
    shuffle: RddId,
    agg: &Aggregation,
    buckets: &[Block],
    parent_of_map: &[u32],
    parents: usize,
    p: u32,
) -> Result<Vec<u8>, TaskFailure> {
    let mut out = codec::BatchBuilder::new();
    match agg {
        Aggregation::GroupByKey => merge_groups(buckets, &mut out)?,
        Aggregation::ReduceByKey(_) => {
            // About the buckets' size: each key once, each value once.
            out = codec::BatchBuilder::with_capacity(buckets.iter().map(|b| b.len()).sum());
            // At most as many keys as records in the buckets.
            let records: usize =
                buckets.iter().map(|b| codec::Records::new(b).map_or(0, |r| r.remaining() as usize)).sum();
            let mut g = Groups::at(Site { node: shuffle.node, reduce_side: true }, Some(records));
            for b in buckets {
                g.add_all(pairs(b)?.map(|kv| kv.map_err(|e| not_a_pair(b, e))))?;
            }
            g.finish();
            if let Aggregation::ReduceByKey(r) = agg {
                g.fold_each(cx, r, p, |k, _, v| out.push_with(|w| codec::write_pair(w.buf, k, v)))?;
            }
        }
        Aggregation::CoGroup => {
            // Per key, one list of values per parent.
            let mut index: KeyMap<'_, usize> = KeyMap::default();
            let mut groups: Vec<(&[u8], Vec<Vec<&[u8]>>)> = Vec::new();
            for (m, b) in buckets.iter().enumerate() {
                let parent =
                    *parent_of_map.get(m).ok_or_else(|| engine_fault("cogroup map index out of range"))? as usize;
                for rec in records(b)? {
                    let (k, v) = pair(rec.map_err(|e| bad_data(e.to_string()))?)?;
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
        Aggregation::SortByKey { ascending } => {
            let mut recs: Vec<(&[u8], &[u8])> = Vec::new();
            for b in buckets {
                for rec in records(b)? {
                    let rec = rec.map_err(|e| bad_data(e.to_string()))?;
                    recs.push((pair(rec)?.0, rec));
                }
            }
            // Stable: equal keys keep map-partition order, so the output is
            // the same bytes on every run and every recomputation.
            if *ascending {
                recs.sort_by(|a, b| order::compare(a.0, b.0));
            } else {
                recs.sort_by(|a, b| order::compare(b.0, a.0));
            }
            out = codec::BatchBuilder::with_capacity(buckets.iter().map(|b| b.len()).sum());
            recs.iter().for_each(|(_, r)| out.push_raw(r));
        }
        Aggregation::RangeBounds { partitions } => range::bounds(buckets, *partitions, &mut out)?,
        Aggregation::Take(k) => {
            let mut left = *k;
            'all: for b in buckets {
                for rec in records(b)? {
                    if left == 0 {
                        break 'all;
                    }
                    out.push_raw(rec.map_err(|e| bad_data(e.to_string()))?);
                    left -= 1;
                }
            }
        }
        Aggregation::Top(k) => {
            let mut all = codec::BatchBuilder::new();
            for b in buckets {
                all.append_batch(b)?;
            }
            let all = all.finish();
            for v in top(&all, *k)? {
                out.push_raw(v);
            }
        }
        Aggregation::Repartition | Aggregation::Gather => {
            for b in buckets {
                for rec in records(b)? {
                    out.push_raw(rec.map_err(|e| bad_data(e.to_string()))?);
                }
            }
        }
        Aggregation::Count => {
            let mut total: i64 = 0;
            for b in buckets {
                for rec in records(b)? {
                    total += codec::as_i64(rec.map_err(|e| bad_data(e.to_string()))?).unwrap_or(0);
                }
            }
            out.push_raw(&codec::encode_i64(total));
        }
        Aggregation::Reduce(r) => {
            let mut vals = Vec::new();
            for b in buckets {
                for rec in records(b)? {
                    vals.push(rec.map_err(|e| bad_data(e.to_string()))?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Vec<u8> {
        codec::Value::str(s).encode()
    }

    /// The merge against a plain model: seeded keys first in the state's
    /// order (a key seeded twice keeps its first state), then new keys in
    /// first-seen order; each key's values in bucket order. Enough keys to
    /// fill the prefetch ring many times and grow the index, short (inline)
    /// and long keys, and a record that is not a pair refused.
    #[test]
    fn list_merge_keeps_state_order_then_first_seen_order() {
        let key = |i: usize| {
            if i.is_multiple_of(5) {
                enc(&format!("a-key-longer-than-twenty-bytes-{i}"))
            } else {
                enc(&format!("k{i}"))
            }
        };
        // The state: keys 0..3000 with a duplicate of key 7 (its second state must lose).
        let mut state = codec::BatchBuilder::new();
        let mut model: Vec<(Vec<u8>, Option<Vec<u8>>, Vec<i64>)> = Vec::new();
        for i in 0..3000 {
            let s = codec::encode_i64(i as i64 * 10);
            state.push_with(|w| codec::write_pair(w.buf, &key(i), &s));
            model.push((key(i), Some(s.to_vec()), Vec::new()));
        }
        state.push_with(|w| codec::write_pair(w.buf, &key(7), &codec::encode_i64(-1)));
        let state = state.finish();
        // Three buckets of (key, [values]) groups over keys 2000..6000.
        let buckets: Vec<Vec<u8>> = (0..3)
            .map(|b| {
                let mut out = codec::BatchBuilder::new();
                for i in (2000 + b * 7..6000).step_by(3 + b) {
                    out.push_with(|w| {
                        w.tuple(2);
                        w.raw(&key(i));
                        w.list(2);
                        w.raw(&codec::encode_i64((b * 100_000 + i) as i64));
                        w.raw(&codec::encode_i64(-((b * 100_000 + i) as i64)));
                    });
                    let at = match model.iter().position(|(k, _, _)| *k == key(i)) {
                        Some(at) => at,
                        None => {
                            model.push((key(i), None, Vec::new()));
                            model.len() - 1
                        }
                    };
                    model[at].2.extend([(b * 100_000 + i) as i64, -((b * 100_000 + i) as i64)]);
                }
                out.finish()
            })
            .collect();
        let slices: Vec<&[u8]> = buckets.iter().map(|b| b.as_slice()).collect();
        let mut m = ListMerge::for_batches(&slices, 3000);
        let states = m.seed_pairs(&state).unwrap();
        for b in &slices {
            m.add_groups(b).unwrap();
        }
        assert_eq!(m.keys.len(), model.len());
        assert_eq!(states.len(), 3000, "the duplicate key is seeded once");
        for (i, (k, s, vals)) in model.iter().enumerate() {
            assert_eq!(m.keys[i].key, k.as_slice(), "key {i}");
            if let Some(s) = s {
                assert_eq!(states[i], s.as_slice(), "key {i} keeps its first state");
            }
            let mut buf = Vec::new();
            m.write_values(i, &mut codec::Writer::new(&mut buf));
            let got: Vec<i64> = match codec::Value::decode(&buf).unwrap() {
                codec::Value::List(vs) => vs
                    .iter()
                    .map(|v| match v {
                        codec::Value::I64(x) => *x,
                        v => panic!("not an i64: {v:?}"),
                    })
                    .collect(),
                v => panic!("not a list: {v:?}"),
            };
            assert_eq!(&got, vals, "values of key {i}");
        }
        // A record that is not a pair is bad data, not a panic.
        let mut bad = codec::BatchBuilder::new();
        bad.push_with(|w| w.raw(&enc("loose")));
        let bad = bad.finish();
        let mut m = ListMerge::for_batches(&[&bad], 0);
        assert!(m.add_groups(&bad).is_err());
    }
}
