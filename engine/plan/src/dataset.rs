//! Static datasets: read-only records a job loads once when it starts
//! (`[datasets] users = "users.jsonl"`) and uses in every batch, as Spark
//! jobs use a static RDD inside `transform` (enrichment joins) or a lookup
//! table. A dataset is plan data like an initial state: its records travel
//! inside the lineage (and so with the tasks that read it), its identity is
//! the SHA-256 of its records, so a changed file is a changed job and its
//! RDD of any batch recomputes to the same bytes.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The most bytes of records one dataset may hold (its file, and its
/// encoding, are bounded by this): a dataset travels with every task that
/// reads it.
pub const MAX_DATASET_BYTES: u64 = 16 << 20;

/// A loaded dataset: its name, content hash, and records cut into
/// partitions (each the canonical encoding of a batch of records).
#[derive(Clone)]
pub struct Dataset {
    name: String,
    /// Hex SHA-256 over the partitions' encodings.
    hash: String,
    partitions: Arc<Vec<Vec<u8>>>,
}

impl Dataset {
    /// A dataset of the encoded partitions `partitions` (at least one).
    pub fn new(name: &str, mut partitions: Vec<Vec<u8>>) -> Dataset {
        if partitions.is_empty() {
            partitions.push(weir_codec::Value::encode_batch(&[]));
        }
        let mut h = Sha256::new();
        for p in &partitions {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Dataset { name: name.to_string(), hash, partitions: Arc::new(partitions) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hex SHA-256 of its content.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Its first 12 hex digits, for labels and diffs.
    pub fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }

    pub fn partitions(&self) -> &[Vec<u8>] {
        &self.partitions
    }

    /// Partition `p`, if it has one.
    pub fn partition(&self, p: u32) -> Option<&[u8]> {
        self.partitions.get(p as usize).map(|v| v.as_slice())
    }

    /// Bytes of its encoded records.
    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.len() as u64).sum()
    }
}

/// Name and content hash only: identity signatures hash `Debug` text, and a
/// dataset's records are in its hash.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dataset({:?}, content {})", self.name, self.hash)
    }
}

impl PartialEq for Dataset {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.hash == other.hash
    }
}

impl Eq for Dataset {}

impl std::hash::Hash for Dataset {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.hash.hash(state);
    }
}

impl Serialize for Dataset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.name, &self.hash, self.partitions.as_ref()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Dataset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, hash, partitions) = <(String, String, Vec<Vec<u8>>)>::deserialize(d)?;
        Ok(Dataset { name, hash, partitions: Arc::new(partitions) })
    }
}
