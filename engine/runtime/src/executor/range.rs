//! Range partitioning for `sort_by_key` and `sort_by`, after Spark's
//! `RangePartitioner`: a first shuffle ([`Aggregation::RangeBounds`]) sends
//! each map partition's record count and a reservoir sample of its keys to
//! one reducer, which weighs every sampled key by its partition's size and
//! picks at most `n - 1` distinct bounds; the sort's map tasks then send each
//! pair to the range its key falls in, and each reducer sorts its range.
//! The partitions in order are the whole batch sorted.
//!
//! Everything here is a pure function of the records and their order: the
//! reservoir's random numbers come from a fixed seed and the map partition's
//! index (no wall clock, no per-process state), so a recomputed map output
//! draws the same sample, the bounds come out the same, and the sort's
//! recomputed buckets match their original digests.
//!
//! Differences from Spark, on purpose: the sorted RDD always has the `n`
//! partitions asked for (the plan fixes them before the data is seen), so
//! with fewer distinct keys than partitions the last ones stay empty, where
//! Spark's RDD has fewer partitions; and a partition much larger than the
//! others is not sampled a second time (Spark's re-sampling of imbalanced
//! partitions) — its sample weighs more instead, which gives the same
//! expected bounds.
//!
//! [`Aggregation::RangeBounds`]: crate::rdd::Aggregation::RangeBounds

use std::cmp::Ordering;

use weir_codec as codec;

use super::block_store::Block;
use super::calls::{bad_data, pair, records, TaskFailure};
use super::order;
use crate::rdd::mix64;

/// Spark's `sampleSize`: 20 keys per output partition, at most a million.
const KEYS_PER_PARTITION: u64 = 20;
const MAX_SAMPLE: u64 = 1_000_000;

/// The seed every sort's reservoirs start from (with the map index mixed in).
const SEED: u64 = 0x005E_ED0F_5047_0001;

/// How many keys a map partition samples, out of `maps` map partitions, for
/// `partitions` output partitions: Spark's `ceil(3 * sampleSize / maps)`
/// (3 times over, for partitions of uneven sizes).
pub(crate) fn sample_per_map(partitions: u32, maps: u32) -> usize {
    let total = (KEYS_PER_PARTITION * partitions as u64).min(MAX_SAMPLE);
    (3 * total).div_ceil(maps.max(1) as u64) as usize
}

/// A seeded reservoir of keys (Spark's `reservoirSampleAndCount`): the first
/// `size` keys, then key `i` replaces a random slot with probability
/// `size / (i + 1)`.
pub(crate) struct Reservoir {
    size: usize,
    seed: u64,
    seen: u64,
    keys: Vec<Vec<u8>>,
}

impl Reservoir {
    pub(crate) fn new(size: usize, map: u32) -> Self {
        Reservoir { size, seed: mix64(SEED ^ mix64(map as u64)), seen: 0, keys: Vec::new() }
    }

    /// Takes the keys of one batch of the map partition (its pairs).
    pub(crate) fn feed(&mut self, batch: &[u8]) -> Result<(), TaskFailure> {
        for rec in records(batch)? {
            let rec = rec.map_err(|e| bad_data(e.to_string()))?;
            // Refused here, in the first map task, naming the bad record.
            let (k, _) = pair(rec)?;
            if self.keys.len() < self.size {
                self.keys.push(k.to_vec());
            } else {
                let slot = mix64(self.seed.wrapping_add(self.seen)) % (self.seen + 1);
                if let Some(s) = self.keys.get_mut(slot as usize) {
                    s.clear();
                    s.extend_from_slice(k);
                }
            }
            self.seen += 1;
        }
        Ok(())
    }

    /// The map side's one record: `(records seen, [sampled keys])`.
    pub(crate) fn finish(self, out: &mut codec::BatchBuilder) {
        out.push_with(|w| {
            w.tuple(2);
            w.i64(self.seen as i64);
            w.list(self.keys.len() as u32);
            self.keys.iter().for_each(|k| w.raw(k));
        });
    }
}

/// The reduce side of [`Aggregation::RangeBounds`](crate::rdd::Aggregation::RangeBounds):
/// the samples of every map partition (in map order) to at most
/// `partitions - 1` ascending, distinct bounds, written as one list record.
/// Spark's `determineBounds`: keys sorted, each weighing its partition's
/// records per sampled key; a bound is taken each time the running weight
/// passes the next multiple of `total / partitions`, skipping a key equal to
/// the previous bound (so all-equal keys give one bound at most).
pub(crate) fn bounds(buckets: &[Block], partitions: u32, out: &mut codec::BatchBuilder) -> Result<(), TaskFailure> {
    let mut candidates: Vec<(&[u8], f64)> = Vec::new();
    for b in buckets {
        for rec in records(b)? {
            let rec = rec.map_err(|e| bad_data(e.to_string()))?;
            let (count, keys) = pair(rec)?;
            let count = codec::as_i64(count).ok_or_else(|| bad_data("a range sample's count is not an integer"))?;
            let keys = codec::elements(keys).map_err(|e| bad_data(format!("a range sample's keys: {e}")))?;
            if keys.is_empty() {
                continue;
            }
            let weight = count as f64 / keys.len() as f64;
            candidates.extend(keys.into_iter().map(|k| (k, weight)));
        }
    }
    candidates.sort_by(|a, b| order::compare(a.0, b.0));
    let total: f64 = candidates.iter().map(|c| c.1).sum();
    let step = total / partitions.max(1) as f64;
    let mut chosen: Vec<&[u8]> = Vec::new();
    let (mut cumulative, mut target) = (0.0, step);
    for (key, weight) in &candidates {
        if chosen.len() + 1 >= partitions as usize {
            break;
        }
        cumulative += weight;
        if cumulative >= target && chosen.last().is_none_or(|prev| order::compare(key, prev) == Ordering::Greater) {
            chosen.push(key);
            target += step;
        }
    }
    out.push_with(|w| {
        w.list(chosen.len() as u32);
        chosen.iter().for_each(|k| w.raw(k));
    });
    Ok(())
}

