//! RDDs: the partitions of one batch of one DStream, and how they were made.
//!
//! An [`Rdd`] is plain data: its id, its number of partitions, the operation
//! that makes it from its parents (its lineage), and whether its partitions
//! are kept as blocks. Ids are deterministic — `(batch time, node of the
//! DStream graph)` — so the same batch planned twice (after a crash, on
//! another process) names the same RDDs, shuffles and blocks.
//!
//! Narrow operations ([`NarrowOp`]) are pipelined inside one task; a
//! [`RddOp::Shuffled`] RDD starts a new stage. Every UDF an RDD runs is named
//! by the SHA-256 of its module, so lineage pins the exact code.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::udf::{ModuleHash, UdfKind};
use weir_codec as codec;

/// `(batch time in ms, DStream graph node)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RddId {
    pub time: i64,
    pub node: u32,
}

impl fmt::Display for RddId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rdd_{}@{}", self.node, self.time)
    }
}

/// A shuffle is named after the RDD that reads it.
pub type ShuffleId = RddId;

/// A stored partition: a computed RDD partition or one shuffle bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlockId {
    Rdd { rdd: RddId, partition: u32 },
    Shuffle { shuffle: ShuffleId, map: u32, reduce: u32 },
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockId::Rdd { rdd, partition } => write!(f, "{rdd}_p{partition}"),
            BlockId::Shuffle { shuffle, map, reduce } => {
                write!(f, "shuffle_{}@{}_{map}_{reduce}", shuffle.node, shuffle.time)
            }
        }
    }
}

/// A UDF, pinned by module hash.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UdfRef {
    pub module: ModuleHash,
    /// The module's file name, for messages.
    pub module_name: String,
    pub function: String,
    pub kind: UdfKind,
    /// The parameters the job file gives this use of the function
    /// (`ops.plus(4)`); part of the lineage, so of the job's identity.
    /// (Always serialized: tasks travel as bincode, which cannot skip a
    /// field.)
    #[serde(default)]
    pub params: Option<UdfParams>,
}

/// As derived, with `params` shown only when given: a job without
/// parameters keeps the identity signatures (hashes of `Debug` text) its
/// checkpoints recorded before parameters existed.
impl fmt::Debug for UdfRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("UdfRef");
        d.field("module", &self.module)
            .field("module_name", &self.module_name)
            .field("function", &self.function)
            .field("kind", &self.kind);
        if let Some(p) = &self.params {
            d.field("params", p);
        }
        d.finish()
    }
}

impl fmt::Display for UdfRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module_name, self.function)?;
        if let Some(p) = &self.params {
            write!(f, "({p})")?;
        }
        write!(f, " ({}, sha256 {})", self.kind, self.module.short())
    }
}

/// A function's parameters from the job file (`ops.plus(4)`,
/// `geo.within(lat = 52.5, lon = 13.4, km = 10)`), held as the canonical
/// encoding of the 2-tuple `([positional values], [(name, value)...])`, the
/// named ones sorted by name (so their order in the file does not matter).
/// The guest gets them before its first call (`docs/udf-abi.md` §3a).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UdfParams {
    encoded: Vec<u8>,
    /// How they are shown when a value is a static dataset's records
    /// (`ops.lookup(users)`: `users`, not every record).
    #[serde(default)]
    shown: Option<String>,
}

