//! What a checkpoint's state depends on, so that a job may be edited and
//! still recover. A checkpoint holds the state of the job's stateful
//! streams and the positions of its sources; everything else in the job
//! (outputs, stateless branches, a `print`'s `num`, comments) can change
//! between runs without making that state wrong. [`JobIdentity`] records
//! the sources' identities and, per stateful stream, a signature over the
//! stream and everything upstream of it (operations, their arguments, UDF
//! module hashes, partitions, slides, sources). Recovery matches the
//! checkpoint's stateful streams to the new job's by signature; what does
//! not match is shown as a diff of the two lineages ([`JobIdentity::compare`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::graph::{Graph, NodeId, NodeOp};
use crate::source::SourceSpec;

/// The parts of a job its checkpoints depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentity {
    /// Each source's identity, in the job's order (cursors and recorded
    /// inputs are by this index).
    pub sources: Vec<String>,
    /// The stateful streams, in graph order.
    pub stateful: Vec<StatefulStream>,
    /// Each static dataset the job reads: name -> SHA-256 of its content.
    /// A changed dataset changes what re-run batches compute.
    #[serde(default)]
    pub datasets: BTreeMap<String, String>,
    /// Every static dataset the job loaded (in `transform`, as a UDF's
    /// parameter, or unused): name -> where it was read from and its
    /// content hash, for `weir checkpoint inspect`. Not compared: what a
    /// dataset changes is in `datasets` and in the lineage signatures.
    #[serde(default)]
    pub loaded_datasets: BTreeMap<String, LoadedDataset>,
}

/// A static dataset as a checkpoint describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedDataset {
    /// Where its records came from: `file users.jsonl`, `directory
    /// users/`, `records given by the program`.
    pub source: String,
    /// Hex SHA-256 of its content (`weir_plan::dataset::Dataset::hash`).
    pub hash: String,
}

/// [`JobIdentity`] as checkpoints wrote it before datasets existed (bincode
/// is not self-describing: such a checkpoint is decoded as this shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentityV1 {
    pub sources: Vec<String>,
    pub stateful: Vec<StatefulStream>,
}

impl From<JobIdentityV1> for JobIdentity {
    fn from(v: JobIdentityV1) -> Self {
        JobIdentity { sources: v.sources, stateful: v.stateful, ..Default::default() }
    }
}

/// [`JobIdentity`] as checkpoints wrote it before the loaded datasets were
/// recorded ([`JobIdentity::loaded_datasets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentityV2 {
    pub sources: Vec<String>,
    pub stateful: Vec<StatefulStream>,
    pub datasets: BTreeMap<String, String>,
}

impl From<JobIdentityV2> for JobIdentity {
    fn from(v: JobIdentityV2) -> Self {
        JobIdentity { sources: v.sources, stateful: v.stateful, datasets: v.datasets, ..Default::default() }
    }
}

/// One stateful stream (update_state_by_key, map_with_state, a window with
/// an inverse function) as a checkpoint knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatefulStream {
    /// Its node in the graph that wrote the checkpoint.
    pub node: NodeId,
    /// The job-file stream its operation is written in, if any.
    pub stream: Option<String>,
    /// Its operation, as the status page shows it.
    pub label: String,
    /// SHA-256 over the stream and its lineage, module hashes included.
    pub signature: String,
    /// The same with module hashes left out: equal when only modules changed.
    pub signature_without_modules: String,
    /// Its lineage, one line per operation from the sources down, for diffs.
    pub lineage: Vec<String>,
    /// The most partitions its RDDs have: its state is stored in that many.
    pub partitions: u64,
}

impl StatefulStream {
    /// How a message names it: `"totals" (update_state_by_key(wc.total))`.
    pub fn display_name(&self) -> String {
        match &self.stream {
            Some(s) => format!("{s:?} ({})", self.label),
            None => self.label.clone(),
        }
    }
}

/// How the stateful streams of a checkpoint map onto a new job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Checkpoint node -> new node, for streams whose signatures are equal.
    pub same: BTreeMap<NodeId, NodeId>,
    /// Pairs (checkpoint stream, new stream) that are the same stream (same
    /// job-file name and operation kind, or the only candidates) whose
    /// lineage changed; `modules_only` when only module hashes differ.
    pub changed: Vec<Changed>,
    /// Streams of the checkpoint with no counterpart in the new job.
    pub removed: Vec<StatefulStream>,
    /// Stateful streams of the new job with no counterpart in the checkpoint.
    pub added: Vec<StatefulStream>,
    /// Sources whose identity changed: (index, in the checkpoint, now).
    pub sources: Vec<(usize, Option<String>, Option<String>)>,
    /// Datasets whose content changed, or that were added or removed:
    /// (name, hash in the checkpoint, hash now).
    pub datasets: Vec<(String, Option<String>, Option<String>)>,
}

