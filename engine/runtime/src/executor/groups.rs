//! Grouping by key: the table behind reduce_by_key's map-side combine and
//! the reduce side of reduce_by_key and group_by_key, and the key index
//! ([`KeyIndex`]) of the reduce side's merge of groups and state.
//!
//! Keys are kept in first-seen order with their values, owned (the records
//! they come from may be a UDF's output, gone after the next call), so a
//! group's position never depends on hashing or on the table's size. Each key
//! is hashed once, with the partitioner's hash (reused for bucketing).
//!
//! The table is open addressing with linear probing over 32-byte slots (two
//! per cache line) that hold short keys inline, so a lookup usually touches
//! one cache line. With tens of thousands of keys per task the table
//! outgrows L2 and a lookup of a rare key waits on memory; [`Groups::add_all`]
//! therefore hashes a few records ahead and prefetches their slots, so those
//! waits overlap instead of adding up.

use std::cell::RefCell;
use std::collections::HashMap;

use weir_codec as codec;

use super::calls::{bad_data, records, TaskFailure, UdfCalls};
use crate::rdd::{Reducer, PARTITION_SEED};
use crate::udf::UdfKind;

/// The partitioner's hash (`rdd::partition_of` is this mod n).
#[inline]
pub(crate) fn key_hash(k: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(k, PARTITION_SEED)
}

/// The hasher of the executor's lookup maps over encoded keys: the
/// partitioner's xxh3 (fixed seed, so no per-process randomness anywhere
/// near computation), not SipHash, which cost more than the lookups. Maps
/// keyed by it are only looked up, never iterated, so their order cannot
/// reach an output.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0 ^ PARTITION_SEED);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        // The length prefix of a slice: mixed in cheaply.
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A lookup map over encoded keys (see [`KeyHasher`]).
pub(crate) type KeyMap<'a, V> = HashMap<&'a [u8], V, std::hash::BuildHasherDefault<KeyHasher>>;

/// Keys in first-seen order, each with its values in input order.
/// Values are appended to one buffer as they come; [`Groups::finish`] lays
/// them out group by group with one scatter pass.
#[derive(Default)]
pub(crate) struct Groups {
    table: Table,
    pub(crate) groups: Vec<Group>,
    /// The distinct keys, back to back.
    keys: Vec<u8>,
    /// Per value, in input order: its group and its length.
    recs: Vec<(u32, u32)>,
    /// The values, in input order, back to back.
    vals: Vec<u8>,
    /// The values, grouped (filled by `finish`).
    grouped: Vec<u8>,
    /// Which grouping this is, to remember its size for the next one.
    site: Option<Site>,
    /// After `finish`: how many keys have several values, and where their
    /// lists end in `grouped`.
    lists: (u32, usize),
}

/// A grouping's place in the job: a shuffle (by graph node) and its side.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Site {
    pub(crate) node: u32,
    pub(crate) reduce_side: bool,
}

/// The buffers of a grouping, kept by each executor thread between tasks:
/// a task's grouping then writes into memory that is already mapped and
/// large enough, instead of growing fresh vectors (copying them at each
/// doubling) and faulting their pages in.
#[derive(Default)]
struct Buffers {
    table: Table,
    groups: Vec<Group>,
    keys: Vec<u8>,
    recs: Vec<(u32, u32)>,
    vals: Vec<u8>,
    grouped: Vec<u8>,
}

/// Buffers larger than this go back to the allocator rather than being
/// kept for the next task: a thread keeps at most six of them (~96 MiB),
/// and a WordCount task of 500 000 records needs about 5 MiB each.
const KEEP_BYTES: usize = 16 << 20;

impl Buffers {
    fn keep_table(&mut self, t: Table) {
        let bytes = t.slots.capacity() * std::mem::size_of::<Slot>();
        if bytes <= KEEP_BYTES && t.slots.len() >= self.table.slots.len() {
            self.table = t;
        }
    }
}

fn keep<T>(spare: &mut Vec<T>, mut v: Vec<T>) {
    if v.capacity() * std::mem::size_of::<T>() <= KEEP_BYTES && v.capacity() > spare.capacity() {
        v.clear();
        *spare = v;
    }
}

