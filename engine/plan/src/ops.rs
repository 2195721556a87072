//! The one list of DStream operations a job file can name: for each, its
//! name as written in job files, its parameters (UDF kinds, durations, other
//! streams, numbers), whether it is stateful, and a one-line description.
//!
//! The job-file parser (`weir::job`) dispatches through [`OPERATIONS`]: it
//! checks arity and argument kinds with [`select`] and takes the names it
//! offers in errors from [`names`]. `docs/jobs.md`'s operation tables are
//! compared to this list by a test, so the list, the parser and the docs
//! cannot drift. An operation may have several forms under one name (a
//! window with or without an inverse function): one entry per form.

use std::fmt;

use crate::udf::UdfKind;

/// Which operation a form is: the runtime maps each to a `DStream` method
/// with an exhaustive `match`, so a new entry cannot be forgotten there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Map,
    FlatMap,
    Filter,
    MapPartitions,
    KeyBy,
    MapValues,
    FlatMapValues,
    Glom,
    Repartition,
    Union,
    Count,
    Reduce,
    CountByValue,
    ReduceByKey,
    GroupByKey,
    Cogroup,
    Join,
    LeftOuterJoin,
    RightOuterJoin,
    FullOuterJoin,
    Window,
    ReduceByWindow,
    CountByWindow,
    ReduceByKeyAndWindow,
    GroupByKeyAndWindow,
    CountByValueAndWindow,
    UpdateStateByKey,
    ReduceByKeyAndWindowInv,
    ReduceByWindowInv,
    MapWithState,
    StateSnapshots,
    Checkpoint,
    SortByKey,
    SortBy,
    Distinct,
    Subtract,
    Intersection,
    Sample,
    Take,
    Top,
    ZipWithIndex,
    Cartesian,
    Coalesce,
    Transform,
    TransformWith,
}

/// What an argument must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A function written `module.function`, exported with this kind.
    Udf(UdfKind),
    /// A duration: `10s`, `500ms`, or a bare number of ms.
    Duration,
    /// The name of another source or stream.
    Stream,
    /// A number of partitions: a positive integer.
    Count,
    /// A number of records: 0 to [`crate::limits::MAX_TAKE`].
    Records,
    /// A non-negative integer (a seed).
    Seed,
    /// A number from 0 to 1, such as `0.25`.
    Fraction,
    /// `true` or `false`.
    Bool,
    /// An RDD expression in double quotes: `"rdd.sort_by_key().take(10)"`.
    Expr,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::Udf(k) => write!(f, "a function of kind {k}, written module.function"),
            ParamKind::Duration => f.write_str("a duration such as 10s"),
            ParamKind::Stream => f.write_str("a stream name"),
            ParamKind::Count => f.write_str("a positive integer"),
            ParamKind::Records => write!(f, "a number of records (0 to {})", crate::limits::MAX_TAKE),
            ParamKind::Seed => f.write_str("a non-negative integer"),
            ParamKind::Fraction => f.write_str("a number from 0 to 1 such as 0.25"),
            ParamKind::Bool => f.write_str("true or false"),
            ParamKind::Expr => f.write_str("an RDD expression in double quotes such as \"rdd.sort_by_key().take(10)\""),
        }
    }
}

/// One parameter of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// Its name in signatures (`f`, `len`, `slide`, ...).
    pub name: &'static str,
    pub kind: ParamKind,
    /// Optional parameters may be left out; later ones may still be given.
    pub optional: bool,
}

/// One form of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSpec {
    pub op: Op,
    /// As written in job files.
    pub name: &'static str,
    pub params: &'static [Param],
    /// Its RDD depends on its own previous RDD: it needs a checkpoint directory.
    pub stateful: bool,
    /// What it produces (Markdown, as in `docs/jobs.md`).
    pub summary: &'static str,
}

impl OpSpec {
    /// Whether it may appear in a `transform` expression: it acts on each
    /// batch's RDD alone (not a window, not stateful, not a transform).
    pub fn per_batch(&self) -> bool {
        !self.stateful
            && !matches!(
                self.op,
                Op::Window
                    | Op::ReduceByWindow
                    | Op::CountByWindow
                    | Op::ReduceByKeyAndWindow
                    | Op::GroupByKeyAndWindow
                    | Op::CountByValueAndWindow
                    | Op::Transform
                    | Op::TransformWith
            )
    }