/// A stateful stream whose lineage changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub old: StatefulStream,
    pub new: StatefulStream,
    pub modules_only: bool,
}

impl Comparison {
    /// Whether nothing the state depends on changed.
    pub fn is_same(&self) -> bool {
        self.changed.is_empty()
            && self.removed.is_empty()
            && self.added.is_empty()
            && self.sources.is_empty()
            && self.datasets.is_empty()
    }

    /// Whether every difference is a changed module under the same lineage.
    pub fn modules_only(&self) -> bool {
        self.sources.is_empty()
            && self.datasets.is_empty()
            && self.removed.is_empty()
            && self.added.is_empty()
            && self.changed.iter().all(|c| c.modules_only)
    }

    /// The differences as lines a user can read: per stream, the lineage
    /// lines removed (`-`) and added (`+`).
    pub fn diff(&self) -> String {
        let mut out = Vec::new();
        for (i, old, new) in &self.sources {
            let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".into());
            out.push(format!("source {i}: was {}, now {}", show(old), show(new)));
        }
        for (name, old, new) in &self.datasets {
            let short = |h: &String| format!("sha256 {}", h.get(..12).unwrap_or(h));
            out.push(match (old, new) {
                (Some(o), Some(n)) => {
                    format!("dataset {name:?} changed: content {} in the checkpoint, {} now", short(o), short(n))
                }
                (Some(o), None) => format!("dataset {name:?} ({}) is no longer in the job", short(o)),
                (None, Some(n)) => format!("dataset {name:?} ({}) is new", short(n)),
                (None, None) => continue,
            });
        }
        for c in &self.changed {
            out.push(format!("stateful stream {} changed:", c.new.display_name()));
            let before = out.len();
            for l in c.old.lineage.iter().filter(|l| !c.new.lineage.contains(l)) {
                out.push(format!("  - {l}"));
            }
            for l in c.new.lineage.iter().filter(|l| !c.old.lineage.contains(l)) {
                out.push(format!("  + {l}"));
            }
            if out.len() == before {
                out.push(
                    "  the operations read the same: an argument they do not show changed (an initial state, \
                     a partition count, a slide)"
                        .into(),
                );
            }
        }
        for r in &self.removed {
            out.push(format!(
                "stateful stream {} is no longer in the job (its state would be dropped)",
                r.display_name()
            ));
        }
        for a in &self.added {
            out.push(format!("stateful stream {} is new (it would start without state)", a.display_name()));
        }
        out.join("\n")
    }
}