thread_local! {
    static SPARE: RefCell<Buffers> = RefCell::new(Buffers::default());
    /// Per executor thread: how many keys the last grouping at each site
    /// ended with. The next batch's table starts at that size and rarely
    /// has to grow. It sets only the table's capacity, never which group
    /// comes first, so outputs do not depend on it.
    static LAST_KEYS: RefCell<HashMap<Site, usize>> = RefCell::new(HashMap::new());
}

pub(crate) struct Group {
    pub(crate) hash: u64,
    key: (usize, usize),
    /// How many values, and their total size (set by `finish`).
    pub(crate) count: u32,
    bytes: usize,
    /// Where its values start in `grouped` (after `finish`).
    start: usize,
}

/// How many records [`with_lookahead`] hashes (and prefetches) ahead of the
/// one it looks up: enough to cover a miss to memory at a few ns per record.
const AHEAD: usize = 8;

/// Runs `each` over `items` in order, [`AHEAD`] items behind `hint`, which
/// sees each item as it arrives (to prefetch where its lookup will go): the
/// waits of lookups in a table larger than the caches then overlap instead
/// of adding up. `s` is what both work on.
#[inline(always)]
pub(crate) fn with_lookahead<S, T: Copy + Default, E>(
    s: &mut S,
    items: impl Iterator<Item = Result<T, E>>,
    hint: impl Fn(&S, &T),
    mut each: impl FnMut(&mut S, T) -> Result<(), E>,
) -> Result<(), E> {
    // Plain values, not options: this is the map side's inner loop.
    let mut ring = [T::default(); AHEAD];
    let mut n = 0usize;
    for item in items {
        let item = item?;
        hint(s, &item);
        let at = n % AHEAD;
        if n >= AHEAD {
            each(s, ring[at])?;
        }
        ring[at] = item;
        n += 1;
    }
    for i in n.saturating_sub(AHEAD)..n {
        each(s, ring[i % AHEAD])?;
    }
    Ok(())
}