    /// How it is written in the docs: `reduce_by_key(f[, n])`.
    pub fn signature(&self) -> String {
        let mut s = format!("{}(", self.name);
        for (i, p) in self.params.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            if p.optional {
                s.push_str(&format!("[{sep}{}]", p.name));
            } else {
                s.push_str(&format!("{sep}{}", p.name));
            }
        }
        s.push(')');
        s
    }

    /// The fewest and most arguments it takes.
    pub fn arity(&self) -> (usize, usize) {
        (self.params.iter().filter(|p| !p.optional).count(), self.params.len())
    }

    fn kind_error(&self, arg: usize, p: &Param) -> ArgsError {
        ArgsError::Kind { signature: self.signature(), position: arg + 1, param: p.name, expected: p.kind }
    }

    /// Matches arguments to parameters: for each parameter, the index of the
    /// argument given for it (None: an optional one left out). Arguments are
    /// taken in order; an optional parameter the next argument does not fit
    /// is skipped, so `(f, inv, len, filter)` leaves out `slide`.
    pub fn match_args(&self, args: &[ArgShape]) -> Result<Vec<Option<usize>>, ArgsError> {
        let (lo, hi) = self.arity();
        if args.len() < lo || args.len() > hi {
            return Err(ArgsError::Arity { signature: self.signature(), min: lo, max: hi, got: args.len() });
        }
        let mut slots = Vec::with_capacity(self.params.len());
        let mut next = 0;
        // The first optional parameter left out since the last argument
        // placed: what a left-over argument should have been.
        let mut skipped: Option<&Param> = None;
        for p in self.params {
            match args.get(next) {
                Some(a) if a.fits(p.kind) => {
                    slots.push(Some(next));
                    next += 1;
                    skipped = None;
                }
                _ if p.optional => {
                    slots.push(None);
                    skipped = skipped.or(Some(p));
                }
                _ => return Err(self.kind_error(next, p)),
            }
        }
        if next < args.len() {
            // Reported against what it should have been, or failing that
            // against the last parameter (all others were placed before it).
            if let Some(p) = skipped.or(self.params.last()) {
                return Err(self.kind_error(next, p));
            }
        }
        Ok(slots)
    }
}

/// The shape of an argument as the parser read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgShape {
    /// `module.function`.
    Function,
    /// A number, with a unit (`10s`) or without (`4`).
    Number { unit: bool },
    /// A bare name.
    Name,
    /// A number with a decimal point (`0.25`).
    Decimal,
    /// `true` or `false` (so never a stream's name as an argument).
    Bool,
    /// Text in double quotes.
    Text,
}

impl ArgShape {
    /// Whether an argument of this shape can be a parameter of `kind`.
    pub fn fits(self, kind: ParamKind) -> bool {
        matches!(
            (self, kind),
            (ArgShape::Function, ParamKind::Udf(_))
                | (ArgShape::Number { .. }, ParamKind::Duration)
                | (ArgShape::Number { unit: false }, ParamKind::Count)
                | (ArgShape::Number { unit: false }, ParamKind::Records)
                | (ArgShape::Number { unit: false }, ParamKind::Seed)
                | (ArgShape::Number { unit: false } | ArgShape::Decimal, ParamKind::Fraction)
                | (ArgShape::Bool, ParamKind::Bool)
                | (ArgShape::Text, ParamKind::Expr)
                | (ArgShape::Name, ParamKind::Stream)
        )
    }
}

/// Why an operation's arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    #[error("unknown operation {name:?} (valid: {})", names().join(", "))]
    Unknown { name: String },
    #[error("takes {} argument(s), got {got}: {signature}", if min == max { min.to_string() } else { format!("{min} to {max}") })]
    Arity { signature: String, min: usize, max: usize, got: usize },
    #[error("argument {position} ({param}) must be {expected}: {signature}")]
    Kind { signature: String, position: usize, param: &'static str, expected: ParamKind },
    #[error("the arguments match none of its forms: {}", forms.join(", "))]
    NoForm { forms: Vec<String> },
}