/// The bounds a sort's map task cuts by: the one list record of the bounds
/// RDD's partition, its keys copied.
pub(crate) fn read_bounds(block: &[u8]) -> Result<Vec<Vec<u8>>, TaskFailure> {
    let mut recs = records(block)?;
    let list = match recs.next() {
        Some(r) => r.map_err(|e| bad_data(e.to_string()))?,
        None => return Err(bad_data("a sort's range bounds are missing")),
    };
    let keys = codec::elements(list).map_err(|e| bad_data(format!("a sort's range bounds: {e}")))?;
    Ok(keys.into_iter().map(|k| k.to_vec()).collect())
}

/// The partition of `key` among `bounds.len() + 1` ranges: ascending, the
/// first range whose bound is at least `key` (a key equal to a bound goes
/// with the keys below it); descending, the same ranges numbered from the
/// end. Spark's `RangePartitioner.getPartition`. Equal keys always land in
/// one partition, so each keeps its place among its equals.
pub(crate) fn partition_of(bounds: &[Vec<u8>], key: &[u8], ascending: bool) -> usize {
    let below = bounds.partition_point(|b| order::compare(b, key) == Ordering::Less);
    if ascending {
        below
    } else {
        bounds.len() - below
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batch(keys: &[i64]) -> Vec<u8> {
        let mut b = codec::BatchBuilder::new();
        for k in keys {
            b.push_with(|w| {
                w.tuple(2);
                w.i64(*k);
                w.i64(0);
            });
        }
        b.finish()
    }

    fn sample(map: u32, size: usize, keys: &[i64]) -> Block {
        let mut r = Reservoir::new(size, map);
        r.feed(&batch(keys)).unwrap();
        let mut out = codec::BatchBuilder::new();
        r.finish(&mut out);
        Arc::new(out.finish())
    }

    fn ints(keys: &[Vec<u8>]) -> Vec<i64> {
        keys.iter().map(|k| codec::as_i64(k).unwrap()).collect()
    }

    fn bounds_of(samples: &[Block], partitions: u32) -> Vec<i64> {
        let mut out = codec::BatchBuilder::new();
        bounds(samples, partitions, &mut out).unwrap();
        ints(&read_bounds(&out.finish()).unwrap())
    }

    #[test]
    fn even_keys_are_cut_into_even_ranges() {
        let keys: Vec<i64> = (0..100).rev().collect();
        let s = [sample(0, 1000, &keys[..50]), sample(1, 1000, &keys[50..])];
        assert_eq!(bounds_of(&s, 4), [24, 49, 74]);
        assert_eq!(bounds_of(&s, 1), Vec::<i64>::new());
    }

    #[test]
    fn equal_keys_give_one_bound_and_no_keys_none() {
        let s = [sample(0, 10, &[7; 40]), sample(1, 10, &[7; 3])];
        assert_eq!(bounds_of(&s, 8), [7]);
        assert_eq!(bounds_of(&[sample(0, 10, &[]), sample(1, 10, &[])], 8), Vec::<i64>::new());
        assert_eq!(bounds_of(&[], 8), Vec::<i64>::new());
    }

    #[test]
    fn a_bigger_partition_weighs_more() {
        // 10 keys sampled out of 1000 records of 0..1000, and 10 records of
        // 5000..5010: the bound of 2 ranges falls inside the big partition.
        let big: Vec<i64> = (0..1000).collect();
        let small: Vec<i64> = (5000..5010).collect();
        let b = bounds_of(&[sample(0, 10, &big), sample(1, 10, &small)], 2);
        assert_eq!(b.len(), 1);
        assert!(b[0] < 1000, "{b:?}");
    }

    #[test]
    fn the_reservoir_is_seeded_by_the_map_index_only() {
        let keys: Vec<i64> = (0..10_000).collect();
        assert_eq!(sample(3, 20, &keys), sample(3, 20, &keys));
        assert_ne!(sample(3, 20, &keys), sample(4, 20, &keys));
        // Fed in several batches, the same sample as in one.
        let mut r = Reservoir::new(20, 3);
        for chunk in keys.chunks(333) {
            r.feed(&batch(chunk)).unwrap();
        }
        let mut out = codec::BatchBuilder::new();
        r.finish(&mut out);
        assert_eq!(*sample(3, 20, &keys), out.finish());
    }

    #[test]
    fn keys_go_to_their_range_ascending_and_descending() {
        let b: Vec<Vec<u8>> = [10i64, 20].iter().map(|k| codec::encode_i64(*k).to_vec()).collect();
        let at = |k: i64, asc| partition_of(&b, &codec::encode_i64(k), asc);
        assert_eq!([at(-5, true), at(10, true), at(11, true), at(20, true), at(21, true)], [0, 0, 1, 1, 2]);
        assert_eq!([at(21, false), at(20, false), at(11, false), at(10, false), at(-5, false)], [0, 1, 1, 2, 2]);
        assert_eq!(partition_of(&[], &codec::encode_i64(1), false), 0);
    }

    #[test]
    fn sample_sizes_follow_spark() {
        assert_eq!(sample_per_map(4, 2), 120);
        assert_eq!(sample_per_map(4, 7), 35);
        assert_eq!(sample_per_map(100_000, 1), 3_000_000);
        assert_eq!(sample_per_map(1, 0), 60);
    }
}