impl Groups {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        let mut g = Groups::default();
        g.table = Table::with_slots(MIN_SLOTS);
        g
    }

    /// A grouping at `site`, its table sized for as many keys as the last
    /// one there had (and no more than `at_most`, when the count of input
    /// records is known).
    pub(crate) fn at(site: Site, at_most: Option<usize>) -> Self {
        let last = LAST_KEYS.with(|m| m.borrow().get(&site).copied()).unwrap_or(0);
        let keys = at_most.map_or(last, |n| last.min(n));
        let slots = slots_for(keys);
        let b = SPARE.with(|b| std::mem::take(&mut *b.borrow_mut()));
        Groups {
            table: Table::reusing(b.table, slots),
            groups: b.groups,
            keys: b.keys,
            recs: b.recs,
            vals: b.vals,
            grouped: b.grouped,
            site: Some(site),
            lists: (0, 0),
        }
    }

    /// The size of the distinct keys, back to back.
    pub(crate) fn key_bytes(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn key(&self, g: &Group) -> &[u8] {
        &self.keys[g.key.0..g.key.0 + g.key.1]
    }

    /// Adds every `(key, value)` of `pairs`, in order.
    #[inline]
    pub(crate) fn add_all<'b, E>(
        &mut self,
        pairs: impl Iterator<Item = Result<(&'b [u8], &'b [u8]), E>>,
    ) -> Result<(), E> {
        let items = pairs.map(|kv| kv.map(|(k, v)| (k, v, key_hash(k))));
        with_lookahead(
            self,
            items,
            |g, &(_, _, h)| g.table.prefetch(h),
            |g, (k, v, h)| {
                g.add_hashed(k, v, h);
                Ok(())
            },
        )
    }

    #[inline]
    fn add_hashed(&mut self, k: &[u8], v: &[u8], h: u64) {
        let g = match self.table.find(h, k, group_keys(&self.groups, &self.keys)) {
            Ok(g) => g,
            Err(slot) => {
                let g = self.groups.len() as u32;
                self.groups.push(Group { hash: h, key: (self.keys.len(), k.len()), count: 0, bytes: 0, start: 0 });
                codec::extend_short(&mut self.keys, k);
                self.table.fill(slot, h, k, g);
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

    /// Lays the values out group by group (stable: values keep their input
    /// order within a key) and frees the table.
    pub(crate) fn finish(&mut self) {
        keep_spare_table(std::mem::take(&mut self.table));
        if let Some(site) = self.site {
            LAST_KEYS.with(|m| m.borrow_mut().insert(site, self.groups.len()));
        }
        // Counted here, in two compact arrays that stay in cache, rather than
        // in the groups (48 bytes each) or in the table during `add`.
        let mut count = vec![0u32; self.groups.len()];
        let mut bytes = vec![0usize; self.groups.len()];
        for &(g, n) in &self.recs {
            count[g as usize] += 1;
            bytes[g as usize] += n as usize;
        }
        // Keys with several values first, each as an encoded list (header,
        // then its values): together they are the body of the batch a reduce
        // function gets, so it goes to the guest without another copy. Keys
        // with one value after them.
        let mut cursor = vec![0usize; self.groups.len()];
        let (mut start, mut multi) = (0, 0u32);
        for (i, g) in self.groups.iter_mut().enumerate() {
            g.count = count[i];
            g.bytes = bytes[i];
            if g.count > 1 {
                start += 5;
                g.start = start;
                cursor[i] = start;
                start += g.bytes;
                multi += 1;
            }
        }
        self.lists = (multi, start);
        for (i, g) in self.groups.iter_mut().enumerate() {
            if g.count <= 1 {
                g.start = start;
                cursor[i] = start;
                start += g.bytes;
            }
        }
        self.grouped.clear();
        self.grouped.resize(start, 0);
        for g in self.groups.iter().filter(|g| g.count > 1) {
            self.grouped[g.start - 5] = codec::TAG_LIST;
            self.grouped[g.start - 4..g.start].copy_from_slice(&g.count.to_le_bytes());
        }
        let mut at = 0;
        for &(g, n) in &self.recs {
            let n = n as usize;
            let c = &mut cursor[g as usize];
            if n == 9 {
                // An i64: a fixed-size move, not a call to memcpy.
                self.grouped[*c..*c + 9].copy_from_slice(&self.vals[at..at + 9]);
            } else {
                self.grouped[*c..*c + n].copy_from_slice(&self.vals[at..at + n]);
            }
            *c += n;
            at += n;
        }
        let (recs, vals) = (std::mem::take(&mut self.recs), std::mem::take(&mut self.vals));
        SPARE.with(|b| {
            let mut b = b.borrow_mut();
            keep(&mut b.recs, recs);
            keep(&mut b.vals, vals);
        });
    }

    /// The values of group `g`, back to back, in input order (after `finish`).
    pub(crate) fn values_of(&self, g: &Group) -> &[u8] {
        &self.grouped[g.start..g.start + g.bytes]
    }

    /// Folds each group's values with `r` and hands `(key, hash, folded
    /// value)` to `emit`, in group order. Single values need no call; all
    /// other groups go to the UDF in one batch, straight from `grouped`, and
    /// its output is read in place.
    pub(crate) fn fold_each(
        &self,
        cx: &mut UdfCalls<'_>,
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
        let (multi, end) = self.lists;
        if multi == 0 {
            for g in &self.groups {
                emit(self.key(g), g.hash, self.values_of(g));
            }
            return Ok(());
        }
        let count = multi.to_le_bytes();
        cx.call_in_place(f, UdfKind::Reduce, multi, &[&count, &self.grouped[..end]], p, |out| {
            let mut folded = records(out)?;
            for g in &self.groups {
                if g.count > 1 {
                    let v = folded.next().ok_or_else(|| bad_data("reduce output too short"))?;
                    emit(self.key(g), g.hash, v?);
                } else {
                    emit(self.key(g), g.hash, self.values_of(g));
                }
            }
            Ok(())
        })?
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        if self.site.is_none() {
            return;
        }
        let mut groups = std::mem::take(&mut self.groups);
        groups.clear();
        let (keys, grouped) = (std::mem::take(&mut self.keys), std::mem::take(&mut self.grouped));
        let (recs, vals) = (std::mem::take(&mut self.recs), std::mem::take(&mut self.vals));
        let table = std::mem::take(&mut self.table);
        // A thread that is exiting has no buffers to keep them in.
        let _ = SPARE.try_with(|b| {
            let mut b = b.borrow_mut();
            keep(&mut b.groups, groups);
            keep(&mut b.keys, keys);
            keep(&mut b.grouped, grouped);
            keep(&mut b.recs, recs);
            keep(&mut b.vals, vals);
            b.keep_table(table);
        });
    }
}

/// The values laid out back to back in `buf`.
pub(crate) fn values(buf: &[u8]) -> impl Iterator<Item = Result<&[u8], TaskFailure>> {
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
                Err(bad_data(format!("malformed value: {e}")))
            }
        })
    })
}

