//! The UDF ABI v1 as the host sees it: the function kinds, the export naming
//! convention (`<kind>:<name>`), the result packing and the shape each kind's
//! output must have. Byte-level description: `docs/udf-abi.md`.

use std::fmt;
use std::str::FromStr;

use weir_codec as codec;

/// The ABI version this host implements.
pub const ABI_VERSION: i64 = 1;

/// Exports every ABI v1 module has.
pub const EXPORT_MEMORY: &str = "memory";
pub const EXPORT_ALLOC: &str = "weir_alloc";
pub const EXPORT_VERSION: &str = "weir_abi_version";
/// Called once after instantiation if present (WASI-style reactors).
pub const EXPORT_INITIALIZE: &str = "_initialize";
/// Optional: `weir_batch_time(time_ms: i64)`, called once on a fresh instance
/// with the batch time of the RDD it computes, before any UDF call (a module
/// without it never sees the time).
pub const EXPORT_BATCH_TIME: &str = "weir_batch_time";
/// Optional: `weir_params(ptr: i32, len: i32) -> i64`, called once on a fresh
/// instance with the job file's parameters of the function the instance
/// serves (a buffer from `weir_alloc`), after `weir_batch_time` and before
/// any UDF call; returns as a UDF call does (bit 63: an error message).
pub const EXPORT_PARAMS: &str = "weir_params";
/// The one import a module may have: `weir::log(ptr: i32, len: i32)`.
pub const IMPORT_MODULE: &str = "weir";
pub const IMPORT_LOG: &str = "log";

/// The kinds of function a module can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdfKind {
    Map,
    FlatMap,
    Filter,
    KeyBy,
    MapPartitions,
    Reduce,
    Update,
    MapWithState,
}

impl UdfKind {
    pub const ALL: [UdfKind; 8] = [
        UdfKind::Map,
        UdfKind::FlatMap,
        UdfKind::Filter,
        UdfKind::KeyBy,
        UdfKind::MapPartitions,
        UdfKind::Reduce,
        UdfKind::Update,
        UdfKind::MapWithState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UdfKind::Map => "map",
            UdfKind::FlatMap => "flat_map",
            UdfKind::Filter => "filter",
            UdfKind::KeyBy => "key_by",
            UdfKind::MapPartitions => "map_partitions",
            UdfKind::Reduce => "reduce",
            UdfKind::Update => "update",
            UdfKind::MapWithState => "map_with_state",
        }
    }

    /// The export name of function `name` of this kind.
    pub fn export_name(self, name: &str) -> String {
        format!("{}:{}", self.as_str(), name)
    }

    /// Whether the output batch has exactly one value per input record/group.
    pub fn one_to_one(self) -> bool {
        !matches!(self, UdfKind::FlatMap | UdfKind::MapPartitions)
    }
}

impl fmt::Display for UdfKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UdfKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        UdfKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// The result of a UDF call, unpacked from its i64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    pub ptr: u32,
    pub len: u32,
    pub error: bool,
}

/// Bits 0..32: pointer; bits 32..63: length; bit 63: error flag.
pub fn unpack(r: i64) -> Packed {
    let u = r as u64;
    Packed { ptr: u as u32, len: ((u >> 32) & 0x7fff_ffff) as u32, error: u >> 63 == 1 }
}

/// Checks a guest's output batch against the shape its kind requires and
/// canonicalises NaNs in place. `input_count` is the number of records or
/// groups the call received.
pub fn validate_output(kind: UdfKind, input_count: u32, out: &mut [u8]) -> Result<u32, String> {
    let n = codec::validate_batch(out).map_err(|e| format!("not a valid batch: {e}"))?;
    if kind.one_to_one() && n != input_count {
        return Err(format!("{kind} must return one value per input ({input_count}), returned {n}"));
    }
    match kind {
        UdfKind::Filter => {
            if let Some(i) = out[4..].iter().position(|&b| b != codec::TAG_TRUE && b != codec::TAG_FALSE) {
                return Err(format!("filter must return booleans; value {i} is not one"));
            }
        }
        UdfKind::MapWithState => {
            for (i, r) in codec::Records::new(out).map_err(|e| e.to_string())?.enumerate() {
                let r = r.map_err(|e| e.to_string())?;
                let ok = codec::elements(r).ok().filter(|xs| r[0] == codec::TAG_TUPLE && xs.len() == 2);
                match ok {
                    Some(xs) if xs[0].first() == Some(&codec::TAG_LIST) => {}
                    _ => return Err(format!("map_with_state result {i} is not a ([outputs], state) tuple")),
                }
            }
        }
        _ => {}
    }
    Ok(n)
}

/// The record count in a batch header (0 for a buffer too short to hold one).
pub fn batch_count(batch: &[u8]) -> u32 {
    batch.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0)
}
