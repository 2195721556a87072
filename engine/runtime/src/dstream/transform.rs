//! `transform`: Spark's `transform(rdd => ...)` as a plan. A UDF cannot
//! build RDDs and a Rust closure cannot run on a remote executor's data, so
//! the closure gets a [`BatchRdd`] — a builder that records the operations
//! that act on one batch's RDD alone — and its result is a plan like any
//! other: the same graph as chaining those operations on the stream.
//!
//! ```no_run
//! # fn main() -> Result<(), weir::EngineError> {
//! # use std::time::Duration;
//! # use weir::dstream::StreamingContext;
//! # let ssc = StreamingContext::new(Duration::from_secs(1))?;
//! # let pairs = ssc.queue_stream(vec![]);
//! let top10 = pairs.transform(|rdd| rdd.sort_by_key(false)?.take(10))?;
//! # Ok(()) }
//! ```

use super::{DStream, StreamingContext, Udf, R};
use crate::EngineError;

/// Each batch's RDD inside [`DStream::transform`]: its methods are the
/// per-batch operations (no windows, no state), recorded into the plan.
#[derive(Clone)]
pub struct BatchRdd(DStream);

type B = Result<BatchRdd, EngineError>;

/// Methods of `BatchRdd` that forward to the `DStream` method of the same name.
macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self, $($arg: $ty),*) -> B {
                self.0.$name($($arg),*).map(BatchRdd)
            }
        )*
    };
}

/// Methods that combine two RDDs of the batch.
macro_rules! forward2 {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self, other: &BatchRdd) -> B {
                self.0.$name(&other.0).map(BatchRdd)
            }
        )*
    };
}

impl BatchRdd {
    pub(super) fn of(s: DStream) -> BatchRdd {
        BatchRdd(s)
    }

    pub(super) fn stream(&self) -> &DStream {
        &self.0
    }

    forward! {
        /// See [`DStream::map`].
        map(f: &Udf);
        /// See [`DStream::flat_map`].
        flat_map(f: &Udf);
        /// See [`DStream::filter`].
        filter(f: &Udf);
        /// See [`DStream::map_partitions`].
        map_partitions(f: &Udf);
        /// See [`DStream::key_by`].
        key_by(f: &Udf);
        /// See [`DStream::map_values`].
        map_values(f: &Udf);
        /// See [`DStream::flat_map_values`].
        flat_map_values(f: &Udf);
        /// See [`DStream::glom`].
        glom();
        /// See [`DStream::repartition`].
        repartition(n: u32);
        /// See [`DStream::coalesce`].
        coalesce(n: u32);
        /// See [`DStream::count`].
        count();
        /// See [`DStream::reduce`].
        reduce(f: &Udf);
        /// See [`DStream::count_by_value`].
        count_by_value();
        /// See [`DStream::reduce_by_key`].
        reduce_by_key(f: &Udf);
        /// See [`DStream::reduce_by_key_into`].
        reduce_by_key_into(f: &Udf, partitions: Option<u32>);
        /// See [`DStream::group_by_key`].
        group_by_key();
        /// See [`DStream::sort_by_key`].
        sort_by_key(ascending: bool);
        /// See [`DStream::sort_by`].
        sort_by(f: &Udf, ascending: bool);
        /// See [`DStream::sort_by_key_into`].
        sort_by_key_into(ascending: bool, partitions: Option<u32>);
        /// See [`DStream::sort_by_into`].
        sort_by_into(f: &Udf, ascending: bool, partitions: Option<u32>);
        /// See [`DStream::distinct`].
        distinct();
        /// See [`DStream::distinct_into`].
        distinct_into(partitions: Option<u32>);
        /// See [`DStream::sample`].
        sample(fraction: f64, seed: u64);
        /// See [`DStream::take`].
        take(n: u64);
        /// See [`DStream::top`].
        top(n: u64);
        /// See [`DStream::top_by`].
        top_by(n: u64, f: &Udf);
        /// See [`DStream::zip_with_index`].
        zip_with_index();
    }
    forward2! {
        /// See [`DStream::union`].
        union;
        /// See [`DStream::cogroup`].
        cogroup;
        /// See [`DStream::join`].
        join;
        /// See [`DStream::left_outer_join`].
        left_outer_join;
        /// See [`DStream::right_outer_join`].
        right_outer_join;
        /// See [`DStream::full_outer_join`].
        full_outer_join;
        /// See [`DStream::subtract`].
        subtract;
        /// See [`DStream::intersection`].
        intersection;
        /// See [`DStream::cartesian`].
        cartesian;
    }
}

impl DStream {
    /// Spark's `transform`: `f` builds, from each batch's RDD, the RDD the
    /// new stream has for that batch, out of per-batch operations
    /// ([`BatchRdd`]). The result is a plan, the same as chaining them here.
    pub fn transform(&self, f: impl FnOnce(BatchRdd) -> B) -> R {
        f(BatchRdd(self.clone())).map(|b| b.0)
    }

    /// Spark's `transformWith`: as [`DStream::transform`], with `other`'s
    /// RDD of the same batch as the second argument.
    pub fn transform_with(&self, other: &DStream, f: impl FnOnce(BatchRdd, BatchRdd) -> B) -> R {
        self.same_context(&[other])?;
        f(BatchRdd(self.clone()), BatchRdd(other.clone())).map(|b| b.0)
    }
}

impl StreamingContext {
    /// Spark's context-level `transform`: `f` builds, from the batch's RDD
    /// of each of `streams` (in that order), the RDD the new stream has for
    /// that batch, out of per-batch operations ([`BatchRdd`]). Job files
    /// write it as a transform expression that names the other streams
    /// (`a.transform("rdd.union(b).subtract(c)")`).
    pub fn transform(&self, streams: &[&DStream], f: impl FnOnce(Vec<BatchRdd>) -> B) -> R {
        let Some(first) = streams.first() else {
            return Err(EngineError::Graph("transform over several streams needs at least one stream".into()));
        };
        if !std::rc::Rc::ptr_eq(&self.inner, &first.inner) {
            return Err(EngineError::Graph(
                "transform: the streams belong to another StreamingContext (each context is its own job)".into(),
            ));
        }
        first.same_context(&streams[1..])?;
        f(streams.iter().map(|s| BatchRdd((*s).clone())).collect()).map(|b| b.0)
    }
}
