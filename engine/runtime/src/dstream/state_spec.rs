//! `StateSpec`: how `map_with_state` runs (Spark's `StateSpec`): the mapping
//! function, an optional timeout and an optional initial state. The initial
//! state is data of the job (it goes into the graph, so it is part of the
//! job's identity), checked when the spec is used: `(key, state)` pairs with
//! a non-null state, each key once.

use std::time::Duration;

use weir_codec::Value;

use super::Udf;
use crate::EngineError;

/// Spark's `StateSpec.function(f).timeout(d).initialState(pairs)`.
#[derive(Clone, Debug)]
pub struct StateSpec {
    pub(super) f: Udf,
    pub(super) timeout: Option<Duration>,
    pub(super) initial: Option<Vec<Value>>,
}

impl StateSpec {
    /// A spec calling `f` (kind `map_with_state`), without timeout or
    /// initial state.
    pub fn function(f: &Udf) -> Self {
        StateSpec { f: f.clone(), timeout: None, initial: None }
    }

    /// Keys idle for more than `d` time out (on checkpointed batches, as in
    /// Spark).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// The state before the first batch: `(key, state)` pairs (Spark's
    /// `initialState`), last updated at the first batch.
    pub fn initial_state(mut self, pairs: Vec<Value>) -> Self {
        self.initial = Some(pairs);
        self
    }

    /// The initial state, encoded, after checking its shape; `what` names
    /// the stream in errors.
    pub(super) fn encoded_initial(&self, what: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(pairs) = &self.initial else { return Ok(None) };
        let mut seen = std::collections::HashSet::new();
        for (i, p) in pairs.iter().enumerate() {
            let bad = |why: &str| EngineError::Graph(format!("{what}: initial state record {} ({p}) {why}", i + 1));
            match p {
                Value::Tuple(xs) if xs.len() == 2 => {
                    if xs[1] == Value::Null {
                        return Err(bad("has a null state (null means no state)"));
                    }
                    if !seen.insert(xs[0].encode()) {
                        return Err(bad("repeats a key given before"));
                    }
                }
                _ => return Err(bad("is not a (key, state) pair")),
            }
        }
        Ok(Some(Value::encode_batch(pairs)))
    }
}