/// Folds integers with native addition (or subtraction), left to right.
pub(crate) fn fold_i64<'v>(
    r: &Reducer,
    vals: impl Iterator<Item = Result<&'v [u8], TaskFailure>>,
) -> Result<[u8; 9], TaskFailure> {
    let mut acc: Option<i64> = None;
    for v in vals {
        let v = v?;
        let x = codec::as_i64(v)
            .ok_or_else(|| bad_data(format!("count/sum expects integers, got {}", codec::display::render(v))))?;
        acc = Some(match (acc, r) {
            (None, _) => x,
            (Some(a), Reducer::SubI64) => a.wrapping_sub(x),
            (Some(a), _) => a.wrapping_add(x),
        });
    }
    Ok(codec::encode_i64(acc.unwrap_or(0)))
}

// ------------------------------------------------------------------ table

/// Slots for `keys` keys at the table's 3/4 load limit, within bounds.
fn slots_for(keys: usize) -> usize {
    (keys + keys / 3 + 1).clamp(MIN_SLOTS, MAX_START_SLOTS)
}

/// Gives a table's slots back to the executor thread for its next grouping.
fn keep_spare_table(t: Table) {
    SPARE.with(|b| b.borrow_mut().keep_table(t));
}

/// Group `g`'s key in `keys` (how [`Table::find`] reads the keys too long
/// to live in a slot).
fn group_keys<'k>(groups: &'k [Group], keys: &'k [u8]) -> impl Fn(u32) -> &'k [u8] {
    move |g| {
        let (at, n) = groups[g as usize].key;
        &keys[at..at + n]
    }
}

/// Hints the CPU to fetch the cache line of `at` (a no-op elsewhere than
/// x86_64).
#[inline(always)]
pub(crate) fn prefetch<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it reads nothing the program sees
    // and never faults, and the address is that of a live reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// An index from encoded keys to their positions in a caller's list (the
/// reduce side's merge of map-side groups and state): the grouping table
/// (short keys inline, hash tags, prefetch) without the values. Its slots
/// come from, and go back to, the executor thread's spare table.
pub(crate) struct KeyIndex {
    table: Table,
}

impl KeyIndex {
    /// An empty index with room for about `keys` keys.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let slots = slots_for(keys);
        let spare = SPARE.with(|b| std::mem::take(&mut b.borrow_mut().table));
        KeyIndex { table: Table::reusing(spare, slots) }
    }

    /// Hints the CPU to fetch where the lookup of hash `h` starts.
    #[inline]
    pub(crate) fn prefetch(&self, h: u64) {
        self.table.prefetch(h);
    }

    /// The position of key `k` (hash `h`, from [`key_hash`]); when it is
    /// new, records it at position `next` and returns `None`. `key_of(i)`
    /// gives the key at position `i`.
    #[inline]
    pub(crate) fn get_or_insert<'k>(
        &mut self,
        h: u64,
        k: &[u8],
        next: u32,
        key_of: impl Fn(u32) -> &'k [u8],
    ) -> Option<u32> {
        match self.table.find(h, k, key_of) {
            Ok(i) => Some(i),
            Err(slot) => {
                self.table.fill(slot, h, k, next);
                None
            }
        }
    }
}

impl Drop for KeyIndex {
    fn drop(&mut self) {
        keep_spare_table(std::mem::take(&mut self.table));
    }
}

