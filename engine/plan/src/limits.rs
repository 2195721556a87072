//! The bounds a job must stay within (`docs/jobs.md`, "Limits"). They keep
//! every allocation sized by user input and every batch-time computation
//! (`i64` milliseconds) finite: a job outside them is refused when it is
//! built, with an error naming what is out of range, never run.

/// Most partitions a shuffle (`repartition(n)`, `reduce_by_key(f, n)`, the
/// job's `parallelism`) may ask for.
pub const MAX_PARTITIONS: u32 = 4096;

/// Most partitions one RDD may have: a union or a window adds up its
/// parents' partitions.
pub const MAX_RDD_PARTITIONS: u64 = 1 << 20;

/// Longest duration anywhere in a job (batch interval, window length and
/// slide, checkpoint interval, timeout): one year, in milliseconds. With
/// it and [`MAX_GRAPH_DEPTH`], sums of durations along a graph stay far
/// below `i64::MAX`.
pub const MAX_DURATION_MS: i64 = 365 * 24 * 3600 * 1000;

/// Most parent batches one window may span (its length over its parent's
/// slide): each is a parent RDD read by every window.
pub const MAX_WINDOW_BATCHES: i64 = 100_000;

/// Longest path from a source to a stream, in operations. RDDs are made
/// for a batch by walking the graph from the outputs, one stack frame set
/// per level; the bound keeps that walk far from the end of a thread's stack.
pub const MAX_GRAPH_DEPTH: usize = 1000;

/// Most streams (graph nodes) in one job; an operation makes one or two.
pub const MAX_NODES: usize = 10_000;

/// Most lines a `generator` source makes per batch.
pub const MAX_GENERATOR_LINES: u64 = 10_000_000;

/// Most words per line of a `generator` source.
pub const MAX_GENERATOR_WORDS_PER_LINE: u32 = 10_000;

/// Most words a `generator` source makes per batch (lines × words per line):
/// a batch is built in memory, about 8 bytes a word.
pub const MAX_GENERATOR_WORDS: u64 = 100_000_000;

/// Most records `take(n)` and `top(n)` may ask for: they gather into one
/// partition, in memory.
pub const MAX_TAKE: u64 = 1_000_000;

/// Most bytes one partition of a `cartesian` may make (pairs of both sides'
/// records): a partition is built in memory.
pub const MAX_CARTESIAN_BYTES: u64 = 1 << 30;

/// Default of [`CheckpointBounds::max_state_bytes`]: 1 GiB.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 1 << 30;
/// Default of [`CheckpointBounds::max_metadata_bytes`]: 64 MiB.
pub const DEFAULT_MAX_METADATA_BYTES: u64 = 64 << 20;
/// Default of [`CheckpointBounds::stall_timeout_ms`]: 15 s.
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 15_000;
/// Default of [`CheckpointBounds::max_list_pages`].
pub const DEFAULT_MAX_LIST_PAGES: u32 = 100;
/// Default of [`CheckpointBounds::max_list_keys`].
pub const DEFAULT_MAX_LIST_KEYS: u32 = 100_000;
/// The smallest file bound a job may set: a checkpoint file's frame alone
/// is 28 bytes, and a metadata checkpoint of the smallest job a few hundred.
pub const MIN_CHECKPOINT_FILE_BYTES: u64 = 1024;
/// The largest file bound a job may set (1 TiB): a file is read whole into
/// memory, so this is far past any machine, but keeps sums finite.
pub const MAX_CHECKPOINT_FILE_BYTES: u64 = 1 << 40;

/// What reading and writing a job's checkpoints may cost: the `[checkpoint]`
/// table of a job file (`docs/jobs.md`). Every length read from a checkpoint
/// file or an object store is held against these before anything is
/// allocated for it, and a file over its bound is not written (it could
/// not be read back). Travels with the lineage to executors, which read
/// data checkpoints under the same bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CheckpointBounds {
    /// The most a data checkpoint (`state/` file: every partition of one
    /// stateful stream at one time, framed) may hold.
    pub max_state_bytes: u64,
    /// The most a metadata checkpoint file may hold.
    pub max_metadata_bytes: u64,
    /// Object stores: the longest a response body may go without a byte.
    pub stall_timeout_ms: u64,
    /// Object stores: the most pages one listing may take.
    pub max_list_pages: u32,
    /// Object stores: the most keys one listing may return.
    pub max_list_keys: u32,
}

