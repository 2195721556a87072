//! Garbage collection of a checkpoint location, after each metadata
//! checkpoint: metadata checkpoints beyond the newest `keep`, data
//! checkpoints no kept one names (and older than everything they name),
//! and WAL segments wholly before every kept position are deleted.
//!
//! What the location holds is tracked in memory between full listings
//! ([`Known`]): the writer records every file it writes and every one it
//! deletes, and lists the location again only every [`RELIST_EVERY`]
//! collections (and whenever a listing failed). On an object store a LIST
//! is the costliest request, and two of them after every metadata
//! checkpoint were a quarter of a batch's requests (docs/benchmarks.md,
//! "Checkpoints on object storage"); the periodic listing still finds the
//! files this driver did not write (a fenced predecessor's late write, a
//! delete that failed) and removes them within a bounded number of
//! checkpoints.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use super::store::CheckpointStore;
use super::{parse_metadata_name, try_metadata_files, wal, Metadata, MetadataFile};
use weir_plan::source::{InputDescriptor, SourceCursor};

/// Collections between two full listings of the location.
pub(super) const RELIST_EVERY: u64 = 16;

/// The files of a location as this writer knows them.
#[derive(Debug, Default)]
pub(super) struct Known {
    metadata: BTreeSet<MetadataFile>,
    /// Names in `state/` (`<node>-<time>.state`).
    state: BTreeSet<String>,
    /// Collections since the last full listing; `None`: list at the next.
    since_listing: Option<u64>,
}

impl Known {
    /// Metadata checkpoint `metadata/<name>` was written.
    pub(super) fn wrote_metadata(&mut self, name: &str) {
        if let Some(f) = parse_metadata_name(name) {
            self.metadata.insert(f);
        }
    }

    /// Data checkpoint `state/<name>` was written.
    pub(super) fn wrote_state(&mut self, name: &str) {
        self.state.insert(name.to_string());
    }

    /// Lists the location when it is time to; keeps what it knew when the
    /// listing fails (deleting a file it knows of that no checkpoint needs
    /// is still right) and lists again at the next collection.
    fn refresh(&mut self, store: &dyn CheckpointStore) {
        match self.since_listing {
            Some(n) if n + 1 < RELIST_EVERY => {
                self.since_listing = Some(n + 1);
                return;
            }
            _ => {}
        }
        match (absent_is_empty(try_metadata_files(store)), absent_is_empty(store.list("state"))) {
            (Ok(m), Ok(s)) => {
                self.metadata = m.into_iter().collect();
                self.state = s.into_iter().collect();
                self.since_listing = Some(0);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("checkpoint garbage collection: cannot list the location ({e}); using what is known");
                self.since_listing = None;
            }
        }
    }
}

/// A listing of a directory not made yet: nothing.
fn absent_is_empty<T>(r: std::io::Result<Vec<T>>) -> std::io::Result<Vec<T>> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        r => r,
    }
}

/// Deletes `name`; whether it is gone (a file already missing is).
fn delete(store: &dyn CheckpointStore, name: &str) -> bool {
    match store.delete(name) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::debug!("checkpoint garbage collection: cannot delete {name} ({e}); tried again later");
            false
        }
    }
}

/// Deletes metadata beyond the newest `keep`, and state files and WAL
/// segments that no kept metadata checkpoint refers to.
/// Returns, of each stream, the oldest data checkpoint a kept one names.
pub(super) fn collect_garbage(
    store: &dyn CheckpointStore,
    wal_root: Option<&Path>,
    kept: &VecDeque<Metadata>,
    keep: usize,
    known: &mut Known,
) -> BTreeMap<u32, i64> {
    known.refresh(store);
    let excess = known.metadata.len().saturating_sub(keep);
    let old: Vec<MetadataFile> = known.metadata.iter().take(excess).cloned().collect();
    for f in old {
        if delete(store, &f.name) {
            known.metadata.remove(&f);
        }
    }
    if kept.is_empty() {
        return BTreeMap::new();
    }
    // A state file is kept if a kept checkpoint names it, or if it is newer
    // than everything they name for its stream (a later checkpoint will).
    let referenced: std::collections::HashSet<&str> =
        kept.iter().flat_map(|m| m.state.values().map(|r| r.file.as_str())).collect();
    let mut oldest: BTreeMap<u32, i64> = BTreeMap::new();
    for m in kept {
        for (node, r) in &m.state {
            let e = oldest.entry(*node).or_insert(r.time);
            *e = (*e).min(r.time);
        }
    }
    let stale: Vec<String> = known
        .state
        .iter()
        .filter(|n| {
            let parsed = n
                .strip_suffix(".state")
                .and_then(|s| s.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<i64>().ok()?)));
            parsed.is_some_and(|(node, time)| oldest.get(&node).is_some_and(|&o| time < o))
                && !referenced.contains(n.as_str())
        })
        .cloned()
        .collect();
    for n in stale {
        if delete(store, &format!("state/{n}")) {
            known.state.remove(&n);
        }
    }
    if let Some(wal_root) = wal_root {
        collect_wal(wal_root, kept);
    }
    oldest
}

