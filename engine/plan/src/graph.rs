//! The DStream graph as plain data, and how it turns into RDDs for a batch.
//!
//! A [`Graph`] is what a job file or the Rust API describes: sources, nodes
//! (transformations), output operations. For each batch time it yields one
//! RDD per node whose slide divides the time, with lineage pointing at the
//! parents' RDDs — for windows, the parents' RDDs of earlier batches.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::rdd::{Aggregation, Lineage, NarrowOp, PairFilter, Rdd, RddId, RddOp, Reducer, UdfRef};
use crate::sink::OutputSpec;
use crate::source::SourceSpec;

pub type NodeId = u32;

// A `UdfRef` with parameters makes the window variants larger than the rest;
// graph nodes are plan data, a few per job, not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeOp {
    /// The input of source `source`.
    Source { source: u32 },
    /// A static dataset, as an RDD every `slide_ms` (the slide of the
    /// stream it is combined with; `crate::dataset`).
    Dataset { dataset: crate::dataset::Dataset, slide_ms: i64 },
    /// Narrow transformations, pipelined.
    Narrow(NarrowOp),
    /// The union of the parents.
    Union,
    /// A shuffle of the parent(s) into `partitions` partitions.
    Shuffle { aggregation: Aggregation, partitions: u32 },
    /// The union of the parent's RDDs over the last `length_ms`, every `slide_ms`.
    Window { length_ms: i64, slide_ms: i64 },
    /// update_state_by_key over the parent's `(k, [values])` (a group_by_key),
    /// starting from `initial` (encoded `(k, state)` pairs) if given.
    State { update: UdfRef, initial: Option<Vec<u8>> },
    /// map_with_state over the parent's `(k, [values])`, starting from
    /// `initial` (encoded `(k, state)` pairs) if given.
    MapWithState { f: UdfRef, timeout_ms: Option<i64>, initial: Option<Vec<u8>> },
    /// reduce_by_key_and_window with an inverse function over the parent's
    /// per-batch reduced pairs.
    InvWindow { length_ms: i64, slide_ms: i64, reduce: Reducer, inverse: Reducer, filter: Option<PairFilter> },
    /// A seeded sample: a narrow `NarrowOp::Sample` whose seed mixes in
    /// each RDD's batch time (`rdd::sample_seed`).
    Sample { seed: u64, threshold: u64 },
    /// The parent's partitions merged into at most `partitions`, no shuffle.
    Coalesce { partitions: u32 },
    /// Every pair of a record of the first parent and one of the second.
    Cartesian,
}

impl NodeOp {
    /// Whether the node's RDD depends on its own previous RDD (and so needs
    /// data checkpoints to bound its lineage).
    pub fn is_stateful(&self) -> bool {
        matches!(self, NodeOp::State { .. } | NodeOp::InvWindow { .. } | NodeOp::MapWithState { .. })
    }

    /// How far before a data checkpoint of this node its parents' batches
    /// are still read (a window with an inverse subtracts batches leaving it).
    pub fn lookback_ms(&self) -> i64 {
        match self {
            NodeOp::InvWindow { length_ms, slide_ms, .. } => length_ms + slide_ms,
            _ => 0,
        }
    }
}

/// The default data checkpoint interval of a map_with_state stream, in
/// slides (Spark's `DEFAULT_CHECKPOINT_DURATION_MULTIPLIER`): its keys time
/// out only on checkpointed batches.
pub const MAP_WITH_STATE_CHECKPOINT_SLIDES: i64 = 10;

/// The default data checkpoint interval: the smallest multiple of the slide
/// that is at least 10 s (Spark's rule).
pub fn default_checkpoint_interval(slide_ms: i64) -> i64 {
    let n = (10_000 + slide_ms - 1) / slide_ms;
    n.max(1) * slide_ms
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub parents: Vec<NodeId>,
    pub op: NodeOp,
    /// How often this stream produces an RDD.
    pub slide_ms: i64,
    /// Keep this node's RDD partitions as blocks (a window reads them again).
    pub persist: bool,
    /// How long this node's RDDs must stay available after their batch.
    pub remember_ms: i64,
    pub label: String,
    /// For stateful nodes: how often their RDD is written to a data checkpoint.
    #[serde(default)]
    pub checkpoint_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub node: NodeId,
    pub spec: OutputSpec,
}

