//! The block store: computed partitions and shuffle buckets, by [`BlockId`].
//! Blocks are immutable once written; a lost block is recomputed from
//! lineage, never patched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::rdd::BlockId;

pub type Block = Arc<Vec<u8>>;

#[derive(Default)]
pub struct BlockStore {
    blocks: Mutex<HashMap<BlockId, Block>>,
}

impl BlockStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<BlockId, Block>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &BlockId) -> Option<Block> {
        self.map().get(id).cloned()
    }

    pub fn put(&self, id: BlockId, block: Block) {
        self.map().insert(id, block);
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.map().contains_key(id)
    }

    /// Removes the blocks matching `pred`; returns their ids, sorted.
    pub fn remove_where(&self, pred: impl Fn(&BlockId) -> bool) -> Vec<BlockId> {
        let mut m = self.map();
        let mut gone: Vec<BlockId> = m.keys().filter(|k| pred(k)).copied().collect();
        gone.sort();
        for id in &gone {
            m.remove(id);
        }
        gone
    }

    pub fn ids(&self) -> Vec<BlockId> {
        let mut v: Vec<BlockId> = self.map().keys().copied().collect();
        v.sort();
        v
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.map().values().map(|b| b.len()).sum()
    }
}