/// WAL segments older than every kept checkpoint's oldest position (a
/// cursor, or a pending batch's range), source by source.
fn collect_wal(wal_root: &Path, kept: &VecDeque<Metadata>) {
    let mut min_seq: BTreeMap<u32, u64> = BTreeMap::new();
    for m in kept {
        for (i, c) in m.cursors.iter().enumerate() {
            if let SourceCursor::Wal(p) = c {
                let e = min_seq.entry(i as u32).or_insert(p.seq);
                *e = (*e).min(p.seq);
            }
        }
        for recs in m.inputs.values() {
            for (i, r) in recs.iter().enumerate() {
                if let InputDescriptor::Wal(ranges) = &r.descriptor {
                    for rg in ranges {
                        let e = min_seq.entry(i as u32).or_insert(rg.seq);
                        *e = (*e).min(rg.seq);
                    }
                }
            }
        }
    }
    for (source, min) in min_seq {
        for seq in wal::segments(wal_root, source) {
            if seq < min {
                let _ = std::fs::remove_file(wal::segment_path(wal_root, source, seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::store::{CheckpointBounds, LocalDir};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A local directory that counts its listings.
    struct Counting {
        dir: LocalDir,
        lists: AtomicU64,
    }

    impl CheckpointStore for Counting {
        fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
            self.dir.put(name, bytes)
        }
        fn get(&self, name: &str) -> std::io::Result<Vec<u8>> {
            self.dir.get(name)
        }
        fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            self.dir.list(dir)
        }
        fn delete(&self, name: &str) -> std::io::Result<()> {
            self.dir.delete(name)
        }
        fn locate(&self, name: &str) -> PathBuf {
            self.dir.locate(name)
        }
        fn bounds(&self) -> CheckpointBounds {
            self.dir.bounds()
        }
    }

    fn names(store: &Counting, dir: &str) -> Vec<String> {
        store.dir.list(dir).unwrap()
    }

    /// Over many checkpoints the location is listed once every
    /// RELIST_EVERY collections, what this writer wrote is deleted as it
    /// falls out of the kept window without a listing, and a file it did
    /// not write (a fenced predecessor's) is found by the next listing.
    #[test]
    fn garbage_is_collected_from_what_was_written_and_the_location_is_listed_rarely() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Counting { dir: LocalDir::new(tmp.path()), lists: AtomicU64::new(0) };
        std::fs::create_dir(tmp.path().join("metadata")).unwrap();
        let mut known = Known::default();
        let kept = VecDeque::new();
        let rounds = 3 * RELIST_EVERY;
        for seq in 0..rounds {
            let name = format!("checkpoint-{seq:020}-e1");
            store.put(&format!("metadata/{name}"), b"m").unwrap();
            known.wrote_metadata(&name);
            if seq == RELIST_EVERY + 2 {
                // Not this writer's: only a listing finds it.
                store.put("metadata/checkpoint-00000000000000000000-e0", b"late").unwrap();
            }
            collect_garbage(&store, None, &kept, 2, &mut known);
            let left = names(&store, "metadata");
            let stray = left.iter().any(|n| n.ends_with("-e0"));
            assert!(left.len() <= 2 + stray as usize, "round {seq}: {left:?}");
            assert!(left.contains(&name), "the newest stays: {left:?}");
        }
        assert_eq!(names(&store, "metadata").len(), 2, "the stray file was found and deleted");
        // Two listings (metadata and state) per full listing.
        let lists = store.lists.load(Ordering::Relaxed);
        assert_eq!(lists, 2 * rounds.div_ceil(RELIST_EVERY), "{lists} listings over {rounds} collections");
    }
}