impl UdfParams {
    /// Parameters from positional and named values; `None` if a name is
    /// given twice.
    pub fn new(positional: Vec<codec::Value>, mut named: Vec<(String, codec::Value)>) -> Result<Self, String> {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = named.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("parameter {:?} is given twice", w[0].0));
        }
        let named = named.into_iter().map(|(n, v)| codec::Value::pair(codec::Value::Str(n), v)).collect();
        let v = codec::Value::Tuple(vec![codec::Value::List(positional), codec::Value::List(named)]);
        Ok(UdfParams { encoded: v.encode(), shown: None })
    }

    /// These parameters, shown as `shown` in labels and plans (a value that
    /// is a dataset's records is shown by the dataset's name).
    pub fn with_shown(mut self, shown: String) -> Self {
        self.shown = Some(shown);
        self
    }

    /// The canonical encoding of `([positional], [(name, value)...])`.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// What the guest's `weir_params` receives for function `export`
    /// (`<kind>:<name>`): the 3-tuple `(export, [positional], [(name,
    /// value)...])`.
    pub fn handoff(&self, export: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded.len() + export.len() + 10);
        let mut w = codec::Writer::new(&mut out);
        w.tuple(3);
        w.str(export);
        // The stored 2-tuple's body: its two lists.
        out.extend_from_slice(self.encoded.get(5..).unwrap_or_default());
        out
    }

    /// The parameters as a job file writes them: `4`, `"ERROR"`,
    /// `lat = 52.5, lon = 13.4`.
    pub fn text(&self) -> String {
        if let Some(s) = &self.shown {
            return s.clone();
        }
        let show = |v: &codec::Value| match v {
            codec::Value::Str(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        let Ok(codec::Value::Tuple(parts)) = codec::Value::decode(&self.encoded) else {
            return "?".into();
        };
        let mut out: Vec<String> = Vec::new();
        if let Some(codec::Value::List(pos)) = parts.first() {
            out.extend(pos.iter().map(show));
        }
        if let Some(codec::Value::List(named)) = parts.get(1) {
            for p in named {
                if let codec::Value::Tuple(kv) = p {
                    if let (Some(codec::Value::Str(k)), Some(v)) = (kv.first(), kv.get(1)) {
                        out.push(format!("{k} = {}", show(v)));
                    }
                }
            }
        }
        out.join(", ")
    }
}

impl fmt::Display for UdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The parameters as written (identity signatures hash `Debug` text; the
/// text is a faithful rendering of the encoded values).
/// With a dataset among them, the text names it and the content hash of the
/// encoded values stands for the records.
impl fmt::Debug for UdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shown {
            None => write!(f, "UdfParams({})", self.text()),
            Some(s) => {
                use sha2::{Digest, Sha256};
                let h: String = Sha256::digest(&self.encoded).iter().map(|b| format!("{b:02x}")).collect();
                write!(f, "UdfParams({s}, content {h})")
            }
        }
    }
}

/// How values of one key are combined.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reducer {
    Udf(UdfRef),
    /// Native i64 addition (counts).
    SumI64,
    /// Native i64 subtraction (the inverse of `SumI64`).
    SubI64,
}

/// Which pairs a window with an inverse function keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PairFilter {
    /// A filter UDF over `(key, value)` pairs.
    Udf(UdfRef),
    /// Values that are not the integer 0.
    NonZero,
}

/// A record-at-a-time (well, batch-at-a-time) operation inside a stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NarrowOp {
    /// map, flat_map, filter, key_by or map_partitions, by the UDF's kind.
    Udf(UdfRef),
    /// Applies a map UDF to the values of pairs.
    MapValues(UdfRef),
    /// Applies a flat_map UDF to the values of pairs.
    FlatMapValues(UdfRef),
    /// The whole partition as one list.
    Glom,
    /// `x -> (x, 1)`.
    PairWithOne,
    /// `x -> (null, x)`: a global aggregation's single key.
    PairWithNull,
    /// `(k, v) -> v`.
    Values,
    /// Expands cogroup output `(k, ([vs], [ws]))` into join rows.
    Join(JoinKind),
    /// From map_with_state's tagged records: tag 0 gives the `(k, state)`
    /// snapshot, tag 1 the emitted records.
    Tagged(u8),
    /// `(k, v) -> k`.
    Keys,
    /// Keeps a record when a hash of `(seed, partition, position, record)`
    /// falls below `threshold` (a fraction of 2^32). `seed` already mixes in
    /// the batch time ([`sample_seed`]), so recomputation keeps the same
    /// records and different batches sample independently.
    Sample { seed: u64, threshold: u64 },
    /// From cogroup output `(x, ([v...], [w...]))`: `x` once per `v` when
    /// there is no `w` (subtract keeps the left's duplicates).
    Subtract,
    /// From cogroup output: `x` once when both sides have it.
    Intersection,
    /// `x -> (x, i)`, `i` its position in the partition (after a gather to
    /// one partition: its position in the batch).
    ZipWithIndex,
}

/// The seed a sample uses for the RDD of batch `time`: the user's seed and
/// the time, mixed (splitmix64), so each batch samples independently.
pub fn sample_seed(seed: u64, time: i64) -> u64 {
    mix64(seed ^ mix64(time as u64))
}

/// splitmix64's finaliser: a fixed bijection that spreads every input bit.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A sample's threshold for `fraction` (clamped to 0..=1): kept records
/// hash below it in 32 bits, so 1 keeps all and 0 none.
pub fn sample_threshold(fraction: f64) -> u64 {
    let f = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
    (f * (1u64 << 32) as f64).round() as u64
}

