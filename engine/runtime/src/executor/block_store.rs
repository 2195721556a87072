//! The block store: computed partitions and shuffle buckets, by [`BlockId`].
//! Blocks are immutable once written; a lost block is recomputed from
//! lineage, never patched.
//!
//! A store may draw on a [`BlockBudget`] shared by several stores (every
//! job of one tenant of `weir serve`): a block that would take the bytes
//! held past the budget's limit is refused with [`OverBudget`], so a tenant
//! whose jobs hold too much gets its tasks failed with a clear error
//! instead of the server growing until the kernel kills it. Bytes are
//! given back as blocks are removed, and all at once when the store goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::rdd::BlockId;

pub type Block = Arc<Vec<u8>>;

/// Bytes of blocks that several stores may hold together (see the module
/// doc). Its limit may change while stores draw on it (a reloaded server
/// configuration); blocks held past a lowered limit stay until removed.
#[derive(Debug)]
pub struct BlockBudget {
    /// Names the limit in errors: `tenant acme's block_quota_bytes`.
    what: String,
    limit: AtomicU64,
    held: AtomicU64,
}

impl BlockBudget {
    pub fn new(what: impl Into<String>, limit_bytes: u64) -> Arc<Self> {
        Arc::new(BlockBudget { what: what.into(), limit: AtomicU64::new(limit_bytes), held: AtomicU64::new(0) })
    }

    /// Bytes held now by the stores drawing on it.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// What the limit is, as errors name it.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn set_limit(&self, limit_bytes: u64) {
        self.limit.store(limit_bytes, Ordering::Release);
    }

    /// Takes `n` bytes if they fit under the limit.
    fn reserve(&self, id: &BlockId, n: u64) -> Result<(), OverBudget> {
        let limit = self.limit();
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_add(n).filter(|t| *t <= limit))
            .map(|_| ())
            .map_err(|held| OverBudget { what: self.what.clone(), block: id.to_string(), bytes: n, held, limit })
    }

    fn release(&self, n: u64) {
        let _ = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| Some(h.saturating_sub(n)));
    }
}

/// A block refused by its store's [`BlockBudget`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "block {block} ({bytes} bytes) would take the blocks held to {} bytes, over {what} = {limit} \
     ({held} bytes held now)",
    held.saturating_add(*bytes)
)]
pub struct OverBudget {
    pub what: String,
    pub block: String,
    pub bytes: u64,
    pub held: u64,
    pub limit: u64,
}

#[derive(Default)]
pub struct BlockStore {
    blocks: Mutex<HashMap<BlockId, Block>>,
    budget: Option<Arc<BlockBudget>>,
}

impl BlockStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A store whose blocks count against `budget`.
    pub fn with_budget(budget: Arc<BlockBudget>) -> Arc<Self> {
        Arc::new(BlockStore { blocks: Mutex::default(), budget: Some(budget) })
    }

    /// The budget its blocks count against, if any.
    pub fn budget(&self) -> Option<&Arc<BlockBudget>> {
        self.budget.as_ref()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<BlockId, Block>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &BlockId) -> Option<Block> {
        self.map().get(id).cloned()
    }

    /// Keeps `block` as `id` (replacing a block of that id), unless its
    /// bytes do not fit in the store's budget.
    pub fn put(&self, id: BlockId, block: Block) -> Result<(), OverBudget> {
        let mut m = self.map();
        if let Some(b) = &self.budget {
            let old = m.get(&id).map_or(0, |o| o.len() as u64);
            let new = block.len() as u64;
            if new > old {
                b.reserve(&id, new - old)?;
            } else {
                b.release(old - new);
            }
        }
        m.insert(id, block);
        Ok(())
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.map().contains_key(id)
    }

    /// Removes the blocks matching `pred`; returns their ids, sorted.
    pub fn remove_where(&self, pred: impl Fn(&BlockId) -> bool) -> Vec<BlockId> {
        let mut m = self.map();
        let mut gone: Vec<BlockId> = m.keys().filter(|k| pred(k)).copied().collect();
        gone.sort();
        let mut freed = 0u64;
        for id in &gone {
            freed += m.remove(id).map_or(0, |b| b.len() as u64);
        }
        if let Some(b) = &self.budget {
            b.release(freed);
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

impl Drop for BlockStore {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.bytes() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdd::RddId;

    fn id(p: u32) -> BlockId {
        BlockId::Rdd { rdd: RddId { time: 0, node: 0 }, partition: p }
    }

    fn block(n: usize) -> Block {
        Arc::new(vec![0; n])
    }

    /// Two stores on one budget: together they hold at most its limit; a
    /// refused block is not kept and names the limit and the figures;
    /// removing, replacing and dropping give bytes back.
    #[test]
    fn stores_on_one_budget_hold_at_most_its_limit() {
        let budget = BlockBudget::new("tenant acme's block_quota_bytes", 100);
        let (a, b) = (BlockStore::with_budget(budget.clone()), BlockStore::with_budget(budget.clone()));
        a.put(id(0), block(60)).unwrap();
        b.put(id(0), block(30)).unwrap();
        assert_eq!(budget.held(), 90);
        let e = b.put(id(1), block(20)).unwrap_err();
        assert!(!b.contains(&id(1)));
        let msg = e.to_string();
        assert!(
            msg.contains("20 bytes")
                && msg.contains("to 110 bytes")
                && msg.contains("tenant acme's block_quota_bytes = 100"),
            "{msg}"
        );
        // Replacing a block counts the difference only.
        a.put(id(0), block(70)).unwrap();
        assert_eq!(budget.held(), 100);
        a.put(id(0), block(10)).unwrap();
        assert_eq!(budget.held(), 40);
        b.put(id(1), block(20)).unwrap();
        assert_eq!(b.remove_where(|i| *i == id(0)), vec![id(0)]);
        assert_eq!(budget.held(), 30);
        drop(b);
        assert_eq!(budget.held(), 10);
        budget.set_limit(5);
        assert!(a.put(id(2), block(1)).is_err(), "a lowered limit refuses new blocks");
        drop(a);
        assert_eq!(budget.held(), 0);
        // A store without a budget takes anything.
        BlockStore::new().put(id(0), block(1000)).unwrap();
    }
}