/// The form of operation `name` that `args` fit, and which argument goes to
/// which parameter (see [`OpSpec::match_args`]).
pub fn select(name: &str, args: &[ArgShape]) -> Result<(&'static OpSpec, Vec<Option<usize>>), ArgsError> {
    let forms: Vec<&'static OpSpec> = forms(name).collect();
    let mut first_err = None;
    for f in &forms {
        match f.match_args(args) {
            Ok(slots) => return Ok((f, slots)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (forms.len(), first_err) {
        (0, _) | (_, None) => Err(ArgsError::Unknown { name: name.to_string() }),
        (1, Some(e)) => Err(e),
        _ => Err(ArgsError::NoForm { forms: forms.iter().map(|f| f.signature()).collect() }),
    }
}

/// The forms of operation `name`, in the list's order.
pub fn forms(name: &str) -> impl Iterator<Item = &'static OpSpec> + '_ {
    OPERATIONS.iter().filter(move |s| s.name == name)
}

/// Every operation name, sorted, once each.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = OPERATIONS.iter().map(|s| s.name).collect();
    v.sort_unstable();
    v.dedup();
    v
}

const fn req(name: &'static str, kind: ParamKind) -> Param {
    Param { name, kind, optional: false }
}
const fn opt(name: &'static str, kind: ParamKind) -> Param {
    Param { name, kind, optional: true }
}
const fn udf(name: &'static str, kind: UdfKind) -> Param {
    req(name, ParamKind::Udf(kind))
}
const fn op(op: Op, name: &'static str, params: &'static [Param], summary: &'static str) -> OpSpec {
    OpSpec { op, name, params, stateful: false, summary }
}
const fn stateful(op: Op, name: &'static str, params: &'static [Param], summary: &'static str) -> OpSpec {
    OpSpec { op, name, params, stateful: true, summary }
}

const LEN: Param = req("len", ParamKind::Duration);
const SLIDE: Param = opt("slide", ParamKind::Duration);
const OTHER: Param = req("other", ParamKind::Stream);

/// Every operation, in the order `docs/jobs.md` lists them.
pub static OPERATIONS: &[OpSpec] = &[
    op(Op::Map, "map", &[udf("f", UdfKind::Map)], "`f(x)` for each record `x` (`f` of kind `map`)"),
    op(Op::FlatMap, "flat_map", &[udf("f", UdfKind::FlatMap)], "the records `f(x)` returns, for each record `x` (`f` of kind `flat_map`)"),
    op(Op::Filter, "filter", &[udf("f", UdfKind::Filter)], "the records for which `f` (kind `filter`) returns true"),
    op(Op::MapPartitions, "map_partitions", &[udf("f", UdfKind::MapPartitions)], "the records `f` (kind `map_partitions`) returns for all the records of a partition, per partition"),
    op(Op::KeyBy, "key_by", &[udf("f", UdfKind::KeyBy)], "`(f(x), x)` (`f` of kind `key_by`)"),
    op(Op::MapValues, "map_values", &[udf("f", UdfKind::Map)], "on pairs, `(k, f(v))` (`f` of kind `map`)"),
    op(Op::FlatMapValues, "flat_map_values", &[udf("f", UdfKind::FlatMap)], "on pairs, `(k, w)` for each `w` of `f(v)` (`f` of kind `flat_map`)"),
    op(Op::Glom, "glom", &[], "each partition as one list"),
    op(Op::Repartition, "repartition", &[req("n", ParamKind::Count)], "`n` partitions, records dealt round-robin"),
    op(Op::Union, "union", &[OTHER], "both streams' records"),
    op(Op::Count, "count", &[], "one record: the number of records (`0` for an empty batch)"),
    op(Op::Reduce, "reduce", &[udf("f", UdfKind::Reduce)], "one record: the fold of all records (nothing for an empty batch)"),
    op(Op::CountByValue, "count_by_value", &[], "`(x, count)`"),
    op(Op::ReduceByKey, "reduce_by_key", &[udf("f", UdfKind::Reduce), opt("n", ParamKind::Count)], "`(k, fold of its values)`; combined on the map side; into `n` partitions (default: `parallelism`)"),
    op(Op::GroupByKey, "group_by_key", &[], "`(k, [values])`"),
    op(Op::Cogroup, "cogroup", &[OTHER], "`(k, ([values here], [values there]))`"),
    op(Op::Join, "join", &[OTHER], "`(k, (v, w))` for every pair"),
    op(Op::LeftOuterJoin, "left_outer_join", &[OTHER], "as `join`; a key only here gives `(k, (v, null))`"),
    op(Op::RightOuterJoin, "right_outer_join", &[OTHER], "as `join`; a key only there gives `(k, (null, w))`"),
    op(Op::FullOuterJoin, "full_outer_join", &[OTHER], "as `join`; a missing side is `null`"),
    op(Op::Window, "window", &[LEN, SLIDE], "the union of the last `len` of batches, every `slide` (both multiples of the stream's slide, which is the default `slide`; early windows are partial)"),
    op(Op::ReduceByWindow, "reduce_by_window", &[udf("f", UdfKind::Reduce), LEN, SLIDE], "`reduce` over the window"),
    op(Op::ReduceByKeyAndWindow, "reduce_by_key_and_window", &[udf("f", UdfKind::Reduce), LEN, SLIDE], "`reduce_by_key` over the window"),
    op(Op::GroupByKeyAndWindow, "group_by_key_and_window", &[LEN, SLIDE], "`group_by_key` over the window"),
    op(Op::CountByValueAndWindow, "count_by_value_and_window", &[LEN, SLIDE], "`count_by_value` over the window"),
    op(Op::SortByKey, "sort_by_key", &[opt("ascending", ParamKind::Bool), opt("n", ParamKind::Count)], "on pairs, sorted by key (ascending unless `false`; keys in the value order, see Ordering), into `n` partitions by range (default: `parallelism`): the partitions in order are the sorted batch"),
    op(Op::SortBy, "sort_by", &[udf("f", UdfKind::KeyBy), opt("ascending", ParamKind::Bool), opt("n", ParamKind::Count)], "the records sorted by `f(x)` (`f` of kind `key_by`; as `sort_by_key`), into `n` partitions by range (default: `parallelism`)"),
    op(Op::Distinct, "distinct", &[opt("n", ParamKind::Count)], "each distinct record once (a shuffle into `n` partitions, default `parallelism`)"),
    op(Op::Subtract, "subtract", &[OTHER], "the records not in `other` (duplicates kept; a shuffle)"),
    op(Op::Intersection, "intersection", &[OTHER], "the records in both streams, each once (a shuffle)"),
    op(Op::Sample, "sample", &[req("fraction", ParamKind::Fraction), req("seed", ParamKind::Seed)], "each record with probability `fraction` (without replacement), decided by a hash of `seed`, the batch time, the record and its position: the same every run"),
    op(Op::Take, "take", &[req("n", ParamKind::Records)], "the first `n` records (partitions in order), in one partition"),
    op(Op::Top, "top", &[req("n", ParamKind::Records), opt("f", ParamKind::Udf(UdfKind::KeyBy))], "the `n` greatest records in the value order, greatest first, in one partition; with `f` (kind `key_by`, as `sort_by`'s), the `n` records whose `f(x)` is greatest, records with equal `f(x)` in their own value order, greatest first (Spark's `top(n)(ordering)`; the tie rule makes the result independent of partitioning)"),
    op(Op::ZipWithIndex, "zip_with_index", &[], "`(x, i)`, `i` the record's position in the batch from 0, in one partition"),
    op(Op::Cartesian, "cartesian", &[OTHER], "`(x, y)` for every record `x` here and `y` there"),
    op(Op::Coalesce, "coalesce", &[req("n", ParamKind::Count)], "at most `n` partitions, neighbours merged in order (no shuffle)"),
    op(Op::Transform, "transform", &[req("expr", ParamKind::Expr)], "`expr` applied to each batch's RDD: `\"rdd.<operation>(args)...\"` with the operations that act per batch (see transform)"),
    op(Op::TransformWith, "transform_with", &[OTHER, req("expr", ParamKind::Expr)], "as `transform`, where `other` in `expr` is the other stream's RDD of the batch: `\"rdd.join(other)\"`"),
    stateful(Op::UpdateStateByKey, "update_state_by_key", &[udf("f", UdfKind::Update)], "`(k, state)` for every key with state: `f` (kind `update`) gets each key's values of the batch (`[]` if none) and its previous state (null if none) — for every key, every batch — and returns the new state, or null to remove the key"),
    stateful(Op::ReduceByKeyAndWindowInv, "reduce_by_key_and_window", &[udf("f", UdfKind::Reduce), udf("inv", UdfKind::Reduce), LEN, SLIDE, opt("filter", ParamKind::Udf(UdfKind::Filter))], "the window computed incrementally: previous window `f` entering batches, `inv` leaving batches (Spark's semantics: keys reaching zero stay unless `filter` — a `filter` function over `(k, v)` pairs — drops them)"),
    stateful(Op::ReduceByWindowInv, "reduce_by_window", &[udf("f", UdfKind::Reduce), udf("inv", UdfKind::Reduce), LEN, SLIDE], "`reduce_by_window` computed incrementally"),
    stateful(Op::CountByWindow, "count_by_window", &[LEN, SLIDE], "the number of records in the window, computed incrementally as Spark's `countByWindow`: nothing before the first record arrives, then the count every slide (`0` once every record has left the window)"),
    stateful(Op::MapWithState, "map_with_state", &[udf("f", UdfKind::MapWithState), opt("timeout", ParamKind::Duration)], "Spark's mapWithState, on pairs: `f` (kind `map_with_state`) is called for each value of a key, in order, with the key's state, and emits at most one record per call; a key idle for more than `timeout` (no timeout: never) gets one last call (timing out, no value) and its state is removed, on the batches whose state is checkpointed (Spark's rule; see below)"),
    stateful(Op::StateSnapshots, "state_snapshots", &[], "on a stream made by `map_with_state`: `(k, state)` of every key with state, each batch"),
    stateful(Op::Checkpoint, "checkpoint", &[req("interval", ParamKind::Duration)], "on a stateful stream (or one made by `map_with_state`, or its `state_snapshots()`: its state's): its data checkpoint interval (a multiple of its slide; default the smallest multiple ≥ 10 s, and 10 slides for `map_with_state`, as in Spark); the stream itself"),
];

#[cfg(test)]
mod tests {
    use super::*;

    const F: ArgShape = ArgShape::Function;
    const D: ArgShape = ArgShape::Number { unit: true };
    const N: ArgShape = ArgShape::Number { unit: false };
    const S: ArgShape = ArgShape::Name;

    fn pick(name: &str, args: &[ArgShape]) -> Result<(Op, Vec<Option<usize>>), ArgsError> {
        select(name, args).map(|(s, slots)| (s.op, slots))
    }

    #[test]
    fn signatures_are_written_as_in_the_docs() {
        let sig = |name: &str, op: Op| forms(name).find(|s| s.op == op).map(|s| s.signature());
        assert_eq!(sig("reduce_by_key", Op::ReduceByKey).as_deref(), Some("reduce_by_key(f[, n])"));
        assert_eq!(sig("glom", Op::Glom).as_deref(), Some("glom()"));
        assert_eq!(
            sig("reduce_by_key_and_window", Op::ReduceByKeyAndWindowInv).as_deref(),
            Some("reduce_by_key_and_window(f, inv, len[, slide][, filter])")
        );
    }

    #[test]
    fn forms_are_chosen_by_the_shape_of_the_arguments() {
        assert_eq!(pick("reduce_by_window", &[F, D]), Ok((Op::ReduceByWindow, vec![Some(0), Some(1), None])));
        assert_eq!(
            pick("reduce_by_window", &[F, F, D, D]),
            Ok((Op::ReduceByWindowInv, vec![Some(0), Some(1), Some(2), Some(3)]))
        );
        // The filter without a slide: slide left out, filter taken.
        assert_eq!(
            pick("reduce_by_key_and_window", &[F, F, D, F]),
            Ok((Op::ReduceByKeyAndWindowInv, vec![Some(0), Some(1), Some(2), None, Some(3)]))
        );
        // A bare number is a count where one is expected, and ms for a duration.
        assert_eq!(pick("reduce_by_key", &[F, N]), Ok((Op::ReduceByKey, vec![Some(0), Some(1)])));
        assert_eq!(pick("window", &[N]), Ok((Op::Window, vec![Some(0), None])));
        assert_eq!(pick("map_with_state", &[F, D]), Ok((Op::MapWithState, vec![Some(0), Some(1)])));
        assert_eq!(pick("state_snapshots", &[]), Ok((Op::StateSnapshots, vec![])));
    }

    #[test]
    fn bad_arguments_say_what_was_expected() {
        assert_eq!(
            pick("reduce_by_key", &[F, N, N]).map_err(|e| e.to_string()),
            Err("takes 1 to 2 argument(s), got 3: reduce_by_key(f[, n])".into())
        );
        assert_eq!(
            pick("reduce_by_key", &[F, D]).map_err(|e| e.to_string()),
            Err("argument 2 (n) must be a positive integer: reduce_by_key(f[, n])".into())
        );
        assert_eq!(
            pick("map", &[S]).map_err(|e| e.to_string()),
            Err("argument 1 (f) must be a function of kind map, written module.function: map(f)".into())
        );
        assert_eq!(
            pick("join", &[F]).map_err(|e| e.to_string()),
            Err("argument 1 (other) must be a stream name: join(other)".into())
        );
        let e = pick("reduce_by_window", &[F]).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err("the arguments match none of its forms: reduce_by_window(f, len[, slide]), reduce_by_window(f, inv, len[, slide])"
                .into())
        );
        assert!(matches!(pick("window", &[D, F]), Err(ArgsError::Kind { position: 2, .. })));
    }

    #[test]
    fn unknown_operations_list_the_valid_names() {
        let e = pick("reduce_by_kee", &[F]).map_err(|e| e.to_string());
        let Err(msg) = e else { panic!("accepted an unknown operation") };
        assert!(
            msg.starts_with(
                "unknown operation \"reduce_by_kee\" (valid: cartesian, checkpoint, coalesce, cogroup, count, "
            ),
            "{msg}"
        );
        for n in names() {
            assert!(msg.contains(n), "{n} missing from {msg}");
        }
    }

    #[test]
    fn the_list_is_well_formed() {
        // One form per (name, stateful) pair: forms of one name differ in
        // whether they keep state, which is how the docs tell them apart.
        for (i, a) in OPERATIONS.iter().enumerate() {
            for b in &OPERATIONS[i + 1..] {
                assert!(a.op != b.op, "{:?} listed twice", a.op);
                assert!(a.signature() != b.signature(), "{} listed twice", a.signature());
            }
            assert!(!a.summary.is_empty() && !a.summary.contains('\n'), "{}: one line", a.name);
        }
        // Two forms of one name must be told apart by their arguments: the
        // forms' required shapes differ somewhere.
        for n in names() {
            let fs: Vec<&OpSpec> = forms(n).collect();
            for (i, a) in fs.iter().enumerate() {
                for b in &fs[i + 1..] {
                    let shapes: Vec<ArgShape> = a
                        .params
                        .iter()
                        .filter(|p| !p.optional)
                        .map(|p| match p.kind {
                            ParamKind::Udf(_) => F,
                            ParamKind::Duration => D,
                            ParamKind::Count | ParamKind::Records | ParamKind::Seed => N,
                            ParamKind::Fraction => ArgShape::Decimal,
                            ParamKind::Bool => ArgShape::Bool,
                            ParamKind::Expr => ArgShape::Text,
                            ParamKind::Stream => S,
                        })
                        .collect();
                    assert!(b.match_args(&shapes).is_err(), "{} and {} are ambiguous", a.signature(), b.signature());
                }
            }
        }
    }
}