/// A whole streaming job as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub batch_interval_ms: i64,
    /// Default number of partitions for shuffles and sources. Fixed per job
    /// (not per machine), so outputs do not depend on the number of cores.
    pub parallelism: u32,
    /// How fast sources may take records (backpressure, `[rate]`).
    #[serde(default)]
    pub rate: crate::rate::RateSpec,
    /// What its checkpoints may cost (`[checkpoint]`).
    #[serde(default)]
    pub checkpoint: crate::limits::CheckpointBounds,
    pub sources: Vec<SourceSpec>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<Output>,
}

/// A graph that is not well formed, with the node that makes it so.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
#[non_exhaustive]
pub struct GraphError(pub String);

impl Graph {
    /// A graph without bounds checks on its arguments (see [`Graph::try_new`]).
    pub fn new(batch_interval_ms: i64, parallelism: u32) -> Self {
        Graph {
            batch_interval_ms,
            parallelism,
            rate: Default::default(),
            checkpoint: Default::default(),
            sources: vec![],
            nodes: vec![],
            outputs: vec![],
        }
    }

    /// A graph whose batch interval and parallelism are within the bounds
    /// of [`crate::limits`].
    pub fn try_new(batch_interval_ms: i64, parallelism: u32) -> Result<Self, GraphError> {
        limits::check_duration_ms("the batch interval", batch_interval_ms).map_err(GraphError)?;
        let mut g = Graph::new(batch_interval_ms, 1);
        g.set_parallelism(parallelism)?;
        Ok(g)
    }

    /// Sets the default number of partitions of sources and shuffles
    /// (1 to [`limits::MAX_PARTITIONS`]).
    pub fn set_parallelism(&mut self, n: u32) -> Result<(), GraphError> {
        limits::check_partitions("parallelism", n as u64).map_err(GraphError)?;
        self.parallelism = n;
        Ok(())
    }

    /// Sets how often stateful node `id` is written to a data checkpoint: a
    /// positive multiple of its slide, at most a year and
    /// [`limits::MAX_WINDOW_BATCHES`] slides.
    pub fn set_checkpoint_interval(&mut self, id: NodeId, ms: i64) -> Result<(), GraphError> {
        let Some(n) = self.nodes.get_mut(id as usize) else {
            return Err(GraphError(format!("unknown stream {id}")));
        };
        if !n.op.is_stateful() {
            return Err(GraphError(format!("{}: checkpoint() applies to stateful streams only", n.label)));
        }
        limits::check_duration_ms("the checkpoint interval", ms)
            .map_err(|m| GraphError(format!("{}: {m}", n.label)))?;
        if ms % n.slide_ms != 0 {
            return Err(GraphError(format!(
                "{}: the checkpoint interval ({ms} ms) must be a positive multiple of the slide ({} ms)",
                n.label, n.slide_ms
            )));
        }
        if ms / n.slide_ms > limits::MAX_WINDOW_BATCHES {
            return Err(GraphError(format!(
                "{}: the checkpoint interval ({ms} ms) spans more than {} slides ({} ms)",
                n.label,
                limits::MAX_WINDOW_BATCHES,
                n.slide_ms
            )));
        }
        n.checkpoint_ms = Some(ms);
        Ok(())
    }