/// The smallest table (32 KiB), and the largest a remembered size may ask
/// for up front (128 MiB; a table grows past it if it must).
const MIN_SLOTS: usize = 1 << 10;
const MAX_START_SLOTS: usize = 1 << 22;

/// Keys up to this long live in their slot.
const INLINE_KEY: usize = 20;

/// A table slot: 32 bytes, aligned, so that it never straddles a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    /// The high half of the key's hash: where its probe starts, and a filter
    /// before comparing keys. (The partitioner uses the low bits, which on
    /// the reduce side are the same for every key of a partition.)
    tag: u32,
    /// The table's `base` + the group's index + 1. A slot is occupied when
    /// this is above `base`: raising `base` empties the whole table.
    group: u32,
    len: u32,
    inline: [u8; INLINE_KEY],
}

const EMPTY: Slot = Slot { tag: 0, group: 0, len: 0, inline: [0; INLINE_KEY] };

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    /// Occupied slots.
    len: usize,
    /// Slots whose `group` is at most this are empty (left by an earlier
    /// grouping that used this memory).
    base: u32,
    /// The largest `group` written so far.
    top: u32,
}

#[inline]
fn tag_of(h: u64) -> u32 {
    (h >> 32) as u32
}

/// Whether two keys are equal. Keys are short: from 4 to 24 bytes they are
/// compared as two or three overlapping words, without a loop or a call to
/// memcmp.
#[inline(always)]
fn key_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w = |s: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let h = |s: &[u8], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    match n {
        8..=16 => w(a, 0) == w(b, 0) && w(a, n - 8) == w(b, n - 8),
        17..=24 => w(a, 0) == w(b, 0) && w(a, 8) == w(b, 8) && w(a, n - 8) == w(b, n - 8),
        4..=7 => h(a, 0) == h(b, 0) && h(a, n - 4) == h(b, n - 4),
        _ => a == b,
    }
}

impl Table {
    #[cfg(test)]
    fn with_slots(n: usize) -> Self {
        Table::reusing(Table::default(), n)
    }