impl JobIdentity {
    /// The identity of `graph`; `names` gives the job-file stream of nodes.
    pub fn of(graph: &Graph, names: &BTreeMap<NodeId, String>) -> JobIdentity {
        let sources = graph.sources.iter().map(source_identity).collect();
        let mut sig: Vec<(String, String)> = Vec::with_capacity(graph.nodes.len());
        let mut lines: Vec<Vec<String>> = Vec::with_capacity(graph.nodes.len());
        let mut stateful = Vec::new();
        let bounds = graph.bounds();
        for n in &graph.nodes {
            let op = match &n.op {
                NodeOp::Source { source } => {
                    let id = graph.sources.get(*source as usize).map(source_identity).unwrap_or_default();
                    format!("source {id}")
                }
                other => format!("{other:?}"),
            };
            let mut full = Sha256::new();
            let mut masked = Sha256::new();
            for (h, text) in [(&mut full, op.clone()), (&mut masked, mask_module_hashes(&op))] {
                h.update(text.as_bytes());
                h.update(n.slide_ms.to_le_bytes());
            }
            let mut lineage: Vec<String> = Vec::new();
            for p in &n.parents {
                let Some((f, m)) = sig.get(*p as usize) else { continue };
                full.update(f.as_bytes());
                masked.update(m.as_bytes());
                for l in lines.get(*p as usize).into_iter().flatten() {
                    if !lineage.contains(l) {
                        lineage.push(l.clone());
                    }
                }
            }
            lineage.push(lineage_line(n.id, &n.label, &op, names));
            let (f, m) = (hex(&full.finalize()), hex(&masked.finalize()));
            if n.op.is_stateful() {
                stateful.push(StatefulStream {
                    node: n.id,
                    stream: names.get(&n.id).cloned(),
                    label: n.label.clone(),
                    signature: f.clone(),
                    signature_without_modules: m.clone(),
                    lineage: lineage.clone(),
                    partitions: bounds.get(n.id as usize).map_or(0, |b| b.1),
                });
            }
            sig.push((f, m));
            lines.push(lineage);
        }
        let datasets = graph
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                NodeOp::Dataset { dataset, .. } => Some((dataset.name().to_string(), dataset.hash().to_string())),
                _ => None,
            })
            .collect();
        JobIdentity { sources, stateful, datasets, loaded_datasets: BTreeMap::new() }
    }

    /// Compares the identity a checkpoint recorded (`self`) with a new job's.
    pub fn compare(&self, new: &JobIdentity) -> Comparison {
        let mut c = Comparison::default();
        for i in 0..self.sources.len().max(new.sources.len()) {
            let (a, b) = (self.sources.get(i), new.sources.get(i));
            if a != b {
                c.sources.push((i, a.cloned(), b.cloned()));
            }
        }
        for name in self.datasets.keys().chain(new.datasets.keys()) {
            let (a, b) = (self.datasets.get(name), new.datasets.get(name));
            if a != b && !c.datasets.iter().any(|d| &d.0 == name) {
                c.datasets.push((name.clone(), a.cloned(), b.cloned()));
            }
        }
        let mut old_left: Vec<&StatefulStream> = Vec::new();
        let mut new_left: Vec<&StatefulStream> = new.stateful.iter().collect();
        for o in &self.stateful {
            match new_left.iter().position(|n| n.signature == o.signature) {
                Some(i) => {
                    c.same.insert(o.node, new_left.remove(i).node);
                }
                None => old_left.push(o),
            }
        }
        // What is left pairs up as "the same stream, changed": by lineage
        // without modules, then by job-file name and kind of operation.
        let pair_by = |old_left: &mut Vec<&StatefulStream>,
                       new_left: &mut Vec<&StatefulStream>,
                       out: &mut Vec<Changed>,
                       same: &dyn Fn(&StatefulStream, &StatefulStream) -> bool| {
            old_left.retain(|o| match new_left.iter().position(|n| same(o, n)) {
                Some(i) => {
                    let n = new_left.remove(i);
                    let modules_only = n.signature_without_modules == o.signature_without_modules;
                    out.push(Changed { old: (*o).clone(), new: n.clone(), modules_only });
                    false
                }
                None => true,
            });
        };
        // Never two streams whose state is cut into different partitions.
        pair_by(&mut old_left, &mut new_left, &mut c.changed, &|o, n| {
            o.signature_without_modules == n.signature_without_modules && o.partitions == n.partitions
        });
        pair_by(&mut old_left, &mut new_left, &mut c.changed, &|o, n| {
            o.stream.is_some()
                && o.stream == n.stream
                && op_kind(&o.label) == op_kind(&n.label)
                && o.partitions == n.partitions
        });
        c.removed = old_left.into_iter().cloned().collect();
        c.added = new_left.into_iter().cloned().collect();
        c
    }
}

