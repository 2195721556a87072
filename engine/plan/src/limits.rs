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
}