    /// Each node's depth (operations from a source, a source being 1) and
    /// the most partitions its RDDs can have, in one pass: parents come
    /// before their children, so no recursion.
    pub(crate) fn bounds(&self) -> Vec<(usize, u64)> {
        let mut b: Vec<(usize, u64)> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let bound = self.bound_of(&n.parents, &b, &n.op);
            b.push(bound);
        }
        b
    }

    /// The bound of a node with operation `op` and parents `parents`, given
    /// the bounds of the nodes before it.
    fn bound_of(&self, parents: &[NodeId], bounds: &[(usize, u64)], op: &NodeOp) -> (usize, u64) {
        let of = |p: &NodeId| bounds.get(*p as usize).copied().unwrap_or((0, 0));
        let depth = 1 + parents.iter().map(|p| of(p).0).max().unwrap_or(0);
        let first = parents.first().map(|p| of(p).1).unwrap_or(0);
        let partitions = match op {
            NodeOp::Source { .. } => self.parallelism as u64,
            NodeOp::Dataset { dataset, .. } => dataset.partitions().len() as u64,
            NodeOp::Shuffle { partitions, .. } => *partitions as u64,
            NodeOp::Union => parents.iter().fold(0u64, |a, p| a.saturating_add(of(p).1)),
            NodeOp::Coalesce { partitions } => first.min(*partitions as u64),
            NodeOp::Cartesian => parents.iter().fold(1u64, |a, p| a.saturating_mul(of(p).1)),
            // A window is the union of `length / parent slide` parent RDDs.
            NodeOp::Window { length_ms, .. } => {
                let ps = parents.first().and_then(|p| self.nodes.get(*p as usize)).map(|n| n.slide_ms).unwrap_or(1);
                first.saturating_mul(((*length_ms).max(1) / ps.max(1)).max(1) as u64)
            }
            _ => first,
        };
        (depth, partitions)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// Adds a node after checking its slide against its parents'.
    pub fn add(&mut self, parents: Vec<NodeId>, op: NodeOp, label: String) -> Result<NodeId, GraphError> {
        let id = self.nodes.len() as NodeId;
        for p in &parents {
            if *p >= id {
                return Err(GraphError(format!("{label}: unknown parent stream {p}")));
            }
        }
        if self.nodes.len() >= limits::MAX_NODES {
            return Err(GraphError(format!("{label}: the job has more than {} streams", limits::MAX_NODES)));
        }
        let (depth, partitions) = self.bound_of(&parents, &self.bounds(), &op);
        if depth > limits::MAX_GRAPH_DEPTH {
            return Err(GraphError(format!(
                "{label}: the stream is {depth} operations deep, over the maximum of {} \
                 (a chain of streams or of operations that long; split the job)",
                limits::MAX_GRAPH_DEPTH
            )));
        }
        if let NodeOp::Shuffle { partitions, .. } | NodeOp::Coalesce { partitions } = &op {
            limits::check_partitions("the number of partitions", *partitions as u64)
                .map_err(|m| GraphError(format!("{label}: {m}")))?;
        }
        if let NodeOp::MapWithState { timeout_ms: Some(t), .. } = &op {
            limits::check_duration_ms("the timeout", *t).map_err(|m| GraphError(format!("{label}: {m}")))?;
        }
        let parent_slide = parents.first().map(|p| self.node(*p).slide_ms).unwrap_or(self.batch_interval_ms);
        if parents.iter().any(|p| self.node(*p).slide_ms != parent_slide) {
            return Err(GraphError(format!("{label}: the streams combined have different slide durations")));
        }
        let slide_ms = match &op {
            NodeOp::Window { length_ms, slide_ms } => {
                check_window(&label, *length_ms, *slide_ms, *length_ms, parent_slide)?;
                let p = parents[0] as usize;
                self.nodes[p].persist = true;
                self.nodes[p].remember_ms = self.nodes[p].remember_ms.max(*length_ms);
                *slide_ms
            }
            NodeOp::InvWindow { length_ms, slide_ms, .. } => {
                // It reads the batches leaving the window too: length + slide.
                check_window(&label, *length_ms, *slide_ms, length_ms.saturating_add(*slide_ms), parent_slide)?;
                // The batches leaving the window are read again.
                let p = parents[0] as usize;
                self.nodes[p].persist = true;
                self.nodes[p].remember_ms = self.nodes[p].remember_ms.max(*length_ms + *slide_ms);
                *slide_ms
            }
            NodeOp::Source { .. } => self.batch_interval_ms,
            NodeOp::Dataset { slide_ms, .. } => {
                if *slide_ms <= 0 || *slide_ms % self.batch_interval_ms != 0 {
                    return Err(GraphError(format!(
                        "{label}: the slide ({slide_ms} ms) must be a positive multiple of the batch interval"
                    )));
                }
                *slide_ms
            }
            _ => parent_slide,
        };
        if partitions > limits::MAX_RDD_PARTITIONS {
            return Err(GraphError(format!(
                "{label}: its RDDs would have up to {partitions} partitions, over the maximum of {} \
                 (a union or a window adds up its parents' partitions)",
                limits::MAX_RDD_PARTITIONS
            )));
        }
        let checkpoint_ms = match &op {
            // Spark's InternalMapWithStateDStream: 10 slides by default.
            NodeOp::MapWithState { .. } => Some(slide_ms.saturating_mul(MAP_WITH_STATE_CHECKPOINT_SLIDES)),
            _ => op.is_stateful().then(|| default_checkpoint_interval(slide_ms)),
        };
        let persist = op.is_stateful();
        self.nodes.push(Node { id, parents, op, slide_ms, persist, remember_ms: slide_ms, label, checkpoint_ms });
        Ok(id)
    }

    /// How long any RDD must be kept: the longest window (or chain of
    /// windows) plus one interval. Lookbacks add up along a chain: a window
    /// of a window may make its parent's RDD of an earlier time only when it
    /// needs it, and that RDD reads its own parent further back.
    pub fn remember_ms(&self) -> i64 {
        let mut chain = vec![0i64; self.nodes.len()];
        for n in &self.nodes {
            let up = n.parents.iter().filter_map(|p| chain.get(*p as usize)).copied().max().unwrap_or(0);
            let own = match n.op {
                NodeOp::Window { length_ms, .. } => length_ms,
                NodeOp::InvWindow { length_ms, slide_ms, .. } => length_ms + slide_ms,
                NodeOp::State { .. } => n.slide_ms,
                _ => 0,
            };
            if let Some(c) = chain.get_mut(n.id as usize) {
                *c = up + own;
            }
        }
        let longest = chain.into_iter().chain(self.nodes.iter().map(|n| n.remember_ms)).max().unwrap_or(0);
        longest.max(self.batch_interval_ms) + self.batch_interval_ms
    }
}