impl Default for CheckpointBounds {
    fn default() -> Self {
        CheckpointBounds {
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            stall_timeout_ms: DEFAULT_STALL_TIMEOUT_MS,
            max_list_pages: DEFAULT_MAX_LIST_PAGES,
            max_list_keys: DEFAULT_MAX_LIST_KEYS,
        }
    }
}

impl CheckpointBounds {
    /// The bound of the checkpoint file `name` (`metadata/...`, `state/...`)
    /// and the setting that sets it.
    pub fn max_file_bytes(&self, name: &str) -> (u64, &'static str) {
        if name.starts_with("metadata/") {
            (self.max_metadata_bytes, "max_metadata_bytes")
        } else {
            (self.max_state_bytes, "max_state_bytes")
        }
    }

    /// Checks every bound against its range; the error names the setting.
    pub fn check(&self) -> Result<(), String> {
        let file = |name: &str, v: u64| {
            if (MIN_CHECKPOINT_FILE_BYTES..=MAX_CHECKPOINT_FILE_BYTES).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "{name} ({v}) must be between {MIN_CHECKPOINT_FILE_BYTES} and {MAX_CHECKPOINT_FILE_BYTES} bytes"
                ))
            }
        };
        file("max_state_bytes", self.max_state_bytes)?;
        file("max_metadata_bytes", self.max_metadata_bytes)?;
        if !(1..=3_600_000).contains(&self.stall_timeout_ms) {
            return Err(format!("stall_timeout_ms ({}) must be between 1 and 3600000", self.stall_timeout_ms));
        }
        if !(1..=1_000_000).contains(&self.max_list_pages) {
            return Err(format!("max_list_pages ({}) must be between 1 and 1000000", self.max_list_pages));
        }
        if !(1..=100_000_000).contains(&self.max_list_keys) {
            return Err(format!("max_list_keys ({}) must be between 1 and 100000000", self.max_list_keys));
        }
        Ok(())
    }
}

/// Checks a duration in milliseconds against `1..=MAX_DURATION_MS`.
pub fn check_duration_ms(what: &str, ms: i64) -> Result<(), String> {
    if ms <= 0 {
        return Err(format!("{what} ({ms} ms) must be positive"));
    }
    if ms > MAX_DURATION_MS {
        return Err(format!("{what} ({ms} ms) is longer than the maximum of 1 year ({MAX_DURATION_MS} ms)"));
    }
    Ok(())
}

/// Checks a number of partitions against `1..=MAX_PARTITIONS`.
pub fn check_partitions(what: &str, n: u64) -> Result<(), String> {
    if n == 0 || n > MAX_PARTITIONS as u64 {
        return Err(format!("{what} ({n}) must be between 1 and {MAX_PARTITIONS}"));
    }
    Ok(())
}

/// Milliseconds of a [`std::time::Duration`], saturating at `i64::MAX`
/// (which every check above then refuses) instead of wrapping.
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_partitions_outside_the_bounds_are_refused() {
        assert!(check_duration_ms("x", 1).is_ok());
        assert!(check_duration_ms("x", MAX_DURATION_MS).is_ok());
        assert!(check_duration_ms("x", 0).unwrap_err().contains("must be positive"));
        assert!(check_duration_ms("x", MAX_DURATION_MS + 1).unwrap_err().contains("maximum of 1 year"));
        assert_eq!(duration_ms(std::time::Duration::from_secs(u64::MAX)), i64::MAX);
        assert!(check_partitions("n", 4096).is_ok());
        assert!(check_partitions("n", 4097).unwrap_err().contains("between 1 and 4096"));
        assert!(check_partitions("n", 0).is_err());
    }

    #[test]
    fn checkpoint_bounds_outside_their_ranges_are_refused_by_name() {
        assert!(CheckpointBounds::default().check().is_ok());
        let b = CheckpointBounds { max_state_bytes: 10, ..Default::default() };
        assert!(b.check().unwrap_err().starts_with("max_state_bytes (10) must be between 1024"), "{:?}", b.check());
        let b = CheckpointBounds { stall_timeout_ms: 0, ..Default::default() };
        assert!(b.check().unwrap_err().starts_with("stall_timeout_ms (0)"));
        let b = CheckpointBounds { max_list_keys: 0, ..Default::default() };
        assert!(b.check().unwrap_err().starts_with("max_list_keys (0)"));
        let d = CheckpointBounds::default();
        assert_eq!(d.max_file_bytes("metadata/checkpoint-1-e1"), (64 << 20, "max_metadata_bytes"));
        assert_eq!(d.max_file_bytes("state/3-1000.state"), (1 << 30, "max_state_bytes"));
    }
}