/// Whether a sample keeps the record `rec` at `position` of partition
/// `partition`: a pure function of its arguments.
pub fn sample_keeps(seed: u64, threshold: u64, partition: u32, position: u64, rec: &[u8]) -> bool {
    let s = mix64(seed ^ mix64(((partition as u64) << 40) ^ position));
    (xxhash_rust::xxh3::xxh3_64_with_seed(rec, s) >> 32) < threshold
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JoinKind {
    Inner,
    LeftOuter,
    RightOuter,
    FullOuter,
}

/// How a shuffle's map side buckets and combines, and its reduce side merges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aggregation {
    /// reduce_by_key: combine on the map side, fold on the reduce side.
    ReduceByKey(Reducer),
    /// group_by_key: `(k, [v...])`.
    GroupByKey,
    /// cogroup of several parents: `(k, ([v...], [w...], ...))`.
    CoGroup,
    /// Redistributes records round-robin (repartition).
    Repartition,
    /// count: one i64, the number of records (0 for none).
    Count,
    /// reduce: the fold of all records (nothing for none).
    Reduce(Reducer),
    /// Into one partition, every record in map-partition order.
    Gather,
    /// sort_by_key: pairs stably sorted by key in the value order
    /// (`docs/jobs.md`, "Ordering"); ties keep map order. With one parent,
    /// into one partition. With a second parent — a [`Aggregation::RangeBounds`]
    /// RDD of one partition, read by every map task (see
    /// [`RddOp::map_side_reads`]) — each pair goes to the range its key falls
    /// in, so the partitions in order are the whole sorted batch (Spark's
    /// RangePartitioner). The second parent's own map task writes nothing.
    SortByKey { ascending: bool },
    /// The range bounds of a sort into `partitions` partitions, into one
    /// partition: each map partition sends its record count and a seeded
    /// reservoir sample of its keys; the reduce side weighs the samples by
    /// their partition's size and picks at most `partitions - 1` distinct
    /// bounds, ascending, as one record (a list of keys). Spark's
    /// `RangePartitioner.sketch` and `determineBounds`.
    RangeBounds { partitions: u32 },
    /// take: into one partition, the first `n` records in map-partition order.
    Take(u64),
    /// top: into one partition, the `n` greatest records, greatest first.
    Top(u64),
}

/// How an RDD is made from its parents.
// A `UdfRef` with parameters makes the stateful variants larger than the
// rest; RDD ops are plan data, few per batch, not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RddOp {
    /// Received or read input of source `source`; blocks are stored at ingestion.
    Input { source: u32 },
    /// A static dataset's records: partition `i` is its partition `i`, the
    /// same for every batch (`crate::dataset`).
    Dataset(crate::dataset::Dataset),
    /// Narrow operations applied to the same-numbered parent partition.
    Narrow { parent: RddId, ops: Vec<NarrowOp> },
    /// The parents' partitions, concatenated in order.
    Union { parents: Vec<RddId> },
    /// update_state_by_key: the previous state RDD (same partitioning) and
    /// this batch's values grouped by key (`(k, [v...])`).
    /// `initial` (encoded `(k, state)` pairs) stands in for the previous
    /// state of the first batch.
    State { prev: Option<RddId>, grouped: RddId, update: UdfRef, initial: Option<Vec<u8>> },
    /// map_with_state: like `State`, but `f` is called per value and emits
    /// records. Partitions hold tagged records: `(0, k, state, last_update_ms)`
    /// for the state, `(1, output)` for what `f` emitted (see `NarrowOp::Tagged`).
    /// `initial` (encoded `(k, state)` pairs) stands in for the previous state
    /// of the first batch.
    MapWithState { prev: Option<RddId>, grouped: RddId, f: UdfRef, timeout_ms: Option<i64>, initial: Option<Vec<u8>> },
    /// reduce_by_key_and_window with an inverse function: the previous
    /// window's value, minus the batches leaving, plus the batches entering
    /// (all partitioned like this RDD).
    InvWindow {
        prev: Option<RddId>,
        entering: Vec<RddId>,
        leaving: Vec<RddId>,
        reduce: Reducer,
        inverse: Reducer,
        filter: Option<PairFilter>,
    },
    /// Partitions read back from a data checkpoint (lineage truncated here),
    /// under the job's checkpoint bounds.
    Checkpointed { path: String, bounds: crate::limits::CheckpointBounds },
    /// Reads a shuffle of `parents` (several only for cogroup), whose map
    /// sides have `map_partitions[i]` partitions each.
    Shuffled { parents: Vec<RddId>, map_partitions: Vec<u32>, aggregation: Aggregation },
    /// coalesce: partition `i` of this RDD's `n` is the concatenation of the
    /// parent's partitions `i*p/n .. (i+1)*p/n` (`p`: the parent's; see
    /// [`coalesced`]). No shuffle, as Spark's `coalesce(n)`.
    Coalesce { parent: RddId, parent_partitions: u32 },
    /// cartesian: partition `i*r + j` is every `(x, y)` of the left's
    /// partition `i` and the right's `j` (`r`: the right's partitions).
    Cartesian { left: RddId, right: RddId, right_partitions: u32 },
}