/// Checks a window's length and slide: each a positive multiple of the
/// parent's slide, at most a year, spanning at most
/// [`limits::MAX_WINDOW_BATCHES`] parent batches (`span`: what it reads).
fn check_window(label: &str, length_ms: i64, slide_ms: i64, span: i64, parent_slide: i64) -> Result<(), GraphError> {
    for (what, d) in [("window length", length_ms), ("slide", slide_ms)] {
        if d <= 0 || d % parent_slide != 0 {
            return Err(GraphError(format!(
                "{label}: the {what} ({d} ms) must be a positive multiple of the parent's slide duration ({parent_slide} ms)"
            )));
        }
        limits::check_duration_ms(&format!("the {what}"), d).map_err(|m| GraphError(format!("{label}: {m}")))?;
    }
    if span / parent_slide > limits::MAX_WINDOW_BATCHES {
        return Err(GraphError(format!(
            "{label}: the window spans {} batches of its parent ({parent_slide} ms each), over the maximum of {}",
            span / parent_slide,
            limits::MAX_WINDOW_BATCHES
        )));
    }
    Ok(())
}

/// Memo of the RDD each node produced at each time (None: not a slide time).
#[derive(Default)]
pub struct Generated {
    rdds: HashMap<(NodeId, i64), Option<RddId>>,
}

impl Generated {
    /// Forgets everything before `time`.
    pub fn forget_before(&mut self, time: i64) {
        self.rdds.retain(|(_, t), _| *t >= time);
    }
}

/// Produces the RDDs of batch `time`; returns the RDD of each output (None
/// when the output's stream does not produce at this time).
pub fn generate(
    graph: &Graph,
    zero_time: i64,
    time: i64,
    input_partitions: &BTreeMap<u32, u32>,
    memo: &mut Generated,
    lineage: &mut Lineage,
) -> Vec<Option<RddId>> {
    // Input RDDs are made now, with this batch's partitions, whether or not an
    // output needs them at this time: a window or a longer slide reads them
    // at a later batch, when `input_partitions` describes another batch.
    for n in &graph.nodes {
        if let NodeOp::Source { source } = n.op {
            let id = RddId { time, node: n.id };
            let made = input_partitions.get(&source).map(|&p| {
                lineage.rdds.insert(
                    id,
                    Rdd {
                        id,
                        partitions: p.max(1),
                        op: RddOp::Input { source },
                        persist: true,
                        label: n.label.clone(),
                    },
                );
                id
            });
            memo.rdds.insert((n.id, time), made);
        }
    }
    graph.outputs.iter().map(|o| rdd_at(graph, zero_time, o.node, time, memo, lineage)).collect()
}

/// The RDD of `node` at `time` (made from its parents' if not made yet;
/// None when the node does not produce at that time): `DStream::slice`.
pub fn rdd_of(
    graph: &Graph,
    zero_time: i64,
    node: NodeId,
    time: i64,
    memo: &mut Generated,
    lineage: &mut Lineage,
) -> Option<RddId> {
    rdd_at(graph, zero_time, node, time, memo, lineage)
}