    /// An empty table of `n` slots (rounded up to a power of two) in the
    /// memory of `old`. When `old` has that size already, emptying it is
    /// raising `base` past every slot it wrote, not rewriting every slot.
    fn reusing(old: Table, n: usize) -> Self {
        let n = n.next_power_of_two();
        if old.slots.len() == n && old.top < u32::MAX / 2 {
            return Table { slots: old.slots, len: 0, base: old.top, top: old.top };
        }
        let mut v = old.slots;
        v.clear();
        v.resize(n, EMPTY);
        Table { slots: v, len: 0, base: 0, top: 0 }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Hints the CPU to fetch the slot where the probe for `h` starts.
    #[inline]
    fn prefetch(&self, h: u64) {
        if let Some(slot) = self.slots.get(tag_of(h) as usize & self.mask()) {
            prefetch(slot);
        }
    }

    /// The group of key `k` (hash `h`), or the empty slot where it goes.
    #[inline]
    /// `long_key(g)` gives the bytes of group `g`'s key when it is too long
    /// to live in its slot.
    fn find<'k>(&mut self, h: u64, k: &[u8], long_key: impl Fn(u32) -> &'k [u8]) -> Result<u32, usize> {
        // Grow at 3/4 full: linear probing's runs stay short up to there.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let tag = tag_of(h);
        let mask = self.mask();
        let mut i = tag as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.group <= self.base {
                return Err(i);
            }
            if s.tag == tag && s.len as usize == k.len() {
                let same = if k.len() <= INLINE_KEY {
                    key_eq(&s.inline[..k.len()], k)
                } else {
                    key_eq(long_key(s.group - self.base - 1), k)
                };
                if same {
                    return Ok(s.group - self.base - 1);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Puts group `g` (key `k`, hash `h`) into empty slot `i` (from `find`).
    #[inline]
    fn fill(&mut self, i: usize, h: u64, k: &[u8], g: u32) {
        let s = &mut self.slots[i];
        s.tag = tag_of(h);
        s.group = self.base + g + 1;
        self.top = self.top.max(s.group);
        s.len = k.len() as u32;
        let n = k.len();
        match n {
            // Two overlapping fixed-size moves, not a call to memcpy.
            8..=16 => {
                s.inline[..8].copy_from_slice(&k[..8]);
                s.inline[n - 8..n].copy_from_slice(&k[n - 8..]);
            }
            _ if n <= INLINE_KEY => s.inline[..n].copy_from_slice(k),
            _ => {}
        }
        self.len += 1;
    }

    #[cold]
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        let mask = n - 1;
        // The new slots are all empty: `base` starts again from 0.
        let base = std::mem::take(&mut self.base);
        self.top = 0;
        for mut s in old.into_iter().filter(|s| s.group > base) {
            s.group -= base;
            self.top = self.top.max(s.group);
            let mut i = s.tag as usize & mask;
            while self.slots[i].group != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Vec<u8> {
        codec::Value::str(s).encode()
    }

    /// Groups in first-seen order, values in input order, through several
    /// table growths, with short (inline) and long keys, and with keys whose
    /// hashes share their low bits (as on the reduce side).
    #[test]
    fn groups_keep_first_seen_order_through_growth() {
        let keys: Vec<Vec<u8>> = (0..5000)
            .map(|i| if i % 7 == 0 { enc(&format!("a-rather-long-key-number-{i}")) } else { enc(&format!("k{i}")) })
            .collect();
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for round in 0..3i64 {
            for (i, k) in keys.iter().enumerate() {
                if round == 0 || i % (round as usize + 1) == 0 {
                    pairs.push((k.clone(), codec::encode_i64(round * 10_000 + i as i64).to_vec()));
                }
            }
        }
        let mut g = Groups::new();
        g.add_all(pairs.iter().map(|(k, v)| Ok::<_, ()>((k.as_slice(), v.as_slice())))).unwrap();
        g.finish();
        assert_eq!(g.groups.len(), keys.len());
        for (i, grp) in g.groups.iter().enumerate() {
            assert_eq!(g.key(grp), keys[i].as_slice(), "group {i} is the {i}th key seen");
            assert_eq!(grp.hash, key_hash(&keys[i]));
            let want: Vec<i64> =
                (0..3i64).filter(|&r| r == 0 || i % (r as usize + 1) == 0).map(|r| r * 10_000 + i as i64).collect();
            let got: Vec<i64> = values(g.values_of(grp)).map(|v| codec::as_i64(v.unwrap()).unwrap()).collect();
            assert_eq!(got, want, "values of group {i}");
            assert_eq!(grp.count as usize, want.len());
        }
    }

    /// A grouping that reuses the thread's buffers (and the last size at its
    /// site) sees nothing of the one before it.
    #[test]
    fn reused_buffers_start_empty() {
        let site = Site { node: 7, reduce_side: false };
        let run = |pairs: &[(&str, i64)]| {
            let enc: Vec<(Vec<u8>, Vec<u8>)> =
                pairs.iter().map(|(k, v)| (enc(k), codec::encode_i64(*v).to_vec())).collect();
            let mut g = Groups::at(site, None);
            g.add_all(enc.iter().map(|(k, v)| Ok::<_, ()>((k.as_slice(), v.as_slice())))).unwrap();
            g.finish();
            g.groups
                .iter()
                .map(|grp| {
                    let vs: Vec<i64> = values(g.values_of(grp)).map(|v| codec::as_i64(v.unwrap()).unwrap()).collect();
                    (g.key(grp).to_vec(), vs)
                })
                .collect::<Vec<_>>()
        };
        let big: Vec<(String, i64)> = (0..3000).map(|i| (format!("w{}", i % 1000), i)).collect();
        let big: Vec<(&str, i64)> = big.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(run(&big).len(), 1000);
        let small = run(&[("b", 1), ("a", 2), ("b", 3)]);
        assert_eq!(small, vec![(enc("b"), vec![1, 3]), (enc("a"), vec![2])]);
        assert_eq!(LAST_KEYS.with(|m| m.borrow().get(&site).copied()), Some(2));
    }

    /// Keys of every length from 0 to 40 bytes differing in any one byte.
    #[test]
    fn key_eq_sees_every_byte() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(key_eq(&a, &a.clone()), "length {n}");
            assert!(!key_eq(&a, &a[..n.saturating_sub(1)]) || n == 0);
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x40;
                assert!(!key_eq(&a, &b), "length {n}, byte {i}");
            }
        }
    }

    /// A table reused at the same size is emptied by raising its base: the
    /// keys of the earlier grouping are gone, and new ones go in; near the
    /// end of the base's range it is rewritten instead.
    #[test]
    fn reused_tables_forget_earlier_keys() {
        let (groups, keys): (Vec<Group>, Vec<u8>) = (Vec::new(), Vec::new());
        let mut t = Table::with_slots(1024);
        for g in 0..100u32 {
            let k = format!("key{g}").into_bytes();
            let h = key_hash(&k);
            let slot = t.find(h, &k, group_keys(&groups, &keys)).unwrap_err();
            t.fill(slot, h, &k, g);
        }
        assert_eq!(t.find(key_hash(b"key7"), b"key7", group_keys(&groups, &keys)), Ok(7));
        let mut t = Table::reusing(t, 1024);
        assert_eq!(t.base, 100, "same size: emptied by the base, not rewritten");
        assert!(t.find(key_hash(b"key7"), b"key7", group_keys(&groups, &keys)).is_err());
        let slot = t.find(key_hash(b"key7"), b"key7", group_keys(&groups, &keys)).unwrap_err();
        t.fill(slot, key_hash(b"key7"), b"key7", 0);
        assert_eq!(t.find(key_hash(b"key7"), b"key7", group_keys(&groups, &keys)), Ok(0));
        assert!(t.find(key_hash(b"key8"), b"key8", group_keys(&groups, &keys)).is_err());
        // Growing a reused table keeps this grouping's keys only. (`grow`
        // checks tags against the groups in debug builds: give it some.)
        let mut groups = vec![Group { hash: key_hash(b"key7"), key: (0, 4), count: 0, bytes: 0, start: 0 }];
        for g in 1..2000u32 {
            let k = format!("other{g}").into_bytes();
            let h = key_hash(&k);
            groups.push(Group { hash: h, key: (0, 0), count: 0, bytes: 0, start: 0 });
            let slot = t.find(h, &k, group_keys(&groups, &keys)).unwrap_err();
            t.fill(slot, h, &k, g);
        }
        assert!(t.slots.len() > 1024, "it grew");
        assert_eq!(t.find(key_hash(b"key7"), b"key7", group_keys(&groups, &keys)), Ok(0));
        assert_eq!(t.find(key_hash(b"other1234"), b"other1234", group_keys(&groups, &keys)), Ok(1234));
        assert!(t.find(key_hash(b"key8"), b"key8", group_keys(&groups, &keys)).is_err());
        t.top = u32::MAX / 2;
        let n = t.slots.len();
        let t = Table::reusing(t, n);
        let t = Table::reusing(t, 1024);
        assert_eq!((t.base, t.top), (0, 0), "rewritten when the base runs out");
        assert!(t.slots.iter().all(|s| s.group == 0));
    }

    /// Two keys with the same tag and length but different bytes stay apart.
    #[test]
    fn equal_tags_do_not_merge_keys() {
        let mut t = Table::with_slots(4);
        let (groups, keys): (Vec<Group>, Vec<u8>) = (Vec::new(), Vec::new());
        let h = 0xdead_beef_0000_0001;
        let slot = t.find(h, b"ab", group_keys(&groups, &keys)).unwrap_err();
        t.fill(slot, h, b"ab", 0);
        assert_eq!(t.find(h, b"ab", group_keys(&groups, &keys)), Ok(0));
        let other = t.find(h, b"ac", group_keys(&groups, &keys)).unwrap_err();
        assert_ne!(other, slot);
        t.fill(other, h, b"ac", 1);
        assert_eq!(t.find(h, b"ac", group_keys(&groups, &keys)), Ok(1));
        assert_eq!(t.find(h, b"ab", group_keys(&groups, &keys)), Ok(0));
    }
}