/// The parent partitions that partition `i` of a coalesce into `n` reads,
/// out of `parent` partitions: contiguous, in order, none shared.
pub fn coalesced(i: u32, n: u32, parent: u32) -> std::ops::Range<u32> {
    let n = n.max(1) as u64;
    let at = |k: u64| (k * parent as u64 / n) as u32;
    at(i as u64)..at(i as u64 + 1)
}

impl RddOp {
    /// RDDs a shuffle's map tasks read besides the partition they bucket:
    /// a range sort's bounds (partition 0 of its second parent). They belong
    /// to every map task's lineage, so a recomputed map output is cut by the
    /// same bounds.
    pub fn map_side_reads(&self) -> Vec<RddId> {
        match self {
            RddOp::Shuffled { parents, aggregation: Aggregation::SortByKey { .. }, .. } => {
                parents.get(1).copied().into_iter().collect()
            }
            _ => vec![],
        }
    }

    /// Parents read partition by partition (no shuffle in between).
    pub fn narrow_parents(&self) -> Vec<RddId> {
        match self {
            RddOp::Input { .. } | RddOp::Dataset(_) | RddOp::Checkpointed { .. } | RddOp::Shuffled { .. } => {
                vec![]
            }
            RddOp::Narrow { parent, .. } | RddOp::Coalesce { parent, .. } => vec![*parent],
            RddOp::Cartesian { left, right, .. } => vec![*left, *right],
            RddOp::Union { parents } => parents.clone(),
            RddOp::State { prev, grouped, .. } | RddOp::MapWithState { prev, grouped, .. } => {
                prev.iter().copied().chain([*grouped]).collect()
            }
            RddOp::InvWindow { prev, entering, leaving, .. } => {
                prev.iter().chain(leaving).chain(entering).copied().collect()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rdd {
    pub id: RddId,
    pub partitions: u32,
    pub op: RddOp,
    /// Keep computed partitions as blocks (windows read them again).
    pub persist: bool,
    /// A short name for plans and logs, e.g. `flat_map(wordcount.split)`.
    pub label: String,
}

/// The lineage known to the driver: every live RDD by id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lineage {
    pub rdds: BTreeMap<RddId, Rdd>,
}

impl Lineage {
    pub fn get(&self, id: RddId) -> Option<&Rdd> {
        self.rdds.get(&id)
    }

    /// The RDDs a task computing `root` may need: its narrow ancestry, up to
    /// and including shuffle boundaries (whose map outputs it fetches).
    pub fn stage_closure(&self, roots: &[RddId]) -> BTreeMap<RddId, Rdd> {
        let mut out = BTreeMap::new();
        let mut todo: Vec<RddId> = roots.to_vec();
        while let Some(id) = todo.pop() {
            if out.contains_key(&id) {
                continue;
            }
            let Some(r) = self.rdds.get(&id) else { continue };
            todo.extend(r.op.narrow_parents());
            out.insert(id, r.clone());
        }
        out
    }

    /// Shuffles that computing `root` depends on, parents before children.
    pub fn shuffle_dependencies(&self, root: RddId) -> Vec<RddId> {
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.visit_shuffles(root, &mut seen, &mut order);
        order
    }

    fn visit_shuffles(&self, id: RddId, seen: &mut std::collections::HashSet<RddId>, order: &mut Vec<RddId>) {
        if !seen.insert(id) {
            return;
        }
        let Some(r) = self.rdds.get(&id) else { return };
        match &r.op {
            RddOp::Shuffled { parents, .. } => {
                parents.iter().for_each(|p| self.visit_shuffles(*p, seen, order));
                order.push(id);
            }
            op => op.narrow_parents().into_iter().for_each(|p| self.visit_shuffles(p, seen, order)),
        }
    }

    /// A human-readable plan of `root`, like Spark's `toDebugString`.
    pub fn explain(&self, root: RddId) -> String {
        let mut s = String::new();
        self.explain_into(root, 0, &mut s);
        s
    }

    /// As [`explain`](Self::explain), for a status page: an RDD reached
    /// again through another path is named, not expanded again, and the
    /// plan stops after `max_lines` lines (`...` says it was cut), so the
    /// cost is bounded by the lineage's size, never by its paths.
    pub fn explain_bounded(&self, root: RddId, max_lines: usize) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut seen = std::collections::HashSet::new();
        // Depth-first, iteratively: (rdd, depth), the next to print on top.
        let mut stack = vec![(root, 0usize)];
        let mut lines = 0;
        while let Some((id, depth)) = stack.pop() {
            if lines == max_lines {
                s.push_str("...\n");
                break;
            }
            lines += 1;
            let pad = "  ".repeat(depth.min(64));
            let Some(r) = self.rdds.get(&id) else {
                let _ = writeln!(s, "{pad}{id} (forgotten)");
                continue;
            };
            if !seen.insert(id) {
                let _ = writeln!(s, "{pad}{id} (above)");
                continue;
            }
            let parents = explain_line(id, r, &pad, &mut s);
            stack.extend(parents.iter().rev().map(|p| (*p, depth + 1)));
        }
        s
    }

    fn explain_into(&self, id: RddId, depth: usize, s: &mut String) {
        use std::fmt::Write;
        let pad = "  ".repeat(depth);
        let Some(r) = self.rdds.get(&id) else {
            let _ = writeln!(s, "{pad}{id} (forgotten)");
            return;
        };
        explain_line(id, r, &pad, s).iter().for_each(|p| self.explain_into(*p, depth + 1, s));
    }
}

/// One RDD's line of a plan; returns its parents (shuffle or narrow).
fn explain_line(id: RddId, r: &Rdd, pad: &str, s: &mut String) -> Vec<RddId> {
    use std::fmt::Write;
    let shuffle = if matches!(r.op, RddOp::Shuffled { .. }) { " <- shuffle" } else { "" };
    let persist = if r.persist { " [persisted]" } else { "" };
    let _ = writeln!(s, "{pad}({}) {} {}{persist}{shuffle}", r.partitions, id, r.label);
    match &r.op {
        RddOp::Shuffled { parents, .. } => parents.clone(),
        op => op.narrow_parents(),
    }
}

/// The fixed seed of the partitioner ("WEIR"). Changing it changes every
/// shuffle's layout: it is part of the on-disk and wire contract.
pub const PARTITION_SEED: u64 = 0x5745_4952;

/// The hash partitioner: xxh3-64 of the encoded key with a fixed seed, mod n.
#[inline]
pub fn partition_of(encoded_key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(encoded_key, PARTITION_SEED) % partitions as u64) as u32
}

/// The digest of a block's bytes, checked on every recomputation.
pub fn digest(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdd(time: i64, op: RddOp) -> Rdd {
        Rdd { id: RddId { time, node: 0 }, partitions: 1, op, persist: false, label: format!("r{time}") }
    }

    /// Forty unions, each of the previous one twice: 2^40 paths, 41 RDDs.
    fn doubling() -> (Lineage, RddId) {
        let mut l = Lineage::default();
        l.rdds.insert(RddId { time: 0, node: 0 }, rdd(0, RddOp::Input { source: 0 }));
        for t in 1..=40 {
            let prev = RddId { time: t - 1, node: 0 };
            l.rdds.insert(RddId { time: t, node: 0 }, rdd(t, RddOp::Union { parents: vec![prev, prev] }));
        }
        (l, RddId { time: 40, node: 0 })
    }

    #[test]
    fn a_bounded_plan_expands_each_rdd_once() {
        let (l, root) = doubling();
        let plan = l.explain_bounded(root, 1000);
        // Each RDD once, plus one "(above)" per union for its second parent.
        assert_eq!(plan.lines().count(), 41 + 40, "{plan}");
        assert_eq!(plan.matches("(above)").count(), 40);
        assert!(plan.lines().next().unwrap().contains("r40"));
        assert!(!plan.contains("..."));
    }

    #[test]
    fn a_bounded_plan_stops_at_its_line_limit() {
        let (l, root) = doubling();
        let plan = l.explain_bounded(root, 10);
        assert_eq!(plan.lines().count(), 11, "{plan}");
        assert!(plan.ends_with("...\n"));
    }

    #[test]
    fn a_bounded_plan_of_a_chain_is_the_full_plan() {
        let mut l = Lineage::default();
        l.rdds.insert(RddId { time: 0, node: 0 }, rdd(0, RddOp::Input { source: 0 }));
        let parent = RddId { time: 0, node: 0 };
        l.rdds.insert(RddId { time: 1, node: 0 }, rdd(1, RddOp::Narrow { parent, ops: vec![] }));
        let root = RddId { time: 1, node: 0 };
        assert_eq!(l.explain_bounded(root, 100), l.explain(root));
    }
}