fn rdd_at(g: &Graph, zero: i64, node: NodeId, time: i64, memo: &mut Generated, lineage: &mut Lineage) -> Option<RddId> {
    if let Some(r) = memo.rdds.get(&(node, time)) {
        return *r;
    }
    let n = g.node(node);
    let valid = time > zero && (time - zero) % n.slide_ms == 0;
    let id = RddId { time, node };
    let made = if !valid {
        None
    } else {
        match &n.op {
            // A source's RDD exists only for batches it was asked for (made
            // by `generate` at its batch, found in the memo above); older
            // batches (forgotten, before a restart) are not re-created here.
            NodeOp::Source { .. } => None,
            NodeOp::Dataset { dataset, .. } => Some(Rdd {
                id,
                partitions: dataset.partitions().len().max(1) as u32,
                op: RddOp::Dataset(dataset.clone()),
                persist: false,
                label: n.label.clone(),
            }),
            NodeOp::Narrow(op) => rdd_at(g, zero, n.parents[0], time, memo, lineage).and_then(|p| {
                let parent = lineage.get(p)?;
                Some(Rdd {
                    id,
                    partitions: parent.partitions,
                    op: RddOp::Narrow { parent: p, ops: vec![op.clone()] },
                    persist: n.persist,
                    label: n.label.clone(),
                })
            }),
            NodeOp::Sample { seed, threshold } => rdd_at(g, zero, n.parents[0], time, memo, lineage).and_then(|p| {
                let parent = lineage.get(p)?;
                let seed = crate::rdd::sample_seed(*seed, time);
                Some(Rdd {
                    id,
                    partitions: parent.partitions,
                    op: RddOp::Narrow { parent: p, ops: vec![NarrowOp::Sample { seed, threshold: *threshold }] },
                    persist: n.persist,
                    label: n.label.clone(),
                })
            }),
            NodeOp::Coalesce { partitions } => rdd_at(g, zero, n.parents[0], time, memo, lineage).and_then(|p| {
                let parent = lineage.get(p)?;
                Some(Rdd {
                    id,
                    partitions: parent.partitions.min(*partitions).max(1),
                    op: RddOp::Coalesce { parent: p, parent_partitions: parent.partitions },
                    persist: n.persist,
                    label: n.label.clone(),
                })
            }),
            NodeOp::Cartesian => {
                let left = rdd_at(g, zero, n.parents[0], time, memo, lineage);
                let right = n.parents.get(1).and_then(|r| rdd_at(g, zero, *r, time, memo, lineage));
                match (left.and_then(|l| lineage.get(l)), right.and_then(|r| lineage.get(r))) {
                    (Some(l), Some(r)) => Some(Rdd {
                        id,
                        // Saturating: bounded by the graph (MAX_RDD_PARTITIONS) when built.
                        partitions: l.partitions.saturating_mul(r.partitions),
                        op: RddOp::Cartesian { left: l.id, right: r.id, right_partitions: r.partitions },
                        persist: n.persist,
                        label: n.label.clone(),
                    }),
                    _ => None,
                }
            }
            NodeOp::Union => {
                let parents: Vec<RddId> =
                    n.parents.iter().filter_map(|p| rdd_at(g, zero, *p, time, memo, lineage)).collect();
                union_rdd(id, parents, n, lineage)
            }
            NodeOp::Window { length_ms, .. } => {
                let p = n.parents[0];
                let ps = g.node(p).slide_ms;
                let mut parents = Vec::new();
                let mut t = time - length_ms + ps;
                while t <= time {
                    if t > zero {
                        if let Some(r) = rdd_at(g, zero, p, t, memo, lineage) {
                            parents.push(r);
                        }
                    }
                    t += ps;
                }
                union_rdd(id, parents, n, lineage)
            }
            NodeOp::State { .. } | NodeOp::MapWithState { .. } => {
                let grouped = rdd_at(g, zero, n.parents[0], time, memo, lineage);
                let prev = previous(g, zero, node, time - n.slide_ms, memo, lineage);
                match (grouped, prev) {
                    (Some(grouped), Ok(prev)) => Some(Rdd {
                        id,
                        partitions: lineage.get(grouped).map(|r| r.partitions).unwrap_or(1),
                        op: match &n.op {
                            NodeOp::State { update, initial } => RddOp::State {
                                prev,
                                grouped,
                                update: update.clone(),
                                initial: if prev.is_none() { initial.clone() } else { None },
                            },
                            NodeOp::MapWithState { f, timeout_ms, initial } => {
                                // Spark's rule: keys time out only on batches
                                // whose state is checkpointed (MapWithStateRDD's
                                // full scan), so other batches see no timeout.
                                let full_scan = n.checkpoint_ms.is_some_and(|every| (time - zero) % every == 0);
                                let timeout_ms = timeout_ms.filter(|_| full_scan);
                                RddOp::MapWithState {
                                    prev,
                                    grouped,
                                    f: f.clone(),
                                    timeout_ms,
                                    initial: if prev.is_none() { initial.clone() } else { None },
                                }
                            }
                            _ => return None,
                        },
                        persist: true,
                        label: n.label.clone(),
                    }),
                    _ => None,
                }
            }
            NodeOp::InvWindow { length_ms, slide_ms, reduce, inverse, filter } => {
                let p = n.parents[0];
                let ps = g.node(p).slide_ms;
                // Every batch entering or leaving must be there: a missing one
                // would silently skew the running value.
                let range = |from: i64, to: i64, memo: &mut Generated, lineage: &mut Lineage| -> Option<Vec<RddId>> {
                    let mut v = Vec::new();
                    let mut t = from + ps;
                    while t <= to {
                        if t > zero {
                            match rdd_at(g, zero, p, t, memo, lineage) {
                                Some(r) => v.push(r),
                                None => {
                                    tracing::error!(
                                        "{}: the batch at {t} ms is lost; the window at {time} ms cannot be computed",
                                        n.label
                                    );
                                    return None;
                                }
                            }
                        }
                        t += ps;
                    }
                    Some(v)
                };
                let entering = range(time - slide_ms, time, memo, lineage);
                let leaving = range(time - slide_ms - length_ms, time - length_ms, memo, lineage);
                let prev = previous(g, zero, node, time - slide_ms, memo, lineage);
                let (Some(entering), Some(leaving)) = (entering, leaving) else {
                    memo.rdds.insert((node, time), None);
                    return None;
                };
                let partitions = entering.first().and_then(|r| lineage.get(*r)).map(|r| r.partitions).unwrap_or(1);
                match prev {
                    Ok(prev) if !entering.is_empty() => Some(Rdd {
                        id,
                        partitions,
                        op: RddOp::InvWindow {
                            prev,
                            entering,
                            leaving,
                            reduce: reduce.clone(),
                            inverse: inverse.clone(),
                            filter: filter.clone(),
                        },
                        persist: true,
                        label: n.label.clone(),
                    }),
                    _ => None,
                }
            }
            NodeOp::Shuffle { aggregation, partitions } => {
                let parents: Vec<RddId> =
                    n.parents.iter().filter_map(|p| rdd_at(g, zero, *p, time, memo, lineage)).collect();
                if parents.len() != n.parents.len() {
                    None
                } else {
                    let map_partitions = parents.iter().filter_map(|p| lineage.get(*p).map(|r| r.partitions)).collect();
                    Some(Rdd {
                        id,
                        partitions: *partitions,
                        op: RddOp::Shuffled { parents, map_partitions, aggregation: aggregation.clone() },
                        persist: n.persist,
                        label: n.label.clone(),
                    })
                }
            }
        }
    };
    let out = made.map(|r| {
        let id = r.id;
        lineage.rdds.insert(id, r);
        id
    });
    memo.rdds.insert((node, time), out);
    out
}