/// A source's identity: what decides which records it gives (not how fast,
/// nor what happens to a bad line). A Kafka source is its topics and the
/// shape of its records; its brokers may move.
pub fn source_identity(s: &SourceSpec) -> String {
    match s {
        SourceSpec::Socket { host, port, .. } => format!("socket {host}:{port}"),
        SourceSpec::Directory { path, .. } => format!("directory {}", path.display()),
        SourceSpec::Batches { path } => format!("batches {}", path.display()),
        SourceSpec::Generator { lines_per_batch, words_per_line, vocabulary, seed, .. } => format!(
            "generator (lines_per_batch {lines_per_batch}, words_per_line {words_per_line}, \
             vocabulary {vocabulary}, seed {seed})"
        ),
        SourceSpec::Kafka { topics, value_format, key, .. } => {
            format!("kafka topics {topics:?} (value_format {value_format:?}, key {key})")
        }
        SourceSpec::Queue { batches } => {
            let mut h = Sha256::new();
            for b in batches {
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            format!("queue of {} batch(es), sha256 {}", batches.len(), hex(&h.finalize()))
        }
        SourceSpec::Custom { name, .. } => format!("custom source {name:?}"),
    }
}

/// One line of a lineage diff: the stream's name, its operation and the
/// modules it uses (short hashes), e.g. `words: flat_map(wc.split) [sha256 0a1b2c3d4e5f]`.
fn lineage_line(node: NodeId, label: &str, op: &str, names: &BTreeMap<NodeId, String>) -> String {
    let hashes = module_hashes(op);
    let name = names.get(&node).map(|n| format!("{n}: ")).unwrap_or_default();
    let what = if op.starts_with("source ") { op.to_string() } else { label.to_string() };
    if hashes.is_empty() {
        format!("{name}{what}")
    } else {
        let short: Vec<&str> = hashes.iter().map(|h| &h[..12]).collect();
        format!("{name}{what} [sha256 {}]", short.join(", "))
    }
}

/// The operation's name in a label: `update_state_by_key(f)` -> `update_state_by_key`.
fn op_kind(label: &str) -> &str {
    label.split('(').next().unwrap_or(label)
}

const HASH_TAG: &str = "sha256:";

/// The module hashes a `Debug`-formatted operation names (`sha256:<64 hex>`).
fn module_hashes(op: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = op;
    while let Some(i) = rest.find(HASH_TAG) {
        let after = &rest[i + HASH_TAG.len()..];
        let n = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 64 && !out.contains(&&after[..64]) {
            out.push(&after[..64]);
        }
        rest = &after[n..];
    }
    out
}

/// `op` with every module hash replaced by `sha256:*`.
fn mask_module_hashes(op: &str) -> String {
    let mut out = String::with_capacity(op.len());
    let mut rest = op;
    while let Some(i) = rest.find(HASH_TAG) {
        out.push_str(&rest[..i + HASH_TAG.len()]);
        let after = &rest[i + HASH_TAG.len()..];
        let n = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 64 {
            out.push('*');
            rest = &after[64..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::NodeOp;
    use crate::rdd::{NarrowOp, UdfRef};
    use crate::udf::{ModuleHash, UdfKind};

    fn udf(module: &[u8], f: &str, kind: UdfKind) -> UdfRef {
        UdfRef { module: ModuleHash::of(module), module_name: "m.wasm".into(), function: f.into(), kind, params: None }
    }

    /// lines -> flat_map(split) -> [filter] -> update_state_by_key(total).
    fn job(module: &[u8], with_filter: bool, path: &str) -> (Graph, BTreeMap<NodeId, String>) {
        job_with(module, with_filter, path, false)
    }

    /// The same, with a stateless branch off the source first (which moves
    /// the stateful stream to another node id).
    fn job_with(module: &[u8], with_filter: bool, path: &str, branch: bool) -> (Graph, BTreeMap<NodeId, String>) {
        let mut g = Graph::new(1000, 2);
        g.sources.push(SourceSpec::Batches { path: path.into() });
        let src = g.add(vec![], NodeOp::Source { source: 0 }, "lines".into()).unwrap();
        if branch {
            g.add(vec![src], NodeOp::Narrow(NarrowOp::Udf(udf(b"x", "f", UdfKind::Map))), "map(x.f)".into()).unwrap();
        }
        let words = g.add(
            vec![src],
            NodeOp::Narrow(NarrowOp::Udf(udf(module, "split", UdfKind::FlatMap))),
            "flat_map(m.split)".into(),
        );
        let mut up = words.unwrap();
        if with_filter {
            up = g
                .add(
                    vec![up],
                    NodeOp::Narrow(NarrowOp::Udf(udf(b"other", "keep", UdfKind::Filter))),
                    "filter(o.keep)".into(),
                )
                .unwrap();
        }
        let total = g
            .add(
                vec![up],
                NodeOp::State { update: udf(module, "total", UdfKind::Update), initial: None },
                "update_state_by_key(m.total)".into(),
            )
            .unwrap();
        let names = BTreeMap::from([(src, "lines".to_string()), (total, "totals".to_string())]);
        (g, names)
    }

    fn id(module: &[u8], with_filter: bool, path: &str) -> JobIdentity {
        let (g, n) = job(module, with_filter, path);
        JobIdentity::of(&g, &n)
    }

    #[test]
    fn the_same_job_matches_and_maps_nodes() {
        let a = id(b"v1", false, "in.jsonl");
        let c = a.compare(&id(b"v1", false, "in.jsonl"));
        assert!(c.is_same(), "{c:?}");
        assert_eq!(c.same, BTreeMap::from([(2, 2)]));
    }

    #[test]
    fn a_stateless_branch_keeps_state_and_remaps_nodes() {
        let a = id(b"v1", false, "in.jsonl");
        let (g, n) = job_with(b"v1", false, "in.jsonl", true);
        let c = a.compare(&JobIdentity::of(&g, &n));
        assert!(c.is_same(), "{c:?}");
        assert_eq!(c.same, BTreeMap::from([(2, 3)]), "the state moves to the stream's new node");
    }

    #[test]
    fn a_changed_module_is_a_module_only_change() {
        let c = id(b"v1", false, "in.jsonl").compare(&id(b"v2", false, "in.jsonl"));
        assert!(!c.is_same());
        assert!(c.modules_only(), "{c:?}");
        assert_eq!(c.changed.len(), 1);
        let d = c.diff();
        assert!(d.contains("stateful stream \"totals\""), "{d}");
        assert!(d.contains(&format!("- flat_map(m.split) [sha256 {}]", &ModuleHash::of(b"v1").hex()[..12])), "{d}");
    }

    #[test]
    fn an_operation_added_upstream_is_a_change_with_a_diff() {
        let c = id(b"v1", false, "in.jsonl").compare(&id(b"v1", true, "in.jsonl"));
        assert!(!c.is_same() && !c.modules_only(), "{c:?}");
        assert_eq!(c.changed.len(), 1, "paired by stream name: {c:?}");
        let d = c.diff();
        assert!(d.contains("+ filter(o.keep)"), "{d}");
        assert!(!d.contains("- "), "nothing was removed: {d}");
    }

    #[test]
    fn a_changed_initial_state_is_a_change_the_diff_explains() {
        let (mut g, n) = job(b"v1", false, "in.jsonl");
        let a = JobIdentity::of(&g, &n);
        if let NodeOp::State { initial, .. } = &mut g.nodes[2].op {
            *initial = Some(vec![1, 2, 3]);
        }
        let c = a.compare(&JobIdentity::of(&g, &n));
        assert_eq!(c.changed.len(), 1, "{c:?}");
        assert!(c.diff().contains("an argument they do not show changed"), "{}", c.diff());
    }

    #[test]
    fn a_changed_source_is_named() {
        let c = id(b"v1", false, "in.jsonl").compare(&id(b"v1", false, "other.jsonl"));
        assert_eq!(c.sources.len(), 1);
        let d = c.diff();
        assert!(d.contains("source 0: was batches in.jsonl, now batches other.jsonl"), "{d}");
    }

    /// A source joined (cogrouped) with dataset `users` of `records`.
    fn with_dataset(records: &[i64]) -> JobIdentity {
        let mut g = Graph::new(1000, 2);
        g.sources.push(SourceSpec::Batches { path: "in.jsonl".into() });
        let src = g.add(vec![], NodeOp::Source { source: 0 }, "lines".into()).unwrap();
        let recs: Vec<weir_codec::Value> = records.iter().map(|r| weir_codec::Value::I64(*r)).collect();
        let dataset = crate::dataset::Dataset::new("users", vec![weir_codec::Value::encode_batch(&recs)]);
        let d = g.add(vec![], NodeOp::Dataset { dataset, slide_ms: 1000 }, "dataset users".into()).unwrap();
        let agg = crate::rdd::Aggregation::CoGroup;
        g.add(vec![src, d], NodeOp::Shuffle { aggregation: agg, partitions: 2 }, "cogroup".into()).unwrap();
        JobIdentity::of(&g, &BTreeMap::new())
    }

    #[test]
    fn a_changed_dataset_is_a_change_the_diff_names() {
        let (a, b) = (with_dataset(&[1, 2]), with_dataset(&[1, 3]));
        assert!(a.compare(&with_dataset(&[1, 2])).is_same());
        let cmp = a.compare(&b);
        assert!(!cmp.is_same() && !cmp.modules_only());
        assert_eq!(cmp.datasets.len(), 1);
        let diff = cmp.diff();
        assert!(diff.starts_with("dataset \"users\" changed: content sha256 "), "{diff}");
        assert!(diff.contains(&a.datasets["users"][..12]) && diff.contains(&b.datasets["users"][..12]), "{diff}");
        // A slide that is not a multiple of the batch interval is refused.
        let mut g = Graph::new(1000, 2);
        let dataset = crate::dataset::Dataset::new("d", vec![]);
        assert!(g.add(vec![], NodeOp::Dataset { dataset, slide_ms: 1500 }, "d".into()).is_err());
    }

    #[test]
    fn hashes_are_found_and_masked() {
        let h = ModuleHash::of(b"x");
        let s = format!("Udf(UdfRef {{ module: {h:?}, f }}) and {h:?} and sha256:12");
        assert_eq!(module_hashes(&s), vec![h.hex().as_str()]);
        assert_eq!(mask_module_hashes(&s), "Udf(UdfRef { module: sha256:*, f }) and sha256:* and sha256:12");
    }
}