/// The RDD a stateful node made at `time` (None before the first batch).
/// Missing when it should exist means the state is lost: an error, never a
/// silent restart from empty state.
fn previous(
    g: &Graph,
    zero: i64,
    node: NodeId,
    time: i64,
    memo: &mut Generated,
    lineage: &mut Lineage,
) -> Result<Option<RddId>, ()> {
    if time <= zero {
        return Ok(None);
    }
    match rdd_at(g, zero, node, time, memo, lineage) {
        Some(r) => Ok(Some(r)),
        None => {
            tracing::error!("the state of {} at batch {time} ms is lost; its batch cannot run", g.node(node).label);
            Err(())
        }
    }
}

/// Registers an RDD made outside the graph walk (an input RDD of a recorded
/// batch, a state RDD read from a data checkpoint) as node `node`'s RDD at
/// `rdd.id.time`.
pub fn register(memo: &mut Generated, lineage: &mut Lineage, node: NodeId, rdd: Rdd) {
    memo.rdds.insert((node, rdd.id.time), Some(rdd.id));
    lineage.rdds.insert(rdd.id, rdd);
}

fn union_rdd(id: RddId, parents: Vec<RddId>, n: &Node, lineage: &Lineage) -> Option<Rdd> {
    if parents.is_empty() {
        return None;
    }
    // Saturating: partitions recorded by an older run are not bounded by this graph.
    let partitions = parents.iter().filter_map(|p| lineage.get(*p)).fold(0u32, |a, r| a.saturating_add(r.partitions));
    Some(Rdd { id, partitions, op: RddOp::Union { parents }, persist: n.persist, label: n.label.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::OutputSpec;

    /// A graph with one source (1 s batches) and `ops` applied one after the
    /// other; its output is the last one.
    fn chain(ops: Vec<NodeOp>) -> Result<Graph, GraphError> {
        let mut g = Graph::new(1000, 2);
        g.sources.push(SourceSpec::Queue { batches: vec![] });
        let mut last = g.add(vec![], NodeOp::Source { source: 0 }, "source".into())?;
        for (i, op) in ops.into_iter().enumerate() {
            last = g.add(vec![last], op, format!("op{i}"))?;
        }
        g.outputs.push(Output { node: last, spec: OutputSpec::Print { num: 10 } });
        Ok(g)
    }

    fn window(length_ms: i64, slide_ms: i64) -> NodeOp {
        NodeOp::Window { length_ms, slide_ms }
    }

    /// The batch times of the input RDDs `id` reads.
    fn inputs_of(lineage: &Lineage, id: RddId) -> Vec<i64> {
        let Some(r) = lineage.get(id) else { return vec![] };
        match &r.op {
            RddOp::Input { .. } => vec![id.time],
            op => op.narrow_parents().into_iter().flat_map(|p| inputs_of(lineage, p)).collect(),
        }
    }

    /// For each batch after `zero` up to `until`: the batch times the
    /// output's RDD covers, or None when the output makes no RDD then.
    fn covered(g: &Graph, zero: i64, until: i64) -> Vec<(i64, Option<Vec<i64>>)> {
        let (mut memo, mut lineage) = (Generated::default(), Lineage::default());
        let inputs = BTreeMap::from([(0u32, 1u32)]);
        let mut out = Vec::new();
        let mut t = zero + g.batch_interval_ms;
        while t <= until {
            let rdds = generate(g, zero, t, &inputs, &mut memo, &mut lineage);
            out.push((t, rdds[0].map(|r| inputs_of(&lineage, r))));
            t += g.batch_interval_ms;
        }
        out
    }

    #[test]
    fn a_window_covers_the_last_length_of_batches_at_every_slide() {
        let g = chain(vec![window(3000, 2000)]).unwrap();
        assert_eq!(
            covered(&g, 0, 6000),
            vec![
                (1000, None),
                // Early windows are partial: nothing before the first batch.
                (2000, Some(vec![1000, 2000])),
                (3000, None),
                (4000, Some(vec![2000, 3000, 4000])),
                (5000, None),
                (6000, Some(vec![4000, 5000, 6000])),
            ]
        );
        // Slides count from the zero time (a job started at 10 s).
        assert_eq!(
            covered(&g, 10_000, 14_000),
            vec![
                (11_000, None),
                (12_000, Some(vec![11_000, 12_000])),
                (13_000, None),
                (14_000, Some(vec![12_000, 13_000, 14_000]))
            ]
        );
        // A window of one batch is every batch alone.
        let g = chain(vec![window(1000, 1000)]).unwrap();
        assert_eq!(covered(&g, 0, 2000), vec![(1000, Some(vec![1000])), (2000, Some(vec![2000]))]);
        // A tumbling window (length = slide) covers each batch once.
        let g = chain(vec![window(2000, 2000)]).unwrap();
        assert_eq!(covered(&g, 0, 4000)[3], (4000, Some(vec![3000, 4000])));
    }

    #[test]
    fn a_window_of_a_window_reads_its_parents_rdds_at_the_parents_slide() {
        let g = chain(vec![window(2000, 2000), window(4000, 4000)]).unwrap();
        let c = covered(&g, 0, 8000);
        assert_eq!(c[3], (4000, Some(vec![1000, 2000, 3000, 4000])));
        assert_eq!(c[7], (8000, Some(vec![5000, 6000, 7000, 8000])));
        assert!(c.iter().filter(|(t, _)| t % 4000 != 0).all(|(_, r)| r.is_none()));
    }

    #[test]
    fn lengths_and_slides_must_be_positive_multiples_of_the_parents_slide() {
        for (length, slide, what) in [
            (1500, 1000, "window length (1500 ms)"),
            (3000, 1500, "slide (1500 ms)"),
            (3000, 0, "slide (0 ms)"),
            (-1000, 1000, "window length (-1000 ms)"),
        ] {
            let Err(e) = chain(vec![window(length, slide)]) else { panic!("window({length}, {slide}) accepted") };
            assert!(e.0.contains(what) && e.0.contains("parent's slide duration (1000 ms)"), "{e}");
        }
        // The parent's slide, not the batch interval: 3 s is not a multiple of 2 s.
        let Err(e) = chain(vec![window(2000, 2000), window(3000, 2000)]) else { panic!("accepted") };
        assert!(
            e.0.contains(
                "window length (3000 ms) must be a positive multiple of the parent's slide duration (2000 ms)"
            ),
            "{e}"
        );
        let Err(e) = chain(vec![window(2000, 2000), window(4000, 1000)]) else { panic!("accepted") };
        assert!(e.0.contains("slide (1000 ms)"), "{e}");
        // Streams of different slides cannot be combined.
        let mut g = chain(vec![window(2000, 2000)]).unwrap();
        let Err(e) = g.add(vec![0, 1], NodeOp::Union, "union".into()) else { panic!("accepted") };
        assert!(e.0.contains("different slide durations"), "{e}");
    }

    #[test]
    fn windows_make_their_parents_remember_their_length() {
        let g = chain(vec![]).unwrap();
        assert_eq!(g.remember_ms(), 2000, "no window: the batch and one interval");
        let g = chain(vec![window(3000, 1000)]).unwrap();
        assert!(g.nodes[0].persist, "a window's parent is kept as blocks");
        assert_eq!(g.nodes[0].remember_ms, 3000);
        assert_eq!((g.nodes[1].slide_ms, g.nodes[1].remember_ms), (1000, 1000));
        assert_eq!(g.remember_ms(), 4000);
        // Along a chain, lookbacks add up: 3 s, then 4 s of the 2 s-slide window.
        let g = chain(vec![window(3000, 1000), window(4000, 2000)]).unwrap();
        assert_eq!(g.nodes[1].slide_ms, 1000);
        assert_eq!(g.nodes[2].slide_ms, 2000);
        assert_eq!(g.remember_ms(), 8000);
        // A window with an inverse reads the batches leaving it: length + slide.
        let inv = NodeOp::InvWindow {
            length_ms: 4000,
            slide_ms: 2000,
            reduce: Reducer::SumI64,
            inverse: Reducer::SubI64,
            filter: None,
        };
        let g = chain(vec![inv]).unwrap();
        assert_eq!(g.nodes[0].remember_ms, 6000);
        assert_eq!(g.remember_ms(), 7000);
        assert_eq!(g.nodes[1].checkpoint_ms, Some(10_000), "the smallest multiple of 2 s >= 10 s");
        assert_eq!(default_checkpoint_interval(3000), 12_000);
    }

    #[test]
    fn the_graph_refuses_what_is_out_of_bounds() {
        let shuffle = |partitions| NodeOp::Shuffle { aggregation: Aggregation::GroupByKey, partitions };
        let Err(e) = chain(vec![shuffle(u32::MAX)]) else { panic!("accepted") };
        assert!(e.0.contains("the number of partitions (4294967295) must be between 1 and 4096"), "{e}");
        assert!(chain(vec![shuffle(4096)]).is_ok());
        let mut g = Graph::new(1000, 2);
        assert!(g.set_parallelism(0).is_err() && g.set_parallelism(4097).is_err() && g.set_parallelism(4096).is_ok());
        assert!(Graph::try_new(limits::MAX_DURATION_MS + 1, 2).is_err());
        assert!(Graph::try_new(0, 2).is_err());
        assert!(Graph::try_new(1000, 1 << 20).is_err());
        // Depth: a source and 999 operations, not 1000.
        assert!(chain(vec![NodeOp::Narrow(NarrowOp::Glom); 999]).is_ok());
        let Err(e) = chain(vec![NodeOp::Narrow(NarrowOp::Glom); 1000]) else { panic!("accepted") };
        assert!(e.0.contains("op999: the stream is 1001 operations deep, over the maximum of 1000"), "{e}");
        // Windows: at most a year, at most MAX_WINDOW_BATCHES parent batches.
        let Err(e) = chain(vec![window(i64::MAX / 1000 * 1000, 1000)]) else { panic!("accepted") };
        assert!(e.0.contains("longer than the maximum of 1 year"), "{e}");
        let Err(e) = chain(vec![window(100_001_000, 1000)]) else { panic!("accepted") };
        assert!(e.0.contains("spans 100001 batches"), "{e}");
        // Unions that double their partitions stop at MAX_RDD_PARTITIONS.
        let mut g = chain(vec![shuffle(4096)]).unwrap();
        let mut last = 1;
        let refused = (0..20).find_map(|i| match g.add(vec![last, last], NodeOp::Union, format!("u{i}")) {
            Ok(id) => {
                last = id;
                None
            }
            Err(e) => Some(e),
        });
        assert!(refused.is_some_and(|e| e.0.contains("over the maximum of 1048576")));
        // Checkpoint intervals: a multiple of the slide, at most a year.
        let mut g = chain(vec![NodeOp::State { update: udf(), initial: None }]).unwrap();
        assert!(g.set_checkpoint_interval(1, 2000).is_ok());
        assert!(g.set_checkpoint_interval(1, limits::MAX_DURATION_MS + 1000).is_err());
        assert!(g.set_checkpoint_interval(0, 2000).unwrap_err().0.contains("stateful streams only"));
    }

    fn udf() -> UdfRef {
        UdfRef {
            module: crate::udf::ModuleHash([0; 32]),
            module_name: "m".into(),
            function: "f".into(),
            kind: crate::udf::UdfKind::Update,
            params: None,
        }
    }
}
